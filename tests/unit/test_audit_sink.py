"""The audit log file: what reaches the file at once, what reaches the disk when."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

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
