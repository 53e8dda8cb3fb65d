"""Export jobs belong to the client that started them, hold only what that client may see (its types, its
studies) and, for a de-identified client, de-identified resources. Callers are built directly (`Caller`): tokens
are service/auth's business. SQLite and PostgreSQL."""

import time

import orjson
import pytest
from sqlalchemy import text

from fhir_mappings.search import SUBSETTED
from service.auth.scopes import parse_scopes
from service.core.context import SYSTEM, Caller
from service.db import read_session, write_session
from service.deid.deidentify import V3_OBSERVATION_VALUE
from service.deid.service import deidentifier_from
from service.errors import BadRequest, Forbidden, NotFound
from service.export import service

BASE = "http://testserver/fhir"
FILES = service.files_base(BASE)
READ_ALL = "system/Patient.rs system/ResearchStudy.rs system/ResearchSubject.rs system/Observation.rs " \
           "system/AdverseEvent.rs"


def caller(name: str, scopes: str = READ_ALL, **extra) -> Caller:
    return Caller(name=name, scopes=parse_scopes(scopes), **extra)


def kick_off(engine, who: Caller, group_id: str | None = None, deid=None, **params) -> str:
    """Queue a job for `who`, and wake the app's export worker (it runs the job)."""
    with write_session(engine) as session:
        job_id = service.kick_off(session, list(params.items()), "respond-async", f"{BASE}/$export",
                                  group_id=group_id, caller=who, deid=deid)
    for worker in WORKERS:
        worker.wake()
    return job_id


WORKERS: list = []


@pytest.fixture(autouse=True)
def _worker(app, client):
    WORKERS[:] = [app.state.export_worker]
    yield
    WORKERS.clear()


def finished(engine, job_id: str, who: Caller, bound_s: float = 20.0) -> dict:
    """The manifest of the job once the app's worker has run it."""
    deadline = time.monotonic() + bound_s
    while True:
        with read_session(engine) as session:
            status = service.job_status(session, job_id, FILES, who)
        if status.status_code == 200:
            assert status.body is not None
            return status.body
        assert time.monotonic() < deadline, "export did not finish in time"
        time.sleep(0.05)


def contents(engine, settings, job_id: str, manifest: dict, who: Caller) -> dict[str, list[dict]]:
    found = {}
    for out in manifest["output"]:
        with read_session(engine) as session:
            path = service.file_path(session, settings.export_dir, job_id, out["url"].rsplit("/", 1)[1], who)
        found[out["type"]] = [orjson.loads(line) for line in path.read_text().splitlines()]
    return found


def ids(found: dict, rtype: str) -> set[str]:
    return {r["id"] for r in found.get(rtype, [])}


def test_another_clients_job_is_404_for_status_files_and_cancel(client, engine, settings, two_studies):
    alice, bob = caller("alice"), caller("bob")
    job_id = kick_off(engine, alice, _type="Patient")
    manifest = finished(engine, job_id, alice)
    assert manifest["requiresAccessToken"] is True
    name = manifest["output"][0]["url"].rsplit("/", 1)[1]
    with read_session(engine) as session:
        with pytest.raises(NotFound):
            service.job_status(session, job_id, FILES, bob)
        with pytest.raises(NotFound):
            service.file_path(session, settings.export_dir, job_id, name, bob)
        assert service.file_path(session, settings.export_dir, job_id, name, alice).is_file()
        assert service.job_status(session, job_id, FILES, SYSTEM).status_code == 200  # unrestricted: every job
    with write_session(engine) as session:
        with pytest.raises(NotFound):
            service.cancel_job(session, settings.export_dir, job_id, bob)
    with write_session(engine) as session:
        service.cancel_job(session, settings.export_dir, job_id, alice)
    with read_session(engine) as session, pytest.raises(NotFound):
        service.job_status(session, job_id, FILES, alice)


def test_a_job_started_without_access_control_needs_no_token(client, engine, two_studies):
    manifest = finished(engine, kick_off(engine, SYSTEM, _type="ResearchStudy"), SYSTEM)
    assert manifest["requiresAccessToken"] is False
    # and over HTTP, as before (the Core passes no caller yet: the system caller)
    response = client.get("/fhir/$export", params={"_type": "ResearchStudy"}, headers={"Prefer": "respond-async"})
    assert response.status_code == 202


def test_types_the_client_may_not_read_are_refused_or_left_out(client, engine, settings, two_studies):
    labs = caller("labs", "system/Observation.rs system/ResearchStudy.r")
    with write_session(engine) as session, pytest.raises(Forbidden, match=r"system/Patient\.r"):
        service.kick_off(session, [("_type", "Observation,Patient")], "respond-async", BASE, caller=labs)
    job_id = kick_off(engine, labs)
    manifest = finished(engine, job_id, labs)
    assert {o["type"] for o in manifest["output"]} == {"Observation", "ResearchStudy"}
    nobody = caller("nobody", "system/Observation.c")
    with write_session(engine) as session, pytest.raises(Forbidden):
        service.kick_off(session, [], "respond-async", BASE, caller=nobody)


