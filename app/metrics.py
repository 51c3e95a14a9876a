"""Prometheus metrics, one registry per app instance (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1.0,
    2.5,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_* (resident memory, CPU seconds, open fds; Linux /proc) and python_info: the
        # default registry has them, this private one needs them registered explicitly
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter(
            "fusionrec_requests_total", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "fusionrec_request_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            "fusionrec_user_vector_cache_total", "user-vector cache lookups", ["result"], registry=r
        )
        self.batch_size = Histogram(
            "fusionrec_encode_batch_size",
            "micro-batch sizes",
            ["stage"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.strategy = Counter(
            "fusionrec_recommendations_total",
            "answers by strategy",
            ["endpoint", "strategy"],
            registry=r,
        )
        self.model = Info("fusionrec_model", "the bundle being served", registry=r)
        self.index_size = Gauge("fusionrec_index_items", "vectors in the live index", registry=r)
        self.catalog_size = Gauge("fusionrec_catalog_items", "items in the catalog", registry=r)
        self.reloads = Counter("fusionrec_reloads_total", "bundle swaps", ["result"], registry=r)
        self.reload_refused = Info(
            "fusionrec_reload_refused",
            "the last bundle a reload refused: version, error class and reason",
            registry=r,
        )
        self.redis_errors = Gauge(
            "fusionrec_redis_breaker_open", "1 while the Redis circuit breaker is open", registry=r
        )
        self.rate_limited = Counter(
            "fusionrec_rate_limited_total", "requests answered 429", registry=r
        )
        self._event_log(r)

    def _event_log(self, r: CollectorRegistry) -> None:
        """The event log's health, set at each scrape from the writer (the alert rule is in
        deploy/README.md)."""
        self.events_spooled = Gauge(
            "fusionrec_events_spooled", "events in the spool, not yet in the database", registry=r
        )
        self.events_spool_bytes = Gauge(
            "fusionrec_events_spool_bytes", "bytes in the event spools", registry=r
        )
        self.events_spool_age = Gauge(
            "fusionrec_events_spool_oldest_age_seconds",
            "age of the oldest spooled event (0: spool empty)",
            registry=r,
        )
        self.events_quarantined = Gauge(
            "fusionrec_events_quarantined",
            "events the database refused for good since start (quarantined with the reason)",
            registry=r,
        )
