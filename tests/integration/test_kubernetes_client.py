"""The official ``kubernetes`` Python client against kinko's cluster API over a real port.

The app is served by uvicorn over HTTPS (kinko's own CA) on loopback; the client reads a
kubeconfig written by ``kinko.cluster.endpoints.kubeconfig_yaml``. Objects are encrypted at
rest by a KMS v2 provider: kinko's LocalKeyPlugin served over gRPC on a real unix socket, read
through an ordinary EncryptionConfiguration, so the stored bytes carry the
``k8s:enc:kms:v2:<name>:`` prefix exactly as kube-apiserver's would.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as kubeconfig
from kubernetes.client.exceptions import ApiException
from starlette.types import ASGIApp, Receive, Scope, Send

from kinko.api.cluster import create_cluster_app
from kinko.api.server import BackgroundServer, ListenAddress, TlsConfig
from kinko.api.tls import ensure_server_tls
from kinko.cluster.auth import ClusterTokenBook, issue_cluster_token
from kinko.cluster.encryption import EncryptionConfigSource
from kinko.cluster.endpoints import kubeconfig_yaml
from kinko.cluster.service import ClusterService
from kinko.kms.plugin import LocalKeyPlugin
from kinko.kms.server import KmsV2Server
from kinko.store.memory import MemoryStore

KEY = bytes(range(32))
PROVIDER = "kinko-local"
SECRET = "correct-horse-battery-staple"


def encryption_config(endpoint: str) -> str:
    return f"""
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets, configmaps]
    providers:
      - kms:
          apiVersion: v2
          name: {PROVIDER}
          endpoint: {endpoint}
          timeout: 5s
      - identity: {{}}
"""


class ContentTypes:
    """An ASGI wrapper that records the Content-Type of every PATCH (what the client sent)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.patches: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "PATCH":
            headers = dict(scope["headers"])
            self.patches.append(headers.get(b"content-type", b"").decode())
        await self.app(scope, receive, send)


@dataclass
class Cluster:
    store: MemoryStore
    api: k8s.CoreV1Api
    viewer: k8s.CoreV1Api
    client: k8s.ApiClient
    recorder: ContentTypes


def _api_client(tmp_path: Path, name: str, server: str, ca_pem: bytes, token: str) -> k8s.ApiClient:
    path = tmp_path / f"{name}.kubeconfig"
    path.write_text(kubeconfig_yaml(server=server, ca_pem=ca_pem, token=token, user=name))
    configuration = k8s.Configuration()
    kubeconfig.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(path), client_configuration=configuration
    )
    return k8s.ApiClient(configuration)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # One server for the module: the tests use distinct names and namespaces.
    tmp_path = tmp_path_factory.mktemp("kube")
    # A unix socket path is limited to 107 bytes: the plugin's lives under a short /tmp name.
    with tempfile.TemporaryDirectory(prefix="kk-", dir="/tmp") as sock_dir:
        endpoint = f"unix://{sock_dir}/kms.sock"
        plugin = KmsV2Server(LocalKeyPlugin(KEY), endpoint)
        plugin.start()
        config_path = tmp_path / "encryption.yaml"
        config_path.write_text(encryption_config(endpoint))
        source = EncryptionConfigSource(config_path, poll_kms=False)
        try:
            store = MemoryStore()
            service = ClusterService(store, source, clock=lambda: datetime.now(UTC))
            book = ClusterTokenBook(store)
            now = datetime.now(UTC)
            admin, admin_record = issue_cluster_token(
                rng=os.urandom, role="Administrator", namespaces=None, now=now, name="admin"
            )
            viewer, viewer_record = issue_cluster_token(
                rng=os.urandom, role="Viewer", namespaces=["*"], now=now, name="viewer"
            )
            book.add(admin_record)
            book.add(viewer_record)
            recorder = ContentTypes(create_cluster_app(service, book))
            tls = ensure_server_tls(tmp_path)
            with BackgroundServer(
                recorder, ListenAddress("127.0.0.1", 0), tls=TlsConfig(tls.cert, tls.key)
            ) as server:
                url = f"https://127.0.0.1:{server.port}"
                ca_pem = tls.ca_cert.read_bytes()
                admin_client = _api_client(tmp_path, "admin", url, ca_pem, admin)
                viewer_client = _api_client(tmp_path, "viewer", url, ca_pem, viewer)
                with admin_client, viewer_client:
                    yield Cluster(
                        store,
                        k8s.CoreV1Api(admin_client),
                        k8s.CoreV1Api(viewer_client),
                        admin_client,
                        recorder,
                    )
                # An ApiException keeps its HTTP response, and with it a connection the pool no
                # longer holds, until the exception is collected; an open connection would hold
                # uvicorn's graceful shutdown for its whole grace period.
                gc.collect()
        finally:
            source.close()
            plugin.stop(0)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _status(exc: ApiException) -> dict[str, Any]:
    doc = json.loads(exc.body or "")
    assert isinstance(doc, dict)
    return doc


