"""``kinko keys …`` client commands through click's CliRunner, against the real app in process.

The commands build their client through a :class:`ClientHook` that sends through FastAPI's
``TestClient`` to ``create_keyprotect_app`` over ``KeyService(MemoryStore, MemoryHsm)``; the
options (``--token``, ``--instance``, ``--key-ring``) still decide what goes on the wire.
Checks outputs, exit codes (the same as local errors), and that key material and plaintext
reach only 0600 files unless a flag asks for them. A data folder with an ``endpoints.json``
(written by ``kinko.cluster.endpoints`` as ``kinko up`` writes it) stands for a running
``kinko up``.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

from kinko.api.keyprotect import create_keyprotect_app
from kinko.cli.keys_client import CLIENT_COMMANDS, ClientHook, Connection, state_label
from kinko.cli.main import cli
from kinko.cluster.endpoints import Endpoints, write_admin_token, write_endpoints
from kinko.hsm.memory import MemoryHsm
from kinko.keys.audit import MemoryAuditSink
from kinko.keys.auth import Principal, Role, TokenBook, issue_token
from kinko.keys.client import KeyProtectClient
from kinko.keys.model import KeyState
from kinko.keys.service import KeyService
from kinko.store.memory import MemoryStore

T0 = datetime(2030, 1, 1, tzinfo=UTC)
INST = "inst-1"
URL = "http://127.0.0.1:8443"
#: Where the fake kinko up's endpoints.json says its key service is.
UP_URL = "https://127.0.0.1:6443"
#: Every variable the connection options read; a test sets the ones it means.
CONNECTION_ENV: Final[Mapping[str, str | None]] = {
    name: None
    for name in (
        "KINKO_URL",
        "KINKO_TOKEN",
        "KINKO_INSTANCE",
        "KINKO_DATA_DIR",
        "KINKO_HOME",
        "KINKO_KEY_RING",
    )
}
CRN = "crn:v1:bluemix:public:cloud-object-storage:global:a/acct:inst::bucket:one"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Cli:
    service: KeyService
    clock: Clock
    http: TestClient
    tokens: dict[str, str]
    connections: list[Connection]

    def run(
        self,
        *args: str,
        who: str = "alice",
        fmt: str | None = None,
        input: str | None = None,
        env: Mapping[str, str | None] | None = None,
    ) -> Result:
        """``kinko keys ARGS`` as ``who``; the connection options go last."""
        argv = ["keys", *args, "--token", self.tokens[who], "--instance", INST]
        if fmt is not None:
            argv += ["-o", fmt]
        return CliRunner().invoke(cli, argv, obj=self.hook(), input=input, env=_env(env))

    def raw(self, argv: Sequence[str], env: Mapping[str, str | None] | None = None) -> Result:
        return CliRunner().invoke(cli, list(argv), obj=self.hook(), env=_env(env))

    def hook(self) -> ClientHook:
        def factory(conn: Connection) -> KeyProtectClient:
            self.connections.append(conn)
            return KeyProtectClient(
                conn.url,
                token=conn.token,
                instance=conn.instance,
                key_ring=conn.key_ring,
                http=self.http,
            )

        return ClientHook(factory)

    def json(self, *args: str, who: str = "alice") -> object:
        result = self.run(*args, who=who, fmt="json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def key(self, *args: str) -> dict[str, object]:
        doc = self.json("create", *args)
        assert isinstance(doc, dict)
        return doc


def _env(env: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """``env`` over a process environment without kinko's connection variables."""
    return {**CONNECTION_ENV, **(env or {})}


ROLES = {
    "alice": ("Manager",),
    "bob": ("Manager",),
    "rita": ("Reader",),
    "pat": ("KeyPurge",),
}


