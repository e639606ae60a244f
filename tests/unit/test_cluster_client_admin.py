"""ClusterClient's ``kinko.io/v1`` methods (status, coverage report, KMS enable, migrations)
against canned answers: the requests they send, how answers become typed values, and how
answers that are not the API and Kubernetes ``Status`` errors are raised."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from kinko import errors
from kinko.cluster.client import (
    ClusterStatus,
    EncryptionReport,
    KeyIdCoverage,
    MigrationPlan,
    MigrationPlanEntry,
    MigrationProgress,
    ResourceCoverage,
    RootKeyStatus,
)
from tests.unit.test_cluster_client import URL, Wire, body_of, status

STATUS_DOC: dict[str, object] = {
    "masterStatus": "Key Protect feature enablement in progress.",
    "phase": "Enabling",
    "readySince": None,
    "rootKey": {
        "id": "8f0c4c9e-root",
        "alias": "kinko-cluster",
        "version": 2,
        "state": "Active",
        "expirationDate": "2031-05-01T12:00:00.123456789Z",
        "expiresInSeconds": 86400.5,
    },
    "warnings": ["root key kinko-cluster expires in 1 day\x1b[0m"],
    "migrations": {
        "secrets": {
            "state": "running",
            "done": 40,
            "total": 100,
            "rewritten": 38,
            "unreadable": 1,
            "conflicts": 1,
            "reason": None,
            "target": "sha256:abc kms:kinko key_id:sha256:def",
            "updated": 1_700_000_000.25,
        },
        "configmaps": {"state": None, "done": 0, "total": None},
    },
}


def test_cluster_status_request_and_answer() -> None:
    wire = Wire([httpx.Response(200, json=STATUS_DOC)])
    got = wire.client().cluster_status()
    assert wire.last.method == "GET"
    assert str(wire.last.url) == f"{URL}/apis/kinko.io/v1/status"
    assert wire.last.headers["authorization"].startswith("Bearer ")
    assert got == ClusterStatus(
        master_status="Key Protect feature enablement in progress.",
        phase="Enabling",
        ready_since=None,
        root_key=RootKeyStatus(
            id="8f0c4c9e-root",
            alias="kinko-cluster",
            version=2,
            state="Active",
            expiration_date=datetime(2031, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
            expires_in_seconds=86400,
        ),
        warnings=("root key kinko-cluster expires in 1 day [0m",),
        migrations=(
            MigrationProgress(resource="configmaps"),
            MigrationProgress(
                resource="secrets",
                state="running",
                done=40,
                total=100,
                rewritten=38,
                unreadable=1,
                conflicts=1,
                target="sha256:abc kms:kinko key_id:sha256:def",
                updated=datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC),
            ),
        ),
    )
    assert got.doc == STATUS_DOC
    assert not got.ready
    migration = got.migration("secrets")
    assert migration is not None
    assert migration.active
    assert got.migration("pods") is None


def test_ready_status_with_numeric_key_state_and_string_version() -> None:
    doc = {
        "masterStatus": "Ready",
        "phase": "Ready",
        "readySince": "2030-01-02T03:04:05+01:00",
        "rootKey": {"id": "k", "version": "3", "state": 3},
    }
    got = Wire([httpx.Response(200, json=doc)]).client().cluster_status()
    assert got.ready
    assert got.ready_since == datetime(2030, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert got.root_key == RootKeyStatus(id="k", version=3, state="Deactivated")
    assert got.warnings == ()
    assert got.migrations == ()


@pytest.mark.parametrize(
    "doc",
    [
        {"phase": "Ready"},
        {"masterStatus": "Ready", "phase": 1},
        {"masterStatus": "Ready", "phase": "Ready", "warnings": "one"},
        {"masterStatus": "Ready", "phase": "Ready", "warnings": [1]},
        {"masterStatus": "Ready", "phase": "Ready", "readySince": "yesterday"},
        {"masterStatus": "Ready", "phase": "Ready", "rootKey": "k"},
        {"masterStatus": "Ready", "phase": "Ready", "rootKey": {"alias": "k"}},
        {"masterStatus": "Ready", "phase": "Ready", "migrations": []},
        {"masterStatus": "Ready", "phase": "Ready", "migrations": {"secrets": 1}},
        {"masterStatus": "Ready", "phase": "Ready", "migrations": {"secrets": {"done": -1}}},
        {"masterStatus": "Ready", "phase": "Ready", "migrations": {"secrets": {"done": "1"}}},
        {"masterStatus": "Ready", "phase": "Ready", "migrations": {"secrets": {"done": True}}},
        [],
    ],
)
def test_status_that_is_not_the_api_is_unavailable(doc: object) -> None:
    wire = Wire([httpx.Response(200, json=doc)])
    with pytest.raises(errors.UnavailableError, match=r"GET /apis/kinko\.io/v1/status"):
        wire.client().cluster_status()


def test_status_as_kinko_up_words_it() -> None:
    """The server's own names: ``secondsToExpiry``, a ``pending`` migration, ``enabling``."""
    doc: dict[str, object] = {
        "masterStatus": "Key Protect feature enablement in progress.",
        "phase": "Enabling",
        "readySince": None,
        "rootKey": {
            "id": "root-2",
            "alias": "kinko-cluster",
            "aliases": ["kinko-cluster"],
            "name": "kinko-cluster-root",
            "provider": "kinko",
            "keyId": "kinko-rk-root-2-vabc",
            "version": 1,
            "versionId": "abc",
            "state": "Active",
            "stateCode": 1,
            "expirationDate": None,
            "secondsToExpiry": None,
        },
        "warnings": [],
        "migrations": {"secrets": {"state": "pending", "done": 0, "total": None, "rate": None}},
        "configHash": "sha256:1",
        "enabling": "root key kinko-cluster (root-2) as provider kinko",
        "compactedRevision": None,
    }
    got = Wire([httpx.Response(200, json=doc)]).client().cluster_status()
    assert got.root_key == RootKeyStatus(
        id="root-2",
        alias="kinko-cluster",
        version=1,
        state="Active",
        version_id="abc",
        key_id="kinko-rk-root-2-vabc",
    )
    assert got.migrations == (MigrationProgress(resource="secrets", state="pending"),)
    assert got.migrations[0].active
    assert got.enabling == "root key kinko-cluster (root-2) as provider kinko"
    seconds = {**doc, "rootKey": {"id": "k", "secondsToExpiry": 3600.9}}
    later = Wire([httpx.Response(200, json=seconds)]).client().cluster_status()
    assert later.root_key == RootKeyStatus(id="k", expires_in_seconds=3600)


