"""The wire of the cluster API: bodies, media types, query parameters, discovery documents.

Job: the pure translation between HTTP and :class:`~kinko.cluster.service.ClusterService`
arguments, as kube-apiserver does it for core/v1 Secrets and ConfigMaps:

- request bodies read with a size cap (:func:`read_body`) and decoded by ``Content-Type``:
  JSON or YAML objects for POST and PUT (:func:`decode_object`), the four patch types of
  PATCH (:func:`decode_patch`), DeleteOptions for DELETE (:func:`decode_delete_options`);
- LIST query parameters (:class:`ListQuery`): ``labelSelector``, ``fieldSelector``,
  ``limit``, ``continue``; ``watch`` is refused;
- the discovery documents (``/api``, ``/api/v1``, ``/apis``, ``/version``) and the list
  answer (:func:`list_doc`).

Invariants: pure but for :func:`read_body`; every refusal is an
:class:`~kinko.errors.InvalidArgument` (or one of :mod:`kinko.api.k8s_http`'s 413/415 kinds)
whose message names the parameter, the media type or the position of a syntax error, never a
byte of the body.
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import yaml
from starlette.requests import Request

from kinko.api.k8s_http import FORCE_OPTION, BodyTooLarge, UnsupportedMediaType
from kinko.cluster.resources import Secret, to_json
from kinko.cluster.selector import Selector, parse_selector
from kinko.cluster.service import KINDS, Obj, ObjectList, UnreadableObject
from kinko.errors import InvalidArgument

MEDIA_JSON: Final = "application/json"
MEDIA_YAML: Final = "application/yaml"
MEDIA_MERGE_PATCH: Final = "application/merge-patch+json"
MEDIA_STRATEGIC_PATCH: Final = "application/strategic-merge-patch+json"
MEDIA_JSON_PATCH: Final = "application/json-patch+json"
MEDIA_APPLY_PATCH: Final = "application/apply-patch+yaml"

#: The Kubernetes version kinko's API corresponds to (what clients see in ``/version``).
KUBERNETES_VERSION: Final = (1, 31, 0)
#: How many unreadable objects the ``X-Kinko-Unreadable-Names`` header names at most.
UNREADABLE_NAMES_IN_HEADER: Final = 50
UNREADABLE_HEADER: Final = "X-Kinko-Unreadable"
UNREADABLE_NAMES_HEADER: Final = "X-Kinko-Unreadable-Names"


# --- bodies ----------------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` header, lowercase, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, max_body: int) -> bytes:
    """The request body, refused as soon as it is known to exceed ``max_body`` bytes.

    A declared ``Content-Length`` over the cap is refused before a byte is read; a body that
    grows past it while streaming is refused at the chunk that crosses it, so at most one chunk
    beyond the cap is ever held. Raises BodyTooLarge.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body:
        raise _too_large(max_body)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body:
            raise _too_large(max_body)
    return bytes(body)


def _too_large(max_body: int) -> BodyTooLarge:
    return BodyTooLarge(f"the request body is larger than the limit of {max_body} bytes")


def _reject_constant(name: str) -> object:
    # Python's json accepts NaN and Infinity; JSON (and Kubernetes) do not.
    raise ValueError(f"{name} is not JSON")


