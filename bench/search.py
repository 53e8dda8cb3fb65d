"""Search benchmark (issue 3): latency (p50/p99) and throughput of FHIR search over HTTP, beside the bare ceiling.

Generates one study of `--size` Observations (default 100,000; 20 results per patient and measure, so the
token query below returns exactly 20) by bulk inserts straight into the tables (`resource` with stored JSON,
`resource_version`, `measurement`, `patient`, `research_subject`, `study`): executemany on SQLite, COPY on
PostgreSQL (a scratch database `bench_search_<random>`, dropped afterwards unless `--keep`). Then it starts
the app with uvicorn in a subprocess on 127.0.0.1 and measures, at 1, 4 and 16 concurrent clients (httpx,
one thread and one connection per client):

* `subject_code`    — `GET /fhir/Observation?subject=<patient>&code=<code>&_count=20` (20 results)
* `study_code_date` — `GET /fhir/Observation?study=<study>&code=<code>&date=ge<date>&_count=20` (first page
                      of thousands of matches)
* `bare`            — the ceiling, in this process with no HTTP framework: the same 20-result token query as
                      one indexed SELECT on the driver's own connection, its stored JSON wrapped into a Bundle
                      with orjson (what a hand-written server could do at best).

Results: bench/results/search-<db>.json and bench/results/search-<db>.svg (hand-written SVG).

    .venv/bin/python bench/search.py                               # SQLite, 100k observations
    .venv/bin/python bench/search.py --db postgres --size 1000000
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import orjson
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PER_PATIENT = 20  # results per patient and measure: the token query's page
STUDY_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
UCUM = "http://unitsofmeasure.org"
MRN = "urn:oid:1.2.410.200001.1"


# -- data -------------------------------------------------------------------------------------------------

def _instant(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Loader:
    """Buffers rows per table and writes them in chunks: executemany on SQLite, COPY on PostgreSQL."""

    def __init__(self, engine, chunk: int = 5000) -> None:
        from sqlmodel import SQLModel

        import service.tables  # noqa: F401
        self.engine = engine
        self.tables = SQLModel.metadata.tables
        self.chunk = chunk
        self.buffers: dict[str, list[dict]] = {}
        self.postgres = engine.dialect.name == "postgresql"
        self.conn = engine.raw_connection() if self.postgres else engine.connect()

    def add(self, table: str, row: dict) -> None:
        buf = self.buffers.setdefault(table, [])
        buf.append(row)
        if len(buf) >= self.chunk:
            self.flush(table)

    def flush(self, table: str | None = None) -> None:
        for name in [table] if table else list(self.buffers):
            rows = self.buffers.get(name) or []
            if not rows:
                continue
            if self.postgres:
                cols = list(rows[0])
                with self.conn.cursor() as cur:
                    with cur.copy(f"COPY {name} ({', '.join(cols)}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row([row[c] for c in cols])
            else:
                from sqlalchemy import insert
                self.conn.execute(insert(self.tables[name]), rows)
            self.buffers[name] = []

    def close(self) -> None:
        self.flush()
        self.conn.commit()
        self.conn.close()


def generate(engine, size: int, seed: int = 7) -> dict:
    """One study, `size` Observations over `size / (measures × 20)` patients; returns what the queries need."""
    from fhir_mappings.terminology import load_catalogue
    catalogue = load_catalogue()
    measures = catalogue.measures
    rng = random.Random(seed)
    n_patients = max(1, -(-size // (len(measures) * PER_PATIENT)))
    now = datetime.now(UTC)
    study_id = str(uuid.uuid4())
    loader = Loader(engine)

    def resource(rtype: str, rid: str, body: dict) -> None:
        meta = {"versionId": "1", "lastUpdated": _instant(now)}
        content = orjson.dumps({"resourceType": rtype, "id": rid, "meta": meta, **body}).decode()
        loader.add("resource", {"resource_type": rtype, "id": rid, "version_id": 1, "last_updated": now,
                                "deleted": False, "content": content})
        loader.add("resource_version", {"resource_type": rtype, "id": rid, "version_id": 1, "last_updated": now,
                                        "method": "POST", "content": content})

    resource("ResearchStudy", study_id, {"status": "active", "title": "Search benchmark study",
                                         "arm": [{"name": "low-dose"}, {"name": "high-dose"}]})
    loader.add("study", {"id": study_id, "title": "Search benchmark study", "status": "active",
                         "catalogue": catalogue.name})
    for arm in ("low-dose", "high-dose"):
        loader.add("study_arm", {"study_id": study_id, "name": arm, "description": f"{arm} dose"})
    patients = []
    columns = TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    with Progress(*columns) as progress:
        task = progress.add_task(f"generating {n_patients * len(measures) * PER_PATIENT:,} observations",
                                 total=n_patients * len(measures) * PER_PATIENT)
        for p in range(n_patients):
            pid, sid = str(uuid.uuid4()), str(uuid.uuid4())
            patients.append(pid)
            day0 = date(2023, 1, 1) + timedelta(days=rng.randrange(365))
            arm = "high-dose" if p % 2 else "low-dose"
            gender = rng.choice(["female", "male"])
            born = date(1950, 1, 1) + timedelta(days=rng.randrange(18000))
            resource("Patient", pid, {"identifier": [{"system": MRN, "value": f"MRN-{p:07d}"}], "gender": gender,
                                      "birthDate": born.isoformat()})
            loader.add("patient", {"id": pid, "family": None, "given": None, "gender": gender, "birth_date": born})
            loader.add("resource_identifier", {"resource_type": "Patient", "resource_id": pid, "system": MRN,
                                               "value": f"MRN-{p:07d}"})
            resource("ResearchSubject", sid, {
                "status": "on-study", "study": {"reference": f"ResearchStudy/{study_id}"},
                "individual": {"reference": f"Patient/{pid}"}, "assignedArm": arm, "actualArm": arm,
                "period": {"start": day0.isoformat()}})
            loader.add("research_subject", {"id": sid, "study_id": study_id, "patient_id": pid, "status": "on-study",
                                            "assigned_arm": arm, "actual_arm": arm, "arm": arm, "day0": day0,
                                            "end_date": None})
            for m in measures:
                system, code = m.codes[0]
                low = float(m.min) if m.min is not None else 0.0
                high = float(m.max) if m.max is not None else 1000.0
                for i in range(PER_PATIENT):
                    oid = str(uuid.uuid4())
                    day = i * 5
                    local = day0 + timedelta(days=day)
                    effective = datetime(local.year, local.month, local.day, 9, 0, tzinfo=UTC)
                    value = round(rng.uniform(low, high)) if m.integer else round(rng.uniform(low, high), 1)
                    resource("Observation", oid, {
                        "status": "final",
                        "category": [{"coding": [{"system": CATEGORY, "code": m.category}]}],
                        "code": {"coding": [{"system": system, "code": code, "display": m.display}], "text": m.display},
                        "subject": {"reference": f"Patient/{pid}"},
                        "extension": [{"url": STUDY_EXT, "valueReference": {"reference": f"ResearchStudy/{study_id}"}}],
                        "effectiveDateTime": effective.isoformat().replace("+00:00", "Z"),
                        "valueQuantity": {"value": value, "unit": m.unit, "system": UCUM, "code": m.unit}})
                    loader.add("measurement", {
                        "id": oid, "patient_id": pid, "study_id": study_id, "subject_id": sid, "measure": m.key,
                        "code_system": system, "code": code, "category": m.category, "status": "final",
                        "value": float(value), "unit": m.unit, "original_value": str(value), "original_unit": m.unit,
                        "effective": effective, "local_date": local, "study_day": day,
                        "visit": catalogue.visit_for_day(day)})
                progress.advance(task, PER_PATIENT)
        loader.close()
    with engine.begin() as conn:
        from sqlalchemy import text
        conn.execute(text("ANALYZE"))
    return {"study": study_id, "patients": patients, "codes": [m.codes[0][1] for m in measures],
            "observations": n_patients * len(measures) * PER_PATIENT}


# -- measuring --------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRIVIAL_APP = """
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
"""


def start_server(database_url: str, workers: int, app: str = "service.main:app",
                 path: Path = ROOT) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "TRIAL_FHIR_EXPORT_WORKER": "false",
           "TRIAL_FHIR_MIGRATE_ON_STARTUP": "false", "PYTHONPATH": f"{path}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--no-access-log", "--workers", str(workers)]
    proc = subprocess.Popen(cmd, env=env, cwd=path)
    base = f"http://127.0.0.1:{port}"
    probe = "/healthz" if app == "service.main:app" else "/"
    for _ in range(300):
        try:
            if httpx.get(f"{base}{probe}", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("uvicorn exited")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("uvicorn did not start")


def run_load(clients: int, seconds: float, make_call) -> dict:
    """`clients` threads calling `make_call()` (a fresh callable per thread) for `seconds`; latencies in ms."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start_at = time.perf_counter() + 0.2
    stop_at = start_at + seconds
    barrier = threading.Barrier(clients)

    def worker(n: int) -> None:
        call = make_call()
        call()  # warm the connection
        barrier.wait()
        while time.perf_counter() < start_at:
            time.sleep(0.001)
        own = latencies[n]
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            if not call():
                errors[n] += 1
            own.append((time.perf_counter() - t0) * 1000)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = sorted(x for own in latencies for x in own)
    if not flat:
        return {"clients": clients, "requests": 0}
    return {"clients": clients, "requests": len(flat), "errors": sum(errors),
            "throughput_rps": round(len(flat) / seconds, 1),
            "p50_ms": round(flat[len(flat) // 2], 2), "p99_ms": round(flat[min(len(flat) - 1, int(len(flat) * 0.99))], 2),
            "mean_ms": round(statistics.fmean(flat), 2)}


def http_call(base: str, path_for, expect: int | None):
    def make():
        client = httpx.Client(base_url=base, timeout=30)
        rng = random.Random(threading.get_ident())

        def call() -> bool:
            r = client.get(path_for(rng))
            if r.status_code != 200:
                return False
            return expect is None or r.content.count(b'"mode":"match"') == expect
        return call
    return make


BARE_SQL = ("SELECT r.id, r.content FROM measurement m JOIN resource r ON r.resource_type = 'Observation' "
            "AND r.id = m.id WHERE m.patient_id = {p} AND m.code = {p} ORDER BY m.effective, m.id LIMIT 21")


def bare_call(database_url: str, data: dict, base: str):
    """The ceiling: the same token query as one SELECT on the driver's connection, stored JSON into a Bundle."""
    from sqlalchemy.engine import make_url
    url = make_url(database_url)

    def make():
        if url.get_backend_name() == "sqlite":
            import sqlite3
            conn = sqlite3.connect(url.database, check_same_thread=False)
            sql = BARE_SQL.format(p="?")
        else:
            import psycopg
            conn = psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                                   dbname=url.database, autocommit=True)
            sql = BARE_SQL.format(p="%s")
        rng = random.Random(threading.get_ident())
        patients, codes = data["patients"], data["codes"]

        def call() -> bool:
            rows = conn.execute(sql, (rng.choice(patients), rng.choice(codes))).fetchall()
            entries = [{"fullUrl": f"{base}/Observation/{rid}", "resource": orjson.Fragment(content),
                        "search": {"mode": "match"}} for rid, content in rows[:20]]
            body = orjson.dumps({"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                                 "link": [{"relation": "self", "url": f"{base}/Observation"}], "entry": entries})
            return len(entries) == PER_PATIENT and len(body) > 0
        return call
    return make


def explain(engine, data: dict) -> dict:
    """The query plans of both searches' SQL, to show the indexes cover filter and sort."""
    from sqlmodel import Session

    from fhir_mappings.search import parse_search
    from service.search import repository
    plans = {}
    queries = {"subject_code": [("subject", data["patients"][0]), ("code", data["codes"][0])],
               "study_code_date": [("study", data["study"]), ("code", data["codes"][0]), ("date", "ge2023-07-01")]}
    for name, params in queries.items():
        req = parse_search("Observation", params)
        where = repository.conditions("Observation", req.criteria)
        captured = []
        from sqlalchemy import event

        def grab(conn, cursor, statement, parameters, context, executemany):
            captured.append((statement, parameters))
        event.listen(engine, "before_cursor_execute", grab)
        with Session(engine) as session:
            repository.find_page(session, "Observation", where, req.sort, None, 21)
        event.remove(engine, "before_cursor_execute", grab)
        statement, parameters = next((st, pa) for st, pa in captured if st.lstrip().upper().startswith("SELECT"))
        with engine.connect() as conn:
            prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN ANALYZE "
            rows = conn.exec_driver_sql(prefix + statement, parameters).all()
        plans[name] = [" ".join(str(c) for c in row) for row in rows]
    return plans


# -- plot -------------------------------------------------------------------------------------------------

def svg(results: dict) -> str:
    """Throughput per concurrency (bars) for each search and the bare ceiling; p99 written above each bar."""
    series = [("bare", "#888888"), ("http_floor", "#bbbbbb"), ("subject_code", "#1f77b4"),
              ("study_code_date", "#ff7f0e")]
    levels = [r["clients"] for r in results["runs"]["subject_code"]]
    top = max(r.get("throughput_rps", 0) for name, _ in series for r in results["runs"][name]) or 1
    width, height, left, bottom = 760, 420, 70, 60
    plot_h = height - bottom - 50
    group_w = (width - left - 20) / len(levels)
    bar_w = group_w / (len(series) + 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="12">',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">FHIR search throughput, '
           f'{results["database"]}, {results["observations"]:,} observations (p99 ms above bars)</text>']
    for i in range(5):
        y = 40 + plot_h - plot_h * i / 4
        out.append(f'<line x1="{left}" y1="{y}" x2="{width - 20}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{top * i / 4:,.0f}</text>')
    out.append(f'<text x="16" y="{40 + plot_h / 2}" transform="rotate(-90 16 {40 + plot_h / 2})" '
               'text-anchor="middle">requests / s</text>')
    for g, level in enumerate(levels):
        x0 = left + g * group_w + bar_w / 2
        for s, (name, colour) in enumerate(series):
            run = next((r for r in results["runs"][name] if r["clients"] == level), {})
            rps = run.get("throughput_rps", 0)
            h = plot_h * rps / top
            x = x0 + s * bar_w
            out.append(f'<rect x="{x:.1f}" y="{40 + plot_h - h:.1f}" width="{bar_w * 0.9:.1f}" height="{h:.1f}" '
                       f'fill="{colour}"/>')
            out.append(f'<text x="{x + bar_w * 0.45:.1f}" y="{40 + plot_h - h - 4:.1f}" text-anchor="middle" '
                       f'font-size="10">{run.get("p99_ms", 0):.1f}</text>')
        out.append(f'<text x="{x0 + bar_w * len(series) / 2:.1f}" y="{40 + plot_h + 18}" text-anchor="middle">'
                   f'{level} client{"s" if level > 1 else ""}</text>')
    for s, (name, colour) in enumerate(series):
        x = left + s * 160
        out.append(f'<rect x="{x}" y="{height - 22}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 18}" y="{height - 12}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--size", type=int, default=100_000, help="observations to generate (default 100,000)")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels (default 1,4,16)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per level (default 6)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument("--database-url", help="use this (already generated) database instead of a new one")
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from service.db import make_engine, migrate

    cleanup = None
    if args.db == "postgres":
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        db_name = f"bench_search_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db_name}"'))
        database_url = make_url(PG_ADMIN_URL).set(database=db_name).render_as_string(hide_password=False)

        def cleanup():
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
    else:
        folder = Path(tempfile.mkdtemp(prefix="bench-search-"))
        database_url = f"sqlite:///{folder / 'search.db'}"

        def cleanup():
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()

    if not args.keep:  # also when generation or start-up fails, so no scratch database is left behind
        atexit.register(cleanup)
    engine = make_engine(database_url)
    migrate(engine)
    t0 = time.perf_counter()
    data = generate(engine, args.size)
    generated_s = time.perf_counter() - t0
    print(f"generated {data['observations']:,} observations in {generated_s:.1f} s")
    plans = explain(engine, data)
    for name, plan in plans.items():
        print(f"plan {name}:\n  " + "\n  ".join(plan))

    proc, base = start_server(database_url, args.workers)
    fhir = f"{base}/fhir"
    study, patients, codes = data["study"], data["patients"], data["codes"]
    queries = {
        "subject_code": (lambda rng: f"/fhir/Observation?subject={rng.choice(patients)}&code={rng.choice(codes)}"
                         "&_count=20", PER_PATIENT),
        "study_code_date": (lambda rng: f"/fhir/Observation?study={study}&code={rng.choice(codes)}"
                            f"&date=ge2023-{rng.randrange(1, 13):02d}-01&_count=20", 20),
    }
    runs: dict[str, list[dict]] = {"bare": [], "http_floor": []}
    floor_dir = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    (floor_dir / "trivial_app.py").write_text(TRIVIAL_APP)
    floor, floor_base = start_server(database_url, args.workers, "trivial_app:app", floor_dir)
    try:  # the floor: a do-nothing ASGI app on the same uvicorn and client (what HTTP alone costs here)
        for level in levels:
            run = run_load(level, args.seconds, http_call(floor_base, lambda rng: "/", None))
            runs["http_floor"].append(run)
            print(f"http_floor      {level:>2} clients: {run}")
    finally:
        floor.terminate()
        floor.wait(timeout=30)
    try:
        for level in levels:
            run = run_load(level, args.seconds, bare_call(database_url, data, fhir))
            runs["bare"].append(run)
            print(f"bare            {level:>2} clients: {run}")
        for name, (path_for, expect) in queries.items():
            runs[name] = []
            for level in levels:
                run = run_load(level, args.seconds, http_call(base, path_for, expect))
                runs[name].append(run)
                print(f"{name:<15} {level:>2} clients: {run}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        engine.dispose()
        if args.keep:
            print(f"kept {database_url}")
    bare_best = max(r["throughput_rps"] for r in runs["bare"])
    results = {
        "database": args.db, "observations": data["observations"], "patients": len(patients),
        "generated_s": round(generated_s, 1), "seconds_per_level": args.seconds, "uvicorn_workers": args.workers,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "queries": {"subject_code": "Observation?subject=<patient>&code=<code>&_count=20 (20 results)",
                    "study_code_date": "Observation?study=<study>&code=<code>&date=ge<month>&_count=20 "
                                       "(first page of thousands)",
                    "bare": "same 20-result token query: one indexed SELECT, stored JSON into a Bundle, no HTTP",
                    "http_floor": "GET / on a do-nothing ASGI app, same uvicorn and httpx clients: the HTTP cost "
                                  "alone on this machine"},
        "runs": runs,
        "ratio_to_bare": {name: {str(r["clients"]): round(r["throughput_rps"] / bare_best, 3) for r in runs[name]}
                          for name in [*queries, "http_floor"]},
        "plans": plans,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"search-{args.db}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"search-{args.db}.svg").write_text(svg(results))
    print(f"wrote bench/results/search-{args.db}.json and .svg")


if __name__ == "__main__":
    main()
