"""The HSM contract against a real PKCS#11 token (SoftHSM2), plus what only PKCS#11 has:
token attributes, session copies, other sessions and other processes, login and module
failures."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11e

from kinko.errors import HsmUnavailable, InvalidArgument, NotFound
from kinko.hsm.pkcs11 import IDLE_COPY_SECONDS, VERIFY_INTERVAL, Pkcs11Hsm
from kinko.hsm.port import Hsm
from tests.hsm_contract import AAD, DEK, NONCE, HsmContract, fresh_label
from tests.integration.hsm_fixture import SoftHsmToken

pytestmark = pytest.mark.hsm

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def _fresh_session_objects(
    token: SoftHsmToken, handle: str, *, on_token: bool | None = True
) -> Iterator[list[Any]]:
    """Key objects with CKA_ID = handle, as a new R/W session on the token sees them: the
    token objects (``on_token`` True), the adapter's session copies (False), or both (None).

    The new session shares the application's login (PKCS#11 login state is per application),
    so it sees private objects and this process's session objects without logging in again;
    its search runs to the end, and the objects are usable only while the context is open.
    """
    template: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.ID: bytes.fromhex(handle),
    }
    if on_token is not None:
        template[Attribute.TOKEN] = on_token
    tok = pkcs11.lib(token.module).get_token(token_label=token.label)
    with tok.open(rw=True) as session:
        yield list(session.get_objects(template))


def _assert_sensitive(key: Any) -> None:
    assert key[Attribute.TOKEN] is True
    assert key[Attribute.SENSITIVE] is True
    assert key[Attribute.EXTRACTABLE] is False
    assert key[Attribute.VALUE_LEN] == 32
    with pytest.raises(p11e.AttributeSensitive):
        key[Attribute.VALUE]
    with pytest.raises(p11e.PKCS11Error):
        key[Attribute.EXTRACTABLE] = True
    with pytest.raises(p11e.PKCS11Error):
        key[Attribute.SENSITIVE] = False


class TestPkcs11Hsm(HsmContract):
    opened: list[Pkcs11Hsm]

    @pytest.fixture
    def hsm(self, softhsm: SoftHsmToken) -> Iterator[Hsm]:
        self.token = softhsm
        self.opened = [Pkcs11Hsm(softhsm.module, softhsm.label, softhsm.pin)]
        yield self.opened[0]
        for adapter in self.opened:
            adapter.close()

    def reopen(self, hsm: Hsm) -> Hsm:
        assert isinstance(hsm, Pkcs11Hsm)
        # Closing the only adapter logs out and closes the session: the new one starts afresh.
        hsm.close()
        reopened = Pkcs11Hsm(self.token.module, self.token.label, self.token.pin)
        self.opened.append(reopened)
        return reopened

    def assert_material_gone(self, hsm: Hsm, handle: str, material: bytes) -> None:
        with _fresh_session_objects(self.token, handle, on_token=None) as found:
            assert found == []  # neither the token object nor a session copy

    def assert_material_unreadable(self, hsm: Hsm, handle: str) -> None:
        with _fresh_session_objects(self.token, handle) as (key,):
            _assert_sensitive(key)
            assert key[Attribute.ALWAYS_SENSITIVE] is True
            assert key[Attribute.NEVER_EXTRACTABLE] is True


@pytest.fixture
def adapter(softhsm: SoftHsmToken) -> Iterator[Pkcs11Hsm]:
    with Pkcs11Hsm(softhsm.module, softhsm.label, softhsm.pin) as hsm:
        yield hsm


def test_imported_key_is_sensitive_and_not_extractable(
    softhsm: SoftHsmToken, adapter: Pkcs11Hsm
) -> None:
    handle = adapter.import_key(fresh_label(), os.urandom(32))
    with _fresh_session_objects(softhsm, handle) as (key,):
        _assert_sensitive(key)


def test_key_objects_carry_label_and_handle_as_id(
    softhsm: SoftHsmToken, adapter: Pkcs11Hsm
) -> None:
    label = fresh_label()
    handle = adapter.generate_key(label)
    with _fresh_session_objects(softhsm, handle) as (key,):
        assert key[Attribute.LABEL] == label
        assert key[Attribute.ID] == bytes.fromhex(handle)
        assert key[Attribute.ENCRYPT] is True
        assert key[Attribute.DECRYPT] is True


def test_softhsm_is_not_hsm_grade_and_says_so(adapter: Pkcs11Hsm) -> None:
    assert adapter.hsm_grade is False
    assert "kinko-test" in adapter.description
    assert "not HSM-grade" in adapter.description


#: python-pkcs11's object class (compiled, untyped), whose copy is C_CopyObject.
_P11_OBJECT: Any = importlib.import_module("pkcs11._pkcs11").Object


class _Tick:
    """A fake monotonic clock (seconds)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_key_destroyed_by_another_session_is_not_found_within_the_verify_interval(
    softhsm: SoftHsmToken,
) -> None:
    tick = _Tick()
    with Pkcs11Hsm(softhsm.module, softhsm.label, softhsm.pin, monotonic=tick) as adapter:
        handle = adapter.generate_key(fresh_label())
        wrapped = adapter.wrap(handle, DEK, aad=AAD, nonce=NONCE)  # uses the session copy
        with _fresh_session_objects(softhsm, handle) as (key,):
            key.destroy()
        # Within the interval the copy still serves; then the token object is looked up
        # again, found gone, and the copy destroyed with it.
        tick.t += VERIFY_INTERVAL / 2
        assert adapter.unwrap(handle, wrapped, aad=AAD, nonce=NONCE) == DEK
        tick.t += VERIFY_INTERVAL / 2
        with pytest.raises(NotFound):
            adapter.wrap(handle, DEK, aad=AAD, nonce=NONCE)
        with _fresh_session_objects(softhsm, handle, on_token=None) as found:
            assert found == []


