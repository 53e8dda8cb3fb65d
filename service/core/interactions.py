"""The interaction core: every FHIR interaction, and every operation on the stored data (the study's cohort Group,
Bulk Data export, the study's figures), as a plain function of request values, nothing of HTTP.

Each HTTP request for an interaction reaches one of these methods through exactly one adapter (the FastAPI
routes in service/api/fhir_routes.py and service/bundle/router.py, or the front door in
service/api/front_door.py for the hot paths). They take the request's values (type, id, body, the headers that
matter, and a `Context` with the base URL and the caller) and return stored JSON (`Stored`, or a Bundle's bytes),
or raise `FhirError`s, which each adapter renders the same way (service/errors.py).

Access is decided here and below, once for every path: the caller's scopes and studies (`Context.caller`, from the
token the adapter verified) through service/core/access.py, in the write path (resources.py, so Bundle entries too)
and where searches are compiled. Every interaction is audited here (`_audited`): a write's AuditEvent is appended in
the write's own transaction, a read's committed (grouped) before the answer is released, a refusal recorded with
its outcome. A de-identified client's answers are de-identified here too (service/deid), after the audit has named
the real patients.

Writes run in a worker thread, each in one unit of work (one database transaction); searches read on the
event loop when they are one cached page statement on PostgreSQL (asyncpg), else in the search threads.

With a read replica (TRIAL_FHIR_READ_DATABASE_URL), the reads that pass their `Context` to `_read` (and searches)
go where `self.reads` (service/replica.py) says; writes, and reads made for a write or of the job tables, are the
primary's.
"""

import asyncio
import base64
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote

import orjson
from anyio import to_thread
from sqlalchemy import or_, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fhir_mappings.bundle import bundle, entry
from fhir_mappings.dates import fhir_instant
from fhir_mappings.outcome import Issue, issue, outcome
from fhir_mappings.parameters import ParametersInvalid, operation_inputs, single
from fhir_mappings.references import ID_RE
from fhir_mappings.search import Malformed, date_range
from fhir_mappings.subscription import notification_bundle
from service.audit.events import AuditRecord, event_for, outcome_for, patients_of, touched
from service.audit.log import AuditLog
from service.bundle import service as bundles
from service.core import access, resources
from service.core.context import Context
from service.core.registry import INCLUDES, REGISTRY, TYPES, handler_for
from service.core.resources import Stored
from service.core.stored_type import StoredType
from service.core.write_groups import ALONE, Member, WriteGroups
from service.db import read_connection, read_session, write_session
from service.deid.deidentify import Deidentifier
from service.deid.service import deidentifier_from, pseudonym_resolver, resolve_pseudonym
from service.errors import BadRequest, FhirError, Forbidden, Gone, NotFound
from service.export import service as exports
from service.group import service as groups
from service.replica import ReadRouter
from service.sdtm import service as sdtm
from service.search.compiler import study_condition
from service.search.service import plan_search, resolve_study, run_search, run_search_async
from service.settings import Settings
from service.stats import service as stats
from service.stats.schemas import StudyProgress, StudySummary
from service.store import repository
from service.store.driver import AsyncReadPool, async_read_pool
from service.store.unit_of_work import UnitOfWork
from service.subscription import events as subscription_events, service as subscriptions

log = logging.getLogger("trial_fhir")

T = TypeVar("T")
HISTORY_STATUS = {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}
#: a transaction Bundle of at most this many entries may share a write group (service/core/write_groups.py) with
#: the writes waiting with it: an HL7 v2 message's (ten results and a Provenance), an EHR's few-resource Bundles
GROUPED_TRANSACTION_ENTRIES = 32


