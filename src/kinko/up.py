"""All of kinko in one process: the key service, its KMS v2 plugin and the cluster API.

Job: :class:`Kinko` composes what ``kinko keys serve``, ``kinko kms serve`` and the cluster API
run separately, on one data folder, so that ``kinko up`` (and tests and benchmarks, on a
thread) start the whole system with one call:

- **one store** (SQLite ``kinko.db`` in the folder, or etcd) shared by the key service and the
  cluster: key metadata, both token books and the encrypted Secrets and ConfigMaps;
- **the key service** on the HSM given (default: the soft keystore in the folder, NOT
  HSM-grade), with its audit log and its scheduler (rotation, expiry, purge);
- **the KMS v2 plugins**: a :class:`~kinko.kms.rootkey.RootKeyPlugin` on the cluster's root
  key, through the in-process key service, served by gRPC on ``DIR/kms.sock`` (provider
  ``kinko``), and one more per root key ``kinko cluster kms enable`` switched to
  (``DIR/kms-<first 8 of its id>.sock``, provider ``kinko-<first 8>``; the table is kept in
  ``up.json`` so a restart serves them all). The cluster reaches them over their sockets like
  any external plugin: ``encryption-config.yaml`` names the sockets, and
  :class:`~kinko.cluster.encryption.EncryptionConfigSource` dials them (and reloads the file
  when its content changes). A Decrypt under a deleted or purged root key answers as
  undecryptable (:class:`~kinko.cluster.lifecycle.ShreddingPlugin`);
- **the encryption controller** (:class:`~kinko.cluster.lifecycle.EncryptionController`):
  migrates stored objects whenever the configuration or the root key's version changes,
  enables KMS on request, retires providers nothing refers to, compacts the store's history
  after a migration, and reports status and coverage;
- **one HTTPS port** (CA generated under ``DIR/tls``) for every API: :class:`ApiDispatcher`
  sends ``/api/v2/…`` to the Key Protect API, ``/apis/kinko.io/…`` to kinko's own API group
  (:mod:`kinko.api.k8s_admin`: status, coverage, KMS enablement, migrations) and everything
  else to the Kubernetes-style cluster API (:func:`route`).

First start (:func:`bootstrap`) creates, in this order and each step only if missing: the key
service instance id (a UUID) in ``up.json``; one admin token, registered in both token books
in one transaction (key service: Manager, Writer, Reader and KeyPurge on the instance;
cluster: Administrator) and kept in ``admin.token``; the root key ``kinko-cluster-root``
(alias ``kinko-cluster``, created by the admin); ``encryption-config.yaml`` (KMS v2 first,
then identity, for secrets and configmaps; identity only with ``no_encryption``, the cluster
before KMS enablement). Every later start finds each step done and reuses
it, and a start killed half-way is completed by the next one, never duplicated: the root key
is found by its alias before one is created, the token file is written before the token is
registered, and a registration missing from either book is added. An ``admin.token`` deleted
since the last start makes the next start issue a new admin token that replaces the old one:
the old token (named by its id in ``up.json``) is revoked from both books in the transaction
that registers the new one.

Data folder (created 0700; the key service's own files are described in
:mod:`kinko.keys.deployment`)::

    up.json                  instance id, root key id, config path, plugin table, the admin
                             token's id (first 12 hex of its hash; no secrets)
    admin.token              the admin token (0600)
    encryption-config.yaml   the cluster's EncryptionConfiguration (0600; yours to edit)
    kms.sock                 the KMS v2 plugin socket, while running
    kms-<id8>.sock           the socket of each further root key's plugin, while running
    tls/                     the CA (ca.crt) and the server certificate
    kubeconfig               server URL, CA and admin token (0600), rewritten on each start
    endpoints.json           URLs, socket and files (0600), only while running
    up.lock                  held while a kinko up runs on the folder
    .gitignore               ``*``: the folder (tokens, keys) never ends up in a commit

Invariants: the HTTPS port is bound first (a taken port fails before anything starts) but
answers only once every other part runs; ``endpoints.json`` appears last, once the HTTPS
server, the plugin socket and the config poller all run (so a client that finds it can use
it), and is removed first on stop; :meth:`Kinko.stop` stops the parts in reverse
order of start (HTTP server, scheduler, encryption controller — a running migration stops
after its batch and resumes on the next start —, config poller and KMS clients, plugin
servers and their sockets, audit log, store, lock) and raises nothing; the admin token is
written only to ``admin.token`` and ``kubeconfig`` and never logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, TypeVar

import uvicorn
import yaml
from starlette.types import ASGIApp, Receive, Scope, Send

from kinko.api.keyprotect import DEFAULT_MAX_BODY, create_keyprotect_app
from kinko.api.server import ListenAddress, Periodic, TlsConfig
from kinko.api.tls import DEFAULT_NAMES, ensure_server_tls
from kinko.cluster.auth import (
    ClusterRole,
    ClusterTokenBook,
    cluster_token_path,
    cluster_token_record,
    dump_cluster_token,
    find_token,
    revocation,
)
from kinko.cluster.encryption import EncryptionConfigSource
from kinko.cluster.endpoints import (
    ADMIN_TOKEN_FILE,
    ENDPOINTS_FILE,
    Endpoints,
    kubeconfig_yaml,
    read_token_file,
    write_admin_token,
    write_endpoints,
    write_kubeconfig,
    write_private_file,
)
from kinko.cluster.lifecycle import (
    DEFAULT_INTERVAL,
    DEFAULT_KEY_CHECK_INTERVAL,
    EncryptionController,
    ExplainingClusterService,
    PluginEntry,
    PluginTable,
    ServiceKeyDirectory,
    identity_config_text,
)
from kinko.cluster.metrics import ClusterMetrics
from kinko.cluster.migrate import DEFAULT_BATCH
from kinko.errors import (
    Conflict,
    CorruptMetadata,
    InvalidArgument,
    NotFound,
    Unauthorized,
    UnavailableError,
)
from kinko.hsm.port import Hsm
from kinko.keys.audit import FileAuditSink, SyncMode
from kinko.keys.auth import (
    TOKEN_ID_CHARS,
    TOKEN_PREFIX,
    Principal,
    Role,
    TokenRecord,
    dump_token,
    hash_token,
    issue_token,
    load_token,
    token_path,
)
from kinko.keys.deployment import AUDIT_FILE, KEYSTORE_DIR, StoreOptions, open_store
from kinko.keys.service import KeyService
from kinko.kms.client import SocketAddress, parse_socket_address
from kinko.kms.port import KmsV2Api
from kinko.kms.rootkey import RootKeyPlugin, ServiceRootKeys
from kinko.kms.server import KmsV2Server
from kinko.store.etcd_store import EtcdStore
from kinko.store.port import Op, Put, Store
from kinko.store.sqlite import SqliteStore

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_LISTEN",
    "ApiDispatcher",
    "Bootstrapped",
    "Kinko",
    "UpOptions",
    "UpState",
    "bootstrap",
    "data_dir_from",
    "encryption_config_text",
    "kms_endpoint",
    "load_state",
    "make_data_dir",
    "route",
    "save_state",
]

log = logging.getLogger(__name__)

STATE_FILE: Final = "up.json"
ENCRYPTION_CONFIG_FILE: Final = "encryption-config.yaml"
KMS_SOCKET_FILE: Final = "kms.sock"
LOCK_FILE: Final = "up.lock"
#: The data folder when neither ``--data-dir`` nor ``$KINKO_HOME`` names one.
DEFAULT_DATA_DIR: Final = Path(".kinko")
DATA_DIR_ENV: Final = "KINKO_HOME"
DEFAULT_LISTEN: Final = ListenAddress("127.0.0.1", 6443)

ROOT_KEY_NAME: Final = "kinko-cluster-root"
ROOT_KEY_ALIAS: Final = "kinko-cluster"
KMS_PROVIDER_NAME: Final = "kinko"
KMS_TIMEOUT: Final = "3s"
ADMIN_NAME: Final = "kinko-admin"
PLUGIN_NAME: Final = "kinko-kms-plugin"
#: The admin's key service roles: Manager does not imply KeyPurge (keys.auth), so it is named.
ADMIN_KEY_ROLES: Final = frozenset({Role.MANAGER, Role.WRITER, Role.READER, Role.KEY_PURGE})
#: The prefix that sends a request to the Key Protect API; the rest goes to the cluster API.
KEY_SERVICE_PREFIX: Final = "/api/v2"
#: The prefix of kinko's own API group (:mod:`kinko.api.k8s_admin`).
ADMIN_PREFIX: Final = "/apis/kinko.io"

_TOKEN_RE: Final = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{43}")
_ADMIN_ID_RE: Final = re.compile(rf"[0-9a-f]{{{TOKEN_ID_CHARS}}}")
_WILDCARDS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1"}
# sun_path holds 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH: Final = 107


def utc_now() -> datetime:
    """kinko's wall clock: aware UTC."""
    return datetime.now(UTC)


