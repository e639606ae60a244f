"""The encryption lifecycle on a running kinko: enable KMS, rotate, expire, fail and resume.

:class:`kinko.up.Kinko` runs on a thread with real parts: HTTPS on a loopback port, the KMS
v2 plugins on unix sockets, SQLite or a real etcd, the in-memory HSM or SoftHSM2. Clocks are
injected where the lifecycle allows it (the key service's wall clock, the KMS sessions'
monotonic clock), so expiry and the 3-minute write window are reached by moving them, never
by sleeping. Waits poll the API with generous deadlines; nothing asserts on elapsed time.
"""

from __future__ import annotations

import base64
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kinko.api.server import ListenAddress
from kinko.cluster.auth import ClusterTokenBook, issue_cluster_token
from kinko.cluster.lifecycle import IN_PROGRESS
from kinko.crypto.kmsv2 import decode_encrypted_object
from kinko.hsm.memory import MemoryHsm
from kinko.keys.auth import Principal
from kinko.kms.envelope import WRITE_STATE_TTL
from kinko.kms.rootkey import key_id_for
from kinko.store.port import Store
from kinko.up import Kinko, UpOptions

DEADLINE = 180.0
STATUS = "/apis/kinko.io/v1/status"
ENCRYPTION = "/apis/kinko.io/v1/encryption"
ENABLE = "/apis/kinko.io/v1/kms/enable"
MIGRATIONS = "/apis/kinko.io/v1/migrations"
SECRETS = "/api/v1/namespaces/default/secrets"


class WallClock:
    """The key service's and controller's wall clock: real time plus an offset a test adds."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Monotonic:
    """The KMS sessions' and plugins' monotonic clock: real time plus an offset."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def options(data_dir: Path, **changes: Any) -> UpOptions:
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "listen": ListenAddress("127.0.0.1", 0),
        "hsm": MemoryHsm(),
        "config_poll_interval": 0.2,
        "encryption_interval": 0.2,
        "backoff_cap": 1.0,
        # The key service's scheduler would persist expirations: keep it out of the way.
        "scheduler_interval": 3600.0,
    }
    base.update(changes)
    return UpOptions(**base)


@contextmanager
def running(opts: UpOptions) -> Iterator[Kinko]:
    with Kinko(opts) as kinko:
        yield kinko


def client(kinko: Kinko, token: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=kinko.url,
        verify=ssl.create_default_context(cafile=kinko.endpoints.ca_file),
        headers={"authorization": f"Bearer {token or kinko.admin_token}"},
        timeout=60,
    )


def secret(name: str, value: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"v": base64.b64encode(value.encode()).decode()},
    }


def value_of(doc: dict[str, Any]) -> str:
    return base64.b64decode(doc["data"]["v"]).decode()


def admin_principal(kinko: Kinko) -> Principal:
    return kinko.key_service.authenticate(kinko.admin_token)


