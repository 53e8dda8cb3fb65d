"""The `catalogue-recompute` job: after a study's catalogue changed (a new version of its PlanDefinition, or of a
measure it lists, or the study's protocol itself), each of its results whose visit, canonical value, unit or
measure the new catalogue gives otherwise is written again through the one write path (the core's `reindex`, as
the server, like the re-assignment after a moved day 0): its index assigns the visit and converts the value with
the new catalogue, and its `meta.tag` says the new visit. A result the new catalogue refuses (its unit no
longer accepted, its value out of a narrowed range) keeps its version and is counted as refused, with the first
reasons, in the job's result.

Progress (`{"done", "total", "rewritten", "refused"}`) is written on the job row at each heartbeat; a run that
starts over (its worker died) checks every result again and rewrites only those still differing, so it is
idempotent."""

import logging
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fhir_mappings.terminology import Catalogue
from service.catalogue.compiled import catalogue_named
from service.catalogue.service import RECOMPUTE
from service.core import resources
from service.db import read_session, write_session
from service.errors import FhirError
from service.jobs.models import JobRecord
from service.jobs.runner import Done, JobContext, JobKind
from service.observation.models import MeasurementRecord
from service.store import repository as store
from service.store.models import table_of
from service.trial.models import StudyRecord, SubjectRecord

log = logging.getLogger("trial_fhir.catalogue")
KIND = RECOMPUTE
M = table_of(MeasurementRecord)
S = table_of(SubjectRecord)
ST = table_of(StudyRecord)
J = table_of(JobRecord)
BATCH = 200
BASE = "http://localhost/fhir"


def _differs(catalogue: Catalogue, row: Any) -> bool:
    """Would the catalogue index this result otherwise than it is?"""
    measure = next((m for m in catalogue.measures if (row.code_system, row.code) in m.codes), None)
    if measure is None or measure.key != row.measure or measure.unit != row.unit:
        return True
    try:
        canonical = measure.to_canonical(Decimal(row.original_value), row.original_unit)
    except (InvalidOperation, ValueError):
        return True
    if canonical is None or abs(float(canonical) - row.value) > 1e-9 * max(1.0, abs(row.value)):
        return True
    visit = catalogue.visit_for_day(row.study_day)
    return visit != row.visit


def _rewrite(engine: Engine, ids: list[str], figures: dict[str, Any]) -> None:
    """Write the results of `ids` again through the core (one transaction; when one is refused, one each)."""
    try:
        with write_session(engine) as session:
            resources.run_write(session, lambda uow: resources.reindex(uow, "Observation", ids), base_url=BASE)
        figures["rewritten"] += len(ids)
        return
    except FhirError:
        if len(ids) == 1:
            raise
    for one in ids:
        try:
            _rewrite(engine, [one], figures)
        except FhirError as refused:
            figures["refused"] += 1
            if len(figures["reasons"]) < 10:
                figures["reasons"].append(f"Observation/{one}: {refused}")


def _progress(job_id: str, figures: dict[str, Any]):
    def write(session: Session) -> None:
        session.execute(update(J).where(J.c.id == job_id).values(result=orjson.dumps(figures).decode()))
    return write


def recompute_study(engine: Engine, study_id: str, ctx: JobContext | None = None) -> dict[str, Any]:
    """Rewrite the study's results the current catalogue indexes otherwise; the figures of the run."""
    with read_session(engine) as session:
        plan = session.execute(select(ST.c.catalogue).where(ST.c.id == study_id)).scalar()
        if plan is None:
            return {"study": study_id, "done": 0, "total": 0, "rewritten": 0, "refused": 0}
        catalogue = catalogue_named(session, plan)
        total = session.execute(select(M.c.id).where(M.c.study_id == study_id)).all()
    figures: dict[str, Any] = {"study": study_id, "catalogue": plan, "catalogue_version": catalogue.version,
                               "done": 0, "total": len(total), "rewritten": 0, "refused": 0, "reasons": []}
    last = ""
    while True:
        with read_session(engine) as session:
            rows = session.execute(
                select(M.c.id, M.c.code_system, M.c.code, M.c.measure, M.c.unit, M.c.value, M.c.original_value,
                       M.c.original_unit, M.c.study_day, M.c.visit)
                .where(M.c.study_id == study_id, M.c.id > last).order_by(M.c.id).limit(BATCH)).all()
            if not rows:
                break
            last = rows[-1].id
            changed = [r.id for r in rows if _differs(catalogue, r)]
            contents = {i: store.get_current(session, "Observation", i) for i in changed}
        live = [i for i, c in contents.items() if c is not None and not c.deleted]
        if live:
            _rewrite(engine, live, figures)
        figures["done"] += len(rows)
        if ctx is not None:
            ctx.heartbeat(_progress(ctx.job_id, figures))
    log.info("catalogue of ResearchStudy/%s (%s, version %s): %d results checked, %d rewritten, %d refused",
             study_id, plan, catalogue.version, figures["done"], figures["rewritten"], figures["refused"])
    return figures


def recompute_kind(engine: Engine) -> JobKind:
    def run(ctx: JobContext) -> Done:
        return Done(result=recompute_study(engine, ctx.payload["study"], ctx))

    return JobKind(KIND, run)
