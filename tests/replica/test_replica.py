"""Read replicas over HTTP, against a real PostgreSQL streaming replica (tests/pg_replica.py): which database
answers what, proven two ways — connections checked out of each engine's pool by request threads, and a write the
replica has not replayed yet (replay paused) being seen or not — and what happens when the replica lags beyond the
setting, stops, or was never there."""

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from service.main import create_app
from service.replica import ReadRouter
from service.settings import Settings
from tests.conftest import ON_POSTGRES
from tests.export.test_export import ASYNC, download, wait_for
from tests.factories import MRN, created, enrol, observation, patient, study
from tests.pg_replica import Replica

BACKGROUND = ("replica-monitor", "job-runner")  # threads whose checkouts are not a request's


class Checkouts:
    """Connections each engine's pool hands to request threads (the monitor's and the export worker's aside, unless
    asked for)."""

    def __init__(self, reads: ReadRouter, *, threads: tuple[str, ...] | None = None) -> None:
        self.counts = {"primary": 0, "replica": 0}
        assert reads.replica is not None
        for name, engine in (("primary", reads.primary), ("replica", reads.replica)):
            event.listen(engine, "checkout", self._counter(name, threads))

    def _counter(self, name: str, threads: tuple[str, ...] | None):
        def count(*_: object) -> None:
            thread = threading.current_thread().name
            if (thread in threads) if threads is not None else (thread not in BACKGROUND):
                self.counts[name] += 1
        return count

    def reset(self) -> None:
        self.counts = {"primary": 0, "replica": 0}


def replica_settings(settings: Settings, replica: Replica | str, **changes) -> Settings:
    url = replica if isinstance(replica, str) else replica.url
    return settings.model_copy(update={"read_database_url": url, "read_max_lag_s": 60.0, **changes})


@contextmanager
def serving(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def reads_of(client: TestClient) -> ReadRouter:
    return client.app.state.core.reads


def until(condition, what: str, bound_s: float = 90.0) -> None:
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {bound_s} s"
        time.sleep(0.05)


def replica_serves(client: TestClient, replica: Replica, who: str = "anonymous") -> None:
    """Until the router sends `who`'s reads to the replica (the replica has replayed what was written, the monitor
    knows it)."""
    reads = reads_of(client)
    replica.wait_until_replayed()
    until(lambda: reads.check() is not None and reads.choose(who) is reads.replica, "the replica serving reads")


def searched_ids(client: TestClient, query: str, **headers) -> set[str]:
    response = client.get(f"/fhir/Observation?{query}", headers=headers)
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"}


def test_reads_go_to_the_replica_and_writes_to_the_primary(replica, settings):
    # searches on the thread path: its connections come from the engines' pools, where they are counted
    with serving(replica_settings(settings, replica, async_search=False, export_worker=False)) as client:
        reads = reads_of(client)
        seen = Checkouts(reads)
        ids = enrol(client)
        obs = created(client.post("/fhir/Observation", json=observation(ids["patient"])))
        assert seen.counts["primary"] >= 4 and seen.counts["replica"] == 0, seen.counts

        replica_serves(client, replica)
        seen.reset()
        study, pid, oid = ids["study"], ids["patient"], obs["id"]
        for url in (f"/fhir/Observation/{oid}", f"/fhir/Observation/{oid}/_history/1",
                    f"/fhir/Observation?subject=Patient/{pid}&_include=Observation:subject",
                    f"/fhir/Patient?_id={pid}&_revinclude=Observation:subject",
                    f"/fhir/Observation/{oid}/_history", "/fhir/Observation/_history", "/fhir/_history",
                    f"/fhir/Patient/{pid}/$everything", f"/fhir/Group/{study}", "/fhir/Group",
                    f"/studies/{study}/summary", f"/studies/{study}/summary.csv",
                    f"/fhir/ResearchStudy/{study}/$summary"):
            response = client.get(url)
            assert response.status_code == 200, (url, response.text)
        assert oid in client.get(f"/fhir/Observation?subject=Patient/{pid}").text
        assert seen.counts["primary"] == 0 and seen.counts["replica"] >= 14, seen.counts

        seen.reset()  # a transaction's GET entry, a conditional create's search: the primary's
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": observation(pid, "IGA", value=2), "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "GET", "url": f"Observation/{oid}"}}]}
        answered = client.post("/fhir", json=bundle)
        assert answered.status_code == 200, answered.text
        assert [e["response"]["status"][:3] for e in answered.json()["entry"]] == ["201", "200"]
        again = client.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": f"_id={pid}"})
        assert again.status_code == 200 and again.json()["id"] == pid
        assert seen.counts["replica"] == 0 and seen.counts["primary"] >= 2, seen.counts

        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready" and ready.json()["primary"] == "ok"
        assert ready.json()["replica"]["status"] == "ok" and ready.json()["replica"]["max_lag_s"] == 60.0


