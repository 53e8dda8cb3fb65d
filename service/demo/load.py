"""Load the shipped demo trial (`service.demo.data`) through the one ingest path: FHIR transaction Bundles.

The file's transaction Bundles go in order: the two studies, one per subject (Patient, ResearchSubject,
Observations, AdverseEvents), then the later updates. Every create is conditional (`ifNoneExist:
identifier=…`) and every update a conditional update by identifier whose content, sent again, is no change
(no new version). Loading twice therefore adds nothing, and a load interrupted half-way resumes where it stopped
(each Bundle is all-or-nothing). A reference to a resource of an earlier Bundle (`urn:uuid:…`) is rewritten to
its server id. A subject whose resources are all there already (one look-up of the demo identifiers) is not
sent again: that only saves time.
"""

from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.engine import Engine

from service.bundle.service import transaction
from service.db import read_session, write_session
from service.demo.data import (
    ADVERSE_EVENT_SYSTEM,
    OBSERVATION_SYSTEM,
    PATIENT_SYSTEM,
    REGISTRY,
    STUDY_SYSTEM,
    SUBJECT_SYSTEM,
    TYPES,
    bundle_name,
    transactions,
)
from service.store.models import IdentifierRecord, table_of
from service.trial.models import StudyRecord

DEFAULT_BASE = "http://localhost/fhir"
DEMO_SYSTEMS = (REGISTRY[0], STUDY_SYSTEM, PATIENT_SYSTEM, SUBJECT_SYSTEM, OBSERVATION_SYSTEM, ADVERSE_EVENT_SYSTEM)
#: progress(done, total, what): called after each Bundle
Progress = Callable[[int, int, str], None]


def load_demo(engine: Engine, progress: Progress | None = None, *, base_url: str | None = None,
              max_entries: int = 10_000, bundles: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Load the demo trial; returns `{"created": {type: n}, "existing": {type: n}, "updated": n}` (existing =
    matched by its identifier, left as it was; updated = conditional updates sent, a no-op when already made)."""
    bundles = bundles if bundles is not None else transactions()
    base = (base_url or DEFAULT_BASE).rstrip("/")
    created: Counter[str] = Counter()
    existing: Counter[str] = Counter()
    updated = 0
    resolved: dict[str, str] = {}  # urn:uuid:… of an earlier Bundle -> Type/server id
    present = _present_identifiers(engine)

    for done, bundle in enumerate(bundles, start=1):
        entries = bundle["entry"]
        keys = [_condition(e) for e in entries]
        if all(e["request"]["method"] == "POST" for e in entries) and all(k in present for k in keys):
            existing.update(e["resource"]["resourceType"] for e in entries)
            resolved.update({e["fullUrl"]: f"{k[0]}/{present[k]}" for e, k in zip(entries, keys, strict=True)})
        else:
            body = {**bundle, "entry": [_rewrite(e, resolved) for e in entries]}
            with write_session(engine) as session:
                response = orjson.loads(transaction(session, body, base, max_entries=max_entries))
            for entry, item in zip(entries, response["entry"], strict=True):
                rtype = entry["resource"]["resourceType"]
                if entry["request"]["method"] == "PUT":
                    updated += 1
                else:
                    (created if item["response"]["status"].startswith("201") else existing)[rtype] += 1
                server_id = item["response"]["location"][len(base) + 1:].split("/")[1]  # {base}/Type/{id}/_history/n
                resolved[entry["fullUrl"]] = f"{rtype}/{server_id}"
        if progress:
            progress(done, len(bundles), bundle_name(bundle))
    return {"created": {t: created[t] for t in TYPES}, "existing": {t: existing[t] for t in TYPES},
            "updated": updated}


def load_demo_if_empty(engine: Engine, progress: Progress | None = None) -> dict[str, Any] | None:
    """Load the demo trial when the database holds no ResearchStudy; None when it holds one."""
    with read_session(engine) as session:
        if session.execute(select(table_of(StudyRecord).c.id).limit(1)).first() is not None:
            return None
    return load_demo(engine, progress)


def _condition(entry: dict) -> tuple[str, str, str]:
    """(type, system, value) of the identifier an entry's create or update is conditional on."""
    request = entry["request"]
    query = request.get("ifNoneExist") or request["url"].split("?", 1)[1]
    system, value = query.removeprefix("identifier=").split("|", 1)
    return entry["resource"]["resourceType"], system, value


def _present_identifiers(engine: Engine) -> dict[tuple[str, str, str], str]:
    """(type, system, value) -> resource id of every stored identifier in the demo systems."""
    with read_session(engine) as session:
        identifiers = table_of(IdentifierRecord)
        rows = session.execute(select(identifiers.c.resource_type, identifiers.c.system, identifiers.c.value,
                                      identifiers.c.resource_id)
                               .where(identifiers.c.system.in_(DEMO_SYSTEMS))).all()
    return {(row[0], row[1], row[2]): row[3] for row in rows}


def _rewrite(node: Any, resolved: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: (resolved.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, resolved))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v, resolved) for v in node]
    return node
