"""KMS v2 plugin calls over a real unix socket, next to the same calls in process.

Starts kinko's plugin server (``LocalKeyPlugin`` behind ``KmsV2Server``) on a temporary socket
and prints calls per second of Status, Encrypt (32-byte seed) and Decrypt made through
``GrpcKmsV2Api``, sequentially and from 4 threads on one channel, beside the in-process plugin
core and the ratio. Rounds are interleaved and the best kept; the machine is shared and noisy.

kube-apiserver calls Encrypt once per key_id change and Decrypt once per distinct wrapped seed,
so a few hundred calls per second is already ample; the numbers show the gRPC overhead.

Usage: ``python benchmarks/kms_grpc.py [--rounds N] [--seconds S]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Callable

from kinko.kms.client import GrpcKmsV2Api
from kinko.kms.plugin import ANNOTATION_KEY, LocalKeyPlugin
from kinko.kms.port import KmsV2Api
from kinko.kms.server import KmsV2Server

SEED = os.urandom(32)
ANN = {ANNOTATION_KEY: b"1"}


def calls_per_second(fn: Callable[[], object], seconds: float, threads: int = 1) -> float:
    """Runs ``fn`` from ``threads`` threads until ``seconds`` have passed; returns calls/s."""
    counts = [0] * threads
    stop = threading.Event()

    def loop(i: int) -> None:
        while not stop.is_set():
            fn()
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    stop.wait(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


def operations(api: KmsV2Api) -> dict[str, Callable[[], object]]:
    wrapped = api.encrypt(SEED, uid="bench")
    return {
        "Status": api.status,
        "Encrypt 32 B": lambda: api.encrypt(SEED, uid="bench"),
        "Decrypt 32 B": lambda: api.decrypt(
            wrapped.ciphertext, uid="bench", key_id=wrapped.key_id, annotations=ANN
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()

    plugin = LocalKeyPlugin(os.urandom(32))
    with tempfile.TemporaryDirectory(prefix="kinko-bench-") as tmp:
        endpoint = f"unix://{tmp}/kms.sock"
        server = KmsV2Server(plugin, endpoint)
        server.start()
        try:
            with GrpcKmsV2Api(endpoint) as client:
                local, remote = operations(plugin), operations(client)
                print(
                    f"{'call':<14} {'threads':>7} {'in process/s':>13} {'grpc/s':>9} {'ratio':>7}"
                )
                for name in local:
                    for threads in (1, 4):
                        best_local = best_remote = 0.0
                        for _ in range(args.rounds):
                            best_local = max(
                                best_local, calls_per_second(local[name], args.seconds, threads)
                            )
                            best_remote = max(
                                best_remote, calls_per_second(remote[name], args.seconds, threads)
                            )
                        print(
                            f"{name:<14} {threads:>7} {best_local:>13,.0f} {best_remote:>9,.0f} "
                            f"{best_remote / best_local:>7.3f}"
                        )
        finally:
            server.stop(1)


if __name__ == "__main__":
    main()
