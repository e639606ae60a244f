"""Each transformer: exact layout, key checks, AAD binding, staleness and its one opaque error."""

from __future__ import annotations

import base64
import dataclasses
import os
import threading

import nacl.secret
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kinko.crypto import kmsv2
from kinko.crypto.chain import ProviderChain
from kinko.crypto.formats import AesCbc, AesGcm, Identity, KmsV1, KmsV2, Secretbox
from kinko.crypto.types import DekSourceType, EncryptedObject, Opened, Transformer
from kinko.errors import DecryptionError, EnvelopeError, InvalidArgument, PluginError
from tests.unit.fakes import Base64KmsV1Unwrapper, Base64KmsV2Keys, ReplayRng, StreamRng

AAD = b"/registry/secrets/default/db-password"
OTHER_AAD = b"/registry/secrets/default/other"
KEY32 = bytes(range(32))
KEY16 = bytes(range(16))
SEED = bytes(range(64, 96))


def assert_opaque(exc: DecryptionError) -> None:
    """The one decryption error: fixed reason, no cause or context shown in a traceback."""
    assert exc.reason == DecryptionError.NOT_AUTHENTIC
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


def open_fails(transformer: Transformer, value: bytes, aad: bytes = AAD) -> None:
    with pytest.raises(DecryptionError) as info:
        transformer.open(value, aad=aad)
    assert_opaque(info.value)


def cbc_raw(key: bytes, iv: bytes, padded: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + enc.update(padded) + enc.finalize()


# --- identity --------------------------------------------------------------------------------


def test_identity_stores_the_plaintext_as_is() -> None:
    identity = Identity()
    assert (identity.kind, identity.name, identity.prefix) == ("identity", "", b"")
    assert identity.seal(b'{"kind":"Secret"}', aad=AAD) == b'{"kind":"Secret"}'
    opened = identity.open(b"k8s\x00\x0a\x0cprotobuf", aad=AAD)
    assert opened.plaintext == b"k8s\x00\x0a\x0cprotobuf"
    assert (opened.stale, opened.provider, opened.key_name) == (False, "identity", "")


def test_identity_refuses_encrypted_data() -> None:
    open_fails(Identity(), b"k8s:enc:aescbc:v1:key1:whatever")
    open_fails(Identity(), b"k8s:enc:")


def test_identity_reads_a_lookalike_that_is_not_the_reserved_prefix() -> None:
    assert Identity().open(b"k8s:encrypted", aad=AAD).plaintext == b"k8s:encrypted"


# --- constructors ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [AesCbc, AesGcm])
@pytest.mark.parametrize("size", [16, 24, 32])
def test_aes_providers_accept_16_24_32_byte_keys(cls: type[AesCbc | AesGcm], size: int) -> None:
    transformer = cls("key1", bytes(size), rng=os.urandom)
    assert transformer.open(transformer.seal(b"x", aad=AAD), aad=AAD).plaintext == b"x"


@pytest.mark.parametrize("cls", [AesCbc, AesGcm])
@pytest.mark.parametrize("size", [0, 8, 15, 17, 31, 33, 64])
def test_aes_providers_refuse_other_key_sizes(cls: type[AesCbc | AesGcm], size: int) -> None:
    key = b"\x5a" * size
    with pytest.raises(InvalidArgument) as info:
        cls("key1", key, rng=os.urandom)
    message = str(info.value)
    assert f"got {size}" in message
    assert "16, 24 or 32" in message
    if key:
        assert key.hex() not in message
        assert "ZZZZ" not in message


@pytest.mark.parametrize("size", [0, 16, 24, 31, 33])
def test_secretbox_needs_a_32_byte_key(size: int) -> None:
    with pytest.raises(InvalidArgument, match=f"expected 32 bytes, got {size}"):
        Secretbox("key1", b"\x5a" * size, rng=os.urandom)


@pytest.mark.parametrize("cls", [AesCbc, AesGcm, Secretbox])
def test_local_providers_need_a_key_name(cls: type[AesCbc | AesGcm | Secretbox]) -> None:
    with pytest.raises(InvalidArgument):
        cls("", KEY32, rng=os.urandom)


def test_kms_v2_names_may_not_contain_a_colon() -> None:
    with pytest.raises(InvalidArgument, match="must not contain ':'"):
        KmsV2("my:kms", Base64KmsV2Keys(SEED), rng=os.urandom)
    with pytest.raises(InvalidArgument):
        KmsV2("", Base64KmsV2Keys(SEED), rng=os.urandom)


def test_kms_v1_names_may_contain_a_colon_as_upstream() -> None:
    assert KmsV1("my:kms", Base64KmsV1Unwrapper()).prefix == b"k8s:enc:kms:v1:my:kms:"


def test_prefixes_are_exactly_upstreams() -> None:
    keys = Base64KmsV2Keys(SEED)
    assert AesCbc("key1", KEY32, rng=os.urandom).prefix == b"k8s:enc:aescbc:v1:key1:"
    assert AesGcm("key1", KEY32, rng=os.urandom).prefix == b"k8s:enc:aesgcm:v1:key1:"
    assert Secretbox("key1", KEY32, rng=os.urandom).prefix == b"k8s:enc:secretbox:v1:key1:"
    assert KmsV1("kms1", Base64KmsV1Unwrapper()).prefix == b"k8s:enc:kms:v1:kms1:"
    assert KmsV2("kms-provider", keys, rng=os.urandom).prefix == b"k8s:enc:kms:v2:kms-provider:"


def test_repr_never_shows_key_material() -> None:
    key = b"\x5a" * 32
    for transformer in (
        AesCbc("key1", key, rng=os.urandom),
        AesGcm("key1", key, rng=os.urandom),
        Secretbox("key1", key, rng=os.urandom),
        KmsV2("kms", Base64KmsV2Keys(key), rng=os.urandom),
    ):
        text = repr(transformer)
        assert "key1" in text or "kms" in text
        assert "ZZZZ" not in text
        assert key.hex() not in text
        assert "5a5a" not in text


def test_a_misbehaving_rng_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="rng: expected 12 bytes, got 11"):
        AesGcm("key1", KEY32, rng=lambda n: b"\x00" * (n - 1)).seal(b"x", aad=AAD)
    with pytest.raises(InvalidArgument, match="rng: expected 16 bytes"):
        AesCbc("key1", KEY32, rng=lambda n: b"").seal(b"x", aad=AAD)
    with pytest.raises(InvalidArgument, match="rng: expected 24 bytes"):
        Secretbox("key1", KEY32, rng=lambda n: b"\x00" * 25).seal(b"x", aad=AAD)


