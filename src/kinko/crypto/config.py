"""The EncryptionConfiguration loader: parse, default and validate the file kube-apiserver reads.

kinko is driven by the very file given to kube-apiserver as ``--encryption-provider-config``.
This module turns its bytes into frozen value objects, applies upstream's defaults and every
rule of upstream's validation, and answers which providers protect a resource. It is pure:
callers read the file, and ``build_chains`` receives the KMS connectors from them.

Invariants:

- What kube-apiserver accepts with ``--encryption-provider-config-automatic-reload=true``, this
  module accepts, and what it rejects, this module rejects; the exceptions are deliberate.
  Rejected although upstream accepts: a key name used twice in one provider and a ``unix://``
  endpoint naming no socket (both dead configuration), and text with lone surrogates.
  Accepted although upstream, by default since 1.29, refuses: KMS v1 providers (the KMSv1
  feature gate), which kinko only ever reads.
- Decoding is strict, as in kube-apiserver: unknown fields, duplicate keys and wrong types are
  errors. A ``null`` value means "not set", as it does for Go's JSON decoder.
- Every error is a :class:`~kinko.errors.ConfigError` naming the offending field path, e.g.
  ``resources[1].providers[0].aescbc.keys[0].secret``, and saying what was expected and what
  came. No message ever contains a secret, whole or in part; inside a key entry even unknown
  field names are withheld, since a mis-indented secret would show up as one.
- Only the first error, in document order, is reported.

Lookup follows ``config.go``: an exact ``group/resource`` rule, then ``group/*``, then ``*/*``,
and else nothing (identity, not encrypted). A resource named in several entries collects the
providers of all of them, in file order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

import yaml

from kinko.crypto.chain import ProviderChain
from kinko.crypto.formats import AesCbc, AesGcm, Identity, KmsV1, KmsV2, Secretbox
from kinko.crypto.types import KmsV1Unwrapper, KmsV2Keys, Rng, Transformer
from kinko.errors import ConfigError

__all__ = [
    "AesConfig",
    "EncryptionChains",
    "EncryptionConfig",
    "GroupResource",
    "IdentityConfig",
    "KeyConfig",
    "KmsConfig",
    "ProviderConfig",
    "ProviderRef",
    "ResourceConfig",
    "SecretboxConfig",
    "build_chains",
    "config_hash",
    "parse_encryption_config",
    "parse_go_duration",
    "parse_group_resource",
]

API_VERSION: Final = "apiserver.config.k8s.io/v1"
KIND: Final = "EncryptionConfiguration"
#: Still accepted by kube-apiserver "due to a docs bug" (``register.go``).
LEGACY_API_VERSION: Final = "v1"
LEGACY_KIND: Final = "EncryptionConfig"

DEFAULT_KMS_TIMEOUT_SECONDS: Final = 3.0
DEFAULT_KMS_V1_CACHE_SIZE: Final = 1000
AES_KEY_SIZES: Final = (16, 24, 32)
SECRETBOX_KEY_SIZES: Final = (32,)

#: Resources without a REST API; kube-apiserver refuses to encrypt them.
NON_REST_RESOURCES: Final = frozenset(
    {"apiserveripinfo", "serviceipallocations", "servicenodeportallocations"}
)

#: Provider field names in the order upstream's types declare them.
PROVIDER_KINDS: Final = ("aesgcm", "aescbc", "secretbox", "identity", "kms")

# A config file has a few dozen nodes; this bound only stops alias bombs, where a short
# document of nested YAML aliases would expand to billions of nodes.
_MAX_NODES: Final = 100_000
_MAX_QUOTED: Final = 120


# --------------------------------------------------------------------------- value objects


@dataclass(frozen=True, slots=True, order=True)
class GroupResource:
    """A ``schema.GroupResource``; ``group`` is ``""`` for the core group, ``"*"`` for any."""

    group: str
    resource: str

    def __str__(self) -> str:
        """The form written in the file (upstream's ``grYAMLString``): ``secrets``, ``*.apps``."""
        if not self.group:
            return "*." if self.resource == "*" else self.resource
        return f"{self.resource}.{self.group}"


ANY_GROUP_ANY_RESOURCE: Final = GroupResource("*", "*")


def parse_group_resource(resource: str) -> GroupResource:
    """Split ``resource.group`` at the first dot, exactly like ``schema.ParseGroupResource``.

    ``secrets`` → ("", "secrets"); ``deployments.apps`` → ("apps", "deployments");
    ``*.`` → ("", "*"); ``*.*`` → ("*", "*"); ``*.apps`` → ("apps", "*"). Raises nothing.
    """
    name, dot, group = resource.partition(".")
    return GroupResource(group if dot else "", name)


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """One named key of an aescbc, aesgcm or secretbox provider; ``secret`` is the raw key."""

    name: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """The identity provider: values are stored as plaintext."""

    @property
    def kind(self) -> Literal["identity"]:
        return "identity"


@dataclass(frozen=True, slots=True)
class AesConfig:
    """An aescbc or aesgcm provider; each key is one transformer, the first one writes."""

    kind: Literal["aescbc", "aesgcm"]
    keys: tuple[KeyConfig, ...]


@dataclass(frozen=True, slots=True)
class SecretboxConfig:
    """A secretbox provider (XSalsa20-Poly1305); each key is one transformer."""

    keys: tuple[KeyConfig, ...]

    @property
    def kind(self) -> Literal["secretbox"]:
        return "secretbox"


@dataclass(frozen=True, slots=True)
class KmsConfig:
    """A KMS provider with upstream's defaults applied.

    ``cachesize`` is ``None`` for v2 (not allowed there) and defaults to 1000 for v1; a
    negative value disables the v1 DEK cache.
    """

    api_version: Literal["v1", "v2"]
    name: str
    endpoint: str
    timeout_seconds: float = DEFAULT_KMS_TIMEOUT_SECONDS
    cachesize: int | None = None

    @property
    def kind(self) -> Literal["kms"]:
        return "kms"

    @property
    def socket_address(self) -> str:
        """The address to dial, as ``kms/pkg/util.ParseEndpoint`` derives it.

        ``unix:///var/run/kms.sock`` → ``/var/run/kms.sock``; ``unix:///@name`` → ``@name``
        (a Linux abstract socket). Raises ConfigError (an endpoint that does not parse).
        """
        try:
            return _socket_address(self.endpoint)
        except _EndpointError as exc:
            raise ConfigError("endpoint", exc.message) from None


ProviderConfig: TypeAlias = IdentityConfig | AesConfig | SecretboxConfig | KmsConfig


@dataclass(frozen=True, slots=True)
class ResourceConfig:
    """One entry of ``resources``: resource names as written, and their providers in order."""

    resources: tuple[str, ...]
    providers: tuple[ProviderConfig, ...]

    @property
    def group_resources(self) -> tuple[GroupResource, ...]:
        return tuple(parse_group_resource(r) for r in self.resources)


ProviderRef: TypeAlias = tuple[str, ProviderConfig]
"""A provider with its field path, e.g. ``("resources[1].providers[0]", AesConfig(...))``."""


@dataclass(frozen=True, slots=True)
class EncryptionConfig:
    """A parsed, defaulted and validated EncryptionConfiguration."""

    resources: tuple[ResourceConfig, ...]
    _rules: Mapping[GroupResource, tuple[ProviderRef, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        rules: dict[GroupResource, list[ProviderRef]] = {}
        for i, entry in enumerate(self.resources):
            refs = [(f"resources[{i}].providers[{j}]", p) for j, p in enumerate(entry.providers)]
            for gr in entry.group_resources:
                rules.setdefault(gr, []).extend(refs)
        object.__setattr__(self, "_rules", {gr: tuple(refs) for gr, refs in rules.items()})

    def rule_for(self, resource: str) -> GroupResource | None:
        """The rule that governs ``resource``: exact, then ``group/*``, then ``*/*``; else None.

        Raises nothing.
        """
        gr = parse_group_resource(resource)
        for candidate in (gr, GroupResource(gr.group, "*"), ANY_GROUP_ANY_RESOURCE):
            if candidate in self._rules:
                return candidate
        return None

    def providers_for(self, resource: str) -> tuple[ProviderRef, ...]:
        """The providers for ``resource`` (e.g. ``secrets``, ``deployments.apps``) in order.

        An empty tuple means no rule matches: the resource is stored as plaintext (identity).
        Raises nothing.
        """
        rule = self.rule_for(resource)
        return () if rule is None else self._rules[rule]

    @property
    def kms_providers(self) -> tuple[KmsConfig, ...]:
        """Every KMS provider of the file, in file order (names are unique)."""
        return tuple(
            p for entry in self.resources for p in entry.providers if isinstance(p, KmsConfig)
        )


def config_hash(data: bytes) -> str:
    """``sha256:<hex>`` of the raw file bytes, to detect a changed file. Raises nothing."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- YAML reading


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, made to read a document the way kube-apiserver does.

    Duplicate keys are errors (upstream decodes strictly), and unquoted dates and
    sexagesimal numbers stay strings (Go's YAML decoder makes timestamps only for time-typed
    fields, of which there are none here, and knows no base-60 numbers).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                # An unhashable key; the base constructor reports it with its position.
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {_quote(str(key))}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _go_yaml_resolver(tag: str, pattern: re.Pattern[str]) -> tuple[str, re.Pattern[str]]:
    """Go's YAML decoder has no sexagesimal numbers: ``1:30`` stays a string there."""
    if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        return tag, re.compile("(?!.*:)" + pattern.pattern, pattern.flags)
    return tag, pattern


_StrictLoader.yaml_implicit_resolvers = {
    first: [
        _go_yaml_resolver(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load_yaml(data: bytes | str) -> object:
    """The single YAML (or JSON) document in ``data``. Raises ConfigError (path "")."""
    loader: _StrictLoader | None = None
    try:
        # The reader already decodes and checks the text when the loader is created.
        loader = _StrictLoader(data)
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        raise ConfigError("", _yaml_error_message(exc)) from None
    except yaml.YAMLError as exc:
        # Reader errors (bad encoding, non-printable characters) carry no snippet.
        raise ConfigError(
            "", f"expected a YAML or JSON document, got unreadable text: {exc}"
        ) from None
    except RecursionError:
        raise ConfigError(
            "", "expected a YAML or JSON document, got one nested too deeply"
        ) from None
    except (ValueError, TypeError, OverflowError):
        # A tagged scalar (e.g. ``!!int x``) whose value does not convert. The exception text
        # would quote the value, which might be a secret, so it is left out.
        raise ConfigError(
            "", "expected a YAML or JSON document, got a tagged value that does not convert"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_error_message(exc: yaml.MarkedYAMLError) -> str:
    # PyYAML's own str() quotes the offending line, which may hold a secret; only the
    # problem and its position are used.
    parts = [p for p in (exc.context, exc.problem) if p]
    message = "; ".join(parts) or "malformed document"
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"expected a valid YAML or JSON document, got a syntax error{where}: {message}"


# --------------------------------------------------------------------------- parsing


def parse_encryption_config(data: bytes | str) -> EncryptionConfig:
    """Parse, default and validate an EncryptionConfiguration (YAML or JSON).

    Accepts ``apiVersion: apiserver.config.k8s.io/v1, kind: EncryptionConfiguration`` and the
    legacy ``apiVersion: v1, kind: EncryptionConfig``.

    Raises ConfigError: the first problem found, with the path of the offending field.
    """
    return _Parser().document(_load_yaml(data))


class _Parser:
    """One parse: decodes, defaults and validates in document order, raising the first error."""

    def __init__(self) -> None:
        self._nodes = 0
        self._kms_names: dict[str, str] = {}  # name → path where it first appeared
        self._rules: dict[GroupResource, str] = {}  # rule → path where it first appeared

    # -- generic decoding

    def _count(self) -> None:
        self._nodes += 1
        if self._nodes > _MAX_NODES:
            raise ConfigError(
                "",
                f"expected a configuration of at most {_MAX_NODES} nodes once YAML aliases "
                "are expanded, got more",
            )

    def _mapping(
        self, value: object, path: str, fields: tuple[str, ...], *, hide_unknown: bool = False
    ) -> dict[str, object]:
        """A mapping with only known fields; ``null`` is an empty mapping (Go's zero value)."""
        self._count()
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {_describe(value)}")
        result: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str) or key not in fields:
                expected = _expected_fields(fields)
                if hide_unknown:
                    raise ConfigError(
                        path,
                        f"{expected}, got another field (its name is not shown, since in a key "
                        "entry it may be key material)",
                    )
                shown = _quote(key) if isinstance(key, str) else f"({_describe(key)} key)"
                raise ConfigError(_child(path, str(key)), f"unknown field {shown}; {expected}")
            result[key] = item
        return result

    def _list(self, value: object, path: str) -> list[object]:
        """A list; ``null`` is an empty list."""
        self._count()
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {_describe(value)}")
        return value

    def _string(self, value: object, path: str, *, what: str = "a string") -> str:
        """A string; ``null`` is the empty string. The value is never quoted in errors."""
        self._count()
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(path, f"expected {what}, got {_describe(value)}")
        if not _is_unicode(value):
            # YAML escapes can produce lone surrogates, which no name or secret may hold.
            raise ConfigError(path, f"expected {what} of valid Unicode, got a lone surrogate")
        return value

    # -- the document

    def document(self, doc: object) -> EncryptionConfig:
        if doc is None:
            raise ConfigError("", f"expected an {KIND} mapping, got an empty document")
        if not isinstance(doc, dict):
            raise ConfigError("", f"expected an {KIND} mapping, got {_describe(doc)}")
        top = self._mapping(doc, "", ("apiVersion", "kind", "resources"))
        api_version = self._string(top.get("apiVersion"), "apiVersion")
        kind = self._string(top.get("kind"), "kind")
        if api_version not in (API_VERSION, LEGACY_API_VERSION):
            raise ConfigError(
                "apiVersion",
                f"expected {API_VERSION} (or {LEGACY_API_VERSION} with kind {LEGACY_KIND}), "
                f"got {_quote_or_none(api_version)}",
            )
        expected_kind = KIND if api_version == API_VERSION else LEGACY_KIND
        if kind != expected_kind:
            raise ConfigError(
                "kind",
                f"expected {expected_kind} with apiVersion {api_version}, "
                f"got {_quote_or_none(kind)}",
            )
        raw_entries = self._list(top.get("resources"), "resources")
        if not raw_entries:
            raise ConfigError("resources", "expected at least one entry, got none")
        entries = tuple(self._entry(raw, f"resources[{i}]") for i, raw in enumerate(raw_entries))
        return EncryptionConfig(entries)

    def _entry(self, value: object, path: str) -> ResourceConfig:
        m = self._mapping(value, path, ("resources", "providers"))
        resources_path = f"{path}.resources"
        names = tuple(
            self._string(item, f"{resources_path}[{j}]")
            for j, item in enumerate(self._list(m.get("resources"), resources_path))
        )
        raw_providers = self._list(m.get("providers"), f"{path}.providers")
        if not names:
            raise ConfigError(resources_path, "expected at least one resource, got none")
        _check_overlap(names, resources_path)
        for j, name in enumerate(names):
            _check_resource_name(name, f"{resources_path}[{j}]")
        if not raw_providers:
            raise ConfigError(f"{path}.providers", "expected at least one provider, got none")
        providers = tuple(
            self._provider(raw, f"{path}.providers[{j}]") for j, raw in enumerate(raw_providers)
        )
        # Masking is checked after the entry itself is valid, as upstream checks it only
        # while building transformers from a validated file.
        for j, name in enumerate(names):
            self._check_masking(parse_group_resource(name), f"{resources_path}[{j}]")
        return ResourceConfig(names, providers)

    def _check_masking(self, gr: GroupResource, path: str) -> None:
        for rule in (GroupResource(gr.group, "*"), ANY_GROUP_ANY_RESOURCE):
            if rule in self._rules:
                raise ConfigError(
                    path,
                    f"resource {_quote(str(gr))} is masked by earlier rule {_quote(str(rule))} "
                    f"(at {self._rules[rule]}); expected specific rules before wildcard rules",
                )
        self._rules.setdefault(gr, path)

    # -- providers

    def _provider(self, value: object, path: str) -> ProviderConfig:
        m = self._mapping(value, path, PROVIDER_KINDS)
        present = [k for k in PROVIDER_KINDS if m.get(k) is not None]
        if not present:
            hint = ""
            nulls = [k for k in PROVIDER_KINDS if k in m]
            if nulls:
                hint = f" ({nulls[0]}: null counts as absent; write {nulls[0]}: {{}} or fill it in)"
            raise ConfigError(
                path, f"expected exactly one of {', '.join(PROVIDER_KINDS)}, got none{hint}"
            )
        if len(present) > 1:
            raise ConfigError(
                path,
                f"expected exactly one provider per list element, got {len(present)} "
                f"({', '.join(present)}); split them into separate list elements",
            )
        kind = present[0]
        sub = f"{path}.{kind}"
        if kind == "identity":
            self._mapping(m[kind], sub, ())
            return IdentityConfig()
        if kind == "kms":
            return self._kms(m[kind], sub)
        keys_map = self._mapping(m[kind], sub, ("keys",))
        if kind == "secretbox":
            return SecretboxConfig(self._keys(keys_map.get("keys"), f"{sub}.keys", kind))
        aes_kind: Literal["aescbc", "aesgcm"] = "aescbc" if kind == "aescbc" else "aesgcm"
        return AesConfig(aes_kind, self._keys(keys_map.get("keys"), f"{sub}.keys", kind))

    def _keys(self, value: object, path: str, kind: str) -> tuple[KeyConfig, ...]:
        items = self._list(value, path)
        if not items:
            raise ConfigError(path, "expected at least one key, got none")
        sizes = SECRETBOX_KEY_SIZES if kind == "secretbox" else AES_KEY_SIZES
        keys: list[KeyConfig] = []
        first_seen: dict[str, int] = {}
        for i, item in enumerate(items):
            key_path = f"{path}[{i}]"
            m = self._mapping(item, key_path, ("name", "secret"), hide_unknown=True)
            name = self._string(m.get("name"), f"{key_path}.name")
            secret_text = self._string(
                m.get("secret"), f"{key_path}.secret", what="a base64 string"
            )
            if not name:
                raise ConfigError(f"{key_path}.name", "expected a key name, got none")
            if not secret_text:
                raise ConfigError(f"{key_path}.secret", "expected a base64 secret, got none")
            secret = _decode_secret(secret_text, f"{key_path}.secret", sizes)
            if name in first_seen:
                # kube-apiserver accepts this silently, but a value written under the second
                # key could never be read: reads pick the first key with a matching prefix.
                raise ConfigError(
                    f"{key_path}.name",
                    f"expected key names unique within the provider, got {_quote(name)} again "
                    f"(first at {path}[{first_seen[name]}])",
                )
            first_seen[name] = i
            keys.append(KeyConfig(name, secret))
        return tuple(keys)

    def _kms(self, value: object, path: str) -> KmsConfig:
        m = self._mapping(value, path, ("apiVersion", "name", "cachesize", "endpoint", "timeout"))
        api_version = self._string(m.get("apiVersion"), f"{path}.apiVersion") or "v1"
        name = self._string(m.get("name"), f"{path}.name")
        endpoint = self._string(m.get("endpoint"), f"{path}.endpoint")
        timeout_ns = self._duration(m.get("timeout"), f"{path}.timeout")
        cachesize = self._int32(m.get("cachesize"), f"{path}.cachesize")

        if api_version not in ("v1", "v2"):
            raise ConfigError(
                f"{path}.apiVersion", f'expected "v1" or "v2", got {_quote(api_version)}'
            )
        name_path = f"{path}.name"
        if not name:
            raise ConfigError(name_path, "expected a KMS provider name, got none")
        if api_version == "v2" and ":" in name:
            raise ConfigError(
                name_path,
                f"expected a KMS v2 name without ':', got {_quote(name)} (the name is part of "
                "the k8s:enc:kms:v2:<name>: prefix)",
            )
        if name in self._kms_names:
            # Upstream demands this of v1 names too whenever automatic reload is on; kinko
            # always reloads, and a name must identify one plugin connection.
            raise ConfigError(
                name_path,
                f"expected KMS provider names unique across the file, got {_quote(name)} again "
                f"(first at {self._kms_names[name]})",
            )
        self._kms_names[name] = name_path
        if timeout_ns is None:
            timeout_seconds = DEFAULT_KMS_TIMEOUT_SECONDS
        elif timeout_ns <= 0:
            raise ConfigError(
                f"{path}.timeout",
                f"expected a positive duration, got {_quote(str(m.get('timeout')))}",
            )
        else:
            timeout_seconds = timeout_ns / 1e9
        if not endpoint:
            raise ConfigError(
                f"{path}.endpoint",
                "expected a unix socket URL such as unix:///var/run/kms.sock, got none",
            )
        try:
            _socket_address(endpoint)
        except _EndpointError as exc:
            raise ConfigError(f"{path}.endpoint", exc.message) from None
        if api_version == "v2":
            if cachesize is not None:
                raise ConfigError(
                    f"{path}.cachesize",
                    f"expected no cachesize with apiVersion v2 (it applies to KMS v1 only), "
                    f"got {cachesize}",
                )
            return KmsConfig("v2", name, endpoint, timeout_seconds, None)
        if cachesize == 0:
            raise ConfigError(
                f"{path}.cachesize",
                "expected a positive cache size, or a negative one to disable the cache, got 0",
            )
        if cachesize is None:
            cachesize = DEFAULT_KMS_V1_CACHE_SIZE
        return KmsConfig("v1", name, endpoint, timeout_seconds, cachesize)

    def _duration(self, value: object, path: str) -> int | None:
        """A Go duration string in nanoseconds; ``None`` when not set."""
        self._count()
        if value is None:
            return None
        if not isinstance(value, str):
            hint = " (a bare number has no unit)" if _is_number(value) else ""
            raise ConfigError(
                path, f'expected a duration string such as "3s", got {_describe(value)}{hint}'
            )
        nanoseconds = parse_go_duration(value)
        if nanoseconds is None:
            raise ConfigError(
                path,
                f'expected a Go duration such as "3s", "500ms" or "1m30s", got {_quote(value)}',
            )
        return nanoseconds

    def _int32(self, value: object, path: str) -> int | None:
        self._count()
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {_describe(value)}")
        if not -(2**31) <= value < 2**31:
            raise ConfigError(path, f"expected a 32-bit integer, got {value}")
        return value


# --------------------------------------------------------------------------- field rules


def _decode_secret(text: str, path: str, sizes: tuple[int, ...]) -> bytes:
    """Standard base64 as Go's ``base64.StdEncoding`` reads it: padded, CR and LF ignored."""
    compact = text.replace("\r", "").replace("\n", "")
    try:
        secret = base64.b64decode(compact.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        hint = ""
        if "-" in compact or "_" in compact:
            hint = " (it looks like URL-safe base64; use the standard alphabet with + and /)"
        elif compact.isascii() and len(compact) % 4:
            hint = f" (its length {len(compact)} is not a multiple of 4; is = padding missing?)"
        raise ConfigError(
            path, f"expected standard base64, got text that does not decode{hint}"
        ) from None
    if len(secret) not in sizes:
        expected = (
            ", ".join(str(s) for s in sizes[:-1]) + f" or {sizes[-1]}"
            if len(sizes) > 1
            else str(sizes[0])
        )
        raise ConfigError(path, f"expected base64 of {expected} bytes, got {len(secret)} bytes")
    return secret


def _check_overlap(names: tuple[str, ...], path: str) -> None:
    """No resource twice and no wildcard beside what it covers, within one list.

    Upstream compares every pair; this finds the same first offender in linear time.
    """
    parsed = [parse_group_resource(n) for n in names]
    first: dict[GroupResource, int] = {}
    for j, gr in enumerate(parsed):
        i = first.setdefault(gr, j)
        if i != j:
            raise ConfigError(
                f"{path}[{j}]",
                f"expected each resource once per list, got {_quote(names[j])}, "
                f"the same as {_quote(names[i])} at {path}[{i}]",
            )
    any_index: int | None = None
    group_first: dict[str, int] = {}
    group_wildcard: dict[str, int] = {}
    for j, gr in enumerate(parsed):
        candidates = [any_index, group_wildcard.get(gr.group)]
        if gr == ANY_GROUP_ANY_RESOURCE and j > 0:
            candidates.append(0)
        if gr.resource == "*":
            candidates.append(group_first.get(gr.group))
        earlier = [i for i in candidates if i is not None]
        if earlier:
            i = min(earlier)
            raise ConfigError(
                f"{path}[{j}]",
                f"expected no overlapping resources in one list, got {_quote(names[j])} "
                f"overlapping {_quote(names[i])} at {path}[{i}] (one would mask the other)",
            )
        if gr == ANY_GROUP_ANY_RESOURCE:
            any_index = j
        if gr.resource == "*":
            group_wildcard.setdefault(gr.group, j)
        group_first.setdefault(gr.group, j)


def _check_resource_name(name: str, path: str) -> None:
    if name.lower() != name:
        raise ConfigError(path, f"expected a lowercase resource name, got {_quote(name)}")
    if name == "*":
        raise ConfigError(
            path,
            'expected "*." for all core resources or "*.*" for all resources, got "*"',
        )
    if name in NON_REST_RESOURCES:
        raise ConfigError(
            path,
            f"expected a resource with a REST API, got {_quote(name)}, which has none and "
            "cannot be encrypted",
        )
    gr = parse_group_resource(name)
    if gr.group == "events.k8s.io":
        raise ConfigError(
            path,
            f"expected events (events.k8s.io objects are stored as core events), "
            f"got {_quote(name)}",
        )
    if gr.group == "extensions":
        raise ConfigError(
            path,
            f"expected a served API group, got {_quote(name)} (the extensions group has been "
            "removed and cannot be encrypted)",
        )
    if gr.group == "*" and gr.resource != "*":
        raise ConfigError(
            path,
            f"expected a resource in one group, got {_quote(name)} (encrypting a resource "
            "across all groups is not supported)",
        )


# --------------------------------------------------------------------------- endpoint URLs


class _EndpointError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


_SCHEME_CHARS: Final = frozenset("+-.0123456789")
_HOST_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:[]<>\"%"
)
_USERINFO_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:~!$&'()*+,;=%@"
)
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _socket_address(endpoint: str) -> str:
    """Parse ``endpoint`` as Go's ``url.Parse`` would and return what kube-apiserver dials.

    Upstream validation only needs scheme ``unix``; the dialler then uses the URL path, and
    ``/@name`` means the abstract socket ``@name``. A host part is ignored, as upstream
    ignores it. Raises _EndpointError.
    """
    quoted = _quote(endpoint)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in endpoint):
        raise _EndpointError(
            f"expected a unix:// URL, got {quoted}, which contains a control character"
        )
    rest = endpoint.partition("#")[0]
    scheme = ""
    for i, c in enumerate(rest):
        if c.isascii() and c.isalpha():
            continue
        if c in _SCHEME_CHARS and i > 0:
            continue
        if c == ":" and i > 0:
            scheme, rest = rest[:i], rest[i + 1 :]
        break
    if scheme.lower() != "unix":
        got = _quote(scheme) if scheme else "none"
        raise _EndpointError(
            f"expected scheme unix (only unix sockets are supported), got {got} in {quoted}"
        )
    rest = rest.partition("?")[0]
    path = ""
    if rest.startswith("//"):
        authority, slash, tail = rest[2:].partition("/")
        path = slash + tail
        _check_authority(authority, quoted)
    elif rest.startswith("/"):
        path = rest
    if _BAD_ESCAPE.search(path):
        raise _EndpointError(f"expected a unix:// URL, got {quoted}, which has a bad % escape")
    try:
        path = urllib.parse.unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise _EndpointError(
            f"expected a unix:// URL, got {quoted}, whose path is not UTF-8"
        ) from None
    if path in ("", "/", "/@"):
        raise _EndpointError(
            f"expected a socket path such as unix:///var/run/kms.sock or unix:///@name, "
            f"got {quoted}, which names no socket"
        )
    return path[1:] if path.startswith("/@") else path


def _digits(text: str) -> bool:
    """Go's ``validOptionalPort`` after the colon: ASCII digits, possibly none."""
    return all("0" <= c <= "9" for c in text)


def _check_authority(authority: str, quoted: str) -> None:
    userinfo, at, host = authority.rpartition("@")
    if at and not set(userinfo) <= _USERINFO_CHARS:
        raise _EndpointError(f"expected a unix:// URL, got {quoted}, with invalid userinfo")
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise _EndpointError(f"expected a unix:// URL, got {quoted}, with a missing ']'")
        port = host[end + 1 :]
        if port and not (port.startswith(":") and _digits(port[1:])):
            raise _EndpointError(f"expected a unix:// URL, got {quoted}, with an invalid port")
        return
    if ":" in host:
        port = host.rpartition(":")[2]
        if not _digits(port):
            raise _EndpointError(f"expected a unix:// URL, got {quoted}, with an invalid port")
    if any(c.isascii() and c not in _HOST_CHARS for c in host) or _BAD_ESCAPE.search(host):
        raise _EndpointError(
            f"expected a unix:// URL, got {quoted}, with an invalid character in the host"
        )


# --------------------------------------------------------------------------- durations

_NANOSECONDS_PER_UNIT: Final = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # MICRO SIGN
    "\u03bcs": 1_000,  # GREEK SMALL LETTER MU
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_MAX_DURATION: Final = 1 << 63


def parse_go_duration(text: str) -> int | None:
    """Nanoseconds of a Go ``time.ParseDuration`` string, or None where Go reports an error.

    ``"3s"`` → 3_000_000_000; ``"1m30s"``, ``"1.5h"``, ``"-2ms"`` and ``"0"`` work; a bare
    number other than 0 has no unit and is invalid. Overflow beyond int64 is invalid.
    Raises nothing.
    """
    s = text
    negative = False
    if s[:1] in ("-", "+"):
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        return None
    total = 0
    while s:
        if not (s[0] == "." or "0" <= s[0] <= "9"):
            return None
        i, whole = 0, 0
        while i < len(s) and "0" <= s[i] <= "9":
            if whole > _MAX_DURATION // 10:
                return None
            whole = whole * 10 + ord(s[i]) - 48
            if whole > _MAX_DURATION:
                return None
            i += 1
        before_dot = i > 0
        s = s[i:]
        fraction, scale, after_dot = 0, 1.0, False
        if s[:1] == ".":
            s = s[1:]
            i, overflow = 0, False
            while i < len(s) and "0" <= s[i] <= "9":
                if not overflow:
                    if fraction > (_MAX_DURATION - 1) // 10:
                        overflow = True
                    else:
                        fraction = fraction * 10 + ord(s[i]) - 48
                        scale *= 10
                i += 1
            after_dot = i > 0
            s = s[i:]
        if not (before_dot or after_dot):
            return None
        i = 0
        while i < len(s) and not (s[i] == "." or "0" <= s[i] <= "9"):
            i += 1
        unit = _NANOSECONDS_PER_UNIT.get(s[:i])
        if unit is None:
            return None
        s = s[i:]
        if whole > _MAX_DURATION // unit:
            return None
        value = whole * unit
        if fraction > 0:
            # Go computes the fraction in float64 and truncates; this reproduces it exactly.
            value += int(float(fraction) * (float(unit) / scale))
            if value > _MAX_DURATION:
                return None
        total += value
        if total > _MAX_DURATION:
            return None
    if negative:
        return -total
    if total > _MAX_DURATION - 1:
        return None
    return total


# --------------------------------------------------------------------------- messages


def _describe(value: object) -> str:
    """The YAML type of ``value``, never the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, bytes):
        return "binary data"
    return f"a {type(value).__name__} value"


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _quote(text: str) -> str:
    """Double-quoted like Go's %q, shortened; only for names that are never secrets."""
    if len(text) > _MAX_QUOTED:
        return json.dumps(text[:_MAX_QUOTED], ensure_ascii=False)[:-1] + '…"'
    return json.dumps(text, ensure_ascii=False)


def _quote_or_none(text: str) -> str:
    return _quote(text) if text else "none"


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _expected_fields(fields: tuple[str, ...]) -> str:
    if not fields:
        return "expected no fields"
    if len(fields) == 1:
        return f"expected only {fields[0]}"
    return f"expected only {', '.join(fields[:-1])} or {fields[-1]}"


# --------------------------------------------------------------------------- chains

KmsV2Factory: TypeAlias = Callable[[KmsConfig], KmsV2Keys]
KmsV1Factory: TypeAlias = Callable[[KmsConfig], KmsV1Unwrapper]


class EncryptionChains:
    """The provider chain of every resource under one configuration, built on first use.

    Chains are cached per list of providers, so every resource under ``*.*`` (or in one
    entry) shares one chain, and transformers are built once per provider. The KMS connectors
    are called at most once per KMS name, when a chain first needs that provider; a connector
    that raises leaves nothing cached, so the next ``chain_for`` tries again. Safe to share
    between threads.
    """

    __slots__ = (
        "_chains",
        "_config",
        "_kms_v1",
        "_kms_v1_ports",
        "_kms_v2",
        "_kms_v2_ports",
        "_lock",
        "_rng",
        "_transformers",
    )

    def __init__(
        self,
        config: EncryptionConfig,
        *,
        kms_v2: KmsV2Factory,
        kms_v1: KmsV1Factory,
        rng: Rng,
    ) -> None:
        self._config = config
        self._kms_v2 = kms_v2
        self._kms_v1 = kms_v1
        self._rng = rng
        self._lock = threading.Lock()
        self._chains: dict[tuple[str, ...], ProviderChain] = {}
        self._transformers: dict[str, tuple[Transformer, ...]] = {}
        self._kms_v2_ports: dict[str, KmsV2Keys] = {}
        self._kms_v1_ports: dict[str, KmsV1Unwrapper] = {}

    @property
    def config(self) -> EncryptionConfig:
        return self._config

    def chain_for(self, resource: str) -> ProviderChain:
        """The chain for ``resource`` (``secrets``, ``deployments.apps``); identity if unmatched.

        Resources with the same providers (one entry's list, or one wildcard rule) share one
        chain object. Raises whatever a KMS connector raises (e.g. PluginError), and
        InvalidArgument if a transformer refuses its key (a validated file never causes it).
        """
        refs = self._config.providers_for(resource)
        key = tuple(path for path, _ in refs)
        chain = self._chains.get(key)
        if chain is not None:
            return chain
        with self._lock:
            chain = self._chains.get(key)
            if chain is None:
                chain = self._build(refs)
                self._chains[key] = chain
            return chain

    def _build(self, refs: tuple[ProviderRef, ...]) -> ProviderChain:
        if not refs:
            return ProviderChain.identity()
        transformers: list[Transformer] = []
        for path, provider in refs:
            built = self._transformers.get(path)
            if built is None:
                built = self._transformers_of(provider)
                self._transformers[path] = built
            transformers.extend(built)
        return ProviderChain(transformers)

    def _transformers_of(self, provider: ProviderConfig) -> tuple[Transformer, ...]:
        rng = self._rng
        if isinstance(provider, IdentityConfig):
            return (Identity(),)
        if isinstance(provider, SecretboxConfig):
            return tuple(Secretbox(k.name, k.secret, rng=rng) for k in provider.keys)
        if isinstance(provider, AesConfig):
            cls = AesCbc if provider.kind == "aescbc" else AesGcm
            return tuple(cls(k.name, k.secret, rng=rng) for k in provider.keys)
        if provider.api_version == "v2":
            keys = self._kms_v2_ports.get(provider.name)
            if keys is None:
                keys = self._kms_v2(provider)
                self._kms_v2_ports[provider.name] = keys
            return (KmsV2(provider.name, keys, rng=rng),)
        unwrapper = self._kms_v1_ports.get(provider.name)
        if unwrapper is None:
            unwrapper = self._kms_v1(provider)
            self._kms_v1_ports[provider.name] = unwrapper
        return (KmsV1(provider.name, unwrapper),)


def build_chains(
    config: EncryptionConfig,
    *,
    kms_v2: KmsV2Factory,
    kms_v1: KmsV1Factory,
    rng: Rng,
) -> EncryptionChains:
    """Provider chains for ``config``; nothing is built, and no KMS is contacted, until used.

    ``kms_v2`` / ``kms_v1`` turn a KMS provider into the port its transformer needs (a plugin
    session, a gRPC client); each is called at most once per KMS name. Raises nothing itself:
    see :meth:`EncryptionChains.chain_for`.
    """
    return EncryptionChains(config, kms_v2=kms_v2, kms_v1=kms_v1, rng=rng)
