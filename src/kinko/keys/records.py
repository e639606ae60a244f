"""The stored form of the key service's records: JSON documents, one per store entry.

Job: turn the frozen values of :mod:`kinko.keys.model` into UTF-8 JSON bytes and back, and
name where each lives in the store.

Layout under the store (``<instance>`` is an instance id, which cannot contain ``/``)::

    /kinko/keys/<instance>/<key id>        a Key
    /kinko/aliases/<instance>/<alias>      an AliasEntry (the alias index: unique per instance)
    /kinko/rings/<instance>                every KeyRing of the instance except ``default``
    /kinko/policies/<instance>             the InstancePolicies
    /kinko/import-tokens/<instance>        the ImportToken (one per instance)
    /kinko/tokens/<sha256 of token>        a bearer token's record (kinko.keys.auth)
    /kinko/service/metadata-kek            the handle of the metadata KEK in the HSM

Invariants:

- Pure: bytes in, bytes out; no clock, no I/O.
- Every document has ``"v": 1``; a reader refuses other versions.
- A record that does not decode, or lacks or mistypes a field, raises
  :class:`~kinko.errors.CorruptMetadata` (``INCOMPLETE_METADATA_ERR``) naming the field, never
  a value. HSM handles and sealed material are stored (they are what the record is for) but
  never in clear: a standard key's material is sealed under the metadata KEK, and a root
  key's material never leaves the HSM at all.
- Times are stored as ISO 8601 with offset and read back as aware UTC datetimes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final, TypeVar

from kinko.errors import CorruptMetadata
from kinko.keys.model import (
    AliasEntry,
    Deletion,
    DualAuth,
    ImportToken,
    InstancePolicies,
    Key,
    KeyRing,
    KeyState,
    KeyVersion,
    PolicyStamp,
    Registration,
    RotationPolicy,
    SealedMaterial,
)

SCHEMA: Final = 1
PREFIX: Final = b"/kinko/"
KEYS: Final = b"/kinko/keys/"
ALIASES: Final = b"/kinko/aliases/"
RINGS: Final = b"/kinko/rings/"
POLICIES: Final = b"/kinko/policies/"
IMPORT_TOKENS: Final = b"/kinko/import-tokens/"
TOKENS: Final = b"/kinko/tokens/"
METADATA_KEK: Final = b"/kinko/service/metadata-kek"

T = TypeVar("T")
Doc = dict[str, object]


def key_path(instance: str, key_id: str) -> bytes:
    """Where a key lives."""
    return KEYS + f"{instance}/{key_id}".encode()


def keys_prefix(instance: str) -> bytes:
    """The prefix of every key of an instance."""
    return KEYS + f"{instance}/".encode()


def alias_path(instance: str, alias: str) -> bytes:
    """Where an alias index entry lives."""
    return ALIASES + f"{instance}/{alias}".encode()


def aliases_prefix(instance: str) -> bytes:
    """The prefix of every alias index entry of an instance."""
    return ALIASES + f"{instance}/".encode()


def rings_path(instance: str) -> bytes:
    """Where an instance's key rings live."""
    return RINGS + instance.encode()


def policies_path(instance: str) -> bytes:
    """Where an instance's policies live."""
    return POLICIES + instance.encode()


def import_token_path(instance: str) -> bytes:
    """Where an instance's import token lives."""
    return IMPORT_TOKENS + instance.encode()


# --- primitives ----------------------------------------------------------------------------


