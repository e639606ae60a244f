"""Request bodies of Key Protect API v2, as pydantic models: what each operation accepts.

Job: the shapes IBM's SDKs send (field names, JSON types, nesting), so that FastAPI parses
and validates them and the served OpenAPI document describes them. Semantic checks (base64,
AAD lengths, RFC 3339 times, counts) happen in the routes and the key service, where they get
their own Key Protect reason codes.

Invariants:

- Strict JSON types (no ``"1"`` for ``1`` or ``"true"`` for ``true``) and no unknown fields,
  as Key Protect (a Go service decoding with ``DisallowUnknownFields``) answers
  ``BAD_BODY_ERR: json: unknown field``.
- String lengths are bounded here only loosely (the transport's body cap bounds them all);
  the precise limits are the key service's.
- Response bodies are not modelled for validation (the routes build plain dicts); the
  ``*Out`` models exist so that the OpenAPI document shows what comes back.
"""

from __future__ import annotations

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class CollectionMetadata(_In):
    """``metadata`` of a request envelope; ``collectionTotal`` must count ``resources``."""

    collectionType: str = Field(max_length=128)
    collectionTotal: int = Field(ge=0, le=1000)


# --- keys ----------------------------------------------------------------------------------


class RotationPolicyIn(_In):
    """A rotation policy: rotate every ``interval_month`` (1 to 12) months while enabled."""

    enabled: bool | None = None
    interval_month: int | None = None


class DualAuthDeleteIn(_In):
    """A dual authorization delete policy."""

    enabled: bool


class KeyCreateResource(_In):
    """One key to create or import (``payload`` present: imported)."""

    type: str | None = Field(default=None, max_length=128)
    name: str = Field(max_length=1024)
    description: str | None = Field(default=None, max_length=4096)
    extractable: bool = False
    payload: str | None = Field(default=None, repr=False)  # key material
    encryptedNonce: str | None = Field(default=None, max_length=1024)
    iv: str | None = Field(default=None, max_length=1024)
    encryptionAlgorithm: str | None = Field(default=None, max_length=64)
    expirationDate: str | None = Field(default=None, max_length=64)
    aliases: list[str] | None = Field(default=None, max_length=64)


class KeyWithPolicyOverridesResource(KeyCreateResource):
    """A key to create with its own policies instead of the instance's."""

    rotation: RotationPolicyIn | None = None
    dualAuthDelete: DualAuthDeleteIn | None = None


class KeyCreateBody(_In):
    """``POST /api/v2/keys``: an envelope with exactly one key."""

    metadata: CollectionMetadata
    resources: list[KeyCreateResource] = Field(max_length=1000)


class KeyWithPolicyOverridesCreateBody(_In):
    """``POST /api/v2/keys_with_policy_overrides``: an envelope with exactly one key."""

    metadata: CollectionMetadata
    resources: list[KeyWithPolicyOverridesResource] = Field(max_length=1000)


class KeyPatchBody(_In):
    """``PATCH /api/v2/keys/{id}``: move the key to another key ring.

    IBM's Go client sends the field as ``KeyRingID`` (Go decodes names case-insensitively);
    both spellings are accepted.
    """

    keyRingID: str = Field(max_length=256, validation_alias=AliasChoices("keyRingID", "KeyRingID"))


# --- actions -------------------------------------------------------------------------------


# Fields that carry key material, plaintext or ciphertext are left out of the models' reprs
# (``Field(repr=False)``): in KeyCreateResource above and in the action models below.


class WrapBody(_In):
    """``actions/wrap``: omit ``plaintext`` to have a 32-byte DEK generated."""

    plaintext: str | None = Field(default=None, repr=False)
    aad: list[str] | None = None


class UnwrapBody(_In):
    """``actions/unwrap``: a ciphertext from wrap, with the AAD it was wrapped with."""

    ciphertext: str = Field(repr=False)
    aad: list[str] | None = None


class RewrapBody(_In):
    """``actions/rewrap``: re-encrypt a ciphertext under the key's latest version."""

    ciphertext: str = Field(repr=False)
    aad: list[str] | None = None


class RotateBody(_In):
    """``actions/rotate``: empty for generated keys; new material for imported ones."""

    payload: str | None = Field(default=None, repr=False)
    encryptedNonce: str | None = Field(default=None, max_length=1024)
    iv: str | None = Field(default=None, max_length=1024)
    encryptionAlgorithm: str | None = Field(default=None, max_length=64)


