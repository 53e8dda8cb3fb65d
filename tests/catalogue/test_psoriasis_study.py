"""Issue 15's proof: a psoriasis study defined entirely over HTTP, as FHIR (ObservationDefinitions for PASI from
four body regions × erythema/induration/desquamation × area with region weights, sPGA and a CRP lab value; a
PlanDefinition with weeks 0, 4, 12 and 16, PASI-50/75/90 and sPGA success), a small cohort loaded, and the
server's validation, visit assignment and summary figures checked against an independent computation here.
Then the catalogue changes (a widened window, a new accepted unit): the results are re-assigned in the
background, and the summary says which catalogue version it used. Runs on SQLite and on PostgreSQL."""

import statistics
import time
from datetime import date, timedelta

import pytest

from service.catalogue.recompute import recompute_study
from tests.factories import UCUM, created, patient, study, subject

PSO = "https://trial-fhir.org/CodeSystem/pso-scores"
LOINC = "http://loinc.org"
SD = "https://trial-fhir.org/StructureDefinition/"
REGIONS = {"H": 0.1, "U": 0.2, "T": 0.3, "L": 0.4}  # head, upper limbs, trunk, lower limbs
SIGNS = ("E", "I", "D")  # erythema, induration, desquamation (0-4); area score 0-6
VISITS = (("week-0", 0, -14, 0), ("week-4", 28, 21, 35), ("week-12", 84, 77, 91), ("week-16", 112, 105, 119))


def part(name: str, code: str, high: int) -> dict:
    return {"url": "part", "extension": [
        {"url": "name", "valueString": name}, {"url": "code", "valueCoding": {"system": PSO, "code": code}},
        {"url": "range", "valueRange": {"low": {"value": 0}, "high": {"value": high}}}]}


def pasi_definition(expression: str | None = None, parts: list | None = None) -> dict:
    terms = [f"(%{r}_E + %{r}_I + %{r}_D) * %{r}_A * {w}" for r, w in REGIONS.items()]
    declared = [part(f"{r}_{s}", f"PASI-{r}-{s}", 4) for r in REGIONS for s in SIGNS] + \
               [part(f"{r}_A", f"PASI-{r}-A", 6) for r in REGIONS]
    return {
        "resourceType": "ObservationDefinition",
        "identifier": [{"system": "https://trial-fhir.org/NamingSystem/measure-key", "value": "PASI"}],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "survey"}]}],
        "code": {"coding": [{"system": PSO, "code": "PASI"}], "text": "PASI"},
        "permittedDataType": ["Quantity"], "preferredReportName": "PASI",
        "quantitativeDetails": {"unit": {"coding": [{"system": UCUM, "code": "{score}"}], "text": "score"},
                                "decimalPrecision": 1},
        "qualifiedInterval": [{"category": "absolute", "range": {"low": {"value": 0}, "high": {"value": 72}}}],
        "extension": [{"url": SD + "composite-score", "extension": [
            {"url": "expression", "valueExpression": {"language": "text/fhirpath",
                                                      "expression": expression or " + ".join(terms)}},
            *(declared if parts is None else parts)]}],
    }


def spga_definition() -> dict:
    return {"resourceType": "ObservationDefinition",
            "identifier": [{"system": "https://trial-fhir.org/NamingSystem/measure-key", "value": "SPGA"}],
            "code": {"coding": [{"system": PSO, "code": "SPGA"}], "text": "sPGA"},
            "permittedDataType": ["Quantity", "integer"],
            "quantitativeDetails": {"unit": {"coding": [{"system": UCUM, "code": "{score}"}], "text": "score"}},
            "qualifiedInterval": [{"category": "absolute", "range": {"low": {"value": 0}, "high": {"value": 4}}}]}


def crp_definition(extra_units: tuple = ()) -> dict:
    """C-reactive protein in mg/L; `extra_units`: (UCUM code, conversion factor) accepted besides."""
    qd: dict = {"unit": {"coding": [{"system": UCUM, "code": "mg/L"}], "text": "mg/L"}}
    if extra_units:
        qd["extension"] = [{"url": SD + "accepted-unit", "extension": [
            {"url": "unit", "valueCoding": {"system": UCUM, "code": code}},
            {"url": "conversionFactor", "valueDecimal": factor}]} for code, factor in extra_units]
    return {"resourceType": "ObservationDefinition",
            "identifier": [{"system": "https://trial-fhir.org/NamingSystem/measure-key", "value": "CRP"}],
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": "1988-5"}], "text": "CRP"},
            "permittedDataType": ["Quantity"], "quantitativeDetails": qd,
            "qualifiedInterval": [{"category": "absolute", "range": {"low": {"value": 0}, "high": {"value": 500}}}]}


