"""Structure checks: is this FHIR R4 JSON of the expected type? (Trial rules live beside each mapping.)"""

from datetime import date, time
from decimal import Decimal
from typing import Any, TypeAlias

from pydantic import BaseModel, ValidationError

from fhir_mappings.outcome import Issue, issue, issues_from_validation_error

MAX_DEPTH = 64
TOO_DEEP = f"Resource is nested deeper than {MAX_DEPTH} levels"

#: where a value is: (parent, JSON property, index in its array or None), spelled out by _spell
_Path: TypeAlias = tuple["_Path | None", str, int | None]
#: an object still to walk: (JSON as sent, its parsed model, its path, its depth)
_Frame: TypeAlias = tuple[dict[str, Any], BaseModel, _Path | None, int]


def structure_issues(payload: Any, resource_type: str, model: type[BaseModel]) -> list[Issue]:
    """Problems that make `payload` not a FHIR R4 `resource_type` (400), or [] when it parses."""
    if not isinstance(payload, dict):
        return [issue("structure", f"Expected a JSON object ({resource_type} resource)", resource_type)]
    sent = payload.get("resourceType")
    if sent != resource_type:
        return [issue("invalid", f"resourceType is '{sent}', expected '{resource_type}'",
                      f"{resource_type}.resourceType")]
    # no depth walk before parsing: the models take ~250 levels before a RecursionError (caught below), HTTP
    # bodies are depth-checked on arrival, and the walk after parsing rejects anything deeper than MAX_DEPTH
    try:
        parsed = model.model_validate(payload)
    except ValidationError as exc:
        return issues_from_validation_error(resource_type, exc)
    except RecursionError:
        return [issue("structure", TOO_DEEP, resource_type)]
    except (ValueError, TypeError) as exc:
        return [issue("invalid", f"Invalid {resource_type}: {exc}", resource_type)]
    return json_type_issues(payload, parsed, resource_type)


def json_type_issues(payload: dict[str, Any], parsed: BaseModel, resource_type: str) -> list[Issue]:
    """FHIR JSON types that pydantic coerced: a decimal/integer must be a JSON number, a boolean a JSON
    boolean and a date/dateTime/instant/time a JSON string (fhir.resources accepts `"12"` for a decimal, `1` or
    `"yes"` for a boolean and `-1` for a dateTime, and the stored JSON would keep the wrong type).

    The same walk rejects a resource nested deeper than MAX_DEPTH (objects and arrays, the resource being 1).
    Paths are kept as parent links and only spelled out for an issue: most leaves are strings, checked first.
    """
    issues: list[Issue] = []
    stack: list[_Frame] = [(payload, parsed, None, 1)]
    while stack:
        data, model, path, depth = stack.pop()
        names = _json_names(type(model))
        for key, sent in data.items():
            if sent is None or sent == "" or sent == [] or sent == {}:  # R4 JSON: leave an absent element out
                issues.append(issue("invalid", _EMPTY[type(sent)], _spell(resource_type, (path, key, None))))
                continue
            if isinstance(sent, list):
                _check_items(data, key, sent, path, issues, resource_type)
            name = names.get(key)
            if name is None:
                continue
            value = getattr(model, name, None)
            if isinstance(sent, list) and isinstance(value, list):
                if depth + 2 > MAX_DEPTH and (depth + 1 > MAX_DEPTH or any(isinstance(s, (dict, list)) for s in sent)):
                    return [issue("structure", TOO_DEEP, resource_type)]
                for i, (s, v) in enumerate(zip(sent, value, strict=False)):
                    if not isinstance(v, str):
                        _check(s, v, (path, key, i), depth + 2, stack, issues, resource_type)
            elif not isinstance(value, str):
                if depth + 1 > MAX_DEPTH and isinstance(sent, (dict, list)):
                    return [issue("structure", TOO_DEEP, resource_type)]
                _check(sent, value, (path, key, None), depth + 1, stack, issues, resource_type)
    return issues


#: R4 JSON (hl7.org/fhir/R4/json.html): an element without a value is left out, never sent null, "", [] or {}
_EMPTY = {type(None): "null is not a FHIR JSON value: leave the element out",
          str: "An empty string is not a FHIR value: leave the element out",
          list: "An empty array is not FHIR JSON: leave the element out",
          dict: "An empty object is not FHIR JSON: leave the element out"}


def _check_items(data: dict[str, Any], key: str, sent: list[Any], path: _Path | None, issues: list[Issue],
                 resource_type: str) -> None:
    """The items of an array: none empty; null only in an array of primitives whose `_key` array carries the
    item's id or extensions at the same place (R4's way to extend one primitive of a list)."""
    for i, item in enumerate(sent):
        if item is None:
            partner = data.get(f"_{key}") if not key.startswith("_") else data.get(key[1:])
            if isinstance(partner, list) and i < len(partner) and partner[i] is not None:
                continue
            issues.append(issue("invalid", _EMPTY[type(None)], _spell(resource_type, (path, key, i))))
        elif item == "" or item == {} or item == []:
            issues.append(issue("invalid", _EMPTY[type(item)], _spell(resource_type, (path, key, i))))


def _check(sent: Any, value: Any, at: _Path, depth: int, stack: list[_Frame], issues: list[Issue],
           resource_type: str) -> None:
    if isinstance(value, BaseModel):
        if isinstance(sent, dict):
            stack.append((sent, value, at, depth))
    elif isinstance(value, bool):
        if not isinstance(sent, bool):
            issues.append(issue("invalid", f"Expected a JSON boolean, got {sent!r}", _spell(resource_type, at)))
    elif isinstance(value, (int, float, Decimal)):
        if isinstance(sent, bool) or not isinstance(sent, (int, float)):
            issues.append(issue("invalid", f"Expected a JSON number, got {sent!r}", _spell(resource_type, at)))
    elif isinstance(value, (date, time)):  # pydantic reads a number as a Unix timestamp
        if not isinstance(sent, str):
            issues.append(issue("invalid", f"Expected a date/time string, got {sent!r}", _spell(resource_type, at)))


def _spell(resource_type: str, at: _Path | None) -> str:
    """`Observation.component[1].valueQuantity.value` from the parent links (parent, key, index)."""
    parts: list[str] = []
    while at is not None:
        at, key, index = at
        parts.append(key if index is None else f"{key}[{index}]")
    return ".".join([resource_type, *reversed(parts)])


_NAMES: dict[type[BaseModel], dict[str, str]] = {}


def _json_names(cls: type[BaseModel]) -> dict[str, str]:
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