def data_dir_from(given: Path | None, env: Mapping[str, str]) -> Path:
    """The data folder: ``given`` (``--data-dir``), else ``$KINKO_HOME``, else ``./.kinko``."""
    if given is not None:
        return given
    from_env = env.get(DATA_DIR_ENV, "").strip()
    return Path(from_env) if from_env else DEFAULT_DATA_DIR


# --- the state of the first start ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpState:
    """What ``up.json`` keeps: no secret, only ids and a path. ``None``: not made yet.

    ``plugins``: the root key plugins served besides the first start's (``kinko`` on
    ``kms.sock``), added by ``kinko cluster kms enable``: provider, root key id, socket file.
    ``admin_token_id``: the first 12 hex characters of the admin token's SHA-256 (not a
    secret), so that a replacement admin token can revoke the one it replaces.
    """

    instance: str
    root_key: str | None = None
    encryption_config: Path | None = None
    plugins: tuple[PluginEntry, ...] = ()
    admin_token_id: str | None = None


def load_state(data_dir: Path) -> UpState | None:
    """The state in ``DATA_DIR/up.json``, or None before the first start.

    Raises CorruptMetadata (not the JSON this module writes), InvalidArgument (unreadable).
    """
    path = data_dir / STATE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidArgument(f"cannot read {path}: {reason}") from None
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise ValueError
        instance, root_key, config = doc["instance"], doc.get("rootKey"), doc.get("config")
        if not isinstance(instance, str) or not instance:
            raise ValueError
        if root_key is not None and not isinstance(root_key, str):
            raise ValueError
        if config is not None and not isinstance(config, str):
            raise ValueError
        plugins = tuple(_plugin_entry(item) for item in doc.get("plugins", []))
        admin_id = doc.get("adminTokenId")
        if admin_id is not None and (
            not isinstance(admin_id, str) or _ADMIN_ID_RE.fullmatch(admin_id) is None
        ):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise CorruptMetadata(
            f"{path}: expected kinko up's state (v 1, instance, rootKey, config, plugins, "
            "adminTokenId)"
        ) from None
    config_path = Path(config) if config else None
    return UpState(instance, root_key or None, config_path, plugins, admin_id)


