"""The $export request as the service reads it, without a database or HTTP: the kick-off parameters (GET query or
POST Parameters), `_elements`, `patient`, `Prefer: handling=lenient`; and how rows become NDJSON lines (the error
file's entries)."""

import orjson
import pytest

from fhir_mappings.search import SUBSETTED
from service.auth.scopes import parse_scopes
from service.core.context import Caller
from service.errors import BadRequest, Forbidden
from service.export import service
from service.export.service import ExportSpec, parameters_to_params, parse_export_request, patient_id_of

ASYNC = "respond-async"
LENIENT = "respond-async, handling=lenient"


def spec(params: list[tuple[str, str]], prefer: str = ASYNC, **kw) -> ExportSpec:
    return parse_export_request(params, prefer, kw.pop("group_id", None), **kw)


def test_patient_level_writes_the_compartment_types_and_refuses_others():
    assert spec([], level="patient").types == service.COMPARTMENT_TYPES
    assert spec([], level="patient").level == "patient"
    with pytest.raises(BadRequest, match="Patient compartment") as err:
        spec([("_type", "ResearchStudy")], level="patient")
    assert err.value.issues[0].expression == ("_type",)
    lenient = spec([("_type", "ResearchStudy,Observation")], LENIENT, level="patient")
    assert lenient.types == ("Observation",)
    assert [w[1] for w in lenient.warnings] == ["_type"] and "ResearchStudy" in lenient.warnings[0][0]


@pytest.mark.parametrize("value,expected", [
    ("Observation.code", {"Observation": ("code",)}),
    ("status", {t: ("status",) for t in ("Observation", "ResearchStudy", "ResearchSubject", "Encounter",
                                         "MedicationAdministration", "Procedure", "ConceptMap", "PlanDefinition")}),
    ("id", {t: ("id",) for t in service.EXPORT_TYPES}),
    ("Observation.code,status,Patient.gender", {"Observation": ("status", "code"), "ResearchStudy": ("status",),
                                                "ResearchSubject": ("status",), "Encounter": ("status",),
                                                "MedicationAdministration": ("status",), "Procedure": ("status",),
                                                "ConceptMap": ("status",), "PlanDefinition": ("status",),
                                                "Patient": ("gender",)}),
    ("Observation.value", {"Observation": ("value",)}),  # a choice element by its base name
    (" code , Observation.code ", {"Observation": ("code",), "Procedure": ("code",),
                                   "ObservationDefinition": ("code",)}),
])
def test_elements_are_read_per_type(value, expected):
    got = spec([("_elements", value)]).elements
    assert {t: set(e) for t, e in got.items()} == {t: set(e) for t, e in expected.items()}


@pytest.mark.parametrize("value,message", [
    ("Observation.code.coding", "only top-level"),
    ("Condition.code", "not a type this server exports"),
    ("Observation.colour", "has no element 'colour'"),
    ("colour", "no exported type has an element 'colour'"),
    (",", "_elements is empty"),
])
def test_bad_elements_are_400_naming_elements(value, message):
    with pytest.raises(BadRequest, match=message) as err:
        spec([("_elements", value)])
    assert err.value.issues[0].expression == ("_elements",)


def test_elements_of_a_type_the_export_leaves_out_are_refused_or_warned():
    with pytest.raises(BadRequest, match="does not include Observation"):
        spec([("_type", "Patient"), ("_elements", "Observation.code")])
    lenient = spec([("_type", "Patient"), ("_elements", "Observation.code,gender")], LENIENT)
    assert lenient.elements == {"Patient": ("gender",)} and len(lenient.warnings) == 1


@pytest.mark.parametrize("ref,expected", [
    ("Patient/p-1", "p-1"), ("http://x.org/fhir/Patient/p.2", "p.2"), (" Patient/abc ", "abc"),
    ("Observation/1", None), ("Patient/", None), ("XPatient/1", None), ("Patient/a b", None), ("p1", None),
])
def test_patient_references(ref, expected):
    assert patient_id_of(ref) == expected


def test_patient_parameter_limits_patient_and_group_exports_only():
    assert spec([("patient", "Patient/a,Patient/b"), ("patient", "Patient/a")], level="patient").patients == ("a", "b")
    assert spec([("patient", "Patient/a")], group_id="s1").patients == ("a",)
    assert spec([], group_id="s1").patients is None
    with pytest.raises(BadRequest) as err:
        spec([("patient", "Patient/a")])
    assert err.value.issues[0].expression == ("patient",)
    assert spec([("patient", "Patient/a")], LENIENT).patients is None  # lenient: left out, with a warning
    with pytest.raises(BadRequest, match="not a Patient reference"):
        spec([("patient", "Observation/1")], LENIENT, level="patient")  # malformed: 400 even when lenient


def test_lenient_turns_unsupported_parameters_and_unreadable_types_into_warnings():
    labs = Caller(name="labs", scopes=parse_scopes("system/Observation.rs"))
    with pytest.raises(Forbidden, match=r"system/Patient\.r"):
        spec([("_type", "Observation,Patient")], caller=labs)
    lenient = spec([("_type", "Observation,Patient"), ("organizeOutputBy", "Patient"), ("colour", "red")], LENIENT,
                   caller=labs)
    assert lenient.types == ("Observation",)
    assert [w[1] for w in lenient.warnings] == ["organizeOutputBy", "colour", "_type"]
    assert all("handling=lenient" in w[0] for w in lenient.warnings)
    with pytest.raises(BadRequest, match="_type names no type"):
        spec([("_type", "Condition")], LENIENT)
    with pytest.raises(BadRequest):
        spec([("_outputFormat", "text/csv")], LENIENT)  # a malformed value: never lenient


