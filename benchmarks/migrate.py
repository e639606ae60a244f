"""Migration throughput to KMS v2 for N Secrets, next to a raw rewrite of the same rows.

Three migrations, each from a different provider to KMS v2 (``--from`` picks some):

- ``identity``: enabling KMS on a cluster whose Secrets are stored unencrypted, the seed's
  "Key Protect feature enablement" (each value is sealed, nothing to open);
- ``kms``: switching to another root key, i.e. another KMS v2 provider (``kinko cluster kms
  enable --key OTHER``); a root key rotation does the same work (each value is opened with
  one seed and sealed with another);
- ``aescbc``: moving from a local aescbc key to KMS v2 (each value is opened with AES-CBC,
  the most expensive local provider to open, and sealed).

For each store (SQLite: 100,000 Secrets; etcd: 10,000) and each of these, the script stores N
Secrets of about 1 KiB under the old provider, then, per round:

1. **migrate**: switches the EncryptionConfiguration to KMS v2 first (the old provider kept
   for reads) and runs :class:`~kinko.cluster.migrate.Migrator` over ``secrets`` (defaults:
   pages of 508, 127 rewrites + the checkpoint per txn, no progress callback, so no counting
   pass);
2. **raw**: reads every row in pages of 512 and Puts the same bytes back (the KMS v2 values
   just written, so the same sizes), guarded on the revision read, in txns of 128 ops through
   the same store adapter — the floor a migration cannot beat (no cryptography, no
   checkpoint);
3. switches back and migrates to the old provider again, then compacts the store's history
   (both untimed), so every round starts from the same data;
4. **migrate with workers** (``--workers W``, default 1; 0 skips it): steps 1 and 3 again
   with ``Migrator(workers=W)``: the open and seal run in W spawned processes while the
   benchmark's thread reads and commits. The processes start inside the timed run, when the
   walk reaches its second page (the walk seals by itself until they are ready), and stop
   before it returns, so their start and stop are in the time.

Every KMS v2 provider is a real LocalKeyPlugin served by KmsV2Server on a unix socket and
reached through EncryptionConfigSource's gRPC client. Before the next migration's data is
stored, the previous one's is deleted and the history compacted.

Printed per store and old provider: objects/s of raw and migrate
without and with workers (best of the rounds, and every round), migrate ÷ raw, the CPU µs per
object (this process's threads, plus with workers the worker processes'; etcd's own CPU is
not included — it moves far less than the wall clock when other work shares the machine),
the CPU µs per object of the cryptography alone (open + seal of 5,000 stored values in a
loop), and the peak RSS of this process and of the largest worker process (``getrusage``),
each against its target.

SQLite runs with the store's own settings (WAL, ``synchronous=FULL``: one fsync per txn) on a
file in a temporary folder (``--dir`` chooses the disk). etcd: a single-member etcd-server
started on loopback ports with its data in that folder (``$KINKO_ETCD_BIN`` or ``etcd`` on
the PATH); without the binary the etcd part is skipped with a note.

Usage: ``python benchmarks/migrate.py [--n-sqlite N] [--n-etcd N] [--rounds R] [--dir DIR]
[--only sqlite|etcd] [--from identity|kms|aescbc ...] [--workers W]``
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kinko.cluster.encryption import EncryptionConfigSource
from kinko.cluster.migrate import Migrator
from kinko.kms.plugin import LocalKeyPlugin
from kinko.kms.server import KmsV2Server
from kinko.store.etcd import EtcdClient
from kinko.store.etcd_store import EtcdStore
from kinko.store.port import MAX_TXN_OPS, Delete, Put, Store
from kinko.store.sqlite import SqliteStore

# Run as a script, this folder is first on sys.path; mypy names the module by the
# repository's layout instead.
if TYPE_CHECKING:
    from benchmarks._etcd import local_etcd
else:
    from _etcd import local_etcd

PREFIX = b"/registry/secrets/"
AES_SECRET = base64.b64encode(os.urandom(32)).decode()
CBC = (
    "      - aescbc:\n          keys:\n            - name: k1\n"
    f"              secret: {AES_SECRET}\n"
)
IDENTITY = "      - identity: {}\n"
TARGETS = {"sqlite": 20_000.0, "etcd": 10_000.0}
RATIO_TARGET = 0.7
RSS_TARGET_MB = 250.0


def kms(socket_path: Path, name: str = "bench") -> str:
    return (
        f"      - kms:\n          apiVersion: v2\n          name: {name}\n"
        f"          endpoint: unix://{socket_path}\n"
    )


#: The migrations measured: what the Secrets are stored under before KMS v2 comes first.
SOURCES = ("identity", "kms", "aescbc")


def old_provider(source: str, socket_dir: Path) -> str:
    """The old provider's configuration entry for ``source``."""
    if source == "identity":
        return IDENTITY
    if source == "kms":
        return kms(socket_dir / "kms-old.sock", "old")
    return CBC


