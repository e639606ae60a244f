"""The KMS v2 plugin API as a Python port: three methods, no transport.

``KmsV2Api`` is what kube-apiserver sees of a plugin. The gRPC client
(``kinko.kms.client.GrpcKmsV2Api``) speaks it over a unix socket; a plugin's own core
(``kinko.kms.plugin.LocalKeyPlugin``) implements it directly, which makes the core its own
in-memory twin for fast tests. Field rules are those of kube-apiserver
(``kinko.crypto.kms_rules``), applied to a plugin's answers by ``kinko.kms.envelope``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StatusResult:
    version: str
    healthz: str
    key_id: str


@dataclass(frozen=True, slots=True, repr=False)
class EncryptResult:
    """A plugin's Encrypt answer. Its repr shows the key_id and the annotation names only:
    annotation values may be wrapped keys (kinko's root-key plugin carries its wrapped local
    KEK in one)."""

    ciphertext: bytes
    key_id: str
    annotations: Mapping[str, bytes]

    def __repr__(self) -> str:
        names = ", ".join(f"{k!r}: <{len(v)} bytes>" for k, v in self.annotations.items())
        return (
            f"EncryptResult(<{len(self.ciphertext)} bytes>, key_id={self.key_id!r}, "
            f"annotations={{{names}}})"
        )


class KmsV2Api(Protocol):
    def status(self) -> StatusResult:
        """Raises PluginError when the plugin cannot be reached or answers garbage."""
        ...

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        """Wrap ``plaintext`` (a seed). Raises InvalidArgument, PluginError."""
        ...

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        """Unwrap. Raises InvalidArgument (bad request), DecryptionError, PluginError."""
        ...
