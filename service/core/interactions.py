"""The interaction core: every FHIR interaction, and every operation on the stored data (the study's cohort Group,
Bulk Data export, the study's figures), as a plain function of request values, nothing of HTTP.

Each HTTP request for an interaction reaches one of these methods through exactly one adapter (the FastAPI
routes in service/api/fhir_routes.py and service/bundle/router.py, or the front door in
service/api/front_door.py for the hot paths). They take the request's values (type, id, body, the headers that
matter, and a `Context` with the base URL and the caller) and return stored JSON (`Stored`, or a Bundle's bytes),
or raise `FhirError`s, which each adapter renders the same way (service/errors.py). Access decisions and audit
records belong here, once for every path.

Writes run in a worker thread, each in one unit of work (one database transaction); searches read on the
event loop when they are one cached page statement on PostgreSQL (asyncpg), else in the search threads.
"""

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from anyio import to_thread
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fhir_mappings.bundle import bundle, entry
from fhir_mappings.dates import fhir_instant
from service.bundle import service as bundles
from service.core import access, resources
from service.core.context import Context
from service.core.resources import Stored
from service.db import read_connection, read_session, write_session
from service.deid.deidentify import Deidentifier
from service.deid.service import deidentifier_from, pseudonym_resolver, resolve_pseudonym
from service.errors import Forbidden, NotFound
from service.export import service as exports
from service.group import service as groups
from service.search.service import plan_search, run_search, run_search_async
from service.settings import Settings
from service.stats import service as stats
from service.stats.schemas import StudySummary
from service.store.driver import AsyncReadPool, async_read_pool
from service.store.unit_of_work import UnitOfWork

log = logging.getLogger("trial_fhir")

T = TypeVar("T")
HISTORY_STATUS = {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}


