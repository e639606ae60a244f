"""The cluster REST API over ClusterService, MemoryStore, a real aescbc chain and real tokens.

No mocks: the chains come from an EncryptionConfiguration text, the tokens are issued and
stored in a real ClusterTokenBook, and requests go through Starlette's TestClient. This file
covers every route and the role x endpoint table; bad input, the error table and unreadable
objects are in ``test_api_cluster_errors.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NoReturn

import pytest
from fastapi.testclient import TestClient

from kinko.api.cluster import create_cluster_app
from kinko.api.k8s_auth import ClusterAuthenticator, bearer_token
from kinko.api.k8s_http import classify
from kinko.cluster.auth import ClusterTokenBook, issue_cluster_token
from kinko.cluster.metrics import ClusterMetrics
from kinko.cluster.resources import ConfigMap, Secret
from kinko.cluster.service import ClusterService
from kinko.crypto.chain import ProviderChain
from kinko.crypto.config import KmsConfig, build_chains, parse_encryption_config
from kinko.errors import InvalidArgument, Unauthorized
from kinko.store.memory import MemoryStore

AES_KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()
NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
#: The secret value of every test object; no answer but an authorised read may carry it.
SECRET = b"s3cr3t-VALUE-42"
SECRET_B64 = base64.b64encode(SECRET).decode()
ROLES = ("admin", "editor_a", "viewer_a", "viewer_all", "none", "bad")


def config(secret: str, key_name: str = "k1") -> str:
    return f"""
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets, configmaps]
    providers:
      - aescbc:
          keys:
            - name: {key_name}
              secret: {secret}
      - identity: {{}}
