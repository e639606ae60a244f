"""Online, crash-safe migration of stored cluster objects to the current encryption.

Job: :class:`Migrator` walks every stored object of one resource (``/registry/<resource>/``)
and rewrites each *stale* value — one the provider chain opens but would not write now:
another provider or key than the first, a KMS v2 key_id other than the current one — by
sealing its plaintext with the current chain (AAD = the storage key) and a compare-and-swap
Put on the ``mod_revision`` it was read at.

Invariants:

- **A concurrent write wins.** Every rewrite is guarded on the revision it was read at. A
  value written in between (already sealed by the current chain) makes that op's guard fail;
  the op is dropped, counted in ``conflicts``, and the rest of its batch is sent again
  (ADR 4's losers-dropped txns).
- **The checkpoint moves with the data.** Each batch of at most ``batch`` rewrites is one
  txn together with the state record ``/kinko/migration/<resource>`` (JSON: target, last key
  done, counts, times, state). So the record never claims a rewrite that was not applied,
  and a process killed at any instant resumes right after the last committed batch. A redo
  would be harmless anyway: staleness is checked again on every read.
- **One migrator per resource.** The record's Put is guarded on the record's own
  ``mod_revision``; a migrator whose record was moved by another one stops with Conflict
  ("another migration of secrets is running") and writes nothing more. A newly started
  run takes the record over from wherever the last one left it, so after a crash nothing
  needs unlocking.
- **A new target starts over.** The target is the EncryptionConfiguration's hash plus, when
  the first provider is KMS v2, the hash of its current key_id. When it changes (root key
  rotated, a new configuration) the run goes back to the first key under the new target:
  values rewritten under the old one are stale again. However often it changes, a run ends
  only after one whole pass under one unchanged target.
- **Nothing unreadable is touched.** A value no provider opens, or one that opens to no
  object (:func:`looks_like_object`: aescbc under a wrong key), is counted in
  ``unreadable`` and left as it is. An *unavailable* environment (a KMS plugin, the store,
  a key service) pauses the run: what was sealed before the failing object is committed,
  the record says ``paused`` with the error's message (which names the plugin or store,
  never data) and the error is raised for a supervisor to retry with backoff.
- **Memory is bounded.** The walk reads the current state in pages of ``page`` entries,
  each continuing after the last key of the one before, and holds at most two pages (while
  the next is read) and one batch of sealed values, whatever the number of objects. It
  reads no snapshot revision: that would pin the store's history for the whole walk, and the
  guards make a snapshot unnecessary.
- Messages and records name resources, storage keys, counts, config hashes and key_id
  hashes; never plaintext, ciphertext or key bytes.

Objects written after the walk passed them are written by the writers' own chains; a writer
still on an older configuration can leave a stale value behind the cursor, which the
coverage report counts and the next run rewrites.

Speed: per object one ``open``, one ``seal`` and one ``Put``, nothing else; the chain and
the target are looked up once per page and once per txn. By default everything runs on the
caller's thread: a writer thread that committed batch *k* while batch *k + 1* was sealed was
measured slower on SQLite and etcd alike (ADR 9). With ``workers=N`` the open and seal run in
N spawned processes (:mod:`kinko.cluster.migrate_workers`), chunk by chunk, while the caller's
thread reads pages and commits: the chunk after the one being committed is sealed meanwhile.
The walk, the batches, the checkpoint, the target checks, the pauses and the conflicts are
the same code as without workers; a chunk a worker sealed under a target other than the
run's, or that a failing worker did not answer, is sealed again on the caller's thread.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import pickle
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal, Protocol

from kinko.cluster.migrate_workers import (
    SKIPPED,
    Sealed,
    SealerPool,
    Ticket,
    chain_with,
    seal_chunk,
    target_of,
)
from kinko.crypto.chain import ProviderChain
from kinko.errors import (
    Conflict,
    CorruptMetadata,
    DecryptionError,
    InvalidArgument,
    KinkoError,
    UnavailableError,
)
from kinko.store.port import MAX_TXN_OPS, Delete, Entry, Put, Store

__all__ = [
    "CHECKPOINT_PREFIX",
    "DEFAULT_RESOURCES",
    "MigrationReport",
    "MigrationState",
    "Migrator",
    "Progress",
    "TargetSource",
    "looks_like_object",
]

log = logging.getLogger(__name__)

#: Where the state records live: ``/kinko/migration/<resource>``.
CHECKPOINT_PREFIX: Final = b"/kinko/migration/"
DEFAULT_RESOURCES: Final = ("secrets", "configmaps")
#: Rewrites per txn: etcd's limit minus the checkpoint's Put.
DEFAULT_BATCH: Final = MAX_TXN_OPS - 1
#: Entries read per page: four full batches.
DEFAULT_PAGE: Final = 4 * DEFAULT_BATCH
#: Longest reason kept in a record.
_REASON_MAX = 500
#: Storage keys of unreadable values a report names.
_SAMPLE = 20
_RECORD_VERSION = 1
#: Most sealing processes one Migrator may start.
_MAX_WORKERS = 32
#: kube-apiserver's protobuf storage envelope starts with these four bytes.
_PROTOBUF_MAGIC: Final = b"k8s\x00"

StateName = Literal["running", "paused", "done"]
_STATES: Final = ("running", "paused", "done")

#: Called after each committed batch (and each dry-run page) with
#: (objects done, total or None when not counted, objects rewritten).
Progress = Callable[[int, int | None, int], None]


class TargetSource(Protocol):
    """What the migrator needs of the configuration: :class:`~kinko.cluster.encryption.
    EncryptionConfigSource`."""

    @property
    def config_hash(self) -> str: ...

    def chain_for(self, resource: str) -> ProviderChain: ...


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class MigrationState:
    """The state record of one resource's migration, as stored (JSON) in the store.

    ``last_key``: every object at or before this storage key was handled under ``target``
    (b"" = nothing yet). ``done`` counts the objects handled in this pass, split into
    ``rewritten``, ``skipped`` (already current), ``conflicts`` (a concurrent write won) and
    ``unreadable``. ``restarts``: how often the target changed before this pass finished.
    Times are wall-clock seconds. ``revision`` is the record's ``mod_revision`` (not stored).
    """

    resource: str
    target: str
    state: StateName
    reason: str | None
    last_key: bytes
    done: int
    rewritten: int
    skipped: int
    conflicts: int
    unreadable: int
    total: int | None
    restarts: int
    started_at: float
    updated_at: float
    run_id: str
    revision: int = 0

    def to_json(self) -> bytes:
        """The stored form. Raises nothing."""
        return json.dumps(
            {
                "version": _RECORD_VERSION,
                "resource": self.resource,
                "target": self.target,
                "state": self.state,
                "reason": self.reason,
                "last_key": base64.b64encode(self.last_key).decode("ascii"),
                "done": self.done,
                "rewritten": self.rewritten,
                "skipped": self.skipped,
                "conflicts": self.conflicts,
                "unreadable": self.unreadable,
                "total": self.total,
                "restarts": self.restarts,
                "started_at": self.started_at,
                "updated_at": self.updated_at,
                "run_id": self.run_id,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_entry(cls, entry: Entry) -> MigrationState:
        """Parse a stored record. Raises CorruptMetadata (not a record of this version)."""
        where = entry.key.decode("utf-8", errors="backslashreplace")
        try:
            data = json.loads(entry.value)
        except (UnicodeDecodeError, ValueError):
            raise CorruptMetadata(f"migration record {where}: expected JSON") from None
        if not isinstance(data, dict) or data.get("version") != _RECORD_VERSION:
            raise CorruptMetadata(f"migration record {where}: expected version {_RECORD_VERSION}")
        try:
            state = data["state"]
            if state not in _STATES:
                raise CorruptMetadata(
                    f"migration record {where}: expected state running, paused or done, "
                    f"got {str(state)[:32]!r}"
                )
            reason = data["reason"]
            total = data["total"]
            record = cls(
                resource=_text(data, "resource", where),
                target=_text(data, "target", where),
                state=state,
                reason=reason if isinstance(reason, str) else None,
                last_key=base64.b64decode(_text(data, "last_key", where), validate=True),
                done=_count(data, "done", where),
                rewritten=_count(data, "rewritten", where),
                skipped=_count(data, "skipped", where),
                conflicts=_count(data, "conflicts", where),
                unreadable=_count(data, "unreadable", where),
                total=total if isinstance(total, int) and total >= 0 else None,
                restarts=_count(data, "restarts", where),
                started_at=_seconds(data, "started_at", where),
                updated_at=_seconds(data, "updated_at", where),
                run_id=_text(data, "run_id", where),
                revision=entry.mod_revision,
            )
        except KeyError as exc:
            raise CorruptMetadata(f"migration record {where}: missing field {exc}") from None
        except binascii.Error:
            raise CorruptMetadata(f"migration record {where}: last_key is not base64") from None
        return record


def _text(data: dict[str, object], name: str, where: str) -> str:
    value = data[name]
    if not isinstance(value, str):
        raise CorruptMetadata(f"migration record {where}: field {name}: expected a string")
    return value


def _seconds(data: dict[str, object], name: str, where: str) -> float:
    value = data[name]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise CorruptMetadata(f"migration record {where}: field {name}: expected a number")
    return float(value)


def _count(data: dict[str, object], name: str, where: str) -> int:
    value = data[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CorruptMetadata(f"migration record {where}: field {name}: expected a count")
    return value


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What one :meth:`Migrator.run` did over the whole pass that it finished.

    Counts cover the pass under ``target`` (including what earlier, interrupted runs of the
    same pass committed, when ``resumed``). With ``dry_run`` nothing was written and
    ``rewritten`` counts what would have been. ``seconds`` is this run's own duration;
    ``unreadable_keys`` names up to 20 unreadable values this run came across.
    """

    resource: str
    target: str
    dry_run: bool
    resumed: bool
    done: int
    rewritten: int
    skipped: int
    conflicts: int
    unreadable: int
    restarts: int
    seconds: float
    unreadable_keys: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------- the engine


