"""Two ``kinko keys serve`` processes on one real etcd: concurrent writes lose nothing.

Both processes keep metadata in the same etcd (``--etcd-endpoints``) and root keys in the same
soft keystore folder; requests are spread over both at once. Every update is a guarded
transaction in the key service, so concurrent alias additions and registrations through
either process all land, and a key rotated through one process is used by the other.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from kinko.keys.auth import TokenBook, issue_token
from kinko.store.etcd import EtcdClient
from kinko.store.etcd_store import EtcdStore
from tests.integration.keys_process import serving

pytestmark = pytest.mark.etcd

INST = "etcd-serve-instance"
KEY = "application/vnd.ibm.kms.key+json"


def _tokens(endpoints: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    with EtcdClient(endpoints) as client:
        book = TokenBook(EtcdStore(client))
        for name, roles, service in (
            ("alice", ["Manager", "Writer"], False),
            ("cos", ["Reader"], True),
        ):
            issued = issue_token(
                rng=os.urandom,
                instance=INST,
                roles=roles,
                now=datetime.now(UTC),
                service=service,
                name=name,
            )
            book.add(issued.record)
            out[name] = issued.token
    return out


def _all_at_once(jobs: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    barrier = threading.Barrier(len(jobs))
    results: list[httpx.Response | None] = [None] * len(jobs)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = jobs[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def test_two_processes_on_one_etcd(tmp_path: Path, etcd_endpoints: list[str]) -> None:
    tokens = _tokens(etcd_endpoints)
    data_dir = tmp_path / "shared"
    etcd = ("--etcd-endpoints", ",".join(etcd_endpoints))
    with serving(data_dir, *etcd) as first, serving(data_dir, *etcd) as second:
        assert first.url != second.url
        assert "store: etcd" in first.output
        tls = ssl.create_default_context(cafile=data_dir / "tls" / "ca.crt")

        def client(url: str, who: str) -> httpx.Client:
            return httpx.Client(
                base_url=url,
                verify=tls,
                headers={"authorization": f"Bearer {tokens[who]}", "bluemix-instance": INST},
            )

        with (
            client(first.url, "alice") as a,
            client(second.url, "alice") as b,
            client(first.url, "cos") as cos_a,
            client(second.url, "cos") as cos_b,
        ):
            created = a.post(
                "/api/v2/keys",
                json={
                    "metadata": {"collectionType": KEY, "collectionTotal": 1},
                    "resources": [{"type": KEY, "name": "shared-root"}],
                },
                headers={"prefer": "return=representation"},
            )
            assert created.status_code == 201, created.text
            key_id = created.json()["resources"][0]["id"]

            # Five aliases at once, through both processes: all five land.
            def add_alias(i: int) -> Callable[[], httpx.Response]:
                return lambda: (a if i % 2 else b).post(f"/api/v2/keys/{key_id}/aliases/al-{i}")

            aliases = _all_at_once([add_alias(i) for i in range(5)])
            assert [r.status_code for r in aliases] == [201] * 5
            key = b.get(f"/api/v2/keys/{key_id}").json()["resources"][0]
            assert sorted(key["aliases"]) == [f"al-{i}" for i in range(5)]

            # Twelve registrations at once, through both processes: all twelve land.
            crns = [f"crn:v1:bluemix:public:cos:global:a/acct:inst::bucket:b{i}" for i in range(12)]

            def register(i: int) -> Callable[[], httpx.Response]:
                path = f"/api/v2/keys/{key_id}/registrations/{quote(crns[i], safe='')}"
                return lambda: (cos_a if i % 2 else cos_b).post(path)

            registered = _all_at_once([register(i) for i in range(len(crns))])
            assert [r.status_code for r in registered] == [201] * 12
            listed = a.get(
                f"/api/v2/keys/{key_id}/registrations", params={"totalCount": "true"}
            ).json()
            assert listed["metadata"]["totalCount"] == 12
            assert sorted(r["resourceCrn"] for r in listed["resources"]) == sorted(crns)

            # Wrap through one, rotate through it, unwrap through the other.
            wrapped = a.post(f"/api/v2/keys/{key_id}/actions/wrap", json={}).json()
            assert a.post(f"/api/v2/keys/{key_id}/actions/rotate").status_code == 204
            unwrapped = b.post(
                f"/api/v2/keys/{key_id}/actions/unwrap",
                json={"ciphertext": wrapped["ciphertext"]},
            ).json()
            assert unwrapped["plaintext"] == wrapped["plaintext"]
            assert unwrapped["rewrappedKeyVersion"]["id"] != wrapped["keyVersion"]["id"]
    assert first.process.returncode == 0
    assert second.process.returncode == 0