"""


class Chains:
    """A ChainSource whose configuration a test can swap (to make objects unreadable)."""

    def __init__(self, text: str) -> None:
        self.set(text)

    def set(self, text: str) -> None:
        self._chains = build_chains(
            parse_encryption_config(text), kms_v2=_no_kms, kms_v1=_no_kms, rng=os.urandom
        )

    def chain_for(self, resource: str) -> ProviderChain:
        return self._chains.chain_for(resource)


def _no_kms(_: KmsConfig) -> NoReturn:
    raise AssertionError("no KMS provider is configured in these tests")


def secret(name: str, ns: str = "a", **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
        "data": {"password": SECRET_B64},
    }
    body.update(extra)
    return body


def configmap(name: str, ns: str = "a", **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": {"color": "blue"},
    }
    body.update(extra)
    return body


@dataclass
class World:
    """One cluster: store, chains, service, token book, app and a client, with tokens."""

    store: MemoryStore
    chains: Chains
    service: ClusterService
    book: ClusterTokenBook
    metrics: ClusterMetrics
    client: TestClient
    tokens: dict[str, str] = field(default_factory=dict)

    def headers(self, who: str, **extra: str) -> dict[str, str]:
        token = self.tokens.get(who)
        out = dict(extra)
        if token is not None:
            out["Authorization"] = f"Bearer {token}"
        return out


def make_world(*, max_body: int = 3 * 1024 * 1024) -> World:
    store = MemoryStore()
    chains = Chains(config(AES_KEY))
    service = ClusterService(store, chains, clock=lambda: NOW)
    book = ClusterTokenBook(store)
    metrics = ClusterMetrics()
    app = create_cluster_app(service, book, metrics=metrics, clock=lambda: NOW, max_body=max_body)
    client = TestClient(app, raise_server_exceptions=False)
    world = World(store, chains, service, book, metrics, client)
    for who, role, namespaces in (
        ("admin", "Administrator", None),
        ("editor_a", "Editor", ["a"]),
        ("viewer_a", "Viewer", ["a"]),
        ("viewer_all", "Viewer", ["*"]),
    ):
        token, record = issue_cluster_token(
            rng=os.urandom, role=role, namespaces=namespaces, now=NOW, name=who
        )
        book.add(record)
        world.tokens[who] = token
    # Well-formed, never issued.
    world.tokens["bad"] = "kinko_" + "A" * 43
    service.create("secrets", "a", secret("s1"))
    service.create("secrets", "b", secret("s1", "b"))
    service.create("configmaps", "a", configmap("c1"))
    service.create("configmaps", "b", configmap("c1", "b"))
    return world


@pytest.fixture
def world() -> Iterator[World]:
    w = make_world()
    with w.client:
        yield w


# --- the role x endpoint table ---------------------------------------------------------------

# (method, path, body or None, content type) per endpoint name.
ENDPOINTS: dict[str, tuple[str, str, object, str]] = {
    "api": ("GET", "/api", None, ""),
    "api_v1": ("GET", "/api/v1", None, ""),
    "apis": ("GET", "/apis", None, ""),
    "version": ("GET", "/version", None, ""),
    "healthz": ("GET", "/healthz", None, ""),
    "livez": ("GET", "/livez", None, ""),
    "readyz": ("GET", "/readyz", None, ""),
    "metrics": ("GET", "/metrics", None, ""),
    "list_secrets_a": ("GET", "/api/v1/namespaces/a/secrets", None, ""),
    "list_secrets_b": ("GET", "/api/v1/namespaces/b/secrets", None, ""),
    "list_secrets_all": ("GET", "/api/v1/secrets", None, ""),
    "list_configmaps_a": ("GET", "/api/v1/namespaces/a/configmaps", None, ""),
    "list_configmaps_all": ("GET", "/api/v1/configmaps", None, ""),
    "get_secret_a": ("GET", "/api/v1/namespaces/a/secrets/s1", None, ""),
    "get_secret_b": ("GET", "/api/v1/namespaces/b/secrets/s1", None, ""),
    "get_configmap_a": ("GET", "/api/v1/namespaces/a/configmaps/c1", None, ""),
    "create_secret_a": ("POST", "/api/v1/namespaces/a/secrets", secret("new"), "application/json"),
    "create_secret_b": (
        "POST",
        "/api/v1/namespaces/b/secrets",
        secret("new", "b"),
        "application/json",
    ),
    "create_configmap_a": (
        "POST",
        "/api/v1/namespaces/a/configmaps",
        configmap("new"),
        "application/json",
    ),
    "replace_secret_a": (
        "PUT",
        "/api/v1/namespaces/a/secrets/s1",
        secret("s1", type="Opaque"),
        "application/json",
    ),
    "replace_secret_b": (
        "PUT",
        "/api/v1/namespaces/b/secrets/s1",
        secret("s1", "b"),
        "application/json",
    ),
    "patch_secret_a": (
        "PATCH",
        "/api/v1/namespaces/a/secrets/s1",
        {"metadata": {"labels": {"tier": "db"}}},
        "application/strategic-merge-patch+json",
    ),
    "patch_configmap_b": (
        "PATCH",
        "/api/v1/namespaces/b/configmaps/c1",
        {"data": {"color": "red"}},
        "application/merge-patch+json",
    ),
    "delete_secret_a": ("DELETE", "/api/v1/namespaces/a/secrets/s1", None, ""),
    "delete_secret_b": ("DELETE", "/api/v1/namespaces/b/secrets/s1", None, ""),
    "force_delete_secret_a": (
        "DELETE",
        "/api/v1/namespaces/a/secrets/s1?ignoreStoreReadErrorWithClusterBreakingPotential=true",
        None,
        "",
    ),
    "unknown_resource": ("GET", "/api/v1/namespaces/a/pods", None, ""),
}

# Expected code per role, in the order of ROLES:
# admin, editor_a, viewer_a, viewer_all, none, bad.
TABLE: dict[str, tuple[int, int, int, int, int, int]] = {
    "api": (200, 200, 200, 200, 401, 401),
    "api_v1": (200, 200, 200, 200, 401, 401),
    "apis": (200, 200, 200, 200, 401, 401),
    "version": (200, 200, 200, 200, 401, 401),
    "healthz": (200, 200, 200, 200, 200, 200),
    "livez": (200, 200, 200, 200, 200, 200),
    "readyz": (200, 200, 200, 200, 200, 200),
    "metrics": (200, 403, 403, 403, 401, 401),
    "list_secrets_a": (200, 200, 200, 200, 401, 401),
    "list_secrets_b": (200, 403, 403, 200, 401, 401),
    "list_secrets_all": (200, 403, 403, 200, 401, 401),
    "list_configmaps_a": (200, 200, 200, 200, 401, 401),
    "list_configmaps_all": (200, 403, 403, 200, 401, 401),
    "get_secret_a": (200, 200, 200, 200, 401, 401),
    "get_secret_b": (200, 403, 403, 200, 401, 401),
    "get_configmap_a": (200, 200, 200, 200, 401, 401),
    "create_secret_a": (201, 201, 403, 403, 401, 401),
    "create_secret_b": (201, 403, 403, 403, 401, 401),
    "create_configmap_a": (201, 201, 403, 403, 401, 401),
    "replace_secret_a": (200, 200, 403, 403, 401, 401),
    "replace_secret_b": (200, 403, 403, 403, 401, 401),
    "patch_secret_a": (200, 200, 403, 403, 401, 401),
    "patch_configmap_b": (200, 403, 403, 403, 401, 401),
    "delete_secret_a": (200, 200, 403, 403, 401, 401),
    "delete_secret_b": (200, 403, 403, 403, 401, 401),
    # The object is readable, so even an Administrator's forced delete is refused (409).
    "force_delete_secret_a": (409, 403, 403, 403, 401, 401),
    "unknown_resource": (404, 404, 404, 404, 401, 401),
}

_REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
}


def send(world: World, who: str, endpoint: str) -> tuple[int, str, dict[str, object] | None]:
    method, path, body, content_type = ENDPOINTS[endpoint]
    headers = world.headers(who)
    content = None
    if body is not None:
        headers["Content-Type"] = content_type
        content = json.dumps(body).encode()
    response = world.client.request(method, path, content=content, headers=headers)
    doc = None
    if response.headers.get("content-type", "").startswith("application/json"):
        doc = response.json()
    return response.status_code, response.text, doc


@pytest.mark.parametrize(
    ("endpoint", "who", "code"),
    [
        pytest.param(endpoint, who, codes[i], id=f"{endpoint}-{who}")
        for endpoint, codes in TABLE.items()
        for i, who in enumerate(ROLES)
    ],
)
def test_role_endpoint_table(world: World, endpoint: str, who: str, code: int) -> None:
    before = world.store.revision
    status, text, doc = send(world, who, endpoint)
    assert status == code, text
    if code >= 400:
        assert doc is not None
        assert doc["kind"] == "Status"
        assert doc["status"] == "Failure"
        assert doc["code"] == code
        assert doc["reason"] == _REASONS[code]
        assert world.store.revision == before
    if code >= 400 or who.startswith("viewer"):
        assert SECRET_B64 not in text


def test_every_endpoint_is_in_the_table() -> None:
    assert set(TABLE) == set(ENDPOINTS)


# --- a Viewer never sees Secret data --------------------------------------------------------


@pytest.mark.parametrize("who", ["viewer_a", "viewer_all"])
def test_viewer_gets_secret_metadata_without_data(world: World, who: str) -> None:
    got = world.client.get("/api/v1/namespaces/a/secrets/s1", headers=world.headers(who))
    assert got.status_code == 200
    doc = got.json()
    assert "data" not in doc
    assert doc["metadata"]["name"] == "s1"
    assert doc["type"] == "Opaque"
    listed = world.client.get("/api/v1/namespaces/a/secrets", headers=world.headers(who))
    assert listed.status_code == 200
    assert [i["metadata"]["name"] for i in listed.json()["items"]] == ["s1"]
    assert all("data" not in i for i in listed.json()["items"])
    assert SECRET_B64 not in got.text + listed.text
    cm = world.client.get("/api/v1/namespaces/a/configmaps/c1", headers=world.headers(who))
    assert cm.json()["data"] == {"color": "blue"}


def test_viewer_does_not_get_the_data_kubectl_apply_copies_into_an_annotation(
    world: World,
) -> None:
    applied = json.dumps(secret("applied"))
    body = secret(
        "applied",
        metadata={
            "name": "applied",
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": applied,
                "owner": "team-a",
            },
        },
    )
    made = world.client.post(
        "/api/v1/namespaces/a/secrets", headers=world.headers("editor_a"), json=body
    )
    assert made.status_code == 201
    assert SECRET_B64 in made.text
    for who in ("viewer_a", "viewer_all"):
        h = world.headers(who)
        got = world.client.get("/api/v1/namespaces/a/secrets/applied", headers=h)
        listed = world.client.get("/api/v1/namespaces/a/secrets", headers=h)
        assert got.json()["metadata"]["annotations"] == {"owner": "team-a"}
        assert SECRET_B64 not in got.text + listed.text
    cm = configmap(
        "applied",
        metadata={
            "name": "applied",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        },
    )
    world.client.post("/api/v1/namespaces/a/configmaps", headers=world.headers("admin"), json=cm)
    seen = world.client.get(
        "/api/v1/namespaces/a/configmaps/applied", headers=world.headers("viewer_a")
    ).json()
    assert "kubectl.kubernetes.io/last-applied-configuration" in seen["metadata"]["annotations"]


def test_viewer_of_all_namespaces_lists_secrets_everywhere_without_data(world: World) -> None:
    listed = world.client.get("/api/v1/secrets", headers=world.headers("viewer_all"))
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items] == [
        ("a", "s1"),
        ("b", "s1"),
    ]
    assert all("data" not in i for i in items)
    assert SECRET_B64 not in listed.text


def test_editor_and_admin_see_data(world: World) -> None:
    for who in ("admin", "editor_a"):
        got = world.client.get("/api/v1/namespaces/a/secrets/s1", headers=world.headers(who))
        assert got.json()["data"] == {"password": SECRET_B64}


# --- discovery and health --------------------------------------------------------------------


def test_discovery_documents(world: World) -> None:
    h = world.headers("viewer_a")
    api = world.client.get("/api", headers=h).json()
    assert api["kind"] == "APIVersions"
    assert api["versions"] == ["v1"]
    assert api["serverAddressByClientCIDRs"][0]["clientCIDR"] == "0.0.0.0/0"
    resources = world.client.get("/api/v1", headers=h).json()
    assert resources["kind"] == "APIResourceList"
    assert resources["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in resources["resources"]}
    assert set(by_name) == {"secrets", "configmaps"}
    for name, kind in (("secrets", "Secret"), ("configmaps", "ConfigMap")):
        entry = by_name[name]
        assert entry["kind"] == kind
        assert entry["singularName"] == kind.lower()
        assert entry["namespaced"] is True
        assert entry["verbs"] == ["create", "delete", "get", "list", "patch", "update"]
    assert by_name["configmaps"]["shortNames"] == ["cm"]
    assert "shortNames" not in by_name["secrets"]
    groups = world.client.get("/apis", headers=h).json()
    assert groups == {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}


def test_version_document() -> None:
    store = MemoryStore()
    service = ClusterService(store, Chains(config(AES_KEY)), clock=lambda: NOW)
    book = ClusterTokenBook(store)
    token, record = issue_cluster_token(
        rng=os.urandom, role="Viewer", namespaces=["*"], now=NOW, name="v"
    )
    book.add(record)
    app = create_cluster_app(service, book, clock=lambda: NOW, version="1.2.3rc1+local")
    with TestClient(app) as client:
        doc = client.get("/version", headers={"Authorization": f"Bearer {token}"}).json()
    assert doc["major"] == "1"
    assert doc["minor"] == "31"
    assert doc["gitVersion"] == "v1.31.0+kinko.1.2.3rc1-local"
    assert doc["goVersion"] == "n/a"
    assert "/" in doc["platform"]
    for key in ("gitCommit", "gitTreeState", "buildDate", "compiler"):
        assert isinstance(doc[key], str)


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz"])
def test_health_is_plain_ok_without_a_token(world: World, path: str) -> None:
    got = world.client.get(path)
    assert got.status_code == 200
    assert got.text == "ok"
    assert got.headers["content-type"].startswith("text/plain")


def test_unauthorized_status_has_a_bearer_challenge(world: World) -> None:
    got = world.client.get("/api/v1/namespaces/a/secrets")
    assert got.status_code == 401
    assert got.headers["www-authenticate"].startswith("Bearer")
    assert got.json()["reason"] == "Unauthorized"


def test_unknown_path_and_method_answer_status(world: World) -> None:
    h = world.headers("admin")
    missing = world.client.get("/api/v2/things", headers=h)
    assert missing.status_code == 404
    assert missing.json()["reason"] == "NotFound"
    wrong = world.client.post("/api/v1/namespaces/a/secrets/s1", headers=h, json={})
    assert wrong.status_code == 405
    assert wrong.json()["reason"] == "MethodNotAllowed"
    assert wrong.json()["kind"] == "Status"


# --- create, read, replace --------------------------------------------------------------------


def test_create_returns_201_with_uid_version_and_stores_encrypted(world: World) -> None:
    got = world.client.post(
        "/api/v1/namespaces/a/secrets", headers=world.headers("editor_a"), json=secret("db")
    )
    assert got.status_code == 201
    doc = got.json()
    assert doc["kind"] == "Secret"
    assert doc["metadata"]["uid"]
    assert doc["metadata"]["creationTimestamp"] == "2026-11-28T12:00:00Z"
    assert doc["data"] == {"password": SECRET_B64}
    entry = world.store.get(b"/registry/secrets/a/db")
    assert entry is not None
    assert doc["metadata"]["resourceVersion"] == str(entry.mod_revision)
    assert entry.value.startswith(b"k8s:enc:aescbc:v1:k1:")
    assert SECRET not in entry.value


def test_create_from_yaml_keeps_timestamps_as_text(world: World) -> None:
    body = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: from-yaml
  annotations:
    when: 2024-01-01
data:
  since: 2024-01-01T00:00:00Z
  n: "1"
"""
    got = world.client.post(
        "/api/v1/namespaces/a/configmaps",
        headers=world.headers("admin", **{"Content-Type": "application/yaml"}),
        content=body.encode(),
    )
    assert got.status_code == 201, got.text
    doc = got.json()
    assert doc["data"]["since"] == "2024-01-01T00:00:00Z"
    assert doc["metadata"]["annotations"] == {"when": "2024-01-01"}
    assert doc["metadata"]["namespace"] == "a"


