"""The Key Protect API v2 wire format: media types, collection envelopes, the error envelope.

Pure helpers of the REST transport (``kinko.api.keyprotect``), kept apart from the routes so
that unit tests can check them byte for byte:

- every resource body is a **collection envelope**
  ``{"metadata": {"collectionType": <media type>, "collectionTotal": N}, "resources": [...]}``;
  :func:`collection_resources` checks an incoming one (``collectionTotal`` must equal the number
  of resources, else ``COLLECTION_TOTAL_MISMATCH_ERR``) and :func:`envelope` builds an outgoing
  one;
- every error is the Key Protect error envelope (:func:`error_body`), whose ``reasons[0].code``
  is the Key Protect reason code and whose ``errorMsg`` reads like Key Protect's
  (``"Not Found: Key could not be retrieved: Please see 'reasons' for more details
  (KEY_NOT_FOUND_ERR)"``);
- responses carry Key Protect's own media types (``application/vnd.ibm.kms.key+json`` and so
  on), as the real service does; a request body may use any JSON media type
  (``application/json`` or ``application/<anything>+json``).

Errors raised here are :class:`~kinko.errors.InvalidArgument` instances carrying their Key
Protect ``reason_code``: :class:`FieldError` names the field, query parameter or header at
fault (Key Protect's ``reasons[].target``), :class:`PayloadTooLarge` is the one that travels
as HTTP 413. Statuses live in the transport's one table (``kinko.api.keyprotect.STATUS``).

Invariant: no message built here contains request bytes (key material, plaintext or
ciphertext); messages name fields, sizes and byte offsets only.
"""

from __future__ import annotations

import binascii
import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Final

from kinko.errors import InvalidArgument

MORE_INFO = "https://cloud.ibm.com/apidocs/key-protect"

# Media types of Key Protect API v2 (collectionType values and content types).
MEDIA_KEY = "application/vnd.ibm.kms.key+json"
MEDIA_KEY_ACTION = "application/vnd.ibm.kms.key_action+json"
MEDIA_KEY_VERSION = "application/vnd.ibm.kms.key.version+json"
MEDIA_POLICY = "application/vnd.ibm.kms.policy+json"
MEDIA_REGISTRATION = "application/vnd.ibm.kms.registration+json"
MEDIA_KEY_RING = "application/vnd.ibm.kms.key_ring+json"
MEDIA_IMPORT_TOKEN = "application/vnd.ibm.kms.import_token+json"  # noqa: S105 (a media type)
MEDIA_COLLECTION = "application/vnd.ibm.collection+json"
MEDIA_ERROR = "application/vnd.ibm.kms.error+json"
MEDIA_JSON = "application/json"

_JSON_MEDIA = re.compile(r"application/(?:json|[A-Za-z0-9.!#$&^_-]+\+json)", re.IGNORECASE)


class FieldError(InvalidArgument):
    """One named field, query parameter or header of the request is malformed.

    ``target`` is Key Protect's ``reasons[].target``: ``("field", "plaintext")``,
    ``("query_param", "limit")`` or ``("header", "bluemix-instance")``.
    """

    def __init__(self, message: str, *, reason_code: str, target: tuple[str, str]) -> None:
        super().__init__(message, reason_code=reason_code)
        self.target = target


class PayloadTooLarge(InvalidArgument):
    """The request body is over the transport's size cap (HTTP 413); nothing was read past it."""


def bad_body(detail: str) -> InvalidArgument:
    """BAD_BODY_ERR: the body is not what the operation takes."""
    return InvalidArgument(
        "Invalid body data was passed: Please ensure the data passed had valid formatting "
        f"with no invalid characters: {detail}",
        reason_code="BAD_BODY_ERR",
    )


def no_body() -> InvalidArgument:
    """NO_BODY_ERR: the operation needs a body and none came."""
    return InvalidArgument("Missing body in request", reason_code="NO_BODY_ERR")


def body_too_large(limit: int) -> PayloadTooLarge:
    """BAD_BODY_ERR, as HTTP 413: the body is over the transport's size cap."""
    return PayloadTooLarge(
        f"Invalid body data was passed: the body is larger than {limit} bytes",
        reason_code="BAD_BODY_ERR",
    )


def collection_total_mismatch(total: int, count: int) -> InvalidArgument:
    """COLLECTION_TOTAL_MISMATCH_ERR: ``collectionTotal`` is not the number of resources."""
    return InvalidArgument(
        "Collection total does not match number of resources: "
        f"collectionTotal is {total}, got {count} resources",
        reason_code="COLLECTION_TOTAL_MISMATCH_ERR",
    )


def invalid_field(name: str, expected: str) -> FieldError:
    """INVALID_FIELD_ERR: one body field is malformed (Key Protect's own wording)."""
    return FieldError(
        f"The field '{name}' must be: {expected}",
        reason_code="INVALID_FIELD_ERR",
        target=("field", name),
    )


def invalid_query(name: str, expected: str) -> FieldError:
    """INVALID_QUERY_PARAM_ERR: one query parameter is malformed."""
    return FieldError(
        f"The query_param '{name}' must be: {expected}",
        reason_code="INVALID_QUERY_PARAM_ERR",
        target=("query_param", name),
    )


def invalid_header(name: str, expected: str) -> FieldError:
    """INVALID_HEADER_ERR (kinko's code, after INVALID_QUERY_PARAM_ERR): a header is wrong."""
    return FieldError(
        f"The header '{name}' must be: {expected}",
        reason_code="INVALID_HEADER_ERR",
        target=("header", name),
    )


