"""Before and after: two result files of the same benchmark (bench/ingest.py or bench/search.py) side by side, as
a table on the terminal and a grouped bar chart (share of the bare ceiling of each run's own rounds, so figures
measured minutes apart compare fairly).

    .venv/bin/python bench/compare.py BEFORE.json AFTER.json OUT.svg [--labels before,after]
"""

import argparse
import json
from pathlib import Path


def figures(result: dict) -> dict[str, tuple[float, float]]:
    """{figure: (share of bare, rate)} of an ingest or a search result file."""
    found: dict[str, tuple[float, float]] = {}
    if "runs" in result and isinstance(result["runs"], list):  # ingest
        for run in result["runs"]:
            if run.get("auth", "off") != "off":  # an --auth off,smart run: the smart side has its own comparison
                continue
            found[f"{run['mode']} {run['database']}"] = (run["share_of_bare"], run["rate"])
    else:  # search
        for query, levels in result["summary"].items():
            if query == "bare":
                continue
            for clients, value in levels.items():
                if value.get("share_of_bare") is not None:
                    found[f"{query} x{clients}"] = (value["share_of_bare"], value["throughput_rps"])
    return found


def svg(names: list[str], before: dict, after: dict, labels: tuple[str, str], title: str) -> str:
    width, height, left, top, bottom = max(460, 90 + 70 * len(names)), 340, 50, 60, 90
    scale = (height - top - bottom) / max(0.01, max(v[0] for d in (before, after) for v in d.values()))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11">', f'<text x="{left}" y="20" font-size="13">{title}</text>']
    base = height - bottom
    parts.append(f'<line x1="{left}" y1="{base}" x2="{width - 10}" y2="{base}" stroke="#333"/>')
    for i, name in enumerate(names):
        x = left + 10 + i * 70
        for j, (data, colour) in enumerate(((before, "#9aa5b1"), (after, "#2b6cb0"))):
            if name not in data:
                continue
            share, rate = data[name]
            h = share * scale
            parts.append(f'<rect x="{x + j * 26}" y="{base - h:.1f}" width="24" height="{h:.1f}" fill="{colour}">'
                         f'<title>{labels[j]}: {share:.0%} of bare, {rate:,.0f}/s</title></rect>')
            parts.append(f'<text x="{x + j * 26 + 12}" y="{base - h - 3:.1f}" text-anchor="middle" '
                         f'font-size="9">{share:.0%}</text>')
        parts.append(f'<text transform="translate({x + 25},{base + 10}) rotate(40)" font-size="10">{name}</text>')
    for j, (label, colour) in enumerate(zip(labels, ("#9aa5b1", "#2b6cb0"), strict=True)):
        parts.append(f'<rect x="{left + j * 130}" y="28" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{left + 14 + j * 130}" y="37">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("out", type=Path, help="the SVG to write")
    parser.add_argument("--labels", default="before,after")
    parser.add_argument("--title", default="share of the bare ceiling, median of the rounds")
    args = parser.parse_args()
    labels = tuple(args.labels.split(",", 1))
    before, after = figures(json.loads(args.before.read_text())), figures(json.loads(args.after.read_text()))
    names = [n for n in before if n in after]
    print(f"{'figure':28} {labels[0]:>22} {labels[1]:>22}")
    for name in names:
        (sb, rb), (sa, ra) = before[name], after[name]
        print(f"{name:28} {rb:>12,.0f}/s {sb:>6.0%}   {ra:>12,.0f}/s {sa:>6.0%}")
    args.out.write_text(svg(names, before, after, (labels[0], labels[1]), args.title))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
