"""The gRPC shell of a KMS v2 plugin: serve any :class:`~kinko.kms.port.KmsV2Api` on a unix socket.

A transport only: each handler checks the request's shape, calls the api, converts the answer,
and maps failures through :data:`GRPC_CODES`, the one error table of this transport.

Socket rules (the plugin owns its socket, as upstream's plugin helper does):

- The endpoint is parsed as kube-apiserver parses it (``unix:///path`` or ``unix:///@name``).
- An existing file at the path is removed only if it is a socket that nobody answers on
  (a stale socket); a non-socket file, or a socket with a live listener, makes start fail.
- The socket is created with mode 0600: the process umask is set to ``0o177`` for the instant of
  the bind, so there is no window in which the socket is reachable with wider permissions, and
  the mode is then set again explicitly. (The umask is process-wide; a file another thread
  creates in that instant is created *more* restrictive, never less.)
- Abstract sockets have no permissions at all; they are confined by the network namespace.
- On stop the socket file is removed. (gRPC itself unlinks the path when its listener closes;
  kinko then removes it only if it is still the socket this server created.)

Error table (:data:`GRPC_CODES`, most specific class wins):

====================  ======================  ==============================================
kinko error           gRPC code               why
====================  ======================  ==============================================
InvalidArgument       INVALID_ARGUMENT        a malformed request (empty uid, unknown key_id)
DecryptionError       INVALID_ARGUMENT        the given ciphertext, key_id and annotations
                                              cannot be unwrapped; resending them fails again.
                                              FAILED_PRECONDITION is left for a root key in
                                              the wrong state (e.g. suspended), which an
                                              operator can fix. kinko's client maps
                                              INVALID_ARGUMENT on Decrypt back to
                                              DecryptionError.
NotFound              NOT_FOUND               e.g. the root key was purged
WrongState            FAILED_PRECONDITION     the root key's state forbids the call
                                              (suspended, expired): an operator must act
                                              (a deleted key, Gone, lands here through
                                              CallerError)
Conflict              ABORTED
CallerError           FAILED_PRECONDITION
UnavailableError      UNAVAILABLE             the plugin's own backend (HSM, key service) is
                                              down; the API server retries later
anything else         INTERNAL                details are a fixed text; the traceback is logged
====================  ======================  ==============================================

Invariant: status details are kinko error messages (which never carry bytes) or fixed texts;
request and response bytes never appear in details or logs.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType, TracebackType
from typing import TypeVar

import grpc

from kinko import errors
from kinko.errors import InvalidArgument, UnavailableError
from kinko.gen import kms_v2_pb2 as v2pb
from kinko.kms.client import V2_SERVICE, parse_socket_address
from kinko.kms.port import KmsV2Api

log = logging.getLogger(__name__)

#: The transport's one error table (see the module docstring).
GRPC_CODES: Mapping[type[BaseException], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.DecryptionError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.WrongState: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.CallerError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
}
INTERNAL_DETAILS = "internal error in the KMS plugin"
#: Requests to a KMS plugin are small (a seed; a wrapped seed ≤ 1 KiB and ≤ 32 KiB of
#: annotations), so anything much larger is refused before it is parsed.
MAX_RECEIVE_MESSAGE_LENGTH = 256 * 1024
SOCKET_MODE = 0o600
_BIND_UMASK = 0o177

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def grpc_status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and details for ``exc``, by the most specific class in the table."""
    if isinstance(exc, errors.KinkoError):
        for cls in type(exc).__mro__:
            code = GRPC_CODES.get(cls)
            if code is not None:
                return code, str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_DETAILS


def _require(value: object, field: str) -> None:
    if not value:
        raise InvalidArgument(f"{field}: expected a non-empty value, got an empty one")