def _time(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def _opt_time(dt: datetime | None) -> str | None:
    return None if dt is None else _time(dt)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _dump(doc: Doc) -> bytes:
    return json.dumps({"v": SCHEMA, **doc}, separators=(",", ":"), sort_keys=True).encode()


class _Reader:
    """Typed access to one decoded JSON object; every miss is CorruptMetadata."""

    __slots__ = ("_doc", "_what")

    def __init__(self, doc: object, what: str) -> None:
        if not isinstance(doc, dict):
            raise CorruptMetadata(f"stored {what} is not a JSON object")
        self._doc: Mapping[str, object] = doc
        self._what = what

    def _bad(self, name: str, expected: str) -> CorruptMetadata:
        return CorruptMetadata(f"stored {self._what}: field {name!r} is not {expected}")

    def _get(self, name: str) -> object:
        if name not in self._doc:
            raise CorruptMetadata(f"stored {self._what}: field {name!r} is missing")
        return self._doc[name]

    def text(self, name: str) -> str:
        value = self._get(name)
        if not isinstance(value, str):
            raise self._bad(name, "a string")
        return value

    def opt_text(self, name: str) -> str | None:
        value = self._doc.get(name)
        if value is not None and not isinstance(value, str):
            raise self._bad(name, "a string or null")
        return value

    def flag(self, name: str) -> bool:
        value = self._get(name)
        if not isinstance(value, bool):
            raise self._bad(name, "a boolean")
        return value

    def integer(self, name: str) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "an integer")
        return value

    def opt_integer(self, name: str) -> int | None:
        value = self._doc.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(name, "an integer or null")
        return value

    def time(self, name: str) -> datetime:
        return self._parse_time(name, self.text(name))

    def opt_time(self, name: str) -> datetime | None:
        text = self.opt_text(name)
        return None if text is None else self._parse_time(name, text)

    def _parse_time(self, name: str, text: str) -> datetime:
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise self._bad(name, "an ISO 8601 time") from None
        if dt.tzinfo is None:
            raise self._bad(name, "a time with an offset")
        return dt.astimezone(UTC)

    def blob(self, name: str) -> bytes:
        text = self.text(name)
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise self._bad(name, "base64") from None

    def obj(self, name: str, what: str) -> _Reader:
        return _Reader(self._get(name), f"{self._what}.{what}")

    def opt_obj(self, name: str, what: str) -> _Reader | None:
        value = self._doc.get(name)
        return None if value is None else _Reader(value, f"{self._what}.{what}")

    def array(self, name: str) -> list[object]:
        value = self._get(name)
        if not isinstance(value, list):
            raise self._bad(name, "a list")
        return value


def _load(data: bytes, what: str) -> _Reader:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CorruptMetadata(f"stored {what} is not JSON") from None
    reader = _Reader(doc, what)
    if reader.integer("v") != SCHEMA:
        raise CorruptMetadata(f"stored {what} has schema {reader.integer('v')}, expected {SCHEMA}")
    return reader


def _items(reader: _Reader, name: str, what: str, parse: Callable[[_Reader], T]) -> tuple[T, ...]:
    return tuple(parse(_Reader(item, what)) for item in reader.array(name))


# --- pieces --------------------------------------------------------------------------------


def _stamp_doc(stamp: PolicyStamp | None) -> Doc | None:
    if stamp is None:
        return None
    return {
        "createdBy": stamp.created_by,
        "creationDate": _time(stamp.creation_date),
        "updatedBy": stamp.updated_by,
        "lastUpdateDate": _time(stamp.last_update),
    }


def _stamp_read(r: _Reader | None) -> PolicyStamp | None:
    if r is None:
        return None
    return PolicyStamp(
        created_by=r.text("createdBy"),
        creation_date=r.time("creationDate"),
        updated_by=r.text("updatedBy"),
        last_update=r.time("lastUpdateDate"),
    )


def _rotation_doc(rotation: RotationPolicy | None) -> Doc | None:
    if rotation is None:
        return None
    return {
        "enabled": rotation.enabled,
        "intervalMonth": rotation.interval_month,
        "stamp": _stamp_doc(rotation.stamp),
    }


def _rotation_read(r: _Reader | None) -> RotationPolicy | None:
    if r is None:
        return None
    return RotationPolicy(
        enabled=r.flag("enabled"),
        interval_month=r.opt_integer("intervalMonth"),
        stamp=_stamp_read(r.opt_obj("stamp", "stamp")),
    )


def _sealed_doc(sealed: SealedMaterial) -> Doc:
    return {"nonce": _b64(sealed.nonce), "ciphertext": _b64(sealed.ciphertext)}


def _sealed_read(r: _Reader) -> SealedMaterial:
    return SealedMaterial(nonce=r.blob("nonce"), ciphertext=r.blob("ciphertext"))


def _version_doc(v: KeyVersion) -> Doc:
    return {
        "id": v.id,
        "creationDate": _time(v.creation_date),
        "hsmHandle": v.hsm_handle,
        "sealed": None if v.sealed is None else _sealed_doc(v.sealed),
    }


def _version_read(r: _Reader) -> KeyVersion:
    sealed = r.opt_obj("sealed", "sealed")
    version = KeyVersion(
        id=r.text("id"),
        creation_date=r.time("creationDate"),
        hsm_handle=r.opt_text("hsmHandle"),
        sealed=None if sealed is None else _sealed_read(sealed),
    )
    if (version.hsm_handle is None) == (version.sealed is None):
        raise CorruptMetadata("stored key version has neither or both of handle and material")
    return version


