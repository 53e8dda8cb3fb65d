"""A sync against a mocked upstream (tests/ehr/upstream.py), into the test's database through the core."""

import httpx
import orjson
import pytest
from sqlalchemy import select

from service.ehr import repository
from service.ehr.client import UpstreamError
from service.ehr.models import EhrWatermarkRecord
from service.ehr.service import add_source, run_sync, status
from service.jobs.models import JobRecord
from tests.ehr.upstream import AD, EHR, FakeEhr
from tests.factories import MRN, adverse_event, enrol


@pytest.fixture
def ours(client):
    return enrol(client, mrn="MRN-1")


@pytest.fixture
def ehr(engine):
    fake = FakeEhr()
    fake.add_patient("up-1", MRN, "MRN-1")
    add_source(engine, "ehr", EHR)
    return fake


def _copies(client, patient_id: str) -> dict[str, dict]:
    bundle = client.get(f"/fhir/Observation?subject=Patient/{patient_id}&_count=100").json()
    return {e["resource"]["meta"]["source"].rsplit("/", 1)[-1]: e["resource"] for e in bundle.get("entry", [])}


def test_a_sync_stores_each_upstream_result_once_and_reports_a_refused_one_without_stopping(
        client, engine, settings, ours, ehr):
    for i in range(4):
        ehr.observation(f"o{i}", "up-1", value=10.0 + i)
    ehr.observation("bad", "up-1", value=99.0)  # EASI goes to 72: the core refuses it (422)
    ehr.observation("late", "up-1", value=5.0)
    ehr.observation("other-code", "up-1", "HBA1C", 6.1)  # not a code of the trial: never asked for
    with ehr.mocked():
        counts = run_sync(engine, settings, "ehr")
    assert (counts.pulled, counts.created, counts.refused, counts.pages) == (6, 5, 1, 3)
    copies = _copies(client, ours["patient"])
    assert sorted(copies) == ["late", "o0", "o1", "o2", "o3"]
    copy = copies["o1"]
    assert copy["subject"] == {"reference": f"Patient/{ours['patient']}"}
    assert copy["encounter"] == {"display": f"{EHR}/Encounter/enc-o1"}  # not ours to point at
    assert copy["meta"]["source"] == f"{EHR}/Observation/o1"
    assert {"system": f"{EHR}/Observation", "value": "o1"} in copy["identifier"]
    # what was asked: the patient found by identifier, the trial's codes, sorted by _lastUpdated, pages of 2
    search = next(r for r in ehr.searches if r.url.path.endswith("/Observation") and "_elements" not in r.url.params)
    assert search.url.params["patient"] == "up-1" and search.url.params["_count"] == "2"
    assert search.url.params["_sort"] == "_lastUpdated" and "_lastUpdated" not in search.url.params
    codes = search.url.params["code"].split(",")
    assert f"{AD}|EASI" in codes and "http://loinc.org|19113-0" in codes
    [report] = status(engine, "ehr")
    assert report["status"] == "completed" and report["issues"] == 1 and report["counts"]["refused"] == 1
    [refused] = report["latest_issues"]
    assert refused["resource"] == f"{EHR}/Observation/bad"
    assert refused["outcome"]["resourceType"] == "OperationOutcome"
    assert any("Observation.valueQuantity.value" in e for i in refused["outcome"]["issue"]
               for e in i.get("expression", []))
    # written as a FHIR write is: audited (a batch event naming the sync's request), by the service itself
    audit = client.get("/fhir/AuditEvent?_count=200").json()
    batches = [a["resource"] for a in audit["entry"] if '"sync:ehr:' in orjson.dumps(a["resource"]).decode()]
    assert batches and all("trial-fhir" in orjson.dumps(a["agent"]).decode() for a in batches)


def test_a_resync_asks_from_the_watermark_and_makes_no_new_version_until_the_upstream_changes(
        client, engine, settings, ours, ehr):
    ehr.observation("o1", "up-1", value=10.0)
    last = ehr.observation("o2", "up-1", value=11.0)
    with ehr.mocked():
        run_sync(engine, settings, "ehr")
        ehr.searches.clear()
        again = run_sync(engine, settings, "ehr")
    asked = [r for r in ehr.searches if r.url.path.endswith("/Observation") and "_elements" not in r.url.params]
    assert asked[0].url.params["_lastUpdated"] == f"ge{last['meta']['lastUpdated']}"
    assert (again.created, again.updated, again.unchanged) == (0, 0, 1)  # o2 again (ge): the same content
    assert client.get(f"/fhir/Observation/{_copies(client, ours['patient'])['o2']['id']}").json()["meta"][
        "versionId"] == "1"

    ehr.observation("o1", "up-1", value=10.0, status="entered-in-error")  # the lab withdrew it
    with ehr.mocked():
        third = run_sync(engine, settings, "ehr")
    assert third.updated == 1
    withdrawn = _copies(client, ours["patient"])["o1"]
    assert withdrawn["status"] == "entered-in-error" and withdrawn["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Observation?subject=Patient/{ours['patient']}&_summary=count").json()["total"] == 2


