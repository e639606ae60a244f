"""The cluster REST API's refusals: bad input, the error table, unreadable objects.

Every bad request is answered with the right Kubernetes ``Status`` (code and reason), leaves
the store at the revision it had, and never echoes the secret value it carried. The world
(MemoryStore, real aescbc chain, real tokens) is the one of ``test_api_cluster.py``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from kinko import errors
from kinko.api.cluster import create_cluster_app
from kinko.cluster.auth import ClusterTokenBook, issue_cluster_token
from kinko.cluster.resources import ConfigMap, Secret
from kinko.cluster.service import ClusterService
from kinko.store.memory import MemoryStore
from tests.unit.test_api_cluster import (
    AES_KEY,
    NOW,
    OTHER_KEY,
    SECRET,
    SECRET_B64,
    Chains,
    World,
    config,
    configmap,
    make_world,
    secret,
)

JSON = "application/json"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
FORCE = "ignoreStoreReadErrorWithClusterBreakingPotential"


@pytest.fixture
def world() -> Iterator[World]:
    w = make_world()
    with w.client:
        yield w


def _pem_cert(key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.test")])
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _tls_secret(name: str, *, matching: bool) -> dict[str, object]:
    key = ec.generate_private_key(ec.SECP256R1())
    other = key if matching else ec.generate_private_key(ec.SECP256R1())
    return secret(
        name,
        type="kubernetes.io/tls",
        data={
            "tls.crt": base64.b64encode(_pem_cert(key)).decode(),
            "tls.key": base64.b64encode(_pem_key(other)).decode(),
        },
    )


def _dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()


# --- bad input: (id, method, path, content type, body, code, reason, words in the message) --

S1 = "/api/v1/namespaces/a/secrets/s1"
SECRETS_A = "/api/v1/namespaces/a/secrets"
BIG = base64.b64encode(SECRET * (1024 * 1024 // len(SECRET) + 1)).decode()

BAD: list[tuple[str, str, str, str, bytes, int, str, str]] = [
    (
        "invalid name",
        "POST",
        SECRETS_A,
        JSON,
        _dumps(secret("Bad_Name")),
        422,
        "Invalid",
        "metadata.name",
    ),
    (
        "invalid namespace in the path",
        "POST",
        "/api/v1/namespaces/Bad_NS/secrets",
        JSON,
        _dumps(secret("ok", "Bad_NS")),
        422,
        "Invalid",
        "metadata.namespace",
    ),
    (
        "namespace of the body is not the path's",
        "POST",
        SECRETS_A,
        JSON,
        _dumps(secret("ok", "b")),
        422,
        "Invalid",
        "does not match the namespace",
    ),
    (
        "bad base64",
        "POST",
        SECRETS_A,
        JSON,
        _dumps(secret("ok", data={"password": SECRET_B64 + "!"})),
        422,
        "Invalid",
        "illegal base64 data",
    ),
    (
        "TLS certificate and key do not match",
        "POST",
        SECRETS_A,
        JSON,
        _dumps(_tls_secret("tls", matching=False)),
        422,
        "Invalid",
        "private key does not match",
    ),
    (
        "object over 1 MiB",
        "POST",
        SECRETS_A,
        JSON,
        _dumps(secret("big", data={"password": BIG})),
        422,
        "Invalid",
        "Too long",
    ),
    (
        "unknown field",
        "POST",
        SECRETS_A,
        JSON,
        _dumps(secret("ok", spec={"password": SECRET_B64})),
        422,
        "Invalid",
        "field not declared in schema",
    ),
    (
        "wrong kind",
        "POST",
        SECRETS_A,
        JSON,
        _dumps(secret("ok", kind="ConfigMap")),
        422,
        "Invalid",
        "kind",
    ),
    (
        "resourceVersion on create",
        "POST",
        SECRETS_A,
        JSON,
        _dumps(secret("ok", metadata={"name": "ok", "resourceVersion": "3"})),
        422,
        "Invalid",
        "resourceVersion",
    ),
    ("taken name", "POST", SECRETS_A, JSON, _dumps(secret("s1")), 409, "AlreadyExists", '"s1"'),
    (
        "malformed JSON",
        "POST",
        SECRETS_A,
        JSON,
        b'{"data": {"password": "' + SECRET_B64.encode() + b'"',
        400,
        "BadRequest",
        "not valid JSON",
    ),
    (
        "NaN is no JSON",
        "POST",
        SECRETS_A,
        JSON,
        b'{"apiVersion": "v1", "n": NaN}',
        400,
        "BadRequest",
        "not valid JSON",
    ),
    (
        "not UTF-8",
        "POST",
        SECRETS_A,
        JSON,
        b'{"a": "\xff"}',
        400,
        "BadRequest",
        "UTF-8",
    ),
    ("empty body", "POST", SECRETS_A, JSON, b"", 400, "BadRequest", "empty body"),
    (
        "malformed YAML",
        "POST",
        SECRETS_A,
        "application/yaml",
        b"data:\n  password: " + SECRET_B64.encode() + b"\n   bad: [",
        400,
        "BadRequest",
        "not valid YAML",
    ),
    (
        "two YAML documents",
        "POST",
        SECRETS_A,
        "application/yaml",
        b"a: 1\n---\nb: 2\n",
        400,
        "BadRequest",
        "not valid YAML",
    ),
    (
        "plain text",
        "POST",
        SECRETS_A,
        "text/plain",
        _dumps(secret("ok")),
        415,
        "UnsupportedMediaType",
        "text/plain",
    ),
    (
        "protobuf",
        "POST",
        SECRETS_A,
        "application/vnd.kubernetes.protobuf",
        b"k8s\x00",
        415,
        "UnsupportedMediaType",
        "protobuf",
    ),
    (
        "dry run",
        "POST",
        SECRETS_A + "?dryRun=All",
        JSON,
        _dumps(secret("ok")),
        400,
        "BadRequest",
        "dryRun",
    ),
    (
        "stale resourceVersion",
        "PUT",
        S1,
        JSON,
        _dumps(secret("s1", metadata={"name": "s1", "resourceVersion": "1"})),
        409,
        "Conflict",
        "has been modified",
    ),
    (
        "name differs from the path",
        "PUT",
        S1,
        JSON,
        _dumps(secret("s2")),
        422,
        "Invalid",
        "does not match the name",
    ),
    (
        "type changes",
        "PUT",
        S1,
        JSON,
        _dumps(secret("s1", type="kubernetes.io/basic-auth")),
        422,
        "Invalid",
        "field is immutable",
    ),
    (
        "replace a missing object",
        "PUT",
        SECRETS_A + "/nope",
        JSON,
        _dumps(secret("nope")),
        404,
        "NotFound",
        "not found",
    ),
    ("PUT as text", "PUT", S1, "text/plain", b"x", 415, "UnsupportedMediaType", "text/plain"),
    (
        "PATCH as application/json",
        "PATCH",
        S1,
        JSON,
        b"{}",
        415,
        "UnsupportedMediaType",
        "patch media type",
    ),
    (
        "server-side apply",
        "PATCH",
        S1,
        "application/apply-patch+yaml",
        b"data: {}",
        415,
        "UnsupportedMediaType",
        "server-side apply",
    ),
    (
        "merge patch that is no object",
        "PATCH",
        S1,
        MERGE,
        b"[1]",
        400,
        "BadRequest",
        "a JSON object",
    ),
    (
        "strategic directive",
        "PATCH",
        S1,
        STRATEGIC,
        _dumps({"data": {"$patch": "replace", "password": SECRET_B64}}),
        400,
        "BadRequest",
        "data.$patch",
    ),
    (
        "strategic retainKeys",
        "PATCH",
        S1,
        STRATEGIC,
        _dumps({"$retainKeys": ["data"]}),
        400,
        "BadRequest",
        "$retainKeys",
    ),
    (
        "malformed merge patch JSON",
        "PATCH",
        S1,
        MERGE,
        b'{"data": ',
        400,
        "BadRequest",
        "not valid JSON",
    ),
    (
        "merge patch renames",
        "PATCH",
        S1,
        MERGE,
        _dumps({"metadata": {"name": "other"}}),
        422,
        "Invalid",
        "does not match the name",
    ),
    (
        "merge patch with bad base64",
        "PATCH",
        S1,
        MERGE,
        _dumps({"data": {"password": "%%" + SECRET_B64}}),
        422,
        "Invalid",
        "illegal base64",
    ),
    (
        "merge patch with a stale version",
        "PATCH",
        S1,
        MERGE,
        _dumps({"metadata": {"resourceVersion": "1"}}),
        409,
        "Conflict",
        "has been modified",
    ),
    (
        "JSON patch that is no array",
        "PATCH",
        S1,
        JSON_PATCH,
        _dumps({"op": "add"}),
        400,
        "BadRequest",
        "array of operation objects",
    ),
    (
        "JSON patch with an unknown op",
        "PATCH",
        S1,
        JSON_PATCH,
        _dumps([{"op": "test", "path": "/kind", "value": "Secret"}, {"op": "merge", "path": "/"}]),
        400,
        "BadRequest",
        "json patch operation 1",
    ),
    (
        "JSON patch whose test fails",
        "PATCH",
        S1,
        JSON_PATCH,
        _dumps([{"op": "test", "path": "/data/password", "value": SECRET_B64 + "x"}]),
        400,
        "BadRequest",
        "test failed",
    ),
    (
        "JSON patch to a missing member",
        "PATCH",
        S1,
        JSON_PATCH,
        _dumps([{"op": "replace", "path": "/data/nope", "value": SECRET_B64}]),
        400,
        "BadRequest",
        "no member '/data/nope'",
    ),
    (
        "JSON patch adding an unknown field",
        "PATCH",
        S1,
        JSON_PATCH,
        _dumps([{"op": "add", "path": "/spec", "value": {"x": SECRET_B64}}]),
        422,
        "Invalid",
        "field not declared in schema",
    ),
    ("empty patch", "PATCH", S1, MERGE, b"", 400, "BadRequest", "empty body"),
    (
        "patch a missing object",
        "PATCH",
        SECRETS_A + "/nope",
        MERGE,
        b"{}",
        404,
        "NotFound",
        "not found",
    ),
    (
        "DeleteOptions that are no object",
        "DELETE",
        S1,
        JSON,
        b"[]",
        400,
        "BadRequest",
        "DeleteOptions",
    ),
    (
        "DeleteOptions with a bad precondition",
        "DELETE",
        S1,
        JSON,
        _dumps({"preconditions": {"uid": 7}}),
        400,
        "BadRequest",
        "preconditions.uid",
    ),
    (
        "DeleteOptions with a non-boolean force",
        "DELETE",
        S1,
        JSON,
        _dumps({FORCE: "yes"}),
        400,
        "BadRequest",
        FORCE,
    ),
    ("delete with a bad flag", "DELETE", S1 + f"?{FORCE}=maybe", "", b"", 400, "BadRequest", FORCE),
    ("delete a missing object", "DELETE", SECRETS_A + "/nope", "", b"", 404, "NotFound", "nope"),
    ("get a missing object", "GET", SECRETS_A + "/nope", "", b"", 404, "NotFound", "not found"),
    (
        "watch",
        "GET",
        SECRETS_A + "?watch=true",
        "",
        b"",
        400,
        "BadRequest",
        "watch is not supported",
    ),
    (
        "bad label selector",
        "GET",
        SECRETS_A + "?labelSelector=app%20in%20(",
        "",
        b"",
        400,
        "BadRequest",
        "",
    ),
    (
        "unsupported field selector",
        "GET",
        SECRETS_A + "?fieldSelector=spec.x%3D1",
        "",
        b"",
        400,
        "BadRequest",
        "field label not supported",
    ),
    (
        "configmaps have no type field",
        "GET",
        "/api/v1/configmaps?fieldSelector=type%3DOpaque",
        "",
        b"",
        400,
        "BadRequest",
        "field label not supported",
    ),
    (
        "malformed field selector",
        "GET",
        SECRETS_A + "?fieldSelector=metadata.name",
        "",
        b"",
        400,
        "BadRequest",
        "invalid field selector",
    ),
    ("negative limit", "GET", SECRETS_A + "?limit=-1", "", b"", 400, "BadRequest", "limit"),
    ("text limit", "GET", SECRETS_A + "?limit=ten", "", b"", 400, "BadRequest", "limit"),
    ("huge limit", "GET", SECRETS_A + "?limit=" + "9" * 5000, "", b"", 400, "BadRequest", "limit"),
    (
        "unsigned continue",
        "GET",
        SECRETS_A + "?continue=garbage",
        "",
        b"",
        410,
        "Expired",
        "continue token",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "content_type", "body", "code", "reason", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD],
)
def test_bad_input_is_refused_with_status_and_changes_nothing(
    world: World,
    method: str,
    path: str,
    content_type: str,
    body: bytes,
    code: int,
    reason: str,
    words: str,
) -> None:
    before = world.store.revision
    extra = {"Content-Type": content_type} if content_type else {}
    got = world.client.request(method, path, content=body, headers=world.headers("admin", **extra))
    assert got.status_code == code, got.text
    doc = got.json()
    assert doc["kind"] == "Status"
    assert doc["apiVersion"] == "v1"
    assert doc["status"] == "Failure"
    assert doc["reason"] == reason
    assert doc["code"] == code
    assert words in doc["message"]
    assert world.store.revision == before
    assert SECRET_B64 not in got.text
    assert SECRET.decode() not in got.text


def test_invalid_carries_field_causes_and_names_the_object(world: World) -> None:
    got = world.client.post(
        SECRETS_A,
        headers=world.headers("admin"),
        json=secret("ok", spec={}, data={"bad key": SECRET_B64}),
    )
    assert got.status_code == 422
    details = got.json()["details"]
    assert details["name"] == "ok"
    assert details["kind"] == "secrets"
    causes = {(c["field"], c["reason"]) for c in details["causes"]}
    assert ("spec", "FieldValueUnknown") in causes


def test_not_found_names_the_object(world: World) -> None:
    got = world.client.get(SECRETS_A + "/nope", headers=world.headers("admin"))
    doc = got.json()
    assert doc["details"] == {"name": "nope", "kind": "secrets"}
    assert doc["message"] == 'secrets "nope" not found'


def test_a_valid_tls_secret_is_accepted(world: World) -> None:
    got = world.client.post(
        SECRETS_A, headers=world.headers("admin"), json=_tls_secret("tls", matching=True)
    )
    assert got.status_code == 201, got.text


# --- order of checks: 401 and 403 before the body is read -----------------------------------


@pytest.mark.parametrize(
    ("who", "code"),
    [("none", 401), ("bad", 401), ("viewer_a", 403), ("editor_a", 403)],
)
def test_authorization_comes_before_the_body(world: World, who: str, code: int) -> None:
    path = SECRETS_A if who != "editor_a" else "/api/v1/namespaces/b/secrets"
    for content_type, body in (
        (JSON, b"{not json"),
        ("text/plain", b"x"),
        (JSON, b"x" * (4 * 1024 * 1024)),
    ):
        got = world.client.post(
            path, content=body, headers=world.headers(who, **{"Content-Type": content_type})
        )
        assert got.status_code == code, got.text


@pytest.fixture
def small() -> Iterator[World]:
    w = make_world(max_body=4096)
    with w.client:
        yield w


def test_body_over_the_cap_is_413_with_content_length(small: World) -> None:
    before = small.store.revision
    body = _dumps(secret("big", data={"password": base64.b64encode(b"x" * 5000).decode()}))
    got = small.client.post(SECRETS_A, content=body, headers=small.headers("admin"))
    assert got.status_code == 413
    assert got.json()["reason"] == "RequestEntityTooLarge"
    assert got.json()["code"] == 413
    assert "4096" in got.json()["message"]
    assert small.store.revision == before


def test_body_over_the_cap_is_413_when_streamed(small: World) -> None:
    before = small.store.revision
    chunks_sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            chunks_sent.append(1)
            yield b" " * 1024

    got = small.client.put(
        S1, content=chunks(), headers=small.headers("admin", **{"Content-Type": JSON})
    )
    assert got.status_code == 413
    assert got.json()["reason"] == "RequestEntityTooLarge"
    assert small.store.revision == before


def test_body_at_the_cap_is_read(small: World) -> None:
    body = _dumps(configmap("fits"))
    body += b" " * (4096 - len(body))
    got = small.client.post(
        "/api/v1/namespaces/a/configmaps", content=body, headers=small.headers("admin")
    )
    assert got.status_code == 201, got.text


# --- the one error table, end to end -----------------------------------------------------------


class FailingService(ClusterService):
    """A real ClusterService whose reads fail with a chosen exception."""

    failure: BaseException = RuntimeError()

    def get(self, resource: str, namespace: str, name: str) -> Secret | ConfigMap:
        raise self.failure


TABLE: list[tuple[BaseException, int, str, str]] = [
    (errors.NotFound('secrets "s1" not found'), 404, "NotFound", 'secrets "s1" not found'),
    (errors.AlreadyExists("taken"), 409, "AlreadyExists", "taken"),
    (errors.Conflict("changed"), 409, "Conflict", "changed"),
    (errors.WrongState("state"), 409, "Conflict", "state"),
    (errors.DeletionRefused("it reads"), 409, "Conflict", "delete it normally"),
    (
        errors.Invalid([errors.FieldCause("data", "FieldValueInvalid", "bad")], kind="Secret"),
        422,
        "Invalid",
        "bad",
    ),
    (errors.InvalidArgument("malformed"), 400, "BadRequest", "malformed"),
    (errors.Unauthorized("who"), 401, "Unauthorized", "who"),
    (errors.Forbidden("nope"), 403, "Forbidden", "nope"),
    (errors.Gone("compacted"), 410, "Expired", "compacted"),
    (
        errors.UnreadableValue(b"/registry/secrets/a/s1", errors.UnreadableValue.NOT_OPENED),
        500,
        "StorageReadError",
        "cannot read /registry/secrets/a/s1: it cannot be decrypted",
    ),
    (errors.DecryptionError(), 500, "StorageReadError", "cannot decrypt"),
    (errors.CorruptMetadata("decrypts but is not"), 500, "InternalError", "decrypts but is not"),
    (
        errors.PluginError("KMS v2 plugin 'kms-a' is unavailable"),
        503,
        "ServiceUnavailable",
        "kms-a",
    ),
    (errors.StoreUnavailable("etcd did not answer"), 503, "ServiceUnavailable", "etcd"),
    (errors.HsmUnavailable("token gone"), 503, "ServiceUnavailable", "token gone"),
    (errors.UnavailableError("later"), 503, "ServiceUnavailable", "later"),
    (errors.KinkoError("odd"), 500, "InternalError", "odd"),
    (RuntimeError("s3cr3t-VALUE-42 leaked"), 500, "InternalError", "unexpected error"),
]


@pytest.mark.parametrize(
    ("failure", "code", "reason", "words"),
    [pytest.param(*case, id=type(case[0]).__name__) for case in TABLE],
)
def test_error_table(
    failure: BaseException, code: int, reason: str, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    service = FailingService(store, Chains(config(AES_KEY)), clock=lambda: NOW)
    service.failure = failure
    book = ClusterTokenBook(store)
    token, record = issue_cluster_token(
        rng=lambda n: bytes(n), role="Administrator", namespaces=None, now=NOW, name="root"
    )
    book.add(record)
    app = create_cluster_app(service, book, clock=lambda: NOW)
    with (
        caplog.at_level(logging.DEBUG),
        TestClient(app, raise_server_exceptions=False) as client,
    ):
        got = client.get(S1, headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == code, got.text
    doc = got.json()
    assert doc["kind"] == "Status"
    assert doc["reason"] == reason
    assert doc["code"] == code
    assert words in doc["message"]
    assert doc["details"]["name"] == "s1"
    assert doc["details"]["kind"] == "secrets"
    assert "s3cr3t" not in got.text
    assert "s3cr3t" not in caplog.text
    assert token not in caplog.text
    if isinstance(failure, RuntimeError):
        assert "RuntimeError" in caplog.text


def test_unreadable_message_says_how_to_delete() -> None:
    failure = errors.UnreadableValue(b"/registry/secrets/a/s1", errors.UnreadableValue.NO_PROVIDER)
    store = MemoryStore()
    service = FailingService(store, Chains(config(AES_KEY)), clock=lambda: NOW)
    service.failure = failure
    book = ClusterTokenBook(store)
    token, record = issue_cluster_token(
        rng=lambda n: bytes(n), role="Administrator", namespaces=None, now=NOW, name="root"
    )
    book.add(record)
    with TestClient(create_cluster_app(service, book, clock=lambda: NOW)) as client:
        message = client.get(S1, headers={"Authorization": f"Bearer {token}"}).json()["message"]
    assert "/registry/secrets/a/s1" in message
    assert "no configured provider matches" in message
    assert "Administrator" in message
    assert f"{FORCE}=true" in message


def test_expired_continue_token_is_410(world: World) -> None:
    h = world.headers("admin")
    for n in range(3):
        world.service.create("configmaps", "p", configmap(f"cm-{n}", "p"))
    first = world.client.get("/api/v1/namespaces/p/configmaps?limit=1", headers=h).json()
    token = first["metadata"]["continue"]
    world.service.create("configmaps", "p", configmap("cm-later", "p"))
    world.store.compact(world.store.revision)
    got = world.client.get("/api/v1/namespaces/p/configmaps", headers=h, params={"continue": token})
    assert got.status_code == 410
    assert got.json()["reason"] == "Expired"


# --- unreadable objects ----------------------------------------------------------------------


def _lose_the_key(world: World) -> None:
    # The key k1 is gone (k2 replaced it): no provider matches what was written so far. A
    # wrong key under the same name would not do: an aescbc value opened with a wrong key
    # passes the CBC padding check by chance once in 256 tries and decrypts to garbage.
    world.chains.set(config(OTHER_KEY, key_name="k2"))


def test_unreadable_objects_in_a_list(world: World, caplog: pytest.LogCaptureFixture) -> None:
    _lose_the_key(world)
    world.service.create("secrets", "a", secret("fresh"))
    with caplog.at_level(logging.WARNING, logger="kinko.api.cluster"):
        got = world.client.get(SECRETS_A, headers=world.headers("viewer_a"))
    assert got.status_code == 200
    doc = got.json()
    assert [i["metadata"]["name"] for i in doc["items"]] == ["fresh"]
    assert doc["unreadable"] == {
        "count": 1,
        "items": [{"namespace": "a", "name": "s1", "reason": errors.UnreadableValue.NOT_OPENED}],
    }
    assert got.headers["x-kinko-unreadable"] == "1"
    assert got.headers["x-kinko-unreadable-names"] == "a/s1"
    assert "a/s1" in caplog.text
    assert SECRET_B64 not in caplog.text
    everywhere = world.client.get("/api/v1/secrets", headers=world.headers("admin"))
    assert everywhere.headers["x-kinko-unreadable"] == "2"
    assert everywhere.headers["x-kinko-unreadable-names"] == "a/s1,b/s1"
    only_b = world.client.get(
        "/api/v1/secrets",
        headers=world.headers("admin"),
        params={"fieldSelector": "metadata.namespace=b"},
    )
    assert only_b.json()["unreadable"]["items"][0]["namespace"] == "b"
    assert only_b.headers["x-kinko-unreadable"] == "1"


def test_unreadable_names_header_names_the_first_fifty(world: World) -> None:
    for n in range(60):
        world.service.create("configmaps", "many", configmap(f"cm-{n:02d}", "many"))
    _lose_the_key(world)
    got = world.client.get("/api/v1/namespaces/many/configmaps", headers=world.headers("admin"))
    assert got.headers["x-kinko-unreadable"] == "60"
    assert got.json()["unreadable"]["count"] == 60
    names = got.headers["x-kinko-unreadable-names"].split(",")
    assert names == [f"many/cm-{n:02d}" for n in range(50)]


@pytest.mark.parametrize("who", ["admin", "editor_a", "viewer_a"])
def test_reading_an_unreadable_object_is_storage_read_error(world: World, who: str) -> None:
    _lose_the_key(world)
    got = world.client.get(S1, headers=world.headers(who))
    assert got.status_code == 500
    doc = got.json()
    assert doc["reason"] == "StorageReadError"
    assert "/registry/secrets/a/s1" in doc["message"]
    assert FORCE in doc["message"]
    assert doc["details"] == {"name": "s1", "kind": "secrets"}


def test_a_normal_delete_of_an_unreadable_object_is_refused(world: World) -> None:
    _lose_the_key(world)
    before = world.store.revision
    got = world.client.delete(S1, headers=world.headers("admin"))
    assert got.status_code == 500
    assert got.json()["reason"] == "StorageReadError"
    assert world.store.revision == before


@pytest.mark.parametrize(
    ("query", "body"),
    [
        (f"?{FORCE}=true", b""),
        ("", _dumps({"kind": "DeleteOptions", "apiVersion": "v1", FORCE: True})),
    ],
    ids=["query", "delete-options"],
)
def test_forced_delete_of_an_unreadable_object(world: World, query: str, body: bytes) -> None:
    _lose_the_key(world)
    before = world.store.revision
    headers = {"Content-Type": JSON} if body else {}
    refused = world.client.request(
        "DELETE", S1 + query, content=body, headers=world.headers("editor_a", **headers)
    )
    assert refused.status_code == 403
    assert refused.json()["reason"] == "Forbidden"
    assert world.store.revision == before
    done = world.client.request(
        "DELETE", S1 + query, content=body, headers=world.headers("admin", **headers)
    )
    assert done.status_code == 200, done.text
    doc = done.json()
    assert doc["kind"] == "Status"
    assert doc["status"] == "Success"
    assert doc["details"] == {"name": "s1", "kind": "secrets"}
    assert "s1" in doc["message"]
    assert world.store.get(b"/registry/secrets/a/s1") is None
    again = world.client.delete(S1 + f"?{FORCE}=true", headers=world.headers("admin"))
    assert again.status_code == 404


def test_forced_delete_of_a_readable_object_is_refused(world: World) -> None:
    before = world.store.revision
    got = world.client.delete(S1 + f"?{FORCE}=true", headers=world.headers("admin"))
    assert got.status_code == 409
    assert got.json()["reason"] == "Conflict"
    assert "readable" in got.json()["message"]
    assert "delete it normally" in got.json()["message"]
    assert world.store.revision == before