class Core:
    """The interactions of one application (one engine, its settings and its search threads)."""

    def __init__(self, engine: Engine, settings: Settings, reads: ReadRouter | None = None) -> None:
        self.engine = engine
        self.settings = settings
        # which reads the read replica serves (service/replica.py); without one, every read is the primary's
        self.reads = reads or ReadRouter(engine, None, max_lag_s=settings.read_max_lag_s)
        # searches have their own few threads instead of AnyIO's 40: on two cores sixteen concurrent searches in
        # forty threads fought over the GIL and the p99 went to ~100 ms
        self.search_threads = ThreadPoolExecutor(settings.search_threads, thread_name_prefix="search")
        self.async_reads: AsyncReadPool | None = None
        self.async_replica_reads: AsyncReadPool | None = None  # the same, on the read replica
        self._deid: Deidentifier | None = None
        self.audit_log = AuditLog(engine)
        # concurrent single creates committed together (service/core/write_groups.py); None: each on its own
        self.write_groups = WriteGroups(engine, limit=settings.write_groups, size=settings.write_group_size,
                                        enforce_rules=settings.enforce_trial_rules) if settings.write_groups else None

    def deidentifier(self) -> Deidentifier:
        """The application's de-identifier (its secret read, or made, on first need: call from a worker thread)."""
        if self._deid is None:
            self._deid = deidentifier_from(self.settings, self.engine)
        return self._deid

    async def _deidentifier(self) -> Deidentifier:
        return self._deid if self._deid is not None else await to_thread.run_sync(self.deidentifier)

    async def start(self) -> None:
        """Open what lives on the event loop (the async read pools on PostgreSQL), start the audit writer and the
        read replica's monitor (service/replica.py; nothing without a replica)."""
        await self.audit_log.start()
        await to_thread.run_sync(self.reads.start)
        if self.settings.async_search and not self.settings.sql_echo:
            self.async_reads = async_read_pool(self.engine, self.settings.async_search_connections,
                                               self.settings.statement_timeout_ms)
            if self.reads.replica is not None:
                self.async_replica_reads = async_read_pool(self.reads.replica, self.settings.async_search_connections,
                                                           self.settings.statement_timeout_ms)

    async def stop(self) -> None:
        for pool in (self.async_reads, self.async_replica_reads):
            if pool is not None:
                await pool.close()
        self.async_reads = self.async_replica_reads = None
        await to_thread.run_sync(self.reads.stop)
        await self.audit_log.stop()  # what is queued is written first
        self.search_threads.shutdown(wait=True)
        subscription_events.forget(self.engine)  # its refresher thread of the subscription cache ends

    # -- audit ---------------------------------------------------------------------------------------------

    async def _audited(self, ctx: Context, subtype: str, run: Awaitable[T],
                       facts: Callable[[T], tuple[Sequence[str], Sequence[str]]] | None, *,
                       operation: str | None = None, resources_named: Sequence[str] = ()) -> T:
        """Run an interaction and audit it (service/audit): a failure or refusal (any FhirError) gets an event
        with its outcome, committed before the error is answered; a success gets one naming the patients and
        resources `facts` finds in the result, committed before the result is released (None: the interaction
        audits itself, in its own transaction, as writes do)."""
        try:
            result = await run
        except FhirError as exc:
            await self.record([event_for(ctx, subtype=subtype, outcome=outcome_for(exc.status_code),
                                         status=exc.status_code, operation=operation, resources=resources_named)])
            raise
        if facts is not None:
            patients, touched_ = facts(result)
            await self.record([event_for(ctx, subtype=subtype, outcome=0, operation=operation,
                                         patients=_unique(patients), resources=[*resources_named, *touched_])])
        return result

    async def record(self, records: Sequence[AuditRecord]) -> None:
        """Commit audit events (group commit: service/audit/log.py) before the answer goes out."""
        await self.audit_log.commit(records)

    @staticmethod
    def _appender(ctx: Context, subtype: str) -> Callable[[UnitOfWork], list[AuditRecord]]:
        """The hook that gives a write's AuditEvent, appended in the write's own transaction (resources.run_write)."""
        def write_event(uow: UnitOfWork) -> list[AuditRecord]:
            return [event_for(ctx, subtype=subtype, outcome=0, patients=_unique(p for _, ps in uow.touched for p in ps),
                              resources=[ref for ref, _ in uow.touched])]
        return write_event

    # -- writes ------------------------------------------------------------------------------------------

    async def _in_write_session(self, work: Callable[[Session], T]) -> T:
        """`work` on a write session (the write lock taken up front on SQLite), in a worker thread."""
        def run() -> T:
            with write_session(self.engine) as session:
                return work(session)
        return await to_thread.run_sync(run)

    async def _write(self, ctx: Context, subtype: str, work: Callable[[UnitOfWork], T], *,
                     grouped: bool = False, conditional: bool = False, resource_type: str | None = None) -> T:
        """`work` in one unit of work, committed with its AuditEvent (run again after a write race), in a worker
        thread. `grouped` (a single create): committed with the other creates waiting at the same moment, when
        write groups are on (service/core/write_groups.py); `conditional`: it looks for a match first."""
        async def run() -> T:
            _no_deidentified_writes(ctx, resource_type)
            try:
                if grouped and self.write_groups is not None:
                    outcome = await self.write_groups.run(Member(work, ctx.caller, ctx.base_url,
                                                                 self._appender(ctx, subtype), conditional))
                    if outcome is not ALONE:
                        return cast(T, outcome)
                return await self._in_write_session(lambda session: resources.run_write(
                    session, work, base_url=ctx.base_url, enforce_rules=self.settings.enforce_trial_rules,
                    caller=ctx.caller, audit=self._appender(ctx, subtype)))
            finally:  # (whatever the outcome: a write whose answer was lost may still have been committed)
                self.reads.wrote(ctx.caller.name)
        return await self._audited(ctx, subtype, run(), None)

    async def create(self, ctx: Context, resource_type: str, body: dict[str, Any], *,
                     if_none_exist: str | None = None) -> Stored:
        """POST [base]/{type}: 201 with a new id, or the one existing match of `If-None-Exist` (200)."""
        return await self._write(ctx, "create", lambda uow: resources.create(
            uow, resource_type, body, if_none_exist=if_none_exist), grouped=True, conditional=bool(if_none_exist),
            resource_type=resource_type)

    async def update(self, ctx: Context, resource_type: str, id: str, body: dict[str, Any], *,
                     if_match: str | None = None, if_none_match: str | None = None) -> Stored:
        """PUT [base]/{type}/{id}: a new version, or the resource itself with the client's id (201)."""
        return await self._write(ctx, "update", lambda uow: resources.update(
            uow, resource_type, id, body, if_match=if_match, if_none_match=if_none_match), resource_type=resource_type)

    async def conditional_update(self, ctx: Context, resource_type: str, query: str, body: dict[str, Any], *,
                                 if_match: str | None = None) -> Stored:
        """PUT [base]/{type}?search: update the one match, create when none, 412 when several."""
        return await self._write(ctx, "update", lambda uow: resources.conditional_update(
            uow, resource_type, query, body, if_match=if_match))

    async def delete(self, ctx: Context, resource_type: str, id: str, *,
                     if_match: str | None = None) -> Stored | None:
        """DELETE [base]/{type}/{id}: the tombstone version, or None when there was nothing to delete."""
        return await self._write(ctx, "delete", lambda uow: resources.delete(
            uow, resource_type, id, if_match=if_match), resource_type=resource_type)

    async def conditional_delete(self, ctx: Context, resource_type: str, query: str) -> list[Stored]:
        """DELETE [base]/{type}?search: delete the one match (412 when several)."""
        return await self._write(ctx, "delete", lambda uow: resources.conditional_delete(
            uow, resource_type, query))

    async def patch(self, ctx: Context, resource_type: str, id: str, operations: Any, *,
                    if_match: str | None = None) -> Stored:
        """PATCH [base]/{type}/{id} with a JSON Patch: the patched resource stored as an update would store it."""
        return await self._write(ctx, "patch", lambda uow: resources.patch(
            uow, resource_type, id, operations, if_match=if_match))

    async def conditional_patch(self, ctx: Context, resource_type: str, query: str, operations: Any, *,
                                if_match: str | None = None) -> Stored:
        """PATCH [base]/{type}?search: patch the one match (404 none, 412 several)."""
        return await self._write(ctx, "patch", lambda uow: resources.conditional_patch(
            uow, resource_type, query, operations, if_match=if_match))

    async def validate(self, ctx: Context, resource_type: str, body: dict[str, Any] | None,
                       query: list[tuple[str, str]], *, id: str | None = None) -> dict[str, Any]:
        """POST [base]/{type}/$validate, [base]/{type}/{id}/$validate: the OperationOutcome of a create, update or
        delete that is run and rolled back (resources.validate); 200 whether or not the resource is valid (R4
        $validate returns the outcome; a 4xx means the validation could not be done). The body is the resource,
        or a Parameters with `resource`, `mode` and `profile` (`mode` may be in the query too). Needs the scope the
        write itself would (c, u or d), audited as the operation `validate`."""
        async def run() -> tuple[list[Issue], dict[str, Any] | None, str | None]:
            _no_deidentified_writes(ctx)
            resource, mode = _validate_inputs(resource_type, body, query)  # a 400 here is audited too
            issues = await self._in_write_session(lambda session: resources.validate(
                session, resource_type, resource, mode=mode, id=id, base_url=ctx.base_url,
                enforce_rules=self.settings.enforce_trial_rules, caller=ctx.caller))
            return issues, resource, mode
        target = [f"{resource_type}/{id}"] if id else []
        issues, resource, mode = await self._audited(
            ctx, "operation", run(),
            lambda done: (patients_of(resource_type, done[1]) if done[1] else [], []),
            operation="validate", resources_named=target)
        if not issues:
            issues = [issue("informational", f"The {resource_type} is valid" + (f" for {mode}" if mode else ""),
                            severity="information")]
        return outcome(issues)

    async def transaction(self, ctx: Context, body: dict[str, Any], *, representation: bool = False,
                          first: Callable[[UnitOfWork], None] | None = None) -> bytes:
        """POST [base] with a transaction Bundle (all or nothing, one AuditEvent in its transaction) or a batch
        Bundle (entry by entry, each its own transaction and AuditEvent). `first` (transactions only) runs at the
        start of the database transaction: an adapter's own row written with the data (service/hl7's message id)."""
        kind = "transaction" if body.get("type") == "transaction" else "batch"
        run: Callable[..., bytes] = bundles.batch
        if kind == "transaction":
            run = partial(bundles.transaction, first=first)
        elif first is not None:
            raise ValueError("`first` is for transactions")

        async def go() -> bytes:
            _no_deidentified_writes(ctx)
            try:
                grouped, conditional = (False, False) if self.write_groups is None or kind != "transaction" else \
                    bundles.groupable(body, GROUPED_TRANSACTION_ENTRIES)
                if grouped:  # a small transaction (an HL7 v2 message's): committed with the writes waiting with it
                    work = await to_thread.run_sync(partial(
                        bundles.transaction_work, body, ctx.base_url, max_entries=self.settings.max_bundle_entries,
                        representation=representation, max_repeats=self.settings.max_param_repeats,
                        max_values=self.settings.max_or_values, first=first))
                    assert self.write_groups is not None
                    outcome = await self.write_groups.run(Member(
                        work, ctx.caller, ctx.base_url, self._appender(ctx, kind), conditional or first is not None,
                        out_of_scope=self.settings.out_of_scope, isolated=True))
                    if outcome is not ALONE:
                        return cast(bytes, outcome)
                    return await self._in_write_session(lambda session: resources.run_write(
                        session, work, base_url=ctx.base_url, enforce_rules=self.settings.enforce_trial_rules,
                        caller=ctx.caller, audit=self._appender(ctx, kind), out_of_scope=self.settings.out_of_scope))
                return await self._in_write_session(lambda session: run(
                    session, body, ctx.base_url, max_entries=self.settings.max_bundle_entries,
                    enforce_rules=self.settings.enforce_trial_rules, representation=representation,
                    caller=ctx.caller, audit=self._appender(ctx, kind), out_of_scope=self.settings.out_of_scope,
                    max_repeats=self.settings.max_param_repeats, max_values=self.settings.max_or_values))
            finally:
                self.reads.wrote(ctx.caller.name)
        return await self._audited(ctx, kind, go(), None)

    # -- reads -------------------------------------------------------------------------------------------

    async def _read(self, work: Callable[[Session], T], ctx: Context | None = None) -> T:
        """`work` on a read session, in a worker thread: on the read replica when `ctx` is given (a read of stored
        data for that caller) and the router finds the replica fresh enough for it, else on the primary (`ctx`
        None: what must be read on the primary, e.g. the job tables)."""
        def run(engine: Engine) -> T:
            with read_session(engine) as session:
                return work(session)
        return await to_thread.run_sync(self.reads.run, self._read_engine(ctx), run)

    def _read_engine(self, ctx: Context | None) -> Engine:
        """Where a read for `ctx` goes (service/replica.py decides: the replica when it holds the caller's last
        write and lags within the setting, unless the request asks for `Prefer: consistency=strong`)."""
        if ctx is None:
            return self.engine
        return self.reads.choose(ctx.caller.name, strong=ctx.consistent)

    async def _real_id(self, ctx: Context, resource_type: str, id: str) -> str:
        """The id a request names, as stored: a de-identified client names a Patient by its pseudonym (an id
        that is none names nothing)."""
        if not ctx.caller.deidentified:
            return id
        deid = await self._deidentifier()  # (made here for `_shown` too, whatever the type)
        if resource_type != "Patient":
            return id
        real: str | None = await self._read(lambda s: resolve_pseudonym(s, deid, id), ctx)
        return real or deid.nothing

    def _shown(self, ctx: Context, stored: Stored, id: str) -> Stored:
        """What the caller is shown of a version: de-identified, named as it was asked, for such a client."""
        if not ctx.caller.deidentified or stored.content is None:
            return stored
        assert self._deid is not None, "_real_id made the de-identifier"
        return replace(stored, id=id, content=self._deid.content(stored.content).decode())

    async def read(self, ctx: Context, resource_type: str, id: str) -> Stored:
        """GET [base]/{type}/{id}: the current version (404 unknown, 410 deleted)."""
        async def run() -> Stored:
            real = await self._real_id(ctx, resource_type, id)
            return await self._read(lambda s: resources.read(s, resource_type, real, caller=ctx.caller), ctx)
        return self._shown(ctx, await self._audited(ctx, "read", run(), _stored_facts), id)

    async def vread(self, ctx: Context, resource_type: str, id: str, version_id: str) -> Stored:
        """GET [base]/{type}/{id}/_history/{vid}."""
        async def run() -> Stored:
            real = await self._real_id(ctx, resource_type, id)
            return await self._read(lambda s: resources.vread(s, resource_type, real, version_id,
                                                              caller=ctx.caller), ctx)
        return self._shown(ctx, await self._audited(ctx, "vread", run(), _stored_facts), id)

    async def history(self, ctx: Context, resource_type: str, id: str, *, count: int,
                      before_version: int | None = None, since: datetime | None = None,
                      at: str | None = None) -> bytes:
        """GET [base]/{type}/{id}/_history: a history Bundle, newest first, paged by version; `_since` keeps the
        versions made at or after an instant, `_at` those current at some moment of a date's period."""
        body = await self._audited(ctx, "history-instance", self._history(
            ctx, resource_type, id, count=count, before_version=before_version, since=since, at=at),
            _bundle_facts)
        return (await self._deidentifier()).bundle(body) if ctx.caller.deidentified else body

    async def _history(self, ctx: Context, resource_type: str, id: str, *, count: int,
                       before_version: int | None, since: datetime | None, at: str | None) -> bytes:
        # a Patient a de-identified client names by its pseudonym: the Bundle is built with the real id, then
        # de-identified (which names it by its pseudonym again)
        id = await self._real_id(ctx, resource_type, id)
        period = history_period(at)
        rows = await self._read(lambda s: resources.history(
            s, resource_type, id, count=count + 1, before_version=before_version, since=since, at=period,
            caller=ctx.caller), ctx)
        page, more = rows[:count], len(rows) > count
        base = ctx.base_url
        entries = [_history_entry(base, resource_type, id, r) for r in page]
        here = f"{base}/{resource_type}/{id}/_history?{_history_query(count, since, at)}"
        links = [("self", here + (f"&_before_version={before_version}" if before_version else ""))]
        if more:
            links.append(("next", f"{here}&_before_version={page[-1].version_id}"))
        total = None if before_version or more else len(page)
        return bundle("history", entries, total=total, links=links)

    async def type_history(self, ctx: Context, resource_type: str, *, count: int, since: datetime | None = None,
                           page: str | None = None, at: str | None = None) -> bytes:
        """GET [base]/{type}/_history: every version of every resource of the type, newest first, paged by an
        opaque cursor (`_page`); a caller limited to studies sees the versions of its studies' current resources."""
        body = await self._audited(ctx, "history-type", self._type_history(ctx, resource_type, count, since, page,
                                                                           at), _bundle_facts)
        return (await self._deidentifier()).bundle(body) if ctx.caller.deidentified else body

    async def _type_history(self, ctx: Context, resource_type: str, count: int, since: datetime | None,
                            page: str | None, at: str | None) -> bytes:
        stored_type = handler_for(resource_type)
        access.require(ctx.caller, resource_type, "r")
        return await self._versions(ctx, [self._readable(ctx, stored_type)], f"{resource_type}/_history", count,
                                    since, page, at)

    async def system_history(self, ctx: Context, *, count: int, since: datetime | None = None,
                             page: str | None = None, at: str | None = None) -> bytes:
        """GET [base]/_history: every version of every resource the caller may read (each type it holds `r` on, in
        its studies), newest first, paged by an opaque cursor; the audit trail itself is not in it."""
        body = await self._audited(ctx, "history-system", self._system_history(ctx, count, since, page, at),
                                   _bundle_facts)
        return (await self._deidentifier()).bundle(body) if ctx.caller.deidentified else body

    async def _system_history(self, ctx: Context, count: int, since: datetime | None, page: str | None,
                              at: str | None) -> bytes:
        types = [self._readable(ctx, t) for t in REGISTRY if t.exported and ctx.caller.may(t.name, "r")]
        if not types:
            access.require(ctx.caller, "*", "r")  # 403 naming system/*.r
        return await self._versions(ctx, types, "_history", count, since, page, at)

    @staticmethod
    def _readable(ctx: Context, stored_type: StoredType) -> tuple[str, Any]:
        """(type, the subquery of its ids in the caller's studies, or None when it is not limited to any)."""
        studies = ctx.caller.studies_for(stored_type.name, "r")
        only = None if studies is None else select(stored_type.table.c.id).where(
            study_condition(stored_type.name, studies))
        return stored_type.name, only

    async def _versions(self, ctx: Context, types: list[tuple[str, Any]], path: str, count: int,
                        since: datetime | None, page: str | None, at: str | None) -> bytes:
        """The history Bundle of every version of `types` (type and system history): newest first, `count` a page,
        paged by an opaque cursor of the page's last row."""
        before = resources.decode_history_page(page) if page else None
        period = history_period(at)
        rows = await self._read(lambda s: repository.find_history_of_types(
            s, types, limit=count + 1, since=since, before=before, at=period), ctx)
        page_rows, more = rows[:count], len(rows) > count
        base = ctx.base_url
        entries = [_history_entry(base, r.resource_type, r.id, r) for r in page_rows]
        here = f"{base}/{path}?{_history_query(count, since, at)}"
        links = [("self", here + (f"&_page={page}" if page else ""))]
        if more:
            last = page_rows[-1]
            cursor = resources.encode_history_page(last.last_updated, last.resource_type, last.id, last.version_id)
            links.append(("next", f"{here}&_page={cursor}"))
        return bundle("history", entries, total=None if page or more else len(page_rows), links=links)

    async def search(self, ctx: Context, resource_type: str, params: list[tuple[str, str]]) -> bytes:
        """GET [base]/{type}?params: the searchset Bundle, audited as one event naming the query and every patient
        the page shows (read beside its rows: no parsing).

        A search that is one cached page statement is read on the event loop through the async read pool
        (PostgreSQL); any other in one of the search threads, on one read connection. If the async read fails
        (e.g. the database restarted) the page is read again in a search thread, whose pool checks and replaces
        connections: the read is repeated, never the request."""
        found, _ = await self._audited(ctx, "search-type", self._search(ctx, resource_type, params), _search_facts)
        return (await self._deidentifier()).bundle(found) if ctx.caller.deidentified else found

    async def _search(self, ctx: Context, resource_type: str, params: list[tuple[str, str]]
                      ) -> tuple[bytes, list[str]]:
        access.require(ctx.caller, resource_type, "s")
        if ctx.caller.deidentified:
            deid = await self._deidentifier()
            resolve = pseudonym_resolver(self.engine, deid)
            asked = params
            params = await to_thread.run_sync(lambda: deid.translate_params(asked, resource_type, resolve))
        settings = self.settings
        plan = plan_search(resource_type, params, strict=ctx.strict, default_count=settings.default_page_size,
                           max_count=settings.max_page_size, caller=ctx.caller)
        seen: list[str] = []
        engine = self._read_engine(ctx)
        pool = self.async_replica_reads if engine is self.reads.replica else self.async_reads
        if pool is not None and plan.one_statement and pool.loop is asyncio.get_running_loop():
            try:
                body = await run_search_async(pool, plan, ctx.base_url, seen=seen)
            except Exception:
                log.warning("async read of a %s search failed; read again in a search thread", resource_type,
                            exc_info=True)
                body = None
            if body is not None:
                return body, seen
            seen.clear()

        def run(engine: Engine) -> bytes:
            seen.clear()  # run again on a new connection when the pooled one had died (or on the primary)
            with read_connection(engine) as conn:
                return run_search(conn, plan, ctx.base_url, seen=seen)
        return await asyncio.get_running_loop().run_in_executor(self.search_threads, self.reads.run, engine,
                                                                run), seen

    # -- Patient/$everything ----------------------------------------------------------------------------------

    async def everything(self, ctx: Context, id: str, *, count: int | None = None, since: datetime | None = None,
                         types: str | None = None, page: str | None = None, asked: Sequence[str] = ()) -> bytes:
        """GET [base]/Patient/{id}/$everything: the Patient, every resource of its compartment (each stored type
        whose `patient_param` names it: enrolments, results, adverse events) and what those reference (their
        studies), as a searchset paged by an opaque cursor; `_since` keeps what changed at or after an instant,
        `_type` the types listed. Limited as a search is: each type needs `s` (the Patient's is required, a type
        without it is left out) and the caller's studies; audited as the operation `everything`."""
        # (a de-identified client names the Patient by its pseudonym: the facts of the Bundle name the real one)
        named = [] if ctx.caller.deidentified else [f"Patient/{id}"]
        body = await self._audited(ctx, "operation", self._everything(ctx, id, count, since, types, page, asked),
                                   _bundle_facts, operation="everything", resources_named=named)
        return (await self._deidentifier()).bundle(body) if ctx.caller.deidentified else body

    async def _everything(self, ctx: Context, asked: str, count: int | None, since: datetime | None,
                          types: str | None, page: str | None, params: Sequence[str]) -> bytes:
        access.require(ctx.caller, "Patient", "s")
        _everything_params(params, strict=ctx.strict)
        settings = self.settings
        size = min(count or settings.default_page_size, settings.max_page_size)
        wanted = _everything_types(types)
        cursor = decode_everything_page(page) if page else (0, "")
        id = await self._real_id(ctx, "Patient", asked)

        def run(session: Session) -> tuple[list[tuple[str, str, str, str]], bool]:
            current = repository.get_current(session, "Patient", id)
            if current is None:
                raise NotFound(f"Patient/{asked} is not known", expression="Patient.id")
            access.require_visible(session, ctx.caller, "Patient", id, "s")
            if current.deleted:
                raise Gone(f"Patient/{asked} was deleted", expression="Patient.id")
            found: list[tuple[str, str, str, str]] = []  # (type, id, content, search mode)
            for stage, (rtype, mode, members) in enumerate(_everything_stages(id)):
                if stage < cursor[0] or rtype not in wanted or not ctx.caller.may(rtype, "s"):
                    continue
                studies = ctx.caller.studies_for(rtype, "s")
                if studies is not None:
                    members = members.where(study_condition(rtype, studies))
                after = cursor[1] if stage == cursor[0] else ""
                rows = repository.find_current_in(session, rtype, members, since=since, after_id=after,
                                                  limit=size + 1 - len(found))
                found += [(rtype, row.id, row.content, mode) for row in rows]
                if len(found) > size:
                    break
            return found, len(found) > size

        rows, more = await self._read(lambda s: run(s), ctx)
        rows = rows[:size]
        base = ctx.base_url
        entries = [entry(f"{base}/{rtype}/{rid}", content, search={"mode": mode}) for rtype, rid, content, mode in rows]
        query = f"_count={size}" + (f"&_since={fhir_instant(since)}" if since else "") \
            + (f"&_type={quote(types, safe=',')}" if types else "")
        # the links name the Patient as it was asked (a de-identified client: by its pseudonym, never the real id)
        here = f"{base}/Patient/{asked}/$everything?{query}"
        links = [("self", here + (f"&_page={page}" if page else ""))]
        if more:
            last_type, last_id = rows[-1][0], rows[-1][1]
            stage = next(i for i, (t, _, _) in enumerate(_everything_stages(id)) if t == last_type)
            # a page that ends with the Patient goes on at the next stage: the cursor never holds its id
            following = encode_everything_page(stage + 1, "") if stage == 0 else encode_everything_page(stage, last_id)
            links.append(("next", f"{here}&_page={following}"))
        return bundle("searchset", entries, total=None if page or more else len(entries), links=links)

    # -- Subscription/$status and $events -----------------------------------------------------------------------

    async def subscription_status(self, ctx: Context, id: str) -> dict[str, Any]:
        """GET [base]/Subscription/{id}/$status: a searchset Bundle of its status Parameters (type query-status):
        status, events since its start, the error that stopped it. Needs `r` on Subscription and its study."""
        def run(session: Session) -> dict[str, Any]:
            resources.read(session, "Subscription", id, caller=ctx.caller)  # 403, 404 (another study's), 410
            sub, state = subscriptions.status_of(session, id)
            return subscriptions.status_parameters_of(sub, state, "query-status")

        params = await self._audited(ctx, "operation", self._read(run), _nothing, operation="status",
                                     resources_named=[f"Subscription/{id}"])
        found: dict[str, Any] = orjson.loads(bundle("searchset", [{"fullUrl": f"urn:uuid:{uuid.uuid4()}",
                                                                   "resource": params, "search": {"mode": "match"}}],
                                                     total=1))
        return found

    async def subscription_events(self, ctx: Context, id: str, *, since: int | None, upto: int | None,
                                  content: str | None) -> dict[str, Any]:
        """GET [base]/Subscription/{id}/$events: its past events (`eventsSinceNumber`, `eventsUntilNumber`, at most
        TRIAL_FHIR_SUBSCRIPTION_MAX_COUNT), as a history Bundle whose first entry is the status Parameters (type
        query-event), then their resources as `content` (default the subscription's) says. The resources only for a
        caller that may read them (else id-only), de-identified for a de-identified caller."""
        def run(session: Session) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
            resources.read(session, "Subscription", id, caller=ctx.caller)
            sub, state = subscriptions.status_of(session, id)
            rows = subscriptions.load_events(session, id, (since or 1) - 1, self.settings.subscription_max_count,
                                             upto)
            mode = content or sub.content
            if mode == "full-resource" and not all(ctx.caller.may(r.focus_type, "r") for r in rows):
                mode = "id-only"
            deid = self.deidentifier() if ctx.caller.deidentified and mode == "full-resource" else None
            now = datetime.now(UTC)
            params = subscriptions.status_parameters_of(sub, state, "query-event",
                                                        subscriptions.notification_events(rows, mode, now))
            entries = subscriptions.notification_entries(session, rows, mode, ctx.base_url, deid)
            return params, entries, [f"{r.focus_type}/{r.focus_id}/_history/{r.focus_version}" for r in rows]

        if content is not None and content not in ("empty", "id-only", "full-resource"):
            raise BadRequest("content is empty, id-only or full-resource", expression="content")
        params, entries, named = await self._audited(
            ctx, "operation", self._read(run), lambda done: ([], done[2]), operation="events",
            resources_named=[f"Subscription/{id}"])
        now_id = f"{id}-events-{since or 1}"
        return notification_bundle(now_id, fhir_instant(datetime.now(UTC)), params, entries)

    # -- the study's cohort (Group, derived from its research subjects) ------------------------------------

    async def resolve_study_id(self, ctx: Context, key: str, *, for_write: bool = False) -> str:
        """The id of the study a study-scoped URL names (`/studies/{key}/…`, `Group/{key}`, `ResearchStudy/{key}/
        $summary`, a Group `$export`): its id, or its registry number (e.g. an NCT identifier), resolved here for
        every such URL (service/search/service.py `resolve_study`, among the studies the caller may read).
        `for_write`: on the primary (what a write is about is read where it is written, never on the replica)."""
        studies = ctx.caller.studies_for("ResearchStudy", "r")
        return await self._read(lambda s: resolve_study(s, key, studies=studies), None if for_write else ctx)

    async def read_group(self, ctx: Context, id: str) -> dict[str, Any]:
        """GET [base]/Group/{id}: the cohort of ResearchStudy/{id} (it lists Patients: `r` on Group); the study may be
        named by its registry number."""
        async def run() -> dict[str, Any]:
            access.require(ctx.caller, "Group", "r")
            nonlocal id
            id = await self.resolve_study_id(ctx, id)
            return await self._read(lambda s: groups.read_group(s, id, studies=ctx.caller.studies_for("Group", "r")),
                                    ctx)
        group = await self._audited(ctx, "read", run(), _group_facts)
        return (await self._deidentifier()).resource(group, None) if ctx.caller.deidentified else group

    async def search_groups(self, ctx: Context, params: list[tuple[str, str]]) -> bytes:
        """GET [base]/Group?params: a searchset of cohort Groups (`_id` only)."""
        async def run() -> bytes:
            access.require(ctx.caller, "Group", "s")
            return await self._read(lambda s: groups.search_groups(
                s, params, ctx.base_url, strict=ctx.strict, studies=ctx.caller.studies_for("Group", "s")), ctx)
        found = await self._audited(ctx, "search-type", run(), _groups_facts)
        return (await self._deidentifier()).bundle(found) if ctx.caller.deidentified else found

    # -- Bulk Data export --------------------------------------------------------------------------------

    async def export_kick_off(self, ctx: Context, params: list[tuple[str, str]], prefer: str | None,
                              request_url: str, *, group_id: str | None = None, level: str | None = None,
                              body: dict[str, Any] | None = None) -> str:
        """$export (system, Patient-level, or of the study's Group; `body`: a POST kick-off's Parameters, read as
        the GET's query): the queued job's id. The job is the caller's: it exports what the caller may read (`r` on
        each type, its studies), de-identified for a de-identified client."""
        if group_id is not None:
            group_id = await self.resolve_study_id(ctx, group_id, for_write=True)  # the kick-off writes a job

        async def run() -> str:
            asked = params if body is None else exports.parameters_to_params(body)
            deid = await self._deidentifier() if ctx.caller.deidentified else None
            return await self._in_write_session(lambda session: exports.kick_off(
                session, asked, prefer, request_url, group_id=group_id, caller=ctx.caller, deid=deid, level=level,
                max_attempts=self.settings.job_max_attempts))
        return await self._audited(ctx, "operation", run(), lambda job: ((), [f"ExportJob/{job}"]),
                                   operation="export", resources_named=_named("Group", group_id))

    async def export_status(self, ctx: Context, job_id: str) -> exports.JobStatus:
        """The status of an export job: queued or running (202), its manifest (200), or failed."""
        return await self._audited(ctx, "operation", self._read(lambda s: exports.job_status(
            s, job_id, exports.files_base(ctx.base_url), caller=ctx.caller)), _nothing, operation="export-status",
            resources_named=[f"ExportJob/{job_id}"])

    async def export_cancel(self, ctx: Context, job_id: str) -> None:
        """Cancel an export job and delete its files."""
        await self._audited(ctx, "operation", self._in_write_session(lambda session: exports.cancel_job(
            session, self.settings.export_dir, job_id, caller=ctx.caller)), _nothing, operation="export-cancel",
            resources_named=[f"ExportJob/{job_id}"])

    async def export_file(self, ctx: Context, job_id: str, name: str) -> Path:
        """Where one file of a completed export is (its download audited as the job's file)."""
        return await self._audited(ctx, "operation", self._read(lambda s: exports.file_path(
            s, self.settings.export_dir, job_id, name, caller=ctx.caller)), _nothing, operation="export-file",
            resources_named=[f"ExportJob/{job_id}"])

    # -- the study's figures ------------------------------------------------------------------------------

    async def _figures(self, ctx: Context, key: str, operation: str, work: Callable[[Session, str], T]) -> T:
        """`work` (on a session and the study's id) on a study's figures, the study named by its id or registry
        number, for a caller that may read what they are computed from (403 naming the scope) in that study (404
        for another study's, as for an unknown one); audited as an operation on the study (aggregates name no
        patient)."""
        study_id = await self.resolve_study_id(ctx, key)

        async def run() -> T:
            _may_read_study(ctx, study_id, access.FIGURES_READ)
            return await self._read(lambda s: work(s, study_id), ctx)
        return await self._audited(ctx, "operation", run(), _nothing, operation=operation,
                                   resources_named=_named("ResearchStudy", study_id))

    async def study_summary(self, ctx: Context, study_id: str) -> StudySummary:
        """Efficacy and safety per arm and visit."""
        return await self._figures(ctx, study_id, "summary", lambda s, sid: stats.summarize_study(
            s, sid, min_cell=self._min_cell(ctx)))

    async def study_summary_csv(self, ctx: Context, study_id: str) -> str:
        return await self._figures(ctx, study_id, "summary-csv", lambda s, sid: stats.study_summary_csv(
            s, sid, min_cell=self._min_cell(ctx)))

    async def study_measure_report(self, ctx: Context, study_id: str) -> dict[str, Any]:
        """ResearchStudy/{id}/$summary: the summary as a MeasureReport."""
        return await self._figures(ctx, study_id, "summary-measure-report",
                                   lambda s, sid: stats.study_measure_report(s, sid, min_cell=self._min_cell(ctx)))

    async def study_chart(self, ctx: Context, study_id: str, key: str) -> str:
        """One measure's or responder key's chart (SVG)."""
        return await self._figures(ctx, study_id, "chart", lambda s, sid: stats.study_chart(
            s, sid, key, min_cell=self._min_cell(ctx)))

    async def study_progress(self, ctx: Context, study_id: str) -> StudyProgress:
        """The study's data completeness per visit, adverse events by seriousness and latest result time
        (aggregates: service/stats/service.py `study_progress`), audited and limited as every figure is."""
        return await self._figures(ctx, study_id, "progress", lambda s, sid: stats.study_progress(
            s, sid, min_cell=self._min_cell(ctx)))

    async def study_report(self, ctx: Context, study_id: str) -> str:
        """The human-readable report (HTML)."""
        return await self._figures(ctx, study_id, "report", lambda s, sid: stats.study_report(
            s, sid, min_cell=self._min_cell(ctx)))

    # -- CDISC SDTM ---------------------------------------------------------------------------------------------

    async def _sdtm(self, ctx: Context, key: str, operation: str,
                    work: Callable[[Engine, str, Deidentifier | None], T]) -> T:
        """`work` (on a read engine, the study's id and the caller's de-identifier, if it gets de-identified data)
        on a study's SDTM datasets: the study named by its id or registry number, for a caller that may read every
        type they are made from (403 naming the scope) in that study (404 for another study's, as for an unknown
        one); audited as an operation on the study."""
        study_id = await self.resolve_study_id(ctx, key)

        async def run() -> T:
            _may_read_study(ctx, study_id, access.SDTM_READ)
            deid = await self._deidentifier() if ctx.caller.deidentified else None
            return await to_thread.run_sync(self.reads.run, self._read_engine(ctx),
                                            lambda engine: work(engine, study_id, deid))
        return await self._audited(ctx, "operation", run(), _nothing, operation=operation,
                                   resources_named=_named("ResearchStudy", study_id))

    async def sdtm_datasets(self, ctx: Context, key: str, standard: str = "SDTM") -> dict[str, Any]:
        """The study's SDTM (or ADaM) datasets with their record counts."""
        return await self._sdtm(ctx, key, standard.lower(), lambda engine, sid, deid: sdtm.list_datasets(
            engine, sid, standard=standard, deid=deid))

    async def sdtm_file(self, ctx: Context, key: str, name: str, out_dir: Path, standard: str = "SDTM") -> Path:
        """One SDTM (or ADaM) file of the study written into `out_dir`: `DM.json`, `DM.xpt`, …, or (SDTM)
        `define.xml`."""
        if name.lower() == "define.xml" and standard == "SDTM":
            return await self._sdtm(ctx, key, "sdtm-define", lambda engine, sid, deid: sdtm.write_define(
                engine, sid, out_dir, deid=deid))
        domain, fmt = sdtm.parse_dataset_name(name)
        return await self._sdtm(ctx, key, f"{standard.lower()}-dataset", lambda engine, sid, deid: sdtm.write_dataset(
            engine, sid, domain, fmt, out_dir, deid=deid, standard=standard))

    def _min_cell(self, ctx: Context) -> int | None:
        """k of the k-anonymous figures a de-identified client gets (cells of fewer subjects suppressed)."""
        return self.settings.deid_min_cell if ctx.caller.deidentified else None


