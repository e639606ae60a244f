"""The provider chain: first seals, every matching prefix may open, position makes stale."""

from __future__ import annotations

import os

import pytest

from kinko.crypto.chain import ProviderChain
from kinko.crypto.formats import AesCbc, AesGcm, Identity, KmsV1, KmsV2, Secretbox
from kinko.crypto.types import Opened
from kinko.errors import DecryptionError, InvalidArgument, PluginError
from tests.unit.fakes import Base64KmsV1Unwrapper, Base64KmsV2Keys

AAD = b"/registry/secrets/default/db-password"
KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
SEED = bytes(range(64, 96))


def gcm(name: str, key: bytes = KEY_A) -> AesGcm:
    return AesGcm(name, key, rng=os.urandom)


def test_a_chain_needs_a_transformer() -> None:
    with pytest.raises(InvalidArgument):
        ProviderChain([])


def test_seal_goes_through_the_first_transformer() -> None:
    chain = ProviderChain([gcm("new"), gcm("old", KEY_B), Identity()])
    value = chain.seal(b"secret", aad=AAD)
    assert value.startswith(b"k8s:enc:aesgcm:v1:new:")
    assert chain.first is chain.transformers[0]
    assert len(chain.transformers) == 3


def test_reading_with_the_first_transformer_is_current() -> None:
    chain = ProviderChain([gcm("new"), gcm("old", KEY_B)])
    opened = chain.open(chain.seal(b"secret", aad=AAD), aad=AAD)
    assert (opened.plaintext, opened.stale, opened.key_name) == (b"secret", False, "new")


def test_reading_with_a_later_transformer_is_stale() -> None:
    old = gcm("old", KEY_B)
    value = old.seal(b"secret", aad=AAD)
    opened = ProviderChain([gcm("new"), old]).open(value, aad=AAD)
    assert (opened.plaintext, opened.stale, opened.key_name) == (b"secret", True, "old")


def test_overlapping_prefixes_try_every_match() -> None:
    # Two aesgcm entries with the same key name (a rotation in progress): the first match
    # fails to authenticate, the second opens the value.
    rotated_in, rotated_out = gcm("key1", KEY_A), gcm("key1", KEY_B)
    value = rotated_out.seal(b"secret", aad=AAD)
    opened = ProviderChain([rotated_in, rotated_out]).open(value, aad=AAD)
    assert (opened.plaintext, opened.stale) == (b"secret", True)


def test_first_transformer_own_staleness_is_kept() -> None:
    keys = Base64KmsV2Keys(SEED, key_id="1")
    kms = KmsV2("kms", keys, rng=os.urandom)
    chain = ProviderChain([kms])
    value = chain.seal(b"secret", aad=AAD)
    keys.rotate(bytes(32), key_id="2")
    opened = chain.open(value, aad=AAD)
    assert (opened.stale, opened.key_id) == (True, "1")


def test_identity_first_reads_plaintext_as_current_and_encrypted_data_as_stale() -> None:
    # Disabling encryption: identity first, the old provider after it.
    aes = gcm("key1")
    chain = ProviderChain([Identity(), aes])
    assert chain.seal(b"plain", aad=AAD) == b"plain"
    plain = chain.open(b"plain", aad=AAD)
    assert (plain.plaintext, plain.stale, plain.provider) == (b"plain", False, "identity")
    encrypted = chain.open(aes.seal(b"secret", aad=AAD), aad=AAD)
    assert (encrypted.plaintext, encrypted.stale, encrypted.provider) == (b"secret", True, "aesgcm")


def test_identity_last_reads_plaintext_from_before_encryption_as_stale() -> None:
    opened = ProviderChain([gcm("key1"), Identity()]).open(b"k8s\x00plain", aad=AAD)
    assert (opened.plaintext, opened.stale, opened.provider) == (b"k8s\x00plain", True, "identity")


def test_no_matching_prefix_is_its_own_reason() -> None:
    box = Secretbox("key1", KEY_A, rng=os.urandom)
    with pytest.raises(DecryptionError) as info:
        ProviderChain([gcm("key1")]).open(box.seal(b"secret", aad=AAD), aad=AAD)
    assert info.value.reason == DecryptionError.NO_MATCHING_PROVIDER


def test_identity_refusing_encrypted_data_is_not_a_match() -> None:
    value = gcm("key1").seal(b"secret", aad=AAD)
    with pytest.raises(DecryptionError) as info:
        ProviderChain.identity().open(value, aad=AAD)
    assert info.value.reason == DecryptionError.NO_MATCHING_PROVIDER


def test_a_match_that_cannot_decrypt_is_the_opaque_error() -> None:
    value = gcm("key1", KEY_B).seal(b"secret", aad=AAD)
    with pytest.raises(DecryptionError) as info:
        ProviderChain([gcm("key1"), Identity()]).open(value, aad=AAD)
    assert info.value.reason == DecryptionError.NOT_AUTHENTIC


def test_wrong_storage_key_is_the_opaque_error() -> None:
    chain = ProviderChain([gcm("key1")])
    value = chain.seal(b"secret", aad=AAD)
    with pytest.raises(DecryptionError) as info:
        chain.open(value, aad=b"/registry/secrets/other/db-password")
    assert info.value.reason == DecryptionError.NOT_AUTHENTIC


def test_unprefixed_values_are_refused_without_identity_as_upstream() -> None:
    with pytest.raises(DecryptionError) as info:
        ProviderChain([gcm("key1")]).open(b"k8s\x00plain", aad=AAD)
    assert info.value.reason == DecryptionError.NO_MATCHING_PROVIDER


