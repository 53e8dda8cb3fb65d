"""$validate on each stored type (issue 11 §5): structure and trial rules run as the write would run them, nothing
stored, 200 with the OperationOutcome whether or not the resource is valid (R4 resource-operation-validate); modes
create, update and delete; the Parameters form."""

import pytest

from fhir_mappings import fhir
from service.core.registry import TYPES
from tests.factories import (
    MRN,
    adverse_event,
    concept_map,
    created,
    encounter,
    enrol,
    medication_administration,
    observation,
    observation_definition,
    patient,
    plan_definition,
    procedure,
    provenance,
    study,
    subject,
    subscription,
    valid_resources,
    with_definition,
)

WRITABLE = [t for t, stored in TYPES.items() if stored.writable]


def counts(client) -> dict[str, int]:
    return {t: client.get(f"/fhir/{t}?_summary=count").json()["total"] for t in WRITABLE}


def valid_and_invalid(client) -> dict[str, tuple[dict, dict, str]]:
    """Per type: a valid resource, an invalid one, and the element the invalid one gets wrong."""
    ids = with_definition(client, enrol(client))
    good = valid_resources(ids, created(client.post("/fhir/Patient", json=patient()))["id"])
    bad = {
        "Patient": ({**patient(), "gender": "bogus"}, "Patient.gender"),
        "ResearchStudy": ({**study(), "status": "bogus"}, "ResearchStudy.status"),
        "ResearchSubject": (subject(ids["study"], "nobody"), "ResearchSubject.individual"),
        "Observation": (observation(ids["patient"], "EASI", 99), "Observation.valueQuantity.value"),
        "AdverseEvent": (adverse_event(ids["patient"], ids["study"], severity="catastrophic"), "AdverseEvent.severity"),
        "Encounter": (encounter(ids["patient"], status="bogus"), "Encounter.status"),
        "MedicationAdministration": (medication_administration(ids["patient"], status="bogus"),
                                     "MedicationAdministration.status"),
        "Procedure": (procedure(ids["patient"], status="bogus"), "Procedure.status"),
        "Provenance": (provenance(f"Patient/{ids['patient']}", recorded="soon"), "Provenance.recorded"),
        "ConceptMap": (concept_map(group=[{"target": "http://loinc.org", "element": [{"code": "A"}]}]),
                       "ConceptMap.group[0].source"),
        "Subscription": ({**subscription(), "criteria": "https://example.org/nothing"}, "Subscription.criteria"),
        "ObservationDefinition": (observation_definition(unit="furlongs"),
                                  "ObservationDefinition.quantitativeDetails.unit.coding[0].code"),
        "PlanDefinition": (plan_definition(ids["definition"], visits=(("week-0", 0, -14, 0), ("week-1", 7, 0, 10))),
                           "PlanDefinition.action[1].timingRange"),
    }
    return {t: (good[t], *bad[t]) for t in bad}


def issues(response) -> list[dict]:
    assert response.status_code == 200, response.text
    fhir.OperationOutcome.model_validate(response.json())
    return response.json()["issue"]


@pytest.mark.parametrize("resource_type", WRITABLE)
def test_validate_every_type_stores_nothing(client, resource_type):
    good, bad, element = valid_and_invalid(client)[resource_type]
    before = counts(client)
    ok = issues(client.post(f"/fhir/{resource_type}/$validate", json=good))
    assert [(i["severity"], i["code"]) for i in ok] == [("information", "informational")]
    wrong = issues(client.post(f"/fhir/{resource_type}/$validate", json=bad))
    assert any(i["severity"] == "error" and any(e.startswith(element) for e in i.get("expression", []))
               for i in wrong), wrong
    assert counts(client) == before
    # what $validate says is what the write does
    assert client.post(f"/fhir/{resource_type}", json=good).status_code == 201
    assert client.post(f"/fhir/{resource_type}", json=bad).status_code in (400, 422)


@pytest.mark.parametrize(("body", "element"), [
    ({"resourceType": "Patient", "gender": None}, "Patient.gender"),
    ({"resourceType": "Patient", "name": [{}]}, "Patient.name[0]"),
    ({"resourceType": "Patient", "colour": "blue"}, "Patient.colour"),
    ({"resourceType": "Observation", "status": "final"}, "Patient"),  # not a Patient at Patient/$validate
])
def test_structure_errors_are_issues_not_4xx(client, body, element):
    found = issues(client.post("/fhir/Patient/$validate", json=body))
    assert found and all(i["severity"] == "error" for i in found)
    assert any(e.startswith(element) for i in found for e in i.get("expression", [])), found


