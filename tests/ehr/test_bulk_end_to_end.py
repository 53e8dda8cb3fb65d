"""End to end with Bulk Data: a second instance of this service (its own database, its job worker on) is the
upstream; the sync finds the upstream's Group (the cohort of the upstream study holding the patient) by itself,
exports it, and kicks the export off again when the upstream forgot it mid-sync."""

import os
import subprocess
import sys

import httpx
import pytest

from service.ehr.service import add_source, list_sources, run_sync, status
from tests.assertions import wait_until_healthy
from tests.factories import enrol, observation, patient, study, subject
from tests.test_serve import free_port

JSON = {"Content-Type": "application/fhir+json"}


class Killed(Exception):
    """The sync's process dies here."""


@pytest.fixture
def upstream(another_database_url, tmp_path):
    """A running service on its own database, exporting (its job worker on): its FHIR base URL."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": another_database_url, "TRIAL_FHIR_EXPORT_DIR": str(tmp_path / "up-export"),
           "TRIAL_FHIR_AUTH": "off", "TRIAL_FHIR_EXPORT_WORKER": "true", "TRIAL_FHIR_EXPORT_POLL_INTERVAL_S": "0.2"}
    proc = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", proc)
        yield f"http://127.0.0.1:{port}/fhir"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _post(base: str, body: dict) -> dict:
    response = httpx.post(f"{base}/{body['resourceType']}", json=body, headers=JSON)
    assert response.status_code == 201, response.text
    return response.json()


def _stored(client, patient_id: str) -> dict[str, dict]:
    bundle = client.get(f"/fhir/Observation?subject=Patient/{patient_id}&_count=50").json()
    found = [e["resource"] for e in bundle.get("entry", [])]
    by_source = {r["meta"]["source"]: r for r in found}
    assert len(by_source) == len(found), "a duplicate"
    return by_source


def test_bulk_from_a_second_instance_finds_its_group_and_kicks_a_forgotten_export_off_again(
        upstream, client, engine, settings):
    settings = settings.model_copy(update={"ehr_wait_cap_s": 1.0})
    mrn = "MRN-E2E-BULK"
    up_study = _post(upstream, study())["id"]
    up_patient = _post(upstream, patient(mrn))["id"]
    _post(upstream, subject(up_study, up_patient))
    other_study = _post(upstream, study())["id"]  # another cohort upstream, without our patient
    _post(upstream, subject(other_study, _post(upstream, patient("MRN-SOMEONE-ELSE"))["id"]))
    made = [_post(upstream, observation(up_patient, "EASI", 20.5, "2024-01-10")),
            _post(upstream, observation(up_patient, "IGE", 2.4, "2024-01-10", unit="ng/mL")),
            _post(upstream, observation(up_patient, "EASI", 9.0, "2024-02-07"))]
    ours = enrol(client, mrn=mrn)
    add_source(engine, "hospital", upstream)  # auto: no --group

    first = run_sync(engine, settings, "hospital")
    assert (first.mode, first.group, first.group_found) == ("bulk", up_study, "discovered")
    assert (first.created, first.refused, first.kick_offs) == (3, 0, 1)
    assert set(_stored(client, ours["patient"])) == {f"{upstream}/Observation/{o['id']}" for o in made}
    assert list_sources(engine)[0]["discovered_group"] == up_study
    since = status(engine, "hospital")[0]["since"]

    later = _post(upstream, observation(up_patient, "EASI", 7.5, "2024-03-06"))

    def die_after_first_file(done: int, total: int, what: str) -> None:
        if what == "export files":
            raise Killed()
    with pytest.raises(Killed):
        run_sync(engine, settings, "hospital", progress=die_after_first_file)
    [report] = status(engine, "hospital")
    assert report["export"] is not None and report["export"]["since"] == since
    state_url = report["export"]["status_url"]
    assert httpx.delete(state_url).status_code in (200, 202, 204)  # the upstream forgets the export
    assert httpx.get(state_url).status_code == 404

    again = run_sync(engine, settings, "hospital")
    assert again.resumed and again.kick_offs == 1 and (again.group, again.group_found) == (up_study, "remembered")
    assert (again.created, again.updated) == (0, 0)  # the later result was stored before the kill: not again
    stored = _stored(client, ours["patient"])
    assert set(stored) == {f"{upstream}/Observation/{o['id']}" for o in [*made, later]}
    assert status(engine, "hospital")[0]["export"] is None
