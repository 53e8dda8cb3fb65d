"""The out-of-scope policy (issue 11 §2): what a feed's entries the trial does not keep get. `reject` (the default):
400/422 naming every offender; `skip`: 200 with a warning, nothing of them stored."""

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.main import create_app
from tests.factories import AD, LOINC, UCUM, created, enrol, observation, patient, study, subject

SYNTHEA = ("Bob965_Keeling57_3f6fd0bb-6cd3-eb3f-4401-cd38ace25f2b.json",
           "Cecelia952_Romaguera67_f1731e33-dc55-4ee8-72d7-cece2e49bedd.json")
POLICY_EXT = "https://trial-fhir.org/StructureDefinition/out-of-scope-policy"


@pytest.fixture
def skip_client(settings):
    with TestClient(create_app(settings.model_copy(update={"out_of_scope": "skip"}))) as c:
        yield c


def _stored(client) -> dict[str, int]:
    with client.app.state.engine.connect() as conn:
        rows = conn.execute(text("SELECT resource_type, count(*) FROM resource WHERE NOT deleted "
                                 "AND resource_type <> 'AuditEvent' GROUP BY resource_type")).all()
    return dict(rows)


def _synthea(fhir_examples, name: str) -> dict:
    return json.loads((fhir_examples / "synthea" / name).read_text())


def _body_weight(patient_ref: str) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]},
            "subject": {"reference": patient_ref}, "effectiveDateTime": "2024-01-10",
            "valueQuantity": {"value": 70, "unit": "kg", "system": UCUM, "code": "kg"}}


@pytest.mark.parametrize("name", SYNTHEA)
def test_synthea_transaction_under_reject_names_every_offender(client, fhir_examples, name):
    bundle = _synthea(fhir_examples, name)
    r = client.post("/fhir", json=bundle)
    assert r.status_code == 400, r.text
    outcome = r.json()
    named = {e.split("]")[0] + "]" for i in outcome["issue"] for e in i["expression"]}
    offenders = {f"Bundle.entry[{i}]" for i, e in enumerate(bundle["entry"])
                 if e["resource"]["resourceType"] != "Patient"}
    assert named == offenders
    assert any("'Immunization' is not supported" in i["diagnostics"] for i in outcome["issue"])
    assert any("not enrolled in any study" in i["diagnostics"] for i in outcome["issue"])
    assert _stored(client) == {}


@pytest.mark.parametrize("name", SYNTHEA)
def test_synthea_transaction_under_skip_stores_the_patient_and_nothing_else(skip_client, fhir_examples, name):
    bundle = _synthea(fhir_examples, name)
    r = skip_client.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    for sent, got in zip(bundle["entry"], entries, strict=True):
        if sent["resource"]["resourceType"] == "Patient":
            assert got["response"]["status"] == "201 Created"
        else:
            assert got["response"]["status"] == "200 OK"
            issue = got["response"]["outcome"]["issue"][0]
            assert issue["severity"] == "warning" and issue["diagnostics"].startswith("not kept: ")
    assert _stored(skip_client) == {"Patient": 1}


@pytest.mark.parametrize("name", SYNTHEA)
def test_synthea_patient_enrolled_in_the_transaction_keeps_its_trial_relevant_observations(skip_client,
                                                                                           fhir_examples, name):
    """Synthea's own codes are not in the atopic dermatitis catalogue: they stay out; an EASI score sent with
    them for the same (now enrolled) patient lands, with the enrolment."""
    study_id = created(skip_client.post("/fhir/ResearchStudy", json=study()))["id"]
    bundle = _synthea(fhir_examples, name)
    urn = next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    enrolment = subject(study_id, "x")
    enrolment["individual"] = {"reference": urn}
    easi = observation("x", "EASI", 20.5, "2024-02-07")
    easi["subject"] = {"reference": urn}
    bundle["entry"] += [{"resource": enrolment, "request": {"method": "POST", "url": "ResearchSubject"}},
                        {"resource": easi, "request": {"method": "POST", "url": "Observation"}}]
    r = skip_client.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    stored = _stored(skip_client)
    encounters = sum(e["resource"]["resourceType"] == "Encounter" for e in bundle["entry"])
    # the enrolled patient's encounters are kept (a stored type), with the Provenance of the feed
    assert stored == {"ResearchStudy": 1, "Patient": 1, "ResearchSubject": 1, "Observation": 1,
                      "Encounter": encounters, "Provenance": 1}
    prov = skip_client.get("/fhir/Provenance").json()["entry"][0]["resource"]
    kept = [t["reference"].split("/")[0] for t in prov["target"] if "reference" in t]
    assert set(kept) == {"Patient", "Encounter"}
    assert all(t["display"].endswith("not kept by this server") for t in prov["target"] if "reference" not in t)
    enc = skip_client.get("/fhir/Encounter?_count=1").json()["entry"][0]["resource"]
    # Synthea's conditional references to practitioners and places (not stored here) are kept as logical ones
    assert enc["participant"][0]["individual"]["type"] == "Practitioner"
    assert enc["participant"][0]["individual"]["identifier"]["system"] == "http://hl7.org/fhir/sid/us-npi"
    found = skip_client.get(f"/fhir/Observation?study=ResearchStudy/{study_id}").json()
    assert [e["resource"]["code"]["coding"][0]["code"] for e in found["entry"]] == ["EASI"]
    skipped = [e for e in r.json()["entry"] if "outcome" in e["response"]]
    assert any("is not a measure of this study" in e["response"]["outcome"]["issue"][0]["diagnostics"]
               for e in skipped)


