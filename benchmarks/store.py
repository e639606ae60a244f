"""Store adapters side by side: txn throughput of MemoryStore, SqliteStore and EtcdStore.

Prints, for each adapter, txns/s and ops/s of a one-op txn (a create-if-absent Put) and of a
128-op txn (128 create-if-absent Puts), plus point gets/s and 100-key pages/s, each with its
ratio to SQLite (``x sqlite``). Values are 1 KiB. Rounds are interleaved (memory, sqlite, etcd,
memory, ...) and the best round of each is kept; the machine is shared and noisy, so only the
order of magnitude and the ratios mean much.

SQLite runs on a file in a temporary directory (``--dir`` to choose the disk) with the store's
own settings: WAL, ``synchronous=FULL``. etcd runs only with ``--etcd URL`` (repeatable); its
keys go under a fresh prefix that is deleted afterwards.

Usage: ``python benchmarks/store.py [--etcd http://127.0.0.1:2379] [--rounds N] [--seconds S]``
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from kinko.store.etcd import EtcdClient
from kinko.store.etcd_store import EtcdStore
from kinko.store.memory import MemoryStore
from kinko.store.port import MAX_TXN_OPS, Put, Store
from kinko.store.sqlite import SqliteStore

VALUE = bytes(1024)
CASES = ("txn 1 op", "txn 128 ops", "get", "range 100")
#: Ops per call of each case (a txn of 128 puts counts 128 ops).
OPS = {"txn 1 op": 1, "txn 128 ops": MAX_TXN_OPS, "get": 1, "range 100": 100}


def calls_per_second(fn: Callable[[], object], seconds: float) -> float:
    """Calls ``fn`` until ``seconds`` have passed; returns calls per second."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def cases(store: Store, prefix: bytes) -> dict[str, Callable[[], object]]:
    """One callable per case; every txn creates fresh keys, so its guards always hold."""
    counter = itertools.count()
    for start in range(0, 1000, MAX_TXN_OPS):
        keys = [prefix + b"r%04d" % i for i in range(start, min(start + MAX_TXN_OPS, 1000))]
        store.txn([Put(key, VALUE, expect=0) for key in keys])
    probe = itertools.cycle([prefix + b"r%04d" % i for i in range(0, 1000, 7)])

    def one() -> None:
        result = store.txn([Put(prefix + b"w%09d" % next(counter), VALUE, expect=0)])
        assert result.succeeded

    def batch() -> None:
        base = next(counter)
        ops = [Put(prefix + b"b%09d/%03d" % (base, i), VALUE, expect=0) for i in range(128)]
        assert store.txn(ops).succeeded

    return {
        "txn 1 op": one,
        "txn 128 ops": batch,
        "get": lambda: store.get(next(probe)),
        "range 100": lambda: store.range(prefix + b"r", limit=100),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--etcd", action="append", default=[], help="etcd endpoint URL")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=None, help="folder for the SQLite file")
    args = parser.parse_args()

    prefix = f"/bench/{uuid.uuid4().hex}/".encode()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        sqlite = SqliteStore(Path(folder) / "bench.db")
        stores: dict[str, Store] = {"memory": MemoryStore(), "sqlite": sqlite}
        client = EtcdClient(args.etcd) if args.etcd else None
        if client is not None:
            stores["etcd"] = EtcdStore(client)
        try:
            runs = {name: cases(store, prefix) for name, store in stores.items()}
            best = {(name, case): 0.0 for name in stores for case in CASES}
            for _ in range(args.rounds):
                for case in CASES:
                    for name in stores:
                        rate = calls_per_second(runs[name][case], args.seconds)
                        best[name, case] = max(best[name, case], rate)
        finally:
            sqlite.close()
            if client is not None:
                client.delete_prefix(prefix)
                client.close()

    print(f"1 KiB values, best of {args.rounds} rounds of {args.seconds}s; x sqlite = ratio")
    header = f"{'case':<13}" + "".join(f"{name:>36}" for name in stores)
    print(header)
    for case in CASES:
        cells = []
        for name in stores:
            calls = best[name, case]
            ratio = calls / best["sqlite", case]
            cell = f"{calls:,.0f}/s ({calls * OPS[case]:,.0f} ops/s) x{ratio:.2f}"
            cells.append(f"{cell:>36}")
        print(f"{case:<13}" + "".join(cells))


if __name__ == "__main__":
    main()
