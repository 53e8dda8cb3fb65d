"""One sync of one upstream source: pull → ingest, through the interaction core (`Core.transaction`, batch Bundles
of conditional updates, Context caller SYSTEM), so validation, unit conversion, visit assignment, identifiers and
audit are a FHIR write's.

**Search mode** (the default): for each enrolled Patient, its upstream id by identifier (`Patient?identifier=`),
then `Observation?patient=<id>&code=<the codes of the patient's studies>&_lastUpdated=ge<watermark>&_sort=
_lastUpdated`, and `AdverseEvent?subject=Patient/<id>&…` when the CapabilityStatement lists AdverseEvent, following
`next` links. Each page is stored (one batch), then the watermark (the greatest `meta.lastUpdated` of the page)
committed: an interrupted sync resumes from its last page. `ge`, not `gt`: resources that share the watermark's
instant across a page boundary would otherwise be skipped; the ones seen again are unchanged, so they make no new
version. When a server does not sort by `_lastUpdated` (the instants go down), the watermark is committed only once
the whole search is through.

**Bulk mode**: used when the operator named a Group (`--group ID`), or, in `auto` mode (the default), when the
CapabilityStatement offers Group `$export` and an upstream Group holds the matched patients. **Finding the Group**:
the Group remembered from an earlier sync is read again and kept when it still holds every matched upstream
patient; otherwise `Group?member=Patient/<upstream id>` is searched for the matched patients in turn (skipping
those a candidate already holds, stopping when one holds all), and each candidate's `member` list is checked here
(a server that ignores `member` lists every Group). The Group holding the most matched patients wins (then the one
with the fewest members: the least to download and skip); it is remembered on the source. No Group holds any of
them, or the upstream can't search Groups: this sync searches, as search mode does. **The export**:
`Group/{id}/$export?_type=Observation[,AdverseEvent]&_since=<the previous manifest's transactionTime>`, polled until
done, files streamed (NDJSON), resources of enrolled patients with their studies' codes stored in batches. The
matched patients the Group does not hold, and (with a `_since`) members whose data before it no earlier pull
brought (no watermark at or past `_since`, e.g. a patient enrolled since), are pulled by search meanwhile. Once
every file is stored: the manifest's transactionTime kept for the next `_since` (and as the watermark of the
members), then the export DELETEd. A kick-off answered 404 or 410 (the Group is gone): a remembered or found Group
is forgotten and another looked for once; a configured one, or none found: this sync searches. It never fails
the sync.

**Resuming an export**: the kick-off's status URL, with the Group, types and `_since`, is committed before the
first poll (`ehr_source.export_state`), and each file's URL once the file is wholly stored. The next sync after an
interruption (killed while polling or downloading) polls the same status URL and imports only the files not yet
recorded; a file cut off half-way is imported again from its start, which stores nothing twice (each resource is
stored by its upstream identity: an unchanged one makes no new version). An upstream that forgot the export (404
or 410 on its status URL or a file) gets a new kick-off with the same `_since`. The export is DELETEd upstream
only after its last file is stored.

**Deletions**: search mode lists the upstream ids of each patient's resources (`_elements=id`, no watermark) and
reads each of our copies missing from it: a 404 or 410 deletes our copy. Bulk mode applies the manifest's
`deleted` files (Bulk Data 2.0) when the upstream writes them. `entered-in-error` upstream is carried over as the
status of our copy (a new version).

**Refusals**: an entry the core refuses (its OperationOutcome) is counted and kept for `sync status`; the sync goes
on.
"""

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from anyio import to_thread
from sqlalchemy.engine import Engine

from fhir_mappings import ehr as mapping
from service.catalogue.compiled import catalogue_named
from service.core.context import SYSTEM, Context
from service.core.interactions import Core
from service.db import read_session, write_session
from service.ehr import repository
from service.ehr.client import EhrClient, ExportRefused, Manifest, UpstreamError, group_members, where
from service.ehr.models import EhrSourceRecord
from service.errors import FhirError
from service.jobs.runner import LeaseLost, Stopping