def test_create_without_content_type_is_json(world: World) -> None:
    got = world.client.post(
        "/api/v1/namespaces/a/configmaps",
        headers=world.headers("admin"),
        content=json.dumps(configmap("plain")).encode(),
    )
    assert got.status_code == 201, got.text


def test_create_and_replace_fill_a_missing_api_version_and_kind(world: World) -> None:
    h = world.headers("admin")
    body = {"metadata": {"name": "bare"}, "data": {"password": SECRET_B64}}
    got = world.client.post("/api/v1/namespaces/a/secrets", headers=h, json=body)
    assert got.status_code == 201, got.text
    assert (got.json()["apiVersion"], got.json()["kind"]) == ("v1", "Secret")
    replaced = world.client.put(
        "/api/v1/namespaces/a/configmaps/c1",
        headers=h,
        json={"apiVersion": "", "kind": "", "metadata": {"name": "c1"}, "data": {"x": "y"}},
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["kind"] == "ConfigMap"


def test_create_takes_string_data(world: World) -> None:
    body = secret("sd")
    body["stringData"] = {"user": "alice"}
    got = world.client.post(
        "/api/v1/namespaces/a/secrets", headers=world.headers("admin"), json=body
    )
    assert got.status_code == 201
    assert got.json()["data"]["user"] == base64.b64encode(b"alice").decode()
    assert "stringData" not in got.json()


def test_replace_with_current_version_then_get(world: World) -> None:
    h = world.headers("editor_a")
    current = world.client.get("/api/v1/namespaces/a/secrets/s1", headers=h).json()
    current["data"] = {"password": base64.b64encode(b"new").decode()}
    got = world.client.put("/api/v1/namespaces/a/secrets/s1", headers=h, json=current)
    assert got.status_code == 200
    assert got.json()["metadata"]["uid"] == current["metadata"]["uid"]
    assert int(got.json()["metadata"]["resourceVersion"]) > int(
        current["metadata"]["resourceVersion"]
    )
    again = world.client.get("/api/v1/namespaces/a/secrets/s1", headers=h).json()
    assert again["data"] == {"password": base64.b64encode(b"new").decode()}


def test_replace_without_version_applies_to_current(world: World) -> None:
    got = world.client.put(
        "/api/v1/namespaces/a/configmaps/c1",
        headers=world.headers("admin"),
        json=configmap("c1", data={"color": "green"}),
    )
    assert got.status_code == 200
    assert got.json()["data"] == {"color": "green"}


# --- patch ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/strategic-merge-patch+json",
        "application/merge-patch+json",
        "application/merge-patch+json; charset=utf-8",
    ],
)
def test_merge_patches(world: World, content_type: str) -> None:
    got = world.client.patch(
        "/api/v1/namespaces/a/configmaps/c1",
        headers=world.headers("editor_a", **{"Content-Type": content_type}),
        content=json.dumps({"data": {"size": "L", "color": None}}).encode(),
    )
    assert got.status_code == 200, got.text
    assert got.json()["data"] == {"size": "L"}


