"""The encryption lifecycle of a running cluster: enable KMS, follow rotations, migrate, retire.

Job: :class:`EncryptionController` runs inside ``kinko up`` and keeps the stored Secrets and
ConfigMaps encrypted the way the EncryptionConfiguration says, without an operator having to
run anything:

- **A supervisor thread** compares, every ``interval`` seconds (and at once when kicked), the
  :class:`~kinko.cluster.migrate.Migrator`'s current target of each resource (config hash plus
  the KMS v2 key_id the first provider writes with) with the resource's checkpoint record,
  and runs the migration when they differ or the record is not ``done``. A rotated root key
  (the plugin's key_id changes; the KMS v2 session notices through its Status poller, or at
  once when the controller learns of it from the key service) and a reloaded configuration
  therefore end in migrated data with no operator action; a target that moves during a run
  restarts it (the Migrator's rule), so two rotations in a row end under the newest version.
  An unavailable plugin, store or key service pauses the run with the reason in the record;
  it is retried with backoff (``backoff_initial`` doubling up to ``backoff_cap``).
- **Enable** (:meth:`EncryptionController.enable_kms`): resolve the root key, refuse clearly
  and change nothing when it cannot be used, serve a :class:`~kinko.kms.rootkey.RootKeyPlugin`
  on it (:class:`PluginTable`), register the cluster on the key (a plain delete of the key is
  then refused), write the EncryptionConfiguration atomically with the new KMS v2 provider
  first and every earlier provider kept after it for reads, reload it, and kick the
  supervisor. Writes continue during the migration.
- **Retire**: once a migration completed and a later prefix scan finds no stored object that
  names an earlier kinko KMS provider, that provider is dropped from the configuration, its
  plugin stopped (the first start's keeps serving ``kms.sock``, which ``endpoints.json``
  names) and the cluster's registration on its key deleted. The checkpoint records
  are carried over to the new configuration's target (dropping a provider no value uses makes
  no value stale), so the retirement costs no second pass.
- **Verify**: ``interval`` seconds after a pass completed, a prefix scan (headers only, no
  decryption) looks for values still stale: a writer that sealed with the old configuration
  just before a reload can commit behind the migration's cursor. If it finds more than the
  pass left unreadable, the pass runs again (at most :data:`MAX_VERIFY_RERUNS` times per
  target).
- **Compact**: after a pass that rewrote objects, the store's history below the revision of
  the last checkpoint is compacted, so old ciphertexts under retired keys and versions do not
  linger in store history. What compaction does not reach: etcd keeps compacted revisions in
  its backend file until ``etcdctl defrag``; SQLite (``secure_delete`` on) overwrites the
  deleted rows, but page images can stay in ``kinko.db-wal`` until a checkpoint overwrites
  them; backups and snapshots keep whatever they copied; a running kinko keeps unwrapped seeds in
  its KMS v2 sessions' caches until it restarts. Those copies are the old values as they
  were stored: sealed under the old key (unreadable once it is purged) or, for a cluster that
  ran without encryption before, plaintext.
- **Status** (:meth:`EncryptionController.status`): the seed's master status text, the phase,
  the per-resource migration state, the root key and its expiry warnings; the metrics
  ``kinko_root_key_expiry_seconds`` and ``kinko_migration_*`` (:meth:`collector`).
- **Fail closed with a reason**: :meth:`EncryptionController.explain` adds to a write's
  PluginError what the root key's state means (expired: rotate to a new root key).

Invariants:

- A refused enable changes nothing: every check (key known, a root key, Active, the key
  service reachable, its plugin healthy, nothing else enabling) runs before the first write;
  a failure after the first write (registration, config) undoes what was done.
- The configuration file is only ever replaced whole (temporary file, fsync, rename, mode
  0600); config rewrites, plugin starts and stops and registrations are serialised by one lock.
- The controller never marks an object migrated: only the Migrator writes checkpoint records,
  except the carry-over on retirement, which is guarded on the record's revision.
- Messages name keys by id or alias, resources, providers, counts and states; never key
  material, plaintext or ciphertext.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, Protocol

import yaml
from prometheus_client.core import GaugeMetricFamily, Metric

from kinko.cluster.coverage import CoverageReport, coverage_report, prefix_scan
from kinko.cluster.encryption import EncryptionConfigSource
from kinko.cluster.migrate import (
    CHECKPOINT_PREFIX,
    DEFAULT_BATCH,
    DEFAULT_PAGE,
    DEFAULT_RESOURCES,
    MigrationReport,
    MigrationState,
    Migrator,
)
from kinko.cluster.service import ClusterService, Obj
from kinko.crypto.chain import ProviderChain
from kinko.crypto.config import EncryptionConfig, parse_encryption_config
from kinko.crypto.formats import KMS_V2_PREFIX, KmsV2
from kinko.errors import (
    ConfigError,
    Conflict,
    DecryptionError,
    Gone,
    InvalidArgument,
    KeyServiceUnavailable,
    KinkoError,
    NotAllowed,
    NotFound,
    PluginError,
    UnavailableError,
    WrongState,
)
from kinko.keys.auth import Principal
from kinko.keys.model import KeyState
from kinko.keys.service import KeyService
from kinko.kms.envelope import KmsV2Session
from kinko.kms.port import EncryptResult, KmsV2Api, StatusResult
from kinko.kms.rootkey import RootKeyPlugin, key_id_for
from kinko.store.port import Put, Store

__all__ = [
    "BOOTSTRAP_PROVIDER",
    "BOOTSTRAP_SOCKET",
    "IN_PROGRESS",
    "ClusterStatus",
    "EnableResult",
    "EncryptionController",
    "ExplainingClusterService",
    "KeyDirectory",
    "MigrationStatus",
    "PluginEntry",
    "PluginTable",
    "RootKeyFacts",
    "RootKeyStatus",
    "ServedPlugin",
    "ServiceKeyDirectory",
    "ShreddingPlugin",
    "cluster_crn",
    "identity_config_text",
    "kms_provider",
    "plugin_names",
    "short_age",
    "with_kms_first",
    "without_provider",
    "write_config",
]

log = logging.getLogger(__name__)

#: The seed's words while a migration that follows an enable or a new target runs.
IN_PROGRESS: Final = "Key Protect feature enablement in progress."
#: The provider name and socket of the first start's root key.
BOOTSTRAP_PROVIDER: Final = "kinko"
BOOTSTRAP_SOCKET: Final = "kms.sock"
KMS_TIMEOUT: Final = "3s"
DEFAULT_INTERVAL: Final = 5.0
#: How often the root key's metadata is read from the key service without being asked
#: (each read is audited; the KMS v2 Status poller notices rotations on its own anyway).
DEFAULT_KEY_CHECK_INTERVAL: Final = 60.0
BACKOFF_INITIAL: Final = 1.0
BACKOFF_CAP: Final = 30.0
EXPIRY_WARNING: Final = timedelta(days=30)
MAX_VERIFY_RERUNS: Final = 3
#: sun_path holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH: Final = 107
_REASON_MAX: Final = 500

Phase = Literal["Ready", "Enabling", "Migrating", "Paused"]
MigrationStateName = Literal["running", "paused", "done", "pending"]


# --------------------------------------------------------------------------- small helpers


def plugin_names(key_id: str, *, bootstrap_key: str, length: int = 8) -> tuple[str, str]:
    """(KMS provider name, socket file name) of kinko's plugin on root key ``key_id``: the
    first start's key keeps ``kinko`` / ``kms.sock``; another key gets ``kinko-<first 8 of its
    id>`` / ``kms-<first 8>.sock``. Raises nothing."""
    if key_id == bootstrap_key:
        return BOOTSTRAP_PROVIDER, BOOTSTRAP_SOCKET
    short = key_id[:length]
    return f"{BOOTSTRAP_PROVIDER}-{short}", f"kms-{short}.sock"


def cluster_crn(instance: str) -> str:
    """The CRN under which the cluster registers on its root keys."""
    return f"crn:v1:kinko:local:kinko-cluster:a/kinko:{instance}:cluster:kinko"


def short_age(seconds: float) -> str:
    """kubectl's short human duration: ``45s``, ``12m``, ``3h``, ``5d``, ``2y``."""
    if seconds < -1:
        return "<invalid>"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    if s < 86400 * 365:
        return f"{s // 86400}d"
    return f"{s // (86400 * 365)}y"


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _from_seconds(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, KinkoError) else type(exc).__name__
    return text[:_REASON_MAX]


