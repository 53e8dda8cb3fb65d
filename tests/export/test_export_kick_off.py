"""Bulk Data export v2 over HTTP, on SQLite and PostgreSQL: the Patient-level export, POST kick-offs with a
Parameters body at every level, the `patient` parameter, `_elements`, `Prefer: handling=lenient` and the error
file (entries left out are OperationOutcome lines listed in the manifest's `error`, the export completes)."""

import orjson
import pytest
from sqlalchemy import text

from fhir_mappings.search import SUBSETTED
from service.core.registry import REGISTRY
from service.export import repository, service
from service.export.repository import Selection
from tests.export.test_export import ASYNC, download, export, ids, kick_off, wait_for
from tests.factories import created, enrol, observation

LENIENT = {"Prefer": "respond-async, handling=lenient"}


def parameters(*pairs: tuple[str, str, object]) -> dict:
    """A Parameters resource of (name, value element, value) triples."""
    return {"resourceType": "Parameters", "parameter": [{"name": n, kind: v} for n, kind, v in pairs]}


def post_export(client, url: str, body: dict, headers: dict | None = None) -> tuple[dict, dict]:
    response = client.post(url, json=body, headers=headers or ASYNC)
    assert response.status_code == 202, response.text
    done = wait_for(client, response.headers["Content-Location"])
    assert done.status_code == 200, done.text
    manifest = done.json()
    return manifest, download(client, manifest)


def error_lines(client, manifest: dict) -> list[dict]:
    """The OperationOutcomes of the manifest's error file(s), each checked to be one."""
    lines = []
    for item in manifest["error"]:
        assert item["type"] == "OperationOutcome"
        response = client.get(item["url"])
        assert response.status_code == 200 and response.headers["content-type"].startswith("application/fhir+ndjson")
        found = [orjson.loads(line) for line in response.text.splitlines()]
        assert len(found) == item["count"] and all(o["resourceType"] == "OperationOutcome" for o in found)
        lines += found
    return lines


# -- Patient-level export ----------------------------------------------------------------------------------

def test_patient_export_writes_every_patient_and_their_compartment_not_the_studies(client, two_studies):
    s = two_studies
    manifest, found = export(client, "/fhir/Patient/$export")
    assert manifest["request"].endswith("/fhir/Patient/$export") and manifest["error"] == []
    assert ids(found, "Patient") == {s["shared"], s["a_only"], s["b_only"]}
    assert ids(found, "ResearchSubject") == s["a_subjects"] | s["b_subjects"]
    assert ids(found, "Observation") == s["a_obs"] | s["b_obs"]
    assert ids(found, "AdverseEvent") == s["a_ae"] | s["b_ae"]
    assert "ResearchStudy" not in found  # a study is about no patient: not in the Patient compartment
    # the compartment is the registry's: every exported type that declares the patient it is about
    assert set(service.COMPARTMENT_TYPES) == {t.name for t in REGISTRY if t.exported and t.patient_param}
    assert "ResearchStudy" not in service.COMPARTMENT_TYPES and "Observation" in service.COMPARTMENT_TYPES


def test_patient_export_reads_a_type_whose_rows_all_name_a_patient_without_joining_its_table():
    """Every stored Observation names its patient (measurement.patient_id is NOT NULL): a Patient-level export of
    them is the plain scan of `resource` a system export is, not a join; naming patients joins the typed table."""
    plain = str(repository.content_query(Selection("Observation", compartment=True)))
    assert "measurement" not in plain and plain == str(repository.content_query(Selection("Observation")))
    some = str(repository.content_query(Selection("Observation", compartment=True, patients=("p1", "p2"))))
    assert "measurement.patient_id IN" in some
    patients = str(repository.content_query(Selection("Patient", compartment=True, patients=("p1",))))
    assert "resource.id IN" in patients and "research_subject" not in patients
    study = str(repository.content_query(Selection("ResearchStudy", compartment=True)))
    assert "false" in study.lower() or "0 = 1" in study or "1 != 1" in study


def test_patient_export_refuses_a_type_outside_the_compartment_unless_lenient(client, two_studies):
    response = client.get("/fhir/Patient/$export", params={"_type": "ResearchStudy,Observation"}, headers=ASYNC)
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert issue["expression"] == ["_type"] and "Patient compartment" in issue["diagnostics"]
    manifest, found = export_lenient(client, "/fhir/Patient/$export", _type="ResearchStudy,Observation,Condition")
    assert list(found) == ["Observation"]
    warnings = error_lines(client, manifest)
    assert [w["issue"][0]["severity"] for w in warnings] == ["warning", "warning"]
    assert [w["issue"][0]["expression"] for w in warnings] == [["_type"], ["_type"]]
    said = " ".join(w["issue"][0]["diagnostics"] for w in warnings)
    assert "ResearchStudy is not in the Patient compartment" in said and "Condition can't be exported" in said


