"""Official HL7 R4 examples and Synthea bundles (../shared/fhir-examples): read correctly where they fit the
trial's rules, rejected with a clear OperationOutcome (naming the element) where they don't, nothing written
by a rejected Bundle, and every resource the server returns valid FHIR R4 (fhir.resources R4B)."""

import copy
import json

import pytest
from sqlalchemy import func, select

import service.tables  # noqa: F401  (every table in SQLModel.metadata)
from fhir_mappings import fhir
from service.adverse_event.models import AdverseEventRecord
from service.observation.models import MeasurementRecord
from service.trial.models import SubjectRecord
from tests.assertions import rejected, table_counts
from tests.factories import created, study, subject

MODELS = {"Patient": fhir.Patient, "ResearchStudy": fhir.ResearchStudy, "ResearchSubject": fhir.ResearchSubject,
          "Observation": fhir.Observation, "AdverseEvent": fhir.AdverseEvent, "Bundle": fhir.Bundle,
          "OperationOutcome": fhir.OperationOutcome}
SYNTHEA_ID = "https://github.com/synthetichealth/synthea"


def valid(response, status: int | tuple[int, ...]) -> dict:
    """The response has `status`, is FHIR JSON, and its body validates as FHIR R4."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, response.text[:2000]
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    MODELS[body["resourceType"]].model_validate(body)
    return body






def without_meta(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k != "meta"}


def assert_kept_everything_sent(returned: dict, sent: dict) -> None:
    """Every element sent comes back unchanged (the server adds only id and meta.versionId/lastUpdated)."""
    for key, value in sent.items():
        if key == "meta":
            assert {k: v for k, v in returned["meta"].items() if k not in ("versionId", "lastUpdated")} == \
                {k: v for k, v in value.items() if k not in ("versionId", "lastUpdated")}
        elif key != "id":
            assert returned.get(key) == value, key


@pytest.fixture
def hl7(fhir_examples):
    def load(name: str) -> dict:
        return json.loads((fhir_examples / "hl7-r4" / f"{name}.json").read_text())
    return load


@pytest.fixture
def synthea(fhir_examples):
    paths = sorted((fhir_examples / "synthea").glob("*.json"))
    assert len(paths) == 2
    return [json.loads(p.read_text()) for p in paths]


@pytest.fixture
def example_enrolment(client, hl7):
    """Patient/example, ResearchStudy/example and ResearchSubject/example, PUT with their own ids."""
    for name in ("Patient-example", "ResearchStudy-example", "ResearchSubject-example"):
        resource = hl7(name)
        valid(client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource), 201)
    return hl7


def test_patient_example_round_trips_with_every_element(client, hl7):
    sent = hl7("Patient-example")
    created_ = valid(client.put("/fhir/Patient/example", json=sent), 201)
    assert without_meta(created_) == sent
    read = valid(client.get("/fhir/Patient/example"), 200)
    assert without_meta(read) == sent
    assert read["meta"]["versionId"] == "1"
    # POSTed, the server gives its own id and keeps everything else
    posted = copy.deepcopy(sent)
    posted.pop("id")
    posted["identifier"][0]["value"] = "12345-copy"  # identifiers are unique per type
    again = valid(client.post("/fhir/Patient", json=posted), 201)
    assert again["id"] != "example"
    assert {k: v for k, v in without_meta(again).items() if k != "id"} == posted
    found = valid(client.get("/fhir/Patient", params={"identifier": "urn:oid:1.2.36.146.595.217.0.1|12345"}), 200)
    assert [e["resource"]["id"] for e in found["entry"] if e["search"]["mode"] == "match"] == ["example"]


def test_research_study_example_is_accepted(client, engine, hl7):
    sent = hl7("ResearchStudy-example")
    stored = valid(client.put("/fhir/ResearchStudy/example", json=sent), 201)
    assert_kept_everything_sent(stored, sent)
    assert_kept_everything_sent(valid(client.get("/fhir/ResearchStudy/example"), 200), sent)


def typed_row(engine, model, id: str):
    """The typed row (column -> value) the store keeps for resource `id` in `model`'s table."""
    table = model.__table__
    with engine.connect() as conn:
        return conn.execute(select(table).where(table.c.id == id)).mappings().one()


def test_research_subject_example_is_accepted_after_its_patient_and_study(client, engine, hl7):
    sent = hl7("ResearchSubject-example")
    # before its patient and study exist, it is rejected, naming the reference
    rejected(client.put("/fhir/ResearchSubject/example", json=sent), 422, "ResearchSubject.study")
    for name in ("Patient-example", "ResearchStudy-example"):
        resource = hl7(name)
        valid(client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource), 201)
    stored = valid(client.put("/fhir/ResearchSubject/example", json=sent), 201)
    assert without_meta(stored) == sent
    assert without_meta(valid(client.get("/fhir/ResearchSubject/example"), 200)) == sent
    enrolment = typed_row(engine, SubjectRecord, "example")
    assert (enrolment["study_id"], enrolment["patient_id"], enrolment["status"], enrolment["day0"]) == \
        ("example", "example", "candidate", None)


