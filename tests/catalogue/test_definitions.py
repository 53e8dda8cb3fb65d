"""A catalogue's definitions checked and compiled (pure: fhir_mappings/catalogue_definition.py, composite.py), and
bad ones refused over HTTP with an OperationOutcome naming the element, nothing stored."""

import copy
from decimal import Decimal

import pytest

from fhir_mappings.catalogue_definition import (
    check_observation_definition,
    check_plan_definition,
    compile_catalogue,
    measure_from_definition,
)
from fhir_mappings.composite import check_expression
from fhir_mappings.observation import check_observation
from fhir_mappings.terminology import load_catalogue, shipped_resources
from tests.catalogue.test_psoriasis_study import (
    PSO,
    crp_definition,
    pasi_definition,
    plan,
    spga_definition,
    visit,
)
from tests.factories import created


def expressions(issues) -> list[str]:
    return [e for i in issues for e in i.expression]


def shipped() -> tuple[dict, dict]:
    resources = shipped_resources()
    return (next(r for r in resources if r["resourceType"] == "PlanDefinition"),
            {f"ObservationDefinition/{r['id']}": r for r in resources if r["resourceType"] == "ObservationDefinition"})


def test_the_shipped_catalogue_is_valid_and_compiles_to_its_measures_visits_and_responders():
    plan_, definitions = shipped()
    assert all(check_observation_definition(d) == [] for d in definitions.values())
    assert check_plan_definition(plan_, definitions) == []
    catalogue = load_catalogue()
    assert [m.key for m in catalogue.measures] == ["EASI", "SCORAD", "IGA", "PRURITUS", "IGE", "EOSINOPHILS",
                                                   "EOSINOPHILS-PCT"]
    assert [(v.name, v.target_day, v.first_day, v.last_day) for v in catalogue.visits] == [
        ("baseline", 0, -30, 0), ("week-4", 28, 21, 35), ("week-12", 84, 70, 98)]
    assert catalogue.counted_statuses == {"final", "amended", "corrected"}
    assert [(r.key, r.measure, r.pct_change_at_most, r.value_at_most, r.drop_at_least, r.population)
            for r in catalogue.responders] == [
        ("EASI-50", "EASI", -50, None, None, "non-responder-imputation"),
        ("EASI-75", "EASI", -75, None, None, "non-responder-imputation"),
        ("EASI-90", "EASI", -90, None, None, "non-responder-imputation"),
        ("IGA-SUCCESS", "IGA", None, 1, 2, "observed")]
    ige = catalogue.measure("IGE")
    assert ige.to_canonical(Decimal("24"), "ng/mL") == Decimal(10)  # 2.4 ng/mL per IU/mL
    assert catalogue.measure("EOSINOPHILS").to_canonical(Decimal(450), "/uL") == Decimal("0.45")
    assert catalogue.unit_display("10*3/uL") == "×10³/µL" and ige.unit_display == "IU/mL"
    assert catalogue.measure("IGA").integer and catalogue.measure("EASI").max_decimals == 1


def test_scorad_is_computed_by_its_fhirpath_expression():
    scorad = load_catalogue().measure("SCORAD").parts
    assert scorad is not None and [p.name for p in scorad.parts] == ["A", "B", "C"]
    assert scorad.evaluate({"A": Decimal(40), "B": Decimal(9), "C": Decimal(12)}) == Decimal(40) / 5 + \
        Decimal(7) * 9 / 2 + 12


def test_easi_parts_are_checked_against_the_total_for_any_composite():
    easi = load_catalogue().measure("EASI")
    regions = {"HN": 0.1, "UL": 0.2, "TR": 0.3, "LL": 0.4}
    signs = ("ERYTHEMA", "OEDEMA", "EXCORIATION", "LICHENIFICATION")
    values = {f"EASI-{r}-{s}": 2 for r in regions for s in signs} | {f"EASI-{r}-AREA": 3 for r in regions}
    total = round(sum(w * 8 * 3 for w in regions.values()), 1)  # Σ weight × (signs) × area = 24.0
    components = [{"code": {"coding": [{"system": "https://trial-fhir.org/CodeSystem/ad-scores", "code": c}]},
                   "valueQuantity": {"value": v}} for c, v in values.items()]
    obs = {"status": "final", "valueQuantity": {"value": total, "code": "{score}",
                                                "system": "http://unitsofmeasure.org"}, "component": components}
    assert check_observation(obs, easi) == []
    wrong = {**obs, "valueQuantity": {**obs["valueQuantity"], "value": total + 0.1}}
    assert expressions(check_observation(wrong, easi)) == ["Observation.valueQuantity.value"]


