"""The pure parts of ``kinko up``: the first-start state machine, the generated
EncryptionConfiguration, the request routing of the one HTTPS port, the data folder choice.

The first start runs on a real key service over the in-memory store and HSM; a start that
stopped half-way is made by failing the step after the one under test (an HSM that is
offline, a key made by hand), and the next start must finish it without duplicating anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from kinko.cluster.auth import ClusterRole, ClusterTokenBook, cluster_token_path
from kinko.cluster.lifecycle import PluginEntry
from kinko.crypto.config import IdentityConfig, KmsConfig, parse_encryption_config
from kinko.errors import (
    Conflict,
    CorruptMetadata,
    HsmUnavailable,
    InvalidArgument,
    Unauthorized,
)
from kinko.hsm.memory import MemoryHsm
from kinko.keys.audit import MemoryAuditSink
from kinko.keys.auth import Role, TokenBook, hash_token, issue_token, token_path
from kinko.keys.service import KeyService
from kinko.kms.client import SocketAddress, parse_socket_address
from kinko.store.memory import MemoryStore
from kinko.store.port import Put
from kinko.up import (
    ADMIN_KEY_ROLES,
    ENCRYPTION_CONFIG_FILE,
    ROOT_KEY_ALIAS,
    STATE_FILE,
    ApiDispatcher,
    HistoryCompactor,
    UpState,
    bootstrap,
    data_dir_from,
    encryption_config_text,
    kms_endpoint,
    load_state,
    route,
    save_state,
)

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)


class Parts:
    """One data folder and the store, HSM and key service a start opens on it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.store = MemoryStore()
        self.hsm = MemoryHsm()
        self.service = KeyService(
            self.store, self.hsm, audit=MemoryAuditSink(), clock=lambda: NOW, rng=os.urandom
        )
        self.socket = data_dir / "kms.sock"

    def start(self) -> tuple[str, str, str, Path]:
        boot = bootstrap(self.data_dir, self.store, self.service, socket_path=self.socket, now=NOW)
        return boot.instance, boot.admin_token, boot.root_key, boot.encryption_config

    def root_keys(self, instance: str, token: str) -> list[str]:
        admin = self.service.authenticate(token)
        return [k.id for k in self.service.list_keys(admin, instance).keys]


@pytest.fixture
def parts(tmp_path: Path) -> Parts:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    return Parts(data_dir)


# --- the first start -----------------------------------------------------------------------


def test_first_start_makes_instance_token_root_key_and_config(parts: Parts) -> None:
    instance, token, root_key, config = parts.start()

    assert (parts.data_dir / "admin.token").read_text() == token + "\n"
    assert stat.S_IMODE((parts.data_dir / "admin.token").stat().st_mode) == 0o600
    key_principal = TokenBook(parts.store).authenticate(token, now=NOW)
    assert key_principal.instance == instance
    assert key_principal.roles == ADMIN_KEY_ROLES
    assert Role.KEY_PURGE in key_principal.roles
    cluster_principal = ClusterTokenBook(parts.store).authenticate(token, now=NOW)
    assert cluster_principal.role is ClusterRole.ADMINISTRATOR
    assert cluster_principal.namespaces is None

    admin = parts.service.authenticate(token)
    view = parts.service.get_key_metadata(admin, instance, ROOT_KEY_ALIAS)
    assert view.id == root_key
    assert not view.extractable
    assert parts.root_keys(instance, token) == [root_key]

    assert config == parts.data_dir / ENCRYPTION_CONFIG_FILE
    assert config.read_text() == encryption_config_text(parts.socket)
    assert load_state(parts.data_dir) == UpState(
        instance, root_key, config, admin_token_id=hash_token(token)[:12]
    )


def test_a_second_start_reuses_everything(parts: Parts) -> None:
    first = parts.start()
    state_before = (parts.data_dir / STATE_FILE).read_bytes()

    assert parts.start() == first
    assert (parts.data_dir / STATE_FILE).read_bytes() == state_before
    assert parts.root_keys(first[0], first[1]) == [first[2]]


