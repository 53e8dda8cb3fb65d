"""De-identified views, pure: every rule of service/deid/deidentify.py on plain resources, no database."""

from datetime import date

import orjson
import pytest

from fhir_mappings import fhir
from service.deid.deidentify import (
    AGE_EXTENSION,
    DATA_ABSENT_REASON,
    V3_OBSERVATION_VALUE,
    Deidentifier,
    patient_of,
    shift_date,
)
from service.errors import BadRequest

SECRET = b"s" * 32
TODAY = date(2026, 11, 29)
PID = "7f1c2a9e-0d3b-4b6e-9c51-2f8e1a7d4c30"
OTHER = "0b9a1c6e-3e55-4a3e-9a7e-4e7d7c2f1a10"


@pytest.fixture
def deid() -> Deidentifier:
    return Deidentifier(SECRET, today=TODAY)


def a_patient(**extra) -> dict:
    return {
        "resourceType": "Patient", "id": PID,
        "meta": {"versionId": "3", "lastUpdated": "2024-01-10T09:00:00.000Z",
                 "tag": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST"}]},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Jane Doe</div>"},
        "identifier": [{"system": "urn:oid:1.2.410.200001.1", "value": "MRN-123"}],
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "telecom": [{"system": "phone", "value": "555-0100"}],
        "address": [{"line": ["1 Main St"], "city": "Seoul", "postalCode": "04524"}],
        "photo": [{"contentType": "image/png", "data": "iVBORw0KGgo="}],
        "contact": [{"name": {"family": "Doe"}}],
        "generalPractitioner": [{"reference": "Practitioner/p1", "display": "Dr Who"}],
        "link": [{"other": {"reference": f"Patient/{OTHER}"}, "type": "seealso"}],
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": "Smith"},
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": "F"}],
        "gender": "female", "birthDate": "1961-07-14", "active": True,
        **extra}


def an_observation(**extra) -> dict:
    return {
        "resourceType": "Observation", "id": "obs-1", "meta": {"versionId": "1", "lastUpdated": "2024-02-07T01:00:00Z"},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">EASI 12 Jane</div>"},
        "identifier": [{"system": "https://site.example/obs", "value": "A-1"}],
        "status": "final", "code": {"coding": [{"system": "https://trial-fhir.org/CodeSystem/ad-scores",
                                                "code": "EASI"}]},
        "subject": {"reference": f"Patient/{PID}", "display": "Jane Doe",
                    "identifier": {"system": "urn:oid:1.2.410.200001.1", "value": "MRN-123"}},
        "effectiveDateTime": "2024-02-07T15:30:00+09:00", "issued": "2024-02-07T07:00:00.123Z",
        "valueQuantity": {"value": 12.0, "unit": "{score}"},
        "note": [{"text": "Jane said her mother Ann Doe had eczema"}],
        "component": [{"code": {"text": "x"}, "valueDateTime": "2024-02-01"}],
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy",
                       "valueReference": {"reference": "ResearchStudy/s1"}},
                      {"url": "https://example.org/when", "valueDateTime": "2024-02"}],
        **extra}


def codes(resource: dict) -> set[str]:
    return {s["code"] for s in resource["meta"].get("security", []) if s["system"] == V3_OBSERVATION_VALUE}


# -- pseudonyms and offsets -----------------------------------------------------------------------------------

def test_pseudonym_is_a_stable_valid_fhir_id_keyed_by_the_secret(deid):
    p = deid.pseudonym(PID)
    assert p == deid.pseudonym(PID) == Deidentifier(SECRET).pseudonym(PID)
    assert p.startswith("pseudo-") and len(p) == 7 + 32 and len(p) <= 64
    assert p != deid.pseudonym(OTHER)
    assert p != Deidentifier(b"another secret").pseudonym(PID)
    assert PID not in p


def test_shift_is_per_patient_non_zero_bounded_and_keyed(deid):
    shifts = {deid.shift_days(f"patient-{i}") for i in range(500)}
    assert 0 not in shifts
    assert all(-180 <= s <= 180 for s in shifts)
    assert len(shifts) > 100 and min(shifts) < 0 < max(shifts)
    assert deid.shift_days(PID) == Deidentifier(SECRET).shift_days(PID)
    assert all(-7 <= Deidentifier(SECRET, max_shift_days=7).shift_days(f"p{i}") <= 7 for i in range(50))
    assert Deidentifier(SECRET, shift_dates=False).shift_days(PID) == 0