@pytest.mark.parametrize(("expression", "problem"), [
    ("%A / 5 + 7 * %B / 2 +", "does not parse"),
    ("(%A + %B", "does not parse"),
    ("%A %B", "does not parse"),
    ("%A / 5 + 7 * %B / 2 + %D", "not declared: %D"),
])
def test_a_composite_expression_that_does_not_parse_or_names_an_unknown_part_is_refused(expression, problem):
    definition = copy.deepcopy(shipped()[1]["ObservationDefinition/ad-scorad"])
    definition["extension"][0]["extension"][0]["valueExpression"]["expression"] = expression
    issues = check_observation_definition(definition)
    assert len(issues) == 1 and problem in issues[0].diagnostics
    assert issues[0].expression == ("ObservationDefinition.extension[0].extension[0].valueExpression.expression",)


def test_check_expression_lists_the_variables_it_reads():
    assert check_expression("%A / 5 + 7 * %B / 2 + %C") == ([], ["A", "B", "C"])
    assert check_expression("%resource.id + %X")[1] == ["X"]  # FHIRPath's own variables are no parts


@pytest.mark.parametrize(("change", "where"), [
    (lambda d: d["quantitativeDetails"]["unit"]["coding"][0].update(code="furlongs"),
     "ObservationDefinition.quantitativeDetails.unit.coding[0].code"),
    (lambda d: d["quantitativeDetails"]["unit"]["coding"][0].pop("system"),
     "ObservationDefinition.quantitativeDetails.unit.coding[0].code"),
    (lambda d: d.update(permittedDataType=["string"]), "ObservationDefinition.permittedDataType"),
    (lambda d: d["qualifiedInterval"][0]["range"]["low"].update(value=900),
     "ObservationDefinition.qualifiedInterval[0].range"),
    (lambda d: d["code"]["coding"][0].pop("system"), "ObservationDefinition.code.coding"),
])
def test_a_bad_measure_is_refused_naming_its_element(change, where):
    definition = crp_definition((("mg/dL", 0.1),))
    change(definition)
    assert where in expressions(check_observation_definition(definition))


def test_an_accepted_unit_ucum_does_not_know_or_without_a_factor_is_refused():
    definition = crp_definition((("mg/dL", 0.1), ("milligrams", 1), ("g/L", 0)))
    issues = check_observation_definition(definition)
    assert expressions(issues) == ["ObservationDefinition.quantitativeDetails.extension[1]",
                                   "ObservationDefinition.quantitativeDetails.extension[2]"]
    assert "not a UCUM unit" in issues[0].diagnostics and "positive" in issues[1].diagnostics


def _psoriasis_plan(**changes) -> tuple[dict, dict]:
    definitions = {"ObservationDefinition/pasi": {**pasi_definition(), "id": "pasi"},
                   "ObservationDefinition/spga": {**spga_definition(), "id": "spga"}}
    body = {**plan(["pasi", "spga"]), "id": "pso", **changes}
    return body, definitions


def test_the_psoriasis_plan_compiles():
    body, definitions = _psoriasis_plan()
    assert check_plan_definition(body, definitions) == []
    catalogue = compile_catalogue(body, definitions, version="1")
    assert [r.key for r in catalogue.responders] == ["PASI-50", "PASI-75", "PASI-90", "SPGA-SUCCESS"]
    pasi = catalogue.measure("PASI")
    assert pasi.parts is not None and len(pasi.parts.parts) == 16
    assert catalogue.visit_for_day(30) == "week-4" and catalogue.visit_for_day(40) == "unscheduled"


