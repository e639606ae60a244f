"""The value formats kube-apiserver stores in etcd, one transformer per (provider, key).

Job: seal a plaintext into ``prefix ‖ payload`` and open it again, byte-compatible with
kube-apiserver (reference §2): ``identity``, ``aescbc``, ``aesgcm``, ``secretbox``, KMS v1
(read-only) and KMS v2. Each class satisfies :class:`kinko.crypto.types.Transformer`.

Invariants:

- Pure: no I/O, no clock. Randomness (IVs, nonces, HKDF ``info``) comes only from the ``Rng``
  given to the constructor: one call per write for its IV or nonce, plus one per KMS v2
  ``info`` (every 65,536 writes). Never buffered: a buffer of random bytes would be replayed
  by every copy of a snapshotted or forked process. KMS keys come only from the
  ``KmsV2Keys`` / ``KmsV1Unwrapper``.
- Constructors check key sizes and names and raise ``InvalidArgument`` with sizes, never bytes.
- Every failure to open (bad tag, wrong key, wrong AAD, truncated or malformed payload, bad
  padding) raises exactly ``DecryptionError()``, raised ``from None`` so that no cause leaks
  into a traceback. Environment failures of the KMS port (``PluginError``) pass unchanged.
- ``Opened.stale`` reflects only the transformer's own view (KMS v1 CBC payload; KMS v2 key_id
  or DEK source type not current); :class:`kinko.crypto.chain.ProviderChain` adds position.
- AAD (the storage key) binds ``aesgcm``, KMS v1 GCM payloads and KMS v2; ``aescbc``,
  ``secretbox`` and KMS v1 CBC payloads have none, exactly as upstream.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.secret
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kinko.crypto import kmsv2
from kinko.crypto.types import (
    DekSourceType,
    EncryptedObject,
    KeptOpened,
    KmsV1Unwrapper,
    KmsV2Keys,
    KmsWriteState,
    Opened,
    Rng,
    new_opened,
)
from kinko.errors import DecryptionError, EnvelopeError, InvalidArgument

#: Distinct KMS v2 envelope headers (fields 2 to 5) kept decoded per transformer; one per seed
#: in practice, so this bound is only reached under attack or churn, and then it resets.
_DECODED_HEADERS_MAX = 1024
#: A payload (aescbc) or KMS v2 ``encryptedData`` up to this size is sliced (copied) out of the
#: stored value; larger ones are read through a memoryview. Copying a few KiB costs less than
#: making a view.
_COPY_MAX = 4096
#: pyca's PKCS#7 scheme for AES blocks, made once: its unpadder and padder are per value.
_PKCS7 = padding.PKCS7(algorithms.AES.block_size)
_SEED_TYPE = DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED
#: A KMS v2 write's ``info ‖ nonce`` size, framed in front of its ciphertext.
_KMS_V2_INFO_NONCE = kmsv2.INFO_SIZE + kmsv2.NONCE_SIZE

#: Every encrypted value starts with this; identity refuses to read it.
ENCRYPTED_PREFIX = b"k8s:enc:"
AESCBC_PREFIX = b"k8s:enc:aescbc:v1:"
AESGCM_PREFIX = b"k8s:enc:aesgcm:v1:"
SECRETBOX_PREFIX = b"k8s:enc:secretbox:v1:"
KMS_V1_PREFIX = b"k8s:enc:kms:v1:"
KMS_V2_PREFIX = b"k8s:enc:kms:v2:"

AES_KEY_SIZES = (16, 24, 32)
SECRETBOX_KEY_SIZE = 32
CBC_BLOCK_SIZE = 16
GCM_NONCE_SIZE = 12
GCM_TAG_SIZE = 16
SECRETBOX_NONCE_SIZE = 24
SECRETBOX_TAG_SIZE = 16


def _draw(rng: Rng, size: int) -> bytes:
    """``size`` bytes from ``rng``; a source that returns another size is refused."""
    out = rng(size)
    if len(out) != size:
        raise InvalidArgument(f"rng: expected {size} bytes, got {len(out)}")
    return out


def _check_name(kind: str, name: str) -> None:
    if not name:
        raise InvalidArgument(f"{kind}: expected a non-empty key name")
    try:
        name.encode()
    except UnicodeEncodeError:
        raise InvalidArgument(f"{kind}: expected the key name to be valid UTF-8 text") from None


def _check_aes_key(kind: str, name: str, key: bytes) -> None:
    if len(key) not in AES_KEY_SIZES:
        raise InvalidArgument(f"{kind} key {name!r}: expected 16, 24 or 32 bytes, got {len(key)}")


def _payload(prefix: bytes, value: bytes) -> bytes:
    """``value`` without ``prefix``.

    Raises DecryptionError: a value under another prefix cannot be opened here.
    """
    if not value.startswith(prefix):
        raise DecryptionError()
    return value[len(prefix) :]


def _cbc_decrypt(algorithm: algorithms.AES, data: bytes | memoryview) -> bytes:
    """``IV(16) ‖ AES-CBC(PKCS#7)``, strictly checked. Raises DecryptionError.

    Padding must be 1..16 bytes, each equal to the pad length. Go's reader would also take
    a pad longer than one block; no writer produces one, so refusing it loses nothing.
    """
    size = len(data)
    if size < 2 * CBC_BLOCK_SIZE or size % CBC_BLOCK_SIZE:
        raise DecryptionError()
    decryptor = Cipher(algorithm, modes.CBC(data[:CBC_BLOCK_SIZE])).decryptor()
    return _unpad(decryptor.update(data[CBC_BLOCK_SIZE:]) + decryptor.finalize())


def _unpad(padded: bytes) -> bytes:
    """``padded`` without its PKCS#7 padding, checked by pyca. Raises DecryptionError."""
    unpadder = _PKCS7.unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise DecryptionError() from None


def _cbc_encrypt(algorithm: algorithms.AES, iv: bytes, plaintext: bytes) -> bytes:
    padder = _PKCS7.padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithm, modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padded) + encryptor.finalize()