# --- aescbc ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "blocks"), [(0, 1), (1, 1), (15, 1), (16, 2), (17, 2), (32, 3)])
def test_aescbc_layout_is_iv_then_pkcs7_blocks(size: int, blocks: int) -> None:
    iv = bytes(range(16))
    transformer = AesCbc("key1", KEY32, rng=ReplayRng(iv))
    plaintext = b"p" * size
    value = transformer.seal(plaintext, aad=AAD)
    padder = padding.PKCS7(128).padder()
    expected = cbc_raw(KEY32, iv, padder.update(plaintext) + padder.finalize())
    assert value == b"k8s:enc:aescbc:v1:key1:" + expected
    assert len(value) == len(transformer.prefix) + 16 + 16 * blocks


def test_aescbc_has_no_aad() -> None:
    transformer = AesCbc("key1", KEY32, rng=os.urandom)
    value = transformer.seal(b"secret", aad=AAD)
    assert transformer.open(value, aad=OTHER_AAD).plaintext == b"secret"


@pytest.mark.parametrize("body_size", [0, 15, 16, 31, 33, 47], ids=lambda n: f"{n}-byte payload")
def test_aescbc_refuses_bad_lengths(body_size: int) -> None:
    transformer = AesCbc("key1", KEY32, rng=os.urandom)
    open_fails(transformer, transformer.prefix + b"\x00" * body_size)


@pytest.mark.parametrize(
    "last_block",
    [
        b"\x00" * 16,  # pad length 0
        b"a" * 15 + b"\x11",  # pad length 17 > block
        b"a" * 13 + b"\x01\x02\x03",  # inconsistent pad bytes
        b"a" * 12 + b"\x04\x04\x05\x04",
    ],
    ids=["zero", "over-block", "ragged", "one-wrong-byte"],
)
def test_aescbc_refuses_bad_padding(last_block: bytes) -> None:
    transformer = AesCbc("key1", KEY32, rng=os.urandom)
    value = transformer.prefix + cbc_raw(KEY32, bytes(16), b"b" * 16 + last_block)
    open_fails(transformer, value)


def test_aescbc_accepts_a_full_padding_block() -> None:
    transformer = AesCbc("key1", KEY32, rng=os.urandom)
    value = transformer.prefix + cbc_raw(KEY32, bytes(16), b"\x10" * 16)
    assert transformer.open(value, aad=AAD).plaintext == b""


def test_aescbc_wrong_key_gives_the_opaque_error() -> None:
    value = AesCbc("key1", KEY32, rng=StreamRng(b"cbc")).seal(b"secret", aad=AAD)
    open_fails(AesCbc("key1", bytes(32), rng=os.urandom), value)


def test_aescbc_reads_in_any_order_each_give_their_own_plaintext() -> None:
    # One decryptor serves every read of a key: what one value leaves in it (a value of
    # another size, a refused padding, a wrong-length payload) must not reach the next.
    transformer = AesCbc("key1", KEY32, rng=StreamRng(b"order"))
    plaintexts = [b"", b"a", b"b" * 15, b"c" * 16, b"d" * 17, os.urandom(1000), b"e" * 5000]
    values = [transformer.seal(p, aad=AAD) for p in plaintexts]
    bad_padding = transformer.prefix + cbc_raw(KEY32, bytes(16), b"b" * 16 + b"\x00" * 16)
    for order in (values, values[::-1], values[1::2] + values[::2]):
        for value in order:
            open_fails(transformer, bad_padding)
            open_fails(transformer, transformer.prefix + b"\x00" * 33)
            expected = plaintexts[values.index(value)]
            assert transformer.open(value, aad=AAD).plaintext == expected
            assert transformer.open(value, aad=AAD).plaintext == expected


def test_aescbc_reads_while_its_decryptor_is_busy() -> None:
    # A reader that finds the kept decryptor in use by another thread decrypts with its own.
    transformer = AesCbc("key1", KEY32, rng=StreamRng(b"busy"))
    value = transformer.seal(b"secret" * 100, aad=AAD)
    kept = transformer._decryptor
    with kept.lock:
        assert transformer.open(value, aad=AAD).plaintext == b"secret" * 100
        open_fails(transformer, transformer.prefix + cbc_raw(KEY32, bytes(16), b"\x00" * 32))
    assert transformer.open(value, aad=AAD).plaintext == b"secret" * 100


# --- aesgcm ----------------------------------------------------------------------------------


