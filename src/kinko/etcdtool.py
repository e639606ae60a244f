"""Operator use cases over values kube-apiserver stored in etcd: read, audit, migrate.

``kinko etcd`` is a thin shell over this module. It reads one stored value or walks a key
prefix, opens each value with the provider chain that an EncryptionConfiguration gives the
value's resource, and either reports what it found (:func:`audit`) or rewrites the stale
values under the first provider (:func:`reencrypt`).

Invariants:

- **AAD is the exact key read.** Every value is opened and sealed with its own etcd key's
  bytes as AAD, never with a key rebuilt from parts.
- **Writes are compare-and-swap** on the ``mod_revision`` the value was read at. A value
  written by someone else in between stays as they wrote it, and is counted as a conflict.
  Running a migration twice changes nothing the second time.
- **Nothing undecryptable is touched.** A value no provider opens, or one whose KMS plugin
  is unavailable, is counted and left as it is.
- Reports carry counts, resource and provider names, key names, key_ids and storage keys
  (``/registry/secrets/ns/name``), never values.

Resource names. The chain is chosen by resource, which is parsed from the key: the path
segment after the ``registry`` segment (``/registry/secrets/ns/name`` → ``secrets``; custom
etcd prefixes such as ``/<uuid>/registry/secrets/...`` too), or the segment after an explicit
``etcd_prefix``. A segment containing a dot is an API group, as custom resources are stored
(``/registry/stable.example.com/crontabs/ns/name`` → ``crontabs.stable.example.com``).
Limitation: kube-apiserver stores built-in grouped resources without their group
(``/registry/deployments/...``), and a few under other names (nodes under ``minions``);
for those, rules such as ``deployments.apps`` or ``*.apps`` do not match the parsed name, so
pass the resource explicitly.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from kinko.crypto.chain import ProviderChain
from kinko.crypto.config import (
    EncryptionChains,
    KmsConfig,
    build_chains,
    parse_encryption_config,
)
from kinko.crypto.inspect import JsonValue, ValueInfo, inspect_value
from kinko.crypto.types import KmsV1Unwrapper, KmsV2Keys, Opened, Rng
from kinko.errors import DecryptionError, InvalidArgument, NotFound, UnavailableError
from kinko.kms.client import GrpcKmsV1Api, GrpcKmsV2Api
from kinko.kms.envelope import KmsV2Session
from kinko.store.etcd import DEFAULT_PAGE_LIMIT, MAX_TXN_OPS, CasPut, KeyValue

#: How many storage keys a report lists per kind of problem.
SAMPLE_KEYS = 50


class KvStore(Protocol):
    """What these use cases need of a store: :class:`~kinko.store.etcd.EtcdClient` or its
    in-memory twin :class:`~kinko.store.etcd_memory.MemoryEtcd`."""

    def get(self, key: bytes) -> KeyValue | None: ...

    def range_prefix(
        self, prefix: bytes, *, limit: int = DEFAULT_PAGE_LIMIT
    ) -> Iterator[KeyValue]: ...

    def count_prefix(self, prefix: bytes) -> int: ...

    def cas_batch(self, ops: Sequence[CasPut]) -> list[bool]: ...


class Chains(Protocol):
    """What picks a provider chain: :class:`~kinko.crypto.config.EncryptionChains`."""

    def chain_for(self, resource: str) -> ProviderChain: ...


#: Called with the number of values just processed.
Progress = Callable[[int], None]


class Verdict(StrEnum):
    """What reading one stored value found."""

    CURRENT = "current"  # opened, and already what the chain would write now
    STALE = "stale"  # opened, but under another provider, key, key_id or DEK source type
    UNDECRYPTABLE = "undecryptable"  # no provider opened it, or it is malformed
    UNAVAILABLE = "unavailable"  # a KMS plugin it needs did not answer
    NO_RESOURCE = "no_resource"  # the key names no resource; not opened


# --------------------------------------------------------------------------- resources


def resource_from_key(key: bytes, *, etcd_prefix: str | None = None) -> str | None:
    """The resource a storage key belongs to, or None if the key does not name one.

    Without ``etcd_prefix`` the resource is the segment after the first ``registry`` segment;
    with it, the segment right after that prefix. A segment with a dot is an API group and
    the next segment its resource (``crontabs.stable.example.com``). Raises nothing.
    """
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if etcd_prefix is not None:
        base = "/" + etcd_prefix.strip("/")
        if base == "/":
            rest = text.lstrip("/")
        elif text.startswith(base + "/"):
            rest = text[len(base) + 1 :]
        else:
            return None
        segments = rest.split("/")
    else:
        parts = text.split("/")
        if "registry" not in parts:
            return None
        segments = parts[parts.index("registry") + 1 :]
    if len(segments) < 2 or not segments[0]:
        return None
    first = segments[0]
    if "." in first:
        if len(segments) < 3 or not segments[1]:
            return None
        return f"{segments[1]}.{first}"
    return first


def resolve_resource(key: bytes, *, resource: str | None, etcd_prefix: str | None) -> str:
    """``resource`` if given, else the one parsed from ``key``.

    Raises InvalidArgument: neither is available.
    """
    if resource:
        return resource
    parsed = resource_from_key(key, etcd_prefix=etcd_prefix)
    if parsed is None:
        where = f"after the prefix {etcd_prefix!r}" if etcd_prefix else "after a /registry/ segment"
        raise InvalidArgument(
            f"cannot tell the resource of storage key {_show(key)}: expected "
            f"<resource>/[<namespace>/]<name> {where}; pass --resource"
        )
    return parsed


# --------------------------------------------------------------------------- chains


@contextlib.contextmanager
def open_chains(config_data: bytes | str, *, rng: Rng = os.urandom) -> Iterator[EncryptionChains]:
    """Provider chains for an EncryptionConfiguration file's content, with KMS clients.

    KMS v2 providers get a :class:`~kinko.kms.envelope.KmsV2Session` over a gRPC client of
    the plugin at the provider's endpoint, KMS v1 providers a read-only gRPC client; they are
    created only when a chain needs them and closed when the context exits.

    Raises ConfigError (the configuration is invalid).
    """
    config = parse_encryption_config(config_data)
    clients: list[GrpcKmsV2Api | GrpcKmsV1Api] = []

    def kms_v2(kms: KmsConfig) -> KmsV2Keys:
        api = GrpcKmsV2Api(kms.endpoint, timeout=kms.timeout_seconds)
        clients.append(api)
        return KmsV2Session(api, name=kms.name, rng=rng)

    def kms_v1(kms: KmsConfig) -> KmsV1Unwrapper:
        api = GrpcKmsV1Api(kms.endpoint, timeout=kms.timeout_seconds)
        clients.append(api)
        return api

    try:
        yield build_chains(config, kms_v2=kms_v2, kms_v1=kms_v1, rng=rng)
    finally:
        for client in clients:
            client.close()


def _chain(chains: Chains, resource: str, *, read_unprefixed: bool) -> ProviderChain:
    chain = chains.chain_for(resource)
    if read_unprefixed and not chain.read_unprefixed_as_identity:
        return ProviderChain(chain.transformers, read_unprefixed_as_identity=True)
    return chain


# --------------------------------------------------------------------------- one value


def decrypt_value(
    chains: Chains,
    key: bytes,
    value: bytes,
    *,
    resource: str | None = None,
    etcd_prefix: str | None = None,
    read_unprefixed: bool = False,
) -> Opened:
    """Open one stored value with AAD = ``key``.

    Raises InvalidArgument (no resource), DecryptionError (no provider opened it),
    UnavailableError such as PluginError (a KMS plugin did not answer).
    """
    name = resolve_resource(key, resource=resource, etcd_prefix=etcd_prefix)
    return _chain(chains, name, read_unprefixed=read_unprefixed).open(value, aad=key)


def reseal_value(
    chains: Chains,
    key: bytes,
    value: bytes,
    *,
    resource: str | None = None,
    etcd_prefix: str | None = None,
    read_unprefixed: bool = False,
) -> bytes:
    """Open one stored value and seal its plaintext again under the first provider.

    Raises as :func:`decrypt_value`, and InvalidArgument (the first provider cannot write,
    e.g. KMS v1), PluginError (no KMS v2 write state).
    """
    name = resolve_resource(key, resource=resource, etcd_prefix=etcd_prefix)
    chain = _chain(chains, name, read_unprefixed=read_unprefixed)
    opened = chain.open(value, aad=key)
    return chain.seal(opened.plaintext, aad=key)


def describe_value(key: bytes, value: bytes, *, etcd_prefix: str | None = None) -> JsonValue:
    """What a stored value reveals without any key, plus its storage key and resource.

    Raises InvalidArgument (unknown ``k8s:enc:`` provider, truncated header), EnvelopeError
    (malformed KMS v2 envelope).
    """
    info = inspect_value(value).to_json_dict()
    return {
        "storage_key": _show(key),
        "resource": resource_from_key(key, etcd_prefix=etcd_prefix),
        **info,
    }


def fetch(store: KvStore, key: bytes) -> KeyValue:
    """The stored value of ``key``. Raises NotFound, StoreUnavailable."""
    kv = store.get(key)
    if kv is None:
        raise NotFound(f"no value is stored at {_show(key)}")
    return kv


# --------------------------------------------------------------------------- classifying


@dataclass(frozen=True, slots=True)
class Finding:
    """What one stored value is. ``opened`` is set for CURRENT and STALE only."""

    key: bytes
    resource: str | None
    verdict: Verdict
    provider: str  # identity | aescbc | aesgcm | secretbox | kms | unknown
    key_name: str
    key_id: str | None
    plaintext: bool  # stored without any k8s:enc: prefix
    opened: Opened | None = field(default=None, repr=False)
    problem: str | None = None  # an UnavailableError's message, for UNAVAILABLE


def classify(
    chains: Chains,
    kv: KeyValue,
    *,
    resource: str | None = None,
    etcd_prefix: str | None = None,
    read_unprefixed: bool = False,
) -> Finding:
    """Inspect and try to open one value. Raises nothing for any content of the value."""
    name = resource or resource_from_key(kv.key, etcd_prefix=etcd_prefix)
    info: ValueInfo | None
    try:
        info = inspect_value(kv.value)
    except InvalidArgument:
        info = None
    provider = info.provider if info else "unknown"
    key_name = info.key_name if info else ""
    key_id = info.key_id if info else None
    plaintext = provider == "identity"
    if name is None:
        return Finding(kv.key, None, Verdict.NO_RESOURCE, provider, key_name, key_id, plaintext)
    if info is None:
        return Finding(kv.key, name, Verdict.UNDECRYPTABLE, provider, key_name, key_id, plaintext)
    try:
        opened = _chain(chains, name, read_unprefixed=read_unprefixed).open(kv.value, aad=kv.key)
    except DecryptionError:
        return Finding(kv.key, name, Verdict.UNDECRYPTABLE, provider, key_name, key_id, plaintext)
    except UnavailableError as exc:
        return Finding(
            kv.key,
            name,
            Verdict.UNAVAILABLE,
            provider,
            key_name,
            key_id,
            plaintext,
            problem=str(exc),
        )
    return Finding(
        kv.key,
        name,
        Verdict.STALE if opened.stale else Verdict.CURRENT,
        opened.provider,
        opened.key_name,
        opened.key_id,
        plaintext,
        opened=opened,
    )


# --------------------------------------------------------------------------- audit


@dataclass
class ResourceCounts:
    total: int = 0
    current: int = 0
    stale: int = 0
    undecryptable: int = 0
    unavailable: int = 0
    plaintext: int = 0

    def to_json_dict(self) -> dict[str, JsonValue]:
        return {
            "total": self.total,
            "current": self.current,
            "stale": self.stale,
            "undecryptable": self.undecryptable,
            "unavailable": self.unavailable,
            "plaintext": self.plaintext,
        }


@dataclass
class AuditReport:
    """Counts over every value under one prefix (see :func:`audit`)."""

    prefix: str
    total: int = 0
    resources: dict[str, ResourceCounts] = field(default_factory=dict)
    providers: Counter[tuple[str, str, str | None]] = field(default_factory=Counter)
    no_resource: int = 0
    undecryptable_keys: list[str] = field(default_factory=list)
    unavailable_keys: list[str] = field(default_factory=list)
    first_problem: str | None = None

    def _sum(self, name: str) -> int:
        return sum(getattr(c, name) for c in self.resources.values())

    @property
    def current(self) -> int:
        return self._sum("current")

    @property
    def stale(self) -> int:
        return self._sum("stale")

    @property
    def undecryptable(self) -> int:
        return self._sum("undecryptable")

    @property
    def unavailable(self) -> int:
        return self._sum("unavailable")

    @property
    def plaintext(self) -> int:
        return self._sum("plaintext")

    def add(self, finding: Finding) -> None:
        self.total += 1
        if finding.verdict is Verdict.NO_RESOURCE or finding.resource is None:
            self.no_resource += 1
            return
        counts = self.resources.setdefault(finding.resource, ResourceCounts())
        counts.total += 1
        counts.plaintext += finding.plaintext
        self.providers[(finding.provider, finding.key_name, finding.key_id)] += 1
        if finding.verdict is Verdict.CURRENT:
            counts.current += 1
        elif finding.verdict is Verdict.STALE:
            counts.stale += 1
        elif finding.verdict is Verdict.UNDECRYPTABLE:
            counts.undecryptable += 1
            _sample(self.undecryptable_keys, finding.key)
        else:
            counts.unavailable += 1
            _sample(self.unavailable_keys, finding.key)
            if self.first_problem is None:
                self.first_problem = finding.problem

    def to_json_dict(self) -> dict[str, JsonValue]:
        return {
            "prefix": self.prefix,
            "total": self.total,
            "current": self.current,
            "stale": self.stale,
            "undecryptable": self.undecryptable,
            "unavailable": self.unavailable,
            "plaintext": self.plaintext,
            "no_resource": self.no_resource,
            "resources": {
                name: self.resources[name].to_json_dict() for name in sorted(self.resources)
            },
            "providers": [
                {"provider": p, "key_name": n, "key_id": i, "count": c}
                for (p, n, i), c in sorted(
                    self.providers.items(),
                    key=lambda item: (item[0][0], item[0][1], item[0][2] or ""),
                )
            ],
            "undecryptable_keys": list(self.undecryptable_keys),
            "unavailable_keys": list(self.unavailable_keys),
            "first_unavailable_error": self.first_problem,
        }


def audit(
    store: KvStore,
    chains: Chains,
    prefix: bytes,
    *,
    etcd_prefix: str | None = None,
    read_unprefixed: bool = False,
    page_limit: int = DEFAULT_PAGE_LIMIT,
    progress: Progress | None = None,
) -> AuditReport:
    """Classify every value under ``prefix`` (one consistent snapshot) and count.

    Raises StoreUnavailable (the store did not answer), Conflict (the snapshot was compacted
    mid-walk), InvalidArgument (a bad page limit). Value contents never raise.
    """
    report = AuditReport(prefix=_show(prefix))
    for kv in store.range_prefix(prefix, limit=page_limit):
        report.add(classify(chains, kv, etcd_prefix=etcd_prefix, read_unprefixed=read_unprefixed))
        if progress is not None:
            progress(1)
    return report


# --------------------------------------------------------------------------- migration


@dataclass
class ReencryptReport:
    """What a migration did (see :func:`reencrypt_values`)."""

    scanned: int = 0
    rewritten: int = 0
    conflicts: int = 0
    current: int = 0
    undecryptable: int = 0
    unavailable: int = 0
    no_resource: int = 0
    dry_run: bool = False
    conflict_keys: list[str] = field(default_factory=list)
    undecryptable_keys: list[str] = field(default_factory=list)
    unavailable_keys: list[str] = field(default_factory=list)
    first_problem: str | None = None

    def to_json_dict(self) -> dict[str, JsonValue]:
        return {
            "dry_run": self.dry_run,
            "scanned": self.scanned,
            "rewritten": self.rewritten,
            "conflicts": self.conflicts,
            "current": self.current,
            "undecryptable": self.undecryptable,
            "unavailable": self.unavailable,
            "no_resource": self.no_resource,
            "conflict_keys": list(self.conflict_keys),
            "undecryptable_keys": list(self.undecryptable_keys),
            "unavailable_keys": list(self.unavailable_keys),
            "first_unavailable_error": self.first_problem,
        }


def reencrypt_values(
    store: KvStore,
    chains: Chains,
    values: Iterable[KeyValue],
    *,
    resource: str | None = None,
    etcd_prefix: str | None = None,
    read_unprefixed: bool = False,
    dry_run: bool = False,
    batch_size: int = MAX_TXN_OPS,
    progress: Progress | None = None,
) -> ReencryptReport:
    """Rewrite the stale ones of ``values`` (as read, with their mod_revisions) under the
    first provider of their chain, in CAS batches of ``batch_size``.

    A value changed since it was read is left as it now is and counted in ``conflicts``.
    With ``dry_run`` nothing is written and ``rewritten`` counts what would be.

    Raises InvalidArgument (``batch_size`` < 1; the first provider cannot write, e.g. KMS
    v1), PluginError (no KMS v2 write state: nothing further is written), StoreUnavailable
    (the store did not answer; batches already sent stay applied, and a rerun is safe).
    """
    if batch_size < 1:
        raise InvalidArgument(f"batch size must be at least 1, got {batch_size}")
    report = ReencryptReport(dry_run=dry_run)
    pending: list[CasPut] = []

    def flush() -> None:
        if not pending:
            return
        if dry_run:
            report.rewritten += len(pending)
        else:
            for op, written in zip(pending, store.cas_batch(pending), strict=True):
                if written:
                    report.rewritten += 1
                else:
                    report.conflicts += 1
                    _sample(report.conflict_keys, op.key)
        if progress is not None:
            progress(len(pending))
        pending.clear()

    for kv in values:
        report.scanned += 1
        finding = classify(
            chains,
            kv,
            resource=resource,
            etcd_prefix=etcd_prefix,
            read_unprefixed=read_unprefixed,
        )
        if finding.verdict is Verdict.STALE and finding.opened is not None:
            assert finding.resource is not None
            chain = _chain(chains, finding.resource, read_unprefixed=read_unprefixed)
            sealed = chain.seal(finding.opened.plaintext, aad=kv.key)
            pending.append(CasPut(key=kv.key, value=sealed, mod_revision=kv.mod_revision))
            if len(pending) >= batch_size:
                flush()
            continue
        if finding.verdict is Verdict.CURRENT:
            report.current += 1
        elif finding.verdict is Verdict.UNDECRYPTABLE:
            report.undecryptable += 1
            _sample(report.undecryptable_keys, kv.key)
        elif finding.verdict is Verdict.UNAVAILABLE:
            report.unavailable += 1
            _sample(report.unavailable_keys, kv.key)
            if report.first_problem is None:
                report.first_problem = finding.problem
        else:
            report.no_resource += 1
        if progress is not None:
            progress(1)
    flush()
    return report


def reencrypt(
    store: KvStore,
    chains: Chains,
    prefix: bytes,
    *,
    etcd_prefix: str | None = None,
    read_unprefixed: bool = False,
    dry_run: bool = False,
    page_limit: int = DEFAULT_PAGE_LIMIT,
    batch_size: int = MAX_TXN_OPS,
    progress: Progress | None = None,
) -> ReencryptReport:
    """:func:`reencrypt_values` over every value under ``prefix``, read as one snapshot.

    Raises as :func:`reencrypt_values`, and Conflict (the snapshot was compacted mid-walk;
    run again).
    """
    return reencrypt_values(
        store,
        chains,
        store.range_prefix(prefix, limit=page_limit),
        etcd_prefix=etcd_prefix,
        read_unprefixed=read_unprefixed,
        dry_run=dry_run,
        batch_size=batch_size,
        progress=progress,
    )


# --------------------------------------------------------------------------- helpers


def _sample(keys: list[str], key: bytes) -> None:
    if len(keys) < SAMPLE_KEYS:
        keys.append(_show(key))


def _show(key: bytes) -> str:
    return key.decode("utf-8", errors="backslashreplace")
