"""A KMS v2 plugin core backed by a local AES-256 key file, and its key-file rules.

:class:`LocalKeyPlugin` implements :class:`~kinko.kms.port.KmsV2Api` with no transport: the gRPC
shell (``kinko.kms.server``) serves it on a unix socket, and tests use it directly as the
in-memory twin of a plugin. It mirrors upstream's PKCS#11 mock plugin, with the key in a file
instead of an HSM:

- Encrypt = AES-256-GCM(key, 12 random nonce bytes, AAD = key_id bytes) → ``nonce‖ct‖tag``,
  with the annotation ``version.kms.kinko.dev: 1`` (stored in plaintext by the API server).
- Decrypt requires a known key_id and that annotation, then opens with AAD = key_id.
- Status → (version, ``ok``, key_id of the current key).

key_id derivation: ``"local-" + hex(SHA-256(b"kinko kms key_id v1\\0" ‖ key))[:32]``. It is
public (kube-apiserver logs it and exports its hash), stable for a key, cannot be reversed to
the key (a 256-bit key behind a domain-separated hash), and never reused: a new key file is a
new random key and so a new key_id. Retired keys stay usable for Decrypt only, so data written
before a rotation stays readable until migration has rewritten it.

Key file rules (:func:`load_key_file`): a regular file holding either exactly 32 raw bytes or
the standard base64 of 32 bytes with at most one trailing newline. A file that grants any access
to group or others is **refused** (as ssh refuses such private keys); for a Kubernetes Secret
volume that means ``defaultMode: 0400``. :func:`generate_key_file` creates a new file with
``O_CREAT|O_EXCL|O_NOFOLLOW`` and mode 0600, writing base64 and a newline.

Invariant: no message carries key bytes, plaintext or ciphertext; errors name sizes, paths and
key_ids only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kinko.crypto.kms_rules import ENCRYPTED_DEK_SOURCE_MAX_SIZE
from kinko.crypto.types import Rng
from kinko.errors import DecryptionError, InvalidArgument
from kinko.kms.port import EncryptResult, StatusResult

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
#: The largest plaintext whose ciphertext still fits kube-apiserver's 1 KiB limit.
MAX_PLAINTEXT_SIZE = ENCRYPTED_DEK_SOURCE_MAX_SIZE - NONCE_SIZE - TAG_SIZE
ANNOTATION_KEY = "version.kms.kinko.dev"
ANNOTATION_VALUE = b"1"
SUPPORTED_VERSIONS = ("v2", "v2beta1")
_KEY_ID_DOMAIN = b"kinko kms key_id v1\x00"
_KEY_FILE_MAX_READ = 256


def key_id_for(key: bytes) -> str:
    """The public, stable key_id of a local key (see the module docstring).

    Raises InvalidArgument: the key is not 32 bytes.
    """
    _check_key(key)
    return "local-" + hashlib.sha256(_KEY_ID_DOMAIN + key).hexdigest()[:32]


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise InvalidArgument(f"key: expected {KEY_SIZE} bytes, got {len(key)}")


@dataclass(frozen=True, slots=True)
class _Kek:
    key_id: str
    aead: AESGCM = field(repr=False)


class LocalKeyPlugin:
    """A KMS v2 plugin core over one current local key and any number of retired ones.

    Stateless after construction, so thread-safe.

    Raises InvalidArgument at construction: a key that is not 32 bytes, an unsupported
    status version.
    """

    def __init__(
        self,
        key: bytes,
        *,
        retired_keys: Iterable[bytes] = (),
        rng: Rng = os.urandom,
        version: str = "v2",
    ) -> None:
        if version not in SUPPORTED_VERSIONS:
            raise InvalidArgument(
                f"version: expected one of {', '.join(SUPPORTED_VERSIONS)}, got {version[:64]!r}"
            )
        self._version = version
        self._rng = rng
        current = _Kek(key_id_for(key), AESGCM(key))
        keks = {current.key_id: current}
        for old in retired_keys:
            kek = _Kek(key_id_for(old), AESGCM(old))
            keks.setdefault(kek.key_id, kek)
        self._current = current
        self._keks: Mapping[str, _Kek] = MappingProxyType(keks)

    @property
    def key_id(self) -> str:
        """The key_id that Status reports and Encrypt uses."""
        return self._current.key_id

    @property
    def version(self) -> str:
        return self._version

    def status(self) -> StatusResult:
        """Always healthy: the key is in memory. Raises nothing."""
        return StatusResult(version=self._version, healthz="ok", key_id=self._current.key_id)

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        """Wrap ``plaintext`` (a seed) under the current key.

        Raises InvalidArgument: empty uid, empty or oversize plaintext.
        """
        _check_uid(uid)
        if not plaintext:
            raise InvalidArgument("plaintext: expected non-empty bytes, got none")
        if len(plaintext) > MAX_PLAINTEXT_SIZE:
            raise InvalidArgument(
                f"plaintext: expected at most {MAX_PLAINTEXT_SIZE} bytes, got {len(plaintext)}"
            )
        kek = self._current
        nonce = self._rng(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise InvalidArgument(f"rng: expected {NONCE_SIZE} bytes, got {len(nonce)}")
        sealed = kek.aead.encrypt(nonce, plaintext, kek.key_id.encode())
        return EncryptResult(
            ciphertext=nonce + sealed,
            key_id=kek.key_id,
            annotations={ANNOTATION_KEY: ANNOTATION_VALUE},
        )

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        """Unwrap ``ciphertext`` with the key named by ``key_id``.

        Raises InvalidArgument: empty uid, ciphertext or key_id; unknown key_id; missing or
        unexpected annotation. DecryptionError: the ciphertext does not open (opaque).
        """
        _check_uid(uid)
        if not ciphertext:
            raise InvalidArgument("ciphertext: expected non-empty bytes, got none")
        if not key_id:
            raise InvalidArgument("key_id: expected a non-empty key_id, got an empty one")
        kek = self._keks.get(key_id)
        if kek is None:
            raise InvalidArgument("unknown key_id")
        if annotations.get(ANNOTATION_KEY) != ANNOTATION_VALUE:
            raise InvalidArgument(
                f"annotations: expected {ANNOTATION_KEY}={ANNOTATION_VALUE.decode()}"
            )
        if len(ciphertext) < NONCE_SIZE + TAG_SIZE:
            raise DecryptionError()
        nonce, sealed = ciphertext[:NONCE_SIZE], ciphertext[NONCE_SIZE:]
        try:
            return kek.aead.decrypt(nonce, sealed, key_id.encode())
        except InvalidTag:
            raise DecryptionError() from None


def _check_uid(uid: str) -> None:
    if not uid:
        raise InvalidArgument("uid: expected a non-empty request uid, got an empty one")


def _decode_key(data: bytes, *, path: Path) -> bytes:
    if len(data) == KEY_SIZE:
        return data
    text = data[:-1] if data.endswith(b"\n") else data
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        key = b""
    if len(key) != KEY_SIZE:
        raise InvalidArgument(
            f"key file {path}: expected {KEY_SIZE} raw bytes or the base64 of {KEY_SIZE} bytes, "
            f"got {len(data)} bytes of something else"
        )
    return key


def load_key_file(path: str | os.PathLike[str]) -> bytes:
    """Read a local key from ``path`` (see the module docstring for the rules).

    Raises InvalidArgument: the file is missing, unreadable, not a regular file, grants access
    to group or others, or does not hold exactly one 32-byte key.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidArgument(f"key file {p}: cannot open: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"key file {p}: expected a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise InvalidArgument(
                f"key file {p}: has mode {mode:04o}; expected no access for group or others "
                "(chmod 600)"
            )
        data = os.read(fd, _KEY_FILE_MAX_READ)
    except OSError as exc:
        raise InvalidArgument(f"key file {p}: cannot read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return _decode_key(data, path=p)


def generate_key_file(path: str | os.PathLike[str], *, rng: Rng = os.urandom) -> bytes:
    """Create ``path`` holding a new random 32-byte key (base64 and a newline), mode 0600.

    Never overwrites: the file is created with ``O_EXCL`` and ``O_NOFOLLOW``. Returns the key.

    Raises InvalidArgument: the path exists or cannot be created.
    """
    p = Path(path)
    key = rng(KEY_SIZE)
    _check_key(key)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(p, flags, 0o600)
    except FileExistsError as exc:
        raise InvalidArgument(f"key file {p}: already exists; refusing to overwrite") from exc
    except OSError as exc:
        raise InvalidArgument(f"key file {p}: cannot create: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        p.unlink(missing_ok=True)
        raise InvalidArgument(f"key file {p}: cannot write: {exc.strerror}") from exc
    os.close(fd)
    return key
