"""The migration engine over MemoryStore with real provider chains.

Chains come from EncryptionConfiguration text in a temp file, read by EncryptionConfigSource;
the KMS v2 provider is LocalKeyPlugin in-process through a KmsV2Api factory, with a fake clock,
so no test sleeps. Faults are injected by Store wrappers around a real MemoryStore (a txn that
raises StoreUnavailable, a user write slipped in before a txn), never by mocking behaviour.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kinko.cluster.encryption import EncryptedObjects, EncryptionConfigSource
from kinko.cluster.migrate import (
    CHECKPOINT_PREFIX,
    DEFAULT_BATCH,
    DEFAULT_PAGE,
    MigrationState,
    Migrator,
    looks_like_object,
)
from kinko.crypto.config import KmsConfig
from kinko.crypto.types import KmsV1Unwrapper
from kinko.errors import (
    Conflict,
    CorruptMetadata,
    InvalidArgument,
    PluginError,
    StoreUnavailable,
)
from kinko.kms.envelope import WRITE_STATE_TTL, KmsV2Session
from kinko.kms.plugin import LocalKeyPlugin
from kinko.kms.port import EncryptResult, KmsV2Api, StatusResult
from kinko.store.memory import MemoryStore
from kinko.store.port import MAX_TXN_OPS, Entry, Op, Page, Put, Store, TxnResult, Watch

SECRET_1 = base64.b64encode(bytes(range(32))).decode()
SECRET_2 = base64.b64encode(bytes(range(2, 34))).decode()
KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
KEY_C = bytes(range(5, 37))
KEY_D = bytes(range(9, 41))
PREFIX = b"/registry/secrets/"
RECORD = CHECKPOINT_PREFIX + b"secrets"


def aes(kind: str, name: str, secret: str) -> str:
    return (
        f"      - {kind}:\n          keys:\n"
        f"            - name: {name}\n              secret: {secret}\n"
    )


CBC_1 = aes("aescbc", "k1", SECRET_1)
CBC_2 = aes("aescbc", "k2", SECRET_2)
IDENTITY = "      - identity: {}\n"
KMS = (
    "      - kms:\n          apiVersion: v2\n          name: plug\n"
    "          endpoint: unix:///tmp/kinko-test-migrate.sock\n"
)


def config(*providers: str) -> str:
    return (
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
        "resources:\n  - resources: [secrets, configmaps]\n    providers:\n" + "".join(providers)
    )


class FakeClock:
    """Monotonic seconds that move only when told, or by ``step`` on every reading."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.step = 0.0

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now


@dataclass
class SwitchableApi:
    """A KmsV2Api over a LocalKeyPlugin that a test can rotate or take down."""

    plugin: LocalKeyPlugin
    healthy: bool = True

    def status(self) -> StatusResult:
        if not self.healthy:
            raise PluginError("KMS plugin plug: unreachable")
        return self.plugin.status()

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        if not self.healthy:
            raise PluginError("KMS plugin plug: unreachable")
        return self.plugin.encrypt(plaintext, uid=uid)

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        if not self.healthy:
            raise PluginError("KMS plugin plug: unreachable")
        return self.plugin.decrypt(ciphertext, uid=uid, key_id=key_id, annotations=annotations)


def no_v1(_: KmsConfig) -> KmsV1Unwrapper:
    raise AssertionError("no KMS v1 provider in these tests")


