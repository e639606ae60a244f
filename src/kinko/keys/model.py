"""Key lifecycle rules of the key service: Key Protect's state machine as pure functions.

Job: the records the key service keeps (keys and their versions, registrations, key rings,
import tokens, instance policies) as frozen values, and every change to them as a function
``old value + request → new value`` that raises the typed error Key Protect answers with
(``kinko.errors``, each with its Key Protect ``reason_code``). Also the pure wrap ciphertext
format and the AAD encodings.

Invariants:

- Pure: no I/O, no clock, no randomness. Callers pass ``now`` (an aware UTC datetime), the
  acting user's name, and every id, nonce and HSM handle in. So the same inputs always give
  the same output, and lifecycle tests are tables.
- States and allowed actions are Key Protect's (reference §1 note [1]):

  ==============  ======  =========  ===========  =========
  action          Active  Suspended  Deactivated  Destroyed
  ==============  ======  =========  ===========  =========
  get / metadata  yes     yes        yes          yes
  list            yes     yes        yes          (only when asked for state 5)
  rotate          yes                yes
  wrap            yes
  unwrap/rewrap   yes                yes
  disable         yes
  enable                  yes
  delete          yes     yes        yes
  restore                                         yes
  ==============  ======  =========  ===========  =========

  A refused action on a live key raises :class:`~kinko.errors.WrongState` (409
  ``KEY_ACTION_INVALID_STATE_ERR``); on a Destroyed key it raises :class:`~kinko.errors.Gone`
  (410 ``KEY_DELETED_ERR``), as Key Protect answers a second delete and as its versions list
  answered before ``allKeyStates``. Actions that need a root key raise
  :class:`~kinko.errors.NotAllowed` ``KEY_ROOT_REQ_ERR`` on a standard key.
- Expiry is a function of time, never a stored surprise: :func:`expire` turns an Active or
  Suspended key whose ``expiration_date`` has passed into Deactivated, stamped at the
  expiration date itself, so applying it early, late or twice gives the same key. Every
  transition applies it first.
- Timing rules: enable and restore wait 30 s after the last state change
  (``REQ_TOO_EARLY_ERR``); a rotation waits an hour after the previous one
  (``KEY_ROTATION_NOT_PERMITTED``; the first rotation may follow creation at once); a dual
  authorization lasts 7 days; restore works for 30 days after deletion and never for an
  expired key; a user purge waits 4 hours after deletion; after 90 days the purge is automatic.
- Key material never appears in a repr: ``hsm_handle`` and sealed material are
  ``repr=False``; messages carry names, sizes, states and times only.
"""

from __future__ import annotations

import binascii
import functools
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import IntEnum
from typing import Final

from kinko.errors import (
    Conflict,
    DeletionRefused,
    Gone,
    InvalidArgument,
    NotAllowed,
    NotFound,
    TooEarly,
    Unprocessable,
    UnprocessableCiphertext,
    WrongState,
)

# --- Key Protect's numbers ---------------------------------------------------------------

#: Wait after the last state change before enable or restore.
STATE_CHANGE_WAIT: Final = timedelta(seconds=30)
#: Minimum time between two rotations of a key.
ROTATION_WAIT: Final = timedelta(hours=1)
#: How long a ``setKeyForDeletion`` authorization lasts.
DUAL_AUTH_WINDOW: Final = timedelta(days=7)
#: How long after deletion a key can be restored.
RESTORE_WINDOW: Final = timedelta(days=30)
#: How long after deletion a user with the KeyPurge role may purge.
PURGE_WAIT: Final = timedelta(hours=4)
#: How long after deletion a key is purged automatically.
AUTO_PURGE_AFTER: Final = timedelta(days=90)
#: Rotation policies count months as 30 days ("interval_month: 3" = every 90 days).
ROTATION_MONTH: Final = timedelta(days=30)
MIN_INTERVAL_MONTH: Final = 1
MAX_INTERVAL_MONTH: Final = 12

#: The key ring every instance has and keys land in without ``x-kms-key-ring``.
DEFAULT_RING: Final = "default"
MAX_RINGS_PER_INSTANCE: Final = 50
MAX_ALIASES_PER_KEY: Final = 5
MAX_ALIASES_PER_INSTANCE: Final = 1000
MAX_AAD_CHARS: Final = 255
#: Standard key material and wrap plaintext: at most 7,500 bytes, as Key Protect.
MAX_PAYLOAD_BYTES: Final = 7500
#: Size of a generated DEK (wrap without plaintext) and of generated key material.
GENERATED_KEY_BYTES: Final = 32
#: Root key material: kinko's HSM port holds AES-256 only (Key Protect also takes 16 and 24).
ROOT_KEY_BYTES: Final = 32
#: Import tokens: lifetime in seconds and retrievals, as Key Protect.
IMPORT_TOKEN_DEFAULT_SECONDS: Final = 600
IMPORT_TOKEN_MIN_SECONDS: Final = 300
IMPORT_TOKEN_MAX_SECONDS: Final = 86400
IMPORT_TOKEN_DEFAULT_RETRIEVALS: Final = 1
IMPORT_TOKEN_MAX_RETRIEVALS: Final = 500
IMPORT_TOKEN_NONCE_BYTES: Final = 12

#: The ``version`` field of Key Protect's wrap ciphertext JSON.
WRAP_FORMAT_VERSION: Final = "4.0.0"
WRAP_NONCE_BYTES: Final = 12
WRAP_TAG_BYTES: Final = 16
#: Longest ciphertext text accepted for unwrap/rewrap (a 7,500-byte DEK wraps to ~10.2 kB).
MAX_CIPHERTEXT_CHARS: Final = 16384

_NAME_MIN, _NAME_MAX = 2, 90
_DESCRIPTION_MAX = 240
_ALIAS_RE: Final = re.compile(r"[A-Za-z0-9_-]{2,90}")
_RESERVED_ALIASES: Final = frozenset(
    {
        "allowed_ip",
        "key",
        "keys",
        "metadata",
        "policy",
        "policies",
        "registration",
        "registrations",
        "ring",
        "rings",
        "rotate",
        "wrap",
        "unwrap",
        "rewrap",
        "version",
        "versions",
    }
)
_RING_RE: Final = re.compile(r"[A-Za-z0-9-]{2,100}")
_INSTANCE_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")
_UUID_RE: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID4_ANY_CASE_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
)
_MAX_CRN_CHARS: Final = 512


class KeyState(IntEnum):
    """Key Protect's key states, with the integers its API uses."""

    ACTIVE = 1
    SUSPENDED = 2
    DEACTIVATED = 3
    DESTROYED = 5

    @property
    def label(self) -> str:
        """The state's name as Key Protect's documentation writes it."""
        return self.name.capitalize()


LIVE_STATES: Final = frozenset({KeyState.ACTIVE, KeyState.SUSPENDED, KeyState.DEACTIVATED})