log = logging.getLogger("trial_fhir.ehr")
T = TypeVar("T")
#: progress(done, total, what)
Progress = Callable[[int, int, str], None]
PULLED_TYPES = ("Observation", "AdverseEvent")
PATIENTS_AT_ONCE = 4  # patients pulled concurrently (measured: bench/sync.py)


class SyncBusy(Exception):
    """Another sync of this source holds its lease."""


class SyncLost(Exception):
    """This sync's lease on its source was taken (it ran out): stop, another runs it."""


@dataclass
class SyncCounts:
    mode: str = "search"
    patients: int = 0  # enrolled patients looked for upstream
    not_found: int = 0  # not found upstream by any identifier
    ambiguous: int = 0  # several upstream Patients matched
    pages: int = 0
    pulled: int = 0  # resources received
    created: int = 0
    updated: int = 0  # a new version
    unchanged: int = 0  # the same content again: no new version
    refused: int = 0  # the core refused it (reported with its OperationOutcome)
    skipped: int = 0  # bulk: not of an enrolled patient, or not a code of their studies
    deleted: int = 0
    bulk_offered: bool = False  # searched, though the CapabilityStatement offers `$export` (see `fallback`)
    group: str | None = None  # bulk: the upstream Group exported
    group_found: str | None = None  # bulk: configured (--group), remembered (from an earlier sync) or discovered
    fallback: str | None = None  # why Bulk Data was not used though offered (or not with the first Group tried)
    by_search: int = 0  # bulk: matched patients pulled by search (not in the Group, or not yet covered by `_since`)
    kick_offs: int = 0  # bulk: exports started (2: the upstream forgot the first)
    resumed: bool = False  # bulk: an interrupted sync's export polled again
    files: int = 0  # bulk: export files imported
    files_skipped: int = 0  # bulk: export files an interrupted sync had imported already
    requests: int = 0
    seconds: float = 0.0
    by_type: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def utcnow() -> datetime:
    return datetime.now(UTC)


async def ahead(source: AsyncIterator[T]) -> AsyncIterator[T]:
    """`source`, one item ahead: the next item (the next page upstream) is fetched while the caller works on this
    one (stores it, in a worker thread), so the upstream's time and ours overlap instead of adding up."""
    iterator = source.__aiter__()
    pending: asyncio.Future[T] = asyncio.ensure_future(anext(iterator))
    try:
        while True:
            try:
                item = await pending
            except StopAsyncIteration:
                return
            pending = asyncio.ensure_future(anext(iterator))
            yield item
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending


_ENTRY = re.compile(r"^Bundle\.entry\[\d+\]\.resource(?=\.|$)")


def _as_resource(outcome: dict[str, Any], resource_type: str) -> dict[str, Any]:
    """A batch entry's OperationOutcome naming the elements of the resource itself (`Observation.valueQuantity`),
    not of the batch Bundle the sync sent it in."""
    for item in outcome.get("issue") or []:
        if isinstance(item.get("expression"), list):
            item["expression"] = [_ENTRY.sub(resource_type, e) if isinstance(e, str) else e
                                  for e in item["expression"]]
    return outcome


@dataclass
class ExportState:
    """The Bulk Data export a sync is in (`ehr_source.export_state`): committed after its kick-off and after each
    file stored, so that an interrupted sync resumes it."""

    status_url: str
    group: str
    types: list[str]
    since: str | None
    done: list[str] = field(default_factory=list)  # the URLs of the files wholly stored

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str | None) -> "ExportState | None":
        if not text:
            return None
        try:
            data = orjson.loads(text)
            return cls(status_url=str(data["status_url"]), group=str(data["group"]),
                       types=[str(t) for t in data["types"]], since=data.get("since"),
                       done=[str(u) for u in data.get("done") or []])
        except (ValueError, KeyError, TypeError):
            return None


