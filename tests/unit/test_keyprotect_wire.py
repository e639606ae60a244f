"""The Key Protect REST transport over the key service on MemoryStore and MemoryHsm.

Every bad input of the issue gets its exact HTTP status and Key Protect reason code and
changes nothing (the store's revision does not move); the success shapes are checked field
by field (envelopes, media types, prefer, correlation id); nothing logged carries a token,
plaintext or ciphertext.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from kinko.api.keyprotect import create_keyprotect_app
from kinko.hsm.memory import MemoryHsm
from kinko.keys.audit import MemoryAuditSink
from kinko.keys.auth import TokenBook, hash_token, issue_token
from kinko.keys.service import KeyService
from kinko.store.memory import MemoryStore

INST, OTHER = "inst-1", "inst-2"
KEY = "application/vnd.ibm.kms.key+json"
CRN = "crn:v1:bluemix:public:cloud-object-storage:global:a/acct:inst::bucket:one"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Api:
    client: TestClient
    store: MemoryStore
    clock: Clock
    tokens: dict[str, str]
    audit: MemoryAuditSink

    def headers(self, who: str = "alice", instance: str = INST, **extra: str) -> dict[str, str]:
        return {
            "authorization": f"Bearer {self.tokens[who]}",
            "bluemix-instance": instance,
            **extra,
        }

    def revision(self) -> int:
        return self.store.range(b"", limit=1).revision

    def create(self, name: str = "k1", *, extractable: bool = False, **extra: object) -> str:
        body = envelope([{"type": KEY, "name": name, "extractable": extractable, **extra}])
        response = self.client.post(
            "/api/v2/keys",
            content=json.dumps(body),
            headers=self.headers(**{"content-type": KEY, "prefer": "return=representation"}),
        )
        assert response.status_code == 201, response.text
        key_id: str = response.json()["resources"][0]["id"]
        return key_id

    def wrap(self, key_id: str, **body: object) -> dict[str, Any]:
        response = self.client.post(
            f"/api/v2/keys/{key_id}/actions/wrap", json=body, headers=self.headers()
        )
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document


def envelope(resources: list[dict[str, object]], total: int | None = None) -> dict[str, object]:
    return {
        "metadata": {
            "collectionType": KEY,
            "collectionTotal": len(resources) if total is None else total,
        },
        "resources": resources,
    }


@pytest.fixture
def api() -> Iterator[Api]:
    store, clock, audit = MemoryStore(), Clock(), MemoryAuditSink()
    service = KeyService(
        store,
        MemoryHsm(),
        audit=audit,
        clock=clock,
        rng=os.urandom,
        import_key_bits=2048,
    )
    book = TokenBook(store)
    tokens: dict[str, str] = {}
    for who, instance, roles, service_identity in (
        ("alice", INST, ["Manager", "Writer"], False),
        ("rita", INST, ["Reader"], False),
        ("cos", INST, ["Reader"], True),
        ("eve", OTHER, ["Manager"], False),
    ):
        issued = issue_token(
            rng=os.urandom,
            instance=instance,
            roles=roles,
            now=clock(),
            service=service_identity,
            name=who,
        )
        book.add(issued.record)
        tokens[who] = issued.token
    with TestClient(create_keyprotect_app(service, max_body=16384, echo=True)) as client:
        yield Api(client, store, clock, tokens, audit)


def reason(response: Any) -> str:
    body = response.json()
    assert body["metadata"] == {
        "collectionType": "application/vnd.ibm.kms.error+json",
        "collectionTotal": 1,
    }
    resource = body["resources"][0]
    assert resource["errorMsg"].endswith(f"({resource['reasons'][0]['code']})")
    assert resource["reasons"][0]["status"] == response.status_code
    code: str = resource["reasons"][0]["code"]
    return code


def refused(api: Api, response: Any, status: int, code: str, before: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/vnd.ibm.kms.error+json"
    assert reason(response) == code
    assert api.revision() == before, "a refused request changed the store"


# --- bad input: each with its status and reason code, and nothing changed -----------------


def test_malformed_json(api: Api) -> None:
    before = api.revision()
    response = api.client.post(
        "/api/v2/keys", content=b'{"metadata": {', headers=api.headers(**{"content-type": KEY})
    )
    refused(api, response, 400, "BAD_BODY_ERR", before)


def test_invalid_utf8_body(api: Api) -> None:
    before = api.revision()
    response = api.client.post(
        "/api/v2/keys", content=b'{"a": "\xff"}', headers=api.headers(**{"content-type": KEY})
    )
    refused(api, response, 400, "BAD_BODY_ERR", before)


def test_wrong_media_type(api: Api) -> None:
    before = api.revision()
    body = json.dumps(envelope([{"type": KEY, "name": "k1"}]))
    response = api.client.post(
        "/api/v2/keys", content=body, headers=api.headers(**{"content-type": "text/plain"})
    )
    refused(api, response, 400, "BAD_BODY_ERR", before)


def test_collection_total_mismatch(api: Api) -> None:
    before = api.revision()
    body = envelope([{"type": KEY, "name": "k1"}], total=2)
    response = api.client.post("/api/v2/keys", json=body, headers=api.headers())
    refused(api, response, 400, "COLLECTION_TOTAL_MISMATCH_ERR", before)


def test_more_than_one_key(api: Api) -> None:
    before = api.revision()
    body = envelope([{"type": KEY, "name": "k1"}, {"type": KEY, "name": "k2"}])
    response = api.client.post("/api/v2/keys", json=body, headers=api.headers())
    refused(api, response, 400, "BAD_BODY_ERR", before)


def test_unknown_field(api: Api) -> None:
    before = api.revision()
    body = envelope([{"type": KEY, "name": "k1", "extra_field": "junk data"}])
    response = api.client.post("/api/v2/keys", json=body, headers=api.headers())
    refused(api, response, 400, "BAD_BODY_ERR", before)
    message = response.json()["resources"][0]["reasons"][0]["message"]
    assert message.endswith('json: unknown field "resources[0].extra_field"')


def test_missing_body(api: Api) -> None:
    before = api.revision()
    response = api.client.post("/api/v2/keys", headers=api.headers())
    refused(api, response, 400, "NO_BODY_ERR", before)


def test_unknown_key_and_alias(api: Api) -> None:
    before = api.revision()
    for ref in ("3f1f8e2a-0000-4000-8000-000000000000", "no-such-alias"):
        response = api.client.get(f"/api/v2/keys/{ref}", headers=api.headers())
        refused(api, response, 404, "KEY_NOT_FOUND_ERR", before)
        wrapped = api.client.post(
            f"/api/v2/keys/{ref}/actions/wrap", json={}, headers=api.headers()
        )
        refused(api, wrapped, 404, "KEY_NOT_FOUND_ERR", before)


def test_action_in_the_wrong_state(api: Api) -> None:
    key_id = api.create()
    disabled = api.client.post(f"/api/v2/keys/{key_id}/actions/disable", headers=api.headers())
    assert disabled.status_code == 204
    before = api.revision()
    wrap = api.client.post(f"/api/v2/keys/{key_id}/actions/wrap", json={}, headers=api.headers())
    refused(api, wrap, 409, "KEY_ACTION_INVALID_STATE_ERR", before)
    again = api.client.post(f"/api/v2/keys/{key_id}/actions/disable", headers=api.headers())
    refused(api, again, 409, "KEY_ACTION_INVALID_STATE_ERR", before)
    too_early = api.client.post(f"/api/v2/keys/{key_id}/actions/enable", headers=api.headers())
    refused(api, too_early, 409, "REQ_TOO_EARLY_ERR", before)


def test_deleted_key(api: Api) -> None:
    key_id = api.create()
    assert api.client.delete(f"/api/v2/keys/{key_id}", headers=api.headers()).status_code == 204
    before = api.revision()
    wrap = api.client.post(f"/api/v2/keys/{key_id}/actions/wrap", json={}, headers=api.headers())
    refused(api, wrap, 410, "KEY_DELETED_ERR", before)
    again = api.client.delete(f"/api/v2/keys/{key_id}", headers=api.headers())
    refused(api, again, 410, "KEY_DELETED_ERR", before)


def test_second_rotation_within_the_hour(api: Api) -> None:
    key_id = api.create()
    rotate = f"/api/v2/keys/{key_id}/actions/rotate"
    assert api.client.post(rotate, json={}, headers=api.headers()).status_code == 204
    before = api.revision()
    refused(
        api,
        api.client.post(rotate, json={}, headers=api.headers()),
        409,
        "KEY_ROTATION_NOT_PERMITTED",
        before,
    )


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("wrap", {"plaintext": "not base64!"}, "plaintext"),
        ("wrap", {"plaintext": "YWJj="}, "plaintext"),
        ("unwrap", {"ciphertext": "%%%"}, "ciphertext"),
        ("rewrap", {"ciphertext": "e30"}, "ciphertext"),
        ("rotate", {"payload": "#"}, "payload"),
    ],
)
def test_bad_base64(api: Api, path: str, body: dict[str, object], field: str) -> None:
    key_id = api.create()
    before = api.revision()
    response = api.client.post(
        f"/api/v2/keys/{key_id}/actions/{path}", json=body, headers=api.headers()
    )
    refused(api, response, 400, "INVALID_FIELD_ERR", before)
    assert response.json()["resources"][0]["reasons"][0]["target"] == {
        "type": "field",
        "name": field,
    }


def test_bad_base64_payload_on_import(api: Api) -> None:
    before = api.revision()
    body = envelope([{"type": KEY, "name": "k1", "payload": "***"}])
    response = api.client.post("/api/v2/keys", json=body, headers=api.headers())
    refused(api, response, 400, "INVALID_FIELD_ERR", before)


def test_aad_entry_over_255_characters(api: Api) -> None:
    key_id = api.create()
    ciphertext = api.wrap(key_id, aad=["x" * 255])["ciphertext"]
    before = api.revision()
    wrap = api.client.post(
        f"/api/v2/keys/{key_id}/actions/wrap", json={"aad": ["x" * 256]}, headers=api.headers()
    )
    refused(api, wrap, 400, "BAD_BODY_ERR", before)
    unwrap = api.client.post(
        f"/api/v2/keys/{key_id}/actions/unwrap",
        json={"ciphertext": ciphertext, "aad": ["y" * 256]},
        headers=api.headers(),
    )
    refused(api, unwrap, 400, "BAD_BODY_ERR", before)


def test_aad_with_a_lone_surrogate_is_bad_body_not_internal_error(api: Api) -> None:
    # JSON "\ud800" decodes to a str that has no UTF-8 encoding; it used to reach the wrap
    # AAD's encoder and come back as 500 INTERNAL_ERR.
    key_id = api.create()
    ciphertext = api.wrap(key_id, aad=["a"])["ciphertext"]
    before, audited = api.revision(), len(api.audit.records)
    for action, fields in (
        ("wrap", ""),
        ("unwrap", f'"ciphertext": "{ciphertext}", '),
        ("rewrap", f'"ciphertext": "{ciphertext}", '),
    ):
        response = api.client.post(
            f"/api/v2/keys/{key_id}/actions/{action}",
            content=("{" + fields + r'"aad": ["a", "x\ud800y"]}').encode(),
            headers=api.headers(**{"content-type": "application/json"}),
        )
        refused(api, response, 400, "BAD_BODY_ERR", before)
        assert "ud800" not in response.text
    records = api.audit.records[audited:]
    assert [(r.outcome, r.reason) for r in records] == [("failure", "BAD_BODY_ERR")] * 3


def test_wrong_aad_and_tampered_ciphertext(api: Api) -> None:
    key_id = api.create()
    ciphertext = api.wrap(key_id, aad=["a", "b"])["ciphertext"]
    before = api.revision()
    wrong = api.client.post(
        f"/api/v2/keys/{key_id}/actions/unwrap",
        json={"ciphertext": ciphertext, "aad": ["a"]},
        headers=api.headers(),
    )
    refused(api, wrong, 422, "UNPROCESSABLE_CIPHERTEXT_ERR", before)
    not_ours = base64.b64encode(b'{"hello": "world"}').decode()
    other = api.client.post(
        f"/api/v2/keys/{key_id}/actions/unwrap",
        json={"ciphertext": not_ours},
        headers=api.headers(),
    )
    refused(api, other, 422, "UNPROCESSABLE_CIPHERTEXT_ERR", before)


def test_oversize_body(api: Api) -> None:
    key_id = api.create()
    before = api.revision()
    body = {"plaintext": base64.b64encode(b"x" * 13000).decode()}
    response = api.client.post(
        f"/api/v2/keys/{key_id}/actions/wrap", json=body, headers=api.headers()
    )
    refused(api, response, 413, "BAD_BODY_ERR", before)


def test_plaintext_over_7500_bytes(api: Api) -> None:
    key_id = api.create()
    before = api.revision()
    body = {"plaintext": base64.b64encode(b"x" * 7501).decode()}
    response = api.client.post(
        f"/api/v2/keys/{key_id}/actions/wrap", json=body, headers=api.headers()
    )
    refused(api, response, 400, "BAD_BODY_ERR", before)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-kinko-token",
        "Bearer kinko_" + "A" * 43,
    ],
)
def test_missing_malformed_or_unknown_token(api: Api, authorization: str | None) -> None:
    before = api.revision()
    headers = {"bluemix-instance": INST}
    if authorization is not None:
        headers["authorization"] = authorization
    response = api.client.get("/api/v2/keys", headers=headers)
    refused(api, response, 401, "UNAUTHORIZED_ERR", before)
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_revoked_token(api: Api) -> None:
    TokenBook(api.store).revoke(hash_token(api.tokens["rita"]))
    before = api.revision()
    response = api.client.get("/api/v2/keys", headers=api.headers("rita"))
    refused(api, response, 401, "UNAUTHORIZED_ERR", before)


def test_expired_token(api: Api) -> None:
    issued = issue_token(
        rng=os.urandom,
        instance=INST,
        roles=["Reader"],
        now=api.clock(),
        name="temp",
        expires=api.clock() + timedelta(hours=1),
    )
    TokenBook(api.store).add(issued.record)
    api.clock.advance(timedelta(hours=1))
    before = api.revision()
    headers = {"authorization": f"Bearer {issued.token}", "bluemix-instance": INST}
    response = api.client.get("/api/v2/keys", headers=headers)
    refused(api, response, 401, "UNAUTHORIZED_ERR", before)
    assert "expired" in response.json()["resources"][0]["reasons"][0]["message"]


def test_wrong_instance(api: Api) -> None:
    key_id = api.create()
    before = api.revision()
    # A token of another instance, naming this instance: 401, as if there were no token.
    cross = api.client.get(f"/api/v2/keys/{key_id}", headers=api.headers("eve", INST))
    refused(api, cross, 401, "UNAUTHORIZED_ERR", before)
    # The other instance's own view: this instance's key does not exist there.
    own = api.client.get(f"/api/v2/keys/{key_id}", headers=api.headers("eve", OTHER))
    refused(api, own, 404, "KEY_NOT_FOUND_ERR", before)
    listed = api.client.get("/api/v2/keys", headers=api.headers("eve", OTHER))
    assert listed.status_code == 200
    assert listed.json()["metadata"]["collectionTotal"] == 0


def test_missing_instance_header(api: Api) -> None:
    before = api.revision()
    headers = {"authorization": f"Bearer {api.tokens['alice']}"}
    response = api.client.get("/api/v2/keys", headers=headers)
    refused(api, response, 400, "INVALID_HEADER_ERR", before)


def test_bad_prefer_header(api: Api) -> None:
    before = api.revision()
    response = api.client.get("/api/v2/keys", headers=api.headers(prefer="return=all"))
    refused(api, response, 400, "INVALID_HEADER_ERR", before)


def test_missing_role(api: Api) -> None:
    before = api.revision()
    body = envelope([{"type": KEY, "name": "k1"}])
    response = api.client.post("/api/v2/keys", json=body, headers=api.headers("rita"))
    refused(api, response, 403, "FORBIDDEN_ERR", before)


def test_registration_by_a_user(api: Api) -> None:
    key_id = api.create()
    before = api.revision()
    response = api.client.post(
        f"/api/v2/keys/{key_id}/registrations/{CRN}", headers=api.headers("alice")
    )
    refused(api, response, 403, "SERVICE_ONLY_ERR", before)


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "5001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"state": "4"}, "state"),
        ({"extractable": "maybe"}, "extractable"),
        ({"search": "k"}, "search"),
    ],
)
def test_bad_query_parameters(api: Api, query: dict[str, str], name: str) -> None:
    before = api.revision()
    response = api.client.get("/api/v2/keys", params=query, headers=api.headers())
    refused(api, response, 400, "INVALID_QUERY_PARAM_ERR", before)
    target = response.json()["resources"][0]["reasons"][0]["target"]
    assert target == {"type": "query_param", "name": name}


def test_instance_policy_body_query_mismatch_and_unsupported_policy(api: Api) -> None:
    before = api.revision()
    meta = {"collectionType": "application/vnd.ibm.kms.policy+json", "collectionTotal": 1}
    dual = {"policy_type": "dualAuthDelete", "policy_data": {"enabled": True}}
    mismatch = api.client.put(
        "/api/v2/instance/policies",
        params={"policy": "rotation"},
        json={"metadata": meta, "resources": [dual]},
        headers=api.headers(),
    )
    refused(api, mismatch, 400, "BODY_QUERY_PARAM_MISMATCH_ERR", before)
    network = {
        "policy_type": "allowedNetwork",
        "policy_data": {"enabled": True, "attributes": {"allowed_network": "private-only"}},
    }
    unsupported = api.client.put(
        "/api/v2/instance/policies",
        params={"policy": "allowedNetwork"},
        json={"metadata": meta, "resources": [network]},
        headers=api.headers(),
    )
    refused(api, unsupported, 403, "FEATURE_RESTRICTED_ERR", before)


def test_deprecated_action_refuses_fields_of_other_actions(api: Api) -> None:
    key_id = api.create()
    before = api.revision()
    response = api.client.post(
        f"/api/v2/keys/{key_id}",
        params={"action": "wrap"},
        json={"ciphertext": "e30="},
        headers=api.headers(),
    )
    refused(api, response, 400, "BAD_BODY_ERR", before)
    unknown = api.client.post(
        f"/api/v2/keys/{key_id}", params={"action": "explode"}, json={}, headers=api.headers()
    )
    refused(api, unknown, 400, "INVALID_QUERY_PARAM_ERR", before)


# --- success shapes --------------------------------------------------------------------------


def test_create_returns_the_key_envelope(api: Api) -> None:
    body = envelope([{"type": KEY, "name": "root-1", "description": "d", "aliases": ["r1"]}])
    response = api.client.post(
        "/api/v2/keys",
        json=body,
        headers=api.headers(prefer="return=representation", **{"correlation-id": "corr-7"}),
    )
    assert response.status_code == 201
    assert response.headers["content-type"] == KEY
    assert response.headers["correlation-id"] == "corr-7"
    document = response.json()
    assert document["metadata"] == {"collectionType": KEY, "collectionTotal": 1}
    key = document["resources"][0]
    assert key["type"] == KEY
    assert key["name"] == "root-1"
    assert key["description"] == "d"
    assert key["aliases"] == ["r1"]
    assert key["state"] == 1
    assert key["extractable"] is False
    assert key["imported"] is False
    assert key["keyRingID"] == "default"
    assert key["crn"].endswith(f":{INST}:key:{key['id']}")
    assert key["createdBy"] == "alice"
    assert key["creationDate"] == "2030-01-01T00:00:00Z"
    assert key["algorithmType"] == "AES"
    assert key["algorithmBitSize"] == 256
    assert key["keyVersion"]["id"]
    assert key["dualAuthDelete"] == {"enabled": False}
    assert key["deleted"] is False
    assert "payload" not in key


def test_create_minimal(api: Api) -> None:
    response = api.client.post(
        "/api/v2/keys", json=envelope([{"type": KEY, "name": "kk"}]), headers=api.headers()
    )
    assert response.status_code == 201
    assert set(response.json()["resources"][0]) == {"type", "id"}


def test_standard_key_payload_on_get_only(api: Api) -> None:
    material = base64.b64encode(b"s" * 40).decode()
    key_id = api.create("std", extractable=True, payload=material)
    got = api.client.get(f"/api/v2/keys/{key_id}", headers=api.headers()).json()
    assert got["resources"][0]["payload"] == material
    assert got["resources"][0]["imported"] is True
    meta = api.client.get(f"/api/v2/keys/{key_id}/metadata", headers=api.headers()).json()
    assert "payload" not in meta["resources"][0]


def test_wrap_unwrap_rewrap_round_trip(api: Api) -> None:
    key_id = api.create()
    dek = base64.b64encode(b"d" * 32).decode()
    wrapped = api.wrap(key_id, plaintext=dek, aad=["ns", "secret"])
    assert set(wrapped) == {"ciphertext", "keyVersion"}
    generated = api.wrap(key_id)
    assert len(base64.b64decode(generated["plaintext"])) == 32
    assert api.client.post(
        f"/api/v2/keys/{key_id}/actions/rotate", headers=api.headers()
    ).status_code == (204)
    unwrap = api.client.post(
        f"/api/v2/keys/{key_id}/actions/unwrap",
        json={"ciphertext": wrapped["ciphertext"], "aad": ["ns", "secret"]},
        headers=api.headers(),
    )
    assert unwrap.status_code == 200
    assert unwrap.headers["content-type"] == "application/vnd.ibm.kms.key_action+json"
    body = unwrap.json()
    assert body["plaintext"] == dek
    assert body["keyVersion"] == wrapped["keyVersion"]
    assert body["rewrappedKeyVersion"]["id"] != wrapped["keyVersion"]["id"]
    rewrap = api.client.post(
        f"/api/v2/keys/{key_id}/actions/rewrap",
        json={"ciphertext": wrapped["ciphertext"], "aad": ["ns", "secret"]},
        headers=api.headers(),
    ).json()
    assert rewrap["keyVersion"] == wrapped["keyVersion"]
    assert rewrap["rewrappedKeyVersion"] == body["rewrappedKeyVersion"]


def test_deprecated_query_form_of_actions(api: Api) -> None:
    key_id = api.create()
    wrap = api.client.post(
        f"/api/v2/keys/{key_id}", params={"action": "wrap"}, json={}, headers=api.headers()
    )
    assert wrap.status_code == 200
    unwrap = api.client.post(
        f"/api/v2/keys/{key_id}",
        params={"action": "unwrap"},
        json={"ciphertext": wrap.json()["ciphertext"]},
        headers=api.headers(),
    )
    assert unwrap.json()["plaintext"] == wrap.json()["plaintext"]
    disable = api.client.post(
        f"/api/v2/keys/{key_id}", params={"action": "disable"}, headers=api.headers()
    )
    assert disable.status_code == 204


def test_list_head_versions_and_paging(api: Api) -> None:
    ids = [api.create(f"k{i}") for i in range(3)]
    listed = api.client.get("/api/v2/keys", params={"limit": 2}, headers=api.headers()).json()
    assert listed["metadata"] == {"collectionType": KEY, "collectionTotal": 2}
    assert {k["id"] for k in listed["resources"]} < set(ids)
    head = api.client.head("/api/v2/keys", headers=api.headers())
    assert head.status_code == 200
    assert head.headers["key-total"] == "3"
    assert head.content == b""
    versions = api.client.get(
        f"/api/v2/keys/{ids[0]}/versions", params={"totalCount": "true"}, headers=api.headers()
    ).json()
    assert versions["metadata"] == {
        "collectionType": "application/vnd.ibm.kms.key.version+json",
        "collectionTotal": 1,
        "totalCount": 1,
    }


def test_delete_and_purge_preferences(api: Api) -> None:
    key_id = api.create()
    deleted = api.client.delete(
        f"/api/v2/keys/{key_id}", headers=api.headers(prefer="return=representation")
    )
    assert deleted.status_code == 200
    key = deleted.json()["resources"][0]
    assert key["state"] == 5
    assert key["deleted"] is True
    assert key["deletedBy"] == "alice"
    assert key["restoreAllowed"] is False  # 30 s have not passed
    api.clock.advance(timedelta(seconds=31))
    restored = api.client.post(f"/api/v2/keys/{key_id}/restore", headers=api.headers())
    assert restored.status_code == 201
    assert restored.json()["resources"][0]["state"] == 1


def test_registrations_by_a_service_identity(api: Api) -> None:
    key_id = api.create()
    created = api.client.post(
        f"/api/v2/keys/{key_id}/registrations/{CRN}",
        json={
            "metadata": {
                "collectionType": "application/vnd.ibm.kms.registration_input+json",
                "collectionTotal": 1,
            },
            "resources": [{"description": "bucket one", "preventKeyDeletion": False}],
        },
        headers=api.headers("cos"),
    )
    assert created.status_code == 201, created.text
    registration = created.json()["resources"][0]
    assert registration["resourceCrn"] == CRN
    assert registration["keyId"] == key_id
    listed = api.client.get(
        "/api/v2/keys/registrations",
        params={"urlEncodedResourceCRNQuery": CRN, "totalCount": "true"},
        headers=api.headers("rita"),
    ).json()
    assert listed["metadata"]["collectionType"] == "application/vnd.ibm.kms.registration+json"
    assert listed["metadata"]["totalCount"] == 1
    blocked = api.client.delete(f"/api/v2/keys/{key_id}", headers=api.headers())
    assert blocked.status_code == 409
    assert reason(blocked) == "PROTECTED_RESOURCE_ERR"


def test_openapi_health_and_echo(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    paths = schema["paths"]
    assert "/api/v2/keys/{id}/actions/wrap" in paths
    assert "/api/v2/_echo" not in paths
    assert all("422" not in op["responses"] for item in paths.values() for op in item.values())
    assert "bluemix-instance" in {
        p["name"] for p in paths["/api/v2/keys"]["get"]["parameters"] if p["in"] == "header"
    }
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.post("/api/v2/_echo", json={"a": 1}).json() == {"a": 1}


def test_hot_routes_are_documented_with_their_bodies(api: Api) -> None:
    # Wrap, unwrap and rewrap read their request themselves; twins document them.
    paths = api.client.get("/openapi.json").json()["paths"]
    for action, model, required in (
        ("wrap", "WrapBody", False),
        ("unwrap", "UnwrapBody", True),
        ("rewrap", "RewrapBody", True),
    ):
        operation = paths[f"/api/v2/keys/{{id}}/actions/{action}"]["post"]
        assert operation["operationId"] == f"{action}_key_api_v2_keys__id__actions_{action}_post"
        assert [p["name"] for p in operation["parameters"]][-1] == "id"
        assert operation["security"] == [{"bearer": []}]
        body = operation["requestBody"]
        assert body.get("required", False) is required
        assert model in str(body["content"]["application/vnd.ibm.kms.key_action+json"])
        assert "400" in operation["responses"]
        assert "422" not in operation["responses"]


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        # A body that is not JSON is refused before the caller is authenticated...
        (b"{bad", {"content-type": "application/json"}, 400, "BAD_BODY_ERR"),
        # ...a body that is JSON but of the wrong shape only after.
        (b'{"plaintext": 5}', {"content-type": "application/json"}, 401, "UNAUTHORIZED_ERR"),
        (b"", {}, 401, "UNAUTHORIZED_ERR"),
    ],
)
def test_hot_route_order_of_refusals_without_a_token(
    api: Api, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    key_id = api.create()
    for action in ("wrap", "unwrap", "rewrap"):
        response = api.client.post(
            f"/api/v2/keys/{key_id}/actions/{action}",
            content=content,
            headers={"bluemix-instance": INST, **headers},
        )
        assert response.status_code == status, response.text
        assert reason(response) == code


def test_no_token_plaintext_or_ciphertext_in_logs(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key_id = api.create()
    dek = base64.b64encode(os.urandom(32)).decode()
    wrapped = api.wrap(key_id, plaintext=dek)
    api.client.post(
        f"/api/v2/keys/{key_id}/actions/unwrap",
        json={"ciphertext": wrapped["ciphertext"]},
        headers=api.headers(),
    )
    api.client.post(
        f"/api/v2/keys/{key_id}/actions/unwrap",
        json={"ciphertext": wrapped["ciphertext"][:-4] + "AAA="},
        headers=api.headers(),
    )
    for secret in (dek, wrapped["ciphertext"], api.tokens["alice"]):
        assert secret not in caplog.text


# --- the authentication cache ----------------------------------------------------------------


def test_parsed_headers_never_show_the_bearer_token() -> None:
    from kinko.api import kp_auth

    token = "kinko_" + "s3cret" * 7
    raw = kp_auth.scan_headers(
        [(b"authorization", f"Bearer {token}".encode()), (b"bluemix-instance", b"inst")]
    )
    parsed = kp_auth.parse_headers(raw)
    assert parsed.token == token  # kept for authentication...
    for shown in (repr(raw), repr(parsed), str(raw), str(parsed), f"{parsed!r}"):
        assert token not in shown  # ...never shown
        assert "<redacted>" in shown
        assert "'inst'" in shown
    assert "token=None" in repr(kp_auth.parse_headers(kp_auth.scan_headers([])))


def test_successful_authentications_are_remembered_for_the_ttl_only() -> None:
    import asyncio

    from kinko.api import kp_auth
    from kinko.errors import Unauthorized

    store = MemoryStore()
    service = KeyService(store, MemoryHsm(), audit=MemoryAuditSink(), clock=Clock(), rng=os.urandom)
    issued = issue_token(
        rng=os.urandom, instance=INST, roles=["Reader"], now=Clock()(), name="rita"
    )
    TokenBook(store).add(issued.record)
    now = [1000.0]
    headers = kp_auth.read_headers({"authorization": f"Bearer {issued.token}"})
    cached = kp_auth.Authenticator(service, ttl=1.0, clock=lambda: now[0])
    uncached = kp_auth.Authenticator(service, ttl=0, clock=lambda: now[0])

    async def principal(authenticator: kp_auth.Authenticator) -> str:
        return (await authenticator.principal(headers)).name

    assert asyncio.run(principal(cached)) == "rita"
    TokenBook(store).revoke(hash_token(issued.token))
    assert asyncio.run(principal(cached)) == "rita"  # within the second
    with pytest.raises(Unauthorized):
        asyncio.run(principal(uncached))
    now[0] += 1.01
    with pytest.raises(Unauthorized):
        asyncio.run(principal(cached))


@pytest.mark.parametrize(
    ("authorization", "token"),
    [
        ("Bearer kinko_abc", "kinko_abc"),
        ("bearer   kinko_abc ", "kinko_abc"),
        ("Basic kinko_abc", None),
        ("Bearer ", None),
        ("kinko_abc", None),
    ],
)
def test_bearer_header_parsing(authorization: str, token: str | None) -> None:
    from kinko.api.kp_auth import read_headers

    assert read_headers({"authorization": authorization}).token == token


def test_patch_accepts_the_go_clients_field_name(api: Api) -> None:
    key_id = api.create()
    assert api.client.post("/api/v2/key_rings/ring-2", headers=api.headers()).status_code == 201
    for field in ("KeyRingID", "keyRingID"):
        ring = "ring-2" if field == "KeyRingID" else "default"
        moved = api.client.patch(
            f"/api/v2/keys/{key_id}", json={field: ring}, headers=api.headers()
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["resources"][0]["keyRingID"] == ring


@pytest.mark.parametrize(
    ("action", "failure"),
    [
        ("wrap", "Wrap with key could not be performed"),
        ("unwrap", "Unwrap with key could not be performed"),
        ("rewrap", "Rewrap with key could not be performed"),
    ],
)
def test_hot_action_errors_name_their_route(api: Api, action: str, failure: str) -> None:
    # Wrap, unwrap and rewrap are plain Starlette routes; their errors still carry the
    # route's own errorMsg, as FastAPI routes' do.
    key_id = api.create()
    response = api.client.post(
        f"/api/v2/keys/{key_id}/actions/{action}",
        json={"ciphertext": "AAAA", "plaintext": "!!"},
        headers=api.headers(),
    )
    assert response.status_code == 400, response.text
    assert f": {failure}: " in response.json()["resources"][0]["errorMsg"]


_HEADER_NAMES = [
    b"authorization",
    b"bluemix-instance",
    b"x-kms-key-ring",
    b"correlation-id",
    b"prefer",
    b"content-type",
    b"x-correlation-id",
    b"host",
]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(_HEADER_NAMES),
            st.binary(max_size=12) | st.sampled_from([b"Bearer kinko_a", b"return=minimal"]),
        ),
        max_size=10,
    )
)
@settings(max_examples=300, deadline=None)
def test_scanned_headers_are_the_ones_starlette_reads(raw: list[tuple[bytes, bytes]]) -> None:
    from starlette.datastructures import Headers as StarletteHeaders

    from kinko.api.kp_auth import parse_headers, read_headers, scan_headers
    from kinko.api.kp_wire import FieldError

    scanned = scan_headers(raw)
    mapping = StarletteHeaders(raw=list(raw))
    assert scanned.content_type == mapping.get("content-type")
    try:
        expected: object = read_headers(mapping)
    except FieldError as exc:
        expected = str(exc)
    try:
        got: object = parse_headers(scanned)
    except FieldError as exc:
        got = str(exc)
    assert got == expected


def test_a_body_sent_in_chunks_is_read_whole(api: Api) -> None:
    key_id = api.create()
    body = json.dumps({"plaintext": base64.b64encode(b"k" * 32).decode(), "aad": ["a"]})

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7].encode()

    wrapped = api.client.post(
        f"/api/v2/keys/{key_id}/actions/wrap",
        content=chunks(),
        headers=api.headers(**{"content-type": "application/json"}),
    )
    assert wrapped.status_code == 200, wrapped.text
    unwrapped = api.client.post(
        f"/api/v2/keys/{key_id}/actions/unwrap",
        json={"ciphertext": wrapped.json()["ciphertext"], "aad": ["a"]},
        headers=api.headers(),
    )
    assert base64.b64decode(unwrapped.json()["plaintext"]) == b"k" * 32


def test_a_client_gone_before_its_body_came_is_bad_body() -> None:
    import asyncio

    from starlette.requests import Request

    from kinko.api import kp_auth
    from kinko.api.keyprotect import (
        _WRAP_BODY,
        action_request,
    )
    from kinko.errors import InvalidArgument

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "headers": [], "path": "/", "query_string": b""}
    request = Request(scope, receive)
    service = KeyService(
        MemoryStore(), MemoryHsm(), audit=MemoryAuditSink(), clock=Clock(), rng=os.urandom
    )
    authenticator = kp_auth.Authenticator(service)
    with pytest.raises(InvalidArgument) as caught:
        asyncio.run(action_request(request, authenticator, _WRAP_BODY, required=False))
    assert caught.value.reason_code == "BAD_BODY_ERR"
    assert "could not be read" in str(caught.value)