def test_a_write_the_replica_has_not_replayed_is_read_as_the_rule_says(replica, settings, database_url):
    """Replay paused: another process's write is not on the replica. A client that did not write reads the replica
    (and does not see it); `Prefer: consistency=strong` reads the primary; once this client writes, its reads go to
    the primary until the replica holds its write; conditional operations and transactions always see it."""
    plain = settings.model_copy(update={"read_database_url": None})
    with serving(replica_settings(settings, replica)) as client, serving(plain) as elsewhere:
        ids = enrol(client)
        replica_serves(client, replica)
        replica.pause()
        mrn = f"MRN-{uuid.uuid4().hex[:8]}"
        other = created(elsewhere.post("/fhir/Patient", json=patient(mrn)))["id"]
        hidden = created(elsewhere.post("/fhir/Observation", json=observation(ids["patient"])))["id"]
        query = f"subject=Patient/{ids['patient']}"

        # this client wrote nothing the replica lacks: its reads are the replica's, which has not replayed these
        assert hidden not in searched_ids(client, query)
        assert client.get(f"/fhir/Observation/{hidden}").status_code == 404
        assert client.get(f"/fhir/Patient?identifier={MRN}|{mrn}").json().get("total") == 0
        # unless it asks for the primary
        assert hidden in searched_ids(client, query, Prefer="consistency=strong")
        assert client.get(f"/fhir/Observation/{hidden}", headers={"Prefer": "consistency=strong"}).status_code == 200

        # a kick-off (a write: its job) resolves the study it names on the primary
        unseen = created(elsewhere.post("/fhir/ResearchStudy", json=study()))["id"]
        assert client.get(f"/fhir/Group/{unseen}").status_code == 404, "a read: the replica's"
        kicked = client.get(f"/fhir/Group/{unseen}/$export", headers=ASYNC)
        assert kicked.status_code == 202, kicked.text
        assert client.delete(kicked.headers["Content-Location"]).status_code == 202

        # conditional operations find what the primary holds: no duplicate
        again = client.post("/fhir/Patient", json=patient(mrn), headers={"If-None-Exist": f"identifier={MRN}|{mrn}"})
        assert again.status_code == 200 and again.json()["id"] == other
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient(mrn), "request": {"method": "POST", "url": "Patient",
                                                    "ifNoneExist": f"identifier={MRN}|{mrn}"}},
            {"request": {"method": "GET", "url": f"Observation/{hidden}"}}]}
        answered = client.post("/fhir", json=bundle)
        assert answered.status_code == 200, answered.text
        assert [e["response"]["status"][:3] for e in answered.json()["entry"]] == ["200", "200"]

        # having written (the conditional create above), this client reads on the primary: its own writes and all
        mine = created(client.post("/fhir/Observation", json=observation(ids["patient"], "IGA", value=3)))["id"]
        assert {hidden, mine} <= searched_ids(client, query)
        assert client.get(f"/fhir/Observation/{mine}").status_code == 200

        replica.resume()
        replica_serves(client, replica)  # the replica holds this client's writes: its reads go back there
        assert {hidden, mine} <= searched_ids(client, query)


def test_a_replica_lagging_beyond_the_setting_gets_no_reads(replica, settings, caplog):
    plain = settings.model_copy(update={"read_database_url": None})
    with serving(replica_settings(settings, replica, read_max_lag_s=0.5)) as client, serving(plain) as elsewhere:
        reads = reads_of(client)
        ids = enrol(client)
        replica_serves(client, replica)
        replica.pause()
        written = created(elsewhere.post("/fhir/Observation", json=observation(ids["patient"])))["id"]
        until(lambda: reads.check().status == "lagging", "the monitor finding the replica lagging")

        assert written in searched_ids(client, f"subject=Patient/{ids['patient']}"), "read on the primary"
        assert client.get(f"/fhir/Observation/{written}").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200, "a lagging replica does not make the service unready"
        assert ready.json()["replica"]["status"] == "lagging" and ready.json()["replica"]["lag_s"] > 0.5

        replica.resume()
        until(lambda: reads.check().status == "ok", "the replica catching up")
        assert client.get("/readyz").json()["replica"]["status"] == "ok"
        assert reads.choose("anonymous") is reads.replica
        assert written in searched_ids(client, f"subject=Patient/{ids['patient']}")
    switches = [r.getMessage() for r in caplog.records if r.getMessage().startswith("read replica:")]
    assert any("ok → lagging" in m for m in switches) and any("lagging → ok" in m for m in switches), switches