def test_aesgcm_layout_is_nonce_ct_tag_with_the_storage_key_as_aad() -> None:
    nonce = bytes(range(12))
    value = AesGcm("key1", KEY16, rng=ReplayRng(nonce)).seal(b"secret", aad=AAD)
    expected = nonce + AESGCM(KEY16).encrypt(nonce, b"secret", AAD)
    assert value == b"k8s:enc:aesgcm:v1:key1:" + expected


def test_aesgcm_is_bound_to_its_storage_key() -> None:
    transformer = AesGcm("key1", KEY32, rng=os.urandom)
    value = transformer.seal(b"secret", aad=AAD)
    open_fails(transformer, value, aad=OTHER_AAD)
    open_fails(transformer, value, aad=b"")


def test_aesgcm_wrong_key_truncation_and_other_prefix_fail() -> None:
    transformer = AesGcm("key1", KEY32, rng=os.urandom)
    value = transformer.seal(b"secret", aad=AAD)
    open_fails(AesGcm("key1", bytes(32), rng=os.urandom), value)
    open_fails(transformer, value[:-1])
    open_fails(transformer, transformer.prefix + b"\x00" * 27)
    open_fails(transformer, transformer.prefix)
    open_fails(AesGcm("key2", KEY32, rng=os.urandom), value)


def test_aesgcm_open_copes_with_bytearray_input() -> None:
    transformer = AesGcm("key1", KEY32, rng=os.urandom)
    value = transformer.seal(b"secret", aad=AAD)
    assert transformer.open(bytes(bytearray(value)), aad=AAD).plaintext == b"secret"


# --- secretbox -------------------------------------------------------------------------------


def test_secretbox_layout_is_nonce_tag_ct() -> None:
    nonce = bytes(range(24))
    value = Secretbox("key1", KEY32, rng=ReplayRng(nonce)).seal(b"secret", aad=AAD)
    body = value[len(b"k8s:enc:secretbox:v1:key1:") :]
    assert body[:24] == nonce
    assert len(body) == 24 + 16 + len(b"secret")
    assert body == bytes(nacl.secret.SecretBox(KEY32).encrypt(b"secret", nonce))


def test_secretbox_has_no_aad_but_detects_tampering() -> None:
    transformer = Secretbox("key1", KEY32, rng=os.urandom)
    value = transformer.seal(b"secret", aad=AAD)
    assert transformer.open(value, aad=OTHER_AAD).plaintext == b"secret"
    open_fails(transformer, value[:-1] + bytes([value[-1] ^ 1]))
    open_fails(transformer, transformer.prefix + b"\x00" * 39)
    open_fails(Secretbox("key1", bytes(32), rng=os.urandom), value)


# --- KMS v1 ----------------------------------------------------------------------------------


def kms_v1_value(dek: bytes, payload: bytes, *, name: str = "kms1") -> bytes:
    wrapped = base64.b64encode(dek)
    head = f"k8s:enc:kms:v1:{name}:".encode() + len(wrapped).to_bytes(2, "big")
    return head + wrapped + payload


def test_kms_v1_reads_a_gcm_payload_as_current() -> None:
    nonce = bytes(12)
    value = kms_v1_value(KEY32, nonce + AESGCM(KEY32).encrypt(nonce, b"secret", AAD))
    opened = KmsV1("kms1", Base64KmsV1Unwrapper()).open(value, aad=AAD)
    assert (opened.plaintext, opened.stale, opened.provider, opened.key_name) == (
        b"secret",
        False,
        "kms",
        "kms1",
    )


def test_kms_v1_falls_back_to_cbc_and_marks_it_stale() -> None:
    padder = padding.PKCS7(128).padder()
    payload = cbc_raw(KEY32, bytes(16), padder.update(b"secret") + padder.finalize())
    opened = KmsV1("kms1", Base64KmsV1Unwrapper()).open(kms_v1_value(KEY32, payload), aad=AAD)
    assert (opened.plaintext, opened.stale) == (b"secret", True)
    # No AAD in CBC payloads: another storage key reads the same.
    again = KmsV1("kms1", Base64KmsV1Unwrapper()).open(kms_v1_value(KEY32, payload), aad=b"")
    assert again.plaintext == b"secret"


def test_kms_v1_gcm_payload_under_another_storage_key_fails() -> None:
    nonce = bytes(12)
    value = kms_v1_value(KEY32, nonce + AESGCM(KEY32).encrypt(nonce, b"secret", AAD))
    open_fails(KmsV1("kms1", Base64KmsV1Unwrapper()), value, aad=OTHER_AAD)


@pytest.mark.parametrize(
    "tail",
    [b"", b"\x00", b"\x00\x2c" + b"A" * 10, b"\x00\x03!!!" + b"p" * 40],
    ids=["no length", "half length", "length past end", "dek not base64"],
)
def test_kms_v1_malformed_values_fail(tail: bytes) -> None:
    open_fails(KmsV1("kms1", Base64KmsV1Unwrapper()), b"k8s:enc:kms:v1:kms1:" + tail)


def test_kms_v1_refuses_a_dek_of_the_wrong_size() -> None:
    open_fails(KmsV1("kms1", Base64KmsV1Unwrapper()), kms_v1_value(b"k" * 20, b"p" * 48))


def test_kms_v1_plugin_failure_passes_unchanged() -> None:
    unwrapper = Base64KmsV1Unwrapper()
    unwrapper.unavailable = True
    with pytest.raises(PluginError):
        KmsV1("kms1", unwrapper).open(kms_v1_value(KEY32, b"p" * 48), aad=AAD)


