"""The migration engine with worker processes (``Migrator(workers=N)``).

The workers are real spawned processes: each reads the same EncryptionConfiguration file and
reaches the KMS v2 plugin (LocalKeyPlugin served by KmsV2Server) over gRPC on a real unix
socket, as in production. The store is a MemoryStore in the test's process, wrapped to slip
user writes in before a txn. Every test checks that no worker process outlives the run.
"""

from __future__ import annotations

import base64
import logging
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kinko.cluster.encryption import EncryptedObjects, EncryptionConfigSource
from kinko.cluster.migrate import CHECKPOINT_PREFIX, MigrationState, Migrator
from kinko.cluster.migrate_workers import rebuild_error
from kinko.errors import (
    Conflict,
    InvalidArgument,
    KinkoError,
    PluginError,
    StoreUnavailable,
)
from kinko.kms.plugin import LocalKeyPlugin
from kinko.kms.server import KmsV2Server
from kinko.store.memory import MemoryStore
from kinko.store.port import Entry, Op, Page, Put, TxnResult, Watch

SECRET_1 = base64.b64encode(bytes(range(32))).decode()
SECRET_2 = base64.b64encode(bytes(range(2, 34))).decode()
PREFIX = b"/registry/secrets/"
RECORD = CHECKPOINT_PREFIX + b"secrets"
N = 600
BATCH = 25
PAGE = 100


def aescbc(name: str, secret: str) -> str:
    return (
        f"      - aescbc:\n          keys:\n"
        f"            - name: {name}\n              secret: {secret}\n"
    )


CBC_1 = aescbc("k1", SECRET_1)
CBC_2 = aescbc("k2", SECRET_2)
KMS_V1 = (
    "      - kms:\n          name: old\n          endpoint: unix:///tmp/kinko-no-such-v1.sock\n"
)


def kms(socket: Path) -> str:
    return (
        "      - kms:\n          apiVersion: v2\n          name: plug\n"
        f"          endpoint: unix://{socket}\n"
    )


def config(*providers: str) -> str:
    return (
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
        "resources:\n  - resources: [secrets]\n    providers:\n" + "".join(providers)
    )


def plaintext(key: bytes) -> bytes:
    return b'{"kind":"Secret","metadata":{"name":"' + key + b'"}}'


def not_an_object(plaintext: bytes) -> bool:
    return not plaintext.startswith(b"{")


@dataclass
class Hooked:
    """A MemoryStore that runs ``before_txn`` before each txn (a user writing meanwhile)."""

    inner: MemoryStore
    before_txn: list[object] = field(default_factory=list)
    txns: int = 0
    fail_at: int | None = None

    def get(self, key: bytes) -> Entry | None:
        return self.inner.get(key)

    def range(
        self, prefix: bytes, *, start_after: bytes = b"", limit: int = 500, revision: int = 0
    ) -> Page:
        return self.inner.range(prefix, start_after=start_after, limit=limit, revision=revision)

    def txn(self, ops: Sequence[Op]) -> TxnResult:
        self.txns += 1
        if self.fail_at is not None and self.txns == self.fail_at:
            raise StoreUnavailable("store sqlite:cluster.db: disk I/O error")
        for hook in self.before_txn:
            hook(self.txns, ops)  # type: ignore[operator]
        return self.inner.txn(ops)

    def watch(self, prefix: bytes, *, after_revision: int) -> Watch:
        return self.inner.watch(prefix, after_revision=after_revision)


class Env:
    """A config file, the test's own source over it, a plugin on a socket and a store."""

    def __init__(self, folder: Path, socket: Path) -> None:
        self.path = folder / "encryption.yaml"
        self.socket = socket
        self.path.write_text(config(CBC_1))
        self.source = EncryptionConfigSource(self.path, poll_kms=False)
        self.store = Hooked(MemoryStore())
        self.objects = EncryptedObjects(self.store, self.source)

    def configure(self, text: str) -> None:
        self.path.write_text(text)
        assert self.source.reload_if_changed().changed

    def fill(self, n: int = N) -> list[bytes]:
        keys = [f"/registry/secrets/ns{i % 3}/obj-{i:05d}".encode() for i in range(n)]
        for key in keys:
            self.objects.write("secrets", key, plaintext(key), expect=0)
        return keys

    def migrator(self, workers: int = 1, **options: object) -> Migrator:
        return Migrator(
            self.store,
            self.source,
            resources=["secrets"],
            batch=BATCH,
            page=PAGE,
            workers=workers,
            await_workers=True,
            **options,  # type: ignore[arg-type]
        )

    def check_current(self, keys: Sequence[bytes]) -> None:
        for key in keys:
            value = self.objects.read("secrets", key)
            assert value.plaintext == plaintext(key), key
            assert not value.stale, key

    def record(self) -> MigrationState:
        entry = self.store.get(RECORD)
        assert entry is not None
        return MigrationState.from_entry(entry)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    # A short socket path of its own: unix socket paths are limited to about 100 bytes.
    folder = Path(tempfile.mkdtemp(prefix="kinko-mw-"))
    socket = folder / "kms.sock"
    server = KmsV2Server(LocalKeyPlugin(os.urandom(32)), f"unix://{socket}")
    server.start()
    environment = Env(tmp_path, socket)
    try:
        yield environment
    finally:
        environment.source.close()
        server.stop(grace=1.0)
        shutil.rmtree(folder, ignore_errors=True)
    # Every exit path of every run stopped its workers.
    assert multiprocessing.active_children() == []


