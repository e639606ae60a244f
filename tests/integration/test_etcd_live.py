"""`kinko etcd` against a real etcd-server: audit counts, CAS migration, KMS v2 rotation.

The store is seeded with what a cluster accumulates: plaintext written before encryption was
enabled, values under an old key, values under the current key, and values that no provider
can open (random bytes, a flipped byte, a value copied from another key, a retired key).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kinko import etcdtool
from kinko.cli.main import cli
from kinko.kms.plugin import LocalKeyPlugin, key_id_for
from kinko.kms.server import KmsV2Server
from kinko.store.etcd import MAX_TXN_OPS, CasPut, EtcdClient, KeyValue
from tests.etcd_values import (
    Keys,
    configmap_payload,
    provider_yaml,
    secret_payload,
    write_config,
)
from tests.integration.etcd_fixture import free_port

pytestmark = pytest.mark.etcd

PROVIDERS = ("gcm", "old", "identity")


def run(args: list[str]) -> Result:
    return CliRunner().invoke(cli, ["etcd", *args])


def ok_json(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert isinstance(obj, dict)
    return obj


def _tampered(keys: Keys, key: bytes) -> bytes:
    sealed = bytearray(keys.seal("gcm", secret_payload("tampered"), key))
    sealed[-5] ^= 0x40
    return bytes(sealed)


def seed(etcd: EtcdClient, keys: Keys) -> dict[bytes, bytes]:
    """15 values; see the module docstring. Returns key → the plaintext of the readable ones."""
    plaintexts: dict[bytes, bytes] = {}
    values: dict[bytes, bytes] = {}

    def add(key: str, plaintext: bytes | None, value: bytes) -> None:
        values[key.encode()] = value
        if plaintext is not None:
            plaintexts[key.encode()] = plaintext

    for name in ("plain1", "plain2"):
        add(f"/registry/secrets/ns/{name}", secret_payload(name), secret_payload(name))
    for name in ("old1", "old2", "old3"):
        key = f"/registry/secrets/ns/{name}"
        add(key, secret_payload(name), keys.seal("old", secret_payload(name), key.encode()))
    for name in ("new1", "new2"):
        key = f"/registry/secrets/ns/{name}"
        add(key, secret_payload(name), keys.seal("gcm", secret_payload(name), key.encode()))
    add("/registry/secrets/ns/garbage", None, b"k8s:enc:aesgcm:v1:gcm:" + os.urandom(64))
    add("/registry/secrets/ns/tampered", None, _tampered(keys, b"/registry/secrets/ns/tampered"))
    add(
        "/registry/secrets/ns/moved",
        None,
        keys.seal("gcm", secret_payload("moved"), b"/registry/secrets/ns/elsewhere"),
    )
    cm = "/registry/configmaps/ns/"
    add(
        cm + "old",
        configmap_payload("old"),
        keys.seal("old", configmap_payload("old"), (cm + "old").encode()),
    )
    add(
        cm + "new",
        configmap_payload("new"),
        keys.seal("gcm", configmap_payload("new"), (cm + "new").encode()),
    )
    add(cm + "retired", None, b"k8s:enc:aesgcm:v1:retired:" + os.urandom(48))
    add(cm + "plain", configmap_payload("plain"), configmap_payload("plain"))
    add("/registry/namespaces/default", b'{"kind":"Namespace"}', b'{"kind":"Namespace"}')
    etcd.cas_batch([CasPut(key, value, 0) for key, value in values.items()])
    return plaintexts


STALE = [
    b"/registry/secrets/ns/plain1",
    b"/registry/secrets/ns/plain2",
    b"/registry/secrets/ns/old1",
    b"/registry/secrets/ns/old2",
    b"/registry/secrets/ns/old3",
    b"/registry/configmaps/ns/old",
    b"/registry/configmaps/ns/plain",
]
UNDECRYPTABLE = [
    b"/registry/secrets/ns/garbage",
    b"/registry/secrets/ns/tampered",
    b"/registry/secrets/ns/moved",
    b"/registry/configmaps/ns/retired",
]


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def config(tmp_path: Path, keys: Keys) -> str:
    return str(write_config(tmp_path / "enc.yaml", keys, *PROVIDERS))


def snapshot(etcd: EtcdClient) -> dict[bytes, KeyValue]:
    return {kv.key: kv for kv in etcd.range_prefix(b"/registry/")}


def test_audit_counts_exactly(
    etcd: EtcdClient, etcd_endpoints: list[str], keys: Keys, config: str
) -> None:
    seed(etcd, keys)
    revision = etcd.status().revision
    report = ok_json(
        run(
            [
                "audit",
                "--encryption-config",
                config,
                "--endpoints",
                ",".join(etcd_endpoints),
                "--output",
                "json",
            ]
        )
    )
    assert {k: report[k] for k in ("total", "current", "stale", "undecryptable", "plaintext")} == {
        "total": 15,
        "current": 4,
        "stale": 7,
        "undecryptable": 4,
        "plaintext": 4,
    }
    assert report["resources"] == {
        "configmaps": {
            "total": 4,
            "current": 1,
            "stale": 2,
            "undecryptable": 1,
            "unavailable": 0,
            "plaintext": 1,
        },
        "namespaces": {
            "total": 1,
            "current": 1,
            "stale": 0,
            "undecryptable": 0,
            "unavailable": 0,
            "plaintext": 1,
        },
        "secrets": {
            "total": 10,
            "current": 2,
            "stale": 5,
            "undecryptable": 3,
            "unavailable": 0,
            "plaintext": 2,
        },
    }
    assert report["providers"] == [
        {"provider": "aescbc", "key_name": "old", "key_id": None, "count": 4},
        {"provider": "aesgcm", "key_name": "gcm", "key_id": None, "count": 6},
        {"provider": "aesgcm", "key_name": "retired", "key_id": None, "count": 1},
        {"provider": "identity", "key_name": "", "key_id": None, "count": 4},
    ]
    assert sorted(report["undecryptable_keys"]) == sorted(k.decode() for k in UNDECRYPTABLE)
    # An audit writes nothing.
    assert etcd.status().revision == revision


def test_audit_table_output(
    etcd: EtcdClient, etcd_endpoints: list[str], keys: Keys, config: str
) -> None:
    seed(etcd, keys)
    # Keys are data, not rich markup: a tag in a key must print as it is.
    etcd.put(b"/registry/[bold]/ns/odd", b"k8s:enc:aesgcm:v1:gcm:" + os.urandom(40))
    result = run(["audit", "--encryption-config", config, "--endpoints", etcd_endpoints[0]])
    assert result.exit_code == 0, result.output
    for fragment in (
        "secrets",
        "configmaps",
        "aescbc",
        "/registry/secrets/ns/garbage",
        "/registry/[bold]/ns/odd",
        "│ [bold] ",
    ):
        assert fragment in result.stdout


def test_live_reencrypt_rewrites_exactly_the_stale_values(
    etcd: EtcdClient, etcd_endpoints: list[str], keys: Keys, config: str
) -> None:
    plaintexts = seed(etcd, keys)
    before = snapshot(etcd)
    args = ["reencrypt", "--encryption-config", config, "--endpoints", etcd_endpoints[0]]
    report = ok_json(run([*args, "--prefix", "/registry/"]))
    assert {k: report[k] for k in ("scanned", "rewritten", "conflicts", "current")} == {
        "scanned": 15,
        "rewritten": 7,
        "conflicts": 0,
        "current": 4,
    }
    assert report["undecryptable"] == 4
    after = snapshot(etcd)
    gcm = keys.transformer("gcm")
    for key, kv in after.items():
        if key in STALE:
            assert kv.mod_revision > before[key].mod_revision
            assert kv.value.startswith(b"k8s:enc:aesgcm:v1:gcm:")
            assert gcm.open(kv.value, aad=key).plaintext == plaintexts[key]
        else:
            assert kv == before[key], key
    # A second run finds nothing to do and writes nothing.
    revision = etcd.status().revision
    again = ok_json(run([*args, "--prefix", "/registry/"]))
    assert (again["rewritten"], again["current"], again["undecryptable"]) == (0, 11, 4)
    assert etcd.status().revision == revision


def test_live_reencrypt_dry_run_writes_nothing(
    etcd: EtcdClient, etcd_endpoints: list[str], keys: Keys, config: str
) -> None:
    seed(etcd, keys)
    revision = etcd.status().revision
    args = ["reencrypt", "--encryption-config", config, "--endpoints", etcd_endpoints[0]]
    report = ok_json(run([*args, "--prefix", "/registry/", "--dry-run"]))
    assert (report["rewritten"], report["dry_run"]) == (7, True)
    assert etcd.status().revision == revision


def test_a_concurrent_write_wins_over_the_migration(
    etcd: EtcdClient, keys: Keys, config: str
) -> None:
    seed(etcd, keys)
    read = list(etcd.range_prefix(b"/registry/"))
    key = b"/registry/secrets/ns/old1"
    concurrent = keys.seal("old", secret_payload("old1", password=b"rotated-by-user"), key)
    etcd.put(key, concurrent)
    with etcdtool.open_chains(Path(config).read_bytes()) as chains:
        report = etcdtool.reencrypt_values(etcd, chains, read)
    assert (report.rewritten, report.conflicts) == (6, 1)
    assert report.conflict_keys == [key.decode()]
    kv = etcd.get(key)
    assert kv is not None
    assert kv.value == concurrent
    # The next run picks the user's value up like any other stale one.
    with etcdtool.open_chains(Path(config).read_bytes()) as chains:
        report = etcdtool.reencrypt(etcd, chains, b"/registry/")
    assert (report.rewritten, report.conflicts) == (1, 0)


def test_reencrypt_pages_and_batches_across_many_keys(
    etcd: EtcdClient, etcd_endpoints: list[str], keys: Keys, config: str
) -> None:
    count = 1100
    ops = [
        CasPut(
            key := f"/registry/secrets/bulk/s{i:05d}".encode(),
            keys.seal("old", secret_payload(f"s{i}"), key),
            0,
        )
        for i in range(count)
    ]
    for start in range(0, count, MAX_TXN_OPS):
        assert all(etcd.cas_batch(ops[start : start + MAX_TXN_OPS]))
    common = ["--encryption-config", config, "--endpoints", etcd_endpoints[0]]
    audit = ok_json(run(["audit", *common, "--page-size", "100", "--output", "json"]))
    assert (audit["total"], audit["stale"]) == (count, count)
    report = ok_json(
        run(
            [
                "reencrypt",
                *common,
                "--prefix",
                "/registry/secrets/",
                "--page-size",
                "100",
                "--batch-size",
                "128",
            ]
        )
    )
    assert (report["scanned"], report["rewritten"], report["conflicts"]) == (count, count, 0)
    audit = ok_json(run(["audit", *common, "--page-size", "333", "--output", "json"]))
    assert (audit["total"], audit["current"], audit["stale"]) == (count, count, 0)


def test_single_key_commands_against_live_etcd(
    etcd: EtcdClient, etcd_endpoints: list[str], keys: Keys, config: str
) -> None:
    plaintexts = seed(etcd, keys)
    live = ["--endpoints", etcd_endpoints[0]]
    key = "/registry/secrets/ns/old2"
    result = run(["decrypt", "--encryption-config", config, "--key", key, *live])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == plaintexts[key.encode()]
    info = ok_json(run(["inspect", "--key", key, *live]))
    assert (info["provider"], info["key_name"]) == ("aescbc", "old")
    report = ok_json(run(["reencrypt", "--encryption-config", config, "--key", key, *live]))
    assert report["rewritten"] == 1
    info = ok_json(run(["inspect", "--key", key, *live]))
    assert (info["provider"], info["key_name"]) == ("aesgcm", "gcm")
    report = ok_json(run(["reencrypt", "--encryption-config", config, "--key", key, *live]))
    assert (report["rewritten"], report["current"]) == (0, 1)
    bad = "/registry/secrets/ns/tampered"
    before = etcd.get(bad.encode())
    report = ok_json(run(["reencrypt", "--encryption-config", config, "--key", bad, *live]))
    assert report["undecryptable"] == 1
    assert etcd.get(bad.encode()) == before
    result = run(["decrypt", "--encryption-config", config, "--key", bad, *live])
    assert result.exit_code == 5
    assert "cannot decrypt value" in result.stderr


def test_missing_key_and_dead_store_have_their_exit_codes(
    etcd_endpoints: list[str], config: str
) -> None:
    missing = "/registry/secrets/ns/missing"
    result = run(["inspect", "--key", missing, "--endpoints", etcd_endpoints[0]])
    assert result.exit_code == 6
    assert f"no value is stored at {missing}" in result.stderr
    dead = f"http://127.0.0.1:{free_port()}"
    result = run(["audit", "--encryption-config", config, "--endpoints", dead, "--timeout", "0.5"])
    assert result.exit_code == 11
    assert "no endpoint answered" in result.stderr
    result = run(
        [
            "reencrypt",
            "--encryption-config",
            config,
            "--endpoints",
            etcd_endpoints[0],
            "--key",
            missing,
            "--prefix",
            "/registry/",
        ]
    )
    assert result.exit_code == 2


# --------------------------------------------------------------------------- KMS v2


@contextlib.contextmanager
def plugin(endpoint: str, key: bytes, retired: tuple[bytes, ...] = ()) -> Iterator[None]:
    server = KmsV2Server(LocalKeyPlugin(key, retired_keys=retired), endpoint)
    server.start()
    try:
        yield
    finally:
        server.stop(0)


def test_kms_v2_migration_and_key_rotation(
    etcd: EtcdClient, etcd_endpoints: list[str], keys: Keys
) -> None:
    key1, key2 = os.urandom(32), os.urandom(32)
    with tempfile.TemporaryDirectory(prefix="kk-", dir="/tmp") as sock_dir:
        endpoint = f"unix://{sock_dir}/kms.sock"
        config = Path(sock_dir) / "enc.yaml"
        config.write_text(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
            "resources:\n- resources: [secrets]\n  providers:\n"
            f"  - kms: {{apiVersion: v2, name: kp, endpoint: '{endpoint}', timeout: 300ms}}\n"
            f"  - {provider_yaml(keys, 'old')}\n"
            "  - identity: {}\n"
        )
        names = [f"/registry/secrets/ns/k{i}".encode() for i in range(5)]
        plaintexts = {name: secret_payload(name.decode()) for name in names}
        etcd.cas_batch(
            [CasPut(names[0], plaintexts[names[0]], 0)]
            + [CasPut(n, keys.seal("old", plaintexts[n], n), 0) for n in names[1:]]
        )
        common = ["--encryption-config", str(config), "--endpoints", etcd_endpoints[0]]
        with plugin(endpoint, key1):
            report = ok_json(run(["reencrypt", *common, "--prefix", "/registry/"]))
            assert report["rewritten"] == 5
            audit = ok_json(run(["audit", *common, "--output", "json"]))
            assert audit["providers"] == [
                {"provider": "kms", "key_name": "kp", "key_id": key_id_for(key1), "count": 5}
            ]
            assert audit["current"] == 5
            decrypt = ["decrypt", "--encryption-config", str(config), "--key", names[3].decode()]
            result = run([*decrypt, "--endpoints", etcd_endpoints[0]])
            assert result.stdout_bytes == plaintexts[names[3]]
        # Rotation: the plugin's new key wraps new seeds; the old one stays for Decrypt.
        with plugin(endpoint, key2, retired=(key1,)):
            audit = ok_json(run(["audit", *common, "--output", "json"]))
            assert (audit["stale"], audit["current"]) == (5, 0)
            report = ok_json(run(["reencrypt", *common, "--prefix", "/registry/"]))
            assert report["rewritten"] == 5
            audit = ok_json(run(["audit", *common, "--output", "json"]))
            assert audit["providers"] == [
                {"provider": "kms", "key_name": "kp", "key_id": key_id_for(key2), "count": 5}
            ]
        # With the plugin gone, values are unavailable, not undecryptable, and left alone.
        before = snapshot(etcd)
        report = ok_json(run(["reencrypt", *common, "--prefix", "/registry/"]))
        assert (report["unavailable"], report["undecryptable"], report["rewritten"]) == (5, 0, 0)
        assert "KMS plugin" in str(report["first_unavailable_error"])
        assert snapshot(etcd) == before