def test_unprefixed_values_read_as_stale_plaintext_when_asked() -> None:
    chain = ProviderChain([gcm("key1")], read_unprefixed_as_identity=True)
    assert chain.read_unprefixed_as_identity
    opened = chain.open(b'{"kind":"ConfigMap"}', aad=AAD)
    assert (opened.plaintext, opened.stale, opened.provider) == (
        b'{"kind":"ConfigMap"}',
        True,
        "identity",
    )


def test_reading_unprefixed_values_never_reads_unknown_encrypted_data() -> None:
    chain = ProviderChain([gcm("key1")], read_unprefixed_as_identity=True)
    with pytest.raises(DecryptionError) as info:
        chain.open(b"k8s:enc:future:v9:key1:payload", aad=AAD)
    assert info.value.reason == DecryptionError.NO_MATCHING_PROVIDER


def test_a_plugin_failure_is_raised_when_nothing_else_opens_the_value() -> None:
    keys = Base64KmsV2Keys(SEED)
    kms = KmsV2("kms", keys, rng=os.urandom)
    chain = ProviderChain([kms, gcm("key1"), Identity()])
    value = chain.seal(b"secret", aad=AAD)
    keys.unavailable = True
    with pytest.raises(PluginError):
        chain.open(value, aad=AAD)


def test_a_plugin_failure_outranks_a_later_decryption_failure() -> None:
    down = Base64KmsV2Keys(SEED)
    healthy_but_wrong = Base64KmsV2Keys(SEED)
    value = KmsV2("kms", down, rng=os.urandom).seal(b"secret", aad=AAD)
    down.unavailable = True
    healthy_but_wrong.forget("1")
    chain = ProviderChain(
        [KmsV2("kms", down, rng=os.urandom), KmsV2("kms", healthy_but_wrong, rng=os.urandom)]
    )
    with pytest.raises(PluginError):
        chain.open(value, aad=AAD)


def test_a_later_match_still_opens_when_an_earlier_plugin_is_down() -> None:
    down, up = Base64KmsV2Keys(SEED), Base64KmsV2Keys(SEED)
    value = KmsV2("kms", up, rng=os.urandom).seal(b"secret", aad=AAD)
    down.unavailable = True
    chain = ProviderChain([KmsV2("kms", down, rng=os.urandom), KmsV2("kms", up, rng=os.urandom)])
    opened = chain.open(value, aad=AAD)
    assert (opened.plaintext, opened.stale) == (b"secret", True)


def test_a_read_only_first_provider_cannot_seal() -> None:
    chain = ProviderChain([KmsV1("legacy", Base64KmsV1Unwrapper()), gcm("key1")])
    with pytest.raises(InvalidArgument, match="read-only"):
        chain.seal(b"secret", aad=AAD)


def test_the_identity_chain_does_not_encrypt() -> None:
    chain = ProviderChain.identity()
    assert chain.seal(b"plain", aad=AAD) == b"plain"
    opened = chain.open(b"plain", aad=AAD)
    assert (opened.plaintext, opened.stale) == (b"plain", False)


def test_repr_names_providers_and_keys_only() -> None:
    chain = ProviderChain([AesCbc("k1", b"\x5a" * 32, rng=os.urandom), Identity()])
    assert repr(chain) == "ProviderChain([aescbc:k1, identity])"


class _Counting:
    """A transformer that counts its opens and always fails with ``error``."""

    def __init__(self, inner: AesGcm, error: Exception) -> None:
        self.inner = inner
        self.error = error
        self.opens = 0

    kind = "aesgcm"

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def prefix(self) -> bytes:
        return self.inner.prefix

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        return self.inner.seal(plaintext, aad=aad)

    def open(self, value: bytes, *, aad: bytes) -> Opened:
        self.opens += 1
        raise self.error


@pytest.mark.parametrize("error", [DecryptionError(), PluginError("KMS plugin kms: down")])
def test_a_failing_first_transformer_is_tried_once_and_the_search_goes_on(
    error: Exception,
) -> None:
    first = _Counting(gcm("key1"), error)
    chain = ProviderChain([first, gcm("key1"), Identity()])
    value = gcm("key1").seal(b"secret", aad=AAD)
    opened = chain.open(value, aad=AAD)
    assert (opened.plaintext, opened.stale, first.opens) == (b"secret", True, 1)


@pytest.mark.parametrize("error", [DecryptionError(), PluginError("KMS plugin kms: down")])
def test_errors_after_a_failing_first_transformer_carry_no_context(error: Exception) -> None:
    first = _Counting(gcm("key1"), error)
    chain = ProviderChain([first, gcm("key1", KEY_B)])
    value = gcm("key1").seal(b"secret", aad=AAD)
    with pytest.raises(type(error)) as info:
        chain.open(value, aad=AAD)
    assert first.opens == 1
    if isinstance(info.value, DecryptionError):
        assert info.value.__context__ is None
        assert info.value.reason == DecryptionError().reason


def test_identity_first_refuses_encrypted_data_it_cannot_match() -> None:
    chain = ProviderChain([Identity(), gcm("key2")])
    value = gcm("key1").seal(b"secret", aad=AAD)
    with pytest.raises(DecryptionError) as info:
        chain.open(value, aad=AAD)
    assert info.value.reason == DecryptionError.NO_MATCHING_PROVIDER
