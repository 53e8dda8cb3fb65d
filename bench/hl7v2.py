"""HL7 v2 benchmark (issue 13): how fast does the service take in ORU^R01 lab results, over HTTP (`POST /hl7/v2`)
and over MLLP, with one OBX and with ten OBX per message, beside the FHIR transaction Bundle ingest of the same
results in the same run?

Generates `--results` lab results (IgE, eosinophils absolute and %) for `--patients` enrolled patients, starts the
service (`--replicas` uvicorn processes on their own ports, each with its MLLP listener, TRIAL_FHIR_MLLP_PORT) on a
fresh database per (database, mode) and sends the results
  (a) `bundle`: as FHIR transaction Bundles of `--bundle-size` Observations (`POST /fhir`, as bench/ingest.py),
      and `bundle-as-v2`: as the very transaction Bundles the ten-OBX messages become (ten conditional updates and
      a Provenance each), so the v2 adapter's own cost shows beside the core's,
  (b) `http-1`, `http-10`: as ORU^R01 messages of 1 or 10 OBX (`POST /hl7/v2`),
  (c) `mllp-1`, `mllp-10`: the same messages framed over MLLP (one kept-open connection per client thread),
from `--workers` client threads, spread round-robin over the replicas. Every message must be ACKed `AA`. Rates are
results (Observations) per second; the v2 rates are also given as a share of the same round's Bundle rate (target:
ten-OBX messages at >= 50% of the Bundle rate per result). SQLite and PostgreSQL (a scratch database `bench_<random>`,
dropped afterwards); `--rounds` rounds, medians reported.

Results: bench/results/issue13/hl7.json.

    .venv/bin/python bench/hl7v2.py                                   # everything, 3 rounds
    .venv/bin/python bench/hl7v2.py --results 2000 --rounds 1 --databases sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import statistics
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from ingest import (  # bench/ingest.py (this folder is on sys.path when the script runs)
    FHIR_JSON,
    MRN,
    _free_port,
    console,
    load_setup,
    machine,
    make_cohort,
    observation_bundles,
    post_all,
    run_threads,
    running_service as ingest_service,
    scratch_database,
)
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results" / "issue13"
ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
VT, FS_CR = b"\x0b", b"\x1c\r"
#: (OBX-3, OBX-6, value range) of the lab results a message carries
TESTS = (("19113-0^IgE^LN", "[IU]/mL", (50, 5000)), ("711-2^Eosinophils^LN", "10*3/uL", (0.05, 1.5)),
         ("713-8^Eosinophils %^LN", "%", (0.5, 15)))
MODES = ("bundle", "bundle-as-v2", "http-1", "http-10", "mllp-1", "mllp-10")


def lab_results(count: int, patients: int, day0s: list) -> list[dict]:
    """`count` results: (patient number, test, value, date), spread over the patients and visits."""
    out = []
    for n in range(count):
        p = n % patients
        code, unit, (low, high) = TESTS[n % len(TESTS)]
        value = round(low + (high - low) * ((n * 7919) % 1000) / 1000, 2)
        day = (n // patients) % 3 * 28  # baseline, week 4, week 8
        out.append({"patient": p, "code": code, "unit": unit, "value": value, "day": day0s[p].toordinal() + day,
                    "n": n})
    return out


def _when(ordinal: int) -> str:
    from datetime import date
    return date.fromordinal(ordinal).strftime("%Y%m%d") + "093000+0900"


def messages(results: list[dict], per_message: int, tag: str) -> list[tuple[int, bytes]]:
    """ORU^R01 messages of `per_message` OBX each (one patient per message), as (results, ER7 bytes)."""
    by_patient: dict[int, list[dict]] = {}
    for r in results:
        by_patient.setdefault(r["patient"], []).append(r)
    out = []
    for p, items in by_patient.items():
        for start in range(0, len(items), per_message):
            chunk = items[start:start + per_message]
            msg_id = f"{tag}-{chunk[0]['n']}"
            segments = [f"MSH|^~\\&|LIS|BENCH-LAB|TRIAL-FHIR|SITE|{_when(chunk[0]['day'])}||ORU^R01^ORU_R01|{msg_id}|P|"
                        "2.5.1|||||KOR|UNICODE UTF-8",
                        f"PID|1||BENCH-{p:05d}^^^BENCH^MR",
                        f"OBR|1||{msg_id}^LIS|PANEL^Lab panel^L|||{_when(chunk[0]['day'])}"]
            for i, r in enumerate(chunk, 1):
                segments.append(f"OBX|{i}|NM|{r['code']}|{i}|{r['value']}|{r['unit']}^^UCUM|||||F|||"
                                f"{_when(r['day'])}")
            out.append((len(chunk), ("\r".join(segments) + "\r").encode()))
    return out


def bundle_observations(results: list[dict], tag: str) -> list[dict]:
    """The same results as FHIR Observations (what `POST /fhir` Bundles carry)."""
    from datetime import date
    obs = []
    for r in results:
        code = r["code"].split("^")[0]
        obs.append({"resourceType": "Observation",
                    "identifier": [{"system": "urn:bench:lab", "value": f"{tag}-{r['n']}"}], "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                              "code": "laboratory"}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "subject": {"reference": f"Patient/bench-p{r['patient']:05d}"},
                    "effectiveDateTime": date.fromordinal(r["day"]).isoformat() + "T09:30:00+09:00",
                    "valueQuantity": {"value": r["value"], "unit": r["unit"], "system": "http://unitsofmeasure.org",
                                      "code": r["unit"]}})
    return obs


def v2_bundles(items: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The transaction Bundle each ten-OBX message becomes (fhir_mappings/hl7v2.py: ten conditional updates and a
    Provenance), posted as FHIR: what the v2 path costs beyond the core's own write of those resources."""
    import orjson

    from fhir_mappings import hl7v2
    out = []
    for n, body in items:
        message = hl7v2.read_message(body)
        number = int(message.patient_ids[0][1].split("-")[1])
        bundle, _, _ = hl7v2.to_bundle(message, patient=f"Patient/bench-p{number:05d}", translations={})
        out.append((n, orjson.dumps(bundle)))
    return out


