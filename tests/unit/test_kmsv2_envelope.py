"""The KMS v2 ``EncryptedObject``: Go-identical encoding, upstream validation, DEK sources."""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from kinko.crypto import kmsv2
from kinko.crypto.types import DekSourceType, EncryptedObject
from kinko.errors import DecryptionError, EnvelopeError, InvalidArgument
from kinko.gen import kms_envelope_pb2

SEED = bytes(range(32))
INFO = bytes(range(100, 132))
NONCE = bytes(range(200, 212))
AAD = b"/registry/secrets/default/db"
MARKER = b"\xde\xad\xbe\xef-not-in-any-message"


def _obj(**changes: object) -> EncryptedObject:
    fields: dict[str, object] = {
        "encrypted_data": b"\x01" * 60,
        "key_id": "1",
        "encrypted_dek_source": b"wrapped-seed",
        "annotations": {"local-kek.kms.kubernetes.io": b"encrypted-local-kek"},
        "dek_source_type": DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
    }
    fields.update(changes)
    return EncryptedObject(**fields)  # type: ignore[arg-type]


def _pb(obj: EncryptedObject) -> bytes:
    """protobuf's own serialization of the whole message, for comparison."""
    return kms_envelope_pb2.EncryptedObject(
        encryptedData=obj.encrypted_data,
        keyID=obj.key_id,
        encryptedDEKSource=obj.encrypted_dek_source,
        annotations=dict(obj.annotations),
        encryptedDEKSourceType=DekSourceType(obj.dek_source_type).name,
    ).SerializeToString(deterministic=True)


# --- encoding --------------------------------------------------------------------------------


def test_encode_writes_fields_in_number_order_with_type_last() -> None:
    encoded = kmsv2.encode_encrypted_object(_obj(encrypted_data=b"D"))
    assert encoded == (
        b"\x0a\x01D"
        + b"\x12\x011"
        + b"\x1a\x0cwrapped-seed"
        + b"\x22\x32\x0a\x1blocal-kek.kms.kubernetes.io\x12\x13encrypted-local-kek"
        + b"\x28\x01"
    )


def test_encode_omits_type_zero_as_go_does() -> None:
    encoded = kmsv2.encode_encrypted_object(_obj(dek_source_type=DekSourceType.AES_GCM_KEY))
    assert not encoded.endswith(b"\x28\x00")
    assert b"\x28" not in encoded[-2:]
    decoded = kmsv2.decode_encrypted_object(encoded)
    assert decoded.dek_source_type == DekSourceType.AES_GCM_KEY


def test_encode_sorts_several_annotations_by_key() -> None:
    notes = {"z.example.com": b"2", "a.example.com": b"1"}
    encoded = kmsv2.encode_encrypted_object(_obj(annotations=notes))
    assert encoded.index(b"a.example.com") < encoded.index(b"z.example.com")


@pytest.mark.parametrize("size", [1, 60, 127, 128, 300, 16383, 16384, 65_596, 2_097_152])
def test_framed_encoding_equals_protobufs_own_output(size: int) -> None:
    obj = _obj(encrypted_data=b"\xab" * size)
    assert kmsv2.encode_encrypted_object(obj) == _pb(obj)


def test_encode_header_is_the_tail_of_the_message() -> None:
    obj = _obj()
    header = kmsv2.encode_header(
        key_id=obj.key_id,
        encrypted_dek_source=obj.encrypted_dek_source,
        annotations=obj.annotations,
        dek_source_type=obj.dek_source_type,
    )
    size = len(obj.encrypted_data)
    framed = kmsv2.encrypted_data_field_header(size) + obj.encrypted_data + header
    assert framed == _pb(obj)


@pytest.mark.parametrize("size", [0, -1])
def test_field_header_refuses_empty_data(size: int) -> None:
    with pytest.raises(InvalidArgument):
        kmsv2.encrypted_data_field_header(size)