def test_status_error_names_the_field() -> None:
    doc = {"masterStatus": "Ready", "phase": "Ready", "migrations": {"secrets": {"total": "x"}}}
    with pytest.raises(errors.UnavailableError, match=r"status\.migrations\.secrets\.total"):
        Wire([httpx.Response(200, json=doc)]).client().cluster_status()


REPORT_DOC: dict[str, object] = {
    "configHash": "sha256:0123",
    "resources": {
        "secrets": {
            "total": 7,
            "providers": {"k8s:enc:kms:v2:kinko:": 4, "identity": 2, "k8s:enc:aescbc:v1:k1:": 1},
            "keyIds": {
                "kid-old": {"count": 1, "provider": "kinko", "rootKey": "root", "version": 1},
                "kid-new": {
                    "count": 3,
                    "provider": "kinko",
                    "rootKey": "root",
                    "version": "9d3e-v2",
                    "current": True,
                },
            },
            "plaintext": 2,
            "stale": 4,
            "undecryptable": 1,
            "undecryptableNames": ["default/broken"],
            "migration": {"state": "paused", "done": 3, "total": 7, "reason": "plugin down"},
            "unavailable": 0,
            "unavailableReason": None,
            "complete": True,
        },
        "configmaps": {"total": 0, "unavailable": 2, "unavailableReason": "plugin kinko down"},
    },
    "notes": ["counted without a snapshot"],
}


def test_encryption_report_request_and_answer() -> None:
    wire = Wire([httpx.Response(200, json=REPORT_DOC)])
    got = wire.client().encryption_report()
    assert wire.last.method == "GET"
    assert wire.last.url.path == "/apis/kinko.io/v1/encryption"
    assert got == EncryptionReport(
        config_hash="sha256:0123",
        resources=(
            ResourceCoverage(
                resource="configmaps", unavailable=2, unavailable_reason="plugin kinko down"
            ),
            ResourceCoverage(
                resource="secrets",
                total=7,
                providers=(
                    ("k8s:enc:kms:v2:kinko:", 4),
                    ("identity", 2),
                    ("k8s:enc:aescbc:v1:k1:", 1),
                ),
                key_ids=(
                    KeyIdCoverage("kid-new", 3, "kinko", "root", "9d3e-v2", current=True),
                    KeyIdCoverage("kid-old", 1, "kinko", "root", "1"),
                ),
                plaintext=2,
                stale=4,
                undecryptable=1,
                undecryptable_names=("default/broken",),
                migration=MigrationProgress(
                    resource="secrets", state="paused", done=3, total=7, reason="plugin down"
                ),
            ),
        ),
        notes=("counted without a snapshot",),
    )
    assert got.doc == REPORT_DOC


@pytest.mark.parametrize(
    "doc",
    [
        {"resources": {}},
        {"configHash": "h", "resources": {"secrets": {"providers": {"identity": "2"}}}},
        {"configHash": "h", "resources": {"secrets": {"keyIds": {"k": 3}}}},
        {"configHash": "h", "resources": {"secrets": {"undecryptableNames": "a/b"}}},
        {"configHash": "h", "resources": {"secrets": {"keyIds": {"k": {"current": "yes"}}}}},
        {"configHash": "h", "resources": {}, "notes": "n"},
    ],
)
def test_report_that_is_not_the_api_is_unavailable(doc: object) -> None:
    with pytest.raises(errors.UnavailableError, match="not the Kubernetes API"):
        Wire([httpx.Response(200, json=doc)]).client().encryption_report()