def test_an_upstream_deletion_is_reflected_here(client, engine, settings, ours, ehr):
    ehr.observation("o1", "up-1")
    ehr.observation("o2", "up-1", value=13.0)
    with ehr.mocked():
        run_sync(engine, settings, "ehr")
        ehr.delete("Observation", "o1")
        counts = run_sync(engine, settings, "ehr")
    assert counts.deleted == 1
    assert sorted(_copies(client, ours["patient"])) == ["o2"]


def test_an_interrupted_sync_resumes_from_its_last_page_without_gaps_or_duplicates(client, engine, settings, ours,
                                                                                   ehr):
    made = [ehr.observation(f"o{i}", "up-1", value=float(i)) for i in range(6)]
    ehr.fail["Observation page 2"] = 2  # both attempts of page 2 fail: the sync stops there
    with ehr.mocked(), pytest.raises(UpstreamError, match="answered 500 after 2 attempts"):
        run_sync(engine, settings, "ehr")
    [report] = status(engine, "ehr")
    assert report["status"] == "failed" and "500" in report["error"]
    assert sorted(_copies(client, ours["patient"])) == ["o0", "o1"]
    with engine.connect() as conn:
        mark = conn.execute(select(repository.W.c.last_updated)).scalar_one()
    assert mark == made[1]["meta"]["lastUpdated"]  # page 1 is recorded

    ehr.searches.clear()
    with ehr.mocked():
        resumed = run_sync(engine, settings, "ehr")
    first = next(r for r in ehr.searches if r.url.path.endswith("/Observation"))
    assert first.url.params["_lastUpdated"] == f"ge{made[1]['meta']['lastUpdated']}"
    assert (resumed.created, resumed.unchanged) == (4, 1)
    assert sorted(_copies(client, ours["patient"])) == [f"o{i}" for i in range(6)]
    assert client.get(f"/fhir/Observation?subject=Patient/{ours['patient']}&_summary=count").json()["total"] == 6


def test_patients_not_found_or_ambiguous_upstream_are_counted_and_adverse_events_pulled_when_offered(
        client, engine, settings, ours):
    other = enrol(client, mrn="MRN-2", study_id=ours["study"])
    missing = enrol(client, mrn="MRN-3", study_id=ours["study"])
    ehr = FakeEhr(adverse_events=True, export=True)
    ehr.add_patient("up-1", MRN, "MRN-1")
    ehr.add_patient("up-2a", MRN, "MRN-2")
    ehr.add_patient("up-2b", MRN, "MRN-2")
    ehr.put({**adverse_event("up-1"), "id": "ae1", "study": [{"reference": "ResearchStudy/theirs"}]})
    add_source(engine, "ehr", EHR)
    with ehr.mocked():
        counts = run_sync(engine, settings, "ehr")
    assert (counts.patients, counts.not_found, counts.ambiguous) == (3, 1, 1)
    assert counts.bulk_offered  # its CapabilityStatement declares Group $export: status says so
    assert counts.mode == "search" and counts.fallback == "no upstream Group holds a matched patient"
    assert counts.by_type == {"AdverseEvent": 1} and (counts.created, counts.refused) == (1, 0)
    events = client.get(f"/fhir/AdverseEvent?subject=Patient/{ours['patient']}").json()["entry"]
    assert [e["resource"]["meta"]["source"] for e in events] == [f"{EHR}/AdverseEvent/ae1"]
    assert "study" not in events[0]["resource"]  # theirs, not ours
    [report] = status(engine, "ehr")
    assert "2 upstream Patients match" in report["latest_issues"][0]["outcome"]["issue"][0]["diagnostics"]
    assert missing and other


def test_a_sync_of_a_source_already_syncing_elsewhere_is_refused(engine, settings, ours, ehr):
    from datetime import UTC, datetime

    from service.db import write_session
    from service.ehr.flows import SyncBusy

    with write_session(engine) as session:
        assert repository.acquire(session, "ehr", "another-replica", datetime.now(UTC), 60)
        session.commit()
    with ehr.mocked(), pytest.raises(SyncBusy):
        run_sync(engine, settings, "ehr")
    assert not list(ehr.searches)


