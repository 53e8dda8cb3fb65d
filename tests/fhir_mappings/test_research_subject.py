"""ResearchSubject <-> SubjectRecord: the subject-status binding, the study's arms and day 0."""

import pytest

from fhir_mappings.research_subject import check_research_subject, research_subject_from_fhir, research_subject_to_fhir
from service.trial.models import SubjectRecord
from tests.data import cases, issue_pairs


@pytest.mark.parametrize("case", cases("research_subject", "check_research_subject"))
def test_check_research_subject(case):
    found = check_research_subject(case["input"], set(case["args"]["arm_names"]))
    assert issue_pairs(found) == sorted(case["expect"])


@pytest.mark.parametrize("case", cases("research_subject", "research_subject_from_fhir"))
def test_research_subject_from_fhir(case):
    assert research_subject_from_fhir(case["input"], **case["args"]).model_dump(mode="json") == case["expect"]


@pytest.mark.parametrize("case", cases("research_subject", "research_subject_to_fhir"))
def test_research_subject_to_fhir(case):
    record = SubjectRecord.model_validate(case["input"]["record"])
    resource = research_subject_to_fhir(record, [tuple(pair) for pair in case["input"]["identifiers"]])
    assert resource.model_dump(mode="json", exclude_none=True) == case["expect"]
