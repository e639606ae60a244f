"""core/v1 Secret and ConfigMap: the table of rejected inputs, valid round-trips, and the
property that any JSON-ish input only raises kinko errors that never quote secret data."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from kinko.cli.errors import exit_code_for
from kinko.cluster.resources import (
    MAX_OBJECT_SIZE,
    ConfigMap,
    ObjectMeta,
    Secret,
    new_object_meta,
    parse_configmap,
    parse_secret,
    status_for,
    storage_key,
    to_json,
    validate_configmap,
    validate_name,
    validate_namespace,
    validate_secret,
)
from kinko.errors import FieldCause, Invalid, InvalidArgument, KinkoError

SENSITIVE = b"hunter2-SENSITIVE-value"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(key: ec.EllipticCurvePrivateKey, cn: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = datetime(2026, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


_KEY = ec.generate_private_key(ec.SECP256R1())
_OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
TLS_CRT = _cert_pem(_KEY, "ingress.example")
TLS_KEY = _key_pem(_KEY)
OTHER_KEY = _key_pem(_OTHER_KEY)
CA_CRT = _cert_pem(_OTHER_KEY, "ca.example")
ENCRYPTED_KEY = _KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.BestAvailableEncryption(b"passphrase"),
)


def secret_doc(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db-creds", "namespace": "default"},
        "data": {"password": b64(SENSITIVE)},
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


def cm_doc(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "default"},
        "data": {"mode": "fast"},
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


def tls(**data: bytes) -> dict[str, Any]:
    return secret_doc(type="kubernetes.io/tls", data={k: b64(v) for k, v in data.items()})


def meta(name: str = "db-creds", namespace: str = "default") -> dict[str, Any]:
    return {"name": name, "namespace": namespace}


# One row per rejected input: (id, document, old document or None, field, reason).
SECRET_CASES: list[tuple[str, object, dict[str, Any] | None, str, str]] = [
    ("not-an-object", ["x"], None, "", "FieldValueTypeInvalid"),
    ("name-uppercase", secret_doc(metadata=meta("DB")), None, "metadata.name", "FieldValueInvalid"),
    (
        "name-underscore",
        secret_doc(metadata=meta("a_b")),
        None,
        "metadata.name",
        "FieldValueInvalid",
    ),
    (
        "name-too-long",
        secret_doc(metadata=meta("a" * 254)),
        None,
        "metadata.name",
        "FieldValueInvalid",
    ),
    ("name-missing", secret_doc(metadata={}), None, "metadata.name", "FieldValueRequired"),
    (
        "name-not-string",
        secret_doc(metadata={"name": 7}),
        None,
        "metadata.name",
        "FieldValueTypeInvalid",
    ),
    ("metadata-missing", secret_doc(metadata=None), None, "metadata", "FieldValueRequired"),
    ("metadata-not-object", secret_doc(metadata="x"), None, "metadata", "FieldValueTypeInvalid"),
    (
        "namespace-dot",
        secret_doc(metadata=meta(namespace="a.b")),
        None,
        "metadata.namespace",
        "FieldValueInvalid",
    ),
    (
        "namespace-too-long",
        secret_doc(metadata=meta(namespace="n" * 64)),
        None,
        "metadata.namespace",
        "FieldValueInvalid",
    ),
    (
        "label-value-bad",
        secret_doc(metadata={"name": "x", "labels": {"app": "-bad-"}}),
        None,
        "metadata.labels[app]",
        "FieldValueInvalid",
    ),
    (
        "timestamp-bad",
        secret_doc(metadata={"name": "x", "creationTimestamp": "yesterday"}),
        None,
        "metadata.creationTimestamp",
        "FieldValueInvalid",
    ),
    (
        "base64-alphabet",
        secret_doc(data={"password": "hunter2-SENSITIVE!"}),
        None,
        "data[password]",
        "FieldValueInvalid",
    ),
    (
        "base64-padding",
        secret_doc(data={"password": b64(SENSITIVE).rstrip("=")}),
        None,
        "data[password]",
        "FieldValueInvalid",
    ),
    (
        "base64-newline",
        secret_doc(data={"password": b64(SENSITIVE) + "\n"}),
        None,
        "data[password]",
        "FieldValueInvalid",
    ),
    (
        "data-not-string",
        secret_doc(data={"password": 12}),
        None,
        "data[password]",
        "FieldValueTypeInvalid",
    ),
    ("data-not-object", secret_doc(data=["x"]), None, "data", "FieldValueTypeInvalid"),
    (
        "stringdata-not-string",
        secret_doc(stringData={"password": True}),
        None,
        "stringData[password]",
        "FieldValueTypeInvalid",
    ),
    ("key-slash", secret_doc(data={"a/b": b64(SENSITIVE)}), None, "data[a/b]", "FieldValueInvalid"),
    ("key-dot", secret_doc(data={".": b64(SENSITIVE)}), None, "data[.]", "FieldValueInvalid"),
    ("key-dotdot", secret_doc(data={"..": b64(SENSITIVE)}), None, "data[..]", "FieldValueInvalid"),
    (
        "key-dotdot-prefix",
        secret_doc(data={"..x": b64(SENSITIVE)}),
        None,
        "data[..x]",
        "FieldValueInvalid",
    ),
    (
        "key-too-long",
        secret_doc(data={"k" * 254: b64(SENSITIVE)}),
        None,
        f"data[{'k' * 254}]",
        "FieldValueInvalid",
    ),
    (
        "key-empty-stringdata",
        secret_doc(stringData={"": "hunter2-SENSITIVE"}),
        None,
        "data[]",
        "FieldValueInvalid",
    ),
    (
        "oversize",
        secret_doc(data={"a": b64(b"x" * (MAX_OBJECT_SIZE - 1)), "b": b64(b"yy")}),
        None,
        "data",
        "FieldValueTooLong",
    ),
    ("unknown-spec", secret_doc(spec={"x": 1}), None, "spec", "FieldValueUnknown"),
    (
        "unknown-metadata",
        secret_doc(metadata={"name": "x", "finalizers": ["a"]}),
        None,
        "metadata.finalizers",
        "FieldValueUnknown",
    ),
    ("api-version-v2", secret_doc(apiVersion="v2"), None, "apiVersion", "FieldValueNotSupported"),
    (
        "api-version-missing",
        {"kind": "Secret", "metadata": {"name": "x"}},
        None,
        "apiVersion",
        "FieldValueRequired",
    ),
    ("kind-wrong", secret_doc(kind="ConfigMap"), None, "kind", "FieldValueNotSupported"),
    ("type-not-string", secret_doc(type=3), None, "type", "FieldValueTypeInvalid"),
    ("immutable-not-bool", secret_doc(immutable="yes"), None, "immutable", "FieldValueTypeInvalid"),
    ("tls-no-crt", tls(**{"tls.key": TLS_KEY}), None, "data[tls.crt]", "FieldValueRequired"),
    ("tls-no-key", tls(**{"tls.crt": TLS_CRT}), None, "data[tls.key]", "FieldValueRequired"),
    (
        "tls-crt-not-pem",
        tls(**{"tls.crt": SENSITIVE, "tls.key": TLS_KEY}),
        None,
        "data[tls.crt]",
        "FieldValueInvalid",
    ),
    (
        "tls-key-not-pem",
        tls(**{"tls.crt": TLS_CRT, "tls.key": SENSITIVE}),
        None,
        "data[tls.key]",
        "FieldValueInvalid",
    ),
    (
        "tls-key-mismatch",
        tls(**{"tls.crt": TLS_CRT, "tls.key": OTHER_KEY}),
        None,
        "data[tls.key]",
        "FieldValueInvalid",
    ),
    (
        "tls-key-encrypted",
        tls(**{"tls.crt": TLS_CRT, "tls.key": ENCRYPTED_KEY}),
        None,
        "data[tls.key]",
        "FieldValueInvalid",
    ),
    (
        "tls-ca-not-pem",
        tls(**{"tls.crt": TLS_CRT, "tls.key": TLS_KEY, "ca.crt": SENSITIVE}),
        None,
        "data[ca.crt]",
        "FieldValueInvalid",
    ),
    (
        "dockerconfigjson-missing",
        secret_doc(type="kubernetes.io/dockerconfigjson"),
        None,
        "data[.dockerconfigjson]",
        "FieldValueRequired",
    ),
    (
        "dockerconfigjson-not-json",
        secret_doc(
            type="kubernetes.io/dockerconfigjson", data={".dockerconfigjson": b64(SENSITIVE)}
        ),
        None,
        "data[.dockerconfigjson]",
        "FieldValueInvalid",
    ),
    (
        "dockerconfigjson-no-auths",
        secret_doc(
            type="kubernetes.io/dockerconfigjson",
            stringData={".dockerconfigjson": '{"hunter2-SENSITIVE": {}}'},
        ),
        None,
        "data[.dockerconfigjson]",
        "FieldValueInvalid",
    ),
    (
        "dockercfg-missing",
        secret_doc(type="kubernetes.io/dockercfg"),
        None,
        "data[.dockercfg]",
        "FieldValueRequired",
    ),
    (
        "dockercfg-not-object",
        secret_doc(
            type="kubernetes.io/dockercfg", stringData={".dockercfg": '["hunter2-SENSITIVE"]'}
        ),
        None,
        "data[.dockercfg]",
        "FieldValueInvalid",
    ),
    (
        "basic-auth-empty",
        secret_doc(type="kubernetes.io/basic-auth", data={}),
        None,
        "data[username]",
        "FieldValueRequired",
    ),
    (
        "ssh-auth-missing",
        secret_doc(type="kubernetes.io/ssh-auth"),
        None,
        "data[ssh-privatekey]",
        "FieldValueRequired",
    ),
    (
        "sa-token-no-annotation",
        secret_doc(type="kubernetes.io/service-account-token"),
        None,
        "metadata.annotations[kubernetes.io/service-account.name]",
        "FieldValueRequired",
    ),
    (
        "type-changed",
        secret_doc(type="kubernetes.io/basic-auth", data={"username": b64(SENSITIVE)}),
        secret_doc(data={"username": b64(SENSITIVE)}),
        "type",
        "FieldValueInvalid",
    ),
    (
        "immutable-unset",
        secret_doc(immutable=False),
        secret_doc(immutable=True),
        "immutable",
        "FieldValueForbidden",
    ),
    (
        "immutable-data-changed",
        secret_doc(immutable=True, data={"password": b64(b"other")}),
        secret_doc(immutable=True),
        "data",
        "FieldValueForbidden",
    ),
    (
        "immutable-data-via-stringdata",
        secret_doc(immutable=True, stringData={"extra": "x"}),
        secret_doc(immutable=True),
        "data",
        "FieldValueForbidden",
    ),
]

CONFIGMAP_CASES: list[tuple[str, object, dict[str, Any] | None, str, str]] = [
    (
        "cm-name-uppercase",
        cm_doc(metadata={"name": "Settings"}),
        None,
        "metadata.name",
        "FieldValueInvalid",
    ),
    ("cm-kind-wrong", cm_doc(kind="Secret"), None, "kind", "FieldValueNotSupported"),
    ("cm-unknown-type", cm_doc(type="Opaque"), None, "type", "FieldValueUnknown"),
    (
        "cm-unknown-stringdata",
        cm_doc(stringData={"a": "b"}),
        None,
        "stringData",
        "FieldValueUnknown",
    ),
    ("cm-data-not-string", cm_doc(data={"mode": 1}), None, "data[mode]", "FieldValueTypeInvalid"),
    (
        "cm-binary-bad-base64",
        cm_doc(binaryData={"blob": "*"}),
        None,
        "binaryData[blob]",
        "FieldValueInvalid",
    ),
    ("cm-key-invalid", cm_doc(data={"a b": "x"}), None, "data[a b]", "FieldValueInvalid"),
    (
        "cm-binary-key-invalid",
        cm_doc(binaryData={"..": b64(b"x")}),
        None,
        "binaryData[..]",
        "FieldValueInvalid",
    ),
    (
        "cm-duplicate-key",
        cm_doc(binaryData={"mode": b64(b"x")}),
        None,
        "binaryData[mode]",
        "FieldValueInvalid",
    ),
    (
        "cm-oversize",
        cm_doc(data={"a": "x" * MAX_OBJECT_SIZE}, binaryData={"b": b64(b"y")}),
        None,
        "data",
        "FieldValueTooLong",
    ),
    ("cm-immutable-unset", cm_doc(), cm_doc(immutable=True), "immutable", "FieldValueForbidden"),
    (
        "cm-immutable-binary-changed",
        cm_doc(immutable=True, binaryData={"blob": b64(b"new")}),
        cm_doc(immutable=True, binaryData={"blob": b64(b"old")}),
        "binaryData",
        "FieldValueForbidden",
    ),
    (
        "cm-immutable-changed",
        cm_doc(immutable=True, data={"mode": "slow"}),
        cm_doc(immutable=True),
        "data",
        "FieldValueForbidden",
    ),
]


def _check_secret(doc: object, old_doc: dict[str, Any] | None) -> None:
    old = parse_secret(old_doc, namespace=None) if old_doc is not None else None
    validate_secret(parse_secret(doc, namespace=None), old=old)


def _check_configmap(doc: object, old_doc: dict[str, Any] | None) -> None:
    old = parse_configmap(old_doc, namespace=None) if old_doc is not None else None
    validate_configmap(parse_configmap(doc, namespace=None), old=old)


def _assert_redacted(exc: Invalid) -> None:
    rendered = str(exc) + json.dumps(status_for(exc))
    for needle in (SENSITIVE.decode(), "hunter2", b64(SENSITIVE)):
        assert needle not in rendered


@pytest.mark.parametrize(
    ("doc", "old", "path", "reason"),
    [pytest.param(*row[1:], id=row[0]) for row in SECRET_CASES],
)
def test_invalid_secret_names_field_and_reason(
    doc: object, old: dict[str, Any] | None, path: str, reason: str
) -> None:
    with pytest.raises(Invalid) as info:
        _check_secret(doc, old)
    assert (path, reason) in [(c.field, c.reason) for c in info.value.causes]
    assert info.value.kind == "Secret"
    _assert_redacted(info.value)


@pytest.mark.parametrize(
    ("doc", "old", "path", "reason"),
    [pytest.param(*row[1:], id=row[0]) for row in CONFIGMAP_CASES],
)
def test_invalid_configmap_names_field_and_reason(
    doc: object, old: dict[str, Any] | None, path: str, reason: str
) -> None:
    with pytest.raises(Invalid) as info:
        _check_configmap(doc, old)
    assert (path, reason) in [(c.field, c.reason) for c in info.value.causes]
    assert info.value.kind == "ConfigMap"


def test_table_is_large_enough() -> None:
    assert len(SECRET_CASES) + len(CONFIGMAP_CASES) >= 30


def test_basic_auth_reports_both_keys() -> None:
    with pytest.raises(Invalid) as info:
        _check_secret(secret_doc(type="kubernetes.io/basic-auth", data={}), None)
    assert [c.field for c in info.value.causes] == ["data[username]", "data[password]"]


def test_all_causes_reported_together() -> None:
    doc = secret_doc(metadata=meta("Bad"), spec={}, data={"password": "!"})
    with pytest.raises(Invalid) as info:
        _check_secret(doc, None)
    fields = {c.field for c in info.value.causes}
    assert {"spec", "data[password]"} <= fields


def test_namespace_mismatch_with_request() -> None:
    with pytest.raises(Invalid) as info:
        parse_secret(secret_doc(metadata=meta(namespace="prod")), namespace="dev")
    assert info.value.causes[0].field == "metadata.namespace"


VALID_SECRETS: list[tuple[str, dict[str, Any]]] = [
    ("opaque", secret_doc()),
    ("no-type-no-data", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "e"}}),
    ("tls", tls(**{"tls.crt": TLS_CRT, "tls.key": TLS_KEY})),
    (
        "tls-chain-and-ca",
        tls(**{"tls.crt": TLS_CRT + CA_CRT, "tls.key": TLS_KEY, "ca.crt": CA_CRT}),
    ),
    (
        "dockerconfigjson",
        secret_doc(
            type="kubernetes.io/dockerconfigjson",
            stringData={".dockerconfigjson": '{"auths": {"r.io": {"auth": "eDp5"}}}'},
        ),
    ),
    (
        "dockercfg",
        secret_doc(type="kubernetes.io/dockercfg", stringData={".dockercfg": '{"r.io": {}}'}),
    ),
    ("basic-auth-password-only", secret_doc(type="kubernetes.io/basic-auth")),
    (
        "ssh-auth",
        secret_doc(type="kubernetes.io/ssh-auth", data={"ssh-privatekey": b64(SENSITIVE)}),
    ),
    (
        "sa-token",
        secret_doc(
            type="kubernetes.io/service-account-token",
            metadata={
                "name": "t",
                "annotations": {"kubernetes.io/service-account.name": "builder"},
            },
        ),
    ),
    ("custom-type", secret_doc(type="example.com/custom")),
    (
        "immutable",
        secret_doc(
            immutable=True, metadata={"name": "x", "labels": {"app.kubernetes.io/name": "db"}}
        ),
    ),
]


@pytest.mark.parametrize("doc", [pytest.param(d, id=i) for i, d in VALID_SECRETS])
def test_valid_secret_round_trips(doc: dict[str, Any]) -> None:
    secret = parse_secret(doc, namespace=None)
    validate_secret(secret, old=None)
    again = parse_secret(to_json(secret), namespace=None)
    assert again == secret
    assert "stringData" not in to_json(secret)


def test_unchanged_update_of_immutable_secret_is_allowed() -> None:
    old = parse_secret(secret_doc(immutable=True), namespace=None)
    new = parse_secret(
        secret_doc(immutable=True, metadata={"name": "db-creds", "labels": {"a": "b"}}),
        namespace=None,
    )
    validate_secret(new, old=old)


def test_string_data_merged_over_data() -> None:
    doc = secret_doc(
        data={"a": b64(b"from-data"), "b": b64(b"kept")},
        stringData={"a": "from-stringData", "c": "é"},
    )
    secret = parse_secret(doc, namespace=None)
    assert dict(secret.data) == {"a": b"from-stringData", "b": b"kept", "c": "é".encode()}
    assert to_json(secret)["data"] == {
        "a": b64(b"from-stringData"),
        "b": b64(b"kept"),
        "c": b64("é".encode()),
    }


def test_type_defaults_to_opaque_and_namespace_to_default() -> None:
    secret = parse_secret(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}, namespace=None
    )
    assert secret.type == "Opaque"
    assert secret.metadata.namespace == "default"
    assert (
        parse_secret(secret_doc(metadata={"name": "x"}), namespace="prod").metadata.namespace
        == "prod"
    )


def test_secret_repr_hides_data() -> None:
    assert SENSITIVE.decode() not in repr(parse_secret(secret_doc(), namespace=None))


def test_configmap_round_trip_and_metadata_only_view() -> None:
    doc = cm_doc(binaryData={"blob": b64(b"\x00\xff")}, immutable=False)
    cm = parse_configmap(doc, namespace="default")
    validate_configmap(cm, old=None)
    assert cm.binary_data == {"blob": b"\x00\xff"}
    assert parse_configmap(to_json(cm), namespace=None) == cm
    view = to_json(cm, include_data=False)
    assert "data" not in view
    assert "binaryData" not in view


def test_to_json_metadata_form() -> None:
    now = datetime(2026, 11, 28, 14, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    m = new_object_meta(
        "db", "prod", uid="0b4f-uid", now=now, resource_version=42, labels={"a": "b"}
    )
    secret = Secret(metadata=m, data={"k": b"v"})
    out = to_json(secret)
    assert out["apiVersion"] == "v1"
    assert out["kind"] == "Secret"
    assert out["type"] == "Opaque"
    assert out["metadata"] == {
        "name": "db",
        "namespace": "prod",
        "uid": "0b4f-uid",
        "resourceVersion": "42",
        "creationTimestamp": "2026-11-28T12:30:05Z",
        "labels": {"a": "b"},
    }
    view = to_json(secret, include_data=False)
    assert "data" not in view
    assert parse_secret(view, namespace=None).metadata == m


def test_new_object_meta_rejects_naive_time_and_empty_uid() -> None:
    with pytest.raises(InvalidArgument):
        new_object_meta("a", "b", uid="u", now=datetime(2026, 1, 1), resource_version=1)
    with pytest.raises(InvalidArgument):
        new_object_meta("a", "b", uid="", now=datetime(2026, 1, 1, tzinfo=UTC), resource_version=1)


def test_storage_key() -> None:
    assert storage_key("secrets", "default", "db") == b"/registry/secrets/default/db"
    assert (
        storage_key("configmaps", "kube-system", "a.b") == b"/registry/configmaps/kube-system/a.b"
    )


@pytest.mark.parametrize(
    ("resource", "namespace", "name"),
    [
        ("secrets", "default", "../x"),
        ("secrets", "a/b", "x"),
        ("secrets", "", "x"),
        ("configmaps", "d", ""),
    ],
)
def test_storage_key_rejects_bad_names(resource: Any, namespace: str, name: str) -> None:
    with pytest.raises(Invalid):
        storage_key(resource, namespace, name)


def test_storage_key_rejects_unknown_resource() -> None:
    with pytest.raises(InvalidArgument):
        storage_key("pods", "default", "x")  # type: ignore[arg-type]


def test_validate_name_and_namespace() -> None:
    validate_name("a" * 253)
    validate_name("a.b-c")
    validate_namespace("n" * 63)
    with pytest.raises(Invalid):
        validate_name("a" * 254)
    with pytest.raises(Invalid):
        validate_namespace("a.b")
    with pytest.raises(Invalid):
        validate_namespace("n" * 64)


def test_status_for_is_a_kubernetes_status() -> None:
    with pytest.raises(Invalid) as info:
        _check_secret(secret_doc(metadata=meta("Bad")), None)
    status = status_for(info.value)
    assert status["kind"] == "Status"
    assert status["reason"] == "Invalid"
    assert status["code"] == 422
    details = status["details"]
    assert isinstance(details, dict)
    assert details["kind"] == "secrets"
    assert details["name"] == "Bad"
    assert details["causes"][0]["field"] == "metadata.name"


def test_invalid_is_an_invalid_argument_with_its_exit_code() -> None:
    exc = Invalid([FieldCause("data[a]", "FieldValueInvalid", "bad")], kind="Secret", name="x")
    assert isinstance(exc, InvalidArgument)
    assert exit_code_for(exc) == 4
    assert str(exc) == 'Secret "x" is invalid: [data[a]: bad]'


def test_object_meta_defaults() -> None:
    assert ObjectMeta(name="x").namespace == "default"
    assert ConfigMap(metadata=ObjectMeta(name="x")).immutable is None


# ---------------------------------------------------------------------------------------------
# Properties

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)

# Secret values come from an alphabet no name, key or fixed message of the test uses.
_secret_text = st.text(alphabet="QXZJ", min_size=10, max_size=40).map(lambda s: "QXZJ" + s)
_names = st.text(alphabet="abc-./_", max_size=12)
_types = st.sampled_from(
    [
        "Opaque",
        "kubernetes.io/tls",
        "kubernetes.io/dockerconfigjson",
        "kubernetes.io/dockercfg",
        "kubernetes.io/basic-auth",
        "kubernetes.io/ssh-auth",
        "kubernetes.io/service-account-token",
    ]
)
_keys = (
    st.sampled_from(
        [
            "tls.crt",
            "tls.key",
            "ca.crt",
            ".dockerconfigjson",
            ".dockercfg",
            "username",
            "password",
            "ssh-privatekey",
        ]
    )
    | _names
)


@st.composite
def _secret_docs(draw: st.DrawFn) -> tuple[object, list[str]]:
    secrets: list[str] = []

    def value() -> object:
        raw = draw(_secret_text)
        secrets.append(raw)
        encoded = b64(raw.encode())
        secrets.append(encoded)
        return draw(st.sampled_from([encoded, raw, "!" + raw, encoded[:-1]]) | _json)

    string_data = {draw(_keys): draw(_secret_text) for _ in range(draw(st.integers(0, 2)))}
    doc: dict[str, object] = {
        "apiVersion": draw(st.sampled_from(["v1", "v2", None])),
        "kind": draw(st.sampled_from(["Secret", "ConfigMap", None])),
        "metadata": draw(
            st.fixed_dictionaries({"name": _names}, optional={"namespace": _names}) | _json
        ),
        "type": draw(_types | _json),
        "data": {draw(_keys): value() for _ in range(draw(st.integers(0, 4)))},
        "stringData": string_data,
    }
    secrets.extend(string_data.values())
    if draw(st.booleans()):
        doc[draw(_names)] = draw(_json)
    if draw(st.booleans()):
        doc["immutable"] = draw(_json)
    return doc, secrets


@settings(max_examples=300, deadline=None)
@given(_json, st.none() | _names)
def test_arbitrary_json_only_raises_kinko_errors(doc: object, namespace: str | None) -> None:
    try:
        secret = parse_secret(doc, namespace=namespace)
        validate_secret(secret, old=None)
        validate_secret(secret, old=secret)
    except KinkoError:
        pass
    try:
        cm = parse_configmap(doc, namespace=namespace)
        validate_configmap(cm, old=None)
        validate_configmap(cm, old=cm)
    except KinkoError:
        pass


@settings(max_examples=300, deadline=None)
@given(_secret_docs(), st.none() | _names)
def test_secret_errors_never_quote_data(
    case: tuple[object, list[str]], namespace: str | None
) -> None:
    doc, secrets = case
    try:
        secret = parse_secret(doc, namespace=namespace)
        validate_secret(secret, old=None)
        old = Secret(
            metadata=secret.metadata, data={"x": b"QXZJQXZJQXZJ"}, type="Opaque", immutable=True
        )
        validate_secret(secret, old=old)
    except Invalid as exc:
        rendered = str(exc) + json.dumps(status_for(exc))
        for value in secrets:
            assert value not in rendered