@contextmanager
def running_service(database_url: str):
    """bench/ingest.py's service with its MLLP listener (auth off, 127.0.0.1); yields (HTTP base, MLLP port)."""
    mllp = _free_port()
    with ingest_service(database_url, extra_env={
            "TRIAL_FHIR_EXPORT_WORKER": "false", "TRIAL_FHIR_MLLP_PORT": str(mllp),
            "TRIAL_FHIR_HL7_AUTHORITIES": json.dumps({"BENCH": MRN})}) as base:
        yield base, mllp


def send_http(bases: list[str], bodies: list[tuple[int, bytes]], label: str, workers: int) -> tuple[int, float]:
    """POST every message to /hl7/v2 (post_all of bench/ingest.py); each ACK is checked afterwards by a count."""
    return post_all(bases, "/hl7/v2", bodies, label, workers, headers=ER7, expected=200)


def send_mllp(ports: list[int], bodies: list[tuple[int, bytes]], label: str, workers: int) -> tuple[int, float]:
    """Send every message framed over MLLP from `workers` threads (one open connection each, thread i to
    ports[i % n]); every ACK must be AA."""
    total = sum(n for n, _ in bodies)
    work: queue.SimpleQueue = queue.SimpleQueue()
    for item in bodies:
        work.put(item)
    done, errors, lock = [0], [], threading.Lock()

    def worker(progress, task, start, port):
        with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
            buffer = b""
            while not errors:
                try:
                    n, body = work.get_nowait()
                except queue.Empty:
                    return
                sock.sendall(VT + body + FS_CR)
                while FS_CR not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        errors.append("the listener closed the connection")
                        return
                    buffer += chunk
                frame, buffer = buffer.split(FS_CR, 1)
                if b"MSA|AA|" not in frame:
                    errors.append(frame.decode(errors="replace"))
                    return
                with lock:
                    done[0] += n
                    progress.update(task, completed=done[0], rate=f"{done[0] / (time.perf_counter() - start):,.0f}")

    elapsed = run_threads(label, total, worker, ports, workers, done)
    if errors:
        raise RuntimeError(f"{label}: {errors[0][:2000]}")
    return total, elapsed


def count_observations(base: str) -> int:
    return int(httpx.get(f"{base}/fhir/Observation", params={"_summary": "count"}, timeout=60).json()["total"])