@pytest.fixture
def k() -> Iterator[Cli]:
    store, clock = MemoryStore(), Clock()
    service = KeyService(
        store,
        MemoryHsm(),
        audit=MemoryAuditSink(),
        clock=clock,
        rng=os.urandom,
        import_key_bits=2048,
    )
    tokens = {}
    for name, roles in ROLES.items():
        issued = issue_token(rng=os.urandom, instance=INST, roles=roles, now=T0, name=name)
        TokenBook(store).add(issued.record)
        tokens[name] = issued.token
    with TestClient(create_keyprotect_app(service)) as http:
        yield Cli(service, clock, http, tokens, [])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- wiring and connection options ----------------------------------------------------------


def test_every_client_command_is_under_kinko_keys() -> None:
    result = CliRunner().invoke(cli, ["keys", "--help"])
    assert result.exit_code == 0
    for command in CLIENT_COMMANDS:
        assert command.name is not None
        assert command.name in result.output
    assert "serve" in result.output


def test_connection_options_from_the_environment(k: Cli, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(k.tokens["alice"] + "\n")
    env = {
        "KINKO_URL": "http://localhost:9999",
        "KINKO_INSTANCE": INST,
        "KINKO_KEY_RING": "default",
    }
    result = k.raw(["keys", "list", "--token-file", str(token_file)], env=env)
    assert result.exit_code == 0, result.output
    conn = k.connections[-1]
    assert (conn.url, conn.instance, conn.key_ring, conn.token) == (
        "http://localhost:9999",
        INST,
        "default",
        k.tokens["alice"],
    )
    assert k.tokens["alice"] not in repr(conn)


def test_default_url_and_data_dir_ca(k: Cli, tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "ca.crt").write_text("pem")
    result = k.run("list", env={"KINKO_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert k.connections[-1].url == "https://127.0.0.1:8443"
    assert k.connections[-1].ca == tmp_path / "tls" / "ca.crt"


def test_data_dir_without_a_ca_is_refused(k: Cli, tmp_path: Path) -> None:
    result = k.run("list", "--data-dir", str(tmp_path))
    assert result.exit_code == 4
    assert "no CA certificate" in result.output
    assert k.connections == []


def test_missing_token_is_a_usage_error(k: Cli) -> None:
    result = k.raw(["keys", "list", "--instance", INST], env={"KINKO_TOKEN": ""})
    assert result.exit_code == 2
    assert "no bearer token" in result.output


def test_missing_instance_is_a_usage_error(k: Cli) -> None:
    result = k.raw(["keys", "list", "--token", "t"], env={"KINKO_INSTANCE": ""})
    assert result.exit_code == 2


# --- the data folder of a running kinko up ------------------------------------------------------


def kinko_up(k: Cli, folder: Path, *, instance: str = INST) -> Path:
    """A data folder as ``kinko up`` leaves it: endpoints.json, admin.token (alice's), the CA."""
    ca = folder / "tls" / "ca.crt"
    ca.parent.mkdir(parents=True)
    ca.write_text("pem")
    write_endpoints(
        folder,
        Endpoints(
            cluster_api=UP_URL,
            key_service=UP_URL,
            instance=instance,
            kms_plugin_socket=f"unix://{folder}/kms.sock",
            ca_file=ca,
            admin_token_file=write_admin_token(folder, k.tokens["alice"]),
            kubeconfig=folder / "kubeconfig",
        ),
    )
    return folder


@pytest.mark.parametrize("url", [None, UP_URL, "https://127.0.0.1:6443/", "HTTPS://127.0.0.1:6443"])
def test_rotate_the_cluster_root_key_with_only_the_data_dir(
    k: Cli, tmp_path: Path, url: str | None
) -> None:
    root = k.key("kinko-cluster-root", "--alias", "kinko-cluster")
    up = kinko_up(k, tmp_path / "home")
    argv = ["keys", "rotate", "kinko-cluster", "--data-dir", str(up)]
    result = k.raw(argv + ([] if url is None else ["--url", url]))
    assert result.exit_code == 0, result.output
    assert k.connections[-1] == Connection(
        url=url or UP_URL, token=k.tokens["alice"], instance=INST, ca=up / "tls" / "ca.crt"
    )
    versions = k.json("versions", str(root["id"]))
    assert isinstance(versions, dict)
    assert versions["total"] == 2
    assert k.tokens["alice"] not in result.output


@pytest.mark.parametrize("variable", ["KINKO_HOME", "KINKO_DATA_DIR"])
def test_the_data_folder_from_the_environment_is_enough(
    k: Cli, tmp_path: Path, variable: str
) -> None:
    up = kinko_up(k, tmp_path / "home")
    result = k.raw(["keys", "list"], env={variable: str(up)})
    assert result.exit_code == 0, result.output
    assert k.connections[-1] == Connection(
        url=UP_URL, token=k.tokens["alice"], instance=INST, ca=up / "tls" / "ca.crt"
    )


def test_options_and_variables_win_over_the_data_folder(k: Cli, tmp_path: Path) -> None:
    up = kinko_up(k, tmp_path / "home", instance="inst-of-up")
    token_file = tmp_path / "bob.token"
    token_file.write_text(k.tokens["bob"] + "\n")
    ca = tmp_path / "other-ca.pem"
    ca.write_text("pem")
    argv = ["keys", "list", "--data-dir", str(up), "--token-file", str(token_file)]
    result = k.raw([*argv, "--ca", str(ca)], env={"KINKO_INSTANCE": INST})
    assert result.exit_code == 0, result.output
    assert k.connections[-1] == Connection(url=UP_URL, token=k.tokens["bob"], instance=INST, ca=ca)
    assert k.tokens["bob"] not in repr(k.connections[-1])  # a bearer token is never shown
    result = k.raw(["keys", "list", "--data-dir", str(up), "--instance", INST, "--token", "t"])
    assert result.exit_code == 8
    assert (k.connections[-1].token, k.connections[-1].instance) == ("t", INST)


@pytest.mark.parametrize("how", ["option", "environment"])
def test_the_admin_token_never_goes_to_another_url(k: Cli, tmp_path: Path, how: str) -> None:
    up = kinko_up(k, tmp_path / "home")
    other = "https://10.0.0.7:6443"
    argv = ["keys", "list", "--data-dir", str(up)]
    if how == "option":
        result = k.raw([*argv, "--url", other])
    else:
        result = k.raw(argv, env={"KINKO_URL": other})
    assert result.exit_code == 2
    assert f"--url {other} is not the key service of {up} ({UP_URL})" in result.output
    assert "--token" in result.output
    assert k.tokens["alice"] not in result.output
    assert k.connections == []


@pytest.mark.parametrize("how", ["--data-dir", "KINKO_HOME"])
def test_another_url_with_its_own_token_keeps_todays_options(
    k: Cli, tmp_path: Path, how: str
) -> None:
    up = kinko_up(k, tmp_path / "home")
    argv = ["keys", "list", "--url", URL, "--token", k.tokens["bob"], "--instance", INST]
    if how == "--data-dir":
        result = k.raw([*argv, "--data-dir", str(up)])
    else:
        result = k.raw(argv, env={"KINKO_HOME": str(up)})
    assert result.exit_code == 0, result.output
    # As before endpoints.json was read: --data-dir trusts DIR/tls/ca.crt, KINKO_HOME nothing.
    ca = up / "tls" / "ca.crt" if how == "--data-dir" else None
    assert k.connections[-1] == Connection(url=URL, token=k.tokens["bob"], instance=INST, ca=ca)


def test_another_url_still_needs_an_instance(k: Cli, tmp_path: Path) -> None:
    up = kinko_up(k, tmp_path / "home")
    argv = ["keys", "list", "--data-dir", str(up), "--url", URL, "--token", k.tokens["bob"]]
    result = k.raw(argv)
    assert result.exit_code == 2
    assert "no instance id" in result.output
    assert k.connections == []


def test_kinko_home_without_endpoints_json_is_ignored(k: Cli, tmp_path: Path) -> None:
    result = k.run("list", env={"KINKO_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    conn = k.connections[-1]
    assert (conn.url, conn.ca) == ("https://127.0.0.1:8443", None)


def test_no_instance_without_a_data_folder_names_the_ways_to_give_one(k: Cli) -> None:
    result = k.raw(["keys", "list", "--token", "t"])
    assert result.exit_code == 2
    assert "no instance id: pass --instance ID, KINKO_INSTANCE" in result.output


def test_a_broken_endpoints_json_exits_4(k: Cli, tmp_path: Path) -> None:
    (tmp_path / "endpoints.json").write_text("{")
    (tmp_path / "endpoints.json").chmod(0o600)
    result = k.raw(["keys", "list", "--data-dir", str(tmp_path)])
    assert result.exit_code == 4
    assert "is not JSON" in result.output
    assert k.connections == []


def test_the_data_folders_missing_ca_exits_4_unless_ca_is_given(k: Cli, tmp_path: Path) -> None:
    up = kinko_up(k, tmp_path / "home")
    (up / "tls" / "ca.crt").unlink()
    result = k.raw(["keys", "list", "--data-dir", str(up)])
    assert result.exit_code == 4
    assert f"no CA certificate at {up / 'tls' / 'ca.crt'}" in result.output
    assert k.connections == []
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    result = k.raw(["keys", "list", "--data-dir", str(up), "--ca", str(ca)])
    assert result.exit_code == 0, result.output
    assert k.connections[-1].ca == ca


# --- create, import, list, get, versions -------------------------------------------------------


def test_create_prints_a_readable_table(k: Cli) -> None:
    result = k.run("create", "root-1", "--alias", "r-one", "--description", "first")
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("root-1", "Active (1)", "root key", "r-one", "first", "default", "AES-256"):
        assert text in out


def test_create_options_reach_the_service(k: Cli) -> None:
    doc = k.key(
        "pol",
        "--alias",
        "a-1",
        "--alias",
        "a-2",
        "--expires",
        "2030-06-01T00:00:00Z",
        "--rotation-months",
        "3",
        "--dual-auth",
    )
    assert doc["aliases"] == ["a-1", "a-2"]
    assert doc["expiration_date"] == "2030-06-01T00:00:00Z"
    assert doc["rotation"] == {"enabled": True, "interval_month": 3, "stamp": None}
    dual = doc["dual_auth_delete"]
    assert isinstance(dual, dict)
    assert dual["enabled"] is True
    assert (doc["state"], doc["state_name"]) == (1, "Active")


def test_create_standard_with_payload_and_read_it_back(k: Cli, tmp_path: Path) -> None:
    material = tmp_path / "material"
    material.write_bytes(b"standard key material")
    doc = k.key("std", "--standard", "--payload-file", str(material))
    assert (doc["extractable"], doc["imported"]) == (True, True)
    assert "payload" not in doc
    shown = k.run("get", str(doc["id"]))
    assert shown.exit_code == 0
    assert "standard key material" not in shown.output
    out = tmp_path / "payload.bin"
    result = k.run("get", str(doc["id"]), "--payload-out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == b"standard key material"
    assert mode(out) == 0o600
    assert "standard key material" not in result.stdout
    with_payload = k.json("get", str(doc["id"]), "--show-payload")
    assert isinstance(with_payload, dict)
    assert base64.b64decode(str(with_payload["payload"])) == b"standard key material"


def test_get_payload_of_a_root_key_is_refused_and_leaves_no_file(k: Cli, tmp_path: Path) -> None:
    doc = k.key("root")
    out = tmp_path / "payload.bin"
    result = k.run("get", str(doc["id"]), "--payload-out", str(out))
    assert result.exit_code == 4
    assert "never leaves" in result.output
    assert not out.exists()


def test_import_plain_and_base64(k: Cli, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(os.urandom(32))
    doc = k.json("import", "imp-raw", "--payload-file", str(raw))
    assert isinstance(doc, dict)
    assert (doc["imported"], doc["extractable"]) == (True, False)
    b64 = tmp_path / "b64"
    b64.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    doc = k.json("import", "imp-b64", "--payload-file", str(b64), "--base64")
    assert isinstance(doc, dict)
    assert doc["imported"] is True
    bad = tmp_path / "bad"
    bad.write_text("not base64!!")
    result = k.run("import", "imp-bad", "--payload-file", str(bad), "--base64")
    assert result.exit_code == 4


def test_import_secure_goes_through_an_import_token(k: Cli, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(os.urandom(32))
    doc = k.json("import", "byok", "--payload-file", str(raw), "--secure")
    assert isinstance(doc, dict)
    assert (doc["imported"], doc["extractable"]) == (True, False)
    result = k.run("import", "x-x", "--payload-file", str(raw), "--secure", "--standard")
    assert result.exit_code == 2


def test_list_table_json_and_filters(k: Cli) -> None:
    root = k.key("root-a")
    k.clock.now += timedelta(seconds=1)
    std = k.key("std-b", "--standard")
    assert k.run("disable", str(root["id"])).exit_code == 0
    table = k.run("list")
    assert table.exit_code == 0
    assert "2 keys" in table.output
    assert str(root["id"]) in table.output
    assert state_label(KeyState.SUSPENDED) in table.output
    listed = k.json("list")
    assert isinstance(listed, dict)
    keys = listed["keys"]
    assert isinstance(keys, list)
    assert [d["name"] for d in keys] == ["root-a", "std-b"]

    def names(*args: str) -> list[str]:
        doc = k.json("list", *args)
        assert isinstance(doc, dict)
        items = doc["keys"]
        assert isinstance(items, list)
        return [d["name"] for d in items]

    assert names("--state", "suspended") == ["root-a"]
    assert names("--state", "active,2") == ["root-a", "std-b"]
    assert names("--standard") == ["std-b"]
    assert names("--root") == ["root-a"]
    assert k.run("delete", str(std["id"])).exit_code == 0
    assert names() == ["root-a"]
    assert names("--all") == ["root-a", "std-b"]
    assert names("--state", "destroyed") == ["std-b"]
    assert k.run("list", "--state", "gone").exit_code == 2
    assert k.run("list", "--all", "--state", "active").exit_code == 2


def test_versions_after_rotate(k: Cli) -> None:
    key = str(k.key("root")["id"])
    rotated = k.run("rotate", key)
    assert rotated.exit_code == 0, rotated.output
    table = k.run("versions", key)
    assert table.exit_code == 0
    assert "2 versions" in table.output
    assert "(latest)" in table.output
    doc = k.json("versions", key)
    assert isinstance(doc, dict)
    assert doc["total"] == 2


# --- wrap, unwrap, rewrap ------------------------------------------------------------------------


def test_wrap_then_unwrap_to_a_0600_file(k: Cli, tmp_path: Path) -> None:
    key = str(k.key("root")["id"])
    dek = tmp_path / "dek"
    dek.write_bytes(b"my-data-key-0123456789abcdef0123")
    wrapped = k.run("wrap", key, "--plaintext-file", str(dek), "--aad", "ns", "--aad", "name")
    assert wrapped.exit_code == 0, wrapped.output
    ciphertext = wrapped.stdout.strip()
    assert b"my-data-key" not in base64.b64decode(ciphertext)
    assert "wrapped with key version" in wrapped.stderr
    out = tmp_path / "plain"
    result = k.run(
        "unwrap", key, "--ciphertext", ciphertext, "--aad", "ns", "--aad", "name", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == dek.read_bytes()
    assert mode(out) == 0o600
    assert "my-data-key" not in result.output
    raw = k.run(
        "unwrap", key, "--ciphertext", ciphertext, "--aad", "ns", "--aad", "name", "--stdout"
    )
    assert raw.exit_code == 0
    assert raw.stdout_bytes == dek.read_bytes()


def test_unwrap_needs_exactly_one_destination(k: Cli, tmp_path: Path) -> None:
    key = str(k.key("root")["id"])
    assert k.run("unwrap", key, "--ciphertext", "abc").exit_code == 2
    both = k.run("unwrap", key, "--ciphertext", "abc", "--stdout", "--out", str(tmp_path / "x"))
    assert both.exit_code == 2
    none = k.run("unwrap", key, "--stdout")
    assert none.exit_code == 2


def test_unwrap_with_wrong_aad_exits_5_and_leaves_no_file(k: Cli, tmp_path: Path) -> None:
    key = str(k.key("root")["id"])
    ciphertext_file = tmp_path / "ct"
    wrapped = k.run("wrap", key, "--out", str(tmp_path / "dek"), "--aad", "right")
    ciphertext_file.write_text(wrapped.stdout)
    out = tmp_path / "plain"
    result = k.run(
        "unwrap",
        key,
        "--ciphertext-file",
        str(ciphertext_file),
        "--aad",
        "wrong",
        "--out",
        str(out),
    )
    assert result.exit_code == 5
    assert not out.exists()


def test_wrap_generated_dek_goes_to_a_0600_file_only(k: Cli, tmp_path: Path) -> None:
    key = str(k.key("root")["id"])
    out = tmp_path / "dek"
    result = k.run("wrap", key, "--out", str(out))
    assert result.exit_code == 0, result.output
    dek = out.read_bytes()
    assert len(dek) == 32
    assert mode(out) == 0o600
    assert base64.b64encode(dek).decode() not in result.output
    ciphertext = result.stdout.strip()
    back = k.run("unwrap", key, "--ciphertext", ciphertext, "--stdout")
    assert back.stdout_bytes == dek


def test_wrap_generated_dek_is_printed_only_when_asked(k: Cli) -> None:
    key = str(k.key("root")["id"])
    refused = k.run("wrap", key)
    assert refused.exit_code == 2
    assert "--out FILE" in refused.output
    shown = k.run("wrap", key, "--show-plaintext")
    assert shown.exit_code == 0
    lines = shown.stdout.split()
    assert len(lines) == 2
    assert len(base64.b64decode(lines[1])) == 32
    doc = k.json("wrap", key, "--show-plaintext")
    assert isinstance(doc, dict)
    assert set(doc) == {"ciphertext", "key_version", "plaintext"}


def test_wrap_refuses_to_overwrite(k: Cli, tmp_path: Path) -> None:
    key = str(k.key("root")["id"])
    out = tmp_path / "dek"
    out.write_bytes(b"keep me")
    result = k.run("wrap", key, "--out", str(out))
    assert result.exit_code == 4
    assert "refusing to overwrite" in result.output
    assert out.read_bytes() == b"keep me"


def test_wrap_own_plaintext_takes_no_out(k: Cli, tmp_path: Path) -> None:
    key = str(k.key("root")["id"])
    dek = tmp_path / "dek"
    dek.write_bytes(b"x" * 32)
    result = k.run("wrap", key, "--plaintext-file", str(dek), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2


def test_unwrap_after_rotation_prints_the_rewrapped_ciphertext(k: Cli, tmp_path: Path) -> None:
    key = str(k.key("root")["id"])
    first = k.run("wrap", key, "--out", str(tmp_path / "dek")).stdout.strip()
    assert k.run("rotate", key).exit_code == 0
    result = k.run("unwrap", key, "--ciphertext", first, "--out", str(tmp_path / "plain"))
    assert result.exit_code == 0
    assert "rotated since" in result.stderr
    rewrapped = result.stdout.strip()
    assert rewrapped
    assert rewrapped != first
    again = k.run("unwrap", key, "--ciphertext", rewrapped, "--stdout")
    assert again.stdout_bytes == (tmp_path / "dek").read_bytes()
    doc = k.json("rewrap", key, "--ciphertext", first)
    assert isinstance(doc, dict)
    assert doc["key_version"] != doc["rewrapped_key_version"]
    table = k.run("rewrap", key, "--ciphertext", first)
    assert table.exit_code == 0
    assert "rewrapped from version" in table.stderr


# --- lifecycle --------------------------------------------------------------------------------


def test_disable_enable_and_too_early(k: Cli) -> None:
    key = str(k.key("root")["id"])
    result = k.run("disable", key)
    assert result.exit_code == 0
    assert "Suspended" in result.output
    refused = k.run("wrap", key, "--show-plaintext")
    assert refused.exit_code == 7
    assert "KEY_ACTION_INVALID_STATE_ERR" in refused.output
    early = k.run("enable", key)
    assert early.exit_code == 7
    assert "REQ_TOO_EARLY_ERR" in early.output
    k.clock.now += timedelta(seconds=30)
    doc = k.json("enable", key)
    assert doc == {"key": key, "action": "enable", "ok": True}


def test_delete_guarded_by_a_registration(k: Cli) -> None:
    key = str(k.key("root")["id"])
    cos = Principal("cos", INST, frozenset({Role.READER}), service=True)
    k.service.create_registration(cos, INST, key, CRN, prevent_key_deletion=False)
    refused = k.run("delete", key)
    assert refused.exit_code == 7
    assert "PROTECTED_RESOURCE_ERR" in refused.output
    regs = k.run("registrations", key)
    assert regs.exit_code == 0
    assert "bucket:one" in regs.output
    assert "1 registration" in regs.output
    all_regs = k.json("registrations", "--all")
    assert isinstance(all_regs, dict)
    assert all_regs["total"] == 1
    assert k.run("registrations").exit_code == 2
    assert k.run("registrations", key, "--all").exit_code == 2
    deleted = k.run("delete", key, "--force")
    assert deleted.exit_code == 0, deleted.output
    assert "Destroyed (5)" in deleted.output
    assert "restore until" in deleted.output


def test_delete_restore_purge(k: Cli) -> None:
    key = str(k.key("root")["id"])
    assert k.run("delete", key).exit_code == 0
    again = k.run("delete", key)
    assert again.exit_code == 14
    assert "KEY_DELETED_ERR" in again.output
    k.clock.now += timedelta(seconds=30)
    restored = k.json("restore", key)
    assert isinstance(restored, dict)
    assert restored["state_name"] == "Active"
    assert k.run("delete", key).exit_code == 0
    asked = k.run("purge", key, who="pat", input="n\n")
    assert asked.exit_code == 1
    assert "Aborted" in asked.output
    early = k.run("purge", key, "--yes", who="pat")
    assert early.exit_code == 7
    k.clock.now += timedelta(hours=4)
    assert k.run("purge", key, "--yes").exit_code == 9
    purged = k.run("purge", key, "--yes", who="pat")
    assert purged.exit_code == 0, purged.output
    assert "purged" in purged.output
    gone = k.run("get", key)
    assert gone.exit_code == 6
    assert "KEY_NOT_FOUND_ERR" in gone.output


def test_dual_authorization_commands(k: Cli) -> None:
    key = str(k.key("guarded", "--dual-auth")["id"])
    refused = k.run("delete", key)
    assert refused.exit_code == 7
    assert "AUTHORIZATIONS_NOT_MET" in refused.output
    assert k.run("set-for-deletion", key).exit_code == 0
    shown = k.run("get", key)
    assert "set for deletion until" in shown.output
    assert k.run("unset-for-deletion", key).exit_code == 0
    assert k.run("set-for-deletion", key).exit_code == 0
    assert k.run("delete", key, who="bob").exit_code == 0


def test_sync(k: Cli) -> None:
    key = str(k.key("root")["id"])
    result = k.run("sync", key)
    assert result.exit_code == 0
    assert "resynchronise" in result.output


# --- policies ---------------------------------------------------------------------------------


def test_policy_get_and_set(k: Cli) -> None:
    key = str(k.key("root")["id"])
    shown = k.run("policy", "get", key)
    assert shown.exit_code == 0
    assert "rotation" in shown.output
    result = k.run("policy", "set", key, "--rotation-months", "2", "--dual-auth", "on")
    assert result.exit_code == 0, result.output
    assert "every 2 months" in result.output
    doc = k.json("policy", "get", key)
    assert isinstance(doc, dict)
    assert doc["rotation"]["interval_month"] == 2
    assert doc["dual_auth_delete"]["enabled"] is True
    assert k.run("policy", "set", key).exit_code == 2
    both = k.run("policy", "set", key, "--rotation-months", "2", "--no-rotation")
    assert both.exit_code == 2
    off = k.run("policy", "set", key, "--no-rotation")
    assert "off" in off.output
    assert k.run("policy", "set", key, "--rotation-months", "13").exit_code == 2


def test_instance_policy_get_and_set(k: Cli) -> None:
    assert k.run("instance-policy", "get").exit_code == 0
    result = k.run("instance-policy", "set", "--dual-auth", "on", "--rotation-months", "6")
    assert result.exit_code == 0, result.output
    assert "every 6 months" in result.output
    doc = k.json("instance-policy", "get")
    assert isinstance(doc, dict)
    assert doc["dual_auth_delete"] is True
    denied = k.run("instance-policy", "set", "--dual-auth", "off", who="rita")
    assert denied.exit_code == 9
    assert k.run("instance-policy", "set").exit_code == 2


# --- aliases, rings ---------------------------------------------------------------------------


def test_alias_add_and_remove(k: Cli) -> None:
    key = str(k.key("root")["id"])
    added = k.run("alias", "add", key, "nice-name")
    assert added.exit_code == 0
    assert k.json("get", "nice-name") is not None
    other = str(k.key("other")["id"])
    taken = k.run("alias", "add", other, "nice-name")
    assert taken.exit_code == 7
    assert "KEY_ALIAS_NOT_UNIQUE_ERR" in taken.output
    assert k.run("alias", "remove", key, "nice-name").exit_code == 0
    assert k.run("get", "nice-name").exit_code == 6


def test_rings(k: Cli) -> None:
    assert k.run("ring", "create", "ring-a").exit_code == 0
    listed = k.run("ring", "list")
    assert listed.exit_code == 0
    assert "ring-a" in listed.output
    assert "default" in listed.output
    doc = k.json("ring", "list")
    assert isinstance(doc, dict)
    assert doc["total"] == 2
    key = str(k.key("root")["id"])
    moved = k.json("ring", "move", key, "ring-a")
    assert isinstance(moved, dict)
    assert moved["key_ring_id"] == "ring-a"
    in_ring = k.run("list", "--key-ring", "ring-a", fmt="json")
    assert json.loads(in_ring.stdout)["keys"][0]["id"] == key
    busy = k.run("ring", "delete", "ring-a")
    assert busy.exit_code == 7
    assert "KEY_RING_NOT_EMPTY_ERR" in busy.output
    assert k.run("ring", "move", key, "default").exit_code == 0
    assert k.run("ring", "delete", "ring-a").exit_code == 0
    assert k.run("ring", "delete", "ring-a").exit_code == 6


# --- errors -----------------------------------------------------------------------------------


def test_wrong_token_exits_8_without_echoing_it(k: Cli) -> None:
    k.tokens["mallory"] = "kinko_" + "B" * 43
    result = k.run("list", who="mallory")
    assert result.exit_code == 8
    assert "UNAUTHORIZED_ERR" in result.output
    assert "B" * 43 not in result.output


def test_reader_cannot_create(k: Cli) -> None:
    result = k.run("create", "nope", who="rita")
    assert result.exit_code == 9
    assert "FORBIDDEN_ERR" in result.output


def test_unreachable_service_exits_16(k: Cli) -> None:
    argv = ["keys", "list", "--url", "http://127.0.0.1:9", "--token", "t", "--instance", INST]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 16
    assert "cannot reach the key service" in result.output


def test_unreadable_input_files_exit_4(k: Cli, tmp_path: Path) -> None:
    key = str(k.key("root")["id"])
    odd = tmp_path / "odd"
    odd.write_bytes(b"\xff\xfe not ascii")
    result = k.run("unwrap", key, "--ciphertext-file", str(odd), "--stdout")
    assert result.exit_code == 4
    assert "other than ASCII" in result.output
    token_file = tmp_path / "token"
    token_file.write_bytes(b"\xff")
    argv = ["keys", "list", "--token-file", str(token_file), "--instance", INST]
    assert k.raw(argv).exit_code == 4