def test_with_no_verify_interval_a_destroyed_key_is_not_found_at_once(
    softhsm: SoftHsmToken,
) -> None:
    with Pkcs11Hsm(softhsm.module, softhsm.label, softhsm.pin, verify_interval=0) as adapter:
        handle = adapter.generate_key(fresh_label())
        adapter.wrap(handle, DEK, aad=AAD, nonce=NONCE)
        with _fresh_session_objects(softhsm, handle) as (key,):
            key.destroy()
        with pytest.raises(NotFound):
            adapter.wrap(handle, DEK, aad=AAD, nonce=NONCE)
    with pytest.raises(InvalidArgument):
        Pkcs11Hsm(softhsm.module, softhsm.label, softhsm.pin, verify_interval=-1)


def test_wrap_and_unwrap_run_on_a_sensitive_session_copy(
    softhsm: SoftHsmToken, adapter: Pkcs11Hsm
) -> None:
    material = os.urandom(32)
    handle = adapter.import_key(fresh_label(), material)
    wrapped = adapter.wrap(handle, DEK, aad=AAD, nonce=NONCE)
    assert wrapped == AESGCM(material).encrypt(NONCE, DEK, AAD)
    with _fresh_session_objects(softhsm, handle, on_token=False) as (copy,):
        assert copy[Attribute.TOKEN] is False
        assert copy[Attribute.SENSITIVE] is True
        assert copy[Attribute.EXTRACTABLE] is False
        with pytest.raises(p11e.AttributeSensitive):
            copy[Attribute.VALUE]
        with pytest.raises(p11e.PKCS11Error):
            copy[Attribute.SENSITIVE] = False
    adapter.destroy(handle)  # the copy and the token object
    with _fresh_session_objects(softhsm, handle, on_token=None) as found:
        assert found == []
    with pytest.raises(NotFound):
        adapter.unwrap(handle, wrapped, aad=AAD, nonce=NONCE)


def test_a_key_the_token_will_not_copy_is_used_on_the_token(
    softhsm: SoftHsmToken, adapter: Pkcs11Hsm
) -> None:
    handle = "ab" * 16
    material = os.urandom(32)
    tok = pkcs11.lib(softhsm.module).get_token(token_label=softhsm.label)
    with tok.open(rw=True) as session:
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: material,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.COPYABLE: False,
                Attribute.LABEL: fresh_label(),
                Attribute.ID: bytes.fromhex(handle),
            }
        )
    wrapped = adapter.wrap(handle, DEK, aad=AAD, nonce=NONCE)
    assert wrapped == AESGCM(material).encrypt(NONCE, DEK, AAD)
    assert adapter.unwrap(handle, wrapped, aad=AAD, nonce=NONCE) == DEK
    with _fresh_session_objects(softhsm, handle, on_token=False) as copies:
        assert copies == []
    adapter.destroy(handle)
    with _fresh_session_objects(softhsm, handle, on_token=None) as found:
        assert found == []


def test_adapters_on_one_token_share_the_session(softhsm: SoftHsmToken) -> None:
    with (
        Pkcs11Hsm(softhsm.module, softhsm.label, softhsm.pin) as first,
        Pkcs11Hsm(softhsm.module, softhsm.label, softhsm.pin) as second,
    ):
        handle = first.generate_key(fresh_label())
        wrapped = first.wrap(handle, DEK, aad=AAD, nonce=NONCE)
        first.close()
        assert second.unwrap(handle, wrapped, aad=AAD, nonce=NONCE) == DEK


