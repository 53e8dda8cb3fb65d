"""Structure checks: is this FHIR R4 JSON of the expected type? (Trial rules live beside each mapping.)"""

import json
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, TypeAlias, Union, get_args, get_origin
from uuid import UUID

import orjson
from pydantic import BaseModel, ValidationError

from fhir_mappings.fhir import resource_class
from fhir_mappings.outcome import Issue, issue, issues_from_validation_error
from fhir_mappings.primitives import CHECKS, json_type

MAX_DEPTH = 64
TOO_DEEP = f"Resource is nested deeper than {MAX_DEPTH} levels"

#: where a value is: (parent, JSON property, index in its array or None), spelled out by _spell
_Path: TypeAlias = tuple["_Path | None", str, int | None]
#: an object still to walk: (JSON as sent, its model class, its path, its depth, is it a resource)
_Frame: TypeAlias = tuple[dict[str, Any], type[BaseModel], _Path | None, int, bool]


def structure_issues(payload: Any, resource_type: str, model: type[BaseModel]) -> list[Issue]:
    """Problems that make `payload` not a FHIR R4 `resource_type` (400), or [] when it is one: every offending
    element, each named once. Our own walk over the JSON (`json_issues`: R4's JSON rules, the JSON type and format of
    every primitive, unknown elements) and the models' validation (cardinality, choice types) both run; where both
    name an element, the walk's words are kept."""
    if not isinstance(payload, dict):
        return [issue("structure", f"Expected a JSON object ({resource_type} resource)", resource_type)]
    sent = payload.get("resourceType")
    if sent != resource_type:
        return [issue("invalid", f"resourceType is '{sent}', expected '{resource_type}'",
                      f"{resource_type}.resourceType")]
    found = json_issues(payload, model, resource_type)
    if found and found[0].diagnostics == TOO_DEEP:
        return found
    # the models take ~250 levels before a RecursionError (caught below); the walk above stops at MAX_DEPTH
    try:
        model.model_validate(payload)
    except ValidationError as exc:
        return _merge(found, issues_from_validation_error(resource_type, exc, _FieldTypes(model)))
    except RecursionError:
        return [issue("structure", TOO_DEEP, resource_type)]
    except (ValueError, TypeError, KeyError, AttributeError):  # e.g. a contained resource of no R4 type (KeyError)
        return found or [issue("invalid", f"This is not a valid {resource_type}", resource_type)]
    return found


def _merge(walked: list[Issue], modelled: list[Issue]) -> list[Issue]:
    """The walk's issues, and the models' for elements the walk found nothing wrong with (nor inside nor around)."""
    if not walked:
        return modelled
    named = {e for i in walked for e in i.expression}

    def near(expression: str) -> bool:
        return any(expression == n or n.startswith((expression + ".", expression + "["))
                   or expression.startswith((n + ".", n + "[")) for n in named)

    return walked + [i for i in modelled if not any(near(e) for e in i.expression)]


@dataclass(frozen=True, slots=True)
class _Field:
    """What a JSON property of an R4 type holds: a primitive (`kind`, e.g. 'dateTime'), a complex type (`model`)
    or any resource (`resource`, named by its resourceType); `many` for an array."""

    many: bool
    kind: str | None = None
    model: type[BaseModel] | None = None
    resource: bool = False


_FIELDS: dict[type[BaseModel], dict[str, _Field]] = {}
_REQUIRED: dict[type[BaseModel], tuple[str, ...]] = {}
#: fhir.resources' own additions, which are no R4 elements
_NOT_R4 = frozenset({"fhir_comments", "resource_type"})


def _fields(cls: type[BaseModel]) -> dict[str, _Field]:
    """JSON property name -> what it holds, for one model class (built once per class)."""
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = {}
        for name, info in cls.model_fields.items():
            if name in _NOT_R4:
                continue
            fields[info.alias or name] = _describe(info.annotation)
        _FIELDS[cls] = fields
    return fields


