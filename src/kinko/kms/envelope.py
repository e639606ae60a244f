"""The API-server side of KMS v2: one plugin session holding the write seed and the DEK cache.

:class:`KmsV2Session` is what kube-apiserver's KMS v2 transformer keeps per provider
(``config.go`` ``kmsv2PluginProbe``, ``envelope.go``, ``cache.go``), behind the
:class:`~kinko.crypto.types.KmsV2Keys` protocol:

- :meth:`KmsV2Session.check` is one Status probe. The answer must be healthy (``healthz`` exactly
  ``ok``), of version ``v2`` or ``v2beta1`` and the same version as the first healthy answer, and
  carry a valid key_id. When the key_id differs from the write state's (or there is none yet) a
  fresh 32-byte seed is wrapped with one Encrypt, whose answer must pass kube-apiserver's field
  rules and name the same key_id as Status; only then does it become the write state.
- Every successful check sets the write state's expiry to 3 minutes after the check *started*;
  writes fail after that ("coasting" ends), reads go on.
- A failed check raises :class:`~kinko.errors.PluginError` and changes nothing.
- :meth:`KmsV2Session.dek_source` unwraps stored seeds/DEKs through a bounded LRU cache keyed
  by every field kube-apiserver's cache key covers (:func:`dek_cache_key`): the DEK source
  type, the wrapped seed/DEK, the key_id and the annotations. kinko keys it by those fields
  themselves, compared whole, rather than by their SHA-256: the two are equally collision-free
  (the tuple is injective, the hash is collision-resistant) and the tuple costs no hashing per
  read. The write seed is always a hit, however many other seeds the cache has seen since,
  so reads of fresh data never miss.

:class:`KmsV2Poller` runs the checks in the background at kube-apiserver's intervals
(1 minute while healthy, 10 seconds while not).

An optional :class:`KmsObserver` (``observer=``) hears of every plugin call (method, error,
duration), every key_id used to write or read (as :func:`key_id_hash`), and every invalid
key_id in a Status answer; ``kinko.cluster.metrics`` turns these into kube-apiserver's
envelope metrics. Without one, nothing is timed or hashed beyond what the session needs.

Invariants: seeds, DEKs and wrapped seeds never appear in a message or a log line; a failed
check never changes the state; all state is changed under one lock, and plugin calls are never
made while holding it; the write state and its expiry are one immutable record replaced whole,
so writes and ``current_key_id`` read it without the lock and never see half a change; an
observer is handed names, hashes, errors and durations only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from types import MappingProxyType
from typing import Final, Protocol, TypeVar

from kinko.crypto import kms_rules
from kinko.crypto.types import DekSourceType, EncryptedObject, KmsWriteState, Rng
from kinko.errors import (
    DecryptionError,
    EnvelopeError,
    InvalidArgument,
    KinkoError,
    PluginError,
)
from kinko.kms.port import KmsV2Api

log = logging.getLogger(__name__)

#: kube-apiserver's hard-coded timings (``config.go``), in seconds.
WRITE_STATE_TTL = 3 * 60.0
POSITIVE_INTERVAL = 60.0
NEGATIVE_INTERVAL = 10.0
SUPPORTED_VERSIONS = frozenset({"v2", "v2beta1"})
AES_KEY_SIZES = frozenset({16, 24, 32})
DEFAULT_CACHE_SIZE = 1000
_U16_MAX = 0xFFFF

#: kube-apiserver's ``transformation_type`` label values.
TO_STORAGE: Final = "to_storage"
FROM_STORAGE: Final = "from_storage"
#: kube-apiserver's ``error`` label values for an invalid key_id in a Status answer.
KEY_ID_EMPTY: Final = "empty"
KEY_ID_TOO_LONG: Final = "too_long"

_T = TypeVar("_T")

#: The DEK cache's key: (type, encryptedDEKSource, keyID, annotations sorted by name). It
#: holds exactly the fields :func:`dek_cache_key` encodes, so two objects share an entry
#: exactly when kube-apiserver's cache key would be equal.
_CacheKey = tuple[int, bytes, str, tuple[tuple[str, bytes], ...]]


class KmsObserver(Protocol):
    """Hears what a :class:`KmsV2Session` does, for metrics. Methods must not raise.

    ``provider`` is the KMS provider name; ``method`` is ``Status``, ``Encrypt`` or
    ``Decrypt``; ``transformation`` is :data:`TO_STORAGE` or :data:`FROM_STORAGE`.
    """

    def on_kms_call(
        self, provider: str, method: str, error: BaseException | None, seconds: float
    ) -> None:
        """One plugin call finished: ``error`` is what it raised (None: it answered)."""
        ...

    def on_key_id(
        self, provider: str, key_id_hash: str, transformation: str, count: int = 1
    ) -> None:
        """``count`` values are about to be written with, or were read under, the key_id of
        this hash."""
        ...

    def on_invalid_key_id(self, provider: str, error: str) -> None:
        """A Status answer carried an invalid key_id (:data:`KEY_ID_EMPTY`, ...TOO_LONG)."""
        ...


def dek_cache_key(
    dek_source_type: DekSourceType,
    encrypted_dek_source: bytes,
    key_id: str,
    annotations: Mapping[str, bytes],
) -> bytes:
    """kube-apiserver's DEK cache key: SHA-256 over its cryptobyte encoding (§2.2.5).

    ``uint32(type) ‖ u16len(source) ‖ u16len(key_id)`` and, when there are annotations,
    ``uint32(count)`` then ``u16len(key) ‖ u16len(value)`` for each key in sorted order.

    Raises EnvelopeError: a field longer than 65535 bytes (cryptobyte cannot encode it).
    """

    def u16(name: str, data: bytes) -> bytes:
        if len(data) > _U16_MAX:
            raise EnvelopeError(f"{name}: expected at most {_U16_MAX} bytes, got {len(data)}")
        return struct.pack(">H", len(data)) + data

    parts = [
        struct.pack(">I", int(dek_source_type)),
        u16("encryptedDEKSource", encrypted_dek_source),
        u16("keyID", key_id.encode()),
    ]
    if annotations:
        parts.append(struct.pack(">I", len(annotations)))
        for name in sorted(annotations):
            parts.append(u16("annotations key", name.encode()))
            parts.append(u16(f"annotations[{name[:64]!r}]", annotations[name]))
    return hashlib.sha256(b"".join(parts)).digest()


def _annotations_key(annotations: Mapping[str, bytes]) -> tuple[tuple[str, bytes], ...]:
    # Sorted by name, as dek_cache_key encodes them; one entry needs no sort.
    if len(annotations) == 1:
        return tuple(annotations.items())
    return tuple(sorted(annotations.items()))


def _cache_key(obj: EncryptedObject) -> _CacheKey:
    annotations = obj.annotations
    return (
        obj.dek_source_type,
        obj.encrypted_dek_source,
        obj.key_id,
        _annotations_key(annotations) if annotations else (),
    )


@dataclass(frozen=True, slots=True)
class _Written:
    """The write state with what reads and writes need of it; replaced whole on every check."""

    state: KmsWriteState
    cache_key: _CacheKey = field(repr=False)
    key_id_hash: str
    expires_at: float
    last_healthy_at: float


def key_id_hash(key_id: str) -> str:
    """``sha256:<hex>`` of a key_id, as kube-apiserver names key_ids in metrics and errors."""
    return "sha256:" + hashlib.sha256(key_id.encode()).hexdigest()


@lru_cache(maxsize=256)
def _cached_key_id_hash(key_id: str) -> str:
    # Reads see few distinct key_ids; hashing one per read would cost more than the lookup.
    return key_id_hash(key_id)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """DEK cache counters: ``misses`` is the number of Decrypt calls the cache caused."""

    hits: int
    misses: int
    size: int


def _as_plugin_error(exc: KinkoError, *, name: str, what: str) -> PluginError:
    if isinstance(exc, PluginError):
        return exc
    return PluginError(f"KMS plugin {name}: {what}: {exc}")


class KmsV2Session:
    """One KMS v2 provider's session with its plugin (see the module docstring).

    ``clock`` is monotonic seconds; ``rng`` makes seeds; ``observer`` (optional) hears of
    plugin calls and key_ids (module docstring). Thread-safe.

    Raises InvalidArgument at construction: an empty name or a cache size below 1.
    """

    def __init__(
        self,
        api: KmsV2Api,
        *,
        name: str,
        clock: Callable[[], float] = time.monotonic,
        rng: Rng = os.urandom,
        cache_size: int = DEFAULT_CACHE_SIZE,
        observer: KmsObserver | None = None,
    ) -> None:
        if not name:
            raise InvalidArgument("name: expected a non-empty KMS provider name")
        if cache_size < 1:
            raise InvalidArgument(f"cache_size: expected at least 1, got {cache_size}")
        self._api = api
        self._name = name
        self._clock = clock
        self._rng = rng
        self._cache_size = cache_size
        # Seeds evicted so far: a transformer's kept seeds are valid while it is unchanged.
        self._epoch = 0
        # Read without the lock: one reference, replaced whole by the setter.
        self._observer = observer
        # Guards every field below; never held during a plugin call.
        self._lock = threading.Lock()
        # Serialises checks, so that two concurrent checks never wrap two seeds.
        self._check_lock = threading.Lock()
        # Changed only under the lock, replaced whole; read without it (one reference).
        self._written: _Written | None = None
        self._version: str | None = None
        # True once a check has finished (either way); the first use waits for that.
        self._primed = False
        self._last_failure: PluginError | None = None
        self._cache: OrderedDict[_CacheKey, bytes] = OrderedDict()
        self._hits = 0
        self._misses = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def observer(self) -> KmsObserver | None:
        return self._observer

    @observer.setter
    def observer(self, observer: KmsObserver | None) -> None:
        self._observer = observer

    # -- the Status probe ---------------------------------------------------------------

    def check(self) -> None:
        """One Status probe, and one Encrypt when the key_id changed (module docstring).

        Raises PluginError: the plugin is unreachable or unhealthy, or answered anything
        kube-apiserver would reject. InvalidArgument: ``rng`` returned other than 32 bytes.
        On any failure the state is unchanged.
        """
        with self._check_lock:
            self._check_locked()

    def _check_locked(self) -> None:
        try:
            self._probe()
        except PluginError as exc:
            with self._lock:
                self._last_failure = exc
            raise
        finally:
            with self._lock:
                self._primed = True

    def _probe(self) -> None:
        with self._lock:
            written = self._written
            version_seen = self._version
        started = self._clock()
        status = self._call("Status", self._api.status)
        if status.healthz != "ok":
            raise PluginError(
                f"KMS plugin {self._name}: got unexpected healthz status: {status.healthz[:64]!r}"
            )
        if status.version not in SUPPORTED_VERSIONS:
            raise PluginError(
                f"KMS plugin {self._name}: expected KMSv2 API version v2 or v2beta1, "
                f"got {status.version[:64]!r}"
            )
        if version_seen is not None and status.version != version_seen:
            raise PluginError(
                f"KMS plugin {self._name}: expected KMSv2 API version {version_seen} "
                f"(as first reported), got {status.version}"
            )
        try:
            self._check_field("Status", kms_rules.check_key_id, status.key_id)
        except PluginError:
            observer = self._observer
            if observer is not None:
                error = KEY_ID_EMPTY if not status.key_id else KEY_ID_TOO_LONG
                observer.on_invalid_key_id(self._name, error)
            raise
        if written is not None and written.state.key_id == status.key_id:
            with self._lock:
                current = self._written
                if current is not None:
                    self._written = replace(
                        current, expires_at=started + WRITE_STATE_TTL, last_healthy_at=started
                    )
                self._version = status.version
            return
        new_state = self._rotate(status.key_id)
        # Forming kube-apiserver's key checks every field fits its encoding (EnvelopeError).
        dek_cache_key(
            DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
            new_state.encrypted_dek_source,
            new_state.key_id,
            new_state.annotations,
        )
        new_key: _CacheKey = (
            DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
            new_state.encrypted_dek_source,
            new_state.key_id,
            _annotations_key(new_state.annotations) if new_state.annotations else (),
        )
        new_hash = key_id_hash(new_state.key_id)
        with self._lock:
            self._written = _Written(
                state=new_state,
                cache_key=new_key,
                key_id_hash=new_hash,
                expires_at=started + WRITE_STATE_TTL,
                last_healthy_at=started,
            )
            self._cache_put(new_key, new_state.seed)
            self._version = status.version
        log.info("KMS plugin %s: new write seed for key_id hash %s", self._name, new_hash)

    def _rotate(self, key_id: str) -> KmsWriteState:
        """Wrap a fresh seed for ``key_id``; the answer must satisfy every Encrypt rule."""
        seed = self._rng(kms_rules.SEED_SIZE)
        if len(seed) != kms_rules.SEED_SIZE:
            raise InvalidArgument(f"rng: expected {kms_rules.SEED_SIZE} bytes, got {len(seed)}")
        uid = str(uuid.uuid4())
        resp = self._call("Encrypt", lambda: self._api.encrypt(seed, uid=uid))
        self._check_field("Encrypt", kms_rules.check_encrypted_dek_source, resp.ciphertext)
        self._check_field("Encrypt", kms_rules.check_key_id, resp.key_id)
        if resp.key_id != key_id:
            raise PluginError(
                f"KMS plugin {self._name}: Encrypt returned key_id hash "
                f"{key_id_hash(resp.key_id)}, expected the Status key_id hash "
                f"{key_id_hash(key_id)}; keeping the previous write state"
            )
        annotations = MappingProxyType(dict(resp.annotations))
        self._check_field("Encrypt", kms_rules.check_annotations, annotations)
        return KmsWriteState(
            seed=seed,
            key_id=key_id,
            encrypted_dek_source=bytes(resp.ciphertext),
            annotations=annotations,
        )

    def _call(self, method: str, fn: Callable[[], _T]) -> _T:
        try:
            return self._timed(method, fn)
        except KinkoError as exc:
            raise _as_plugin_error(exc, name=self._name, what=f"{method} failed") from exc

    def _timed(self, method: str, fn: Callable[[], _T]) -> _T:
        """``fn()``, reported to the observer (if any) with its duration and error."""
        observer = self._observer
        if observer is None:
            return fn()
        started = time.perf_counter()
        try:
            result = fn()
        except BaseException as exc:
            observer.on_kms_call(self._name, method, exc, time.perf_counter() - started)
            raise
        observer.on_kms_call(self._name, method, None, time.perf_counter() - started)
        return result

    def _check_field(self, method: str, rule: Callable[[_T], None], value: _T) -> None:
        try:
            rule(value)
        except EnvelopeError as exc:
            raise PluginError(f"KMS plugin {self._name}: invalid {method} response: {exc}") from exc

    # -- KmsV2Keys ----------------------------------------------------------------------

    def _prime(self) -> None:
        """Run the first check unless one has finished; a check in flight is waited for."""
        # ``_primed`` only ever goes from False to True, so reading it without the lock is
        # safe; this keeps the lock off the per-write path once the session is primed.
        if self._primed:
            return
        with self._check_lock:
            with self._lock:
                if self._primed:
                    return
            with contextlib.suppress(PluginError):
                self._check_locked()

    def write_state(self) -> KmsWriteState:
        """The seed to write with; the first call runs the first check.

        Raises PluginError: the plugin was never healthy, or the state expired (no healthy
        Status for 3 minutes).
        """
        if not self._primed:
            self._prime()
        # One reference read: the state and its expiry always belong together.
        written = self._written
        if written is None:
            msg = f"KMS plugin {self._name} has never been healthy; no write state"
            with self._lock:
                failure = self._last_failure
            raise PluginError(f"{msg}: {failure}" if failure else msg)
        now = self._clock()
        if now > written.expires_at:
            since = now - written.last_healthy_at
            raise PluginError(
                f'encryptedDEKSource with keyID hash "{written.key_id_hash}" '
                f"expired; the KMS plugin {self._name} has not been healthy for {since:.0f}s"
            )
        observer = self._observer
        if observer is not None:
            observer.on_key_id(self._name, written.key_id_hash, TO_STORAGE)
        return written.state

    def current_key_id(self) -> str | None:
        """The write state's key_id, or None if the plugin was never healthy.

        The first call runs the first check. Raises nothing.
        """
        if not self._primed:
            self._prime()
        written = self._written
        return written.state.key_id if written is not None else None

    def seed_epoch(self) -> int:
        """The number of seeds evicted from the cache so far (see ``KmsV2Keys``)."""
        return self._epoch

    def kept_hit(self, obj: EncryptedObject, epoch: int, count: int = 1) -> bool:
        """``count`` reads served by a seed the transformer kept at ``epoch``: while no seed
        has been evicted since, counted as cache hits with their key_id in the metric, exactly
        as :meth:`dek_source` counts ``count`` hits, and True. After an eviction, False and
        nothing counted: the transformer asks :meth:`dek_source`, so an evicted seed needs the
        plugin's Decrypt again. Raises nothing.
        """
        with self._lock:
            if epoch != self._epoch:
                return False
            self._hits += count
        observer = self._observer
        if observer is not None:
            observer.on_key_id(self._name, _cached_key_id_hash(obj.key_id), FROM_STORAGE, count)
        return True

    def dek_source(self, obj: EncryptedObject) -> bytes:
        """The plaintext seed (type 1) or DEK (type 0) of ``obj``, from the cache or Decrypt.

        A miss makes one Decrypt with a fresh uid and the object's key_id and annotations.
        Reads do not need a healthy Status: only the plugin's Decrypt.

        Raises DecryptionError: the plugin refused the request or answered a seed shorter than
        32 bytes / a DEK that is not an AES key size. PluginError: the plugin is unavailable.
        EnvelopeError: a field is too long to form a cache key.
        """
        cache_key = _cache_key(obj)
        written = self._written
        with self._lock:
            if written is not None and cache_key == written.cache_key:
                # The current write seed is always a hit, however many other seeds the
                # bounded cache has seen since: reads of fresh data never call Decrypt.
                self._hits += 1
                found: bytes | None = written.state.seed
            else:
                cache = self._cache
                found = cache.get(cache_key)
                if found is not None:
                    cache.move_to_end(cache_key)
                    self._hits += 1
        if found is None:
            # Only a miss can hold a field kube-apiserver cannot form a key of: a cached key
            # passed this check when its entry was made. Raises EnvelopeError before Decrypt.
            dek_cache_key(
                obj.dek_source_type, obj.encrypted_dek_source, obj.key_id, obj.annotations
            )
        observer = self._observer
        if observer is not None:
            observer.on_key_id(self._name, _cached_key_id_hash(obj.key_id), FROM_STORAGE)
        if found is not None:
            return found
        with self._lock:
            self._misses += 1
        try:
            plaintext = self._timed(
                "Decrypt",
                lambda: self._api.decrypt(
                    obj.encrypted_dek_source,
                    uid=str(uuid.uuid4()),
                    key_id=obj.key_id,
                    annotations=obj.annotations,
                ),
            )
        except (DecryptionError, PluginError):
            raise
        except InvalidArgument:
            # A plugin refusing the request (unknown key_id, bad annotations) cannot unwrap
            # this value as stored: opaque, like every decryption failure.
            raise DecryptionError() from None
        except KinkoError as exc:
            raise _as_plugin_error(exc, name=self._name, what="Decrypt failed") from exc
        if obj.dek_source_type == DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED:
            valid = len(plaintext) >= kms_rules.SEED_SIZE
        else:
            valid = len(plaintext) in AES_KEY_SIZES
        if not valid:
            raise DecryptionError()
        plaintext = bytes(plaintext)
        with self._lock:
            self._cache_put(cache_key, plaintext)
        return plaintext

    def _cache_put(self, key: _CacheKey, value: bytes) -> None:
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
            self._epoch += 1

    def cache_stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(hits=self._hits, misses=self._misses, size=len(self._cache))

    def expires_in(self) -> float | None:
        """Seconds until writes stop (negative once expired), or None with no write state."""
        written = self._written
        if written is None:
            return None
        return written.expires_at - self._clock()


class KmsV2Poller:
    """Calls ``session.check()`` in a daemon thread: every ``positive_interval`` seconds after a
    healthy check, every ``negative_interval`` seconds after a failed one. The first check runs
    at once. Waits are on an Event, so :meth:`stop` returns promptly.

    Raises InvalidArgument at construction: a non-positive interval.
    """

    def __init__(
        self,
        session: KmsV2Session,
        *,
        positive_interval: float = POSITIVE_INTERVAL,
        negative_interval: float = NEGATIVE_INTERVAL,
    ) -> None:
        if positive_interval <= 0 or negative_interval <= 0:
            raise InvalidArgument("poller intervals: expected positive numbers of seconds")
        self._session = session
        self._positive = positive_interval
        self._negative = negative_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once). Raises InvalidArgument when already started."""
        if self._thread is not None:
            raise InvalidArgument("poller: already started")
        self._thread = threading.Thread(
            target=self._run, name=f"kms-poller-{self._session.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to stop and wait for it (a running check finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session.check()
                interval = self._positive
            except PluginError as exc:
                log.warning("KMS plugin %s: check failed: %s", self._session.name, exc)
                interval = self._negative
            except Exception:
                # A bug must not end the polling silently; the traceback carries no key bytes.
                log.exception("KMS plugin %s: check crashed", self._session.name)
                interval = self._negative
            self._stop.wait(interval)
