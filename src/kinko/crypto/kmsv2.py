"""KMS v2 stored format: the ``EncryptedObject`` envelope and the DEK-source cryptography.

Job: turn an ``EncryptedObject`` into the exact bytes kube-apiserver writes after the
``k8s:enc:kms:v2:<name>:`` prefix and back, and seal/open ``encryptedData`` for both
``encryptedDEKSourceType`` values (reference §2.2). Everything here is pure, except the
caches of derived key state a reader passes in (:class:`SeedKdf`, :class:`DekCache`): the
seed, the ``info`` and the nonce come in as arguments, so golden vectors are exact.

Invariants:

- :func:`encode_encrypted_object` and :func:`decode_encrypted_object` both apply
  :func:`validate_encrypted_object`, which is kube-apiserver's ``ValidateEncryptedObject``:
  type ∈ {0, 1}, ``encryptedData`` non-empty, and the :mod:`kinko.crypto.kms_rules` checks on
  ``encryptedDEKSource``, ``keyID`` and annotations. Failures raise ``EnvelopeError``.
- Encoding reproduces Go's ``proto.Marshal`` byte for byte: fields in number order 1..5,
  empty fields omitted (so type 0 is not written). With two or more annotations Go writes map
  entries in random order; we write them sorted by key, which is one of Go's possible outputs.
  Fields 2..5 are serialized by protobuf (deterministic); field 1, which comes first, is
  framed here (key byte and varint length) so that large values never enter protobuf.
- Type 1 (``HKDF_SHA256_XNONCE_AES_GCM_SEED``): ``DEK = HKDF-Expand(SHA-256, PRK=seed,
  info, L=32)`` with no Extract step; ``encryptedData = info(32) ‖ nonce(12) ‖ ct ‖ tag(16)``.
  Type 0 (``AES_GCM_KEY``): the DEK source is the AES key; ``encryptedData = nonce(12) ‖ ct ‖
  tag(16)``. The AAD is the storage key in both.
- Opening never says why it failed: every failure is the same ``DecryptionError()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import overload

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from google.protobuf.message import DecodeError

from kinko.crypto import kms_rules
from kinko.crypto.types import DekSourceType, EncryptedObject
from kinko.errors import DecryptionError, EnvelopeError, InvalidArgument
from kinko.gen import kms_envelope_pb2

#: Size of the random HKDF ``info`` that starts a type-1 ``encryptedData``.
INFO_SIZE = 32
#: AES-GCM nonce size, pinned to 12 as upstream does.
NONCE_SIZE = 12
#: AES-GCM tag size.
TAG_SIZE = 16
#: Size of the DEK derived from a seed.
DERIVED_KEY_SIZE = 32
#: Smallest seed kube-apiserver accepts for type 1 (``MinSeedSizeExtendedNonceGCM``).
MIN_SEED_SIZE = kms_rules.SEED_SIZE
#: AES key sizes accepted for a type-0 DEK.
AES_KEY_SIZES = (16, 24, 32)

#: Field 1 (``encryptedData``), wire type 2 (length-delimited).
_ENCRYPTED_DATA_KEY = b"\x0a"
_KNOWN_TYPES = frozenset(int(t) for t in DekSourceType)
_SHA256 = hashes.SHA256()
#: The HKDF-Expand block counter of the first (and, for L = 32, only) output block.
_FIRST_BLOCK = b"\x01"
#: DEKs a :class:`DekCache` keeps at most (about 2.5 KB of AES-GCM state each); then it resets.
_DEK_CACHE_MAX = 256
#: ``info`` values a :class:`DekCache` remembers having seen once; then it forgets them all.
_SEEN_INFOS_MAX = 4096
#: Ciphertexts up to this size are sliced (copied) out of a stored value to be opened; larger
#: ones are read through a memoryview.
_COPY_MAX = 4096


def _check_text(field_name: str, text: str) -> None:
    """Protobuf strings are UTF-8; a ``str`` holding lone surrogates cannot be written."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise EnvelopeError(f"{field_name}: expected valid UTF-8 text") from None


def validate_encrypted_object(obj: EncryptedObject) -> None:
    """kube-apiserver's ``ValidateEncryptedObject``, applied on encode and on decode.

    Raises EnvelopeError naming the first field that breaks its rule (sizes only).
    """
    if int(obj.dek_source_type) not in _KNOWN_TYPES:
        raise EnvelopeError(
            f"encryptedDEKSourceType: expected 0 or 1, got {int(obj.dek_source_type)}"
        )
    if not obj.encrypted_data:
        raise EnvelopeError("encryptedData: expected non-empty bytes, got none")
    _validate_header_fields(obj)


