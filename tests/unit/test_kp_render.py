"""The hand-written bodies of wrap, unwrap and rewrap are the bytes kp_wire.dumps makes of the
same fields as a dict, whatever the strings hold (a property test against json's own encoder).
The dicts below are Key Protect's response bodies, field for field."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from kinko.api import kp_render as render
from kinko.api import kp_wire
from kinko.api.kp_wire import b64encode
from kinko.keys.results import RewrapResult, UnwrapResult, VersionRef, WrapResult

Json = dict[str, object]


def _wrap(result: WrapResult) -> Json:
    doc: Json = {}
    if result.plaintext is not None:
        doc["plaintext"] = b64encode(result.plaintext)
    doc["ciphertext"] = result.ciphertext
    doc["keyVersion"] = {"id": result.key_version.id}
    return doc


def _unwrap(result: UnwrapResult) -> Json:
    doc: Json = {
        "plaintext": b64encode(result.plaintext),
        "keyVersion": {"id": result.key_version.id},
    }
    if result.ciphertext is not None:
        doc["ciphertext"] = result.ciphertext
    if result.rewrapped_key_version is not None:
        doc["rewrappedKeyVersion"] = {"id": result.rewrapped_key_version.id}
    return doc


def _rewrap(result: RewrapResult) -> Json:
    return {
        "ciphertext": result.ciphertext,
        "keyVersion": {"id": result.key_version.id},
        "rewrappedKeyVersion": {"id": result.rewrapped_key_version.id},
    }


_WHEN = datetime(2030, 1, 1, tzinfo=UTC)
_versions = st.builds(VersionRef, id=st.text(max_size=40), creation_date=st.just(_WHEN))


@given(st.text(max_size=80), _versions, st.none() | st.binary(max_size=40))
@settings(max_examples=300, deadline=None)
def test_wrap_json_is_the_dumped_dict(
    ciphertext: str, version: VersionRef, plaintext: bytes | None
) -> None:
    result = WrapResult(ciphertext=ciphertext, key_version=version, plaintext=plaintext)
    assert render.wrap_json(result) == kp_wire.dumps(_wrap(result))


@given(st.binary(max_size=40), _versions, st.none() | st.text(max_size=80), st.none() | _versions)
@settings(max_examples=300, deadline=None)
def test_unwrap_json_is_the_dumped_dict(
    plaintext: bytes, version: VersionRef, ciphertext: str | None, latest: VersionRef | None
) -> None:
    result = UnwrapResult(
        plaintext=plaintext,
        key_version=version,
        ciphertext=ciphertext,
        rewrapped_key_version=latest,
    )
    assert render.unwrap_json(result) == kp_wire.dumps(_unwrap(result))


@given(st.text(max_size=80), _versions, _versions)
@settings(max_examples=300, deadline=None)
def test_rewrap_json_is_the_dumped_dict(
    ciphertext: str, version: VersionRef, latest: VersionRef
) -> None:
    result = RewrapResult(ciphertext=ciphertext, key_version=version, rewrapped_key_version=latest)
    assert render.rewrap_json(result) == kp_wire.dumps(_rewrap(result))
