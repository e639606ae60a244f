"""The key service: every Key Protect API v2 operation, over the Store and Hsm ports.

Job: the use cases behind kinko's Key Protect-compatible REST API. Each public method of
:class:`KeyService` is one Key Protect operation; it takes the caller's
:class:`~kinko.keys.auth.Principal`, the instance (``bluemix-instance``), the key (id or
alias), the optional key ring (``x-kms-key-ring``) and correlation id, checks the role table,
applies the lifecycle rules of :mod:`kinko.keys.model`, keeps the metadata in the store and the
material in the HSM, audits the call and returns a value of :mod:`kinko.keys.results`.

How material is kept:

- **Root keys**: each version is an AES-256 key created in (or imported into) the HSM; the
  store keeps its handle. Wrap is AES-256-GCM inside the HSM with a fresh 12-byte nonce from
  the service's ``rng`` (random nonces: fine for far fewer than 2**32 wraps per version) and
  AAD = :func:`kinko.keys.model.wrap_aad` (the caller's ``aad`` strings bound to instance,
  key id and version id). The ciphertext is Key Protect's base64 JSON with ``handle`` = the
  version id.
- **Standard keys** must be readable by authorised roles, so their material is kept, but
  never in clear: it is sealed by AES-256-GCM inside the HSM under one service-wide
  **metadata KEK** (an HSM key created on first use, its handle at
  ``/kinko/service/metadata-kek``), with AAD binding instance, key id and version id. Caveat:
  purging a standard key deletes its sealed record, but copies may survive in store history
  or backups until compaction; they stay sealed under the KEK, which is not destroyed.
  Crypto-shredding is exact for root keys only.
- **Import tokens**: an RSA key pair per instance (4096 bits by default), its private key
  sealed under the metadata KEK the same way.
- **Purge** marks the record (the key reads as not found from then on), destroys every
  version's HSM object, then deletes the record and its alias entries. A crash in between
  is finished by the next read of the key or run of the scheduler. After the purge, old
  ciphertexts cannot be unwrapped by anyone: the material is gone from the HSM.

Secure import (Key Protect's import token, as its clients implement it): ``GET
/import_token`` gives a public key and a 12-byte nonce. The client sends ``payload`` = the key
material encrypted to that public key with RSAES-OAEP (SHA-256 for ``RSAES_OAEP_SHA_256``, the
default; SHA-1 for ``RSAES_OAEP_SHA_1``; MGF1 with the same hash, empty label),
``encryptedNonce`` = AES-GCM of the nonce under the key material with a 12-byte ``iv`` and no
AAD (ciphertext‖tag), and ``iv``. The service decrypts the material with the token's private
key, opens the nonce with the material: an authentication failure is 400
``INCORRECT_NONCE_IV_ERR``, a different nonce 400 ``INCORRECT_NONCE_ERR``. The token may be
used for several imports until it expires (409 ``IMPORT_TOKEN_EXPIRED_ERR``); each ``GET``
uses one of its retrievals.

Invariants:

- The clock is read once per operation; ids (UUID v4), nonces and generated keys come from
  ``rng``. Expiry is applied on every read (a view shows Deactivated as soon as the date
  passes) and persisted by :meth:`KeyService.run_scheduled`; a key due for its automatic
  purge (90 days after deletion) is purged when it is read.
- Instances are tenants: a principal acts only on its own instance (else 401), and a key is
  looked up under its instance's prefix only, so another instance's key is 404.
- Every metadata write is a guarded transaction on the records it read (``mod_revision``),
  retried on conflict up to ``max_attempts`` times (then Conflict ``CONFLICT_ERR``): two
  kinko processes on one store never lose each other's updates. HSM objects made for a write
  that finally fails are destroyed again.
- Every call is audited, refused ones too, with ids only (:mod:`kinko.keys.audit`). No
  message, audit record or repr carries key material, plaintext or ciphertext.
- **Key-record cache** (ADR 13). Wrap, unwrap and rewrap read the key's record through a
  cache of parsed records (ids, states, dates, HSM handles; never material or plaintext),
  kept at most ``key_cache_ttl`` seconds (1 s by default) on a monotonic clock, so that the
  hot path does not read the store on every call. Every write of this service (every
  transaction, whether it succeeded or not) empties the cache before it returns, so a change
  made through this process takes effect on its next call. A change made by another process
  on the same store is seen within ``key_cache_ttl``, and sooner whenever it would make a
  call succeed: a cached record that refuses the call (state, expiry, key ring, purge) or
  lacks the ciphertext's version is read again from the store before the call fails, and so
  is a cached record whose version's material the HSM no longer has (another process purged
  the key): the call is tried once more on the fresh record, and only that attempt's answer
  reaches the caller and the audit log. State and expiry are still evaluated against ``now``
  on every call; every other operation, and every read-modify-write, reads the store.
"""

from __future__ import annotations

import hmac
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import datetime
from types import TracebackType
from typing import Final, Literal, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kinko.errors import (
    Conflict,
    CorruptMetadata,
    DecryptionError,
    InvalidArgument,
    KinkoError,
    NotAllowed,
    NotFound,
    UnavailableError,
    UnprocessableCiphertext,
)
from kinko.hsm.port import Hsm
from kinko.keys import model
from kinko.keys import records as rec
from kinko.keys.audit import FAILURE, SUCCESS, AuditRecord, AuditSink
from kinko.keys.auth import SYSTEM, Action, Principal, TokenBook, authorize
from kinko.keys.model import (
    DEFAULT_RING,
    GENERATED_KEY_BYTES,
    AliasEntry,
    ImportToken,
    InstancePolicies,
    Key,
    KeyRing,
    KeyState,
    KeyVersion,
    Registration,
    RotationPolicy,
    SealedMaterial,
    WrappedDek,
)
from kinko.keys.results import (
    DualAuthPolicy,
    DualAuthView,
    ImportTokenInfo,
    ImportTokenKey,
    KeyList,
    KeyPolicies,
    KeyRingList,
    KeyUse,
    KeyView,
    RegistrationList,
    RewrapResult,
    ScheduledRun,
    UnwrapResult,
    VersionList,
    VersionRef,
    WrapResult,
    key_crn,
)
from kinko.store.port import MAX_TXN_OPS, Delete, Entry, Op, Put, Store, TxnResult

Clock = Callable[[], datetime]
Rng = Callable[[int], bytes]

#: Key Protect's list defaults and ceiling.
DEFAULT_LIMIT: Final = 200
MAX_LIMIT: Final = 5000
#: Guarded writes are retried this often before Conflict.
DEFAULT_MAX_ATTEMPTS: Final = 16
DEFAULT_IMPORT_KEY_BITS: Final = 4096
#: States ``list_keys`` shows unless asked otherwise (Key Protect's default ``state=0,1,2,3``).
DEFAULT_LIST_STATES: Final = frozenset({KeyState.ACTIVE, KeyState.SUSPENDED, KeyState.DEACTIVATED})
ENCRYPTION_ALGORITHMS: Final = ("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1")
_PAGE: Final = 500


#: Parsed key records kept per service (see KeyService._load_key).
_PARSED_KEYS_MAX = 4096
#: How long wrap, unwrap and rewrap may use a key record read earlier (seconds; ADR 13).
DEFAULT_KEY_CACHE_TTL: Final = 1.0
#: Key references kept in the key-record cache; it starts over when full.
_KEY_CACHE_MAX = 4096

_T = TypeVar("_T")


class _MaterialGone(Exception):
    """The HSM no longer has a key version's material (its NotFound is the cause).

    Raised by ``_wrap_with`` and ``_unwrap_with`` and never let out of the service:
    :meth:`KeyService._with_crypto_key` either retries on a fresh record (the cached one may
    predate a purge by another process) or turns it into CorruptMetadata.
    """


@dataclass(frozen=True, slots=True)
class _CachedKey:
    """A parsed key record and the monotonic time until which wrap and unwrap may use it."""

    key: Key
    expires: float


@dataclass(frozen=True, slots=True)
class _HeldUse:
    """A check_key_use answer, the cache generation it was read in, the monotonic time until
    which it holds, and the expiration date that ends a wrap answer sooner."""

    use: KeyUse
    generation: int
    until: float
    expires: datetime | None


@dataclass(slots=True)
class _Note:
    """What the audit record of the current call should name (filled in as it goes)."""

    key_id: str | None = None
    key_version: str | None = None
    resource: str | None = None


@dataclass(frozen=True, slots=True)
class _Material:
    """Key material on its way into the HSM or the seal; never leaves the service."""

    data: bytes
    imported: bool

    def __repr__(self) -> str:
        return f"_Material(<{len(self.data)} bytes>, imported={self.imported})"


class _Audited:
    """The audit of one key service call, as a context manager.

    On entry it authorizes ``principal`` for ``action`` on ``instance`` (unless ``system``);
    on exit it writes one record: success, or failure with the kinko error's reason code
    (``INTERNAL_ERR`` for anything else), naming what the call put in its :class:`_Note`.
    The exception, if any, propagates unchanged (so does a failure to write the record). A
    class rather than a generator-based context manager: it is on every call's path.
    """

    __slots__ = (
        "_action",
        "_correlation_id",
        "_instance",
        "_note",
        "_now",
        "_principal",
        "_sink",
        "_system",
    )

    def __init__(
        self,
        sink: AuditSink,
        now: datetime,
        principal: Principal,
        action: Action,
        instance: str,
        correlation_id: str | None,
        system: bool,
    ) -> None:
        self._sink = sink
        self._now = now
        self._principal = principal
        self._action = action
        self._instance = instance
        self._correlation_id = correlation_id
        self._system = system
        self._note = _Note()

    def __enter__(self) -> _Note:
        if not self._system:
            try:
                authorize(self._principal, self._action, self._instance)
            except BaseException as exc:
                self._write(exc)
                raise
        return self._note

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._write(exc)

    def _write(self, exc: BaseException | None) -> None:
        if exc is None:
            outcome: Literal["success", "failure"] = SUCCESS
            reason = None
        else:
            outcome = FAILURE
            reason = exc.reason_code if isinstance(exc, KinkoError) else "INTERNAL_ERR"
        note = self._note
        self._sink.record(
            AuditRecord(
                timestamp=self._now,
                # A StrEnum member is its value: no lookup of .value (a property).
                action=self._action,
                outcome=outcome,
                who=self._principal.name,
                instance=self._instance,
                token_id=self._principal.token_id,
                key_id=note.key_id,
                key_version=note.key_version,
                resource=note.resource,
                reason=reason,
                correlation_id=self._correlation_id,
            )
        )


