"""``kinko up`` as a real process, and :class:`kinko.up.Kinko` on a thread: one HTTPS port with
both APIs, a real KMS v2 socket between the cluster and its plugin, and real stores and HSMs.

Checks what an operator sees: the printed URL, token and next commands; a Secret written over
HTTPS lands in the store as a KMS v2 value that does not contain the plaintext; the key
service lists the cluster's root key under the admin token; a Viewer token from ``kinko token
create`` reads Secrets without data; SIGTERM exits 0 and removes the socket and
endpoints.json; a second start reuses the token, the root key and the data.
"""

from __future__ import annotations

import base64
import json
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from kinko.api.server import ListenAddress
from kinko.cluster.client import ClusterClient
from kinko.cluster.endpoints import Endpoints, read_endpoints
from kinko.errors import InvalidArgument, UnavailableError
from kinko.hsm.memory import MemoryHsm
from kinko.store.etcd import EtcdClient
from kinko.store.sqlite import SqliteStore
from kinko.up import Kinko, UpOptions
from tests.integration.hsm_fixture import SoftHsmToken

_SCRIPT = Path(sys.executable).with_name("kinko")
KINKO = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "kinko"]
KMS_PREFIX = b"k8s:enc:kms:v2:kinko:"
SECRET_KEY = b"/registry/secrets/default/db"
PLAINTEXT = "s3cret-value-4711"
START_DEADLINE = 90.0


