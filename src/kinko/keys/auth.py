"""Who may do what in the key service: bearer tokens, principals and Key Protect's role table.

Job: issue bearer tokens (``kinko_`` + 32 random bytes, URL-safe base64), keep only their
SHA-256 in the store (``/kinko/tokens/<hex>``) with the instance, roles, service flag, name and
creation time, turn a presented token into a :class:`Principal`, and decide whether that
principal may perform an :class:`Action` on an instance (:func:`authorize`).

Roles follow Key Protect (reference §1 note [4]; ``concepts/manage-access.md``):

- Reader: key metadata, list keys and versions, wrap/unwrap/rewrap, list key rings and
  registrations;
- ReaderPlus: adds reading a standard key's payload;
- Writer: adds create/import, rotate, set/unset for deletion, aliases, key ring creation,
  import tokens;
- Manager: adds disable/enable, delete, restore, patch (move to a ring), key ring deletion,
  key and instance policies;
- KeyPurge: purge, and only that (granted explicitly, never implied by Manager);
- service identities (``service`` tokens): create, update, replace and delete registrations,
  which nobody else may (403 ``SERVICE_ONLY_ERR``); they need a role as well (any of Reader
  to Manager), as in Key Protect.

Invariants:

- A token is shown once, when issued; the store holds only its hash, so a store dump gives
  no usable credential. Lookups are by hash; the token itself is never logged or stored.
- A principal acts on its own instance only: a token for another instance is 401
  ``UNAUTHORIZED_ERR``, exactly like no token (instances are tenants, and nothing tells a
  caller that another instance exists). A known instance but a missing role is 403.
- The user identity for dual authorization and ``createdBy`` fields is the token's ``name``:
  issue one name per person.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
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
from kinko.keys.model import check_instance
from kinko.keys.records import TOKENS
from kinko.store.port import Delete, Entry, Put, Store

TOKEN_PREFIX: Final = "kinko_"  # noqa: S105 (a prefix, not a secret)
TOKEN_BYTES: Final = 32
#: Characters of the token hash that name a token in audit records and principals.
TOKEN_ID_CHARS: Final = 12
_TOKEN_RE: Final = re.compile(r"kinko_[A-Za-z0-9_-]{43}")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9@._:+-]{1,128}")
# Records read per store page when a book is listed.
_PAGE: Final = 500


class Role(StrEnum):
    """Key Protect's service access roles (KmipAdapterManager is not part of kinko)."""

    READER = "Reader"
    READER_PLUS = "ReaderPlus"
    WRITER = "Writer"
    MANAGER = "Manager"
    KEY_PURGE = "KeyPurge"


class Action(StrEnum):
    """Every action of the key service, named as Key Protect's activity tracking names it."""

    KEY_CREATE = "kms.secrets.create"
    KEY_READ = "kms.secrets.read"
    KEY_READ_METADATA = "kms.secrets.readmetadata"
    KEY_LIST = "kms.secrets.list"
    KEY_LIST_VERSIONS = "kms.secrets.listkeyversions"
    WRAP = "kms.secrets.wrap"
    UNWRAP = "kms.secrets.unwrap"
    REWRAP = "kms.secrets.rewrap"
    ROTATE = "kms.secrets.rotate"
    DISABLE = "kms.secrets.disable"
    ENABLE = "kms.secrets.enable"
    SET_FOR_DELETION = "kms.secrets.setkeyfordeletion"
    UNSET_FOR_DELETION = "kms.secrets.unsetkeyfordeletion"
    DELETE = "kms.secrets.delete"
    RESTORE = "kms.secrets.restore"
    PURGE = "kms.secrets.purge"
    EXPIRE = "kms.secrets.expire"
    SYNC = "kms.secrets.sync"
    PATCH = "kms.secrets.patch"
    ALIAS_CREATE = "kms.secrets.createalias"
    ALIAS_DELETE = "kms.secrets.deletealias"
    POLICY_READ = "kms.policies.read"
    POLICY_WRITE = "kms.policies.write"
    INSTANCE_POLICY_READ = "kms.instancepolicies.read"
    INSTANCE_POLICY_WRITE = "kms.instancepolicies.write"
    IMPORT_TOKEN_CREATE = "kms.importtoken.create"  # noqa: S105 (an action name)
    IMPORT_TOKEN_READ = "kms.importtoken.read"  # noqa: S105 (an action name)
    REGISTRATION_LIST = "kms.registrations.list"
    REGISTRATION_CREATE = "kms.registrations.create"
    REGISTRATION_UPDATE = "kms.registrations.update"
    REGISTRATION_REPLACE = "kms.registrations.replace"
    REGISTRATION_DELETE = "kms.registrations.delete"
    KEY_RING_CREATE = "kms.keyrings.create"
    KEY_RING_LIST = "kms.keyrings.list"
    KEY_RING_DELETE = "kms.keyrings.delete"


