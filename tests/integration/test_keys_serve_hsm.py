"""``kinko keys serve --hsm pkcs11`` on a real SoftHSM2 token, driven by IBM's SDK."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from ibm_cloud_sdk_core.authenticators import BearerTokenAuthenticator
from keyprotect import IbmKeyProtectApiV2

from tests.integration.hsm_fixture import SoftHsmToken
from tests.integration.keys_process import KINKO, serving

pytestmark = pytest.mark.hsm

INST = "hsm-serve-instance"
KEY = "application/vnd.ibm.kms.key+json"


def test_root_keys_in_a_pkcs11_token(
    tmp_path: Path, softhsm: SoftHsmToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    create = [*KINKO, "token", "create", "--data-dir", str(data_dir), "--instance", INST]
    token = subprocess.run(
        [*create, "--role", "Manager", "--role", "Writer"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    monkeypatch.setenv("KINKO_TEST_PIN", softhsm.pin)
    hsm = ("--hsm", "pkcs11", "--pkcs11-module", softhsm.module, "--token-label", softhsm.label)
    with serving(data_dir, *hsm, "--pin-env", "KINKO_TEST_PIN") as server:
        assert f"PKCS#11 token '{softhsm.label}'" in server.output
        assert "NOT HSM-grade" in server.output  # SoftHSM keeps software keys
        assert not (data_dir / "keystore").exists()
        kp = IbmKeyProtectApiV2(authenticator=BearerTokenAuthenticator(token))
        kp.set_service_url(server.url)
        kp.set_http_config({"verify": str(data_dir / "tls" / "ca.crt")})
        document = {
            "metadata": {"collectionType": KEY, "collectionTotal": 1},
            "resources": [{"type": KEY, "name": "pkcs11-root"}],
        }
        created = kp.create_key(
            INST, io.BytesIO(json.dumps(document).encode()), prefer="return=representation"
        )
        key_id = created.get_result().json()["resources"][0]["id"]
        dek = os.urandom(32)
        wrap_body = json.dumps({"plaintext": base64.b64encode(dek).decode(), "aad": ["x"]})
        wrapped = kp.wrap_key(key_id, INST, key_action_wrap_body=io.BytesIO(wrap_body.encode()))
        ciphertext = wrapped.get_result().json()["ciphertext"]
        unwrap_body = json.dumps({"ciphertext": ciphertext, "aad": ["x"]}).encode()
        unwrapped = kp.unwrap_key(key_id, INST, io.BytesIO(unwrap_body))
        assert base64.b64decode(unwrapped.get_result().json()["plaintext"]) == dek
        kp.http_client.close()
    assert server.process.returncode == 0
    assert softhsm.pin not in server.output
