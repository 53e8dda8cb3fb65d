"""What the server is: its CapabilityStatement and the code systems it publishes."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir_mappings import fhir
from fhir_mappings.dates import fhir_instant
from fhir_mappings.json_patch import PATCH_FORMATS
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
                      "_include, _revinclude (at most 1000 resources each, with a warning when cut), :iterate on "
                      "both, _summary=count|true|data, _elements, _total=accurate|estimate|none; paging by opaque "
                      "_cursor links (self, first, last, next, previous). The modifiers, comparators (prefixes) and "
                      "chains each parameter takes are in the SearchParameter its searchParam.definition names "
                      "(served at {base}/SearchParameter/<Type>-<code>); chains go one link, and "
                      "_has:Type:reference:parameter one level. Handling: lenient by default: an unknown parameter "
                      "is ignored, reported in an OperationOutcome entry and left out of the self link (Prefer: "
                      "handling=strict makes it a 400); a malformed value, an unsupported modifier, comparator or "
                      "chain, or a bad result parameter is always a 400 naming it.")
#: conditional criteria: R4 has no element for them (CapabilityStatement.rest.resource has none)
_CONDITIONAL_DOC = ("Conditional {writes} take as criteria any search parameter of {type} (modifiers, comparators, "
                    "chains and _has as in a search), strictly: an unknown or malformed parameter, or a result "
                    "parameter (_count, _sort, ...), is a 400; several matches are a 412.")


@dataclass(frozen=True)
class Contribution:
    """What a module beside the stored types adds to the CapabilityStatement: operations per level (`system` or a
    resource type) and resource types of its own. `create_app` passes each router module's contribution in."""

    operations: dict[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)
    resources: tuple[dict[str, Any], ...] = ()
    #: extensions on a resource type's entry (the Subscription topics' canonical URLs)
    resource_extensions: dict[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)


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
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
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


@dataclass
class Served:
    """What the app's route table says it serves (`served`): per resource type, its interaction codes, the
    conditional writes, and its operations; the system-level interactions and operations; the resource types in
    the order the routes list them."""

    interactions: dict[str, set[str]] = field(default_factory=dict)
    conditional: dict[str, set[str]] = field(default_factory=dict)  # "update", "delete", "patch"
    operations: dict[str, list[str]] = field(default_factory=dict)  # level ("system" or a type) -> names
    system: set[str] = field(default_factory=set)
    types: list[str] = field(default_factory=list)