def test_adverse_event_example_is_read_as_non_serious(client, engine, example_enrolment):
    sent = example_enrolment("AdverseEvent-example")
    stored = valid(client.put("/fhir/AdverseEvent/example", json=sent), 201)
    assert without_meta(stored) == sent
    assert without_meta(valid(client.get("/fhir/AdverseEvent/example"), 200)) == sent
    event = typed_row(engine, AdverseEventRecord, "example")
    assert event["seriousness"] == "non-serious"  # the example codes it "Non-serious"
    assert (event["study_id"], event["subject_id"], event["patient_id"]) == ("example", "example", "example")
    assert (event["severity"], event["actuality"], event["related"], event["caused_withdrawal"]) == \
        ("mild", "actual", False, False)
    assert (event["event_system"], event["event_code"]) == ("http://snomed.info/sct", "304386008")
    assert event["onset"] is not None


def test_adverse_event_example_for_a_patient_not_enrolled_is_rejected(client, engine, hl7):
    patient = hl7("Patient-example")
    valid(client.put("/fhir/Patient/example", json=patient), 201)
    before = table_counts(engine)
    rejected(client.put("/fhir/AdverseEvent/example", json=hl7("AdverseEvent-example")), 422, "AdverseEvent.subject")
    assert table_counts(engine) == before


def test_glucose_observation_f001_is_rejected_at_its_code(client, engine, example_enrolment):
    before = table_counts(engine)
    sent = example_enrolment("Observation-f001")
    # as published, its subject (Patient/f001) is not on this server
    rejected(client.put("/fhir/Observation/f001", json=sent), 422, "Observation.subject")
    # for an enrolled patient, glucose is not a measure of the trial
    sent["subject"] = {"reference": "Patient/example"}
    outcome = rejected(client.put("/fhir/Observation/f001", json=sent), 422, "Observation.code.coding",
                       "code-invalid")
    assert "15074-8" in outcome["issue"][0]["diagnostics"]
    assert table_counts(engine) == before


def test_body_weight_observation_example_is_rejected(client, engine, example_enrolment):
    before = table_counts(engine)
    sent = example_enrolment("Observation-example")
    sent["subject"] = {"reference": "Patient/example"}
    rejected(client.put("/fhir/Observation/example", json=sent), 422, "Observation.code.coding", "code-invalid")
    sent.pop("id")
    rejected(client.post("/fhir/Observation", json=sent), 422, "Observation.code.coding", "code-invalid")
    assert table_counts(engine) == before


def bundle_101_observations(hl7) -> list[dict]:
    return [e["resource"] for e in hl7("Bundle-101")["entry"] if e["resource"]["resourceType"] == "Observation"]


def test_bundle_101_eosinophils_are_accepted_unscheduled(client, engine, example_enrolment):
    accepted = {}
    for resource in bundle_101_observations(example_enrolment):
        code = resource["code"]["coding"][0]["code"]
        resource["subject"] = {"reference": "Patient/example"}  # was Patient/pat2, not on this server
        sent = copy.deepcopy(resource)
        response = client.put(f"/fhir/Observation/{resource['id']}", json=resource)
        if code in ("711-2", "713-8"):
            stored = valid(response, 201)
            assert without_meta(stored) == sent
            accepted[code] = resource["id"]
        else:
            rejected(response, 422, "Observation.code.coding", "code-invalid")
    assert set(accepted) == {"711-2", "713-8"}
    with engine.connect() as conn:
        rows = {r["code"]: r for r in conn.execute(select(MeasurementRecord.__table__)).mappings()}
    assert set(rows) == {"711-2", "713-8"}
    absolute, percent = rows["711-2"], rows["713-8"]
    assert (absolute["measure"], absolute["value"], absolute["unit"]) == ("EOSINOPHILS", pytest.approx(0.92), "10*3/uL")
    assert (absolute["original_value"], absolute["original_unit"]) == ("0.92", "10*9/L")
    assert (percent["measure"], percent["value"], percent["unit"]) == ("EOSINOPHILS-PCT", pytest.approx(20), "%")
    for row in (absolute, percent):  # no effective date, and no day 0 for the example subject
        assert (row["subject_id"], row["study_day"], row["visit"], row["effective"]) == \
            ("example", None, "unscheduled", None)
    # readable and searchable as sent
    for code, rid in accepted.items():
        assert valid(client.get(f"/fhir/Observation/{rid}"), 200)["code"]["coding"][0]["code"] == code


def test_bundle_101_eosinophils_in_a_transaction(client, engine, example_enrolment):
    """The two trial results of Bundle-101 sent as one transaction: accepted; with a third one, all rejected."""
    observations = {o["code"]["coding"][0]["code"]: o for o in bundle_101_observations(example_enrolment)}
    for o in observations.values():
        o["subject"] = {"reference": "Patient/example"}
    entries = [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{i}", "resource": observations[code],
                "request": {"method": "POST", "url": "Observation"}} for i, code in enumerate(("711-2", "713-8"))]
    before = table_counts(engine)
    bad = {"resourceType": "Bundle", "type": "transaction", "entry": entries + [
        {"resource": observations["718-7"], "request": {"method": "POST", "url": "Observation"}}]}
    rejected(client.post("/fhir", json=bad), 422, "Bundle.entry[2].resource.code.coding")
    assert table_counts(engine) == before
    good = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    result = valid(client.post("/fhir", json=good), 200)
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created", "201 Created"]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(MeasurementRecord.__table__)).scalar_one() == 2


