"""OpenAPI (JSON Schema) descriptions of FHIR resources, generated from their fhir.resources models, so that the
documented request and response bodies follow the R4B structure the service checks on write without a hand-kept
copy of it.

One schema per resource type: `resourceType` (its one value), every element of the resource at the top level with
its FHIR description, its JSON type (`string`, `number`, `boolean`, `array`, or `object` for a data type, named and
linked to the R4 data type page), the values of a required code binding (`enum`), and `required` for what the
model requires (`Observation.status`, `Observation.code`, …). Nested data types are not expanded: the linked R4 page
is their definition, and expanding them would put the whole of FHIR into the document. The trial's own rules
(units, value ranges, references to enrolled subjects) are in each operation's description and answered as 422s
naming the element.
"""

import datetime
import decimal
import types
import typing
from typing import Any

from fhir_mappings import fhir

DATATYPES = "https://hl7.org/fhir/R4/datatypes.html"
_SCALARS: dict[type, dict[str, Any]] = {
    str: {"type": "string"}, bool: {"type": "boolean"}, int: {"type": "integer"},
    float: {"type": "number"}, decimal.Decimal: {"type": "number"},
    datetime.datetime: {"type": "string", "format": "date-time"}, datetime.date: {"type": "string", "format": "date"},
    datetime.time: {"type": "string", "format": "time"}, bytes: {"type": "string", "format": "byte"}}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the element's type, whether it repeats), from `Optional[List[Annotated[str, Code()]]]` and the like."""
    repeats = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        elif origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (list, typing.List):  # noqa: UP006  # fhir.resources annotates with typing.List
            annotation, repeats = typing.get_args(annotation)[0], True
        else:
            return annotation, repeats


def element_schema(annotation: Any, description: str | None, enum: list[str] | None = None) -> dict[str, Any]:
    kind, repeats = _unwrap(annotation)
    scalar = _SCALARS.get(kind) if isinstance(kind, type) else None
    if scalar is not None:
        schema = dict(scalar)
    else:
        name = getattr(kind, "__name__", "Element").removesuffix("Type")
        schema = {"type": "object", "title": name,
                  "externalDocs": {"url": f"{DATATYPES}#{name}" if name != "Resource"
                                   else "https://hl7.org/fhir/R4/resource.html"}}
    if enum:
        schema["enum"] = enum
    if repeats:
        schema = {"type": "array", "items": schema}
    if description:
        schema["description"] = description
    return schema


def resource_schema(model: type[fhir.Resource]) -> dict[str, Any]:
    """The JSON Schema of one resource type's top level (see the module docstring)."""
    name = model.get_resource_type()
    properties: dict[str, Any] = {"resourceType": {"type": "string", "enum": [name]}}
    required = ["resourceType"]
    for field_name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue  # fhir_comments, and the `_element` extensions of primitives
        key = info.alias or field_name
        enum_values = extra.get("enum_values")
        enum = [str(v) for v in enum_values if v != "+"] if isinstance(enum_values, list) and extra.get(
            "element_required") else None
        properties[key] = element_schema(info.annotation, info.title, enum)
        if extra.get("element_required") or info.is_required():
            required.append(key)
    return {"type": "object", "title": name, "description": f"FHIR R4 {name} "
            f"(https://hl7.org/fhir/R4/{name.lower()}.html)", "required": required, "properties": properties}
