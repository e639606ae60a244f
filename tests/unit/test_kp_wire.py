"""The Key Protect wire helpers and HTTP plumbing, without the key service.

Envelopes and the error envelope byte for byte, field decoders and their reason codes, the
one error table, FastAPI's validation errors mapped into the envelope, the body cap and the
correlation-id echo (on a tiny app that uses the same plumbing as the real one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Query
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict

from kinko import errors
from kinko.api import kp_wire
from kinko.api.kp_http import STATUS, WireMiddleware, install_error_handlers, status_for
from kinko.api.kp_wire import FieldError, PayloadTooLarge


def test_envelope_counts_resources_and_adds_total_count_only_when_asked() -> None:
    doc = kp_wire.envelope(kp_wire.MEDIA_KEY, [{"id": "a"}, {"id": "b"}])
    assert doc == {
        "metadata": {"collectionType": kp_wire.MEDIA_KEY, "collectionTotal": 2},
        "resources": [{"id": "a"}, {"id": "b"}],
    }
    with_total = kp_wire.envelope(kp_wire.MEDIA_KEY, [], total_count=7)
    assert with_total["metadata"] == {
        "collectionType": kp_wire.MEDIA_KEY,
        "collectionTotal": 0,
        "totalCount": 7,
    }


def test_error_body_is_key_protects_envelope() -> None:
    body = kp_wire.error_body(
        404, "KEY_NOT_FOUND_ERR", "key does not exist", failure="Key could not be retrieved"
    )
    assert body == {
        "metadata": {"collectionType": "application/vnd.ibm.kms.error+json", "collectionTotal": 1},
        "resources": [
            {
                "errorMsg": "Not Found: Key could not be retrieved: Please see 'reasons' for "
                "more details (KEY_NOT_FOUND_ERR)",
                "reasons": [
                    {
                        "code": "KEY_NOT_FOUND_ERR",
                        "message": "key does not exist",
                        "status": 404,
                        "moreInfo": "https://cloud.ibm.com/apidocs/key-protect",
                    }
                ],
            }
        ],
    }


def test_error_body_names_the_target_field() -> None:
    body = kp_wire.error_body(
        400, "INVALID_FIELD_ERR", "m", failure="Wrap could not be done", target=("field", "aad")
    )
    reason = body["resources"][0]["reasons"][0]  # type: ignore[index]
    assert reason["target"] == {"type": "field", "name": "aad"}


def test_collection_total_mismatch_is_its_own_reason() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        kp_wire.check_collection(kp_wire.MEDIA_KEY, 2, [{}])
    assert caught.value.reason_code == "COLLECTION_TOTAL_MISMATCH_ERR"
    kp_wire.check_collection(kp_wire.MEDIA_KEY, 1, [{}])


def test_collection_type_must_be_json() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        kp_wire.check_collection("text/plain", 1, [{}])
    assert caught.value.reason_code == "BAD_BODY_ERR"


@pytest.mark.parametrize(
    ("content_type", "is_json"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/vnd.ibm.kms.key_action_wrap+json", True),
        ("APPLICATION/VND.IBM.KMS.KEY+JSON", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("application/jsonx", False),
        ("", False),
        (None, False),
    ],
)
def test_json_media_types(content_type: str | None, is_json: bool) -> None:
    assert kp_wire.is_json_media_type(content_type) is is_json


def test_bad_base64_names_field_and_offset_never_the_data() -> None:
    secret = "c2VjcmV0LWRhdGE*bad"
    with pytest.raises(FieldError) as caught:
        kp_wire.b64decode_field("plaintext", secret, expected="a base64 encoded key material")
    exc = caught.value
    assert exc.reason_code == "INVALID_FIELD_ERR"
    assert exc.target == ("field", "plaintext")
    assert "input byte 15" in str(exc)
    assert secret not in str(exc)
    assert "c2VjcmV0" not in str(exc)


def test_base64_without_padding_is_refused() -> None:
    with pytest.raises(FieldError):
        kp_wire.b64decode_field("plaintext", "YWJj", expected="x") and kp_wire.b64decode_field(
            "plaintext", "YWI", expected="x"
        )


def test_base64_round_trip() -> None:
    assert kp_wire.b64decode_field("p", kp_wire.b64encode(b"\x00\xff" * 9), expected="x") == (
        b"\x00\xff" * 9
    )


def test_prefer_header() -> None:
    assert kp_wire.parse_prefer(None) is False
    assert kp_wire.parse_prefer("return=minimal") is False
    assert kp_wire.parse_prefer(" Return=Representation ") is True
    with pytest.raises(FieldError) as caught:
        kp_wire.parse_prefer("return=everything")
    assert caught.value.reason_code == "INVALID_HEADER_ERR"


def test_state_query() -> None:
    assert kp_wire.parse_states(None) is None
    assert kp_wire.parse_states("") is None  # IBM's Python SDK sends "state=" by default
    assert kp_wire.parse_states("1,5,1") == (1, 5)
    for bad in ("4", "1,,2", "1, 2", "a", " "):
        with pytest.raises(FieldError) as caught:
            kp_wire.parse_states(bad)
        assert caught.value.reason_code == "INVALID_QUERY_PARAM_ERR"


def test_rfc3339_parse_and_format() -> None:
    moment = kp_wire.parse_rfc3339("expirationDate", "2030-01-02T03:04:05+02:00")
    assert kp_wire.rfc3339(moment) == "2030-01-02T01:04:05Z"
    assert kp_wire.rfc3339(kp_wire.parse_rfc3339("e", "2030-01-02T03:04:05Z")) == (
        "2030-01-02T03:04:05Z"
    )
    for bad in ("2030-01-02T03:04:05", "tomorrow", ""):
        with pytest.raises(FieldError):
            kp_wire.parse_rfc3339("expirationDate", bad)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.Unauthorized("x"), 401),
        (errors.Forbidden("x", reason_code="SERVICE_ONLY_ERR"), 403),
        (errors.NotFound("x", reason_code="KEY_NOT_FOUND_ERR"), 404),
        (errors.Gone("x"), 410),
        (errors.Unprocessable("x", reason_code="KEY_VERSION_INVALID"), 422),
        (errors.UnprocessableCiphertext(), 422),
        (errors.DecryptionError(), 422),
        (errors.WrongState("x"), 409),
        (errors.TooEarly("x", reason_code="KEY_ROTATION_NOT_PERMITTED"), 409),
        (errors.DeletionRefused("x", reason_code="PREV_KEY_DEL_ERR"), 409),
        (errors.Conflict("x"), 409),
        (errors.NotAllowed("x", reason_code="KEY_ROOT_REQ_ERR"), 400),
        (errors.InvalidArgument("x"), 400),
        (kp_wire.invalid_field("aad", "x"), 400),
        (PayloadTooLarge("x"), 413),
        (errors.CorruptMetadata("x"), 500),
        (errors.StoreUnavailable("x"), 503),
        (errors.HsmUnavailable("x"), 503),
        (errors.KinkoError("x"), 500),
    ],
)
def test_one_table_maps_classes_to_statuses(exc: errors.KinkoError, status: int) -> None:
    assert status_for(exc) == status


def test_table_covers_every_error_class() -> None:
    def subclasses(cls: type[errors.KinkoError]) -> Iterator[type[errors.KinkoError]]:
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    for cls in subclasses(errors.KinkoError):
        assert any(base in STATUS for base in cls.__mro__), cls


# --- the plumbing on a tiny app ------------------------------------------------------------


class _Thing(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    count: int = 0


def _tiny_app(max_body: int = 64) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(WireMiddleware, max_body=max_body)

    @app.post("/things")
    def things(body: _Thing) -> dict[str, object]:
        return {"name": body.name}

    @app.get("/pages")
    def pages(limit: int = Query(200, ge=1, le=5000)) -> dict[str, object]:
        return {"limit": limit}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret-" + "plaintext")

    @app.get("/gone")
    def gone() -> None:
        raise errors.Gone("the key was deleted")

    return app


@pytest.fixture
def tiny() -> Iterator[TestClient]:
    with TestClient(_tiny_app(), raise_server_exceptions=False) as client:
        yield client


def _reason(response: object) -> dict[str, object]:
    body = json.loads(response.content)  # type: ignore[attr-defined]
    assert body["metadata"] == {
        "collectionType": "application/vnd.ibm.kms.error+json",
        "collectionTotal": 1,
    }
    reason: dict[str, object] = body["resources"][0]["reasons"][0]
    return reason


def test_kinko_error_in_envelope(tiny: TestClient) -> None:
    response = tiny.get("/gone")
    assert response.status_code == 410
    assert response.headers["content-type"] == "application/vnd.ibm.kms.error+json"
    assert _reason(response)["code"] == "KEY_DELETED_ERR"


def test_malformed_json_is_bad_body(tiny: TestClient) -> None:
    response = tiny.post(
        "/things", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert _reason(response)["code"] == "BAD_BODY_ERR"


def test_missing_body_is_no_body(tiny: TestClient) -> None:
    response = tiny.post("/things")
    assert response.status_code == 400
    assert _reason(response)["code"] == "NO_BODY_ERR"


def test_wrong_media_type_is_bad_body(tiny: TestClient) -> None:
    response = tiny.post(
        "/things", content=b'{"name": "a"}', headers={"content-type": "text/plain"}
    )
    assert response.status_code == 400
    reason = _reason(response)
    assert reason["code"] == "BAD_BODY_ERR"
    assert "JSON media type" in str(reason["message"])


def test_unknown_and_mistyped_fields_are_bad_body_without_echoing_input(
    tiny: TestClient,
) -> None:
    unknown = tiny.post("/things", json={"name": "a", "plaintext": "c2VjcmV0"})
    assert unknown.status_code == 400
    assert "unknown field" in str(_reason(unknown)["message"])
    assert b"c2VjcmV0" not in unknown.content
    mistyped = tiny.post("/things", json={"name": "a", "count": "c2VjcmV0"})
    assert mistyped.status_code == 400
    assert _reason(mistyped)["code"] == "BAD_BODY_ERR"
    assert b"c2VjcmV0" not in mistyped.content


def test_bad_query_parameter(tiny: TestClient) -> None:
    response = tiny.get("/pages", params={"limit": "0"})
    assert response.status_code == 400
    reason = _reason(response)
    assert reason["code"] == "INVALID_QUERY_PARAM_ERR"
    assert reason["target"] == {"type": "query_param", "name": "limit"}


def test_unknown_route_and_method(tiny: TestClient) -> None:
    assert tiny.get("/nowhere").status_code == 404
    assert _reason(tiny.get("/nowhere"))["code"] == "NOT_FOUND_ERR"
    assert tiny.delete("/things").status_code == 405


def test_bug_is_500_without_its_message(tiny: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    response = tiny.get("/boom")
    assert response.status_code == 500
    assert _reason(response)["code"] == "INTERNAL_ERR"
    assert b"secret-plaintext" not in response.content
    assert "secret-plaintext" not in caplog.text
    assert "RuntimeError" in caplog.text


def test_declared_oversize_body_is_413(tiny: TestClient) -> None:
    response = tiny.post("/things", json={"name": "x" * 100})
    assert response.status_code == 413
    assert _reason(response)["code"] == "BAD_BODY_ERR"


def test_streamed_oversize_body_is_413(tiny: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        yield b"x" * 100
        yield b'"}'

    response = tiny.post("/things", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert _reason(response)["code"] == "BAD_BODY_ERR"


def test_body_at_the_cap_passes(tiny: TestClient) -> None:
    body = json.dumps({"name": "x" * 40}).encode()
    assert len(body) <= 64
    assert tiny.post(
        "/things", content=body, headers={"content-type": "application/json"}
    ).json() == {"name": "x" * 40}


def test_correlation_id_is_echoed_on_success_and_error(tiny: TestClient) -> None:
    ok = tiny.get("/pages", headers={"correlation-id": "c-1"})
    assert ok.headers["correlation-id"] == "c-1"
    failed = tiny.get("/gone", headers={"correlation-id": "c-2"})
    assert failed.headers["correlation-id"] == "c-2"
    sdk_style = tiny.get("/pages", headers={"x-correlation-id": "c-3"})
    assert sdk_style.headers["correlation-id"] == "c-3"
    assert "correlation-id" not in tiny.get("/pages").headers
