"""No repr shows key material, plaintext, ciphertext or a wrapped key: one row per class
that holds any, each built with a recognizable secret that its repr must leave out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from kinko.api.kp_models import (
    KeyActionBody,
    KeyCreateResource,
    RewrapBody,
    RewrapOut,
    RotateBody,
    UnwrapBody,
    UnwrapOut,
    WrapBody,
    WrapOut,
)
from kinko.cluster.client import ListPage
from kinko.cluster.migrate_workers import Sealed
from kinko.cluster.resources import ConfigMap, ObjectMeta, Secret
from kinko.crypto.types import DekSourceType, EncryptedObject, KeptOpened, KmsWriteState
from kinko.keys.results import RewrapResult, UnwrapResult, VersionRef, WrapResult

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQ"  # what no repr may show, as text...
RAW = SECRET.encode()  # ...or as bytes
VERSION = VersionRef(id="v1", creation_date=datetime(2026, 1, 1, tzinfo=UTC))
KEY_VERSION_OUT = {"id": "v1", "creationDate": "2026-01-01T00:00:00Z"}
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

CASES: dict[str, Callable[[], object]] = {
    "KeyCreateResource.payload": lambda: KeyCreateResource(name="k", payload=SECRET),
    "WrapBody.plaintext": lambda: WrapBody(plaintext=SECRET),
    "UnwrapBody.ciphertext": lambda: UnwrapBody(ciphertext=SECRET),
    "RewrapBody.ciphertext": lambda: RewrapBody(ciphertext=SECRET),
    "RotateBody.payload": lambda: RotateBody(payload=SECRET),
    "KeyActionBody": lambda: KeyActionBody(plaintext=SECRET, ciphertext=SECRET, payload=SECRET),
    "WrapOut": lambda: WrapOut.model_validate(
        {"ciphertext": SECRET, "plaintext": SECRET, "keyVersion": KEY_VERSION_OUT}
    ),
    "UnwrapOut": lambda: UnwrapOut.model_validate(
        {"plaintext": SECRET, "ciphertext": SECRET, "keyVersion": KEY_VERSION_OUT}
    ),
    "RewrapOut": lambda: RewrapOut.model_validate(
        {
            "ciphertext": SECRET,
            "keyVersion": KEY_VERSION_OUT,
            "rewrappedKeyVersion": KEY_VERSION_OUT,
        }
    ),
    "WrapResult": lambda: WrapResult(ciphertext=SECRET, key_version=VERSION, plaintext=RAW),
    "UnwrapResult": lambda: UnwrapResult(
        plaintext=RAW, key_version=VERSION, ciphertext=SECRET, rewrapped_key_version=VERSION
    ),
    "RewrapResult": lambda: RewrapResult(
        ciphertext=SECRET, key_version=VERSION, rewrapped_key_version=VERSION
    ),
    "EncryptedObject.annotations": lambda: EncryptedObject(
        encrypted_data=RAW,
        key_id="kid",
        encrypted_dek_source=RAW,
        annotations={"kek.rootkey.kms.kinko.dev": RAW},
        dek_source_type=DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED,
    ),
    "KmsWriteState.annotations": lambda: KmsWriteState(
        seed=RAW,
        key_id="kid",
        encrypted_dek_source=RAW,
        annotations={"kek.rootkey.kms.kinko.dev": RAW},
    ),
    "KeptOpened.plaintexts": lambda: KeptOpened(plaintexts=[RAW, None], opened=[None, None]),
    "Sealed.outcomes": lambda: Sealed(target="t", outcomes=[RAW, 0]),
    "ListPage.items": lambda: ListPage(items=({"kind": "Secret", "data": {"k": SECRET}},)),
    "Secret, last-applied annotation": lambda: Secret(
        metadata=ObjectMeta(
            name="db", annotations={LAST_APPLIED: f'{{"data":{{"password":"{SECRET}"}}}}'}
        ),
        data={"password": RAW},
    ),
    "ConfigMap": lambda: ConfigMap(
        metadata=ObjectMeta(name="cfg", annotations={LAST_APPLIED: SECRET}),
        data={"a": SECRET},
        binary_data={"b": RAW},
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_repr_leaves_the_secret_out(name: str) -> None:
    shown = repr(CASES[name]())
    assert SECRET not in shown
    assert repr(RAW) not in shown


def test_a_secrets_repr_still_names_it() -> None:
    shown = repr(CASES["Secret, last-applied annotation"]())
    assert "'db'" in shown
    assert "['password']" in shown


def test_kept_opened_says_how_many_were_opened() -> None:
    assert repr(CASES["KeptOpened.plaintexts"]()) == "KeptOpened(1 of 2 values opened)"