def _everything_stages(patient_id: str) -> list[tuple[str, str, Any]]:
    """$everything's stages, in their order: (type, search mode, the subquery of the ids it shows). The Patient,
    then each exported type whose `patient_param` names a patient (the compartment, from the registry), then each
    type those reference that is not itself in the compartment (their studies: `include`)."""
    compartment = [t for t in REGISTRY if t.exported and t.patient_param]
    names = {t.name for t in compartment}
    stages: list[tuple[str, str, Any]] = []
    for stored in compartment:
        column = stored.params[cast(str, stored.patient_param)].column
        stages.append((stored.name, "match", select(stored.table.c.id).where(column == patient_id)))
    referenced: dict[str, list[Any]] = {}
    for include in INCLUDES:
        source = TYPES[include.source]
        ref = source.params[include.param]
        if include.source in names and include.target not in names and TYPES[include.target].exported \
                and ref.kind == "reference":
            holder = source.params[cast(str, source.patient_param)].column
            referenced.setdefault(include.target, []).append(select(ref.column).where(holder == patient_id))
    for stored in REGISTRY:
        if stored.name in referenced:
            held = or_(*[stored.table.c.id.in_(ids) for ids in referenced[stored.name]])
            stages.append((stored.name, "include", select(stored.table.c.id).where(held)))
    return stages


