"""OpenAPI documentation pieces shared by the routers: FHIR JSON bodies and responses, and the
OperationOutcome every error is."""

from collections.abc import Iterable, Mapping
from typing import Any

from fhir_mappings.outcome import issue, outcome

OUTCOME_SCHEMA = {"$ref": "#/components/schemas/OperationOutcome"}
ERROR_EXAMPLE = outcome([issue("value", "EASI 80 {score} is outside 0…72", "Observation.valueQuantity.value")])


def schema_ref(name: str) -> dict[str, str]:
    """A reference to a schema of components/schemas: each stored type's (fhir_mappings/openapi_schema.py), its
    `<Type>Bundle` (a searchset or history of it), `Bundle`, `Resource`, `OperationOutcome` (service/main.py)."""
    return {"$ref": f"#/components/schemas/{name}"}


OBJECT: dict[str, Any] = {"type": "object"}


def fhir_json(example: Any, description: str = "FHIR resource", schema: dict[str, Any] | None = None) -> dict[str, Any]:
    # "type" beside "$ref": FastAPI merges this into the schema it derives for the response class ({"type":
    # "string"}), and the merged one must still say object
    schema = {**schema, "type": "object"} if schema else OBJECT
    return {"description": description,
            "content": {"application/fhir+json": {"schema": schema, "example": example},
                        "application/json": {"schema": schema}}}


def error_docs(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Malformed JSON or not valid FHIR R4 (OperationOutcome names the element)",
            404: "Unknown resource type or id", 405: "Interaction not supported", 406: "Only JSON is served",
            409: "Conflict: duplicate identifier or a concurrent change", 410: "The resource was deleted",
            412: "If-Match version mismatch, or a conditional interaction matched several resources",
            413: "Body too large", 415: "Body is not application/fhir+json",
            422: "Valid FHIR that breaks a trial rule or value-set binding (OperationOutcome names the element)"}
    return {str(c): {"description": text[c], "content": {"application/fhir+json": {
        "schema": OUTCOME_SCHEMA, "example": ERROR_EXAMPLE}}} for c in codes}


#: declared on every FHIR router: any 4xx is an OperationOutcome (and FastAPI's own 422 schema, which this
#: service never returns, is not advertised)
ANY_ERROR: dict[int | str, dict[str, Any]] = {
    "4XX": {"description": "Client error: an OperationOutcome naming the element at fault",
            "content": {"application/fhir+json": {"schema": OUTCOME_SCHEMA, "example": ERROR_EXAMPLE}}},
    "5XX": {"description": "Server error: an OperationOutcome; nothing was written",
            "content": {"application/fhir+json": {"schema": OUTCOME_SCHEMA}}}}


def body_doc(example: dict[str, Any], what: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = schema or OBJECT
    return {"requestBody": {"required": True, "description": what, "content": {
        "application/fhir+json": {"schema": schema, "example": example},
        "application/json": {"schema": schema, "example": example}}}}


# -- operation summaries in English ---------------------------------------------------------------------------

def article(word: str) -> str:
    """"a" or "an" before a resource type's name: an Observation, an AdverseEvent, a Patient."""
    return "an" if word[:1].upper() in "AEIOU" else "a"


def plural(word: str) -> str:
    """Observations, ResearchStudies, Patients."""
    if word.endswith("y") and word[-2:-1].lower() not in "aeiou":
        return word[:-1] + "ies"
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


# -- search parameters, from the registry of each stored type ------------------------------------------------

#: how a value of each type of search parameter is written (R4 search.html)
VALUE_FORMS = {
    "token": "token: `[system|]code`; `:missing`, `:not`",
    "reference": "reference: `Type/id` or `id`; chains `param.name=value`; `:missing`",
    "date": "date: `[prefix]YYYY[-MM[-DD[Thh:mm:ss+zz:zz]]]`, prefixes eq ne gt lt ge le sa eb",
    "quantity": "quantity: `[prefix]number[|system|code]`, converted to the measure's canonical unit",
    "string": "string: starts with, case-insensitive; `:exact`, `:contains`",
}
#: the result parameters every search takes (fhir_mappings/search.py RESULT_PARAMS, less the paging cursor)
RESULT_PARAM_DOCS: dict[str, tuple[dict[str, Any], str]] = {
    "_count": ({"type": "integer", "minimum": 0}, "Results per page (TRIAL_FHIR_DEFAULT_PAGE_SIZE, at most "
               "TRIAL_FHIR_MAX_PAGE_SIZE); `0`: the total only"),
    "_sort": ({"type": "string"}, "Sort key, `-` for descending; one key (ties by id)"),
    "_include": ({"type": "string"}, "Also return what a reference parameter points at: `Type:param[:Target]`; "
                 "`:iterate` from included resources too"),
    "_revinclude": ({"type": "string"}, "Also return what points at the matches: `Type:param[:Target]`"),
    "_summary": ({"type": "string", "enum": ["true", "false", "data", "count"]},
                 "Return a subset of each resource, or `count` for the total only"),
    "_elements": ({"type": "string"}, "Comma-separated top-level elements to return (plus id, meta, resourceType)"),
    "_total": ({"type": "string", "enum": ["none", "estimate", "accurate"]}, "Whether `Bundle.total` is counted"),
}


def search_parameters(params: Mapping[str, Any], sorts: Iterable[str]) -> list[dict[str, Any]]:
    """The OpenAPI query parameters of a type's search: each of its search parameters (name, FHIR type and
    description, from the registry's StoredType.params) and the result parameters."""
    documented: list[dict[str, Any]] = []
    for name, param in params.items():
        definition = param.fhir
        documented.append({"name": name, "in": "query", "required": False, "schema": {"type": "string"},
                           "x-fhir-type": definition.type,
                           "description": f"{definition.description} ({VALUE_FORMS[definition.type]}). "
                           f"Definition: {definition.definition}"})
    keys = sorted({"_id", "_lastUpdated", *sorts})
    for name, (schema, text) in RESULT_PARAM_DOCS.items():
        if name == "_sort":
            schema = {"type": "string", "enum": [k for key in keys for k in (key, f"-{key}")]}
        documented.append({"name": name, "in": "query", "required": False, "schema": schema, "description": text})
    return documented
