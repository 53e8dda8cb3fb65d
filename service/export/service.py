"""Bulk Data export (HL7 Bulk Data Access IG v2): kick-off, status, cancel, and the export itself.

A kick-off stores a job (`export_job`) and returns at once; a worker (service.export.worker, in any replica)
claims it and streams each type's stored JSON text, in one consistent read snapshot, into
`<export_dir>/<job id>/<Type>.ndjson`. Status, manifest, files and cancellation are answered from the
database and the shared folder, so any replica can serve them.

Failure handling: a worker heart-beats its job every `HEARTBEAT_S`; a running job whose heartbeat is older
than `settings.export_stale_after_s` (its worker crashed or was killed) is marked failed by the next
worker that looks, and its status answers 500 with an OperationOutcome saying so. A worker that is stopped
cleanly (app shutdown) puts its running job back in the queue. Nothing is lost silently.
"""

import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fhir_mappings.dates import fhir_instant
from fhir_mappings.group import study_id_for_group
from fhir_mappings.search import IGNORED_PARAMS, RESULT_PARAMS, Criterion, parse_search
from service.core.context import SYSTEM, Caller
from service.core.registry import REGISTRY, search_spec
from service.db import snapshot_connection
from service.deid.deidentify import Deidentifier
from service.deid.service import resolve_pseudonym
from service.errors import BadRequest, FhirError, Forbidden, NotFound
from service.export import repository
from service.export.repository import Selection
from service.group import repository as groups

log = logging.getLogger("trial_fhir.export")

OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
NDJSON = "application/fhir+ndjson"
HEARTBEAT_S = 1.0
UNSUPPORTED = {"patient": "the patient parameter (POST kick-off) is not supported; export a Group instead",
               "_elements": "_elements is not supported: files hold whole resources",
               "includeAssociatedData": "includeAssociatedData is not supported",
               "organizeOutputBy": "organizeOutputBy is not supported: one file per resource type",
               "allowPartialManifests": "partial manifests are not supported"}
_FILTER_SPLIT = re.compile(r",(?=[A-Z][A-Za-z]+\?)")
#: every stored type that is exported (not the audit trail), in the registry's order
EXPORT_TYPES = tuple(t.name for t in REGISTRY if t.exported)


class ExportFailed(FhirError):
    """The export job failed on the server (status request of a failed job)."""

    status_code, issue_code = 500, "exception"


class Cancelled(Exception):
    """The job was cancelled (DELETE) or taken from this worker while it ran."""


class Stopping(Exception):
    """This worker is shutting down: the job goes back to the queue."""


def utcnow() -> datetime:
    return datetime.now(UTC)


# -- the request --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportSpec:
    """What one export writes: the study (Group export) or everything, which types, since when, filtered."""

    group_id: str | None = None
    types: tuple[str, ...] = EXPORT_TYPES
    since: datetime | None = None
    type_filters: dict[str, list[list[tuple[str, str]]]] = field(default_factory=dict)
    output_format: str = NDJSON

    def to_json(self) -> str:
        return orjson.dumps({"group_id": self.group_id, "types": list(self.types),
                             "since": self.since.isoformat() if self.since else None,
                             "type_filters": self.type_filters, "output_format": self.output_format}).decode()

    @classmethod
    def from_json(cls, text: str) -> "ExportSpec":
        data = orjson.loads(text)
        return cls(group_id=data["group_id"], types=tuple(data["types"]),
                   since=datetime.fromisoformat(data["since"]) if data["since"] else None,
                   type_filters={t: [[tuple(p) for p in f] for f in fs] for t, fs in data["type_filters"].items()},
                   output_format=data["output_format"])

    def selections(self, studies: dict[str, list[str] | None] | None = None) -> list[Selection]:
        """One Selection per type; `studies`: per type, the studies the client may see (None or a missing type:
        not limited)."""
        study = study_id_for_group(self.group_id) if self.group_id else None
        limits = studies or {}
        return [Selection(t, study, self.since,
                          tuple(tuple(filter_criteria(t, f)) for f in self.type_filters.get(t, ())),
                          None if limits.get(t) is None else tuple(limits[t] or ()))
                for t in self.types]