def _json(body: bytes) -> object:
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise InvalidArgument("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError):
        raise InvalidArgument("the request body is not valid JSON") from None


class _YamlLoader(yaml.SafeLoader):
    """YAML as Kubernetes reads it: timestamps stay strings (sigs.k8s.io/yaml converts YAML to
    JSON, which has no timestamp type)."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml(body: bytes) -> object:
    try:
        return yaml.load(body.decode("utf-8"), Loader=_YamlLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise InvalidArgument("the request body is not UTF-8 text") from None
    except yaml.MarkedYAMLError as exc:
        # The error's own text quotes the input around the mark: only the position is kept.
        mark = exc.problem_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise InvalidArgument(f"the request body is not valid YAML{where}") from None
    except (yaml.YAMLError, RecursionError):
        raise InvalidArgument("the request body is not valid YAML") from None


def decode_object(body: bytes, content_type: str | None) -> object:
    """The object of a POST or PUT body: JSON (also when no type is given) or YAML.

    Raises UnsupportedMediaType (another media type), InvalidArgument (empty, or not valid
    JSON or YAML).
    """
    kind = check_object_media_type(content_type)
    if not body.strip():
        raise InvalidArgument("expected an object in the request body, got an empty body")
    return _yaml(body) if kind == MEDIA_YAML else _json(body)


def with_type_meta(body: object, resource: str) -> object:
    """``body`` with a missing or empty ``apiVersion`` and ``kind`` taken from the endpoint.

    kube-apiserver's decoder does the same: a POST to ``/api/v1/namespaces/x/secrets`` of an
    object without them is a v1 Secret (clients such as the ``kubernetes`` Python package send
    models without them). A ``kind`` or ``apiVersion`` that is given is left for the service
    to check.
    """
    if not isinstance(body, dict):
        return body
    out = dict(body)
    if out.get("apiVersion") in (None, ""):
        out["apiVersion"] = "v1"
    if out.get("kind") in (None, ""):
        out["kind"] = KINDS[resource]
    return out


def check_object_media_type(content_type: str | None) -> str:
    """The media type of a POST or PUT body, checked before it is read.

    As in kube-apiserver, no ``Content-Type`` means JSON. Raises UnsupportedMediaType.
    """
    kind = media_type(content_type) or MEDIA_JSON
    if kind in (MEDIA_JSON, MEDIA_YAML):
        return kind
    raise UnsupportedMediaType(
        f"the body's media type {kind!r} is not supported: expected {MEDIA_JSON} or {MEDIA_YAML}"
    )


class PatchKind(StrEnum):
    """The patch types kinko applies."""

    MERGE = MEDIA_MERGE_PATCH
    STRATEGIC = MEDIA_STRATEGIC_PATCH
    JSON = MEDIA_JSON_PATCH


def check_patch_media_type(content_type: str | None) -> PatchKind:
    """The patch type of a PATCH, checked before the body is read.

    Raises UnsupportedMediaType (server-side apply, or a type that is no patch type).
    """
    kind = media_type(content_type)
    if kind == MEDIA_APPLY_PATCH:
        raise UnsupportedMediaType(
            f"server-side apply ({MEDIA_APPLY_PATCH}) is not supported: use a "
            f"{MEDIA_STRATEGIC_PATCH}, {MEDIA_MERGE_PATCH} or {MEDIA_JSON_PATCH} PATCH "
            "(kubectl apply without --server-side)"
        )
    try:
        return PatchKind(kind)
    except ValueError:
        shown = kind or "none"
        raise UnsupportedMediaType(
            f"the patch media type {shown!r} is not supported: expected "
            f"{MEDIA_STRATEGIC_PATCH}, {MEDIA_MERGE_PATCH} or {MEDIA_JSON_PATCH}"
        ) from None


def decode_patch(body: bytes, kind: PatchKind) -> object:
    """The patch document of a PATCH body of type ``kind``.

    A strategic merge patch of a Secret or ConfigMap equals a JSON merge patch: their fields
    are maps and scalars, and strategic merge differs from merge only for lists (merge keys,
    ordering) and through ``$``-directives. So kinko takes such a patch as a merge patch and
    refuses any directive key (``$patch``, ``$retainKeys``, ``$setElementOrder/…``,
    ``$deleteFromPrimitiveList/…``): none of them has a meaning that kinko implements, and no
    key of ``data``, ``labels`` or ``annotations`` may start with ``$``.

    Raises InvalidArgument (empty, not JSON, a merge patch that is no object, a JSON patch
    that is no array, a strategic directive).
    """
    if not body.strip():
        raise InvalidArgument("expected a patch in the request body, got an empty body")
    doc = _json(body)
    if kind is PatchKind.JSON:
        if not isinstance(doc, list):
            raise InvalidArgument(
                f"expected a {MEDIA_JSON_PATCH} body: an array of operation objects"
            )
        return doc
    if not isinstance(doc, dict):
        raise InvalidArgument(f"expected a {kind.value} body: a JSON object")
    if kind is PatchKind.STRATEGIC:
        directive = _directive(doc, "")
        if directive is not None:
            raise InvalidArgument(
                f"strategic merge patch directive {directive!r} is not supported: a Secret or "
                f"ConfigMap has no lists, so send the change as a plain {MEDIA_MERGE_PATCH} "
                "(null deletes a key)"
            )
    return doc


def _directive(doc: object, path: str) -> str | None:
    if isinstance(doc, dict):
        for key, value in doc.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and key.startswith("$"):
                return where
            found = _directive(value, where)
            if found is not None:
                return found
    elif isinstance(doc, list):
        for index, item in enumerate(doc):
            found = _directive(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


@dataclass(frozen=True, slots=True)
class DeleteOptions:
    """What kinko honours of a DELETE's ``DeleteOptions``: the preconditions and the forced
    delete of an unreadable object. Other fields (grace period, propagation) are ignored: a
    Secret or ConfigMap has no dependents kinko tracks and is deleted at once."""

    resource_version: str | None = None
    uid: str | None = None
    ignore_store_read_error: bool = False


def decode_delete_options(body: bytes, content_type: str | None) -> DeleteOptions:
    """The DeleteOptions of a DELETE body (an empty body: none).

    Raises UnsupportedMediaType (a body that is neither JSON nor YAML), InvalidArgument (not
    an object; ``preconditions`` or its fields, or the force option, of the wrong type).
    """
    if not body.strip():
        return DeleteOptions()
    kind = check_object_media_type(content_type)
    doc = _yaml(body) if kind == MEDIA_YAML else _json(body)
    if not isinstance(doc, dict):
        raise InvalidArgument("expected DeleteOptions (a JSON object) in the DELETE body")
    pre = doc.get("preconditions")
    if pre is None:
        pre = {}
    if not isinstance(pre, dict):
        raise InvalidArgument("expected DeleteOptions.preconditions to be an object")
    found: dict[str, str | None] = {}
    for field in ("resourceVersion", "uid"):
        value = pre.get(field)
        if value is not None and not isinstance(value, str):
            raise InvalidArgument(f"expected DeleteOptions.preconditions.{field} to be a string")
        found[field] = value or None
    force = doc.get(FORCE_OPTION)
    if force is not None and not isinstance(force, bool):
        raise InvalidArgument(f"expected DeleteOptions.{FORCE_OPTION} to be a boolean")
    return DeleteOptions(found["resourceVersion"], found["uid"], bool(force))


def parse_bool(name: str, value: str | None) -> bool:
    """A boolean query parameter as Go's ``strconv.ParseBool`` reads it (absent: false).

    Raises InvalidArgument.
    """
    if value is None or value == "":
        return False
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise InvalidArgument(f"expected true or false for the query parameter {name}")


# --- LIST ------------------------------------------------------------------------------------

_FIELD_TERM_RE: Final = re.compile(r"([^=!]+)(==|!=|=)(.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class FieldTerm:
    """One term of a field selector: ``field`` equals (or not) ``value``."""

    field: str
    value: str
    equal: bool


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """A ``fieldSelector``: the AND of its terms (none: everything)."""

    terms: tuple[FieldTerm, ...] = ()

    def matches(self, fields: Mapping[str, str]) -> bool:
        """Whether an object with these field values is selected; a term on a field that is
        not given (unknown for this object) does not rule it out."""
        return all(
            t.field not in fields or (fields[t.field] == t.value) is t.equal for t in self.terms
        )


def _fields_for(resource: str) -> tuple[str, ...]:
    # Kubernetes' field selectors of core/v1: every kind has metadata.name and
    # metadata.namespace; a Secret also has type.
    common = ("metadata.name", "metadata.namespace")
    return (*common, "type") if resource == "secrets" else common


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, escaped = [], "", False
    for ch in text:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            current += ch
            escaped = True
        elif ch == sep:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def parse_field_selector(text: str, resource: str) -> FieldSelector:
    """A ``fieldSelector`` of ``resource``: terms ``field=value``, ``field==value`` or
    ``field!=value`` joined by commas; values may escape ``\\``, ``,`` and ``=`` with ``\\``.

    Raises InvalidArgument (a malformed term, or a field Kubernetes does not index for this
    kind: ``metadata.name``, ``metadata.namespace`` and, for Secrets, ``type``).
    """
    if not text.strip():
        return FieldSelector()
    known = _fields_for(resource)
    terms: list[FieldTerm] = []
    for raw in _split_unescaped(text, ","):
        match = _FIELD_TERM_RE.fullmatch(raw.strip())
        if match is None:
            raise InvalidArgument(
                "invalid field selector: expected terms field=value, field==value or "
                "field!=value separated by commas"
            )
        field, operator, value = match.group(1).strip(), match.group(2), match.group(3)
        if field not in known:
            raise InvalidArgument(
                f"field label not supported: {field[:64]!r} (supported: {', '.join(known)})"
            )
        unescaped = re.sub(r"\\(.)", r"\1", value)
        terms.append(FieldTerm(field, unescaped, operator != "!="))
    return FieldSelector(tuple(terms))


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The LIST query parameters kinko honours.

    ``resourceVersion``, ``resourceVersionMatch``, ``timeoutSeconds``, ``pretty`` and
    ``allowWatchBookmarks`` are accepted and ignored: every list reads the current state.
    """

    labels: Selector | None = None
    fields: FieldSelector = FieldSelector()
    limit: int | None = None
    continue_token: str | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str], resource: str) -> ListQuery:
        """Reads the query of a LIST of ``resource``.

        Raises InvalidArgument (``watch``: kinko serves no watch; a bad label or field
        selector; a ``limit`` that is not a non-negative integer).
        """
        if parse_bool("watch", query.get("watch")):
            raise InvalidArgument(
                "watch is not supported: kinko serves no watch (list again to see changes)"
            )
        label_text = query.get("labelSelector")
        labels = parse_selector(label_text) if label_text else None
        limit_text = query.get("limit")
        limit: int | None = None
        if limit_text:
            # At most 18 digits: int() refuses very long digit strings (a 500, not a 400).
            if not limit_text.isdigit() or not limit_text.isascii() or len(limit_text) > 18:
                raise InvalidArgument(
                    "expected a non-negative integer for the query parameter limit"
                )
            # As in Kubernetes, a limit of 0 means no limit.
            limit = int(limit_text) or None
        return cls(
            labels=None if labels is None or labels.empty else labels,
            fields=parse_field_selector(query.get("fieldSelector", ""), resource),
            limit=limit,
            continue_token=query.get("continue") or None,
        )


