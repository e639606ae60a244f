"""A typed HTTPS client of Key Protect API v2: kinko's key service, or IBM Key Protect itself.

Job: one method per Key Protect operation (create, import, list, read, versions, wrap,
unwrap, rewrap, rotate, disable, enable, dual authorization, delete, restore, purge,
policies, instance policies, import tokens, registrations, aliases, key rings), sending
exactly what Key Protect's own SDKs send and parsing the answers into frozen values. The
``kinko keys …`` commands and the KMS v2 plugin's remote mode are built on it.

What goes on the wire (``shared/reference/key-management.md`` §2.1):

- every request carries ``authorization: Bearer <token>``, ``bluemix-instance``, a fresh
  ``correlation-id`` (UUID v4), ``accept: application/json`` and, when the client has one,
  ``x-kms-key-ring``; writes that return a key ask for it with
  ``prefer: return=representation``;
- bodies use Key Protect's media types (``application/vnd.ibm.kms.key+json`` for keys,
  ``…key_action_wrap+json`` and friends for actions, ``application/json`` for policies and
  import tokens), and collection envelopes where Key Protect wants one (keys, policies,
  instance policies);
- keys are addressed as ``keys/<id or alias>``, each path segment percent-encoded.

Errors: an answer other than 2xx is read as Key Protect's error envelope and raised as the
kinko error of its reason code, from :data:`REASON_ERRORS`, the client's one table; a code
not in it falls back to the HTTP status (:data:`STATUS_ERRORS`). The error keeps the reason
code (``exc.reason_code``), so ``kinko keys …`` exits with the same code as the local error
would (``kinko.cli.errors``). A refused or failed connection, a TLS failure, a timeout, HTTP
429 or 5xx, and an answer that is not Key Protect's API all raise
:class:`~kinko.errors.KeyServiceUnavailable`.

Invariants:

- TLS is verified: against ``ca`` when given (kinko's own CA, ``DATA_DIR/tls/ca.crt``), else
  the system trust store. Plain ``http://`` is refused for anything but a loopback host, so a
  bearer token never crosses a network in clear.
- No message, repr or log line carries the bearer token, key material, plaintext or
  ciphertext: secret fields of the values below are ``repr=False``, error messages are built
  from reason codes, statuses and the service's own messages (control characters removed,
  length capped), and nothing here logs.
- The client holds no state between calls but its settings and the connection pool; it is
  safe to share between threads (``httpx.Client`` is).
"""

from __future__ import annotations

import base64
import binascii
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kinko import errors, httpclient
from kinko.httpclient import MAX_MESSAGE, HttpClient, clean
from kinko.keys.model import (
    AliasEntry,
    InstancePolicies,
    KeyRing,
    KeyState,
    PolicyStamp,
    Registration,
    RotationPolicy,
)
from kinko.keys.results import (
    DualAuthPolicy,
    ImportTokenInfo,
    ImportTokenKey,
    KeyPolicies,
    KeyRingList,
    RegistrationList,
    VersionList,
    VersionRef,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "REASON_ERRORS",
    "STATUS_ERRORS",
    "DualAuthStatus",
    "KeyPage",
    "KeyProtectClient",
    "KeyResource",
    "Rewrapped",
    "SecureImport",
    "Unwrapped",
    "Wrapped",
    "error_from_response",
    "seal_for_import",
]

DEFAULT_TIMEOUT: Final = httpclient.DEFAULT_TIMEOUT
API: Final = "/api/v2"

# Key Protect's media types, as its SDKs send them.
MEDIA_KEY: Final = "application/vnd.ibm.kms.key+json"
MEDIA_POLICY: Final = "application/vnd.ibm.kms.policy+json"
MEDIA_JSON: Final = "application/json"
_ACTION_MEDIA: Final = {
    "wrap": "application/vnd.ibm.kms.key_action_wrap+json",
    "unwrap": "application/vnd.ibm.kms.key_action_unwrap+json",
    "rewrap": "application/vnd.ibm.kms.key_action_rewrap+json",
    "rotate": "application/vnd.ibm.kms.key_action_rotate+json",
}
#: Secure import algorithms Key Protect accepts, the default first.
IMPORT_ALGORITHMS: Final = ("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1")
_IMPORT_IV_BYTES: Final = 12

# --- the one error table -------------------------------------------------------------------

#: Key Protect reason code → the kinko error raised for it. Codes of kinko's own errors
#: (``kinko.errors``) and those Key Protect documents (``error-messages.md``).
REASON_ERRORS: Final[Mapping[str, type[errors.KinkoError]]] = {
    # 400: malformed requests.
    "BAD_BODY_ERR": errors.InvalidArgument,
    "NO_BODY_ERR": errors.InvalidArgument,
    "COLLECTION_TOTAL_MISMATCH_ERR": errors.InvalidArgument,
    "NUM_COLLECTION_RESOURCE_ERR": errors.InvalidArgument,
    "BODY_QUERY_PARAM_MISMATCH_ERR": errors.InvalidArgument,
    "INVALID_FIELD_ERR": errors.InvalidArgument,
    "INVALID_QUERY_PARAM_ERR": errors.InvalidArgument,
    "INVALID_HEADER_ERR": errors.InvalidArgument,
    "KEY_ALIAS_QUOTA_ERR": errors.InvalidArgument,
    # 400: well-formed, forbidden by the key's properties.
    "KEY_EXPIRED_ERR": errors.NotAllowed,
    "KEY_RESTORE_EXPIRED": errors.NotAllowed,
    "KEY_ROOT_REQ_ERR": errors.NotAllowed,
    "KEY_PAYLOAD_REQ_ERR": errors.NotAllowed,
    "INCORRECT_NONCE_ERR": errors.NotAllowed,
    "INCORRECT_NONCE_IV_ERR": errors.NotAllowed,
    # 401 / 403.
    "UNAUTHORIZED_ERR": errors.Unauthorized,
    "FORBIDDEN_ERR": errors.Forbidden,
    "SERVICE_ONLY_ERR": errors.Forbidden,
    "RESOURCE_OWNER_ERR": errors.Forbidden,
    "FEATURE_RESTRICTED_ERR": errors.Forbidden,
    "CONFIG_RULE_CONFLICT_ERR": errors.Forbidden,
    # 404 / 410.
    "NOT_FOUND_ERR": errors.NotFound,
    "KEY_NOT_FOUND_ERR": errors.NotFound,
    "KEY_RING_NOT_FOUND_ERR": errors.NotFound,
    "KEY_ALIAS_NOT_FOUND_ERR": errors.NotFound,
    "IMPORT_TOKEN_NOT_FOUND_ERR": errors.NotFound,
    "REGISTRATION_NOT_FOUND_ERR": errors.NotFound,
    "KEY_DELETED_ERR": errors.Gone,
    # 409.
    "CONFLICT_ERR": errors.Conflict,
    "KEY_ALIAS_NOT_UNIQUE_ERR": errors.Conflict,
    "KEY_RING_NOT_EMPTY_ERR": errors.Conflict,
    "KEY_RING_EXISTS_ERR": errors.Conflict,
    "IMPORT_TOKEN_EXPIRED_ERR": errors.Conflict,
    "KEY_CREATE_IMPORT_ACCESS_ERR": errors.Conflict,
    "KEY_ACTION_INVALID_STATE_ERR": errors.WrongState,
    "REQ_TOO_EARLY_ERR": errors.TooEarly,
    "KEY_ROTATION_NOT_PERMITTED": errors.TooEarly,
    "PROTECTED_RESOURCE_ERR": errors.DeletionRefused,
    "PREV_KEY_DEL_ERR": errors.DeletionRefused,
    "AUTHORIZATIONS_NOT_MET": errors.DeletionRefused,
    "NOT_DUAL_AUTH_ERR": errors.DeletionRefused,
    # 422.
    "UNPROCESSABLE_CIPHERTEXT_ERR": errors.UnprocessableCiphertext,
    "KEY_INVALID_STATE_ERR": errors.Unprocessable,
    "KEY_VERSION_INVALID": errors.Unprocessable,
    "KEY_ROOT_REQ_REG_ERR": errors.Unprocessable,
    "INVALID_SIG_EXP_ERR": errors.Unprocessable,
    # 500 / 503: the service failed.
    "INCOMPLETE_METADATA_ERR": errors.CorruptMetadata,
    "INTERNAL_ERR": errors.KeyServiceUnavailable,
    "SERVICE_UNAVAILABLE_ERR": errors.KeyServiceUnavailable,
}

