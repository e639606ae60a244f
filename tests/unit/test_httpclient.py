"""HttpClient, the plumbing under kinko's REST clients, through a minimal client of its own.

The clients built on it (ClusterClient, KeyProtectClient) test their messages and error
tables in their own files; here: the URL rule, who closes the pool, how a failed connection
is worded, and how remote text is bounded.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from kinko import errors
from kinko.httpclient import MAX_MESSAGE, HttpClient, clean


class _Demo(HttpClient):
    _service = "demo API"
    _cargo = "demo values"
    _unavailable = errors.KeyServiceUnavailable


def _answering(status: int) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(status)))


def _failing(exc: Exception) -> httpx.Client:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.Client(transport=httpx.MockTransport(fail))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://kms.example.com:8443/", "https://kms.example.com:8443"),
        ("  https://10.0.0.1  ", "https://10.0.0.1"),
        ("http://localhost:8080", "http://localhost:8080"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_accepted_urls_lose_their_trailing_slash(url: str, expected: str) -> None:
    with _Demo(url) as client:
        assert client.url == expected


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://127.0.0.1", r"expected the demo API URL as https://host\[:port\]"),
        ("127.0.0.1:8443", r"expected the demo API URL as https://host\[:port\]"),
        (
            "http://10.0.0.1:8080",
            "refusing plain http to 10.0.0.1: bearer tokens and demo values travel only over",
        ),
        ("http://localhost.example.com", "refusing plain http"),
        ("https://127.0.0.1/#top", "expected a demo API URL without query or fragment"),
    ],
)
def test_refused_urls(url: str, match: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=match):
        _Demo(url)


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_a_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(errors.InvalidArgument, match="expected a positive timeout"):
        _Demo("https://127.0.0.1", timeout=timeout)


def test_unreadable_ca_is_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgument, match="cannot read the CA bundle"):
        _Demo("https://127.0.0.1", ca=tmp_path / "absent.crt")


def test_an_injected_client_stays_open_and_an_own_one_is_closed() -> None:
    injected = _answering(204)
    with _Demo("https://127.0.0.1", http=injected) as client:
        assert client._request("GET", "/x", headers={}).status_code == 204
    assert not injected.is_closed
    injected.close()

    own = _Demo("https://127.0.0.1")
    own.close()
    assert own._http.is_closed


def test_any_status_comes_back_as_the_answer() -> None:
    with _Demo("https://127.0.0.1", http=_answering(503)) as client:
        assert client._request("GET", "/x", headers={}).status_code == 503


def test_a_failed_connection_raises_the_clients_error_with_its_note() -> None:
    client = _Demo("https://127.0.0.1:9", http=_failing(httpx.ConnectError("refused\x1b[31m")))
    with pytest.raises(errors.KeyServiceUnavailable) as caught:
        client._request("GET", "/x", headers={}, note="correlation-id c1")
    assert str(caught.value) == (
        "cannot reach the demo API at https://127.0.0.1:9: ConnectError: refused [31m "
        "(correlation-id c1)"
    )
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_a_failed_tls_verification_is_named() -> None:
    verify = ssl.SSLCertVerificationError("certificate verify failed")
    verify.verify_message = "self-signed certificate"
    failure = httpx.ConnectError("handshake failed")
    failure.__cause__ = verify
    with pytest.raises(errors.KeyServiceUnavailable) as caught:
        _Demo("https://127.0.0.1", http=_failing(failure))._request("GET", "/", headers={})
    assert str(caught.value) == (
        "cannot reach the demo API at https://127.0.0.1: "
        "TLS verification failed (self-signed certificate)"
    )


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        ("plain", MAX_MESSAGE, "plain"),
        ("bell\x07 and\nbreak", MAX_MESSAGE, "bell  and break"),
        ("x" * 10, 10, "x" * 10),
        ("x" * 11, 10, "x" * 9 + "…"),
        (None, MAX_MESSAGE, ""),
        (42, MAX_MESSAGE, ""),
    ],
)
def test_clean_removes_control_characters_and_cuts(
    value: object, limit: int, expected: str
) -> None:
    assert clean(value, limit) == expected
