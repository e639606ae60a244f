"""A small synchronous etcd v3 client over kinko's own generated stubs.

It does what kinko's etcd tooling and :class:`~kinko.store.etcd_store.EtcdStore` need and
nothing more: point reads, consistent paginated prefix walks, single pages at a revision, plain
puts and deletes, batched compare-and-swap puts, raw txns, compaction, watch streams and member
status.

Invariants:

- **Reads fail over, writes never guess.** A read that meets ``UNAVAILABLE`` or a deadline
  is retried on the next endpoint. A write is sent only to an endpoint that answered within
  :data:`FRESH_S` seconds or answers a ``Status`` probe first (a failed probe proves nothing
  was sent, so the next endpoint is tried); if the write itself then fails, its outcome is
  unknown and :class:`~kinko.errors.StoreUnavailable` says so instead of retrying elsewhere
  (a retried plain put could overwrite a newer value).
- **A prefix walk is one snapshot.** Every page after the first is read at the revision of
  the first page, so a walk never sees half of a concurrent change. If that revision is
  compacted mid-walk the walk stops with :class:`~kinko.errors.Conflict`; run it again.
- **Pages shrink instead of failing.** The channel accepts responses up to
  :data:`MAX_RECEIVE_BYTES`; a page that is still too large is re-read with half the limit.
- **CAS never blocks on one loser.** :meth:`EtcdClient.cas_batch` sends at most
  :data:`MAX_TXN_OPS` compare-and-swap puts per txn (etcd's ``--max-txn-ops`` default) and
  about :data:`MAX_TXN_BYTES` of keys and values (under ``--max-request-bytes``).
  A txn is all-or-nothing, so its failure branch reads every key of the txn in the same
  atomic step; the keys whose ``mod_revision`` moved are reported lost (the concurrent
  writer wins) and the txn is re-sent with the others only. Each round drops at least one
  op, so a chunk of n ops takes at most n + 1 txns and usually two.
- **A watch is opened where it is answered.** :meth:`EtcdClient.watch` opens the stream on the
  first endpoint that answers (a dead one is skipped like a read), asks etcd to cancel it if
  that member loses its leader (``hasleader`` metadata), and returns only once etcd confirmed
  the watcher was created.
- Messages name endpoints, storage keys, sizes and gRPC codes; never values.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar
from urllib.parse import urlsplit

import grpc

from kinko.errors import Conflict, InvalidArgument, StoreUnavailable
from kinko.gen.etcdpb import kv_pb2, rpc_pb2, rpc_pb2_grpc

#: etcd's default ``--max-txn-ops``.
MAX_TXN_OPS = 128
#: Payload budget of one CAS txn; etcd's default ``--max-request-bytes`` is 1.5 MiB.
MAX_TXN_BYTES = 1024 * 1024
#: gRPC's default receive cap is 4 MiB, too small for a page of large values.
MAX_RECEIVE_BYTES = 64 * 1024 * 1024
#: A write skips the reachability probe of an endpoint that answered this recently (seconds).
FRESH_S = 1.0
#: Default page size of a prefix walk.
DEFAULT_PAGE_LIMIT = 500

_RETRY_ELSEWHERE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_CALLER_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
#: Picks, from an endpoint, the multicallable of the RPC to run there.
_Pick = Callable[["_Endpoint"], "grpc.UnaryUnaryMultiCallable[_Req, _Resp]"]


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd stores it. ``mod_revision`` is what a CAS compares against."""

    key: bytes
    value: bytes = field(repr=False)
    mod_revision: int
    create_revision: int
    version: int


@dataclass(frozen=True, slots=True)
class CasPut:
    """Put ``value`` at ``key`` only if the key's ``mod_revision`` is still ``mod_revision``.

    ``mod_revision=0`` means "only if the key does not exist".
    """

    key: bytes
    value: bytes = field(repr=False)
    mod_revision: int


@dataclass(frozen=True, slots=True)
class RangePage:
    """One page of a range read: its keys, whether more follow, and the store's revision."""

    kvs: tuple[KeyValue, ...]
    more: bool
    revision: int  # etcd's header revision: the store's current revision when it answered


@dataclass(frozen=True, slots=True)
class EtcdStatus:
    """``Maintenance.Status`` of one member."""

    endpoint: str
    version: str
    member_id: int
    leader: int
    revision: int
    raft_term: int
    db_size: int
    is_learner: bool
    errors: tuple[str, ...]


