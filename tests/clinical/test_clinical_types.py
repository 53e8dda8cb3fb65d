"""Encounter, MedicationAdministration, Procedure and Provenance over HTTP: CRUD through the generic routes,
search, their study, export, de-identification, and an Encounter dating an Observation for its visit."""

import json
from datetime import date, timedelta

import pytest
from sqlalchemy import text

from fhir_mappings.terminology import VISIT_SYSTEM
from tests.factories import (
    created,
    encounter,
    enrol,
    medication_administration,
    observation,
    patient,
    procedure,
    provenance,
)

BUILDERS = {"Encounter": encounter, "MedicationAdministration": medication_administration, "Procedure": procedure}
DATE_PARAM = {"Encounter": "date", "MedicationAdministration": "effective-time", "Procedure": "date"}


def rows(engine, table: str, id: str) -> list:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT * FROM {table} WHERE id = :id"), {"id": id}).mappings().all()


@pytest.mark.parametrize("rtype", sorted(BUILDERS))
def test_crud_and_search_of_a_subjects_resource(client, rtype):
    ids = enrol(client)
    body = BUILDERS[rtype](ids["patient"])
    made = created(client.post(f"/fhir/{rtype}", json=body))
    rid = made["id"]
    assert client.get(f"/fhir/{rtype}/{rid}").json()["status"] == body["status"]
    # search: patient, subject, study, status, date, _id, _lastUpdated
    for query in (f"patient={ids['patient']}", f"subject=Patient/{ids['patient']}",
                  f"study=ResearchStudy/{ids['study']}", f"status={body['status']}", f"_id={rid}",
                  f"{DATE_PARAM[rtype]}=ge2024-01-01", "_lastUpdated=gt2000-01-01"):
        found = client.get(f"/fhir/{rtype}?{query}").json()
        assert [e["resource"]["id"] for e in found["entry"]] == [rid], query
    for query in ("status=entered-in-error", f"{DATE_PARAM[rtype]}=lt2020-01-01", "patient=nobody"):
        assert client.get(f"/fhir/{rtype}?{query}").json()["total"] == 0, query
    # update
    changed = {**{k: v for k, v in made.items() if k != "meta"}, "status": "entered-in-error"}
    r = client.put(f"/fhir/{rtype}/{rid}", json=changed)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/{rtype}?status=entered-in-error").json()["total"] == 1
    # delete
    assert client.delete(f"/fhir/{rtype}/{rid}").status_code in (200, 204)
    assert client.get(f"/fhir/{rtype}/{rid}").status_code == 410
    assert client.get(f"/fhir/{rtype}?_id={rid}").json()["total"] == 0


@pytest.mark.parametrize("rtype", sorted(BUILDERS))
def test_a_subjects_resource_needs_an_enrolled_patient_and_a_known_status(client, rtype):
    lone = created(client.post("/fhir/Patient", json=patient()))["id"]
    r = client.post(f"/fhir/{rtype}", json=BUILDERS[rtype](lone))
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == [f"{rtype}.subject"]
    ids = enrol(client)
    r = client.post(f"/fhir/{rtype}", json=BUILDERS[rtype](ids["patient"], status="bogus"))
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == [f"{rtype}.status"]
    r = client.post(f"/fhir/{rtype}", json={**BUILDERS[rtype](ids["patient"]), "subject": {"reference": "Patient/x"}})
    assert r.status_code == 422


def test_the_cell_administration_keeps_dose_route_and_date(client, engine):
    ids = enrol(client)
    made = created(client.post("/fhir/MedicationAdministration",
                               json=medication_administration(ids["patient"], "2024-01-10T10:00:00+09:00", dose=2.5e7)))
    [row] = rows(engine, "medication_administration", made["id"])
    assert (row["dose_value"], row["dose_unit"], row["route_code"], str(row["local_date"])[:10],
            row["study_id"], row["subject_id"]) == (2.5e7, "{cells}", "263887005", "2024-01-10", ids["study"],
                                                   ids["subject"])
    found = client.get("/fhir/MedicationAdministration?code=https://trial-fhir.org/CodeSystem/product|hUCB-MSC")
    assert found.json()["total"] == 1


