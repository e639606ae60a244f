"""`kinko etcd` offline: decrypt, inspect and reencrypt through CliRunner, and bad input.

Every failure must exit with the code of its error class (``kinko.cli.errors``), print a
message naming what was wrong, never print plaintext, and write nothing to stdout.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kinko.cli.main import cli
from tests.etcd_values import Keys, configmap_payload, secret_payload, write_config

KEY = "/registry/secrets/ns/db"
PASSWORD = b"hunter2-very-secret"


@pytest.fixture
def keys() -> Keys:
    return Keys()


def run(args: list[str], stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["etcd", *args], input=stdin)


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def assert_failed(result: Result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    assert fragment in result.stderr
    assert result.stdout_bytes == b""
    assert PASSWORD not in result.stderr_bytes
    assert base64.b64encode(PASSWORD) not in result.stderr_bytes


@pytest.mark.parametrize("provider", ["gcm", "cbc", "box"])
def test_decrypt_writes_the_exact_plaintext(tmp_path: Path, keys: Keys, provider: str) -> None:
    config = write_config(tmp_path / "enc.yaml", keys, provider, "old")
    plaintext = secret_payload("db", password=PASSWORD)
    value = write(tmp_path, "value", keys.seal(provider, plaintext, KEY.encode()))
    result = run(["decrypt", "--encryption-config", str(config), "--key", KEY, "--in", value])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == plaintext


def test_decrypt_reads_stdin(tmp_path: Path, keys: Keys) -> None:
    config = write_config(tmp_path / "enc.yaml", keys, "gcm")
    sealed = keys.seal("gcm", b"raw bytes \x00\xff", KEY.encode())
    result = run(["decrypt", "--encryption-config", str(config), "--key", KEY], stdin=sealed)
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == b"raw bytes \x00\xff"


def test_decrypt_json_decodes_a_protobuf_secret(tmp_path: Path, keys: Keys) -> None:
    config = write_config(tmp_path / "enc.yaml", keys, "box")
    value = write(
        tmp_path, "v", keys.seal("box", secret_payload("db", password=PASSWORD), KEY.encode())
    )
    result = run(
        [
            "decrypt",
            "--encryption-config",
            str(config),
            "--key",
            KEY,
            "--in",
            value,
            "--output",
            "json",
        ]
    )
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert obj["kind"] == "Secret"
    assert obj["metadata"]["name"] == "db"
    assert base64.b64decode(obj["data"]["password"]) == PASSWORD


def test_decrypt_json_decodes_a_configmap_and_passes_json_through(
    tmp_path: Path, keys: Keys
) -> None:
    config = write_config(tmp_path / "enc.yaml", keys, "cbc")
    key = "/registry/configmaps/ns/cfg"
    value = write(tmp_path, "v", keys.seal("cbc", configmap_payload("cfg"), key.encode()))
    args = ["decrypt", "--encryption-config", str(config), "--output", "json"]
    result = run([*args, "--key", key, "--in", value])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data"] == {"k": "v"}
    crd = {"apiVersion": "stable.example.com/v1", "kind": "CronTab", "spec": {}}
    crd_key = "/registry/stable.example.com/crontabs/ns/c"
    crd_config = write_config(
        tmp_path / "crd.yaml", keys, "cbc", resources="[crontabs.stable.example.com]"
    )
    sealed = keys.seal("cbc", json.dumps(crd).encode(), crd_key.encode())
    crd_args = ["decrypt", "--encryption-config", str(crd_config), "--output", "json"]
    result = run([*crd_args, "--key", crd_key], stdin=sealed)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == crd


def test_decrypt_json_refuses_an_unknown_payload(tmp_path: Path, keys: Keys) -> None:
    config = write_config(tmp_path / "enc.yaml", keys, "gcm")
    sealed = keys.seal("gcm", PASSWORD, KEY.encode())
    result = run(
        ["decrypt", "--encryption-config", str(config), "--key", KEY, "--output", "json"],
        stdin=sealed,
    )
    assert_failed(result, 4, "unrecognised payload")


def test_custom_etcd_prefix_and_explicit_resource(tmp_path: Path, keys: Keys) -> None:
    config = write_config(tmp_path / "enc.yaml", keys, "gcm", resources="[secrets]")
    uuid_key = "/43da1478-5e9c-4ef3-a92a-2b19d540c8a5/registry/secrets/ns/db"
    sealed = keys.seal("gcm", b"pt", uuid_key.encode())
    result = run(["decrypt", "--encryption-config", str(config), "--key", uuid_key], stdin=sealed)
    assert (result.exit_code, result.stdout_bytes) == (0, b"pt")

    odd_key = "/kube/secrets/ns/db"
    sealed = keys.seal("gcm", b"pt", odd_key.encode())
    args = ["decrypt", "--encryption-config", str(config), "--key", odd_key]
    assert_failed(run(args, stdin=sealed), 4, "pass --resource")
    for extra in (["--resource", "secrets"], ["--etcd-prefix", "/kube"]):
        result = run([*args, *extra], stdin=sealed)
        assert (result.exit_code, result.stdout_bytes) == (0, b"pt"), result.output


def test_the_resource_picks_the_chain(tmp_path: Path, keys: Keys) -> None:
    """configmaps are not in the config, so they are identity: a sealed value does not open."""
    config = write_config(tmp_path / "enc.yaml", keys, "gcm", resources="[secrets]")
    key = "/registry/configmaps/ns/db"
    sealed = keys.seal("gcm", b"pt", key.encode())
    args = ["decrypt", "--encryption-config", str(config), "--key", key]
    assert_failed(run(args, stdin=sealed), 5, "no configured provider matches")
    result = run([*args, "--resource", "secrets"], stdin=sealed)
    assert (result.exit_code, result.stdout_bytes) == (0, b"pt")


def test_inspect_needs_no_key(tmp_path: Path, keys: Keys) -> None:
    sealed = keys.seal("gcm", secret_payload("db"), KEY.encode())
    result = run(["inspect", "--key", KEY], stdin=sealed)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["storage_key"] == KEY
    assert info["resource"] == "secrets"
    assert (info["provider"], info["key_name"], info["key_id"]) == ("aesgcm", "gcm", None)
    assert info["sizes"]["total"] == len(sealed)
    assert info["sizes"]["prefix"] == len(b"k8s:enc:aesgcm:v1:gcm:")


def test_inspect_of_plaintext_says_identity() -> None:
    result = run(["inspect", "--key", KEY], stdin=secret_payload("db"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["provider"] == "identity"


def test_reencrypt_offline_moves_a_value_to_the_first_provider(tmp_path: Path, keys: Keys) -> None:
    config = write_config(tmp_path / "enc.yaml", keys, "gcm", "old", "identity")
    plaintext = secret_payload("db", password=PASSWORD)
    for start in ("old", "identity", "gcm"):
        value = write(tmp_path, start, keys.seal(start, plaintext, KEY.encode()))
        result = run(["reencrypt", "--encryption-config", str(config), "--key", KEY, "--in", value])
        assert result.exit_code == 0, result.output
        resealed = result.stdout_bytes
        assert resealed.startswith(b"k8s:enc:aesgcm:v1:gcm:")
        assert keys.transformer("gcm").open(resealed, aad=KEY.encode()).plaintext == plaintext


def test_reencrypt_offline_refuses_live_only_options(tmp_path: Path, keys: Keys) -> None:
    config = write_config(tmp_path / "enc.yaml", keys, "gcm")
    for extra in (["--prefix", "/registry/"], ["--key", KEY, "--dry-run"], []):
        result = run(["reencrypt", "--encryption-config", str(config), *extra], stdin=b"")
        assert result.exit_code == 2, result.output
        assert "--endpoints" in result.stderr


@pytest.mark.parametrize("provider", ["gcm", "cbc", "box"])
def test_tampered_and_truncated_values_fail_opaquely(
    tmp_path: Path, keys: Keys, provider: str
) -> None:
    config = str(write_config(tmp_path / "enc.yaml", keys, provider))
    sealed = keys.seal(provider, secret_payload("db", password=PASSWORD), KEY.encode())
    flipped = bytearray(sealed)
    flipped[-1] ^= 0x01
    prefix_len = sealed.index(b":", len(b"k8s:enc:")) + 4
    for bad in (bytes(flipped), sealed[:-1], sealed[: prefix_len + 8]):
        for command in ("decrypt", "reencrypt"):
            result = run([command, "--encryption-config", config, "--key", KEY], stdin=bad)
            assert_failed(result, 5, "cannot decrypt value: no configured provider could decrypt")


def test_aad_from_another_key_fails_for_aesgcm(tmp_path: Path, keys: Keys) -> None:
    config = str(write_config(tmp_path / "enc.yaml", keys, "gcm"))
    sealed = keys.seal(
        "gcm", secret_payload("db", password=PASSWORD), b"/registry/secrets/ns/other"
    )
    result = run(["decrypt", "--encryption-config", config, "--key", KEY], stdin=sealed)
    assert_failed(result, 5, "cannot decrypt value")


def test_unknown_prefixes_fail_with_clear_errors(tmp_path: Path, keys: Keys) -> None:
    config = str(write_config(tmp_path / "enc.yaml", keys, "gcm"))
    for value in (b"k8s:enc:rot13:v1:k:abc", b"k8s:enc:aescbc:v1:other:" + b"\x00" * 32):
        result = run(["decrypt", "--encryption-config", config, "--key", KEY], stdin=value)
        assert_failed(result, 5, "no configured provider matches the value's prefix")
    result = run(["inspect", "--key", KEY], stdin=b"k8s:enc:rot13:v1:k:abc")
    assert_failed(result, 4, "unknown provider")
    result = run(["inspect", "--key", KEY], stdin=b"k8s:enc:kms:v2:name:\xff\xff")
    assert_failed(result, 4, "")


def test_plaintext_without_identity_is_refused_unless_opted_in(tmp_path: Path, keys: Keys) -> None:
    config = str(write_config(tmp_path / "enc.yaml", keys, "gcm"))
    args = ["decrypt", "--encryption-config", config, "--key", KEY]
    assert_failed(run(args, stdin=b"plain"), 5, "no configured provider matches")
    result = run([*args, "--read-unprefixed"], stdin=b"plain")
    assert (result.exit_code, result.stdout_bytes) == (0, b"plain")


def test_bad_configuration_exits_with_the_config_code(tmp_path: Path) -> None:
    config = tmp_path / "enc.yaml"
    config.write_text("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n")
    result = run(["decrypt", "--encryption-config", str(config), "--key", KEY], stdin=b"x")
    assert_failed(result, 3, "resources")


def test_in_and_endpoints_are_exclusive(tmp_path: Path, keys: Keys) -> None:
    config = str(write_config(tmp_path / "enc.yaml", keys, "gcm"))
    value = write(tmp_path, "v", b"x")
    result = run(
        [
            "decrypt",
            "--encryption-config",
            config,
            "--key",
            KEY,
            "--in",
            value,
            "--endpoints",
            "http://127.0.0.1:1",
        ]
    )
    assert result.exit_code == 2
    assert "either --in or --endpoints" in result.stderr


def test_unreachable_kms_plugin_is_a_plugin_error(tmp_path: Path, keys: Keys) -> None:
    config = tmp_path / "enc.yaml"
    config.write_text(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
        "- resources: [secrets]\n  providers:\n"
        f"  - kms: {{apiVersion: v2, name: kp, endpoint: 'unix://{tmp_path}/none.sock', "
        "timeout: 300ms}\n"
    )
    from kinko.crypto import kmsv2
    from kinko.crypto.types import DekSourceType, EncryptedObject

    envelope = kmsv2.encode_encrypted_object(
        EncryptedObject(
            encrypted_data=b"\x00" * 60,
            key_id="k1",
            encrypted_dek_source=b"\x01" * 32,
            annotations={},
            dek_source_type=DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
        )
    )
    value = b"k8s:enc:kms:v2:kp:" + envelope
    result = run(["decrypt", "--encryption-config", str(config), "--key", KEY], stdin=value)
    assert_failed(result, 10, "KMS plugin")
    result = run(["inspect", "--key", KEY], stdin=value)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["key_id"] == "k1"
