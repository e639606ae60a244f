"""``kinko cluster get|encryption status|kms enable|migrate`` through click's CliRunner,
against a fake of kinko's ``kinko.io/v1`` routes.

The fake is a small Starlette app with the four routes of the contract (status, coverage
report, KMS enable, migrations), answering in the shapes kinko up's server sends (extra fields
such as ``secondsToExpiry``, ``pending`` migrations and a dry run without ``stale``
included), and Kubernetes ``Status`` errors. An enable or a migration
advances by ``step`` objects on every status poll, and pauses for as many polls as
``pauses`` names reasons, so the progress, the pause reason and the end at Ready are checked
without any clock. The commands build their client through a :class:`ClusterAdminHook` that
sends through Starlette's ``TestClient`` and records each sleep between polls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from kinko.cli.cluster_admin import ClusterAdminHook, master_status_line
from kinko.cli.cluster_client import ClusterConnection
from kinko.cli.main import cli
from kinko.cluster.client import ClusterClient, ClusterStatus
from tests.unit.datadir import ADMIN, SERVER, write_up_folder

READER = "kinko_reader_token"
API = "/apis/kinko.io/v1"
IN_PROGRESS = "Key Protect feature enablement in progress."
ROOT_KEY_ID = "4f1c0b2e-0000-4000-8000-00000000cafe"
SOCKET = "unix:///home/kinko/.kinko/kms.sock"
PLUGIN_DOWN = f"the KMS plugin at {SOCKET} is unavailable: connection refused"


def _status(code: int, reason: str, message: str) -> JSONResponse:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return JSONResponse(body, status_code=code)


def _time(stamp: datetime) -> str:
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeAdmin:
    """kinko's kinko.io/v1 routes over an in-memory cluster of ``totals`` objects."""

    totals: dict[str, int] = field(default_factory=lambda: {"secrets": 5, "configmaps": 1})
    step: int = 2
    phase: str = "Ready"
    enabling: bool = False
    ready_since: datetime | None = field(
        default_factory=lambda: datetime.now(UTC) - timedelta(minutes=15, seconds=20)
    )
    root_key: dict[str, object] | None = None
    warnings: list[str] = field(default_factory=list)
    migrations: dict[str, dict[str, object]] = field(default_factory=dict)
    #: Reasons of the polls to come that find the work paused (one poll each).
    pauses: list[str] = field(default_factory=list)
    #: Root keys by id or alias → (id, state).
    keys: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {
            "kinko-cluster": (ROOT_KEY_ID, "Active"),
            ROOT_KEY_ID: (ROOT_KEY_ID, "Active"),
            "suspended": ("5ab-suspended", "Suspended"),
        }
    )
    key_service_down: bool = False
    #: Every object is current already: a migration request finds nothing to do.
    current: bool = False
    #: The coverage report of a cluster that stores nothing yet (no notes either).
    empty: bool = False
    calls: list[tuple[str, str, object]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    polls: int = 0

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(f"{API}/status", self.get_status, methods=["GET"]),
                Route(f"{API}/encryption", self.get_encryption, methods=["GET"]),
                Route(f"{API}/kms/enable", self.enable, methods=["POST"]),
                Route(f"{API}/migrations", self.migrate, methods=["POST"]),
            ]
        )

    # -- the documents ------------------------------------------------------------------

    def status_doc(self) -> dict[str, object]:
        # kinko up's words: the age of Ready in whole units, in progress otherwise.
        master = IN_PROGRESS
        if self.phase == "Ready":
            since = self.ready_since or datetime.now(UTC)
            age = int((datetime.now(UTC) - since).total_seconds())
            master = f"Ready ({age // 60}m)" if age >= 60 else f"Ready ({age}s)"
        enabling = None
        if self.phase != "Ready" and self.enabling and self.root_key is not None:
            enabling = f"root key kinko-cluster ({self.root_key['id']}) as provider kinko"
        return {
            "masterStatus": master,
            "phase": self.phase,
            "readySince": None if self.ready_since is None else _time(self.ready_since),
            "rootKey": self.root_key,
            "warnings": list(self.warnings),
            "migrations": {name: dict(m) for name, m in sorted(self.migrations.items())},
            "configHash": "sha256:9b1f",
            "enabling": enabling,
            "compactedRevision": None,
        }

    def report_doc(self) -> dict[str, object]:
        if self.empty:
            return {
                "configHash": "sha256:9b1f",
                "resources": {
                    "secrets": {
                        "total": 0,
                        "providers": {},
                        "keyIds": {},
                        "plaintext": 0,
                        "stale": 0,
                        "undecryptable": 0,
                        "undecryptableNames": [],
                        "unavailable": 0,
                        "unavailableReason": None,
                        "complete": True,
                        "migration": {"state": "done", "done": 0, "total": 0, "rewritten": 0},
                    }
                },
                "notes": [],
            }
        secrets = self.totals["secrets"]
        return {
            "configHash": "sha256:9b1f",
            "resources": {
                "secrets": {
                    "total": secrets + 1,
                    "providers": {"k8s:enc:kms:v2:kinko:": secrets - 2, "identity": 2},
                    "keyIds": {
                        "kid-v2": {
                            "count": secrets - 3,
                            "provider": "kinko",
                            "rootKey": ROOT_KEY_ID,
                            "version": "7a9e-v2",
                            "current": True,
                        },
                        "kid-v1": {
                            "count": 1,
                            "provider": "kinko",
                            "rootKey": ROOT_KEY_ID,
                            "version": "1c4d-v1",
                            "current": False,
                        },
                    },
                    "plaintext": 2,
                    "stale": 3,
                    "undecryptable": 3,
                    "undecryptableNames": ["default/old-db", "apps/legacy"],
                    "unavailable": 0,
                    "unavailableReason": None,
                    "complete": True,
                    "firstProvider": "k8s:enc:kms:v2:kinko:",
                    "currentKeyId": "kid-v2",
                    "migration": {
                        "state": "paused",
                        "done": 2,
                        "total": secrets,
                        "rewritten": 2,
                        "unreadable": 0,
                        "conflicts": 0,
                        "reason": PLUGIN_DOWN,
                        "target": "t",
                        "updated": "2030-01-01T00:00:00Z",
                    },
                },
                "configmaps": {
                    "total": 1,
                    "providers": {"k8s:enc:kms:v2:kinko:": 1},
                    "keyIds": {
                        "kid-v2": {
                            "count": 1,
                            "provider": "kinko",
                            "rootKey": ROOT_KEY_ID,
                            "version": "7a9e-v2",
                            "current": True,
                        }
                    },
                    "plaintext": 0,
                    "stale": 0,
                    "undecryptable": 0,
                    "undecryptableNames": [],
                    "unavailable": 1,
                    "unavailableReason": PLUGIN_DOWN,
                    "complete": False,
                    "migration": {"state": "done", "done": 1, "total": 1, "rewritten": 1},
                },
            },
            "notes": ["objects written during the walk may be counted in their old form"],
        }

    # -- driving it ---------------------------------------------------------------------

    def start(self, *, enabling: bool, resources: list[str]) -> None:
        self.enabling = enabling
        self.phase = "Enabling" if enabling else "Migrating"
        self.ready_since = None
        for name in resources:
            # As kinko up's controller: pending until the supervisor's next pass starts it.
            self.migrations[name] = {
                "state": "pending",
                "done": 0,
                "total": None,
                "rewritten": 0,
                "unreadable": 0,
                "conflicts": 0,
                "reason": None,
                "target": "sha256:9b1f",
                "updated": _time(datetime.now(UTC)),
            }

    def advance(self) -> None:
        """One poll's worth of work: a pause if one is scripted, else ``step`` objects each."""
        if self.phase == "Ready":
            return
        active = [
            m for m in self.migrations.values() if m["state"] in ("running", "paused", "pending")
        ]
        if self.pauses:
            reason = self.pauses.pop(0)
            self.phase = "Paused"
            for m in active:
                m["state"], m["reason"] = "paused", reason
            return
        self.phase = "Enabling" if self.enabling else "Migrating"
        for name, m in self.migrations.items():
            if m in active and m["total"] is None:
                m.update(state="running", reason=None, total=self.totals[name])
                continue
            if m not in active:
                continue
            done = min(int(str(m["done"])) + self.step, int(str(m["total"])))
            m.update(state="running", reason=None, done=done, rewritten=done)
            if done == m["total"]:
                m["state"] = "done"
        if all(m["state"] == "done" for m in active):
            self.phase = "Ready"
            self.enabling = False
            self.ready_since = datetime.now(UTC)

    # -- the routes ---------------------------------------------------------------------

    async def _gate(self, request: Request, *, admin: bool) -> JSONResponse | None:
        body = await request.json() if request.method == "POST" else None
        self.calls.append((request.method, request.url.path, body))
        auth = request.headers.get("authorization", "")
        self.tokens.append(auth.removeprefix("Bearer "))
        if auth not in (f"Bearer {ADMIN}", f"Bearer {READER}"):
            return _status(401, "Unauthorized", "Unauthorized")
        if admin and auth != f"Bearer {ADMIN}":
            return _status(403, "Forbidden", "only an Administrator may do this")
        return None

    async def get_status(self, request: Request) -> JSONResponse:
        if (refused := await self._gate(request, admin=False)) is not None:
            return refused
        self.polls += 1
        if self.polls > 1:
            self.advance()
        return JSONResponse(self.status_doc())

    async def get_encryption(self, request: Request) -> JSONResponse:
        return await self._gate(request, admin=True) or JSONResponse(self.report_doc())

    async def enable(self, request: Request) -> JSONResponse:
        if (refused := await self._gate(request, admin=True)) is not None:
            return refused
        key = self.calls[-1][2]["key"]  # type: ignore[index]
        if self.key_service_down:
            return _status(503, "ServiceUnavailable", "the key service is unavailable")
        if key not in self.keys:
            return _status(404, "NotFound", f'root key "{key}" not found')
        key_id, state = self.keys[key]
        if state != "Active":
            return _status(409, "Conflict", f"expected key state Active, got {state}")
        if self.phase != "Ready":
            return _status(
                409, "Conflict", "an enablement is running: secrets 2/5 objects migrated"
            )
        self.root_key = {"id": key_id, "alias": "kinko-cluster", "version": 1, "state": "Active"}
        self.start(enabling=True, resources=sorted(self.totals))
        self.polls = 1
        return JSONResponse(
            {
                "provider": "kinko",
                "key": key_id,
                "socket": SOCKET,
                "changed": True,
                "status": self.status_doc(),
            },
            status_code=202,
        )

    async def migrate(self, request: Request) -> JSONResponse:
        if (refused := await self._gate(request, admin=True)) is not None:
            return refused
        body = self.calls[-1][2]
        assert isinstance(body, dict)
        resources = body.get("resources") or sorted(self.totals)
        if body["dryRun"]:
            return JSONResponse(
                {
                    "dryRun": True,
                    "resources": {
                        name: {
                            "total": self.totals[name],
                            "wouldRewrite": 2,
                            "current": max(0, self.totals[name] - 3),
                            "unreadable": 1,
                            "unreadableNames": [f"/registry/{name}/default/lost"],
                            "target": "sha256:9b1f",
                        }
                        for name in resources
                    },
                }
            )
        if self.phase != "Ready":
            return _status(409, "Conflict", "a migration of secrets is running")
        if not self.current:
            self.start(enabling=False, resources=resources)
        self.polls = 1
        return JSONResponse({"dryRun": False, "status": self.status_doc()}, status_code=202)


