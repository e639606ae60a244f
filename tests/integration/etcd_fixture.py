"""Real etcd-server processes for tests: one member, or a cluster of three, on loopback.

Each member listens on free 127.0.0.1 ports with its own data directory, is polled on its
``/health`` endpoint until it reports healthy (bounded deadline), and is stopped by its own
PID at teardown (SIGTERM, then SIGKILL). The binary is ``$KINKO_ETCD_BIN`` or
``/usr/bin/etcd``; without one the tests that need it are skipped — and ``.ci/run`` turns a
skipped ``etcd``-marked test into a failure.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DEFAULT_BINARY = "/usr/bin/etcd"
#: How long a member may take to become healthy. A fresh node needs about 0.4 s here.
START_DEADLINE_S = 20.0
STOP_DEADLINE_S = 10.0
_START_ATTEMPTS = 3


def etcd_binary() -> str | None:
    """The etcd binary to run, or None when there is none on this machine."""
    candidate = os.environ.get("KINKO_ETCD_BIN") or DEFAULT_BINARY
    if Path(candidate).is_file() and os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("etcd")


def require_etcd_binary() -> str:
    """The etcd binary, or skip the calling test."""
    binary = etcd_binary()
    if binary is None:
        pytest.skip(f"etcd-server is not installed ({DEFAULT_BINARY} missing)")
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class EtcdMember:
    """One running etcd process."""

    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop this member by its PID: SIGTERM, then SIGKILL after a deadline."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_DEADLINE_S)
        self.process = None


@dataclass
class EtcdCluster:
    """One or more members forming one cluster."""

    members: list[EtcdMember]

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def stop(self) -> None:
        for member in self.members:
            member.stop()


def _plan(base: Path, names: list[str]) -> tuple[list[EtcdMember], str]:
    members = [
        EtcdMember(
            name=name,
            client_url=f"http://127.0.0.1:{free_port()}",
            peer_url=f"http://127.0.0.1:{free_port()}",
            data_dir=base / name / "data",
            log_path=base / name / "etcd.log",
        )
        for name in names
    ]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    return members, initial


def _launch(binary: str, member: EtcdMember, initial_cluster: str, token: str) -> None:
    member.data_dir.parent.mkdir(parents=True, exist_ok=True)
    if member.data_dir.exists():
        shutil.rmtree(member.data_dir)
    args = [
        binary,
        "--name",
        member.name,
        "--data-dir",
        str(member.data_dir),
        "--listen-client-urls",
        member.client_url,
        "--advertise-client-urls",
        member.client_url,
        "--listen-peer-urls",
        member.peer_url,
        "--initial-advertise-peer-urls",
        member.peer_url,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-token",
        token,
        "--initial-cluster-state",
        "new",
        "--logger",
        "zap",
        "--log-level",
        "warn",
    ]
    with member.log_path.open("wb") as log:
        member.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _healthy(member: EtcdMember) -> bool:
    host, _, port = member.client_url.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=1.0)
    try:
        conn.request("GET", "/health")
        body = json.loads(conn.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        conn.close()
    return isinstance(body, dict) and body.get("health") == "true"


def _wait_healthy(members: list[EtcdMember]) -> bool:
    deadline = time.monotonic() + START_DEADLINE_S
    pending = list(members)
    while pending:
        if any(not m.alive for m in members):
            return False
        pending = [m for m in pending if not _healthy(m)]
        if not pending:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def start_cluster(base: Path, size: int = 1) -> EtcdCluster:
    """Start ``size`` members under ``base`` and wait until every one is healthy.

    A port taken between choosing and binding makes a member exit; the whole start is then
    retried with new ports (up to three attempts). Skips the test without an etcd binary;
    fails it if the cluster never becomes healthy.
    """
    binary = require_etcd_binary()
    last_logs = ""
    for attempt in range(_START_ATTEMPTS):
        token = f"kinko-test-{os.getpid()}-{attempt}"
        names = [f"m{i + 1}" for i in range(size)]
        members, initial = _plan(base / f"attempt{attempt}", names)
        for member in members:
            _launch(binary, member, initial, token)
        cluster = EtcdCluster(members)
        if _wait_healthy(members):
            return cluster
        last_logs = "\n".join(f"--- {m.name}:\n{m.log_tail()}" for m in members)
        cluster.stop()
    pytest.fail(f"etcd did not become healthy within {START_DEADLINE_S}s:\n{last_logs}")


@contextlib.contextmanager
def running_cluster(base: Path, size: int = 1) -> Iterator[EtcdCluster]:
    """:func:`start_cluster` as a context manager that always stops what it started."""
    cluster = start_cluster(base, size)
    try:
        yield cluster
    finally:
        cluster.stop()
