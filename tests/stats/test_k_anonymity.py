"""k-anonymous summaries for de-identified clients (`min_cell`): every form of the summary (JSON, CSV,
MeasureReport, charts, HTML) suppresses cells of fewer than k subjects; without `min_cell` nothing changes.
On the hand-made cohort of test_stats (high-dose 4 subjects, low-dose 3) and on the demo trial."""

import csv
import io

import pytest

from fhir_mappings import fhir
from service.db import read_session
from service.demo.load import load_demo
from service.stats import service as stats
from tests.stats.test_stats import cohort  # noqa: F401  (the fixture)

K = 4  # high-dose (4 enrolled) is shown, low-dose (3) is not


def summary(engine, study_id: str, min_cell: int | None):
    with read_session(engine) as session:
        return stats.summarize_study(session, study_id, min_cell=min_cell)


def cell(arm, visit: str, measure: str):
    return next(m for m in arm.measures if (m.visit, m.measure) == (visit, measure))


def test_small_arms_and_cells_are_suppressed_in_the_json(client, engine, cohort):  # noqa: F811
    full = summary(engine, cohort, None)
    assert full.min_cell is None and not any(m.suppressed for a in full.arms for m in a.measures)
    out = summary(engine, cohort, K)
    assert out.min_cell == K and out.period_start is None
    high, low = (next(a for a in out.arms if a.name == n) for n in ("high-dose", "low-dose"))
    # low-dose: 3 subjects, all of it
    assert (low.enrolled, low.completed, low.withdrawn, low.suppressed) == (None, None, None, True)
    assert all(m.n is None and m.mean is None and m.suppressed for m in low.measures)
    assert all(r.n is None and r.responders is None and r.rate is None for r in low.responders)
    assert all(s.subjects is None and s.events is None for s in low.safety)
    # high-dose: 4 enrolled shown; 1 withdrawn, so completed and withdrawn go
    assert (high.enrolled, high.completed, high.withdrawn) == (4, None, None)
    base = cell(high, "baseline", "EASI")
    assert (base.n, base.suppressed) == (4, False)
    assert base.mean == pytest.approx(cell(next(a for a in full.arms if a.name == "high-dose"), "baseline",
                                           "EASI").mean)
    assert base.min is None and base.max is None  # each is one subject's value
    week12 = cell(high, "week-12", "EASI")  # 3 subjects
    assert (week12.n, week12.mean, week12.median, week12.mean_change, week12.suppressed) == (None,) * 4 + (True,)
    week4 = cell(high, "week-4", "EASI")  # 3 subjects (H1, H3, H4)
    assert week4.n is None
    events = {s.measure: s for s in high.safety}
    assert events["AE-ANY"].subjects is None  # H1, H2, H4: 3
    assert (events["AE-SERIOUS"].subjects, events["AE-SERIOUS"].events) == (None, None)  # H4 alone
    assert (events["AE-SEVERE"].subjects, events["AE-SEVERE"].suppressed) == (None, True)
    # comparisons with a suppressed arm: nothing
    for comparison in out.comparisons:
        assert all(r.suppressed and r.p_value is None and r.rate_difference is None for r in comparison.responders)
        assert all(c.suppressed and c.n is None and c.p_value is None for c in comparison.pct_change)
    # zero counts of a shown arm stay
    assert cell(high, "baseline", "PRURITUS").n == 0


def test_k_of_one_suppresses_nothing_but_single_values(client, engine, cohort):  # noqa: F811
    full, out = summary(engine, cohort, None), summary(engine, cohort, 1)
    for a, b in zip(full.arms, out.arms, strict=True):
        assert (a.enrolled, a.completed, a.withdrawn) == (b.enrolled, b.completed, b.withdrawn)
        for m, n in zip(a.measures, b.measures, strict=True):
            assert (m.n, m.mean, m.mean_pct_change) == (n.n, n.mean, n.mean_pct_change) and n.max is None
    assert [c.model_dump() for c in full.comparisons] == [c.model_dump() for c in out.comparisons]


