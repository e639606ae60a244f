"""Who is calling: the bearer token and Key Protect's request headers, read once per request.

Job: :class:`Authenticator` turns ``authorization: Bearer <token>`` into a
:class:`~kinko.keys.auth.Principal` through :meth:`KeyService.authenticate
<kinko.keys.service.KeyService.authenticate>`, remembering each success for a short time
(``ttl`` seconds, default 1) so that a client making many calls costs one store read per
second instead of one per call, and the event loop never waits on the store: a miss runs on
the thread pool. :func:`read_headers` parses the headers the routes share, from a mapping, and
:func:`scan_headers` finds them in an ASGI scope's raw header list in one pass, as wrap, unwrap
and rewrap do (the same values: the first of a repeated header, decoded as Latin-1).

Invariants:

- The cache is keyed by the token's SHA-256, never the token; it holds at most ``size``
  principals and only successes: a missing, malformed, unknown or revoked token always goes
  to the key service (which audits the refusal). A revoked token stops working within
  ``ttl`` seconds; ``ttl=0`` turns the cache off.
- The cache is touched only on the event loop's thread, so it needs no lock.
- Authorization (role and instance checks) is not cached: every key service call makes it.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Final, NamedTuple

from starlette.concurrency import run_in_threadpool

from kinko.api import kp_wire as wire
from kinko.errors import InvalidArgument
from kinko.keys.auth import Principal
from kinko.keys.service import KeyService

DEFAULT_TTL: Final = 1.0
DEFAULT_SIZE: Final = 1024


class Headers(NamedTuple):
    """Key Protect's request headers, parsed (``instance`` None when missing).

    Named tuples, this and :class:`RawHeaders`: one of each is built for every request, and
    a frozen dataclass costs about three times as much to build.
    """

    token: str | None
    instance: str | None
    key_ring: str | None
    correlation_id: str | None
    representation: bool

    def __repr__(self) -> str:
        # The bearer token is a secret: its repr says only whether there is one.
        return (
            f"Headers(token={_shown(self.token)}, instance={self.instance!r}, "
            f"key_ring={self.key_ring!r}, correlation_id={self.correlation_id!r}, "
            f"representation={self.representation!r})"
        )


def read_headers(headers: Mapping[str, str]) -> Headers:
    """Parses ``authorization``, ``bluemix-instance``, ``x-kms-key-ring``, ``correlation-id``
    and ``prefer`` (header names case-insensitive, as ``headers`` provides them).

    Raises FieldError (``INVALID_HEADER_ERR``: a ``prefer`` other than minimal or
    representation).
    """
    return parse_headers(
        RawHeaders(
            authorization=headers.get("authorization"),
            instance=headers.get("bluemix-instance"),
            key_ring=headers.get("x-kms-key-ring"),
            correlation_id=headers.get("correlation-id"),
            prefer=headers.get("prefer"),
            content_type=headers.get("content-type"),
        )
    )


class RawHeaders(NamedTuple):
    """The values of the headers the routes read, unparsed (None when missing)."""

    authorization: str | None
    instance: str | None
    key_ring: str | None
    correlation_id: str | None
    prefer: str | None
    content_type: str | None

    def __repr__(self) -> str:
        return (
            f"RawHeaders(authorization={_shown(self.authorization)}, "
            f"instance={self.instance!r}, key_ring={self.key_ring!r}, "
            f"correlation_id={self.correlation_id!r}, prefer={self.prefer!r}, "
            f"content_type={self.content_type!r})"
        )


def _shown(secret: str | None) -> str:
    """How a repr shows a credential: None, or that one was given."""
    return "None" if secret is None else "'<redacted>'"


#: The headers :func:`scan_headers` looks for (ASGI header names are lowercase), each with
#: its position among :class:`RawHeaders`' fields.
_SCANNED: Final[Mapping[bytes, int]] = {
    b"authorization": 0,
    b"bluemix-instance": 1,
    b"x-kms-key-ring": 2,
    b"correlation-id": 3,
    b"prefer": 4,
    b"content-type": 5,
}


def scan_headers(raw: Iterable[tuple[bytes, bytes]]) -> RawHeaders:
    """The routes' headers from an ASGI scope's ``headers``, in one pass over them.

    The values :func:`read_headers` reads from Starlette's ``Headers`` of the same scope: a
    header name matches byte for byte (ASGI servers give them in lowercase), a repeated
    header's first value counts, and values are decoded as Latin-1. Raises nothing.
    """
    found: list[str | None] = [None] * 6
    for name, value in raw:
        index = _SCANNED.get(name)
        if index is not None and found[index] is None:
            found[index] = value.decode("latin-1")
    return RawHeaders(*found)


def parse_headers(raw: RawHeaders) -> Headers:
    """Parses the values :func:`scan_headers` found (what :func:`read_headers` does).

    Raises FieldError (``INVALID_HEADER_ERR``: a ``prefer`` other than minimal or
    representation).
    """
    token = None
    authorization = raw.authorization
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            token = credentials.strip()
    instance = (raw.instance or "").strip() or None
    ring = (raw.key_ring or "").strip() or None
    return Headers(
        token=token,
        instance=instance,
        key_ring=ring,
        correlation_id=raw.correlation_id,
        representation=wire.parse_prefer(raw.prefer),
    )


class Authenticator:
    """Bearer token → principal, through the key service, with a short-lived success cache.

    ``clock``: seconds from an arbitrary start, never going back (default: monotonic).
    Raises InvalidArgument (negative ``ttl``, ``size`` < 1).
    """

    def __init__(
        self,
        service: KeyService,
        *,
        ttl: float = DEFAULT_TTL,
        size: int = DEFAULT_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0 or size < 1:
            raise InvalidArgument(f"expected ttl >= 0 and size >= 1, got {ttl} and {size}")
        self._service = service
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    async def principal(self, headers: Headers) -> Principal:
        """The caller's principal. Raises Unauthorized, CorruptMetadata, StoreUnavailable."""
        key = hashlib.sha256(headers.token.encode()).hexdigest() if headers.token else None
        if key is not None and self._ttl > 0:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > self._clock():
                self._cache.move_to_end(key)
                return hit[1]
        principal = await run_in_threadpool(
            self._service.authenticate,
            headers.token,
            instance=headers.instance,
            correlation_id=headers.correlation_id,
        )
        if key is not None and self._ttl > 0:
            self._cache[key] = (self._clock() + self._ttl, principal)
            self._cache.move_to_end(key)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return principal
