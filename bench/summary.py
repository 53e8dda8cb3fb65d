"""Summary benchmark (issue 4): latency of the study summary for 100, 1k and 10k subjects.

For each size, a scratch database (SQLite file, or PostgreSQL database `bench_summary_<random>` dropped
afterwards) is migrated and filled in bulk straight into the typed tables: one study with two arms,
N patients and ResearchSubjects (about 5% withdrawn), 3 visits × 7 measures per subject (plus 5% extra
results in a window, so the closest-to-target choice has work to do, and 2% preliminary results that must
not count) and about one adverse event per two subjects. No FHIR JSON is written: the summary never reads it.

Measured, after one warm-up, `--repeat` times each:
* `service` — `service.stats.service.summarize_study` in a read session (SQL + the one pass + scipy tests);
* `http`    — `GET /studies/{id}/summary` through the ASGI app in process (adds JSON serialisation).

Target: 10k subjects < 250 ms on PostgreSQL. Results: bench/results/summary-<db>.json and the cost curve
bench/results/summary-<db>.svg (log-log, median latency against subjects).

    .venv/bin/python bench/summary.py                               # both databases, 100 / 1k / 10k
    .venv/bin/python bench/summary.py --databases postgres --sizes 100,1000,10000,30000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
STUDY = "bench-summary"
ARMS = (("high-dose", "5.0 × 10^7 hUCB-MSCs"), ("low-dose", "2.5 × 10^7 hUCB-MSCs"))


def generate(subjects: int, seed: int = 4) -> dict[str, list[dict]]:
    """Rows per table for one study of `subjects` subjects, every measure at every visit."""
    from fhir_mappings.terminology import load_catalogue

    catalogue = load_catalogue("atopic-dermatitis")
    rng = random.Random(seed)
    rows: dict[str, list[dict]] = {t: [] for t in ("study", "study_arm", "patient", "research_subject",
                                                     "measurement", "adverse_event")}
    rows["study"].append({"id": STUDY, "title": "Summary benchmark", "status": "active",
                          "catalogue": catalogue.name})
    rows["study_arm"] += [{"study_id": STUDY, "name": n, "description": d} for n, d in ARMS]
    start = date(2024, 1, 1)
    for i in range(subjects):
        pid, sid = f"p{i:06d}", f"s{i:06d}"
        arm = ARMS[i % 2][0]
        day0 = start + timedelta(days=rng.randrange(365))
        status = "withdrawn" if rng.random() < 0.05 else "on-study"
        rows["patient"].append({"id": pid, "family": "Bench", "given": f"P{i}", "gender": "female",
                                "birth_date": date(1990, 1, 1)})
        rows["research_subject"].append({"id": sid, "study_id": STUDY, "patient_id": pid, "status": status,
                                         "assigned_arm": arm, "actual_arm": arm, "arm": arm, "day0": day0,
                                         "end_date": None})
        effect = 0.45 if arm == "high-dose" else 0.7
        for visit in catalogue.visits:
            extra = [visit.target_day + rng.choice((-3, 2))] if rng.random() < 0.05 else []
            for day in [visit.target_day + rng.randint(-2, 2) if visit.target_day else rng.randint(-3, 0), *extra]:
                day = min(max(day, visit.first_day), visit.last_day)
                when = day0 + timedelta(days=day)
                for m in catalogue.measures:
                    high = float(m.max) if m.max is not None else 1000.0
                    base = rng.uniform(0.3, 0.8) * high
                    factor = 1.0 if visit.target_day == 0 else effect + rng.uniform(-0.2, 0.2)
                    value = round(base * factor) if m.integer else round(base * factor, 1)
                    system, code = m.codes[0]
                    rows["measurement"].append({
                        "id": uuid.UUID(int=rng.getrandbits(128)).hex, "patient_id": pid, "study_id": STUDY,
                        "subject_id": sid, "measure": m.key, "code_system": system, "code": code,
                        "category": m.category, "status": "preliminary" if rng.random() < 0.02 else "final",
                        "value": float(value), "unit": m.unit, "original_value": str(value),
                        "original_unit": m.unit,
                        "effective": datetime(when.year, when.month, when.day, 9, tzinfo=UTC),
                        "local_date": when, "study_day": day, "visit": visit.name})
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            rows["adverse_event"].append({
                "id": uuid.UUID(int=rng.getrandbits(128)).hex, "patient_id": pid, "study_id": STUDY,
                "subject_id": sid, "actuality": "actual", "event_system": "https://www.meddra.org",
                "event_code": "10037087", "event_text": "Pruritus",
                "onset": datetime(day0.year, day0.month, day0.day, 12, tzinfo=UTC) + timedelta(days=10),
                "seriousness": "serious" if rng.random() < 0.02 else "non-serious",
                "severity": rng.choice(("mild", "mild", "moderate", "severe")), "outcome": "resolved",
                "related": rng.random() < 0.3, "caused_withdrawal": status == "withdrawn" and rng.random() < 0.5})
    return rows


def load(url: str, rows: dict[str, list[dict]]) -> None:
    """Migrate, then insert in bulk: COPY on PostgreSQL (then VACUUM ANALYZE), executemany on SQLite."""
    from sqlalchemy import MetaData, insert

    from service.db import make_engine, migrate

    engine = make_engine(url)
    migrate(engine)
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cur:
                for table, data in rows.items():
                    if data:
                        cols = list(data[0])
                        with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                            for row in data:
                                copy.write_row([row[c] for c in cols])
            raw.commit()
            # VACUUM too, as autovacuum would after a bulk load: it sets the visibility map, so the summary's
            # index-only scan needs no heap visits
            raw.driver_connection.autocommit = True
            with raw.cursor() as cur:
                cur.execute("VACUUM ANALYZE")
        finally:
            raw.close()
    else:
        meta = MetaData()
        meta.reflect(engine)
        with engine.begin() as conn:
            for table, data in rows.items():
                for i in range(0, len(data), 20_000):
                    conn.execute(insert(meta.tables[table]), data[i:i + 20_000])
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()


def measure(url: str, repeat: int) -> dict:
    from fastapi.testclient import TestClient
    from sqlalchemy import text

    from service.db import make_engine, read_session
    from service.main import create_app
    from service.settings import Settings
    from service.stats.service import summarize_study

    engine = make_engine(url)
    service_ms, floor_ms = [], []
    for i in range(repeat + 1):
        with read_session(engine) as session:
            t0 = time.perf_counter()
            summary = summarize_study(session, STUDY)
            elapsed = (time.perf_counter() - t0) * 1000
        if i:
            service_ms.append(elapsed)
        with read_session(engine) as session:  # the floor: just reading the rows that count
            t0 = time.perf_counter()
            session.execute(text("SELECT count(*) FROM measurement WHERE study_id = :s AND visit IN "
                                 "('baseline', 'week-4', 'week-12') AND status IN ('final', 'amended', 'corrected')"),
                            {"s": STUDY}).scalar()
            if i:
                floor_ms.append((time.perf_counter() - t0) * 1000)
    engine.dispose()
    arms = {a.name: a for a in summary.arms}
    settings = Settings(database_url=url, migrate_on_startup=False, export_worker=False, _env_file=None)
    http_ms = []
    with TestClient(create_app(settings)) as client:
        for i in range(repeat + 1):
            t0 = time.perf_counter()
            response = client.get(f"/studies/{STUDY}/summary")
            elapsed = (time.perf_counter() - t0) * 1000
            assert response.status_code == 200, response.text
            if i:
                http_ms.append(elapsed)
    return {"service_ms": _stats(service_ms), "http_ms": _stats(http_ms), "scan_floor_ms": _stats(floor_ms),
            "check": {name: {"enrolled": a.enrolled,
                             "easi_week12_n": next(s.n for s in a.measures
                                                   if s.visit == "week-12" and s.measure == "EASI")}
                      for name, a in arms.items()}}


def _stats(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1],
            "p90": ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)],
            "samples": [round(s, 3) for s in samples]}


def write_svg(path: Path, db: str, runs: list[dict], target_ms: float | None) -> None:
    """Log-log cost curve: median latency (service and http) against subjects."""
    width, height, left, right, top, bottom = 560, 340, 70, 130, 40, 50
    xs = [r["subjects"] for r in runs]
    ys = [r[k]["median"] for r in runs for k in ("service_ms", "http_ms")] + ([target_ms] if target_ms else [])
    x0, x1 = math.log10(min(xs)) - 0.1, math.log10(max(xs)) + 0.1
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    y1 = y1 if y1 > y0 else y0 + 1

    def px(v):
        return left + (math.log10(v) - x0) / (x1 - x0) * (width - left - right)

    def py(v):
        return top + (y1 - math.log10(v)) / (y1 - y0) * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="22" font-size="14" font-weight="600">Summary latency on {db} (median, log-log)'
             "</text>"]
    for e in range(y0, y1 + 1):
        v = 10 ** e
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:g} ms</text>')
    for x in xs:
        parts.append(f'<text x="{px(x):.1f}" y="{height - bottom + 18}" text-anchor="middle">{x:,}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.1f}" y="{height - 12}" text-anchor="middle">subjects '
                 "(3 visits × 7 measures each)</text>")
    if target_ms:
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(target_ms):.1f}" y2="{py(target_ms):.1f}" '
                     'stroke="#999" stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{width - right + 6}" y="{py(target_ms) + 4:.1f}" fill="#666">target '
                     f"{target_ms:g} ms</text>")
    for i, (key, color) in enumerate((("service_ms", "#1f77b4"), ("http_ms", "#d62728"))):
        points = " ".join(f"{px(r['subjects']):.1f},{py(r[key]['median']):.1f}" for r in runs)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
        for r in runs:
            parts.append(f'<circle cx="{px(r["subjects"]):.1f}" cy="{py(r[key]["median"]):.1f}" r="3.5" '
                         f'fill="{color}"><title>{r["subjects"]} subjects: {r[key]["median"]:.1f} ms</title></circle>')
        parts.append(f'<rect x="{width - right + 6}" y="{top + 10 + 20 * i}" width="12" height="12" fill="{color}"/>')
        parts.append(f'<text x="{width - right + 22}" y="{top + 21 + 20 * i}">{key.split("_")[0]}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts))


def bench_database(db: str, sizes: list[int], repeat: int) -> dict:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    runs = []
    for n in sizes:
        t0 = time.perf_counter()
        rows = generate(n)
        if db == "postgres":
            admin = create_engine(make_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
            name = f"bench_summary_{uuid.uuid4().hex[:10]}"
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        else:
            tmp = tempfile.mkdtemp(prefix="bench-summary-")
            url = f"sqlite:///{tmp}/bench.db"
        try:
            load(url, rows)
            loaded_s = time.perf_counter() - t0
            result = measure(url, repeat)
        finally:
            if db == "postgres":
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
        run = {"subjects": n, "measurements": len(rows["measurement"]), "adverse_events": len(rows["adverse_event"]),
               "load_s": round(loaded_s, 2), **result}
        print(f"{db:8} {n:>7,} subjects {run['measurements']:>9,} results: service median "
              f"{run['service_ms']['median']:8.1f} ms, http median {run['http_ms']['median']:8.1f} ms "
              f"(bare count of the rows: {run['scan_floor_ms']['median']:.1f} ms)", flush=True)
        runs.append(run)
    target = 250.0 if db == "postgres" else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_svg(RESULTS / f"summary-{db}.svg", db, runs, target)
    report = {"benchmark": "summary", "database": db, "target": "10k subjects < 250 ms on PostgreSQL",
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "repeat": repeat,
              "machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
              "runs": runs}
    (RESULTS / f"summary-{db}.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--sizes", default="100,1000,10000", help="comma-separated subject counts")
    parser.add_argument("--repeat", type=int, default=9, help="measured runs per size (after one warm-up)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for db in args.databases.split(","):
        bench_database(db.strip(), sizes, args.repeat)


if __name__ == "__main__":
    main()
