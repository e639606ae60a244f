"""Fixtures of the integration tests: real etcd-server processes on loopback, and a real
SoftHSM2 token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kinko.store.etcd import EtcdClient
from tests.integration.etcd_fixture import EtcdCluster, running_cluster
from tests.integration.hsm_fixture import SoftHsmToken, softhsm_token


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One single-member etcd, shared by the tests of a module."""
    with running_cluster(tmp_path_factory.mktemp("etcd"), size=1) as cluster:
        yield cluster


@pytest.fixture
def etcd_endpoints(etcd_server: EtcdCluster) -> list[str]:
    """The single member's endpoints, with every key deleted before the test."""
    with EtcdClient(etcd_server.endpoints) as client:
        client.delete_prefix(b"")
    return etcd_server.endpoints


@pytest.fixture
def etcd(etcd_endpoints: list[str]) -> Iterator[EtcdClient]:
    """A client of the (emptied) single-member etcd."""
    with EtcdClient(etcd_endpoints) as client:
        yield client


@pytest.fixture(scope="module")
def etcd_cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A three-member etcd cluster on loopback, shared by the tests of a module."""
    with running_cluster(tmp_path_factory.mktemp("etcd3"), size=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsmToken]:
    """One SoftHSM2 token for the whole test session (SoftHSM reads its config once)."""
    with softhsm_token(tmp_path_factory.mktemp("softhsm")) as token:
        yield token
