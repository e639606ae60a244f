"""A KMS v2 plugin core backed by a root key of a Key Protect-compatible key service.

Job: :class:`RootKeyPlugin` implements :class:`~kinko.kms.port.KmsV2Api` by protecting seeds
with a customer root key. The root key is reached through :class:`RootKeyAccess`, a port of
four methods with two adapters: :class:`ServiceRootKeys` (kinko's own
:class:`~kinko.keys.service.KeyService`, in-process) and ``RemoteRootKeys`` (a Key Protect
API over HTTPS, in :mod:`kinko.kms.rootkey_remote`).

What the plugin answers:

- **key_id** = ``kinko-rk-<root key id>-v<version id>`` (:func:`key_id_for`): public (ids
  only, no material), at most 83 characters, stable for a version, and never names two
  different materials, because a version id is a random UUID minted with the version's
  material. Rotating the root key adds a version, so the key_id changes; switching the plugin
  to another root key changes it too. Switching back to a root key that was not rotated in
  between reports its old key_id again, which is right: it names the same material, so data
  under it is not stale.
- **Local KEKs** (ADR 15, the key hierarchy of KEP-3299). Encrypt does not send each seed to
  the key service: it encrypts the seed with AES-256-GCM under a **local KEK** (32 random
  bytes; AAD = the key_id), and the KEK itself is wrapped once by the root key's latest
  version (one audited key service wrap, Key Protect AAD ``kms.kinko.dev/v2-local-kek``). The
  answer is ``nonce ‖ ciphertext ‖ tag`` (60 bytes for a 32-byte seed), the key_id of the
  version that wrapped the KEK (read from the wrap's answer, so a rotation racing the call can
  never pair one version's key_id with another's KEK), and one annotation,
  ``kek.rootkey.kms.kinko.dev: <the wrapped KEK>``. A KEK encrypts at most ``kek_max_uses``
  seeds (2**20); a new one is made when the root key's latest version changes.
- **Decrypt** takes the root key from the request's key_id (the configured root key, or one
  of the ``retired_key_refs`` given to the plugin). It uses the local KEK it holds for the
  annotation, or unwraps it once with the key service (audited) and checks that the version
  that wrapped it is the key_id's. Any live version unwraps (Key Protect keeps every version
  until the key is purged). A value written before local KEKs (the seed wrapped by the key
  service itself, annotation ``version.rootkey.kms.kinko.dev: <version id>``) is unwrapped
  by the key service as before.
- **Every call checks the root key first**, without the HSM (:meth:`RootKeyAccess.check`):
  Encrypt that it may wrap, Decrypt that it may unwrap. In-process the check reads the key
  service's key-record cache, so a change made through the same service applies to the next
  call and one made by another process within 1 s (ADR 13); over HTTPS the plugin reuses the
  key's metadata for at most 1 s (:data:`STATE_TTL`). A refusal is never served from a reused
  state, and it drops every local KEK of that root key from memory (only the one Encrypt
  uses when the key merely expired, as it still unwraps): after an enable or a restore each
  KEK is unwrapped again, audited. A KEK unwrapped or wrapped while a refusal came serves
  its own call and is not kept.
- Seeds (before local KEKs), local KEKs and health probes are wrapped with Key Protect AAD
  strings of their own (``kms.kinko.dev/v2-seed``, ``…/v2-local-kek``,
  ``…/v2-health-probe``): the plugin unwraps nothing that another user of the same root key
  wrapped, so its socket is no general unwrap oracle for that key.
- **States** (Key Protect: wrap only when Active; unwrap when Active or Deactivated):
  Suspended → both fail (:class:`~kinko.errors.WrongState`, gRPC FAILED_PRECONDITION);
  Deactivated (expired) → Encrypt fails with WrongState saying to move to a new root key,
  Decrypt works; Destroyed → both fail (:class:`~kinko.errors.Gone`, FAILED_PRECONDITION);
  purged → both fail (:class:`~kinko.errors.NotFound`, NOT_FOUND).
- **Status** reports ``healthz: ok`` only if a wrap + unwrap round trip of a random 32-byte
  probe with the current version succeeded when last checked, and checks at most once per
  ``health_ttl`` (20 s) while healthy and once per ``failure_ttl`` (3 s) while not — the
  result cache kube-apiserver itself keeps — however often Status is called. Concurrent
  Status calls share one probe. Otherwise ``healthz`` is a short reason (ids, states and
  error messages only) and ``key_id`` is the last one known.

Aliases: the plugin resolves an alias to its root key id on first use and stays bound to
that key for its lifetime (restart it to follow an alias that was moved).

Invariants: no message, healthz text or repr carries a seed, a probe, a local KEK,
plaintext, ciphertext or key material; errors name key ids, version ids, states and sizes
only. The plugin keeps no seed and no plaintext; it holds local KEKs in memory only (at most
:data:`KEK_CACHE_MAX`), never on disk, and only while their root key may be used.
"""