def _plugin_entry(item: object) -> PluginEntry:
    if not isinstance(item, dict):
        raise ValueError
    provider, key, socket_name = item["provider"], item["key"], item["socket"]
    for value in (provider, key, socket_name):
        if not isinstance(value, str) or not value:
            raise ValueError
    if "/" in socket_name or socket_name in (".", ".."):
        raise ValueError
    return PluginEntry(provider, key, socket_name)


def save_state(data_dir: Path, state: UpState) -> None:
    """Writes ``DATA_DIR/up.json`` atomically. Raises InvalidArgument (unwritable folder)."""
    doc: dict[str, object] = {
        "v": 1,
        "instance": state.instance,
        "rootKey": state.root_key,
        "config": None if state.encryption_config is None else str(state.encryption_config),
    }
    if state.plugins:
        doc["plugins"] = [entry.to_json() for entry in state.plugins]
    if state.admin_token_id is not None:
        doc["adminTokenId"] = state.admin_token_id
    write_private_file(data_dir / STATE_FILE, (json.dumps(doc, indent=2) + "\n").encode())


def kms_endpoint(socket_path: Path) -> str:
    """The ``unix://`` endpoint of the socket file ``socket_path`` (absolute), escaped so that
    kube-apiserver's parser (and kinko's) gives the path back, even with ``#``, ``?`` or
    ``%`` in it.

    Raises InvalidArgument: a relative path, or one the parsers would read as an abstract
    socket.
    """
    if not socket_path.is_absolute():
        raise InvalidArgument(f"expected an absolute socket path, got {socket_path}")
    endpoint = "unix://" + urllib.parse.quote(str(socket_path), safe="/")
    if parse_socket_address(endpoint) != SocketAddress(str(socket_path), abstract=False):
        raise InvalidArgument(f"the socket path {socket_path} cannot be named by a unix:// URL")
    return endpoint


def encryption_config_text(socket_path: Path) -> str:
    """The EncryptionConfiguration of ``kinko up``: KMS v2 (provider ``kinko`` on
    :func:`kms_endpoint` of ``socket_path``, 3 s timeout) writes Secrets and ConfigMaps,
    identity still reads what was stored before encryption was on.

    Raises InvalidArgument (as :func:`kms_endpoint`).
    """
    doc = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [
            {
                "resources": ["secrets", "configmaps"],
                "providers": [
                    {
                        "kms": {
                            "apiVersion": "v2",
                            "name": KMS_PROVIDER_NAME,
                            "endpoint": kms_endpoint(socket_path),
                            "timeout": KMS_TIMEOUT,
                        }
                    },
                    {"identity": {}},
                ],
            }
        ],
    }
    head = (
        "# Written by kinko up on first start. The first provider writes; every provider\n"
        "# reads. Edits are picked up while kinko up runs (the file's content is polled).\n"
    )
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


@dataclass(frozen=True, slots=True)
class Bootstrapped:
    """What :func:`bootstrap` found or made."""

    instance: str
    admin_token: str = field(repr=False)
    root_key: str
    encryption_config: Path


