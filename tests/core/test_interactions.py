"""The interaction core called directly, with no HTTP: each interaction takes request values and a Context and
returns stored JSON, or raises the FhirError an adapter renders (both databases)."""

import asyncio

import orjson
import pytest

from service.core.context import Context
from service.errors import BadRequest, Gone, NotFound, PreconditionFailed, RuleViolation
from tests.factories import MRN, observation, patient, study, subject

BASE = "https://fhir.example.org/fhir"
CTX = Context(BASE)


def run(coroutine):
    return asyncio.run(coroutine)


def test_create_read_update_vread_and_history(core):
    created = run(core.create(CTX, "Patient", patient("MRN-1")))
    assert (created.status, created.created, created.version_id) == (201, True, 1)
    assert created.location == f"Patient/{created.id}/_history/1"
    body = orjson.loads(created.content)
    assert body["id"] == created.id and body["meta"]["versionId"] == "1"

    read = run(core.read(CTX, "Patient", created.id))
    assert read.content == created.content

    changed = {**body, "gender": "male"}
    updated = run(core.update(CTX, "Patient", created.id, changed, if_match='W/"1"'))
    assert (updated.status, updated.version_id) == (200, 2)
    with pytest.raises(PreconditionFailed) as stale:
        run(core.update(CTX, "Patient", created.id, changed, if_match='W/"1"'))
    assert stale.value.issues[0].expression == ("If-Match",)

    assert orjson.loads(run(core.vread(CTX, "Patient", created.id, "1")).content)["gender"] == "female"
    history = orjson.loads(run(core.history(CTX, "Patient", created.id, count=1)))
    assert history["type"] == "history" and [e["response"]["etag"] for e in history["entry"]] == ['W/"2"']
    assert [link["url"] for link in history["link"] if link["relation"] == "next"] == [
        f"{BASE}/Patient/{created.id}/_history?_count=1&_before_version=2"]


def test_conditional_create_update_and_delete(core):
    first = run(core.create(CTX, "Patient", patient("MRN-2"), if_none_exist=f"identifier={MRN}|MRN-2"))
    again = run(core.create(CTX, "Patient", patient("MRN-2"), if_none_exist=f"identifier={MRN}|MRN-2"))
    assert (again.id, again.status, again.version_id) == (first.id, 200, 1)

    updated = run(core.conditional_update(CTX, "Patient", f"identifier={MRN}|MRN-2",
                                          patient("MRN-2", gender="other")))
    assert (updated.id, updated.version_id) == (first.id, 2)
    made = run(core.conditional_update(CTX, "Patient", f"identifier={MRN}|MRN-3", patient("MRN-3")))
    assert made.status == 201 and made.created

    deleted = run(core.conditional_delete(CTX, "Patient", f"identifier={MRN}|MRN-2"))
    assert [d.id for d in deleted] == [first.id]
    with pytest.raises(Gone):
        run(core.read(CTX, "Patient", first.id))
    assert run(core.delete(CTX, "Patient", first.id)) is None  # deleting again is a no-op


def test_failures_are_fhir_errors_naming_the_element(core):
    with pytest.raises(NotFound):
        run(core.read(CTX, "Encounter", "x"))
    with pytest.raises(NotFound) as unknown:
        run(core.read(CTX, "Patient", "nobody"))
    assert unknown.value.status_code == 404 and unknown.value.issues[0].expression == ("Patient.id",)
    with pytest.raises(RuleViolation) as bad:
        run(core.create(CTX, "Patient", patient(gender="nonsense")))
    assert bad.value.issues[0].expression == ("Patient.gender",)
    with pytest.raises(BadRequest) as mismatch:
        run(core.update(CTX, "Patient", "abc", {**patient(), "id": "xyz"}))
    assert mismatch.value.issues[0].expression == ("Patient.id",)


