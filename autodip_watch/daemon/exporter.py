"""Optional Prometheus endpoint: queue depth, jobs done and failed, seconds per plane.

Off by default. Queue depth and job counts are read from SQLite at scrape time, so
they are right even for jobs another process (``queue retry``) changed; counters and
the per-plane histogram count what this daemon process did since it started.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from .queue import JobQueue

PLANE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


class _QueueCollector:
    """Jobs per state and queue depth, straight from the database."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    def collect(self):
        counts = self.queue.counts()
        depth = GaugeMetricFamily("autodip_queue_depth",
                                  "Jobs waiting to run (queued, or failed and waiting to retry)")
        depth.add_metric([], counts["queued"] + counts["failed"])
        yield depth
        jobs = GaugeMetricFamily("autodip_jobs", "Jobs in the queue database, by state",
                                 labels=["state"])
        for state, count in counts.items():
            jobs.add_metric([state], count)
        yield jobs


class Metrics:
    """The daemon's metrics; a private registry so tests and embedders do not collide."""

    def __init__(self, queue: JobQueue) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_QueueCollector(queue))
        self.jobs_done = Counter("autodip_jobs_done", "Jobs finished by this daemon process",
                                 registry=self.registry)
        self.jobs_failed = Counter("autodip_jobs_failed",
                                   "Failed job attempts in this daemon process (retried or "
                                   "quarantined)", registry=self.registry)
        self.plane_seconds = Histogram("autodip_plane_seconds",
                                       "Seconds to denoise one 2-D plane",
                                       buckets=PLANE_BUCKETS, registry=self.registry)
        self.server = None

    def serve(self, address: str, port: int) -> None:
        self.server, _ = start_http_server(port, addr=address, registry=self.registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
