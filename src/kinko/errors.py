"""The one error hierarchy of kinko.

Every error kinko raises on purpose is a :class:`KinkoError`. Transports map these classes
to their own codes in exactly one table each (CLI exit codes live in ``kinko.cli.errors``;
gRPC status codes in ``kinko.kms.server``).

::

    KinkoError                      reason_code (Key Protect ``reasons[].code``)
    ├── CallerError                 the request is wrong; retrying it unchanged will fail again
    │   ├── InvalidArgument         malformed input (bytes, fields, options)      BAD_BODY_ERR
    │   │   ├── ConfigError         an EncryptionConfiguration field is invalid (names its path)
    │   │   ├── EnvelopeError       a stored KMS v2 EncryptedObject is malformed
    │   │   ├── Invalid             a cluster object (Secret, ConfigMap) breaks a field rule;
    │   │   │                       carries Kubernetes-style causes (field, reason, message)
    │   │   └── NotAllowed          well-formed, but the key's properties forbid it
    │   │                           (KEY_ROOT_REQ_ERR, KEY_PAYLOAD_REQ_ERR, KEY_EXPIRED_ERR,
    │   │                           KEY_RESTORE_EXPIRED, INCORRECT_NONCE_ERR, …)
    │   ├── Unauthorized            no valid credential for this instance      UNAUTHORIZED_ERR
    │   ├── Forbidden               the credential lacks the role                 FORBIDDEN_ERR
    │   │                           (or is no service identity: SERVICE_ONLY_ERR)
    │   ├── DecryptionError         a value could not be decrypted (deliberately opaque)
    │   │   ├── UnprocessableCiphertext  a wrap ciphertext is malformed, tampered, or of
    │   │   │                       another key or AAD              UNPROCESSABLE_CIPHERTEXT_ERR
    │   │   └── UnreadableValue     a stored object cannot be read with the current
    │   │                           configuration (names its storage key and why)
    │   ├── NotFound                a named thing does not exist   NOT_FOUND_ERR, KEY_NOT_FOUND_ERR…
    │   ├── Gone                    the key was deleted                        KEY_DELETED_ERR
    │   ├── Unprocessable           valid syntax, refused by a rule (422)   KEY_INVALID_STATE_ERR,
    │   │                           KEY_VERSION_INVALID, KEY_ROOT_REQ_REG_ERR
    │   └── Conflict                compare-and-swap lost, or the object changed   CONFLICT_ERR
    │       ├── AlreadyExists       a create found the name taken (a cluster object)
    │       ├── WrongState          the key's state forbids the action
    │       │                                                   KEY_ACTION_INVALID_STATE_ERR
    │       ├── TooEarly            too soon after the last action        REQ_TOO_EARLY_ERR,
    │       │                                                    KEY_ROTATION_NOT_PERMITTED
    │       └── DeletionRefused     a deletion guard holds              PROTECTED_RESOURCE_ERR,
    │                               PREV_KEY_DEL_ERR, AUTHORIZATIONS_NOT_MET, NOT_DUAL_AUTH_ERR
    ├── CorruptMetadata             a stored record cannot be read back  INCOMPLETE_METADATA_ERR
    └── UnavailableError            the environment failed; the same request may work later
        ├── PluginError             a KMS plugin is unreachable, timed out, unhealthy or
        │                           answered something invalid
        ├── StoreUnavailable        the store (etcd, SQLite) did not answer
        ├── HsmUnavailable          the HSM or keystore did not answer, or refused the session
        └── KeyServiceUnavailable   a remote key service is unreachable, timed out, failed
                                    (HTTP 5xx, 429) or answered something that is not its API

Every error carries ``reason_code``: the Key Protect reason code the REST layer puts in its
error envelope. Each class has a default; an instance may carry a more specific one
(``NotFound("…", reason_code="KEY_RING_NOT_FOUND_ERR")``). Codes that Key Protect does not
document (``INTERNAL_ERR``, ``NOT_FOUND_ERR``, ``CONFLICT_ERR``, ``FORBIDDEN_ERR``,
``SERVICE_UNAVAILABLE_ERR``) are kinko's own. The HTTP status belongs to the class, in the REST
layer's one table; ``reason_code`` never changes it.

Invariant: no message carries key bytes, plaintext or ciphertext. Messages say what was
expected and what came, using sizes, names and field paths only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class KinkoError(Exception):
    """Root of every error kinko raises on purpose.

    ``reason_code``: the Key Protect reason code for this error (class default, or the one
    passed in).
    """

    reason_code: str = "INTERNAL_ERR"

    def __init__(self, *args: object, reason_code: str | None = None) -> None:
        super().__init__(*args)
        if reason_code is not None:
            self.reason_code = reason_code


class CallerError(KinkoError):
    """The request itself is wrong; the same request will fail again."""

    reason_code = "BAD_BODY_ERR"


class InvalidArgument(CallerError):
    """Malformed input: bytes, fields or options that do not satisfy their rules."""

    reason_code = "BAD_BODY_ERR"


class ConfigError(InvalidArgument):
    """An EncryptionConfiguration is invalid.

    ``path`` names the offending field, e.g. ``resources[1].providers[0].aescbc.keys[0].secret``.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.detail = message
        super().__init__(f"{path}: {message}" if path else message)


