"""Batch entries fail on their own; a failing transaction lists every failing entry (issue 11 §3)."""

from sqlalchemy import text

from tests.factories import created, enrol, observation, patient

URN = "urn:uuid:00000000-0000-4000-8000-0000000000{:02d}"


def _count(engine, rtype: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM resource WHERE resource_type = :t AND NOT deleted"),
                            {"t": rtype}).scalar()


def one_bad_entry_of_each_kind(patient_id: str) -> list[dict]:
    """entry 0 and 6 are good; 1..5 each break one thing."""
    broken_rule = observation(patient_id, "EASI", 99.0)  # EASI is at most 72
    return [
        {"resource": patient("MRN-GOOD-1"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Immunization", "status": "completed"},  # a type this server doesn't store
         "request": {"method": "POST", "url": "Immunization"}},
        {"resource": observation("no-such-patient"), "request": {"method": "POST", "url": "Observation"}},  # reference
        {"resource": patient("MRN-BAD-3", gender=7), "request": {"method": "POST", "url": "Patient"}},  # structure
        {"resource": broken_rule, "request": {"method": "POST", "url": "Observation"}},  # trial rule
        {"resource": patient("MRN-BAD-5")},  # no request: the entry can't be read
        {"resource": observation(patient_id, "EASI", 10.0), "request": {"method": "POST", "url": "Observation"}},
    ]


def _expressions(outcome: dict) -> list[str]:
    return [e for i in outcome["issue"] for e in i.get("expression", [])]


def test_batch_answers_each_bad_entry_with_its_own_error_and_runs_the_others(client, engine):
    ids = enrol(client)
    before = _count(engine, "Observation")
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "batch",
                                   "entry": one_bad_entry_of_each_kind(ids["patient"])})
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    statuses = [e["response"]["status"] for e in entries]
    assert statuses == ["201 Created", "400 Bad Request", "422 Unprocessable Entity", "400 Bad Request",
                        "422 Unprocessable Entity", "400 Bad Request", "201 Created"]
    for i in (1, 2, 3, 4, 5):
        found = _expressions(entries[i]["response"]["outcome"])
        assert found and all(e.startswith(f"Bundle.entry[{i}]") for e in found), (i, found)
    assert _expressions(entries[1]["response"]["outcome"]) == ["Bundle.entry[1].request.url"]
    assert "Bundle.entry[2].resource.subject" in _expressions(entries[2]["response"]["outcome"])
    assert "Bundle.entry[3].resource.gender" in _expressions(entries[3]["response"]["outcome"])
    assert "Bundle.entry[5].request" in _expressions(entries[5]["response"]["outcome"])
    assert _count(engine, "Observation") == before + 1  # the good one only
    assert client.get("/fhir/Patient?identifier=MRN-GOOD-1").json()["total"] == 1
    assert client.get("/fhir/Patient?identifier=MRN-BAD-3").json()["total"] == 0


def test_failing_transaction_lists_every_failing_entry_and_stores_nothing(client, engine):
    ids = enrol(client)
    counts = {t: _count(engine, t) for t in ("Patient", "Observation")}
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction",
                                   "entry": one_bad_entry_of_each_kind(ids["patient"])})
    assert r.status_code == 400, r.text  # several kinds of failure: 400
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    failing = {e.split("]")[0] + "]" for e in _expressions(outcome)}
    assert failing == {f"Bundle.entry[{i}]" for i in (1, 2, 3, 4, 5)}
    assert _expressions(outcome) == sorted(_expressions(outcome), key=lambda e: int(e[13:].split("]")[0]))
    assert {t: _count(engine, t) for t in counts} == counts


def test_transaction_failing_by_one_kind_keeps_its_status(client):
    ids = enrol(client)
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(ids["patient"], "EASI", 99.0), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(ids["patient"], "EASI", 10.0), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(ids["patient"], "IGA", 9), "request": {"method": "POST", "url": "Observation"}},
    ]})
    assert r.status_code == 422, r.text
    assert {e.split("]")[0] for e in _expressions(r.json())} == {"Bundle.entry[0", "Bundle.entry[2"}
    assert client.get(f"/fhir/Observation?subject=Patient/{ids['patient']}").json()["total"] == 0


def test_transaction_failure_after_a_good_entry_does_not_disturb_the_entries_checked_after_it(client):
    """A failing entry's half-made rows are forgotten: the entries after it are judged on their own."""
    ids = enrol(client)
    p = URN.format(1)
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": p, "resource": patient("MRN-T-1"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient("MRN-T-1"), "request": {"method": "POST", "url": "Patient"}},  # same identifier
        {"resource": observation(ids["patient"], "EASI", 80.0), "request": {"method": "POST", "url": "Observation"}},
    ]})
    assert r.status_code == 400, r.text
    assert {e.split("]")[0] for e in _expressions(r.json())} == {"Bundle.entry[1", "Bundle.entry[2"}
    assert client.get("/fhir/Patient?identifier=MRN-T-1").json()["total"] == 0


def test_transaction_with_good_entries_still_answers_as_before(client):
    ids = enrol(client)
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(ids["patient"], "EASI", 10.0), "request": {"method": "POST", "url": "Observation"}},
    ]})
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["status"] == "201 Created"
    created(client.post("/fhir/Patient", json=patient()))