def test_skip_in_a_batch_answers_200_with_a_warning_and_stores_nothing(skip_client):
    ids = enrol(skip_client)
    r = skip_client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": _body_weight(f"Patient/{ids['patient']}"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Immunization", "status": "completed"},
         "request": {"method": "POST", "url": "Immunization"}},
        {"resource": observation(ids["patient"], "EASI", 99.0), "request": {"method": "POST", "url": "Observation"}},
    ]})
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["200 OK", "200 OK", "422 Unprocessable Entity"]
    assert entries[0]["response"]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[0].resource"]
    assert "29463-7" in entries[0]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert "Immunization" in entries[1]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert skip_client.get(f"/fhir/Observation?subject=Patient/{ids['patient']}").json()["total"] == 0


def test_a_rule_broken_is_still_a_failure_under_skip(skip_client):
    """Skip is for what the trial does not keep, not for what it keeps and finds wrong."""
    ids = enrol(skip_client)
    r = skip_client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(ids["patient"], "EASI", 99.0), "request": {"method": "POST", "url": "Observation"}}]})
    assert r.status_code == 422


def test_reference_to_a_skipped_entry_is_not_kept(skip_client):
    ids = enrol(skip_client)
    urn = "urn:uuid:00000000-0000-4000-8000-00000000aa01"
    kept = observation(ids["patient"], "EASI", 15.0)
    kept["basedOn"] = [{"reference": urn}]
    r = skip_client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": kept, "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": urn, "resource": {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                                      "subject": {"reference": f"Patient/{ids['patient']}"}},
         "request": {"method": "POST", "url": "ServiceRequest"}},
    ]})
    assert r.status_code == 200, r.text
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created", "200 OK"]
    obs_id = r.json()["entry"][0]["response"]["location"].split("/Observation/")[1].split("/")[0]
    stored = skip_client.get(f"/fhir/Observation/{obs_id}").json()
    assert stored["basedOn"] == [{"type": "ServiceRequest", "display": "ServiceRequest not kept by this server"}]


def test_under_reject_an_observation_outside_the_catalogue_fails_the_transaction(client):
    ids = enrol(client)
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(ids["patient"], "EASI", 15.0), "request": {"method": "POST", "url": "Observation"}},
        {"resource": _body_weight(f"Patient/{ids['patient']}"), "request": {"method": "POST", "url": "Observation"}},
    ]})
    assert r.status_code == 422, r.text
    assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.code.coding"]


def _study_with_policy(client, policy: str) -> str:
    return created(client.post("/fhir/ResearchStudy", json=study(
        extension=[{"url": POLICY_EXT, "valueCode": policy}])))["id"]


def test_a_study_may_skip_when_the_server_rejects(client):
    study_id = _study_with_policy(client, "skip")
    ids = enrol(client, study_id=study_id)
    read = client.get(f"/fhir/ResearchStudy/{study_id}").json()
    assert {"url": POLICY_EXT, "valueCode": "skip"} in read["extension"]
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _body_weight(f"Patient/{ids['patient']}"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Immunization", "status": "completed",
                      "patient": {"reference": f"Patient/{ids['patient']}"}},
         "request": {"method": "POST", "url": "Immunization"}},
    ]})
    assert r.status_code == 200, r.text
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["200 OK", "200 OK"]
    # a patient of no study (or of a study setting nothing) follows the server: reject
    other = created(client.post("/fhir/Patient", json=patient()))["id"]
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Immunization", "status": "completed",
                      "patient": {"reference": f"Patient/{other}"}},
         "request": {"method": "POST", "url": "Immunization"}}]})
    assert r.json()["entry"][0]["response"]["status"] == "400 Bad Request"


def test_a_study_may_reject_when_the_server_skips(skip_client):
    ids = enrol(skip_client, study_id=_study_with_policy(skip_client, "reject"))
    r = skip_client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": _body_weight(f"Patient/{ids['patient']}"), "request": {"method": "POST", "url": "Observation"}}]})
    assert r.json()["entry"][0]["response"]["status"] == "422 Unprocessable Entity"


def test_an_unknown_study_policy_is_refused(client):
    r = client.post("/fhir/ResearchStudy", json=study(extension=[{"url": POLICY_EXT, "valueCode": "drop"}]))
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["ResearchStudy.extension[0]"]


def test_a_direct_create_is_not_subject_to_skip(skip_client):
    """The policy is for feeds (Bundle entries): a client creating one resource learns it was refused."""
    ids = enrol(skip_client)
    assert skip_client.post("/fhir/Observation", json=_body_weight(f"Patient/{ids['patient']}")).status_code == 422
    assert AD  # the catalogue's own system stays accepted (see test_trial_rules)