def test_provenance_belongs_to_the_study_of_its_targets(client, engine):
    ids = enrol(client)
    obs = created(client.post("/fhir/Observation", json=observation(ids["patient"])))["id"]
    made = created(client.post("/fhir/Provenance", json=provenance(f"Observation/{obs}")))
    [row] = rows(engine, "provenance", made["id"])
    assert (row["study_id"], row["patient_id"]) == (ids["study"], ids["patient"])
    for query in (f"target=Observation/{obs}", f"patient={ids['patient']}", f"study={ids['study']}",
                  "recorded=ge2024-02-01"):
        assert [e["resource"]["id"] for e in client.get(f"/fhir/Provenance?{query}").json()["entry"]] == \
            [made["id"]], query
    # its targets are re-indexed on update and go with it on delete
    other = created(client.post("/fhir/Observation", json=observation(ids["patient"], value=3.0)))["id"]
    body = {**{k: v for k, v in made.items() if k != "meta"}, "target": [{"reference": f"Observation/{other}"}]}
    assert client.put(f"/fhir/Provenance/{made['id']}", json=body).status_code == 200
    assert client.get(f"/fhir/Provenance?target=Observation/{obs}").json()["total"] == 0
    assert client.get(f"/fhir/Provenance?target=Observation/{other}").json()["total"] == 1
    assert client.delete(f"/fhir/Provenance/{made['id']}").status_code in (200, 204)
    assert client.get(f"/fhir/Provenance?target=Observation/{other}").json()["total"] == 0


def test_provenance_targets_carry_the_patient_of_their_provenance(client, engine):
    """provenance_target.patient_id (migration 0012) is the Provenance's patient: the distribution key of a child
    table of patient data (docs/scaling.md); none when the targets are of two patients, and it follows updates."""
    a = enrol(client)
    b = enrol(client, study_id=a["study"])
    obs = created(client.post("/fhir/Observation", json=observation(a["patient"])))["id"]
    made = created(client.post("/fhir/Provenance", json=provenance(f"Observation/{obs}", f"Patient/{a['patient']}")))

    def targets() -> dict:
        with engine.connect() as conn:
            return {(r.target_type, r.target_id): r.patient_id for r in conn.execute(text(
                "SELECT target_type, target_id, patient_id FROM provenance_target WHERE id = :id"), {"id": made["id"]})}

    assert targets() == {("Observation", obs): a["patient"], ("Patient", a["patient"]): a["patient"]}
    both = {**{k: v for k, v in made.items() if k != "meta"},
            "target": [{"reference": f"Patient/{a['patient']}"}, {"reference": f"Patient/{b['patient']}"}]}
    assert client.put(f"/fhir/Provenance/{made['id']}", json=both).status_code == 200
    assert targets() == {("Patient", a["patient"]): None, ("Patient", b["patient"]): None}
    assert [row["patient_id"] for row in rows(engine, "provenance", made["id"])] == [None]
    only_b = {**both, "target": [{"reference": f"Patient/{b['patient']}"}]}
    assert client.put(f"/fhir/Provenance/{made['id']}", json=only_b).status_code == 200
    assert targets() == {("Patient", b["patient"]): b["patient"]}


def test_provenance_of_nothing_the_trial_keeps_or_of_two_studies_is_refused(client):
    r = client.post("/fhir/Provenance", json=provenance("Immunization/i1"))
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Provenance.target"]
    r = client.post("/fhir/Provenance", json=provenance("Observation/missing"))
    assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["Provenance.target[0]"]
    a, b = enrol(client), enrol(client)
    r = client.post("/fhir/Provenance", json=provenance(f"Patient/{a['patient']}", f"Patient/{b['patient']}"))
    assert r.status_code == 422 and "several studies" in r.json()["issue"][0]["diagnostics"]


