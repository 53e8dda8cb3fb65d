"""The trial every search test reads: two studies, three patients, results and adverse events; `shared` (one
database per module, for the read-only tests) and `trial` (the test's own database, for tests that write)."""

import shutil
from contextlib import ExitStack

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.conftest import ON_POSTGRES, scratch_postgres_database
from tests.factories import adverse_event, created, observation, patient, study, subject

LAB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}


def build_trial(client) -> dict:
    """Two studies: A (p1 high-dose, p2 low-dose) and B (p3); results at baseline, week 4 and week 12."""
    ids: dict = {}
    ids["A"] = created(client.post("/fhir/ResearchStudy", json=study(
        title="Mesenchymal cells in atopic dermatitis", identifier=[{"system": "urn:nct", "value": "NCT01"}])))["id"]
    ids["B"] = created(client.post("/fhir/ResearchStudy", json=study(title="Second study", status="completed")))["id"]
    for name, mrn, gender, born in (("p1", "MRN-1", "female", "1980-05-17"), ("p2", "MRN-2", "male", "1990-01-01"),
                                    ("p3", "MRN-3", "female", "1990-12-31")):
        ids[name] = created(client.post("/fhir/Patient", json=patient(mrn, gender=gender, birthDate=born)))["id"]
    for name, st, p, arm in (("s1", "A", "p1", "high-dose"), ("s2", "A", "p2", "low-dose"),
                             ("s3", "B", "p3", "high-dose")):
        ids[name] = created(client.post("/fhir/ResearchSubject",
                                        json=subject(ids[st], ids[p], arm, "2024-01-10")))["id"]

    def obs(key, p, *args, **kw):
        ids[key] = created(client.post("/fhir/Observation", json=observation(ids[p], *args, **kw)))["id"]

    obs("easi1_base", "p1", "EASI", 20, "2024-01-10", identifier=[{"system": "urn:lab", "value": "L-1"}])
    obs("easi1_w4", "p1", "EASI", 10, "2024-02-07T09:30:00Z")
    obs("easi1_w12", "p1", "EASI", 5.5, "2024-04-03")
    obs("ige1", "p1", "IGE", 100, "2024-01-10", category=[LAB])
    obs("iga1_pre", "p1", "IGA", 3, "2024-01-10", status="preliminary")
    obs("easi2_base", "p2", "EASI", 30, "2024-01-09T23:30:00+09:00")
    obs("ige2", "p2", "IGE", 240, "2024-02-07", unit="ng/mL", category=[LAB])  # = 100 [IU]/mL
    obs("easi3_partial", "p3", "EASI", 1, "2024-03")  # a month only: no instant, sorts after dated results
    obs("easi3", "p3", "EASI", 40, "2024-03-01")
    for key, p, st, kw in (("ae1", "p1", "A", {"severity": "mild", "date": "2024-01-20"}),
                           ("ae2", "p2", "A", {"serious": True, "severity": "severe", "date": "2024-02-01"}),
                           ("ae3", "p3", "B", {"severity": "moderate", "date": "2024-03-05"})):
        ids[key] = created(client.post("/fhir/AdverseEvent", json=adverse_event(ids[p], ids[st], **kw)))["id"]
    return ids


@pytest.fixture
def trial(client):
    """The trial in this test's own database (for tests that write)."""
    return build_trial(client)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, database_template):
    """One database holding the trial, shared by the read-only tests of this module (building it per test
    would cost a second each)."""
    with ExitStack() as stack:
        if ON_POSTGRES:
            url = stack.enter_context(scratch_postgres_database("trial_fhir_search"))
        else:
            path = tmp_path_factory.mktemp("search") / "search.db"
            shutil.copyfile(database_template, path)
            url = f"sqlite:///{path}"
        settings = Settings(database_url=url, export_dir=tmp_path_factory.mktemp("export"), auth="off", _env_file=None)
        with TestClient(create_app(settings)) as client:
            yield client, build_trial(client)