class _CbcDecryptor:
    """One pyca AES-CBC decryptor kept per aescbc key, for every value's read.

    A new decryptor costs about ten times what decrypting a 1 KiB value does (the cipher
    context and its key schedule). CBC decryption makes each plaintext block from two
    ciphertext blocks only, ``P[i] = D(C[i]) ⊕ C[i-1]``, so a decryptor that has run before
    and is given ``IV ‖ C[1] ‖ … ‖ C[n]`` of a new value returns one block that depends on
    the previous input (``D(IV) ⊕`` its last block), which is dropped, followed by exactly
    that value's padded plaintext, ``P[1] = D(C[1]) ⊕ IV`` onwards. The input is always whole
    blocks, so the decryptor never holds a partial block between values, and nothing it
    returns for one value is handed out with another's. It starts with a zero IV, which
    only ever feeds the dropped first block.

    The decryptor is stateful, so it is used under ``lock``; a reader that finds the lock
    taken uses a fresh decryptor instead of waiting. A child forked while another thread held
    the lock inherits it held: its reads then all take that fresh-decryptor path (correct,
    only slower; kinko's own worker processes are spawned, not forked). Holding a lock and a
    pyca context, an :class:`AesCbc` cannot be pickled.
    """

    __slots__ = ("decryptor", "lock")

    def __init__(self, algorithm: algorithms.AES) -> None:
        self.decryptor = Cipher(algorithm, modes.CBC(bytes(CBC_BLOCK_SIZE))).decryptor()
        self.lock = threading.Lock()


@dataclass(frozen=True, slots=True, eq=False)
class Identity:
    """No encryption: the value is the plaintext. Refuses anything starting ``k8s:enc:``."""

    @property
    def kind(self) -> str:
        return "identity"

    @property
    def name(self) -> str:
        return ""

    @property
    def prefix(self) -> bytes:
        return b""

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """Return ``plaintext`` unchanged. Raises nothing."""
        return bytes(plaintext)

    def open(self, value: bytes, *, aad: bytes) -> Opened:
        """Return ``value`` as the plaintext. Raises DecryptionError for encrypted data."""
        if value.startswith(ENCRYPTED_PREFIX):
            raise DecryptionError()
        return Opened(plaintext=bytes(value), stale=False, provider="identity", key_name="")