#: kubectl's client-side apply keeps the whole applied object, ``data`` included, here.
LAST_APPLIED: Final = "kubectl.kubernetes.io/last-applied-configuration"


def render(obj: Obj, *, include_data: bool) -> dict[str, object]:
    """The Kubernetes JSON of ``obj`` as the caller may see it.

    Without ``include_data`` (a Viewer reading a Secret) ``data`` is left out, and so is the
    annotation :data:`LAST_APPLIED`, which ``kubectl apply`` fills with a copy of the object,
    its data included.
    """
    doc = to_json(obj, include_data=include_data)
    meta = doc["metadata"]
    if not include_data and isinstance(meta, dict):
        annotations = meta.get("annotations")
        if isinstance(annotations, dict) and LAST_APPLIED in annotations:
            kept = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
            if kept:
                meta["annotations"] = kept
            else:
                del meta["annotations"]
    return doc


def _fields_of(obj: Obj) -> dict[str, str]:
    fields = {"metadata.name": obj.metadata.name, "metadata.namespace": obj.metadata.namespace}
    if isinstance(obj, Secret):
        fields["type"] = obj.type
    return fields


def list_doc(
    resource: str, page: ObjectList, fields: FieldSelector, *, include_data: bool
) -> tuple[dict[str, object], tuple[UnreadableObject, ...]]:
    """A ``SecretList`` / ``ConfigMapList`` of ``page``'s items that ``fields`` selects, and
    the unreadable objects it may select (also reported in the document's ``unreadable``).

    An unreadable object's type is unknown, so a ``type`` term never leaves one out.
    """
    chosen = [
        render(obj, include_data=include_data)
        for obj in page.items
        if fields.matches(_fields_of(obj))
    ]
    unreadable = tuple(
        u
        for u in page.unreadable
        if fields.matches({"metadata.name": u.name, "metadata.namespace": u.namespace})
    )
    meta: dict[str, object] = {"resourceVersion": page.resource_version}
    if page.continue_token:
        meta["continue"] = page.continue_token
    doc: dict[str, object] = {
        "kind": f"{KINDS[resource]}List",
        "apiVersion": "v1",
        "metadata": meta,
        "items": chosen,
    }
    if unreadable:
        doc["unreadable"] = {
            "count": len(unreadable),
            "items": [
                {"namespace": u.namespace, "name": u.name, "reason": u.reason} for u in unreadable
            ],
        }
    return doc, unreadable


