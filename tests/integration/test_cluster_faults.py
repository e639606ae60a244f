"""ClusterService while its KMS v2 plugin process is SIGKILLed mid-load, and after it returns.

The plugin is a real ``kinko kms serve --key-file`` process; the service runs over SQLite with
an EncryptionConfigSource whose KMS v2 provider dials the plugin's socket over gRPC, exactly
as in production. The sessions' monotonic clock is a fake one, so the 3-minute write window
(kube-apiserver's: no write without a healthy Status within 3 minutes) is crossed without
waiting, and the Status checks are made by the test (``poll_kms=False``) instead of by a
background poller, so every step is deterministic.

What must hold while the plugin is dead:

- writes reuse the current seed and keep working until the window closes, then fail with a
  PluginError that names the provider, and write nothing;
- reads of values whose seed is cached keep working;
- a value whose seed was never seen raises PluginError, on GET and on LIST alike: it is
  unavailable, not unreadable (reporting it unreadable would invite a forced delete).

After a restart with the same key file, the next Status check reopens the window and every
value written before is readable again, also by a fresh source with an empty cache.
"""

from __future__ import annotations

import base64
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kinko.cluster.encryption import EncryptionConfigSource
from kinko.cluster.resources import Secret
from kinko.cluster.service import ClusterService
from kinko.errors import NotFound, PluginError
from kinko.kms.envelope import WRITE_STATE_TTL, KmsV2Session
from kinko.store.sqlite import SqliteStore
from tests.integration.kms_process import DEADLINE_S, PluginProcess

pytestmark = pytest.mark.slow

PROVIDER = "vault-kms"
NS = "default"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
#: Creates before the kill, and at least as many after it while the window is open.
LOAD = 15


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 10_000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def secret(name: str, password: bytes) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "data": {"password": base64.b64encode(password).decode()},
    }


def password_of(obj: object) -> bytes:
    assert isinstance(obj, Secret)
    return obj.data["password"]


@dataclass
class Cluster:
    plugin: PluginProcess
    config: Path
    store: SqliteStore
    clock: FakeClock
    source: EncryptionConfigSource
    svc: ClusterService

    def session(self) -> KmsV2Session:
        session = self.source.kms_v2_session(PROVIDER)
        assert session is not None
        return session

    def other_writer(self) -> tuple[EncryptionConfigSource, ClusterService]:
        """Another API server on the same store and plugin: its own session, its own seed."""
        source = EncryptionConfigSource(self.config, poll_kms=False)
        return source, ClusterService(self.store, source, clock=lambda: NOW)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    # A short directory of its own: a unix socket path is limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="kk-", dir="/tmp") as short:
        endpoint = f"unix://{short}/kms.sock"
        plugin = PluginProcess(endpoint, tmp_path / "kms.key", tmp_path / "plugin.log")
        plugin.start(create_key=True)
        config = tmp_path / "encryption.yaml"
        config.write_text(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"
            "resources:\n- resources: [secrets]\n  providers:\n"
            f"  - kms: {{apiVersion: v2, name: {PROVIDER}, endpoint: '{endpoint}', "
            "timeout: 500ms}\n"
            "  - identity: {}\n"
        )
        clock = FakeClock()
        source = EncryptionConfigSource(config, clock=clock, poll_kms=False)
        store = SqliteStore(tmp_path / "cluster.db")
        svc = ClusterService(store, source, clock=lambda: NOW)
        try:
            yield Cluster(plugin, config, store, clock, source, svc)
        finally:
            source.close()
            store.close()
            plugin.stop()


