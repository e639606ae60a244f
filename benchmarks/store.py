"""Stores and the cluster service side by side: what encryption at rest costs per store.

Three sections, printed in one run, then a summary table:

1. **Store level.** For MemoryStore, SqliteStore and EtcdStore: txns/s and ops/s of a one-op
   txn (a create-if-absent Put) and of a 128-op txn, point gets/s and 100-key pages/s, each
   with its ratio to SQLite (``x sqlite``). Values are 1 KiB; the best round is kept.
2. **Secret create through the service.** ``ClusterService.create`` of a typical small Secret
   (four keys, about 200 bytes of data) with the identity, aescbc and KMS v2 providers, on
   SQLite (a fresh file per provider) and on etcd. The providers take turns one create at a
   time (each create timed on its own). Prints the median round, and the ratios
   KMS v2 / identity (target >= 0.95) and aescbc / identity as the median of the rounds'
   ratios, in wall-clock throughput and in this process's CPU time per create.
3. **Cold read.** N Secrets are stored (100,000 on SQLite, 10,000 on etcd) with identity and
   with KMS v2, then read back with one LIST (``ClusterService.list``, no limit) through a
   *fresh* EncryptionConfigSource, i.e. an empty DEK cache, as after an API server restart.
   Rounds alternate the providers. Prints items/s and CPU per item, the ratio
   KMS v2 / identity (target >= 0.90, median of the rounds'), and the plugin's Decrypt
   calls during the LIST next to the number of distinct seeds in the stored values (target:
   calls <= seeds). The values are written by the service itself over a MemoryStore (so they
   are byte for byte what it would store, sealed with AAD = the storage key) and copied in
   128-op txns; a fresh source every N/``--seeds`` Secrets stands for an API server restart,
   so the data carries several seeds.

Five rounds by default, nine for the cold read (``--cold-rounds``): on this shared machine one
round's ratio of the cold read moves by up to 15 % between rounds of one run (0.849 to 1.008
in three runs on etcd), and one cold round is a single LIST (0.3 s of 10,000 Secrets on
etcd), so the median of nine is much steadier than the median of five for little time.

KMS v2 is production's path: a real ``LocalKeyPlugin`` served by ``KmsV2Server`` on a unix
socket and reached by ``EncryptionConfigSource`` over gRPC (``kms: apiVersion: v2``). The
plugin core is wrapped to count its calls.

SQLite runs on files in a temporary directory (``--dir`` chooses the disk) with the store's own
settings: WAL, ``synchronous=FULL``. etcd: the script starts a fresh single-member etcd-server
on loopback ports with its data in that directory (``$KINKO_ETCD_BIN`` or ``etcd`` on the
PATH) for every section and stops it when the section ends; without the binary the etcd
parts are skipped with a note. ``--etcd URL`` (repeatable) points the store-level section at
another etcd instead; its keys go under a fresh prefix that is deleted afterwards.

The machine is shared and noisy: only the order of magnitude and the ratios mean much.

Usage: ``python benchmarks/store.py [--rounds N] [--cold-rounds N] [--seconds S]
[--create-seconds S] [--n-sqlite N] [--n-etcd N] [--seeds K] [--section store|create|cold]
[--dir DIR]``
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from kinko.cluster.encryption import EncryptionConfigSource
from kinko.cluster.service import ClusterService
from kinko.crypto.kmsv2 import decode_encrypted_object
from kinko.kms.plugin import LocalKeyPlugin
from kinko.kms.port import EncryptResult, KmsV2Api, StatusResult
from kinko.kms.server import KmsV2Server
from kinko.store.etcd import EtcdClient
from kinko.store.etcd_store import EtcdStore
from kinko.store.memory import MemoryStore
from kinko.store.port import MAX_TXN_OPS, Put, Store
from kinko.store.sqlite import SqliteStore

# Run as a script, this folder is first on sys.path; mypy names the module by the
# repository's layout instead.
if TYPE_CHECKING:
    from benchmarks._etcd import local_etcd
else:
    from _etcd import local_etcd

VALUE = bytes(1024)
CASES = ("txn 1 op", "txn 128 ops", "get", "range 100")
#: Ops per call of each case (a txn of 128 puts counts 128 ops).
OPS = {"txn 1 op": 1, "txn 128 ops": MAX_TXN_OPS, "get": 1, "range 100": 100}

PROVIDERS = ("identity", "aescbc", "kms v2")
COLD_PROVIDERS = ("identity", "kms v2")
KMS_NAME = "bench"
KMS_PREFIX = f"k8s:enc:kms:v2:{KMS_NAME}:".encode()
CREATE_TARGET = 0.95
COLD_TARGET = 0.90
SECTIONS = ("store", "create", "cold")


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


@dataclass(frozen=True)
class Rate:
    """Calls per wall-clock second, and this process's CPU microseconds per call.

    The CPU figure includes every thread of the process (gRPC, the in-process plugin) but not
    etcd's; it moves far less than the wall clock when other work shares the machine.
    """

    per_second: float
    cpu_us: float


def interleaved(
    providers: Sequence[str], fn: Callable[[str], object], seconds: float
) -> dict[str, Rate]:
    """Calls ``fn(provider)`` for each provider in turn, one call each, until ``seconds`` passed.

    Each call is timed on its own, so every provider sees the same machine: a burst of other
    work on this shared machine slows all of them alike instead of one whole round of one.
    The order rotates every cycle.
    """
    count = dict.fromkeys(providers, 0)
    wall = dict.fromkeys(providers, 0.0)
    cpu = dict.fromkeys(providers, 0.0)
    deadline = time.perf_counter() + seconds
    for cycle in itertools.count():
        shift = cycle % len(providers)
        for provider in [*providers[shift:], *providers[:shift]]:
            start, cpu_start = time.perf_counter(), time.process_time()
            fn(provider)
            cpu[provider] += time.process_time() - cpu_start
            wall[provider] += time.perf_counter() - start
            count[provider] += 1
        if time.perf_counter() >= deadline:
            break
    return {p: Rate(count[p] / wall[p], cpu[p] / count[p] * 1e6) for p in providers}


# ------------------------------------------------------------------------- 1. store level


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


def store_section(folder: Path, etcd_urls: list[str], rounds: int, seconds: float) -> None:
    prefix = f"/bench/{uuid.uuid4().hex}/".encode()
    sqlite = SqliteStore(folder / "store-level.db")
    stores: dict[str, Store] = {"memory": MemoryStore(), "sqlite": sqlite}
    client = EtcdClient(etcd_urls) if etcd_urls else None
    if client is not None:
        stores["etcd"] = EtcdStore(client)
    try:
        runs = {name: cases(store, prefix) for name, store in stores.items()}
        best = {(name, case): 0.0 for name in stores for case in CASES}
        for _ in range(rounds):
            for case in CASES:
                for name in stores:
                    rate = calls_per_second(runs[name][case], seconds)
                    best[name, case] = max(best[name, case], rate)
    finally:
        sqlite.close()
        if client is not None:
            client.delete_prefix(prefix)
            client.close()

    print(f"\n== 1. store level: 1 KiB values, best of {rounds} rounds of {seconds}s")
    print("x sqlite = ratio to SQLite")
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


# ------------------------------------------------------------------ the plugin and configs


class CountingKmsV2Api:
    """A KMS v2 plugin core that counts the calls it serves (thread-safe)."""

    def __init__(self, inner: KmsV2Api) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.counts = {"Status": 0, "Encrypt": 0, "Decrypt": 0}

    def _count(self, method: str) -> None:
        with self._lock:
            self.counts[method] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def status(self) -> StatusResult:
        self._count("Status")
        return self._inner.status()

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        self._count("Encrypt")
        return self._inner.encrypt(plaintext, uid=uid)

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        self._count("Decrypt")
        return self._inner.decrypt(ciphertext, uid=uid, key_id=key_id, annotations=annotations)


@dataclass(frozen=True)
class Configs:
    """One EncryptionConfiguration file per provider, all for ``secrets``."""

    paths: Mapping[str, Path]

    @classmethod
    def write(cls, folder: Path, endpoint: str) -> Configs:
        head = (
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
            "resources:\n- resources: [secrets]\n  providers:\n"
        )
        aes_key = base64.b64encode(os.urandom(32)).decode()
        texts = {
            "identity": head + "  - identity: {}\n",
            "aescbc": head
            + f"  - aescbc: {{keys: [{{name: k1, secret: {aes_key}}}]}}\n  - identity: {{}}\n",
            "kms v2": head
            + f"  - kms: {{apiVersion: v2, name: {KMS_NAME}, endpoint: '{endpoint}'}}\n"
            + "  - identity: {}\n",
        }
        paths: dict[str, Path] = {}
        for provider, text in texts.items():
            path = folder / f"encryption-{provider.replace(' ', '')}.yaml"
            path.write_text(text)
            path.chmod(0o600)
            paths[provider] = path
        return cls(paths)

    def source(self, provider: str) -> EncryptionConfigSource:
        """A fresh source: a new KMS session with an empty DEK cache, as in a new process."""
        return EncryptionConfigSource(self.paths[provider])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def secret_body(namespace: str, name: str) -> dict[str, object]:
    """A typical small Opaque Secret: four keys, about 200 bytes of data."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "bench"}},
        "type": "Opaque",
        "data": {
            "username": _b64(b"app-user"),
            "password": _b64(os.urandom(32)),
            "token": _b64(os.urandom(120)),
            "host": _b64(b"db.prod.svc.cluster.local:5432"),
        },
    }