def test_kms_v1_is_read_only() -> None:
    with pytest.raises(InvalidArgument, match="kms v1 provider kms1 is read-only"):
        KmsV1("kms1", Base64KmsV1Unwrapper()).seal(b"secret", aad=AAD)


# --- KMS v2 ----------------------------------------------------------------------------------


def test_kms_v2_writes_type1_with_the_write_state() -> None:
    keys = Base64KmsV2Keys(SEED, key_id="kid-1")
    info, nonce = bytes(range(32)), bytes(range(32, 44))
    rng = ReplayRng(info + nonce)
    value = KmsV2("kms-provider", keys, rng=rng).seal(b"secret", aad=AAD)
    assert rng.remaining == 0
    prefix = b"k8s:enc:kms:v2:kms-provider:"
    assert value.startswith(prefix)
    obj = kmsv2.decode_encrypted_object(value[len(prefix) :])
    assert obj.dek_source_type == DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED
    assert obj.key_id == "kid-1"
    assert obj.encrypted_dek_source == base64.b64encode(SEED)
    assert dict(obj.annotations) == {"local-kek.kms.kubernetes.io": b"encrypted-local-kek"}
    expected = kmsv2.seal_seed_type(SEED, b"secret", aad=AAD, info=info, nonce=nonce)
    assert obj.encrypted_data == expected
    assert value.endswith(b"\x28\x01")


def test_kms_v2_writes_under_one_info_with_a_new_nonce_each_time() -> None:
    transformer = KmsV2("kms", Base64KmsV2Keys(SEED), rng=StreamRng(b"kms"))
    values = [transformer.seal(b"same", aad=AAD) for _ in range(3)]
    objs = [kmsv2.decode_encrypted_object(v[len(transformer.prefix) :]) for v in values]
    # One info (one derived DEK), a fresh nonce and so a fresh ciphertext for every write.
    assert len({obj.encrypted_data[:32] for obj in objs}) == 1
    assert len({obj.encrypted_data[32:44] for obj in objs}) == 3
    assert len({obj.encrypted_data[44:] for obj in objs}) == 3
    # Everything but encryptedData is the write state, identical for all writes.
    assert len({obj.encrypted_dek_source for obj in objs}) == 1
    # Each value opens with the DEK kube-apiserver derives from its own info.
    for obj in objs:
        assert kmsv2.open_seed_type(SEED, obj.encrypted_data, aad=AAD) == b"same"


def test_kms_v2_draws_a_new_info_after_writes_per_info_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kmsv2, "WRITES_PER_INFO", 3)
    info_a, info_b = bytes(range(32)), bytes(range(100, 132))
    nonces = [bytes([i]) * 12 for i in range(1, 6)]
    # The draws in order: info, three nonces, then the next info and two nonces.
    rng = ReplayRng(info_a + b"".join(nonces[:3]) + info_b + b"".join(nonces[3:]))
    transformer = KmsV2("kms", Base64KmsV2Keys(SEED), rng=rng)
    values = [transformer.seal(b"v%d" % i, aad=AAD) for i in range(5)]
    assert rng.remaining == 0
    datas = [
        kmsv2.decode_encrypted_object(v[len(transformer.prefix) :]).encrypted_data for v in values
    ]
    assert [d[:32] for d in datas] == [info_a] * 3 + [info_b] * 2
    assert [d[32:44] for d in datas] == nonces
    for i, data in enumerate(datas):
        info, nonce = data[:32], data[32:44]
        expected = kmsv2.seal_seed_type(SEED, b"v%d" % i, aad=AAD, info=info, nonce=nonce)
        assert data == expected


def test_kms_v2_a_new_write_state_draws_a_new_info_at_once() -> None:
    keys = Base64KmsV2Keys(SEED, key_id="1")
    transformer = KmsV2("kms", keys, rng=os.urandom)
    first = transformer.seal(b"a", aad=AAD)
    keys.rotate(bytes(range(32)), key_id="2")
    second = transformer.seal(b"b", aad=AAD)
    infos = [
        kmsv2.decode_encrypted_object(v[len(transformer.prefix) :]).encrypted_data[:32]
        for v in (first, second)
    ]
    assert infos[0] != infos[1]
    assert transformer.open(second, aad=AAD).key_id == "2"


def test_kms_v2_round_trip_is_current() -> None:
    keys = Base64KmsV2Keys(SEED)
    transformer = KmsV2("kms", keys, rng=os.urandom)
    opened = transformer.open(transformer.seal(b"secret", aad=AAD), aad=AAD)
    assert (opened.plaintext, opened.stale, opened.key_id) == (b"secret", False, "1")
    assert opened.dek_source_type == DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED
    assert (opened.provider, opened.key_name) == ("kms", "kms")


def test_kms_v2_rotation_makes_old_values_stale_and_new_ones_current() -> None:
    keys = Base64KmsV2Keys(SEED, key_id="1")
    transformer = KmsV2("kms", keys, rng=os.urandom)
    old = transformer.seal(b"old", aad=AAD)
    keys.rotate(bytes(32), key_id="2")
    new = transformer.seal(b"new", aad=AAD)
    assert kmsv2.decode_encrypted_object(new[len(transformer.prefix) :]).key_id == "2"
    old_opened = transformer.open(old, aad=AAD)
    assert (old_opened.plaintext, old_opened.stale, old_opened.key_id) == (b"old", True, "1")
    new_opened = transformer.open(new, aad=AAD)
    assert (new_opened.stale, new_opened.key_id) == (False, "2")


