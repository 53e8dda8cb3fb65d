"""What the server is: its CapabilityStatement and the code systems it publishes."""

from fhir_mappings import fhir
from fhir_mappings.search import INCLUDES, SEARCH_PARAMS, params_for
from fhir_mappings.terminology import code_system_resource, catalogue_names, load_catalogue
from service.errors import NotFound
from service.core.registry import HANDLERS

SERVER_VERSION = "0.1.0"
#: the search parameters of each type (fhir_mappings/search.py defines them; service/search answers them)
_TYPE_SEARCH = {rtype: list(params_for(rtype)) for rtype in fhir.RESOURCE_MODELS}
_PARAM_TYPES = {p.name: p.type for rtype in fhir.RESOURCE_MODELS for p in params_for(rtype).values()}
_RESULT_PARAMS_DOC = ("Result parameters: _count (default 50, max 1000), _sort (_id, _lastUpdated, and date on "
                      "Observation and AdverseEvent; '-' for descending), _include, _revinclude, "
                      "_summary=count|true|data, _elements, _total=accurate|none; paging by opaque _cursor links. "
                      "Modifiers: :missing, :not (tokens), :exact and :contains (strings). Unknown or malformed "
                      "parameters are ignored with a warning (Prefer: handling=strict makes them a 400).")
#: extra search parameters other modules register (name, type, documentation) per resource type
EXTRA_SEARCH: dict[str, list[dict]] = {}
#: extra operations other modules register ({"name":…, "definition":…}) at system or type level
EXTRA_OPERATIONS: dict[str, list[dict]] = {}
EXTRA_RESOURCES: list[dict] = []


def code_systems() -> dict[str, dict]:
    """id -> CodeSystem resource, for every catalogue's own code system."""
    found = {}
    for name in catalogue_names():
        cs = code_system_resource(load_catalogue(name))
        found[cs["id"]] = cs
    return found


def read_code_system(id: str) -> dict:
    cs = code_systems().get(id)
    if cs is None:
        raise NotFound(f"CodeSystem/{id} is not known", expression="CodeSystem.id")
    return cs


def capability_statement(base: str) -> dict:
    resources = []
    for rtype in HANDLERS:
        params = [{"name": p.name, "definition": p.definition, "type": p.type, "documentation": p.description}
                  for p in params_for(rtype).values()]
        params += [{k: v for k, v in p.items() if k in ("name", "definition", "type", "documentation")}
                   for p in EXTRA_SEARCH.get(rtype, [])]
        entry = {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": [{"code": c} for c in ("read", "vread", "update", "delete", "history-instance",
                                                  "create", "search-type")],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical", "resolves", "local"],
            "searchParam": params,
        }
        if rtype in SEARCH_PARAMS:
            entry["searchInclude"] = [f"{s}:{p}" for (s, p) in INCLUDES if s == rtype]
            entry["searchRevInclude"] = [f"{s}:{p}" for (s, p), t in INCLUDES.items() if t == rtype]
            entry["documentation"] = _RESULT_PARAMS_DOC
        ops = EXTRA_OPERATIONS.get(rtype)
        if ops:
            entry["operation"] = ops
        resources.append(entry)
    resources.append({"type": "CodeSystem", "interaction": [{"code": "read"}, {"code": "search-type"}],
                      "searchParam": [{"name": "url", "type": "uri"}]})
    resources.append({"type": "SearchParameter", "interaction": [{"code": "read"}, {"code": "search-type"}],
                      "searchParam": [{"name": "url", "type": "uri"}, {"name": "name", "type": "string"},
                                      {"name": "code", "type": "token"}, {"name": "base", "type": "token"}]})
    resources.extend(EXTRA_RESOURCES)
    rest = {
        "mode": "server",
        "documentation": "FHIR R4 JSON for a clinical trial: EHRs push, research portals pull.",
        "resource": resources,
        "interaction": [{"code": "transaction"}, {"code": "batch"}],
    }
    if EXTRA_OPERATIONS.get("system"):
        rest["operation"] = EXTRA_OPERATIONS["system"]
    statement = {
        "resourceType": "CapabilityStatement",
        "id": "trial-fhir",
        "url": f"{base}/metadata",
        "name": "TrialFhir",
        "title": "trial-fhir server capabilities",
        "status": "active",
        "date": "2026-11-25",
        "publisher": "trial-fhir",
        "kind": "instance",
        "software": {"name": "trial-fhir", "version": SERVER_VERSION},
        "implementation": {"description": "trial-fhir", "url": base},
        "fhirVersion": fhir.FHIR_VERSION,
        "format": ["application/fhir+json", "json", "application/json"],
        "rest": [rest],
    }
    fhir.CapabilityStatement.model_validate(statement)
    return statement