def service(store: Store, source: EncryptionConfigSource) -> ClusterService:
    return ClusterService(store, source, clock=lambda: datetime.now(UTC))


# --------------------------------------------------------------------------------- etcd


@dataclass
class Backend:
    """One store kind of the service sections: opens a store for a label, with its closer."""

    name: str
    open: Callable[[str], tuple[Store, Callable[[], None]]]


def sqlite_backend(folder: Path) -> Backend:
    def open_(label: str) -> tuple[Store, Callable[[], None]]:
        store = SqliteStore(folder / f"{label.replace(' ', '')}.db")
        return store, store.close

    return Backend("sqlite", open_)


def backends(folder: Path, etcd_url: str | None) -> list[Backend]:
    """SQLite in ``folder``, and etcd at ``etcd_url`` when there is one."""
    return [sqlite_backend(folder)] + ([etcd_backend(etcd_url)] if etcd_url else [])


def etcd_backend(url: str) -> Backend:
    def open_(label: str) -> tuple[Store, Callable[[], None]]:
        client = EtcdClient([url], timeout=30.0)
        return EtcdStore(client), client.close

    return Backend("etcd", open_)


# ------------------------------------------------------------ 2. Secret create throughput


@dataclass
class Rounds:
    """Every round's Rate per provider; medians, and ratios to identity paired by round."""

    runs: dict[str, list[Rate]]

    def median(self, provider: str) -> float:
        return statistics.median(r.per_second for r in self.runs[provider])

    def cpu_us(self, provider: str) -> float:
        return statistics.median(r.cpu_us for r in self.runs[provider])

    def ratio(self, provider: str) -> float:
        """Wall-clock throughput of ``provider`` over identity's: the median of the rounds'
        ratios (each round measures both under the same conditions)."""
        pairs = zip(self.runs[provider], self.runs["identity"], strict=True)
        return statistics.median(mine.per_second / base.per_second for mine, base in pairs)

    def cpu_ratio(self, provider: str) -> float:
        """The same in CPU time: identity's CPU per item over ``provider``'s, median round."""
        pairs = zip(self.runs[provider], self.runs["identity"], strict=True)
        return statistics.median(base.cpu_us / mine.cpu_us for mine, base in pairs)

    def print(self, unit: str) -> None:
        for provider, runs in self.runs.items():
            each = ", ".join(f"{r.per_second:,.0f}" for r in runs)
            print(
                f"{provider:<9} {self.median(provider):>9,.0f} {unit}/s  "
                f"{self.cpu_us(provider):>7,.1f} CPU us/{unit}   (rounds: {each})"
            )


