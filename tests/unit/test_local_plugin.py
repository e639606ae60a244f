"""LocalKeyPlugin (the in-memory plugin core) and the key-file rules."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from kinko.errors import DecryptionError, InvalidArgument
from kinko.kms.plugin import (
    ANNOTATION_KEY,
    MAX_PLAINTEXT_SIZE,
    LocalKeyPlugin,
    generate_key_file,
    key_id_for,
    load_key_file,
)

KEY = bytes(range(32))
OTHER = bytes(range(100, 132))
SEED = b"s" * 32
ANN = {ANNOTATION_KEY: b"1"}


def test_round_trip() -> None:
    plugin = LocalKeyPlugin(KEY)
    result = plugin.encrypt(SEED, uid="u1")
    assert result.key_id == plugin.key_id
    assert dict(result.annotations) == ANN
    assert len(result.ciphertext) == 12 + 32 + 16
    assert (
        plugin.decrypt(result.ciphertext, uid="u2", key_id=result.key_id, annotations=ANN) == SEED
    )


def test_ciphertext_is_aes_gcm_with_the_key_id_as_aad() -> None:
    """Checked against pyca's AESGCM directly, with a fixed nonce."""
    nonce = bytes(range(12))
    plugin = LocalKeyPlugin(KEY, rng=lambda n: nonce[:n])
    result = plugin.encrypt(SEED, uid="u")
    expected = nonce + AESGCM(KEY).encrypt(nonce, SEED, plugin.key_id.encode())
    assert result.ciphertext == expected


def test_key_id_is_public_stable_and_per_key() -> None:
    key_id = key_id_for(KEY)
    digest = hashlib.sha256(b"kinko kms key_id v1\x00" + KEY).hexdigest()
    assert key_id == "local-" + digest[:32]
    assert key_id_for(KEY) == key_id
    assert key_id_for(OTHER) != key_id
    assert KEY.hex() not in key_id
    assert LocalKeyPlugin(KEY).status().key_id == key_id


@pytest.mark.parametrize("version", ["v2", "v2beta1"])
def test_status(version: str) -> None:
    status = LocalKeyPlugin(KEY, version=version).status()
    assert (status.version, status.healthz, status.key_id) == (version, "ok", key_id_for(KEY))


def test_unknown_key_id_is_invalid_argument() -> None:
    plugin = LocalKeyPlugin(KEY)
    ct = plugin.encrypt(SEED, uid="u").ciphertext
    with pytest.raises(InvalidArgument, match="unknown key_id"):
        plugin.decrypt(ct, uid="u", key_id=key_id_for(OTHER), annotations=ANN)


def test_ciphertext_is_bound_to_its_key_id() -> None:
    """Two keys known to one plugin: a ciphertext presented under the other key_id fails."""
    plugin = LocalKeyPlugin(KEY, retired_keys=[OTHER])
    ct = plugin.encrypt(SEED, uid="u").ciphertext
    with pytest.raises(DecryptionError):
        plugin.decrypt(ct, uid="u", key_id=key_id_for(OTHER), annotations=ANN)


def test_retired_keys_decrypt_but_never_encrypt() -> None:
    old = LocalKeyPlugin(OTHER)
    written = old.encrypt(SEED, uid="u")
    rotated = LocalKeyPlugin(KEY, retired_keys=[OTHER])
    assert rotated.status().key_id == key_id_for(KEY)
    assert rotated.encrypt(SEED, uid="u").key_id == key_id_for(KEY)
    got = rotated.decrypt(written.ciphertext, uid="u", key_id=written.key_id, annotations=ANN)
    assert got == SEED


@given(position=st.integers(min_value=0, max_value=12 + 32 + 16 - 1), bit=st.integers(0, 7))
def test_every_tamper_is_detected(position: int, bit: int) -> None:
    plugin = LocalKeyPlugin(KEY)
    ct = bytearray(plugin.encrypt(SEED, uid="u").ciphertext)
    ct[position] ^= 1 << bit
    with pytest.raises(DecryptionError):
        plugin.decrypt(bytes(ct), uid="u", key_id=plugin.key_id, annotations=ANN)


@pytest.mark.parametrize("length", [1, 11, 12, 27])
def test_truncated_ciphertext_is_a_decryption_error(length: int) -> None:
    plugin = LocalKeyPlugin(KEY)
    ct = plugin.encrypt(SEED, uid="u").ciphertext
    with pytest.raises(DecryptionError):
        plugin.decrypt(ct[:length], uid="u", key_id=plugin.key_id, annotations=ANN)


@pytest.mark.parametrize(
    "annotations",
    [{}, {ANNOTATION_KEY: b"2"}, {"version.encryption.remote.io": b"1"}],
)
def test_missing_or_wrong_annotation_is_invalid_argument(annotations: dict[str, bytes]) -> None:
    plugin = LocalKeyPlugin(KEY)
    ct = plugin.encrypt(SEED, uid="u").ciphertext
    with pytest.raises(InvalidArgument, match="annotations"):
        plugin.decrypt(ct, uid="u", key_id=plugin.key_id, annotations=annotations)