def test_a_start_stopped_after_the_token_makes_the_root_key_once(parts: Parts) -> None:
    parts.hsm.device.online = False
    with pytest.raises(HsmUnavailable):
        parts.start()
    state = load_state(parts.data_dir)
    assert state is not None
    assert state.root_key is None
    token = (parts.data_dir / "admin.token").read_text().strip()
    assert parts.store.get(token_path(hash_token(token))) is not None
    assert not (parts.data_dir / ENCRYPTION_CONFIG_FILE).exists()

    parts.hsm.device.online = True
    instance, token_again, root_key, _ = parts.start()

    assert (instance, token_again) == (state.instance, token)
    assert parts.root_keys(instance, token) == [root_key]


def test_a_start_stopped_before_recording_the_root_key_finds_it_by_alias(parts: Parts) -> None:
    instance, token, root_key, _ = parts.start()
    # As if the key had been created but up.json not yet rewritten.
    save_state(parts.data_dir, UpState(instance))
    (parts.data_dir / ENCRYPTION_CONFIG_FILE).unlink()

    assert parts.start()[:3] == (instance, token, root_key)
    assert parts.root_keys(instance, token) == [root_key]
    assert (parts.data_dir / ENCRYPTION_CONFIG_FILE).is_file()


def test_a_token_written_but_not_registered_is_registered_in_both_books(parts: Parts) -> None:
    instance, token, old_root_key, _ = parts.start()
    digest = hash_token(token)
    fresh = Parts(parts.data_dir)  # a new store (an emptied etcd): no token record, no key

    instance_again, token_again, root_key, _ = fresh.start()

    assert (instance_again, token_again) == (instance, token)
    assert fresh.store.get(token_path(digest)) is not None
    assert fresh.store.get(cluster_token_path(digest)) is not None
    assert root_key != old_root_key
    assert fresh.root_keys(instance, token) == [root_key]
    assert load_state(parts.data_dir) == UpState(
        instance, root_key, _config(parts), admin_token_id=digest[:12]
    )


def test_a_deleted_root_key_is_kept_so_that_it_can_be_restored(parts: Parts) -> None:
    instance, token, root_key, _ = parts.start()
    admin = parts.service.authenticate(token)
    parts.service.delete_key(admin, instance, root_key)

    assert parts.start()[2] == root_key


def _config(parts: Parts) -> Path:
    return parts.data_dir / ENCRYPTION_CONFIG_FILE


def test_a_registration_missing_from_one_book_is_added_back(parts: Parts) -> None:
    _, token, _, _ = parts.start()
    ClusterTokenBook(parts.store).revoke(hash_token(token))

    parts.start()

    assert ClusterTokenBook(parts.store).authenticate(token, now=NOW).role is (
        ClusterRole.ADMINISTRATOR
    )


def test_a_lost_state_file_recovers_the_instance_from_the_token(parts: Parts) -> None:
    instance, token, root_key, _ = parts.start()
    (parts.data_dir / STATE_FILE).unlink()

    assert parts.start()[:3] == (instance, token, root_key)


def test_an_edited_encryption_config_is_kept(parts: Parts) -> None:
    config = parts.data_dir / ENCRYPTION_CONFIG_FILE
    config.write_text("# mine\n")

    assert parts.start()[3] == config
    assert config.read_text() == "# mine\n"