def test_csv_writes_suppressed_counts_as_less_than_k_and_drops_their_figures(client, engine, cohort):  # noqa: F811
    with read_session(engine) as session:
        text = stats.study_summary_csv(session, cohort, min_cell=K)
        plain = stats.study_summary_csv(session, cohort)
    rows = list(csv.reader(io.StringIO(text)))[1:]
    by_key = {tuple(r[:4]): r[4] for r in rows}
    assert by_key[("low-dose", "baseline", "EASI", "n")] == f"<{K}"
    assert ("low-dose", "baseline", "EASI", "mean") not in by_key
    assert by_key[("high-dose", "baseline", "EASI", "n")] == "4"
    assert ("high-dose", "baseline", "EASI", "mean") in by_key
    assert ("high-dose", "baseline", "EASI", "max") not in by_key
    assert by_key[("high-dose", "week-12", "EASI", "n")] == f"<{K}"
    assert by_key[("high-dose", "all", "AE-SERIOUS", "subjects")] == f"<{K}"
    assert by_key[("high-dose", "all", "AE-SERIOUS", "events")] == f"<{K}"
    assert all(r[4] == f"<{K}" or r[4] == "0" or float(r[4]) >= K for r in rows if r[3] in ("n", "subjects"))
    assert f"<{K}" not in plain and "high-dose,baseline,EASI,max" in plain


def test_measure_report_chart_and_html_respect_k(client, engine, cohort):  # noqa: F811
    with read_session(engine) as session:
        report = stats.study_measure_report(session, cohort, min_cell=K)
        chart = stats.study_chart(session, cohort, "EASI", min_cell=K)
        html = stats.study_report(session, cohort, min_cell=K)
    fhir.MeasureReport.model_validate(report)
    low = next(g for g in report["group"] if g["code"]["coding"][0]["code"] == "low-dose")
    assert all("count" not in p and p["_count"]["extension"][0]["valueCode"] == "masked" for p in low["population"])
    masked = [s for g in report["group"] for st in g["stratifier"] for s in st["stratum"]
              if "value" not in s["measureScore"]]
    assert masked and all(s["measureScore"]["extension"][0]["valueCode"] == "masked" for s in masked)
    assert "high-dose baseline: mean" in chart and "low-dose baseline: mean" not in chart
    assert "None" not in html and f"&lt;{K}" in html


def test_demo_trial_with_the_default_k(client, engine):
    load_demo(engine)
    study_id = _demo_study(engine)
    k = 5
    full, out = summary(engine, study_id, None), summary(engine, study_id, k)

    def ok(n):
        return n is None or n == 0 or n >= k

    for a, b in zip(full.arms, out.arms, strict=True):
        assert b.enrolled == a.enrolled and a.enrolled >= k
        for m, n in zip(a.measures, b.measures, strict=True):
            assert ok(n.n) and ok(n.n_change) and ok(n.n_pct_change) and n.min is None and n.max is None
            if n.n is not None:
                assert (n.n, n.mean, n.sd, n.median) == (m.n, m.mean, m.sd, m.median)
            else:
                assert 0 < m.n < k and n.mean is None
        for r, q in zip(a.responders, b.responders, strict=True):
            assert ok(q.n) and ok(q.responders)
            if q.responders is not None:
                assert ok(q.n - q.responders) and (q.rate, q.ci_low) == (r.rate, r.ci_low)
        for s, t in zip(a.safety, b.safety, strict=True):
            assert ok(t.subjects) and (t.subjects is None) == (0 < s.subjects < k)
    assert any(m.n is not None and m.mean is not None for a in out.arms for m in a.measures)


def _demo_study(engine) -> str:
    from sqlalchemy import select

    from service.store.models import IdentifierRecord, table_of

    identifiers = table_of(IdentifierRecord)
    with read_session(engine) as session:  # the phase IIa study (the demo's other study is its phase I)
        return session.execute(select(identifiers.c.resource_id).where(
            identifiers.c.resource_type == "ResearchStudy", identifiers.c.value == "NCT01927705")).scalar_one()
