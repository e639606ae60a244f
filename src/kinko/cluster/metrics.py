"""Prometheus metrics of the cluster store, named as kube-apiserver names them.

:class:`ClusterMetrics` owns a ``CollectorRegistry`` (never the process-global one, so two
clusters or two tests never share series). It is the
:class:`~kinko.cluster.encryption.EnvelopeObserver` of an
:class:`~kinko.cluster.encryption.EncryptionConfigSource`, so the source's reloads, the byte
layer's seals and opens and the KMS v2 sessions' plugin calls and key_ids are counted where
they happen. Wiring (the REST app and ``kinko up``)::

    metrics = ClusterMetrics()
    source = EncryptionConfigSource(path, ...)
    metrics.instrument(source, store=store)   # observer + scrape-time collectors
    service = ClusterService(store, source, clock=...)
    ...
    metrics.observe_request(verb="LIST", resource="secrets", code=200, seconds=elapsed)
    metrics.observe_unreadable("secrets", len(result.unreadable))  # LIST; 1 for a GET
    body, content_type = metrics.render()                         # GET /metrics

:meth:`ClusterMetrics.instrument` sets itself as the source's observer (the source passes it
on to every KMS v2 session, existing or future; a :class:`~kinko.cluster.service.
ClusterService` over the source picks it up) and registers two collectors: one reads the
config hash and the DEK cache sizes at scrape time, the other (:class:`ObjectCounts`, only
with ``store``) counts stored objects by value prefix, rescanning at most every
``scan_interval`` seconds in a background thread and never decrypting.

Metrics (type; labels; what records it):

- ``apiserver_request_total`` (counter; verb, resource, code) and
  ``apiserver_request_duration_seconds`` (histogram; verb, resource): the REST app, through
  :meth:`ClusterMetrics.observe_request`.
- ``kinko_cluster_unreadable_objects_total`` (counter; resource): the REST app, through
  :meth:`ClusterMetrics.observe_unreadable`, for each LIST or GET that met unreadable values.
- ``apiserver_envelope_encryption_key_id_hash_total`` (counter; key_id_hash, provider_name,
  transformation_type): each write with a KMS v2 provider and each read of a KMS v2 value.
- ``apiserver_envelope_encryption_kms_operations_latency_seconds`` (histogram;
  provider_name, method_name, grpc_status_code): each Status, Encrypt and Decrypt call the
  cluster's sessions make to their plugins.
- ``apiserver_envelope_encryption_invalid_key_id_from_status_total`` (counter;
  provider_name, error): each Status answer whose key_id is invalid.
- ``apiserver_envelope_encryption_dek_source_cache_size`` (gauge; provider_name): seeds and
  DEKs cached by each live KMS v2 session, read at scrape time.
- ``apiserver_storage_transformation_operations_total`` (counter; transformation_type,
  transformer_prefix, status) and ``apiserver_storage_transformation_duration_seconds``
  (histogram; transformation_type, transformer_prefix): each seal and open.
- ``apiserver_encryption_config_controller_automatic_reload_success_total`` and
  ``..._failures_total`` (counters) and ``..._last_timestamp_seconds`` (gauge; status
  ``success`` or ``failure``, wall-clock seconds): each reload that loaded a changed file or
  refused one (an unchanged file is not a reload).
- ``kinko_encryption_config_info`` (gauge; config_hash): 1 for the configuration in force.
- ``apiserver_storage_objects`` (gauge; resource) and ``kinko_cluster_objects`` (gauge;
  resource, provider): stored objects at the last scan, in total and by value prefix.

Label values:

- ``verb`` is upper-cased and one of :data:`VERBS`, else ``OTHER``; ``resource`` is one of
  the resources given to :class:`ClusterMetrics` (or ``""``), else ``other``; ``code`` is
  the HTTP status.
- ``transformation_type`` is ``to_storage`` (a seal; for key_ids, a write with a KMS v2
  provider) or ``from_storage`` (an open). ``key_id_hash`` is ``sha256:<hex>`` of a key_id,
  as kube-apiserver labels it; at most :data:`KEY_ID_SERIES` such series are kept, the least
  recently used dropped first (as upstream does), since stored values name key_ids.
- ``transformer_prefix`` and ``provider`` are value prefixes of the configuration in force
  (``k8s:enc:aescbc:v1:key1:``, ``k8s:enc:kms:v2:plug:``), ``identity`` for an unprefixed
  value, and, for ``provider`` only, ``unknown`` for a ``k8s:enc:`` value no configured
  prefix matches. An open that matches no prefix is not a transformation (as upstream).
- ``status`` (transformations) is ``OK``, ``Unavailable`` (a plugin or store is down) or
  ``Unknown`` (anything else, e.g. a value that does not decrypt), as kube-apiserver's gRPC
  code names; ``grpc_status_code`` (plugin calls) is ``OK`` or the gRPC code kinko's plugin
  error table gives the error (``Unavailable``, ``InvalidArgument``, ...); ``error`` is
  ``empty`` or ``too_long``.
- Durations of failed transformations are not observed (as upstream).

Invariant: label values are fixed sets, resource names, provider names, configured prefixes
or key_id hashes; no label, sample or help text carries key bytes, plaintext, ciphertext,
object names or error messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from kinko.cluster.encryption import IDENTITY_PREFIX, ChainSource, EncryptionConfigSource
from kinko.cluster.service import RESOURCES
from kinko.crypto.formats import ENCRYPTED_PREFIX
from kinko.errors import InvalidArgument, KinkoError, UnavailableError
from kinko.kms.envelope import KmsV2Session
from kinko.kms.server import grpc_status_for
from kinko.store.port import Store

__all__ = [
    "KEY_ID_SERIES",
    "VERBS",
    "ClusterMetrics",
    "ObjectCounts",
]

log = logging.getLogger(__name__)

#: kube-apiserver's request verbs (plus the HTTP methods a REST app may report).
VERBS: Final = frozenset(
    {
        "APPLY",
        "CONNECT",
        "CREATE",
        "DELETE",
        "DELETECOLLECTION",
        "GET",
        "HEAD",
        "LIST",
        "OPTIONS",
        "PATCH",
        "POST",
        "PROXY",
        "PUT",
        "UPDATE",
        "WATCH",
        "WATCHLIST",
    }
)
#: Most ``key_id_hash`` series kept, as kube-apiserver's key_id metric cache.
KEY_ID_SERIES: Final = 100
DEFAULT_SCAN_INTERVAL: Final = 60.0
#: Rows per store page while counting: the scan holds one page of values at a time.
SCAN_PAGE_ROWS: Final = 100

#: kube-apiserver's ``apiserver_request_duration_seconds`` buckets.
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
#: kube-apiserver's KMS latency buckets: 100 µs doubling to about 1.6 s.
KMS_BUCKETS: Final = tuple(0.0001 * 2**i for i in range(15))
#: kube-apiserver's transformation buckets: 5 µs doubling to about 84 s.
TRANSFORM_BUCKETS: Final = tuple(0.000005 * 2**i for i in range(25))

_OTHER_VERB: Final = "OTHER"
_OTHER_RESOURCE: Final = "other"
_UNKNOWN_PREFIX: Final = "unknown"

Spawn = Callable[[Callable[[], None]], None]


def _thread(fn: Callable[[], None]) -> None:
    threading.Thread(target=fn, name="kinko-object-count", daemon=True).start()


def _grpc_code(error: BaseException | None) -> str:
    """kube-apiserver's spelling (Go's ``codes.Code.String``) of the code for ``error``."""
    if error is None:
        return "OK"
    code, _ = grpc_status_for(error)
    return "".join(part.capitalize() for part in code.name.split("_"))


def _transform_status(error: BaseException | None) -> str:
    if error is None:
        return "OK"
    return "Unavailable" if isinstance(error, UnavailableError) else "Unknown"


class ClusterMetrics:
    """The cluster's metrics in a registry of their own (module docstring).

    ``resources`` are the resource label values kept as given (others become ``other``);
    ``wall_clock`` stamps reloads. Thread-safe.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        resources: Iterable[str] = RESOURCES,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._resources = frozenset(resources) | {""}
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._key_id_children: OrderedDict[tuple[str, str, str], Counter] = OrderedDict()
        self._instrumented = False
        #: The object counter :meth:`instrument` registered (None without a store).
        self.objects: ObjectCounts | None = None
        r = self.registry
        self.requests = Counter(
            "apiserver_request",
            "Requests served by the cluster API, by verb, resource and HTTP status code.",
            ("verb", "resource", "code"),
            registry=r,
        )
        self.request_seconds = Histogram(
            "apiserver_request_duration_seconds",
            "Time to serve a cluster API request, by verb and resource.",
            ("verb", "resource"),
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.key_ids = Counter(
            "apiserver_envelope_encryption_key_id_hash",
            "Values written or read with a KMS v2 provider, by the hash of their key_id.",
            ("key_id_hash", "provider_name", "transformation_type"),
            registry=r,
        )
        self.kms_seconds = Histogram(
            "apiserver_envelope_encryption_kms_operations_latency_seconds",
            "Time of the KMS v2 plugin calls the cluster makes, by method and gRPC code.",
            ("provider_name", "method_name", "grpc_status_code"),
            buckets=KMS_BUCKETS,
            registry=r,
        )
        self.invalid_key_ids = Counter(
            "apiserver_envelope_encryption_invalid_key_id_from_status",
            "Status answers of a KMS v2 plugin with an invalid key_id, by provider and error.",
            ("provider_name", "error"),
            registry=r,
        )
        self.transformations = Counter(
            "apiserver_storage_transformation_operations",
            "Seals (to_storage) and opens (from_storage) of stored values, by prefix and status.",
            ("transformation_type", "transformer_prefix", "status"),
            registry=r,
        )
        self.transformation_seconds = Histogram(
            "apiserver_storage_transformation_duration_seconds",
            "Time of successful seals and opens of stored values, by prefix.",
            ("transformation_type", "transformer_prefix"),
            buckets=TRANSFORM_BUCKETS,
            registry=r,
        )
        # The series of every value read or written, looked up once per label set: labels()
        # validates and locks on every call, and a LIST reports each value it opens. Prefixes
        # come from the configuration, so these hold what the registry holds already.
        self._transform_counts: dict[tuple[str, str, str], Counter] = {}
        self._transform_timers: dict[tuple[str, str], Histogram] = {}
        self.reload_success = Counter(
            "apiserver_encryption_config_controller_automatic_reload_success",
            "EncryptionConfiguration reloads that loaded a changed file.",
            registry=r,
        )
        self.reload_failures = Counter(
            "apiserver_encryption_config_controller_automatic_reload_failures",
            "EncryptionConfiguration reloads that refused the file (the old one stays).",
            registry=r,
        )
        self.reload_timestamp = Gauge(
            "apiserver_encryption_config_controller_automatic_reload_last_timestamp_seconds",
            "Wall-clock time of the last EncryptionConfiguration reload, by outcome.",
            ("status",),
            registry=r,
        )
        self.unreadable = Counter(
            "kinko_cluster_unreadable_objects",
            "Stored objects a LIST or GET met that cannot be decrypted, by resource.",
            ("resource",),
            registry=r,
        )

    # -- the REST app ------------------------------------------------------------------

    def _resource(self, resource: str) -> str:
        return resource if resource in self._resources else _OTHER_RESOURCE

    def observe_request(self, *, verb: str, resource: str, code: int, seconds: float) -> None:
        """Records one request of ``verb`` on ``resource`` answered with ``code``."""
        upper = verb.upper()
        verb_label = upper if upper in VERBS else _OTHER_VERB
        res = self._resource(resource)
        code_label = str(code) if 100 <= code <= 599 else "other"
        self.requests.labels(verb_label, res, code_label).inc()
        self.request_seconds.labels(verb_label, res).observe(seconds)

    def observe_unreadable(self, resource: str, count: int) -> None:
        """Records ``count`` unreadable objects met by one LIST or GET of ``resource``."""
        if count > 0:
            self.unreadable.labels(self._resource(resource)).inc(count)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of the registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # -- wiring ------------------------------------------------------------------------

    def instrument(
        self,
        source: EncryptionConfigSource,
        *,
        store: Store | None = None,
        resources: Iterable[str] = RESOURCES,
        scan_interval: float = DEFAULT_SCAN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        spawn: Spawn = _thread,
    ) -> None:
        """Observe ``source`` and, with ``store``, count its objects of ``resources``.

        ``clock`` (monotonic) and ``spawn`` (runs a scan; a daemon thread by default) are
        :class:`ObjectCounts`'. Raises InvalidArgument: already instrumented, or a
        non-positive ``scan_interval``.
        """
        with self._lock:
            if self._instrumented:
                raise InvalidArgument("cluster metrics: already instrumenting a source")
            self._instrumented = True
        counts = None
        if store is not None:
            counts = ObjectCounts(
                store,
                source,
                resources=resources,
                scan_interval=scan_interval,
                clock=clock,
                spawn=spawn,
            )
        source.observer = self
        self.registry.register(_SourceCollector(source))
        if counts is not None:
            self.registry.register(counts)
            self.objects = counts

    # -- EnvelopeObserver --------------------------------------------------------------

    def on_kms_call(
        self, provider: str, method: str, error: BaseException | None, seconds: float
    ) -> None:
        self.kms_seconds.labels(provider, method, _grpc_code(error)).observe(seconds)

    def on_key_id(
        self, provider: str, key_id_hash: str, transformation: str, count: int = 1
    ) -> None:
        labels = (key_id_hash, provider, transformation)
        with self._lock:
            child = self._key_id_children.get(labels)
            if child is None:
                child = self.key_ids.labels(*labels)
                self._key_id_children[labels] = child
                if len(self._key_id_children) > KEY_ID_SERIES:
                    evicted, _ = self._key_id_children.popitem(last=False)
                    self.key_ids.remove(*evicted)
            else:
                self._key_id_children.move_to_end(labels)
            child.inc(count)

    def on_invalid_key_id(self, provider: str, error: str) -> None:
        self.invalid_key_ids.labels(provider, error).inc()

    def on_transform(
        self,
        transformation: str,
        prefix: str,
        error: BaseException | None,
        seconds: float,
        count: int = 1,
    ) -> None:
        labels = (transformation, prefix, _transform_status(error))
        counter = self._transform_counts.get(labels)
        if counter is None:
            counter = self._transform_counts[labels] = self.transformations.labels(*labels)
        counter.inc(count)
        if error is None:
            timed = (transformation, prefix)
            timer = self._transform_timers.get(timed)
            if timer is None:
                timer = self._transform_timers[timed] = self.transformation_seconds.labels(*timed)
            for _ in range(count):
                timer.observe(seconds)

    def on_reload(self, ok: bool) -> None:
        if ok:
            self.reload_success.inc()
        else:
            self.reload_failures.inc()
        self.reload_timestamp.labels("success" if ok else "failure").set(self._wall_clock())


class _SourceCollector:
    """The config hash and the DEK cache sizes of a source, read at scrape time."""

    def __init__(self, source: EncryptionConfigSource) -> None:
        self._source = source

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "kinko_encryption_config_info",
                "The EncryptionConfiguration in force, by its content hash; always 1.",
                labels=("config_hash",),
            ),
            GaugeMetricFamily(
                "apiserver_envelope_encryption_dek_source_cache_size",
                "Seeds and DEKs in the cache of each KMS v2 provider's session.",
                labels=("provider_name",),
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        info, cache = self._families()
        state = self._source.state
        info.add_metric((state.config_hash,), 1)
        for kms in state.chains.config.kms_providers:
            if kms.api_version != "v2":
                continue
            session: KmsV2Session | None = self._source.kms_v2_session(kms.name)
            if session is not None:
                cache.add_metric((kms.name,), session.cache_stats().size)
        yield info
        yield cache


class ObjectCounts:
    """A collector of stored objects per resource and per value prefix (module docstring).

    A scrape returns the last completed scan at once; if that scan is ``scan_interval``
    seconds old (by ``clock``) and none is running, it starts one through ``spawn``. Scans
    read one page of :data:`SCAN_PAGE_ROWS` entries at a time and keep counts only, so memory
    is bounded by a page. A failed scan (store down, snapshot compacted) keeps the previous
    counts and is retried after ``scan_interval``.

    Raises InvalidArgument at construction: a non-positive ``scan_interval``.
    """

    def __init__(
        self,
        store: Store,
        source: ChainSource,
        *,
        resources: Iterable[str] = RESOURCES,
        scan_interval: float = DEFAULT_SCAN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        spawn: Spawn = _thread,
        page_rows: int = SCAN_PAGE_ROWS,
    ) -> None:
        if scan_interval <= 0:
            raise InvalidArgument(f"scan_interval: expected positive seconds, got {scan_interval}")
        self._store = store
        self._source = source
        self._resources = tuple(resources)
        self._interval = scan_interval
        self._clock = clock
        self._spawn = spawn
        self._page_rows = page_rows
        self._lock = threading.Lock()
        self._running = False
        self._started_at: float | None = None
        # Replaced whole by a scan; never mutated after it is published.
        self._counts: Mapping[str, Mapping[str, int]] | None = None

    @property
    def counts(self) -> Mapping[str, Mapping[str, int]] | None:
        """resource → provider label → objects, from the last completed scan (None: none)."""
        return self._counts

    @property
    def running(self) -> bool:
        return self._running

    def refresh(self) -> bool:
        """Scan now, in this thread; True if the scan completed. Raises nothing."""
        try:
            counts = {res: self._scan(res) for res in self._resources}
        except KinkoError as exc:
            log.warning("counting cluster objects failed, keeping the last counts: %s", exc)
            return False
        self._counts = MappingProxyType(counts)
        return True

    def _scan(self, resource: str) -> Mapping[str, int]:
        prefixes = sorted(
            {t.prefix for t in self._source.chain_for(resource).transformers if t.prefix},
            key=len,
            reverse=True,
        )
        key_prefix = f"/registry/{resource}/".encode()
        counts: dict[str, int] = {}
        start, revision = b"", 0
        while True:
            page = self._store.range(
                key_prefix, start_after=start, limit=self._page_rows, revision=revision
            )
            revision = page.revision
            for entry in page.entries:
                label = _provider_label(entry.value, prefixes)
                counts[label] = counts.get(label, 0) + 1
            if not page.more or not page.entries:
                return MappingProxyType(counts)
            start = page.entries[-1].key

    def _maybe_start(self) -> None:
        now = self._clock()
        with self._lock:
            if self._running:
                return
            if self._started_at is not None and now - self._started_at < self._interval:
                return
            # Attempts are rate-limited too, so scrapes never hammer a failing store.
            self._started_at = now
            self._running = True
        try:
            self._spawn(self._run)
        except BaseException:
            with self._lock:
                self._running = False
            raise

    def _run(self) -> None:
        try:
            self.refresh()
        except Exception:
            # A bug must not end the counting silently; the traceback carries no values.
            log.exception("counting cluster objects crashed")
        finally:
            with self._lock:
                self._running = False

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "apiserver_storage_objects",
                "Stored objects per resource, at the last scan.",
                labels=("resource",),
            ),
            GaugeMetricFamily(
                "kinko_cluster_objects",
                "Stored objects per resource and value prefix (provider), at the last scan.",
                labels=("resource", "provider"),
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        self._maybe_start()
        total, per_provider = self._families()
        counts = self._counts
        if counts is not None:
            for resource, by_provider in counts.items():
                total.add_metric((resource,), sum(by_provider.values()))
                for provider, n in sorted(by_provider.items()):
                    per_provider.add_metric((resource, provider), n)
        yield total
        yield per_provider


def _provider_label(value: bytes, prefixes: list[bytes]) -> str:
    for prefix in prefixes:
        if value.startswith(prefix):
            return prefix.decode("utf-8", errors="backslashreplace")
    return _UNKNOWN_PREFIX if value.startswith(ENCRYPTED_PREFIX) else IDENTITY_PREFIX