class KeyActionBody(_In):
    """The deprecated ``POST /api/v2/keys/{id}?action=…``: the union of the action bodies."""

    plaintext: str | None = Field(default=None, repr=False)
    ciphertext: str | None = Field(default=None, repr=False)
    aad: list[str] | None = None
    payload: str | None = Field(default=None, repr=False)
    encryptedNonce: str | None = Field(default=None, max_length=1024)
    iv: str | None = Field(default=None, max_length=1024)
    encryptionAlgorithm: str | None = Field(default=None, max_length=64)


# --- policies ------------------------------------------------------------------------------


class KeyPolicyResource(_In):
    """One key policy: rotation and/or dual authorization delete."""

    type: str | None = Field(default=None, max_length=128)
    rotation: RotationPolicyIn | None = None
    dualAuthDelete: DualAuthDeleteIn | None = None


class KeyPolicyPutBody(_In):
    """``PUT /api/v2/keys/{id}/policies``."""

    metadata: CollectionMetadata
    resources: list[KeyPolicyResource] = Field(max_length=16)


class InstancePolicyAttributes(_In):
    """Attributes of an instance policy; which ones apply depends on ``policy_type``."""

    interval_month: int | None = None
    allowed_network: str | None = Field(default=None, max_length=64)
    allowed_ip: list[str] | None = Field(default=None, max_length=1000)
    create_root_key: bool | None = None
    create_standard_key: bool | None = None
    import_root_key: bool | None = None
    import_standard_key: bool | None = None
    enforce_token: bool | None = None


class InstancePolicyData(_In):
    """``policy_data`` of an instance policy."""

    enabled: bool
    attributes: InstancePolicyAttributes | None = None


class InstancePolicyResource(_In):
    """One instance policy."""

    policy_type: str = Field(max_length=64)
    policy_data: InstancePolicyData


class InstancePolicyPutBody(_In):
    """``PUT /api/v2/instance/policies``."""

    metadata: CollectionMetadata
    resources: list[InstancePolicyResource] = Field(max_length=16)


# --- import token, registrations -----------------------------------------------------------


class ImportTokenBody(_In):
    """``POST /api/v2/import_token``: lifetime in seconds and allowed retrievals."""

    expiration: int | None = None
    maxAllowedRetrievals: int | None = None


class KeyVersionRef(_In):
    """A key version named by its id."""

    id: str = Field(max_length=64)


class RegistrationResource(_In):
    """A registration as a service writes it."""

    description: str | None = Field(default=None, max_length=4096)
    preventKeyDeletion: bool | None = None
    keyVersion: KeyVersionRef | None = None


class RegistrationBody(_In):
    """``POST/PUT/PATCH /api/v2/keys/{id}/registrations/{crn}`` (service identities only)."""

    metadata: CollectionMetadata
    resources: list[RegistrationResource] = Field(max_length=16)


# --- responses (documentation only) --------------------------------------------------------


class KeyVersionOut(_Out):
    id: str
    creationDate: str | None = None


class KeyOut(_Out):
    """A key as Key Protect returns it (``payload`` only for standard keys on GET)."""

    type: str
    id: str
    name: str
    state: int
    extractable: bool
    crn: str
    keyRingID: str
    imported: bool
    creationDate: str
    createdBy: str
    keyVersion: KeyVersionOut | None = None


class CollectionMetadataOut(_Out):
    collectionType: str
    collectionTotal: int
    totalCount: int | None = None


class KeyCollectionOut(_Out):
    metadata: CollectionMetadataOut
    resources: list[KeyOut]


class ResourceCollectionOut(_Out):
    """Any collection envelope (versions, policies, registrations, key rings, aliases)."""

    metadata: CollectionMetadataOut
    resources: list[dict[str, object]]


class WrapOut(_Out):
    ciphertext: str = Field(repr=False)
    keyVersion: KeyVersionOut
    plaintext: str | None = Field(default=None, repr=False)


class UnwrapOut(_Out):
    plaintext: str = Field(repr=False)
    keyVersion: KeyVersionOut
    ciphertext: str | None = Field(default=None, repr=False)
    rewrappedKeyVersion: KeyVersionOut | None = None


class RewrapOut(_Out):
    ciphertext: str = Field(repr=False)
    keyVersion: KeyVersionOut
    rewrappedKeyVersion: KeyVersionOut


class ImportTokenOut(_Out):
    creationDate: str
    expirationDate: str
    maxAllowedRetrievals: int
    remainingRetrievals: int
    payload: str | None = None
    nonce: str | None = None


class ErrorReasonOut(_Out):
    code: str
    message: str
    status: int
    moreInfo: str


class ErrorResourceOut(_Out):
    errorMsg: str
    reasons: list[ErrorReasonOut]


class ErrorOut(_Out):
    """The Key Protect error envelope."""

    metadata: CollectionMetadataOut
    resources: list[ErrorResourceOut]
