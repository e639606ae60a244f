"""``kinko keys serve`` as a child process on a free loopback port, for integration tests.

:func:`serving` starts it, waits for its startup line (which names the URL and port), and
stops it with SIGTERM on leaving; its whole output is kept for assertions.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

KINKO = [sys.executable, "-m", "kinko"]
_URL = re.compile(r"serving Key Protect API v2 on (https?://127\.0\.0\.1:\d+)")


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)


@contextmanager
def serving(data_dir: Path, *extra: str) -> Iterator[Server]:
    """``kinko keys serve`` on a free loopback port; SIGTERM and a clean exit on leaving."""
    process = subprocess.Popen(
        [*KINKO, "keys", "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    collected: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put("")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    url = None
    deadline = time.monotonic() + 30
    while url is None and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=deadline - time.monotonic())
        except queue.Empty:
            break
        if line == "":
            break
        collected.append(line)
        match = _URL.search(line)
        if match:
            url = match.group(1)
    if url is None:
        process.kill()
        process.wait()
        pytest.fail("kinko keys serve did not start:\n" + "".join(collected))
    server = Server(process, url, collected)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        reader.join(timeout=10)
        while not lines.empty():
            collected.append(lines.get())