def wait_for(what: str, check: Callable[[], bool], deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def status(http: httpx.Client) -> dict[str, Any]:
    answer = http.get(STATUS)
    assert answer.status_code == 200, answer.text
    doc: dict[str, Any] = answer.json()
    return doc


def create_plaintext(kinko: Kinko, count: int) -> None:
    service = kinko.cluster_service
    for i in range(count):
        service.create("secrets", "default", secret(f"s{i:04d}", f"initial-{i}"))


def raw_values(store: Store, prefix: bytes = b"/registry/secrets/") -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    after = b""
    while True:
        page = store.range(prefix, start_after=after, limit=500)
        out.extend((e.key, e.value) for e in page.entries)
        if not page.more or not page.entries:
            return out
        after = page.entries[-1].key


def _revision(store: Store) -> int:
    return store.range(b"/nothing-here/", limit=1).revision


def stored_key_id(value: bytes, provider: str) -> str:
    prefix = f"k8s:enc:kms:v2:{provider}:".encode()
    assert value.startswith(prefix), value[:40]
    return decode_encrypted_object(value[len(prefix) :]).key_id


@dataclass
class Writer:
    """Creates and updates Secrets over HTTPS until stopped; remembers what was acknowledged."""

    kinko: Kinko
    names: list[str]
    acked: dict[str, str] = field(default_factory=dict)
    refused: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(60)

    def _run(self) -> None:
        with client(self.kinko) as http:
            i = 0
            while not self.stop.is_set():
                i += 1
                if i % 3 == 0:
                    name, value = f"w{i:05d}", f"created-{i}"
                    answer = http.post(SECRETS, json=secret(name, value))
                    if answer.status_code == 201:
                        self.names.append(name)
                else:
                    name, value = self.names[(i * 7919) % len(self.names)], f"updated-{i}"
                    answer = http.put(f"{SECRETS}/{name}", json=secret(name, value))
                if answer.status_code in (200, 201):
                    self.acked[name] = value
                else:
                    self.refused.append(answer.status_code)


# --- enable on a populated cluster ----------------------------------------------------------


def _store_options(request: pytest.FixtureRequest, kind: str) -> dict[str, Any]:
    if kind == "etcd":
        endpoints: list[str] = request.getfixturevalue("etcd_endpoints")
        return {"etcd_endpoints": tuple(endpoints)}
    return {}


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def test_enable_on_1000_plaintext_secrets_while_writes_go_on(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    opts = options(tmp_path / "kinko", no_encryption=True, **_store_options(request, kind))
    with running(opts) as kinko, client(kinko) as http:
        create_plaintext(kinko, 1000)
        assert all(not v.startswith(b"k8s:enc:") for _, v in raw_values(kinko.store))
        before = status(http)
        assert before["phase"] == "Ready"
        assert any("plaintext" in w for w in before["warnings"])

        writer = Writer(kinko, [f"s{i:04d}" for i in range(1000)])
        writer.start()
        wait_for("the writer's first writes", lambda: len(writer.acked) >= 20)
        answer = http.post(ENABLE, json={"key": "kinko-cluster"})
        assert answer.status_code == 202, answer.text
        enabled = answer.json()
        assert enabled["provider"] == "kinko"
        assert enabled["key"] == kinko.root_key
        assert enabled["socket"] == str(kinko.data_dir / "kms.sock")
        seen = [enabled["status"]["masterStatus"]]
        assert seen[0] == IN_PROGRESS

        def ready() -> bool:
            seen.append(status(http)["masterStatus"])
            return bool(seen[-1].startswith("Ready ("))

        wait_for("Ready after the enable", ready)
        wait_for("more writes after Ready", lambda: len(writer.acked) >= 200)
        writer.finish()
        assert set(writer.refused) <= {409}, writer.refused

        def covered() -> bool:
            report = http.get(ENCRYPTION).json()["resources"]["secrets"]
            return (
                report["stale"] == 0
                and report["plaintext"] == 0
                and all(k["current"] for k in report["keyIds"].values())
                and status(http)["phase"] == "Ready"
            )

        wait_for("every Secret current", covered)
        final = status(http)
        key_id = final["rootKey"]["keyId"]
        assert final["rootKey"]["id"] == kinko.root_key
        report = http.get(ENCRYPTION).json()["resources"]["secrets"]
        assert report["providers"] == {"k8s:enc:kms:v2:kinko:": report["total"]}
        assert list(report["keyIds"]) == [key_id]
        assert report["undecryptable"] == 0
        assert final["migrations"]["secrets"]["state"] == "done"
        assert final["compactedRevision"] is not None
        # The raw store says the same, independently of the report.
        values = raw_values(kinko.store)
        assert len(values) == report["total"] >= 1000
        assert {stored_key_id(v, "kinko") for _, v in values} == {key_id}
        # No acknowledged write was lost.
        for name, value in writer.acked.items():
            got = http.get(f"{SECRETS}/{name}")
            assert got.status_code == 200, got.text
            assert value_of(got.json()) == value, name
        for i in range(0, 1000, 97):
            name = f"s{i:04d}"
            if name not in writer.acked:
                assert value_of(http.get(f"{SECRETS}/{name}").json()) == f"initial-{i}"


# --- rotation -------------------------------------------------------------------------------


def test_two_rotations_before_the_first_migration_finished_end_under_the_newest(
    tmp_path: Path,
) -> None:
    wall = WallClock()
    opts = options(
        tmp_path / "kinko",
        no_encryption=True,
        clock=wall,
        migration_batch=10,
        migration_rate_limit=150.0,
    )
    with running(opts) as kinko, client(kinko) as http:
        create_plaintext(kinko, 1000)
        assert http.post(ENABLE, json={"key": "kinko-cluster"}).status_code == 202
        admin = admin_principal(kinko)

        def running_with(done: int, restarts: int) -> bool:
            m = status(http)["migrations"]["secrets"]
            return bool(m["state"] == "running" and m["done"] >= done and m["restarts"] >= restarts)

        key_ids = []
        for rotation in (1, 2):
            wait_for(
                f"the migration running before rotation {rotation}",
                lambda r=rotation: running_with(50, r - 1),  # type: ignore[misc]
            )
            wall.offset += timedelta(hours=2)  # at most one rotation per hour
            view = kinko.key_service.rotate(admin, kinko.instance, kinko.root_key)
            key_ids.append(key_id_for(view.id, view.key_version.id))
            # Status polling would notice within its interval; the kick makes it now.
            assert http.post(MIGRATIONS, json={}).status_code == 202
            wait_for(
                f"the migration restarted after rotation {rotation}",
                lambda r=rotation: running_with(0, r) or status(http)["phase"] == "Ready",  # type: ignore[misc]
            )
            assert status(http)["phase"] != "Ready", "the migration finished before the rotation"

        wait_for("Ready under the newest version", lambda: status(http)["phase"] == "Ready")
        final = status(http)
        assert final["rootKey"]["keyId"] == key_ids[-1]
        assert final["rootKey"]["version"] == 3
        assert final["migrations"]["secrets"]["restarts"] >= 2
        report = http.get(ENCRYPTION).json()["resources"]["secrets"]
        assert list(report["keyIds"]) == [key_ids[-1]]
        assert report["keyIds"][key_ids[-1]]["version"] == key_ids[-1].rsplit("-v", 1)[1]
        assert {stored_key_id(v, "kinko") for _, v in raw_values(kinko.store)} == {key_ids[-1]}


# --- expiry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days_later", "warning", "writes_fail"),
    [
        (5, None, False),
        (20, "expires in 20 days", False),
        (41, "expired on", True),
    ],
    ids=["far", "within-30-days", "expired"],
)
def test_expiry_table(
    tmp_path: Path, days_later: int, warning: str | None, writes_fail: bool
) -> None:
    wall, mono = WallClock(), Monotonic()
    opts = options(tmp_path / "kinko", no_encryption=True, clock=wall, monotonic=mono)
    with running(opts) as kinko, client(kinko) as http:
        admin = admin_principal(kinko)
        key = kinko.key_service.create_key(
            admin,
            kinko.instance,
            name="expiring-root",
            expiration_date=wall() + timedelta(days=40, hours=1),
        ).id
        assert http.post(SECRETS, json=secret("before", "v0")).status_code == 201
        assert http.post(ENABLE, json={"key": key}).status_code == 202
        wait_for("Ready", lambda: status(http)["phase"] == "Ready")
        provider = f"kinko-{key[:8]}"

        wall.offset += timedelta(days=days_later)
        doc = status(http)
        warnings = [w for w in doc["warnings"] if "root key" in w]
        if warning is None:
            assert warnings == []
        else:
            assert len(warnings) == 1
            assert warning in warnings[0]
            assert "rotate to a new root key" in warnings[0]
        seconds = doc["rootKey"]["secondsToExpiry"]
        assert seconds == pytest.approx((40 - days_later) * 86400 + 3600, abs=120)
        metrics = http.get("/metrics").text
        assert f'kinko_root_key_expiry_seconds{{provider="{provider}"}}' in metrics

        # The write window: writes go on for 3 minutes after the last healthy Status ...
        assert http.post(SECRETS, json=secret("in-window", "v1")).status_code == 201
        mono.offset += WRITE_STATE_TTL + 30
        http.post(MIGRATIONS, json={})
        # ... then fail closed if the key expired, saying what to do.
        answer = http.post(SECRETS, json=secret("after", "v2"))
        if writes_fail:
            assert answer.status_code == 503, answer.text
            message = answer.json()["message"]
            assert "rotate to a new root key with `kinko cluster kms enable --key NEW`" in message
        else:
            wait_for(
                "a healthy Status after the window",
                lambda: (
                    http.post(SECRETS, json=secret(f"x{time.monotonic_ns()}", "v")).status_code
                    == 201
                ),
            )
        # Reads keep working either way.
        for name in ("before", "in-window"):
            got = http.get(f"{SECRETS}/{name}")
            assert got.status_code == 200, got.text


# --- bad input ------------------------------------------------------------------------------


def _suspended(kinko: Kinko, wall: WallClock) -> str:
    admin = admin_principal(kinko)
    key = kinko.key_service.create_key(admin, kinko.instance, name="suspended-root").id
    wall.offset += timedelta(minutes=1)
    kinko.key_service.disable(admin, kinko.instance, key)
    return key


def _expired(kinko: Kinko, wall: WallClock) -> str:
    admin = admin_principal(kinko)
    key = kinko.key_service.create_key(
        admin, kinko.instance, name="expired-root", expiration_date=wall() + timedelta(days=1)
    ).id
    wall.offset += timedelta(days=2)
    return key


def _destroyed(kinko: Kinko, wall: WallClock) -> str:
    admin = admin_principal(kinko)
    key = kinko.key_service.create_key(admin, kinko.instance, name="destroyed-root").id
    wall.offset += timedelta(minutes=1)
    kinko.key_service.delete_key(admin, kinko.instance, key)
    return key


def _unreachable(kinko: Kinko, wall: WallClock) -> str:
    admin = admin_principal(kinko)
    key = kinko.key_service.create_key(admin, kinko.instance, name="other-root").id
    hsm = kinko.hsm
    assert isinstance(hsm, MemoryHsm)
    hsm.device.online = False
    return key


@pytest.mark.parametrize(
    ("make_key", "code", "message"),
    [
        (lambda k, w: "no-such-key", 404, "was not found"),
        (_suspended, 409, "is Suspended"),
        (_expired, 409, "pick a new root key"),
        (_destroyed, 409, "was deleted"),
        (_unreachable, 503, "cannot be used now"),
    ],
    ids=["unknown", "suspended", "expired", "destroyed", "key-service-down"],
)
def test_a_refused_enable_leaves_the_config_and_the_store_as_they_were(
    tmp_path: Path, make_key: Callable[[Kinko, WallClock], str], code: int, message: str
) -> None:
    wall = WallClock()
    opts = options(tmp_path / "kinko", no_encryption=True, clock=wall)
    with running(opts) as kinko, client(kinko) as http:
        assert http.post(SECRETS, json=secret("a", "v")).status_code == 201
        wait_for("Ready", lambda: status(http)["phase"] == "Ready")
        key = make_key(kinko, wall)
        config = kinko.encryption_config.read_bytes()
        up_json = (kinko.data_dir / "up.json").read_bytes()
        revision = _revision(kinko.store)

        answer = http.post(ENABLE, json={"key": key})

        assert answer.status_code == code, answer.text
        assert answer.json()["kind"] == "Status"
        assert message in answer.json()["message"]
        assert kinko.encryption_config.read_bytes() == config
        assert (kinko.data_dir / "up.json").read_bytes() == up_json
        assert _revision(kinko.store) == revision
        assert sorted(p.name for p in kinko.data_dir.glob("kms*.sock")) == ["kms.sock"]


def test_only_an_administrator_enables_and_a_second_enable_names_what_runs(
    tmp_path: Path,
) -> None:
    opts = options(
        tmp_path / "kinko", no_encryption=True, migration_batch=10, migration_rate_limit=50.0
    )
    with running(opts) as kinko, client(kinko) as http:
        create_plaintext(kinko, 300)
        token, record = issue_cluster_token(
            rng=os.urandom, role="Editor", namespaces=["*"], now=datetime.now(UTC)
        )
        ClusterTokenBook(kinko.store).add(record)
        config = kinko.encryption_config.read_bytes()
        with client(kinko, token) as editor:
            refused = editor.post(ENABLE, json={"key": "kinko-cluster"})
            assert refused.status_code == 403
            assert editor.get(STATUS).status_code == 200
        assert kinko.encryption_config.read_bytes() == config

        assert http.post(ENABLE, json={"key": "kinko-cluster"}).status_code == 202
        admin = admin_principal(kinko)
        other = kinko.key_service.create_key(admin, kinko.instance, name="other-root").id
        config = kinko.encryption_config.read_bytes()
        second = http.post(ENABLE, json={"key": other})
        assert second.status_code == 409, second.text
        assert second.json()["message"].startswith(
            "enabling KMS with root key kinko-cluster: migration of secrets "
        )
        assert kinko.encryption_config.read_bytes() == config
        wait_for("Ready", lambda: status(http)["phase"] == "Ready")


# --- faults ---------------------------------------------------------------------------------


def test_a_key_service_going_away_mid_migration_pauses_it_and_it_resumes(tmp_path: Path) -> None:
    mono = Monotonic()
    hsm = MemoryHsm()
    opts = options(
        tmp_path / "kinko",
        hsm=hsm,
        no_encryption=True,
        monotonic=mono,
        migration_batch=10,
        migration_rate_limit=100.0,
    )
    with running(opts) as kinko, client(kinko) as http:
        create_plaintext(kinko, 600)
        assert http.post(ENABLE, json={"key": "kinko-cluster"}).status_code == 202
        wait_for(
            "the migration running",
            lambda: status(http)["migrations"]["secrets"]["done"] >= 50,
        )
        hsm.device.online = False
        mono.offset += WRITE_STATE_TTL + 30

        def paused() -> bool:
            return bool(status(http)["phase"] == "Paused")

        wait_for("the migration paused", paused)
        doc = status(http)
        assert doc["masterStatus"] == IN_PROGRESS
        secrets = doc["migrations"]["secrets"]
        assert secrets["state"] == "paused"
        assert "PluginError" in secrets["reason"]
        assert any("migration of secrets paused" in w for w in doc["warnings"])
        stuck = secrets["rewritten"]
        kms_values = sum(v.startswith(b"k8s:enc:kms:") for _, v in raw_values(kinko.store))
        # Never marked migrated what is not: the record counts no more than the store holds.
        assert stuck <= kms_values < 600

        hsm.device.online = True
        mono.offset += 10  # the plugin's cached failed probe runs out
        wait_for("Ready after the key service came back", lambda: status(http)["phase"] == "Ready")
        values = raw_values(kinko.store)
        assert all(v.startswith(b"k8s:enc:kms:v2:kinko:") for _, v in values)
        assert len(values) == 600


def test_kinko_stopped_mid_migration_resumes_it_on_the_next_start(tmp_path: Path) -> None:
    data_dir, hsm = tmp_path / "kinko", MemoryHsm()
    slow = options(
        data_dir, hsm=hsm, no_encryption=True, migration_batch=10, migration_rate_limit=100.0
    )
    with running(slow) as kinko, client(kinko) as http:
        create_plaintext(kinko, 400)
        assert http.post(ENABLE, json={"key": "kinko-cluster"}).status_code == 202
        wait_for(
            "the migration running",
            lambda: status(http)["migrations"]["secrets"]["done"] >= 50,
        )
    # Stopped between two batches: the record says running, and nothing waits for a lock.
    with running(options(data_dir, hsm=hsm)) as kinko, client(kinko) as http:
        wait_for("Ready after the restart", lambda: status(http)["phase"] == "Ready")
        secrets = status(http)["migrations"]["secrets"]
        # Resumed, not restarted: every object rewritten exactly once over both runs.
        assert (secrets["done"], secrets["rewritten"], secrets["restarts"]) == (400, 400, 0)
        values = raw_values(kinko.store)
        assert len(values) == 400
        assert all(v.startswith(b"k8s:enc:kms:v2:kinko:") for _, v in values)