#: HTTP status → kinko error, for reason codes not in :data:`REASON_ERRORS` (and bodies
#: that are no error envelope). Any other 4xx is a CallerError, any other 5xx unavailable.
STATUS_ERRORS: Final[Mapping[int, type[errors.KinkoError]]] = {
    400: errors.InvalidArgument,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    410: errors.Gone,
    413: errors.InvalidArgument,
    422: errors.Unprocessable,
    429: errors.KeyServiceUnavailable,
}


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DualAuthStatus:
    """``dualAuthDelete`` of a key: the policy, and whether a deletion is authorized now."""

    enabled: bool
    key_set_for_deletion: bool = False
    auth_expiration: datetime | None = None


@dataclass(frozen=True, slots=True)
class KeyResource:
    """A key as the service returned it (Key Protect's key resource).

    Fields the service left out are None (times, ``key_version``) or their Key Protect
    default. ``payload`` is the material of a standard key, set only by
    :meth:`KeyProtectClient.get_key`.
    """

    id: str
    name: str
    state: KeyState
    extractable: bool
    imported: bool = False
    crn: str = ""
    key_ring_id: str = "default"
    aliases: tuple[str, ...] = ()
    description: str = ""
    algorithm_type: str | None = None
    algorithm_bit_size: int | None = None
    creation_date: datetime | None = None
    created_by: str | None = None
    last_update_date: datetime | None = None
    last_rotate_date: datetime | None = None
    key_version: VersionRef | None = None
    expiration_date: datetime | None = None
    dual_auth_delete: DualAuthStatus | None = None
    rotation: RotationPolicy | None = None
    deleted: bool = False
    deletion_date: datetime | None = None
    deleted_by: str | None = None
    restore_allowed: bool | None = None
    restore_expiration_date: datetime | None = None
    purge_allowed: bool | None = None
    purge_allowed_from: datetime | None = None
    purge_scheduled_on: datetime | None = None
    payload: bytes | None = field(default=None, repr=False)

    @property
    def is_root(self) -> bool:
        """Root keys (``extractable: false``) never leave the service's HSM."""
        return not self.extractable


@dataclass(frozen=True, slots=True)
class KeyPage:
    """A page of keys; ``total`` is the service's ``totalCount`` when it sent one."""

    keys: tuple[KeyResource, ...]
    total: int | None = None


@dataclass(frozen=True, slots=True)
class Wrapped:
    """``actions/wrap``: the opaque ciphertext and the id of the key version that wrapped.

    ``plaintext`` is the DEK the service generated when the request carried none, else None.
    """

    ciphertext: str = field(repr=False)
    key_version: str
    plaintext: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """``actions/unwrap``: the plaintext and the id of the version that had wrapped it.

    If the key was rotated since, ``ciphertext`` is the plaintext rewrapped under the latest
    version and ``rewrapped_key_version`` is that version's id; otherwise both are None.
    """

    plaintext: bytes = field(repr=False)
    key_version: str
    ciphertext: str | None = field(default=None, repr=False)
    rewrapped_key_version: str | None = None


@dataclass(frozen=True, slots=True)
class Rewrapped:
    """``actions/rewrap``: the ciphertext under the latest version; ``key_version`` is the
    version that had wrapped the input, ``rewrapped_key_version`` the latest."""

    ciphertext: str = field(repr=False)
    key_version: str
    rewrapped_key_version: str


@dataclass(frozen=True, slots=True)
class SecureImport:
    """Key material prepared for a secure import through an import token.

    ``payload``: the material RSA-OAEP-encrypted to the token's public key;
    ``encrypted_nonce``: AES-256-GCM of the token's nonce under the material with ``iv``;
    ``algorithm``: ``RSAES_OAEP_SHA_256`` or ``RSAES_OAEP_SHA_1``.
    """

    payload: bytes = field(repr=False)
    encrypted_nonce: bytes = field(repr=False)
    iv: bytes
    algorithm: str


def seal_for_import(
    token: ImportTokenKey,
    material: bytes,
    *,
    algorithm: str = IMPORT_ALGORITHMS[0],
    iv: bytes | None = None,
) -> SecureImport:
    """Encrypts root key ``material`` for a secure import as Key Protect's clients do.

    ``payload`` = RSAES-OAEP(material) to the token's public key (MGF1 and the label-less
    OAEP with SHA-256, or SHA-1 for ``RSAES_OAEP_SHA_1``); ``encrypted_nonce`` = AES-GCM of
    the token's nonce under the material, with a 12-byte ``iv`` (random unless given) and no
    AAD (ciphertext‖tag). The service checks both before it accepts the material.

    Raises InvalidArgument (an unknown algorithm, material that is no AES key, an iv not of
    12 bytes, a public key that is not RSA).
    """
    if algorithm not in IMPORT_ALGORITHMS:
        raise errors.InvalidArgument(
            f"expected an encryption algorithm among {', '.join(IMPORT_ALGORITHMS)}, "
            f"got {algorithm!r}"
        )
    if len(material) not in (16, 24, 32):
        raise errors.InvalidArgument(
            f"expected 16, 24 or 32 bytes of AES key material, got {len(material)}"
        )
    if iv is None:
        iv = os.urandom(_IMPORT_IV_BYTES)
    if len(iv) != _IMPORT_IV_BYTES:
        raise errors.InvalidArgument(f"expected a {_IMPORT_IV_BYTES}-byte iv, got {len(iv)}")
    try:
        public_key = serialization.load_pem_public_key(token.public_key_pem)
    except ValueError:
        raise errors.InvalidArgument("the import token's public key is not a PEM key") from None
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise errors.InvalidArgument("the import token's public key is not an RSA key")
    digest: hashes.HashAlgorithm = (
        hashes.SHA256() if algorithm == "RSAES_OAEP_SHA_256" else hashes.SHA1()  # noqa: S303
    )
    payload = public_key.encrypt(
        material, padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
    )
    encrypted_nonce = AESGCM(material).encrypt(iv, token.nonce, None)
    return SecureImport(
        payload=payload, encrypted_nonce=encrypted_nonce, iv=iv, algorithm=algorithm
    )


