"""The HTTPS plumbing kinko's REST clients share: one base URL, one connection pool.

Job: :class:`HttpClient` checks the base URL, builds the ``httpx.Client`` (or borrows one a
caller passes in), closes what it built, and turns a failed connection into the client's
unavailable error; :func:`clean` bounds any text a remote sends before it goes into an error
message. The clients built on it (:class:`kinko.cluster.client.ClusterClient`,
:class:`kinko.keys.client.KeyProtectClient`) keep their own headers, paths, answers and
error table; nothing here reads a status code or a body.

Invariants:

- TLS is verified: against ``ca`` when given, else the system trust store. Plain ``http://``
  is refused for anything but a loopback host, so a bearer token never crosses a network in
  clear. Redirects are not followed and proxy variables are not read.
- Messages made here name the service, the base URL and the connection's failure (the
  exception type and the OS or TLS reason, cleaned and cut), never headers or bodies.
- An injected ``http`` client stays the caller's: :meth:`HttpClient.close` leaves it open.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Final, Self
from urllib.parse import urlsplit

import httpx

from kinko import errors

__all__ = ["DEFAULT_TIMEOUT", "MAX_MESSAGE", "HttpClient", "clean"]

DEFAULT_TIMEOUT: Final = 10.0
#: Longest remote message kept in an error (the rest is cut).
MAX_MESSAGE: Final = 300


def clean(value: object, limit: int = MAX_MESSAGE) -> str:
    """``value`` if it is a string, without control characters (no terminal escapes from a
    remote) and cut to ``limit`` characters; anything else is ``""``."""
    if not isinstance(value, str):
        return ""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in value)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


class HttpClient:
    """Base of a client of one HTTP(S) API at ``url`` (``https://host[:port]``).

    Subclasses name the API in messages (``_service``, e.g. ``"key service"``), what a plain
    http connection would expose (``_cargo``, e.g. ``"keys"``) and the error a failed
    connection raises (``_unavailable``).

    ``ca``: the PEM CA bundle that signed the server's certificate (default: the system trust
    store). ``timeout``: seconds per request. ``http``: an ``httpx.Client`` to send through
    instead of one made here; the caller keeps it, and ``ca`` and ``timeout`` do not apply.

    Raises InvalidArgument: a timeout that is not positive, a URL that is not http(s) or has
    a query or fragment, plain http to a host that is not loopback, an unreadable CA.
    """

    _service: ClassVar[str]
    _cargo: ClassVar[str]
    _unavailable: ClassVar[type[errors.UnavailableError]] = errors.UnavailableError

    def __init__(
        self,
        url: str,
        *,
        ca: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        if timeout <= 0:
            raise errors.InvalidArgument(f"expected a positive timeout, got {timeout}")
        self._base = self._check_url(url)
        self._owns_http = http is None
        if http is None:
            http = httpx.Client(
                verify=_tls_context(ca), timeout=timeout, follow_redirects=False, trust_env=False
            )
        self._http = http

    @property
    def url(self) -> str:
        """The base URL, as given without a trailing ``/``."""
        return self._base

    def close(self) -> None:
        """Closes the connection pool (not an injected ``http`` client)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None = None,
        json: Mapping[str, object] | None = None,
        note: str = "",
    ) -> httpx.Response:
        """Sends one request to the base URL + ``path`` and returns the answer, whatever its
        status. A connection that fails raises :meth:`_unreachable`'s error, which carries
        ``note`` (such as a correlation id)."""
        try:
            return self._http.request(
                method,
                self._base + path,
                params=params,
                json=None if json is None else dict(json),
                headers=dict(headers),
            )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, note) from exc

    def _unreachable(self, exc: httpx.HTTPError, note: str) -> errors.UnavailableError:
        """The error for a connection that failed (refused, TLS, timeout …)."""
        text = f"cannot reach the {self._service} at {self._base}: {_transport_reason(exc)}"
        return self._unavailable(text + (f" ({note})" if note else ""))

    def _check_url(self, url: str) -> str:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise errors.InvalidArgument(
                f"expected the {self._service} URL as https://host[:port], got {url!r}"
            )
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise errors.InvalidArgument(
                f"refusing plain http to {parts.hostname}: bearer tokens and {self._cargo} "
                "travel only over https, except to a loopback address"
            )
        if parts.query or parts.fragment:
            raise errors.InvalidArgument(
                f"expected a {self._service} URL without query or fragment"
            )
        return url.strip().rstrip("/")


def _transport_reason(exc: httpx.HTTPError) -> str:
    """Why a connection failed, in words (the exception type and the OS or TLS reason)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS verification failed ({clean(str(cause.verify_message), 120)})"
        cause = cause.__cause__ or cause.__context__
    text = clean(str(exc), 160)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_context(ca: Path | None) -> ssl.SSLContext:
    if ca is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise errors.InvalidArgument(
            f"cannot read the CA bundle {ca}: {type(exc).__name__}"
        ) from exc