@dataclass
class Env:
    fake: FakeAdmin
    http: TestClient
    data_dir: Path
    connections: list[ClusterConnection] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    interrupt_after: int | None = None

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.interrupt_after is not None and len(self.sleeps) > self.interrupt_after:
            raise KeyboardInterrupt

    def hook(self) -> ClusterAdminHook:
        def factory(conn: ClusterConnection) -> ClusterClient:
            self.connections.append(conn)
            return ClusterClient(conn.server, token=conn.token, http=self.http)

        return ClusterAdminHook(factory, sleep=self.sleep)

    def run(self, *args: str) -> Result:
        """``kinko ARGS --data-dir DIR`` (the data folder of a fake ``kinko up``)."""
        return self.raw(*args, "--data-dir", str(self.data_dir))

    def raw(self, *args: str) -> Result:
        return CliRunner().invoke(cli, list(args), obj=self.hook(), env={})

    def posts(self) -> list[tuple[str, object]]:
        return [(path, body) for method, path, body in self.fake.calls if method == "POST"]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    data_dir = tmp_path / "home"
    write_up_folder(data_dir, socket=SOCKET)
    fake = FakeAdmin()
    with TestClient(fake.app()) as http:
        yield Env(fake=fake, http=http, data_dir=data_dir)


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def _enabled(fake: FakeAdmin) -> None:
    """The fake as after a finished enable: KMS v2 on the cluster root key, Ready."""
    fake.root_key = {
        "id": ROOT_KEY_ID,
        "alias": "kinko-cluster",
        "version": 2,
        "state": "Active",
        "versionId": "7a9e-v2",
        "keyId": f"kinko-rk-{ROOT_KEY_ID}-v7a9e-v2",
        "stateCode": 1,
        "expirationDate": _time(datetime.now(UTC) + timedelta(days=12, minutes=5)),
        "secondsToExpiry": 12 * 86400 + 300,
    }