def test_search_and_strict_handling(core):
    study_id = run(core.create(CTX, "ResearchStudy", study())).id
    patient_id = run(core.create(CTX, "Patient", patient())).id
    run(core.create(CTX, "ResearchSubject", subject(study_id, patient_id)))
    obs = run(core.create(CTX, "Observation", observation(patient_id))).id

    found = orjson.loads(run(core.search(CTX, "Observation", [("subject", patient_id), ("bogus", "1")])))
    assert found["type"] == "searchset" and found["total"] == 1
    assert [e["fullUrl"] for e in found["entry"] if e["search"]["mode"] == "match"] == [f"{BASE}/Observation/{obs}"]
    assert [e for e in found["entry"] if e["search"]["mode"] == "outcome"]  # the unknown parameter, as a warning
    with pytest.raises(BadRequest) as strict:
        run(core.search(Context(BASE, strict=True), "Observation", [("subject", patient_id), ("bogus", "1")]))
    assert strict.value.issues[0].expression == ("bogus",)


def test_transaction_is_all_or_nothing(core):
    good = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": patient("MRN-9"), "request": {"method": "POST", "url": "Patient"}}]}
    response = orjson.loads(run(core.transaction(CTX, good)))
    assert response["type"] == "transaction-response"
    assert response["entry"][0]["response"]["status"] == "201 Created"
    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("MRN-10"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient(gender="nonsense"), "request": {"method": "POST", "url": "Patient"}}]}
    with pytest.raises(RuleViolation) as failed:
        run(core.transaction(CTX, bad))
    assert failed.value.issues[0].expression == ("Bundle.entry[1].resource.gender",)
    missing = orjson.loads(run(core.search(CTX, "Patient", [("identifier", f"{MRN}|MRN-10")])))
    assert missing["total"] == 0  # the first entry was rolled back with the second


def test_cohort_export_and_figures_go_through_the_core(core):
    study_id = run(core.create(CTX, "ResearchStudy", study())).id
    patient_id = run(core.create(CTX, "Patient", patient())).id
    run(core.create(CTX, "ResearchSubject", subject(study_id, patient_id)))
    run(core.create(CTX, "Observation", observation(patient_id)))

    group = run(core.read_group(CTX, study_id))
    assert group["resourceType"] == "Group" and [m["entity"]["reference"] for m in group["member"]] == [
        f"Patient/{patient_id}"]
    found = orjson.loads(run(core.search_groups(CTX, [("_id", study_id)])))
    assert [e["fullUrl"] for e in found["entry"]] == [f"{BASE}/Group/{study_id}"]
    with pytest.raises(BadRequest):
        run(core.search_groups(Context(BASE, strict=True), [("name", "x")]))
    with pytest.raises(NotFound):
        run(core.read_group(CTX, "nobody"))

    job = run(core.export_kick_off(CTX, [("_type", "Observation")], "respond-async", f"{BASE}/$export",
                                   group_id=study_id))
    status = run(core.export_status(CTX, job))
    assert status.status_code == 202 and status.headers["X-Progress"] == "queued"
    run(core.export_cancel(CTX, job))
    with pytest.raises(NotFound):
        run(core.export_status(CTX, job))

    summary = run(core.study_summary(CTX, study_id))
    assert {arm.name: arm.enrolled for arm in summary.arms} == {"low-dose": 0, "high-dose": 1}
    assert run(core.study_measure_report(CTX, study_id))["resourceType"] == "MeasureReport"
    assert run(core.study_chart(CTX, study_id, "EASI")).startswith("<svg")
    with pytest.raises(NotFound):
        run(core.study_summary(CTX, "nobody"))


def test_an_update_that_changes_nothing_keeps_the_current_version(core):
    """Issue 11 §8: a retried PUT (the same content, `meta` aside) answers the current version and writes none."""
    made = run(core.create(CTX, "Patient", patient("MRN-NOOP")))
    body = orjson.loads(made.content)
    again = run(core.update(CTX, "Patient", made.id, {**body, "meta": {"versionId": "7"}}))
    assert (again.version_id, again.status, again.created) == (1, 200, False)
    assert run(core.conditional_update(CTX, "Patient", f"identifier={MRN}|MRN-NOOP", body)).version_id == 1
    history = orjson.loads(run(core.history(CTX, "Patient", made.id, count=10)))
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["1"]
    changed = run(core.update(CTX, "Patient", made.id, {**body, "gender": "male"}))
    assert changed.version_id == 2
    assert run(core.update(CTX, "Patient", made.id, {**body, "gender": "male"})).version_id == 2
