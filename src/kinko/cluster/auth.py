"""Who may do what in the cluster API: bearer tokens, principals and the cluster role table.

Job: keep the cluster's token book (SHA-256 of each token under ``/kinko/cluster-tokens/<hex>``
with its role, namespaces, name and creation time), turn a presented token into a
:class:`ClusterPrincipal`, and decide whether that principal may apply a :class:`Verb` to
Secrets or ConfigMaps in a namespace (:func:`authorize`).

Roles:

- Administrator: every verb on every resource in every namespace, including the admin-only
  verbs (``force-delete`` of an object that cannot be read, ``admin``: encryption changes and
  the cluster's status);
- Editor: get, list, create, update, patch and delete Secrets and ConfigMaps in its namespaces;
- Viewer: get and list in its namespaces; a Secret is shown without ``data``, a ConfigMap whole.

An Editor or Viewer holds a set of namespaces, or all of them (stored as ``["*"]``). A list
across all namespaces (``/api/v1/secrets``) needs the all-namespace scope.

Tokens have the key service's format (:mod:`kinko.keys.auth`: ``kinko_`` + 43 URL-safe base64
characters) and the same hash, so one token string may be registered in both books (a token for
both the key service and the cluster); each book grants only what its own record says.

Invariants:

- The store holds only a token's hash, never the token; a store dump gives no credential.
- A Viewer never receives Secret data: :func:`authorize` answers ``include_data=False`` for
  every Viewer read of ``secrets``, and transports must honour it.
- Messages name roles, namespaces, verbs and resources; they never contain a token.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

from kinko.errors import (
    Conflict,
    CorruptMetadata,
    Forbidden,
    InvalidArgument,
    NotFound,
    Unauthorized,
)
from kinko.keys.auth import (
    _NAME_RE,  # One name rule for both books: a token may be registered in each.
    TOKEN_BYTES,
    TOKEN_ID_CHARS,
    TOKEN_PREFIX,
    TokenRecord,
    dump_token,
    hash_token,
    token_path,
)
from kinko.store.port import Delete, Op, Put, Store

CLUSTER_TOKENS: Final = b"/kinko/cluster-tokens/"
#: The namespaces entry that means every namespace.
ALL_NAMESPACES: Final = "*"
#: The resources the cluster API serves.
RESOURCES: Final = frozenset({"secrets", "configmaps"})

# Unpadded URL-safe base64 of TOKEN_BYTES bytes.
_TOKEN_RE: Final = re.compile(
    re.escape(TOKEN_PREFIX) + rf"[A-Za-z0-9_-]{{{(TOKEN_BYTES * 8 + 5) // 6}}}"
)
_HASH_RE: Final = re.compile(r"[0-9a-f]{64}")
_DNS1123_LABEL_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class ClusterRole(StrEnum):
    """The roles of a cluster token."""

    ADMINISTRATOR = "Administrator"
    EDITOR = "Editor"
    VIEWER = "Viewer"


class Verb(StrEnum):
    """What a request does to a resource (Kubernetes' verbs, plus kinko's admin-only ones)."""

    GET = "get"
    LIST = "list"
    CREATE = "create"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    #: Delete an object that cannot be decrypted (and so cannot be read first).
    FORCE_DELETE = "force-delete"
    #: Change the encryption configuration, read the cluster's status.
    ADMIN = "admin"


#: The one table: verb → the roles that allow it (in their namespaces).
ROLES_FOR: Final[Mapping[Verb, frozenset[ClusterRole]]] = {
    Verb.GET: frozenset(ClusterRole),
    Verb.LIST: frozenset(ClusterRole),
    Verb.CREATE: frozenset({ClusterRole.ADMINISTRATOR, ClusterRole.EDITOR}),
    Verb.UPDATE: frozenset({ClusterRole.ADMINISTRATOR, ClusterRole.EDITOR}),
    Verb.PATCH: frozenset({ClusterRole.ADMINISTRATOR, ClusterRole.EDITOR}),
    Verb.DELETE: frozenset({ClusterRole.ADMINISTRATOR, ClusterRole.EDITOR}),
    Verb.FORCE_DELETE: frozenset({ClusterRole.ADMINISTRATOR}),
    Verb.ADMIN: frozenset({ClusterRole.ADMINISTRATOR}),
}

# Verbs on one named object: they need a namespace.
_OBJECT_VERBS: Final = frozenset(
    {Verb.GET, Verb.CREATE, Verb.UPDATE, Verb.PATCH, Verb.DELETE, Verb.FORCE_DELETE}
)


@dataclass(frozen=True, slots=True)
class ClusterPrincipal:
    """An authenticated cluster caller.

    ``namespaces`` None means every namespace (always so for an Administrator). ``token_id`` is
    the first 12 hex characters of the token's SHA-256, for audit records.
    """

    name: str
    role: ClusterRole
    namespaces: frozenset[str] | None
    token_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterTokenRecord:
    """What the cluster's book keeps about a token: never the token, only its hash."""

    token_hash: str
    role: ClusterRole
    namespaces: frozenset[str] | None  # None: every namespace
    name: str
    created: datetime
    expires: datetime | None = None  # None: valid until revoked

    def principal(self) -> ClusterPrincipal:
        """The principal this token authenticates as."""
        return ClusterPrincipal(
            name=self.name,
            role=self.role,
            namespaces=self.namespaces,
            token_id=self.token_hash[:TOKEN_ID_CHARS],
        )


