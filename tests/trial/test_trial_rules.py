"""Every rule of ../shared/DOMAIN.md, enforced on write (over HTTP, both databases): codes, units and their
conversion, ranges, EASI/SCORAD parts, references, visit windows, adverse events, enrolments, deletes."""

import copy

import pytest
from sqlalchemy import select

from fhir_mappings import fhir
from service.adverse_event.models import AdverseEventRecord
from service.observation.models import MeasurementRecord
from service.trial.models import SubjectRecord
from tests.assertions import rejected
from tests.factories import AD, LOINC, MRN, UCUM, adverse_event, created, enrol, observation, patient, study, subject

NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
SERIOUSNESS = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
SEVERITY = "http://terminology.hl7.org/CodeSystem/adverse-event-severity"
OUTCOME = "http://terminology.hl7.org/CodeSystem/adverse-event-outcome"
DISCONTINUED = "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/caused-subject-to-discontinue-study"


# -- helpers ---------------------------------------------------------------------------------------------



def row(engine, table, id: str):
    with engine.connect() as conn:
        return conn.execute(select(table).where(table.c.id == id)).mappings().first()


def measurement(engine, id: str):
    return row(engine, MeasurementRecord.__table__, id)


def count(engine, table) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(table.c.id)).all())


def without_meta(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def post_observation(client, body: dict) -> dict:
    result = created(client.post("/fhir/Observation", json=body))
    fhir.Observation.model_validate(result)
    return result


@pytest.fixture
def ids(client):
    return enrol(client)


# -- codes and units ---------------------------------------------------------------------------------------

# Many cases share one enrolment (a loop, not a parametrization): a fresh database per case costs more than
# the case itself.
UNKNOWN_CODES = [
    {"system": LOINC, "code": "15074-8"},  # glucose
    {"system": AD, "code": "POEM"},  # the trial's system, unknown code
    {"system": "http://snomed.info/sct", "code": "EASI"},  # the right code in another system
    {"code": "EASI"},  # no system
]


def test_unknown_code_for_the_study_is_422(client, engine, ids):
    for coding in UNKNOWN_CODES:
        body = observation(ids["patient"])
        body["code"] = {"coding": [coding]}
        rejected(client.post("/fhir/Observation", json=body), 422, "Observation.code.coding", "code-invalid")
    body = observation(ids["patient"])
    del body["code"]["coding"]
    body["code"]["text"] = "EASI"
    rejected(client.post("/fhir/Observation", json=body), 422, "Observation.code.coding", "code-invalid")
    assert count(engine, MeasurementRecord.__table__) == 0


def test_known_code_found_among_several_codings(client, engine, ids):
    body = observation(ids["patient"], "EOSINOPHILS", value=0.3)
    body["code"]["coding"].insert(0, {"system": "http://example.org/local-lab", "code": "EOS-ABS"})
    result = post_observation(client, body)
    assert measurement(engine, result["id"])["measure"] == "EOSINOPHILS"


WRONG_UNITS = [("EASI", "mg"), ("IGE", "mg/dL"), ("IGE", "IU/L"), ("EOSINOPHILS", "%"), ("EOSINOPHILS-PCT", "10*9/L")]


def test_wrong_unit_is_422(client, engine, ids):
    for measure, unit in WRONG_UNITS:
        body = observation(ids["patient"], measure, value=1, unit=unit)
        rejected(client.post("/fhir/Observation", json=body), 422, "Observation.valueQuantity.code", "code-invalid")
    assert count(engine, MeasurementRecord.__table__) == 0


def test_missing_unit_is_422(client, ids):
    body = observation(ids["patient"], "IGE", value=100)
    body["valueQuantity"] = {"value": 100}
    rejected(client.post("/fhir/Observation", json=body), 422, "Observation.valueQuantity.code")


CONVERSIONS = [
    ("IGE", 240, "ng/mL", 100.0, "[IU]/mL"),
    ("IGE", 1234.5, "k[IU]/L", 1234.5, "[IU]/mL"),
    ("IGE", 88, "[IU]/mL", 88.0, "[IU]/mL"),
    ("EOSINOPHILS", 0.92, "10*9/L", 0.92, "10*3/uL"),
    ("EOSINOPHILS", 450, "/uL", 0.45, "10*3/uL"),
    ("EOSINOPHILS", 450, "{cells}/uL", 0.45, "10*3/uL"),
    ("EOSINOPHILS", 0.45, "10*3/uL", 0.45, "10*3/uL"),
    ("EOSINOPHILS-PCT", 6.5, "%", 6.5, "%"),
]


def test_units_are_converted_and_the_original_kept(client, engine, ids):
    for measure, value, unit, canonical, canonical_unit in CONVERSIONS:
        body = observation(ids["patient"], measure, value=value, unit=unit)
        body["identifier"] = [{"system": "urn:example:lab", "value": f"{measure}-{unit}"}]
        body["valueQuantity"]["unit"] = f"lab display of {unit}"
        body["extension"] = [{"url": "http://example.org/lab-note", "valueString": "fasting"}]
        sent = copy.deepcopy(body)
        result = post_observation(client, body)
        stored = measurement(engine, result["id"])
        assert stored["value"] == pytest.approx(canonical), (measure, unit)
        assert stored["unit"] == canonical_unit
        assert stored["original_unit"] == unit
        assert float(stored["original_value"]) == pytest.approx(value)
        # the resource comes back exactly as sent (plus id and meta)
        assert without_meta(result) == sent
        read = client.get(f"/fhir/Observation/{result['id']}").json()
        assert without_meta(read) == sent


def test_unit_given_only_as_human_readable_unit_is_read(client, engine, ids):
    body = observation(ids["patient"], "IGE", value=240)
    body["valueQuantity"] = {"value": 240, "unit": "ng/mL"}
    stored = measurement(engine, post_observation(client, body)["id"])
    assert stored["value"] == pytest.approx(100.0)


# -- ranges, integers, decimals --------------------------------------------------------------------------

OUT_OF_RANGE = [
    ("EASI", 72.1, None), ("EASI", -0.1, None), ("SCORAD", 104, None), ("SCORAD", 103.01, None),
    ("IGA", 5, None), ("IGA", -1, None), ("PRURITUS", 11, None), ("PRURITUS", 10.5, None), ("IGE", -1, None),
    ("IGE", -2.4, "ng/mL"), ("EOSINOPHILS", -0.01, None), ("EOSINOPHILS-PCT", 101, None),
    ("EOSINOPHILS-PCT", -1, None),
    # the lab plausibility limits (DOMAIN.md): above them a data-entry or unit error, whatever unit it came in
    ("IGE", 1000000.5, None), ("IGE", 2400003, "ng/mL"), ("EOSINOPHILS", 200.01, None), ("EOSINOPHILS", 200001, "/uL"),
]


def test_value_out_of_range_is_422(client, engine, ids):
    for measure, value, unit in OUT_OF_RANGE:
        body = observation(ids["patient"], measure, value=value, unit=unit)
        outcome = rejected(client.post("/fhir/Observation", json=body), 422, "Observation.valueQuantity.value",
                           "value")
        if measure in ("IGE", "EOSINOPHILS") and value > 0:
            assert "plausibility limit" in outcome["issue"][0]["diagnostics"], outcome
    assert count(engine, MeasurementRecord.__table__) == 0


BOUNDARIES = [
    ("EASI", 0), ("EASI", 72), ("EASI", 71.9), ("SCORAD", 0), ("SCORAD", 103), ("SCORAD", 55.25), ("IGA", 0),
    ("IGA", 4), ("PRURITUS", 0), ("PRURITUS", 10), ("PRURITUS", 7.5), ("IGE", 0), ("IGE", 25000),
    ("IGE", 1000000), ("EOSINOPHILS", 0), ("EOSINOPHILS", 200), ("EOSINOPHILS-PCT", 0), ("EOSINOPHILS-PCT", 100),
]


def test_boundary_values_are_accepted(client, engine, ids):
    for measure, value in BOUNDARIES:
        result = post_observation(client, observation(ids["patient"], measure, value=value))
        assert measurement(engine, result["id"])["value"] == pytest.approx(value), (measure, value)


def test_iga_must_be_a_whole_number(client, ids):
    body = observation(ids["patient"], "IGA", value=2.5)
    rejected(client.post("/fhir/Observation", json=body), 422, "Observation.valueQuantity.value", "value")


def test_easi_has_at_most_one_decimal(client, ids):
    body = observation(ids["patient"], "EASI", value=12.35)
    rejected(client.post("/fhir/Observation", json=body), 422, "Observation.valueQuantity.value", "value")


MISSING_VALUES = [
    (lambda b: b["valueQuantity"].pop("value"), "Observation.valueQuantity.value"),
    (lambda b: b.update(valueString=str(b.pop("valueQuantity")["value"])), "Observation.valueString"),
    (lambda b: b.update(valueInteger=int(b.pop("valueQuantity")["value"])), "Observation.valueInteger"),
    (lambda b: b.pop("valueQuantity"), "Observation.value[x]"),
]


def test_missing_value_is_422(client, ids):
    for change, expression in MISSING_VALUES:
        body = observation(ids["patient"], "EASI", value=12.0)
        change(body)
        rejected(client.post("/fhir/Observation", json=body), 422, expression, "required")


# -- EASI and SCORAD parts -------------------------------------------------------------------------------

EASI_AREAS = {"HN": 2, "UL": 3, "TR": 2, "LL": 4}
EASI_SIGNS = {"HN": (2, 1, 1, 1), "UL": (2, 2, 1, 1), "TR": (1, 1, 1, 1), "LL": (3, 2, 2, 2)}
# HN 5*2*0.1 = 1.0, UL 6*3*0.2 = 3.6, TR 4*2*0.3 = 2.4, LL 9*4*0.4 = 14.4
EASI_TOTAL = 21.4


def score_component(code: str, value) -> dict:
    return {"code": {"coding": [{"system": AD, "code": code}]},
            "valueQuantity": {"value": value, "unit": "{score}", "system": UCUM, "code": "{score}"}}


def easi_components(areas=EASI_AREAS, signs=EASI_SIGNS) -> list[dict]:
    parts = []
    for region, area in areas.items():
        parts.append(score_component(f"EASI-{region}-AREA", area))
        for sign, value in zip(("ERYTHEMA", "OEDEMA", "EXCORIATION", "LICHENIFICATION"), signs[region], strict=True):
            parts.append(score_component(f"EASI-{region}-{sign}", value))
    return parts


def test_easi_with_20_matching_components_is_accepted(client, engine, ids):
    body = observation(ids["patient"], "EASI", value=EASI_TOTAL, component=easi_components())
    assert len(body["component"]) == 20
    sent = copy.deepcopy(body)
    result = post_observation(client, body)
    assert without_meta(result) == sent
    assert measurement(engine, result["id"])["value"] == pytest.approx(EASI_TOTAL)


def test_easi_total_not_matching_its_components_is_422(client, ids):
    for total in (21.5, 21.3, 2.1, 0):
        body = observation(ids["patient"], "EASI", value=total, component=easi_components())
        rejected(client.post("/fhir/Observation", json=body), 422, "Observation.valueQuantity.value", "value")


def test_easi_with_incomplete_components_is_422(client, ids):
    body = observation(ids["patient"], "EASI", value=EASI_TOTAL, component=easi_components()[:-1])
    rejected(client.post("/fhir/Observation", json=body), 422, "Observation.component", "required")


def test_easi_component_out_of_range_is_422(client, ids):
    for index, value in ((0, 7), (1, 4), (6, -1)):
        parts = easi_components()
        parts[index]["valueQuantity"]["value"] = value
        body = observation(ids["patient"], "EASI", value=EASI_TOTAL, component=parts)
        rejected(client.post("/fhir/Observation", json=body), 422,
                 f"Observation.component[{index}].valueQuantity.value", "value")


def test_easi_component_without_value_is_422(client, ids):
    parts = easi_components()
    del parts[3]["valueQuantity"]
    body = observation(ids["patient"], "EASI", value=EASI_TOTAL, component=parts)
    rejected(client.post("/fhir/Observation", json=body), 422, "Observation.component[3].value[x]", "required")


def scorad_components(a=33, b=7, c=9) -> list[dict]:  # 33/5 + 7*7/2 + 9 = 6.6 + 24.5 + 9 = 40.1
    return [score_component("SCORAD-A", a), score_component("SCORAD-B", b), score_component("SCORAD-C", c)]


def test_scorad_total_within_005_of_its_parts_is_accepted_and_beyond_is_422(client, engine, ids):
    for total in (40.1, 40.15, 40.05):
        body = observation(ids["patient"], "SCORAD", value=total, component=scorad_components())
        assert measurement(engine, post_observation(client, body)["id"])["value"] == pytest.approx(total)
    for total in (40.16, 40.04, 45):
        body = observation(ids["patient"], "SCORAD", value=total, component=scorad_components())
        rejected(client.post("/fhir/Observation", json=body), 422, "Observation.valueQuantity.value", "value")


def test_scorad_with_a_missing_part_is_422(client, ids):
    body = observation(ids["patient"], "SCORAD", value=40.1, component=scorad_components()[:2])
    rejected(client.post("/fhir/Observation", json=body), 422, "Observation.component", "required")


def test_scorad_part_out_of_range_is_422(client, ids):
    for index, value in ((0, 101), (1, 19), (2, 21), (0, -1)):
        parts = scorad_components()
        parts[index]["valueQuantity"]["value"] = value
        body = observation(ids["patient"], "SCORAD", value=40.1, component=parts)
        rejected(client.post("/fhir/Observation", json=body), 422,
                 f"Observation.component[{index}].valueQuantity.value", "value")


def test_components_that_are_not_score_parts_are_ignored(client, ids):
    body = observation(ids["patient"], "EASI", value=10.0, component=[
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": {"value": 120}}])
    post_observation(client, body)


# -- references ------------------------------------------------------------------------------------------

def test_observation_for_a_patient_not_enrolled_is_422(client, engine):
    lone = created(client.post("/fhir/Patient", json=patient()))
    rejected(client.post("/fhir/Observation", json=observation(lone["id"])), 422, "Observation.subject")
    assert count(engine, MeasurementRecord.__table__) == 0


def test_subject_that_does_not_resolve_is_422(client, engine, ids):
    for reference in ({"reference": "Patient/does-not-exist"}, {"reference": "Group/g1"}, {"display": "Kim"},
                      {"reference": "http://other.example/fhir/Patient/1"}, {"reference": "#contained"}):
        body = observation(ids["patient"], subject=reference)
        rejected(client.post("/fhir/Observation", json=body), 422, "Observation.subject")
    del body["subject"]
    rejected(client.post("/fhir/Observation", json=body), 422, "Observation.subject")
    assert count(engine, MeasurementRecord.__table__) == 0


def test_subject_by_identifier_resolves(client, engine):
    ids = enrol(client, mrn="MRN-LOGICAL")
    body = observation("x", subject={"identifier": {"system": MRN, "value": "MRN-LOGICAL"}})
    result = post_observation(client, body)
    assert measurement(engine, result["id"])["patient_id"] == ids["patient"]
    assert result["subject"]["identifier"] == {"system": MRN, "value": "MRN-LOGICAL"}


def test_conditional_subject_reference_resolves(client, engine):
    ids = enrol(client, mrn="MRN-COND")
    body = observation("x", subject={"reference": f"Patient?identifier={MRN}|MRN-COND"})
    result = post_observation(client, body)
    assert measurement(engine, result["id"])["patient_id"] == ids["patient"]
    assert result["subject"]["reference"] == f"Patient/{ids['patient']}"


def test_reference_matching_no_patient_is_422(client, ids):
    for subject_ref in ({"identifier": {"system": MRN, "value": "MRN-NOBODY"}},
                        {"reference": f"Patient?identifier={MRN}|MRN-NOBODY"}):
        body = observation("x", subject=subject_ref)
        rejected(client.post("/fhir/Observation", json=body), 422, "Observation.subject", "not-found")


def test_reference_matching_two_patients_is_422(client):
    study_id = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    for system in ("urn:example:a", "urn:example:b"):
        pid = created(client.post("/fhir/Patient", json=patient(identifier=[{"system": system, "value": "SHARED-7"}])))
        created(client.post("/fhir/ResearchSubject", json=subject(study_id, pid["id"])))
    for subject_ref in ({"identifier": {"value": "SHARED-7"}}, {"reference": "Patient?identifier=SHARED-7"}):
        body = observation("x", subject=subject_ref)
        rejected(client.post("/fhir/Observation", json=body), 422, "Observation.subject", "business-rule")


def test_research_subject_by_identifier_references(client, engine):
    study_id = created(client.post("/fhir/ResearchStudy", json=study(identifier=[
        {"system": "https://clinicaltrials.gov", "value": "NCT01927705"}])))["id"]
    pid = created(client.post("/fhir/Patient", json=patient("MRN-RS")))["id"]
    body = subject("x", "x")
    body["study"] = {"reference": "ResearchStudy?identifier=https://clinicaltrials.gov|NCT01927705"}
    body["individual"] = {"identifier": {"system": MRN, "value": "MRN-RS"}}
    result = created(client.post("/fhir/ResearchSubject", json=body))
    stored = row(engine, SubjectRecord.__table__, result["id"])
    assert (stored["study_id"], stored["patient_id"]) == (study_id, pid)


def test_research_subject_for_unknown_study_is_422(client):
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    rejected(client.post("/fhir/ResearchSubject", json=subject("no-such-study", pid)), 422, "ResearchSubject.study")


# -- visits ----------------------------------------------------------------------------------------------

VISIT_DATES = [
    ("2023-12-10", -31, "unscheduled"), ("2023-12-11", -30, "baseline"), ("2024-01-10", 0, "baseline"),
    ("2024-01-11", 1, "unscheduled"), ("2024-01-30", 20, "unscheduled"), ("2024-01-31", 21, "week-4"),
    ("2024-02-07", 28, "week-4"), ("2024-02-14", 35, "week-4"), ("2024-02-15", 36, "unscheduled"),
    ("2024-03-19", 69, "unscheduled"), ("2024-03-20", 70, "week-12"), ("2024-04-17", 98, "week-12"),
    ("2024-04-18", 99, "unscheduled"),
    # the day is counted from the result's LOCAL date, not its UTC date
    ("2024-02-07T23:30:00-05:00", 28, "week-4"),
    ("2024-02-14T23:30:00-05:00", 35, "week-4"),  # UTC: 2024-02-15 (day 36)
    ("2024-01-31T00:30:00+09:00", 21, "week-4"),  # UTC: 2024-01-30 (day 20)
    ("2024-01-10T20:00:00-10:00", 0, "baseline"),  # UTC: 2024-01-11 (day 1)
    ("2024-04-17T23:59:59.999+14:00", 98, "week-12"),
]


def test_visit_is_assigned_from_the_local_date(client, engine, ids):  # day 0 is 2024-01-10
    for date, day, visit in VISIT_DATES:
        stored = measurement(engine, post_observation(client, observation(ids["patient"], date=date))["id"])
        assert (stored["study_day"], stored["visit"]) == (day, visit), date
        assert stored["local_date"].isoformat() == date[:10]


def test_visit_from_effective_period_start(client, engine, ids):
    body = observation(ids["patient"])
    del body["effectiveDateTime"]
    body["effectivePeriod"] = {"start": "2024-02-07T08:00:00+09:00", "end": "2024-02-07T09:00:00+09:00"}
    stored = measurement(engine, post_observation(client, body)["id"])
    assert (stored["study_day"], stored["visit"]) == (28, "week-4")


def test_result_without_a_full_date_is_unscheduled(client, engine, ids):
    for date in (None, "2024", "2024-02"):
        body = observation(ids["patient"])
        del body["effectiveDateTime"]
        if date:
            body["effectiveDateTime"] = date
        stored = measurement(engine, post_observation(client, body)["id"])
        assert (stored["study_day"], stored["visit"]) == (None, "unscheduled"), date


def move_day0(client, subject_id: str, day0: str | None) -> dict:
    current = client.get(f"/fhir/ResearchSubject/{subject_id}").json()
    body = without_meta(current) | {"id": subject_id}
    if day0 is None:
        body.pop("period", None)
    else:
        body["period"] = {"start": day0}
    response = client.put(f"/fhir/ResearchSubject/{subject_id}", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_visits_are_reassigned_when_day0_changes(client, engine, ids):
    first = post_observation(client, observation(ids["patient"], date="2024-01-10"))["id"]
    second = post_observation(client, observation(ids["patient"], date="2024-02-07"))["id"]
    assert measurement(engine, first)["visit"] == "baseline"
    assert measurement(engine, second)["visit"] == "week-4"
    move_day0(client, ids["subject"], "2023-11-15")  # first is now day 56, second day 84
    assert (measurement(engine, first)["study_day"], measurement(engine, first)["visit"]) == (56, "unscheduled")
    assert (measurement(engine, second)["study_day"], measurement(engine, second)["visit"]) == (84, "week-12")
    # each Observation gets a new version whose meta.tag shows its new visit and study day (issue 11 §9); what the
    # EHR sent is untouched
    now = client.get(f"/fhir/Observation/{first}").json()
    assert now["meta"]["versionId"] == "2"
    assert [(t["system"].rsplit("/", 1)[1], t["code"]) for t in now["meta"]["tag"]] == [("visit", "unscheduled"),
                                                                                         ("study-day", "56")]
    before = client.get(f"/fhir/Observation/{first}/_history/1").json()
    assert [t["code"] for t in before["meta"]["tag"]] == ["baseline", "0"]
    assert {k: v for k, v in now.items() if k != "meta"} == {k: v for k, v in before.items() if k != "meta"}


def test_results_before_day0_is_set_are_unscheduled_then_reassigned(client, engine):
    ids = enrol(client, day0=None)
    oid = post_observation(client, observation(ids["patient"], date="2024-02-07"))["id"]
    assert (measurement(engine, oid)["study_day"], measurement(engine, oid)["visit"]) == (None, "unscheduled")
    move_day0(client, ids["subject"], "2024-01-10")
    assert (measurement(engine, oid)["study_day"], measurement(engine, oid)["visit"]) == (28, "week-4")
    move_day0(client, ids["subject"], None)
    assert (measurement(engine, oid)["study_day"], measurement(engine, oid)["visit"]) == (None, "unscheduled")


def test_observation_update_moves_its_visit(client, engine, ids):
    result = post_observation(client, observation(ids["patient"], date="2024-01-10"))
    body = without_meta(result) | {"id": result["id"], "effectiveDateTime": "2024-04-01"}
    assert client.put(f"/fhir/Observation/{result['id']}", json=body).status_code == 200
    assert measurement(engine, result["id"])["visit"] == "week-12"


# -- adverse events --------------------------------------------------------------------------------------

def ae_row(engine, id: str):
    return row(engine, AdverseEventRecord.__table__, id)


def post_ae(client, body: dict) -> dict:
    result = created(client.post("/fhir/AdverseEvent", json=body))
    fhir.AdverseEvent.model_validate(result)
    return result


def test_adverse_event_is_stored_as_sent(client, engine, ids):
    body = adverse_event(ids["patient"], ids["study"], serious=False, severity="moderate", related="C53258")
    body["outcome"] = {"coding": [{"system": OUTCOME, "code": "resolved"}]}
    body["identifier"] = {"system": "urn:example:ae", "value": "AE-1"}
    sent = copy.deepcopy(body)
    result = post_ae(client, body)
    assert without_meta(result) == sent
    stored = ae_row(engine, result["id"])
    assert (stored["study_id"], stored["subject_id"], stored["patient_id"]) == (ids["study"], ids["subject"],
                                                                              ids["patient"])
    assert (stored["seriousness"], stored["severity"], stored["outcome"], stored["related"]) == \
        ("non-serious", "moderate", "resolved", True)
    assert stored["event_code"] == "10037087" and stored["actuality"] == "actual"


def test_adverse_event_actuality_must_be_known(client, ids):
    for actuality in ("bogus", None, "Actual"):
        body = adverse_event(ids["patient"])
        if actuality is None:
            del body["actuality"]
        else:
            body["actuality"] = actuality
        status = 400 if actuality is None else 422  # actuality is required (1..1) in R4
        rejected(client.post("/fhir/AdverseEvent", json=body), status, "AdverseEvent.actuality")


def test_potential_adverse_event_is_accepted(client, engine, ids):
    body = adverse_event(ids["patient"], actuality="potential")
    assert ae_row(engine, post_ae(client, body)["id"])["actuality"] == "potential"


def test_seriousness_codes_including_r4_capitalised_ones(client, engine, ids):
    for code, stored in (("serious", "serious"), ("non-serious", "non-serious"), ("Serious", "serious"),
                         ("Non-serious", "non-serious"), ("NON-SERIOUS", "non-serious")):
        body = adverse_event(ids["patient"])
        body["seriousness"]["coding"][0]["code"] = code
        assert ae_row(engine, post_ae(client, body)["id"])["seriousness"] == stored, code


BAD_AE_CODES = [
    ("seriousness", {"coding": [{"system": SERIOUSNESS, "code": "very"}]}, "AdverseEvent.seriousness.coding[0].code"),
    ("seriousness", {"coding": [{"system": "http://example.org/x", "code": "serious"}]}, "AdverseEvent.seriousness"),
    ("severity", {"coding": [{"system": SEVERITY, "code": "extreme"}]}, "AdverseEvent.severity.coding[0].code"),
    ("severity", {"text": "mild"}, "AdverseEvent.severity"),
    ("outcome", {"coding": [{"system": OUTCOME, "code": "better"}]}, "AdverseEvent.outcome.coding[0].code"),
]


def test_adverse_event_codes_must_be_known(client, engine, ids):
    for element, concept, expression in BAD_AE_CODES:
        body = adverse_event(ids["patient"])
        body[element] = concept
        rejected(client.post("/fhir/AdverseEvent", json=body), 422, expression, "code-invalid")
    assert count(engine, AdverseEventRecord.__table__) == 0


def test_severity_and_outcome_codes(client, engine, ids):
    for severity in ("mild", "moderate", "severe"):
        stored = ae_row(engine, post_ae(client, adverse_event(ids["patient"], severity=severity))["id"])
        assert stored["severity"] == severity
    for outcome in ("resolved", "recovering", "ongoing", "resolvedWithSequelae", "fatal", "unknown"):
        body = adverse_event(ids["patient"], outcome={"coding": [{"system": OUTCOME, "code": outcome}]})
        assert ae_row(engine, post_ae(client, body)["id"])["outcome"] == outcome


def test_ncit_relatedness(client, engine, ids):
    for code, related in (("C53256", False), ("C53257", False), ("C53258", True), ("C53260", True), (None, False)):
        body = adverse_event(ids["patient"], related=code)
        assert ae_row(engine, post_ae(client, body)["id"])["related"] is related, code


def test_plain_related_text_counts_as_related(client, engine, ids):
    body = adverse_event(ids["patient"], suspectEntity=[
        {"instance": {"display": "hUCB-MSC"}, "causality": [{"assessment": {"text": "Related"}}]}])
    assert ae_row(engine, post_ae(client, body)["id"])["related"] is True


def test_unknown_ncit_relatedness_code_is_422(client, ids):
    body = adverse_event(ids["patient"], related="C99999")
    rejected(client.post("/fhir/AdverseEvent", json=body), 422,
             "AdverseEvent.suspectEntity[0].causality[0].assessment.coding[0]", "code-invalid")


@pytest.mark.parametrize(("change", "expression"), [
    (lambda b: b.pop("event"), "AdverseEvent.event"),
    (lambda b: b.pop("date"), "AdverseEvent.date"),
])
def test_adverse_event_needs_event_and_onset(client, ids, change, expression):
    body = adverse_event(ids["patient"])
    change(body)
    rejected(client.post("/fhir/AdverseEvent", json=body), 422, expression, "required")


def test_onset_from_detected(client, engine, ids):
    body = adverse_event(ids["patient"])
    body["detected"] = body.pop("date")
    assert ae_row(engine, post_ae(client, body)["id"])["onset"] is not None


def test_adverse_event_study_is_inferred_from_the_one_enrolment(client, engine, ids):
    stored = ae_row(engine, post_ae(client, adverse_event(ids["patient"]))["id"])
    assert (stored["study_id"], stored["subject_id"]) == (ids["study"], ids["subject"])


def test_adverse_event_for_a_patient_not_enrolled_is_422(client, engine):
    lone = created(client.post("/fhir/Patient", json=patient()))
    rejected(client.post("/fhir/AdverseEvent", json=adverse_event(lone["id"])), 422, "AdverseEvent.subject")
    assert count(engine, AdverseEventRecord.__table__) == 0


def test_adverse_event_needs_the_study_when_the_patient_is_in_two(client, engine, ids):
    other = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    created(client.post("/fhir/ResearchSubject", json=subject(other, ids["patient"])))
    rejected(client.post("/fhir/AdverseEvent", json=adverse_event(ids["patient"])), 422, "AdverseEvent.subject")
    stored = ae_row(engine, post_ae(client, adverse_event(ids["patient"], other))["id"])
    assert stored["study_id"] == other


def test_adverse_event_in_a_study_the_patient_is_not_in_is_422(client, ids):
    other = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    rejected(client.post("/fhir/AdverseEvent", json=adverse_event(ids["patient"], other)), 422, "AdverseEvent.subject")


def test_adverse_event_for_an_unknown_study_is_422(client, ids):
    rejected(client.post("/fhir/AdverseEvent", json=adverse_event(ids["patient"], "no-such-study")), 422,
             "AdverseEvent.study[0]")


def test_withdrawal_extension_withdraws_the_subject_with_a_new_version(client, engine, ids):
    before = client.get(f"/fhir/ResearchSubject/{ids['subject']}").json()
    assert before["status"] == "on-study" and before["meta"]["versionId"] == "1"
    result = post_ae(client, adverse_event(ids["patient"], withdrawal=True))
    assert ae_row(engine, result["id"])["caused_withdrawal"] is True
    after = client.get(f"/fhir/ResearchSubject/{ids['subject']}").json()
    fhir.ResearchSubject.model_validate(after)
    assert after["status"] == "withdrawn"
    assert after["meta"]["versionId"] == "2"
    assert without_meta(after) == without_meta(before) | {"status": "withdrawn"}
    assert row(engine, SubjectRecord.__table__, ids["subject"])["status"] == "withdrawn"
    history = client.get(f"/fhir/ResearchSubject/{ids['subject']}/_history").json()
    assert [e["resource"]["status"] for e in history["entry"]] == ["withdrawn", "on-study"]
    # a second such event changes nothing more
    post_ae(client, adverse_event(ids["patient"], withdrawal=True))
    assert client.get(f"/fhir/ResearchSubject/{ids['subject']}").json()["meta"]["versionId"] == "2"


@pytest.mark.parametrize("body_change", [
    lambda b: b["extension"][0].update(valueBoolean=False),
    lambda b: b.update(actuality="potential"),
])
def test_no_withdrawal_without_a_true_extension_on_an_actual_event(client, ids, body_change):
    body = adverse_event(ids["patient"], withdrawal=True)
    body_change(body)
    post_ae(client, body)
    current = client.get(f"/fhir/ResearchSubject/{ids['subject']}").json()
    assert (current["status"], current["meta"]["versionId"]) == ("on-study", "1")


def test_withdrawal_in_a_transaction(client, ids):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": adverse_event(ids["patient"], withdrawal=True),
         "request": {"method": "POST", "url": "AdverseEvent"}}]}
    assert client.post("/fhir", json=bundle).status_code == 200
    assert client.get(f"/fhir/ResearchSubject/{ids['subject']}").json()["status"] == "withdrawn"


# -- enrolments and deletes ------------------------------------------------------------------------------

@pytest.mark.parametrize("element", ["assignedArm", "actualArm"])
def test_research_subject_arm_must_be_an_arm_of_the_study(client, engine, element):
    study_id = created(client.post("/fhir/ResearchStudy", json=study(arms=("placebo", "active"))))["id"]
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    body = subject(study_id, pid, arm="active")
    body[element] = "high-dose"
    rejected(client.post("/fhir/ResearchSubject", json=body), 422, f"ResearchSubject.{element}", "business-rule")
    assert count(engine, SubjectRecord.__table__) == 0
    stored = row(engine, SubjectRecord.__table__, created(client.post(
        "/fhir/ResearchSubject", json=subject(study_id, pid, arm="placebo")))["id"])
    assert stored["arm"] == "placebo"


def test_actual_arm_wins_over_assigned_arm(client, engine):
    study_id = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    body = subject(study_id, pid, arm="low-dose")
    body["actualArm"] = "high-dose"
    stored = row(engine, SubjectRecord.__table__, created(client.post("/fhir/ResearchSubject", json=body))["id"])
    assert (stored["assigned_arm"], stored["actual_arm"], stored["arm"]) == ("low-dose", "high-dose", "high-dose")


def test_study_arm_in_use_cannot_be_removed(client, ids):
    current = client.get(f"/fhir/ResearchStudy/{ids['study']}").json()
    body = without_meta(current) | {"id": ids["study"], "arm": [{"name": "low-dose"}]}
    rejected(client.put(f"/fhir/ResearchStudy/{ids['study']}", json=body), 422, "ResearchStudy.arm")


def test_duplicate_enrolment_is_409(client, engine, ids):
    body = subject(ids["study"], ids["patient"], arm="low-dose")
    rejected(client.post("/fhir/ResearchSubject", json=body), 409, "ResearchSubject.individual", "conflict")
    assert count(engine, SubjectRecord.__table__) == 1


def test_research_subject_status_must_be_known(client, ids):
    body = subject(ids["study"], created(client.post("/fhir/Patient", json=patient()))["id"], status="enrolled")
    rejected(client.post("/fhir/ResearchSubject", json=body), 422, "ResearchSubject.status", "code-invalid")


def test_deleting_referenced_resources_is_409(client, ids):
    oid = post_observation(client, observation(ids["patient"]))["id"]
    for path in (f"/fhir/Patient/{ids['patient']}", f"/fhir/ResearchSubject/{ids['subject']}",
                 f"/fhir/ResearchStudy/{ids['study']}"):
        rejected(client.delete(path), 409, path.split("/")[2] + ".id", "conflict")
        assert client.get(path).status_code == 200
    # once the dependants are gone, the deletes go through, in order
    for path in (f"/fhir/Observation/{oid}", f"/fhir/ResearchSubject/{ids['subject']}",
                 f"/fhir/Patient/{ids['patient']}", f"/fhir/ResearchStudy/{ids['study']}"):
        assert client.delete(path).status_code == 200, path
        assert client.get(path).status_code == 410


def test_deleting_a_subject_with_an_adverse_event_is_409(client, ids):
    post_ae(client, adverse_event(ids["patient"]))
    rejected(client.delete(f"/fhir/ResearchSubject/{ids['subject']}"), 409, "ResearchSubject.id", "conflict")
