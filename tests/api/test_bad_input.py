"""A table of bad inputs: each gets its status, an OperationOutcome naming the element, and writes nothing.

Every case asserts: the status code, `Content-Type: application/fhir+json`, a body that is a valid R4
OperationOutcome (checked with fhir.resources), the first issue's severity/code/expression, and that no
table changed (rows counted before and after).
"""

import json

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

import service.tables  # noqa: F401  (every table in SQLModel.metadata)
from fhir_mappings import fhir
from service.main import create_app
from tests.assertions import assert_outcome, table_counts
from tests.factories import MRN, adverse_event, created, enrol, observation, patient

FHIR_JSON = {"Content-Type": "application/fhir+json"}






def raw(client, method: str, url: str, content: bytes, headers: dict | None = None):
    return client.request(method, url, content=content, headers={**FHIR_JSON, **(headers or {})})


def nested_extension(depth: int) -> dict:
    ext = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(depth):
        ext = {"url": "http://example.org/node", "extension": [ext]}
    return ext


def two_patients_with_value(client, value: str = "SHARED-1") -> None:
    """Two patients whose identifier value is equal under two systems: `identifier=<value>` matches both."""
    for system in ("urn:example:a", "urn:example:b"):
        created(client.post("/fhir/Patient", json=patient(identifier=[{"system": system, "value": value}])))


def existing_patient(client) -> dict:
    return created(client.post("/fhir/Patient", json=patient()))


def deleted_patient(client) -> dict:
    patient_ = existing_patient(client)
    assert client.delete(f"/fhir/Patient/{patient_['id']}").status_code == 200
    return patient_


# Each case: (setup(client) -> context, request(client, context) -> response, status, issue code, expression).
def _none(client):
    return {}


