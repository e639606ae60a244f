"""The root-key KMS v2 plugin behind a real KmsV2Server on a real unix socket.

Driven by kinko's own gRPC client (GrpcKmsV2Api) and API-server side (KmsV2Session and the
KmsV2 value format): gRPC status codes for every root key state, a full KMS v2 provider round
trip across a root key rotation, the same over a real SoftHSM2 token, and ``kinko kms serve
--key … --data-dir …`` as a real process with metrics. Every wait polls with a bounded
deadline; nothing asserts on timing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from kinko.crypto.formats import KmsV2
from kinko.errors import DecryptionError, PluginError
from kinko.gen import kms_v2_pb2 as v2pb
from kinko.hsm.pkcs11 import Pkcs11Hsm
from kinko.hsm.port import Hsm
from kinko.keys.auth import Role, TokenBook, issue_token
from kinko.keys.deployment import AUDIT_FILE, open_deployment
from kinko.kms.client import GrpcKmsV2Api, parse_endpoint
from kinko.kms.envelope import KmsV2Session
from kinko.kms.port import KmsV2Api
from kinko.kms.rootkey import HEALTH_TTL, parse_key_id
from kinko.kms.server import KmsV2Server
from tests.integration.hsm_fixture import SoftHsmToken
from tests.rootkey_world import ADMIN, INSTANCE, SEED, World, make_world

DEADLINE = 20.0
AAD = b"/registry/secrets/default/db-password"
MAIN = "from kinko.cli.main import main; main()"


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        threading.Event().wait(0.01)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kk-", dir="/tmp") as name:
        yield Path(name)


@contextlib.contextmanager
def serving(api: KmsV2Api, endpoint: str) -> Iterator[None]:
    server = KmsV2Server(api, endpoint)
    server.start()
    try:
        yield
    finally:
        server.stop(0)


def raw_encrypt(endpoint: str) -> tuple[grpc.StatusCode, str]:
    """One Encrypt without kinko's client: the status code and details as sent."""
    with grpc.insecure_channel(parse_endpoint(endpoint)) as channel:
        rpc = channel.unary_unary(
            "/v2.KeyManagementService/Encrypt",
            request_serializer=v2pb.EncryptRequest.SerializeToString,
            response_deserializer=v2pb.EncryptResponse.FromString,
        )
        try:
            rpc(v2pb.EncryptRequest(plaintext=SEED, uid="u"), timeout=DEADLINE)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture
def world_endpoint(sock_dir: Path) -> Iterator[tuple[World, str]]:
    w = make_world()
    endpoint = f"unix://{sock_dir}/kms.sock"
    with serving(w.plugin(), endpoint):
        yield w, endpoint


# -- status codes -------------------------------------------------------------------------


def test_states_map_to_grpc_codes(world_endpoint: tuple[World, str]) -> None:
    w, endpoint = world_endpoint
    with GrpcKmsV2Api(endpoint) as api:
        r = api.encrypt(SEED, uid="u")
        assert api.decrypt(r.ciphertext, uid="u", key_id=r.key_id, annotations=r.annotations) == (
            SEED
        )
        w.disable()
        code, details = raw_encrypt(endpoint)
        assert code is grpc.StatusCode.FAILED_PRECONDITION
        assert details == (
            f"root key {w.key_id} is suspended (state 2): enable it to encrypt or decrypt"
        )
        with pytest.raises(PluginError, match=r"FAILED_PRECONDITION.*suspended"):
            api.decrypt(r.ciphertext, uid="u", key_id=r.key_id, annotations=r.annotations)
        w.enable()
        w.delete()
        code, details = raw_encrypt(endpoint)
        assert code is grpc.StatusCode.FAILED_PRECONDITION
        assert "Destroyed" in details
        w.purge()
        code, details = raw_encrypt(endpoint)
        assert code is grpc.StatusCode.NOT_FOUND
        assert "purged" in details
        with pytest.raises(PluginError, match="NOT_FOUND"):
            api.decrypt(r.ciphertext, uid="u", key_id=r.key_id, annotations=r.annotations)


def test_a_tampered_ciphertext_is_a_decryption_error(world_endpoint: tuple[World, str]) -> None:
    _, endpoint = world_endpoint
    with GrpcKmsV2Api(endpoint) as api:
        r = api.encrypt(SEED, uid="u")
        tampered = bytearray(r.ciphertext)
        tampered[12] ^= 1
        with pytest.raises(DecryptionError):
            api.decrypt(bytes(tampered), uid="u", key_id=r.key_id, annotations=r.annotations)


# -- a KMS v2 provider across a rotation --------------------------------------------------