def test_official_transaction_example_is_rejected_whole(client, engine, hl7):
    """Every failing entry is named (issue 11 §3), in entry order: the PUT with If-Match W/"2" on Patient/123a,
    which does not exist here (412), the POST ValueSet/$lookup (not supported here) and the GET of Patient/12334."""
    before = table_counts(engine)
    outcome = rejected(client.post("/fhir", json=hl7("Bundle-bundle-transaction")), 400,
                       "Bundle.entry[4].request.ifMatch")
    assert [i["expression"] for i in outcome["issue"]] == [["Bundle.entry[4].request.ifMatch"],
                                                           ["Bundle.entry[7].resource.resourceType"],
                                                           ["Bundle.entry[9].id"]]
    assert "Parameters" in outcome["issue"][1]["diagnostics"]
    assert table_counts(engine) == before
    found = valid(client.get("/fhir/Patient"), 200)
    assert [e for e in found.get("entry", []) if e["search"]["mode"] == "match"] == []


def test_official_transaction_example_without_its_operation_entry(client, engine, hl7):
    """With the $lookup entry left out, the two other failures are named: the PUT with If-Match W/"2" on
    Patient/123a, which does not exist here (412), and the GET of Patient/12334 (404); nothing is written."""
    body = hl7("Bundle-bundle-transaction")
    body["entry"] = [e for e in body["entry"] if e["request"]["url"] != "ValueSet/$lookup"]
    before = table_counts(engine)
    outcome = rejected(client.post("/fhir", json=body), 400, "Bundle.entry[4].request.ifMatch", "conflict")
    assert [(i["code"], i["expression"]) for i in outcome["issue"]] == [
        ("conflict", ["Bundle.entry[4].request.ifMatch"]), ("not-found", ["Bundle.entry[8].id"])]
    assert table_counts(engine) == before


@pytest.mark.parametrize("index", [0, 1])
def test_synthea_bundle_is_rejected_cleanly_then_its_patient_and_observations_are_read(client, engine, synthea,
                                                                                       index):
    body = synthea[index]
    before = table_counts(engine)
    # every entry but the Patient is named: Encounters and Observations of a patient enrolled nowhere, and the
    # types this server does not store (TRIAL_FHIR_OUT_OF_SCOPE=reject; tests/bundle/test_out_of_scope.py)
    outcome = rejected(client.post("/fhir", json=body), 400, "Bundle.entry[1].resource.subject")
    assert "not enrolled in any study" in outcome["issue"][0]["diagnostics"]
    assert any("'Immunization' is not supported" in i["diagnostics"] for i in outcome["issue"])
    assert table_counts(engine) == before

    patient = next(e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "Patient")
    synthea_id = patient["id"]
    sent = copy.deepcopy(patient)
    stored = valid(client.post("/fhir/Patient", json=patient), 201)
    assert {k: v for k, v in without_meta(stored).items() if k != "id"} == \
        {k: v for k, v in without_meta(sent).items() if k != "id"}
    assert stored["meta"]["profile"] == sent["meta"]["profile"]
    # an EHR retrying the same Patient with If-None-Exist gets the same one back
    again = valid(client.post("/fhir/Patient", json=patient,
                              headers={"If-None-Exist": f"identifier={SYNTHEA_ID}|{synthea_id}"}), 200)
    assert again["id"] == stored["id"]

    study_id = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    enrolment = subject(study_id, "x", day0="2019-07-01")
    enrolment["individual"] = {"reference": f"Patient?identifier={SYNTHEA_ID}|{synthea_id}"}
    valid(client.post("/fhir/ResearchSubject", json=enrolment), 201)

    observations = [e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert observations
    entries = []
    for obs in observations:
        obs = copy.deepcopy(obs)
        obs.pop("id")
        obs["subject"] = {"reference": f"Patient?identifier={SYNTHEA_ID}|{synthea_id}"}
        entries.append({"resource": obs, "request": {"method": "POST", "url": "Observation"}})
    before = table_counts(engine)
    result = valid(client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries}), 200)
    assert len(result["entry"]) == len(observations)
    for i, item in enumerate(result["entry"]):
        assert item["response"]["status"].startswith("422"), item
        oo = item["response"]["outcome"]
        fhir.OperationOutcome.model_validate(oo)
        assert oo["issue"][0]["expression"] == [f"Bundle.entry[{i}].resource.code.coding"]
        assert oo["issue"][0]["code"] == "code-invalid"
    assert table_counts(engine) == before
    # one of them sent alone: the same 422
    rejected(client.post("/fhir/Observation", json=entries[0]["resource"]), 422, "Observation.code.coding")
