"""KmsV2Session: the API-server side of KMS v2, against the in-memory plugin and scripted fakes.

Scenario tables cover every answer kube-apiserver rejects: each must raise PluginError and leave
the previous write state exactly as it was. Time is a fake clock; threads wait on Events.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import pytest

from kinko.crypto.formats import KmsV2
from kinko.crypto.types import DekSourceType, EncryptedObject, KmsWriteState
from kinko.errors import DecryptionError, EnvelopeError, InvalidArgument, PluginError
from kinko.kms.envelope import (
    WRITE_STATE_TTL,
    KmsV2Poller,
    KmsV2Session,
    dek_cache_key,
    key_id_hash,
)
from kinko.kms.plugin import LocalKeyPlugin
from kinko.kms.port import EncryptResult, StatusResult

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
WAIT = 10.0  # Upper bound for Event waits; never reached when the code is right.


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingRng:
    """Distinct, reproducible bytes on every call."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> bytes:
        with self._lock:
            self.calls += 1
            counter = self.calls
        out = b""
        block = 0
        while len(out) < n:
            out += hashlib.sha256(struct.pack(">II", counter, block)).digest()
            block += 1
        return out[:n]


@dataclass
class ScriptedApi:
    """A KmsV2Api that delegates to a real LocalKeyPlugin unless told to answer garbage."""

    plugin: LocalKeyPlugin
    status_override: StatusResult | None = None
    status_error: Exception | None = None
    encrypt_transform: Callable[[EncryptResult], EncryptResult] | None = None
    encrypt_error: Exception | None = None
    decrypt_override: bytes | None = None
    decrypt_error: Exception | None = None
    status_hook: Callable[[], None] | None = None
    status_calls: int = 0
    encrypt_calls: int = 0
    decrypt_calls: list[tuple[str, str, dict[str, bytes]]] = field(default_factory=list)
    on_status: threading.Event | None = None
    status_target: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self) -> StatusResult:
        with self._lock:
            self.status_calls += 1
            if self.on_status is not None and self.status_calls >= self.status_target:
                self.on_status.set()
        if self.status_hook is not None:
            self.status_hook()
        if self.status_error is not None:
            raise self.status_error
        return self.status_override or self.plugin.status()

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        with self._lock:
            self.encrypt_calls += 1
        if self.encrypt_error is not None:
            raise self.encrypt_error
        result = self.plugin.encrypt(plaintext, uid=uid)
        return self.encrypt_transform(result) if self.encrypt_transform else result

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        with self._lock:
            self.decrypt_calls.append((uid, key_id, dict(annotations)))
        if self.decrypt_error is not None:
            raise self.decrypt_error
        if self.decrypt_override is not None:
            return self.decrypt_override
        return self.plugin.decrypt(ciphertext, uid=uid, key_id=key_id, annotations=annotations)


def make(
    key: bytes = KEY_A, *, cache_size: int = 1000, version: str = "v2"
) -> tuple[KmsV2Session, ScriptedApi, FakeClock, CountingRng]:
    api = ScriptedApi(LocalKeyPlugin(key, version=version))
    clock = FakeClock()
    rng = CountingRng()
    session = KmsV2Session(api, name="kms1", clock=clock, rng=rng, cache_size=cache_size)
    return session, api, clock, rng


def stored(state: KmsWriteState) -> EncryptedObject:
    """The EncryptedObject a write with ``state`` stores (payload irrelevant here)."""
    return EncryptedObject(
        encrypted_data=b"payload",
        key_id=state.key_id,
        encrypted_dek_source=state.encrypted_dek_source,
        annotations=state.annotations,
        dek_source_type=DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
    )


def assert_no_secret(message: str, *secrets: bytes) -> None:
    for secret in secrets:
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
            assert form not in message


# -- priming and the write state ----------------------------------------------------------


def test_first_write_state_primes_with_one_status_and_one_encrypt() -> None:
    session, api, _, _ = make()
    state = session.write_state()
    assert (api.status_calls, api.encrypt_calls) == (1, 1)
    assert state.key_id == api.plugin.key_id
    assert len(state.seed) == 32
    assert dict(state.annotations) == {"version.kms.kinko.dev": b"1"}
    unwrapped = api.plugin.decrypt(
        state.encrypted_dek_source, uid="u", key_id=state.key_id, annotations=state.annotations
    )
    assert unwrapped == state.seed
    assert session.write_state() is state
    assert (api.status_calls, api.encrypt_calls) == (1, 1)