class _TargetChanged(Exception):
    """The target moved while a pass was running (internal control flow)."""


class Migrator:
    """Migrates stored objects of ``resources`` to the chain ``source`` writes now.

    ``store``: the Store the objects and records live in. ``batch``: rewrites per txn (1 to
    :data:`~kinko.store.port.MAX_TXN_OPS` - 1; the checkpoint takes the last op). ``page``:
    entries read per page (bounds memory). ``rate_limit``: objects per second, or None.
    ``count_keys``: counts the keys under a prefix without reading values (e.g.
    ``EtcdClient.count_prefix``), used for the progress total; without it the total comes
    from a counting pass over the store's pages, which reads every value once (the Store port
    has no keys-only read), and only when a progress callback is given.
    ``read_unprefixed``: also rewrite values stored without any ``k8s:enc:`` prefix when no
    ``identity`` provider is configured (see ADR 5; off as in kube-apiserver).
    ``is_object``: whether an opened stale plaintext is a stored object, checked before it
    is sealed again (default :func:`looks_like_object`); one that is not counts as unreadable
    and is left as it is.
    ``clock`` (monotonic) paces the rate limit and times runs; ``wall_clock`` stamps records;
    ``sleep`` waits for the rate limit.
    ``workers``: processes that open and seal while this thread reads and commits (0: none,
    everything on the caller's thread). They need ``source`` to be read from a file (its
    ``path``, as :class:`~kinko.cluster.encryption.EncryptionConfigSource`): each builds its
    own source from that file, dialling the KMS plugins itself. They start when a run's walk
    reaches its second page (a resource of one page never starts any), and the walk seals on
    its own thread until they are ready, unless ``await_workers``: then they start with the
    first page and the walk waits for them (for tests and measurements of the workers alone).
    They stop when the run ends, however it ends. A worker that fails is dropped and its work
    done on the caller's thread; errors of the work itself are raised as without workers.

    Raises InvalidArgument at construction: a batch, page, rate or worker count out of range;
    workers with a source that has no file or an ``is_object`` that cannot be pickled.
    """

    def __init__(
        self,
        store: Store,
        source: TargetSource,
        *,
        resources: Sequence[str] = DEFAULT_RESOURCES,
        batch: int = DEFAULT_BATCH,
        page: int = DEFAULT_PAGE,
        rate_limit: float | None = None,
        count_keys: Callable[[bytes], int] | None = None,
        read_unprefixed: bool = False,
        is_object: Callable[[bytes], bool] | None = None,
        key_prefix: bytes = b"/registry/",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        workers: int = 0,
        await_workers: bool = False,
    ) -> None:
        if not 1 <= batch <= MAX_TXN_OPS - 1:
            raise InvalidArgument(f"batch: expected 1 to {MAX_TXN_OPS - 1} rewrites, got {batch}")
        if page < 1:
            raise InvalidArgument(f"page: expected at least 1 entry, got {page}")
        if rate_limit is not None and not rate_limit > 0:
            raise InvalidArgument(f"rate_limit: expected positive objects/s, got {rate_limit}")
        if not 0 <= workers <= _MAX_WORKERS:
            raise InvalidArgument(f"workers: expected 0 to {_MAX_WORKERS} processes, got {workers}")
        config_path = getattr(source, "path", None)
        if workers and not isinstance(config_path, Path):
            raise InvalidArgument(
                "workers: expected a source read from an EncryptionConfiguration file "
                f"(with a path), got {type(source).__name__}"
            )
        if workers:
            try:
                pickle.dumps(is_object or looks_like_object)
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                raise InvalidArgument(
                    "is_object: expected a module-level function with workers "
                    "(it is sent to each worker process)"
                ) from exc
        for resource in resources:
            _check_resource(resource)
        self._workers = workers
        self._await_workers = await_workers
        self._config_path = config_path if isinstance(config_path, Path) else None
        self._store = store
        self._source = source
        self._resources = tuple(resources)
        self._batch = batch
        self._page = page if rate_limit is None else max(1, min(page, int(rate_limit)))
        self._rate = rate_limit
        self._count_keys = count_keys
        self._read_unprefixed = read_unprefixed
        self._is_object = is_object or looks_like_object
        self._key_prefix = key_prefix
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep

    @property
    def resources(self) -> tuple[str, ...]:
        return self._resources

    @property
    def page(self) -> int:
        """Entries read per page; the walk holds at most two pages and one batch of values."""
        return self._page

    def prefix(self, resource: str) -> bytes:
        """The key prefix walked for ``resource``. Raises InvalidArgument (a bad name)."""
        _check_resource(resource)
        return self._key_prefix + resource.encode() + b"/"

    # -- reading -----------------------------------------------------------------------

    def target(self, resource: str) -> str:
        """What "current" means for ``resource`` now: the config hash, plus the KMS v2 key_id
        hash when the first provider is KMS v2 (no key_id yet: ``none``).

        Raises what ``chain_for`` raises (PluginError from a KMS connector).
        """
        chain = self._source.chain_for(resource)
        return self._target_of(chain)

    def _target_of(self, chain: ProviderChain) -> str:
        return target_of(self._source.config_hash, chain)

    def state(self, resource: str) -> MigrationState | None:
        """The stored state record of ``resource``, or None if it never ran (or was reset).

        Raises CorruptMetadata (an unreadable record), InvalidArgument, StoreUnavailable.
        """
        entry = self._store.get(_record_key(resource))
        return MigrationState.from_entry(entry) if entry is not None else None

    def reset(self, resource: str) -> bool:
        """Delete the state record, so the next run starts from the first key.

        Returns False when there was none. Raises Conflict (the record changed meanwhile: a
        migration is running), InvalidArgument, StoreUnavailable.
        """
        key = _record_key(resource)
        entry = self._store.get(key)
        if entry is None:
            return False
        if not self._store.txn([Delete(key, expect=entry.mod_revision)]).succeeded:
            raise Conflict(_another(resource))
        return True

    # -- running -----------------------------------------------------------------------

    def run_all(
        self,
        *,
        dry_run: bool = False,
        progress: Callable[[str, int, int | None, int], None] | None = None,
    ) -> list[MigrationReport]:
        """:meth:`run` for every configured resource in turn. Raises as :meth:`run`."""
        reports = []
        for resource in self._resources:
            each: Progress | None = None
            if progress is not None:
                each = _bind(progress, resource)
            reports.append(self.run(resource, dry_run=dry_run, progress=each))
        return reports

    def run(
        self, resource: str, *, dry_run: bool = False, progress: Progress | None = None
    ) -> MigrationReport:
        """Migrate ``resource`` until one whole pass under an unchanged target is done.

        Resumes after the record's ``last_key`` when the record is running or paused under
        the current target; starts from the first key otherwise (also after ``done``: a new
        run checks again). With ``dry_run`` it walks from the first key, counts what would
        be rewritten and writes nothing (no record either).

        Raises Conflict (another migration of this resource moved the record; nothing more
        was written), PluginError / StoreUnavailable / KeyServiceUnavailable or any other
        UnavailableError (the record now says ``paused`` with the reason when the store
        allowed writing it; retry later), InvalidArgument (a resource name that cannot be a
        key segment; the first provider cannot write, e.g. KMS v1 — recorded as paused too),
        CorruptMetadata (the record cannot be read; :meth:`reset` it).
        """
        prefix = self.prefix(resource)
        if dry_run:
            return self._dry_run(resource, prefix, progress)
        return _Run(self, resource, prefix, progress).execute()

    def _dry_run(self, resource: str, prefix: bytes, progress: Progress | None) -> MigrationReport:
        started = self._clock()
        chain = self._chain(resource)
        target = self._target_of(chain)
        total = self._count(prefix) if progress is not None else None
        done = stale = current = unreadable = 0
        sample: list[str] = []
        is_object = self._is_object
        for page in self._pages(prefix, b""):
            chain = self._chain(resource)
            open_ = chain.open
            for entry in page:
                key = entry.key
                try:
                    opened = open_(entry.value, aad=key)
                    if opened.stale and not is_object(opened.plaintext):
                        raise DecryptionError()
                except DecryptionError:
                    unreadable += 1
                    if len(sample) < _SAMPLE:
                        sample.append(_show(key))
                    continue
                if opened.stale:
                    stale += 1
                else:
                    current += 1
            done += len(page)
            self._throttle(done, started)
            if progress is not None:
                progress(done, total, stale)
        return MigrationReport(
            resource=resource,
            target=target,
            dry_run=True,
            resumed=False,
            done=done,
            rewritten=stale,
            skipped=current,
            conflicts=0,
            unreadable=unreadable,
            restarts=0,
            seconds=self._clock() - started,
            unreadable_keys=tuple(sample),
        )

    # -- helpers shared with _Run ------------------------------------------------------

    def _chain(self, resource: str) -> ProviderChain:
        return chain_with(self._source.chain_for(resource), read_unprefixed=self._read_unprefixed)

    def _pages(self, prefix: bytes, after: bytes) -> Iterator[tuple[Entry, ...]]:
        """Pages of the current state after ``after``; each page is read when asked for."""
        while True:
            page = self._store.range(prefix, start_after=after, limit=self._page)
            if page.entries:
                yield page.entries
            if not page.more or not page.entries:
                return
            after = page.entries[-1].key

    def _count(self, prefix: bytes) -> int:
        if self._count_keys is not None:
            return self._count_keys(prefix)
        return sum(len(entries) for entries in self._pages(prefix, b""))

    def _throttle(self, done: int, started: float) -> None:
        if self._rate is None:
            return
        ahead = done / self._rate - (self._clock() - started)
        if ahead > 0:
            self._sleep(ahead)


