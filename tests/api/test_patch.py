"""PATCH with JSON Patch (issue 11 §5): through the same update path as a PUT (structure, trial rules, version
checks, audit), conditional PATCH, every bad patch a 4xx naming the operation, nothing written on failure; and a
client library's round trip (PATCH, history, vread) over plain httpx."""

import base64
import json
from typing import Any

import pytest

from tests.factories import MRN, created, enrol, observation, patient

JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def send_patch(client, url: str, ops: Any, **headers: str):
    return client.request("PATCH", url, json=ops, headers={**JSON_PATCH, **headers})


def versions(client, url: str) -> list[str]:
    return [e["resource"]["meta"]["versionId"] for e in client.get(f"{url}/_history").json().get("entry", [])
            if "resource" in e]


def test_patch_makes_a_new_version_with_the_change(client):
    pid = created(client.post("/fhir/Patient", json=patient("MRN-P1")))["id"]
    r = send_patch(client, f"/fhir/Patient/{pid}", [{"op": "test", "path": "/gender", "value": "female"},
                                                    {"op": "replace", "path": "/gender", "value": "male"},
                                                    {"op": "add", "path": "/name", "value": [{"family": "Kim"}]}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["gender"] == "male" and body["name"] == [{"family": "Kim"}]
    assert body["meta"]["versionId"] == "2" and r.headers["etag"] == 'W/"2"'
    assert client.get(f"/fhir/Patient/{pid}").json() == body
    assert versions(client, f"/fhir/Patient/{pid}") == ["2", "1"]
    history = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert history["entry"][0]["request"]["method"] == "PUT"  # stored as an update


def test_patch_with_if_match(client):
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    ops = [{"op": "replace", "path": "/birthDate", "value": "1991-02-03"}]
    stale = send_patch(client, f"/fhir/Patient/{pid}", ops, **{"If-Match": 'W/"7"'})
    assert stale.status_code == 412
    assert stale.json()["issue"][0]["expression"] == ["If-Match"]
    assert versions(client, f"/fhir/Patient/{pid}") == ["1"]
    ok = send_patch(client, f"/fhir/Patient/{pid}", ops, **{"If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.json()["birthDate"] == "1991-02-03"
    again = send_patch(client, f"/fhir/Patient/{pid}", [{"op": "remove", "path": "/birthDate"}],
                       **{"If-Match": 'W/"1"'})  # the version it named is no longer current
    assert again.status_code == 412 and "birthDate" in client.get(f"/fhir/Patient/{pid}").json()


def test_patch_that_changes_nothing_keeps_the_version(client):
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    r = send_patch(client, f"/fhir/Patient/{pid}", [{"op": "replace", "path": "/gender", "value": "female"}])
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "1"
    assert versions(client, f"/fhir/Patient/{pid}") == ["1"]


# (patch, status, the expressions the OperationOutcome names)
BAD_PATCHES = [
    ({"op": "replace"}, 400, ["Patch"]),
    ([{"op": "delete", "path": "/gender"}], 400, ["Patch[0].op"]),
    ([{"op": "add", "path": "/gender"}, {"op": "move", "path": "/x"}], 400, ["Patch[0].value", "Patch[1].from"]),
    ([{"op": "remove", "path": "gender"}], 400, ["Patch[0].path"]),
    ([{"op": "test", "path": "/gender", "value": "male"}], 422, ["Patch[0].value"]),
    ([{"op": "remove", "path": "/name"}], 422, ["Patch[0].path"]),
    ([{"op": "replace", "path": "/identifier/5/value", "value": "x"}], 422, ["Patch[0].path"]),
    # the patched resource is checked as a PUT of it would be: structure (400) and value sets / rules (422)
    ([{"op": "add", "path": "/colour", "value": "blue"}], 400, ["Patient.colour"]),
    ([{"op": "replace", "path": "/gender", "value": None}], 400, ["Patient.gender"]),
    ([{"op": "replace", "path": "/gender", "value": "bogus"}], 422, ["Patient.gender"]),
    ([{"op": "replace", "path": "/id", "value": "another"}], 400, ["Patient.id"]),
    ([{"op": "replace", "path": "/resourceType", "value": "Observation"}], 400, ["resourceType"]),
]


@pytest.mark.parametrize(("ops", "status", "expressions"), BAD_PATCHES)
def test_bad_patch_is_a_4xx_naming_the_operation_and_writes_nothing(client, ops, status, expressions):
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    before = client.get(f"/fhir/Patient/{pid}").json()
    r = send_patch(client, f"/fhir/Patient/{pid}", ops)
    assert r.status_code == status, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    named = [e for i in outcome["issue"] for e in i.get("expression", [])]
    assert all(e in named for e in expressions), named
    assert client.get(f"/fhir/Patient/{pid}").json() == before


def test_patch_runs_the_trial_rules(client):
    ids = enrol(client)
    oid = created(client.post("/fhir/Observation", json=observation(ids["patient"], "EASI", 12.0)))["id"]
    r = send_patch(client, f"/fhir/Observation/{oid}", [{"op": "replace", "path": "/valueQuantity/value",
                                                         "value": 80}])
    assert r.status_code == 422, r.text
    assert "Observation.valueQuantity.value" in r.json()["issue"][0]["expression"]
    ok = send_patch(client, f"/fhir/Observation/{oid}", [{"op": "replace", "path": "/valueQuantity/value",
                                                          "value": 20}])
    assert ok.status_code == 200
    # the typed rows follow: a search by value finds the patched one
    found = client.get(f"/fhir/Observation?_id={oid}&value-quantity=20").json()
    assert found["total"] == 1


def test_patch_of_what_is_not_there(client):
    unknown = send_patch(client, "/fhir/Patient/nope", [{"op": "remove", "path": "/gender"}])
    assert unknown.status_code == 404
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 200
    gone = send_patch(client, f"/fhir/Patient/{pid}", [{"op": "remove", "path": "/gender"}])
    assert gone.status_code == 410
    assert send_patch(client, "/fhir/Basic/x", []).status_code == 404


def test_patch_needs_a_json_patch_body(client):
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    fhir_json = client.request("PATCH", f"/fhir/Patient/{pid}", json={"resourceType": "Parameters"},
                               headers={"Content-Type": "application/fhir+json"})
    assert fhir_json.status_code == 415 and fhir_json.json()["issue"][0]["expression"] == ["body"]  # FHIRPath Patch
    xml = client.request("PATCH", f"/fhir/Patient/{pid}", content=b"<x/>", headers={"Content-Type": "text/xml"})
    assert xml.status_code == 415
    broken = client.request("PATCH", f"/fhir/Patient/{pid}", content=b"[{", headers=JSON_PATCH)
    assert broken.status_code == 400 and broken.json()["issue"][0]["expression"] == ["body"]
    # a JSON Patch is for PATCH only
    post = client.post("/fhir/Patient", content=b"[]", headers=JSON_PATCH)
    assert post.status_code == 415


@pytest.mark.parametrize("content_type", ["application/merge-patch+json", "application/json", "application/fhir+json"])
def test_a_json_merge_patch_changes_what_it_names_and_removes_its_nulls(client, content_type):
    """RFC 7396, as fhirpy's patch() sends it (an object as application/json): through the same update as a PUT."""
    pid = created(client.post("/fhir/Patient", json=patient("MRN-MERGE", name=[{"family": "Kim"}])))["id"]
    r = client.request("PATCH", f"/fhir/Patient/{pid}", json={"gender": "male", "name": None},
                       headers={"Content-Type": content_type, "If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["gender"] == "male" and "name" not in body and body["birthDate"] == "1990-01-01"
    assert body["identifier"] == [{"system": MRN, "value": "MRN-MERGE"}] and body["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{pid}").json() == body
    again = client.request("PATCH", f"/fhir/Patient/{pid}", json={"gender": "male"},
                           headers={"Content-Type": content_type})
    assert again.status_code == 200 and again.json()["meta"]["versionId"] == "2"  # a no-op makes no version


def test_a_json_merge_patch_is_checked_as_a_put_and_must_be_an_object(client):
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    merge = {"Content-Type": "application/merge-patch+json"}
    invalid = client.request("PATCH", f"/fhir/Patient/{pid}", json={"gender": 5, "birthDate": "1990-13"},
                             headers=merge)
    assert invalid.status_code == 400
    assert {e for i in invalid.json()["issue"] for e in i.get("expression", [])} >= {"Patient.gender",
                                                                                     "Patient.birthDate"}
    stale = client.request("PATCH", f"/fhir/Patient/{pid}", json={"gender": "male"},
                           headers={**merge, "If-Match": 'W/"7"'})
    assert stale.status_code == 412
    array = client.request("PATCH", f"/fhir/Patient/{pid}", json=[{"op": "remove", "path": "/gender"}], headers=merge)
    assert array.status_code == 400 and array.json()["issue"][0]["expression"] == ["body"]
    twice = client.request("PATCH", f"/fhir/Patient/{pid}", content=b'{"gender": "male", "gender": "other"}',
                           headers=merge)
    assert twice.status_code == 400
    other_type = client.request("PATCH", f"/fhir/Patient/{pid}", json={"resourceType": "Observation"}, headers=merge)
    assert other_type.status_code == 400
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "1"  # nothing of any of them stored


def test_patch_of_the_audit_trail_is_not_allowed(client):
    r = send_patch(client, "/fhir/AuditEvent/x", [{"op": "remove", "path": "/agent"}])
    assert r.status_code == 405 and "PATCH" not in r.headers["allow"]


def test_conditional_patch(client):
    a = created(client.post("/fhir/Patient", json=patient("MRN-CP1")))["id"]
    created(client.post("/fhir/Patient", json=patient("MRN-CP2", birthDate="1980-05-05")))
    created(client.post("/fhir/Patient", json=patient("MRN-CP3", birthDate="1980-05-05")))
    ops = [{"op": "replace", "path": "/gender", "value": "other"}]
    one = send_patch(client, f"/fhir/Patient?identifier={MRN}|MRN-CP1", ops)
    assert one.status_code == 200 and one.json()["id"] == a and one.json()["gender"] == "other"
    none = send_patch(client, f"/fhir/Patient?identifier={MRN}|MRN-NONE", ops)
    assert none.status_code == 404
    several = send_patch(client, "/fhir/Patient?birthdate=1980-05-05", ops)
    assert several.status_code == 412  # any search criteria of the type select
    by_date = send_patch(client, f"/fhir/Patient?birthdate=1980-05-05&identifier={MRN}|MRN-CP3", ops)
    assert by_date.status_code == 200 and by_date.json()["gender"] == "other"
    assert send_patch(client, "/fhir/Patient?birthdate=1980-13-45", ops).status_code == 400  # malformed: never wider
    assert send_patch(client, "/fhir/Patient?name=Kim", ops).status_code == 400  # not a Patient parameter here
    assert send_patch(client, "/fhir/Patient", ops).status_code == 400  # no criteria at all


def test_patch_is_audited_as_a_patch(client):
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    assert send_patch(client, f"/fhir/Patient/{pid}", [{"op": "replace", "path": "/gender", "value": "male"}]) \
        .status_code == 200
    assert send_patch(client, f"/fhir/Patient/{pid}", [{"op": "test", "path": "/gender", "value": "x"}]) \
        .status_code == 422
    events = client.get("/fhir/AuditEvent?subtype=patch").json()
    outcomes = sorted(e["resource"]["outcome"] for e in events.get("entry", []) if e["search"]["mode"] == "match")
    assert outcomes == ["0", "4"]
    success = next(e["resource"] for e in events["entry"] if e["resource"].get("outcome") == "0")
    assert success["action"] == "U"
    assert any(f"Patient/{pid}/_history/2" in (x.get("what", {}).get("reference") or "")
               for x in success.get("entity", []))


class FhirClientError(Exception):
    def __init__(self, response: Any) -> None:
        super().__init__(f"{response.status_code}: {response.text[:200]}")
        self.response = response


class FhirClient:
    """What a FHIR client library does (fhirpy's `patch`, `history`, `vread`), over a plain httpx client (the
    TestClient is one, on the app; `httpx.Client(base_url=…)` on a server)."""

    def __init__(self, http: Any, base: str) -> None:
        self.http = http
        self.base = base.rstrip("/")

    def _json(self, response: Any) -> dict:
        if response.status_code >= 400:
            raise FhirClientError(response)
        return response.json()

    def create(self, resource: dict) -> dict:
        return self._json(self.http.post(f"{self.base}/{resource['resourceType']}", json=resource,
                                         headers={"Accept": "application/fhir+json"}))

    def patch(self, resource: dict, ops: list[dict]) -> dict:
        etag = f'W/"{resource["meta"]["versionId"]}"'
        return self._json(self.http.patch(f"{self.base}/{resource['resourceType']}/{resource['id']}",
                                          json=ops, headers={**JSON_PATCH, "If-Match": etag}))

    def history(self, resource_type: str, id: str) -> list[dict]:
        page: dict | None = self._json(self.http.get(f"{self.base}/{resource_type}/{id}/_history",
                                                     params={"_count": 1}))
        found = []
        while page is not None:
            found += [e["resource"] for e in page.get("entry", [])]
            following = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
            page = self._json(self.http.get(following)) if following else None
        return found

    def vread(self, resource_type: str, id: str, version: str) -> dict:
        return self._json(self.http.get(f"{self.base}/{resource_type}/{id}/_history/{version}"))


def test_a_client_library_patches_then_reads_history_and_versions(client):
    fhir_client = FhirClient(client, "http://testserver/fhir")
    original = fhir_client.create(patient("MRN-LIB"))
    first = fhir_client.patch(original, [{"op": "add", "path": "/name", "value": [{"family": "Park"}]}])
    second = fhir_client.patch(first, [{"op": "replace", "path": "/name/0/family", "value": "Lee"}])
    with pytest.raises(FhirClientError) as stale:  # the library's stale copy: If-Match fails
        fhir_client.patch(first, [{"op": "remove", "path": "/name"}])
    assert stale.value.response.status_code == 412
    history = fhir_client.history("Patient", original["id"])
    assert [v["meta"]["versionId"] for v in history] == ["3", "2", "1"]
    assert [v.get("name") for v in history] == [[{"family": "Lee"}], [{"family": "Park"}], None]
    assert fhir_client.vread("Patient", original["id"], "2") == first
    assert fhir_client.vread("Patient", original["id"], "3") == second


def binary(ops: Any, content_type: str = "application/json-patch+json") -> dict:
    """A PATCH entry's resource, as R4 carries it in a Bundle: the JSON Patch base64-encoded in a Binary."""
    return {"resourceType": "Binary", "contentType": content_type,
            "data": base64.b64encode(json.dumps(ops).encode()).decode()}


def test_patch_entries_in_a_transaction(client):
    pid = created(client.post("/fhir/Patient", json=patient("MRN-BP1")))["id"]
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": binary([{"op": "replace", "path": "/gender", "value": "male"}]),
         "request": {"method": "PATCH", "url": f"Patient/{pid}", "ifMatch": 'W/"1"'}},
        {"resource": patient("MRN-BP2"), "request": {"method": "POST", "url": "Patient"}}]})
    assert r.status_code == 200, r.text
    first = r.json()["entry"][0]["response"]
    assert first["status"] == "200 OK" and first["etag"] == 'W/"2"'
    assert client.get(f"/fhir/Patient/{pid}").json()["gender"] == "male"
    conditional = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": binary([{"op": "add", "path": "/name", "value": [{"family": "Cho"}]}]),
         "request": {"method": "PATCH", "url": f"Patient?identifier={MRN}|MRN-BP1"}}]})
    assert conditional.status_code == 200, conditional.text
    assert client.get(f"/fhir/Patient/{pid}").json()["name"] == [{"family": "Cho"}]


