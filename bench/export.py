"""Export benchmark (issue 3): Bulk Data export throughput (MB/s) and peak memory, beside the bare ceiling.

Generates one study (default 200,000 Observations, 2,000 AdverseEvents, 500 patients; plus a small second
study sharing some patients, so the Group export really filters) by inserting rows in bulk straight into
the tables (`resource` with realistic stored JSON, and the typed `measurement`, `adverse_event`,
`research_subject`, `patient`, `study` rows), on SQLite and/or PostgreSQL (a scratch database
`bench_export_<random>`, dropped afterwards). Then, each in a fresh child process (so peak RSS is that
run's own), on the same data in the same run:

* `bare`   — the ceiling: the DB driver's own cursor, `SELECT content FROM resource WHERE resource_type = ?`
             for each type, lines written to a file. No joins, no filters, no job bookkeeping.
* `system` — `service.export.service.write_export` of everything (what `GET /fhir/$export` runs).
* `group`  — the same for the big study's Group (joins on the typed tables: exactly that study's data).
* `patient` — the Patient-level export (`GET /fhir/Patient/$export`: every type of the Patient compartment).
* `elements` — the system export with `_elements=Observation.code,Observation.subject,Observation.valueQuantity,
             Observation.effectiveDateTime` (each Observation parsed, subsetted, tagged SUBSETTED and written again).
* `http`   — the full path: the app in process, `GET /fhir/Group/{id}/$export` with `Prefer:
             respond-async`, polled until the manifest; the worker thread runs the job (heartbeats and all).

Each child samples its RSS every 20 ms; the result keeps RSS before the export, the peak during it, and the
timeline, which shows whether memory stays flat. Target: export >= 100 MB/s with flat memory.

Results: bench/results/export-<db>.json and bench/results/export-<db>.svg (`--results DIR` to write them elsewhere).

    .venv/bin/python bench/export.py                         # both databases, 200k observations
    .venv/bin/python bench/export.py --observations 100000 --databases sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
AD = "https://trial-fhir.org/CodeSystem/ad-scores"
STUDY_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"
MEASURES = [("EASI", AD, "EASI", "{score}", 0, 72), ("SCORAD", AD, "SCORAD", "{score}", 0, 103),
            ("IGA", AD, "IGA", "{score}", 0, 4), ("PRURITUS", AD, "PRURITUS-NRS", "{score}", 0, 10),
            ("IGE", "http://loinc.org", "19113-0", "[IU]/mL", 0, 20000)]
VISITS = [("baseline", 0), ("week-4", 28), ("week-12", 84)]
TYPES = ("Patient", "ResearchStudy", "ResearchSubject", "Observation", "AdverseEvent")


# -- data -------------------------------------------------------------------------------------------------

def _meta(now: datetime) -> dict:
    return {"versionId": "1", "lastUpdated": now.isoformat(timespec="milliseconds").replace("+00:00", "Z")}


def generate(observations: int, patients: int, events: int, seed: int = 7):
    """Rows per table: {table name: [row dict, …]} for two studies (the big one and a small one)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    big, small = "bench-study", "other-study"
    rows: dict[str, list[dict]] = {t: [] for t in ("resource", "study", "patient", "research_subject",
                                                     "measurement", "adverse_event")}

    def resource(rtype: str, rid: str, body: dict) -> None:
        content = orjson.dumps({"resourceType": rtype, "id": rid, "meta": _meta(now), **body}).decode()
        rows["resource"].append({"resource_type": rtype, "id": rid, "version_id": 1, "last_updated": now,
                                 "deleted": False, "content": content})

    for sid, title in ((big, "Export benchmark study"), (small, "Second study")):
        resource("ResearchStudy", sid, {"status": "active", "title": title,
                                        "enrollment": [{"reference": f"Group/{sid}"}],
                                        "arm": [{"name": "low-dose"}, {"name": "high-dose"}]})
        rows["study"].append({"id": sid, "title": title, "status": "active", "catalogue": "atopic-dermatitis"})
    subjects = []  # (study, patient, subject, day0)
    for i in range(patients):
        pid = str(uuid.UUID(int=rng.getrandbits(128)))
        resource("Patient", pid, {"identifier": [{"system": "urn:oid:1.2.410.200001.1", "value": f"MRN-{i:06d}"}],
                                  "name": [{"family": f"Family{i}", "given": [f"Given{i}"]}],
                                  "gender": rng.choice(["female", "male"]), "birthDate": f"{1960 + i % 40}-04-12"})
        rows["patient"].append({"id": pid, "family": f"Family{i}", "given": f"Given{i}", "gender": "female",
                                "birth_date": date(1960 + i % 40, 4, 12)})
        for sid in (big,) + ((small,) if i % 10 == 0 else ()):
            sub = str(uuid.UUID(int=rng.getrandbits(128)))
            day0 = date(2024, 1, 1) + timedelta(days=i % 60)
            arm = "high-dose" if i % 2 else "low-dose"
            resource("ResearchSubject", sub, {
                "identifier": [{"system": "https://trial-fhir.org/subject", "value": f"{sid}-S{i:05d}"}],
                "status": "on-study", "period": {"start": day0.isoformat()},
                "study": {"reference": f"ResearchStudy/{sid}"}, "individual": {"reference": f"Patient/{pid}"},
                "assignedArm": arm, "actualArm": arm})
            rows["research_subject"].append({"id": sub, "study_id": sid, "patient_id": pid, "status": "on-study",
                                             "assigned_arm": arm, "actual_arm": arm, "arm": arm, "day0": day0,
                                             "end_date": None})
            subjects.append((sid, pid, sub, day0))
    # the big study gets ~all observations, the small one a few percent
    for n in range(observations):
        sid, pid, sub, day0 = subjects[rng.randrange(len(subjects))]
        key, system, code, unit, low, high = MEASURES[n % len(MEASURES)]
        visit, offset = VISITS[(n // len(MEASURES)) % len(VISITS)]
        when = datetime.combine(day0 + timedelta(days=offset), datetime.min.time(), UTC) + timedelta(hours=1)
        value = round(rng.uniform(low, high), 1)
        oid = str(uuid.UUID(int=rng.getrandbits(128)))
        resource("Observation", oid, {
            "identifier": [{"system": "https://hospital.example.org/lab-result", "value": f"R-{n:08d}"}],
            "extension": [{"url": STUDY_EXT, "valueReference": {"reference": f"ResearchStudy/{sid}"}}],
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "survey" if system == AD else "laboratory"}]}],
            "code": {"coding": [{"system": system, "code": code, "display": key}], "text": key},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": (when.astimezone().isoformat()),
            "performer": [{"display": "Dermatology department"}],
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
        rows["measurement"].append({
            "id": oid, "patient_id": pid, "study_id": sid, "subject_id": sub, "measure": key, "code_system": system,
            "code": code, "category": "survey" if system == AD else "laboratory", "status": "final", "value": value,
            "unit": unit, "original_value": str(value), "original_unit": unit, "effective": when,
            "local_date": when.date(), "study_day": offset, "visit": visit})
    for _ in range(events):
        sid, pid, sub, day0 = subjects[rng.randrange(len(subjects))]
        onset = datetime.combine(day0 + timedelta(days=rng.randrange(90)), datetime.min.time(), UTC)
        aid = str(uuid.UUID(int=rng.getrandbits(128)))
        serious = rng.random() < 0.05
        resource("AdverseEvent", aid, {
            "actuality": "actual", "study": [{"reference": f"ResearchStudy/{sid}"}],
            "event": {"coding": [{"system": "https://www.meddra.org", "code": "10037087", "display": "Pruritus"}],
                      "text": "Pruritus"},
            "subject": {"reference": f"Patient/{pid}"}, "date": onset.isoformat(),
            "seriousness": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness",
                                        "code": "serious" if serious else "non-serious"}]},
            "severity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-severity",
                                     "code": "mild"}]}})
        rows["adverse_event"].append({
            "id": aid, "patient_id": pid, "study_id": sid, "subject_id": sub, "actuality": "actual",
            "event_system": "https://www.meddra.org", "event_code": "10037087", "event_text": "Pruritus",
            "onset": onset, "seriousness": "serious" if serious else "non-serious", "severity": "mild",
            "outcome": None, "related": False, "caused_withdrawal": False})
    return big, rows