# --- the client ----------------------------------------------------------------------------


class KeyProtectClient(HttpClient):
    """A client of one instance of a Key Protect API v2 service at ``url``.

    ``token``: the bearer token (kinko's ``kinko_…`` or an IAM access token; without the
    ``Bearer`` prefix). ``instance``: the ``bluemix-instance``. ``ca``: the PEM CA bundle
    that signed the service's certificate (default: the system trust store). ``key_ring``:
    sent as ``x-kms-key-ring`` on every key call. ``timeout``: seconds per request.
    ``http``: an ``httpx.Client`` to send through instead of one made here (tests pass a
    FastAPI ``TestClient``); the caller keeps it and ``ca`` and ``timeout`` do not apply.

    Use as a context manager, or call :meth:`close`. Raises InvalidArgument (an empty token
    or instance, a URL that is not http(s), plain http to a host that is not loopback, an
    unreadable CA file).
    """

    _service = "key service"
    _cargo = "keys"
    _unavailable = errors.KeyServiceUnavailable

    def __init__(
        self,
        url: str,
        *,
        token: str,
        instance: str,
        ca: Path | None = None,
        key_ring: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        if not token or not token.strip():
            raise errors.InvalidArgument("expected a bearer token, got none")
        if token.lower().startswith("bearer "):
            token = token[7:]
        if not instance or not instance.strip():
            raise errors.InvalidArgument("expected an instance id (bluemix-instance), got none")
        # The headers are checked before the connection pool is made, so a refused value
        # leaves nothing open.
        self._token = _header_value("bearer token", token.strip())
        self._instance = _header_value("instance id", instance.strip())
        self._key_ring = None if key_ring is None else _header_value("key ring", key_ring)
        super().__init__(url, ca=ca, timeout=timeout, http=http)

    # --- lifecycle of the client -----------------------------------------------------------

    @property
    def instance(self) -> str:
        """The instance this client acts on (``bluemix-instance``)."""
        return self._instance

    @property
    def key_ring(self) -> str | None:
        """The key ring sent as ``x-kms-key-ring``, if any."""
        return self._key_ring

    def __repr__(self) -> str:
        return f"KeyProtectClient(url={self._base!r}, instance={self._instance!r})"

    # --- keys: create, read, list ----------------------------------------------------------

    def create_key(
        self,
        name: str,
        *,
        extractable: bool = False,
        payload: bytes | None = None,
        aliases: Sequence[str] = (),
        description: str | None = None,
        expiration: datetime | None = None,
        rotation: RotationPolicy | None = None,
        dual_auth: bool | None = None,
        secure: SecureImport | None = None,
        key_ring: str | None = None,
    ) -> KeyResource:
        """``POST /keys`` (``/keys_with_policy_overrides`` with ``rotation`` or ``dual_auth``):
        creates a root key (``extractable=False``) or a standard key.

        ``payload`` imports plain material; ``secure`` imports material sealed by
        :func:`seal_for_import` (not both). ``key_ring`` overrides the client's ring for this
        key. Returns the new key.

        Raises InvalidArgument (both payload and secure; aliases given as one string; the
        service's BAD_BODY_ERR), NotAllowed, Unauthorized, Forbidden, NotFound (the ring, no
        import token), Conflict (alias taken, import token expired), KeyServiceUnavailable.
        """
        if payload is not None and secure is not None:
            raise errors.InvalidArgument("expected payload or a secure import, not both")
        resource: dict[str, object] = {"type": MEDIA_KEY, "name": name, "extractable": extractable}
        if description is not None:
            resource["description"] = description
        if aliases:
            resource["aliases"] = list(_strings("aliases", aliases))
        if expiration is not None:
            resource["expirationDate"] = _rfc3339(expiration)
        if payload is not None:
            resource["payload"] = _b64(payload)
        if secure is not None:
            resource["payload"] = _b64(secure.payload)
            resource["encryptedNonce"] = _b64(secure.encrypted_nonce)
            resource["iv"] = _b64(secure.iv)
            resource["encryptionAlgorithm"] = secure.algorithm
        path = "/keys"
        if rotation is not None or dual_auth is not None:
            path = "/keys_with_policy_overrides"
            if rotation is not None:
                resource["rotation"] = _rotation_body(rotation)
            if dual_auth is not None:
                resource["dualAuthDelete"] = {"enabled": dual_auth}
        response = self._send(
            "POST",
            path,
            body=_envelope(MEDIA_KEY, [resource]),
            media=MEDIA_KEY,
            prefer=True,
            key_ring=key_ring,
        )
        found = self._maybe_key(response, fetch=True)
        if found is None:
            raise _malformed(response, "the created key is missing from the answer")
        return found

    def list_keys(
        self,
        *,
        limit: int = 200,
        offset: int = 0,
        states: Sequence[int] | None = None,
        extractable: bool | None = None,
    ) -> KeyPage:
        """``GET /keys``: a page of the instance's keys (in the client's key ring, if set).

        ``states`` filters by state (Key Protect's default: 0, 1, 2, 3; add 5 for Destroyed);
        ``extractable`` True lists standard keys only, False root keys only.

        Raises InvalidArgument, Unauthorized, Forbidden, KeyServiceUnavailable.
        """
        params: dict[str, str] = {"limit": str(limit), "offset": str(offset)}
        if states is not None:
            params["state"] = ",".join(str(int(s)) for s in states)
        if extractable is not None:
            params["extractable"] = "true" if extractable else "false"
        meta, resources = _collection(self._send("GET", "/keys", params=params))
        return KeyPage(keys=tuple(_key(r) for r in resources), total=meta.opt_number("totalCount"))

    def count_keys(
        self, *, states: Sequence[int] | None = None, extractable: bool | None = None
    ) -> int:
        """``HEAD /keys``: how many keys :meth:`list_keys` would show in all (``Key-Total``).

        Raises InvalidArgument, Unauthorized, Forbidden, KeyServiceUnavailable (also for an
        answer without a ``Key-Total`` header).
        """
        params: dict[str, str] = {}
        if states is not None:
            params["state"] = ",".join(str(int(s)) for s in states)
        if extractable is not None:
            params["extractable"] = "true" if extractable else "false"
        response = self._send("HEAD", "/keys", params=params)
        total = response.headers.get("key-total", "")
        if not total.isdigit():
            raise _malformed(response, "expected a Key-Total header")
        return int(total)

    def iter_keys(
        self,
        *,
        states: Sequence[int] | None = None,
        extractable: bool | None = None,
        page_size: int = 200,
    ) -> Iterator[KeyResource]:
        """Every key :meth:`list_keys` would show, page by page.

        Raises what :meth:`list_keys` raises.
        """
        offset = 0
        while True:
            page = self.list_keys(
                limit=page_size, offset=offset, states=states, extractable=extractable
            )
            yield from page.keys
            if len(page.keys) < page_size:
                return
            offset += len(page.keys)

    def get_key(self, key: str) -> KeyResource:
        """``GET /keys/{key}``: the key (by id or alias), with ``payload`` for a standard key.

        Raises Unauthorized, Forbidden (Reader only: use :meth:`get_key_metadata`), NotFound
        (also another instance's key), KeyServiceUnavailable.
        """
        return self._one_key(self._send("GET", _key_path(key)))

    def get_key_metadata(self, key: str) -> KeyResource:
        """``GET /keys/{key}/metadata``: the key without material.

        Raises Unauthorized, Forbidden, NotFound, KeyServiceUnavailable.
        """
        return self._one_key(self._send("GET", _key_path(key, "metadata")))

    def versions(
        self, key: str, *, limit: int = 200, offset: int = 0, all_key_states: bool = False
    ) -> VersionList:
        """``GET /keys/{key}/versions``: the key's versions, newest first.

        Without ``all_key_states`` the service lists an Active key's versions only.

        Raises Unauthorized, Forbidden, NotFound, WrongState, Gone, KeyServiceUnavailable.
        """
        params = {"limit": str(limit), "offset": str(offset), "totalCount": "true"}
        if all_key_states:
            params["allKeyStates"] = "true"
        meta, resources = _collection(self._send("GET", _key_path(key, "versions"), params=params))
        versions = tuple(_version(r) for r in resources)
        total = meta.opt_number("totalCount")
        return VersionList(versions=versions, total=len(versions) if total is None else total)

    # --- wrap, unwrap, rewrap --------------------------------------------------------------

    def wrap(self, key: str, plaintext: bytes | None = None, *, aad: Sequence[str] = ()) -> Wrapped:
        """``POST /keys/{key}/actions/wrap``: wraps ``plaintext`` with the key's latest
        version; without it the service generates a 32-byte DEK and returns it as well.

        Raises InvalidArgument (aad given as one string; sizes), NotAllowed (a standard
        key), WrongState (not Active), Gone, NotFound, Unauthorized, Forbidden,
        KeyServiceUnavailable.
        """
        body: dict[str, object] = {}
        if plaintext is not None:
            body["plaintext"] = _b64(plaintext)
        if aad:
            body["aad"] = list(_strings("aad", aad))
        doc = _body(self._action(key, "wrap", body))
        generated = doc.opt_b64("plaintext")
        return Wrapped(
            ciphertext=doc.text("ciphertext"),
            key_version=_version_id(doc, "keyVersion"),
            plaintext=generated,
        )

    def unwrap(self, key: str, ciphertext: str, *, aad: Sequence[str] = ()) -> Unwrapped:
        """``POST /keys/{key}/actions/unwrap``: the plaintext of a wrap ciphertext of any
        version of the key (and, after a rotation, the same plaintext rewrapped).

        Raises UnprocessableCiphertext (malformed, tampered, another key, wrong aad),
        InvalidArgument, NotAllowed, WrongState (Suspended), Gone, NotFound, Unauthorized,
        Forbidden, KeyServiceUnavailable.
        """
        doc = _body(self._action(key, "unwrap", _cipher_body(ciphertext, aad)))
        rewrapped = doc.opt_doc("rewrappedKeyVersion")
        return Unwrapped(
            plaintext=doc.b64("plaintext"),
            key_version=_version_id(doc, "keyVersion"),
            ciphertext=doc.opt_text("ciphertext"),
            rewrapped_key_version=None if rewrapped is None else rewrapped.text("id"),
        )

    def rewrap(self, key: str, ciphertext: str, *, aad: Sequence[str] = ()) -> Rewrapped:
        """``POST /keys/{key}/actions/rewrap``: the same plaintext wrapped under the key's
        latest version, without revealing it.

        Raises what :meth:`unwrap` raises.
        """
        doc = _body(self._action(key, "rewrap", _cipher_body(ciphertext, aad)))
        return Rewrapped(
            ciphertext=doc.text("ciphertext"),
            key_version=_version_id(doc, "keyVersion"),
            rewrapped_key_version=_version_id(doc, "rewrappedKeyVersion"),
        )

    # --- lifecycle actions -----------------------------------------------------------------

    def rotate(
        self,
        key: str,
        payload: bytes | None = None,
        *,
        secure: SecureImport | None = None,
    ) -> KeyResource | None:
        """``POST /keys/{key}/actions/rotate``: adds a version. Imported keys need new
        material (``payload``, or ``secure`` from :func:`seal_for_import`).

        Returns the key if the service sent it (Key Protect answers 204 No Content).

        Raises InvalidArgument, NotAllowed (``KEY_PAYLOAD_REQ_ERR``), WrongState, Gone,
        TooEarly (``KEY_ROTATION_NOT_PERMITTED``), NotFound, Unauthorized, Forbidden,
        KeyServiceUnavailable.
        """
        if payload is not None and secure is not None:
            raise errors.InvalidArgument("expected payload or a secure import, not both")
        body: dict[str, object] = {}
        if payload is not None:
            body["payload"] = _b64(payload)
        if secure is not None:
            body["payload"] = _b64(secure.payload)
            body["encryptedNonce"] = _b64(secure.encrypted_nonce)
            body["iv"] = _b64(secure.iv)
            body["encryptionAlgorithm"] = secure.algorithm
        return self._maybe_key(self._action(key, "rotate", body, prefer=True))

    def disable(self, key: str) -> None:
        """``POST /keys/{key}/actions/disable``: Active → Suspended.

        Raises WrongState, Gone, NotAllowed, NotFound, Unauthorized, Forbidden,
        KeyServiceUnavailable.
        """
        self._action(key, "disable", None)

    def enable(self, key: str) -> None:
        """``POST /keys/{key}/actions/enable``: Suspended → Active (30 s after disable).

        Raises TooEarly, WrongState, Gone, NotFound, Unauthorized, Forbidden,
        KeyServiceUnavailable.
        """
        self._action(key, "enable", None)

    def set_for_deletion(self, key: str) -> None:
        """``POST /keys/{key}/actions/setKeyForDeletion``: the first of the two
        authorizations a dual-authorization key needs before deletion (valid 7 days).

        Raises DeletionRefused (``NOT_DUAL_AUTH_ERR``), WrongState, Gone, NotFound,
        Unauthorized, Forbidden, KeyServiceUnavailable.
        """
        self._action(key, "setKeyForDeletion", None)

    def unset_for_deletion(self, key: str) -> None:
        """``POST /keys/{key}/actions/unsetKeyForDeletion``: withdraws the authorization.

        Raises DeletionRefused, WrongState, Gone, NotFound, Unauthorized, Forbidden,
        KeyServiceUnavailable.
        """
        self._action(key, "unsetKeyForDeletion", None)

    def sync(self, key: str) -> None:
        """``POST /keys/{key}/actions/sync``: asks the registered services to resynchronise.

        Raises NotAllowed, NotFound, Unauthorized, Forbidden, KeyServiceUnavailable.
        """
        self._action(key, "sync", None)

    def delete(self, key: str, *, force: bool = False) -> KeyResource | None:
        """``DELETE /keys/{key}[?force=true]``: → Destroyed, restorable for 30 days.

        ``force`` deletes despite registrations (not those that prevent deletion). Returns
        the deleted key if the service sent it.

        Raises DeletionRefused (``PROTECTED_RESOURCE_ERR``, ``PREV_KEY_DEL_ERR``,
        ``AUTHORIZATIONS_NOT_MET``), Gone (deleted already), NotFound, Unauthorized,
        Forbidden, KeyServiceUnavailable.
        """
        params = {"force": "true"} if force else None
        return self._maybe_key(self._send("DELETE", _key_path(key), params=params, prefer=True))

    def restore(self, key: str) -> KeyResource | None:
        """``POST /keys/{key}/restore``: Destroyed → Active, 30 s to 30 days after deletion.
        Returns the restored key if the service sent it.

        Raises TooEarly, NotAllowed (``KEY_RESTORE_EXPIRED``, ``KEY_EXPIRED_ERR``),
        WrongState, NotFound, Unauthorized, Forbidden, KeyServiceUnavailable.
        """
        return self._maybe_key(self._send("POST", _key_path(key, "restore"), prefer=True))

    def purge(self, key: str) -> KeyResource | None:
        """``DELETE /keys/{key}/purge``: destroys the key's material for good, 4 hours or
        more after deletion (KeyPurge role). Returns the key as it was, if sent.

        Raises TooEarly, WrongState (not Destroyed), NotFound, Unauthorized, Forbidden,
        KeyServiceUnavailable.
        """
        return self._maybe_key(self._send("DELETE", _key_path(key, "purge"), prefer=True))

    def move_key(self, key: str, key_ring: str) -> KeyResource:
        """``PATCH /keys/{key}`` with ``keyRingID``: moves the key to another ring.

        Raises NotFound (the key, or ``KEY_RING_NOT_FOUND_ERR``), Gone, InvalidArgument,
        Unauthorized, Forbidden, KeyServiceUnavailable.
        """
        response = self._send(
            "PATCH", _key_path(key), body={"keyRingID": key_ring}, media=MEDIA_KEY
        )
        return self._one_key(response)

    # --- policies --------------------------------------------------------------------------

    def get_policies(self, key: str) -> KeyPolicies:
        """``GET /keys/{key}/policies``: the key's rotation and dual-authorization policies.

        Raises NotFound, Unauthorized, Forbidden, KeyServiceUnavailable.
        """
        response = self._send("GET", _key_path(key, "policies"))
        return _key_policies(response, key)

    def put_policies(
        self,
        key: str,
        *,
        rotation: RotationPolicy | None = None,
        dual_auth_delete: bool | None = None,
    ) -> KeyPolicies:
        """``PUT /keys/{key}/policies``: sets the rotation and/or dual-authorization policy
        (None leaves a policy as it is). Returns the policies the service sent back.

        Raises InvalidArgument (neither given; an interval outside 1 to 12; turning dual
        authorization off), NotAllowed, Gone, NotFound, Unauthorized, Forbidden,
        KeyServiceUnavailable.
        """
        resources: list[dict[str, object]] = []
        if rotation is not None:
            resources.append({"type": MEDIA_POLICY, "rotation": _rotation_body(rotation)})
        if dual_auth_delete is not None:
            resources.append(
                {"type": MEDIA_POLICY, "dualAuthDelete": {"enabled": dual_auth_delete}}
            )
        if not resources:
            raise errors.InvalidArgument("expected a rotation or dual authorization policy")
        params = None
        if len(resources) == 1:
            params = {"policy": "rotation" if rotation is not None else "dualAuthDelete"}
        response = self._send(
            "PUT",
            _key_path(key, "policies"),
            params=params,
            body=_envelope(MEDIA_POLICY, resources),
            media=MEDIA_JSON,
        )
        if response.status_code == 204 or not response.content:
            return self.get_policies(key)
        return _key_policies(response, key)

    def get_instance_policies(self) -> InstancePolicies:
        """``GET /instance/policies``: the dual-authorization and rotation policies new keys
        inherit. Other policy types Key Protect has are ignored.

        Raises Unauthorized, Forbidden, KeyServiceUnavailable.
        """
        _, resources = _collection(self._send("GET", "/instance/policies", with_ring=False))
        dual = False
        dual_stamp: PolicyStamp | None = None
        rotation: RotationPolicy | None = None
        for item in resources:
            kind = item.text("policy_type")
            data = item.doc("policy_data")
            stamp = _stamp(item, updated="lastUpdated")
            if kind.lower() == "dualauthdelete":
                dual, dual_stamp = data.flag("enabled"), stamp
            elif kind.lower() == "rotation":
                attributes = data.opt_doc("attributes")
                rotation = RotationPolicy(
                    enabled=data.flag("enabled"),
                    interval_month=None
                    if attributes is None
                    else attributes.opt_number("interval_month"),
                    stamp=stamp,
                )
        return InstancePolicies(
            dual_auth_delete=dual, dual_auth_stamp=dual_stamp, rotation=rotation
        )

    def put_instance_policies(
        self,
        *,
        dual_auth_delete: bool | None = None,
        rotation: RotationPolicy | None = None,
    ) -> None:
        """``PUT /instance/policies``: sets the policies new keys inherit (None = unchanged).

        Raises InvalidArgument (neither given; bad interval), Unauthorized, Forbidden,
        KeyServiceUnavailable.
        """
        resources: list[dict[str, object]] = []
        if dual_auth_delete is not None:
            resources.append(
                {"policy_type": "dualAuthDelete", "policy_data": {"enabled": dual_auth_delete}}
            )
        if rotation is not None:
            data: dict[str, object] = {"enabled": rotation.enabled}
            if rotation.interval_month is not None:
                data["attributes"] = {"interval_month": rotation.interval_month}
            resources.append({"policy_type": "rotation", "policy_data": data})
        if not resources:
            raise errors.InvalidArgument("expected a rotation or dual authorization policy")
        params = None
        if len(resources) == 1:
            params = {"policy": "rotation" if rotation is not None else "dualAuthDelete"}
        self._send(
            "PUT",
            "/instance/policies",
            params=params,
            body=_envelope(MEDIA_POLICY, resources),
            media=MEDIA_JSON,
            with_ring=False,
        )

    # --- import tokens ---------------------------------------------------------------------

    def create_import_token(
        self, *, expiration: int = 600, max_allowed_retrievals: int = 1
    ) -> ImportTokenInfo:
        """``POST /import_token``: a new import token (``expiration`` in seconds).

        Raises InvalidArgument, Unauthorized, Forbidden, KeyServiceUnavailable.
        """
        response = self._send(
            "POST",
            "/import_token",
            body={"expiration": expiration, "maxAllowedRetrievals": max_allowed_retrievals},
            media=MEDIA_JSON,
            with_ring=False,
        )
        return _token_info(_body(response))

    def get_import_token(self) -> ImportTokenKey:
        """``GET /import_token``: the token's public key and nonce (uses one retrieval).

        Raises NotFound (no token), Conflict (``IMPORT_TOKEN_EXPIRED_ERR``), Unauthorized,
        Forbidden, KeyServiceUnavailable.
        """
        response = self._send("GET", "/import_token", with_ring=False)
        doc = _body(response)
        public = doc.b64("payload")
        if not public.startswith(b"-----BEGIN"):
            # Key Protect's payload is base64 of the PEM; accept base64 of DER as well.
            try:
                public = serialization.load_der_public_key(public).public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            except ValueError:
                raise _malformed(response, "the import token's public key is unreadable") from None
        return ImportTokenKey(info=_token_info(doc), public_key_pem=public, nonce=doc.b64("nonce"))

    # --- registrations ---------------------------------------------------------------------

    def list_registrations(
        self,
        key: str | None = None,
        *,
        crn_query: str | None = None,
        prevent_key_deletion: bool | None = None,
        limit: int = 200,
        offset: int = 0,
    ) -> RegistrationList:
        """``GET /keys/{key}/registrations``, or ``GET /keys/registrations`` for every key.

        ``crn_query``: a resource CRN in which ``*`` matches anything.

        Raises InvalidArgument, NotFound, Unauthorized, Forbidden, KeyServiceUnavailable.
        """
        params: dict[str, str] = {"limit": str(limit), "offset": str(offset)}
        params["totalCount"] = "true"
        if crn_query is not None:
            params["urlEncodedResourceCRNQuery"] = crn_query
        if prevent_key_deletion is not None:
            params["preventKeyDeletion"] = "true" if prevent_key_deletion else "false"
        path = "/keys/registrations" if key is None else _key_path(key, "registrations")
        meta, resources = _collection(self._send("GET", path, params=params))
        regs = tuple(_registration(r) for r in resources)
        total = meta.opt_number("totalCount")
        return RegistrationList(registrations=regs, total=len(regs) if total is None else total)

    # --- aliases ---------------------------------------------------------------------------

    def create_alias(self, key: str, alias: str) -> AliasEntry:
        """``POST /keys/{key}/aliases/{alias}``: at most 5 per key, unique per instance.

        Raises InvalidArgument, Conflict (``KEY_ALIAS_NOT_UNIQUE_ERR``), NotFound, Gone,
        Unauthorized, Forbidden, KeyServiceUnavailable.
        """
        response = self._send("POST", _key_path(key, "aliases", alias))
        _, resources = _collection(response)
        if not resources:
            raise _malformed(response, "the alias is missing from the answer")
        item = resources[0]
        return AliasEntry(
            alias=item.text("alias"),
            key_id=item.text("keyId"),
            creation_date=item.time("creationDate"),
            created_by=item.opt_text("createdBy") or "",
        )

    def delete_alias(self, key: str, alias: str) -> None:
        """``DELETE /keys/{key}/aliases/{alias}``.

        Raises NotFound, Unauthorized, Forbidden, KeyServiceUnavailable.
        """
        self._send("DELETE", _key_path(key, "aliases", alias))

    # --- key rings -------------------------------------------------------------------------

    def list_key_rings(self, *, limit: int = 200, offset: int = 0) -> KeyRingList:
        """``GET /key_rings``: the instance's key rings, ``default`` first.

        Raises Unauthorized, Forbidden, KeyServiceUnavailable.
        """
        params = {"limit": str(limit), "offset": str(offset), "totalCount": "true"}
        meta, resources = _collection(
            self._send("GET", "/key_rings", params=params, with_ring=False)
        )
        rings = [
            KeyRing(
                id=item.text("id"),
                creation_date=item.opt_time("creationDate"),
                created_by=item.opt_text("createdBy"),
            )
            for item in resources
        ]
        total = meta.opt_number("totalCount")
        return KeyRingList(key_rings=tuple(rings), total=len(rings) if total is None else total)

    def create_key_ring(self, ring_id: str) -> None:
        """``POST /key_rings/{ring_id}``: at most 50 rings per instance.

        Raises InvalidArgument, Conflict (exists), Unauthorized, Forbidden,
        KeyServiceUnavailable.
        """
        self._send("POST", f"/key_rings/{_segment(ring_id)}", with_ring=False)

    def delete_key_ring(self, ring_id: str, *, force: bool = False) -> None:
        """``DELETE /key_rings/{ring_id}[?force=true]``: a ring without keys (``force``: or
        with Destroyed keys only, which move to ``default``).

        Raises InvalidArgument (``default``), NotFound, Conflict (``KEY_RING_NOT_EMPTY_ERR``),
        Unauthorized, Forbidden, KeyServiceUnavailable.
        """
        params = {"force": "true"} if force else None
        self._send("DELETE", f"/key_rings/{_segment(ring_id)}", params=params, with_ring=False)

    # --- internals -------------------------------------------------------------------------

    def _action(
        self, key: str, action: str, body: Mapping[str, object] | None, *, prefer: bool = False
    ) -> httpx.Response:
        media = _ACTION_MEDIA.get(action, "application/vnd.ibm.kms.key_action+json")
        if body is None and action not in _ACTION_MEDIA:
            return self._send("POST", _key_path(key, "actions", action), prefer=prefer)
        return self._send(
            "POST", _key_path(key, "actions", action), body=body or {}, media=media, prefer=prefer
        )

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, object] | None = None,
        media: str | None = None,
        prefer: bool = False,
        key_ring: str | None = None,
        with_ring: bool = True,
    ) -> httpx.Response:
        """One request; returns the 2xx response or raises the mapped error."""
        correlation_id = str(uuid.uuid4())
        headers = {
            "authorization": f"Bearer {self._token}",
            "bluemix-instance": self._instance,
            "correlation-id": correlation_id,
            "accept": MEDIA_JSON,
        }
        ring = key_ring if key_ring is not None else self._key_ring
        if with_ring and ring is not None:
            headers["x-kms-key-ring"] = ring
        if prefer:
            headers["prefer"] = "return=representation"
        if body is not None:
            headers["content-type"] = media or MEDIA_JSON
        response = self._request(
            method,
            API + path,
            params=params,
            json=body,
            headers=headers,
            note=f"correlation-id {correlation_id}",
        )
        if response.is_success:
            return response
        raise error_from_response(response, correlation_id=correlation_id)

    def _unreachable(self, exc: httpx.HTTPError, note: str) -> errors.UnavailableError:
        if isinstance(exc, httpx.TimeoutException):
            return errors.KeyServiceUnavailable(
                f"the key service at {self._base} did not answer in time "
                f"({type(exc).__name__}; {note})"
            )
        return super()._unreachable(exc, note)

    def _one_key(self, response: httpx.Response) -> KeyResource:
        found = self._maybe_key(response, fetch=True)
        if found is None:
            raise _malformed(response, "the key is missing from the answer")
        return found

    def _maybe_key(self, response: httpx.Response, *, fetch: bool = False) -> KeyResource | None:
        """The key an answer carries; None for no body. A minimal representation (the id
        only) is read in full with ``fetch``, else None."""
        if response.status_code == 204 or not response.content:
            return None
        _, resources = _collection(response)
        if not resources:
            return None
        first = resources[0]
        if _is_minimal(first):
            return self.get_key_metadata(first.text("id")) if fetch else None
        return _key(first)