def test_an_admin_token_file_without_a_token_is_refused(parts: Parts) -> None:
    (parts.data_dir / "admin.token").write_text("not-a-token\n")

    with pytest.raises(InvalidArgument, match=r"admin\.token: expected a kinko token"):
        parts.start()


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "{}",
        '{"v": 2, "instance": "x"}',
        '{"v": 1, "instance": ""}',
        "{",
        '{"v":1}',
        '{"v": 1, "instance": "x", "plugins": [{"provider": "p", "key": "k"}]}',
        '{"v": 1, "instance": "x", "plugins": [{"provider": "p", "key": "k", "socket": "../s"}]}',
        '{"v": 1, "instance": "x", "plugins": 5}',
        '{"v": 1, "instance": "x", "adminTokenId": "kinko_secret"}',
        '{"v": 1, "instance": "x", "adminTokenId": 12}',
    ],
)
def test_a_corrupt_state_file_is_reported(tmp_path: Path, text: str) -> None:
    (tmp_path / STATE_FILE).write_text(text)

    with pytest.raises(CorruptMetadata, match=r"up\.json"):
        load_state(tmp_path)


def test_state_round_trips(tmp_path: Path) -> None:
    state = UpState("inst-1", "0b6c3c2e-1111-4222-8333-944455556666", tmp_path / "c.yaml")
    save_state(tmp_path, state)

    assert load_state(tmp_path) == state
    assert load_state(tmp_path / "nothing-here") is None
    # A state without plugins is written as before they existed.
    assert "plugins" not in (tmp_path / STATE_FILE).read_text()

    table = (PluginEntry("kinko-1f2e3d4c", "1f2e3d4c-aaaa-4bbb-8ccc-ddddeeeeffff", "kms-1f.sock"),)
    save_state(tmp_path, replace(state, plugins=table))
    assert load_state(tmp_path) == replace(state, plugins=table)

    save_state(tmp_path, replace(state, admin_token_id="0123456789ab"))
    assert load_state(tmp_path) == replace(state, admin_token_id="0123456789ab")
    assert '"adminTokenId": "0123456789ab"' in (tmp_path / STATE_FILE).read_text()


# --- replacing the admin token -------------------------------------------------------------


def _refused_in_both_books(parts: Parts, token: str) -> bool:
    for book in (TokenBook(parts.store), ClusterTokenBook(parts.store)):
        try:
            book.authenticate(token, now=NOW)
        except Unauthorized:
            continue
        return False
    return True