def test_write_state_repr_hides_the_seed() -> None:
    session, _, _, _ = make()
    state = session.write_state()
    assert_no_secret(repr(state), state.seed, state.encrypted_dek_source)


def test_current_key_id_primes_once_and_is_none_while_never_healthy() -> None:
    session, api, _, _ = make()
    api.status_error = PluginError("down")
    assert session.current_key_id() is None
    assert session.current_key_id() is None
    assert api.status_calls == 1
    api.status_error = None
    session.check()
    assert session.current_key_id() == api.plugin.key_id


def test_write_state_fails_while_never_healthy_then_works_after_a_good_check() -> None:
    session, api, _, _ = make()
    api.status_override = StatusResult("v2", "unhealthy: hsm", api.plugin.key_id)
    with pytest.raises(PluginError, match="never been healthy"):
        session.write_state()
    api.status_override = None
    session.check()
    assert session.write_state().key_id == api.plugin.key_id


def test_v2beta1_is_accepted() -> None:
    session, _, _, _ = make(version="v2beta1")
    session.check()
    assert session.current_key_id() is not None


# -- expiry (coasting) --------------------------------------------------------------------


def test_unchanged_key_id_extends_expiry_without_encrypt() -> None:
    session, api, clock, _ = make()
    first = session.write_state()
    clock.advance(WRITE_STATE_TTL - 1)
    session.check()
    clock.advance(WRITE_STATE_TTL - 1)
    assert session.write_state() is first
    assert api.encrypt_calls == 1
    assert api.status_calls == 2


def test_expiry_counts_from_when_the_check_started() -> None:
    session, api, clock, _ = make()
    session.check()
    api.status_hook = lambda: clock.advance(30)  # The Status call itself takes 30 s.
    started = clock.now
    session.check()
    assert clock.now == started + 30
    assert session.expires_in() == pytest.approx(WRITE_STATE_TTL - 30)


@pytest.mark.parametrize(
    ("elapsed", "writable"),
    [(0.0, True), (WRITE_STATE_TTL - 0.001, True), (WRITE_STATE_TTL, True), (180.001, False)],
)
def test_writes_stop_three_minutes_after_the_last_healthy_check(
    elapsed: float, writable: bool
) -> None:
    session, api, clock, _ = make()
    state = session.write_state()
    api.status_error = PluginError("down")
    clock.advance(elapsed)
    with pytest.raises(PluginError):
        session.check()
    if writable:
        assert session.write_state() is state
    else:
        with pytest.raises(PluginError, match="expired") as info:
            session.write_state()
        assert "has not been healthy for 180s" in str(info.value)
        assert key_id_hash(state.key_id) in str(info.value)
        assert_no_secret(str(info.value), state.seed, state.encrypted_dek_source)


def test_expired_state_recovers_on_the_next_healthy_check_without_encrypt() -> None:
    session, api, clock, _ = make()
    state = session.write_state()
    clock.advance(WRITE_STATE_TTL + 60)
    with pytest.raises(PluginError, match="expired"):
        session.write_state()
    session.check()
    assert session.write_state() is state
    assert api.encrypt_calls == 1


def test_reads_keep_working_after_writes_expired() -> None:
    session, api, clock, _ = make()
    state = session.write_state()
    api.status_error = PluginError("down")
    clock.advance(WRITE_STATE_TTL * 10)
    assert session.dek_source(stored(state)) == state.seed


# -- garbage answers: PluginError, nothing changes ----------------------------------------

NEW_KEY_ID = "rotated-key-id"


def _with_status(
    version: str = "v2", healthz: str = "ok", key_id: str = NEW_KEY_ID
) -> StatusResult:
    return StatusResult(version=version, healthz=healthz, key_id=key_id)


def _encrypt_answer(**changes: object) -> Callable[[EncryptResult], EncryptResult]:
    def transform(result: EncryptResult) -> EncryptResult:
        base = replace(result, key_id=NEW_KEY_ID)
        return replace(base, **changes)  # type: ignore[arg-type]

    return transform