# -- Patient ----------------------------------------------------------------------------------------------------

def test_patient_keeps_no_direct_identifier(deid):
    out = deid.resource(a_patient(), PID)
    assert out["id"] == deid.pseudonym(PID)
    assert set(out) == {"resourceType", "id", "meta", "gender", "birthDate", "active", "extension"}
    assert out["extension"] == [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                                 "valueCode": "F"}]
    assert out["birthDate"] == "1961"
    text = orjson.dumps(out).decode()
    for leaked in ("Doe", "Jane", "MRN-123", "555-0100", "Seoul", "04524", "Smith", PID, OTHER, "Dr Who"):
        assert leaked not in text
    fhir.Patient.model_validate(out)


def test_patient_over_89_is_90_plus_without_a_birth_year(deid):
    assert deid.resource(a_patient(birthDate="1937-01-01"), PID)["birthDate"] == "1937"  # 89 this year
    out = deid.resource(a_patient(birthDate="1936-12-31"), PID)  # 89 today, but born 90 calendar years ago
    assert "birthDate" not in out
    assert out["_birthDate"] == {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "masked"}]}
    assert {"url": AGE_EXTENSION, "valueString": "90+"} in out["extension"]
    fhir.Patient.model_validate(out)
    assert "birthDate" not in deid.resource(a_patient(birthDate="1930"), PID)
    assert deid.resource(a_patient(birthDate="1937-12"), PID)["birthDate"] == "1937"


def test_deceased_date_time_is_reduced_to_its_year(deid):
    assert deid.resource(a_patient(deceasedDateTime="2024-03-05T10:00:00Z"), PID)["deceasedDateTime"] == "2024"


def test_meta_keeps_version_drops_last_updated_and_gets_security_labels(deid):
    out = deid.resource(a_patient(), PID)
    assert out["meta"]["versionId"] == "3"
    assert "lastUpdated" not in out["meta"]
    assert out["meta"]["tag"][0]["code"] == "HTEST"
    assert codes(out) == {"PSEUDED", "REDACTED"}
    again = deid.resource({**a_patient(), "meta": out["meta"]}, PID)
    assert len(again["meta"]["security"]) == 2  # labels are not repeated


# -- every resource -------------------------------------------------------------------------------------------

def test_observation_loses_narrative_notes_identifiers_and_names_the_pseudonym(deid):
    out = deid.resource(an_observation(), patient_of(an_observation()))
    for gone in ("text", "note", "identifier"):
        assert gone not in out
    assert out["subject"] == {"reference": f"Patient/{deid.pseudonym(PID)}"}
    assert out["extension"][0]["valueReference"] == {"reference": "ResearchStudy/s1"}
    assert out["code"] == an_observation()["code"] and out["valueQuantity"] == an_observation()["valueQuantity"]
    assert codes(out) == {"PSEUDED", "REDACTED"}
    assert PID not in orjson.dumps(out).decode()
    fhir.Observation.model_validate(out)


def test_dates_move_by_the_patients_offset_keeping_time_zone_and_precision(deid):
    shift = deid.shift_days(PID)
    out = deid.resource(an_observation(), PID)
    assert out["effectiveDateTime"] == shift_date("2024-02-07", shift) + "T15:30:00+09:00"
    assert out["issued"] == shift_date("2024-02-07", shift) + "T07:00:00.123Z"
    assert out["component"][0]["valueDateTime"] == shift_date("2024-02-01", shift)
    assert out["extension"][1]["valueDateTime"] == "2024"  # year-month: reduced to the year
    assert out["code"]["coding"][0]["code"] == "EASI"
    assert Deidentifier(SECRET, shift_dates=False).resource(an_observation(), PID)["effectiveDateTime"] == \
        "2024-02-07T15:30:00+09:00"


