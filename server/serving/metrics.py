"""Prometheus metrics (prometheus-client), one registry per app so that apps never share counters."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server.serving.priority import PRIORITIES, Priority

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("segswap_queue_depth", "Jobs waiting for a worker.", registry=r)
        self.queue_depth_by_priority = Gauge(
            "segswap_queue_depth_by_priority", "Jobs waiting for a worker, by priority class.", ["priority"], registry=r
        )
        self.in_flight = Gauge("segswap_in_flight", "Jobs a worker is running now.", registry=r)
        self.workers = Gauge("segswap_workers", "Worker threads, one per device.", registry=r)
        self.request_seconds = Histogram(
            "segswap_request_seconds",
            "Time from request arrival to response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "segswap_queue_wait_seconds", "Time a job waited in the queue.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.stage_seconds = Histogram(
            "segswap_stage_seconds",
            "Time by stage: inputs (fetch+decode), engine, encode.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.responses = Counter(
            "segswap_responses", "Responses by route and status code.", ["route", "status"], registry=r
        )
        self.images = Counter("segswap_images", "Images produced, by engine.", ["engine"], registry=r)
        self.worker_idle_seconds = Histogram(
            "segswap_worker_idle_seconds",
            "Worker idle time between a finished job and the next, already queued, one.",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1),
            registry=r,
        )
        self.dropped = Counter("segswap_dropped_jobs", "Queued jobs dropped before running.", registry=r)
        self.model_set_seconds = Histogram(
            "segswap_model_set_job_seconds",
            "Time from a job's queueing to its image, by model set (its queue wait and its engine time).",
            ["model_set"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_set_loads = Counter(
            "segswap_model_set_loads",
            "Model sets loaded while serving, by model set.",
            ["model_set"],
            registry=r,
        )
        self.model_set_unloads = Counter(
            "segswap_model_set_unloads", "Model sets unloaded while serving, by model set.", ["model_set"], registry=r
        )
        r.register(DeviceMemoryCollector())

    def watch_queue(
        self, depth: Callable[[], int], in_flight: Callable[[], int], depth_of: Callable[[Priority], int]
    ) -> None:
        """The totals over every model set (the per-set figures: watch_sets); `depth_of(priority)` by class."""
        self.queue_depth.set_function(depth)
        self.in_flight.set_function(in_flight)
        for priority in PRIORITIES:
            self.queue_depth_by_priority.labels(priority).set_function(partial(depth_of, priority))

    def watch_sets(self, sets: Callable[[], Iterable[tuple[str, int, int, bool]]]) -> None:
        """Queue depth, jobs running and loaded or not, by model set: `sets()` gives (name, depth, running,
        loaded) for each."""
        self.registry.register(ModelSetCollector(sets))


class ModelSetCollector(Collector):
    def __init__(self, sets: Callable[[], Iterable[tuple[str, int, int, bool]]]):
        self.sets = sets

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["model_set"]
        depth = GaugeMetricFamily("segswap_model_set_queue_depth", "Jobs waiting, by model set.", labels=labels)
        running = GaugeMetricFamily("segswap_model_set_in_flight", "Jobs running, by model set.", labels=labels)
        loaded = GaugeMetricFamily(
            "segswap_model_set_loaded", "1 when the model set's workers are warm, by model set.", labels=labels
        )
        for name, waiting, busy, warm in self.sets():
            depth.add_metric([name], float(waiting))
            running.add_metric([name], float(busy))
            loaded.add_metric([name], float(warm))
        yield from (depth, running, loaded)


class DeviceMemoryCollector(Collector):
    """GPU memory allocated by this process, per device; nothing when torch or CUDA is absent."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        torch = sys.modules.get("torch")  # only report if the engine already imported torch
        if torch is None or not torch.cuda.is_available():
            return
        family = GaugeMetricFamily(
            "segswap_device_memory_bytes", "Device memory allocated, by device.", labels=["device"]
        )
        for index in range(torch.cuda.device_count()):
            family.add_metric([f"cuda:{index}"], float(torch.cuda.memory_allocated(index)))
        yield family