def config(*providers: str) -> str:
    return (
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
        "resources:\n  - resources: [secrets]\n    providers:\n" + "".join(providers)
    )


def secret_json(i: int) -> tuple[bytes, bytes]:
    """A storage key and a Secret of about 1 KiB as ClusterService stores it."""
    namespace, name = f"team-{i % 50:02d}", f"app-{i:07d}-credentials"
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"{i:08x}-0000-4000-8000-000000000000",
            "creationTimestamp": "2026-11-28T12:00:00Z",
            "labels": {"app": f"app-{i % 100}"},
        },
        "type": "Opaque",
        "data": {
            "username": base64.b64encode(b"service-account").decode(),
            "password": base64.b64encode(os.urandom(560)).decode(),
        },
    }
    key = f"/registry/secrets/{namespace}/{name}".encode()
    return key, json.dumps(body, separators=(",", ":")).encode()


@dataclass
class Rate:
    per_second: float
    cpu_us: float  # this process and the children it reaped meanwhile
    own_cpu_us: float  # this process alone


@dataclass
class Result:
    store: str
    source: str
    n: int
    raw: list[Rate] = field(default_factory=list)
    migrate: list[Rate] = field(default_factory=list)
    pooled: list[Rate] = field(default_factory=list)
    crypto_us: list[float] = field(default_factory=list)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(n: int, fn: Callable[[], object]) -> Rate:
    """Objects/s and CPU µs/object of ``fn``: this process, plus the child processes it
    started and reaped meanwhile (the migration's workers; etcd is reaped only at the end)."""
    wall, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    children = _children_cpu() - children
    return Rate(n / wall, (cpu + children) / n * 1e6, cpu / n * 1e6)


def fill(store: Store, source: EncryptionConfigSource, n: int) -> None:
    chain = source.chain_for("secrets")
    ops: list[Put] = []
    for i in range(n):
        key, plaintext = secret_json(i)
        ops.append(Put(key, chain.seal(plaintext, aad=key), expect=0))
        if len(ops) == MAX_TXN_OPS:
            store.txn(ops)
            ops = []
    if ops:
        store.txn(ops)


def raw_rewrite(store: Store) -> int:
    """Every row read in pages and Put back unchanged, CAS on its revision, 128 per txn."""
    after, n = b"", 0
    while True:
        page = store.range(PREFIX, start_after=after, limit=4 * MAX_TXN_OPS)
        entries = page.entries
        for start in range(0, len(entries), MAX_TXN_OPS):
            chunk = entries[start : start + MAX_TXN_OPS]
            result = store.txn([Put(e.key, e.value, expect=e.mod_revision) for e in chunk])
            assert result.succeeded
        n += len(entries)
        if not page.more or not entries:
            return n
        after = entries[-1].key


def clear(store: Store, compact: Callable[[], None]) -> None:
    """Deletes every row under PREFIX (128 per txn) and compacts the history."""
    while True:
        entries = store.range(PREFIX, limit=MAX_TXN_OPS).entries
        if not entries:
            break
        assert store.txn([Delete(e.key, expect=e.mod_revision) for e in entries]).succeeded
    compact()