def _meta(obj: k8s.V1Secret | k8s.V1ConfigMap) -> k8s.V1ObjectMeta:
    assert obj.metadata is not None
    return obj.metadata


def _data(obj: k8s.V1Secret) -> dict[str, bytes | str]:
    assert obj.data is not None
    return obj.data


def _names(items: list[k8s.V1Secret] | list[k8s.V1ConfigMap]) -> list[str | None]:
    return [_meta(i).name for i in items]


def _continue(page: k8s.V1ConfigMapList) -> str | None:
    assert page.metadata is not None
    return page.metadata.var_continue


def test_discovery_and_version(cluster: Cluster) -> None:
    info = k8s.VersionApi(cluster.client).get_code()
    assert info.major == "1"
    assert info.minor == "31"
    assert info.git_version.startswith("v1.31.0+kinko.")
    assert k8s.CoreApi(cluster.client).get_api_versions().versions == ["v1"]
    names = {r.name for r in cluster.api.get_api_resources().resources}
    assert names == {"secrets", "configmaps"}
    assert k8s.ApisApi(cluster.client).get_api_versions().groups == []


def test_secret_lifecycle(cluster: Cluster) -> None:
    api = cluster.api
    body = k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="db", labels={"app": "web"}),
        string_data={"password": SECRET},
    )
    made = api.create_namespaced_secret("default", body)
    assert made.data == {"password": _b64(SECRET)}
    assert _meta(made).uid
    stored = cluster.store.get(b"/registry/secrets/default/db")
    assert stored is not None
    assert stored.value.startswith(f"k8s:enc:kms:v2:{PROVIDER}:".encode())
    assert SECRET.encode() not in stored.value

    got = api.read_namespaced_secret("db", "default")
    assert got.data == {"password": _b64(SECRET)}
    assert _meta(got).resource_version == _meta(made).resource_version

    hidden = cluster.viewer.read_namespaced_secret("db", "default")
    assert hidden.data is None
    assert _meta(hidden).labels == {"app": "web"}

    _data(got)["user"] = _b64("alice")
    replaced = api.replace_namespaced_secret("db", "default", got)
    assert _data(replaced)["user"] == _b64("alice")
    assert _meta(replaced).resource_version != _meta(got).resource_version

    # The object read before the replace is stale now: Kubernetes answers 409 Conflict.
    with pytest.raises(ApiException) as stale:
        api.replace_namespaced_secret("db", "default", got)
    assert stale.value.status == 409
    assert _status(stale.value)["reason"] == "Conflict"

    patched = api.patch_namespaced_secret(
        "db", "default", {"metadata": {"labels": {"tier": "data"}}, "data": {"user": None}}
    )
    assert _meta(patched).labels == {"app": "web", "tier": "data"}
    assert patched.data == {"password": _b64(SECRET)}

    json_patched = api.patch_namespaced_secret(
        "db", "default", [{"op": "add", "path": "/data/token", "value": _b64("t0k3n")}]
    )
    assert _data(json_patched)["token"] == _b64("t0k3n")
    assert cluster.recorder.patches == [
        "application/strategic-merge-patch+json",
        "application/json-patch+json",
    ]

    listed = api.list_namespaced_secret("default", label_selector="tier=data")
    assert _names(listed.items) == ["db"]
    assert listed.metadata is not None
    assert listed.metadata.resource_version
    assert api.list_namespaced_secret("default", label_selector="tier=web").items == []
    everywhere = cluster.viewer.list_secret_for_all_namespaces(field_selector="metadata.name=db")
    assert _names(everywhere.items) == ["db"]
    assert everywhere.items[0].data is None

    api.delete_namespaced_secret("db", "default")
    with pytest.raises(ApiException) as missing:
        api.read_namespaced_secret("db", "default")
    assert missing.value.status == 404
    assert cluster.store.get(b"/registry/secrets/default/db") is None


