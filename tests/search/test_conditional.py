"""Conditional create, update and delete select with any search criteria of the type, through the search's own
parser and compiler (issue 11 §6): 0, 1 or several matches as R4 says, bad criteria a 400, never a widening."""

import pytest

from tests.factories import MRN, observation, patient


def test_conditional_create_with_any_criteria(client, trial):
    one = f"subject={trial['p1']}&code=http://loinc.org|19113-0&date=2024-01-10"
    response = client.post("/fhir/Observation", json=observation(trial["p1"], "IGE", 100, "2024-01-10"),
                           headers={"If-None-Exist": one})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == trial["ige1"]
    response = client.post("/fhir/Observation", json=observation(trial["p1"], "IGE", 100, "2024-01-10"),
                           headers={"If-None-Exist": "patient.identifier=MRN-1&code=19113-0"})
    assert response.status_code == 200 and response.json()["id"] == trial["ige1"]
    many = client.post("/fhir/Observation", json=observation(trial["p1"]),
                       headers={"If-None-Exist": f"subject={trial['p1']}&code=EASI"})
    assert many.status_code == 412, many.text
    none = client.post("/fhir/Observation", json=observation(trial["p1"], "IGE", 50, "2024-05-01"),
                       headers={"If-None-Exist": f"subject={trial['p1']}&code=19113-0&date=2024-05-01"})
    assert none.status_code == 201, none.text


def test_conditional_update_with_any_criteria(client, trial):
    query = f"Observation?subject:Patient.identifier={MRN}|MRN-2&code=19113-0"
    body = observation(trial["p2"], "IGE", 300, "2024-02-07", unit="ng/mL")
    response = client.put(f"/fhir/{query}", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == trial["ige2"] and response.json()["meta"]["versionId"] == "2"
    assert client.put(f"/fhir/Observation?subject={trial['p1']}&code=EASI", json=body).status_code == 412
    created = client.put(f"/fhir/Observation?subject={trial['p2']}&date=2024-06-01",
                         json=observation(trial["p2"], "EASI", 3, "2024-06-01"))
    assert created.status_code == 201, created.text


def test_conditional_delete_with_any_criteria(client, trial):
    assert client.delete("/fhir/Observation?patient.gender=male&code=19113-0").status_code in (200, 204)
    assert client.get(f"/fhir/Observation/{trial['ige2']}").status_code == 410
    assert client.delete("/fhir/Observation?patient.gender=female&code=EASI").status_code == 412
    assert client.get(f"/fhir/Observation/{trial['easi1_base']}").status_code == 200  # nothing deleted
    response = client.delete("/fhir/Observation?_has:Observation:subject:code=EASI")  # _has to a non-target
    assert response.status_code == 400


@pytest.mark.parametrize("criteria, name", [
    ("date=2024-13-45", "date"),
    ("colour=blue", "colour"),  # unknown: a condition never ignores what it can't read
    ("code:text=EASI", "code:text"),
    ("subject.name=Kim", "subject.name"),
    ("_count=1", "_count"),
    ("_sort=date", "_sort"),
])
def test_bad_conditional_criteria_are_400_and_write_nothing(client, trial, criteria, name):
    before = client.get("/fhir/Observation?_summary=count").json()["total"]
    for response in (client.post("/fhir/Observation", json=observation(trial["p1"]),
                                 headers={"If-None-Exist": criteria}),
                     client.put(f"/fhir/Observation?{criteria}", json=observation(trial["p1"])),
                     client.delete(f"/fhir/Observation?{criteria}")):
        assert response.status_code == 400, response.text
        issue = response.json()["issue"][0]
        assert issue["expression"][0] in ("If-None-Exist", "search") and name in issue["diagnostics"]
    assert client.get("/fhir/Observation?_summary=count").json()["total"] == before


def test_conditional_create_of_a_patient_by_birthdate_and_gender(client, trial):
    response = client.post("/fhir/Patient", json=patient("MRN-9", gender="male", birthDate="1990-01-01"),
                           headers={"If-None-Exist": "gender=male&birthdate=1990-01-01"})
    assert response.status_code == 200 and response.json()["id"] == trial["p2"]