class Env:
    """One config file, its live source, a KMS plugin and a MemoryStore of Secrets."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.clock = FakeClock()
        self.api = SwitchableApi(LocalKeyPlugin(KEY_A))
        self.store = MemoryStore()
        path.write_text(text)

        def kms_v2(_: KmsConfig) -> KmsV2Api:
            return self.api

        self.source = EncryptionConfigSource(
            path, kms_v2=kms_v2, kms_v1=no_v1, poll_kms=False, clock=self.clock
        )
        self.objects = EncryptedObjects(self.store, self.source)

    def configure(self, text: str) -> None:
        self.path.write_text(text)
        assert self.source.reload_if_changed().changed

    def session(self) -> KmsV2Session:
        session = self.source.kms_v2_session("plug")
        assert session is not None
        return session

    def rotate(self, key: bytes, *retired: bytes) -> None:
        """The root key rotates: Status reports a new key_id, and the session notices."""
        self.api.plugin = LocalKeyPlugin(key, retired_keys=retired)
        self.session().check()

    def fill(self, n: int, resource: str = "secrets") -> list[bytes]:
        keys = [f"/registry/{resource}/ns{i % 3}/obj-{i:05d}".encode() for i in range(n)]
        for key in keys:
            self.objects.write(resource, key, plaintext(key), expect=0)
        return keys

    def migrator(
        self,
        store: Store | None = None,
        *,
        batch: int = DEFAULT_BATCH,
        page: int = DEFAULT_PAGE,
        rate_limit: float | None = None,
        count_keys: Callable[[bytes], int] | None = None,
        read_unprefixed: bool = False,
        resources: Sequence[str] = ("secrets", "configmaps"),
    ) -> Migrator:
        return Migrator(
            store or self.store,
            self.source,
            resources=resources,
            batch=batch,
            page=page,
            rate_limit=rate_limit,
            count_keys=count_keys,
            read_unprefixed=read_unprefixed,
            clock=self.clock,
            wall_clock=lambda: 1_800_000_000.0,
            sleep=self.sleep,
        )

    def sleep(self, seconds: float) -> None:
        self.clock.now += seconds

    def check_current(self, keys: Sequence[bytes], resource: str = "secrets") -> None:
        """Every object opens, holds its own plaintext and is what the chain writes now."""
        for key in keys:
            value = self.objects.read(resource, key)
            assert value.plaintext == plaintext(key), key
            assert not value.stale, key


def plaintext(key: bytes) -> bytes:
    return b'{"kind":"Secret","metadata":{"name":"' + key + b'"}}'


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return tmp_path / "encryption.yaml"


# --------------------------------------------------------------------------- wrappers


@dataclass
class Recording:
    """A Store that passes everything to a MemoryStore and records what was asked."""

    inner: MemoryStore
    limits: list[int] = field(default_factory=list)
    txns: list[tuple[Op, ...]] = field(default_factory=list)
    committed: list[tuple[Op, ...]] = field(default_factory=list)
    before_txn: Callable[[int, Sequence[Op]], None] | None = None

    def get(self, key: bytes) -> Entry | None:
        return self.inner.get(key)

    def range(
        self, prefix: bytes, *, start_after: bytes = b"", limit: int = 500, revision: int = 0
    ) -> Page:
        self.limits.append(limit)
        return self.inner.range(prefix, start_after=start_after, limit=limit, revision=revision)

    def txn(self, ops: Sequence[Op]) -> TxnResult:
        self.txns.append(tuple(ops))
        if self.before_txn is not None:
            self.before_txn(len(self.txns), ops)
        result = self.inner.txn(ops)
        if result.succeeded:
            self.committed.append(tuple(ops))
        return result

    def watch(self, prefix: bytes, *, after_revision: int) -> Watch:
        return self.inner.watch(prefix, after_revision=after_revision)

    def rewritten_keys(self) -> list[bytes]:
        return [op.key for ops in self.committed for op in ops if op.key != RECORD]


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    before: str
    after: str
    rotate_to: bytes | None = None


SCENARIOS = [
    Scenario("identity to aescbc", config(IDENTITY), config(CBC_1, IDENTITY)),
    Scenario("aescbc k1 to k2", config(CBC_1), config(CBC_2, CBC_1)),
    Scenario("aescbc to kms v2", config(CBC_1), config(KMS, CBC_1)),
    Scenario("kms v2 key_id rotation", config(KMS), config(KMS), rotate_to=KEY_B),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
@pytest.mark.parametrize("batch", [DEFAULT_BATCH, 7])
def test_every_stale_value_is_rewritten_and_a_second_run_finds_nothing(
    cfg: Path, scenario: Scenario, batch: int
) -> None:
    env = Env(cfg, scenario.before)
    keys = env.fill(300)
    if scenario.rotate_to is not None:
        env.rotate(scenario.rotate_to, KEY_A)
    else:
        env.configure(scenario.after)
    assert all(env.objects.read("secrets", key).stale for key in keys)
    store = Recording(env.store)

    report = env.migrator(store, batch=batch).run("secrets")

    assert (report.done, report.rewritten, report.skipped) == (300, 300, 0)
    assert (report.conflicts, report.unreadable, report.restarts) == (0, 0, 0)
    assert not report.resumed
    env.check_current(keys)
    assert sorted(store.rewritten_keys()) == sorted(keys)  # each object exactly once
    for ops in store.txns:
        assert len(ops) <= MAX_TXN_OPS
        assert len(ops) - 1 <= batch
        assert ops[-1].key == RECORD  # the checkpoint rides in every txn
    state = env.migrator().state("secrets")
    assert state is not None
    assert (state.state, state.done, state.rewritten, state.last_key) == (
        "done",
        300,
        300,
        max(keys),
    )
    again = env.migrator().run("secrets")
    assert (again.done, again.rewritten, again.skipped) == (300, 0, 300)


def test_kms_rotation_ends_under_the_new_key_id(cfg: Path) -> None:
    env = Env(cfg, config(KMS))
    keys = env.fill(40)
    env.rotate(KEY_B, KEY_A)
    env.migrator(batch=5).run("secrets")
    for key in keys:
        assert env.objects.read("secrets", key).key_id == env.api.plugin.key_id


def test_rotation_twice_mid_run_ends_under_the_newest(cfg: Path) -> None:
    env = Env(cfg, config(KMS))
    keys = env.fill(200)
    env.rotate(KEY_B, KEY_A)
    calls = 0

    def progress(done: int, total: int | None, rewritten: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            env.rotate(KEY_C, KEY_A, KEY_B)
        elif calls == 9:
            env.rotate(KEY_D, KEY_A, KEY_B, KEY_C)

    report = env.migrator(batch=10).run("secrets", progress=progress)

    assert report.restarts == 2
    assert (report.done, report.rewritten) == (200, 200)  # the last, whole pass
    env.check_current(keys)
    newest = env.api.plugin.key_id
    assert all(env.objects.read("secrets", key).key_id == newest for key in keys)
    state = env.migrator().state("secrets")
    assert state is not None
    assert state.state == "done"
    assert state.restarts == 2


def test_a_new_configuration_mid_run_starts_over(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    keys = env.fill(100)
    env.configure(config(CBC_2, CBC_1))
    calls = 0

    def progress(done: int, total: int | None, rewritten: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            env.configure(config(KMS, CBC_2, CBC_1))

    report = env.migrator(batch=10).run("secrets", progress=progress)
    assert report.restarts == 1
    env.check_current(keys)
    assert all(env.objects.read("secrets", key).provider == "kms" for key in keys)


def test_a_target_changed_between_runs_restarts_from_the_first_key(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    keys = env.fill(60)
    env.configure(config(CBC_2, CBC_1))
    store = FailingStore(env.store, fail_at=3)
    with pytest.raises(StoreUnavailable):
        env.migrator(store, batch=10).run("secrets")
    env.configure(config(KMS, CBC_2, CBC_1))
    report = env.migrator(batch=10).run("secrets")
    assert not report.resumed
    assert report.restarts == 1
    assert (report.done, report.rewritten) == (60, 60)
    env.check_current(keys)


def test_a_concurrent_write_wins_and_is_not_overwritten(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    keys = env.fill(50)
    env.configure(config(CBC_2, CBC_1))
    victim = keys[17]

    def user_writes(number: int, ops: Sequence[Op]) -> None:
        if any(op.key == victim for op in ops) and not written:
            entry = env.store.get(victim)
            assert entry is not None
            env.objects.write(
                "secrets", victim, b"the user's newer value", expect=entry.mod_revision
            )
            written.append(victim)

    written: list[bytes] = []
    store = Recording(env.store, before_txn=user_writes)
    report = env.migrator(store, batch=10).run("secrets")

    assert written == [victim]
    assert (report.done, report.rewritten, report.conflicts) == (50, 49, 1)
    value = env.objects.read("secrets", victim)
    assert value.plaintext == b"the user's newer value"
    assert not value.stale
    env.check_current([k for k in keys if k != victim])
    # The batch that lost one compare was sent again without it, with the checkpoint.
    assert sum(1 for ops in store.txns if any(op.key == victim for op in ops)) == 1


def test_a_deleted_object_is_not_resurrected(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    keys = env.fill(20)
    env.configure(config(CBC_2, CBC_1))

    def user_deletes(number: int, ops: Sequence[Op]) -> None:
        if number == 2:
            entry = env.store.get(keys[0])
            assert entry is not None
            env.objects.delete(keys[0], expect=entry.mod_revision)

    report = env.migrator(Recording(env.store, before_txn=user_deletes)).run("secrets")
    assert env.store.get(keys[0]) is None
    assert (report.rewritten, report.conflicts) == (19, 1)


def test_unreadable_values_are_counted_and_left_untouched(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    keys = env.fill(30)
    orphan = b"/registry/secrets/ns0/orphan"
    garbage = b"k8s:enc:aescbc:v1:gone:" + bytes(48)
    tampered = b"/registry/secrets/ns1/tampered"
    env.store.txn(
        [
            Put(orphan, garbage, expect=0),
            Put(tampered, b"k8s:enc:aescbc:v1:k1:" + bytes(32), expect=0),
        ]
    )
    env.configure(config(CBC_2, CBC_1))

    report = env.migrator(batch=8).run("secrets")

    assert (report.done, report.rewritten, report.unreadable) == (32, 30, 2)
    assert set(report.unreadable_keys) == {orphan.decode(), tampered.decode()}
    entry = env.store.get(orphan)
    assert entry is not None
    assert entry.value == garbage
    env.check_current(keys)
    state = env.migrator().state("secrets")
    assert state is not None
    assert (state.state, state.unreadable) == ("done", 2)


def test_aescbc_noise_from_a_wrong_key_is_unreadable_and_kept(cfg: Path) -> None:
    """An aescbc value read with a wrong key of the same name can pass the padding check and
    open to noise; sealing that again would destroy what the right key could still open."""
    env = Env(cfg, config(CBC_1))
    keys = env.fill(10)
    noisy = b"/registry/secrets/ns0/noisy"
    # What a wrong key's "successful" open yields: bytes that are no object.
    cbc = env.source.chain_for("secrets").first
    stored = cbc.seal(bytes(range(256)) * 4, aad=noisy)
    env.store.txn([Put(noisy, stored, expect=0)])
    env.configure(config(KMS, CBC_1))

    dry = env.migrator().run("secrets", dry_run=True)
    report = env.migrator().run("secrets")

    assert (dry.rewritten, dry.unreadable) == (10, 1)
    assert (report.rewritten, report.unreadable) == (10, 1)
    assert report.unreadable_keys == (noisy.decode(),)
    entry = env.store.get(noisy)
    assert entry is not None
    assert entry.value == stored
    env.check_current(keys)


@pytest.mark.parametrize(
    ("plaintext", "expected"),
    [
        (b'{"kind":"Secret"}', True),
        (b'{"kind":"Secret"}\n', True),  # Go's JSON encoder ends with a newline
        (b"k8s\x00\n\x0f\n\x02v1\x12\x06Secret", True),  # kube-apiserver's protobuf
        (b"", False),
        (b"{", False),
        (b"[1, 2]", False),
        (b"{\xff\xfe}", False),
        (bytes(range(256)), False),
        ('{"name":"caf\u00e9"}'.encode(), True),  # UTF-8 beyond ASCII
        (b' \t{"kind":"Secret"}\r\n', True),
        (b"{\xc3}", False),  # a UTF-8 sequence cut short
        (b"}{", False),
    ],
)
def test_looks_like_object(plaintext: bytes, expected: bool) -> None:
    assert looks_like_object(plaintext) is expected


def _object_check_by_definition(plaintext: bytes) -> bool:
    if plaintext.startswith(b"k8s\x00"):
        return True
    text = plaintext.strip()
    if text[:1] != b"{" or text[-1:] != b"}":
        return False
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@given(
    st.one_of(
        st.binary(max_size=64),
        st.builds(lambda b: b"{" + b + b"}", st.binary(max_size=64)),
        st.builds(lambda t: t.encode(), st.text(max_size=64)),
        st.builds(lambda t: ("{" + t + "}").encode(), st.text(max_size=64)),
    )
)
def test_the_object_check_matches_its_definition(plaintext: bytes) -> None:
    assert looks_like_object(plaintext) is _object_check_by_definition(plaintext)


def test_the_object_check_can_be_replaced(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    env.fill(5)
    env.configure(config(CBC_2, CBC_1))
    seen: list[bytes] = []

    def nothing_is_an_object(plaintext: bytes) -> bool:
        seen.append(plaintext)
        return False

    migrator = Migrator(env.store, env.source, is_object=nothing_is_an_object)
    report = migrator.run("secrets")
    assert (report.rewritten, report.unreadable) == (0, 5)
    assert len(seen) == 5


def test_dry_run_counts_and_writes_nothing(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    keys = env.fill(40)
    env.configure(config(CBC_2, CBC_1))
    env.objects.write(
        "secrets",
        keys[3],
        b"already current",
        expect=env.objects.read("secrets", keys[3]).mod_revision,
    )
    revision = env.store.range(PREFIX, limit=1).revision
    seen: list[tuple[int, int | None, int]] = []

    report = env.migrator(page=16).run(
        "secrets", dry_run=True, progress=lambda d, t, r: seen.append((d, t, r))
    )

    assert report.dry_run
    assert (report.done, report.rewritten, report.skipped) == (40, 39, 1)
    assert env.store.range(PREFIX, limit=1).revision == revision
    assert env.migrator().state("secrets") is None
    assert seen[-1] == (40, 40, 39)
    assert [d for d, _, _ in seen] == [16, 32, 40]


class FailingStore(Recording):
    """Raises StoreUnavailable instead of the ``fail_at``-th txn (nothing is written)."""

    def __init__(self, inner: MemoryStore, *, fail_at: int) -> None:
        super().__init__(inner)
        self.fail_at = fail_at

    def txn(self, ops: Sequence[Op]) -> TxnResult:
        if len(self.txns) + 1 == self.fail_at:
            self.txns.append(tuple(ops))
            raise StoreUnavailable("SQLite store test.db: write failed (disk I/O error)")
        return super().txn(ops)


@pytest.mark.parametrize("fail_at", [1, 2, 3, 5, 8, 9])
def test_resume_after_a_failed_batch_redoes_nothing_and_skips_nothing(
    cfg: Path, fail_at: int
) -> None:
    env = Env(cfg, config(CBC_1))
    keys = env.fill(75)
    env.configure(config(KMS, CBC_1))
    first = FailingStore(env.store, fail_at=fail_at)

    with pytest.raises(StoreUnavailable):
        env.migrator(first, batch=10, page=25).run("secrets")

    state = env.migrator().state("secrets")
    if fail_at == 1:
        assert state is None  # the claim itself failed: nothing was written
    else:
        assert state is not None
        assert state.state == "paused"
        assert state.reason is not None
        assert "StoreUnavailable" in state.reason
        # The record names exactly what the committed txns rewrote.
        assert state.rewritten == len(first.rewritten_keys())
        assert all(key <= state.last_key for key in first.rewritten_keys())
    second = Recording(env.store)
    report = env.migrator(second, batch=10, page=25).run("secrets")

    assert report.resumed == (fail_at > 1)
    assert (report.done, report.rewritten) == (75, 75)
    assert sorted(first.rewritten_keys() + second.rewritten_keys()) == sorted(keys)
    env.check_current(keys)


def test_two_migrators_one_conflict(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    keys = env.fill(60)
    env.configure(config(CBC_2, CBC_1))
    other: list[object] = []

    def start_another(done: int, total: int | None, rewritten: int) -> None:
        if not other:
            other.append(env.migrator(batch=10).run("secrets"))

    with pytest.raises(Conflict) as info:
        env.migrator(batch=10).run("secrets", progress=start_another)

    assert "another migration of secrets is running" in str(info.value)
    assert len(other) == 1
    env.check_current(keys)
    state = env.migrator().state("secrets")
    assert state is not None
    assert state.state == "done"


def test_a_claim_lost_to_another_run_is_a_conflict(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    env.fill(5)
    env.configure(config(CBC_2, CBC_1))

    def claim_first(number: int, ops: Sequence[Op]) -> None:
        if number == 1:
            env.store.txn([Put(RECORD, b"{}", expect=0)])

    with pytest.raises(Conflict):
        env.migrator(Recording(env.store, before_txn=claim_first)).run("secrets")


def test_plugin_down_pauses_with_its_name_and_marks_nothing_unmigrated(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    keys = env.fill(90)
    env.configure(config(KMS, CBC_1))
    calls = 0

    def plugin_dies(done: int, total: int | None, rewritten: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            env.api.healthy = False
            with pytest.raises(PluginError):
                env.session().check()
            env.clock.now += WRITE_STATE_TTL + 1  # the write state expires: writes fail

    with pytest.raises(PluginError) as info:
        env.migrator(batch=10).run("secrets", progress=plugin_dies)

    state = env.migrator().state("secrets")
    assert state is not None
    assert state.state == "paused"
    assert state.reason is not None
    assert "KMS plugin plug" in state.reason
    assert "plug" in str(info.value)
    migrated = [k for k in keys if env.objects.read("secrets", k).provider == "kms"]
    assert len(migrated) == state.rewritten
    assert all(k <= state.last_key for k in migrated)
    assert all(
        env.objects.read("secrets", k).provider == "aescbc" for k in keys if k > state.last_key
    )

    env.api.healthy = True
    env.session().check()
    report = env.migrator(batch=10).run("secrets")
    assert report.resumed
    assert report.rewritten == 90
    env.check_current(keys)


def test_plugin_lost_mid_batch_commits_the_objects_before_it(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    keys = env.fill(60)
    env.configure(config(KMS, CBC_1))
    calls = 0

    def expire_a_few_seals_later(done: int, total: int | None, rewritten: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            env.api.healthy = False
            with pytest.raises(PluginError):
                env.session().check()
            left = env.session().expires_in()
            assert left is not None
            # Each seal reads the clock once: the write state expires four seals from here.
            env.clock.now += left - 3.5
            env.clock.step = 1.0

    with pytest.raises(PluginError):
        env.migrator(batch=10).run("secrets", progress=expire_a_few_seals_later)

    state = env.migrator().state("secrets")
    assert state is not None
    assert (state.state, state.done, state.rewritten) == ("paused", 24, 24)
    ordered = sorted(keys)  # the walk's order: storage keys in byte order
    assert state.last_key == ordered[23]
    migrated = [k for k in ordered if env.objects.read("secrets", k).provider == "kms"]
    assert migrated == ordered[:24]


def test_plugin_never_healthy_pauses_before_any_write(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    keys = env.fill(10)
    env.api.healthy = False
    env.configure(config(KMS, CBC_1))
    with pytest.raises(PluginError):
        env.migrator().run("secrets")
    state = env.migrator().state("secrets")
    assert state is not None
    assert (state.state, state.done, state.rewritten, state.last_key) == ("paused", 0, 0, b"")
    assert all(env.objects.read("secrets", k).provider == "aescbc" for k in keys)


def test_store_down_when_pausing_leaves_the_record_running(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    env.fill(30)
    env.configure(config(CBC_2, CBC_1))

    class Down(FailingStore):
        def txn(self, ops: Sequence[Op]) -> TxnResult:
            if len(self.txns) + 1 >= self.fail_at:
                self.txns.append(tuple(ops))
                raise StoreUnavailable("etcd: no endpoint answered")
            return Recording.txn(self, ops)

    with pytest.raises(StoreUnavailable):
        env.migrator(Down(env.store, fail_at=2), batch=10).run("secrets")
    state = env.migrator().state("secrets")
    assert state is not None
    assert state.state == "running"
    assert env.migrator().run("secrets").rewritten == 30


def test_rate_limit_paces_objects_per_second(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    env.fill(300)
    env.configure(config(CBC_2, CBC_1))
    start = env.clock.now
    migrator = env.migrator(rate_limit=100.0)
    assert migrator.page == 100
    migrator.run("secrets")
    assert env.clock.now - start == pytest.approx(3.0)


def test_progress_reports_done_total_and_rewritten(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    env.fill(50)
    env.configure(config(CBC_2, CBC_1))
    seen: list[tuple[int, int | None, int]] = []
    counted: list[bytes] = []

    def count_keys(prefix: bytes) -> int:
        counted.append(prefix)
        return 50

    env.migrator(batch=20, count_keys=count_keys).run(
        "secrets", progress=lambda d, t, r: seen.append((d, t, r))
    )
    assert counted == [PREFIX]
    assert seen == [(20, 50, 20), (40, 50, 40), (50, 50, 50), (50, 50, 50)]


def test_without_count_keys_the_total_comes_from_a_counting_pass(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    env.fill(30)
    env.configure(config(CBC_2, CBC_1))
    seen: list[int | None] = []
    env.migrator().run("secrets", progress=lambda d, t, r: seen.append(t))
    assert set(seen) == {30}
    seen.clear()
    env.configure(config(CBC_1, CBC_2))
    env.migrator().run("secrets")  # no progress: no counting pass, no total
    assert seen == []


def test_pages_bound_what_is_held(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    env.fill(100)
    env.configure(config(CBC_2, CBC_1))
    store = Recording(env.store)
    migrator = env.migrator(store, page=16, batch=5)
    migrator.run("secrets", progress=lambda d, t, r: None)
    assert store.limits
    assert max(store.limits) == migrator.page == 16
    assert max(len(ops) for ops in store.txns) == 6


def test_only_the_resource_prefix_is_walked(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    secrets = env.fill(10)
    maps = env.fill(10, "configmaps")
    env.configure(config(CBC_2, CBC_1))
    reports = env.migrator().run_all()
    assert [(r.resource, r.rewritten) for r in reports] == [("secrets", 10), ("configmaps", 10)]
    env.check_current(secrets)
    env.check_current(maps, "configmaps")
    assert env.migrator().state("configmaps") is not None


def test_unprefixed_values_are_migrated_only_when_asked(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    key = b"/registry/secrets/ns/plain"
    env.store.txn([Put(key, plaintext(key), expect=0)])
    assert env.migrator().run("secrets").unreadable == 1
    report = env.migrator(read_unprefixed=True).run("secrets")
    assert (report.rewritten, report.unreadable) == (1, 0)
    env.check_current([key])


def test_state_record_round_trips_and_reset_removes_it(cfg: Path) -> None:
    env = Env(cfg, config(CBC_1))
    env.fill(3)
    env.configure(config(CBC_2, CBC_1))
    migrator = env.migrator()
    migrator.run("secrets")
    state = migrator.state("secrets")
    assert state is not None
    entry = env.store.get(RECORD)
    assert entry is not None
    assert MigrationState.from_entry(entry) == state
    stored = json.loads(entry.value)
    assert stored["target"] == env.source.config_hash
    assert "k8s:enc" not in entry.value.decode()
    assert migrator.reset("secrets")
    assert migrator.state("secrets") is None
    assert not migrator.reset("secrets")


def test_kms_target_names_the_key_id_hash_not_the_key_id(cfg: Path) -> None:
    env = Env(cfg, config(KMS))
    target = env.migrator().target("secrets")
    assert target.startswith(env.source.config_hash + " kms:plug key_id:sha256:")
    assert env.api.plugin.key_id not in target


@pytest.mark.parametrize(
    "value",
    [b"not json", b"[]", b'{"version": 2}', b'{"version": 1}', b'{"version": 1, "state": "odd"}'],
)
def test_a_corrupt_record_is_corrupt_metadata(cfg: Path, value: bytes) -> None:
    env = Env(cfg, config(CBC_1))
    env.store.txn([Put(RECORD, value, expect=0)])
    with pytest.raises(CorruptMetadata):
        env.migrator().state("secrets")
    with pytest.raises(CorruptMetadata):
        env.migrator().run("secrets")
    assert env.migrator().reset("secrets")


@pytest.mark.parametrize(
    "options",
    [
        {"batch": 0},
        {"batch": MAX_TXN_OPS},
        {"page": 0},
        {"rate_limit": 0.0},
        {"resources": ["a/b"]},
        {"resources": [""]},
    ],
    ids=["batch 0", "batch 128", "page 0", "rate 0", "resource with slash", "empty resource"],
)
def test_bad_options_are_invalid_argument(cfg: Path, options: dict[str, Any]) -> None:
    env = Env(cfg, config(CBC_1))
    with pytest.raises(InvalidArgument):
        Migrator(env.store, env.source, **options)
