"""SDTM benchmark (issue 16): the full SDTM export of one study beside the Bulk NDJSON export of the same resources,
in the same run, on the same data, with peak memory.

Generates the data as bench/export.py does (its `generate` and `load`: bulk inserts of realistic stored JSON and
typed rows; default 10,000 patients and 300,000 Observations on PostgreSQL, in a scratch database dropped
afterwards). Then, each in a fresh child process sampling its RSS every 20 ms (bench/export.py `RssSampler`):

* `bulk`      — `service.export.service.write_export` of the study's Group (Patient, ResearchStudy, ResearchSubject,
                Observation, AdverseEvent as NDJSON): what `GET /fhir/Group/{id}/$export` writes;
* `sdtm-json` — every SDTM dataset of the study as Dataset-JSON (`service.sdtm.service.build` + the writer): the
                same pass `GET /studies/{id}/sdtm/{NAME}.json` runs;
* `sdtm-all`  — `service.sdtm.service.export_all`, what `trial-fhir sdtm export` writes: every SDTM and ADaM
                dataset as Dataset-JSON and as XPORT v5, and define.xml.

Target: SDTM at most 2x the Bulk export's time, memory flat. Results: bench/results/sdtm-<db>.json and .svg.

    .venv/bin/python bench/sdtm.py                                  # PostgreSQL, 10k patients, 300k results
    .venv/bin/python bench/sdtm.py --patients 2000 --observations 60000 --databases sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = Path(__file__).resolve().parent / "results"
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MODES = ("bulk", "sdtm-json", "sdtm-all")


def run_mode(mode: str, url: str, out: Path, study: str) -> int:
    """One export; the bytes written."""
    from service.db import make_engine
    engine = make_engine(url)
    try:
        if mode == "bulk":
            from service.export.service import ExportSpec, write_export
            _, outputs = write_export(engine, ExportSpec(group_id=study, level="group"), out)
            return sum(o["bytes"] for o in outputs)
        from service.sdtm import service
        if mode == "sdtm-json":
            out.mkdir(parents=True, exist_ok=True)
            built = service.build(engine, study)
            try:
                return sum(service._write(built, ds, "json", out).stat().st_size for ds in built.datasets.values())
            finally:
                built.close()
        return sum(p.stat().st_size for p in service.export_all(engine, study, out))
    finally:
        engine.dispose()


def child(mode: str, url: str, out: str, study: str) -> None:
    import gc

    import service.export.service  # noqa: F401  (imported before the baseline, as in a running server)
    import service.sdtm.service  # noqa: F401

    from export import RssSampler
    gc.collect()
    before = RssSampler.rss()
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        size = run_mode(mode, url, Path(out), study)
        elapsed = time.perf_counter() - t0
    peak = max(s[1] for s in sampler.samples)
    step = max(1, len(sampler.samples) // 60)
    print(json.dumps({"mode": mode, "bytes": size, "seconds": round(elapsed, 3),
                      "rss_before_mb": round(before / 1e6, 1), "rss_peak_mb": round(peak / 1e6, 1),
                      "rss_growth_mb": round((peak - before) / 1e6, 1),
                      "rss_timeline_mb": [(t, round(r / 1e6, 1)) for t, r in sampler.samples[::step]]}))


def run_child(mode: str, url: str, study: str) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"sdtm-{mode}-") as out:
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--url", url, "--out", out,
                               "--study", study], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_svg(path: Path, db: str, result: dict) -> None:
    runs = result["runs"]
    width, bar_h, gap, left = 780, 34, 18, 120
    top = 50
    height = top + len(runs) * (bar_h + gap) + 40
    bulk = next(r["seconds"] for r in runs if r["mode"] == "bulk")
    scale = (width - left - 300) / max(2 * bulk, *(r["seconds"] for r in runs))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="13">', f'<text x="10" y="24" font-size="16">SDTM vs Bulk export on {db}, '
             f'{result["patients"]} patients, {result["observations"]} results: seconds (peak RSS growth)</text>']
    colours = {"bulk": "#999999", "sdtm-json": "#2b7bb9", "sdtm-all": "#1f9d55"}
    for i, r in enumerate(runs):
        y = top + i * (bar_h + gap)
        w = r["seconds"] * scale
        parts.append(f'<text x="10" y="{y + bar_h / 2 + 5}">{r["mode"]}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colours[r["mode"]]}"/>')
        parts.append(f'<text x="{left + w + 8:.1f}" y="{y + bar_h / 2 + 5}">{r["seconds"]} s, '
                     f'{r["ratio_to_bulk"]}x bulk ({r["rss_growth_mb"]:+} MB RSS)</text>')
    target_x = left + 2 * bulk * scale
    parts.append(f'<line x1="{target_x:.1f}" y1="{top - 8}" x2="{target_x:.1f}" y2="{height - 30}" '
                 f'stroke="#c00" stroke-dasharray="4 3"/><text x="{target_x + 4:.1f}" y="{height - 14}" '
                 f'fill="#c00">target: 2x bulk</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts))


def bench_database(db: str, args) -> dict:
    from rich.console import Console
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from export import generate, load

    console = Console()
    admin = None
    if db == "postgres":
        name = f"bench_sdtm_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        tmp = None
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-sdtm-")
        url = f"sqlite:///{tmp.name}/bench.db"
    try:
        with console.status(f"[{db}] generating and loading {args.patients} patients, {args.observations} "
                            "results"):
            t0 = time.perf_counter()
            study, rows = generate(args.observations, args.patients, args.events)
            load(url, rows)
            del rows
        console.print(f"[{db}] data ready in {time.perf_counter() - t0:.1f} s")
        runs = []
        for mode in args.modes:
            best = None
            for i in range(args.repeat):
                with console.status(f"[{db}] {mode} (run {i + 1} of {args.repeat})"):
                    r = run_child(mode, url, study)
                best = r if best is None or r["seconds"] < best["seconds"] else best
            runs.append(best)
            console.print(f"[{db}] {mode:<9} {best['seconds']:7.2f} s  {best['bytes'] / 1e6:7.1f} MB   RSS "
                          f"{best['rss_before_mb']} -> peak {best['rss_peak_mb']} MB ({best['rss_growth_mb']:+} MB)")
        bulk = next(r["seconds"] for r in runs if r["mode"] == "bulk")
        for r in runs:
            r["ratio_to_bulk"] = round(r["seconds"] / bulk, 2)
        result = {"database": db, "patients": args.patients, "observations": args.observations,
                  "adverse_events": args.events, "repeat_best_of": args.repeat, "target_ratio_to_bulk": 2.0,
                  "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                              "platform": platform.platform(),
                              "load_average_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]},
                  "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "runs": runs}
        results = Path(args.results)
        results.mkdir(parents=True, exist_ok=True)
        (results / f"sdtm-{db}.json").write_text(json.dumps(result, indent=2))
        write_svg(results / f"sdtm-{db}.svg", db, result)
        return result
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        if tmp is not None:
            tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--observations", type=int, default=300_000)
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--databases", default="postgres")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeat", type=int, default=2, help="runs per mode; the fastest is kept")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--study", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.out, args.study)
        return
    args.modes = [m for m in args.modes.split(",") if m]
    for db in args.databases.split(","):
        bench_database(db, args)


if __name__ == "__main__":
    main()
