"""The CLI's error table: each error class maps to its own exit code."""

from __future__ import annotations

import pytest

from kinko import errors
from kinko.cli.errors import exit_code_for


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.ConfigError("resources[0]", "bad"), 3),
        (errors.InvalidArgument("x"), 4),
        (errors.EnvelopeError("x"), 4),
        (errors.DecryptionError(), 5),
        (errors.NotFound("x"), 6),
        (errors.Conflict("x"), 7),
        (errors.WrongState("x"), 7),
        (errors.TooEarly("x"), 7),
        (errors.DeletionRefused("x"), 7),
        (errors.Unauthorized("x"), 8),
        (errors.Forbidden("x"), 9),
        (errors.Gone("x"), 14),
        (errors.Unprocessable("x"), 4),
        (errors.NotAllowed("x"), 4),
        (errors.UnprocessableCiphertext(), 5),
        (errors.CorruptMetadata("x"), 15),
        (errors.PluginError("x"), 10),
        (errors.StoreUnavailable("x"), 11),
        (errors.HsmUnavailable("x"), 13),
        (errors.KeyServiceUnavailable("x"), 16),
        (errors.KinkoError("x"), 1),
    ],
)
def test_exit_code_for_each_error_class(exc: errors.KinkoError, code: int) -> None:
    assert exit_code_for(exc) == code


def test_config_error_names_its_field_path() -> None:
    exc = errors.ConfigError("resources[1].providers[0].aescbc.keys[0].secret", "bad size")
    assert str(exc) == "resources[1].providers[0].aescbc.keys[0].secret: bad size"
    assert exc.path.endswith(".secret")


def test_decryption_error_is_opaque() -> None:
    assert str(errors.DecryptionError()) == (
        "cannot decrypt value: no configured provider could decrypt the value"
    )


def test_reason_code_defaults_per_class_and_narrows_per_instance() -> None:
    assert errors.WrongState("x").reason_code == "KEY_ACTION_INVALID_STATE_ERR"
    assert errors.Gone("x").reason_code == "KEY_DELETED_ERR"
    assert errors.UnprocessableCiphertext().reason_code == "UNPROCESSABLE_CIPHERTEXT_ERR"
    narrowed = errors.TooEarly("x", reason_code="KEY_ROTATION_NOT_PERMITTED")
    assert narrowed.reason_code == "KEY_ROTATION_NOT_PERMITTED"
    assert errors.TooEarly("y").reason_code == "REQ_TOO_EARLY_ERR"
    assert str(narrowed) == "x"
