"""``kinko keys …`` client commands against ``kinko keys serve`` running as a real process.

One server per module: ``kinko keys serve --data-dir DIR --listen 127.0.0.1:0`` (HTTPS with
the CA it generates), tokens from ``kinko token create``. The commands run in this process
through CliRunner (real HTTPS, the CA found through ``--data-dir``) and, for the exit codes
an operator's shell sees, as ``python -m kinko`` processes. The server's output must never
show a token, a DEK or a ciphertext.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kinko.api.tls import ensure_server_tls
from kinko.cli.main import cli

INST = "cli-test-instance"
KINKO = [sys.executable, "-m", "kinko"]
_URL = re.compile(r"serving Key Protect API v2 on (https://127\.0\.0\.1:\d+)")


@dataclass
class Served:
    url: str
    data_dir: Path
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def env(self, who: str = "operator") -> dict[str, str]:
        return {
            "KINKO_URL": self.url,
            "KINKO_TOKEN": self.tokens[who],
            "KINKO_INSTANCE": INST,
            "KINKO_DATA_DIR": str(self.data_dir),
        }

    def run(self, *args: str, who: str = "operator") -> Result:
        """``kinko keys ARGS`` in this process, configured through the environment."""
        return CliRunner().invoke(cli, ["keys", *args], env=self.env(who))

    def shell(self, *args: str, who: str = "operator") -> subprocess.CompletedProcess[str]:
        """``kinko keys ARGS`` as its own process."""
        env = {**os.environ, **self.env(who)}
        return subprocess.run(
            [*KINKO, "keys", *args], env=env, capture_output=True, text=True, timeout=60
        )


def _token(data_dir: Path, name: str, instance: str, *roles: str) -> str:
    args = [*KINKO, "token", "create", "--data-dir", str(data_dir), "--instance", instance]
    for role in roles:
        args += ["--role", role]
    done = subprocess.run(
        [*args, "--name", name], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("keys-cli")
    tokens = {
        "operator": _token(data_dir, "operator", INST, "Manager"),
        "reader": _token(data_dir, "reader", INST, "Reader"),
        "stranger": _token(data_dir, "stranger", "another-instance", "Manager"),
    }
    process = subprocess.Popen(
        [*KINKO, "keys", "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
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
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
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
    server = Served(url, data_dir, process, collected, tokens)
    try:
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        reader.join(timeout=10)
        while not lines.empty():
            collected.append(lines.get())


def test_lifecycle_through_the_cli(served: Served, tmp_path: Path) -> None:
    created = served.run("create", "payments-root", "--alias", "payments", "-o", "json")
    assert created.exit_code == 0, created.output
    key = json.loads(created.stdout)
    assert (key["name"], key["state_name"], key["extractable"]) == (
        "payments-root",
        "Active",
        False,
    )

    listed = served.run("list")
    assert listed.exit_code == 0, listed.output
    assert key["id"] in listed.output
    assert "Active (1)" in listed.output

    dek = tmp_path / "dek"
    wrapped = served.run("wrap", "payments", "--out", str(dek), "--aad", "ns/secret")
    assert wrapped.exit_code == 0, wrapped.output
    ciphertext = wrapped.stdout.strip()
    assert stat.S_IMODE(dek.stat().st_mode) == 0o600
    assert len(dek.read_bytes()) == 32

    plain = tmp_path / "plain"
    unwrapped = served.run(
        "unwrap", "payments", "--ciphertext", ciphertext, "--aad", "ns/secret", "--out", str(plain)
    )
    assert unwrapped.exit_code == 0, unwrapped.output
    assert plain.read_bytes() == dek.read_bytes()

    rotated = served.run("rotate", "payments", "-o", "json")
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.stdout)["key_version"]["id"] != key["key_version"]["id"]
    versions = served.run("versions", "payments", "-o", "json")
    assert json.loads(versions.stdout)["total"] == 2

    again = tmp_path / "again"
    after = served.run(
        "unwrap", "payments", "--ciphertext", ciphertext, "--aad", "ns/secret", "--out", str(again)
    )
    assert after.exit_code == 0, after.output
    assert again.read_bytes() == dek.read_bytes()
    assert "rotated since" in after.stderr
    assert after.stdout.strip() not in ("", ciphertext)

    assert served.run("disable", "payments").exit_code == 0
    refused = served.shell("wrap", "payments", "--show-plaintext")
    assert refused.returncode == 7
    assert "KEY_ACTION_INVALID_STATE_ERR" in refused.stderr

    deleted = served.run("delete", "payments")
    assert deleted.exit_code == 0, deleted.output
    assert "Destroyed (5)" in deleted.output
    twice = served.shell("delete", key["id"])
    assert twice.returncode == 14
    assert "KEY_DELETED_ERR" in twice.stderr
    assert served.run("list", "--state", "destroyed", "-o", "json").exit_code == 0

    for secret in (*served.tokens.values(), ciphertext, dek.read_bytes().hex()):
        assert secret not in served.output


def test_exit_codes_an_operator_sees(served: Served) -> None:
    missing = served.shell("get", "no-such-key")
    assert missing.returncode == 6
    assert "KEY_NOT_FOUND_ERR" in missing.stderr
    forbidden = served.shell("create", "not-allowed", who="reader")
    assert forbidden.returncode == 9
    stranger = served.shell("list", who="stranger")
    assert stranger.returncode == 8
    assert "UNAUTHORIZED_ERR" in stranger.stderr
    assert served.tokens["stranger"] not in stranger.stderr + stranger.stdout


def test_another_ca_is_refused(served: Served, tmp_path: Path) -> None:
    other = ensure_server_tls(tmp_path / "other")
    result = served.run("list", "--ca", str(other.ca_cert))
    assert result.exit_code == 16
    assert "TLS verification failed" in result.output


def test_key_rings_and_policies(served: Served) -> None:
    assert served.run("ring", "create", "team-a").exit_code == 0
    created = served.run("create", "in-ring", "--key-ring", "team-a", "-o", "json")
    assert created.exit_code == 0, created.output
    key = json.loads(created.stdout)
    assert key["key_ring_id"] == "team-a"
    rings = served.run("ring", "list")
    assert "team-a" in rings.output
    policy = served.run(
        "policy", "set", key["id"], "--key-ring", "team-a", "--rotation-months", "3"
    )
    assert policy.exit_code == 0, policy.output
    assert "every 3 months" in policy.output