def test_configmap_lifecycle_and_paging(cluster: Cluster) -> None:
    api = cluster.api
    for n in range(5):
        api.create_namespaced_config_map(
            "team-a",
            k8s.V1ConfigMap(
                metadata=k8s.V1ObjectMeta(name=f"cm-{n}", labels={"n": str(n)}),
                data={"color": "blue"},
            ),
        )
    stored = cluster.store.get(b"/registry/configmaps/team-a/cm-0")
    assert stored is not None
    assert stored.value.startswith(f"k8s:enc:kms:v2:{PROVIDER}:".encode())

    names: list[str] = []
    token = None
    for _ in range(10):
        page = api.list_namespaced_config_map("team-a", limit=2, _continue=token)
        names += [str(n) for n in _names(page.items)]
        token = _continue(page)
        if not token:
            break
    assert names == [f"cm-{n}" for n in range(5)]
    selected = api.list_namespaced_config_map("team-a", label_selector="n in (1,3)")
    assert _names(selected.items) == ["cm-1", "cm-3"]
    named = api.list_config_map_for_all_namespaces(field_selector="metadata.name=cm-4")
    assert _names(named.items) == ["cm-4"]

    current = api.read_namespaced_config_map("cm-0", "team-a")
    current.data = {"color": "green"}
    assert api.replace_namespaced_config_map("cm-0", "team-a", current).data == {"color": "green"}
    patched = api.patch_namespaced_config_map("cm-0", "team-a", {"data": {"size": "L"}})
    assert patched.data == {"color": "green", "size": "L"}
    api.delete_namespaced_config_map("cm-0", "team-a")
    assert len(api.list_namespaced_config_map("team-a").items) == 4


def test_invalid_object_surfaces_with_causes(cluster: Cluster) -> None:
    before = cluster.store.revision
    body = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="Bad_Name"), data={"password": _b64(SECRET)})
    with pytest.raises(ApiException) as caught:
        cluster.api.create_namespaced_secret("default", body)
    assert caught.value.status == 422
    status = _status(caught.value)
    assert status["reason"] == "Invalid"
    details = status["details"]
    assert isinstance(details, dict)
    fields = {c["field"] for c in details["causes"]}
    assert "metadata.name" in fields
    assert SECRET not in (caught.value.body or "")
    assert _b64(SECRET) not in (caught.value.body or "")
    assert cluster.store.revision == before
    bad_base64 = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="ok"), data={"password": "%%%"})
    with pytest.raises(ApiException) as caught:
        cluster.api.create_namespaced_secret("default", bad_base64)
    assert caught.value.status == 422
    causes = _status(caught.value)["details"]
    assert isinstance(causes, dict)
    assert [c["field"] for c in causes["causes"]] == ["data[password]"]


def test_refusals_surface_as_api_exceptions(cluster: Cluster) -> None:
    cluster.api.create_namespaced_secret(
        "default", k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="x"))
    )
    with pytest.raises(ApiException) as taken:
        cluster.api.create_namespaced_secret(
            "default", k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="x"))
        )
    assert taken.value.status == 409
    assert _status(taken.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as forbidden:
        cluster.viewer.delete_namespaced_secret("x", "default")
    assert forbidden.value.status == 403
    with pytest.raises(ApiException) as watch:
        cluster.api.list_namespaced_secret("default", watch=True)
    assert watch.value.status == 400