# --------------------------------------------------------------------------- master status


@pytest.mark.parametrize(
    ("master", "ready_since", "line"),
    [
        ("Ready", datetime(2030, 1, 1, 11, 57, tzinfo=UTC), "Master Status: Ready (3m)"),
        ("Ready", datetime(2029, 12, 30, 8, 0, tzinfo=UTC), "Master Status: Ready (2d4h)"),
        ("Ready (3m)", datetime(2030, 1, 1, 11, 57, tzinfo=UTC), "Master Status: Ready (3m)"),
        ("Ready", None, "Master Status: Ready"),
        (IN_PROGRESS, None, f"Master Status: {IN_PROGRESS}"),
        ("Ready\x1b[2J", None, "Master Status: Ready?[2J"),
    ],
)
def test_master_status_line_in_the_seeds_words(
    master: str, ready_since: datetime | None, line: str
) -> None:
    status = ClusterStatus(master_status=master, phase="Ready", ready_since=ready_since)
    assert master_status_line(status, datetime(2030, 1, 1, 12, 0, tzinfo=UTC)) == line


# --------------------------------------------------------------------------- kinko cluster get


def test_get_ready_cluster(env: Env) -> None:
    _enabled(env.fake)
    result = env.run("cluster", "get")
    assert result.exit_code == 0, result.output
    assert _lines(result.stdout) == [
        "Master Status: Ready (15m)",
        "Phase: Ready",
        f"Root key: {ROOT_KEY_ID} (alias kinko-cluster), version 2, Active",
        f"Expires: {env.fake.root_key['expirationDate']} (in 12d)",  # type: ignore[index]
    ]
    assert result.stderr == ""
    assert env.connections == [
        ClusterConnection(server=SERVER, token=ADMIN, ca=env.data_dir / "tls" / "ca.crt")
    ]