def test_encode_decode_round_trip_keeps_every_field() -> None:
    obj = _obj(annotations={"a.example.com": b"\x00\xff", "b.example.com": b""})
    decoded = kmsv2.decode_encrypted_object(kmsv2.encode_encrypted_object(obj))
    assert decoded == obj
    assert isinstance(decoded.annotations, MappingProxyType)


# --- validation on encode and on decode ------------------------------------------------------

INVALID: list[tuple[str, Callable[[], EncryptedObject]]] = [
    ("empty encryptedData", lambda: _obj(encrypted_data=b"")),
    ("empty key_id", lambda: _obj(key_id="")),
    ("key_id over 1 KiB", lambda: _obj(key_id="k" * 1025)),
    ("multibyte key_id over 1 KiB", lambda: _obj(key_id="é" * 513)),
    ("empty encryptedDEKSource", lambda: _obj(encrypted_dek_source=b"")),
    ("encryptedDEKSource over 1 KiB", lambda: _obj(encrypted_dek_source=b"s" * 1025)),
    ("annotation key not an FQDN", lambda: _obj(annotations={"local_kek": b"x"})),
    ("annotation key with a slash", lambda: _obj(annotations={"a.io/b": b"x"})),
    ("annotation key uppercase", lambda: _obj(annotations={"A.example.com": b"x"})),
    ("annotations over 32 KiB", lambda: _obj(annotations={"a.example.com": b"v" * 32756})),
]


@pytest.mark.parametrize(("case", "make"), INVALID, ids=[c for c, _ in INVALID])
def test_encode_refuses_invalid_objects(case: str, make: Callable[[], EncryptedObject]) -> None:
    with pytest.raises(EnvelopeError):
        kmsv2.encode_encrypted_object(make())


@pytest.mark.parametrize(("case", "make"), INVALID, ids=[c for c, _ in INVALID])
def test_decode_refuses_invalid_objects(case: str, make: Callable[[], EncryptedObject]) -> None:
    with pytest.raises(EnvelopeError):
        kmsv2.decode_encrypted_object(_pb(make()))


def test_limits_are_inclusive_as_upstream() -> None:
    obj = _obj(
        key_id="k" * 1024,
        encrypted_dek_source=b"s" * 1024,
        annotations={"a.example.com": b"v" * (32768 - len("a.example.com"))},
    )
    assert kmsv2.decode_encrypted_object(kmsv2.encode_encrypted_object(obj)) == obj


def test_an_fqdn_with_a_trailing_dot_is_a_valid_annotation_key() -> None:
    obj = _obj(annotations={"version.encryption.remote.io.": b"1"})
    assert kmsv2.decode_encrypted_object(kmsv2.encode_encrypted_object(obj)) == obj


@pytest.mark.parametrize("source_type", [2, 7, 1 << 20])
def test_decode_refuses_unknown_dek_source_types(source_type: int) -> None:
    data = _pb(_obj()).removesuffix(b"\x28\x01") + b"\x28" + _varint(source_type)
    with pytest.raises(EnvelopeError, match="encryptedDEKSourceType"):
        kmsv2.decode_encrypted_object(data)


def test_encode_refuses_unknown_dek_source_types() -> None:
    with pytest.raises(EnvelopeError, match="encryptedDEKSourceType"):
        kmsv2.encode_encrypted_object(_obj(dek_source_type=5))


def test_encode_refuses_text_that_is_not_utf8() -> None:
    with pytest.raises(EnvelopeError):
        kmsv2.encode_encrypted_object(_obj(key_id="\ud800"))


