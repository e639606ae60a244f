"""Key service wrap and unwrap over HTTPS next to a bare echo route of the same stack.

One process runs kinko's REST app (uvicorn, TLS with the generated CA, the body cap and
correlation middleware, FastAPI) with its benchmark-only echo routes; a
keep-alive httpx client calls, one request at a time:

- ``echo``: a JSON body the size of a wrap request, parsed and sent back (no token, no key
  service): what the HTTP stack alone costs, through a sync route (shown as ``vs sync echo``);
- ``echo-a``: the same through an async route, which skips the hop to the thread pool that a
  sync route takes. Both echo routes are FastAPI routes (the body parsed by FastAPI);
- ``echo-p``: the same as a plain Starlette route of the app that reads and parses its JSON
  body itself and runs on the event loop, exactly the kind of route wrap, unwrap and rewrap
  are (ADR 11): the like-for-like baseline of the ratio;
- ``wrap``: ``POST /api/v2/keys/{id}/actions/wrap`` of a 32-byte DEK with two AAD strings
  (token check, key lookup through the key service's key-record cache, which reads the store
  at most once a second here (ADR 13), AES-GCM in the keystore, audit record);
- ``unwrap``: the same ciphertext back.

Rounds are interleaved (echo, wrap, unwrap, …); each line shows ops/s, p50 and p99 of the
round with the best throughput, and the ratio wrap ÷ echo-p (target ≥ 0.8, p99 < 10 ms),
with the ratios to echo-a and the sync echo beside.

Key stores, in separate runs of the same stack:

- ``soft keystore``: ``kinko keys serve``'s defaults: a data folder with the SQLite store,
  the soft keystore and the audit log (fsynced every 50 ms);
- ``soft keystore, audit fsync per record``: the same with ``--audit-sync always``, to show
  what an fsync per action costs;
- ``SoftHSM2``: the same data folder with root keys in a SoftHSM2 token (PKCS#11), when
  ``softhsm2-util`` and the module are installed (a throw-away token in a temporary folder).

Usage: ``python benchmarks/keyservice.py [--rounds N] [--requests N] [--only NAME]``
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from kinko.api.keyprotect import create_keyprotect_app
from kinko.api.server import BackgroundServer, ListenAddress, TlsConfig
from kinko.api.tls import ensure_server_tls
from kinko.hsm.port import Hsm
from kinko.keys.auth import Principal, Role, TokenBook, issue_token
from kinko.keys.deployment import open_deployment
from kinko.keys.service import KeyService
from kinko.store.port import Store

if TYPE_CHECKING:
    from benchmarks._softhsm import softhsm_token
else:  # run as a script: this folder is first on sys.path
    from _softhsm import softhsm_token

INSTANCE = "bench-instance"
ADMIN = Principal("bench-admin", INSTANCE, frozenset({Role.MANAGER, Role.WRITER}))
DEK = base64.b64encode(os.urandom(32)).decode()
AAD = ["kube-system", "secrets"]


@dataclass(frozen=True, slots=True)
class Stats:
    ops_per_second: float
    p50_ms: float
    p99_ms: float


def timed(fn: Callable[[], object], requests: int) -> Stats:
    """Calls ``fn`` ``requests`` times in a row; throughput and latency percentiles."""
    latencies: list[float] = []
    start = time.perf_counter()
    for _ in range(requests):
        t0 = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Stats(requests / elapsed, cuts[49] * 1000, cuts[98] * 1000)


def _token(store: Store) -> str:
    issued = issue_token(
        rng=os.urandom,
        instance=INSTANCE,
        roles=["Reader"],
        now=datetime.now(UTC),
        name="bench-client",
    )
    TokenBook(store).add(issued.record)
    return issued.token


@contextlib.contextmanager
def on_data_dir(work: Path, hsm: Hsm | None = None) -> Iterator[tuple[KeyService, str]]:
    with open_deployment(work / "data", hsm=hsm) as deployment:
        yield deployment.service, _token(deployment.store)


@contextlib.contextmanager
def audit_always(work: Path) -> Iterator[tuple[KeyService, str]]:
    with open_deployment(work / "data-always", audit_sync="always") as deployment:
        yield deployment.service, _token(deployment.store)


@contextlib.contextmanager
def on_softhsm(work: Path) -> Iterator[tuple[KeyService, str] | None]:
    """None when SoftHSM2 is not installed."""
    with softhsm_token(work) as hsm:
        if hsm is None:
            yield None
            return
        with on_data_dir(work, hsm) as running:
            yield running


@contextlib.contextmanager
def backend(name: str, work: Path) -> Iterator[tuple[KeyService, str] | None]:
    if name == "soft keystore":
        with on_data_dir(work) as running:
            yield running
    elif name == "soft keystore, audit fsync per record":
        with audit_always(work) as running:
            yield running
    elif name == "SoftHSM2":
        with on_softhsm(work) as maybe:
            yield maybe
    else:
        raise SystemExit(f"unknown backend {name!r}")


BACKENDS = ("soft keystore", "soft keystore, audit fsync per record", "SoftHSM2")


def measure(service: KeyService, token: str, work: Path, rounds: int, requests: int) -> None:
    tls = ensure_server_tls(work / "tls-home")
    app = create_keyprotect_app(service, echo=True)
    key_id = service.create_key(ADMIN, INSTANCE, name="bench-root").id
    headers = {"authorization": f"Bearer {token}", "bluemix-instance": INSTANCE}
    with (
        BackgroundServer(
            app, ListenAddress("127.0.0.1", 0), tls=TlsConfig(tls.cert, tls.key)
        ) as server,
        httpx.Client(
            base_url=f"https://127.0.0.1:{server.port}",
            verify=ssl.create_default_context(cafile=tls.ca_cert),
            headers=headers,
        ) as http,
    ):
        wrap_body = {"plaintext": DEK, "aad": AAD}
        ciphertext = http.post(f"/api/v2/keys/{key_id}/actions/wrap", json=wrap_body).json()[
            "ciphertext"
        ]
        unwrap_body = {"ciphertext": ciphertext, "aad": AAD}

        def call(path: str, body: Mapping[str, object]) -> Callable[[], object]:
            def once() -> object:
                response = http.post(path, json=body)
                if response.status_code != 200:
                    raise SystemExit(f"{path}: HTTP {response.status_code}")
                return response

            return once

        cases = {
            "echo": call("/api/v2/_echo", wrap_body),
            "echo-a": call("/api/v2/_echo_async", wrap_body),
            "echo-p": call("/api/v2/_echo_plain", wrap_body),
            "wrap": call(f"/api/v2/keys/{key_id}/actions/wrap", wrap_body),
            "unwrap": call(f"/api/v2/keys/{key_id}/actions/unwrap", unwrap_body),
        }
        for fn in cases.values():  # warm up connections, caches and the first-call paths
            for _ in range(50):
                fn()
        best: dict[str, Stats] = {}
        for _ in range(rounds):
            for name, fn in cases.items():
                stats = timed(fn, requests)
                if name not in best or stats.ops_per_second > best[name].ops_per_second:
                    best[name] = stats
    echo = best["echo"]
    echo_async = best["echo-a"]
    echo_plain = best["echo-p"]
    for name in ("echo", "echo-a", "echo-p"):
        stats = best[name]
        print(
            f"  {name:<7} {stats.ops_per_second:>8,.0f} ops/s   p50 {stats.p50_ms:6.2f} ms   "
            f"p99 {stats.p99_ms:6.2f} ms"
        )
    for name in ("wrap", "unwrap"):
        stats = best[name]
        print(
            f"  {name:<7} {stats.ops_per_second:>8,.0f} ops/s   p50 {stats.p50_ms:6.2f} ms   "
            f"p99 {stats.p99_ms:6.2f} ms   "
            f"ratio {stats.ops_per_second / echo_plain.ops_per_second:.2f}"
            f"   (vs echo-a {stats.ops_per_second / echo_async.ops_per_second:.2f}, "
            f"vs sync echo {stats.ops_per_second / echo.ops_per_second:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="per round and case")
    parser.add_argument("--only", choices=BACKENDS, action="append", help="repeatable")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kinko-bench-") as tmp:
        for name in args.only or BACKENDS:
            work = Path(tmp) / name.replace(" ", "-").replace(",", "")
            work.mkdir()
            with backend(name, work) as running:
                if running is None:
                    print(f"key service: {name}: skipped (not installed)")
                    continue
                print(f"key service over HTTPS: {name}")
                measure(*running, work, args.rounds, args.requests)
    print("ratio = key service ops/s / bare plain echo (echo-p) ops/s, same HTTPS stack, same run")
    print(
        "echo-p is the like-for-like baseline: like wrap and unwrap it is a plain Starlette "
        "route that reads and parses its JSON body itself and runs on the event loop; echo-a "
        "and the sync echo are FastAPI routes (body parsed by FastAPI; the sync one also hops "
        "to the thread pool), shown beside"
    )
    print("target: ratio >= 0.80, p99 < 10 ms")


if __name__ == "__main__":
    main()
