"""Shared by the etcd tool tests: EncryptionConfiguration files and values sealed as stored.

Values are sealed with the transformers of ``kinko.crypto.formats`` directly (not through
the tool under test), with keys drawn fresh for each test run.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path

from kinko.crypto.formats import AesCbc, AesGcm, Identity, Secretbox
from kinko.crypto.types import Transformer
from kinko.k8s.payload import encode_configmap, encode_secret


@dataclass(frozen=True)
class Keys:
    """One key per local provider, plus an old aescbc key being rotated out."""

    old_cbc: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    gcm: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    cbc: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    box: bytes = field(default_factory=lambda: os.urandom(32), repr=False)

    def transformer(self, name: str) -> Transformer:
        """``old``, ``cbc`` (aescbc), ``gcm`` (aesgcm), ``box`` (secretbox) or ``identity``."""
        if name == "old":
            return AesCbc("old", self.old_cbc, rng=os.urandom)
        if name == "gcm":
            return AesGcm("gcm", self.gcm, rng=os.urandom)
        if name == "cbc":
            return AesCbc("cbc", self.cbc, rng=os.urandom)
        if name == "box":
            return Secretbox("box", self.box, rng=os.urandom)
        if name == "identity":
            return Identity()
        raise ValueError(name)

    def seal(self, name: str, plaintext: bytes, key: bytes) -> bytes:
        return self.transformer(name).seal(plaintext, aad=key)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def provider_yaml(keys: Keys, name: str) -> str:
    """One provider list element in YAML flow style."""
    if name == "old":
        return f"aescbc: {{keys: [{{name: old, secret: {_b64(keys.old_cbc)}}}]}}"
    if name == "gcm":
        return f"aesgcm: {{keys: [{{name: gcm, secret: {_b64(keys.gcm)}}}]}}"
    if name == "cbc":
        return f"aescbc: {{keys: [{{name: cbc, secret: {_b64(keys.cbc)}}}]}}"
    if name == "box":
        return f"secretbox: {{keys: [{{name: box, secret: {_b64(keys.box)}}}]}}"
    if name == "identity":
        return "identity: {}"
    raise ValueError(name)


def config_text(keys: Keys, *providers: str, resources: str = "[secrets, configmaps]") -> str:
    """An EncryptionConfiguration with one entry: ``resources`` under ``providers`` in order."""
    lines = [
        "apiVersion: apiserver.config.k8s.io/v1",
        "kind: EncryptionConfiguration",
        "resources:",
        f"- resources: {resources}",
        "  providers:",
    ]
    lines += [f"  - {provider_yaml(keys, p)}" for p in providers]
    return "\n".join(lines) + "\n"


def write_config(
    path: Path, keys: Keys, *providers: str, resources: str = "[secrets, configmaps]"
) -> Path:
    path.write_text(config_text(keys, *providers, resources=resources))
    return path


def secret_payload(name: str, namespace: str = "ns", password: bytes = b"hunter2") -> bytes:
    return encode_secret(name=name, namespace=namespace, data={"password": password})


def configmap_payload(name: str, namespace: str = "ns") -> bytes:
    return encode_configmap(name=name, namespace=namespace, data={"k": "v"})
