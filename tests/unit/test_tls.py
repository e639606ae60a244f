"""The local CA and server certificate kinko creates for its HTTPS servers."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

from cryptography import x509

from kinko.api.tls import ensure_server_tls

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def _sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n) for n in san.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def test_first_start_creates_a_ca_and_a_server_certificate_with_private_keys_0600(
    tmp_path: Path,
) -> None:
    files = ensure_server_tls(tmp_path, now=NOW)
    for key in (tmp_path / "tls" / "ca.key", files.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert _sans(files.cert) == {"localhost", "127.0.0.1", "::1"}
    # The server certificate verifies against the CA for its names (real TLS stack).
    ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    ctx.load_verify_locations(cafile=str(files.ca_cert))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(files.cert), str(files.key))


def test_a_second_start_reuses_everything(tmp_path: Path) -> None:
    first = ensure_server_tls(tmp_path, now=NOW)
    before = {p: p.read_bytes() for p in (first.ca_cert, first.cert, first.key)}
    second = ensure_server_tls(tmp_path, now=NOW + dt.timedelta(days=1))
    assert {p: p.read_bytes() for p in (second.ca_cert, second.cert, second.key)} == before


def test_a_new_name_or_near_expiry_reissues_under_the_same_ca(tmp_path: Path) -> None:
    first = ensure_server_tls(tmp_path, now=NOW)
    ca = first.ca_cert.read_bytes()
    cert = first.cert.read_bytes()
    again = ensure_server_tls(tmp_path, names=("kinko.internal",), now=NOW)
    assert "kinko.internal" in _sans(again.cert)
    assert again.ca_cert.read_bytes() == ca
    assert again.cert.read_bytes() != cert
    renewed = ensure_server_tls(
        tmp_path, names=("kinko.internal",), now=NOW + dt.timedelta(days=340)
    )
    issued = x509.load_pem_x509_certificate(renewed.cert.read_bytes())
    assert issued.not_valid_after_utc > NOW + dt.timedelta(days=600)