def load(url: str, rows: dict[str, list[dict]]) -> None:
    """Insert every row in bulk: COPY on PostgreSQL, executemany in one transaction on SQLite."""
    from sqlalchemy import MetaData, insert

    from service.db import make_engine, migrate

    engine = make_engine(url)
    migrate(engine)
    meta = MetaData()
    meta.reflect(engine)
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cur:
                for table, data in rows.items():
                    if not data:
                        continue
                    cols = list(data[0])
                    with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                        for row in data:
                            copy.write_row([row[c] for c in cols])
            raw.commit()
            with raw.cursor() as cur:
                cur.execute("ANALYZE")
            raw.commit()
        finally:
            raw.close()
    else:
        with engine.begin() as conn:
            for table, data in rows.items():
                for i in range(0, len(data), 20_000):
                    conn.execute(insert(meta.tables[table]), data[i:i + 20_000])
    engine.dispose()


# -- one measured run (child process) ---------------------------------------------------------------------------

class RssSampler:
    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s = every_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((round(time.perf_counter() - self._t0, 3), self.rss()))
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bare(url: str, out: Path, batch: int) -> int:
    """The ceiling: the driver's cursor over `SELECT content`, straight into files."""
    from sqlalchemy.engine import make_url
    written = 0
    out.mkdir(parents=True, exist_ok=True)
    if url.startswith("postgresql"):
        import psycopg
        u = make_url(url)
        conn = psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database)
        for rtype in TYPES:
            with conn.transaction(), conn.cursor(name=f"bare_{rtype}") as cur, \
                    open(out / f"{rtype}.ndjson", "wb", buffering=1 << 20) as f:
                cur.itersize = batch
                cur.execute("SELECT content FROM resource WHERE resource_type = %s AND NOT deleted", (rtype,))
                while rows := cur.fetchmany(batch):
                    data = ("\n".join(r[0] for r in rows) + "\n").encode()
                    f.write(data)
                    written += len(data)
        conn.close()
    else:
        import sqlite3
        conn = sqlite3.connect(make_url(url).database)
        for rtype in TYPES:
            cur = conn.execute("SELECT content FROM resource WHERE resource_type = ? AND NOT deleted", (rtype,))
            with open(out / f"{rtype}.ndjson", "wb", buffering=1 << 20) as f:
                while rows := cur.fetchmany(batch):
                    data = ("\n".join(r[0] for r in rows) + "\n").encode()
                    f.write(data)
                    written += len(data)
        conn.close()
    return written