# --------------------------------------------------------------------------- the config file

_HEADER: Final = (
    "# kinko's EncryptionConfiguration. The first provider writes; every provider reads.\n"
    "# `kinko cluster kms enable` rewrites this file (the new KMS provider first, the earlier\n"
    "# ones kept for reads); edits are picked up while kinko up runs.\n"
)


def identity_config_text() -> str:
    """The configuration of a cluster before KMS enablement (``kinko up --no-encryption``):
    Secrets and ConfigMaps stored as plaintext (identity)."""
    doc = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [
            {"resources": ["secrets", "configmaps"], "providers": [{"identity": {}}]},
        ],
    }
    head = (
        "# Written by kinko up --no-encryption: Secrets and ConfigMaps are stored as\n"
        "# plaintext until `kinko cluster kms enable --key kinko-cluster`.\n"
    )
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def kms_provider(name: str, endpoint: str, *, timeout: str = KMS_TIMEOUT) -> dict[str, object]:
    """A KMS v2 provider entry of an EncryptionConfiguration."""
    return {"kms": {"apiVersion": "v2", "name": name, "endpoint": endpoint, "timeout": timeout}}


def _load(text: bytes | str) -> tuple[EncryptionConfig, dict[str, object], list[object]]:
    config = parse_encryption_config(text)
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("resources"), list):
        raise ConfigError("resources", "expected a mapping with a list of resources")
    return config, doc, doc["resources"]


def _providers_of(entry: object, index: int) -> list[object]:
    if not isinstance(entry, dict) or not isinstance(entry.get("providers"), list):
        raise ConfigError(f"resources[{index}]", "expected a mapping with a list of providers")
    providers: list[object] = entry["providers"]
    return providers


def _kms_name(provider: object) -> str | None:
    if isinstance(provider, dict):
        kms = provider.get("kms")
        if isinstance(kms, dict) and isinstance(kms.get("name"), str):
            return str(kms["name"])
    return None


def _dump(doc: Mapping[str, object]) -> str:
    return _HEADER + yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=False)


def with_kms_first(
    text: bytes | str, provider: Mapping[str, object], resources: Sequence[str]
) -> str | None:
    """``text`` with the KMS provider ``provider`` first for every rule that governs one of
    ``resources`` (any other entry of the same name removed from those rules, every other
    provider kept after it); a resource no rule governs gets a new first rule
    ``[provider, identity]``. None when the provider is first already everywhere.

    Raises ConfigError: ``text`` or the result is not a valid EncryptionConfiguration.
    """
    name = _kms_name(provider)
    if name is None:
        raise ConfigError("providers", "expected a KMS provider with a name")
    config, doc, entries = _load(text)
    targets: set[int] = set()
    uncovered: list[str] = []
    for resource in resources:
        rule = config.rule_for(resource)
        if rule is None:
            uncovered.append(resource)
            continue
        for index, entry in enumerate(config.resources):
            if rule in entry.group_resources:
                targets.add(index)
    changed = False
    for index in sorted(targets):
        providers = _providers_of(entries[index], index)
        if providers and providers[0] == provider:
            continue
        kept = [p for p in providers if _kms_name(p) != name]
        entries[index] = {**_as_dict(entries[index]), "providers": [dict(provider), *kept]}
        changed = True
    if uncovered:
        entries.insert(0, {"resources": uncovered, "providers": [dict(provider), {"identity": {}}]})
        changed = True
    if not changed:
        return None
    out = _dump(doc)
    parse_encryption_config(out)
    return out


def without_provider(text: bytes | str, name: str) -> str | None:
    """``text`` without the KMS provider ``name`` in any rule; None when it has none.

    Raises ConfigError: a rule would be left without providers, or the result is invalid.
    """
    _, doc, entries = _load(text)
    changed = False
    for index, entry in enumerate(entries):
        providers = _providers_of(entry, index)
        kept = [p for p in providers if _kms_name(p) != name]
        if len(kept) == len(providers):
            continue
        if not kept:
            raise ConfigError(
                f"resources[{index}].providers",
                f"removing KMS provider {name} would leave the rule without providers",
            )
        entries[index] = {**_as_dict(entry), "providers": kept}
        changed = True
    if not changed:
        return None
    out = _dump(doc)
    parse_encryption_config(out)
    return out


def _as_dict(entry: object) -> dict[str, object]:
    if not isinstance(entry, dict):
        raise ConfigError("resources", "expected each rule to be a mapping")
    return {str(k): v for k, v in entry.items()}


