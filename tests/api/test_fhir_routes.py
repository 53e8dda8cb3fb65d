"""FHIR RESTful interactions on every stored type: create, read, vread, update, delete, history, conditional
writes, version checks, media types and Prefer."""

import copy

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.codesystem import CodeSystem

from service.core.registry import TYPES
from service.ops.version import version
from tests.factories import (
    MRN,
    created,
    enrol,
    observation,
    patient,
    payloads,
)


@pytest.mark.parametrize("resource_type", [t for t, stored in TYPES.items() if stored.writable])
def test_create_read_vread_update_delete_history_of_every_type(client, resource_type):
    body = payloads(client)[resource_type]
    response = client.post(f"/fhir/{resource_type}", json=body)
    assert response.status_code == 201, response.text
    created_ = response.json()
    rid = created_["id"]
    assert response.headers["location"].endswith(f"/fhir/{resource_type}/{rid}/_history/1")
    assert response.headers["etag"] == 'W/"1"'
    assert response.headers["last-modified"].endswith("GMT")
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert created_["meta"]["versionId"] == "1" and created_["meta"]["lastUpdated"].endswith("Z")
    TYPES[resource_type].model.model_validate(created_)
    sent = {k: v for k, v in body.items()}
    # (references are stored as resolved; a Subscription's signing secret is kept apart, never in the resource)
    rewritten = ("subject", "individual", "channel")
    assert {k: created_[k] for k in sent if k not in rewritten} == \
        {k: v for k, v in sent.items() if k not in rewritten}
    if resource_type == "Subscription":
        assert "whsec_" not in response.text and created_["channel"]["endpoint"] == body["channel"]["endpoint"]

    read = client.get(f"/fhir/{resource_type}/{rid}")
    assert read.status_code == 200 and read.json() == created_

    # without meta ("meta": {} is not R4 JSON)
    changed = {**{k: v for k, v in copy.deepcopy(created_).items() if k != "meta"}, "id": rid}
    if resource_type == "Patient":
        changed["gender"] = "male"
    elif resource_type == "ResearchStudy":
        changed["title"] = "Renamed"
    elif resource_type == "ResearchSubject":
        changed["status"] = "follow-up"
    elif resource_type == "Observation":
        changed["status"] = "amended"
    elif resource_type in ("Encounter", "MedicationAdministration", "Procedure"):
        changed["status"] = "entered-in-error"
    elif resource_type == "Provenance":
        changed["recorded"] = "2024-03-01T00:00:00Z"
    elif resource_type == "ConceptMap":
        changed["status"] = "retired"
    elif resource_type == "Subscription":
        changed["reason"] = "renamed"
    elif resource_type in ("ObservationDefinition", "PlanDefinition"):
        changed["title" if resource_type == "PlanDefinition" else "preferredReportName"] = "Renamed"
    else:
        changed["severity"]["coding"][0]["code"] = "moderate"
    update = client.put(f"/fhir/{resource_type}/{rid}", json=changed)
    assert update.status_code == 200, update.text
    assert update.json()["meta"]["versionId"] == "2" and update.headers["etag"] == 'W/"2"'

    v1 = client.get(f"/fhir/{resource_type}/{rid}/_history/1")
    assert v1.status_code == 200 and v1.json() == created_
    assert client.get(f"/fhir/{resource_type}/{rid}/_history/2").json()["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/{resource_type}/{rid}/_history/3").status_code == 404

    deleted = client.delete(f"/fhir/{resource_type}/{rid}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["resourceType"] == "OperationOutcome"
    gone = client.get(f"/fhir/{resource_type}/{rid}")
    assert gone.status_code == 410 and gone.json()["resourceType"] == "OperationOutcome"
    assert client.delete(f"/fhir/{resource_type}/{rid}").status_code == 200  # idempotent

    history = client.get(f"/fhir/{resource_type}/{rid}/_history")
    assert history.status_code == 200
    bundle = history.json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "history" and bundle["total"] == 3
    assert [e["request"]["method"] for e in bundle["entry"]] == ["DELETE", "PUT", "POST"]
    assert [e["response"]["etag"] for e in bundle["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert "resource" not in bundle["entry"][0]


def test_read_unknown_id_and_type_answer_404_outcomes(client):
    for url in ("/fhir/Patient/nope", "/fhir/Practitioner/1", "/fhir/Patient/nope/_history"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert response.json()["resourceType"] == "OperationOutcome"
        assert response.json()["issue"][0]["code"] == "not-found"


def test_history_pages_newest_first(client):
    rid = created(client.post("/fhir/Patient", json=patient("MRN-HIST")))["id"]
    for gender in ("male", "other", "unknown", "female"):
        body = {**patient("MRN-HIST"), "id": rid, "gender": gender}
        assert client.put(f"/fhir/Patient/{rid}", json=body).status_code == 200
    first = client.get(f"/fhir/Patient/{rid}/_history?_count=2").json()
    versions = [e["resource"]["meta"]["versionId"] for e in first["entry"]]
    assert versions == ["5", "4"]
    following = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = client.get(following.replace("http://testserver", "")).json()
    assert [e["resource"]["meta"]["versionId"] for e in second["entry"]] == ["3", "2"]


def test_put_with_new_id_creates_the_resource(client):
    body = {**patient("MRN-PUT"), "id": "chosen-by-client"}
    response = client.put("/fhir/Patient/chosen-by-client", json=body)
    assert response.status_code == 201
    assert response.headers["location"].endswith("/fhir/Patient/chosen-by-client/_history/1")
    assert client.get("/fhir/Patient/chosen-by-client").json()["identifier"][0]["value"] == "MRN-PUT"


def test_if_match_with_current_version_updates_and_stale_version_gets_412(client):
    rid = created(client.post("/fhir/Patient", json=patient("MRN-IFM")))["id"]
    body = {**patient("MRN-IFM"), "id": rid, "gender": "male"}
    ok = client.put(f"/fhir/Patient/{rid}", json=body, headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = client.put(f"/fhir/Patient/{rid}", json={**body, "gender": "other"}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["issue"][0]["expression"] == ["If-Match"]
    assert client.get(f"/fhir/Patient/{rid}").json()["gender"] == "male"
    assert client.delete(f"/fhir/Patient/{rid}", headers={"If-Match": 'W/"1"'}).status_code == 412
    assert client.delete(f"/fhir/Patient/{rid}", headers={"If-Match": 'W/"2"'}).status_code == 200


def test_conditional_create_returns_the_existing_resource_instead_of_a_duplicate(client):
    headers = {"If-None-Exist": f"identifier={MRN}|MRN-RETRY"}
    first = client.post("/fhir/Patient", json=patient("MRN-RETRY"), headers=headers)
    assert first.status_code == 201
    retry = client.post("/fhir/Patient", json=patient("MRN-RETRY"), headers=headers)
    assert retry.status_code == 200
    assert retry.json()["id"] == first.json()["id"]
    assert retry.json()["meta"]["versionId"] == "1"
    found = client.get(f"/fhir/Patient?identifier={MRN}|MRN-RETRY").json()
    assert found["total"] == 1


def test_plain_create_with_a_taken_identifier_is_a_409_naming_the_identifier(client):
    created(client.post("/fhir/Patient", json=patient("MRN-DUP")))
    again = client.post("/fhir/Patient", json=patient("MRN-DUP"))
    assert again.status_code == 409
    assert again.json()["issue"][0]["expression"] == ["Patient.identifier[0]"]


def test_conditional_update_creates_then_updates_the_one_match(client):
    ids = enrol(client)
    ident = {"system": "urn:oid:1.2.410.200001.9", "value": "LAB-1"}
    body = {**observation(ids["patient"], "IGE", 100, "2024-01-09"), "identifier": [ident]}
    url = f"/fhir/Observation?identifier={ident['system']}|{ident['value']}"
    first = client.put(url, json=body)
    assert first.status_code == 201, first.text
    corrected = {**body, "status": "corrected", "valueQuantity": {**body["valueQuantity"], "value": 120}}
    second = client.put(url, json=corrected)
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["meta"]["versionId"] == "2"
    assert client.get(url.replace("PUT", "")).json()["total"] == 1


def test_conditional_delete_removes_the_match(client):
    created(client.post("/fhir/Patient", json=patient("MRN-CDEL")))
    assert client.delete(f"/fhir/Patient?identifier={MRN}|MRN-CDEL").status_code == 204
    assert client.get(f"/fhir/Patient?identifier={MRN}|MRN-CDEL").json()["total"] == 0


def test_identifier_of_a_deleted_resource_can_be_used_again(client):
    rid = created(client.post("/fhir/Patient", json=patient("MRN-REUSE")))["id"]
    client.delete(f"/fhir/Patient/{rid}")
    assert client.post("/fhir/Patient", json=patient("MRN-REUSE")).status_code == 201


def test_reference_by_identifier_and_conditional_reference_resolve_to_the_patient(client):
    ids = enrol(client, mrn="MRN-REF")
    by_identifier = observation(ids["patient"], "EASI", 10.0, "2024-01-09")
    by_identifier["subject"] = {"identifier": {"system": MRN, "value": "MRN-REF"}}
    one = created(client.post("/fhir/Observation", json=by_identifier))
    assert one["subject"]["reference"] == f"Patient/{ids['patient']}"
    assert one["subject"]["identifier"] == {"system": MRN, "value": "MRN-REF"}
    conditional = observation(ids["patient"], "EASI", 11.0, "2024-01-09")
    conditional["subject"] = {"reference": f"Patient?identifier={MRN}|MRN-REF"}
    two = created(client.post("/fhir/Observation", json=conditional))
    assert two["subject"] == {"reference": f"Patient/{ids['patient']}"}
    missing = {**conditional, "subject": {"reference": f"Patient?identifier={MRN}|NOBODY"}}
    response = client.post("/fhir/Observation", json=missing)
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["Observation.subject"]


@pytest.mark.parametrize("accept,fmt,expected", [
    (None, None, "application/fhir+json"),
    ("application/fhir+json", None, "application/fhir+json"),
    ("application/json", None, "application/json"),
    (None, "json", "application/fhir+json"),
    (None, "application/json", "application/json"),
    ("application/json", "application/fhir+json", "application/fhir+json"),
])
def test_media_types_are_negotiated(client, accept, fmt, expected):
    rid = created(client.post("/fhir/Patient", json=patient()))["id"]
    headers = {"Accept": accept} if accept else {}
    url = f"/fhir/Patient/{rid}" + (f"?_format={fmt}" if fmt else "")
    response = client.get(url, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == expected


@pytest.mark.parametrize("accept,status", [
    ("application/fhir+json; fhirVersion=4.0", 200),
    ("application/fhir+json; fhirVersion=4.0.1", 200),
    ("application/fhir+json; fhirVersion=5.0", 406),
    ("application/fhir+json; fhirVersion=3.0", 406),
    ("application/fhir+json; fhirVersion=5.0, application/json; fhirVersion=4.0", 200),
])
def test_the_fhir_version_of_accept_is_honoured(client, accept, status):
    """Issue 11 §5: R4 only (hl7.org/fhir/R4/http.html#version-parameter): another version is a 406, by the front
    door (search) and the routes (read) alike."""
    rid = created(client.post("/fhir/Patient", json=patient()))["id"]
    for url in (f"/fhir/Patient/{rid}", "/fhir/Patient"):
        response = client.get(url, headers={"Accept": accept})
        assert response.status_code == status, (url, response.text)
        if status == 406:
            assert response.json()["issue"][0]["expression"] == ["Accept"]


@pytest.mark.parametrize("version,status", [("4.0", 201), ("5.0", 415)])
def test_a_body_of_another_fhir_version_is_415(client, version, status):
    response = client.post("/fhir/Patient", json=patient(),
                           headers={"Content-Type": f"application/fhir+json; fhirVersion={version}"})
    assert response.status_code == status, response.text


def test_plain_json_bodies_are_accepted(client):
    import orjson
    response = client.post("/fhir/Patient", content=orjson.dumps(patient()),
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 201


def test_prefer_return_minimal_and_operation_outcome(client):
    minimal = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b"" and minimal.headers["location"]
    oo = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"})
    assert oo.status_code == 201 and oo.json()["resourceType"] == "OperationOutcome"


def test_capability_statement_lists_what_the_server_supports(client):
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    statement = response.json()
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1" and statement["kind"] == "instance"
    rest = statement["rest"][0]
    types = {r["type"] for r in rest["resource"]}
    assert set(TYPES) <= types and "CodeSystem" in types
    assert {"transaction", "batch"} <= {i["code"] for i in rest["interaction"]}
    patient_entry = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert {"read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
            "search-type"} == {i["code"] for i in patient_entry["interaction"]}
    assert patient_entry["conditionalCreate"] and patient_entry["conditionalUpdate"]
    assert "identifier" in {p["name"] for p in patient_entry["searchParam"]}
    # every interaction it claims answers: a type it does not list is a 404
    assert client.get("/fhir/Immunization").status_code == 404


def test_the_trial_code_system_is_readable(client):
    response = client.get("/fhir/CodeSystem/ad-scores")
    assert response.status_code == 200
    cs = response.json()
    CodeSystem.model_validate(cs)
    assert cs["url"] == "https://trial-fhir.org/CodeSystem/ad-scores"
    assert {"EASI", "SCORAD", "IGA", "PRURITUS-NRS"} <= {c["code"] for c in cs["concept"]}
    found = client.get("/fhir/CodeSystem?url=https://trial-fhir.org/CodeSystem/ad-scores").json()
    assert found["total"] == 1 and found["entry"][0]["resource"]["id"] == "ad-scores"
    assert client.get("/fhir/CodeSystem/loinc").status_code == 404


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok", "version": version()}


def test_if_none_match_star_creates_only_and_if_modified_since_answers_304(client):
    """Issue 11 §6: `PUT` with `If-None-Match: *` creates only (412 when the resource exists); a read with
    `If-Modified-Since` at or after the version's time is a 304."""
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    body = {**patient(), "id": "only-once"}
    first = client.put("/fhir/Patient/only-once", json=body, headers={"If-None-Match": "*"})
    assert first.status_code == 201, first.text
    again = client.put("/fhir/Patient/only-once", json={**body, "gender": "male"}, headers={"If-None-Match": "*"})
    assert again.status_code == 412 and again.json()["issue"][0]["expression"] == ["If-None-Match"]
    assert client.get("/fhir/Patient/only-once").json()["gender"] == "female"
    later = format_datetime(datetime.now(UTC) + timedelta(minutes=1), usegmt=True)
    earlier = format_datetime(datetime.now(UTC) - timedelta(days=1), usegmt=True)
    assert client.get("/fhir/Patient/only-once", headers={"If-Modified-Since": later}).status_code == 304
    assert client.get("/fhir/Patient/only-once", headers={"If-Modified-Since": earlier}).status_code == 200
    assert client.get("/fhir/Patient/only-once", headers={"If-Modified-Since": "yesterday"}).status_code == 200


def test_type_history_is_every_version_newest_first_paged(client):
    """Issue 11 §5: `GET /fhir/{type}/_history` (it was "id '_history' is not known"), with `_count`, `_since` and
    an opaque `next` cursor that neither repeats nor skips a version."""
    from datetime import UTC, datetime, timedelta

    first = created(client.post("/fhir/Patient", json=patient()))
    for gender in ("male", "other"):
        assert client.put(f"/fhir/Patient/{first['id']}", json={**first, "gender": gender}).status_code == 200
    second = created(client.post("/fhir/Patient", json=patient()))
    assert client.delete(f"/fhir/Patient/{second['id']}").status_code == 200
    seen, url = [], "/fhir/Patient/_history?_count=2"
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["type"] == "history"
        seen += [(e["request"]["method"], e["response"]["etag"]) for e in body["entry"]]
        url = next((link["url"].replace("http://testserver", "") for link in body["link"]
                    if link["relation"] == "next"), None)
    assert seen == [("DELETE", 'W/"2"'), ("POST", 'W/"1"'), ("PUT", 'W/"3"'), ("PUT", 'W/"2"'), ("POST", 'W/"1"')]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert client.get(f"/fhir/Patient/_history?_since={later}").json()["total"] == 0
    assert client.get("/fhir/Patient/_history?_since=yesterday").status_code == 400
    assert client.get("/fhir/Patient/_history?_page=x").status_code == 400


def test_summary_and_elements_on_reads_as_on_searches(client):
    """Issue 11 §6: `_elements` and `_summary` on read and vread give what a search would (tagged SUBSETTED)."""
    rid = created(client.post("/fhir/Patient", json=patient("MRN-ELEM")))["id"]
    for url in (f"/fhir/Patient/{rid}", f"/fhir/Patient/{rid}/_history/1"):
        slim = client.get(f"{url}?_elements=gender")
        assert slim.status_code == 200
        body = slim.json()
        assert set(body) == {"resourceType", "id", "meta", "gender"}
        assert body["meta"]["tag"][-1]["code"] == "SUBSETTED"
        assert slim.headers["etag"] == 'W/"1"'
        searched = client.get(f"/fhir/Patient?_id={rid}&_elements=gender").json()["entry"][0]["resource"]
        assert {k: v for k, v in body.items() if k != "meta"} == {k: v for k, v in searched.items() if k != "meta"}
        summary = client.get(f"{url}?_summary=true").json()  # the summary elements (gender is one)
        assert summary["gender"] == "female" and summary["meta"]["tag"][-1]["code"] == "SUBSETTED"
        assert client.get(f"{url}?_summary=false").json()["identifier"][0]["value"] == "MRN-ELEM"
        assert client.get(f"{url}?_summary=bogus").status_code == 400


def test_system_history_is_every_version_of_every_type_paged(client):
    """Issue 11 §5: `GET /fhir/_history`: every version of every stored type (not the audit trail), newest first,
    paged without repeats or gaps."""
    ids = enrol(client)
    seen, url = [], "/fhir/_history?_count=2"
    while url:
        body = client.get(url).json()
        seen += [e["fullUrl"].split("/fhir/")[1] for e in body["entry"]]
        url = next((link["url"].replace("http://testserver", "") for link in body["link"]
                    if link["relation"] == "next"), None)
    assert seen == [f"ResearchSubject/{ids['subject']}", f"Patient/{ids['patient']}",
                    f"ResearchStudy/{ids['study']}"]
    assert client.get("/fhir/_history?_page=x").status_code == 400