def bootstrap(
    data_dir: Path,
    store: Store,
    service: KeyService,
    *,
    socket_path: Path,
    now: datetime,
    rng: Callable[[int], bytes] = os.urandom,
    new_instance: Callable[[], str] = lambda: str(uuid.uuid4()),
    no_encryption: bool = False,
) -> Bootstrapped:
    """Completes the first start in ``data_dir`` (module docstring); a no-op once done.

    ``no_encryption``: the first start writes an identity-only EncryptionConfiguration (the
    cluster before KMS enablement); refused once the folder has a configuration.

    Each step is saved before the next begins, so a start interrupted anywhere is finished
    by the next one. A token in ``admin.token`` other than the one ``up.json`` names (the file
    was deleted and a new token issued, now or by a start that stopped before recording it)
    replaces that one: the old token is revoked from both books in the transaction that
    registers the new one, with a warning.

    Raises InvalidArgument (an unwritable folder, an ``admin.token`` that holds no kinko token,
    ``no_encryption`` with a configuration already made), CorruptMetadata (``up.json``, a
    token record), Unauthorized (the token's key service record names another instance),
    Conflict (a token record changed while the admin token was registered), HsmUnavailable,
    StoreUnavailable.
    """
    state = load_state(data_dir)
    if no_encryption:
        made = data_dir / ENCRYPTION_CONFIG_FILE
        if (state is not None and state.encryption_config is not None) or made.exists():
            config_path = state.encryption_config if state and state.encryption_config else made
            raise InvalidArgument(
                f"--no-encryption applies to the first start only: {config_path} exists "
                "already and stays in force (enable KMS with `kinko cluster kms enable`, or "
                "start with a new data folder)"
            )
    token_file = data_dir / ADMIN_TOKEN_FILE
    token = read_token_file(token_file) if token_file.exists() else None
    if token is not None and _TOKEN_RE.fullmatch(token) is None:
        raise InvalidArgument(f"{token_file}: expected a kinko token ({TOKEN_PREFIX}…)")
    if state is None:
        # up.json lost but the token kept: its key service record still names the instance.
        known = _key_record(store, token) if token is not None else None
        state = UpState(known.instance if known is not None else new_instance())
        save_state(data_dir, state)
    if token is None:
        token = issue_token(
            rng=rng, instance=state.instance, roles=ADMIN_KEY_ROLES, now=now, name=ADMIN_NAME
        ).token
        # The file first: a token registered but never written down would be lost for good.
        write_admin_token(data_dir, token)
    admin_id = hash_token(token)[:TOKEN_ID_CHARS]
    replaces = state.admin_token_id if state.admin_token_id != admin_id else None
    _register_admin(store, token, state.instance, now, replaces=replaces)
    if state.admin_token_id != admin_id:
        state = replace(state, admin_token_id=admin_id)
        save_state(data_dir, state)
    admin = service.authenticate(token, instance=state.instance)
    if admin.instance != state.instance:
        raise Unauthorized(f"{token_file} holds a token of another instance than up.json")
    root_key = _root_key(service, admin, state.instance, state.root_key)
    if root_key != state.root_key:
        state = replace(state, root_key=root_key)
        save_state(data_dir, state)
    if state.encryption_config is None:
        config = data_dir / ENCRYPTION_CONFIG_FILE
        if not config.exists():
            text = identity_config_text() if no_encryption else encryption_config_text(socket_path)
            write_private_file(config, text.encode("utf-8"))
        state = replace(state, encryption_config=config)
        save_state(data_dir, state)
    assert state.root_key is not None
    assert state.encryption_config is not None
    return Bootstrapped(state.instance, token, state.root_key, state.encryption_config)


def _key_record(store: Store, token: str) -> TokenRecord | None:
    entry = store.get(token_path(hash_token(token)))
    return None if entry is None else load_token(entry.value)


def _register_admin(
    store: Store, token: str, instance: str, now: datetime, *, replaces: str | None
) -> None:
    """Registers ``token`` in whichever book lacks it and revokes the admin token whose id is
    ``replaces`` from both books, all in one transaction.

    An old token already gone (revoked by hand, or by a start that stopped before recording
    the new id) is nothing to revoke. Raises Conflict (a record changed meanwhile; nothing
    changed), CorruptMetadata, StoreUnavailable.
    """
    digest = hash_token(token)
    key_record = TokenRecord(
        token_hash=digest,
        instance=instance,
        roles=ADMIN_KEY_ROLES,
        service=False,
        name=ADMIN_NAME,
        created=now.astimezone(UTC),
    )
    cluster_record = cluster_token_record(
        token_hash=digest,
        role=ClusterRole.ADMINISTRATOR.value,
        namespaces=None,
        name=ADMIN_NAME,
        now=now,
    )
    ops: list[Op] = []
    if store.get(token_path(digest)) is None:
        ops.append(Put(token_path(digest), dump_token(key_record), 0))
    if store.get(cluster_token_path(digest)) is None:
        ops.append(Put(cluster_token_path(digest), dump_cluster_token(cluster_record), 0))
    replaced = None
    if replaces is not None and (old := _old_admin(store, replaces)) is not None:
        replaced, deletes = revocation(store, old)
        ops.extend(deletes)
    if ops and not store.txn(ops).succeeded:
        raise Conflict("a token record changed while the admin token was registered")
    if replaced is not None:
        log.warning(
            "a new admin token (admin.token was deleted) replaces the old one (id %s, name %s), "
            "which is revoked from both token books",
            replaced.token_id,
            replaced.name,
        )


def _old_admin(store: Store, token_id: str) -> str | None:
    """The hash of the admin token ``up.json`` names, or None if no book holds it any more."""
    try:
        return find_token(store, token_id)
    except NotFound:
        return None


