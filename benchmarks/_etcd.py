"""A throw-away single-member etcd-server on loopback, for the benchmark scripts.

Job: start ``$KINKO_ETCD_BIN`` (else ``/usr/bin/etcd``, else ``etcd`` on the PATH) on free
127.0.0.1 ports with its data and log in a given folder, wait until ``/health`` says healthy,
and stop it by its own PID afterwards. Without a binary, or when etcd never becomes healthy,
the caller gets None and a note is printed, so a benchmark can skip its etcd part.

Plain functions and a context manager, no pytest: the scripts run as ``python
benchmarks/<name>.py``, which puts this folder first on ``sys.path``.
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
from pathlib import Path

#: How long a fresh member may take to report healthy (it needs well under a second idle).
START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 10.0
_START_ATTEMPTS = 3


def etcd_binary() -> str | None:
    """The etcd binary to run, or None when there is none on this machine."""
    candidate = os.environ.get("KINKO_ETCD_BIN") or "/usr/bin/etcd"
    if Path(candidate).is_file() and os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("etcd")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/health")
        body = json.loads(conn.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        conn.close()
    return isinstance(body, dict) and body.get("health") == "true"


def stop_etcd(process: subprocess.Popen[bytes]) -> None:
    """Stops ``process`` by its PID: SIGTERM, then SIGKILL after a deadline."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_DEADLINE_S)


def start_etcd(folder: Path, binary: str) -> tuple[str, subprocess.Popen[bytes]] | None:
    """Starts ``binary`` as one member under ``folder``; its client URL and process once
    healthy, or None if it never became healthy.

    A port taken between choosing and binding makes etcd exit; the start is then retried with
    new ports (data in ``etcd<attempt>``, log in ``etcd<attempt>.log``).
    """
    for attempt in range(_START_ATTEMPTS):
        client_port, peer_port = _free_port(), _free_port()
        url, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        args = [
            binary,
            "--name=bench",
            f"--data-dir={folder / f'etcd{attempt}'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=bench={peer}",
            "--initial-cluster-state=new",
            "--log-level=warn",
        ]
        with (folder / f"etcd{attempt}.log").open("wb") as log:
            process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + START_DEADLINE_S
        while process.poll() is None and time.monotonic() < deadline:
            if _healthy(client_port):
                return url, process
            time.sleep(0.05)
        stop_etcd(process)
    return None


@contextlib.contextmanager
def local_etcd(folder: Path) -> Iterator[str | None]:
    """:func:`start_etcd` as a context manager: the client URL, or None (with a note) when
    there is no binary or etcd did not become healthy. Always stops what it started."""
    binary = etcd_binary()
    if binary is None:
        print("note: etcd is not installed (no $KINKO_ETCD_BIN, no etcd on PATH): etcd skipped")
        yield None
        return
    started = start_etcd(folder, binary)
    if started is None:
        print("note: etcd did not become healthy: etcd skipped")
        yield None
        return
    url, process = started
    try:
        yield url
    finally:
        stop_etcd(process)