def write_config(path: Path, text: str) -> None:
    """Replaces ``path`` with ``text`` atomically: a temporary file in the same folder
    (mode 0600), fsync, rename, fsync of the folder. Raises InvalidArgument (cannot write)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    data = text.encode("utf-8")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise InvalidArgument(f"cannot write {path}: {exc.strerror}") from None


# --------------------------------------------------------------------------- kinko's plugins


class ShreddingPlugin:
    """kinko up's face of a :class:`RootKeyPlugin`: a Decrypt refused because the root key was
    deleted (Destroyed) or purged answers as undecryptable (DecryptionError, gRPC
    INVALID_ARGUMENT), so the cluster reports those objects as unreadable (500
    StorageReadError, listed by LIST, counted by the coverage report) instead of waiting for
    a plugin that will not come back. A restored key makes them readable again. Status,
    Encrypt and every other refusal (a suspended key: an operator can enable it) pass
    unchanged."""

    __slots__ = ("_plugin",)

    def __init__(self, plugin: RootKeyPlugin) -> None:
        self._plugin = plugin

    @property
    def plugin(self) -> RootKeyPlugin:
        return self._plugin

    def status(self) -> StatusResult:
        return self._plugin.status()

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        return self._plugin.encrypt(plaintext, uid=uid)

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        try:
            return self._plugin.decrypt(ciphertext, uid=uid, key_id=key_id, annotations=annotations)
        except (Gone, NotFound) as exc:
            log.warning("KMS Decrypt refused, the value is unreadable: %s", exc)
            raise DecryptionError() from exc


@dataclass(frozen=True, slots=True)
class PluginEntry:
    """One row of the plugin table kept in ``up.json``: provider, root key id, socket file."""

    provider: str
    key: str
    socket: str

    def to_json(self) -> dict[str, str]:
        return {"provider": self.provider, "key": self.key, "socket": self.socket}


@dataclass(frozen=True, slots=True)
class ServedPlugin:
    """A root key plugin kinko serves: its provider name, key, socket and endpoint."""

    provider: str
    key_id: str
    socket: Path
    endpoint: str
    api: ShreddingPlugin = field(repr=False)
    bootstrap: bool

    @property
    def plugin(self) -> RootKeyPlugin:
        return self.api.plugin

    @property
    def entry(self) -> PluginEntry:
        return PluginEntry(self.provider, self.key_id, self.socket.name)


#: Starts serving a plugin API on an endpoint; returns what stops it.
Serve = Callable[[KmsV2Api, str], Callable[[], None]]


class PluginTable:
    """The root key plugins kinko serves in its data folder, one socket each. Thread-safe.

    ``make_plugin`` builds the plugin of a root key id; ``serve`` starts it on an endpoint
    (kinko up: a :class:`~kinko.kms.server.KmsV2Server`); ``persist`` is handed the table of
    non-bootstrap plugins after every change (kinko up: ``up.json``); ``endpoint_of`` turns a
    socket path into its ``unix://`` endpoint. The first start's key is always served.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        bootstrap_key: str,
        make_plugin: Callable[[str], RootKeyPlugin],
        serve: Serve,
        persist: Callable[[tuple[PluginEntry, ...]], None],
        endpoint_of: Callable[[Path], str],
    ) -> None:
        self._dir = data_dir
        self._bootstrap = bootstrap_key
        self._make = make_plugin
        self._serve = serve
        self._persist = persist
        self._endpoint_of = endpoint_of
        self._lock = threading.RLock()
        self._served: dict[str, ServedPlugin] = {}
        self._stops: dict[str, Callable[[], None]] = {}

    def start(self, entries: Iterable[PluginEntry] = ()) -> None:
        """Serves the first start's key and every entry of ``entries`` (``up.json``).

        Raises InvalidArgument (a socket path), UnavailableError (a socket cannot be bound).
        """
        with self._lock:
            self._start_one(self._bootstrap, BOOTSTRAP_PROVIDER, BOOTSTRAP_SOCKET)
            for entry in entries:
                if entry.key == self._bootstrap or entry.provider in self._served:
                    continue
                self._start_one(entry.key, entry.provider, entry.socket)

    def served(self) -> Mapping[str, ServedPlugin]:
        """provider → plugin, a snapshot."""
        with self._lock:
            return MappingProxyType(dict(self._served))

    def by_key(self, key_id: str) -> ServedPlugin | None:
        with self._lock:
            return next((p for p in self._served.values() if p.key_id == key_id), None)

    def api_for(self, endpoint: str) -> KmsV2Api | None:
        """The plugin API served on ``endpoint`` (for an in-process connection)."""
        with self._lock:
            return next((p.api for p in self._served.values() if p.endpoint == endpoint), None)

    def candidate(self, key_id: str) -> RootKeyPlugin:
        """The plugin serving ``key_id``, else a new one that is not served (to probe a key
        before anything is started or written). Raises what ``make_plugin`` raises."""
        known = self.by_key(key_id)
        return known.plugin if known is not None else self._make(key_id)

    def check_room(self, key_id: str) -> None:
        """Raises InvalidArgument when the socket :meth:`ensure` would make for ``key_id``
        cannot be a unix socket path (too long)."""
        with self._lock:
            if self.by_key(key_id) is None:
                self._socket_path(self._free_names(key_id)[1])

    def ensure(
        self, key_id: str, *, plugin: RootKeyPlugin | None = None
    ) -> tuple[ServedPlugin, bool]:
        """The plugin of ``key_id``, started if it is not served yet (True: just started);
        ``plugin``: the core to serve then (default: a new one).

        Raises InvalidArgument (the socket path is too long), UnavailableError (cannot bind),
        and what ``persist`` raises (the plugin is stopped again then).
        """
        with self._lock:
            known = self.by_key(key_id)
            if known is not None:
                return known, False
            provider, socket_name = self._free_names(key_id)
            served = self._start_one(key_id, provider, socket_name, plugin)
            try:
                self._persist(self._entries())
            except BaseException:
                self._stop_one(provider)
                raise
            return served, True

    def retire(self, provider: str) -> None:
        """Stops serving ``provider`` and forgets it; the first start's plugin is kept
        serving (``endpoints.json`` names its socket). Raises what ``persist`` raises."""
        with self._lock:
            served = self._served.get(provider)
            if served is None or served.bootstrap:
                return
            self._stop_one(provider)
            self._persist(self._entries())

    def close(self) -> None:
        """Stops every plugin, the last started first. Raises nothing."""
        with self._lock:
            for provider in reversed(list(self._served)):
                try:
                    self._stop_one(provider)
                except Exception:
                    log.exception("KMS plugin %s did not stop cleanly", provider)

    def _free_names(self, key_id: str) -> tuple[str, str]:
        for length in (8, 12, 16, 36):
            provider, socket_name = plugin_names(
                key_id, bootstrap_key=self._bootstrap, length=length
            )
            if provider not in self._served:
                return provider, socket_name
        raise Conflict(f"no free KMS provider name for root key {key_id}")  # pragma: no cover

    def _socket_path(self, socket_name: str) -> Path:
        path = self._dir / socket_name
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise InvalidArgument(
                f"the KMS plugin socket {path} is longer than a unix socket path may be "
                f"({MAX_SOCKET_PATH} bytes): choose a data folder with a shorter path"
            )
        return path

    def _start_one(
        self, key_id: str, provider: str, socket_name: str, plugin: RootKeyPlugin | None = None
    ) -> ServedPlugin:
        path = self._socket_path(socket_name)
        endpoint = self._endpoint_of(path)
        api = ShreddingPlugin(plugin if plugin is not None else self._make(key_id))
        stop = self._serve(api, endpoint)
        served = ServedPlugin(
            provider=provider,
            key_id=key_id,
            socket=path,
            endpoint=endpoint,
            api=api,
            bootstrap=key_id == self._bootstrap,
        )
        self._served[provider] = served
        self._stops[provider] = stop
        log.info("KMS plugin %s serves root key %s on %s", provider, key_id, endpoint)
        return served

    def _stop_one(self, provider: str) -> None:
        self._served.pop(provider, None)
        stop = self._stops.pop(provider, None)
        if stop is not None:
            stop()

    def _entries(self) -> tuple[PluginEntry, ...]:
        return tuple(p.entry for p in self._served.values() if not p.bootstrap)


# --------------------------------------------------------------------------- the key service


@dataclass(frozen=True, slots=True)
class RootKeyFacts:
    """What the controller needs to know of a root key, as the key service shows it now
    (``state`` already reflects expiry)."""

    id: str
    name: str
    aliases: tuple[str, ...]
    state: KeyState
    extractable: bool
    version_id: str
    version_count: int
    expiration: datetime | None

    @property
    def label(self) -> str:
        """How messages name the key: its first alias, else its id."""
        return self.aliases[0] if self.aliases else self.id

    @property
    def key_id(self) -> str:
        """The KMS v2 key_id kinko's plugin reports for the latest version."""
        return key_id_for(self.id, self.version_id)


class KeyDirectory(Protocol):
    """What the controller needs of the key service."""

    def describe(self, key_ref: str) -> RootKeyFacts:
        """The key ``key_ref`` (id or alias). Raises NotFound, UnavailableError."""
        ...

    def register(self, key_id: str) -> bool:
        """Registers the cluster on ``key_id`` unless it is already; True when it made the
        registration. Raises Unprocessable (not Active), NotFound, UnavailableError."""
        ...

    def unregister(self, key_id: str) -> bool:
        """Deletes the cluster's registration on ``key_id`` if there is one; True when it did.
        Raises NotFound, UnavailableError."""
        ...


