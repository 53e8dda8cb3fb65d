"""The demo trial: a deterministic synthetic cohort, loaded through transaction Bundles (twice is a no-op),
whose outcome has the shape of the published trial. The shape figures are computed here from the generated
values, independently of any summary code."""

from collections import Counter, defaultdict
from datetime import date
from decimal import Decimal
from statistics import fmean

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from service.adverse_event.models import AdverseEventRecord
from service.cli import app as cli_app
from service.db import read_session
from service.demo.cohort import OBSERVATION_SYSTEM, build_cohort, generate_cohort, study_resource, subject_resources
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


def visit_of(day: int) -> str:
    return next((name for name, (low, high) in VISITS.items() if low <= day <= high), "unscheduled")


@pytest.fixture(scope="module")
def cohort():
    return build_cohort()


def by_arm(cohort, arm):
    return [s for s in cohort.subjects if s.subject.arm == arm]


# -- the generated cohort (no database) ---------------------------------------------------------------------

def test_cohort_has_34_synthetic_adults_in_two_arms_with_the_planned_gaps(cohort):
    assert len(cohort.subjects) == 34
    assert Counter(s.subject.arm for s in cohort.subjects) == {"low-dose": 17, "high-dose": 17}
    study_json = study_resource(cohort)
    assert study_json["identifier"] == [{"system": "https://clinicaltrials.gov", "value": "NCT01927705"}]
    assert "synthetic" in study_json["title"].lower() and study_json["status"] == "completed"
    assert {a["name"]: a["description"] for a in study_json["arm"]} == {
        "low-dose": "2.5 × 10^7 cells", "high-dose": "5.0 × 10^7 cells"}
    missing = set()
    for s in cohort.subjects:
        assert s.patient.family == "Demo" and s.key.startswith("DEMO-")
        age = (s.subject.day0 - s.patient.birth_date).days / 365.25
        assert 18 <= age < 65 and s.subject.day0 < date(2016, 1, 1)
        have = Counter(m.record.visit for m in s.measurements)
        for visit in VISITS:
            if have[visit] == 0:
                missing.add((s.subject.arm, visit, s.subject.status))
            else:  # every measure of the catalogue, once
                assert sorted(m.record.measure for m in s.measurements if m.record.visit == visit) == sorted(MEASURES)
        for m in s.measurements:
            day = (m.record.local_date - s.subject.day0).days
            assert m.record.local_date.isoformat() == m.effective[:10]
            assert visit_of(day) == m.record.visit
    assert sorted(missing) == [("high-dose", "week-12", "withdrawn"), ("high-dose", "week-4", "off-study"),
                               ("low-dose", "week-12", "off-study"), ("low-dose", "week-4", "off-study")]
    assert [s.subject.end_date is not None for s in cohort.subjects if s.subject.status == "withdrawn"] == [True]


def test_cohort_sends_other_units_and_score_parts_that_add_up(cohort):
    units = Counter((m.record.measure, m.record.original_unit) for s in cohort.subjects for m in s.measurements)
    assert units[("IGE", "ng/mL")] and units[("IGE", "kU/L")] and units[("EOSINOPHILS", "/uL")]
    for s in cohort.subjects:
        for m in s.measurements:
            if m.record.original_unit == "ng/mL":
                assert m.record.value == pytest.approx(float(m.record.original_value) / 2.4)
            if m.record.original_unit == "/uL":
                assert m.record.value == pytest.approx(float(m.record.original_value) / 1000)
    checked = Counter()
    for s in cohort.subjects:
        for resource in subject_resources(cohort, s):
            if resource["resourceType"] != "Observation" or "component" not in resource:
                continue
            parts = {c["code"]["coding"][0]["code"]: Decimal(str(c["valueQuantity"]["value"]))
                     for c in resource["component"]}
            total = Decimal(str(resource["valueQuantity"]["value"]))
            code = resource["code"]["coding"][0]["code"]
            if code == "EASI":
                assert len(parts) == 20
                easi = sum(sum(parts[f"EASI-{r}-{sign}"] for sign in SIGNS) * parts[f"EASI-{r}-AREA"] * w
                           for r, w in EASI_WEIGHTS.items())
                assert abs(easi - total) <= Decimal("0.05"), (s.key, easi, total)
            else:
                assert code == "SCORAD"
                scorad = parts["SCORAD-A"] / 5 + 7 * parts["SCORAD-B"] / 2 + parts["SCORAD-C"]
                assert abs(scorad - total) <= Decimal("0.05")
            checked[code] += 1
    assert checked["EASI"] >= 10 and checked["SCORAD"] >= 10