#: the parameters $everything answers (and those every FHIR request may carry)
EVERYTHING_PARAMS = frozenset({"_count", "_since", "_type", "_page", "_format"})


def _everything_params(params: Sequence[str], *, strict: bool) -> None:
    """400 for R4's `start`/`end` (care dates, not supported: ignoring them would widen the answer), and under
    `handling=strict` for any other parameter $everything does not know."""
    unsupported = [p for p in params if p in ("start", "end")]
    if unsupported:
        raise BadRequest(f"$everything does not support {', '.join(unsupported)} (care dates); use _since or _type",
                         expression=unsupported[0])
    unknown = [p for p in params if p not in EVERYTHING_PARAMS]
    if strict and unknown:
        raise BadRequest(f"Unknown $everything parameter {unknown[0]}", expression=unknown[0])


def _everything_types(types: str | None) -> frozenset[str]:
    """`_type` of $everything: the types to show (all when absent); 400 naming `_type` for a type not stored."""
    if types is None:
        return frozenset(TYPES)
    wanted = frozenset(t.strip() for t in types.split(",") if t.strip())
    unknown = sorted(t for t in wanted if t not in TYPES)
    if unknown or not wanted:
        raise BadRequest(f"_type: {', '.join(unknown) or '(empty)'} is not a type this server stores",
                         expression="_type")
    return wanted


