"""The demo trial, shipped as data (service/demo/data/demo-trial.json.gz) and made by a seeded generator: the file
is what the generator makes, it has the published design (phase I: 7 to week 4; phase IIa: 27 to week 12), it
loads through transaction Bundles (twice is a no-op), and the service's own figures over HTTP are the published
ones. Shape figures here are computed from the file, independently of any summary code."""

import gzip
from collections import Counter, defaultdict
from datetime import date
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.db import read_session
from service.demo.data import DATA_FILE, OBSERVATION_SYSTEM, counts, demo_bundle, transactions
from service.demo.generate import demo_bundle as generated_bundle, generate_cohort, main
from service.demo.load import load_demo, load_demo_if_empty
from service.main import create_app
from service.observation.models import MeasurementRecord
from service.store.models import IdentifierRecord, ResourceRecord, ResourceVersion
from service.trial.models import PatientRecord, SubjectRecord
from tests.factories import created, study

MEASURES = ("EASI", "SCORAD", "IGA", "PRURITUS", "IGE", "EOSINOPHILS", "EOSINOPHILS-PCT")
VISITS = {"baseline": (-30, 0), "week-4": (21, 35), "week-12": (70, 98)}  # DOMAIN.md windows
EASI_WEIGHTS = {"HN": Decimal("0.1"), "UL": Decimal("0.2"), "TR": Decimal("0.3"), "LL": Decimal("0.4")}
SIGNS = ("ERYTHEMA", "OEDEMA", "EXCORIATION", "LICHENIFICATION")
AD = "https://trial-fhir.org/CodeSystem/ad-scores"
NCT = "https://clinicaltrials.gov|NCT01927705"
TO_CANONICAL = {"ng/mL": Decimal(1) / Decimal("2.4"), "/uL": Decimal("0.001")}  # DOMAIN.md; the rest are 1:1
CODES = {"EASI": "EASI", "SCORAD": "SCORAD", "IGA": "IGA", "PRURITUS-NRS": "PRURITUS", "19113-0": "IGE",
         "711-2": "EOSINOPHILS", "713-8": "EOSINOPHILS-PCT"}


def visit_of(day: int | None) -> str:
    if day is None:
        return "unscheduled"
    return next((name for name, (low, high) in VISITS.items() if low <= day <= high), "unscheduled")


@pytest.fixture(scope="module")
def bundle():
    return demo_bundle()


def subjects_of(bundle) -> list[dict]:
    """Per subject: its key, phase (from its study's title), arm, day 0, status, results (the latest state of each,
    later updates applied) and adverse events."""
    studies = {e["fullUrl"]: e["resource"] for e in transactions(bundle)[0]["entry"]}
    updates = {e["request"]["url"].split("|")[1]: e["resource"] for e in transactions(bundle)[-1]["entry"]}
    out = []
    for t in transactions(bundle)[1:-1]:
        resources = [e["resource"] for e in t["entry"]]
        subject = next(r for r in resources if r["resourceType"] == "ResearchSubject")
        start = (subject.get("period") or {}).get("start")
        observations = [updates.get(r["identifier"][0]["value"], r) for r in resources
                        if r["resourceType"] == "Observation"]
        out.append({"key": t["identifier"]["value"], "study": studies[subject["study"]["reference"]],
                    "phase": "I" if "phase I (" in studies[subject["study"]["reference"]]["title"] else "IIa",
                    "arm": subject["assignedArm"], "actual": subject.get("actualArm"), "status": subject["status"],
                    "day0": date.fromisoformat(start) if start else None, "subject": subject,
                    "observations": observations, "first_sent": [r for r in resources
                                                                  if r["resourceType"] == "Observation"],
                    "events": [r for r in resources if r["resourceType"] == "AdverseEvent"],
                    "patient": next(r for r in resources if r["resourceType"] == "Patient")})
    return out


def canonical(observation: dict) -> Decimal:
    quantity = observation["valueQuantity"]
    return Decimal(str(quantity["value"])) * TO_CANONICAL.get(quantity["code"], Decimal(1))


def counted_values(s: dict) -> dict[tuple[str, str], Decimal]:
    """(visit, measure) -> value of the subject's counted results (one per visit here)."""
    out = {}
    for o in s["observations"]:
        if o["status"] not in ("final", "amended", "corrected"):
            continue
        day = (date.fromisoformat(o["effectiveDateTime"][:10]) - s["day0"]).days if s["day0"] else None
        visit = visit_of(day)
        if visit != "unscheduled":
            key = (visit, CODES[o["code"]["coding"][0]["code"]])
            assert key not in out, (s["key"], key)
            out[key] = canonical(o)
    return out


