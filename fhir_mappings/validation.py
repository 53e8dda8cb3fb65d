"""Structure checks: is this FHIR R4 JSON of the expected type? (Trial rules live beside each mapping.)"""

from typing import Any

from pydantic import ValidationError

from fhir_mappings.outcome import Issue, issue, issues_from_validation_error

MAX_DEPTH = 64


def structure_issues(payload: Any, resource_type: str, model: type) -> list[Issue]:
    """Problems that make `payload` not a FHIR R4 `resource_type` (400), or [] when it parses."""
    if not isinstance(payload, dict):
        return [issue("structure", f"Expected a JSON object ({resource_type} resource)", resource_type)]
    sent = payload.get("resourceType")
    if sent != resource_type:
        return [issue("invalid", f"resourceType is '{sent}', expected '{resource_type}'", f"{resource_type}.resourceType")]
    if too_deep(payload, MAX_DEPTH):
        return [issue("structure", f"Resource is nested deeper than {MAX_DEPTH} levels", resource_type)]
    try:
        model.model_validate(payload)
    except ValidationError as exc:
        return issues_from_validation_error(resource_type, exc)
    except (ValueError, TypeError, RecursionError) as exc:
        return [issue("invalid", f"Invalid {resource_type}: {exc}", resource_type)]
    return []


def too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return False
