"""The process side of the HTTPS servers: listen addresses, loopback-only HTTP, the scheduler."""

from __future__ import annotations

import threading

import pytest
from fastapi import FastAPI

from kinko.api.server import ListenAddress, Periodic, parse_listen, serve
from kinko.errors import InvalidArgument, StoreUnavailable


@pytest.mark.parametrize(
    ("text", "host", "port", "loopback"),
    [
        ("127.0.0.1:8443", "127.0.0.1", 8443, True),
        ("127.1.2.3:1", "127.1.2.3", 1, True),
        ("localhost:0", "localhost", 0, True),
        ("[::1]:8443", "::1", 8443, True),
        ("0.0.0.0:8443", "0.0.0.0", 8443, False),
        ("[::]:8443", "::", 8443, False),
        ("10.0.0.5:443", "10.0.0.5", 443, False),
        ("kms.example.com:443", "kms.example.com", 443, False),
    ],
)
def test_listen_addresses(text: str, host: str, port: int, loopback: bool) -> None:
    address = parse_listen(text)
    assert address == ListenAddress(host, port)
    assert address.is_loopback is loopback


def test_ipv6_url_host_in_brackets() -> None:
    assert parse_listen("[::1]:1").url_host == "[::1]"
    assert parse_listen("127.0.0.1:1").url_host == "127.0.0.1"


@pytest.mark.parametrize("text", ["8443", "host:", ":8443", "::1:8443", "h:99999", "h:-1"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_listen(text)


def test_plain_http_is_refused_off_loopback() -> None:
    with pytest.raises(InvalidArgument, match="loopback"):
        serve(FastAPI(), ListenAddress("0.0.0.0", 0), tls=None)


def test_periodic_job_survives_failures_and_stops() -> None:
    calls: list[int] = []
    third = threading.Event()

    def job() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise StoreUnavailable("etcd did not answer")
        if len(calls) == 2:
            raise RuntimeError("a bug")
        third.set()

    periodic = Periodic(job, interval=0.01, name="test-periodic")
    periodic.start()
    assert third.wait(timeout=10)
    periodic.stop()
    stopped_at = len(calls)
    assert stopped_at >= 3
    assert not any(t.name == "test-periodic" for t in threading.enumerate())


def test_periodic_needs_a_positive_interval() -> None:
    with pytest.raises(InvalidArgument):
        Periodic(lambda: None, interval=0, name="never")