def test_get_before_kms_says_no_root_key(env: Env) -> None:
    result = env.run("cluster", "get")
    assert result.exit_code == 0, result.output
    assert "Root key: none (KMS is not enabled)" in _lines(result.stdout)


def test_get_while_enabling_shows_progress_per_resource(env: Env) -> None:
    env.fake.start(enabling=True, resources=["secrets", "configmaps"])
    env.fake.migrations["secrets"].update(
        state="running", total=5, done=2, rewritten=2, conflicts=1
    )
    env.fake.migrations["configmaps"].update(state="done", done=1, rewritten=1)
    result = env.run("cluster", "get")
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert lines[0] == "Master Status: Key Protect feature enablement in progress."
    assert lines[1] == "Phase: Enabling"
    assert "Migrations" in lines
    row = next(line for line in lines if "secrets" in line)
    cells = [cell.strip() for cell in row.strip("│").split("│")]
    assert cells == ["secrets", "running", "2/5 (40%)", "2", "0", "1", ""]
    # A migration that is done is no longer shown as progress.
    assert not any("configmaps" in line for line in lines)


def test_get_shows_the_pause_reason(env: Env) -> None:
    env.fake.start(enabling=True, resources=["secrets"])
    env.fake.phase = "Paused"
    env.fake.migrations["secrets"].update(state="paused", reason=PLUGIN_DOWN, total=5, done=4)
    result = env.run("cluster", "get")
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert lines[0] == f"Master Status: {IN_PROGRESS}"
    assert f"Paused: secrets: {PLUGIN_DOWN}" in lines
    assert any("paused" in line and "4/5 (80%)" in line for line in lines)


