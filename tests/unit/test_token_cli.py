"""`kinko token`: ``create`` prints one token, stores only its hash, and the token
authenticates; ``list`` shows both books without a token; ``revoke`` removes one token from
both books, or changes nothing.

Key service tokens, cluster API tokens, and one token registered in both books.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from kinko.cli.main import cli
from kinko.cli.token import STORE_FILE
from kinko.cluster.auth import ClusterRole, ClusterTokenBook, cluster_token_path
from kinko.errors import Unauthorized
from kinko.keys.auth import Role, TokenBook, hash_token, issue_token, token_path
from kinko.store.sqlite import SqliteStore

NOW = datetime(2025, 3, 1, tzinfo=UTC)


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


# --- cluster API tokens ---------------------------------------------------------------------


def test_a_cluster_token_is_in_the_cluster_book_only(tmp_path: Path) -> None:
    code, out, _ = _create(
        tmp_path,
        "--cluster-role",
        "viewer",
        "--namespace",
        "team-a",
        "--namespace",
        "team-b",
        "--name",
        "dash",
    )
    assert code == 0
    token = out.strip()
    assert out == token + "\n"
    assert re.fullmatch(r"kinko_[A-Za-z0-9_-]{43}", token)
    now = datetime.now(UTC)
    with SqliteStore(tmp_path / STORE_FILE) as store:
        principal = ClusterTokenBook(store).authenticate(token, now=now)
        entry = store.get(cluster_token_path(hash_token(token)))
        assert entry is not None
        assert token.encode() not in entry.value
        with pytest.raises(Unauthorized):
            TokenBook(store).authenticate(token, now=now)
    assert principal.name == "dash"
    assert principal.role is ClusterRole.VIEWER
    assert principal.namespaces == frozenset({"team-a", "team-b"})


@pytest.mark.parametrize(
    ("args", "role", "namespaces"),
    [
        (["--cluster-role", "Administrator"], ClusterRole.ADMINISTRATOR, None),
        (["--cluster-role", "Editor", "--namespace", "*"], ClusterRole.EDITOR, None),
        (["--cluster-role", "EDITOR", "--namespace", "x"], ClusterRole.EDITOR, frozenset({"x"})),
    ],
)
def test_cluster_roles_and_scopes(
    tmp_path: Path, args: list[str], role: ClusterRole, namespaces: frozenset[str] | None
) -> None:
    code, out, _ = _create(tmp_path, *args)
    assert code == 0
    with SqliteStore(tmp_path / STORE_FILE) as store:
        principal = ClusterTokenBook(store).authenticate(out.strip(), now=datetime.now(UTC))
    assert (principal.role, principal.namespaces) == (role, namespaces)
    assert principal.name.startswith("token-")


def test_one_token_in_both_books(tmp_path: Path) -> None:
    code, out, _ = _create(
        tmp_path,
        "--instance",
        "inst-1",
        "--role",
        "Manager",
        "--cluster-role",
        "Administrator",
        "--expires-in",
        "1h",
    )
    assert code == 0
    token = out.strip()
    now = datetime.now(UTC)
    with SqliteStore(tmp_path / STORE_FILE) as store:
        key_principal = TokenBook(store).authenticate(token, now=now)
        cluster_principal = ClusterTokenBook(store).authenticate(token, now=now)
        for book in (TokenBook(store), ClusterTokenBook(store)):
            with pytest.raises(Unauthorized, match="expired"):
                book.authenticate(token, now=now + timedelta(hours=2))
        assert store.get(token_path(hash_token(token))) is not None
    assert key_principal.instance == "inst-1"
    assert key_principal.roles == frozenset({Role.MANAGER})
    assert cluster_principal.role is ClusterRole.ADMINISTRATOR
    assert cluster_principal.name == key_principal.name
    assert cluster_principal.token_id == key_principal.token_id


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "expected --instance with --role"),
        (["--name", "x"], "expected --instance with --role"),
        (["--role", "Reader"], "--role needs --instance"),
        (["--instance", "i"], "--instance needs at least one --role"),
        (["--instance", "i", "--cluster-role", "Administrator"], "--instance needs at least one"),
        (["--service", "--cluster-role", "Administrator"], "--service needs --instance"),
        (["--namespace", "a"], "--namespace needs --cluster-role"),
        (["--instance", "i", "--role", "Reader", "--namespace", "a"], "--namespace needs"),
        (["--cluster-role", "Administrator", "--namespace", "a"], "takes no --namespace"),
        (["--cluster-role", "Administrator", "--namespace", "*"], "takes no --namespace"),
        (["--cluster-role", "Editor"], "--cluster-role Editor needs --namespace"),
        (["--cluster-role", "viewer"], "--cluster-role Viewer needs --namespace"),
        (["--cluster-role", "Viewer", "--namespace", "*", "--namespace", "a"], "goes alone"),
        (["--cluster-role", "Admin"], "Admin"),
    ],
)
def test_wrong_combinations_are_usage_errors_and_store_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    code, out, err = _create(tmp_path, *args)
    assert (code, out) == (2, "")
    assert message in err
    assert not (tmp_path / STORE_FILE).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cluster-role", "Editor", "--namespace", "Team_A"], "got 'Team_A'"),
        (["--cluster-role", "Administrator", "--name", "two words"], "token name"),
        (
            ["--instance", "i", "--role", "Reader", "--cluster-role", "Viewer", "--namespace", "-"],
            "got '-'",
        ),
    ],
)
def test_bad_cluster_values_are_refused_and_store_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    code, out, err = _create(tmp_path, *args)
    assert (code, out) == (4, "")
    assert message in err
    assert not (tmp_path / STORE_FILE).exists()


# --- list and revoke ------------------------------------------------------------------------


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["token", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _three(data: Path) -> tuple[str, str, str]:
    """A key service token, a cluster token and one in both books."""
    tokens = []
    for args in (
        ["--instance", "inst-1", "--role", "Reader", "--service", "--name", "svc"],
        [
            "--cluster-role",
            "Viewer",
            "--namespace",
            "team-a",
            "--name",
            "dash",
            "--expires-in",
            "2h",
        ],
        ["--instance", "inst-1", "--role", "Manager", "--cluster-role", "Administrator"],
    ):
        code, out, _ = _create(data, *args)
        assert code == 0
        tokens.append(out.strip())
    return tokens[0], tokens[1], tokens[2]


def _authenticates(data: Path, token: str) -> tuple[bool, bool]:
    """Whether the token authenticates in the key service's book and in the cluster's."""
    out = []
    with SqliteStore(data / STORE_FILE) as store:
        for book in (TokenBook(store), ClusterTokenBook(store)):
            try:
                book.authenticate(token, now=datetime.now(UTC))
            except Unauthorized:
                out.append(False)
            else:
                out.append(True)
    return out[0], out[1]


def test_list_shows_both_kinds_and_never_a_token(tmp_path: Path) -> None:
    key, cluster, both = _three(tmp_path)

    code, out, _ = _run("list", "--data-dir", str(tmp_path))

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "BOOKS"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {hash_token(t)[:12] for t in (key, cluster, both)}
    assert rows[hash_token(key)[:12]][1:7] == ["svc", "key", "inst-1", "Reader", "yes", "-"]
    assert rows[hash_token(cluster)[:12]][1:8] == [
        "dash", "cluster", "-", "-", "-", "Viewer", "team-a",
    ]  # fmt: skip
    assert rows[hash_token(both)[:12]][2:8] == [
        "both", "inst-1", "Manager", "no", "Administrator", "*",
    ]  # fmt: skip
    assert rows[hash_token(key)[:12]][-1] == "never"
    for token in (key, cluster, both):
        assert token not in out
        assert hash_token(token) not in out


def test_list_as_json(tmp_path: Path) -> None:
    key, cluster, both = _three(tmp_path)

    code, out, _ = _run("list", "--data-dir", str(tmp_path), "-o", "json")

    assert code == 0
    docs = {doc["id"]: doc for doc in json.loads(out)}
    assert docs[hash_token(key)[:12]] == {
        "id": hash_token(key)[:12],
        "name": "svc",
        "books": "key",
        "created": docs[hash_token(key)[:12]]["created"],
        "expires": None,
        "keyService": {"instance": "inst-1", "roles": ["Reader"], "service": True},
    }
    viewer = docs[hash_token(cluster)[:12]]
    assert viewer["cluster"] == {"role": "Viewer", "namespaces": ["team-a"]}
    assert "keyService" not in viewer
    assert viewer["expires"] > viewer["created"]
    assert docs[hash_token(both)[:12]]["cluster"] == {"role": "Administrator", "namespaces": ["*"]}
    assert docs[hash_token(both)[:12]]["books"] == "both"
    assert all(t not in out for t in (key, cluster, both))


def test_an_empty_store_lists_nothing(tmp_path: Path) -> None:
    assert _run("list", "--data-dir", str(tmp_path), "-o", "json") == (0, "[]\n", "")


def test_revoke_by_id_removes_a_token_from_both_books(tmp_path: Path) -> None:
    key, cluster, both = _three(tmp_path)
    token_id = hash_token(both)[:12]

    code, out, _ = _run("revoke", "--data-dir", str(tmp_path), "--id", token_id)

    assert code == 0
    assert out.startswith(f"revoked {token_id} token-{token_id} (both books)")
    assert _authenticates(tmp_path, both) == (False, False)
    assert _authenticates(tmp_path, key) == (True, False)
    assert _authenticates(tmp_path, cluster) == (False, True)
    code, out, _ = _run("list", "--data-dir", str(tmp_path), "-o", "json")
    assert token_id not in out


def test_revoke_by_an_eight_character_prefix_and_by_file(tmp_path: Path) -> None:
    key, cluster, _ = _three(tmp_path)
    prefix = hash_token(cluster)[:8].upper()

    code, out, _ = _run("revoke", "--data-dir", str(tmp_path), "--id", prefix)
    assert code == 0
    assert "dash (cluster book)" in out
    assert _authenticates(tmp_path, cluster) == (False, False)

    token_file = tmp_path / "svc.token"
    token_file.write_text(key + "\n")
    code, out, _ = _run("revoke", "--data-dir", str(tmp_path), "--token-file", str(token_file))
    assert code == 0
    assert "svc (key service book)" in out
    assert key not in out
    assert _authenticates(tmp_path, key) == (False, False)


def test_revoke_by_token(tmp_path: Path) -> None:
    _, _, both = _three(tmp_path)

    code, out, _ = _run("revoke", "--data-dir", str(tmp_path), "--token", both)

    assert code == 0
    assert both not in out
    assert _authenticates(tmp_path, both) == (False, False)


def _plant(data: Path, token_hash: str, name: str) -> None:
    """A key service record stored under a chosen hash (to make two ids share a prefix)."""
    issued = issue_token(rng=lambda n: b"\x07" * n, instance="i", roles=["Reader"], now=NOW)
    record = replace(issued.record, token_hash=token_hash, name=name)
    with SqliteStore(data / STORE_FILE) as store:
        TokenBook(store).add(record)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--id", "abcdef01"], 4, "more than one token"),
        (["--id", "abcdef02"], 6, "no token with an id starting abcdef02"),
        (["--id", "abcdef0"], 4, "8 to 64 hex"),
        (["--id", "not-hex!"], 4, "8 to 64 hex"),
        (["--token", "kinko_" + "A" * 43], 6, "no token with that hash"),
        (["--token-file", "missing.token"], 4, "no token file"),
        ([], 2, "exactly one of --id, --token-file and --token"),
        (["--id", "abcdef01", "--token", "x"], 2, "exactly one of"),
    ],
)
def test_a_revocation_that_names_no_single_token_changes_nothing(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    tokens = _three(tmp_path)
    _plant(tmp_path, "abcdef01" + "0" * 56, "one")
    _plant(tmp_path, "abcdef01" + "1" * 56, "two")
    _, before, _ = _run("list", "--data-dir", str(tmp_path), "-o", "json")
    args = [a if a != "missing.token" else str(tmp_path / a) for a in args]

    got, out, err = _run("revoke", "--data-dir", str(tmp_path), *args)

    assert (got, out) == (code, "")
    assert message in err
    assert _run("list", "--data-dir", str(tmp_path), "-o", "json")[1] == before
    assert _authenticates(tmp_path, tokens[2]) == (True, True)


def test_revoke_help_says_when_it_takes_effect() -> None:
    code, out, _ = _run("revoke", "--help")
    assert code == 0
    assert "within a second" in " ".join(out.split())
