"""ConceptMap -> ConceptMapRecord + ConceptMapElementRecord: the site's translations of local codes (the lab's
codes of HL7 v2 results, service/hl7) to LOINC or the trial's codes, stored on the server so a mapping changes
without a restart.

| domain field (`concept_map`)      | FHIR path                                   | notes                                    |
|-----------------------------------|---------------------------------------------|------------------------------------------|
| `id`                              | `ConceptMap.id`                             |                                          |
| `url`, `version`, `name`, `status`| `ConceptMap.url` / `.version` / `.name` / `.status` | draft, active, retired, unknown  |
| `concept_map_element` rows        | `ConceptMap.group[].element[].target[]`     | (group.source, element.code) -> (group.target, target.code), one row per target |
| `equivalence`                     | `…target[].equivalence`                     | a translation uses relatedto, equivalent, equal, wider, subsumes |
"""  # noqa: E501 (the mapping table is wider than the code)

from typing import Any

from fhir_mappings.outcome import Issue, issue

#: equivalences under which a target may stand for its source (R4 ConceptMapEquivalence)
PUBLICATION_STATUS = ("draft", "active", "retired", "unknown")
TRANSLATING = frozenset({"relatedto", "equivalent", "equal", "wider", "subsumes"})


def concept_map_row(payload: dict[str, Any], id: str) -> dict[str, Any]:
    return dict(id=id, url=payload.get("url"), version=payload.get("version"), name=payload.get("name"),
                status=payload.get("status") or "unknown")


def concept_map_elements(payload: dict[str, Any], id: str) -> list[dict[str, Any]]:
    """One row per (source code, target code) of every group."""
    rows = []
    for group in payload.get("group") or []:
        source, target = group.get("source") or "", group.get("target") or ""
        for element in group.get("element") or []:
            for t in element.get("target") or []:
                if element.get("code") and t.get("code"):
                    rows.append(dict(id=id, source_system=source, source_code=element["code"], target_system=target,
                                     target_code=t["code"], target_display=t.get("display"),
                                     equivalence=t.get("equivalence") or "equivalent"))
    return rows


def check_concept_map(payload: dict[str, Any]) -> list[Issue]:
    """A translation needs both code systems: group.source and group.target name them."""
    problems = []
    if payload.get("status") not in PUBLICATION_STATUS:
        problems.append(issue("code-invalid", f"ConceptMap.status '{payload.get('status')}' is not one of "
                              f"{', '.join(PUBLICATION_STATUS)}", "ConceptMap.status"))
    for i, group in enumerate(payload.get("group") or []):
        for name in ("source", "target"):
            if not group.get(name):
                problems.append(issue("required", f"ConceptMap.group[{i}].{name} must name the code system of the "
                                      f"{name} codes", f"ConceptMap.group[{i}].{name}"))
    return problems
