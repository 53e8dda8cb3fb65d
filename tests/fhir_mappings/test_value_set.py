"""The trial's ValueSets and the terminology operations, pure (no database, no HTTP)."""

import pytest
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.valueset import ValueSet

from fhir_mappings.terminology import AD_SCORES, LOINC, code_system_resource, load_catalogue
from fhir_mappings.value_set import TerminologyError, concepts_of, expand, lookup, validate_code, value_sets

CATALOGUE = load_catalogue()
CS = code_system_resource(CATALOGUE)
SETS = {vs["id"]: (vs, concepts) for vs, concepts in value_sets(CATALOGUE)}
NOW = "2026-01-01T00:00:00.000Z"


def test_value_sets_are_valid_r4_and_follow_the_catalogue():
    assert set(SETS) == {"ad-scores", "atopic-dermatitis-measures"}
    for vs, _ in SETS.values():
        ValueSet.model_validate(vs)
    _, every = SETS["ad-scores"]
    assert [c.code for c in every] == [c["code"] for c in CS["concept"]]
    _, measures = SETS["atopic-dermatitis-measures"]
    assert {(c.system, c.code) for c in measures} == {code for m in CATALOGUE.measures for code in m.codes}
    assert (LOINC, "711-2") in {(c.system, c.code) for c in measures}


def test_lookup():
    found = lookup(CS, "EASI")
    Parameters.model_validate(found)
    values = {p["name"]: p.get("valueString") for p in found["parameter"]}
    assert values["name"] == "ADScores" and values["display"].startswith("Eczema Area")
    definition = next(p for p in found["parameter"] if p["name"] == "property")
    assert definition["part"][0] == {"name": "code", "valueCode": "definition"}
    with pytest.raises(TerminologyError) as unknown:
        lookup(CS, "NOPE")
    assert unknown.value.not_found and unknown.value.expression == "code"


@pytest.mark.parametrize(("system", "code", "display", "result", "message"), [
    (AD_SCORES, "IGA", None, True, False),
    (None, "IGA", None, True, False),
    (LOINC, "IGA", None, False, True),  # the right code in another system is another code
    (AD_SCORES, "iga", None, False, True),  # codes are case-sensitive
    (AD_SCORES, "IGA", "Investigator's Global Assessment (vIGA-AD)", True, False),
    (AD_SCORES, "IGA", "Something else", True, True),  # a wrong display: valid, with a message
])
def test_validate_code(system, code, display, result, message):
    answer = validate_code(list(concepts_of(CS)), AD_SCORES, system, code, display)
    Parameters.model_validate(answer)
    names = {p["name"]: p for p in answer["parameter"]}
    assert names["result"]["valueBoolean"] is result
    assert ("message" in names) is message


def test_expand_filters_and_pages():
    vs, concepts = SETS["ad-scores"]
    whole = expand(vs, concepts, timestamp=NOW)
    ValueSet.model_validate(whole)
    assert whole["expansion"]["total"] == len(concepts) == len(whole["expansion"]["contains"])
    assert "compose" not in whole
    head = expand(vs, concepts, filter="HEAD AND NECK", timestamp=NOW)
    assert head["expansion"]["total"] == 5 and all("-HN-" in c["code"] for c in head["expansion"]["contains"])
    page = expand(vs, concepts, filter="head and neck", count=2, offset=1, timestamp=NOW)
    assert page["expansion"]["total"] == 5 and page["expansion"]["offset"] == 1
    assert [c["code"] for c in page["expansion"]["contains"]] == \
        [c["code"] for c in head["expansion"]["contains"]][1:3]
    assert "contains" not in expand(vs, concepts, filter="zzz", timestamp=NOW)["expansion"]
    assert expand(vs, concepts, count=0, timestamp=NOW)["expansion"]["total"] == len(concepts)


@pytest.mark.parametrize(("count", "offset", "expression"), [(-1, 0, "count"), (None, -3, "offset")])
def test_expand_refuses_negative_paging(count, offset, expression):
    vs, concepts = SETS["ad-scores"]
    with pytest.raises(TerminologyError) as bad:
        expand(vs, concepts, count=count, offset=offset, timestamp=NOW)
    assert bad.value.expression == expression and not bad.value.not_found