class _Run:
    """One non-dry :meth:`Migrator.run`: the pass being walked and the record as committed."""

    def __init__(
        self, owner: Migrator, resource: str, prefix: bytes, progress: Progress | None
    ) -> None:
        self._m = owner
        self._store = owner._store
        self._resource = resource
        self._prefix = prefix
        self._record_key = _record_key(resource)
        self._progress = progress
        self._run_id = uuid.uuid4().hex
        self._started = owner._clock()
        self._processed = 0  # objects handled by this run, for the rate limit
        self._sample: list[str] = []
        self._resumed = False
        self._record: MigrationState | None = None  # as last committed by this run
        self._pool: SealerPool | None = None  # started by the pooled walk, stopped by execute
        self._pool_started = False
        self._sealed_here = 0  # objects sealed on this thread while a pool ran

    def execute(self) -> MigrationReport:
        walk = self._walk_pooled if self._m._workers else self._walk
        try:
            record = self._begin()
            while True:
                try:
                    record = walk(record)
                except _TargetChanged:
                    record = self._restart()
                    continue
                break
        except Conflict:
            raise
        except KinkoError as exc:
            self._pause(exc)
            raise
        finally:
            if self._pool is not None:
                self._log_pool()
                self._pool.close()
        return MigrationReport(
            resource=self._resource,
            target=record.target,
            dry_run=False,
            resumed=self._resumed,
            done=record.done,
            rewritten=record.rewritten,
            skipped=record.skipped,
            conflicts=record.conflicts,
            unreadable=record.unreadable,
            restarts=record.restarts,
            seconds=self._m._clock() - self._started,
            unreadable_keys=tuple(self._sample),
        )

    def _begin(self) -> MigrationState:
        """Read the record, decide resume or restart, and claim it (running, this run_id)."""
        m = self._m
        entry = self._store.get(self._record_key)
        previous = MigrationState.from_entry(entry) if entry is not None else None
        target = m.target(self._resource)
        now = m._wall_clock()
        if previous is not None and previous.target == target and previous.state != "done":
            self._resumed = True
            record = replace(previous, state="running", reason=None, run_id=self._run_id)
            if record.total is None and self._progress is not None:
                record = replace(record, total=m._count(self._prefix))
        else:
            restarts = 0
            if previous is not None and previous.state != "done":
                restarts = previous.restarts + 1
            record = self._fresh(target, restarts, now)
        record = self._put_record(
            replace(record, updated_at=now), expect=entry.mod_revision if entry else 0
        )
        log.info(
            "migration of %s %s under %s",
            self._resource,
            f"resumed after {_show(record.last_key)}" if self._resumed else "started",
            target,
        )
        return record

    def _fresh(self, target: str, restarts: int, now: float) -> MigrationState:
        total = self._m._count(self._prefix) if self._progress is not None else None
        return MigrationState(
            resource=self._resource,
            target=target,
            state="running",
            reason=None,
            last_key=b"",
            done=0,
            rewritten=0,
            skipped=0,
            conflicts=0,
            unreadable=0,
            total=total,
            restarts=restarts,
            started_at=now,
            updated_at=now,
            run_id=self._run_id,
        )

    def _restart(self) -> MigrationState:
        """The target moved: record a fresh pass under the new one, from the first key."""
        old = self._committed()
        target = self._m.target(self._resource)
        log.info(
            "migration of %s: target changed from %s to %s; starting over",
            self._resource,
            old.target,
            target,
        )
        record = self._fresh(target, old.restarts + 1, self._m._wall_clock())
        return self._put_record(record, expect=old.revision)

    def _walk(self, record: MigrationState) -> MigrationState:
        """One pass from ``record.last_key`` to the end; returns the ``done`` record.

        Raises _TargetChanged when the target moves (nothing sealed since is committed).
        """
        m = self._m
        batch_size = m._batch
        is_object = m._is_object
        target = record.target
        ops: list[Put] = []
        done = skipped = unreadable = 0
        last = record.last_key
        for page in m._pages(self._prefix, last):
            chain = m._chain(self._resource)
            if m._target_of(chain) != target:
                raise _TargetChanged
            open_ = chain.open
            seal = chain.seal
            for entry in page:
                key = entry.key
                try:
                    opened = open_(entry.value, aad=key)
                    if opened.stale:
                        plaintext = opened.plaintext
                        if not is_object(plaintext):
                            raise DecryptionError()
                        ops.append(Put(key, seal(plaintext, aad=key), entry.mod_revision))
                    else:
                        skipped += 1
                except DecryptionError:
                    unreadable += 1
                    if len(self._sample) < _SAMPLE:
                        self._sample.append(_show(key))
                except KinkoError:
                    # Keep what was sealed before this object; the caller pauses on the error.
                    if done:
                        with contextlib.suppress(_TargetChanged):
                            self._commit(ops, last, done, skipped, unreadable, target)
                    raise
                done += 1
                last = key
                if len(ops) >= batch_size:
                    self._commit(ops, last, done, skipped, unreadable, target)
                    ops = []
                    done = skipped = unreadable = 0
            if done:
                self._commit(ops, last, done, skipped, unreadable, target)
                ops = []
                done = skipped = unreadable = 0
        return self._commit([], last, 0, 0, 0, target, final=True)

    def _walk_pooled(self, record: MigrationState) -> MigrationState:
        """:meth:`_walk` with the open and seal in worker processes (``Migrator(workers=N)``).

        The same pass: the same pages and target checks, the same batches of at most
        ``batch`` rewrites, a commit at every page end, the same pause on an error. Chunks of
        ``batch`` entries go to idle workers in order; each chunk's answer is applied in
        order, after the next chunk was sent, so that one is sealed while this one commits.
        A chunk no worker took, one whose worker failed, and one sealed under another target
        are sealed here. Raises _TargetChanged as :meth:`_walk`.
        """
        m = self._m
        batch_size = m._batch
        target = record.target
        chunks = self._chunks(record.last_key, target)
        queue: deque[_Chunk] = deque()
        ops: list[Put] = []
        done = skipped = unreadable = 0
        last = record.last_key
        more = True
        if m._await_workers and not self._pool_started:
            self._start_pool()
        while True:
            more = more and self._dispatch(queue, chunks, target)
            if not queue:
                chunk = next(chunks, None) if more else None
                if chunk is None:
                    break
                queue.append(chunk)  # no worker is free: this one is sealed here
            chunk = queue.popleft()
            sealed = self._sealed(chunk, target)
            # Before the txns below, so that a worker seals the next chunk meanwhile.
            more = more and self._dispatch(queue, chunks, target)
            for entry, outcome in zip(chunk.entries, sealed.outcomes, strict=False):
                key = entry.key
                if isinstance(outcome, bytes):
                    ops.append(Put(key, outcome, entry.mod_revision))
                elif outcome == SKIPPED:
                    skipped += 1
                else:
                    unreadable += 1
                    if len(self._sample) < _SAMPLE:
                        self._sample.append(_show(key))
                done += 1
                last = key
                if len(ops) >= batch_size:
                    self._commit(ops, last, done, skipped, unreadable, target)
                    ops = []
                    done = skipped = unreadable = 0
            if sealed.error is not None:
                # Keep what was sealed before this object; the caller pauses on the error.
                if done:
                    with contextlib.suppress(_TargetChanged):
                        self._commit(ops, last, done, skipped, unreadable, target)
                raise sealed.error
            if chunk.page_end and done:
                self._commit(ops, last, done, skipped, unreadable, target)
                ops = []
                done = skipped = unreadable = 0
        return self._commit([], last, 0, 0, 0, target, final=True)

    def _chunks(self, after: bytes, target: str) -> Iterator[_Chunk]:
        """The walk's entries after ``after`` in chunks of ``batch``; the target is checked
        as each page is read. Starts the workers (see Migrator) on the way."""
        m = self._m
        size = m._batch
        for number, page in enumerate(m._pages(self._prefix, after)):
            if m._target_of(m._chain(self._resource)) != target:
                raise _TargetChanged
            if number > 0 and not self._pool_started:
                self._start_pool()
            for start in range(0, len(page), size):
                yield _Chunk(page[start : start + size], page_end=start + size >= len(page))

    def _start_pool(self) -> None:
        m = self._m
        self._pool_started = True
        if m._config_path is None:  # pragma: no cover - checked at construction
            return
        self._pool = SealerPool(
            m._workers, m._config_path, is_object=m._is_object, read_unprefixed=m._read_unprefixed
        )
        if m._await_workers:
            self._pool.wait_ready()

    def _dispatch(self, queue: deque[_Chunk], chunks: Iterator[_Chunk], target: str) -> bool:
        """Send the next chunks to the idle workers; False once the walk has no more."""
        pool = self._pool
        if pool is None:
            return True
        while (index := pool.idle()) is not None:
            chunk = next(chunks, None)
            if chunk is None:
                return False
            keys = [entry.key for entry in chunk.entries]
            values = [entry.value for entry in chunk.entries]
            chunk.ticket = pool.submit(index, self._resource, target, keys, values)
            queue.append(chunk)
        return True

    def _sealed(self, chunk: _Chunk, target: str) -> Sealed:
        """The chunk's outcomes: its worker's answer under ``target``, or sealed here."""
        if chunk.ticket is not None and self._pool is not None:
            answer = self._pool.collect(chunk.ticket)
            if answer is not None and answer.target == target:
                return answer
        m = self._m
        entries = chunk.entries
        outcomes, error = seal_chunk(
            m._chain(self._resource),
            [entry.key for entry in entries],
            [entry.value for entry in entries],
            m._is_object,
        )
        if self._pool is not None:
            self._sealed_here += len(outcomes)
        return Sealed(target, outcomes, error)

    def _log_pool(self) -> None:
        pool = self._pool
        if pool is None:  # pragma: no cover - called with a pool only
            return
        log.info(
            "migration of %s: %d object(s) opened and sealed by %d worker process(es), %d by "
            "the migrator itself",
            self._resource,
            pool.sealed_by_workers,
            self._m._workers,
            self._sealed_here,
        )

    def _commit(
        self,
        ops: list[Put],
        last_key: bytes,
        done: int,
        skipped: int,
        unreadable: int,
        target: str,
        *,
        final: bool = False,
    ) -> MigrationState:
        """One txn: the guarded rewrites plus the record; losers are dropped and the rest
        sent again. Raises _TargetChanged (nothing written), Conflict, StoreUnavailable."""
        m = self._m
        if m._target_of(m._chain(self._resource)) != target:
            raise _TargetChanged
        self._processed += done
        m._throttle(self._processed, self._started)
        base = self._committed()
        conflicts = 0
        while True:
            record = replace(
                base,
                state="done" if final else "running",
                last_key=last_key,
                done=base.done + done,
                rewritten=base.rewritten + len(ops),
                skipped=base.skipped + skipped,
                conflicts=base.conflicts + conflicts,
                unreadable=base.unreadable + unreadable,
                updated_at=m._wall_clock(),
            )
            result = self._store.txn([*ops, Put(self._record_key, record.to_json(), base.revision)])
            if result.succeeded:
                break
            failed = set(result.failed)
            if len(ops) in failed:
                raise Conflict(_another(self._resource))
            conflicts += len(failed)
            ops = [op for index, op in enumerate(ops) if index not in failed]
        self._record = record = replace(record, revision=result.revision)
        if self._progress is not None:
            self._progress(record.done, record.total, record.rewritten)
        return record

    def _committed(self) -> MigrationState:
        if self._record is None:  # pragma: no cover - _begin always commits first
            raise AssertionError("no record committed yet")
        return self._record

    def _put_record(self, record: MigrationState, *, expect: int) -> MigrationState:
        result = self._store.txn([Put(self._record_key, record.to_json(), expect)])
        if not result.succeeded:
            raise Conflict(_another(self._resource))
        self._record = record = replace(record, revision=result.revision)
        return record

    def _pause(self, exc: KinkoError) -> None:
        """Mark the record paused with ``exc``'s message, if it is still this run's."""
        reason = f"{type(exc).__name__}: {exc}"[:_REASON_MAX]
        log.warning("migration of %s paused: %s", self._resource, reason)
        try:
            entry = self._store.get(self._record_key)
            if entry is None:
                return
            current = MigrationState.from_entry(entry)
            if current.run_id != self._run_id:
                return
            paused = replace(
                current, state="paused", reason=reason, updated_at=self._m._wall_clock()
            )
            self._store.txn([Put(self._record_key, paused.to_json(), entry.mod_revision)])
        except (UnavailableError, CorruptMetadata):
            # The store is what failed: the record keeps saying running, which a supervisor
            # treats the same way (retry later).
            return