def unreadable_headers(unreadable: Sequence[UnreadableObject]) -> dict[str, str]:
    """``X-Kinko-Unreadable: N`` (always) and the first names as ``ns/name,…``."""
    headers = {UNREADABLE_HEADER: str(len(unreadable))}
    if unreadable:
        headers[UNREADABLE_NAMES_HEADER] = ",".join(
            f"{u.namespace}/{u.name}" for u in unreadable[:UNREADABLE_NAMES_IN_HEADER]
        )
    return headers


# --- discovery -------------------------------------------------------------------------------

_VERBS: Final = ["create", "delete", "get", "list", "patch", "update"]


def api_versions(server_address: str) -> dict[str, object]:
    """``GET /api``: the core group's versions."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def api_resources() -> dict[str, object]:
    """``GET /api/v1``: the resources kinko serves (no watch, no deletecollection)."""
    return {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {
                "name": "configmaps",
                "singularName": "configmap",
                "namespaced": True,
                "kind": "ConfigMap",
                "verbs": list(_VERBS),
                "shortNames": ["cm"],
            },
            {
                "name": "secrets",
                "singularName": "secret",
                "namespaced": True,
                "kind": "Secret",
                "verbs": list(_VERBS),
            },
        ],
    }


def api_groups() -> dict[str, object]:
    """``GET /apis``: no API groups besides the core one."""
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}


_ARCH: Final = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def version_info(version: str) -> dict[str, object]:
    """``GET /version``: Kubernetes' version.Info, with kinko's version as build metadata."""
    major, minor, patch = KUBERNETES_VERSION
    build = re.sub(r"[^0-9A-Za-z.-]", "-", version) or "unknown"
    machine = platform.machine().lower()
    return {
        "major": str(major),
        "minor": str(minor),
        "gitVersion": f"v{major}.{minor}.{patch}+kinko.{build}",
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "n/a",
        "compiler": "n/a",
        "platform": f"{platform.system().lower()}/{_ARCH.get(machine, machine)}",
    }
