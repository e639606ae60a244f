"""A data folder as ``kinko up`` leaves it, for the CLI tests that read one."""

from __future__ import annotations

from pathlib import Path

from kinko.cluster.endpoints import (
    Endpoints,
    kubeconfig_yaml,
    write_admin_token,
    write_endpoints,
    write_kubeconfig,
)

SERVER = "https://127.0.0.1:6443"
ADMIN = "kinko_" + "A" * 43  # the shape of a real token (read_admin_token checks it)
CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


def write_up_folder(data_dir: Path, *, socket: str) -> None:
    """The CA, ``admin.token`` (ADMIN), ``kubeconfig`` and ``endpoints.json`` (SERVER for
    both APIs, instance ``inst-1``, the KMS plugin at ``socket``) under ``data_dir``."""
    ca = data_dir / "tls" / "ca.crt"
    ca.parent.mkdir(parents=True)
    ca.write_bytes(CA_PEM)
    token_file = write_admin_token(data_dir, ADMIN)
    kubeconfig = write_kubeconfig(
        data_dir, kubeconfig_yaml(server=SERVER, ca_pem=CA_PEM, token=ADMIN)
    )
    write_endpoints(
        data_dir,
        Endpoints(
            cluster_api=SERVER,
            key_service=SERVER,
            instance="inst-1",
            kms_plugin_socket=socket,
            ca_file=ca,
            admin_token_file=token_file,
            kubeconfig=kubeconfig,
        ),
    )
