"""Real etcd-server processes for tests: one member, or a cluster of three, on loopback.

Each member listens on free 127.0.0.1 ports with its own data directory, is polled on its
``/health`` endpoint until it reports healthy (bounded deadline), and is stopped by its own
PID at teardown (SIGTERM, then SIGKILL). The binary is ``$KINKO_ETCD_BIN`` or
``/usr/bin/etcd``; without one the tests that need it are skipped — and ``.ci/run`` turns a
skipped ``etcd``-marked test into a failure.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_BINARY = "/usr/bin/etcd"
#: How long a member may take to become healthy. A fresh node needs about 0.4 s here.
START_DEADLINE_S = 20.0
STOP_DEADLINE_S = 10.0
_START_ATTEMPTS = 3


def etcd_binary() -> str | None:
    """The etcd binary to run, or None when there is none on this machine."""
    candidate = os.environ.get("KINKO_ETCD_BIN") or DEFAULT_BINARY
    if Path(candidate).is_file() and os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("etcd")


def require_etcd_binary() -> str:
    """The etcd binary, or skip the calling test."""
    binary = etcd_binary()
    if binary is None:
        pytest.skip(f"etcd-server is not installed ({DEFAULT_BINARY} missing)")
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throw-away CA, an etcd server certificate and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, valid for a day."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kinko test CA"))
        .issuer_name(_name("kinko test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usage: x509.ObjectIdentifier
    ) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        )
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key

    files = TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_pem, server_key = leaf("etcd", ExtendedKeyUsageOID.SERVER_AUTH)
    files.server_cert.write_bytes(server_pem)
    _write_key(files.server_key, server_key)
    client_pem, client_key = leaf("kinko", ExtendedKeyUsageOID.CLIENT_AUTH)
    files.client_cert.write_bytes(client_pem)
    _write_key(files.client_key, client_key)
    return files


@dataclass
class EtcdMember:
    """One running etcd process."""

    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    tls: TlsFiles | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop this member by its PID: SIGTERM, then SIGKILL after a deadline."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_DEADLINE_S)
        self.process = None


@dataclass
class EtcdCluster:
    """One or more members forming one cluster."""

    members: list[EtcdMember]

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def stop(self) -> None:
        for member in self.members:
            member.stop()


def _plan(base: Path, names: list[str], tls: TlsFiles | None) -> tuple[list[EtcdMember], str]:
    scheme = "https" if tls else "http"
    members = [
        EtcdMember(
            name=name,
            client_url=f"{scheme}://127.0.0.1:{free_port()}",
            peer_url=f"http://127.0.0.1:{free_port()}",
            data_dir=base / name / "data",
            log_path=base / name / "etcd.log",
            tls=tls,
        )
        for name in names
    ]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    return members, initial


def _launch(binary: str, member: EtcdMember, initial_cluster: str, token: str) -> None:
    member.data_dir.parent.mkdir(parents=True, exist_ok=True)
    if member.data_dir.exists():
        shutil.rmtree(member.data_dir)
    args = [
        binary,
        "--name",
        member.name,
        "--data-dir",
        str(member.data_dir),
        "--listen-client-urls",
        member.client_url,
        "--advertise-client-urls",
        member.client_url,
        "--listen-peer-urls",
        member.peer_url,
        "--initial-advertise-peer-urls",
        member.peer_url,
        "--initial-cluster",
        initial_cluster,
        "--initial-cluster-token",
        token,
        "--initial-cluster-state",
        "new",
        "--logger",
        "zap",
        "--log-level",
        "warn",
    ]
    if member.tls is not None:
        args += [
            "--cert-file",
            str(member.tls.server_cert),
            "--key-file",
            str(member.tls.server_key),
            "--trusted-ca-file",
            str(member.tls.ca),
            "--client-cert-auth",
        ]
    with member.log_path.open("wb") as log:
        member.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _healthy(member: EtcdMember) -> bool:
    host, _, port = member.client_url.split("://", 1)[1].rpartition(":")
    conn: http.client.HTTPConnection
    if member.tls is None:
        conn = http.client.HTTPConnection(host, int(port), timeout=1.0)
    else:
        context = ssl.create_default_context(cafile=str(member.tls.ca))
        context.load_cert_chain(str(member.tls.client_cert), str(member.tls.client_key))
        conn = http.client.HTTPSConnection(host, int(port), timeout=1.0, context=context)
    try:
        conn.request("GET", "/health")
        body = json.loads(conn.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        conn.close()
    return isinstance(body, dict) and body.get("health") == "true"


def _wait_healthy(members: list[EtcdMember]) -> bool:
    deadline = time.monotonic() + START_DEADLINE_S
    pending = list(members)
    while pending:
        if any(not m.alive for m in members):
            return False
        pending = [m for m in pending if not _healthy(m)]
        if not pending:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def start_cluster(base: Path, size: int = 1, *, tls: TlsFiles | None = None) -> EtcdCluster:
    """Start ``size`` members under ``base`` and wait until every one is healthy.

    With ``tls`` the client URLs are ``https://`` and require a client certificate signed by
    the same CA; peers always talk plain HTTP on loopback.

    A port taken between choosing and binding makes a member exit; the whole start is then
    retried with new ports (up to three attempts). Skips the test without an etcd binary;
    fails it if the cluster never becomes healthy.
    """
    binary = require_etcd_binary()
    last_logs = ""
    for attempt in range(_START_ATTEMPTS):
        token = f"kinko-test-{os.getpid()}-{attempt}"
        names = [f"m{i + 1}" for i in range(size)]
        members, initial = _plan(base / f"attempt{attempt}", names, tls)
        for member in members:
            _launch(binary, member, initial, token)
        cluster = EtcdCluster(members)
        if _wait_healthy(members):
            return cluster
        last_logs = "\n".join(f"--- {m.name}:\n{m.log_tail()}" for m in members)
        cluster.stop()
    pytest.fail(f"etcd did not become healthy within {START_DEADLINE_S}s:\n{last_logs}")


@contextlib.contextmanager
def running_cluster(
    base: Path, size: int = 1, *, tls: TlsFiles | None = None
) -> Iterator[EtcdCluster]:
    """:func:`start_cluster` as a context manager that always stops what it started."""
    cluster = start_cluster(base, size, tls=tls)
    try:
        yield cluster
    finally:
        cluster.stop()