# --- errors --------------------------------------------------------------------------------


def error_from_response(
    response: httpx.Response, *, correlation_id: str | None = None
) -> errors.KinkoError:
    """The kinko error for a non-2xx answer: by the envelope's reason code
    (:data:`REASON_ERRORS`), else by HTTP status (:data:`STATUS_ERRORS`).

    The message is the service's reason message (control characters removed, at most
    300 characters) with the code, the status and the correlation id; the error's
    ``reason_code`` is the service's code.
    """
    status = response.status_code
    code, message = _error_reason(response)
    cls = REASON_ERRORS.get(code) if code is not None else None
    if cls is None:
        cls = STATUS_ERRORS.get(status)
    if cls is None:
        # A redirect or any other odd status means the URL is not a Key Protect API.
        unavailable = status >= 500 or status < 400
        cls = errors.KeyServiceUnavailable if unavailable else errors.CallerError
    cid = correlation_id or response.headers.get("correlation-id")
    detail = f"HTTP {status}" + (f" {code}" if code else "")
    if cid:
        detail += f", correlation-id {clean(cid, 64)}"
    text = f"{message or 'the key service refused the request'} ({detail})"
    if issubclass(cls, errors.UnprocessableCiphertext):
        # Opaque by design: the class carries one of two fixed reasons, nothing else.
        reason = (
            errors.UnprocessableCiphertext.MALFORMED
            if message == errors.UnprocessableCiphertext.MALFORMED
            else errors.UnprocessableCiphertext.NOT_AUTHENTIC
        )
        return errors.UnprocessableCiphertext(reason)
    if issubclass(cls, errors.DecryptionError):
        return errors.DecryptionError()
    if status >= 500 or status == 429 or status < 400:
        text = f"the key service failed: {text}"
    return cls(text, reason_code=code) if code else cls(text)