@pytest.mark.parametrize(
    "data",
    [b"\x0a\x05abc", b"\xff\xff\xff", b"\x12\x02\xc3\x28", b"\x0a", b"\x08"],
    ids=["truncated field", "bad tag", "key_id not utf-8", "missing length", "missing varint"],
)
def test_decode_wraps_protobuf_errors(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        kmsv2.decode_encrypted_object(data)


def test_decode_of_nothing_is_an_empty_object_and_refused() -> None:
    with pytest.raises(EnvelopeError, match="encryptedData"):
        kmsv2.decode_encrypted_object(b"")


def test_envelope_errors_never_carry_the_bytes() -> None:
    cases = [
        _pb(_obj(key_id="")) + b"\x1a" + bytes([len(MARKER)]) + MARKER,
        MARKER,
        _pb(_obj(encrypted_data=MARKER, annotations={"bad_key": MARKER})),
    ]
    for data in cases:
        with pytest.raises(EnvelopeError) as info:
            kmsv2.decode_encrypted_object(data)
        assert "dead" not in str(info.value)
        assert MARKER.decode("latin-1") not in str(info.value)


# --- DEK sources -----------------------------------------------------------------------------


def test_derive_dek_matches_hkdf_expand_without_extract() -> None:
    assert kmsv2.derive_dek(SEED, info=INFO) == HKDFExpand(hashes.SHA256(), 32, INFO).derive(SEED)


def test_derive_dek_accepts_longer_seeds() -> None:
    seed = bytes(range(48))
    assert kmsv2.derive_dek(seed, info=INFO) == HKDFExpand(hashes.SHA256(), 32, INFO).derive(seed)


def test_derive_dek_depends_on_info() -> None:
    assert kmsv2.derive_dek(SEED, info=INFO) != kmsv2.derive_dek(SEED, info=bytes(32))


@pytest.mark.parametrize(
    ("seed", "info"),
    [(b"s" * 31, INFO), (b"", INFO), (SEED, b"i" * 31), (SEED, b"i" * 33)],
    ids=["short seed", "no seed", "short info", "long info"],
)
def test_derive_dek_refuses_bad_sizes(seed: bytes, info: bytes) -> None:
    with pytest.raises(InvalidArgument):
        kmsv2.derive_dek(seed, info=info)


def test_seal_seed_type_layout() -> None:
    data = kmsv2.seal_seed_type(SEED, b"hello", aad=AAD, info=INFO, nonce=NONCE)
    assert data[:32] == INFO
    assert data[32:44] == NONCE
    dek = HKDFExpand(hashes.SHA256(), 32, INFO).derive(SEED)
    assert AESGCM(dek).decrypt(NONCE, data[44:], AAD) == b"hello"
    assert len(data) == 32 + 12 + 5 + 16


@pytest.mark.parametrize("nonce", [b"n" * 11, b"n" * 13, b""])
def test_seal_seed_type_refuses_bad_nonces(nonce: bytes) -> None:
    with pytest.raises(InvalidArgument):
        kmsv2.seal_seed_type(SEED, b"x", aad=AAD, info=INFO, nonce=nonce)


def test_seal_seed_type_refuses_short_seeds() -> None:
    with pytest.raises(InvalidArgument):
        kmsv2.seal_seed_type(SEED[:16], b"x", aad=AAD, info=INFO, nonce=NONCE)


def test_open_type1_round_trip() -> None:
    data = kmsv2.seal_seed_type(SEED, b"hello", aad=AAD, info=INFO, nonce=NONCE)
    seed_type = DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED
    assert kmsv2.open_encrypted_data(seed_type, SEED, data, aad=AAD) == b"hello"


@pytest.mark.parametrize("size", [16, 24, 32])
def test_open_type0_accepts_every_aes_key_size(size: int) -> None:
    key = bytes(range(size))
    data = NONCE + AESGCM(key).encrypt(NONCE, b"hello", AAD)
    assert kmsv2.open_encrypted_data(DekSourceType.AES_GCM_KEY, key, data, aad=AAD) == b"hello"


def _type1() -> bytes:
    return kmsv2.seal_seed_type(SEED, b"hello", aad=AAD, info=INFO, nonce=NONCE)


def _type0() -> bytes:
    return NONCE + AESGCM(SEED).encrypt(NONCE, b"hello", AAD)


T1 = DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED
T0 = DekSourceType.AES_GCM_KEY
FAILURES: list[tuple[str, DekSourceType, bytes, Callable[[], bytes], bytes]] = [
    ("type1 short seed", T1, SEED[:31], _type1, AAD),
    ("type1 wrong seed", T1, bytes(32), _type1, AAD),
    ("type1 wrong aad", T1, SEED, _type1, b"/registry/secrets/default/other"),
    ("type1 truncated below info+nonce+tag", T1, SEED, lambda: _type1()[:59], AAD),
    ("type1 tag cut", T1, SEED, lambda: _type1()[:-1], AAD),
    ("type1 info flipped", T1, SEED, lambda: bytes([_type1()[0] ^ 1]) + _type1()[1:], AAD),
    ("type1 read as type0", T0, SEED, _type1, AAD),
    ("type0 bad key size", T0, SEED[:20], _type0, AAD),
    ("type0 wrong key", T0, bytes(32), _type0, AAD),
    ("type0 truncated", T0, SEED, lambda: _type0()[:27], AAD),
    ("type0 read as type1", T1, SEED, _type0, AAD),
    ("unknown type", 9, SEED, _type1, AAD),  # type: ignore[list-item]
]


@pytest.mark.parametrize(
    ("case", "source_type", "source", "make", "aad"), FAILURES, ids=[f[0] for f in FAILURES]
)
def test_open_failures_are_one_opaque_error(
    case: str, source_type: DekSourceType, source: bytes, make: Callable[[], bytes], aad: bytes
) -> None:
    with pytest.raises(DecryptionError) as info:
        kmsv2.open_encrypted_data(source_type, source, make(), aad=aad)
    assert info.value.reason == DecryptionError.NOT_AUTHENTIC
    assert_no_cause_shown(info.value)


def assert_no_cause_shown(exc: BaseException) -> None:
    """A traceback of ``exc`` shows no underlying crypto exception."""
    assert exc.__cause__ is None
    assert exc.__context__ is None or exc.__suppress_context__


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# The read path decodes fields 2 to 5 once per distinct header; it must never disagree with
# a full parse of the whole message.


def test_split_and_canonical_header_equal_the_full_decode() -> None:
    obj = _obj()
    encoded = kmsv2.encode_encrypted_object(obj)
    split = kmsv2.split_encrypted_data(encoded)
    assert split is not None
    data, header = split
    assert data == obj.encrypted_data
    decoded = kmsv2.decode_canonical_header(header)
    assert decoded is not None
    full = kmsv2.decode_encrypted_object(encoded)
    assert (decoded.key_id, decoded.encrypted_dek_source, dict(decoded.annotations)) == (
        full.key_id,
        full.encrypted_dek_source,
        dict(full.annotations),
    )
    assert decoded.dek_source_type == full.dek_source_type


def test_a_header_that_repeats_field_one_is_not_canonical() -> None:
    # Protobuf keeps the last field 1, so a header carrying one would change encryptedData.
    encoded = kmsv2.encode_encrypted_object(_obj())
    split = kmsv2.split_encrypted_data(encoded)
    assert split is not None
    assert kmsv2.decode_canonical_header(b"\x0a\x03abc" + split[1]) is None
    assert kmsv2.decode_canonical_header(split[1] + b"\x0a\x00") is None


def test_a_header_out_of_go_field_order_is_not_canonical() -> None:
    encoded = kmsv2.encode_encrypted_object(_obj())
    split = kmsv2.split_encrypted_data(encoded)
    assert split is not None
    key_id = b"\x12\x011"
    assert split[1].startswith(key_id)
    reordered = split[1][len(key_id) :] + key_id
    assert kmsv2.decode_canonical_header(reordered) is None
    # The full parse still reads it: order is not a validity rule, only a cache rule.
    field_one = encoded[: len(encoded) - len(split[1])]
    assert kmsv2.decode_encrypted_object(field_one + reordered).key_id == "1"


@pytest.mark.parametrize("data", [b"", b"\x0a", b"\x0a\x05ab", b"\x12\x011", b"\x0a\xff\xff"])
def test_split_refuses_what_does_not_start_with_a_whole_field_one(data: bytes) -> None:
    assert kmsv2.split_encrypted_data(data) is None


def test_canonical_header_applies_the_field_rules() -> None:
    encoded = kmsv2.encode_encrypted_object(_obj())
    split = kmsv2.split_encrypted_data(encoded)
    assert split is not None
    bad = kms_envelope_pb2.EncryptedObject()
    bad.ParseFromString(split[1])
    bad.annotations["Not_An_FQDN"] = b"x"
    with pytest.raises(EnvelopeError):
        kmsv2.decode_canonical_header(bad.SerializeToString(deterministic=True))


@pytest.mark.parametrize("size", [1, 127, 128, 300, 16383, 16384, 2_097_152])
@pytest.mark.parametrize("start", [0, 7])
def test_locate_finds_field_one_behind_any_prefix_and_length(size: int, start: int) -> None:
    obj = _obj(encrypted_data=b"\xab" * size)
    encoded = b"p" * start + kmsv2.encode_encrypted_object(obj)
    found = kmsv2.locate_encrypted_data(encoded, start)
    assert found is not None
    begin, end = found
    assert encoded[begin:end] == obj.encrypted_data
    assert kmsv2.decode_canonical_header(encoded[end:]) is not None


@pytest.mark.parametrize(
    "data",
    [b"", b"\x0a", b"\x0a\x05ab", b"\x0a\x80", b"\x0a\x80\x01", b"\x0a\xff\xff", b"\x12\x011"],
)
def test_locate_refuses_what_does_not_hold_a_whole_field_one(data: bytes) -> None:
    assert kmsv2.locate_encrypted_data(data) is None
    assert kmsv2.locate_encrypted_data(b"prefix" + data, 6) is None


def test_a_varint_longer_than_ten_bytes_is_refused() -> None:
    assert kmsv2.locate_encrypted_data(b"\x0a" + b"\x80" * 10 + b"\x00") is None


def test_dek_cache_keeps_a_dek_met_twice_for_its_seed_only() -> None:
    deks = kmsv2.DekCache(max_entries=2)
    kdf, other = kmsv2.SeedKdf(SEED), kmsv2.SeedKdf(bytes(range(32)))
    once = deks.aead(kdf, INFO)
    assert repr(deks) == "DekCache(<0 DEKs>)"  # seen once: nothing kept
    first = deks.aead(kdf, INFO)
    assert first is not once
    assert deks.aead(kdf, INFO) is first
    # The same info under another seed is another DEK.
    assert deks.aead(other, INFO) is not first
    sealed = kmsv2.seal_seed_type(SEED, b"hello", aad=AAD, info=INFO, nonce=NONCE)
    assert deks.aead(kdf, INFO).decrypt(NONCE, sealed[44:], AAD) == b"hello"
    # Full, it resets instead of growing past its bound.
    for i in range(10):
        deks.aead(kdf, bytes([i]) * 32)
        deks.aead(kdf, bytes([i]) * 32)
        assert repr(deks) in {"DekCache(<1 DEKs>)", "DekCache(<2 DEKs>)"}
    deks.clear()
    assert repr(deks) == "DekCache(<0 DEKs>)"


def test_dek_cache_never_keeps_infos_met_once() -> None:
    deks = kmsv2.DekCache()
    kdf = kmsv2.SeedKdf(SEED)
    for i in range(5000):
        deks.aead(kdf, i.to_bytes(32, "big"))
    assert repr(deks) == "DekCache(<0 DEKs>)"


def test_open_seed_type_at_with_a_dek_cache_opens_the_same() -> None:
    deks = kmsv2.DekCache()
    kdf = kmsv2.SeedKdf(SEED)
    for i in range(3):
        data = kmsv2.seal_seed_type(SEED, b"v%d" % i, aad=AAD, info=INFO, nonce=bytes([i]) * 12)
        value = b"xx" + data
        assert kmsv2.open_seed_type_at(kdf, value, 2, len(value), aad=AAD, deks=deks) == b"v%d" % i
        with pytest.raises(DecryptionError):
            kmsv2.open_seed_type_at(kdf, value, 2, len(value), aad=b"other", deks=deks)


@pytest.mark.parametrize("view", [False, True])
def test_open_seed_type_reads_bytes_and_views_alike(view: bool) -> None:
    data = _type1()
    framed = memoryview(b"xx" + data)[2:] if view else data
    assert kmsv2.open_seed_type(SEED, framed, aad=AAD) == b"hello"


@pytest.mark.parametrize("size", [5, 4096 - 60, 4096 - 59, 20_000])
@pytest.mark.parametrize("view", [False, True])
def test_open_seed_type_at_opens_encrypted_data_where_it_lies(size: int, view: bool) -> None:
    # Around the size where the ciphertext stops being copied and is read through a view.
    plaintext = bytes(range(256)) * (size // 256) + b"p" * (size % 256)
    data = kmsv2.seal_seed_type(SEED, plaintext, aad=AAD, info=INFO, nonce=NONCE)
    stored = b"prefix" + data + b"fields 2 to 5"
    value = memoryview(stored) if view else stored
    kdf = kmsv2.SeedKdf(SEED)
    assert kmsv2.open_seed_type_at(kdf, value, 6, 6 + len(data), aad=AAD) == plaintext
    assert kmsv2.open_seed_type_with(kdf, data, aad=AAD) == plaintext
    with pytest.raises(DecryptionError):
        kmsv2.open_seed_type_at(kdf, value, 6, 5 + len(data), aad=AAD)
    with pytest.raises(DecryptionError):
        kmsv2.open_seed_type_at(kdf, value, 7, 7 + len(data), aad=AAD)


@pytest.mark.parametrize(("begin", "end"), [(-1, 80), (0, 101), (10, 200), (-5, 120)])
def test_open_seed_type_at_refuses_bounds_outside_the_value(begin: int, end: int) -> None:
    data = kmsv2.seal_seed_type(SEED, b"x" * 40, aad=AAD, info=INFO, nonce=NONCE)
    value = data[:100]
    with pytest.raises(DecryptionError) as info:
        kmsv2.open_seed_type_at(kmsv2.SeedKdf(SEED), value, begin, end, aad=AAD)
    assert_no_cause_shown(info.value)


@pytest.mark.parametrize(
    ("case", "source_type", "source", "make", "aad"),
    [f for f in FAILURES if f[1] == T1 and len(f[2]) >= kmsv2.MIN_SEED_SIZE],
    ids=[f[0] for f in FAILURES if f[1] == T1 and len(f[2]) >= kmsv2.MIN_SEED_SIZE],
)
def test_open_seed_type_at_failures_are_one_opaque_error(
    case: str, source_type: DekSourceType, source: bytes, make: Callable[[], bytes], aad: bytes
) -> None:
    data = make()
    with pytest.raises(DecryptionError) as info:
        kmsv2.open_seed_type_at(
            kmsv2.SeedKdf(source), b"xx" + data + b"yy", 2, 2 + len(data), aad=aad
        )
    assert info.value.reason == DecryptionError.NOT_AUTHENTIC
    assert_no_cause_shown(info.value)


@pytest.mark.parametrize(
    ("case", "source_type", "source", "make", "aad"),
    [f for f in FAILURES if f[1] == T1],
    ids=[f[0] for f in FAILURES if f[1] == T1],
)
def test_open_seed_type_failures_are_one_opaque_error(
    case: str, source_type: DekSourceType, source: bytes, make: Callable[[], bytes], aad: bytes
) -> None:
    with pytest.raises(DecryptionError) as info:
        kmsv2.open_seed_type(source, make(), aad=aad)
    assert info.value.reason == DecryptionError.NOT_AUTHENTIC
    assert_no_cause_shown(info.value)
