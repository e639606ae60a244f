"""The files ``kinko up`` writes for programs: endpoints.json, admin.token, kubeconfig."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
import yaml

from kinko.cluster.endpoints import (
    ADMIN_TOKEN_FILE,
    ENDPOINTS_FILE,
    KUBECONFIG_FILE,
    Endpoints,
    kubeconfig_yaml,
    read_admin_token,
    read_endpoints,
    read_token_file,
    write_admin_token,
    write_endpoints,
    write_kubeconfig,
    write_private_file,
)
from kinko.errors import InvalidArgument

CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
TOKEN = "kinko_admin_0123456789"


def _endpoints(base: Path, root_key: str | None = "rk-1") -> Endpoints:
    return Endpoints(
        cluster_api="https://127.0.0.1:6443",
        key_service="https://127.0.0.1:6443",
        instance="inst-1",
        kms_plugin_socket=f"unix://{base}/kms.sock",
        ca_file=base / "tls" / "ca.crt",
        admin_token_file=base / ADMIN_TOKEN_FILE,
        kubeconfig=base / KUBECONFIG_FILE,
        root_key=root_key,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("root_key", ["rk-1", None])
def test_endpoints_round_trip(tmp_path: Path, root_key: str | None) -> None:
    written = _endpoints(tmp_path, root_key)
    path = write_endpoints(tmp_path, written)
    assert path == tmp_path / ENDPOINTS_FILE
    assert read_endpoints(tmp_path) == written


def test_endpoints_json_keys_are_camel_case(tmp_path: Path) -> None:
    write_endpoints(tmp_path, _endpoints(tmp_path))
    doc = json.loads((tmp_path / ENDPOINTS_FILE).read_text())
    assert doc == {
        "clusterApi": "https://127.0.0.1:6443",
        "keyService": "https://127.0.0.1:6443",
        "instance": "inst-1",
        "kmsPluginSocket": f"unix://{tmp_path}/kms.sock",
        "caFile": str(tmp_path / "tls" / "ca.crt"),
        "adminTokenFile": str(tmp_path / ADMIN_TOKEN_FILE),
        "kubeconfig": str(tmp_path / KUBECONFIG_FILE),
        "rootKey": "rk-1",
    }


def test_relative_paths_are_taken_from_the_data_dir(tmp_path: Path) -> None:
    doc = {
        "clusterApi": "https://127.0.0.1:6443",
        "keyService": "https://127.0.0.1:6443",
        "instance": "inst-1",
        "kmsPluginSocket": "unix:///run/kms.sock",
        "caFile": "tls/ca.crt",
        "adminTokenFile": ADMIN_TOKEN_FILE,
        "kubeconfig": KUBECONFIG_FILE,
    }
    write_private_file(tmp_path / ENDPOINTS_FILE, json.dumps(doc).encode())
    found = read_endpoints(tmp_path)
    assert found.ca_file == tmp_path / "tls" / "ca.crt"
    assert found.admin_token_file == tmp_path / ADMIN_TOKEN_FILE
    assert found.root_key is None


def test_every_file_is_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "new" / "dir"
    paths = [
        write_endpoints(data, _endpoints(data)),
        write_admin_token(data, TOKEN),
        write_kubeconfig(data, "apiVersion: v1\n"),
    ]
    for path in paths:
        assert _mode(path) == 0o600, path
    assert _mode(data) == 0o700
    assert sorted(p.name for p in data.iterdir()) == sorted(
        [ENDPOINTS_FILE, ADMIN_TOKEN_FILE, KUBECONFIG_FILE]
    )


def test_rewrite_replaces_a_wider_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("old")
    path.chmod(0o644)
    write_private_file(path, b"new")
    assert path.read_bytes() == b"new"
    assert _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_write_into_a_missing_folder_is_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot write"):
        write_private_file(tmp_path / "absent" / "f", b"x")


def test_missing_endpoints_says_whether_kinko_up_runs(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"no endpoints\.json in .*: is kinko up running"):
        read_endpoints(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"clusterApi": "https://x"}', "expected keyService"),
        (
            json.dumps(
                {
                    "clusterApi": "https://x",
                    "keyService": "https://x",
                    "instance": 7,
                }
            ),
            "expected instance",
        ),
    ],
)
def test_malformed_endpoints_is_invalid_argument(tmp_path: Path, content: str, match: str) -> None:
    write_private_file(tmp_path / ENDPOINTS_FILE, content.encode())
    with pytest.raises(InvalidArgument, match=match):
        read_endpoints(tmp_path)


def test_root_key_of_the_wrong_type_is_invalid_argument(tmp_path: Path) -> None:
    write_endpoints(tmp_path, _endpoints(tmp_path))
    doc = json.loads((tmp_path / ENDPOINTS_FILE).read_text())
    doc["rootKey"] = 5
    (tmp_path / ENDPOINTS_FILE).write_text(json.dumps(doc))
    with pytest.raises(InvalidArgument, match="rootKey"):
        read_endpoints(tmp_path)


def test_admin_token_round_trip(tmp_path: Path) -> None:
    path = write_admin_token(tmp_path, TOKEN)
    assert path.read_text() == TOKEN + "\n"
    assert read_token_file(path) == TOKEN


@pytest.mark.parametrize("token", ["", "  ", "a\nb"])
def test_admin_token_must_be_one_line(tmp_path: Path, token: str) -> None:
    with pytest.raises(InvalidArgument, match="one line"):
        write_admin_token(tmp_path, token)


def test_token_file_errors_name_the_file_not_the_token(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no token file at"):
        read_token_file(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(InvalidArgument, match="is empty"):
        read_token_file(empty)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        read_token_file(binary)


def test_kubeconfig_structure(tmp_path: Path) -> None:
    text = kubeconfig_yaml(server="https://127.0.0.1:6443", ca_pem=CA_PEM, token=TOKEN)
    doc = yaml.safe_load(text)
    assert doc == {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": "kinko",
                "cluster": {
                    "server": "https://127.0.0.1:6443",
                    "certificate-authority-data": base64.b64encode(CA_PEM).decode(),
                },
            }
        ],
        "users": [{"name": "kinko-admin", "user": {"token": TOKEN}}],
        "contexts": [
            {
                "name": "kinko-admin@kinko",
                "context": {"cluster": "kinko", "user": "kinko-admin", "namespace": "default"},
            }
        ],
        "current-context": "kinko-admin@kinko",
    }
    path = write_kubeconfig(tmp_path, text)
    assert path.read_text() == text
    assert _mode(path) == 0o600


def test_kubeconfig_names_and_namespace(tmp_path: Path) -> None:
    doc = yaml.safe_load(
        kubeconfig_yaml(
            server="https://k:1",
            ca_pem=CA_PEM,
            token=TOKEN,
            cluster="c",
            user="u",
            namespace="apps",
        )
    )
    assert doc["current-context"] == "u@c"
    assert doc["contexts"][0]["context"] == {"cluster": "c", "user": "u", "namespace": "apps"}


@pytest.mark.parametrize(
    ("server", "ca", "token"),
    [("", CA_PEM, TOKEN), ("https://k:1", b"", TOKEN), ("https://k:1", CA_PEM, " ")],
)
def test_kubeconfig_needs_server_ca_and_token(server: str, ca: bytes, token: str) -> None:
    with pytest.raises(InvalidArgument):
        kubeconfig_yaml(server=server, ca_pem=ca, token=token)


def test_kubeconfig_loads_in_the_kubernetes_client(tmp_path: Path) -> None:
    kubernetes = pytest.importorskip("kubernetes", reason="the kubernetes client is optional")
    path = write_kubeconfig(
        tmp_path, kubeconfig_yaml(server="https://127.0.0.1:6443", ca_pem=CA_PEM, token=TOKEN)
    )
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(path), client_configuration=configuration)
    assert configuration.host == "https://127.0.0.1:6443"
    # The key is "authorization" in older clients, "BearerToken" in newer ones.
    assert list(configuration.api_key.values()) == [f"Bearer {TOKEN}"]
    assert Path(configuration.ssl_ca_cert).read_bytes() == CA_PEM


@pytest.mark.parametrize("field", ["adminTokenFile", "caFile", "kubeconfig"])
@pytest.mark.parametrize("elsewhere", ["/etc/hostname", "../outside", "sub/../../outside"])
def test_a_planted_endpoints_file_cannot_name_files_outside_its_folder(
    tmp_path: Path, field: str, elsewhere: str
) -> None:
    folder = tmp_path / "data"
    write_endpoints(folder, _endpoints(folder))
    doc = json.loads((folder / ENDPOINTS_FILE).read_text())
    doc[field] = elsewhere
    write_private_file(folder / ENDPOINTS_FILE, json.dumps(doc).encode())
    with pytest.raises(InvalidArgument, match=f"{field} must name a file inside"):
        read_endpoints(folder)


def test_the_admin_token_file_must_hold_a_kinko_token(tmp_path: Path) -> None:
    token = "kinko_" + "x" * 43
    endpoints = _endpoints(tmp_path)
    write_admin_token(tmp_path, token)
    assert read_admin_token(endpoints) == token
    endpoints.admin_token_file.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(InvalidArgument, match="holds no kinko token") as info:
        read_admin_token(endpoints)
    assert "OPENSSH" not in str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_an_endpoints_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    # What a checkout or a copy leaves: kinko up writes the file 0600.
    write_endpoints(tmp_path, _endpoints(tmp_path))
    (tmp_path / ENDPOINTS_FILE).chmod(mode)
    with pytest.raises(InvalidArgument, match="expected a file of this user with mode 0600"):
        read_endpoints(tmp_path)
