"""EtcdStore: the Store port on an etcd v3 cluster, through :class:`~kinko.store.etcd.EtcdClient`.

Job: map the port one to one onto etcd, which it was shaped after: a port txn is one etcd
``Txn``, a page is one ``Range``, a watch is one ``Watch`` stream.

Invariants:

- **Guards are etcd compares.** ``expect=n`` is ``mod_revision == n``; ``expect=0`` is
  ``version == 0`` (the key is absent). Unguarded ops carry no compare.
- **Failed indexes are exact.** The txn's failure branch reads every guarded key in the same
  atomic step as the failed compares, so the ops whose key's ``mod_revision`` differs from
  ``expect`` are exactly the ones whose guard did not hold.
- **Reads fail over, writes never guess.** Reads (``get``, ``range``, opening a watch) are
  retried on the next endpoint when one does not answer, e.g. after its leader failed. A txn
  is sent once; if its outcome is unknown (the endpoint died, the leader changed, the deadline
  passed after sending) it raises StoreUnavailable saying so, and the caller must read before
  retrying. A guarded txn is safe to retry after such a read: if it was applied, its guards
  now fail.
- **A watch survives a member.** When its stream breaks, a watch reopens after the last
  revision it delivered (etcd delivers whole revisions per response, so nothing is lost or
  repeated), on the first endpoint that answers, retrying with backoff for up to
  :data:`WATCH_REOPEN_S` seconds (an election takes about one). It raises Conflict when etcd
  reports that its start was compacted.
- **The same limits everywhere.** Argument checks come from :mod:`kinko.store.rules` before
  anything is sent, so etcd refuses nothing the other adapters accept (except a txn over
  etcd's ``--max-request-bytes``, which is InvalidArgument here only).
- Messages name endpoints, keys and revisions; never values.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from kinko.errors import Conflict, InvalidArgument, StoreUnavailable
from kinko.gen.etcdpb import kv_pb2, rpc_pb2
from kinko.store import rules
from kinko.store.etcd import EtcdClient, KeyValue, WatchStream
from kinko.store.port import Entry, Event, EventType, Op, Page, Put, TxnResult

#: How long a broken watch keeps trying to reopen before it raises StoreUnavailable (seconds).
WATCH_REOPEN_S = 10.0
#: First and largest pause between two attempts to reopen a watch (seconds).
WATCH_BACKOFF_S = (0.05, 1.0)


class EtcdStore:
    """The Store on the etcd cluster behind ``client`` (which it uses, but does not close)."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client

    @property
    def client(self) -> EtcdClient:
        """The etcd client underneath."""
        return self._client

    # --- the port --------------------------------------------------------------------------

    def get(self, key: bytes) -> Entry | None:
        """The current entry, or None.

        Raises StoreUnavailable (no endpoint answered), InvalidArgument (etcd refused).
        """
        kv = self._client.get(key)
        return _entry(kv) if kv is not None else None

    def range(
        self, prefix: bytes, *, start_after: bytes = b"", limit: int = 500, revision: int = 0
    ) -> Page:
        """Keys under ``prefix`` after ``start_after`` at ``revision`` (0 = now), in byte order.

        A page may hold fewer than ``limit`` entries with ``more`` set when the values are too
        large for one response.

        Raises InvalidArgument (limit < 1, a negative or future revision), Conflict (the
        revision was compacted), StoreUnavailable (no endpoint answered).
        """
        rules.check_range(limit, revision)
        start = rules.range_start(prefix, start_after) or b"\x00"
        end = rules.prefix_end(prefix) or b"\x00"
        page = self._client.range_page(start, end, limit=limit, revision=revision)
        return Page(
            entries=tuple(_entry(kv) for kv in page.kvs),
            more=page.more,
            revision=revision or page.revision,
        )

    def txn(self, ops: Sequence[Op]) -> TxnResult:
        """Applies every op if every guard holds; otherwise changes nothing.

        Raises InvalidArgument (more than MAX_TXN_OPS ops, a repeated or empty key, a negative
        ``expect``, a txn over etcd's request size limit), StoreUnavailable (no endpoint
        reachable and nothing sent; or sent and the outcome is unknown).
        """
        rules.check_ops(ops)
        guarded = [(index, op) for index, op in enumerate(ops) if op.expect is not None]
        request = rpc_pb2.TxnRequest(
            compare=[_compare(op) for _, op in guarded],
            success=[_request(op) for op in ops],
            failure=[
                rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=op.key, keys_only=True))
                for _, op in guarded
            ],
        )
        resp = self._client.txn(request)
        if resp.succeeded:
            return TxnResult(succeeded=True, revision=resp.header.revision)
        failed: list[int] = []
        for (index, op), answer in zip(guarded, resp.responses, strict=True):
            kvs = answer.response_range.kvs
            if (kvs[0].mod_revision if kvs else 0) != op.expect:
                failed.append(index)
        if not failed:
            # Cannot happen with a correct server: the failure branch ran atomically with the
            # failed compares, so at least one guarded key must differ.
            raise StoreUnavailable("etcd rejected a txn whose guards all hold")
        return TxnResult(succeeded=False, revision=resp.header.revision, failed=tuple(failed))

    def watch(self, prefix: bytes, *, after_revision: int) -> EtcdWatch:
        """Every change under ``prefix`` with a revision above ``after_revision``, in order.

        Raises InvalidArgument (negative ``after_revision``), Conflict (that history was
        compacted), StoreUnavailable (no endpoint answered). Iterating raises Conflict (etcd
        compacted the history the watch still needed) and StoreUnavailable (no endpoint
        answered when the stream had to be reopened).
        """
        rules.check_after(after_revision)
        self._check_not_compacted(prefix, after_revision + 1)
        return EtcdWatch(self._client, prefix, after_revision)

    # --- beyond the port -------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        """Drops etcd's history below ``revision`` (for the whole cluster, not one prefix).

        Afterwards a range below ``revision`` and a watch with ``after_revision`` below
        ``revision - 1`` raise Conflict. Compacting at or below an earlier compaction does
        nothing.

        Raises InvalidArgument (``revision`` < 1 or in the future), StoreUnavailable.
        """
        if revision < 1:
            raise InvalidArgument(f"compaction revision must be at least 1, got {revision}")
        try:
            self._client.compact(revision)
        except Conflict:
            return

    # --- plumbing --------------------------------------------------------------------------

    def _check_not_compacted(self, prefix: bytes, revision: int) -> None:
        """A read at ``revision`` fails exactly when a watch starting there would."""
        try:
            self._client.range_page(
                prefix or b"\x00", rules.prefix_end(prefix) or b"\x00", limit=1, revision=revision
            )
        except InvalidArgument:
            return  # A future revision: nothing of it can have been compacted.


class EtcdWatch:
    """A watch on etcd; one iteration (shared by every ``iter()``), ended by :meth:`close`."""

    def __init__(self, client: EtcdClient, prefix: bytes, after_revision: int) -> None:
        self._client = client
        self._key = prefix or b"\x00"
        self._end = rules.prefix_end(prefix) or b"\x00"
        self._cursor = after_revision  # the last revision delivered in full
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._stream: WatchStream = self._open()
        self._events = self._run()

    def __iter__(self) -> Iterator[Event]:
        """Events in revision order; blocks for new ones.

        Raises Conflict (compacted), StoreUnavailable (could not reopen a broken stream).
        """
        return self._events

    @property
    def endpoint(self) -> str:
        """The endpoint URL the watch currently streams from."""
        with self._lock:
            return self._stream.url

    def close(self) -> None:
        """Ends the iteration promptly, also one blocked in another thread. Raises nothing."""
        with self._lock:
            self._closed.set()
            stream = self._stream
        stream.cancel()

    def _open(self) -> WatchStream:
        create = rpc_pb2.WatchCreateRequest(
            key=self._key, range_end=self._end, start_revision=self._cursor + 1
        )
        return self._client.watch(create)

    def _run(self) -> Iterator[Event]:
        while True:
            with self._lock:
                if self._closed.is_set():
                    return
                stream = self._stream
            try:
                for resp in stream:
                    if resp.compact_revision:
                        raise Conflict(rules.compacted(self._cursor + 1, resp.compact_revision))
                    if resp.canceled:
                        raise StoreUnavailable(
                            f"etcd Watch at {stream.url} was cancelled: {resp.cancel_reason}"
                        )
                    for item in resp.events:
                        if self._closed.is_set():
                            return
                        yield _event(item)
                    if resp.events:
                        self._cursor = resp.events[-1].kv.mod_revision
                return  # the stream ended because close() cancelled it
            except StoreUnavailable as exc:
                stream.cancel()
                self._reopen(exc)
            except Conflict:
                stream.cancel()
                raise

    def _reopen(self, cause: StoreUnavailable) -> None:
        """Replaces the broken stream, or raises ``cause``'s StoreUnavailable when time is up."""
        deadline = time.monotonic() + WATCH_REOPEN_S
        pause, longest = WATCH_BACKOFF_S
        while not self._closed.is_set():
            try:
                reopened = self._open()
            except StoreUnavailable as exc:
                if time.monotonic() + pause > deadline:
                    raise StoreUnavailable(
                        f"etcd watch broke ({cause}) and could not be reopened within "
                        f"{WATCH_REOPEN_S}s: {exc}"
                    ) from exc
                self._closed.wait(pause)
                pause = min(pause * 2, longest)
                continue
            with self._lock:
                if not self._closed.is_set():
                    self._stream = reopened
                    return
            reopened.cancel()


def _compare(op: Op) -> rpc_pb2.Compare:
    if op.expect == 0:
        return rpc_pb2.Compare(
            result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.VERSION, key=op.key, version=0
        )
    return rpc_pb2.Compare(
        result=rpc_pb2.Compare.EQUAL,
        target=rpc_pb2.Compare.MOD,
        key=op.key,
        mod_revision=op.expect or 0,
    )


def _request(op: Op) -> rpc_pb2.RequestOp:
    if isinstance(op, Put):
        return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=op.key, value=op.value))
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=op.key))


def _entry(kv: KeyValue) -> Entry:
    return Entry(
        key=kv.key,
        value=kv.value,
        mod_revision=kv.mod_revision,
        create_revision=kv.create_revision,
    )


def _event(item: kv_pb2.Event) -> Event:
    if item.type == kv_pb2.Event.DELETE:
        return Event(EventType.DELETE, item.kv.key, b"", item.kv.mod_revision)
    return Event(EventType.PUT, item.kv.key, item.kv.value, item.kv.mod_revision)
