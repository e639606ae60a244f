"""Cluster metrics over a real EncryptionConfigSource, EncryptedObjects and ClusterService.

The source reads a temp EncryptionConfiguration (KMS v2 then aescbc for secrets, aescbc for
configmaps); the KMS v2 provider is LocalKeyPlugin served in-process through a KmsV2Api
factory, with a fake clock. Samples are read back with ``registry.get_sample_value``. The
object counter runs with a fake clock and an inline or a real thread; no test sleeps.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import count
from pathlib import Path

import pytest

from kinko.cluster.encryption import EncryptedObjects, EncryptionConfigSource
from kinko.cluster.metrics import KEY_ID_SERIES, ClusterMetrics, ObjectCounts
from kinko.cluster.service import ClusterService
from kinko.crypto.config import KmsConfig
from kinko.crypto.types import DekSourceType, EncryptedObject, KmsV1Unwrapper
from kinko.errors import (
    DecryptionError,
    InvalidArgument,
    PluginError,
    StoreUnavailable,
    UnreadableValue,
)
from kinko.kms.envelope import KmsV2Session, key_id_hash
from kinko.kms.plugin import LocalKeyPlugin, key_id_for
from kinko.kms.port import EncryptResult, KmsV2Api, StatusResult
from kinko.store.memory import MemoryStore
from kinko.store.port import Page, Put

KEK = bytes(range(32))
KEK_ID = key_id_for(KEK)
CBC_SECRET = base64.b64encode(bytes(range(2, 34))).decode()
OTHER_SECRET = base64.b64encode(bytes(range(5, 37))).decode()
NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
WALL = 1_700_000_000.0
WAIT = 10.0  # Upper bound for waits on a background thread; never reached when correct.

KMS_PREFIX = "k8s:enc:kms:v2:plug:"
CBC_PREFIX = "k8s:enc:aescbc:v1:c2:"


def config(cbc_secret: str = CBC_SECRET, *, kms: bool = True) -> str:
    kms_provider = (
        "      - kms:\n          apiVersion: v2\n          name: plug\n"
        "          endpoint: unix:///tmp/kinko-test-kms.sock\n"
    )
    cbc = (
        "      - aescbc:\n          keys:\n"
        f"            - name: c2\n              secret: {cbc_secret}\n"
    )
    return (
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
        "resources:\n"
        "  - resources: [secrets]\n    providers:\n" + (kms_provider if kms else "") + cbc + ""
        "  - resources: [configmaps]\n    providers:\n" + cbc
    )


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Plugin:
    """A KmsV2Api over LocalKeyPlugin that can be made unreachable or answer a bad key_id."""

    plugin: LocalKeyPlugin
    healthy: bool = True
    status_key_id: str | None = None

    def status(self) -> StatusResult:
        if not self.healthy:
            raise PluginError("KMS plugin plug: unreachable")
        result = self.plugin.status()
        if self.status_key_id is not None:
            return replace(result, key_id=self.status_key_id)
        return result

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        return self.plugin.encrypt(plaintext, uid=uid)

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        if not self.healthy:
            raise PluginError("KMS plugin plug: unreachable")
        return self.plugin.decrypt(ciphertext, uid=uid, key_id=key_id, annotations=annotations)


def no_v1(_: KmsConfig) -> KmsV1Unwrapper:
    raise AssertionError("no KMS v1 provider in these tests")


@dataclass
class Rig:
    path: Path
    plugin: Plugin
    source: EncryptionConfigSource
    metrics: ClusterMetrics
    store: MemoryStore
    service: ClusterService
    clock: FakeClock

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def inline(fn: Callable[[], None]) -> None:
    fn()


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    path = tmp_path / "encryption.yaml"
    path.write_text(config())
    plugin = Plugin(LocalKeyPlugin(KEK))
    clock = FakeClock()

    def kms_v2(_: KmsConfig) -> KmsV2Api:
        return plugin

    source = EncryptionConfigSource(
        path, kms_v2=kms_v2, kms_v1=no_v1, poll_kms=False, clock=clock, wall_clock=lambda: WALL
    )
    metrics = ClusterMetrics(wall_clock=lambda: WALL)
    store = MemoryStore()
    metrics.instrument(source, store=store, clock=clock, spawn=inline)
    uids = count(1)
    service = ClusterService(store, source, clock=lambda: NOW, new_uid=lambda: f"uid-{next(uids)}")
    return Rig(path, plugin, source, metrics, store, service, clock)


def secret(name: str, value: bytes = b"hunter2") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"password": base64.b64encode(value).decode()},
    }


def configmap(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"colour": "blue"},
    }


# --------------------------------------------------------------------------- requests


def test_observe_request_counts_by_verb_resource_code_and_times() -> None:
    metrics = ClusterMetrics()
    metrics.observe_request(verb="LIST", resource="secrets", code=200, seconds=0.01)
    metrics.observe_request(verb="list", resource="secrets", code=200, seconds=0.03)
    metrics.observe_request(verb="GET", resource="configmaps", code=404, seconds=0.002)
    reg = metrics.registry
    assert reg.get_sample_value(
        "apiserver_request_total", {"verb": "LIST", "resource": "secrets", "code": "200"}
    ) == pytest.approx(2)
    assert reg.get_sample_value(
        "apiserver_request_total", {"verb": "GET", "resource": "configmaps", "code": "404"}
    ) == pytest.approx(1)
    assert reg.get_sample_value(
        "apiserver_request_duration_seconds_count", {"verb": "LIST", "resource": "secrets"}
    ) == pytest.approx(2)
    assert reg.get_sample_value(
        "apiserver_request_duration_seconds_sum", {"verb": "LIST", "resource": "secrets"}
    ) == pytest.approx(0.04)


def test_request_labels_outside_the_fixed_sets_collapse_to_other() -> None:
    metrics = ClusterMetrics()
    metrics.observe_request(verb="BREW", resource="teapots-of-mallory", code=418, seconds=0.0)
    metrics.observe_request(verb="GET", resource="secrets", code=1000, seconds=0.0)
    reg = metrics.registry
    assert reg.get_sample_value(
        "apiserver_request_total", {"verb": "OTHER", "resource": "other", "code": "418"}
    ) == pytest.approx(1)
    assert reg.get_sample_value(
        "apiserver_request_total", {"verb": "GET", "resource": "secrets", "code": "other"}
    ) == pytest.approx(1)
    assert b"teapots-of-mallory" not in metrics.render()[0]


def test_resources_given_to_the_metrics_are_kept_as_labels() -> None:
    metrics = ClusterMetrics(resources=("secrets", "namespaces"))
    metrics.observe_request(verb="LIST", resource="namespaces", code=200, seconds=0.0)
    assert metrics.registry.get_sample_value(
        "apiserver_request_total", {"verb": "LIST", "resource": "namespaces", "code": "200"}
    ) == pytest.approx(1)


def test_render_is_the_text_exposition_of_the_own_registry() -> None:
    metrics = ClusterMetrics()
    metrics.observe_request(verb="GET", resource="secrets", code=200, seconds=0.5)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert 'apiserver_request_total{code="200",resource="secrets",verb="GET"} 1.0' in text
    # Two instances never share series: each has its own registry.
    assert b"apiserver_request_total{" not in ClusterMetrics().render()[0]


def test_unreadable_objects_are_counted_by_resource() -> None:
    metrics = ClusterMetrics()
    metrics.observe_unreadable("secrets", 3)
    metrics.observe_unreadable("secrets", 0)
    metrics.observe_unreadable("secrets", 1)
    assert metrics.registry.get_sample_value(
        "kinko_cluster_unreadable_objects_total", {"resource": "secrets"}
    ) == pytest.approx(4)


# --------------------------------------------------------------------------- envelope


def test_a_create_and_get_through_kms_v2_record_calls_key_ids_and_transformations(
    rig: Rig,
) -> None:
    rig.service.create("secrets", "default", secret("db"))
    rig.service.get("secrets", "default", "db")
    digest = key_id_hash(KEK_ID)
    kms = "apiserver_envelope_encryption_kms_operations_latency_seconds_count"
    assert rig.sample(
        kms, provider_name="plug", method_name="Status", grpc_status_code="OK"
    ) == pytest.approx(1)
    assert rig.sample(
        kms, provider_name="plug", method_name="Encrypt", grpc_status_code="OK"
    ) == pytest.approx(1)
    # The write seed is cached: the read makes no Decrypt call.
    assert (
        rig.sample(kms, provider_name="plug", method_name="Decrypt", grpc_status_code="OK") is None
    )
    key_ids = "apiserver_envelope_encryption_key_id_hash_total"
    for transformation in ("to_storage", "from_storage"):
        assert rig.sample(
            key_ids,
            key_id_hash=digest,
            provider_name="plug",
            transformation_type=transformation,
        ) == pytest.approx(1)
        assert rig.sample(
            "apiserver_storage_transformation_operations_total",
            transformation_type=transformation,
            transformer_prefix=KMS_PREFIX,
            status="OK",
        ) == pytest.approx(1)
        assert rig.sample(
            "apiserver_storage_transformation_duration_seconds_count",
            transformation_type=transformation,
            transformer_prefix=KMS_PREFIX,
        ) == pytest.approx(1)
    assert rig.sample(
        "apiserver_envelope_encryption_dek_source_cache_size", provider_name="plug"
    ) == pytest.approx(1)


def test_every_read_records_its_key_id_including_reads_of_a_seed_already_held(
    rig: Rig,
) -> None:
    # The first read looks the seed up; the next ones use the seed the transformer keeps.
    rig.service.create("secrets", "default", secret("db"))
    for _ in range(3):
        rig.service.get("secrets", "default", "db")
    assert rig.sample(
        "apiserver_envelope_encryption_key_id_hash_total",
        key_id_hash=key_id_hash(KEK_ID),
        provider_name="plug",
        transformation_type="from_storage",
    ) == pytest.approx(3)


def test_a_cache_miss_records_a_decrypt_call(rig: Rig) -> None:
    rig.service.create("secrets", "default", secret("db"))
    # A second source (another process) has an empty DEK cache: its read calls Decrypt.
    metrics = ClusterMetrics()
    other = EncryptionConfigSource(
        rig.path, kms_v2=lambda _: rig.plugin, kms_v1=no_v1, poll_kms=False, clock=rig.clock
    )
    metrics.instrument(other)
    ClusterService(rig.store, other, clock=lambda: NOW).get("secrets", "default", "db")
    assert metrics.registry.get_sample_value(
        "apiserver_envelope_encryption_kms_operations_latency_seconds_count",
        {"provider_name": "plug", "method_name": "Decrypt", "grpc_status_code": "OK"},
    ) == pytest.approx(1)
    # The read primed the session (its own write seed) and cached the unwrapped one.
    assert metrics.registry.get_sample_value(
        "apiserver_envelope_encryption_dek_source_cache_size", {"provider_name": "plug"}
    ) == pytest.approx(2)


def test_aescbc_writes_are_recorded_under_their_prefix_and_carry_no_key_id(rig: Rig) -> None:
    rig.service.create("configmaps", "default", configmap("settings"))
    rig.service.list("configmaps", "default")
    for transformation in ("to_storage", "from_storage"):
        assert rig.sample(
            "apiserver_storage_transformation_operations_total",
            transformation_type=transformation,
            transformer_prefix=CBC_PREFIX,
            status="OK",
        ) == pytest.approx(1)
    body = rig.metrics.render()[0].decode()
    assert "apiserver_envelope_encryption_key_id_hash_total{" not in body


def test_an_unreadable_value_is_a_failed_from_storage_transformation(
    rig: Rig, tmp_path: Path
) -> None:
    rig.service.create("configmaps", "default", configmap("settings"))
    # The aescbc key changes: the stored value matches the prefix but no longer opens.
    rig.path.write_text(config(OTHER_SECRET))
    assert rig.source.reload_if_changed().changed
    page = rig.service.list("configmaps", "default")
    assert len(page.unreadable) == 1
    with pytest.raises(UnreadableValue):
        rig.service.get("configmaps", "default", "settings")
    assert rig.sample(
        "apiserver_storage_transformation_operations_total",
        transformation_type="from_storage",
        transformer_prefix=CBC_PREFIX,
        status="Unknown",
    ) == pytest.approx(2)
    # Failed transformations are counted, not timed (as kube-apiserver).
    assert (
        rig.sample(
            "apiserver_storage_transformation_duration_seconds_count",
            transformation_type="from_storage",
            transformer_prefix=CBC_PREFIX,
        )
        is None
    )


def test_a_value_matching_no_prefix_is_not_a_transformation(rig: Rig) -> None:
    rig.store.txn([Put(b"/registry/configmaps/default/odd", b"k8s:enc:secretbox:v1:x:zz")])
    page = rig.service.list("configmaps", "default")
    assert len(page.unreadable) == 1
    body = rig.metrics.render()[0].decode()
    assert 'transformation_type="from_storage"' not in body


def test_an_unreachable_plugin_records_unavailable_calls_and_writes(rig: Rig) -> None:
    rig.plugin.healthy = False
    with pytest.raises(PluginError):
        rig.service.create("secrets", "default", secret("db"))
    assert rig.sample(
        "apiserver_envelope_encryption_kms_operations_latency_seconds_count",
        provider_name="plug",
        method_name="Status",
        grpc_status_code="Unavailable",
    ) == pytest.approx(1)
    assert rig.sample(
        "apiserver_storage_transformation_operations_total",
        transformation_type="to_storage",
        transformer_prefix=KMS_PREFIX,
        status="Unavailable",
    ) == pytest.approx(1)


def test_a_refused_decrypt_records_its_grpc_code(rig: Rig) -> None:
    session = KmsV2Session(Plugin(LocalKeyPlugin(KEK)), name="plug", observer=rig.metrics)
    state = session.write_state()
    other = KmsV2Session(Plugin(LocalKeyPlugin(bytes(range(9, 41)))), name="other")
    other.observer = rig.metrics
    obj = EncryptedObject(
        encrypted_data=b"",
        key_id=state.key_id,
        encrypted_dek_source=state.encrypted_dek_source,
        annotations=state.annotations,
        dek_source_type=DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
    )
    with pytest.raises(DecryptionError):
        other.dek_source(obj)
    assert rig.sample(
        "apiserver_envelope_encryption_kms_operations_latency_seconds_count",
        provider_name="other",
        method_name="Decrypt",
        grpc_status_code="InvalidArgument",
    ) == pytest.approx(1)


@pytest.mark.parametrize(("key_id", "error"), [("", "empty"), ("k" * 1025, "too_long")])
def test_an_invalid_key_id_in_status_is_counted(rig: Rig, key_id: str, error: str) -> None:
    rig.plugin.status_key_id = key_id
    assert rig.source.chain_for("secrets").first.kind == "kms"  # creates the session
    live = rig.source.kms_v2_session("plug")
    assert live is not None
    with pytest.raises(PluginError):
        live.check()
    assert rig.sample(
        "apiserver_envelope_encryption_invalid_key_id_from_status_total",
        provider_name="plug",
        error=error,
    ) == pytest.approx(1)
    if key_id:
        assert key_id not in rig.metrics.render()[0].decode()


def test_key_id_series_are_bounded_least_recently_used_first() -> None:
    metrics = ClusterMetrics()
    hashes = [key_id_hash(f"kid-{i}") for i in range(KEY_ID_SERIES + 1)]
    for digest in hashes:
        metrics.on_key_id("plug", digest, "from_storage")
    name = "apiserver_envelope_encryption_key_id_hash_total"

    def value(digest: str) -> float | None:
        return metrics.registry.get_sample_value(
            name,
            {"key_id_hash": digest, "provider_name": "plug", "transformation_type": "from_storage"},
        )

    assert value(hashes[0]) is None
    assert value(hashes[1]) == pytest.approx(1)
    assert value(hashes[-1]) == pytest.approx(1)


def test_an_observer_set_after_the_session_exists_reaches_it(tmp_path: Path) -> None:
    path = tmp_path / "encryption.yaml"
    path.write_text(config())
    plugin = Plugin(LocalKeyPlugin(KEK))
    source = EncryptionConfigSource(
        path, kms_v2=lambda _: plugin, kms_v1=no_v1, poll_kms=False, clock=FakeClock()
    )
    service = ClusterService(MemoryStore(), source, clock=lambda: NOW)
    service.create("secrets", "default", secret("before"))
    metrics = ClusterMetrics()
    metrics.instrument(source)
    service.create("secrets", "default", secret("after"))
    assert metrics.registry.get_sample_value(
        "apiserver_envelope_encryption_key_id_hash_total",
        {
            "key_id_hash": key_id_hash(KEK_ID),
            "provider_name": "plug",
            "transformation_type": "to_storage",
        },
    ) == pytest.approx(1)
    with pytest.raises(InvalidArgument, match="already instrumenting"):
        metrics.instrument(source)


def test_an_explicit_observer_of_encrypted_objects_wins_over_the_sources(rig: Rig) -> None:
    metrics = ClusterMetrics()
    objects = EncryptedObjects(rig.store, rig.source, observer=metrics)
    objects.write("configmaps", b"/registry/configmaps/default/x", b"{}", expect=0)
    assert metrics.registry.get_sample_value(
        "apiserver_storage_transformation_operations_total",
        {"transformation_type": "to_storage", "transformer_prefix": CBC_PREFIX, "status": "OK"},
    ) == pytest.approx(1)
    assert (
        rig.sample(
            "apiserver_storage_transformation_operations_total",
            transformation_type="to_storage",
            transformer_prefix=CBC_PREFIX,
            status="OK",
        )
        is None
    )


# --------------------------------------------------------------------------- reloads


def test_reloads_are_counted_stamped_and_the_config_hash_follows(rig: Rig) -> None:
    first = rig.source.config_hash
    assert rig.sample("kinko_encryption_config_info", config_hash=first) == pytest.approx(1)
    assert not rig.source.reload_if_changed().changed  # unchanged: not a reload
    rig.path.write_text(config(OTHER_SECRET))
    assert rig.source.reload_if_changed().changed
    second = rig.source.config_hash
    rig.path.write_text("kind: nonsense\n")
    assert rig.source.reload_if_changed().error is not None
    assert rig.source.reload_if_changed().error is not None
    prefix = "apiserver_encryption_config_controller_automatic_reload_"
    assert rig.sample(prefix + "success_total") == pytest.approx(1)
    assert rig.sample(prefix + "failures_total") == pytest.approx(2)
    assert rig.sample(prefix + "last_timestamp_seconds", status="success") == pytest.approx(WALL)
    assert rig.sample(prefix + "last_timestamp_seconds", status="failure") == pytest.approx(WALL)
    assert rig.sample("kinko_encryption_config_info", config_hash=second) == pytest.approx(1)
    assert rig.sample("kinko_encryption_config_info", config_hash=first) is None


def test_a_source_without_observer_records_nothing_and_works(tmp_path: Path) -> None:
    path = tmp_path / "encryption.yaml"
    path.write_text(config())
    plugin = Plugin(LocalKeyPlugin(KEK))
    source = EncryptionConfigSource(
        path, kms_v2=lambda _: plugin, kms_v1=no_v1, poll_kms=False, clock=FakeClock()
    )
    assert source.observer is None
    service = ClusterService(MemoryStore(), source, clock=lambda: NOW)
    service.create("secrets", "default", secret("db"))
    assert service.get("secrets", "default", "db").metadata.name == "db"
    live = source.kms_v2_session("plug")
    assert live is not None
    assert live.observer is None


# --------------------------------------------------------------------------- object counts


def objects_sample(rig: Rig, resource: str, provider: str | None = None) -> float | None:
    if provider is None:
        return rig.sample("apiserver_storage_objects", resource=resource)
    return rig.sample("kinko_cluster_objects", resource=resource, provider=provider)


def test_objects_are_counted_per_resource_and_prefix_at_most_every_interval(rig: Rig) -> None:
    rig.service.create("secrets", "default", secret("a"))
    rig.service.create("secrets", "default", secret("b"))
    rig.service.create("configmaps", "default", configmap("c"))
    rig.store.txn(
        [
            Put(b"/registry/secrets/default/plain", b'{"kind":"Secret"}'),
            Put(b"/registry/secrets/default/lost", b"k8s:enc:aesgcm:v1:gone:xx"),
        ]
    )
    assert objects_sample(rig, "secrets") == pytest.approx(4)
    assert objects_sample(rig, "secrets", KMS_PREFIX) == pytest.approx(2)
    assert objects_sample(rig, "secrets", "identity") == pytest.approx(1)
    assert objects_sample(rig, "secrets", "unknown") == pytest.approx(1)
    assert objects_sample(rig, "configmaps") == pytest.approx(1)
    assert objects_sample(rig, "configmaps", CBC_PREFIX) == pytest.approx(1)

    rig.service.create("configmaps", "default", configmap("d"))
    rig.clock.now += 59.0
    assert objects_sample(rig, "configmaps") == pytest.approx(1)  # cached
    rig.clock.now += 1.0
    assert objects_sample(rig, "configmaps") == pytest.approx(2)  # rescanned


def test_an_empty_store_counts_zero_objects(rig: Rig) -> None:
    assert objects_sample(rig, "secrets") == pytest.approx(0)
    assert objects_sample(rig, "secrets", "identity") is None


class BlockingStore(MemoryStore):
    """A MemoryStore whose range blocks until released, or fails when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.block = False
        self.fail = False
        self.ranges = 0

    def range(
        self, prefix: bytes, *, start_after: bytes = b"", limit: int = 500, revision: int = 0
    ) -> Page:
        self.ranges += 1
        if self.fail:
            raise StoreUnavailable("store down")
        if self.block:
            self.entered.set()
            assert self.release.wait(WAIT)
        return super().range(prefix, start_after=start_after, limit=limit, revision=revision)