def test_shift_date_rules():
    assert shift_date("2024-02-28", 2) == "2024-03-01"
    assert shift_date("2024-01-01T00:00:00Z", -1) == "2023-12-31T00:00:00Z"
    assert shift_date("2024", 40) == "2024"
    assert shift_date("2024-05", 40) == "2024"
    assert shift_date("2024-05", 0) == "2024-05"
    assert shift_date("final", 3) == "final"
    assert shift_date("2024-02-30", 3) == "2024"  # looks like a date, is none: only its year is safe


def test_intervals_between_a_patients_resources_stay_exact(deid):
    def day(resource: dict, key: str) -> date:
        return date.fromisoformat(deid.resource(resource, PID)[key][:10])

    subject = {"resourceType": "ResearchSubject", "id": "rs1", "status": "on-study",
               "study": {"reference": "ResearchStudy/s1"}, "individual": {"reference": f"Patient/{PID}"},
               "period": {"start": "2024-01-10", "end": "2024-04-10"}}
    event = {"resourceType": "AdverseEvent", "id": "ae1", "actuality": "actual",
             "subject": {"reference": f"http://example.org/fhir/Patient/{PID}"},
             "date": "2024-03-01", "detected": "2024-03-02T08:00:00Z", "recordedDate": "2024-03-03"}
    sub = deid.resource(subject, patient_of(subject))
    day0 = date.fromisoformat(sub["period"]["start"])
    assert date.fromisoformat(sub["period"]["end"]) - day0 == date(2024, 4, 10) - date(2024, 1, 10)
    assert day(an_observation(), "effectiveDateTime") - day0 == date(2024, 2, 7) - date(2024, 1, 10)
    assert day(event, "date") - day0 == date(2024, 3, 1) - date(2024, 1, 10)
    assert day(event, "detected") - day(event, "date") == date(2024, 3, 2) - date(2024, 3, 1)
    assert day0 != date(2024, 1, 10)
    assert patient_of(event) == PID
    assert deid.resource(event, PID)["subject"]["reference"] == \
        f"http://example.org/fhir/Patient/{deid.pseudonym(PID)}"


def test_nested_and_absolute_patient_references_are_pseudonymised(deid):
    resource = {"resourceType": "Group", "id": "g1", "type": "person", "actual": True,
                "member": [{"entity": {"reference": f"https://fhir.example.org/fhir/Patient/{PID}/_history/2",
                                       "display": "Jane"}, "period": {"start": "2024-01-10T08:00:00Z"}},
                           {"entity": {"reference": "Practitioner/p1", "display": "Dr Who"}}]}
    out = deid.resource(resource, None)
    assert out["member"][0]["entity"] == {
        "reference": f"https://fhir.example.org/fhir/Patient/{deid.pseudonym(PID)}/_history/2"}
    assert out["member"][0]["period"]["start"] == shift_date("2024-01-10", deid.shift_days(PID)) + "T08:00:00Z"
    assert out["member"][1]["entity"]["display"] == "Dr Who"  # not a patient
    fhir.Group.model_validate(out)


def test_research_study_keeps_everything_but_its_narrative(deid):
    study = {"resourceType": "ResearchStudy", "id": "s1", "status": "active",
             "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
             "identifier": [{"system": "https://clinicaltrials.gov", "value": "NCT01927705"}],
             "period": {"start": "2024-01-01"}, "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"}}
    out = deid.resource(study, patient_of(study))
    assert "text" not in out
    assert out["identifier"] == study["identifier"] and out["period"] == study["period"]
    assert codes(out) == {"REDACTED"}
    assert "text" in study  # the input is untouched


def test_the_input_is_never_changed(deid):
    original = an_observation()
    deid.resource(original, PID)
    assert original == an_observation()


# -- Bundles ------------------------------------------------------------------------------------------------