def create_section(backend: Backend, configs: Configs, rounds: int, seconds: float) -> Rounds:
    """Rounds of interleaved creates, ``seconds`` per provider per round."""
    stores: dict[str, tuple[Store, Callable[[], None]]] = {}
    sources: dict[str, EncryptionConfigSource] = {}
    runs: dict[str, list[Rate]] = {p: [] for p in PROVIDERS}
    try:
        for provider in PROVIDERS:
            # A fresh SQLite file per provider; on etcd, a namespace per provider.
            stores[provider] = backend.open(f"create-{provider}")
            sources[provider] = configs.source(provider)
        services = {p: service(stores[p][0], sources[p]) for p in PROVIDERS}
        namespaces = {p: f"create-{p.replace(' ', '')}" for p in PROVIDERS}
        counter = itertools.count()
        for provider in PROVIDERS:
            # Warm up: the KMS session's first Status and Encrypt, the store's connections.
            ns = namespaces[provider]
            for _ in range(20):
                services[provider].create("secrets", ns, secret_body(ns, f"w{next(counter):09d}"))
        template = secret_body("x", "x")

        def create(provider: str) -> None:
            ns = namespaces[provider]
            body = dict(template)
            body["metadata"] = {
                "name": f"s{next(counter):09d}",
                "namespace": ns,
                "labels": {"app": "bench"},
            }
            services[provider].create("secrets", ns, body)

        for _ in range(rounds):
            runs_of_round = interleaved(PROVIDERS, create, seconds * len(PROVIDERS))
            for provider, rate in runs_of_round.items():
                runs[provider].append(rate)
    finally:
        for source in sources.values():
            source.close()
        for _, close in stores.values():
            close()
    return Rounds(runs)


