"""What the server is: its CapabilityStatement and the code systems it publishes."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir_mappings import fhir
from fhir_mappings.dates import fhir_instant
from fhir_mappings.parameters import ParametersInvalid, operation_inputs, single
from fhir_mappings.terminology import catalogue_names, code_system_resource, load_catalogue
from fhir_mappings.value_set import (
    Concept,
    TerminologyError,
    concepts_of,
    expand,
    lookup,
    validate_code,
    value_sets,
)
from service.core.registry import INCLUDES, REGISTRY
from service.errors import BadRequest, FhirError, NotFound
from service.store.unit_of_work import utcnow

SERVER_VERSION = "0.1.0"
_RESULT_PARAMS_DOC = ("Result parameters: _count (default 50, max 1000), _sort ({sorts}; '-' for descending), "
                      "_include, _revinclude, _summary=count|true|data, _elements, _total=accurate|none; paging by "
                      "opaque _cursor links. Modifiers: :missing, :not (tokens), :exact and :contains (strings). "
                      "Unknown or malformed parameters are ignored with a warning (Prefer: handling=strict makes "
                      "them a 400).")


@dataclass(frozen=True)
class Contribution:
    """What a module beside the stored types adds to the CapabilityStatement: operations per level (`system` or a
    resource type) and resource types of its own. `create_app` passes each router module's contribution in."""

    operations: dict[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)
    resources: tuple[dict[str, Any], ...] = ()


def code_systems() -> dict[str, dict[str, Any]]:
    """id -> CodeSystem resource, for every catalogue's own code system."""
    found = {}
    for name in catalogue_names():
        cs = code_system_resource(load_catalogue(name))
        found[cs["id"]] = cs
    return found


def read_code_system(id: str) -> dict[str, Any]:
    cs = code_systems().get(id)
    if cs is None:
        raise NotFound(f"CodeSystem/{id} is not known", expression="CodeSystem.id")
    return cs


# -- the trial's ValueSets and the terminology operations --------------------------------------------------------

def all_value_sets() -> dict[str, tuple[dict[str, Any], list[Concept]]]:
    """id -> (ValueSet, its concepts), for every catalogue's ValueSets (fhir_mappings/value_set.py)."""
    found = {}
    for name in catalogue_names():
        for vs, concepts in value_sets(load_catalogue(name)):
            found[vs["id"]] = (vs, concepts)
    return found


def read_value_set(id: str) -> dict[str, Any]:
    found = all_value_sets().get(id)
    if found is None:
        raise NotFound(f"ValueSet/{id} is not known", expression="ValueSet.id")
    return found[0]


def _inputs(query: list[tuple[str, str]], body: dict[str, Any] | None) -> list[tuple[str, Any, str]]:
    try:
        return operation_inputs(query, body)
    except ParametersInvalid as bad:
        raise BadRequest(str(bad), expression=bad.expression) from None


def _one(inputs: list[tuple[str, Any, str]], name: str, kind: type | tuple[type, ...] = str) -> Any:
    try:
        return single(inputs, name, kind)[0]
    except ParametersInvalid as bad:
        raise BadRequest(str(bad), expression=bad.expression) from None


def _int(inputs: list[tuple[str, Any, str]], name: str) -> int | None:
    """An integer input: valueInteger in a Parameters, digits in the query."""
    value = _one(inputs, name, (str, int))
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise BadRequest(f"{name} must be an integer, not '{value}'", expression=name)


def _terminology(error: TerminologyError) -> FhirError:
    return (NotFound if error.not_found else BadRequest)(str(error), expression=error.expression)


def _code_system_by(url: str | None, id: str | None, expression: str) -> dict[str, Any]:
    if id is not None:
        return read_code_system(id)
    if not url:
        raise BadRequest(f"{expression} is required: the CodeSystem's canonical URL", expression=expression)
    found = next((cs for cs in code_systems().values() if cs["url"] == url.split("|")[0]), None)
    if found is None:
        raise NotFound(f"The code system '{url}' is not one this server holds", expression=expression)
    return found


def _value_set_by(url: str | None, id: str | None) -> tuple[dict[str, Any], list[Concept]]:
    if id is not None:
        read_value_set(id)
        return all_value_sets()[id]
    if not url:
        raise BadRequest("url is required: the ValueSet's canonical URL (or use ValueSet/[id]/$…)", expression="url")
    found = next((v for v in all_value_sets().values() if v[0]["url"] == url.split("|")[0]), None)
    if found is None:
        raise NotFound(f"The value set '{url}' is not one this server holds", expression="url")
    return found


def _coded(inputs: list[tuple[str, Any, str]]) -> list[tuple[str | None, str, str | None]]:
    """The (system, code, display) a $lookup or $validate-code asks about: `code` (+ `system`, `display`), a
    `coding`, or each coding of a `codeableConcept`; 400 naming `code` when there is none."""
    code, system, display = _one(inputs, "code"), _one(inputs, "system"), _one(inputs, "display")
    coding = _one(inputs, "coding", dict)
    concept = _one(inputs, "codeableConcept", dict)
    asked: list[tuple[str | None, str, str | None]] = []
    if code:
        asked.append((system, code, display))
    if coding and coding.get("code"):
        asked.append((coding.get("system"), coding["code"], coding.get("display")))
    for c in (concept or {}).get("coding") or []:
        if isinstance(c, dict) and c.get("code"):
            asked.append((c.get("system"), c["code"], c.get("display")))
    if not asked:
        raise BadRequest("Give a code (code, with system), a coding or a codeableConcept", expression="code")
    return asked