@dataclass(slots=True)
class _Endpoint:
    url: str
    target: str
    channel: grpc.Channel
    kv: _KvCalls
    status: grpc.UnaryUnaryMultiCallable[rpc_pb2.StatusRequest, rpc_pb2.StatusResponse]
    watch: grpc.StreamStreamMultiCallable[rpc_pb2.WatchRequest, rpc_pb2.WatchResponse]
    #: time.monotonic() of the last answer from this endpoint (-inf: never answered).
    last_ok: float = float("-inf")


@dataclass(frozen=True, slots=True)
class _KvCalls:
    range: grpc.UnaryUnaryMultiCallable[rpc_pb2.RangeRequest, rpc_pb2.RangeResponse]
    put: grpc.UnaryUnaryMultiCallable[rpc_pb2.PutRequest, rpc_pb2.PutResponse]
    delete: grpc.UnaryUnaryMultiCallable[rpc_pb2.DeleteRangeRequest, rpc_pb2.DeleteRangeResponse]
    txn: grpc.UnaryUnaryMultiCallable[rpc_pb2.TxnRequest, rpc_pb2.TxnResponse]
    compact: grpc.UnaryUnaryMultiCallable[rpc_pb2.CompactionRequest, rpc_pb2.CompactionResponse]


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's ``range_end`` for "every key starting with ``prefix``".

    The last byte below 0xff is incremented and everything after it dropped; a prefix that is
    empty or all 0xff gives ``b"\\x00"`` (every key at or above ``key``).
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


