"""Encryption at rest for the cluster store: the live EncryptionConfiguration and the byte layer.

Job: :class:`EncryptionConfigSource` keeps the provider chains of one EncryptionConfiguration
file current (reloaded when the file's content hash changes), and :class:`EncryptedObjects`
reads and writes a :class:`~kinko.store.port.Store` through those chains exactly as
kube-apiserver stores Secrets and ConfigMaps.

Invariants:

- **AAD is the exact storage key.** Every value is sealed and opened with its own key's bytes
  as AAD, so a value copied to another key does not open.
- **Chains swap atomically.** Every operation reads the current generation (chains, hash,
  load time) once; a reload replaces it in one assignment. A bad new file (unreadable,
  invalid) keeps the old generation and is reported in ``last_error`` and the
  :class:`ReloadResult`; the same bad content is not parsed again until it changes.
- **KMS sessions outlive reloads.** A KMS provider whose settings (name, endpoint, timeout)
  are unchanged keeps its session, so its write seed and DEK cache survive a reload. Writes
  reuse the current seed (no plugin call per write); the seed is refreshed when Status
  reports a new key_id; writes fail closed with a PluginError naming the plugin once no
  Status was healthy for 3 minutes; reads call Decrypt only for a seed not yet cached
  (all of this is :class:`~kinko.kms.envelope.KmsV2Session`'s). Sessions and clients of
  providers no longer configured are closed after the swap; an operation still running on the
  old generation may then see a PluginError for that provider, which callers retry.
- **One undecryptable value never breaks a LIST.** A value that no provider opens (its key
  destroyed, its provider removed, tampered) is left out of ``items`` and named in
  ``unreadable``. A KMS plugin that is *unavailable* is not "undecryptable": the value may open
  once the plugin is back, so the LIST raises the PluginError instead of reporting the value
  as unreadable. Reporting it would invite an administrator to force-delete readable data, and
  a LIST that silently shrinks while a plugin is down would look like data loss.
- :meth:`EncryptedObjects.force_delete_unreadable` deletes only a value that fails to decrypt
  *now* with a DecryptionError, guarded on the revision it was read at.
- Messages name storage keys, resources, providers, revisions and config hashes; never
  plaintext, ciphertext or key bytes.

Observation: an optional :class:`EnvelopeObserver` (``EncryptionConfigSource(observer=...)``
or the ``observer`` property) hears of every reload, every seal and open through a chain
(:meth:`EnvelopeObserver.on_transform`, timed by :class:`EncryptedObjects`), and, through the
KMS v2 sessions the source creates, of every plugin call and key_id. It is handed label
material only (names, prefixes, hashes, errors, durations); ``kinko.cluster.metrics`` is the
implementation. With no observer nothing is timed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn, Protocol

from kinko.crypto.chain import ProviderChain
from kinko.crypto.config import (
    EncryptionChains,
    KmsConfig,
    build_chains,
    config_hash,
    parse_encryption_config,
)
from kinko.crypto.types import (
    KeptOpened,
    KmsV1Unwrapper,
    KmsV2Keys,
    Opened,
    Rng,
)
from kinko.errors import (
    ConfigError,
    Conflict,
    DecryptionError,
    DeletionRefused,
    InvalidArgument,
    KinkoError,
    NotFound,
    UnreadableValue,
)
from kinko.etcdtool import resolve_resource
from kinko.kms.envelope import (
    FROM_STORAGE,
    TO_STORAGE,
    KmsObserver,
    KmsV2Poller,
    KmsV2Session,
)
from kinko.kms.port import KmsV2Api
from kinko.store.port import Delete, Entry, Page, Put, Store

__all__ = [
    "IDENTITY_PREFIX",
    "EncryptedObjects",
    "EncryptionConfigSource",
    "EncryptionState",
    "EnvelopeObserver",
    "ListItem",
    "ListResult",
    "ReadValue",
    "ReloadResult",
    "Scan",
    "UnreadableValue",
]

log = logging.getLogger(__name__)

#: Opens a KMS v2 plugin API for a provider (default: a gRPC client of its endpoint).
KmsV2ApiFactory = Callable[[KmsConfig], KmsV2Api]
#: Opens a read-only KMS v1 client for a provider (default: a gRPC client of its endpoint).
KmsV1Factory = Callable[[KmsConfig], KmsV1Unwrapper]
#: The ``transformer_prefix`` of the identity transformer (its prefix is empty), as upstream.
IDENTITY_PREFIX: Final = "identity"
#: A page of the store is opened this many values at a time as it is iterated (:class:`Scan`),
#: so each value is decoded while its plaintext is still in the CPU's cache: a whole page of
#: 500 values, ciphertext and plaintext, is larger than a core's L2 cache.
OPEN_ROWS: Final = 64


class EnvelopeObserver(KmsObserver, Protocol):
    """Hears what the source and the byte layer do, for metrics. Methods must not raise.

    Besides :class:`~kinko.kms.envelope.KmsObserver`'s plugin calls and key_ids:
    """

    def on_transform(
        self,
        transformation: str,
        prefix: str,
        error: BaseException | None,
        seconds: float,
        count: int = 1,
    ) -> None:
        """``count`` seals (``to_storage``) or opens (``from_storage``) through a chain
        finished, each in ``seconds``.

        ``prefix`` is the transformer's value prefix (``k8s:enc:aescbc:v1:key1:``) or
        :data:`IDENTITY_PREFIX`; ``error`` is what it raised (None: it succeeded).
        """
        ...

    def on_reload(self, ok: bool) -> None:
        """A reload loaded a changed file (True) or refused the file (False)."""
        ...


# --------------------------------------------------------------------------- the source


@dataclass(frozen=True, slots=True)
class EncryptionState:
    """One loaded generation of the configuration: its chains, content hash and load time."""

    chains: EncryptionChains = field(repr=False)
    config_hash: str
    loaded_at: float  # wall-clock seconds


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What :meth:`EncryptionConfigSource.reload_if_changed` did.

    ``config_hash`` is the hash in force afterwards; ``error`` says why a changed file was
    refused (None when it was loaded or unchanged).
    """

    changed: bool
    config_hash: str
    error: str | None = None