def test_json_patch(world: World) -> None:
    ops = [
        {"op": "test", "path": "/data/password", "value": SECRET_B64},
        {"op": "add", "path": "/data/user", "value": base64.b64encode(b"bob").decode()},
        {"op": "add", "path": "/metadata/labels/tier", "value": "db"},
        {"op": "remove", "path": "/metadata/labels/app"},
    ]
    got = world.client.patch(
        "/api/v1/namespaces/a/secrets/s1",
        headers=world.headers("editor_a", **{"Content-Type": "application/json-patch+json"}),
        content=json.dumps(ops).encode(),
    )
    assert got.status_code == 200, got.text
    doc = got.json()
    assert doc["data"]["user"] == base64.b64encode(b"bob").decode()
    assert doc["metadata"]["labels"] == {"tier": "db"}


def test_json_patch_that_removes_the_version_still_applies(world: World) -> None:
    ops = [
        {"op": "remove", "path": "/metadata/resourceVersion"},
        {"op": "replace", "path": "/data/color", "value": "red"},
    ]
    got = world.client.patch(
        "/api/v1/namespaces/a/configmaps/c1",
        headers=world.headers("admin", **{"Content-Type": "application/json-patch+json"}),
        content=json.dumps(ops).encode(),
    )
    assert got.status_code == 200, got.text
    assert got.json()["data"] == {"color": "red"}