def test_cohort_adverse_events_are_mild_or_moderate_and_never_serious(cohort):
    events = [ae for s in cohort.subjects for ae in s.adverse_events]
    assert len(events) >= 10
    assert {ae.record.seriousness for ae in events} == {"non-serious"}
    assert {ae.record.severity for ae in events} <= {"mild", "moderate"}
    assert not any(ae.record.caused_withdrawal for ae in events)
    assert any(ae.record.related for ae in events) and not all(ae.record.related for ae in events)
    for s in cohort.subjects:
        for ae in s.adverse_events:
            assert s.subject.day0 <= date.fromisoformat(ae.date[:10]) <= s.subject.end_date


def test_cohort_is_deterministic(cohort):
    first, second = generate_cohort(), generate_cohort()

    def rows(c):
        return [(s.key, s.patient.model_dump(), s.subject.model_dump(),
                 [(m.record.model_dump(), m.effective, m.components) for m in s.measurements],
                 [(a.record.model_dump(), a.date, a.relatedness) for a in s.adverse_events]) for s in c.subjects]

    assert rows(first) == rows(second) == rows(cohort)
    assert study_resource(first) == study_resource(cohort)
    for i in (0, 4, 33):
        assert subject_resources(first, first.subjects[i]) == subject_resources(cohort, cohort.subjects[i])


def outcome(cohort, arm: str, visit: str) -> dict:
    """EASI-50 rate and mean % change from baseline of every measure, from the generated values."""
    changes = defaultdict(list)
    for s in by_arm(cohort, arm):
        values = {(m.record.visit, m.record.measure): m.record.value for m in s.measurements}
        for measure in MEASURES:
            if ("baseline", measure) in values and (visit, measure) in values and values[("baseline", measure)] > 0:
                b, v = values[("baseline", measure)], values[(visit, measure)]
                changes[measure].append(100 * (v - b) / b)
    result = {m: fmean(pcts) for m, pcts in changes.items()}
    result["EASI-50"] = sum(p <= -50 for p in changes["EASI"]) / len(changes["EASI"])
    result["n"] = len(changes["EASI"])
    return result


def test_outcome_has_the_shape_of_the_published_trial(cohort):
    high, low = outcome(cohort, "high-dose", "week-12"), outcome(cohort, "low-dose", "week-12")
    assert high["n"] == low["n"] == 16
    assert 0.50 <= high["EASI-50"] <= 0.60          # published: 55%
    assert -38 <= high["IGA"] <= -28                 # published: −33%
    assert -55 <= high["SCORAD"] <= -45              # published: −50%
    assert -63 <= high["PRURITUS"] <= -53            # published: −58%
    for lab in ("IGE", "EOSINOPHILS", "EOSINOPHILS-PCT"):
        assert high[lab] <= -10                      # serum IgE and blood eosinophils fall
    assert low["EASI-50"] < high["EASI-50"]
    for measure in MEASURES:                         # the low dose improves, but less
        assert high[measure] < low[measure] < 0
    week4 = outcome(cohort, "high-dose", "week-4")
    for measure in MEASURES:                         # week 4 lies on the way
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


