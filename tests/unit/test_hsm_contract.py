"""The HSM contract (``tests/hsm_contract.py``) run against the in-memory twin and the soft
keystore, plus what only the soft keystore has: files, modes and the master key."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from kinko.errors import HsmUnavailable, NotFound
from kinko.hsm.memory import MemoryDevice, MemoryHsm
from kinko.hsm.port import Hsm
from kinko.hsm.soft import MASTER_KEY_FILE, SoftKeystore
from tests.hsm_contract import AAD, DEK, NONCE, HsmContract, fresh_label


class TestMemoryHsm(HsmContract):
    @pytest.fixture
    def hsm(self) -> Hsm:
        return MemoryHsm()

    def reopen(self, hsm: Hsm) -> Hsm:
        assert isinstance(hsm, MemoryHsm)
        return MemoryHsm(hsm.device)

    def assert_material_gone(self, hsm: Hsm, handle: str, material: bytes) -> None:
        assert isinstance(hsm, MemoryHsm)
        assert handle not in hsm.device.keys
        assert all(key.material != material for key in hsm.device.keys.values())

    def assert_material_unreadable(self, hsm: Hsm, handle: str) -> None:
        assert isinstance(hsm, MemoryHsm)
        # The twin holds bytes in memory; what it promises is that they never show.
        material = hsm.device.keys[handle].material
        assert material.hex() not in repr(hsm) + repr(hsm.device) + repr(hsm.device.keys)


class TestSoftKeystore(HsmContract):
    @pytest.fixture
    def hsm(self, tmp_path: Path) -> Hsm:
        return SoftKeystore(tmp_path / "keystore")

    def reopen(self, hsm: Hsm) -> Hsm:
        assert isinstance(hsm, SoftKeystore)
        return SoftKeystore(hsm.directory)

    def assert_material_gone(self, hsm: Hsm, handle: str, material: bytes) -> None:
        assert isinstance(hsm, SoftKeystore)
        keys = hsm.directory / "keys"
        assert not (keys / f"{handle}.json").exists()
        assert all(handle not in p.name for p in keys.iterdir())

    def assert_material_unreadable(self, hsm: Hsm, handle: str) -> None:
        assert isinstance(hsm, SoftKeystore)
        document = json.loads((hsm.directory / "keys" / f"{handle}.json").read_text())
        assert set(document) == {"version", "label", "nonce", "sealed"}


def test_memory_device_offline_is_unavailable() -> None:
    device = MemoryDevice()
    hsm = MemoryHsm(device)
    handle = hsm.generate_key("k")
    device.online = False
    with pytest.raises(HsmUnavailable):
        hsm.wrap(handle, DEK, aad=AAD, nonce=NONCE)
    with pytest.raises(HsmUnavailable):
        hsm.generate_key("other")


def test_soft_keystore_is_not_hsm_grade_and_says_so(tmp_path: Path) -> None:
    store = SoftKeystore(tmp_path)
    assert store.hsm_grade is False
    assert store.description == "soft keystore (not HSM-grade)"


def test_soft_keystore_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "ks"
    store = SoftKeystore(directory)
    handle = store.generate_key(fresh_label())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / MASTER_KEY_FILE).stat().st_mode) == 0o600
    assert (directory / MASTER_KEY_FILE).stat().st_size == 32
    assert stat.S_IMODE((directory / "keys" / f"{handle}.json").stat().st_mode) == 0o600
    assert [p.name for p in (directory / "keys").iterdir()] == [f"{handle}.json"]


def test_soft_keystore_never_stores_material_in_the_clear(tmp_path: Path) -> None:
    material = os.urandom(32)
    store = SoftKeystore(tmp_path)
    handle = store.import_key(fresh_label(), material)
    raw = (tmp_path / "keys" / f"{handle}.json").read_bytes()
    assert material not in raw
    assert material.hex().encode() not in raw


def test_soft_key_file_moved_to_another_handle_does_not_open(tmp_path: Path) -> None:
    store = SoftKeystore(tmp_path)
    handle = store.generate_key(fresh_label())
    other = "f" * 32
    (tmp_path / "keys" / f"{handle}.json").rename(tmp_path / "keys" / f"{other}.json")
    with pytest.raises(HsmUnavailable, match="does not open"):
        SoftKeystore(tmp_path).wrap(other, DEK, aad=AAD, nonce=NONCE)


def test_soft_keystore_under_another_master_key_does_not_open(tmp_path: Path) -> None:
    store = SoftKeystore(tmp_path)
    handle = store.generate_key(fresh_label())
    (tmp_path / MASTER_KEY_FILE).unlink()
    with pytest.raises(HsmUnavailable, match="does not open"):
        SoftKeystore(tmp_path).wrap(handle, DEK, aad=AAD, nonce=NONCE)


def test_soft_keystore_refuses_a_group_readable_master_key(tmp_path: Path) -> None:
    SoftKeystore(tmp_path)
    (tmp_path / MASTER_KEY_FILE).chmod(0o644)
    with pytest.raises(HsmUnavailable, match="mode 0600"):
        SoftKeystore(tmp_path)


def test_soft_keystore_refuses_a_symlinked_master_key(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(os.urandom(32))
    directory = tmp_path / "ks"
    directory.mkdir()
    (directory / MASTER_KEY_FILE).symlink_to(target)
    with pytest.raises(HsmUnavailable):
        SoftKeystore(directory)


def test_soft_keystore_refuses_a_short_master_key(tmp_path: Path) -> None:
    fd = os.open(tmp_path / MASTER_KEY_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(HsmUnavailable, match="32 bytes"):
        SoftKeystore(tmp_path)


def test_soft_keystore_corrupt_key_file_is_unavailable_not_found(tmp_path: Path) -> None:
    store = SoftKeystore(tmp_path)
    handle = store.generate_key(fresh_label())
    (tmp_path / "keys" / f"{handle}.json").write_text("{not json")
    fresh = SoftKeystore(tmp_path)
    with pytest.raises(HsmUnavailable, match="not valid JSON"):
        fresh.wrap(handle, DEK, aad=AAD, nonce=NONCE)
    with pytest.raises(NotFound):
        fresh.wrap("e" * 32, DEK, aad=AAD, nonce=NONCE)


def test_soft_keystore_leaves_no_temp_files(tmp_path: Path) -> None:
    store = SoftKeystore(tmp_path)
    for _ in range(5):
        store.destroy(store.generate_key(fresh_label()))
    assert list((tmp_path / "keys").iterdir()) == []