# -- the data file (no database) ----------------------------------------------------------------------------

def test_the_data_file_is_what_the_seeded_generator_makes(bundle, tmp_path):
    assert generated_bundle(generate_cohort()) == bundle
    assert main(["--check"]) == 0
    stale = tmp_path / "stale.json.gz"
    stale.write_bytes(gzip.compress(b"{}"))  # not what the generator makes
    assert main(["--check", "--out", str(stale)]) == 1
    assert main(["--out", str(stale)]) == 0 and main(["--check", "--out", str(stale)]) == 0
    assert gzip.decompress(stale.read_bytes()) == gzip.decompress(DATA_FILE.read_bytes())


def test_two_studies_linked_by_part_of_and_34_synthetic_adults_in_the_published_design(bundle):
    studies = [e for e in transactions(bundle)[0]["entry"]]
    assert [s["request"]["method"] for s in studies] == ["POST", "POST"]
    phase2, phase1 = (s["resource"] for s in studies)
    assert phase2["identifier"][0] == {"system": "https://clinicaltrials.gov", "value": "NCT01927705"}
    assert phase1["partOf"] == [{"reference": studies[0]["fullUrl"]}] and "partOf" not in phase2
    assert [s["phase"]["coding"][0]["code"] for s in (phase1, phase2)] == ["phase-1", "phase-2"]
    for s in (phase1, phase2):
        assert "synthetic" in s["title"].lower() and s["status"] == "completed"
        assert {a["name"]: a["description"] for a in s["arm"]} == {"low-dose": "2.5 × 10^7 cells",
                                                                   "high-dose": "5.0 × 10^7 cells"}
    subjects = subjects_of(bundle)
    assert len(subjects) == 34
    assert Counter((s["phase"], s["arm"]) for s in subjects) == {("I", "low-dose"): 3, ("I", "high-dose"): 4,
                                                                 ("IIa", "low-dose"): 14, ("IIa", "high-dose"): 13}
    # phase IIa: 3 low-dose and 2 high-dose subjects withdraw before the administration (no day 0, no actual arm)
    undosed = Counter((s["phase"], s["arm"]) for s in subjects if s["day0"] is None)
    assert undosed == {("IIa", "low-dose"): 3, ("IIa", "high-dose"): 2}
    assert all(s["status"] == "withdrawn" and s["actual"] is None for s in subjects if s["day0"] is None)
    assert all(s["status"] == "off-study" and s["actual"] == s["arm"] for s in subjects if s["day0"])
    for s in subjects:
        assert s["patient"]["name"][0]["family"] == "Demo" and s["key"].startswith("DEMO-")
        birth = date.fromisoformat(s["patient"]["birthDate"])
        first = min(date.fromisoformat(o["effectiveDateTime"][:10]) for o in s["observations"])
        assert 18 <= (first - birth).days / 365.25 < 65
    tags = [r["resource"]["meta"]["tag"] for t in transactions(bundle) for r in t["entry"]]
    assert all(tag[0]["code"] == "HTEST" for tag in tags)
    assert counts(bundle) == {"ResearchStudy": 2, "Patient": 34, "ResearchSubject": 34,
                              "Observation": sum(len(s["first_sent"]) for s in subjects),
                              "AdverseEvent": sum(len(s["events"]) for s in subjects)}


def test_visits_follow_each_phase_with_the_planned_gaps(bundle):
    seen = defaultdict(Counter)
    for s in subjects_of(bundle):
        values = counted_values(s)
        visits = Counter(visit for visit, _ in values)
        assert all(n == len(MEASURES) for n in visits.values()), (s["key"], visits)
        seen[(s["phase"], s["arm"])].update(set(visits))
        if s["phase"] == "I":  # followed to week 4 only
            end = date.fromisoformat(s["subject"]["period"]["end"])
            assert "week-12" not in visits and (end - s["day0"]).days <= VISITS["week-4"][1]
    assert seen[("I", "low-dose")] == {"baseline": 3, "week-4": 3}
    assert seen[("I", "high-dose")] == {"baseline": 4, "week-4": 4}
    # every dosed phase IIa subject comes at baseline and week 12; one per arm misses week 4
    assert seen[("IIa", "low-dose")] == {"baseline": 11, "week-4": 10, "week-12": 11}
    assert seen[("IIa", "high-dose")] == {"baseline": 11, "week-4": 10, "week-12": 11}


