"""Who is calling the cluster API: ``Authorization: Bearer <token>`` → a cluster principal.

Job: :class:`ClusterAuthenticator` turns the bearer token into a
:class:`~kinko.cluster.auth.ClusterPrincipal` through :meth:`ClusterTokenBook.authenticate
<kinko.cluster.auth.ClusterTokenBook.authenticate>`, remembering each success for a short time
(``ttl`` seconds, default 1), so a client making many calls costs one store read per second,
and the event loop never waits on the store: a miss runs on the thread pool.

Invariants:

- The cache is keyed by the token's SHA-256, never the token; it holds at most ``size``
  principals and only successes: a missing, malformed, unknown, revoked or expired token
  always goes to the book. A revoked token stops working within ``ttl`` seconds; ``ttl=0``
  turns the cache off.
- The cache is touched only on the event loop's thread, so it needs no lock.
- Authorization (role and namespace checks) is never cached: every request makes it.
- Nothing here logs, and no message repeats a token.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Final

from starlette.concurrency import run_in_threadpool

from kinko.cluster.auth import ClusterPrincipal, ClusterTokenBook
from kinko.errors import InvalidArgument

DEFAULT_TTL: Final = 1.0
DEFAULT_SIZE: Final = 1024


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when there is none."""
    authorization = headers.get("authorization")
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


class ClusterAuthenticator:
    """Bearer token → cluster principal, through the token book, with a success cache.

    ``clock``: the wall clock the book checks expiry against. ``monotonic``: seconds from an
    arbitrary start, never going back (the cache's clock). Raises InvalidArgument (negative
    ``ttl``, ``size`` < 1).
    """

    def __init__(
        self,
        book: ClusterTokenBook,
        *,
        clock: Callable[[], datetime],
        ttl: float = DEFAULT_TTL,
        size: int = DEFAULT_SIZE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0 or size < 1:
            raise InvalidArgument(f"expected ttl >= 0 and size >= 1, got {ttl} and {size}")
        self._book = book
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._monotonic = monotonic
        self._cache: OrderedDict[str, tuple[float, ClusterPrincipal]] = OrderedDict()

    def _authenticate(self, token: str | None) -> ClusterPrincipal:
        return self._book.authenticate(token, now=self._clock())

    async def principal(self, token: str | None) -> ClusterPrincipal:
        """The caller's principal. Raises Unauthorized, CorruptMetadata, StoreUnavailable."""
        key = hashlib.sha256(token.encode()).hexdigest() if token else None
        if key is not None and self._ttl > 0:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > self._monotonic():
                self._cache.move_to_end(key)
                return hit[1]
        principal = await run_in_threadpool(self._authenticate, token)
        if key is not None and self._ttl > 0:
            self._cache[key] = (self._monotonic() + self._ttl, principal)
            self._cache.move_to_end(key)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return principal