def test_another_process_sees_keys_and_not_destroyed_ones(
    softhsm: SoftHsmToken, adapter: Pkcs11Hsm
) -> None:
    material = os.urandom(32)
    kept = adapter.import_key(fresh_label(), material)
    gone = adapter.generate_key(fresh_label())
    adapter.destroy(gone)
    script = (
        "import sys\n"
        "from kinko.errors import NotFound\n"
        "from kinko.hsm.pkcs11 import Pkcs11Hsm\n"
        "module, label, pin, kept, gone, nonce, aad, dek = sys.argv[1:]\n"
        "with Pkcs11Hsm(module, label, pin) as hsm:\n"
        "    out = hsm.wrap(kept, bytes.fromhex(dek), aad=bytes.fromhex(aad),"
        " nonce=bytes.fromhex(nonce))\n"
        "    try:\n"
        "        hsm.wrap(gone, b'', aad=b'', nonce=bytes(12))\n"
        "    except NotFound:\n"
        "        print(out.hex())\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(softhsm.conf), "PYTHONPATH": str(REPO / "src")}
    args = [softhsm.module, softhsm.label, softhsm.pin, kept, gone]
    args += [NONCE.hex(), AAD.hex(), DEK.hex()]
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert bytes.fromhex(result.stdout.strip()) == AESGCM(material).encrypt(NONCE, DEK, AAD)


def test_wrong_pin_is_unavailable_and_names_no_pin(softhsm: SoftHsmToken) -> None:
    with pytest.raises(HsmUnavailable, match="cannot log in") as info:
        Pkcs11Hsm(softhsm.module, softhsm.label, "wrong-pin-123")
    assert "wrong-pin-123" not in str(info.value)
    assert softhsm.pin not in str(info.value)


def test_another_pin_while_open_is_refused(softhsm: SoftHsmToken, adapter: Pkcs11Hsm) -> None:
    with pytest.raises(HsmUnavailable, match="another PIN"):
        Pkcs11Hsm(softhsm.module, softhsm.label, "wrong-pin-123")


def test_unknown_token_label_is_unavailable(softhsm: SoftHsmToken) -> None:
    with pytest.raises(HsmUnavailable, match="no PKCS#11 token labelled 'no-such-token'"):
        Pkcs11Hsm(softhsm.module, "no-such-token", softhsm.pin)


def test_missing_module_is_unavailable(softhsm: SoftHsmToken, tmp_path: Path) -> None:
    with pytest.raises(HsmUnavailable, match="cannot load PKCS#11 module"):
        Pkcs11Hsm(str(tmp_path / "missing.so"), softhsm.label, softhsm.pin)


def test_a_copy_the_token_has_no_memory_for_leaves_the_token_object_in_use(
    softhsm: SoftHsmToken, adapter: Pkcs11Hsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection at the library seam: C_CopyObject answers CKR_DEVICE_MEMORY.
    def out_of_memory(self: object, attrs: object) -> object:
        raise p11e.DeviceMemory()

    material = os.urandom(32)
    monkeypatch.setattr(_P11_OBJECT, "copy", out_of_memory)
    handle = adapter.import_key(fresh_label(), material)  # no orphan: the create succeeds
    wrapped = adapter.wrap(handle, DEK, aad=AAD, nonce=NONCE)  # on the token object
    assert wrapped == AESGCM(material).encrypt(NONCE, DEK, AAD)
    with _fresh_session_objects(softhsm, handle, on_token=None) as found:
        assert len(found) == 1
    monkeypatch.undo()
    adapter.destroy(handle)
    with _fresh_session_objects(softhsm, handle, on_token=None) as found:
        assert found == []


def test_a_failed_copy_is_tried_again_and_idle_copies_are_destroyed(
    softhsm: SoftHsmToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    tick = _Tick()
    with Pkcs11Hsm(softhsm.module, softhsm.label, softhsm.pin, monotonic=tick) as adapter:
        used, idle = adapter.generate_key(fresh_label()), adapter.generate_key(fresh_label())
        original = _P11_OBJECT.copy

        def out_of_memory(self: object, attrs: object) -> object:
            raise p11e.DeviceMemory()

        monkeypatch.setattr(_P11_OBJECT, "copy", out_of_memory)
        adapter.wrap(used, DEK, aad=AAD, nonce=NONCE)
        monkeypatch.setattr(_P11_OBJECT, "copy", original)
        adapter.wrap(idle, DEK, aad=AAD, nonce=NONCE)
        with _fresh_session_objects(softhsm, used, on_token=False) as copies:
            assert copies == []
        tick.t += VERIFY_INTERVAL  # the next use looks the token object up and copies it
        adapter.wrap(used, DEK, aad=AAD, nonce=NONCE)
        with _fresh_session_objects(softhsm, used, on_token=False) as copies:
            assert len(copies) == 1
        tick.t += IDLE_COPY_SECONDS  # idle's copy goes at the next lookup of any key
        adapter.wrap(used, DEK, aad=AAD, nonce=NONCE)
        with _fresh_session_objects(softhsm, idle, on_token=False) as copies:
            assert copies == []
        assert (
            adapter.unwrap(
                idle, adapter.wrap(idle, DEK, aad=AAD, nonce=NONCE), aad=AAD, nonce=NONCE
            )
            == DEK
        )
