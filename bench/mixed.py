"""Mixed load (issue 12 §6): `--clients` keep-alive clients (default 16), each sending a mix of searches, searches
with `_include`, reads, creates, updates and small transaction Bundles, against one server (`--server-workers`
uvicorn workers, default 2) on a fresh database with the ingest benchmark's cohort already loaded; latency p50/p99
per kind of request and overall, and the throughput.

Target: p99 under 100 ms on PostgreSQL with two workers and 16 clients.

    .venv/bin/python bench/mixed.py --databases postgres --seconds 20
    .venv/bin/python bench/mixed.py --databases sqlite,postgres --seconds 20 --rounds 2

The client is Python (http.client on keep-alive connections, one thread per client: no framework), so it shares
the two cores with the server; what it costs is measured (`cpu_us_per_request.client`, bench/cpu.py) and
reported beside the service's and PostgreSQL's CPU. Every answer must be 2xx; anything else stops the run.

Results: bench/results/mixed.json and mixed.svg (p50 and p99 per kind).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import orjson
from ingest import (  # bench/ingest.py: the same cohort, databases and server
    FHIR_JSON,
    SERVICE_PIDS,
    console,
    load_setup,
    machine,
    make_cohort,
    observation_bundles,
    running_service,
    scratch_database,
)

from cpu import CpuMeter  # bench/cpu.py

RESULTS = Path(__file__).resolve().parent / "results"
#: how often each kind comes up in the mix (a portal reading, an EHR writing)
MIX = {"search": 30, "search_include": 10, "read": 25, "create": 15, "update": 10, "transaction": 10}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class Client(threading.Thread):
    """One client: a keep-alive connection, requests drawn from the mix until the deadline."""

    def __init__(self, n: int, base: str, cohort, ids: list[str], deadline: float, seed: int,
                 errors: list[str]) -> None:
        super().__init__(daemon=True)
        self.address = base.removeprefix("http://")
        self.rng = random.Random(seed + n)
        self.seed = seed
        self.cohort, self.ids, self.deadline, self.n = cohort, ids, deadline, n
        self.errors = errors
        self.latencies: dict[str, list[float]] = {k: [] for k in MIX}
        self.made: list[str] = []  # the Observations this client created (it updates its own)
        self.counter = 0

    def _observation(self) -> dict:
        self.counter += 1
        body = dict(self.rng.choice(self.cohort.observations))
        body["identifier"] = [{"system": "urn:bench:mixed", "value": f"M-{self.seed}-{self.n}-{self.counter}"}]
        return body

    def request(self, conn: http.client.HTTPConnection, kind: str) -> tuple[str, str, bytes | None, dict]:
        patient = f"bench-p{self.rng.randrange(self.cohort.patients):05d}"
        headers = dict(FHIR_JSON)
        if kind == "search":
            code = self.rng.choice(("EASI", "SCORAD", "IGA", "19113-0"))
            return "GET", f"/fhir/Observation?subject=Patient/{patient}&code={code}&_count=20", None, headers
        if kind == "search_include":
            return "GET", f"/fhir/Observation?subject=Patient/{patient}&_include=Observation:subject&_count=20", \
                None, headers
        if kind == "read":
            return "GET", f"/fhir/Observation/{self.rng.choice(self.ids)}", None, headers
        if kind == "update" and self.made:
            id = self.rng.choice(self.made)
            body = {**self._observation(), "id": id, "status": "amended"}
            return "PUT", f"/fhir/Observation/{id}", orjson.dumps(body), {**headers, "Prefer": "return=minimal"}
        if kind == "transaction":
            entries = [{"fullUrl": f"urn:uuid:{uuid.UUID(int=self.rng.getrandbits(128))}",
                        "resource": self._observation(), "request": {"method": "POST", "url": "Observation"}}
                       for i in range(3)]
            return "POST", "/fhir", orjson.dumps({"resourceType": "Bundle", "type": "transaction",
                                                  "entry": entries}), headers
        return "POST", "/fhir/Observation", orjson.dumps(self._observation()), {**headers, "Prefer": "return=minimal"}

    def run(self) -> None:
        kinds, weights = list(MIX), list(MIX.values())
        conn = http.client.HTTPConnection(self.address, timeout=60)
        try:
            while time.monotonic() < self.deadline and not self.errors:
                kind = self.rng.choices(kinds, weights)[0]
                if kind == "update" and not self.made:
                    kind = "create"
                method, path, body, headers = self.request(conn, kind)
                start = time.perf_counter()
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                answer = response.read()
                elapsed = time.perf_counter() - start
                if response.status >= 300:
                    self.errors.append(f"{method} {path}: HTTP {response.status}: {answer[:500]!r}")
                    return
                if kind == "create":
                    self.made.append(response.getheader("Location", "").split("/")[-3])
                self.latencies[kind].append(elapsed * 1000)
        finally:
            conn.close()


def run_mixed(kind: str, args, cohort) -> dict:
    with scratch_database(kind) as url, running_service(url, args.server_workers) as base:
        with httpx.Client(base_url=base, timeout=300) as client:
            load_setup(client, cohort)
            ids: list[str] = []
            for _, body in observation_bundles(cohort.observations[:args.preload], 100):
                answer = client.post("/fhir", content=body, headers=FHIR_JSON)
                answer.raise_for_status()
                ids += [e["response"]["location"].split("/")[-3] for e in answer.json()["entry"]]
        # warm-up: each worker's connections, statement caches and catalogues (not counted)
        warm_errors: list[str] = []
        warm = [Client(n, base, cohort, ids, time.monotonic() + 3, args.seed + 1000, warm_errors)
                for n in range(args.clients)]
        for c in warm:
            c.start()
        for c in warm:
            c.join()
        if warm_errors:
            raise RuntimeError(f"warm-up: {warm_errors[0]}")
        load = os.getloadavg()[0]
        meter = CpuMeter([SERVICE_PIDS[base]])
        errors: list[str] = []
        clients = [Client(n, base, cohort, ids, time.monotonic() + args.seconds, args.seed, errors)
                   for n in range(args.clients)]
        meter.start()
        start = time.perf_counter()
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        elapsed = time.perf_counter() - start
        if errors:
            raise RuntimeError(errors[0])
        by_kind = {k: [x for c in clients for x in c.latencies[k]] for k in MIX}
        every = [x for v in by_kind.values() for x in v]
        cpu = meter.stop(len(every))
    figures = {k: {"requests": len(v), "p50_ms": round(percentile(v, 0.5), 1), "p99_ms": round(percentile(v, 0.99), 1)}
               for k, v in by_kind.items()}
    return {"database": kind, "clients": args.clients, "server_workers": args.server_workers,
            "seconds": round(elapsed, 2), "requests": len(every), "rate": round(len(every) / elapsed, 1),
            "p50_ms": round(percentile(every, 0.5), 1), "p99_ms": round(percentile(every, 0.99), 1),
            "mean_ms": round(statistics.fmean(every), 1), "by_kind": figures, "cpu_us_per_request": cpu,
            "service_busy": meter.service_busy, "load_average_before": round(load, 2)}


def write_svg(path: Path, runs: list[dict]) -> None:
    """p50 and p99 per kind, one group per run (database, round)."""
    rows = [(f"{r['database']} r{r['round']} {k}", v["p50_ms"], v["p99_ms"])
            for r in runs for k, v in [*r["by_kind"].items(), ("all", {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]})]]
    top = max([100.0, *(p99 for _, _, p99 in rows)])
    width, bar_h, left = 760, 16, 230
    scale = (width - left - 60) / top
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{40 + len(rows) * (bar_h + 6)}" '
           'font-family="sans-serif" font-size="11">',
           '<text x="10" y="16" font-size="13">mixed load: p50 (dark) and p99 (light), ms; the line is 100 ms</text>']
    for i, (label, p50, p99) in enumerate(rows):
        y = 30 + i * (bar_h + 6)
        out.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{label}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{p99 * scale:.1f}" height="{bar_h}" fill="#9ecae1"/>')
        out.append(f'<rect x="{left}" y="{y + 4}" width="{p50 * scale:.1f}" height="{bar_h - 8}" fill="#3182bd"/>')
        out.append(f'<text x="{left + p99 * scale + 4:.1f}" y="{y + 12}">{p50:.0f} / {p99:.0f}</text>')
    x = left + 100 * scale
    out.append(f'<line x1="{x:.1f}" y1="24" x2="{x:.1f}" y2="{40 + len(rows) * (bar_h + 6)}" stroke="#d62728"/>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", default="postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--preload", type=int, default=5000, help="Observations stored before the run")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20240110)
    parser.add_argument("--output", type=Path, default=RESULTS / "mixed.json")
    args = parser.parse_args(argv)
    cohort = make_cohort(max(args.preload, 2000), args.patients, args.seed)
    runs = []
    for round_no in range(1, args.rounds + 1):
        for kind in [d.strip() for d in args.databases.split(",") if d.strip()]:
            console.print(f"round {round_no}: {kind}, {args.clients} clients, {args.seconds:.0f} s …")
            result = {**run_mixed(kind, args, cohort), "round": round_no}
            runs.append(result)
            console.print(f"  {result['rate']:,.0f} requests/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; "
                          + ", ".join(f"{k} {v['p50_ms']}/{v['p99_ms']}" for k, v in result["by_kind"].items())
                          + f"; CPU µs/request {result['cpu_us_per_request']}, load {result['load_average_before']}")
    out = {"benchmark": "mixed", "when": datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": machine(), "mix": MIX, "runs": runs,
           "target": {"what": "p99 < 100 ms on PostgreSQL, 16 clients, two workers",
                      "met": all(r["p99_ms"] < 100 for r in runs if r["database"] == "postgres") or None}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    write_svg(args.output.with_suffix(".svg"), runs)
    console.print(f"written: {args.output} and {args.output.with_suffix('.svg').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