def _error_reason(response: httpx.Response) -> tuple[str | None, str | None]:
    """``reasons[0].code`` and ``.message`` of an error envelope, or ``errorMsg``."""
    try:
        doc = response.json()
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    resources = doc.get("resources")
    if not isinstance(resources, list) or not resources or not isinstance(resources[0], dict):
        return None, None
    first = resources[0]
    reasons = first.get("reasons")
    code: str | None = None
    message: str | None = None
    if isinstance(reasons, list) and reasons and isinstance(reasons[0], dict):
        raw_code = reasons[0].get("code")
        raw_message = reasons[0].get("message")
        if isinstance(raw_code, str) and raw_code:
            code = clean(raw_code, 64)
        if isinstance(raw_message, str) and raw_message:
            message = clean(raw_message, MAX_MESSAGE)
    if message is None:
        error_msg = first.get("errorMsg")
        if isinstance(error_msg, str) and error_msg:
            message = clean(error_msg, MAX_MESSAGE)
    return code, message


# --- request helpers -----------------------------------------------------------------------


def _header_value(what: str, value: str) -> str:
    """``value`` if it can travel in an HTTP header as is (printable ASCII, no spaces); the
    message never repeats it, since it may be a token."""
    if not value or not value.isascii() or not value.isprintable() or " " in value:
        raise errors.InvalidArgument(
            f"the {what} must be printable ASCII without spaces or line breaks"
        )
    return value