def test_bulk_mode_exports_the_group_since_the_last_manifest_and_applies_deletions(client, engine, settings, ours):
    ehr = FakeEhr()
    ehr.add_patient("up-1", MRN, "MRN-1")
    ehr.groups["trial-group"] = ["up-1", "someone-else"]
    add_source(engine, "bulk", EHR, group_id="trial-group")
    obs = [ehr.observation(f"o{i}", "up-1", value=float(i)) for i in range(3)]
    stranger = ehr.observation("x1", "someone-else")
    off_code = ehr.observation("h1", "up-1", "HBA1C", 6.0)
    files = {"https://files.example.net/1.ndjson": [*obs, stranger, off_code],
             "https://files.example.net/2.ndjson": [{"resourceType": "Bundle", "type": "transaction", "entry": [
                 {"request": {"method": "DELETE", "url": "Observation/o0"}}]}]}
    manifests = [
        {"transactionTime": "2026-11-29T10:00:00Z", "requiresAccessToken": True,
         "output": [{"type": "Observation", "url": "https://files.example.net/1.ndjson"}], "error": []},
        {"transactionTime": "2026-11-29T11:00:00Z", "requiresAccessToken": True, "output": [], "error": [],
         "deleted": [{"type": "Bundle", "url": "https://files.example.net/2.ndjson"}]}]
    with ehr.mocked() as router:
        kick = router["kick_off"].mock(side_effect=[
            httpx.Response(202, headers={"Content-Location": f"{EHR}/status/1"}),
            httpx.Response(202, headers={"Content-Location": f"{EHR}/status/2"})])
        router.get("/status/1").mock(side_effect=[httpx.Response(202, headers={"Retry-After": "0"}),
                                                  httpx.Response(200, json=manifests[0])])
        router.get("/status/2").respond(200, json=manifests[1])
        deleted = router.delete(path__regex=r"/status/\d").respond(202)
        for url, lines in files.items():
            router.get(url).respond(200, text="\n".join(orjson.dumps(x).decode() for x in lines))
        first = run_sync(engine, settings, "bulk")
        second = run_sync(engine, settings, "bulk")
    assert first.mode == "bulk" and (first.created, first.skipped) == (3, 2) and not first.bulk_offered
    assert (first.group, first.group_found, first.by_search) == ("trial-group", "configured", 0)
    assert "_since" not in kick.calls[0].request.url.params
    assert kick.calls[1].request.url.params["_since"] == "2026-11-29T10:00:00Z"  # the manifest's, not our clock
    assert kick.calls[0].request.url.params["_type"] == "Observation"
    assert deleted.call_count == 2
    assert second.deleted == 1
    assert sorted(_copies(client, ours["patient"])) == ["o1", "o2"]
    [report] = status(engine, "bulk")
    assert report["since"] == "2026-11-29T11:00:00Z"


def test_the_schedule_enqueues_one_job_per_source_and_interval_and_the_job_runs_the_sync(
        client, engine, settings, ours, ehr):
    from datetime import UTC, datetime

    from service.ehr.service import schedule
    from service.export.worker import ExportWorker

    ehr.observation("o1", "up-1")
    now = datetime.now(UTC)
    assert schedule(engine, 600, now) == ["ehr"]
    assert schedule(engine, 600, now) == []  # queued already: no second one (another replica would add none)
    with engine.connect() as conn:
        jobs = conn.execute(select(JobRecord.__table__.c.kind, JobRecord.__table__.c.state)).all()
    assert [tuple(j) for j in jobs] == [("ehr-sync", "queued")]
    runner = ExportWorker(engine, settings.model_copy(update={"sync_interval_s": 600}))
    with ehr.mocked():
        assert runner.run_once()
    with engine.connect() as conn:
        job = conn.execute(select(JobRecord.__table__)).one()
    assert job.state == "completed", job.error
    assert orjson.loads(job.result)["created"] == 1
    assert sorted(_copies(client, ours["patient"])) == ["o1"]
    assert schedule(engine, 600) == []  # it just ran: not before the interval
    with engine.connect() as conn:
        assert conn.execute(select(EhrWatermarkRecord.__table__.c.resource_type)).scalars().all() == ["Observation"]


def test_with_a_sync_interval_the_service_pulls_on_its_own(database_url, tmp_path):
    import time

    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings

    settings = Settings(database_url=database_url, export_dir=tmp_path / "export", auth="off", _env_file=None,
                        sync_interval_s=3600, export_poll_interval_s=0.2)
    ehr = FakeEhr()
    ehr.add_patient("up-1", MRN, "MRN-AUTO")
    ehr.observation("o1", "up-1")
    app = create_app(settings)
    with ehr.mocked(), TestClient(app) as client:
        ours = enrol(client, mrn="MRN-AUTO")
        add_source(app.state.engine, "ehr", EHR)

        def jobs() -> list[tuple[str, str]]:
            with app.state.engine.connect() as conn:
                return [tuple(j) for j in conn.execute(select(JobRecord.__table__.c.kind,
                                                              JobRecord.__table__.c.state)).all()]
        deadline = time.monotonic() + 60
        while ("ehr-sync", "completed") not in jobs() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(_copies(client, ours["patient"])) == ["o1"]
        [report] = status(app.state.engine, "ehr")
        time.sleep(0.6)  # a few more runner loops: the interval is not over, no second job
        jobs_after = jobs()
    assert report["counts"]["created"] == 1
    assert jobs_after == [("ehr-sync", "completed")]  # one job, not one per runner loop
