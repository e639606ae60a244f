"""JSON Patch (RFC 6902) over decoded JSON, with JSON Pointers (RFC 6901).

Job: :func:`apply_json_patch` applies a list of operations (``add``, ``remove``, ``replace``,
``move``, ``copy``, ``test``) to a document, the way kube-apiserver applies an
``application/json-patch+json`` PATCH to an object's JSON before it validates and stores it.

:func:`json_patch_update` is the PATCH use case built on it and on
:class:`~kinko.cluster.service.ClusterService`: read the object, patch its JSON, replace it
guarded by the resource version that was read.

Invariants:

- :func:`apply_json_patch` is pure: no I/O, and neither the document nor the operations
  are modified; the result is a new document. A patch applies whole or not at all (an error
  leaves nothing half-done, because nothing outside the private copy was touched).
- Every failure is an :class:`~kinko.errors.InvalidArgument` whose message names the
  operation's index, its ``op`` and its pointer; it never quotes a ``value`` (a Secret's data
  may be in it), only the JSON type of what was found.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Final

from kinko.cluster.resources import ConfigMap, Secret, to_json
from kinko.cluster.service import ClusterService
from kinko.errors import InvalidArgument

__all__ = ["OPS", "apply_json_patch", "json_equal", "json_patch_update", "parse_pointer"]

#: The operations RFC 6902 defines.
OPS: Final = ("add", "remove", "replace", "move", "copy", "test")

_NEEDS_VALUE: Final = frozenset({"add", "replace", "test"})
_NEEDS_FROM: Final = frozenset({"move", "copy"})


class _PatchError(Exception):
    """A failure inside one operation; the caller names the operation."""


def parse_pointer(pointer: str) -> tuple[str, ...]:
    """The reference tokens of a JSON Pointer (``""`` is the whole document: none).

    ``~1`` stands for ``/`` and ``~0`` for ``~``, decoded in that order (RFC 6901 §4).

    Raises InvalidArgument (the pointer does not start with ``/``, or has a ``~`` that is not
    ``~0`` or ``~1``).
    """
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise InvalidArgument(f"expected a JSON pointer starting with '/', got {pointer!r}")
    parts = []
    for raw in pointer[1:].split("/"):
        rest = raw.replace("~0", "").replace("~1", "")
        if "~" in rest:
            raise InvalidArgument(f"expected '~' only as '~0' or '~1' in JSON pointer {pointer!r}")
        parts.append(raw.replace("~1", "/").replace("~0", "~"))
    return tuple(parts)


def json_equal(a: object, b: object) -> bool:
    """JSON equality (RFC 6902 §4.6): numbers by value, ``true`` is not ``1``, objects by
    members regardless of order, arrays element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        return False
    return a == b


def apply_json_patch(doc: object, ops: object) -> object:
    """``doc`` with the JSON Patch ``ops`` applied, in order (neither argument is modified).

    Operation members other than ``op``, ``path``, ``from`` and ``value`` are ignored, as
    RFC 6902 §4 requires.

    Raises InvalidArgument: ``ops`` is not an array of objects; an operation has an unknown
    ``op``, lacks ``path``, ``from`` or ``value``, or has a malformed pointer; its target (or
    its ``from``) does not exist where it must, or its parent is not a container; an array
    index is not a number within bounds; a ``move`` into its own child; a ``test`` that
    fails. The message names the operation's index.
    """
    if not isinstance(ops, list):
        raise InvalidArgument("expected a JSON patch: an array of operation objects")
    try:
        result = copy.deepcopy(doc)
        for index, op in enumerate(ops):
            result = _apply_one(result, op, index)
    except RecursionError:
        # json.loads accepts nesting deeper than deepcopy can copy.
        raise InvalidArgument("json patch: a value is nested too deeply") from None
    return result


