"""Field rules kube-apiserver applies to KMS v2 data, shared by the envelope and the client.

The same limits hold for what a plugin answers (Status, Encrypt) and for what is stored in an
``EncryptedObject``. Each checker raises :class:`~kinko.errors.EnvelopeError` with a message
that names sizes only, never the bytes; the KMS client re-raises it as a ``PluginError``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from kinko.errors import EnvelopeError

KEY_ID_MAX_SIZE = 1024
ENCRYPTED_DEK_SOURCE_MAX_SIZE = 1024
ANNOTATIONS_MAX_SIZE = 32 * 1024
SEED_SIZE = 32
FQDN_MAX_LENGTH = 253
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def check_key_id(key_id: str) -> None:
    """A key_id is non-empty and at most 1 KiB (UTF-8 bytes)."""
    if not key_id:
        raise EnvelopeError("key_id: expected a non-empty key_id, got an empty one")
    size = len(key_id.encode())
    if size > KEY_ID_MAX_SIZE:
        raise EnvelopeError(f"key_id: expected at most {KEY_ID_MAX_SIZE} bytes, got {size}")


def check_encrypted_dek_source(source: bytes) -> None:
    """A wrapped seed or DEK is non-empty and at most 1 KiB."""
    if not source:
        raise EnvelopeError("encryptedDEKSource: expected non-empty bytes, got none")
    if len(source) > ENCRYPTED_DEK_SOURCE_MAX_SIZE:
        raise EnvelopeError(
            f"encryptedDEKSource: expected at most {ENCRYPTED_DEK_SOURCE_MAX_SIZE} bytes, "
            f"got {len(source)}"
        )


def is_fqdn(name: str) -> bool:
    """Kubernetes' ``IsFullyQualifiedDomainName``: a lowercase DNS-1123 subdomain, 2+ labels."""
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > FQDN_MAX_LENGTH:
        return False
    labels = name.split(".")
    if len(labels) < 2:
        return False
    return all(len(label) <= 63 and _DNS1123_LABEL.fullmatch(label) for label in labels)


def check_annotations(annotations: Mapping[str, bytes]) -> None:
    """Keys are lowercase FQDNs; the keys and values together are at most 32 KiB."""
    total = 0
    for key, value in annotations.items():
        if not is_fqdn(key):
            raise EnvelopeError(
                f"annotations: expected keys to be lowercase fully qualified domain names, "
                f"got {key[:64]!r}"
            )
        total += len(key.encode()) + len(value)
    if total > ANNOTATIONS_MAX_SIZE:
        raise EnvelopeError(
            f"annotations: expected at most {ANNOTATIONS_MAX_SIZE} bytes in all, got {total}"
        )
