"""The key-record cache of wrap, unwrap and rewrap (KeyService, ADR 13).

Two clocks, both fakes: the service's clock (``now``: states, expiry, purge dates) and the
cache's monotonic clock (``Tick``: how long a record may be used). Covers: every write
through the same service takes effect on its next call; another service on the same SQLite
file (another kinko process) is seen within the TTL for changes that refuse a call, and at
once for changes that allow one (enable, a new version for its own ciphertexts); a cached
record whose HSM material another process purged is read again and the call retried, so
the caller gets the store's answer (not found) and one audit record; state and expiry are
evaluated against ``now`` on every call; a fill racing a write never caches the older
record; TTL 0 turns the cache off. And ``check_key_use`` (the root-key plugin's check, ADR
15): the same answers as wrap and unwrap without the HSM or an audit record, reused without a
store read while they hold, and the same bounds for writes here and elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kinko import errors
from kinko.errors import KinkoError
from kinko.hsm.memory import MemoryDevice, MemoryHsm
from kinko.keys import records as rec
from kinko.keys.audit import MemoryAuditSink
from kinko.keys.auth import Principal, Role
from kinko.keys.model import KeyState
from kinko.keys.service import DEFAULT_KEY_CACHE_TTL, KeyService
from kinko.store.memory import MemoryStore
from kinko.store.port import Entry, Store
from kinko.store.sqlite import SqliteStore

T0 = datetime(2030, 1, 1, tzinfo=UTC)
MIN, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
INST = "inst-1"
TTL = DEFAULT_KEY_CACHE_TTL


def P(name: str, *roles: Role) -> Principal:
    return Principal(name=name, instance=INST, roles=frozenset(roles))


ALICE = P("alice", Role.MANAGER)
READER = P("rita", Role.READER)
PURGER = P("pat", Role.KEY_PURGE)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Tick:
    """A fake monotonic clock (seconds)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def reason(fn: Callable[[], object]) -> str:
    with pytest.raises(KinkoError) as info:
        fn()
    return info.value.reason_code


@dataclass
class Two:
    """Two services on one SQLite file and one HSM device: ``a`` and another process ``b``."""

    a: KeyService
    b: KeyService
    clock: Clock
    tick: Tick
    audit: MemoryAuditSink
    device: MemoryDevice


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Two]:
    device, audit, clock, tick = MemoryDevice(), MemoryAuditSink(), Clock(), Tick()
    stores = [SqliteStore(tmp_path / "kinko.db") for _ in range(2)]
    a, b = (
        KeyService(s, MemoryHsm(device), audit=audit, clock=clock, rng=os.urandom, monotonic=tick)
        for s in stores
    )
    try:
        yield Two(a, b, clock, tick, audit, device)
    finally:
        for s in stores:
            s.close()


def one(store: Store | None = None, *, ttl: float = TTL) -> tuple[KeyService, Clock, Tick]:
    clock, tick = Clock(), Tick()
    svc = KeyService(
        store or MemoryStore(),
        MemoryHsm(),
        audit=MemoryAuditSink(),
        clock=clock,
        rng=os.urandom,
        key_cache_ttl=ttl,
        monotonic=tick,
    )
    return svc, clock, tick


# --- writes through this service: effective on the next call, the clock standing still -------


def _disable(svc: KeyService, key_id: str) -> None:
    svc.disable(ALICE, INST, key_id)


def _delete(svc: KeyService, key_id: str) -> None:
    svc.delete_key(ALICE, INST, key_id)


def _delete_alias(svc: KeyService, key_id: str) -> None:
    svc.delete_alias(ALICE, INST, key_id, "the-alias")


def _move(svc: KeyService, key_id: str) -> None:
    svc.create_key_ring(ALICE, INST, "ring-2")
    svc.move_key(ALICE, INST, key_id, key_ring_id="ring-2")


