"""Sealing processes for :class:`~kinko.cluster.migrate.Migrator` (``workers=N``).

Job: open each stale value and seal it again on other CPU cores, while the migrator's own
thread keeps reading pages and committing txns. :class:`SealerPool` starts and stops the
processes; :func:`seal_chunk` is the per-object work, the same in a worker and on the
migrator's thread.

Invariants:

- **Nothing secret crosses a process boundary.** A worker builds its own
  :class:`~kinko.cluster.encryption.EncryptionConfigSource` from the configuration file's
  path, so it has its own chains and its own KMS v2 sessions, which dial the plugin sockets
  themselves. A request carries storage keys and stored (encrypted) values; an answer
  carries sealed values, the markers :data:`SKIPPED` / :data:`UNREADABLE`, the target the
  values were sealed under and, on failure, an error's class name and message.
- **Spawned, not forked.** Workers start by the ``spawn`` method: a fresh interpreter that
  inherits no socket, lock, thread or key of the parent, only its end of one pipe. A worker
  ignores SIGINT (the parent decides when it ends) and exits when its pipe closes, so a
  parent killed by SIGKILL leaves no worker behind for longer than the chunk it is sealing.
- **One request per worker in flight.** The parent sends a worker a chunk only once it has
  read the worker's previous answer, so neither side can block the other on a full pipe.
- **A failing worker costs speed, never correctness.** A worker that does not start, dies,
  answers late or answers something unexpected is dropped (stopped, with a warning) and the
  migrator seals its chunk on its own thread. Errors of the work itself (a PluginError from a
  KMS v2 seal, InvalidArgument when the first provider cannot write) come back by class name
  and message and are raised as the same class of :mod:`kinko.errors` (a class with its own
  constructor arguments, such as ConfigError, as its nearest plain ancestor).
- **The target travels with every answer.** A worker computes its target (the config hash,
  plus the KMS v2 key_id hash) before and after sealing a chunk; when it differs from the
  target the parent asked for, the worker reloads its file and probes its KMS plugin once and
  tries again, and otherwise answers with no values, so the parent seals the chunk itself.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Final

from kinko import errors
from kinko.cluster.encryption import EncryptionConfigSource
from kinko.crypto.chain import ProviderChain
from kinko.crypto.formats import KmsV2
from kinko.errors import DecryptionError, KinkoError, PluginError
from kinko.kms.envelope import key_id_hash

__all__ = [
    "SKIPPED",
    "UNREADABLE",
    "Outcome",
    "Sealed",
    "SealerPool",
    "Ticket",
    "chain_with",
    "rebuild_error",
    "seal_chunk",
    "target_of",
]

log = logging.getLogger(__name__)

#: The value was current already: nothing to write.
SKIPPED: Final = 0
#: No provider opened the value, or it opened to no object: left as it is.
UNREADABLE: Final = 1
#: Per object: the sealed value to Put, or :data:`SKIPPED` / :data:`UNREADABLE`.
Outcome = bytes | int
#: Seconds a worker may take to start (import, read the file) before it is dropped.
START_TIMEOUT: Final = 120.0
#: Seconds a worker may take to answer one chunk. Its KMS calls have their own timeouts, so
#: this bounds only a worker that hangs for another reason.
ANSWER_TIMEOUT: Final = 300.0
#: Seconds to wait for the workers to exit after their pipes closed, before SIGTERM.
STOP_GRACE: Final = 5.0

#: An error as it crosses the pipe: class name, message, reason code.
_ErrorNote = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Sealed:
    """The outcome of one chunk: one :data:`Outcome` per object up to ``error`` (if any).

    ``target`` is the target the values were sealed under ("" when unknown: seal it again).
    """

    target: str
    outcomes: list[Outcome] = field(repr=False)  # sealed values (plaintext under identity)
    error: KinkoError | None = None


def target_of(config_hash: str, chain: ProviderChain) -> str:
    """What "current" means for ``chain``: ``config_hash``, plus the KMS v2 key_id hash when
    the first provider is KMS v2 (no key_id yet: ``none``). Raises nothing."""
    first = chain.first
    if isinstance(first, KmsV2):
        key_id = first.keys.current_key_id()
        shown = key_id_hash(key_id) if key_id is not None else "none"
        return f"{config_hash} kms:{first.name} key_id:{shown}"
    return config_hash


def chain_with(chain: ProviderChain, *, read_unprefixed: bool) -> ProviderChain:
    """``chain``, reading values without a ``k8s:enc:`` prefix as identity when asked."""
    if read_unprefixed and not chain.read_unprefixed_as_identity:
        return ProviderChain(chain.transformers, read_unprefixed_as_identity=True)
    return chain


def seal_chunk(
    chain: ProviderChain,
    keys: Sequence[bytes],
    values: Sequence[bytes],
    is_object: Callable[[bytes], bool],
) -> tuple[list[Outcome], KinkoError | None]:
    """Open every value (AAD = its key) and seal each stale one that opens to an object.

    Returns the outcomes in order and, if a KinkoError other than a DecryptionError stopped
    the chunk, that error (the outcomes then end with the object before it). Raises nothing
    of its own.
    """
    open_ = chain.open
    seal = chain.seal
    outcomes: list[Outcome] = []
    append = outcomes.append
    for key, value in zip(keys, values, strict=True):
        try:
            opened = open_(value, aad=key)
            if opened.stale:
                plaintext = opened.plaintext
                if not is_object(plaintext):
                    raise DecryptionError()
                append(seal(plaintext, aad=key))
            else:
                append(SKIPPED)
        except DecryptionError:
            append(UNREADABLE)
        except KinkoError as exc:
            return outcomes, exc
    return outcomes, None


# --------------------------------------------------------------------------- the worker


def _note(exc: KinkoError) -> _ErrorNote:
    return (type(exc).__name__, str(exc), exc.reason_code)


def rebuild_error(note: _ErrorNote) -> KinkoError:
    """The error a worker reported, as the same class of :mod:`kinko.errors` (or its nearest
    ancestor whose constructor takes just a message). Raises nothing."""
    name, message, reason_code = note
    cls = getattr(errors, name, None)
    if not isinstance(cls, type) or not issubclass(cls, KinkoError):
        cls = KinkoError
    for candidate in cls.__mro__:
        if issubclass(candidate, KinkoError) and candidate.__init__ is KinkoError.__init__:
            return candidate(message, reason_code=reason_code)
    return KinkoError(message, reason_code=reason_code)  # pragma: no cover - KinkoError itself


def _serve(
    conn: Connection,
    config_path: str,
    is_object: Callable[[bytes], bool],
    read_unprefixed: bool,
) -> None:
    """A worker's life: build the source, say ready, answer chunks until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        source = EncryptionConfigSource(Path(config_path))
    except KinkoError as exc:
        with contextlib.suppress(OSError):
            conn.send(("failed", _note(exc)))
        return
    try:
        conn.send(("ready", None))
        while True:
            request = conn.recv()
            if request is None:
                return
            seq, resource, expected, keys, values = request
            conn.send(
                (
                    seq,
                    *_answer(source, resource, expected, keys, values, is_object, read_unprefixed),
                )
            )
    except (EOFError, OSError):
        return  # the parent closed the pipe or is gone
    finally:
        source.close()


