"""Load the demo cohort through the one ingest path: FHIR transaction Bundles.

The study goes first (one entry, `ifNoneExist` on its NCT identifier); then one transaction per subject
holding its Patient, ResearchSubject, Observations and AdverseEvents, each a conditional create
(`ifNoneExist: identifier=…`). Loading twice therefore adds nothing, and a load interrupted half-way
resumes where it stopped (each subject is all-or-nothing). A subject whose resources are all there
already (one look-up of the demo identifiers) is not sent again: that only saves time.
"""

from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.engine import Engine

from service.bundle.service import transaction
from service.db import read_session, write_session
from service.demo.cohort import (
    ADVERSE_EVENT_SYSTEM,
    OBSERVATION_SYSTEM,
    PATIENT_SYSTEM,
    SUBJECT_SYSTEM,
    DemoCohort,
    build_cohort,
    study_resource,
    subject_resources,
)
from service.store.models import IdentifierRecord, table_of
from service.trial.models import StudyRecord

DEFAULT_BASE = "http://localhost/fhir"
DEMO_SYSTEMS = (PATIENT_SYSTEM, SUBJECT_SYSTEM, OBSERVATION_SYSTEM, ADVERSE_EVENT_SYSTEM)
#: progress(done, total, what): called after the study and after each subject
Progress = Callable[[int, int, str], None]


def load_demo(engine: Engine, progress: Progress | None = None, *, base_url: str | None = None,
              max_entries: int = 10_000, cohort: DemoCohort | None = None) -> dict[str, Any]:
    """Load the demo trial; returns `{"created": {type: n}, "existing": {type: n}}` (existing = matched by
    its identifier, left as it was)."""
    cohort = cohort or build_cohort()
    base = (base_url or DEFAULT_BASE).rstrip("/")
    created: Counter[str] = Counter()
    existing: Counter[str] = Counter()
    total = len(cohort.subjects) + 1

    def send(resources: list[dict], local: dict[str, str]) -> list[str]:
        entries = [_entry(r, local) for r in resources]
        with write_session(engine) as session:
            response = orjson.loads(transaction(session, {"resourceType": "Bundle", "type": "transaction",
                                                          "entry": entries}, base, max_entries=max_entries))
        locations = []
        for request, item in zip(entries, response["entry"], strict=True):
            rtype = request["request"]["url"]
            (created if item["response"]["status"].startswith("201") else existing)[rtype] += 1
            locations.append(item["response"]["location"])
        return locations

    present = _present_identifiers(engine)
    study = study_resource(cohort)
    location = send([study], {})[0]
    study_id = location[len(base) + 1:].split("/")[1]  # {base}/ResearchStudy/{id}/_history/{n}
    if progress:
        progress(1, total, "study")
    study_ref = {f"ResearchStudy/{study['id']}": f"ResearchStudy/{study_id}"}
    for done, subject in enumerate(cohort.subjects, start=2):
        resources = subject_resources(cohort, subject)
        if all(_identifier_key(r) in present for r in resources):
            existing.update(r["resourceType"] for r in resources)
        else:
            send(resources, {**study_ref, **{f"{r['resourceType']}/{r['id']}": f"urn:uuid:{r['id']}"
                                             for r in resources}})
        if progress:
            progress(done, total, subject.key)
    types = ("ResearchStudy", "Patient", "ResearchSubject", "Observation", "AdverseEvent")
    return {"created": {t: created[t] for t in types}, "existing": {t: existing[t] for t in types}}


def load_demo_if_empty(engine: Engine, progress: Progress | None = None) -> dict[str, Any] | None:
    """Load the demo trial when the database holds no ResearchStudy; None when it holds one."""
    with read_session(engine) as session:
        if session.execute(select(table_of(StudyRecord).c.id).limit(1)).first() is not None:
            return None
    return load_demo(engine, progress)


def _identifier_key(resource: dict) -> tuple[str, str, str]:
    identifier = resource["identifier"]
    first = identifier if isinstance(identifier, dict) else identifier[0]
    return resource["resourceType"], first["system"], first["value"]


def _present_identifiers(engine: Engine) -> set[tuple[str, str, str]]:
    """(type, system, value) of every stored identifier in the demo systems."""
    with read_session(engine) as session:
        identifiers = table_of(IdentifierRecord)
        rows = session.execute(select(identifiers.c.resource_type, identifiers.c.system, identifiers.c.value)
                               .where(identifiers.c.system.in_(DEMO_SYSTEMS))).all()
    return {tuple(row) for row in rows}


def _entry(resource: dict, local: dict[str, str]) -> dict:
    """A conditional-create entry: its fullUrl is the resource's local id as a urn:uuid; references to
    other resources of the load become their urn:uuid (or the study's server id)."""
    body = _rewrite({k: v for k, v in resource.items() if k != "id"}, local)
    _, system, value = _identifier_key(resource)
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": body,
            "request": {"method": "POST", "url": resource["resourceType"],
                        "ifNoneExist": f"identifier={system}|{value}"}}


def _rewrite(node: Any, local: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: (local.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, local))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v, local) for v in node]
    return node