@dataclass(slots=True)
class _Chunk:
    """Up to ``batch`` entries of one page, in walk order, and the worker sealing them."""

    entries: tuple[Entry, ...]
    page_end: bool
    ticket: Ticket | None = None


# --------------------------------------------------------------------------- helpers


def looks_like_object(plaintext: bytes) -> bool:
    """Whether ``plaintext`` can be a stored object: a JSON object in UTF-8 (kinko's and
    kube-apiserver's JSON storage) or Kubernetes' protobuf envelope (``k8s\\x00``).

    aescbc is unauthenticated: a value read with a wrong key of the same name passes the
    PKCS#7 padding check once in 256 tries and "opens" to noise, which fails this check
    with overwhelming odds. Sealing that noise again under an authenticated provider would
    destroy the only copy of a ciphertext that the right key could still open, so the
    migration leaves such a value alone and counts it as unreadable. Raises nothing.
    """
    # Stored JSON has no surrounding whitespace and is nearly always ASCII: that case costs
    # two slices and one scan, without the copy of strip() or the text of decode().
    if plaintext[:1] == b"{" and plaintext[-1:] == b"}":
        text = plaintext
    elif plaintext.startswith(_PROTOBUF_MAGIC):
        return True
    else:
        text = plaintext.strip()
        if text[:1] != b"{" or text[-1:] != b"}":
            return False
    if text.isascii():
        return True
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check_resource(resource: str) -> None:
    if not resource or "/" in resource or resource in (".", ".."):
        raise InvalidArgument(
            f"resource: expected a resource name such as secrets, got {resource!r}"
        )


def _record_key(resource: str) -> bytes:
    _check_resource(resource)
    return CHECKPOINT_PREFIX + resource.encode()


def _another(resource: str) -> str:
    return (
        f"another migration of {resource} is running (its state record changed under this "
        "one); this run stopped"
    )


def _bind(progress: Callable[[str, int, int | None, int], None], resource: str) -> Progress:
    def each(done: int, total: int | None, rewritten: int) -> None:
        progress(resource, done, total, rewritten)

    return each


def _show(key: bytes) -> str:
    return key.decode("utf-8", errors="backslashreplace")
