"""Bulk Data export ($export, HL7 Bulk Data Access IG v2) and the study cohort Group, over HTTP, on SQLite
and PostgreSQL: the async flow, parameters, cross-study isolation, cancel, restart and claiming."""

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlmodel import Session

from fhir_mappings import fhir
from service.core.registry import TYPES
from service.db import write_session
from service.export import repository, service
from service.export.worker import ExportWorker
from service.jobs import repository as jobs_repository, runner as jobs
from service.main import create_app
from tests.factories import AD, created, enrol, observation, study, subject

ASYNC = {"Prefer": "respond-async"}


def kick_off(client, url: str, **params):
    response = client.get(url, params=params, headers=ASYNC)
    assert response.status_code == 202, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    return response.headers["Content-Location"]


def wait_for(client, status_url: str, bound_s: float = 20.0):
    deadline = time.monotonic() + bound_s
    while True:
        response = client.get(status_url)
        if response.status_code != 202:
            return response
        assert response.headers["X-Progress"]
        assert time.monotonic() < deadline, "export did not finish in time"
        time.sleep(0.05)


def download(client, manifest: dict) -> dict[str, list[dict]]:
    """Every file of the manifest, each line parsed as FHIR of the file's type; {type: [resource, …]}."""
    found = {}
    for out in manifest["output"]:
        response = client.get(out["url"])
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+ndjson")
        lines = response.text.splitlines()
        assert len(lines) == out["count"]
        model = TYPES[out["type"]].model
        for line in lines:
            resource = model.model_validate_json(line)
            assert resource.get_resource_type() == out["type"]
        found[out["type"]] = [orjson.loads(line) for line in lines]
    return found


def export(client, url: str, **params) -> tuple[dict, dict[str, list[dict]]]:
    response = wait_for(client, kick_off(client, url, **params))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    manifest = response.json()
    return manifest, download(client, manifest)


def ids(found: dict, rtype: str) -> set[str]:
    return {r["id"] for r in found.get(rtype, [])}


# -- Group --------------------------------------------------------------------------------------------------

def test_research_study_gets_its_cohort_group_as_enrollment(client):
    ids_ = enrol(client)
    study_ = client.get(f"/fhir/ResearchStudy/{ids_['study']}").json()
    assert study_["enrollment"] == [{"reference": f"Group/{ids_['study']}"}]
    group = client.get(f"/fhir/Group/{ids_['study']}")
    assert group.status_code == 200
    body = group.json()
    fhir.Group.model_validate(body)
    assert body["type"] == "person" and body["actual"] is True and body["quantity"] == 1
    assert body["member"] == [{"entity": {"reference": f"Patient/{ids_['patient']}"},
                               "period": {"start": "2024-01-10"}, "inactive": False}]


def test_research_study_keeps_the_enrollment_the_client_sent(client):
    sent = study(enrollment=[{"reference": "Group/elsewhere"}])
    assert created(client.post("/fhir/ResearchStudy", json=sent))["enrollment"] == [{"reference": "Group/elsewhere"}]


def test_group_follows_enrolment_and_withdrawal(client):
    first = enrol(client)
    second = enrol(client, study_id=first["study"])
    withdrawn = subject(first["study"], second["patient"], status="withdrawn", id=second["subject"])
    withdrawn["period"] = {"start": "2024-01-10", "end": "2024-02-20"}
    assert client.put(f"/fhir/ResearchSubject/{second['subject']}", json=withdrawn).status_code == 200
    members = {m["entity"]["reference"]: m for m in client.get(f"/fhir/Group/{first['study']}").json()["member"]}
    assert members[f"Patient/{first['patient']}"]["inactive"] is False
    assert members[f"Patient/{second['patient']}"] == {"entity": {"reference": f"Patient/{second['patient']}"},
                                                        "period": {"start": "2024-01-10", "end": "2024-02-20"},
                                                        "inactive": True}
    assert client.delete(f"/fhir/ResearchSubject/{second['subject']}").status_code == 200
    assert client.get(f"/fhir/Group/{first['study']}").json()["quantity"] == 1