class RacingService(ClusterService):
    """A real ClusterService in which another writer changes the object right after the
    first read of a patch (the window a JSON patch must guard)."""

    race = False

    def get(self, resource: str, namespace: str, name: str) -> Secret | ConfigMap:
        obj = super().get(resource, namespace, name)
        if self.race:
            self.race = False
            super().patch(resource, namespace, name, {"metadata": {"labels": {"other": "x"}}})
        return obj


def test_json_patch_loses_to_a_concurrent_writer_with_conflict() -> None:
    store = MemoryStore()
    service = RacingService(store, Chains(config(AES_KEY)), clock=lambda: NOW)
    service.create("configmaps", "a", configmap("c1"))
    book = ClusterTokenBook(store)
    token, record = issue_cluster_token(
        rng=os.urandom, role="Administrator", namespaces=None, now=NOW, name="root"
    )
    book.add(record)
    app = create_cluster_app(service, book, clock=lambda: NOW)
    service.race = True
    with TestClient(app) as client:
        got = client.patch(
            "/api/v1/namespaces/a/configmaps/c1",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json-patch+json",
            },
            content=json.dumps([{"op": "replace", "path": "/data/color", "value": "red"}]),
        )
    assert got.status_code == 409, got.text
    assert got.json()["reason"] == "Conflict"
    assert service.get("configmaps", "a", "c1").data == {"color": "blue"}