def test_kms_v2_type0_values_read_as_stale() -> None:
    dek = bytes(range(32))
    nonce = bytes(12)
    obj = EncryptedObject(
        encrypted_data=nonce + AESGCM(dek).encrypt(nonce, b"legacy", AAD),
        key_id="1",
        encrypted_dek_source=base64.b64encode(dek),
        annotations={},
        dek_source_type=DekSourceType.AES_GCM_KEY,
    )
    value = b"k8s:enc:kms:v2:kms:" + kmsv2.encode_encrypted_object(obj)
    opened = KmsV2("kms", Base64KmsV2Keys(SEED), rng=os.urandom).open(value, aad=AAD)
    assert (opened.plaintext, opened.stale) == (b"legacy", True)
    assert opened.dek_source_type == DekSourceType.AES_GCM_KEY


def test_kms_v2_without_a_current_key_id_reads_everything_as_stale() -> None:
    class NeverHealthy(Base64KmsV2Keys):
        def current_key_id(self) -> str | None:
            return None

    value = KmsV2("kms", Base64KmsV2Keys(SEED), rng=os.urandom).seal(b"secret", aad=AAD)
    opened = KmsV2("kms", NeverHealthy(SEED), rng=os.urandom).open(value, aad=AAD)
    assert (opened.plaintext, opened.stale) == (b"secret", True)


def test_kms_v2_is_bound_to_its_storage_key() -> None:
    transformer = KmsV2("kms", Base64KmsV2Keys(SEED), rng=os.urandom)
    open_fails(transformer, transformer.seal(b"secret", aad=AAD), aad=OTHER_AAD)


def test_kms_v2_destroyed_root_key_makes_values_unreadable() -> None:
    keys = Base64KmsV2Keys(SEED, key_id="1")
    transformer = KmsV2("kms", keys, rng=os.urandom)
    value = transformer.seal(b"secret", aad=AAD)
    keys.rotate(bytes(32), key_id="2")
    keys.forget("1")
    with pytest.raises(DecryptionError):
        transformer.open(value, aad=AAD)


@pytest.mark.parametrize(
    "body",
    [b"", b"\xff\xff", b"\x0a\x01x", b"\x0a\x01x\x12\x011\x1a\x01s\x28\x05"],
    ids=["empty", "not protobuf", "missing fields", "unknown type"],
)
def test_kms_v2_malformed_envelopes_are_the_opaque_error(body: bytes) -> None:
    transformer = KmsV2("kms", Base64KmsV2Keys(SEED), rng=os.urandom)
    open_fails(transformer, transformer.prefix + body)


def test_kms_v2_short_seed_from_the_plugin_is_the_opaque_error() -> None:
    short = b"s" * 16
    obj = EncryptedObject(
        encrypted_data=b"\x00" * 64,
        key_id="1",
        encrypted_dek_source=base64.b64encode(short),
        annotations={},
        dek_source_type=DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
    )
    transformer = KmsV2("kms", Base64KmsV2Keys(SEED), rng=os.urandom)
    open_fails(transformer, transformer.prefix + kmsv2.encode_encrypted_object(obj))


def test_kms_v2_plugin_failures_pass_unchanged() -> None:
    keys = Base64KmsV2Keys(SEED)
    transformer = KmsV2("kms", keys, rng=os.urandom)
    value = transformer.seal(b"secret", aad=AAD)
    keys.unavailable = True
    with pytest.raises(PluginError):
        transformer.seal(b"secret", aad=AAD)
    with pytest.raises(PluginError):
        transformer.open(value, aad=AAD)


def test_kms_v2_refuses_a_write_state_that_breaks_the_field_rules() -> None:
    keys = Base64KmsV2Keys(SEED, key_id="k" * 1025)
    with pytest.raises(EnvelopeError, match="key_id"):
        KmsV2("kms", keys, rng=os.urandom).seal(b"secret", aad=AAD)
    bad_notes = Base64KmsV2Keys(SEED, annotations={"Not_An_FQDN": b"x"})
    with pytest.raises(EnvelopeError, match="annotations"):
        KmsV2("kms", bad_notes, rng=os.urandom).seal(b"secret", aad=AAD)


def test_kms_v2_refuses_a_short_seed_for_writing() -> None:
    with pytest.raises(InvalidArgument, match="seed"):
        KmsV2("kms", Base64KmsV2Keys(b"s" * 31), rng=os.urandom).seal(b"secret", aad=AAD)


def test_kms_v2_large_values_match_protobufs_encoding() -> None:
    keys = Base64KmsV2Keys(SEED)
    transformer = KmsV2("kms", keys, rng=os.urandom)
    plaintext = os.urandom(64 * 1024)
    value = transformer.seal(plaintext, aad=AAD)
    obj = kmsv2.decode_encrypted_object(value[len(transformer.prefix) :])
    assert transformer.prefix + kmsv2.encode_encrypted_object(obj) == value
    assert transformer.open(value, aad=AAD).plaintext == plaintext