def crypto_alone(store: Store, source: EncryptionConfigSource, n: int = 5000) -> float:
    """CPU µs per object of what a migration adds per value: open (old provider) and seal
    (KMS v2)."""
    chain = source.chain_for("secrets")
    entries = store.range(PREFIX, limit=n).entries
    cpu = time.process_time()
    for entry in entries:
        opened = chain.open(entry.value, aad=entry.key)
        chain.seal(opened.plaintext, aad=entry.key)
    return (time.process_time() - cpu) / len(entries) * 1e6


def switch(source: EncryptionConfigSource, text: str) -> None:
    source.path.write_text(text)
    result = source.reload_if_changed()
    assert result.changed, result.error


def bench_store(
    name: str,
    store: Store,
    compact: Callable[[], None],
    n: int,
    rounds: int,
    folder: Path,
    socket_dir: Path,
    workers: int,
    from_: str,
) -> Result:
    path = folder / f"encryption-{name}-{from_}.yaml"
    old = old_provider(from_, socket_dir)
    path.write_text(config(old))
    source = EncryptionConfigSource(path)
    new = kms(socket_dir / "kms.sock")
    to_kms, to_cbc = config(new, old), config(old, new)
    result = Result(name, from_, n)
    try:
        clear(store, compact)
        started = time.perf_counter()
        fill(store, source, n)
        print(
            f"  ({name}: stored {n:,} Secrets under {from_} "
            f"in {time.perf_counter() - started:.0f}s)"
        )
        migrator = Migrator(store, source, resources=["secrets"])
        pooled = Migrator(store, source, resources=["secrets"], workers=workers or 1)

        def migrate_once(with_workers: bool) -> Rate:
            switch(source, to_kms)
            if not with_workers:
                result.crypto_us.append(crypto_alone(store, source))
            report = None

            def run() -> None:
                nonlocal report
                report = (pooled if with_workers else migrator).run("secrets")

            rate = timed(n, run)
            assert report is not None
            assert (report.done, report.rewritten) == (n, n), report
            if not with_workers:
                # The floor rewrites the very bytes the migration wrote, after a write pass.
                result.raw.append(timed(n, lambda: raw_rewrite(store)))
            switch(source, to_cbc)
            back = migrator.run("secrets")
            assert back.rewritten == n, back
            compact()
            return rate

        for number in range(rounds):
            # Alternate which goes first, so that neither always meets the fresher disk.
            order = [False, True] if number % 2 == 0 else [True, False]
            for with_workers in order if workers else [False]:
                rate = migrate_once(with_workers)
                (result.pooled if with_workers else result.migrate).append(rate)
            line = (
                f"  ({name} round: migrate {result.migrate[-1].per_second:,.0f}/s, "
                f"raw {result.raw[-1].per_second:,.0f}/s"
            )
            if workers:
                line += f", migrate with {workers} worker(s) {result.pooled[-1].per_second:,.0f}/s"
            print(line + ")")
    finally:
        source.close()
    return result


# --------------------------------------------------------------------------------- report


def verdict(value: float, target: float, *, below: bool = False) -> str:
    met = value < target if below else value >= target
    return "met" if met else "MISSED"


