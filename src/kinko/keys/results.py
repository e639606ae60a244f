"""What :class:`~kinko.keys.service.KeyService` returns: values the REST layer renders.

Job: one frozen dataclass per response shape of Key Protect API v2, with Key Protect's field
meanings (the REST layer only renames to camelCase, formats times as RFC 3339 and bytes as
base64). Registrations, key rings, aliases and instance policies are returned as the model's
own values (:mod:`kinko.keys.model`), which hold nothing secret.

Invariants: nothing here holds an HSM handle or sealed material; the only secret fields
(``payload`` of a standard key, ``plaintext`` of wrap and unwrap, an import token's ``nonce``)
are ``repr=False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from kinko.keys.model import (
    AliasEntry,
    KeyRing,
    KeyState,
    PolicyStamp,
    Registration,
    RotationPolicy,
)

__all__ = [
    "AliasEntry",
    "DualAuthPolicy",
    "DualAuthView",
    "ImportTokenInfo",
    "ImportTokenKey",
    "KeyList",
    "KeyPolicies",
    "KeyRing",
    "KeyRingList",
    "KeyUse",
    "KeyView",
    "Registration",
    "RegistrationList",
    "RewrapResult",
    "ScheduledRun",
    "UnwrapResult",
    "VersionList",
    "VersionRef",
    "WrapResult",
    "key_crn",
]

#: CRN scheme of kinko's keys: ``crn:v1:kinko:local:kms:local:a/kinko:<instance>:key:<id>``.
CRN_PREFIX = "crn:v1:kinko:local:kms:local:a/kinko"


def key_crn(instance: str, key_id: str) -> str:
    """The CRN of a key, in Key Protect's layout."""
    return f"{CRN_PREFIX}:{instance}:key:{key_id}"


@dataclass(frozen=True, slots=True)
class VersionRef:
    """``keyVersion``: a key version's id and creation date."""

    id: str
    creation_date: datetime


@dataclass(frozen=True, slots=True)
class DualAuthView:
    """``dualAuthDelete`` of a key: the policy and whether a deletion is authorized now."""

    enabled: bool
    key_set_for_deletion: bool
    auth_expiration: datetime | None = None
    set_for_deletion_by: str | None = None


@dataclass(frozen=True, slots=True)
class KeyView:
    """A key as Key Protect's key resource shows it, as of the time of the call.

    ``state`` already reflects expiry (an expired key shows Deactivated). ``payload`` is set
    only by ``get_key`` on a standard key that is not Destroyed. ``purge_allowed`` and
    ``restore_allowed`` say whether those actions would pass their time rules now.
    """

    id: str
    instance: str
    crn: str
    name: str
    description: str
    key_ring_id: str
    aliases: tuple[str, ...]
    extractable: bool
    imported: bool
    state: KeyState
    algorithm_type: str
    algorithm_bit_size: int
    creation_date: datetime
    created_by: str
    last_update_date: datetime
    last_rotate_date: datetime | None
    key_version: VersionRef
    version_count: int
    expiration_date: datetime | None
    deleted: bool
    deleted_by: str | None
    deletion_date: datetime | None
    purge_allowed: bool
    purge_allowed_from: datetime | None
    purge_scheduled_on: datetime | None
    restore_allowed: bool
    restore_expiration_date: datetime | None
    dual_auth_delete: DualAuthView
    rotation: RotationPolicy | None
    registration_count: int
    payload: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class KeyList:
    """A page of keys and the number of keys that matched the filters (``collectionTotal``
    is ``len(keys)``; ``total`` is for ``totalCount``)."""

    keys: tuple[KeyView, ...]
    total: int


@dataclass(frozen=True, slots=True)
class VersionList:
    """A page of a key's versions, newest first, and their total number."""

    versions: tuple[VersionRef, ...]
    total: int


@dataclass(frozen=True, slots=True)
class WrapResult:
    """``ciphertext`` (Key Protect's opaque base64 text) and the version that wrapped.

    ``plaintext`` is the generated DEK when the request carried none, else None.
    """

    ciphertext: str = field(repr=False)
    key_version: VersionRef
    plaintext: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class KeyUse:
    """What :meth:`~kinko.keys.service.KeyService.check_key_use` found: the key's id (never
    an alias) and its latest version, the one a wrap would use now."""

    key_id: str
    latest_version: VersionRef


@dataclass(frozen=True, slots=True)
class UnwrapResult:
    """The unwrapped ``plaintext`` and the version that had wrapped it.

    If the key was rotated since, ``ciphertext`` is the same plaintext rewrapped under the
    latest version and ``rewrapped_key_version`` names that version (Key Protect does this on
    every unwrap of an older version); otherwise both are None.
    """

    plaintext: bytes = field(repr=False)
    key_version: VersionRef
    ciphertext: str | None = field(default=None, repr=False)
    rewrapped_key_version: VersionRef | None = None


@dataclass(frozen=True, slots=True)
class RewrapResult:
    """The ciphertext rewrapped under the latest version; ``key_version`` is the version that
    had wrapped the input, ``rewrapped_key_version`` the latest."""

    ciphertext: str = field(repr=False)
    key_version: VersionRef
    rewrapped_key_version: VersionRef


@dataclass(frozen=True, slots=True)
class DualAuthPolicy:
    """The dual authorization delete policy of a key, with its policy metadata."""

    enabled: bool
    stamp: PolicyStamp | None = None


@dataclass(frozen=True, slots=True)
class KeyPolicies:
    """A key's policies (``GET /keys/{id}/policies``); None = never set."""

    key_id: str
    crn: str
    rotation: RotationPolicy | None
    dual_auth_delete: DualAuthPolicy | None


@dataclass(frozen=True, slots=True)
class ImportTokenInfo:
    """An import token's metadata (``POST /import_token``)."""

    creation_date: datetime
    expiration_date: datetime
    max_allowed_retrievals: int
    remaining_retrievals: int


@dataclass(frozen=True, slots=True)
class ImportTokenKey:
    """``GET /import_token``: the metadata, the public key (PEM, SubjectPublicKeyInfo; Key
    Protect's ``payload`` is its base64) and the nonce to encrypt under the key material."""

    info: ImportTokenInfo
    public_key_pem: bytes
    nonce: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RegistrationList:
    """A page of registrations and the number that matched."""

    registrations: tuple[Registration, ...]
    total: int


@dataclass(frozen=True, slots=True)
class KeyRingList:
    """A page of key rings (``default`` first) and their total number."""

    key_rings: tuple[KeyRing, ...]
    total: int


@dataclass(frozen=True, slots=True)
class ScheduledRun:
    """What one run of the scheduler did: key ids rotated, expired and purged, and the keys
    it could not handle with the reason code (the run goes on past a failing key)."""

    rotated: tuple[str, ...] = ()
    expired: tuple[str, ...] = ()
    purged: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