CASES = [
    # -- bodies that are not a JSON object --------------------------------------------------------------
    ("malformed-json", _none, lambda c, x: raw(c, "POST", "/fhir/Patient", b'{"resourceType": "Patient",'),
     400, "invalid", "body"),
    ("empty-body", _none, lambda c, x: raw(c, "POST", "/fhir/Patient", b""), 400, "invalid", "body"),
    ("whitespace-body", _none, lambda c, x: raw(c, "POST", "/fhir/Patient", b"  \n "), 400, "invalid", "body"),
    ("json-array", _none, lambda c, x: raw(c, "POST", "/fhir/Patient", b'[{"resourceType": "Patient"}]'),
     400, "invalid", "body"),
    ("json-string", _none, lambda c, x: raw(c, "POST", "/fhir/Patient", b'"Patient"'), 400, "invalid", "body"),
    ("json-null", _none, lambda c, x: raw(c, "POST", "/fhir/Patient", b"null"), 400, "invalid", "body"),
    ("no-resourceType", _none, lambda c, x: c.post("/fhir/Patient", json={"gender": "male"}),
     400, "invalid", "resourceType"),
    ("resourceType-number", _none, lambda c, x: c.post("/fhir/Patient", json={"resourceType": 5}),
     400, "invalid", "Patient.resourceType"),
    # -- wrong JSON types ---------------------------------------------------------------------------------
    ("string-where-number", lambda c: enrol(c),
     lambda c, x: c.post("/fhir/Observation", json=observation(x["patient"], "EASI", value="12.3")),
     400, "invalid", "Observation.valueQuantity.value"),
    ("string-where-integer", _none,
     lambda c, x: c.post("/fhir/Patient", json=patient(multipleBirthInteger="2")),
     400, "invalid", "Patient.multipleBirthInteger"),
    ("string-where-boolean", _none, lambda c, x: c.post("/fhir/Patient", json=patient(active="true")),
     400, "invalid", "Patient.active"),
    ("number-where-boolean", _none, lambda c, x: c.post("/fhir/Patient", json=patient(active=1)),
     400, "invalid", "Patient.active"),
    ("number-where-string", _none, lambda c, x: c.post("/fhir/Patient", json=patient(gender=1)),
     400, "invalid", "Patient.gender"),
    ("number-where-date", _none, lambda c, x: c.post("/fhir/Patient", json=patient(birthDate=19900101)),
     400, "invalid", "Patient.birthDate"),
    ("number-where-datetime", lambda c: enrol(c),
     lambda c, x: c.post("/fhir/Observation", json=observation(x["patient"], date=-1)),
     400, "invalid", "Observation.effectiveDateTime"),
    ("number-where-datetime-ae", lambda c: enrol(c),
     lambda c, x: c.post("/fhir/AdverseEvent", json=adverse_event(x["patient"], date=0)),
     400, "invalid", "AdverseEvent.date"),
    ("object-where-array", _none, lambda c, x: c.post("/fhir/Patient", json=patient(name={"family": "Kim"})),
     400, "invalid", "Patient.name"),
    ("string-where-array-in-element", _none,
     lambda c, x: c.post("/fhir/Patient", json=patient(name=[{"family": "Kim", "given": "Jin"}])),
     400, "invalid", "Patient.name[0].given"),
    ("null-in-array", _none, lambda c, x: c.post("/fhir/Patient", json=patient(name=[None])),
     400, "invalid", "Patient.name[0]"),
    ("string-where-object", _none, lambda c, x: c.post("/fhir/Patient", json=patient(meta="v1")),
     400, "invalid", "Patient.meta"),
    ("number-where-id", _none, lambda c, x: c.post("/fhir/Patient", json={"resourceType": "Patient", "id": 5}),
     400, "invalid", "Patient.id"),
    # -- huge numbers -------------------------------------------------------------------------------------
    ("number-1e400", _none,
     lambda c, x: raw(c, "POST", "/fhir/Patient", b'{"resourceType": "Patient", "multipleBirthInteger": 1e400}'),
     400, "invalid", "body"),
    ("integer-10**30", _none,
     lambda c, x: raw(c, "POST", "/fhir/Patient",
                      b'{"resourceType": "Patient", "multipleBirthInteger": 1000000000000000000000000000000}'),
     400, "invalid", "Patient.multipleBirthInteger"),
    ("score-10**30", lambda c: enrol(c),
     lambda c, x: raw(c, "POST", "/fhir/Observation",
                      json.dumps(observation(x["patient"], "EASI", value=10**30)).encode()),
     422, "value", "Observation.valueQuantity.value"),
    ("score-1e400", lambda c: enrol(c),
     lambda c, x: raw(c, "POST", "/fhir/Observation",
                      json.dumps(observation(x["patient"], "EASI", value=1)).encode().replace(b'"value": 1,',
                                                                                             b'"value": 1e400,')),
     400, "invalid", "body"),
    # -- deep nesting -------------------------------------------------------------------------------------
    ("extension-200-deep", _none,
     lambda c, x: c.post("/fhir/Patient", json=patient(extension=[nested_extension(200)])), 400, "invalid", "body"),
    ("arrays-10k-deep", _none,
     lambda c, x: raw(c, "POST", "/fhir/Patient",
                      b'{"resourceType": "Patient", "extension": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
     400, "invalid", "body"),
    ("objects-10k-deep", _none,
     lambda c, x: raw(c, "POST", "/fhir/Patient",
                      b'{"resourceType": "Patient", "meta": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001),
     400, "invalid", "body"),
    ("transaction-entry-40-extensions-deep", _none,
     lambda c, x: c.post("/fhir", json=transaction(post(patient(extension=[nested_extension(40)])))),
     400, "structure", "Bundle.entry[0].resource"),
    ("transaction-entry-200-extensions-deep", _none,
     lambda c, x: c.post("/fhir", json=transaction(post(patient()), post(patient(extension=[nested_extension(200)])))),
     400, "invalid", "Bundle.entry[1].resource"),
    ("transaction-entry-10k-arrays-deep", _none,
     lambda c, x: raw(c, "POST", "/fhir", b'{"resourceType": "Bundle", "type": "transaction", "entry": [{"request": '
                      b'{"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient", "extension": '
                      + b"[" * 10_000 + b"]" * 10_000 + b"}}]}"),
     400, "invalid", "body"),
    # -- the endpoint and the body disagree ---------------------------------------------------------------
    ("unknown-type-post", _none, lambda c, x: c.post("/fhir/Foo", json={"resourceType": "Foo"}),
     404, "not-found", "request.url"),
    ("unknown-type-read", _none, lambda c, x: c.get("/fhir/Foo/1"), 404, "not-found", "request.url"),
    ("unknown-id-read", _none, lambda c, x: c.get("/fhir/Patient/no-such-id"), 404, "not-found", "Patient.id"),
    ("vread-version-not-a-number", existing_patient, lambda c, x: c.get(f"/fhir/Patient/{x['id']}/_history/abc"),
     404, "not-found", "Patient.meta.versionId"),
    ("vread-version-huge", existing_patient,
     lambda c, x: c.get(f"/fhir/Patient/{x['id']}/_history/99999999999999999999"),
     404, "not-found", "Patient.meta.versionId"),
    ("history-unknown-id", _none, lambda c, x: c.get("/fhir/Patient/no-such-id/_history"),
     404, "not-found", "Patient.id"),
    ("read-deleted", deleted_patient, lambda c, x: c.get(f"/fhir/Patient/{x['id']}"), 410, "deleted", "Patient.id"),
    ("vread-deletion", deleted_patient, lambda c, x: c.get(f"/fhir/Patient/{x['id']}/_history/2"),
     410, "deleted", "Patient.meta.versionId"),
    ("resourceType-mismatch", _none,
     lambda c, x: c.post("/fhir/Patient", json={"resourceType": "Observation", "status": "final"}),
     400, "invalid", "Patient.resourceType"),
    ("resourceType-mismatch-put", _none,
     lambda c, x: c.put("/fhir/Patient/p1", json={"resourceType": "ResearchStudy", "id": "p1", "status": "active"}),
     400, "invalid", "Patient.resourceType"),
    ("put-id-mismatch", existing_patient,
     lambda c, x: c.put(f"/fhir/Patient/{x['id']}", json={**patient(), "id": "some-other-id"}),
     400, "invalid", "Patient.id"),
    ("put-id-missing", existing_patient, lambda c, x: c.put(f"/fhir/Patient/{x['id']}", json=patient()),
     400, "invalid", "Patient.id"),
    ("put-invalid-id", _none,
     lambda c, x: c.put("/fhir/Patient/bad$id", json={**patient(), "id": "bad$id"}), 400, "invalid", "Patient.id"),
    # -- dates and elements -------------------------------------------------------------------------------
    ("date-feb-30", _none, lambda c, x: c.post("/fhir/Patient", json=patient(birthDate="2024-02-30")),
     400, "invalid", "Patient.birthDate"),
    ("date-yesterday", _none, lambda c, x: c.post("/fhir/Patient", json=patient(birthDate="yesterday")),
     400, "invalid", "Patient.birthDate"),
    ("datetime-feb-30", lambda c: enrol(c),
     lambda c, x: c.post("/fhir/Observation", json=observation(x["patient"], date="2024-02-30T10:00:00Z")),
     400, "invalid", "Observation.effectiveDateTime"),
    ("datetime-yesterday", lambda c: enrol(c),
     lambda c, x: c.post("/fhir/Observation", json=observation(x["patient"], date="yesterday")),
     400, "invalid", "Observation.effectiveDateTime"),
    ("unknown-element", _none, lambda c, x: c.post("/fhir/Patient", json=patient(favouriteColour="blue")),
     400, "structure", "Patient.favouriteColour"),
    ("unknown-nested-element", _none,
     lambda c, x: c.post("/fhir/Patient", json=patient(name=[{"family": "Kim", "nickname": "K"}])),
     400, "structure", "Patient.name[0].nickname"),
    ("r5-element-on-r4", lambda c: enrol(c),
     lambda c, x: c.post("/fhir/Observation", json={**observation(x["patient"]), "instantiatesReference": {}}),
     400, "structure", "Observation.instantiatesReference"),
    # -- codes the service checks (value-set bindings fhir.resources does not check) ----------------------
    ("observation-status-bogus", lambda c: enrol(c),
     lambda c, x: c.post("/fhir/Observation", json=observation(x["patient"], status="bogus")),
     422, "code-invalid", "Observation.status"),
    ("gender-bogus", _none, lambda c, x: c.post("/fhir/Patient", json=patient(gender="bogus")),
     422, "code-invalid", "Patient.gender"),
    # -- media types and methods --------------------------------------------------------------------------
    ("text-plain", _none,
     lambda c, x: c.post("/fhir/Patient", content=orjson.dumps(patient()), headers={"Content-Type": "text/plain"}),
     415, "not-supported", "Content-Type"),
    ("application-xml", _none,
     lambda c, x: c.post("/fhir/Patient", content=b"<Patient xmlns='http://hl7.org/fhir'/>",
                         headers={"Content-Type": "application/xml"}),
     415, "not-supported", "Content-Type"),
    ("fhir-xml", _none,
     lambda c, x: c.post("/fhir/Patient", content=b"<Patient xmlns='http://hl7.org/fhir'/>",
                         headers={"Content-Type": "application/fhir+xml"}),
     415, "not-supported", "Content-Type"),
    ("no-content-type", _none,
     lambda c, x: c.post("/fhir/Patient", content=orjson.dumps(patient()), headers={"Content-Type": ""}),
     415, "not-supported", "Content-Type"),
    ("_format-xml", _none, lambda c, x: c.get("/fhir/Patient?_format=xml"), 406, "not-supported", "_format"),
    ("_format-xml-on-create", _none, lambda c, x: c.post("/fhir/Patient?_format=xml", json=patient()),
     406, "not-supported", "_format"),
    ("accept-xml", _none, lambda c, x: c.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"}),
     406, "not-supported", "Accept"),
    ("patch-not-json", existing_patient,
     lambda c, x: c.patch(f"/fhir/Patient/{x['id']}", content=b"[]", headers={"Content-Type": "text/plain"}),
     415, "not-supported", "Content-Type"),
    ("patch-fhirpath-patch", existing_patient,
     lambda c, x: c.patch(f"/fhir/Patient/{x['id']}", json={"resourceType": "Parameters"}), 415, "not-supported",
     "body"),
    ("patch-merge-patch-not-an-object", existing_patient,
     lambda c, x: c.patch(f"/fhir/Patient/{x['id']}", json=[]), 400, "invalid", "body"),
    ("patch-unknown-op", existing_patient,
     lambda c, x: c.patch(f"/fhir/Patient/{x['id']}", json=[{"op": "delete", "path": "/gender"}],
                          headers={"Content-Type": "application/json-patch+json"}), 400, "invalid", "Patch[0].op"),
    ("patch-failed-test", existing_patient,
     lambda c, x: c.patch(f"/fhir/Patient/{x['id']}", json=[{"op": "test", "path": "/gender", "value": "x"}],
                          headers={"Content-Type": "application/json-patch+json"}), 422, "processing",
     "Patch[0].value"),
    ("patch-on-a-collection-without-criteria", existing_patient,
     lambda c, x: c.patch("/fhir/Patient", json=[], headers={"Content-Type": "application/json-patch+json"}),
     400, "invalid", "search"),
    # -- versions and conditional interactions ------------------------------------------------------------
    ("if-match-stale-update", existing_patient,
     lambda c, x: c.put(f"/fhir/Patient/{x['id']}", json=x, headers={"If-Match": 'W/"7"'}),
     412, "conflict", "If-Match"),
    ("if-match-stale-delete", existing_patient,
     lambda c, x: c.delete(f"/fhir/Patient/{x['id']}", headers={"If-Match": 'W/"7"'}), 412, "conflict", "If-Match"),
    ("if-match-malformed", existing_patient,
     lambda c, x: c.put(f"/fhir/Patient/{x['id']}", json=x, headers={"If-Match": "yesterday"}),
     400, "invalid", "If-Match"),
    ("if-match-malformed-delete", existing_patient,
     lambda c, x: c.delete(f"/fhir/Patient/{x['id']}", headers={"If-Match": 'W/"one"'}), 400, "invalid", "If-Match"),
    ("conditional-create-two-matches", two_patients_with_value,
     lambda c, x: c.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": "identifier=SHARED-1"}),
     412, "conflict", "If-None-Exist"),
    ("conditional-create-unknown-param", _none,
     lambda c, x: c.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": "name=Kim"}),
     400, "invalid", "If-None-Exist"),
    ("conditional-update-two-matches", two_patients_with_value,
     lambda c, x: c.put("/fhir/Patient?identifier=SHARED-1", json=patient()), 412, "conflict", "search"),
    ("conditional-delete-two-matches", two_patients_with_value,
     lambda c, x: c.delete("/fhir/Patient?identifier=SHARED-1"), 412, "conflict", "search"),
    ("duplicate-identifier", lambda c: created(c.post("/fhir/Patient", json=patient("MRN-DUP"))),
     lambda c, x: c.post("/fhir/Patient", json=patient("MRN-DUP")), 409, "conflict", "Patient.identifier[0]"),
    # -- Bundles ------------------------------------------------------------------------------------------
    ("bundle-not-a-bundle", _none, lambda c, x: c.post("/fhir", json=patient()), 400, "invalid", "Bundle.resourceType"),
    ("bundle-collection", _none, lambda c, x: c.post("/fhir", json={"resourceType": "Bundle", "type": "collection"}),
     400, "invalid", "Bundle.type"),
    ("bundle-entry-object", _none,
     lambda c, x: c.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": {}}),
     400, "invalid", "Bundle.entry"),
    ("bundle-entry-not-object", _none,
     lambda c, x: c.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [7]}),
     400, "invalid", "Bundle.entry[0]"),
    ("transaction-rule-violation-in-entry-1", lambda c: enrol(c),
     lambda c, x: c.post("/fhir", json=transaction(
         post(patient("MRN-TX-1")), post(observation(x["patient"], "EASI", value=99)))),
     422, "value", "Bundle.entry[1].resource.valueQuantity.value"),
    ("transaction-structure-error-in-entry-2", _none,
     lambda c, x: c.post("/fhir", json=transaction(
         post(patient("MRN-TX-1")), post(patient("MRN-TX-2")), post({**patient("MRN-TX-3"), "gender": 5}))),
     400, "invalid", "Bundle.entry[2].resource.gender"),
    ("transaction-unsupported-type", _none,
     lambda c, x: c.post("/fhir", json=transaction(
         post(patient("MRN-TX-1")), post({"resourceType": "Immunization", "status": "completed"}))),
     400, "invalid", "Bundle.entry[1].request.url"),
    ("transaction-url-type-mismatch", _none,
     lambda c, x: c.post("/fhir", json=transaction(post(patient("MRN-TX-1"), url="Observation"))),
     400, "invalid", "Bundle.entry[0].resource.resourceType"),
    ("transaction-unresolved-placeholder", lambda c: enrol(c),
     lambda c, x: c.post("/fhir", json=transaction(
         post(patient("MRN-TX-1"), full_url="urn:uuid:0d0d0d0d-0000-4000-8000-000000000001"),
         post(observation("ignored", subject={"reference": "urn:uuid:0d0d0d0d-0000-4000-8000-00000000ffff"})))),
     422, "business-rule", "Bundle.entry[1].resource.subject"),
    ("transaction-patch-not-a-binary", _none,
     lambda c, x: c.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
         {"resource": patient(), "request": {"method": "PATCH", "url": "Patient/1"}}]}),
     400, "invalid", "Bundle.entry[0].resource"),
    ("transaction-unknown-method", _none,
     lambda c, x: c.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
         {"resource": patient(), "request": {"method": "MERGE", "url": "Patient/1"}}]}),
     400, "invalid", "Bundle.entry[0].request.method"),
    ("transaction-duplicate-identifier", _none,
     lambda c, x: c.post("/fhir", json=transaction(post(patient("MRN-TX-1")), post(patient("MRN-TX-1")))),
     409, "conflict", "Bundle.entry[1].resource.identifier[0]"),
    ("transaction-if-match-stale", existing_patient,
     lambda c, x: c.post("/fhir", json=transaction(
         {"resource": x, "request": {"method": "PUT", "url": f"Patient/{x['id']}", "ifMatch": 'W/"9"'}})),
     412, "conflict", "Bundle.entry[0].request.ifMatch"),
    ("transaction-delete-if-match-stale", existing_patient,
     lambda c, x: c.post("/fhir", json=transaction(
         {"request": {"method": "DELETE", "url": f"Patient/{x['id']}", "ifMatch": 'W/"9"'}})),
     412, "conflict", "Bundle.entry[0].request.ifMatch"),
    ("transaction-conditional-create-two-matches", two_patients_with_value,
     lambda c, x: c.post("/fhir", json=transaction(
         {"resource": patient(),
          "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=SHARED-1"}})),
     412, "conflict", "Bundle.entry[0].request.ifNoneExist"),
    ("transaction-conditional-update-two-matches", two_patients_with_value,
     lambda c, x: c.post("/fhir", json=transaction(
         {"resource": patient(), "request": {"method": "PUT", "url": "Patient?identifier=SHARED-1"}})),
     412, "conflict", "Bundle.entry[0].request.url"),
    ("transaction-fullurl-not-a-string", _none,
     lambda c, x: c.post("/fhir", json=transaction({**post(patient()), "fullUrl": ["urn:uuid:x"]})),
     400, "invalid", "Bundle.entry[0].fullUrl"),
    ("transaction-ifnoneexist-not-a-string", _none,  # in a batch: that entry's 400 (tests/bundle/test_entry_errors)
     lambda c, x: c.post("/fhir", json=transaction(
         {"resource": patient(), "request": {"method": "POST", "url": "Patient", "ifNoneExist": {"a": 1}}})),
     400, "invalid", "Bundle.entry[0].request.ifNoneExist"),
    ("transaction-unenrolled-subject", lambda c: created(c.post("/fhir/Patient", json=patient())),
     lambda c, x: c.post("/fhir", json=transaction(post(patient("MRN-TX-1")), post(observation(x["id"])))),
     422, "business-rule", "Bundle.entry[1].resource.subject"),
]


