"""Prometheus metrics. Labels carry route templates and status codes only:
never ids, names or anything else a patient could be recognised by."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = ["Metrics"]


class _JobCollector(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("salus_jobs", "Jobs in the queue by status", labels=["status"])
        try:
            counts = self._counts()
        except Exception:
            counts = {}
        for status, count in sorted(counts.items()):
            family.add_metric([status], count)
        yield family


class Metrics:
    """One registry per application (no process-global state).

    Under several server processes (``PROMETHEUS_MULTIPROC_DIR`` set by the
    supervisor before the workers start) counters and histograms live in
    files shared by the workers, and :meth:`render` sums them, so a scrape
    answered by any worker shows the whole server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._collectors: list[Collector] = []
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.http_requests = Counter(
            "salus_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "salus_http_request_duration_seconds",
            "HTTP request duration by method and route template",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its duration (label children are reused)."""
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(method, route, str(status)),
                self.http_duration.labels(method, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def watch_jobs(self, counts: Callable[[], dict[str, int]]) -> None:
        collector = _JobCollector(counts)
        self._collectors.append(collector)
        self.registry.register(collector)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (all workers' when shared)."""
        if not self._shared_dir:
            return bytes(generate_latest(self.registry))
        registry = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(registry, path=self._shared_dir)  # type: ignore[no-untyped-call]
        for collector in self._collectors:  # read from the database: the same in every worker
            registry.register(collector)
        return bytes(generate_latest(registry))
