"""Bulk Data export (HL7 Bulk Data Access IG v2): kick-off, status, cancel, and the export itself.

A kick-off stores a job (`export_job`) and returns at once; a worker (service.export.worker, in any replica)
claims it and streams each type's stored JSON text, in one consistent read snapshot, into
`<export_dir>/<job id>/<Type>.ndjson`. Status, manifest, files and cancellation are answered from the
database and the shared folder, so any replica can serve them.

Failure handling: the export runs as a durable job of kind `export` (service/jobs: the job has the export's id) whose
worker holds a lease it renews as it writes. A worker that dies (killed, crashed, hung) stops renewing; once the
lease runs out any worker puts the job back in the queue and runs the export again from the start, in a new read
snapshot, into a folder of its own (`<job id>.part-<attempt>`); the run that completes publishes its folder as
`<job id>` in the transaction that completes the job, and removes what dead runs left. So the manifest lists what
that one snapshot held, each resource once, and its `transactionTime` is that snapshot's (the kick-off promises no
time: a client reads it from the manifest). After `settings.job_max_attempts` lost runs the export fails, and its
status answers 500 with an OperationOutcome saying so. A worker that is stopped cleanly (app shutdown) puts its job
back in the queue. Nothing is lost silently.
"""

import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fhir_mappings.dates import fhir_instant
from fhir_mappings.group import study_id_for_group
from fhir_mappings.outcome import Issue, issue, outcome
from fhir_mappings.references import ID_RE
from fhir_mappings.search import (
    IGNORED_PARAMS,
    OUT_OF_RANGE,
    RESULT_PARAMS,
    Criterion,
    element_names,
    parse_search,
    subset,
)
from service.core.context import SYSTEM, Caller, prefers
from service.core.registry import REGISTRY, TYPES, search_spec
from service.db import snapshot_connection
from service.deid.deidentify import Deidentifier
from service.deid.service import resolve_pseudonym
from service.errors import BadRequest, FhirError, Forbidden, NotFound
from service.export import repository
from service.export.repository import Selection
from service.group import repository as groups
from service.jobs import runner as jobs
from service.jobs.runner import Done, JobContext, Stopping

log = logging.getLogger("trial_fhir.export")
T = TypeVar("T")

OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
NDJSON = "application/fhir+ndjson"
#: the kind of the export jobs (service/jobs)
KIND = "export"
UNSUPPORTED = {"includeAssociatedData": "includeAssociatedData is not supported",
               "organizeOutputBy": "organizeOutputBy is not supported: one file per resource type",
               "allowPartialManifests": "partial manifests are not supported"}
_FILTER_SPLIT = re.compile(r",(?=[A-Z][A-Za-z]+\?)")
#: every stored type that is exported (not the audit trail), in the registry's order
EXPORT_TYPES = tuple(t.name for t in REGISTRY if t.exported)


class ExportFailed(FhirError):
    """The export job failed on the server (status request of a failed job)."""

    status_code, issue_code = 500, "exception"


def utcnow() -> datetime:
    return datetime.now(UTC)


# -- the request --------------------------------------------------------------------------------------

LEVELS = ("system", "patient", "group")
#: the types of a Patient-level export: those about a patient (the Patient compartment), in the registry's order
COMPARTMENT_TYPES = tuple(t.name for t in REGISTRY if t.exported and t.patient_param is not None)
PARAMETERS = ("_type", "_since", "_typeFilter", "_outputFormat", "_elements", "patient")


