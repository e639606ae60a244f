"""Crash safety of the migration: SIGKILL the migrating process at random points, restart.

A child process (``migrate_child.py``) migrates 3,000 Secrets from aescbc to KMS v2 (a real
LocalKeyPlugin served by KmsV2Server on a unix socket, reached over gRPC) on a SQLite file or
on a real etcd. The test kills it with SIGKILL at least ten times while it migrates — half the
time after a random number of committed batches seen in the checkpoint record, half the time
after a random delay from the moment the run claimed the record — and checks after every
kill that the record says exactly what the store holds: every object up to its ``last_key`` is
under KMS v2, every one after it still under aescbc, and ``rewritten`` is their count. Then it
lets a last run finish: no object lost, none undecryptable, every value current, and every
object rewritten exactly once over all the runs.

The workers variant runs the same child with ``Migrator(workers=1, await_workers=True)``: the
open and seal run in a spawned process, so the kills land while that process starts or seals.
After every kill it also checks that the killed child's own processes (the worker, and
multiprocessing's helper) exit by themselves: nothing is left behind.

Randomness is seeded (``KINKO_TEST_SEED`` or a fresh seed, printed); deadlines are generous
and only bound a hang, nothing is timed.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kinko.cluster.encryption import EncryptedObjects, EncryptionConfigSource
from kinko.cluster.migrate import CHECKPOINT_PREFIX, MigrationState
from kinko.kms.plugin import LocalKeyPlugin
from kinko.kms.server import KmsV2Server
from kinko.store.etcd import EtcdClient
from kinko.store.etcd_store import EtcdStore
from kinko.store.port import MAX_TXN_OPS, Put, Store
from kinko.store.sqlite import SqliteStore

N = 3000
KILLS = 10
BATCH = 10
PREFIX = b"/registry/secrets/"
RECORD = CHECKPOINT_PREFIX + b"secrets"
CHILD = Path(__file__).with_name("migrate_child.py")
#: Runs migrate_child.py with every Migrator it makes using one worker process, waited for.
WORKERS_CHILD = """
import functools, runpy, sys
from kinko.cluster.migrate import Migrator
Migrator.__init__ = functools.partialmethod(Migrator.__init__, workers=1, await_workers=True)
child = sys.argv.pop(1)
sys.argv[0] = child
runpy.run_path(child, run_name="__main__")
"""
#: Bounds a hang only: a child that neither claims the record nor exits within this is broken.
WAIT_S = 120.0
SECRET = base64.b64encode(bytes(range(32))).decode()
CBC = f"      - aescbc:\n          keys:\n            - name: k1\n              secret: {SECRET}\n"


def kms(socket: Path) -> str:
    return (
        "      - kms:\n          apiVersion: v2\n          name: crash\n"
        f"          endpoint: unix://{socket}\n          timeout: 10s\n"
    )


def config(*providers: str) -> str:
    return (
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
        "resources:\n  - resources: [secrets]\n    providers:\n" + "".join(providers)
    )


def plaintext(key: bytes) -> bytes:
    return (
        b'{"kind":"Secret","metadata":{"name":"' + key + b'"},"data":{"k":"' + b"x" * 400 + b'"}}'
    )


def key_of(i: int) -> bytes:
    return f"/registry/secrets/ns{i % 7}/secret-{i:05d}".encode()


@dataclass
class Setup:
    store: Store
    child_args: list[str]
    folder: Path
    socket: Path
    workers: bool = False
    #: Processes of killed children seen (and seen to exit).
    orphans_checked: int = 0


@pytest.fixture
def plugin_socket() -> Iterator[Path]:
    """A KMS v2 plugin (LocalKeyPlugin) on a short unix socket path."""
    folder = Path(tempfile.mkdtemp(prefix="kinko-crash-"))
    socket = folder / "kms.sock"
    server = KmsV2Server(LocalKeyPlugin(os.urandom(32)), f"unix://{socket}")
    server.start()
    try:
        yield socket
    finally:
        server.stop(grace=1.0)
        shutil.rmtree(folder, ignore_errors=True)


def fill(store: Store, folder: Path) -> None:
    path = folder / "aescbc.yaml"
    path.write_text(config(CBC))
    source = EncryptionConfigSource(path, poll_kms=False)
    chain = source.chain_for("secrets")
    ops: list[Put] = []
    for i in range(N):
        key = key_of(i)
        ops.append(Put(key, chain.seal(plaintext(key), aad=key), expect=0))
        if len(ops) == MAX_TXN_OPS:
            assert store.txn(ops).succeeded
            ops = []
    if ops:
        assert store.txn(ops).succeeded
    source.close()


def record(store: Store) -> MigrationState | None:
    entry = store.get(RECORD)
    return MigrationState.from_entry(entry) if entry is not None else None


def start_child(setup: Setup) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", WORKERS_CHILD] if setup.workers else [sys.executable]
    return subprocess.Popen(
        [*command, str(CHILD), "--config", str(setup.folder / "kms.yaml"), *setup.child_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_round(setup: Setup, rng: random.Random) -> bool:
    """Start a child and SIGKILL it at a random point; True if it was killed mid-run."""
    before = record(setup.store)
    previous_run = before.run_id if before is not None else None
    child = start_child(setup)
    try:
        deadline = time.monotonic() + WAIT_S
        by_batches = rng.random() < 0.5
        batches = rng.randint(0, 6)
        delay = rng.uniform(0.0, 0.05)
        claimed: MigrationState | None = None
        while True:
            if child.poll() is not None:
                return False  # it finished (or failed) before the kill point
            if time.monotonic() > deadline:
                pytest.fail(f"the migrating child neither claimed nor exited in {WAIT_S}s")
            now = record(setup.store)
            if now is not None and now.run_id != previous_run:
                if claimed is None:
                    claimed = now
                    if not by_batches:
                        time.sleep(delay)
                        break
                # Every batch here is BATCH stale objects (fewer at a page's end).
                if by_batches and -(-(now.done - claimed.done) // BATCH) >= batches:
                    break
            time.sleep(0.001)
        left = children_of(child.pid)
        child.kill()
        child.communicate(timeout=WAIT_S)
        # The worker reads EOF on its pipe and exits; nothing outlives the killed child.
        deadline = time.monotonic() + WAIT_S
        while any(alive(pid) for pid in left):
            if time.monotonic() > deadline:
                pytest.fail(f"processes {left} of the killed child still run after {WAIT_S}s")
            time.sleep(0.01)
        setup.orphans_checked += len(left)
        return True
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=WAIT_S)


def _stat(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # state, ppid, ...


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(entry.name)
            if fields is not None and int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def check_record_matches_store(store: Store) -> MigrationState:
    """The record names exactly what is committed: KMS up to last_key, aescbc after it."""
    state = record(store)
    assert state is not None
    kms_keys: list[bytes] = []
    cbc_keys: list[bytes] = []
    after = b""
    while True:
        page = store.range(PREFIX, start_after=after, limit=500)
        for entry in page.entries:
            if entry.value.startswith(b"k8s:enc:kms:v2:crash:"):
                kms_keys.append(entry.key)
            else:
                assert entry.value.startswith(b"k8s:enc:aescbc:v1:k1:"), entry.key
                cbc_keys.append(entry.key)
        if not page.more:
            break
        after = page.entries[-1].key
    assert len(kms_keys) + len(cbc_keys) == N
    assert len(kms_keys) == state.rewritten == state.done
    assert all(key <= state.last_key for key in kms_keys)
    assert all(key > state.last_key for key in cbc_keys)
    return state


def crash_and_finish(setup: Setup, seed: int) -> None:
    print(f"seed {seed} (set KINKO_TEST_SEED={seed} to repeat)")
    rng = random.Random(seed)
    fill(setup.store, setup.folder)
    (setup.folder / "kms.yaml").write_text(config(kms(setup.socket), CBC))
    kills = rounds = 0
    while kills < KILLS:
        rounds += 1
        assert rounds <= 4 * KILLS, f"only {kills} kills landed in {rounds} rounds (seed {seed})"
        killed = kill_round(setup, rng)
        state = check_record_matches_store(setup.store) if record(setup.store) else None
        if killed:
            kills += 1
            print(f"kill {kills}: record at {state.done if state else 0} of {N}")
        assert state is None or state.state != "done", (
            f"finished before {KILLS} kills (seed {seed})"
        )

    child = start_child(setup)
    out, err = child.communicate(timeout=WAIT_S)
    assert child.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["resumed"]
    # Over all runs, every object was rewritten exactly once: nothing redone, nothing skipped.
    assert (report["done"], report["rewritten"], report["unreadable"]) == (N, N, 0)
    state = check_record_matches_store(setup.store)
    assert state.state == "done"

    source = EncryptionConfigSource(setup.folder / "kms.yaml", poll_kms=False)
    try:
        objects = EncryptedObjects(setup.store, source)
        after = b""
        seen = 0
        while True:
            page = objects.list("secrets", PREFIX, limit=500, start_after=after)
            assert page.unreadable == ()
            for item in page.items:
                assert item.value.plaintext == plaintext(item.key)
                assert not item.value.stale
                assert item.value.provider == "kms"
                seen += 1
            if not page.more:
                break
            after = page.last_key
        assert seen == N
    finally:
        source.close()


def seed() -> int:
    return int(os.environ.get("KINKO_TEST_SEED") or random.SystemRandom().randrange(2**32))


@pytest.mark.slow
def test_sigkill_at_random_points_on_sqlite(tmp_path: Path, plugin_socket: Path) -> None:
    db = tmp_path / "cluster.db"
    with SqliteStore(db, busy_timeout=30.0) as store:
        setup = Setup(store, ["--sqlite", str(db), "--batch", str(BATCH)], tmp_path, plugin_socket)
        crash_and_finish(setup, seed())


@pytest.mark.slow
def test_sigkill_at_random_points_on_sqlite_with_a_worker(
    tmp_path: Path, plugin_socket: Path
) -> None:
    db = tmp_path / "cluster.db"
    with SqliteStore(db, busy_timeout=30.0) as store:
        setup = Setup(
            store,
            ["--sqlite", str(db), "--batch", str(BATCH)],
            tmp_path,
            plugin_socket,
            workers=True,
        )
        crash_and_finish(setup, seed())
    assert setup.orphans_checked > 0, "no kill found a worker process to check"


@pytest.mark.slow
@pytest.mark.etcd
def test_sigkill_at_random_points_on_etcd(
    tmp_path: Path, plugin_socket: Path, etcd_endpoints: list[str]
) -> None:
    with EtcdClient(etcd_endpoints, timeout=30.0) as client:
        setup = Setup(
            EtcdStore(client),
            ["--etcd", *etcd_endpoints, "--batch", str(BATCH)],
            tmp_path,
            plugin_socket,
        )
        crash_and_finish(setup, seed())


@pytest.mark.slow
@pytest.mark.etcd
def test_sigkill_at_random_points_on_etcd_with_a_worker(
    tmp_path: Path, plugin_socket: Path, etcd_endpoints: list[str]
) -> None:
    with EtcdClient(etcd_endpoints, timeout=30.0) as client:
        setup = Setup(
            EtcdStore(client),
            ["--etcd", *etcd_endpoints, "--batch", str(BATCH)],
            tmp_path,
            plugin_socket,
            workers=True,
        )
        crash_and_finish(setup, seed())
    assert setup.orphans_checked > 0, "no kill found a worker process to check"