def test_unknown_group_is_404_and_search_by_id(client):
    a = enrol(client)
    b = enrol(client)
    missing = client.get("/fhir/Group/nope")
    assert missing.status_code == 404 and missing.json()["issue"][0]["expression"] == ["Group.id"]
    bundle = client.get("/fhir/Group", params={"_id": a["study"]}).json()
    assert bundle["type"] == "searchset" and bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["id"] == a["study"]
    assert client.get("/fhir/Group").json()["total"] == 2
    assert {e["resource"]["id"] for e in client.get("/fhir/Group").json()["entry"]} == {a["study"], b["study"]}
    strict = client.get("/fhir/Group", params={"name": "x"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400


def test_capability_statement_lists_group_and_export(client):
    rest = client.get("/fhir/metadata").json()["rest"][0]
    assert any(op["name"] == "export" for op in rest["operation"])
    group = next(r for r in rest["resource"] if r["type"] == "Group")
    assert group["operation"][0]["name"] == "export"


# -- the async flow ---------------------------------------------------------------------------------------

def test_group_export_contains_exactly_that_studys_data(client, two_studies):
    s = two_studies
    manifest, found = export(client, f"/fhir/Group/{s['A']}/$export")
    assert manifest["requiresAccessToken"] is False and manifest["error"] == []
    assert manifest["request"].endswith(f"/fhir/Group/{s['A']}/$export")
    assert datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00")) <= datetime.now(UTC)
    assert ids(found, "Patient") == {s["shared"], s["a_only"]}
    assert ids(found, "ResearchStudy") == {s["A"]}
    assert ids(found, "ResearchSubject") == s["a_subjects"]
    assert ids(found, "Observation") == s["a_obs"]
    assert ids(found, "AdverseEvent") == s["a_ae"]

    _, other = export(client, f"/fhir/Group/{s['B']}/$export")
    assert ids(other, "Patient") == {s["shared"], s["b_only"]}
    assert ids(other, "Observation") == s["b_obs"] and ids(other, "AdverseEvent") == s["b_ae"]
    assert ids(other, "ResearchSubject") == s["b_subjects"]


def test_system_export_contains_everything(client, two_studies):
    s = two_studies
    manifest, found = export(client, "/fhir/$export")
    assert {o["type"]: o["count"] for o in manifest["output"]} == {
        "Patient": 3, "ResearchStudy": 2, "ResearchSubject": 4, "Observation": 5, "AdverseEvent": 2}
    assert ids(found, "Observation") == s["a_obs"] | s["b_obs"]


def test_deleted_resources_are_not_exported(client):
    a = enrol(client)
    gone = created(client.post("/fhir/Observation", json=observation(a["patient"])))["id"]
    kept = created(client.post("/fhir/Observation", json=observation(a["patient"], "IGA", value=2)))["id"]
    assert client.delete(f"/fhir/Observation/{gone}").status_code == 200
    _, found = export(client, f"/fhir/Group/{a['study']}/$export", _type="Observation")
    assert ids(found, "Observation") == {kept}


def test_type_since_and_output_format(client, two_studies):
    s = two_studies
    manifest, found = export(client, f"/fhir/Group/{s['A']}/$export", _type="Observation,Patient",
                             _outputFormat="application/ndjson")
    assert {o["type"] for o in manifest["output"]} == {"Observation", "Patient"}
    time.sleep(0.01)
    since = datetime.now(UTC)
    time.sleep(0.01)
    new = created(client.post("/fhir/Observation", json={**observation(s["a_only"], "IGA", value=3,
                                                                         date="2024-04-01")}))["id"]
    manifest, found = export(client, f"/fhir/Group/{s['A']}/$export",
                             _since=since.isoformat().replace("+00:00", "Z"))
    assert [o["type"] for o in manifest["output"]] == ["Observation"]
    assert ids(found, "Observation") == {new}
    # the transactionTime of one export is the _since of the next: nothing new → no files
    manifest, _ = export(client, f"/fhir/Group/{s['A']}/$export", _since=manifest["transactionTime"])
    assert manifest["output"] == []


def test_type_filter(client, two_studies):
    s = two_studies
    _, found = export(client, f"/fhir/Group/{s['A']}/$export", _type="Observation",
                      _typeFilter=f"Observation?code={AD}|EASI")
    assert len(found["Observation"]) == 2
    assert all(o["code"]["coding"][0]["code"] == "EASI" for o in found["Observation"])
    _, found = export(client, f"/fhir/Group/{s['A']}/$export", _type="Observation",
                      _typeFilter="Observation?code=EASI&date=ge2024-02")
    assert [o["effectiveDateTime"] for o in found["Observation"]] == ["2024-03-01"]
    # two filters for one type are OR'd (the IG's comma form)
    _, found = export(client, f"/fhir/Group/{s['A']}/$export", _type="Observation",
                      _typeFilter="Observation?code=19113-0,Observation?date=2024-03-01")
    assert len(found["Observation"]) == 2
    # a filter on one type leaves the others whole
    manifest, found = export(client, "/fhir/$export", _typeFilter="AdverseEvent?seriousness=serious")
    assert ids(found, "AdverseEvent") == s["a_ae"] and len(found["Observation"]) == 5
    _, found = export(client, "/fhir/$export", _type="Patient", _typeFilter="Patient?gender=male")
    assert found == {}
    # filters, the Group and _since together
    _, found = export(client, f"/fhir/Group/{s['B']}/$export", _type="Patient,AdverseEvent,ResearchSubject",
                      _typeFilter="Patient?gender=female,AdverseEvent?seriousness=non-serious,"
                                  "ResearchSubject?status=on-study", _since="2000-01-01T00:00:00Z")
    assert ids(found, "Patient") == {s["shared"], s["b_only"]} and ids(found, "AdverseEvent") == s["b_ae"]
    assert ids(found, "ResearchSubject") == s["b_subjects"]


@pytest.mark.parametrize("params,headers,where", [
    ({}, {}, "Prefer"),
    ({"_outputFormat": "text/csv"}, ASYNC, "_outputFormat"),
    ({"_type": "Condition"}, ASYNC, "_type"),
    ({"_since": "yesterday"}, ASYNC, "_since"),
    ({"_typeFilter": "Observation?valueQuantity=3"}, ASYNC, "_typeFilter"),
    ({"_typeFilter": "Observation?date=2024-13-45"}, ASYNC, "_typeFilter"),
    ({"_typeFilter": "Observation?code="}, ASYNC, "_typeFilter"),
    ({"_typeFilter": "Observation?code:text=EASI"}, ASYNC, "_typeFilter"),  # a modifier search doesn't support
    ({"_typeFilter": "Observation?subject.name=x"}, ASYNC, "_typeFilter"),  # chained
    ({"_typeFilter": "Observation?code=EASI&_count=5"}, ASYNC, "_typeFilter"),  # result parameters don't filter
    ({"_typeFilter": "Observation?_sort=date"}, ASYNC, "_typeFilter"),
    ({"_typeFilter": "Patient?_include=Patient:general-practitioner"}, ASYNC, "_typeFilter"),
    ({"_type": "Patient", "_typeFilter": "Observation?code=EASI"}, ASYNC, "_typeFilter"),
    ({"_elements": "Observation.code.coding"}, ASYNC, "_elements"),  # top-level elements only
    ({"_elements": "colour"}, ASYNC, "_elements"),
    ({"patient": "Patient/x"}, ASYNC, "patient"),  # no patients in a system export; not a member of the Group
    ({"colour": "red"}, ASYNC, "colour"),
])
def test_kick_off_errors_are_400_outcomes(client, params, headers, where):
    a = enrol(client)
    for url in ("/fhir/$export", f"/fhir/Group/{a['study']}/$export"):
        response = client.get(url, params=params, headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["resourceType"] == "OperationOutcome"
        assert response.json()["issue"][0]["expression"] == [where]


def test_unknown_group_export_and_unknown_job_are_404(client):
    response = client.get("/fhir/Group/nope/$export", headers=ASYNC)
    assert response.status_code == 404 and response.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/$export-status/nope").status_code == 404
    assert client.delete("/fhir/$export-status/nope").status_code == 404
    assert client.get("/export-files/nope/Patient.ndjson").status_code == 404


def test_cancel_removes_files_and_job(client, settings):
    a = enrol(client)
    status_url = kick_off(client, f"/fhir/Group/{a['study']}/$export")
    manifest = wait_for(client, status_url).json()
    job_id = status_url.rsplit("/", 1)[1]
    assert (settings.export_dir / job_id).is_dir()
    deleted = client.delete(status_url)
    assert deleted.status_code == 202 and deleted.json()["resourceType"] == "OperationOutcome"
    assert not (settings.export_dir / job_id).exists()
    assert client.get(status_url).status_code == 404
    assert client.get(manifest["output"][0]["url"]).status_code == 404


# -- jobs: no worker, cancel while running, restart, claims ----------------------------------------------------

@pytest.fixture
def idle_client(settings):
    """A replica that runs no export worker: jobs stay queued until someone claims them."""
    with TestClient(create_app(settings.model_copy(update={"export_worker": False}))) as test_client:
        yield test_client


def test_without_worker_the_job_stays_queued(idle_client):
    a = enrol(idle_client)
    status_url = kick_off(idle_client, f"/fhir/Group/{a['study']}/$export")
    response = idle_client.get(status_url)
    assert response.status_code == 202 and response.headers["X-Progress"] == "queued"


def test_cancel_while_running_stops_the_worker_and_removes_its_files(idle_client, settings, monkeypatch):
    a = enrol(idle_client)
    status_url = kick_off(idle_client, f"/fhir/Group/{a['study']}/$export")
    job_id = status_url.rsplit("/", 1)[1]
    engine = idle_client.app.state.engine
    worker = ExportWorker(engine, settings, name="w1", heartbeat_s=0)  # it renews its lease at every batch
    written: list[Path] = []
    original = service.write_export

    def write_export(engine, spec, out_dir, *, progress, **kw):
        def cancel_then_report(*args):  # the client's DELETE, while the worker writes its first type
            if not written:
                written.extend(out_dir.iterdir())
                assert idle_client.delete(status_url).status_code == 202
            progress(*args)
        return original(engine, spec, out_dir, progress=cancel_then_report, **kw)

    monkeypatch.setattr(service, "write_export", write_export)
    lease = worker.claim()
    assert lease is not None and lease.job_id == job_id
    assert idle_client.get(status_url).headers["X-Progress"] == "queued"  # claimed: its run has not reported yet
    assert worker.run(lease) == "lost"  # its next heartbeat found the job cancelled
    assert written  # it had begun writing
    assert not list(settings.export_dir.glob(f"{job_id}*"))  # neither the export's folder nor its run's
    assert idle_client.get(status_url).status_code == 404
    with Session(engine) as session:
        assert repository.get_job(session, job_id) is None
        assert jobs_repository.get(session, job_id).state == "cancelled"


def test_restart_reports_finished_jobs_and_runs_again_those_whose_worker_died(settings):
    with TestClient(create_app(settings)) as first:
        a = enrol(first)
        done_url = kick_off(first, f"/fhir/Group/{a['study']}/$export")
        manifest = wait_for(first, done_url).json()
        engine = first.app.state.engine
        # a second job, claimed by a worker that then dies: its lease runs out, and its half-written folder stays
        first.app.state.export_worker.stop()
        running_url = kick_off(first, "/fhir/$export")
        job_id = running_url.rsplit("/", 1)[1]
        with write_session(engine) as session:
            lease = jobs_repository.claim(session, [service.KIND], "dead-worker", service.utcnow(), 30)
            assert lease is not None and lease.job_id == job_id
            session.execute(update(jobs_repository.J).where(jobs_repository.J.c.id == job_id).values(
                lease_until=service.utcnow() - timedelta(seconds=1)))
            session.commit()
        dead_run = settings.export_dir / f"{job_id}.part-1"
        dead_run.mkdir(parents=True)
        (dead_run / "Patient.ndjson").write_text('{"resourceType":"Patient","id":"half-written"}\n')
    with TestClient(create_app(settings)) as second:
        finished = second.get(done_url)
        assert finished.status_code == 200 and finished.json()["output"] == manifest["output"]
        download(second, finished.json())
        resumed = wait_for(second, running_url)
        assert resumed.status_code == 200, resumed.text
        files = download(second, resumed.json())
        assert [p["id"] for p in files["Patient"]] == [a["patient"]]
        assert not dead_run.exists()
        with Session(second.app.state.engine) as session:
            job = jobs_repository.get(session, job_id)
        assert (job.state, job.attempts) == ("completed", 2)


def test_a_job_whose_export_is_gone_fails_saying_so(idle_client, settings):
    engine = idle_client.app.state.engine
    with write_session(engine) as session:
        jobs.enqueue(session, service.KIND, {"export_id": "no-such-export"})
        session.commit()
    worker = ExportWorker(engine, settings)
    lease = worker.claim()
    assert worker.run(lease) == "failed"
    with Session(engine) as session:
        job = jobs_repository.get(session, lease.job_id)
    assert (job.state, job.error) == ("failed", "the export's request is gone (cancelled or expired)")


def test_a_job_is_claimed_by_exactly_one_worker(idle_client):
    a = enrol(idle_client)
    urls = [kick_off(idle_client, f"/fhir/Group/{a['study']}/$export") for _ in range(8)]
    engine = idle_client.app.state.engine
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        runner = ExportWorker(engine, idle_client.app.state.settings, name=name)
        while (lease := runner.claim()) is not None:
            with lock:
                claimed.append(lease.job_id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(u.rsplit("/", 1)[1] for u in urls)


def test_claim_skips_a_job_another_worker_holds(idle_client):
    a = enrol(idle_client)
    first = kick_off(idle_client, f"/fhir/Group/{a['study']}/$export").rsplit("/", 1)[1]
    time.sleep(0.01)
    second = kick_off(idle_client, f"/fhir/Group/{a['study']}/$export").rsplit("/", 1)[1]
    engine = idle_client.app.state.engine
    J = jobs_repository.J

    def claim(session: Session, name: str) -> str | None:
        lease = jobs_repository.claim(session, [service.KIND], name, service.utcnow(), 30)
        session.commit()
        return None if lease is None else lease.job_id

    if engine.dialect.name == "postgresql":
        # worker A has locked the oldest job (mid-claim); worker B passes over it instead of waiting
        with Session(engine) as a_session, Session(engine) as b_session:
            held = a_session.execute(select(J.c.id).where(J.c.id == first).with_for_update()).scalar_one()
            assert held == first
            assert claim(b_session, "B") == second
            a_session.rollback()
            assert claim(a_session, "A") == first
            assert claim(b_session, "B") is None
    else:
        # the claim is a conditional UPDATE: of two workers that saw the same queued job, one wins
        with Session(engine) as a_session, Session(engine) as b_session:
            assert claim(a_session, "A") == first
            assert claim(b_session, "B") == second
            assert claim(a_session, "A") is None
            won = a_session.execute(update(J).where(J.c.id == first, J.c.state == "queued")
                                    .values(worker="late")).rowcount
            assert won == 0


def test_cli_exports_a_group_to_a_folder(client, settings, tmp_path, monkeypatch, two_studies):
    from typer.testing import CliRunner

    from service.cli import app as cli
    from service.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["export", "run", str(tmp_path / "out"), "--group", two_studies["A"],
                                          "--type", "Observation,Patient"])
        assert result.exit_code == 0, result.output
        lines = (tmp_path / "out" / "Observation.ndjson").read_text().splitlines()
        assert {orjson.loads(line)["id"] for line in lines} == two_studies["a_obs"]
        assert not (tmp_path / "out" / "AdverseEvent.ndjson").exists()
        bad = CliRunner().invoke(cli, ["export", "run", str(tmp_path / "bad"), "--type", "Condition"])
        assert bad.exit_code == 2
    finally:
        get_settings.cache_clear()


def test_cli_exports_the_patients_with_elements(client, settings, tmp_path, monkeypatch, two_studies):
    from typer.testing import CliRunner

    from fhir_mappings.search import SUBSETTED
    from service.cli import app as cli
    from service.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["export", "run", str(tmp_path / "out"), "--patients",
                                          "--elements", "Observation.code,gender"])
        assert result.exit_code == 0, result.output
        assert not (tmp_path / "out" / "ResearchStudy.ndjson").exists()  # in no patient's compartment
        observations = [orjson.loads(line) for line in (tmp_path / "out" / "Observation.ndjson").read_text()
                        .splitlines()]
        assert len(observations) == 5
        assert all(set(o) == {"resourceType", "id", "meta", "code", "status"} and SUBSETTED in o["meta"]["tag"]
                   for o in observations)
        patients = [orjson.loads(line) for line in (tmp_path / "out" / "Patient.ndjson").read_text().splitlines()]
        assert all(set(p) == {"resourceType", "id", "meta", "gender"} for p in patients) and len(patients) == 3
        bad = CliRunner().invoke(cli, ["export", "run", str(tmp_path / "bad"), "--patients", "-t", "ResearchStudy"])
        assert bad.exit_code == 2 and "Patient compartment" in bad.output
    finally:
        get_settings.cache_clear()
