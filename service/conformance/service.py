"""What the server is: its CapabilityStatement and the code systems it publishes."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir_mappings import fhir
from fhir_mappings.terminology import catalogue_names, code_system_resource, load_catalogue
from service.core.registry import INCLUDES, REGISTRY, search_spec
from service.errors import NotFound

SERVER_VERSION = "0.1.0"
_RESULT_PARAMS_DOC = ("Result parameters: _count (default 50, max 1000), _sort ({sorts}; '-' for descending), "
                      "_include, _revinclude (at most 1000 resources each, with a warning when cut), :iterate on "
                      "both, _summary=count|true|data, _elements, _total=accurate|estimate|none; paging by opaque "
                      "_cursor links (self, first, last, next, previous). Modifiers: :missing, :not (tokens), "
                      ":exact and :contains (strings), the target type on references. Chains (one link): {chains}; "
                      "_has:Type:reference:parameter. Handling: lenient by default: an unknown parameter is ignored, "
                      "reported in an OperationOutcome entry and left out of the self link (Prefer: handling=strict "
                      "makes it a 400); a malformed value, an unsupported modifier or chain, or a bad result "
                      "parameter is always a 400 naming it.")


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
        chains = [f"{p}:{t}.<any {t} parameter>" for p, ts in search_spec(rtype).chains.items() for t in ts]
        entry["documentation"] = _RESULT_PARAMS_DOC.format(sorts=", ".join(("_id", "_lastUpdated", *stored.sorts)),
                                                           chains="; ".join(chains) or "none")
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