def print_create(backend: str, result: Rounds, rounds: int, seconds: float) -> None:
    print(
        f"\n== 2. Secret create through ClusterService on {backend}: providers interleaved, "
        f"median of {rounds} rounds of {seconds}s each"
    )
    result.print("create")
    for provider in ("kms v2", "aescbc"):
        ratio = result.ratio(provider)
        target = f"  ({_target(ratio, CREATE_TARGET)})" if provider == "kms v2" else ""
        print(
            f"{provider} / identity = {ratio:.3f}{target}; "
            f"in CPU time {result.cpu_ratio(provider):.3f}"
        )


def _target(ratio: float, target: float) -> str:
    verdict = "met" if ratio >= target else "MISSED"
    return f"target >= {target:.2f}: {verdict}"


# --------------------------------------------------------------------------- 3. cold read


@dataclass
class ColdResult:
    n: int
    seeds: int
    rounds: Rounds
    decrypts: list[int]
    misses: list[int]


def populate(
    store: Store, configs: Configs, provider: str, namespace: str, n: int, segments: int
) -> None:
    """Store ``n`` Secrets as ClusterService writes them, one fresh source per segment.

    Each segment is created through the service over a MemoryStore (the real chain seals with
    AAD = the storage key) and copied into ``store`` in 128-op create-if-absent txns.
    """
    per_segment = -(-n // segments)
    done = 0
    while done < n:
        count = min(per_segment, n - done)
        source = configs.source(provider)
        try:
            memory = MemoryStore(history=count + 10)
            svc = service(memory, source)
            for i in range(done, done + count):
                svc.create("secrets", namespace, secret_body(namespace, f"s{i:07d}"))
        finally:
            source.close()
        prefix = f"/registry/secrets/{namespace}/".encode()
        start = b""
        while True:
            page = memory.range(prefix, start_after=start, limit=MAX_TXN_OPS)
            if page.entries:
                result = store.txn([Put(e.key, e.value, expect=0) for e in page.entries])
                assert result.succeeded, "a cold-read key existed already"
                start = page.entries[-1].key
            if not page.more:
                break
        done += count


def distinct_seeds(store: Store, namespace: str) -> int:
    """The number of distinct wrapped seeds among the KMS v2 values under ``namespace``."""
    prefix = f"/registry/secrets/{namespace}/".encode()
    seeds: set[bytes] = set()
    start, revision = b"", 0
    while True:
        page = store.range(prefix, start_after=start, limit=1000, revision=revision)
        revision = page.revision
        for entry in page.entries:
            assert entry.value.startswith(KMS_PREFIX), "a cold-read value is not KMS v2"
            obj = decode_encrypted_object(entry.value[len(KMS_PREFIX) :])
            seeds.add(obj.encrypted_dek_source)
        if not page.more:
            return len(seeds)
        start = page.entries[-1].key


def cold_section(
    backend: Backend,
    configs: Configs,
    plugin: CountingKmsV2Api,
    n: int,
    segments: int,
    rounds: int,
) -> ColdResult:
    namespaces = {p: f"cold-{p.replace(' ', '')}" for p in COLD_PROVIDERS}
    started = time.perf_counter()
    seeds = 0
    for provider in COLD_PROVIDERS:
        store, close = backend.open(namespaces[provider])
        try:
            populate(store, configs, provider, namespaces[provider], n, segments)
            if provider == "kms v2":
                seeds = distinct_seeds(store, namespaces[provider])
        finally:
            close()
    print(
        f"\n(stored {n:,} Secrets per provider on {backend.name} "
        f"in {time.perf_counter() - started:.0f}s)"
    )
    runs: dict[str, list[Rate]] = {p: [] for p in COLD_PROVIDERS}
    decrypts: list[int] = []
    misses: list[int] = []
    for r in range(rounds):
        order = COLD_PROVIDERS if r % 2 == 0 else COLD_PROVIDERS[::-1]
        for provider in order:
            # Fresh state, as a new API server process: a new store connection, a new source
            # (a new KMS session: an empty DEK cache, its first Status and Encrypt included).
            store, close = backend.open(namespaces[provider])
            before = plugin.snapshot()
            start, cpu = time.perf_counter(), time.process_time()
            source = configs.source(provider)
            try:
                listed = service(store, source).list("secrets", namespaces[provider])
                elapsed = time.perf_counter() - start
                cpu_us = (time.process_time() - cpu) / n * 1e6
                session = source.kms_v2_session(KMS_NAME)
                stats = session.cache_stats() if session is not None else None
            finally:
                source.close()
                close()
            assert len(listed.items) == n, f"listed {len(listed.items)} of {n}"
            assert not listed.unreadable, "a cold read found unreadable values"
            runs[provider].append(Rate(n / elapsed, cpu_us))
            if provider == "kms v2":
                assert stats is not None
                decrypts.append(plugin.snapshot()["Decrypt"] - before["Decrypt"])
                misses.append(stats.misses)
    return ColdResult(n, seeds, Rounds(runs), decrypts, misses)


def print_cold(backend: str, result: ColdResult, rounds: int) -> None:
    print(
        f"== 3. cold read of {result.n:,} Secrets on {backend} "
        f"(one LIST, fresh source): median of {rounds} rounds"
    )
    result.rounds.print("item")
    ratio = result.rounds.ratio("kms v2")
    print(
        f"kms v2 / identity = {ratio:.3f}  ({_target(ratio, COLD_TARGET)}); "
        f"in CPU time {result.rounds.cpu_ratio('kms v2'):.3f}"
    )
    ok = "met" if max(result.decrypts) <= result.seeds else "MISSED"
    print(
        f"plugin Decrypt calls per cold LIST: {result.decrypts} (cache misses {result.misses}); "
        f"distinct seeds stored: {result.seeds}  (target calls <= seeds: {ok})"
    )


# --------------------------------------------------------------------------------- main


def summary(creates: Mapping[str, Rounds], colds: Mapping[str, ColdResult], calls: str) -> None:
    backends = list(dict.fromkeys([*creates, *colds]))
    if not backends:
        return
    print("\n== summary (wall clock; CPU-time ratios in brackets)")
    print(f"{'':<38}" + "".join(f"{name:>18}" for name in backends))

    def row(label: str, cell: Callable[[str], str]) -> None:
        print(f"{label:<38}" + "".join(f"{cell(name):>18}" for name in backends))

    def rate(results: Mapping[str, Rounds], provider: str) -> Callable[[str], str]:
        def cell(name: str) -> str:
            result = results.get(name)
            return f"{result.median(provider):,.0f}/s" if result else "-"

        return cell

    def ratio(results: Mapping[str, Rounds], provider: str) -> Callable[[str], str]:
        def cell(name: str) -> str:
            result = results.get(name)
            if result is None:
                return "-"
            return f"{result.ratio(provider):.3f} [{result.cpu_ratio(provider):.3f}]"

        return cell

    if creates:
        for provider in PROVIDERS:
            row(f"create {provider}", rate(creates, provider))
        row(f"create kms v2 / identity (>= {CREATE_TARGET})", ratio(creates, "kms v2"))
        row("create aescbc / identity", ratio(creates, "aescbc"))
    if colds:
        lists = {name: cold.rounds for name, cold in colds.items()}
        row("cold LIST of N", lambda name: f"{colds[name].n:,}" if name in colds else "-")
        for provider in COLD_PROVIDERS:
            row(f"cold LIST {provider}", rate(lists, provider))
        row(f"cold kms v2 / identity (>= {COLD_TARGET})", ratio(lists, "kms v2"))
        row(
            "cold Decrypt calls (max) / seeds",
            lambda name: (
                f"{max(colds[name].decrypts)} / {colds[name].seeds}" if name in colds else "-"
            ),
        )
    print(f"plugin calls served in this run: {calls}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--etcd", action="append", default=[], help="etcd endpoint URL for the store section"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds of the create and cold sections"
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="per store-level case")
    parser.add_argument("--create-seconds", type=float, default=2.0, help="per create round")
    parser.add_argument("--cold-rounds", type=int, default=9, help="rounds of the cold read")
    parser.add_argument("--n-sqlite", type=int, default=100_000)
    parser.add_argument("--n-etcd", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=10, help="writer restarts in cold data")
    parser.add_argument(
        "--section", action="append", choices=SECTIONS, help="run only these (repeatable)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="folder for SQLite and etcd data")
    args = parser.parse_args()
    sections = set(args.section or SECTIONS)

    creates: dict[str, Rounds] = {}
    colds: dict[str, ColdResult] = {}
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.dir)))
        # A short path of its own: a unix socket path is limited to 107 bytes.
        sock_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="kinko-bench-"))
        endpoint = f"unix://{sock_dir}/kms.sock"
        plugin = CountingKmsV2Api(LocalKeyPlugin(os.urandom(32)))
        stack.enter_context(KmsV2Server(plugin, endpoint))
        configs = Configs.write(folder, endpoint)

        def section_etcd(section: str, section_stack: contextlib.ExitStack) -> str | None:
            """A fresh etcd member for one section, stopped when the section ends: the
            store-level section alone leaves some 200 MB of keys, and the snapshots and
            backend commits they cause would slow and disturb the next section."""
            data = folder / f"etcd-{section}"
            data.mkdir()
            return section_stack.enter_context(local_etcd(data))

        if "store" in sections:
            with contextlib.ExitStack() as section_stack:
                etcd_url = None if args.etcd else section_etcd("store", section_stack)
                store_etcd = args.etcd or ([etcd_url] if etcd_url else [])
                store_section(folder, store_etcd, args.rounds, args.seconds)
        if "create" in sections:
            with contextlib.ExitStack() as section_stack:
                etcd_url = section_etcd("create", section_stack)
                for backend in backends(folder, etcd_url):
                    result = create_section(backend, configs, args.rounds, args.create_seconds)
                    creates[backend.name] = result
                    print_create(backend.name, result, args.rounds, args.create_seconds)
        if "cold" in sections:
            sizes = {"sqlite": args.n_sqlite, "etcd": args.n_etcd}
            with contextlib.ExitStack() as section_stack:
                etcd_url = section_etcd("cold", section_stack)
                for backend in backends(folder, etcd_url):
                    n = sizes[backend.name]
                    cold = cold_section(backend, configs, plugin, n, args.seeds, args.cold_rounds)
                    colds[backend.name] = cold
                    print_cold(backend.name, cold, args.cold_rounds)
        counts = ", ".join(f"{method} {n}" for method, n in plugin.snapshot().items())
    summary(creates, colds, counts)


if __name__ == "__main__":
    main()