# --- delete ---------------------------------------------------------------------------------


def test_delete_returns_the_object(world: World) -> None:
    h = world.headers("editor_a")
    got = world.client.delete("/api/v1/namespaces/a/secrets/s1", headers=h)
    assert got.status_code == 200
    assert got.json()["kind"] == "Secret"
    assert got.json()["metadata"]["name"] == "s1"
    assert world.client.get("/api/v1/namespaces/a/secrets/s1", headers=h).status_code == 404


def test_delete_preconditions(world: World) -> None:
    h = world.headers("admin", **{"Content-Type": "application/json"})
    path = "/api/v1/namespaces/a/secrets/s1"
    current = world.client.get(path, headers=h).json()["metadata"]
    before = world.store.revision
    for pre in ({"resourceVersion": "1"}, {"uid": "not-the-uid"}):
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": pre}
        got = world.client.request("DELETE", path, headers=h, content=json.dumps(options))
        assert got.status_code == 409, got.text
        assert got.json()["reason"] == "Conflict"
        assert world.store.revision == before
    body: dict[str, object] = {
        "preconditions": {"resourceVersion": current["resourceVersion"], "uid": current["uid"]},
        "propagationPolicy": "Background",
        "gracePeriodSeconds": 0,
    }
    got = world.client.request("DELETE", path, headers=h, content=json.dumps(body))
    assert got.status_code == 200, got.text