def test_a_deleted_admin_token_file_makes_a_new_token_that_revokes_the_old_one(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    instance, old, root_key, _ = parts.start()
    (parts.data_dir / "admin.token").unlink()

    with caplog.at_level(logging.WARNING, logger="kinko.up"):
        instance_again, new, root_key_again, _ = parts.start()

    assert (instance_again, root_key_again) == (instance, root_key)
    assert new != old
    assert (parts.data_dir / "admin.token").read_text() == new + "\n"
    assert _refused_in_both_books(parts, old)
    assert TokenBook(parts.store).authenticate(new, now=NOW).roles == ADMIN_KEY_ROLES
    assert ClusterTokenBook(parts.store).authenticate(new, now=NOW).role is (
        ClusterRole.ADMINISTRATOR
    )
    state = load_state(parts.data_dir)
    assert state is not None
    assert state.admin_token_id == hash_token(new)[:12]
    assert hash_token(old)[:12] in caplog.text
    assert "revoked from both token books" in caplog.text
    assert old not in caplog.text
    assert new not in caplog.text


def test_a_new_admin_token_written_but_not_registered_still_revokes_the_old_one(
    parts: Parts,
) -> None:
    instance, old, _, _ = parts.start()
    # As if a start had issued a new token and written admin.token, then stopped.
    new = issue_token(rng=os.urandom, instance=instance, roles=["Manager"], now=NOW).token
    (parts.data_dir / "admin.token").write_text(new + "\n")

    assert parts.start()[1] == new

    assert _refused_in_both_books(parts, old)
    assert ClusterTokenBook(parts.store).authenticate(new, now=NOW).name == "kinko-admin"


def test_a_replacement_registered_but_not_recorded_is_recorded_on_the_next_start(
    parts: Parts,
) -> None:
    _, old, _, _ = parts.start()
    (parts.data_dir / "admin.token").unlink()
    _, new, _, _ = parts.start()
    state = load_state(parts.data_dir)
    assert state is not None
    # As if the start had stopped after the transaction, before rewriting up.json.
    save_state(parts.data_dir, replace(state, admin_token_id=hash_token(old)[:12]))

    assert parts.start()[1] == new

    assert load_state(parts.data_dir) == state
    assert _refused_in_both_books(parts, old)


def test_a_state_without_an_admin_token_id_records_it_and_revokes_nothing(parts: Parts) -> None:
    instance, token, root_key, config = parts.start()
    # up.json as written before it named the admin token.
    save_state(parts.data_dir, UpState(instance, root_key, config))
    other = issue_token(rng=os.urandom, instance=instance, roles=["Reader"], now=NOW)
    TokenBook(parts.store).add(other.record)

    assert parts.start()[1] == token

    state = load_state(parts.data_dir)
    assert state is not None
    assert state.admin_token_id == hash_token(token)[:12]
    assert TokenBook(parts.store).authenticate(other.token, now=NOW).roles == {Role.READER}


def test_no_encryption_writes_an_identity_config_on_the_first_start_only(parts: Parts) -> None:
    boot = bootstrap(
        parts.data_dir,
        parts.store,
        parts.service,
        socket_path=parts.socket,
        now=NOW,
        no_encryption=True,
    )

    config = parse_encryption_config(boot.encryption_config.read_bytes())
    assert [p.kind for _, p in config.providers_for("secrets")] == ["identity"]
    assert [p.kind for _, p in config.providers_for("configmaps")] == ["identity"]
    # The root key is made all the same: `kinko cluster kms enable --key kinko-cluster`.
    admin = parts.service.authenticate(boot.admin_token)
    assert parts.service.get_key_metadata(admin, boot.instance, ROOT_KEY_ALIAS).id == boot.root_key

    before = boot.encryption_config.read_bytes()
    with pytest.raises(InvalidArgument, match="--no-encryption applies to the first start only"):
        bootstrap(
            parts.data_dir,
            parts.store,
            parts.service,
            socket_path=parts.socket,
            now=NOW,
            no_encryption=True,
        )
    assert boot.encryption_config.read_bytes() == before
    # Without the flag, a later start keeps the configuration as it is.
    parts.start()
    assert boot.encryption_config.read_bytes() == before


# --- the EncryptionConfiguration -----------------------------------------------------------


@pytest.mark.parametrize(
    "socket_path",
    [
        Path("/var/lib/kinko/kms.sock"),
        Path("/tmp/a dir: with # odd 'chars' ?x=1 %41/kms.sock"),
        Path("/tmp/\u00e9t\u00e9/kms.sock"),
    ],
)
def test_the_config_puts_kms_v2_first_then_identity(socket_path: Path) -> None:
    config = parse_encryption_config(encryption_config_text(socket_path))

    (entry,) = config.resources
    assert entry.resources == ("secrets", "configmaps")
    kms, identity = entry.providers
    assert kms == KmsConfig(
        api_version="v2", name="kinko", endpoint=kms_endpoint(socket_path), timeout_seconds=3.0
    )
    assert kms.socket_address == str(socket_path)
    assert parse_socket_address(kms.endpoint) == SocketAddress(str(socket_path), abstract=False)
    assert isinstance(identity, IdentityConfig)


# --- one port, two APIs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "target", "seen"),
    [
        ("/api/v2/keys", "keys", "/api/v2/keys"),
        ("/api/v2/keys/abc/actions/wrap", "keys", "/api/v2/keys/abc/actions/wrap"),
        ("/api/v2", "keys", "/api/v2"),
        ("/api/v2/openapi.json", "keys", "/openapi.json"),
        ("/api", "cluster", "/api"),
        ("/api/v1/namespaces/default/secrets", "cluster", "/api/v1/namespaces/default/secrets"),
        ("/api/v2x", "cluster", "/api/v2x"),
        ("/apis", "cluster", "/apis"),
        ("/apis/kinko.io/v1/status", "admin", "/apis/kinko.io/v1/status"),
        ("/apis/kinko.io", "admin", "/apis/kinko.io"),
        ("/apis/kinko.iox/v1", "cluster", "/apis/kinko.iox/v1"),
        ("/version", "cluster", "/version"),
        ("/healthz", "cluster", "/healthz"),
        ("/metrics", "cluster", "/metrics"),
        ("/openapi.json", "cluster", "/openapi.json"),
        ("/", "cluster", "/"),
    ],
)
def test_route(path: str, target: str, seen: str) -> None:
    assert route(path) == (target, seen)


