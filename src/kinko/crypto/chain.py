"""An ordered provider chain for one resource: the first transformer seals, any may open.

Job: kube-apiserver's ``prefixTransformers`` (reference §2.1). A write always goes through
the first transformer. A read tries, in order, every transformer whose prefix the value
starts with, and the first that opens it wins; the read is stale when that was not the
first transformer, or when the transformer itself says so.

Invariants:

- A matching transformer that fails does not stop the search: overlapping prefixes are
  legal (two ``aescbc`` entries during a rotation), so later matches are tried.
- ``identity`` (empty prefix) matches every value but refuses ``k8s:enc:`` data; as upstream,
  that refusal does not count as a match.
- Errors: if no transformer opened the value and any of them hit an environment failure
  (``UnavailableError``, e.g. ``PluginError``), the first such failure is raised unchanged:
  the value may open once the plugin is back, so it must not look undecryptable. Otherwise
  a prefix matched but nothing opened → ``DecryptionError()``; nothing matched →
  ``DecryptionError(DecryptionError.NO_MATCHING_PROVIDER)``.
- Unprefixed values (not starting ``k8s:enc:``) with no ``identity`` in the chain: upstream
  kube-apiserver refuses them ("no matching prefix found"), and so does this chain by
  default. ``read_unprefixed_as_identity=True`` opts in to reading them as plaintext, always
  stale, for a migration that must pick up data written before encryption was enabled. It
  is off by default because it lets anyone who can write the store plant a value that
  bypasses the configured encryption and its AAD binding to the storage key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from kinko.crypto.formats import ENCRYPTED_PREFIX, Identity, KmsV2
from kinko.crypto.types import KeptOpened, Opened, Transformer, new_opened
from kinko.errors import DecryptionError, InvalidArgument, UnavailableError


class _Seal(Protocol):
    def __call__(self, plaintext: bytes, *, aad: bytes) -> bytes: ...


class _Open(Protocol):
    def __call__(self, value: bytes, *, aad: bytes) -> Opened: ...


class ProviderChain:
    """The transformers of one resource in EncryptionConfiguration order (never empty)."""

    __slots__ = (
        "_first_kms_v2",
        "_first_open",
        "_first_prefix",
        "_later",
        "_read_unprefixed_as_identity",
        "_transformers",
        "seal",
    )

    def __init__(
        self,
        transformers: Sequence[Transformer],
        *,
        read_unprefixed_as_identity: bool = False,
    ) -> None:
        """Raises InvalidArgument if ``transformers`` is empty."""
        if not transformers:
            raise InvalidArgument("provider chain: expected at least one transformer, got none")
        self._transformers: tuple[Transformer, ...] = tuple(transformers)
        # The chain's seal *is* the first transformer's seal: bound once, so a write costs no
        # extra call. Raises what that transformer raises: InvalidArgument (a read-only first
        # provider), PluginError (KMS unavailable).
        self.seal: _Seal = self._transformers[0].seal
        # Most reads are of what the first transformer wrote: it is tried before the loop.
        self._first_prefix = self._transformers[0].prefix
        self._first_open: _Open = self._transformers[0].open
        # A first KMS v2 transformer also opens LIST pages at once (open_kept).
        first = self._transformers[0]
        self._first_kms_v2 = first if isinstance(first, KmsV2) else None
        # The others, in order, as the search reads them: prefix and bound open.
        self._later: tuple[tuple[bytes, _Open], ...] = tuple(
            (t.prefix, t.open) for t in self._transformers[1:]
        )
        self._read_unprefixed_as_identity = read_unprefixed_as_identity

    @classmethod
    def identity(cls) -> ProviderChain:
        """The chain for a resource that is not encrypted."""
        return cls([Identity()])

    @property
    def first(self) -> Transformer:
        """The transformer every write goes through."""
        return self._transformers[0]

    @property
    def transformers(self) -> tuple[Transformer, ...]:
        return self._transformers

    @property
    def read_unprefixed_as_identity(self) -> bool:
        return self._read_unprefixed_as_identity

    def __repr__(self) -> str:
        names = ", ".join(f"{t.kind}:{t.name}" if t.name else t.kind for t in self._transformers)
        return f"ProviderChain([{names}])"

    def open(self, value: bytes, *, aad: bytes) -> Opened:
        """Open ``value`` with the first matching transformer that succeeds.

        Raises DecryptionError (``NO_MATCHING_PROVIDER`` when no prefix matched, opaque
        otherwise), UnavailableError such as PluginError (an environment failure stopped a
        matching transformer and no other one opened the value).
        """
        # The first transformer first, when it matches (identity: an unencrypted value): such
        # a read is stale only in that transformer's view. On failure the search goes on from
        # the second, called after the handler so that its errors carry no context.
        prefix = self._first_prefix
        if value.startswith(prefix) if prefix else not value.startswith(ENCRYPTED_PREFIX):
            unavailable: UnavailableError | None = None
            try:
                return self._first_open(value, aad=aad)
            except DecryptionError:
                pass
            except UnavailableError as exc:
                unavailable = exc
            return self._search(value, aad, bool(prefix), unavailable)
        # The first transformer cannot open it (another prefix, or identity and encrypted
        # data), so the search starts at the second: a migration's every read comes here.
        return self._search(value, aad, False, None)

    def open_kept(self, values: Sequence[bytes], aads: Sequence[bytes]) -> KeptOpened | None:
        """What the first transformer opens of ``values`` at once (``aads`` holds each one's
        AAD, in the same order), from key state it already holds: a KMS v2 seed it has used.
        The values it leaves out, the caller opens one by one with :meth:`open`; each value it
        opens reads as :meth:`open` would read it, since the first transformer is tried first
        on whatever matches its prefix (see :meth:`KmsV2.open_kept` for a value tried that did
        not open). None when the first transformer is not KMS v2: open every value with
        :meth:`open`.

        For a LIST page: the work per value shrinks to a lookup and a decryption, and no
        object but the plaintext is made per value. Raises nothing.
        """
        kms = self._first_kms_v2
        return None if kms is None else kms.open_kept(values, aads)

    def kept_mark(self) -> int | None:
        """The first transformer's :attr:`KmsV2.kept_mark` (None: not KMS v2). It changes
        when an :meth:`open` keeps a new seed, after which :meth:`open_kept` may open more of
        a page. Raises nothing."""
        kms = self._first_kms_v2
        return None if kms is None else kms.kept_mark

    def _search(
        self,
        value: bytes,
        aad: bytes,
        matched: bool,
        unavailable: UnavailableError | None,
    ) -> Opened:
        """``open`` from the second transformer on; the first failed or did not match:
        ``matched`` says whether its prefix matched, ``unavailable`` is its environment
        failure. Whatever opens the value here is not the first, so the read is stale."""
        for prefix, open_ in self._later:
            if not value.startswith(prefix):
                continue
            if prefix:
                matched = True
            elif value.startswith(ENCRYPTED_PREFIX):
                continue
            try:
                opened = open_(value, aad=aad)
            except DecryptionError:
                continue
            except UnavailableError as exc:
                if unavailable is None:
                    unavailable = exc
                continue
            if opened.stale:
                return opened
            # Built directly (see new_opened): NamedTuple._replace costs several times as
            # much, once per read of every value a migration rewrites.
            plaintext, _, provider, key_name, key_id, dek_source_type = opened
            return new_opened(
                Opened, (plaintext, True, provider, key_name, key_id, dek_source_type)
            )
        if unavailable is not None:
            raise unavailable
        if matched:
            raise DecryptionError()
        if self._read_unprefixed_as_identity and not value.startswith(ENCRYPTED_PREFIX):
            return Opened(plaintext=bytes(value), stale=True, provider="identity", key_name="")
        raise DecryptionError(DecryptionError.NO_MATCHING_PROVIDER)