def served(routes: Sequence[tuple[str, str]], prefix: str = "/fhir") -> Served:
    """Read the app's route table ((method, path) of every route) as FHIR: which interaction each path and method
    is (R4 http.html), and which operation each `$name` segment is. What is not a FHIR interaction (the
    CapabilityStatement itself, SMART discovery, an export's status URL) is left out."""
    found = Served()

    def add(rtype: str, code: str) -> None:
        if rtype not in found.types:
            found.types.append(rtype)
        found.interactions.setdefault(rtype, set()).add(code)

    def operation(level: str, name: str) -> None:
        names = found.operations.setdefault(level, [])
        if name not in names:
            names.append(name)
        if level != "system" and level not in found.types:
            found.types.append(level)

    for method, path in routes:
        if not path.startswith(prefix + "/") and path != prefix:
            continue
        parts = [p for p in path[len(prefix):].split("/") if p]
        variable = [p.startswith("{") for p in parts]
        if not parts:
            if method == "POST":
                found.system |= {"transaction", "batch"}
        elif parts == ["_history"]:
            found.system.add("history-system")
        elif len(parts) == 1 and parts[0].startswith("$"):
            operation("system", parts[0][1:])
        elif not parts[0][:1].isupper():
            continue  # metadata, .well-known, $export-status/…
        elif len(parts) == 1:
            rtype = parts[0]
            code = {"GET": "search-type", "POST": "create"}.get(method)
            if code:
                add(rtype, code)
            elif method in ("PUT", "DELETE", "PATCH"):
                found.conditional.setdefault(rtype, set()).add({"PUT": "update", "DELETE": "delete",
                                                                 "PATCH": "patch"}[method])
        elif len(parts) == 2 and not variable[1]:
            if parts[1] == "_search" and method == "POST":
                add(parts[0], "search-type")
            elif parts[1] == "_history" and method == "GET":
                add(parts[0], "history-type")
            elif parts[1].startswith("$"):
                operation(parts[0], parts[1][1:])
        elif len(parts) == 2:
            code = {"GET": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
            if code:
                add(parts[0], code)
        elif len(parts) == 3 and variable[1] and parts[2] == "_history" and method == "GET":
            add(parts[0], "history-instance")
        elif len(parts) == 4 and variable[1] and parts[2] == "_history" and variable[3] and method == "GET":
            add(parts[0], "vread")
        elif len(parts) == 3 and variable[1] and parts[2].startswith("$"):
            operation(parts[0], parts[2][1:])
    return found


#: the order R4 lists the type-level interactions in (restful-interaction)
INTERACTION_ORDER = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type")
#: what the non-stored types that have routes declare beyond their interactions
_OTHER_TYPES: dict[str, dict[str, Any]] = {
    "CodeSystem": {"searchParam": [{"name": "url", "type": "uri"}]},
    "ValueSet": {"searchParam": [{"name": "url", "type": "uri"}]},
    "SearchParameter": {"searchParam": [{"name": "url", "type": "uri"}, {"name": "name", "type": "string"},
                                        {"name": "code", "type": "token"}, {"name": "base", "type": "token"}]},
}


def operation_definition(level: str, name: str) -> str:
    """The canonical OperationDefinition of an operation the routes serve (one a Contribution does not declare):
    R4's own, by its `{Type}-{name}` id (`Resource-validate` for $validate, defined on every type)."""
    owner = "Resource" if name == "validate" else level
    return f"http://hl7.org/fhir/OperationDefinition/{owner}-{name}"


def capability_statement(base: str, contributions: Sequence[Contribution] = (), *,
                         smart: bool = False, routes: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The CapabilityStatement: what the app's route table serves (`routes`, (method, path) of each route, read by
    `served`), each stored type's search parameters and includes from the registry, the operations the routes
    serve (as a Contribution documents them, or by R4's definition); `smart` (TRIAL_FHIR_AUTH=smart) declares the
    token-based security."""
    found = served(routes)
    operations: dict[str, list[dict[str, Any]]] = {}
    for contribution in contributions:
        for level, declared in contribution.operations.items():
            operations.setdefault(level, []).extend(declared)
    for level, names in found.operations.items():
        known = {o["name"] for o in operations.get(level, [])}
        operations.setdefault(level, []).extend({"name": name, "definition": operation_definition(level, name)}
                                                for name in names if name not in known)
    # a contribution's operation no route serves is not claimed
    operations = {level: [o for o in ops if o["name"] in found.operations.get(level, ())]
                  for level, ops in operations.items()}
    contributed = {r["type"]: r for c in contributions for r in c.resources}
    resources = []
    for stored in REGISTRY:  # each stored type as it declares itself (service/core/registry.py)
        rtype = stored.name
        codes = found.interactions.get(rtype, set())
        conditional = found.conditional.get(rtype, set())
        params = [{"name": p.name, "definition": p.definition, "type": p.type, "documentation": p.description}
                  for p in (sp.fhir for sp in stored.params.values())]
        entry: dict[str, Any] = {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": [{"code": c} for c in INTERACTION_ORDER if c in codes],
            "versioning": "versioned-update" if "update" in codes else "versioned",
            "readHistory": "vread" in codes,
            "updateCreate": "update" in codes,  # PUT of an unknown id creates it
            "conditionalCreate": "create" in codes,  # If-None-Exist
            "conditionalRead": "full-support" if "read" in codes else "not-supported",  # If-None-Match, -Modified-
            "conditionalUpdate": "update" in conditional,
            "conditionalDelete": "single" if "delete" in conditional else "not-supported",
            "referencePolicy": ["literal", "logical", "resolves", "local"],
            "searchParam": params,
        }
        if not stored.writable:  # recorded by the server (AuditEvent): nothing refers to what a client wrote
            del entry["referencePolicy"]
        entry["searchInclude"] = [i.text for i in INCLUDES if i.source == rtype]
        entry["searchRevInclude"] = [i.text for i in INCLUDES if i.target == rtype]
        entry["documentation"] = _RESULT_PARAMS_DOC.format(sorts=", ".join(("_id", "_lastUpdated", *stored.sorts)),
                                                           base=base)
        writes = [w for w, claimed in (("create (If-None-Exist)", "create" in codes),
                                       ("update", "update" in conditional), ("patch", "patch" in conditional),
                                       ("delete", "delete" in conditional)) if claimed]
        if writes:
            entry["documentation"] += " " + _CONDITIONAL_DOC.format(writes=", ".join(writes), type=rtype)
        ops = operations.get(rtype)
        if ops:
            entry["operation"] = ops
        extensions = [e for c in contributions for e in c.resource_extensions.get(rtype, ())]
        if extensions:
            entry = {"extension": extensions, **entry}
        resources.append(entry)
    stored_names = {t.name for t in REGISTRY}
    for rtype in found.types:
        if rtype in stored_names:
            continue
        codes = found.interactions.get(rtype, set())
        resource: dict[str, Any] = {"type": rtype, **_OTHER_TYPES.get(rtype, {}), **contributed.get(rtype, {}),
                                    "interaction": [{"code": c} for c in INTERACTION_ORDER if c in codes]}
        if "read" in codes:
            resource["readHistory"] = False
        ops = operations.get(rtype)
        if ops:
            resource["operation"] = ops
        resources.append(resource)
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": "FHIR R4 JSON for a clinical trial: EHRs push, research portals pull.",
        "resource": resources,
        "interaction": [{"code": c} for c in ("transaction", "batch", "search-system", "history-system")
                        if c in found.system],
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
        "patchFormat": list(PATCH_FORMATS),
        "rest": [rest],
    }
    fhir.CapabilityStatement.model_validate(statement)
    return statement
