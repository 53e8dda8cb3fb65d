"""Dashboard benchmark (issue 14): what the completeness figures the dashboard adds cost, beside the summary the
page already computes and the bare count of the rows, and what the whole page costs on the demo trial.

1. For 1k and 10k subjects (bench/summary.py's generated study, loaded straight into the typed tables), after one
   warm-up, `--repeat` times each, in a read session:
   * `progress` — `service.stats.service.study_progress` (per visit one aggregate over the subjects left-joined
     to their counted results, adverse events by seriousness, the latest result);
   * `summary`  — `summarize_study`, which the dashboard calls for each study too (the reference);
   * `floor`    — `SELECT count(*)` of the study's counted results (the bare ceiling: reading the rows at all).
2. The page: `GET /` (access control off) through the ASGI app in process, on the demo trial (34 subjects, FHIR
   resources and all: the ResearchStudy search, summary, progress, the Observation search and the templates),
   beside `GET /studies/{id}/summary` alone.

Results: bench/results/dashboard-<db>.json and a bar chart bench/results/dashboard-<db>.svg.

    .venv/bin/python bench/dashboard.py --databases postgres --sizes 1000,10000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from summary import STUDY, generate, load  # bench/summary.py: the generated study and its bulk load

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _median_ms(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"median": round(statistics.median(ordered), 2), "min": round(ordered[0], 2),
            "max": round(ordered[-1], 2), "n": len(ordered)}


def _timed(work, repeat: int) -> list[float]:
    samples = []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        work()
        if i:  # the first is the warm-up
            samples.append((time.perf_counter() - t0) * 1000)
    return samples


def figures(url: str, repeat: int) -> dict:
    from sqlalchemy import text

    from service.db import make_engine, read_session
    from service.stats.service import study_progress, summarize_study

    engine = make_engine(url)

    def in_session(fn):
        def run():
            with read_session(engine) as session:
                return fn(session)
        return run

    floor = "SELECT count(*) FROM measurement WHERE study_id = :s AND status IN ('final', 'amended', 'corrected')"
    out = {"progress_ms": _median_ms(_timed(in_session(lambda s: study_progress(s, STUDY)), repeat)),
           "summary_ms": _median_ms(_timed(in_session(lambda s: summarize_study(s, STUDY)), repeat)),
           "floor_ms": _median_ms(_timed(in_session(lambda s: s.execute(text(floor), {"s": STUDY}).scalar()),
                                         repeat))}
    with read_session(engine) as session:
        progress = study_progress(session, STUDY)
    out["check"] = {v.visit: {"due": v.due, "expected": v.expected, "received": v.received, "overdue": v.overdue}
                    for v in progress.visits}
    engine.dispose()
    return out


def page(url: str, repeat: int) -> dict:
    from fastapi.testclient import TestClient

    from service.db import make_engine, migrate
    from service.demo.load import load_demo
    from service.main import create_app
    from service.settings import Settings

    engine = make_engine(url)
    migrate(engine)
    load_demo(engine)
    engine.dispose()
    settings = Settings(database_url=url, auth="off", migrate_on_startup=False, export_worker=False, _env_file=None)
    with TestClient(create_app(settings)) as client:
        study = client.get("/fhir/ResearchStudy").json()["entry"][0]["resource"]["id"]

        def get(path: str):
            def run():
                response = client.get(path)
                assert response.status_code == 200, response.text
            return run
        return {"page_ms": _median_ms(_timed(get("/"), repeat)),
                "summary_http_ms": _median_ms(_timed(get(f"/studies/{study}/summary"), repeat)),
                "progress_http_ms": _median_ms(_timed(get(f"/studies/{study}/progress"), repeat))}


def scratch(db: str):
    """(url, drop) of a scratch database."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if db == "sqlite":
        return f"sqlite:///{tempfile.mkdtemp(prefix='bench-dashboard-')}/bench.db", lambda: None
    admin = create_engine(make_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    name = f"bench_dashboard_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False), drop


def write_svg(path: Path, db: str, runs: list[dict], demo: dict) -> None:
    bars = [(f"{r['subjects']:,} subj.: {k}", r[f"{k}_ms"]["median"]) for r in runs for k in ("floor", "progress",
                                                                                              "summary")]
    bars += [("demo: GET /", demo["page_ms"]["median"]), ("demo: summary", demo["summary_http_ms"]["median"]),
             ("demo: progress", demo["progress_http_ms"]["median"])]
    top = max(v for _, v in bars) or 1
    width, row = 720, 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{60 + row * len(bars)}" '
             'font-family="system-ui, sans-serif" font-size="12">',
             f'<text x="10" y="22" font-size="15" font-weight="600">Dashboard figures, {db}: median ms</text>']
    for i, (label, value) in enumerate(bars):
        y = 40 + i * row
        w = (width - 330) * value / top
        parts.append(f'<text x="10" y="{y + 14}">{label}</text>')
        parts.append(f'<rect x="200" y="{y}" width="{w:.1f}" height="{row - 6}" fill="#1f77b4"/>')
        parts.append(f'<text x="{206 + w:.1f}" y="{y + 14}">{value:.1f} ms</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts))


def bench_database(db: str, sizes: list[int], repeat: int) -> dict:
    runs = []
    for n in sizes:
        url, drop = scratch(db)
        try:
            print(f"{db}: loading {n:,} subjects…", flush=True)
            load(url, generate(n))
            run = {"subjects": n, **figures(url, repeat)}
        finally:
            drop()
        print(f"{db:8} {n:>7,} subjects: progress {run['progress_ms']['median']:7.1f} ms, summary "
              f"{run['summary_ms']['median']:7.1f} ms, bare count {run['floor_ms']['median']:6.1f} ms", flush=True)
        runs.append(run)
    url, drop = scratch(db)
    try:
        print(f"{db}: the demo trial, GET / …", flush=True)
        demo = page(url, repeat)
    finally:
        drop()
    print(f"{db:8} demo trial: GET / {demo['page_ms']['median']:.1f} ms (summary alone "
          f"{demo['summary_http_ms']['median']:.1f} ms, progress alone {demo['progress_http_ms']['median']:.1f} ms)",
          flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_svg(RESULTS / f"dashboard-{db}.svg", db, runs, demo)
    report = {"benchmark": "dashboard", "database": db, "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "repeat": repeat, "machine": {"python": platform.python_version(), "platform": platform.platform(),
                                            "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
              "runs": runs, "demo": demo}
    (RESULTS / f"dashboard-{db}.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated subject counts")
    parser.add_argument("--repeat", type=int, default=7, help="measured runs of each (after one warm-up)")
    args = parser.parse_args()
    for db in args.databases.split(","):
        bench_database(db.strip(), [int(s) for s in args.sizes.split(",")], args.repeat)


if __name__ == "__main__":
    main()