def _segment(text: str) -> str:
    if not text:
        raise errors.InvalidArgument("expected a non-empty id in the request path")
    return quote(text, safe="")


def _key_path(key: str, *rest: str) -> str:
    return "/keys/" + "/".join(_segment(part) for part in (key, *rest))


def _envelope(media: str, resources: Sequence[Mapping[str, object]]) -> dict[str, object]:
    return {
        "metadata": {"collectionType": media, "collectionTotal": len(resources)},
        "resources": list(resources),
    }


def _strings(name: str, values: Sequence[str]) -> tuple[str, ...]:
    if isinstance(values, str | bytes):
        raise errors.InvalidArgument(f"expected {name} as a list of strings, got a single value")
    out = tuple(values)
    for i, item in enumerate(out):
        if not isinstance(item, str):
            raise errors.InvalidArgument(f"expected {name}[{i}] to be a string")
    return out


def _cipher_body(ciphertext: str, aad: Sequence[str]) -> dict[str, object]:
    if not isinstance(ciphertext, str) or not ciphertext:
        raise errors.InvalidArgument("expected a ciphertext (Key Protect's base64 text)")
    body: dict[str, object] = {"ciphertext": ciphertext}
    if aad:
        body["aad"] = list(_strings("aad", aad))
    return body


def _rotation_body(policy: RotationPolicy) -> dict[str, object]:
    body: dict[str, object] = {"enabled": policy.enabled}
    if policy.interval_month is not None:
        body["interval_month"] = policy.interval_month
    return body