def export_lenient(client, url: str, **params) -> tuple[dict, dict]:
    response = client.get(url, params=params, headers=LENIENT)
    assert response.status_code == 202, response.text
    done = wait_for(client, response.headers["Content-Location"])
    assert done.status_code == 200, done.text
    return done.json(), download(client, done.json())


def test_lenient_kick_off_leaves_out_unknown_parameters_with_a_warning(client, two_studies):
    manifest, found = export_lenient(client, "/fhir/$export", _type="Patient", colour="red",
                                     includeAssociatedData="LatestProvenanceResources")
    assert list(found) == ["Patient"]
    warnings = error_lines(client, manifest)
    assert sorted(w["issue"][0]["expression"][0] for w in warnings) == ["colour", "includeAssociatedData"]
    # a malformed value is a 400 all the same
    response = client.get("/fhir/$export", params={"_since": "yesterday"}, headers=LENIENT)
    assert response.status_code == 400 and response.json()["issue"][0]["expression"] == ["_since"]


def test_a_refused_kick_off_names_every_offending_parameter_at_once(client, two_studies):
    response = client.get("/fhir/Patient/$export", headers=ASYNC, params=[
        ("_type", "Condition,ResearchStudy,Observation"), ("colour", "red"), ("_since", "yesterday"),
        ("_elements", "Observation.code.coding"), ("_typeFilter", "Observation?date=2024-13-45"),
        ("patient", "Observation/1")])
    assert response.status_code == 400
    issues = response.json()["issue"]
    assert [i["expression"] for i in issues] == [["_type"], ["_type"], ["colour"], ["_since"], ["patient"],
                                                 ["_typeFilter"], ["_elements"]]
    assert [i["code"] for i in issues] == ["not-supported", "not-supported", "not-supported", "invalid", "invalid",
                                           "invalid", "not-supported"]


# -- POST kick-off ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("level", ["system", "patient", "group"])
def test_post_kick_off_reads_a_parameters_body_at_every_level(client, two_studies, level):
    s = two_studies
    url = {"system": "/fhir/$export", "patient": "/fhir/Patient/$export",
           "group": f"/fhir/Group/{s['A']}/$export"}[level]
    manifest, found = post_export(client, url, parameters(
        ("_type", "valueString", "Observation"), ("_type", "valueString", "Patient"),
        ("_outputFormat", "valueString", "application/fhir+ndjson"),
        ("_since", "valueInstant", "2000-01-01T00:00:00Z"),
        ("_typeFilter", "valueString", "Observation?code=EASI")))
    assert manifest["request"].endswith(url.replace("$", "%24")) or manifest["request"].endswith(url)
    assert set(found) == {"Observation", "Patient"}
    easi = {o["id"] for o in found["Observation"]}
    assert all(o["code"]["coding"][0]["code"] == "EASI" for o in found["Observation"])
    assert easi <= (s["a_obs"] | s["b_obs"]) and len(easi) == (2 if level == "group" else 4)
    # the same request by GET gives the same files
    _, by_get = export(client, url, _type="Observation,Patient", _typeFilter="Observation?code=EASI",
                       _since="2000-01-01T00:00:00Z")
    assert {t: ids(by_get, t) for t in by_get} == {t: ids(found, t) for t in found}


def test_post_kick_off_limits_a_group_or_patient_export_to_the_patients_named(client, two_studies):
    s = two_studies
    body = parameters(("patient", "valueReference", {"reference": f"Patient/{s['shared']}"}))
    _, found = post_export(client, f"/fhir/Group/{s['B']}/$export", body)
    assert ids(found, "Patient") == {s["shared"]}
    assert ids(found, "Observation") == s["b_obs"] - {o for o in s["b_obs"] if o in _obs_of(client, s["b_only"])}
    assert ids(found, "ResearchStudy") == {s["B"]}  # a study is in no patient's compartment: not narrowed
    assert ids(found, "AdverseEvent") == s["b_ae"]
    _, found = post_export(client, "/fhir/Patient/$export", parameters(
        ("patient", "valueReference", {"reference": f"Patient/{s['b_only']}"}),
        ("patient", "valueReference", {"reference": f"http://testserver/fhir/Patient/{s['a_only']}"})))
    assert ids(found, "Patient") == {s["b_only"], s["a_only"]}
    assert ids(found, "Observation") == _obs_of(client, s["b_only"]) | _obs_of(client, s["a_only"])
    assert "AdverseEvent" not in found  # both events are the shared patient's
    # by GET too
    _, found = export(client, "/fhir/Patient/$export", patient=f"Patient/{s['a_only']}", _type="Patient")
    assert ids(found, "Patient") == {s["a_only"]}


