"""Transaction (all or nothing) and batch (entry by entry) Bundles at POST /fhir."""

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome

from service.examples import TRANSACTION
from tests.factories import MRN, created, observation, patient, study, subject


def path_of(location: str) -> str:
    """http://testserver/fhir/Type/id/_history/1 -> /fhir/Type/id"""
    return "/fhir" + location.split("/fhir", 1)[1].split("/_history")[0]


def test_transaction_resolves_urn_uuid_references_to_the_new_ids(client):
    study_id = created(client.put("/fhir/ResearchStudy/nct01927705", json={**study(), "id": "nct01927705"}))["id"]
    response = client.post("/fhir", json=TRANSACTION)
    assert response.status_code == 200, response.text
    result = response.json()
    Bundle.model_validate(result)
    assert result["type"] == "transaction-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created"] * 3
    patient_loc, subject_loc, obs_loc = (e["response"]["location"] for e in result["entry"])
    patient_id = patient_loc.split("/Patient/")[1].split("/")[0]
    subj = client.get(path_of(subject_loc)).json()
    assert subj["individual"] == {"reference": f"Patient/{patient_id}"}
    assert subj["study"] == {"reference": f"ResearchStudy/{study_id}"}
    obs = client.get(path_of(obs_loc)).json()
    assert obs["subject"] == {"reference": f"Patient/{patient_id}"}
    assert all(e["response"]["etag"] == 'W/"1"' and e["response"]["lastModified"] for e in result["entry"])


def test_transaction_entries_may_come_in_any_order(client):
    study_id = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    p = "urn:uuid:00000000-0000-4000-8000-000000000001"
    obs = observation("x", "EASI", 30.0, "2024-01-09")
    obs["subject"] = {"reference": p}
    subj = subject(study_id, "x")
    subj["individual"] = {"reference": p}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": obs, "request": {"method": "POST", "url": "Observation"}},
        {"resource": subj, "request": {"method": "POST", "url": "ResearchSubject"}},
        {"fullUrl": p, "resource": patient("MRN-ORDER"), "request": {"method": "POST", "url": "Patient"}},
    ]}
    response = client.post("/fhir", json=bundle, headers={"Prefer": "return=representation"})
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [e["resource"]["resourceType"] for e in entries] == ["Observation", "ResearchSubject", "Patient"]
    assert entries[0]["resource"]["subject"]["reference"] == f"Patient/{entries[2]['resource']['id']}"


def test_a_failing_entry_rolls_back_the_whole_transaction(client):
    study_id = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    p = "urn:uuid:00000000-0000-4000-8000-000000000002"
    subj = subject(study_id, "x")
    subj["individual"] = {"reference": p}
    bad = observation("x", "EASI", 99.0, "2024-01-09")  # EASI above 72
    bad["subject"] = {"reference": p}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": p, "resource": patient("MRN-ROLLBACK"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": subj, "request": {"method": "POST", "url": "ResearchSubject"}},
        {"resource": bad, "request": {"method": "POST", "url": "Observation"}},
    ]}
    response = client.post("/fhir", json=bundle)
    assert response.status_code == 422
    outcome = response.json()
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[2].resource.valueQuantity.value"]
    assert client.get(f"/fhir/Patient?identifier={MRN}|MRN-ROLLBACK").json()["total"] == 0
    assert client.get("/fhir/ResearchSubject").json().get("entry", []) == []


def test_conditional_create_in_a_transaction_reuses_the_existing_patient(client):
    existing = created(client.post("/fhir/Patient", json=patient("MRN-TXCOND")))["id"]
    study_id = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    p = "urn:uuid:00000000-0000-4000-8000-000000000003"
    subj = subject(study_id, "x")
    subj["individual"] = {"reference": p}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": p, "resource": patient("MRN-TXCOND"),
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN}|MRN-TXCOND"}},
        {"resource": subj, "request": {"method": "POST", "url": "ResearchSubject"}},
    ]}
    result = client.post("/fhir", json=bundle).json()
    assert result["entry"][0]["response"]["status"] == "200 OK"
    assert existing in result["entry"][0]["response"]["location"]
    subject_url = path_of(result["entry"][1]["response"]["location"])
    assert client.get(subject_url).json()["individual"]["reference"] == f"Patient/{existing}"
    # sent twice (an EHR retrying after a timeout), nothing is duplicated: the enrolment exists already
    again = client.post("/fhir", json=bundle)
    assert again.status_code == 409
    assert again.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.individual"]


