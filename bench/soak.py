"""Soak test (issue 12 §7): mixed EHR load on two workers and PostgreSQL, with chaos, then the books balanced.

Starts the service (uvicorn `service.main:app`, `--workers 2`, the `--http` protocol `trial-fhir serve` uses, a
scratch PostgreSQL database `bench_<random>`, dropped afterwards), loads a study with `--patients` enrolled patients
(the bench cohort of bench/ingest.py), then runs `--clients` client threads for `--minutes` (default 15), each doing
a weighted mix of

* `create`  single `POST /fhir/Observation` with `If-None-Exist: identifier=<lab system>|<unique value>`;
* `bundle`  transaction Bundles of 5 Observations, each entry a conditional create (`ifNoneExist`);
* `update`  `PUT /fhir/Observation/{id}` with `If-Match` of the version this client last saw acknowledged;
* `read`    `GET /fhir/Observation/{id}` of an acknowledged write (must be 200);
* `search`  portal searches: by subject and code, and by identifier of an acknowledged write (must find it once);

plus one thread kicking off `$export` (`_type=Observation`) and polling it to completion (each file's lines must
match the manifest's `count`, no id twice, at least the Observations acknowledged before the kick-off).
Writes that get no answer (timeout, dropped connection), a 5xx or a 409 are retried with the same content
(conditional creates make that idempotent), honouring `Retry-After`, up to `--max-attempts`.

Chaos: PostgreSQL restarted twice (`pg_ctlcluster --skip-systemctl-redirect 15 main restart`, at 25% and 70% of
the run) and one uvicorn worker `kill -9`ed once (at 45%); uvicorn's supervisor must start a new one (if it does
not, the script restarts the service on the same port and reports that; so it does if the whole service exits).
PostgreSQL is started again in a `finally` whatever happens to the script.

Every request goes into an append-only client log (JSON lines: start, end, kind, attempt, status or `no-answer`,
identifiers, ids/versions acknowledged). At the end the log is compared with the database:
every acknowledged write is stored exactly once (by identifier) under the acknowledged id, nothing is stored that
was never sent, unacknowledged creates are stored once or not at all, every unacknowledged Bundle is all there
or not at all, and each updated resource holds at least its last acknowledged version (and that content when the
last update was acknowledged). Figures: throughput per kind, p50/p99, status counts per phase (steady, during a
PostgreSQL restart or after the worker kill (event + 15 s), after), over time in 10 s buckets.

Results: bench/results/issue12/soak.json, soak.svg (throughput and p99 over time, chaos marked), the client log
beside them as soak-log.jsonl (not committed), the service's log as soak-service.log.

    .venv/bin/python bench/soak.py                 # 15 minutes
    .venv/bin/python bench/soak.py --minutes 1     # quick mode (same chaos, compressed)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
from ingest import FHIR_JSON, LAB_IDS, _free_port, _observation, make_cohort, scratch_database  # bench/ingest.py
from mixed import percentile  # bench/mixed.py

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "issue12"
PG_CTL = ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main"]
WRITES = ("create", "bundle", "update")
EVENT_WINDOW_S = 15.0  # a request started this long after a chaos event ended counts as "during" it (at most
                       # a twentieth of the run, so a quick run keeps a steady phase after the events)
BUNDLE_SIZE = 5


def now() -> float:
    return time.monotonic()


# -- the client log -----------------------------------------------------------------------------------------

class ClientLog:
    """Append-only JSON lines, one per request attempt and one per finished operation; also kept in memory."""

    def __init__(self, path: Path, t0: float) -> None:
        self.path, self.t0 = path, t0
        self.file = path.open("ab")
        self.lock = threading.Lock()
        self.attempts: list[dict] = []
        self.operations: list[dict] = []

    def attempt(self, **record) -> None:
        record["kind_of_record"] = "attempt"
        with self.lock:
            self.attempts.append(record)
            self.file.write(orjson.dumps(record) + b"\n")

    def operation(self, **record) -> None:
        record["kind_of_record"] = "operation"
        with self.lock:
            self.operations.append(record)
            self.file.write(orjson.dumps(record) + b"\n")
            self.file.flush()

    def close(self) -> None:
        with self.lock:
            self.file.close()


# -- PostgreSQL and the service -----------------------------------------------------------------------------

def pg_online() -> bool:
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout
    return any(line.split()[:2] == ["15", "main"] and "online" in line for line in out.splitlines())


def pg_restart() -> tuple[float, float]:
    start = now()
    subprocess.run([*PG_CTL, "restart"], check=True, capture_output=True)
    return start, now()


@contextmanager
def postgres_comes_back():
    """Whatever happens in the block (an exception, ^C), PostgreSQL is running afterwards."""
    try:
        yield
    finally:
        if not pg_online():
            print("soak: starting PostgreSQL again", flush=True)
            subprocess.run([*PG_CTL, "start"], check=False)


def children(pid: int) -> list[int]:
    """Worker processes of the uvicorn supervisor `pid` (not multiprocessing's resource tracker)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"resource_tracker" not in cmdline:
            out.append(int(entry.name))
    return sorted(out)


@dataclass
class Service:
    database_url: str
    port: int
    log_path: Path
    export_dir: Path
    workers: int = 2
    proc: subprocess.Popen | None = None
    restarts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "DATABASE_URL": self.database_url, "TRIAL_FHIR_MIGRATE_ON_STARTUP": "true",
               "TRIAL_FHIR_AUTH": "off", "TRIAL_FHIR_LOAD_DEMO_ON_STARTUP": "false", "TRIAL_FHIR_SQL_ECHO": "false",
               "TRIAL_FHIR_EXPORT_DIR": str(self.export_dir), "TRIAL_FHIR_EXPORT_POLL_INTERVAL_S": "1"}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1",
                                      "--port", str(self.port), "--workers", str(self.workers), "--no-access-log",
                                      "--log-level", "warning",
                                      "--http", "service.api.read_timeouts:TimedHttpToolsProtocol"],  # as serve
                                     cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = now() + 90
        while now() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited at start-up; see {self.log_path}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200 and \
                        len(children(self.proc.pid)) >= self.workers:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError("the service did not answer /healthz within 90 s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill_one_worker(self) -> dict:
        """kill -9 one worker; wait (up to 60 s) for the supervisor to start another; restart the service if not."""
        assert self.proc is not None
        before = children(self.proc.pid)
        victim = before[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = now()
        deadline = killed_at + 60
        while now() < deadline:
            after = children(self.proc.pid)
            if victim not in after and len(after) >= self.workers:
                return {"victim": victim, "workers_before": before, "workers_after": after,
                        "replaced_after_s": round(now() - killed_at, 2), "service_restarted": False}
            time.sleep(0.2)
        self.stop()
        self.start()
        self.restarts += 1
        return {"victim": victim, "workers_before": before, "workers_after": children(self.proc.pid),
                "replaced_after_s": None, "service_restarted": True}


# -- the clients --------------------------------------------------------------------------------------------

@dataclass
class Shared:
    """What the clients know of each other's acknowledged writes (for reads, searches and updates)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: list[tuple[str, str]] = field(default_factory=list)  # (identifier, id) acknowledged
    stop: threading.Event = field(default_factory=threading.Event)
    runtime_failures: list[dict] = field(default_factory=list)  # checks failed while running (read/search)


class Client(threading.Thread):
    def __init__(self, n: int, service: Service, log: ClientLog, shared: Shared, run_id: str, patients: list,
                 args: argparse.Namespace) -> None:
        super().__init__(name=f"client-{n}", daemon=True)
        self.n, self.service, self.log, self.shared, self.run_id = n, service, log, shared, run_id
        self.patients, self.args = patients, args
        self.rng = random.Random(args.seed * 1000 + n)
        self.seq = 0
        self.mine: dict[str, dict] = {}  # id -> {"identifier", "version", "body"} of my acknowledged creates

    # - one HTTP request, logged ---------------------------------------------------------------------------
    def request(self, http: httpx.Client, kind: str, op: str, attempt: int, method: str, url: str,
                **kwargs) -> httpx.Response | None:
        t_start = now()
        try:
            response = http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self.log.attempt(op=op, kind=kind, attempt=attempt, start=t_start - self.log.t0,
                             end=now() - self.log.t0, status="no-answer", error=type(exc).__name__)
            return None
        self.log.attempt(op=op, kind=kind, attempt=attempt, start=t_start - self.log.t0, end=now() - self.log.t0,
                         status=response.status_code,
                         error=None if response.status_code < 400 else response.text[:300])
        return response

    def with_retries(self, http: httpx.Client, kind: str, op: str, method: str, url: str,
                     retry_412: bool = False, **kwargs) -> tuple[httpx.Response | None, int]:
        """Send until an answer that is not worth retrying (no answer, 5xx and 409 are), or attempts run out."""
        response = None
        for attempt in range(1, self.args.max_attempts + 1):
            response = self.request(http, kind, op, attempt, method, url, **kwargs)
            if response is not None and response.status_code < 500 and response.status_code != 409:
                return response, attempt
            if self.shared.stop.is_set() and attempt >= 2:
                break
            wait = 0.5 * attempt
            if response is not None and response.headers.get("retry-after", "").isdigit():
                wait = float(response.headers["retry-after"])
            time.sleep(min(wait, 10.0))
        return response, attempt

    def identifier(self) -> str:
        self.seq += 1
        return f"SOAK-{self.run_id}-{self.n:02d}-{self.seq:06d}"

    def observation(self, value: str) -> dict:
        pid, day0 = self.rng.choice(self.patients)
        body = _observation(self.rng, self.rng.randrange(7), pid, day0)
        body["identifier"] = [{"system": LAB_IDS, "value": value}]
        return body

    # - the operations ---------------------------------------------------------------------------------------
    def create(self, http: httpx.Client) -> None:
        value = self.identifier()
        body = self.observation(value)
        response, attempts = self.with_retries(
            http, "create", value, "POST", "/fhir/Observation", content=orjson.dumps(body),
            headers={**FHIR_JSON, "If-None-Exist": f"identifier={LAB_IDS}|{value}"})
        acked = response is not None and response.status_code in (200, 201)
        rid = version = None
        if acked:
            assert response is not None
            stored = response.json()
            rid, version = stored.get("id"), stored.get("meta", {}).get("versionId")
            self.mine[rid] = {"identifier": value, "version": version, "body": body}
            with self.shared.lock:
                self.shared.acked.append((value, rid))
        self.log.operation(op=value, kind="create", identifiers=[value], acked=acked, attempts=attempts,
                           status=None if response is None else response.status_code, ids=[rid], versions=[version])

    def bundle(self, http: httpx.Client) -> None:
        values = [self.identifier() for _ in range(BUNDLE_SIZE)]
        bodies = [self.observation(v) for v in values]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": b,
             "request": {"method": "POST", "url": "Observation", "ifNoneExist": f"identifier={LAB_IDS}|{v}"}}
            for v, b in zip(values, bodies, strict=True)]}
        op = values[0] + "+B"
        response, attempts = self.with_retries(http, "bundle", op, "POST", "/fhir", content=orjson.dumps(bundle),
                                               headers=FHIR_JSON)
        acked = response is not None and response.status_code == 200
        ids: list = [None] * BUNDLE_SIZE
        versions: list = [None] * BUNDLE_SIZE
        if acked:
            assert response is not None
            for i, entry in enumerate(response.json().get("entry", [])):
                # location: [base/]Observation/{id}/_history/{version}
                parts = entry.get("response", {}).get("location", "").split("/")
                if "Observation" in parts and len(parts) > parts.index("Observation") + 1:
                    k = parts.index("Observation")
                    ids[i] = parts[k + 1]
                    versions[i] = parts[k + 3] if len(parts) > k + 3 else None
            with self.shared.lock:
                self.shared.acked.extend((v, rid) for v, rid in zip(values, ids, strict=True) if rid)
            for v, rid, version, body in zip(values, ids, versions, bodies, strict=True):
                if rid:
                    self.mine[rid] = {"identifier": v, "version": version, "body": body}
        self.log.operation(op=op, kind="bundle", identifiers=values, acked=acked, attempts=attempts,
                           status=None if response is None else response.status_code, ids=ids, versions=versions)

    def update(self, http: httpx.Client) -> None:
        candidates = [rid for rid, m in self.mine.items() if m["version"]]
        if not candidates:
            return self.create(http)
        rid = self.rng.choice(candidates)
        mine = self.mine[rid]
        body = {**mine["body"], "id": rid}
        body.pop("component", None)  # a SCORAD's parts must add up to its total: the new total goes alone
        body["valueQuantity"] = {**body["valueQuantity"], "value": self.rng.randint(1, 4)}  # in every range
        op = f"{mine['identifier']}@v{mine['version']}"
        response, attempts = self.with_retries(
            http, "update", op, "PUT", f"/fhir/Observation/{rid}", content=orjson.dumps(body),
            headers={**FHIR_JSON, "If-Match": f'W/"{mine["version"]}"'})
        acked = response is not None and response.status_code == 200
        version = None
        if acked:
            assert response is not None
            version = response.json().get("meta", {}).get("versionId")
            mine["version"], mine["body"] = version, body
        elif response is not None and response.status_code == 412:
            mine["version"] = None  # an unanswered attempt may have gone through: stop updating this one
        self.log.operation(op=op, kind="update", identifiers=[mine["identifier"]], acked=acked, attempts=attempts,
                           status=None if response is None else response.status_code, ids=[rid], versions=[version],
                           value=body["valueQuantity"]["value"])

    def read(self, http: httpx.Client) -> None:
        with self.shared.lock:
            if not self.shared.acked:
                return
            value, rid = self.rng.choice(self.shared.acked)
        response = self.request(http, "read", value, 1, "GET", f"/fhir/Observation/{rid}",
                                headers={"Accept": "application/fhir+json"})
        if response is not None and response.status_code == 404:
            self.shared.runtime_failures.append({"check": "read of an acknowledged write", "id": rid, "status": 404})

    def search(self, http: httpx.Client) -> None:
        if self.rng.random() < 0.5:
            with self.shared.lock:
                if not self.shared.acked:
                    return
                value, rid = self.rng.choice(self.shared.acked)
            response = self.request(http, "search", value, 1, "GET", "/fhir/Observation",
                                    params={"identifier": f"{LAB_IDS}|{value}"},
                                    headers={"Accept": "application/fhir+json"})
            if response is not None and response.status_code == 200:
                found = [e["resource"]["id"] for e in response.json().get("entry", [])]
                if found != [rid]:
                    self.shared.runtime_failures.append(
                        {"check": "search by identifier finds the acknowledged write once", "identifier": value,
                         "expected": rid, "found": found})
        else:
            pid, _ = self.rng.choice(self.patients)
            code = self.rng.choice(("EASI", "SCORAD", "IGA", "19113-0"))
            self.request(http, "search", pid, 1, "GET", "/fhir/Observation",
                         params={"subject": f"Patient/{pid}", "code": code, "_count": "20", "_sort": "-date"},
                         headers={"Accept": "application/fhir+json"})

    def run(self) -> None:
        ops = (("create", 30), ("bundle", 15), ("update", 10), ("read", 15), ("search", 30))
        names, weights = [o for o, _ in ops], [w for _, w in ops]
        with httpx.Client(base_url=self.service.base, timeout=self.args.timeout) as http:
            while not self.shared.stop.is_set():
                getattr(self, self.rng.choices(names, weights)[0])(http)


class Exporter(threading.Thread):
    """Kicks off `$export?_type=Observation` every `interval` s and polls it to completion; checks the files."""

    def __init__(self, service: Service, log: ClientLog, shared: Shared, interval: float, timeout: float) -> None:
        super().__init__(name="exporter", daemon=True)
        self.service, self.log, self.shared, self.interval, self.timeout = service, log, shared, interval, timeout
        self.results: list[dict] = []

    def one(self, http: httpx.Client, n: int) -> dict:
        with self.shared.lock:
            acked_before = {rid for _, rid in self.shared.acked}
        t_start = now()
        op = f"export-{n}"
        kick = None
        for attempt in range(1, 6):
            t = now()
            try:
                kick = http.get("/fhir/$export", params={"_type": "Observation"},
                                headers={"Accept": "application/fhir+json", "Prefer": "respond-async"})
                self.log.attempt(op=op, kind="export", attempt=attempt, start=t - self.log.t0,
                                 end=now() - self.log.t0, status=kick.status_code,
                                 error=None if kick.status_code < 400 else kick.text[:300])
            except httpx.HTTPError as exc:
                self.log.attempt(op=op, kind="export", attempt=attempt, start=t - self.log.t0,
                                 end=now() - self.log.t0, status="no-answer", error=type(exc).__name__)
                kick = None
            if kick is not None and kick.status_code == 202:
                break
            time.sleep(2)
        if kick is None or kick.status_code != 202:
            return {"op": op, "outcome": "kick-off failed", "status": None if kick is None else kick.status_code}
        status_url = kick.headers["content-location"]
        deadline = now() + 300
        polls = Counter()
        while now() < deadline:
            try:
                poll = http.get(status_url, headers={"Accept": "application/json"})
            except httpx.HTTPError:
                polls["no-answer"] += 1
                time.sleep(1)
                continue
            polls[poll.status_code] += 1
            if poll.status_code == 202:
                time.sleep(min(float(poll.headers.get("retry-after", "1") or 1), 2.0))
                continue
            if poll.status_code == 503:
                time.sleep(1)
                continue
            break
        else:
            return {"op": op, "outcome": "not finished in 300 s", "polls": dict(polls)}
        if poll.status_code != 200:
            return {"op": op, "outcome": "failed", "status": poll.status_code, "body": poll.text[:500],
                    "polls": {str(k): v for k, v in polls.items()}}
        manifest = poll.json()
        files, problems, ids = [], [], set()
        for output in manifest.get("output", []):
            data = http.get(output["url"]).content
            lines = [line for line in data.split(b"\n") if line.strip()]
            file_ids = [orjson.loads(line)["id"] for line in lines]
            files.append({"type": output["type"], "count": output.get("count"), "lines": len(lines)})
            if output.get("count") is not None and output["count"] != len(lines):
                problems.append(f"{output['type']}: manifest count {output['count']} but {len(lines)} lines")
            if len(set(file_ids)) != len(file_ids) or ids & set(file_ids):
                problems.append(f"{output['type']}: an id appears twice")
            ids.update(file_ids)
        missing = acked_before - ids
        if missing:
            problems.append(f"{len(missing)} Observations acknowledged before the kick-off are not in the export")
        result = {"op": op, "outcome": "ok" if not problems else "wrong", "problems": problems, "files": files,
                  "acknowledged_before": len(acked_before), "seconds": round(now() - t_start, 1),
                  "polls": {str(k): v for k, v in polls.items()},
                  "export_errors": len(manifest.get("error", []))}
        self.log.operation(op=op, kind="export", acked=not problems, outcome=result["outcome"], problems=problems)
        return result

    def run(self) -> None:
        n = 0
        with httpx.Client(base_url=self.service.base, timeout=self.timeout) as http:
            while not self.shared.stop.wait(self.interval if n else self.interval / 2):
                n += 1
                try:
                    self.results.append(self.one(http, n))
                except Exception as exc:  # noqa: BLE001 -- an unexpected answer is a finding, not a crash
                    self.results.append({"op": f"export-{n}", "outcome": "client error", "error": repr(exc)})


# -- the end: the books -------------------------------------------------------------------------------------

def stored_observations(database_url: str) -> dict[str, list[dict]]:
    """identifier value -> [{id, version}] of every stored (not deleted) Observation, from the database itself."""
    import psycopg

    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    out: dict[str, list[dict]] = defaultdict(list)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, version_id, content FROM resource WHERE resource_type = 'Observation' "
                            "AND NOT deleted").fetchall()
    for rid, version, content in rows:
        body = orjson.loads(content) if isinstance(content, (str, bytes)) else content
        values = [i.get("value") for i in body.get("identifier", []) if i.get("system") == LAB_IDS] or [None]
        for value in values:
            out[value].append({"id": rid, "version": str(version),
                               "value": body.get("valueQuantity", {}).get("value")})
    return out


def balance(log: ClientLog, stored: dict[str, list[dict]]) -> dict:
    """Compare the client's log with what the database holds."""
    failures: list[str] = []
    sent: set[str] = set()
    counts = Counter()
    for op in log.operations:
        if op["kind"] not in ("create", "bundle"):
            continue
        sent.update(op["identifiers"])
        present = [len(stored.get(v, [])) for v in op["identifiers"]]
        if any(n > 1 for n in present):
            failures.append(f"{op['kind']} {op['op']}: stored more than once: {present}")
            counts["duplicated"] += 1
        if op["acked"]:
            counts[f"{op['kind']} acknowledged"] += 1
            for v, rid, n in zip(op["identifiers"], op["ids"], present, strict=True):
                if n == 0:
                    failures.append(f"{op['kind']} {op['op']}: acknowledged {v} is not stored")
                    counts["lost"] += 1
                elif not rid:
                    failures.append(f"{op['kind']} {op['op']}: {v} acknowledged without an id")
                elif stored[v][0]["id"] != rid:
                    failures.append(f"{op['kind']} {op['op']}: {v} acknowledged as {rid}, "
                                    f"stored as {stored[v][0]['id']}")
        else:
            counts[f"{op['kind']} unacknowledged"] += 1
            if op["kind"] == "bundle" and 0 < sum(1 for n in present if n) < len(present):
                failures.append(f"bundle {op['op']} (unacknowledged): half stored {present}")
                counts["half-stored bundles"] += 1
            counts[f"{op['kind']} unacknowledged, stored"] += sum(1 for n in present if n) // len(present)
    never_sent = [v for v in stored if v not in sent]
    if never_sent:
        failures.append(f"{len(never_sent)} stored Observations were never sent: {never_sent[:5]}")
    # updates: the stored version is at least the last acknowledged one; its content that one's if nothing followed
    last: dict[str, dict] = {}
    sent_after: Counter = Counter()
    for op in log.operations:
        if op["kind"] != "update":
            continue
        v = op["identifiers"][0]
        if op["acked"]:
            last[v] = op
            sent_after[v] = 0
        else:
            sent_after[v] += 1
    for v, op in last.items():
        rows = stored.get(v, [])
        if not rows:
            failures.append(f"updated {v} is not stored")
            continue
        if int(rows[0]["version"]) < int(op["versions"][0]):
            failures.append(f"{v}: stored version {rows[0]['version']} is older than acknowledged {op['versions'][0]}")
        elif sent_after[v] == 0 and (rows[0]["version"] != op["versions"][0] or rows[0]["value"] != op["value"]):
            failures.append(f"{v}: last acknowledged update v{op['versions'][0]} (value {op['value']}) but stored "
                            f"v{rows[0]['version']} (value {rows[0]['value']})")
    counts["updates checked"] = len(last)
    counts["identifiers sent"] = len(sent)
    counts["observations stored"] = sum(len(r) for r in stored.values())
    return {"passed": not failures, "failures": failures[:50], "failure_count": len(failures), "counts": dict(counts)}


# -- figures ------------------------------------------------------------------------------------------------

def phase_of(t: float, events: list[dict], window: float) -> str:
    if not events or t < events[0]["start"]:
        return "steady"
    for e in events:
        if e["start"] <= t <= e["end"] + window:
            return f"during {e['name']}"
    return "after chaos began (outside the windows)"


def pct(values: list[float], q: float) -> float | None:
    """The `q` quantile of latencies in seconds, in ms (None: no values)."""
    return round(percentile(values, q) * 1000, 1) if values else None


def figures(log: ClientLog, events: list[dict], seconds: float) -> dict:
    by_kind: dict[str, list[float]] = defaultdict(list)
    status_by_phase: dict[str, Counter] = defaultdict(Counter)
    latency_by_phase: dict[str, list[float]] = defaultdict(list)
    for a in log.attempts:
        d = a["end"] - a["start"]
        by_kind[a["kind"]].append(d)
        phase = phase_of(a["start"], events, min(EVENT_WINDOW_S, seconds / 20))
        status_by_phase[phase][str(a["status"])] += 1
        latency_by_phase[phase].append(d)
    kinds = {k: {"requests": len(v), "per_s": round(len(v) / seconds, 1), "p50_ms": pct(v, 0.5),
                 "p99_ms": pct(v, 0.99)} for k, v in sorted(by_kind.items())}
    ops = Counter((o["kind"], o["acked"]) for o in log.operations)
    tries = Counter((o["kind"], o.get("attempts")) for o in log.operations if o["kind"] in WRITES)
    operations = {k: {"acknowledged": ops[(k, True)], "not acknowledged": ops[(k, False)],
                      "by attempts": {str(n): tries[(k, n)] for n in sorted({n for kk, n in tries if kk == k})}}
                  for k in ("create", "bundle", "update")}
    failed_attempts = Counter(f"{a['kind']} {a['status']}" for a in log.attempts
                              if a["status"] == "no-answer" or int(a["status"]) >= 300)
    window = min(EVENT_WINDOW_S, seconds / 20)
    phase_seconds = Counter(phase_of(t + 0.5, events, window) for t in range(int(seconds)))
    phases = {p: {"requests": sum(c.values()), "seconds": phase_seconds.get(p, 0),
                  "per_s": round(sum(c.values()) / max(phase_seconds.get(p, 0), 1), 1),
                  "status": dict(sorted(c.items())),
                  "p50_ms": pct(latency_by_phase[p], 0.5), "p99_ms": pct(latency_by_phase[p], 0.99)}
              for p, c in status_by_phase.items()}
    buckets: dict[int, list[float]] = defaultdict(list)
    errors: Counter = Counter()
    for a in log.attempts:
        b = int(a["end"] // 10)
        buckets[b].append(a["end"] - a["start"])
        if a["status"] == "no-answer" or int(a["status"]) >= 500:
            errors[b] += 1
    timeline = [{"t": b * 10, "per_s": round(len(buckets.get(b, [])) / 10, 1),
                 "p99_ms": pct(buckets.get(b, []), 0.99), "errors": errors.get(b, 0)}
                for b in range(int(seconds // 10) + 1)]
    return {"per_kind": kinds, "operations": operations, "failed_attempts": dict(sorted(failed_attempts.items())),
            "phases": phases, "timeline": timeline,
            "requests": len(log.attempts), "per_s": round(len(log.attempts) / seconds, 1),
            "p50_ms": pct([a["end"] - a["start"] for a in log.attempts], 0.5),
            "p99_ms": pct([a["end"] - a["start"] for a in log.attempts], 0.99)}


def log_summary(text: str) -> dict:
    """The service's log in short: tracebacks counted by the message logged before them (ids blanked)."""
    import re

    lines = text.splitlines()
    before = Counter()
    for i, line in enumerate(lines):
        if line.startswith("Traceback") and i and not lines[i - 1].startswith(("Traceback", "The above", " ")):
            before[re.sub(r"[0-9a-f]{6,}|\d+", "N", lines[i - 1])[:160]] += 1
    messages = Counter(re.sub(r"[0-9a-f]{6,}|\d+", "N", line)[:160] for line in lines
                       if line and not line.startswith((" ", "Traceback", "The above")) and "Error" not in line[:40])
    return {"lines": len(lines), "tracebacks": text.count("Traceback (most recent"),
            "tracebacks_after": dict(before.most_common(10)), "messages": dict(messages.most_common(15))}


def svg_chart(result: dict, path: Path) -> None:
    """Two panels over time: requests/s and p99 (ms) per 10 s; chaos events as red lines; errors as red ticks."""
    timeline, events = result["figures"]["timeline"], result["events"]
    width, height, left, right, panel = 900, 430, 60, 20, 150
    t_max = max(result["seconds"], 10)

    def x(t: float) -> float:
        return left + (width - left - right) * t / t_max

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{left}" y="16" font-size="13">Soak: {result["minutes"]} min, 2 workers, PostgreSQL '
             f'— checks {"passed" if result["books"]["passed"] else "FAILED"}</text>']
    for i, (key, label, color) in enumerate((("per_s", "requests/s (10 s buckets)", "#1f77b4"),
                                             ("p99_ms", "p99 latency, ms", "#ff7f0e"))):
        top = 40 + i * (panel + 40)
        values = [p[key] or 0 for p in timeline]
        vmax = max(values + [1]) * 1.1

        def y(v: float, top: int = top, vmax: float = vmax) -> float:
            return top + panel - panel * v / vmax
        parts.append(f'<text x="{left}" y="{top - 6}">{label}</text>')
        parts.append(f'<line x1="{left}" y1="{top + panel}" x2="{width - right}" y2="{top + panel}" stroke="#888"/>')
        parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + panel}" stroke="#888"/>')
        for frac in (0, 0.5, 1):
            v = vmax * frac
            parts.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
        points = " ".join(f"{x(p['t'] + 5):.1f},{y(p[key] or 0):.1f}" for p in timeline)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        if i == 0:
            for p in timeline:
                if p["errors"]:
                    parts.append(f'<line x1="{x(p["t"] + 5):.1f}" y1="{top + panel}" x2="{x(p["t"] + 5):.1f}" '
                                 f'y2="{top + panel - 8}" stroke="red" stroke-width="3">'
                                 f'<title>{p["errors"]} errors / no answers</title></line>')
        for e in events:
            parts.append(f'<line x1="{x(e["start"]):.1f}" y1="{top}" x2="{x(e["start"]):.1f}" y2="{top + panel}" '
                         f'stroke="red" stroke-dasharray="4,3"/>')
            if i == 0:
                parts.append(f'<text x="{x(e["start"]) + 3:.1f}" y="{top + 10}" fill="red">{e["name"]}</text>')
    bottom = 40 + 2 * (panel + 40) - 20
    for t in range(0, int(t_max) + 1, max(60, int(t_max // 10) // 60 * 60)):
        parts.append(f'<text x="{x(t):.1f}" y="{bottom}" text-anchor="middle">{t // 60}:{t % 60:02d}</text>')
    parts.append(f'<text x="{width - right}" y="{bottom + 14}" text-anchor="end">time (min:s); red ticks: '
                 'seconds with 5xx or no answer</text></svg>')
    path.write_text("\n".join(parts))


# -- main ---------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=6, help="client threads (besides the exporter)")
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--export-interval", type=float, default=None, help="seconds between exports "
                        "(default: a tenth of the run, at least 20 s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="client timeout per request (s)")
    parser.add_argument("--max-attempts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--output", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60
    run_id = uuid.uuid4().hex[:6]
    load_before = os.getloadavg()
    cohort = make_cohort(0, args.patients)
    patients = sorted(cohort.day0s.items())
    log_path = args.output.with_name(args.output.stem + "-log.jsonl")
    service_log = args.output.with_name(args.output.stem + "-service.log")
    for p in (log_path, service_log):
        p.unlink(missing_ok=True)
    events: list[dict] = []
    export_dir = Path(f"/tmp/soak-export-{run_id}")
    with postgres_comes_back(), scratch_database("postgres") as database_url:
        service = Service(database_url, _free_port(), service_log, export_dir)
        service.start()
        try:
            with httpx.Client(base_url=service.base, timeout=60) as http:
                for body in cohort.setup_bundles:
                    r = http.post("/fhir", content=body, headers=FHIR_JSON)
                    if r.status_code != 200:
                        raise RuntimeError(f"loading the study: HTTP {r.status_code}: {r.text[:1000]}")
            t0 = now()
            log = ClientLog(log_path, t0)
            shared = Shared()
            clients = [Client(n, service, log, shared, run_id, patients, args) for n in range(args.clients)]
            exporter = Exporter(service, log, shared, args.export_interval or max(20.0, seconds / 10), args.timeout)
            for c in [*clients, exporter]:
                c.start()
            schedule = [(0.25, "PostgreSQL restart 1"), (0.45, "worker kill -9"), (0.70, "PostgreSQL restart 2")]
            last_print = 0.0
            print(f"soak: {args.minutes} min, {args.clients} clients + exporter, service {service.base}, "
                  f"log {log_path}", flush=True)
            while (t := now() - t0) < seconds:
                if schedule and t >= schedule[0][0] * seconds:
                    _, name = schedule.pop(0)
                    print(f"soak: {t:6.0f} s  chaos: {name}", flush=True)
                    if name.startswith("PostgreSQL"):
                        start, end = pg_restart()
                        events.append({"name": name, "start": start - t0, "end": end - t0})
                    else:
                        start = now()
                        detail = service.kill_one_worker()
                        events.append({"name": name, "start": start - t0, "end": now() - t0, **detail})
                    print(f"soak: {now() - t0:6.0f} s  chaos done: {events[-1]}", flush=True)
                if service.proc is not None and service.proc.poll() is not None:  # the whole service stopped
                    code, start = service.proc.returncode, now()
                    print(f"soak: {t:6.0f} s  the service exited ({code}): starting it again", flush=True)
                    service.start()
                    service.restarts += 1
                    events.append({"name": "service exited, restarted by the script", "start": start - t0,
                                   "end": now() - t0, "exit_code": code})
                if t - last_print >= 10:
                    last_print = t
                    recent = [a for a in log.attempts[-5000:] if a["end"] > t - 10]
                    statuses = Counter(str(a["status"]) for a in log.attempts)
                    acked = sum(1 for o in log.operations if o.get("acked") and o["kind"] in WRITES)
                    print(f"soak: {t:6.0f}/{seconds:.0f} s  {len(log.attempts):7d} requests "
                          f"({len(recent) / 10:6.1f}/s now)  writes acknowledged {acked:6d}  "
                          f"status {dict(sorted(statuses.items()))}", flush=True)
                time.sleep(0.5)
            shared.stop.set()
            print("soak: stopping the clients (they finish their retries)", flush=True)
            for c in clients:
                c.join(timeout=120)
            exporter.join(timeout=320)
            elapsed = now() - t0
            log.close()
            stored = stored_observations(database_url)
            books = balance(log, stored)
            if shared.runtime_failures:
                books["passed"] = False
                books["runtime_failures"] = shared.runtime_failures[:50]
            exports_ok = all(e.get("outcome") == "ok" for e in exporter.results)
        finally:
            service.stop()
    server_log = service_log.read_text(errors="replace") if service_log.exists() else ""
    result = {
        "command": " ".join(sys.argv),
        "minutes": args.minutes, "seconds": round(elapsed, 1), "clients": args.clients, "patients": args.patients,
        "workers": 2, "database": "postgresql", "service_restarts_by_script": service.restarts,
        "events": events, "books": books, "exports": exporter.results, "exports_ok": exports_ok,
        "figures": figures(log, events, elapsed),
        "service_log": log_summary(server_log),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_before": load_before,
                    "load_after": os.getloadavg(),
                    "note": "client, service (2 workers) and PostgreSQL share the same 2 cores, with other "
                            "sessions' work running beside them"},
    }
    args.output.write_text(json.dumps(result, indent=2))
    svg_chart(result, args.output.with_suffix(".svg"))
    f = result["figures"]
    print(f"\nsoak: {f['requests']} requests in {elapsed:.0f} s ({f['per_s']}/s), p50 {f['p50_ms']} ms, "
          f"p99 {f['p99_ms']} ms")
    for kind, k in f["per_kind"].items():
        print(f"  {kind:7s} {k['requests']:7d} requests {k['per_s']:7.1f}/s  p50 {k['p50_ms']} ms  "
              f"p99 {k['p99_ms']} ms")
    for phase, p in f["phases"].items():
        print(f"  {phase:42s} {p['requests']:7d} ({p['per_s']}/s)  p50 {p['p50_ms']} ms  p99 {p['p99_ms']} ms  "
              f"{p['status']}")
    print(f"  operations: {f['operations']}")
    print(f"  exports: {[(e['op'], e['outcome']) for e in exporter.results]}")
    print(f"  books: {'PASSED' if books['passed'] else 'FAILED'} {books['counts']}")
    for failure in books["failures"][:10]:
        print(f"    {failure}")
    print(f"  service log: {result['service_log']['tracebacks']} tracebacks; results in {args.output}")
    sys.exit(0 if books["passed"] and exports_ok else 1)


if __name__ == "__main__":
    main()
