"""A study's catalogue as stored types: ObservationDefinition (one measure) and PlanDefinition (the schedule,
responder definitions and the list of measures), checked on write (422 naming the element) and compiled on
read (service/catalogue/compiled.py). A new version of a measure is a new version of every plan listing it; a
new version of a plan re-assigns visits and canonical values of the results of its studies in the background
(service/catalogue/recompute.py)."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from fhir_mappings import fhir
from fhir_mappings.catalogue_definition import (
    check_observation_definition,
    check_plan_definition,
    measure_key,
    measure_references,
)
from service import examples
from service.catalogue.compiled import definitions_of
from service.catalogue.models import ObservationDefinitionRecord, PlanDefinitionRecord, PlanMeasureRecord
from service.core.stored_type import StoredType, param
from service.errors import Conflict, raise_for_issues
from service.jobs import repository as jobs
from service.store.models import table_of
from service.store.unit_of_work import UnitOfWork
from service.trial.models import StudyRecord

PD = table_of(PlanDefinitionRecord)
PM = table_of(PlanMeasureRecord)
OD = table_of(ObservationDefinitionRecord)
ST = table_of(StudyRecord)
#: the job kind that re-assigns a study's results after its catalogue changed
RECOMPUTE = "catalogue-recompute"


def index_observation_definition(uow: UnitOfWork, payload: dict[str, Any], id: str, replacing: bool) -> None:
    raise_for_issues(check_observation_definition(payload))
    if replacing:  # every plan listing it gets a new version (its catalogue changed), checked again with it
        uow.flush()  # (before this row is added: the old one is still there until the index returns)
        for plan_id in uow.session.execute(select(PM.c.id).where(PM.c.definition_id == id).distinct()).scalars():
            uow.follow_ups.append(("PlanDefinition", plan_id, _same))
    coding = payload["code"]["coding"][0]
    uow.add(OD, dict(id=id, key=measure_key(payload) or id, code_system=coding["system"], code=coding["code"]))


def _same(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


def index_plan_definition(uow: UnitOfWork, payload: dict[str, Any], id: str, replacing: bool) -> None:
    ids = [uow.resolve(ref, "ObservationDefinition", f"PlanDefinition.extension[{i}].valueReference")
           for i, ref in measure_references(payload)]
    uow.flush()
    raise_for_issues(check_plan_definition(payload, definitions_of(uow.session, payload)))
    uow.add(PD, dict(id=id, url=payload.get("url"), version=payload.get("version"), name=payload.get("name"),
                     title=payload.get("title"), status=payload.get("status") or "unknown"))
    for definition_id in dict.fromkeys(ids):
        uow.add(PM, dict(id=id, definition_id=definition_id))
    if replacing:
        for study_id in uow.session.execute(select(ST.c.id).where(ST.c.catalogue == id)).scalars():
            enqueue_recompute(uow, study_id)


def enqueue_recompute(uow: UnitOfWork, study_id: str) -> None:
    """Queue the re-assignment of the study's results (once per study and unit of work)."""
    key = ("recompute", study_id)
    if key not in uow.cache:
        uow.cache[key] = True
        jobs.enqueue(uow.session, RECOMPUTE, {"study": study_id}, datetime.now(UTC), max_attempts=5)


def guard_observation_definition_delete(uow: UnitOfWork, id: str) -> None:
    if uow.session.execute(select(PM.c.id).where(PM.c.definition_id == id).limit(1)).first() is not None:
        raise Conflict(f"ObservationDefinition/{id} is a measure of a PlanDefinition: take it out of the plan first",
                       expression="ObservationDefinition.id")


def guard_plan_definition_delete(uow: UnitOfWork, id: str) -> None:
    if uow.session.execute(select(ST.c.id).where(ST.c.catalogue == id).limit(1)).first() is not None:
        raise Conflict(f"PlanDefinition/{id} is the protocol of a ResearchStudy: change the study first",
                       expression="PlanDefinition.id")


OBSERVATION_DEFINITION = StoredType(
    "ObservationDefinition", fhir.ObservationDefinition, OD, index_observation_definition,
    examples.OBSERVATION_DEFINITION, rank=-2, guard_delete=guard_observation_definition_delete,
    search=(
        param("code", "coding", (OD.c.code_system, OD.c.code), "ObservationDefinition.code",
              "The measure's (first) code (system|code, code or system|)"),
    ),
    sorts={"code": OD.c.code})

PLAN_DEFINITION = StoredType(
    "PlanDefinition", fhir.PlanDefinition, PD, index_plan_definition, examples.PLAN_DEFINITION, rank=-1,
    guard_delete=guard_plan_definition_delete, child_tables=(PM,),
    search=(
        param("url", "code", PD.c.url, "PlanDefinition.url", "The canonical URL of the plan (as sent, no version)"),
        param("status", "code", PD.c.status, "PlanDefinition.status", "draft, active, retired or unknown",
              systems=("http://hl7.org/fhir/publication-status",)),
        param("name", "string", PD.c.name, "PlanDefinition.name", "Its computer-friendly name"),
    ),
    sorts={"url": PD.c.url})
