"""Crypto-shredding on a running kinko: a deleted, then purged, root key takes its data along.

Real parts throughout: root keys in a SoftHSM2 token (the purge destroys the PKCS#11
objects), the store in SQLite, the key service driven over its Key Protect REST API, the
cluster over HTTPS, and ``kinko etcd decrypt`` as a separate process on a copy of the store
file. kinko is restarted after each deletion so that no seed cached by a KMS v2 session
survives; the key service's wall clock is moved past the restore window and the 4-hour
purge wait instead of waiting for them.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kinko.hsm.pkcs11 import Pkcs11Hsm
from kinko.store.sqlite import SqliteStore
from kinko.up import Kinko, UpOptions
from tests.integration.hsm_fixture import SoftHsmToken
from tests.integration.test_lifecycle import (
    ENCRYPTION,
    SECRETS,
    WallClock,
    client,
    options,
    running,
    secret,
    status,
    value_of,
    wait_for,
)

_SCRIPT = Path(sys.executable).with_name("kinko")
KINKO = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "kinko"]
COUNT = 12
MARKER = "shred-me-4711"
FORCE = "ignoreStoreReadErrorWithClusterBreakingPotential=true"


def _kp(kinko: Kinko) -> dict[str, str]:
    return {"bluemix-instance": kinko.instance}


def _copy_store(data_dir: Path, to: Path) -> Path:
    """The SQLite file and its WAL, copied while kinko is stopped."""
    to.mkdir(exist_ok=True)
    for name in ("kinko.db", "kinko.db-wal", "kinko.db-shm"):
        if (data_dir / name).exists():
            shutil.copy2(data_dir / name, to / name)
    return to / "kinko.db"


def _etcd_decrypt(
    kinko: Kinko, store_copy: Path, name: str, tmp: Path
) -> subprocess.CompletedProcess[str]:
    """``kinko etcd decrypt`` of one Secret's bytes as read from a copy of the store file."""
    key = f"/registry/secrets/default/{name}"
    with SqliteStore(store_copy) as store:
        entry = store.get(key.encode())
    assert entry is not None
    value = tmp / f"{name}.bin"
    value.write_bytes(entry.value)
    return subprocess.run(
        [
            *KINKO,
            "etcd",
            "decrypt",
            "--encryption-config",
            str(kinko.encryption_config),
            "--key",
            key,
            "--in",
            str(value),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _assert_unreadable(kinko: Kinko, http: httpx.Client, count: int) -> None:
    got = http.get(f"{SECRETS}/s01")
    assert got.status_code == 500, got.text
    assert got.json()["reason"] == "StorageReadError"
    listed = http.get(SECRETS)
    assert listed.status_code == 200, listed.text
    assert listed.json()["unreadable"]["count"] == count
    assert MARKER not in listed.text
    report = http.get(ENCRYPTION).json()["resources"]["secrets"]
    assert report["undecryptable"] == count
    assert "default/s01" in report["undecryptableNames"]
    assert report["unavailable"] == 0


def _assert_readable(http: httpx.Client) -> None:
    got = http.get(f"{SECRETS}/s01")
    assert got.status_code == 200, got.text
    assert value_of(got.json()) == f"{MARKER}-1"


@pytest.fixture
def hsm(softhsm: SoftHsmToken) -> Iterator[Pkcs11Hsm]:
    with Pkcs11Hsm(softhsm.module, softhsm.label, softhsm.pin) as opened:
        yield opened


@pytest.mark.hsm
def test_deleted_then_purged_root_key_shreds_its_data(tmp_path: Path, hsm: Pkcs11Hsm) -> None:
    wall = WallClock()
    data_dir = tmp_path / "kinko"
    opts: UpOptions = options(data_dir, hsm=hsm, clock=wall)

    # 1. Secrets under the first start's root key; the cluster registered on it.
    with running(opts) as kinko, client(kinko) as http:
        for i in range(COUNT):
            assert http.post(SECRETS, json=secret(f"s{i:02d}", f"{MARKER}-{i}")).status_code == 201
        wait_for("Ready", lambda: status(http)["phase"] == "Ready")
        root = kinko.root_key
        regs = http.get(f"/api/v2/keys/{root}/registrations", headers=_kp(kinko))
        assert regs.status_code == 200, regs.text
        assert len(regs.json()["resources"]) == 1

        # 2. A plain delete is refused because of the registration; a forced one is not.
        plain = http.delete(f"/api/v2/keys/{root}", headers=_kp(kinko))
        assert plain.status_code == 409, plain.text
        assert "PROTECTED_RESOURCE_ERR" in plain.text
        assert http.get(f"{SECRETS}/s01").status_code == 200
        forced = http.delete(f"/api/v2/keys/{root}?force=true", headers=_kp(kinko))
        assert forced.status_code == 204, forced.text
        meta = http.get(f"/api/v2/keys/{root}/metadata", headers=_kp(kinko))
        assert meta.json()["resources"][0]["state"] == 5

    # 3. Restarted (no cached seed): unreadable by every path, and reported as such.
    store_copy = _copy_store(data_dir, tmp_path / "copy")
    with running(opts) as kinko, client(kinko) as http:
        _assert_unreadable(kinko, http, COUNT)
        assert any("was deleted" in w for w in status(http)["warnings"])
        done = _etcd_decrypt(kinko, store_copy, "s01", tmp_path)
        assert done.returncode != 0, done.stdout
        assert MARKER not in done.stdout
        # A write fails closed, saying why.
        refused = http.post(SECRETS, json=secret("new", "v"))
        assert refused.status_code == 503
        assert "root key kinko-cluster was deleted" in refused.json()["message"]

        # 4. Restored within the window: readable again, without a restart.
        wall.offset += timedelta(minutes=1)
        restored = http.post(f"/api/v2/keys/{root}/restore", headers=_kp(kinko))
        assert restored.status_code == 201, restored.text
        _assert_readable(http)
        copied = _etcd_decrypt(kinko, store_copy, "s01", tmp_path)
        assert copied.returncode == 0, copied.stderr
        assert base64.b64encode(f"{MARKER}-1".encode()).decode() in copied.stdout
        wait_for(
            "writes again", lambda: http.post(SECRETS, json=secret("new", "v")).status_code == 201
        )

        # 5. Deleted again and purged after 4 hours on the key service's clock.
        wall.offset += timedelta(minutes=1)
        again = http.delete(f"/api/v2/keys/{root}?force=true", headers=_kp(kinko))
        assert again.status_code == 204, again.text
        early = http.delete(f"/api/v2/keys/{root}/purge", headers=_kp(kinko))
        assert early.status_code == 409, early.text
        wall.offset += timedelta(hours=4, minutes=1)
        purged = http.delete(f"/api/v2/keys/{root}/purge", headers=_kp(kinko))
        assert purged.status_code == 204, purged.text

    # 6. Restarted after the purge: unreadable for good; kinko made a new root key for new data.
    store_copy = _copy_store(data_dir, tmp_path / "copy-after-purge")
    with running(opts) as kinko, client(kinko) as http:
        assert kinko.root_key != root
        _assert_unreadable(kinko, http, COUNT + 1)
        gone = http.post(f"/api/v2/keys/{root}/restore", headers=_kp(kinko))
        assert gone.status_code == 404, gone.text
        done = _etcd_decrypt(kinko, store_copy, "s01", tmp_path)
        assert done.returncode != 0
        assert MARKER not in done.stdout
        # New data goes under the new root key.
        assert http.post(SECRETS, json=secret("fresh", "v")).status_code == 201
        assert value_of(http.get(f"{SECRETS}/fresh").json()) == "v"
        # An Administrator deletes an unreadable object without reading it.
        deleted = http.delete(f"{SECRETS}/s01?{FORCE}")
        assert deleted.status_code == 200, deleted.text
        listed: dict[str, Any] = http.get(SECRETS).json()
        assert listed["unreadable"]["count"] == COUNT
        assert [i["metadata"]["name"] for i in listed["items"]] == ["fresh"]
        stored = base64.b64encode(MARKER.encode()).decode()
        assert stored not in http.get(SECRETS).text