GARBAGE: dict[str, tuple[StatusResult | None, Callable[[EncryptResult], EncryptResult] | None]] = {
    "status empty key_id": (_with_status(key_id=""), None),
    "status 2 KiB key_id": (_with_status(key_id="k" * 2048), None),
    "status healthz not ok": (_with_status(healthz="unhealthy: hsm offline"), None),
    "status healthz OK uppercase": (_with_status(healthz="OK"), None),
    "status healthz empty": (_with_status(healthz=""), None),
    "status version v1": (_with_status(version="v1"), None),
    "status version v2alpha1": (_with_status(version="v2alpha1"), None),
    "status version flips to v2beta1": (_with_status(version="v2beta1"), None),
    "encrypt key_id differs from status": (
        _with_status(),
        _encrypt_answer(key_id="some-other-key-id"),
    ),
    "encrypt empty key_id": (_with_status(), _encrypt_answer(key_id="")),
    "encrypt 2 KiB key_id": (_with_status(key_id="k" * 1025), _encrypt_answer(key_id="k" * 1025)),
    "encrypt empty ciphertext": (_with_status(), _encrypt_answer(ciphertext=b"")),
    "encrypt oversize ciphertext": (_with_status(), _encrypt_answer(ciphertext=b"c" * 1025)),
    "encrypt annotation key with slash": (
        _with_status(),
        _encrypt_answer(annotations={"Foo/bar": b"1"}),
    ),
    "encrypt annotation key uppercase": (
        _with_status(),
        _encrypt_answer(annotations={"Version.kms.example.com": b"1"}),
    ),
    "encrypt annotation key one label": (
        _with_status(),
        _encrypt_answer(annotations={"version": b"1"}),
    ),
    "encrypt 33 KiB annotations": (
        _with_status(),
        _encrypt_answer(annotations={"big.kms.example.com": b"v" * (33 * 1024)}),
    ),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_answer_raises_plugin_error_and_keeps_the_previous_state(case: str) -> None:
    session, api, clock, rng = make()
    before = session.write_state()
    clock.advance(60)
    expires_before = session.expires_in()
    stats_before = session.cache_stats()
    status, transform = GARBAGE[case]
    api.status_override = status
    api.encrypt_transform = transform
    with pytest.raises(PluginError) as info:
        session.check()
    assert session.write_state() is before
    assert session.expires_in() == expires_before
    assert session.current_key_id() == before.key_id
    assert session.cache_stats().size == stats_before.size
    assert "k" * 100 not in str(info.value)  # Long key_ids are named by size only.
    assert_no_secret(str(info.value), before.seed, before.encrypted_dek_source)
    assert rng.calls <= 2


@pytest.mark.parametrize("case", sorted(set(GARBAGE) - {"status version flips to v2beta1"}))
def test_garbage_first_answer_leaves_no_state(case: str) -> None:
    session, api, _, _ = make()
    status, transform = GARBAGE[case]
    api.status_override = status
    api.encrypt_transform = transform
    with pytest.raises(PluginError):
        session.write_state()
    assert session.current_key_id() is None
    assert session.expires_in() is None


def test_encrypt_refused_becomes_plugin_error() -> None:
    session, api, _, _ = make()
    api.encrypt_error = InvalidArgument("plaintext: too large")
    with pytest.raises(PluginError, match="Encrypt failed") as info:
        session.check()
    assert isinstance(info.value.__cause__, InvalidArgument)


def test_version_must_not_change_even_after_recovering() -> None:
    session, api, _, _ = make(version="v2beta1")
    session.check()
    api.status_override = StatusResult("v2", "ok", api.plugin.key_id)
    with pytest.raises(PluginError, match="as first reported"):
        session.check()
    api.status_override = None
    session.check()


def test_garbage_messages_name_the_provider() -> None:
    session, api, _, _ = make()
    api.status_override = _with_status(healthz="sick")
    with pytest.raises(
        PluginError, match=r"KMS plugin kms1: got unexpected healthz status: 'sick'"
    ):
        session.check()


# -- key_id rotation ----------------------------------------------------------------------


def test_rotation_wraps_one_new_seed_per_key_id() -> None:
    session, api, clock, _ = make()
    old = session.write_state()
    for _ in range(3):
        clock.advance(60)
        session.check()
    assert api.encrypt_calls == 1

    api.plugin = LocalKeyPlugin(KEY_B, retired_keys=[KEY_A])
    for _ in range(3):
        clock.advance(60)
        session.check()
    new = session.write_state()
    assert api.encrypt_calls == 2
    assert new.key_id == api.plugin.key_id != old.key_id
    assert new.seed != old.seed
    # Both seeds are cached: neither old nor fresh data needs a Decrypt.
    assert session.dek_source(stored(old)) == old.seed
    assert session.dek_source(stored(new)) == new.seed
    assert api.decrypt_calls == []


def test_rotation_back_to_an_earlier_key_id_wraps_again() -> None:
    session, api, _, _ = make()
    first = session.write_state()
    api.plugin = LocalKeyPlugin(KEY_B, retired_keys=[KEY_A])
    session.check()
    api.plugin = LocalKeyPlugin(KEY_A, retired_keys=[KEY_B])
    session.check()
    again = session.write_state()
    assert api.encrypt_calls == 3
    assert again.key_id == first.key_id
    assert again.seed != first.seed


def test_failed_rotation_keeps_old_state_and_retries_on_next_check() -> None:
    session, api, _, _ = make()
    old = session.write_state()
    api.plugin = LocalKeyPlugin(KEY_B)
    api.encrypt_error = PluginError("hsm busy")
    with pytest.raises(PluginError):
        session.check()
    assert session.write_state() is old
    api.encrypt_error = None
    session.check()
    assert session.write_state().key_id == api.plugin.key_id
    assert api.encrypt_calls == 3


# -- the DEK cache ------------------------------------------------------------------------


def test_dek_cache_key_matches_kube_apiservers_encoding() -> None:
    annotations = {"b.example.com": b"2", "a.example.com": b"one"}
    expected = hashlib.sha256(
        b"\x00\x00\x00\x01"
        + b"\x00\x03src"
        + b"\x00\x02k1"
        + b"\x00\x00\x00\x02"
        + b"\x00\x0da.example.com\x00\x03one"
        + b"\x00\x0db.example.com\x00\x012"
    ).digest()
    got = dek_cache_key(DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED, b"src", "k1", annotations)
    assert got == expected


def test_dek_cache_key_without_annotations_has_no_count() -> None:
    expected = hashlib.sha256(b"\x00\x00\x00\x00" + b"\x00\x01s" + b"\x00\x01k").digest()
    assert dek_cache_key(DekSourceType.AES_GCM_KEY, b"s", "k", {}) == expected


def test_dek_cache_key_separates_every_field() -> None:
    base = (DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED, b"src", "k1", {"a.b.c": b"1"})
    keys = {
        dek_cache_key(*base),
        dek_cache_key(DekSourceType.AES_GCM_KEY, *base[1:]),
        dek_cache_key(base[0], b"src2", *base[2:]),
        dek_cache_key(base[0], base[1], "k2", base[3]),
        dek_cache_key(*base[:3], {"a.b.c": b"2"}),
        dek_cache_key(*base[:3], {}),
    }
    assert len(keys) == 6


def test_dek_cache_key_refuses_fields_cryptobyte_cannot_encode() -> None:
    with pytest.raises(EnvelopeError):
        dek_cache_key(DekSourceType.AES_GCM_KEY, b"x" * 70000, "k", {})


def test_fresh_data_never_misses() -> None:
    session, api, _, _ = make()
    state = session.write_state()
    for _ in range(5):
        assert session.dek_source(stored(state)) == state.seed
    assert session.cache_stats() == type(session.cache_stats())(hits=5, misses=0, size=1)
    assert api.decrypt_calls == []


def test_miss_decrypts_once_with_fresh_uid_and_the_objects_fields() -> None:
    writer, _, _, _ = make()
    written = writer.write_state()
    reader, api, _, _ = make()
    obj = stored(written)
    assert reader.dek_source(obj) == written.seed
    assert reader.dek_source(obj) == written.seed
    assert reader.cache_stats().misses == 1
    assert reader.cache_stats().hits == 1
    assert len(api.decrypt_calls) == 1
    uid, key_id, annotations = api.decrypt_calls[0]
    assert uuid.UUID(uid).version == 4
    assert key_id == written.key_id
    assert annotations == dict(written.annotations)
    reader.dek_source(replace(obj, encrypted_dek_source=obj.encrypted_dek_source))
    assert len(api.decrypt_calls) == 1


def other_writes(n: int) -> list[EncryptedObject]:
    """Objects written by ``n`` other API servers: distinct seeds under the same key."""
    return [stored(KmsV2Session(LocalKeyPlugin(KEY_A), name="w").write_state()) for _ in range(n)]


def test_cache_is_a_bounded_lru() -> None:
    objs = other_writes(3)
    reader, api, _, _ = make(cache_size=2)
    reader.dek_source(objs[0])
    reader.dek_source(objs[1])
    reader.dek_source(objs[0])  # Now objs[1] is least recently used.
    reader.dek_source(objs[2])  # Evicts objs[1].
    assert reader.cache_stats().size == 2
    reader.dek_source(objs[0])
    assert reader.cache_stats().misses == 3
    reader.dek_source(objs[1])
    assert reader.cache_stats() == type(reader.cache_stats())(hits=2, misses=4, size=2)
    assert len(api.decrypt_calls) == 4


def test_each_write_keeps_the_write_seed_most_recently_used() -> None:
    session, api, _, _ = make(cache_size=2)
    state = session.write_state()
    for other in other_writes(3):
        session.write_state()
        session.dek_source(other)
    session.write_state()
    before = len(api.decrypt_calls)
    assert session.dek_source(stored(state)) == state.seed
    assert len(api.decrypt_calls) == before


@pytest.mark.parametrize(
    ("source_type", "length", "ok"),
    [
        (DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED, 32, True),
        (DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED, 48, True),
        (DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED, 31, False),
        (DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED, 16, False),
        (DekSourceType.AES_GCM_KEY, 16, True),
        (DekSourceType.AES_GCM_KEY, 24, True),
        (DekSourceType.AES_GCM_KEY, 32, True),
        (DekSourceType.AES_GCM_KEY, 20, False),
        (DekSourceType.AES_GCM_KEY, 0, False),
    ],
)
def test_decrypted_length_rules(source_type: DekSourceType, length: int, ok: bool) -> None:
    session, api, _, _ = make()
    api.decrypt_override = b"d" * length
    obj = EncryptedObject(
        encrypted_data=b"x",
        key_id="k1",
        encrypted_dek_source=b"wrapped",
        annotations={},
        dek_source_type=source_type,
    )
    if ok:
        assert session.dek_source(obj) == b"d" * length
    else:
        with pytest.raises(DecryptionError) as info:
            session.dek_source(obj)
        assert str(info.value) == str(DecryptionError())
        assert session.cache_stats().size == 0


def test_plugin_refusal_is_an_opaque_decryption_error() -> None:
    session, _, _, _ = make()
    obj = EncryptedObject(
        encrypted_data=b"x",
        key_id="unknown-key",
        encrypted_dek_source=b"wrapped-seed-bytes",
        annotations={"version.kms.kinko.dev": b"1"},
        dek_source_type=DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
    )
    with pytest.raises(DecryptionError) as info:
        session.dek_source(obj)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_tampered_wrapped_seed_is_a_decryption_error_and_not_cached() -> None:
    writer, _, _, _ = make()
    obj = stored(writer.write_state())
    tampered = bytearray(obj.encrypted_dek_source)
    tampered[-1] ^= 1
    reader, _, _, _ = make()
    with pytest.raises(DecryptionError):
        reader.dek_source(replace(obj, encrypted_dek_source=bytes(tampered)))
    assert reader.cache_stats().size == 0


def test_unavailable_plugin_on_read_is_a_plugin_error() -> None:
    session, api, _, _ = make()
    api.decrypt_error = PluginError(
        "KMS plugin at unix:///x: Decrypt timed out (DEADLINE_EXCEEDED)"
    )
    obj = EncryptedObject(b"x", "k", b"w", {}, DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED)
    with pytest.raises(PluginError, match="DEADLINE_EXCEEDED"):
        session.dek_source(obj)


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "cache_size"), [("", 10), ("kms", 0), ("kms", -1)])
def test_bad_construction(name: str, cache_size: int) -> None:
    with pytest.raises(InvalidArgument):
        KmsV2Session(LocalKeyPlugin(KEY_A), name=name, cache_size=cache_size)


