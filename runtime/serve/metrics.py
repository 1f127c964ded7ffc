"""Prometheus metrics of one server, in a registry of its own (several apps may live in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServeMetrics:
    """Requests and errors by endpoint and kind, latencies, batch sizes, queue depth, active streams."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("meltok_requests", "Requests (HTTP) and streams (WebSocket) by endpoint",
                                ["endpoint"], registry=self.registry)
        self.errors = Counter("meltok_errors", "Failed requests and streams by endpoint and kind (HTTP status, "
                              "WebSocket close code or error class)", ["endpoint", "kind"], registry=self.registry)
        self.latency = Histogram("meltok_request_seconds", "Time from request to response (streams: per stream)",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.first_audio = Histogram("meltok_stream_first_output_seconds",
                                     "Time from a stream's first input frame to its first output frame",
                                     ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("meltok_batch_size", "Items per graph call", ["graph"], buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.queue_depth = Gauge("meltok_queue_depth", "Graph calls waiting for a batch", ["graph"],
                                 registry=self.registry)
        self.pending = Gauge("meltok_pending_requests", "Offline requests admitted and not yet answered",
                             registry=self.registry)
        self.active_streams = Gauge("meltok_active_streams", "Open WebSocket stream connections",
                                    registry=self.registry)

    def watch_queue(self, graph: str, depth) -> None:
        """Report ``depth()`` (a batcher's waiting calls) as the queue depth of ``graph`` at each scrape."""
        self.queue_depth.labels(graph=graph).set_function(depth)

    def observe_batch(self, graph: str, size: int) -> None:
        self.batch_size.labels(graph=graph).observe(size)

    def text(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