def target(code: str, criterion: str, high: float) -> dict:
    return {"extension": [{"url": SD + "criterion", "valueCode": criterion}],
            "measure": {"coding": [{"system": PSO, "code": code}]}, "detailRange": {"high": {"value": high}}}


def goal(key: str, *targets: dict, population: str = "observed") -> dict:
    return {"description": {"text": key}, "target": list(targets),
            "extension": [{"url": SD + "analysis-population", "valueCode": population}]}


def visit(name: str, target_day: int, first: int, last: int) -> dict:
    return {"title": name, "code": [{"coding": [{"system": "https://trial-fhir.org/CodeSystem/visit", "code": name}]}],
            "extension": [{"url": SD + "target-day", "valueInteger": target_day}],
            "timingRange": {"low": {"value": first, "system": UCUM, "code": "d"},
                            "high": {"value": last, "system": UCUM, "code": "d"}}}


def plan(definitions: list[str], visits=VISITS) -> dict:
    return {"resourceType": "PlanDefinition", "url": "https://example.org/PlanDefinition/psoriasis",
            "name": "Psoriasis", "title": "Psoriasis (PASI, sPGA, CRP)", "status": "active",
            "extension": [*({"url": SD + "counted-status", "valueCode": s} for s in ("final", "amended", "corrected")),
                          {"url": SD + "day-zero", "valueCode": "research-subject-period-start"},
                          *({"url": SD + "catalogue-measure",
                             "valueReference": {"reference": f"ObservationDefinition/{d}"}} for d in definitions)],
            "action": [visit(*v) for v in visits],
            "goal": [goal(f"PASI-{p}", target("PASI", "percent-change", -p)) for p in (50, 75, 90)]
            + [goal("SPGA-SUCCESS", target("SPGA", "value", 1), target("SPGA", "change", -2))]}


def pasi(components: dict[str, int]) -> float:
    """PASI computed here, independently of the server: Σ weight × (E + I + D) × area."""
    return round(sum(w * sum(components[f"PASI-{r}-{s}"] for s in SIGNS) * components[f"PASI-{r}-A"]
                     for r, w in REGIONS.items()), 1)


def pasi_observation(patient_id: str, on: date, components: dict[str, int], total: float | None = None) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": PSO, "code": "PASI"}]}, "subject": {"reference": f"Patient/{patient_id}"},
            "effectiveDateTime": on.isoformat(),
            "valueQuantity": {"value": pasi(components) if total is None else total, "system": UCUM,
                              "code": "{score}"},
            "component": [{"code": {"coding": [{"system": PSO, "code": code}]}, "valueQuantity": {"value": v}}
                          for code, v in components.items()]}


def simple_observation(patient_id: str, on: date, system: str, code: str, value: float, unit: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": on.isoformat(),
            "valueQuantity": {"value": value, "system": UCUM, "code": unit}}


def components_for(severity: float, seed: int) -> dict[str, int]:
    """Region signs and areas that fall with `severity` (0…1); deterministic per `seed`."""
    found = {}
    for i, r in enumerate(REGIONS):
        for j, s in enumerate(SIGNS):
            found[f"PASI-{r}-{s}"] = max(0, min(4, round(4 * severity + ((seed + i + j) % 3 - 1) * 0.4)))
        found[f"PASI-{r}-A"] = max(0, min(6, round(6 * severity + ((seed * 7 + i) % 3 - 1) * 0.5)))
    return found


#: per subject: arm, and the disease severity at weeks 0, 4, 12, 16 (None: no visit)
COHORT = [("high", (0.9, 0.6, 0.3, 0.1)), ("high", (0.8, 0.5, 0.2, 0.15)), ("high", (0.85, 0.7, 0.45, None)),
          ("high", (0.7, 0.65, 0.6, 0.5)), ("low", (0.9, 0.8, 0.6, 0.4)), ("low", (0.75, 0.7, 0.65, 0.6)),
          ("low", (0.8, 0.5, 0.35, 0.2)), ("low", (0.95, 0.9, 0.85, 0.8))]
