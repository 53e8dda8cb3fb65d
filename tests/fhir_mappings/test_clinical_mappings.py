"""Encounter, MedicationAdministration, Procedure and Provenance -> their typed rows (pure, no database)."""

from datetime import UTC, date, datetime

import pytest

from fhir_mappings.administration import administration_row, check_administration, check_procedure, procedure_row
from fhir_mappings.encounter import check_encounter, encounter_row
from fhir_mappings.provenance import provenance_row, provenance_targets
from fhir_mappings.terminology import load_catalogue
from service.trial.models import Enrolment
from tests.data import issue_pairs
from tests.factories import encounter, medication_administration, procedure, provenance

ENROLMENT = Enrolment(study_id="s1", subject_id="rs1", patient_id="p1", day0=date(2024, 1, 10),
                      catalogue=load_catalogue())
WHO = {"study_id": "s1", "subject_id": "rs1", "patient_id": "p1"}


def test_encounter_row():
    row = encounter_row(encounter("p1", "2024-02-07T09:00:00+09:00"), "e1", ENROLMENT)
    assert row == {"id": "e1", **WHO, "status": "finished", "class_code": "AMB",
                   "period_start": datetime(2024, 2, 7, 0, 0, tzinfo=UTC),
                   "period_end": datetime(2024, 2, 7, 1, 30, tzinfo=UTC), "start_date": date(2024, 2, 7)}


def test_encounter_row_without_period():
    body = encounter("p1")
    del body["period"], body["class"]
    row = encounter_row(body, "e2", ENROLMENT)
    assert (row["period_start"], row["period_end"], row["start_date"], row["class_code"]) == (None, None, None, None)


@pytest.mark.parametrize(("status", "expect"), [
    ("finished", []), ("in-progress", []), ("entered-in-error", []),
    ("completed", [["code-invalid", "Encounter.status"]]), ("Finished", [["code-invalid", "Encounter.status"]]),
    (None, [["code-invalid", "Encounter.status"]]),
])
def test_check_encounter(status, expect):
    assert issue_pairs(check_encounter({**encounter("p1"), "status": status})) == expect


def test_administration_row_has_dose_route_and_date():
    row = administration_row(medication_administration("p1", "2024-01-10T10:00:00+09:00", dose=2.5e7), "m1",
                             ENROLMENT)
    assert row == {"id": "m1", **WHO, "status": "completed",
                   "code_system": "https://trial-fhir.org/CodeSystem/product", "code": "hUCB-MSC",
                   "effective": datetime(2024, 1, 10, 1, 0, tzinfo=UTC), "local_date": date(2024, 1, 10),
                   "dose_value": 2.5e7, "dose_unit": "{cells}", "route_system": "http://snomed.info/sct",
                   "route_code": "263887005"}


def test_administration_row_from_a_period_and_a_dose_without_ucum_code():
    body = medication_administration("p1")
    del body["effectiveDateTime"]
    body["effectivePeriod"] = {"start": "2024-01-11", "end": "2024-01-11"}
    body["dosage"] = {"dose": {"value": 3, "unit": "vials"}}
    row = administration_row(body, "m2", ENROLMENT)
    assert (row["local_date"], row["dose_value"], row["dose_unit"], row["route_code"]) == \
        (date(2024, 1, 11), 3.0, "vials", None)


@pytest.mark.parametrize(("change", "expect"), [
    ({}, []),
    ({"status": "given"}, [["code-invalid", "MedicationAdministration.status"]]),
    ({"dosage": {"dose": {"unit": "cells"}}}, [["required", "MedicationAdministration.dosage.dose.value"]]),
    ({"status": "done", "dosage": {"dose": {"unit": "cells"}}},
     [["code-invalid", "MedicationAdministration.status"], ["required", "MedicationAdministration.dosage.dose.value"]]),
])
def test_check_administration(change, expect):
    assert issue_pairs(check_administration({**medication_administration("p1"), **change})) == expect


def test_procedure_row():
    row = procedure_row(procedure("p1", "2024-01-10"), "pr1", ENROLMENT)
    assert row == {"id": "pr1", **WHO, "status": "completed", "code_system": "http://snomed.info/sct",
                   "code": "422145002", "performed": datetime(2024, 1, 10, tzinfo=UTC),
                   "local_date": date(2024, 1, 10)}


@pytest.mark.parametrize(("status", "expect"), [
    ("completed", []), ("preparation", []), ("final", [["code-invalid", "Procedure.status"]]),
])
def test_check_procedure(status, expect):
    assert issue_pairs(check_procedure({**procedure("p1"), "status": status})) == expect


def test_provenance_targets_are_the_references_to_stored_types():
    body = provenance("Observation/o1", "Patient/p1", "Immunization/i1")
    body["target"] += [{"display": "not kept"}, {"reference": "Observation?identifier=lab|42"},
                       {"reference": "https://elsewhere.example.org/fhir/Observation/x"}]
    found = provenance_targets(body, {"Observation", "Patient"})
    assert [(i, t) for i, t, _ in found] == [(0, "Observation"), (1, "Patient"), (4, "Observation")]


def test_provenance_row():
    row = provenance_row(provenance("Observation/o1"), "pv1", "s1", "p1")
    assert row == {"id": "pv1", "study_id": "s1", "patient_id": "p1",
                   "recorded": datetime(2024, 2, 7, 1, 31, tzinfo=UTC), "agent": "Site EHR interface"}
    body = provenance("Observation/o1", agent=[{"who": {"reference": "Device/ehr"}}])
    assert provenance_row(body, "pv2", "s1", None)["agent"] == "Device/ehr"
