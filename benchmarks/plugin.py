"""KMS v2 plugin Encrypt/Decrypt rpc/s next to a bare gRPC echo on the same kind of socket.

kinko's plugin (``KmsV2Server`` over a plugin backend) runs on a temporary unix socket in
this process, and the same server also serves a bare echo method, which returns its request
bytes unparsed (``extra_handlers``): the echo goes through the very server, thread pool and
socket kind the plugin's calls do, so the ratio plugin ÷ echo shows what kinko's plugin adds
on top of gRPC itself (target ≥ 0.9). A second echo on a server of its own is shown beside
(``echo on its own server``), as the baseline was measured before. The client side is the
same grpcio channel setup for all. Rounds are interleaved (echo, echo on its own server,
Encrypt, Decrypt, ...) and the best of each kept.

Backends:

- ``gRPC shell only``: kinko's server and client around a core that answers at once with a
  fixed answer shaped like a root key plugin's (an 83-character key_id, one annotation), no
  cryptography and no key service: what parsing and building the KMS v2 messages costs on
  both sides, i.e. the highest ratio any plugin core can reach here;
- ``local key file``: a local AES-256 key (``kinko kms serve --key-file``);
- the same behind the metrics wrapper (``--metrics-listen``), to show what metrics cost;
- ``root key, soft keystore``: a root key of the key service run in-process on a data folder
  (SQLite store, soft keystore, fsynced audit log: ``kinko kms serve --key … --data-dir …``);
  every Encrypt and Decrypt is a key service wrap or unwrap, audited;
- ``root key, soft keystore, audit in memory``: the same with the audit log kept in memory,
  to show how much of the cost is the audit log's fsync;
- ``root key, SoftHSM2``: the same over a PKCS#11 token, when ``softhsm2-util`` and the
  module are installed (a throw-away token is initialised in a temporary folder).

Both servers run on gRPC thread pools of the same size (``--workers``, default 4: the plugin's).

Usage: ``python benchmarks/plugin.py [--rounds N] [--seconds S] [--only NAME] [--workers N]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from kinko.hsm.port import Hsm
from kinko.keys.audit import MemoryAuditSink
from kinko.keys.auth import Principal, Role
from kinko.keys.deployment import open_deployment
from kinko.keys.service import KeyService
from kinko.kms.client import GrpcKmsV2Api
from kinko.kms.metrics import InstrumentedKmsV2Api, KmsMetrics
from kinko.kms.plugin import LocalKeyPlugin
from kinko.kms.port import EncryptResult, KmsV2Api, StatusResult
from kinko.kms.rootkey import RootKeyPlugin, ServiceRootKeys
from kinko.kms.server import KmsV2Server
from kinko.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from benchmarks._softhsm import softhsm_token
else:  # run as a script: this folder is first on sys.path
    from _softhsm import softhsm_token

SEED = os.urandom(32)
ECHO_METHOD = "/kinko.bench.Echo/Echo"


def _identity(data: bytes) -> bytes:
    return data


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


#: The bare echo: one method that returns its request bytes, unparsed.
ECHO_HANDLER: grpc.GenericRpcHandler[object, object] = grpc.method_handlers_generic_handler(
    "kinko.bench.Echo",
    {
        "Echo": grpc.unary_unary_rpc_method_handler(
            _echo, request_deserializer=_identity, response_serializer=_identity
        )
    },
)


def echo_server(socket_path: Path, workers: int) -> grpc.Server:
    """A gRPC server of its own serving only the echo, on a thread pool of ``workers``
    threads (as the plugin's)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((ECHO_HANDLER,))
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    return server


class _EchoCaller:
    """Calls the echo method on one socket through a channel of its own."""

    def __init__(self, socket_path: Path) -> None:
        self._channel = grpc.insecure_channel(
            f"unix:{socket_path}", options=[("grpc.default_authority", "localhost")]
        )
        self._method = self._channel.unary_unary(
            ECHO_METHOD, request_serializer=_identity, response_deserializer=_identity
        )
        self._payload = os.urandom(60)  # about the size of a wrapped seed

    def call(self) -> object:
        return self._method(self._payload, timeout=3.0, wait_for_ready=True)

    def close(self) -> None:
        self._channel.close()


def calls_per_second(fn: Callable[[], object], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def measure(
    api: KmsV2Api,
    echo: Callable[[], object],
    echo_apart: Callable[[], object],
    rounds: int,
    seconds: float,
) -> None:
    wrapped = api.encrypt(SEED, uid="bench")
    cases: dict[str, Callable[[], object]] = {
        "echo": echo,
        "echo apart": echo_apart,
        "Encrypt": lambda: api.encrypt(SEED, uid="bench"),
        "Decrypt": lambda: api.decrypt(
            wrapped.ciphertext,
            uid="bench",
            key_id=wrapped.key_id,
            annotations=wrapped.annotations,
        ),
    }
    best = dict.fromkeys(cases, 0.0)
    for _ in range(rounds):
        for name, fn in cases.items():
            best[name] = max(best[name], calls_per_second(fn, seconds))
    for name in ("Encrypt", "Decrypt"):
        print(
            f"  {name:<8} {best[name]:>9,.0f} rpc/s   bare echo {best['echo']:>9,.0f} rpc/s   "
            f"ratio {best[name] / best['echo']:.2f}   "
            f"(echo on its own server {best['echo apart']:>7,.0f} rpc/s, "
            f"ratio {best[name] / best['echo apart']:.2f})"
        )


INSTANCE = "bench"
ADMIN = Principal("bench-admin", INSTANCE, frozenset({Role.MANAGER, Role.WRITER}))
READER = Principal("kms-plugin", INSTANCE, frozenset({Role.READER}))


def root_key_plugin(service: KeyService) -> RootKeyPlugin:
    key = service.create_key(ADMIN, INSTANCE, name="bench-root")
    return RootKeyPlugin(ServiceRootKeys(service, READER, INSTANCE), key.id)


@contextlib.contextmanager
def root_key_on_data_dir(work: Path, hsm: Hsm | None = None) -> Iterator[KmsV2Api]:
    with open_deployment(work / "data", hsm=hsm) as deployment:
        yield root_key_plugin(deployment.service)


@contextlib.contextmanager
def root_key_audit_in_memory(work: Path) -> Iterator[KmsV2Api]:
    from kinko.hsm.soft import SoftKeystore

    with SqliteStore(work / "data-memaudit.db") as store:
        service = KeyService(
            store,
            SoftKeystore(work / "keystore-memaudit"),
            audit=MemoryAuditSink(),
            clock=lambda: datetime.now(UTC),
            rng=os.urandom,
        )
        yield root_key_plugin(service)


@contextlib.contextmanager
def root_key_on_softhsm(work: Path) -> Iterator[KmsV2Api | None]:
    """None when SoftHSM2 is not installed."""
    with softhsm_token(work) as hsm:
        if hsm is None:
            yield None
            return
        with root_key_on_data_dir(work, hsm) as api:
            yield api


class FixedAnswers:
    """A plugin core without work: Encrypt and Decrypt return answers made once, shaped like a
    root key plugin's (``gRPC shell only``)."""

    def __init__(self) -> None:
        self._encrypted = EncryptResult(
            ciphertext=os.urandom(120),
            key_id="kinko-rk-" + "0" * 36 + "-v" + "1" * 36,
            annotations={"version.rootkey.kms.kinko.dev": b"1" * 36},
        )

    def status(self) -> StatusResult:
        return StatusResult(version="v2", healthz="ok", key_id=self._encrypted.key_id)

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        return self._encrypted

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        return SEED


@contextlib.contextmanager
def backend(name: str, work: Path) -> Iterator[KmsV2Api | None]:
    if name == "gRPC shell only":
        yield FixedAnswers()
    elif name == "local key file":
        yield LocalKeyPlugin(os.urandom(32))
    elif name == "local key file + metrics":
        yield InstrumentedKmsV2Api(LocalKeyPlugin(os.urandom(32)), KmsMetrics())
    elif name == "root key, soft keystore":
        with root_key_on_data_dir(work) as api:
            yield api
    elif name == "root key, soft keystore, audit in memory":
        with root_key_audit_in_memory(work) as api:
            yield api
    elif name == "root key, SoftHSM2":
        with root_key_on_softhsm(work) as maybe:
            yield maybe
    else:
        raise SystemExit(f"unknown backend {name!r}")


BACKENDS = (
    "gRPC shell only",
    "local key file",
    "local key file + metrics",
    "root key, soft keystore",
    "root key, soft keystore, audit in memory",
    "root key, SoftHSM2",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    parser.add_argument("--only", choices=BACKENDS, action="append", help="repeatable")
    parser.add_argument(
        "--workers", type=int, default=4, help="gRPC threads of both servers (the plugin's default)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kinko-bench-") as tmp:
        work = Path(tmp)
        echo = echo_server(work / "echo.sock", args.workers)
        apart = _EchoCaller(work / "echo.sock")
        try:
            for name in args.only or BACKENDS:
                with backend(name, work) as core:
                    if core is None:
                        print(f"plugin backend: {name}: skipped (not installed)")
                        continue
                    endpoint = f"unix://{work / 'kms.sock'}"
                    server = KmsV2Server(
                        core, endpoint, max_workers=args.workers, extra_handlers=[ECHO_HANDLER]
                    )
                    server.start()
                    same = _EchoCaller(work / "kms.sock")
                    try:
                        with GrpcKmsV2Api(endpoint) as api:
                            print(f"plugin backend: {name}")
                            measure(api, same.call, apart.call, args.rounds, args.seconds)
                    finally:
                        same.close()
                        server.stop(grace=0)
        finally:
            apart.close()
            echo.stop(0)
    print("ratio = plugin rpc/s / bare gRPC echo rpc/s, same socket kind, same run")
    print("target: >= 0.90")


if __name__ == "__main__":
    main()