class KeyService:
    """Root and standard keys over an HSM, with Key Protect's rules, roles and audit.

    ``store``: where metadata lives (shared by every kinko process of a deployment).
    ``hsm``: where root keys and the metadata KEK live. ``audit``: the audit sink.
    ``clock``: returns the current aware UTC time. ``rng``: returns n random bytes.
    ``max_attempts``: guarded-write retries. ``import_key_bits``: RSA size of import tokens.
    ``key_cache_ttl``: how long wrap, unwrap and rewrap may use a key record read earlier, in
    seconds of ``monotonic`` (0: read the store on every call); a write through this service
    empties the cache at once, so the bound is for changes made by other processes on the
    same store (module docstring, ADR 13).

    Raises InvalidArgument (``max_attempts`` < 1, ``import_key_bits`` < 2048, a negative
    ``key_cache_ttl``).
    """

    def __init__(
        self,
        store: Store,
        hsm: Hsm,
        *,
        audit: AuditSink,
        clock: Clock,
        rng: Rng,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        import_key_bits: int = DEFAULT_IMPORT_KEY_BITS,
        key_cache_ttl: float = DEFAULT_KEY_CACHE_TTL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_attempts < 1:
            raise InvalidArgument(f"max_attempts must be at least 1, got {max_attempts}")
        if import_key_bits < 2048:
            raise InvalidArgument(f"import_key_bits must be at least 2048, got {import_key_bits}")
        if not key_cache_ttl >= 0:
            raise InvalidArgument(f"key_cache_ttl must be at least 0 s, got {key_cache_ttl}")
        self._store = store
        self._hsm = hsm
        self._audit = audit
        self._clock = clock
        self._rng = rng
        self._max_attempts = max_attempts
        self._import_key_bits = import_key_bits
        self._tokens = TokenBook(store)
        self._kek_handle: str | None = None
        self._parsed: dict[tuple[bytes, int], Key] = {}
        self._key_cache_ttl = key_cache_ttl
        self._monotonic = monotonic
        # (instance, key id or alias) -> record; see _crypto_key. Read without the lock; the
        # lock orders fills against the emptying that follows every write (_txn).
        self._key_cache: dict[tuple[str, str], _CachedKey] = {}
        self._key_cache_lock = threading.Lock()
        self._key_cache_generation = 0
        # check_key_use answers, each kept while its record may be used (see there).
        self._use_memo: dict[tuple[str, str, str | None, str | None], _HeldUse] = {}

    # --- authentication --------------------------------------------------------------------

    def authenticate(
        self,
        token: str | None,
        *,
        instance: str | None = None,
        correlation_id: str | None = None,
    ) -> Principal:
        """The principal of a bearer token (without ``Bearer``). A refusal is audited.

        Raises Unauthorized (401 ``UNAUTHORIZED_ERR``), CorruptMetadata, StoreUnavailable.
        """
        try:
            return self._tokens.authenticate(token, now=self._now())
        except KinkoError as exc:
            self._audit.record(
                AuditRecord(
                    timestamp=self._now(),
                    action="kms.auth.authenticate",
                    outcome=FAILURE,
                    who="anonymous",
                    instance=instance,
                    reason=exc.reason_code,
                    correlation_id=correlation_id,
                )
            )
            raise

    # --- keys: create, read, list ----------------------------------------------------------

    def create_key(
        self,
        principal: Principal,
        instance: str,
        *,
        name: str,
        extractable: bool = False,
        description: str = "",
        payload: bytes | None = None,
        encrypted_nonce: bytes | None = None,
        iv: bytes | None = None,
        encryption_algorithm: str | None = None,
        expiration_date: datetime | None = None,
        aliases: Sequence[str] = (),
        key_ring: str | None = None,
        rotation: RotationPolicy | None = None,
        dual_auth_delete: bool | None = None,
        correlation_id: str | None = None,
    ) -> KeyView:
        """``POST /keys``: creates a root key (``extractable=False``) or a standard key.

        Without ``payload`` the material is generated (in the HSM for a root key). With
        ``payload`` the key is imported: plain material (32 bytes for a root key, 1 to 7,500
        for a standard key) or, with ``encrypted_nonce`` and ``iv``, a secure import through
        the instance's import token (root keys only; see the module docstring). ``rotation``
        and ``dual_auth_delete`` override the instance policies (None = inherit).

        Raises Unauthorized, Forbidden (Writer or Manager), InvalidArgument (``BAD_BODY_ERR``:
        name, description, aliases, expiration, sizes, algorithm; ``KEY_ALIAS_QUOTA_ERR``),
        NotAllowed (``KEY_ROOT_REQ_ERR``, ``INCORRECT_NONCE_ERR``,
        ``INCORRECT_NONCE_IV_ERR``), NotFound (``KEY_RING_NOT_FOUND_ERR``; no import token),
        Conflict (``KEY_ALIAS_NOT_UNIQUE_ERR``; ``IMPORT_TOKEN_EXPIRED_ERR``; contention),
        HsmUnavailable, StoreUnavailable, UnavailableError (audit).
        """
        now = self._now()
        with self._audited(now, principal, Action.KEY_CREATE, instance, correlation_id) as note:
            ring_id = DEFAULT_RING if key_ring is None else key_ring
            ring_entry = self._require_ring(instance, ring_id)
            policies, _ = self._policies(instance)
            key_id, version_id = self._uuid(), self._uuid()
            note.key_id, note.key_version = key_id, version_id
            material = self._material_for_create(
                instance,
                now=now,
                extractable=extractable,
                payload=payload,
                encrypted_nonce=encrypted_nonce,
                iv=iv,
                encryption_algorithm=encryption_algorithm,
            )
            bit_length = 256 if not extractable else 8 * len(material.data)
            # Check every rule before touching the HSM: bad input changes nothing.
            probe = model.new_key(
                key_id=key_id,
                instance=instance,
                name=name,
                extractable=extractable,
                version=KeyVersion(version_id, now, hsm_handle="0" * 32),
                bit_length=bit_length,
                now=now,
                actor=principal.name,
                imported=material.imported,
                description=description,
                key_ring_id=ring_id,
                aliases=aliases,
                expiration_date=expiration_date,
                dual_auth_delete=dual_auth_delete,
                rotation=rotation,
                instance_policies=policies,
            )
            if probe.aliases:
                self._check_alias_room(instance, len(probe.aliases))
                for alias in probe.aliases:
                    if self._store.get(rec.alias_path(instance, alias)) is not None:
                        raise Conflict(
                            f"the alias {alias!r} is in use in this instance",
                            reason_code="KEY_ALIAS_NOT_UNIQUE_ERR",
                        )
            version = self._new_version(
                instance, key_id, version_id, now, material, root=not extractable
            )
            try:
                key = replace(probe, versions=(version,))
                self._insert_key(instance, key, ring_entry, now=now, actor=principal.name)
            except BaseException:
                self._discard(version)
                raise
            return self._view(key, now)

    def create_key_with_policies(
        self,
        principal: Principal,
        instance: str,
        *,
        name: str,
        rotation: RotationPolicy | None = None,
        dual_auth_delete: bool | None = None,
        extractable: bool = False,
        description: str = "",
        payload: bytes | None = None,
        encrypted_nonce: bytes | None = None,
        iv: bytes | None = None,
        encryption_algorithm: str | None = None,
        expiration_date: datetime | None = None,
        aliases: Sequence[str] = (),
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyView:
        """``POST /keys_with_policy_overrides``: :meth:`create_key` with policy overrides.

        Raises what :meth:`create_key` raises.
        """
        return self.create_key(
            principal,
            instance,
            name=name,
            extractable=extractable,
            description=description,
            payload=payload,
            encrypted_nonce=encrypted_nonce,
            iv=iv,
            encryption_algorithm=encryption_algorithm,
            expiration_date=expiration_date,
            aliases=aliases,
            key_ring=key_ring,
            rotation=rotation,
            dual_auth_delete=dual_auth_delete,
            correlation_id=correlation_id,
        )

    def list_keys(
        self,
        principal: Principal,
        instance: str,
        *,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
        states: Sequence[int] | None = None,
        extractable: bool | None = None,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyList:
        """``GET /keys``: keys of the instance, oldest first, filtered and paged.

        ``states`` defaults to Active, Suspended and Deactivated (add 5 for Destroyed; 0,
        Pre-activation, matches nothing). ``extractable`` filters root/standard keys,
        ``key_ring`` a ring. ``limit`` 1 to 5,000 (default 200).

        Raises Unauthorized, Forbidden (Reader and up), InvalidArgument (limit, offset,
        states), CorruptMetadata, StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.KEY_LIST, instance, correlation_id):
            _check_page(limit, offset)
            wanted = DEFAULT_LIST_STATES if states is None else _check_states(states)
            matched: list[Key] = []
            for key in self._live_keys(instance, now):
                if key.state not in wanted:
                    continue
                if extractable is not None and key.extractable != extractable:
                    continue
                if key_ring is not None and key.key_ring_id != key_ring:
                    continue
                matched.append(key)
            matched.sort(key=lambda k: (k.creation_date, k.id))
            page = matched[offset : offset + limit]
            return KeyList(keys=tuple(self._view(k, now) for k in page), total=len(matched))

    def get_key(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyView:
        """``GET /keys/{id}``: the key, with ``payload`` for a standard key not Destroyed.

        Raises Unauthorized, Forbidden (ReaderPlus, Writer or Manager), NotFound
        (``KEY_NOT_FOUND_ERR``), CorruptMetadata, HsmUnavailable, StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.KEY_READ, instance, correlation_id) as note:
            key, _ = self._find(now, instance, key_ref, key_ring, note)
            key = model.expire(key, now)
            payload = None
            if key.extractable and key.state is not KeyState.DESTROYED:
                version = key.latest_version
                note.key_version = version.id
                payload = self._unseal_version(key, version)
            return self._view(key, now, payload=payload)

    def get_key_metadata(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyView:
        """``GET /keys/{id}/metadata``: the key without material.

        Raises Unauthorized, Forbidden (Reader and up), NotFound, CorruptMetadata,
        StoreUnavailable.
        """
        now = self._now()
        with self._audited(
            now, principal, Action.KEY_READ_METADATA, instance, correlation_id
        ) as note:
            key, _ = self._find(now, instance, key_ref, key_ring, note)
            return self._view(key, now)

    def get_versions(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
        all_key_states: bool = False,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> VersionList:
        """``GET /keys/{id}/versions``: the key's versions, newest first.

        Without ``all_key_states`` only an Active key's versions are listed (409 otherwise,
        410 for a Destroyed key), as Key Protect.

        Raises Unauthorized, Forbidden (Reader and up), InvalidArgument, NotFound,
        WrongState, Gone, CorruptMetadata, StoreUnavailable.
        """
        now = self._now()
        with self._audited(
            now, principal, Action.KEY_LIST_VERSIONS, instance, correlation_id
        ) as note:
            _check_page(limit, offset)
            key, _ = self._find(now, instance, key_ref, key_ring, note)
            key = model.expire(key, now)
            model.check_versions_listable(key, all_key_states=all_key_states)
            newest_first = tuple(_ref(v) for v in reversed(key.versions))
            return VersionList(
                versions=newest_first[offset : offset + limit], total=len(newest_first)
            )

    # --- wrap, unwrap, rewrap --------------------------------------------------------------

    def wrap(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        plaintext: bytes | None = None,
        aad: Sequence[str] = (),
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> WrapResult:
        """``POST /keys/{id}/actions/wrap``: wraps ``plaintext`` (1 to 7,500 bytes) with the
        latest version; without one, wraps and returns a generated 32-byte DEK.

        Raises Unauthorized, Forbidden (Reader and up), InvalidArgument (sizes, aad over 255
        characters), NotFound, NotAllowed (``KEY_ROOT_REQ_ERR``), WrongState (not Active),
        Gone, CorruptMetadata, HsmUnavailable, StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.WRAP, instance, correlation_id) as note:
            items = model.check_aad(aad)
            if plaintext is not None:
                model.check_plaintext(plaintext)

            def attempt(key: Key) -> WrapResult:
                generated = self._rng(GENERATED_KEY_BYTES) if plaintext is None else None
                data = generated if generated is not None else plaintext
                assert data is not None  # One of the two is set, by construction.
                version = key.latest_version
                note.key_version = version.id
                ciphertext = self._wrap_with(key, version, data, items)
                return WrapResult(
                    ciphertext=ciphertext, key_version=_ref(version), plaintext=generated
                )

            return self._with_crypto_key(
                now, instance, key_ref, key_ring, note, model.check_wrap, None, attempt
            )

    def unwrap(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        ciphertext: str,
        aad: Sequence[str] = (),
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> UnwrapResult:
        """``POST /keys/{id}/actions/unwrap``: the plaintext of a wrap ciphertext of any
        version of the key; if that is not the latest, also the plaintext rewrapped under the
        latest (``ciphertext``, ``rewrapped_key_version``).

        Raises Unauthorized, Forbidden (Reader and up), InvalidArgument (aad),
        UnprocessableCiphertext (422: malformed, tampered, other key or version, wrong aad),
        NotFound, NotAllowed (``KEY_ROOT_REQ_ERR``), WrongState (Suspended), Gone,
        CorruptMetadata, HsmUnavailable, StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.UNWRAP, instance, correlation_id) as note:
            items = model.check_aad(aad)
            wrapped = model.parse_ciphertext(ciphertext)

            def attempt(key: Key) -> UnwrapResult:
                version, plaintext = self._unwrap_with(key, wrapped, items)
                note.key_version = version.id
                latest = key.latest_version
                if latest.id == version.id:
                    return UnwrapResult(plaintext=plaintext, key_version=_ref(version))
                rewrapped = self._wrap_with(key, latest, plaintext, items)
                return UnwrapResult(
                    plaintext=plaintext,
                    key_version=_ref(version),
                    ciphertext=rewrapped,
                    rewrapped_key_version=_ref(latest),
                )

            return self._with_crypto_key(
                now,
                instance,
                key_ref,
                key_ring,
                note,
                model.check_unwrap,
                wrapped.version_id,
                attempt,
            )

    def rewrap(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        ciphertext: str,
        aad: Sequence[str] = (),
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> RewrapResult:
        """``POST /keys/{id}/actions/rewrap``: the same plaintext wrapped under the latest
        version, without revealing it.

        Raises what :meth:`unwrap` raises.
        """
        now = self._now()
        with self._audited(now, principal, Action.REWRAP, instance, correlation_id) as note:
            items = model.check_aad(aad)
            wrapped = model.parse_ciphertext(ciphertext)

            def attempt(key: Key) -> RewrapResult:
                version, plaintext = self._unwrap_with(key, wrapped, items)
                latest = key.latest_version
                note.key_version = latest.id
                return RewrapResult(
                    ciphertext=self._wrap_with(key, latest, plaintext, items),
                    key_version=_ref(version),
                    rewrapped_key_version=_ref(latest),
                )

            return self._with_crypto_key(
                now, instance, key_ref, key_ring, note, _check_rewrap, wrapped.version_id, attempt
            )

    def check_key_use(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        unwrap_version: str | None = None,
        key_ring: str | None = None,
    ) -> KeyUse:
        """Whether ``principal`` could wrap with the key now (``unwrap_version`` None), or
        unwrap a ciphertext of version ``unwrap_version``, without using the HSM: the checks
        of :meth:`wrap` or :meth:`unwrap` (role, root key, state, expiry as of now, key
        ring, the version's existence) on the key's record, read through the key-record
        cache (ADR 13: a change made through this service applies at once, one made by
        another process within ``key_cache_ttl``, and a cached record that refuses is read
        again before the refusal counts). A successful answer is reused while the record it
        came from may be, until the next write of this service, and for a wrap until the
        key's expiration date (compared with the clock on every call); a refusal is never
        kept.

        For a caller that holds material the key wrapped earlier (the root-key KMS plugin's
        local KEKs, ADR 15) and must stop using it as soon as the key may no longer be used.
        Not audited: it reads metadata only, and the wraps and unwraps that gave the caller
        its material were audited.

        Raises Unauthorized, Forbidden (Reader and up), NotFound, NotAllowed
        (``KEY_ROOT_REQ_ERR``), WrongState (wrap: not Active; unwrap: Suspended), Gone,
        UnprocessableCiphertext (the key has no version ``unwrap_version``), CorruptMetadata,
        StoreUnavailable.
        """
        authorize(principal, Action.WRAP if unwrap_version is None else Action.UNWRAP, instance)
        memo = (instance, key_ref, key_ring, unwrap_version)
        held = self._use_memo.get(memo)
        if (
            held is not None
            and held.generation == self._key_cache_generation
            and self._monotonic() < held.until
            and (held.expires is None or self._clock() < held.expires)
        ):
            return held.use
        generation = self._key_cache_generation
        # Read before the record is: a record read from the store holds from no later
        # than this (as _crypto_key dates its cache entry), however long the read takes.
        started = self._monotonic()
        now = self._now()
        check = model.check_wrap if unwrap_version is None else model.check_unwrap
        key, cached = self._crypto_key(
            now, instance, key_ref, key_ring, _Note(), check, unwrap_version
        )
        if unwrap_version is not None and key.version(unwrap_version) is None:
            raise UnprocessableCiphertext()
        use = KeyUse(key_id=key.id, latest_version=_ref(key.latest_version))
        if self._key_cache_ttl > 0:
            # The answer holds as long as the record it came from may be used (ADR 13), no
            # write of this service runs, and, for a wrap, the key has not expired.
            until = cached.expires if cached is not None else started + self._key_cache_ttl
            expires = key.expiration_date if unwrap_version is None else None
            if len(self._use_memo) >= _KEY_CACHE_MAX:
                self._use_memo = {}
            self._use_memo[memo] = _HeldUse(use, generation, until, expires)
        return use

    # --- lifecycle actions -----------------------------------------------------------------

    def rotate(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        payload: bytes | None = None,
        encrypted_nonce: bytes | None = None,
        iv: bytes | None = None,
        encryption_algorithm: str | None = None,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyView:
        """``POST /keys/{id}/actions/rotate``: adds a version (new material in the HSM).

        Imported keys need new material (``payload``, plain or secure import); generated keys
        take none. At most one rotation per hour; allowed in Active and Deactivated.

        Raises Unauthorized, Forbidden (Writer or Manager), InvalidArgument, NotFound,
        NotAllowed (``KEY_ROOT_REQ_ERR``, ``KEY_PAYLOAD_REQ_ERR``, nonce errors),
        WrongState, Gone, TooEarly (``KEY_ROTATION_NOT_PERMITTED``), Conflict, HsmUnavailable,
        StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.ROTATE, instance, correlation_id) as note:
            key, _ = self._find(now, instance, key_ref, key_ring, note)
            model.check_rotate(key, now=now, payload_given=payload is not None)
            material: _Material | None = None
            if payload is not None:
                material = self._imported_material(
                    instance,
                    now=now,
                    root=True,
                    payload=payload,
                    encrypted_nonce=encrypted_nonce,
                    iv=iv,
                    encryption_algorithm=encryption_algorithm,
                )
            elif encrypted_nonce is not None or iv is not None:
                raise InvalidArgument("encryptedNonce and iv come only with a payload")
            version_id = self._uuid()
            note.key_version = version_id
            version = self._new_version(instance, key.id, version_id, now, material, root=True)
            try:
                rotated = self._cas_key(
                    now,
                    instance,
                    key.id,
                    key_ring,
                    note,
                    lambda k: model.rotate(
                        k,
                        now=now,
                        actor=principal.name,
                        version=version,
                        payload_given=payload is not None,
                    ),
                )
            except BaseException:
                self._discard(version)
                raise
            return self._view(rotated, now)

    def disable(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyView:
        """``POST /keys/{id}/actions/disable``: Active → Suspended.

        Raises Unauthorized, Forbidden (Manager), NotFound, NotAllowed (``KEY_ROOT_REQ_ERR``),
        WrongState, Gone, Conflict, StoreUnavailable.
        """
        return self._transition(
            principal, instance, key_ref, key_ring, correlation_id, Action.DISABLE, model.disable
        )

    def enable(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyView:
        """``POST /keys/{id}/actions/enable``: Suspended → Active, 30 s after the last change.

        Raises Unauthorized, Forbidden (Manager), NotFound, NotAllowed, WrongState, Gone,
        TooEarly (``REQ_TOO_EARLY_ERR``), Conflict, StoreUnavailable.
        """
        return self._transition(
            principal, instance, key_ref, key_ring, correlation_id, Action.ENABLE, model.enable
        )

    def set_key_for_deletion(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyView:
        """``POST /keys/{id}/actions/setKeyForDeletion``: the first of two authorizations a
        dual-authorization key needs to be deleted; valid 7 days.

        Raises Unauthorized, Forbidden (Writer or Manager), NotFound, DeletionRefused
        (``NOT_DUAL_AUTH_ERR``), WrongState, Gone, Conflict, StoreUnavailable.
        """
        return self._transition(
            principal,
            instance,
            key_ref,
            key_ring,
            correlation_id,
            Action.SET_FOR_DELETION,
            model.schedule_deletion,
        )

    def unset_key_for_deletion(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyView:
        """``POST /keys/{id}/actions/unsetKeyForDeletion``: cancels the authorization.

        Raises Unauthorized, Forbidden (Writer or Manager), NotFound, DeletionRefused
        (``NOT_DUAL_AUTH_ERR``), WrongState, Gone, Conflict, StoreUnavailable.
        """
        return self._transition(
            principal,
            instance,
            key_ref,
            key_ring,
            correlation_id,
            Action.UNSET_FOR_DELETION,
            model.unschedule_deletion,
        )

    def delete_key(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        force: bool = False,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyView:
        """``DELETE /keys/{id}[?force=true]``: → Destroyed (restorable for 30 days).

        Raises Unauthorized, Forbidden (Manager), NotFound, Gone (``KEY_DELETED_ERR``: deleted
        already), DeletionRefused (``AUTHORIZATIONS_NOT_MET``, ``PROTECTED_RESOURCE_ERR``,
        ``PREV_KEY_DEL_ERR``), Conflict, StoreUnavailable.
        """
        return self._transition(
            principal,
            instance,
            key_ref,
            key_ring,
            correlation_id,
            Action.DELETE,
            lambda k, *, now, actor: model.delete(k, now=now, actor=actor, force=force),
        )

    def restore_key(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyView:
        """``POST /keys/{id}/restore``: Destroyed → Active, 30 s to 30 days after deletion.

        Raises Unauthorized, Forbidden (Manager), NotFound, WrongState, TooEarly
        (``REQ_TOO_EARLY_ERR``), NotAllowed (``KEY_RESTORE_EXPIRED``, ``KEY_EXPIRED_ERR``),
        Conflict, StoreUnavailable.
        """
        return self._transition(
            principal,
            instance,
            key_ref,
            key_ring,
            correlation_id,
            Action.RESTORE,
            model.restore,
        )

    def purge_key(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyView:
        """``DELETE /keys/{id}/purge``: destroys every version's HSM object and the record,
        4 hours or more after the deletion. Returns the key as it was (state 5).

        Raises Unauthorized, Forbidden (KeyPurge), NotFound, WrongState (not Destroyed),
        TooEarly (``REQ_TOO_EARLY_ERR``), Conflict, HsmUnavailable, StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.PURGE, instance, correlation_id) as note:
            key, _ = self._find(now, instance, key_ref, key_ring, note)
            model.purge_check(key, now=now)
            purged = self._purge(instance, key.id, now=now, automatic=False)
            return self._view(purged, now)

    def sync_key(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """``POST /keys/{id}/actions/sync``: asks registered services to resynchronise.

        kinko has no event bus for integrated services, so this checks and records the
        request only. Raises Unauthorized, Forbidden (Writer or Manager), NotFound,
        NotAllowed (``KEY_ROOT_REQ_ERR``), StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.SYNC, instance, correlation_id) as note:
            key, _ = self._find(now, instance, key_ref, key_ring, note)
            if not key.is_root:
                raise NotAllowed("sync needs a root key", reason_code="KEY_ROOT_REQ_ERR")

    # --- policies --------------------------------------------------------------------------

    def get_key_policies(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyPolicies:
        """``GET /keys/{id}/policies``: the key's rotation and dual-authorization policies.

        Raises Unauthorized, Forbidden (Manager), NotFound, CorruptMetadata, StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.POLICY_READ, instance, correlation_id) as note:
            key, _ = self._find(now, instance, key_ref, key_ring, note)
            return _policies_of(key)

    def put_key_policies(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        rotation: RotationPolicy | None = None,
        dual_auth_delete: bool | None = None,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyPolicies:
        """``PUT /keys/{id}/policies``: sets the rotation and/or dual-authorization policy.

        Raises Unauthorized, Forbidden (Manager), InvalidArgument (interval, disabling dual
        authorization, rotation policy on an imported key), NotAllowed (``KEY_ROOT_REQ_ERR``),
        NotFound, Gone, Conflict, StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.POLICY_WRITE, instance, correlation_id) as note:
            key = self._cas_key(
                now,
                instance,
                key_ref,
                key_ring,
                note,
                lambda k: model.set_key_policies(
                    k,
                    now=now,
                    actor=principal.name,
                    rotation=rotation,
                    dual_auth_delete=dual_auth_delete,
                ),
            )
            return _policies_of(key)

    def get_instance_policies(
        self, principal: Principal, instance: str, *, correlation_id: str | None = None
    ) -> InstancePolicies:
        """``GET /instance/policies``: the instance's dual-authorization and rotation policies.

        Raises Unauthorized, Forbidden (Manager), CorruptMetadata, StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.INSTANCE_POLICY_READ, instance, correlation_id):
            policies, _ = self._policies(instance)
            return policies

    def put_instance_policies(
        self,
        principal: Principal,
        instance: str,
        *,
        dual_auth_delete: bool | None = None,
        rotation: RotationPolicy | None = None,
        correlation_id: str | None = None,
    ) -> InstancePolicies:
        """``PUT /instance/policies``: sets the policies new keys inherit (None = unchanged).

        Raises Unauthorized, Forbidden (Manager), InvalidArgument, Conflict, StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.INSTANCE_POLICY_WRITE, instance, correlation_id):
            for _ in range(self._max_attempts):
                old, entry = self._policies(instance)
                new = model.set_instance_policies(
                    old,
                    now=now,
                    actor=principal.name,
                    dual_auth_delete=dual_auth_delete,
                    rotation=rotation,
                )
                expect = 0 if entry is None else entry.mod_revision
                path = rec.policies_path(instance)
                if self._txn([Put(path, rec.dump_policies(new), expect)]).succeeded:
                    return new
            raise _contention()

    # --- import tokens ---------------------------------------------------------------------

    def create_import_token(
        self,
        principal: Principal,
        instance: str,
        *,
        expiration: int = model.IMPORT_TOKEN_DEFAULT_SECONDS,
        max_allowed_retrievals: int = model.IMPORT_TOKEN_DEFAULT_RETRIEVALS,
        correlation_id: str | None = None,
    ) -> ImportTokenInfo:
        """``POST /import_token``: a new import token for the instance, replacing any other.

        ``expiration`` in seconds (300 to 86,400), ``max_allowed_retrievals`` 1 to 500.

        Raises Unauthorized, Forbidden (Writer or Manager), InvalidArgument, HsmUnavailable,
        StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.IMPORT_TOKEN_CREATE, instance, correlation_id):
            nonce = self._rng(model.IMPORT_TOKEN_NONCE_BYTES)
            # Validate before the (slow) RSA key generation and the HSM seal.
            model.new_import_token(
                instance=instance,
                now=now,
                actor=principal.name,
                nonce=nonce,
                public_key_der=b"",
                sealed_private_key=SealedMaterial(b"", b""),
                expiration_seconds=expiration,
                max_allowed_retrievals=max_allowed_retrievals,
            )
            private_key = rsa.generate_private_key(
                public_exponent=65537, key_size=self._import_key_bits
            )
            private_der = private_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            public_der = private_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            sealed = self._seal(private_der, model.seal_aad("import-token", instance, nonce.hex()))
            token = model.new_import_token(
                instance=instance,
                now=now,
                actor=principal.name,
                nonce=nonce,
                public_key_der=public_der,
                sealed_private_key=sealed,
                expiration_seconds=expiration,
                max_allowed_retrievals=max_allowed_retrievals,
            )
            path = rec.import_token_path(instance)
            for _ in range(self._max_attempts):
                entry = self._store.get(path)
                expect = 0 if entry is None else entry.mod_revision
                if self._txn([Put(path, rec.dump_import_token(token), expect)]).succeeded:
                    return _token_info(token)
            raise _contention()

    def get_import_token(
        self, principal: Principal, instance: str, *, correlation_id: str | None = None
    ) -> ImportTokenKey:
        """``GET /import_token``: the public key and nonce; uses one retrieval.

        Raises Unauthorized, Forbidden (Writer or Manager), NotFound (no token), Conflict
        (``IMPORT_TOKEN_EXPIRED_ERR``: expired or no retrievals left), CorruptMetadata,
        StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.IMPORT_TOKEN_READ, instance, correlation_id):
            path = rec.import_token_path(instance)
            for _ in range(self._max_attempts):
                token, entry = self._import_token(instance)
                used = model.retrieve_import_token(token, now=now)
                if self._txn(
                    [Put(path, rec.dump_import_token(used), entry.mod_revision)]
                ).succeeded:
                    public_pem = serialization.load_der_public_key(
                        used.public_key_der
                    ).public_bytes(
                        serialization.Encoding.PEM,
                        serialization.PublicFormat.SubjectPublicKeyInfo,
                    )
                    return ImportTokenKey(
                        info=_token_info(used), public_key_pem=public_pem, nonce=used.nonce
                    )
            raise _contention()

    # --- registrations ---------------------------------------------------------------------

    def list_registrations(
        self,
        principal: Principal,
        instance: str,
        key_ref: str | None = None,
        *,
        crn_query: str | None = None,
        prevent_key_deletion: bool | None = None,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> RegistrationList:
        """``GET /keys/{id}/registrations`` (``key_ref`` given) or ``GET
        /keys/registrations`` (all keys of the instance, Destroyed ones included).

        ``crn_query``: a CRN in which ``*`` matches any run of characters
        (``urlEncodedResourceCRNQuery``, already URL-decoded). ``prevent_key_deletion``
        filters on that flag.

        Raises Unauthorized, Forbidden (Reader and up), InvalidArgument, NotFound,
        CorruptMetadata, StoreUnavailable.
        """
        now = self._now()
        with self._audited(
            now, principal, Action.REGISTRATION_LIST, instance, correlation_id
        ) as note:
            _check_page(limit, offset)
            pattern = None if crn_query is None else _crn_pattern(crn_query)
            if key_ref is not None:
                key, _ = self._find(now, instance, key_ref, key_ring, note)
                keys: list[Key] = [key]
            else:
                keys = [
                    k
                    for k in self._live_keys(instance, now)
                    if key_ring is None or k.key_ring_id == key_ring
                ]
            regs = [
                r
                for k in keys
                for r in k.registrations
                if (pattern is None or pattern.fullmatch(r.resource_crn))
                and (prevent_key_deletion is None or r.prevent_key_deletion == prevent_key_deletion)
            ]
            regs.sort(key=lambda r: (r.creation_date, r.key_id, r.resource_crn))
            return RegistrationList(
                registrations=tuple(regs[offset : offset + limit]), total=len(regs)
            )

    def create_registration(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        crn: str,
        *,
        description: str = "",
        prevent_key_deletion: bool = False,
        key_version_id: str | None = None,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> Registration:
        """``POST /keys/{id}/registrations/{crn}``: the resource ``crn`` uses the root key
        (at ``key_version_id``, default the latest). Service identities only.

        Raises Unauthorized, Forbidden (``SERVICE_ONLY_ERR``), InvalidArgument, NotFound,
        Unprocessable (``KEY_ROOT_REQ_REG_ERR``, ``KEY_INVALID_STATE_ERR``,
        ``KEY_VERSION_INVALID``), Conflict (registered already), StoreUnavailable.
        """
        return self._change_registration(
            principal,
            instance,
            key_ref,
            crn,
            Action.REGISTRATION_CREATE,
            lambda k, now: model.register(
                k,
                now=now,
                actor=principal.name,
                crn=crn,
                description=description,
                prevent_key_deletion=prevent_key_deletion,
                key_version_id=key_version_id,
            ),
            key_ring=key_ring,
            correlation_id=correlation_id,
        )

    def update_registration(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        crn: str,
        *,
        description: str | None = None,
        prevent_key_deletion: bool | None = None,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> Registration:
        """``PATCH /keys/{id}/registrations/{crn}``: changes description and/or
        ``preventKeyDeletion``. Service identities only.

        Raises Unauthorized, Forbidden (``SERVICE_ONLY_ERR``), InvalidArgument, NotFound,
        Conflict, StoreUnavailable.
        """
        return self._change_registration(
            principal,
            instance,
            key_ref,
            crn,
            Action.REGISTRATION_UPDATE,
            lambda k, now: model.update_registration(
                k,
                now=now,
                actor=principal.name,
                crn=crn,
                description=description,
                prevent_key_deletion=prevent_key_deletion,
            ),
            key_ring=key_ring,
            correlation_id=correlation_id,
        )

    def replace_registration(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        crn: str,
        *,
        description: str = "",
        prevent_key_deletion: bool = False,
        key_version_id: str | None = None,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> Registration:
        """``PUT /keys/{id}/registrations/{crn}``: creates or replaces the registration; its
        key version may only move forward. Service identities only.

        Raises Unauthorized, Forbidden (``SERVICE_ONLY_ERR``), InvalidArgument, NotFound,
        Unprocessable (``KEY_VERSION_INVALID``, ``KEY_ROOT_REQ_REG_ERR``,
        ``KEY_INVALID_STATE_ERR``), Conflict, StoreUnavailable.
        """
        return self._change_registration(
            principal,
            instance,
            key_ref,
            crn,
            Action.REGISTRATION_REPLACE,
            lambda k, now: model.replace_registration(
                k,
                now=now,
                actor=principal.name,
                crn=crn,
                description=description,
                prevent_key_deletion=prevent_key_deletion,
                key_version_id=key_version_id,
            ),
            key_ring=key_ring,
            correlation_id=correlation_id,
        )

    def _change_registration(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        crn: str,
        action: Action,
        change: Callable[[Key, datetime], Key],
        *,
        key_ring: str | None,
        correlation_id: str | None,
    ) -> Registration:
        """Audits ``action``, applies ``change`` to the key with compare-and-swap, and returns
        the registration of ``crn`` as stored. Raises what ``change`` and the store raise."""
        now = self._now()
        with self._audited(now, principal, action, instance, correlation_id) as note:
            note.resource = crn
            key = self._cas_key(now, instance, key_ref, key_ring, note, lambda k: change(k, now))
            return _registration(key, crn, note)

    def delete_registration(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        crn: str,
        *,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """``DELETE /keys/{id}/registrations/{crn}``. Service identities only.

        Raises Unauthorized, Forbidden (``SERVICE_ONLY_ERR``), InvalidArgument, NotFound,
        Conflict, StoreUnavailable.
        """
        now = self._now()
        with self._audited(
            now, principal, Action.REGISTRATION_DELETE, instance, correlation_id
        ) as note:
            note.resource = crn
            self._cas_key(
                now,
                instance,
                key_ref,
                key_ring,
                note,
                lambda k: model.unregister(k, now=now, crn=crn),
            )

    # --- aliases ---------------------------------------------------------------------------

    def create_alias(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        alias: str,
        *,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> AliasEntry:
        """``POST /keys/{id}/aliases/{alias}``: at most 5 per key, unique in the instance.

        Raises Unauthorized, Forbidden (Writer or Manager), InvalidArgument (bad alias;
        ``KEY_ALIAS_QUOTA_ERR``), NotFound, Gone, Conflict (``KEY_ALIAS_NOT_UNIQUE_ERR``),
        StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.ALIAS_CREATE, instance, correlation_id) as note:
            note.resource = alias
            model.check_alias(alias)
            for _ in range(self._max_attempts):
                key, entry = self._find(now, instance, key_ref, key_ring, note)
                new = model.add_alias(key, alias, now=now)
                if self._store.get(rec.alias_path(instance, alias)) is not None:
                    raise _alias_taken(alias)
                self._check_alias_room(instance, 1)
                item = AliasEntry(alias, key.id, now, principal.name)
                result = self._txn(
                    [
                        Put(rec.key_path(instance, key.id), rec.dump_key(new), entry.mod_revision),
                        Put(rec.alias_path(instance, alias), rec.dump_alias(item), 0),
                    ]
                )
                if result.succeeded:
                    return item
            raise _contention()

    def delete_alias(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        alias: str,
        *,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """``DELETE /keys/{id}/aliases/{alias}``.

        Raises Unauthorized, Forbidden (Writer or Manager), NotFound, Conflict,
        StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.ALIAS_DELETE, instance, correlation_id) as note:
            note.resource = alias
            for _ in range(self._max_attempts):
                key, entry = self._find(now, instance, key_ref, key_ring, note)
                new = model.remove_alias(key, alias, now=now)
                ops: list[Op] = [
                    Put(rec.key_path(instance, key.id), rec.dump_key(new), entry.mod_revision)
                ]
                index = self._store.get(rec.alias_path(instance, alias))
                if index is not None and rec.load_alias(index.value).key_id == key.id:
                    ops.append(Delete(rec.alias_path(instance, alias), index.mod_revision))
                if self._txn(ops).succeeded:
                    return
            raise _contention()

    # --- key rings -------------------------------------------------------------------------

    def list_key_rings(
        self,
        principal: Principal,
        instance: str,
        *,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
        correlation_id: str | None = None,
    ) -> KeyRingList:
        """``GET /key_rings``: ``default`` first, then the others by creation.

        Raises Unauthorized, Forbidden (Reader and up), InvalidArgument, CorruptMetadata,
        StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.KEY_RING_LIST, instance, correlation_id):
            _check_page(limit, offset)
            rings, _ = self._rings(instance)
            everything = (KeyRing(DEFAULT_RING), *rings)
            return KeyRingList(key_rings=everything[offset : offset + limit], total=len(everything))

    def create_key_ring(
        self,
        principal: Principal,
        instance: str,
        ring_id: str,
        *,
        correlation_id: str | None = None,
    ) -> KeyRing:
        """``POST /key_rings/{id}``: at most 50 rings per instance (``default`` included).

        Raises Unauthorized, Forbidden (Writer or Manager), InvalidArgument, Conflict (exists),
        StoreUnavailable.
        """
        now = self._now()
        with self._audited(
            now, principal, Action.KEY_RING_CREATE, instance, correlation_id
        ) as note:
            note.resource = ring_id
            ring = model.new_key_ring(ring_id, now=now, actor=principal.name)
            for _ in range(self._max_attempts):
                rings, entry = self._rings(instance)
                new = model.add_key_ring(rings, ring)
                expect = 0 if entry is None else entry.mod_revision
                path = rec.rings_path(instance)
                if self._txn([Put(path, rec.dump_rings(new), expect)]).succeeded:
                    return ring
            raise _contention()

    def delete_key_ring(
        self,
        principal: Principal,
        instance: str,
        ring_id: str,
        *,
        force: bool = False,
        correlation_id: str | None = None,
    ) -> None:
        """``DELETE /key_rings/{id}[?force=true]``: only a ring without keys, or with
        Destroyed keys only and ``force`` (they move to ``default``).

        Raises Unauthorized, Forbidden (Manager), InvalidArgument (``default``), NotFound
        (``KEY_RING_NOT_FOUND_ERR``), Conflict (``KEY_RING_NOT_EMPTY_ERR``), StoreUnavailable.
        """
        now = self._now()
        with self._audited(
            now, principal, Action.KEY_RING_DELETE, instance, correlation_id
        ) as note:
            note.resource = ring_id
            if ring_id == DEFAULT_RING:
                raise InvalidArgument("the default key ring cannot be deleted")
            for _ in range(self._max_attempts):
                rings, entry = self._rings(instance)
                if entry is None or all(r.id != ring_id for r in rings):
                    raise _ring_missing()
                members = [
                    (k, e)
                    for k, e in self._key_entries(instance)
                    if k.key_ring_id == ring_id and k.purge_started is None
                ]
                live = [k for k, _ in members if model.expire(k, now).state in model.LIVE_STATES]
                if live or (members and not force):
                    raise Conflict(
                        f"the key ring holds {len(members)} key(s) ({len(live)} not Destroyed)",
                        reason_code="KEY_RING_NOT_EMPTY_ERR",
                    )
                moves: list[Op] = [
                    Put(
                        rec.key_path(instance, k.id),
                        rec.dump_key(replace(k, key_ring_id=DEFAULT_RING, last_update=now)),
                        e.mod_revision,
                    )
                    for k, e in members
                ]
                # Move Destroyed keys in batches first; the ring goes in the last txn.
                while len(moves) >= MAX_TXN_OPS:
                    batch, moves = moves[: MAX_TXN_OPS - 1], moves[MAX_TXN_OPS - 1 :]
                    self._txn(batch)
                remaining = tuple(r for r in rings if r.id != ring_id)
                ring_op = Put(
                    rec.rings_path(instance), rec.dump_rings(remaining), entry.mod_revision
                )
                if self._txn([*moves, ring_op]).succeeded:
                    return
            raise _contention()

    def move_key(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        *,
        key_ring_id: str,
        key_ring: str | None = None,
        correlation_id: str | None = None,
    ) -> KeyView:
        """``PATCH /keys/{id}`` with ``keyRingID``: moves the key to an existing ring.

        Raises Unauthorized, Forbidden (Manager), InvalidArgument, NotFound (the key, or
        ``KEY_RING_NOT_FOUND_ERR``), Gone, Conflict, StoreUnavailable.
        """
        now = self._now()
        with self._audited(now, principal, Action.PATCH, instance, correlation_id) as note:
            note.resource = key_ring_id
            model.check_ring_id(key_ring_id)
            for _ in range(self._max_attempts):
                ring_entry = self._require_ring(instance, key_ring_id)
                key, entry = self._find(now, instance, key_ref, key_ring, note)
                new = model.move_to_ring(key, key_ring_id, now=now)
                if new == key:
                    return self._view(key, now)
                ops: list[Op] = [
                    Put(rec.key_path(instance, key.id), rec.dump_key(new), entry.mod_revision)
                ]
                if ring_entry is not None:
                    ops.append(Put(ring_entry.key, ring_entry.value, ring_entry.mod_revision))
                if self._txn(ops).succeeded:
                    return self._view(new, now)
            raise _contention()

    # --- the scheduler ---------------------------------------------------------------------

    def run_scheduled(self, now: datetime | None = None) -> ScheduledRun:
        """One pass of the server's scheduler over every key of every instance.

        Finishes interrupted purges and purges keys deleted 90 days ago or more, persists
        expirations (Deactivated, audited as ``kms.secrets.expire``) and rotates generated
        root keys whose rotation policy interval has passed. A key that fails is recorded in
        ``failed`` (and audited) and the pass goes on. ``now`` defaults to the clock.

        Raises StoreUnavailable (the key list cannot be read).
        """
        now = self._now() if now is None else model.check_now(now)
        rotated: list[str] = []
        expired: list[str] = []
        purged: list[str] = []
        failed: list[tuple[str, str]] = []
        for entry in self._all_entries(rec.KEYS):
            try:
                key = rec.load_key(entry.value)
            except CorruptMetadata as exc:
                failed.append((entry.key.decode("utf-8", "replace"), exc.reason_code))
                continue
            try:
                if key.purge_started is not None or model.auto_purge_due(key, now):
                    self._system_purge(key, now)
                    purged.append(key.id)
                    continue
                if model.expire(key, now) != key:
                    self._system_expire(key, now)
                    expired.append(key.id)
                if model.rotation_due(key, now):
                    self._system_rotate(key, now)
                    rotated.append(key.id)
            except KinkoError as exc:
                failed.append((key.id, exc.reason_code))
        return ScheduledRun(
            rotated=tuple(rotated),
            expired=tuple(expired),
            purged=tuple(purged),
            failed=tuple(failed),
        )

    def _system_purge(self, key: Key, now: datetime) -> None:
        with self._audited(now, SYSTEM, Action.PURGE, key.instance, None, system=True) as note:
            note.key_id = key.id
            self._purge(key.instance, key.id, now=now, automatic=True)

    def _system_expire(self, key: Key, now: datetime) -> None:
        with self._audited(now, SYSTEM, Action.EXPIRE, key.instance, None, system=True) as note:
            self._cas_key(now, key.instance, key.id, None, note, lambda k: model.expire(k, now))

    def _system_rotate(self, key: Key, now: datetime) -> None:
        with self._audited(now, SYSTEM, Action.ROTATE, key.instance, None, system=True) as note:
            version_id = self._uuid()
            note.key_id, note.key_version = key.id, version_id
            version = self._new_version(key.instance, key.id, version_id, now, None, root=True)

            def change(k: Key) -> Key:
                if not model.rotation_due(k, now):
                    raise Conflict("the key was rotated meanwhile")
                return model.rotate(
                    k, now=now, actor=SYSTEM.name, version=version, payload_given=False
                )

            try:
                self._cas_key(now, key.instance, key.id, None, note, change)
            except BaseException:
                self._discard(version)
                raise

    # --- internals: audit, time, ids -------------------------------------------------------

    def _now(self) -> datetime:
        return model.check_now(self._clock())

    def _uuid(self) -> str:
        return str(uuid.UUID(bytes=self._rng(16), version=4))

    def _audited(
        self,
        now: datetime,
        principal: Principal,
        action: Action,
        instance: str,
        correlation_id: str | None,
        *,
        system: bool = False,
    ) -> _Audited:
        """Authorizes the call (unless ``system``) and audits how it ends: the context's
        value is the note the call fills in. See :class:`_Audited`."""
        return _Audited(self._audit, now, principal, action, instance, correlation_id, system)

    def _transition(
        self,
        principal: Principal,
        instance: str,
        key_ref: str,
        key_ring: str | None,
        correlation_id: str | None,
        action: Action,
        fn: Callable[..., Key],
    ) -> KeyView:
        now = self._now()
        with self._audited(now, principal, action, instance, correlation_id) as note:
            key = self._cas_key(
                now,
                instance,
                key_ref,
                key_ring,
                note,
                lambda k: fn(k, now=now, actor=principal.name),
            )
            return self._view(key, now)

    # --- internals: store ------------------------------------------------------------------

    def _txn(self, ops: Sequence[Op]) -> TxnResult:
        """Every write of the service. Empties the key-record cache before returning, whatever
        the outcome (an unknown outcome may have changed a record too)."""
        try:
            return self._store.txn(ops)
        finally:
            self._forget_keys()

    def _all_entries(self, prefix: bytes) -> Iterator[Entry]:
        start = b""
        revision = 0
        while True:
            page = self._store.range(prefix, start_after=start, limit=_PAGE, revision=revision)
            yield from page.entries
            if not page.more or not page.entries:
                return
            start, revision = page.entries[-1].key, page.revision

    def _key_entries(self, instance: str) -> Iterator[tuple[Key, Entry]]:
        for entry in self._all_entries(rec.keys_prefix(instance)):
            yield rec.load_key(entry.value), entry

    def _live_keys(self, instance: str, now: datetime) -> Iterator[Key]:
        """The instance's keys as of ``now``; purges what is due on the way."""
        for key, _ in self._key_entries(instance):
            if key.purge_started is not None or model.auto_purge_due(key, now):
                self._purge_quietly(key, now)
                continue
            yield model.expire(key, now)

    def _entry_for(self, instance: str, key_ref: str) -> Entry | None:
        if model.is_key_id(key_ref):
            return self._store.get(rec.key_path(instance, key_ref))
        try:
            model.check_alias(key_ref)
        except InvalidArgument:
            return None
        index = self._store.get(rec.alias_path(instance, key_ref))
        if index is None:
            return None
        return self._store.get(rec.key_path(instance, rec.load_alias(index.value).key_id))

    def _find(
        self, now: datetime, instance: str, key_ref: str, key_ring: str | None, note: _Note
    ) -> tuple[Key, Entry]:
        """The stored key (id or alias) and its entry, read from the store. Purges a key
        that is due."""
        entry = self._entry_for(instance, key_ref)
        if entry is None:
            raise _key_missing()
        return self._found(now, instance, self._load_key(entry), key_ring, note), entry

    def _found(
        self, now: datetime, instance: str, key: Key, key_ring: str | None, note: _Note
    ) -> Key:
        """The checks every lookup of a key makes, on a record from the store or the cache."""
        if key.instance != instance:
            raise CorruptMetadata("a stored key names another instance than its path")
        note.key_id = key.id
        if key.purge_started is not None or model.auto_purge_due(key, now):
            self._purge_quietly(key, now)
            raise _key_missing()
        if key_ring is not None and key.key_ring_id != key_ring:
            raise _key_missing()
        return key

    def _with_crypto_key(
        self,
        now: datetime,
        instance: str,
        key_ref: str,
        key_ring: str | None,
        note: _Note,
        check: Callable[[Key, datetime], Key],
        version_id: str | None,
        attempt: Callable[[Key], _T],
    ) -> _T:
        """``attempt(key)`` on the key for a wrap, unwrap or rewrap (:meth:`_crypto_key`).

        If the key came from the cache and the HSM no longer has the material of a version
        it names, the record may predate a purge by another process (ADR 13): the entry is
        dropped, the record read again from the store, checked, and ``attempt`` run once
        more on it; only that fresh attempt's answer reaches the caller (and the audit
        record, which is written once, by the caller). Nothing else is retried: a version's
        HSM handle never changes (handles are random, never reused), so a stale record
        cannot make a ciphertext fail to open, and a version it lacks is read again already.

        Raises what :meth:`_crypto_key` and ``attempt`` raise; CorruptMetadata when a
        version's material is missing from the HSM although the store still names it.
        """
        key, cached = self._crypto_key(now, instance, key_ref, key_ring, note, check, version_id)
        try:
            return attempt(key)
        except _MaterialGone as exc:
            if cached is None:
                raise _material_missing() from exc.__cause__
        self._drop_key((instance, key_ref), cached)
        # What the cached attempt named is not what the fresh one finds (a purged key has
        # no record left to name).
        note.key_id = note.key_version = None
        key, _ = self._crypto_key(
            now, instance, key_ref, key_ring, note, check, version_id, use_cache=False
        )
        try:
            return attempt(key)
        except _MaterialGone as exc:
            raise _material_missing() from exc.__cause__

    def _crypto_key(
        self,
        now: datetime,
        instance: str,
        key_ref: str,
        key_ring: str | None,
        note: _Note,
        check: Callable[[Key, datetime], Key],
        version_id: str | None = None,
        *,
        use_cache: bool = True,
    ) -> tuple[Key, _CachedKey | None]:
        """The key for a wrap, unwrap or rewrap, as ``check(key, now)`` returns it, and the
        cache entry it came from (None: read from the store).

        Uses the cached record while it is younger than ``key_cache_ttl`` (unless not
        ``use_cache``); the cache only ever delays a change that makes the call fail. A
        cached record that fails any check or lacks ``version_id`` (a version another
        process added) is read again from the store, and only that fresh record's errors
        reach the caller. A record read from the store is remembered only if it passed
        ``check`` and no write of this service ran meanwhile.

        Raises what :meth:`_find` and ``check`` raise.
        """
        if self._key_cache_ttl > 0:
            ref = (instance, key_ref)
            cached = self._key_cache.get(ref) if use_cache else None
            if cached is not None and self._monotonic() < cached.expires:
                try:
                    key = check(self._found(now, instance, cached.key, key_ring, note), now)
                except KinkoError:
                    pass  # Maybe stale: the store has the last word.
                else:
                    if version_id is None or key.version(version_id) is not None:
                        return key, cached
            generation = self._key_cache_generation
            expires = self._monotonic() + self._key_cache_ttl
            stored, _ = self._find(now, instance, key_ref, key_ring, note)
            key = check(stored, now)
            self._remember_key(ref, stored, generation, expires)
            return key, None
        stored, _ = self._find(now, instance, key_ref, key_ring, note)
        return check(stored, now), None

    def _drop_key(self, ref: tuple[str, str], cached: _CachedKey) -> None:
        """Removes ``cached`` from the cache, unless another call replaced it meanwhile."""
        with self._key_cache_lock:
            if self._key_cache.get(ref) is cached:
                del self._key_cache[ref]

    def _remember_key(
        self, ref: tuple[str, str], key: Key, generation: int, expires: float
    ) -> None:
        """Caches ``key`` under ``ref`` unless a write emptied the cache since ``generation``
        was read (the record may predate that write)."""
        with self._key_cache_lock:
            if generation != self._key_cache_generation:
                return
            if len(self._key_cache) >= _KEY_CACHE_MAX:
                self._key_cache.clear()
            self._key_cache[ref] = _CachedKey(key, expires)

    def _forget_keys(self) -> None:
        """Empties the key-record cache and refuses fills that started before."""
        with self._key_cache_lock:
            self._key_cache_generation += 1
            self._key_cache.clear()

    def _load_key(self, entry: Entry) -> Key:
        """The key of a stored record, parsed once per (path, mod_revision).

        A store never gives one path's revision two contents (revisions only grow), and a
        Key is immutable, so the parsed record can be shared; parsing is most of a wrap's
        cost after the HSM. The memo is bounded and simply starts over when full.
        Raises CorruptMetadata.
        """
        memo_key = (entry.key, entry.mod_revision)
        key = self._parsed.get(memo_key)
        if key is None:
            key = rec.load_key(entry.value)
            if len(self._parsed) >= _PARSED_KEYS_MAX:
                self._parsed.clear()
            self._parsed[memo_key] = key
        return key

    def _cas_key(
        self,
        now: datetime,
        instance: str,
        key_ref: str,
        key_ring: str | None,
        note: _Note,
        change: Callable[[Key], Key],
    ) -> Key:
        """Reads the key, applies ``change``, writes it if its record did not change meanwhile;
        retries on a lost race. Errors of ``change`` propagate unchanged."""
        for _ in range(self._max_attempts):
            key, entry = self._find(now, instance, key_ref, key_ring, note)
            new = change(key)
            if new == key:
                return key
            path = rec.key_path(instance, key.id)
            if self._txn([Put(path, rec.dump_key(new), entry.mod_revision)]).succeeded:
                return new
        raise _contention()

    def _insert_key(
        self, instance: str, key: Key, ring_entry: Entry | None, *, now: datetime, actor: str
    ) -> None:
        for _ in range(self._max_attempts):
            ops: list[Op] = [Put(rec.key_path(instance, key.id), rec.dump_key(key), 0)]
            for alias in key.aliases:
                item = AliasEntry(alias, key.id, now, actor)
                ops.append(Put(rec.alias_path(instance, alias), rec.dump_alias(item), 0))
            if ring_entry is not None:
                # Guard: the ring still exists (rewriting it unchanged bumps its revision).
                ops.append(Put(ring_entry.key, ring_entry.value, ring_entry.mod_revision))
            result = self._txn(ops)
            if result.succeeded:
                return
            for index in result.failed:
                if index == 0:
                    raise Conflict("a key with this id exists")
                if 0 < index <= len(key.aliases):
                    raise _alias_taken(key.aliases[index - 1])
            ring_entry = self._require_ring(instance, key.key_ring_id)
        raise _contention()

    def _require_ring(self, instance: str, ring_id: str) -> Entry | None:
        """The rings record if ``ring_id`` is a created ring, None for ``default``.

        Raises InvalidArgument, NotFound (``KEY_RING_NOT_FOUND_ERR``).
        """
        model.check_ring_id(ring_id)
        if ring_id == DEFAULT_RING:
            return None
        rings, entry = self._rings(instance)
        if entry is None or all(r.id != ring_id for r in rings):
            raise _ring_missing()
        return entry

    def _rings(self, instance: str) -> tuple[tuple[KeyRing, ...], Entry | None]:
        entry = self._store.get(rec.rings_path(instance))
        return (() if entry is None else rec.load_rings(entry.value)), entry

    def _policies(self, instance: str) -> tuple[InstancePolicies, Entry | None]:
        entry = self._store.get(rec.policies_path(instance))
        if entry is None:
            return InstancePolicies(), None
        return rec.load_policies(entry.value), entry

    def _import_token(self, instance: str) -> tuple[ImportToken, Entry]:
        entry = self._store.get(rec.import_token_path(instance))
        if entry is None:
            raise NotFound("the instance has no import token; create one first")
        return rec.load_import_token(entry.value), entry

    def _check_alias_room(self, instance: str, adding: int) -> None:
        """Key Protect's 1,000 aliases per instance (checked, not guarded: a race may pass
        it by a few)."""
        page = self._store.range(
            rec.aliases_prefix(instance), limit=model.MAX_ALIASES_PER_INSTANCE + 1
        )
        if len(page.entries) + adding > model.MAX_ALIASES_PER_INSTANCE:
            raise InvalidArgument(
                f"an instance can have at most {model.MAX_ALIASES_PER_INSTANCE} aliases",
                reason_code="KEY_ALIAS_QUOTA_ERR",
            )

    # --- internals: purge ------------------------------------------------------------------

    def _purge(self, instance: str, key_id: str, *, now: datetime, automatic: bool) -> Key:
        """Marks the key as purging, destroys its HSM objects, deletes its records."""
        path = rec.key_path(instance, key_id)
        for _ in range(self._max_attempts):
            entry = self._store.get(path)
            if entry is None:
                raise _key_missing()
            key = rec.load_key(entry.value)
            if key.purge_started is not None:
                marked, revision = key, entry.mod_revision
                break
            marked = model.begin_purge(key, now=now, automatic=automatic)
            result = self._txn([Put(path, rec.dump_key(marked), entry.mod_revision)])
            if result.succeeded:
                revision = result.revision
                break
        else:
            raise _contention()
        for version in marked.versions:
            if version.hsm_handle is not None:
                # NotFound: destroyed by an earlier, interrupted purge.
                with suppress(NotFound):
                    self._hsm.destroy(version.hsm_handle)
        for _ in range(self._max_attempts):
            ops: list[Op] = [Delete(path, revision)]
            for alias in marked.aliases:
                index = self._store.get(rec.alias_path(instance, alias))
                if index is not None and rec.load_alias(index.value).key_id == key_id:
                    ops.append(Delete(index.key, index.mod_revision))
            if self._txn(ops).succeeded:
                return marked
            entry = self._store.get(path)
            if entry is None:
                return marked  # Another process finished this purge.
            revision = entry.mod_revision
        raise _contention()

    def _purge_quietly(self, key: Key, now: datetime) -> None:
        """The automatic purge met on a read: tried, audited, never failing the read (the
        key is gone for the caller either way; the scheduler finishes what fails here)."""
        with suppress(UnavailableError, Conflict, NotFound, CorruptMetadata):
            self._system_purge(key, now)

    # --- internals: material ---------------------------------------------------------------

    def _material_for_create(
        self,
        instance: str,
        *,
        now: datetime,
        extractable: bool,
        payload: bytes | None,
        encrypted_nonce: bytes | None,
        iv: bytes | None,
        encryption_algorithm: str | None,
    ) -> _Material:
        if payload is None:
            if encrypted_nonce is not None or iv is not None or encryption_algorithm is not None:
                raise InvalidArgument("encryptedNonce, iv and encryptionAlgorithm need a payload")
            if extractable:
                return _Material(self._rng(GENERATED_KEY_BYTES), imported=False)
            return _Material(b"", imported=False)  # Generated inside the HSM.
        return self._imported_material(
            instance,
            now=now,
            root=not extractable,
            payload=payload,
            encrypted_nonce=encrypted_nonce,
            iv=iv,
            encryption_algorithm=encryption_algorithm,
        )

    def _imported_material(
        self,
        instance: str,
        *,
        now: datetime,
        root: bool,
        payload: bytes,
        encrypted_nonce: bytes | None,
        iv: bytes | None,
        encryption_algorithm: str | None,
    ) -> _Material:
        secure = encrypted_nonce is not None or iv is not None
        if not secure:
            if encryption_algorithm is not None:
                raise InvalidArgument("encryptionAlgorithm needs encryptedNonce and iv")
            return _Material(model.check_payload(payload, root=root), imported=True)
        if not root:
            raise InvalidArgument("secure import with an import token is for root keys only")
        if encrypted_nonce is None or iv is None:
            raise InvalidArgument("secure import needs both encryptedNonce and iv")
        algorithm = encryption_algorithm or ENCRYPTION_ALGORITHMS[0]
        if algorithm not in ENCRYPTION_ALGORITHMS:
            raise InvalidArgument(
                f"expected encryptionAlgorithm {' or '.join(ENCRYPTION_ALGORITHMS)}"
            )
        token, _ = self._import_token(instance)
        model.check_usable_import_token(token, now=now)
        private_der = self._unseal(
            token.sealed_private_key, model.seal_aad("import-token", instance, token.nonce.hex())
        )
        private_key = serialization.load_der_private_key(private_der, password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise CorruptMetadata("the import token's private key is not an RSA key")
        digest: hashes.HashAlgorithm = (
            hashes.SHA256() if algorithm == "RSAES_OAEP_SHA_256" else hashes.SHA1()  # noqa: S303
        )
        try:
            material = private_key.decrypt(
                payload, padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
            )
        except ValueError:
            raise InvalidArgument(
                "the payload does not decrypt with the import token's key "
                f"({algorithm}); encrypt it to the current token's public key"
            ) from None
        model.check_payload(material, root=True)
        if len(iv) != model.IMPORT_TOKEN_NONCE_BYTES:
            raise NotAllowed(
                f"expected a {model.IMPORT_TOKEN_NONCE_BYTES}-byte iv, got {len(iv)}",
                reason_code="INCORRECT_NONCE_IV_ERR",
            )
        try:
            nonce = AESGCM(material).decrypt(iv, encrypted_nonce, None)
        except InvalidTag:
            raise NotAllowed(
                "the encrypted nonce was not encrypted with the given key material, or the iv "
                "does not match it",
                reason_code="INCORRECT_NONCE_IV_ERR",
            ) from None
        if not hmac.compare_digest(nonce, token.nonce):
            raise NotAllowed(
                "the encrypted nonce does not match the import token's nonce",
                reason_code="INCORRECT_NONCE_ERR",
            )
        return _Material(material, imported=True)

    def _new_version(
        self,
        instance: str,
        key_id: str,
        version_id: str,
        now: datetime,
        material: _Material | None,
        *,
        root: bool,
    ) -> KeyVersion:
        """Puts the material where it lives: a new HSM object for a root key, the seal for a
        standard key."""
        if root:
            label = f"kinko-{key_id}-{version_id}"
            if material is None or not material.data:
                handle = self._hsm.generate_key(label)
            else:
                handle = self._hsm.import_key(label, material.data)
            return KeyVersion(version_id, now, hsm_handle=handle)
        # Standard keys always carry material.
        assert material is not None
        assert material.data
        sealed = self._seal(
            material.data, model.seal_aad("standard-key", instance, key_id, version_id)
        )
        return KeyVersion(version_id, now, sealed=sealed)

    def _discard(self, version: KeyVersion) -> None:
        """Destroys the HSM object of a version that was never stored (best effort: an
        orphan left by a failing HSM holds material nobody can name)."""
        if version.hsm_handle is None:
            return
        with suppress(KinkoError):
            self._hsm.destroy(version.hsm_handle)

    def _kek(self) -> str:
        """The metadata KEK's handle, created in the HSM on first use."""
        if self._kek_handle is not None:
            return self._kek_handle
        entry = self._store.get(rec.METADATA_KEK)
        if entry is None:
            handle = self._hsm.generate_key(f"kinko-metadata-kek-{self._rng(8).hex()}")
            if self._txn([Put(rec.METADATA_KEK, rec.dump_kek_handle(handle), 0)]).succeeded:
                self._kek_handle = handle
                return handle
            self._hsm.destroy(handle)  # Another process created it first: use theirs.
            entry = self._store.get(rec.METADATA_KEK)
            if entry is None:
                raise _contention()
        self._kek_handle = rec.load_kek_handle(entry.value)
        return self._kek_handle

    def _seal(self, data: bytes, aad: bytes) -> SealedMaterial:
        nonce = self._rng(model.WRAP_NONCE_BYTES)
        try:
            ciphertext = self._hsm.wrap(self._kek(), data, aad=aad, nonce=nonce)
        except NotFound as exc:
            raise CorruptMetadata("the metadata KEK is missing from the HSM") from exc
        return SealedMaterial(nonce=nonce, ciphertext=ciphertext)

    def _unseal(self, sealed: SealedMaterial, aad: bytes) -> bytes:
        try:
            return self._hsm.unwrap(self._kek(), sealed.ciphertext, aad=aad, nonce=sealed.nonce)
        except DecryptionError as exc:
            raise CorruptMetadata("sealed material does not open under the metadata KEK") from exc
        except NotFound as exc:
            raise CorruptMetadata("the metadata KEK is missing from the HSM") from exc

    def _unseal_version(self, key: Key, version: KeyVersion) -> bytes:
        if version.sealed is None:
            raise CorruptMetadata("a standard key version has no sealed material")
        return self._unseal(
            version.sealed, model.seal_aad("standard-key", key.instance, key.id, version.id)
        )

    def _wrap_with(
        self, key: Key, version: KeyVersion, plaintext: bytes, aad: tuple[str, ...]
    ) -> str:
        if version.hsm_handle is None:
            raise CorruptMetadata("a root key version has no HSM handle")
        nonce = self._rng(model.WRAP_NONCE_BYTES)
        full_aad = model.wrap_aad_checked(
            instance=key.instance, key_id=key.id, version_id=version.id, items=aad
        )
        try:
            ciphertext = self._hsm.wrap(version.hsm_handle, plaintext, aad=full_aad, nonce=nonce)
        except NotFound as exc:
            raise _MaterialGone() from exc
        return model.encode_ciphertext(
            WrappedDek(ciphertext=ciphertext, iv=nonce, version_id=version.id)
        )

    def _unwrap_with(
        self, key: Key, wrapped: WrappedDek, aad: tuple[str, ...]
    ) -> tuple[KeyVersion, bytes]:
        version = key.version(wrapped.version_id)
        if version is None or version.hsm_handle is None:
            raise UnprocessableCiphertext()
        full_aad = model.wrap_aad_checked(
            instance=key.instance, key_id=key.id, version_id=version.id, items=aad
        )
        try:
            plaintext = self._hsm.unwrap(
                version.hsm_handle, wrapped.ciphertext, aad=full_aad, nonce=wrapped.iv
            )
        except DecryptionError:
            raise UnprocessableCiphertext() from None
        except NotFound as exc:
            raise _MaterialGone() from exc
        return version, plaintext

    # --- internals: views ------------------------------------------------------------------

    def _view(self, key: Key, now: datetime, *, payload: bytes | None = None) -> KeyView:
        key = model.expire(key, now)
        deletion = key.deletion
        destroyed = key.state is KeyState.DESTROYED
        latest = key.latest_version
        restore_allowed = (
            destroyed
            and deletion is not None
            and deletion.deletion_date + model.STATE_CHANGE_WAIT
            <= now
            <= deletion.restore_allowed_until
            and not key.expired(now)
        )
        return KeyView(
            id=key.id,
            instance=key.instance,
            crn=key_crn(key.instance, key.id),
            name=key.name,
            description=key.description,
            key_ring_id=key.key_ring_id,
            aliases=key.aliases,
            extractable=key.extractable,
            imported=key.imported,
            state=key.state,
            algorithm_type="AES",
            algorithm_bit_size=key.bit_length,
            creation_date=key.creation_date,
            created_by=key.created_by,
            last_update_date=key.last_update,
            last_rotate_date=key.last_rotate,
            key_version=_ref(latest),
            version_count=len(key.versions),
            expiration_date=key.expiration_date,
            deleted=destroyed,
            deleted_by=None if deletion is None else deletion.deleted_by,
            deletion_date=None if deletion is None else deletion.deletion_date,
            purge_allowed=destroyed and deletion is not None and now >= deletion.purge_allowed_from,
            purge_allowed_from=None if deletion is None else deletion.purge_allowed_from,
            purge_scheduled_on=None if deletion is None else deletion.purge_scheduled_on,
            restore_allowed=restore_allowed,
            restore_expiration_date=None if deletion is None else deletion.restore_allowed_until,
            dual_auth_delete=DualAuthView(
                enabled=key.dual_auth.enabled,
                key_set_for_deletion=key.dual_auth.pending(now),
                auth_expiration=key.dual_auth.auth_expiration
                if key.dual_auth.pending(now)
                else None,
                set_for_deletion_by=key.dual_auth.set_for_deletion_by
                if key.dual_auth.pending(now)
                else None,
            ),
            rotation=key.rotation,
            registration_count=len(key.registrations),
            payload=payload,
        )


# --- module helpers --------------------------------------------------------------------------


def _ref(version: KeyVersion) -> VersionRef:
    return VersionRef(id=version.id, creation_date=version.creation_date)


def _check_rewrap(key: Key, now: datetime) -> Key:
    return model.check_unwrap(key, now, action="rewrap")


def _material_missing() -> CorruptMetadata:
    return CorruptMetadata("the key version's material is missing from the HSM")


def _key_missing() -> NotFound:
    return NotFound("no such key in this instance", reason_code="KEY_NOT_FOUND_ERR")


def _ring_missing() -> NotFound:
    return NotFound("no such key ring in this instance", reason_code="KEY_RING_NOT_FOUND_ERR")


def _alias_taken(alias: str) -> Conflict:
    return Conflict(
        f"the alias {alias!r} is in use in this instance", reason_code="KEY_ALIAS_NOT_UNIQUE_ERR"
    )


def _contention() -> Conflict:
    return Conflict("the record kept changing during the update; retry the request")


def _check_page(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"expected limit from 1 to {MAX_LIMIT}, got {limit!r}")
    if isinstance(offset, bool) or offset < 0:
        raise InvalidArgument(f"expected a non-negative offset, got {offset!r}")


def _check_states(states: Sequence[int]) -> frozenset[KeyState]:
    out: set[KeyState] = set()
    for s in states:
        if s == 0:
            continue  # Pre-activation: Key Protect accepts it; no key is ever in it.
        try:
            out.add(KeyState(s))
        except ValueError:
            raise InvalidArgument(f"expected key states among 0, 1, 2, 3, 5, got {s!r}") from None
    return frozenset(out)


def _crn_pattern(query: str) -> re.Pattern[str]:
    if not query or len(query) > 512 or not query.isprintable():
        raise InvalidArgument("expected a CRN query of at most 512 printable characters")
    return re.compile(".*".join(re.escape(part) for part in query.split("*")))


def _registration(key: Key, crn: str, note: _Note) -> Registration:
    reg = key.registration(crn)
    if reg is None:  # The change just wrote it.
        raise CorruptMetadata("the registration vanished after it was written")
    note.key_version = reg.key_version_id
    return reg


def _policies_of(key: Key) -> KeyPolicies:
    dual = key.dual_auth
    return KeyPolicies(
        key_id=key.id,
        crn=key_crn(key.instance, key.id),
        rotation=key.rotation,
        dual_auth_delete=None
        if not dual.enabled and dual.stamp is None
        else DualAuthPolicy(enabled=dual.enabled, stamp=dual.stamp),
    )


def _token_info(token: ImportToken) -> ImportTokenInfo:
    return ImportTokenInfo(
        creation_date=token.creation_date,
        expiration_date=token.expiration_date,
        max_allowed_retrievals=token.max_allowed_retrievals,
        remaining_retrievals=token.remaining_retrievals,
    )
