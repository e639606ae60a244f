"""kinko's ``kinko.io/v1`` API group as a transport: authentication, roles, bodies, the error
table, and the JSON it answers, over a real token book and a recording controller twin.

The twin answers with real status and report values (the dataclasses of
:mod:`kinko.cluster.lifecycle`) and raises the errors the real controller raises, so what is
checked here is exactly the translation: parse → call → map. The real controller behind this
app is exercised in ``tests/integration/test_lifecycle.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kinko.api.k8s_admin import PREFIX, create_admin_app
from kinko.cluster.auth import ClusterTokenBook, issue_cluster_token
from kinko.cluster.lifecycle import ClusterStatus, EnableResult, MigrationStatus
from kinko.cluster.migrate import MigrationReport
from kinko.errors import (
    Conflict,
    KeyServiceUnavailable,
    KinkoError,
    NotAllowed,
    NotFound,
    WrongState,
)
from kinko.store.memory import MemoryStore

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _status(phase: str = "Ready") -> ClusterStatus:
    migration = MigrationStatus(
        resource="secrets",
        state="running" if phase != "Ready" else "done",
        done=1200,
        total=5000,
        rewritten=1100,
        skipped=100,
        unreadable=0,
        conflicts=2,
        restarts=0,
        reason=None,
        target="sha256:aa kms:kinko key_id:sha256:bb",
        current_target="sha256:aa kms:kinko key_id:sha256:bb",
        updated=NOW,
        rate=512.0,
    )
    return ClusterStatus(
        master_status="Ready (3m)" if phase == "Ready" else "in progress",
        phase="Ready" if phase == "Ready" else "Enabling",
        ready_since=NOW if phase == "Ready" else None,
        root_key=None,
        warnings=("a warning",),
        migrations={"secrets": migration},
        config_hash="sha256:aa",
    )


class Twin:
    """Records calls; raises ``error`` when set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.error: KinkoError | None = None

    def _call(self, name: str, arg: object) -> None:
        self.calls.append((name, arg))
        if self.error is not None:
            raise self.error

    def status(self) -> ClusterStatus:
        self._call("status", None)
        return _status()

    def coverage_json(self, resources: Sequence[str] | None = None) -> dict[str, object]:
        self._call("coverage", resources)
        return {"configHash": "sha256:aa", "resources": {}, "notes": []}

    def enable_kms(self, key_ref: str) -> EnableResult:
        self._call("enable", key_ref)
        return EnableResult("kinko", "key-id", Path("/d/kms.sock"), True, _status("Enabling"))

    def migrate(self, resources: Sequence[str] | None = None) -> ClusterStatus:
        self._call("migrate", resources)
        return _status("Enabling")

    def dry_run(self, resources: Sequence[str] | None = None) -> list[MigrationReport]:
        self._call("dry_run", resources)
        return [
            MigrationReport(
                resource="secrets",
                target="t",
                dry_run=True,
                resumed=False,
                done=10,
                rewritten=7,
                skipped=2,
                conflicts=0,
                unreadable=1,
                restarts=0,
                seconds=0.1,
                unreadable_keys=("/registry/secrets/a/b",),
            )
        ]


class Api:
    def __init__(self) -> None:
        store = MemoryStore()
        book = ClusterTokenBook(store)
        self.tokens: dict[str, str] = {}
        for role, namespaces in (
            ("Administrator", None),
            ("Editor", ["*"]),
            ("Viewer", ["default"]),
        ):
            token, record = issue_cluster_token(
                rng=os.urandom, role=role, namespaces=namespaces, now=NOW
            )
            book.add(record)
            self.tokens[role] = token
        self.twin = Twin()
        self.client = TestClient(create_admin_app(self.twin, book, clock=lambda: NOW))

    def headers(self, role: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
def api() -> Iterator[Api]:
    made = Api()
    with made.client:
        yield made


def test_status_is_for_every_authenticated_role(api: Api) -> None:
    for role in ("Administrator", "Editor", "Viewer"):
        answer = api.client.get(f"{PREFIX}/status", headers=api.headers(role))
        assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["masterStatus"] == "Ready (3m)"
    assert doc["phase"] == "Ready"
    assert doc["readySince"] == "2026-03-01T12:00:00Z"
    assert doc["rootKey"] is None
    assert doc["warnings"] == ["a warning"]
    secrets = doc["migrations"]["secrets"]
    for name in ("state", "done", "total", "rewritten", "unreadable", "conflicts", "reason"):
        assert name in secrets
    assert (secrets["done"], secrets["total"], secrets["updated"]) == (
        1200,
        5000,
        "2026-03-01T12:00:00Z",
    )


def test_no_token_is_401_as_a_status(api: Api) -> None:
    answer = api.client.get(f"{PREFIX}/status")
    assert answer.status_code == 401
    assert answer.json()["kind"] == "Status"
    assert answer.json()["reason"] == "Unauthorized"
    assert api.twin.calls == []


@pytest.mark.parametrize("role", ["Editor", "Viewer"])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/encryption", None),
        ("POST", "/kms/enable", {"key": "kinko-cluster"}),
        ("POST", "/migrations", {}),
    ],
)
def test_administration_is_for_administrators_only(
    api: Api, role: str, method: str, path: str, body: object
) -> None:
    answer = api.client.request(method, PREFIX + path, headers=api.headers(role), json=body)
    assert answer.status_code == 403
    assert "may not change encryption" in answer.json()["message"]
    assert api.twin.calls == []


