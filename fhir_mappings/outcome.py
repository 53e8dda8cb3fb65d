"""OperationOutcome issues: built here, rendered at the HTTP edge."""

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


def issues_from_validation_error(resource_type: str, error: ValidationError) -> list[Issue]:
    """One `invalid`/`required`/`structure` issue per pydantic error, with its element path."""
    issues = []
    for err in error.errors(include_url=False, include_input=False):
        loc = tuple(err.get("loc", ()))
        if loc == ("resource_type",) or err.get("type") == "fhir-validation-wrong-resource-type":
            issues.append(issue("invalid", "resourceType does not match the endpoint", f"{resource_type}.resourceType"))
            continue
        code = _PYDANTIC_CODES.get(err.get("type", ""), "invalid")
        message = " ".join(str(err.get("msg", "invalid value")).split())
        if code == "structure":
            message = f"Unknown element '{loc[-1] if loc else ''}' for {resource_type}"
        issues.append(issue(code, message, fhirpath(resource_type, loc)))
    return issues or [issue("invalid", str(error), resource_type)]