from __future__ import annotations

import functools
import hmac
import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kinko.crypto.kms_rules import ENCRYPTED_DEK_SOURCE_MAX_SIZE, KEY_ID_MAX_SIZE
from kinko.crypto.types import Rng
from kinko.errors import (
    DecryptionError,
    Gone,
    InvalidArgument,
    KeyServiceUnavailable,
    KinkoError,
    NotAllowed,
    NotFound,
    UnavailableError,
    UnprocessableCiphertext,
    WrongState,
)
from kinko.keys.auth import Principal
from kinko.keys.model import KeyState, is_key_id
from kinko.keys.service import KeyService
from kinko.kms.port import EncryptResult, StatusResult

KEY_ID_PREFIX: Final = "kinko-rk-"
ANNOTATION_KEY: Final = "version.rootkey.kms.kinko.dev"
#: Key Protect AAD strings of wrapped seeds and of health probes (never the same).
SEED_AAD: Final = ("kms.kinko.dev/v2-seed",)
PROBE_AAD: Final = ("kms.kinko.dev/v2-health-probe",)
PROBE_SIZE: Final = 32
#: kube-apiserver's own healthz result cache (``kmsPluginHealthzPositiveTTL`` / ``Negative``).
HEALTH_TTL: Final = 20.0
FAILURE_TTL: Final = 3.0
SUPPORTED_VERSIONS: Final = ("v2", "v2beta1")
#: The annotation that carries a seed's local KEK, wrapped by the root key (ADR 15).
KEK_ANNOTATION: Final = "kek.rootkey.kms.kinko.dev"
#: Key Protect AAD of wrapped local KEKs (neither a seed's nor a probe's).
KEK_AAD: Final = ("kms.kinko.dev/v2-local-kek",)
KEK_SIZE: Final = 32
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
#: The largest seed Encrypt takes: its ciphertext (nonce, seed, tag) fits KMS v2's 1 KiB.
MAX_PLAINTEXT_SIZE: Final = ENCRYPTED_DEK_SOURCE_MAX_SIZE - NONCE_SIZE - TAG_SIZE
#: Seeds one local KEK encrypts before Encrypt makes the next (random 96-bit nonces: far
#: fewer than the 2**32 one AES-GCM key may take).
KEK_MAX_USES: Final = 1 << 20
#: Local KEKs a plugin holds for Decrypt; it starts over (and unwraps again) when full.
KEK_CACHE_MAX: Final = 1024
#: The longest a wrapped local KEK may be (kinko's key service makes about 200 bytes).
WRAPPED_KEK_MAX_SIZE: Final = 4096
#: How long a root key's state may be reused between checks where it cannot be watched
#: (a remote key service); a refusal is always read again first.
STATE_TTL: Final = 1.0
_HEALTHZ_MAX: Final = 240
_UUID: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_KEY_ID_RE: Final = re.compile(
    rf"{re.escape(KEY_ID_PREFIX)}(?P<root>{_UUID})-v(?P<version>{_UUID})"
)


# --- the port ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RootKeyInfo:
    """A root key as the key service shows it now: its id (never an alias), state, and the
    latest version (the one wrap uses) with its creation date."""

    key_id: str
    state: KeyState
    version_id: str
    version_created: datetime


@dataclass(frozen=True, slots=True)
class Wrapped:
    """The key service's wrap ciphertext (opaque ASCII bytes) and the version that wrapped."""

    ciphertext: bytes = field(repr=False)
    version_id: str


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """The unwrapped plaintext and the version that had wrapped it."""

    plaintext: bytes = field(repr=False)
    version_id: str