SPGA = {0: 4, 1: 3, 2: 1, 3: 0}  # sPGA of a severity bucket


def spga_of(severity: float) -> int:
    return 4 if severity >= 0.8 else 3 if severity >= 0.6 else 2 if severity >= 0.4 else 1 if severity >= 0.2 else 0


@pytest.fixture
def psoriasis(client):
    """The psoriasis catalogue and study defined over HTTP, and the cohort loaded; what the test needs of it."""
    pasi_id = created(client.post("/fhir/ObservationDefinition", json=pasi_definition()))["id"]
    spga_id = created(client.post("/fhir/ObservationDefinition", json=spga_definition()))["id"]
    crp_id = created(client.post("/fhir/ObservationDefinition", json=crp_definition()))["id"]
    plan_id = created(client.post("/fhir/PlanDefinition", json=plan([pasi_id, spga_id, crp_id])))["id"]
    study_id = created(client.post("/fhir/ResearchStudy", json=study(
        arms=("high", "low"), title="Psoriasis phase II", protocol=[{"reference": f"PlanDefinition/{plan_id}"}])))["id"]
    day0 = date(2024, 3, 4)
    expected: dict = {"values": {}, "patients": []}
    for n, (arm, severities) in enumerate(COHORT):
        patient_id = created(client.post("/fhir/Patient", json=patient()))["id"]
        created(client.post("/fhir/ResearchSubject", json=subject(study_id, patient_id, arm, day0.isoformat())))
        expected["patients"].append(patient_id)
        entries = []
        for (name, target_day, _, _), severity in zip(VISITS, severities, strict=True):
            if severity is None:
                continue
            on = day0 + timedelta(days=target_day + (n % 3) - 1 if target_day else -3)
            comps = components_for(severity, n)
            entries.append(pasi_observation(patient_id, on, comps))
            entries.append(simple_observation(patient_id, on, PSO, "SPGA", spga_of(severity), "{score}"))
            expected["values"][(arm, name, "PASI", n)] = pasi(comps)
            expected["values"][(arm, name, "SPGA", n)] = spga_of(severity)
        # one result between week 4 and week 12 windows: unscheduled (day 40)
        entries.append(simple_observation(patient_id, day0 + timedelta(days=40), LOINC, "1988-5", 5.0 + n, "mg/L"))
        bundle = {"resourceType": "Bundle", "type": "transaction",
                  "entry": [{"resource": r, "request": {"method": "POST", "url": "Observation"}} for r in entries]}
        response = client.post("/fhir", json=bundle)
        assert response.status_code == 200, response.text
    return {"study": study_id, "plan": plan_id, "pasi": pasi_id, "crp": crp_id, **expected}