def test_a_scrape_returns_the_cached_counts_while_a_scan_runs(rig: Rig) -> None:
    store = BlockingStore()
    store.txn([Put(b"/registry/secrets/default/a", b"plain")])
    clock = FakeClock()
    threads: list[threading.Thread] = []

    def spawn(fn: Callable[[], None]) -> None:
        thread = threading.Thread(target=fn, daemon=True)
        threads.append(thread)
        thread.start()

    counts = ObjectCounts(store, rig.source, resources=("secrets",), clock=clock, spawn=spawn)
    assert counts.refresh()
    store.txn([Put(b"/registry/secrets/default/b", b"plain")])
    store.block = True
    list(counts.collect())  # starts a background scan (never scanned by a scrape yet)
    assert store.entered.wait(WAIT)
    assert counts.running
    families = {m.name: m for m in counts.collect()}  # answers at once, from the cache
    assert [s.value for s in families["apiserver_storage_objects"].samples] == [1]
    assert len(threads) == 1  # no second scan while one runs
    store.release.set()
    threads[0].join(WAIT)
    assert not counts.running
    families = {m.name: m for m in counts.collect()}
    assert [s.value for s in families["apiserver_storage_objects"].samples] == [2]
    assert len(threads) == 1  # the interval has not passed


def test_a_failed_scan_keeps_the_last_counts_and_retries_after_the_interval(rig: Rig) -> None:
    store = BlockingStore()
    store.txn([Put(b"/registry/secrets/default/a", b"plain")])
    clock = FakeClock()
    counts = ObjectCounts(
        store, rig.source, resources=("secrets",), clock=clock, spawn=inline, scan_interval=30
    )
    list(counts.collect())
    assert counts.counts == {"secrets": {"identity": 1}}
    store.fail = True
    clock.now += 30
    list(counts.collect())
    assert counts.counts == {"secrets": {"identity": 1}}
    ranges = store.ranges
    list(counts.collect())  # within the interval of the failed attempt: no new scan
    assert store.ranges == ranges
    store.fail = False
    clock.now += 30
    list(counts.collect())
    assert store.ranges == ranges + 1