def test_spec_round_trips_through_the_job_row_and_reads_jobs_stored_before_it_grew():
    full = spec([("_type", "Observation,Patient"), ("_elements", "Observation.code"), ("patient", "Patient/a"),
                 ("colour", "red")], LENIENT, level="patient")
    assert ExportSpec.from_json(full.to_json()) == full
    old = orjson.dumps({"group_id": "s1", "types": ["Patient"], "since": None, "type_filters": {},
                        "output_format": service.NDJSON}).decode()
    assert ExportSpec.from_json(old) == ExportSpec(group_id="s1", types=("Patient",), level="group")


@pytest.mark.parametrize("body,params", [
    ({"resourceType": "Parameters"}, []),
    ({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient"}, {"name": "_since", "valueInstant": "2024-01-01T00:00:00Z"},
        {"name": "_outputFormat", "valueCode": "ndjson"},
        {"name": "patient", "valueReference": {"reference": "Patient/a"}},
        {"name": "includeAssociatedData", "valueCode": "LatestProvenanceResources"}]},
     [("_type", "Patient"), ("_since", "2024-01-01T00:00:00Z"), ("_outputFormat", "ndjson"), ("patient", "Patient/a"),
      ("includeAssociatedData", "LatestProvenanceResources")]),
])
def test_parameters_body_becomes_the_get_query(body, params):
    assert parameters_to_params(body) == params


def test_parameters_body_errors_name_every_element():
    with pytest.raises(BadRequest) as err:
        parameters_to_params({"resourceType": "Parameters", "parameter": [
            {"name": "_type", "valueString": "Patient", "valueCode": "Patient"}, "text", {"name": "_since"},
            {"name": "_type", "valueString": " "}]})
    assert [i.expression for i in err.value.issues] == [
        ("Parameters.parameter[0].valueString", "Parameters.parameter[0].valueCode"), ("Parameters.parameter[1].name",),
        ("Parameters.parameter[2].valueInstant",), ("Parameters.parameter[3].valueString",)]
    assert all("pydantic" not in i.diagnostics for i in err.value.issues)


# -- rows to NDJSON lines ---------------------------------------------------------------------------------

def test_stored_texts_are_written_as_they_are_when_each_is_one_line():
    texts = ['{"resourceType":"Patient","id":"a"}', '{"resourceType":"Patient","id":"b"}']
    assert service._framed(texts) == b'{"resourceType":"Patient","id":"a"}\n{"resourceType":"Patient","id":"b"}\n'
    for bad in ([None], ['{"x":\n1}'], ["[1]"], ['{"a":1} '], [texts[0], None]):
        assert service._framed(bad) is None


def test_rows_one_by_one_report_each_failure_by_the_id_it_names_and_keep_the_rest():
    errors: list[dict] = []
    texts = ['{"resourceType": "Observation",\n "id": "a"}', '{"resourceType":"Observation","id":"b","status":',
             None, '{"resourceType":"Patient","id":"d"}', '{"resourceType":"Observation","id":"e"}', '{"id": "f", [']
    data, written = service._one_by_one("Observation", texts, None, errors, None)
    assert written == 2
    assert data == b'{"resourceType":"Observation","id":"a"}\n{"resourceType":"Observation","id":"e"}\n'
    assert [e["issue"][0]["diagnostics"] for e in errors] == [
        "Observation/b was not exported: its stored JSON is not valid",
        "Observation (its id unreadable) was not exported: it has no stored content",
        "Observation/d was not exported: its stored JSON is not a Observation",
        "Observation/f was not exported: its stored JSON is not valid"]
    assert all(e["resourceType"] == "OperationOutcome" and e["issue"][0]["severity"] == "error" for e in errors)
    assert all(e["issue"][0]["expression"] == ["Observation"] for e in errors)


def test_transform_subsets_after_deidentifying_and_a_failure_is_named_by_pseudonym():
    class Failing:
        def content(self, text):
            raise ValueError("boom")

        def pseudonym(self, rid):
            return f"pseudo-{rid}"

    transform = service._transform("Observation", None, ("code",))
    out = orjson.loads(transform('{"resourceType":"Observation","id":"a","status":"final","code":{"text":"x"},'
                                 '"subject":{"reference":"Patient/p"}}'))
    assert set(out) == {"resourceType", "id", "meta", "status", "code"} and out["meta"]["tag"] == [SUBSETTED]
    errors: list[dict] = []
    failing = service._transform("Patient", Failing(), None)  # type: ignore[arg-type]
    data, written = service._one_by_one("Patient", ['{"resourceType":"Patient","id":"real-id"}'], failing, errors,
                                        Failing().pseudonym)
    assert (data, written) == (b"", 0)
    assert errors[0]["issue"][0]["diagnostics"] == ("Patient/pseudo-real-id was not exported: it could not be "
                                                    "de-identified (ValueError)")
    assert "real-id" not in orjson.dumps(errors).decode().replace("pseudo-real-id", "")


def test_a_missing_scope_alone_is_403_and_beside_a_bad_parameter_a_400_naming_both():
    labs = Caller(name="labs", scopes=parse_scopes("system/Observation.rs"))
    with pytest.raises(Forbidden) as only_scope:
        spec([("_type", "Observation,Patient,ResearchStudy")], caller=labs)
    assert [i.code for i in only_scope.value.issues] == ["forbidden"]
    assert "system/Patient.r, system/ResearchStudy.r" in only_scope.value.issues[0].diagnostics
    with pytest.raises(BadRequest) as both:
        spec([("_type", "Observation,Patient"), ("colour", "red")], caller=labs)
    assert [(i.code, i.expression) for i in both.value.issues] == [("not-supported", ("colour",)),
                                                                    ("forbidden", ("_type",))]