def transaction(*entries: dict, kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(resource: dict, url: str | None = None, full_url: str | None = None) -> dict:
    item = {"resource": resource, "request": {"method": "POST", "url": url or resource["resourceType"]}}
    if full_url:
        item["fullUrl"] = full_url
    return item


@pytest.mark.parametrize(("setup", "send", "status", "code", "expression"),
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_input_gets_an_operation_outcome_and_writes_nothing(client, engine, setup, send, status, code,
                                                                expression):
    context = setup(client)
    before = table_counts(engine)
    response = send(client, context)
    assert_outcome(response, status, code, expression)
    assert table_counts(engine) == before


def test_rejected_transaction_leaves_nothing_searchable(client, engine):
    ids = enrol(client)
    before = table_counts(engine)
    body = transaction(post(patient("MRN-TX-A"), full_url="urn:uuid:6f2e1c1a-0000-4000-8000-000000000001"),
                       post(observation(ids["patient"], "EASI", value=10.0, date="2024-01-11")),
                       post(observation(ids["patient"], "IGA", value=2.5)))
    assert_outcome(client.post("/fhir", json=body), 422, "value", "Bundle.entry[2].resource.valueQuantity.value")
    assert table_counts(engine) == before
    assert client.get("/fhir/Patient", params={"identifier": f"{MRN}|MRN-TX-A"}).json().get("total") == 0
    observations = client.get("/fhir/Observation").json()
    assert [e for e in observations.get("entry", []) if e.get("search", {}).get("mode") == "match"] == []


def test_batch_with_one_bad_entry_runs_the_others(client, engine):
    ids = enrol(client)
    body = transaction(post(patient("MRN-B-1")), post(observation(ids["patient"], "EASI", value=99)),
                       post(observation(ids["patient"], "EASI", value=20.5)), post({**patient(), "gender": "bogus"}),
                       kind="batch")
    response = client.post("/fhir", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    result = response.json()
    fhir.Bundle.model_validate(result)
    assert result["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert [s.split()[0] for s in statuses] == ["201", "422", "201", "422"]
    for i, where in ((1, "Bundle.entry[1].resource.valueQuantity.value"), (3, "Bundle.entry[3].resource.gender")):
        oo = result["entry"][i]["response"]["outcome"]
        fhir.OperationOutcome.model_validate(oo)
        assert oo["issue"][0]["severity"] == "error"
        assert oo["issue"][0]["expression"] == [where]
    # the good entries were written, the bad ones were not
    assert client.get("/fhir/Patient", params={"identifier": f"{MRN}|MRN-B-1"}).json()["total"] == 1
    with engine.connect() as conn:
        from service.observation.models import MeasurementRecord
        values = conn.execute(select(MeasurementRecord.__table__.c.value)).scalars().all()
    assert values == [20.5]


@pytest.fixture
def small_client(settings):
    """An app that accepts request bodies of at most 2000 bytes."""
    app = create_app(settings.model_copy(update={"max_body_bytes": 2000}))
    with TestClient(app) as test_client:
        yield test_client, app.state.engine


@pytest.mark.parametrize("path", ["/fhir/Patient", "/fhir"])
def test_body_over_the_limit_is_413(small_client, path):
    client, engine = small_client
    before = table_counts(engine)
    big = patient(name=[{"family": "K" * 3000}])
    body = big if path == "/fhir/Patient" else transaction(post(big))
    assert_outcome(client.post(path, json=body), 413, "too-costly", "Content-Length")
    assert table_counts(engine) == before
    # just under the limit is fine
    assert client.post("/fhir/Patient", json=patient(name=[{"family": "K" * 100}])).status_code == 201


def test_body_over_the_limit_without_content_length_is_413(small_client):
    client, engine = small_client
    before = table_counts(engine)

    def chunks():
        yield b'{"resourceType": "Patient", "name": [{"family": "'
        for _ in range(10):
            yield b"K" * 500
        yield b'"}]}'

    response = client.post("/fhir/Patient", content=chunks(), headers=FHIR_JSON)
    assert_outcome(response, 413, "too-costly", "Content-Length")
    assert table_counts(engine) == before


@pytest.mark.parametrize("media", ["application/fhir+json", "application/json",
                                   "application/fhir+json; charset=utf-8"])
def test_json_media_types_are_accepted(client, media):
    response = client.post("/fhir/Patient", content=orjson.dumps(patient()), headers={"Content-Type": media})
    assert response.status_code == 201, response.text


def test_history_before_a_version_beyond_any_lists_every_version(client):
    patient_ = created(client.post("/fhir/Patient", json=patient()))
    response = client.get(f"/fhir/Patient/{patient_['id']}/_history", params={"_before_version": 10**20})
    assert response.status_code == 200, response.text
    assert [e["resource"]["id"] for e in response.json()["entry"]] == [patient_["id"]]


def test_long_strings_are_stored_or_refused_with_a_422_never_a_500(client):
    long_text = [patient(name=[{"family": "F" * 300, "given": ["G" * 3000]}]),
                 patient(identifier=[{"system": "urn:x", "value": "V" * 1000}]),
                 {"resourceType": "ResearchStudy", "status": "active", "title": "T" * 5000,
                  "arm": [{"name": "a", "description": "D" * 5000}]}]
    for body in long_text:
        response = client.post(f"/fhir/{body['resourceType']}", json=body)
        assert response.status_code == 201, response.text
        assert client.get(f"/fhir/{body['resourceType']}/{response.json()['id']}").json() == response.json()
    refused = [(patient(identifier=[{"system": "urn:x", "value": "V" * 1025}]), "Patient.identifier[0].value"),
               (patient(identifier=[{"system": "S" * 2000, "value": "v"}]), "Patient.identifier[0].system"),
               ({"resourceType": "ResearchStudy", "status": "active", "arm": [{"name": "N" * 256}]},
                "ResearchStudy.arm[0].name")]
    for body, where in refused:
        response = client.post(f"/fhir/{body['resourceType']}", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["issue"][0]["expression"] == [where]


def test_batch_entry_nested_too_deep_gets_its_own_outcome(client, engine):
    before = table_counts(engine)
    body = transaction(post(patient(extension=[nested_extension(40)])),
                       post(patient(extension=[nested_extension(200)])), kind="batch")
    response = client.post("/fhir", json=body)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    for item in entries:
        assert item["response"]["status"].startswith("400"), item
        first = item["response"]["outcome"]["issue"][0]
        assert first["code"] in ("structure", "invalid") and "nested deeper" in first["diagnostics"], item
    assert table_counts(engine) == before