def test_enable_answers_202_with_the_provider_and_status(api: Api) -> None:
    answer = api.client.post(
        f"{PREFIX}/kms/enable", headers=api.headers("Administrator"), json={"key": "kinko-cluster"}
    )
    assert answer.status_code == 202, answer.text
    doc = answer.json()
    assert (doc["provider"], doc["key"], doc["socket"]) == ("kinko", "key-id", "/d/kms.sock")
    assert doc["status"]["phase"] == "Enabling"
    assert api.twin.calls == [("enable", "kinko-cluster")]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not a JSON object"),
        (b"[1]", "not a JSON object"),
        (b"{}", "key: expected"),
        (b'{"key": 5}', "key: expected"),
        (b'{"key": "a", "force": true}', "unknown field"),
        (b'{"key": NaN}', "not a JSON object"),
    ],
)
def test_a_bad_enable_body_is_400_and_calls_nothing(api: Api, body: bytes, message: str) -> None:
    answer = api.client.post(
        f"{PREFIX}/kms/enable",
        headers={**api.headers("Administrator"), "content-type": "application/json"},
        content=body,
    )
    assert answer.status_code == 400
    assert answer.json()["reason"] == "BadRequest"
    assert message in answer.json()["message"]
    assert api.twin.calls == []


def test_an_oversized_body_is_413(api: Api) -> None:
    answer = api.client.post(
        f"{PREFIX}/kms/enable",
        headers=api.headers("Administrator"),
        content=b"{" + b" " * (70 * 1024) + b"}",
    )
    assert answer.status_code == 413


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (NotFound("root key x was not found"), 404, "NotFound"),
        (WrongState("root key x is Suspended"), 409, "Conflict"),
        (Conflict("enabling KMS with root key x: migration of secrets 1/2 running"), 409,
         "Conflict"),
        (NotAllowed("key x is a standard key"), 400, "BadRequest"),
        (KeyServiceUnavailable("the key service cannot be reached"), 503, "ServiceUnavailable"),
    ],
)  # fmt: skip
def test_controller_errors_leave_through_the_cluster_error_table(
    api: Api, error: KinkoError, code: int, reason: str
) -> None:
    api.twin.error = error
    answer = api.client.post(
        f"{PREFIX}/kms/enable", headers=api.headers("Administrator"), json={"key": "x"}
    )
    assert answer.status_code == code
    doc = answer.json()
    assert (doc["kind"], doc["reason"], doc["code"]) == ("Status", reason, code)
    assert doc["message"] == str(error)


def test_migrations_kick_or_dry_run(api: Api) -> None:
    admin = api.headers("Administrator")
    kicked = api.client.post(f"{PREFIX}/migrations", headers=admin, json={})
    assert kicked.status_code == 202
    assert kicked.json()["status"]["phase"] == "Enabling"

    dry = api.client.post(
        f"{PREFIX}/migrations", headers=admin, json={"resources": ["secrets"], "dryRun": True}
    )
    assert dry.status_code == 200
    assert dry.json() == {
        "dryRun": True,
        "resources": {
            "secrets": {
                "total": 10,
                "wouldRewrite": 7,
                "current": 2,
                "unreadable": 1,
                "unreadableNames": ["/registry/secrets/a/b"],
                "target": "t",
            }
        },
    }
    assert api.twin.calls == [("migrate", None), ("dry_run", ["secrets"])]

    bad = api.client.post(f"{PREFIX}/migrations", headers=admin, json={"dryRun": "yes"})
    assert bad.status_code == 400
    bad = api.client.post(f"{PREFIX}/migrations", headers=admin, json={"resources": "secrets"})
    assert bad.status_code == 400


def test_encryption_report_passes_resources_through(api: Api) -> None:
    answer = api.client.get(
        f"{PREFIX}/encryption?resource=secrets", headers=api.headers("Administrator")
    )
    assert answer.status_code == 200
    assert answer.json()["configHash"] == "sha256:aa"
    assert api.twin.calls == [("coverage", ["secrets"])]


def test_unknown_routes_and_methods_are_statuses(api: Api) -> None:
    admin = api.headers("Administrator")
    missing = api.client.get(f"{PREFIX}/nothing", headers=admin)
    assert (missing.status_code, missing.json()["reason"]) == (404, "NotFound")
    wrong = api.client.delete(f"{PREFIX}/status", headers=admin)
    assert (wrong.status_code, wrong.json()["reason"]) == (405, "MethodNotAllowed")
