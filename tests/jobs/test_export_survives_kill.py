"""An export whose worker process is killed (`kill -9`) mid-way is run again by another process on the same database
and export folder once the dead run's lease runs out, and completes with a correct manifest: every resource of the
database exactly once, no line of the dead run, no folder of it left (issue 12 §3). Real processes, real HTTP."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import Session

from service.db import make_engine
from service.export.service import EXPORT_TYPES
from service.jobs import repository as jobs_repository
from service.main import create_app
from service.settings import Settings
from service.store.models import ResourceRecord, table_of
from tests.assertions import wait_until_healthy
from tests.factories import created, enrol, observation
from tests.test_serve import free_port

R = table_of(ResourceRecord)

#: the service, in a process of its own, each batch of an export slowed by argv[1] seconds (so a test can find it
#: mid-way); everything else as `python -m service` runs it, configured from the environment
BOOT = """
import sys, time
import uvicorn
from service.export import repository
stream = repository.stream_contents
def slow(conn, sel, batch):
    for chunk in stream(conn, sel, batch):
        time.sleep(float(sys.argv[1]))
        yield chunk
repository.stream_contents = slow
uvicorn.run("service.main:app", host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


class Service:
    def __init__(self, env: dict[str, str], cwd: Path, delay_s: float) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-c", BOOT, str(delay_s), str(self.port)], env=env, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_until_healthy(self.base, self.proc)

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", timeout=30, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def seeded(database_url, tmp_path) -> dict[str, set[str]]:
    """12 patients enrolled in one study, 6 results each: {type: ids} as the database holds them."""
    with TestClient(create_app(app_settings(database_url, tmp_path))) as client:
        a = enrol(client)
        for i in range(12):
            pid = a["patient"] if i == 0 else enrol(client, study_id=a["study"])["patient"]
            for day in range(6):
                created(client.post("/fhir/Observation", json=observation(pid, value=10 + day,
                                                                           date=f"2024-01-{10 + day:02d}")))
        with Session(client.app.state.engine) as session:
            rows = session.execute(select(R.c.resource_type, R.c.id).where(R.c.deleted.is_(False),
                                                                            R.c.resource_type.in_(EXPORT_TYPES)))
            stored: dict[str, set[str]] = {}
            for rtype, rid in rows:
                stored.setdefault(rtype, set()).add(rid)
    return stored


def app_settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, export_dir=tmp_path / "export", auth="off", export_worker=False,
                    _env_file=None)


def test_an_export_whose_process_is_killed_is_finished_by_another_process(database_url, tmp_path, seeded):
    export_dir = tmp_path / "export"
    env = {**os.environ, "DATABASE_URL": database_url, "TRIAL_FHIR_EXPORT_DIR": str(export_dir),
           "TRIAL_FHIR_AUTH": "off", "TRIAL_FHIR_EXPORT_BATCH_ROWS": "4", "TRIAL_FHIR_JOB_LEASE_S": "3",
           "TRIAL_FHIR_JOB_HEARTBEAT_S": "0.2", "TRIAL_FHIR_EXPORT_POLL_INTERVAL_S": "0.2"}
    first = Service(env, tmp_path, delay_s=0.1)
    try:
        kick = httpx.get(f"{first.base}/fhir/$export", headers={"Prefer": "respond-async"}, timeout=30)
        assert kick.status_code == 202, kick.text
        status_path = "/fhir/" + kick.headers["content-location"].split("/fhir/", 1)[1]
        job_id = status_path.rsplit("/", 1)[1]
        dead_run = export_dir / f"{job_id}.part-1"
        deadline = time.monotonic() + 60
        while not any(f.stat().st_size for f in dead_run.glob("*.ndjson")):  # the first run has written some
            assert time.monotonic() < deadline, "the export did not start"
            assert first.get(status_path).status_code == 202  # … and is not finished
            time.sleep(0.05)
        progress = first.get(status_path)
        assert progress.status_code == 202 and progress.headers["X-Progress"].startswith("running")
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=30)
        killed_at = datetime.now().astimezone()
    finally:
        first.stop()
    assert dead_run.is_dir()  # what the dead run left

    second = Service(env, tmp_path, delay_s=0.0)
    try:
        deadline = time.monotonic() + 90
        while (status := second.get(status_path)).status_code == 202:
            assert time.monotonic() < deadline, f"the export was not finished: {status.headers['X-Progress']}"
            time.sleep(0.1)
        assert status.status_code == 200, status.text
        manifest = status.json()
        # the snapshot is the second run's: its transactionTime is after the first run died
        assert datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00")) > killed_at
        assert manifest["error"] == []
        assert Counter(o["type"] for o in manifest["output"]) == Counter(set(seeded))  # one file per type, each once
        for out in manifest["output"]:
            response = second.get("/export-files/" + out["url"].split("/export-files/", 1)[1])
            assert response.status_code == 200
            ids = [orjson.loads(line)["id"] for line in response.text.splitlines()]
            assert out["count"] == len(ids) == len(seeded[out["type"]])  # the database's count
            assert sorted(ids) == sorted(seeded[out["type"]])  # every resource, none twice
    finally:
        second.stop()
    assert not list(export_dir.glob(f"{job_id}.part-*"))  # nothing of the dead run (nor of the second) left
    assert sorted(p.name for p in (export_dir / job_id).iterdir()) == sorted(
        o["url"].rsplit("/", 1)[1] for o in manifest["output"])
    engine = make_engine(database_url)
    with Session(engine) as session:
        job = jobs_repository.get(session, job_id)
    engine.dispose()
    assert (job.state, job.attempts) == ("completed", 2)  # the dead run, then the one that finished