def filter_criteria(resource_type: str, params: list[tuple[str, str]], text: str | None = None) -> list[Criterion]:
    """One `_typeFilter` query (`params`, for `resource_type`) read as the search it is: by the search's own parser,
    so it selects what `GET [base]/<type>?<query>` finds. 400 naming `_typeFilter` for whatever a search would
    ignore (an unknown or malformed parameter, a modifier not supported) and for result parameters (`_count`,
    `_sort`, …), which don't filter: the export is never silently wider than asked."""
    what = f"_typeFilter '{text or resource_type + '?' + urlencode(params)}'"
    for name, _ in params:
        if name in RESULT_PARAMS or name in IGNORED_PARAMS:
            raise BadRequest(f"{what}: {name} is not a search filter", expression="_typeFilter")
    req = parse_search(search_spec(resource_type), params)
    problems = req.errors + req.warnings
    if problems:
        raise BadRequest(f"{what}: {problems[0].diagnostics}", expression="_typeFilter")
    return req.criteria


def parse_since(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise BadRequest(f"_since must be a FHIR instant such as 2024-01-10T00:00:00Z, got '{value}'",
                         expression="_since") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_export_request(params: list[tuple[str, str]], prefer: str | None, group_id: str | None,
                         caller: Caller = SYSTEM) -> ExportSpec:
    """The kick-off's parameters as an ExportSpec; 400 (OperationOutcome naming the parameter) when the
    request can't be honoured exactly. The types are those the caller may read (`r`): a `_type` naming another
    is a 403 naming the scope it lacks; without `_type`, every type it may read (Bulk Data: export what the
    client can access), 403 when there is none."""
    if "respond-async" not in (prefer or "").replace(" ", "").lower():
        raise BadRequest("$export runs asynchronously: send the header 'Prefer: respond-async'", expression="Prefer")
    types: list[str] | None = None
    since = None
    output_format = NDJSON
    raw_filters: list[str] = []
    for name, value in params:
        if name == "_type":
            wanted = [t.strip() for t in value.split(",") if t.strip()]
            unknown = [t for t in wanted if t not in EXPORT_TYPES]
            if unknown:
                raise BadRequest(f"_type: {', '.join(unknown)} can't be exported; this server exports "
                                 f"{', '.join(EXPORT_TYPES)}", expression="_type")
            types = (types or []) + [t for t in wanted if t not in (types or [])]
        elif name == "_since":
            since = parse_since(value)
        elif name == "_outputFormat":
            if value not in OUTPUT_FORMATS:
                raise BadRequest(f"_outputFormat '{value}' is not supported: use {', '.join(OUTPUT_FORMATS)}",
                                 expression="_outputFormat")
            output_format = value
        elif name == "_typeFilter":
            raw_filters += [f for f in _FILTER_SPLIT.split(value) if f]
        elif name in ("_format",):
            continue
        elif name in UNSUPPORTED:
            raise BadRequest(UNSUPPORTED[name], expression=name)
        else:
            raise BadRequest(f"Unknown $export parameter '{name}'; supported: _type, _since, _typeFilter, "
                             "_outputFormat", expression=name)
    denied = [t for t in (types or ()) if not caller.may(t, "r")]
    if denied:
        raise Forbidden(f"_type names {', '.join(denied)}, which this client may not read: it lacks "
                        f"{', '.join(f'system/{t}.r' for t in denied)}", expression="_type")
    chosen = tuple(t for t in EXPORT_TYPES if (types is None or t in types) and caller.may(t, "r"))
    if not chosen:
        raise Forbidden("This client may read no resource type (no system/<type>.r scope): nothing to export",
                        expression="_type")
    filters: dict[str, list[list[tuple[str, str]]]] = {}
    for text in raw_filters:
        rtype, sep, query = text.partition("?")
        if not sep or rtype not in EXPORT_TYPES:
            raise BadRequest(f"_typeFilter '{text}' must look like Observation?code=…, for one of "
                             f"{', '.join(EXPORT_TYPES)}", expression="_typeFilter")
        if rtype not in chosen:
            raise BadRequest(f"_typeFilter names {rtype}, which _type does not include", expression="_typeFilter")
        pairs = parse_qsl(query, keep_blank_values=True)
        filter_criteria(rtype, pairs, text)  # fail now (400), not in the worker
        filters.setdefault(rtype, []).append(pairs)
    return ExportSpec(group_id=group_id, types=chosen, since=since, type_filters=filters, output_format=output_format)


def files_base(fhir_base: str) -> str:
    """Where export files are served: `/export-files` beside the FHIR base (`…/fhir` -> `…/export-files`)."""
    root = fhir_base[:-len("/fhir")] if fhir_base.endswith("/fhir") else fhir_base
    return f"{root}/export-files"


# -- kick-off, status, cancel, files -----------------------------------------------------------------------

def kick_off(session: Session, params: list[tuple[str, str]], prefer: str | None, request_url: str, *,
             group_id: str | None = None, caller: Caller = SYSTEM, deid: Deidentifier | None = None) -> str:
    """Queue an export for `caller`; the job id. 404 for an unknown Group (or one of a study the client is not
    registered for), 400 for a request that can't be honoured, 403 for a type the caller may not read.

    The job belongs to the caller: its client id, whether it had a token (the manifest's requiresAccessToken),
    whether it sees de-identified data, and the studies it may see of each type are stored with the job, so the
    worker writes what this client may see and only this client sees the job. A de-identified client's
    `_typeFilter`s name patients by pseudonym: they are translated with `deid` (required then)."""
    spec = parse_export_request(params, prefer, group_id, caller)
    if group_id is not None:
        study = study_id_for_group(group_id)
        if (caller.studies is not None and study not in caller.studies) or not groups.find_studies(session, [study]):
            raise NotFound(f"Group/{group_id} is not known", expression="Group.id")
    if caller.deidentified and spec.type_filters:
        if deid is None:
            raise BadRequest("_typeFilter is not available to this de-identified client", expression="_typeFilter")
        spec = ExportSpec(group_id=spec.group_id, types=spec.types, since=spec.since, output_format=spec.output_format,
                          type_filters={t: [deid.translate_params(f, t, lambda p: resolve_pseudonym(session, deid, p))
                                            for f in fs] for t, fs in spec.type_filters.items()})
    limits = {t: caller.studies_for(t, "r") for t in spec.types}
    studies = {t: sorted(s) for t, s in limits.items() if s is not None}
    job_id = str(uuid.uuid4())
    repository.add_job(session, {"id": job_id, "status": "queued", "group_id": group_id, "spec": spec.to_json(),
                                 "request": request_url, "created_at": utcnow(), "progress": "queued",
                                 "client_id": caller.name, "restricted": caller.scopes is not None,
                                 "deidentified": caller.deidentified,
                                 "studies": orjson.dumps(studies).decode() if studies else None})
    session.commit()
    return job_id


def _owned_job(session: Session, job_id: str, caller: Caller):
    """The job, when it is the caller's (or the caller is unrestricted); else None: another client's job is
    answered as if it did not exist (404), never 403, which would confirm it does."""
    job = repository.get_job(session, job_id)
    if job is None or caller.unrestricted or (job.client_id is not None and job.client_id == caller.name):
        return job
    return None


@dataclass
class JobStatus:
    status_code: int
    body: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)


