"""``kinko cluster …`` end to end: ``kinko up --no-encryption`` as a real process, and the
commands as ``kinko`` processes over real HTTPS, connected through ``--data-dir``.

The cluster starts with plaintext Secrets; ``kinko cluster kms enable --key kinko-cluster``
switches it to KMS v2 on the first start's root key, ``kinko cluster get`` is polled until its
first line reads ``Master Status: Ready (<age>)``, and the coverage report then shows every
Secret under KMS v2 with the current key_id and nothing stale. Refused enables (an unknown key,
another key service) exit with their codes and change nothing.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_up import KINKO, Up, running_up

IN_PROGRESS = "Master Status: Key Protect feature enablement in progress."
READY = re.compile(r"Master Status: Ready \(\d+[smhdy]\)")
KMS_PREFIX = "k8s:enc:kms:v2:kinko:"
SECRETS = {f"db-{i}": f"s3cret-{i}" for i in range(4)}
DEADLINE = 120.0


def kinko(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``kinko ARGS --data-dir DIR`` as a process."""
    return subprocess.run(
        [*KINKO, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with running_up(tmp_path_factory.mktemp("up") / "home", "--no-encryption") as running:
        yield running


def _coverage(data_dir: Path) -> dict[str, dict[str, object]]:
    doc = json.loads(ok(kinko(data_dir, "cluster", "encryption", "status", "-o", "json")))
    resources = doc["resources"]
    assert isinstance(resources, dict)
    return resources


def _first_line(data_dir: Path) -> str:
    return ok(kinko(data_dir, "cluster", "get")).splitlines()[0]


def test_enable_kms_on_a_running_cluster(up: Up) -> None:
    data_dir = up.endpoints.admin_token_file.parent
    for name, value in SECRETS.items():
        ok(kinko(data_dir, "secret", "create", "generic", name, "--from-literal", f"pw={value}"))

    before = _coverage(data_dir)["secrets"]
    assert before["total"] == len(SECRETS)
    assert before["plaintext"] == len(SECRETS)
    assert before["providers"] == {"identity": len(SECRETS)}
    got = kinko(data_dir, "cluster", "get")
    assert READY.fullmatch(ok(got).splitlines()[0])
    assert "Root key: none (KMS is not enabled)" in got.stdout
    assert "stored as plaintext" in got.stderr

    # Refusals exit with their codes and change nothing.
    unknown = kinko(data_dir, "cluster", "kms", "enable", "--key", "no-such-key")
    assert unknown.returncode == 6, unknown.stderr
    assert "no-such-key" in unknown.stderr
    elsewhere = kinko(
        data_dir,
        "cluster",
        "kms",
        "enable",
        "--key",
        "kinko-cluster",
        "--key-service",
        "https://kms.example.com:8443",
    )
    assert elsewhere.returncode == 4, elsewhere.stderr
    assert "in-process" in elsewhere.stderr
    assert _coverage(data_dir)["secrets"]["plaintext"] == len(SECRETS)

    enabled = ok(
        kinko(
            data_dir,
            "cluster",
            "kms",
            "enable",
            "--key",
            "kinko-cluster",
            "--key-service",
            up.endpoints.key_service,
            "--no-wait",
        )
    )
    assert enabled.splitlines()[0].startswith(
        f"KMS v2 provider kinko now writes with root key {up.endpoints.root_key}"
    )

    seen: list[str] = []
    deadline = time.monotonic() + DEADLINE
    while not seen or not READY.fullmatch(seen[-1]):
        assert time.monotonic() < deadline, f"not Ready in time: {seen}"
        seen.append(_first_line(data_dir))
    assert all(line == IN_PROGRESS or READY.fullmatch(line) for line in seen), seen

    after = _coverage(data_dir)
    secrets = after["secrets"]
    assert secrets["total"] == len(SECRETS)
    assert secrets["providers"] == {KMS_PREFIX: len(SECRETS)}
    assert (secrets["plaintext"], secrets["stale"], secrets["undecryptable"]) == (0, 0, 0)
    key_ids = secrets["keyIds"]
    assert isinstance(key_ids, dict)
    assert sum(entry["count"] for entry in key_ids.values()) == len(SECRETS)
    assert all(entry["current"] for entry in key_ids.values())
    assert all(entry["rootKey"] == up.endpoints.root_key for entry in key_ids.values())
    assert after["configmaps"]["stale"] == 0

    # Reads go on, through the plugin now.
    stored = json.loads(ok(kinko(data_dir, "secret", "get", "db-0", "-o", "json")))
    assert base64.b64decode(stored["data"]["pw"]).decode() == SECRETS["db-0"]

    plan = json.loads(ok(kinko(data_dir, "cluster", "migrate", "--dry-run", "-o", "json")))
    assert plan["resources"]["secrets"]["wouldRewrite"] == 0

    again = ok(
        kinko(data_dir, "cluster", "kms", "enable", "--key", "kinko-cluster", "--interval", "0.2")
    )
    assert "already writes with root key" in again
    assert READY.fullmatch(again.splitlines()[-1])