_READERS: Final = frozenset({Role.READER, Role.READER_PLUS, Role.WRITER, Role.MANAGER})
_PAYLOAD_READERS: Final = frozenset({Role.READER_PLUS, Role.WRITER, Role.MANAGER})
_WRITERS: Final = frozenset({Role.WRITER, Role.MANAGER})
_MANAGERS: Final = frozenset({Role.MANAGER})

#: The one table: action → the roles that allow it (any one suffices).
ROLES_FOR: Final[Mapping[Action, frozenset[Role]]] = {
    Action.KEY_CREATE: _WRITERS,
    Action.KEY_READ: _PAYLOAD_READERS,
    Action.KEY_READ_METADATA: _READERS,
    Action.KEY_LIST: _READERS,
    Action.KEY_LIST_VERSIONS: _READERS,
    Action.WRAP: _READERS,
    Action.UNWRAP: _READERS,
    Action.REWRAP: _READERS,
    Action.ROTATE: _WRITERS,
    Action.DISABLE: _MANAGERS,
    Action.ENABLE: _MANAGERS,
    Action.SET_FOR_DELETION: _WRITERS,
    Action.UNSET_FOR_DELETION: _WRITERS,
    Action.DELETE: _MANAGERS,
    Action.RESTORE: _MANAGERS,
    Action.PURGE: frozenset({Role.KEY_PURGE}),
    Action.EXPIRE: frozenset(),
    Action.SYNC: _WRITERS,
    Action.PATCH: _MANAGERS,
    Action.ALIAS_CREATE: _WRITERS,
    Action.ALIAS_DELETE: _WRITERS,
    Action.POLICY_READ: _MANAGERS,
    Action.POLICY_WRITE: _MANAGERS,
    Action.INSTANCE_POLICY_READ: _MANAGERS,
    Action.INSTANCE_POLICY_WRITE: _MANAGERS,
    Action.IMPORT_TOKEN_CREATE: _WRITERS,
    Action.IMPORT_TOKEN_READ: _WRITERS,
    Action.REGISTRATION_LIST: _READERS,
    Action.REGISTRATION_CREATE: _READERS,
    Action.REGISTRATION_UPDATE: _READERS,
    Action.REGISTRATION_REPLACE: _READERS,
    Action.REGISTRATION_DELETE: _READERS,
    Action.KEY_RING_CREATE: _WRITERS,
    Action.KEY_RING_LIST: _READERS,
    Action.KEY_RING_DELETE: _MANAGERS,
}