# --- lists ----------------------------------------------------------------------------------


def test_list_document_and_headers(world: World) -> None:
    got = world.client.get("/api/v1/namespaces/a/secrets", headers=world.headers("admin"))
    assert got.status_code == 200
    doc = got.json()
    assert doc["kind"] == "SecretList"
    assert doc["apiVersion"] == "v1"
    assert doc["metadata"]["resourceVersion"] == str(world.store.revision)
    assert "continue" not in doc["metadata"]
    assert "unreadable" not in doc
    assert got.headers["x-kinko-unreadable"] == "0"
    assert "x-kinko-unreadable-names" not in got.headers
    cms = world.client.get("/api/v1/configmaps", headers=world.headers("admin")).json()
    assert cms["kind"] == "ConfigMapList"
    assert len(cms["items"]) == 2


def test_list_with_label_selector(world: World) -> None:
    h = world.headers("admin")
    world.client.post(
        "/api/v1/namespaces/a/secrets",
        headers=h,
        json=secret("other", metadata={"name": "other", "labels": {"app": "db"}}),
    )
    for selector, names in (
        ("app=web", ["s1"]),
        ("app in (db,web)", ["other", "s1"]),
        ("app!=web", ["other"]),
        ("!app", []),
        ("", ["other", "s1"]),
    ):
        got = world.client.get(
            "/api/v1/namespaces/a/secrets", headers=h, params={"labelSelector": selector}
        )
        assert got.status_code == 200, got.text
        assert [i["metadata"]["name"] for i in got.json()["items"]] == names, selector


def test_list_pages_with_limit_and_continue(world: World) -> None:
    h = world.headers("admin")
    for n in range(5):
        world.service.create("configmaps", "p", configmap(f"cm-{n}", "p"))
    names: list[str] = []
    token: str | None = None
    versions = set()
    for _ in range(10):
        params = {"limit": "2"} | ({"continue": token} if token else {})
        doc = world.client.get("/api/v1/namespaces/p/configmaps", headers=h, params=params).json()
        names += [i["metadata"]["name"] for i in doc["items"]]
        versions.add(doc["metadata"]["resourceVersion"])
        token = doc["metadata"].get("continue")
        if not token:
            break
    assert names == [f"cm-{n}" for n in range(5)]
    assert len(versions) == 1
    everything = world.client.get(
        "/api/v1/namespaces/p/configmaps", headers=h, params={"limit": "0"}
    ).json()
    assert len(everything["items"]) == 5


@pytest.mark.parametrize(
    ("path", "selector", "expected"),
    [
        ("/api/v1/secrets", "metadata.namespace=b", [("b", "s1")]),
        ("/api/v1/secrets", "metadata.namespace==a", [("a", "s1")]),
        ("/api/v1/secrets", "metadata.namespace!=a", [("b", "s1")]),
        ("/api/v1/namespaces/a/secrets", "metadata.name=s1", [("a", "s1")]),
        ("/api/v1/namespaces/a/secrets", "metadata.name=nope", []),
        ("/api/v1/secrets", "metadata.name=s1,metadata.namespace=a", [("a", "s1")]),
        ("/api/v1/secrets", "type=Opaque", [("a", "s1"), ("b", "s1")]),
        ("/api/v1/secrets", "type!=Opaque", []),
        ("/api/v1/configmaps", "metadata.name!=c1", []),
    ],
)
def test_list_with_field_selector(
    world: World, path: str, selector: str, expected: list[tuple[str, str]]
) -> None:
    got = world.client.get(path, headers=world.headers("admin"), params={"fieldSelector": selector})
    assert got.status_code == 200, got.text
    items = got.json()["items"]
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items] == expected


def test_list_ignores_kubernetes_parameters_it_does_not_need(world: World) -> None:
    got = world.client.get(
        "/api/v1/namespaces/a/secrets",
        headers=world.headers("admin"),
        params={
            "resourceVersion": "0",
            "resourceVersionMatch": "NotOlderThan",
            "timeoutSeconds": "30",
            "pretty": "true",
            "allowWatchBookmarks": "true",
            "watch": "false",
        },
    )
    assert got.status_code == 200, got.text
    assert len(got.json()["items"]) == 1