def _answer(
    source: EncryptionConfigSource,
    resource: str,
    expected: str,
    keys: list[bytes],
    values: list[bytes],
    is_object: Callable[[bytes], bool],
    read_unprefixed: bool,
) -> tuple[str, list[Outcome], _ErrorNote | None]:
    try:
        chain = chain_with(source.chain_for(resource), read_unprefixed=read_unprefixed)
        target = target_of(source.config_hash, chain)
        if target != expected:
            # The parent saw a newer file or key_id first: catch up once, then compare again.
            source.reload_if_changed()
            chain = chain_with(source.chain_for(resource), read_unprefixed=read_unprefixed)
            first = chain.first
            if isinstance(first, KmsV2):
                session = source.kms_v2_session(first.name)
                if session is not None:
                    with contextlib.suppress(PluginError):
                        session.check()
            target = target_of(source.config_hash, chain)
            if target != expected:
                return target, [], None
        outcomes, error = seal_chunk(chain, keys, values, is_object)
        if target_of(source.config_hash, chain) != target:
            return "", [], None  # the key_id moved while sealing: the parent redoes it
    except KinkoError:
        return "", [], None  # no chain here; the parent's own chain decides
    return target, outcomes, _note(error) if error is not None else None


# --------------------------------------------------------------------------- the pool


@dataclass(slots=True)
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    index: int
    started: float
    ready: bool = False
    busy: int | None = None  # the seq of the request in flight
    dead: bool = False


@dataclass(frozen=True, slots=True)
class Ticket:
    """A chunk sent to a worker; :meth:`SealerPool.collect` returns its answer."""

    worker: int
    seq: int


