"""Trial summaries over HTTP, checked against figures computed here by hand (statistics module, plain Python).

The cohort has missing visits, a zero baseline, a withdrawal, values in converted units (IgE in ng/mL,
eosinophils in /uL), several results in one window (closest to the target day; a tie goes to the later one,
on another day and on the same day), results that don't count (preliminary, cancelled, unscheduled, deleted),
an arm taken from assignedArm, an actualArm overriding assignedArm, and an adverse event of actuality potential.
"""

import csv
import io
import math
import statistics
import uuid
import xml.etree.ElementTree as ET

import pytest
from fhir.resources.R4B.measurereport import MeasureReport
from scipy.stats import fisher_exact, mannwhitneyu, t as student_t

from tests.factories import adverse_event, created, observation, patient, study, subject

DAY0 = "2024-01-10"
MEASURES = ("EASI", "SCORAD", "IGA", "PRURITUS", "IGE", "EOSINOPHILS", "EOSINOPHILS-PCT")
VISITS = ("baseline", "week-4", "week-12")
SAFETY = ("AE-ANY", "AE-SERIOUS", "AE-SEVERE", "AE-RELATED", "AE-WITHDRAWAL")

# subject: (assignedArm, actualArm, status)
SUBJECTS = {
    "H1": ("high-dose", "high-dose", "on-study"),
    "H2": ("high-dose", "high-dose", "on-study"),
    "H3": ("low-dose", "high-dose", "on-study"),  # actualArm wins
    "H4": ("high-dose", "high-dose", "withdrawn"),
    "L1": ("low-dose", "low-dose", "on-study"),
    "L2": ("low-dose", "low-dose", "on-study"),
    "L3": ("low-dose", None, "off-study"),  # arm from assignedArm; completed by status
}

# What is posted: (subject, measure, effective, value, unit or None, status). Day 0 = 2024-01-10.
POSTED = [
    # H1: week-4 has day 26 and day 30 (a tie at 2 days: the later, 11, counts) and a preliminary at day 28
    ("H1", "EASI", "2024-01-10", 20, None, "final"),
    ("H1", "EASI", "2024-02-05", 15, None, "final"),
    ("H1", "EASI", "2024-02-09", 11, None, "final"),
    ("H1", "EASI", "2024-02-07", 1, None, "preliminary"),
    ("H1", "EASI", "2024-04-03", 6, None, "final"),
    ("H1", "IGA", "2024-01-10", 3, None, "final"),
    ("H1", "IGA", "2024-02-07", 2, None, "final"),
    ("H1", "IGA", "2024-04-03", 1, None, "final"),
    ("H1", "IGA", "2024-04-03", 0, None, "cancelled"),
    ("H1", "IGE", "2024-01-10", 2400, "ng/mL", "final"),  # 1000 [IU]/mL
    ("H1", "IGE", "2024-04-03", 1920, "ng/mL", "amended"),  # 800 [IU]/mL
    # H2: two baselines (day -5 and day -1: the closer, 28, counts); no week-4
    ("H2", "EASI", "2024-01-05", 30, None, "final"),
    ("H2", "EASI", "2024-01-09", 28, None, "final"),
    ("H2", "EASI", "2024-04-01", 10, None, "corrected"),
    ("H2", "IGA", "2024-01-10", 4, None, "final"),
    ("H2", "IGA", "2024-04-03", 1, None, "final"),
    ("H2", "EOSINOPHILS", "2024-01-10", 450, "/uL", "final"),  # 0.45 10*3/uL
    ("H2", "EOSINOPHILS", "2024-04-03", 0.3, "10*9/L", "final"),
    # H3: zero baseline (in change, not in % change)
    ("H3", "EASI", "2024-01-10", 0, None, "final"),
    ("H3", "EASI", "2024-02-07", 2, None, "final"),
    ("H3", "EASI", "2024-04-03", 0, None, "final"),
    ("H3", "IGA", "2024-01-10", 1, None, "final"),
    ("H3", "IGA", "2024-04-03", 0, None, "final"),
    # H4: withdrawn after week 4
    ("H4", "EASI", "2024-01-10", 25, None, "final"),
    ("H4", "EASI", "2024-02-07", 20, None, "final"),
    # L1: an unscheduled result (day 50) is left out; a deleted week-12 result is gone (see DELETED)
    ("L1", "EASI", "2024-01-10", 18, None, "final"),
    ("L1", "EASI", "2024-02-07", 15, None, "final"),
    ("L1", "EASI", "2024-02-29", 1, None, "final"),
    ("L1", "EASI", "2024-03-30", 12, None, "final"),
    ("L1", "EASI", "2024-04-03", 3, None, "final"),
    ("L1", "IGA", "2024-01-10", 3, None, "final"),
    ("L1", "IGA", "2024-02-07", 3, None, "final"),
    ("L1", "IGA", "2024-04-03", 2, None, "final"),
    ("L1", "IGE", "2024-01-10", 500, "[IU]/mL", "final"),
    ("L1", "IGE", "2024-04-03", 450, "k[IU]/L", "final"),
    # L2: two results on the same day of week-4 (the later in the day, 17, counts)
    ("L2", "EASI", "2024-01-10", 22, None, "final"),
    ("L2", "EASI", "2024-02-07T08:00:00+09:00", 19, None, "final"),
    ("L2", "EASI", "2024-02-07T15:00:00+09:00", 17, None, "final"),
    ("L2", "EASI", "2024-04-03", 9, None, "amended"),
    ("L2", "IGA", "2024-01-10", 4, None, "final"),
    ("L2", "IGA", "2024-02-07", 2, None, "final"),
    ("L2", "IGA", "2024-04-03", 1, None, "final"),
    # L3: baseline only
    ("L3", "EASI", "2024-01-10", 30, None, "final"),
]
DELETED = {("L1", "EASI", "2024-04-03")}