def test_get_prints_each_warning_once_on_stderr_only(env: Env) -> None:
    _enabled(env.fake)
    env.fake.warnings = ["root key kinko-cluster expires in 12 days: rotate to a new root key"]
    result = env.run("cluster", "get")
    assert result.exit_code == 0, result.output
    assert "expires in 12 days" not in result.stdout
    assert result.stderr == (
        "warning: root key kinko-cluster expires in 12 days: rotate to a new root key\n"
    )
    # Where both streams meet (a terminal, CliRunner's output), the warning shows once.
    assert result.output.count("expires in 12 days") == 1


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_get_as_a_document(env: Env, fmt: str) -> None:
    _enabled(env.fake)
    env.fake.warnings = ["expires soon"]
    result = env.run("cluster", "get", "-o", fmt)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout) if fmt == "json" else yaml.safe_load(result.stdout)
    assert doc == env.fake.status_doc()
    assert result.stderr == "warning: expires soon\n"


def test_get_as_a_reader(env: Env) -> None:
    result = env.run("cluster", "get", "--token", READER)
    assert result.exit_code == 0, result.output
    assert env.fake.tokens == [READER]


def test_get_with_server_and_token(env: Env) -> None:
    result = env.raw("cluster", "get", "--server", "https://10.0.0.7:6443", "--token", ADMIN)
    assert result.exit_code == 0, result.output
    assert env.connections == [ClusterConnection(server="https://10.0.0.7:6443", token=ADMIN)]


def test_get_with_a_bad_token_is_unauthorized(env: Env) -> None:
    result = env.run("cluster", "get", "--token", "nope")
    assert result.exit_code == 8
    assert "error: Unauthorized" in result.stderr


# --------------------------------------------------------------------------- encryption status


def test_encryption_status_table(env: Env) -> None:
    _enabled(env.fake)
    env.fake.warnings = ["root key kinko-cluster expires in 12 days"]
    result = env.run("cluster", "encryption", "status")
    assert result.exit_code == 0, result.output
    out = result.stdout
    lines = _lines(out)
    assert lines[0].startswith(f"Root key: {ROOT_KEY_ID} (alias kinko-cluster), version 2")
    assert "expires: " in lines[0]
    assert "(in 12d)" in lines[0]
    assert "Configuration: sha256:9b1f" in lines
    assert "secrets: 6 objects" in lines
    assert "configmaps: 1 object" in lines
    rows = [line.split() for line in lines]
    assert ["│", "k8s:enc:kms:v2:kinko:", "│", "3", "│"] in rows
    assert ["│", "identity", "│", "2", "│"] in rows
    key_rows = [[cell.strip() for cell in line.strip("│").split("│")] for line in lines]
    assert ["kid-v2", "kinko", ROOT_KEY_ID, "7a9e-v2", "yes", "2"] in key_rows
    assert ["kid-v1", "kinko", ROOT_KEY_ID, "1c4d-v1", "", "1"] in key_rows
    assert "  plaintext: 2   stale: 3   undecryptable: 3" in lines
    assert "  undecryptable objects: default/old-db, apps/legacy, and 1 more" in lines
    assert f"  migration: paused, 2/5 (40%) done, 2 rewritten (paused: {PLUGIN_DOWN})" in lines
    assert "  migration: done, 1/1 (100%) done, 1 rewritten" in lines
    assert f"  not classified: 1 (a plugin or key service did not answer: {PLUGIN_DOWN})" in lines
    assert "Note: objects written during the walk may be counted in their old form" in lines
    assert "expires in 12 days" not in out
    assert result.stderr == "warning: root key kinko-cluster expires in 12 days\n"
    assert result.output.count("expires in 12 days") == 1


