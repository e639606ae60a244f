"""The contract every :class:`~kinko.hsm.port.Hsm` adapter keeps, as one base class.

A test module subclasses :class:`HsmContract` (as ``Test…``), provides an ``hsm`` fixture and
overrides the three device-specific hooks: how to reopen the device as a new client, how to
prove a destroyed key's material is gone, and how to prove a generated key's material cannot
be read. The same tests then run against the in-memory twin, the soft keystore and a real
PKCS#11 token (SoftHSM2), so the twin cannot drift from the real parts.
"""

from __future__ import annotations

import os
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kinko.errors import Conflict, DecryptionError, InvalidArgument, NotFound
from kinko.hsm.port import Hsm

AAD = b"/registry/secrets/default/db"
NONCE = bytes(range(12))
DEK = bytes(range(100, 132))
UNKNOWN = "0" * 32


def fresh_label() -> str:
    """A label no other test uses (a token fixture may be shared by a whole session)."""
    return f"test-{uuid.uuid4().hex}"


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


class HsmContract:
    """Contract tests; subclasses provide the ``hsm`` fixture and override the hooks."""

    def reopen(self, hsm: Hsm) -> Hsm:
        """Closes ``hsm`` if it has anything to close; returns a new client of the same device."""
        raise NotImplementedError

    def assert_material_gone(self, hsm: Hsm, handle: str, material: bytes) -> None:
        """Asserts nothing of the destroyed key remains on the device."""
        raise NotImplementedError

    def assert_material_unreadable(self, hsm: Hsm, handle: str) -> None:
        """Asserts the material of a generated key cannot be read back."""
        raise NotImplementedError

    # --- round trip -------------------------------------------------------------------------

    def test_generated_key_round_trips(self, hsm: Hsm) -> None:
        handle = hsm.generate_key(fresh_label())
        ciphertext = hsm.wrap(handle, DEK, aad=AAD, nonce=NONCE)
        assert len(ciphertext) == len(DEK) + 16
        assert DEK not in ciphertext
        assert hsm.unwrap(handle, ciphertext, aad=AAD, nonce=NONCE) == DEK

    @pytest.mark.parametrize(
        ("plaintext", "aad"), [(b"", b""), (b"x", b""), (b"", AAD), (os.urandom(1000), b"a")]
    )
    def test_round_trips_edge_sizes(self, hsm: Hsm, plaintext: bytes, aad: bytes) -> None:
        handle = hsm.generate_key(fresh_label())
        ciphertext = hsm.wrap(handle, plaintext, aad=aad, nonce=NONCE)
        assert hsm.unwrap(handle, ciphertext, aad=aad, nonce=NONCE) == plaintext

    def test_handles_are_distinct_opaque_hex(self, hsm: Hsm) -> None:
        handles = {hsm.generate_key(fresh_label()) for _ in range(3)}
        assert len(handles) == 3
        for handle in handles:
            assert len(handle) == 32
            int(handle, 16)

    def test_describes_itself(self, hsm: Hsm) -> None:
        assert isinstance(hsm.hsm_grade, bool)
        assert hsm.description

    # --- interop with pyca ------------------------------------------------------------------

    def test_imported_key_wraps_exactly_as_pyca_aes_gcm(self, hsm: Hsm) -> None:
        material = os.urandom(32)
        handle = hsm.import_key(fresh_label(), material)
        expected = AESGCM(material).encrypt(NONCE, DEK, AAD)
        assert hsm.wrap(handle, DEK, aad=AAD, nonce=NONCE) == expected
        other_nonce = os.urandom(12)
        from_pyca = AESGCM(material).encrypt(other_nonce, b"seed", b"")
        assert hsm.unwrap(handle, from_pyca, aad=b"", nonce=other_nonce) == b"seed"

    def test_import_refuses_material_that_is_not_aes_256(self, hsm: Hsm) -> None:
        for material in (b"", os.urandom(16), os.urandom(31), os.urandom(33)):
            with pytest.raises(InvalidArgument, match="32 bytes"):
                hsm.import_key(fresh_label(), material)

    # --- tamper -----------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "tamper",
        [
            "wrong-aad",
            "empty-aad",
            "wrong-nonce",
            "short-nonce",
            "flip-first-byte",
            "flip-tag",
            "truncated",
            "too-short",
            "empty",
            "extended",
            "other-key",
        ],
    )
    def test_any_tamper_is_an_opaque_decryption_error(self, hsm: Hsm, tamper: str) -> None:
        handle = hsm.generate_key(fresh_label())
        ciphertext = hsm.wrap(handle, DEK, aad=AAD, nonce=NONCE)
        aad, nonce, target = AAD, NONCE, handle
        if tamper == "wrong-aad":
            aad = AAD + b"x"
        elif tamper == "empty-aad":
            aad = b""
        elif tamper == "wrong-nonce":
            nonce = _flip(NONCE, 0)
        elif tamper == "short-nonce":
            nonce = NONCE[:8]
        elif tamper == "flip-first-byte":
            ciphertext = _flip(ciphertext, 0)
        elif tamper == "flip-tag":
            ciphertext = _flip(ciphertext, -1)
        elif tamper == "truncated":
            ciphertext = ciphertext[:-1]
        elif tamper == "too-short":
            ciphertext = ciphertext[:15]
        elif tamper == "empty":
            ciphertext = b""
        elif tamper == "extended":
            ciphertext = ciphertext + b"\x00"
        else:
            target = hsm.generate_key(fresh_label())
        with pytest.raises(DecryptionError) as info:
            hsm.unwrap(target, ciphertext, aad=aad, nonce=nonce)
        assert str(info.value) == str(DecryptionError())

    def test_wrap_refuses_a_nonce_that_is_not_12_bytes(self, hsm: Hsm) -> None:
        handle = hsm.generate_key(fresh_label())
        for nonce in (b"", NONCE[:11], NONCE + b"\x00"):
            with pytest.raises(InvalidArgument, match="12-byte nonce"):
                hsm.wrap(handle, DEK, aad=AAD, nonce=nonce)

    # --- unknown handles --------------------------------------------------------------------

    @pytest.mark.parametrize("handle", [UNKNOWN, "", "not-a-handle", "../../etc/passwd", "A" * 32])
    def test_unknown_or_malformed_handle_is_not_found(self, hsm: Hsm, handle: str) -> None:
        with pytest.raises(NotFound):
            hsm.wrap(handle, DEK, aad=AAD, nonce=NONCE)
        with pytest.raises(NotFound):
            hsm.unwrap(handle, bytes(48), aad=AAD, nonce=NONCE)
        # Whatever the input: an unknown key is NotFound before any ciphertext is looked at.
        for ciphertext, nonce in ((b"", NONCE), (bytes(48), b""), (bytes(48), NONCE + b"\x00")):
            with pytest.raises(NotFound):
                hsm.unwrap(handle, ciphertext, aad=AAD, nonce=nonce)
        with pytest.raises(NotFound):
            hsm.destroy(handle)

    # --- destroy ----------------------------------------------------------------------------

    def test_destroy_purges_the_key(self, hsm: Hsm) -> None:
        material = os.urandom(32)
        handle = hsm.import_key(fresh_label(), material)
        keep = hsm.generate_key(fresh_label())
        ciphertext = hsm.wrap(handle, DEK, aad=AAD, nonce=NONCE)
        hsm.destroy(handle)
        with pytest.raises(NotFound):
            hsm.wrap(handle, DEK, aad=AAD, nonce=NONCE)
        with pytest.raises(NotFound):
            hsm.unwrap(handle, ciphertext, aad=AAD, nonce=NONCE)
        with pytest.raises(NotFound):
            hsm.destroy(handle)
        self.assert_material_gone(hsm, handle, material)
        # Other keys are untouched.
        wrapped = hsm.wrap(keep, DEK, aad=AAD, nonce=NONCE)
        assert hsm.unwrap(keep, wrapped, aad=AAD, nonce=NONCE) == DEK

    def test_destroyed_key_stays_gone_after_reopen(self, hsm: Hsm) -> None:
        handle = hsm.generate_key(fresh_label())
        hsm.destroy(handle)
        reopened = self.reopen(hsm)
        with pytest.raises(NotFound):
            reopened.wrap(handle, DEK, aad=AAD, nonce=NONCE)

    # --- material stays inside --------------------------------------------------------------

    def test_generated_material_is_not_readable(self, hsm: Hsm) -> None:
        handle = hsm.generate_key(fresh_label())
        self.assert_material_unreadable(hsm, handle)

    def test_repr_carries_no_material(self, hsm: Hsm) -> None:
        material = os.urandom(32)
        hsm.import_key(fresh_label(), material)
        text = repr(hsm)
        assert material.hex() not in text
        assert repr(material) not in text

    # --- labels -----------------------------------------------------------------------------

    def test_duplicate_label_is_refused_and_creates_nothing(self, hsm: Hsm) -> None:
        label = fresh_label()
        handle = hsm.generate_key(label)
        with pytest.raises(Conflict, match="in use"):
            hsm.generate_key(label)
        with pytest.raises(Conflict, match="in use"):
            hsm.import_key(label, os.urandom(32))
        # The original still works, and a destroyed label can be used again.
        assert hsm.unwrap(handle, hsm.wrap(handle, DEK, aad=AAD, nonce=NONCE), aad=AAD, nonce=NONCE)
        hsm.destroy(handle)
        hsm.generate_key(label)

    @pytest.mark.parametrize("label", ["", "x" * 129, "line\nbreak"])
    def test_bad_label_is_refused(self, hsm: Hsm, label: str) -> None:
        with pytest.raises(InvalidArgument, match="label"):
            hsm.generate_key(label)

    # --- persistence ------------------------------------------------------------------------

    def test_keys_persist_across_reopen(self, hsm: Hsm) -> None:
        material = os.urandom(32)
        generated = hsm.generate_key(fresh_label())
        imported = hsm.import_key(fresh_label(), material)
        wrapped = hsm.wrap(generated, DEK, aad=AAD, nonce=NONCE)
        reopened = self.reopen(hsm)
        assert reopened.unwrap(generated, wrapped, aad=AAD, nonce=NONCE) == DEK
        assert reopened.wrap(imported, DEK, aad=AAD, nonce=NONCE) == AESGCM(material).encrypt(
            NONCE, DEK, AAD
        )