def test_request_shape_rules() -> None:
    plugin = LocalKeyPlugin(KEY)
    ct = plugin.encrypt(SEED, uid="u").ciphertext
    with pytest.raises(InvalidArgument, match="uid"):
        plugin.encrypt(SEED, uid="")
    with pytest.raises(InvalidArgument, match="plaintext"):
        plugin.encrypt(b"", uid="u")
    with pytest.raises(InvalidArgument, match="plaintext"):
        plugin.encrypt(b"x" * (MAX_PLAINTEXT_SIZE + 1), uid="u")
    assert len(plugin.encrypt(b"x" * MAX_PLAINTEXT_SIZE, uid="u").ciphertext) == 1024
    with pytest.raises(InvalidArgument, match="uid"):
        plugin.decrypt(ct, uid="", key_id=plugin.key_id, annotations=ANN)
    with pytest.raises(InvalidArgument, match="ciphertext"):
        plugin.decrypt(b"", uid="u", key_id=plugin.key_id, annotations=ANN)
    with pytest.raises(InvalidArgument, match="key_id"):
        plugin.decrypt(ct, uid="u", key_id="", annotations=ANN)


@pytest.mark.parametrize("key", [b"", b"k" * 16, b"k" * 31, b"k" * 33])
def test_bad_key_size(key: bytes) -> None:
    with pytest.raises(InvalidArgument, match="expected 32 bytes"):
        LocalKeyPlugin(key)
    with pytest.raises(InvalidArgument):
        LocalKeyPlugin(KEY, retired_keys=[key])


def test_bad_version() -> None:
    with pytest.raises(InvalidArgument, match="version"):
        LocalKeyPlugin(KEY, version="v1beta1")


def test_nothing_secret_in_reprs_or_errors() -> None:
    plugin = LocalKeyPlugin(KEY)
    result = plugin.encrypt(SEED, uid="u")
    assert result.ciphertext.hex() not in repr(result)
    assert KEY.hex() not in repr(plugin.__dict__ if hasattr(plugin, "__dict__") else plugin)
    with pytest.raises(DecryptionError) as info:
        plugin.decrypt(result.ciphertext[:-1], uid="u", key_id=plugin.key_id, annotations=ANN)
    assert str(info.value) == str(DecryptionError())


# -- key files ----------------------------------------------------------------------------


def write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_generate_then_load(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    key = generate_key_file(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == base64.b64encode(key) + b"\n"
    assert load_key_file(path) == key


def test_generate_never_overwrites(tmp_path: Path) -> None:
    path = write(tmp_path / "kek", b"keep me")
    with pytest.raises(InvalidArgument, match="already exists"):
        generate_key_file(path)
    assert path.read_bytes() == b"keep me"


def test_generate_does_not_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "kek"
    link.symlink_to(target)
    with pytest.raises(InvalidArgument):
        generate_key_file(link)
    assert not target.exists()


def test_generate_into_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot create"):
        generate_key_file(tmp_path / "missing" / "kek")


@pytest.mark.parametrize(
    "content",
    [
        KEY,
        base64.b64encode(KEY),
        base64.b64encode(KEY) + b"\n",
    ],
    ids=["raw", "base64", "base64-newline"],
)
def test_load_accepted_forms(tmp_path: Path, content: bytes) -> None:
    assert load_key_file(write(tmp_path / "kek", content)) == KEY


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"k" * 31,
        b"k" * 33,
        base64.b64encode(KEY) + b"\n\n",
        base64.b64encode(KEY[:16]) + b"\n",
        base64.b64encode(KEY + b"x"),
        b"not base64 at all, but forty-four bytes!!!!",
        b" " + base64.b64encode(KEY),
    ],
)
def test_load_refuses_anything_else_without_quoting_it(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(InvalidArgument, match="expected 32 raw bytes") as info:
        load_key_file(write(tmp_path / "kek", content))
    message = str(info.value)
    assert base64.b64encode(KEY).decode() not in message
    assert "forty-four" not in message


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o602, 0o610])
def test_load_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "kek", base64.b64encode(KEY), mode)
    with pytest.raises(InvalidArgument, match=f"mode {mode:04o}"):
        load_key_file(path)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_load_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    assert load_key_file(write(tmp_path / "kek", KEY, mode)) == KEY


def test_load_refuses_a_directory_and_a_missing_file(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o700)
    with pytest.raises(InvalidArgument, match="regular file"):
        load_key_file(tmp_path)
    with pytest.raises(InvalidArgument, match="cannot open"):
        load_key_file(tmp_path / "missing")


def test_load_follows_a_symlink_and_checks_the_target(tmp_path: Path) -> None:
    """Kubernetes mounts Secret files as symlinks; the target's mode is what counts."""
    target = write(tmp_path / "target", KEY, 0o644)
    link = tmp_path / "kek"
    link.symlink_to(target)
    with pytest.raises(InvalidArgument, match="mode 0644"):
        load_key_file(link)
    target.chmod(0o400)
    assert load_key_file(link) == KEY