def _validate_header_fields(obj: EncryptedObject) -> None:
    """The rules of fields 2 to 4 (the type is checked where it is parsed)."""
    kms_rules.check_encrypted_dek_source(obj.encrypted_dek_source)
    _check_text("key_id", obj.key_id)
    kms_rules.check_key_id(obj.key_id)
    for key in obj.annotations:
        _check_text("annotations", key)
    kms_rules.check_annotations(obj.annotations)


def encode_header(
    *,
    key_id: str,
    encrypted_dek_source: bytes,
    annotations: Mapping[str, bytes],
    dek_source_type: DekSourceType,
) -> bytes:
    """Fields 2..5 of an ``EncryptedObject`` (everything but ``encryptedData``), validated.

    A writer's header is the same for every value written under one write state, so the KMS
    v2 transformer serializes it once per state and frames each value with
    :func:`encrypted_data_field_header`. Raises EnvelopeError if a field breaks its rule.
    """
    validate_encrypted_object(
        EncryptedObject(
            encrypted_data=b"\0",  # Any non-empty value, as upstream validates a write state.
            key_id=key_id,
            encrypted_dek_source=encrypted_dek_source,
            annotations=annotations,
            dek_source_type=dek_source_type,
        )
    )
    return _header_bytes(key_id, encrypted_dek_source, annotations, dek_source_type)


def _header_bytes(
    key_id: str,
    encrypted_dek_source: bytes,
    annotations: Mapping[str, bytes],
    dek_source_type: DekSourceType,
) -> bytes:
    message = kms_envelope_pb2.EncryptedObject(
        keyID=key_id,
        encryptedDEKSource=encrypted_dek_source,
        annotations=dict(annotations),
        encryptedDEKSourceType=DekSourceType(dek_source_type).name,
    )
    return message.SerializeToString(deterministic=True)


def encrypted_data_field_header(size: int) -> bytes:
    """The key and length that precede ``encryptedData`` (field 1) of ``size`` bytes.

    Field 1 comes first in Go's output, so ``header(len(d)) ‖ d ‖ encode_header(...)`` is
    exactly the serialized message. Framing the large field here instead of copying it into
    a protobuf message keeps big values out of the protobuf arena, whose allocations made a
    64 KiB seal several times slower; tests check the result against protobuf's own output.
    Raises InvalidArgument for an empty or negative size.
    """
    # One- and two-byte lengths (up to 16 KiB) are every Secret's; no loop for them.
    if 0 < size < 0x80:
        return bytes((0x0A, size))
    if 0x80 <= size < 0x4000:
        return bytes((0x0A, (size & 0x7F) | 0x80, size >> 7))
    if size <= 0:
        raise InvalidArgument(f"encryptedData: expected a positive size, got {size}")
    out = bytearray(_ENCRYPTED_DATA_KEY)
    while size > 0x7F:
        out.append((size & 0x7F) | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out)


def encode_encrypted_object(obj: EncryptedObject) -> bytes:
    """The protobuf bytes of ``obj`` exactly as Go's ``proto.Marshal`` writes them.

    Raises EnvelopeError if ``obj`` breaks a field rule.
    """
    validate_encrypted_object(obj)
    header = _header_bytes(
        obj.key_id, obj.encrypted_dek_source, obj.annotations, obj.dek_source_type
    )
    data = obj.encrypted_data
    return b"".join((encrypted_data_field_header(len(data)), data, header))


def decode_encrypted_object(data: bytes) -> EncryptedObject:
    """Parse and validate the bytes that follow the ``k8s:enc:kms:v2:<name>:`` prefix.

    Raises EnvelopeError if the bytes are not an ``EncryptedObject`` or break a field rule.
    """
    message = kms_envelope_pb2.EncryptedObject()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise EnvelopeError(
            f"EncryptedObject: expected a protobuf message, got {len(data)} bytes that do not parse"
        ) from exc
    source_type = int(message.encryptedDEKSourceType)
    if source_type not in _KNOWN_TYPES:
        raise EnvelopeError(f"encryptedDEKSourceType: expected 0 or 1, got {source_type}")
    obj = EncryptedObject(
        encrypted_data=message.encryptedData,
        key_id=message.keyID,
        encrypted_dek_source=message.encryptedDEKSource,
        annotations=MappingProxyType(dict(message.annotations)),
        dek_source_type=DekSourceType(source_type),
    )
    validate_encrypted_object(obj)
    return obj


