"""IBM's own Key Protect SDK (``keyprotect`` from PyPI) against kinko over HTTPS.

The SDK is used unmodified: ``IbmKeyProtectApiV2`` with ``ibm-cloud-sdk-core``'s
``BearerTokenAuthenticator``, ``set_service_url`` and the generated CA as the trust anchor.
The server is the same stack as ``kinko keys serve`` (SQLite, soft keystore, file audit,
uvicorn with TLS) on a real loopback port, with a clock the tests move forward for Key
Protect's waiting periods. Registrations are written with a service identity over httpx:
the SDK has no call for that (in Key Protect only IBM's services write them).

Key Protect answers with its own media types (``application/vnd.ibm.kms.key+json`` …), which
``ibm-cloud-sdk-core`` does not decode: ``get_result()`` is then the ``requests`` response,
and IBM's own examples call ``.json()`` on it (see :func:`result`).
"""

from __future__ import annotations

import base64
import io
import json
import os
import ssl
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from ibm_cloud_sdk_core import ApiException, DetailedResponse
from ibm_cloud_sdk_core.authenticators import BearerTokenAuthenticator
from keyprotect import IbmKeyProtectApiV2

from tests.integration.keyservice_fixture import RunningKeyService, running_keyservice

INST, OTHER = "a1b2c3d4-0000-4000-8000-00000000c0de", "a1b2c3d4-0000-4000-8000-0000000000ff"
KEY = "application/vnd.ibm.kms.key+json"
CRN = "crn:v1:bluemix:public:cloud-object-storage:global:a/acct0001:inst0001:bucket:sdk-one"
CRN_WORM = "crn:v1:bluemix:public:cloud-object-storage:global:a/acct0001:inst0001:bucket:worm"


@pytest.fixture(scope="module")
def kinko(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningKeyService]:
    with running_keyservice(tmp_path_factory.mktemp("keyservice")) as running:
        running.add_token("alice", INST, "Manager", "Writer")
        running.add_token("bob", INST, "Manager")
        running.add_token("pat", INST, "KeyPurge")
        running.add_token("cos", INST, "Reader", service_identity=True)
        running.add_token("eve", OTHER, "Manager", "Writer")
        yield running


def client(kinko: RunningKeyService, who: str = "alice") -> IbmKeyProtectApiV2:
    """IBM's client, configured as its README says, pointed at kinko."""
    kp = IbmKeyProtectApiV2(authenticator=BearerTokenAuthenticator(kinko.tokens[who]))
    kp.set_service_url(kinko.url)
    kp.set_disable_ssl_verification(False)
    kp.set_http_config({"verify": str(kinko.ca)})
    return kp


@pytest.fixture(scope="module")
def kp(kinko: RunningKeyService) -> IbmKeyProtectApiV2:
    return client(kinko)


def result(response: DetailedResponse) -> Any:
    """The parsed body: a dict for application/json, else the requests response's JSON."""
    value = response.get_result()
    return value.json() if hasattr(value, "json") else value


def body(document: dict[str, Any]) -> io.BytesIO:
    return io.BytesIO(json.dumps(document).encode())


def key_body(name: str, **fields: Any) -> io.BytesIO:
    resource = {"type": KEY, "name": name, "extractable": False, **fields}
    return body(
        {"metadata": {"collectionType": KEY, "collectionTotal": 1}, "resources": [resource]}
    )


def create(kp: IbmKeyProtectApiV2, name: str, **fields: Any) -> dict[str, Any]:
    response = kp.create_key(INST, key_body(name, **fields), prefer="return=representation")
    assert response.get_status_code() == 201
    key: dict[str, Any] = result(response)["resources"][0]
    return key