@pytest.mark.parametrize(("resource", "status", "expression"), [
    (binary([{"op": "test", "path": "/gender", "value": "other"}]), 422, "Bundle.entry[0].resource.data"),
    (binary([{"op": "nonsense"}]), 400, "Bundle.entry[0].resource.data"),
    (binary([{"op": "replace", "path": "/gender", "value": "bogus"}]), 422, "Bundle.entry[0].resource.gender"),
    (binary([], "application/fhir+json"), 400, "Bundle.entry[0].resource.contentType"),
    ({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": "%%%"}, 400,
     "Bundle.entry[0].resource.data"),
    (patient(), 400, "Bundle.entry[0].resource"),
])
def test_a_failing_patch_entry_fails_the_transaction(client, resource, status, expression):
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": resource, "request": {"method": "PATCH", "url": f"Patient/{pid}"}},
        {"resource": patient("MRN-NOT-KEPT"), "request": {"method": "POST", "url": "Patient"}}]})
    assert r.status_code == status, r.text
    assert expression in r.json()["issue"][0]["expression"]
    assert client.get(f"/fhir/Patient?identifier={MRN}|MRN-NOT-KEPT").json()["total"] == 0
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "1"


def test_a_failing_patch_entry_of_a_batch_is_that_entry_s(client):
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": binary([{"op": "test", "path": "/gender", "value": "other"}]),
         "request": {"method": "PATCH", "url": f"Patient/{pid}"}},
        {"resource": binary([{"op": "replace", "path": "/gender", "value": "other"}]),
         "request": {"method": "PATCH", "url": f"Patient/{pid}"}}]})
    assert r.status_code == 200, r.text
    first, second = r.json()["entry"]
    assert first["response"]["status"].startswith("422")
    assert second["response"]["status"] == "200 OK"
    assert client.get(f"/fhir/Patient/{pid}").json()["gender"] == "other"