def test_results_come_as_labs_send_them(bundle):
    subjects = subjects_of(bundle)
    sent = [o for s in subjects for o in s["first_sent"]]
    units = Counter((CODES[o["code"]["coding"][0]["code"]], o["valueQuantity"]["code"]) for o in sent)
    assert units[("IGE", "ng/mL")] and units[("IGE", "kU/L")] and units[("IGE", "[IU]/mL")]
    assert units[("EOSINOPHILS", "/uL")] and units[("EOSINOPHILS", "10*9/L")]
    assert all(o["effectiveDateTime"].endswith("+09:00") for o in sent)
    # later updates: two preliminary results made final, one final result corrected (another value)
    updates = transactions(bundle)[-1]["entry"]
    assert all(u["request"]["method"] == "PUT" and u["request"]["url"].startswith(f"Observation?identifier="
                                                                                  f"{OBSERVATION_SYSTEM}|")
               for u in updates)
    first = {o["identifier"][0]["value"]: o for o in sent}
    changes = Counter()
    for u in updates:
        before, after = first[u["request"]["url"].split("|")[1]], u["resource"]
        changes[(before["status"], after["status"], before["valueQuantity"] == after["valueQuantity"])] += 1
    assert changes == {("preliminary", "final", True): 2, ("final", "corrected", False): 1}
    # one preliminary result is never finalised; the subjects without day 0 and one unscheduled visit
    latest = [o for s in subjects for o in s["observations"]]
    assert Counter(o["status"] for o in latest)["preliminary"] == 1
    unscheduled = Counter()
    for s in subjects:
        for o in s["observations"]:
            day = (date.fromisoformat(o["effectiveDateTime"][:10]) - s["day0"]).days if s["day0"] else None
            if visit_of(day) == "unscheduled":
                unscheduled["no day 0" if day is None else day] += 1
    assert unscheduled == {"no day 0": 5 * len(MEASURES), 56: 2}


def test_score_parts_add_up(bundle):
    checked = Counter()
    for s in subjects_of(bundle):
        for resource in s["observations"]:
            if "component" not in resource:
                continue
            parts = {c["code"]["coding"][0]["code"]: Decimal(str(c["valueQuantity"]["value"]))
                     for c in resource["component"]}
            total = Decimal(str(resource["valueQuantity"]["value"]))
            code = resource["code"]["coding"][0]["code"]
            if code == "EASI":
                assert len(parts) == 20
                easi = sum(sum(parts[f"EASI-{r}-{sign}"] for sign in SIGNS) * parts[f"EASI-{r}-AREA"] * w
                           for r, w in EASI_WEIGHTS.items())
                assert abs(easi - total) <= Decimal("0.05"), (s["key"], easi, total)
            else:
                assert code == "SCORAD"
                scorad = parts["SCORAD-A"] / 5 + 7 * parts["SCORAD-B"] / 2 + parts["SCORAD-C"]
                assert abs(scorad - total) <= Decimal("0.05")
            checked[code] += 1
    assert checked["EASI"] >= 10 and checked["SCORAD"] >= 10


def test_adverse_events_are_mild_or_moderate_never_serious_and_nobody_leaves_for_one(bundle):
    subjects = subjects_of(bundle)
    events = [e for s in subjects for e in s["events"]]
    assert len(events) >= 10
    assert {e["seriousness"]["coding"][0]["code"] for e in events} == {"non-serious"}
    assert {e["severity"]["coding"][0]["code"] for e in events} <= {"mild", "moderate"}
    assert not any("extension" in e for e in events)  # no caused-subject-to-discontinue-study
    for s in subjects:
        for e in s["events"]:
            assert s["day0"] and s["day0"] <= date.fromisoformat(e["date"][:10]) <= date.fromisoformat(
                s["subject"]["period"]["end"])


def shape(bundle, phase: str, arm: str, visit: str) -> dict:
    """EASI-50 responders and mean % change from baseline of every measure, from the file."""
    changes = defaultdict(list)
    for s in subjects_of(bundle):
        if (s["phase"], s["arm"]) != (phase, arm) or s["day0"] is None:
            continue
        values = counted_values(s)
        for m in MEASURES:
            if ("baseline", m) in values and (visit, m) in values:
                b = values[("baseline", m)]
                changes[m].append(float(100 * (values[(visit, m)] - b) / b))
    out: dict = {m: sum(v) / len(v) for m, v in changes.items()}
    out["n"], out["EASI-50"] = len(changes["EASI"]), sum(p <= -50 for p in changes["EASI"])
    return out


