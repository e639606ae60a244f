"""Encryption at rest for the cluster store, over MemoryStore with a real config file.

Local providers come from a temp EncryptionConfiguration; the KMS v2 provider is backed
in-process by LocalKeyPlugin through KmsV2Session, with a fake clock. No test sleeps.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from kinko.cluster import encryption
from kinko.cluster.encryption import EncryptedObjects, EncryptionConfigSource
from kinko.crypto.config import KmsConfig
from kinko.crypto.formats import KmsV2
from kinko.crypto.types import KmsV1Unwrapper, Opened
from kinko.errors import (
    Conflict,
    DecryptionError,
    DeletionRefused,
    InvalidArgument,
    NotFound,
    PluginError,
    UnreadableValue,
)
from kinko.etcdtool import decrypt_value
from kinko.kms.envelope import WRITE_STATE_TTL
from kinko.kms.plugin import LocalKeyPlugin
from kinko.kms.port import EncryptResult, KmsV2Api, StatusResult
from kinko.store.memory import MemoryStore
from kinko.store.port import Put

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
SECRET_1 = base64.b64encode(bytes(range(32))).decode()
SECRET_2 = base64.b64encode(bytes(range(2, 34))).decode()
SECRET_3 = base64.b64encode(bytes(range(3, 35))).decode()

PREFIX = b"/registry/secrets/ns/"
PLUGIN_A = LocalKeyPlugin(KEY_A)
WAIT = 10.0  # Upper bound for waits on a background thread; never reached when correct.


def key(name: str) -> bytes:
    return PREFIX + name.encode()


def provider(kind: str, name: str, secret: str) -> str:
    return (
        f"      - {kind}:\n          keys:\n"
        f"            - name: {name}\n              secret: {secret}\n"
    )


KMS = (
    "      - kms:\n          apiVersion: v2\n          name: plug\n"
    "          endpoint: unix:///tmp/kinko-test-kms.sock\n"
)


def config(*providers: str) -> str:
    return (
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
        "resources:\n  - resources: [secrets]\n    providers:\n" + "".join(providers)
    )


GCM_1 = provider("aesgcm", "g1", SECRET_1)
CBC_2 = provider("aescbc", "c2", SECRET_2)
BOX_3 = provider("secretbox", "s3", SECRET_3)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class CountingApi:
    """A KmsV2Api over a LocalKeyPlugin that counts calls and can be made unhealthy."""

    plugin: LocalKeyPlugin
    healthy: bool = True
    status_calls: int = 0
    encrypt_calls: int = 0
    decrypt_calls: int = 0
    closed: bool = False

    def status(self) -> StatusResult:
        self.status_calls += 1
        if not self.healthy:
            raise PluginError("KMS plugin plug: unreachable")
        return self.plugin.status()

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        self.encrypt_calls += 1
        return self.plugin.encrypt(plaintext, uid=uid)

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        self.decrypt_calls += 1
        if not self.healthy:
            raise PluginError("KMS plugin plug: unreachable")
        return self.plugin.decrypt(ciphertext, uid=uid, key_id=key_id, annotations=annotations)

    def close(self) -> None:
        self.closed = True


def no_v1(_: KmsConfig) -> KmsV1Unwrapper:
    raise AssertionError("no KMS v1 provider in these tests")


def make_source(
    path: Path, text: str, api: CountingApi | None = None, clock: FakeClock | None = None
) -> EncryptionConfigSource:
    path.write_text(text)

    def kms_v2(_: KmsConfig) -> KmsV2Api:
        assert api is not None
        return api

    return EncryptionConfigSource(
        path, kms_v2=kms_v2, kms_v1=no_v1, poll_kms=False, clock=clock or FakeClock()
    )


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return tmp_path / "encryption.yaml"


# --------------------------------------------------------------------------- local providers


@pytest.mark.parametrize(
    ("first", "prefix", "bound"),
    [
        (GCM_1, b"k8s:enc:aesgcm:v1:g1:", True),
        # As upstream, aescbc and secretbox take no AAD: a copied value still opens.
        (CBC_2, b"k8s:enc:aescbc:v1:c2:", False),
        (BOX_3, b"k8s:enc:secretbox:v1:s3:", False),
    ],
)
def test_round_trip_and_aad_binding(cfg: Path, first: str, prefix: bytes, bound: bool) -> None:
    source = make_source(cfg, config(first))
    store = MemoryStore()
    objects = EncryptedObjects(store, source)
    revision = objects.write("secrets", key("a"), b"hello", expect=0)
    stored = store.get(key("a"))
    assert stored is not None
    assert stored.value.startswith(prefix)
    assert b"hello" not in stored.value
    got = objects.read("secrets", key("a"))
    assert (got.plaintext, got.mod_revision, got.stale) == (b"hello", revision, False)
    store.txn([Put(key("copy"), stored.value, expect=0)])
    if not bound:
        assert objects.read("secrets", key("copy")).plaintext == b"hello"
        return
    with pytest.raises(UnreadableValue) as info:
        objects.read("secrets", key("copy"))
    assert info.value.reason == UnreadableValue.NOT_OPENED
    assert "/registry/secrets/ns/copy" in str(info.value)


def test_kms_v2_value_copied_to_another_key_does_not_open(cfg: Path) -> None:
    store = MemoryStore()
    objects = EncryptedObjects(store, make_source(cfg, config(KMS), CountingApi(PLUGIN_A)))
    objects.write("secrets", key("a"), b"hello", expect=0)
    stored = store.get(key("a"))
    assert stored is not None
    store.txn([Put(key("copy"), stored.value, expect=0)])
    with pytest.raises(UnreadableValue):
        objects.read("secrets", key("copy"))
    assert objects.list("secrets", PREFIX).unreadable == (key("copy"),)


def test_write_and_delete_are_guarded(cfg: Path) -> None:
    objects = EncryptedObjects(MemoryStore(), make_source(cfg, config(GCM_1)))
    revision = objects.write("secrets", key("a"), b"v1", expect=0)
    with pytest.raises(Conflict):
        objects.write("secrets", key("a"), b"v2", expect=0)
    revision = objects.write("secrets", key("a"), b"v2", expect=revision)
    with pytest.raises(Conflict):
        objects.delete(key("a"), expect=revision - 1)
    objects.delete(key("a"), expect=revision)
    with pytest.raises(NotFound):
        objects.read("secrets", key("a"))


def test_reload_follows_the_content_hash(cfg: Path) -> None:
    source = make_source(cfg, config(GCM_1))
    objects = EncryptedObjects(MemoryStore(), source)
    objects.write("secrets", key("a"), b"one", expect=0)
    first = source.config_hash
    assert source.reload_if_changed().changed is False
    cfg.write_text(config(BOX_3, GCM_1))
    result = source.reload_if_changed()
    assert result.changed
    assert result.config_hash == source.config_hash != first
    objects.write("secrets", key("b"), b"two", expect=0)
    a, b = objects.read("secrets", key("a")), objects.read("secrets", key("b"))
    assert (a.plaintext, a.stale, a.provider) == (b"one", True, "aesgcm")
    assert (b.plaintext, b.stale, b.provider) == (b"two", False, "secretbox")


@pytest.mark.parametrize(
    "bad",
    [
        "not: [valid",
        config(provider("aesgcm", "g1", "c2hvcnQ=")),
        "apiVersion: apiserver.config.k8s.io/v1\nkind: Nope\nresources: []\n",
    ],
)
def test_a_bad_new_file_keeps_the_old_chain_and_is_reported(cfg: Path, bad: str) -> None:
    source = make_source(cfg, config(GCM_1))
    objects = EncryptedObjects(MemoryStore(), source)
    good_hash = source.config_hash
    cfg.write_text(bad)
    result = source.reload_if_changed()
    assert not result.changed
    assert result.error is not None
    assert result.config_hash == source.config_hash == good_hash
    assert source.last_error == result.error
    assert SECRET_1 not in result.error
    assert "c2hvcnQ=" not in result.error
    # The same bad content is reported again, and the old chain still writes.
    assert source.reload_if_changed().error == result.error
    objects.write("secrets", key("a"), b"still", expect=0)
    assert objects.read("secrets", key("a")).provider == "aesgcm"
    cfg.write_text(config(GCM_1, BOX_3))
    assert source.reload_if_changed().changed
    assert source.last_error is None


def test_a_missing_file_keeps_the_old_chain(cfg: Path) -> None:
    source = make_source(cfg, config(GCM_1))
    cfg.unlink()
    result = source.reload_if_changed()
    assert not result.changed
    assert result.error
    assert "cannot read" in result.error
    assert source.chain_for("secrets").first.kind == "aesgcm"


# --------------------------------------------------------------------------- undecryptable


def test_removed_provider_does_not_break_a_list(cfg: Path) -> None:
    source = make_source(cfg, config(GCM_1, BOX_3))
    store = MemoryStore()
    objects = EncryptedObjects(store, source)
    objects.write("secrets", key("a"), b"A", expect=0)
    objects.write("secrets", key("b"), b"B", expect=0)
    cfg.write_text(config(BOX_3))
    assert source.reload_if_changed().changed
    objects.write("secrets", key("c"), b"C", expect=0)

    page = objects.list("secrets", PREFIX)
    assert [(i.key, i.value.plaintext) for i in page.items] == [(key("c"), b"C")]
    assert page.unreadable == (key("a"), key("b"))
    assert page.more is False

    with pytest.raises(UnreadableValue) as info:
        objects.read("secrets", key("a"))
    assert info.value.reason == UnreadableValue.NO_PROVIDER
    assert "no configured provider matches" in str(info.value)


def test_destroyed_key_names_its_reason(cfg: Path) -> None:
    source = make_source(cfg, config(GCM_1))
    objects = EncryptedObjects(MemoryStore(), source)
    objects.write("secrets", key("a"), b"A", expect=0)
    # The same key name with other key bytes: the prefix matches, nothing opens.
    cfg.write_text(config(provider("aesgcm", "g1", SECRET_2)))
    assert source.reload_if_changed().changed
    with pytest.raises(DecryptionError) as info:
        objects.read("secrets", key("a"))
    assert isinstance(info.value, UnreadableValue)
    assert "key was destroyed" in str(info.value)
    assert objects.list("secrets", PREFIX).unreadable == (key("a"),)


def test_list_pages_report_unreadable_values(cfg: Path) -> None:
    source = make_source(cfg, config(GCM_1))
    store = MemoryStore()
    objects = EncryptedObjects(store, source)
    for name in "abcd":
        objects.write("secrets", key(name), name.encode(), expect=0)
    store.txn([Put(key("b"), b"k8s:enc:aesgcm:v1:g1:garbage")])
    first = objects.list("secrets", PREFIX, limit=2)
    assert first.more
    assert [i.key for i in first.items] == [key("a")]
    assert first.unreadable == (key("b"),)
    assert first.last_key == key("b")
    second = objects.list(
        "secrets", PREFIX, limit=2, start_after=first.last_key, revision=first.revision
    )
    assert [i.key for i in second.items] == [key("c"), key("d")]
    assert second.unreadable == ()
    assert not second.more


def test_a_scan_opens_its_page_a_few_values_at_a_time(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encryption, "OPEN_ROWS", 2)
    store = MemoryStore()
    objects = EncryptedObjects(store, make_source(cfg, config(GCM_1)))
    for name in "abcde":
        objects.write("secrets", key(name), name.upper().encode(), expect=0)
    store.txn([Put(key("d"), b"k8s:enc:aesgcm:v1:g1:garbage")])
    scan = objects.scan("secrets", PREFIX, limit=4)
    assert (scan.more, scan.last_key) == (True, key("d"))
    items = iter(scan)
    assert next(items).key == key("a")
    assert scan.unreadable == []  # c and d are not opened yet
    assert [i.value.plaintext for i in items] == [b"B", b"C"]
    assert scan.unreadable == [key("d")]
    with pytest.raises(InvalidArgument, match="iterated once"):
        iter(scan)


def test_force_delete_only_removes_unreadable_values(cfg: Path) -> None:
    source = make_source(cfg, config(GCM_1, BOX_3))
    store = MemoryStore()
    objects = EncryptedObjects(store, source)
    objects.write("secrets", key("a"), b"A", expect=0)
    cfg.write_text(config(BOX_3))
    source.reload_if_changed()
    objects.write("secrets", key("b"), b"B", expect=0)

    with pytest.raises(DeletionRefused):
        objects.force_delete_unreadable(key("b"))
    assert objects.read("secrets", key("b")).plaintext == b"B"
    with pytest.raises(NotFound):
        objects.force_delete_unreadable(key("missing"))

    objects.force_delete_unreadable(key("a"))
    assert store.get(key("a")) is None
    page = objects.list("secrets", PREFIX)
    assert page.unreadable == ()
    assert [i.key for i in page.items] == [key("b")]


# --------------------------------------------------------------------------- KMS v2


def test_kms_v2_values_carry_the_prefix_and_decrypt_with_etcdtool(cfg: Path) -> None:
    api = CountingApi(LocalKeyPlugin(KEY_A))
    source = make_source(cfg, config(KMS), api)
    store = MemoryStore()
    objects = EncryptedObjects(store, source)
    for i in range(5):
        objects.write("secrets", key(f"o{i}"), b"payload %d" % i, expect=0)
    # One Status and one Encrypt wrapped the seed; no plugin call per write.
    assert (api.status_calls, api.encrypt_calls) == (1, 1)
    stored = store.get(key("o3"))
    assert stored is not None
    assert stored.value.startswith(b"k8s:enc:kms:v2:plug:")
    opened = decrypt_value(source, stored.key, stored.value)
    assert opened.plaintext == b"payload 3"
    assert opened.key_id == api.plugin.key_id
    got = objects.read("secrets", key("o3"))
    assert (got.provider, got.key_id) == ("kms", api.plugin.key_id)
    assert api.decrypt_calls == 0  # the write seed is cached


def test_kms_v2_writes_coast_then_fail_closed_naming_the_plugin(cfg: Path) -> None:
    clock = FakeClock()
    api = CountingApi(LocalKeyPlugin(KEY_A))
    source = make_source(cfg, config(KMS), api, clock)
    objects = EncryptedObjects(MemoryStore(), source)
    rev = objects.write("secrets", key("a"), b"1", expect=0)
    api.healthy = False
    session = source.kms_v2_session("plug")
    assert session is not None
    with pytest.raises(PluginError):
        session.check()
    clock.now += WRITE_STATE_TTL - 1
    rev = objects.write("secrets", key("a"), b"2", expect=rev)
    clock.now += 2
    with pytest.raises(PluginError) as info:
        objects.write("secrets", key("a"), b"3", expect=rev)
    assert "KMS plugin plug" in str(info.value)
    # Reads go on from the cached seed.
    assert objects.read("secrets", key("a")).plaintext == b"2"
    api.healthy = True
    session.check()
    objects.write("secrets", key("a"), b"3", expect=rev)


def test_kms_v2_reads_decrypt_each_seed_once(cfg: Path) -> None:
    api = CountingApi(LocalKeyPlugin(KEY_A))
    store = MemoryStore()
    writer = make_source(cfg, config(KMS), api)
    objects = EncryptedObjects(store, writer)
    for i in range(4):
        objects.write("secrets", key(f"a{i}"), b"x", expect=0)
    api.plugin = LocalKeyPlugin(KEY_B, retired_keys=[KEY_A])
    session = writer.kms_v2_session("plug")
    assert session is not None
    session.check()  # a new key_id: a fresh seed
    for i in range(4):
        objects.write("secrets", key(f"b{i}"), b"y", expect=0)
    assert api.encrypt_calls == 2

    reader_api = CountingApi(api.plugin)
    reader = EncryptedObjects(store, make_source(cfg, config(KMS), reader_api))
    page = reader.list("secrets", PREFIX)
    assert len(page.items) == 8
    assert page.unreadable == ()
    reader.list("secrets", PREFIX)
    reader.read("secrets", key("a2"))
    # Two distinct stored seeds; the reader's own fresh write seed needs no Decrypt.
    assert reader_api.decrypt_calls == 2
    stale = {i.key for i in page.items if i.value.stale}
    assert stale == {key(f"a{i}") for i in range(4)}


def _written_under_two_seeds(
    cfg: Path, first: Mapping[str, bytes], second: Mapping[str, bytes]
) -> tuple[CountingApi, MemoryStore]:
    """``first`` written under KEY_A's seed, then ``second`` under KEY_B's (a rotation)."""
    api = CountingApi(LocalKeyPlugin(KEY_A))
    store = MemoryStore()
    writer = make_source(cfg, config(KMS), api)
    objects = EncryptedObjects(store, writer)
    for name, value in first.items():
        objects.write("secrets", key(name), value, expect=0)
    api.plugin = LocalKeyPlugin(KEY_B, retired_keys=[KEY_A])
    session = writer.kms_v2_session("plug")
    assert session is not None
    session.check()  # a new key_id: a fresh seed
    for name, value in second.items():
        objects.write("secrets", key(name), value, expect=0)
    return api, store


def _opened_alone(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The AADs (storage keys) of the values KmsV2.open opens one by one from now on."""
    alone: list[bytes] = []
    one_by_one = KmsV2.open

    def counted(self: KmsV2, value: bytes, *, aad: bytes) -> Opened:
        alone.append(aad)
        return one_by_one(self, value, aad=aad)

    monkeypatch.setattr(KmsV2, "open", counted)
    return alone