# --- metrics --------------------------------------------------------------------------------


def test_metrics_count_requests_by_kubernetes_verb_and_resource(world: World) -> None:
    h = world.headers("admin")
    world.client.get("/api/v1/namespaces/a/secrets", headers=h)
    world.client.get("/api/v1/namespaces/a/secrets/s1", headers=h)
    world.client.get("/api/v1/namespaces/a/secrets/missing", headers=h)
    world.client.post("/api/v1/namespaces/a/configmaps", headers=h, json=configmap("m"))
    got = world.client.get("/metrics", headers=h)
    assert got.status_code == 200
    assert got.headers["content-type"].startswith("text/plain")
    text = got.text
    for labels in (
        'code="200",resource="secrets",verb="LIST"',
        'code="200",resource="secrets",verb="GET"',
        'code="404",resource="secrets",verb="GET"',
        'code="201",resource="configmaps",verb="POST"',
    ):
        assert f"apiserver_request_total{{{labels}}} 1.0" in text, labels
    assert "apiserver_request_duration_seconds_bucket" in text
    assert "s1" not in text


def test_no_metrics_route_without_metrics() -> None:
    store = MemoryStore()
    service = ClusterService(store, Chains(config(AES_KEY)), clock=lambda: NOW)
    book = ClusterTokenBook(store)
    token, record = issue_cluster_token(
        rng=os.urandom, role="Administrator", namespaces=None, now=NOW, name="root"
    )
    book.add(record)
    with TestClient(create_cluster_app(service, book, clock=lambda: NOW)) as client:
        got = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "verb", "resource"),
    [
        ("GET", "/api/v1/namespaces/a/secrets", "LIST", "secrets"),
        ("GET", "/api/v1/configmaps", "LIST", "configmaps"),
        ("GET", "/api/v1/namespaces/a/secrets/x", "GET", "secrets"),
        ("POST", "/api/v1/namespaces/a/configmaps", "POST", "configmaps"),
        ("PUT", "/api/v1/namespaces/a/configmaps/x", "PUT", "configmaps"),
        ("PATCH", "/api/v1/namespaces/a/secrets/x", "PATCH", "secrets"),
        ("DELETE", "/api/v1/namespaces/a/secrets/x", "DELETE", "secrets"),
        ("GET", "/api/v1/namespaces/a/pods", "GET", ""),
        ("GET", "/api", "GET", ""),
        ("GET", "/version", "GET", ""),
        ("BREW", "/api/v1/secrets", "OTHER", "secrets"),
    ],
)
def test_classify(method: str, path: str, verb: str, resource: str) -> None:
    assert classify(method, path) == (verb, resource)


# --- authentication cache --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("", None),
    ],
)
def test_bearer_token(header: str, token: str | None) -> None:
    assert bearer_token({"authorization": header} if header else {}) == token


def test_authenticator_remembers_a_success_for_ttl_only() -> None:
    store = MemoryStore()
    book = ClusterTokenBook(store)
    token, record = issue_cluster_token(
        rng=os.urandom, role="Viewer", namespaces=["a"], now=NOW, name="v"
    )
    book.add(record)
    ticks = [100.0]
    auth = ClusterAuthenticator(book, clock=lambda: NOW, ttl=1.0, monotonic=lambda: ticks[0])
    assert asyncio.run(auth.principal(token)).name == "v"
    book.revoke(record.token_hash)
    ticks[0] += 0.5
    # Cached: a revoked token works for at most the TTL (one store read per second).
    assert asyncio.run(auth.principal(token)).name == "v"
    ticks[0] += 0.6
    with pytest.raises(Unauthorized):
        asyncio.run(auth.principal(token))
    with pytest.raises(Unauthorized):
        asyncio.run(auth.principal(None))


def test_authenticator_refuses_bad_settings() -> None:
    with pytest.raises(InvalidArgument):
        ClusterAuthenticator(ClusterTokenBook(MemoryStore()), clock=lambda: NOW, ttl=-1)


def test_app_refuses_a_tiny_body_cap() -> None:
    store = MemoryStore()
    service = ClusterService(store, Chains(config(AES_KEY)), clock=lambda: NOW)
    with pytest.raises(InvalidArgument):
        create_cluster_app(service, ClusterTokenBook(store), max_body=100)