def locate_encrypted_data(data: bytes | memoryview, start: int = 0) -> tuple[int, int] | None:
    """Where ``encryptedData`` lies in ``data[start:]``: (begin, end) offsets into ``data``
    when that message starts with field 1, as every writer that follows Go's field order
    does; otherwise None. The bytes from ``end`` on are fields 2 to 5.

    Pure framing, no validation and no copy. Raises nothing.
    """
    size = len(data)
    if size < start + 2 or data[start] != 0x0A:
        return None
    # Lengths below 16 KiB take one or two bytes: read those without the general loop.
    first = data[start + 1]
    if first < 0x80:
        begin = start + 2
        end = begin + first
    elif size > start + 2 and data[start + 2] < 0x80:
        begin = start + 3
        end = begin + ((first & 0x7F) | (data[start + 2] << 7))
    else:
        length = 0
        shift = 0
        pos = start + 1
        while True:
            if pos >= size or pos > start + 10:
                return None
            byte = data[pos]
            length |= (byte & 0x7F) << shift
            pos += 1
            if not byte & 0x80:
                break
            shift += 7
        begin = pos
        end = pos + length
    if end > size:
        return None
    return begin, end


@overload
def split_encrypted_data(data: bytes) -> tuple[bytes, bytes] | None: ...
@overload
def split_encrypted_data(data: memoryview) -> tuple[memoryview, memoryview] | None: ...
def split_encrypted_data(
    data: bytes | memoryview,
) -> tuple[bytes, bytes] | tuple[memoryview, memoryview] | None:
    """Split ``data`` into (``encryptedData``, the bytes of fields 2 to 5) when it starts with
    field 1, as every writer that follows Go's field order produces; otherwise None.

    Pure framing, no validation: the caller decodes the rest with
    :func:`decode_canonical_header`. Slices of a memoryview are views, so a large value is
    not copied. Raises nothing.
    """
    found = locate_encrypted_data(data)
    if found is None:
        return None
    begin, end = found
    # Both halves have the type of ``data``; mypy cannot pair them through the union.
    return data[begin:end], data[end:]  # type: ignore[return-value]


def decode_canonical_header(header: bytes) -> EncryptedObject | None:
    """Decode fields 2 to 5 of an ``EncryptedObject`` (``encrypted_data`` left empty).

    Returns None unless ``header`` is exactly what Go would write for those fields and holds
    no field 1, so that ``field 1 ‖ header`` decodes to the same object as a full parse:
    callers may then cache the result per header. Raises EnvelopeError for a field that
    breaks its rule, as :func:`decode_encrypted_object` would.
    """
    message = kms_envelope_pb2.EncryptedObject()
    try:
        message.ParseFromString(header)
    except DecodeError:
        return None
    if message.encryptedData or message.SerializeToString(deterministic=True) != header:
        return None
    source_type = int(message.encryptedDEKSourceType)
    if source_type not in _KNOWN_TYPES:
        raise EnvelopeError(f"encryptedDEKSourceType: expected 0 or 1, got {source_type}")
    obj = EncryptedObject(
        encrypted_data=b"",
        key_id=message.keyID,
        encrypted_dek_source=message.encryptedDEKSource,
        annotations=MappingProxyType(dict(message.annotations)),
        dek_source_type=DekSourceType(source_type),
    )
    _validate_header_fields(obj)
    return obj


def derive_dek(seed: bytes, *, info: bytes) -> bytes:
    """The type-1 DEK: HKDF-Expand(SHA-256, PRK=seed, info, L=32), with no Extract step.

    With L = 32 this is the single block ``HMAC-SHA256(seed, info ‖ 0x01)``, as Go's
    ``hkdf.Expand(sha256.New, seed, info)`` gives. Raises InvalidArgument if the seed is
    shorter than 32 bytes or ``info`` is not 32 bytes.
    """
    if len(seed) < MIN_SEED_SIZE:
        raise InvalidArgument(f"seed: expected at least {MIN_SEED_SIZE} bytes, got {len(seed)}")
    if len(info) != INFO_SIZE:
        raise InvalidArgument(f"info: expected {INFO_SIZE} bytes, got {len(info)}")
    return HKDFExpand(_SHA256, DERIVED_KEY_SIZE, info).derive(seed)


