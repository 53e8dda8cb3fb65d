"""The trial's ValueSets and the terminology operations on them and on its CodeSystem ($lookup, $validate-code,
$expand): pure functions over the catalogues (fhir_mappings/terminology.py), no I/O.

Each catalogue gives two ValueSets:

- `{code system id}` (https://trial-fhir.org/ValueSet/ad-scores): every concept of the catalogue's CodeSystem;
- `{catalogue}-measures` (https://trial-fhir.org/ValueSet/atopic-dermatitis-measures): the codes an Observation may
  carry (each measure's codes, LOINC included).

Failures are `TerminologyError(message, expression, not_found)`: not_found for a code system or value set this
server does not know (404), else the inputs are wrong (400).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fhir_mappings.terminology import Catalogue, code_system_resource

VALUE_SET_BASE = "https://trial-fhir.org/ValueSet/"


class TerminologyError(Exception):
    def __init__(self, message: str, expression: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.expression = expression
        self.not_found = not_found


@dataclass(frozen=True)
class Concept:
    system: str
    code: str
    display: str | None
    definition: str | None = None


def concepts_of(code_system: dict[str, Any]) -> Iterator[Concept]:
    """Every concept of a CodeSystem resource, nested ones too."""
    def walk(items: list[dict[str, Any]]) -> Iterator[Concept]:
        for c in items:
            yield Concept(code_system["url"], c["code"], c.get("display"), c.get("definition"))
            yield from walk(c.get("concept") or [])
    yield from walk(code_system.get("concept") or [])


def value_sets(catalogue: Catalogue) -> list[tuple[dict[str, Any], list[Concept]]]:
    """The catalogue's ValueSet resources, each with the concepts it holds (its expansion)."""
    cs = code_system_resource(catalogue)
    all_codes = list(concepts_of(cs))
    displays = {(c.system, c.code): c.display for c in all_codes}
    measures = [Concept(system, code, displays.get((system, code)) or m.display)
                for m in catalogue.measures for system, code in m.codes]
    common = {"version": cs["version"], "status": "active", "experimental": False, "publisher": "trial-fhir",
              "immutable": False}
    every = {"resourceType": "ValueSet", "id": cs["id"], "url": VALUE_SET_BASE + cs["id"], **common, "name": cs["name"],
             "title": f"All codes of {cs['title']}", "description": f"Every concept of the CodeSystem {cs['url']}.",
             "compose": {"include": [{"system": cs["url"]}]}}
    by_system: dict[str, list[str]] = {}
    for c in measures:
        by_system.setdefault(c.system, []).append(c.code)
    measured_id = f"{catalogue.name}-measures"
    measured = {"resourceType": "ValueSet", "id": measured_id, "url": VALUE_SET_BASE + measured_id, **common,
                "name": "".join(p.capitalize() for p in measured_id.split("-")),
                "title": f"{catalogue.title}: measures",
                "description": "The codes an Observation of this trial may carry: each measure of its catalogue, "
                               "by its own code system (the trial's scores, LOINC for laboratory values).",
                "compose": {"include": [{"system": system, "concept": [{"code": code} for code in codes]}
                                        for system, codes in by_system.items()]}}
    return [(every, all_codes), (measured, measures)]


def lookup(code_system: dict[str, Any], code: str) -> dict[str, Any]:
    """CodeSystem/$lookup: a Parameters with name, version, display and the concept's definition (as the
    `definition` property); TerminologyError (not found) for a code the CodeSystem does not have."""
    concept = next((c for c in concepts_of(code_system) if c.code == code), None)
    if concept is None:
        raise TerminologyError(f"Code '{code}' is not in {code_system['url']}", "code", not_found=True)
    out: list[dict[str, Any]] = [{"name": "name", "valueString": code_system["name"]},
                                 {"name": "version", "valueString": code_system["version"]},
                                 {"name": "display", "valueString": concept.display or concept.code}]
    if concept.definition:
        out.append({"name": "property", "part": [{"name": "code", "valueCode": "definition"},
                                                 {"name": "value", "valueString": concept.definition}]})
    return {"resourceType": "Parameters", "parameter": out}


def validate_code(concepts: list[Concept], what: str, system: str | None, code: str,
                  display: str | None = None) -> dict[str, Any]:
    """$validate-code against `concepts` (of a CodeSystem or a ValueSet, named `what`): a Parameters with `result`,
    and `display` and `message` where there is something to say. A known code with another display is valid with a
    message (as R4's display rules say: the display is not the code's meaning)."""
    match = next((c for c in concepts if c.code == code and (system is None or c.system == system)), None)
    if match is None:
        where = f"{system}|{code}" if system else code
        return {"resourceType": "Parameters", "parameter": [
            {"name": "result", "valueBoolean": False},
            {"name": "message", "valueString": f"The code '{where}' is not in {what}"}]}
    out: list[dict[str, Any]] = [{"name": "result", "valueBoolean": True}]
    if match.display:
        out.append({"name": "display", "valueString": match.display})
    if display is not None and match.display is not None and display.strip().lower() != match.display.lower():
        out.append({"name": "message", "valueString": f"The display '{display}' is not the display of "
                                                      f"'{code}' ('{match.display}')"})
    return {"resourceType": "Parameters", "parameter": out}


def expand(value_set: dict[str, Any], concepts: list[Concept], *, filter: str | None = None,
           count: int | None = None, offset: int = 0, timestamp: str) -> dict[str, Any]:
    """ValueSet/$expand: the ValueSet with its `expansion`: the concepts whose code or display contains `filter`
    (case-insensitive), `offset` of them skipped, at most `count` shown; `total` counts every match."""
    if count is not None and count < 0:
        raise TerminologyError("count must be 0 or more", "count")
    if offset < 0:
        raise TerminologyError("offset must be 0 or more", "offset")
    text = (filter or "").strip().lower()
    matched = [c for c in concepts if not text or text in c.code.lower() or text in (c.display or "").lower()]
    shown = matched[offset:] if count is None else matched[offset:offset + count]
    parameters: list[dict[str, Any]] = [{"name": "offset", "valueInteger": offset}]
    if count is not None:
        parameters.append({"name": "count", "valueInteger": count})
    if filter:
        parameters.append({"name": "filter", "valueString": filter})
    expansion: dict[str, Any] = {"identifier": f"{value_set['url']}/expansion", "timestamp": timestamp,
                                 "total": len(matched), "offset": offset, "parameter": parameters}
    if shown:
        expansion["contains"] = [{"system": c.system, "code": c.code, **({"display": c.display} if c.display else {})}
                                 for c in shown]
    out = {k: v for k, v in value_set.items() if k != "compose"}
    out["expansion"] = expansion
    return out
