"""The encryption coverage report: what the stored cluster objects are encrypted with now.

Job: :func:`coverage_report` walks every stored object of the resources asked for (a Store
page walk, ``/registry/<resource>/``) and counts, per resource:

- objects per **provider**, by value prefix (``k8s:enc:kms:v2:kinko:``, ``k8s:enc:aescbc:v1:
  key1:``; ``identity`` for a value without a ``k8s:enc:`` prefix; ``unknown`` for a
  ``k8s:enc:`` prefix no configured provider has);
- objects per **KMS v2 key_id**, read from the stored ``EncryptedObject`` header without
  decrypting, with the KMS provider it was stored by and, for kinko's root key plugin
  (``kinko-rk-<root key id>-v<version id>``), the root key and version it names; other
  plugins' key_ids are shown as they are;
- **plaintext** objects (stored without any ``k8s:enc:`` prefix), **stale** objects (they
  open, but not as the first provider and current key_id would write them now: the migration
  rewrites them), and **undecryptable** objects (no provider opens them: a destroyed root key,
  a provider removed from the configuration, tampering), with the first few names;
- **unavailable** objects: opening them needed a KMS plugin or key service that did not
  answer. Whether they are decryptable is *unknown*; they are counted apart and never as
  undecryptable, and the first such error is kept (it names the plugin, never data).

:func:`prefix_scan` is the cheap variant the encryption controller uses between migrations:
prefixes and key_id headers only, no plugin call and no decryption.

Invariants: memory is bounded whatever the object count (one page of entries, the counters,
one entry per distinct provider and key_id, at most :data:`SAMPLE` names); the walk reads no
snapshot revision (it would pin the store's history for the whole walk), so objects written
during the walk may be counted in their old or their new form; nothing is written; the report
carries counts, prefixes, key_ids (public ids, no material), storage names and error
messages, never plaintext, ciphertext or key bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from kinko.crypto.chain import ProviderChain
from kinko.crypto.formats import ENCRYPTED_PREFIX, KMS_V2_PREFIX, KmsV2
from kinko.crypto.kmsv2 import decode_encrypted_object
from kinko.crypto.types import DekSourceType
from kinko.errors import DecryptionError, EnvelopeError, InvalidArgument, UnavailableError
from kinko.kms.rootkey import parse_key_id
from kinko.store.port import Entry, Store

__all__ = [
    "IDENTITY",
    "SAMPLE",
    "UNKNOWN",
    "CoverageReport",
    "KeyIdCount",
    "PrefixScan",
    "ResourceCoverage",
    "coverage_report",
    "prefix_scan",
]

#: The provider label of a value stored without a ``k8s:enc:`` prefix.
IDENTITY: Final = "identity"
#: The provider label of a ``k8s:enc:`` value no configured prefix matches.
UNKNOWN: Final = "unknown"
#: Names of undecryptable objects a report lists per resource.
SAMPLE: Final = 20
DEFAULT_PAGE: Final = 500
_REASON_MAX: Final = 500


class ChainSource(Protocol):
    """What the report needs of the configuration: :class:`~kinko.cluster.encryption.
    EncryptionConfigSource`."""

    @property
    def config_hash(self) -> str: ...

    def chain_for(self, resource: str) -> ProviderChain: ...


@dataclass(frozen=True, slots=True)
class KeyIdCount:
    """Objects stored under one KMS v2 key_id.

    ``root_key`` and ``version`` are the root key id and version id a kinko key_id names
    (None for another plugin's key_id); ``current``: the key_id the first provider writes with
    now.
    """

    key_id: str
    count: int
    provider: str
    root_key: str | None
    version: str | None
    current: bool

    def to_json(self) -> dict[str, object]:
        return {
            "count": self.count,
            "provider": self.provider,
            "rootKey": self.root_key,
            "version": self.version,
            "current": self.current,
        }


@dataclass(frozen=True, slots=True)
class ResourceCoverage:
    """The counts of one resource (module docstring)."""

    resource: str
    total: int
    providers: Mapping[str, int]
    key_ids: Mapping[str, KeyIdCount]
    plaintext: int
    stale: int
    undecryptable: int
    undecryptable_names: tuple[str, ...]
    unavailable: int
    unavailable_reason: str | None
    first_provider: str
    current_key_id: str | None

    @property
    def complete(self) -> bool:
        """Whether every object could be classified (no plugin was unavailable)."""
        return self.unavailable == 0

    def to_json(self, migration: Mapping[str, object] | None = None) -> dict[str, object]:
        """The API's and ``-o json``'s form; ``migration`` is the resource's migration state."""
        return {
            "total": self.total,
            "providers": dict(self.providers),
            "keyIds": {k: v.to_json() for k, v in self.key_ids.items()},
            "plaintext": self.plaintext,
            "stale": self.stale,
            "undecryptable": self.undecryptable,
            "undecryptableNames": list(self.undecryptable_names),
            "unavailable": self.unavailable,
            "unavailableReason": self.unavailable_reason,
            "complete": self.complete,
            "firstProvider": self.first_provider,
            "currentKeyId": self.current_key_id,
            "migration": dict(migration) if migration is not None else None,
        }


@dataclass(frozen=True, slots=True)
class CoverageReport:
    """The report over every resource asked for, under the configuration ``config_hash``."""

    config_hash: str
    resources: Mapping[str, ResourceCoverage]
    notes: tuple[str, ...] = field(default=())

    def to_json(
        self, migrations: Mapping[str, Mapping[str, object]] | None = None
    ) -> dict[str, object]:
        """``{"configHash", "resources": {resource: {...}}, "notes"}``; ``migrations`` adds
        each resource's migration state under ``migration``."""
        migrations = migrations or {}
        return {
            "configHash": self.config_hash,
            "resources": {
                name: cov.to_json(migrations.get(name)) for name, cov in self.resources.items()
            },
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- the walk


def _pages(store: Store, prefix: bytes, page: int) -> Iterator[tuple[Entry, ...]]:
    after = b""
    while True:
        got = store.range(prefix, start_after=after, limit=page)
        if got.entries:
            yield got.entries
        if not got.more or not got.entries:
            return
        after = got.entries[-1].key


def _resource_prefix(resource: str) -> bytes:
    if not resource or "/" in resource or resource in (".", ".."):
        raise InvalidArgument(
            f"resource: expected a resource name such as secrets, got {resource!r}"
        )
    return b"/registry/" + resource.encode() + b"/"


def _name(key: bytes, prefix: bytes) -> str:
    return key[len(prefix) :].decode("utf-8", errors="backslashreplace")


def _provider_label(value: bytes, prefixes: Sequence[bytes]) -> str:
    for prefix in prefixes:
        if value.startswith(prefix):
            return prefix.decode("utf-8", errors="backslashreplace")
    return UNKNOWN if value.startswith(ENCRYPTED_PREFIX) else IDENTITY


def _kms_v2_header(value: bytes) -> tuple[str, str, DekSourceType] | None:
    """(provider name, key_id, DEK source type) of a stored KMS v2 value, without
    decrypting; None for any other value or a header that does not parse."""
    if not value.startswith(KMS_V2_PREFIX):
        return None
    name, sep, rest = value[len(KMS_V2_PREFIX) :].partition(b":")
    if not sep:
        return None
    try:
        obj = decode_encrypted_object(rest)
    except EnvelopeError:
        return None
    return name.decode("utf-8", errors="backslashreplace"), obj.key_id, obj.dek_source_type


def _root_of(key_id: str) -> tuple[str | None, str | None]:
    try:
        return parse_key_id(key_id)
    except InvalidArgument:
        return None, None


def _current_key_id(chain: ProviderChain) -> str | None:
    first = chain.first
    return first.keys.current_key_id() if isinstance(first, KmsV2) else None


def _sorted_prefixes(chain: ProviderChain) -> list[bytes]:
    return sorted({t.prefix for t in chain.transformers if t.prefix}, key=len, reverse=True)


class _KeyIds:
    def __init__(self, current: str | None) -> None:
        self._current = current
        self._counts: dict[str, int] = {}
        self._providers: dict[str, str] = {}

    def add(self, provider: str, key_id: str) -> None:
        self._counts[key_id] = self._counts.get(key_id, 0) + 1
        self._providers.setdefault(key_id, provider)

    def result(self) -> dict[str, KeyIdCount]:
        out: dict[str, KeyIdCount] = {}
        for key_id in sorted(self._counts):
            root, version = _root_of(key_id)
            out[key_id] = KeyIdCount(
                key_id=key_id,
                count=self._counts[key_id],
                provider=self._providers[key_id],
                root_key=root,
                version=version,
                current=key_id == self._current,
            )
        return out


def coverage_for(
    store: Store, chain: ProviderChain, resource: str, *, page: int = DEFAULT_PAGE
) -> ResourceCoverage:
    """The counts of ``resource`` under ``chain`` (module docstring).

    Raises InvalidArgument (a bad resource name or page size), StoreUnavailable. A KMS plugin
    that is unavailable raises nothing: its objects are counted as ``unavailable``.
    """
    if page < 1:
        raise InvalidArgument(f"page: expected at least 1 entry, got {page}")
    prefix = _resource_prefix(resource)
    prefixes = _sorted_prefixes(chain)
    current = _current_key_id(chain)
    providers: dict[str, int] = {}
    key_ids = _KeyIds(current)
    total = plaintext = stale = undecryptable = unavailable = 0
    names: list[str] = []
    reason: str | None = None
    open_ = chain.open
    for entries in _pages(store, prefix, page):
        for entry in entries:
            value = entry.value
            total += 1
            label = _provider_label(value, prefixes)
            providers[label] = providers.get(label, 0) + 1
            if not value.startswith(ENCRYPTED_PREFIX):
                plaintext += 1
            header = _kms_v2_header(value)
            if header is not None:
                key_ids.add(header[0], header[1])
            try:
                opened = open_(value, aad=entry.key)
            except DecryptionError:
                undecryptable += 1
                if len(names) < SAMPLE:
                    names.append(_name(entry.key, prefix))
                continue
            except UnavailableError as exc:
                unavailable += 1
                if reason is None:
                    reason = f"{type(exc).__name__}: {exc}"[:_REASON_MAX]
                continue
            if opened.stale:
                stale += 1
    first = chain.first
    return ResourceCoverage(
        resource=resource,
        total=total,
        providers=dict(sorted(providers.items())),
        key_ids=key_ids.result(),
        plaintext=plaintext,
        stale=stale,
        undecryptable=undecryptable,
        undecryptable_names=tuple(names),
        unavailable=unavailable,
        unavailable_reason=reason,
        first_provider=_provider_label(first.prefix, prefixes) if first.prefix else IDENTITY,
        current_key_id=current,
    )


def coverage_report(
    store: Store, source: ChainSource, resources: Sequence[str], *, page: int = DEFAULT_PAGE
) -> CoverageReport:
    """:func:`coverage_for` of every resource in ``resources`` under the chains of ``source``.

    Raises InvalidArgument, StoreUnavailable (as :func:`coverage_for`).
    """
    config = source.config_hash
    out: dict[str, ResourceCoverage] = {}
    for resource in resources:
        out[resource] = coverage_for(store, source.chain_for(resource), resource, page=page)
    notes: list[str] = []
    if any(cov.unavailable for cov in out.values()):
        notes.append(
            "some objects could not be opened because a KMS plugin or the key service was "
            "unavailable: whether they are decryptable is unknown (they are counted under "
            "unavailable, not undecryptable); run the report again once it is back"
        )
    return CoverageReport(config_hash=config, resources=out, notes=tuple(notes))


# --------------------------------------------------------------------------- the cheap scan


@dataclass(frozen=True, slots=True)
class PrefixScan:
    """What :func:`prefix_scan` found in one resource: objects per provider label, and how
    many are certainly stale by their prefix or key_id header alone."""

    resource: str
    total: int
    providers: Mapping[str, int]
    stale: int


def prefix_scan(
    store: Store, chain: ProviderChain, resource: str, *, page: int = DEFAULT_PAGE
) -> PrefixScan:
    """Counts by prefix and header only: no decryption, no plugin call (module docstring).

    A value counts as stale when it is not stored by the first provider, or (KMS v2 first) its
    key_id is not the current one or its DEK source is not a seed; a value the first provider
    stored is otherwise taken as current (its header is not checked further).

    Raises InvalidArgument, StoreUnavailable.
    """
    if page < 1:
        raise InvalidArgument(f"page: expected at least 1 entry, got {page}")
    prefix = _resource_prefix(resource)
    prefixes = _sorted_prefixes(chain)
    first = chain.first
    first_prefix = first.prefix
    current = _current_key_id(chain)
    kms_first = isinstance(first, KmsV2)
    providers: dict[str, int] = {}
    total = stale = 0
    for entries in _pages(store, prefix, page):
        for entry in entries:
            value = entry.value
            total += 1
            label = _provider_label(value, prefixes)
            providers[label] = providers.get(label, 0) + 1
            if not first_prefix:
                if value.startswith(ENCRYPTED_PREFIX):
                    stale += 1
                continue
            if not value.startswith(first_prefix):
                stale += 1
                continue
            if kms_first:
                header = _kms_v2_header(value)
                if (
                    header is None
                    or header[1] != current
                    or header[2] is not DekSourceType.HKDF_SHA256_XNONCE_AES_GCM_SEED
                ):
                    stale += 1
    return PrefixScan(resource, total, dict(sorted(providers.items())), stale)
