"""Code systems, value sets and the atopic-dermatitis catalogue: codes, units and conversions, ranges, visit windows."""

from decimal import Decimal

import pytest

from fhir_mappings import fhir, terminology
from fhir_mappings.terminology import (
    AD_SCORES,
    DEFAULT_CATALOGUE,
    RELATEDNESS,
    catalogue_names,
    code_system_resource,
    load_catalogue,
)
from tests.data import cases

AD = load_catalogue()


def _decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


@pytest.mark.parametrize("case", cases("terminology", "constants"))
def test_constant(case):
    value = getattr(terminology, case["input"])
    assert (list(value) if isinstance(value, tuple) else value) == case["expect"]


@pytest.mark.parametrize("case", cases("terminology", "value_sets"))
def test_value_set_membership(case):
    value_set = getattr(terminology, case["input"]["value_set"])
    assert (case["input"]["code"] in value_set) is case["expect"]


@pytest.mark.parametrize("case", cases("terminology", "relatedness"))
def test_relatedness_code_counts_as_related(case):
    assert RELATEDNESS.get(case["input"]) is case["expect"]


@pytest.mark.parametrize("case", cases("terminology", "measure_for"))
def test_measure_for(case):
    measure = AD.measure_for(case["input"]["system"], case["input"]["code"])
    assert (measure.key if measure else None) == case["expect"]


@pytest.mark.parametrize("case", cases("terminology", "measure_definition"))
def test_measure_definition(case):
    measure = AD.measure(case["input"])
    assert {field: getattr(measure, field) for field in case["expect"]} == case["expect"]
    assert measure.units[measure.unit] == (1, 1), "the canonical unit converts to itself"


@pytest.mark.parametrize("case", cases("terminology", "measure_range"))
def test_measure_range(case):
    measure = AD.measure(case["input"])
    assert (measure.min, measure.max) == (_decimal(case["expect"]["min"]), _decimal(case["expect"]["max"]))


@pytest.mark.parametrize("case", cases("terminology", "to_canonical"))
def test_to_canonical(case):
    given = case["input"]
    converted = AD.measure(given["measure"]).to_canonical(Decimal(given["value"]), given["unit"])
    assert converted == _decimal(case["expect"])


@pytest.mark.parametrize("case", cases("terminology", "visit_for_day"))
def test_visit_for_day(case):
    assert AD.visit_for_day(case["input"]) == case["expect"]


@pytest.mark.parametrize("case", cases("terminology", "target_day"))
def test_target_day(case):
    assert AD.target_day(case["input"]) == case["expect"]


@pytest.mark.parametrize("case", cases("terminology", "counted_statuses"))
def test_counted_status(case):
    assert (case["input"] in AD.counted_statuses) is case["expect"]


@pytest.mark.parametrize("case", cases("terminology", "code_system_concepts"))
def test_code_system_concept(case):
    codes = {concept["code"] for concept in code_system_resource(AD)["concept"]}
    assert (case["input"] in codes) is case["expect"]


def test_code_system_resource_is_an_r4_code_system_of_the_score_codes():
    resource = code_system_resource(AD)
    fhir.CodeSystem.model_validate(resource)
    assert (resource["id"], resource["url"], resource["content"]) == ("ad-scores", AD_SCORES, "complete")
    assert resource["count"] == len(resource["concept"])
    codes = {concept["code"] for concept in resource["concept"]}
    score_codes = {code for measure in AD.measures for system, code in measure.codes if system == AD_SCORES}
    assert score_codes <= codes


def test_the_default_catalogue_is_atopic_dermatitis():
    assert DEFAULT_CATALOGUE in catalogue_names()
    assert AD.name == DEFAULT_CATALOGUE
    assert [m.key for m in AD.measures] == ["EASI", "SCORAD", "IGA", "PRURITUS", "IGE", "EOSINOPHILS",
                                            "EOSINOPHILS-PCT"]