def job_status(session: Session, job_id: str, files_base: str, caller: Caller = SYSTEM) -> JobStatus:
    """202 + X-Progress while queued or running, 200 + manifest when complete; failed → ExportFailed (500).
    404 for another client's job. `requiresAccessToken` is true when a token client started the job: its files
    are served to that client only."""
    job = _owned_job(session, job_id, caller)
    if job is None or job.status == "cancelled":
        raise NotFound(f"No export job '{job_id}' (finished jobs expire; cancelled ones are removed)",
                       expression="job")
    if job.status in ("queued", "running"):
        return JobStatus(202, headers={"X-Progress": job.progress or job.status, "Retry-After": "1"})
    if job.status == "failed":
        raise ExportFailed(f"The export failed: {job.error}", expression="job")
    outputs = orjson.loads(job.output or "[]")
    manifest = {
        "transactionTime": fhir_instant(job.transaction_time),
        "request": job.request,
        "requiresAccessToken": bool(job.restricted),
        "output": [{"type": o["type"], "url": f"{files_base}/{job_id}/{o['file']}", "count": o["count"]}
                   for o in outputs],
        "error": [],
    }
    expires = (job.finished_at or utcnow())
    return JobStatus(200, manifest, headers={"X-Progress": "complete",
                                             "Last-Modified": expires.strftime("%a, %d %b %Y %H:%M:%S GMT")})


