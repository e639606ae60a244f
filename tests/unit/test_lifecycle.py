"""The encryption controller over real parts in one process, driven pass by pass.

A real :class:`~kinko.keys.service.KeyService` (MemoryStore, MemoryHsm, a wall clock the test
moves), real :class:`~kinko.kms.rootkey.RootKeyPlugin` cores reached in-process through the
plugin table (no sockets), a real EncryptionConfigSource on a config file, and the
controller's :meth:`~kinko.cluster.lifecycle.EncryptionController.run_once` instead of its
thread, so every step is deterministic and no test sleeps. Monotonic time (the KMS write
window, the plugins' health cache, the controller's verification delay) is a fake clock too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from kinko.cluster.lifecycle import (
    IN_PROGRESS,
    EncryptionController,
    ExplainingClusterService,
    PluginEntry,
    PluginTable,
    ServiceKeyDirectory,
    identity_config_text,
    key_warnings,
    kms_provider,
    plugin_names,
    short_age,
    with_kms_first,
    without_provider,
    write_config,
)
from kinko.cluster.migrate import CHECKPOINT_PREFIX
from kinko.crypto.config import parse_encryption_config
from kinko.errors import (
    ConfigError,
    Conflict,
    DeletionRefused,
    InvalidArgument,
    KeyServiceUnavailable,
    NotAllowed,
    NotFound,
    PluginError,
    WrongState,
)
from kinko.hsm.memory import MemoryHsm
from kinko.keys.audit import MemoryAuditSink
from kinko.keys.auth import Principal, Role
from kinko.keys.model import KeyState
from kinko.keys.service import KeyService
from kinko.kms.envelope import WRITE_STATE_TTL
from kinko.kms.port import EncryptResult, KmsV2Api, StatusResult
from kinko.kms.rootkey import RootKeyPlugin, ServiceRootKeys, key_id_for
from kinko.store.memory import MemoryStore
from kinko.up import kms_endpoint

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INSTANCE = "instance-1"
ADMIN = Principal(
    name="admin",
    instance=INSTANCE,
    roles=frozenset({Role.MANAGER, Role.WRITER, Role.READER, Role.KEY_PURGE}),
)
PLUGIN = Principal(
    name="kinko-kms-plugin", instance=INSTANCE, roles=frozenset({Role.READER}), service=True
)


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Switch:
    """A plugin API a test can take down (every call: PluginError, as an unreachable socket)."""

    def __init__(self, api: KmsV2Api | None) -> None:
        self.api = api
        self.down = False

    def _api(self) -> KmsV2Api:
        if self.down or self.api is None:
            raise PluginError("KMS plugin at unix:///test: Status is unavailable (UNAVAILABLE)")
        return self.api

    def status(self) -> StatusResult:
        return self._api().status()

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        return self._api().encrypt(plaintext, uid=uid)

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        return self._api().decrypt(ciphertext, uid=uid, key_id=key_id, annotations=annotations)


class Cluster:
    """A key service with the bootstrap root key, kinko's plugin table, a config file, its
    source, the controller and the cluster service, all in one process."""

    def __init__(self, folder: Path, *, config: str | None = None, interval: float = 5.0) -> None:
        self.folder = folder
        self.now = NOW
        self.mono = FakeClock()
        self.store = MemoryStore()
        self.hsm = MemoryHsm()
        self.service = KeyService(
            self.store, self.hsm, audit=MemoryAuditSink(), clock=self.wall, rng=os.urandom
        )
        self.root = self.service.create_key(
            ADMIN, INSTANCE, name="kinko-cluster-root", aliases=("kinko-cluster",)
        ).id
        self.saved: list[tuple[PluginEntry, ...]] = []
        self.stopped: list[str] = []
        access = ServiceRootKeys(self.service, PLUGIN, INSTANCE)

        def serve(api: KmsV2Api, endpoint: str) -> Callable[[], None]:
            return lambda: self.stopped.append(endpoint)

        self.plugins = PluginTable(
            folder,
            bootstrap_key=self.root,
            make_plugin=lambda key_id: RootKeyPlugin(access, key_id, clock=self.mono),
            serve=serve,
            persist=self.saved.append,
            endpoint_of=kms_endpoint,
        )
        self.plugins.start()
        self.switches: dict[str, Switch] = {}
        self.config = folder / "encryption-config.yaml"
        self.config.write_text(identity_config_text() if config is None else config)
        from kinko.cluster.encryption import EncryptionConfigSource

        def kms_v2(kms: object) -> KmsV2Api:
            endpoint = getattr(kms, "endpoint", "")
            switch = self.switches.get(endpoint)
            if switch is None:
                switch = self.switches[endpoint] = Switch(self.plugins.api_for(endpoint))
            return switch

        self.source = EncryptionConfigSource(
            self.config, kms_v2=kms_v2, poll_kms=False, clock=self.mono
        )
        self.directory = ServiceKeyDirectory(self.service, PLUGIN, INSTANCE)
        self.controller = EncryptionController(
            store=self.store,
            source=self.source,
            plugins=self.plugins,
            keys=self.directory,
            interval=interval,
            clock=self.wall,
            monotonic=self.mono,
            compact=self.store.compact,
        )
        self.cluster = ExplainingClusterService(
            self.store, self.source, clock=self.wall, explain=self.controller.explain
        )

    def wall(self) -> datetime:
        return self.now

    def secret(self, name: str, value: str = "djE=") -> None:
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}}
        self.cluster.create("secrets", "default", {**body, "data": {"v": value}})

    def settle(self, passes: int = 6) -> None:
        """Supervisor passes, with the verification delay passing in between."""
        for _ in range(passes):
            assert self.controller.run_once()
            self.mono.now += 10

    def values(self) -> list[bytes]:
        return [e.value for e in self.store.range(b"/registry/secrets/", limit=10_000).entries]

    def registered(self, key_id: str) -> bool:
        found = self.service.list_registrations(
            ADMIN, INSTANCE, key_id, crn_query=self.directory.crn
        )
        return found.total == 1

    def rotate(self) -> str:
        self.now += timedelta(hours=2)
        view = self.service.rotate(ADMIN, INSTANCE, self.root)
        return key_id_for(view.id, view.key_version.id)


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path)


# --- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (45, "45s"), (59.9, "59s"), (60, "1m"), (12 * 60 + 5, "12m"), (3 * 3600, "3h"),
     (5 * 86400, "5d"), (800 * 86400, "2y"), (-5, "<invalid>")],
)  # fmt: skip
def test_short_age_is_kubectls(seconds: float, shown: str) -> None:
    assert short_age(seconds) == shown


def test_plugin_names_keep_the_bootstrap_socket() -> None:
    assert plugin_names("abc", bootstrap_key="abc") == ("kinko", "kms.sock")
    assert plugin_names("0123456789ab", bootstrap_key="x") == (
        "kinko-01234567",
        "kms-01234567.sock",
    )


def _providers(text: str) -> list[list[str]]:
    doc = yaml.safe_load(text)
    return [[next(iter(p)) + ":" + p.get("kms", {}).get("name", "") for p in r["providers"]]
            for r in doc["resources"]]  # fmt: skip


KMS_A = kms_provider("kinko", "unix:///tmp/a.sock")
KMS_B = kms_provider("kinko-b", "unix:///tmp/b.sock")


def test_with_kms_first_keeps_every_earlier_provider_for_reads() -> None:
    text = with_kms_first(identity_config_text(), KMS_A, ["secrets", "configmaps"])
    assert text is not None
    assert _providers(text) == [["kms:kinko", "identity:"]]
    again = with_kms_first(text, KMS_B, ["secrets", "configmaps"])
    assert again is not None
    assert _providers(again) == [["kms:kinko-b", "kms:kinko", "identity:"]]
    # Back to the first key: it moves to the front, nothing is duplicated.
    back = with_kms_first(again, KMS_A, ["secrets", "configmaps"])
    assert back is not None
    assert _providers(back) == [["kms:kinko", "kms:kinko-b", "identity:"]]
    assert with_kms_first(back, KMS_A, ["secrets", "configmaps"]) is None
    parse_encryption_config(back)


def test_with_kms_first_covers_resources_no_rule_names_before_wildcards() -> None:
    text = (
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
        "resources:\n  - resources: [events]\n    providers:\n      - identity: {}\n"
    )
    out = with_kms_first(text, KMS_A, ["secrets", "configmaps"])
    assert out is not None
    assert _providers(out) == [["kms:kinko", "identity:"], ["identity:"]]
    wildcard = (
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
        "resources:\n  - resources: ['*.*']\n    providers:\n      - identity: {}\n"
    )
    out = with_kms_first(wildcard, KMS_A, ["secrets"])
    assert out is not None
    assert _providers(out) == [["kms:kinko", "identity:"]]


def test_without_provider_drops_it_and_refuses_to_empty_a_rule() -> None:
    text = with_kms_first(identity_config_text(), KMS_A, ["secrets", "configmaps"])
    assert text is not None
    both = with_kms_first(text, KMS_B, ["secrets", "configmaps"])
    assert both is not None
    out = without_provider(both, "kinko")
    assert out is not None
    assert _providers(out) == [["kms:kinko-b", "identity:"]]
    assert without_provider(out, "kinko") is None
    only = (
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
        "  - resources: [secrets]\n    providers:\n      - kms: {apiVersion: v2, name: kinko, "
        "endpoint: 'unix:///tmp/a.sock'}\n"
    )
    with pytest.raises(ConfigError, match="without providers"):
        without_provider(only, "kinko")


def test_write_config_replaces_the_file_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("old")
    write_config(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]


def _facts(state: KeyState, expiration: datetime | None) -> object:
    from kinko.cluster.lifecycle import RootKeyFacts

    return RootKeyFacts(
        id="k-id",
        name="n",
        aliases=("kinko-cluster",),
        state=state,
        extractable=False,
        version_id="v",
        version_count=1,
        expiration=expiration,
    )


@pytest.mark.parametrize(
    ("state", "expires_in", "expected"),
    [
        (KeyState.ACTIVE, None, None),
        (KeyState.ACTIVE, timedelta(days=45), None),
        (KeyState.ACTIVE, timedelta(days=12, hours=3),
         "root key kinko-cluster expires in 12 days (2026-03-13): rotate to a new root key "
         "before then"),
        (KeyState.ACTIVE, timedelta(hours=5), "expires in 5 hours"),
        (KeyState.ACTIVE, timedelta(days=1, hours=1), "expires in 1 day (2026-03-02)"),
        (KeyState.DEACTIVATED, -timedelta(days=2),
         "root key kinko-cluster expired on 2026-02-27: new writes fail; rotate to a new root "
         "key with `kinko cluster kms enable --key NEW`"),
        (KeyState.ACTIVE, -timedelta(seconds=1), "expired on 2026-03-01"),
        (KeyState.SUSPENDED, None, "is suspended"),
        (KeyState.DESTROYED, None, "was deleted"),
    ],
)  # fmt: skip
def test_key_warnings_table(
    state: KeyState, expires_in: timedelta | None, expected: str | None
) -> None:
    from kinko.cluster.lifecycle import RootKeyFacts

    facts = _facts(state, None if expires_in is None else NOW + expires_in)
    assert isinstance(facts, RootKeyFacts)
    warnings = key_warnings(facts, NOW)
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert expected in warnings[0]


# --- enable ---------------------------------------------------------------------------------


def test_enable_registers_rewrites_the_config_and_migrates(cluster: Cluster) -> None:
    for i in range(30):
        cluster.secret(f"s{i:02d}")
    cluster.settle(1)
    assert cluster.controller.status().phase == "Ready"
    assert all(not v.startswith(b"k8s:enc:") for v in cluster.values())

    result = cluster.controller.enable_kms("kinko-cluster")

    assert (result.provider, result.key, result.changed) == ("kinko", cluster.root, True)
    assert result.socket == cluster.folder / "kms.sock"
    assert result.status.master_status == IN_PROGRESS
    assert result.status.phase == "Enabling"
    assert cluster.registered(cluster.root)
    config = parse_encryption_config(cluster.config.read_bytes())
    assert [p.kind for _, p in config.providers_for("secrets")] == ["kms", "identity"]
    # Writes go on under the new configuration while the migration has not run yet.
    cluster.secret("during")

    cluster.settle()

    status = cluster.controller.status()
    assert status.phase == "Ready"
    assert status.master_status == "Ready (0s)"
    cluster.now += timedelta(minutes=12)
    assert cluster.controller.status().master_status == "Ready (12m)"
    assert status.root_key is not None
    assert status.root_key.facts.id == cluster.root
    key_id = status.root_key.key_id
    assert key_id is not None
    assert all(v.startswith(b"k8s:enc:kms:v2:kinko:") for v in cluster.values())
    report = cluster.controller.coverage()
    secrets = report.resources["secrets"]
    assert secrets.total == 31
    assert set(secrets.key_ids) == {key_id}
    assert (secrets.plaintext, secrets.stale, secrets.undecryptable) == (0, 0, 0)
    assert status.migrations["secrets"].rewritten == 30
    # The migration's old values are gone from history too.
    assert status.compacted_revision is not None
    assert cluster.cluster.get("secrets", "default", "s07").data == {"v": b"v1"}


def test_a_registered_root_key_refuses_a_plain_delete(cluster: Cluster) -> None:
    cluster.controller.enable_kms(cluster.root)
    cluster.now += timedelta(minutes=1)

    with pytest.raises(DeletionRefused) as refused:
        cluster.service.delete_key(ADMIN, INSTANCE, cluster.root)
    assert refused.value.reason_code == "PROTECTED_RESOURCE_ERR"

    view = cluster.service.delete_key(ADMIN, INSTANCE, cluster.root, force=True)
    assert view.state is KeyState.DESTROYED


def _snapshot(cluster: Cluster) -> tuple[bytes, int, int, int]:
    """The config file, the store's revision, and how often the plugin table was saved and
    a plugin stopped."""
    return (
        cluster.config.read_bytes(),
        cluster.store.revision,
        len(cluster.saved),
        len(cluster.stopped),
    )


def _standard_key(cluster: Cluster) -> str:
    return cluster.service.create_key(ADMIN, INSTANCE, name="std-key", extractable=True).id


def _suspended_key(cluster: Cluster) -> str:
    key = cluster.service.create_key(ADMIN, INSTANCE, name="suspended-key").id
    cluster.now += timedelta(minutes=1)
    cluster.service.disable(ADMIN, INSTANCE, key)
    return key


def _expired_key(cluster: Cluster) -> str:
    key = cluster.service.create_key(
        ADMIN, INSTANCE, name="expiring-key", expiration_date=cluster.now + timedelta(days=1)
    ).id
    cluster.now += timedelta(days=2)
    return key


def _destroyed_key(cluster: Cluster) -> str:
    key = cluster.service.create_key(ADMIN, INSTANCE, name="doomed-key").id
    cluster.now += timedelta(minutes=1)
    cluster.service.delete_key(ADMIN, INSTANCE, key)
    return key


def _unreachable(cluster: Cluster) -> str:
    key = cluster.service.create_key(ADMIN, INSTANCE, name="other-key").id
    cluster.hsm.device.online = False
    return key


@pytest.mark.parametrize(
    ("make_ref", "error", "message"),
    [
        (lambda c: "no-such-key", NotFound, "no-such-key was not found"),
        (lambda c: "  ", InvalidArgument, "expected a root key id or alias"),
        (_standard_key, NotAllowed, "standard key"),
        (_suspended_key, WrongState, "is Suspended"),
        (_expired_key, WrongState, "expired on .* pick a new root key"),
        (_destroyed_key, WrongState, "was deleted"),
        (_unreachable, KeyServiceUnavailable, "cannot be used now"),
    ],
    ids=["unknown", "empty", "standard", "suspended", "expired", "destroyed", "hsm-down"],
)
def test_a_refused_enable_changes_nothing(
    cluster: Cluster,
    make_ref: Callable[[Cluster], str],
    error: type[Exception],
    message: str,
) -> None:
    ref = make_ref(cluster)
    before = _snapshot(cluster)
    plugins_before = dict(cluster.plugins.served())

    with pytest.raises(error, match=message):
        cluster.controller.enable_kms(ref)

    assert _snapshot(cluster) == before
    assert dict(cluster.plugins.served()) == plugins_before
    assert not any(cluster.registered(p.key_id) for p in plugins_before.values())


def test_a_second_enable_while_the_first_migrates_is_refused_naming_it(cluster: Cluster) -> None:
    cluster.secret("a")
    cluster.controller.enable_kms("kinko-cluster")
    other = cluster.service.create_key(ADMIN, INSTANCE, name="other-key").id
    before = _snapshot(cluster)

    with pytest.raises(Conflict, match="enabling KMS with root key kinko-cluster: migration of "):
        cluster.controller.enable_kms(other)

    assert _snapshot(cluster) == before
    cluster.settle()
    # Done: the next enable goes through.
    assert cluster.controller.enable_kms(other).changed


def test_enabling_the_key_in_force_again_is_a_no_op(cluster: Cluster) -> None:
    cluster.controller.enable_kms("kinko-cluster")
    cluster.settle()
    text = cluster.config.read_bytes()

    again = cluster.controller.enable_kms("kinko-cluster")

    assert not again.changed
    assert cluster.config.read_bytes() == text
    assert again.status.phase == "Ready"


# --- rotation, switching keys, retiring -----------------------------------------------------


def test_a_rotation_is_noticed_and_migrated_without_an_operator(cluster: Cluster) -> None:
    cluster.controller.enable_kms("kinko-cluster")
    for i in range(10):
        cluster.secret(f"s{i}")
    cluster.settle()
    first = cluster.controller.status().root_key
    assert first is not None

    newest = cluster.rotate()
    cluster.controller.kick()
    cluster.settle()

    status = cluster.controller.status()
    assert status.phase == "Ready"
    assert status.root_key is not None
    assert status.root_key.key_id == newest != first.key_id
    assert status.root_key.facts.version_count == 2
    assert set(cluster.controller.coverage().resources["secrets"].key_ids) == {newest}


def test_switching_to_another_key_retires_the_first_once_nothing_refers_to_it(
    cluster: Cluster,
) -> None:
    cluster.controller.enable_kms("kinko-cluster")
    for i in range(5):
        cluster.secret(f"s{i}")
    cluster.settle()
    other = cluster.service.create_key(ADMIN, INSTANCE, name="other-key").id

    result = cluster.controller.enable_kms(other)

    provider = f"kinko-{other[:8]}"
    assert result.provider == provider
    assert result.socket == cluster.folder / f"kms-{other[:8]}.sock"
    assert cluster.saved[-1] == (PluginEntry(provider, other, f"kms-{other[:8]}.sock"),)
    assert cluster.registered(other)
    assert cluster.registered(cluster.root)
    names = [kms.name for kms in cluster.source.state.chains.config.kms_providers]
    assert names == [provider, "kinko"]

    cluster.settle()

    assert all(v.startswith(f"k8s:enc:kms:v2:{provider}:".encode()) for v in cluster.values())
    names = [kms.name for kms in cluster.source.state.chains.config.kms_providers]
    assert names == [provider]
    assert not cluster.registered(cluster.root)
    assert cluster.registered(other)
    # The first start's plugin keeps serving kms.sock (endpoints.json names it).
    assert set(cluster.plugins.served()) == {"kinko", provider}
    # Retiring carried the records over: no second pass, still Ready.
    status = cluster.controller.status()
    assert status.phase == "Ready"
    assert all(m.current for m in status.migrations.values())
    assert cluster.cluster.get("secrets", "default", "s3").data == {"v": b"v1"}

    # And back: the other key's plugin stops once nothing refers to it.
    cluster.controller.enable_kms("kinko-cluster")
    cluster.settle()
    assert set(cluster.plugins.served()) == {"kinko"}
    assert cluster.stopped == [kms_endpoint(cluster.folder / f"kms-{other[:8]}.sock")]
    assert not cluster.saved[-1]
    assert not cluster.registered(other)


# --- expiry and faults ----------------------------------------------------------------------


def test_an_expired_root_key_fails_writes_closed_with_the_rotate_message(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    key = cluster.service.create_key(
        ADMIN, INSTANCE, name="expiring-key", expiration_date=NOW + timedelta(days=40)
    ).id
    cluster.controller.enable_kms(key)
    cluster.secret("before")
    cluster.settle()
    assert cluster.controller.status().warnings == ()

    cluster.now += timedelta(days=20)
    status = cluster.controller.status()
    assert status.root_key is not None
    assert status.root_key.seconds_to_expiry == pytest.approx(20 * 86400)
    assert status.warnings == (
        f"root key {key} expires in 20 days (2026-04-10): rotate to a new root key before then",
    )

    cluster.now += timedelta(days=21)
    cluster.mono.now += 21  # the plugin's health cache runs out
    cluster.controller.kick()
    cluster.controller.run_once()
    # Within the write window the cached seed still writes (as kube-apiserver does) ...
    cluster.secret("in-window")
    # ... and after it, writes fail closed, saying what to do.
    cluster.mono.now += WRITE_STATE_TTL + 1
    with pytest.raises(PluginError, match="rotate to a new root key with `kinko cluster kms"):
        cluster.secret("after")
    assert "expired on 2026-04-10" in cluster.controller.status().warnings[0]
    # Reads keep working.
    assert cluster.cluster.get("secrets", "default", "before").data == {"v": b"v1"}


def test_a_plugin_going_away_pauses_the_migration_and_it_resumes(cluster: Cluster) -> None:
    for i in range(20):
        cluster.secret(f"s{i}")
    cluster.settle(1)
    cluster.controller.enable_kms("kinko-cluster")
    (switch,) = cluster.switches.values()
    switch.down = True
    cluster.mono.now += WRITE_STATE_TTL + 1

    assert not cluster.controller.run_once()

    status = cluster.controller.status()
    assert status.phase == "Paused"
    assert status.master_status == IN_PROGRESS
    secrets = status.migrations["secrets"]
    assert secrets.state == "paused"
    assert secrets.reason is not None
    assert "PluginError" in secrets.reason
    assert any("migration of secrets paused" in w for w in status.warnings)
    assert secrets.rewritten == 0

    switch.down = False
    cluster.settle()

    status = cluster.controller.status()
    assert status.phase == "Ready"
    assert all(v.startswith(b"k8s:enc:kms:v2:kinko:") for v in cluster.values())


def test_a_key_service_that_fails_mid_migration_pauses_it_too(cluster: Cluster) -> None:
    cluster.controller.enable_kms("kinko-cluster")
    for i in range(5):
        cluster.secret(f"s{i}")
    cluster.settle()
    cluster.rotate()
    # The session learns of the new version (as its Status poller would) ...
    served = cluster.plugins.served()["kinko"]
    served.plugin.refresh()
    session = cluster.source.kms_v2_session("kinko")
    assert session is not None
    session.check()
    # ... then the HSM behind the key service goes away, and the write window runs out.
    cluster.hsm.device.online = False
    cluster.mono.now += WRITE_STATE_TTL + 1

    assert not cluster.controller.run_once()
    status = cluster.controller.status()
    assert status.phase == "Paused"
    assert any("paused" in w for w in status.warnings)

    cluster.hsm.device.online = True
    cluster.mono.now += 5  # the plugin's cached failed probe runs out (3 s)
    cluster.settle()
    assert cluster.controller.status().phase == "Ready"


def test_a_forced_migration_and_a_dry_run(cluster: Cluster) -> None:
    cluster.secret("a")
    cluster.settle(1)
    cluster.controller.enable_kms("kinko-cluster")

    (report,) = cluster.controller.dry_run(["secrets"])
    assert (report.done, report.rewritten, report.dry_run) == (1, 1, True)
    assert cluster.values()[0].startswith(b"{")

    with pytest.raises(InvalidArgument, match="resources: expected some of secrets"):
        cluster.controller.migrate(["pods"])
    cluster.settle()
    revision = cluster.store.revision
    status = cluster.controller.migrate(["secrets"])
    assert status.phase == "Ready"
    cluster.settle(1)
    # A forced pass ran (its record moved) and rewrote nothing.
    record = cluster.controller.migrator.state("secrets")
    assert record is not None
    assert record.revision > revision
    assert record.rewritten == 0


def test_metrics_show_expiry_and_progress(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    cluster = Cluster(tmp_path)
    key = cluster.service.create_key(
        ADMIN, INSTANCE, name="expiring-key", expiration_date=NOW + timedelta(days=10)
    ).id
    cluster.secret("a")
    cluster.controller.enable_kms(key)
    cluster.settle()
    registry = CollectorRegistry()
    registry.register(cluster.controller.collector())

    text = generate_latest(registry).decode()

    provider = f"kinko-{key[:8]}"
    assert f'kinko_root_key_expiry_seconds{{provider="{provider}"}} 864000.0' in text
    assert 'kinko_migration_objects_done{resource="secrets"} 1.0' in text
    assert 'kinko_migration_state{resource="secrets",state="done"} 1.0' in text
    assert 'kinko_migration_state{resource="secrets",state="paused"} 0.0' in text


def test_the_checkpoint_records_are_the_migrators(cluster: Cluster) -> None:
    cluster.controller.enable_kms("kinko-cluster")
    cluster.settle()
    assert cluster.store.get(CHECKPOINT_PREFIX + b"secrets") is not None


def test_a_reconcile_that_read_the_config_before_an_enable_does_not_undo_it(
    tmp_path: Path,
) -> None:
    # Regression: the supervisor read the loaded configuration before taking the config lock;
    # an enable holding the lock meanwhile served a new plugin and loaded a config naming it,
    # and the stale read then retired that plugin and dropped its registration.
    c = Cluster(tmp_path)
    c.controller.enable_kms("kinko-cluster")
    c.secret("s0")
    c.settle()
    other = c.service.create_key(ADMIN, INSTANCE, name="other-key").id
    c.config.write_text(c.config.read_text() + "# edited\n")
    c.source.reload_if_changed()
    stale = c.source.state  # what the supervisor read before it waited for the lock
    enabled = c.controller.enable_kms(other)
    real = c.controller._source

    class FirstReadStale:
        reads = 0

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        @property
        def state(self) -> object:
            FirstReadStale.reads += 1
            return stale if FirstReadStale.reads == 1 else real.state

    c.controller._source = FirstReadStale()  # type: ignore[assignment]
    try:
        c.controller._reconcile_if_changed()
    finally:
        c.controller._source = real
    assert enabled.provider in c.plugins.served()
    assert c.registered(other)
    c.secret("after")
