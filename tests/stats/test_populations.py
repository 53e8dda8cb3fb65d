"""Analysis populations and the confidence interval of the mean change: non-responder imputation (NRI) for the
EASI responder definitions, observed cases elsewhere, each figure saying which. Pure unit tests against independent
computations, then one cohort over HTTP (both databases) whose every subject is a case of the NRI rule."""

import math
import random
import statistics
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from scipy.stats import ttest_1samp

from fhir_mappings.terminology import Responder, load_catalogue
from service.stats.service import (
    NRI,
    OBSERVED,
    NriSubject,
    _responders,
    nri_expected,
    t_interval,
)
from tests.factories import created, observation, patient, study, subject

TODAY = date(2026, 6, 1)
WEEK_12 = (70, 98)  # the window, days from day 0


# -- the confidence interval of a mean (t-distribution) -----------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_t_interval_is_scipys_one_sample_t_confidence_interval(seed):
    rng = random.Random(seed)
    values = np.array([rng.gauss(-10, 7) for _ in range(rng.randint(2, 40))])
    expected = ttest_1samp(values, 0).confidence_interval(0.95)
    assert t_interval(values) == pytest.approx((expected.low, expected.high))


def test_t_interval_with_two_degrees_of_freedom_has_the_closed_form():
    values = np.array([-14.0, -18.0, 0.0])
    t = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t_p = (2p − 1) / √(2p(1 − p)) for 2 degrees of freedom
    half = t * statistics.stdev(values) / math.sqrt(3)
    assert t_interval(values) == pytest.approx((statistics.mean(values) - half, statistics.mean(values) + half))
    assert t_interval(np.array([5.0, 5.0])) == (5.0, 5.0)  # no spread, no width


def test_t_interval_that_overflows_is_none_not_infinite():
    assert t_interval(np.array([1e308, -1e308, 1e308])) == (None, None)


# -- non-responder imputation, unit -----------------------------------------------------------------------------

def subject_of(day0: date | None, status: str = "on-study", end: date | None = None) -> NriSubject:
    return NriSubject(id="s", arm="a", day0=day0, status=status, end_date=end)


def test_who_is_in_the_nri_denominator_of_a_visit():
    long_ago = date(2024, 1, 10)
    assert nri_expected(subject_of(long_ago), *WEEK_12, TODAY)  # dosed, window closed: missing = non-responder
    assert not nri_expected(subject_of(None), *WEEK_12, TODAY)  # never dosed
    assert nri_expected(subject_of(long_ago, "withdrawn", long_ago + timedelta(days=20)), *WEEK_12, TODAY)
    # finished the protocol before the window opened (a phase followed to week 4 only): not missing week 12
    assert not nri_expected(subject_of(long_ago, "off-study", long_ago + timedelta(days=35)), *WEEK_12, TODAY)
    assert nri_expected(subject_of(long_ago, "off-study", long_ago + timedelta(days=70)), *WEEK_12, TODAY)
    recent = TODAY - timedelta(days=80)  # the window is open today: not missed yet …
    assert not nri_expected(subject_of(recent), *WEEK_12, TODAY)
    assert nri_expected(subject_of(recent, "withdrawn"), *WEEK_12, TODAY)  # … unless the subject left
    assert nri_expected(subject_of(TODAY - timedelta(days=99)), *WEEK_12, TODAY)


def independent_nri(subjects: list[dict], threshold: float) -> tuple[int, int, int]:
    """(n, judged, responders) of a % change responder definition with NRI, written from its definition: the
    denominator is every expected subject and every subject with both values; a responder has both values, a
    baseline > 0 and a % change at or below the threshold."""
    n = judged = responders = 0
    for s in subjects:
        both = s["base"] is not None and s["value"] is not None
        if not (s["expected"] or both):
            continue
        n += 1
        if both and s["base"] > 0:
            judged += 1
            responders += 100 * (s["value"] - s["base"]) / s["base"] <= threshold
    return n, judged, responders


@pytest.mark.parametrize("seed", range(10))
def test_nri_rate_matches_an_independent_computation(seed):
    rng = random.Random(seed)
    subjects = [{"base": rng.choice([None, 0.0] + [rng.uniform(5, 60)] * 6),
                 "value": rng.choice([None] + [rng.uniform(0, 60)] * 4), "expected": rng.random() < 0.7}
                for _ in range(rng.randint(1, 30))]
    rule = Responder("EASI-50", "EASI", pct_change_at_most=-50, population=NRI)
    base = np.array([np.nan if s["base"] is None else s["base"] for s in subjects])
    values = np.array([np.nan if s["value"] is None else s["value"] for s in subjects])
    # what the service's SQL gives: the expected subjects without both values
    imputed = sum(1 for s in subjects if s["expected"] and (s["base"] is None or s["value"] is None))
    got = _responders(rule, "week-12", values, base, imputed)
    n, judged, k = independent_nri(subjects, -50)
    assert (got.population, got.n, got.n_observed, got.responders) == (NRI, n, judged, k)
    assert got.rate == (pytest.approx(k / n) if n else None)
    observed = _responders(Responder("EASI-50", "EASI", pct_change_at_most=-50), "week-12", values, base, imputed)
    assert (observed.population, observed.n, observed.n_observed, observed.responders) == (OBSERVED, judged, judged, k)