def _required(cls: type[BaseModel]) -> tuple[str, ...]:
    """The JSON names of the elements R4 requires (min 1) in an object of `cls`. The models check a required
    primitive only once every element is valid: here it is named beside the other problems."""
    required = _REQUIRED.get(cls)
    if required is None:
        required = _REQUIRED[cls] = tuple(
            info.alias or name for name, info in cls.model_fields.items()
            if name not in _NOT_R4 and (info.is_required() or (isinstance(info.json_schema_extra, dict)
                                                               and info.json_schema_extra.get("element_required"))))
    return required


def _describe(annotation: Any, many: bool = False) -> _Field:
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _describe(args[0], many) if len(args) == 1 else _Field(many, kind="unchecked")
    if origin is list:
        return _describe(get_args(annotation)[0], True)
    if origin is Annotated:
        base, *markers = get_args(annotation)
        for marker in markers:
            kind = type(marker).__name__
            kind = kind[:1].lower() + kind[1:]
            if kind in CHECKS:
                return _Field(many, kind=kind)
        return _describe(base, many)
    if annotation is bool:
        return _Field(many, kind="boolean")
    if annotation is str:
        return _Field(many, kind="string")
    if annotation is UUID:
        return _Field(many, kind="uuid")
    klass = getattr(annotation, "get_model_klass", None)
    if klass is not None:
        target = klass()
        if target.__name__ in ("Resource", "DomainResource"):
            return _Field(many, resource=True)
        return _Field(many, model=target)
    return _Field(many, kind="unchecked")  # a type this walk does not know: an element all the same


