"""``kinko secret|configmap|kubeconfig`` through click's CliRunner, against a fake Kubernetes API.

The fake is a small Starlette app over an in-memory dict that answers the core/v1 routes the
way Kubernetes does (objects, lists with ``limit``/``continue`` and ``labelSelector``,
``Status`` errors) plus kinko's unreadable report and Kubernetes'
``ignoreStoreReadErrorWithClusterBreakingPotential``. The commands build their client
through a :class:`ClusterHook` that sends through Starlette's ``TestClient``; the connection
options still decide the URL, token and CA.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

import pytest
import yaml
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from kinko.api.cluster import create_cluster_app
from kinko.cli.cluster_client import (
    ClusterConnection,
    ClusterHook,
    docker_config_json,
    human_age,
)
from kinko.cli.main import cli
from kinko.cluster.auth import ClusterTokenBook, issue_cluster_token
from kinko.cluster.client import UNREADABLE_HEADER, ClusterClient, KubeObject
from kinko.cluster.endpoints import write_admin_token
from kinko.cluster.service import ClusterService
from kinko.crypto.chain import ProviderChain
from kinko.crypto.config import KmsConfig, build_chains, parse_encryption_config
from kinko.store.memory import MemoryStore
from tests.unit.datadir import ADMIN, SERVER, write_up_folder

READER = "kinko_reader_token"
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")

Key = tuple[str, str, str]


def _status(code: int, reason: str, message: str, **details: object) -> JSONResponse:
    body: dict[str, object] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=code)


@dataclass
class FakeKube:
    """An in-memory core/v1 API for Secrets and ConfigMaps, with kinko's extensions."""

    objects: dict[Key, KubeObject] = field(default_factory=dict)
    unreadable: dict[Key, str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    down: bool = False
    revision: int = 0

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/version", self.version, methods=["GET"]),
                Route("/api/v1/{resource}", self.collection, methods=["GET"]),
                Route(
                    "/api/v1/namespaces/{ns}/{resource}",
                    self.collection,
                    methods=["GET", "POST"],
                ),
                Route(
                    "/api/v1/namespaces/{ns}/{resource}/{name}",
                    self.item,
                    methods=["GET", "PUT", "PATCH", "DELETE"],
                ),
            ]
        )

    def _gate(self, request: Request) -> JSONResponse | None:
        self.requests.append(request)
        auth = request.headers.get("authorization", "")
        self.tokens.append(auth.removeprefix("Bearer "))
        if self.down:
            return _status(503, "ServiceUnavailable", "the KMS plugin is not healthy")
        if auth not in (f"Bearer {ADMIN}", f"Bearer {READER}"):
            return _status(401, "Unauthorized", "Unauthorized")
        if request.method != "GET" and auth == f"Bearer {READER}":
            return _status(403, "Forbidden", "the Reader role cannot write")
        return None

    async def version(self, request: Request) -> JSONResponse:
        return self._gate(request) or JSONResponse({"gitVersion": "v1.31.0-kinko"})

    async def collection(self, request: Request) -> JSONResponse:
        if (refused := self._gate(request)) is not None:
            return refused
        resource = request.path_params["resource"]
        ns = request.path_params.get("ns")
        if request.method == "POST":
            assert ns is not None
            return self._create(resource, ns, await request.json())
        return self._list(request, resource, ns)

    def _create(self, resource: str, ns: str, body: KubeObject) -> JSONResponse:
        meta = body["metadata"]
        assert isinstance(meta, dict)
        name = meta["name"]
        assert meta.get("namespace", ns) == ns
        if not _NAME.fullmatch(name):
            return _status(
                422,
                "Invalid",
                f'Secret "{name}" is invalid',
                name=name,
                kind=resource,
                causes=[
                    {
                        "reason": "FieldValueInvalid",
                        "message": "a lowercase RFC 1123 subdomain must consist of …",
                        "field": "metadata.name",
                    }
                ],
            )
        if (resource, ns, name) in self.objects:
            return _status(409, "AlreadyExists", f'{resource} "{name}" already exists')
        for forbidden in ("uid", "resourceVersion", "creationTimestamp"):
            if forbidden in meta:
                return _status(400, "BadRequest", f"metadata.{forbidden} must not be set")
        self.revision += 1
        created = dict(body)
        created["metadata"] = {
            **meta,
            "namespace": ns,
            "uid": f"uid-{self.revision}",
            "resourceVersion": str(self.revision),
            "creationTimestamp": (datetime.now(UTC) - timedelta(hours=3)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        }
        self.objects[(resource, ns, name)] = created
        return JSONResponse(created, status_code=201)

    def _list(self, request: Request, resource: str, ns: str | None) -> JSONResponse:
        selector = dict(
            pair.split("=", 1)
            for pair in request.query_params.get("labelSelector", "").split(",")
            if pair
        )
        keys = sorted(
            k
            for k, obj in self.objects.items()
            if k[0] == resource
            and (ns is None or k[1] == ns)
            and all(_labels(obj).get(a) == b for a, b in selector.items())
        )
        start = int(request.query_params.get("continue", "0") or 0)
        limit = int(request.query_params.get("limit", "0") or 0) or len(keys)
        page = keys[start : start + limit]
        meta: dict[str, object] = {"resourceVersion": str(self.revision)}
        if start + limit < len(keys):
            meta["continue"] = str(start + limit)
        body: dict[str, object] = {
            "kind": "SecretList" if resource == "secrets" else "ConfigMapList",
            "apiVersion": "v1",
            "metadata": meta,
            "items": [self.objects[k] for k in page],
        }
        headers = {}
        hidden = [k for k in sorted(self.unreadable) if k[0] == resource and ns in (None, k[1])]
        if hidden and start == 0:
            body["unreadable"] = {
                "count": len(hidden),
                "items": [
                    {"namespace": k[1], "name": k[2], "reason": self.unreadable[k]}
                    for k in hidden[:2]
                ],
            }
            headers[UNREADABLE_HEADER] = str(len(hidden))
        return JSONResponse(body, headers=headers)

    async def item(self, request: Request) -> JSONResponse:
        if (refused := self._gate(request)) is not None:
            return refused
        key = (
            request.path_params["resource"],
            request.path_params["ns"],
            request.path_params["name"],
        )
        if key in self.unreadable:
            if request.method == "DELETE" and request.query_params.get(
                "ignoreStoreReadErrorWithClusterBreakingPotential"
            ):
                del self.unreadable[key]
                return JSONResponse({"kind": "Status", "status": "Success"})
            return _status(500, "StorageReadError", f"cannot read /registry/{'/'.join(key)}")
        if key not in self.objects:
            return _status(404, "NotFound", f'{key[0]} "{key[2]}" not found')
        if request.method == "DELETE":
            return JSONResponse(self.objects.pop(key))
        return JSONResponse(self.objects[key])

    def put(
        self,
        resource: str,
        ns: str,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        **fields: object,
    ) -> None:
        """Stores an object as if a client had created it."""
        meta: dict[str, object] = {"name": name, "namespace": ns}
        if labels:
            meta["labels"] = labels
        self._create(resource, ns, {"metadata": meta, **fields})


def _labels(obj: KubeObject) -> dict[str, str]:
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return labels if isinstance(labels, dict) else {}


@dataclass
class Env:
    kube: FakeKube
    http: TestClient
    data_dir: Path
    connections: list[ClusterConnection] = field(default_factory=list)

    def hook(self) -> ClusterHook:
        def factory(conn: ClusterConnection) -> ClusterClient:
            self.connections.append(conn)
            return ClusterClient(conn.server, token=conn.token, http=self.http)

        return ClusterHook(factory)

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """``kinko ARGS --data-dir DIR`` (the data folder of a fake ``kinko up``)."""
        return self.raw(*args, "--data-dir", str(self.data_dir), env=env)

    def raw(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), obj=self.hook(), env=env)

    def stored(self, resource: str, ns: str, name: str) -> KubeObject:
        return self.kube.objects[(resource, ns, name)]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    data_dir = tmp_path / "home"
    write_up_folder(data_dir, socket=f"unix://{data_dir}/kms.sock")
    kube = FakeKube()
    with TestClient(kube.app()) as http:
        yield Env(kube=kube, http=http, data_dir=data_dir)


