"""Two key services (two kinko processes) on one real etcd never corrupt a key.

Each service has its own etcd client, as two processes would; they share the HSM device, as
two processes on one network HSM do. Every metadata write is a guarded transaction, so
concurrent changes to one key are all kept, on a single member and across a three-member
cluster.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from kinko.cli.main import cli
from kinko.hsm.memory import MemoryDevice, MemoryHsm
from kinko.keys.audit import MemoryAuditSink
from kinko.keys.auth import TokenBook
from kinko.keys.deployment import STORE_FILE
from kinko.keys.service import KeyService
from kinko.store.etcd import EtcdClient
from kinko.store.etcd_store import EtcdStore
from tests.integration.etcd_fixture import EtcdCluster
from tests.unit.test_key_service import ALICE, COS, INST, READER, WRITER, Clock

pytestmark = pytest.mark.etcd


@contextmanager
def _services(endpoint_sets: Sequence[Sequence[str]]) -> Iterator[list[KeyService]]:
    device, audit, clock = MemoryDevice(), MemoryAuditSink(), Clock()
    clients = [EtcdClient(list(endpoints)) for endpoints in endpoint_sets]
    try:
        yield [
            KeyService(
                EtcdStore(client), MemoryHsm(device), audit=audit, clock=clock, rng=os.urandom
            )
            for client in clients
        ]
    finally:
        for client in clients:
            client.close()


def _hammer(services: list[KeyService], key_id: str, *, workers: int, per_worker: int) -> None:
    failures: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def work(n: int) -> None:
        svc = services[n % len(services)]
        barrier.wait()
        try:
            svc.create_alias(WRITER, INST, key_id, f"alias-{n}")
            for i in range(per_worker):
                crn = f"crn:v1:test:public:svc:global:a/acct:inst::thing:{n}-{i}"
                svc.create_registration(COS, INST, key_id, crn)
        except BaseException as exc:  # pragma: no cover - reported by the assert below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_two_services_on_one_etcd_keep_every_concurrent_update(
    etcd_endpoints: list[str],
) -> None:
    with _services([etcd_endpoints, etcd_endpoints]) as services:
        key = services[0].create_key(ALICE, INST, name="shared-root")
        _hammer(services, key.id, workers=4, per_worker=6)
        view = services[1].get_key_metadata(READER, INST, key.id)
        assert view.registration_count == 24
        assert sorted(view.aliases) == [f"alias-{n}" for n in range(4)]
        ciphertext = services[0].wrap(READER, INST, "alias-0").ciphertext
        assert services[1].unwrap(READER, INST, "alias-3", ciphertext=ciphertext).plaintext


def test_services_on_different_members_of_a_cluster_agree(etcd_cluster3: EtcdCluster) -> None:
    members = [[endpoint] for endpoint in etcd_cluster3.endpoints[:2]]
    with _services(members) as services:
        key = services[0].create_key(ALICE, INST, name="cluster-root")
        _hammer(services, key.id, workers=4, per_worker=4)
        view = services[1].get_key_metadata(READER, INST, key.id)
        assert view.registration_count == 16
        assert len(view.aliases) == 4


def test_kinko_token_create_writes_to_etcd_when_given_endpoints(
    etcd_endpoints: list[str], tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        cli,
        [
            *("token", "create", "--data-dir", str(tmp_path), "--instance", INST),
            *("--role", "Reader", "--name", "etcd-reader"),
            *("--etcd-endpoints", ",".join(etcd_endpoints)),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert not (tmp_path / STORE_FILE).exists()  # Nothing went to SQLite.
    with EtcdClient(etcd_endpoints) as client:
        principal = TokenBook(EtcdStore(client)).authenticate(token, now=datetime.now(UTC))
    assert (principal.name, principal.instance) == ("etcd-reader", INST)
