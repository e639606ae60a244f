"""What a stored value reveals without any key: provider, key name, KMS fields and sizes.

Job: audit and status. Everything reported is already in plaintext in the store: the
prefix, and for KMS v2 the ``EncryptedObject`` fields other than ``encryptedData``
(key_id, annotations, DEK source type, wrapped DEK source). Nothing is decrypted.

Invariants:

- Pure and key-free: no provider, plugin or key is consulted.
- Only sizes, names, the key_id and short printable-ASCII annotation values (at most
  :data:`ANNOTATION_SHOWN_MAX` characters: versions and ids) are reported; never ciphertext
  or wrapped keys. Every annotation value, and the wrapped DEK source, is also given as
  ``sha256:<hex>`` (``value_fingerprint``, ``dek_source_fingerprint``), so values sharing a
  seed or a wrapped key can be counted without exposing it: a plugin's annotation may carry
  a wrapped key (kinko's root-key plugin carries its wrapped local KEK, 228 base64
  characters).
- A value that does not start with ``k8s:enc:`` is reported as ``identity``. An unknown
  ``k8s:enc:`` prefix raises ``InvalidArgument``; a malformed KMS v2 envelope raises
  ``EnvelopeError``; a truncated KMS v1 header raises ``InvalidArgument``.
- Local providers and KMS v1 allow ``:`` in key names; in a stored value such a name cannot
  be told apart from a payload that contains ``:``, so the first ``:`` ends the name.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import TypeAlias

from kinko.crypto import kmsv2
from kinko.crypto.formats import (
    AESCBC_PREFIX,
    AESGCM_PREFIX,
    ENCRYPTED_PREFIX,
    KMS_V1_PREFIX,
    KMS_V2_PREFIX,
    SECRETBOX_PREFIX,
)
from kinko.crypto.types import DekSourceType
from kinko.errors import InvalidArgument

JsonValue: TypeAlias = "bool | int | str | list[JsonValue] | dict[str, JsonValue] | None"

# (provider prefix, provider, kms api version)
_PROVIDERS: tuple[tuple[bytes, str, str | None], ...] = (
    (AESCBC_PREFIX, "aescbc", None),
    (AESGCM_PREFIX, "aesgcm", None),
    (SECRETBOX_PREFIX, "secretbox", None),
    (KMS_V1_PREFIX, "kms", "v1"),
    (KMS_V2_PREFIX, "kms", "v2"),
)


@dataclass(frozen=True, slots=True)
class AnnotationInfo:
    """One KMS v2 annotation: its key, its value's size and fingerprint, and the value itself
    when it is short printable ASCII."""

    key: str
    value_size: int
    value: str | None
    value_fingerprint: str

    def to_json_dict(self) -> dict[str, JsonValue]:
        return {
            "key": self.key,
            "value_size": self.value_size,
            "value": self.value,
            "value_fingerprint": self.value_fingerprint,
        }


@dataclass(frozen=True, slots=True)
class ValueInfo:
    """What :func:`inspect_value` found. Sizes are in bytes.

    ``payload_size`` is everything after the full prefix. For KMS v2 ``encrypted_data_size``
    and ``encrypted_dek_source_size`` are the ``EncryptedObject`` fields; for KMS v1
    ``encrypted_dek_source_size`` is the wrapped per-value DEK and ``encrypted_data_size``
    the AES payload after it.
    """

    provider: str  # identity | aescbc | aesgcm | secretbox | kms
    kms_api_version: str | None  # "v1" | "v2" for kms, else None
    key_name: str  # key name for local providers, KMS name for kms, "" for identity
    total_size: int
    prefix_size: int
    payload_size: int
    key_id: str | None = None
    dek_source_type: DekSourceType | None = None
    annotations: tuple[AnnotationInfo, ...] = ()
    encrypted_data_size: int | None = None
    encrypted_dek_source_size: int | None = None
    dek_source_fingerprint: str | None = None

    def to_json_dict(self) -> dict[str, JsonValue]:
        """A JSON-ready dict; the DEK source type is given by its upstream enum name."""
        return {
            "provider": self.provider,
            "kms_api_version": self.kms_api_version,
            "key_name": self.key_name,
            "key_id": self.key_id,
            "dek_source_type": (
                None if self.dek_source_type is None else self.dek_source_type.name
            ),
            "annotations": [a.to_json_dict() for a in self.annotations],
            "dek_source_fingerprint": self.dek_source_fingerprint,
            "sizes": {
                "total": self.total_size,
                "prefix": self.prefix_size,
                "payload": self.payload_size,
                "encrypted_data": self.encrypted_data_size,
                "encrypted_dek_source": self.encrypted_dek_source_size,
            },
        }


#: The longest annotation value shown as text (a UUID is 36 characters).
ANNOTATION_SHOWN_MAX = 40


def _shown(value: bytes) -> str | None:
    """The annotation value as text if it is short printable ASCII, else None."""
    if len(value) <= ANNOTATION_SHOWN_MAX and all(0x20 <= b <= 0x7E for b in value):
        return value.decode("ascii")
    return None


def _fingerprint(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def inspect_value(value: bytes) -> ValueInfo:
    """Describe a stored value without decrypting it.

    Raises InvalidArgument (unknown ``k8s:enc:`` prefix, missing key name, truncated KMS v1
    header), EnvelopeError (malformed KMS v2 ``EncryptedObject``).
    """
    total = len(value)
    if not value.startswith(ENCRYPTED_PREFIX):
        return ValueInfo(
            provider="identity",
            kms_api_version=None,
            key_name="",
            total_size=total,
            prefix_size=0,
            payload_size=total,
        )
    match = next((entry for entry in _PROVIDERS if value.startswith(entry[0])), None)
    if match is None:
        raise InvalidArgument(
            "value prefix: expected one of aescbc, aesgcm, secretbox, kms v1 or kms v2 "
            "after k8s:enc:, got an unknown provider"
        )
    provider_prefix, provider, version = match
    end = value.find(b":", len(provider_prefix))
    if end <= len(provider_prefix):
        raise InvalidArgument(
            f"value prefix: expected {provider_prefix.decode()}<name>: with a non-empty name"
        )
    try:
        key_name = value[len(provider_prefix) : end].decode()
    except UnicodeDecodeError:
        raise InvalidArgument("value prefix: expected the key name to be UTF-8 text") from None
    prefix_size = end + 1
    payload = value[prefix_size:]
    info = ValueInfo(
        provider=provider,
        kms_api_version=version,
        key_name=key_name,
        total_size=total,
        prefix_size=prefix_size,
        payload_size=len(payload),
    )
    if version == "v2":
        obj = kmsv2.decode_encrypted_object(payload)
        annotations = tuple(
            AnnotationInfo(
                key=key,
                value_size=len(data),
                value=_shown(data),
                value_fingerprint=_fingerprint(data),
            )
            for key, data in sorted(obj.annotations.items())
        )
        return dataclasses.replace(
            info,
            key_id=obj.key_id,
            dek_source_type=obj.dek_source_type,
            annotations=annotations,
            encrypted_data_size=len(obj.encrypted_data),
            encrypted_dek_source_size=len(obj.encrypted_dek_source),
            dek_source_fingerprint=_fingerprint(obj.encrypted_dek_source),
        )
    if version == "v1":
        if len(payload) < 2:
            raise InvalidArgument(
                f"kms v1 payload: expected a 2-byte DEK length, got {len(payload)} bytes"
            )
        size = int.from_bytes(payload[:2], "big")
        if len(payload) < 2 + size:
            raise InvalidArgument(
                f"kms v1 payload: expected a {size}-byte wrapped DEK, "
                f"got {len(payload) - 2} bytes in all"
            )
        wrapped = payload[2 : 2 + size]
        return dataclasses.replace(
            info,
            encrypted_data_size=len(payload) - 2 - size,
            encrypted_dek_source_size=size,
            dek_source_fingerprint=_fingerprint(wrapped),
        )
    return info