def test_the_outcome_is_the_published_one_in_the_file(bundle):
    high, low = shape(bundle, "IIa", "high-dose", "week-12"), shape(bundle, "IIa", "low-dose", "week-12")
    assert (high["n"], high["EASI-50"]) == (11, 6) and (low["n"], low["EASI-50"]) == (11, 4)
    assert (round(high["IGA"]), round(high["SCORAD"]), round(high["PRURITUS"])) == (-33, -50, -58)
    for measure in MEASURES:
        assert high[measure] < low[measure] < 0 or measure == "EASI"  # the low dose improves, but less
    week4 = shape(bundle, "IIa", "high-dose", "week-4")
    for measure in MEASURES:
        assert high[measure] < week4[measure] < 0


# -- loaded into the database -------------------------------------------------------------------------------

def _table_counts(engine) -> dict:
    with read_session(engine) as session:
        return {
            # (the audit trail of the test's own requests aside)
            "resources": dict(session.execute(select(ResourceRecord.resource_type, func.count())
                                              .where(ResourceRecord.resource_type != "AuditEvent")
                                              .group_by(ResourceRecord.resource_type)).all()),
            "versions": session.execute(select(func.count()).select_from(ResourceVersion)
                                        .where(ResourceVersion.resource_type != "AuditEvent")).scalar_one(),
            "identifiers": session.execute(select(func.count()).select_from(IdentifierRecord)).scalar_one(),
            "patients": session.execute(select(func.count()).select_from(PatientRecord)).scalar_one(),
            "measurements": session.execute(select(func.count()).select_from(MeasurementRecord)).scalar_one(),
        }


@pytest.fixture
def demo_client(settings):
    app = create_app(settings.model_copy(update={"load_demo_on_startup": True}))
    with TestClient(app) as client:
        yield client


def test_demo_loads_at_start_up_through_bundles_and_again_from_the_cli_adds_nothing(demo_client, settings, bundle):
    client, engine = demo_client, demo_client.app.state.engine
    found = client.get("/fhir/ResearchStudy", params={"identifier": NCT})
    assert found.status_code == 200 and found.json()["total"] == 1
    phase2 = found.json()["entry"][0]["resource"]
    studies = client.get("/fhir/ResearchStudy").json()
    phase1 = next(e["resource"] for e in studies["entry"] if e["resource"]["id"] != phase2["id"])
    assert phase1["partOf"] == [{"reference": f"ResearchStudy/{phase2['id']}"}]
    assert phase2["title"].startswith("DEMO")

    n = counts(bundle)
    assert _table_counts(engine)["resources"] == n
    with read_session(engine) as session:
        subjects = session.execute(select(SubjectRecord)).scalars().all()
        assert Counter((s.study_id, s.arm) for s in subjects) == {
            (phase1["id"], "low-dose"): 3, (phase1["id"], "high-dose"): 4,
            (phase2["id"], "low-dose"): 14, (phase2["id"], "high-dose"): 13}
        rows = session.execute(select(MeasurementRecord)).scalars().all()
        ids = dict(session.execute(select(IdentifierRecord.resource_id, IdentifierRecord.value)
                                   .where(IdentifierRecord.system == OBSERVATION_SYSTEM)).all())
        versions = session.execute(select(ResourceVersion.id, func.count())
                                   .where(ResourceVersion.resource_type == "Observation")
                                   .group_by(ResourceVersion.id)).all()
    assert Counter(row.visit for row in rows) == {"baseline": 29 * 7, "week-4": 27 * 7, "week-12": 22 * 7 + 1,
                                                  "unscheduled": 5 * 7 + 2}
    # the later updates made second versions of three results: two preliminary ones now final, one corrected
    assert sorted(n for _, n in versions if n > 1) == [2, 2, 2]
    assert Counter(row.status for row in rows) == {"final": len(rows) - 2, "corrected": 1, "preliminary": 1}
    corrected = next(row for row in rows if row.status == "corrected")
    latest = {u["request"]["url"].split("|")[1]: u["resource"] for u in transactions(bundle)[-1]["entry"]}
    assert corrected.value == pytest.approx(latest[ids[corrected.id]]["valueQuantity"]["value"])

    # a result with its EASI parts comes back with them
    with_parts = next(r for r in rows if r.measure == "EASI" and ids[r.id].startswith("DEMO-005-"))
    read = client.get(f"/fhir/Observation/{with_parts.id}").json()
    assert len(read["component"]) == 20 and read["meta"]["tag"][0]["code"] == "HTEST"

    # a result deleted since is loaded again, and only that one
    assert client.delete(f"/fhir/Observation/{with_parts.id}").status_code in (200, 204)
    again = load_demo(engine)
    assert again["created"] == {"ResearchStudy": 0, "Patient": 0, "ResearchSubject": 0, "Observation": 1,
                                "AdverseEvent": 0}
    assert again["existing"]["Observation"] == n["Observation"] - 1 and again["existing"]["Patient"] == 34
    before = _table_counts(engine)

    result = CliRunner().invoke(cli_app, ["demo", "load", "--database-url", settings.database_url])
    assert result.exit_code == 0, result.output
    assert "already there" in result.output
    assert _table_counts(engine) == before
    assert load_demo_if_empty(engine) is None