def test_a_killed_plugin_stops_writes_only_after_the_window_and_never_hides_data(
    cluster: Cluster,
) -> None:
    svc, store, clock = cluster.svc, cluster.store, cluster.clock
    written: dict[str, bytes] = {}

    # Two other API servers write one Secret each, under seeds of their own. This one reads
    # the first before the kill (so its seed is cached) and never sees the second's seed.
    for name in ("seen-elsewhere", "unseen-elsewhere"):
        other_source, other = cluster.other_writer()
        try:
            other.create("secrets", NS, secret(name, name.encode()))
        finally:
            other_source.close()
        written[name] = name.encode()

    # A writer creates Secrets in a loop; the plugin is killed while it runs. Writes need no
    # plugin call while the window is open, so the loop does not notice the kill.
    acknowledged: dict[str, bytes] = {}
    failures: list[BaseException] = []
    killed = threading.Event()
    enough = threading.Event()
    stop = threading.Event()

    def writer() -> None:
        n, after_kill = 0, 0
        try:
            while not stop.is_set():
                name, password = f"load-{n:04d}", f"password {n}".encode()
                svc.create("secrets", NS, secret(name, password))
                acknowledged[name] = password
                n += 1
                if killed.is_set():
                    after_kill += 1
                if n >= LOAD:
                    enough.set()
                if after_kill >= LOAD:
                    return
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    assert enough.wait(DEADLINE_S)
    assert password_of(svc.get("secrets", NS, "seen-elsewhere")) == b"seen-elsewhere"
    seed_before = cluster.session().write_state().encrypted_dek_source
    cluster.plugin.kill()
    killed.set()
    thread.join(DEADLINE_S)
    assert not thread.is_alive()
    assert not failures, failures
    assert len(acknowledged) >= 2 * LOAD
    written.update(acknowledged)

    # The plugin is down: a Status check fails and changes nothing.
    with pytest.raises(PluginError):
        cluster.session().check()

    # Reads of values whose seed is cached work.
    for name, password in acknowledged.items():
        assert password_of(svc.get("secrets", NS, name)) == password
    assert password_of(svc.get("secrets", NS, "seen-elsewhere")) == b"seen-elsewhere"

    # A value whose seed was never seen is unavailable, not unreadable: on GET, on LIST,
    # and for a forced delete of "unreadable" objects, which must delete nothing.
    revision = store.revision
    with pytest.raises(PluginError):
        svc.get("secrets", NS, "unseen-elsewhere")
    with pytest.raises(PluginError):
        svc.list("secrets", NS)
    with pytest.raises(PluginError):
        svc.delete_unreadable("secrets", NS, "unseen-elsewhere")
    assert store.revision == revision

    # Writes go on with the current seed until 3 minutes after the last healthy Status...
    clock.advance(WRITE_STATE_TTL - 1)
    svc.create("secrets", NS, secret("late-in-window", b"late"))
    written["late-in-window"] = b"late"
    assert password_of(svc.get("secrets", NS, "late-in-window")) == b"late"

    # ...and then fail closed, naming the plugin, with nothing written.
    clock.advance(2)
    revision = store.revision
    with pytest.raises(PluginError, match=PROVIDER):
        svc.create("secrets", NS, secret("after-window", b"x"))
    with pytest.raises(PluginError, match=PROVIDER):
        svc.replace("secrets", NS, "load-0000", secret("load-0000", b"changed"))
    with pytest.raises(PluginError, match=PROVIDER):
        svc.patch("secrets", NS, "load-0001", {"data": {"password": "Y2hhbmdlZA=="}})
    assert store.revision == revision
    with pytest.raises(NotFound):
        svc.get("secrets", NS, "after-window")
    # Reads need no healthy Status, only a cached seed or a Decrypt.
    assert password_of(svc.get("secrets", NS, "load-0000")) == acknowledged["load-0000"]

    # The plugin comes back with the same key file; the next Status check reopens the window.
    status = cluster.plugin.start()
    _check_until_healthy(cluster.session())
    assert cluster.session().current_key_id() == status.key_id
    svc.create("secrets", NS, secret("after-restart", b"back"))
    written["after-restart"] = b"back"
    # The key_id did not change, so the seed did not either: no new Encrypt was needed.
    assert cluster.session().write_state().encrypted_dek_source == seed_before

    # Everything written before is readable: through this source, and through a fresh one
    # whose empty cache makes the restarted plugin Decrypt every seed.
    listed = svc.list("secrets", NS)
    assert not listed.unreadable
    assert {o.metadata.name: password_of(o) for o in listed.items} == written
    fresh_source, fresh = cluster.other_writer()
    try:
        listed = fresh.list("secrets", NS)
        assert not listed.unreadable
        assert {o.metadata.name: password_of(o) for o in listed.items} == written
        assert password_of(fresh.get("secrets", NS, "unseen-elsewhere")) == b"unseen-elsewhere"
    finally:
        fresh_source.close()


def _check_until_healthy(session: KmsV2Session) -> None:
    """Run Status checks until one succeeds (as the poller would, every 10 s when unhealthy).

    The session's gRPC channel may still be in its reconnect backoff after the plugin's
    death; a check made meanwhile fails like any check against an unreachable plugin.
    """
    deadline = time.monotonic() + DEADLINE_S * 3
    while True:
        try:
            session.check()
            return
        except PluginError:
            # Each failed check waited out its own deadline (500 ms), so this does not spin.
            if time.monotonic() > deadline:
                raise