def test_psoriasis_catalogue_is_stored_versioned_and_searchable(client, psoriasis):
    read = client.get(f"/fhir/PlanDefinition/{psoriasis['plan']}")
    assert read.status_code == 200 and read.json()["meta"]["versionId"] == "1"
    found = client.get("/fhir/ObservationDefinition", params={"code": f"{PSO}|PASI"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [psoriasis["pasi"]]
    by_url = client.get("/fhir/PlanDefinition", params={"url": "https://example.org/PlanDefinition/psoriasis"})
    assert by_url.json()["total"] == 1
    study_ = client.get(f"/fhir/ResearchStudy/{psoriasis['study']}").json()
    assert study_["protocol"] == [{"reference": f"PlanDefinition/{psoriasis['plan']}"}]


def test_psoriasis_results_are_validated_by_the_stored_catalogue(client, psoriasis):
    patient_id = psoriasis["patients"][0]
    comps = components_for(0.5, 0)
    on = date(2024, 3, 4) + timedelta(days=28)
    wrong_total = client.post("/fhir/Observation", json=pasi_observation(patient_id, on, comps, pasi(comps) + 1))
    assert wrong_total.status_code == 422
    assert wrong_total.json()["issue"][0]["expression"] == ["Observation.valueQuantity.value"]
    assert "does not match its components" in wrong_total.json()["issue"][0]["diagnostics"]
    out_of_range = client.post("/fhir/Observation", json=pasi_observation(
        patient_id, on, {**comps, "PASI-T-A": 7}, pasi({**comps, "PASI-T-A": 7})))
    assert out_of_range.status_code == 422
    index = list(comps).index("PASI-T-A")
    assert out_of_range.json()["issue"][0]["expression"] == [f"Observation.component[{index}].valueQuantity.value"]
    missing = {k: v for k, v in comps.items() if k != "PASI-H-E"}
    incomplete = client.post("/fhir/Observation", json=pasi_observation(patient_id, on, missing, pasi(comps)))
    assert incomplete.status_code == 422 and "PASI-H-E" in incomplete.json()["issue"][0]["diagnostics"]
    above = client.post("/fhir/Observation", json=simple_observation(patient_id, on, PSO, "PASI", 72.5, "{score}"))
    assert above.status_code == 422 and above.json()["issue"][0]["expression"] == ["Observation.valueQuantity.value"]
    not_whole = client.post("/fhir/Observation", json=simple_observation(patient_id, on, PSO, "SPGA", 1.5, "{score}"))
    assert not_whole.status_code == 422 and "whole number" in not_whole.json()["issue"][0]["diagnostics"]
    mg_dl = client.post("/fhir/Observation", json=simple_observation(patient_id, on, LOINC, "1988-5", 1.2, "mg/dL"))
    assert mg_dl.status_code == 422 and mg_dl.json()["issue"][0]["expression"] == ["Observation.valueQuantity.code"]
    easi = client.post("/fhir/Observation", json=simple_observation(
        patient_id, on, "https://trial-fhir.org/CodeSystem/ad-scores", "EASI", 10, "{score}"))
    assert easi.status_code == 422  # not a measure of this study's catalogue: out of scope
    assert easi.json()["issue"][0]["expression"] == ["Observation.code.coding"]
    good = client.post("/fhir/Observation", json=pasi_observation(patient_id, on, comps))
    assert good.status_code == 201, good.text


def test_psoriasis_results_are_assigned_to_the_catalogue_visits(client, psoriasis):
    study_ref = f"ResearchStudy/{psoriasis['study']}"
    for name, *_ in VISITS:
        bundle = client.get("/fhir/Observation", params={"study": study_ref, "visit": name, "code": f"{PSO}|PASI",
                                                         "_count": 100}).json()
        expected = sorted(v for (_, visit_, key, _), v in psoriasis["values"].items()
                          if visit_ == name and key == "PASI")
        assert sorted(e["resource"]["valueQuantity"]["value"] for e in bundle.get("entry", [])) == expected
        for e in bundle.get("entry", []):
            assert {"system": "https://trial-fhir.org/CodeSystem/visit", "code": name} in e["resource"]["meta"]["tag"]
    unscheduled = client.get("/fhir/Observation", params={"study": study_ref, "visit": "unscheduled"}).json()
    assert unscheduled["total"] == len(COHORT)  # the CRP of day 40, between the week-4 and week-12 windows


def _independent_summary(values: dict) -> dict:
    """Per (arm, visit): PASI mean, mean % change, PASI-50/75/90 and sPGA success (n, responders), computed here."""
    found: dict = {}
    for arm in ("high", "low"):
        subjects = sorted({n for (a, _, _, n) in values if a == arm})
        for name, *_ in VISITS:
            pasis = [values[(arm, name, "PASI", n)] for n in subjects if (arm, name, "PASI", n) in values]
            found[(arm, name, "mean")] = statistics.mean(pasis)
            if name == "week-0":
                continue
            changes = [100 * (values[(arm, name, "PASI", n)] - values[(arm, "week-0", "PASI", n)])
                       / values[(arm, "week-0", "PASI", n)] for n in subjects if (arm, name, "PASI", n) in values]
            found[(arm, name, "mean_pct_change")] = statistics.mean(changes)
            for p in (50, 75, 90):
                found[(arm, name, f"PASI-{p}")] = (len(changes), sum(c <= -p for c in changes))
            success = [values[(arm, name, "SPGA", n)] <= 1
                       and values[(arm, "week-0", "SPGA", n)] - values[(arm, name, "SPGA", n)] >= 2
                       for n in subjects if (arm, name, "SPGA", n) in values]
            found[(arm, name, "SPGA-SUCCESS")] = (len(success), sum(success))
    return found


def test_psoriasis_summary_matches_an_independent_computation(client, psoriasis):
    summary = client.get(f"/studies/{psoriasis['study']}/summary")
    assert summary.status_code == 200, summary.text
    body = summary.json()
    assert body["catalogue"] == psoriasis["plan"] and body["catalogue_version"] == "1"
    assert [v["name"] for v in body["visits"]] == [v[0] for v in VISITS]
    assert [m["key"] for m in body["measures"]] == ["PASI", "SPGA", "CRP"]
    expected = _independent_summary(psoriasis["values"])
    arms = {a["name"]: a for a in body["arms"]}
    assert set(arms) == {"high", "low"}
    for arm, figures in arms.items():
        assert figures["enrolled"] == 4
        measures = {(m["visit"], m["measure"]): m for m in figures["measures"]}
        responders = {(r["visit"], r["measure"]): r for r in figures["responders"]}
        for name, *_ in VISITS:
            assert measures[(name, "PASI")]["mean"] == pytest.approx(expected[(arm, name, "mean")])
            if name == "week-0":
                continue
            assert measures[(name, "PASI")]["mean_pct_change"] == pytest.approx(
                expected[(arm, name, "mean_pct_change")])
            for key in ("PASI-50", "PASI-75", "PASI-90", "SPGA-SUCCESS"):
                n, k = expected[(arm, name, key)]
                assert (responders[(name, key)]["n"], responders[(name, key)]["responders"]) == (n, k), (arm, name, key)
    # the figures say nothing of another study's measures (the default catalogue's EASI/IGA responders)
    assert not any(r["measure"].startswith(("EASI", "IGA")) for a in body["arms"] for r in a["responders"])


def test_changing_the_catalogue_reassigns_existing_results_in_the_background(client, psoriasis, engine):
    study_ref = f"ResearchStudy/{psoriasis['study']}"
    # a new accepted unit: a new version of the measure, and so of the plan that lists it
    updated = client.put(f"/fhir/ObservationDefinition/{psoriasis['crp']}",
                         json={**crp_definition((("mg/dL", 0.1),)), "id": psoriasis["crp"]})
    assert updated.status_code == 200, updated.text
    assert client.get(f"/fhir/PlanDefinition/{psoriasis['plan']}").json()["meta"]["versionId"] == "2"
    patient_id = psoriasis["patients"][0]
    on = date(2024, 3, 4) + timedelta(days=28)
    mg_dl = client.post("/fhir/Observation", json=simple_observation(patient_id, on, LOINC, "1988-5", 1.2, "mg/dL"))
    assert mg_dl.status_code == 201, mg_dl.text
    # a widened window: week 4 now reaches day 42, so each CRP of day 40 belongs to it
    plan_now = client.get(f"/fhir/PlanDefinition/{psoriasis['plan']}").json()
    widened = {k: v for k, v in plan_now.items() if k != "meta"}
    widened["action"][1]["timingRange"]["high"]["value"] = 42
    assert client.put(f"/fhir/PlanDefinition/{psoriasis['plan']}", json=widened).status_code == 200
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the app's job runner picks the recompute job up
        if client.get("/fhir/Observation", params={"study": study_ref, "visit": "unscheduled"}).json()["total"] == 0:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the catalogue-recompute job did not re-assign the results")
    week_4_crp = client.get("/fhir/Observation", params={"study": study_ref, "visit": "week-4",
                                                        "code": f"{LOINC}|1988-5", "_count": 100}).json()
    assert week_4_crp["total"] == len(COHORT) + 1
    for e in week_4_crp["entry"]:
        tags = {t["system"]: t["code"] for t in e["resource"]["meta"]["tag"]}
        assert tags["https://trial-fhir.org/CodeSystem/visit"] == "week-4"
    summary = client.get(f"/studies/{psoriasis['study']}/summary").json()
    assert summary["catalogue_version"] == "3"
    crp = {a["name"]: m for a in summary["arms"] for m in a["measures"] if m["visit"] == "week-4"
           and m["measure"] == "CRP"}
    assert crp["high"]["n"] == crp["low"]["n"] == 4  # one per subject: the closest to the target day
    # the first subject's: 1.2 mg/dL on day 28 (12 mg/L, canonical), not day 40's; the others' 5 + n mg/L
    assert crp["high"]["mean"] == pytest.approx(statistics.mean([12.0, 6.0, 7.0, 8.0]))
    assert crp["low"]["mean"] == pytest.approx(statistics.mean([9.0, 10.0, 11.0, 12.0]))
    # a second run finds nothing left to change (idempotent)
    again = recompute_study(engine, psoriasis["study"])
    results = 2 * sum(s is not None for _, severities in COHORT for s in severities) + len(COHORT) + 1
    assert again["rewritten"] == 0 and again["done"] == again["total"] == results