def test_short_rng_output_is_refused_and_changes_nothing() -> None:
    session = KmsV2Session(LocalKeyPlugin(KEY_A), name="kms", rng=lambda n: b"\x00" * (n - 1))
    with pytest.raises(InvalidArgument, match="rng"):
        session.check()
    assert session.expires_in() is None


# -- threads ------------------------------------------------------------------------------


def test_concurrent_first_use_wraps_exactly_one_seed() -> None:
    session, api, _, _ = make()
    start = threading.Barrier(8)
    states: list[KmsWriteState] = []
    lock = threading.Lock()

    def worker() -> None:
        start.wait(WAIT)
        state = session.write_state()
        with lock:
            states.append(state)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert len(states) == 8
    assert len({id(s) for s in states}) == 1
    assert api.encrypt_calls == 1


def test_first_use_waits_for_the_first_check_in_flight() -> None:
    """Regression: a second first use saw "a check ran" and failed with "never been healthy"
    while the first check was still waiting for its Status answer."""
    session, api, _, _ = make()
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(WAIT)

    api.status_hook = hold
    results: dict[str, KmsWriteState | BaseException] = {}

    def use(name: str) -> None:
        try:
            results[name] = session.write_state()
        except BaseException as exc:
            results[name] = exc

    first = threading.Thread(target=use, args=("first",))
    first.start()
    assert entered.wait(WAIT)
    api.status_hook = None
    second = threading.Thread(target=use, args=("second",))
    second.start()
    second.join(0.2)  # A chance for the old bug to show; the fixed code is still waiting here.
    release.set()
    first.join(WAIT)
    second.join(WAIT)
    assert isinstance(results["first"], KmsWriteState)
    assert results["second"] is results["first"]
    assert (api.status_calls, api.encrypt_calls) == (1, 1)