def test_encryption_status_ends_its_last_line_with_a_newline(env: Env) -> None:
    # The migration summary was the last line seen glued to the next output.
    _enabled(env.fake)
    env.fake.empty = True
    result = env.run("cluster", "encryption", "status")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("  migration: done, 0/0 (100%) done, 0 rewritten\n")
    assert result.output.endswith("\n")


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_encryption_status_as_a_document(env: Env, fmt: str) -> None:
    env.fake.warnings = ["root key kinko-cluster expires in 12 days"]
    result = env.run("cluster", "encryption", "status", "-o", fmt)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout) if fmt == "json" else yaml.safe_load(result.stdout)
    assert doc == env.fake.report_doc()
    assert "expires in 12 days" in result.stderr


def test_encryption_status_needs_an_administrator(env: Env) -> None:
    result = env.run("cluster", "encryption", "status", "--token", READER)
    assert result.exit_code == 9
    assert "only an Administrator may do this" in result.stderr


# --------------------------------------------------------------------------- kms enable


def test_kms_enable_waits_until_ready(env: Env) -> None:
    result = env.run("cluster", "kms", "enable", "--key", "kinko-cluster", "--interval", "0.5")
    assert result.exit_code == 0, result.output
    assert env.posts() == [(f"{API}/kms/enable", {"key": "kinko-cluster"})]
    lines = _lines(result.stdout)
    assert lines == [
        f"KMS v2 provider kinko now writes with root key {ROOT_KEY_ID} (plugin {SOCKET})",
        f"Master Status: {IN_PROGRESS}",
        "Master Status: Ready (0s)",
    ]
    # Pending for one poll, then 5 secrets at 2 per poll: 4 polls after the enable's own
    # status, one sleep before each.
    assert env.sleeps == [0.5, 0.5, 0.5, 0.5]
    assert env.fake.phase == "Ready"
    # The progress bar (on stderr) ends at every object of every resource.
    assert "5/5" in result.stderr
    assert "1/1" in result.stderr
    assert "obj/s" in result.stderr


def test_kms_enable_shows_the_pause_reason_once_and_keeps_waiting(env: Env) -> None:
    env.fake.pauses = [PLUGIN_DOWN, PLUGIN_DOWN]
    result = env.run("cluster", "kms", "enable", "--key", "kinko-cluster")
    assert result.exit_code == 0, result.output
    paused = [line for line in _lines(result.stderr) if line.startswith("Paused:")]
    assert paused == [
        f"Paused: configmaps: {PLUGIN_DOWN} - kinko resumes it once the cause is back; still "
        "waiting (Ctrl-C stops waiting only)",
        f"Paused: secrets: {PLUGIN_DOWN} - kinko resumes it once the cause is back; still "
        "waiting (Ctrl-C stops waiting only)",
    ]
    assert "Resumed: secrets" in result.stderr
    assert _lines(result.stdout)[-1] == "Master Status: Ready (0s)"
    assert len(env.sleeps) == 6


def test_kms_enable_no_wait_does_not_poll(env: Env) -> None:
    result = env.run("cluster", "kms", "enable", "--key", ROOT_KEY_ID, "--no-wait")
    assert result.exit_code == 0, result.output
    assert _lines(result.stdout)[1:] == [
        f"Master Status: {IN_PROGRESS}",
        "Follow it with: kinko cluster get",
    ]
    assert env.sleeps == []
    assert [path for _, path, _ in env.fake.calls] == [f"{API}/kms/enable"]