#: Actions only service identities may perform (on top of the roles above).
SERVICE_ONLY: Final = frozenset(
    {
        Action.REGISTRATION_CREATE,
        Action.REGISTRATION_UPDATE,
        Action.REGISTRATION_REPLACE,
        Action.REGISTRATION_DELETE,
    }
)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the token's name, instance, roles and service flag.

    ``token_id`` is the first 12 hex characters of the token's SHA-256: enough to tell tokens
    apart in the audit log, useless to an attacker.
    """

    name: str
    instance: str
    roles: frozenset[Role]
    service: bool = False
    token_id: str | None = None


#: The principal of the service's own scheduled work (rotation policy, expiry, 90-day purge).
SYSTEM: Final = Principal(name="kinko-scheduler", instance="*", roles=frozenset())


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the store keeps about a token: never the token, only its hash."""

    token_hash: str
    instance: str
    roles: frozenset[Role]
    service: bool
    name: str
    created: datetime
    expires: datetime | None = None  # None: valid until revoked

    def principal(self) -> Principal:
        """The principal this token authenticates as."""
        return Principal(
            name=self.name,
            instance=self.instance,
            roles=self.roles,
            service=self.service,
            token_id=self.token_hash[:TOKEN_ID_CHARS],
        )


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly issued token (shown once) and the record stored for it."""

    token: str = field(repr=False)
    record: TokenRecord


def hash_token(token: str) -> str:
    """The lowercase hex SHA-256 of the token's UTF-8 bytes (how the store names it)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_roles(roles: Iterable[str]) -> frozenset[Role]:
    """The roles named, as :class:`Role`; raises InvalidArgument for an unknown or no role."""
    out: set[Role] = set()
    for name in roles:
        try:
            out.add(Role(name))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise InvalidArgument(f"expected a role among {known}, got {name!r}") from None
    if not out:
        raise InvalidArgument("expected at least one role")
    return frozenset(out)


def issue_token(
    *,
    rng: Callable[[int], bytes],
    instance: str,
    roles: Iterable[str],
    now: datetime,
    service: bool = False,
    name: str | None = None,
    expires: datetime | None = None,
) -> IssuedToken:
    """A new token for ``instance`` with ``roles``; pure given ``rng`` and ``now``.

    ``name`` defaults to ``token-<id>``; ``expires`` (aware) ends the token's validity.
    Raises InvalidArgument (instance, roles, name, an expiry that is naive or not after now).
    """
    check_instance(instance)
    if expires is not None and (expires.tzinfo is None or expires <= now):
        raise InvalidArgument("expected a token expiry with a time zone, later than now")
    checked = check_roles(roles)
    secret = rng(TOKEN_BYTES)
    if len(secret) != TOKEN_BYTES:
        raise InvalidArgument(f"expected {TOKEN_BYTES} random bytes for a token")
    token = TOKEN_PREFIX + base64.urlsafe_b64encode(secret).decode("ascii").rstrip("=")
    digest = hash_token(token)
    if name is None:
        name = f"token-{digest[:TOKEN_ID_CHARS]}"
    if _NAME_RE.fullmatch(name) is None:
        raise InvalidArgument(
            "expected a token name of 1 to 128 letters, digits or '@._:+-' (no spaces)"
        )
    record = TokenRecord(
        token_hash=digest,
        instance=instance,
        roles=checked,
        service=service,
        name=name,
        created=now.astimezone(UTC),
        expires=None if expires is None else expires.astimezone(UTC),
    )
    return IssuedToken(token=token, record=record)


def authorize(principal: Principal | None, action: Action, instance: str) -> None:
    """Raises unless ``principal`` may perform ``action`` on ``instance``.

    Raises Unauthorized (401 ``UNAUTHORIZED_ERR``: no principal, or one of another instance),
    Forbidden (403: a missing role ``FORBIDDEN_ERR``; a registration write by a non-service
    principal ``SERVICE_ONLY_ERR``).
    """
    if principal is None or principal.instance != instance:
        raise Unauthorized("the token does not grant access to this instance")
    if action in SERVICE_ONLY and not principal.service:
        raise Forbidden(
            "registrations are created, changed and deleted by service identities only",
            reason_code="SERVICE_ONLY_ERR",
        )
    allowed = ROLES_FOR[action]
    if not principal.roles & allowed:
        needed = " or ".join(sorted(r.value for r in allowed)) or "no role (internal action)"
        raise Forbidden(f"{action.value} needs the role {needed}")


