"""Prometheus metrics (prometheus-client), served at `/metrics` in the text exposition format.

| metric | type | labels | what |
|---|---|---|---|
| `trial_fhir_http_requests_total` | counter | method, route, status | answered requests (route: the template) |
| `trial_fhir_http_request_duration_seconds` | histogram | method, route, status | time to the last byte |
| `trial_fhir_resources_written_total` | counter | resource_type | resources created, updated or deleted (committed) |
| `trial_fhir_jobs` | gauge | kind, state | background jobs (exports) in the job table, by state |
| `trial_fhir_db_pool_checked_out` | gauge | | database connections in use by requests and workers |
| `trial_fhir_db_pool_connections` | gauge | | database connections open (pooled or in use) |

With several worker processes (`trial-fhir serve --workers N`) prometheus-client's multiprocess mode adds them up:
the environment variable PROMETHEUS_MULTIPROC_DIR names an empty folder every worker writes its values to (`serve`
makes one when TRIAL_FHIR_METRICS_DIR is unset), and `/metrics` of any worker reads them all. It must be set before
the workers start (prometheus-client reads it when imported). The job gauge is read from the database at each
scrape, so it is the same from every worker.
"""

import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

#: seconds; a search answers in ~1–10 ms, an export kick-off or a big transaction in up to seconds
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("trial_fhir_http_requests", "HTTP requests answered, by method, route template and status",
                   ["method", "route", "status"])
LATENCY = Histogram("trial_fhir_http_request_duration_seconds", "Time from a request's arrival to its last byte",
                    ["method", "route", "status"], buckets=BUCKETS)
WRITTEN = Counter("trial_fhir_resources_written", "Resources created, updated or deleted (committed), by type",
                  ["resource_type"])
POOL_CHECKED_OUT = Gauge("trial_fhir_db_pool_checked_out", "Database connections checked out of the pool",
                         multiprocess_mode="livesum")
POOL_CONNECTIONS = Gauge("trial_fhir_db_pool_connections", "Database connections open (pooled or in use)",
                         multiprocess_mode="livesum")

_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and its latency (the label children are kept: `labels()` costs more than the
    increment)."""
    key = (method, route, status)
    children = _children.get(key)
    if children is None:
        labels = (method, route, str(status))
        children = _children.setdefault(key, (REQUESTS.labels(*labels), LATENCY.labels(*labels)))
    children[0].inc()
    children[1].observe(seconds)


def count_written(types: Iterable[str]) -> None:
    """After a commit (service/core/resources.py AFTER_COMMIT): one per version the unit of work wrote."""
    for resource_type in types:
        WRITTEN.labels(resource_type).inc()


def watch_pool(engine: Engine) -> None:
    """Keep the pool gauges from the engine's pool events (checkout/checkin, connect/close)."""
    @event.listens_for(engine, "checkout")
    def _checkout(*_: Any) -> None:
        POOL_CHECKED_OUT.inc()

    @event.listens_for(engine, "checkin")
    def _checkin(*_: Any) -> None:
        POOL_CHECKED_OUT.dec()

    @event.listens_for(engine, "connect")
    def _connect(*_: Any) -> None:
        POOL_CONNECTIONS.inc()

    @event.listens_for(engine, "close")
    def _close(*_: Any) -> None:
        POOL_CONNECTIONS.dec()

    @event.listens_for(engine, "close_detached")
    def _close_detached(*_: Any) -> None:
        POOL_CONNECTIONS.dec()


class JobsCollector(Collector):
    """`trial_fhir_jobs{kind,state}`: the job table counted at each scrape (the same answer from every worker)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("trial_fhir_jobs", "Background jobs (exports) in the job table, by kind and state",
                                   labels=["kind", "state"])
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT kind, state, count(*) FROM job GROUP BY kind, state")).all()
        for kind, state, count in rows:
            family.add_metric([kind, state], count)
        yield family


def exposition(engine: Engine) -> bytes:
    """What `/metrics` answers: this process's metrics (or every worker's, in multiprocess mode) and the job table."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        shared = generate_latest(registry)
    else:
        shared = generate_latest(REGISTRY)
    jobs = CollectorRegistry(auto_describe=False)
    jobs.register(JobsCollector(engine))
    return shared + generate_latest(jobs)