@dataclass(frozen=True)
class ExportSpec:
    """What one export writes: the study (Group export), the Patients (Patient-level export) or everything, which
    types, since when, filtered, for which patients, with which elements; and the warnings its error file holds."""

    group_id: str | None = None
    types: tuple[str, ...] = EXPORT_TYPES
    since: datetime | None = None
    type_filters: dict[str, list[list[tuple[str, str]]]] = field(default_factory=dict)
    output_format: str = NDJSON
    level: str = "system"  # system | patient | group
    #: only the resources about these Patients (the `patient` parameter: their ids as stored); None: all
    patients: tuple[str, ...] | None = None
    #: per type, the top-level elements kept (`_elements`); a type not named is written whole
    elements: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: (diagnostics, expression) of what the request asked that was left out (`Prefer: handling=lenient`): each is
    #: a warning OperationOutcome in the export's error file
    warnings: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> str:
        return orjson.dumps({"group_id": self.group_id, "types": list(self.types),
                             "since": self.since.isoformat() if self.since else None,
                             "type_filters": self.type_filters, "output_format": self.output_format,
                             "level": self.level, "patients": self.patients, "elements": self.elements,
                             "warnings": self.warnings}).decode()

    @classmethod
    def from_json(cls, text: str) -> "ExportSpec":
        data = orjson.loads(text)
        patients = data.get("patients")
        return cls(group_id=data["group_id"], types=tuple(data["types"]),
                   since=datetime.fromisoformat(data["since"]) if data["since"] else None,
                   type_filters={t: [[tuple(p) for p in f] for f in fs] for t, fs in data["type_filters"].items()},
                   output_format=data["output_format"],
                   level=data.get("level") or ("group" if data["group_id"] else "system"),
                   patients=None if patients is None else tuple(patients),
                   elements={t: tuple(e) for t, e in (data.get("elements") or {}).items()},
                   warnings=tuple((w[0], w[1]) for w in data.get("warnings") or ()))

    def selections(self, studies: dict[str, list[str] | None] | None = None) -> list[Selection]:
        """One Selection per type; `studies`: per type, the studies the client may see (None or a missing type:
        not limited)."""
        study = study_id_for_group(self.group_id) if self.group_id else None
        limits = studies or {}
        return [Selection(t, study, self.since,
                          tuple(tuple(filter_criteria(t, f)) for f in self.type_filters.get(t, ())),
                          None if limits.get(t) is None else tuple(limits[t] or ()),
                          patients=self.patients, compartment=self.level == "patient")
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


class JobFault(RuntimeError):
    """A failure of an export job said in the service's words: its text is what the job's status shows."""


def job_error(exc: BaseException) -> str:
    """What a failed job's status says: a JobFault's own text; for anything else (a database error holds its SQL
    statement and parameter values, an OSError a path) only that the export failed, the log having the details."""
    if isinstance(exc, JobFault):
        return str(exc)[:2000]
    if isinstance(exc, OSError):
        return "the export's files could not be written; the server log has the details"
    return "an unexpected fault stopped the export; the server log has the details"


def parse_since(value: str) -> datetime:
    """`_since` as an aware instant; 400 naming `_since` for what is not one, or is one outside the dates this
    server stores once in UTC (9999-12-31T23:59:59-14:00 is in year 10000 there: no database compares it)."""
    try:
        if not value.isascii():
            raise ValueError("not ASCII")
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise BadRequest(f"_since must be a FHIR instant such as 2024-01-10T00:00:00Z, got '{value}'",
                         expression="_since") from None
    try:
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError:
        raise BadRequest(f"_since {OUT_OF_RANGE}", expression="_since") from None


class _Leniency:
    """What is wrong with a kick-off, gathered so that one answer names every offending parameter. What the server
    can't honour (`problem`: an unsupported type or parameter, a type the client may not read, an unknown element) is
    refused by default (Bulk Data: `Prefer: handling=strict`) and left out with a warning for the error file under
    `Prefer: handling=lenient`; a malformed value (`malformed`) is refused either way. `raise_if_any` answers 400
    naming them all (403 when all that is wrong is scopes)."""

    def __init__(self, lenient: bool) -> None:
        self.lenient = lenient
        self.warnings: list[tuple[str, str]] = []
        self.errors: list[tuple[Issue, bool]] = []  # (issue, is it a missing scope)

    def problem(self, diagnostics: str, expression: str, error: type[FhirError] = BadRequest) -> None:
        if self.lenient:
            self.warnings.append((f"{diagnostics} (left out: Prefer handling=lenient)", expression))
        else:
            self.errors.append((issue(error.issue_code if error is Forbidden else "not-supported", diagnostics,
                                      expression), error is Forbidden))

    def malformed(self, diagnostics: str, expression: str) -> None:
        self.errors.append((issue("invalid", diagnostics, expression), False))

    def check(self, work: Callable[[], T]) -> T | None:
        """`work`, its BadRequest gathered as a malformed value (None then)."""
        try:
            return work()
        except BadRequest as err:
            self.errors += [(i, False) for i in err.issues]
            return None

    def raise_if_any(self) -> None:
        if not self.errors:
            return
        issues = [i for i, _ in self.errors]
        error = Forbidden if all(scope for _, scope in self.errors) else BadRequest
        raise error("; ".join(i.diagnostics for i in issues), issues=issues)


def patient_id_of(reference: str) -> str | None:
    """The id of a Patient reference (`Patient/123`, or an absolute URL ending so); None when it is not one."""
    head, sep, rid = reference.strip().rstrip("/").rpartition("Patient/")
    if not sep or (head and not head.endswith("/")) or not ID_RE.fullmatch(rid):
        return None
    return rid


def parse_elements(values: list[str], types: tuple[str, ...], checks: _Leniency) -> dict[str, tuple[str, ...]]:
    """`_elements` (Bulk Data: `[type].[element]` or `[element]`, top-level elements only) as, per exported type, the
    elements it keeps: a bare name applies to every type that has such an element, a prefixed name to its type. A
    type no listed element applies to is written whole. An unknown type or element, a nested path, or a type the
    export does not include: a problem (400, or a warning when lenient)."""
    bare: list[str] = []
    prefixed: dict[str, list[str]] = {}
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not names:
        checks.malformed("_elements is empty: name the elements to keep, e.g. Observation.code,status", "_elements")
    for name in names:
        rtype, dot, element = name.rpartition(".") if "." in name else ("", "", name)
        if "." in rtype:
            checks.problem(f"_elements '{name}': only top-level elements can be chosen (e.g. Observation.code)",
                           "_elements")
        elif dot and rtype not in EXPORT_TYPES:
            checks.problem(f"_elements '{name}': {rtype} is not a type this server exports", "_elements")
        elif dot and rtype not in types:
            checks.problem(f"_elements '{name}': this export does not include {rtype}", "_elements")
        elif dot and element not in element_names(TYPES[rtype].model):
            checks.problem(f"_elements '{name}': {rtype} has no element '{element}'", "_elements")
        elif dot:
            prefixed.setdefault(rtype, []).append(element)
        elif not any(element in element_names(TYPES[t].model) for t in types):
            checks.problem(f"_elements '{name}': no exported type has an element '{name}'", "_elements")
        else:
            bare.append(element)
    kept = {t: tuple(dict.fromkeys([*(e for e in bare if e in element_names(TYPES[t].model)),
                                    *prefixed.get(t, ())])) for t in types}
    return {t: e for t, e in kept.items() if e}


def parse_export_request(params: list[tuple[str, str]], prefer: str | None, group_id: str | None,
                         caller: Caller = SYSTEM, *, level: str | None = None) -> ExportSpec:
    """The kick-off's parameters as an ExportSpec; 400 (OperationOutcome naming the parameter) when the
    request can't be honoured exactly. The types are those the caller may read (`r`): a `_type` naming another
    is a 403 naming the scope it lacks; without `_type`, every type it may read (Bulk Data: export what the
    client can access), 403 when there is none. A Patient-level export (`level="patient"`) writes the types of the
    Patient compartment only. Under `Prefer: handling=lenient` an unsupported type or parameter, a type the client
    may not read and an unknown element are left out, each with a warning in the error file; a malformed value is
    a 400 all the same. `patient` references are kept as the ids they name (the kick-off checks them)."""
    level = level or ("group" if group_id is not None else "system")
    if not prefers(prefer, "respond-async"):
        raise BadRequest("$export runs asynchronously: send the header 'Prefer: respond-async'", expression="Prefer")
    checks = _Leniency(prefers(prefer, "handling=lenient"))
    exportable = COMPARTMENT_TYPES if level == "patient" else EXPORT_TYPES
    types: list[str] | None = None
    since = None
    output_format = NDJSON
    raw_filters: list[str] = []
    elements: list[str] = []
    patients: list[str] | None = None
    for name, value in params:
        if name == "_type":
            wanted = [t.strip() for t in value.split(",") if t.strip()]
            types = types or []
            unknown = [t for t in wanted if t not in EXPORT_TYPES]
            outside = [t for t in wanted if t in EXPORT_TYPES and t not in exportable]
            if unknown:
                checks.problem(f"_type: {', '.join(unknown)} can't be exported; this server exports "
                               f"{', '.join(EXPORT_TYPES)}", "_type")
            if outside:
                checks.problem(f"_type: {', '.join(outside)} {'is' if len(outside) == 1 else 'are'} not in the "
                               f"Patient compartment; a Patient-level export writes {', '.join(exportable)}", "_type")
            types += [t for t in wanted if t in exportable and t not in types]
        elif name == "_since":
            since = checks.check(partial(parse_since, value))
        elif name == "_outputFormat":
            if value not in OUTPUT_FORMATS:
                checks.malformed(f"_outputFormat '{value}' is not supported: use {', '.join(OUTPUT_FORMATS)}",
                                 "_outputFormat")
            output_format = value
        elif name == "_typeFilter":
            raw_filters += [f for f in _FILTER_SPLIT.split(value) if f]
        elif name == "_elements":
            elements.append(value)
        elif name == "patient":
            if level == "system":
                checks.problem("patient limits a Patient-level or Group export; a system export has no patients",
                               "patient")
                continue
            for ref in (r for r in value.split(",") if r.strip()):
                rid = patient_id_of(ref)
                if rid is None:
                    checks.malformed(f"patient '{ref.strip()}' is not a Patient reference such as Patient/123",
                                     "patient")
                else:
                    patients = [*(patients or []), rid]
        elif name in ("_format",):
            continue
        elif name in UNSUPPORTED:
            checks.problem(UNSUPPORTED[name], name)
        else:
            checks.problem(f"Unknown $export parameter '{name}'; supported: {', '.join(PARAMETERS)}", name)
    denied = [t for t in (types or ()) if not caller.may(t, "r")]
    if denied:
        checks.problem(f"_type names {', '.join(denied)}, which this client may not read: it lacks "
                       f"{', '.join(f'system/{t}.r' for t in denied)}", "_type", Forbidden)
    chosen = tuple(t for t in exportable if (types is None or t in types) and caller.may(t, "r"))
    filters: dict[str, list[list[tuple[str, str]]]] = {}
    for text in raw_filters:
        rtype, sep, query = text.partition("?")
        if not sep or rtype not in EXPORT_TYPES:
            checks.malformed(f"_typeFilter '{text}' must look like Observation?code=…, for one of "
                             f"{', '.join(EXPORT_TYPES)}", "_typeFilter")
        elif rtype not in chosen:
            checks.malformed(f"_typeFilter names {rtype}, which _type does not include", "_typeFilter")
        else:
            pairs = parse_qsl(query, keep_blank_values=True)
            if checks.check(partial(filter_criteria, rtype, pairs, text)) is not None:  # 400 now
                filters.setdefault(rtype, []).append(pairs)
    kept = parse_elements(elements, chosen, checks) if elements else {}
    checks.raise_if_any()
    if types is not None and not types:
        raise BadRequest("_type names no type this export can write", expression="_type")
    if not chosen:
        raise Forbidden("This client may read no resource type (no system/<type>.r scope): nothing to export",
                        expression="_type")
    return ExportSpec(group_id=group_id, types=chosen, since=since, type_filters=filters, output_format=output_format,
                      level=level, patients=None if patients is None else tuple(dict.fromkeys(patients)),
                      elements=kept, warnings=tuple(checks.warnings))


def parameters_to_params(body: dict[str, Any]) -> list[tuple[str, str]]:
    """A POST kick-off's Parameters resource as the (name, value) pairs of a GET kick-off, so both are read (and
    checked) alike. 400 naming each offending element (`Parameters.parameter[2].valueString`, …) when the body is
    no Parameters or a parameter has no name or a value of the wrong type."""
    if body.get("resourceType") != "Parameters":
        raise BadRequest("POST $export takes a Parameters resource", expression="resourceType")
    entries = body.get("parameter", [])
    if not isinstance(entries, list):
        raise BadRequest("Parameters.parameter must be an array", expression="Parameters.parameter")
    pairs: list[tuple[str, str]] = []
    problems: list[Issue] = []
    for i, item in enumerate(entries):
        where = f"Parameters.parameter[{i}]"
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(issue("required", "each parameter needs a name", f"{where}.name"))
            continue
        values = {k: v for k, v in item.items() if k.startswith("value")}
        expected = PARAMETER_VALUES.get(name)
        if expected is None:  # not one of ours: its name decides (unknown -> 400, or a warning when lenient)
            pairs.append((name, str(next(iter(values.values()), ""))))
            continue
        found = [k for k in values if k in expected]
        if len(values) != 1 or not found:
            problems.append(issue("invalid", f"{name} takes one {' or '.join(expected)}",
                                  *(f"{where}.{k}" for k in values or (expected[0],))))
            continue
        value = values[found[0]]
        if found[0] == "valueReference":
            value = value.get("reference") if isinstance(value, dict) else None
        if not isinstance(value, str) or not value.strip():
            problems.append(issue("invalid", f"{name}: the value must be a non-empty "
                                  f"{'reference' if found[0] == 'valueReference' else 'string'}",
                                  f"{where}.{found[0]}" + (".reference" if found[0] == "valueReference" else "")))
            continue
        pairs.append((name, value))
    if problems:
        raise BadRequest("; ".join(p.diagnostics for p in problems), issues=problems)
    return pairs


#: each kick-off parameter's value element(s) in a POST Parameters body (Bulk Data IG v2)
PARAMETER_VALUES = {"_outputFormat": ("valueString", "valueCode"), "_since": ("valueInstant", "valueDateTime"),
                    "_type": ("valueString",), "_elements": ("valueString",), "_typeFilter": ("valueString",),
                    "patient": ("valueReference",), "_format": ("valueString", "valueCode")}


def files_base(fhir_base: str) -> str:
    """Where export files are served: `/export-files` beside the FHIR base (`…/fhir` -> `…/export-files`)."""
    root = fhir_base[:-len("/fhir")] if fhir_base.endswith("/fhir") else fhir_base
    return f"{root}/export-files"


# -- kick-off, status, cancel, files -----------------------------------------------------------------------

def kick_off(session: Session, params: list[tuple[str, str]], prefer: str | None, request_url: str, *,
             group_id: str | None = None, caller: Caller = SYSTEM, deid: Deidentifier | None = None,
             level: str | None = None, max_attempts: int = 3) -> str:
    """Queue an export for `caller` (its row and its job, service/jobs, in one transaction); the job id. 404 for an
    unknown Group (or one of a study the client is not registered for), 400 for a request that can't be honoured,
    403 for a type the caller may not read.

    The job belongs to the caller: its client id, whether it had a token (the manifest's requiresAccessToken),
    whether it sees de-identified data, and the studies it may see of each type are stored with the job, so the
    worker writes what this client may see and only this client sees the job. A de-identified client's
    `_typeFilter`s and `patient` references name patients by pseudonym: they are translated with `deid` (required
    then). A `patient` the caller can't see (unknown, of another study, or not in the Group) is a 400 naming
    `patient` (left out with a warning under `Prefer: handling=lenient`)."""
    spec = parse_export_request(params, prefer, group_id, caller, level=level)
    study = study_id_for_group(group_id) if group_id is not None else None
    if study is not None:
        if (caller.studies is not None and study not in caller.studies) or not groups.find_studies(session, [study]):
            raise NotFound(f"Group/{group_id} is not known", expression="Group.id")
    if caller.deidentified and (spec.type_filters or spec.patients):
        if deid is None:
            raise BadRequest("_typeFilter and patient are not available to this de-identified client",
                             expression="_typeFilter" if spec.type_filters else "patient")
        resolve = partial(resolve_pseudonym, session, deid)
        spec = replace(spec, type_filters={t: [deid.translate_params(f, t, resolve) for f in fs]
                                           for t, fs in spec.type_filters.items()},
                       patients=None if spec.patients is None else tuple(resolve(p) or deid.nothing
                                                                           for p in spec.patients))
    if spec.patients is not None:
        spec = _checked_patients(session, spec, study, caller, prefers(prefer, "handling=lenient"),
                                 asked=parse_export_request_patients(params))
    limits = {t: caller.studies_for(t, "r") for t in spec.types}
    studies = {t: sorted(s) for t, s in limits.items() if s is not None}
    job_id = str(uuid.uuid4())
    repository.add_job(session, {"id": job_id, "status": "queued", "group_id": group_id, "spec": spec.to_json(),
                                 "request": request_url, "created_at": utcnow(), "progress": "queued",
                                 "client_id": caller.name, "restricted": caller.scopes is not None,
                                 "deidentified": caller.deidentified,
                                 "studies": orjson.dumps(studies).decode() if studies else None})
    jobs.enqueue(session, KIND, {"export_id": job_id}, job_id=job_id, max_attempts=max_attempts)
    session.commit()
    return job_id


def parse_export_request_patients(params: list[tuple[str, str]]) -> list[str]:
    """The `patient` references as the client wrote them, one per id in the order of `ExportSpec.patients` (to name
    them back in messages: a de-identified client's by the pseudonym it sent)."""
    asked: dict[str, str] = {}
    for name, value in params:
        for ref in (r.strip() for r in value.split(",") if name == "patient" and r.strip()):
            rid = patient_id_of(ref)
            if rid is not None and rid not in asked:
                asked[rid] = ref
    return list(asked.values())


def _checked_patients(session: Session, spec: ExportSpec, study: str | None, caller: Caller, lenient: bool,
                      asked: list[str]) -> ExportSpec:
    """`spec` with only the `patient`s the caller may see (and, for a Group export, members of the Group); the others
    are a 400 naming `patient`, or left out with a warning when lenient (none left: a 400 all the same, or the
    export would widen to every patient)."""
    ids = list(spec.patients or ())
    known = repository.find_patients(session, ids, study_id=study, studies=caller.studies_for("Patient", "r"))
    missing = [asked[i] if i < len(asked) else rid for i, rid in enumerate(ids) if rid not in known]
    if not missing:
        return spec
    where = "members of this Group" if study is not None else "Patients this client can see"
    message = f"patient: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not {where}"
    kept = tuple(rid for rid in ids if rid in known)
    if not lenient or not kept:
        raise BadRequest(message, expression="patient")
    return replace(spec, patients=kept,
                   warnings=(*spec.warnings, (f"{message} (left out: Prefer handling=lenient)", "patient")))


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
                   for o in outputs if not o.get("error")],
        # Bulk Data: OperationOutcomes of what was left out (entries that failed, warnings of a lenient request)
        "error": [{"type": o["type"], "url": f"{files_base}/{job_id}/{o['file']}", "count": o["count"]}
                  for o in outputs if o.get("error")],
    }
    expires = (job.finished_at or utcnow())
    return JobStatus(200, manifest, headers={"X-Progress": "complete",
                                             "Last-Modified": expires.strftime("%a, %d %b %Y %H:%M:%S GMT")})