class ServiceKeyDirectory:
    """:class:`KeyDirectory` over the in-process key service, acting as ``principal`` (a
    service identity with the Reader role: kinko up's plugin principal)."""

    def __init__(
        self, service: KeyService, principal: Principal, instance: str, *, crn: str | None = None
    ) -> None:
        self._service = service
        self._principal = principal
        self._instance = instance
        self._crn = crn or cluster_crn(instance)

    @property
    def crn(self) -> str:
        return self._crn

    def describe(self, key_ref: str) -> RootKeyFacts:
        view = self._service.get_key_metadata(self._principal, self._instance, key_ref)
        return RootKeyFacts(
            id=view.id,
            name=view.name,
            aliases=view.aliases,
            state=view.state,
            extractable=view.extractable,
            version_id=view.key_version.id,
            version_count=view.version_count,
            expiration=view.expiration_date,
        )

    def _registered(self, key_id: str) -> bool:
        found = self._service.list_registrations(
            self._principal, self._instance, key_id, crn_query=self._crn
        )
        return found.total > 0

    def register(self, key_id: str) -> bool:
        if self._registered(key_id):
            return False
        try:
            self._service.create_registration(
                self._principal,
                self._instance,
                key_id,
                self._crn,
                description="kinko up's cluster: Secrets and ConfigMaps encrypted at rest",
                prevent_key_deletion=False,
            )
        except Conflict:
            if self._registered(key_id):
                return False
            raise
        return True

    def unregister(self, key_id: str) -> bool:
        if not self._registered(key_id):
            return False
        self._service.delete_registration(self._principal, self._instance, key_id, self._crn)
        return True


# --------------------------------------------------------------------------- status values


