"""``kinko keys serve`` as a real process: HTTPS with its generated CA, IBM's SDK as the client.

Checks the operator-facing behaviour: the startup line (and the plain statement that the soft
keystore is not HSM-grade), HTTPS by default with a CA generated on first start, bringing
one's own certificate, plain HTTP only on loopback, graceful shutdown on SIGTERM, keys that
survive a restart, and a process output that never shows a token, plaintext or ciphertext.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from pathlib import Path

import httpx
from ibm_cloud_sdk_core.authenticators import BearerTokenAuthenticator
from keyprotect import IbmKeyProtectApiV2

from kinko.api.tls import ensure_server_tls
from tests.integration.keys_process import KINKO, serving

INST = "serve-test-instance"


def _token(data_dir: Path, *roles: str) -> str:
    args = [*KINKO, "token", "create", "--data-dir", str(data_dir), "--instance", INST]
    for role in roles:
        args += ["--role", role]
    done = subprocess.run(
        [*args, "--name", "operator"], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def sdk(url: str, token: str, ca: Path) -> IbmKeyProtectApiV2:
    kp = IbmKeyProtectApiV2(authenticator=BearerTokenAuthenticator(token))
    kp.set_service_url(url)
    kp.set_http_config({"verify": str(ca)})
    return kp


def _create_and_wrap(kp: IbmKeyProtectApiV2, dek: bytes) -> tuple[str, str]:
    document = {
        "metadata": {"collectionType": "application/vnd.ibm.kms.key+json", "collectionTotal": 1},
        "resources": [{"type": "application/vnd.ibm.kms.key+json", "name": "served-root"}],
    }
    created = kp.create_key(
        INST, io.BytesIO(json.dumps(document).encode()), prefer="return=representation"
    )
    key_id: str = created.get_result().json()["resources"][0]["id"]
    wrap_body = json.dumps({"plaintext": base64.b64encode(dek).decode()}).encode()
    wrapped = kp.wrap_key(key_id, INST, key_action_wrap_body=io.BytesIO(wrap_body))
    ciphertext: str = wrapped.get_result().json()["ciphertext"]
    return key_id, ciphertext


def _unwrap(kp: IbmKeyProtectApiV2, key_id: str, ciphertext: str) -> bytes:
    response = kp.unwrap_key(
        key_id, INST, io.BytesIO(json.dumps({"ciphertext": ciphertext}).encode())
    )
    return base64.b64decode(response.get_result().json()["plaintext"])


def test_https_by_default_restart_and_graceful_shutdown(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    token = _token(data_dir, "Manager", "Writer")
    dek = os.urandom(32)
    with serving(data_dir) as first:
        assert first.url.startswith("https://")
        assert "NOT HSM-grade" in first.output
        ca = data_dir / "tls" / "ca.crt"
        assert ca.is_file()
        assert oct((data_dir / "tls" / "server.key").stat().st_mode & 0o777) == "0o600"
        kp = sdk(first.url, token, ca)
        key_id, ciphertext = _create_and_wrap(kp, dek)
        assert _unwrap(kp, key_id, ciphertext) == dek
        # An idle keep-alive TLS connection would hold the shutdown for the grace period.
        kp.http_client.close()
    assert first.process.returncode == 0
    assert "kinko keys: stopped" in first.output
    for secret in (token, ciphertext, base64.b64encode(dek).decode()):
        assert secret not in first.output

    # A second process on the same folder: same CA, same keys, same material.
    with serving(data_dir) as second:
        kp = sdk(second.url, token, data_dir / "tls" / "ca.crt")
        assert _unwrap(kp, key_id, ciphertext) == dek
        kp.http_client.close()
    assert second.process.returncode == 0


def test_own_certificate(tmp_path: Path) -> None:
    own = ensure_server_tls(tmp_path / "elsewhere")
    data_dir = tmp_path / "data"
    token = _token(data_dir, "Manager")
    with serving(data_dir, "--tls-cert", str(own.cert), "--tls-key", str(own.key)) as server:
        assert not (data_dir / "tls").exists()
        kp = sdk(server.url, token, own.ca_cert)
        assert kp.get_keys(INST).get_status_code() == 200
        kp.http_client.close()
    assert server.process.returncode == 0


def test_plain_http_only_on_loopback(tmp_path: Path) -> None:
    refused = subprocess.run(
        [
            *KINKO,
            "keys",
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            "0.0.0.0:0",
            "--insecure-http",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 4  # InvalidArgument
    assert "only allowed on a loopback address" in refused.stderr
    with serving(tmp_path / "data", "--insecure-http") as server:
        assert server.url.startswith("http://")
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}


def test_address_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = subprocess.run(
            [
                *KINKO,
                "keys",
                "serve",
                "--data-dir",
                str(tmp_path / "data"),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert refused.returncode == 12  # UnavailableError
    assert f"cannot listen on 127.0.0.1:{port}" in refused.stderr