def _obs_of(client, patient_id: str) -> set[str]:
    bundle = client.get("/fhir/Observation", params={"subject": f"Patient/{patient_id}", "_count": 100}).json()
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def test_a_patient_outside_the_group_or_unknown_is_a_400_or_a_warning_when_lenient(client, two_studies):
    s = two_studies
    for url, patient in ((f"/fhir/Group/{s['A']}/$export", s["b_only"]), ("/fhir/Patient/$export", "nobody")):
        body = parameters(("patient", "valueReference", {"reference": f"Patient/{patient}"}))
        response = client.post(url, json=body, headers=ASYNC)
        assert response.status_code == 400, response.text
        assert response.json()["issue"][0]["expression"] == ["patient"]
        assert f"Patient/{patient}" in response.json()["issue"][0]["diagnostics"]
    body = parameters(("patient", "valueReference", {"reference": f"Patient/{s['b_only']}"}),
                      ("patient", "valueReference", {"reference": f"Patient/{s['a_only']}"}))
    manifest, found = post_export(client, f"/fhir/Group/{s['A']}/$export", body, LENIENT)
    assert ids(found, "Patient") == {s["a_only"]}
    [warning] = error_lines(client, manifest)
    assert warning["issue"][0]["expression"] == ["patient"] and s["b_only"] in warning["issue"][0]["diagnostics"]
    # none left: refused even when lenient (the export would otherwise widen to every member)
    only_b = parameters(("patient", "valueReference", {"reference": f"Patient/{s['b_only']}"}))
    assert client.post(f"/fhir/Group/{s['A']}/$export", json=only_b, headers=LENIENT).status_code == 400
    # a system export has no patients to limit
    response = client.post("/fhir/$export", json=only_b, headers=ASYNC)
    assert response.status_code == 400 and response.json()["issue"][0]["expression"] == ["patient"]


@pytest.mark.parametrize("body,expressions", [
    ({"resourceType": "Patient"}, ["resourceType"]),
    ({"resourceType": "Parameters", "parameter": {"name": "_type"}}, ["Parameters.parameter"]),
    (parameters(("_type", "valueInteger", 3), ("_since", "valueString", "2024-01-01")),
     ["Parameters.parameter[0].valueInteger", "Parameters.parameter[1].valueString"]),
    ({"resourceType": "Parameters", "parameter": [{"valueString": "x"}, {"name": "patient", "valueReference": {}}]},
     ["Parameters.parameter[0].name", "Parameters.parameter[1].valueReference.reference"]),
    (parameters(("_since", "valueInstant", "yesterday")), ["_since"]),  # the same checks as a GET
    (parameters(("_type", "valueString", "Condition")), ["_type"]),
    (parameters(("_elements", "valueString", "Observation.code.coding")), ["_elements"]),
    (parameters(("colour", "valueString", "red")), ["colour"]),
])
def test_post_kick_off_errors_name_every_offending_element(client, two_studies, body, expressions):
    for url in ("/fhir/$export", "/fhir/Patient/$export", f"/fhir/Group/{two_studies['A']}/$export"):
        response = client.post(url, json=body, headers=ASYNC)
        assert response.status_code == 400, response.text
        found = response.json()
        assert found["resourceType"] == "OperationOutcome"
        assert [e for i in found["issue"] for e in i.get("expression", [])] == expressions
    no_prefer = client.post("/fhir/$export", json=parameters(("_type", "valueString", "Patient")))
    assert no_prefer.status_code == 400 and no_prefer.json()["issue"][0]["expression"] == ["Prefer"]


# -- _elements ---------------------------------------------------------------------------------------------

def test_elements_keep_the_listed_top_level_elements_and_tag_subsetted(client, two_studies):
    s = two_studies
    manifest, found = export(client, f"/fhir/Group/{s['A']}/$export", _elements="Observation.code,status",
                             _type="Observation,Patient,ResearchSubject")
    for o in found["Observation"]:
        assert set(o) == {"resourceType", "id", "meta", "code", "status"}  # status and code are also mandatory
        assert SUBSETTED in o["meta"]["tag"] and o["meta"]["versionId"] == "1"
    assert ids(found, "Observation") == s["a_obs"]
    for r in found["ResearchSubject"]:  # `status` applies to it; its mandatory study and individual stay
        assert set(r) == {"resourceType", "id", "meta", "status", "study", "individual"}
        assert SUBSETTED in r["meta"]["tag"]
    for p in found["Patient"]:  # nothing listed applies to a Patient: written whole, not tagged
        assert "gender" in p and SUBSETTED not in (p.get("meta", {}).get("tag") or [])
    # a type-prefixed name applies to its type only; a bare one to every type that has it
    _, found = export(client, "/fhir/$export", _elements="Observation.valueQuantity,Observation.subject,id",
                      _type="Observation,AdverseEvent")
    assert all(set(o) == {"resourceType", "id", "meta", "code", "status", "valueQuantity", "subject"}
               for o in found["Observation"])
    assert all(SUBSETTED in e["meta"]["tag"] and "event" not in e for e in found["AdverseEvent"])


