"""``kinko up``'s option checks through CliRunner: refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kinko.cli.main import cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token-label", "t"], "PKCS#11 options need --hsm pkcs11"),
        (["--pin-env", "PIN"], "PKCS#11 options need --hsm pkcs11"),
        (["--hsm", "pkcs11"], "--hsm pkcs11 needs --pkcs11-module and --token-label"),
        (["--hsm", "pkcs11", "--pkcs11-module", "m"], "needs --pkcs11-module and --token-label"),
        (["--listen", "6443"], "expected HOST:PORT"),
        (["--listen", "127.0.0.1:70000"], "expected a port from 0 to 65535"),
    ],
)
def test_bad_options_exit_4_and_start_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    data_dir = tmp_path / "kinko"

    result = CliRunner().invoke(cli, ["up", "--data-dir", str(data_dir), *args])

    assert result.exit_code == 4, result.output
    assert message in result.output
    assert not (data_dir / "kinko.db").exists()
    assert not (data_dir / "endpoints.json").exists()


def test_a_data_folder_that_is_a_file_is_refused(tmp_path: Path) -> None:
    taken = tmp_path / "file"
    taken.write_text("")

    given = CliRunner().invoke(cli, ["up", "--data-dir", str(taken)])
    from_env = CliRunner().invoke(cli, ["up"], env={"KINKO_HOME": str(taken)})

    assert given.exit_code == 2, given.output
    assert "is a file" in given.output
    assert from_env.exit_code == 4, from_env.output
    assert "exists and is not a folder" in from_env.output


def test_no_encryption_is_refused_once_the_folder_has_a_configuration(tmp_path: Path) -> None:
    data_dir = tmp_path / "kinko"
    data_dir.mkdir(mode=0o700)
    config = data_dir / "encryption-config.yaml"
    config.write_text("kept as it is\n")

    result = CliRunner().invoke(
        cli, ["up", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--no-encryption"]
    )

    assert result.exit_code == 4, result.output
    assert "--no-encryption applies to the first start only" in result.output
    assert config.read_text() == "kept as it is\n"
    assert not (data_dir / "endpoints.json").exists()