def lookup_code(query: list[tuple[str, str]], body: dict[str, Any] | None) -> dict[str, Any]:
    """CodeSystem/$lookup: system + code (or a coding) -> Parameters (name, version, display, definition)."""
    inputs = _inputs(query, body)
    system, code, _ = _coded(inputs)[0]
    cs = _code_system_by(system, None, "system")
    version = _one(inputs, "version")
    if version is not None and version != cs["version"]:
        raise NotFound(f"{cs['url']} has no version '{version}' here (only {cs['version']})", expression="version")
    try:
        return lookup(cs, code)
    except TerminologyError as error:
        raise _terminology(error) from None


def validate_code_in(kind: str, query: list[tuple[str, str]], body: dict[str, Any] | None,
                     id: str | None = None) -> dict[str, Any]:
    """CodeSystem or ValueSet $validate-code: `result` true when the code (any coding of a codeableConcept) is
    in the code system or value set named by `url` (or the URL's id)."""
    inputs = _inputs(query, body)
    asked = _coded(inputs)
    url = _one(inputs, "url")
    if kind == "CodeSystem":
        cs = _code_system_by(url, id, "url")
        what, concepts = cs["url"], list(concepts_of(cs))
    else:
        vs, concepts = _value_set_by(url, id)
        what = vs["url"]
    answers = [validate_code(concepts, what, system, code, display) for system, code, display in asked]
    return next((a for a in answers if a["parameter"][0]["valueBoolean"]), answers[0])


def expand_value_set(query: list[tuple[str, str]], body: dict[str, Any] | None, id: str | None = None
                     ) -> dict[str, Any]:
    """ValueSet/$expand: `filter` (text in code or display), `count`, `offset`."""
    inputs = _inputs(query, body)
    vs, concepts = _value_set_by(_one(inputs, "url"), id)
    try:
        return expand(vs, concepts, filter=_one(inputs, "filter"), count=_int(inputs, "count"),
                      offset=_int(inputs, "offset") or 0, timestamp=fhir_instant(utcnow()))
    except TerminologyError as error:
        raise _terminology(error) from None


def security(base: str) -> dict[str, Any]:
    """`rest.security` when SMART Backend Services tokens are required: the SMART-on-FHIR service and, in the
    oauth-uris extension, the token endpoint (where service/auth/urls.py puts it)."""
    from service.auth.urls import auth_urls

    urls = auth_urls(base)
    return {
        "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                       "extension": [{"url": "token", "valueUri": urls.token}]}],
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}]}],
        "description": "SMART Backend Services (client_credentials, private_key_jwt with RS384 or ES384): get an "
                       f"access token at {urls.token} and send it as Authorization: Bearer. Discovery: "
                       f"{base}/.well-known/smart-configuration.",
    }


def capability_statement(base: str, contributions: Sequence[Contribution] = (), *,
                         smart: bool = False) -> dict[str, Any]:
    """The CapabilityStatement; `smart` (TRIAL_FHIR_AUTH=smart) declares the token-based security."""
    operations: dict[str, list[dict[str, Any]]] = {}
    for contribution in contributions:
        for level, declared in contribution.operations.items():
            operations.setdefault(level, []).extend(declared)
    resources = []
    for stored in REGISTRY:  # each stored type as it declares itself (service/core/registry.py)
        rtype = stored.name
        params = [{"name": p.name, "definition": p.definition, "type": p.type, "documentation": p.description}
                  for p in (sp.fhir for sp in stored.params.values())]
        entry: dict[str, Any] = {
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
        if not stored.writable:  # recorded by the server (AuditEvent): clients read and search it only
            entry.update({"interaction": [{"code": c} for c in ("read", "vread", "history-instance", "search-type")],
                          "versioning": "versioned", "updateCreate": False, "conditionalCreate": False,
                          "conditionalUpdate": False, "conditionalDelete": "not-supported"})
            del entry["referencePolicy"]
        entry["searchInclude"] = [i.text for i in INCLUDES if i.source == rtype]
        entry["searchRevInclude"] = [i.text for i in INCLUDES if i.target == rtype]
        entry["documentation"] = _RESULT_PARAMS_DOC.format(sorts=", ".join(("_id", "_lastUpdated", *stored.sorts)))
        ops = operations.get(rtype)
        if ops:
            entry["operation"] = ops
        resources.append(entry)
    resources.append({"type": "CodeSystem", "interaction": [{"code": "read"}, {"code": "search-type"}],
                      "searchParam": [{"name": "url", "type": "uri"}]})
    resources.append({"type": "SearchParameter", "interaction": [{"code": "read"}, {"code": "search-type"}],
                      "searchParam": [{"name": "url", "type": "uri"}, {"name": "name", "type": "string"},
                                      {"name": "code", "type": "token"}, {"name": "base", "type": "token"}]})
    for contribution in contributions:
        for resource in contribution.resources:
            ops = resource.get("operation", []) + operations.get(resource["type"], [])
            resources.append({**resource, **({"operation": ops} if ops else {})})
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": "FHIR R4 JSON for a clinical trial: EHRs push, research portals pull.",
        "resource": resources,
        "interaction": [{"code": "transaction"}, {"code": "batch"}],
    }
    if operations.get("system"):
        rest["operation"] = operations["system"]
    if smart:
        rest["security"] = security(base)
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
