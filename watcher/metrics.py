"""Prometheus metrics of the daemon, served by the webhook's ``GET /metrics``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector


class _Snapshot(Collector):
    """Values read when scraped (queue depth, files by state) rather than kept up to date."""

    def __init__(
        self, queue: Callable[[], Mapping[str, int]], files: Callable[[], Mapping[str, int]]
    ) -> None:
        self._queue = queue
        self._files = files

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queue = GaugeMetricFamily(
            "imgwatch_queue_depth", "Work waiting in the daemon, by stage", labels=["stage"]
        )
        for stage, depth in self._queue().items():
            queue.add_metric([stage], depth)
        yield queue
        files = GaugeMetricFamily("imgwatch_files", "Files in the catalog, by state", labels=["state"])
        for state, count in self._files().items():
            files.add_metric([state], count)
        yield files


class DaemonMetrics:
    def __init__(
        self, queue: Callable[[], Mapping[str, int]], files: Callable[[], Mapping[str, int]]
    ) -> None:
        self.registry = CollectorRegistry()
        self.events_received = Counter(
            "imgwatch_events_received", "Events received, by source", ["source"], registry=self.registry
        )
        self.outcomes = Counter(
            "imgwatch_outcomes", "Handled events, by outcome", ["outcome"], registry=self.registry
        )
        self.errors = Counter(
            "imgwatch_errors", "Handler errors that will be retried", registry=self.registry
        )
        self.handling_seconds = Histogram(
            "imgwatch_extraction_seconds",
            "Time to handle one new or changed file (read, decode, model, store)",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.webhook_requests = Counter(
            "imgwatch_webhook_requests",
            "Webhook requests, by method and status",
            ["method", "status"],
            registry=self.registry,
        )
        self.registry.register(_Snapshot(queue, files))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