def test_kms_enable_request_and_answer() -> None:
    answer = {
        "provider": "kinko",
        "key": "8f0c4c9e-root",
        "socket": "unix:///data/kms.sock",
        "status": STATUS_DOC,
    }
    wire = Wire([httpx.Response(202, json=answer)])
    got = wire.client().kms_enable(" kinko-cluster ")
    assert wire.last.method == "POST"
    assert wire.last.url.path == "/apis/kinko.io/v1/kms/enable"
    assert wire.last.headers["content-type"] == "application/json"
    assert body_of(wire.last) == {"key": "kinko-cluster"}
    assert (got.provider, got.key, got.socket) == (
        "kinko",
        "8f0c4c9e-root",
        "unix:///data/kms.sock",
    )
    assert got.status.phase == "Enabling"
    assert got.doc == answer


def test_kms_enable_without_a_key_sends_nothing() -> None:
    wire = Wire()
    with pytest.raises(errors.InvalidArgument, match="root key id or alias"):
        wire.client().kms_enable("  ")
    assert wire.requests == []


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (404, "NotFound", errors.NotFound),
        (409, "Conflict", errors.Conflict),
        (403, "Forbidden", errors.Forbidden),
        (503, "ServiceUnavailable", errors.UnavailableError),
        (503, None, errors.UnavailableError),
    ],
)
def test_kms_enable_errors(code: int, reason: str | None, cls: type[errors.KinkoError]) -> None:
    answer = (
        status(code, reason, f"refused: {code}")
        if reason
        else httpx.Response(code, text="upstream down")
    )
    with pytest.raises(cls) as raised:
        Wire([answer]).client().kms_enable("kinko-cluster")
    if reason:
        assert f"refused: {code}" in str(raised.value)


def test_kms_enable_answer_without_status_is_unavailable() -> None:
    answer = {"provider": "kinko", "key": "k", "socket": "unix:///s"}
    with pytest.raises(errors.UnavailableError, match=r"enable\.status"):
        Wire([httpx.Response(202, json=answer)]).client().kms_enable("k")


def test_dry_run_migration_request_and_answer() -> None:
    answer = {
        "resources": {
            "secrets": {"total": 10, "stale": 4, "wouldRewrite": 3, "unreadable": 1},
            "configmaps": {"total": 2, "stale": 0, "wouldRewrite": 0, "unreadable": 0},
        }
    }
    wire = Wire([httpx.Response(200, json=answer)])
    got = wire.client().start_migration(["secrets", "configmaps", "secrets"], dry_run=True)
    assert wire.last.method == "POST"
    assert wire.last.url.path == "/apis/kinko.io/v1/migrations"
    assert body_of(wire.last) == {"dryRun": True, "resources": ["secrets", "configmaps"]}
    assert got == MigrationPlan(
        resources=(
            MigrationPlanEntry("configmaps", total=2),
            MigrationPlanEntry("secrets", total=10, stale=4, would_rewrite=3, unreadable=1),
        )
    )
    assert got.doc == answer


def test_dry_run_without_stale_counts_what_would_be_rewritten() -> None:
    answer = {
        "dryRun": True,
        "resources": {
            "secrets": {
                "total": 10,
                "wouldRewrite": 6,
                "current": 3,
                "unreadable": 1,
                "unreadableNames": ["/registry/secrets/default/x"],
                "target": "t",
            }
        },
    }
    got = Wire([httpx.Response(200, json=answer)]).client().start_migration(dry_run=True)
    assert got.resources == (
        MigrationPlanEntry(
            "secrets",
            total=10,
            stale=6,
            would_rewrite=6,
            unreadable=1,
            current=3,
            unreadable_names=("/registry/secrets/default/x",),
        ),
    )


def test_kms_enable_that_changed_nothing() -> None:
    answer = {"provider": "kinko", "key": "k", "socket": "s", "changed": False}
    answer["status"] = STATUS_DOC
    got = Wire([httpx.Response(202, json=answer)]).client().kms_enable("k")
    assert not got.changed


def test_migration_start_request_and_answer() -> None:
    wire = Wire([httpx.Response(202, json={"status": STATUS_DOC})])
    got = wire.client().start_migration()
    assert body_of(wire.last) == {"dryRun": False}
    assert got.status.phase == "Enabling"
    assert got.doc == {"status": STATUS_DOC}


def test_migration_of_a_malformed_resource_sends_nothing() -> None:
    wire = Wire()
    with pytest.raises(errors.InvalidArgument, match="resource such as secrets"):
        wire.client().start_migration(["Secrets/x"])
    assert wire.requests == []


def test_migration_conflict_keeps_the_servers_words() -> None:
    wire = Wire([status(409, "Conflict", "a migration of secrets is running")])
    with pytest.raises(errors.Conflict, match="a migration of secrets is running"):
        wire.client().start_migration(["secrets"])
