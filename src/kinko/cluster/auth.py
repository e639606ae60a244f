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
    TokenBook,
    TokenRecord,
    book_entries,
    dump_token,
    hash_token,
    load_token,
    token_path,
)
from kinko.keys.records import TOKENS
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
#: The fewest hex characters of a token's hash that may name it (``kinko token revoke --id``).
MIN_ID_CHARS: Final = 8
_ID_RE: Final = re.compile(rf"[0-9a-f]{{{MIN_ID_CHARS},64}}")
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
    """Cluster token records in the store: add, authenticate, list, revoke."""

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

    def list(self) -> tuple[ClusterTokenRecord, ...]:
        """Every cluster token record, in hash order, from one snapshot of the store.

        Raises CorruptMetadata (a record is malformed or stored under another hash), Conflict
        (the snapshot was compacted while paging), StoreUnavailable.
        """
        records = []
        for entry in book_entries(self._store, CLUSTER_TOKENS):
            record = load_cluster_token(entry.value)
            if cluster_token_path(record.token_hash) != entry.key:
                raise CorruptMetadata("stored cluster token record names another token")
            records.append(record)
        return tuple(records)

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


# --- both books ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BookedToken:
    """One token as the two books know it: its key service record, its cluster record, or
    both (the same hash). Never the token itself."""

    token_hash: str
    key: TokenRecord | None = None
    cluster: ClusterTokenRecord | None = None

    @property
    def token_id(self) -> str:
        """The first 12 hex characters of the hash, as audit records name the token."""
        return self.token_hash[:TOKEN_ID_CHARS]

    @property
    def name(self) -> str:
        """The key service record's name, else the cluster record's (equal when both were
        registered together)."""
        record = self.key if self.key is not None else self.cluster
        assert record is not None
        return record.name

    @property
    def books(self) -> str:
        """``both``, ``key`` (the key service's book only) or ``cluster`` (the cluster's only)."""
        if self.key is not None and self.cluster is not None:
            return "both"
        return "key" if self.key is not None else "cluster"

    @property
    def created(self) -> datetime:
        """The earlier creation time of the two records."""
        return min(r.created for r in (self.key, self.cluster) if r is not None)

    @property
    def expires(self) -> datetime | None:
        """The later expiry of the two records; None if either never expires."""
        ends = [r.expires for r in (self.key, self.cluster) if r is not None]
        return None if None in ends else max(e for e in ends if e is not None)


def list_tokens(store: Store) -> tuple[BookedToken, ...]:
    """Every token of both books, oldest first (then by hash).

    Raises CorruptMetadata, Conflict (a snapshot compacted while paging), StoreUnavailable.
    """
    keys = {r.token_hash: r for r in TokenBook(store).list()}
    clusters = {r.token_hash: r for r in ClusterTokenBook(store).list()}
    booked = [BookedToken(h, keys.get(h), clusters.get(h)) for h in keys.keys() | clusters.keys()]
    return tuple(sorted(booked, key=lambda b: (b.created, b.token_hash)))


def find_token(store: Store, id_prefix: str) -> str:
    """The hash of the one token, in either book, whose hash starts with ``id_prefix``.

    Raises InvalidArgument (fewer than :data:`MIN_ID_CHARS` or non-hex characters; a prefix
    that names more than one token), NotFound (no token has it), StoreUnavailable.
    """
    prefix = id_prefix.lower()
    if _ID_RE.fullmatch(prefix) is None:
        raise InvalidArgument(
            f"expected a token id of {MIN_ID_CHARS} to 64 hex characters, got {id_prefix!r}"
        )
    found: set[str] = set()
    for book in (TOKENS, CLUSTER_TOKENS):
        # Two entries per book are enough to tell one token from several.
        page = store.range(book + prefix.encode("ascii"), limit=2)
        found.update(e.key[len(book) :].decode("ascii", "replace") for e in page.entries)
    if not found:
        raise NotFound(f"no token with an id starting {prefix} in either token book")
    if len(found) > 1:
        raise InvalidArgument(
            f"the id {prefix} names more than one token; give more of its characters"
        )
    return found.pop()


def revocation(store: Store, token_hash: str) -> tuple[BookedToken, tuple[Op, ...]]:
    """The token's records and the guarded deletes that remove it from both books; put them in
    one transaction (with other ops if need be) so that it goes from both or from neither.

    Raises NotFound (in neither book), InvalidArgument (not a SHA-256 hex), CorruptMetadata,
    StoreUnavailable.
    """
    cluster_path = cluster_token_path(token_hash)
    key_path = token_path(token_hash)
    key_entry = store.get(key_path)
    cluster_entry = store.get(cluster_path)
    if key_entry is None and cluster_entry is None:
        raise NotFound("no token with that hash in either token book")
    ops: list[Op] = []
    key_record = cluster_record = None
    if key_entry is not None:
        key_record = load_token(key_entry.value)
        ops.append(Delete(key_path, key_entry.mod_revision))
    if cluster_entry is not None:
        cluster_record = load_cluster_token(cluster_entry.value)
        ops.append(Delete(cluster_path, cluster_entry.mod_revision))
    return BookedToken(token_hash, key_record, cluster_record), tuple(ops)


def revoke_token(store: Store, token_hash: str) -> BookedToken:
    """Removes the token from both books in one transaction; returns what was removed.

    Servers that cache authentications keep accepting the token until their cache entry ends.
    Raises NotFound (in neither book), InvalidArgument (not a SHA-256 hex), Conflict (a record
    changed meanwhile; nothing was removed), CorruptMetadata, StoreUnavailable.
    """
    booked, ops = revocation(store, token_hash)
    if not store.txn(ops).succeeded:
        raise Conflict("the token's records changed while it was revoked; nothing was removed")
    return booked
