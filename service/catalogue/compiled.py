"""The compiled catalogue of a study, from its stored PlanDefinition and ObservationDefinitions, cached per
(plan id, plan version) for the life of the process: the hot ingest path reads the plan's current version beside
the enrolment (one join, service/trial/repository.py) and compiles nothing after the first time. A new version of
a measure makes a new version of every plan that lists it (service/catalogue/service.py), so the plan's version
is the catalogue's.

A study names its plan by id (`study.catalogue`: `ResearchStudy.protocol`); the default plan
(`atopic-dermatitis`) is compiled from the package's files while it is not stored (a database that was never
started up with `TRIAL_FHIR_LOAD_CATALOGUE_ON_STARTUP`)."""

import threading
from typing import Any

import orjson
from sqlalchemy import select
from sqlmodel import Session

from fhir_mappings.catalogue_definition import compile_catalogue, measure_references
from fhir_mappings.references import parse_reference
from fhir_mappings.terminology import DEFAULT_CATALOGUE, Catalogue, catalogue_names, load_catalogue, shipped_resources
from service.store import repository as store
from service.store.models import ResourceRecord, ResourceVersion, table_of

R = table_of(ResourceRecord)
V = table_of(ResourceVersion)
_CACHE: dict[tuple[str, int], Catalogue] = {}
_LOCK = threading.Lock()


def _shipped_code_system(plan_id: str) -> dict[str, Any]:
    if plan_id not in catalogue_names():
        return {}
    return next((r for r in shipped_resources(plan_id) if r["resourceType"] == "CodeSystem"), {})


def definitions_of(session: Session, plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The current ObservationDefinitions the plan lists, by `ObservationDefinition/id`."""
    found = {}
    for _, ref in measure_references(plan):
        parsed = parse_reference(ref, "ObservationDefinition")
        if parsed.kind != "literal" or parsed.id is None:
            continue
        row = store.get_current(session, "ObservationDefinition", parsed.id)
        if row is not None and not row.deleted and row.content:
            found[(ref or {}).get("reference", "")] = orjson.loads(row.content)
    return found


def catalogue_for(session: Session, plan_id: str | None, version: int | None) -> Catalogue:
    """The compiled catalogue of plan `plan_id` at `version` (its current one, read beside the enrolment); a plan
    not stored (version None): the shipped one of that name, else the default."""
    if not plan_id or version is None:
        return load_catalogue(plan_id if plan_id in catalogue_names() else DEFAULT_CATALOGUE)
    key = (plan_id, version)
    found = _CACHE.get(key)
    if found is not None:
        return found
    row = session.execute(select(V.c.content).where(V.c.resource_type == "PlanDefinition", V.c.id == plan_id,
                                                    V.c.version_id == version)).scalar()
    if row is None:
        return load_catalogue(plan_id if plan_id in catalogue_names() else DEFAULT_CATALOGUE)
    plan = orjson.loads(row)
    compiled = compile_catalogue(plan, definitions_of(session, plan), version=str(version),
                                 code_system=_shipped_code_system(plan_id))
    with _LOCK:
        return _CACHE.setdefault(key, compiled)


def plan_version(session: Session, plan_id: str) -> int | None:
    """The current version of a stored, live PlanDefinition; None when it is not stored."""
    row = session.execute(select(R.c.version_id).where(R.c.resource_type == "PlanDefinition", R.c.id == plan_id,
                                                       R.c.deleted.is_(False))).first()
    return None if row is None else int(row[0])


def catalogue_named(session: Session, plan_id: str | None) -> Catalogue:
    """The current compiled catalogue of the plan a study names (its summaries, exports and charts)."""
    return catalogue_for(session, plan_id, plan_version(session, plan_id) if plan_id else None)


def compiled_catalogue(plan_id: str, version: str) -> Catalogue:
    """The catalogue a summary used (`StudySummary.catalogue`, `.catalogue_version`), from this process's cache
    (making the summary compiled it); the shipped one for `shipped` or one no longer cached."""
    if version.isdigit() and (found := _CACHE.get((plan_id, int(version)))) is not None:
        return found
    return load_catalogue(plan_id if plan_id in catalogue_names() else DEFAULT_CATALOGUE)
