"""Liveness (`/healthz`), readiness (`/readyz`) and the Prometheus metrics (`/metrics`)."""

import asyncio
import hmac
import ipaddress
from functools import lru_cache

from alembic.script import ScriptDirectory
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import text
from sqlalchemy.engine import Engine

from service import faults
from service.db import alembic_config
from service.errors import FhirError, NotFound
from service.ops import metrics
from service.ops.version import git_revision, version

router = APIRouter(tags=["System"])

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsForbidden(FhirError):
    status_code, issue_code = 403, "forbidden"


@lru_cache
def _heads() -> frozenset[str]:
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def migration_heads() -> set[str]:
    """The revisions the code's migrations end at (alembic's script folder)."""
    return set(_heads())


def database_revisions(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        try:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        except Exception:  # no alembic_version table: never migrated
            return set()
    return {row[0] for row in rows}


@router.get("/healthz", name="healthz", summary="Liveness: is the process up",
            responses={200: {"description": "Up", "content": {"application/json": {"example": {
                "status": "ok", "version": "0.1.0"}}}}})
def healthz(request: Request) -> dict[str, str]:
    """`{"status": "ok", "version": …}` while the process answers, whatever the database does (that is
    `/readyz`): a liveness probe that restarts a process whose database is away would only add restarts to the
    outage."""
    return {"status": "ok", "version": version()}


@router.get("/readyz", name="readyz", summary="Readiness: database reachable and migrated",
            responses={503: {"description": "The database does not answer (`Retry-After`), or its schema is not at "
                              "the code's migration head; drain this replica"}})
async def readyz(request: Request) -> dict[str, object]:
    """`{"status": "ready", "version", "revision", "migration"}` when the database answers within
    TRIAL_FHIR_READY_TIMEOUT_S and its schema is at the code's migration head; 503 with `Retry-After` and an
    OperationOutcome `transient` otherwise, so a load balancer stops sending requests here while the database is
    away or not yet migrated (and sends them again once it is: nothing needs a restart). With a read replica, also
    `"primary": "ok"` and the replica's state (`replica.status` ok, lagging, down or starting, its lag): a replica
    away sends reads to the primary and never makes the service unready."""
    state = request.app.state
    settings, engine, reads = state.settings, state.engine, state.core.reads
    try:  # in a thread of its own: a database that hangs keeps that thread, not a request's
        found = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, database_revisions, engine),
                                       settings.ready_timeout_s)
    except Exception as exc:  # whatever it was (a time-out too), the database did not answer: unready
        raise faults.not_ready(exc) from None
    heads = state.migration_heads
    if found != heads:
        raise faults.ServiceUnavailable(
            f"The database schema is at {', '.join(sorted(found)) or 'no revision'}, not at the code's migration "
            f"head {', '.join(sorted(heads))}: run `trial-fhir migrate` (or wait for the migrating replica).",
            headers={"Retry-After": str(settings.retry_after_s)})
    answer: dict[str, object] = {"status": "ready", "version": version(),
                                 "revision": git_revision(settings.git_revision), "migration": ", ".join(sorted(heads))}
    if reads.replica is not None:
        answer.update(primary="ok", replica=reads.describe())
    return answer


def may_read_metrics(request: Request) -> bool:
    """Who may read /metrics: anyone without access control; with it, a loopback peer (the connection's own
    address, never X-Forwarded-For: a scraper beside the service), or whoever sends TRIAL_FHIR_METRICS_TOKEN."""
    settings = request.app.state.settings
    if settings.auth == "off":
        return True
    peer = request.scope.get("client")
    if peer:
        try:
            if ipaddress.ip_address(peer[0]).is_loopback:
                return True
        except ValueError:
            pass
    sent = request.headers.get("authorization", "")
    token = settings.metrics_token
    return bool(token) and hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())


@router.get("/metrics", name="metrics", summary="Prometheus metrics",
            responses={200: {"description": "Prometheus text exposition format", "content": {METRICS_TYPE: {}}},
                       403: {"description": "Not a loopback peer and no TRIAL_FHIR_METRICS_TOKEN"},
                       404: {"description": "Metrics are off (TRIAL_FHIR_METRICS=false)"}})
def read_metrics(request: Request) -> Response:
    """Request counts and latency histograms by route template and status, writes by resource type, background
    jobs by state, database pool use (README, Observability). With access control on, only loopback peers and
    holders of TRIAL_FHIR_METRICS_TOKEN may read it."""
    state = request.app.state
    if not state.settings.metrics:
        raise NotFound("Metrics are off (TRIAL_FHIR_METRICS=false)")
    if not may_read_metrics(request):
        raise MetricsForbidden("/metrics is readable from this machine (loopback) or with the bearer token "
                               "TRIAL_FHIR_METRICS_TOKEN; set it and give it to the Prometheus scrape config")
    return Response(metrics.exposition(state.engine), media_type=METRICS_TYPE)
