"""gRPC clients of a KMS plugin on a unix socket: KMS v2 (read and write) and KMS v1 (read).

Dialled the way kube-apiserver dials (``.../envelope/kmsv2/grpc_service.go``): one insecure
channel per plugin, ``:authority`` forced to ``localhost``, every call ``wait_for_ready`` with a
per-call deadline (``kms.timeout``, default 3 s) and no retry loop of its own; retrying is the
job of the Status poller and of later reads and writes.

The client is a transport: it converts messages and maps gRPC failures, and validates nothing
a plugin answers (``kinko.kms.envelope.KmsV2Session`` does, as kube-apiserver does).

Error mapping (the client's one table, :func:`_map_rpc_error`):

- ``INVALID_ARGUMENT`` on Decrypt: the plugin refuses to unwrap what it was given, so the value
  is undecryptable as stored → :class:`~kinko.errors.DecryptionError` (opaque, no detail).
- anything else, including ``DEADLINE_EXCEEDED``, ``UNAVAILABLE`` and ``FAILED_PRECONDITION``
  (e.g. a disabled root key) → :class:`~kinko.errors.PluginError` naming the endpoint, the
  method and the status code.

Invariant: no message carries request or response bytes. A plugin's own status details are
quoted only after truncation and only in PluginError messages.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import grpc

from kinko.errors import DecryptionError, InvalidArgument, PluginError
from kinko.gen import kms_v1beta1_pb2 as v1pb
from kinko.gen import kms_v2_pb2 as v2pb
from kinko.kms.port import EncryptResult, StatusResult

#: The gRPC service names; they are part of every method path and must stay upstream's.
V2_SERVICE = "v2.KeyManagementService"
V1_SERVICE = "v1beta1.KeyManagementService"
V1_VERSION = "v1beta1"
DEFAULT_TIMEOUT = 3.0
_DETAIL_MAX = 200

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """Where a plugin listens: a file system path, or a Linux abstract-namespace name."""

    name: str
    abstract: bool

    @property
    def grpc_target(self) -> str:
        """The grpcio target string: ``unix:<path>`` or ``unix-abstract:<name>``."""
        return f"unix-abstract:{self.name}" if self.abstract else f"unix:{self.name}"


def parse_socket_address(endpoint: str) -> SocketAddress:
    """Parse a KMS ``endpoint`` as kube-apiserver does (``k8s.io/kms/pkg/util.ParseEndpoint``).

    ``unix:///var/run/kms.sock`` is the path ``/var/run/kms.sock``; ``unix:///@name`` is the
    abstract socket ``name``.

    Raises InvalidArgument: empty endpoint, a scheme other than ``unix``, no path.
    """
    if not endpoint:
        raise InvalidArgument("remote KMS provider can't use empty string as endpoint")
    url = urllib.parse.urlsplit(endpoint)
    if url.scheme != "unix":
        raise InvalidArgument(
            f'unsupported scheme "{url.scheme}" for KMS provider, only unix is supported'
        )
    path = urllib.parse.unquote(url.path)
    if path.startswith("/@"):
        name = path[2:]
        if not name:
            raise InvalidArgument(f"endpoint {endpoint!r}: expected an abstract socket name")
        return SocketAddress(name, abstract=True)
    if not path:
        raise InvalidArgument(
            f"endpoint {endpoint!r}: expected a socket path, as in unix:///var/run/kms.sock"
        )
    return SocketAddress(path, abstract=False)


def parse_endpoint(endpoint: str) -> str:
    """The grpcio target for a KMS ``endpoint``: ``unix:/path`` or ``unix-abstract:name``.

    Raises InvalidArgument (see :func:`parse_socket_address`).
    """
    return parse_socket_address(endpoint).grpc_target


def _quote_detail(details: str | None) -> str:
    """A plugin's status details, shortened and with control characters escaped."""
    if not details:
        return ""
    text = details if len(details) <= _DETAIL_MAX else details[:_DETAIL_MAX] + "…"
    return f": {text!r}"


