"""In-memory twins of the ports the value formats use, for fast deterministic unit tests.

- :class:`Base64KmsV2Keys` is a ``KmsV2Keys`` whose "plugin" wraps by base64, like upstream's
  test plugin (``envelope/testing/v2/kms_plugin_mock.go``): the wrapped seed is the base64
  text of the seed. It can rotate to a new key_id, forget old ones, and fail like an
  unreachable plugin.
- :class:`Base64KmsV1Unwrapper` is the KMS v1 mock: the wrapped DEK is its base64 text.
- :class:`ReplayRng` returns recorded bytes in order, so a seal can be repeated exactly.
- :class:`StreamRng` is a deterministic byte stream (SHA-256 in counter mode over a label).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from types import MappingProxyType

from kinko.crypto.types import EncryptedObject, KmsWriteState
from kinko.errors import DecryptionError, PluginError

LOCAL_KEK_ANNOTATIONS: Mapping[str, bytes] = MappingProxyType(
    {"local-kek.kms.kubernetes.io": b"encrypted-local-kek"}
)


def _unwrap(wrapped: bytes) -> bytes:
    try:
        return base64.b64decode(wrapped, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptionError() from None


class Base64KmsV2Keys:
    """A KMS v2 key session over a base64 "plugin"; the seed is the plugin's whole secret."""

    def __init__(
        self,
        seed: bytes,
        *,
        key_id: str = "1",
        annotations: Mapping[str, bytes] = LOCAL_KEK_ANNOTATIONS,
    ) -> None:
        self._state = KmsWriteState(
            seed=seed,
            key_id=key_id,
            encrypted_dek_source=base64.b64encode(seed),
            annotations=annotations,
        )
        self.known_key_ids: set[str] = {key_id}
        self.unavailable = False
        self.dek_source_calls = 0
        self.hits = 0
        self.epoch = 0  # bumped by forget(): seeds a transformer kept must be asked for again

    def rotate(self, seed: bytes, *, key_id: str) -> None:
        """A new root key version: new key_id, new seed; old key_ids stay readable."""
        self._state = KmsWriteState(
            seed=seed,
            key_id=key_id,
            encrypted_dek_source=base64.b64encode(seed),
            annotations=self._state.annotations,
        )
        self.known_key_ids.add(key_id)

    def forget(self, key_id: str) -> None:
        """The root key behind ``key_id`` is destroyed: its DEK sources no longer unwrap."""
        self.known_key_ids.discard(key_id)
        self.epoch += 1

    def write_state(self) -> KmsWriteState:
        if self.unavailable:
            raise PluginError("kms plugin unavailable (test double)")
        return self._state

    def dek_source(self, obj: EncryptedObject) -> bytes:
        if self.unavailable:
            raise PluginError("kms plugin unavailable (test double)")
        self.dek_source_calls += 1
        if obj.key_id not in self.known_key_ids:
            raise DecryptionError()
        return _unwrap(obj.encrypted_dek_source)

    def seed_epoch(self) -> int:
        return self.epoch

    def kept_hit(self, obj: EncryptedObject, epoch: int, count: int = 1) -> bool:
        if epoch != self.epoch:
            return False
        self.hits += count
        return True

    def current_key_id(self) -> str | None:
        return self._state.key_id


class Base64KmsV1Unwrapper:
    """KMS v1 mock: the wrapped DEK is the base64 text of the DEK."""

    def __init__(self) -> None:
        self.unavailable = False

    def decrypt(self, cipher: bytes) -> bytes:
        if self.unavailable:
            raise PluginError("kms v1 plugin unavailable (test double)")
        return _unwrap(cipher)


class ReplayRng:
    """Returns the recorded bytes in order; asking for more than is left is a test bug."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def __call__(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise AssertionError(f"replay rng exhausted: asked {size}, {self.remaining} left")
        out = self._data[self._offset : end]
        self._offset = end
        return out

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset


class StreamRng:
    """``SHA-256(label ‖ counter)`` blocks, consumed in order. Deterministic, not secret."""

    def __init__(self, label: bytes) -> None:
        self._label = label
        self._counter = 0
        self._buffer = b""

    def __call__(self, size: int) -> bytes:
        while len(self._buffer) < size:
            block = hashlib.sha256(self._label + self._counter.to_bytes(8, "big")).digest()
            self._buffer += block
            self._counter += 1
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out