def _root_key(service: KeyService, admin: Principal, instance: str, known: str | None) -> str:
    """The cluster root key's id: the one recorded, else the key holding the alias, else a
    new root key with the alias (set in the create's own transaction, so a key is never left
    without it). A recorded key in any state is kept (a deleted one can be restored); only
    one the store does not know (purged, or a new store) is replaced."""
    for ref in (known, ROOT_KEY_ALIAS):
        if ref is None:
            continue
        try:
            return service.get_key_metadata(admin, instance, ref).id
        except NotFound:
            if ref == known:
                log.warning(
                    "root key %s of up.json is not in the store (purged, or a new store); "
                    "data encrypted under it cannot be read",
                    known,
                )
    view = service.create_key(
        admin,
        instance,
        name=ROOT_KEY_NAME,
        description="The root key of kinko's cluster: the KMS v2 plugin wraps seeds with it.",
        aliases=(ROOT_KEY_ALIAS,),
    )
    return view.id


# --- one port, two APIs --------------------------------------------------------------------


def route(path: str) -> tuple[Literal["keys", "cluster", "admin"], str]:
    """Which app serves ``path``, and the path it sees.

    ``/api/v2`` and below: the Key Protect API (its OpenAPI document, served by that app at
    ``/openapi.json``, is reached as ``/api/v2/openapi.json``). ``/apis/kinko.io`` and below:
    kinko's own API group (:mod:`kinko.api.k8s_admin`: status, coverage, KMS enablement,
    migrations). Everything else, ``/api``, ``/api/v1/…``, ``/apis``, ``/version``,
    ``/healthz``, ``/metrics`` included: the cluster API.
    """
    if path == f"{KEY_SERVICE_PREFIX}/openapi.json":
        return "keys", "/openapi.json"
    if path == KEY_SERVICE_PREFIX or path.startswith(f"{KEY_SERVICE_PREFIX}/"):
        return "keys", path
    if path == ADMIN_PREFIX or path.startswith(f"{ADMIN_PREFIX}/"):
        return "admin", path
    return "cluster", path


class ApiDispatcher:
    """An ASGI app that hands each request to the key service app, kinko's own API group or
    the cluster app, as :func:`route` decides. Anything that is not HTTP goes to the cluster
    app, and so does kinko's group when no ``admin`` app is given."""

    def __init__(self, keys: ASGIApp, cluster: ASGIApp, admin: ASGIApp | None = None) -> None:
        self.keys = keys
        self.cluster = cluster
        self.admin = admin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.cluster(scope, receive, send)
            return
        target, path = route(scope["path"])
        if path != scope["path"]:
            scope = {**scope, "path": path, "raw_path": path.encode("ascii")}
        if target == "keys":
            app = self.keys
        elif target == "admin" and self.admin is not None:
            app = self.admin
        else:
            app = self.cluster
        await app(scope, receive, send)


# --- the composition -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpOptions:
    """How to run kinko.

    ``hsm``: the HSM holding root keys, owned (opened and closed) by the caller; None: the
    soft keystore in ``data_dir`` (NOT HSM-grade). ``etcd_*``: keep the store in etcd instead
    of ``DATA_DIR/kinko.db``. ``listen`` port 0 picks a free port. ``no_encryption``: the
    first start writes an identity-only EncryptionConfiguration (refused later).

    The encryption controller (:class:`~kinko.cluster.lifecycle.EncryptionController`):
    ``encryption_interval`` seconds between its passes, ``key_check_interval`` between unasked
    reads of the root key, ``backoff_cap`` the longest retry delay, ``migration_batch`` and
    ``migration_rate_limit`` (objects per second) the migration's pace. ``clock``: the wall
    clock of the key service and the controller (expiry, deletion windows, status);
    ``monotonic``: the clock of the KMS v2 sessions' write window and the plugins' health cache.
    """

    data_dir: Path
    listen: ListenAddress = DEFAULT_LISTEN
    etcd_endpoints: tuple[str, ...] = ()
    etcd_cacert: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    hsm: Hsm | None = field(default=None, repr=False)
    scheduler_interval: float = 60.0
    #: Seconds between history compactions; between one and two of these are kept (etcd's
    #: and kube-apiserver's default is 5 minutes).
    compaction_interval: float = 300.0
    config_poll_interval: float = 5.0
    grace: float = 5.0
    max_body: int = DEFAULT_MAX_BODY
    audit_sync: SyncMode = "interval"
    log_level: str = "warning"
    no_encryption: bool = False
    encryption_interval: float = DEFAULT_INTERVAL
    key_check_interval: float = DEFAULT_KEY_CHECK_INTERVAL
    backoff_cap: float = 30.0
    migration_batch: int = DEFAULT_BATCH
    migration_rate_limit: float | None = None
    clock: Callable[[], datetime] = field(default=utc_now, repr=False)
    monotonic: Callable[[], float] = field(default=time.monotonic, repr=False)


