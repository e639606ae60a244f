"""The cluster store's use cases: Secrets and ConfigMaps as kube-apiserver serves them.

Job: :class:`ClusterService` turns requests (create, get, list, replace, merge-patch, delete)
into validated objects stored encrypted through :class:`~kinko.cluster.encryption.
EncryptedObjects`. It knows Kubernetes' storage rules, not HTTP: the REST layer parses the
request, checks the caller's role, calls one method and renders the result or the error.

Stored form: the object's Kubernetes JSON (``to_json``) without ``resourceVersion``, sealed
with the storage key ``/registry/<resource>/<namespace>/<name>`` as AAD. The resource version
is the store's ``mod_revision`` (etcd's), filled in on every read, so it is never stale in
the stored bytes — kube-apiserver does the same.

Invariants:

- **Every write is guarded.** Create is create-if-absent (``AlreadyExists`` when taken);
  replace, patch and delete are compare-and-swap on the revision the change was computed from,
  so a concurrent writer gets ``Conflict`` and nothing is overwritten unseen. A request that
  names a ``resourceVersion`` must match the stored one (``Conflict`` otherwise); one that
  does not is applied to the current version, as Kubernetes allows for these kinds.
- **Bad input changes nothing.** Parsing and validation (``Invalid`` with field causes) run
  before any write.
- **A list pages one snapshot.** Pages after the first read at the first page's revision;
  the continue token carries that revision and the last key, signed by this service (a caller
  cannot pick a revision and read history), and is refused unless it points inside the listed
  prefix (a token cannot widen a namespace-scoped list). An unreadable
  value — no provider opens it, or it opens to no valid object — is reported by name and
  never breaks the list.
- Messages name resources, namespaces, names and revisions; never data.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Literal, Protocol

from kinko.cluster.encryption import ChainSource, EncryptedObjects, ReadValue
from kinko.cluster.resources import (
    ConfigMap,
    Secret,
    parse_configmap,
    parse_secret,
    storage_key,
    to_json,
    validate_configmap,
    validate_namespace,
    validate_secret,
)
from kinko.errors import (
    AlreadyExists,
    Conflict,
    DeletionRefused,
    FieldCause,
    Gone,
    Invalid,
    InvalidArgument,
    NotFound,
    UnreadableValue,
)
from kinko.store.port import Store

__all__ = [
    "RESOURCES",
    "ClusterService",
    "LabelMatcher",
    "ObjectList",
    "Resource",
    "UnreadableObject",
]

Resource = Literal["secrets", "configmaps"]
RESOURCES: Final[tuple[Resource, ...]] = ("secrets", "configmaps")
KINDS: Final[Mapping[str, str]] = {"secrets": "Secret", "configmaps": "ConfigMap"}

#: Rows read from the store per page while filling a LIST.
PAGE_ROWS: Final = 500
#: Largest ``limit`` a LIST honours; a larger one is capped and the continue token carries on.
MAX_LIMIT: Final = 10_000

Obj = Secret | ConfigMap

log = logging.getLogger(__name__)

#: Why a value that opened is still unreadable.
NOT_AN_OBJECT: Final = (
    "it decrypts to something that is not a valid object (a wrong aescbc key, or a foreign writer)"
)

_CONFLICT_MESSAGE: Final = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


class LabelMatcher(Protocol):
    """A parsed label selector (``kinko.cluster.selector.Selector``)."""

    def matches(self, labels: Mapping[str, str]) -> bool: ...


@dataclass(frozen=True, slots=True)
class UnreadableObject:
    """A stored object that cannot be decrypted now: where it is and why (never its bytes)."""

    namespace: str
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class ObjectList:
    """One LIST answer: the readable objects, the unreadable ones, and the paging state.

    ``continue_token`` is empty on the last page; ``resource_version`` is the snapshot read.
    """

    items: tuple[Obj, ...]
    unreadable: tuple[UnreadableObject, ...]
    resource_version: str
    continue_token: str = ""


class ClusterService:
    """Secrets and ConfigMaps over an encrypted store. Thread-safe (no mutable state)."""

    def __init__(
        self,
        store: Store,
        source: ChainSource,
        *,
        clock: Callable[[], datetime],
        new_uid: Callable[[], str] = lambda: str(uuid.uuid4()),
        continue_key: bytes | None = None,
    ) -> None:
        self._objects = EncryptedObjects(store, source)
        self._clock = clock
        self._new_uid = new_uid
        # Signs continue tokens. A fresh one per service (per process) by default: a token from
        # before a restart is then refused as expired, as one past a compaction is.
        self._continue_key = continue_key if continue_key is not None else os.urandom(32)

    @property
    def objects(self) -> EncryptedObjects:
        """The byte layer (for migration and tools)."""
        return self._objects

    # ------------------------------------------------------------------------------ reads

    def get(self, resource: str, namespace: str, name: str) -> Obj:
        """The object ``namespace/name``.

        Raises NotFound, Invalid (bad names), UnreadableValue (it cannot be decrypted, or
        decrypts to no valid object: the message names the key and why), PluginError,
        StoreUnavailable.
        """
        res = _resource(resource)
        key = storage_key(res, namespace, name)
        try:
            value = self._objects.read(res, key)
        except NotFound:
            raise NotFound(f'{res} "{name}" not found') from None
        return _decode(res, value, key)

    def list(
        self,
        resource: str,
        namespace: str | None,
        *,
        selector: LabelMatcher | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> ObjectList:
        """Objects of ``resource`` in ``namespace`` (None: every namespace), in name order.

        ``limit`` bounds the items returned (unreadable objects met on the way are reported
        besides); the answer's ``continue_token`` resumes after them at the same snapshot.
        Raises InvalidArgument (bad limit or continue token), Invalid (bad namespace), Gone
        (the continue token's snapshot was compacted: list again), PluginError,
        StoreUnavailable.
        """
        res = _resource(resource)
        if namespace is not None:
            validate_namespace(namespace)
        prefix = f"/registry/{res}/".encode() + (
            f"{namespace}/".encode() if namespace is not None else b""
        )
        if limit is not None and limit < 1:
            raise InvalidArgument(f"expected a positive limit, got {limit}")
        want = None if limit is None else min(limit, MAX_LIMIT)
        revision, start = (
            (0, b"")
            if not continue_token
            else _parse_continue(continue_token, prefix, self._continue_key)
        )
        items: list[Obj] = []
        unreadable: list[UnreadableObject] = []
        while True:
            rows = PAGE_ROWS if want is None else max(1, min(PAGE_ROWS, want - len(items)))
            try:
                page = self._objects.scan(
                    res, prefix, limit=rows, start_after=start, revision=revision
                )
            except Conflict:
                raise Gone(
                    "the continue token's snapshot is too old (compacted); list again without it"
                ) from None
            revision = page.revision
            # Each object is decoded as soon as its value is opened (the scan opens a few at
            # a time), while its plaintext is still in the CPU's cache.
            for item in page:
                try:
                    obj = _decode(res, item.value, item.key)
                except UnreadableValue as exc:
                    namespace_of, name_of = _names(item.key)
                    unreadable.append(UnreadableObject(namespace_of, name_of, exc.reason))
                    continue
                if selector is None or selector.matches(obj.metadata.labels):
                    items.append(obj)
            for key in page.unreadable:
                namespace_of, name_of = _names(key)
                unreadable.append(
                    UnreadableObject(namespace_of, name_of, UnreadableValue.NOT_OPENED)
                )
            start = max(page.last_key, page.unreadable[-1] if page.unreadable else b"")
            if not page.more:
                return ObjectList(tuple(items), tuple(unreadable), str(revision))
            if want is not None and len(items) >= want:
                token = _make_continue(revision, start, self._continue_key)
                return ObjectList(tuple(items), tuple(unreadable), str(revision), token)

    # ------------------------------------------------------------------------------ writes

    def create(self, resource: str, namespace: str, body: object) -> Obj:
        """Store a new object from its Kubernetes JSON ``body``.

        Raises Invalid (shape or rule; ``metadata.resourceVersion`` set), AlreadyExists,
        PluginError (the KMS plugin cannot serve a write: 503), StoreUnavailable.
        """
        res = _resource(resource)
        parsed = _parse(res, body, namespace)
        if parsed.metadata.resource_version:
            raise Invalid(
                [
                    FieldCause(
                        "metadata.resourceVersion",
                        "FieldValueForbidden",
                        "resourceVersion should not be set on objects to be created",
                    )
                ],
                kind=KINDS[res],
                name=parsed.metadata.name,
            )
        now = self._clock()
        meta = replace(
            parsed.metadata,
            uid=self._new_uid(),
            creation_timestamp=now.replace(microsecond=0),
            resource_version="",
        )
        obj = replace(parsed, metadata=meta)
        _validate(obj, old=None)
        key = storage_key(res, meta.namespace, meta.name)
        try:
            revision = self._objects.write(res, key, _encode(obj), expect=0)
        except Conflict:
            raise AlreadyExists(f'{res} "{meta.name}" already exists') from None
        return _with_version(obj, revision)

    def replace(self, resource: str, namespace: str, name: str, body: object) -> Obj:
        """Replace ``namespace/name`` with ``body`` (PUT).

        ``uid`` and ``creationTimestamp`` are kept from the stored object. Raises Invalid (the
        body's name differs from ``name``; shape or rule; a change to an immutable object),
        NotFound, Conflict (``metadata.resourceVersion`` is not the stored one, or the object
        changed meanwhile), UnreadableValue (the stored object cannot be decrypted),
        PluginError, StoreUnavailable.
        """
        res = _resource(resource)
        parsed = _parse(res, body, namespace)
        _same_name(res, parsed, name)
        current = self.get(res, namespace, name)
        return self._update(res, parsed, current)

    def patch(self, resource: str, namespace: str, name: str, patch: object) -> Obj:
        """Apply a JSON merge patch (RFC 7386) to ``namespace/name``.

        Raises InvalidArgument (the patch is not a JSON object), Invalid (the patched object
        breaks a rule, or the patch changes the name or namespace), NotFound, Conflict (the
        patch names a stale ``metadata.resourceVersion``, or the object changed meanwhile),
        UnreadableValue, PluginError, StoreUnavailable.
        """
        res = _resource(resource)
        if not isinstance(patch, dict):
            raise InvalidArgument("expected a JSON merge patch object")
        current = self.get(res, namespace, name)
        doc = merge_patch(to_json(current), patch)
        parsed = _parse(res, doc, namespace)
        _same_name(res, parsed, name)
        return self._update(res, parsed, current)

    def delete(
        self,
        resource: str,
        namespace: str,
        name: str,
        *,
        resource_version: str | None = None,
        uid: str | None = None,
    ) -> Obj:
        """Delete ``namespace/name`` and return it as it was.

        ``resource_version`` / ``uid``: DeleteOptions preconditions. Raises NotFound, Conflict
        (a precondition failed, or it changed meanwhile), UnreadableValue (use
        :meth:`delete_unreadable`), PluginError, StoreUnavailable.
        """
        res = _resource(resource)
        current = self.get(res, namespace, name)
        meta = current.metadata
        if resource_version and resource_version != meta.resource_version:
            raise Conflict(
                f'Precondition failed: resourceVersion {resource_version!r} of {res} "{name}"'
                f" is not the stored {meta.resource_version!r}"
            )
        if uid and uid != meta.uid:
            raise Conflict(f'Precondition failed: uid of {res} "{name}" does not match')
        key = storage_key(res, namespace, name)
        try:
            self._objects.delete(key, expect=int(meta.resource_version))
        except Conflict:
            raise Conflict(
                f"Operation cannot be fulfilled on {res} {name!r}: {_CONFLICT_MESSAGE}"
            ) from None
        return current

    def delete_unreadable(self, resource: str, namespace: str, name: str) -> int:
        """Delete ``namespace/name`` only if it cannot be decrypted now; returns the revision.

        Unreadable means no provider opens it, or what it opens to is no valid object (an
        aescbc value read with a wrong key passes the padding check once in 256 tries). The
        caller must have checked that an administrator asked for it explicitly. Raises
        NotFound, DeletionRefused (it is readable: delete it normally), PluginError (its plugin
        is down, so readability is unknown), Conflict, StoreUnavailable.
        """
        res = _resource(resource)
        key = storage_key(res, namespace, name)
        try:
            value = self._objects.read(res, key)
        except NotFound:
            raise NotFound(f'{res} "{name}" not found') from None
        except UnreadableValue:
            return self._objects.force_delete_unreadable(key, resource=res)
        try:
            _decode(res, value, key)
        except UnreadableValue as exc:
            log.warning("force-deleting unreadable %s: %s", key.decode(), exc.reason)
            return self._objects.delete(key, expect=value.mod_revision)
        raise DeletionRefused(
            f'{res} "{name}" decrypts with the current configuration; expected an unreadable '
            "object for a forced delete, delete it normally"
        )

    # ------------------------------------------------------------------------------ inside

    def _update(self, res: Resource, parsed: Obj, current: Obj) -> Obj:
        old = current.metadata
        wanted = parsed.metadata.resource_version
        if wanted and wanted != old.resource_version:
            raise Conflict(
                f"Operation cannot be fulfilled on {res} {old.name!r}: {_CONFLICT_MESSAGE}"
            )
        meta = replace(
            parsed.metadata,
            uid=old.uid,
            creation_timestamp=old.creation_timestamp,
            resource_version="",
        )
        obj = replace(parsed, metadata=meta)
        _validate(obj, old=current)
        key = storage_key(res, meta.namespace, meta.name)
        try:
            revision = self._objects.write(res, key, _encode(obj), expect=int(old.resource_version))
        except Conflict:
            raise Conflict(
                f"Operation cannot be fulfilled on {res} {old.name!r}: {_CONFLICT_MESSAGE}"
            ) from None
        return _with_version(obj, revision)


# ---------------------------------------------------------------------------------- helpers


def merge_patch(target: object, patch: object) -> object:
    """RFC 7386 JSON merge patch: ``patch`` applied to ``target`` (neither is modified)."""
    if not isinstance(patch, dict):
        return patch
    out: dict[str, object] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _resource(resource: str) -> Resource:
    if resource == "secrets":
        return "secrets"
    if resource == "configmaps":
        return "configmaps"
    raise NotFound(f"the server could not find the requested resource {resource!r}")


def _parse(res: Resource, body: object, namespace: str) -> Obj:
    if res == "secrets":
        return parse_secret(body, namespace=namespace)
    return parse_configmap(body, namespace=namespace)


def _validate(obj: Obj, *, old: Obj | None) -> None:
    if isinstance(obj, Secret):
        validate_secret(obj, old=old if isinstance(old, Secret) else None)
    else:
        validate_configmap(obj, old=old if isinstance(old, ConfigMap) else None)


def _same_name(res: Resource, parsed: Obj, name: str) -> None:
    if parsed.metadata.name != name:
        raise Invalid(
            [
                FieldCause(
                    "metadata.name",
                    "FieldValueInvalid",
                    f"Invalid value: {parsed.metadata.name!r}: the name of the object does not "
                    f"match the name on the URL ({name!r})",
                )
            ],
            kind=KINDS[res],
            name=name,
        )


def _encode(obj: Obj) -> bytes:
    return json.dumps(to_json(obj), separators=(",", ":"), ensure_ascii=False).encode()


def _decode(res: Resource, value: ReadValue, key: bytes) -> Obj:
    try:
        doc = json.loads(value.plaintext)
        obj = _parse(res, doc, doc["metadata"]["namespace"])
    except (ValueError, TypeError, KeyError, InvalidArgument):
        # The value opened but is no valid object: an aescbc value read with a wrong key (CBC
        # is unauthenticated; PKCS#7 padding passes by chance once in 256 tries), or a writer
        # other than kinko. Either way it cannot be read; nothing of the bytes is quoted.
        raise UnreadableValue(key, NOT_AN_OBJECT) from None
    return _with_version(obj, value.mod_revision)


def _with_version(obj: Obj, revision: int) -> Obj:
    return replace(obj, metadata=replace(obj.metadata, resource_version=str(revision)))


def _names(key: bytes) -> tuple[str, str]:
    parts = key.decode("utf-8", errors="backslashreplace").split("/")
    # /registry/<resource>/<namespace>/<name>
    return (parts[3], "/".join(parts[4:])) if len(parts) >= 5 else ("", parts[-1])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _make_continue(revision: int, last_key: bytes, key: bytes) -> str:
    doc = {"v": 1, "rv": revision, "start": last_key.decode("utf-8", errors="surrogateescape")}
    raw = json.dumps(doc, separators=(",", ":")).encode("utf-8", errors="surrogateescape")
    return f"{_b64(raw)}.{_b64(hmac.digest(key, raw, 'sha256'))}"


def _parse_continue(token: str, prefix: bytes, key: bytes) -> tuple[int, bytes]:
    """The snapshot revision and last key of a continue token this service issued.

    The token is signed (HMAC-SHA256): a caller cannot choose the revision it reads at, which
    would otherwise page through any history the store still keeps (deleted Secrets included).
    """
    body, dot, tag = token.partition(".")
    try:
        raw, mac = _unb64(body), _unb64(tag)
    except (binascii.Error, ValueError):
        raise InvalidArgument("the continue token is malformed; list again without it") from None
    if not dot or not hmac.compare_digest(mac, hmac.digest(key, raw, "sha256")):
        raise Gone("the continue token is not valid (any more); list again without it")
    try:
        doc = json.loads(raw.decode("utf-8", errors="surrogateescape"))
        revision = doc["rv"]
        start = str(doc["start"]).encode("utf-8", errors="surrogateescape")
        if doc.get("v") != 1 or type(revision) is not int or revision < 1:
            raise ValueError
    except (ValueError, TypeError, KeyError, AttributeError):
        raise InvalidArgument("the continue token is malformed; list again without it") from None
    if not start.startswith(prefix):
        raise InvalidArgument(
            "the continue token belongs to another list (another resource or namespace)"
        )
    return revision, start
