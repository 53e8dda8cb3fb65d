"""End to end: a second instance of this service (a real uvicorn on another port, its own database) is the
upstream EHR; a sync pulls its Observations into the test's app through the one ingest path."""

import os
import subprocess
import sys

import httpx
import pytest

from service.ehr.service import add_source, run_sync
from tests.assertions import wait_until_healthy
from tests.factories import enrol, observation, patient, study, subject
from tests.test_serve import free_port

JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def upstream(another_database_url, tmp_path):
    """A running service on its own database: its FHIR base URL."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": another_database_url, "TRIAL_FHIR_EXPORT_DIR": str(tmp_path / "up-export"),
           "TRIAL_FHIR_AUTH": "off", "TRIAL_FHIR_EXPORT_WORKER": "false"}
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


def _versions(client, observation_id: str) -> list[str]:
    history = client.get(f"/fhir/Observation/{observation_id}/_history").json()
    return sorted(e["resource"]["meta"]["versionId"] for e in history["entry"])


def test_sync_pulls_from_a_second_instance_then_changes_nothing_then_takes_a_correction(upstream, client, engine,
                                                                                         settings):
    mrn = "MRN-E2E-1"
    # the hospital: the same person (same MRN), enrolled there too, with three results of which one is out of
    # the trial's codes and one is a later week-4 score
    up_study = _post(upstream, study())["id"]
    up_patient = _post(upstream, patient(mrn))["id"]
    _post(upstream, subject(up_study, up_patient))
    easi = _post(upstream, observation(up_patient, "EASI", 20.5, "2024-01-10"))
    ige = _post(upstream, observation(up_patient, "IGE", 2.4, "2024-01-10", unit="ng/mL"))
    _post(upstream, observation(up_patient, "EASI", 9.0, "2024-02-07"))
    # here: the trial's enrolment of that person
    ours = enrol(client, mrn=mrn)
    add_source(engine, "hospital", upstream, pull_mode="search")  # searches (test_bulk_end_to_end: Bulk Data)

    first = run_sync(engine, settings, "hospital")
    assert (first.patients, first.not_found, first.pulled, first.created, first.refused) == (1, 0, 3, 3, 0)
    bundle = client.get(f"/fhir/Observation?subject=Patient/{ours['patient']}&_count=50").json()
    stored = {e["resource"]["meta"]["source"]: e["resource"] for e in bundle["entry"]}
    assert len(stored) == 3
    assert {f"{upstream}/Observation/{easi['id']}", f"{upstream}/Observation/{ige['id']}"} <= set(stored)
    copy = stored[f"{upstream}/Observation/{easi['id']}"]
    assert copy["subject"] == {"reference": f"Patient/{ours['patient']}"}
    assert {"system": f"{upstream}/Observation", "value": easi["id"]} in copy["identifier"]
    assert copy["valueQuantity"]["value"] == 20.5
    # the IgE in ng/mL went through the same unit conversion as a FHIR write: its visit and canonical value are
    # searchable here
    week4 = client.get(f"/fhir/Observation?subject=Patient/{ours['patient']}&visit=week-4").json()
    assert [e["resource"]["valueQuantity"]["value"] for e in week4["entry"]] == [9.0]
    converted = client.get(f"/fhir/Observation?subject=Patient/{ours['patient']}"
                           "&value-quantity=1|http://unitsofmeasure.org|[IU]/mL").json()
    assert len(converted["entry"]) == 1

    again = run_sync(engine, settings, "hospital")  # nothing changed upstream: nothing new here
    assert again.created == 0 and again.updated == 0 and again.refused == 0
    assert _versions(client, copy["id"]) == ["1"]

    corrected = {**easi, "valueQuantity": {**easi["valueQuantity"], "value": 21.5}, "status": "corrected"}
    assert httpx.put(f"{upstream}/Observation/{easi['id']}", json=corrected, headers=JSON).status_code == 200
    third = run_sync(engine, settings, "hospital")
    assert (third.created, third.updated) == (0, 1)
    now = client.get(f"/fhir/Observation/{copy['id']}").json()
    assert now["meta"]["versionId"] == "2" and now["valueQuantity"]["value"] == 21.5 and now["status"] == "corrected"
    total = client.get(f"/fhir/Observation?subject=Patient/{ours['patient']}&_summary=count").json()["total"]
    assert total == 3  # never a duplicate

    # deleted upstream: gone here at the next sync
    assert httpx.delete(f"{upstream}/Observation/{ige['id']}").status_code in (200, 204)
    fourth = run_sync(engine, settings, "hospital")
    assert fourth.deleted == 1
    total = client.get(f"/fhir/Observation?subject=Patient/{ours['patient']}&_summary=count").json()["total"]
    assert total == 2