class Kinko:
    """All of kinko on one data folder (module docstring). A context manager.

    ``start()`` returns once every part serves and ``endpoints.json`` is written; ``stop()``
    stops them all. Both are meant for one thread (the parts run on their own threads).
    """

    def __init__(self, options: UpOptions) -> None:
        self.options = options
        self.data_dir = options.data_dir.absolute()
        self._stack: contextlib.ExitStack | None = None
        self._endpoints: Endpoints | None = None
        self._port = 0
        self._key_service: KeyService | None = None
        self._cluster_service: ExplainingClusterService | None = None
        self._encryption: EncryptionConfigSource | None = None
        self._controller: EncryptionController | None = None
        self._plugins: PluginTable | None = None
        self._store: Store | None = None
        self._metrics: ClusterMetrics | None = None
        self._boot: Bootstrapped | None = None
        self._hsm: Hsm | None = None
        self._http: _HttpThread | None = None
        self.store_description = ""

    # -- what a running kinko offers ------------------------------------------------------

    @property
    def endpoints(self) -> Endpoints:
        return _running(self._endpoints)

    @property
    def port(self) -> int:
        """The bound HTTPS port (the real one when asked for port 0)."""
        _running(self._endpoints)
        return self._port

    @property
    def url(self) -> str:
        """The base URL of both APIs."""
        return self.endpoints.cluster_api

    @property
    def serving(self) -> bool:
        """Whether the HTTPS server still runs (False once it stopped, for whatever reason)."""
        return self._http is not None and self._http.alive

    @property
    def key_service(self) -> KeyService:
        return _running(self._key_service)

    @property
    def cluster_service(self) -> ExplainingClusterService:
        return _running(self._cluster_service)

    @property
    def store(self) -> Store:
        """The one store of the key service and the cluster."""
        return _running(self._store)

    @property
    def controller(self) -> EncryptionController:
        """The encryption lifecycle: enable KMS, migrations, status, coverage."""
        return _running(self._controller)

    @property
    def plugins(self) -> PluginTable:
        """The root key plugins served in the data folder."""
        return _running(self._plugins)

    @property
    def encryption(self) -> EncryptionConfigSource:
        return _running(self._encryption)

    @property
    def metrics(self) -> ClusterMetrics:
        return _running(self._metrics)

    @property
    def hsm(self) -> Hsm:
        return _running(self._hsm)

    @property
    def admin_token(self) -> str:
        return _running(self._boot).admin_token

    @property
    def instance(self) -> str:
        return _running(self._boot).instance

    @property
    def root_key(self) -> str:
        return _running(self._boot).root_key

    @property
    def encryption_config(self) -> Path:
        return _running(self._boot).encryption_config

    # -- start and stop -------------------------------------------------------------------

    def start(self) -> Kinko:
        """Starts every part (module docstring) and writes ``endpoints.json``.

        Raises InvalidArgument (a bad folder, a socket path too long), UnavailableError
        (another kinko up runs on the folder; the port is taken; a part did not start),
        StoreUnavailable, HsmUnavailable, CorruptMetadata, ConfigError (the EncryptionConfiguration
        file). On any failure what had started is stopped again.
        """
        if self._stack is not None:
            raise InvalidArgument("kinko is already started")
        stack = contextlib.ExitStack()
        try:
            self._start(stack)
        except BaseException:
            stack.close()
            self._clear()
            raise
        self._stack = stack
        return self

    def _start(self, stack: contextlib.ExitStack) -> None:
        options, data_dir = self.options, self.data_dir
        make_data_dir(data_dir)
        _ignore_in_git(data_dir)
        stack.enter_context(_folder_lock(data_dir))
        (data_dir / ENDPOINTS_FILE).unlink(missing_ok=True)
        socket_path = data_dir / KMS_SOCKET_FILE
        if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
            raise InvalidArgument(
                f"the KMS plugin socket {socket_path} is longer than a unix socket path may be "
                f"({_MAX_SOCKET_PATH} bytes): choose a data folder with a shorter path"
            )
        listener = stack.enter_context(_bind(options.listen))
        self._port = int(listener.getsockname()[1])

        store_options = StoreOptions(
            data_dir,
            options.etcd_endpoints,
            options.etcd_cacert,
            options.etcd_cert,
            options.etcd_key,
        )
        store, self.store_description = stack.enter_context(open_store(store_options))
        hsm = options.hsm
        if hsm is None:
            from kinko.hsm.soft import SoftKeystore

            hsm = SoftKeystore(data_dir / KEYSTORE_DIR)
        self._hsm = hsm
        audit = stack.enter_context(FileAuditSink(data_dir / AUDIT_FILE, sync=options.audit_sync))
        service = KeyService(store, hsm, audit=audit, clock=options.clock, rng=os.urandom)
        boot = bootstrap(
            data_dir,
            store,
            service,
            socket_path=socket_path,
            now=options.clock(),
            no_encryption=options.no_encryption,
        )
        state = load_state(data_dir)

        host = options.listen.host
        names = () if host in DEFAULT_NAMES or host in _WILDCARDS else (host,)
        tls_files = ensure_server_tls(data_dir, names=names)

        # The plugins act as a principal of their own, made here: no token exists for it. It
        # is a service identity, so it can register the cluster on the keys it serves.
        plugin_principal = Principal(
            name=PLUGIN_NAME,
            instance=boot.instance,
            roles=frozenset({Role.READER}),
            service=True,
        )
        access = ServiceRootKeys(service, plugin_principal, boot.instance)

        def make_plugin(key_id: str) -> RootKeyPlugin:
            return RootKeyPlugin(access, key_id, clock=options.monotonic)

        def serve(api: KmsV2Api, endpoint: str) -> Callable[[], None]:
            server = KmsV2Server(api, endpoint)
            server.start()
            return lambda: server.stop(options.grace)

        plugins = PluginTable(
            data_dir,
            bootstrap_key=boot.root_key,
            make_plugin=make_plugin,
            serve=serve,
            persist=lambda entries: _save_plugins(data_dir, entries),
            endpoint_of=kms_endpoint,
        )
        stack.callback(plugins.close)
        plugins.start(state.plugins if state is not None else ())
        endpoint = kms_endpoint(socket_path)

        metrics = ClusterMetrics()
        encryption = EncryptionConfigSource(boot.encryption_config, clock=options.monotonic)
        stack.callback(encryption.close)
        # Before the first seal: the observer reaches every KMS v2 session the source makes.
        metrics.instrument(encryption, store=store)
        encryption.start_polling(options.config_poll_interval)
        controller = EncryptionController(
            store=store,
            source=encryption,
            plugins=plugins,
            keys=ServiceKeyDirectory(service, plugin_principal, boot.instance),
            batch=options.migration_batch,
            rate_limit=options.migration_rate_limit,
            count_keys=_key_counter(store),
            interval=options.encryption_interval,
            key_check_interval=options.key_check_interval,
            backoff_cap=options.backoff_cap,
            clock=options.clock,
            compact=_compactor(store),
        )
        metrics.registry.register(controller.collector())
        cluster_service = ExplainingClusterService(
            store, encryption, clock=options.clock, explain=controller.explain
        )
        tokens = ClusterTokenBook(store)

        from kinko.api.cluster import create_cluster_app
        from kinko.api.k8s_admin import create_admin_app

        app = ApiDispatcher(
            create_keyprotect_app(service, max_body=options.max_body),
            create_cluster_app(cluster_service, tokens, metrics=metrics),
            create_admin_app(controller, tokens, metrics=metrics),
        )
        controller.start()
        stack.callback(controller.stop)
        scheduler = Periodic(
            service.run_scheduled, interval=options.scheduler_interval, name="kinko-scheduler"
        )
        scheduler.start()
        stack.callback(scheduler.stop)
        compact = _compactor(store)
        if compact is not None:
            history = Periodic(
                HistoryCompactor(store, compact).tick,
                interval=options.compaction_interval,
                name="kinko-compaction",
            )
            history.start()
            stack.callback(history.stop)
        http = _HttpThread(
            app,
            listener,
            TlsConfig(tls_files.cert, tls_files.key),
            grace=options.grace,
            log_level=options.log_level,
        )
        http.start()
        stack.callback(http.stop)

        url_host = _WILDCARDS.get(host, host)
        url = f"https://{f'[{url_host}]' if ':' in url_host else url_host}:{self._port}"
        kubeconfig = write_kubeconfig(
            data_dir,
            kubeconfig_yaml(
                server=url, ca_pem=tls_files.ca_cert.read_bytes(), token=boot.admin_token
            ),
        )
        endpoints = Endpoints(
            cluster_api=url,
            key_service=url,
            instance=boot.instance,
            kms_plugin_socket=endpoint,
            ca_file=tls_files.ca_cert,
            admin_token_file=data_dir / ADMIN_TOKEN_FILE,
            kubeconfig=kubeconfig,
            root_key=boot.root_key,
        )
        # Last in, first out: endpoints.json goes before anything stops.
        write_endpoints(data_dir, endpoints)
        stack.callback((data_dir / ENDPOINTS_FILE).unlink, missing_ok=True)

        self._boot = boot
        self._key_service = service
        self._cluster_service = cluster_service
        self._encryption = encryption
        self._controller = controller
        self._plugins = plugins
        self._store = store
        self._metrics = metrics
        self._endpoints = endpoints
        self._http = http

    def stop(self) -> None:
        """Stops every part in reverse order and removes ``endpoints.json`` and the plugin
        socket. Idempotent. Raises nothing a part raises while stopping (it is logged)."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        try:
            stack.close()
        except Exception:
            log.exception("kinko: a part failed to stop cleanly")
        finally:
            self._clear()

    def _clear(self) -> None:
        self._endpoints = None
        self._key_service = None
        self._cluster_service = None
        self._encryption = None
        self._controller = None
        self._plugins = None
        self._store = None
        self._metrics = None
        self._boot = None
        self._hsm = None
        self._http = None

    def __enter__(self) -> Kinko:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_T = TypeVar("_T")


def _save_plugins(data_dir: Path, entries: tuple[PluginEntry, ...]) -> None:
    """Keeps the plugin table in ``up.json``. Raises InvalidArgument, CorruptMetadata."""
    state = load_state(data_dir)
    if state is None:
        raise CorruptMetadata(f"{data_dir / STATE_FILE}: missing while kinko up runs")
    save_state(data_dir, replace(state, plugins=entries))


def _key_counter(store: Store) -> Callable[[bytes], int] | None:
    """Counts the keys under a prefix without reading values (the migration's progress
    total), where the store can: etcd and SQLite; None otherwise."""
    if isinstance(store, EtcdStore):
        return store.client.count_prefix
    if isinstance(store, SqliteStore):
        return store.count_prefix
    return None


class HistoryCompactor:
    """Keeps the store's history short, as kube-apiserver has etcd compact every 5 minutes.

    Each :meth:`tick` compacts at the revision the previous tick saw, so history between one
    and two intervals old survives: enough for a LIST paged with continue tokens and for a
    watch to resume, while superseded and deleted values (plaintext from before encryption
    was enabled, ciphertext under retired keys) leave the store soon. A continue token older
    than that is answered 410 Expired, as Kubernetes does.
    """

    def __init__(self, store: Store, compact: Callable[[int], None]) -> None:
        self._store = store
        self._compact = compact
        self._previous: int | None = None

    def tick(self) -> None:
        """Compacts at the revision of the previous tick and remembers the current one.
        Raises StoreUnavailable (the Periodic runner logs it and tries again next time)."""
        current = self._store.range(b"/", limit=1).revision
        if self._previous is not None and self._previous > 0:
            # A migration may have compacted further meanwhile (etcd then refuses).
            with contextlib.suppress(Conflict):
                self._compact(self._previous)
        self._previous = current


def _compactor(store: Store) -> Callable[[int], None] | None:
    """The store's ``compact(revision)`` (SQLite, etcd, memory), or None if it has none."""
    compact = getattr(store, "compact", None)
    if not callable(compact):
        return None

    def run(revision: int) -> None:
        compact(revision)

    return run