# --- authorisation -------------------------------------------------------------------------


def _scope(namespaces: frozenset[str] | None) -> str:
    if namespaces is None:
        return "all namespaces"
    return "namespaces " + ", ".join(sorted(namespaces))


def _needed(roles: frozenset[ClusterRole]) -> str:
    # Least privileged first: the smallest role that would do is named first.
    names = [r.value for r in reversed(ClusterRole) if r in roles]
    if len(names) == 1:
        return f"an {names[0]}" if names[0][0] in "AEIOU" else f"a {names[0]}"
    listed = ", ".join(names[:-1]) + " or " + names[-1]
    return f"an {listed}" if listed[0] in "AEIOU" else f"a {listed}"


def authorize(
    principal: ClusterPrincipal | None, verb: Verb, resource: str, namespace: str | None
) -> bool:
    """Raises unless ``principal`` may apply ``verb`` to ``resource`` in ``namespace``.

    ``resource`` is ``secrets`` or ``configmaps`` (``""`` is allowed for :attr:`Verb.ADMIN`
    only); ``namespace`` None means every namespace, which only LIST and ADMIN accept.

    Returns ``include_data``: False when the caller may see Secret metadata but not its
    ``data`` (a Viewer reading secrets), True otherwise.

    Raises Unauthorized (no principal), Forbidden (the role or the namespaces do not allow it;
    the message names the role and namespaces needed), InvalidArgument (an unknown resource, a
    missing namespace for a verb on one object).
    """
    if principal is None:
        raise Unauthorized("the request needs a cluster bearer token")
    if resource not in RESOURCES and not (verb is Verb.ADMIN and resource == ""):
        known = ", ".join(sorted(RESOURCES))
        raise InvalidArgument(f"expected a resource among {known}, got {resource!r}")
    if namespace is None and verb in _OBJECT_VERBS:
        raise InvalidArgument(f"{verb.value} {resource} needs a namespace")
    allowed = ROLES_FOR[verb]
    role_ok = principal.role in allowed
    scope_ok = principal.namespaces is None or (
        namespace is not None and namespace in principal.namespaces and verb is not Verb.ADMIN
    )
    if not (role_ok and scope_ok):
        who = f"{principal.role.value} token for {_scope(principal.namespaces)}"
        if verb is Verb.ADMIN:
            raise Forbidden(
                f"{who} may not change encryption or read cluster status: "
                f"needs {_needed(allowed)} token"
            )
        where = "across all namespaces" if namespace is None else f"in namespace {namespace}"
        target = "all namespaces" if namespace is None else f"namespace {namespace}"
        raise Forbidden(
            f"{who} may not {verb.value} {resource} {where}: "
            f"needs {_needed(allowed)} token for {target}"
        )
    return not (principal.role is ClusterRole.VIEWER and resource == "secrets")


# --- records -------------------------------------------------------------------------------


def _check_role(role: str) -> ClusterRole:
    try:
        return ClusterRole(role)
    except ValueError:
        known = ", ".join(r.value for r in ClusterRole)
        raise InvalidArgument(f"expected a cluster role among {known}, got {role!r}") from None


