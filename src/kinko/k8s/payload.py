"""Kubernetes object payloads: the plaintext a provider chain seals and opens.

kube-apiserver serializes built-in kinds as Kubernetes protobuf — the 4-byte magic
``k8s\\x00`` followed by a ``runtime.Unknown`` whose ``raw`` is the object's own protobuf —
and custom resources as JSON. This module turns either into the object's JSON form (what
``kubectl get -o json`` shows) for the two built-in kinds kinko understands, core/v1
``Secret`` and ``ConfigMap``, and builds protobuf payloads of those two kinds.

Invariants:

- Decoding is pure and total over bytes: every input either yields a JSON-ready ``dict`` or
  raises :class:`~kinko.errors.InvalidArgument`. Messages name kinds, fields and sizes,
  never payload bytes (a Secret's plaintext is exactly what must not leak).
- The JSON form follows Go's ``encoding/json`` output for the upstream types: struct field
  order, ``omitempty`` rules, map keys sorted, ``[]byte`` as standard base64, timestamps as
  RFC 3339 in UTC with whole seconds, a missing ``creationTimestamp`` as ``null``.
- Encoding is deterministic (map entries sorted by key, fields in number order), which is
  how kube-apiserver's generated marshallers lay them out too.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime

from google.protobuf.message import DecodeError, Message

from kinko.errors import InvalidArgument
from kinko.gen.k8s import core_pb2, meta_pb2, runtime_pb2

#: The magic prefix of kube-apiserver's protobuf serializer.
PROTOBUF_MAGIC = b"k8s\x00"

_JSON_WHITESPACE = b" \t\r\n"


def decode_payload(plaintext: bytes) -> dict[str, object]:
    """Decode a stored object's plaintext into its Kubernetes JSON form.

    ``k8s\\x00`` + ``runtime.Unknown`` payloads of core/v1 Secret and ConfigMap are decoded
    field by field; a JSON object payload is parsed and returned as it is.

    Raises InvalidArgument: the bytes are neither protobuf with the magic nor a JSON object,
    the protobuf is malformed, or its kind is not a core/v1 Secret or ConfigMap.
    """
    if plaintext.startswith(PROTOBUF_MAGIC):
        return _decode_protobuf(plaintext[len(PROTOBUF_MAGIC) :])
    if plaintext.lstrip(_JSON_WHITESPACE).startswith(b"{"):
        return _decode_json(plaintext)
    raise InvalidArgument(
        f"unrecognised payload ({len(plaintext)} bytes): expected Kubernetes protobuf "
        "(magic 'k8s\\x00') or a JSON object"
    )


def encode_secret(
    *,
    name: str,
    namespace: str,
    data: Mapping[str, bytes],
    secret_type: str = "Opaque",  # noqa: S107 - a Secret's type, not a password
    uid: str | None = None,
    creation_timestamp: datetime | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    immutable: bool | None = None,
) -> bytes:
    """Build the protobuf payload kube-apiserver would store for a core/v1 Secret.

    The caller passes the creation time (the core reads no clock).
    Raises InvalidArgument if ``creation_timestamp`` is naive (has no time zone).
    """
    secret = core_pb2.Secret(type=secret_type)
    _fill_meta(secret.metadata, name, namespace, uid, creation_timestamp, labels, annotations)
    for key, value in data.items():
        secret.data[key] = value
    if immutable is not None:
        secret.immutable = immutable
    return _wrap("Secret", secret.SerializeToString(deterministic=True))


def encode_configmap(
    *,
    name: str,
    namespace: str,
    data: Mapping[str, str] | None = None,
    binary_data: Mapping[str, bytes] | None = None,
    uid: str | None = None,
    creation_timestamp: datetime | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    immutable: bool | None = None,
) -> bytes:
    """Build the protobuf payload kube-apiserver would store for a core/v1 ConfigMap.

    Raises InvalidArgument if ``creation_timestamp`` is naive (has no time zone).
    """
    configmap = core_pb2.ConfigMap()
    _fill_meta(configmap.metadata, name, namespace, uid, creation_timestamp, labels, annotations)
    for key, text in (data or {}).items():
        configmap.data[key] = text
    for key, blob in (binary_data or {}).items():
        configmap.binaryData[key] = blob
    if immutable is not None:
        configmap.immutable = immutable
    return _wrap("ConfigMap", configmap.SerializeToString(deterministic=True))


# --- decoding -------------------------------------------------------------------------


def _decode_json(plaintext: bytes) -> dict[str, object]:
    try:
        obj = json.loads(plaintext)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(
            f"payload starts like JSON but is not valid JSON ({len(plaintext)} bytes)"
        ) from exc
    if not isinstance(obj, dict):
        raise InvalidArgument("JSON payload is not an object")
    return obj


def _decode_protobuf(body: bytes) -> dict[str, object]:
    unknown = runtime_pb2.Unknown()
    _parse(unknown, body, "runtime.Unknown")
    if unknown.contentEncoding:
        raise InvalidArgument(
            f"unsupported runtime.Unknown contentEncoding {unknown.contentEncoding!r}"
        )
    api_version = unknown.typeMeta.apiVersion
    kind = unknown.typeMeta.kind
    if api_version != "v1" or kind not in ("Secret", "ConfigMap"):
        raise InvalidArgument(
            f"cannot decode kind {kind or '(empty)'!r} of apiVersion "
            f"{api_version or '(empty)'!r}: only v1 Secret and v1 ConfigMap are supported"
        )
    if kind == "Secret":
        secret = core_pb2.Secret()
        _parse(secret, unknown.raw, "core/v1 Secret")
        return _secret_json(secret)
    configmap = core_pb2.ConfigMap()
    _parse(configmap, unknown.raw, "core/v1 ConfigMap")
    return _configmap_json(configmap)


def _parse(message: Message, data: bytes, what: str) -> None:
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidArgument(f"malformed {what} protobuf ({len(data)} bytes)") from exc


def _secret_json(secret: core_pb2.Secret) -> dict[str, object]:
    out: dict[str, object] = {"kind": "Secret", "apiVersion": "v1"}
    out["metadata"] = _meta_json(secret.metadata)
    if secret.HasField("immutable"):
        out["immutable"] = secret.immutable
    if secret.data:
        out["data"] = {k: _b64(secret.data[k]) for k in sorted(secret.data)}
    if secret.stringData:
        out["stringData"] = {k: secret.stringData[k] for k in sorted(secret.stringData)}
    if secret.type:
        out["type"] = secret.type
    return out


def _configmap_json(configmap: core_pb2.ConfigMap) -> dict[str, object]:
    out: dict[str, object] = {"kind": "ConfigMap", "apiVersion": "v1"}
    out["metadata"] = _meta_json(configmap.metadata)
    if configmap.HasField("immutable"):
        out["immutable"] = configmap.immutable
    if configmap.data:
        out["data"] = {k: configmap.data[k] for k in sorted(configmap.data)}
    if configmap.binaryData:
        out["binaryData"] = {k: _b64(configmap.binaryData[k]) for k in sorted(configmap.binaryData)}
    return out


def _meta_json(meta: meta_pb2.ObjectMeta) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in ("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion"):
        text = getattr(meta, name)
        if text:
            out[name] = text
    if meta.generation:
        out["generation"] = meta.generation
    # Go marshals a zero metav1.Time as null and never omits the struct-valued field.
    out["creationTimestamp"] = (
        _time_json(meta.creationTimestamp, "creationTimestamp")
        if meta.HasField("creationTimestamp")
        else None
    )
    if meta.HasField("deletionTimestamp"):
        out["deletionTimestamp"] = _time_json(meta.deletionTimestamp, "deletionTimestamp")
    if meta.HasField("deletionGracePeriodSeconds"):
        out["deletionGracePeriodSeconds"] = meta.deletionGracePeriodSeconds
    if meta.labels:
        out["labels"] = {k: meta.labels[k] for k in sorted(meta.labels)}
    if meta.annotations:
        out["annotations"] = {k: meta.annotations[k] for k in sorted(meta.annotations)}
    if meta.ownerReferences:
        out["ownerReferences"] = [_owner_json(ref) for ref in meta.ownerReferences]
    if meta.finalizers:
        out["finalizers"] = list(meta.finalizers)
    if meta.managedFields:
        out["managedFields"] = [_managed_json(entry) for entry in meta.managedFields]
    return out


def _owner_json(ref: meta_pb2.OwnerReference) -> dict[str, object]:
    out: dict[str, object] = {
        "apiVersion": ref.apiVersion,
        "kind": ref.kind,
        "name": ref.name,
        "uid": ref.uid,
    }
    if ref.HasField("controller"):
        out["controller"] = ref.controller
    if ref.HasField("blockOwnerDeletion"):
        out["blockOwnerDeletion"] = ref.blockOwnerDeletion
    return out


def _managed_json(entry: meta_pb2.ManagedFieldsEntry) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in ("manager", "operation", "apiVersion"):
        text = getattr(entry, name)
        if text:
            out[name] = text
    if entry.HasField("time"):
        out["time"] = _time_json(entry.time, "managedFields.time")
    if entry.fieldsType:
        out["fieldsType"] = entry.fieldsType
    if entry.HasField("fieldsV1"):
        raw = entry.fieldsV1.Raw
        try:
            out["fieldsV1"] = json.loads(raw) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidArgument(
                f"managedFields.fieldsV1 is not valid JSON ({len(raw)} bytes)"
            ) from exc
    if entry.subresource:
        out["subresource"] = entry.subresource
    return out


def _time_json(stamp: meta_pb2.Time, field_name: str) -> str | None:
    # metav1.Time unmarshals an empty message to the zero time, which JSON renders as null.
    if stamp.ByteSize() == 0:
        return None
    try:
        moment = datetime.fromtimestamp(stamp.seconds, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise InvalidArgument(f"{field_name} is out of range") from exc
    if moment.year > 9999 or moment.year < 1:
        raise InvalidArgument(f"{field_name} is out of range")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- encoding -------------------------------------------------------------------------


def _fill_meta(
    meta: meta_pb2.ObjectMeta,
    name: str,
    namespace: str,
    uid: str | None,
    creation_timestamp: datetime | None,
    labels: Mapping[str, str] | None,
    annotations: Mapping[str, str] | None,
) -> None:
    # Upstream's generated marshaller writes fields 1-8 even when empty or zero; setting them
    # explicitly makes proto2 emit them too, so our bytes match kube-apiserver's.
    meta.name = name
    meta.generateName = ""
    meta.namespace = namespace
    meta.selfLink = ""
    meta.uid = uid or ""
    meta.resourceVersion = ""
    meta.generation = 0
    meta.creationTimestamp.SetInParent()
    if creation_timestamp is not None:
        if creation_timestamp.tzinfo is None:
            raise InvalidArgument("creation_timestamp must carry a time zone")
        # metav1.Time keeps whole seconds only.
        meta.creationTimestamp.seconds = int(creation_timestamp.timestamp())
        meta.creationTimestamp.nanos = 0
    for key, value in (labels or {}).items():
        meta.labels[key] = value
    for key, value in (annotations or {}).items():
        meta.annotations[key] = value


def _wrap(kind: str, raw: bytes) -> bytes:
    unknown = runtime_pb2.Unknown(
        typeMeta=runtime_pb2.TypeMeta(apiVersion="v1", kind=kind),
        raw=raw,
        contentEncoding="",
        contentType="",
    )
    return PROTOBUF_MAGIC + unknown.SerializeToString(deterministic=True)