def test_kms_enable_json_no_wait_prints_the_answer(env: Env) -> None:
    result = env.run(
        "cluster", "kms", "enable", "--key", "kinko-cluster", "--no-wait", "-o", "json"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["key"] == ROOT_KEY_ID
    assert doc["status"]["masterStatus"] == IN_PROGRESS


def test_kms_enable_yaml_waits_and_prints_the_ready_status(env: Env) -> None:
    result = env.run("cluster", "kms", "enable", "--key", "kinko-cluster", "-o", "yaml")
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.stdout)
    assert doc["phase"] == "Ready"
    assert doc["migrations"]["secrets"] == env.fake.status_doc()["migrations"]["secrets"]  # type: ignore[index]


def test_ctrl_c_stops_waiting_not_the_enablement(env: Env) -> None:
    env.interrupt_after = 1
    result = env.run("cluster", "kms", "enable", "--key", "kinko-cluster")
    assert result.exit_code == 130
    assert "Stopped waiting. The work goes on in kinko: follow it with kinko cluster get." in (
        result.stderr
    )
    assert env.fake.phase == "Enabling"
    assert _lines(result.stdout)[-1] == f"Master Status: {IN_PROGRESS}"


@pytest.mark.parametrize(
    ("key", "setup", "code", "message"),
    [
        ("nope", None, 6, 'root key "nope" not found'),
        ("suspended", None, 7, "expected key state Active, got Suspended"),
        ("kinko-cluster", "running", 7, "an enablement is running: secrets 2/5"),
        ("kinko-cluster", "key-service-down", 12, "the key service is unavailable"),
        ("kinko-cluster", "reader", 9, "only an Administrator may do this"),
    ],
)
def test_kms_enable_errors(env: Env, key: str, setup: str | None, code: int, message: str) -> None:
    extra: list[str] = []
    if setup == "running":
        env.fake.start(enabling=True, resources=["secrets"])
    elif setup == "key-service-down":
        env.fake.key_service_down = True
    elif setup == "reader":
        extra = ["--token", READER]
    phase = env.fake.phase
    result = env.run("cluster", "kms", "enable", "--key", key, *extra)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stderr.startswith("error: ")
    assert env.fake.phase == phase
    assert env.sleeps == []


def test_kms_enable_with_the_clusters_own_key_service(env: Env) -> None:
    result = env.run(
        "cluster", "kms", "enable", "--key", "kinko-cluster", "--key-service", f"{SERVER}/api/v2/"
    )
    assert result.exit_code == 0, result.output
    assert len(env.posts()) == 1


@pytest.mark.parametrize(
    "url", ["https://kms.example.com:8443", "https://127.0.0.1:7443", "http://127.0.0.1:6443"]
)
def test_kms_enable_refuses_another_key_service(env: Env, url: str) -> None:
    result = env.run("cluster", "kms", "enable", "--key", "kinko-cluster", "--key-service", url)
    assert result.exit_code == 4, result.output
    assert f"--key-service {url} is not this cluster's key service" in result.stderr
    assert f"it runs in-process, at {SERVER}" in result.stderr
    assert "not supported" in result.stderr
    assert env.posts() == []


def test_kms_enable_key_service_of_a_server_given_by_url(env: Env) -> None:
    other = "https://10.0.0.7:6443"
    common = ("cluster", "kms", "enable", "--key", "kinko-cluster", "--server", other)
    refused = env.raw(*common, "--token", ADMIN, "--key-service", SERVER)
    assert refused.exit_code == 4
    assert f"at {other}" in refused.stderr
    accepted = env.raw(*common, "--token", ADMIN, "--key-service", other)
    assert accepted.exit_code == 0, accepted.output


def test_kms_enable_bad_key_service_url(env: Env) -> None:
    result = env.run("cluster", "kms", "enable", "--key", "k", "--key-service", "kms.example")
    assert result.exit_code == 4
    assert "expected --key-service as https://host[:port]" in result.stderr
    assert env.posts() == []