def _b64(data: bytes) -> str:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise errors.InvalidArgument("expected bytes")
    return base64.b64encode(bytes(data)).decode("ascii")


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise errors.InvalidArgument("expected an aware datetime (with a zone)")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- response parsing ----------------------------------------------------------------------


def _where(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url.path}"


def _malformed(response: httpx.Response, what: str) -> errors.KeyServiceUnavailable:
    return errors.KeyServiceUnavailable(
        f"the key service's answer is not Key Protect's API: {what} "
        f"({_where(response)}, HTTP {response.status_code})"
    )


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        raise _malformed(response, "the body is not JSON") from None


def _body(response: httpx.Response) -> _Doc:
    """The answer's body as one JSON object."""
    doc = _json(response)
    if not isinstance(doc, dict):
        raise _malformed(response, "expected a JSON object")
    return _Doc(doc, f"{_where(response)}: body")


def _collection(response: httpx.Response) -> tuple[_Doc, list[_Doc]]:
    """The ``metadata`` (empty if absent) and ``resources`` of a collection envelope."""
    body = _body(response)
    meta = body.opt_doc("metadata") or _Doc({}, f"{_where(response)}: metadata")
    raw = body.raw("resources")
    if raw is None:
        return meta, []
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise _malformed(response, "expected a collection envelope with resources")
    where = _where(response)
    return meta, [_Doc(r, f"{where}: resources[{i}]") for i, r in enumerate(raw)]