def cancel_job(session: Session, export_dir: Path, job_id: str, caller: Caller = SYSTEM) -> None:
    """DELETE the status URL: stop the job and remove its files (a running job is stopped by its worker
    at its next heartbeat, which removes whatever it wrote since). 404 for another client's job."""
    job = _owned_job(session, job_id, caller)
    if job is None or job.status == "cancelled":
        raise NotFound(f"No export job '{job_id}'", expression="job")
    if job.status == "running":
        from sqlalchemy import update
        session.execute(update(repository.J).where(repository.J.c.id == job_id).values(status="cancelled"))
    else:
        repository.delete_job(session, job_id)
    session.commit()
    remove_files(export_dir, job_id)


def remove_files(export_dir: Path, job_id: str) -> None:
    shutil.rmtree(Path(export_dir) / job_id, ignore_errors=True)


def file_path(session: Session, export_dir: Path, job_id: str, name: str, caller: Caller = SYSTEM) -> Path:
    """Where one file of a completed export is; 404 for another client's job."""
    job = _owned_job(session, job_id, caller)
    if job is None or job.status != "completed":
        raise NotFound(f"No completed export job '{job_id}'", expression="job")
    if name not in {o["file"] for o in orjson.loads(job.output or "[]")}:
        raise NotFound(f"Export job '{job_id}' has no file '{name}'", expression="file")
    path = Path(export_dir) / job_id / name
    if not path.is_file():
        raise NotFound(f"The file '{name}' of export job '{job_id}' is gone (expired or removed)",
                       expression="file")
    return path


# -- the export itself -------------------------------------------------------------------------------------

Progress = Callable[[str, int, int], None]  # (type, rows written of that type, estimated rows of that type)