def _map_rpc_error(
    exc: grpc.RpcError, *, endpoint: str, method: str, refusal_is_decryption_error: bool
) -> DecryptionError | PluginError:
    """The client's one error table: a failed RPC → a kinko error (see module docstring)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    if code is grpc.StatusCode.INVALID_ARGUMENT and refusal_is_decryption_error:
        return DecryptionError()
    code_name = code.name if code is not None else "UNKNOWN"
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        what = "timed out"
    elif code is grpc.StatusCode.UNAVAILABLE:
        what = "is unavailable"
    else:
        what = "failed"
    return PluginError(
        f"KMS plugin at {endpoint}: {method} {what} ({code_name}){_quote_detail(details)}"
    )


class _Channel:
    """One channel to one plugin, dialled as kube-apiserver dials it."""

    def __init__(self, endpoint: str, *, timeout: float) -> None:
        if timeout <= 0:
            raise InvalidArgument(f"timeout: expected a positive number of seconds, got {timeout}")
        self.endpoint = endpoint
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            parse_endpoint(endpoint), options=[("grpc.default_authority", "localhost")]
        )

    def method(
        self,
        path: str,
        serializer: Callable[[_Req], bytes],
        deserializer: Callable[[bytes], _Resp],
    ) -> grpc.UnaryUnaryMultiCallable[_Req, _Resp]:
        callable_: grpc.UnaryUnaryMultiCallable[_Req, _Resp] = self.channel.unary_unary(
            path, request_serializer=serializer, response_deserializer=deserializer
        )
        return callable_

    def call(
        self,
        rpc: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        *,
        method: str,
        refusal_is_decryption_error: bool = False,
    ) -> _Resp:
        try:
            return rpc(request, timeout=self.timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            mapped = _map_rpc_error(
                exc,
                endpoint=self.endpoint,
                method=method,
                refusal_is_decryption_error=refusal_is_decryption_error,
            )
            if isinstance(mapped, DecryptionError):
                # Opaque on purpose (ADR 0002): nothing of the plugin's answer leaks through.
                raise mapped from None
            raise mapped from exc

    def close(self) -> None:
        self.channel.close()


class GrpcKmsV2Api:
    """:class:`~kinko.kms.port.KmsV2Api` over gRPC: a KMS v2 plugin on a unix socket.

    Thread-safe (a gRPC channel is). Construction does not connect; the first call does, and
    waits for the socket until its deadline.

    Raises InvalidArgument at construction: bad endpoint or timeout.
    """

    def __init__(self, endpoint: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._ch = _Channel(endpoint, timeout=timeout)
        self._status = self._ch.method(
            f"/{V2_SERVICE}/Status",
            v2pb.StatusRequest.SerializeToString,
            v2pb.StatusResponse.FromString,
        )
        self._encrypt = self._ch.method(
            f"/{V2_SERVICE}/Encrypt",
            v2pb.EncryptRequest.SerializeToString,
            v2pb.EncryptResponse.FromString,
        )
        self._decrypt = self._ch.method(
            f"/{V2_SERVICE}/Decrypt",
            v2pb.DecryptRequest.SerializeToString,
            v2pb.DecryptResponse.FromString,
        )

    @property
    def endpoint(self) -> str:
        return self._ch.endpoint

    def status(self) -> StatusResult:
        """Raises PluginError (unreachable, timed out, any error status)."""
        resp = self._ch.call(self._status, v2pb.StatusRequest(), method="Status")
        return StatusResult(version=resp.version, healthz=resp.healthz, key_id=resp.key_id)

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        """Raises PluginError (unreachable, timed out, any error status)."""
        resp = self._ch.call(
            self._encrypt, v2pb.EncryptRequest(plaintext=plaintext, uid=uid), method="Encrypt"
        )
        return EncryptResult(
            ciphertext=resp.ciphertext, key_id=resp.key_id, annotations=dict(resp.annotations)
        )

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        """Raises DecryptionError (the plugin answered INVALID_ARGUMENT), PluginError."""
        request = v2pb.DecryptRequest(
            ciphertext=ciphertext, uid=uid, key_id=key_id, annotations=dict(annotations)
        )
        resp = self._ch.call(
            self._decrypt, request, method="Decrypt", refusal_is_decryption_error=True
        )
        return resp.plaintext

    def close(self) -> None:
        self._ch.close()

    def __enter__(self) -> GrpcKmsV2Api:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class GrpcKmsV1Api:
    """:class:`~kinko.crypto.types.KmsV1Unwrapper` over gRPC: a KMS v1 (v1beta1) plugin.

    As kube-apiserver's v1 client does, it calls ``Version`` once before the first
    ``Decrypt`` and requires the answer ``v1beta1``; every request carries that version.
    kinko only reads KMS v1 values, so ``Encrypt`` is never called.

    Raises InvalidArgument at construction: bad endpoint or timeout.
    """

    def __init__(self, endpoint: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._ch = _Channel(endpoint, timeout=timeout)
        self._version = self._ch.method(
            f"/{V1_SERVICE}/Version",
            v1pb.VersionRequest.SerializeToString,
            v1pb.VersionResponse.FromString,
        )
        self._decrypt = self._ch.method(
            f"/{V1_SERVICE}/Decrypt",
            v1pb.DecryptRequest.SerializeToString,
            v1pb.DecryptResponse.FromString,
        )
        self._lock = threading.Lock()
        self._version_checked = False

    def _check_version(self) -> None:
        with self._lock:
            if self._version_checked:
                return
            resp = self._ch.call(
                self._version, v1pb.VersionRequest(version=V1_VERSION), method="Version"
            )
            if resp.version != V1_VERSION:
                raise PluginError(
                    f"KMS plugin at {self._ch.endpoint}: expected KMS API version "
                    f"{V1_VERSION}, got {resp.version[:64]!r}"
                )
            self._version_checked = True

    def decrypt(self, cipher: bytes) -> bytes:
        """Unwrap one KMS v1 DEK.

        Raises DecryptionError (the plugin answered INVALID_ARGUMENT), PluginError
        (unreachable, timed out, wrong API version, any other error status).
        """
        self._check_version()
        resp = self._ch.call(
            self._decrypt,
            v1pb.DecryptRequest(version=V1_VERSION, cipher=cipher),
            method="Decrypt",
            refusal_is_decryption_error=True,
        )
        return resp.plain

    def close(self) -> None:
        self._ch.close()

    def __enter__(self) -> GrpcKmsV1Api:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
