"""AdverseEvent <-> AdverseEventRecord: the AE value sets, relatedness, seriousness and the discontinuation
extension."""

import pytest

from fhir_mappings.adverse_event import (
    adverse_event_from_fhir,
    adverse_event_to_fhir,
    caused_withdrawal,
    check_adverse_event,
    is_related,
    seriousness_of,
)
from fhir_mappings.terminology import load_catalogue
from service.adverse_event.models import AdverseEventRecord
from service.trial.models import Enrolment
from tests.data import cases, issue_pairs


@pytest.mark.parametrize("case", cases("adverse_event", "check_adverse_event"))
def test_check_adverse_event(case):
    assert issue_pairs(check_adverse_event(case["input"])) == sorted(case["expect"])


@pytest.mark.parametrize("case", cases("adverse_event", "is_related"))
def test_is_related(case):
    assert is_related(case["input"]) is case["expect"]


@pytest.mark.parametrize("case", cases("adverse_event", "seriousness_of"))
def test_seriousness_of(case):
    assert seriousness_of(case["input"]) == case["expect"]


@pytest.mark.parametrize("case", cases("adverse_event", "caused_withdrawal"))
def test_caused_withdrawal(case):
    assert caused_withdrawal(case["input"]) is case["expect"]


@pytest.mark.parametrize("case", cases("adverse_event", "adverse_event_from_fhir"))
def test_adverse_event_from_fhir(case):
    enrolment = Enrolment(**case["args"]["enrolment"], day0=None, catalogue=load_catalogue())
    record = adverse_event_from_fhir(case["input"], case["args"]["id"], enrolment)
    assert record.model_dump(mode="json") == case["expect"]


@pytest.mark.parametrize("case", cases("adverse_event", "adverse_event_to_fhir"))
def test_adverse_event_to_fhir(case):
    given = case["input"]
    resource = adverse_event_to_fhir(AdverseEventRecord.model_validate(given["record"]), given["date"],
                                     given["relatedness"])
    assert resource.model_dump(mode="json", exclude_none=True) == case["expect"]