def test_a_fresh_reader_opens_one_value_per_seed_alone_and_the_rest_with_its_page(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, store = _written_under_two_seeds(
        cfg, {f"a{i}": b"a%d" % i for i in range(5)}, {f"b{i}": b"b%d" % i for i in range(5)}
    )
    store.txn([Put(key("c"), b"k8s:enc:kms:v2:plug:garbage")])

    alone = _opened_alone(monkeypatch)
    reader_api = CountingApi(api.plugin)
    reader = EncryptedObjects(store, make_source(cfg, config(KMS), reader_api))
    page = reader.list("secrets", PREFIX)
    assert [(i.key, i.value.plaintext) for i in page.items] == [
        *((key(f"a{i}"), b"a%d" % i) for i in range(5)),
        *((key(f"b{i}"), b"b%d" % i) for i in range(5)),
    ]
    assert page.unreadable == (key("c"),)
    # The first value of each seed asked for it; the pass after it opened the others.
    assert alone == [key("a0"), key("b0"), key("c")]
    assert reader_api.decrypt_calls == 2


def test_a_value_opened_alone_for_its_size_does_not_stop_the_page_pass_for_later_seeds(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = bytes(20_000)  # its encryptedData length takes three bytes: opened alone
    api, store = _written_under_two_seeds(cfg, {"a0": big}, {f"b{i}": b"b%d" % i for i in range(5)})

    alone = _opened_alone(monkeypatch)
    reader = EncryptedObjects(store, make_source(cfg, config(KMS), CountingApi(api.plugin)))
    page = reader.list("secrets", PREFIX)
    assert [i.value.plaintext for i in page.items] == [big, *(b"b%d" % i for i in range(5))]
    assert alone == [key("a0"), key("b0")]


def test_kms_v2_unavailable_for_an_unseen_seed_fails_the_list(cfg: Path) -> None:
    api = CountingApi(LocalKeyPlugin(KEY_A))
    store = MemoryStore()
    objects = EncryptedObjects(store, make_source(cfg, config(KMS), api))
    objects.write("secrets", key("a"), b"x", expect=0)
    reader_api = CountingApi(api.plugin, healthy=False)
    reader = EncryptedObjects(store, make_source(cfg, config(KMS), reader_api))
    with pytest.raises(PluginError):
        reader.list("secrets", PREFIX)
    with pytest.raises(PluginError):
        reader.read("secrets", key("a"))
    with pytest.raises(PluginError):
        reader.force_delete_unreadable(key("a"))
    assert store.get(key("a")) is not None


@pytest.mark.parametrize("rows", [1, 2, 3, 500])
def test_a_kms_v2_page_mixing_seeds_providers_and_unreadable_values_lists_in_order(
    cfg: Path, monkeypatch: pytest.MonkeyPatch, rows: int
) -> None:
    # A page a LIST opens at once where it can (values under a seed already used) and one by
    # one elsewhere: the answer is the same, in key order, whichever way each value opened
    # and however many values are opened at a time.
    monkeypatch.setattr(encryption, "OPEN_ROWS", rows)
    api = CountingApi(LocalKeyPlugin(KEY_A))
    store = MemoryStore()
    source = make_source(cfg, config(GCM_1), api)
    objects = EncryptedObjects(store, source)
    objects.write("secrets", key("a"), b"A", expect=0)  # aesgcm, from before KMS v2
    cfg.write_text(config(KMS, GCM_1))
    assert source.reload_if_changed().changed
    for name in "bcdef":
        objects.write("secrets", key(name), name.upper().encode(), expect=0)
    stored = store.get(key("c"))
    assert stored is not None
    flipped = bytearray(stored.value)
    flipped[len(b"k8s:enc:kms:v2:plug:") + 40] ^= 0x01  # in the nonce: a bad tag
    store.txn([Put(key("c"), bytes(flipped))])
    store.txn([Put(key("g"), b"k8s:enc:kms:v2:plug:" + b"\x0a\x02no")])
    for _ in range(2):  # the second LIST finds the seed kept from the first
        page = objects.list("secrets", PREFIX)
        assert [(i.key, i.value.plaintext) for i in page.items] == [
            (key("a"), b"A"),
            (key("b"), b"B"),
            (key("d"), b"D"),
            (key("e"), b"E"),
            (key("f"), b"F"),
        ]
        assert [i.value.provider for i in page.items] == ["aesgcm"] + ["kms"] * 4
        assert [i.value.stale for i in page.items] == [True] + [False] * 4
        assert page.unreadable == (key("c"), key("g"))
    assert api.decrypt_calls == 0  # the writer's own seed


def test_reload_keeps_unchanged_kms_sessions_and_closes_removed_ones(cfg: Path) -> None:
    api = CountingApi(LocalKeyPlugin(KEY_A))
    source = make_source(cfg, config(KMS, GCM_1), api)
    objects = EncryptedObjects(MemoryStore(), source)
    objects.write("secrets", key("a"), b"x", expect=0)
    session = source.kms_v2_session("plug")
    cfg.write_text(config(KMS, BOX_3))
    assert source.reload_if_changed().changed
    objects.write("secrets", key("b"), b"y", expect=0)
    assert source.kms_v2_session("plug") is session
    assert api.encrypt_calls == 1
    cfg.write_text(config(BOX_3, KMS))
    source.reload_if_changed()
    assert not api.closed
    cfg.write_text(config(BOX_3))
    source.reload_if_changed()
    assert api.closed
    assert source.kms_v2_session("plug") is None
    source.close()


def wait_for(condition: Callable[[], bool], *, bound: float = WAIT) -> bool:
    """Waits until ``condition`` holds; ``bound`` is only reached when the code is wrong."""
    tick = threading.Event()
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            return False
        tick.wait(0.005)
    return True


def test_polling_picks_up_a_changed_file_and_close_stops_it(cfg: Path) -> None:
    source = make_source(cfg, config(GCM_1))
    with pytest.raises(InvalidArgument):
        source.start_polling(0)
    first = source.config_hash
    source.start_polling(0.01)
    with pytest.raises(InvalidArgument):
        source.start_polling(0.01)
    cfg.write_text("not: [valid")
    assert wait_for(lambda: source.last_error is not None)
    assert source.config_hash == first
    cfg.write_text(config(BOX_3))
    assert wait_for(lambda: source.config_hash != first)
    assert source.last_error is None
    source.close()
    assert source.chain_for("secrets").first.kind == "secretbox"


def test_kms_pollers_start_with_the_session_and_stop_on_close(cfg: Path) -> None:
    api = CountingApi(LocalKeyPlugin(KEY_A))
    cfg.write_text(config(KMS))
    source = EncryptionConfigSource(cfg, kms_v2=lambda _: api, kms_v1=no_v1)
    objects = EncryptedObjects(MemoryStore(), source)
    objects.write("secrets", key("a"), b"x", expect=0)
    assert wait_for(lambda: api.status_calls >= 1)
    source.close()
    assert api.closed
    assert objects.read("secrets", key("a")).plaintext == b"x"  # the cached seed