def api_error(call: Callable[[], object]) -> tuple[int, str]:
    """The HTTP status and Key Protect reason code of a call that fails."""
    with pytest.raises(ApiException) as caught:
        call()
    envelope = caught.value.http_response.json()
    assert envelope["metadata"]["collectionType"] == "application/vnd.ibm.kms.error+json"
    return caught.value.status_code, envelope["resources"][0]["reasons"][0]["code"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- keys ----------------------------------------------------------------------------------


def test_create_list_get_metadata_versions(kp: IbmKeyProtectApiV2) -> None:
    key = create(kp, "sdk-root-1", description="made by the SDK test")
    assert key["type"] == KEY
    assert key["name"] == "sdk-root-1"
    assert key["description"] == "made by the SDK test"
    assert key["state"] == 1
    assert key["extractable"] is False
    assert key["keyRingID"] == "default"
    assert key["createdBy"] == "alice"

    minimal = kp.create_key(INST, key_body("sdk-root-min"))
    assert minimal.get_status_code() == 201
    assert set(result(minimal)["resources"][0]) == {"type", "id"}

    listed = result(kp.get_keys(INST, limit=5000))
    assert listed["metadata"]["collectionType"] == KEY
    assert listed["metadata"]["collectionTotal"] == len(listed["resources"])
    assert key["id"] in {k["id"] for k in listed["resources"]}
    total = kp.get_key_collection_metadata(INST)
    assert total.get_status_code() == 200
    assert int(total.get_headers()["Key-Total"]) == listed["metadata"]["collectionTotal"]
    roots = result(kp.get_keys(INST, extractable=False, state=[1]))
    assert all(k["extractable"] is False and k["state"] == 1 for k in roots["resources"])

    got = result(kp.get_key(key["id"], INST))["resources"][0]
    assert got["id"] == key["id"]
    assert "payload" not in got  # a root key's material never leaves the HSM
    meta = result(kp.get_key_metadata(key["id"], INST))["resources"][0]
    assert meta["crn"] == key["crn"]

    versions = result(kp.get_key_versions(key["id"], INST, total_count=True))
    assert versions["metadata"]["collectionType"] == "application/vnd.ibm.kms.key.version+json"
    assert versions["metadata"]["totalCount"] == 1
    assert versions["resources"][0]["id"] == key["keyVersion"]["id"]


def test_standard_key_payload(kp: IbmKeyProtectApiV2) -> None:
    material = os.urandom(48)
    key = create(kp, "sdk-standard", extractable=True, payload=b64(material))
    got = result(kp.get_key(key["id"], INST))["resources"][0]
    assert base64.b64decode(got["payload"]) == material
    assert got["imported"] is True


def test_create_with_policy_overrides_and_key_policies(kp: IbmKeyProtectApiV2) -> None:
    response = kp.create_key_with_policies_overrides(
        INST,
        key_body(
            "sdk-overrides",
            rotation={"enabled": True, "interval_month": 6},
            dualAuthDelete={"enabled": False},
        ),
        prefer="return=representation",
    )
    assert response.get_status_code() == 201
    key = result(response)["resources"][0]
    assert key["rotation"] == {"enabled": True, "interval_month": 6}

    rotation = result(kp.get_policy(key["id"], INST, policy="rotation"))
    assert rotation["metadata"]["collectionType"] == "application/vnd.ibm.kms.policy+json"
    assert rotation["resources"][0]["rotation"] == {"enabled": True, "interval_month": 6}

    policy_body = {
        "metadata": {"collectionType": "application/vnd.ibm.kms.policy+json", "collectionTotal": 1},
        "resources": [
            {"type": "application/vnd.ibm.kms.policy+json", "rotation": {"interval_month": 3}}
        ],
    }
    put = kp.put_policy(key["id"], INST, policy_body, policy="rotation")
    assert put.get_status_code() == 200
    assert result(put)["resources"][0]["rotation"]["interval_month"] == 3

    dual_body = {
        "metadata": {"collectionType": "application/vnd.ibm.kms.policy+json", "collectionTotal": 1},
        "resources": [
            {"type": "application/vnd.ibm.kms.policy+json", "dualAuthDelete": {"enabled": True}}
        ],
    }
    assert kp.put_policy(key["id"], INST, dual_body, policy="dualAuthDelete").get_status_code() == (
        200
    )
    both = result(kp.get_policy(key["id"], INST))["resources"]
    assert {"rotation", "dualAuthDelete"} <= {name for r in both for name in r}
    dual = result(kp.get_policy(key["id"], INST, policy="dualAuthDelete"))["resources"][0]
    assert dual["dualAuthDelete"] == {"enabled": True}
    assert dual["updatedBy"] == "alice"


# --- wrap, unwrap, rewrap, rotate ----------------------------------------------------------


def test_wrap_unwrap_rewrap_rotate(kp: IbmKeyProtectApiV2) -> None:
    key = create(kp, "sdk-wrapping")
    dek = os.urandom(32)

    wrapped = result(
        kp.wrap_key(key["id"], INST, key_action_wrap_body=body({"plaintext": b64(dek)}))
    )
    assert set(wrapped) == {"ciphertext", "keyVersion"}
    generated = result(kp.wrap_key(key["id"], INST))
    assert len(base64.b64decode(generated["plaintext"])) == 32
    aad = ["kube-system", "secret/ca"]
    with_aad = result(
        kp.wrap_key(key["id"], INST, key_action_wrap_body=body({"plaintext": b64(dek), "aad": aad}))
    )

    unwrapped = result(kp.unwrap_key(key["id"], INST, body({"ciphertext": wrapped["ciphertext"]})))
    assert base64.b64decode(unwrapped["plaintext"]) == dek
    assert "rewrappedKeyVersion" not in unwrapped
    generated_back = result(
        kp.unwrap_key(key["id"], INST, body({"ciphertext": generated["ciphertext"]}))
    )
    assert generated_back["plaintext"] == generated["plaintext"]
    aad_back = result(
        kp.unwrap_key(key["id"], INST, body({"ciphertext": with_aad["ciphertext"], "aad": aad}))
    )
    assert base64.b64decode(aad_back["plaintext"]) == dek
    assert api_error(
        lambda: kp.unwrap_key(key["id"], INST, body({"ciphertext": with_aad["ciphertext"]}))
    ) == (422, "UNPROCESSABLE_CIPHERTEXT_ERR")

    rotated = kp.rotate_key(key["id"], INST, key_action_rotate_body=body({}))
    assert rotated.get_status_code() == 204
    versions = result(kp.get_key_versions(key["id"], INST))["resources"]
    assert len(versions) == 2
    latest = versions[0]["id"]
    assert latest != wrapped["keyVersion"]["id"]
    assert api_error(lambda: kp.rotate_key(key["id"], INST)) == (409, "KEY_ROTATION_NOT_PERMITTED")

    # Unwrapping an older version also hands back the DEK rewrapped under the latest one.
    after = result(kp.unwrap_key(key["id"], INST, body({"ciphertext": wrapped["ciphertext"]})))
    assert base64.b64decode(after["plaintext"]) == dek
    assert after["keyVersion"]["id"] == wrapped["keyVersion"]["id"]
    assert after["rewrappedKeyVersion"]["id"] == latest

    rewrapped = result(
        kp.rewrap_key(key["id"], INST, body({"ciphertext": with_aad["ciphertext"], "aad": aad}))
    )
    assert rewrapped["keyVersion"]["id"] == with_aad["keyVersion"]["id"]
    assert rewrapped["rewrappedKeyVersion"]["id"] == latest
    final = result(
        kp.unwrap_key(key["id"], INST, body({"ciphertext": rewrapped["ciphertext"], "aad": aad}))
    )
    assert base64.b64decode(final["plaintext"]) == dek
    assert "rewrappedKeyVersion" not in final

    # The deprecated query form (?action=wrap) that the SDK still offers.
    legacy = result(kp.action_on_key(key["id"], INST, "wrap", body({"plaintext": b64(dek)})))
    assert legacy["keyVersion"]["id"] == latest


def test_disable_enable(kinko: RunningKeyService, kp: IbmKeyProtectApiV2) -> None:
    key = create(kp, "sdk-disable")
    assert kp.disable_key(key["id"], INST).get_status_code() == 204
    assert result(kp.get_key_metadata(key["id"], INST))["resources"][0]["state"] == 2
    assert api_error(lambda: kp.wrap_key(key["id"], INST)) == (409, "KEY_ACTION_INVALID_STATE_ERR")
    assert api_error(lambda: kp.enable_key(key["id"], INST)) == (409, "REQ_TOO_EARLY_ERR")
    kinko.clock.advance(timedelta(seconds=31))
    assert kp.enable_key(key["id"], INST).get_status_code() == 204
    assert result(kp.get_key_metadata(key["id"], INST))["resources"][0]["state"] == 1
    assert "ciphertext" in result(kp.wrap_key(key["id"], INST))


def test_instance_policies(kp: IbmKeyProtectApiV2) -> None:
    def dual(enabled: bool) -> dict[str, Any]:
        return {
            "metadata": {
                "collectionType": "application/vnd.ibm.kms.policy+json",
                "collectionTotal": 1,
            },
            "resources": [{"policy_type": "dualAuthDelete", "policy_data": {"enabled": enabled}}],
        }

    put = kp.put_instance_policy(INST, dual(True), policy="dualAuthDelete")
    assert put.get_status_code() == 204
    got = result(kp.get_instance_policy(INST, policy="dualAuthDelete"))
    assert got["resources"][0]["policy_type"] == "dualAuthDelete"
    assert got["resources"][0]["policy_data"] == {"enabled": True}
    inherited = create(kp, "sdk-inherits-dual-auth")
    assert inherited["dualAuthDelete"]["enabled"] is True
    assert kp.put_instance_policy(INST, dual(False), policy="dualAuthDelete").get_status_code() == (
        204
    )
    assert result(kp.get_instance_policy(INST))["resources"][0]["policy_data"] == {"enabled": False}


def test_import_token_and_secure_import(kp: IbmKeyProtectApiV2) -> None:
    created = kp.post_import_token(INST, expiration=600, max_allowed_retrievals=2)
    assert created.get_status_code() == 200
    info = result(created)
    assert info["maxAllowedRetrievals"] == 2
    assert info["remainingRetrievals"] == 2
    token = result(kp.get_import_token(INST))
    assert token["remainingRetrievals"] == 1
    public_key = serialization.load_pem_public_key(base64.b64decode(token["payload"]))
    assert isinstance(public_key, rsa.RSAPublicKey)

    material, iv = os.urandom(32), os.urandom(12)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    key = create(
        kp,
        "sdk-imported",
        payload=b64(public_key.encrypt(material, oaep)),
        encryptedNonce=b64(AESGCM(material).encrypt(iv, base64.b64decode(token["nonce"]), None)),
        iv=b64(iv),
        encryptionAlgorithm="RSAES_OAEP_SHA_256",
    )
    assert key["imported"] is True
    dek = os.urandom(32)
    wrapped = result(
        kp.wrap_key(key["id"], INST, key_action_wrap_body=body({"plaintext": b64(dek)}))
    )
    # The ciphertext is AES-GCM under exactly the imported material: decrypt it ourselves.
    inner = json.loads(base64.b64decode(wrapped["ciphertext"]))
    assert inner["version"] == "4.0.0"
    unwrapped = result(kp.unwrap_key(key["id"], INST, body({"ciphertext": wrapped["ciphertext"]})))
    assert base64.b64decode(unwrapped["plaintext"]) == dek
    # An imported root key rotates only with new material.
    assert api_error(lambda: kp.rotate_key(key["id"], INST, key_action_rotate_body=body({}))) == (
        400,
        "KEY_PAYLOAD_REQ_ERR",
    )


# --- registrations, aliases, key rings -----------------------------------------------------


def https(kinko: RunningKeyService) -> httpx.Client:
    return httpx.Client(base_url=kinko.url, verify=ssl.create_default_context(cafile=kinko.ca))


def register(
    kinko: RunningKeyService, key_id: str, crn: str, *, prevent: bool = False
) -> httpx.Response:
    document = {
        "metadata": {
            "collectionType": "application/vnd.ibm.kms.registration_input+json",
            "collectionTotal": 1,
        },
        "resources": [{"description": "a bucket", "preventKeyDeletion": prevent}],
    }
    with https(kinko) as http:
        return http.post(
            f"/api/v2/keys/{key_id}/registrations/{quote(crn, safe='')}",
            json=document,
            headers={
                "authorization": f"Bearer {kinko.tokens['cos']}",
                "bluemix-instance": INST,
                "content-type": "application/vnd.ibm.kms.registration+json",
            },
        )


def test_registrations_and_deletion(kinko: RunningKeyService, kp: IbmKeyProtectApiV2) -> None:
    key = create(kp, "sdk-registered")
    registered = register(kinko, key["id"], CRN)
    assert registered.status_code == 201, registered.text
    assert registered.json()["resources"][0]["resourceCrn"] == CRN

    per_key = result(kp.get_registrations(key["id"], INST, total_count=True))
    assert per_key["metadata"]["collectionType"] == "application/vnd.ibm.kms.registration+json"
    assert per_key["metadata"]["totalCount"] == 1
    assert per_key["resources"][0]["resourceCrn"] == CRN
    assert per_key["resources"][0]["keyVersion"]["id"] == key["keyVersion"]["id"]
    everywhere = result(kp.get_registrations_all_keys(INST, url_encoded_resource_crn_query=CRN))
    assert [r["keyId"] for r in everywhere["resources"]] == [key["id"]]

    assert api_error(lambda: kp.delete_key(key["id"], INST)) == (409, "PROTECTED_RESOURCE_ERR")
    forced = kp.delete_key(key["id"], INST, force=True, prefer="return=representation")
    assert forced.get_status_code() == 200
    deleted = result(forced)["resources"][0]
    assert deleted["state"] == 5
    assert deleted["deleted"] is True

    worm = create(kp, "sdk-worm")
    assert register(kinko, worm["id"], CRN_WORM, prevent=True).status_code == 201
    assert api_error(lambda: kp.delete_key(worm["id"], INST, force=True)) == (
        409,
        "PREV_KEY_DEL_ERR",
    )
    # A user cannot write registrations, not even a Manager.
    with https(kinko) as http:
        refused = http.post(
            f"/api/v2/keys/{worm['id']}/registrations/{quote(CRN_WORM + 'x', safe='')}",
            headers={"authorization": f"Bearer {kinko.tokens['alice']}", "bluemix-instance": INST},
        )
    assert refused.status_code == 403
    assert refused.json()["resources"][0]["reasons"][0]["code"] == "SERVICE_ONLY_ERR"


def test_aliases(kp: IbmKeyProtectApiV2) -> None:
    key = create(kp, "sdk-aliased")
    made = kp.create_key_alias(key["id"], "sdk-alias-1", INST)
    assert made.get_status_code() == 201
    alias = result(made)["resources"][0]
    assert alias == {**alias, "keyId": key["id"], "alias": "sdk-alias-1", "createdBy": "alice"}
    by_alias = result(kp.get_key("sdk-alias-1", INST))["resources"][0]
    assert by_alias["id"] == key["id"]
    assert by_alias["aliases"] == ["sdk-alias-1"]
    assert "ciphertext" in result(kp.wrap_key("sdk-alias-1", INST))
    assert kp.delete_key_alias(key["id"], "sdk-alias-1", INST).get_status_code() == 204
    assert api_error(lambda: kp.get_key("sdk-alias-1", INST)) == (404, "KEY_NOT_FOUND_ERR")


def test_key_rings_and_patch(kp: IbmKeyProtectApiV2) -> None:
    assert kp.create_key_ring("sdk-ring", INST).get_status_code() == 201
    rings = result(kp.list_key_rings(INST, total_count=True))
    assert rings["metadata"]["collectionType"] == "application/vnd.ibm.kms.key_ring+json"
    assert [r["id"] for r in rings["resources"]][:1] == ["default"]
    assert "sdk-ring" in {r["id"] for r in rings["resources"]}

    response = kp.create_key(
        INST, key_body("sdk-in-ring"), prefer="return=representation", x_kms_key_ring="sdk-ring"
    )
    key = result(response)["resources"][0]
    assert key["keyRingID"] == "sdk-ring"
    in_ring = result(kp.get_keys(INST, x_kms_key_ring="sdk-ring"))["resources"]
    assert [k["id"] for k in in_ring] == [key["id"]]
    assert api_error(lambda: kp.get_key(key["id"], INST, x_kms_key_ring="default")) == (
        404,
        "KEY_NOT_FOUND_ERR",
    )
    assert api_error(lambda: kp.delete_key_ring("sdk-ring", INST))[0] == 409

    patched = kp.patch_key(
        key["id"], INST, key_patch_body=body({"keyRingID": "default"}), x_kms_key_ring="sdk-ring"
    )
    assert patched.get_status_code() == 200
    assert result(patched)["resources"][0]["keyRingID"] == "default"
    assert kp.delete_key_ring("sdk-ring", INST).get_status_code() == 204
    assert "sdk-ring" not in {r["id"] for r in result(kp.list_key_rings(INST))["resources"]}


# --- delete, restore, purge, dual authorization --------------------------------------------


def test_delete_restore_purge(kinko: RunningKeyService, kp: IbmKeyProtectApiV2) -> None:
    key = create(kp, "sdk-lifecycle")
    ciphertext = result(kp.wrap_key(key["id"], INST))["ciphertext"]
    deleted = kp.delete_key(key["id"], INST)
    assert deleted.get_status_code() == 204
    assert api_error(lambda: kp.unwrap_key(key["id"], INST, body({"ciphertext": ciphertext}))) == (
        410,
        "KEY_DELETED_ERR",
    )
    assert api_error(lambda: kp.restore_key(key["id"], INST)) == (409, "REQ_TOO_EARLY_ERR")
    kinko.clock.advance(timedelta(seconds=31))
    restored = kp.restore_key(key["id"], INST)
    assert restored.get_status_code() == 201
    assert result(restored)["resources"][0]["state"] == 1
    assert "plaintext" in result(kp.unwrap_key(key["id"], INST, body({"ciphertext": ciphertext})))

    assert kp.delete_key(key["id"], INST, prefer="return=representation").get_status_code() == 200
    purger = client(kinko, "pat")
    assert api_error(lambda: purger.purge_key(key["id"], INST)) == (409, "REQ_TOO_EARLY_ERR")
    assert api_error(lambda: kp.purge_key(key["id"], INST))[0] == 403  # Manager cannot purge
    kinko.clock.advance(timedelta(hours=4, seconds=1))
    purged = purger.purge_key(key["id"], INST, prefer="return=representation")
    assert purged.get_status_code() == 200
    assert result(purged)["resources"][0]["id"] == key["id"]
    assert api_error(lambda: kp.get_key(key["id"], INST)) == (404, "KEY_NOT_FOUND_ERR")


def test_set_and_unset_for_deletion(kinko: RunningKeyService, kp: IbmKeyProtectApiV2) -> None:
    response = kp.create_key_with_policies_overrides(
        INST,
        key_body("sdk-dual", dualAuthDelete={"enabled": True}),
        prefer="return=representation",
    )
    key = result(response)["resources"][0]
    bob = client(kinko, "bob")
    assert api_error(lambda: bob.delete_key(key["id"], INST)) == (409, "AUTHORIZATIONS_NOT_MET")
    assert kp.set_key_for_deletion(key["id"], INST).get_status_code() == 204
    view = result(kp.get_key_metadata(key["id"], INST))["resources"][0]
    assert view["dualAuthDelete"]["keySetForDeletion"] is True
    assert kp.unset_key_for_deletion(key["id"], INST).get_status_code() == 204
    assert api_error(lambda: bob.delete_key(key["id"], INST)) == (409, "AUTHORIZATIONS_NOT_MET")
    assert kp.set_key_for_deletion(key["id"], INST).get_status_code() == 204
    # The one who authorized may not also delete.
    assert api_error(lambda: kp.delete_key(key["id"], INST)) == (409, "AUTHORIZATIONS_NOT_MET")
    assert bob.delete_key(key["id"], INST).get_status_code() == 204

    plain = create(kp, "sdk-no-dual")
    assert api_error(lambda: kp.set_key_for_deletion(plain["id"], INST)) == (
        409,
        "NOT_DUAL_AUTH_ERR",
    )


def test_sync(kp: IbmKeyProtectApiV2) -> None:
    key = create(kp, "sdk-sync")
    assert kp.sync_associated_resources(key["id"], INST).get_status_code() == 204


# --- tenants and errors as the SDK sees them -----------------------------------------------


def test_instances_are_tenants(kinko: RunningKeyService, kp: IbmKeyProtectApiV2) -> None:
    key = create(kp, "sdk-tenant")
    eve = client(kinko, "eve")
    assert api_error(lambda: eve.get_key(key["id"], INST)) == (401, "UNAUTHORIZED_ERR")
    assert api_error(lambda: eve.get_key(key["id"], OTHER)) == (404, "KEY_NOT_FOUND_ERR")
    assert key["id"] not in {k["id"] for k in result(eve.get_keys(OTHER))["resources"]}
    assert api_error(lambda: eve.wrap_key(key["id"], OTHER)) == (404, "KEY_NOT_FOUND_ERR")


def test_unknown_token(kinko: RunningKeyService) -> None:
    stranger = IbmKeyProtectApiV2(authenticator=BearerTokenAuthenticator("kinko_" + "B" * 43))
    stranger.set_service_url(kinko.url)
    stranger.set_http_config({"verify": str(kinko.ca)})
    assert api_error(lambda: stranger.get_keys(INST)) == (401, "UNAUTHORIZED_ERR")


def test_correlation_id_is_echoed(kp: IbmKeyProtectApiV2) -> None:
    response = kp.get_keys(INST, correlation_id="sdk-corr-1")
    assert response.get_headers()["correlation-id"] == "sdk-corr-1"


def test_audit_log_holds_ids_only(kinko: RunningKeyService, kp: IbmKeyProtectApiV2) -> None:
    key = create(kp, "sdk-audited")
    dek = os.urandom(32)
    wrapped = result(
        kp.wrap_key(key["id"], INST, key_action_wrap_body=body({"plaintext": b64(dek)}))
    )
    text = Path(kinko.audit_log).read_text()
    assert key["id"] in text
    for secret in (b64(dek), wrapped["ciphertext"], kinko.tokens["alice"]):
        assert secret not in text