def _check_namespaces(role: ClusterRole, namespaces: Iterable[str] | None) -> frozenset[str] | None:
    given = [] if namespaces is None else list(namespaces)
    if role is ClusterRole.ADMINISTRATOR:
        if given:
            raise InvalidArgument(
                "expected no namespaces for an Administrator token (it holds every namespace)"
            )
        return None
    if not given:
        raise InvalidArgument(
            f"expected at least one namespace (or {ALL_NAMESPACES!r} for all) "
            f"for a {role.value} token"
        )
    if ALL_NAMESPACES in given:
        if any(ns != ALL_NAMESPACES for ns in given):
            raise InvalidArgument(
                f"expected {ALL_NAMESPACES!r} alone (all namespaces), got it with other namespaces"
            )
        return None
    for ns in given:
        if len(ns) > 63 or _DNS1123_LABEL_RE.fullmatch(ns) is None:
            raise InvalidArgument(
                f"expected a namespace of at most 63 lowercase letters, digits or '-', starting "
                f"and ending with a letter or digit, got {ns!r}"
            )
    return frozenset(given)


def _check_name(name: str) -> str:
    if _NAME_RE.fullmatch(name) is None:
        raise InvalidArgument(
            "expected a token name of 1 to 128 letters, digits or '@._:+-' (no spaces)"
        )
    return name


def _check_hash(token_hash: str) -> str:
    if _HASH_RE.fullmatch(token_hash) is None:
        raise InvalidArgument("expected a token hash of 64 lowercase hex digits")
    return token_hash


def _record(
    token_hash: str,
    role: str,
    namespaces: Iterable[str] | None,
    name: str,
    created: datetime,
    expires: datetime | None,
) -> ClusterTokenRecord:
    """A checked record; shared by issuing (which also checks ``expires`` against now) and
    loading (where an expired record is legitimate)."""
    checked_role = _check_role(role)
    if created.tzinfo is None or (expires is not None and expires.tzinfo is None):
        raise InvalidArgument("expected token times with a time zone")
    return ClusterTokenRecord(
        token_hash=_check_hash(token_hash),
        role=checked_role,
        namespaces=_check_namespaces(checked_role, namespaces),
        name=_check_name(name),
        created=created.astimezone(UTC),
        expires=None if expires is None else expires.astimezone(UTC),
    )


def cluster_token_record(
    *,
    token_hash: str,
    role: str,
    namespaces: Iterable[str] | None,
    name: str,
    now: datetime,
    expires: datetime | None = None,
) -> ClusterTokenRecord:
    """The cluster record of a token whose hash is ``token_hash``, created at ``now``.

    ``namespaces``: none for an Administrator; for an Editor or Viewer DNS-1123 labels, or
    ``"*"`` alone for every namespace. Use this to register a token already issued for the key
    service (same hash, same name).

    Raises InvalidArgument (an unknown role, namespaces given to an Administrator or missing for
    an Editor or Viewer, a bad namespace, name or hash, a naive ``now``, an expiry that is naive
    or not after ``now``).
    """
    if now.tzinfo is None:
        raise InvalidArgument("expected the current time with a time zone")
    if expires is not None and (expires.tzinfo is None or expires <= now):
        raise InvalidArgument("expected a token expiry with a time zone, later than now")
    return _record(token_hash, role, namespaces, name, now, expires)


def issue_cluster_token(
    *,
    rng: Callable[[int], bytes],
    role: str,
    namespaces: Iterable[str] | None,
    now: datetime,
    name: str | None = None,
    expires: datetime | None = None,
) -> tuple[str, ClusterTokenRecord]:
    """A new token (shown once) and its cluster record; pure given ``rng`` and ``now``.

    The token has the key service's format. ``name`` defaults to ``token-<id>``. Raises
    InvalidArgument (as :func:`cluster_token_record`; ``rng`` giving the wrong length).
    """
    secret = rng(TOKEN_BYTES)
    if len(secret) != TOKEN_BYTES:
        raise InvalidArgument(f"expected {TOKEN_BYTES} random bytes for a token")
    token = TOKEN_PREFIX + base64.urlsafe_b64encode(secret).decode("ascii").rstrip("=")
    digest = hash_token(token)
    record = cluster_token_record(
        token_hash=digest,
        role=role,
        namespaces=namespaces,
        name=f"token-{digest[:TOKEN_ID_CHARS]}" if name is None else name,
        now=now,
        expires=expires,
    )
    return token, record


