"""Hand-written SVG charts of a summary (no plotting dependency): pure functions of a StudySummary.

- a measure: mean ± SD at each visit (x = target day), one line per arm, its unit as people write it (the
  catalogue's `unit_display`: `IU/mL`, not `[IU]/mL`);
- a responder key: responder rate per post-baseline visit as grouped bars, one bar per arm, with the 95%
  Wilson interval as a whisker.
The subtitle names the study by its title (its id only when it has none).
"""

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

from service.errors import NotFound
from service.stats.schemas import StudySummary

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
WIDTH, HEIGHT = 640, 380
LEFT, RIGHT, TOP, BOTTOM = 70, 150, 48, 56


def chart_keys(summary: StudySummary) -> list[str]:
    """Every key a chart can be drawn for: the catalogue's measures, then the responder keys."""
    responder_keys = list(dict.fromkeys(r.measure for arm in summary.arms for r in arm.responders))
    return [m.key for m in summary.measures] + responder_keys


def chart_svg(summary: StudySummary, key: str) -> str:
    measures = {m.key: m for m in summary.measures}
    if key in measures:
        return _line_chart(summary, key)
    if key in chart_keys(summary):
        return _bar_chart(summary, key)
    raise NotFound(f"No chart '{key}' for ResearchStudy/{summary.study_id}: use one of "
                   f"{', '.join(chart_keys(summary))}", expression="measure")


def study_label(summary: StudySummary, limit: int = 60) -> str:
    """The study as a subtitle names it: its title (cut to `limit` characters), else its id."""
    title = (summary.title or "").strip()
    if not title:
        return summary.study_id
    return title if len(title) <= limit else title[:limit - 1].rstrip() + "…"


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not math.isfinite(low) or not math.isfinite(high):
        low, high = 0.0, 1.0
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _label(value: float) -> str:
    return f"{value:g}"


def _frame(title: str, subtitle: str, y_label: str, ticks: Sequence[float], y) -> list[str]:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title, {chr(34): "&quot;"})}" '
        'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f"<desc>{escape(subtitle)}</desc>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{LEFT}" y="22" font-size="15" font-weight="600" fill="#222">{escape(title)}</text>',
        f'<text x="{LEFT}" y="38" fill="#666">{escape(subtitle)}</text>',
    ]
    for t in ticks:
        py = y(t)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py:.1f}" y2="{py:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{LEFT - 8}" y="{py + 4:.1f}" text-anchor="end" fill="#444">{_label(t)}</text>')
    mid = (TOP + HEIGHT - BOTTOM) / 2
    parts.append(f'<text x="18" y="{mid:.1f}" transform="rotate(-90 18 {mid:.1f})" text-anchor="middle" '
                 f'fill="#444">{escape(y_label)}</text>')
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" y2="{HEIGHT - BOTTOM}" '
                 'stroke="#444"/>')
    parts.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{HEIGHT - BOTTOM}" stroke="#444"/>')
    return parts


def _legend(names: list[str]) -> list[str]:
    parts = []
    for i, name in enumerate(names):
        y = TOP + 10 + i * 20
        color = PALETTE[i % len(PALETTE)]
        parts.append(f'<rect x="{WIDTH - RIGHT + 16}" y="{y - 9}" width="12" height="12" fill="{color}"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 34}" y="{y + 1}" fill="#222" class="legend">{escape(name)}</text>')
    return parts


def _no_data() -> str:
    cx, cy = (LEFT + WIDTH - RIGHT) / 2, (TOP + HEIGHT - BOTTOM) / 2
    return f'<text x="{cx:.1f}" y="{cy:.1f}" text-anchor="middle" fill="#888" class="no-data">no counted results</text>'


