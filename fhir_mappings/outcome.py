"""OperationOutcome issues: built here, rendered at the HTTP edge."""

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue: what went wrong (`code`), where (`expression`) and why (`diagnostics`)."""

    code: str
    diagnostics: str
    expression: tuple[str, ...] = field(default_factory=tuple)
    severity: str = "error"

    def to_fhir(self) -> dict[str, Any]:
        data: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            data["expression"] = list(self.expression)
        return data

    def prefixed(self, prefix: str) -> "Issue":
        """The same issue, located inside a container (e.g. `Bundle.entry[3].resource`). What a single request
        carries in its headers or URL (If-Match, If-None-Exist, the search) is in the entry's `request`."""
        entry = prefix.removesuffix(".resource")
        exprs = tuple(
            e if e.startswith("Bundle.") else f"{entry}.{_REQUEST_ELEMENTS[e]}" if e in _REQUEST_ELEMENTS
            else prefix + ("." + e.split(".", 1)[1] if "." in e else "")
            for e in self.expression
        ) or (prefix,)
        return replace(self, expression=exprs)


#: expressions of a single HTTP request -> the matching element of a Bundle entry
_REQUEST_ELEMENTS = {"If-Match": "request.ifMatch", "If-None-Exist": "request.ifNoneExist", "search": "request.url"}


def issue(code: str, diagnostics: str, *expression: str, severity: str = "error") -> Issue:
    return Issue(code=code, diagnostics=diagnostics, expression=tuple(e for e in expression if e), severity=severity)


def outcome(issues: list[Issue]) -> dict[str, Any]:
    """An OperationOutcome resource (as a dict) holding `issues`."""
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


def informational(diagnostics: str) -> dict[str, Any]:
    return outcome([issue("informational", diagnostics, severity="information")])


def fhirpath(resource_type: str, loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a FHIRPath-like expression: Observation.component[0].code."""
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("__root__", ""):
            continue
        else:
            name = str(part)
            if name.endswith("__ext"):  # fhir.resources' primitive extension fields (_status)
                name = "_" + name[: -len("__ext")]
            path += "." + name
    return path


_PYDANTIC_CODES = {"missing": "required", "model_field_validation.missing": "required", "extra_forbidden": "structure"}

#: pydantic error type -> our words (never pydantic's own text: it names Python types and links to its site)
_PYDANTIC_WORDS = {
    "missing": "This element is required",
    "model_field_validation.missing": "This element is required",
    "string_type": "Expected a JSON string", "string_pattern_mismatch": "Not a valid value for this element",
    "string_too_long": "This value is too long for this element", "string_too_short": "This value is too short",
    "int_type": "Expected a whole JSON number", "int_parsing": "Expected a whole number",
    "int_from_float": "Expected a whole JSON number, without a fraction",
    "float_type": "Expected a JSON number", "float_parsing": "Expected a number",
    "decimal_type": "Expected a JSON number", "decimal_parsing": "Expected a JSON number",
    "bool_type": "Expected JSON true or false", "bool_parsing": "Expected JSON true or false",
    "list_type": "Expected a JSON array", "tuple_type": "Expected a JSON array",
    "dict_type": "Expected a JSON object", "model_type": "Expected a JSON object",
    "model_attributes_type": "Expected a JSON object", "model_validation_format": "Expected a JSON object",
    "less_than_equal": "This number is too large for this element", "less_than": "This number is too large",
    "greater_than_equal": "This number is too small for this element", "greater_than": "This number is too small",
    "date_type": "Expected a date string", "date_parsing": "Not a valid date", "date_from_datetime_parsing":
    "Not a valid date", "datetime_type": "Expected a dateTime string", "datetime_parsing": "Not a valid dateTime",
    "datetime_from_date_parsing": "Not a valid dateTime", "time_type": "Expected a time string",
    "time_parsing": "Not a valid time", "bytes_type": "Expected a base64 string",
    "base64_decode": "Not valid base64", "recursion_loop": "This resource is nested too deeply",
}


def issues_from_validation_error(resource_type: str, error: ValidationError,
                                 kind_at: Callable[[tuple[Any, ...]], str | None] | None = None) -> list[Issue]:
    """One `invalid`/`required`/`structure` issue per pydantic error, with its element path, in our words:
    `kind_at` tells the FHIR type of the element at a location (e.g. 'dateTime') for a more precise message."""
    issues = []
    for err in error.errors(include_url=False, include_input=False):
        loc = tuple(err.get("loc", ()))
        kind = err.get("type", "")
        if loc == ("resource_type",) or kind == "fhir-validation-wrong-resource-type":
            issues.append(issue("invalid", "resourceType does not match the endpoint", f"{resource_type}.resourceType"))
            continue
        code = _PYDANTIC_CODES.get(kind, "invalid")
        if code == "structure":
            message = f"Unknown element '{loc[-1] if loc else ''}' for {resource_type}"
        else:
            message = pydantic_words(err, kind_at(loc) if kind_at and loc else None)
        issues.append(issue(code, message, fhirpath(resource_type, loc)))
    return issues or [issue("invalid", f"This is not a valid {resource_type}", resource_type)]


_CHOICE_LIST = re.compile(r"\[([^\]]*)\]")


_LIMITS = {"less_than_equal": ("le", "at most"), "less_than": ("lt", "less than"),
           "greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "more than"),
           "string_too_long": ("max_length", "at most {} characters long"),
           "string_too_short": ("min_length", "at least {} characters long")}


def pydantic_words(err: Any, fhir_type: str | None = None) -> str:
    """One pydantic error (an item of `ValidationError.errors()`) in our words: never pydantic's own message, which
    names Python types and links to its site. `fhir_type`: the FHIR type of the element, when known."""
    kind, raw = str(err.get("type", "")), str(err.get("msg", ""))
    ctx = err.get("ctx") or {}
    if kind in _LIMITS and _LIMITS[kind][0] in ctx:
        key, words = _LIMITS[kind]
        return f"Must be {words.format(ctx[key]) if '{}' in words else f'{words} {ctx[key]}'}"
    if kind == "value_error":
        if "Any of one field value is expected" in raw or "Expect any of field value" in raw:
            choices = _CHOICE_LIST.search(raw)
            names = [n.strip(" '\"") for n in choices.group(1).split(",")] if choices else []
            stem = os.path.commonprefix(names) if names else ""
            element = f"{stem}[x]" if stem else "a choice element"
            if "but got multiple" in raw:
                return f"Only one type of {element} may be given"
            return f"{element} is required"
        if "is required" in raw or "One of field value is required" in raw:
            return "A value, an id or an extension is required here"
    if fhir_type is not None and kind not in ("missing", "model_field_validation.missing"):
        return f"Not a valid FHIR {fhir_type}"
    return _PYDANTIC_WORDS.get(kind, "Not a valid value for this element")