# The values that count, chosen by hand from POSTED (canonical units): subject -> measure -> visit -> value
COUNTED = {
    "H1": {"EASI": {"baseline": 20, "week-4": 11, "week-12": 6}, "IGA": {"baseline": 3, "week-4": 2, "week-12": 1},
           "IGE": {"baseline": 1000, "week-12": 800}},
    "H2": {"EASI": {"baseline": 28, "week-12": 10}, "IGA": {"baseline": 4, "week-12": 1},
           "EOSINOPHILS": {"baseline": 0.45, "week-12": 0.3}},
    "H3": {"EASI": {"baseline": 0, "week-4": 2, "week-12": 0}, "IGA": {"baseline": 1, "week-12": 0}},
    "H4": {"EASI": {"baseline": 25, "week-4": 20}},
    "L1": {"EASI": {"baseline": 18, "week-4": 15, "week-12": 12}, "IGA": {"baseline": 3, "week-4": 3, "week-12": 2},
           "IGE": {"baseline": 500, "week-12": 450}},
    "L2": {"EASI": {"baseline": 22, "week-4": 17, "week-12": 9}, "IGA": {"baseline": 4, "week-4": 2, "week-12": 1}},
    "L3": {"EASI": {"baseline": 30}},
}
ARM_OF = {"H1": "high-dose", "H2": "high-dose", "H3": "high-dose", "H4": "high-dose",
          "L1": "low-dose", "L2": "low-dose", "L3": "low-dose"}

# adverse events: (subject, serious, severity, relatedness code, caused withdrawal, actuality)
EVENTS = [
    ("H1", False, "mild", None, False, "actual"),
    ("H1", False, "moderate", "C53258", False, "actual"),  # possibly related: counts as related
    ("H1", True, "severe", "C53260", False, "potential"),  # not an actual event: ignored
    ("H4", True, "severe", "C53260", True, "actual"),
    ("H2", False, "severe", "C53257", False, "actual"),  # unlikely related: not related
]


