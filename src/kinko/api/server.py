"""Running an ASGI app over HTTPS with uvicorn: listen address, TLS, scheduler, shutdown.

Job: the process side of ``kinko keys serve``: parse ``HOST:PORT``, refuse plain HTTP on
anything but a loopback address, run uvicorn in the calling thread until SIGTERM or SIGINT
(in-flight requests may finish within the grace period), and run a periodic job (the key
service's rotation, expiry and purge scheduler) on a daemon thread that stops with the
server.

Invariants:

- Plain HTTP is only ever served on a loopback address (``127.0.0.0/8``, ``::1``,
  ``localhost``); anything else raises :class:`~kinko.errors.InvalidArgument` before a socket
  is opened.
- The access log names method, path and status; uvicorn never logs headers or bodies, so no
  bearer token, key material, plaintext or ciphertext reaches a log.
- SIGTERM and SIGINT stop the server gracefully and :func:`serve` returns (uvicorn's habit
  of re-raising the signal afterwards is switched off), so the caller's cleanup runs and the
  process exits 0.
- A failing periodic job is logged (its type and reason code) and retried on the next tick;
  it never stops the server.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from kinko.errors import InvalidArgument, KinkoError, UnavailableError

log = logging.getLogger("kinko.api.server")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where to listen: a host name or IP literal (without brackets) and a TCP port."""

    host: str
    port: int

    @property
    def url_host(self) -> str:
        """The host as it appears in a URL (IPv6 literals in brackets)."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def is_loopback(self) -> bool:
        """Whether the address is loopback only (``localhost``, ``127.0.0.0/8``, ``::1``)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_listen(text: str) -> ListenAddress:
    """``HOST:PORT`` or ``[IPv6]:PORT`` as a :class:`ListenAddress`.

    Raises InvalidArgument (no port, a port outside 0 to 65535, an empty host).
    """
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise InvalidArgument(f"expected HOST:PORT (e.g. 127.0.0.1:8443), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InvalidArgument(f"expected an IPv6 host in brackets ([::1]:8443), got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"expected a port from 0 to 65535, got {port}")
    return ListenAddress(host, port)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The server certificate chain and key (PEM files)."""

    cert: Path
    key: Path


class Periodic:
    """Calls ``job`` every ``interval`` seconds on a daemon thread until :meth:`stop`."""

    def __init__(self, job: Callable[[], object], *, interval: float, name: str) -> None:
        if interval <= 0:
            raise InvalidArgument(f"expected a positive interval, got {interval}")
        self._job = job
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Starts the thread; the first call happens at once."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Asks the thread to stop and waits up to ``timeout`` seconds for a running call."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._job()
            except KinkoError as exc:
                log.warning(
                    "scheduled job %s failed: %s (%s)",
                    self._thread.name,
                    type(exc).__name__,
                    exc.reason_code,
                )
            except Exception as exc:  # a bug: log it and keep the server up
                log.error("scheduled job %s crashed: %s", self._thread.name, type(exc).__name__)
            self._stop.wait(self._interval)


def _config(
    app: ASGIApp, listen: ListenAddress, tls: TlsConfig | None, grace: float, log_level: str
) -> uvicorn.Config:
    if tls is None and not listen.is_loopback:
        raise InvalidArgument(
            f"refusing plain HTTP on {listen.host}: --insecure-http is only allowed on a "
            "loopback address (127.0.0.1, ::1, localhost)"
        )
    return uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        ssl_certfile=str(tls.cert) if tls is not None else None,
        ssl_keyfile=str(tls.key) if tls is not None else None,
        log_level=log_level,
        access_log=True,
        proxy_headers=False,
        server_header=False,
        lifespan="off",
        timeout_graceful_shutdown=max(1, int(grace)),
    )


def serve(
    app: ASGIApp,
    listen: ListenAddress,
    *,
    tls: TlsConfig | None,
    grace: float = 10.0,
    on_started: Callable[[uvicorn.Server], None] | None = None,
    log_level: str = "info",
) -> None:
    """Serves ``app`` until SIGTERM or SIGINT, then lets requests finish for ``grace`` seconds.

    ``tls`` None means plain HTTP, allowed on loopback only. ``on_started`` is called once the
    socket listens (uvicorn's ``server.servers`` then holds the bound sockets, which gives the
    port when ``listen.port`` is 0). Raises InvalidArgument (plain HTTP off loopback),
    UnavailableError (the address cannot be bound: in use, or not this machine's).
    """
    server = _Server(_config(app, listen, tls, grace, log_level), on_started)
    try:
        server.run()
    except SystemExit as exc:
        # uvicorn exits the process when it cannot bind (its own log line says why).
        if server.started:
            raise
        raise UnavailableError(
            f"cannot listen on {listen.url_host}:{listen.port} (see the error above)"
        ) from exc


class BackgroundServer:
    """``app`` served by uvicorn on a thread of this process, for tests and benchmarks.

    A context manager: entering starts the server and waits until it listens (``port`` is
    then the bound port); leaving asks it to stop, lets requests finish and joins the thread.
    Raises InvalidArgument (plain HTTP off loopback), UnavailableError (it did not start
    within ``start_timeout`` seconds).
    """

    def __init__(
        self,
        app: ASGIApp,
        listen: ListenAddress,
        *,
        tls: TlsConfig | None,
        log_level: str = "warning",
        start_timeout: float = 10.0,
    ) -> None:
        self._listening = threading.Event()
        self._server = _Server(
            _config(app, listen, tls, 5.0, log_level), lambda _: self._listening.set()
        )
        self._thread = threading.Thread(target=self._server.run, name="kinko-http", daemon=True)
        self._start_timeout = start_timeout
        self.port = 0

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        if not self._listening.wait(self._start_timeout) or not self._thread.is_alive():
            self._server.should_exit = True
            raise UnavailableError("the HTTP server did not start")
        self.port = bound_port(self._server)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join()


class _Server(uvicorn.Server):
    """uvicorn's server with a hook once it listens."""

    def __init__(
        self, config: uvicorn.Config, on_started: Callable[[uvicorn.Server], None] | None
    ) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started(self)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the SIGTERM or SIGINT it stopped on, which would kill the
            # process before the caller closes its store, HSM session and audit log. The
            # signal has been handled (a graceful stop), so it is not raised again.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()


def bound_port(server: uvicorn.Server) -> int:
    """The TCP port the running server listens on (the real one when asked for port 0)."""
    for srv in server.servers:
        for sock in srv.sockets:
            port = sock.getsockname()[1]
            if isinstance(port, int):
                return port
    raise InvalidArgument("the server is not listening")
