"""RootKeyPlugin over ServiceRootKeys(KeyService(MemoryStore, MemoryHsm, fake clocks)).

Round trips, rotation (key_id changes, never repeats, old data stays readable), every root key
state of Key Protect's table (suspend, expire, delete, restore, purge), the cached health
probe (HSM calls counted), key_id and annotation checks, aliases and retired root keys.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import timedelta

import pytest

from kinko.crypto import kms_rules
from kinko.errors import (
    DecryptionError,
    DeletionRefused,
    Gone,
    InvalidArgument,
    KinkoError,
    NotFound,
    UnavailableError,
    WrongState,
)
from kinko.hsm.memory import MemoryDevice
from kinko.kms.port import EncryptResult
from kinko.kms.rootkey import (
    ANNOTATION_KEY,
    FAILURE_TTL,
    HEALTH_TTL,
    KEY_ID_PREFIX,
    PROBE_AAD,
    RootKeyPlugin,
    ServiceRootKeys,
    key_id_for,
    parse_key_id,
)
from kinko.kms.server import grpc_status_for
from tests.rootkey_world import (
    CLUSTER,
    CLUSTER_CRN,
    INSTANCE,
    PLUGIN,
    SEED,
    T0,
    CountingHsm,
    World,
    make_world,
)


@pytest.fixture(params=["service", "remote"])
def remote(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "remote")


@pytest.fixture
def w(remote: bool) -> World:
    return make_world(remote=remote)


def counting(w: World) -> CountingHsm:
    assert isinstance(w.hsm, CountingHsm)
    return w.hsm


def decrypt(plugin: RootKeyPlugin, r: EncryptResult, uid: str = "u") -> bytes:
    return plugin.decrypt(r.ciphertext, uid=uid, key_id=r.key_id, annotations=r.annotations)


def latest_version(w: World) -> str:
    return w.service.get_key_metadata(CLUSTER, INSTANCE, w.key_id).key_version.id


def refresh(w: World) -> None:
    """Let the health cache run out, whatever its last result was."""
    w.mono.advance(HEALTH_TTL)


# -- round trip and key_id ----------------------------------------------------------------


def test_encrypt_decrypt_round_trip(w: World) -> None:
    plugin = w.plugin()
    status = plugin.status()
    assert (status.version, status.healthz) == ("v2", "ok")
    r = plugin.encrypt(SEED, uid="uid-1")
    assert r.key_id == status.key_id == key_id_for(w.key_id, latest_version(w))
    assert dict(r.annotations) == {ANNOTATION_KEY: latest_version(w).encode()}
    kms_rules.check_key_id(r.key_id)
    kms_rules.check_encrypted_dek_source(r.ciphertext)
    kms_rules.check_annotations(r.annotations)
    assert decrypt(plugin, r) == SEED


def test_key_id_is_public_and_parses_back(w: World) -> None:
    version = latest_version(w)
    key_id = key_id_for(w.key_id, version)
    assert key_id == f"{KEY_ID_PREFIX}{w.key_id}-v{version}"
    assert len(key_id.encode()) <= kms_rules.KEY_ID_MAX_SIZE
    assert parse_key_id(key_id) == (w.key_id, version)
    with pytest.raises(InvalidArgument, match="unknown key_id"):
        parse_key_id("local-0123")
    with pytest.raises(InvalidArgument):
        key_id_for("an-alias", version)


def test_the_audit_log_names_the_plugin_and_the_request_uid() -> None:
    # In-process only: over HTTPS the client sends a correlation id of its own per request.
    w = make_world()
    plugin = w.plugin()
    decrypt(plugin, plugin.encrypt(SEED, uid="uid-enc"), uid="uid-dec")
    wraps = [r for r in w.audit.records if r.action == "kms.secrets.wrap"]
    unwraps = [r for r in w.audit.records if r.action == "kms.secrets.unwrap"]
    assert any(r.who == "kms-plugin" and r.correlation_id == "uid-enc" for r in wraps)
    assert any(r.who == "kms-plugin" and r.correlation_id == "uid-dec" for r in unwraps)


def test_an_alias_resolves_to_the_root_key_id(w: World) -> None:
    plugin = w.plugin("kms-root-alias")
    r = plugin.encrypt(SEED, uid="u")
    assert parse_key_id(r.key_id)[0] == w.key_id
    assert plugin.status().key_id == r.key_id
    assert decrypt(plugin, r) == SEED


# -- rotation -----------------------------------------------------------------------------


def test_rotation_changes_the_key_id_and_old_ciphertexts_still_decrypt(w: World) -> None:
    plugin = w.plugin()
    before = plugin.status().key_id
    old = plugin.encrypt(SEED, uid="u")
    new_version = w.rotate()
    refresh(w)
    after = plugin.status()
    assert after.healthz == "ok"
    assert after.key_id != before
    assert after.key_id == key_id_for(w.key_id, new_version)
    new = plugin.encrypt(b"n" * 32, uid="u")
    assert new.key_id == after.key_id
    assert new.annotations[ANNOTATION_KEY] == new_version.encode()
    assert decrypt(plugin, old) == SEED
    assert decrypt(plugin, new) == b"n" * 32


def test_encrypt_uses_the_new_version_at_once_and_status_follows(w: World) -> None:
    plugin = w.plugin()
    plugin.status()
    new_version = w.rotate()
    # Within the health TTL, Encrypt already wraps with (and names) the latest version, and
    # the next Status looks again instead of serving the cached key_id.
    r = plugin.encrypt(SEED, uid="u")
    assert r.key_id == key_id_for(w.key_id, new_version)
    assert plugin.status().key_id == r.key_id


def test_key_id_never_repeats_across_rotations(w: World) -> None:
    plugin = w.plugin()
    seen: list[str] = []
    wrapped: list[tuple[bytes, EncryptResult]] = []
    for i in range(8):
        if i:
            w.rotate()
            refresh(w)
        key_id = plugin.status().key_id
        seed = bytes([i]) * 32
        r = plugin.encrypt(seed, uid="u")
        assert r.key_id == key_id
        seen.append(key_id)
        wrapped.append((seed, r))
    assert len(set(seen)) == len(seen)
    for seed, r in wrapped:
        assert decrypt(plugin, r) == seed


# -- states -------------------------------------------------------------------------------


def test_a_suspended_key_fails_encrypt_and_decrypt(w: World) -> None:
    plugin = w.plugin()
    r = plugin.encrypt(SEED, uid="u")
    w.disable()
    message = f"root key {w.key_id} is suspended (state 2): enable it to encrypt or decrypt"
    with pytest.raises(WrongState) as enc:
        plugin.encrypt(SEED, uid="u")
    assert str(enc.value) == message
    with pytest.raises(WrongState) as dec:
        decrypt(plugin, r)
    assert str(dec.value) == message
    assert grpc_status_for(enc.value)[0].name == "FAILED_PRECONDITION"
    refresh(w)
    status = plugin.status()
    assert status.healthz == message
    assert status.key_id == key_id_for(w.key_id, latest_version(w))
    w.enable()
    refresh(w)
    assert plugin.status().healthz == "ok"
    assert decrypt(plugin, plugin.encrypt(SEED, uid="u")) == SEED
    assert decrypt(plugin, r) == SEED


def test_an_expired_key_fails_encrypt_but_still_decrypts(remote: bool) -> None:
    w = make_world(remote=remote, expiration_date=T0 + timedelta(days=1))
    plugin = w.plugin()
    r = plugin.encrypt(SEED, uid="u")
    w.clock.advance(days=2)
    with pytest.raises(WrongState, match=r"expired \(Deactivated, state 3\)") as info:
        plugin.encrypt(SEED, uid="u")
    assert "rotate to a new root key" in str(info.value)
    assert grpc_status_for(info.value)[0].name == "FAILED_PRECONDITION"
    assert decrypt(plugin, r) == SEED
    refresh(w)
    assert "expired" in plugin.status().healthz


def test_an_expired_key_rotated_still_does_not_encrypt(remote: bool) -> None:
    # Key Protect: rotation does not extend the expiration date.
    w = make_world(remote=remote, expiration_date=T0 + timedelta(days=1))
    plugin = w.plugin()
    r = plugin.encrypt(SEED, uid="u")
    w.clock.advance(days=2)
    w.rotate()
    with pytest.raises(WrongState, match="expired"):
        plugin.encrypt(SEED, uid="u")
    assert decrypt(plugin, r) == SEED


def test_a_deleted_key_fails_both_and_restore_brings_it_back(w: World) -> None:
    plugin = w.plugin()
    r = plugin.encrypt(SEED, uid="u")
    w.service.create_registration(CLUSTER, INSTANCE, w.key_id, CLUSTER_CRN)
    with pytest.raises(DeletionRefused):
        w.delete()
    w.delete(force=True)
    with pytest.raises(Gone, match=r"was deleted \(Destroyed, state 5\)") as enc:
        plugin.encrypt(SEED, uid="u")
    with pytest.raises(Gone, match="restore it within 30 days") as dec:
        decrypt(plugin, r)
    assert grpc_status_for(enc.value)[0].name == "FAILED_PRECONDITION"
    assert grpc_status_for(dec.value)[0].name == "FAILED_PRECONDITION"
    refresh(w)
    assert "Destroyed" in plugin.status().healthz
    w.restore()
    refresh(w)
    assert plugin.status().healthz == "ok"
    assert decrypt(plugin, r) == SEED
    assert decrypt(plugin, plugin.encrypt(SEED, uid="u")) == SEED


def test_a_purged_key_fails_for_good(w: World) -> None:
    plugin = w.plugin()
    r = plugin.encrypt(SEED, uid="u")
    key_id = plugin.status().key_id
    w.delete()
    w.purge()
    with pytest.raises(NotFound, match="purged") as info:
        decrypt(plugin, r)
    assert grpc_status_for(info.value)[0].name == "NOT_FOUND"
    with pytest.raises(NotFound):
        plugin.encrypt(SEED, uid="u")
    refresh(w)
    status = plugin.status()
    assert status.healthz != "ok"
    assert status.key_id == key_id  # The last one known: never an empty key_id.
    # A new plugin process cannot get at the data either.
    with pytest.raises(NotFound):
        decrypt(w.plugin(), r)


# -- health -------------------------------------------------------------------------------


def test_health_is_probed_at_most_once_per_ttl(w: World) -> None:
    hsm = counting(w)
    plugin = w.plugin()
    base = hsm.calls
    for _ in range(50):
        assert plugin.status().healthz == "ok"
    assert hsm.calls - base == 2  # One wrap and one unwrap of the probe.
    w.mono.advance(HEALTH_TTL - 0.5)
    for _ in range(50):
        plugin.status()
    assert hsm.calls - base == 2
    w.mono.advance(0.5)
    plugin.status()
    assert hsm.calls - base == 4


def test_a_failed_probe_is_not_ok_and_is_cached_briefly(w: World) -> None:
    hsm = counting(w)
    device: MemoryDevice = hsm.device
    plugin = w.plugin()
    assert plugin.status().healthz == "ok"
    key_id = plugin.status().key_id
    device.online = False
    refresh(w)
    status = plugin.status()
    assert status.healthz.startswith("root key probe failed:")
    assert status.key_id == key_id
    calls = hsm.calls
    device.online = True
    w.mono.advance(FAILURE_TTL - 0.5)
    assert plugin.status().healthz != "ok"
    assert hsm.calls == calls
    w.mono.advance(0.5)
    assert plugin.status().healthz == "ok"


def test_status_without_any_known_key_id_is_unavailable(w: World) -> None:
    plugin = w.plugin("no-such-alias")
    with pytest.raises(UnavailableError, match="no-such-alias"):
        plugin.status()


def test_probes_use_their_own_aad_so_they_never_pass_for_seeds(w: World) -> None:
    plugin = w.plugin()
    status = plugin.status()
    r = plugin.encrypt(SEED, uid="u")
    # A seed ciphertext does not open as a probe: the AADs differ.
    access = w.access()
    with pytest.raises(DecryptionError):
        access.unwrap(w.key_id, r.ciphertext, aad=PROBE_AAD)
    assert status.healthz == "ok"


# -- request checks -----------------------------------------------------------------------


def test_decrypt_refuses_what_does_not_match(w: World) -> None:
    plugin = w.plugin()
    r = plugin.encrypt(SEED, uid="u")
    version = latest_version(w)
    w.rotate()
    r2 = plugin.encrypt(SEED, uid="u")
    with pytest.raises(InvalidArgument, match="unknown key_id"):
        plugin.decrypt(r.ciphertext, uid="u", key_id="local-abc", annotations=r.annotations)
    with pytest.raises(InvalidArgument, match="annotations"):
        plugin.decrypt(r.ciphertext, uid="u", key_id=r.key_id, annotations={})
    # The ciphertext of one version under the key_id of another: opaque refusal.
    with pytest.raises(DecryptionError):
        plugin.decrypt(r.ciphertext, uid="u", key_id=r2.key_id, annotations=r2.annotations)
    tampered = bytearray(r.ciphertext)
    tampered[10] ^= 1
    with pytest.raises(DecryptionError):
        plugin.decrypt(bytes(tampered), uid="u", key_id=r.key_id, annotations=r.annotations)
    with pytest.raises(DecryptionError):
        plugin.decrypt(b"\xff" * 40, uid="u", key_id=r.key_id, annotations=r.annotations)
    assert parse_key_id(r.key_id)[1] == version


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.encrypt(SEED, uid=""),
        lambda p: p.encrypt(b"", uid="u"),
        lambda p: p.decrypt(b"c", uid="", key_id="k", annotations={}),
        lambda p: p.decrypt(b"", uid="u", key_id="k", annotations={}),
        lambda p: p.decrypt(b"c", uid="u", key_id="", annotations={}),
    ],
    ids=["enc-uid", "enc-plaintext", "dec-uid", "dec-ciphertext", "dec-key-id"],
)
def test_empty_fields_are_invalid(w: World, call: Callable[[RootKeyPlugin], object]) -> None:
    with pytest.raises(InvalidArgument):
        call(w.plugin())


def test_an_oversize_ciphertext_is_refused(w: World) -> None:
    plugin = w.plugin()
    with pytest.raises(InvalidArgument, match="over the 1024-byte KMS v2 limit"):
        plugin.encrypt(b"x" * 700, uid="u")


def test_a_plaintext_that_cannot_fit_is_refused_before_the_hsm(w: World) -> None:
    plugin = w.plugin()
    calls = counting(w).calls
    with pytest.raises(InvalidArgument, match="expected fewer than 1024 bytes"):
        plugin.encrypt(b"x" * 1024, uid="u")
    assert counting(w).calls == calls


def test_construction_is_checked(w: World) -> None:
    access = ServiceRootKeys(w.service, PLUGIN, INSTANCE)
    with pytest.raises(InvalidArgument):
        RootKeyPlugin(access, "")
    with pytest.raises(InvalidArgument):
        w.plugin(version="v1")
    with pytest.raises(InvalidArgument):
        w.plugin(health_ttl=0)


# -- moving to a new root key -------------------------------------------------------------


def test_a_retired_root_key_still_decrypts_after_moving_to_a_new_one(w: World) -> None:
    old_plugin = w.plugin()
    r = old_plugin.encrypt(SEED, uid="u")
    new_key = w.new_key("kms-root-2")
    without = w.plugin(new_key)
    with pytest.raises(InvalidArgument, match="does not serve"):
        decrypt(without, r)
    with_alias = w.plugin(new_key, retired_key_refs=["kms-root-alias"])
    assert decrypt(with_alias, r) == SEED
    with_id = w.plugin(new_key, retired_key_refs=[w.key_id])
    assert decrypt(with_id, r) == SEED
    assert parse_key_id(with_id.encrypt(SEED, uid="u").key_id)[0] == new_key


# -- nothing secret in messages -----------------------------------------------------------


def test_no_message_carries_seed_or_ciphertext(w: World) -> None:
    plugin = w.plugin()
    r = plugin.encrypt(SEED, uid="u")
    forms = [SEED.hex(), base64.b64encode(SEED).decode(), r.ciphertext.decode()]
    messages: list[str] = []
    w.disable()
    for call in (
        lambda: plugin.encrypt(SEED, uid="u"),
        lambda: decrypt(plugin, r),
    ):
        with pytest.raises(KinkoError) as info:
            call()
        messages.append(str(info.value))
    refresh(w)
    messages.append(plugin.status().healthz)
    messages.append(repr(r))
    for message in messages:
        for form in forms:
            assert form not in message