def provider_round_trip_across_rotation(w: World, endpoint: str) -> None:
    """Seal and open through the KMS v2 value format; rotate; the old value opens stale."""
    with GrpcKmsV2Api(endpoint) as api:
        session = KmsV2Session(api, name="rootkey")
        provider = KmsV2(name="rootkey", keys=session, rng=os.urandom)
        old_value = provider.seal(b"secret-1", aad=AAD)
        first_key_id = session.current_key_id()
        assert first_key_id is not None
        opened = provider.open(old_value, aad=AAD)
        assert (opened.plaintext, opened.stale, opened.key_id) == (b"secret-1", False, first_key_id)

        new_version = w.rotate()
        w.mono.advance(HEALTH_TTL)
        session.check()
        second_key_id = session.current_key_id()
        assert second_key_id is not None
        assert second_key_id != first_key_id
        assert parse_key_id(second_key_id)[1] == new_version

        reopened = provider.open(old_value, aad=AAD)
        assert (reopened.plaintext, reopened.stale) == (b"secret-1", True)
        new_value = provider.seal(b"secret-2", aad=AAD)
        fresh = provider.open(new_value, aad=AAD)
        assert (fresh.plaintext, fresh.stale, fresh.key_id) == (b"secret-2", False, second_key_id)

        # Another API server (an empty DEK cache) reads both through Decrypt.
        reader = KmsV2(name="rootkey", keys=KmsV2Session(api, name="rootkey"), rng=os.urandom)
        assert reader.open(old_value, aad=AAD).plaintext == b"secret-1"
        assert reader.open(new_value, aad=AAD).plaintext == b"secret-2"
        with pytest.raises(DecryptionError):
            reader.open(old_value, aad=b"/registry/secrets/default/other")


def test_kms_v2_provider_round_trip_across_a_rotation(world_endpoint: tuple[World, str]) -> None:
    provider_round_trip_across_rotation(*world_endpoint)


@pytest.mark.hsm
def test_the_same_over_softhsm2(softhsm: SoftHsmToken, sock_dir: Path) -> None:
    with Pkcs11Hsm(softhsm.module, softhsm.label, softhsm.pin) as hsm:
        w = make_world(hsm=hsm)
        endpoint = f"unix://{sock_dir}/kms.sock"
        plugin = w.plugin()
        with serving(plugin, endpoint):
            provider_round_trip_across_rotation(w, endpoint)
            with GrpcKmsV2Api(endpoint) as api:
                assert api.status().healthz == "ok"
                w.disable()
                code, details = raw_encrypt(endpoint)
                assert code is grpc.StatusCode.FAILED_PRECONDITION
                assert "suspended (state 2)" in details


# -- kinko kms serve --key … --data-dir … as a process ------------------------------------


def kinko(*args: str) -> list[str]:
    return [sys.executable, "-c", MAIN, *args]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def prepare_data_dir(data_dir: Path, hsm: Hsm | None = None) -> tuple[str, str]:
    """A data folder with a root key (alias ``cluster-root``) and the plugin's Reader token."""
    issued = issue_token(
        rng=os.urandom,
        instance=INSTANCE,
        roles=[Role.READER.value],
        now=datetime.now(UTC),
        name="kms-plugin",
    )
    with open_deployment(data_dir, hsm=hsm) as deployment:
        TokenBook(deployment.store).add(issued.record)
        view = deployment.service.create_key(
            ADMIN, INSTANCE, name="cluster-root", aliases=("cluster-root",)
        )
    return view.id, issued.token


def test_kinko_kms_serve_with_a_data_dir_as_a_process(sock_dir: Path) -> None:
    data_dir = sock_dir / "data"
    root_id, token = prepare_data_dir(data_dir)
    token_file = sock_dir / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    endpoint = f"unix://{sock_dir}/kms.sock"
    port = free_port()
    proc = subprocess.Popen(
        kinko(
            "kms",
            "serve",
            "--socket",
            endpoint,
            "--key",
            "cluster-root",
            "--data-dir",
            str(data_dir),
            "--instance",
            INSTANCE,
            "--token-file",
            str(token_file),
            "--metrics-listen",
            f"127.0.0.1:{port}",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: proc.poll() is not None or (sock_dir / "kms.sock").exists(),
            "the plugin socket",
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with GrpcKmsV2Api(endpoint) as api:
            status = api.status()
            assert status.healthz == "ok"
            assert parse_key_id(status.key_id)[0] == root_id
            r = api.encrypt(SEED, uid="uid-from-apiserver")
            assert r.key_id == status.key_id
            got = api.decrypt(r.ciphertext, uid="u2", key_id=r.key_id, annotations=r.annotations)
            assert got == SEED
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=DEADLINE) as resp:
            metrics = resp.read().decode()
        assert 'kinko_kms_operations_total{method="Encrypt",outcome="ok"} 1.0' in metrics
        assert "kinko_kms_healthy 1.0" in metrics
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"listening on {endpoint} with key_id {status.key_id}" in out
    assert not (sock_dir / "kms.sock").exists()
    audit = (data_dir / AUDIT_FILE).read_text()
    assert '"who":"kms-plugin"' in audit
    assert "uid-from-apiserver" in audit
    assert token not in audit + out + err


def test_kinko_kms_serve_with_an_unknown_key_fails_fast(sock_dir: Path) -> None:
    data_dir = sock_dir / "data"
    _, token = prepare_data_dir(data_dir)
    result = subprocess.run(
        kinko(
            "kms",
            "serve",
            "--socket",
            f"unix://{sock_dir}/kms.sock",
            "--key",
            "no-such-key",
            "--data-dir",
            str(data_dir),
            "--instance",
            INSTANCE,
        ),
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        check=False,
        env={**os.environ, "KINKO_TOKEN": token},
    )
    assert result.returncode != 0
    assert "no-such-key" in result.stderr
    assert token not in result.stderr
    assert not (sock_dir / "kms.sock").exists()


def wait_for_port(port: int, proc: subprocess.Popen[str]) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            return True
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, f"a listener on port {port}")
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""


def stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def test_kinko_kms_serve_over_https_to_kinko_keys_serve(sock_dir: Path) -> None:
    """The remote backend end to end: two processes, HTTPS with kinko's generated CA."""
    data_dir = sock_dir / "data"
    root_id, token = prepare_data_dir(data_dir)
    port = free_port()
    keys = subprocess.Popen(
        kinko("keys", "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    plugin: subprocess.Popen[str] | None = None
    try:
        wait_for_port(port, keys)
        endpoint = f"unix://{sock_dir}/kms.sock"
        plugin = subprocess.Popen(
            kinko(
                "kms",
                "serve",
                "--socket",
                endpoint,
                "--key",
                "cluster-root",
                "--url",
                f"https://127.0.0.1:{port}",
                "--ca",
                str(data_dir / "tls" / "ca.crt"),
                "--instance",
                INSTANCE,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "KINKO_TOKEN": token},
        )
        wait_until(
            lambda: (
                plugin is not None
                and (plugin.poll() is not None or (sock_dir / "kms.sock").exists())
            ),
            "the plugin socket",
        )
        assert plugin.poll() is None, plugin.stderr.read() if plugin.stderr else ""
        with GrpcKmsV2Api(endpoint) as api:
            status = api.status()
            assert status.healthz == "ok"
            assert parse_key_id(status.key_id)[0] == root_id
            r = api.encrypt(SEED, uid="u")
            got = api.decrypt(r.ciphertext, uid="u", key_id=r.key_id, annotations=r.annotations)
            assert got == SEED
        code, out, err = stop(plugin)
        assert code == 0, err
        assert f"with key_id {status.key_id}" in out
        assert token not in out + err
    finally:
        if plugin is not None and plugin.poll() is None:
            stop(plugin)
        # Only the plugin's exit status is this test's business.
        stop(keys)
    assert '"who":"kms-plugin"' in (data_dir / AUDIT_FILE).read_text()


@pytest.mark.hsm
def test_kinko_kms_serve_with_root_keys_on_softhsm2(softhsm: SoftHsmToken, sock_dir: Path) -> None:
    data_dir = sock_dir / "data"
    with Pkcs11Hsm(softhsm.module, softhsm.label, softhsm.pin) as hsm:
        root_id, token = prepare_data_dir(data_dir, hsm)
    endpoint = f"unix://{sock_dir}/kms.sock"
    proc = subprocess.Popen(
        kinko(
            "kms",
            "serve",
            "--socket",
            endpoint,
            "--key",
            root_id,
            "--data-dir",
            str(data_dir),
            "--instance",
            INSTANCE,
            "--hsm",
            "pkcs11",
            "--pkcs11-module",
            softhsm.module,
            "--token-label",
            softhsm.label,
            "--pin-env",
            "KINKO_TEST_PIN",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KINKO_TOKEN": token, "KINKO_TEST_PIN": softhsm.pin},
    )
    try:
        wait_until(
            lambda: proc.poll() is not None or (sock_dir / "kms.sock").exists(),
            "the plugin socket",
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        with GrpcKmsV2Api(endpoint) as api:
            status = api.status()
            assert status.healthz == "ok"
            assert parse_key_id(status.key_id)[0] == root_id
            r = api.encrypt(SEED, uid="u")
            got = api.decrypt(r.ciphertext, uid="u", key_id=r.key_id, annotations=r.annotations)
            assert got == SEED
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert softhsm.pin not in err
    assert not (sock_dir / "kms.sock").exists()