def _naming_app(name: str) -> object:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = f"{name} {scope['path']} {scope['raw_path'].decode()}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def test_the_dispatcher_hands_requests_to_the_routed_app() -> None:
    dispatcher = ApiDispatcher(
        _naming_app("keys"),  # type: ignore[arg-type]
        _naming_app("cluster"),  # type: ignore[arg-type]
        _naming_app("admin"),  # type: ignore[arg-type]
    )
    without_admin = ApiDispatcher(_naming_app("keys"), _naming_app("cluster"))  # type: ignore[arg-type]

    async def fetch(app: ApiDispatcher, path: str) -> str:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://kinko") as client:
            return (await client.get(path)).text

    async def all_of_them() -> list[str]:
        paths = ("/api/v2/keys", "/api/v2/openapi.json", "/healthz", "/apis/kinko.io/v1/status")
        return [await fetch(dispatcher, p) for p in paths] + [
            await fetch(without_admin, "/apis/kinko.io/v1/status")
        ]

    assert asyncio.run(all_of_them()) == [
        "keys /api/v2/keys /api/v2/keys",
        "keys /openapi.json /openapi.json",
        "cluster /healthz /healthz",
        "admin /apis/kinko.io/v1/status /apis/kinko.io/v1/status",
        "cluster /apis/kinko.io/v1/status /apis/kinko.io/v1/status",
    ]


# --- the data folder -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "env", "expected"),
    [
        (Path("/srv/k"), {"KINKO_HOME": "/home/k"}, Path("/srv/k")),
        (None, {"KINKO_HOME": "/home/k"}, Path("/home/k")),
        (None, {"KINKO_HOME": "  "}, Path(".kinko")),
        (None, {}, Path(".kinko")),
    ],
)
def test_data_dir_from(given: Path | None, env: dict[str, str], expected: Path) -> None:
    assert data_dir_from(given, env) == expected


def test_kms_endpoint_refuses_what_no_unix_url_names() -> None:
    assert kms_endpoint(Path("/run/kinko/kms.sock")) == "unix:///run/kinko/kms.sock"
    with pytest.raises(InvalidArgument, match="absolute"):
        kms_endpoint(Path("kms.sock"))
    with pytest.raises(InvalidArgument, match="cannot be named"):
        kms_endpoint(Path("/@abstract/kms.sock"))


def test_history_compactor_keeps_one_to_two_intervals_of_history() -> None:
    store = MemoryStore()
    ticker = HistoryCompactor(store, store.compact)
    store.txn([Put(b"/registry/secrets/a/x", b"v1", 0)])
    ticker.tick()  # remembers this revision, compacts nothing
    first = store.range(b"/", limit=1).revision
    store.txn([Put(b"/registry/secrets/a/x", b"v2", None)])
    assert store.range(b"/", limit=1, revision=first - 1).revision == first - 1
    ticker.tick()  # compacts at the revision the first tick saw
    with pytest.raises(Conflict):
        store.range(b"/", limit=1, revision=first - 1)
    assert store.range(b"/", limit=1, revision=first).revision == first
    ticker.tick()  # a second compaction at an older or equal revision changes nothing
