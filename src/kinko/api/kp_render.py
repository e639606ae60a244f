"""Key Protect JSON for the key service's results: pure functions, value in, dict out.

Job: turn :mod:`kinko.keys.results` and the model's registrations, key rings and aliases into
the resource objects Key Protect API v2 returns, with its field names (camelCase, and
``interval_month`` / ``policy_type`` where Key Protect uses snake case), RFC 3339 times
(``2020-03-10T20:41:27Z``), standard base64 for bytes, and optional fields left out rather
than sent as null (as Key Protect, a Go service with ``omitempty``, does). The bodies of wrap,
unwrap and rewrap, the hot path, come as JSON bytes (:func:`wrap_json` and its twins), byte
for byte what ``kp_wire.dumps`` makes of the same fields as a dict.

Invariant: secret bytes (a standard key's ``payload``, a wrap's ``plaintext``, an import
token's nonce) appear only in the dicts of the one response that returns them; nothing here
logs or keeps them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Final

from kinko.api.kp_wire import MEDIA_KEY, MEDIA_POLICY, b64encode, rfc3339
from kinko.keys.model import (
    AliasEntry,
    InstancePolicies,
    KeyRing,
    PolicyStamp,
    Registration,
    RotationPolicy,
)
from kinko.keys.results import (
    ImportTokenInfo,
    ImportTokenKey,
    KeyPolicies,
    KeyView,
    RewrapResult,
    UnwrapResult,
    VersionRef,
    WrapResult,
)

Json = dict[str, object]


def version(ref: VersionRef) -> Json:
    """``keyVersion``: id and creation date."""
    return {"id": ref.id, "creationDate": rfc3339(ref.creation_date)}


def _put_time(doc: Json, name: str, moment: datetime | None) -> None:
    if moment is not None:
        doc[name] = rfc3339(moment)


def key(view: KeyView) -> Json:
    """A key resource (``application/vnd.ibm.kms.key+json``)."""
    bits = view.algorithm_bit_size
    doc: Json = {
        "type": MEDIA_KEY,
        "id": view.id,
        "name": view.name,
    }
    if view.aliases:
        doc["aliases"] = list(view.aliases)
    if view.description:
        doc["description"] = view.description
    doc.update(
        {
            "state": int(view.state),
            "extractable": view.extractable,
            "crn": view.crn,
            "imported": view.imported,
            "keyRingID": view.key_ring_id,
            "creationDate": rfc3339(view.creation_date),
            "createdBy": view.created_by,
            "algorithmType": view.algorithm_type,
            "algorithmMetadata": {"bitLength": str(bits), "mode": "Deprecated"},
            "algorithmBitSize": bits,
            "algorithmMode": "Deprecated",
            "lastUpdateDate": rfc3339(view.last_update_date),
        }
    )
    _put_time(doc, "lastRotateDate", view.last_rotate_date)
    doc["keyVersion"] = version(view.key_version)
    _put_time(doc, "expirationDate", view.expiration_date)
    dual: Json = {"enabled": view.dual_auth_delete.enabled}
    if view.dual_auth_delete.enabled:
        dual["keySetForDeletion"] = view.dual_auth_delete.key_set_for_deletion
        _put_time(dual, "authExpiration", view.dual_auth_delete.auth_expiration)
    doc["dualAuthDelete"] = dual
    if view.rotation is not None:
        doc["rotation"] = _rotation(view.rotation)
    doc["deleted"] = view.deleted
    if view.deleted:
        _put_time(doc, "deletionDate", view.deletion_date)
        if view.deleted_by is not None:
            doc["deletedBy"] = view.deleted_by
        doc["restoreAllowed"] = view.restore_allowed
        _put_time(doc, "restoreExpirationDate", view.restore_expiration_date)
        doc["purgeAllowed"] = view.purge_allowed
        _put_time(doc, "purgeAllowedFrom", view.purge_allowed_from)
        _put_time(doc, "purgeScheduledOn", view.purge_scheduled_on)
    if view.payload is not None:
        doc["payload"] = b64encode(view.payload)
    return doc


def key_minimal(view: KeyView) -> Json:
    """A key under ``prefer: return=minimal``: its identifier only."""
    return {"type": MEDIA_KEY, "id": view.id}


def _rotation(policy: RotationPolicy) -> Json:
    doc: Json = {"enabled": policy.enabled}
    if policy.interval_month is not None:
        doc["interval_month"] = policy.interval_month
    return doc


def _stamped(doc: Json, stamp: PolicyStamp | None, *, updated_field: str) -> Json:
    if stamp is not None:
        doc["createdBy"] = stamp.created_by
        doc["creationDate"] = rfc3339(stamp.creation_date)
        doc["updatedBy"] = stamp.updated_by
        doc[updated_field] = rfc3339(stamp.last_update)
    return doc


def key_policies(policies: KeyPolicies, which: str | None) -> list[Json]:
    """The resources of ``GET/PUT /keys/{id}/policies[?policy=rotation|dualAuthDelete]``.

    One resource per policy that was ever set; with ``which``, only that one.
    """
    out: list[Json] = []
    if policies.rotation is not None and which in (None, "rotation"):
        doc: Json = {"id": policies.key_id, "crn": policies.crn, "type": MEDIA_POLICY}
        doc["rotation"] = _rotation(policies.rotation)
        out.append(_stamped(doc, policies.rotation.stamp, updated_field="lastUpdateDate"))
    if policies.dual_auth_delete is not None and which in (None, "dualAuthDelete"):
        doc = {"id": policies.key_id, "crn": policies.crn, "type": MEDIA_POLICY}
        doc["dualAuthDelete"] = {"enabled": policies.dual_auth_delete.enabled}
        out.append(_stamped(doc, policies.dual_auth_delete.stamp, updated_field="lastUpdateDate"))
    return out


def instance_policies(policies: InstancePolicies, which: str | None) -> list[Json]:
    """The resources of ``GET /instance/policies[?policy=…]``: one per policy ever set."""
    out: list[Json] = []
    if policies.dual_auth_stamp is not None and which in (None, "dualAuthDelete"):
        doc: Json = {
            "policy_type": "dualAuthDelete",
            "policy_data": {"enabled": policies.dual_auth_delete},
        }
        out.append(_stamped(doc, policies.dual_auth_stamp, updated_field="lastUpdated"))
    if policies.rotation is not None and which in (None, "rotation"):
        data: Json = {"enabled": policies.rotation.enabled}
        if policies.rotation.interval_month is not None:
            data["attributes"] = {"interval_month": policies.rotation.interval_month}
        doc = {"policy_type": "rotation", "policy_data": data}
        out.append(_stamped(doc, policies.rotation.stamp, updated_field="lastUpdated"))
    return out


def wrap_json(result: WrapResult) -> bytes:
    """The body of ``actions/wrap`` as JSON bytes (``plaintext`` only when the DEK was
    generated), written by hand (see :func:`_string`)."""
    version = f'"keyVersion":{{"id":{_string(result.key_version.id)}}}}}'
    ciphertext = f'"ciphertext":{_string(result.ciphertext)},'
    if result.plaintext is None:
        return f"{{{ciphertext}{version}".encode()
    plaintext = f'"plaintext":{_string(b64encode(result.plaintext))},'
    return f"{{{plaintext}{ciphertext}{version}".encode()


def unwrap_json(result: UnwrapResult) -> bytes:
    """The body of ``actions/unwrap`` as JSON bytes, with a rewrapped ciphertext when the key
    was rotated, written by hand (see :func:`_string`)."""
    text = (
        f'{{"plaintext":{_string(b64encode(result.plaintext))},'
        f'"keyVersion":{{"id":{_string(result.key_version.id)}}}'
    )
    if result.ciphertext is not None:
        text += f',"ciphertext":{_string(result.ciphertext)}'
    if result.rewrapped_key_version is not None:
        text += f',"rewrappedKeyVersion":{{"id":{_string(result.rewrapped_key_version.id)}}}'
    return f"{text}}}".encode()


def rewrap_json(result: RewrapResult) -> bytes:
    """The body of ``actions/rewrap`` as JSON bytes, written by hand (see :func:`_string`)."""
    return (
        f'{{"ciphertext":{_string(result.ciphertext)},'
        f'"keyVersion":{{"id":{_string(result.key_version.id)}}},'
        f'"rewrappedKeyVersion":{{"id":{_string(result.rewrapped_key_version.id)}}}}}'
    ).encode()


#: How ``kp_wire.dumps`` (``ensure_ascii=False``) escapes a string: json's own encoder. The
#: bodies of wrap, unwrap and rewrap, sent on every call, are written by hand with it, byte
#: for byte what ``kp_wire.dumps`` makes of the same fields as a dict (a property test holds
#: them to it), at a fraction of the cost.
_string: Final[Callable[[str], str]] = json.encoder.encode_basestring


def registration(reg: Registration) -> Json:
    """A registration resource."""
    return {
        "keyId": reg.key_id,
        "resourceCrn": reg.resource_crn,
        "createdBy": reg.created_by,
        "creationDate": rfc3339(reg.creation_date),
        "updatedBy": reg.updated_by,
        "lastUpdated": rfc3339(reg.last_updated),
        "description": reg.description,
        "preventKeyDeletion": reg.prevent_key_deletion,
        "keyVersion": {
            "id": reg.key_version_id,
            "creationDate": rfc3339(reg.key_version_creation_date),
        },
    }


def key_ring(ring: KeyRing) -> Json:
    """A key ring resource (``default`` has only its id, as in Key Protect)."""
    doc: Json = {"id": ring.id}
    _put_time(doc, "creationDate", ring.creation_date)
    if ring.created_by is not None:
        doc["createdBy"] = ring.created_by
    return doc


def alias(entry: AliasEntry) -> Json:
    """A key alias resource."""
    return {
        "keyId": entry.key_id,
        "alias": entry.alias,
        "creationDate": rfc3339(entry.creation_date),
        "createdBy": entry.created_by,
    }


def import_token_info(info: ImportTokenInfo) -> Json:
    """The body of ``POST /import_token``."""
    return {
        "creationDate": rfc3339(info.creation_date),
        "expirationDate": rfc3339(info.expiration_date),
        "maxAllowedRetrievals": info.max_allowed_retrievals,
        "remainingRetrievals": info.remaining_retrievals,
    }


def import_token_key(token: ImportTokenKey) -> Json:
    """The body of ``GET /import_token``: metadata, public key and nonce."""
    doc = import_token_info(token.info)
    doc["payload"] = b64encode(token.public_key_pem)
    doc["nonce"] = b64encode(token.nonce)
    return doc
