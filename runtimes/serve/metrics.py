"""Prometheus metrics of one server (its own registry, so two apps in one process do not clash)."""

from __future__ import annotations

from ...errors import require
from .batching import Batcher


class Metrics:
    def __init__(self):
        pc = require("prometheus_client", "serve")
        self.pc = pc
        r = self.registry = pc.CollectorRegistry()
        pc.ProcessCollector(registry=r)
        self.requests = pc.Counter(
            "mmdeploy_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.errors = pc.Counter(
            "mmdeploy_errors", "Error responses by route and error code.", ["route", "code"], registry=r
        )
        self.latency = pc.Histogram(
            "mmdeploy_request_latency_seconds",
            "Request latency, headers read to response sent.",
            ["route"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.batch_size = pc.Histogram(
            "mmdeploy_batch_size",
            "Items per inference batch.",
            ["model", "component"],
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.batch_latency = pc.Histogram(
            "mmdeploy_batch_latency_seconds",
            "Time to decode, preprocess and run one batch.",
            ["model", "component"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        )
        self.queue_wait = pc.Histogram(
            "mmdeploy_queue_wait_seconds",
            "Time a request waited in the batch queue.",
            ["model", "component"],
            registry=r,
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )
        self.queue_depth = pc.Gauge(
            "mmdeploy_queue_depth", "Items waiting in a batch queue.", ["model", "component"], registry=r
        )
        self.inflight = pc.Gauge("mmdeploy_inflight_requests", "HTTP requests being handled.", registry=r)
        self.items = pc.Counter("mmdeploy_items", "Items processed by model and kind.", ["model", "kind"], registry=r)
        self.chat_cache = pc.Gauge(
            "mmdeploy_chat_cache_bytes",
            "Bytes of the conversations' KV caches and image features kept for a chat model (--chat-cache-mb).",
            ["model"],
            registry=r,
        )

    def batch_hook(self, model: str, comp: str):
        size, lat, wait = (
            self.batch_size.labels(model, comp),
            self.batch_latency.labels(model, comp),
            self.queue_wait.labels(model, comp),
        )

        def hook(n: int, seconds: float, waits: list[float]) -> None:
            size.observe(n)
            lat.observe(seconds)
            for w in waits:
                wait.observe(w)

        return hook

    def watch_queue(self, model: str, comp: str, batcher: Batcher) -> None:
        self.queue_depth.labels(model, comp).set_function(lambda: batcher.depth)

    def watch_chat_cache(self, model: str, served) -> None:
        self.chat_cache.labels(model).set_function(lambda: served.chat_cache_bytes)