def test_concurrent_checks_reads_and_writes_stay_consistent() -> None:
    session, api, _, _ = make(cache_size=4)
    writers = [KmsV2Session(LocalKeyPlugin(KEY_A), name=f"w{i}") for i in range(6)]
    written = [w.write_state() for w in writers]
    objs = [stored(s) for s in written]
    seeds = {s.encrypted_dek_source: s.seed for s in written}
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def worker(i: int) -> None:
        try:
            start.wait(WAIT)
            for j in range(50):
                if j % 10 == 0:
                    session.check()
                state = session.write_state()
                assert session.dek_source(stored(state)) == state.seed
                obj = objs[(i + j) % len(objs)]
                assert session.dek_source(obj) == seeds[obj.encrypted_dek_source]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    assert errors == []
    assert api.encrypt_calls == 1
    stats = session.cache_stats()
    assert stats.hits + stats.misses == 6 * 50 * 2
    assert stats.misses == len(api.decrypt_calls)
    assert stats.size <= 4


# -- the poller ---------------------------------------------------------------------------


def test_poller_checks_at_the_positive_interval_while_healthy() -> None:
    session, api, _, _ = make()
    api.on_status = threading.Event()
    api.status_target = 3
    poller = KmsV2Poller(session, positive_interval=0.001, negative_interval=WAIT * 100)
    poller.start()
    try:
        assert api.on_status.wait(WAIT)
    finally:
        poller.stop(WAIT)
    assert api.encrypt_calls == 1
    assert session.current_key_id() == api.plugin.key_id