class EnvelopeError(InvalidArgument):
    """A stored KMS v2 ``EncryptedObject`` is malformed (missing or oversize fields)."""


@dataclass(frozen=True, slots=True)
class FieldCause:
    """One Kubernetes ``StatusCause``: which field broke which rule.

    ``field`` is a Kubernetes field path (``metadata.name``, ``data[tls.crt]``); ``reason`` a
    Kubernetes cause type (``FieldValueInvalid``, ``FieldValueRequired``,
    ``FieldValueNotSupported``, ``FieldValueTooLong``, ``FieldValueForbidden``,
    ``FieldValueTypeInvalid``, ``FieldValueDuplicate``) or kinko's ``FieldValueUnknown`` for a
    field the schema does not declare; ``message`` the detail. None of them carries secret data.
    """

    field: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class Invalid(InvalidArgument):
    """A cluster object (a Secret or ConfigMap) breaks one or more field rules.

    Kubernetes answers such a request with a ``Status`` of reason ``Invalid`` whose
    ``details.causes`` name each offending field; ``causes`` holds exactly those. ``kind`` and
    ``name`` name the object (either may be empty when the input was too broken to tell). The
    message lists field paths, key names and sizes, never a value of ``data`` or ``stringData``.
    """

    def __init__(self, causes: Sequence[FieldCause], *, kind: str = "", name: str = "") -> None:
        self.causes: tuple[FieldCause, ...] = tuple(causes)
        self.kind = kind
        self.name = name
        subject = f'{kind} "{name}"' if name else (kind or "object")
        listed = ", ".join(str(c) for c in self.causes)
        super().__init__(f"{subject} is invalid: [{listed}]")


class NotAllowed(InvalidArgument):
    """The request is well-formed, but a property of the key forbids it (HTTP 400).

    Reason codes: KEY_ROOT_REQ_ERR (needs a root key), KEY_PAYLOAD_REQ_ERR (an imported key
    rotates only with new material), KEY_EXPIRED_ERR (the key is expired), KEY_RESTORE_EXPIRED
    (the 30-day restore window passed), INCORRECT_NONCE_ERR / INCORRECT_NONCE_IV_ERR (secure
    import: the encrypted nonce does not match the import token's).
    """

    reason_code = "BAD_BODY_ERR"


class Unauthorized(CallerError):
    """No valid credential: a missing, unknown or malformed token, or one for another instance."""

    reason_code = "UNAUTHORIZED_ERR"


class Forbidden(CallerError):
    """The credential is valid for the instance but lacks a role the action needs.

    Registration writes by anything but a service identity carry ``SERVICE_ONLY_ERR``.
    """

    reason_code = "FORBIDDEN_ERR"


class DecryptionError(CallerError):
    """A value could not be decrypted.

    Deliberately opaque: a wrong key, a tampered byte, an AAD from another storage key and a
    truncated payload all look the same to the caller, so the error is no oracle. ``reason``
    is one of the two fixed strings below and never carries data.
    """

    NO_MATCHING_PROVIDER = "no configured provider matches the value's prefix"
    NOT_AUTHENTIC = "no configured provider could decrypt the value"

    reason_code = "UNPROCESSABLE_CIPHERTEXT_ERR"

    def __init__(self, reason: str = NOT_AUTHENTIC) -> None:
        self.reason = reason
        super().__init__(f"cannot decrypt value: {reason}")