def _data(obj: KubeObject) -> dict[str, bytes]:
    data = obj.get("data")
    assert isinstance(data, dict)
    return {k: base64.b64decode(v) for k, v in data.items()}


# --------------------------------------------------------------------------- connection


def test_data_dir_gives_server_admin_token_and_ca(env: Env) -> None:
    result = env.run("secret", "list")
    assert result.exit_code == 0, result.output
    assert env.connections == [
        ClusterConnection(server=SERVER, token=ADMIN, ca=env.data_dir / "tls" / "ca.crt")
    ]
    assert env.kube.tokens == [ADMIN]


def test_kinko_home_names_the_data_dir(env: Env) -> None:
    result = env.raw("secret", "list", env={"KINKO_HOME": str(env.data_dir)})
    assert result.exit_code == 0, result.output
    assert env.connections[0].server == SERVER


def test_token_option_overrides_the_admin_token(env: Env) -> None:
    result = env.run("secret", "create", "generic", "a", "--token", READER)
    assert result.exit_code == 9, result.output
    assert env.kube.tokens == [READER]


def test_server_and_token_from_the_environment(env: Env, tmp_path: Path) -> None:
    result = env.raw(
        "configmap",
        "list",
        env={
            "KINKO_SERVER": "https://10.0.0.1:6443",
            "KINKO_TOKEN": READER,
            "KINKO_HOME": str(tmp_path / "nothing"),
        },
    )
    assert result.exit_code == 0, result.output
    assert env.connections == [ClusterConnection(server="https://10.0.0.1:6443", token=READER)]


