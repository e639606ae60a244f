"""RootKeyPlugin over ServiceRootKeys(KeyService(MemoryStore, MemoryHsm, fake clocks)), and
over RemoteRootKeys (the REST app in-process).

Round trips, rotation (key_id changes, never repeats, old data stays readable), every root key
state of Key Protect's table (suspend, expire, delete, restore, purge), the cached health
probe (HSM calls counted), key_id and annotation checks, aliases and retired root keys, and
the local KEKs (ADR 15): one root key wrap per KEK, one unwrap per KEK a plugin meets, every
KEK dropped when the root key may no longer be used, values written before them still read.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kinko.crypto import kms_rules
from kinko.errors import (
    DecryptionError,
    DeletionRefused,
    Gone,
    InvalidArgument,
    KinkoError,
    NotFound,
    UnavailableError,
    UnprocessableCiphertext,
    WrongState,
)
from kinko.hsm.memory import MemoryDevice
from kinko.kms.port import EncryptResult
from kinko.kms.rootkey import (
    ANNOTATION_KEY,
    FAILURE_TTL,
    HEALTH_TTL,
    KEK_AAD,
    KEK_ANNOTATION,
    KEY_ID_PREFIX,
    MAX_PLAINTEXT_SIZE,
    PROBE_AAD,
    SEED_AAD,
    STATE_TTL,
    RootKeyAccess,
    RootKeyInfo,
    RootKeyPlugin,
    ServiceRootKeys,
    Unwrapped,
    Wrapped,
    key_id_for,
    parse_key_id,
)
from kinko.kms.server import grpc_status_for
from tests.rootkey_world import (
    ADMIN,
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
    assert set(r.annotations) == {KEK_ANNOTATION}
    assert len(r.ciphertext) == 12 + len(SEED) + 16  # nonce, seed, tag
    # The annotation is the local KEK as the key service wrapped it, with the latest version.
    kek = w.access().unwrap(w.key_id, r.annotations[KEK_ANNOTATION], aad=KEK_AAD)
    assert kek.version_id == latest_version(w)
    assert len(kek.plaintext) == 32
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
    r = w.plugin().encrypt(SEED, uid="uid-enc")
    decrypt(w.plugin(), r, uid="uid-dec")  # A plugin that has not seen the KEK yet.
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
    assert parse_key_id(new.key_id)[1] == new_version
    assert new.annotations[KEK_ANNOTATION] != old.annotations[KEK_ANNOTATION]
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
    w.settle()
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


def test_probes_keks_and_seeds_use_aads_of_their_own(w: World) -> None:
    plugin = w.plugin()
    assert plugin.status().healthz == "ok"
    r = plugin.encrypt(SEED, uid="u")
    access = w.access()
    wrapped_kek = r.annotations[KEK_ANNOTATION]
    # A wrapped local KEK opens only as a KEK: not as a probe, not as a seed.
    for aad in (PROBE_AAD, SEED_AAD):
        with pytest.raises(DecryptionError):
            access.unwrap(w.key_id, wrapped_kek, aad=aad)
    # A probe or a seed the root key wrapped does not pass for a KEK.
    for aad in (PROBE_AAD, SEED_AAD):
        other = access.wrap(w.key_id, bytes(32), aad=aad)
        forged = {KEK_ANNOTATION: other.ciphertext}
        with pytest.raises(DecryptionError):
            plugin.decrypt(r.ciphertext, uid="u", key_id=r.key_id, annotations=forged)


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
    # One version's KEK under the key_id of another, held or not: opaque refusal.
    for reader in (plugin, w.plugin()):
        with pytest.raises(DecryptionError):
            reader.decrypt(r2.ciphertext, uid="u", key_id=r.key_id, annotations=r2.annotations)
        with pytest.raises(DecryptionError):
            reader.decrypt(r.ciphertext, uid="u", key_id=r2.key_id, annotations=r.annotations)
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


def test_the_largest_plaintext_fits_the_kms_v2_limit(w: World) -> None:
    plugin = w.plugin()
    big = b"x" * MAX_PLAINTEXT_SIZE
    r = plugin.encrypt(big, uid="u")
    assert len(r.ciphertext) == kms_rules.ENCRYPTED_DEK_SOURCE_MAX_SIZE
    kms_rules.check_encrypted_dek_source(r.ciphertext)
    assert decrypt(plugin, r) == big


def test_a_plaintext_that_cannot_fit_is_refused_before_the_hsm(w: World) -> None:
    plugin = w.plugin()
    calls = counting(w).calls
    with pytest.raises(InvalidArgument, match=f"expected at most {MAX_PLAINTEXT_SIZE} bytes"):
        plugin.encrypt(b"x" * (MAX_PLAINTEXT_SIZE + 1), uid="u")
    assert counting(w).calls == calls
    assert plugin.local_keks == 0


def test_construction_is_checked(w: World) -> None:
    access = ServiceRootKeys(w.service, PLUGIN, INSTANCE)
    with pytest.raises(InvalidArgument):
        RootKeyPlugin(access, "")
    with pytest.raises(InvalidArgument):
        w.plugin(version="v1")
    with pytest.raises(InvalidArgument):
        w.plugin(health_ttl=0)
    with pytest.raises(InvalidArgument):
        w.plugin(kek_max_uses=0)


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
    kek = w.access().unwrap(w.key_id, r.annotations[KEK_ANNOTATION], aad=KEK_AAD).plaintext
    forms = [
        SEED.hex(),
        base64.b64encode(SEED).decode(),
        r.ciphertext.hex(),
        base64.b64encode(r.ciphertext).decode(),
        r.annotations[KEK_ANNOTATION].decode(),
        kek.hex(),
        base64.b64encode(kek).decode(),
    ]
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


# -- local KEKs (ADR 15) ------------------------------------------------------------------


def kms_actions(w: World, action: str) -> int:
    return sum(1 for r in w.audit.records if r.action == f"kms.secrets.{action}")


def test_one_root_key_wrap_per_local_kek_and_one_unwrap_per_reader(w: World) -> None:
    hsm = counting(w)
    writer = w.plugin()
    base = hsm.calls
    seeds = [bytes([i]) * 32 for i in range(50)]
    results = [writer.encrypt(seed, uid=f"u{i}") for i, seed in enumerate(seeds)]
    assert hsm.calls - base == 1  # One wrap, for the one KEK.
    assert len({r.annotations[KEK_ANNOTATION] for r in results}) == 1
    assert len({r.ciphertext[:12] for r in results}) == 50  # a fresh nonce per seed
    assert [decrypt(writer, r) for r in results] == seeds
    assert hsm.calls - base == 1  # The writer holds its own KEK.
    reader = w.plugin()
    assert [decrypt(reader, r) for r in results] == seeds
    assert hsm.calls - base == 2  # One unwrap, for the one KEK.
    assert reader.local_keks == 1


def test_a_local_kek_encrypts_at_most_kek_max_uses_seeds(w: World) -> None:
    plugin = w.plugin(kek_max_uses=3)
    results = [plugin.encrypt(bytes([i]) * 32, uid="u") for i in range(7)]
    keks = [r.annotations[KEK_ANNOTATION] for r in results]
    assert [keks.index(k) for k in keks] == [0, 0, 0, 3, 3, 3, 6]
    reader = w.plugin()
    assert [decrypt(reader, r) for r in results] == [bytes([i]) * 32 for i in range(7)]
    assert reader.local_keks == 3


def test_each_root_key_version_gets_its_own_local_kek(w: World) -> None:
    plugin = w.plugin()
    wraps = kms_actions(w, "wrap")
    first = plugin.encrypt(SEED, uid="u")
    again = plugin.encrypt(SEED, uid="u")
    w.rotate()
    rotated = plugin.encrypt(SEED, uid="u")
    assert first.annotations == again.annotations != rotated.annotations
    assert first.key_id == again.key_id != rotated.key_id
    if not w.remote:  # Over HTTPS the audit log belongs to the remote service.
        assert kms_actions(w, "wrap") - wraps == 2
    reader = w.plugin()
    assert decrypt(reader, first) == decrypt(reader, rotated) == SEED


def test_a_refused_root_key_drops_every_local_kek_and_a_return_unwraps_again(w: World) -> None:
    plugin = w.plugin()
    r = plugin.encrypt(SEED, uid="u")
    w.rotate()
    r2 = plugin.encrypt(SEED, uid="u")
    assert plugin.local_keks == 2
    unwraps = kms_actions(w, "unwrap")
    w.disable()
    with pytest.raises(WrongState):
        decrypt(plugin, r)
    assert plugin.local_keks == 0
    w.enable()
    assert decrypt(plugin, r) == decrypt(plugin, r2) == SEED
    assert plugin.local_keks == 2
    if not w.remote:
        assert kms_actions(w, "unwrap") - unwraps == 2  # Each KEK unwrapped again, audited.


def test_an_expired_key_keeps_its_readers_keks_but_makes_no_new_one(remote: bool) -> None:
    w = make_world(remote=remote, expiration_date=T0 + timedelta(days=1))
    writer = w.plugin()
    r = writer.encrypt(SEED, uid="u")
    reader = w.plugin()
    assert decrypt(reader, r) == SEED
    w.clock.advance(days=2)
    w.settle()
    with pytest.raises(WrongState, match="expired"):
        writer.encrypt(SEED, uid="u")
    assert decrypt(reader, r) == decrypt(writer, r) == SEED


def test_crypto_shredding_reaches_a_plugin_that_holds_the_kek(w: World) -> None:
    plugin = w.plugin()
    r = plugin.encrypt(SEED, uid="u")
    assert decrypt(plugin, r) == SEED
    w.delete()
    with pytest.raises(Gone):
        decrypt(plugin, r)
    assert plugin.local_keks == 0
    w.purge()
    for reader in (plugin, w.plugin()):
        with pytest.raises(NotFound, match="purged"):
            decrypt(reader, r)
        assert reader.local_keks == 0


def test_a_change_through_the_same_service_applies_at_once() -> None:
    # In-process, the plugin checks the key through the service's own key-record cache,
    # which every write of the service empties (ADR 13).
    w = make_world()
    plugin = w.plugin()
    r = plugin.encrypt(SEED, uid="u")
    w.service.disable(ADMIN, INSTANCE, w.key_id)  # no time passes
    with pytest.raises(WrongState, match="suspended"):
        plugin.encrypt(SEED, uid="u")
    with pytest.raises(WrongState, match="suspended"):
        decrypt(plugin, r)


def test_a_remote_plugin_reuses_a_state_for_at_most_state_ttl() -> None:
    w = make_world(remote=True)
    plugin = w.plugin()
    r = plugin.encrypt(SEED, uid="u")
    w.service.disable(ADMIN, INSTANCE, w.key_id)  # no time passes
    assert decrypt(plugin, r) == SEED  # the state read a moment ago
    w.mono.advance(STATE_TTL)
    with pytest.raises(WrongState, match="suspended"):
        decrypt(plugin, r)
    # A refusal is never reused: an enable applies to the very next call.
    w.clock.advance(seconds=31)
    w.service.enable(ADMIN, INSTANCE, w.key_id)
    assert decrypt(plugin, r) == SEED


def test_values_the_root_key_wrapped_itself_still_decrypt(w: World) -> None:
    # Written before local KEKs: the seed wrapped by the key service, the version annotated.
    version = latest_version(w)
    wrapped = w.access().wrap(w.key_id, SEED, aad=SEED_AAD)
    legacy = EncryptResult(
        ciphertext=wrapped.ciphertext,
        key_id=key_id_for(w.key_id, version),
        annotations={ANNOTATION_KEY: version.encode()},
    )
    plugin = w.plugin()
    assert decrypt(plugin, legacy) == SEED
    w.rotate()
    assert decrypt(plugin, legacy) == SEED
    with pytest.raises(InvalidArgument, match="annotations"):
        plugin.decrypt(
            legacy.ciphertext, uid="u", key_id=legacy.key_id, annotations={ANNOTATION_KEY: b"x"}
        )
    w.disable()
    with pytest.raises(WrongState, match="suspended"):
        decrypt(plugin, legacy)


_PLUGIN_WORLD = make_world()
_WRITER = _PLUGIN_WORLD.plugin()
_SAMPLE = _WRITER.encrypt(SEED, uid="u")


@settings(max_examples=200, deadline=None)
@given(
    part=st.sampled_from(["ciphertext", "kek"]),
    data=st.data(),
)
def test_any_change_to_a_ciphertext_or_its_kek_fails_opaquely(
    part: str, data: st.DataObject
) -> None:
    original = _SAMPLE.ciphertext if part == "ciphertext" else _SAMPLE.annotations[KEK_ANNOTATION]
    changed = bytearray(original)
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if kind == "flip":
        at = data.draw(st.integers(0, len(changed) - 1))
        changed[at] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del changed[data.draw(st.integers(0, len(changed) - 1)) :]
    else:
        changed += data.draw(st.binary(min_size=1, max_size=8))
    ciphertext = bytes(changed) if part == "ciphertext" else _SAMPLE.ciphertext
    annotations = _SAMPLE.annotations if part == "ciphertext" else {KEK_ANNOTATION: bytes(changed)}
    for reader in (_WRITER, _PLUGIN_WORLD.plugin()):
        if not ciphertext or not annotations[KEK_ANNOTATION]:
            with pytest.raises(InvalidArgument):
                reader.decrypt(ciphertext, uid="u", key_id=_SAMPLE.key_id, annotations=annotations)
            continue
        with pytest.raises(DecryptionError) as info:
            reader.decrypt(ciphertext, uid="u", key_id=_SAMPLE.key_id, annotations=annotations)
        assert str(info.value) in (
            str(DecryptionError()),
            str(UnprocessableCiphertext()),
            str(UnprocessableCiphertext(UnprocessableCiphertext.MALFORMED)),
        )


class _RefusalDuringUnwrap:
    """RootKeyAccess over the service whose next unwrap of a local KEK first runs ``during``
    (another thread's refusal, made to land exactly there)."""

    def __init__(self, inner: RootKeyAccess, during: Callable[[], None]) -> None:
        self.inner = inner
        self.during: Callable[[], None] | None = during

    def current(self, key_ref: str, *, correlation_id: str | None = None) -> RootKeyInfo:
        return self.inner.current(key_ref, correlation_id=correlation_id)

    def check(
        self, key_ref: str, *, unwrap_version: str | None = None, correlation_id: str | None = None
    ) -> str:
        return self.inner.check(
            key_ref, unwrap_version=unwrap_version, correlation_id=correlation_id
        )

    def wrap(
        self,
        key_ref: str,
        plaintext: bytes,
        *,
        aad: Sequence[str],
        correlation_id: str | None = None,
    ) -> Wrapped:
        return self.inner.wrap(key_ref, plaintext, aad=aad, correlation_id=correlation_id)

    def unwrap(
        self,
        key_ref: str,
        ciphertext: bytes,
        *,
        aad: Sequence[str],
        correlation_id: str | None = None,
    ) -> Unwrapped:
        result = self.inner.unwrap(key_ref, ciphertext, aad=aad, correlation_id=correlation_id)
        during, self.during = self.during, None
        if during is not None:
            during()
        return result


def test_a_kek_unwrapped_while_a_refusal_comes_serves_its_call_but_is_not_kept() -> None:
    w = make_world()
    r = w.plugin().encrypt(SEED, uid="u")
    plugin: RootKeyPlugin | None = None

    def suspend_and_refuse() -> None:
        w.disable()
        assert plugin is not None
        with pytest.raises(WrongState):
            decrypt(plugin, r)

    plugin = RootKeyPlugin(
        _RefusalDuringUnwrap(w.access(), suspend_and_refuse), w.key_id, clock=w.mono
    )
    assert decrypt(plugin, r) == SEED  # checked before the suspend: this call is served
    assert plugin.local_keks == 0  # ... but its KEK is not kept past the refusal
    w.enable()
    unwraps = kms_actions(w, "unwrap")
    assert decrypt(plugin, r) == SEED
    assert kms_actions(w, "unwrap") - unwraps == 1  # unwrapped again, audited


def test_an_expired_keys_refused_encrypts_keep_the_readers_keks() -> None:
    w = make_world(expiration_date=T0 + timedelta(days=1))
    plugin = w.plugin()
    r = plugin.encrypt(SEED, uid="u")
    w.clock.advance(days=2)
    w.settle()
    hsm = counting(w)
    unwraps = hsm.unwraps
    for _ in range(5):
        with pytest.raises(WrongState, match="expired"):
            plugin.encrypt(SEED, uid="u")
        assert decrypt(plugin, r) == SEED
    assert hsm.unwraps == unwraps  # the KEK stayed: no unwrap, no audit record
    assert plugin.local_keks == 1


def test_a_ciphertext_too_short_to_open_costs_no_unwrap(w: World) -> None:
    r = w.plugin().encrypt(SEED, uid="u")
    reader = w.plugin()
    calls = counting(w).calls
    for short in (b"x", r.ciphertext[:28]):
        with pytest.raises(DecryptionError):
            reader.decrypt(short, uid="u", key_id=r.key_id, annotations=r.annotations)
    assert counting(w).calls == calls
    assert reader.local_keks == 0