ELEMENTS = ("code", "subject", "valueQuantity", "effectiveDateTime")


def exported(url: str, out: Path, batch: int, group: str | None, level: str | None = None,
             elements: bool = False) -> int:
    from service.db import make_engine
    from service.export.service import COMPARTMENT_TYPES, ExportSpec, write_export
    engine = make_engine(url)
    if level == "patient":
        spec = ExportSpec(types=COMPARTMENT_TYPES, level="patient")
    else:
        spec = ExportSpec(group_id=group, level="group" if group else "system",
                          elements={"Observation": ELEMENTS} if elements else {})
    _, outputs = write_export(engine, spec, out, batch=batch)
    engine.dispose()
    return sum(o["bytes"] for o in outputs)


def over_http(url: str, out: Path, batch: int, group: str) -> int:
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings
    settings = Settings(database_url=url, export_dir=out, export_batch_rows=batch, migrate_on_startup=False,
                        auth="off", _env_file=None)  # the export path, not the token check (bench/auth.py)
    with TestClient(create_app(settings)) as client:
        status = client.get(f"/fhir/Group/{group}/$export", headers={"Prefer": "respond-async"})
        assert status.status_code == 202, status.text
        while (reply := client.get(status.headers["Content-Location"])).status_code == 202:
            time.sleep(0.02)
        assert reply.status_code == 200, reply.text
        job = status.headers["Content-Location"].rsplit("/", 1)[1]
        return sum((out / job / Path(o["url"]).name).stat().st_size for o in reply.json()["output"])


