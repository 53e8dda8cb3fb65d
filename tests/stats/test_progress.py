"""Data completeness per visit and adverse events by seriousness (`/studies/{id}/progress`, the dashboard's
figures): hand-counted on a small study whose day 0s are set relative to today, on both databases."""

from datetime import UTC, date, datetime, timedelta

import pytest

from service.db import read_session
from service.stats import service as stats
from tests.factories import adverse_event, created, observation, patient, study, subject


def today():
    """Today (UTC) when asked: a module-level constant went stale in a run that crossed midnight."""
    return datetime.now(UTC).date()


def _day(day0: date, offset: int) -> str:
    return (day0 + timedelta(days=offset)).isoformat()


@pytest.fixture
def progress_study(client) -> dict:
    """Four subjects, their windows as of today:
    - S1 (high-dose, day 0 = today − 100): every window closed; EASI and IGE at baseline, EASI at week 4, nothing at
      week 12 (overdue), an unscheduled result (day 50: counts nowhere); one serious adverse event;
    - S2 (low-dose, day 0 = today − 25): baseline closed with EASI; week 4 open with only a preliminary result
      (not counted: awaiting); week 12 not yet open; two non-serious adverse events;
    - S3 (withdrawn, day 0 = today − 100): came to baseline (EASI) only: due there, nowhere else, never overdue;
    - S4 (high-dose, day 0 = today): its baseline window is open, nothing yet (awaiting)."""
    sid = created(client.post("/fhir/ResearchStudy", json=study(title="Progress study",
                                                                identifier=[{"system": "https://clinicaltrials.gov",
                                                                             "value": "NCT00000042"}])))["id"]
    ids = {}
    for name, arm, offset, extra in (("S1", "high-dose", 100, {}), ("S2", "low-dose", 25, {}),
                                     ("S3", "high-dose", 100, {"status": "withdrawn"}), ("S4", "high-dose", 0, {})):
        pid = created(client.post("/fhir/Patient", json=patient()))["id"]
        day0 = today() - timedelta(days=offset)
        created(client.post("/fhir/ResearchSubject", json=subject(sid, pid, arm, day0.isoformat(), **extra)))
        ids[name] = (pid, day0)

    def result(name: str, measure: str, value: float, day: int, status: str = "final") -> None:
        pid, day0 = ids[name]
        created(client.post("/fhir/Observation", json=observation(pid, measure, value, _day(day0, day),
                                                                  status=status)))

    result("S1", "EASI", 30.0, 0)
    result("S1", "IGE", 150.0, 0)
    result("S1", "EASI", 20.0, 28)
    result("S1", "EASI", 18.0, 50)  # unscheduled
    result("S2", "EASI", 25.0, -2)
    result("S2", "EASI", 21.0, 22, status="preliminary")
    result("S3", "EASI", 40.0, -1)
    for name, serious in (("S1", True), ("S2", False), ("S2", False)):
        pid, day0 = ids[name]
        created(client.post("/fhir/AdverseEvent", json=adverse_event(pid, sid, serious=serious, date=_day(day0, 3))))
    return {"study": sid, "latest": _day(ids["S2"][1], 22)}  # the latest obtained, whatever its status


def test_completeness_per_visit_is_counted_against_the_windows(client, progress_study):
    response = client.get(f"/studies/{progress_study['study']}/progress")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["as_of"] == today().isoformat() and body["measures"] == 7 and body["title"] == "Progress study"
    got = {v["visit"]: (v["due"], v["expected"], v["received"], v["overdue"], v["awaiting"]) for v in body["visits"]}
    assert got == {"baseline": (4, 28, 4, 0, 1),  # S1 (2 results), S2, S3 (withdrawn, came), S4 (open, nothing)
                   "week-4": (2, 14, 1, 0, 1),  # S1 (1), S2 (open: its preliminary result does not count)
                   "week-12": (1, 7, 0, 1, 0)}  # S1: closed without a result
    assert [v["visit"] for v in body["visits"]] == ["baseline", "week-4", "week-12"]
    assert {v["visit"]: v["completeness"] for v in body["visits"]} == {
        "baseline": pytest.approx(4 / 28), "week-4": pytest.approx(1 / 14), "week-12": 0.0}
    assert (body["visits"][1]["first_day"], body["visits"][1]["last_day"]) == (21, 35)
    assert body["adverse_events"] == [{"seriousness": "non-serious", "events": 2, "subjects": 1},
                                      {"seriousness": "serious", "events": 1, "subjects": 1}]
    assert body["latest_result"].startswith(progress_study["latest"])
    # by its registry number too, as every study URL
    assert client.get("/studies/NCT00000042/progress").json()["visits"] == body["visits"]
    assert client.get("/studies/no-such-study/progress").status_code == 404


def test_a_study_without_subjects_expects_nothing(client):
    sid = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    body = client.get(f"/studies/{sid}/progress").json()
    assert [(v["due"], v["expected"], v["received"], v["completeness"], v["overdue"]) for v in body["visits"]] == \
        [(0, 0, 0, None, 0)] * 3
    assert body["adverse_events"] == [] and body["latest_result"] is None


def test_de_identified_progress_hides_counts_below_k(client, engine, progress_study):
    with read_session(engine) as session:
        out = stats.study_progress(session, progress_study["study"], min_cell=2)
    got = {v.visit: (v.due, v.expected, v.received, v.completeness, v.overdue, v.awaiting) for v in out.visits}
    assert got == {"baseline": (4, 28, 4, pytest.approx(4 / 28), 0, None),
                   "week-4": (2, 14, 1, pytest.approx(1 / 14), 0, None),
                   "week-12": (None, None, None, None, None, 0)}
    assert [(e.seriousness, e.events, e.subjects) for e in out.adverse_events] == [
        ("non-serious", None, None), ("serious", None, None)]
    assert out.latest_result is None and out.min_cell == 2