@dataclass(frozen=True, slots=True, eq=False)
class AesCbc:
    """``k8s:enc:aescbc:v1:<name>:`` ‖ IV(16) ‖ AES-CBC(PKCS#7). No AAD and no MAC.

    The format is malleable: a changed byte can yield a different plaintext instead of an
    error. Bad padding gets the same opaque error as everything else, but unauthenticated CBC
    stays a padding oracle for anyone who can write values and observe reads. Kubernetes
    keeps it for old data; kinko reads and writes it only when configured.
    """

    name: str
    key: bytes = field(repr=False)
    rng: Rng = field(repr=False, kw_only=True)
    prefix: bytes = field(init=False)
    _algorithm: algorithms.AES = field(init=False, repr=False)
    _decryptor: _CbcDecryptor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_name("aescbc", self.name)
        _check_aes_key("aescbc", self.name, self.key)
        object.__setattr__(self, "prefix", AESCBC_PREFIX + self.name.encode() + b":")
        object.__setattr__(self, "_algorithm", algorithms.AES(self.key))
        object.__setattr__(self, "_decryptor", _CbcDecryptor(self._algorithm))

    @property
    def kind(self) -> str:
        return "aescbc"

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """Raises InvalidArgument if the rng misbehaves."""
        iv = _draw(self.rng, CBC_BLOCK_SIZE)
        return self.prefix + _cbc_encrypt(self._algorithm, iv, plaintext)

    def open(self, value: bytes, *, aad: bytes) -> Opened:
        """Raises DecryptionError (opaque)."""
        prefix = self.prefix
        size = len(value) - len(prefix)
        if not value.startswith(prefix) or size < 2 * CBC_BLOCK_SIZE or size % CBC_BLOCK_SIZE:
            raise DecryptionError()
        # ``IV ‖ C`` through the kept decryptor: its first output block is dropped (see
        # _CbcDecryptor), the rest is this value's padded plaintext.
        payload = value[len(prefix) :] if size <= _COPY_MAX else memoryview(value)[len(prefix) :]
        kept = self._decryptor
        if kept.lock.acquire(blocking=False):
            try:
                padded = kept.decryptor.update(payload)[CBC_BLOCK_SIZE:]
            finally:
                kept.lock.release()
            plaintext = _unpad(padded)
        else:
            # Another thread holds the kept decryptor: a fresh one for this value.
            plaintext = _cbc_decrypt(self._algorithm, payload)
        # Positional: this runs once per read, and keywords cost more than the tuple.
        return Opened(plaintext, False, "aescbc", self.name)


@dataclass(frozen=True, slots=True, eq=False)
class AesGcm:
    """``k8s:enc:aesgcm:v1:<name>:`` ‖ nonce(12) ‖ ct ‖ tag(16), AAD = storage key."""

    name: str
    key: bytes = field(repr=False)
    rng: Rng = field(repr=False, kw_only=True)
    prefix: bytes = field(init=False)
    _aead: AESGCM = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_name("aesgcm", self.name)
        _check_aes_key("aesgcm", self.name, self.key)
        object.__setattr__(self, "prefix", AESGCM_PREFIX + self.name.encode() + b":")
        # One AESGCM object per transformer: its key schedule costs more than sealing 1 KiB.
        object.__setattr__(self, "_aead", AESGCM(self.key))

    @property
    def kind(self) -> str:
        return "aesgcm"

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """Raises InvalidArgument if the rng misbehaves."""
        # The draw is inlined (not _draw) because this is the hot path of every write.
        nonce = self.rng(GCM_NONCE_SIZE)
        if len(nonce) != GCM_NONCE_SIZE:
            raise InvalidArgument(f"rng: expected {GCM_NONCE_SIZE} bytes, got {len(nonce)}")
        return self.prefix + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, value: bytes, *, aad: bytes) -> Opened:
        """Raises DecryptionError (opaque)."""
        prefix = self.prefix
        if not value.startswith(prefix) or len(value) < len(prefix) + GCM_NONCE_SIZE + GCM_TAG_SIZE:
            raise DecryptionError()
        # A view, not a slice: opening a large value should not copy it first.
        data = memoryview(value)[len(prefix) :]
        try:
            plaintext = self._aead.decrypt(data[:GCM_NONCE_SIZE], data[GCM_NONCE_SIZE:], aad)
        except InvalidTag:
            raise DecryptionError() from None
        return Opened(plaintext=plaintext, stale=False, provider="aesgcm", key_name=self.name)


