"""Access to POST /hl7/v2 and the MLLP listener with TRIAL_FHIR_AUTH=smart: the core decides per resource written."""

import pytest

from service.hl7.mllp import ListenerRefused, listener_caller
from service.settings import Settings
from tests.auth.tokens import get_token, register_client
from tests.factories import MRN, created, patient, study, subject
from tests.hl7.conftest import ER7
from tests.hl7.messages import errs, msa, oru

WRITER = "system/Observation.cus system/Provenance.c"


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(database_url=database_url, export_dir=tmp_path / "export", auth="smart", export_worker=False,
                    hl7_authorities={"SNUH": MRN}, _env_file=None)


def bearer(client, engine, scope: str) -> dict[str, str]:
    client_id, key = register_client(engine, scope)
    return {"Authorization": f"Bearer {get_token(client, client_id, key, scope)}"}


def enrol_mrn(client, engine, mrn: str) -> None:
    admin = bearer(client, engine, "system/*.cruds")
    sid = created(client.post("/fhir/ResearchStudy", json=study(), headers=admin))["id"]
    pid = created(client.post("/fhir/Patient", json=patient(mrn), headers=admin))["id"]
    created(client.post("/fhir/ResearchSubject", json=subject(sid, pid), headers=admin))


def test_without_a_token_it_is_401(client):
    refused = client.post("/hl7/v2", content=oru("MRN-1").encode(), headers=ER7)
    assert refused.status_code == 401


def test_a_token_without_the_write_scope_is_403_and_nothing_is_stored(client, engine):
    enrol_mrn(client, engine, "MRN-1")
    reader = bearer(client, engine, "system/Observation.rs")
    refused = client.post("/hl7/v2", content=oru("MRN-1").encode(), headers={**ER7, **reader})
    assert refused.status_code == 403
    assert "system/Observation" in refused.json()["issue"][0]["diagnostics"]
    admin = bearer(client, engine, "system/*.cruds")
    assert client.get("/fhir/Observation", headers=admin).json()["total"] == 0


def test_a_token_with_the_write_scopes_stores_the_results(client, engine):
    enrol_mrn(client, engine, "MRN-1")
    writer = bearer(client, engine, WRITER)
    answered = client.post("/hl7/v2", content=oru("MRN-1").encode(), headers={**ER7, **writer})
    assert answered.status_code == 200 and msa(answered.text)[0] == "AA", answered.text
    assert errs(answered.text) == []


def test_a_client_limited_to_another_study_can_not_write_the_results(client, engine):
    enrol_mrn(client, engine, "MRN-1")
    client_id, key = register_client(engine, WRITER, studies=["some-other-study"])
    token = get_token(client, client_id, key, WRITER)
    answered = client.post("/hl7/v2", content=oru("MRN-1").encode(),
                           headers={**ER7, "Authorization": f"Bearer {token}"})
    assert answered.status_code == 403
    admin = bearer(client, engine, "system/*.cruds")
    assert client.get("/fhir/Observation", headers=admin).json()["total"] == 0


def test_the_mllp_listener_needs_a_registered_client_with_auth_on(settings, engine):
    with pytest.raises(ListenerRefused):
        listener_caller(engine, settings)
    with pytest.raises(ListenerRefused):
        listener_caller(engine, settings.model_copy(update={"mllp_client": "nobody"}))
    client_id, _ = register_client(engine, WRITER, studies=["AD-1"])
    caller = listener_caller(engine, settings.model_copy(update={"mllp_client": client_id}))
    assert caller.name == client_id and caller.studies == frozenset({"AD-1"})
    assert caller.may("Observation", "c") and not caller.may("Patient", "c")


def test_a_resend_is_answered_only_to_a_client_that_could_have_written_it(client, engine):
    enrol_mrn(client, engine, "MRN-1")
    writer = bearer(client, engine, WRITER)
    first = client.post("/hl7/v2", content=oru("MRN-1").encode(), headers={**ER7, **writer})
    assert msa(first.text)[0] == "AA"
    reader = bearer(client, engine, "system/Observation.rs")
    refused = client.post("/hl7/v2", content=oru("MRN-1").encode(), headers={**ER7, **reader})
    assert refused.status_code == 403
    client_id, key = register_client(engine, WRITER, studies=["some-other-study"])
    other = {"Authorization": f"Bearer {get_token(client, client_id, key, WRITER)}"}
    refused = client.post("/hl7/v2", content=oru("MRN-1").encode(), headers={**ER7, **other})
    assert refused.status_code == 403
    again = client.post("/hl7/v2", content=oru("MRN-1").encode(), headers={**ER7, **writer})
    assert again.text == first.text