# --- the token book ------------------------------------------------------------------------


def token_path(token_hash: str) -> bytes:
    """Where a token's record lives."""
    return TOKENS + token_hash.encode("ascii")


def dump_token(record: TokenRecord) -> bytes:
    """The stored form of a token record."""
    doc = {
        "v": 1,
        "tokenHash": record.token_hash,
        "instance": record.instance,
        "roles": sorted(r.value for r in record.roles),
        "service": record.service,
        "name": record.name,
        "created": record.created.isoformat(),
    }
    if record.expires is not None:
        doc["expires"] = record.expires.isoformat()
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def load_token(data: bytes) -> TokenRecord:
    """A token record from its stored form. Raises CorruptMetadata."""
    try:
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise ValueError
        roles = doc["roles"]
        if not isinstance(roles, list):
            raise ValueError
        created = datetime.fromisoformat(doc["created"])
        if created.tzinfo is None:
            raise ValueError
        expires = None if doc.get("expires") is None else datetime.fromisoformat(doc["expires"])
        if expires is not None and expires.tzinfo is None:
            raise ValueError
        record = TokenRecord(
            token_hash=str(doc["tokenHash"]),
            instance=str(doc["instance"]),
            roles=frozenset(Role(r) for r in roles),
            service=bool(doc["service"]),
            name=str(doc["name"]),
            created=created.astimezone(UTC),
            expires=None if expires is None else expires.astimezone(UTC),
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise CorruptMetadata("stored token record is malformed") from None
    return record


def book_entries(store: Store, prefix: bytes) -> Iterator[Entry]:
    """Every entry under ``prefix``, page by page from one snapshot of the store.

    Raises Conflict (the snapshot was compacted while paging), StoreUnavailable.
    """
    start, revision = b"", 0
    while True:
        page = store.range(prefix, start_after=start, limit=_PAGE, revision=revision)
        yield from page.entries
        if not page.more or not page.entries:
            return
        start, revision = page.entries[-1].key, page.revision


class TokenBook:
    """Token records in the store: add, authenticate, list, revoke."""

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        self._store = store

    def add(self, record: TokenRecord) -> None:
        """Stores a new token record. Raises Conflict (hash in use), StoreUnavailable."""
        result = self._store.txn([Put(token_path(record.token_hash), dump_token(record), 0)])
        if not result.succeeded:
            raise Conflict("a token with this hash exists already")

    def authenticate(self, token: str | None, *, now: datetime) -> Principal:
        """The principal of a presented bearer token at time ``now``.

        Raises Unauthorized (missing, malformed, unknown or expired token), CorruptMetadata,
        StoreUnavailable. The message never repeats the token.
        """
        if not token or _TOKEN_RE.fullmatch(token) is None:
            raise Unauthorized("missing or malformed bearer token")
        entry = self._store.get(token_path(hash_token(token)))
        if entry is None:
            raise Unauthorized("unknown or revoked bearer token")
        record = load_token(entry.value)
        if record.expires is not None and now >= record.expires:
            raise Unauthorized("expired bearer token")
        return record.principal()

    def list(self) -> tuple[TokenRecord, ...]:
        """Every token record, in hash order, from one snapshot of the store.

        Raises CorruptMetadata (a record is malformed or stored under another hash), Conflict
        (the snapshot was compacted while paging), StoreUnavailable.
        """
        records = []
        for entry in book_entries(self._store, TOKENS):
            record = load_token(entry.value)
            if token_path(record.token_hash) != entry.key:
                raise CorruptMetadata("stored token record names another token")
            records.append(record)
        return tuple(records)

    def revoke(self, token_hash: str) -> None:
        """Deletes a token record. Raises NotFound, StoreUnavailable."""
        path = token_path(token_hash)
        entry = self._store.get(path)
        if entry is None:
            raise NotFound("no token with that hash")
        self._store.txn([Delete(path, entry.mod_revision)])