def test_an_observation_without_a_date_takes_its_visit_from_its_encounter(client, engine):
    ids = enrol(client, day0="2024-01-10")
    enc = created(client.post("/fhir/Encounter", json=encounter(ids["patient"], "2024-02-07T09:00:00+09:00")))
    body = observation(ids["patient"], encounter={"reference": f"Encounter/{enc['id']}"})
    del body["effectiveDateTime"]
    made = created(client.post("/fhir/Observation", json=body))
    assert {t["system"]: t["code"] for t in made["meta"]["tag"]}[VISIT_SYSTEM] == "week-4"
    with engine.connect() as conn:
        visit = conn.execute(text("SELECT visit, study_day FROM measurement WHERE id = :id"),
                             {"id": made["id"]}).one()
    assert tuple(visit) == ("week-4", 28)
    # its own date wins over the encounter's
    dated = created(client.post("/fhir/Observation", json={**body, "effectiveDateTime": "2024-01-10"}))
    assert {t["system"]: t["code"] for t in dated["meta"]["tag"]}[VISIT_SYSTEM] == "baseline"


def test_an_encounter_in_a_transaction_dates_the_observations_that_name_it(client):
    ids = enrol(client, day0="2024-01-10")
    urn = "urn:uuid:00000000-0000-4000-8000-0000000e0001"
    body = observation(ids["patient"], encounter={"reference": urn})
    del body["effectiveDateTime"]
    r = client.post("/fhir", headers={"Prefer": "return=representation"}, json={
        "resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": body, "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": urn, "resource": encounter(ids["patient"], "2024-04-03T09:00:00+09:00"),
             "request": {"method": "POST", "url": "Encounter"}}]})
    assert r.status_code == 200, r.text
    tags = {t["system"]: t["code"] for t in r.json()["entry"][0]["resource"]["meta"]["tag"]}
    assert tags[VISIT_SYSTEM] == "week-12"


def test_new_types_are_in_the_capability_statement_and_the_export(client):
    ids = enrol(client)
    created(client.post("/fhir/Encounter", json=encounter(ids["patient"])))
    caps = client.get("/fhir/metadata").json()
    types = {r["type"]: r for r in caps["rest"][0]["resource"]}
    for rtype in ("Encounter", "MedicationAdministration", "Procedure", "Provenance"):
        assert rtype in types
        assert {p["name"] for p in types[rtype]["searchParam"]} >= {"_id", "_lastUpdated"}
    r = client.get("/fhir/$export?_type=Encounter", headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text


def test_a_deidentified_view_pseudonymises_the_patient_and_shifts_the_dates_of_the_new_types(app, client):
    ids = enrol(client)
    deid = app.state.core.deidentifier()
    shift = deid.shift_days(ids["patient"])
    assert shift != 0
    obs = created(client.post("/fhir/Observation", json=observation(ids["patient"])))["id"]
    for rtype, body, element in (
            ("Procedure", procedure(ids["patient"], "2024-01-10"), "performedDateTime"),
            ("MedicationAdministration", medication_administration(ids["patient"], "2024-01-10"), "effectiveDateTime"),
            ("Provenance", provenance(f"Patient/{ids['patient']}", f"Observation/{obs}",
                                      recorded="2024-01-10T10:00:00+09:00"), "recorded")):
        made = created(client.post(f"/fhir/{rtype}", json=body))
        view = json.loads(deid.content(json.dumps(made)))
        refs = json.dumps(view)
        assert ids["patient"] not in refs and deid.pseudonym(ids["patient"]) in refs, rtype
        assert view[element][:10] == (date(2024, 1, 10) + timedelta(days=shift)).isoformat(), rtype
    enc = created(client.post("/fhir/Encounter", json=encounter(ids["patient"], "2024-01-10T09:00:00+09:00")))
    view = json.loads(deid.content(json.dumps(enc)))
    assert view["period"]["start"][:10] == (date(2024, 1, 10) + timedelta(days=shift)).isoformat()
    assert view["subject"]["reference"] == f"Patient/{deid.pseudonym(ids['patient'])}"