def test_elements_by_post_and_unknown_elements_when_lenient(client, two_studies):
    manifest, found = post_export(client, "/fhir/Patient/$export", parameters(
        ("_type", "valueString", "Patient"), ("_elements", "valueString", "gender,Patient.colour")), LENIENT)
    assert all(set(p) == {"resourceType", "id", "meta", "gender"} for p in found["Patient"])
    [warning] = error_lines(client, manifest)
    assert warning["issue"][0]["expression"] == ["_elements"] and "colour" in warning["issue"][0]["diagnostics"]
    response = client.get("/fhir/$export", params={"_elements": "Patient.colour"}, headers=ASYNC)
    assert response.status_code == 400 and response.json()["issue"][0]["expression"] == ["_elements"]
    response = client.get("/fhir/$export", params={"_type": "Patient", "_elements": "Observation.code"},
                          headers=ASYNC)
    assert response.status_code == 400 and "does not include Observation" in response.json()["issue"][0]["diagnostics"]


# -- the error file -------------------------------------------------------------------------------------------

def test_entries_that_cannot_be_written_go_to_the_error_file_and_the_export_completes(client, engine, two_studies):
    s = two_studies
    broken, spread, *_ = sorted(s["a_obs"])
    with engine.begin() as conn:
        conn.execute(text("UPDATE resource SET content = :c WHERE resource_type = 'Observation' AND id = :id"),
                     {"c": '{"resourceType": "Observation",\n"id": "' + broken + '", "status": ', "id": broken})
        stored = conn.execute(text("SELECT content FROM resource WHERE resource_type = 'Observation' AND id = :id"),
                              {"id": spread}).scalar_one()
        pretty = orjson.dumps(orjson.loads(stored), option=orjson.OPT_INDENT_2).decode()
        conn.execute(text("UPDATE resource SET content = :c WHERE resource_type = 'Observation' AND id = :id"),
                     {"c": pretty, "id": spread})
    manifest, found = export(client, f"/fhir/Group/{s['A']}/$export", _type="Observation,Patient")
    assert ids(found, "Observation") == s["a_obs"] - {broken}  # the one spread over lines is written on one
    assert {o["type"]: o["count"] for o in manifest["output"]} == {"Patient": 2, "Observation": 2}
    [failure] = error_lines(client, manifest)
    issue = failure["issue"][0]
    assert issue["severity"] == "error" and issue["expression"] == ["Observation"]
    assert issue["diagnostics"] == f"Observation/{broken} was not exported: its stored JSON is not valid"
    assert manifest["error"][0]["url"].endswith("/OperationOutcome.ndjson")
    # with _elements (each entry parsed) the broken entry is reported the same way
    manifest, found = export(client, f"/fhir/Group/{s['A']}/$export", _type="Observation", _elements="code")
    assert ids(found, "Observation") == s["a_obs"] - {broken}
    assert [f["issue"][0]["expression"] for f in error_lines(client, manifest)] == [["Observation"]]


def test_a_new_observation_lands_in_the_next_patient_export(client):
    a = enrol(client)
    new = created(client.post("/fhir/Observation", json=observation(a["patient"], "IGA", value=2)))["id"]
    status = kick_off(client, "/fhir/Patient/$export")
    manifest = wait_for(client, status).json()
    assert new in ids(download(client, manifest), "Observation")


def test_kick_offs_are_audited_with_their_outcome(client, two_studies):
    accepted = client.post("/fhir/Patient/$export", json=parameters(("_type", "valueString", "Patient")),
                           headers=ASYNC)
    job = accepted.headers["Content-Location"].rsplit("/", 1)[1]
    refused = client.post("/fhir/Patient/$export", json=parameters(("_type", "valueString", "ResearchStudy")),
                          headers=ASYNC)
    assert refused.status_code == 400
    bundle = client.get("/fhir/AuditEvent", params={
        "subtype": "operation", "_count": 100}).json()
    export = {"system": "https://trial-fhir.org/CodeSystem/operation", "code": "$export"}
    events = [e["resource"] for e in bundle["entry"] if export in e["resource"]["subtype"]]
    assert len(events) == 2
    done = [e for e in events if {"reference": f"ExportJob/{job}"} in [x["what"] for x in e["entity"]]]
    assert len(done) == 1 and done[0]["outcome"] == "0"
    [failed] = [e for e in events if e is not done[0]]
    assert failed["outcome"] == "4" and failed["outcomeDesc"] == "400 Bad Request"