def cancel_job(session: Session, export_dir: Path, job_id: str, caller: Caller = SYSTEM) -> None:
    """DELETE the status URL: forget the job and remove its files. Its job is cancelled in the same transaction: a
    worker running it stops at its next heartbeat and removes what it wrote since. 404 for another client's job."""
    job = _owned_job(session, job_id, caller)
    if job is None or job.status == "cancelled":
        raise NotFound(f"No export job '{job_id}'", expression="job")
    jobs.cancel(session, job_id)
    repository.delete_job(session, job_id)
    session.commit()
    remove_files(export_dir, job_id)


def remove_files(export_dir: Path, job_id: str) -> None:
    """The export's files, and the folders of its runs that did not complete."""
    for path in [Path(export_dir) / job_id, *Path(export_dir).glob(f"{job_id}.part-*")]:
        shutil.rmtree(path, ignore_errors=True)


def file_path(session: Session, export_dir: Path, job_id: str, name: str, caller: Caller = SYSTEM) -> Path:
    """Where one file of a completed export is; 404 for another client's job."""
    job = _owned_job(session, job_id, caller)
    if job is None or job.status != "completed":
        raise NotFound(f"No completed export job '{job_id}'", expression="job")
    if name not in {o["file"] for o in orjson.loads(job.output or "[]")}:  # the error file too
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
                 studies: dict[str, list[str] | None] | None = None, deid: Deidentifier | None = None,
                 as_of: datetime | None = None) -> tuple[datetime, list[dict]]:
    """Stream each type's stored JSON into `out_dir/<Type>.ndjson`, in one read snapshot (REPEATABLE READ
    on PostgreSQL, one read transaction on SQLite), `batch` rows at a time from a server-side cursor, so
    memory stays flat whatever the size. Returns (transaction time, [{type, file, count, bytes[, error]}]) for
    the types that have resources, and the error file (`error: True`) when there is one. `progress` may raise to
    stop the export. `studies`: per type, the only studies whose resources are written (the client's); `deid`:
    write each resource de-identified (with the patient it is about) instead of as stored; `spec.elements`: keep
    those elements of a type (tagged SUBSETTED); `as_of`: the time `engine` (a read replica) is complete up to,
    the transaction time instead of the clock.

    An entry that can't be written (stored text that is not one JSON object, a de-identification or subsetting that
    fails) is left out and becomes an OperationOutcome line of the error file (`OperationOutcome.ndjson`), beside
    the request's warnings; the export goes on. Stored text is served as it is when nothing transforms it: it is
    parsed only when its framing (one `{…}` per line) is not what NDJSON needs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    errors = [outcome([issue("not-supported", text, where, severity="warning")]) for text, where in spec.warnings]
    with snapshot_connection(engine) as conn:
        transaction_time = utcnow() if as_of is None else min(utcnow(), as_of)
        selections = spec.selections(studies)
        totals = {s.resource_type: conn.execute(repository.estimate_query(s)).scalar_one() for s in selections}
        if on_start:
            on_start(totals)
        for sel in selections:
            rtype = sel.resource_type
            path = out_dir / f"{rtype}.ndjson"
            transform = _transform(rtype, deid, spec.elements.get(rtype))
            name_of = (lambda rid: deid.pseudonym(rid)) if deid is not None and rtype == "Patient" else None
            count = size = 0
            with open(path, "wb", buffering=1 << 20) as out:
                for chunk in repository.stream_contents(conn, sel, batch):
                    data = _framed(chunk) if transform is None else None
                    written = len(chunk)
                    if data is None:
                        data, written = _one_by_one(rtype, chunk, transform, errors, name_of)
                    out.write(data)
                    count += written
                    size += len(data)
                    if progress:
                        progress(rtype, count, max(count, totals[rtype]))
            if count:
                outputs.append({"type": rtype, "file": path.name, "count": count, "bytes": size})
            else:
                path.unlink()
            if progress:
                progress(rtype, count, count)
    if errors:
        data = b"".join(orjson.dumps(e) + b"\n" for e in errors)
        (out_dir / ERROR_FILE).write_bytes(data)
        outputs.append({"type": "OperationOutcome", "file": ERROR_FILE, "count": len(errors), "bytes": len(data),
                        "error": True})
    return transaction_time, outputs


ERROR_FILE = "OperationOutcome.ndjson"


def _framed(chunk: Sequence[str | None]) -> bytes | None:
    """The stored texts as NDJSON lines, when each is one `{…}` without a line break (what the write path stores);
    None when one is not (a missing text, a line break inside): those rows are written one by one. The check is one
    pass of `in` and two index reads per text (~0.1 µs each): `str.count` over the joined chunk cost 6× more,
    ~20% of a system export (measured)."""
    try:
        if any("\n" in text or text[:1] != "{" or text[-1:] != "}" for text in chunk):  # type: ignore[operator,index]
            return None
    except TypeError:  # a None: one by one
        return None
    return ("\n".join(chunk) + "\n").encode()  # type: ignore[arg-type]


#: the id of a stored text: the write path stores `{"resourceType":"…","id":"…",…}`; else any `"id":"…"` in it
_STORED_ID = re.compile(r'^\{"resourceType":"[A-Za-z]+","id":"([A-Za-z0-9\-.]{1,64})"')
_ANY_ID = re.compile(r'"id"\s*:\s*"([A-Za-z0-9\-.]{1,64})"')


def _id_in(text: str | None) -> str | None:
    """The resource id a stored text names (read only when its entry fails: the export streams texts, not ids)."""
    if text is None:
        return None
    found = _STORED_ID.match(text) or _ANY_ID.search(text)
    return found.group(1) if found else None


def _transform(rtype: str, deid: Deidentifier | None, elements: tuple[str, ...] | None
               ) -> Callable[[str], bytes] | None:
    """What is done to each stored text of `rtype` on its way out: de-identified (first: it reads the whole resource),
    then reduced to `elements` (tagged SUBSETTED, as `_elements` on a search); None when it is written as stored."""
    if deid is None and not elements:
        return None
    model = TYPES[rtype].model

    def transform(text: str) -> bytes:
        data: str | bytes = text
        if deid is not None:
            try:
                data = deid.content(data)
            except Exception as exc:
                raise _EntryFailed(f"it could not be de-identified ({type(exc).__name__})") from exc
        if elements:
            data = subset(data, model, summary=None, elements=elements)
        return data if isinstance(data, bytes) else data.encode()
    return transform


class _EntryFailed(Exception):
    """One entry of an export that can't be written (why, in the service's words)."""


def _one_by_one(rtype: str, chunk: Sequence[str | None], transform: Callable[[str], bytes] | None,
                errors: list[dict[str, Any]], name_of: Callable[[str], str] | None) -> tuple[bytes, int]:
    """The stored texts as NDJSON lines, each on its own: one that fails is left out and named in `errors` (by the
    name the client knows it by: a de-identified Patient by its pseudonym). (bytes, rows written)."""
    lines = []
    for text in chunk:
        try:
            if text is None:
                raise _EntryFailed("it has no stored content")
            lines.append(transform(text) if transform is not None else _one_line(text, rtype))
        except Exception as exc:  # noqa: BLE001 — one entry's failure is reported in the error file, not the job's
            reason = str(exc) if isinstance(exc, _EntryFailed) else f"it could not be serialised ({type(exc).__name__})"
            rid = _id_in(text)
            shown = f"{rtype}/{name_of(rid) if name_of is not None else rid}" if rid else f"{rtype} (its id unreadable)"
            log.warning("export: %s left out: %s", shown, reason)
            errors.append(outcome([issue("exception", f"{shown} was not exported: {reason}", rtype)]))
    return b"".join(line + b"\n" for line in lines), len(lines)


def _one_line(text: str, rtype: str) -> bytes:
    """A stored text as one NDJSON line: re-serialised when it spans lines; 'not valid JSON' when it can't be."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise _EntryFailed("its stored JSON is not valid") from None
    if not isinstance(data, dict) or data.get("resourceType") != rtype:
        raise _EntryFailed(f"its stored JSON is not a {rtype}")
    return orjson.dumps(data)


