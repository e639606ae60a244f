"""The audit log file: what reaches the file at once, what reaches the disk when."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kinko.errors import InvalidArgument, UnavailableError
from kinko.keys.audit import AuditRecord, FileAuditSink, SyncMode

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _record(n: int) -> AuditRecord:
    return AuditRecord(
        timestamp=T0, action="kms.secrets.wrap", outcome="success", who=f"user-{n}", key_id="k"
    )


@pytest.mark.parametrize("sync", ["interval", "always"])
def test_every_record_is_in_the_file_when_record_returns(tmp_path: Path, sync: SyncMode) -> None:
    # Written with one write(2) before returning: a crash of kinko loses nothing acknowledged.
    path = tmp_path / "audit.log"
    sink = FileAuditSink(path, sync=sync)
    try:
        for n in range(5):
            sink.record(_record(n))
            assert len(path.read_text().splitlines()) == n + 1
    finally:
        sink.close()
    assert [json.loads(x)["who"] for x in path.read_text().splitlines()] == [
        f"user-{n}" for n in range(5)
    ]


def test_records_from_many_threads_stay_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with FileAuditSink(path, interval=0.001) as sink:

        def work(n: int) -> None:
            for _ in range(50):
                sink.record(_record(n))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 200
    assert all(json.loads(line)["action"] == "kms.secrets.wrap" for line in lines)


def test_close_is_idempotent_and_the_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = FileAuditSink(path)
    sink.record(_record(1))
    sink.close()
    sink.close()
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("sync", "interval"), [("sometimes", 0.05), ("interval", 0.0)])
def test_bad_settings_are_refused(tmp_path: Path, sync: str, interval: float) -> None:
    with pytest.raises(InvalidArgument):
        FileAuditSink(tmp_path / "audit.log", sync=sync, interval=interval)  # type: ignore[arg-type]


def test_an_unwritable_log_refuses_the_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = FileAuditSink(path, sync="always")
    # The log stops taking writes underneath (a failed disk): swap in a read-only descriptor.
    read_only = os.open(path, os.O_RDONLY)
    os.close(sink._fd)
    sink._fd = read_only
    try:
        with pytest.raises(UnavailableError, match="cannot write the audit log"):
            sink.record(_record(1))
    finally:
        sink.close()


_OPTIONAL_TEXT = st.one_of(st.none(), st.text(max_size=24))


@settings(max_examples=300, deadline=None)
@given(
    offset_minutes=st.integers(min_value=-720, max_value=720),
    micros=st.integers(min_value=0, max_value=10**12),
    action=st.text(max_size=24),
    who=st.text(max_size=24),
    optional=st.lists(_OPTIONAL_TEXT, min_size=7, max_size=7),
)
def test_a_record_is_written_as_json_dumps_writes_it(
    offset_minutes: int, micros: int, action: str, who: str, optional: list[str | None]
) -> None:
    # to_json builds the line by hand (a record is written on every call); the audit log's
    # format must stay what json.dumps gave, escapes included.
    zone = timezone(timedelta(minutes=offset_minutes))
    stamp = datetime(2026, 1, 1, tzinfo=zone) + timedelta(microseconds=micros)
    instance, token_id, key_id, key_version, resource, reason, correlation_id = optional
    record = AuditRecord(
        timestamp=stamp,
        action=action,
        outcome="failure",
        who=who,
        instance=instance,
        token_id=token_id,
        key_id=key_id,
        key_version=key_version,
        resource=resource,
        reason=reason,
        correlation_id=correlation_id,
    )
    doc = {
        "timestamp": stamp.astimezone(UTC).isoformat(),
        "action": action,
        "outcome": "failure",
        "reason": reason,
        "who": who,
        "tokenId": token_id,
        "instance": instance,
        "keyId": key_id,
        "keyVersion": key_version,
        "resource": resource,
        "correlationId": correlation_id,
    }
    assert record.to_json() == json.dumps(doc, separators=(",", ":"), ensure_ascii=True)


def test_a_record_is_not_held_up_by_the_background_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The flusher used to fsync holding the sink's lock, so with sync="interval" a record
    # written during a slow fsync waited for the disk after all.
    in_fsync = threading.Event()
    release = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        in_fsync.set()
        release.wait(120)  # longer than the guard below: only the test's end releases it
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    path = tmp_path / "audit.log"
    sink = FileAuditSink(path, interval=0.001)
    written = threading.Event()

    def write_one() -> None:
        sink.record(_record(1))
        written.set()

    try:
        sink.record(_record(0))
        assert in_fsync.wait(30)
        writer = threading.Thread(target=write_one)
        writer.start()
        # A deadlock guard, not a timing check: the record needs no fsync to return.
        assert written.wait(30)
        assert not release.is_set()
        assert len(path.read_text().splitlines()) == 2
    finally:
        release.set()
        sink.close()


def test_a_close_that_races_the_flushers_clear_still_stops_it(tmp_path: Path) -> None:
    sink = FileAuditSink(tmp_path / "audit.log", interval=0.001)
    flusher = sink._flusher
    assert flusher is not None
    old_pending = sink._pending

    class RacingEvent(threading.Event):
        def clear(self) -> None:
            # close() sets stop and pending just before the flusher clears pending.
            sink._stop.set()
            super().set()
            super().clear()

    sink._pending = RacingEvent()
    old_pending.set()  # wake the flusher, which then clears the racing event
    flusher.join(timeout=10)
    assert not flusher.is_alive(), "the flusher missed the close and waits forever"
    sink._flusher = None
    sink.close()
