"""Patient <-> PatientRecord, and the administrative-gender binding."""

import pytest

from fhir_mappings.patient import check_patient, patient_from_fhir, patient_to_fhir
from service.trial.models import PatientRecord
from tests.data import cases, issue_pairs


@pytest.mark.parametrize("case", cases("patient", "check_patient"))
def test_check_patient(case):
    assert issue_pairs(check_patient(case["input"])) == sorted(case["expect"])


@pytest.mark.parametrize("case", cases("patient", "patient_from_fhir"))
def test_patient_from_fhir(case):
    assert patient_from_fhir(case["input"], **case["args"]).model_dump(mode="json") == case["expect"]


@pytest.mark.parametrize("case", cases("patient", "patient_to_fhir"))
def test_patient_to_fhir(case):
    record = PatientRecord.model_validate(case["input"]["record"])
    identifiers = [tuple(pair) for pair in case["input"]["identifiers"]]
    resource = patient_to_fhir(record, identifiers)
    assert resource.model_dump(mode="json", exclude_none=True) == case["expect"]


@pytest.mark.parametrize("case", cases("patient", "round_trip"))
def test_patient_round_trip(case):
    resource = patient_to_fhir(patient_from_fhir(case["input"], **case["args"]))
    assert resource.model_dump(mode="json", exclude_none=True) == case["expect"]