def is_json_media_type(content_type: str | None) -> bool:
    """Whether ``content_type`` names JSON: ``application/json`` or ``application/*+json``."""
    if not content_type:
        return False
    return _JSON_MEDIA.fullmatch(content_type.split(";", 1)[0].strip()) is not None


def envelope(
    collection_type: str,
    resources: Sequence[Mapping[str, object]],
    *,
    total_count: int | None = None,
) -> dict[str, object]:
    """A collection envelope around ``resources``; ``total_count`` adds ``metadata.totalCount``."""
    metadata: dict[str, object] = {
        "collectionType": collection_type,
        "collectionTotal": len(resources),
    }
    if total_count is not None:
        metadata["totalCount"] = total_count
    return {"metadata": metadata, "resources": list(resources)}


def check_collection(
    collection_type: str, collection_total: int, resources: Sequence[object]
) -> None:
    """Checks an incoming envelope's metadata against its resources.

    Raises InvalidArgument: COLLECTION_TOTAL_MISMATCH_ERR when ``collectionTotal`` is not the
    number of resources; BAD_BODY_ERR when ``collectionType`` is not a JSON media type.
    """
    if collection_total != len(resources):
        raise collection_total_mismatch(collection_total, len(resources))
    if not is_json_media_type(collection_type):
        raise bad_body("metadata.collectionType must be a JSON media type")


def error_body(
    status: int,
    reason: str,
    message: str,
    *,
    failure: str,
    target: tuple[str, str] | None = None,
) -> dict[str, object]:
    """The Key Protect error envelope.

    ``failure`` says what could not be done ("Key could not be retrieved"); with the status
    phrase and the reason code it forms ``errorMsg`` the way Key Protect writes it.
    """
    phrase = _phrase(status)
    reason_entry: dict[str, object] = {
        "code": reason,
        "message": message,
        "status": status,
        "moreInfo": MORE_INFO,
    }
    if target is not None:
        reason_entry["target"] = {"type": target[0], "name": target[1]}
    resource = {
        "errorMsg": f"{phrase}: {failure}: Please see 'reasons' for more details ({reason})",
        "reasons": [reason_entry],
    }
    return envelope(MEDIA_ERROR, [resource])


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def dumps(document: object) -> bytes:
    """Compact UTF-8 JSON, the form every response body takes."""
    return _ENCODER.encode(document).encode()


#: ``json.dumps(…, separators=(",", ":"), ensure_ascii=False)``, made once rather than per
#: response (an encoder keeps no state between calls, so threads may share it).
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def b64decode_field(name: str, value: str, *, expected: str) -> bytes:
    """Standard base64 (with padding) to bytes.

    Raises FieldError INVALID_FIELD_ERR naming the field and, for bad data, the byte offset
    where it went wrong, never the data itself.
    """
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raise invalid_field(name, f"{expected}: non-ASCII data") from None
    try:
        if len(raw) % 4:
            # Python would accept surplus padding ("YWJj="); Key Protect (Go) does not.
            raise binascii.Error("length")
        # What base64.b64decode(raw, validate=True) does, without its two Python calls.
        return binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, ValueError):
        offset = _first_bad_base64_byte(raw)
        raise invalid_field(
            name, f"{expected}: illegal base64 data at input byte {offset}"
        ) from None


def _first_bad_base64_byte(raw: bytes) -> int:
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for index, byte in enumerate(raw):
        if byte not in alphabet and byte != ord("="):
            return index
    # Only padding or length is wrong: Go's decoder reports the end of the input.
    return len(raw)


def b64encode(data: bytes) -> str:
    """Standard base64 with padding, as Key Protect writes it."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def parse_rfc3339(name: str, value: str) -> dt.datetime:
    """An RFC 3339 timestamp with a zone (``Z`` or an offset) as an aware UTC datetime.

    Raises FieldError INVALID_FIELD_ERR.
    """
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise invalid_field(name, "an RFC 3339 timestamp, e.g. 2030-01-01T00:00:00Z") from None
    if parsed.tzinfo is None:
        raise invalid_field(name, "an RFC 3339 timestamp with a zone (Z or +hh:mm)")
    return parsed.astimezone(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    """An aware datetime as Key Protect writes timestamps: ``2020-03-10T20:41:27Z``."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_prefer(value: str | None) -> bool:
    """Whether a ``prefer`` header asks for ``return=representation`` (default: minimal).

    Raises FieldError INVALID_HEADER_ERR for any other preference.
    """
    if value is None or not value.strip():
        return False
    choice = value.strip().lower()
    if choice == "return=representation":
        return True
    if choice == "return=minimal":
        return False
    raise invalid_header("prefer", "return=minimal or return=representation")


def parse_states(value: str | None) -> tuple[int, ...] | None:
    """The ``state`` query of ``GET /keys``: comma-separated integers from {0, 1, 2, 3, 5}.

    Empty means not given (IBM's Python SDK always sends ``state=``). Raises FieldError
    INVALID_QUERY_PARAM_ERR.
    """
    if value is None or value == "":
        return None
    states: list[int] = []
    for part in value.split(","):
        if part not in {"0", "1", "2", "3", "5"}:
            raise invalid_query(
                "state", "a list of integers from 0, 1, 2, 3, 5 separated by commas"
            )
        states.append(int(part))
    return tuple(dict.fromkeys(states))