def run_export(engine: Engine, export_dir: Path, ctx: JobContext, *, batch: int = 2000,
               deid: Deidentifier | Callable[[], Deidentifier] | None = None,
               source: Callable[[datetime], tuple[Engine, datetime | None]] | None = None) -> Done:
    """The handler of an export job (service/jobs): write the export of `ctx.payload["export_id"]` into this run's own
    folder, from the start (a run that follows a dead one starts over in a new snapshot), heart-beating as it goes.
    What it returns publishes the folder and the manifest in the transaction that completes the job, so only a run
    that still holds the job's lease does. A de-identified job needs `deid` (or a function making it): without one it
    fails rather than write identified data. `source` (service/replica.py `ReadRouter.export_source`) says where the
    data of a job kicked off at some time is read, and the time that copy is complete up to (None: `engine`, its
    clock); the job itself is on `engine`."""
    job_id = ctx.payload["export_id"]
    with Session(engine) as session:
        job = repository.get_job(session, job_id)
    if job is None:  # cancelled (its row is gone; the job is too, so this fails nothing) or removed
        raise JobFault("the export's request is gone (cancelled or expired)")
    data, complete_up_to = (engine, None) if source is None else source(job.created_at)
    spec = ExportSpec.from_json(job.spec)
    studies = orjson.loads(job.studies) if job.studies else None
    run_dir = Path(export_dir) / f"{job_id}.part-{ctx.attempt}"
    shutil.rmtree(run_dir, ignore_errors=True)
    again = f" (attempt {ctx.attempt} of {ctx.max_attempts}: the last one did not finish)" if ctx.attempt > 1 else ""

    def report(text: str, **values: Any) -> Callable[[Session], None]:
        def write(session: Session) -> None:
            repository.update_job(session, job_id, heartbeat=utcnow(), progress=(text + again)[:255], **values)
        return write

    def progress(rtype: str, done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        ctx.heartbeat(report(f"running: {rtype} {pct}% ({done}/{total} resources)"))

    ctx.heartbeat(report("started", status="running", worker=ctx.worker, started_at=utcnow()), force=True)
    try:
        deidentify = None
        if job.deidentified:
            if deid is None:
                raise JobFault("the job is de-identified and this worker has no de-identifier")
            deidentify = deid if isinstance(deid, Deidentifier) else deid()
        transaction_time, outputs = write_export(
            data, spec, run_dir, batch=batch, progress=progress, studies=studies, deid=deidentify,
            on_start=lambda totals: ctx.heartbeat(report(f"running: {sum(totals.values())} resources to write"),
                                                  force=True),
            as_of=complete_up_to)
    except Stopping:
        shutil.rmtree(run_dir, ignore_errors=True)
        with Session(engine.execution_options(write=True)) as s:
            repository.update_job(s, job_id, status="queued", worker=None, heartbeat=None,
                                  progress="queued (its worker stopped; it will run again)")
            s.commit()
        raise
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise

    def publish(session: Session) -> None:
        """Under the job's lease: this run's folder becomes the export's, its manifest the job's."""
        final = Path(export_dir) / job_id
        shutil.rmtree(final, ignore_errors=True)  # a run that published, then lost its commit
        os.replace(run_dir, final)
        for leftover in Path(export_dir).glob(f"{job_id}.part-*"):  # dead runs' folders
            shutil.rmtree(leftover, ignore_errors=True)
        repository.update_job(session, job_id, status="completed", finished_at=utcnow(),
                              transaction_time=transaction_time, progress="complete",
                              output=orjson.dumps(outputs).decode(), error=None)

    return Done(result={"files": len(outputs), "resources": sum(o["count"] for o in outputs if not o.get("error"))},
                commit=publish, discard=lambda: shutil.rmtree(run_dir, ignore_errors=True))


def export_failed(export_dir: Path, session: Session, job_id: str, payload: Any, error: str) -> None:
    """The export's job failed for good (service/jobs `on_failed`): its status says why; nothing of it is kept."""
    repository.update_job(session, payload.get("export_id", job_id), status="failed", finished_at=utcnow(),
                          error=error, progress="failed")
    remove_files(export_dir, job_id)


def housekeeping(engine: Engine, export_dir: Path, *, retention_s: float) -> None:
    """Expire old exports (files and rows); remove exports cancelled before 0012 (their row said `cancelled`)."""
    now = utcnow()
    with Session(engine.execution_options(write=True)) as s:
        gone = [*repository.find_cancelled(s), *repository.find_expired(s, now - timedelta(seconds=retention_s))]
        for job_id in gone:
            repository.delete_job(s, job_id)
            remove_files(export_dir, job_id)
        s.commit()