def _registration_doc(reg: Registration) -> Doc:
    return {
        "keyId": reg.key_id,
        "resourceCrn": reg.resource_crn,
        "createdBy": reg.created_by,
        "creationDate": _time(reg.creation_date),
        "updatedBy": reg.updated_by,
        "lastUpdated": _time(reg.last_updated),
        "keyVersionId": reg.key_version_id,
        "keyVersionCreationDate": _time(reg.key_version_creation_date),
        "description": reg.description,
        "preventKeyDeletion": reg.prevent_key_deletion,
    }


def _registration_read(r: _Reader) -> Registration:
    return Registration(
        key_id=r.text("keyId"),
        resource_crn=r.text("resourceCrn"),
        created_by=r.text("createdBy"),
        creation_date=r.time("creationDate"),
        updated_by=r.text("updatedBy"),
        last_updated=r.time("lastUpdated"),
        key_version_id=r.text("keyVersionId"),
        key_version_creation_date=r.time("keyVersionCreationDate"),
        description=r.text("description"),
        prevent_key_deletion=r.flag("preventKeyDeletion"),
    )


# --- keys ----------------------------------------------------------------------------------


def dump_key(key: Key) -> bytes:
    """The stored form of a key."""
    return _dump(
        {
            "id": key.id,
            "instance": key.instance,
            "name": key.name,
            "description": key.description,
            "extractable": key.extractable,
            "imported": key.imported,
            "state": int(key.state),
            "versions": [_version_doc(v) for v in key.versions],
            "bitLength": key.bit_length,
            "creationDate": _time(key.creation_date),
            "createdBy": key.created_by,
            "lastUpdateDate": _time(key.last_update),
            "lastStateChange": _time(key.last_state_change),
            "keyRingID": key.key_ring_id,
            "aliases": list(key.aliases),
            "lastRotateDate": _opt_time(key.last_rotate),
            "expirationDate": _opt_time(key.expiration_date),
            "dualAuth": {
                "enabled": key.dual_auth.enabled,
                "setForDeletionBy": key.dual_auth.set_for_deletion_by,
                "authExpiration": _opt_time(key.dual_auth.auth_expiration),
                "stamp": _stamp_doc(key.dual_auth.stamp),
            },
            "rotation": _rotation_doc(key.rotation),
            "deletion": None
            if key.deletion is None
            else {
                "deletedBy": key.deletion.deleted_by,
                "deletionDate": _time(key.deletion.deletion_date),
            },
            "registrations": [_registration_doc(r) for r in key.registrations],
            "purgeStarted": _opt_time(key.purge_started),
        }
    )


def load_key(data: bytes) -> Key:
    """A key from its stored form. Raises CorruptMetadata."""
    r = _load(data, "key")
    try:
        state = KeyState(r.integer("state"))
    except ValueError:
        raise CorruptMetadata("stored key has an unknown state") from None
    dual = r.obj("dualAuth", "dualAuth")
    deletion = r.opt_obj("deletion", "deletion")
    versions = _items(r, "versions", "key version", _version_read)
    if not versions:
        raise CorruptMetadata("stored key has no versions")
    aliases = r.array("aliases")
    if not all(isinstance(a, str) for a in aliases):
        raise CorruptMetadata("stored key: field 'aliases' is not a list of strings")
    return Key(
        id=r.text("id"),
        instance=r.text("instance"),
        name=r.text("name"),
        description=r.text("description"),
        extractable=r.flag("extractable"),
        imported=r.flag("imported"),
        state=state,
        versions=versions,
        bit_length=r.integer("bitLength"),
        creation_date=r.time("creationDate"),
        created_by=r.text("createdBy"),
        last_update=r.time("lastUpdateDate"),
        last_state_change=r.time("lastStateChange"),
        key_ring_id=r.text("keyRingID"),
        aliases=tuple(str(a) for a in aliases),
        last_rotate=r.opt_time("lastRotateDate"),
        expiration_date=r.opt_time("expirationDate"),
        dual_auth=DualAuth(
            enabled=dual.flag("enabled"),
            set_for_deletion_by=dual.opt_text("setForDeletionBy"),
            auth_expiration=dual.opt_time("authExpiration"),
            stamp=_stamp_read(dual.opt_obj("stamp", "stamp")),
        ),
        rotation=_rotation_read(r.opt_obj("rotation", "rotation")),
        deletion=None
        if deletion is None
        else Deletion(
            deleted_by=deletion.text("deletedBy"), deletion_date=deletion.time("deletionDate")
        ),
        registrations=_items(r, "registrations", "registration", _registration_read),
        purge_started=r.opt_time("purgeStarted"),
    )