def test_poller_retries_at_the_negative_interval_while_unhealthy() -> None:
    session, api, _, _ = make()
    api.status_error = PluginError("down")
    api.on_status = threading.Event()
    api.status_target = 3
    poller = KmsV2Poller(session, positive_interval=WAIT * 100, negative_interval=0.001)
    poller.start()
    try:
        assert api.on_status.wait(WAIT)
    finally:
        poller.stop(WAIT)
    assert session.expires_in() is None


def test_poller_stop_interrupts_a_long_wait() -> None:
    session, api, _, _ = make()
    api.on_status = threading.Event()
    api.status_target = 1
    poller = KmsV2Poller(session, positive_interval=WAIT * 100, negative_interval=WAIT * 100)
    poller.start()
    assert api.on_status.wait(WAIT)
    poller.stop(WAIT)
    assert api.status_calls == 1
    assert poller._thread is not None
    assert not poller._thread.is_alive()


def test_poller_survives_an_unexpected_exception() -> None:
    session, api, _, _ = make()
    api.status_error = RuntimeError("bug")
    api.on_status = threading.Event()
    api.status_target = 2
    poller = KmsV2Poller(session, positive_interval=WAIT * 100, negative_interval=0.001)
    poller.start()
    try:
        assert api.on_status.wait(WAIT)
    finally:
        poller.stop(WAIT)