def test_a_replica_that_stops_leaves_reads_to_the_primary(replica, settings):
    if not replica.local:
        pytest.skip("stops and starts the replica .ci/pg-replica made; TEST_READ_DATABASE_URL names another")
    with serving(replica_settings(settings, replica)) as client:
        reads = reads_of(client)
        ids = enrol(client)
        obs = created(client.post("/fhir/Observation", json=observation(ids["patient"])))["id"]
        replica_serves(client, replica)
        assert obs in searched_ids(client, f"subject=Patient/{ids['patient']}")  # its pools hold connections now

        replica.stop()  # before the monitor notices: the reads find the replica's connections dead
        assert obs in searched_ids(client, f"subject=Patient/{ids['patient']}")
        assert client.get(f"/fhir/Observation/{obs}").status_code == 200
        assert client.get(f"/studies/{ids['study']}/summary").status_code == 200
        until(lambda: reads.check().status == "down", "the monitor finding the replica down")
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["replica"]["status"] == "down"
        assert obs in searched_ids(client, f"subject=Patient/{ids['patient']}")

        replica.start()
        replica_serves(client, replica)
        assert client.get("/readyz").json()["replica"]["status"] == "ok"
        assert obs in searched_ids(client, f"subject=Patient/{ids['patient']}")


def test_a_replica_that_never_answers_is_down_and_reads_are_the_primarys(settings, database_url):
    if not ON_POSTGRES:
        pytest.skip("a read replica is a PostgreSQL streaming replica: run with TEST_DATABASE_URL=postgresql…")
    nowhere = "postgresql+psycopg://postgres@127.0.0.1:9/nowhere"  # the discard port: nothing listens
    with serving(replica_settings(settings, nowhere)) as client:
        ids = enrol(client)
        obs = created(client.post("/fhir/Observation", json=observation(ids["patient"])))["id"]
        assert obs in searched_ids(client, f"subject=Patient/{ids['patient']}")
        assert client.get(f"/fhir/Observation/{obs}").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["replica"]["status"] == "down"
        assert "does not answer" in ready.json()["replica"]["reason"]


def test_a_primary_named_as_replica_is_not_used(settings, database_url):
    """A database that is not in recovery is no streaming replica (a promoted one, a wrong URL): no reads there."""
    if not ON_POSTGRES:
        pytest.skip("a read replica is a PostgreSQL streaming replica: run with TEST_DATABASE_URL=postgresql…")
    with serving(replica_settings(settings, database_url)) as client:
        reads = reads_of(client)
        assert reads.check().status == "down" and reads.choose("anonymous") is reads.primary
        assert "not a streaming replica" in client.get("/readyz").json()["replica"]["reason"]


def _export(client: TestClient) -> tuple[dict, dict]:
    response = client.get("/fhir/$export", params={"_type": "Observation"}, headers=ASYNC)
    assert response.status_code == 202, response.text
    done = wait_for(client, response.headers["Content-Location"], bound_s=60)
    assert done.status_code == 200, done.text
    manifest = done.json()
    return manifest, download(client, manifest)


def test_an_export_reads_the_replica_when_it_holds_everything_before_the_kick_off(replica, settings):
    plain = settings.model_copy(update={"read_database_url": None})
    with serving(replica_settings(settings, replica)) as client, serving(plain) as elsewhere:
        reads = reads_of(client)
        worker = Checkouts(reads, threads=("job-runner",))
        ids = enrol(client)
        first = created(client.post("/fhir/Observation", json=observation(ids["patient"])))["id"]
        replica_serves(client, replica)  # (the worker waits for the monitor to find the kick-off replayed)

        manifest, found = _export(client)
        assert {r["id"] for r in found["Observation"]} == {first}
        assert worker.counts["replica"] >= 1, worker.counts  # the data: the replica's
        as_of = datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00"))
        assert as_of <= datetime.now(UTC)

        replica.pause()  # kicked off after a write the replica lacks: read on the primary, complete
        later = created(elsewhere.post("/fhir/Observation", json=observation(ids["patient"], "IGA", value=1)))["id"]
        worker.reset()
        _, found = _export(client)
        assert {r["id"] for r in found["Observation"]} == {first, later}
        assert worker.counts["replica"] == 0 and worker.counts["primary"] >= 1, worker.counts


def test_checkouts_counts_each_engine() -> None:
    """The counter these tests rely on counts what it should (a test that can fail: two SQLite stand-ins)."""
    from sqlalchemy import create_engine, text

    primary, replica = create_engine("sqlite://"), create_engine("sqlite://")
    seen = Checkouts(ReadRouter(primary, replica, max_lag_s=1))
    with replica.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert seen.counts == {"primary": 0, "replica": 1}
    done = threading.Thread(target=lambda: primary.connect().close(), name="replica-monitor")
    done.start()
    done.join()
    assert seen.counts == {"primary": 0, "replica": 1}, "the monitor's checkouts are not a request's"