@pytest.mark.parametrize("size", [1, 4096 - 60, 4096, 5000, 64 * 1024])
def test_kms_v2_every_flipped_byte_of_encrypted_data_is_detected(size: int) -> None:
    # Small values are sliced out of the stored bytes, large ones read through a view.
    transformer = KmsV2("kms", Base64KmsV2Keys(SEED), rng=os.urandom)
    value = transformer.seal(os.urandom(size), aad=AAD)
    found = kmsv2.locate_encrypted_data(value, len(transformer.prefix))
    assert found is not None
    begin, end = found
    for index in {begin, begin + 31, begin + 32, begin + 44, (begin + end) // 2, end - 1}:
        tampered = bytearray(value)
        tampered[index] ^= 0x01
        open_fails(transformer, bytes(tampered))


@pytest.mark.parametrize(("short", "message"), [(32, "32 bytes, got 31"), (12, "12 bytes, got 11")])
def test_kms_v2_refuses_an_rng_that_draws_the_wrong_size(short: int, message: str) -> None:
    def rng(n: int) -> bytes:
        return bytes(n - 1 if n == short else n)

    transformer = KmsV2("kms", Base64KmsV2Keys(SEED), rng=rng)
    with pytest.raises(InvalidArgument, match=f"rng: expected {message}"):
        transformer.seal(b"secret", aad=AAD)


def test_kms_v2_with_os_urandom_never_writes_the_same_info_and_nonce_twice() -> None:
    transformer = KmsV2("kms", Base64KmsV2Keys(SEED), rng=os.urandom)
    drawn = set()
    for _ in range(500):
        value = transformer.seal(b"secret", aad=AAD)
        obj = kmsv2.decode_encrypted_object(value[len(transformer.prefix) :])
        drawn.add(obj.encrypted_data[:44])
        assert transformer.open(value, aad=AAD).plaintext == b"secret"
    assert len(drawn) == 500


def test_kms_v2_reads_values_written_with_a_fresh_info_each() -> None:
    # kube-apiserver draws a new info for every write: every read then misses the DEK cache.
    transformer = KmsV2("kms", Base64KmsV2Keys(SEED), rng=os.urandom)
    header = transformer.seal(b"x", aad=AAD)
    obj = kmsv2.decode_encrypted_object(header[len(transformer.prefix) :])
    for i in range(300):
        info, nonce = os.urandom(32), os.urandom(12)
        data = kmsv2.seal_seed_type(SEED, b"v%d" % i, aad=AAD, info=info, nonce=nonce)
        value = transformer.prefix + kmsv2.encode_encrypted_object(
            dataclasses.replace(obj, encrypted_data=data)
        )
        assert transformer.open(value, aad=AAD).plaintext == b"v%d" % i


# --- KMS v2: the seed's KDF kept per header --------------------------------------------------


def test_kms_v2_a_header_that_opened_a_value_needs_no_more_seed_lookups() -> None:
    keys = Base64KmsV2Keys(SEED)
    transformer = KmsV2("kms", keys, rng=os.urandom)
    values = [transformer.seal(b"secret %d" % i, aad=AAD) for i in range(5)]
    assert [transformer.open(v, aad=AAD).plaintext for v in values] == [
        b"secret %d" % i for i in range(5)
    ]
    # The first read asked the keys for the seed; the other four were counted as hits.
    assert (keys.dek_source_calls, keys.hits) == (1, 4)
    opened = transformer.open(values[0], aad=AAD)
    assert (opened.stale, opened.key_id, opened.dek_source_type) == (
        False,
        "1",
        DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
    )


def test_kms_v2_a_seed_is_kept_only_after_it_opened_a_value() -> None:
    keys = Base64KmsV2Keys(SEED)
    transformer = KmsV2("kms", keys, rng=os.urandom)
    value = transformer.seal(b"secret", aad=AAD)
    open_fails(transformer, value, aad=OTHER_AAD)
    open_fails(transformer, value, aad=OTHER_AAD)
    assert (keys.dek_source_calls, keys.hits) == (2, 0)
    assert transformer.open(value, aad=AAD).plaintext == b"secret"
    assert (keys.dek_source_calls, keys.hits) == (3, 0)


@pytest.mark.parametrize("size", [1, 4096 - 60, 4096, 5000])
def test_kms_v2_reads_with_a_kept_seed_detect_every_flipped_byte_and_other_keys(
    size: int,
) -> None:
    keys = Base64KmsV2Keys(SEED)
    transformer = KmsV2("kms", keys, rng=os.urandom)
    value = transformer.seal(os.urandom(size), aad=AAD)
    transformer.open(value, aad=AAD)
    found = kmsv2.locate_encrypted_data(value, len(transformer.prefix))
    assert found is not None
    begin, end = found
    for index in {begin, begin + 31, begin + 32, begin + 43, begin + 44, end - 1}:
        tampered = bytearray(value)
        tampered[index] ^= 0x01
        open_fails(transformer, bytes(tampered))
    open_fails(transformer, value, aad=OTHER_AAD)
    assert keys.dek_source_calls == 1


def test_kms_v2_a_kept_seed_reads_values_written_before_a_rotation_as_stale() -> None:
    keys = Base64KmsV2Keys(SEED, key_id="1")
    transformer = KmsV2("kms", keys, rng=os.urandom)
    old = transformer.seal(b"old", aad=AAD)
    assert transformer.open(old, aad=AAD).stale is False
    keys.rotate(bytes(range(32)), key_id="2")
    opened = transformer.open(old, aad=AAD)
    assert (opened.plaintext, opened.stale, opened.key_id) == (b"old", True, "1")


def test_seed_kdf_is_derive_dek() -> None:
    for seed in (SEED, bytes(range(48)), bytes(range(64)), bytes(range(100))):
        kdf = kmsv2.SeedKdf(seed)
        for info in (bytes(32), bytes(range(32)), os.urandom(32)):
            assert kdf.derive(info) == kmsv2.derive_dek(seed, info=info)
    assert repr(kmsv2.SeedKdf(SEED)) == "SeedKdf(<seed>)"
    with pytest.raises(InvalidArgument, match="seed: expected at least 32 bytes, got 31"):
        kmsv2.SeedKdf(SEED[:31])


def test_kms_v2_a_kept_seed_is_dropped_when_the_keys_let_a_seed_go() -> None:
    keys = Base64KmsV2Keys(SEED, key_id="1")
    transformer = KmsV2("kms", keys, rng=os.urandom)
    value = transformer.seal(b"secret", aad=AAD)
    for _ in range(3):  # the second read under one info keeps its DEK
        assert transformer.open(value, aad=AAD).plaintext == b"secret"
    assert repr(transformer._deks) == "DekCache(<1 DEKs>)"
    keys.rotate(bytes(range(32)), key_id="2")
    keys.forget("1")  # the root key behind key_id 1 is destroyed
    with pytest.raises(DecryptionError):
        transformer.open(value, aad=AAD)
    # That read dropped every KDF and DEK kept from the forgotten seed.
    assert repr(transformer._deks) == "DekCache(<0 DEKs>)"
    assert all(entry[2] is None for entry in transformer._decoded.values())


def test_kms_v2_writers_on_many_threads_keep_the_bound_and_their_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kmsv2, "WRITES_PER_INFO", 20)
    keys = Base64KmsV2Keys(SEED, key_id="1")
    transformer = KmsV2("kms", keys, rng=os.urandom)
    seeds = {"1": SEED, "2": bytes(range(32))}
    values: list[bytes] = []

    def write(n: int) -> None:
        for i in range(300):
            if n == 0 and i == 150:
                keys.rotate(seeds["2"], key_id="2")
            values.append(transformer.seal(b"v", aad=AAD))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    per_info: dict[bytes, int] = {}
    for value in values:
        obj = kmsv2.decode_encrypted_object(value[len(transformer.prefix) :])
        info = obj.encrypted_data[:32]
        per_info[info] = per_info.get(info, 0) + 1
        # Every value opens with the DEK of its own info under its own header's seed.
        seed = seeds[obj.key_id]
        assert kmsv2.open_seed_type(seed, obj.encrypted_data, aad=AAD) == b"v"
    assert len(values) == 1200
    assert max(per_info.values()) <= 20


