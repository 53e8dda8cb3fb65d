"""ResearchStudy <-> StudyRecord + ArmRecords, the study-status binding, arm names and the measure catalogue."""

import pytest

from fhir_mappings.research_study import check_research_study, research_study_from_fhir, research_study_to_fhir
from service.trial.models import ArmRecord, StudyRecord
from tests.data import cases, issue_pairs


@pytest.mark.parametrize("case", cases("research_study", "check_research_study"))
def test_check_research_study(case):
    assert issue_pairs(check_research_study(case["input"])) == sorted(case["expect"])


@pytest.mark.parametrize("case", cases("research_study", "research_study_from_fhir"))
def test_research_study_from_fhir(case):
    study, arms = research_study_from_fhir(case["input"], **case["args"])
    rows = {"study": study.model_dump(mode="json"), "arms": [arm.model_dump(mode="json") for arm in arms]}
    assert rows == case["expect"]


@pytest.mark.parametrize("case", cases("research_study", "research_study_to_fhir"))
def test_research_study_to_fhir(case):
    given = case["input"]
    resource = research_study_to_fhir(StudyRecord.model_validate(given["study"]),
                                      [ArmRecord.model_validate(arm) for arm in given["arms"]],
                                      [tuple(pair) for pair in given["identifiers"]], given["group_id"])
    assert resource.model_dump(mode="json", exclude_none=True) == case["expect"]


@pytest.mark.parametrize("case", cases("research_study", "round_trip"))
def test_research_study_round_trip(case):
    resource = research_study_to_fhir(*research_study_from_fhir(case["input"], **case["args"]))
    assert resource.model_dump(mode="json", exclude_none=True) == case["expect"]
