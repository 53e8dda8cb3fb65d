"""Sync benchmark (issue 13): how fast does a sync pull Observations from an EHR's FHIR API?

The upstream EHR is a second instance of this service (a uvicorn `service.main:app` on its own fresh database):
the generated cohort of bench/ingest.py (one study, N enrolled patients, their Observations) is loaded into it,
the Observations as transaction Bundles of `--bundle-size` from one client thread, timed: that is **the FHIR
Bundle ingest rate of the same results in the same run**. A second fresh database of the same kind gets the same
study and enrolled patients (same MRNs); then `trial-fhir sync run` (service.ehr.service.run_sync, in this process,
as the command line runs it) pulls every patient's Observations from the upstream through the core: **the sync
rate**, and once more with nothing changed upstream (**the re-sync**, in seconds: every patient's searches again,
only the few resources at each watermark read again, none stored). The Bundle ingest is one client thread into
one replica; the sync is one job (four patients at a time, a page fetched while the last is stored). With `bulk` in
`--modes`, a third fresh database gets the same again through **Bulk Data** (the source in `auto` mode: the sync
finds the upstream study's Group by itself and exports it; **the bulk rate**, and **the bulk re-sync** with
nothing new: the export `_since` the last manifest). The bare
ceiling (fhir.resources R4B `model_validate` of the same resources, one core) is measured before each round, as
bench/ingest.py does, and every rate is reported as a share of it.

Results: bench/results/issue13/sync.json and sync.svg.

    .venv/bin/python bench/sync.py                                          # 20,000 Observations, 3 rounds
    .venv/bin/python bench/sync.py --observations 2000 --patients 20 --rounds 1 --databases sqlite
    .venv/bin/python bench/sync.py --modes bulk --output bench/results/issue13/sync-bulk.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from ingest import (  # bench/ingest.py
    ROOT,
    Cohort,
    bare_rate,
    console,
    count_rows,
    load_setup,
    machine,
    make_cohort,
    observation_bundles,
    post_all,
    running_service,
    scratch_database,
)
from rich.table import Table

sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results" / "issue13"
FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


#: --modes: the source's pull mode, and the labels of its two syncs
MODES = {"search": ("search", "sync", "re-sync"), "bulk": ("auto", "bulk", "re-bulk")}


def pull_twice(kind: str, cohort: Cohort, args, upstream: str, mode: str) -> list[tuple[str, Any, float]]:
    """A fresh database with the cohort's study and enrolled patients pulls from `upstream` twice (the second with
    nothing new upstream) in `mode`: (label, counts, seconds) of each."""
    from service.db import make_engine
    from service.ehr.service import add_source, run_sync
    from service.settings import Settings

    pull_mode, *labels = MODES[mode]
    syncs = []
    with scratch_database(kind) as down_url:
        with running_service(down_url) as downstream, httpx.Client(base_url=downstream, timeout=300) as client:
            load_setup(client, cohort)  # the same study and enrolled patients (their MRNs), no results
        settings = Settings(database_url=down_url, auth="off", ehr_page_size=args.page_size,
                            export_worker=False, ehr_wait_cap_s=1.0, _env_file=None)
        engine = make_engine(down_url)
        try:
            add_source(engine, "upstream", f"{upstream}/fhir", pull_mode=pull_mode)
            for label in labels:
                with console.status(f"{label} {kind}: {cohort.patients} patients upstream"):
                    started = time.perf_counter()
                    counts = run_sync(engine, settings, "upstream")
                    elapsed = time.perf_counter() - started
                syncs.append((label, counts, elapsed))
                console.print(f"{label} {kind}: {counts.pulled:,} pulled in {elapsed:.1f} s "
                              f"({counts.pulled / elapsed:,.0f}/s; {counts.mode}, created {counts.created:,}, "
                              f"unchanged {counts.unchanged:,}, refused {counts.refused}, "
                              f"{counts.requests:,} requests)")
        finally:
            engine.dispose()
        stored = count_rows(down_url, cohort.study_id)
    first, again = syncs[0][1], syncs[1][1]
    if (stored["measurement"] != cohort.measurements or first.created != cohort.measurements or again.created
            or first.mode != ("bulk" if mode == "bulk" else "search")):
        raise RuntimeError(f"{kind} {mode}: the sync ({first.mode}) stored {stored['measurement']} measurements of "
                           f"{cohort.measurements} (created {first.created}, then {again.created})")
    return syncs


def one_round(kind: str, cohort: Cohort, args) -> dict:
    with scratch_database(kind) as up_url:
        with running_service(up_url, extra_env={"TRIAL_FHIR_EXPORT_POLL_INTERVAL_S": "0.2"}) as upstream:
            with httpx.Client(base_url=upstream, timeout=300) as client:
                load_setup(client, cohort)
            bundles = observation_bundles(cohort.observations, args.bundle_size)
            n, bundle_s = post_all([upstream], "/fhir", bundles, f"bundle ingest {kind}", 1, headers=FHIR_JSON,
                                   expected=200)
            syncs = [s for mode in args.modes for s in pull_twice(kind, cohort, args, upstream, mode)]
    return {"database": kind, "observations": n,
            "bundle": {"seconds": round(bundle_s, 3), "rate": round(n / bundle_s, 1)},
            **{label: {"seconds": round(s, 3), "rate": round(c.pulled / s, 1), "requests": c.requests,
                       "pages": c.pages, "created": c.created, "updated": c.updated,
                       "unchanged": c.unchanged, "refused": c.refused}
               for label, c, s in syncs},
            "load_average_before": round(os.getloadavg()[0], 2)}


def write_svg(path: Path, bare: dict, runs: list[dict]) -> None:
    bars = [("bare R4B model_validate (1 core)", bare["rate"], "#777777")]
    colours = {"bundle": "#4c78a8", "sync": "#54a24b", "bulk": "#e45756"}
    for r in runs:
        for what in ("bundle", "sync", "bulk"):
            if what not in r:
                continue
            label = {"bundle": "Bundle ingest", "sync": "sync (search)", "bulk": "sync (Bulk Data)"}[what]
            bars.append((f"{label} {r['database']}", r[what]["rate"], colours[what]))
    width, left, bar_h, gap, top = 780, 250, 30, 12, 56
    height = top + len(bars) * (bar_h + gap) + 20
    scale = (width - left - 150) / max(b[1] for b in bars)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             'font-size="13">', f'<rect width="{width}" height="{height}" fill="white"/>',
             '<text x="16" y="26" font-size="16" font-weight="bold">trial-fhir: Observations per second, pulled '
             'from a second instance vs Bundle ingest</text>',
             f'<text x="16" y="44" fill="#555">{runs[0]["observations"]:,} Observations; one stream each; median of '
             f'{len(bare["rounds"])} round(s); share of the bare rate in brackets</text>']
    for i, (label, rate, colour) in enumerate(bars):
        y = top + i * (bar_h + gap)
        w = max(1.0, rate * scale)
        parts.append(f'<text x="{left - 8}" y="{y + bar_h / 2 + 5}" text-anchor="end">{label}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>')
        share = f" ({100 * rate / bare['rate']:.0f}%)" if i else ""
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + bar_h / 2 + 5}">{rate:,.0f}/s{share}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", type=int, default=20_000, help="Observations upstream (default 20000)")
    parser.add_argument("--patients", type=int, default=200, help="enrolled patients (default 200)")
    parser.add_argument("--bundle-size", type=int, default=100, help="entries per transaction Bundle (default 100)")
    parser.add_argument("--page-size", type=int, default=100, help="the sync's _count (TRIAL_FHIR_EHR_PAGE_SIZE)")
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    parser.add_argument("--modes", default="search,bulk", help="comma-separated: search, bulk (default both)")
    parser.add_argument("--seed", type=int, default=20240110)
    parser.add_argument("--output", type=Path, default=RESULTS / "sync.json")
    args = parser.parse_args(argv)
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if not databases or not set(databases) <= {"sqlite", "postgres"}:
        parser.error("--databases takes sqlite,postgres")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or not set(args.modes) <= set(MODES):
        parser.error("--modes takes search,bulk")
    measured = [label for mode in args.modes for label in MODES[mode][1:]]
    cohort = make_cohort(args.observations, args.patients, args.seed)
    console.print(f"cohort: 1 study, {args.patients} enrolled patients, {len(cohort.observations):,} Observations")

    bare_rounds, by_db = [], {}
    for round_no in range(1, args.rounds + 1):
        bare = {**bare_rate(cohort.observations), "round": round_no}
        bare_rounds.append(bare)
        for kind in databases:
            run = one_round(kind, cohort, args)
            run.update(round=round_no, **{f"{w}_share_of_bare": round(run[w]["rate"] / bare["rate"], 3)
                                          for w in ("bundle", *measured)},
                       **{f"{w}_vs_bundle": round(run[w]["rate"] / run["bundle"]["rate"], 3)
                          for w in measured if not w.startswith("re-")})
            by_db.setdefault(kind, []).append(run)
    bare = {"resources": bare_rounds[0]["resources"],
            "rate": round(statistics.median(b["rate"] for b in bare_rounds), 1), "rounds": bare_rounds}
    runs = []
    for kind, items in by_db.items():
        runs.append({"database": kind, "observations": items[0]["observations"],
                     **{w: {"rate": round(statistics.median(r[w]["rate"] for r in items), 1),
                            "seconds": round(statistics.median(r[w]["seconds"] for r in items), 3),
                            "requests": items[0][w].get("requests")} for w in ("bundle", *measured)},
                     **{f"{w}_vs_bundle": round(statistics.median(r[f"{w}_vs_bundle"] for r in items), 3)
                        for w in measured if not w.startswith("re-")},
                     "rounds": items})
    result = {"benchmark": "sync", "when": datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine(),
              "cohort": {"patients": cohort.patients, "observations": cohort.measurements, "seed": args.seed},
              "page_size": args.page_size, "bundle_size": args.bundle_size, "bare": bare, "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    write_svg(args.output.with_suffix(".svg"), bare, runs)
    table = Table(title=f"sync vs Bundle ingest (Observations/s, median of {args.rounds} round(s))")
    columns = ["database", "Bundle ingest /s"]
    for w in measured:
        columns += [f"{w}, nothing new (s)"] if w.startswith("re-") else [f"{w} /s", f"{w} / Bundle"]
    for col in [*columns, "bare /s"]:
        table.add_column(col, justify="right" if col != "database" else "left")
    for r in runs:
        cells = [r["database"], f"{r['bundle']['rate']:,.0f}"]
        for w in measured:
            cells += ([f"{r[w]['seconds']:.1f}"] if w.startswith("re-") else
                      [f"{r[w]['rate']:,.0f}", f"{100 * r[f'{w}_vs_bundle']:.0f}%"])
        table.add_row(*cells, f"{bare['rate']:,.0f}")
    console.print(table)
    console.print(f"written: {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output} "
                  f"and {args.output.with_suffix('.svg').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
