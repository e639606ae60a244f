"""Properties of every format: round trips, every tamper detected, and no untyped escapes.

The authenticated formats (aesgcm, secretbox, KMS v2) must turn every single-byte change,
every truncation and every wrong storage key into ``DecryptionError``. aescbc has no MAC,
so for it the property is weaker: garbage gives ``DecryptionError`` or some plaintext,
never an untyped exception. Parsers (``inspect_value``, ``decode_encrypted_object``,
``ProviderChain.open``) fed arbitrary bytes may only raise ``KinkoError`` subclasses.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinko.crypto import kmsv2
from kinko.crypto.chain import ProviderChain
from kinko.crypto.formats import AesCbc, AesGcm, Identity, KmsV1, KmsV2, Secretbox
from kinko.crypto.inspect import inspect_value
from kinko.crypto.types import DekSourceType, EncryptedObject, Transformer
from kinko.errors import DecryptionError, EnvelopeError, KinkoError
from kinko.gen import kms_envelope_pb2
from tests.unit.fakes import Base64KmsV1Unwrapper, Base64KmsV2Keys, StreamRng

# The machine is shared and noisy: no per-example deadline.
PROPERTY = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

KEY32 = bytes(range(32))
SEED = bytes(range(64, 96))
plaintexts = st.binary(max_size=2048)
aads = st.binary(min_size=1, max_size=128)
key_sizes = st.sampled_from([16, 24, 32])
labels = st.binary(min_size=1, max_size=16)


def _warm_kms_v2(label: bytes) -> Transformer:
    """A KMS v2 transformer that has opened a value under its write state already, so later
    reads under that state take the path that keeps the seed's KDF (no seed lookup)."""
    transformer = KmsV2("kms", Base64KmsV2Keys(SEED), rng=StreamRng(label))
    transformer.open(transformer.seal(b"warm-up", aad=b"/warm"), aad=b"/warm")
    return transformer


AUTHENTICATED: dict[str, Callable[[bytes], Transformer]] = {
    "aesgcm": lambda label: AesGcm("key1", KEY32, rng=StreamRng(label)),
    "secretbox": lambda label: Secretbox("key1", KEY32, rng=StreamRng(label)),
    "kms-v2": lambda label: KmsV2("kms", Base64KmsV2Keys(SEED), rng=StreamRng(label)),
    "kms-v2-warm": _warm_kms_v2,
}
USES_AAD = {"aesgcm", "kms-v2", "kms-v2-warm"}


# --- round trips -----------------------------------------------------------------------------


@PROPERTY
@given(plaintext=plaintexts, aad=aads, size=key_sizes, label=labels)
def test_aescbc_round_trip(plaintext: bytes, aad: bytes, size: int, label: bytes) -> None:
    transformer = AesCbc("key1", KEY32[:size], rng=StreamRng(label))
    opened = transformer.open(transformer.seal(plaintext, aad=aad), aad=aad)
    assert (opened.plaintext, opened.stale) == (plaintext, False)


@PROPERTY
@given(plaintext=plaintexts, aad=aads, size=key_sizes, label=labels)
def test_aesgcm_round_trip(plaintext: bytes, aad: bytes, size: int, label: bytes) -> None:
    transformer = AesGcm("key1", KEY32[:size], rng=StreamRng(label))
    opened = transformer.open(transformer.seal(plaintext, aad=aad), aad=aad)
    assert (opened.plaintext, opened.stale) == (plaintext, False)


@PROPERTY
@given(plaintext=plaintexts, aad=aads, label=labels)
def test_secretbox_round_trip(plaintext: bytes, aad: bytes, label: bytes) -> None:
    transformer = Secretbox("key1", KEY32, rng=StreamRng(label))
    assert transformer.open(transformer.seal(plaintext, aad=aad), aad=aad).plaintext == plaintext


def test_identity_round_trip_of_unencrypted_data() -> None:
    for plaintext in (b"", b"k8s\x00", b'{"a":1}', b"k8s:en"):
        assert (
            Identity().open(Identity().seal(plaintext, aad=b"k"), aad=b"k").plaintext == plaintext
        )