def print_report(results: list[Result], rounds: int, workers: int, child_mb: float) -> None:
    print()
    print(
        f"to KMS v2 (LocalKeyPlugin over gRPC, unix socket), ~1 KiB Secrets, "
        f"best of {rounds} round(s); {os.cpu_count()} CPU(s)"
    )
    header = (
        f"{'store':<8}{'from':<10}{'engine':<12}{'objects':>9}{'migrate/s':>12}{'raw/s':>10}"
        f"{'migrate/raw':>13}{'CPU us/obj migrate':>20}{'raw':>6}   targets"
    )
    print(header)
    for r in results:
        best_r = max(r.raw, key=lambda x: x.per_second)
        target = TARGETS[r.store]
        engines = [("1 thread", r.migrate)]
        if r.pooled:
            engines.append((f"{workers} worker(s)", r.pooled))
        # "1 thread" is what `kinko cluster migrate` and the lifecycle controller run;
        # worker processes are an option of the Migrator API only (Migrator(workers=N)).
        for engine, rates in engines:
            best_m = max(rates, key=lambda x: x.per_second)
            ratio = best_m.per_second / best_r.per_second
            print(
                f"{r.store:<8}{r.source:<10}{engine:<12}{r.n:>9,}{best_m.per_second:>12,.0f}"
                f"{best_r.per_second:>10,.0f}{ratio:>13.2f}{best_m.cpu_us:>20.1f}"
                f"{best_r.cpu_us:>6.1f}   "
                f">= {target:,.0f}/s: {verdict(best_m.per_second, target)}; "
                f"ratio >= {RATIO_TARGET}: {verdict(ratio, RATIO_TARGET)}"
            )
        rounds_m = ", ".join(f"{x.per_second:,.0f}" for x in r.migrate)
        rounds_r = ", ".join(f"{x.per_second:,.0f}" for x in r.raw)
        line = f"{'':<18}rounds: migrate [{rounds_m}]  raw [{rounds_r}]"
        if r.pooled:
            line += f"  with workers [{', '.join(f'{x.per_second:,.0f}' for x in r.pooled)}]"
        print(line)
        print(
            f"{'':<18}of migrate's CPU, open ({r.source}) + seal (KMS v2) alone: "
            f"{min(r.crypto_us):.1f} us/obj"
        )
        if r.pooled:
            best_p = max(r.pooled, key=lambda x: x.per_second)
            print(
                f"{'':<18}with workers, this process's own CPU: {best_p.own_cpu_us:.1f} us/obj "
                f"(the workers': {best_p.cpu_us - best_p.own_cpu_us:.1f})"
            )
    print(
        "engines: '1 thread' is what `kinko cluster migrate` and the lifecycle controller run; "
        "worker processes are an option of the Migrator API only"
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"peak RSS of this process: {peak_mb:.0f} MB "
        f"(target < {RSS_TARGET_MB:.0f} MB: {verdict(peak_mb, RSS_TARGET_MB, below=True)})"
    )
    if workers:
        print(f"peak RSS of the largest worker process: {child_mb:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n-sqlite", type=int, default=100_000)
    parser.add_argument("--n-etcd", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="folder for SQLite and etcd data")
    parser.add_argument("--only", choices=["sqlite", "etcd"], default=None)
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes for the second engine (0: none)"
    )
    parser.add_argument(
        "--from",
        dest="sources",
        choices=SOURCES,
        action="append",
        help="the old provider of a migration to measure (repeatable; default: all three)",
    )
    args = parser.parse_args()

    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.dir)))
        # A short socket path of its own: unix socket paths are limited to about 100 bytes.
        socket_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kinko-kms-")))
        sources = args.sources or list(SOURCES)
        for sock in ("kms.sock", "kms-old.sock"):
            server = KmsV2Server(LocalKeyPlugin(os.urandom(32)), f"unix://{socket_dir / sock}")
            server.start()
            stack.callback(server.stop, 1.0)
        if args.only in (None, "sqlite"):
            sqlite = SqliteStore(folder / "cluster.db")
            stack.callback(sqlite.close)

            def compact_sqlite() -> None:
                sqlite.compact(sqlite.revision)

            for from_ in sources:
                results.append(
                    bench_store(
                        "sqlite",
                        sqlite,
                        compact_sqlite,
                        args.n_sqlite,
                        args.rounds,
                        folder,
                        socket_dir,
                        args.workers,
                        from_,
                    )
                )
        if args.only in (None, "etcd"):
            url = stack.enter_context(local_etcd(folder))
            if url is not None:
                client = EtcdClient([url], timeout=60.0)
                stack.callback(client.close)
                etcd = EtcdStore(client)

                def compact_etcd() -> None:
                    etcd.compact(etcd.range(PREFIX, limit=1).revision)

                for from_ in sources:
                    results.append(
                        bench_store(
                            "etcd",
                            etcd,
                            compact_etcd,
                            args.n_etcd,
                            args.rounds,
                            folder,
                            socket_dir,
                            args.workers,
                            from_,
                        )
                    )
        # Before etcd is stopped and reaped: only the workers are children waited for yet.
        child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print_report(results, args.rounds, args.workers, child_mb)


if __name__ == "__main__":
    main()