def sealed_counts(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    """(by workers, by the migrator) from the runs' log lines."""
    workers = here = 0
    for record in caplog.records:
        found = re.search(
            r"(\d+) object\(s\) opened and sealed by .*, (\d+) by", record.getMessage()
        )
        if found is not None:
            workers += int(found[1])
            here += int(found[2])
    return workers, here


# --------------------------------------------------------------------------- outcomes


def test_workers_rewrite_every_stale_value_exactly_once(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    keys = env.fill()
    env.configure(config(kms(env.socket), CBC_1))
    rewritten: list[bytes] = []

    def count(number: int, ops: Sequence[Op]) -> None:
        rewritten.extend(op.key for op in ops if op.key != RECORD)

    env.store.before_txn.append(count)
    with caplog.at_level(logging.INFO, logger="kinko.cluster.migrate"):
        report = env.migrator(workers=2).run("secrets")
    assert (report.done, report.rewritten, report.skipped, report.unreadable) == (N, N, 0, 0)
    assert sorted(rewritten) == sorted(keys)
    env.check_current(keys)
    by_workers, _ = sealed_counts(caplog)
    assert by_workers > 0
    again = env.migrator().run("secrets")
    assert (again.rewritten, again.skipped) == (0, N)


def test_workers_give_the_same_report_and_batches_as_one_thread(env: Env) -> None:
    keys = env.fill()
    garbage = b"/registry/secrets/ns0/obj-00007"
    env.store.inner.txn([Put(garbage, b"k8s:enc:aescbc:v1:gone:" + bytes(48), expect=0)])
    env.configure(config(CBC_2, CBC_1))
    sizes: dict[int, list[int]] = {0: [], 1: []}
    reports = {}
    for workers in (0, 1):
        env.store.before_txn[:] = [lambda n, ops, w=workers: sizes[w].append(len(ops))]
        reports[workers] = env.migrator(workers=workers).run("secrets")
        env.configure(config(CBC_1, CBC_2) if workers == 0 else config(CBC_2, CBC_1))
    one, pooled = reports[0], reports[1]
    assert (pooled.done, pooled.rewritten, pooled.unreadable, pooled.unreadable_keys) == (
        one.done,
        one.rewritten,
        one.unreadable,
        one.unreadable_keys,
    )
    assert sizes[1] == sizes[0]
    assert len(keys) == N


def test_a_value_opening_to_no_object_is_unreadable_and_kept(env: Env) -> None:
    keys = env.fill(60)
    before = {key: env.store.get(key) for key in keys}
    env.configure(config(CBC_2, CBC_1))
    report = env.migrator(is_object=not_an_object).run("secrets")
    assert (report.rewritten, report.unreadable) == (0, 60)
    assert {key: env.store.get(key) for key in keys} == before


def test_a_concurrent_write_wins_with_workers(env: Env) -> None:
    keys = env.fill()
    env.configure(config(kms(env.socket), CBC_1))
    user_key = sorted(keys)[BATCH + 3]

    def user_writes(number: int, ops: Sequence[Op]) -> None:
        if number == 3:
            entry = env.store.get(user_key)
            assert entry is not None
            env.objects.write("secrets", user_key, b'{"user":1}', expect=entry.mod_revision)

    env.store.before_txn.append(user_writes)
    env.store.txns = 0  # txn 1 claims the record, txn 3 carries the user's key
    report = env.migrator().run("secrets")
    assert report.conflicts == 1
    assert report.rewritten == N - 1
    assert env.objects.read("secrets", user_key).plaintext == b'{"user":1}'


# --------------------------------------------------------------------------- targets


def test_a_new_configuration_mid_run_restarts_and_ends_under_it(env: Env) -> None:
    keys = env.fill()
    env.configure(config(CBC_2, CBC_1))
    changed = False

    def change(done: int, total: int | None, rewritten: int) -> None:
        nonlocal changed
        if done >= 2 * PAGE and not changed:
            changed = True
            env.configure(config(kms(env.socket), CBC_2, CBC_1))

    report = env.migrator().run("secrets", progress=change)
    assert report.restarts == 1
    assert report.target == env.migrator().target("secrets")
    assert (report.done, report.rewritten) == (N, N)
    env.check_current(keys)


def test_a_worker_on_another_configuration_seals_nothing_committed(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    keys = env.fill()
    env.configure(config(CBC_2, CBC_1))
    # The file moves on, but this process does not reload it: the workers read the newer
    # file, so every chunk they seal is under another target and is sealed here again.
    env.path.write_text(config(kms(env.socket), CBC_2, CBC_1))
    with caplog.at_level(logging.INFO, logger="kinko.cluster.migrate"):
        report = env.migrator().run("secrets")
    assert (report.done, report.rewritten) == (N, N)
    assert sealed_counts(caplog) == (0, N)
    for key in keys:
        stored = env.store.get(key)
        assert stored is not None
        assert stored.value.startswith(b"k8s:enc:aescbc:v1:k2:")


# --------------------------------------------------------------------------- failures


def test_an_error_of_the_work_in_a_worker_pauses_as_without_workers(env: Env) -> None:
    env.fill(60)
    # KMS v1 cannot write: the first seal raises InvalidArgument, in the worker.
    env.configure(config(KMS_V1, CBC_1))
    reasons = []
    for workers in (0, 1):
        with pytest.raises(InvalidArgument, match="read-only") as caught:
            env.migrator(workers=workers).run("secrets")
        assert type(caught.value) is InvalidArgument
        record = env.record()
        assert record.state == "paused"
        reasons.append(record.reason)
        assert record.rewritten == 0
    assert reasons[0] == reasons[1]


def test_a_worker_killed_mid_run_costs_speed_not_correctness(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    keys = env.fill()
    env.configure(config(kms(env.socket), CBC_1))
    rewritten: list[bytes] = []

    def kill_a_worker(done: int, total: int | None, written: int) -> None:
        if done >= PAGE:
            for child in multiprocessing.active_children():
                if child.pid is not None:
                    os.kill(child.pid, signal.SIGKILL)

    env.store.before_txn.append(
        lambda n, ops: rewritten.extend(op.key for op in ops if op.key != RECORD)
    )
    with caplog.at_level(logging.INFO, logger="kinko.cluster"):
        report = env.migrator().run("secrets", progress=kill_a_worker)
    assert (report.done, report.rewritten) == (N, N)
    assert sorted(rewritten) == sorted(keys)
    env.check_current(keys)
    assert any("dropped" in r.getMessage() for r in caplog.records)


def test_a_store_error_pauses_and_stops_the_workers(env: Env) -> None:
    env.fill()
    env.configure(config(kms(env.socket), CBC_1))
    env.store.txns = 0  # txn 1 claims the record, txns 2 and 3 commit, txn 4 fails
    env.store.fail_at = 4
    with pytest.raises(StoreUnavailable):
        env.migrator().run("secrets")
    env.store.fail_at = None
    record = env.record()
    assert record.state == "paused"
    assert record.done == 2 * BATCH
    report = env.migrator().run("secrets")
    assert report.resumed
    assert report.rewritten == N


@pytest.mark.parametrize("raised", [KeyboardInterrupt, RuntimeError])
def test_an_interrupt_in_the_caller_stops_the_workers(
    env: Env, raised: type[BaseException]
) -> None:
    env.fill()
    env.configure(config(kms(env.socket), CBC_1))

    def interrupt(done: int, total: int | None, rewritten: int) -> None:
        if done >= PAGE:
            raise raised()

    with pytest.raises(raised):
        env.migrator().run("secrets", progress=interrupt)
    assert multiprocessing.active_children() == []
    assert env.record().state == "running"  # not a KinkoError: not a pause


def test_another_migrator_taking_over_stops_this_one(env: Env) -> None:
    env.fill()
    env.configure(config(kms(env.socket), CBC_1))
    other = env.migrator(workers=0)

    def start_another(done: int, total: int | None, rewritten: int) -> None:
        if done >= PAGE:
            other.run("secrets")

    with pytest.raises(Conflict, match="another migration of secrets"):
        env.migrator().run("secrets", progress=start_another)
    assert env.record().state == "done"


# --------------------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    ("note", "cls"),
    [
        (("PluginError", "KMS plugin plug: unreachable", "SERVICE_UNAVAILABLE_ERR"), PluginError),
        (("InvalidArgument", "kms v1 provider old is read-only", "X"), InvalidArgument),
        # Classes with constructor arguments of their own come back as their plain ancestor.
        (("ConfigError", "providers[0]: bad", "X"), InvalidArgument),
        (("NoSuchError", "what", "X"), KinkoError),
        (("ValueError", "not ours", "X"), KinkoError),
    ],
)
def test_worker_errors_are_rebuilt_as_their_class(
    note: tuple[str, str, str], cls: type[KinkoError]
) -> None:
    error = rebuild_error(note)
    assert type(error) is cls
    assert str(error) == note[1]
    assert error.reason_code == note[2]


def test_bad_worker_options_are_invalid_argument(env: Env) -> None:
    with pytest.raises(InvalidArgument, match="workers: expected 0 to"):
        env.migrator(workers=-1)
    with pytest.raises(InvalidArgument, match="workers: expected 0 to"):
        env.migrator(workers=33)
    with pytest.raises(InvalidArgument, match="is_object"):
        env.migrator(is_object=lambda plaintext: True)
    with pytest.raises(InvalidArgument, match="with a path"):
        Migrator(env.store, env.source.state.chains, workers=1)  # type: ignore[arg-type]
