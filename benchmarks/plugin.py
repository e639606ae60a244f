"""KMS v2 plugin Encrypt/Decrypt rpc/s next to a bare gRPC echo on the same kind of socket.

What runs where. By default kinko's plugin (``KmsV2Server`` over a plugin backend) runs in a
child process of its own, on a temporary unix socket, and the client (``GrpcKmsV2Api`` and
the echo callers) runs in this process. In production the plugin is a process of its own
(``kinko kms serve``) and its client, kube-apiserver, another; in one Python process the
client's thread and the server's gRPC threads would share one GIL, so every microsecond of
handler work would also hold up the client, which is not how the plugin is deployed.
``--in-process`` runs the servers and the client in this one process instead, to compare the
two set-ups. Child processes are started by the ``spawn`` method (a fresh interpreter, never
a fork of a process that has initialised gRPC); each one builds its backend itself, says
when it serves, and stops its server and cleans up when told to or when this process goes.

The plugin's server also serves a bare echo method, which returns its request bytes
unparsed (``extra_handlers``): the echo goes through the very server, thread pool, process
and socket kind the plugin's calls do, so the ratio plugin ÷ echo shows what kinko's plugin
adds on top of gRPC itself (target ≥ 0.9). A second echo on a server of its own (``echo on
its own server``; in a child process of its own too unless ``--in-process``) is shown beside,
as the baseline was measured before. That echo runs 5-10 % faster, and not because of the
plugin's server: with only the echo called, an echo on a ``KmsV2Server`` and one on a server
of its own run at the same rate (1.00), while with Encrypt and Decrypt blocks interleaved on
the first server, as here, its echo runs at 0.93 of the other. A process that serves nothing
but echoes keeps its caches warm for them; the plugin's process, like the plugin in
production, does not. The client side is the same grpcio channel setup for
all, and Encrypt and Decrypt are called as the echo is: their request bytes serialized once,
their answers returned as bytes (one answer of each is parsed and checked first). That is
the plugin's own work; its real client, kube-apiserver, is Go, and what a Python client
spends building requests and parsing answers belongs to the client. The same calls through
kinko's own client (``GrpcKmsV2Api``, which kinko's cluster store uses) are shown beside
(``through kinko's client``). The client encrypts one 32-byte seed once, then measures
Encrypt of that seed and Decrypt of that first answer. The cases run in turn in blocks of
50 ms (``--block``), for ``--rounds`` times ``--seconds`` seconds each; a case's ``ratio`` is
the median, over the cycles, of its rate divided by the echo's in the same cycle (a paired
measurement: the load of this shared machine drifts little within one cycle), and the rates
are totals over all blocks.

Backends:

- ``gRPC shell only``: kinko's server and client around a core that answers at once with a
  fixed answer shaped like a root key plugin's (an 83-character key_id, one annotation), no
  cryptography and no key service: what parsing and building the KMS v2 messages costs on
  both sides, i.e. the highest ratio any plugin core can reach here;
- ``local key file``: a local AES-256 key (``kinko kms serve --key-file``);
- the same behind the metrics wrapper (``--metrics-listen``), to show what metrics cost;
- ``root key, soft keystore``: a root key of the key service run in the plugin's process on
  a data folder (SQLite store, soft keystore, audit log: ``kinko kms serve --key …
  --data-dir …``). Every Encrypt and Decrypt checks the root key's state through the key
  service's key-record cache and seals or opens the seed under a local KEK (ADR 15); the
  root key wraps the KEK once (at the set-up's first Encrypt), audited;
- ``root key, SoftHSM2``: the same over a PKCS#11 token, when ``softhsm2-util`` and the
  module are installed (a throw-away token is initialised in a temporary folder).

Both servers run on gRPC thread pools of the same size (``--workers``, default 4: the plugin's).

Usage: ``python benchmarks/plugin.py [--rounds N] [--seconds S] [--block S] [--only NAME]
[--workers N] [--in-process]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from kinko.gen import kms_v2_pb2 as v2pb
from kinko.hsm.port import Hsm
from kinko.keys.auth import Principal, Role
from kinko.keys.deployment import open_deployment
from kinko.keys.service import KeyService
from kinko.kms.client import V2_SERVICE, GrpcKmsV2Api
from kinko.kms.metrics import InstrumentedKmsV2Api, KmsMetrics
from kinko.kms.plugin import LocalKeyPlugin
from kinko.kms.port import EncryptResult, KmsV2Api, StatusResult
from kinko.kms.rootkey import RootKeyPlugin, ServiceRootKeys
from kinko.kms.server import KmsV2Server

if TYPE_CHECKING:
    from benchmarks._child import SKIPPED, child_process, serve
    from benchmarks._softhsm import softhsm_token
else:  # run as a script: this folder is first on sys.path
    from _child import SKIPPED, child_process, serve
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


def calls_in(fn: Callable[[], object], seconds: float) -> tuple[int, float]:
    """Calls ``fn`` for about ``seconds``; the number of calls and the time they took."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n, now - start


