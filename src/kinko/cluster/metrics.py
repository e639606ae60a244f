"""Prometheus metrics of the cluster store, in a registry of their own.

:class:`ClusterMetrics` owns a ``CollectorRegistry`` (never the process-global one, so two
clusters or two tests never share counters). The REST app calls :meth:`observe_request`
once per request and serves :meth:`render` at ``/metrics``.

Invariant: label values come from fixed sets (verbs, status codes) or are resource names;
no label or sample carries key bytes, plaintext, ciphertext, object names or error messages.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

#: From 1 ms to 60 s, kube-apiserver's request buckets trimmed to what a store call takes.
REQUEST_BUCKETS: Final = (
    0.005,
    0.025,
    0.05,
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    1.25,
    1.5,
    2.0,
    3.0,
    4.0,
    5.0,
    6.0,
    8.0,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
)


class ClusterMetrics:
    """The cluster's metrics in a registry of their own (module docstring)."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "apiserver_request",
            "Requests served by the cluster API, by verb, resource and HTTP status code.",
            ("verb", "resource", "code"),
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "apiserver_request_duration_seconds",
            "Time to serve a cluster API request, by verb and resource.",
            ("verb", "resource"),
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )

    def observe_request(self, *, verb: str, resource: str, code: int, seconds: float) -> None:
        """Records one request of ``verb`` on ``resource`` answered with ``code``."""
        self.requests.labels(verb, resource, str(code)).inc()
        self.request_seconds.labels(verb, resource).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of the registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
