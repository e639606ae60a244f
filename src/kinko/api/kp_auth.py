"""Who is calling: the bearer token and Key Protect's request headers, read once per request.

Job: :class:`Authenticator` turns ``authorization: Bearer <token>`` into a
:class:`~kinko.keys.auth.Principal` through :meth:`KeyService.authenticate
<kinko.keys.service.KeyService.authenticate>`, remembering each success for a short time
(``ttl`` seconds, default 1) so that a client making many calls costs one store read per
second instead of one per call, and the event loop never waits on the store: a miss runs on
the thread pool. :func:`read_headers` parses the headers the routes share.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from starlette.concurrency import run_in_threadpool

from kinko.api import kp_wire as wire
from kinko.errors import InvalidArgument
from kinko.keys.auth import Principal
from kinko.keys.service import KeyService

DEFAULT_TTL: Final = 1.0
DEFAULT_SIZE: Final = 1024


@dataclass(frozen=True, slots=True)
class Headers:
    """Key Protect's request headers, parsed (``instance`` None when missing)."""

    token: str | None
    instance: str | None
    key_ring: str | None
    correlation_id: str | None
    representation: bool


def read_headers(headers: Mapping[str, str]) -> Headers:
    """Parses ``authorization``, ``bluemix-instance``, ``x-kms-key-ring``, ``correlation-id``
    and ``prefer`` (header names case-insensitive, as ``headers`` provides them).

    Raises FieldError (``INVALID_HEADER_ERR``: a ``prefer`` other than minimal or
    representation).
    """
    token = None
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            token = credentials.strip()
    instance = (headers.get("bluemix-instance") or "").strip() or None
    ring = (headers.get("x-kms-key-ring") or "").strip() or None
    return Headers(
        token=token,
        instance=instance,
        key_ring=ring,
        correlation_id=headers.get("correlation-id"),
        representation=wire.parse_prefer(headers.get("prefer")),
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
