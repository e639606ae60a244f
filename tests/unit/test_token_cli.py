"""`kinko token create`: prints one token, stores only its hash, and the token authenticates."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from kinko.cli.main import cli
from kinko.cli.token import STORE_FILE
from kinko.errors import Unauthorized
from kinko.keys.auth import Role, TokenBook, hash_token, token_path
from kinko.store.sqlite import SqliteStore


def _create(data_dir: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        cli, ["token", "create", "--data-dir", str(data_dir), *args], catch_exceptions=False
    )
    return result.exit_code, result.stdout, result.stderr


def test_create_prints_only_a_token_that_authenticates(tmp_path: Path) -> None:
    data = tmp_path / "data"
    code, out, _ = _create(
        data, "--instance", "inst-1", "--role", "Writer", "--role", "reader", "--name", "ci"
    )
    assert code == 0
    token = out.strip()
    assert out == token + "\n"
    assert re.fullmatch(r"kinko_[A-Za-z0-9_-]{43}", token)
    with SqliteStore(data / STORE_FILE) as store:
        principal = TokenBook(store).authenticate(token, now=datetime.now(UTC))
        entry = store.get(token_path(hash_token(token)))
        assert entry is not None
        assert token.encode() not in entry.value
    assert principal.name == "ci"
    assert principal.instance == "inst-1"
    assert principal.roles == frozenset({Role.WRITER, Role.READER})
    assert principal.service is False
    assert (data.stat().st_mode & 0o777) == 0o700


def test_service_identity_and_two_tokens_differ(tmp_path: Path) -> None:
    code, first, _ = _create(tmp_path, "--instance", "i", "--role", "Reader", "--service")
    assert code == 0
    code, second, _ = _create(tmp_path, "--instance", "i", "--role", "KeyPurge")
    assert code == 0
    assert first != second
    with SqliteStore(tmp_path / STORE_FILE) as store:
        book = TokenBook(store)
        assert book.authenticate(first.strip(), now=datetime.now(UTC)).service is True
        purger = book.authenticate(second.strip(), now=datetime.now(UTC))
        assert purger.roles == frozenset({Role.KEY_PURGE})
        assert purger.name.startswith("token-")


def test_bad_input_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    code, out, err = _create(tmp_path, "--instance", "i", "--role", "Admin")
    assert (code, out) == (2, "")
    assert "Admin" in err
    code, out, err = _create(tmp_path, "--instance", "a/b", "--role", "Reader")
    assert (code, out) == (4, "")
    assert "instance id" in err
    code, out, _ = _create(tmp_path, "--instance", "i", "--role", "Reader", "--name", "two words")
    assert (code, out) == (4, "")
    assert not (tmp_path / STORE_FILE).exists()


def test_an_expiring_token_works_until_its_expiry_then_never(tmp_path: Path) -> None:
    code, out, _ = _create(tmp_path, "--instance", "i", "--role", "Reader", "--expires-in", "2h")
    assert code == 0
    token = out.strip()
    now = datetime.now(UTC)
    with SqliteStore(tmp_path / STORE_FILE) as store:
        book = TokenBook(store)
        assert book.authenticate(token, now=now + timedelta(hours=1)).instance == "i"
        for later in (timedelta(hours=2, minutes=1), timedelta(days=400)):
            with pytest.raises(Unauthorized, match="expired bearer token") as info:
                book.authenticate(token, now=now + later)
            assert info.value.reason_code == "UNAUTHORIZED_ERR"


@pytest.mark.parametrize("lifetime", ["0d", "2w", "-1h", "h", "1.5h", "9999999d"])
def test_a_bad_lifetime_is_refused_and_stores_nothing(tmp_path: Path, lifetime: str) -> None:
    code, out, err = _create(
        tmp_path, "--instance", "i", "--role", "Reader", "--expires-in", lifetime
    )
    assert (code, out) == (4, "")
    assert "--expires-in" in err
    assert not (tmp_path / STORE_FILE).exists()
