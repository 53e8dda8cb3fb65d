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

**Bulk mode** (`--group ID`): `Group/{id}/$export?_type=Observation[,AdverseEvent]&_since=<the previous manifest's
transactionTime>`, polled until done, files streamed (NDJSON), resources of enrolled patients with their studies'
codes stored in batches, the manifest's transactionTime kept for the next `_since` once every file is stored, the
export DELETEd. Interrupted, the next sync exports again from the same `_since` (idempotent: no gap, no duplicate).

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
from service.ehr.client import EhrClient, UpstreamError
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
    bulk_offered: bool = False  # search mode, though the CapabilityStatement offers `$export` (add --group to use it)
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
            previous = self.source.last_status  # an interrupted or failed sync's refusals stay until one completes
            await self._write(lambda s: self._started(s, clear=previous in (None, "completed")))
            capability = await self.client.capability()
            types = ["Observation"] + (["AdverseEvent"] if "AdverseEvent" in mapping.supported_types(capability)
                                       else [])
            enrolled, identifiers = await self._read(self._enrolled)
            if self.source.group_id:
                self.counts.mode = "bulk"
                await self._bulk(types, enrolled, identifiers)
            else:
                self.counts.bulk_offered = mapping.offers_group_export(capability)
                await self._search(types, enrolled, identifiers)
        except BaseException as exc:
            self.counts.seconds = round(time.monotonic() - clock, 3)
            self.counts.requests = self.client.requests
            if isinstance(exc, (UpstreamError, SyncLost)):
                state, error = "failed", str(exc)
            elif isinstance(exc, (Stopping, LeaseLost, KeyboardInterrupt, asyncio.CancelledError)):
                state, error = "interrupted", "interrupted; the next sync resumes from its last stored page"
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
            for rtype in types:
                mark = marks.get((patient_id, rtype))
                await self._pull(rtype, upstream, patient_id, enrolled[patient_id],
                                 mark.last_updated if mark is not None else None)
                await self._reconcile(rtype, upstream, patient_id, enrolled[patient_id])
            await self._keep()

        await self._upstream_patients(enrolled, identifiers, pull)

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

    async def _bulk(self, types: list[str], enrolled: dict[str, set[tuple[str, str]]],
                    identifiers: dict[str, list[tuple[str, str]]]) -> None:
        patients = await self._upstream_patients(enrolled, identifiers)
        await self._keep()
        assert self.source.group_id is not None
        status_url = await self.client.kick_off_export(self.source.group_id, types, self.source.transaction_time)
        manifest = await self.client.wait_for_export(status_url, keep=self._keep)
        await self._keep()
        files = [(t, u) for t, u in manifest.output if t in types]
        for n, (rtype, url) in enumerate(files, 1):
            batch: list[dict[str, Any]] = []
            async for resource in self.client.ndjson(url, requires_token=manifest.requires_token):
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
            self._tick(n, len(files), f"{rtype} files")
        for _, url in manifest.error:
            async for problem in self.client.ndjson(url, requires_token=manifest.requires_token):
                await self._refused(f"{self.source.base_url.rstrip('/')} export error", problem)
        for _, url in manifest.deleted:
            async for gone in self.client.ndjson(url, requires_token=manifest.requires_token):
                for item in gone.get("entry") or []:
                    target = mapping.parse_reference(str((item.get("request") or {}).get("url", "")))
                    if target is not None and target[0] in PULLED_TYPES:
                        removed = await self.core.conditional_delete(
                            self.ctx, target[0], mapping.identity_query(self.source.base_url, *target))
                        self.counts.deleted += len(removed)
        time_ = manifest.transaction_time
        await self._write(lambda s: repository.record_sync(s, self.source.name, transaction_time=time_))
        await self.client.delete_export(status_url)

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