class _FieldTypes:
    """The FHIR type of the element at a pydantic error location (for messages in our words)."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model

    def __call__(self, loc: tuple[Any, ...]) -> str | None:
        cls: type[BaseModel] | None = self.model
        found: _Field | None = None
        for part in loc:
            if isinstance(part, int):
                continue
            if cls is None:
                return None
            info = cls.model_fields.get(str(part))
            found = _fields(cls).get(info.alias or str(part) if info is not None else str(part))
            if found is None:
                return None
            cls = found.model
        return found.kind if found is not None and found.kind in CHECKS else None


def json_issues(payload: dict[str, Any], model: type[BaseModel], resource_type: str) -> list[Issue]:
    """R4's JSON rules, walked over the JSON as sent with the model classes as the map (no parsed model needed, so
    it runs whether or not the models accept the resource):

    - no null, "", [] or {} (hl7.org/fhir/R4/json.html: an element without a value is left out);
    - every primitive of the JSON type and format of its FHIR type (`primitives.CHECKS`: pydantic coerces `"12"`
      into a decimal, `1` into a boolean and `1.0` into an integer, and lets ids of any length, uris with spaces
      and control characters through);
    - no element R4 does not define (also inside contained resources and as `_element` primitive extensions);
    - every element R4 requires present (the models check required primitives only once all else is valid);
    - an array where the element repeats, a single value where it does not;
    - nothing nested deeper than MAX_DEPTH (objects and arrays, the resource being 1).

    Paths are kept as parent links and only spelled out for an issue.
    """
    issues: list[Issue] = []
    stack: list[_Frame] = [(payload, model, None, 1, True)]
    while stack:
        data, cls, path, depth, is_resource = stack.pop()
        fields = _fields(cls)
        for name in _required(cls):
            if name not in data and f"_{name}" not in data:
                issues.append(issue("required", f"'{name}' is required in R4 {_type_name(cls)}",
                                    _spell(resource_type, (path, name, None))))
        for key, sent in data.items():
            field = fields.get(key)
            if field is None:
                if not (is_resource and key == "resourceType"):
                    issues.append(issue("structure", f"Unknown element '{key}': R4 {_type_name(cls)} has no such "
                                        "element", _spell(resource_type, (path, key, None))))
                continue
            if sent is None or sent == "" or sent == [] or sent == {}:  # R4 JSON: leave an absent element out
                issues.append(issue("invalid", _EMPTY[type(sent)], _spell(resource_type, (path, key, None))))
                continue
            if field.many:
                if not isinstance(sent, list):
                    issues.append(issue("invalid", f"'{key}' repeats: send a JSON array, not "
                                        f"{json_type(sent)}", _spell(resource_type, (path, key, None))))
                    continue
                _check_items(data, key, sent, path, issues, resource_type)
                if depth + 2 > MAX_DEPTH and (depth + 1 > MAX_DEPTH or any(isinstance(s, (dict, list)) for s in sent)):
                    return [issue("structure", TOO_DEEP, resource_type)]
                for i, item in enumerate(sent):
                    if item is not None and item != "" and item != {} and item != []:
                        _check(item, field, (path, key, i), depth + 2, stack, issues, resource_type)
            elif isinstance(sent, list):
                issues.append(issue("invalid", f"'{key}' does not repeat: send one value, not an array",
                                    _spell(resource_type, (path, key, None))))
            else:
                if depth + 1 > MAX_DEPTH and isinstance(sent, dict):
                    return [issue("structure", TOO_DEEP, resource_type)]
                _check(sent, field, (path, key, None), depth + 1, stack, issues, resource_type)
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


def _check(sent: Any, field: _Field, at: _Path, depth: int, stack: list[_Frame], issues: list[Issue],
           resource_type: str) -> None:
    if field.kind is not None:
        check = CHECKS.get(field.kind)
        problem = check(sent) if check is not None else None
        if problem is not None:
            issues.append(issue("invalid", problem, _spell(resource_type, at)))
    elif not isinstance(sent, dict):
        issues.append(issue("invalid", f"Expected a JSON object, not {json_type(sent)}", _spell(resource_type, at)))
    elif field.model is not None:
        stack.append((sent, field.model, at, depth, False))
    else:
        cls = resource_class(sent.get("resourceType"))
        if cls is None:
            issues.append(issue("invalid", f"'{sent.get('resourceType')}' is not an R4 resource type",
                                _spell(resource_type, (at, "resourceType", None))))
        else:
            stack.append((sent, cls, at, depth, True))


def _type_name(cls: type[BaseModel]) -> str:
    name = getattr(cls, "__resource_type__", None) or cls.__name__
    return "Element" if name == "FHIRPrimitiveExtension" else name  # `_status`: the primitive's id and extensions


def _spell(resource_type: str, at: _Path | None) -> str:
    """`Observation.component[1].valueQuantity.value` from the parent links (parent, key, index)."""
    parts: list[str] = []
    while at is not None:
        at, key, index = at
        parts.append(key if index is None else f"{key}[{index}]")
    return ".".join([resource_type, *reversed(parts)])


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


class _Repeated(dict):  # type: ignore[type-arg]
    """A JSON object read by the exact scan that had some names more than once (`repeated`)."""

    repeated: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    found = _Repeated(obj)
    found.repeated = [k for k, _ in pairs if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
    return found


def duplicate_key_issues(raw: bytes | str, data: Any) -> list[Issue]:
    """Names given twice in one JSON object (R4 JSON: each property once; orjson quietly keeps the last), one issue
    per repeated name, at its element path (`Patient.name[0].family`, `Bundle.entry[2].resource.gender`).

    `data` is `raw` as orjson read it. The cheap test first: without repeats, orjson's compact output of `data` has
    as many `"` as `raw` (each string keeps its quotes; a `"` inside a string is `\\"` in both, or `\\u0022` in
    `raw`, counted apart); each dropped repeat takes at least its name's two. Only when the counts differ (or the
    output fails) is `raw` scanned again, exactly, by the standard library with a hook that sees every pair.
    """
    text = raw.encode() if isinstance(raw, str) else raw
    try:
        escaped = text.count(b"\\u0022") if b"\\" in text else 0  # the search only when there is an escape at all
        if orjson.dumps(data).count(b'"') == text.count(b'"') + escaped:
            return []
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        exact = json.loads(text, object_pairs_hook=_pairs)
    except ValueError:
        return []
    root = exact.get("resourceType") if isinstance(exact, dict) else None
    issues: list[Issue] = []
    stack: list[tuple[Any, str]] = [(exact, root if isinstance(root, str) and root else "body")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            for name in getattr(node, "repeated", ()):
                issues.append(issue("invalid", f"'{name}' appears more than once in this JSON object: FHIR JSON "
                                    "gives each element once", f"{where}.{name}"))
            stack.extend((v, f"{where}.{k}") for k, v in node.items() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node) if isinstance(v, (dict, list)))
    return sorted(issues, key=lambda i: i.expression)