class _RawKms:
    """Encrypt and Decrypt on one socket as the echo is called: request bytes serialized
    once, answers returned as bytes without parsing them. This is the plugin's work alone:
    its real client, kube-apiserver, is Go, and what a Python client spends building
    requests and parsing answers is not the plugin's."""

    def __init__(self, socket_path: Path, wrapped: EncryptResult) -> None:
        self._channel = grpc.insecure_channel(
            f"unix:{socket_path}", options=[("grpc.default_authority", "localhost")]
        )
        self._encrypt = self._channel.unary_unary(
            f"/{V2_SERVICE}/Encrypt", request_serializer=_identity, response_deserializer=_identity
        )
        self._decrypt = self._channel.unary_unary(
            f"/{V2_SERVICE}/Decrypt", request_serializer=_identity, response_deserializer=_identity
        )
        self._encrypt_request = v2pb.EncryptRequest(plaintext=SEED, uid="bench").SerializeToString()
        self._decrypt_request = v2pb.DecryptRequest(
            ciphertext=wrapped.ciphertext,
            uid="bench",
            key_id=wrapped.key_id,
            annotations=dict(wrapped.annotations),
        ).SerializeToString()

    def encrypt(self) -> bytes:
        out: bytes = self._encrypt(self._encrypt_request, timeout=3.0, wait_for_ready=True)
        return out

    def decrypt(self) -> bytes:
        out: bytes = self._decrypt(self._decrypt_request, timeout=3.0, wait_for_ready=True)
        return out

    def close(self) -> None:
        self._channel.close()