def test_the_ad_definitions_say_their_population():
    """The shipped atopic dermatitis catalogue's responder goals (their analysis-population extension)."""
    found = {r.key: r.population for r in load_catalogue().responders}
    assert found == {"EASI-50": NRI, "EASI-75": NRI, "EASI-90": NRI, "IGA-SUCCESS": OBSERVED}


# -- over HTTP ------------------------------------------------------------------------------------------------

def test_nri_and_observed_figures_over_http(client):
    """One arm, a subject per case of the rule (EASI-50 NRI; IGA success observed)."""
    study_id = created(client.post("/fhir/ResearchStudy", json=study(arms=("high-dose",))))["id"]
    recent = (datetime.now(UTC).date() - timedelta(days=40)).isoformat()  # week 4 closed, week 12 not yet open
    cases = {  # name: (day 0, status, period end, [(date, measure, value)])
        "A": ("2024-01-10", "on-study", None, [("2024-01-10", "EASI", 20), ("2024-04-03", "EASI", 8),  # −60%
                                                ("2024-01-10", "IGA", 3), ("2024-04-03", "IGA", 1)]),
        "B": ("2024-01-10", "withdrawn", "2024-02-20", [("2024-01-10", "EASI", 30), ("2024-02-07", "EASI", 25)]),
        "C": (None, "withdrawn", None, [("2024-01-05", "EASI", 25)]),  # never dosed: unscheduled, not counted
        "D": ("2024-01-10", "off-study", "2024-02-10", [("2024-01-10", "EASI", 22), ("2024-02-07", "EASI", 12),
                                                         ("2024-01-10", "IGA", 4), ("2024-02-07", "IGA", 1)]),
        "E": (recent, "on-study", None, [(recent, "EASI", 18)]),
        "F": ("2024-01-10", "on-study", None, [("2024-04-03", "EASI", 5)]),  # no baseline
        "G": ("2024-01-10", "on-study", None, [("2024-01-10", "EASI", 0), ("2024-04-03", "EASI", 0)]),
    }
    for name, (day0, status, end, results) in cases.items():
        patient_id = created(client.post("/fhir/Patient", json=patient(f"MRN-NRI-{name}")))["id"]
        body = subject(study_id, patient_id, "high-dose", day0, status=status)
        if end:
            body.setdefault("period", {})["end"] = end
        if day0 is None:
            body.pop("actualArm")
        created(client.post("/fhir/ResearchSubject", json=body))
        for when, measure, value in results:
            created(client.post("/fhir/Observation", json=observation(patient_id, measure, value, when)))

    summary = client.get(f"/studies/{study_id}/summary")
    assert summary.status_code == 200, summary.text
    arm = summary.json()["arms"][0]
    got = {(r["visit"], r["measure"]): r for r in arm["responders"]}

    def figures(visit, key):
        r = got[(visit, key)]
        return r["population"], r["n"], r["n_observed"], r["responders"]

    # week 12: A responds; B (withdrawn), F (no baseline), G (zero baseline) are imputed non-responders;
    # C (never dosed), D (finished at week 4) and E (window not open yet) are not in the denominator
    assert figures("week-12", "EASI-50") == (NRI, 4, 1, 1)
    # week 4: B and D are judged (−17%, −45%); A, E, F, G missed the closed window: non-responders
    assert figures("week-4", "EASI-50") == (NRI, 6, 2, 0)
    # IGA success over the observed cases: A at week 12 (3 → 1), D at week 4 (4 → 1)
    assert figures("week-12", "IGA-SUCCESS") == (OBSERVED, 1, 1, 1)
    assert figures("week-4", "IGA-SUCCESS") == (OBSERVED, 1, 1, 1)
    easi = next(m for m in arm["measures"] if (m["visit"], m["measure"]) == ("week-12", "EASI"))
    assert easi["population"] == OBSERVED and easi["n_change"] == 2  # A and G
    assert easi["mean_change"] == pytest.approx(-6.0)
    low, high = ttest_1samp([-12.0, 0.0], 0).confidence_interval(0.95)
    assert (easi["mean_change_ci_low"], easi["mean_change_ci_high"]) == pytest.approx((low, high))

    csv_rows = [r.split(",") for r in client.get(f"/studies/{study_id}/summary.csv").text.splitlines()[1:]]
    assert ["high-dose", "week-12", "EASI-50", "n", "4", "", "", NRI] in csv_rows
    assert ["high-dose", "week-12", "EASI-50", "n_observed", "1", "", "", NRI] in csv_rows
    assert ["high-dose", "week-12", "IGA-SUCCESS", "n", "1", "", "", OBSERVED] in csv_rows
    report = client.get(f"/studies/{study_id}/report").text
    assert "population: non-responder-imputation" in report and "95% CI of mean change" in report