def encode_everything_page(stage: int, last_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([stage, last_id])).decode().rstrip("=")


def decode_everything_page(page: str) -> tuple[int, str]:
    """An $everything cursor (stage, last id shown); 400 naming `_page` when it is not one this server made."""
    try:
        stage, last_id = orjson.loads(base64.urlsafe_b64decode(page + "=" * (-len(page) % 4)))
        if not (isinstance(stage, int) and isinstance(last_id, str)) or stage < 0:
            raise ValueError("not a cursor")
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadRequest("_page is not a $everything page this server made", expression="_page") from None
    return stage, last_id


def history_period(at: str | None) -> tuple[datetime, datetime] | None:
    """History `_at` (R4 http.html#history): the period [low, high) its date covers (a year, month, day or instant,
    read as date searches read them); 400 naming `_at` for what is not a FHIR date, a prefix included (`_at` is
    one point in time, of some precision)."""
    if at is None:
        return None
    try:
        return date_range(at)
    except Malformed as bad:
        raise BadRequest(f"_at: {bad}", expression="_at") from None


def _history_query(count: int, since: datetime | None, at: str | None) -> str:
    """The query of a history page's links: what the page was asked for (its cursor aside)."""
    return f"_count={count}" + (f"&_since={fhir_instant(since)}" if since else "") \
        + (f"&_at={quote(at, safe='')}" if at else "")