def _line_chart(summary: StudySummary, key: str) -> str:
    measure = next(m for m in summary.measures if m.key == key)
    days = {v.name: v.target_day for v in summary.visits}
    series = []
    for arm in summary.arms:
        points = [(days[s.visit], s.visit, s.mean, s.sd or 0.0, s.n) for s in arm.measures
                  if s.measure == key and s.mean is not None]
        series.append((arm.name, sorted(points)))
    ys = [p[2] + sign * p[3] for _, points in series for p in points for sign in (-1, 1)]
    low = min([0.0] + ys) if ys else 0.0
    ticks = _nice_ticks(low, max(ys) if ys else 1.0)
    y0, y1 = ticks[0], ticks[-1]
    d0, d1 = min(days.values()), max(days.values())
    span = (d1 - d0) or 1
    plot_w = WIDTH - LEFT - RIGHT - 40

    def x(day: float) -> float:
        return LEFT + 20 + (day - d0) / span * plot_w

    def y(value: float) -> float:
        return TOP + (y1 - value) / ((y1 - y0) or 1) * (HEIGHT - TOP - BOTTOM)

    title = f"{measure.display}: mean ± SD by visit"
    unit = measure.unit_display or measure.unit
    parts = _frame(title, f"{study_label(summary)} · {unit} · counted results only", unit, ticks, y)
    for v in summary.visits:
        px = x(v.target_day)
        parts.append(f'<text x="{px:.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle" fill="#444">'
                     f'{escape(v.name)}</text>')
        parts.append(f'<text x="{px:.1f}" y="{HEIGHT - BOTTOM + 32}" text-anchor="middle" fill="#888" '
                     f'font-size="10">day {v.target_day}</text>')
    n_series = max(len(series), 1)
    for i, (name, points) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        offset = (i - (n_series - 1) / 2) * 6  # keep error bars of the arms apart
        coords = [(x(day) + offset, y(mean)) for day, _, mean, _, _ in points]
        parts.append(f'<g class="series" data-arm="{escape(name)}">')
        if len(coords) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in coords)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for (px, py), (_, visit, mean, sd, n) in zip(coords, points, strict=True):
            top, bottom = y(mean + sd), y(mean - sd)
            parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top:.1f}" y2="{bottom:.1f}" stroke="{color}"/>')
            for cap in (top, bottom):
                parts.append(f'<line x1="{px - 4:.1f}" x2="{px + 4:.1f}" y1="{cap:.1f}" y2="{cap:.1f}" '
                             f'stroke="{color}"/>')
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{color}">'
                         f"<title>{escape(name)} {escape(visit)}: mean {mean:.4g} ± {sd:.4g} (n={n})</title>"
                         "</circle>")
        parts.append("</g>")
    if not any(points for _, points in series):
        parts.append(_no_data())
    parts += _legend([name for name, _ in series])
    parts.append("</svg>")
    return "\n".join(parts)


def _bar_chart(summary: StudySummary, key: str) -> str:
    visits = [v.name for v in summary.visits][1:]
    arms = [a.name for a in summary.arms]
    rates = {(a.name, r.visit): r for a in summary.arms for r in a.responders if r.measure == key}
    ticks = [0, 20, 40, 60, 80, 100]

    def y(value: float) -> float:
        return TOP + (100 - value) / 100 * (HEIGHT - TOP - BOTTOM)

    population = next((r.population for r in rates.values()), "observed")
    parts = _frame(f"{key}: responder rate by visit", f"{study_label(summary)} · {population} · bars: rate · "
                   "whiskers: 95% Wilson interval", "responders (%)", ticks, y)
    plot_w = WIDTH - LEFT - RIGHT
    group_w = plot_w / max(len(visits), 1)
    bar_w = min(48.0, group_w * 0.7 / max(len(arms), 1))
    for g, visit in enumerate(visits):
        centre = LEFT + group_w * (g + 0.5)
        parts.append(f'<text x="{centre:.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle" fill="#444">'
                     f"{escape(visit)}</text>")
        for i, arm in enumerate(arms):
            r = rates.get((arm, visit))
            if r is None or r.rate is None:
                continue
            assert r.ci_low is not None and r.ci_high is not None, "a rate comes with its Wilson interval"
            color = PALETTE[i % len(PALETTE)]
            bx = centre + (i - len(arms) / 2) * bar_w
            top = y(100 * r.rate)
            parts.append(f'<rect class="bar" data-arm="{escape(arm)}" x="{bx:.1f}" y="{top:.1f}" '
                         f'width="{bar_w - 2:.1f}" height="{HEIGHT - BOTTOM - top:.1f}" fill="{color}">'
                         f"<title>{escape(arm)} {escape(visit)}: {r.responders}/{r.n} = {100 * r.rate:.1f}% "
                         f"(95% CI {100 * r.ci_low:.1f}–{100 * r.ci_high:.1f}%)</title></rect>")
            wx = bx + (bar_w - 2) / 2
            parts.append(f'<line x1="{wx:.1f}" x2="{wx:.1f}" y1="{y(100 * r.ci_high):.1f}" '
                         f'y2="{y(100 * r.ci_low):.1f}" stroke="#222"/>')
            label_y = min(top, y(100 * r.ci_high)) - 4
            parts.append(f'<text x="{wx:.1f}" y="{label_y:.1f}" text-anchor="middle" font-size="10" fill="#222">'
                         f"{r.responders}/{r.n}</text>")
    if not any(r.rate is not None for r in rates.values()):
        parts.append(_no_data())
    parts += _legend(arms)
    parts.append("</svg>")
    return "\n".join(parts)