def write_export(engine: Engine, spec: ExportSpec, out_dir: Path, *, batch: int = 2000,
                 progress: Progress | None = None, on_start: Callable[[dict[str, int]], None] | None = None,
                 studies: dict[str, list[str] | None] | None = None, deid: Deidentifier | None = None
                 ) -> tuple[datetime, list[dict]]:
    """Stream each type's stored JSON into `out_dir/<Type>.ndjson`, in one read snapshot (REPEATABLE READ
    on PostgreSQL, one read transaction on SQLite), `batch` rows at a time from a server-side cursor, so
    memory stays flat whatever the size. Returns (transaction time, [{type, file, count, bytes}]) for
    the types that have resources. `progress` may raise to stop the export. `studies`: per type, the only
    studies whose resources are written (the client's); `deid`: write each resource de-identified (with the
    patient it is about) instead of as stored."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    with snapshot_connection(engine) as conn:
        transaction_time = utcnow()
        selections = spec.selections(studies)
        totals = {s.resource_type: conn.execute(repository.estimate_query(s)).scalar_one() for s in selections}
        if on_start:
            on_start(totals)
        for sel in selections:
            rtype = sel.resource_type
            path = out_dir / f"{rtype}.ndjson"
            count = size = 0
            with open(path, "wb", buffering=1 << 20) as out:
                for chunk in repository.stream_contents(conn, sel, batch):
                    if deid is not None:
                        data = b"".join(deid.content(text) + b"\n" for text in chunk)
                    else:
                        data = ("\n".join(chunk) + "\n").encode()
                    out.write(data)
                    count += len(chunk)
                    size += len(data)
                    if progress:
                        progress(rtype, count, max(count, totals[rtype]))
            if count:
                outputs.append({"type": rtype, "file": path.name, "count": count, "bytes": size})
            else:
                path.unlink()
            if progress:
                progress(rtype, count, count)
    return transaction_time, outputs


def run_job(engine: Engine, export_dir: Path, job_id: str, worker: str, *, stop=None, batch: int = 2000,
            deid: Deidentifier | Callable[[], Deidentifier] | None = None) -> str:
    """Run one claimed job to its end; the final status (completed, failed, cancelled or queued). A
    de-identified job needs `deid` (or a function making it): without one it fails rather than write
    identified data."""
    with Session(engine) as session:
        job = repository.get_job(session, job_id)
    spec = ExportSpec.from_json(job.spec)
    studies = orjson.loads(job.studies) if job.studies else None
    out_dir = Path(export_dir) / job_id
    last = [0.0]

    def beat(text: str) -> None:
        with Session(engine.execution_options(write=True)) as s:
            if not repository.beat(s, job_id, worker, utcnow(), text):
                raise Cancelled(job_id)

    def progress(rtype: str, done: int, total: int) -> None:
        if stop is not None and stop.is_set():
            raise Stopping(job_id)
        now = time.monotonic()
        if now - last[0] >= HEARTBEAT_S:
            last[0] = now
            pct = int(100 * done / total) if total else 100
            beat(f"running: {rtype} {pct}% ({done}/{total} resources)")

    try:
        deidentify = None
        if job.deidentified:
            if deid is None:
                raise RuntimeError("the job is de-identified and this worker has no de-identifier")
            deidentify = deid if isinstance(deid, Deidentifier) else deid()
        transaction_time, outputs = write_export(
            engine, spec, out_dir, batch=batch, progress=progress, studies=studies, deid=deidentify,
            on_start=lambda totals: beat(f"running: {sum(totals.values())} resources to write"))
    except Cancelled:
        log.info("export %s cancelled", job_id)
        return _drop(engine, export_dir, job_id)
    except Stopping:
        remove_files(export_dir, job_id)
        with Session(engine.execution_options(write=True)) as s:
            repository.requeue_job(s, job_id, worker)
        return "queued"
    except Exception as exc:  # noqa: BLE001 — the job records why it failed; the worker goes on
        log.exception("export %s failed", job_id)
        remove_files(export_dir, job_id)
        with Session(engine.execution_options(write=True)) as s:
            repository.finish_job(s, job_id, worker, {"status": "failed", "finished_at": utcnow(),
                                                      "error": f"{type(exc).__name__}: {exc}"[:2000]})
        return "failed"
    with Session(engine.execution_options(write=True)) as s:
        done = repository.finish_job(s, job_id, worker, {
            "status": "completed", "finished_at": utcnow(), "transaction_time": transaction_time,
            "progress": "complete", "output": orjson.dumps(outputs).decode()})
    if not done:  # cancelled after the last heartbeat
        return _drop(engine, export_dir, job_id)
    return "completed"


def _drop(engine: Engine, export_dir: Path, job_id: str) -> str:
    remove_files(export_dir, job_id)
    with Session(engine.execution_options(write=True)) as s:
        job = repository.get_job(s, job_id)
        if job is not None and job.status == "cancelled":
            repository.delete_job(s, job_id)
        s.commit()
    return "cancelled"


def housekeeping(engine: Engine, export_dir: Path, *, stale_after_s: float, retention_s: float) -> None:
    """Fail jobs whose worker died, finish cancellations nobody is running, expire old jobs and files."""
    now = utcnow()
    with Session(engine.execution_options(write=True)) as s:
        for job_id in repository.fail_stale(s, now - timedelta(seconds=stale_after_s), now):
            log.warning("export %s failed: no heartbeat for %ss (its worker stopped)", job_id, stale_after_s)
            remove_files(export_dir, job_id)
        for job_id in repository.find_cancelled(s):
            job = repository.get_job(s, job_id)
            if job.heartbeat is None or job.heartbeat < now - timedelta(seconds=stale_after_s):
                repository.delete_job(s, job_id)
                remove_files(export_dir, job_id)
        for job_id in repository.find_expired(s, now - timedelta(seconds=retention_s)):
            repository.delete_job(s, job_id)
            remove_files(export_dir, job_id)
        s.commit()
