"""The server's Prometheus metrics (docs/SERVING.md lists them), in a registry of its own.

Labels are bounded by the repository: a request for a model the repository does not hold is counted
with model="" (a name taken from the URL would let any client grow the label set without bound).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

PREFIX = "pyimgano_serve"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)
QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        labels = ("model", "version")
        self.requests = Counter(f"{PREFIX}_requests", "Inference requests answered, by HTTP status.",
                                (*labels, "status"), registry=self.registry)
        self.failures = Counter(f"{PREFIX}_request_failures", "Inference requests that failed, by reason "
                                "(bad_request, unauthorized, not_found, too_large, unavailable, queue_full, timeout, "
                                "model_failure, internal).", (*labels, "reason"), registry=self.registry)
        self.latency = Histogram(f"{PREFIX}_request_duration_seconds", "Latency of successful inference requests, "
                                 "from their arrival to the response.", labels, buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.queue_time = Histogram(f"{PREFIX}_queue_seconds", "Time a request waited for its session batch.",
                                    labels, buckets=QUEUE_BUCKETS, registry=self.registry)
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Images per session batch.", labels,
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_time = Histogram(f"{PREFIX}_batch_seconds", "Time to score one session batch (resizing, the "
                                    "session, map post-processing).", labels, buckets=LATENCY_BUCKETS,
                                    registry=self.registry)
        self.images = Counter(f"{PREFIX}_images", "Images scored.", labels, registry=self.registry)
        self.anomalous = Counter(f"{PREFIX}_anomalous", "Images judged anomalous (score above the bundle's image "
                                 "threshold).", labels, registry=self.registry)
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Requests waiting for a session batch.", labels,
                                 registry=self.registry)
        self.model_ready = Gauge(f"{PREFIX}_model_ready", "1 while a version is served, 0 while it is refused "
                                 "(failed verification); absent once it leaves the repository.", labels,
                                 registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def forget(self, model: str, version: str) -> None:
        """Drops the gauges of a version no longer in the repository (counters and histograms stay)."""
        for gauge in (self.queue_depth, self.model_ready):
            try:
                gauge.remove(model, version)
            except KeyError:  # never set for this version
                continue