def test_the_service_reports_the_published_figures_of_the_loaded_demo(demo_client):
    """The summary endpoint's own figures for phase IIa at week 12 (the registry number names that study)."""
    summary = demo_client.get("/studies/NCT01927705/summary")
    assert summary.status_code == 200, summary.text
    arms = {a["name"]: a for a in summary.json()["arms"]}
    assert {(name, a["enrolled"], a["completed"], a["withdrawn"]) for name, a in arms.items()} == {
        ("high-dose", 13, 11, 2), ("low-dose", 14, 11, 3)}

    def responders(arm, key):
        return next(r for r in arms[arm]["responders"] if (r["visit"], r["measure"]) == ("week-12", key))

    def pct(arm, measure):
        return next(m for m in arms[arm]["measures"]
                    if (m["visit"], m["measure"]) == ("week-12", measure))["mean_pct_change"]

    high, low = responders("high-dose", "EASI-50"), responders("low-dose", "EASI-50")
    assert (high["n"], high["responders"], round(100 * high["rate"])) == (11, 6, 55)
    assert (low["n"], low["responders"], round(100 * low["rate"])) == (11, 4, 36)
    assert (round(pct("high-dose", "IGA")), round(pct("high-dose", "SCORAD")),
            round(pct("high-dose", "PRURITUS"))) == (-33, -50, -58)
    for lab in ("IGE", "EOSINOPHILS", "EOSINOPHILS-PCT"):
        assert pct("high-dose", lab) < 0 and pct("low-dose", lab) < 0
    for arm in arms.values():
        safety = {s["measure"]: s for s in arm["safety"]}
        assert safety["AE-SERIOUS"]["events"] == 0 and safety["AE-WITHDRAWAL"]["events"] == 0
        assert safety["AE-ANY"]["events"] > 0
        assert responders(arm["name"], "EASI-50")["population"] == "non-responder-imputation"

    # phase I, followed to week 4 only: its subjects are in the week-4 EASI-50 denominators (non-responder
    # imputation), and in none at week 12, where they were never planned
    studies = demo_client.get("/fhir/ResearchStudy").json()["entry"]
    phase1 = next(e["resource"]["id"] for e in studies if "partOf" in e["resource"])
    phase1_arms = {a["name"]: {(r["visit"], r["measure"]): r for r in a["responders"]}
                   for a in demo_client.get(f"/studies/{phase1}/summary").json()["arms"]}
    assert {arm: (r[("week-4", "EASI-50")]["n"], r[("week-12", "EASI-50")]["n"])
            for arm, r in phase1_arms.items()} == {"low-dose": (3, 0), "high-dose": (4, 0)}


def test_demo_is_not_loaded_into_a_database_that_holds_a_study(client, engine):
    created(client.post("/fhir/ResearchStudy", json=study()))
    assert load_demo_if_empty(engine) is None
    with read_session(engine) as session:
        assert session.execute(select(func.count()).select_from(PatientRecord)).scalar_one() == 0


def test_demo_show_prints_the_data_file_without_a_database():
    result = CliRunner().invoke(cli_app, ["demo", "show"])
    assert result.exit_code == 0, result.output
    assert "phase IIa" in result.output and "high-dose" in result.output and "Observation" in result.output
