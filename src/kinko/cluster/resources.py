"""core/v1 Secret and ConfigMap: parse, validate and serialise them as Kubernetes does.

The pure core of the cluster store: no I/O, no clock. Times, uids and resource versions come
in as arguments (:func:`new_object_meta`).

* :func:`parse_secret` / :func:`parse_configmap` turn decoded JSON into frozen value objects.
  They check shape only: ``apiVersion`` ``v1`` and the right ``kind``, JSON types, strict
  base64 in ``data`` / ``binaryData``, and unknown fields. ``stringData`` is write-only: it is
  merged over ``data`` (UTF-8) and never kept.
* :func:`validate_secret` / :func:`validate_configmap` apply the rules of Kubernetes'
  ``ValidateSecret`` / ``ValidateConfigMap`` (and their ``…Update`` forms when ``old`` is
  given): names, config keys, the 1 MiB size limit, the per-type rules, immutability. For
  ``kubernetes.io/tls`` kinko goes further than Kubernetes, which only checks that the keys are
  present: the certificate chain and key must parse as PEM, the key must match the first
  certificate, and an optional ``ca.crt`` must parse.
* :func:`to_json` is the Kubernetes JSON form; :func:`storage_key` the etcd key
  ``/registry/<resource>/<namespace>/<name>``.

Unknown fields. The apiserver with ``fieldValidation=Strict`` rejects a field the schema does
not declare (``strict decoding error: unknown field "spec"``). kinko always validates strictly
and reports each such field as a cause with field path ``spec`` (or ``metadata.finalizers``),
reason ``FieldValueUnknown`` and message ``field not declared in schema``. Metadata fields that
Kubernetes declares but kinko does not store (``finalizers``, ``ownerReferences``, …) count as
unknown: silently dropping them would be worse.

Invariants: every failure is an :class:`~kinko.errors.Invalid` (or, for bad arguments of the
pure helpers, an :class:`~kinko.errors.InvalidArgument`); all causes of one object are
reported together; no message carries a value of ``data``, ``binaryData`` or ``stringData`` —
only field paths, key names and sizes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from kinko.errors import FieldCause, Invalid, InvalidArgument

__all__ = [
    "DEFAULT_NAMESPACE",
    "MAX_OBJECT_SIZE",
    "ConfigMap",
    "ObjectMeta",
    "Secret",
    "new_object_meta",
    "parse_configmap",
    "parse_secret",
    "status_for",
    "storage_key",
    "to_json",
    "validate_configmap",
    "validate_name",
    "validate_namespace",
    "validate_secret",
]

#: Namespaces exist implicitly; this one is used when neither the request nor the object names one.
DEFAULT_NAMESPACE = "default"

#: Kubernetes' ``MaxSecretSize``: the summed size of all values of one Secret or ConfigMap.
MAX_OBJECT_SIZE = 1024 * 1024

# Kubernetes cause types (metav1.CauseType), plus kinko's own for undeclared fields.
INVALID = "FieldValueInvalid"
REQUIRED = "FieldValueRequired"
NOT_SUPPORTED = "FieldValueNotSupported"
TOO_LONG = "FieldValueTooLong"
FORBIDDEN = "FieldValueForbidden"
TYPE_INVALID = "FieldValueTypeInvalid"
UNKNOWN = "FieldValueUnknown"

TYPE_OPAQUE = "Opaque"
TYPE_SERVICE_ACCOUNT_TOKEN = "kubernetes.io/service-account-token"  # noqa: S105
TYPE_DOCKERCFG = "kubernetes.io/dockercfg"
TYPE_DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"
TYPE_BASIC_AUTH = "kubernetes.io/basic-auth"
TYPE_SSH_AUTH = "kubernetes.io/ssh-auth"
TYPE_TLS = "kubernetes.io/tls"
SERVICE_ACCOUNT_NAME_ANNOTATION = "kubernetes.io/service-account.name"

Resource = Literal["secrets", "configmaps"]

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL)
_DNS1123_SUBDOMAIN_RE = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_CONFIG_KEY_RE = re.compile(r"[-._a-zA-Z0-9]+")
_QUALIFIED_NAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_MAX_ANNOTATIONS_SIZE = 256 * 1024

_META_FIELDS = frozenset(
    {"name", "namespace", "uid", "resourceVersion", "creationTimestamp", "labels", "annotations"}
)
_SECRET_FIELDS = frozenset(
    {"apiVersion", "kind", "metadata", "data", "stringData", "type", "immutable"}
)
_CONFIGMAP_FIELDS = frozenset({"apiVersion", "kind", "metadata", "data", "binaryData", "immutable"})


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """The subset of Kubernetes ``ObjectMeta`` kinko stores.

    ``resource_version`` is the opaque string Kubernetes shows ("" before the first write);
    ``creation_timestamp`` is timezone-aware UTC with whole seconds, or None before creation.
    """

    name: str
    namespace: str = DEFAULT_NAMESPACE
    uid: str = ""
    resource_version: str = ""
    creation_timestamp: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Secret:
    """A core/v1 Secret. ``data`` holds the decoded bytes; ``stringData`` is already merged."""

    metadata: ObjectMeta
    data: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    type: str = TYPE_OPAQUE
    immutable: bool | None = None

    def __repr__(self) -> str:
        # Not the metadata's annotations: kubectl's last-applied-configuration is a copy of
        # the whole Secret, data included.
        meta = self.metadata
        return (
            f"Secret(name={meta.name!r}, namespace={meta.namespace!r}, type={self.type!r}, "
            f"keys={sorted(self.data)!r}, immutable={self.immutable!r})"
        )


@dataclass(frozen=True, slots=True)
class ConfigMap:
    """A core/v1 ConfigMap: text ``data`` and decoded ``binary_data`` (``binaryData``)."""

    metadata: ObjectMeta
    data: Mapping[str, str] = field(default_factory=dict)
    binary_data: Mapping[str, bytes] = field(default_factory=dict)
    immutable: bool | None = None

    def __repr__(self) -> str:
        # Its values are stored encrypted like a Secret's, so they are kept out alike.
        meta = self.metadata
        return (
            f"ConfigMap(name={meta.name!r}, namespace={meta.namespace!r}, "
            f"keys={sorted(self.data)!r}, binary_keys={sorted(self.binary_data)!r}, "
            f"immutable={self.immutable!r})"
        )


# ---------------------------------------------------------------------------------------------
# Names and keys


def _name_causes(name: str, path: str) -> list[FieldCause]:
    if not name:
        return [FieldCause(path, REQUIRED, "Required value: name or generateName is required")]
    msgs: list[str] = []
    if len(name) > 253:
        msgs.append("must be no more than 253 characters")
    if not _DNS1123_SUBDOMAIN_RE.fullmatch(name):
        msgs.append(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character"
        )
    return [FieldCause(path, INVALID, f"Invalid value: {name!r}: {m}") for m in msgs]


def _namespace_causes(namespace: str, path: str) -> list[FieldCause]:
    if not namespace:
        return [FieldCause(path, REQUIRED, "Required value")]
    msgs: list[str] = []
    if len(namespace) > 63:
        msgs.append("must be no more than 63 characters")
    if not _DNS1123_LABEL_RE.fullmatch(namespace):
        msgs.append(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
            "'-', and must start and end with an alphanumeric character"
        )
    return [FieldCause(path, INVALID, f"Invalid value: {namespace!r}: {m}") for m in msgs]


def _config_key_causes(key: str, path: str) -> list[FieldCause]:
    msgs: list[str] = []
    if len(key) > 253:
        msgs.append("must be no more than 253 characters")
    if not _CONFIG_KEY_RE.fullmatch(key):
        msgs.append("a valid config key must consist of alphanumeric characters, '-', '_' or '.'")
    if key == ".":
        msgs.append("must not be '.'")
    elif key == "..":
        msgs.append("must not be '..'")
    elif key.startswith(".."):
        msgs.append("must not start with '..'")
    # The key is a name, not data, so Kubernetes (and kinko) may echo it.
    return [FieldCause(f"{path}[{key}]", INVALID, f"Invalid value: {key!r}: {m}") for m in msgs]


def _qualified_name_ok(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and _QUALIFIED_NAME_RE.fullmatch(name) is not None


def _meta_map_causes(meta: ObjectMeta) -> list[FieldCause]:
    causes: list[FieldCause] = []
    for key, value in meta.labels.items():
        if not _qualified_name_ok(key):
            causes.append(
                FieldCause(
                    "metadata.labels", INVALID, f"Invalid value: {key!r}: not a qualified name"
                )
            )
        if len(value) > 63 or not _LABEL_VALUE_RE.fullmatch(value):
            causes.append(
                FieldCause(
                    f"metadata.labels[{key}]",
                    INVALID,
                    f"Invalid value: {value!r}: a valid label value is at most 63 alphanumeric "
                    "characters, '-', '_' or '.', starting and ending with an alphanumeric",
                )
            )
    size = 0
    for key, value in meta.annotations.items():
        size += len(key) + len(value)
        if not _qualified_name_ok(key.lower()):
            causes.append(
                FieldCause(
                    "metadata.annotations",
                    INVALID,
                    f"Invalid value: {key!r}: not a qualified name",
                )
            )
    if size > _MAX_ANNOTATIONS_SIZE:
        causes.append(
            FieldCause(
                "metadata.annotations",
                TOO_LONG,
                f"Too long: must have at most {_MAX_ANNOTATIONS_SIZE} bytes, got {size}",
            )
        )
    return causes


def validate_name(name: str) -> None:
    """Check an object name: a DNS-1123 subdomain of at most 253 characters.

    Raises:
        Invalid: the name is empty or not a DNS-1123 subdomain (field ``metadata.name``).
    """
    causes = _name_causes(name, "metadata.name")
    if causes:
        raise Invalid(causes, name=name)


def validate_namespace(namespace: str) -> None:
    """Check a namespace name: a DNS-1123 label of at most 63 characters.

    Raises:
        Invalid: the namespace is empty or not a DNS-1123 label (field ``metadata.namespace``).
    """
    causes = _namespace_causes(namespace, "metadata.namespace")
    if causes:
        raise Invalid(causes)


def storage_key(resource: Resource, namespace: str, name: str) -> bytes:
    """The store key ``/registry/<resource>/<namespace>/<name>`` of one object.

    Validating both names here means no key can escape its prefix (no ``/`` or ``..``).

    Raises:
        InvalidArgument: ``resource`` is neither ``secrets`` nor ``configmaps``.
        Invalid: the namespace or name is not a valid Kubernetes name.
    """
    if resource not in ("secrets", "configmaps"):
        raise InvalidArgument(f"expected resource secrets or configmaps, got {resource!r}")
    causes = _namespace_causes(namespace, "metadata.namespace") + _name_causes(
        name, "metadata.name"
    )
    if causes:
        raise Invalid(causes, name=name)
    return f"/registry/{resource}/{namespace}/{name}".encode()


def new_object_meta(
    name: str,
    namespace: str,
    *,
    uid: str,
    now: datetime,
    resource_version: int | str,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> ObjectMeta:
    """Metadata of a newly created object; ``now`` is truncated to whole seconds (RFC 3339).

    Raises:
        InvalidArgument: ``now`` is naive, or ``uid`` is empty.
    """
    if now.tzinfo is None:
        raise InvalidArgument("expected a timezone-aware creation time, got a naive datetime")
    if not uid:
        raise InvalidArgument("expected a non-empty uid")
    return ObjectMeta(
        name=name,
        namespace=namespace,
        uid=uid,
        resource_version=str(resource_version),
        creation_timestamp=now.astimezone(UTC).replace(microsecond=0),
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
    )


# ---------------------------------------------------------------------------------------------
# Parsing


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _type_cause(path: str, expected: str, value: object) -> FieldCause:
    # Only the JSON type of the value is named, never the value: it may be secret data.
    return FieldCause(path, TYPE_INVALID, f"expected {expected}, got {_json_type(value)}")


def _unknown_fields(doc: Mapping[str, object], known: frozenset[str], prefix: str) -> list[str]:
    return sorted(f"{prefix}{k}" for k in doc if k not in known)


def _string_map(value: object, path: str, causes: list[FieldCause]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        causes.append(_type_cause(path, "object", value))
        return {}
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            causes.append(_type_cause(f"{path}[{key}]", "string", item))
            continue
        out[key] = item
    return out


def _base64_map(value: object, path: str, causes: list[FieldCause]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, text in _string_map(value, path, causes).items():
        try:
            out[key] = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            # The error of the decoder is dropped: it may quote part of the value.
            causes.append(
                FieldCause(
                    f"{path}[{key}]",
                    INVALID,
                    f"illegal base64 data ({len(text)} characters, value redacted)",
                )
            )
    return out


def _parse_timestamp(value: object, causes: list[FieldCause]) -> datetime | None:
    path = "metadata.creationTimestamp"
    if value is None:
        return None
    if not isinstance(value, str):
        causes.append(_type_cause(path, "string", value))
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        causes.append(FieldCause(path, INVALID, f"Invalid value: {value!r}: expected RFC 3339"))
        return None
    return parsed.astimezone(UTC)


def _parse_meta(value: object, namespace: str | None, causes: list[FieldCause]) -> ObjectMeta:
    if not isinstance(value, dict):
        if value is None:
            causes.append(FieldCause("metadata", REQUIRED, "Required value"))
        else:
            causes.append(_type_cause("metadata", "object", value))
        return ObjectMeta(name="", namespace=namespace or DEFAULT_NAMESPACE)
    causes.extend(
        FieldCause(p, UNKNOWN, "field not declared in schema")
        for p in _unknown_fields(value, _META_FIELDS, "metadata.")
    )

    def text(key: str) -> str:
        item = value.get(key)
        if item is None:
            return ""
        if not isinstance(item, str):
            causes.append(_type_cause(f"metadata.{key}", "string", item))
            return ""
        return item

    name = text("name")
    doc_ns = text("namespace")
    if namespace is not None and doc_ns and doc_ns != namespace:
        causes.append(
            FieldCause(
                "metadata.namespace",
                INVALID,
                f"Invalid value: {doc_ns!r}: the namespace of the provided object does not "
                f"match the namespace sent on the request ({namespace!r})",
            )
        )
    return ObjectMeta(
        name=name,
        namespace=namespace or doc_ns or DEFAULT_NAMESPACE,
        uid=text("uid"),
        resource_version=text("resourceVersion"),
        creation_timestamp=_parse_timestamp(value.get("creationTimestamp"), causes),
        labels=_string_map(value.get("labels"), "metadata.labels", causes),
        annotations=_string_map(value.get("annotations"), "metadata.annotations", causes),
    )


def _parse_common(
    doc: object, kind: str, known: frozenset[str], namespace: str | None
) -> tuple[dict[str, object], ObjectMeta, list[FieldCause]]:
    if not isinstance(doc, dict):
        raise Invalid([_type_cause("", "object", doc)], kind=kind)
    causes: list[FieldCause] = []
    api_version = doc.get("apiVersion")
    if api_version != "v1":
        if api_version is None:
            causes.append(FieldCause("apiVersion", REQUIRED, "Required value"))
        else:
            causes.append(
                FieldCause(
                    "apiVersion",
                    NOT_SUPPORTED,
                    f'Unsupported value: {str(api_version)[:64]!r}: supported values: "v1"',
                )
            )
    doc_kind = doc.get("kind")
    if doc_kind != kind:
        if doc_kind is None:
            causes.append(FieldCause("kind", REQUIRED, "Required value"))
        else:
            causes.append(
                FieldCause(
                    "kind",
                    NOT_SUPPORTED,
                    f"Unsupported value: {str(doc_kind)[:64]!r}: supported values: {kind!r}",
                )
            )
    causes.extend(
        FieldCause(p, UNKNOWN, "field not declared in schema")
        for p in _unknown_fields(doc, known, "")
    )
    meta = _parse_meta(doc.get("metadata"), namespace, causes)
    return doc, meta, causes


def _parse_immutable(value: object, causes: list[FieldCause]) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    causes.append(_type_cause("immutable", "boolean", value))
    return None


def parse_secret(doc: object, *, namespace: str | None) -> Secret:
    """A :class:`Secret` from decoded JSON, with ``stringData`` merged over ``data``.

    ``namespace`` is the request's namespace (None: take the object's, else ``default``).

    Raises:
        Invalid: wrong ``apiVersion``/``kind``, unknown fields, wrong JSON types, bad base64
            in ``data``, or a ``metadata.namespace`` that contradicts ``namespace``.
    """
    body, meta, causes = _parse_common(doc, "Secret", _SECRET_FIELDS, namespace)
    data = _base64_map(body.get("data"), "data", causes)
    for key, text in _string_map(body.get("stringData"), "stringData", causes).items():
        data[key] = text.encode("utf-8", "surrogatepass")
    secret_type = body.get("type")
    if secret_type is None or secret_type == "":
        secret_type = TYPE_OPAQUE
    elif not isinstance(secret_type, str):
        causes.append(_type_cause("type", "string", secret_type))
        secret_type = TYPE_OPAQUE
    immutable = _parse_immutable(body.get("immutable"), causes)
    if causes:
        raise Invalid(causes, kind="Secret", name=meta.name)
    return Secret(metadata=meta, data=data, type=secret_type, immutable=immutable)


def parse_configmap(doc: object, *, namespace: str | None) -> ConfigMap:
    """A :class:`ConfigMap` from decoded JSON.

    Raises:
        Invalid: wrong ``apiVersion``/``kind``, unknown fields, wrong JSON types, bad base64
            in ``binaryData``, or a ``metadata.namespace`` that contradicts ``namespace``.
    """
    body, meta, causes = _parse_common(doc, "ConfigMap", _CONFIGMAP_FIELDS, namespace)
    data = _string_map(body.get("data"), "data", causes)
    binary = _base64_map(body.get("binaryData"), "binaryData", causes)
    immutable = _parse_immutable(body.get("immutable"), causes)
    if causes:
        raise Invalid(causes, kind="ConfigMap", name=meta.name)
    return ConfigMap(metadata=meta, data=data, binary_data=binary, immutable=immutable)


# ---------------------------------------------------------------------------------------------
# Validation


def _meta_causes(meta: ObjectMeta) -> list[FieldCause]:
    return (
        _name_causes(meta.name, "metadata.name")
        + _namespace_causes(meta.namespace, "metadata.namespace")
        + _meta_map_causes(meta)
    )


def _size_cause(path: str, size: int) -> list[FieldCause]:
    if size <= MAX_OBJECT_SIZE:
        return []
    return [
        FieldCause(
            path, TOO_LONG, f"Too long: must have at most {MAX_OBJECT_SIZE} bytes, got {size}"
        )
    ]


def _tls_causes(data: Mapping[str, bytes]) -> list[FieldCause]:
    causes: list[FieldCause] = []
    for key in ("tls.crt", "tls.key"):
        if key not in data:
            causes.append(FieldCause(f"data[{key}]", REQUIRED, "Required value"))
    if causes:
        return causes
    certs: list[x509.Certificate] = []
    try:
        certs = x509.load_pem_x509_certificates(data["tls.crt"])
    except (ValueError, TypeError, UnsupportedAlgorithm):
        causes.append(
            FieldCause(
                "data[tls.crt]",
                INVALID,
                f"must be PEM-encoded X.509 certificates ({len(data['tls.crt'])} bytes, "
                "value redacted)",
            )
        )
    private_key = None
    try:
        private_key = serialization.load_pem_private_key(data["tls.key"], password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        causes.append(
            FieldCause(
                "data[tls.key]",
                INVALID,
                f"must be an unencrypted PEM-encoded private key ({len(data['tls.key'])} bytes, "
                "value redacted)",
            )
        )
    if certs and private_key is not None:
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        try:
            matches = certs[0].public_key().public_bytes(
                *spki
            ) == private_key.public_key().public_bytes(*spki)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            matches = False
        if not matches:
            causes.append(
                FieldCause(
                    "data[tls.key]",
                    INVALID,
                    "private key does not match the public key of the first certificate in tls.crt",
                )
            )
    if "ca.crt" in data:
        try:
            x509.load_pem_x509_certificates(data["ca.crt"])
        except (ValueError, TypeError, UnsupportedAlgorithm):
            causes.append(
                FieldCause(
                    "data[ca.crt]",
                    INVALID,
                    f"must be PEM-encoded X.509 certificates ({len(data['ca.crt'])} bytes, "
                    "value redacted)",
                )
            )
    return causes


def _json_object_cause(data: Mapping[str, bytes], key: str, need: str | None) -> list[FieldCause]:
    path = f"data[{key}]"
    if key not in data:
        return [FieldCause(path, REQUIRED, "Required value")]
    try:
        parsed = json.loads(data[key])
    except (ValueError, RecursionError):
        parsed = None
    else:
        if isinstance(parsed, dict) and (need is None or isinstance(parsed.get(need), dict)):
            return []
    what = "a JSON object" if need is None else f'a JSON object with an object "{need}"'
    return [
        FieldCause(path, INVALID, f"Invalid value: <secret contents redacted>: expected {what}")
    ]


def _type_rule_causes(secret: Secret) -> list[FieldCause]:
    data = secret.data
    match secret.type:
        case "kubernetes.io/service-account-token":
            if not secret.metadata.annotations.get(SERVICE_ACCOUNT_NAME_ANNOTATION):
                return [
                    FieldCause(
                        f"metadata.annotations[{SERVICE_ACCOUNT_NAME_ANNOTATION}]",
                        REQUIRED,
                        "Required value",
                    )
                ]
        case "kubernetes.io/dockercfg":
            return _json_object_cause(data, ".dockercfg", None)
        case "kubernetes.io/dockerconfigjson":
            return _json_object_cause(data, ".dockerconfigjson", "auths")
        case "kubernetes.io/basic-auth":
            if "username" not in data and "password" not in data:
                return [
                    FieldCause("data[username]", REQUIRED, "Required value"),
                    FieldCause("data[password]", REQUIRED, "Required value"),
                ]
        case "kubernetes.io/ssh-auth":
            if "ssh-privatekey" not in data:
                return [FieldCause("data[ssh-privatekey]", REQUIRED, "Required value")]
        case "kubernetes.io/tls":
            return _tls_causes(data)
        case _:
            # Opaque and any other type carry no rules, as in Kubernetes.
            pass
    return []


def _immutable_causes(
    new_immutable: bool | None, old_immutable: bool | None, changed: list[str]
) -> list[FieldCause]:
    if not old_immutable:
        return []
    causes: list[FieldCause] = []
    if not new_immutable:
        causes.append(
            FieldCause("immutable", FORBIDDEN, "field is immutable when `immutable` is set")
        )
    causes.extend(
        FieldCause(path, FORBIDDEN, "field is immutable when `immutable` is set")
        for path in changed
    )
    return causes


def validate_secret(secret: Secret, *, old: Secret | None) -> None:
    """Apply Kubernetes' ``ValidateSecret`` (and ``ValidateSecretUpdate`` when ``old`` is set).

    Raises:
        Invalid: with one cause per broken rule: name or namespace, a data key that is no
            config key, more than 1 MiB of data, the type's rules (for ``kubernetes.io/tls``
            also PEM parsing and key/certificate match), a changed ``type``, or a change to an
            immutable Secret.
    """
    causes = _meta_causes(secret.metadata)
    for key in secret.data:
        causes.extend(_config_key_causes(key, "data"))
    causes.extend(_size_cause("data", sum(len(v) for v in secret.data.values())))
    causes.extend(_type_rule_causes(secret))
    if old is not None:
        if secret.type != old.type:
            causes.append(
                FieldCause("type", INVALID, f"Invalid value: {secret.type!r}: field is immutable")
            )
        changed = ["data"] if dict(secret.data) != dict(old.data) else []
        causes.extend(_immutable_causes(secret.immutable, old.immutable, changed))
    if causes:
        raise Invalid(causes, kind="Secret", name=secret.metadata.name)


def validate_configmap(configmap: ConfigMap, *, old: ConfigMap | None) -> None:
    """Apply Kubernetes' ``ValidateConfigMap`` (and ``ValidateConfigMapUpdate`` with ``old``).

    Raises:
        Invalid: with one cause per broken rule: name or namespace, a key that is no config
            key or appears in both ``data`` and ``binaryData``, more than 1 MiB in all, or a
            change to an immutable ConfigMap.
    """
    causes = _meta_causes(configmap.metadata)
    for key in configmap.data:
        causes.extend(_config_key_causes(key, "data"))
    for key in configmap.binary_data:
        causes.extend(_config_key_causes(key, "binaryData"))
        if key in configmap.data:
            causes.append(
                FieldCause(
                    f"binaryData[{key}]",
                    INVALID,
                    f"Invalid value: {key!r}: duplicate of key present in data",
                )
            )
    size = sum(len(v.encode("utf-8", "surrogatepass")) for v in configmap.data.values())
    size += sum(len(v) for v in configmap.binary_data.values())
    causes.extend(_size_cause("data", size))
    if old is not None:
        changed = [
            path
            for path, new, was in (
                ("data", dict(configmap.data), dict(old.data)),
                ("binaryData", dict(configmap.binary_data), dict(old.binary_data)),
            )
            if new != was
        ]
        causes.extend(_immutable_causes(configmap.immutable, old.immutable, changed))
    if causes:
        raise Invalid(causes, kind="ConfigMap", name=configmap.metadata.name)


# ---------------------------------------------------------------------------------------------
# Serialisation


def _meta_json(meta: ObjectMeta) -> dict[str, object]:
    out: dict[str, object] = {"name": meta.name, "namespace": meta.namespace}
    if meta.uid:
        out["uid"] = meta.uid
    if meta.resource_version:
        out["resourceVersion"] = meta.resource_version
    if meta.creation_timestamp is not None:
        stamp = meta.creation_timestamp.astimezone(UTC).replace(microsecond=0)
        out["creationTimestamp"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    if meta.labels:
        out["labels"] = dict(meta.labels)
    if meta.annotations:
        out["annotations"] = dict(meta.annotations)
    return out


def _b64(values: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode("ascii") for k, v in values.items()}


def to_json(obj: Secret | ConfigMap, *, include_data: bool = True) -> dict[str, object]:
    """The Kubernetes JSON form of ``obj`` (``data`` base64 for a Secret, never ``stringData``).

    ``include_data=False`` drops ``data`` and ``binaryData``: the metadata-only view.
    """
    out: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Secret" if isinstance(obj, Secret) else "ConfigMap",
        "metadata": _meta_json(obj.metadata),
    }
    if isinstance(obj, Secret):
        out["type"] = obj.type
        if include_data and obj.data:
            out["data"] = _b64(obj.data)
    elif include_data:
        if obj.data:
            out["data"] = dict(obj.data)
        if obj.binary_data:
            out["binaryData"] = _b64(obj.binary_data)
    if obj.immutable is not None:
        out["immutable"] = obj.immutable
    return out


def status_for(exc: Invalid) -> dict[str, object]:
    """The Kubernetes ``Status`` (reason ``Invalid``, code 422) that reports ``exc``."""
    resource = {"Secret": "secrets", "ConfigMap": "configmaps"}.get(exc.kind, "")
    details: dict[str, object] = {
        "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in exc.causes]
    }
    if exc.name:
        details["name"] = exc.name
    if resource:
        details["kind"] = resource
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": str(exc),
        "reason": "Invalid",
        "details": details,
        "code": 422,
    }