@dataclass(frozen=True, slots=True, eq=False)
class Secretbox:
    """``k8s:enc:secretbox:v1:<name>:`` ‖ nonce(24) ‖ tag(16) ‖ ct (XSalsa20-Poly1305). No AAD."""

    name: str
    key: bytes = field(repr=False)
    rng: Rng = field(repr=False, kw_only=True)
    prefix: bytes = field(init=False)
    _box: nacl.secret.SecretBox = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_name("secretbox", self.name)
        if len(self.key) != SECRETBOX_KEY_SIZE:
            raise InvalidArgument(
                f"secretbox key {self.name!r}: expected {SECRETBOX_KEY_SIZE} bytes, "
                f"got {len(self.key)}"
            )
        object.__setattr__(self, "prefix", SECRETBOX_PREFIX + self.name.encode() + b":")
        object.__setattr__(self, "_box", nacl.secret.SecretBox(bytes(self.key)))

    @property
    def kind(self) -> str:
        return "secretbox"

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """Raises InvalidArgument if the rng misbehaves."""
        nonce = _draw(self.rng, SECRETBOX_NONCE_SIZE)
        sealed: bytes = bytes(self._box.encrypt(bytes(plaintext), nonce))
        return self.prefix + sealed

    def open(self, value: bytes, *, aad: bytes) -> Opened:
        """Raises DecryptionError (opaque)."""
        data = _payload(self.prefix, value)
        if len(data) < SECRETBOX_NONCE_SIZE + SECRETBOX_TAG_SIZE:
            raise DecryptionError()
        try:
            plaintext: bytes = bytes(self._box.decrypt(data))
        except nacl.exceptions.CryptoError:
            raise DecryptionError() from None
        return Opened(plaintext=plaintext, stale=False, provider="secretbox", key_name=self.name)


@dataclass(frozen=True, slots=True, eq=False)
class KmsV1:
    """Read-only KMS v1: ``k8s:enc:kms:v1:<name>:`` ‖ uint16 BE len ‖ encDEK ‖ payload.

    The payload is tried as AES-GCM (nonce 12, AAD = storage key, written since 1.25) and
    then as AES-CBC (IV 16, PKCS#7, no AAD, written up to 1.24); a CBC read is stale.
    KMS v1 is deprecated and off by default upstream, so kinko never writes it.
    """

    name: str
    unwrapper: KmsV1Unwrapper = field(repr=False)
    prefix: bytes = field(init=False)

    def __post_init__(self) -> None:
        _check_name("kms v1", self.name)
        object.__setattr__(self, "prefix", KMS_V1_PREFIX + self.name.encode() + b":")

    @property
    def kind(self) -> str:
        return "kms"

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """Always raises InvalidArgument: KMS v1 is read-only."""
        raise InvalidArgument(
            f"kms v1 provider {self.name} is read-only; put a kms v2 or local provider first"
        )

    def open(self, value: bytes, *, aad: bytes) -> Opened:
        """Raises DecryptionError (opaque; also when the unwrapper refuses), PluginError."""
        data = _payload(self.prefix, value)
        if len(data) < 2:
            raise DecryptionError()
        size = int.from_bytes(data[:2], "big")
        if len(data) < 2 + size:
            raise DecryptionError()
        dek = self.unwrapper.decrypt(data[2 : 2 + size])
        if len(dek) not in AES_KEY_SIZES:
            raise DecryptionError()
        payload = data[2 + size :]
        if len(payload) >= GCM_NONCE_SIZE + GCM_TAG_SIZE:
            try:
                plaintext = AESGCM(dek).decrypt(
                    payload[:GCM_NONCE_SIZE], payload[GCM_NONCE_SIZE:], aad
                )
            except InvalidTag:
                pass
            else:
                return Opened(plaintext=plaintext, stale=False, provider="kms", key_name=self.name)
        plaintext = _cbc_decrypt(algorithms.AES(dek), payload)
        return Opened(plaintext=plaintext, stale=True, provider="kms", key_name=self.name)


#: What :class:`KmsV2` keeps per distinct envelope header (fields 2 to 5).
_Decoded = tuple[EncryptedObject, bool, "kmsv2.SeedKdf | None", int]


#: What :class:`KmsV2` writes under: the write state, its serialized header (fields 2 to 5),
#: the current ``info``, the AES-GCM object of its DEK, and a counter of the writes made under
#: that ``info`` after the first.
_WriteKey = tuple[KmsWriteState, bytes, bytes, AESGCM, "itertools.count[int]"]


class _ReadEpoch:
    """The session's seed epoch the kept read state (KDFs, DEKs) belongs to."""

    __slots__ = ("epoch",)

    def __init__(self) -> None:
        self.epoch = 0