class _Handlers:
    """The three KMS v2 methods: check shape, call the api, convert."""

    def __init__(self, api: KmsV2Api) -> None:
        self._api = api

    def _run(self, context: grpc.ServicerContext, method: str, fn: Callable[[], _Resp]) -> _Resp:
        try:
            return fn()
        except Exception as exc:
            code, details = grpc_status_for(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("KMS %s failed unexpectedly", method)
            context.abort(code, details)

    def status(
        self, request: v2pb.StatusRequest, context: grpc.ServicerContext
    ) -> v2pb.StatusResponse:
        def call() -> v2pb.StatusResponse:
            r = self._api.status()
            return v2pb.StatusResponse(version=r.version, healthz=r.healthz, key_id=r.key_id)

        return self._run(context, "Status", call)

    def encrypt(
        self, request: v2pb.EncryptRequest, context: grpc.ServicerContext
    ) -> v2pb.EncryptResponse:
        def call() -> v2pb.EncryptResponse:
            _require(request.uid, "uid")
            _require(request.plaintext, "plaintext")
            r = self._api.encrypt(request.plaintext, uid=request.uid)
            return v2pb.EncryptResponse(
                ciphertext=r.ciphertext, key_id=r.key_id, annotations=dict(r.annotations)
            )

        return self._run(context, "Encrypt", call)

    def decrypt(
        self, request: v2pb.DecryptRequest, context: grpc.ServicerContext
    ) -> v2pb.DecryptResponse:
        def call() -> v2pb.DecryptResponse:
            _require(request.uid, "uid")
            _require(request.ciphertext, "ciphertext")
            _require(request.key_id, "key_id")
            plaintext = self._api.decrypt(
                request.ciphertext,
                uid=request.uid,
                key_id=request.key_id,
                annotations=dict(request.annotations),
            )
            return v2pb.DecryptResponse(plaintext=plaintext)

        return self._run(context, "Decrypt", call)

    def generic_handler(self) -> grpc.GenericRpcHandler[object, object]:
        return grpc.method_handlers_generic_handler(
            V2_SERVICE,
            {
                "Status": grpc.unary_unary_rpc_method_handler(
                    self.status,
                    request_deserializer=v2pb.StatusRequest.FromString,
                    response_serializer=v2pb.StatusResponse.SerializeToString,
                ),
                "Encrypt": grpc.unary_unary_rpc_method_handler(
                    self.encrypt,
                    request_deserializer=v2pb.EncryptRequest.FromString,
                    response_serializer=v2pb.EncryptResponse.SerializeToString,
                ),
                "Decrypt": grpc.unary_unary_rpc_method_handler(
                    self.decrypt,
                    request_deserializer=v2pb.DecryptRequest.FromString,
                    response_serializer=v2pb.DecryptResponse.SerializeToString,
                ),
            },
        )


def _remove_stale_socket(path: str) -> None:
    """Remove ``path`` if it is a socket nobody listens on.

    Raises InvalidArgument: ``path`` is not a socket. UnavailableError: something listens on it.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InvalidArgument(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # Stale: the process that made it is gone.
    except OSError as exc:
        raise UnavailableError(
            f"{path}: cannot tell whether the existing socket is in use: {exc.strerror}"
        ) from exc
    else:
        raise UnavailableError(f"{path}: another process is listening on this socket")
    finally:
        probe.close()
    os.unlink(path)


class KmsV2Server:
    """Serves ``api`` as ``v2.KeyManagementService`` on ``endpoint`` (module docstring).

    ``extra_handlers`` are served beside it by the same server (its threads, its socket):
    ``benchmarks/plugin.py`` puts its bare echo method there. kinko itself adds none.

    Raises InvalidArgument at construction: a bad endpoint.
    """

    def __init__(
        self,
        api: KmsV2Api,
        endpoint: str,
        *,
        max_workers: int = 4,
        extra_handlers: Sequence[grpc.GenericRpcHandler[object, object]] = (),
    ) -> None:
        self._address = parse_socket_address(endpoint)
        self._extra_handlers = tuple(extra_handlers)
        self._endpoint = endpoint
        self._handlers = _Handlers(api)
        self._max_workers = max_workers
        self._server: grpc.Server | None = None
        self._socket_id: tuple[int, int] | None = None
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def start(self) -> None:
        """Bind the socket (mode 0600) and start serving.

        Raises InvalidArgument: already started, or a non-socket file is in the way.
        UnavailableError: the socket cannot be bound or another process listens on it.
        """
        with self._lock:
            if self._server is not None:
                raise InvalidArgument(f"KMS plugin server on {self._endpoint}: already started")
            address = self._address
            if not address.abstract:
                _remove_stale_socket(address.name)
            server = grpc.server(
                ThreadPoolExecutor(self._max_workers, thread_name_prefix="kms-rpc"),
                handlers=[self._handlers.generic_handler(), *self._extra_handlers],
                options=[("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_LENGTH)],
            )
            previous_umask = os.umask(_BIND_UMASK)
            try:
                port = server.add_insecure_port(address.grpc_target)
            except RuntimeError as exc:
                raise UnavailableError(f"cannot listen on {self._endpoint}") from exc
            finally:
                os.umask(previous_umask)
            if port == 0:
                raise UnavailableError(f"cannot listen on {self._endpoint}")
            if not address.abstract:
                os.chmod(address.name, SOCKET_MODE)
                st = os.stat(address.name)
                self._socket_id = (st.st_dev, st.st_ino)
            server.start()
            self._server = server
            log.info("KMS plugin listening on %s", self._endpoint)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let running calls finish for ``grace`` seconds, then remove
        the socket file. Idempotent. Raises nothing."""
        with self._lock:
            server = self._server
            if server is None:
                return
            server.stop(grace).wait()
            self._remove_own_socket()

    def _remove_own_socket(self) -> None:
        if self._address.abstract or self._socket_id is None:
            return
        try:
            st = os.lstat(self._address.name)
        except FileNotFoundError:
            return
        # Only our own socket: a newer server may already have bound this path.
        if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._socket_id:
            os.unlink(self._address.name)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout``); True if it stopped."""
        server = self._server
        if server is None:
            return True
        return not server.wait_for_termination(timeout)

    def __enter__(self) -> KmsV2Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(0)


def serve_forever(
    server: KmsV2Server,
    *,
    grace: float = 5.0,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Start ``server``, call ``on_ready``, serve until SIGTERM or SIGINT, then stop it
    gracefully (running calls get ``grace`` seconds) and remove the socket file.

    The handlers are installed before the socket exists, so a signal sent as soon as the
    socket appears is already a clean shutdown. They are restored on return. Must run on the
    main thread.

    Raises InvalidArgument (not on the main thread), and whatever :meth:`KmsV2Server.start`
    raises.
    """
    if threading.current_thread() is not threading.main_thread():
        raise InvalidArgument("serve_forever: expected to run on the main thread")
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        if on_ready is not None:
            on_ready()
        # A bounded wait lets the interpreter run the signal handler promptly.
        while not stopping.wait(1.0):
            pass
    finally:
        server.stop(grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
