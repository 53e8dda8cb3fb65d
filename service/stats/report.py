"""The summary as one HTML page a person can read: tables (rounded for display) and the SVG charts inline."""

from html import escape

from service.stats.charts import chart_svg
from service.stats.schemas import StudySummary

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
h3 { margin-top: 1.6rem; } .meta { color: #555; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #d6d6d6; padding: .25rem .6rem; text-align: right; }
th { background: #f3f5f7; } td.l, th.l { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
figure { margin: .5rem 0 1rem; } figcaption { color: #555; font-size: .85rem; }
.note { color: #555; font-size: .85rem; max-width: 60rem; }
nav a { margin-right: .8rem; }
"""


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(low: float | None, high: float | None) -> str:
    return "–" if low is None or high is None else f"{low:.2f} – {high:.2f}"


POPULATION_TEXT = {
    "observed": "observed cases (n: subjects judged from their baseline and visit values)",
    "non-responder-imputation": "non-responder imputation (n: every dosed subject expected at the visit; "
                                "those without the values, the observed column's rest, count as non-responders)",
}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _count(value: int | None, summary: StudySummary) -> str:
    """A count, or `<k` where it is suppressed (de-identified view)."""
    return str(value) if value is not None else (f"<{summary.min_cell}" if summary.min_cell else "–")


def _table(table_id: str, caption: str, head: list[str], rows: list[list[str]], left: int = 1) -> str:
    out = [f'<table id="{table_id}"><caption class="l">{escape(caption)}</caption><thead><tr>']
    out += [f'<th class="{"l" if i < left else ""}" scope="col">{escape(h)}</th>' for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{escape(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def report_html(summary: StudySummary) -> str:
    sid = escape(summary.study_id)
    title = escape(summary.title or summary.study_id)
    period = (f"{summary.period_start} – {summary.period_end}" if summary.period_start else "no data yet")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Summary · {title}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{title}</h1>",
        f'<p class="meta">ResearchStudy <code>{sid}</code> · catalogue <code>{escape(summary.catalogue)}</code> · '
        f"{escape(period)} · computed {escape(summary.generated.strftime('%Y-%m-%d %H:%M UTC'))}</p>",
        f'<nav><a href="/studies/{sid}/summary">JSON</a><a href="/studies/{sid}/summary.csv">CSV</a>'
        f'<a href="/fhir/ResearchStudy/{sid}/$summary">FHIR MeasureReport</a></nav></header>',
        '<p class="note">Counted: results with status ' + escape(", ".join(summary.counted_statuses))
        + " at the visits below (the value closest to the target day; on a tie the later one). Population of the"
        " efficacy tables: observed (n subjects with a value; change and % change from baseline over subjects with"
        " both values, % change only where baseline &gt; 0), the 95% confidence interval of the mean change from"
        " the t-distribution. Each responder table names its population: observed, or non-responder imputation"
        " (n: every dosed subject expected at the visit; those without the values count as non-responders)."
        " Safety counts actual adverse events of every enrolled subject. Figures are rounded for display; the JSON"
        " and CSV carry them unrounded."
        + (f" De-identified view: a count of fewer than {summary.min_cell} subjects shows as &lt;{summary.min_cell}"
           " and the figures behind it are left out." if summary.min_cell else "") + "</p>",
        "<h2>Arms</h2>",
        _table("arms", "Subjects per arm", ["Arm", "Dose", "Enrolled", "Completed", "Withdrawn"],
               [[a.name, a.dose or "", *(_count(n, summary) for n in (a.enrolled, a.completed, a.withdrawn))]
                for a in summary.arms],
               left=2),
        "<h2>Efficacy by visit</h2>",
    ]
    for m in summary.measures:
        rows = [[arm.name, s.visit, _count(s.n, summary), _num(s.mean), _num(s.sd), _num(s.median), _num(s.min),
                 _num(s.max), _num(s.mean_change), _interval(s.mean_change_ci_low, s.mean_change_ci_high),
                 _num(s.mean_pct_change, 1)]
                for arm in summary.arms for s in arm.measures if s.measure == m.key]
        unit = m.unit_display or m.unit
        parts.append(f'<section class="measure" id="measure-{escape(m.key)}"><h3>{escape(m.display)} '
                     f"({escape(unit)})</h3>")
        parts.append(f'<figure>{chart_svg(summary, m.key)}<figcaption>{escape(m.display)}: mean ± SD per visit, '
                     "one line per arm.</figcaption></figure>")
        parts.append(_table(f"table-{m.key}", f"{m.display} ({unit}), population: observed",
                            ["Arm", "Visit", "n", "Mean", "SD", "Median", "Min", "Max", "Mean change",
                             "95% CI of mean change", "Mean % change"], rows, left=2))
        parts.append("</section>")

    keys = list(dict.fromkeys(r.measure for arm in summary.arms for r in arm.responders))
    if keys:
        parts.append("<h2>Responders</h2>")
    for key in keys:
        rows = [[arm.name, r.visit, _count(r.n, summary), _count(r.n_observed, summary),
                 _count(r.responders, summary), _pct(r.rate),
                 "–" if r.ci_low is None or r.ci_high is None else f"{100 * r.ci_low:.1f}% – {100 * r.ci_high:.1f}%"]
                for arm in summary.arms for r in arm.responders if r.measure == key]
        parts.append(f'<section class="responder" id="responder-{escape(key)}"><h3>{escape(key)}</h3>')
        parts.append(f"<figure>{chart_svg(summary, key)}<figcaption>{escape(key)}: responder rate with its 95% "
                     "Wilson interval.</figcaption></figure>")
        population = next((r.population for arm in summary.arms for r in arm.responders if r.measure == key),
                          "observed")
        parts.append(f'<p class="note population">Population: {escape(POPULATION_TEXT.get(population, population))}'
                     "</p>")
        parts.append(_table(f"table-{key}", f"{key}, population: {population}",
                            ["Arm", "Visit", "n", "Observed", "Responders", "Rate", "95% CI (Wilson)"], rows, left=2))
        parts.append("</section>")

    parts.append("<h2>Safety</h2>")
    if summary.arms:
        head = ["Arm"] + [f"{s.measure} {what}" for s in summary.arms[0].safety for what in ("subjects", "events")]
        rows = [[arm.name] + [_count(v, summary) for s in arm.safety for v in (s.subjects, s.events)]
                for arm in summary.arms]
        parts.append(_table("safety", "Adverse events (actual) per arm: subjects with ≥ 1 event, and events",
                            head, rows))

    if summary.comparisons:
        parts.append("<h2>Dose comparison</h2>")
        rows = [[f"{c.arm} vs {c.versus}", r.visit, r.measure, _pct(r.rate_difference), _num(r.odds_ratio),
                 _p(r.p_value)] for c in summary.comparisons for r in c.responders]
        parts.append(_table("comparison-responders", "Responder rates: difference, Fisher's exact test",
                            ["Arms", "Visit", "Responder", "Rate difference", "Odds ratio", "p"], rows, left=3))
        rows = [[f"{c.arm} vs {c.versus}", r.visit, r.measure,
                 f"{_count(r.n, summary)} / {_count(r.n_versus, summary)}",
                 _num(r.pct_change_difference, 1), _p(r.p_value)] for c in summary.comparisons for r in c.pct_change]
        parts.append(_table("comparison-change", "% change from baseline: difference of means, Mann–Whitney U",
                            ["Arms", "Visit", "Measure", "n", "Difference (points of %)", "p"], rows, left=3))
    parts.append("</body></html>")
    return "\n".join(parts)