class Core:
    """The interactions of one application (one engine, its settings and its search threads)."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        # searches have their own few threads instead of AnyIO's 40: on two cores sixteen concurrent searches in
        # forty threads fought over the GIL and the p99 went to ~100 ms
        self.search_threads = ThreadPoolExecutor(settings.search_threads, thread_name_prefix="search")
        self.async_reads: AsyncReadPool | None = None
        self._deid: Deidentifier | None = None

    def deidentifier(self) -> Deidentifier:
        """The application's de-identifier (its secret read, or made, on first need: call from a worker thread)."""
        if self._deid is None:
            self._deid = deidentifier_from(self.settings, self.engine)
        return self._deid

    async def _deidentifier(self) -> Deidentifier:
        return self._deid if self._deid is not None else await to_thread.run_sync(self.deidentifier)

    async def start(self) -> None:
        """Open what lives on the event loop (the async read pool on PostgreSQL)."""
        if self.settings.async_search and not self.settings.sql_echo:
            self.async_reads = async_read_pool(self.engine, self.settings.async_search_connections)

    async def stop(self) -> None:
        if self.async_reads is not None:
            await self.async_reads.close()
            self.async_reads = None
        self.search_threads.shutdown(wait=True)

    # -- writes ------------------------------------------------------------------------------------------

    async def _in_write_session(self, work: Callable[[Session], T]) -> T:
        """`work` on a write session (the write lock taken up front on SQLite), in a worker thread."""
        def run() -> T:
            with write_session(self.engine) as session:
                return work(session)
        return await to_thread.run_sync(run)

    async def _write(self, ctx: Context, work: Callable[[UnitOfWork], T]) -> T:
        """`work` in one unit of work, committed (run again after a write race), in a worker thread."""
        _no_deidentified_writes(ctx)
        return await self._in_write_session(lambda session: resources.run_write(
            session, work, base_url=ctx.base_url, enforce_rules=self.settings.enforce_trial_rules,
            caller=ctx.caller))

    async def create(self, ctx: Context, resource_type: str, body: dict[str, Any], *,
                     if_none_exist: str | None = None) -> Stored:
        """POST [base]/{type}: 201 with a new id, or the one existing match of `If-None-Exist` (200)."""
        return await self._write(ctx, lambda uow: resources.create(
            uow, resource_type, body, if_none_exist=if_none_exist))

    async def update(self, ctx: Context, resource_type: str, id: str, body: dict[str, Any], *,
                     if_match: str | None = None) -> Stored:
        """PUT [base]/{type}/{id}: a new version, or the resource itself with the client's id (201)."""
        return await self._write(ctx, lambda uow: resources.update(
            uow, resource_type, id, body, if_match=if_match))

    async def conditional_update(self, ctx: Context, resource_type: str, query: str, body: dict[str, Any], *,
                                 if_match: str | None = None) -> Stored:
        """PUT [base]/{type}?search: update the one match, create when none, 412 when several."""
        return await self._write(ctx, lambda uow: resources.conditional_update(
            uow, resource_type, query, body, if_match=if_match))

    async def delete(self, ctx: Context, resource_type: str, id: str, *,
                     if_match: str | None = None) -> Stored | None:
        """DELETE [base]/{type}/{id}: the tombstone version, or None when there was nothing to delete."""
        return await self._write(ctx, lambda uow: resources.delete(
            uow, resource_type, id, if_match=if_match))

    async def conditional_delete(self, ctx: Context, resource_type: str, query: str) -> list[Stored]:
        """DELETE [base]/{type}?search: delete the one match (412 when several)."""
        return await self._write(ctx, lambda uow: resources.conditional_delete(
            uow, resource_type, query))

    async def transaction(self, ctx: Context, body: dict[str, Any], *, representation: bool = False) -> bytes:
        """POST [base] with a transaction Bundle (all or nothing) or a batch Bundle (entry by entry)."""
        run = bundles.transaction if body.get("type") == "transaction" else bundles.batch
        _no_deidentified_writes(ctx)

        return await self._in_write_session(lambda session: run(
            session, body, ctx.base_url, max_entries=self.settings.max_bundle_entries,
            enforce_rules=self.settings.enforce_trial_rules, representation=representation, caller=ctx.caller))

    # -- reads -------------------------------------------------------------------------------------------

    async def _read(self, work: Callable[[Session], T]) -> T:
        """`work` on a read session, in a worker thread."""
        def run() -> T:
            with read_session(self.engine) as session:
                return work(session)
        return await to_thread.run_sync(run)

    async def read(self, ctx: Context, resource_type: str, id: str) -> Stored:
        """GET [base]/{type}/{id}: the current version (404 unknown, 410 deleted)."""
        if ctx.caller.deidentified:
            return await self._read_deidentified(ctx, resource_type, id, lambda s, real: resources.read(
                s, resource_type, real, caller=ctx.caller))
        return await self._read(lambda s: resources.read(s, resource_type, id, caller=ctx.caller))

    async def vread(self, ctx: Context, resource_type: str, id: str, version_id: str) -> Stored:
        """GET [base]/{type}/{id}/_history/{vid}."""
        if ctx.caller.deidentified:
            return await self._read_deidentified(ctx, resource_type, id, lambda s, real: resources.vread(
                s, resource_type, real, version_id, caller=ctx.caller))
        return await self._read(lambda s: resources.vread(s, resource_type, id, version_id, caller=ctx.caller))

    async def history(self, ctx: Context, resource_type: str, id: str, *, count: int,
                      before_version: int | None = None) -> bytes:
        """GET [base]/{type}/{id}/_history: a history Bundle, newest first, paged by version."""
        if ctx.caller.deidentified and resource_type == "Patient":  # named by its pseudonym: the Bundle is built
            deid = await self._deidentifier()                       # with the real id, then de-identified
            pseudonym = id
            real: str | None = await self._read(lambda s: resolve_pseudonym(s, deid, pseudonym))
            id = real or deid.nothing
        rows = await self._read(lambda s: resources.history(
            s, resource_type, id, count=count + 1, before_version=before_version, caller=ctx.caller))
        page, more = rows[:count], len(rows) > count
        base = ctx.base_url
        entries = [entry(f"{base}/{resource_type}/{id}", r.content,
                         request={"method": r.method, "url": resource_type if r.method == "POST"
                                  else f"{resource_type}/{id}"},
                         response={"status": HISTORY_STATUS[r.method], "etag": f'W/"{r.version_id}"',
                                   "lastModified": fhir_instant(r.last_updated)}) for r in page]
        here = f"{base}/{resource_type}/{id}/_history?_count={count}"
        links = [("self", here + (f"&_before_version={before_version}" if before_version else ""))]
        if more:
            links.append(("next", f"{here}&_before_version={page[-1].version_id}"))
        total = None if before_version or more else len(page)
        body = bundle("history", entries, total=total, links=links)
        if ctx.caller.deidentified:
            body = (await self._deidentifier()).bundle(body)
        return body

    async def search(self, ctx: Context, resource_type: str, params: list[tuple[str, str]]) -> bytes:
        """GET [base]/{type}?params: the searchset Bundle.

        A search that is one cached page statement is read on the event loop through the async read pool
        (PostgreSQL); any other in one of the search threads, on one read connection. If the async read fails
        (e.g. the database restarted) the page is read again in a search thread, whose pool checks and replaces
        connections: the read is repeated, never the request."""
        access.require(ctx.caller, resource_type, "s")
        if ctx.caller.deidentified:
            deid = await self._deidentifier()
            resolve = pseudonym_resolver(self.engine, deid)
            params = await to_thread.run_sync(lambda: deid.translate_params(params, resource_type, resolve))
            found = await self._search(ctx, resource_type, params)
            return deid.bundle(found)
        return await self._search(ctx, resource_type, params)

    async def _search(self, ctx: Context, resource_type: str, params: list[tuple[str, str]]) -> bytes:
        settings = self.settings
        plan = plan_search(resource_type, params, strict=ctx.strict, default_count=settings.default_page_size,
                           max_count=settings.max_page_size, caller=ctx.caller)
        pool = self.async_reads
        if pool is not None and plan.one_statement and pool.loop is asyncio.get_running_loop():
            try:
                body = await run_search_async(pool, plan, ctx.base_url)
            except Exception:
                log.warning("async read of a %s search failed; read again in a search thread", resource_type,
                            exc_info=True)
                body = None
            if body is not None:
                return body

        def run() -> bytes:
            with read_connection(self.engine) as conn:
                return run_search(conn, plan, ctx.base_url)
        return await asyncio.get_running_loop().run_in_executor(self.search_threads, run)

    # -- the study's cohort (Group, derived from its research subjects) ------------------------------------

    async def read_group(self, ctx: Context, id: str) -> dict[str, Any]:
        """GET [base]/Group/{id}: the cohort of ResearchStudy/{id} (it lists Patients: `r` on Group)."""
        access.require(ctx.caller, "Group", "r")
        group = await self._read(lambda s: groups.read_group(s, id, studies=ctx.caller.studies_for("Group", "r")))
        if ctx.caller.deidentified:
            group = (await self._deidentifier()).resource(group, None)
        return group

    async def search_groups(self, ctx: Context, params: list[tuple[str, str]]) -> bytes:
        """GET [base]/Group?params: a searchset of cohort Groups (`_id` only)."""
        access.require(ctx.caller, "Group", "s")
        found = await self._read(lambda s: groups.search_groups(
            s, params, ctx.base_url, strict=ctx.strict, studies=ctx.caller.studies_for("Group", "s")))
        return (await self._deidentifier()).bundle(found) if ctx.caller.deidentified else found

    # -- Bulk Data export --------------------------------------------------------------------------------

    async def export_kick_off(self, ctx: Context, params: list[tuple[str, str]], prefer: str | None,
                              request_url: str, *, group_id: str | None = None) -> str:
        """$export (system, or of the study's Group): the queued job's id. The job is the caller's: it exports
        what the caller may read (`r` on each type, its studies), de-identified for a de-identified client."""
        deid = await self._deidentifier() if ctx.caller.deidentified else None
        return await self._in_write_session(lambda session: exports.kick_off(
            session, params, prefer, request_url, group_id=group_id, caller=ctx.caller, deid=deid))

    async def export_status(self, ctx: Context, job_id: str) -> exports.JobStatus:
        """The status of an export job: queued or running (202), its manifest (200), or failed."""
        return await self._read(lambda s: exports.job_status(
            s, job_id, exports.files_base(ctx.base_url), caller=ctx.caller))

    async def export_cancel(self, ctx: Context, job_id: str) -> None:
        """Cancel an export job and delete its files."""
        await self._in_write_session(lambda session: exports.cancel_job(
            session, self.settings.export_dir, job_id, caller=ctx.caller))

    async def export_file(self, ctx: Context, job_id: str, name: str) -> Path:
        """Where one file of a completed export is."""
        return await self._read(lambda s: exports.file_path(
            s, self.settings.export_dir, job_id, name, caller=ctx.caller))

    # -- the study's figures ------------------------------------------------------------------------------

    def _figures(self, ctx: Context, study_id: str, work: Callable[[Session], T]) -> Callable[[Session], T]:
        """`work` on a study's figures, for a caller that may read what they are computed from (403 naming the
        scope) in that study (404 for another study's, as for an unknown one)."""
        for resource_type in access.FIGURES_READ:
            access.require(ctx.caller, resource_type, "r")

        def run(session: Session) -> T:
            if not ctx.caller.unrestricted:
                for resource_type in access.FIGURES_READ:
                    studies = ctx.caller.studies_for(resource_type, "r")
                    if studies is not None and study_id not in studies:
                        raise NotFound(f"ResearchStudy/{study_id} is not known", expression="ResearchStudy.id")
            return work(session)
        return run

    async def study_summary(self, ctx: Context, study_id: str) -> StudySummary:
        """Efficacy and safety per arm and visit."""
        return await self._read(self._figures(ctx, study_id, lambda s: stats.summarize_study(
            s, study_id, min_cell=self._min_cell(ctx))))

    async def study_summary_csv(self, ctx: Context, study_id: str) -> str:
        return await self._read(self._figures(ctx, study_id, lambda s: stats.study_summary_csv(
            s, study_id, min_cell=self._min_cell(ctx))))

    async def study_measure_report(self, ctx: Context, study_id: str) -> dict[str, Any]:
        """ResearchStudy/{id}/$summary: the summary as a MeasureReport."""
        return await self._read(self._figures(ctx, study_id, lambda s: stats.study_measure_report(
            s, study_id, min_cell=self._min_cell(ctx))))

    async def study_chart(self, ctx: Context, study_id: str, key: str) -> str:
        """One measure's or responder key's chart (SVG)."""
        return await self._read(self._figures(ctx, study_id, lambda s: stats.study_chart(
            s, study_id, key, min_cell=self._min_cell(ctx))))

    async def study_report(self, ctx: Context, study_id: str) -> str:
        """The human-readable report (HTML)."""
        return await self._read(self._figures(ctx, study_id, lambda s: stats.study_report(
            s, study_id, min_cell=self._min_cell(ctx))))

    def _min_cell(self, ctx: Context) -> int | None:
        """k of the k-anonymous figures a de-identified client gets (cells of fewer subjects suppressed)."""
        return self.settings.deid_min_cell if ctx.caller.deidentified else None

    async def _read_deidentified(self, ctx: Context, resource_type: str, id: str,
                                 work: Callable[[Session, str], Stored]) -> Stored:
        """A read for a de-identified client: a Patient is named by its pseudonym (an id that is none is unknown),
        and the content served is de-identified."""
        deid = await self._deidentifier()

        def run(session: Session) -> Stored:
            real = id
            if resource_type == "Patient":
                real = resolve_pseudonym(session, deid, id) or deid.nothing
            stored = work(session, real)
            content = deid.content(stored.content).decode() if stored.content is not None else None
            return replace(stored, id=id, content=content)
        return await self._read(run)


def _no_deidentified_writes(ctx: Context) -> None:
    """A de-identified client sees pseudonyms and shifted dates only: what it wrote could not mean what it says."""
    if ctx.caller.deidentified:
        raise Forbidden("A client registered for de-identified data can't write", expression="Authorization")