def test_poller_rejects_bad_intervals_and_double_start() -> None:
    session, _, _, _ = make()
    with pytest.raises(InvalidArgument):
        KmsV2Poller(session, positive_interval=0)
    poller = KmsV2Poller(session, positive_interval=WAIT * 100)
    poller.start()
    try:
        with pytest.raises(InvalidArgument):
            poller.start()
    finally:
        poller.stop(WAIT)


def test_a_cache_entry_needs_every_field_of_kube_apiservers_key() -> None:
    # kube-apiserver keys its cache by type, wrapped seed, key_id and annotations: the same
    # wrapped seed under another key_id or other annotations must reach the plugin again.
    writer, _, _, _ = make()
    obj = stored(writer.write_state())
    reader, api, _, _ = make()
    api.decrypt_override = b"s" * 32
    variants = [
        obj,
        replace(obj, key_id=obj.key_id + "x"),
        replace(obj, annotations={**obj.annotations, "other.example.com": b"1"}),
        replace(obj, annotations={}),
        replace(obj, dek_source_type=DekSourceType.AES_GCM_KEY),
    ]
    for variant in variants:
        reader.dek_source(variant)
    assert len(api.decrypt_calls) == len(variants)
    for variant in variants:
        reader.dek_source(replace(variant, encrypted_data=b"other payload"))
    assert reader.cache_stats() == type(reader.cache_stats())(
        hits=len(variants), misses=len(variants), size=len(variants)
    )


def test_annotation_order_does_not_split_a_cache_entry() -> None:
    session, api, _, _ = make()
    api.decrypt_override = b"s" * 32
    first = {"a.example.com": b"1", "b.example.com": b"2"}
    second = {"b.example.com": b"2", "a.example.com": b"1"}
    obj = EncryptedObject(b"x", "k", b"w", first, DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED)
    session.dek_source(obj)
    session.dek_source(replace(obj, annotations=second))
    assert len(api.decrypt_calls) == 1


def test_a_field_too_long_for_the_cache_key_is_refused_before_decrypt() -> None:
    session, api, _, _ = make()
    obj = EncryptedObject(
        b"x", "k", b"w" * 70000, {}, DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED
    )
    with pytest.raises(EnvelopeError):
        session.dek_source(obj)
    assert api.decrypt_calls == []
    assert session.cache_stats() == type(session.cache_stats())(hits=0, misses=0, size=0)


def test_write_state_and_expiry_change_together_on_rotation() -> None:
    session, api, clock, _ = make()
    first = session.write_state()
    clock.advance(WRITE_STATE_TTL + 1)
    with pytest.raises(PluginError, match="expired"):
        session.write_state()
    api.plugin = LocalKeyPlugin(KEY_B)
    session.check()
    second = session.write_state()
    assert second.key_id != first.key_id
    assert session.current_key_id() == second.key_id
    assert session.expires_in() == WRITE_STATE_TTL


def test_a_seed_the_session_evicted_is_asked_for_again_by_a_transformer_that_kept_it() -> None:
    # Two writers (other API servers) seal under their own seeds; the reader's session holds
    # one seed. A transformer keeps a seed only while its session has evicted none since.
    writers = [
        KmsV2("kms", KmsV2Session(LocalKeyPlugin(KEY_A), name=f"w{i}"), rng=os.urandom)
        for i in range(2)
    ]
    value_a = writers[0].seal(b"A", aad=b"/k")
    value_b = writers[1].seal(b"B", aad=b"/k")
    session, api, _, _ = make(cache_size=1)
    session.write_state()  # the reader's own first check (Status, Encrypt) comes first
    reader = KmsV2("kms", session, rng=os.urandom)
    assert reader.open(value_a, aad=b"/k").plaintext == b"A"
    assert reader.open(value_a, aad=b"/k").plaintext == b"A"  # kept: no Decrypt
    assert len(api.decrypt_calls) == 1
    assert reader.open(value_b, aad=b"/k").plaintext == b"B"  # evicts A's seed
    api.decrypt_error = DecryptionError()  # the root key is gone: Decrypt is refused
    with pytest.raises(DecryptionError):
        reader.open(value_a, aad=b"/k")
    assert len(api.decrypt_calls) == 3
    # B's seed is still in the session: read again through it, then kept anew.
    assert reader.open(value_b, aad=b"/k").plaintext == b"B"
    assert reader.open(value_b, aad=b"/k").plaintext == b"B"
    assert len(api.decrypt_calls) == 3