def test_scans_read_the_store_page_by_page(rig: Rig) -> None:
    store = BlockingStore()
    store.txn([Put(f"/registry/secrets/default/s{i}".encode(), b"plain") for i in range(7)])
    counts = ObjectCounts(store, rig.source, resources=("secrets",), spawn=inline, page_rows=3)
    assert counts.refresh()
    assert counts.counts == {"secrets": {"identity": 7}}
    assert store.ranges == 3


def test_object_counts_refuse_a_non_positive_interval(rig: Rig) -> None:
    with pytest.raises(InvalidArgument, match="scan_interval"):
        ObjectCounts(rig.store, rig.source, scan_interval=0)


# --------------------------------------------------------------------------- no leaks


def test_a_scrape_carries_no_secret_value_object_name_or_key(rig: Rig) -> None:
    value = b"correct horse battery staple"
    rig.service.create("secrets", "default", secret("payroll-db-credentials", value))
    rig.service.create("configmaps", "default", configmap("top-secret-settings"))
    rig.service.get("secrets", "default", "payroll-db-credentials")
    rig.service.list("secrets", "default")
    rig.metrics.observe_request(verb="GET", resource="secrets", code=200, seconds=0.1)
    body = rig.metrics.render()[0]
    text = body.decode()
    assert "apiserver_storage_transformation_operations_total" in text
    assert "apiserver_storage_objects" in text
    for needle in (
        value,
        base64.b64encode(value),
        b"payroll-db-credentials",
        b"top-secret-settings",
        b"blue",
        CBC_SECRET.encode(),
        base64.b64decode(CBC_SECRET),
        KEK,
        KEK_ID.encode(),  # key_ids appear only as their hash
    ):
        assert needle not in body
    for entry in rig.store.range(b"/registry/").entries:
        assert entry.value not in body
        assert entry.key not in body


@pytest.mark.parametrize("size", [7, 20_000])
def test_a_list_records_every_value_once_whether_opened_alone_or_with_its_page(
    rig: Rig, size: int
) -> None:
    # 20,000 bytes: a value whose encryptedData length takes three bytes is opened alone.
    for i in range(5):
        rig.service.create("secrets", "default", secret(f"db-{i}", bytes([i]) * size))
    # The first LIST opens its values one by one (the seed is not kept yet); the second
    # opens the whole page at once with the kept seed.
    for _ in range(2):
        assert len(rig.service.list("secrets", "default").items) == 5
    assert rig.sample(
        "apiserver_envelope_encryption_key_id_hash_total",
        key_id_hash=key_id_hash(KEK_ID),
        provider_name="plug",
        transformation_type="from_storage",
    ) == pytest.approx(10)
    assert rig.sample(
        "apiserver_storage_transformation_operations_total",
        transformation_type="from_storage",
        transformer_prefix=KMS_PREFIX,
        status="OK",
    ) == pytest.approx(10)
    assert rig.sample(
        "apiserver_storage_transformation_duration_seconds_count",
        transformation_type="from_storage",
        transformer_prefix=KMS_PREFIX,
    ) == pytest.approx(10)