class _Doc:
    """Typed reads of one JSON object of an answer.

    A missing or mistyped field raises KeyServiceUnavailable naming the request and the
    field, never a value.
    """

    __slots__ = ("_data", "_where")

    def __init__(self, data: Mapping[str, object], where: str) -> None:
        self._data = data
        self._where = where

    def _fail(self, name: str, expected: str) -> errors.KeyServiceUnavailable:
        return errors.KeyServiceUnavailable(
            f"the key service's answer is not Key Protect's API: {self._where}.{name}: "
            f"expected {expected}"
        )

    def has(self, name: str) -> bool:
        return self._data.get(name) is not None

    def raw(self, name: str) -> object:
        return self._data.get(name)

    def text(self, name: str) -> str:
        value = self._data.get(name)
        if not isinstance(value, str):
            raise self._fail(name, "a string")
        return value

    def opt_text(self, name: str) -> str | None:
        return None if self._data.get(name) is None else self.text(name)

    def flag(self, name: str, default: bool | None = None) -> bool:
        value = self._data.get(name)
        if value is None and default is not None:
            return default
        if not isinstance(value, bool):
            raise self._fail(name, "true or false")
        return value

    def opt_flag(self, name: str) -> bool | None:
        return None if self._data.get(name) is None else self.flag(name)

    def number(self, name: str) -> int:
        value = self._data.get(name)
        if isinstance(value, str) and value.isdigit():
            return int(value)  # Key Protect writes some numbers as strings (bitLength).
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(name, "an integer")
        return value

    def opt_number(self, name: str) -> int | None:
        return None if self._data.get(name) is None else self.number(name)

    def time(self, name: str) -> datetime:
        text = self.text(name)
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise self._fail(name, "an RFC 3339 time") from None
        if moment.tzinfo is None:
            raise self._fail(name, "an RFC 3339 time with a zone")
        return moment.astimezone(UTC)

    def opt_time(self, name: str) -> datetime | None:
        return None if self._data.get(name) is None else self.time(name)

    def b64(self, name: str) -> bytes:
        try:
            return base64.b64decode(self.text(name).encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise self._fail(name, "standard base64") from None

    def opt_b64(self, name: str) -> bytes | None:
        return None if self._data.get(name) is None else self.b64(name)

    def strs(self, name: str) -> tuple[str, ...]:
        value = self._data.get(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(name, "a list of strings")
        return tuple(value)

    def doc(self, name: str) -> _Doc:
        value = self._data.get(name)
        if not isinstance(value, dict):
            raise self._fail(name, "an object")
        return _Doc(value, f"{self._where}.{name}")

    def opt_doc(self, name: str) -> _Doc | None:
        return None if self._data.get(name) is None else self.doc(name)


def _version(doc: _Doc) -> VersionRef:
    return VersionRef(id=doc.text("id"), creation_date=doc.time("creationDate"))


def _version_id(doc: _Doc, name: str) -> str:
    return doc.doc(name).text("id")


def _is_minimal(doc: _Doc) -> bool:
    """Whether a key resource is the ``return=minimal`` form (its id only)."""
    return not doc.has("state") and not doc.has("name")


def _key(doc: _Doc) -> KeyResource:
    state_number = doc.number("state")
    try:
        state = KeyState(state_number)
    except ValueError:
        raise doc._fail("state", "1, 2, 3 or 5") from None
    dual = doc.opt_doc("dualAuthDelete")
    rotation = doc.opt_doc("rotation")
    bits = doc.opt_number("algorithmBitSize")
    if bits is None:
        meta = doc.opt_doc("algorithmMetadata")
        bits = None if meta is None else meta.opt_number("bitLength")
    key_version = doc.opt_doc("keyVersion")
    return KeyResource(
        id=doc.text("id"),
        name=doc.text("name"),
        state=state,
        extractable=doc.flag("extractable", default=False),
        imported=doc.flag("imported", default=False),
        crn=doc.opt_text("crn") or "",
        key_ring_id=doc.opt_text("keyRingID") or "default",
        aliases=doc.strs("aliases"),
        description=doc.opt_text("description") or "",
        algorithm_type=doc.opt_text("algorithmType"),
        algorithm_bit_size=bits,
        creation_date=doc.opt_time("creationDate"),
        created_by=doc.opt_text("createdBy"),
        last_update_date=doc.opt_time("lastUpdateDate"),
        last_rotate_date=doc.opt_time("lastRotateDate"),
        key_version=None
        if key_version is None or not key_version.has("creationDate")
        else _version(key_version),
        expiration_date=doc.opt_time("expirationDate"),
        dual_auth_delete=None
        if dual is None
        else DualAuthStatus(
            enabled=dual.flag("enabled", default=False),
            key_set_for_deletion=dual.flag("keySetForDeletion", default=False),
            auth_expiration=dual.opt_time("authExpiration"),
        ),
        rotation=None
        if rotation is None
        else RotationPolicy(
            enabled=rotation.flag("enabled", default=False),
            interval_month=rotation.opt_number("interval_month"),
        ),
        deleted=doc.flag("deleted", default=False),
        deletion_date=doc.opt_time("deletionDate"),
        deleted_by=doc.opt_text("deletedBy"),
        restore_allowed=doc.opt_flag("restoreAllowed"),
        restore_expiration_date=doc.opt_time("restoreExpirationDate"),
        purge_allowed=doc.opt_flag("purgeAllowed"),
        purge_allowed_from=doc.opt_time("purgeAllowedFrom"),
        purge_scheduled_on=doc.opt_time("purgeScheduledOn"),
        payload=doc.opt_b64("payload"),
    )


def _stamp(doc: _Doc, *, updated: str) -> PolicyStamp | None:
    if not (doc.has("createdBy") and doc.has("creationDate")):
        return None
    created = doc.time("creationDate")
    return PolicyStamp(
        created_by=doc.text("createdBy"),
        creation_date=created,
        updated_by=doc.opt_text("updatedBy") or doc.text("createdBy"),
        last_update=doc.opt_time(updated) or created,
    )


def _key_policies(response: httpx.Response, key: str) -> KeyPolicies:
    _, resources = _collection(response)
    key_id, crn = key, ""
    rotation: RotationPolicy | None = None
    dual: DualAuthPolicy | None = None
    for item in resources:
        key_id = item.opt_text("id") or key_id
        crn = item.opt_text("crn") or crn
        stamp = _stamp(item, updated="lastUpdateDate")
        body = item.opt_doc("rotation")
        if body is not None:
            rotation = RotationPolicy(
                enabled=body.flag("enabled", default=False),
                interval_month=body.opt_number("interval_month"),
                stamp=stamp,
            )
        body = item.opt_doc("dualAuthDelete")
        if body is not None:
            dual = DualAuthPolicy(enabled=body.flag("enabled", default=False), stamp=stamp)
    return KeyPolicies(key_id=key_id, crn=crn, rotation=rotation, dual_auth_delete=dual)


def _token_info(doc: _Doc) -> ImportTokenInfo:
    return ImportTokenInfo(
        creation_date=doc.time("creationDate"),
        expiration_date=doc.time("expirationDate"),
        max_allowed_retrievals=doc.number("maxAllowedRetrievals"),
        remaining_retrievals=doc.number("remainingRetrievals"),
    )


def _registration(doc: _Doc) -> Registration:
    version = doc.opt_doc("keyVersion")
    created = doc.time("creationDate")
    return Registration(
        key_id=doc.text("keyId"),
        resource_crn=doc.text("resourceCrn"),
        created_by=doc.opt_text("createdBy") or "",
        creation_date=created,
        updated_by=doc.opt_text("updatedBy") or "",
        last_updated=doc.opt_time("lastUpdated") or created,
        key_version_id="" if version is None else version.text("id"),
        key_version_creation_date=created
        if version is None
        else (version.opt_time("creationDate") or created),
        description=doc.opt_text("description") or "",
        prevent_key_deletion=doc.flag("preventKeyDeletion", default=False),
    )