def test_create_mode_sees_a_taken_identifier(client):
    created(client.post("/fhir/Patient", json=patient("MRN-TAKEN")))
    found = issues(client.post("/fhir/Patient/$validate?mode=create", json=patient("MRN-TAKEN")))
    assert [i["code"] for i in found] == ["conflict"]
    assert found[0]["expression"] == ["Patient.identifier[0]"]


def test_parameters_form(client):
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {**patient(), "gender": "bogus"}}, {"name": "mode", "valueCode": "create"},
        {"name": "profile", "valueUri": "http://hl7.org/fhir/StructureDefinition/Patient"}]}
    found = issues(client.post("/fhir/Patient/$validate", json=body))
    assert [i["expression"] for i in found] == [["Patient.gender"]]
    empty = client.post("/fhir/Patient/$validate", json={"resourceType": "Parameters", "parameter": [
        {"name": "mode", "valueCode": "create"}]})
    assert empty.status_code == 400 and empty.json()["issue"][0]["expression"] == ["resource"]


def test_update_mode(client):
    pid = created(client.post("/fhir/Patient", json=patient("MRN-U1")))["id"]
    created(client.post("/fhir/Patient", json=patient("MRN-U2")))
    same = {**patient("MRN-U1"), "id": pid, "gender": "male"}
    assert issues(client.post(f"/fhir/Patient/{pid}/$validate?mode=update", json=same))[0]["severity"] == \
        "information"
    wrong_id = issues(client.post(f"/fhir/Patient/{pid}/$validate?mode=update", json={**same, "id": "other"}))
    assert wrong_id[0]["expression"] == ["Patient.id"]
    taken = issues(client.post(f"/fhir/Patient/{pid}/$validate", json={**patient("MRN-U2"), "id": pid}))
    assert taken[0]["code"] == "conflict"
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "1"


def test_delete_mode(client):
    ids = enrol(client)
    enrolled = issues(client.post(f"/fhir/Patient/{ids['patient']}/$validate?mode=delete"))
    assert enrolled[0]["code"] == "conflict"
    lonely = created(client.post("/fhir/Patient", json=patient()))["id"]
    assert issues(client.post(f"/fhir/Patient/{lonely}/$validate?mode=delete"))[0]["severity"] == "information"
    assert client.get(f"/fhir/Patient/{lonely}").status_code == 200  # still there
    assert client.post("/fhir/Patient/nobody/$validate?mode=delete").status_code == 404


@pytest.mark.parametrize(("url", "body", "expression"), [
    ("/fhir/Patient/$validate?mode=bogus", patient(), "mode"),
    ("/fhir/Patient/$validate?mode=update", patient(), "mode"),
    ("/fhir/Patient/$validate?mode=delete", None, "mode"),
    ("/fhir/Patient/$validate", None, "resource"),
    ("/fhir/Patient/$validate?profile=http://example.org/StructureDefinition/mine", patient(), "profile"),
    ("/fhir/Patient/$validate", {"resourceType": "Parameters", "parameter": [{"name": "mode"}]},
     "Parameters.parameter[0]"),
])
def test_validation_that_cannot_be_done_is_a_400(client, url, body, expression):
    r = client.post(url, json=body) if body is not None else client.post(url)
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == [expression]


def test_validate_is_audited_as_an_operation(client):
    issues(client.post("/fhir/Patient/$validate", json=patient()))
    events = client.get("/fhir/AuditEvent?subtype=operation").json()
    subtypes = [[c["code"] for c in e["resource"]["subtype"]] for e in events.get("entry", [])
                if e["search"]["mode"] == "match"]
    assert ["operation", "$validate"] in subtypes


def test_validate_does_not_exist_for_the_audit_trail(client):
    assert client.post("/fhir/AuditEvent/$validate", json={"resourceType": "AuditEvent"}).status_code == 405


def test_rules_not_enforced_are_warnings(client, app):
    app.state.settings.enforce_trial_rules = False
    try:
        ids = enrol(client)
        found = issues(client.post("/fhir/Observation/$validate", json=observation(ids["patient"], "EASI", 99)))
        assert [i["severity"] for i in found] == ["warning"]
    finally:
        app.state.settings.enforce_trial_rules = True


def test_identifier_in_mrn_system_is_kept_as_sent(client):
    """The resource validated is not changed by the validation (the same body posted afterwards is stored)."""
    body = patient("MRN-SAME")
    issues(client.post("/fhir/Patient/$validate", json=body))
    stored = created(client.post("/fhir/Patient", json=body))
    assert stored["identifier"] == [{"system": MRN, "value": "MRN-SAME"}]