def run(kind: str, mode: str, cohort, results: list[dict], args, round_no: int) -> dict:
    tag = f"r{round_no}-{mode}"
    with scratch_database(kind) as url, ExitStack() as stack:
        services = [stack.enter_context(running_service(url)) for _ in range(args.replicas)]
        bases, ports = [b for b, _ in services], [p for _, p in services]
        with httpx.Client(base_url=bases[0], timeout=300) as client:
            load_setup(client, cohort)
        label = f"{mode} {kind}"
        if mode == "bundle":
            bodies = observation_bundles(bundle_observations(results, tag), args.bundle_size)
            sent, seconds = post_all(bases, "/fhir", bodies, label, args.workers, headers=FHIR_JSON, expected=200)
        elif mode == "bundle-as-v2":
            bodies = v2_bundles(messages(results, 10, tag))
            sent, seconds = post_all(bases, "/fhir", bodies, label, args.workers, headers=FHIR_JSON, expected=200)
        else:
            per = 10 if mode.endswith("-10") else 1
            bodies = messages(results, per, tag)
            if mode.startswith("http"):
                sent, seconds = send_http(bases, bodies, label, args.workers)
            else:
                sent, seconds = send_mllp(ports, bodies, label, args.workers)
        stored = count_observations(bases[0])
        if stored != len(results):  # every result stored once (an AE over HTTP is a 200 too: counted here)
            raise RuntimeError(f"{label}: {stored} Observations stored for {len(results)} results")
    return {"database": kind, "mode": mode, "round": round_no, "results": sent,
            "messages": len(bodies), "seconds": round(seconds, 3), "rate": round(sent / seconds, 1),
            "load_average_before": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=int, default=4000, help="lab results per run (default 4000)")
    parser.add_argument("--patients", type=int, default=100, help="enrolled patients (default 100)")
    parser.add_argument("--bundle-size", type=int, default=100, help="Observations per Bundle (default 100)")
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}")
    parser.add_argument("--workers", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--replicas", type=int, default=2, help="service processes (default 2: one per core)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every run; medians reported (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS / "hl7.json")
    args = parser.parse_args(argv)
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(databases) <= {"sqlite", "postgres"} or not set(modes) <= set(MODES):
        parser.error(f"--databases takes sqlite,postgres and --modes {','.join(MODES)}")
    cohort = make_cohort(0, args.patients)
    # make_cohort's patients carry MRN identifiers BENCH-nnnnn: the v2 messages name them by PID-3
    results = lab_results(args.results, args.patients, [cohort.day0s[p] for p in cohort.day0s])
    console.print(f"cohort: 1 study, {args.patients} enrolled patients, {len(results):,} lab results per run")
    runs = []
    for round_no in range(1, args.rounds + 1):
        for kind in databases:
            for mode in modes:
                runs.append(run(kind, mode, cohort, results, args, round_no))
    summary = []
    for kind in databases:
        bundle = [r["rate"] for r in runs if r["database"] == kind and r["mode"] == "bundle"]
        for mode in modes:
            rates = [r["rate"] for r in runs if r["database"] == kind and r["mode"] == mode]
            shares = [r["rate"] / b["rate"] for r in runs if r["database"] == kind and r["mode"] == mode
                      for b in runs if b["database"] == kind and b["mode"] == "bundle" and b["round"] == r["round"]]
            summary.append({"database": kind, "mode": mode, "rate": round(statistics.median(rates), 1),
                            "rates": rates, "share_of_bundle": round(statistics.median(shares), 3) if bundle else None})
    table = Table(title="HL7 v2 ingest: results (Observations) per second, median of rounds")
    for col in ("database", "mode", "results/s", "rounds", "share of Bundle"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    for s in summary:
        share = f"{100 * s['share_of_bundle']:.0f}%" if s["share_of_bundle"] is not None else "-"
        table.add_row(s["database"], s["mode"], f"{s['rate']:,.0f}", ", ".join(f"{r:,.0f}" for r in s["rates"]),
                      share)
    console.print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "hl7", "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "target": "10-OBX v2 ingest >= 50% of the Bundle rate per result", "summary": summary, "runs": runs},
        indent=2))
    console.print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
