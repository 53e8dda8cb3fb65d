"""Use cases of the EHR pulls: register, list and remove sources; run a sync (the command line, or the `ehr-sync`
background job); report how the syncs went; and the schedule (TRIAL_FHIR_SYNC_INTERVAL_S) that enqueues one job per
source and interval, whichever replicas look (`schedule`: a job's id is made of the source and the interval, so two
replicas enqueueing at once make one job, and a source with a job queued or running gets no other)."""

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from service.core.interactions import Core
from service.db import read_session, write_session
from service.ehr import repository
from service.ehr.client import Auth, BearerAuth, EhrClient, SmartAuth, UpstreamError, load_private_key
from service.ehr.flows import ExportState, Progress, Sync, SyncBusy, SyncCounts, SyncLost
from service.ehr.models import EhrSourceRecord
from service.jobs.models import JobRecord
from service.jobs.repository import enqueue
from service.jobs.runner import Done, JobContext, JobError, JobKind
from service.settings import Settings
from service.store.models import table_of

log = logging.getLogger("trial_fhir.ehr")
KIND = "ehr-sync"
AUTH_KINDS = ("none", "bearer", "smart")
PULL_MODES = ("auto", "search")
J = table_of(JobRecord)
SOURCE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class SourceInvalid(ValueError):
    """What is wrong with a source as given (said without its secrets)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def add_source(engine: Engine, name: str, base_url: str, *, auth: str = "none", token_url: str | None = None,
               client_id: str | None = None, key_file: str | None = None, bearer: str | None = None,
               scope: str | None = None, group_id: str | None = None, pull_mode: str = "auto") -> EhrSourceRecord:
    """Register an upstream FHIR server. SMART needs the token URL, our client id and our private key file (read
    now, to refuse a bad one; its path is stored, not the key); a bearer needs the token (stored: it is a secret,
    never printed). `pull_mode` auto uses Bulk Data when the upstream offers it (the Group found by itself),
    search never does; `group_id` forces Bulk Data of that Group."""
    problems = []
    if not name or len(name) > 64 or not set(name) <= SOURCE_NAME_CHARS:
        problems.append("NAME: 1-64 letters, digits, '-', '_' or '.'")
    if not base_url.startswith(("http://", "https://")):
        problems.append("--base: an http(s) URL of the FHIR endpoint")
    if auth not in AUTH_KINDS:
        problems.append(f"--auth: one of {', '.join(AUTH_KINDS)}")
    if auth == "smart":
        if not token_url or not token_url.startswith(("http://", "https://")):
            problems.append("--token-url: the upstream's token endpoint (SMART Backend Services)")
        if not client_id:
            problems.append("--client-id: the client id the upstream registered for us")
        if not key_file:
            problems.append("--key: the file of our private key (JWK or PEM) the assertions are signed with")
        else:
            try:
                load_private_key(key_file)
            except (OSError, ValueError) as exc:
                problems.append(f"--key: cannot use {key_file} ({type(exc).__name__})")
    if pull_mode not in PULL_MODES:
        problems.append(f"--mode: one of {', '.join(PULL_MODES)}")
    elif pull_mode == "search" and group_id:
        problems.append("--group forces Bulk Data: not with --mode search (or --no-bulk)")
    if auth == "bearer" and not bearer:
        problems.append("--bearer: the token (auth bearer)")
    if auth != "bearer" and bearer:
        problems.append("--bearer is for --auth bearer")
    if problems:
        raise SourceInvalid("; ".join(problems))
    record = EhrSourceRecord(name=name, base_url=base_url.rstrip("/"), auth=auth, token_url=token_url,
                             client_id=client_id, key_file=os.path.abspath(key_file) if key_file else None,
                             bearer=bearer, scope=scope, group_id=group_id, pull_mode=pull_mode,
                             created_at=utcnow())
    with write_session(engine) as session:
        if repository.get_source(session, name) is not None:
            raise SourceInvalid(f"a source named '{name}' exists; remove it first")
        repository.add_source(session, record)
        session.commit()
    return record


def remove_source(engine: Engine, name: str) -> bool:
    with write_session(engine) as session:
        done = repository.delete_source(session, name)
        session.commit()
    return done


def mode_of(source: EhrSourceRecord) -> str:
    """bulk (a configured Group), search (opted out of Bulk Data) or auto (Bulk Data when offered and a Group holds
    the patients: the Group the last sync found is `discovered_group`)."""
    return "bulk" if source.group_id else "search" if source.pull_mode == "search" else "auto"


def export_of(source: EhrSourceRecord) -> dict[str, Any] | None:
    """The Bulk Data export under way (an interrupted sync's, which the next one resumes), as status shows it."""
    state = ExportState.from_json(source.export_state)
    if state is None:
        return None
    return {"group": state.group, "status_url": state.status_url, "since": state.since, "files_done": len(state.done)}


def describe(source: EhrSourceRecord) -> dict[str, Any]:
    """A source as `sources list` shows it: never its bearer token (only whether there is one)."""
    return {"name": source.name, "base_url": source.base_url, "auth": source.auth, "token_url": source.token_url,
            "client_id": source.client_id, "key_file": source.key_file, "bearer": "***" if source.bearer else None,
            "scope": source.scope, "group": source.group_id, "discovered_group": source.discovered_group,
            "mode": mode_of(source)}


def list_sources(engine: Engine) -> list[dict[str, Any]]:
    with read_session(engine) as session:
        return [describe(s) for s in repository.find_sources(session)]


def status(engine: Engine, name: str | None = None, *, issues: int = 20) -> list[dict[str, Any]]:
    """How each source's last sync went: when, its state, counts, error, the Bulk Data `_since` it will use, and
    the latest resources the core refused, with their OperationOutcomes."""
    with read_session(engine) as session:
        sources = [s for s in repository.find_sources(session) if name is None or s.name == name]
        if name is not None and not sources:
            raise SourceInvalid(f"no source named '{name}'")
        report = []
        for s in sources:
            total, latest = repository.issues(session, s.name, issues)
            report.append({"name": s.name, "status": s.last_status or "never run",
                           "started": s.last_started.isoformat() if s.last_started else None,
                           "finished": s.last_finished.isoformat() if s.last_finished else None,
                           "counts": orjson.loads(s.last_counts) if s.last_counts else None,
                           "error": s.last_error, "since": s.transaction_time, "mode": mode_of(s),
                           "group": s.group_id or s.discovered_group, "export": export_of(s), "issues": total,
                           "latest_issues": [{"resource": i.resource, "at": i.at.isoformat(),
                                              "outcome": orjson.loads(i.outcome)} for i in latest]})
    return report


# -- running a sync -------------------------------------------------------------------------------------------

def auth_for(source: EhrSourceRecord, http: httpx.AsyncClient) -> Auth:
    if source.auth == "bearer" and source.bearer:
        return BearerAuth(source.bearer)
    if source.auth == "smart":
        assert source.token_url and source.client_id and source.key_file, "add_source checked them"
        return SmartAuth(http, source.token_url, source.client_id, load_private_key(source.key_file),
                         scope=source.scope)
    return Auth()


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def sync_source(core: Core, settings: Settings, name: str, *, progress: Progress | None = None,
                      heartbeat: Callable[[], None] | None = None,
                      transport: httpx.AsyncBaseTransport | None = None) -> SyncCounts:
    """Pull one source through `core` (a client made from its settings: timeouts, retries, its auth)."""
    def load() -> EhrSourceRecord | None:
        with read_session(core.engine) as session:
            return repository.get_source(session, name)
    source = await asyncio.to_thread(load)
    if source is None:
        raise SourceInvalid(f"no source named '{name}'")
    async with httpx.AsyncClient(timeout=httpx.Timeout(settings.ehr_timeout_s), transport=transport,
                                 headers={"User-Agent": "trial-fhir-sync"}) as http:
        auth = auth_for(source, http)
        try:
            client = EhrClient(http, source.base_url, auth, attempts=settings.ehr_retry_attempts,
                               wait_cap_s=settings.ehr_wait_cap_s, export_max_s=settings.ehr_export_max_s)
            sync = Sync(core, source, client, holder=holder_name(), lease_s=settings.job_lease_s,
                        page_size=settings.ehr_page_size, progress=progress, heartbeat=heartbeat,
                        base_url=settings.base_url or "http://localhost/fhir")
            return await sync.run()
        finally:
            await auth.aclose()


def run_sync(engine: Engine, settings: Settings, name: str, *, progress: Progress | None = None,
             heartbeat: Callable[[], None] | None = None) -> SyncCounts:
    """A sync from synchronous code (the command line, the job runner's thread): its own event loop and core."""
    async def go() -> SyncCounts:
        core = Core(engine, settings)
        try:
            return await sync_source(core, settings, name, progress=progress, heartbeat=heartbeat)
        finally:
            await core.stop()
    return asyncio.run(go())


def source_names(engine: Engine) -> list[str]:
    with read_session(engine) as session:
        return [s.name for s in repository.find_sources(session)]


# -- the background job and its schedule ------------------------------------------------------------------------

def job_id(name: str, slot: int) -> str:
    """The one job of source `name` for schedule slot `slot`: the same on every replica."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"trial-fhir:{KIND}:{name}:{slot}"))


def schedule(engine: Engine, interval_s: float, now: datetime | None = None) -> list[str]:
    """Enqueue a sync job for each source whose last sync started at least `interval_s` ago (or never) and that
    has no sync job queued or running; the ids enqueued. Safe on every replica at once."""
    if interval_s <= 0:
        return []
    now = now or utcnow()
    slot = int(now.timestamp() // interval_s)
    made = []
    with read_session(engine) as session:
        sources = repository.find_sources(session)
        pending = {orjson.loads(p).get("source") for p in session.execute(
            select(J.c.payload).where(J.c.kind == KIND, J.c.state.in_(("queued", "running")))).scalars()}
    for source in sources:
        started = source.last_started
        if started is not None and started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
        if source.name in pending or (started is not None and now - started < timedelta(seconds=interval_s)):
            continue
        try:
            with write_session(engine) as session:
                enqueue(session, KIND, {"source": source.name}, now, job_id=job_id(source.name, slot))
                session.commit()
            made.append(source.name)
        except IntegrityError:  # another replica enqueued this slot's job first
            continue
    return made


def sync_kind(engine: Engine, settings: Settings) -> JobKind:
    """The `ehr-sync` job kind: runs one source's sync (its lease on the source keeps it the only one), renewing
    the job's lease as it goes; its housekeeping is the schedule."""
    def run(ctx: JobContext) -> Done:
        name = ctx.payload["source"]
        # a run after a killed one finds the dead run's lease on the source until it runs out: wait for it (a sync
        # the command line runs makes the job wait as long, then fail; the next interval enqueues another)
        deadline = time.monotonic() + settings.job_lease_s + 5.0
        while True:
            try:
                counts = run_sync(engine, settings, name, heartbeat=lambda: ctx.heartbeat())
                return Done(result=counts.as_json())
            except SourceInvalid as exc:
                raise JobError(str(exc)) from None
            except SyncBusy:
                if time.monotonic() > deadline:
                    raise
                ctx.heartbeat(force=True)
                time.sleep(1.0)

    def housekeeping() -> None:
        made = schedule(engine, settings.sync_interval_s)
        if made:
            log.info("sync jobs enqueued for %s", ", ".join(made))

    return JobKind(KIND, run, error=_job_error, housekeeping=housekeeping)


def _job_error(exc: BaseException) -> str:
    if isinstance(exc, (UpstreamError, SyncBusy, SyncLost, JobError)):
        return str(exc)[:2000]
    return "an unexpected fault stopped the sync; the server log has the details"