# --------------------------------------------------------------------------- migrate


def test_migrate_dry_run_table(env: Env) -> None:
    result = env.run("cluster", "migrate", "--dry-run", "--resource", "secrets")
    assert result.exit_code == 0, result.output
    assert env.posts() == [(f"{API}/migrations", {"dryRun": True, "resources": ["secrets"]})]
    rows = [line.split() for line in _lines(result.stdout)]
    assert ["Dry", "run:", "nothing", "was", "written"] in rows
    # kinko up sends no "stale" in a dry run: the objects it would rewrite are the stale ones.
    assert ["│", "secrets", "│", "5", "│", "2", "│", "2", "│", "2", "│", "1", "│"] in rows
    assert "secrets: unreadable, left alone: /registry/secrets/default/lost" in result.stdout
    assert env.fake.phase == "Ready"


def test_migrate_dry_run_json(env: Env) -> None:
    result = env.run("cluster", "migrate", "--dry-run", "-o", "json")
    assert result.exit_code == 0, result.output
    assert env.posts() == [(f"{API}/migrations", {"dryRun": True})]
    doc = json.loads(result.stdout)
    assert set(doc["resources"]) == {"secrets", "configmaps"}
    assert doc["resources"]["secrets"]["wouldRewrite"] == 2


def test_migrate_waits_until_ready(env: Env) -> None:
    result = env.run(
        "cluster", "migrate", "--resource", "secrets", "--resource", "configmaps", "--interval", "0"
    )
    assert result.exit_code == 0, result.output
    assert env.posts() == [
        (f"{API}/migrations", {"dryRun": False, "resources": ["secrets", "configmaps"]})
    ]
    lines = _lines(result.stdout)
    assert lines[0] == "Migration started: secrets, configmaps"
    assert lines[-1] == "Master Status: Ready (0s)"
    assert env.sleeps == [0.0, 0.0, 0.0, 0.0]
    assert "5/5" in result.stderr


def test_migrate_paused_then_resumed(env: Env) -> None:
    env.fake.pauses = ["the store is unavailable: database is locked"]
    result = env.run("cluster", "migrate", "--resource", "secrets")
    assert result.exit_code == 0, result.output
    assert "Paused: secrets: the store is unavailable: database is locked" in result.stderr
    assert "Resumed: secrets" in result.stderr
    assert env.fake.migrations["secrets"]["state"] == "done"


def test_migrate_no_wait(env: Env) -> None:
    result = env.run("cluster", "migrate", "--no-wait", "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"]["phase"] == "Migrating"
    assert env.sleeps == []


def test_migrate_while_one_runs_is_a_conflict(env: Env) -> None:
    env.fake.start(enabling=False, resources=["secrets"])
    result = env.run("cluster", "migrate")
    assert result.exit_code == 7
    assert "a migration of secrets is running" in result.stderr


def test_migrate_bad_resource_sends_nothing(env: Env) -> None:
    result = env.run("cluster", "migrate", "--resource", "Secrets")
    assert result.exit_code == 4
    assert "expected a resource such as secrets or configmaps" in result.stderr
    assert env.fake.calls == []


def test_unreachable_server_is_unavailable() -> None:
    result = CliRunner().invoke(
        cli,
        ["cluster", "get", "--server", "https://127.0.0.1:1", "--token", ADMIN, "--timeout", "2"],
        env={},
    )
    assert result.exit_code == 12
    assert "cannot reach the cluster API at https://127.0.0.1:1" in result.stderr


def test_migrate_of_current_data_prints_ready_once(env: Env) -> None:
    """kinko up answers a migration of data that is all current with a Ready status."""
    env.fake.current = True
    result = env.run("cluster", "migrate")
    assert result.exit_code == 0, result.output
    assert _lines(result.stdout) == [
        "Migration started: every encrypted resource",
        "Master Status: Ready (15m)",
    ]
    assert env.sleeps == []
    assert [path for _, path, _ in env.fake.calls] == [f"{API}/migrations"]
