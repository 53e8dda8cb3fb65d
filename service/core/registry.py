"""The stored resource types: the one list of the domains' declarations (`StoredType`, service/core/stored_type.py),
and what is derived from it. Adding a type with typed rows and search is a mapping module, a domain folder that
declares its StoredType, and one entry here (plus the migration of its table)."""

from fhir_mappings.search import Include, SearchSpec
from service.adverse_event.service import ADVERSE_EVENT
from service.audit.service import AUDIT_EVENT
from service.catalogue.service import OBSERVATION_DEFINITION, PLAN_DEFINITION
from service.clinical.service import ENCOUNTER, MEDICATION_ADMINISTRATION, PROCEDURE, PROVENANCE
from service.core.stored_type import StoredType
from service.errors import NotFound
from service.observation.service import OBSERVATION
from service.subscription.service import SUBSCRIPTION
from service.terminology.service import CONCEPT_MAP
from service.trial.service import PATIENT, RESEARCH_STUDY, RESEARCH_SUBJECT

#: every stored type, in the order they are documented (CapabilityStatement, OpenAPI) and exported
REGISTRY: tuple[StoredType, ...] = (PATIENT, RESEARCH_STUDY, RESEARCH_SUBJECT, OBSERVATION, ADVERSE_EVENT,
                                   ENCOUNTER, MEDICATION_ADMINISTRATION, PROCEDURE, PROVENANCE, CONCEPT_MAP,
                                   SUBSCRIPTION, OBSERVATION_DEFINITION, PLAN_DEFINITION, AUDIT_EVENT)

TYPES: dict[str, StoredType] = {t.name: t for t in REGISTRY}
#: what a client would send, per type (the OpenAPI examples)
EXAMPLES = {t.name: t.example for t in REGISTRY}

#: _include / _revinclude: every reference parameter, to each of its targets that is a stored type
INCLUDES: tuple[Include, ...] = tuple(
    Include(t.name, p.name, target) for t in REGISTRY for p in t.search if p.kind == "reference"
    for target in p.fhir.targets if target in TYPES)

_SPECS = {t.name: SearchSpec(t.name, {name: p.fhir for name, p in t.params.items()}, tuple(t.sorts), t.default_sort,
                             tuple(i for i in INCLUDES if t.name in (i.source, i.target)), t.model,
                             # chains (`subject.gender`, `_has`): the reference parameters to stored types
                             {p.name: tuple(x for x in p.fhir.targets if x in TYPES) for p in t.search
                              if p.kind == "reference" and any(x in TYPES for x in p.fhir.targets)},
                             INCLUDES)
          for t in REGISTRY}


def handler_for(resource_type: str) -> StoredType:
    """The stored type named `resource_type`; 404 when this server does not store it."""
    found = TYPES.get(resource_type)
    if found is None:
        raise NotFound(f"Resource type '{resource_type}' is not supported by this server")
    return found


def find_search_spec(resource_type: str) -> SearchSpec | None:
    """What a search of `resource_type` may use; None for a type this server does not store (the `lookup` of
    chained parameters and `_has`)."""
    return _SPECS.get(resource_type)


def search_spec(resource_type: str) -> SearchSpec:
    """What a search of `resource_type` may use (fhir_mappings.search.parse_search reads it); 404 for a type this
    server does not store."""
    handler_for(resource_type)
    return _SPECS[resource_type]