key_ids = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40).filter(
    lambda s: len(s.encode()) <= 1024
)
fqdns = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){1,3}", fullmatch=True)
annotation_maps = st.dictionaries(fqdns, st.binary(max_size=64), max_size=4)


@PROPERTY
@given(
    plaintext=plaintexts,
    aad=aads,
    label=labels,
    key_id=key_ids,
    notes=annotation_maps,
    seed=st.binary(min_size=32, max_size=64),
)
def test_kms_v2_round_trip(
    plaintext: bytes,
    aad: bytes,
    label: bytes,
    key_id: str,
    notes: dict[str, bytes],
    seed: bytes,
) -> None:
    keys = Base64KmsV2Keys(seed, key_id=key_id, annotations=notes)
    transformer = KmsV2("kms", keys, rng=StreamRng(label))
    value = transformer.seal(plaintext, aad=aad)
    opened = transformer.open(value, aad=aad)
    assert (opened.plaintext, opened.stale, opened.key_id) == (plaintext, False, key_id)
    info = inspect_value(value)
    assert (info.key_id, {a.key for a in info.annotations}) == (key_id, set(notes))


@PROPERTY
@given(
    data=st.binary(min_size=1, max_size=70000),
    key_id=key_ids,
    source=st.binary(min_size=1, max_size=1024),
    notes=annotation_maps,
    seed_type=st.sampled_from(list(DekSourceType)),
)
def test_envelope_encoding_equals_protobuf_and_round_trips(
    data: bytes, key_id: str, source: bytes, notes: dict[str, bytes], seed_type: DekSourceType
) -> None:
    obj = EncryptedObject(
        encrypted_data=data,
        key_id=key_id,
        encrypted_dek_source=source,
        annotations=notes,
        dek_source_type=seed_type,
    )
    encoded = kmsv2.encode_encrypted_object(obj)
    reference = kms_envelope_pb2.EncryptedObject(
        encryptedData=data,
        keyID=key_id,
        encryptedDEKSource=source,
        annotations=notes,
        encryptedDEKSourceType=seed_type.name,
    ).SerializeToString(deterministic=True)
    assert encoded == reference
    assert kmsv2.decode_encrypted_object(encoded) == obj


# --- tampering -------------------------------------------------------------------------------


def _sealed(name: str, plaintext: bytes, aad: bytes, label: bytes) -> tuple[Transformer, bytes]:
    transformer = AUTHENTICATED[name](label)
    return transformer, transformer.seal(plaintext, aad=aad)


def _kms_v2_wrapped_fields_start(transformer: Transformer, value: bytes) -> int:
    """Offset of the KMS v2 fields that the data AEAD does not cover.

    The prefix, ``encryptedData`` and ``key_id`` come first and decide the plaintext. After
    them come ``encryptedDEKSource`` (authenticated by the plugin's own unwrap; the base64
    twin's wrapping is not, and base64 ignores the unused low bits of its last character),
    the annotations (only handed to the plugin) and the type.
    """
    obj = kmsv2.decode_encrypted_object(value[len(transformer.prefix) :])
    header = kmsv2.encode_header(
        key_id=obj.key_id,
        encrypted_dek_source=obj.encrypted_dek_source,
        annotations=obj.annotations,
        dek_source_type=obj.dek_source_type,
    )
    key_id_field = kms_envelope_pb2.EncryptedObject(keyID=obj.key_id).SerializeToString()
    return len(value) - len(header) + len(key_id_field)


@PROPERTY
@given(
    name=st.sampled_from(sorted(AUTHENTICATED)),
    plaintext=plaintexts,
    aad=aads,
    label=labels,
    where=st.integers(min_value=0),
    mask=st.integers(min_value=1, max_value=255),
)
def test_every_single_byte_change_is_detected(
    name: str, plaintext: bytes, aad: bytes, label: bytes, where: int, mask: int
) -> None:
    transformer, value = _sealed(name, plaintext, aad, label)
    position = where % len(value)
    tampered = value[:position] + bytes([value[position] ^ mask]) + value[position + 1 :]
    if name.startswith("kms-v2") and position >= _kms_v2_wrapped_fields_start(transformer, value):
        # Outside the data AEAD (as upstream): a change may still open, but never to a
        # different plaintext.
        try:
            opened = transformer.open(tampered, aad=aad)
        except DecryptionError:
            return
        assert opened.plaintext == plaintext
        return
    with pytest.raises(DecryptionError):
        transformer.open(tampered, aad=aad)


