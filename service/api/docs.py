"""OpenAPI documentation pieces shared by the routers: FHIR JSON bodies and responses, and the
OperationOutcome every error is."""

from typing import Any

from fhir_mappings.outcome import issue, outcome

OUTCOME_SCHEMA = {"$ref": "#/components/schemas/OperationOutcome"}
ERROR_EXAMPLE = outcome([issue("value", "EASI 80 {score} is outside 0…72", "Observation.valueQuantity.value")])


def fhir_json(example: Any, description: str = "FHIR resource") -> dict[str, Any]:
    return {"description": description,
            "content": {"application/fhir+json": {"schema": {"type": "object"}, "example": example},
                        "application/json": {"schema": {"type": "object"}}}}


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


def body_doc(example: dict[str, Any], what: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": what, "content": {
        "application/fhir+json": {"schema": {"type": "object"}, "example": example},
        "application/json": {"schema": {"type": "object"}, "example": example}}}}