class SeedKdf:
    """The type-1 DEK derivation of one seed: ``derive(info)`` equals
    ``derive_dek(seed, info=info)``, at about a third of its cost.

    HKDF-Expand with L = 32 is one output block, ``T(1) = HMAC-SHA256(PRK, info ‖ 0x01)``
    (RFC 5869 §2.3). pyca's ``HKDFExpand`` keys a new HMAC with the seed on every call; here a
    pyca ``HMAC`` is keyed with the seed once and copied per derivation, so a read or a write
    pays only the two compression rounds of its own ``info``. The HMAC is pyca's; only the
    single-block framing of RFC 5869 is written here, and tests hold it equal to
    ``HKDFExpand`` and to Kubernetes' recorded values.

    Holds the seed's keyed HMAC state, i.e. key material: :class:`kinko.crypto.formats.KmsV2`
    keeps one per envelope header (and its :class:`DekCache` refers to them) and drops them
    all on its first read after its session let a seed go. Thread-safe
    (copying does not change the keyed state). Raises InvalidArgument for a short seed.
    """

    __slots__ = ("_keyed",)

    def __init__(self, seed: bytes) -> None:
        if len(seed) < MIN_SEED_SIZE:
            raise InvalidArgument(f"seed: expected at least {MIN_SEED_SIZE} bytes, got {len(seed)}")
        self._keyed = hmac.HMAC(seed, _SHA256)

    def __repr__(self) -> str:
        return "SeedKdf(<seed>)"

    def derive(self, info: bytes) -> bytes:
        """The DEK for a 32-byte ``info`` (not checked: callers slice it to size)."""
        mac = self._keyed.copy()
        mac.update(info + _FIRST_BLOCK)
        return mac.finalize()


#: The most type-1 values one writer seals under one ``info``, i.e. one derived DEK, each with
#: its own random 12-byte nonce, before it draws the next ``info`` (see docs/format.md).
WRITES_PER_INFO = 1 << 16


class DekCache:
    """Type-1 DEKs met more than once, as ready AES-GCM objects, keyed by ``info``.

    A value's DEK depends on its seed and its ``info``; kinko's writer seals up to
    :data:`WRITES_PER_INFO` values under one ``info``, so a reader meets the same DEK many
    times, and derives it and keys an AES-GCM object with it only twice: an ``info`` is first
    noted as seen (32 public bytes, no key material), and its DEK is kept when it comes again.
    Values written with a fresh ``info`` each (kube-apiserver does that) are therefore never
    kept; each costs a set lookup and insert on top of its derivation. An entry remembers the
    :class:`SeedKdf` it came from and serves only that one, so a value that carries a known
    ``info`` under another seed derives its own DEK. Holds key material, like the SeedKdfs it
    serves: at most ``max_entries`` DEKs (about 2.5 KB each) and 4,096 seen infos, each
    reset when full, and :meth:`clear` drops everything. Thread-safe (single dict and set
    operations).
    """

    __slots__ = ("_aeads", "_max", "_seen")

    def __init__(self, max_entries: int = _DEK_CACHE_MAX) -> None:
        self._aeads: dict[bytes, tuple[SeedKdf, AESGCM]] = {}
        self._seen: set[bytes] = set()
        self._max = max_entries

    def __repr__(self) -> str:
        return f"DekCache(<{len(self._aeads)} DEKs>)"

    def aead(self, kdf: SeedKdf, info: bytes) -> AESGCM:
        """The AES-GCM object of ``kdf``'s DEK for ``info`` (32 bytes, not checked)."""
        aeads = self._aeads
        hit = aeads.get(info)
        if hit is not None and hit[0] is kdf:
            return hit[1]
        aead = AESGCM(kdf.derive(info))
        seen = self._seen
        if info in seen:
            if len(aeads) >= self._max:
                aeads.clear()
            aeads[info] = (kdf, aead)
        else:
            if len(seen) >= _SEEN_INFOS_MAX:
                seen.clear()
            seen.add(info)
        return aead

    def clear(self) -> None:
        """Drop every DEK and every seen ``info``."""
        self._aeads.clear()
        self._seen.clear()