def _history_entry(base: str, resource_type: str, id: str, row: Any) -> dict[str, Any]:
    """One version in a history Bundle (instance, type or system history): the resource, how it was made, and its
    version."""
    return entry(f"{base}/{resource_type}/{id}", row.content,
                 request={"method": row.method, "url": resource_type if row.method == "POST"
                          else f"{resource_type}/{id}"},
                 response={"status": HISTORY_STATUS[row.method], "etag": f'W/"{row.version_id}"',
                           "lastModified": fhir_instant(row.last_updated)})


def _named(resource_type: str, id: str | None) -> list[str]:
    """The resource a request names, for its audit event: none when the URL holds no valid id (a registry number
    that named no study)."""
    return [f"{resource_type}/{id}"] if id and ID_RE.match(id) else []


def _validate_inputs(resource_type: str, body: dict[str, Any] | None, query: list[tuple[str, str]]
                     ) -> tuple[dict[str, Any] | None, str | None]:
    """$validate's resource and mode, from the body (the resource itself, or a Parameters) and the query; 400
    naming the input at fault, or a profile this server does not validate against (R4: it SHALL say so)."""
    try:
        wrapped = body is not None and body.get("resourceType") == "Parameters" and resource_type != "Parameters"
        inputs = operation_inputs(query, body if wrapped else None)
        resource: Any = single(inputs, "resource", dict)[0] if wrapped else body
        mode, _ = single(inputs, "mode")
        profile, where = single(inputs, "profile")
    except ParametersInvalid as bad:
        raise BadRequest(str(bad), expression=bad.expression) from None
    base_profile = f"http://hl7.org/fhir/StructureDefinition/{resource_type}"
    if profile is not None and str(profile).split("|")[0] != base_profile:
        raise BadRequest(f"This server validates against the base R4 profile only ({base_profile}), not "
                         f"'{profile}'", expression=where)
    return resource, mode