# --- the token book ------------------------------------------------------------------------


def cluster_token_path(token_hash: str) -> bytes:
    """Where a token's cluster record lives. Raises InvalidArgument (not a SHA-256 hex)."""
    return CLUSTER_TOKENS + _check_hash(token_hash).encode("ascii")


def dump_cluster_token(record: ClusterTokenRecord) -> bytes:
    """The stored form of a cluster token record: canonical JSON, version 1."""
    namespaces = [ALL_NAMESPACES] if record.namespaces is None else sorted(record.namespaces)
    doc: dict[str, object] = {
        "v": 1,
        "tokenHash": record.token_hash,
        "role": record.role.value,
        "namespaces": namespaces,
        "name": record.name,
        "created": record.created.isoformat(),
    }
    if record.expires is not None:
        doc["expires"] = record.expires.isoformat()
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def load_cluster_token(data: bytes) -> ClusterTokenRecord:
    """A cluster token record from its stored form. Raises CorruptMetadata."""
    try:
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise ValueError
        role, namespaces, name, token_hash = (
            doc["role"],
            doc["namespaces"],
            doc["name"],
            doc["tokenHash"],
        )
        if not (isinstance(role, str) and isinstance(name, str) and isinstance(token_hash, str)):
            raise ValueError
        if not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces):
            raise ValueError
        # An Administrator's scope is stored as ["*"] too; it takes no namespaces when checked.
        if role == ClusterRole.ADMINISTRATOR.value:
            if namespaces != [ALL_NAMESPACES]:
                raise ValueError
            namespaces = []
        created = datetime.fromisoformat(doc["created"])
        expires = None if doc.get("expires") is None else datetime.fromisoformat(doc["expires"])
        return _record(token_hash, role, namespaces, name, created, expires)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, InvalidArgument):
        raise CorruptMetadata("stored cluster token record is malformed") from None


class ClusterTokenBook:
    """Cluster token records in the store: add, authenticate, revoke."""

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        self._store = store

    def add(self, record: ClusterTokenRecord, *, key_token: TokenRecord | None = None) -> None:
        """Stores a new cluster token record.

        With ``key_token`` (the key service's record of the same token), both records are
        written in one transaction: the token is registered in both books or in neither.

        Raises Conflict (the hash is in use in either book), InvalidArgument (``key_token`` of
        another hash), StoreUnavailable.
        """
        ops: list[Op] = [Put(cluster_token_path(record.token_hash), dump_cluster_token(record), 0)]
        if key_token is not None:
            if key_token.token_hash != record.token_hash:
                raise InvalidArgument("expected the key service record of the same token")
            ops.append(Put(token_path(key_token.token_hash), dump_token(key_token), 0))
        result = self._store.txn(ops)
        if not result.succeeded:
            raise Conflict("a token with this hash exists already")

    def authenticate(self, token: str | None, *, now: datetime) -> ClusterPrincipal:
        """The principal of a presented bearer token at time ``now``.

        Raises Unauthorized (missing, malformed, unknown, revoked or expired token),
        CorruptMetadata, StoreUnavailable. The message never repeats the token.
        """
        if not token or _TOKEN_RE.fullmatch(token) is None:
            raise Unauthorized("missing or malformed bearer token")
        digest = hash_token(token)
        entry = self._store.get(cluster_token_path(digest))
        if entry is None:
            raise Unauthorized("unknown or revoked bearer token")
        record = load_cluster_token(entry.value)
        if record.token_hash != digest:
            raise CorruptMetadata("stored cluster token record names another token")
        if record.expires is not None and now >= record.expires:
            raise Unauthorized("expired bearer token")
        return record.principal()

    def revoke(self, token_hash: str) -> None:
        """Deletes a cluster token record.

        Raises NotFound, InvalidArgument (not a SHA-256 hex), Conflict (the record changed
        meanwhile), StoreUnavailable.
        """
        path = cluster_token_path(token_hash)
        entry = self._store.get(path)
        if entry is None:
            raise NotFound("no cluster token with that hash")
        if not self._store.txn([Delete(path, entry.mod_revision)]).succeeded:
            raise Conflict("the cluster token record changed while it was revoked")