@PROPERTY
@given(
    name=st.sampled_from(sorted(AUTHENTICATED)),
    plaintext=plaintexts,
    aad=aads,
    label=labels,
    cut=st.integers(min_value=1),
)
def test_every_truncation_is_detected(
    name: str, plaintext: bytes, aad: bytes, label: bytes, cut: int
) -> None:
    transformer, value = _sealed(name, plaintext, aad, label)
    with pytest.raises(DecryptionError):
        transformer.open(value[: len(value) - 1 - cut % len(value)], aad=aad)


@PROPERTY
@given(
    name=st.sampled_from(sorted(USES_AAD)),
    plaintext=plaintexts,
    aad=aads,
    other=aads,
    label=labels,
)
def test_every_other_storage_key_is_detected(
    name: str, plaintext: bytes, aad: bytes, other: bytes, label: bytes
) -> None:
    transformer, value = _sealed(name, plaintext, aad, label)
    if other == aad:
        other = aad + b"/"
    with pytest.raises(DecryptionError):
        transformer.open(value, aad=other)


@PROPERTY
@given(plaintext=plaintexts, label=labels, where=st.integers(min_value=0), mask=st.integers(1, 255))
def test_aescbc_tampering_never_escapes_untyped(
    plaintext: bytes, label: bytes, where: int, mask: int
) -> None:
    transformer = AesCbc("key1", KEY32, rng=StreamRng(label))
    value = transformer.seal(plaintext, aad=b"k")
    position = where % len(value)
    tampered = value[:position] + bytes([value[position] ^ mask]) + value[position + 1 :]
    try:
        opened = transformer.open(tampered, aad=b"k")
    except DecryptionError:
        return
    # CBC is malleable: a changed IV or block may decrypt, to some other plaintext.
    assert position >= len(transformer.prefix)
    assert isinstance(opened.plaintext, bytes)


@PROPERTY
@given(payload=st.binary(max_size=200))
def test_aescbc_garbage_is_refused_or_read(payload: bytes) -> None:
    transformer = AesCbc("key1", KEY32, rng=StreamRng(b"x"))
    try:
        opened = transformer.open(transformer.prefix + payload, aad=b"k")
    except DecryptionError:
        return
    assert len(payload) >= 32
    assert len(payload) % 16 == 0
    assert len(opened.plaintext) < len(payload) - 16


# --- fuzzing the parsers ---------------------------------------------------------------------

PREFIXES = [
    b"",
    b"k8s:enc:",
    b"k8s:enc:aescbc:v1:key1:",
    b"k8s:enc:aesgcm:v1:key1:",
    b"k8s:enc:secretbox:v1:key1:",
    b"k8s:enc:kms:v1:kms1:",
    b"k8s:enc:kms:v2:kms:",
    b"k8s:enc:kms:v2:",
    b"k8s:enc:aesgcm:v1:",
]
values = st.builds(lambda p, b: p + b, st.sampled_from(PREFIXES), st.binary(max_size=300))


def _pb_like() -> st.SearchStrategy[bytes]:
    """Byte strings that are often almost-valid EncryptedObjects."""
    field = st.one_of(
        st.builds(lambda d: b"\x0a" + bytes([len(d)]) + d, st.binary(min_size=0, max_size=100)),
        st.builds(lambda d: b"\x12" + bytes([len(d)]) + d, st.binary(max_size=20)),
        st.builds(lambda d: b"\x1a" + bytes([len(d)]) + d, st.binary(max_size=50)),
        st.builds(lambda d: b"\x22" + bytes([len(d)]) + d, st.binary(max_size=60)),
        st.builds(lambda n: b"\x28" + bytes([n]), st.integers(0, 127)),
        st.binary(max_size=8),
    )
    return st.lists(field, max_size=6).map(b"".join)