def child(mode: str, url: str, out: str, batch: int, group: str) -> None:
    import gc
    if mode == "http":  # import the app before the baseline, as a server would have
        import service.main  # noqa: F401
    else:
        import service.export.service  # noqa: F401
    gc.collect()
    before = RssSampler.rss()
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        if mode == "bare":
            size = bare(url, Path(out), batch)
        elif mode == "system":
            size = exported(url, Path(out), batch, None)
        elif mode == "group":
            size = exported(url, Path(out), batch, group)
        elif mode == "patient":
            size = exported(url, Path(out), batch, None, level="patient")
        elif mode == "elements":
            size = exported(url, Path(out), batch, None, elements=True)
        else:
            size = over_http(url, Path(out), batch, group)
        elapsed = time.perf_counter() - t0
    peak = max(s[1] for s in sampler.samples)
    step = max(1, len(sampler.samples) // 60)
    print(json.dumps({"mode": mode, "bytes": size, "seconds": round(elapsed, 3),
                      "mb_per_s": round(size / 1e6 / elapsed, 1), "rss_before_mb": round(before / 1e6, 1),
                      "rss_peak_mb": round(peak / 1e6, 1), "rss_growth_mb": round((peak - before) / 1e6, 1),
                      "rss_timeline_mb": [(t, round(r / 1e6, 1)) for t, r in sampler.samples[::step]]}))


# -- driver -----------------------------------------------------------------------------------------------------

def run_child(mode: str, url: str, batch: int, group: str) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"export-{mode}-") as out:
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--url", url, "--out", out,
                               "--batch", str(batch), "--group", group], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_svg(path: Path, db: str, runs: list[dict]) -> None:
    width, bar_h, gap, left = 760, 34, 18, 190
    top = 50
    height = top + len(runs) * (bar_h + gap) + 40
    scale = (width - left - 230) / max(100, *(r["mb_per_s"] for r in runs))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="13">', f'<text x="10" y="24" font-size="16">Bulk export on {db}: MB/s (peak RSS '
             f'growth during the run)</text>']
    colours = {"bare": "#999999", "system": "#2b7bb9", "group": "#1f9d55", "patient": "#7c3aed",
               "elements": "#db2777", "http": "#d97706"}
    for i, r in enumerate(runs):
        y = top + i * (bar_h + gap)
        w = r["mb_per_s"] * scale
        parts.append(f'<text x="10" y="{y + bar_h / 2 + 5}">{r["mode"]}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colours[r["mode"]]}"/>')
        parts.append(f'<text x="{left + w + 8:.1f}" y="{y + bar_h / 2 + 5}">{r["mb_per_s"]} MB/s '
                     f'({r["rss_growth_mb"]:+} MB RSS, peak {r["rss_peak_mb"]} MB)</text>')
    target_x = left + 100 * scale
    parts.append(f'<line x1="{target_x:.1f}" y1="{top - 8}" x2="{target_x:.1f}" y2="{height - 30}" '
                 f'stroke="#c00" stroke-dasharray="4 3"/><text x="{target_x + 4:.1f}" y="{height - 14}" '
                 f'fill="#c00">target 100 MB/s</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts))


def bench_database(db: str, args) -> dict:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    admin = None
    if db == "postgres":
        name = f"bench_export_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        tmp = None
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-export-")
        url = f"sqlite:///{tmp.name}/bench.db"
    try:
        t0 = time.perf_counter()
        group, rows = generate(args.observations, args.patients, args.events)
        generated = time.perf_counter() - t0
        load(url, rows)
        loaded = time.perf_counter() - t0 - generated
        counts = {t: sum(1 for r in rows["resource"] if r["resource_type"] == t) for t in TYPES}
        data_mb = sum(len(r["content"]) + 1 for r in rows["resource"]) / 1e6
        del rows
        print(f"[{db}] generated {sum(counts.values())} resources ({data_mb:.0f} MB of JSON) in {generated:.1f} s, "
              f"loaded in {loaded:.1f} s", flush=True)
        runs = []
        for mode in args.modes:
            best = None
            for _ in range(args.repeat):
                r = run_child(mode, url, args.batch, group)
                best = r if best is None or r["mb_per_s"] > best["mb_per_s"] else best
            runs.append(best)
            print(f"[{db}] {mode:<8} {best['mb_per_s']:>7.1f} MB/s  {best['bytes'] / 1e6:7.1f} MB in "
                  f"{best['seconds']:.2f} s   RSS {best['rss_before_mb']} -> peak {best['rss_peak_mb']} MB "
                  f"({best['rss_growth_mb']:+} MB)", flush=True)
        bare_rate = next((r["mb_per_s"] for r in runs if r["mode"] == "bare"), None)
        for r in runs:
            r["share_of_bare"] = round(r["mb_per_s"] / bare_rate, 2) if bare_rate else None
        result = {"database": db, "observations": args.observations, "patients": args.patients,
                  "adverse_events": args.events, "resources": counts, "data_mb": round(data_mb, 1),
                  "batch_rows": args.batch, "repeat_best_of": args.repeat, "target_mb_per_s": 100,
                  "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                              "platform": platform.platform(),
                              "load_average_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()]},
                  "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "runs": runs}
        results = Path(args.results)
        results.mkdir(parents=True, exist_ok=True)
        (results / f"export-{db}.json").write_text(json.dumps(result, indent=2))
        write_svg(results / f"export-{db}.svg", db, runs)
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
    parser.add_argument("--observations", type=int, default=200_000)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--modes", default="bare,system,group,patient,elements,http")
    parser.add_argument("--results", default=str(RESULTS), help="folder for the JSON and SVG results")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2, help="runs per mode; the best is kept")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.out, args.batch, args.group)
        return
    args.modes = args.modes.split(",")
    for db in args.databases.split(","):
        bench_database(db, args)


if __name__ == "__main__":
    main()