@pytest.mark.parametrize(
    ("write", "ref", "ring", "wrap_reason", "unwrap_reason"),
    [
        (_disable, "id", None, "KEY_ACTION_INVALID_STATE_ERR", "KEY_ACTION_INVALID_STATE_ERR"),
        (_delete, "id", None, "KEY_DELETED_ERR", "KEY_DELETED_ERR"),
        (_delete_alias, "alias", None, "KEY_NOT_FOUND_ERR", "KEY_NOT_FOUND_ERR"),
        (_move, "id", "default", "KEY_NOT_FOUND_ERR", "KEY_NOT_FOUND_ERR"),
    ],
)
def test_a_write_through_the_service_refuses_its_next_wrap_and_unwrap(
    write: Callable[[KeyService, str], None],
    ref: str,
    ring: str | None,
    wrap_reason: str,
    unwrap_reason: str,
) -> None:
    svc, _, _ = one()
    key = svc.create_key(ALICE, INST, name="root-1", aliases=["the-alias"])
    key_ref = key.id if ref == "id" else "the-alias"
    ct = svc.wrap(READER, INST, key_ref, key_ring=ring).ciphertext
    svc.unwrap(READER, INST, key_ref, ciphertext=ct, key_ring=ring)  # Both are cached now.
    write(svc, key.id)
    assert reason(lambda: svc.wrap(READER, INST, key_ref, key_ring=ring)) == wrap_reason
    assert (
        reason(lambda: svc.unwrap(READER, INST, key_ref, ciphertext=ct, key_ring=ring))
        == unwrap_reason
    )


def test_rotate_through_the_service_wraps_with_the_new_version_at_once() -> None:
    svc, clock, _ = one()
    key = svc.create_key(ALICE, INST, name="root-1")
    first = svc.wrap(READER, INST, key.id)
    clock.now += HOUR
    rotated = svc.rotate(ALICE, INST, key.id)
    second = svc.wrap(READER, INST, key.id)
    assert first.key_version.id == key.key_version.id
    assert second.key_version.id == rotated.key_version.id != key.key_version.id
    unwrapped = svc.unwrap(READER, INST, key.id, ciphertext=first.ciphertext)
    assert unwrapped.rewrapped_key_version is not None
    assert unwrapped.rewrapped_key_version.id == rotated.key_version.id


def test_enable_through_the_service_allows_the_next_wrap() -> None:
    svc, clock, _ = one()
    key = svc.create_key(ALICE, INST, name="root-1")
    svc.wrap(READER, INST, key.id)
    svc.disable(ALICE, INST, key.id)
    assert reason(lambda: svc.wrap(READER, INST, key.id)) == "KEY_ACTION_INVALID_STATE_ERR"
    clock.now += MIN
    svc.enable(ALICE, INST, key.id)
    assert svc.wrap(READER, INST, key.id).ciphertext


def test_purge_through_the_service_is_not_found_at_once() -> None:
    svc, clock, _ = one()
    key = svc.create_key(ALICE, INST, name="root-1")
    ct = svc.wrap(READER, INST, key.id).ciphertext
    svc.delete_key(ALICE, INST, key.id)
    clock.now += 4 * HOUR
    svc.purge_key(PURGER, INST, key.id)
    assert reason(lambda: svc.unwrap(READER, INST, key.id, ciphertext=ct)) == "KEY_NOT_FOUND_ERR"
    assert reason(lambda: svc.wrap(READER, INST, key.id)) == "KEY_NOT_FOUND_ERR"