def seal_seed_type(
    seed: bytes, plaintext: bytes, *, aad: bytes, info: bytes, nonce: bytes
) -> bytes:
    """Type-1 ``encryptedData``: ``info ‖ nonce ‖ AES-256-GCM(derive_dek(seed, info))``.

    Raises InvalidArgument if the seed is shorter than 32 bytes, or ``info`` or ``nonce``
    has the wrong size.
    """
    if len(nonce) != NONCE_SIZE:
        raise InvalidArgument(f"nonce: expected {NONCE_SIZE} bytes, got {len(nonce)}")
    dek = derive_dek(seed, info=info)
    return info + nonce + AESGCM(dek).encrypt(nonce, plaintext, aad)


def open_seed_type(seed: bytes, encrypted_data: bytes | memoryview, *, aad: bytes) -> bytes:
    """Open a type-1 ``encryptedData`` (``info ‖ nonce ‖ ct ‖ tag``) with its seed.

    The same as :func:`open_encrypted_data` for type 1, without the dispatch on the type.
    Raises DecryptionError (opaque): a short seed, truncated data, a wrong AAD or a bad tag.
    """
    if len(seed) < MIN_SEED_SIZE:
        raise DecryptionError()
    return open_seed_type_with(SeedKdf(seed), encrypted_data, aad=aad)


def open_seed_type_with(kdf: SeedKdf, encrypted_data: bytes | memoryview, *, aad: bytes) -> bytes:
    """:func:`open_seed_type` with the seed's :class:`SeedKdf`, as a reader keeps it per seed.

    Raises DecryptionError (opaque): truncated data, a wrong AAD or a bad tag.
    """
    return open_seed_type_at(kdf, encrypted_data, 0, len(encrypted_data), aad=aad)


def open_seed_type_at(
    kdf: SeedKdf,
    value: bytes | memoryview,
    begin: int,
    end: int,
    *,
    aad: bytes,
    deks: DekCache | None = None,
) -> bytes:
    """:func:`open_seed_type_with` of the type-1 ``encryptedData`` at ``value[begin:end]``.

    A reader that has located ``encryptedData`` in a stored value (:func:`locate_encrypted_data`)
    opens it in place: only the nonce and the ciphertext are sliced out, once, instead of the
    whole field first and the ciphertext again from that copy. With ``deks``, the DEK comes
    from that cache (derived on a miss). Raises DecryptionError (opaque): bounds outside
    ``value``, truncated data, a wrong AAD or a bad tag.
    """
    info_end = begin + INFO_SIZE
    nonce_end = info_end + NONCE_SIZE
    if begin < 0 or end > len(value) or end - nonce_end < TAG_SIZE:
        raise DecryptionError()
    # HMAC.update and the cache take bytes; a slice of bytes already is, a view's is copied.
    info = value[begin:info_end]
    if type(info) is not bytes:
        info = bytes(info)
    aead = AESGCM(kdf.derive(info)) if deks is None else deks.aead(kdf, info)
    # A large ciphertext is read through a view: copying it first would cost more than
    # the view. Up to a few KiB (every Secret) the copy is the cheaper of the two.
    if end - nonce_end > _COPY_MAX and type(value) is bytes:
        value = memoryview(value)
    try:
        return aead.decrypt(value[info_end:nonce_end], value[nonce_end:end], aad)
    except InvalidTag:
        raise DecryptionError() from None


def open_encrypted_data(
    source_type: DekSourceType,
    dek_source: bytes,
    encrypted_data: bytes | memoryview,
    *,
    aad: bytes,
) -> bytes:
    """Open ``encryptedData`` given the plaintext of ``encryptedDEKSource``.

    Type 1: ``dek_source`` is a seed of at least 32 bytes; the DEK is derived from it and the
    leading 32-byte ``info``. Type 0: ``dek_source`` is the AES key (16, 24 or 32 bytes).
    Raises DecryptionError (opaque) for any failure: a short seed, a bad key size, truncated
    data, a wrong AAD or a bad tag.
    """
    if source_type == DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED:
        # A view, not a copy: a 64 KiB value would otherwise be copied again per read.
        return open_seed_type(dek_source, memoryview(encrypted_data), aad=aad)
    if source_type == DekSourceType.AES_GCM_KEY:
        if len(dek_source) not in AES_KEY_SIZES or len(encrypted_data) < NONCE_SIZE + TAG_SIZE:
            raise DecryptionError()
        key = dek_source
        body = memoryview(encrypted_data)
    else:
        raise DecryptionError()
    try:
        return AESGCM(key).decrypt(body[:NONCE_SIZE], body[NONCE_SIZE:], aad)
    except InvalidTag:
        raise DecryptionError() from None
