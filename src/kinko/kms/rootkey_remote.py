"""The remote adapter of :class:`~kinko.kms.rootkey.RootKeyAccess`: a Key Protect API v2
service over HTTPS (kinko's ``kinko keys serve``, or IBM Key Protect itself).

A translation only: each method is one call of :class:`~kinko.keys.client.KeyProtectClient`,
whose one error table already turns Key Protect's reason codes into kinko errors
(``KEY_ACTION_INVALID_STATE_ERR`` → WrongState, ``KEY_DELETED_ERR`` → Gone,
``KEY_NOT_FOUND_ERR`` → NotFound, unreachable → KeyServiceUnavailable), which is what
:class:`~kinko.kms.rootkey.RootKeyPlugin` explains to kube-apiserver.

Invariant: like the client, nothing here logs or repeats a token, plaintext or ciphertext.
``correlation_id`` is not forwarded: the client sends a fresh correlation id per request.
"""

from __future__ import annotations

from collections.abc import Sequence

from kinko.errors import KeyServiceUnavailable, NotAllowed, UnprocessableCiphertext
from kinko.keys.client import KeyProtectClient
from kinko.kms.rootkey import RootKeyInfo, Unwrapped, Wrapped


class RemoteRootKeys:
    """:class:`~kinko.kms.rootkey.RootKeyAccess` over a :class:`KeyProtectClient` (the
    client's token needs the Reader role on the key)."""

    __slots__ = ("_client",)

    def __init__(self, client: KeyProtectClient) -> None:
        self._client = client

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