def measure(
    api: KmsV2Api,
    raw: _RawKms,
    echo: Callable[[], object],
    echo_apart: Callable[[], object],
    rounds: int,
    seconds: float,
    block: float,
) -> None:
    """Runs the cases in short blocks of ``block`` seconds, one block of each case per cycle
    (the order rotating from cycle to cycle), for ``rounds * seconds`` seconds per case.

    A cycle's blocks run within a few hundred milliseconds of each other, so the machine's
    load drifts little between them: the ratio of a case to the echo in the same cycle is a
    paired measurement, and the median of those ratios is what is printed as ``ratio`` (the
    rates are the totals over all blocks). ``Encrypt`` and ``Decrypt`` are called as the echo
    is (:class:`_RawKms`); the same calls through kinko's client (``GrpcKmsV2Api``) are
    shown beside.
    """
    wrapped = api.encrypt(SEED, uid="bench")
    # The bytes-in, bytes-out calls get real answers: one of each, parsed here.
    answer = v2pb.EncryptResponse.FromString(raw.encrypt())
    if not answer.ciphertext or answer.key_id != wrapped.key_id:
        raise SystemExit("the plugin's Encrypt answer does not look like one")
    plaintext = api.decrypt(
        wrapped.ciphertext, uid="bench", key_id=wrapped.key_id, annotations=wrapped.annotations
    )
    if v2pb.DecryptResponse.FromString(raw.decrypt()).plaintext != plaintext:
        raise SystemExit("the plugin's Decrypt answer does not look like one")
    cases: dict[str, Callable[[], object]] = {
        "echo": echo,
        "echo apart": echo_apart,
        "Encrypt": raw.encrypt,
        "Decrypt": raw.decrypt,
        "Encrypt (client)": lambda: api.encrypt(SEED, uid="bench"),
        "Decrypt (client)": lambda: api.decrypt(
            wrapped.ciphertext,
            uid="bench",
            key_id=wrapped.key_id,
            annotations=wrapped.annotations,
        ),
    }
    for fn in cases.values():
        calls_in(fn, block)  # warm every path up
    names = list(cases)
    calls = dict.fromkeys(names, 0)
    spent = dict.fromkeys(names, 0.0)
    measured = [n for n in names if not n.startswith("echo")]
    paired: dict[tuple[str, str], list[float]] = {
        (m, e): [] for m in measured for e in ("echo", "echo apart")
    }
    cycles = max(1, round(rounds * seconds / block))
    for cycle in range(cycles):
        shift = cycle % len(names)
        rate: dict[str, float] = {}
        for name in names[shift:] + names[:shift]:
            n, took = calls_in(cases[name], block)
            calls[name] += n
            spent[name] += took
            rate[name] = n / took
        for (method, base), values in paired.items():
            values.append(rate[method] / rate[base])
    total = {name: calls[name] / spent[name] for name in names}

    def ratio(method: str, base: str = "echo") -> float:
        return statistics.median(paired[(method, base)])

    for method in ("Encrypt", "Decrypt"):
        client = f"{method} (client)"
        print(
            f"  {method:<8} {total[method]:>9,.0f} rpc/s   "
            f"bare echo {total['echo']:>9,.0f} rpc/s   ratio {ratio(method):.2f}   "
            f"(echo on its own server {total['echo apart']:>7,.0f} rpc/s, "
            f"ratio {ratio(method, 'echo apart'):.2f}; {cycles} cycles)"
        )
        print(
            f"  {'':<8} through kinko's client {total[client]:>7,.0f} rpc/s, "
            f"ratio {ratio(client):.2f}"
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
            ciphertext=os.urandom(60),  # nonce, 32-byte seed, tag
            key_id="kinko-rk-" + "0" * 36 + "-v" + "1" * 36,
            annotations={"kek.rootkey.kms.kinko.dev": b"k" * 228},  # a wrapped local KEK
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
    elif name == "root key, SoftHSM2":
        with root_key_on_softhsm(work) as maybe:
            yield maybe
    else:
        raise SystemExit(f"unknown backend {name!r}")


# --------------------------------------------------------------------------- child processes


def serve_plugin(conn: Connection, name: str, work: Path, socket_path: Path, workers: int) -> None:
    """Child process: backend ``name`` built in ``work`` served by ``KmsV2Server`` (with the
    echo beside it) on ``socket_path`` until the parent says stop, then the server stopped
    and the backend's context left (tokens, stores and keys closed)."""

    def start(stack: contextlib.ExitStack) -> object:
        core = stack.enter_context(backend(name, work))
        if core is None:
            return SKIPPED
        server = KmsV2Server(
            core, f"unix://{socket_path}", max_workers=workers, extra_handlers=[ECHO_HANDLER]
        )
        server.start()
        stack.callback(server.stop, grace=0)
        return None

    serve(conn, start)


def serve_echo(conn: Connection, socket_path: Path, workers: int) -> None:
    """Child process: :func:`echo_server` on ``socket_path`` until the parent says stop."""

    def start(stack: contextlib.ExitStack) -> object:
        server = echo_server(socket_path, workers)
        stack.callback(lambda: server.stop(0).wait())
        return None

    serve(conn, start)


BACKENDS = (
    "gRPC shell only",
    "local key file",
    "local key file + metrics",
    "root key, soft keystore",
    "root key, SoftHSM2",
)


def measure_plugin(
    name: str,
    where: str,
    socket_path: Path,
    echo_apart: Callable[[], object],
    args: argparse.Namespace,
) -> None:
    """The client's side: KMS v2 calls and the echo on the plugin's socket, the echo on its
    own server beside, from this process."""
    endpoint = f"unix://{socket_path}"
    same = _EchoCaller(socket_path)
    try:
        with GrpcKmsV2Api(endpoint) as api:
            raw = _RawKms(socket_path, api.encrypt(SEED, uid="bench"))
            try:
                print(f"plugin backend: {name} ({where})")
                measure(api, raw, same.call, echo_apart, args.rounds, args.seconds, args.block)
            finally:
                raw.close()
    finally:
        same.close()


def run_in_child_processes(args: argparse.Namespace, work: Path) -> None:
    """Each plugin server in a child process of its own, the echo on its own server in one
    more for the whole run; the client in this process."""
    with child_process("echo on its own server", serve_echo, work / "echo.sock", args.workers):
        apart = _EchoCaller(work / "echo.sock")
        try:
            for name in args.only or BACKENDS:
                socket_path = work / "kms.sock"
                with child_process(
                    f"plugin backend {name}", serve_plugin, name, work, socket_path, args.workers
                ) as (state, _):
                    if state == "skipped":
                        print(f"plugin backend: {name}: skipped (not installed)")
                        continue
                    measure_plugin(
                        name,
                        "in a child process",
                        socket_path,
                        apart.call,
                        args,
                    )
        finally:
            apart.close()


def run_in_process(args: argparse.Namespace, work: Path) -> None:
    """Servers and client in this one process (``--in-process``)."""
    echo = echo_server(work / "echo.sock", args.workers)
    apart = _EchoCaller(work / "echo.sock")
    try:
        for name in args.only or BACKENDS:
            with backend(name, work) as core:
                if core is None:
                    print(f"plugin backend: {name}: skipped (not installed)")
                    continue
                socket_path = work / "kms.sock"
                server = KmsV2Server(
                    core,
                    f"unix://{socket_path}",
                    max_workers=args.workers,
                    extra_handlers=[ECHO_HANDLER],
                )
                server.start()
                try:
                    measure_plugin(name, "in-process", socket_path, apart.call, args)
                finally:
                    server.stop(grace=0)
    finally:
        apart.close()
        echo.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per case and round")
    parser.add_argument(
        "--block", type=float, default=0.05, help="seconds per block of one case (see measure)"
    )
    parser.add_argument("--only", choices=BACKENDS, action="append", help="repeatable")
    parser.add_argument(
        "--workers", type=int, default=4, help="gRPC threads of both servers (the plugin's default)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the servers in this process, beside the client (one GIL for both)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kinko-bench-") as tmp:
        if args.in_process:
            run_in_process(args, Path(tmp))
        else:
            run_in_child_processes(args, Path(tmp))
    print("ratio = plugin rpc/s / bare gRPC echo rpc/s, same socket kind, same run")
    print("target: >= 0.90")


if __name__ == "__main__":
    main()