# --- Opened built without NamedTuple.__new__ ------------------------------------------------


def _is_whole_opened(opened: Opened) -> bool:
    rebuilt = Opened(
        opened.plaintext,
        opened.stale,
        opened.provider,
        opened.key_name,
        opened.key_id,
        opened.dek_source_type,
    )
    return type(opened) is Opened and len(opened) == len(Opened._fields) and opened == rebuilt


def test_every_fast_path_builds_a_whole_opened() -> None:
    kms = KmsV2("kms", Base64KmsV2Keys(SEED), rng=os.urandom)
    value = kms.seal(b"secret", aad=AAD)
    first = kms.open(value, aad=AAD)  # the seed is looked up
    kept = kms.open(value, aad=AAD)  # the header's kept KDF
    cbc = AesCbc("cbc", bytes(32), rng=os.urandom)
    read = cbc.open(cbc.seal(b"secret", aad=AAD), aad=AAD)
    chain = ProviderChain([AesGcm("gcm", bytes(32), rng=os.urandom), kms])
    later = chain.open(value, aad=AAD)  # a later provider's read, rebuilt as stale
    for opened in (first, kept, read, later):
        assert _is_whole_opened(opened)
    assert later.stale
    assert later.provider == "kms"
    assert not first.stale
    assert not kept.stale


# --- KMS v2: a page opened at once -----------------------------------------------------------


def _served(transformer: KmsV2, values: list[bytes], aads: list[bytes]) -> list[Opened | None]:
    """``open_kept``'s answer as one Opened per value it opened, None for every other."""
    plaintexts, shapes = transformer.open_kept(values, aads)
    assert len(plaintexts) == len(shapes) == len(values)
    out: list[Opened | None] = []
    for plaintext, shape in zip(plaintexts, shapes, strict=True):
        if plaintext is None:
            out.append(None)
        else:
            assert shape is not None
            assert shape.plaintext == b""
            out.append(shape._replace(plaintext=plaintext))
    return out


def _tried(transformer: KmsV2, values: list[bytes], aads: list[bytes]) -> list[bool]:
    """Which values ``open_kept`` tried under a kept seed (opened or not)."""
    return [shape is not None for shape in transformer.open_kept(values, aads).opened]


def test_kms_v2_open_kept_reads_each_value_as_open_does() -> None:
    keys = Base64KmsV2Keys(SEED, key_id="1")
    transformer = KmsV2("kms", keys, rng=os.urandom)
    # Sizes around the one- and two-byte length framings and the in-place view (> 4 KiB).
    sizes = [0, 1, 67, 68, 200, 4096, 5000, 16_000]
    old = [transformer.seal(os.urandom(size), aad=b"/k%d" % size) for size in sizes]
    transformer.open(old[0], aad=b"/k0")  # keeps the seed of key_id 1
    keys.rotate(bytes(range(32)), key_id="2")
    new = [transformer.seal(b"new %d" % i, aad=b"/n%d" % i) for i in range(3)]
    big = transformer.seal(os.urandom(20_000), aad=b"/big")  # a three-byte length
    other = AesGcm("key1", KEY32, rng=os.urandom).seal(b"aesgcm", aad=b"/g")
    values = [*old, *new, big, other]
    aads = [*(b"/k%d" % s for s in sizes), *(b"/n%d" % i for i in range(3)), b"/big", b"/g"]
    hits, calls = keys.hits, keys.dek_source_calls

    served = _served(transformer, values, aads)

    # Only values under the kept seed, framed in one or two length bytes, are served here,
    # each exactly as open() reads it: the old key_id stale now, its plaintext intact.
    assert [s is not None for s in served] == [True] * len(old) + [False] * 5
    assert (keys.hits, keys.dek_source_calls) == (hits + len(old), calls)
    for value, aad, opened in zip(values, aads, served, strict=True):
        if opened is not None:
            assert opened == transformer.open(value, aad=aad)
            assert (opened.stale, opened.key_id) == (True, "1")
    # The rest open one by one, as the caller does; then their seed is kept too.
    for value, aad in zip(values[len(old) :], aads[len(old) :], strict=True):
        if value is other:
            open_fails(transformer, value, aad=aad)
        else:
            transformer.open(value, aad=aad)
    served = _served(transformer, values, aads)
    assert [s is not None for s in served] == [True] * (len(old) + 3) + [False, False]
    assert [s.stale for s in served[len(old) : len(old) + 3] if s is not None] == [False] * 3