class _WriteDuringRead:
    """A store that, once armed, runs ``write`` right after it read a key's record: the
    record the caller gets predates that write."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.write: Callable[[], object] | None = None

    def get(self, key: bytes) -> Entry | None:
        entry = self.inner.get(key)
        write, self.write = self.write, None
        if write is not None and key.startswith(b"/kinko/keys/"):
            write()
        return entry

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_a_record_read_before_a_write_of_the_service_is_not_cached() -> None:
    store = _WriteDuringRead(MemoryStore())
    svc, _, _ = one(store)  # type: ignore[arg-type]
    key = svc.create_key(ALICE, INST, name="root-1")
    assert rec.key_path(INST, key.id).startswith(b"/kinko/keys/")
    store.write = lambda: svc.disable(ALICE, INST, key.id)
    # This wrap read the record before the disable ran, and is answered from it ...
    assert svc.wrap(READER, INST, key.id).ciphertext
    # ... but that record was not kept: the next wrap sees the disable.
    assert reason(lambda: svc.wrap(READER, INST, key.id)) == "KEY_ACTION_INVALID_STATE_ERR"


# --- state and expiry against now, on every call ----------------------------------------------


def test_expiry_is_applied_on_every_call_even_from_the_cache() -> None:
    svc, clock, _ = one()
    key = svc.create_key(ALICE, INST, name="root-1", expiration_date=T0 + DAY)
    ct = svc.wrap(READER, INST, key.id).ciphertext
    clock.now = T0 + DAY  # The monotonic clock stands still: the record is cached.
    assert reason(lambda: svc.wrap(READER, INST, key.id)) == "KEY_ACTION_INVALID_STATE_ERR"
    assert svc.unwrap(READER, INST, key.id, ciphertext=ct).key_version.id == key.key_version.id


def test_a_cached_deleted_key_due_for_purge_is_purged_on_the_next_call() -> None:
    svc, clock, _ = one()
    key = svc.create_key(ALICE, INST, name="root-1")
    ct = svc.wrap(READER, INST, key.id).ciphertext
    svc.delete_key(ALICE, INST, key.id)
    assert reason(lambda: svc.unwrap(READER, INST, key.id, ciphertext=ct)) == "KEY_DELETED_ERR"
    clock.now += 90 * DAY
    assert reason(lambda: svc.unwrap(READER, INST, key.id, ciphertext=ct)) == "KEY_NOT_FOUND_ERR"
    assert reason(lambda: svc.get_key_metadata(ALICE, INST, key.id)) == "KEY_NOT_FOUND_ERR"


# --- another process on the same store ---------------------------------------------------------


def test_another_process_disable_is_seen_within_the_ttl(two: Two) -> None:
    key = two.a.create_key(ALICE, INST, name="root-1")
    ct = two.a.wrap(READER, INST, key.id).ciphertext
    two.b.disable(ALICE, INST, key.id)
    # Within the bound, a's cached record still wraps (the documented behaviour) ...
    two.tick.t += TTL / 2
    assert two.a.wrap(READER, INST, key.id).ciphertext
    # ... and once the TTL has passed since a read it, a reads the store again.
    two.tick.t += TTL / 2
    assert reason(lambda: two.a.wrap(READER, INST, key.id)) == "KEY_ACTION_INVALID_STATE_ERR"
    assert (
        reason(lambda: two.a.unwrap(READER, INST, key.id, ciphertext=ct))
        == "KEY_ACTION_INVALID_STATE_ERR"
    )


def test_another_process_delete_and_purge_are_seen_within_the_ttl(two: Two) -> None:
    key = two.a.create_key(ALICE, INST, name="root-1")
    ct = two.a.wrap(READER, INST, key.id).ciphertext
    two.b.delete_key(ALICE, INST, key.id)
    two.tick.t += TTL
    assert reason(lambda: two.a.unwrap(READER, INST, key.id, ciphertext=ct)) == "KEY_DELETED_ERR"
    two.clock.now += 4 * HOUR
    two.b.purge_key(PURGER, INST, key.id)
    two.tick.t += TTL
    assert reason(lambda: two.a.unwrap(READER, INST, key.id, ciphertext=ct)) == (
        "KEY_NOT_FOUND_ERR"
    )
    assert reason(lambda: two.a.wrap(READER, INST, key.id)) == "KEY_NOT_FOUND_ERR"


def test_another_process_enable_is_seen_at_once(two: Two) -> None:
    key = two.a.create_key(ALICE, INST, name="root-1")
    two.a.disable(ALICE, INST, key.id)
    assert reason(lambda: two.a.wrap(READER, INST, key.id)) == "KEY_ACTION_INVALID_STATE_ERR"
    two.clock.now += MIN
    two.b.enable(ALICE, INST, key.id)
    # A cached record that refuses a call is read again before the call fails.
    assert two.a.wrap(READER, INST, key.id).ciphertext


def test_a_version_another_process_added_unwraps_at_once(two: Two) -> None:
    key = two.a.create_key(ALICE, INST, name="root-1")
    first = two.a.wrap(READER, INST, key.id)
    two.clock.now += HOUR
    rotated = two.b.rotate(ALICE, INST, key.id)
    new = two.b.wrap(READER, INST, key.id)
    assert new.key_version.id == rotated.key_version.id
    # a's cached record lacks the new version: the ciphertext's version makes a read again.
    assert two.a.unwrap(READER, INST, key.id, ciphertext=new.ciphertext).plaintext
    assert two.a.rewrap(READER, INST, key.id, ciphertext=first.ciphertext).ciphertext
    # And a now wraps with the new version too.
    assert two.a.wrap(READER, INST, key.id).key_version.id == rotated.key_version.id


def test_another_process_rotate_reaches_wrap_within_the_ttl(two: Two) -> None:
    key = two.a.create_key(ALICE, INST, name="root-1")
    two.a.wrap(READER, INST, key.id)
    two.clock.now += HOUR
    rotated = two.b.rotate(ALICE, INST, key.id)
    two.tick.t += TTL
    assert two.a.wrap(READER, INST, key.id).key_version.id == rotated.key_version.id


def _purged_by_b_within_the_ttl(two: Two) -> tuple[str, str, str]:
    """A root key a wrapped with, rotated (so ``old`` is a ciphertext of a previous version),
    then deleted and purged by b; a's cached record still names it and the TTL has not passed.
    Returns the key id and ciphertexts of the old and the latest version."""
    key = two.a.create_key(ALICE, INST, name="root-1")
    old = two.a.wrap(READER, INST, key.id).ciphertext
    two.clock.now += HOUR
    two.a.rotate(ALICE, INST, key.id)
    new = two.a.wrap(READER, INST, key.id).ciphertext
    two.a.unwrap(READER, INST, key.id, ciphertext=old)  # a's cache holds the latest record.
    two.b.delete_key(ALICE, INST, key.id)
    two.clock.now += 4 * HOUR
    two.b.purge_key(PURGER, INST, key.id)
    two.tick.t += TTL / 2
    return key.id, old, new


@pytest.mark.parametrize("call", ["wrap", "unwrap-old", "unwrap-new", "rewrap"])
def test_a_purge_by_another_process_is_not_found_not_missing_material_within_the_ttl(
    two: Two, call: str
) -> None:
    # The cached record passes every check but the HSM objects are gone: the call used to
    # fail with INCOMPLETE_METADATA_ERR. The store's answer is that there is no such key.
    key_id, old, new = _purged_by_b_within_the_ttl(two)
    calls: dict[str, Callable[[], object]] = {
        "wrap": lambda: two.a.wrap(READER, INST, key_id),
        "unwrap-old": lambda: two.a.unwrap(READER, INST, key_id, ciphertext=old),
        "unwrap-new": lambda: two.a.unwrap(READER, INST, key_id, ciphertext=new),
        "rewrap": lambda: two.a.rewrap(READER, INST, key_id, ciphertext=old),
    }
    before = len(two.audit.records)
    assert reason(calls[call]) == "KEY_NOT_FOUND_ERR"
    # One audit record, of the final outcome, naming no version of the purged key.
    assert [(r.outcome, r.reason, r.key_version) for r in two.audit.records[before:]] == [
        ("failure", "KEY_NOT_FOUND_ERR", None)
    ]
    # The stale entry is gone: the next call is answered by the store at once.
    assert reason(calls[call]) == "KEY_NOT_FOUND_ERR"


def test_material_missing_under_a_fresh_record_is_still_incomplete_metadata(two: Two) -> None:
    # The store names the key, the HSM lost its material: retried once on the store's
    # record, then reported as it was, audited once.
    key = two.a.create_key(ALICE, INST, name="root-1")
    ct = two.a.wrap(READER, INST, key.id).ciphertext  # Cached.
    with two.device.lock:
        two.device.keys.clear()
    before = len(two.audit.records)
    assert reason(lambda: two.a.wrap(READER, INST, key.id)) == "INCOMPLETE_METADATA_ERR"
    assert reason(lambda: two.a.unwrap(READER, INST, key.id, ciphertext=ct)) == (
        "INCOMPLETE_METADATA_ERR"
    )
    assert [(r.outcome, r.reason, r.key_id) for r in two.audit.records[before:]] == [
        ("failure", "INCOMPLETE_METADATA_ERR", key.id)
    ] * 2


def test_another_process_rotate_reaches_unwrap_of_an_old_version_within_the_ttl(
    two: Two,
) -> None:
    # The documented bound (ADR 13): a ciphertext of a version a's cached record has is
    # answered from that record, which does not know the new latest version yet.
    key = two.a.create_key(ALICE, INST, name="root-1")
    old = two.a.wrap(READER, INST, key.id).ciphertext
    two.clock.now += HOUR
    rotated = two.b.rotate(ALICE, INST, key.id)
    two.tick.t += TTL / 2
    assert two.a.unwrap(READER, INST, key.id, ciphertext=old).rewrapped_key_version is None
    rewrapped = two.a.rewrap(READER, INST, key.id, ciphertext=old)
    assert rewrapped.rewrapped_key_version.id == key.key_version.id
    two.tick.t += TTL / 2
    unwrapped = two.a.unwrap(READER, INST, key.id, ciphertext=old)
    assert unwrapped.rewrapped_key_version is not None
    assert unwrapped.rewrapped_key_version.id == rotated.key_version.id


def test_a_garbled_ciphertext_is_refused_whatever_the_cache_holds(two: Two) -> None:
    key = two.a.create_key(ALICE, INST, name="root-1")
    ct = two.a.wrap(READER, INST, key.id).ciphertext
    other = two.a.create_key(ALICE, INST, name="root-2")
    two.a.wrap(READER, INST, other.id)
    # A ciphertext of another key names a version this key does not have: read again, and
    # refused as before.
    assert reason(lambda: two.a.unwrap(READER, INST, other.id, ciphertext=ct)) == (
        "UNPROCESSABLE_CIPHERTEXT_ERR"
    )
    assert reason(lambda: two.a.unwrap(READER, INST, key.id, ciphertext="AAAA")) == (
        "UNPROCESSABLE_CIPHERTEXT_ERR"
    )


def test_every_call_is_audited_when_answered_from_the_cache(two: Two) -> None:
    key = two.a.create_key(ALICE, INST, name="root-1")
    before = len(two.audit.records)
    for _ in range(3):
        two.a.wrap(READER, INST, key.id, correlation_id="c-1")
    wraps = [r for r in two.audit.records[before:] if r.action == "kms.secrets.wrap"]
    assert [(r.outcome, r.key_id, r.correlation_id) for r in wraps] == [
        ("success", key.id, "c-1")
    ] * 3


# --- configuration -----------------------------------------------------------------------------


def test_ttl_zero_reads_the_store_on_every_call(tmp_path: Path) -> None:
    device, audit, clock = MemoryDevice(), MemoryAuditSink(), Clock()
    stores = [SqliteStore(tmp_path / "kinko.db") for _ in range(2)]
    try:
        a, b = (
            KeyService(
                s, MemoryHsm(device), audit=audit, clock=clock, rng=os.urandom, key_cache_ttl=0
            )
            for s in stores
        )
        key = a.create_key(ALICE, INST, name="root-1")
        a.wrap(READER, INST, key.id)
        b.disable(ALICE, INST, key.id)
        assert reason(lambda: a.wrap(READER, INST, key.id)) == "KEY_ACTION_INVALID_STATE_ERR"
        assert b.get_key_metadata(READER, INST, key.id).state is KeyState.SUSPENDED
    finally:
        for s in stores:
            s.close()


@pytest.mark.parametrize("ttl", [-1.0, float("nan")])
def test_a_negative_or_nan_ttl_is_refused(ttl: float) -> None:
    with pytest.raises(errors.InvalidArgument, match="key_cache_ttl"):
        one(ttl=ttl)


# --- check_key_use: the root-key plugin's check before it uses a local KEK (ADR 15) ---------


def test_check_key_use_answers_as_wrap_and_unwrap_would_without_the_hsm() -> None:
    svc, clock, _ = one()
    key = svc.create_key(ALICE, INST, name="root-1", aliases=["the-alias"])
    version = key.key_version.id
    use = svc.check_key_use(READER, INST, "the-alias")
    assert (use.key_id, use.latest_version.id) == (key.id, version)
    assert svc.check_key_use(READER, INST, key.id, unwrap_version=version).key_id == key.id
    other = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(errors.UnprocessableCiphertext):
        svc.check_key_use(READER, INST, key.id, unwrap_version=other)
    assert reason(lambda: svc.check_key_use(P("nobody"), INST, key.id)) == "FORBIDDEN_ERR"
    stranger = Principal(name="x", instance="inst-2", roles=frozenset({Role.READER}))
    assert reason(lambda: svc.check_key_use(stranger, INST, key.id)) == "UNAUTHORIZED_ERR"
    standard = svc.create_key(ALICE, INST, name="std", extractable=True)
    assert reason(lambda: svc.check_key_use(READER, INST, standard.id)) == "KEY_ROOT_REQ_ERR"
    clock.now += HOUR
    rotated = svc.rotate(ALICE, INST, key.id).key_version.id
    assert svc.check_key_use(READER, INST, key.id).latest_version.id == rotated  # at once
    assert svc.check_key_use(READER, INST, key.id, unwrap_version=version).key_id == key.id


def test_check_key_use_is_not_audited_and_reads_no_store_while_its_answer_holds() -> None:
    counted = _CountingStore(MemoryStore())
    audit = MemoryAuditSink()
    tick = Tick()
    svc = KeyService(
        counted,  # type: ignore[arg-type]
        MemoryHsm(),
        audit=audit,
        clock=Clock(),
        rng=os.urandom,
        monotonic=tick,
    )
    key = svc.create_key(ALICE, INST, name="root-1")
    records, reads = len(audit.records), counted.gets
    for _ in range(100):
        svc.check_key_use(READER, INST, key.id)
    assert counted.gets - reads == 1
    assert len(audit.records) == records
    tick.t += TTL
    svc.check_key_use(READER, INST, key.id)
    assert counted.gets - reads == 2


@pytest.mark.parametrize(
    ("write", "wrap_reason", "unwrap_reason"),
    [
        (_disable, "KEY_ACTION_INVALID_STATE_ERR", "KEY_ACTION_INVALID_STATE_ERR"),
        (_delete, "KEY_DELETED_ERR", "KEY_DELETED_ERR"),
    ],
)
def test_check_key_use_sees_a_write_through_the_service_at_once(
    write: Callable[[KeyService, str], None], wrap_reason: str, unwrap_reason: str
) -> None:
    svc, _, _ = one()
    key = svc.create_key(ALICE, INST, name="root-1")
    version = key.key_version.id
    svc.check_key_use(READER, INST, key.id)
    svc.check_key_use(READER, INST, key.id, unwrap_version=version)
    write(svc, key.id)  # no time passes
    assert reason(lambda: svc.check_key_use(READER, INST, key.id)) == wrap_reason
    assert (
        reason(lambda: svc.check_key_use(READER, INST, key.id, unwrap_version=version))
        == unwrap_reason
    )


def test_check_key_use_applies_expiry_on_every_call() -> None:
    svc, clock, _ = one()
    key = svc.create_key(ALICE, INST, name="root-1", expiration_date=T0 + DAY)
    version = key.key_version.id
    svc.check_key_use(READER, INST, key.id)
    clock.now = T0 + DAY  # The monotonic clock stands still: the answer would still hold.
    assert reason(lambda: svc.check_key_use(READER, INST, key.id)) == (
        "KEY_ACTION_INVALID_STATE_ERR"
    )
    assert svc.check_key_use(READER, INST, key.id, unwrap_version=version).key_id == key.id


def test_check_key_use_sees_another_process_within_the_ttl_and_an_enable_at_once(
    two: Two,
) -> None:
    key = two.a.create_key(ALICE, INST, name="root-1")
    two.a.check_key_use(READER, INST, key.id)
    two.b.disable(ALICE, INST, key.id)
    two.tick.t += TTL / 2
    assert two.a.check_key_use(READER, INST, key.id).key_id == key.id  # the documented bound
    two.tick.t += TTL / 2
    assert reason(lambda: two.a.check_key_use(READER, INST, key.id)) == (
        "KEY_ACTION_INVALID_STATE_ERR"
    )
    two.clock.now += MIN
    two.b.enable(ALICE, INST, key.id)
    assert two.a.check_key_use(READER, INST, key.id).key_id == key.id  # a refusal is not kept


class _CountingStore:
    """Counts the store reads of a key service."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.gets = 0

    def get(self, key: bytes) -> Entry | None:
        self.gets += 1
        return self.inner.get(key)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


class _SlowReads(_CountingStore):
    """Key record reads that take ``seconds`` of the fake monotonic clock."""

    def __init__(self, inner: MemoryStore, tick: Tick, seconds: float) -> None:
        super().__init__(inner)
        self.tick, self.seconds = tick, seconds

    def get(self, key: bytes) -> Entry | None:
        entry = super().get(key)
        if key.startswith(b"/kinko/keys/"):
            self.tick.t += self.seconds
        return entry


def test_a_check_key_use_answer_holds_from_before_its_store_read() -> None:
    tick = Tick()
    store = _SlowReads(MemoryStore(), tick, 0.4)
    svc = KeyService(
        store,  # type: ignore[arg-type]
        MemoryHsm(),
        audit=MemoryAuditSink(),
        clock=Clock(),
        rng=os.urandom,
        monotonic=tick,
    )
    key = svc.create_key(ALICE, INST, name="root-1")
    started = tick.t
    svc.check_key_use(READER, INST, key.id)  # reads the record: 0.4 s pass
    reads = store.gets
    tick.t = started + TTL  # the record read then may no longer be used
    svc.check_key_use(READER, INST, key.id)
    assert store.gets == reads + 1