# --- records ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealedMaterial:
    """Bytes sealed by AES-256-GCM under the service's metadata KEK, inside the HSM."""

    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One version of a key's material.

    Root keys: ``hsm_handle`` names the AES-256 key in the HSM. Standard keys: ``sealed`` holds
    the material sealed under the metadata KEK. Exactly one of the two is set.
    """

    id: str
    creation_date: datetime
    hsm_handle: str | None = field(default=None, repr=False)
    sealed: SealedMaterial | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class PolicyStamp:
    """Who created a policy and who changed it last, and when (Key Protect's policy metadata)."""

    created_by: str
    creation_date: datetime
    updated_by: str
    last_update: datetime

    def touched(self, *, now: datetime, actor: str) -> PolicyStamp:
        """The stamp after ``actor`` changed the policy at ``now``."""
        return replace(self, updated_by=actor, last_update=now)


def _stamp(old: PolicyStamp | None, *, now: datetime, actor: str) -> PolicyStamp:
    if old is None:
        return PolicyStamp(actor, now, actor, now)
    return old.touched(now=now, actor=actor)


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    """Automatic rotation every ``interval_month`` times 30 days while ``enabled``."""

    enabled: bool
    interval_month: int | None = None
    stamp: PolicyStamp | None = None

    @property
    def interval(self) -> timedelta | None:
        """The rotation period, or None when the policy is off."""
        if not self.enabled or self.interval_month is None:
            return None
        return ROTATION_MONTH * self.interval_month


@dataclass(frozen=True, slots=True)
class DualAuth:
    """The dual authorization delete policy of a key, and a pending authorization.

    ``set_for_deletion_by`` is the user who called ``setKeyForDeletion``; the authorization
    lasts until ``auth_expiration``.
    """

    enabled: bool = False
    set_for_deletion_by: str | None = None
    auth_expiration: datetime | None = None
    stamp: PolicyStamp | None = None

    def pending(self, now: datetime) -> bool:
        """Whether an authorization to delete is set and not yet expired at ``now``."""
        return (
            self.set_for_deletion_by is not None
            and self.auth_expiration is not None
            and now < self.auth_expiration
        )

    def cleared(self) -> DualAuth:
        """The same policy without a pending authorization."""
        return replace(self, set_for_deletion_by=None, auth_expiration=None)


@dataclass(frozen=True, slots=True)
class Deletion:
    """When and by whom a key was deleted, and the deadlines that follow from it."""

    deleted_by: str
    deletion_date: datetime

    @property
    def restore_allowed_until(self) -> datetime:
        """Last moment a restore is possible (30 days)."""
        return self.deletion_date + RESTORE_WINDOW

    @property
    def purge_allowed_from(self) -> datetime:
        """First moment a KeyPurge user may purge (4 hours)."""
        return self.deletion_date + PURGE_WAIT

    @property
    def purge_scheduled_on(self) -> datetime:
        """When the automatic purge is due (90 days)."""
        return self.deletion_date + AUTO_PURGE_AFTER


@dataclass(frozen=True, slots=True)
class Registration:
    """A record that a resource (named by its CRN) uses a root key; it guards deletion."""

    key_id: str
    resource_crn: str
    created_by: str
    creation_date: datetime
    updated_by: str
    last_updated: datetime
    key_version_id: str
    key_version_creation_date: datetime
    description: str = ""
    prevent_key_deletion: bool = False


@dataclass(frozen=True, slots=True)
class Key:
    """A root key (``extractable`` False) or a standard key, with everything Key Protect keeps.

    ``versions`` are oldest first; the last one is the one wrap uses. ``last_state_change`` is
    the time of the last state transition (for the 30-second rule). ``purge_started`` marks a
    purge in progress: the HSM objects may already be gone, so the key is no longer usable.
    """

    id: str
    instance: str
    name: str
    extractable: bool
    imported: bool
    state: KeyState
    versions: tuple[KeyVersion, ...]
    bit_length: int
    creation_date: datetime
    created_by: str
    last_update: datetime
    last_state_change: datetime
    description: str = ""
    key_ring_id: str = DEFAULT_RING
    aliases: tuple[str, ...] = ()
    last_rotate: datetime | None = None
    expiration_date: datetime | None = None
    dual_auth: DualAuth = DualAuth()
    rotation: RotationPolicy | None = None
    deletion: Deletion | None = None
    registrations: tuple[Registration, ...] = ()
    purge_started: datetime | None = None

    @property
    def is_root(self) -> bool:
        """Root keys (``extractable: false``) live in the HSM and never leave it."""
        return not self.extractable

    @property
    def latest_version(self) -> KeyVersion:
        """The version wrap uses."""
        return self.versions[-1]

    def version(self, version_id: str) -> KeyVersion | None:
        """The version with this id, or None."""
        for v in self.versions:
            if v.id == version_id:
                return v
        return None

    def version_index(self, version_id: str) -> int | None:
        """The position of the version with this id (0 = oldest), or None."""
        for i, v in enumerate(self.versions):
            if v.id == version_id:
                return i
        return None

    def registration(self, crn: str) -> Registration | None:
        """The registration for this resource CRN, or None."""
        for r in self.registrations:
            if r.resource_crn == crn:
                return r
        return None

    def expired(self, now: datetime) -> bool:
        """Whether the key has an expiration date at or before ``now``."""
        return self.expiration_date is not None and self.expiration_date <= now


@dataclass(frozen=True, slots=True)
class KeyRing:
    """A key ring of an instance.

    ``default`` exists implicitly in every instance and has no creation date or creator.
    """

    id: str
    creation_date: datetime | None = None
    created_by: str | None = None


@dataclass(frozen=True, slots=True)
class AliasEntry:
    """An alias of a key: unique in its instance, usable wherever a key id is."""

    alias: str
    key_id: str
    creation_date: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class ImportToken:
    """The import token of an instance (one at a time; a new one replaces the old).

    Secure import: the client encrypts the key material to ``public_key_der`` (RSA-OAEP) and
    the ``nonce`` under the key material (AES-GCM). The private key is sealed under the
    metadata KEK.
    """

    instance: str
    creation_date: datetime
    expiration_date: datetime
    max_allowed_retrievals: int
    remaining_retrievals: int
    created_by: str
    nonce: bytes = field(repr=False)
    public_key_der: bytes = field(repr=False)
    sealed_private_key: SealedMaterial = field(repr=False)

    def expired(self, now: datetime) -> bool:
        """Whether the token's lifetime is over at ``now``."""
        return now >= self.expiration_date


@dataclass(frozen=True, slots=True)
class InstancePolicies:
    """An instance's policies that new keys inherit: dual authorization delete and rotation."""

    dual_auth_delete: bool = False
    dual_auth_stamp: PolicyStamp | None = None
    rotation: RotationPolicy | None = None


# --- validation ----------------------------------------------------------------------------


def check_now(now: datetime) -> datetime:
    """Returns ``now`` if it is timezone-aware; raises InvalidArgument otherwise."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidArgument("expected an aware UTC datetime, got a naive one")
    return now


def check_instance(instance: str) -> str:
    """Returns ``instance`` if it is a usable instance id; raises InvalidArgument otherwise."""
    if not isinstance(instance, str) or _INSTANCE_RE.fullmatch(instance) is None:
        raise InvalidArgument(
            "expected an instance id of 1 to 128 letters, digits, '.', '_' or '-'"
        )
    return instance


def check_name(name: str) -> str:
    """Returns ``name`` if it is a valid key name (2 to 90 printable characters).

    Raises InvalidArgument.
    """
    if not isinstance(name, str) or not _NAME_MIN <= len(name) <= _NAME_MAX:
        size = len(name) if isinstance(name, str) else "no"
        raise InvalidArgument(
            f"expected a key name of {_NAME_MIN} to {_NAME_MAX} characters, got {size}"
        )
    if not name.isprintable():
        raise InvalidArgument("expected a key name of printable characters")
    return name


def check_description(description: str) -> str:
    """Returns ``description`` if it has at most 240 printable characters.

    Raises InvalidArgument.
    """
    if not isinstance(description, str) or len(description) > _DESCRIPTION_MAX:
        raise InvalidArgument(f"expected a description of at most {_DESCRIPTION_MAX} characters")
    if not description.isprintable():
        raise InvalidArgument("expected a description of printable characters")
    return description


def check_alias(alias: str) -> str:
    """Returns ``alias`` if Key Protect would accept it; raises InvalidArgument otherwise.

    2 to 90 letters, digits, ``-`` or ``_``; not a UUID v4 (so ids and aliases never
    collide); not a reserved word of the API.
    """
    if not isinstance(alias, str) or _ALIAS_RE.fullmatch(alias) is None:
        raise InvalidArgument(
            "expected an alias of 2 to 90 letters, digits, '-' or '_' (no spaces)"
        )
    if _UUID4_ANY_CASE_RE.fullmatch(alias) is not None:
        raise InvalidArgument("expected an alias that is not a UUID")
    if alias in _RESERVED_ALIASES:
        raise InvalidArgument(f"expected an alias that is not a reserved word, got {alias!r}")
    return alias


def is_key_id(ref: str) -> bool:
    """Whether ``ref`` has the shape of a key id (lowercase UUID) rather than an alias."""
    return _UUID_RE.fullmatch(ref) is not None


def check_ring_id(ring_id: str) -> str:
    """Returns ``ring_id`` if it is 2 to 100 letters, digits or ``-``. Raises InvalidArgument."""
    if not isinstance(ring_id, str) or _RING_RE.fullmatch(ring_id) is None:
        raise InvalidArgument("expected a key ring id of 2 to 100 letters, digits or '-'")
    return ring_id


def check_crn(crn: str) -> str:
    """Returns ``crn`` if it looks like a resource CRN (``crn:…``, printable, ≤ 512 chars).

    Raises InvalidArgument.
    """
    if (
        not isinstance(crn, str)
        or not crn.startswith("crn:")
        or len(crn) > _MAX_CRN_CHARS
        or not crn.isprintable()
        or any(c.isspace() for c in crn)
    ):
        raise InvalidArgument(
            f"expected a resource CRN ('crn:…', at most {_MAX_CRN_CHARS} printable characters)"
        )
    return crn


def check_interval_month(interval_month: int) -> int:
    """Returns ``interval_month`` if it is an integer from 1 to 12. Raises InvalidArgument."""
    if (
        isinstance(interval_month, bool)
        or not isinstance(interval_month, int)
        or not MIN_INTERVAL_MONTH <= interval_month <= MAX_INTERVAL_MONTH
    ):
        raise InvalidArgument(
            f"expected interval_month from {MIN_INTERVAL_MONTH} to {MAX_INTERVAL_MONTH}, "
            f"got {interval_month!r}"
        )
    return interval_month


def check_payload(payload: bytes, *, root: bool) -> bytes:
    """Checks imported key material: 32 bytes for a root key, 1 to 7,500 for a standard key.

    Raises InvalidArgument with the size only.
    """
    if root:
        if len(payload) != ROOT_KEY_BYTES:
            raise InvalidArgument(
                f"expected {ROOT_KEY_BYTES} bytes of root key material (AES-256), "
                f"got {len(payload)}"
            )
    elif not 1 <= len(payload) <= MAX_PAYLOAD_BYTES:
        raise InvalidArgument(
            f"expected 1 to {MAX_PAYLOAD_BYTES} bytes of key material, got {len(payload)}"
        )
    return payload


def check_plaintext(plaintext: bytes) -> bytes:
    """Checks a wrap plaintext: 1 to 7,500 bytes. Raises InvalidArgument (with the size only)."""
    if not 1 <= len(plaintext) <= MAX_PAYLOAD_BYTES:
        raise InvalidArgument(
            f"expected a plaintext of 1 to {MAX_PAYLOAD_BYTES} bytes, got {len(plaintext)}"
        )
    return plaintext


#: What ``aad`` must not be: one string (a tuple, not ``str | bytes``, which would build a
#: union type on every wrap).
_SINGLE_VALUES: Final = (str, bytes)


def check_aad(aad: Sequence[str]) -> tuple[str, ...]:
    """Returns the AAD strings as a tuple if each has at most 255 characters and is
    encodable as UTF-8 (the wrap AAD holds their UTF-8 bytes; a JSON body can carry a lone
    surrogate such as ``"\\ud800"``, which has none).

    Raises InvalidArgument (``BAD_BODY_ERR``) naming the position and length, never the text.
    """
    if isinstance(aad, _SINGLE_VALUES):
        raise InvalidArgument("expected aad as a list of strings, got a single value")
    out: list[str] = []
    for i, item in enumerate(aad):
        if not isinstance(item, str):
            raise InvalidArgument(f"expected aad[{i}] to be a string")
        if len(item) > MAX_AAD_CHARS:
            raise InvalidArgument(
                f"expected aad[{i}] of at most {MAX_AAD_CHARS} characters, got {len(item)}"
            )
        if not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgument(
                    f"expected aad[{i}] to be valid Unicode text, got a lone surrogate"
                ) from None
        out.append(item)
    return tuple(out)


# --- state checks --------------------------------------------------------------------------


def _require_state(key: Key, action: str, allowed: frozenset[KeyState]) -> None:
    if key.purge_started is not None:
        raise NotFound("the key is being purged", reason_code="KEY_NOT_FOUND_ERR")
    if key.state in allowed:
        return
    if key.state is KeyState.DESTROYED:
        raise Gone(f"the key was deleted; {action} needs a key that is not Destroyed")
    expected = " or ".join(s.label for s in sorted(allowed))
    raise WrongState(f"expected key state {expected} for {action}, got {key.state.label}")


def _require_root(key: Key, action: str) -> None:
    if not key.is_root:
        raise NotAllowed(f"{action} needs a root key", reason_code="KEY_ROOT_REQ_ERR")


_ROTATE_STATES: Final = frozenset({KeyState.ACTIVE, KeyState.DEACTIVATED})
_WRAP_STATES: Final = frozenset({KeyState.ACTIVE})
_UNWRAP_STATES: Final = frozenset({KeyState.ACTIVE, KeyState.DEACTIVATED})
_DISABLE_STATES: Final = frozenset({KeyState.ACTIVE})
_ENABLE_STATES: Final = frozenset({KeyState.SUSPENDED})
_RESTORE_STATES: Final = frozenset({KeyState.DESTROYED})


def expire(key: Key, now: datetime) -> Key:
    """Applies ``expirationDate``: an expired Active or Suspended key becomes Deactivated.

    The transition is stamped at the expiration date, so the result does not depend on when
    it is applied. Any other key is returned unchanged.
    """
    check_now(now)
    if (
        key.expiration_date is None
        or key.expiration_date > now
        or key.state not in (KeyState.ACTIVE, KeyState.SUSPENDED)
    ):
        return key
    at = key.expiration_date
    return replace(
        key,
        state=KeyState.DEACTIVATED,
        last_state_change=max(key.last_state_change, at),
        last_update=max(key.last_update, at),
    )


def check_wrap(key: Key, now: datetime) -> Key:
    """The key as of ``now`` if it may wrap (root, Active). Raises NotAllowed, WrongState, Gone."""
    key = expire(key, now)
    _require_root(key, "wrap")
    _require_state(key, "wrap", _WRAP_STATES)
    return key


def check_unwrap(key: Key, now: datetime, *, action: str = "unwrap") -> Key:
    """The key as of ``now`` if it may unwrap or rewrap (root, Active or Deactivated).

    Raises NotAllowed, WrongState, Gone.
    """
    key = expire(key, now)
    _require_root(key, action)
    _require_state(key, action, _UNWRAP_STATES)
    return key


def check_readable(key: Key) -> Key:
    """The key if it is not being purged (a purge in progress reads as not found)."""
    if key.purge_started is not None:
        raise NotFound("the key is being purged", reason_code="KEY_NOT_FOUND_ERR")
    return key


def check_versions_listable(key: Key, *, all_key_states: bool) -> None:
    """Key Protect lists versions of Active keys only, unless ``allKeyStates`` is asked for.

    Raises WrongState (409), Gone (410).
    """
    check_readable(key)
    if not all_key_states:
        _require_state(key, "listing versions", _WRAP_STATES)


# --- creation ------------------------------------------------------------------------------


def new_key(
    *,
    key_id: str,
    instance: str,
    name: str,
    extractable: bool,
    version: KeyVersion,
    bit_length: int,
    now: datetime,
    actor: str,
    imported: bool = False,
    description: str = "",
    key_ring_id: str = DEFAULT_RING,
    aliases: Sequence[str] = (),
    expiration_date: datetime | None = None,
    dual_auth_delete: bool | None = None,
    rotation: RotationPolicy | None = None,
    instance_policies: InstancePolicies = InstancePolicies(),
) -> Key:
    """A new Active key with one version.

    Policies: ``dual_auth_delete`` and ``rotation`` override the instance's; left as None, the
    key inherits the instance's policies (rotation only for generated root keys, as Key
    Protect). Raises InvalidArgument (bad name, description, alias, ring id, a past
    expiration date, too many or repeated aliases, a rotation policy on an imported or
    standard key), NotAllowed (``KEY_ROOT_REQ_ERR``: rotation policy on a standard key).
    """
    check_now(now)
    check_instance(instance)
    check_name(name)
    check_description(description)
    check_ring_id(key_ring_id)
    checked_aliases = tuple(check_alias(a) for a in aliases)
    if len(set(checked_aliases)) != len(checked_aliases):
        raise InvalidArgument("expected distinct aliases, got a repeated one")
    if len(checked_aliases) > MAX_ALIASES_PER_KEY:
        raise InvalidArgument(
            f"expected at most {MAX_ALIASES_PER_KEY} aliases per key, got {len(checked_aliases)}",
            reason_code="KEY_ALIAS_QUOTA_ERR",
        )
    if expiration_date is not None:
        check_now(expiration_date)
        if expiration_date <= now:
            raise InvalidArgument("expected an expiration date in the future")
    root = not extractable
    if rotation is not None:
        rotation = _checked_rotation(rotation, root=root, imported=imported, now=now, actor=actor)
    elif (
        root
        and not imported
        and instance_policies.rotation is not None
        and instance_policies.rotation.enabled
    ):
        rotation = replace(instance_policies.rotation, stamp=PolicyStamp(actor, now, actor, now))
    dual = instance_policies.dual_auth_delete if dual_auth_delete is None else dual_auth_delete
    return Key(
        id=key_id,
        instance=instance,
        name=name,
        description=description,
        extractable=extractable,
        imported=imported,
        state=KeyState.ACTIVE,
        versions=(version,),
        bit_length=bit_length,
        creation_date=now,
        created_by=actor,
        last_update=now,
        last_state_change=now,
        key_ring_id=key_ring_id,
        aliases=checked_aliases,
        expiration_date=expiration_date,
        dual_auth=DualAuth(
            enabled=dual, stamp=PolicyStamp(actor, now, actor, now) if dual else None
        ),
        rotation=rotation,
    )


def _checked_rotation(
    rotation: RotationPolicy, *, root: bool, imported: bool, now: datetime, actor: str
) -> RotationPolicy:
    if not root:
        raise NotAllowed("a rotation policy needs a root key", reason_code="KEY_ROOT_REQ_ERR")
    if rotation.enabled:
        if imported:
            raise InvalidArgument(
                "a rotation policy needs a generated root key; imported keys rotate only "
                "with new material"
            )
        if rotation.interval_month is None:
            raise InvalidArgument("expected interval_month for an enabled rotation policy")
    if rotation.interval_month is not None:
        check_interval_month(rotation.interval_month)
    return replace(rotation, stamp=PolicyStamp(actor, now, actor, now))


# --- transitions ---------------------------------------------------------------------------


def disable(key: Key, *, now: datetime, actor: str) -> Key:
    """Active → Suspended. Raises NotAllowed (standard key), WrongState, Gone."""
    key = expire(key, now)
    _require_root(key, "disable")
    _require_state(key, "disable", _DISABLE_STATES)
    return replace(key, last_update=now, state=KeyState.SUSPENDED, last_state_change=now)


def enable(key: Key, *, now: datetime, actor: str) -> Key:
    """Suspended → Active, at least 30 s after the last state change.

    Raises NotAllowed (standard key), WrongState (not Suspended, e.g. expired), Gone,
    TooEarly (``REQ_TOO_EARLY_ERR``).
    """
    key = expire(key, now)
    _require_root(key, "enable")
    _require_state(key, "enable", _ENABLE_STATES)
    if now - key.last_state_change < STATE_CHANGE_WAIT:
        raise TooEarly("the key changed state less than 30 seconds ago; wait and retry")
    return replace(key, last_update=now, state=KeyState.ACTIVE, last_state_change=now)


def check_rotate(key: Key, *, now: datetime, payload_given: bool) -> Key:
    """The key as of ``now`` if it may rotate; nothing changes.

    Root key, Active or Deactivated, no rotation within the last hour; an imported key needs
    new material and a generated one takes none. Raises NotAllowed (``KEY_ROOT_REQ_ERR``,
    ``KEY_PAYLOAD_REQ_ERR``), InvalidArgument (material for a generated key), WrongState, Gone,
    TooEarly (``KEY_ROTATION_NOT_PERMITTED``).
    """
    key = expire(key, now)
    _require_root(key, "rotate")
    _require_state(key, "rotate", _ROTATE_STATES)
    if key.imported and not payload_given:
        raise NotAllowed(
            "the key was created with user-supplied material; rotating it needs new material",
            reason_code="KEY_PAYLOAD_REQ_ERR",
        )
    if not key.imported and payload_given:
        raise InvalidArgument("the key was generated by the service; rotate it without material")
    if key.last_rotate is not None and now - key.last_rotate < ROTATION_WAIT:
        raise TooEarly(
            "the key was rotated within the last hour; one rotation per hour is permitted",
            reason_code="KEY_ROTATION_NOT_PERMITTED",
        )
    return key


def rotate(key: Key, *, now: datetime, actor: str, version: KeyVersion, payload_given: bool) -> Key:
    """Adds ``version`` as the latest. Expiration is not extended; a Deactivated key stays so.

    Raises what :func:`check_rotate` raises, and InvalidArgument for a version id in use.
    """
    key = check_rotate(key, now=now, payload_given=payload_given)
    if key.version(version.id) is not None:
        raise InvalidArgument("expected a new version id, got one in use")
    return replace(key, last_update=now, versions=(*key.versions, version), last_rotate=now)


def rotation_due(key: Key, now: datetime) -> bool:
    """Whether the key's rotation policy asks for a rotation at ``now``.

    Only generated root keys in the Active state rotate automatically, once their interval
    has passed since the last rotation (or creation).
    """
    if key.rotation is None or key.purge_started is not None:
        return False
    interval = key.rotation.interval
    key = expire(key, now)
    if interval is None or not key.is_root or key.imported or key.state is not KeyState.ACTIVE:
        return False
    since = key.last_rotate if key.last_rotate is not None else key.creation_date
    return now - since >= interval


_DELETE_STATES: Final = LIVE_STATES


def schedule_deletion(key: Key, *, now: datetime, actor: str) -> Key:
    """Dual authorization: ``actor`` authorizes a deletion by another user within 7 days.

    Allowed in the states a delete is. Raises DeletionRefused (``NOT_DUAL_AUTH_ERR``: the key
    has no dual authorization policy), WrongState, Gone.
    """
    key = expire(key, now)
    _require_state(key, "setKeyForDeletion", _DELETE_STATES)
    if not key.dual_auth.enabled:
        raise DeletionRefused(
            "the key has no dual authorization policy and cannot be set for deletion",
            reason_code="NOT_DUAL_AUTH_ERR",
        )
    dual = replace(key.dual_auth, set_for_deletion_by=actor, auth_expiration=now + DUAL_AUTH_WINDOW)
    return replace(key, last_update=now, dual_auth=dual)


def unschedule_deletion(key: Key, *, now: datetime, actor: str) -> Key:
    """Cancels a pending dual authorization. Raises DeletionRefused (``NOT_DUAL_AUTH_ERR``),
    WrongState, Gone."""
    key = expire(key, now)
    _require_state(key, "unsetKeyForDeletion", _DELETE_STATES)
    if not key.dual_auth.enabled:
        raise DeletionRefused(
            "the key has no dual authorization policy; there is nothing to unset",
            reason_code="NOT_DUAL_AUTH_ERR",
        )
    return replace(key, last_update=now, dual_auth=key.dual_auth.cleared())


def delete(key: Key, *, now: datetime, actor: str, force: bool = False) -> Key:
    """Active, Suspended or Deactivated → Destroyed (soft delete; restorable for 30 days).

    Guards, in order: the state (Destroyed → Gone ``KEY_DELETED_ERR``); dual authorization (a
    pending authorization by another user, else DeletionRefused ``AUTHORIZATIONS_NOT_MET``);
    registrations (any → ``PROTECTED_RESOURCE_ERR`` unless ``force``; one with
    ``preventKeyDeletion`` → ``PREV_KEY_DEL_ERR`` even with ``force``).
    """
    key = expire(key, now)
    if key.state is KeyState.DESTROYED:
        check_readable(key)
        raise Gone("the key has already been deleted; delete references to it")
    _require_state(key, "delete", _DELETE_STATES)
    if key.dual_auth.enabled:
        if not key.dual_auth.pending(now):
            raise DeletionRefused(
                "the key needs a dual authorization (setKeyForDeletion) by another user "
                "within the last 7 days",
                reason_code="AUTHORIZATIONS_NOT_MET",
            )
        if key.dual_auth.set_for_deletion_by == actor:
            raise DeletionRefused(
                "the user who set the key for deletion cannot also delete it",
                reason_code="AUTHORIZATIONS_NOT_MET",
            )
    if key.registrations:
        if any(r.prevent_key_deletion for r in key.registrations):
            raise DeletionRefused(
                "the key protects a resource with a retention policy (preventKeyDeletion); "
                "it cannot be deleted, even with force",
                reason_code="PREV_KEY_DEL_ERR",
            )
        if not force:
            raise DeletionRefused(
                f"the key protects {len(key.registrations)} registered resource(s); "
                "delete with force=true to delete it anyway",
                reason_code="PROTECTED_RESOURCE_ERR",
            )
    return replace(
        key,
        last_update=now,
        state=KeyState.DESTROYED,
        last_state_change=now,
        deletion=Deletion(deleted_by=actor, deletion_date=now),
        dual_auth=key.dual_auth.cleared(),
    )


def restore(key: Key, *, now: datetime, actor: str) -> Key:
    """Destroyed → Active, from 30 s to 30 days after the deletion, never for an expired key.

    Raises WrongState (not Destroyed), TooEarly (``REQ_TOO_EARLY_ERR``), NotAllowed
    (``KEY_RESTORE_EXPIRED`` after 30 days; ``KEY_EXPIRED_ERR`` for an expired key).
    """
    check_now(now)
    check_readable(key)
    _require_state(key, "restore", _RESTORE_STATES)
    deletion = key.deletion
    if deletion is None:  # A Destroyed key always has one; a record without is corrupt.
        raise WrongState("the key has no deletion record to restore from")
    if now - deletion.deletion_date < STATE_CHANGE_WAIT:
        raise TooEarly("the key was deleted less than 30 seconds ago; wait and retry")
    if now > deletion.restore_allowed_until:
        raise NotAllowed(
            "the key was deleted more than 30 days ago; it can no longer be restored",
            reason_code="KEY_RESTORE_EXPIRED",
        )
    if key.expired(now):
        raise NotAllowed(
            "the key is expired; an expired key cannot be restored",
            reason_code="KEY_EXPIRED_ERR",
        )
    return replace(
        key, last_update=now, state=KeyState.ACTIVE, last_state_change=now, deletion=None
    )


def auto_purge_due(key: Key, now: datetime) -> bool:
    """Whether the key was deleted 90 days or more before ``now`` (automatic purge)."""
    return (
        key.state is KeyState.DESTROYED
        and key.deletion is not None
        and now >= key.deletion.purge_scheduled_on
    )


def purge_check(key: Key, *, now: datetime) -> Key:
    """The key if a user may purge it at ``now``: Destroyed for at least 4 hours.

    (The KeyPurge role is the caller's business.) Raises WrongState (not Destroyed),
    TooEarly (``REQ_TOO_EARLY_ERR``, within 4 hours of the deletion), NotFound (a purge is
    already under way).
    """
    check_now(now)
    check_readable(key)
    _require_state(key, "purge", _RESTORE_STATES)
    if key.deletion is None or now < key.deletion.purge_allowed_from:
        raise TooEarly("a key can be purged only 4 hours after it was deleted")
    return key


def begin_purge(key: Key, *, now: datetime, automatic: bool = False) -> Key:
    """Marks the purge as started: from here on the key reads as not found.

    ``automatic``: the 90-day purge, which needs no role and skips the 4-hour check. Raises
    what :func:`purge_check` raises; for ``automatic``, WrongState unless it is due.
    """
    if automatic:
        check_readable(key)
        if not auto_purge_due(key, now):
            raise WrongState("the key is not due for its automatic purge")
    else:
        purge_check(key, now=now)
    return replace(key, purge_started=now)


# --- registrations -------------------------------------------------------------------------


def _resolve_version(key: Key, key_version_id: str | None) -> KeyVersion:
    if key_version_id is None:
        return key.latest_version
    version = key.version(key_version_id)
    if version is None:
        raise Unprocessable(
            "the key has no version with that id", reason_code="KEY_VERSION_INVALID"
        )
    return version


def _require_registrable(key: Key, now: datetime) -> Key:
    key = expire(key, now)
    check_readable(key)
    if not key.is_root:
        raise Unprocessable("only root keys can be registered", reason_code="KEY_ROOT_REQ_REG_ERR")
    if key.state is not KeyState.ACTIVE:
        raise Unprocessable(
            f"expected key state Active to register, got {key.state.label}",
            reason_code="KEY_INVALID_STATE_ERR",
        )
    return key


def register(
    key: Key,
    *,
    now: datetime,
    actor: str,
    crn: str,
    description: str = "",
    prevent_key_deletion: bool = False,
    key_version_id: str | None = None,
) -> Key:
    """Records that the resource ``crn`` uses the key (at ``key_version_id``, default latest).

    Raises InvalidArgument (CRN, description), Unprocessable (``KEY_ROOT_REQ_REG_ERR``,
    ``KEY_INVALID_STATE_ERR`` unless Active, ``KEY_VERSION_INVALID``), Conflict (the CRN is
    registered already).
    """
    check_crn(crn)
    check_description(description)
    key = _require_registrable(key, now)
    if key.registration(crn) is not None:
        raise Conflict("the resource is already registered with this key")
    version = _resolve_version(key, key_version_id)
    reg = Registration(
        key_id=key.id,
        resource_crn=crn,
        created_by=actor,
        creation_date=now,
        updated_by=actor,
        last_updated=now,
        key_version_id=version.id,
        key_version_creation_date=version.creation_date,
        description=description,
        prevent_key_deletion=prevent_key_deletion,
    )
    return replace(key, last_update=now, registrations=(*key.registrations, reg))


def _with_registration(key: Key, now: datetime, reg: Registration) -> Key:
    regs = tuple(reg if r.resource_crn == reg.resource_crn else r for r in key.registrations)
    return replace(key, last_update=now, registrations=regs)


def update_registration(
    key: Key,
    *,
    now: datetime,
    actor: str,
    crn: str,
    description: str | None = None,
    prevent_key_deletion: bool | None = None,
) -> Key:
    """Changes a registration's description or ``preventKeyDeletion`` (PATCH).

    Works in any state but a purge. Raises InvalidArgument, NotFound (no such registration).
    """
    check_now(now)
    check_crn(crn)
    check_readable(key)
    reg = key.registration(crn)
    if reg is None:
        raise NotFound("the key has no registration for that resource")
    if description is not None:
        reg = replace(reg, description=check_description(description))
    if prevent_key_deletion is not None:
        reg = replace(reg, prevent_key_deletion=prevent_key_deletion)
    return _with_registration(key, now, replace(reg, updated_by=actor, last_updated=now))


def replace_registration(
    key: Key,
    *,
    now: datetime,
    actor: str,
    crn: str,
    description: str = "",
    prevent_key_deletion: bool = False,
    key_version_id: str | None = None,
) -> Key:
    """Creates or replaces a registration (PUT); its key version may only move forward.

    Raises InvalidArgument, Unprocessable (``KEY_ROOT_REQ_REG_ERR``,
    ``KEY_INVALID_STATE_ERR``, ``KEY_VERSION_INVALID``: an unknown version, or one older than
    the version recorded).
    """
    check_crn(crn)
    check_description(description)
    key = _require_registrable(key, now)
    old = key.registration(crn)
    if old is None:
        return register(
            key,
            now=now,
            actor=actor,
            crn=crn,
            description=description,
            prevent_key_deletion=prevent_key_deletion,
            key_version_id=key_version_id,
        )
    version = _resolve_version(key, key_version_id)
    old_index = key.version_index(old.key_version_id)
    new_index = key.version_index(version.id)
    if old_index is not None and new_index is not None and new_index < old_index:
        raise Unprocessable(
            "a registration's key version must be the one recorded or a later one",
            reason_code="KEY_VERSION_INVALID",
        )
    reg = replace(
        old,
        updated_by=actor,
        last_updated=now,
        key_version_id=version.id,
        key_version_creation_date=version.creation_date,
        description=description,
        prevent_key_deletion=prevent_key_deletion,
    )
    return _with_registration(key, now, reg)


def unregister(key: Key, *, now: datetime, crn: str) -> Key:
    """Removes the registration of ``crn``. Raises InvalidArgument, NotFound."""
    check_now(now)
    check_crn(crn)
    check_readable(key)
    if key.registration(crn) is None:
        raise NotFound("the key has no registration for that resource")
    regs = tuple(r for r in key.registrations if r.resource_crn != crn)
    return replace(key, last_update=now, registrations=regs)


# --- aliases, rings, policies --------------------------------------------------------------


def add_alias(key: Key, alias: str, *, now: datetime) -> Key:
    """Adds ``alias`` to the key (at most 5 per key). Uniqueness in the instance is the
    store's job (an alias index entry created in the same transaction).

    Raises InvalidArgument (bad alias; ``KEY_ALIAS_QUOTA_ERR`` for a sixth), Conflict
    (``KEY_ALIAS_NOT_UNIQUE_ERR``: the key has it already), Gone, NotFound (purging).
    """
    check_now(now)
    check_alias(alias)
    key = expire(key, now)
    _require_state(key, "adding an alias", LIVE_STATES)
    if alias in key.aliases:
        raise Conflict("the key already has that alias", reason_code="KEY_ALIAS_NOT_UNIQUE_ERR")
    if len(key.aliases) >= MAX_ALIASES_PER_KEY:
        raise InvalidArgument(
            f"a key can have at most {MAX_ALIASES_PER_KEY} aliases",
            reason_code="KEY_ALIAS_QUOTA_ERR",
        )
    return replace(key, last_update=now, aliases=(*key.aliases, alias))


def remove_alias(key: Key, alias: str, *, now: datetime) -> Key:
    """Removes ``alias`` from the key (in any state). Raises NotFound."""
    check_now(now)
    check_readable(key)
    if alias not in key.aliases:
        raise NotFound("the key has no such alias")
    return replace(key, last_update=now, aliases=tuple(a for a in key.aliases if a != alias))


def move_to_ring(key: Key, ring_id: str, *, now: datetime) -> Key:
    """Moves the key to key ring ``ring_id`` (whose existence is the caller's check).

    Raises InvalidArgument (bad ring id), Gone (a Destroyed key stays where it is).
    """
    check_now(now)
    check_ring_id(ring_id)
    key = expire(key, now)
    _require_state(key, "moving to another key ring", LIVE_STATES)
    if key.key_ring_id == ring_id:
        return key
    return replace(key, last_update=now, key_ring_id=ring_id)


def set_key_policies(
    key: Key,
    *,
    now: datetime,
    actor: str,
    rotation: RotationPolicy | None = None,
    dual_auth_delete: bool | None = None,
) -> Key:
    """Sets the key's rotation and/or dual authorization delete policy (None = unchanged).

    A dual authorization policy, once enabled on a key, cannot be disabled. Raises
    InvalidArgument (interval, disabling dual authorization, rotation policy on an imported
    key), NotAllowed (``KEY_ROOT_REQ_ERR``: rotation policy on a standard key), Gone.
    """
    check_now(now)
    key = expire(key, now)
    _require_state(key, "setting policies", LIVE_STATES)
    if rotation is not None:
        checked = _checked_rotation(
            rotation, root=key.is_root, imported=key.imported, now=now, actor=actor
        )
        old = key.rotation.stamp if key.rotation is not None else None
        key = replace(
            key, last_update=now, rotation=replace(checked, stamp=_stamp(old, now=now, actor=actor))
        )
    if dual_auth_delete is not None:
        if key.dual_auth.enabled and not dual_auth_delete:
            raise InvalidArgument(
                "a key's dual authorization policy cannot be disabled once it is set"
            )
        if dual_auth_delete and not key.dual_auth.enabled:
            dual = replace(
                key.dual_auth,
                enabled=True,
                stamp=_stamp(key.dual_auth.stamp, now=now, actor=actor),
            )
            key = replace(key, last_update=now, dual_auth=dual)
    return key


def set_instance_policies(
    policies: InstancePolicies,
    *,
    now: datetime,
    actor: str,
    dual_auth_delete: bool | None = None,
    rotation: RotationPolicy | None = None,
) -> InstancePolicies:
    """The instance's policies after a PUT (None = unchanged). New keys inherit them.

    Raises InvalidArgument (interval_month outside 1 to 12, an enabled rotation without one).
    """
    check_now(now)
    if dual_auth_delete is not None:
        policies = replace(
            policies,
            dual_auth_delete=dual_auth_delete,
            dual_auth_stamp=_stamp(policies.dual_auth_stamp, now=now, actor=actor),
        )
    if rotation is not None:
        if rotation.enabled and rotation.interval_month is None:
            raise InvalidArgument("expected interval_month for an enabled rotation policy")
        if rotation.interval_month is not None:
            check_interval_month(rotation.interval_month)
        old = policies.rotation.stamp if policies.rotation is not None else None
        policies = replace(
            policies, rotation=replace(rotation, stamp=_stamp(old, now=now, actor=actor))
        )
    return policies


def new_key_ring(ring_id: str, *, now: datetime, actor: str) -> KeyRing:
    """A new key ring. Raises InvalidArgument (bad id, or ``default``, which always exists)."""
    check_now(now)
    check_ring_id(ring_id)
    if ring_id == DEFAULT_RING:
        raise Conflict("the default key ring always exists")
    return KeyRing(id=ring_id, creation_date=now, created_by=actor)


def add_key_ring(rings: Sequence[KeyRing], ring: KeyRing) -> tuple[KeyRing, ...]:
    """The instance's rings plus ``ring``. Raises Conflict (exists), InvalidArgument (51st)."""
    if any(r.id == ring.id for r in rings):
        raise Conflict("a key ring with that id exists")
    # The default ring counts towards Key Protect's limit of 50.
    if len(rings) + 1 >= MAX_RINGS_PER_INSTANCE:
        raise InvalidArgument(f"an instance can have at most {MAX_RINGS_PER_INSTANCE} key rings")
    return (*rings, ring)


# --- import tokens -------------------------------------------------------------------------


def new_import_token(
    *,
    instance: str,
    now: datetime,
    actor: str,
    nonce: bytes,
    public_key_der: bytes,
    sealed_private_key: SealedMaterial,
    expiration_seconds: int = IMPORT_TOKEN_DEFAULT_SECONDS,
    max_allowed_retrievals: int = IMPORT_TOKEN_DEFAULT_RETRIEVALS,
) -> ImportToken:
    """A new import token: valid 300 to 86,400 s (default 600), 1 to 500 retrievals.

    Raises InvalidArgument.
    """
    check_now(now)
    check_instance(instance)
    if (
        isinstance(expiration_seconds, bool)
        or not IMPORT_TOKEN_MIN_SECONDS <= expiration_seconds <= IMPORT_TOKEN_MAX_SECONDS
    ):
        raise InvalidArgument(
            f"expected an import token expiration from {IMPORT_TOKEN_MIN_SECONDS} to "
            f"{IMPORT_TOKEN_MAX_SECONDS} seconds, got {expiration_seconds!r}"
        )
    if (
        isinstance(max_allowed_retrievals, bool)
        or not 1 <= max_allowed_retrievals <= IMPORT_TOKEN_MAX_RETRIEVALS
    ):
        raise InvalidArgument(
            f"expected maxAllowedRetrievals from 1 to {IMPORT_TOKEN_MAX_RETRIEVALS}, "
            f"got {max_allowed_retrievals!r}"
        )
    if len(nonce) != IMPORT_TOKEN_NONCE_BYTES:
        raise InvalidArgument(f"expected a {IMPORT_TOKEN_NONCE_BYTES}-byte import nonce")
    return ImportToken(
        instance=instance,
        creation_date=now,
        expiration_date=now + timedelta(seconds=expiration_seconds),
        max_allowed_retrievals=max_allowed_retrievals,
        remaining_retrievals=max_allowed_retrievals,
        created_by=actor,
        nonce=nonce,
        public_key_der=public_key_der,
        sealed_private_key=sealed_private_key,
    )


def retrieve_import_token(token: ImportToken, *, now: datetime) -> ImportToken:
    """The token after one more retrieval. Raises Conflict (``IMPORT_TOKEN_EXPIRED_ERR``:
    expired, or no retrievals left)."""
    check_usable_import_token(token, now=now)
    if token.remaining_retrievals < 1:
        raise Conflict(
            "the import token has no retrievals left; create a new one",
            reason_code="IMPORT_TOKEN_EXPIRED_ERR",
        )
    return replace(token, remaining_retrievals=token.remaining_retrievals - 1)


def check_usable_import_token(token: ImportToken, *, now: datetime) -> ImportToken:
    """The token if it has not expired. Raises Conflict (``IMPORT_TOKEN_EXPIRED_ERR``)."""
    check_now(now)
    if token.expired(now):
        raise Conflict("the import token has expired", reason_code="IMPORT_TOKEN_EXPIRED_ERR")
    return token


# --- wrap ciphertext and AAD ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrappedDek:
    """The parts of a wrap ciphertext: AES-GCM ``ciphertext‖tag``, its 12-byte ``iv``, and the
    id of the key version that wrapped it."""

    ciphertext: bytes = field(repr=False)
    iv: bytes
    version_id: str


_WRAP_FIELDS: Final = frozenset({"ciphertext", "iv", "version", "handle"})


def encode_ciphertext(wrapped: WrappedDek) -> str:
    """Key Protect's opaque ``ciphertext``: base64 of JSON
    ``{"ciphertext": b64, "iv": b64, "version": "4.0.0", "handle": <version id>}``.

    Built by hand, byte for byte what ``json.dumps(doc, separators=(",", ":"))`` gives (the
    base64 fields need no escaping; the handle is escaped by json's own encoder): this runs on
    every wrap, and json.dumps of a dict costs several times more.
    """
    text = (
        _WRAP_DOC_START
        + binascii.b2a_base64(wrapped.ciphertext, newline=False)
        + _WRAP_DOC_IV
        + binascii.b2a_base64(wrapped.iv, newline=False)
        + _WRAP_DOC_HANDLE
        + _json_string(wrapped.version_id).encode("ascii")
        + b"}"
    )
    return binascii.b2a_base64(text, newline=False).decode("ascii")


_WRAP_DOC_START: Final = b'{"ciphertext":"'
_WRAP_DOC_IV: Final = b'","iv":"'
_WRAP_DOC_HANDLE: Final = (
    b'","version":' + json.dumps(WRAP_FORMAT_VERSION).encode("ascii") + b',"handle":'
)
#: The document :func:`encode_ciphertext` writes, field values captured (base64 alphabet,
#: lowercase UUID): :func:`parse_ciphertext` reads it without a JSON parser.
_WRAP_DOC_RE: Final = re.compile(
    rb'\{"ciphertext":"([A-Za-z0-9+/]*={0,2})","iv":"([A-Za-z0-9+/]*={0,2})","version":'
    + re.escape(json.dumps(WRAP_FORMAT_VERSION).encode("ascii"))
    + rb',"handle":"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"\}'
)
_json_string: Final = json.encoder.encode_basestring_ascii


def _malformed() -> UnprocessableCiphertext:
    return UnprocessableCiphertext(UnprocessableCiphertext.MALFORMED)


def _b64(text: object) -> bytes:
    """Canonical padded base64, given as text or as its ASCII bytes. Raises
    UnprocessableCiphertext (MALFORMED)."""
    if isinstance(text, str):
        if not text.isascii():
            raise _malformed()
        encoded = text.encode("ascii")
    elif isinstance(text, bytes):
        encoded = text
    else:
        raise _malformed()
    try:
        data = binascii.a2b_base64(encoded, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _malformed() from None
    # Canonical only (zero padding bits): every change to the text is a change to the bytes.
    # Whatever a decoder accepts, only the text that re-encodes to itself passes here.
    if binascii.b2a_base64(data, newline=False) != encoded:
        raise _malformed()
    return data


def parse_ciphertext(text: str) -> WrappedDek:
    """Parses a wrap ciphertext. Strict: canonical standard padded base64 (outside and in the
    fields), exactly the four fields, version 4.0.0, a 12-byte iv, at least a tag of
    ciphertext, a lowercase UUID handle. So any change to the text is either malformed or
    changes bytes that AES-GCM authenticates.

    Raises UnprocessableCiphertext (``UNPROCESSABLE_CIPHERTEXT_ERR``, reason MALFORMED) for
    anything else; the message never repeats the input.
    """
    if not isinstance(text, str) or not text or len(text) > MAX_CIPHERTEXT_CHARS:
        raise _malformed()
    raw = _b64(text)
    canonical = _WRAP_DOC_RE.fullmatch(raw)
    if canonical is not None:
        # What encode_ciphertext writes: the same fields json.loads would give, already
        # known to be of the right alphabets (so ASCII), the version checked by the pattern.
        ciphertext_field, iv_field, handle_field = canonical.group(1, 2, 3)
        ciphertext = _b64(ciphertext_field)
        iv = _b64(iv_field)
        handle = handle_field.decode("ascii")
    else:
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _malformed() from None
        if not isinstance(doc, dict) or set(doc) != _WRAP_FIELDS:
            raise _malformed()
        if doc["version"] != WRAP_FORMAT_VERSION:
            raise _malformed()
        handle = doc["handle"]
        if not isinstance(handle, str) or not is_key_id(handle):
            raise _malformed()
        ciphertext = _b64(doc["ciphertext"])
        iv = _b64(doc["iv"])
    if len(iv) != WRAP_NONCE_BYTES or len(ciphertext) < WRAP_TAG_BYTES:
        raise _malformed()
    return WrappedDek(ciphertext=ciphertext, iv=iv, version_id=handle)


def _lp(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack(">I", len(data)) + data


_WRAP_AAD_DOMAIN: Final = b"kinko/key-service/wrap/v1\x00"
_SEAL_AAD_DOMAIN: Final = b"kinko/key-service/seal/v1\x00"


def wrap_aad(*, instance: str, key_id: str, version_id: str, aad: Sequence[str]) -> bytes:
    """The AES-GCM AAD of a wrap: the caller's ``aad`` strings bound to the key and version.

    Encoding (unambiguous: every part is length-prefixed, so no two different inputs give the
    same bytes)::

        "kinko/key-service/wrap/v1" 0x00
        lp(instance) lp(key_id) lp(version_id) u32(len(aad)) lp(aad[0]) … lp(aad[n-1])

    where ``lp(s)`` is the 4-byte big-endian length of UTF-8 ``s`` followed by those bytes.
    A ciphertext of key A therefore never unwraps under key B, even if both versions named
    the same HSM object. Raises InvalidArgument (an aad string over 255 characters, or one
    that is not encodable as UTF-8).
    """
    return wrap_aad_checked(
        instance=instance, key_id=key_id, version_id=version_id, items=check_aad(aad)
    )


def wrap_aad_checked(
    *, instance: str, key_id: str, version_id: str, items: tuple[str, ...]
) -> bytes:
    """:func:`wrap_aad` of strings :func:`check_aad` has already returned (wrap, unwrap and
    rewrap check the caller's ``aad`` once, before they need the AAD). Raises nothing."""
    head = _wrap_aad_head(instance, key_id, version_id)
    if not items:
        return head + _NO_ITEMS
    return head + struct.pack(">I", len(items)) + b"".join([_lp(item) for item in items])


_NO_ITEMS: Final = struct.pack(">I", 0)


@functools.lru_cache(maxsize=4096)
def _wrap_aad_head(instance: str, key_id: str, version_id: str) -> bytes:
    """The part of a wrap AAD that names the key version: the same for every wrap with it,
    so it is built once (a pure function of its arguments; the cache is bounded)."""
    return _WRAP_AAD_DOMAIN + _lp(instance) + _lp(key_id) + _lp(version_id)


def seal_aad(purpose: str, *parts: str) -> bytes:
    """The AAD for sealing under the metadata KEK: a purpose and the record's identity, each
    length-prefixed (same scheme as :func:`wrap_aad`), so a sealed blob cannot be moved to
    another record or purpose."""
    return _SEAL_AAD_DOMAIN + _lp(purpose) + b"".join(_lp(p) for p in parts)
