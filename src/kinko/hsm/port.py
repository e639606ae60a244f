"""The HSM port: what the key service needs from the device that holds its root keys.

A root key is an AES-256 key created inside the device (or imported once, for Key Protect's
import) and used there for AES-256-GCM; its material never comes back out. The port has five
methods and two descriptive properties; every adapter (PKCS#11, soft keystore, in-memory
twin) passes the same contract tests in ``tests/hsm_contract.py``.

Invariants every adapter keeps:

- A handle is an opaque string the adapter chose (32 lowercase hex characters: 16 random
  bytes). A handle that is malformed or names nothing raises :class:`~kinko.errors.NotFound`.
- Labels are unique within a device; creating a second key with a label in use raises
  :class:`~kinko.errors.Conflict` and creates nothing.
- ``wrap`` returns ``ciphertext || 16-byte tag``, byte-identical to pyca's
  ``AESGCM(key).encrypt(nonce, plaintext, aad)``. The caller passes the 12-byte nonce in
  (house style: the innermost encrypt takes its randomness as an argument); the caller must
  never reuse a nonce under one key.
- ``unwrap`` is opaque: a wrong AAD, nonce, key, a tampered or truncated ciphertext all raise
  :class:`~kinko.errors.DecryptionError`; only a device failure raises
  :class:`~kinko.errors.HsmUnavailable`.
- ``destroy`` purges: afterwards the material is gone from the device and every use of the
  handle raises :class:`~kinko.errors.NotFound`.
- No message carries key bytes, plaintext or ciphertext.
"""

from __future__ import annotations

import os
import re
from typing import Protocol

from kinko.errors import InvalidArgument, NotFound

#: AES-256: the only key size a root key has.
KEY_SIZE = 32
#: AES-GCM nonce size the port accepts (96 bits, the size GCM is defined for without GHASH).
NONCE_SIZE = 12
#: AES-GCM tag size appended to every ciphertext.
TAG_SIZE = 16
#: Longest label accepted, in characters (PKCS#11 CKA_LABEL is free-form; this keeps it sane).
MAX_LABEL_LENGTH = 128

_HANDLE_RE = re.compile(r"[0-9a-f]{32}")


class Hsm(Protocol):
    """A device holding AES-256 root keys and running AES-256-GCM inside itself."""

    @property
    def hsm_grade(self) -> bool:
        """True only when keys live in hardware-protected storage (not SoftHSM, not a file)."""
        ...

    @property
    def description(self) -> str:
        """One line for operators: what device this is (never a PIN or key bytes)."""
        ...

    def generate_key(self, label: str) -> str:
        """Creates a sensitive, non-extractable AES-256 key inside the device.

        Returns its handle. Raises InvalidArgument (bad label), Conflict (label in use),
        HsmUnavailable.
        """
        ...

    def import_key(self, label: str, material: bytes) -> str:
        """Stores 32 bytes of AES-256 material as a sensitive, non-extractable key.

        Returns its handle. Raises InvalidArgument (bad label or size), Conflict (label in
        use), HsmUnavailable.
        """
        ...

    def wrap(self, handle: str, plaintext: bytes, *, aad: bytes, nonce: bytes) -> bytes:
        """AES-256-GCM encrypts ``plaintext`` inside the device; returns ciphertext || tag.

        Raises InvalidArgument (nonce not 12 bytes), NotFound, HsmUnavailable.
        """
        ...

    def unwrap(self, handle: str, ciphertext: bytes, *, aad: bytes, nonce: bytes) -> bytes:
        """AES-256-GCM decrypts and authenticates ``ciphertext`` (with its tag) in the device.

        Raises DecryptionError (anything about the input), NotFound, HsmUnavailable.
        """
        ...

    def destroy(self, handle: str) -> None:
        """Purges the key: its material is gone from the device for good.

        Raises NotFound, HsmUnavailable.
        """
        ...


def new_handle() -> str:
    """A fresh handle: 16 random bytes as 32 lowercase hex characters."""
    return os.urandom(16).hex()


def check_handle(handle: str) -> str:
    """Returns ``handle`` if it has the shape of a handle; raises NotFound otherwise.

    A malformed handle names nothing, so it is "not found" rather than a separate error;
    checking the shape first also keeps handles safe to use as file names.
    """
    if not isinstance(handle, str) or _HANDLE_RE.fullmatch(handle) is None:
        raise NotFound("no key with that handle (expected 32 lowercase hex characters)")
    return handle


def check_label(label: str) -> str:
    """Returns ``label`` if it is a usable key label; raises InvalidArgument otherwise."""
    if not isinstance(label, str) or not label:
        raise InvalidArgument("expected a non-empty key label")
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidArgument(
            f"expected a key label of at most {MAX_LABEL_LENGTH} characters, got {len(label)}"
        )
    if not label.isprintable():
        raise InvalidArgument("expected a key label of printable characters")
    return label


def check_material(material: bytes) -> bytes:
    """Returns ``material`` if it is AES-256 key material; raises InvalidArgument otherwise."""
    if not isinstance(material, bytes) or len(material) != KEY_SIZE:
        size = len(material) if isinstance(material, bytes | bytearray) else "non-bytes"
        raise InvalidArgument(f"expected {KEY_SIZE} bytes of AES-256 key material, got {size}")
    return material


def check_nonce(nonce: bytes) -> bytes:
    """Returns ``nonce`` if it is a 12-byte GCM nonce; raises InvalidArgument otherwise."""
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        size = len(nonce) if isinstance(nonce, bytes | bytearray) else "non-bytes"
        raise InvalidArgument(f"expected a {NONCE_SIZE}-byte nonce, got {size}")
    return nonce


def unwrap_input_ok(ciphertext: bytes, *, aad: bytes, nonce: bytes) -> bool:
    """Whether ``unwrap`` input has a shape that could ever decrypt (checked before the device)."""
    return (
        isinstance(ciphertext, bytes)
        and isinstance(aad, bytes)
        and isinstance(nonce, bytes)
        and len(nonce) == NONCE_SIZE
        and len(ciphertext) >= TAG_SIZE
    )