@dataclass(frozen=True, slots=True)
class RootKeyStatus:
    """The root key the cluster writes with, through ``provider``, and its expiry."""

    provider: str
    facts: RootKeyFacts
    key_id: str | None
    seconds_to_expiry: float | None

    def to_json(self) -> dict[str, object]:
        f = self.facts
        return {
            "id": f.id,
            "alias": f.aliases[0] if f.aliases else None,
            "aliases": list(f.aliases),
            "name": f.name,
            "provider": self.provider,
            "keyId": self.key_id,
            "version": f.version_count,
            "versionId": f.version_id,
            "state": f.state.label,
            "stateCode": int(f.state),
            "expirationDate": rfc3339(f.expiration),
            "secondsToExpiry": None
            if self.seconds_to_expiry is None
            else int(self.seconds_to_expiry),
        }


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """One resource's migration as the status shows it.

    ``state``: the record's (running, paused, done), or ``pending`` when no pass under the
    current target has started yet; ``current``: the record's target is the current one.
    """

    resource: str
    state: MigrationStateName
    done: int
    total: int | None
    rewritten: int
    skipped: int
    unreadable: int
    conflicts: int
    restarts: int
    reason: str | None
    target: str | None
    current_target: str | None
    updated: datetime | None
    rate: float | None

    @property
    def current(self) -> bool:
        return self.target is not None and self.target == self.current_target

    @property
    def progress(self) -> str:
        return f"{self.done}/{self.total if self.total is not None else '?'}"

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "rewritten": self.rewritten,
            "skipped": self.skipped,
            "unreadable": self.unreadable,
            "conflicts": self.conflicts,
            "restarts": self.restarts,
            "reason": self.reason,
            "target": self.target,
            "currentTarget": self.current_target,
            "current": self.current,
            "updated": rfc3339(self.updated),
            "rate": None if self.rate is None else round(self.rate, 1),
        }


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The cluster's encryption status (the API's ``GET /apis/kinko.io/v1/status``)."""

    master_status: str
    phase: Phase
    ready_since: datetime | None
    root_key: RootKeyStatus | None
    warnings: tuple[str, ...]
    migrations: Mapping[str, MigrationStatus]
    config_hash: str
    enabling: str | None = None
    compacted_revision: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "masterStatus": self.master_status,
            "phase": self.phase,
            "readySince": rfc3339(self.ready_since),
            "rootKey": None if self.root_key is None else self.root_key.to_json(),
            "warnings": list(self.warnings),
            "migrations": {name: m.to_json() for name, m in self.migrations.items()},
            "configHash": self.config_hash,
            "enabling": self.enabling,
            "compactedRevision": self.compacted_revision,
        }


@dataclass(frozen=True, slots=True)
class EnableResult:
    """What :meth:`EncryptionController.enable_kms` set up."""

    provider: str
    key: str
    socket: Path
    changed: bool
    status: ClusterStatus

    def to_json(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "key": self.key,
            "socket": str(self.socket),
            "changed": self.changed,
            "status": self.status.to_json(),
        }


# --------------------------------------------------------------------------- the controller


class _Stopping(Exception):
    """The controller is stopping: ends a migration run between batches (not a KinkoError,
    so the Migrator does not record it as a pause; the next start resumes the run)."""


@dataclass(slots=True)
class _Progress:
    started: float
    done_at_start: int
    done: int = 0
    at: float = 0.0


@dataclass(slots=True)
class _Verify:
    target: str
    due: float
    reruns: int


@dataclass(frozen=True, slots=True)
class _Enabling:
    key: RootKeyFacts
    provider: str

    def describe(self) -> str:
        return f"root key {self.key.label} ({self.key.id}) as provider {self.provider}"


class _Outcome:
    IDLE: Final = "idle"
    RAN: Final = "ran"
    FAILED: Final = "failed"


class EncryptionController:
    """Keeps the cluster's stored objects encrypted as configured (module docstring).

    ``store``, ``source``: the cluster's store and live EncryptionConfiguration. ``plugins``:
    kinko's root key plugins. ``keys``: the key service. ``resources``: what is migrated.
    ``batch``, ``page``, ``rate_limit``, ``count_keys``: the Migrator's. ``interval``: seconds
    between supervisor passes. ``key_check_interval``: seconds between unasked reads of the
    root key's metadata. ``backoff_initial`` / ``backoff_cap``: retry delays after a failure.
    ``clock``: aware UTC wall clock (status, records, expiry). ``monotonic``: pacing. ``compact``:
    compacts the store's history below a revision (None: no compaction).

    Thread-safe. Raises InvalidArgument at construction (as the Migrator; a bad interval).
    """

    def __init__(
        self,
        *,
        store: Store,
        source: EncryptionConfigSource,
        plugins: PluginTable,
        keys: KeyDirectory,
        resources: Sequence[str] = DEFAULT_RESOURCES,
        batch: int = DEFAULT_BATCH,
        page: int = DEFAULT_PAGE,
        rate_limit: float | None = None,
        count_keys: Callable[[bytes], int] | None = None,
        interval: float = DEFAULT_INTERVAL,
        key_check_interval: float = DEFAULT_KEY_CHECK_INTERVAL,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_cap: float = BACKOFF_CAP,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        compact: Callable[[int], None] | None = None,
    ) -> None:
        if interval <= 0 or key_check_interval <= 0 or backoff_initial <= 0 or backoff_cap <= 0:
            raise InvalidArgument("controller intervals: expected positive numbers of seconds")
        self._store = store
        self._source = source
        self._plugins = plugins
        self._keys = keys
        self._resources = tuple(resources)
        self._interval = interval
        self._key_check_interval = key_check_interval
        self._backoff_initial = backoff_initial
        self._backoff_cap = backoff_cap
        self._clock = clock
        self._monotonic = monotonic
        self._compact = compact
        self._migrator = Migrator(
            store,
            source,
            resources=self._resources,
            batch=batch,
            page=page,
            rate_limit=rate_limit,
            count_keys=count_keys,
            wall_clock=lambda: self._clock().timestamp(),
            sleep=self._sleep,
        )
        # Guards the in-memory state below.
        self._lock = threading.Lock()
        # Serialises config rewrites, plugin starts and stops, and registrations.
        self._config_lock = threading.RLock()
        # Serialises enables (the second waits, then sees the first's migration).
        self._enable_lock = threading.Lock()
        self._enabling: _Enabling | None = None
        self._blocked: dict[str, str] = {}
        self._progress: dict[str, _Progress] = {}
        self._verify: dict[str, _Verify] = {}
        self._forced: set[str] = set()
        self._facts: dict[str, RootKeyFacts] = {}
        self._keys_requested = True
        self._keys_due = 0.0
        self._reconciled_hash: str | None = None
        self._retire_pending = True
        self._compacted: int | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- running ----------------------------------------------------------------------

    @property
    def migrator(self) -> Migrator:
        return self._migrator

    @property
    def resources(self) -> tuple[str, ...]:
        return self._resources

    def start(self) -> None:
        """Starts the supervisor thread (it makes a first pass at once). Raises
        InvalidArgument when already started."""
        if self._thread is not None:
            raise InvalidArgument("encryption controller: already started")
        self._thread = threading.Thread(
            target=self._loop, name="kinko-encryption-controller", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stops the supervisor; a running migration stops after its current batch (its
        record says running, and the next start resumes it). Raises nothing."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def kick(self, *, check_keys: bool = True) -> None:
        """Makes the supervisor pass now (and read the root key's metadata first)."""
        with self._lock:
            if check_keys:
                self._keys_requested = True
        self._wake.set()

    def run_once(self) -> bool:
        """One supervisor pass on the caller's thread (tests; not with :meth:`start`).
        Returns False when something failed (the supervisor would back off)."""
        return self._tick()

    def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                healthy = self._tick()
            except _Stopping:
                return
            except Exception:
                # A bug must not end the supervisor silently; the traceback carries no data.
                log.exception("encryption controller: a pass crashed")
                healthy = False
            if healthy:
                failures = 0
                delay = self._interval
            else:
                failures += 1
                delay = min(self._backoff_cap, self._backoff_initial * 2 ** (failures - 1))
            self._wake.wait(delay)

    def _sleep(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise _Stopping

    # -- one supervisor pass -----------------------------------------------------------

    def _tick(self) -> bool:
        self._source.reload_if_changed()
        self._reconcile_if_changed()
        self._maybe_check_keys()
        self._revive_writers()
        outcomes: list[str] = []
        rewrote = False
        for resource in self._resources:
            if self._stopping.is_set():
                raise _Stopping
            outcome, report = self._step(resource)
            outcomes.append(outcome)
            if report is not None and report.rewritten:
                rewrote = True
        if _Outcome.FAILED in outcomes:
            return False
        if _Outcome.RAN in outcomes:
            with self._lock:
                self._retire_pending = True
        if rewrote:
            self._compact_history()
        settled = not self._verify and all(o == _Outcome.IDLE for o in outcomes)
        if settled:
            with self._lock:
                self._enabling = None
                retire = self._retire_pending
                self._retire_pending = False
            if retire:
                self._retire_unused()
        return True

    def _step(self, resource: str) -> tuple[str, MigrationReport | None]:
        try:
            target = self._migrator.target(resource)
            chain = self._source.chain_for(resource)
            first = chain.first
            if isinstance(first, KmsV2) and first.keys.current_key_id() is None:
                self._block(resource, self._never_healthy(first))
                return _Outcome.FAILED, None
            record = self._migrator.state(resource)
        except KinkoError as exc:
            self._block(resource, _reason(exc))
            return _Outcome.FAILED, None
        with self._lock:
            forced = resource in self._forced
            verify = self._verify.get(resource)
        due = forced or record is None or record.target != target or record.state != "done"
        if not due and verify is not None:
            if verify.target != target:
                with self._lock:
                    self._verify.pop(resource, None)
            elif self._monotonic() >= verify.due:
                due = self._needs_rerun(resource, chain, record, verify)
        if not due:
            self._unblock(resource)
            return _Outcome.IDLE, None
        return self._run(resource)

    def _needs_rerun(
        self,
        resource: str,
        chain: ProviderChain,
        record: MigrationState | None,
        verify: _Verify,
    ) -> bool:
        try:
            scan = prefix_scan(self._store, chain, resource)
        except KinkoError as exc:
            log.warning("verifying the migration of %s failed: %s", resource, exc)
            return False
        left = record.unreadable if record is not None else 0
        with self._lock:
            if scan.stale > left and verify.reruns < MAX_VERIFY_RERUNS:
                self._verify[resource] = replace(verify, reruns=verify.reruns + 1)
                log.info(
                    "migration of %s: %d stale value(s) written behind the last pass; "
                    "running it again",
                    resource,
                    scan.stale - left,
                )
                return True
            self._verify.pop(resource, None)
        return False

    def _run(self, resource: str) -> tuple[str, MigrationReport | None]:
        with self._lock:
            self._progress[resource] = _Progress(started=self._monotonic(), done_at_start=-1)
            verify = self._verify.get(resource)
        try:
            report = self._migrator.run(
                resource, progress=lambda done, total, rewritten: self._on_progress(resource, done)
            )
        except _Stopping:
            raise
        except KinkoError as exc:
            self._block(resource, _reason(exc))
            return _Outcome.FAILED, None
        finally:
            with self._lock:
                self._progress.pop(resource, None)
        with self._lock:
            self._forced.discard(resource)
            self._blocked.pop(resource, None)
            reruns = verify.reruns if verify is not None and verify.target == report.target else 0
            self._verify[resource] = _Verify(
                report.target, self._monotonic() + self._interval, reruns
            )
        log.info(
            "migration of %s done under %s: %d object(s), %d rewritten, %d unreadable",
            resource,
            report.target,
            report.done,
            report.rewritten,
            report.unreadable,
        )
        return _Outcome.RAN, report

    def _on_progress(self, resource: str, done: int) -> None:
        if self._stopping.is_set():
            raise _Stopping
        now = self._monotonic()
        with self._lock:
            progress = self._progress.get(resource)
            if progress is not None:
                if progress.done_at_start < 0 or done < progress.done:
                    # The first batch of this run, or the pass restarted under a new target.
                    progress.started, progress.done_at_start = now, done
                progress.done, progress.at = done, now
            requested = self._keys_requested
        if requested:
            self._check_keys()

    def _block(self, resource: str, reason: str) -> None:
        with self._lock:
            self._blocked[resource] = reason

    def _unblock(self, resource: str) -> None:
        with self._lock:
            self._blocked.pop(resource, None)

    def _never_healthy(self, first: KmsV2) -> str:
        keys = first.keys
        if isinstance(keys, KmsV2Session):
            try:
                keys.check()
            except PluginError as exc:
                return _reason(exc)
        return f"PluginError: KMS plugin {first.name} has not reported a key_id yet"

    # -- the root key ------------------------------------------------------------------

    def _maybe_check_keys(self) -> None:
        with self._lock:
            due = self._keys_requested or self._monotonic() >= self._keys_due
        if due:
            self._check_keys()

    def _check_keys(self) -> None:
        """Reads the writing root keys' metadata; a key_id other than the one the KMS v2
        session writes with (a rotation) makes the plugin and the session look again now."""
        with self._lock:
            self._keys_requested = False
            self._keys_due = self._monotonic() + self._key_check_interval
        for first, served in self._writers():
            try:
                facts = self._keys.describe(served.key_id)
            except KinkoError as exc:
                log.warning("root key %s of %s: %s", served.key_id, served.provider, exc)
                continue
            with self._lock:
                self._facts[served.key_id] = facts
            session = first.keys
            if not isinstance(session, KmsV2Session):
                continue
            if facts.state is KeyState.ACTIVE and session.current_key_id() != facts.key_id:
                # A new version: ask now rather than at the Status poller's next turn.
                served.plugin.refresh()
                try:
                    session.check()
                except PluginError as exc:
                    log.warning("KMS plugin %s: check failed: %s", first.name, exc)

    def _revive_writers(self) -> None:
        """A writing KMS v2 session whose write window ran out (no healthy Status for 3
        minutes) is checked now, so a pause ends as soon as its plugin is back rather than
        at the Status poller's next turn."""
        for resource in self._resources:
            try:
                first = self._source.chain_for(resource).first
            except KinkoError:
                continue
            session = first.keys if isinstance(first, KmsV2) else None
            if not isinstance(session, KmsV2Session):
                continue
            left = session.expires_in()
            if left is not None and left <= 0:
                try:
                    session.check()
                except PluginError as exc:
                    log.warning("KMS plugin %s: check failed: %s", first.name, exc)

    def _writers(self) -> list[tuple[KmsV2, ServedPlugin]]:
        """The KMS v2 providers that write some resource and are kinko's plugins."""
        served = self._plugins.served()
        out: list[tuple[KmsV2, ServedPlugin]] = []
        seen: set[str] = set()
        config = self._source.state.chains.config
        endpoints = {k.name: k.endpoint for k in config.kms_providers}
        for resource in self._resources:
            try:
                first = self._source.chain_for(resource).first
            except KinkoError:
                continue
            if not isinstance(first, KmsV2) or first.name in seen:
                continue
            plugin = served.get(first.name)
            if plugin is not None and endpoints.get(first.name) == plugin.endpoint:
                seen.add(first.name)
                out.append((first, plugin))
        return out

    # -- plugins, registrations, retirement --------------------------------------------

    def _kinko_providers(self, config: EncryptionConfig) -> dict[str, ServedPlugin]:
        """The KMS providers of ``config`` that are kinko's plugins (name and endpoint)."""
        served = self._plugins.served()
        out: dict[str, ServedPlugin] = {}
        for kms in config.kms_providers:
            plugin = served.get(kms.name)
            if kms.api_version == "v2" and plugin is not None and plugin.endpoint == kms.endpoint:
                out[kms.name] = plugin
        return out

    def _reconcile_if_changed(self) -> None:
        """After a config change: the cluster is registered on the root key of every kinko
        provider the config names and on no other; plugins of keys no longer named stop."""
        if self._source.state.config_hash == self._reconciled_hash:
            return
        with self._config_lock:
            # Read again under the lock: an enable that held it may have served a new plugin
            # and loaded a config naming it, and a state read before the lock would retire
            # that plugin and drop its registration.
            state = self._source.state
            if state.config_hash == self._reconciled_hash:
                return
            used = self._kinko_providers(state.chains.config)
            for provider, plugin in self._plugins.served().items():
                try:
                    if provider in used:
                        self._keys.register(plugin.key_id)
                        continue
                    if not plugin.bootstrap:
                        self._plugins.retire(provider)
                    self._keys.unregister(plugin.key_id)
                except KinkoError as exc:
                    log.warning(
                        "registration of the cluster on root key %s (%s): %s",
                        plugin.key_id,
                        provider,
                        exc,
                    )
            self._reconciled_hash = state.config_hash
            with self._lock:
                self._retire_pending = True

    def _retire_unused(self) -> None:
        """Drops every earlier kinko KMS provider no stored object names any more."""
        with self._config_lock:
            config = self._source.state.chains.config
            candidates = self._kinko_providers(config)
            for resource in self._resources:
                first = self._source.chain_for(resource).first
                if isinstance(first, KmsV2):
                    candidates.pop(first.name, None)
            if not candidates:
                return
            try:
                scans = [
                    prefix_scan(self._store, self._source.chain_for(r), r) for r in self._resources
                ]
            except KinkoError as exc:
                log.warning("scanning for unused KMS providers failed: %s", exc)
                return
            for name, plugin in candidates.items():
                label = (KMS_V2_PREFIX + name.encode() + b":").decode()
                if any(scan.providers.get(label, 0) for scan in scans):
                    continue
                try:
                    self._retire(name, plugin)
                except KinkoError as exc:
                    log.warning("retiring KMS provider %s failed: %s", name, exc)

    def _retire(self, name: str, plugin: ServedPlugin) -> None:
        old = {r: self._migrator.target(r) for r in self._resources}
        changed = self._write_config(lambda text: without_provider(text, name))
        if changed:
            self._carry_over(old)
        if not plugin.bootstrap:
            self._plugins.retire(name)
        self._keys.unregister(plugin.key_id)
        self._reconciled_hash = self._source.config_hash
        log.info(
            "KMS provider %s (root key %s) retired: no stored object refers to it",
            name,
            plugin.key_id,
        )

    def _carry_over(self, old: Mapping[str, str]) -> None:
        """Moves each done record from its old target to the new one (module docstring)."""
        for resource in self._resources:
            record = self._migrator.state(resource)
            if record is None or record.state != "done" or record.target != old[resource]:
                continue
            moved = replace(record, target=self._migrator.target(resource))
            key = CHECKPOINT_PREFIX + resource.encode()
            self._store.txn([Put(key, moved.to_json(), record.revision)])

    def _write_config(self, change: Callable[[bytes], str | None]) -> bool:
        """Applies ``change`` to the config file and reloads it; restores the old file if the
        reload refuses the new one. Returns False when ``change`` changed nothing.

        Raises ConfigError, InvalidArgument (cannot write).
        """
        path = self._source.path
        try:
            old = path.read_bytes()
        except OSError as exc:
            raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
        new = change(old)
        if new is None:
            return False
        write_config(path, new)
        result = self._source.reload_if_changed()
        if result.error is not None:
            write_config(path, old.decode("utf-8"))
            self._source.reload_if_changed()
            raise ConfigError("", result.error)
        return True

    def _compact_history(self) -> None:
        if self._compact is None:
            return
        revisions = []
        for resource in self._resources:
            with contextlib.suppress(KinkoError):
                record = self._migrator.state(resource)
                if record is not None:
                    revisions.append(record.revision)
        if not revisions:
            return
        revision = max(revisions)
        try:
            self._compact(revision)
        except KinkoError as exc:
            log.warning("compacting the store below revision %d failed: %s", revision, exc)
            return
        with self._lock:
            self._compacted = revision
        log.info("store history compacted below revision %d after a migration", revision)

    # -- enable ------------------------------------------------------------------------

    def enable_kms(self, key_ref: str) -> EnableResult:
        """Encrypts the cluster with the root key ``key_ref`` (id or alias) from now on, and
        migrates what is stored (module docstring).

        Raises InvalidArgument (an empty ref; the socket path would be too long), NotFound
        (no such key), NotAllowed (a standard key), WrongState (Suspended, expired, Destroyed),
        KeyServiceUnavailable (the key service or the key's plugin cannot be used now),
        Conflict (an earlier enable's migration is still running), ConfigError (the current
        configuration file is invalid). Nothing has changed when it raises.
        """
        ref = key_ref.strip()
        if not ref:
            raise InvalidArgument("key: expected a root key id or alias, got an empty one")
        with self._enable_lock:
            facts = self._usable_key(ref)
            self._refuse_while_enabling()
            with self._config_lock:
                self._plugins.check_room(facts.id)
                candidate = self._plugins.candidate(facts.id)
                self._check_plugin(candidate, facts)
                served, started = self._plugins.ensure(facts.id, plugin=candidate)
                try:
                    registered = self._keys.register(facts.id)
                    try:
                        provider = kms_provider(served.provider, served.endpoint)
                        changed = self._write_config(
                            lambda text: with_kms_first(text, provider, self._resources)
                        )
                    except BaseException:
                        if registered:
                            with contextlib.suppress(KinkoError):
                                self._keys.unregister(facts.id)
                        raise
                except BaseException:
                    if started:
                        with contextlib.suppress(KinkoError):
                            self._plugins.retire(served.provider)
                    raise
                self._reconciled_hash = self._source.config_hash
            with self._lock:
                self._enabling = _Enabling(facts, served.provider)
                self._facts[facts.id] = facts
                self._retire_pending = True
            log.info(
                "KMS enabled with root key %s (%s) as provider %s%s",
                facts.label,
                facts.id,
                served.provider,
                "" if changed else " (already configured)",
            )
        self.kick()
        return EnableResult(served.provider, facts.id, served.socket, changed, self.status())

    def _usable_key(self, ref: str) -> RootKeyFacts:
        try:
            facts = self._keys.describe(ref)
        except NotFound:
            raise NotFound(
                f"root key {ref[:128]} was not found in the key service: name an existing root "
                "key by its id or alias",
                reason_code="KEY_NOT_FOUND_ERR",
            ) from None
        except UnavailableError as exc:
            raise KeyServiceUnavailable(
                f"the key service cannot be reached to look up root key {ref[:128]}: {exc}"
            ) from exc
        if facts.extractable:
            raise NotAllowed(
                f"key {facts.label} is a standard key; KMS encryption needs a root key",
                reason_code="KEY_ROOT_REQ_ERR",
            )
        now = self._clock()
        expired = facts.expiration is not None and facts.expiration <= now
        if facts.state is KeyState.DEACTIVATED or expired:
            when = rfc3339(facts.expiration) or "its expiration date"
            raise WrongState(
                f"root key {facts.label} expired on {when} (Deactivated): it can no longer "
                "encrypt; pick a new root key",
                reason_code="KEY_EXPIRED_ERR",
            )
        if facts.state is KeyState.SUSPENDED:
            raise WrongState(
                f"root key {facts.label} is Suspended: enable it in the key service first, or "
                "pick another root key"
            )
        if facts.state is KeyState.DESTROYED:
            raise WrongState(
                f"root key {facts.label} was deleted (Destroyed): restore it first, or pick "
                "another root key"
            )
        return facts

    def _refuse_while_enabling(self) -> None:
        with self._lock:
            enabling = self._enabling
        if enabling is None:
            return
        running = [
            m for m in self._migration_statuses().values() if m.state in ("running", "pending")
        ]
        if not running:
            return
        what = ", ".join(f"migration of {m.resource} {m.progress} {m.state}" for m in running)
        raise Conflict(f"enabling KMS with root key {enabling.key.label}: {what}")

    def _check_plugin(self, plugin: RootKeyPlugin, facts: RootKeyFacts) -> None:
        plugin.refresh()
        try:
            status = plugin.status()
        except UnavailableError as exc:
            raise KeyServiceUnavailable(
                f"root key {facts.label} cannot be used now: {exc}"
            ) from exc
        if status.healthz != "ok":
            raise KeyServiceUnavailable(
                f"root key {facts.label} cannot be used now: {status.healthz}"
            )

    # -- migrations on request ---------------------------------------------------------

    def _check_resources(self, resources: Sequence[str] | None) -> tuple[str, ...]:
        if resources is None:
            return self._resources
        unknown = [r for r in resources if r not in self._resources]
        if unknown or not resources:
            known = ", ".join(self._resources)
            got = ", ".join(repr(r[:64]) for r in unknown) or "none"
            raise InvalidArgument(f"resources: expected some of {known}, got {got}")
        return tuple(dict.fromkeys(resources))

    def migrate(self, resources: Sequence[str] | None = None) -> ClusterStatus:
        """Asks for a pass over ``resources`` (default: all) now, even where the record says
        done; the supervisor runs it. Idempotent. Raises InvalidArgument (an unknown resource).
        """
        chosen = self._check_resources(resources)
        with self._lock:
            self._forced.update(chosen)
        self.kick()
        return self.status()

    def dry_run(self, resources: Sequence[str] | None = None) -> list[MigrationReport]:
        """What a pass would rewrite now, per resource; writes nothing.

        Raises InvalidArgument, PluginError and what :meth:`Migrator.run` raises.
        """
        return [self._migrator.run(r, dry_run=True) for r in self._check_resources(resources)]

    def coverage(self, resources: Sequence[str] | None = None) -> CoverageReport:
        """The coverage report (:mod:`kinko.cluster.coverage`). Raises InvalidArgument,
        StoreUnavailable."""
        return coverage_report(self._store, self._source, self._check_resources(resources))

    def coverage_json(self, resources: Sequence[str] | None = None) -> dict[str, object]:
        """The coverage report with each resource's migration state, as the API shows it."""
        report = self.coverage(resources)
        migrations = {name: m.to_json() for name, m in self._migration_statuses().items()}
        return report.to_json(migrations)

    # -- status ------------------------------------------------------------------------

    def _migration_statuses(self) -> dict[str, MigrationStatus]:
        out: dict[str, MigrationStatus] = {}
        now = self._monotonic()
        for resource in self._resources:
            with self._lock:
                blocked = self._blocked.get(resource)
                progress = self._progress.get(resource)
            target: str | None
            try:
                target = self._migrator.target(resource)
            except KinkoError:
                target = None
            try:
                record = self._migrator.state(resource)
            except KinkoError as exc:
                record = None
                blocked = blocked or _reason(exc)
            out[resource] = _migration_status(resource, record, target, blocked, progress, now)
        return out

    def _writer_status(self, now: datetime) -> RootKeyStatus | None:
        for first, served in self._writers():
            try:
                facts = self._keys.describe(served.key_id)
            except KinkoError:
                with self._lock:
                    cached = self._facts.get(served.key_id)
                if cached is None:
                    return None
                facts = cached
            else:
                with self._lock:
                    self._facts[served.key_id] = facts
            seconds = None
            if facts.expiration is not None:
                seconds = (facts.expiration - now).total_seconds()
            key_id = first.keys.current_key_id()
            return RootKeyStatus(served.provider, facts, key_id, seconds)
        return None

    def status(self) -> ClusterStatus:
        """The cluster's encryption status now (module docstring). Raises nothing a store or
        key service failure causes: what cannot be read is shown as unknown or paused."""
        now = self._clock()
        migrations = self._migration_statuses()
        root = self._writer_status(now)
        with self._lock:
            enabling = self._enabling
            compacted = self._compacted
        states = [m.state for m in migrations.values()]
        phase: Phase
        if all(s == "done" for s in states) and all(m.current for m in migrations.values()):
            phase = "Ready"
        elif "paused" in states:
            phase = "Paused"
        elif enabling is not None:
            phase = "Enabling"
        else:
            phase = "Migrating"
        ready_since: datetime | None = None
        if phase == "Ready":
            updated = [m.updated for m in migrations.values() if m.updated is not None]
            ready_since = max(updated) if updated else None
            age = short_age((now - ready_since).total_seconds()) if ready_since else "0s"
            master = f"Ready ({age})"
        else:
            master = IN_PROGRESS
        warnings = self._warnings(now, root, migrations)
        return ClusterStatus(
            master_status=master,
            phase=phase,
            ready_since=ready_since,
            root_key=root,
            warnings=tuple(warnings),
            migrations=MappingProxyType(migrations),
            config_hash=self._source.config_hash,
            enabling=None if enabling is None or phase == "Ready" else enabling.describe(),
            compacted_revision=compacted,
        )

    def _warnings(
        self,
        now: datetime,
        root: RootKeyStatus | None,
        migrations: Mapping[str, MigrationStatus],
    ) -> list[str]:
        out: list[str] = []
        if root is not None:
            out.extend(key_warnings(root.facts, now))
        else:
            plain = [r for r in self._resources if _first_is_identity(self._source, r)]
            if plain:
                out.append(
                    f"{' and '.join(plain)} are stored as plaintext: enable encryption at rest "
                    "with `kinko cluster kms enable --key kinko-cluster`"
                )
        for m in migrations.values():
            if m.state == "paused":
                out.append(f"migration of {m.resource} paused: {m.reason or 'no reason given'}")
            if m.unreadable:
                out.append(
                    f"{m.unreadable} {m.resource} could not be decrypted by the last migration "
                    "(see `kinko cluster encryption status`)"
                )
        return out

    def explain(self, exc: PluginError) -> PluginError:
        """``exc`` (a write that failed closed) with what the writing root key's state means:
        expired → rotate to a new root key. ``exc`` itself when the key is fine or unknown."""
        for _, served in self._writers():
            try:
                facts = self._keys.describe(served.key_id)
            except KinkoError:
                return exc
            hint = state_hint(facts, self._clock())
            if hint is not None:
                return PluginError(f"{exc}; {hint}")
        return exc

    # -- metrics -----------------------------------------------------------------------

    def collector(self) -> _Collector:
        """A Prometheus collector of the root keys' expiry and the migrations' progress (for
        ``ClusterMetrics.registry.register``)."""
        return _Collector(self)

    def _expiry_samples(self) -> list[tuple[str, float]]:
        now = self._clock()
        out: list[tuple[str, float]] = []
        with self._lock:
            facts = dict(self._facts)
        try:
            used = self._kinko_providers(self._source.state.chains.config)
        except KinkoError:
            return out
        for provider, plugin in sorted(used.items()):
            known = facts.get(plugin.key_id)
            if known is not None and known.expiration is not None:
                out.append((provider, (known.expiration - now).total_seconds()))
        return out


def _first_is_identity(source: EncryptionConfigSource, resource: str) -> bool:
    try:
        return not source.chain_for(resource).first.prefix
    except KinkoError:
        return False


def key_warnings(facts: RootKeyFacts, now: datetime) -> list[str]:
    """The status warnings about the writing root key: expiring within 30 days, expired,
    suspended, deleted."""
    expiration = facts.expiration
    if facts.state is KeyState.DEACTIVATED or (expiration is not None and expiration <= now):
        when = expiration.date().isoformat() if expiration is not None else "its expiration date"
        return [
            f"root key {facts.label} expired on {when}: new writes fail; rotate to a new root "
            "key with `kinko cluster kms enable --key NEW`"
        ]
    if facts.state is KeyState.SUSPENDED:
        return [
            f"root key {facts.label} is suspended: new writes fail once the plugin's 3-minute "
            "write window ends and stored objects cannot be read; enable it in the key service"
        ]
    if facts.state is KeyState.DESTROYED:
        return [
            f"root key {facts.label} was deleted: objects encrypted under it cannot be read; "
            "restore it within 30 days of the deletion or they are lost"
        ]
    if expiration is not None and expiration - now <= EXPIRY_WARNING:
        left = expiration - now
        days = left.days
        span = f"{days} day{'s' if days != 1 else ''}"
        if days < 1:
            hours = max(1, int(left.total_seconds() // 3600))
            span = f"{hours} hour{'s' if hours != 1 else ''}"
        return [
            f"root key {facts.label} expires in {span} ({expiration.date().isoformat()}): "
            "rotate to a new root key before then"
        ]
    return []


def state_hint(facts: RootKeyFacts, now: datetime) -> str | None:
    """What a failed write should tell the caller about the root key, or None."""
    expiration = facts.expiration
    if facts.state is KeyState.DEACTIVATED or (expiration is not None and expiration <= now):
        when = expiration.date().isoformat() if expiration is not None else "its expiration date"
        return (
            f"root key {facts.label} expired on {when}: new writes fail; rotate to a new root "
            "key with `kinko cluster kms enable --key NEW`"
        )
    if facts.state is KeyState.SUSPENDED:
        return (
            f"root key {facts.label} is suspended: enable it in the key service, or rotate to a "
            "new root key with `kinko cluster kms enable --key NEW`"
        )
    if facts.state is KeyState.DESTROYED:
        return (
            f"root key {facts.label} was deleted: restore it, or rotate to a new root key with "
            "`kinko cluster kms enable --key NEW`"
        )
    return None


def _migration_status(
    resource: str,
    record: MigrationState | None,
    target: str | None,
    blocked: str | None,
    progress: _Progress | None,
    now: float,
) -> MigrationStatus:
    rate = None
    if progress is not None and progress.done_at_start >= 0 and progress.at > progress.started:
        rate = (progress.done - progress.done_at_start) / (progress.at - progress.started)
    state: MigrationStateName
    if blocked is not None:
        state = "paused"
    elif record is None:
        state = "pending"
    elif record.target != target:
        state = "running" if record.state == "running" else "pending"
    else:
        state = record.state
    if record is None or state == "pending":
        # No pass under the current target has begun: the record's counts are of another.
        return MigrationStatus(
            resource=resource,
            state=state,
            done=0,
            total=None,
            rewritten=0,
            skipped=0,
            unreadable=0,
            conflicts=0,
            restarts=0,
            reason=blocked,
            target=None if record is None else record.target,
            current_target=target,
            updated=None if record is None else _from_seconds(record.updated_at),
            rate=rate,
        )
    return MigrationStatus(
        resource=resource,
        state=state,
        done=record.done,
        total=record.total,
        rewritten=record.rewritten,
        skipped=record.skipped,
        unreadable=record.unreadable,
        conflicts=record.conflicts,
        restarts=record.restarts,
        reason=blocked or record.reason,
        target=record.target,
        current_target=target,
        updated=_from_seconds(record.updated_at),
        rate=rate,
    )


class _Collector:
    """``kinko_root_key_expiry_seconds`` and ``kinko_migration_*``, read at scrape time."""

    def __init__(self, controller: EncryptionController) -> None:
        self._c = controller

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "kinko_root_key_expiry_seconds",
                "Seconds until the root key of each kinko KMS provider expires (negative once "
                "expired); only keys with an expiration date.",
                labels=("provider",),
            ),
            GaugeMetricFamily(
                "kinko_migration_objects_done",
                "Objects handled by the current migration pass, by resource.",
                labels=("resource",),
            ),
            GaugeMetricFamily(
                "kinko_migration_objects_total",
                "Objects the current migration pass walks (when counted), by resource.",
                labels=("resource",),
            ),
            GaugeMetricFamily(
                "kinko_migration_objects_rewritten",
                "Objects rewritten by the current migration pass, by resource.",
                labels=("resource",),
            ),
            GaugeMetricFamily(
                "kinko_migration_objects_unreadable",
                "Objects the current migration pass could not decrypt, by resource.",
                labels=("resource",),
            ),
            GaugeMetricFamily(
                "kinko_migration_state",
                "1 for the state each resource's migration is in (running, paused, done, pending).",
                labels=("resource", "state"),
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        expiry, done, total, rewritten, unreadable, state = self._families()
        for provider, seconds in self._c._expiry_samples():
            expiry.add_metric((provider,), seconds)
        for resource, m in self._c._migration_statuses().items():
            done.add_metric((resource,), m.done)
            if m.total is not None:
                total.add_metric((resource,), m.total)
            rewritten.add_metric((resource,), m.rewritten)
            unreadable.add_metric((resource,), m.unreadable)
            for name in ("running", "paused", "done", "pending"):
                state.add_metric((resource, name), 1.0 if m.state == name else 0.0)
        yield from (expiry, done, total, rewritten, unreadable, state)


# --------------------------------------------------------------------------- the cluster API


class ExplainingClusterService(ClusterService):
    """:class:`ClusterService` whose writes that fail closed (a PluginError) say what the
    root key's state means, through ``explain`` (:meth:`EncryptionController.explain`)."""

    def __init__(
        self,
        store: Store,
        source: EncryptionConfigSource,
        *,
        clock: Callable[[], datetime],
        explain: Callable[[PluginError], PluginError],
    ) -> None:
        super().__init__(store, source, clock=clock)
        self._explain = explain

    def create(self, resource: str, namespace: str, body: object) -> Obj:
        try:
            return super().create(resource, namespace, body)
        except PluginError as exc:
            raise self._explain(exc) from exc

    def replace(self, resource: str, namespace: str, name: str, body: object) -> Obj:
        try:
            return super().replace(resource, namespace, name, body)
        except PluginError as exc:
            raise self._explain(exc) from exc

    def patch(self, resource: str, namespace: str, name: str, patch: object) -> Obj:
        try:
            return super().patch(resource, namespace, name, patch)
        except PluginError as exc:
            raise self._explain(exc) from exc