class UnreadableValue(DecryptionError):
    """A stored value cannot be decrypted with the current configuration.

    ``key`` is the storage key (a name, never a value); ``reason`` one of :data:`NO_PROVIDER`
    and :data:`NOT_OPENED`.
    """

    NO_PROVIDER = (
        "no configured provider matches the value's prefix (its provider was removed from "
        "the EncryptionConfiguration)"
    )
    NOT_OPENED = "it cannot be decrypted (its key was destroyed or its provider removed)"

    def __init__(self, key: bytes, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        shown = key.decode("utf-8", errors="backslashreplace")
        self.args = (f"cannot read {shown}: {reason}",)


class UnprocessableCiphertext(DecryptionError):
    """A key service ciphertext is malformed, tampered, or of another key, version or AAD.

    As opaque as :class:`DecryptionError`: ``reason`` is :data:`MALFORMED` when the text does
    not even parse as a wrap ciphertext, else :data:`NOT_AUTHENTIC`.
    """

    MALFORMED = "the ciphertext is not a wrap ciphertext of this service"
    NOT_AUTHENTIC = "the ciphertext does not authenticate under this key and AAD"

    def __init__(self, reason: str = NOT_AUTHENTIC) -> None:
        super().__init__(reason)


class NotFound(CallerError):
    """A named thing (key, object, resource) does not exist."""

    reason_code = "NOT_FOUND_ERR"


class Gone(CallerError):
    """The key was deleted (Destroyed) and the action needs a live key (HTTP 410)."""

    reason_code = "KEY_DELETED_ERR"


class Unprocessable(CallerError):
    """Valid syntax, refused by a rule of the key (HTTP 422).

    Reason codes: KEY_INVALID_STATE_ERR (a registration needs an Active key),
    KEY_VERSION_INVALID (a registration's key version may only move forward),
    KEY_ROOT_REQ_REG_ERR (only root keys are registered).
    """

    reason_code = "KEY_INVALID_STATE_ERR"


class Conflict(CallerError):
    """A compare-and-swap lost: the object changed since it was read."""

    reason_code = "CONFLICT_ERR"


class AlreadyExists(Conflict):
    """A create found the name taken (Kubernetes reason ``AlreadyExists``, HTTP 409)."""

    reason_code = "CONFLICT_ERR"


class WrongState(Conflict):
    """The key's state does not allow the action (Key Protect's state table)."""

    reason_code = "KEY_ACTION_INVALID_STATE_ERR"


class TooEarly(Conflict):
    """Too soon after the last action.

    Reason codes: REQ_TOO_EARLY_ERR (enable or restore within 30 s of the last state change; a
    purge within 4 hours of the deletion), KEY_ROTATION_NOT_PERMITTED (a second rotation
    within an hour).
    """

    reason_code = "REQ_TOO_EARLY_ERR"


class DeletionRefused(Conflict):
    """A deletion guard holds.

    Reason codes: PROTECTED_RESOURCE_ERR (registrations exist; ``force`` may override),
    PREV_KEY_DEL_ERR (a registration prevents deletion, even forced), AUTHORIZATIONS_NOT_MET
    (dual authorization missing, expired, or given by the deleting user), NOT_DUAL_AUTH_ERR
    (the key has no dual authorization policy to set or unset).
    """

    reason_code = "PROTECTED_RESOURCE_ERR"


class CorruptMetadata(KinkoError):
    """A stored record cannot be read back (bad JSON, missing fields, missing HSM object)."""

    reason_code = "INCOMPLETE_METADATA_ERR"


class UnavailableError(KinkoError):
    """The environment failed; the same request may succeed later."""

    reason_code = "SERVICE_UNAVAILABLE_ERR"


class PluginError(UnavailableError):
    """A KMS plugin is unreachable, timed out, is unhealthy, or answered something invalid."""


class StoreUnavailable(UnavailableError):
    """The key-value store did not answer, or the outcome of a write is unknown."""


class HsmUnavailable(UnavailableError):
    """The HSM (a PKCS#11 token) or the soft keystore did not answer, or refused the session.

    Raised for an unloadable module, a missing token, a refused login, a lost session or an
    unreadable keystore file. The message names the token or path, never a PIN or key bytes.
    """


class KeyServiceUnavailable(UnavailableError):
    """A remote key service (kinko's or Key Protect, over HTTPS) could not serve the request.

    Raised by :class:`kinko.keys.client.KeyProtectClient` when the connection fails (refused,
    TLS verification, timeout), when the service answers HTTP 5xx or 429, and when a response
    is not Key Protect's API (not JSON, missing fields). The message names the URL, the HTTP
    status and the reason code, never the bearer token, key material, plaintext or ciphertext.
    """