def test_demo_loads_at_start_up_through_bundles_and_again_from_the_cli_adds_nothing(settings, cohort):
    app = create_app(settings.model_copy(update={"load_demo_on_startup": True}))
    engine = app.state.engine
    with TestClient(app) as client:
        found = client.get("/fhir/ResearchStudy", params={"identifier": "https://clinicaltrials.gov|NCT01927705"})
        assert found.status_code == 200 and found.json()["total"] == 1
        study_json = found.json()["entry"][0]["resource"]
        assert study_json["title"].startswith("DEMO")
        patient = client.get("/fhir/Patient", params={"identifier": "https://trial-fhir.org/demo/patient|DEMO-001"})
        assert patient.json()["entry"][0]["resource"]["name"][0]["family"] == "Demo"

        n_obs = sum(len(s.measurements) for s in cohort.subjects)
        n_ae = sum(len(s.adverse_events) for s in cohort.subjects)
        before = _table_counts(engine)
        assert before["resources"] == {"ResearchStudy": 1, "Patient": 34, "ResearchSubject": 34,
                                       "Observation": n_obs, "AdverseEvent": n_ae}
        with read_session(engine) as session:
            subjects = session.execute(select(SubjectRecord)).scalars().all()
            assert Counter(s.arm for s in subjects) == {"low-dose": 17, "high-dose": 17}
            assert Counter(s.status for s in subjects)["withdrawn"] == 1
            day0 = {s.id: s.day0 for s in subjects}
            rows = session.execute(select(MeasurementRecord)).scalars().all()
            ids = dict(session.execute(select(IdentifierRecord.resource_id, IdentifierRecord.value)
                                       .where(IdentifierRecord.system == OBSERVATION_SYSTEM)).all())
            events = session.execute(select(AdverseEventRecord)).scalars().all()
        # every result is at the visit its date implies, with the value the cohort planned
        expected = {m.identifier: m.record for s in cohort.subjects for m in s.measurements}
        per_visit = Counter()
        for row in rows:
            day = (row.local_date - day0[row.subject_id]).days
            assert (row.study_day, row.visit) == (day, visit_of(day))
            planned = expected[ids[row.id]]
            assert (row.visit, row.measure, row.original_unit) == (planned.visit, planned.measure,
                                                                   planned.original_unit)
            assert row.value == pytest.approx(planned.value)
            per_visit[row.visit] += 1
        assert per_visit == {"baseline": 34 * 7, "week-4": 32 * 7, "week-12": 32 * 7}
        assert len(events) == n_ae and {e.seriousness for e in events} == {"non-serious"}
        assert not any(e.caused_withdrawal for e in events) and any(e.related for e in events)

        # a result with its EASI parts comes back with them
        with_parts = next(m for s in cohort.subjects for m in s.measurements if m.components)
        obs_id = next(i for i, v in ids.items() if v == with_parts.identifier)
        read = client.get(f"/fhir/Observation/{obs_id}").json()
        assert len(read["component"]) == len(with_parts.components)
        assert read["meta"]["tag"][0]["code"] == "HTEST"

        # a result deleted since is loaded again, and only that one
        assert client.delete(f"/fhir/Observation/{obs_id}").status_code in (200, 204)
        again = load_demo(engine)
        assert again["created"] == {"ResearchStudy": 0, "Patient": 0, "ResearchSubject": 0, "Observation": 1,
                                    "AdverseEvent": 0}
        assert again["existing"]["Observation"] == n_obs - 1 and again["existing"]["Patient"] == 34
        before = _table_counts(engine)

        result = CliRunner().invoke(cli_app, ["demo", "load", "--database-url", settings.database_url])
        assert result.exit_code == 0, result.output
        assert "already there" in result.output
        assert _table_counts(engine) == before
        assert load_demo_if_empty(engine) is None


def test_demo_is_not_loaded_into_a_database_that_holds_a_study(client, engine):
    created(client.post("/fhir/ResearchStudy", json=study()))
    assert load_demo_if_empty(engine) is None
    with read_session(engine) as session:
        assert session.execute(select(func.count()).select_from(PatientRecord)).scalar_one() == 0


def test_demo_show_prints_the_cohort_without_a_database():
    result = CliRunner().invoke(cli_app, ["demo", "show"])
    assert result.exit_code == 0, result.output
    assert "EASI-50" in result.output and "high-dose" in result.output
