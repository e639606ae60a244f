"""Key service wrap and unwrap over HTTPS next to a bare echo route of the same stack.

What runs where. By default kinko's REST app (uvicorn, TLS with the generated CA, the body
cap and correlation middleware, FastAPI) with its benchmark-only echo routes runs in a child
process of its own for each key store, and the client, a keep-alive httpx client that calls
one request at a time, runs in this process. In production the key service is a process of
its own (``kinko keys serve``) and its clients (the KMS plugin, IBM's SDK) are other
processes; in one Python process the client and the server would share one GIL, so every
microsecond of server work would also hold up the client, which is not how the key service
is deployed. ``--in-process`` runs the server (on a thread) and the client in this one
process instead, to compare the two set-ups. Child processes are started by the ``spawn``
method (a fresh interpreter); each one builds its key store, creates the key and the client's
token, makes the TLS files, starts the server on a free port and sends back the port, the
key id, the token and the CA file; it stops its server and cleans up when told to or when
this process goes.

The cases, all on the same server:

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
- ``unwrap``: the same ciphertext back (wrapped once by the client before measuring).

After a warm-up of 50 calls per case, the cases run in turn in blocks of 50 ms (``--block``),
one block of each case per cycle with the order rotating from cycle to cycle, for ``--rounds``
times ``--seconds`` seconds per case in all. Each line shows a case's ops/s (all its requests
over all its blocks' time) and the p50 and p99 of all its requests' latencies. The ``ratio``
of wrap and unwrap is the median, over the cycles, of the case's rate divided by echo-p's
rate in the same cycle (a paired measurement: the load of this shared machine drifts little
within one cycle); the ratios to echo-a and to the sync echo beside are computed the same way.
Target: ratio ≥ 0.8, p99 < 10 ms.

Key stores, in separate runs of the same stack:

- ``soft keystore``: ``kinko keys serve``'s defaults: a data folder with the SQLite store,
  the soft keystore and the audit log (fsynced every 50 ms);
- ``soft keystore, audit fsync per record``: the same with ``--audit-sync always``, to show
  what an fsync per action costs;
- ``SoftHSM2``: the same data folder with root keys in a SoftHSM2 token (PKCS#11), when
  ``softhsm2-util`` and the module are installed (a throw-away token in a temporary folder).

Usage: ``python benchmarks/keyservice.py [--rounds N] [--seconds S] [--block S] [--only NAME]
[--in-process]``
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
from multiprocessing.connection import Connection
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
    from benchmarks._child import SKIPPED, child_process, serve
    from benchmarks._softhsm import softhsm_token
else:  # run as a script: this folder is first on sys.path
    from _child import SKIPPED, child_process, serve
    from _softhsm import softhsm_token

INSTANCE = "bench-instance"
ADMIN = Principal("bench-admin", INSTANCE, frozenset({Role.MANAGER, Role.WRITER}))
DEK = base64.b64encode(os.urandom(32)).decode()
AAD = ["kube-system", "secrets"]
#: Calls of each case before measuring (connections, caches, first-call paths).
WARM_UP_CALLS = 50


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


# --------------------------------------------------------------------------- server side


@dataclass(frozen=True, slots=True)
class Target:
    """What the client needs to call a running server."""

    port: int
    key_id: str
    token: str
    ca_file: Path

    def to_message(self) -> tuple[int, str, str, str]:
        """Plain values for the pipe (a class of a spawned ``__main__`` would not unpickle)."""
        return self.port, self.key_id, self.token, str(self.ca_file)

    @classmethod
    def from_message(cls, message: object) -> Target:
        if not isinstance(message, tuple) or len(message) != 4:
            raise RuntimeError(f"unexpected message from the server's process: {message!r}")
        port, key_id, token, ca_file = message
        return cls(int(port), str(key_id), str(token), Path(ca_file))


@contextlib.contextmanager
def serving(name: str, work: Path) -> Iterator[Target | None]:
    """Key store ``name`` built in ``work``, a root key and a reader's token in it, the REST
    app with its echo routes served over HTTPS on a free loopback port (a thread of this
    process) until the context is left. None when the key store is not installed."""
    with backend(name, work) as running:
        if running is None:
            yield None
            return
        service, token = running
        tls = ensure_server_tls(work / "tls-home")
        key_id = service.create_key(ADMIN, INSTANCE, name="bench-root").id
        app = create_keyprotect_app(service, echo=True)
        with BackgroundServer(
            app, ListenAddress("127.0.0.1", 0), tls=TlsConfig(tls.cert, tls.key)
        ) as server:
            yield Target(server.port, key_id, token, tls.ca_cert)


# --------------------------------------------------------------------------- client side


def calls_in(fn: Callable[[], object], seconds: float, latencies: list[float]) -> tuple[int, float]:
    """Calls ``fn`` for about ``seconds``, each call's latency appended to ``latencies``; the
    number of calls and the time they took."""
    n = 0
    start = now = time.perf_counter()
    deadline = start + seconds
    while True:
        t0 = now
        fn()
        n += 1
        now = time.perf_counter()
        latencies.append(now - t0)
        if now >= deadline:
            return n, now - start


def _percentiles_ms(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds (Python 3.11's ``quantiles`` needs two points at least)."""
    points = latencies if len(latencies) > 1 else latencies * 2
    cuts = statistics.quantiles(points, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def measure(target: Target, rounds: int, seconds: float, block: float) -> None:
    """Calls the cases over HTTPS from this process in blocks of ``block`` seconds, one block
    of each case per cycle (the order rotating from cycle to cycle), for ``rounds * seconds``
    seconds per case.

    A cycle's blocks run within a few hundred milliseconds of each other, so the machine's
    load drifts little between them: the ratio of a case to an echo in the same cycle is a
    paired measurement, and the median of those ratios is what is printed (the rates are the
    totals over all blocks, the percentiles over all requests).
    """
    headers = {"authorization": f"Bearer {target.token}", "bluemix-instance": INSTANCE}
    with httpx.Client(
        base_url=f"https://127.0.0.1:{target.port}",
        verify=ssl.create_default_context(cafile=str(target.ca_file)),
        headers=headers,
    ) as http:

        def post(path: str, body: Mapping[str, object]) -> httpx.Response:
            response = http.post(path, json=body)
            if response.status_code != 200:
                raise SystemExit(f"{path}: HTTP {response.status_code}")
            return response

        def call(path: str, body: Mapping[str, object]) -> Callable[[], object]:
            return lambda: post(path, body)

        wrap_path = f"/api/v2/keys/{target.key_id}/actions/wrap"
        wrap_body = {"plaintext": DEK, "aad": AAD}
        ciphertext = post(wrap_path, wrap_body).json()["ciphertext"]
        unwrap_body = {"ciphertext": ciphertext, "aad": AAD}
        cases = {
            "echo": call("/api/v2/_echo", wrap_body),
            "echo-a": call("/api/v2/_echo_async", wrap_body),
            "echo-p": call("/api/v2/_echo_plain", wrap_body),
            "wrap": call(wrap_path, wrap_body),
            "unwrap": call(f"/api/v2/keys/{target.key_id}/actions/unwrap", unwrap_body),
        }
        for fn in cases.values():  # warm up connections, caches and the first-call paths
            for _ in range(WARM_UP_CALLS):
                fn()
        names = list(cases)
        calls = dict.fromkeys(names, 0)
        spent = dict.fromkeys(names, 0.0)
        latencies: dict[str, list[float]] = {name: [] for name in names}
        paired: dict[str, list[float]] = {
            f"{m}/{e}": [] for m in ("wrap", "unwrap") for e in ("echo-p", "echo-a", "echo")
        }
        cycles = max(1, round(rounds * seconds / block))
        for cycle in range(cycles):
            shift = cycle % len(names)
            rate: dict[str, float] = {}
            for name in names[shift:] + names[:shift]:
                n, took = calls_in(cases[name], block, latencies[name])
                calls[name] += n
                spent[name] += took
                rate[name] = n / took
            for key, values in paired.items():
                method, base = key.split("/")
                values.append(rate[method] / rate[base])
    for name in names:
        p50, p99 = _percentiles_ms(latencies[name])
        line = (
            f"  {name:<7} {calls[name] / spent[name]:>8,.0f} ops/s   p50 {p50:6.2f} ms   "
            f"p99 {p99:6.2f} ms"
        )
        if name in ("wrap", "unwrap"):
            line += (
                f"   ratio {statistics.median(paired[f'{name}/echo-p']):.2f}"
                f"   (vs echo-a {statistics.median(paired[f'{name}/echo-a']):.2f}, "
                f"vs sync echo {statistics.median(paired[f'{name}/echo']):.2f}; "
                f"{cycles} cycles)"
            )
        print(line)


# --------------------------------------------------------------------------- child processes


def serve_keyservice(conn: Connection, name: str, work: Path) -> None:
    """Child process: :func:`serving` of key store ``name`` in ``work`` until the parent says
    stop, then the server stopped and the key store's context left (tokens, stores and keys
    closed). Sends "ready" with :meth:`Target.to_message`, "skipped" or "failed" with the
    traceback."""

    def start(stack: contextlib.ExitStack) -> object:
        target = stack.enter_context(serving(name, work))
        return SKIPPED if target is None else target.to_message()

    serve(conn, start)


def _work_dir(tmp: Path, name: str) -> Path:
    work = tmp / name.replace(" ", "-").replace(",", "")
    work.mkdir()
    return work


def run_in_child_processes(args: argparse.Namespace, tmp: Path) -> None:
    """Each key store's server in a child process of its own; the client in this process."""
    for name in args.only or BACKENDS:
        work = _work_dir(tmp, name)
        with child_process(f"key service {name}", serve_keyservice, name, work) as started:
            state, payload = started
            if state == "skipped":
                print(f"key service: {name}: skipped (not installed)")
                continue
            print(f"key service over HTTPS: {name} (in a child process)")
            measure(Target.from_message(payload), args.rounds, args.seconds, args.block)


def run_in_process(args: argparse.Namespace, tmp: Path) -> None:
    """Server and client in this one process (``--in-process``)."""
    for name in args.only or BACKENDS:
        with serving(name, _work_dir(tmp, name)) as target:
            if target is None:
                print(f"key service: {name}: skipped (not installed)")
                continue
            print(f"key service over HTTPS: {name} (in-process)")
            measure(target, args.rounds, args.seconds, args.block)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per case and round")
    parser.add_argument(
        "--block", type=float, default=0.05, help="seconds per block of one case (see measure)"
    )
    parser.add_argument("--only", choices=BACKENDS, action="append", help="repeatable")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the server in this process, beside the client (one GIL for both)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kinko-bench-") as tmp:
        if args.in_process:
            run_in_process(args, Path(tmp))
        else:
            run_in_child_processes(args, Path(tmp))
    print(
        "ratio = median over cycles of key service ops/s / bare plain echo (echo-p) ops/s in "
        "the same cycle, same HTTPS stack, same run"
    )
    print(
        "echo-p is the like-for-like baseline: like wrap and unwrap it is a plain Starlette "
        "route that reads and parses its JSON body itself and runs on the event loop; echo-a "
        "and the sync echo are FastAPI routes (body parsed by FastAPI; the sync one also hops "
        "to the thread pool), shown beside"
    )
    print("target: ratio >= 0.80, p99 < 10 ms")


if __name__ == "__main__":
    main()