class EtcdClient:
    """Synchronous etcd v3 client over one or more endpoints of one cluster.

    ``endpoints`` are ``http://host:port`` (plaintext), ``https://host:port`` (TLS) or bare
    ``host:port`` (TLS when any TLS file is given, plaintext otherwise). ``cacert``, ``cert``
    and ``key`` are PEM file paths; ``cert`` and ``key`` go together. ``timeout`` is the
    deadline of each RPC in seconds; ``max_receive_bytes`` caps one response.

    Raises InvalidArgument (no endpoints, a malformed endpoint, unreadable TLS files, TLS
    files with an ``http://`` endpoint, ``cert`` without ``key``).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        cacert: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        timeout: float = 5.0,
        max_receive_bytes: int = MAX_RECEIVE_BYTES,
    ) -> None:
        if not endpoints:
            raise InvalidArgument("no etcd endpoints given")
        if (cert is None) != (key is None):
            raise InvalidArgument("a client certificate and its key must be given together")
        if timeout <= 0:
            raise InvalidArgument(f"timeout must be positive, got {timeout}")
        if max_receive_bytes < 1024:
            raise InvalidArgument(
                f"max_receive_bytes must be at least 1024, got {max_receive_bytes}"
            )
        self._timeout = timeout
        self._max_receive = max_receive_bytes
        tls_files = (_read_pem(cacert, "CA"), _read_pem(key, "key"), _read_pem(cert, "cert"))
        want_tls = any(f is not None for f in tls_files)
        self._endpoints = [
            _open_endpoint(url, tls_files, want_tls, max_receive_bytes) for url in endpoints
        ]
        self._current = 0

    # --- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Close every channel. The client is unusable afterwards."""
        for ep in self._endpoints:
            ep.channel.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The endpoint URLs as given."""
        return tuple(ep.url for ep in self._endpoints)

    # --- reads ---------------------------------------------------------------------------

    def get(self, key: bytes) -> KeyValue | None:
        """The current value of ``key``, or None if it does not exist.

        Raises StoreUnavailable (no endpoint answered), InvalidArgument (etcd refused).
        """
        try:
            resp = self._read("Range", lambda ep: ep.kv.range, rpc_pb2.RangeRequest(key=key))
        except _PageTooLarge:
            raise StoreUnavailable(
                f"the value of {_show(key)} exceeds the {self._max_receive}-byte receive limit"
            ) from None
        return _kv(resp.kvs[0]) if resp.kvs else None

    def range_prefix(self, prefix: bytes, *, limit: int = DEFAULT_PAGE_LIMIT) -> Iterator[KeyValue]:
        """Every key starting with ``prefix``, in key order, ``limit`` keys per round trip.

        All pages are read at the revision of the first one (one consistent snapshot).

        Raises InvalidArgument (``limit`` < 1, etcd refused), StoreUnavailable (no endpoint
        answered), Conflict (the snapshot's revision was compacted during the walk).
        """
        if limit < 1:
            raise InvalidArgument(f"page limit must be at least 1, got {limit}")
        range_end = prefix_range_end(prefix)
        start = prefix or b"\x00"
        revision = 0
        page = limit
        while True:
            req = rpc_pb2.RangeRequest(
                key=start, range_end=range_end, limit=page, revision=revision
            )
            try:
                resp = self._read("Range", lambda ep: ep.kv.range, req)
            except _PageTooLarge:
                if page == 1:
                    raise StoreUnavailable(
                        f"one etcd value under {_show(prefix)} exceeds the "
                        f"{self._max_receive}-byte receive limit"
                    ) from None
                page = max(1, page // 2)
                continue
            if revision == 0:
                revision = resp.header.revision
            for item in resp.kvs:
                yield _kv(item)
            if not resp.more or not resp.kvs:
                return
            start = resp.kvs[-1].key + b"\x00"

    def range_page(
        self, key: bytes, range_end: bytes, *, limit: int, revision: int = 0
    ) -> RangePage:
        """Keys in ``[key, range_end)`` at ``revision`` (0 = now), at most ``limit`` of them.

        A page over the receive limit is re-read with half the limit (``more`` then says what
        is left), down to one key.

        Raises InvalidArgument (``limit`` < 1, a future revision, etcd refused), Conflict
        (``revision`` was compacted), StoreUnavailable (no endpoint answered, or one value
        exceeds the receive limit).
        """
        if limit < 1:
            raise InvalidArgument(f"page limit must be at least 1, got {limit}")
        page = limit
        while True:
            req = rpc_pb2.RangeRequest(key=key, range_end=range_end, limit=page, revision=revision)
            try:
                resp = self._read("Range", lambda ep: ep.kv.range, req)
            except _PageTooLarge:
                if page == 1:
                    raise StoreUnavailable(
                        f"one etcd value at or after {_show(key)} exceeds the "
                        f"{self._max_receive}-byte receive limit"
                    ) from None
                page = max(1, page // 2)
                continue
            return RangePage(
                kvs=tuple(_kv(item) for item in resp.kvs),
                more=resp.more,
                revision=resp.header.revision,
            )

    def count_prefix(self, prefix: bytes) -> int:
        """How many keys start with ``prefix`` (every key if it is empty); no values are read.

        Raises StoreUnavailable (no endpoint answered), InvalidArgument (etcd refused).
        """
        req = rpc_pb2.RangeRequest(
            key=prefix or b"\x00", range_end=prefix_range_end(prefix), count_only=True
        )
        return self._read("Range", lambda ep: ep.kv.range, req).count

    def status(self) -> EtcdStatus:
        """``Maintenance.Status`` of the first endpoint that answers.

        Raises StoreUnavailable (no endpoint answered).
        """
        answered: list[str] = []

        def call(
            ep: _Endpoint,
        ) -> grpc.UnaryUnaryMultiCallable[rpc_pb2.StatusRequest, rpc_pb2.StatusResponse]:
            answered.append(ep.url)
            return ep.status

        resp = self._read("Status", call, rpc_pb2.StatusRequest())
        return EtcdStatus(
            endpoint=answered[-1],
            version=resp.version,
            member_id=resp.header.member_id,
            leader=resp.leader,
            revision=resp.header.revision,
            raft_term=resp.raftTerm,
            db_size=resp.dbSize,
            is_learner=resp.isLearner,
            errors=tuple(resp.errors),
        )

    # --- writes --------------------------------------------------------------------------

    def put(self, key: bytes, value: bytes) -> int:
        """Write ``value`` at ``key`` unconditionally; return the new revision.

        Raises InvalidArgument (etcd refused, e.g. an empty key or a value over the request
        limit), StoreUnavailable (no endpoint reachable, or the outcome is unknown).
        """
        resp = self._write("Put", lambda ep: ep.kv.put, rpc_pb2.PutRequest(key=key, value=value))
        return resp.header.revision

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; return whether it existed.

        Raises InvalidArgument, StoreUnavailable (as :meth:`put`).
        """
        req = rpc_pb2.DeleteRangeRequest(key=key)
        return self._write("DeleteRange", lambda ep: ep.kv.delete, req).deleted > 0

    def delete_prefix(self, prefix: bytes) -> int:
        """Delete every key starting with ``prefix`` (every key if it is empty); return how many.

        Raises InvalidArgument, StoreUnavailable (as :meth:`put`).
        """
        req = rpc_pb2.DeleteRangeRequest(key=prefix or b"\x00", range_end=prefix_range_end(prefix))
        return self._write("DeleteRange", lambda ep: ep.kv.delete, req).deleted

    def txn(self, request: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        """Sends one txn as built by the caller; never retried.

        Raises InvalidArgument (etcd refused it: too many ops, a duplicate key, too large),
        StoreUnavailable (no endpoint reachable, nothing was sent; or the outcome is unknown).
        """
        return self._write("Txn", lambda ep: ep.kv.txn, request)

    def compact(self, revision: int) -> None:
        """Drops etcd's history below ``revision``; returns once it is physically gone.

        Raises Conflict (already compacted at or above ``revision``), InvalidArgument (a future
        revision), StoreUnavailable (no endpoint reachable, or the outcome is unknown).
        """
        req = rpc_pb2.CompactionRequest(revision=revision, physical=True)
        self._write("Compact", lambda ep: ep.kv.compact, req)

    def watch(self, create: rpc_pb2.WatchCreateRequest) -> WatchStream:
        """Opens a Watch stream with one watcher and waits until etcd confirms it.

        Tries the endpoints in turn, skipping those that do not answer. The stream is
        cancelled by etcd if its member loses the leader.

        Raises InvalidArgument (etcd refused the watcher), StoreUnavailable (no endpoint
        answered).
        """
        failures: list[str] = []
        count = len(self._endpoints)
        for step in range(count):
            index = (self._current + step) % count
            ep = self._endpoints[index]
            stream = WatchStream(ep.url, ep.watch, create)
            try:
                first = stream.start(self._timeout)
            except grpc.RpcError as exc:
                stream.cancel()
                code = _code(exc)
                if code in _RETRY_ELSEWHERE:
                    failures.append(f"{ep.url}: {code.name}")
                    continue
                raise _map_error("Watch", ep.url, exc) from exc
            if not first.created or first.canceled:
                stream.cancel()
                reason = first.cancel_reason or "no created response"
                raise InvalidArgument(f"etcd Watch at {ep.url}: watcher refused: {reason}")
            ep.last_ok = time.monotonic()
            self._current = index
            return stream
        raise StoreUnavailable(f"etcd Watch: no endpoint answered ({'; '.join(failures)})")

    def cas_batch(self, ops: Sequence[CasPut]) -> list[bool]:
        """Apply compare-and-swap puts; return, per op in order, whether it was written.

        False means the key's ``mod_revision`` was no longer the expected one: a concurrent
        write won and was left alone. Ops are grouped into txns of at most
        :data:`MAX_TXN_OPS` ops and about :data:`MAX_TXN_BYTES` bytes; one losing op never
        blocks the others (see the module docstring).

        Raises InvalidArgument (the same key twice, or etcd refused), StoreUnavailable (no
        endpoint reachable, or the outcome of a txn is unknown; ops of earlier txns may have
        been applied — a CAS rerun is safe, as applied ops then report False).
        """
        seen: set[bytes] = set()
        for op in ops:
            if op.key in seen:
                raise InvalidArgument(f"key {_show(op.key)} appears twice in one CAS batch")
            seen.add(op.key)
        results = [False] * len(ops)
        for chunk in _chunks(list(enumerate(ops))):
            for index, written in self._cas_chunk(chunk):
                results[index] = written
        return results

    def _cas_chunk(self, chunk: list[tuple[int, CasPut]]) -> list[tuple[int, bool]]:
        done: list[tuple[int, bool]] = []
        pending = chunk
        while pending:
            req = rpc_pb2.TxnRequest(
                compare=[
                    rpc_pb2.Compare(
                        result=rpc_pb2.Compare.EQUAL,
                        target=rpc_pb2.Compare.MOD,
                        key=op.key,
                        mod_revision=op.mod_revision,
                    )
                    for _, op in pending
                ],
                success=[
                    rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=op.key, value=op.value))
                    for _, op in pending
                ],
                failure=[
                    rpc_pb2.RequestOp(
                        request_range=rpc_pb2.RangeRequest(key=op.key, keys_only=True)
                    )
                    for _, op in pending
                ],
            )
            resp = self._write("Txn", lambda ep: ep.kv.txn, req)
            if resp.succeeded:
                done.extend((index, True) for index, _ in pending)
                return done
            still: list[tuple[int, CasPut]] = []
            for (index, op), answer in zip(pending, resp.responses, strict=True):
                kvs = answer.response_range.kvs
                current = kvs[0].mod_revision if kvs else 0
                if current == op.mod_revision:
                    still.append((index, op))
                else:
                    done.append((index, False))
            if len(still) == len(pending):
                # Cannot happen with a correct server: the failure branch ran atomically
                # with the failed compares, so at least one op must have moved.
                raise StoreUnavailable("etcd rejected a CAS txn whose compares all hold")
            pending = still
        return done

    # --- plumbing ------------------------------------------------------------------------

    def _read(
        self,
        method: str,
        pick: _Pick[_Req, _Resp],
        request: _Req,
    ) -> _Resp:
        failures: list[str] = []
        count = len(self._endpoints)
        for step in range(count):
            index = (self._current + step) % count
            ep = self._endpoints[index]
            try:
                resp = pick(ep)(request, timeout=self._timeout)
            except grpc.RpcError as exc:
                code = _code(exc)
                if code in _RETRY_ELSEWHERE:
                    failures.append(f"{ep.url}: {code.name}")
                    continue
                raise _map_error(method, ep.url, exc) from exc
            ep.last_ok = time.monotonic()
            self._current = index
            return resp
        raise StoreUnavailable(f"etcd {method}: no endpoint answered ({'; '.join(failures)})")

    def _write(
        self,
        method: str,
        pick: _Pick[_Req, _Resp],
        request: _Req,
    ) -> _Resp:
        ep = self._connected_endpoint(method)
        try:
            resp = pick(ep)(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            code = _code(exc)
            if code in _RETRY_ELSEWHERE or code == grpc.StatusCode.CANCELLED:
                raise StoreUnavailable(
                    f"etcd {method} at {ep.url} failed after it was sent ({code.name}); "
                    "its outcome is unknown — read the key again before retrying"
                ) from exc
            raise _map_error(method, ep.url, exc) from exc
        ep.last_ok = time.monotonic()
        return resp

    def _connected_endpoint(self, method: str) -> _Endpoint:
        # A write goes only to an endpoint known to answer: one that answered within the last
        # FRESH_S seconds, or one that answers a Status probe now. A probe that fails proves
        # nothing was sent, so the next endpoint may be tried.
        failures: list[str] = []
        count = len(self._endpoints)
        now = time.monotonic()
        for step in range(count):
            index = (self._current + step) % count
            ep = self._endpoints[index]
            if now - ep.last_ok > FRESH_S:
                try:
                    ep.status(rpc_pb2.StatusRequest(), timeout=self._timeout)
                except grpc.RpcError as exc:
                    code = _code(exc)
                    if code in _RETRY_ELSEWHERE:
                        failures.append(f"{ep.url}: {code.name}")
                        continue
                    raise _map_error("Status", ep.url, exc) from exc
                ep.last_ok = time.monotonic()
            self._current = index
            return ep
        raise StoreUnavailable(
            f"etcd {method}: no endpoint reachable, nothing was sent ({'; '.join(failures)})"
        )


class WatchStream:
    """One Watch RPC carrying one watcher: iterate for its responses; ``cancel()`` ends it.

    Iterating yields every response after the ``created`` one and ends quietly once
    :meth:`cancel` was called (from any thread); any other end of the stream raises
    StoreUnavailable naming the endpoint and the gRPC code.
    """

    def __init__(
        self,
        url: str,
        method: grpc.StreamStreamMultiCallable[rpc_pb2.WatchRequest, rpc_pb2.WatchResponse],
        create: rpc_pb2.WatchCreateRequest,
    ) -> None:
        self.url = url
        self._method = method
        self._create = create
        self._done = threading.Event()
        self._call: grpc.CallIterator[rpc_pb2.WatchResponse] | None = None
        self._responses: Iterator[rpc_pb2.WatchResponse] = iter(())

    def start(self, timeout: float) -> rpc_pb2.WatchResponse:
        """Sends the create request; returns etcd's first response. Raises grpc.RpcError."""
        # A sync stream has no per-message deadline: a timer cancels the call if the first
        # response does not come in time, which then surfaces as DEADLINE_EXCEEDED.
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            if self._call is not None:
                self._call.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs

        timer = threading.Timer(timeout, expire)
        self._call = self._method(self._requests(), metadata=(("hasleader", "true"),))
        self._responses = iter(self._call)
        timer.start()
        try:
            return next(self._responses)
        except StopIteration:
            raise _StreamEnded(grpc.StatusCode.UNAVAILABLE) from None
        except grpc.RpcError as exc:
            if expired.is_set():
                raise _StreamEnded(grpc.StatusCode.DEADLINE_EXCEEDED) from exc
            raise
        finally:
            timer.cancel()

    def __iter__(self) -> Iterator[rpc_pb2.WatchResponse]:
        """Raises StoreUnavailable (the stream ended without :meth:`cancel`)."""
        try:
            yield from self._responses
        except grpc.RpcError as exc:
            if self._done.is_set():
                return
            raise StoreUnavailable(
                f"etcd Watch at {self.url} ended: {_code(exc).name}: {_details(exc)}"
            ) from exc
        if not self._done.is_set():
            raise StoreUnavailable(f"etcd Watch at {self.url} ended without an error")

    def cancel(self) -> None:
        """Ends the stream; an iteration blocked in another thread ends too. Raises nothing."""
        self._done.set()
        if self._call is not None:
            self._call.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs

    def _requests(self) -> Iterator[rpc_pb2.WatchRequest]:
        yield rpc_pb2.WatchRequest(create_request=self._create)
        # Keep the request side open until the watch ends: a closed request side makes etcd
        # end the whole stream.
        self._done.wait()


class _StreamEnded(grpc.RpcError):
    """A watch stream that ended before its first response, with the code to report."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code.name)
        self.status = code


class _PageTooLarge(Exception):
    """A range response exceeded the channel's receive limit."""


def _code(exc: grpc.RpcError) -> grpc.StatusCode:
    if isinstance(exc, _StreamEnded):
        return exc.status
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _details(exc: grpc.RpcError) -> str:
    details = exc.details() if isinstance(exc, grpc.Call) else None
    return details if isinstance(details, str) else ""


def _map_error(method: str, url: str, exc: grpc.RpcError) -> Exception:
    code = _code(exc)
    details = _details(exc)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and method == "Range":
        return _PageTooLarge()
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return Conflict(
            f"etcd {method} at {url}: the snapshot's revision was compacted during the "
            "walk; run it again"
        )
    message = f"etcd {method} at {url}: {code.name}: {details}"
    too_large = code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details
    if code in _CALLER_CODES or code == grpc.StatusCode.OUT_OF_RANGE or too_large:
        return InvalidArgument(message)
    return StoreUnavailable(message)


def _kv(item: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(
        key=item.key,
        value=item.value,
        mod_revision=item.mod_revision,
        create_revision=item.create_revision,
        version=item.version,
    )


def _chunks(ops: list[tuple[int, CasPut]]) -> Iterator[list[tuple[int, CasPut]]]:
    chunk: list[tuple[int, CasPut]] = []
    size = 0
    for item in ops:
        # The key travels three times (compare, put, failure-branch range), plus framing.
        cost = len(item[1].key) * 3 + len(item[1].value) + 48
        if chunk and (len(chunk) >= MAX_TXN_OPS or size + cost > MAX_TXN_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += cost
    if chunk:
        yield chunk


def _show(key: bytes) -> str:
    return key.decode("utf-8", errors="backslashreplace")


def _read_pem(path: str | Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read TLS {what} file {path}: {exc.strerror}") from exc


def _open_endpoint(
    url: str,
    tls_files: tuple[bytes | None, bytes | None, bytes | None],
    want_tls: bool,
    max_receive_bytes: int,
) -> _Endpoint:
    if "://" in url:
        parts = urlsplit(url)
        scheme = parts.scheme
        target = parts.netloc
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidArgument(f"etcd endpoint {url!r} must be scheme://host:port only")
    else:
        scheme = "https" if want_tls else "http"
        target = url
    if scheme not in ("http", "https") or not target:
        raise InvalidArgument(
            f"etcd endpoint {url!r} must look like http://host:port or https://host:port"
        )
    if scheme == "http" and want_tls:
        raise InvalidArgument(f"TLS files were given but endpoint {url!r} uses http://")
    options = [
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", MAX_RECEIVE_BYTES),
    ]
    if scheme == "https":
        cacert, key, cert = tls_files
        credentials = grpc.ssl_channel_credentials(
            root_certificates=cacert, private_key=key, certificate_chain=cert
        )
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    # The generated gRPC stubs are untyped; their callables are typed by the fields below.
    kv = rpc_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
    maintenance = rpc_pb2_grpc.MaintenanceStub(channel)  # type: ignore[no-untyped-call]
    watch = rpc_pb2_grpc.WatchStub(channel)  # type: ignore[no-untyped-call]
    return _Endpoint(
        url=url,
        target=target,
        channel=channel,
        kv=_KvCalls(
            range=kv.Range, put=kv.Put, delete=kv.DeleteRange, txn=kv.Txn, compact=kv.Compact
        ),
        status=maintenance.Status,
        watch=watch.Watch,
    )