def _may_read_study(ctx: Context, study_id: str, types: Iterable[str]) -> None:
    """The caller may read every one of `types` (403 naming the scope), each in study `study_id` (404 for another
    study's, as for an unknown one): what a study's figures and datasets are made from."""
    types = tuple(types)
    for resource_type in types:
        access.require(ctx.caller, resource_type, "r")
    if not ctx.caller.unrestricted:
        for resource_type in types:
            studies = ctx.caller.studies_for(resource_type, "r")
            if studies is not None and study_id not in studies:
                raise NotFound(f"ResearchStudy/{study_id} is not known", expression="ResearchStudy.id")


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _stored_facts(stored: Stored) -> tuple[list[str], list[str]]:
    content = orjson.loads(stored.content) if stored.content else {}
    return patients_of(stored.resource_type, content), [stored.location]


def _bundle_facts(body: bytes) -> tuple[list[str], list[str]]:
    found = touched(body)
    return [p for _, ps in found for p in ps], [ref for ref, _ in found]


def _search_facts(result: tuple[bytes, list[str]]) -> tuple[list[str], list[str]]:
    return result[1], []  # the patients its page showed; the query names the rest


def _group_facts(group: dict[str, Any]) -> tuple[list[str], list[str]]:
    members = [m.get("entity", {}).get("reference", "") for m in group.get("member") or ()]
    return [ref.removeprefix("Patient/") for ref in members if ref.startswith("Patient/")], [f"Group/{group['id']}"]


def _groups_facts(body: bytes) -> tuple[list[str], list[str]]:
    found = orjson.loads(body)
    patients: list[str] = []
    refs: list[str] = []
    for item in found.get("entry") or ():
        if item.get("resource", {}).get("resourceType") == "Group":
            ps, rs = _group_facts(item["resource"])
            patients += ps
            refs += rs
    return patients, refs


def _nothing(_: object) -> tuple[list[str], list[str]]:
    return [], []


def _no_deidentified_writes(ctx: Context, resource_type: str | None = None) -> None:
    """A de-identified client sees pseudonyms and shifted dates only: what it wrote could not mean what it says.
    A Subscription is the exception: it names topics, studies and codes, never a patient's data."""
    if ctx.caller.deidentified and resource_type != "Subscription":
        raise Forbidden("A client registered for de-identified data can't write", expression="Authorization")
