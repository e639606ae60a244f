"""The in-memory twin of the HSM port, for fast unit tests of everything above it.

:class:`MemoryHsm` keeps the same contract as the real adapters (``tests/hsm_contract.py``)
but holds keys in a :class:`MemoryDevice`, a plain dict shared by every client made on it, so
tests can "reopen" a device and take it offline (``device.online = False`` makes every call
raise :class:`~kinko.errors.HsmUnavailable`). It is not HSM-grade and says so.

Invariants: material never appears in a repr or a message; a destroyed key's material is
dropped from the dict; labels are unique per device.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kinko.errors import Conflict, DecryptionError, HsmUnavailable, NotFound
from kinko.hsm.port import (
    check_handle,
    check_label,
    check_material,
    check_nonce,
    new_handle,
    unwrap_input_ok,
)


@dataclass(frozen=True, slots=True)
class _Key:
    label: str
    material: bytes = field(repr=False)
    cipher: AESGCM = field(repr=False, compare=False)


@dataclass(slots=True)
class MemoryDevice:
    """The device a :class:`MemoryHsm` talks to: keys by handle, and an on/off switch."""

    keys: dict[str, _Key] = field(default_factory=dict, repr=False)
    online: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


class MemoryHsm:
    """An :class:`~kinko.hsm.port.Hsm` held in memory. Not HSM-grade."""

    __slots__ = ("device",)

    def __init__(self, device: MemoryDevice | None = None) -> None:
        self.device = device if device is not None else MemoryDevice()

    def __repr__(self) -> str:
        return f"MemoryHsm(keys={len(self.device.keys)}, online={self.device.online})"

    @property
    def hsm_grade(self) -> bool:
        """Always False: keys are Python bytes in this process."""
        return False

    @property
    def description(self) -> str:
        """Names the twin as what it is."""
        return "in-memory keystore (tests only, not HSM-grade)"

    def generate_key(self, label: str) -> str:
        """Creates a random AES-256 key. Raises InvalidArgument, Conflict, HsmUnavailable."""
        return self._store(check_label(label), os.urandom(32))

    def import_key(self, label: str, material: bytes) -> str:
        """Stores given AES-256 material. Raises InvalidArgument, Conflict, HsmUnavailable."""
        return self._store(check_label(label), bytes(check_material(material)))

    def wrap(self, handle: str, plaintext: bytes, *, aad: bytes, nonce: bytes) -> bytes:
        """AES-256-GCM encrypt. Raises InvalidArgument, NotFound, HsmUnavailable."""
        check_nonce(nonce)
        return self._key(handle).cipher.encrypt(nonce, plaintext, aad)

    def unwrap(self, handle: str, ciphertext: bytes, *, aad: bytes, nonce: bytes) -> bytes:
        """AES-256-GCM decrypt. Raises DecryptionError, NotFound, HsmUnavailable."""
        key = self._key(handle)
        if not unwrap_input_ok(ciphertext, aad=aad, nonce=nonce):
            raise DecryptionError()
        try:
            return key.cipher.decrypt(nonce, ciphertext, aad)
        except InvalidTag as exc:
            raise DecryptionError() from exc

    def destroy(self, handle: str) -> None:
        """Drops the key. Raises NotFound, HsmUnavailable."""
        check_handle(handle)
        with self.device.lock:
            self._check_online()
            if self.device.keys.pop(handle, None) is None:
                raise NotFound("no key with that handle")

    def _store(self, label: str, material: bytes) -> str:
        with self.device.lock:
            self._check_online()
            if any(k.label == label for k in self.device.keys.values()):
                raise Conflict(f"expected a new key label, got {label!r}, which is in use")
            handle = new_handle()
            self.device.keys[handle] = _Key(label, material, AESGCM(material))
            return handle

    def _key(self, handle: str) -> _Key:
        check_handle(handle)
        with self.device.lock:
            self._check_online()
            key = self.device.keys.get(handle)
        if key is None:
            raise NotFound("no key with that handle")
        return key

    def _check_online(self) -> None:
        if not self.device.online:
            raise HsmUnavailable("the in-memory device is offline")
