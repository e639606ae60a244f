"""The remote adapter of :class:`~kinko.kms.rootkey.RootKeyAccess`: a Key Protect API v2
service over HTTPS (kinko's ``kinko keys serve``, or IBM Key Protect itself).

A translation only: each method is one call of :class:`~kinko.keys.client.KeyProtectClient`,
whose one error table already turns Key Protect's reason codes into kinko errors
(``KEY_ACTION_INVALID_STATE_ERR`` → WrongState, ``KEY_DELETED_ERR`` → Gone,
``KEY_NOT_FOUND_ERR`` → NotFound, unreachable → KeyServiceUnavailable), which is what
:class:`~kinko.kms.rootkey.RootKeyPlugin` explains to kube-apiserver.

:meth:`RemoteRootKeys.check` is the one method with state of its own: it reuses the key's
metadata for up to ``state_ttl`` seconds (:data:`~kinko.kms.rootkey.STATE_TTL`, 1 s), so the
plugin checks the root key's state before every Encrypt and Decrypt with at most one ``GET``
per second; metadata that would refuse the call is read again before the refusal counts.

Invariant: like the client, nothing here logs or repeats a token, plaintext or ciphertext.
``correlation_id`` is not forwarded: the client sends a fresh correlation id per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from kinko.errors import (
    Gone,
    InvalidArgument,
    KeyServiceUnavailable,
    NotAllowed,
    UnprocessableCiphertext,
    WrongState,
)
from kinko.keys.client import KeyProtectClient
from kinko.keys.model import KeyState
from kinko.kms.rootkey import STATE_TTL, RootKeyInfo, Unwrapped, Wrapped


class RemoteRootKeys:
    """:class:`~kinko.kms.rootkey.RootKeyAccess` over a :class:`KeyProtectClient` (the
    client's token needs the Reader role on the key)."""

    __slots__ = ("_client", "_clock", "_lock", "_states", "_ttl")

    def __init__(
        self,
        client: KeyProtectClient,
        *,
        state_ttl: float = STATE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not state_ttl >= 0:
            raise InvalidArgument(f"state_ttl must be at least 0 s, got {state_ttl}")
        self._client = client
        self._ttl = state_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, tuple[RootKeyInfo, float]] = {}

    def check(
        self,
        key_ref: str,
        *,
        unwrap_version: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """See :meth:`~kinko.kms.rootkey.RootKeyAccess.check`: the key's state from its
        metadata, reused for ``state_ttl`` seconds unless it refuses. The version of a
        ciphertext is not checked here (the metadata names the latest version only); the
        unwrap that first opens a local KEK checks it. Raises what :meth:`current` raises,
        WrongState (wrap: not Active; unwrap: Suspended), Gone (Destroyed)."""
        wrapping = unwrap_version is None
        held = self._states.get(key_ref)
        if held is not None and self._clock() < held[1] and _allows(held[0].state, wrapping):
            return held[0].version_id
        expires = self._clock() + self._ttl
        info = self.current(key_ref, correlation_id=correlation_id)
        if not _allows(info.state, wrapping):
            with self._lock:
                self._states.pop(key_ref, None)
            if info.state is KeyState.DESTROYED:
                raise Gone(f"key {info.key_id} is Destroyed")
            raise WrongState(
                f"key {info.key_id} is {info.state.label}: it cannot "
                f"{'wrap' if wrapping else 'unwrap'}"
            )
        if self._ttl > 0:
            with self._lock:
                self._states[key_ref] = (info, expires)
        return info.version_id

    def current(self, key_ref: str, *, correlation_id: str | None = None) -> RootKeyInfo:
        """See :meth:`~kinko.kms.rootkey.RootKeyAccess.current`. Raises what
        ``get_key_metadata`` raises, NotAllowed for a standard key, KeyServiceUnavailable for
        an answer without a key version."""
        key = self._client.get_key_metadata(key_ref)
        if key.extractable:
            raise NotAllowed(
                f"key {key.id} is a standard key; the KMS plugin needs a root key",
                reason_code="KEY_ROOT_REQ_ERR",
            )
        version = key.key_version
        if version is None:
            raise KeyServiceUnavailable(
                f"the key service's answer for key {key.id} names no key version"
            )
        return RootKeyInfo(
            key_id=key.id,
            state=key.state,
            version_id=version.id,
            version_created=version.creation_date,
        )

    def wrap(
        self,
        key_ref: str,
        plaintext: bytes,
        *,
        aad: Sequence[str],
        correlation_id: str | None = None,
    ) -> Wrapped:
        """See :meth:`~kinko.kms.rootkey.RootKeyAccess.wrap`. Raises what the client's
        ``wrap`` raises."""
        result = self._client.wrap(key_ref, plaintext, aad=aad)
        try:
            ciphertext = result.ciphertext.encode("ascii")
        except UnicodeEncodeError:
            raise KeyServiceUnavailable("the key service answered a non-ASCII ciphertext") from None
        return Wrapped(ciphertext=ciphertext, version_id=result.key_version)

    def unwrap(
        self,
        key_ref: str,
        ciphertext: bytes,
        *,
        aad: Sequence[str],
        correlation_id: str | None = None,
    ) -> Unwrapped:
        """See :meth:`~kinko.kms.rootkey.RootKeyAccess.unwrap`. Raises what the client's
        ``unwrap`` raises, and UnprocessableCiphertext for bytes that are not ASCII."""
        try:
            text = ciphertext.decode("ascii")
        except UnicodeDecodeError:
            raise UnprocessableCiphertext(UnprocessableCiphertext.MALFORMED) from None
        result = self._client.unwrap(key_ref, text, aad=aad)
        return Unwrapped(plaintext=result.plaintext, version_id=result.key_version)


def _allows(state: KeyState, wrapping: bool) -> bool:
    """Key Protect's rule: wrap when Active, unwrap when Active or Deactivated."""
    if wrapping:
        return state is KeyState.ACTIVE
    return state is KeyState.ACTIVE or state is KeyState.DEACTIVATED