def test_kms_v2_open_kept_leaves_every_tampered_or_misplaced_value_to_open() -> None:
    keys = Base64KmsV2Keys(SEED)
    transformer = KmsV2("kms", keys, rng=os.urandom)
    value = transformer.seal(os.urandom(300), aad=AAD)
    transformer.open(value, aad=AAD)
    found = kmsv2.locate_encrypted_data(value, len(transformer.prefix))
    assert found is not None
    begin, end = found
    bad: list[bytes] = []
    for index in (len(transformer.prefix), begin - 1, begin, begin + 32, begin + 44, end - 1):
        flipped = bytearray(value)
        flipped[index] ^= 0x01
        bad.append(bytes(flipped))
    # Field 1 one byte longer, that byte taken from the header: the header still ends it.
    longer = bytearray(value)
    longer[begin - 2 : begin] = kmsv2.encrypted_data_field_header(end - begin + 1)[-2:]
    bad.append(bytes(longer[:end]) + b"\x00" + bytes(longer[end:]))
    bad.append(value[: begin + 40])  # truncated
    # An unknown field between encryptedData and the header: not the canonical framing, so
    # left to open(), which parses it in full and, as protobuf does, skips the field.
    odd = value[:end] + b"\x38\x01" + value[end:]
    values = [value, *bad, odd, value]
    aads = [AAD] * (len(values) - 1) + [OTHER_AAD]
    hits = keys.hits
    served = _served(transformer, values, aads)
    assert served[0] == transformer.open(value, aad=AAD)
    assert served[1:] == [None] * (len(values) - 1)
    # Tried (and counted as reads) are the values framed as the kept header's: a change in
    # encryptedData's info, nonce, ciphertext or tag, field 1 made one byte longer, and the
    # value under another AAD. Not tried: a changed field tag or length, a truncated value,
    # an unknown field before the header.
    tried = _tried(transformer, values, aads)
    assert tried == [True, False, False, True, True, True, True, True, False, False, True]
    assert keys.hits == hits + 1 + 2 * sum(tried)
    for tampered in bad:
        with pytest.raises(DecryptionError):
            transformer.open(tampered, aad=AAD)
    assert transformer.open(odd, aad=AAD) == served[0]


def test_kms_v2_open_kept_serves_nothing_once_the_keys_let_a_seed_go() -> None:
    keys = Base64KmsV2Keys(SEED, key_id="1")
    transformer = KmsV2("kms", keys, rng=os.urandom)
    values = [transformer.seal(b"v%d" % i, aad=AAD) for i in range(3)]
    transformer.open(values[0], aad=AAD)
    assert all(_served(transformer, values, [AAD] * 3))
    hits, calls = keys.hits, keys.dek_source_calls
    keys.rotate(bytes(range(32)), key_id="2")
    keys.forget("2")  # any seed let go: every kept seed must be asked for again
    assert _served(transformer, values, [AAD] * 3) == [None] * 3
    assert (keys.hits, keys.dek_source_calls) == (hits, calls)
    assert transformer.open(values[1], aad=AAD).plaintext == b"v1"
    assert keys.dek_source_calls == calls + 1


def test_kms_v2_open_kept_serves_nothing_before_a_seed_opened_a_value() -> None:
    keys = Base64KmsV2Keys(SEED)
    transformer = KmsV2("kms", keys, rng=os.urandom)
    values = [transformer.seal(b"v", aad=AAD), b"", b"k8s:enc:kms:v2:kms:", b"plain"]
    assert _served(transformer, values, [AAD] * 4) == [None] * 4
    assert (keys.hits, keys.dek_source_calls) == (0, 0)


def test_chain_open_kept_is_the_first_transformers_and_only_kms_v2s() -> None:
    keys = Base64KmsV2Keys(SEED)
    kms = KmsV2("kms", keys, rng=os.urandom)
    gcm = AesGcm("key1", KEY32, rng=os.urandom)
    assert ProviderChain([gcm, kms]).open_kept([gcm.seal(b"x", aad=AAD)], [AAD]) is None
    assert ProviderChain.identity().open_kept([b"x"], [AAD]) is None
    chain = ProviderChain([kms, gcm])
    values = [kms.seal(b"a", aad=AAD), gcm.seal(b"b", aad=AAD)]
    chain.open(values[0], aad=AAD)
    kept = chain.open_kept(values, [AAD, AAD])
    assert kept is not None
    assert kept.plaintexts == [b"a", None]
