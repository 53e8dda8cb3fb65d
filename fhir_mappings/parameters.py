"""FHIR `Parameters` in and out of operations ($validate, $lookup, $validate-code, $expand): pure, no I/O.

An operation takes its inputs from the URL query (GET, or POST beside a body) or from a Parameters body; both
arrive here as one list of (name, value, where) so an operation reads them one way.
"""

from typing import Any

#: the value[x] types an operation's primitive inputs come in
_VALUE_KEYS = ("valueCode", "valueUri", "valueString", "valueBoolean", "valueInteger", "valueCanonical",
               "valueUrl", "valueDateTime", "valueId")


class ParametersInvalid(Exception):
    """The operation's inputs are not what it takes (a 400 naming `expression`)."""

    def __init__(self, message: str, expression: str) -> None:
        super().__init__(message)
        self.expression = expression


def operation_inputs(query: list[tuple[str, str]], body: dict[str, Any] | None) -> list[tuple[str, Any, str]]:
    """(name, value, where) of every input: the query's, then a Parameters body's (`Parameters.parameter[i]`); a
    parameter's value is its `resource`, its value[x], or its parts as a dict (a `coding` part: the Coding)."""
    inputs: list[tuple[str, Any, str]] = [(name, value, name) for name, value in query]
    if body is None:
        return inputs
    if body.get("resourceType") != "Parameters":
        raise ParametersInvalid("The body must be a Parameters resource", "Parameters")
    for i, param in enumerate(body.get("parameter") or []):
        where = f"Parameters.parameter[{i}]"
        if not isinstance(param, dict) or not isinstance(param.get("name"), str):
            raise ParametersInvalid("Each parameter needs a name", f"{where}.name")
        if "resource" in param:
            value: Any = param["resource"]
        elif "valueCoding" in param:
            value = param["valueCoding"]
        elif "valueCodeableConcept" in param:
            value = param["valueCodeableConcept"]
        else:
            found = [k for k in _VALUE_KEYS if k in param]
            value = param[found[0]] if found else None
        if value is None and "part" not in param:
            raise ParametersInvalid(f"Parameter '{param['name']}' has no value", where)
        inputs.append((param["name"], value, where))
    return inputs


def single(inputs: list[tuple[str, Any, str]], name: str, kind: type | tuple[type, ...] = str) -> tuple[Any, str]:
    """The one value of input `name` ((None, name) when absent); `ParametersInvalid` when given twice or of
    another kind."""
    found = [(value, where) for n, value, where in inputs if n == name]
    if not found:
        return None, name
    if len(found) > 1:
        raise ParametersInvalid(f"'{name}' is given more than once", found[1][1])
    value, where = found[0]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ParametersInvalid(f"'{name}' has the wrong type", where)
    return value, where


def parameters(*items: tuple[str, str, Any]) -> dict[str, Any]:
    """A Parameters resource of (name, value[x] key, value) items; a None value is left out, a list value is
    one `part` list (its items themselves (name, key, value))."""
    out: list[dict[str, Any]] = []
    for name, key, value in items:
        if value is None:
            continue
        if key == "part":
            out.append({"name": name, "part": parameters(*value)["parameter"]})
        else:
            out.append({"name": name, key: value})
    return {"resourceType": "Parameters", "parameter": out}