def test_server_without_token_never_sends_the_admin_token(env: Env) -> None:
    result = env.run("secret", "list", "--server", "https://10.0.0.1:6443", env={})
    assert result.exit_code == 2
    assert "--server needs --token" in result.output
    assert env.connections == []


def test_missing_endpoints_says_kinko_up_is_not_running(env: Env, tmp_path: Path) -> None:
    result = env.raw("secret", "list", "--data-dir", str(tmp_path / "elsewhere"))
    assert result.exit_code == 4
    assert "no endpoints.json in" in result.output
    assert "is kinko up running there?" in result.output


# --------------------------------------------------------------------------- secret create


def test_create_generic_from_literals_files_and_labels(env: Env, tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_bytes(b"\x00\xffbinary")
    (tmp_path / "other").write_text("x")
    result = env.run(
        "secret",
        "create",
        "generic",
        "db",
        "-n",
        "apps",
        "--from-literal",
        "user=admin",
        "--from-literal",
        "pass=s3=cr3t",
        "--from-file",
        str(tmp_path / "cert.pem"),
        "--from-file",
        f"renamed={tmp_path / 'other'}",
        "--type",
        "example.com/db",
        "--label",
        "app=web",
        "--label",
        "tier=",
    )
    assert result.exit_code == 0, result.output
    assert result.output == "secret/db created\n"
    stored = env.stored("secrets", "apps", "db")
    assert stored["type"] == "example.com/db"
    assert stored["metadata"] == {
        "name": "db",
        "namespace": "apps",
        "labels": {"app": "web", "tier": ""},
        "uid": "uid-1",
        "resourceVersion": "1",
        "creationTimestamp": stored["metadata"]["creationTimestamp"],  # type: ignore[index]
    }
    assert _data(stored) == {
        "user": b"admin",
        "pass": b"s3=cr3t",
        "cert.pem": b"\x00\xffbinary",
        "renamed": b"x",
    }
    assert stored["apiVersion"] == "v1"
    assert stored["kind"] == "Secret"


def test_create_generic_defaults_to_opaque_in_default(env: Env) -> None:
    result = env.run("secret", "create", "generic", "a", "--from-literal", "k=v")
    assert result.exit_code == 0, result.output
    assert env.stored("secrets", "default", "a")["type"] == "Opaque"


def test_from_file_folder_takes_every_regular_file(env: Env, tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("B")
    (folder / "a.txt").write_text("A")
    result = env.run("secret", "create", "generic", "f", "--from-file", str(folder))
    assert result.exit_code == 0, result.output
    assert _data(env.stored("secrets", "default", "f")) == {"a.txt": b"A", "b.txt": b"B"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-literal", "novalue"], "expected --from-literal KEY=VALUE (no '=' found)"),
        (["--from-literal", "=v"], "expected a non-empty KEY"),
        (["--from-literal", "k=1", "--from-literal", "k=2"], "another key by that name"),
        (["--label", "oops"], "expected --label KEY=VALUE, got 'oops'"),
        (["--from-file", "=x"], "expected a non-empty KEY"),
    ],
)
def test_bad_input_is_a_usage_error(env: Env, args: list[str], message: str) -> None:
    result = env.run("secret", "create", "generic", "a", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert env.kube.requests == []


def test_a_literal_without_equals_is_not_echoed(env: Env) -> None:
    result = env.run("secret", "create", "generic", "a", "--from-literal", "hunter2secret")
    assert result.exit_code == 2
    assert "hunter2secret" not in result.output


def test_unreadable_file_is_invalid_argument(env: Env, tmp_path: Path) -> None:
    result = env.run("secret", "create", "generic", "a", "--from-file", str(tmp_path / "absent"))
    assert result.exit_code == 4
    assert "cannot read" in result.output
    assert env.kube.requests == []


def test_create_tls_reads_cert_key_and_ca(env: Env, tmp_path: Path) -> None:
    for name, text in (("c.pem", "CERT"), ("k.pem", "KEY"), ("ca.pem", "CA")):
        (tmp_path / name).write_text(text)
    result = env.run(
        "secret",
        "create",
        "tls",
        "web",
        "-n",
        "apps",
        "--cert",
        str(tmp_path / "c.pem"),
        "--key",
        str(tmp_path / "k.pem"),
        "--ca",
        str(tmp_path / "ca.pem"),
    )
    assert result.exit_code == 0, result.output
    stored = env.stored("secrets", "apps", "web")
    assert stored["type"] == "kubernetes.io/tls"
    assert _data(stored) == {"tls.crt": b"CERT", "tls.key": b"KEY", "ca.crt": b"CA"}
    # --ca is the stored ca.crt; the server's CA still comes from the data folder.
    assert env.connections[0].ca == env.data_dir / "tls" / "ca.crt"


def test_create_tls_without_ca(env: Env, tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("CERT")
    (tmp_path / "k.pem").write_text("KEY")
    result = env.run(
        "secret",
        "create",
        "tls",
        "web",
        "--cert",
        str(tmp_path / "c.pem"),
        "--key",
        str(tmp_path / "k.pem"),
    )
    assert result.exit_code == 0, result.output
    assert set(_data(env.stored("secrets", "default", "web"))) == {"tls.crt", "tls.key"}


def test_create_tls_needs_existing_files(env: Env, tmp_path: Path) -> None:
    result = env.run("secret", "create", "tls", "web", "--cert", str(tmp_path / "no"), "--key", "x")
    assert result.exit_code == 2
    assert env.kube.requests == []


def test_docker_registry_secret_is_built_as_kubectl_builds_it(env: Env) -> None:
    result = env.run(
        "secret",
        "create",
        "docker-registry",
        "pull",
        "--docker-server",
        "registry.example.com",
        "--docker-username",
        "robot",
        "--docker-password",
        "p<&>w",
        "--docker-email",
        "robot@example.com",
    )
    assert result.exit_code == 0, result.output
    stored = env.stored("secrets", "default", "pull")
    assert stored["type"] == "kubernetes.io/dockerconfigjson"
    auth = base64.b64encode(b"robot:p<&>w").decode()
    # The exact bytes of Go's json.Marshal: compact, field order, HTML characters escaped.
    assert _data(stored) == {
        ".dockerconfigjson": (
            '{"auths":{"registry.example.com":{"username":"robot",'
            '"password":"p\\u003c\\u0026\\u003ew","email":"robot@example.com",'
            f'"auth":"{auth}"}}}}}}'
        ).encode()
    }
    parsed = json.loads(_data(stored)[".dockerconfigjson"])
    assert parsed == {
        "auths": {
            "registry.example.com": {
                "username": "robot",
                "password": "p<&>w",
                "email": "robot@example.com",
                "auth": auth,
            }
        }
    }


def test_docker_config_json_leaves_out_an_empty_email_and_defaults_to_docker_hub(
    env: Env,
) -> None:
    assert docker_config_json("r", "u", "p") == (
        b'{"auths":{"r":{"username":"u","password":"p","auth":"dTpw"}}}'
    )
    result = env.run(
        "secret",
        "create",
        "docker-registry",
        "hub",
        "--docker-username",
        "u",
        "--docker-password",
        "p",
    )
    assert result.exit_code == 0, result.output
    value = json.loads(_data(env.stored("secrets", "default", "hub"))[".dockerconfigjson"])
    assert list(value["auths"]) == ["https://index.docker.io/v1/"]


def test_create_json_output_prints_the_created_object(env: Env) -> None:
    result = env.run("secret", "create", "generic", "a", "--from-literal", "k=v", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == env.stored("secrets", "default", "a")


def test_create_existing_is_conflict(env: Env) -> None:
    env.kube.put("secrets", "default", "a", type="Opaque")
    result = env.run("secret", "create", "generic", "a", "--from-literal", "k=v")
    assert result.exit_code == 7
    assert 'secrets "a" already exists' in result.output


def test_invalid_object_exits_4_with_field_causes(env: Env) -> None:
    result = env.run("secret", "create", "generic", "Bad_Name", "--from-literal", "k=v")
    assert result.exit_code == 4
    assert 'Secret "Bad_Name" is invalid: [metadata.name:' in result.output


# --------------------------------------------------------------------------- get


def test_get_table_shows_counts_never_values(env: Env) -> None:
    env.kube.put(
        "secrets",
        "apps",
        "db",
        type="Opaque",
        data={"user": base64.b64encode(b"admin").decode(), "pw": "c2VjcmV0dmFsdWU="},
    )
    result = env.run("secret", "get", "db", "-n", "apps")
    assert result.exit_code == 0, result.output
    header, row = [
        line.split() for line in result.output.splitlines() if "db" in line or "NAME" in line
    ]
    assert [w for w in header if w.isalpha()] == ["NAME", "TYPE", "DATA", "AGE"]
    assert [w for w in row if w not in "│┃"] == ["db", "Opaque", "2", "3h"]
    assert "c2VjcmV0dmFsdWU=" not in result.output
    assert "secretvalue" not in result.output
    assert "admin" not in result.output


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_get_json_and_yaml_print_the_object_as_returned(env: Env, fmt: str) -> None:
    env.kube.put("secrets", "default", "a", type="Opaque", data={"k": "dg=="})
    result = env.run("secret", "get", "a", "-o", fmt)
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.output) if fmt == "json" else yaml.safe_load(result.output)
    assert parsed == env.stored("secrets", "default", "a")


def test_get_missing_exits_6(env: Env) -> None:
    result = env.run("secret", "get", "nope")
    assert result.exit_code == 6
    assert 'secrets "nope" not found' in result.output


def test_wrong_token_exits_8(env: Env) -> None:
    result = env.run("secret", "get", "a", "--token", "kinko_wrong")
    assert result.exit_code == 8


def test_server_unavailable_exits_12(env: Env) -> None:
    env.kube.down = True
    result = env.run("configmap", "get", "a")
    assert result.exit_code == 12
    assert "the KMS plugin is not healthy" in result.output


# --------------------------------------------------------------------------- list


def test_list_follows_continue_and_filters_by_namespace_and_selector(env: Env) -> None:
    for i in range(5):
        env.kube.put(
            "secrets", "apps", f"s{i}", type="Opaque", labels={"app": "web"} if i == 1 else None
        )
    env.kube.put("secrets", "other", "x", type="Opaque")
    result = env.run("secret", "list", "-n", "apps", "--chunk-size", "2", "-o", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["kind"] == "SecretList"
    assert [i["metadata"]["name"] for i in doc["items"]] == [f"s{i}" for i in range(5)]
    assert [r.query_params.get("continue") for r in env.kube.requests] == [None, "2", "4"]
    result = env.run("secret", "list", "-n", "apps", "-l", "app=web", "-o", "yaml")
    assert [i["metadata"]["name"] for i in yaml.safe_load(result.output)["items"]] == ["s1"]


def test_list_all_namespaces_adds_a_namespace_column(env: Env) -> None:
    env.kube.put("configmaps", "a", "one", data={"k": "v"})
    env.kube.put("configmaps", "b", "two", binaryData={"b": "AA=="}, data={"k": "v"})
    result = env.run("configmap", "list", "-A")
    assert result.exit_code == 0, result.output
    rows = [[w for w in line.split() if w not in "│┃"] for line in result.output.splitlines()]
    rows = [r for r in rows if len(r) == 4]
    assert rows == [
        ["NAMESPACE", "NAME", "DATA", "AGE"],
        ["a", "one", "1", "3h"],
        ["b", "two", "2", "3h"],
    ]
    assert env.kube.requests[0].url.path == "/api/v1/configmaps"


def test_list_rejects_namespace_and_all_namespaces(env: Env) -> None:
    result = env.run("secret", "list", "-n", "x", "-A")
    assert result.exit_code == 2
    assert "exclude each other" in result.output


def test_list_warns_about_unreadable_objects_on_stderr(env: Env) -> None:
    env.kube.put("secrets", "default", "fine", type="Opaque")
    env.kube.unreadable[("secrets", "default", "lost1")] = "its key was destroyed"
    env.kube.unreadable[("secrets", "default", "lost2")] = "its key was destroyed"
    env.kube.unreadable[("secrets", "default", "lost3")] = "no provider"
    result = env.run("secret", "list", "-o", "json")
    assert result.exit_code == 0, result.output
    assert [i["metadata"]["name"] for i in json.loads(result.stdout)["items"]] == ["fine"]
    assert result.stderr == (
        "warning: 3 secrets cannot be decrypted and were left out: "
        "default/lost1 (its key was destroyed); default/lost2 (its key was destroyed); 1 more\n"
    )


def test_list_without_unreadable_writes_no_warning(env: Env) -> None:
    env.kube.put("secrets", "default", "fine", type="Opaque")
    result = env.run("secret", "list")
    assert result.exit_code == 0, result.output
    assert "fine" in result.stdout
    assert result.stderr == ""


def test_one_unreadable_object_is_reported_in_the_singular(env: Env) -> None:
    env.kube.unreadable[("configmaps", "x", "lost")] = ""
    result = env.run("configmap", "list", "-A")
    assert result.exit_code == 0, result.output
    assert result.stderr == (
        "warning: 1 configmap cannot be decrypted and was left out: x/lost\n"
        "no configmaps found in any namespace\n"
    )


def test_empty_list_says_so_on_stderr(env: Env) -> None:
    result = env.run("secret", "list", "-n", "apps")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == "no secrets found in namespace apps\n"


# --------------------------------------------------------------------------- delete


def test_delete(env: Env) -> None:
    env.kube.put("secrets", "apps", "a", type="Opaque")
    result = env.run("secret", "delete", "a", "-n", "apps")
    assert result.exit_code == 0, result.output
    assert result.output == 'secret "a" deleted\n'
    assert ("secrets", "apps", "a") not in env.kube.objects
    assert env.run("secret", "delete", "a", "-n", "apps").exit_code == 6


def test_delete_unreadable_needs_force(env: Env) -> None:
    env.kube.unreadable[("secrets", "default", "lost")] = "gone"
    result = env.run("secret", "delete", "lost")
    assert result.exit_code == 5
    assert "cannot read /registry/secrets/default/lost" in result.output
    result = env.run("secret", "delete", "lost", "--force-unreadable")
    assert result.exit_code == 0, result.output
    assert (
        env.kube.requests[-1].query_params["ignoreStoreReadErrorWithClusterBreakingPotential"]
        == "true"
    )
    assert not env.kube.unreadable


def test_delete_as_reader_is_forbidden(env: Env) -> None:
    env.kube.put("configmaps", "default", "c")
    result = env.run("configmap", "delete", "c", "--token", READER)
    assert result.exit_code == 9
    assert ("configmaps", "default", "c") in env.kube.objects


# --------------------------------------------------------------------------- copy


def test_copy_strips_server_metadata_and_keeps_the_rest(env: Env) -> None:
    env.kube.put(
        "secrets",
        "default",
        "pull",
        type="kubernetes.io/dockerconfigjson",
        data={".dockerconfigjson": "e30="},
        labels={"a": "b"},
    )
    result = env.run("secret", "copy", "pull", "--to-namespace", "apps")
    assert result.exit_code == 0, result.output
    assert result.output == "secret/pull copied from default/pull\n"
    copy = env.stored("secrets", "apps", "pull")
    source = env.stored("secrets", "default", "pull")
    assert copy["type"] == source["type"]
    assert copy["data"] == source["data"]
    assert copy["metadata"]["labels"] == {"a": "b"}  # type: ignore[index]
    assert copy["metadata"]["uid"] != source["metadata"]["uid"]  # type: ignore[index]


def test_copy_under_a_new_name_and_from_another_namespace(env: Env) -> None:
    env.kube.put("secrets", "a", "s", type="Opaque")
    result = env.run(
        "secret", "copy", "s", "--from-namespace", "a", "--to-namespace", "b", "--name", "t"
    )
    assert result.exit_code == 0, result.output
    assert ("secrets", "b", "t") in env.kube.objects


def test_copy_onto_itself_is_refused(env: Env) -> None:
    result = env.run("secret", "copy", "s", "--to-namespace", "default")
    assert result.exit_code == 2
    assert env.kube.requests == []


def test_copy_onto_an_existing_secret_is_conflict(env: Env) -> None:
    env.kube.put("secrets", "default", "s", type="Opaque")
    env.kube.put("secrets", "apps", "s", type="Opaque")
    assert env.run("secret", "copy", "s", "--to-namespace", "apps").exit_code == 7


# --------------------------------------------------------------------------- configmap


def test_configmap_create_puts_text_in_data_and_bytes_in_binary_data(
    env: Env, tmp_path: Path
) -> None:
    (tmp_path / "app.conf").write_text("port=80\n")
    (tmp_path / "logo.bin").write_bytes(b"\x89PNG\xff")
    result = env.run(
        "configmap",
        "create",
        "cfg",
        "-n",
        "apps",
        "--from-literal",
        "mode=prod",
        "--from-file",
        str(tmp_path / "app.conf"),
        "--from-file",
        str(tmp_path / "logo.bin"),
    )
    assert result.exit_code == 0, result.output
    assert result.output == "configmap/cfg created\n"
    stored = env.stored("configmaps", "apps", "cfg")
    assert stored["kind"] == "ConfigMap"
    assert stored["data"] == {"mode": "prod", "app.conf": "port=80\n"}
    assert stored["binaryData"] == {"logo.bin": base64.b64encode(b"\x89PNG\xff").decode()}


def test_configmap_get_list_delete(env: Env) -> None:
    assert env.run("configmap", "create", "c", "--from-literal", "a=b").exit_code == 0
    got = env.run("configmap", "get", "c", "-o", "yaml")
    assert yaml.safe_load(got.output)["data"] == {"a": "b"}
    table = env.run("configmap", "get", "c")
    assert "TYPE" not in table.output
    listed = env.run("configmap", "list", "-o", "json")
    assert json.loads(listed.output)["kind"] == "ConfigMapList"
    deleted = env.run("configmap", "delete", "c")
    assert deleted.output == 'configmap "c" deleted\n'


# --------------------------------------------------------------------------- kubeconfig


def test_kubeconfig_prints_what_kinko_up_wrote(env: Env) -> None:
    result = env.run("kubeconfig")
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.output)
    assert doc["clusters"][0]["cluster"]["server"] == SERVER
    assert doc["users"][0]["user"]["token"] == ADMIN


def test_kubeconfig_output_file_is_private_and_not_overwritten(env: Env, tmp_path: Path) -> None:
    target = tmp_path / "kube" / "config"
    target.parent.mkdir()
    result = env.run("kubeconfig", "--output-file", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_text() == (env.data_dir / "kubeconfig").read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert ADMIN not in result.output
    again = env.run("kubeconfig", "--output-file", str(target))
    assert again.exit_code == 4
    assert "refusing to overwrite" in again.output
    assert env.run("kubeconfig", "--output-file", str(target), "--force").exit_code == 0


def test_kubeconfig_without_kinko_up(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["kubeconfig", "--data-dir", str(tmp_path)])
    assert result.exit_code == 4
    assert "is kinko up running there?" in result.output


# --------------------------------------------------------------------------- ages


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "<invalid>"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (5 * 60 + 3, "5m3s"),
        (10 * 60 + 59, "10m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (7 * 3600 + 15 * 60, "7h15m"),
        (47 * 3600, "47h"),
        (2 * 86400 + 4 * 3600, "2d4h"),
        (3 * 86400, "3d"),
        (400 * 86400, "400d"),
        (3 * 365 * 86400 + 5 * 86400, "3y5d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_ages_are_shown_as_kubectl_shows_them(seconds: int, shown: str) -> None:
    assert human_age(timedelta(seconds=seconds)) == shown


# --------------------------------------------------------------------------- kinko's own API
#
# The same commands against kinko's cluster API app (ClusterService over a MemoryStore with a
# real aescbc chain, real tokens), so the fake above cannot drift from the server.

_AES = base64.b64encode(bytes(range(32))).decode()
_OTHER_AES = base64.b64encode(bytes(range(1, 33))).decode()


def _encryption_config(secret: str) -> str:
    return f"""
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets, configmaps]
    providers:
      - aescbc:
          keys:
            - name: k1
              secret: {secret}
"""


class _Chains:
    """A ChainSource whose key a test can swap, to make stored objects unreadable."""

    def __init__(self) -> None:
        self.use(_AES)

    def use(self, secret: str) -> None:
        self._chains = build_chains(
            parse_encryption_config(_encryption_config(secret)),
            kms_v2=_no_kms,
            kms_v1=_no_kms,
            rng=os.urandom,
        )

    def chain_for(self, resource: str) -> ProviderChain:
        return self._chains.chain_for(resource)


def _no_kms(_: KmsConfig) -> NoReturn:
    raise AssertionError("no KMS provider in these tests")


@dataclass
class Real:
    env: Env
    chains: _Chains
    viewer: str


@pytest.fixture
def real(env: Env) -> Iterator[Real]:
    now = datetime.now(UTC)
    store = MemoryStore()
    chains = _Chains()
    service = ClusterService(store, chains, clock=lambda: datetime.now(UTC))
    book = ClusterTokenBook(store)
    admin, record = issue_cluster_token(
        rng=os.urandom, role="Administrator", namespaces=None, now=now, name="admin"
    )
    book.add(record)
    viewer, record = issue_cluster_token(
        rng=os.urandom, role="Viewer", namespaces=["*"], now=now, name="viewer"
    )
    book.add(record)
    write_admin_token(env.data_dir, admin)
    app = create_cluster_app(service, book)
    with TestClient(app, raise_server_exceptions=False) as http:
        yield Real(
            env=Env(kube=FakeKube(), http=http, data_dir=env.data_dir),
            chains=chains,
            viewer=viewer,
        )


def _tls_pair(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web.example.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_real_api_round_trip(real: Real, tmp_path: Path) -> None:
    run = real.env.run
    cert, key = _tls_pair(tmp_path)
    steps = [
        ["secret", "create", "generic", "db", "-n", "apps", "--from-literal", "pw=hunter2"],
        ["secret", "create", "tls", "web", "-n", "apps", "--cert", str(cert), "--key", str(key)],
        [
            "secret",
            "create",
            "docker-registry",
            "pull",
            "--docker-server",
            "registry.example.com",
            "--docker-username",
            "robot",
            "--docker-password",
            "pw",
        ],
        ["secret", "copy", "pull", "--to-namespace", "apps"],
        ["configmap", "create", "cfg", "-n", "apps", "--from-literal", "mode=prod"],
    ]
    for argv in steps:
        result = run(*argv)
        assert result.exit_code == 0, (argv, result.output)
    listed = run("secret", "list", "-n", "apps", "--chunk-size", "1", "-o", "json")
    assert listed.exit_code == 0, listed.output
    items = json.loads(listed.stdout)["items"]
    assert [i["metadata"]["name"] for i in items] == ["db", "pull", "web"]
    assert [i["type"] for i in items] == [
        "Opaque",
        "kubernetes.io/dockerconfigjson",
        "kubernetes.io/tls",
    ]
    assert base64.b64decode(items[0]["data"]["pw"]) == b"hunter2"
    table = run("secret", "get", "db", "-n", "apps")
    assert "hunter2" not in table.output
    assert "aHVudGVyMg==" not in table.output
    assert json.loads(run("configmap", "get", "cfg", "-n", "apps", "-o", "json").output)[
        "data"
    ] == {"mode": "prod"}
    assert run("secret", "delete", "db", "-n", "apps").exit_code == 0
    assert run("secret", "get", "db", "-n", "apps").exit_code == 6


def test_real_api_errors_exit_with_their_codes(real: Real) -> None:
    run = real.env.run
    assert run("secret", "create", "generic", "a", "--from-literal", "k=v").exit_code == 0
    assert run("secret", "create", "generic", "a", "--from-literal", "k=v").exit_code == 7
    invalid = run("secret", "create", "generic", "a-b", "--from-literal", "bad key=v")
    assert invalid.exit_code == 4
    assert "data[bad key]" in invalid.output
    forbidden = run("secret", "delete", "a", "--token", real.viewer)
    assert forbidden.exit_code == 9
    assert run("secret", "get", "a", "--token", "kinko_" + "A" * 43).exit_code == 8


def test_real_api_unreadable_objects_warn_and_need_forced_delete(real: Real) -> None:
    run = real.env.run
    assert run("secret", "create", "generic", "old", "--from-literal", "k=v").exit_code == 0
    real.chains.use(_OTHER_AES)
    assert run("secret", "create", "generic", "new", "--from-literal", "k=v").exit_code == 0
    listed = run("secret", "list")
    assert listed.exit_code == 0, listed.output
    assert "new" in listed.stdout
    assert listed.stderr.startswith(
        "warning: 1 secret cannot be decrypted and was left out: default/old ("
    )
    got = run("secret", "get", "old")
    assert got.exit_code == 5
    refused = run("secret", "delete", "old")
    assert refused.exit_code == 5
    assert "hint: an Administrator deletes it unread with --force-unreadable" in refused.stderr
    forced = run("secret", "delete", "old", "--force-unreadable")
    assert forced.exit_code == 0, forced.output
    assert run("secret", "list").stderr == ""