def _apply_one(doc: object, op: object, index: int) -> object:
    if not isinstance(op, dict):
        raise InvalidArgument(f"json patch operation {index}: expected an object")
    name = op.get("op")
    if name not in OPS:
        shown = repr(name)[:40] if isinstance(name, str) else "none"
        raise InvalidArgument(
            f"json patch operation {index}: unknown op {shown}; expected one of {', '.join(OPS)}"
        )
    path_text = op.get("path")
    if not isinstance(path_text, str):
        raise InvalidArgument(f"json patch operation {index} ({name}): missing string 'path'")
    where = f"json patch operation {index} ({name} {path_text!r})"
    if name in _NEEDS_VALUE and "value" not in op:
        raise InvalidArgument(f"{where}: missing 'value'")
    from_text = op.get("from")
    if name in _NEEDS_FROM and not isinstance(from_text, str):
        raise InvalidArgument(f"{where}: missing string 'from'")
    try:
        path = parse_pointer(path_text)
        match name:
            case "add":
                return _add(doc, path, copy.deepcopy(op["value"]))
            case "remove":
                return _remove(doc, path)[0]
            case "replace":
                if not path:
                    return copy.deepcopy(op["value"])
                _get(doc, path)
                doc = _remove(doc, path)[0]
                return _add(doc, path, copy.deepcopy(op["value"]))
            case "test":
                if not json_equal(_get(doc, path), op["value"]):
                    raise _PatchError("test failed: the value at the path is not the one given")
                return doc
            case _:
                assert isinstance(from_text, str)
                source = parse_pointer(from_text)
                if name == "move":
                    if path[: len(source)] == source and len(path) > len(source):
                        raise _PatchError(f"cannot move {from_text!r} into one of its own children")
                    doc, value = _remove(doc, source)
                else:
                    value = copy.deepcopy(_get(doc, source))
                return _add(doc, path, value)
    except (_PatchError, InvalidArgument) as exc:
        raise InvalidArgument(f"{where}: {exc}") from None


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _array_index(parts: Sequence[str], at: int, array: list[object], *, end_ok: bool) -> int:
    part = parts[at]
    if end_ok and part == "-":
        return len(array)
    if (
        not part.isdigit()
        or not part.isascii()
        or (len(part) > 1 and part[0] == "0")
        or len(part) > 18  # no array is that long, and int() refuses huge digit strings
    ):
        raise _PatchError(f"expected an array index at {_pointer(parts[: at + 1])!r}")
    position = int(part)
    limit = len(array) if end_ok else len(array) - 1
    if position > limit:
        raise _PatchError(
            f"array index {position} at {_pointer(parts[: at + 1])!r} is out of bounds "
            f"(the array has {len(array)} elements)"
        )
    return position


def _pointer(parts: Sequence[str]) -> str:
    return "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in parts)


def _get(doc: object, path: Sequence[str]) -> object:
    node = doc
    for at, part in enumerate(path):
        if isinstance(node, dict):
            if part not in node:
                raise _PatchError(f"no member {_pointer(path[: at + 1])!r}")
            node = node[part]
        elif isinstance(node, list):
            node = node[_array_index(path, at, node, end_ok=False)]
        else:
            raise _PatchError(
                f"{_pointer(path[:at]) or 'the document'!r} is {_describe(node)}, not a container"
            )
    return node


def _parent(doc: object, path: Sequence[str]) -> object:
    parent = _get(doc, path[:-1])
    if not isinstance(parent, dict | list):
        where = _pointer(path[:-1]) or "the document"
        raise _PatchError(f"{where!r} is {_describe(parent)}, not an object or array")
    return parent


def _add(doc: object, path: Sequence[str], value: object) -> object:
    if not path:
        return value
    parent = _parent(doc, path)
    if isinstance(parent, dict):
        parent[path[-1]] = value
    else:
        assert isinstance(parent, list)
        parent.insert(_array_index(path, len(path) - 1, parent, end_ok=True), value)
    return doc


def _remove(doc: object, path: Sequence[str]) -> tuple[object, object]:
    if not path:
        raise _PatchError("cannot remove the whole document")
    parent = _parent(doc, path)
    if isinstance(parent, dict):
        if path[-1] not in parent:
            raise _PatchError(f"no member {_pointer(path)!r}")
        return doc, parent.pop(path[-1])
    assert isinstance(parent, list)
    return doc, parent.pop(_array_index(path, len(path) - 1, parent, end_ok=False))


def json_patch_update(
    service: ClusterService, resource: str, namespace: str, name: str, ops: object
) -> Secret | ConfigMap:
    """Apply the JSON Patch ``ops`` to ``namespace/name`` (an ``application/json-patch+json``
    PATCH) and store the result.

    The patch applies to the object's Kubernetes JSON as read, and the result is written with
    :meth:`ClusterService.replace` carrying the ``metadata.resourceVersion`` that was read
    (restored if the patch removed it), so an object changed in between yields Conflict and no
    change is lost. A patch that sets another ``resourceVersion`` asserts that one, as in
    Kubernetes.

    Raises InvalidArgument (a malformed patch or a failed ``test``, naming the operation),
    Invalid (the patched object breaks a rule, or renames the object), NotFound, Conflict,
    UnreadableValue, PluginError, StoreUnavailable.
    """
    current = service.get(resource, namespace, name)
    doc = apply_json_patch(to_json(current), ops)
    if isinstance(doc, dict):
        meta = doc.get("metadata")
        if isinstance(meta, dict) and not meta.get("resourceVersion"):
            meta["resourceVersion"] = current.metadata.resource_version
    return service.replace(resource, namespace, name, doc)