def test_a_study_limited_client_exports_only_its_studys_data(client, engine, settings, two_studies):
    s = two_studies
    only_a = caller("site-a", studies=frozenset({s["A"]}))
    job_id = kick_off(engine, only_a)
    found = contents(engine, settings, job_id, finished(engine, job_id, only_a), only_a)
    assert ids(found, "ResearchStudy") == {s["A"]}
    assert ids(found, "Patient") == {s["shared"], s["a_only"]}
    assert ids(found, "ResearchSubject") == s["a_subjects"]
    assert ids(found, "Observation") == s["a_obs"]
    assert ids(found, "AdverseEvent") == s["a_ae"]
    # granular scopes narrow further: Observations of study B only, everything else of A
    granular = caller("granular", READ_ALL.replace(
        "system/Observation.rs", f"system/Observation.rs?study=ResearchStudy/{s['B']}"))
    job_id = kick_off(engine, granular, _type="Observation,Patient")
    found = contents(engine, settings, job_id, finished(engine, job_id, granular), granular)
    assert ids(found, "Observation") == s["b_obs"]
    assert ids(found, "Patient") == {s["shared"], s["a_only"], s["b_only"]}
    # a Group export of a study the client is not registered for does not exist for it
    with write_session(engine) as session, pytest.raises(NotFound):
        service.kick_off(session, [], "respond-async", BASE, group_id=s["B"], caller=only_a)
    job_id = kick_off(engine, only_a, group_id=s["A"], _type="Observation")
    found = contents(engine, settings, job_id, finished(engine, job_id, only_a), only_a)
    assert ids(found, "Observation") == s["a_obs"]


def test_a_deidentified_client_exports_deidentified_resources(client, engine, settings, two_studies):
    s = two_studies
    deid = deidentifier_from(settings, engine)
    researcher = caller("researcher", deidentified=True)
    job_id = kick_off(engine, researcher)
    found = contents(engine, settings, job_id, finished(engine, job_id, researcher), researcher)
    real = {s["shared"], s["a_only"], s["b_only"]}
    assert ids(found, "Patient") == {deid.pseudonym(p) for p in real}
    text = orjson.dumps(found).decode()
    for pid in real:
        assert pid not in text
    assert "MRN" not in text and "identifier" not in text
    for rtype, resources in found.items():
        for resource in resources:
            labels = {x["code"] for x in resource["meta"]["security"] if x["system"] == V3_OBSERVATION_VALUE}
            assert labels == ({"REDACTED"} if rtype == "ResearchStudy" else {"PSEUDED", "REDACTED"})
    shared = deid.pseudonym(s["shared"])
    shift = deid.shift_days(s["shared"])
    mine = [o for o in found["Observation"] if o["subject"]["reference"] == f"Patient/{shared}"]
    assert mine and all(o["effectiveDateTime"] == _shifted("2024-01-10", shift) for o in mine)
    subjects = [r for r in found["ResearchSubject"] if r["individual"]["reference"] == f"Patient/{shared}"]
    assert len(subjects) == 2 and all(r["period"]["start"] == _shifted("2024-01-10", shift) for r in subjects)


def test_a_deidentified_type_filter_names_patients_by_pseudonym(client, engine, settings, two_studies):
    s = two_studies
    deid = deidentifier_from(settings, engine)
    researcher = caller("researcher", deidentified=True)
    job_id = kick_off(engine, researcher, deid=deid, _type="Observation",
                      _typeFilter=f"Observation?subject=Patient/{deid.pseudonym(s['b_only'])}")
    found = contents(engine, settings, job_id, finished(engine, job_id, researcher), researcher)
    assert len(found["Observation"]) == 1
    assert found["Observation"][0]["subject"]["reference"] == f"Patient/{deid.pseudonym(s['b_only'])}"
    job_id = kick_off(engine, researcher, deid=deid, _type="Observation",
                      _typeFilter=f"Observation?subject=Patient/{s['b_only']}")  # a real id: nothing
    assert finished(engine, job_id, researcher)["output"] == []


def _shifted(day: str, shift: int) -> str:
    from service.deid.deidentify import shift_date

    return shift_date(day, shift)