@pytest.mark.parametrize(("changes", "where", "says"), [
    ({"action": [visit("week-0", 0, -14, 0), visit("week-4", 28, 0, 35)]}, "PlanDefinition.action[1].timingRange",
     "overlaps"),
    ({"action": [visit("week-0", 0, -14, 0), visit("week-4", 40, 21, 35)]}, "PlanDefinition.action[1].extension",
     "outside the window"),
    ({"action": [{**visit("week-0", 0, -14, 0), "timingRange": {"low": {"value": 1, "code": "wk"}}}]},
     "PlanDefinition.action[0].timingRange", "whole days"),
    ({"goal": [{"description": {"text": "X-50"}, "target": [
        {"extension": [{"url": "https://trial-fhir.org/StructureDefinition/criterion", "valueCode": "percent-change"}],
         "measure": {"coding": [{"system": PSO, "code": "DLQI"}]}, "detailRange": {"high": {"value": -50}}}]}]},
     "PlanDefinition.goal[0].target[0].measure", "not a measure of this catalogue"),
    ({"goal": [{"description": {"text": "X-50"}, "extension": [
        {"url": "https://trial-fhir.org/StructureDefinition/analysis-population", "valueCode": "everyone"}],
        "target": [{"extension": [{"url": "https://trial-fhir.org/StructureDefinition/criterion",
                                   "valueCode": "percent-change"}],
                    "measure": {"coding": [{"system": PSO, "code": "PASI"}]},
                    "detailRange": {"high": {"value": -50}}}]}]},
     "PlanDefinition.goal[0].extension", "analysis population"),
])
def test_a_bad_plan_is_refused_naming_its_element(changes, where, says):
    body, definitions = _psoriasis_plan(**changes)
    issues = check_plan_definition(body, definitions)
    assert where in expressions(issues) and any(says in i.diagnostics for i in issues), issues


def test_bad_definitions_are_refused_over_http_and_nothing_is_stored(client):
    bad_unit = client.post("/fhir/ObservationDefinition", json=crp_definition((("furlongs/fortnight", 2),)))
    assert bad_unit.status_code == 422
    assert bad_unit.json()["issue"][0]["expression"] == ["ObservationDefinition.quantitativeDetails.extension[0]"]
    bad_path = client.post("/fhir/ObservationDefinition", json=pasi_definition(expression="%H_E +* %H_A"))
    assert bad_path.status_code == 422
    assert bad_path.json()["issue"][0]["expression"] == [
        "ObservationDefinition.extension[0].extension[0].valueExpression.expression"]
    unknown_part = client.post("/fhir/ObservationDefinition", json=pasi_definition(expression="%H_E * %Z_A"))
    assert unknown_part.status_code == 422 and "%Z_A" in unknown_part.json()["issue"][0]["diagnostics"]
    pasi_id = created(client.post("/fhir/ObservationDefinition", json=pasi_definition()))["id"]
    overlapping = plan([pasi_id], visits=(("week-0", 0, -14, 0), ("week-4", 28, -1, 35)))
    overlapping["goal"] = overlapping["goal"][:3]
    refused = client.post("/fhir/PlanDefinition", json=overlapping)
    assert refused.status_code == 422
    assert refused.json()["issue"][0]["expression"] == ["PlanDefinition.action[1].timingRange"]
    missing = client.post("/fhir/PlanDefinition", json=plan(["nothing-here"]))
    assert missing.status_code == 422
    assert missing.json()["issue"][0]["expression"] == ["PlanDefinition.extension[4].valueReference"]
    assert client.get("/fhir/PlanDefinition").json()["total"] == 0
    assert client.get("/fhir/ObservationDefinition").json()["total"] == 1


def test_a_measure_change_that_breaks_its_plan_is_refused_whole(client):
    pasi_id = created(client.post("/fhir/ObservationDefinition", json=pasi_definition()))["id"]
    spga_id = created(client.post("/fhir/ObservationDefinition", json=spga_definition()))["id"]
    plan_id = created(client.post("/fhir/PlanDefinition", json=plan([pasi_id, spga_id])))["id"]
    # the sPGA re-coded as PASI: the plan would list one code twice and its sPGA goal would name no measure
    recoded = {**spga_definition(), "id": spga_id, "code": {"coding": [{"system": PSO, "code": "PASI"}]}}
    refused = client.put(f"/fhir/ObservationDefinition/{spga_id}", json=recoded)
    assert refused.status_code == 422, refused.text
    assert client.get(f"/fhir/ObservationDefinition/{spga_id}").json()["meta"]["versionId"] == "1"
    assert client.get(f"/fhir/PlanDefinition/{plan_id}").json()["meta"]["versionId"] == "1"
    in_use = client.delete(f"/fhir/ObservationDefinition/{spga_id}")
    assert in_use.status_code == 409


def test_measure_from_definition_reads_the_customary_unit_too():
    definition = crp_definition()
    definition["quantitativeDetails"].update(customaryUnit={"coding": [{"system": "http://unitsofmeasure.org",
                                                                         "code": "mg/dL"}]}, conversionFactor=0.1)
    assert check_observation_definition(definition) == []
    assert measure_from_definition(definition).to_canonical(Decimal("1.5"), "mg/dL") == Decimal(15)
