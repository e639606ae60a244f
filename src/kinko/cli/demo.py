"""`kinko demo`: the end-to-end walk that `make run` shows until the cluster store exists.

It starts a real KMS v2 plugin on a temporary unix socket, writes an EncryptionConfiguration
that uses it, seals a sample Secret exactly as kube-apiserver would store it, inspects the
stored value without any key, opens it again through a fresh KMS session, and prints each
step. Nothing it prints is key material: only sizes, names, key_ids and the sample's own
(made-up) plaintext.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click
from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax

from kinko.crypto.config import KmsConfig, build_chains, parse_encryption_config
from kinko.crypto.inspect import inspect_value
from kinko.errors import KinkoError
from kinko.k8s.payload import decode_payload, encode_secret
from kinko.kms.client import GrpcKmsV1Api, GrpcKmsV2Api
from kinko.kms.envelope import KmsV2Session
from kinko.kms.plugin import LocalKeyPlugin, generate_key_file, load_key_file
from kinko.kms.server import KmsV2Server

STORAGE_KEY = "/registry/secrets/default/db-credentials"

CONFIG_TEMPLATE = """\
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets, configmaps]
    providers:
      - kms:
          apiVersion: v2
          name: kinko-demo
          endpoint: {endpoint}
          timeout: 3s
      - identity: {{}}
"""


@click.command()
def demo() -> None:
    """Walk through sealing one Secret with a KMS v2 plugin, step by step."""
    console = Console()
    with tempfile.TemporaryDirectory(prefix="kinko-demo-") as tmp:
        work = Path(tmp)
        key_file = work / "kms.key"
        generate_key_file(key_file)
        endpoint = f"unix://{work / 'kms.sock'}"
        plugin = LocalKeyPlugin(load_key_file(key_file))
        server = KmsV2Server(plugin, endpoint)
        server.start()
        try:
            _walk(console, work, endpoint, plugin.status().key_id)
        finally:
            server.stop(grace=1.0)


def _step(console: Console, n: int, title: str) -> None:
    console.rule(f"[bold cyan]{n}. {title}")


def _walk(console: Console, work: Path, endpoint: str, key_id: str) -> None:
    _step(console, 1, "KMS v2 plugin")
    console.print(f"plugin listening on [bold]{endpoint}[/] (socket mode 0600)")
    console.print(f"key_id reported by Status: [bold]{key_id}[/]")

    _step(console, 2, "EncryptionConfiguration")
    config_text = CONFIG_TEMPLATE.format(endpoint=endpoint)
    config_path = work / "encryption-config.yaml"
    config_path.write_text(config_text)
    console.print(Syntax(config_text, "yaml", theme="ansi_dark"))
    config = parse_encryption_config(config_path.read_bytes())

    sessions: list[GrpcKmsV2Api] = []

    def kms_v2(kms: KmsConfig) -> KmsV2Session:
        api = GrpcKmsV2Api(kms.endpoint, timeout=kms.timeout_seconds)
        sessions.append(api)
        return KmsV2Session(api, name=kms.name)

    def kms_v1(kms: KmsConfig) -> GrpcKmsV1Api:
        return GrpcKmsV1Api(kms.endpoint, timeout=kms.timeout_seconds)

    try:
        _step(console, 3, "Seal a Secret as kube-apiserver stores it")
        plaintext = encode_secret(
            name="db-credentials",
            namespace="default",
            data={"username": b"app", "password": b"correct horse battery staple"},
        )
        writer = build_chains(config, kms_v2=kms_v2, kms_v1=kms_v1, rng=os.urandom)
        stored = writer.chain_for("secrets").seal(plaintext, aad=STORAGE_KEY.encode())
        console.print(f"storage key (the AAD): [bold]{STORAGE_KEY}[/]")
        console.print(
            f"plaintext: {len(plaintext)} bytes of Kubernetes protobuf; "
            f"stored value: {len(stored)} bytes starting with "
            f"[bold]{stored[: stored.index(b':', 20) + 1].decode()}[/]"
        )

        _step(console, 4, "Inspect the stored value (no key access)")
        console.print_json(json.dumps(inspect_value(stored).to_json_dict()))

        _step(console, 5, "Decrypt it through a fresh KMS session")
        reader = build_chains(config, kms_v2=kms_v2, kms_v1=kms_v1, rng=os.urandom)
        opened = reader.chain_for("secrets").open(stored, aad=STORAGE_KEY.encode())
        console.print(
            f"provider {opened.provider} {opened.key_name!r}, key_id {opened.key_id}, "
            f"stale={opened.stale}"
        )
        console.print_json(json.dumps(decode_payload(opened.plaintext)))

        _step(console, 6, "Tamper with one byte")
        tampered = bytearray(stored)
        tampered[len(stored) // 2] ^= 0x01  # a byte inside encryptedData
        try:
            reader.chain_for("secrets").open(bytes(tampered), aad=STORAGE_KEY.encode())
        except KinkoError as exc:
            console.print(f"refused: [bold red]{type(exc).__name__}[/]: {exc}")
        _step(console, 7, "Move it to another storage key (AAD mismatch)")
        try:
            reader.chain_for("secrets").open(stored, aad=b"/registry/secrets/default/other")
        except KinkoError as exc:
            console.print(f"refused: [bold red]{type(exc).__name__}[/]: {exc}")
    finally:
        for api in sessions:
            api.close()
    console.print(Panel("done: sealed, inspected, opened, and tampering refused", style="green"))
