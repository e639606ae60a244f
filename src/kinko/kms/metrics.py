"""Prometheus metrics of a KMS v2 plugin, for any :class:`~kinko.kms.port.KmsV2Api`.

:class:`InstrumentedKmsV2Api` wraps a plugin core (the local-key plugin, the root-key plugin,
anything with the three methods) and records each call in a :class:`KmsMetrics`, which owns
its own ``CollectorRegistry`` (never the process-global one, so two plugins or two tests
never share counters). :func:`serve_metrics` exposes a registry over HTTP.

Metrics:

==========================================  =========  =====================================
name                                        type       labels
==========================================  =========  =====================================
``kinko_kms_operations_total``              counter    method (Status, Encrypt, Decrypt),
                                                       outcome (ok, unhealthy, error)
``kinko_kms_errors_total``                  counter    method, code (the gRPC status code
                                                       name the server answers with)
``kinko_kms_operation_seconds``             histogram  method
``kinko_kms_key_id_info``                   gauge      key_id_hash (``sha256:<hex>`` of the
                                                       key_id Status reports, as
                                                       kube-apiserver labels it); 1 for the
                                                       current one only
``kinko_kms_healthy``                       gauge      (none): 1 if the last Status said
                                                       ``ok``, else 0
==========================================  =========  =====================================

Invariant: label values come from fixed sets (method names, outcomes, gRPC code names) or
are hashes of public key_ids; no label, sample or help text carries key bytes, plaintext,
ciphertext or an error message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kinko.errors import InvalidArgument, UnavailableError
from kinko.kms.envelope import key_id_hash
from kinko.kms.port import EncryptResult, KmsV2Api, StatusResult
from kinko.kms.server import grpc_status_for

METHODS: Final = ("Status", "Encrypt", "Decrypt")
#: From 100 µs (an in-process wrap) to 5 s (past kube-apiserver's 3 s deadline).
BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

_T = TypeVar("_T")


class KmsMetrics:
    """The plugin's metrics in a registry of their own (module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.operations = Counter(
            "kinko_kms_operations",
            "KMS v2 calls served, by method and outcome.",
            ("method", "outcome"),
            registry=self.registry,
        )
        self.errors = Counter(
            "kinko_kms_errors",
            "KMS v2 calls that failed, by method and the gRPC status code answered.",
            ("method", "code"),
            registry=self.registry,
        )
        self.seconds = Histogram(
            "kinko_kms_operation_seconds",
            "Time to serve a KMS v2 call inside the plugin, by method.",
            ("method",),
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.key_id_info = Gauge(
            "kinko_kms_key_id_info",
            "The key_id Status reports, as the hash kube-apiserver uses; 1 for the current one.",
            ("key_id_hash",),
            registry=self.registry,
        )
        self.healthy = Gauge(
            "kinko_kms_healthy",
            "1 if the last Status call answered healthz ok, else 0.",
            registry=self.registry,
        )
        self._current_hash: str | None = None
        # Bound children: a label lookup per call costs more than the observation itself.
        self._ok = {m: self.operations.labels(m, "ok") for m in METHODS}
        self._failed = {m: self.operations.labels(m, "error") for m in METHODS}
        self._timers = {m: self.seconds.labels(m) for m in METHODS}
        self._unhealthy = self.operations.labels("Status", "unhealthy")

    def observe(self, method: str, seconds: float, error: BaseException | None) -> None:
        """Records one call of ``method`` that took ``seconds`` and failed with ``error``."""
        self._timers[method].observe(seconds)
        if error is None:
            self._ok[method].inc()
            return
        self._failed[method].inc()
        code, _ = grpc_status_for(error)
        self.errors.labels(method, code.name).inc()

    def observe_status(self, result: StatusResult | None) -> None:
        """Records what a Status call answered (None: it failed)."""
        if result is None:
            self.healthy.set(0)
            return
        healthy = result.healthz == "ok"
        self.healthy.set(1 if healthy else 0)
        if not healthy:
            self._unhealthy.inc()
        digest = key_id_hash(result.key_id) if result.key_id else None
        if digest != self._current_hash:
            if self._current_hash is not None:
                self.key_id_info.remove(self._current_hash)
            if digest is not None:
                self.key_id_info.labels(digest).set(1)
            self._current_hash = digest


class InstrumentedKmsV2Api:
    """A :class:`~kinko.kms.port.KmsV2Api` that records every call of ``api`` in
    ``metrics`` and otherwise behaves exactly like ``api`` (same answers, same errors)."""

    __slots__ = ("_api", "_metrics")

    def __init__(self, api: KmsV2Api, metrics: KmsMetrics) -> None:
        self._api = api
        self._metrics = metrics

    @property
    def metrics(self) -> KmsMetrics:
        return self._metrics

    def _timed(self, method: str, fn: Callable[[], _T]) -> _T:
        started = time.perf_counter()
        try:
            result = fn()
        except BaseException as exc:
            self._metrics.observe(method, time.perf_counter() - started, exc)
            raise
        self._metrics.observe(method, time.perf_counter() - started, None)
        return result

    def status(self) -> StatusResult:
        """Raises what the wrapped api raises."""
        try:
            result = self._timed("Status", self._api.status)
        except BaseException:
            self._metrics.observe_status(None)
            raise
        self._metrics.observe_status(result)
        return result

    def encrypt(self, plaintext: bytes, *, uid: str) -> EncryptResult:
        """Raises what the wrapped api raises."""
        return self._timed("Encrypt", lambda: self._api.encrypt(plaintext, uid=uid))

    def decrypt(
        self, ciphertext: bytes, *, uid: str, key_id: str, annotations: Mapping[str, bytes]
    ) -> bytes:
        """Raises what the wrapped api raises."""
        return self._timed(
            "Decrypt",
            lambda: self._api.decrypt(ciphertext, uid=uid, key_id=key_id, annotations=annotations),
        )


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6) as a (host, port) pair.

    Raises InvalidArgument: no port, or a port outside 0..65535.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise InvalidArgument(f"expected HOST:PORT such as 127.0.0.1:9464, got {value[:80]!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def serve_metrics(registry: CollectorRegistry, listen: str) -> WSGIServer:
    """Serves ``registry`` at ``http://HOST:PORT/metrics`` on a daemon thread; returns the
    server (``shutdown()`` stops it).

    Raises InvalidArgument (a malformed address), UnavailableError (the port cannot be bound).
    """
    host, port = parse_listen(listen)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UnavailableError(f"cannot serve metrics on {listen}: {exc.strerror}") from exc
    return server