def _fuzz_chain() -> ProviderChain:
    return ProviderChain(
        [
            KmsV2("kms", Base64KmsV2Keys(SEED), rng=StreamRng(b"f")),
            AesGcm("key1", KEY32, rng=StreamRng(b"f")),
            AesCbc("key1", KEY32, rng=StreamRng(b"f")),
            Secretbox("key1", KEY32, rng=StreamRng(b"f")),
            KmsV1("kms1", Base64KmsV1Unwrapper()),
            Identity(),
        ]
    )


@settings(deadline=None, max_examples=400)
@given(value=st.one_of(values, st.binary(max_size=300)))
def test_inspect_value_raises_only_kinko_errors(value: bytes) -> None:
    try:
        info = inspect_value(value)
    except KinkoError:
        return
    assert info.total_size == len(value)
    assert info.prefix_size + info.payload_size == len(value)


@settings(deadline=None, max_examples=400)
@given(data=st.one_of(_pb_like(), st.binary(max_size=300)))
def test_decode_encrypted_object_raises_only_envelope_errors(data: bytes) -> None:
    try:
        obj = kmsv2.decode_encrypted_object(data)
    except EnvelopeError:
        return
    assert obj.encrypted_data
    assert kmsv2.decode_encrypted_object(kmsv2.encode_encrypted_object(obj)) == obj


@settings(deadline=None, max_examples=400)
@given(
    value=st.one_of(
        values,
        st.builds(lambda b: b"k8s:enc:kms:v2:kms:" + b, _pb_like()),
        st.builds(
            lambda b: b"k8s:enc:kms:v1:kms1:\x00\x2c" + base64.b64encode(KEY32) + b,
            st.binary(max_size=80),
        ),
    ),
    aad=st.binary(max_size=40),
)
def test_chain_open_raises_only_kinko_errors(value: bytes, aad: bytes) -> None:
    try:
        opened = _fuzz_chain().open(value, aad=aad)
    except KinkoError:
        return
    assert isinstance(opened.plaintext, bytes)


@PROPERTY
@given(
    seed=st.binary(min_size=32, max_size=200),
    infos=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=4),
)
def test_seed_kdf_equals_hkdf_expand(seed: bytes, infos: list[bytes]) -> None:
    # One keyed KDF serves many infos; each derivation is pyca's HKDF-Expand, L = 32.
    kdf = kmsv2.SeedKdf(seed)
    for info in infos:
        assert kdf.derive(info) == HKDFExpand(hashes.SHA256(), 32, info).derive(seed)


# --- KMS v2: a page opened at once -----------------------------------------------------------


@PROPERTY
@given(
    page=st.lists(
        st.tuples(plaintexts, st.integers(min_value=0), st.integers(0, 255), st.booleans()),
        min_size=1,
        max_size=8,
    ),
    label=labels,
)
def test_kms_v2_open_kept_serves_only_what_open_reads_and_never_a_tampered_value(
    page: list[tuple[bytes, int, int, bool]], label: bytes
) -> None:
    transformer = _warm_kms_v2(label)
    assert isinstance(transformer, KmsV2)
    values: list[bytes] = []
    aads: list[bytes] = []
    changed: list[bool] = []
    for i, (written, where, mask, other_key) in enumerate(page):
        aad = b"/registry/secrets/ns/%d" % i
        value = transformer.seal(written, aad=aad)
        position = where % len(value)
        value = value[:position] + bytes([value[position] ^ mask]) + value[position + 1 :]
        values.append(value)
        aads.append(aad + b"x" if other_key else aad)
        changed.append(mask != 0 or other_key)
    opened, shapes = transformer.open_kept(values, aads)
    for value, aad, was_changed, plaintext, shape in zip(
        values, aads, changed, opened, shapes, strict=True
    ):
        # An intact value under the kept seed is opened, a changed one never (it may have
        # been tried: an Opened without a plaintext).
        assert (plaintext is not None) is (not was_changed)
        if plaintext is not None:
            assert shape is not None
            assert shape._replace(plaintext=plaintext) == transformer.open(value, aad=aad)
