"""`kinko kms serve` option rules: exactly one backend, and each backend's own options only.

Every case here is refused before anything is opened, so no socket, store or key appears.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kinko.cli.main import cli

SOCKET = "unix:///tmp/kinko-cli-test-never-bound.sock"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "choose exactly one backend"),
        (["--key", "k", "--instance", "i", "--token", "t"], "got none"),
        (["--key-file", "f", "--data-dir", "d"], "got --key-file, --data-dir"),
        (["--data-dir", "d", "--url", "https://k"], "got --data-dir, --url"),
        (["--data-dir", "d", "--instance", "i", "--token", "t"], "--data-dir needs --key"),
        (["--url", "https://k", "--key", "k", "--token", "t"], "--url needs --key and --instance"),
        (["--key-file", "f", "--key", "k"], "--key-file takes no --key"),
        (["--data-dir", "d", "--key", "k", "--instance", "i"], "exactly one of --token"),
        (
            [
                "--data-dir",
                "d",
                "--key",
                "k",
                "--instance",
                "i",
                "--token",
                "t",
                "--token-file",
                "f",
            ],
            "exactly one of --token",
        ),
        (["--url", "https://k", "--pkcs11-module", "m"], "need --data-dir"),
        (["--url", "https://k", "--hsm", "pkcs11"], "need --data-dir"),
        (["--data-dir", "d", "--pkcs11-module", "m"], "need --hsm pkcs11"),
        (
            ["--data-dir", "d", "--key", "k", "--instance", "i", "--token", "t", "--hsm", "pkcs11"],
            "--hsm pkcs11 needs --pkcs11-module and --token-label",
        ),
        (["--data-dir", "d", "--ca", "c"], "--ca needs --url"),
    ],
)
def test_backend_choice_is_checked(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["kms", "serve", "--socket", SOCKET, *args], env={"KINKO_TOKEN": None}
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not Path("/tmp/kinko-cli-test-never-bound.sock").exists()
    assert not (tmp_path / "d").exists()


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("\n")
    result = CliRunner().invoke(
        cli,
        [
            *("kms", "serve", "--socket", SOCKET, "--key", "k", "--instance", "i"),
            *("--data-dir", str(tmp_path / "data"), "--token-file", str(token_file)),
        ],
        env={"KINKO_TOKEN": None},
    )
    assert result.exit_code != 0
    assert "expected a bearer token" in result.output