def _instant(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Sync:
    """One sync of `source` by `holder`."""

    def __init__(self, core: Core, source: EhrSourceRecord, client: EhrClient, *, holder: str, lease_s: float = 120.0,
                 page_size: int = 100, progress: Progress | None = None,
                 heartbeat: Callable[[], None] | None = None, base_url: str = "http://localhost/fhir") -> None:
        self.core = core
        self.engine: Engine = core.engine
        self.source = source
        self.client = client
        self.holder = holder
        self.lease_s = lease_s
        self.page_size = page_size
        self.progress = progress
        self.heartbeat = heartbeat
        self.counts = SyncCounts()
        self.started = utcnow()
        self.ctx = Context(base_url, SYSTEM, request_id=f"sync:{source.name}:{int(time.time())}")
        self._kept = time.monotonic()  # the lease is taken (renewed) when the sync starts

    # -- the database, off the event loop -------------------------------------------------------------------

    async def _write(self, work: Callable[[Any], T]) -> T:
        def run() -> T:
            with write_session(self.engine) as session:
                result = work(session)
                session.commit()
                return result
        return await to_thread.run_sync(run)

    async def _read(self, work: Callable[[Any], T]) -> T:
        def run() -> T:
            with read_session(self.engine) as session:
                return work(session)
        return await to_thread.run_sync(run)

    async def _keep(self) -> None:
        """Renew the source's lease (and the job's, when a job runs this sync), at most every third of the lease
        (and 5 s): called per page and per patient, a write each time cost PostgreSQL a round trip per call."""
        now = time.monotonic()
        if now - self._kept < min(self.lease_s / 3, 5.0):
            return
        self._kept = now
        name, holder = self.source.name, self.holder
        if not await self._write(lambda s: repository.renew(s, name, holder, utcnow(), self.lease_s)):
            raise SyncLost(name)
        if self.heartbeat is not None:
            await to_thread.run_sync(self.heartbeat)

    # -- the whole sync ------------------------------------------------------------------------------------------

    async def run(self) -> SyncCounts:
        name = self.source.name
        if not await self._write(lambda s: repository.acquire(s, name, self.holder, utcnow(), self.lease_s)):
            raise SyncBusy(f"a sync of source '{name}' is running elsewhere")
        clock = time.monotonic()
        try:
            current = await self._read(lambda s: repository.get_source(s, name))
            if current is not None:  # as the previous holder of the lease left it (its export state)
                self.source = current
            previous = self.source.last_status  # an interrupted or failed sync's refusals stay until one completes
            await self._write(lambda s: self._started(s, clear=previous in (None, "completed")))
            capability = await self.client.capability()
            types = ["Observation"] + (["AdverseEvent"] if "AdverseEvent" in mapping.supported_types(capability)
                                       else [])
            enrolled, identifiers = await self._read(self._enrolled)
            offered = mapping.offers_group_export(capability)
            if self.source.group_id or (offered and self.source.pull_mode != "search"):
                await self._bulk_or_search(types, enrolled, identifiers)
            else:
                self.counts.bulk_offered = offered
                if offered:
                    self.counts.fallback = "this source's mode is search"
                await self._abandon_export()
                await self._search(types, enrolled, identifiers)
        except BaseException as exc:
            self.counts.seconds = round(time.monotonic() - clock, 3)
            self.counts.requests = self.client.requests
            if isinstance(exc, (UpstreamError, SyncLost)):
                state, error = "failed", str(exc)
            elif isinstance(exc, (Stopping, LeaseLost, KeyboardInterrupt, asyncio.CancelledError)):
                state, error = "interrupted", ("interrupted; the next sync resumes from its last stored page (or "
                                               "export file)")
            else:
                state, error = "failed", (f"an unexpected fault stopped the sync ({type(exc).__name__}); the server "
                                          "log has the details")
            await asyncio.shield(self._write(lambda s: self._ended(s, state, error)))
            raise
        self.counts.seconds = round(time.monotonic() - clock, 3)
        self.counts.requests = self.client.requests
        await self._write(lambda s: self._ended(s, "completed", None))
        return self.counts

    def _started(self, session: Any, *, clear: bool) -> None:
        if clear:
            repository.clear_issues(session, self.source.name)
        repository.record_sync(session, self.source.name, last_started=self.started, last_finished=None,
                               last_status="running", last_error=None)

    def _ended(self, session: Any, status: str, error: str | None) -> None:
        repository.record_sync(session, self.source.name, last_finished=utcnow(), last_status=status,
                               last_error=error, last_counts=orjson.dumps(self.counts.as_json()).decode())
        repository.release(session, self.source.name, self.holder)

    def _enrolled(self, session: Any) -> tuple[dict[str, set[tuple[str, str]]], dict[str, list[tuple[str, str]]]]:
        """Each enrolled patient's codes (those of every study they are enrolled in), and their identifiers."""
        codes: dict[str, set[tuple[str, str]]] = {}
        by_plan: dict[str, set[tuple[str, str]]] = {}  # each study catalogue's codes, looked up once
        for patient_id, catalogue in repository.enrolled(session):
            if catalogue not in by_plan:
                by_plan[catalogue] = {c for m in catalogue_named(session, catalogue).measures for c in m.codes}
            codes.setdefault(patient_id, set()).update(by_plan[catalogue])
        return codes, repository.identifiers_of(session, "Patient", codes)

    def _tick(self, done: int, total: int, what: str) -> None:
        if self.progress is not None:
            self.progress(done, total, what)

    async def _upstream_patients(self, enrolled: dict[str, Any], identifiers: dict[str, list[tuple[str, str]]],
                                 on_each: Callable[[str, str], Awaitable[None]] | None = None) -> dict[str, str]:
        """upstream Patient id → ours, for the enrolled patients found upstream by one of their identifiers; each
        found one handed to `on_each` (its pull), `PATIENTS_AT_ONCE` patients at a time (their watermarks are
        their own), so one patient's upstream round trips overlap another's storing."""
        found: dict[str, str] = {}
        gate = asyncio.Semaphore(PATIENTS_AT_ONCE)
        done = [0]

        async def one(patient_id: str) -> None:
            async with gate:
                self.counts.patients += 1
                upstream, matches = await self.client.find_patient(identifiers.get(patient_id, []))
                if upstream is None:
                    if matches > 1:
                        self.counts.ambiguous += 1
                        await self._report(f"Patient?identifier (our Patient/{patient_id})", {
                            "resourceType": "OperationOutcome", "issue": [{
                                "severity": "error", "code": "multiple-matches", "expression": ["Patient.identifier"],
                                "diagnostics": f"{matches} upstream Patients match the identifier of our "
                                               f"Patient/{patient_id}: none is used"}]})
                    else:
                        self.counts.not_found += 1
                else:
                    found[upstream] = patient_id
                    if on_each is not None:
                        await on_each(upstream, patient_id)
                done[0] += 1
                self._tick(done[0], len(enrolled), "patients")

        tasks = [asyncio.ensure_future(one(p)) for p in enrolled]
        try:
            await asyncio.gather(*tasks)
        finally:  # one failed (or the sync was stopped): the others stop too, their stored pages kept
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return found

    # -- ingest ----------------------------------------------------------------------------------------------------

    async def _ingest(self, resources: list[dict[str, Any]], patients: dict[str, str]) -> None:
        """Store upstream resources through the core, in one transaction Bundle (one commit: on SQLite a batch's
        commit per entry cost ~10x): each an update of our copy (found by its upstream identity, one look-up for the
        page) or a create. Not conditional updates: their search per entry made a page ~4x slower than creates
        (bench/sync.py), and the identity identifier is unique per type, so a copy made meanwhile by another writer
        fails the create instead of doubling it. When the core refuses an entry, the transaction fails and the same
        entries go again as a batch (each its own transaction), so the others are stored and each refusal is
        counted and kept with its OperationOutcome."""
        if not resources:
            return
        resources = list({(r["resourceType"], r["id"]): r for r in resources}.values())  # one entry each
        base = self.source.base_url
        wanted = {(t, mapping.upstream_system(base, t)): [r["id"] for r in resources if r["resourceType"] == t]
                  for t in {r["resourceType"] for r in resources}}

        def look_up(session: Any) -> dict[tuple[str, str], str]:
            return {(t, k): v for (t, system), ids in wanted.items()
                    for k, v in repository.owners(session, t, system, ids).items()}
        ours = await self._read(look_up)
        entries = [mapping.entry(r, base, patients, ours.get((r["resourceType"], r["id"]))) for r in resources]
        try:  # the page in one transaction (one commit); a refused entry fails it: then entry by entry (a batch)
            answer = await self.core.transaction(self.ctx, {"resourceType": "Bundle", "type": "transaction",
                                                            "entry": entries})
        except FhirError as exc:
            if exc.status_code >= 500:
                raise
            answer = await self.core.transaction(self.ctx, {"resourceType": "Bundle", "type": "batch",
                                                            "entry": entries})
        response = orjson.loads(answer)
        del answer
        self.counts.pulled += len(resources)
        for resource, item in zip(resources, response.get("entry") or [], strict=True):
            result = item.get("response") or {}
            status = str(result.get("status", ""))
            rtype = resource["resourceType"]
            self.counts.by_type[rtype] = self.counts.by_type.get(rtype, 0) + 1
            if status.startswith("201"):
                self.counts.created += 1
            elif status.startswith("200"):
                modified = _instant(result.get("lastModified"))
                if modified is not None and modified < self.started:
                    self.counts.unchanged += 1
                else:
                    self.counts.updated += 1
            else:
                await self._refused(f"{base.rstrip('/')}/{rtype}/{resource['id']}", _as_resource(
                    result.get("outcome") or {"resourceType": "OperationOutcome", "issue": [
                        {"severity": "error", "code": "processing", "diagnostics": status}]}, rtype))

    async def _refused(self, what: str, outcome: dict[str, Any]) -> None:
        self.counts.refused += 1
        await self._report(what, outcome)

    async def _report(self, what: str, outcome: dict[str, Any]) -> None:
        """Keep an issue of this sync for `sync status`."""
        text = orjson.dumps(outcome).decode()
        await self._write(lambda s: repository.add_issue(s, self.source.name, utcnow(), what, text))
        log.info("sync %s: %s not stored (%s)", self.source.name, what,
                 ", ".join(i.get("code", "?") for i in outcome.get("issue") or []))

    # -- search mode -------------------------------------------------------------------------------------------

    async def _search(self, types: list[str], enrolled: dict[str, set[tuple[str, str]]],
                      identifiers: dict[str, list[tuple[str, str]]]) -> None:
        marks = await self._read(lambda s: repository.watermarks(s, self.source.name))

        async def pull(upstream: str, patient_id: str) -> None:
            await self._pull_patient(marks, types, enrolled, upstream, patient_id)

        await self._upstream_patients(enrolled, identifiers, pull)

    async def _pull_patient(self, marks: dict[tuple[str, str], Any], types: list[str],
                            enrolled: dict[str, set[tuple[str, str]]], upstream: str, patient_id: str) -> None:
        for rtype in types:
            mark = marks.get((patient_id, rtype))
            await self._pull(rtype, upstream, patient_id, enrolled[patient_id],
                             mark.last_updated if mark is not None else None)
            await self._reconcile(rtype, upstream, patient_id, enrolled[patient_id])
        await self._keep()

    async def _search_found(self, types: list[str], enrolled: dict[str, set[tuple[str, str]]],
                            found: dict[str, str]) -> None:
        """Search mode for patients already found upstream (upstream id → ours), `PATIENTS_AT_ONCE` at a time."""
        if not found:
            return
        marks = await self._read(lambda s: repository.watermarks(s, self.source.name))
        gate = asyncio.Semaphore(PATIENTS_AT_ONCE)

        async def one(upstream: str, patient_id: str) -> None:
            async with gate:
                await self._pull_patient(marks, types, enrolled, upstream, patient_id)

        tasks = [asyncio.ensure_future(one(u, p)) for u, p in sorted(found.items())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _params(self, rtype: str, upstream: str, codes: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        if rtype == "Observation":
            return [("patient", upstream), ("code", ",".join(f"{s}|{c}" for s, c in sorted(codes)))]
        return [("subject", f"Patient/{upstream}")]

    async def _pull(self, rtype: str, upstream: str, patient_id: str, codes: set[tuple[str, str]],
                    mark: str | None) -> None:
        params = self._params(rtype, upstream, codes) + [("_sort", "_lastUpdated"), ("_count", str(self.page_size))]
        if mark:
            params.append(("_lastUpdated", f"ge{mark}"))
        high, high_at = mark, _instant(mark)
        in_order = True
        last_seen: datetime | None = None
        async for page in ahead(self.client.search(rtype, params)):
            self.counts.pages += 1
            found = [r for r in page if r.get("resourceType") == rtype and isinstance(r.get("id"), str)]
            await self._ingest(found, {upstream: patient_id})
            for resource in found:
                text = mapping.last_updated(resource)
                at = _instant(text)
                if at is None:
                    continue
                if last_seen is not None and at < last_seen:
                    in_order = False
                last_seen = at
                if high_at is None or at > high_at:
                    high, high_at = text, at
            if in_order and high != mark:
                await self._mark(patient_id, rtype, upstream, high)
            await self._keep()
        await self._mark(patient_id, rtype, upstream, high)

    async def _mark(self, patient_id: str, rtype: str, upstream: str, last_updated: str | None) -> None:
        name = self.source.name
        await self._write(lambda s: repository.set_watermark(s, name, patient_id, rtype, upstream_patient=upstream,
                                                             last_updated=last_updated, now=utcnow()))

    async def _reconcile(self, rtype: str, upstream: str, patient_id: str, codes: set[tuple[str, str]]) -> None:
        """Our copies of this patient's upstream resources that the upstream no longer lists, and answers 404 or
        410 for: deleted here too."""
        system = mapping.upstream_system(self.source.base_url, rtype)
        ours = await self._read(lambda s: repository.copies(s, system, rtype, patient_id))
        if not ours:
            return
        listed: set[str] = set()
        params = self._params(rtype, upstream, codes) + [("_elements", "id"), ("_count", "1000")]
        async for page in self.client.search(rtype, params):
            listed.update(r["id"] for r in page if isinstance(r.get("id"), str))
        for upstream_id in sorted(set(ours) - listed):
            if await self.client.read_status(rtype, upstream_id) in (404, 410):
                await self.core.delete(self.ctx, rtype, ours[upstream_id])
                self.counts.deleted += 1

    # -- bulk mode ----------------------------------------------------------------------------------------------

    async def _bulk_or_search(self, types: list[str], enrolled: dict[str, set[tuple[str, str]]],
                              identifiers: dict[str, list[tuple[str, str]]]) -> None:
        """Bulk Data from the configured Group, or the one remembered or found; search when there is none, or when
        the kick-off says the Group is gone (404, 410) and no other is found."""
        patients = await self._upstream_patients(enrolled, identifiers)
        await self._keep()
        gone: set[str] = set()
        if not patients:
            self.counts.fallback = "no enrolled patient found upstream: nothing to export"
        for _ in range(2 if patients else 0):  # a Group found gone: one more look for another
            group, held = await self._choose_group(patients, gone)
            if group is None:
                break
            try:
                await self._bulk(group, held, types, enrolled, patients)
                return
            except ExportRefused as exc:
                if exc.status not in (404, 410):
                    raise
                log.warning("sync %s: the export kick-off of Group/%s answered %s: %s", self.source.name, group,
                            exc.status, "searching" if self.source.group_id else "looking for another Group")
                self.counts.fallback = f"the export kick-off of Group/{group} answered {exc.status}"
                gone.add(group)
                if self.source.group_id:
                    break
                await self._record(discovered_group=None)
                self.source.discovered_group = None
        self.counts.mode, self.counts.group, self.counts.group_found = "search", None, None
        self.counts.bulk_offered = True
        await self._abandon_export()
        await self._search_found(types, enrolled, patients)

    async def _abandon_export(self) -> None:
        """This sync searches: an export an earlier sync left under way is deleted upstream, not resumed."""
        state = ExportState.from_json(self.source.export_state)
        if state is not None:
            await self.client.delete_export(state.status_url)
            await self._save(None)

    async def _choose_group(self, patients: dict[str, str], gone: set[str]) -> tuple[str | None, set[str]]:
        """The Group to export and the matched upstream patients it holds; (None, ∅): search them all."""
        wanted = set(patients)
        configured = self.source.group_id
        if configured:
            if configured in gone:
                return None, set()
            try:
                group = await self.client.read_group(configured)
            except UpstreamError:  # not readable here (some servers only export Groups): the operator said so
                group = {}
            if group is None:
                self.counts.fallback = f"Group/{configured} answered 404 or 410"
                return None, set()
            members = group_members(group)
            self.counts.group_found = "configured"
            return configured, (members & wanted) if group.get("member") else wanted
        remembered = self.source.discovered_group
        if remembered and remembered not in gone:
            try:
                group = await self.client.read_group(remembered)
            except UpstreamError:
                group = None
            if group is not None and wanted <= group_members(group):
                self.counts.group_found = "remembered"
                return remembered, wanted
        chosen, held = await self._discover(wanted, gone)
        if chosen != remembered:
            await self._record(discovered_group=chosen)
        self.source.discovered_group = chosen
        if chosen is not None:
            self.counts.group_found = "discovered"
        return chosen, held

    async def _discover(self, wanted: set[str], gone: set[str]) -> tuple[str | None, set[str]]:
        """`Group?member=Patient/<id>` for the matched upstream patients in turn (those a candidate already holds
        are skipped; stop when one holds all), each candidate's members checked here."""
        if not wanted:
            return None, set()
        candidates: dict[str, tuple[set[str], int]] = {}  # id → (matched patients it holds, its member count)
        try:
            for upstream in sorted(wanted):
                if any(upstream in held for held, _ in candidates.values()):
                    continue
                for group in await self.client.groups_with(upstream):
                    gid = group["id"]
                    if gid in candidates or gid in gone:
                        continue
                    if "member" not in group:  # listed in a summary: read it whole
                        group = await self.client.read_group(gid) or {}
                    members = group_members(group)
                    candidates[gid] = (members & wanted, len(members))
                if any(held == wanted for held, _ in candidates.values()):
                    break
                await self._keep()
        except UpstreamError as exc:
            log.info("sync %s: no Group search upstream (%s): searching", self.source.name, exc)
            self.counts.fallback = self.counts.fallback or f"the upstream's Group search failed ({exc})"
            return None, set()
        ranked = sorted(((-len(held), size, gid) for gid, (held, size) in candidates.items() if held))
        if not ranked:
            self.counts.fallback = self.counts.fallback or "no upstream Group holds a matched patient"
            return None, set()
        gid = ranked[0][2]
        return gid, candidates[gid][0]

    async def _record(self, **values: Any) -> None:
        """Set columns of the source while this sync holds its lease (else it stops: another runs it)."""
        name, holder = self.source.name, self.holder
        if not await self._write(lambda s: repository.record_held(s, name, holder, **values)):
            raise SyncLost(name)

    async def _save(self, state: ExportState | None) -> None:
        text = state.to_json() if state is not None else None
        await self._record(export_state=text)
        self.source.export_state = text

    async def _kick_off(self, group: str, types: list[str], since: str | None) -> ExportState:
        try:
            status_url = await self.client.kick_off_export(group, types, since)
        except ExportRefused:
            await self._save(None)
            raise
        self.counts.kick_offs += 1
        state = ExportState(status_url=status_url, group=group, types=list(types), since=since)
        await self._save(state)  # before the first poll: a sync killed from here on polls it again
        return state

    async def _bulk(self, group: str, held: set[str], types: list[str], enrolled: dict[str, set[tuple[str, str]]],
                    patients: dict[str, str]) -> None:
        self.counts.mode, self.counts.group = "bulk", group
        state = ExportState.from_json(self.source.export_state)
        if state is not None and (state.group != group or state.types != types):
            log.info("sync %s: the interrupted export of Group/%s is not this one's: deleted", self.source.name,
                     state.group)
            await self._abandon_export()
            state = None
        since = state.since if state is not None else self.source.transaction_time
        marks = await self._read(lambda s: repository.watermarks(s, self.source.name))
        since_at = _instant(since)

        def covered(patient_id: str) -> bool:
            if since_at is None:
                return True
            for rtype in types:
                mark = marks.get((patient_id, rtype))
                at = _instant(mark.last_updated) if mark is not None else None
                if at is None or at < since_at:
                    return False
            return True

        by_search = {u: p for u, p in patients.items() if u not in held or not covered(p)}
        if state is None:
            state = await self._kick_off(group, types, since)
        else:
            self.counts.resumed = True
            log.info("sync %s: resuming the export at %s (%d files stored)", self.source.name,
                     where(state.status_url), len(state.done))
        self.counts.by_search = len(by_search)
        await self._search_found(types, enrolled, by_search)  # while the upstream prepares the export
        await self._keep()
        restarted = False
        while True:
            try:
                manifest = await self.client.wait_for_export(state.status_url, keep=self._keep)
                await self._import(state, manifest, types, patients, enrolled)
                break
            except ExportRefused:
                raise
            except UpstreamError as exc:
                if exc.status not in (404, 410) or restarted:
                    raise
                restarted = True  # the upstream forgot the export (or its files): again, from the same `_since`
                log.warning("sync %s: the upstream forgot its export (%s): kicking off again", self.source.name, exc)
                state = await self._kick_off(group, types, state.since)
        time_ = manifest.transaction_time
        members = sorted((p, u) for u, p in patients.items() if u in held)
        name, holder = self.source.name, self.holder

        def finish(session: Any) -> bool:
            if not repository.record_held(session, name, holder, transaction_time=time_, export_state=None):
                return False
            for patient_id, upstream in members:  # what the export brought: their data up to its transactionTime
                for rtype in types:
                    repository.set_watermark(session, name, patient_id, rtype, upstream_patient=upstream,
                                             last_updated=time_, now=utcnow())
            return True
        if not await self._write(finish):
            raise SyncLost(name)
        self.source.export_state, self.source.transaction_time = None, time_
        await self.client.delete_export(state.status_url)  # every file is stored: the upstream may drop them

    async def _import(self, state: ExportState, manifest: Manifest, types: list[str], patients: dict[str, str],
                      enrolled: dict[str, set[tuple[str, str]]]) -> None:
        """Store the files of the manifest that `state` does not list as stored, recording each once stored."""
        files = ([("output", t, u) for t, u in manifest.output if t in types]
                 + [("error", t, u) for t, u in manifest.error] + [("deleted", t, u) for t, u in manifest.deleted])
        for n, (kind, rtype, url) in enumerate(files, 1):
            if url in state.done:
                self.counts.files_skipped += 1
                continue
            if kind == "output":
                await self._import_file(rtype, url, manifest.requires_token, patients, enrolled)
            elif kind == "error":
                async for problem in self.client.ndjson(url, requires_token=manifest.requires_token):
                    await self._refused(f"{self.source.base_url.rstrip('/')} export error", problem)
            else:
                async for gone in self.client.ndjson(url, requires_token=manifest.requires_token):
                    for item in gone.get("entry") or []:
                        target = mapping.parse_reference(str((item.get("request") or {}).get("url", "")))
                        if target is not None and target[0] in PULLED_TYPES:
                            removed = await self.core.conditional_delete(
                                self.ctx, target[0], mapping.identity_query(self.source.base_url, *target))
                            self.counts.deleted += len(removed)
            state.done.append(url)
            await self._save(state)
            self.counts.files += 1
            self._tick(n, len(files), "export files")

    async def _import_file(self, rtype: str, url: str, requires_token: bool, patients: dict[str, str],
                           enrolled: dict[str, set[tuple[str, str]]]) -> None:
        batch: list[dict[str, Any]] = []
        async for resource in self.client.ndjson(url, requires_token=requires_token):
            if resource.get("resourceType") != rtype or not isinstance(resource.get("id"), str):
                continue
            if not self._wanted(resource, patients, enrolled):
                self.counts.skipped += 1
                continue
            batch.append(resource)
            if len(batch) >= self.page_size:
                await self._ingest(batch, patients)
                self.counts.pages += 1
                batch = []
                await self._keep()
        await self._ingest(batch, patients)
        self.counts.pages += 1

    @staticmethod
    def _wanted(resource: dict[str, Any], patients: dict[str, str], enrolled: dict[str, set[tuple[str, str]]]) -> bool:
        """Of an enrolled patient found upstream, and (Observations) coded with one of their studies' codes."""
        reference = (resource.get("subject") or {}).get("reference")
        target = mapping.parse_reference(reference) if isinstance(reference, str) else None
        if target is None or target[0] != "Patient" or target[1] not in patients:
            return False
        if resource["resourceType"] != "Observation":
            return True
        codes = enrolled[patients[target[1]]]
        return any((c.get("system"), c.get("code")) in codes for c in (resource.get("code") or {}).get("coding") or [])
