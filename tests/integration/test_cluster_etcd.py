"""ClusterService on a real etcd-server: the use cases, the stored bytes, and a leader's death.

On one member: create, get, paged LIST with continue tokens over one snapshot, replace and
delete through an aescbc chain and through a KMS v2 plugin on a real unix socket. The bytes in
etcd are read raw: they carry the ``k8s:enc:`` prefix, no plaintext, and ``kinko etcd decrypt``
opens them against the live endpoint.

On three members: a writer creates Secrets in a loop while the leader is SIGKILLed. A create
whose outcome is unknown (StoreUnavailable) is recorded and resolved by reading before it is
retried; at the end every acknowledged Secret, and every unknown one, is stored exactly once
with its data.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from kinko.cli.main import cli
from kinko.cluster.encryption import EncryptionConfigSource
from kinko.cluster.resources import Secret
from kinko.cluster.service import ClusterService
from kinko.errors import AlreadyExists, Conflict, NotFound, StoreUnavailable
from kinko.kms.plugin import LocalKeyPlugin
from kinko.kms.server import KmsV2Server
from kinko.store.etcd import EtcdClient
from kinko.store.etcd_store import EtcdStore
from tests.integration.etcd_fixture import EtcdCluster, EtcdMember, running_cluster
from tests.store_contract import PATIENCE_S

pytestmark = pytest.mark.etcd

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
AES_KEY = base64.b64encode(bytes(range(32))).decode()
PREFIXES = {"aescbc": b"k8s:enc:aescbc:v1:k1:", "kms v2": b"k8s:enc:kms:v2:etcd-kms:"}


def secret(name: str, ns: str, password: bytes) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "db"}},
        "data": {"password": base64.b64encode(password).decode()},
    }


def password_of(obj: object) -> bytes:
    assert isinstance(obj, Secret)
    return obj.data["password"]


def write_config(path: Path, provider: str, endpoint: str = "") -> Path:
    if provider == "aescbc":
        first = f"aescbc: {{keys: [{{name: k1, secret: {AES_KEY}}}]}}"
    else:
        first = f"kms: {{apiVersion: v2, name: etcd-kms, endpoint: '{endpoint}', timeout: 2s}}"
    path.write_text(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
        "resources:\n- resources: [secrets, configmaps]\n  providers:\n"
        f"  - {first}\n  - identity: {{}}\n"
    )
    return path


@dataclass
class Encryption:
    provider: str
    config: Path


@pytest.fixture(params=["aescbc", "kms v2"])
def encryption(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Encryption]:
    """An EncryptionConfiguration file; for KMS v2, with its plugin serving on a unix socket."""
    provider: str = request.param
    if provider == "aescbc":
        yield Encryption(provider, write_config(tmp_path / "encryption.yaml", provider))
        return
    # A short directory of its own: a unix socket path is limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="kk-", dir="/tmp") as short:
        endpoint = f"unix://{short}/kms.sock"
        with KmsV2Server(LocalKeyPlugin(os.urandom(32)), endpoint):
            yield Encryption(
                provider, write_config(tmp_path / "encryption.yaml", provider, endpoint)
            )


@contextlib.contextmanager
def cluster_service(store: EtcdStore, config: Path) -> Iterator[ClusterService]:
    source = EncryptionConfigSource(config, poll_kms=False)
    try:
        yield ClusterService(store, source, clock=lambda: NOW)
    finally:
        source.close()


def test_the_service_on_etcd_stores_encrypted_bytes_that_kinko_etcd_decrypts(
    etcd: EtcdClient, etcd_endpoints: list[str], encryption: Encryption
) -> None:
    prefix = PREFIXES[encryption.provider]
    with cluster_service(EtcdStore(etcd), encryption.config) as svc:
        names = [f"db-{i}" for i in range(7)]
        for name in names:
            made = svc.create("secrets", "team-a", secret(name, "team-a", f"pw {name}".encode()))
            raw = etcd.get(f"/registry/secrets/team-a/{name}".encode())
            assert raw is not None
            assert made.metadata.resource_version == str(raw.mod_revision)
        svc.create("secrets", "team-b", secret("db-0", "team-b", b"other team"))
        with pytest.raises(AlreadyExists):
            svc.create("secrets", "team-a", secret("db-0", "team-a", b"again"))
        assert password_of(svc.get("secrets", "team-a", "db-3")) == b"pw db-3"
        assert password_of(svc.get("secrets", "team-b", "db-0")) == b"other team"

        # Stored encrypted: the prefix, and none of the plaintext.
        key = b"/registry/secrets/team-a/db-3"
        raw = etcd.get(key)
        assert raw is not None
        assert raw.value.startswith(prefix)
        assert b"db-3" not in raw.value[len(prefix) :]
        assert base64.b64encode(b"pw db-3") not in raw.value

        # kinko etcd decrypt opens the live value; the stored JSON has no resourceVersion.
        result = CliRunner().invoke(
            cli,
            [
                "etcd",
                "decrypt",
                "--encryption-config",
                str(encryption.config),
                "--key",
                key.decode(),
                "--endpoints",
                etcd_endpoints[0],
            ],
        )
        assert result.exit_code == 0, result.output
        stored = json.loads(result.stdout_bytes)
        assert stored["metadata"]["name"] == "db-3"
        assert stored["metadata"]["namespace"] == "team-a"
        assert "resourceVersion" not in stored["metadata"]
        assert base64.b64decode(stored["data"]["password"]) == b"pw db-3"

        # A paged LIST reads one snapshot: a create between pages is not in it.
        first = svc.list("secrets", "team-a", limit=3)
        assert [o.metadata.name for o in first.items] == names[:3]
        assert first.continue_token
        svc.create("secrets", "team-a", secret("db-late", "team-a", b"late"))
        seen = [o.metadata.name for o in first.items]
        token = first.continue_token
        while token:
            page = svc.list("secrets", "team-a", limit=3, continue_token=token)
            assert page.resource_version == first.resource_version
            assert not page.unreadable
            seen += [o.metadata.name for o in page.items]
            token = page.continue_token
        assert seen == names
        everything = svc.list("secrets", None)
        assert not everything.unreadable
        assert sorted((o.metadata.namespace, o.metadata.name) for o in everything.items) == sorted(
            [("team-a", n) for n in [*names, "db-late"]] + [("team-b", "db-0")]
        )

        # Replace: guarded by resourceVersion; a stale one conflicts and changes nothing.
        current = svc.get("secrets", "team-a", "db-1")
        body = secret("db-1", "team-a", b"rotated")
        assert isinstance(body["metadata"], dict)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        replaced = svc.replace("secrets", "team-a", "db-1", body)
        assert replaced.metadata.uid == current.metadata.uid
        assert int(replaced.metadata.resource_version) > int(current.metadata.resource_version)
        with pytest.raises(Conflict):
            svc.replace("secrets", "team-a", "db-1", body)
        assert password_of(svc.get("secrets", "team-a", "db-1")) == b"rotated"
        raw = etcd.get(b"/registry/secrets/team-a/db-1")
        assert raw is not None
        assert raw.value.startswith(prefix)
        assert str(raw.mod_revision) == replaced.metadata.resource_version

        # Delete: a stale precondition conflicts; the right one removes the key from etcd.
        with pytest.raises(Conflict):
            svc.delete(
                "secrets",
                "team-a",
                "db-1",
                resource_version=current.metadata.resource_version,
            )
        gone = svc.delete(
            "secrets", "team-a", "db-1", resource_version=replaced.metadata.resource_version
        )
        assert password_of(gone) == b"rotated"
        with pytest.raises(NotFound):
            svc.get("secrets", "team-a", "db-1")
        assert etcd.get(b"/registry/secrets/team-a/db-1") is None


# --------------------------------------------------------------------------- failover


def test_a_killed_leader_loses_no_acknowledged_create(tmp_path: Path) -> None:
    """SIGKILL the etcd leader while a writer creates Secrets through the service.

    The cluster is this test's own (as in test_store_etcd.py), not the shared module
    fixture, because it leaves the cluster with a dead member.
    """
    config = write_config(tmp_path / "encryption.yaml", "aescbc")
    with running_cluster(tmp_path / "etcd3", size=3) as cluster:
        leader = _leader(cluster)
        # The leader first: the writer starts on it.
        order = [leader.client_url] + [u for u in cluster.endpoints if u != leader.client_url]
        # Creates before the kill, and again after it.
        warm = 15
        with (
            EtcdClient(order, timeout=2.0) as client,
            cluster_service(EtcdStore(client), config) as svc,
        ):
            acknowledged: dict[str, bytes] = {}  # a create call returned
            found: dict[str, bytes] = {}  # the outcome was unknown; a read found it stored
            unknown: set[str] = set()  # a create raised StoreUnavailable
            resumed: list[str] = []  # acknowledged after the kill
            failures: list[BaseException] = []
            ready, killed = threading.Event(), threading.Event()

            def writer() -> None:
                n, after_kill = 0, 0
                try:
                    while after_kill < warm:
                        name, password = f"s-{n:04d}", f"password {n}".encode()
                        was_killed = killed.is_set()
                        if _create_through_failures(svc, name, password, unknown):
                            acknowledged[name] = password
                            if was_killed:
                                resumed.append(name)
                        else:
                            found[name] = password
                        n += 1
                        if was_killed:
                            after_kill += 1
                        elif n >= warm:
                            ready.set()
                except BaseException as exc:
                    failures.append(exc)
                    ready.set()

            thread = threading.Thread(target=writer)
            thread.start()
            assert ready.wait(PATIENCE_S)
            _kill(leader)
            killed.set()
            thread.join(PATIENCE_S * 3)
            assert not thread.is_alive()
            assert not failures, failures
            # The loop resumed against the surviving members.
            assert resumed

            # Every acknowledged create is stored with its data, and so is every create whose
            # outcome was unknown (read, or retried until it landed), each exactly once.
            listed = svc.list("secrets", "load")
            assert not listed.unreadable
            stored = {o.metadata.name: password_of(o) for o in listed.items}
            assert stored == {**acknowledged, **found}
            assert set(found) <= unknown
            for name, password in acknowledged.items():
                assert password_of(svc.get("secrets", "load", name)) == password


def _create_through_failures(
    svc: ClusterService, name: str, password: bytes, unknown: set[str]
) -> bool:
    """Create ``load/name`` through a failover; True if a create call acknowledged it.

    A create whose outcome is unknown (StoreUnavailable) is recorded in ``unknown`` and
    followed by a get: found, it landed (False: no create call acknowledged it); not found,
    the create is retried. AlreadyExists on a retry means an earlier attempt landed after all
    (False as well).
    """
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            svc.create("secrets", "load", secret(name, "load", password))
            return True
        except AlreadyExists:
            assert name in unknown, f"{name} existed before its first create"
            return False
        except StoreUnavailable:
            unknown.add(name)
        while True:
            assert time.monotonic() < deadline, "the cluster did not recover"
            try:
                found = svc.get("secrets", "load", name)
            except NotFound:
                break  # It did not land: create again.
            except StoreUnavailable:
                time.sleep(0.05)  # An election takes about a second; do not spin meanwhile.
                continue
            assert password_of(found) == password
            return False


def _leader(cluster: EtcdCluster) -> EtcdMember:
    with EtcdClient(cluster.endpoints) as client:
        leader_id = client.status().leader
    for member in cluster.members:
        with EtcdClient([member.client_url]) as client:
            if client.status().member_id == leader_id:
                return member
    raise AssertionError("no member is the leader")


def _kill(member: EtcdMember) -> None:
    assert member.process is not None
    member.process.send_signal(signal.SIGKILL)
    member.process.wait(PATIENCE_S)