def _running(value: _T | None) -> _T:
    if value is None:
        raise InvalidArgument("kinko is not running: call start() first")
    return value


def make_data_dir(data_dir: Path) -> None:
    """Creates the data folder (mode 0700) if missing. Raises InvalidArgument."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidArgument(f"data folder {data_dir}: exists and is not a folder") from None
    except OSError as exc:
        raise InvalidArgument(f"data folder {data_dir}: cannot create: {exc.strerror}") from None


def _ignore_in_git(data_dir: Path) -> None:
    """Writes ``DIR/.gitignore`` (``*``) if missing: the default folder ``./.kinko`` sits in
    whatever folder kinko up started in, often a repository, and it holds the admin token."""
    path = data_dir / ".gitignore"
    if not path.exists():
        write_private_file(path, b"# kinko's data folder: tokens and keys, never commit it\n*\n")


@contextlib.contextmanager
def _folder_lock(data_dir: Path) -> Iterator[None]:
    """Holds ``DATA_DIR/up.lock`` exclusively: two kinko up on one folder would race on the
    first start and on the plugin socket. Raises UnavailableError (held by another)."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UnavailableError(
                f"another kinko up is running on {data_dir} (it holds {LOCK_FILE})"
            ) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _bind(listen: ListenAddress) -> Iterator[socket.socket]:
    """A listening TCP socket on ``listen``, bound before anything else starts so that a
    taken port fails at once. Raises UnavailableError."""
    try:
        infos = socket.getaddrinfo(
            listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise UnavailableError(f"cannot listen on {listen.host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise UnavailableError(
            f"cannot listen on {listen.url_host}:{listen.port}: {exc.strerror}"
        ) from None
    try:
        yield sock
    finally:
        sock.close()


class _NotifyingServer(uvicorn.Server):
    """uvicorn's server that says when it listens."""

    def __init__(self, config: uvicorn.Config, listening: threading.Event) -> None:
        super().__init__(config)
        self._listening = listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._listening.set()


class _HttpThread:
    """``app`` over HTTPS on an already bound socket, served by uvicorn on a thread.

    The configuration (the TLS files above all) is loaded on the caller's thread, so its
    errors surface from the constructor. uvicorn installs no signal handlers off the main
    thread: the owner stops it with :meth:`stop`.
    """

    def __init__(
        self, app: ASGIApp, sock: socket.socket, tls: TlsConfig, *, grace: float, log_level: str
    ) -> None:
        config = uvicorn.Config(
            app,
            ssl_certfile=str(tls.cert),
            ssl_keyfile=str(tls.key),
            log_level=log_level,
            access_log=log_level in ("debug", "info"),
            proxy_headers=False,
            server_header=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(grace)),
        )
        config.load()
        self._listening = threading.Event()
        self._server = _NotifyingServer(config, self._listening)
        self._sock = sock
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kinko-https", daemon=True)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # reported by start(); a thread has nobody else to tell
            self._failure = exc

    def start(self, timeout: float = 30.0) -> None:
        """Starts serving; returns once it does. Raises UnavailableError."""
        self._thread.start()
        waited = 0.0
        while not self._listening.wait(0.05):
            waited += 0.05
            if not self._thread.is_alive() or waited >= timeout:
                self._server.should_exit = True
                reason = type(self._failure).__name__ if self._failure else "no answer"
                raise UnavailableError(f"the HTTPS server did not start ({reason})")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stops accepting, lets requests finish within the grace period, joins the thread."""
        self._server.should_exit = True
        self._thread.join()