def test_a_study_limited_client_exports_the_patients_of_its_studies_and_their_data_there(
        client, engine, settings, two_studies):
    s = two_studies
    only_a = caller("site-a", studies=frozenset({s["A"]}))
    with write_session(engine) as session:
        job_id = service.kick_off(session, [], "respond-async", f"{BASE}/Patient/$export", caller=only_a,
                                  level="patient")
    WORKERS[0].wake()
    found = contents(engine, settings, job_id, finished(engine, job_id, only_a), only_a)
    assert ids(found, "Patient") == {s["shared"], s["a_only"]}
    assert ids(found, "ResearchSubject") == s["a_subjects"]
    assert ids(found, "Observation") == s["a_obs"]  # not study B's, though the shared patient has some
    assert ids(found, "AdverseEvent") == s["a_ae"] and "ResearchStudy" not in found
    # a patient of another study is one it can't see: refused, as an unknown one is
    for level, group in (("patient", None), ("group", s["A"])):
        with write_session(engine) as session, pytest.raises(BadRequest, match="not") as err:
            service.kick_off(session, [("patient", f"Patient/{s['b_only']}")], "respond-async", BASE,
                             caller=only_a, level=level, group_id=group)
        assert err.value.issues[0].expression == ("patient",)


def test_a_deidentified_client_names_patients_by_pseudonym(client, engine, settings, two_studies):
    s = two_studies
    deid = deidentifier_from(settings, engine)
    researcher = caller("researcher", deidentified=True)
    pseudonym = deid.pseudonym(s["b_only"])
    with write_session(engine) as session:
        job_id = service.kick_off(session, [("patient", f"Patient/{pseudonym}")], "respond-async", BASE,
                                  caller=researcher, deid=deid, level="patient")
    WORKERS[0].wake()
    found = contents(engine, settings, job_id, finished(engine, job_id, researcher), researcher)
    assert ids(found, "Patient") == {pseudonym}
    assert {o["subject"]["reference"] for o in found["Observation"]} == {f"Patient/{pseudonym}"}
    with write_session(engine) as session, pytest.raises(BadRequest) as err:  # a real id names nobody
        service.kick_off(session, [("patient", f"Patient/{s['b_only']}")], "respond-async", BASE,
                         caller=researcher, deid=deid, level="patient")
    assert f"Patient/{s['b_only']}" in str(err.value)  # named as it was asked: nothing more


def test_an_entry_that_fails_deidentification_is_left_out_and_named_by_pseudonym(client, engine, settings,
                                                                                 two_studies, tmp_path):
    s = two_studies
    deid = deidentifier_from(settings, engine)

    class Flaky:
        """The app's de-identifier, failing on the resources about one patient."""

        def content(self, text):
            if s["a_only"] in text:
                raise ValueError("no shift for this date")
            return deid.content(text)

        def pseudonym(self, rid):
            return deid.pseudonym(rid)

    spec = service.ExportSpec(group_id=s["A"], types=("Patient", "Observation"), level="group")
    _, outputs = service.write_export(engine, spec, tmp_path / "out", deid=Flaky())  # type: ignore[arg-type]
    counts = {o["type"]: o["count"] for o in outputs}
    assert counts == {"Patient": 1, "Observation": 2, "OperationOutcome": 2}
    written = (tmp_path / "out" / "Patient.ndjson").read_text() + (tmp_path / "out" / "Observation.ndjson").read_text()
    assert s["a_only"] not in written  # never the identified resource instead
    errors = [orjson.loads(line) for line in (tmp_path / "out" / "OperationOutcome.ndjson").read_text().splitlines()]
    assert {e["issue"][0]["diagnostics"].split(" ")[0] for e in errors} == {
        f"Patient/{deid.pseudonym(s['a_only'])}", *(f"Observation/{o}" for o in s["a_obs"]
                                                    if s["a_only"] in _content(engine, o))}
    assert all("could not be de-identified (ValueError)" in e["issue"][0]["diagnostics"] for e in errors)
    assert s["a_only"] not in orjson.dumps(errors).decode()
    assert next(o for o in outputs if o["type"] == "OperationOutcome")["error"] is True


def _content(engine, observation_id: str) -> str:
    with read_session(engine) as session:
        return session.execute(text("SELECT content FROM resource WHERE resource_type = 'Observation' AND id = :id"),
                               {"id": observation_id}).scalar_one()


def test_a_deidentified_client_gets_subsetted_resources_de_identified_first(client, engine, settings,
                                                                           two_studies):
    s = two_studies
    deid = deidentifier_from(settings, engine)
    researcher = caller("researcher", deidentified=True)
    job_id = kick_off(engine, researcher, _type="Observation,Patient", _elements="Observation.subject,gender")
    found = contents(engine, settings, job_id, finished(engine, job_id, researcher), researcher)
    real = {s["shared"], s["a_only"], s["b_only"]}
    assert {o["subject"]["reference"] for o in found["Observation"]} <= {f"Patient/{deid.pseudonym(p)}" for p in real}
    for resource in found["Observation"] + found["Patient"]:
        assert SUBSETTED in resource["meta"]["tag"]
        assert {x["code"] for x in resource["meta"]["security"]} >= {"PSEUDED", "REDACTED"}
    assert all(set(o) == {"resourceType", "id", "meta", "status", "code", "subject"} for o in found["Observation"])
    assert not any(p in orjson.dumps(found).decode() for p in real)
