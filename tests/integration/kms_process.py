"""``kinko kms serve --key-file`` as a child process that a test can kill and start again.

:class:`PluginProcess` runs the installed ``kinko`` command (the one next to the test's Python)
on a unix socket; :meth:`PluginProcess.start` returns once the socket answers Status (polled
with a bounded deadline), :meth:`PluginProcess.kill` sends SIGKILL by PID and reaps it, and
:meth:`PluginProcess.stop` ends it at teardown (SIGTERM, then SIGKILL). Its output goes to a
log file that failures quote.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kinko.errors import PluginError
from kinko.kms.client import GrpcKmsV2Api
from kinko.kms.port import StatusResult

#: Upper bound of every wait here; never reached when things work.
DEADLINE_S = 20.0


def kinko_command() -> list[str]:
    """The ``kinko`` console script of the test's environment, or ``python -m kinko``."""
    script = Path(sys.executable).with_name("kinko")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "kinko"]


@dataclass
class PluginProcess:
    """One ``kinko kms serve`` child on ``endpoint`` with its key in ``key_file``."""

    endpoint: str
    key_file: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, create_key: bool = False) -> StatusResult:
        """Start the plugin and wait until its socket answers Status; returns that answer.

        Fails the test if the process exits or does not answer within DEADLINE_S.
        """
        assert not self.alive, "the plugin is already running"
        args = [
            *kinko_command(),
            "kms",
            "serve",
            "--socket",
            self.endpoint,
            "--key-file",
            str(self.key_file),
            "--grace",
            "1s",
        ]
        if create_key:
            args.append("--create-key")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + DEADLINE_S
        # A fresh client per attempt: a channel that failed to connect backs off before it
        # tries again, which would only slow this wait down.
        while True:
            if not self.alive:
                pytest.fail(f"kinko kms serve exited:\n{self.log()}")
            try:
                with GrpcKmsV2Api(self.endpoint, timeout=0.5) as api:
                    return api.status()
            except PluginError:
                if time.monotonic() > deadline:
                    pytest.fail(f"kinko kms serve did not answer Status:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the plugin (no clean shutdown: its socket file stays) and reap it."""
        process = self.process
        assert process is not None
        assert process.poll() is None, "the plugin is not running"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=DEADLINE_S)

    def stop(self) -> None:
        """End the plugin if it runs: SIGTERM, then SIGKILL after a deadline. Raises nothing."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=DEADLINE_S)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"
