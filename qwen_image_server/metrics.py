"""Prometheus metrics of one server, in their own registry so several apps in one process never clash."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_NAMESPACE = "qwen_image_server"
_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        common: dict[str, Any] = {"namespace": _NAMESPACE, "registry": self.registry}
        self.requests = Counter("requests", "HTTP requests by route template, method, status and API error code",
                                ["route", "method", "status", "code"], **common)
        self.queue_depth = Gauge("queue_depth", "Tasks waiting to run (PENDING)", **common)
        self.tasks_finished = Counter("tasks_finished", "Tasks that ended, by model and final state",
                                      ["model", "state"], **common)
        self.queued_seconds = Histogram("task_queued_seconds", "From submission to a worker claiming the task",
                                        ["model"], buckets=_SECONDS_BUCKETS, **common)
        self.running_seconds = Histogram("task_running_seconds",
                                         "From claim to result stored; a batched task counts its whole batch",
                                         ["model"], buckets=_SECONDS_BUCKETS, **common)
        self.images_generated = Counter("images_generated", "Images generated and stored", ["model"], **common)
        self.batch_size = Histogram("batch_size", "Tasks per pipeline call", buckets=(1, 2, 3, 4, 6, 8, 12, 16),
                                    **common)
        self.steps_per_second = Gauge("steps_per_second", "Denoising steps per second of the latest batch",
                                      ["model"], **common)

    def watch_queue_depth(self, count_pending: Callable[[], int]) -> None:
        """Reads the depth from the store at scrape time, so it is right across restarts and replicas."""
        self.queue_depth.set_function(count_pending)