class _KeptCount:
    """How many times :class:`KmsV2` has kept a seed's KDF for a header (a hint)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class _WriteKeySlot:
    """The current :data:`_WriteKey`; replaced whole, so a writer always sees one consistent
    set."""

    __slots__ = ("entry",)

    def __init__(self) -> None:
        self.entry: _WriteKey | None = None


@dataclass(frozen=True, slots=True, eq=False)
class KmsV2:
    """``k8s:enc:kms:v2:<name>:`` ‖ protobuf ``EncryptedObject``.

    Writes only type 1, with the current seed (no plugin call): a fresh 12-byte nonce from one
    ``rng`` call per write, under a DEK derived from the seed and a 32-byte ``info`` drawn
    once per :data:`kmsv2.WRITES_PER_INFO` writes and again whenever the write state changes
    (docs/format.md, ADR 14). Reads both types through ``keys.dek_source``; a type-1 read
    takes its DEK from a bounded :class:`kmsv2.DekCache`, so the values written under one
    ``info`` derive it at most twice. A read is stale when its key_id is not the current one
    or its type is not 1.

    Per distinct envelope header (fields 2 to 5, shared by every value written under one
    seed) it keeps the decoded fields and, once a value under that header has opened, the
    seed's :class:`kmsv2.SeedKdf`: later reads under it skip the seed lookup and are only
    counted by ``keys.kept_hit``, as long as the session has let no seed go since (its seed
    epoch). The first read after an eviction drops every kept header, KDF and DEK, and every
    seed is asked for again: key state derived from a seed outlives the session's copy by at
    most that one read, or one :meth:`open_kept` pass, whose values under one header are
    checked together (the writer's current DEK stays until the next write). At most 1,024
    headers are kept; the cache then resets.
    """

    name: str
    keys: KmsV2Keys = field(repr=False)
    rng: Rng = field(repr=False, kw_only=True)
    prefix: bytes = field(init=False)
    _write_key: _WriteKeySlot = field(init=False, repr=False)
    _deks: kmsv2.DekCache = field(init=False, repr=False)
    _read_epoch: _ReadEpoch = field(init=False, repr=False)
    _kept_count: _KeptCount = field(init=False, repr=False)
    #: Header bytes (fields 2 to 5) → the decoded fields, whether the type is 1, and for a
    #: type-1 header that has opened a value, its seed's :class:`kmsv2.SeedKdf` and the
    #: session's seed epoch read before the seed was asked for.
    _decoded: dict[bytes, _Decoded] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_name("kms v2", self.name)
        if ":" in self.name:
            raise InvalidArgument(f"kms v2 provider name {self.name!r}: must not contain ':'")
        object.__setattr__(self, "prefix", KMS_V2_PREFIX + self.name.encode() + b":")
        object.__setattr__(self, "_write_key", _WriteKeySlot())
        object.__setattr__(self, "_deks", kmsv2.DekCache())
        object.__setattr__(self, "_read_epoch", _ReadEpoch())
        object.__setattr__(self, "_kept_count", _KeptCount())
        object.__setattr__(self, "_decoded", {})

    @property
    def kind(self) -> str:
        return "kms"

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """Raises PluginError (no usable write state), InvalidArgument (short seed, bad rng),
        EnvelopeError (the write state breaks a field rule)."""
        state = self.keys.write_state()
        entry = self._write_key.entry
        if entry is None or entry[0] is not state or next(entry[4]) >= kmsv2.WRITES_PER_INFO:
            entry = self._next_write_key(state, entry)
        nonce = _draw(self.rng, kmsv2.NONCE_SIZE)
        sealed = entry[3].encrypt(nonce, plaintext, aad)
        return b"".join(
            (
                self.prefix,
                kmsv2.encrypted_data_field_header(_KMS_V2_INFO_NONCE + len(sealed)),
                entry[2],
                nonce,
                sealed,
                entry[1],
            )
        )

    def _next_write_key(self, state: KmsWriteState, last: _WriteKey | None) -> _WriteKey:
        """A new ``info`` and its DEK under ``state``, made the current write key.

        Concurrent writers that all find the last key used up each make one; every one of
        them is a fresh ``info``, and the last stored stays current. Raises InvalidArgument
        (short seed, bad rng), EnvelopeError (the write state breaks a field rule).
        """
        if last is not None and last[0] is state:
            header = last[1]
        else:
            # Fields 2..5 are the same for every write under one state: validate and
            # serialize them once per state, not once per write.
            header = kmsv2.encode_header(
                key_id=state.key_id,
                encrypted_dek_source=state.encrypted_dek_source,
                annotations=state.annotations,
                dek_source_type=_SEED_TYPE,
            )
        info = _draw(self.rng, kmsv2.INFO_SIZE)
        dek = kmsv2.SeedKdf(state.seed).derive(info)
        entry: _WriteKey = (state, header, info, AESGCM(dek), itertools.count(1))
        self._write_key.entry = entry
        return entry

    def _remember(self, header: bytes) -> _Decoded | None:
        """Decode and validate fields 2 to 5 once per distinct header (a bounded cache).

        Returns None for a header not in Go's canonical form: such a value takes the full
        parse on every read. Raises EnvelopeError.
        """
        obj = kmsv2.decode_canonical_header(header)
        if obj is None:
            return None
        entry: _Decoded = (obj, obj.dek_source_type == _SEED_TYPE, None, 0)
        cache = self._decoded
        if len(cache) >= _DECODED_HEADERS_MAX:
            cache.clear()
        cache[header] = entry
        return entry

    def _forget_kept(self, epoch: int) -> None:
        """The session has let a seed go since the kept KDFs and DEKs were made: drop them
        all, so none outlives its seed by more than this one read. Raises nothing."""
        self._read_epoch.epoch = epoch
        self._decoded.clear()
        self._deks.clear()

    @property
    def kept_mark(self) -> int:
        """Grows whenever a header gets its seed's KDF kept (a read opened a value under it):
        a page reader that sees it change after opening a value alone can open the rest of
        its page with :meth:`open_kept`. A hint only; raises nothing."""
        return self._kept_count.n

    def open_kept(self, values: Sequence[bytes], aads: Sequence[bytes]) -> KeptOpened:
        """:meth:`open` of each of ``values`` (with the AAD at the same place in ``aads``) that
        opens with a seed already kept; the others are left to the caller's :meth:`open`.

        For a chunk of a LIST, whose values share the headers of a few seeds and, from one
        writer, the ``info`` of a few DEKs: one ``keys.kept_hit`` per distinct header counts
        all of its values tried (the statistics and key_id metric of one call per value), the
        current key_id is read once, and a DEK is looked up once per run of values under one
        ``info``. A value is tried only if its header has opened a value before and the
        session has let no seed go since, exactly as :meth:`open` decides it, and only if
        field 1 comes right after the prefix with a length of one or two bytes and ends where
        the header begins (any Secret or ConfigMap a writer in Go's field order stores).

        In the answer, a value with a plaintext opened here. A value with an Opened but no
        plaintext was tried and did not open (a bad tag, a wrong AAD): counted once here, it
        is to be opened alone for its error, and not tried again. A value with neither was
        not tried: another prefix, a header not kept, other framing, a length of three or
        more bytes (16 KiB or more). Raises nothing.
        """
        prefix = self.prefix
        start = len(prefix)
        # Field 1's tag and a length of at most two bytes: encryptedData under 16 KiB.
        latest_begin = start + 3
        decoded = self._decoded
        size = len(values)
        plaintexts: list[bytes | None] = [None] * size
        shapes: list[Opened | None] = [None] * size
        begins = [0] * size
        # Pass 1: the values to try under each kept header (a run of values shares one), with
        # where their encryptedData begins.
        groups: dict[bytes, tuple[EncryptedObject, kmsv2.SeedKdf, int, list[int]]] = {}
        header = b""
        members: list[int] = []
        for index, value in enumerate(values):
            if not value.startswith(prefix):
                continue
            where = kmsv2.locate_encrypted_data(value, start)
            if where is None:
                continue
            begin, end = where
            if begin > latest_begin or end - begin < _KMS_V2_INFO_NONCE + kmsv2.TAG_SIZE:
                continue
            if not header or len(value) - len(header) != end or not value.endswith(header):
                header = value[end:]
                group = groups.get(header)
                if group is None:
                    entry = decoded.get(header)
                    if entry is None or entry[2] is None:
                        header = b""
                        continue
                    # The entry as read now: another thread may drop the cache meanwhile.
                    group = groups[header] = (entry[0], entry[2], entry[3], [])
                members = group[3]
            begins[index] = begin
            members.append(index)
        if not groups:
            return KeptOpened(plaintexts, shapes)
        # Pass 2: per header whose seed is still the session's, open its values in place.
        keys = self.keys
        current = keys.current_key_id()
        deks = self._deks
        for header, (obj, kdf, epoch, indices) in groups.items():
            if not indices or not keys.kept_hit(obj, epoch, len(indices)):
                continue
            key_id = obj.key_id
            shape = new_opened(
                Opened, (b"", key_id != current, "kms", self.name, key_id, _SEED_TYPE)
            )
            tail = len(header)
            info = b""
            aead: AESGCM | None = None
            for index in indices:
                value = values[index]
                begin = begins[index]
                nonce_at = begin + kmsv2.INFO_SIZE
                sealed_at = nonce_at + kmsv2.NONCE_SIZE
                end = len(value) - tail
                if aead is None or not value.startswith(info, begin):
                    info = value[begin:nonce_at]
                    aead = deks.aead(kdf, info)
                data: bytes | memoryview = value
                if end - sealed_at > _COPY_MAX:
                    data = memoryview(value)
                shapes[index] = shape
                try:
                    plaintexts[index] = aead.decrypt(
                        data[nonce_at:sealed_at], data[sealed_at:end], aads[index]
                    )
                except InvalidTag:
                    continue
        return KeptOpened(plaintexts, shapes)

    def open(self, value: bytes, *, aad: bytes) -> Opened:
        """Raises DecryptionError (opaque; also for a malformed envelope), PluginError."""
        prefix = self.prefix
        if not value.startswith(prefix):
            raise DecryptionError()
        # Values written under one seed share fields 2 to 5 byte for byte, so those are
        # decoded and validated once per distinct header instead of once per read.
        found = kmsv2.locate_encrypted_data(value, len(prefix))
        entry = None
        if found is not None:
            begin, end = found
            if end > begin:
                header = value[end:]
                entry = self._decoded.get(header)
                if entry is None:
                    try:
                        entry = self._remember(header)
                    except EnvelopeError:
                        raise DecryptionError() from None
        keys = self.keys
        data: bytes | memoryview
        if entry is not None:
            obj, seed_type, kdf, epoch = entry
            if kdf is not None and keys.kept_hit(obj, epoch):
                # This header has opened a value before and the session has let no seed go
                # since, so its seed's KDF is at hand: no seed lookup (the session counted the
                # read: hits, the key_id metric). encryptedData is opened where it lies.
                plaintext = kmsv2.open_seed_type_at(
                    kdf, value, begin, end, aad=aad, deks=self._deks
                )
                key_id = obj.key_id
                return new_opened(
                    Opened,
                    (
                        plaintext,
                        key_id != keys.current_key_id(),
                        "kms",
                        self.name,
                        key_id,
                        _SEED_TYPE,
                    ),
                )
            # encryptedData is value[begin:end]; the seed-type open below takes it in place.
            data = value
        else:
            try:
                obj = kmsv2.decode_encrypted_object(value[len(prefix) :])
            except EnvelopeError:
                raise DecryptionError() from None
            seed_type = obj.dek_source_type == _SEED_TYPE
            data = obj.encrypted_data
            begin, end = 0, len(data)
        # Read before the seed is asked for: an eviction meanwhile makes the kept seed stale.
        epoch = keys.seed_epoch()
        if epoch != self._read_epoch.epoch:
            self._forget_kept(epoch)
        dek_source = keys.dek_source(obj)
        if seed_type:
            if len(dek_source) < kmsv2.MIN_SEED_SIZE:
                raise DecryptionError()
            kdf = kmsv2.SeedKdf(dek_source)
            # A header that is not kept (not in Go's canonical form) keeps no DEK either.
            deks = self._deks if entry is not None else None
            plaintext = kmsv2.open_seed_type_at(kdf, data, begin, end, aad=aad, deks=deks)
            if entry is not None:
                # Kept only once the seed has opened a value (its tag vouches for the seed),
                # and only as long as the header's entry: bounded like the header cache.
                self._decoded[header] = (obj, True, kdf, epoch)
                self._kept_count.n += 1
        else:
            plaintext = kmsv2.open_encrypted_data(
                obj.dek_source_type, dek_source, memoryview(data)[begin:end], aad=aad
            )
        key_id = obj.key_id
        return new_opened(
            Opened,
            (
                plaintext,
                key_id != keys.current_key_id() or not seed_type,
                "kms",
                self.name,
                key_id,
                obj.dek_source_type,
            ),
        )
