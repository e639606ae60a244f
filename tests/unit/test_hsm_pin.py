"""``pin_from``: where the PKCS#11 PIN comes from, and that errors never show it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kinko.errors import InvalidArgument
from kinko.hsm.pkcs11 import pin_from


def test_pin_from_file_takes_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "pin"
    path.write_text("s3cret-pin\nignored\n")
    assert pin_from(path, "KINKO_TEST_PIN") == "s3cret-pin"


def test_pin_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KINKO_TEST_PIN", "s3cret-pin")
    assert pin_from(None, "KINKO_TEST_PIN") == "s3cret-pin"


@pytest.mark.parametrize("content", ["", "\n", "  \n"])
def test_empty_pin_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "pin"
    path.write_text(content)
    with pytest.raises(InvalidArgument, match="empty"):
        pin_from(path, None)


def test_missing_pin_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read the PIN file"):
        pin_from(tmp_path / "missing", None)


def test_unset_env_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KINKO_TEST_PIN", raising=False)
    with pytest.raises(InvalidArgument, match=r"\$KINKO_TEST_PIN"):
        pin_from(None, "KINKO_TEST_PIN")


def test_neither_source_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="got neither"):
        pin_from(None, None)
