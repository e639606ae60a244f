"""ClusterClient's request and answer shaping, against canned answers (httpx.MockTransport).

Only the wire shape is checked here: paths, query, headers, bodies, and how Kubernetes
``Status`` answers become kinko errors. The commands built on the client are tested against
an in-memory Kubernetes API in ``test_cluster_cli.py``.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from kinko import errors
from kinko.cluster.client import (
    UNREADABLE_HEADER,
    ClusterClient,
    ListPage,
    Unreadable,
    UnreadableObject,
    error_from_response,
)

URL = "https://127.0.0.1:6443"
TOKEN = "kinko_sekret_token"


@dataclass
class Wire:
    """Records requests and answers each with the next canned response."""

    answers: list[httpx.Response] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            return httpx.Response(200, json={"kind": "Secret"})
        return self.answers.pop(0)

    def client(self) -> ClusterClient:
        return ClusterClient(
            URL, token=TOKEN, http=httpx.Client(transport=httpx.MockTransport(self))
        )

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def status(code: int, reason: str, message: str, **details: object) -> httpx.Response:
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
    return httpx.Response(code, json=body)


def body_of(request: httpx.Request) -> object:
    return json.loads(request.content)


# --- requests ------------------------------------------------------------------------------


def test_get_path_headers_and_answer() -> None:
    wire = Wire([httpx.Response(200, json={"kind": "Secret", "metadata": {"name": "a"}})])
    with wire.client() as client:
        found = client.get("secrets", "ns1", "a")
    assert found == {"kind": "Secret", "metadata": {"name": "a"}}
    request = wire.last
    assert request.method == "GET"
    assert str(request.url) == f"{URL}/api/v1/namespaces/ns1/secrets/a"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"].startswith("kinko/")
    assert request.content == b""


def test_bearer_prefix_is_accepted_once() -> None:
    wire = Wire()
    client = ClusterClient(
        URL, token=f"Bearer {TOKEN}", http=httpx.Client(transport=httpx.MockTransport(wire))
    )
    client.version()
    assert wire.last.headers["authorization"] == f"Bearer {TOKEN}"
    assert wire.last.url.path == "/version"


def test_names_are_percent_encoded_and_slashes_refused() -> None:
    wire = Wire()
    client = wire.client()
    client.get("configmaps", "ns", "a:b")
    assert wire.last.url.raw_path == b"/api/v1/namespaces/ns/configmaps/a%3Ab"
    for bad in ("a/b", "..", ""):
        with pytest.raises(errors.InvalidArgument):
            client.get("secrets", "ns", bad)
    with pytest.raises(errors.InvalidArgument, match="resource"):
        client.get("Secrets/x", "ns", "a")
    assert len(wire.requests) == 1


def test_list_in_a_namespace_with_params() -> None:
    wire = Wire(
        [
            httpx.Response(
                200,
                json={
                    "kind": "SecretList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": "42", "continue": "tok-2"},
                    "items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}],
                },
            )
        ]
    )
    page = wire.client().list("secrets", "ns1", label_selector="app=web", limit=2, continue_="t1")
    assert wire.last.url.path == "/api/v1/namespaces/ns1/secrets"
    assert dict(wire.last.url.params) == {
        "labelSelector": "app=web",
        "limit": "2",
        "continue": "t1",
    }
    assert page == ListPage(
        items=({"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}),
        continue_token="tok-2",
        resource_version="42",
        unreadable=Unreadable(),
    )
    assert not page.unreadable


def test_list_in_every_namespace_without_params() -> None:
    wire = Wire([httpx.Response(200, json={"kind": "ConfigMapList", "items": None})])
    page = wire.client().list("configmaps", None)
    assert wire.last.url.path == "/api/v1/configmaps"
    assert not wire.last.url.params
    assert page.items == ()
    assert page.continue_token is None


def test_list_limit_must_be_positive() -> None:
    wire = Wire()
    with pytest.raises(errors.InvalidArgument, match="positive"):
        wire.client().list("secrets", "ns", limit=0)
    assert wire.requests == []


def test_list_surfaces_kinko_unreadable_report() -> None:
    wire = Wire(
        [
            httpx.Response(
                200,
                headers={UNREADABLE_HEADER: "3"},
                json={
                    "items": [],
                    "unreadable": {
                        "count": 3,
                        "items": [
                            {"namespace": "ns1", "name": "old", "reason": "key destroyed"},
                            {"namespace": "ns2", "name": "older", "reason": "no provider\x1b[31m"},
                        ],
                    },
                },
            )
        ]
    )
    page = wire.client().list("secrets", None)
    assert page.unreadable == Unreadable(
        count=3,
        items=(
            UnreadableObject("ns1", "old", "key destroyed"),
            UnreadableObject("ns2", "older", "no provider [31m"),
        ),
    )
    assert page.unreadable


def test_unreadable_header_alone_counts() -> None:
    wire = Wire([httpx.Response(200, headers={UNREADABLE_HEADER: "2"}, json={"items": []})])
    assert wire.client().list("secrets", "ns").unreadable == Unreadable(count=2)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, {"items": {"a": 1}}),
        ({}, {"items": [1]}),
        ({}, {"items": [], "unreadable": [1]}),
        ({}, {"items": [], "unreadable": {"count": "2"}}),
        ({}, {"items": [], "unreadable": {"count": 1, "items": ["x"]}}),
        ({UNREADABLE_HEADER: "many"}, {"items": []}),
    ],
)
def test_list_answers_that_are_not_kubernetes_are_unavailable(
    headers: dict[str, str], body: dict[str, object]
) -> None:
    wire = Wire([httpx.Response(200, headers=headers, json=body)])
    with pytest.raises(errors.UnavailableError, match="not the Kubernetes API"):
        wire.client().list("secrets", "ns")


def _page(names: list[str], token: str | None, **extra: object) -> httpx.Response:
    meta: dict[str, object] = {"resourceVersion": "7"}
    if token:
        meta["continue"] = token
    return httpx.Response(
        200,
        json={"metadata": meta, "items": [{"metadata": {"name": n}} for n in names], **extra},
    )


def test_list_all_follows_continue() -> None:
    wire = Wire(
        [
            _page(["a", "b"], "c1"),
            _page(
                ["c"],
                "c2",
                unreadable={"count": 1, "items": [{"namespace": "n", "name": "x", "reason": "r"}]},
            ),
            _page(["d"], None),
        ]
    )
    page = wire.client().list_all("secrets", "n", label_selector="a=b", page_size=2)
    assert [i["metadata"] for i in page.items] == [{"name": n} for n in "abcd"]
    assert page.continue_token is None
    assert page.resource_version == "7"
    assert page.unreadable == Unreadable(count=1, items=(UnreadableObject("n", "x", "r"),))
    sent = [dict(r.url.params) for r in wire.requests]
    assert sent == [
        {"labelSelector": "a=b", "limit": "2"},
        {"labelSelector": "a=b", "limit": "2", "continue": "c1"},
        {"labelSelector": "a=b", "limit": "2", "continue": "c2"},
    ]


def test_list_all_stops_on_a_repeated_continue_token() -> None:
    wire = Wire([_page(["a"], "same"), _page(["b"], "same"), _page(["c"], "same")])
    with pytest.raises(errors.UnavailableError, match="repeated a continue token"):
        wire.client().list_all("secrets", "n")
    assert len(wire.requests) == 2


def test_create_replace_patch_bodies_and_media_types() -> None:
    wire = Wire()
    client = wire.client()
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a"}, "data": {}}
    client.create("secrets", "ns", body)
    assert (wire.last.method, wire.last.url.path) == ("POST", "/api/v1/namespaces/ns/secrets")
    assert wire.last.headers["content-type"] == "application/json"
    assert body_of(wire.last) == body
    client.replace("secrets", "ns", "a", body)
    assert (wire.last.method, wire.last.url.path) == ("PUT", "/api/v1/namespaces/ns/secrets/a")
    assert body_of(wire.last) == body
    client.patch("configmaps", "ns", "a", {"data": {"k": None}})
    assert (wire.last.method, wire.last.url.path) == (
        "PATCH",
        "/api/v1/namespaces/ns/configmaps/a",
    )
    assert wire.last.headers["content-type"] == "application/merge-patch+json"
    assert body_of(wire.last) == {"data": {"k": None}}


def test_delete_and_force_delete_unreadable() -> None:
    wire = Wire([httpx.Response(200, json={"kind": "Status", "status": "Success"})] * 2)
    client = wire.client()
    assert client.delete("secrets", "ns", "a") == {"kind": "Status", "status": "Success"}
    assert wire.last.method == "DELETE"
    assert not wire.last.url.params
    client.delete("secrets", "ns", "a", force_unreadable=True)
    assert dict(wire.last.url.params) == {
        "ignoreStoreReadErrorWithClusterBreakingPotential": "true"
    }


# --- errors --------------------------------------------------------------------------------

ERROR_TABLE: list[tuple[httpx.Response, type[errors.KinkoError]]] = [
    (status(404, "NotFound", 'secrets "a" not found'), errors.NotFound),
    (status(409, "AlreadyExists", 'secrets "a" already exists'), errors.AlreadyExists),
    (status(409, "Conflict", "the object has been modified"), errors.Conflict),
    (status(403, "Forbidden", "forbidden"), errors.Forbidden),
    (status(401, "Unauthorized", "Unauthorized"), errors.Unauthorized),
    (status(503, "ServiceUnavailable", "the KMS plugin is down"), errors.UnavailableError),
    (status(500, "InternalError", "boom"), errors.UnavailableError),
    (status(400, "BadRequest", "bad selector"), errors.InvalidArgument),
    (status(413, "RequestEntityTooLarge", "too large"), errors.InvalidArgument),
    (status(410, "Expired", "continue token expired"), errors.Gone),
    (status(500, "StorageReadError", "cannot read /registry/secrets/ns/a"), errors.DecryptionError),
    (httpx.Response(410), errors.Gone),
    (httpx.Response(404, text="no such page"), errors.NotFound),
    (httpx.Response(401), errors.Unauthorized),
    (httpx.Response(405, text="nope"), errors.InvalidArgument),
    (httpx.Response(502, text="<html>bad gateway</html>"), errors.UnavailableError),
    (httpx.Response(302, headers={"location": "/login"}), errors.UnavailableError),
]


@pytest.mark.parametrize(("answer", "expected"), ERROR_TABLE)
def test_status_maps_to_kinko_errors(
    answer: httpx.Response, expected: type[errors.KinkoError]
) -> None:
    wire = Wire([answer])
    with pytest.raises(errors.KinkoError) as caught:
        wire.client().get("secrets", "ns", "a")
    assert type(caught.value) is expected
    assert TOKEN not in str(caught.value)


def test_error_message_keeps_the_server_message_and_reason() -> None:
    wire = Wire([status(404, "NotFound", 'secrets "a" not found')])
    with pytest.raises(errors.NotFound) as caught:
        wire.client().get("secrets", "ns", "a")
    assert str(caught.value) == 'secrets "a" not found (HTTP 404 NotFound)'


def test_unavailable_message_says_the_cluster_api_failed() -> None:
    wire = Wire([status(503, "ServiceUnavailable", "the KMS plugin is down")])
    with pytest.raises(errors.UnavailableError) as caught:
        wire.client().get("secrets", "ns", "a")
    assert str(caught.value) == (
        "the cluster API failed: the KMS plugin is down "
        "(GET /api/v1/namespaces/ns/secrets/a, HTTP 503 ServiceUnavailable)"
    )


def test_storage_read_error_keeps_the_servers_words() -> None:
    wire = Wire([status(500, "StorageReadError", "cannot read /registry/secrets/ns/a: gone")])
    with pytest.raises(errors.DecryptionError) as caught:
        wire.client().get("secrets", "ns", "a")
    assert str(caught.value) == "cannot decrypt value: cannot read /registry/secrets/ns/a: gone"


def test_invalid_rebuilds_field_causes() -> None:
    wire = Wire(
        [
            status(
                422,
                "Invalid",
                'Secret "a" is invalid: ...',
                name="a",
                kind="secrets",
                causes=[
                    {"reason": "FieldValueRequired", "message": "Required value", "field": "x"},
                    {"reason": "FieldValueInvalid", "message": "bad\nkey", "field": "data[k]"},
                ],
            )
        ]
    )
    with pytest.raises(errors.Invalid) as caught:
        wire.client().create("secrets", "ns", {"data": {"k": "c2VjcmV0"}})
    exc = caught.value
    assert exc.kind == "Secret"
    assert exc.name == "a"
    assert exc.causes == (
        errors.FieldCause("x", "FieldValueRequired", "Required value"),
        errors.FieldCause("data[k]", "FieldValueInvalid", "bad key"),
    )
    assert "c2VjcmV0" not in str(exc)


def test_invalid_without_causes_keeps_the_message() -> None:
    wire = Wire([status(422, "Invalid", "something is off", kind="ConfigMap")])
    with pytest.raises(errors.Invalid) as caught:
        wire.client().create("configmaps", "ns", {})
    assert caught.value.kind == "ConfigMap"
    assert caught.value.causes == (errors.FieldCause("", "FieldValueInvalid", "something is off"),)


def test_server_message_is_cleaned_and_capped() -> None:
    request = httpx.Request("GET", f"{URL}/api/v1/namespaces/ns/secrets/a")
    answer = status(400, "BadRequest", "\x1b]0;evil\x07" + "x" * 1000)
    answer.request = request
    text = str(error_from_response(answer))
    assert "\x1b" not in text
    assert "\x07" not in text
    assert len(text) < 400


def test_connection_failure_is_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = ClusterClient(
        URL, token=TOKEN, http=httpx.Client(transport=httpx.MockTransport(refuse))
    )
    with pytest.raises(
        errors.UnavailableError,
        match=r"cannot reach the cluster API at https://127\.0\.0\.1:6443: ConnectError",
    ):
        client.get("secrets", "ns", "a")


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_real_connection_refused_is_unavailable(unused_port: int) -> None:
    client = ClusterClient(f"https://127.0.0.1:{unused_port}", token=TOKEN, timeout=2)
    with client, pytest.raises(errors.UnavailableError, match="cannot reach the cluster API"):
        client.version()


@pytest.mark.parametrize(
    "answer", [httpx.Response(200, text="<html>"), httpx.Response(200, json=[1, 2])]
)
def test_success_that_is_not_a_json_object_is_unavailable(answer: httpx.Response) -> None:
    wire = Wire([answer])
    with pytest.raises(errors.UnavailableError, match="not the Kubernetes API"):
        wire.client().get("secrets", "ns", "a")


# --- construction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://127.0.0.1", "https://host"),
        ("127.0.0.1:6443", "https://host"),
        ("http://example.com:6443", "refusing plain http"),
        ("https://127.0.0.1:6443/?x=1", "without query"),
    ],
)
def test_bad_urls_are_refused(url: str, match: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        ClusterClient(url, token=TOKEN)


def test_plain_http_to_loopback_is_allowed() -> None:
    with ClusterClient("http://localhost:8080/", token=TOKEN) as client:
        assert client.url == "http://localhost:8080"


@pytest.mark.parametrize("token", ["", "  ", "Bearer  x y", "a b", "a\nb", "caf\u00e9"])
def test_bad_tokens_are_refused_without_echo(token: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        ClusterClient(URL, token=token)
    if token.strip():
        assert token.strip() not in str(caught.value)


def test_unreadable_ca_is_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="cannot read the CA bundle"):
        ClusterClient(URL, token=TOKEN, ca=tmp_path / "absent.crt")


def test_repr_hides_the_token() -> None:
    wire = Wire()
    assert TOKEN not in repr(wire.client())


def test_injected_http_client_is_not_closed() -> None:
    http = httpx.Client(transport=httpx.MockTransport(Wire()))
    with ClusterClient(URL, token=TOKEN, http=http):
        pass
    assert not http.is_closed
    http.close()
