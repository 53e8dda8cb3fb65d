"""Subscriptions benchmark (issue 17): notification latency while ingesting, and what subscriptions cost ingest.

One run per database (`--databases`, default sqlite and postgres), one fresh database and one service each
(`running_service`: uvicorn `service.main:app`, its notification sender inside, TRIAL_FHIR_SUBSCRIPTION_* as
deployed except http on loopback allowed), a synthetic cohort (bench/ingest.py `make_cohort`) and a receiver in
this process (a threaded HTTP server that notes when each notification arrived). The same run ingests transaction
Bundles of `--bundle-size` Observations from `--workers` threads in four phases of `--observations` each:

1. no subscription;
2. 1 subscription (the measurement topic, every result of the study);
3. 100 subscriptions: that one, and 99 that portals would hold (the measurement topic filtered by one measure and
   one visit each: a result matches about 5 of them);
4. no subscription again (the 100 set `off`), so that a drift of the database's growth shows.

Latency = receiver's clock when the notification arrived − the event's timestamp (taken in the writing
transaction, just before its commit; same machine, same clock), per event, p50/p99 per phase. Ingest rate per
phase; "slowed" = 1 − rate(phase) / mean(rate of phases 1 and 4). Targets: p99 < 1 s, slowed < 10 %.

Results: bench/results/subscriptions.json and bench/results/subscriptions.svg.

    .venv/bin/python bench/subscriptions.py                          # both databases (a few minutes)
    .venv/bin/python bench/subscriptions.py --databases sqlite --observations 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
from ingest import (  # bench/ingest.py: the cohort, the server, the posting threads and their progress bar
    FHIR_JSON,
    STUDY_ID,
    _progress,
    console,
    load_setup,
    machine,
    make_cohort,
    observation_bundles,
    post_all,
    running_service,
    scratch_database,
)
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"
TOPIC = "https://trial-fhir.org/SubscriptionTopic/measurement"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw3qW8ZGYqNwE="
CODES = ["https://trial-fhir.org/CodeSystem/ad-scores|EASI", "https://trial-fhir.org/CodeSystem/ad-scores|SCORAD",
         "https://trial-fhir.org/CodeSystem/ad-scores|IGA", "https://trial-fhir.org/CodeSystem/ad-scores|PRURITUS-NRS",
         "http://loinc.org|19113-0", "http://loinc.org|711-2", "http://loinc.org|713-8"]
VISITS = ["baseline", "week-4", "week-12"]


class Receiver:
    """Notes the arrival (wall clock) of each event of each subscription."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []  # seconds, of every event received in the current phase
        self.events = 0
        self.phase_open = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                arrived = time.time()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.note(body, arrived)

            def log_message(self, *args: Any) -> None:
                pass

        # one receiver stands for every subscriber: a backlog for the sender's concurrent connections
        ThreadingHTTPServer.request_queue_size = 256
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def note(self, body: bytes, arrived: float) -> None:
        params = orjson.loads(body)["entry"][0]["resource"]["parameter"]
        stamps = [datetime.fromisoformat(part["valueInstant"].replace("Z", "+00:00")).timestamp()
                  for p in params if p["name"] == "notification-event" for part in p["part"]
                  if part["name"] == "timestamp"]
        with self.lock:
            self.events += len(stamps)
            self.latencies.extend(arrived - s for s in stamps)

    def reset(self) -> tuple[list[float], int]:
        with self.lock:
            found, self.latencies, count, self.events = self.latencies, [], self.events, 0
        return found, count


def subscription(endpoint: str, filters: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Subscription", "status": "requested", "reason": "benchmark", "criteria": TOPIC,
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                    "_payload": {"extension": [{"url": BACKPORT + "backport-payload-content", "valueCode": "id-only"}]},
                    "extension": [{"url": "https://trial-fhir.org/StructureDefinition/subscription-secret",
                                   "valueString": SECRET}]}}
    body["_criteria"] = {"extension": [{"url": BACKPORT + "backport-filter-criteria", "valueString": f}
                                       for f in filters]}
    return body