# --- the expected figures, computed here -------------------------------------------------------------------

def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson interval as the roots of (p̂ − p)² = z² p(1 − p) / n."""
    z = 1.959963984540054
    a = 1 + z * z / n
    b = -(2 * k / n + z * z / n)
    c = (k / n) ** 2
    disc = math.sqrt(max(b * b - 4 * a * c, 0.0))
    return max(0.0, (-b - disc) / (2 * a)), min(1.0, (-b + disc) / (2 * a))


def values_at(arm: str, measure: str, visit: str) -> dict[str, float]:
    return {s: COUNTED[s][measure][visit] for s in COUNTED
            if ARM_OF[s] == arm and visit in COUNTED[s].get(measure, {})}


def pairs(arm: str, measure: str, visit: str) -> list[tuple[float, float]]:
    base, now = values_at(arm, measure, "baseline"), values_at(arm, measure, visit)
    return [(base[s], now[s]) for s in sorted(base) if s in now]


def pct_changes(arm: str, measure: str, visit: str) -> list[float]:
    return [100 * (v - b) / b for b, v in pairs(arm, measure, visit) if b > 0]


def expected_measure(arm: str, measure: str, visit: str) -> dict:
    vals = list(values_at(arm, measure, visit).values())
    out = {"n": len(vals)}
    if vals:
        out.update(mean=statistics.mean(vals), median=statistics.median(vals), min=min(vals), max=max(vals))
    if len(vals) > 1:
        out["sd"] = statistics.stdev(vals)
    if visit != "baseline":
        both = pairs(arm, measure, visit)
        if both:
            out["mean_change"] = statistics.mean(v - b for b, v in both)
        if len(both) > 1:  # 95% CI of the mean change: t-distribution, n − 1 degrees of freedom
            changes = [v - b for b, v in both]
            half = student_t.ppf(0.975, len(changes) - 1) * statistics.stdev(changes) / math.sqrt(len(changes))
            out["mean_change_ci_low"], out["mean_change_ci_high"] = out["mean_change"] - half, out["mean_change"] + half
        pct = pct_changes(arm, measure, visit)
        if pct:
            out["mean_pct_change"] = statistics.mean(pct)
    return out


def expected_responders(arm: str, key: str, visit: str) -> dict:
    """EASI-x with non-responder imputation: every subject of the arm is dosed (a day 0), none has finished before
    the window, and every window closed long ago, so n is the arm's subjects and those not judged from values (no
    value, a zero baseline) are non-responders; IGA success over the observed cases."""
    if key.startswith("EASI-"):
        threshold = -int(key.split("-")[1])
        pct = pct_changes(arm, "EASI", visit)
        observed, k = len(pct), sum(1 for p in pct if p <= threshold)
        n = sum(1 for s in ARM_OF if ARM_OF[s] == arm)
    else:
        both = pairs(arm, "IGA", visit)
        n, k = len(both), sum(1 for b, v in both if v <= 1 and b - v >= 2)
        observed = n
    out = {"n": n, "n_observed": observed, "responders": k}
    if n:
        out["rate"] = k / n
        out["ci_low"], out["ci_high"] = wilson(k, n)
    return out


def expected_safety(arm: str, key: str) -> dict:
    actual = [e for e in EVENTS if e[5] == "actual" and ARM_OF[e[0]] == arm]
    test = {"AE-ANY": lambda e: True, "AE-SERIOUS": lambda e: e[1], "AE-SEVERE": lambda e: e[2] == "severe",
            "AE-RELATED": lambda e: e[3] in ("C53258", "C53260"), "AE-WITHDRAWAL": lambda e: e[4]}[key]
    hits = [e for e in actual if test(e)]
    return {"subjects": len({e[0] for e in hits}), "events": len(hits)}


RESPONDER_KEYS = ("EASI-50", "EASI-75", "EASI-90", "IGA-SUCCESS")


def expected_rows() -> list[tuple[str, str, str, str, float]]:
    rows = []
    for arm in ("high-dose", "low-dose"):  # arms by name
        for visit in VISITS:
            for m in MEASURES:
                figures = expected_measure(arm, m, visit)
                for stat in ("n", "mean", "sd", "median", "min", "max", "mean_change", "mean_change_ci_low",
                             "mean_change_ci_high", "mean_pct_change"):
                    if stat in figures:
                        rows.append((arm, visit, m, stat, figures[stat]))
        for visit in VISITS[1:]:
            for key in RESPONDER_KEYS:
                figures = expected_responders(arm, key, visit)
                for stat in ("n", "n_observed", "responders", "rate", "ci_low", "ci_high"):
                    if stat in figures:
                        rows.append((arm, visit, key, stat, figures[stat]))
        for key in SAFETY:
            figures = expected_safety(arm, key)
            rows += [(arm, "all", key, "subjects", figures["subjects"]), (arm, "all", key, "events", figures["events"])]
    return rows


# --- the cohort, over HTTP -------------------------------------------------------------------------------

@pytest.fixture
def cohort(client) -> str:
    """The cohort, posted as one transaction Bundle (fast), then one result deleted; returns the study id."""
    study_id = created(client.post("/fhir/ResearchStudy", json=study(title="Summary test study")))["id"]
    entries = []

    def add(resource: dict) -> str:
        url = f"urn:uuid:{uuid.uuid4()}"
        entries.append({"fullUrl": url, "resource": resource,
                        "request": {"method": "POST", "url": resource["resourceType"]}})
        return url

    patients = {}
    for code, (assigned, actual, status) in SUBJECTS.items():
        patients[code] = add(patient(f"MRN-{code}"))
        body = subject(study_id, "x", assigned, DAY0, status=status)
        body["individual"] = {"reference": patients[code]}
        if actual is None:
            body.pop("actualArm")
        else:
            body["actualArm"] = actual
        add(body)
    to_delete = []
    for code, measure, when, value, unit, status in POSTED:
        obs = observation("x", measure, value, when, unit, status=status)
        obs["subject"] = {"reference": patients[code]}
        add(obs)
        if (code, measure, when) in DELETED:
            to_delete.append(len(entries) - 1)
    for code, serious, severity, related, withdrawal, actuality in EVENTS:
        event = adverse_event("x", study_id, serious=serious, severity=severity, related=related,
                              withdrawal=withdrawal, actuality=actuality)
        event["subject"] = {"reference": patients[code]}
        add(event)
    response = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert response.status_code == 200, response.text
    for i in to_delete:
        location = response.json()["entry"][i]["response"]["location"].split("/_history")[0]
        assert client.delete("/fhir/" + location.split("/fhir/")[-1]).status_code == 200
    return study_id


def approx(value):
    return pytest.approx(value, rel=1e-12, abs=1e-12)


def test_summary_json_matches_hand_computed_figures(client, cohort):
    response = client.get(f"/studies/{cohort}/summary")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["study_id"] == cohort and body["catalogue"] == "atopic-dermatitis"
    assert [v["name"] for v in body["visits"]] == list(VISITS)
    assert [m["key"] for m in body["measures"]] == list(MEASURES)
    arms = {a["name"]: a for a in body["arms"]}
    assert list(arms) == ["high-dose", "low-dose"]
    assert arms["high-dose"]["dose"] == "high-dose dose"
    assert {k: arms["high-dose"][k] for k in ("enrolled", "completed", "withdrawn")} == {
        "enrolled": 4, "completed": 3, "withdrawn": 1}
    # L3 has no week-12 result but is off-study: completed
    assert {k: arms["low-dose"][k] for k in ("enrolled", "completed", "withdrawn")} == {
        "enrolled": 3, "completed": 3, "withdrawn": 0}

    for arm_name, arm in arms.items():
        stats = {(s["visit"], s["measure"]): s for s in arm["measures"]}
        assert len(stats) == len(VISITS) * len(MEASURES)
        for visit in VISITS:
            for m in MEASURES:
                expected = expected_measure(arm_name, m, visit)
                got = stats[(visit, m)]
                assert got["population"] == "observed"
                for key in ("n", "mean", "sd", "median", "min", "max", "mean_change", "mean_change_ci_low",
                            "mean_change_ci_high", "mean_pct_change"):
                    if key in expected:
                        assert got[key] == approx(expected[key]), (arm_name, visit, m, key)
                    else:
                        assert got[key] is None, (arm_name, visit, m, key)
        responders = {(r["visit"], r["measure"]): r for r in arm["responders"]}
        assert set(responders) == {(v, k) for v in VISITS[1:] for k in RESPONDER_KEYS}
        for (visit, key), got in responders.items():
            expected = expected_responders(arm_name, key, visit)
            assert got["population"] == ("non-responder-imputation" if key.startswith("EASI-") else "observed")
            for stat in ("n", "n_observed", "responders", "rate", "ci_low", "ci_high"):
                assert got[stat] == (approx(expected[stat]) if stat in expected else None), (arm_name, visit, key)
        assert {s["measure"]: {"subjects": s["subjects"], "events": s["events"]} for s in arm["safety"]} == {
            key: expected_safety(arm_name, key) for key in SAFETY}

    # spot checks of the hand-computed figures themselves
    high = {(s["visit"], s["measure"]): s for s in arms["high-dose"]["measures"]}
    assert high[("week-4", "EASI")]["mean"] == approx((11 + 2 + 20) / 3)  # tie → later (11), preliminary ignored
    assert high[("week-12", "EASI")]["mean_change"] == approx(((6 - 20) + (10 - 28) + (0 - 0)) / 3)
    assert high[("week-12", "EASI")]["mean_pct_change"] == approx((-70 + 100 * -18 / 28) / 2)  # zero baseline out
    assert high[("baseline", "IGE")]["mean"] == approx(1000.0)  # 2400 ng/mL
    assert high[("week-12", "EOSINOPHILS")]["n"] == 1 and high[("week-12", "EOSINOPHILS")]["sd"] is None
    low = {(s["visit"], s["measure"]): s for s in arms["low-dose"]["measures"]}
    assert low[("week-4", "EASI")]["mean"] == approx(16.0)  # same-day tie → later in the day (17)
    assert low[("week-12", "EASI")]["max"] == approx(12.0)  # deleted 3 is gone, unscheduled 1 left out
    iga = {(r["visit"], r["measure"]): r for r in arms["high-dose"]["responders"]}[("week-12", "IGA-SUCCESS")]
    assert (iga["n"], iga["responders"]) == (3, 2)
    # EASI-50 at week 12 with non-responder imputation: H1 (−70%) responds; H2 (−64%) too; H3 (zero baseline) and
    # H4 (withdrawn after week 4, no week-12 value) count as non-responders: 2 of 4, where the observed cases say 2/2
    easi50 = {(r["visit"], r["measure"]): r for r in arms["high-dose"]["responders"]}[("week-12", "EASI-50")]
    assert (easi50["n"], easi50["n_observed"], easi50["responders"]) == (4, 2, 2)
    # changes −14, −18, 0: mean −32/3; with 2 degrees of freedom the t quantile has a closed form,
    # t_p = (2p − 1) / √(2p(1 − p)), 4.3027 for p = 0.975
    change = high[("week-12", "EASI")]
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * statistics.stdev([-14, -18, 0]) / math.sqrt(3)
    assert (change["mean_change_ci_low"], change["mean_change_ci_high"]) == approx((-32 / 3 - half, -32 / 3 + half))


def test_dose_comparison_uses_fisher_and_mann_whitney(client, cohort):
    body = client.get(f"/studies/{cohort}/summary").json()
    assert len(body["comparisons"]) == 1
    comparison = body["comparisons"][0]
    assert (comparison["arm"], comparison["versus"]) == ("high-dose", "low-dose")
    rates = {(r["visit"], r["measure"]): r for r in comparison["responders"]}
    for visit in VISITS[1:]:
        for key in RESPONDER_KEYS:
            a, b = expected_responders("high-dose", key, visit), expected_responders("low-dose", key, visit)
            got = rates[(visit, key)]
            if a["n"] and b["n"]:
                odds, p = fisher_exact([[a["responders"], a["n"] - a["responders"]],
                                        [b["responders"], b["n"] - b["responders"]]])
                assert got["rate_difference"] == approx(a["rate"] - b["rate"])
                assert got["p_value"] == approx(p)
            else:
                assert got["rate_difference"] is None and got["p_value"] is None
    changes = {(c["visit"], c["measure"]): c for c in comparison["pct_change"]}
    for visit in VISITS[1:]:
        for m in MEASURES:
            a, b = pct_changes("high-dose", m, visit), pct_changes("low-dose", m, visit)
            got = changes[(visit, m)]
            assert (got["n"], got["n_versus"]) == (len(a), len(b))
            if a and b:
                assert got["pct_change_difference"] == approx(statistics.mean(a) - statistics.mean(b))
                assert got["p_value"] == approx(mannwhitneyu(a, b, alternative="two-sided").pvalue)
            else:
                assert got["p_value"] is None
    assert changes[("week-12", "EASI")]["n"] == 2 and changes[("week-12", "IGE")]["n_versus"] == 1


def test_summary_csv_has_exactly_the_tidy_rows(client, cohort):
    response = client.get(f"/studies/{cohort}/summary.csv")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["arm", "visit", "measure", "statistic", "value", "unit", "versus", "population"]
    assert all(len(r) == 8 for r in rows)
    subjects = [r for r in rows[1:] if r[2] == "SUBJECTS"]
    comparisons = [r for r in rows[1:] if r[6]]
    figures = [r for r in rows[1:] if r[2] != "SUBJECTS" and not r[6]]
    assert rows[1:] == subjects + figures + comparisons  # subject counts first, comparisons last
    # n enrolled / completed / withdrawn per arm, as the JSON (checked against hand-computed figures above) says
    summary = client.get(f"/studies/{cohort}/summary").json()
    assert subjects == [[a["name"], "all", "SUBJECTS", stat, str(a[stat]), "", "", "enrolled"]
                        for a in summary["arms"] for stat in ("enrolled", "completed", "withdrawn")]
    expected = expected_rows()
    assert [tuple(r[:4]) for r in figures] == [e[:4] for e in expected]
    for row, (_, _, _, stat, value) in zip(figures, expected, strict=True):
        assert row[7] == ("enrolled" if row[1] == "all" else "non-responder-imputation" if row[2].startswith("EASI-")
                          else "observed"), row
        if stat in ("n", "n_observed", "responders", "subjects", "events"):
            assert row[4] == str(value)
        else:
            assert float(row[4]) == approx(value) and row[4] == repr(float(row[4]))  # unrounded repr
    # each figure's unit as people write it (the catalogue's unit_display), none for counts and proportions
    units = {(r[2], r[3]): r[5] for r in figures}
    assert units[("EASI", "mean")] == units[("EASI", "sd")] == "score"
    assert units[("IGE", "mean")] == units[("IGE", "mean_change")] == "IU/mL"
    assert units[("EASI", "mean_change_ci_low")] == units[("EASI", "mean_change_ci_high")] == "score"
    assert units[("EOSINOPHILS", "median")] == "×10³/µL"
    assert units[("IGE", "mean_pct_change")] == "%"
    assert units[("EASI", "n")] == units[("EASI-50", "rate")] == units[("AE-ANY", "events")] == ""
    # zero counts are figures; statistics with nothing behind them are absent
    assert ["low-dose", "all", "AE-SERIOUS", "events", "0", "", "", "enrolled"] in rows
    assert ["low-dose", "week-4", "SCORAD", "n", "0", "", "", "observed"] in rows
    assert not any(r[:4] == ["high-dose", "week-12", "EOSINOPHILS", "sd"] for r in rows)
    assert not any(r[:4] == ["high-dose", "baseline", "EASI", "mean_change"] for r in rows)
    # the between-arm comparisons the JSON has, every figure of them, `versus` naming the other arm
    wanted = []
    for c in summary["comparisons"]:
        for r in c["responders"]:
            wanted += [(c["arm"], r["visit"], r["measure"], stat, r[stat], "", c["versus"])
                       for stat in ("rate_difference", "odds_ratio", "p_value") if r[stat] is not None]
        for r in c["pct_change"]:
            wanted += [(c["arm"], r["visit"], r["measure"], stat, r[stat],
                        "%" if stat == "pct_change_difference" else "", c["versus"])
                       for stat in ("n", "n_versus", "pct_change_difference", "u_statistic", "p_value")
                       if r[stat] is not None]
    assert wanted and len(comparisons) == len(wanted)
    for row, want in zip(comparisons, wanted, strict=True):
        assert (*row[:4], row[5], row[6]) == (*want[:4], want[5], want[6])
        assert float(row[4]) == approx(want[4])
    assert ["high-dose", "week-12", "EASI", "n", "2", "", "low-dose", "observed"] in comparisons
    assert {r[7] for r in comparisons if r[2] == "EASI-50"} == {"non-responder-imputation"}


def test_summary_measure_report_is_valid_fhir_with_the_same_figures(client, cohort):
    response = client.get(f"/fhir/ResearchStudy/{cohort}/$summary")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    report = response.json()
    MeasureReport.model_validate(report)
    assert (report["status"], report["type"]) == ("complete", "summary")
    assert report["measure"].startswith("https://")
    assert [g["code"]["coding"][0]["code"] for g in report["group"]] == ["high-dose", "low-dose"]
    high = report["group"][0]
    assert high["population"][0]["count"] == 4
    scores = {}
    for stratifier in high["stratifier"]:
        key = stratifier["code"][0]["text"]
        stat = stratifier["code"][1]["coding"][0]["code"]
        for stratum in stratifier["stratum"]:
            scores[(stratum["value"]["coding"][0]["code"], key, stat)] = stratum["measureScore"]["value"]
    figures = [r for r in expected_rows() if r[0] == "high-dose"]
    assert len(scores) == len(figures)
    for _, visit, key, stat, value in figures:
        assert scores[(visit, key, stat)] == approx(value)
    statement = client.get("/fhir/metadata").json()
    research_study = next(r for r in statement["rest"][0]["resource"] if r["type"] == "ResearchStudy")
    assert "summary" in [op["name"] for op in research_study.get("operation", [])]


def test_charts_are_valid_svg(client, cohort):
    ns = {"svg": "http://www.w3.org/2000/svg"}
    response = client.get(f"/studies/{cohort}/charts/EASI.svg")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(response.content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert [g.get("data-arm") for g in root.findall("svg:g", ns)] == ["high-dose", "low-dose"]
    assert len(root.findall(".//svg:polyline", ns)) == 2
    assert len(root.findall(".//svg:circle", ns)) == 6  # 2 arms × 3 visits
    bars = ET.fromstring(client.get(f"/studies/{cohort}/charts/EASI-50.svg").content)
    assert len(bars.findall(".//svg:rect[@class='bar']", ns)) == 4  # 2 arms × 2 visits
    # the subtitle names the study by its title, not its id; the unit as people write it
    title = client.get(f"/fhir/ResearchStudy/{cohort}").json()["title"]
    assert root.find("svg:desc", ns).text.startswith(title + " · score")
    assert cohort not in response.text
    ige = ET.fromstring(client.get(f"/studies/{cohort}/charts/IGE.svg").content)
    texts = [t.text for t in ige.iter("{http://www.w3.org/2000/svg}text")]
    assert "IU/mL" in texts and not any("[IU]" in (t or "") for t in texts)  # the y axis label
    eos = client.get(f"/studies/{cohort}/charts/EOSINOPHILS.svg").text
    assert "×10³/µL" in eos and "10*3/uL" not in eos
    assert title in bars.find("svg:desc", ns).text
    missing = client.get(f"/studies/{cohort}/charts/PASI.svg")
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("path", ["/studies/{id}/summary", "/studies/{id}/summary.csv", "/studies/{id}/report",
                                  "/studies/{id}/charts/EASI.svg", "/fhir/ResearchStudy/{id}/$summary"])
def test_unknown_study_is_a_404_operation_outcome(client, path):
    response = client.get(path.format(id="no-such-study"))
    assert response.status_code == 404
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "not-found" and body["issue"][0]["expression"]


def test_study_without_results_has_zero_counts_and_no_statistics(client):
    study_id = created(client.post("/fhir/ResearchStudy", json=study(arms=("arm-a", "arm-b", "arm-c"))))["id"]
    body = client.get(f"/studies/{study_id}/summary").json()
    assert [a["name"] for a in body["arms"]] == ["arm-a", "arm-b", "arm-c"]
    assert [(c["arm"], c["versus"]) for c in body["comparisons"]] == [
        ("arm-a", "arm-b"), ("arm-a", "arm-c"), ("arm-b", "arm-c")]
    rows = list(csv.reader(io.StringIO(client.get(f"/studies/{study_id}/summary.csv").text)))
    assert {r[3] for r in rows[1:]} == {"n", "n_observed", "responders", "subjects", "events", "enrolled",
                                        "completed", "withdrawn", "n_versus"}
    assert {r[4] for r in rows[1:]} == {"0"}
    MeasureReport.model_validate(client.get(f"/fhir/ResearchStudy/{study_id}/$summary").json())
    assert client.get(f"/studies/{study_id}/charts/EASI.svg").status_code == 200
    assert client.get(f"/studies/{study_id}/report").status_code == 200


def test_cli_prints_tables_and_writes_the_same_csv(client, cohort, settings, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from service.cli import app
    from service.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        tables = runner.invoke(app, ["summary", cohort], env={"COLUMNS": "200"})
        assert tables.exit_code == 0, tables.output
        assert "Efficacy by visit" in tables.output and "high-dose" in tables.output and "AE-SERIOUS" in tables.output
        assert "IU/mL" in tables.output and "×10³/µL" in tables.output  # units as people write them
        assert "[IU]/mL" not in tables.output and "10*3/uL" not in tables.output
        out = tmp_path / "summary.csv"
        written = runner.invoke(app, ["summary", cohort, "--csv", str(out)])
        assert written.exit_code == 0, written.output
        assert out.read_text() == client.get(f"/studies/{cohort}/summary.csv").text
        unknown = runner.invoke(app, ["summary", "no-such-study"])
        assert unknown.exit_code == 1
    finally:
        get_settings.cache_clear()


def test_the_report_writes_units_as_people_do(client, cohort):
    html = client.get(f"/studies/{cohort}/report").text
    assert "Serum total IgE (IU/mL)" in html and "Blood eosinophils (×10³/µL)" in html and "EASI (score)" in html
    assert "[IU]/mL" not in html and "10*3/uL" not in html
    summary = client.get(f"/studies/{cohort}/summary").json()
    assert {m["key"]: m["unit_display"] for m in summary["measures"]}["IGE"] == "IU/mL"
    assert {m["key"]: m["unit"] for m in summary["measures"]}["IGE"] == "[IU]/mL"  # the JSON keeps the UCUM code
