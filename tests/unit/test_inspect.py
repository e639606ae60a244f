"""Key-free inspection of stored values: provider, names, KMS fields and sizes."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest

from kinko.crypto.formats import AesCbc, AesGcm, KmsV2, Secretbox
from kinko.crypto.inspect import inspect_value
from kinko.crypto.types import DekSourceType
from kinko.errors import EnvelopeError, InvalidArgument
from tests.unit.fakes import Base64KmsV2Keys

AAD = b"/registry/secrets/default/db-password"
SEED = bytes(range(64, 96))


def test_plaintext_is_identity() -> None:
    info = inspect_value(b'{"kind":"Secret"}')
    assert (info.provider, info.kms_api_version, info.key_name) == ("identity", None, "")
    assert (info.total_size, info.prefix_size, info.payload_size) == (17, 0, 17)
    assert info.key_id is None
    assert info.dek_source_fingerprint is None


@pytest.mark.parametrize(
    ("cls", "provider", "overhead"),
    [(AesCbc, "aescbc", 16 + 16), (AesGcm, "aesgcm", 12 + 16), (Secretbox, "secretbox", 24 + 16)],
)
def test_local_providers_report_key_name_and_sizes(
    cls: type[AesCbc | AesGcm | Secretbox], provider: str, overhead: int
) -> None:
    transformer = cls("key-2024", bytes(32), rng=os.urandom)
    value = transformer.seal(b"0123456789", aad=AAD)
    info = inspect_value(value)
    assert (info.provider, info.key_name, info.kms_api_version) == (provider, "key-2024", None)
    assert info.prefix_size == len(transformer.prefix)
    assert info.total_size == len(value)
    assert info.payload_size == len(value) - len(transformer.prefix)
    if provider != "aescbc":
        assert info.payload_size == 10 + overhead
    assert info.key_id is None
    assert info.annotations == ()


def test_kms_v1_reports_the_wrapped_dek_and_payload_sizes() -> None:
    wrapped = base64.b64encode(bytes(32))
    value = b"k8s:enc:kms:v1:old-kms:" + len(wrapped).to_bytes(2, "big") + wrapped + b"p" * 40
    info = inspect_value(value)
    assert (info.provider, info.kms_api_version, info.key_name) == ("kms", "v1", "old-kms")
    assert info.encrypted_dek_source_size == len(wrapped)
    assert info.encrypted_data_size == 40
    assert info.dek_source_fingerprint is not None
    assert info.dek_source_fingerprint.startswith("sha256:")


@pytest.mark.parametrize("tail", [b"", b"\x00", b"\x00\x10short"])
def test_truncated_kms_v1_headers_are_invalid(tail: bytes) -> None:
    with pytest.raises(InvalidArgument, match="kms v1 payload"):
        inspect_value(b"k8s:enc:kms:v1:old-kms:" + tail)


def test_kms_v2_reports_the_envelope_fields() -> None:
    keys = Base64KmsV2Keys(
        SEED,
        key_id="crk-v7",
        annotations={
            "version.encryption.remote.io": b"1",
            "wrapped.example.com": b"\x00\xff",
            "kek.example.com": b"A" * 41,
        },
    )
    value = KmsV2("kms-provider", keys, rng=os.urandom).seal(b"0123456789", aad=AAD)
    info = inspect_value(value)
    assert (info.provider, info.kms_api_version, info.key_name) == ("kms", "v2", "kms-provider")
    assert info.key_id == "crk-v7"
    assert info.dek_source_type == DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED
    assert info.encrypted_data_size == 32 + 12 + 10 + 16
    assert info.encrypted_dek_source_size == len(base64.b64encode(SEED))
    assert [(a.key, a.value_size, a.value) for a in info.annotations] == [
        ("kek.example.com", 41, None),  # printable, but too long to be an id: maybe a key
        ("version.encryption.remote.io", 1, "1"),
        ("wrapped.example.com", 2, None),
    ]
    fingerprints = [a.value_fingerprint for a in info.annotations]
    assert fingerprints[0] == "sha256:" + hashlib.sha256(b"A" * 41).hexdigest()
    assert len(set(fingerprints)) == 3


def test_values_under_one_seed_share_a_fingerprint_until_rotation() -> None:
    keys = Base64KmsV2Keys(SEED, key_id="1")
    transformer = KmsV2("kms", keys, rng=os.urandom)
    first = inspect_value(transformer.seal(b"a", aad=AAD)).dek_source_fingerprint
    second = inspect_value(transformer.seal(b"b", aad=AAD)).dek_source_fingerprint
    keys.rotate(bytes(32), key_id="2")
    third = inspect_value(transformer.seal(b"c", aad=AAD)).dek_source_fingerprint
    assert first == second != third


def test_json_form_is_serialisable_and_carries_no_ciphertext() -> None:
    keys = Base64KmsV2Keys(SEED)
    value = KmsV2("kms", keys, rng=os.urandom).seal(b"top secret", aad=AAD)
    document = inspect_value(value).to_json_dict()
    text = json.dumps(document)
    assert document["provider"] == "kms"
    assert document["dek_source_type"] == "HKDF_SHA256_XNONCE_AES_GCM_SEED"
    assert document["sizes"] == {
        "total": len(value),
        "prefix": len(b"k8s:enc:kms:v2:kms:"),
        "payload": len(value) - len(b"k8s:enc:kms:v2:kms:"),
        "encrypted_data": 32 + 12 + 10 + 16,
        "encrypted_dek_source": 44,
    }
    assert base64.b64encode(SEED).decode() not in text
    assert "top secret" not in text


@pytest.mark.parametrize(
    "value",
    [b"k8s:enc:", b"k8s:enc:aesgcm:v2:key1:xx", b"k8s:enc:future:v1:key1:xx"],
)
def test_unknown_encrypted_prefixes_are_invalid(value: bytes) -> None:
    with pytest.raises(InvalidArgument, match="unknown provider"):
        inspect_value(value)


@pytest.mark.parametrize(
    "value",
    [b"k8s:enc:aesgcm:v1:", b"k8s:enc:aesgcm:v1::payload", b"k8s:enc:secretbox:v1:no-colon"],
)
def test_a_missing_key_name_is_invalid(value: bytes) -> None:
    with pytest.raises(InvalidArgument, match="non-empty name"):
        inspect_value(value)


def test_a_key_name_that_is_not_utf8_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="UTF-8"):
        inspect_value(b"k8s:enc:aescbc:v1:\xff\xfe:payload")


@pytest.mark.parametrize("body", [b"", b"\xff\xff", b"\x0a\x01x"])
def test_malformed_kms_v2_envelopes_are_envelope_errors(body: bytes) -> None:
    with pytest.raises(EnvelopeError):
        inspect_value(b"k8s:enc:kms:v2:kms:" + body)
