"""Structure checks: is this FHIR R4 JSON of the expected type? (Trial rules live beside each mapping.)"""

from datetime import date, time
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ValidationError

from fhir_mappings.outcome import Issue, issue, issues_from_validation_error

MAX_DEPTH = 64


def structure_issues(payload: Any, resource_type: str, model: type) -> list[Issue]:
    """Problems that make `payload` not a FHIR R4 `resource_type` (400), or [] when it parses."""
    if not isinstance(payload, dict):
        return [issue("structure", f"Expected a JSON object ({resource_type} resource)", resource_type)]
    sent = payload.get("resourceType")
    if sent != resource_type:
        return [issue("invalid", f"resourceType is '{sent}', expected '{resource_type}'", f"{resource_type}.resourceType")]
    # no depth walk before parsing: the models take ~250 levels before a RecursionError (caught below), HTTP
    # bodies are depth-checked on arrival, and the walk after parsing rejects anything deeper than MAX_DEPTH
    try:
        parsed = model.model_validate(payload)
    except ValidationError as exc:
        return issues_from_validation_error(resource_type, exc)
    except RecursionError:
        return [issue("structure", f"Resource is nested deeper than {MAX_DEPTH} levels", resource_type)]
    except (ValueError, TypeError) as exc:
        return [issue("invalid", f"Invalid {resource_type}: {exc}", resource_type)]
    return json_type_issues(payload, parsed, resource_type)


def json_type_issues(payload: dict, parsed: BaseModel, resource_type: str) -> list[Issue]:
    """FHIR JSON types that pydantic coerced: a decimal/integer must be a JSON number, a boolean a JSON
    boolean and a date/dateTime/instant/time a JSON string (fhir.resources accepts `"12"` for a decimal, `1` or
    `"yes"` for a boolean and `-1` for a dateTime, and the stored JSON would keep the wrong type).

    The same walk rejects a resource nested deeper than MAX_DEPTH (objects and arrays, the resource being 1).
    """
    issues = []
    stack = [(payload, parsed, resource_type, 1)]
    while stack:
        data, model, path, depth = stack.pop()
        names = _json_names(type(model))
        for key, sent in data.items():
            name = names.get(key)
            if name is None:
                continue
            value = getattr(model, name, None)
            where = f"{path}.{key}"
            inner = depth + 1  # of `sent` when it is an object or array; of its items when it is an array
            if isinstance(sent, list) and isinstance(value, list):
                pairs = [(s, v, f"{where}[{i}]") for i, (s, v) in enumerate(zip(sent, value))]
                inner += 1
                if inner > MAX_DEPTH and (depth + 1 > MAX_DEPTH or any(isinstance(s, (dict, list)) for s in sent)):
                    return [issue("structure", f"Resource is nested deeper than {MAX_DEPTH} levels", resource_type)]
            else:
                pairs = [(sent, value, where)]
                if inner > MAX_DEPTH and isinstance(sent, (dict, list)):
                    return [issue("structure", f"Resource is nested deeper than {MAX_DEPTH} levels", resource_type)]
            for s, v, at in pairs:
                if isinstance(v, BaseModel):
                    if isinstance(s, dict):
                        stack.append((s, v, at, inner))
                elif isinstance(v, bool):
                    if not isinstance(s, bool):
                        issues.append(issue("invalid", f"Expected a JSON boolean, got {s!r}", at))
                elif isinstance(v, (int, float, Decimal)):
                    if isinstance(s, bool) or not isinstance(s, (int, float)):
                        issues.append(issue("invalid", f"Expected a JSON number, got {s!r}", at))
                elif isinstance(v, (date, time)):  # pydantic reads a number as a Unix timestamp
                    if not isinstance(s, str):
                        issues.append(issue("invalid", f"Expected a date/time string, got {s!r}", at))
    return issues


_NAMES: dict[type, dict[str, str]] = {}


def _json_names(cls: type) -> dict[str, str]:
    """JSON property name -> model field name (they differ for e.g. `class` and `_status`)."""
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = {(f.alias or n): n for n, f in cls.model_fields.items()}
    return names


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
