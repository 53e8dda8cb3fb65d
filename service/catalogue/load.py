"""Store a shipped catalogue (fhir_mappings/catalogue/<name>/: its ObservationDefinitions and PlanDefinition)
through the one ingest path, a FHIR transaction of PUTs, when the database does not hold it yet: what is there
already (a catalogue a trial team changed since) is left as it is. The CodeSystem beside them is served by
`GET /fhir/CodeSystem/{id}` from the package."""

import logging

from sqlalchemy import inspect, select, tuple_
from sqlalchemy.engine import Engine

from fhir_mappings.terminology import DEFAULT_CATALOGUE, shipped_resources
from service.bundle.service import transaction
from service.db import read_session, write_session
from service.store.models import ResourceRecord, table_of

log = logging.getLogger("trial_fhir.catalogue")
R = table_of(ResourceRecord)
STORED = ("ObservationDefinition", "PlanDefinition")
BASE = "http://localhost/fhir"


def load_catalogue_if_absent(engine: Engine, name: str = DEFAULT_CATALOGUE) -> int:
    """PUT the shipped catalogue's resources that the database does not hold (deleted ones stay deleted); how
    many were stored. A database without the schema (TRIAL_FHIR_MIGRATE_ON_STARTUP=false, not migrated yet) is
    left alone: the default catalogue is compiled from the package until it is stored."""
    if not inspect(engine).has_table("plan_definition"):
        log.warning("the schema is not migrated: the shipped catalogue %s is not stored", name)
        return 0
    resources = [r for r in shipped_resources(name) if r["resourceType"] in STORED]
    keys = [(r["resourceType"], r["id"]) for r in resources]
    with read_session(engine) as session:
        present = set(session.execute(select(R.c.resource_type, R.c.id).where(
            tuple_(R.c.resource_type, R.c.id).in_(keys))).tuples())
    missing = [r for r in resources if (r["resourceType"], r["id"]) not in present]
    if not missing:
        return 0
    entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
               for r in missing]
    with write_session(engine) as session:
        transaction(session, {"resourceType": "Bundle", "type": "transaction", "entry": entries}, BASE,
                    max_entries=len(entries))
    log.info("stored the shipped catalogue %s: %d resources", name, len(missing))
    return len(missing)
