"""The soft keystore: kinko's embedded default root-key store. NOT HSM-grade, and says so.

Layout of its directory (created 0700)::

    master.key          32 random bytes, 0600, created once with O_EXCL | O_NOFOLLOW
    keys/<handle>.json  one file per key, 0600: {"version", "label", "nonce", "sealed"}

Each key's material is sealed at rest with AES-256-GCM under the master key, AAD = the
handle, so a key file copied to another handle does not open. Key files are written
atomically (temp file + fsync + rename + fsync of the directory), so a crash leaves either
the old state or the new one.

Invariants:

- Material is only ever on disk sealed; in memory it sits in an ``AESGCM`` object cached per
  handle. It never appears in a repr or a message.
- ``destroy`` overwrites the key file with zeros, fsyncs, unlinks it and fsyncs the
  directory. On SSDs and copy-on-write filesystems (btrfs, ZFS, most cloud volumes) the
  overwrite is best-effort: old blocks may survive. What makes the key unrecoverable there is
  the master key staying secret; treat the directory as a secret as a whole.
- Anything wrong with the directory (unreadable, wrong mode, corrupt file) raises
  :class:`~kinko.errors.HsmUnavailable` naming the path, never its contents.
- One process owns a directory: the label check and the write are atomic within this
  process (a lock), not across processes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kinko.errors import Conflict, DecryptionError, HsmUnavailable, NotFound
from kinko.hsm.port import (
    KEY_SIZE,
    NONCE_SIZE,
    check_handle,
    check_label,
    check_material,
    check_nonce,
    new_handle,
    unwrap_input_ok,
)

MASTER_KEY_FILE = "master.key"
KEYS_DIR = "keys"
FORMAT_VERSION = 1
_FILE_MODE = 0o600
_DIR_MODE = 0o700


class SoftKeystore:
    """An :class:`~kinko.hsm.port.Hsm` whose keys are files sealed under a master key file.

    Not HSM-grade: the master key is a file readable by whoever can read the directory.
    """

    __slots__ = ("_ciphers", "_directory", "_keys_dir", "_lock", "_master")

    def __init__(self, directory: Path) -> None:
        """Opens (creating on first use) the keystore in ``directory``.

        Raises HsmUnavailable if the directory or its master key is unusable.
        """
        self._directory = Path(directory)
        self._keys_dir = self._directory / KEYS_DIR
        self._lock = threading.Lock()
        self._ciphers: dict[str, AESGCM] = {}
        try:
            self._directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            self._keys_dir.mkdir(mode=_DIR_MODE, exist_ok=True)
            self._master = AESGCM(_load_or_create_master(self._directory / MASTER_KEY_FILE))
        except OSError as exc:
            raise HsmUnavailable(
                f"soft keystore {self._directory} is unusable: {exc.strerror}"
            ) from exc

    def __repr__(self) -> str:
        return f"SoftKeystore({str(self._directory)!r})"

    @property
    def directory(self) -> Path:
        """The keystore's directory."""
        return self._directory

    @property
    def hsm_grade(self) -> bool:
        """Always False: the master key is a file on this machine."""
        return False

    @property
    def description(self) -> str:
        """Says what this is, so no operator mistakes it for an HSM."""
        return "soft keystore (not HSM-grade)"

    def generate_key(self, label: str) -> str:
        """Creates a random AES-256 key. Raises InvalidArgument, Conflict, HsmUnavailable."""
        return self._store(check_label(label), os.urandom(KEY_SIZE))

    def import_key(self, label: str, material: bytes) -> str:
        """Stores given AES-256 material. Raises InvalidArgument, Conflict, HsmUnavailable."""
        return self._store(check_label(label), bytes(check_material(material)))

    def wrap(self, handle: str, plaintext: bytes, *, aad: bytes, nonce: bytes) -> bytes:
        """AES-256-GCM encrypt. Raises InvalidArgument, NotFound, HsmUnavailable."""
        check_nonce(nonce)
        return self._cipher(handle).encrypt(nonce, plaintext, aad)

    def unwrap(self, handle: str, ciphertext: bytes, *, aad: bytes, nonce: bytes) -> bytes:
        """AES-256-GCM decrypt. Raises DecryptionError, NotFound, HsmUnavailable."""
        cipher = self._cipher(handle)
        if not unwrap_input_ok(ciphertext, aad=aad, nonce=nonce):
            raise DecryptionError()
        try:
            return cipher.decrypt(nonce, ciphertext, aad)
        except InvalidTag as exc:
            raise DecryptionError() from exc

    def destroy(self, handle: str) -> None:
        """Overwrites and deletes the key file. Raises NotFound, HsmUnavailable."""
        path = self._key_path(check_handle(handle))
        with self._lock:
            self._ciphers.pop(handle, None)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
            except FileNotFoundError as exc:
                raise NotFound("no key with that handle") from exc
            except OSError as exc:
                raise self._unavailable(path, exc) from exc
            try:
                try:
                    size = os.fstat(fd).st_size
                    os.write(fd, bytes(size))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                path.unlink()
                _fsync_dir(self._keys_dir)
            except OSError as exc:
                raise self._unavailable(path, exc) from exc

    def _store(self, label: str, material: bytes) -> str:
        handle = new_handle()
        nonce = os.urandom(NONCE_SIZE)
        document = {
            "version": FORMAT_VERSION,
            "label": label,
            "nonce": base64.b64encode(nonce).decode("ascii"),
            "sealed": base64.b64encode(
                self._master.encrypt(nonce, material, handle.encode("ascii"))
            ).decode("ascii"),
        }
        path = self._key_path(handle)
        with self._lock:
            try:
                if label in self._labels():
                    raise Conflict(f"expected a new key label, got {label!r}, which is in use")
                _write_atomically(path, json.dumps(document).encode("utf-8"))
            except OSError as exc:
                raise self._unavailable(path, exc) from exc
            self._ciphers[handle] = AESGCM(material)
        return handle

    def _labels(self) -> set[str]:
        labels = set()
        for path in self._keys_dir.glob("*.json"):
            labels.add(str(self._read_document(path)["label"]))
        return labels

    def _cipher(self, handle: str) -> AESGCM:
        check_handle(handle)
        with self._lock:
            cipher = self._ciphers.get(handle)
            if cipher is not None:
                return cipher
            path = self._key_path(handle)
            try:
                document = self._read_document(path)
            except FileNotFoundError as exc:
                raise NotFound("no key with that handle") from exc
            except OSError as exc:
                raise self._unavailable(path, exc) from exc
            try:
                material = self._master.decrypt(
                    base64.b64decode(str(document["nonce"]), validate=True),
                    base64.b64decode(str(document["sealed"]), validate=True),
                    handle.encode("ascii"),
                )
            except (InvalidTag, ValueError) as exc:
                raise HsmUnavailable(f"key file {path} does not open under the master key") from exc
            if len(material) != KEY_SIZE:
                raise HsmUnavailable(f"key file {path} holds a key of the wrong size")
            cipher = AESGCM(material)
            self._ciphers[handle] = cipher
            return cipher

    def _read_document(self, path: Path) -> dict[str, object]:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            raw = f.read()
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise HsmUnavailable(f"key file {path} is not valid JSON") from exc
        if (
            not isinstance(document, dict)
            or document.get("version") != FORMAT_VERSION
            or not {"label", "nonce", "sealed"} <= document.keys()
        ):
            raise HsmUnavailable(f"key file {path} is not a version {FORMAT_VERSION} key file")
        return document

    def _key_path(self, handle: str) -> Path:
        return self._keys_dir / f"{handle}.json"

    @staticmethod
    def _unavailable(path: Path, exc: OSError) -> HsmUnavailable:
        return HsmUnavailable(f"soft keystore file {path}: {exc.strerror or type(exc).__name__}")


def _load_or_create_master(path: Path) -> bytes:
    """Reads the master key, creating it (0600, O_EXCL, O_NOFOLLOW) if absent.

    Raises HsmUnavailable if the file is not 32 bytes or is readable by group or others;
    OSError for anything the filesystem refuses.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _FILE_MODE)
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, os.urandom(KEY_SIZE))
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(path.parent)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode) or mode & 0o077:
            raise HsmUnavailable(
                f"master key {path} must be a regular file of mode 0600, got {oct(mode & 0o777)}"
            )
        material = f.read(KEY_SIZE + 1)
    if len(material) != KEY_SIZE:
        raise HsmUnavailable(f"master key {path} must hold {KEY_SIZE} bytes, got {len(material)}")
    return material


def _write_atomically(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a 0600 temp file, fsync and rename. Raises OSError."""
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _FILE_MODE)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Makes a rename or unlink in ``directory`` durable. Raises OSError."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