@dataclass(slots=True)
class _Kms:
    """One KMS provider's live connection: its port, the client to close, its poller."""

    api: object
    session: KmsV2Session | None = None
    unwrapper: KmsV1Unwrapper | None = None
    poller: KmsV2Poller | None = None

    def close(self) -> None:
        if self.poller is not None:
            self.poller.stop()
        close: Callable[[], None] | None = getattr(self.api, "close", None)
        if close is not None:
            close()


def _grpc_v2(kms: KmsConfig) -> KmsV2Api:
    from kinko.kms.client import GrpcKmsV2Api

    return GrpcKmsV2Api(kms.endpoint, timeout=kms.timeout_seconds)


def _grpc_v1(kms: KmsConfig) -> KmsV1Unwrapper:
    from kinko.kms.client import GrpcKmsV1Api

    return GrpcKmsV1Api(kms.endpoint, timeout=kms.timeout_seconds)


class EncryptionConfigSource:
    """The live EncryptionConfiguration read from ``path``, with its provider chains.

    ``kms_v2`` / ``kms_v1`` open a plugin client for a KMS provider (gRPC by default, so any
    plugin on its socket works: kinko's or another). ``poll_kms`` starts a
    :class:`~kinko.kms.envelope.KmsV2Poller` per KMS v2 session (kube-apiserver's Status
    intervals); without it, sessions check only on first use. ``clock`` is the sessions'
    monotonic clock, ``wall_clock`` stamps ``loaded_at``. ``observer`` (optional, also
    settable later) hears of reloads and is passed on to every KMS v2 session. Thread-safe.

    Raises ConfigError at construction: the file cannot be read or is invalid.
    """

    def __init__(
        self,
        path: Path,
        *,
        kms_v2: KmsV2ApiFactory = _grpc_v2,
        kms_v1: KmsV1Factory = _grpc_v1,
        rng: Rng = os.urandom,
        poll_kms: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        observer: EnvelopeObserver | None = None,
    ) -> None:
        self._path = path
        self._observer = observer
        self._kms_v2_api = kms_v2
        self._kms_v1_api = kms_v1
        self._rng = rng
        self._poll_kms = poll_kms
        self._clock = clock
        self._wall_clock = wall_clock
        # Guards _kms, _last_error, _rejected_hash and the swap of _state.
        self._lock = threading.Lock()
        # Serialises reloads, so two pollers never build two generations at once.
        self._reload_lock = threading.Lock()
        self._kms: dict[KmsConfig, _Kms] = {}
        self._last_error: str | None = None
        self._rejected_hash: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        data = self._read()
        self._state = self._load(data, config_hash(data))

    # -- reading ---------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def state(self) -> EncryptionState:
        """The generation in force. Raises nothing."""
        return self._state

    @property
    def config_hash(self) -> str:
        return self._state.config_hash

    @property
    def loaded_at(self) -> float:
        return self._state.loaded_at

    @property
    def last_error(self) -> str | None:
        """Why the newest file content was refused; None once a good one loads."""
        with self._lock:
            return self._last_error

    def chain_for(self, resource: str) -> ProviderChain:
        """The current chain for ``resource``. Raises as ``EncryptionChains.chain_for``."""
        return self._state.chains.chain_for(resource)

    @property
    def observer(self) -> EnvelopeObserver | None:
        return self._observer

    @observer.setter
    def observer(self, observer: EnvelopeObserver | None) -> None:
        """Observe from now on, through the live KMS v2 sessions too. Raises nothing."""
        with self._lock:
            self._observer = observer
            for live in self._kms.values():
                if live.session is not None:
                    live.session.observer = observer

    def kms_v2_session(self, name: str) -> KmsV2Session | None:
        """The live session of the KMS v2 provider ``name``, once a chain has used it."""
        with self._lock:
            for kms, live in self._kms.items():
                if kms.name == name and live.session is not None:
                    return live.session
        return None

    # -- reloading -------------------------------------------------------------------------

    def reload_if_changed(self) -> ReloadResult:
        """Load the file again if its content hash changed; keep the old chains on any error.

        Raises nothing: a read or validation error is returned and kept in ``last_error``.
        The observer hears of a loaded change and of every refusal, not of an unchanged file.
        """
        result = self._reload()
        observer = self._observer
        if observer is not None and (result.changed or result.error is not None):
            observer.on_reload(result.error is None)
        return result

    def _reload(self) -> ReloadResult:
        with self._reload_lock:
            try:
                data = self._read()
            except ConfigError as exc:
                return self._refuse(None, str(exc))
            digest = config_hash(data)
            current = self._state
            if digest == current.config_hash:
                with self._lock:
                    self._last_error = None
                    self._rejected_hash = None
                return ReloadResult(changed=False, config_hash=digest)
            with self._lock:
                if digest == self._rejected_hash:
                    return ReloadResult(False, current.config_hash, self._last_error)
            try:
                state = self._load(data, digest)
            except ConfigError as exc:
                return self._refuse(digest, str(exc))
            with self._lock:
                self._state = state
                self._last_error = None
                self._rejected_hash = None
                wanted = set(state.chains.config.kms_providers)
                gone = [self._kms.pop(k) for k in list(self._kms) if k not in wanted]
            for live in gone:
                live.close()
            log.info(
                "EncryptionConfiguration %s: loaded %s (was %s)",
                self._path,
                digest,
                current.config_hash,
            )
            return ReloadResult(changed=True, config_hash=digest)

    def _refuse(self, digest: str | None, message: str) -> ReloadResult:
        current = self._state.config_hash
        text = f"EncryptionConfiguration {self._path} not reloaded, keeping {current}: {message}"
        with self._lock:
            self._last_error = text
            self._rejected_hash = digest
        log.warning("%s", text)
        return ReloadResult(changed=False, config_hash=current, error=text)

    def start_polling(self, interval: float = 60.0) -> None:
        """Call :meth:`reload_if_changed` every ``interval`` seconds in a daemon thread.

        Raises InvalidArgument: a non-positive interval, or polling already started.
        """
        if interval <= 0:
            raise InvalidArgument(f"interval: expected positive seconds, got {interval}")
        if self._thread is not None:
            raise InvalidArgument("EncryptionConfiguration polling: already started")
        self._thread = threading.Thread(
            target=self._poll, args=(interval,), name="encryption-config-poller", daemon=True
        )
        self._thread.start()

    def _poll(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.reload_if_changed()
            except Exception:
                # A bug must not end the polling silently; the traceback carries no key bytes.
                log.exception("EncryptionConfiguration %s: reload crashed", self._path)

    def close(self) -> None:
        """Stop polling, the KMS pollers and close every KMS client. Raises nothing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._closed = True
            live = list(self._kms.values())
            self._kms.clear()
        for item in live:
            item.close()

    # -- internals -------------------------------------------------------------------------

    def _read(self) -> bytes:
        try:
            return self._path.read_bytes()
        except OSError as exc:
            raise ConfigError("", f"cannot read {self._path}: {exc.strerror}") from exc

    def _load(self, data: bytes, digest: str) -> EncryptionState:
        config = parse_encryption_config(data)
        chains = build_chains(config, kms_v2=self._v2_port, kms_v1=self._v1_port, rng=self._rng)
        return EncryptionState(chains=chains, config_hash=digest, loaded_at=self._wall_clock())

    def _v2_port(self, kms: KmsConfig) -> KmsV2Keys:
        with self._lock:
            live = self._kms.get(kms)
            if live is not None:
                return live.session or _refuse_kind(kms)
            api = self._kms_v2_api(kms)
            session = KmsV2Session(
                api, name=kms.name, clock=self._clock, rng=self._rng, observer=self._observer
            )
            poller = KmsV2Poller(session) if self._poll_kms and not self._closed else None
            self._kms[kms] = _Kms(api=api, session=session, poller=poller)
        if poller is not None:
            poller.start()
        return session

    def _v1_port(self, kms: KmsConfig) -> KmsV1Unwrapper:
        with self._lock:
            live = self._kms.get(kms)
            if live is None:
                api = self._kms_v1_api(kms)
                live = _Kms(api=api, unwrapper=api)
                self._kms[kms] = live
        return live.unwrapper or _refuse_kind(kms)


def _refuse_kind(kms: KmsConfig) -> NoReturn:
    # KmsConfig carries api_version, so a v1 and a v2 provider never share an entry; this is
    # a guard against a broken invariant, not a reachable path.
    raise InvalidArgument(f"KMS provider {kms.name}: live connection of another API version")


# --------------------------------------------------------------------------- the byte layer


class ChainSource(Protocol):
    """What picks a provider chain: :class:`EncryptionConfigSource` (or EncryptionChains)."""

    def chain_for(self, resource: str) -> ProviderChain: ...


@dataclass(frozen=True, slots=True)
class ReadValue:
    """One decrypted object. ``stale``: not what the chain would write now (migrate it)."""

    plaintext: bytes = field(repr=False)
    mod_revision: int
    stale: bool
    provider: str
    key_id: str | None


@dataclass(frozen=True, slots=True)
class ListItem:
    key: bytes
    value: ReadValue


@dataclass(frozen=True, slots=True)
class ListResult:
    """One page: the readable objects, the storage keys of the unreadable ones, and paging.

    ``more``: another page follows; continue after the last key of ``items`` or
    ``unreadable``, whichever is greater (:attr:`last_key`), at ``revision``.
    """

    items: tuple[ListItem, ...]
    unreadable: tuple[bytes, ...]
    more: bool
    revision: int
    last_key: bytes = b""


class EncryptedObjects:
    """Encrypted reads and guarded writes of cluster objects over a Store. Thread-safe.

    ``observer`` hears of every seal and open (module docstring); by default it is the
    source's current observer when ``source`` is an :class:`EncryptionConfigSource`.
    """

    def __init__(
        self, store: Store, source: ChainSource, *, observer: EnvelopeObserver | None = None
    ) -> None:
        self._store = store
        self._source = source
        self._fixed_observer = observer
        self._live = source if isinstance(source, EncryptionConfigSource) else None

    def _observer(self) -> EnvelopeObserver | None:
        if self._fixed_observer is not None:
            return self._fixed_observer
        return self._live.observer if self._live is not None else None

    def write(self, resource: str, key: bytes, plaintext: bytes, *, expect: int) -> int:
        """Seal ``plaintext`` with AAD = ``key`` and Put it if the key's revision is ``expect``.

        ``expect`` 0 creates. Returns the new revision. Raises PluginError (the KMS plugin
        cannot serve a write: it names the plugin; map to 503), InvalidArgument (the first
        provider cannot write, e.g. KMS v1; a bad key), Conflict (the guard failed),
        StoreUnavailable.
        """
        chain = self._source.chain_for(resource)
        observer = self._observer()
        if observer is None:
            sealed = chain.seal(plaintext, aad=key)
        else:
            sealed = _observed_seal(observer, chain, plaintext, key)
        result = self._store.txn([Put(key, sealed, expect=expect)])
        if not result.succeeded:
            raise Conflict(_changed(key, expect))
        return result.revision

    def read(self, resource: str, key: bytes) -> ReadValue:
        """The decrypted object at ``key``.

        Raises NotFound, UnreadableValue (a DecryptionError naming the reason), PluginError
        (a KMS plugin needed for this value's seed is unavailable), StoreUnavailable.
        """
        entry = self._store.get(key)
        if entry is None:
            raise NotFound(f"no object is stored at {_show(key)}")
        chain = self._source.chain_for(resource)
        opened = _open(chain, key, entry.value, self._observer())
        return _read_value(opened, entry.mod_revision)

    def list(
        self,
        resource: str,
        prefix: bytes,
        *,
        limit: int = 500,
        start_after: bytes = b"",
        revision: int = 0,
    ) -> ListResult:
        """One page of objects under ``prefix``; undecryptable values are reported, not raised.

        Raises PluginError (a KMS plugin needed for a seed not cached yet is unavailable; see
        the module docstring), InvalidArgument (limit < 1), Conflict (revision compacted),
        StoreUnavailable.
        """
        scan = self.scan(resource, prefix, limit=limit, start_after=start_after, revision=revision)
        items = tuple(scan)
        return ListResult(items, tuple(scan.unreadable), scan.more, scan.revision, scan.last_key)

    def scan(
        self,
        resource: str,
        prefix: bytes,
        *,
        limit: int = 500,
        start_after: bytes = b"",
        revision: int = 0,
    ) -> Scan:
        """One page of objects under ``prefix``, read now and opened as it is iterated.

        :meth:`list` without holding every plaintext of the page at once: iterate the scan
        and use each item before the next ones are opened. Raises what :meth:`list` raises:
        InvalidArgument, Conflict (revision compacted), StoreUnavailable here, PluginError
        while iterating.
        """
        page = self._store.range(prefix, start_after=start_after, limit=limit, revision=revision)
        return Scan(resource, prefix, page, self._source.chain_for(resource), self._observer())

    def delete(self, key: bytes, *, expect: int) -> int:
        """Delete ``key`` if its revision is ``expect``; returns the new revision.

        Raises Conflict (the object changed or is gone), InvalidArgument, StoreUnavailable.
        """
        result = self._store.txn([Delete(key, expect=expect)])
        if not result.succeeded:
            raise Conflict(_changed(key, expect))
        return result.revision

    def force_delete_unreadable(self, key: bytes, *, resource: str | None = None) -> int:
        """Delete the value at ``key`` only if it cannot be decrypted now; returns the revision.

        ``resource`` defaults to the one parsed from the key (``/registry/<resource>/...``).
        Raises NotFound, DeletionRefused (the value is readable: delete it normally),
        PluginError (its plugin is unavailable, so whether it is readable is unknown),
        Conflict (it changed since it was checked), InvalidArgument (no resource),
        StoreUnavailable.
        """
        name = resolve_resource(key, resource=resource, etcd_prefix=None)
        entry = self._store.get(key)
        if entry is None:
            raise NotFound(f"no object is stored at {_show(key)}")
        try:
            _open(self._source.chain_for(name), key, entry.value, self._observer())
        except UnreadableValue as exc:
            log.warning("force-deleting unreadable %s: %s", _show(key), exc.reason)
            return self.delete(key, expect=entry.mod_revision)
        raise DeletionRefused(
            f"{_show(key)} decrypts with the current configuration; "
            "expected an unreadable value for a forced delete, delete it normally"
        )


class Scan:
    """One page of the store under a prefix, opened :data:`OPEN_ROWS` values at a time as it
    is iterated (:meth:`EncryptedObjects.scan`). Iterate it once.

    ``more``, ``revision`` and ``last_key`` are the page's, as in :class:`ListResult`;
    ``unreadable`` lists the storage keys of the values met so far that do not open (a
    warning names their number once the iteration ends). Iterating raises PluginError (a KMS
    plugin needed for a seed not cached yet is unavailable); iterating a second time raises
    InvalidArgument.
    """

    __slots__ = (
        "_chain",
        "_entries",
        "_observer",
        "_prefix",
        "_resource",
        "_started",
        "last_key",
        "more",
        "revision",
        "unreadable",
    )

    def __init__(
        self,
        resource: str,
        prefix: bytes,
        page: Page,
        chain: ProviderChain,
        observer: EnvelopeObserver | None,
    ) -> None:
        self._resource = resource
        self._prefix = prefix
        self._entries = page.entries
        self._chain = chain
        self._observer = observer
        self.more = page.more
        self.revision = page.revision
        self.last_key = page.entries[-1].key if page.entries else b""
        self.unreadable: list[bytes] = []
        self._started = False

    def __iter__(self) -> Iterator[ListItem]:
        if self._started:
            raise InvalidArgument("a scan is iterated once; scan the page again")
        self._started = True
        return self._opened()

    def _opened(self) -> Iterator[ListItem]:
        entries = self._entries
        for start in range(0, len(entries), OPEN_ROWS):
            items, unreadable = _open_page(
                self._chain, entries[start : start + OPEN_ROWS], self._observer
            )
            self.unreadable.extend(unreadable)
            yield from items
        if self.unreadable:
            log.warning(
                "LIST %s under %s: %d unreadable value(s), first %s",
                self._resource,
                _show(self._prefix),
                len(self.unreadable),
                _show(self.unreadable[0]),
            )


def _open_page(
    chain: ProviderChain, entries: Sequence[Entry], observer: EnvelopeObserver | None
) -> tuple[list[ListItem], list[bytes]]:
    """The readable items and the unreadable keys of some entries of a page, in order.

    Values under a seed the chain already holds open in one pass (:meth:`ProviderChain.open_kept`),
    the others one by one. When a value opened one by one made the chain keep a new seed
    (:meth:`ProviderChain.kept_mark` moved), the pass runs again over the values after it
    that it has not tried yet. Raises PluginError, as :func:`_open`.
    """
    values = [entry.value for entry in entries]
    aads = [entry.key for entry in entries]
    kept = _open_kept(chain, values, aads, observer)
    mark = chain.kept_mark() if kept is not None else None
    plaintexts, shapes = kept or KeptOpened([None] * len(entries), [None] * len(entries))
    items: list[ListItem] = []
    unreadable: list[bytes] = []
    for index, entry in enumerate(entries):
        plaintext, shape = plaintexts[index], shapes[index]
        if plaintext is not None and shape is not None:
            value = ReadValue(
                plaintext, entry.mod_revision, shape.stale, shape.provider, shape.key_id
            )
            items.append(ListItem(entry.key, value))
            continue
        try:
            opened = _open(chain, entry.key, entry.value, observer)
        except UnreadableValue:
            unreadable.append(entry.key)
            continue
        items.append(ListItem(entry.key, _read_value(opened, entry.mod_revision)))
        now = chain.kept_mark()
        if mark is None or now == mark:
            continue
        mark = now
        # Not yet tried: neither opened nor tried and failed (those go one by one).
        left = [j for j in range(index + 1, len(entries)) if shapes[j] is None]
        more = _open_kept(chain, [values[j] for j in left], [aads[j] for j in left], observer)
        if more is not None:
            for j, plaintext, shape in zip(left, *more, strict=True):
                plaintexts[j], shapes[j] = plaintext, shape
    return items, unreadable


def _open_kept(
    chain: ProviderChain,
    values: list[bytes],
    aads: list[bytes],
    observer: EnvelopeObserver | None,
) -> KeptOpened | None:
    started = time.perf_counter()
    kept = chain.open_kept(values, aads)
    if kept is not None and observer is not None:
        _observe_kept(observer, chain, kept.plaintexts, time.perf_counter() - started)
    return kept


def _open(
    chain: ProviderChain, key: bytes, value: bytes, observer: EnvelopeObserver | None
) -> Opened:
    try:
        if observer is None:
            return chain.open(value, aad=key)
        return _observed_open(observer, chain, key, value)
    except DecryptionError as exc:
        reason = (
            UnreadableValue.NO_PROVIDER
            if exc.reason == DecryptionError.NO_MATCHING_PROVIDER
            else UnreadableValue.NOT_OPENED
        )
        raise UnreadableValue(key, reason) from None


def _observe_kept(
    observer: EnvelopeObserver, chain: ProviderChain, opened: list[bytes | None], seconds: float
) -> None:
    """Report the values :meth:`ProviderChain.open_kept` opened (``opened``: their
    plaintexts), each under the first transformer's prefix and with the pass's mean time per
    value (its only measure). Values it tried and could not open are reported when they are
    opened alone."""
    served = len(opened) - opened.count(None)
    if served:
        prefix = _label(chain.first.prefix)
        observer.on_transform(FROM_STORAGE, prefix, None, seconds / served, served)


def _observed_seal(
    observer: EnvelopeObserver, chain: ProviderChain, plaintext: bytes, key: bytes
) -> bytes:
    prefix = _label(chain.first.prefix)
    started = time.perf_counter()
    try:
        sealed = chain.seal(plaintext, aad=key)
    except KinkoError as exc:
        observer.on_transform(TO_STORAGE, prefix, exc, time.perf_counter() - started)
        raise
    observer.on_transform(TO_STORAGE, prefix, None, time.perf_counter() - started)
    return sealed


def _observed_open(
    observer: EnvelopeObserver, chain: ProviderChain, key: bytes, value: bytes
) -> Opened:
    """``chain.open``, reported under the prefix of the transformer that opened the value.

    A failure is reported under the first matching non-identity prefix, and not at all when
    no prefix matched (kube-apiserver records no transformation then either).
    """
    started = time.perf_counter()
    try:
        opened = chain.open(value, aad=key)
    except KinkoError as exc:
        seconds = time.perf_counter() - started
        matched = next(
            (t.prefix for t in chain.transformers if t.prefix and value.startswith(t.prefix)), None
        )
        if matched is not None:
            observer.on_transform(FROM_STORAGE, _label(matched), exc, seconds)
        raise
    seconds = time.perf_counter() - started
    observer.on_transform(FROM_STORAGE, _opened_prefix(chain, value, opened), None, seconds)
    return opened


def _opened_prefix(chain: ProviderChain, value: bytes, opened: Opened) -> str:
    if opened.provider == IDENTITY_PREFIX:
        return IDENTITY_PREFIX
    fallback = IDENTITY_PREFIX
    for t in chain.transformers:
        if t.prefix and value.startswith(t.prefix):
            if t.kind == opened.provider and t.name == opened.key_name:
                return _label(t.prefix)
            if fallback == IDENTITY_PREFIX:
                fallback = _label(t.prefix)
    return fallback


def _label(prefix: bytes) -> str:
    # Prefixes come from the validated configuration, so they are text.
    return prefix.decode("utf-8", errors="backslashreplace") if prefix else IDENTITY_PREFIX


def _read_value(opened: Opened, mod_revision: int) -> ReadValue:
    return ReadValue(
        plaintext=opened.plaintext,
        mod_revision=mod_revision,
        stale=opened.stale,
        provider=opened.provider,
        key_id=opened.key_id,
    )


def _changed(key: bytes, expect: int) -> str:
    return f"{_show(key)} changed: expected mod_revision {expect}, the object is not at it"


def _show(key: bytes) -> str:
    return key.decode("utf-8", errors="backslashreplace")