class RootKeyAccess(Protocol):
    """What the plugin needs of a key service: one root key's metadata, a check of its
    state, wrap and unwrap.

    ``key_ref`` is a key id or an alias. ``correlation_id`` ties the call to a KMS request
    uid in the key service's audit log.
    """

    def current(self, key_ref: str, *, correlation_id: str | None = None) -> RootKeyInfo:
        """The key's id, state and latest version.

        Raises NotFound (no such key, or purged), NotAllowed (a standard key, not a root key),
        Unauthorized, Forbidden, UnavailableError.
        """
        ...

    def check(
        self,
        key_ref: str,
        *,
        unwrap_version: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Without using key material: whether a wrap with the key would be allowed now
        (``unwrap_version`` None), or an unwrap of a ciphertext of version
        ``unwrap_version``. Returns the latest version's id, the one a wrap would use.

        May answer from a record read up to :data:`STATE_TTL` (1 s) earlier, but never
        refuses on such a record: a refusal is read again first. Raises WrongState (wrap:
        not Active; unwrap: Suspended), Gone (Destroyed), NotFound, NotAllowed,
        UnprocessableCiphertext (no such version, where the adapter can tell), Unauthorized,
        Forbidden, UnavailableError.
        """
        ...

    def wrap(
        self,
        key_ref: str,
        plaintext: bytes,
        *,
        aad: Sequence[str],
        correlation_id: str | None = None,
    ) -> Wrapped:
        """Wraps ``plaintext`` with the latest version.

        Raises WrongState (not Active), Gone (Destroyed), NotFound, NotAllowed,
        InvalidArgument, Unauthorized, Forbidden, UnavailableError.
        """
        ...

    def unwrap(
        self,
        key_ref: str,
        ciphertext: bytes,
        *,
        aad: Sequence[str],
        correlation_id: str | None = None,
    ) -> Unwrapped:
        """Unwraps a wrap ciphertext of any version of the key.

        Raises UnprocessableCiphertext (malformed, tampered, other key or AAD), WrongState
        (Suspended), Gone (Destroyed), NotFound, NotAllowed, Unauthorized, Forbidden,
        UnavailableError.
        """
        ...


class ServiceRootKeys:
    """:class:`RootKeyAccess` over an in-process :class:`~kinko.keys.service.KeyService`,
    acting as ``principal`` (who needs the Reader role) in ``instance``.

    Every call is audited by the service under the principal's name. Wrap and unwrap see a
    change made by another process on the service's store within the service's key-record
    cache bound (``key_cache_ttl``, 1 s); :meth:`current` always reads the store.
    """

    __slots__ = ("_instance", "_key_ring", "_principal", "_service")

    def __init__(
        self,
        service: KeyService,
        principal: Principal,
        instance: str,
        *,
        key_ring: str | None = None,
    ) -> None:
        self._service = service
        self._principal = principal
        self._instance = instance
        self._key_ring = key_ring

    def current(self, key_ref: str, *, correlation_id: str | None = None) -> RootKeyInfo:
        """See :meth:`RootKeyAccess.current`. Raises what ``get_key_metadata`` raises, and
        NotAllowed (``KEY_ROOT_REQ_ERR``) for a standard key."""
        view = self._service.get_key_metadata(
            self._principal,
            self._instance,
            key_ref,
            key_ring=self._key_ring,
            correlation_id=correlation_id,
        )
        if view.extractable:
            raise NotAllowed(
                f"key {view.id} is a standard key; the KMS plugin needs a root key",
                reason_code="KEY_ROOT_REQ_ERR",
            )
        return RootKeyInfo(
            key_id=view.id,
            state=view.state,
            version_id=view.key_version.id,
            version_created=view.key_version.creation_date,
        )

    def check(
        self,
        key_ref: str,
        *,
        unwrap_version: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """See :meth:`RootKeyAccess.check`: ``KeyService.check_key_use``, through the
        service's key-record cache (a change made through the same service applies at once).
        Raises what that raises."""
        use = self._service.check_key_use(
            self._principal,
            self._instance,
            key_ref,
            unwrap_version=unwrap_version,
            key_ring=self._key_ring,
        )
        return use.latest_version.id

    def wrap(
        self,
        key_ref: str,
        plaintext: bytes,
        *,
        aad: Sequence[str],
        correlation_id: str | None = None,
    ) -> Wrapped:
        """See :meth:`RootKeyAccess.wrap`. Raises what ``KeyService.wrap`` raises."""
        result = self._service.wrap(
            self._principal,
            self._instance,
            key_ref,
            plaintext=plaintext,
            aad=aad,
            key_ring=self._key_ring,
            correlation_id=correlation_id,
        )
        return Wrapped(
            ciphertext=result.ciphertext.encode("ascii"), version_id=result.key_version.id
        )

    def unwrap(
        self,
        key_ref: str,
        ciphertext: bytes,
        *,
        aad: Sequence[str],
        correlation_id: str | None = None,
    ) -> Unwrapped:
        """See :meth:`RootKeyAccess.unwrap`. Raises what ``KeyService.unwrap`` raises, and
        UnprocessableCiphertext for bytes that are not ASCII."""
        try:
            text = ciphertext.decode("ascii")
        except UnicodeDecodeError:
            raise UnprocessableCiphertext(UnprocessableCiphertext.MALFORMED) from None
        result = self._service.unwrap(
            self._principal,
            self._instance,
            key_ref,
            ciphertext=text,
            aad=aad,
            key_ring=self._key_ring,
            correlation_id=correlation_id,
        )
        return Unwrapped(plaintext=result.plaintext, version_id=result.key_version.id)


# --- key_id --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def key_id_for(root_key_id: str, version_id: str) -> str:
    """The KMS v2 key_id of a root key version (see the module docstring). Remembered for
    the last few versions (a pure function, asked on every Encrypt).

    Raises InvalidArgument: either id is not a lowercase UUID.
    """
    key_id = f"{KEY_ID_PREFIX}{root_key_id}-v{version_id}"
    if _KEY_ID_RE.fullmatch(key_id) is None:
        raise InvalidArgument("expected a root key id and a version id that are lowercase UUIDs")
    assert len(key_id.encode()) <= KEY_ID_MAX_SIZE
    return key_id


@functools.lru_cache(maxsize=256)
def parse_key_id(key_id: str) -> tuple[str, str]:
    """The (root key id, version id) a key_id of this plugin names. Remembered for the last
    few key_ids that parsed (a pure function, asked on every Decrypt; a refusal is not kept).

    Raises InvalidArgument: not a key_id of this plugin (the message shows at most its start).
    """
    match = _KEY_ID_RE.fullmatch(key_id)
    if match is None:
        raise InvalidArgument(
            f"unknown key_id {key_id[:96]!r}: expected {KEY_ID_PREFIX}<root key id>-v<version id>"
        )
    return match["root"], match["version"]


# --- clear errors for the root key's state -------------------------------------------------


def suspended_error(root_key_id: str) -> WrongState:
    return WrongState(
        f"root key {root_key_id} is suspended (state 2): enable it to encrypt or decrypt"
    )


#: The reason code of :func:`expired_error`.
EXPIRED_REASON: Final = "KEY_EXPIRED_ERR"


def expired_error(root_key_id: str) -> WrongState:
    return WrongState(
        f"root key {root_key_id} expired (Deactivated, state 3): it still decrypts but no "
        "longer encrypts; rotate to a new root key (serve the plugin with --key NEW "
        f"--retired-key {root_key_id}) and migrate the data",
        reason_code=EXPIRED_REASON,
    )


def destroyed_error(root_key_id: str) -> Gone:
    return Gone(
        f"root key {root_key_id} was deleted (Destroyed, state 5): nothing can be encrypted or "
        "decrypted with it; restore it within 30 days of the deletion to use it again"
    )


def purged_error(root_key_id: str) -> NotFound:
    return NotFound(
        f"root key {root_key_id} was not found: it was purged or never existed, and data "
        "wrapped under it cannot be decrypted",
        reason_code="KEY_NOT_FOUND_ERR",
    )


def _state_error(root_key_id: str, state: KeyState, *, encrypting: bool) -> KinkoError | None:
    if state is KeyState.SUSPENDED:
        return suspended_error(root_key_id)
    if state is KeyState.DESTROYED:
        return destroyed_error(root_key_id)
    if state is KeyState.DEACTIVATED and encrypting:
        return expired_error(root_key_id)
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, KinkoError) else type(exc).__name__
    return text if len(text) <= _HEALTHZ_MAX else text[: _HEALTHZ_MAX - 1] + "…"


# --- the plugin ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Health:
    healthz: str
    key_id: str | None
    version_id: str | None
    expires_at: float


@dataclass(frozen=True, slots=True, eq=False)
class _Kek:
    """A local KEK: its AES-256-GCM key, its wrap by one root key version, the key_id of that
    version (also the AAD of every seed it encrypts), and the version a check named when it
    was made (``for_version``; the writer is replaced when a check names another)."""

    root_id: str
    version_id: str
    key_id: str
    aad: bytes
    for_version: str
    aead: AESGCM = field(repr=False)
    wrapped: bytes = field(repr=False)
    #: Counts the uses after the first (the call that made the KEK).
    uses: Iterator[int] = field(repr=False, default_factory=lambda: itertools.count(1))


class RootKeyPlugin:
    """A KMS v2 plugin core over one root key (module docstring). Thread-safe.

    ``access``: the key service. ``key_ref``: the root key (id or alias) to encrypt with.
    ``retired_key_refs``: other root keys whose data Decrypt still accepts (after moving to a
    new root key). ``clock``: monotonic seconds. ``rng``: makes local KEKs, nonces and health
    probes. ``kek_max_uses``: seeds one local KEK encrypts before the next is made.

    Raises InvalidArgument at construction: an empty key ref, an unsupported status version,
    a non-positive TTL or ``kek_max_uses``.
    """

    def __init__(
        self,
        access: RootKeyAccess,
        key_ref: str,
        *,
        retired_key_refs: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
        rng: Rng = os.urandom,
        version: str = "v2",
        health_ttl: float = HEALTH_TTL,
        failure_ttl: float = FAILURE_TTL,
        kek_max_uses: int = KEK_MAX_USES,
    ) -> None:
        if not key_ref:
            raise InvalidArgument("key_ref: expected a root key id or alias, got an empty one")
        if version not in SUPPORTED_VERSIONS:
            raise InvalidArgument(
                f"version: expected one of {', '.join(SUPPORTED_VERSIONS)}, got {version[:64]!r}"
            )
        if health_ttl <= 0 or failure_ttl <= 0:
            raise InvalidArgument(
                f"health TTLs must be positive, got {health_ttl} and {failure_ttl}"
            )
        if kek_max_uses < 1:
            raise InvalidArgument(f"kek_max_uses must be at least 1, got {kek_max_uses}")
        self._access = access
        self._key_ref = key_ref
        self._retired_refs = tuple(r for r in retired_key_refs if r and r != key_ref)
        self._clock = clock
        self._rng = rng
        self._version = version
        self._health_ttl = health_ttl
        self._failure_ttl = failure_ttl
        self._kek_max_uses = kek_max_uses
        # Root key ids resolved so far (an id ref resolves to itself without a call).
        self._root_id: str | None = key_ref if is_key_id(key_ref) else None
        self._retired_ids: frozenset[str] = frozenset(r for r in self._retired_refs if is_key_id(r))
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._health: _Health | None = None
        self._last_key_id: str | None = None
        # Local KEKs: the one Encrypt uses, and every one known, by its wrapped form.
        # _kek_lock guards changes to both (never held across a key service call);
        # _writer_lock makes one writer at a time. _forgets counts refusals: a KEK unwrapped
        # or wrapped across one is used for its call but not kept.
        self._kek_lock = threading.Lock()
        self._writer_lock = threading.Lock()
        self._writer: _Kek | None = None
        self._keks: dict[bytes, _Kek] = {}
        self._forgets = 0

    @property
    def version(self) -> str:
        return self._version

    @property
    def key_ref(self) -> str:
        return self._key_ref

    @property
    def local_keks(self) -> int:
        """How many local KEKs the plugin holds now (for tests and status output)."""
        return len(self._keks)

    def refresh(self) -> None:
        """Forget the cached health, so that the next Status checks the key service again.

        For an owner that learnt of a rotation or a state change another way (kinko up's
        encryption controller): without it, Status keeps reporting the old key_id for up to
        ``health_ttl``. Raises nothing.
        """
        self._health = None

    # -- KmsV2Api -------------------------------------------------------------------------

    def status(self) -> StatusResult:
        """The current key_id and health, from the cached probe (module docstring).

        Raises UnavailableError only when no key_id was ever learnt (the key service was never
        reachable, or the key does not exist); every other failure is a healthz reason.
        """
        health = self._health
        if health is None or self._clock() >= health.expires_at:
            with self._probe_lock:
                health = self._health
                if health is None or self._clock() >= health.expires_at:
                    health = self._probe()
                    self._health = health
        if health.key_id is None:
            raise UnavailableError(f"KMS plugin root key {self._key_ref}: {health.healthz}")
        return StatusResult(version=self._version, healthz=health.healthz, key_id=health.key_id)

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        """Encrypt ``plaintext`` (a seed) under the local KEK of the root key's latest
        version, after checking that the root key may wrap now.

        Raises InvalidArgument (empty uid or plaintext; a plaintext over
        :data:`MAX_PLAINTEXT_SIZE`), WrongState (Suspended; Deactivated = expired), Gone
        (Destroyed), NotFound (purged), and what the key service raises (UnavailableError,
        Unauthorized, Forbidden, …).
        """
        _check_uid(uid)
        if not plaintext:
            raise InvalidArgument("plaintext: expected non-empty bytes, got none")
        if len(plaintext) > MAX_PLAINTEXT_SIZE:
            raise InvalidArgument(
                f"plaintext: expected at most {MAX_PLAINTEXT_SIZE} bytes (a KMS v2 ciphertext "
                f"holds at most {ENCRYPTED_DEK_SOURCE_MAX_SIZE}, with a {NONCE_SIZE}-byte nonce "
                f"and a {TAG_SIZE}-byte tag), got {len(plaintext)}"
            )
        root_id = self._resolve(uid)
        try:
            latest = self._access.check(root_id, correlation_id=uid)
        except (WrongState, Gone, NotFound) as exc:
            raise self._refused(root_id, exc, encrypting=True, uid=uid) from exc
        kek = self._writer
        if (
            kek is None
            or kek.root_id != root_id
            or kek.for_version != latest
            or next(kek.uses) >= self._kek_max_uses
        ):
            kek = self._new_writer(root_id, latest, uid)
        nonce = self._rng(NONCE_SIZE)
        ciphertext = nonce + kek.aead.encrypt(nonce, plaintext, kek.aad)
        health = self._health
        if health is not None and health.version_id != kek.version_id:
            # The key was rotated since the last probe: let the next Status look again.
            self._health = None
        return EncryptResult(
            ciphertext=ciphertext, key_id=kek.key_id, annotations={KEK_ANNOTATION: kek.wrapped}
        )

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        """Decrypt ``ciphertext`` with the local KEK its annotation carries, after checking
        that the root key its ``key_id`` names may unwrap now; a value written before local
        KEKs (annotation ``version.rootkey.kms.kinko.dev``) is unwrapped by the key service.

        Raises InvalidArgument (empty fields; a key_id not of this plugin or of a root key it
        is not configured for; no annotation of this plugin, or one that disagrees with the
        key_id), DecryptionError (the ciphertext or the local KEK does not open, or the KEK was
        wrapped by another version than the key_id says; opaque), WrongState (Suspended), Gone
        (Destroyed), NotFound (purged), and what the key service raises (UnavailableError,
        Unauthorized, Forbidden, …).
        """
        _check_uid(uid)
        if not ciphertext:
            raise InvalidArgument("ciphertext: expected non-empty bytes, got none")
        if not key_id:
            raise InvalidArgument("key_id: expected a non-empty key_id, got an empty one")
        root_id, version_id = parse_key_id(key_id)
        self._check_known_root(root_id, uid)
        wrapped_kek = annotations.get(KEK_ANNOTATION)
        if wrapped_kek is None:
            return self._unwrap_seed(ciphertext, root_id, version_id, annotations, uid)
        if not wrapped_kek:
            raise InvalidArgument(f"annotations: expected a wrapped local KEK in {KEK_ANNOTATION}")
        try:
            self._access.check(root_id, unwrap_version=version_id, correlation_id=uid)
        except (WrongState, Gone, NotFound) as exc:
            raise self._refused(root_id, exc, encrypting=False, uid=uid) from exc
        if len(ciphertext) <= NONCE_SIZE + TAG_SIZE:
            raise DecryptionError()
        kek = self._keks.get(wrapped_kek)
        if kek is None or kek.key_id != key_id:
            kek = self._unwrap_kek(root_id, version_id, key_id, wrapped_kek, uid)
        try:
            return kek.aead.decrypt(ciphertext[:NONCE_SIZE], ciphertext[NONCE_SIZE:], kek.aad)
        except InvalidTag:
            raise DecryptionError() from None

    # -- local KEKs -----------------------------------------------------------------------

    def _new_writer(self, root_id: str, latest: str, uid: str) -> _Kek:
        """The local KEK Encrypt uses: the current one if another call made it meanwhile,
        else a new one, wrapped by the root key (one audited key service wrap)."""
        with self._writer_lock:
            kek = self._writer
            if (
                kek is not None
                and kek.root_id == root_id
                and kek.for_version == latest
                and next(kek.uses) < self._kek_max_uses
            ):
                return kek
            forgets = self._forgets
            material = self._rng(KEK_SIZE)
            try:
                wrapped = self._access.wrap(root_id, material, aad=KEK_AAD, correlation_id=uid)
            except (WrongState, Gone, NotFound) as exc:
                raise self._refused(root_id, exc, encrypting=True, uid=uid) from exc
            _check_wrapped_kek(wrapped.ciphertext)
            kek = self._kek(root_id, wrapped.version_id, material, wrapped.ciphertext, latest)
            with self._kek_lock:
                if self._forgets == forgets:
                    self._writer = kek
                    self._remember_locked(kek)
            return kek

    def _unwrap_kek(
        self, root_id: str, version_id: str, key_id: str, wrapped_kek: bytes, uid: str
    ) -> _Kek:
        """A local KEK not held yet: one audited key service unwrap, then kept (unless a
        refusal came meanwhile: the KEK serves this call only)."""
        forgets = self._forgets
        try:
            unwrapped = self._access.unwrap(root_id, wrapped_kek, aad=KEK_AAD, correlation_id=uid)
        except (WrongState, Gone, NotFound) as exc:
            raise self._refused(root_id, exc, encrypting=False, uid=uid) from exc
        if unwrapped.version_id != version_id or len(unwrapped.plaintext) != KEK_SIZE:
            raise DecryptionError()
        kek = self._kek(root_id, version_id, unwrapped.plaintext, wrapped_kek, version_id)
        assert kek.key_id == key_id  # Both name (root_id, version_id).
        with self._kek_lock:
            if self._forgets == forgets:
                self._remember_locked(kek)
        return kek

    @staticmethod
    def _kek(
        root_id: str, version_id: str, material: bytes, wrapped: bytes, for_version: str
    ) -> _Kek:
        key_id = key_id_for(root_id, version_id)
        return _Kek(
            root_id=root_id,
            version_id=version_id,
            key_id=key_id,
            aad=key_id.encode("ascii"),
            for_version=for_version,
            aead=AESGCM(material),
            wrapped=wrapped,
        )

    def _remember_locked(self, kek: _Kek) -> None:
        if len(self._keks) >= KEK_CACHE_MAX:
            self._keks = {}
        self._keks[kek.wrapped] = kek

    def _refused(
        self, root_id: str, exc: KinkoError, *, encrypting: bool, uid: str | None
    ) -> KinkoError:
        """The clear error for a refusal caused by the root key's state, after dropping the
        local KEKs that may no longer be used: the writer only when the key merely expired
        (it still unwraps), every KEK of the root key otherwise (suspended, deleted,
        purged); each is unwrapped again, audited, if the key comes back."""
        error = self._explain(root_id, exc, encrypting=encrypting, uid=uid)
        expired = error.reason_code == EXPIRED_REASON
        with self._kek_lock:
            self._forgets += 1
            if self._writer is not None and self._writer.root_id == root_id:
                self._writer = None
            if not expired:
                self._keks = {w: k for w, k in self._keks.items() if k.root_id != root_id}
        return error

    def _unwrap_seed(
        self,
        ciphertext: bytes,
        root_id: str,
        version_id: str,
        annotations: Mapping[str, bytes],
        uid: str,
    ) -> bytes:
        """A seed the root key wrapped itself (written before local KEKs)."""
        if annotations.get(ANNOTATION_KEY) != version_id.encode("ascii"):
            raise InvalidArgument(
                f"annotations: expected {KEK_ANNOTATION} (or {ANNOTATION_KEY}={version_id}, "
                "as in the key_id)"
            )
        try:
            unwrapped = self._access.unwrap(root_id, ciphertext, aad=SEED_AAD, correlation_id=uid)
        except (WrongState, Gone, NotFound) as exc:
            raise self._refused(root_id, exc, encrypting=False, uid=uid) from exc
        if unwrapped.version_id != version_id:
            raise DecryptionError()
        return unwrapped.plaintext

    # -- internals ------------------------------------------------------------------------

    def _resolve(self, uid: str | None = None) -> str:
        """The configured root key's id (one lookup for an alias, then remembered)."""
        root_id = self._root_id
        if root_id is None:
            info = self._access.current(self._key_ref, correlation_id=uid)
            with self._lock:
                if self._root_id is None:
                    self._root_id = info.key_id
                root_id = self._root_id
        return root_id

    def _check_known_root(self, root_id: str, uid: str) -> None:
        if root_id == self._resolve(uid) or root_id in self._retired_ids:
            return
        # Resolve retired aliases only when a key_id names a root key not yet known.
        resolved = set(self._retired_ids)
        for ref in self._retired_refs:
            if not is_key_id(ref):
                try:
                    resolved.add(self._access.current(ref, correlation_id=uid).key_id)
                except KinkoError:
                    continue  # A retired key that is gone cannot decrypt anyway.
        with self._lock:
            self._retired_ids = frozenset(resolved)
        if root_id not in resolved:
            raise InvalidArgument(
                f"the key_id names root key {root_id}, which this plugin does not serve "
                "(add it with --retired-key to decrypt data written under it)"
            )

    def _explain(
        self, root_id: str, exc: KinkoError, *, encrypting: bool, uid: str | None
    ) -> KinkoError:
        """A clear error for a refusal caused by the root key's state."""
        if isinstance(exc, NotFound):
            return purged_error(root_id)
        if isinstance(exc, Gone):
            return destroyed_error(root_id)
        try:
            info = self._access.current(root_id, correlation_id=uid)
        except KinkoError:
            return exc
        return _state_error(root_id, info.state, encrypting=encrypting) or exc

    def _probe(self) -> _Health:
        """One health check: the key's state, then a wrap + unwrap round trip of a random
        probe with the current version."""
        started = self._clock()

        def failed(reason: str, key_id: str | None) -> _Health:
            if key_id is not None:
                self._last_key_id = key_id
            return _Health(
                healthz=reason,
                key_id=key_id or self._last_key_id,
                version_id=None,
                expires_at=started + self._failure_ttl,
            )

        try:
            info = self._access.current(self._root_id or self._key_ref)
        except KinkoError as exc:
            return failed(_reason(exc), None)
        with self._lock:
            if self._root_id is None:
                self._root_id = info.key_id
        key_id = key_id_for(info.key_id, info.version_id)
        problem = _state_error(info.key_id, info.state, encrypting=True)
        if problem is not None:
            return failed(_reason(problem), key_id)
        probe = self._rng(PROBE_SIZE)
        try:
            wrapped = self._access.wrap(info.key_id, probe, aad=PROBE_AAD)
            unwrapped = self._access.unwrap(info.key_id, wrapped.ciphertext, aad=PROBE_AAD)
        except KinkoError as exc:
            return failed(f"root key probe failed: {_reason(exc)}", key_id)
        if len(probe) != PROBE_SIZE or not hmac.compare_digest(unwrapped.plaintext, probe):
            return failed("root key probe failed: unwrap did not return the probe", key_id)
        if unwrapped.version_id != wrapped.version_id:
            return failed("root key probe failed: unwrap named another version", key_id)
        key_id = key_id_for(info.key_id, wrapped.version_id)
        self._last_key_id = key_id
        return _Health(
            healthz="ok",
            key_id=key_id,
            version_id=wrapped.version_id,
            expires_at=started + self._health_ttl,
        )


def _check_wrapped_kek(wrapped: bytes) -> None:
    if not wrapped or len(wrapped) > WRAPPED_KEK_MAX_SIZE:
        raise KeyServiceUnavailable(
            f"the key service wrapped a {KEK_SIZE}-byte local KEK into {len(wrapped)} bytes; "
            f"expected 1 to {WRAPPED_KEK_MAX_SIZE}"
        )


def _check_uid(uid: str) -> None:
    if not uid:
        raise InvalidArgument("uid: expected a non-empty request uid, got an empty one")