class SealerPool:
    """``count`` spawned worker processes sealing chunks for one migration run.

    ``config_path``: the EncryptionConfiguration file the parent's source reads. ``is_object``
    and ``read_unprefixed``: as the Migrator's (``is_object`` must pickle). ``clock``:
    monotonic seconds (start and answer deadlines). Not thread-safe: one migrator thread
    uses it. :meth:`close` stops every process; use the pool as a context manager.

    Raises nothing at construction: a process that cannot be started is logged and left out
    (:attr:`size` says how many there are).
    """

    def __init__(
        self,
        count: int,
        config_path: Path,
        *,
        is_object: Callable[[bytes], bool],
        read_unprefixed: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._workers: list[_Worker] = []
        self._seq = 0
        self.sealed_by_workers = 0
        context = multiprocessing.get_context("spawn")
        try:
            for index in range(count):
                parent, child = context.Pipe(duplex=True)
                process = context.Process(
                    target=_serve,
                    args=(child, str(config_path), is_object, read_unprefixed),
                    name=f"kinko-migrate-sealer-{index}",
                    daemon=True,
                )
                try:
                    process.start()
                except OSError as exc:
                    log.warning("migration sealer %d not started: %s", index, exc)
                    parent.close()
                    continue
                finally:
                    child.close()
                self._workers.append(_Worker(process, parent, len(self._workers), clock()))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SealerPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        """Workers not dropped (started or still starting)."""
        return sum(1 for w in self._workers if not w.dead)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> int:
        """Wait until every worker is ready or dropped; returns how many are ready."""
        deadline = self._clock() + timeout
        for worker in self._workers:
            while not worker.dead and not worker.ready:
                left = deadline - self._clock()
                if left <= 0 or not worker.conn.poll(min(left, 0.5)):
                    if self._clock() >= deadline:
                        self._drop(worker, f"not ready within {timeout:.0f}s")
                    continue
                self._hello(worker)
        return sum(1 for w in self._workers if w.ready and not w.dead)

    def idle(self) -> int | None:
        """The index of a ready worker with nothing in flight, for :meth:`submit`; None when
        there is none (workers still starting count as busy). Raises nothing."""
        for worker in self._workers:
            if worker.dead or worker.busy is not None:
                continue
            if not worker.ready:
                if worker.conn.poll(0):
                    self._hello(worker)
                elif self._clock() - worker.started > START_TIMEOUT:
                    self._drop(worker, f"not ready within {START_TIMEOUT:.0f}s")
                if not worker.ready or worker.dead:
                    continue
            return worker.index
        return None

    def submit(
        self, index: int, resource: str, target: str, keys: list[bytes], values: list[bytes]
    ) -> Ticket | None:
        """Send a chunk to worker ``index`` (from :meth:`idle`); None if that failed."""
        worker = self._workers[index]
        self._seq += 1
        try:
            worker.conn.send((self._seq, resource, target, keys, values))
        except (OSError, ValueError) as exc:
            self._drop(worker, f"cannot send: {exc}")
            return None
        worker.busy = self._seq
        return Ticket(worker.index, self._seq)

    def collect(self, ticket: Ticket) -> Sealed | None:
        """The answer to ``ticket``; None when the worker failed (it is dropped: seal the
        chunk elsewhere). Raises nothing."""
        worker = self._workers[ticket.worker]
        if worker.dead or worker.busy != ticket.seq:
            return None
        try:
            if not worker.conn.poll(ANSWER_TIMEOUT):
                self._drop(worker, f"no answer within {ANSWER_TIMEOUT:.0f}s")
                return None
            answer = worker.conn.recv()
        except (EOFError, OSError) as exc:
            self._drop(worker, f"it exited ({type(exc).__name__})")
            return None
        worker.busy = None
        try:
            seq, target, outcomes, note = answer
            if seq != ticket.seq or not isinstance(target, str):
                raise ValueError(seq)
        except (TypeError, ValueError):
            self._drop(worker, "it answered out of turn")
            return None
        self.sealed_by_workers += len(outcomes)
        return Sealed(target, outcomes, rebuild_error(note) if note is not None else None)

    def close(self) -> None:
        """Stop every worker: close its pipe, wait up to 5 s, then SIGTERM, then SIGKILL.
        Raises nothing; idempotent."""
        workers, self._workers = self._workers, []
        # A closed pipe ends a worker: an idle one reads EOF, a busy one fails to answer.
        for worker in workers:
            worker.conn.close()
        deadline = self._clock() + STOP_GRACE
        for worker in workers:
            worker.process.join(max(0.0, deadline - self._clock()))
        for worker in workers:
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(1.0)
            if worker.process.is_alive():  # pragma: no cover - SIGTERM is not ignored
                worker.process.kill()
                worker.process.join()
            worker.process.close()

    def _hello(self, worker: _Worker) -> None:
        try:
            kind, note = worker.conn.recv()
        except (EOFError, OSError, TypeError, ValueError):
            self._drop(worker, "it exited while starting")
            return
        if kind == "ready":
            worker.ready = True
        else:
            self._drop(worker, f"{note[0]}: {note[1]}" if note else "it failed to start")

    def _drop(self, worker: _Worker, why: str) -> None:
        log.warning(
            "migration sealer %d dropped (%s); its chunks are sealed by the migrator",
            worker.index,
            why,
        )
        worker.dead = True
        worker.busy = None
        worker.conn.close()
        if worker.process.is_alive():
            worker.process.terminate()
