"""Shared value types of the pure core: what a transformer is and what a read returns.

A *transformer* is one (provider, key) pair with its full prefix, e.g. the aescbc key ``key1``
is the transformer with prefix ``k8s:enc:aescbc:v1:key1:``. A provider chain is an ordered list
of transformers: the first seals, every one whose prefix matches is tried on a read.
The core draws no randomness of its own: transformers take an ``Rng`` at construction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple, Protocol

#: Returns ``n`` random bytes. ``os.urandom`` in production, a seeded source in vectors.
Rng = Callable[[int], bytes]


class DekSourceType(IntEnum):
    """``EncryptedObject.encryptedDEKSourceType`` (KMS v2)."""

    AES_GCM_KEY = 0
    HKDF_SHA256_XNONCE_AES_GCM_SEED = 1


class Opened(NamedTuple):
    """The result of reading one stored value.

    ``stale`` is true when the value is not what the chain would write now: another
    provider or key than the first, a KMS v2 key_id or DEK source type other than the
    current write state, or a KMS v1 CBC payload. Migration rewrites stale values.

    A NamedTuple rather than a frozen dataclass: it is built once per read, and a frozen
    dataclass's ``__init__`` costs more than decrypting a 1 KiB value. It is just as
    immutable, and its ``repr`` leaves the plaintext out.
    """

    plaintext: bytes
    stale: bool
    provider: str  # identity | aescbc | aesgcm | secretbox | kms
    key_name: str  # key name for local providers, KMS name for kms, "" for identity
    key_id: str | None = None  # KMS v2 key_id of the stored value
    dek_source_type: DekSourceType | None = None  # KMS v2 only

    def __repr__(self) -> str:
        return (
            f"Opened(plaintext=<{len(self.plaintext)} bytes>, stale={self.stale}, "
            f"provider={self.provider!r}, key_name={self.key_name!r}, key_id={self.key_id!r}, "
            f"dek_source_type={self.dek_source_type!r})"
        )


#: Builds an :class:`Opened` from a tuple of all six fields in order:
#: ``new_opened(Opened, (plaintext, stale, provider, key_name, key_id, dek_source_type))``.
#: The same object as ``Opened(...)`` without the Python-level ``__new__`` NamedTuple
#: generates, which only forwards its arguments to this; every read returns an Opened, and
#: that extra frame costs about as much as the tuple itself. Hot paths only.
new_opened = tuple.__new__


class KeptOpened(NamedTuple):
    """What a provider chain opened of a page of values at once (``ProviderChain.open_kept``).

    ``plaintexts[i]`` is value i's plaintext, or None if it was not opened here (open it one
    by one). ``opened[i]`` is how it opened: an :class:`Opened` with an empty plaintext,
    shared by every value tried under the same key. An Opened with a None plaintext: tried
    and not opened (open it alone for its error; do not try it again). None for both: not
    tried. No object is made per value but its plaintext: a LIST that keeps a page alive
    makes the garbage collector trace nothing more than an identity read would.
    """

    plaintexts: list[bytes | None]
    opened: list[Opened | None]

    def __repr__(self) -> str:
        # Plaintexts are never shown; how many were opened is.
        opened = sum(p is not None for p in self.plaintexts)
        return f"KeptOpened({opened} of {len(self.plaintexts)} values opened)"


class Transformer(Protocol):
    """One (provider, key) with its full prefix. Implementations never log or leak bytes."""

    @property
    def kind(self) -> str:
        """``identity``, ``aescbc``, ``aesgcm``, ``secretbox`` or ``kms``."""
        ...

    @property
    def name(self) -> str:
        """The key name or KMS name; ``""`` for identity."""
        ...

    @property
    def prefix(self) -> bytes:
        """The full prefix including the key name and trailing colon; ``b""`` for identity."""
        ...

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """Return ``prefix || payload``.

        Raises InvalidArgument (a read-only provider), PluginError (KMS unavailable).
        """
        ...

    def open(self, value: bytes, *, aad: bytes) -> Opened:
        """Open ``value`` (prefix included). ``stale`` reflects only this transformer's view.

        Raises DecryptionError (opaque), PluginError (KMS unavailable).
        """
        ...


@dataclass(frozen=True, slots=True)
class EncryptedObject:
    """KMS v2 ``EncryptedObject`` as stored after the ``k8s:enc:kms:v2:<name>:`` prefix."""

    encrypted_data: bytes = field(repr=False)
    key_id: str
    encrypted_dek_source: bytes = field(repr=False)
    annotations: Mapping[str, bytes] = field(repr=False)  # may hold a wrapped key (ADR 15)
    dek_source_type: DekSourceType


@dataclass(frozen=True, slots=True)
class KmsWriteState:
    """The current KMS v2 write state: one seed wrapped once per key_id."""

    seed: bytes = field(repr=False)
    key_id: str
    encrypted_dek_source: bytes = field(repr=False)
    annotations: Mapping[str, bytes] = field(repr=False)  # may hold a wrapped key (ADR 15)


class KmsV2Keys(Protocol):
    """What the KMS v2 transformer needs from a plugin session (``kinko.kms.envelope``).

    The in-memory twin and the gRPC client both satisfy it.
    """

    def write_state(self) -> KmsWriteState:
        """The seed to write with. Raises PluginError when no healthy state is usable."""
        ...

    def dek_source(self, obj: EncryptedObject) -> bytes:
        """The plaintext of ``obj.encrypted_dek_source`` (a seed or a DEK), cached.

        Raises DecryptionError (the plugin refused it), PluginError (unavailable).
        """
        ...

    def seed_epoch(self) -> int:
        """How many seeds the session has let go so far (evicted from its cache, forgotten).

        A transformer may keep a seed it got from :meth:`dek_source` and use it again without
        asking, but only while this number is the one it read *before* that call: once the
        session lets any seed go, every kept seed goes back through :meth:`dek_source` once.
        Raises nothing.
        """
        ...

    def kept_hit(self, obj: EncryptedObject, epoch: int, count: int = 1) -> bool:
        """``count`` reads of ``obj`` with a seed the transformer kept at ``epoch``: if the
        session's epoch is still ``epoch``, count them as :meth:`dek_source` counts cache hits
        (statistics, the key_id metric) and return True; otherwise count nothing and return
        False (the transformer must ask :meth:`dek_source`). Raises nothing.
        """
        ...

    def current_key_id(self) -> str | None:
        """The key_id of the current write state, or None if the plugin was never healthy."""
        ...


class KmsV1Unwrapper(Protocol):
    """What the read-only KMS v1 transformer needs: unwrap one per-value DEK."""

    def decrypt(self, cipher: bytes) -> bytes:
        """Raises DecryptionError (refused), PluginError (unavailable)."""
        ...