def test_conditional_reference_inside_a_transaction(client):
    study_id = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    subj = subject(study_id, "x")
    subj["individual"] = {"reference": f"Patient?identifier={MRN}|MRN-TXREF"}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": subj, "request": {"method": "POST", "url": "ResearchSubject"}},
        {"resource": patient("MRN-TXREF"), "request": {"method": "POST", "url": "Patient"}},
    ]}
    response = client.post("/fhir", json=bundle, headers={"Prefer": "return=representation"})
    assert response.status_code == 200, response.text
    subject_entry, patient_entry = response.json()["entry"]
    assert subject_entry["resource"]["individual"]["reference"] == f"Patient/{patient_entry['resource']['id']}"


def test_transaction_put_delete_and_get_entries(client):
    rid = created(client.post("/fhir/Patient", json=patient("MRN-TXPUT")))["id"]
    doomed = created(client.post("/fhir/Patient", json=patient("MRN-TXDEL")))["id"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**patient("MRN-TXPUT"), "id": rid, "gender": "male"},
         "request": {"method": "PUT", "url": f"Patient/{rid}", "ifMatch": 'W/"1"'}},
        {"request": {"method": "DELETE", "url": f"Patient/{doomed}"}},
        {"request": {"method": "GET", "url": f"Patient/{rid}"}},
        {"resource": {**patient("MRN-TXCPUT"), "gender": "other"},
         "request": {"method": "PUT", "url": f"Patient?identifier={MRN}|MRN-TXCPUT"}},
    ]}
    response = client.post("/fhir", json=bundle)
    assert response.status_code == 200, response.text
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["200 OK", "204 No Content", "200 OK", "201 Created"]
    assert response.json()["entry"][2]["resource"]["gender"] == "male"  # GETs run after the writes
    assert client.get(f"/fhir/Patient/{doomed}").status_code == 410


def test_batch_entries_succeed_or_fail_on_their_own(client):
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("MRN-B1"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {**patient("MRN-B2"), "gender": "bogus"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        {"resource": patient("MRN-B3"), "request": {"method": "POST", "url": "Patient"}},
    ]}
    response = client.post("/fhir", json=bundle)
    assert response.status_code == 200
    result = response.json()
    Bundle.model_validate(result)
    assert result["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["201 Created", "422 Unprocessable Entity", "404 Not Found", "201 Created"]
    bad = result["entry"][1]["response"]["outcome"]
    assert bad["issue"][0]["expression"] == ["Bundle.entry[1].resource.gender"]
    assert client.get(f"/fhir/Patient?identifier={MRN}|MRN-B1").json()["total"] == 1
    assert client.get(f"/fhir/Patient?identifier={MRN}|MRN-B2").json()["total"] == 0
    assert client.get(f"/fhir/Patient?identifier={MRN}|MRN-B3").json()["total"] == 1


def test_bundle_of_another_type_is_rejected(client):
    response = client.post("/fhir", json={"resourceType": "Bundle", "type": "collection", "entry": []})
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Bundle.type"]


def test_the_same_resource_twice_in_a_transaction_fails(client, engine):
    """R4 (http.html#trules): updates or deletes of one resource twice in a transaction SHALL fail (which would
    win is not defined); in a batch each entry stands alone."""
    from tests.assertions import table_counts
    from tests.factories import patient as a_patient

    body = {**a_patient("MRN-TWICE"), "id": "twice-1"}
    twice = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": body, "request": {"method": "PUT", "url": "Patient/twice-1"}},
        {"resource": {**body, "gender": "male"}, "request": {"method": "PUT", "url": "Patient/twice-1"}}]}
    before = table_counts(engine)
    response = client.post("/fhir", json=twice)
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[1]"]
    assert table_counts(engine) == before
    assert client.put("/fhir/Patient/twice-1", json=body).status_code == 201
    conditional = {**twice, "entry": [twice["entry"][0], {"request": {"method": "DELETE",
                                                                       "url": "Patient?_id=twice-1"}}]}
    refused = client.post("/fhir", json=conditional)  # the conditional delete resolves to the PUT's resource
    assert refused.status_code == 400 and "twice" in refused.json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient/twice-1").status_code == 200  # nothing of it happened
    assert client.post("/fhir", json={**twice, "type": "batch"}).status_code == 200