# --- the rest ------------------------------------------------------------------------------


def dump_alias(entry: AliasEntry) -> bytes:
    """The stored form of an alias index entry."""
    return _dump(
        {
            "alias": entry.alias,
            "keyId": entry.key_id,
            "creationDate": _time(entry.creation_date),
            "createdBy": entry.created_by,
        }
    )


def load_alias(data: bytes) -> AliasEntry:
    """An alias index entry from its stored form. Raises CorruptMetadata."""
    r = _load(data, "alias")
    return AliasEntry(
        alias=r.text("alias"),
        key_id=r.text("keyId"),
        creation_date=r.time("creationDate"),
        created_by=r.text("createdBy"),
    )


def dump_rings(rings: tuple[KeyRing, ...]) -> bytes:
    """The stored form of an instance's key rings."""
    return _dump(
        {
            "rings": [
                {
                    "id": r.id,
                    "creationDate": _opt_time(r.creation_date),
                    "createdBy": r.created_by,
                }
                for r in rings
            ]
        }
    )


def load_rings(data: bytes) -> tuple[KeyRing, ...]:
    """An instance's key rings from their stored form. Raises CorruptMetadata."""
    r = _load(data, "key rings")
    return _items(
        r,
        "rings",
        "key ring",
        lambda x: KeyRing(
            id=x.text("id"),
            creation_date=x.opt_time("creationDate"),
            created_by=x.opt_text("createdBy"),
        ),
    )


def dump_policies(policies: InstancePolicies) -> bytes:
    """The stored form of an instance's policies."""
    return _dump(
        {
            "dualAuthDelete": policies.dual_auth_delete,
            "dualAuthStamp": _stamp_doc(policies.dual_auth_stamp),
            "rotation": _rotation_doc(policies.rotation),
        }
    )


def load_policies(data: bytes) -> InstancePolicies:
    """An instance's policies from their stored form. Raises CorruptMetadata."""
    r = _load(data, "instance policies")
    return InstancePolicies(
        dual_auth_delete=r.flag("dualAuthDelete"),
        dual_auth_stamp=_stamp_read(r.opt_obj("dualAuthStamp", "stamp")),
        rotation=_rotation_read(r.opt_obj("rotation", "rotation")),
    )


def dump_import_token(token: ImportToken) -> bytes:
    """The stored form of an import token (its private key sealed, never in clear)."""
    return _dump(
        {
            "instance": token.instance,
            "creationDate": _time(token.creation_date),
            "expirationDate": _time(token.expiration_date),
            "maxAllowedRetrievals": token.max_allowed_retrievals,
            "remainingRetrievals": token.remaining_retrievals,
            "createdBy": token.created_by,
            "nonce": _b64(token.nonce),
            "publicKey": _b64(token.public_key_der),
            "sealedPrivateKey": _sealed_doc(token.sealed_private_key),
        }
    )


def load_import_token(data: bytes) -> ImportToken:
    """An import token from its stored form. Raises CorruptMetadata."""
    r = _load(data, "import token")
    return ImportToken(
        instance=r.text("instance"),
        creation_date=r.time("creationDate"),
        expiration_date=r.time("expirationDate"),
        max_allowed_retrievals=r.integer("maxAllowedRetrievals"),
        remaining_retrievals=r.integer("remainingRetrievals"),
        created_by=r.text("createdBy"),
        nonce=r.blob("nonce"),
        public_key_der=r.blob("publicKey"),
        sealed_private_key=_sealed_read(r.obj("sealedPrivateKey", "sealedPrivateKey")),
    )


def dump_kek_handle(handle: str) -> bytes:
    """The stored form of the metadata KEK's HSM handle."""
    return _dump({"handle": handle})


def load_kek_handle(data: bytes) -> str:
    """The metadata KEK's HSM handle. Raises CorruptMetadata."""
    return _load(data, "metadata KEK").text("handle")