@dataclass
class Up:
    process: subprocess.Popen[str]
    endpoints: Endpoints
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        """SIGTERM, then the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@contextmanager
def running_up(data_dir: Path, *extra: str) -> Iterator[Up]:
    """``kinko up`` on a free loopback port, ready once its endpoints.json exists."""
    process = subprocess.Popen(
        [*KINKO, "up", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    done = queue.Queue[None]()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
        done.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        endpoints = _wait_for_endpoints(data_dir, process, lines)
        yield Up(process, endpoints, lines)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=10)


def _wait_for_endpoints(
    data_dir: Path, process: subprocess.Popen[str], lines: list[str]
) -> Endpoints:
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if (data_dir / "endpoints.json").exists():
            endpoints = read_endpoints(data_dir)
            # The banner follows the file; wait for it too, so tests can read it.
            if any("Stop with Ctrl-C" in line for line in lines):
                return endpoints
        if process.poll() is not None:
            time.sleep(0.5)  # let the reader collect the last lines
            pytest.fail(f"kinko up exited with {process.returncode}:\n{''.join(lines)}")
        time.sleep(0.1)
    process.kill()
    pytest.fail("kinko up did not write endpoints.json in time:\n" + "".join(lines))


def _client(endpoints: Endpoints, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=endpoints.cluster_api,
        verify=ssl.create_default_context(cafile=endpoints.ca_file),
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    )


def _secret(name: str, value: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"password": base64.b64encode(value.encode()).decode()},
    }


def _create_and_read_secret(endpoints: Endpoints, token: str) -> None:
    with _client(endpoints, token) as http:
        created = http.post("/api/v1/namespaces/default/secrets", json=_secret("db", PLAINTEXT))
        assert created.status_code == 201, created.text
        read = http.get("/api/v1/namespaces/default/secrets/db")
        assert read.status_code == 200, read.text
        data = read.json()["data"]["password"]
        assert base64.b64decode(data).decode() == PLAINTEXT


def _assert_sealed(value: bytes | None) -> None:
    assert value is not None
    assert value.startswith(KMS_PREFIX)
    assert PLAINTEXT.encode() not in value
    assert base64.b64encode(PLAINTEXT.encode()) not in value


def _root_keys(endpoints: Endpoints, token: str) -> list[dict[str, object]]:
    with _client(endpoints, token) as http:
        answer = http.get("/api/v2/keys", headers={"bluemix-instance": endpoints.instance})
    assert answer.status_code == 200, answer.text
    keys: list[dict[str, object]] = answer.json()["resources"]
    return keys


def _token(data_dir: Path, *args: str) -> str:
    done = subprocess.run(
        [*KINKO, "token", "create", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# --- the process ---------------------------------------------------------------------------


def test_up_serves_both_apis_encrypts_at_rest_and_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "kinko"
    with running_up(data_dir) as up:
        e = up.endpoints
        token = (data_dir / "admin.token").read_text().strip()
        assert e.cluster_api == e.key_service
        assert e.cluster_api.startswith("https://127.0.0.1:")
        assert not e.cluster_api.endswith(":0")
        assert e.kms_plugin_socket == f"unix://{data_dir / 'kms.sock'}"
        assert (data_dir / "kms.sock").is_socket()
        assert e.ca_file == data_dir / "tls" / "ca.crt"
        # What it prints: where, the token, the files, three commands; and the soft keystore
        # called what it is.
        assert e.cluster_api in up.output
        assert token in up.output
        assert str(e.kubeconfig) in up.output
        assert str(e.ca_file) in up.output
        assert f"kinko secret list --data-dir {data_dir}" in up.output
        assert f"kubectl --kubeconfig {data_dir}/kubeconfig get secrets" in up.output
        assert "NOT HSM-grade" in up.output
        assert (data_dir.stat().st_mode & 0o777) == 0o700
        assert (data_dir / ".gitignore").read_text().splitlines()[-1] == "*"

        with httpx.Client(verify=ssl.create_default_context(cafile=e.ca_file)) as plain:
            assert plain.get(f"{e.cluster_api}/healthz").text == "ok"
            openapi = plain.get(f"{e.key_service}/api/v2/openapi.json").json()
            assert "Key Protect" in openapi["info"]["title"]

        _create_and_read_secret(e, token)
        with SqliteStore(data_dir / "kinko.db") as store:
            entry = store.get(SECRET_KEY)
            _assert_sealed(None if entry is None else entry.value)

        # The cluster's metrics see the seal through the plugin and the config in force.
        with _client(e, token) as http:
            metrics = http.get("/metrics").text
        assert 'transformer_prefix="k8s:enc:kms:v2:kinko:"' in metrics
        assert "apiserver_envelope_encryption_key_id_hash_total{" in metrics
        assert "kinko_encryption_config_info{" in metrics

        (root_key,) = _root_keys(e, token)
        assert root_key["id"] == e.root_key
        assert root_key["aliases"] == ["kinko-cluster"]
        assert root_key["extractable"] is False

        viewer = _token(data_dir, "--cluster-role", "Viewer", "--namespace", "default")
        with _client(e, viewer) as http:
            shown = http.get("/api/v1/namespaces/default/secrets/db")
            assert shown.status_code == 200, shown.text
            assert "data" not in shown.json()
            refused = http.post("/api/v1/namespaces/default/secrets", json=_secret("x", "y"))
            assert refused.status_code == 403

        # The kubeconfig names the same server, CA and token.
        kubeconfig = yaml.safe_load(e.kubeconfig.read_text())
        cluster = kubeconfig["clusters"][0]["cluster"]
        assert cluster["server"] == e.cluster_api
        assert base64.b64decode(cluster["certificate-authority-data"]) == e.ca_file.read_bytes()
        assert kubeconfig["users"][0]["user"]["token"] == token

        assert up.stop() == 0
        assert not (data_dir / "kms.sock").exists()
        assert not (data_dir / "endpoints.json").exists()
        assert "kinko up: stopped" in up.output
        assert PLAINTEXT not in up.output

    state = (data_dir / "up.json").read_bytes()
    with running_up(data_dir) as again:
        assert (data_dir / "admin.token").read_text().strip() == token
        assert again.endpoints.root_key == e.root_key
        assert again.endpoints.instance == e.instance
        with _client(again.endpoints, token) as http:
            read = http.get("/api/v1/namespaces/default/secrets/db")
            assert read.status_code == 200, read.text
            assert base64.b64decode(read.json()["data"]["password"]).decode() == PLAINTEXT
        assert [k["id"] for k in _root_keys(again.endpoints, token)] == [e.root_key]
        assert again.stop() == 0
    assert (data_dir / "up.json").read_bytes() == state


def test_up_without_encryption_then_kms_enabled_over_the_api(tmp_path: Path) -> None:
    data_dir = tmp_path / "kinko"
    with running_up(data_dir, "--no-encryption") as up:
        token = (data_dir / "admin.token").read_text().strip()
        assert "Secrets are stored as plaintext until" in up.output
        _create_and_read_secret(up.endpoints, token)
        with SqliteStore(data_dir / "kinko.db") as store:
            entry = store.get(SECRET_KEY)
        assert entry is not None
        assert entry.value.startswith(b"{")

        with _client(up.endpoints, token) as http:
            enabled = http.post("/apis/kinko.io/v1/kms/enable", json={"key": "kinko-cluster"})
            assert enabled.status_code == 202, enabled.text
            deadline = time.monotonic() + START_DEADLINE
            while http.get("/apis/kinko.io/v1/status").json()["phase"] != "Ready":
                assert time.monotonic() < deadline, "not Ready in time"
                time.sleep(0.2)
            assert http.get("/apis/kinko.io/v1/status").json()["masterStatus"].startswith("Ready (")
        with SqliteStore(data_dir / "kinko.db") as store:
            entry = store.get(SECRET_KEY)
            _assert_sealed(None if entry is None else entry.value)
        assert up.stop() == 0


@pytest.mark.etcd
def test_up_keeps_the_store_in_etcd(tmp_path: Path, etcd_endpoints: list[str]) -> None:
    data_dir = tmp_path / "kinko"
    with running_up(data_dir, "--etcd-endpoints", ",".join(etcd_endpoints)) as up:
        token = (data_dir / "admin.token").read_text().strip()
        _create_and_read_secret(up.endpoints, token)
        assert not (data_dir / "kinko.db").exists()
        with EtcdClient(etcd_endpoints) as etcd:
            stored = etcd.get(SECRET_KEY)
        _assert_sealed(None if stored is None else stored.value)
        assert [k["id"] for k in _root_keys(up.endpoints, token)] == [up.endpoints.root_key]
        assert up.stop() == 0


@pytest.mark.hsm
def test_up_keeps_root_keys_in_a_pkcs11_token(
    tmp_path: Path, softhsm: SoftHsmToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "kinko"
    monkeypatch.setenv("KINKO_TEST_PIN", softhsm.pin)
    hsm = ("--hsm", "pkcs11", "--pkcs11-module", softhsm.module, "--token-label", softhsm.label)
    with running_up(data_dir, *hsm, "--pin-env", "KINKO_TEST_PIN") as up:
        assert f"PKCS#11 token '{softhsm.label}'" in up.output
        assert "soft keystore" not in up.output
        assert not (data_dir / "keystore").exists()
        token = (data_dir / "admin.token").read_text().strip()
        _create_and_read_secret(up.endpoints, token)
        with SqliteStore(data_dir / "kinko.db") as store:
            entry = store.get(SECRET_KEY)
            _assert_sealed(None if entry is None else entry.value)
        assert up.stop() == 0


def test_up_refuses_pkcs11_options_without_hsm_pkcs11(tmp_path: Path) -> None:
    done = subprocess.run(
        [*KINKO, "up", "--data-dir", str(tmp_path / "d"), "--token-label", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 4
    assert "PKCS#11 options need --hsm pkcs11" in done.stderr


# --- in-process ----------------------------------------------------------------------------


def _options(
    data_dir: Path, hsm: MemoryHsm | None = None, listen: ListenAddress | None = None
) -> UpOptions:
    return UpOptions(
        data_dir=data_dir,
        listen=ListenAddress("127.0.0.1", 0) if listen is None else listen,
        hsm=MemoryHsm() if hsm is None else hsm,
        config_poll_interval=0.2,
    )


def test_kinko_runs_on_a_thread_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "kinko"
    hsm = MemoryHsm()
    with Kinko(_options(data_dir, hsm=hsm)) as kinko:
        assert kinko.serving
        assert kinko.port > 0
        assert kinko.url == f"https://127.0.0.1:{kinko.port}"
        assert read_endpoints(data_dir) == kinko.endpoints
        with ClusterClient(kinko.url, token=kinko.admin_token, ca=kinko.endpoints.ca_file) as c:
            c.create(
                "configmaps",
                "default",
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "cm"},
                    "data": {"a": "b"},
                },
            )
        got = kinko.cluster_service.get("configmaps", "default", "cm")
        assert got.metadata.name == "cm"
        value = kinko.cluster_service.objects.read("configmaps", b"/registry/configmaps/default/cm")
        assert value.key_id is not None
        assert value.key_id.startswith(f"kinko-rk-{kinko.root_key}-v")
        assert not value.stale
        with pytest.raises(UnavailableError, match="another kinko up"):
            Kinko(_options(data_dir, hsm=hsm)).start()
        token = kinko.admin_token
    assert not kinko.serving
    assert not (data_dir / "kms.sock").exists()
    assert not (data_dir / "endpoints.json").exists()
    with pytest.raises(InvalidArgument, match="not running"):
        _ = kinko.endpoints

    with Kinko(_options(data_dir, hsm=hsm)) as again:
        assert again.admin_token == token
        assert again.cluster_service.get("configmaps", "default", "cm").metadata.name == "cm"


def test_a_taken_port_fails_at_once_and_leaves_nothing_running(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(UnavailableError, match=f"cannot listen on 127.0.0.1:{port}"):
            Kinko(_options(tmp_path / "kinko", listen=ListenAddress("127.0.0.1", port))).start()
        assert time.monotonic() - started < 10
    assert not (tmp_path / "kinko" / "kms.sock").exists()
    # The lock went with the failed start: the folder can be used at once.
    with Kinko(_options(tmp_path / "kinko")) as kinko:
        assert json.loads((tmp_path / "kinko" / "endpoints.json").read_text())["clusterApi"] == (
            kinko.url
        )
