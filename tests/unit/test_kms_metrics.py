"""KmsMetrics and InstrumentedKmsV2Api: counters move, the histogram observes, errors are
counted by gRPC code, the key_id shows only as its hash, and no label carries key material."""

from __future__ import annotations

import base64
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from kinko.errors import InvalidArgument, WrongState
from kinko.kms.envelope import key_id_hash
from kinko.kms.metrics import InstrumentedKmsV2Api, KmsMetrics, parse_listen, serve_metrics
from kinko.kms.plugin import LocalKeyPlugin
from kinko.kms.rootkey import HEALTH_TTL
from tests.rootkey_world import SEED, make_world


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def all_label_values(registry: CollectorRegistry) -> list[str]:
    return [
        value
        for metric in registry.collect()
        for s in metric.samples
        for value in s.labels.values()
    ]


def test_counters_histogram_and_key_id_hash_over_the_root_key_plugin() -> None:
    w = make_world()
    metrics = KmsMetrics()
    api = InstrumentedKmsV2Api(w.plugin(), metrics)
    reg = metrics.registry
    status = api.status()
    r = api.encrypt(SEED, uid="u")
    assert api.decrypt(r.ciphertext, uid="u", key_id=r.key_id, annotations=r.annotations) == SEED
    for method in ("Status", "Encrypt", "Decrypt"):
        assert sample(reg, "kinko_kms_operations_total", method=method, outcome="ok") == 1
        assert sample(reg, "kinko_kms_operation_seconds_count", method=method) == 1
        assert sample(reg, "kinko_kms_operation_seconds_sum", method=method) > 0
    assert sample(reg, "kinko_kms_healthy") == 1
    assert sample(reg, "kinko_kms_key_id_info", key_id_hash=key_id_hash(status.key_id)) == 1

    w.disable()
    with pytest.raises(WrongState):
        api.encrypt(SEED, uid="u")
    with pytest.raises(WrongState):
        api.decrypt(r.ciphertext, uid="u", key_id=r.key_id, annotations=r.annotations)
    assert sample(reg, "kinko_kms_operations_total", method="Encrypt", outcome="error") == 1
    assert sample(reg, "kinko_kms_errors_total", method="Encrypt", code="FAILED_PRECONDITION") == 1
    assert sample(reg, "kinko_kms_errors_total", method="Decrypt", code="FAILED_PRECONDITION") == 1
    assert sample(reg, "kinko_kms_operation_seconds_count", method="Encrypt") == 2
    w.mono.advance(HEALTH_TTL)
    assert api.status().healthz != "ok"
    assert sample(reg, "kinko_kms_healthy") == 0
    assert sample(reg, "kinko_kms_operations_total", method="Status", outcome="unhealthy") == 1

    forbidden = [
        SEED.hex(),
        base64.b64encode(SEED).decode(),
        r.ciphertext.hex(),
        base64.b64encode(r.ciphertext).decode(),
        *(value.decode() for value in r.annotations.values()),
        r.key_id,
    ]
    for value in all_label_values(reg):
        for form in forbidden:
            assert form not in value


def test_a_key_id_change_replaces_the_info_series() -> None:
    w = make_world()
    metrics = KmsMetrics()
    api = InstrumentedKmsV2Api(w.plugin(), metrics)
    first = api.status().key_id
    w.rotate()
    w.mono.advance(HEALTH_TTL)
    second = api.status().key_id
    reg = metrics.registry
    assert sample(reg, "kinko_kms_key_id_info", key_id_hash=key_id_hash(second)) == 1
    assert reg.get_sample_value("kinko_kms_key_id_info", {"key_id_hash": key_id_hash(first)}) is (
        None
    )


def test_the_local_key_plugin_gets_metrics_too() -> None:
    metrics = KmsMetrics()
    api = InstrumentedKmsV2Api(LocalKeyPlugin(bytes(32)), metrics)
    r = api.encrypt(SEED, uid="u")
    with pytest.raises(InvalidArgument):
        api.decrypt(r.ciphertext, uid="u", key_id="other", annotations=r.annotations)
    reg = metrics.registry
    assert sample(reg, "kinko_kms_operations_total", method="Encrypt", outcome="ok") == 1
    assert sample(reg, "kinko_kms_errors_total", method="Decrypt", code="INVALID_ARGUMENT") == 1


def test_two_metrics_objects_never_share_counters() -> None:
    a, b = KmsMetrics(), KmsMetrics()
    InstrumentedKmsV2Api(LocalKeyPlugin(bytes(32)), a).status()
    assert sample(a.registry, "kinko_kms_operations_total", method="Status", outcome="ok") == 1
    assert sample(b.registry, "kinko_kms_operations_total", method="Status", outcome="ok") == 0


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:0", ("::1", 0)), ("host:1", ("host", 1))],
)
def test_parse_listen(text: str, parsed: tuple[str, int]) -> None:
    assert parse_listen(text) == parsed


@pytest.mark.parametrize("text", ["9464", ":9464", "host:", "host:70000", "host:x"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_listen(text)


def test_metrics_are_served_over_http() -> None:
    metrics = KmsMetrics()
    InstrumentedKmsV2Api(LocalKeyPlugin(bytes(32)), metrics).status()
    server = serve_metrics(metrics.registry, "127.0.0.1:0")
    try:
        port = server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'kinko_kms_operations_total{method="Status",outcome="ok"} 1.0' in body
