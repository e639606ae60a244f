"""KMS v2 plugin Encrypt/Decrypt rpc/s next to a bare gRPC echo on the same kind of socket.

Two servers on temporary unix sockets in one process run: kinko's plugin
(``KmsV2Server`` over a plugin backend) and a bare gRPC echo service whose one method returns
its request bytes unparsed. The client side is the same grpcio channel setup for both. Rounds
are interleaved (echo, Encrypt, Decrypt, ...) and the best of each kept; the ratio
plugin ÷ echo shows what kinko's plugin adds on top of gRPC itself (target ≥ 0.9).

Backends: ``local`` (a local AES-256 key file) always; later root-key backends are added as
they exist.

Usage: ``python benchmarks/plugin.py [--rounds N] [--seconds S]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc

from kinko.kms.client import GrpcKmsV2Api
from kinko.kms.plugin import LocalKeyPlugin
from kinko.kms.port import KmsV2Api
from kinko.kms.server import KmsV2Server

SEED = os.urandom(32)
ECHO_METHOD = "/kinko.bench.Echo/Echo"


def _identity(data: bytes) -> bytes:
    return data


def echo_server(socket_path: Path) -> grpc.Server:
    """A gRPC server whose only method returns its request bytes."""

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "kinko.bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    return server


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


def measure(api: KmsV2Api, echo: Callable[[], object], rounds: int, seconds: float) -> None:
    wrapped = api.encrypt(SEED, uid="bench")
    cases: dict[str, Callable[[], object]] = {
        "echo": echo,
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
            f"ratio {best[name] / best['echo']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kinko-bench-") as tmp:
        work = Path(tmp)
        echo = echo_server(work / "echo.sock")
        channel = grpc.insecure_channel(
            f"unix:{work / 'echo.sock'}", options=[("grpc.default_authority", "localhost")]
        )
        call = channel.unary_unary(
            ECHO_METHOD, request_serializer=_identity, response_deserializer=_identity
        )
        payload = os.urandom(60)  # about the size of a wrapped seed

        def echo_call() -> object:
            return call(payload, timeout=3.0, wait_for_ready=True)

        backends: dict[str, KmsV2Api] = {"local key file": LocalKeyPlugin(os.urandom(32))}
        try:
            for name, backend in backends.items():
                endpoint = f"unix://{work / 'kms.sock'}"
                server = KmsV2Server(backend, endpoint)
                server.start()
                try:
                    with GrpcKmsV2Api(endpoint) as api:
                        print(f"plugin backend: {name}")
                        measure(api, echo_call, args.rounds, args.seconds)
                finally:
                    server.stop(grace=0)
        finally:
            channel.close()
            echo.stop(0)
    print("ratio = plugin rpc/s / bare gRPC echo rpc/s, same socket kind, same run")
    print("target: >= 0.90")


if __name__ == "__main__":
    main()
