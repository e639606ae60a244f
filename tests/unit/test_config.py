"""EncryptionConfiguration loader: the validation table, valid files, lookup order and chains.

The table mirrors upstream's ``validation_encryption_test.go`` and ``TestWildcardMasking``
and adds kinko's decoding rules (strict fields and types). Each case names the exact field
path of the error and a fragment of its message.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kinko.crypto.config import (
    AesConfig,
    EncryptionChains,
    EncryptionConfig,
    GroupResource,
    IdentityConfig,
    KeyConfig,
    KmsConfig,
    SecretboxConfig,
    build_chains,
    config_hash,
    parse_encryption_config,
    parse_go_duration,
    parse_group_resource,
)
from kinko.errors import ConfigError, DecryptionError, PluginError
from tests.unit.fakes import Base64KmsV1Unwrapper, Base64KmsV2Keys, StreamRng

HEADER = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"


def _b64(size: int, fill: int = 1) -> str:
    return base64.b64encode(bytes([fill]) * size).decode()


K16, K24, K32 = _b64(16), _b64(24), _b64(32)
K7, K33 = _b64(7), _b64(33)


def doc(body: str) -> str:
    """A document with the standard header and ``body`` (dedented) below it."""
    return HEADER + textwrap.dedent(body).lstrip("\n")


def one(provider: str, resources: str = "[secrets]") -> str:
    """One entry with one provider element, written in YAML flow style."""
    return doc(f"resources:\n- resources: {resources}\n  providers:\n  - {provider}\n")


def providers(*elements: str, resources: str = "[secrets]") -> str:
    items = "".join(f"  - {e}\n" for e in elements)
    return doc(f"resources:\n- resources: {resources}\n  providers:\n{items}")


def entries(*resource_lists: str) -> str:
    """One entry per resource list, each with an identity provider."""
    body = "resources:\n"
    for rl in resource_lists:
        body += f"- resources: {rl}\n  providers: [{{identity: {{}}}}]\n"
    return doc(body)


def aescbc(secret: str = K32, name: str = "k1") -> str:
    return f"aescbc: {{keys: [{{name: {name}, secret: '{secret}'}}]}}"


def kms(**fields: str) -> str:
    merged = {"name": "kms1", "endpoint": "unix:///tmp/kms.sock", **fields}
    inner = ", ".join(f"{k}: {v}" for k, v in merged.items())
    return f"kms: {{{inner}}}"


P0 = "resources[0].providers[0]"
R0 = "resources[0].resources"

# (id, document, expected path, expected message fragment)
INVALID: list[tuple[str, str, str, str]] = [
    # ---- the document
    ("empty-document", "", "", "got an empty document"),
    ("comment-only-document", "# nothing\n", "", "got an empty document"),
    ("yaml-syntax-error", "resources: [\n", "", "syntax error at line"),
    ("two-documents", HEADER + "---\n" + HEADER, "", "syntax error"),
    ("top-level-list", "- a\n- b\n", "", "got a list"),
    ("top-level-string", "hello\n", "", "got a string"),
    ("missing-api-version", "kind: EncryptionConfiguration\nresources: []\n", "apiVersion", "none"),
    (
        "unknown-api-version",
        "apiVersion: apiserver.config.k8s.io/v2\nkind: EncryptionConfiguration\n",
        "apiVersion",
        'got "apiserver.config.k8s.io/v2"',
    ),
    (
        "api-version-not-a-string",
        "apiVersion: 1\nkind: EncryptionConfiguration\n",
        "apiVersion",
        "expected a string, got an integer",
    ),
    (
        "missing-kind",
        "apiVersion: apiserver.config.k8s.io/v1\nresources: []\n",
        "kind",
        "expected EncryptionConfiguration with apiVersion apiserver.config.k8s.io/v1, got none",
    ),
    (
        "wrong-kind",
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfig\n",
        "kind",
        'got "EncryptionConfig"',
    ),
    (
        "legacy-api-version-with-new-kind",
        "apiVersion: v1\nkind: EncryptionConfiguration\n",
        "kind",
        "expected EncryptionConfig with apiVersion v1",
    ),
    ("metadata-is-unknown", doc("metadata: {name: x}\n"), "metadata", 'unknown field "metadata"'),
    ("field-names-are-case-sensitive", doc("Resources: []\n"), "Resources", "unknown field"),
    ("non-string-key", doc("1: x\n"), "1", "unknown field (an integer key)"),
    ("duplicate-key", doc("resources: []\nresources: []\n"), "", 'duplicate key "resources"'),
    ("resources-missing", HEADER, "resources", "expected at least one entry, got none"),
    ("resources-empty", doc("resources: []\n"), "resources", "at least one entry"),
    ("resources-null", doc("resources:\n"), "resources", "at least one entry"),
    (
        "resources-a-string",
        doc("resources: secrets\n"),
        "resources",
        "expected a list, got a string",
    ),
    # ---- one entry
    ("entry-a-string", doc("resources: [secrets]\n"), "resources[0]", "expected a mapping"),
    (
        "entry-unknown-field",
        doc("resources:\n- resource: [secrets]\n  providers: [{identity: {}}]\n"),
        "resources[0].resource",
        'unknown field "resource"; expected only resources or providers',
    ),
    (
        "entry-without-resources",
        doc("resources:\n- providers: [{identity: {}}]\n"),
        R0,
        "expected at least one resource, got none",
    ),
    (
        "entry-resources-a-string",
        doc("resources:\n- resources: secrets\n  providers: [{identity: {}}]\n"),
        R0,
        "expected a list, got a string",
    ),
    ("resource-name-an-integer", entries("[1]"), f"{R0}[0]", "expected a string, got an integer"),
    (
        "entry-without-providers",
        doc("resources:\n- resources: [secrets]\n"),
        "resources[0].providers",
        "expected at least one provider, got none",
    ),
    (
        "providers-a-mapping",
        doc("resources:\n- resources: [secrets]\n  providers: {identity: {}}\n"),
        "resources[0].providers",
        "expected a list, got a mapping",
    ),
    # ---- provider elements
    ("provider-element-empty", one("{}"), P0, "expected exactly one of aesgcm, aescbc"),
    ("provider-element-null", providers("null"), P0, "got none"),
    ("identity-null-is-absent", one("identity:"), P0, "identity: null counts as absent"),
    (
        "two-providers-in-one-element",
        one(f"{{{aescbc()}, identity: {{}}}}"),
        P0,
        "got 2 (aescbc, identity); split them",
    ),
    ("unknown-provider", one("aes: {}"), f"{P0}.aes", 'unknown field "aes"; expected only aesgcm'),
    ("identity-with-a-field", one("identity: {a: 1}"), f"{P0}.identity.a", "expected no fields"),
    ("identity-a-list", one("identity: []"), f"{P0}.identity", "expected a mapping, got a list"),
    # ---- keys
    ("aescbc-without-keys", one("aescbc: {}"), f"{P0}.aescbc.keys", "at least one key, got none"),
    ("aesgcm-empty-keys", one("aesgcm: {keys: []}"), f"{P0}.aesgcm.keys", "at least one key"),
    ("secretbox-without-keys", one("secretbox: {}"), f"{P0}.secretbox.keys", "at least one key"),
    (
        "keys-a-string",
        one("aescbc: {keys: k1}"),
        f"{P0}.aescbc.keys",
        "expected a list, got a string",
    ),
    (
        "key-a-string",
        one("aescbc: {keys: [k1]}"),
        f"{P0}.aescbc.keys[0]",
        "expected a mapping, got a string",
    ),
    (
        "key-without-name",
        one(f"aescbc: {{keys: [{{secret: '{K32}'}}]}}"),
        f"{P0}.aescbc.keys[0].name",
        "expected a key name, got none",
    ),
    (
        "key-without-secret",
        one("aescbc: {keys: [{name: k1}]}"),
        f"{P0}.aescbc.keys[0].secret",
        "expected a base64 secret, got none",
    ),
    (
        "key-name-an-integer",
        one(f"aescbc: {{keys: [{{name: 1, secret: '{K32}'}}]}}"),
        f"{P0}.aescbc.keys[0].name",
        "expected a string, got an integer",
    ),
    (
        "secret-an-integer",
        one("aescbc: {keys: [{name: k1, secret: 12345678}]}"),
        f"{P0}.aescbc.keys[0].secret",
        "expected a base64 string, got an integer",
    ),
    (
        "secret-not-base64",
        one(aescbc("P@ssword")),
        f"{P0}.aescbc.keys[0].secret",
        "expected standard base64, got text that does not decode",
    ),
    (
        "secret-url-safe-base64",
        one(aescbc("-_-_-_-_-_-_-_-_-_-_-_-_")),
        f"{P0}.aescbc.keys[0].secret",
        "URL-safe",
    ),
    (
        "secret-missing-padding",
        one(aescbc(K16.rstrip("="))),
        f"{P0}.aescbc.keys[0].secret",
        "not a multiple of 4",
    ),
    (
        "aescbc-secret-of-7-bytes",
        doc(
            f"""
            resources:
            - resources: [events]
              providers: [{{identity: {{}}}}]
            - resources: [secrets]
              providers:
              - aescbc: {{keys: [{{name: k1, secret: '{K7}'}}]}}
            """
        ),
        "resources[1].providers[0].aescbc.keys[0].secret",
        "expected base64 of 16, 24 or 32 bytes, got 7 bytes",
    ),
    (
        "aesgcm-secret-of-9-bytes",
        one("aesgcm: {keys: [{name: k1, secret: cGFzc3dvcmQK}]}"),
        f"{P0}.aesgcm.keys[0].secret",
        "expected base64 of 16, 24 or 32 bytes, got 9 bytes",
    ),
    (
        "aesgcm-secret-of-33-bytes",
        one(f"aesgcm: {{keys: [{{name: k1, secret: '{K33}'}}]}}"),
        f"{P0}.aesgcm.keys[0].secret",
        "got 33 bytes",
    ),
    (
        "secretbox-secret-of-16-bytes",
        one(f"secretbox: {{keys: [{{name: k1, secret: '{K16}'}}]}}"),
        f"{P0}.secretbox.keys[0].secret",
        "expected base64 of 32 bytes, got 16 bytes",
    ),
    (
        "second-key-bad",
        one(f"aescbc: {{keys: [{{name: k1, secret: '{K32}'}}, {{name: k2, secret: '{K7}'}}]}}"),
        f"{P0}.aescbc.keys[1].secret",
        "got 7 bytes",
    ),
    (
        "key-unknown-field-name-withheld",
        one(f"aescbc: {{keys: [{{name: k1, secret: '{K32}', sekret: x}}]}}"),
        f"{P0}.aescbc.keys[0]",
        "its name is not shown",
    ),
    (
        "duplicate-key-names",
        one(f"aesgcm: {{keys: [{{name: k1, secret: '{K32}'}}, {{name: k1, secret: '{K16}'}}]}}"),
        f"{P0}.aesgcm.keys[1].name",
        'got "k1" again (first at resources[0].providers[0].aesgcm.keys[0])',
    ),
    (
        "key-name-lone-surrogate",
        one(f"aescbc: {{keys: [{{name: \"\\ud800\", secret: '{K32}'}}]}}"),
        f"{P0}.aescbc.keys[0].name",
        "lone surrogate",
    ),
    # ---- kms
    ("kms-without-name", one("kms: {endpoint: 'unix:///x'}"), f"{P0}.kms.name", "got none"),
    (
        "kms-v2-name-with-colon",
        one(kms(apiVersion="v2", name="'a:b'")),
        f"{P0}.kms.name",
        "without ':', got \"a:b\"",
    ),
    (
        "kms-v2-duplicate-names",
        providers(kms(apiVersion="v2"), kms(apiVersion="v2", endpoint="'unix:///y'")),
        "resources[0].providers[1].kms.name",
        'unique across the file, got "kms1" again (first at resources[0].providers[0].kms.name)',
    ),
    (
        "kms-v1-duplicate-names-across-entries",
        doc(
            f"""
            resources:
            - resources: [secrets]
              providers: [{{{kms()}}}]
            - resources: [configmaps]
              providers: [{{{kms()}}}]
            """
        ),
        "resources[1].providers[0].kms.name",
        "unique across the file",
    ),
    (
        "kms-v1-and-v2-same-name",
        providers(kms(), kms(apiVersion="v2")),
        "resources[0].providers[1].kms.name",
        "unique",
    ),
    (
        "kms-timeout-zero",
        one(kms(timeout="0s")),
        f"{P0}.kms.timeout",
        'positive duration, got "0s"',
    ),
    ("kms-timeout-negative", one(kms(timeout="-1m")), f"{P0}.kms.timeout", "positive duration"),
    (
        "kms-timeout-words",
        one(kms(timeout="'3 seconds'")),
        f"{P0}.kms.timeout",
        'expected a Go duration such as "3s", "500ms" or "1m30s", got "3 seconds"',
    ),
    ("kms-timeout-empty", one(kms(timeout="''")), f"{P0}.kms.timeout", "Go duration"),
    (
        "kms-timeout-bare-number",
        one(kms(timeout="3")),
        f"{P0}.kms.timeout",
        "got an integer (a bare number has no unit)",
    ),
    (
        "kms-endpoint-missing",
        one("kms: {name: kms1}"),
        f"{P0}.kms.endpoint",
        "expected a unix socket URL such as unix:///var/run/kms.sock, got none",
    ),
    (
        "kms-endpoint-https",
        one(kms(endpoint="'https://www.foo.com'")),
        f"{P0}.kms.endpoint",
        'expected scheme unix (only unix sockets are supported), got "https"',
    ),
    (
        "kms-endpoint-bare-path",
        one(kms(endpoint="/var/run/kms.sock")),
        f"{P0}.kms.endpoint",
        "expected scheme unix (only unix sockets are supported), got none",
    ),
    (
        "kms-endpoint-control-character",
        one(kms(endpoint='"unix:///foo\\n.socket"')),
        f"{P0}.kms.endpoint",
        "control character",
    ),
    (
        "kms-endpoint-without-path",
        one(kms(endpoint="'unix://'")),
        f"{P0}.kms.endpoint",
        "names no socket",
    ),
    ("kms-endpoint-opaque", one(kms(endpoint="'unix:kms'")), f"{P0}.kms.endpoint", "no socket"),
    (
        "kms-endpoint-abstract-without-slash",
        one(kms(endpoint="'unix://@kms'")),
        f"{P0}.kms.endpoint",
        "unix:///@name",
    ),
    (
        "kms-endpoint-bad-escape",
        one(kms(endpoint="'unix:///tmp/%zz'")),
        f"{P0}.kms.endpoint",
        "bad % escape",
    ),
    (
        "kms-endpoint-bad-port",
        one(kms(endpoint="'unix://host:abc/x'")),
        f"{P0}.kms.endpoint",
        "invalid port",
    ),
    (
        "kms-endpoint-not-a-string",
        one(kms(endpoint="[a]")),
        f"{P0}.kms.endpoint",
        "expected a string, got a list",
    ),
    (
        "kms-v2-with-cachesize",
        one(kms(apiVersion="v2", cachesize="100")),
        f"{P0}.kms.cachesize",
        "expected no cachesize with apiVersion v2 (it applies to KMS v1 only), got 100",
    ),
    ("kms-v1-cachesize-zero", one(kms(cachesize="0")), f"{P0}.kms.cachesize", "got 0"),
    (
        "kms-cachesize-a-string",
        one(kms(cachesize="'100'")),
        f"{P0}.kms.cachesize",
        "expected an integer, got a string",
    ),
    (
        "kms-cachesize-a-boolean",
        one(kms(cachesize="true")),
        f"{P0}.kms.cachesize",
        "expected an integer, got a boolean",
    ),
    ("kms-cachesize-a-float", one(kms(cachesize="1.5")), f"{P0}.kms.cachesize", "got a number"),
    (
        "kms-cachesize-beyond-int32",
        one(kms(cachesize="2147483648")),
        f"{P0}.kms.cachesize",
        "expected a 32-bit integer, got 2147483648",
    ),
    (
        "kms-api-version-v3",
        one(kms(apiVersion="v3")),
        f"{P0}.kms.apiVersion",
        'expected "v1" or "v2", got "v3"',
    ),
    (
        "kms-api-version-not-a-string",
        one(kms(apiVersion="2")),
        f"{P0}.kms.apiVersion",
        "expected a string, got an integer",
    ),
    (
        "kms-unknown-field",
        one(kms(cacheSize="10")),
        f"{P0}.kms.cacheSize",
        'unknown field "cacheSize"; expected only apiVersion, name, cachesize, endpoint or timeout',
    ),
    # ---- resource names
    ("resource-with-capitals", entries("[apiServerIPInfo]"), f"{R0}[0]", "expected a lowercase"),
    ("resource-star-alone", entries("['*']"), f"{R0}[0]", 'expected "*." for all core resources'),
    ("resource-apiserveripinfo", entries("[apiserveripinfo]"), f"{R0}[0]", "REST API"),
    ("resource-serviceipallocations", entries("[serviceipallocations]"), f"{R0}[0]", "REST API"),
    (
        "resource-servicenodeportallocations",
        entries("[servicenodeportallocations]"),
        f"{R0}[0]",
        "cannot be encrypted",
    ),
    ("group-events-k8s-io", entries("[events.events.k8s.io]"), f"{R0}[0]", "events.k8s.io"),
    ("group-events-k8s-io-wildcard", entries("['*.events.k8s.io']"), f"{R0}[0]", "expected events"),
    (
        "group-events-k8s-io-later-in-list",
        entries("[secrets]", "[secret, events.events.k8s.io]"),
        "resources[1].resources[1]",
        "events.k8s.io",
    ),
    ("group-extensions-wildcard", entries("['*.extensions']"), f"{R0}[0]", "extensions group"),
    ("group-extensions", entries("[foo.extensions]"), f"{R0}[0]", "has been removed"),
    ("resource-across-groups", entries("['*.', 'foos.*']"), f"{R0}[1]", "across all groups"),
    # ---- duplicates and overlaps within one list
    ("duplicate-resource", entries("[secrets, secrets]"), f"{R0}[1]", "each resource once"),
    ("duplicate-resource-via-dot", entries("[secrets, secrets.]"), f"{R0}[1]", "the same as"),
    ("duplicate-wildcard", entries("['*.', '*.']"), f"{R0}[1]", "each resource once"),
    ("overlap-core-wildcard", entries("[secrets, '*.']"), f"{R0}[1]", "overlapping"),
    ("overlap-pods-core-wildcard", entries("[pods, '*.']"), f"{R0}[1]", "overlapping"),
    ("overlap-group-wildcard", entries("[deployments.apps, '*.apps']"), f"{R0}[1]", "overlapping"),
    ("overlap-any-wildcard", entries("[secrets, '*.*']"), f"{R0}[1]", 'overlapping "secrets"'),
    ("overlap-three-wildcards", entries("['*.apps', '*.', '*.*']"), f"{R0}[2]", "overlapping"),
    # ---- masking across entries
    (
        "masked-by-core-wildcard",
        entries("[deployments.apps, '*.']", "[secrets]"),
        "resources[1].resources[0]",
        'resource "secrets" is masked by earlier rule "*."',
    ),
    (
        "masked-by-any-wildcard",
        entries("['*.*']", "[secrets]"),
        "resources[1].resources[0]",
        'resource "secrets" is masked by earlier rule "*.*"',
    ),
    (
        "masked-by-group-wildcard",
        entries("['*.apps']", "[deployments.apps]"),
        "resources[1].resources[0]",
        'resource "deployments.apps" is masked by earlier rule "*.apps"',
    ),
    (
        "core-wildcard-masked-by-itself",
        entries("['*.']", "['*.']"),
        "resources[1].resources[0]",
        'resource "*." is masked by earlier rule "*."',
    ),
    (
        "any-wildcard-masked-by-itself",
        entries("['*.*']", "['*.*']"),
        "resources[1].resources[0]",
        'resource "*.*" is masked by earlier rule "*.*"',
    ),
    (
        "group-wildcard-masked-by-any-wildcard",
        entries("['*.*']", "['*.apps']"),
        "resources[1].resources[0]",
        'masked by earlier rule "*.*"',
    ),
    # ---- hostile input
    (
        "tagged-value-that-does-not-convert",
        doc("resources: !!int abc\n"),
        "",
        "tagged value that does not convert",
    ),
    ("unknown-tag", doc("resources: !foo bar\n"), "", "could not determine a constructor"),
    ("python-tag-refused", doc("resources: !!python/name:os.system\n"), "", "syntax error"),
    ("deep-nesting", "[" * 5000 + "]" * 5000, "", "nested too deeply"),
]


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [pytest.param(t, p, f, id=i) for i, t, p, f in INVALID],
)
def test_invalid_configuration_names_field_and_problem(text: str, path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_encryption_config(text)
    assert info.value.path == path, str(info.value)
    assert fragment in info.value.detail, str(info.value)
    assert str(info.value) == (f"{path}: {info.value.detail}" if path else info.value.detail)


def test_the_table_covers_enough_cases() -> None:
    assert len(INVALID) >= 50
    assert len({case[0] for case in INVALID}) == len(INVALID)


def test_invalid_utf8_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_encryption_config(HEADER.encode() + b"resources: [\xff]\n")
    assert info.value.path == ""
    assert "unreadable" in info.value.detail


def test_alias_bomb_is_refused() -> None:
    # A few kilobytes of aliases that would expand to a million provider elements.
    others = ", ".join(["*p"] * 999)
    text = (
        doc(
            f"""
        resources:
        - &e
          resources: [secrets]
          providers: [&p {{identity: {{}}}}, {others}]
        """
        )
        + "- *e\n" * 999
    )
    assert len(text) < 16_000
    with pytest.raises(ConfigError) as info:
        parse_encryption_config(text)
    assert info.value.path == ""
    assert "at most 100000 nodes" in info.value.detail


# --------------------------------------------------------------------------- secrets


@given(secret=st.binary(min_size=1, max_size=64))
def test_no_message_contains_the_secret(secret: bytes) -> None:
    encoded = base64.b64encode(secret).decode()
    for text in (
        one(f"aescbc: {{keys: [{{name: k1, secret: '{encoded}'}}]}}"),
        one(f"secretbox: {{keys: [{{name: k1, secret: '{encoded}'}}]}}"),
        one(f"aesgcm: {{keys: [{{name: k1, secret: '{encoded[:-1]}'}}]}}"),
        one(f"aesgcm: {{keys: [{{name: k1, secret: '{K32}', {encoded}: 1}}]}}"),
        one(f"aesgcm: {{keys: [{{name: k1, secret: [{encoded}]}}]}}"),
    ):
        try:
            shown = repr(parse_encryption_config(text))
        except ConfigError as exc:
            shown = str(exc)
        assert encoded not in shown
        assert encoded[:8] not in shown


def test_key_repr_hides_the_secret() -> None:
    assert "secret" not in repr(KeyConfig("k1", b"\x01" * 32))


def test_yaml_syntax_error_does_not_quote_the_line() -> None:
    # A syntax error on a secret's line: PyYAML's own message would print that line.
    text = one(f"aescbc: {{keys: [{{name: k1, secret: '{K32}'}}]]}}")
    with pytest.raises(ConfigError) as info:
        parse_encryption_config(text)
    assert K32 not in str(info.value)
    assert "line 6" in info.value.detail


# --------------------------------------------------------------------------- valid files

EXAMPLE = doc(
    f"""
    resources:
    - resources: [events]
      providers: [{{identity: {{}}}}]  # do not encrypt events even though *.* is specified below
    - resources: [secrets, configmaps, pandas.awesome.bears.example]
      providers:
      - kms:
          apiVersion: v2
          name: myKms
          endpoint: unix:///var/run/kms/plugin.sock
          timeout: 3s
      - aescbc: {{keys: [{{name: key1, secret: c2VjcmV0IGlzIHNlY3VyZQ==}}]}}
      - identity: {{}}
    - resources: ['*.apps']
      providers: [{{aescbc: {{keys: [{{name: key2, secret: '{_b64(32, 2)}'}}]}}}}]
    - resources: ['*.*']
      providers: [{{aescbc: {{keys: [{{name: key3, secret: '{_b64(32, 3)}'}}]}}}}]
    """
)


def test_reference_example_parses_with_defaults() -> None:
    config = parse_encryption_config(EXAMPLE)
    assert [e.resources for e in config.resources] == [
        ("events",),
        ("secrets", "configmaps", "pandas.awesome.bears.example"),
        ("*.apps",),
        ("*.*",),
    ]
    kms_provider, aes, identity = config.resources[1].providers
    assert kms_provider == KmsConfig(
        api_version="v2",
        name="myKms",
        endpoint="unix:///var/run/kms/plugin.sock",
        timeout_seconds=3.0,
        cachesize=None,
    )
    assert kms_provider.socket_address == "/var/run/kms/plugin.sock"
    assert aes == AesConfig("aescbc", (KeyConfig("key1", b"secret is secure"),))
    assert identity == IdentityConfig()
    assert config.resources[2].providers[0] == AesConfig(
        "aescbc", (KeyConfig("key2", b"\x02" * 32),)
    )
    assert config.kms_providers == (kms_provider,)


def test_same_document_as_json_parses_identically() -> None:
    as_json = yaml.safe_load(EXAMPLE)
    assert parse_encryption_config(json.dumps(as_json)) == parse_encryption_config(EXAMPLE)
    assert parse_encryption_config(EXAMPLE.encode()) == parse_encryption_config(EXAMPLE)


def test_legacy_kind_is_accepted() -> None:
    text = "apiVersion: v1\nkind: EncryptionConfig\n" + one(aescbc()).split("\n", 2)[2]
    config = parse_encryption_config(text)
    assert config.providers_for("secrets")[0][1] == AesConfig(
        "aescbc", (KeyConfig("k1", b"\x01" * 32),)
    )


def test_kms_v1_defaults() -> None:
    assert _only_kms(one("kms: {name: old, endpoint: 'unix:///k.sock'}")) == KmsConfig(
        "v1", "old", "unix:///k.sock", 3.0, 1000
    )


def test_kms_v1_defaults_when_fields_are_null() -> None:
    text = one("kms: {name: old, endpoint: 'unix:///k.sock', timeout: null, apiVersion: null}")
    assert _only_kms(text) == KmsConfig("v1", "old", "unix:///k.sock", 3.0, 1000)


def _only_kms(text: str) -> KmsConfig:
    ((_, provider),) = parse_encryption_config(text).providers_for("secrets")
    assert isinstance(provider, KmsConfig)
    return provider


@pytest.mark.parametrize(
    ("timeout", "seconds"),
    [("3s", 3.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5h", 5400.0), ("250us", 0.00025)],
)
def test_kms_timeout_parses_go_durations(timeout: str, seconds: float) -> None:
    assert _only_kms(one(kms(timeout=timeout))).timeout_seconds == pytest.approx(seconds)


def test_kms_v1_negative_cachesize_disables_the_cache() -> None:
    assert _only_kms(one(kms(cachesize="-1"))).cachesize == -1


def test_kms_v1_name_may_contain_a_colon() -> None:
    assert _only_kms(one(kms(name="'a:b'"))).name == "a:b"


@pytest.mark.parametrize(
    ("endpoint", "address"),
    [
        ("unix:///var/run/kms.sock", "/var/run/kms.sock"),
        ("unix:///@kms-plugin", "@kms-plugin"),
        ("UNIX:///tmp/k.sock", "/tmp/k.sock"),
        ("unix:/tmp/k.sock", "/tmp/k.sock"),
        ("unix:///tmp/a%20b.sock?x=1#frag", "/tmp/a b.sock"),
        # kube-apiserver ignores the host; "unix://var/run/k.sock" dials /run/k.sock.
        ("unix://var/run/k.sock", "/run/k.sock"),
    ],
)
def test_kms_endpoint_socket_address(endpoint: str, address: str) -> None:
    assert _only_kms(one(kms(endpoint=f"'{endpoint}'"))).socket_address == address


def test_socket_address_of_a_hand_built_bad_endpoint_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="scheme unix"):
        _ = KmsConfig("v2", "k", "tcp://x").socket_address


def test_secret_may_span_lines_like_go_base64() -> None:
    text = doc(
        f"""
        resources:
        - resources: [secrets]
          providers:
          - secretbox:
              keys:
              - name: k1
                secret: |
                  {K32[:20]}
                  {K32[20:]}
        """
    )
    ((_, provider),) = parse_encryption_config(text).providers_for("secrets")
    assert provider == SecretboxConfig((KeyConfig("k1", b"\x01" * 32),))


def test_all_aes_key_sizes_are_accepted() -> None:
    text = one(
        "aesgcm: {keys: ["
        + ", ".join(f"{{name: k{n}, secret: '{s}'}}" for n, s in ((16, K16), (24, K24), (32, K32)))
        + "]}"
    )
    ((_, provider),) = parse_encryption_config(text).providers_for("secrets")
    assert isinstance(provider, AesConfig)
    assert [len(k.secret) for k in provider.keys] == [16, 24, 32]


@pytest.mark.parametrize(
    "resources",
    ["['*.apps', '*.']", "[deployments.apps, '*.']", "['*.', '*.apps', widgets.example.com]"],
)
def test_wildcards_of_different_groups_may_share_a_list(resources: str) -> None:
    parse_encryption_config(entries(resources))


def test_specific_rules_before_wildcards_are_accepted() -> None:
    parse_encryption_config(entries("[secrets]", "['*.']", "[deployments.apps]", "['*.*']"))


def test_dates_and_names_stay_strings() -> None:
    text = one("aescbc: {keys: [{name: 2024-01-01, secret: '" + K32 + "'}]}")
    ((_, provider),) = parse_encryption_config(text).providers_for("secrets")
    assert isinstance(provider, AesConfig)
    assert provider.keys[0].name == "2024-01-01"


def test_sexagesimal_looking_names_stay_strings() -> None:
    assert _only_kms(one(kms(name="1:30"))).name == "1:30"


def test_yaml_anchors_and_merge_keys_are_allowed() -> None:
    text = doc(
        f"""
        resources:
        - resources: [secrets]
          providers:
          - aescbc: &shared {{keys: [{{name: k1, secret: '{K32}'}}]}}
        - resources: [configmaps]
          providers:
          - aescbc: *shared
          - kms: &base {{apiVersion: v2, name: a, endpoint: 'unix:///a.sock'}}
          - kms: {{<<: *base, name: b}}
        """
    )
    config = parse_encryption_config(text)
    assert [p.name for p in config.kms_providers] == ["a", "b"]


DATA = Path(__file__).resolve().parents[1] / "data" / "encryption-configs"


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.iterdir()))
def test_data_files_parse(name: str) -> None:
    config = parse_encryption_config((DATA / name).read_bytes())
    assert config.providers_for("secrets")


def test_data_file_with_kms_v1_and_v2() -> None:
    config = parse_encryption_config((DATA / "kms-v1-and-v2-abstract-socket.json").read_bytes())
    new, old = config.kms_providers
    assert new == KmsConfig("v2", "new", "unix:///@kinko-kms", 90.0, None)
    assert new.socket_address == "@kinko-kms"
    assert old == KmsConfig("v1", "old", "unix:///var/run/kms-v1.sock", 3.0, -1)


def test_data_file_of_the_reference_example_matches_the_inline_one() -> None:
    from_file = parse_encryption_config((DATA / "kms-v2-with-fallbacks.yaml").read_bytes())
    assert from_file == parse_encryption_config(EXAMPLE)


def _upstream_overlap(names: list[str]) -> str | None:
    """``validateResourceOverlap`` of validation_encryption.go, pair by pair as upstream."""
    parsed = [parse_group_resource(n) for n in names]
    any_any = GroupResource("*", "*")
    has_duplicate = has_overlap = False
    for i, r1 in enumerate(parsed):
        for j, r2 in enumerate(parsed):
            if i == j:
                continue
            if r1 == r2 and not has_duplicate:
                has_duplicate = True
                continue
            if has_overlap:
                continue
            if r1 == any_any:
                has_overlap = True
                continue
            if r1.group != r2.group:
                continue
            if "*" in (r1.resource, r2.resource):
                has_overlap = True
    if has_duplicate:
        return "duplicate"
    return "overlap" if has_overlap else None


_VALID_NAMES = [
    "secrets",
    "secrets.",
    "configmaps",
    "pods",
    "*.",
    "*.*",
    "*.apps",
    "deployments.apps",
    "*.example.com",
    "widgets.example.com",
]


@settings(max_examples=300)
@given(names=st.lists(st.sampled_from(_VALID_NAMES), min_size=1, max_size=6))
def test_overlap_check_agrees_with_upstream(names: list[str]) -> None:
    expected = _upstream_overlap(names)
    listed = "[" + ", ".join(f"'{n}'" for n in names) + "]"
    detail = ""
    try:
        parse_encryption_config(entries(listed))
    except ConfigError as exc:
        detail = exc.detail
    kinds = {"": None, "once per list": "duplicate", "overlapping": "overlap"}
    got = next(kind for fragment, kind in reversed(kinds.items()) if fragment in detail)
    assert got == expected, detail


# --------------------------------------------------------------------------- lookup


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("secrets", GroupResource("", "secrets")),
        ("secrets.", GroupResource("", "secrets")),
        ("deployments.apps", GroupResource("apps", "deployments")),
        ("pandas.awesome.bears.example", GroupResource("awesome.bears.example", "pandas")),
        ("*.", GroupResource("", "*")),
        ("*.*", GroupResource("*", "*")),
        ("*.apps", GroupResource("apps", "*")),
        ("", GroupResource("", "")),
    ],
)
def test_parse_group_resource(text: str, expected: GroupResource) -> None:
    assert parse_group_resource(text) == expected


@pytest.mark.parametrize("text", ["secrets", "deployments.apps", "*.", "*.*", "*.apps"])
def test_group_resource_prints_as_written(text: str) -> None:
    assert str(parse_group_resource(text)) == text


LOOKUP = doc(
    f"""
    resources:
    - resources: [secrets]
      providers: [{{aesgcm: {{keys: [{{name: exact, secret: '{K32}'}}]}}}}]
    - resources: ['*.apps']
      providers: [{{aesgcm: {{keys: [{{name: apps, secret: '{K32}'}}]}}}}]
    - resources: ['*.']
      providers: [{{aesgcm: {{keys: [{{name: core, secret: '{K32}'}}]}}}}]
    - resources: ['*.*']
      providers: [{{aesgcm: {{keys: [{{name: any, secret: '{K32}'}}]}}}}]
    """
)


def _key_names(config: EncryptionConfig, resource: str) -> list[str]:
    names: list[str] = []
    for _, provider in config.providers_for(resource):
        assert isinstance(provider, AesConfig)
        names.extend(k.name for k in provider.keys)
    return names


@pytest.mark.parametrize(
    ("resource", "names", "rule"),
    [
        ("secrets", ["exact"], "secrets"),
        ("secrets.", ["exact"], "secrets"),
        ("configmaps", ["core"], "*."),
        ("deployments.apps", ["apps"], "*.apps"),
        ("widgets.example.com", ["any"], "*.*"),
    ],
)
def test_lookup_order_exact_then_group_then_any(resource: str, names: list[str], rule: str) -> None:
    config = parse_encryption_config(LOOKUP)
    assert _key_names(config, resource) == names
    assert str(config.rule_for(resource)) == rule


def test_lookup_without_match_is_identity() -> None:
    config = parse_encryption_config(entries("[secrets]", "['*.apps']"))
    assert config.providers_for("configmaps") == ()
    assert config.rule_for("configmaps") is None
    assert config.providers_for("widgets.example.com") == ()


def test_lookup_returns_field_paths() -> None:
    config = parse_encryption_config(EXAMPLE)
    assert [path for path, _ in config.providers_for("configmaps")] == [
        "resources[1].providers[0]",
        "resources[1].providers[1]",
        "resources[1].providers[2]",
    ]
    assert [path for path, _ in config.providers_for("events")] == ["resources[0].providers[0]"]
    assert [path for path, _ in config.providers_for("pods")] == ["resources[3].providers[0]"]


def test_resource_in_two_entries_appends_the_second_entrys_providers() -> None:
    text = doc(
        f"""
        resources:
        - resources: [secrets, configmaps]
          providers:
          - aesgcm: {{keys: [{{name: first, secret: '{K32}'}}]}}
        - resources: [secrets]
          providers:
          - aescbc: {{keys: [{{name: second, secret: '{K32}'}}]}}
          - identity: {{}}
        """
    )
    config = parse_encryption_config(text)
    assert [path for path, _ in config.providers_for("secrets")] == [
        "resources[0].providers[0]",
        "resources[1].providers[0]",
        "resources[1].providers[1]",
    ]
    assert [p.kind for _, p in config.providers_for("secrets")] == ["aesgcm", "aescbc", "identity"]
    assert [p.kind for _, p in config.providers_for("configmaps")] == ["aesgcm"]


def test_config_hash_is_sha256_of_the_raw_bytes() -> None:
    data = EXAMPLE.encode()
    assert config_hash(data) == "sha256:" + hashlib.sha256(data).hexdigest()
    assert config_hash(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("0", 0),
        ("-0", 0),
        ("+5s", 5_000_000_000),
        ("3s", 3_000_000_000),
        ("500ms", 500_000_000),
        ("1m30s", 90_000_000_000),
        ("2h45m", 9_900_000_000_000),
        ("1.5h", 5_400_000_000_000),
        (".5s", 500_000_000),
        ("1.s", 1_000_000_000),
        ("1ns", 1),
        ("1us", 1_000),
        ("1\u00b5s", 1_000),
        ("1\u03bcs", 1_000),
        ("-2ms", -2_000_000),
        ("9223372036854775807ns", 9_223_372_036_854_775_807),
        ("-9223372036854775808ns", -9_223_372_036_854_775_808),
        ("0.100000000000000000000h", 360_000_000_000),
    ],
)
def test_go_duration(text: str, nanoseconds: int) -> None:
    assert parse_go_duration(text) == nanoseconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "s",
        "3",
        "1.5",
        ".s",
        "3 s",
        "3sec",
        "1e3s",
        "-",
        "+",
        "3s ",
        " 3s",
        "9223372036854775808ns",
    ],
)
def test_go_duration_rejects(text: str) -> None:
    assert parse_go_duration(text) is None


# --------------------------------------------------------------------------- robustness

_FIELD_NAMES = [
    "apiVersion",
    "kind",
    "resources",
    "providers",
    "aescbc",
    "aesgcm",
    "secretbox",
    "identity",
    "kms",
    "keys",
    "name",
    "secret",
    "endpoint",
    "timeout",
    "cachesize",
    "junk",
]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True),
    st.sampled_from(
        [
            "secrets",
            "*.",
            "*.*",
            "*",
            "*.apps",
            "foos.*",
            "v1",
            "v2",
            "3s",
            "-1s",
            "unix:///x",
            "unix:///@a",
            "https://x",
            K16,
            K32,
            K7,
            "apiserver.config.k8s.io/v1",
            "EncryptionConfiguration",
            "a:b",
        ]
    ),
    st.text(max_size=12),
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(_FIELD_NAMES), children, max_size=5),
    ),
    max_leaves=40,
)


YAML_CHARS = "abk:-[]{},'\"&*!|>#%@?\n \t0123456789.=/\\"


def _check_only_config_error(data: str | bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_encryption_config(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.dictionaries(st.sampled_from(_FIELD_NAMES), _values, max_size=4))
def test_structured_garbage_raises_only_config_error(body: Mapping[str, object]) -> None:
    document = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        **body,
    }
    _check_only_config_error(yaml.safe_dump(document))


@settings(max_examples=300)
@given(
    text=st.text(
        alphabet=st.sampled_from(list(YAML_CHARS)) | st.characters(),
        max_size=200,
    )
)
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    _check_only_config_error(HEADER + text)
    _check_only_config_error(text)


@settings(max_examples=200)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_config_error(data: bytes) -> None:
    _check_only_config_error(data)


@settings(max_examples=200)
@given(
    position=st.integers(min_value=0), junk=st.sampled_from(["]", "{", ":", "-", "'", "!!", "\t"])
)
def test_corrupted_example_raises_only_config_error(position: int, junk: str) -> None:
    at = position % (len(EXAMPLE) + 1)
    _check_only_config_error(EXAMPLE[:at] + junk + EXAMPLE[at:])


# --------------------------------------------------------------------------- chains


class Factories:
    def __init__(self) -> None:
        self.v2_calls: list[str] = []
        self.v1_calls: list[str] = []

    def kms_v2(self, config: KmsConfig) -> Base64KmsV2Keys:
        self.v2_calls.append(config.name)
        return Base64KmsV2Keys(bytes(range(32)))

    def kms_v1(self, config: KmsConfig) -> Base64KmsV1Unwrapper:
        self.v1_calls.append(config.name)
        return Base64KmsV1Unwrapper()


def _chains(text: str, factories: Factories | None = None) -> EncryptionChains:
    f = factories or Factories()
    return build_chains(
        parse_encryption_config(text),
        kms_v2=f.kms_v2,
        kms_v1=f.kms_v1,
        rng=StreamRng(b"test_config"),
    )


AAD = b"/registry/secrets/default/s1"


@pytest.mark.parametrize(
    ("provider", "prefix"),
    [
        (f"aescbc: {{keys: [{{name: k1, secret: '{K32}'}}]}}", b"k8s:enc:aescbc:v1:k1:"),
        (f"aesgcm: {{keys: [{{name: k1, secret: '{K16}'}}]}}", b"k8s:enc:aesgcm:v1:k1:"),
        (f"secretbox: {{keys: [{{name: k1, secret: '{K32}'}}]}}", b"k8s:enc:secretbox:v1:k1:"),
        (kms(apiVersion="v2", name="plugin"), b"k8s:enc:kms:v2:plugin:"),
    ],
)
def test_chain_round_trip_for_secrets(provider: str, prefix: bytes) -> None:
    chains = _chains(providers(provider, "identity: {}"))
    chain = chains.chain_for("secrets")
    sealed = chain.seal(b"hello", aad=AAD)
    assert sealed.startswith(prefix)
    opened = chain.open(sealed, aad=AAD)
    assert opened.plaintext == b"hello"
    assert not opened.stale
    # The trailing identity provider reads data from before encryption, as stale.
    legacy = chain.open(b"plain", aad=AAD)
    assert legacy.plaintext == b"plain"
    assert legacy.stale


def test_unmatched_resource_gets_the_identity_chain() -> None:
    chains = _chains(one(aescbc()))
    chain = chains.chain_for("configmaps")
    assert [t.kind for t in chain.transformers] == ["identity"]
    assert chain.seal(b"hello", aad=b"/registry/configmaps/a/b") == b"hello"


def test_each_key_is_its_own_transformer_in_key_order() -> None:
    text = one(
        f"aescbc: {{keys: [{{name: new, secret: '{_b64(32, 7)}'}}, "
        f"{{name: old, secret: '{_b64(32, 8)}'}}]}}"
    )
    chain = _chains(text).chain_for("secrets")
    assert [(t.kind, t.name) for t in chain.transformers] == [("aescbc", "new"), ("aescbc", "old")]
    old_chain = _chains(one(aescbc(_b64(32, 8), name="old"))).chain_for("secrets")
    opened = chain.open(old_chain.seal(b"v", aad=AAD), aad=AAD)
    assert opened.plaintext == b"v"
    assert opened.stale
    assert opened.key_name == "old"


def test_chain_appends_providers_of_a_later_entry() -> None:
    text = doc(
        f"""
        resources:
        - resources: [secrets]
          providers: [{{aesgcm: {{keys: [{{name: a, secret: '{K32}'}}]}}}}]
        - resources: [secrets]
          providers: [{{secretbox: {{keys: [{{name: b, secret: '{K32}'}}]}}}}, {{identity: {{}}}}]
        """
    )
    chain = _chains(text).chain_for("secrets")
    assert [t.kind for t in chain.transformers] == ["aesgcm", "secretbox", "identity"]


def test_chain_reads_kms_v1_values() -> None:
    dek = bytes(range(32))
    nonce = b"\x05" * 12
    payload = nonce + AESGCM(dek).encrypt(nonce, b"old secret", AAD)
    wrapped = base64.b64encode(dek)
    value = b"k8s:enc:kms:v1:legacy:" + len(wrapped).to_bytes(2, "big") + wrapped + payload
    text = providers(kms(apiVersion="v2", name="new"), kms(name="legacy"))
    chain = _chains(text).chain_for("secrets")
    opened = chain.open(value, aad=AAD)
    assert opened.plaintext == b"old secret"
    assert opened.stale


def test_kms_ports_are_built_lazily_and_once_per_name() -> None:
    text = doc(
        f"""
        resources:
        - resources: [secrets, configmaps]
          providers: [{{{kms(apiVersion="v2", name="p2")}}}, {{{kms(name="p1")}}}]
        - resources: ['*.apps']
          providers: [{{{kms(apiVersion="v2", name="other")}}}]
        """
    )
    factories = Factories()
    chains = _chains(text, factories)
    assert factories.v2_calls == []
    assert factories.v1_calls == []
    first = chains.chain_for("secrets")
    assert chains.chain_for("configmaps") is first
    assert chains.chain_for("secrets.") is first
    assert factories.v2_calls == ["p2"]
    assert factories.v1_calls == ["p1"]
    chains.chain_for("deployments.apps")
    chains.chain_for("replicasets.apps")
    assert factories.v2_calls == ["p2", "other"]


def test_secrets_and_configmaps_of_one_entry_share_transformers() -> None:
    text = one(f"aesgcm: {{keys: [{{name: k1, secret: '{K32}'}}]}}", "[secrets, configmaps]")
    chains = _chains(text)
    secrets = chains.chain_for("secrets")
    sealed = secrets.seal(b"x", aad=AAD)
    assert chains.chain_for("configmaps").open(sealed, aad=AAD).plaintext == b"x"
    assert chains.chain_for("configmaps").transformers[0] is secrets.transformers[0]


def test_failing_kms_factory_is_retried() -> None:
    calls: list[str] = []

    def flaky(config: KmsConfig) -> Base64KmsV2Keys:
        calls.append(config.name)
        if len(calls) == 1:
            raise PluginError("plugin not ready")
        return Base64KmsV2Keys(bytes(range(32)))

    chains = build_chains(
        parse_encryption_config(one(kms(apiVersion="v2"))),
        kms_v2=flaky,
        kms_v1=Factories().kms_v1,
        rng=StreamRng(b"test_config"),
    )
    with pytest.raises(PluginError):
        chains.chain_for("secrets")
    chain = chains.chain_for("secrets")
    assert chain.open(chain.seal(b"x", aad=AAD), aad=AAD).plaintext == b"x"
    assert calls == ["kms1", "kms1"]


def test_chains_expose_their_config() -> None:
    config = parse_encryption_config(EXAMPLE)
    f = Factories()
    assert (
        build_chains(config, kms_v2=f.kms_v2, kms_v1=f.kms_v1, rng=StreamRng(b"test_config")).config
        is config
    )


def test_wrong_aad_does_not_open() -> None:
    chain = _chains(one(f"aesgcm: {{keys: [{{name: k1, secret: '{K32}'}}]}}")).chain_for("secrets")
    sealed = chain.seal(b"x", aad=AAD)
    with pytest.raises(DecryptionError):
        chain.open(sealed, aad=b"/registry/secrets/default/other")