def test_bundle_entries_full_urls_and_links_name_pseudonyms(deid):
    base = "http://example.org/fhir"
    body = orjson.dumps({
        "resourceType": "Bundle", "type": "searchset", "total": 2,
        "link": [{"relation": "self", "url": f"{base}/Observation?subject=Patient/{PID}&_count=1"},
                 {"relation": "next", "url": f"{base}/Patient?_id={PID},{deid.nothing}"}],
        "entry": [{"fullUrl": f"{base}/Patient/{PID}", "resource": a_patient(), "search": {"mode": "match"}},
                  {"fullUrl": f"{base}/Observation/obs-1", "resource": an_observation()}]})
    out = orjson.loads(deid.bundle(body))
    text = orjson.dumps(out).decode()
    assert PID not in text and "Jane" not in text
    pseudo = deid.pseudonym(PID)
    assert out["entry"][0]["fullUrl"] == f"{base}/Patient/{pseudo}"
    assert out["entry"][0]["resource"]["id"] == pseudo
    assert out["entry"][1]["resource"]["effectiveDateTime"].endswith("T15:30:00+09:00")
    assert out["entry"][1]["resource"]["effectiveDateTime"] != an_observation()["effectiveDateTime"]
    assert f"Patient%2F{pseudo}" in out["link"][0]["url"]
    assert pseudo in out["link"][1]["url"]
    fhir.Bundle.model_validate(out)


def test_transaction_response_locations_are_pseudonymised(deid):
    body = orjson.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"response": {"status": "201 Created", "location": f"http://x/fhir/Patient/{PID}/_history/1",
                      "lastModified": "2024-01-10T09:00:00Z"}}]})
    out = orjson.loads(deid.bundle(body))
    assert out["entry"][0]["response"] == {"status": "201 Created",
                                           "location": f"http://x/fhir/Patient/{deid.pseudonym(PID)}/_history/1"}


# -- searches ---------------------------------------------------------------------------------------------------

def test_params_name_patients_by_pseudonym(deid):
    real = {deid.pseudonym(PID): PID}.get
    pseudo = deid.pseudonym(PID)
    assert deid.translate_params([("_id", pseudo)], "Patient", real) == [("_id", PID)]
    assert deid.translate_params([("subject", f"Patient/{pseudo}"), ("code", "x|EASI")], "Observation", real) == \
        [("subject", f"Patient/{PID}"), ("code", "x|EASI")]
    assert deid.translate_params([("patient", pseudo)], "Observation", real) == [("patient", PID)]
    assert deid.translate_params([("individual", f"http://x/fhir/Patient/{pseudo}")], "ResearchSubject", real) == \
        [("individual", f"http://x/fhir/Patient/{PID}")]
    assert deid.translate_params([("subject:Patient", pseudo)], "AdverseEvent", real) == [("subject:Patient", PID)]
    assert deid.translate_params([("subject:missing", "true")], "AdverseEvent", real) == [("subject:missing", "true")]
    assert deid.translate_params([("study", "ResearchStudy/s1")], "Observation", real) == \
        [("study", "ResearchStudy/s1")]


def test_an_unknown_pseudonym_or_a_real_id_matches_nothing(deid):
    real = {deid.pseudonym(PID): PID}.get
    out = deid.translate_params([("_id", f"pseudo-{'0' * 32},{deid.pseudonym(PID)}")], "Patient", real)
    assert out == [("_id", f"{deid.nothing},{PID}")]
    assert deid.translate_params([("subject", PID)], "Observation", real) == [("subject", deid.nothing)]
    assert deid.nothing != Deidentifier(SECRET).nothing  # unguessable, per process


def test_identifier_and_date_searches_are_refused(deid):
    real = {}.get
    for rtype, params in [("Patient", [("identifier", "urn:oid:1.2.410.200001.1|MRN-123")]),
                          ("Observation", [("subject:identifier", "x|y")]),
                          ("Observation", [("date", "ge2024-01-01")]),
                          ("Patient", [("birthdate", "1961-07-14")]),
                          ("AdverseEvent", [("_lastUpdated", "gt2024-01-01")])]:
        with pytest.raises(BadRequest):
            deid.translate_params(params, rtype, real)
    assert deid.translate_params([("birthdate", "ge1950")], "Patient", real) == [("birthdate", "ge1950")]
    assert Deidentifier(SECRET, shift_dates=False).translate_params([("date", "ge2024")], "Observation", real) == \
        [("date", "ge2024")]
    assert deid.translate_params([("identifier", "https://clinicaltrials.gov|NCT1")], "ResearchStudy", real) == \
        [("identifier", "https://clinicaltrials.gov|NCT1")]


def test_content_deidentifies_stored_json_text(deid):
    out = orjson.loads(deid.content(orjson.dumps(an_observation())))
    assert out == deid.resource(an_observation(), PID)