def subscribe(client: httpx.Client, endpoint: str, count: int) -> list[str]:
    """`count` subscriptions: the first to every result of the study, the others one measure at one visit each."""
    ids = []
    for i in range(count):
        filters = [f"study={STUDY_ID}"] if i == 0 else [f"study={STUDY_ID}", f"code={CODES[i % len(CODES)]}",
                                                        f"visit={VISITS[i % len(VISITS)]}"]
        answer = client.post("/fhir/Subscription", content=orjson.dumps(subscription(endpoint, filters)),
                             headers=FHIR_JSON)
        answer.raise_for_status()
        ids.append(answer.json()["id"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # every one handshaken
        found = client.get("/fhir/Subscription", params={"status": "active", "_count": 1000, "_summary": "count"})
        if found.json()["total"] >= count:
            return ids
        time.sleep(0.2)
    raise RuntimeError("the subscriptions did not become active within 120 s")


def switch_off(client: httpx.Client, ids: list[str]) -> None:
    for id in ids:
        current = client.get(f"/fhir/Subscription/{id}").json()
        current.pop("meta", None)
        current["status"] = "off"
        client.put(f"/fhir/Subscription/{id}", content=orjson.dumps(current), headers=FHIR_JSON).raise_for_status()


def wait_for_events(receiver: Receiver, expected: int, label: str, timeout: float = 300) -> None:
    with _progress() as progress:
        task = progress.add_task(label, total=expected, rate="")
        start = time.perf_counter()
        while receiver.events < expected and time.perf_counter() - start < timeout:
            time.sleep(0.2)
            progress.update(task, completed=receiver.events,
                            rate=f"{receiver.events / (time.perf_counter() - start):,.0f}")
        progress.update(task, completed=receiver.events)


def expected_events(client: httpx.Client, ids: list[str]) -> int:
    total = 0
    for id in ids:
        params = client.get(f"/fhir/Subscription/{id}/$status").json()["entry"][0]["resource"]["parameter"]
        total += int(next(p["valueString"] for p in params if p["name"] == "events-since-subscription-start"))
    return total


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run(kind: str, args: argparse.Namespace, receiver: Receiver) -> dict[str, Any]:
    cohort = make_cohort(args.observations * 4, args.patients)
    bundles = observation_bundles(cohort.observations, args.bundle_size)
    per_phase = len(bundles) // 4
    env = {"TRIAL_FHIR_SUBSCRIPTION_ALLOW_HTTP_LOOPBACK": "true"}
    phases = []
    with scratch_database(kind) as url, running_service(url, extra_env=env) as base, \
            httpx.Client(base_url=base, timeout=120) as client:
        load_setup(client, cohort)
        subs: list[str] = []
        for number, (name, count) in enumerate((("none", 0), ("1 subscription", 1), ("100 subscriptions", 100),
                                                ("none again", 0))):
            if count:
                switch_off(client, subs)
                subs = subscribe(client, receiver.url, count)
            elif subs:
                switch_off(client, subs)
                subs = []
            before = expected_events(client, subs) if subs else 0
            receiver.reset()
            chunk = bundles[number * per_phase:(number + 1) * per_phase]
            posted, seconds = post_all([base], "/fhir", chunk, f"{kind}: {name}", args.workers, headers=FHIR_JSON,
                                       expected=200)
            events = expected_events(client, subs) - before if subs else 0
            if events:
                wait_for_events(receiver, events, f"{kind}: notifications")
            latencies, received = receiver.reset()
            phases.append({"phase": name, "subscriptions": count, "observations": posted, "seconds": seconds,
                           "rate": posted / seconds, "events": events, "received": received,
                           "latency_p50_s": percentile(latencies, 50), "latency_p99_s": percentile(latencies, 99),
                           "latency_max_s": max(latencies) if latencies else None})
    bare = statistics.mean([phases[0]["rate"], phases[3]["rate"]])
    for phase in phases:
        phase["slowed_pct"] = 100 * (1 - phase["rate"] / bare)
    return {"database": kind, "phases": phases}


def write_svg(path: Path, runs: list[dict[str, Any]]) -> None:
    """Two panels per database: ingest rate per phase (bars) and p50/p99 latency of the phases with subscriptions."""
    width, height, pad = 760, 150 + 170 * len(runs), 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             'font-size="12">', '<text x="20" y="24" font-size="15">Subscriptions: ingest rate per phase and '
             'notification latency (p50 / p99; target p99 &lt; 1 s)</text>']
    y0 = 50
    for r in runs:
        phases = r["phases"]
        top = max(p["rate"] for p in phases) or 1
        parts.append(f'<text x="20" y="{y0}" font-weight="bold">{r["database"]}</text>')
        for i, p in enumerate(phases):
            y = y0 + 12 + i * 24
            w = 300 * p["rate"] / top
            parts.append(f'<text x="20" y="{y + 14}">{p["phase"]}</text>')
            parts.append(f'<rect x="170" y="{y}" width="{w:.0f}" height="18" fill="#4a7ab5"/>')
            parts.append(f'<text x="{175 + w:.0f}" y="{y + 14}">{p["rate"]:,.0f}/s ({p["slowed_pct"]:+.1f}%)</text>')
            if p["latency_p99_s"] is not None:
                parts.append(f'<text x="{width - 230}" y="{y + 14}">p50 {p["latency_p50_s"] * 1000:,.0f} ms · p99 '
                             f'{p["latency_p99_s"] * 1000:,.0f} ms</text>')
        y0 += 170
    parts.append(f'<text x="20" y="{height - pad / 2}" fill="#555">bench/subscriptions.py · '
                 f'{datetime.now().date()}</text></svg>')
    path.write_text("\n".join(parts))


def ms(seconds: float | None) -> str:
    return f"{seconds * 1000:,.0f}" if seconds is not None else "–"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--observations", type=int, default=2000, help="Observations per phase")
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--bundle-size", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", default=str(RESULTS / "subscriptions.json"))
    args = parser.parse_args(argv)
    receiver = Receiver()
    runs = [run(kind, args, receiver) for kind in args.databases.split(",")]
    table = Table("database", "phase", "subs", "obs/s", "slowed", "events", "p50 ms", "p99 ms")
    for r in runs:
        for p in r["phases"]:
            table.add_row(r["database"], p["phase"], str(p["subscriptions"]), f"{p['rate']:,.0f}",
                          f"{p['slowed_pct']:+.1f}%", str(p["events"]), ms(p["latency_p50_s"]), ms(p["latency_p99_s"]))
    console.print(table)
    out = Path(args.out)
    out.write_text(json.dumps({"machine": machine(), "args": vars(args), "runs": runs}, indent=2))
    write_svg(out.with_suffix(".svg"), runs)
    console.print(f"wrote {out} and {out.with_suffix('.svg')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
