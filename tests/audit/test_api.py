"""AuditEvents over HTTP: read and searched through the generic code (patient, entity, agent, subtype, outcome,
date), never written by a client, through any path; and `trial-fhir audit verify`."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from fhir_mappings import fhir
from service.audit.events import build_event, outcome_for
from service.audit.log import commit_now
from service.cli import app as cli_app

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def events(engine):
    """A few days of a trial's audit trail."""
    records = {
        "old": build_event(subtype="read", outcome=0, client="portal", patients=["x"],
                           resources=["Patient/x/_history/1"], recorded=NOW - timedelta(days=60)),
        "search": build_event(subtype="search-type", outcome=0, client="portal", client_system="https://issuer.example",
                              patients=["x", "y"], resources=["Observation/o1/_history/1", "Observation/o2/_history/3"],
                              query="code=EASI", recorded=NOW - timedelta(days=3)),
        "create": build_event(subtype="create", outcome=0, client="ehr", patients=["y"],
                              resources=["Observation/o3/_history/1"], recorded=NOW - timedelta(days=2)),
        "refused": build_event(subtype="update", outcome=outcome_for(422), status=422, client="ehr",
                               recorded=NOW - timedelta(days=1)),
        "export": build_event(subtype="operation", operation="$export", outcome=0, client="portal",
                              recorded=NOW - timedelta(hours=1)),
    }
    commit_now(engine, list(records.values()))
    return records


def found(client, query: str) -> list[str]:
    response = client.get(f"/fhir/AuditEvent?{query}", headers={"Prefer": "handling=strict"})
    assert response.status_code == 200, response.text
    bundle = response.json()
    fhir.Bundle.model_validate(bundle)
    # the events of these test requests themselves (the anonymous caller: auth is off) are left out
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"
            and e["resource"]["agent"][0]["who"]["identifier"]["value"] != "anonymous"]


def ids(events, *names: str) -> list[str]:
    return [events[n].id for n in names]


def test_read_vread_and_history_of_an_event(client, events):
    record = events["search"]
    read = client.get(f"/fhir/AuditEvent/{record.id}")
    assert read.status_code == 200 and read.json() == record.resource
    assert read.headers["etag"] == 'W/"1"'
    fhir.AuditEvent.model_validate(read.json())
    assert client.get(f"/fhir/AuditEvent/{record.id}/_history/1").json() == record.resource
    history = client.get(f"/fhir/AuditEvent/{record.id}/_history").json()
    assert [e["resource"]["id"] for e in history["entry"]] == [record.id]


def test_who_saw_a_patient_last_month(client, events, caplog):
    month_ago = (NOW - timedelta(days=30)).date().isoformat()
    assert found(client, f"patient=Patient/x&date=ge{month_ago}") == ids(events, "search")
    # one cached statement (the date bound twice: on the event and on its audit_entity rows), read as it is
    assert not [r for r in caplog.records if "async read" in r.getMessage()]
    assert found(client, "patient=x") == ids(events, "old", "search")  # in date order (the default sort)
    assert found(client, "patient=y,nobody") == ids(events, "search", "create")
    assert found(client, "patient=Observation/o1") == []  # not a Patient
    assert found(client, "patient:missing=true") == ids(events, "refused", "export")


def test_search_by_entity_agent_subtype_outcome_action(client, events):
    assert found(client, "entity=Observation/o2") == ids(events, "search")
    assert found(client, "entity=o3") == ids(events, "create")
    assert found(client, "entity=Patient/x") == ids(events, "old", "search")
    assert found(client, "agent=ehr") == ids(events, "create", "refused")
    assert found(client, "agent=https://issuer.example|portal") == ids(events, "search")
    assert found(client, "agent=|portal") == ids(events, "old", "export")  # no issuer
    assert found(client, "subtype=create") == ids(events, "create")
    assert found(client, "subtype=http://hl7.org/fhir/restful-interaction|operation") == ids(events, "export")
    assert found(client, "subtype:not=read&_sort=-date") == ids(events, "export", "refused", "create", "search")
    assert found(client, "outcome=4") == ids(events, "refused")
    assert found(client, "outcome=0&action=E") == ids(events, "search", "export")
    assert found(client, "action=C,U") == ids(events, "create", "refused")
    assert found(client, f"_id={events['create'].id}") == ids(events, "create")
    assert found(client, f"_lastUpdated=ge{(NOW - timedelta(days=4)).date().isoformat()}&agent=portal") == \
        ids(events, "search", "export")
    count = client.get("/fhir/AuditEvent?agent=portal,ehr&_summary=count").json()
    assert count["total"] == 5  # (beside them: the events of these test requests, by the anonymous caller)


def test_post_search_form(client, events):
    response = client.post("/fhir/AuditEvent/_search", data={"patient": "Patient/y", "agent": "ehr"})
    assert [e["resource"]["id"] for e in response.json()["entry"]] == ids(events, "create")


def assert_405(response):
    assert response.status_code == 405, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "not-supported"


@pytest.mark.parametrize("front_door", [True, False])
def test_no_client_writes_an_audit_event(settings, events, front_door):
    from fastapi.testclient import TestClient

    from service.main import create_app

    record = events["search"]
    body = {**record.resource, "outcome": "8"}
    with TestClient(create_app(settings.model_copy(update={"front_door": front_door}))) as client:
        created = client.post("/fhir/AuditEvent", json={k: v for k, v in body.items() if k not in ("id", "meta")})
        assert_405(created)
        if front_door:  # answered by the core (the front door takes every POST /fhir/{type})
            assert created.headers["allow"] == "GET, HEAD"
        assert_405(client.put(f"/fhir/AuditEvent/{record.id}", json=body))
        assert_405(client.put(f"/fhir/AuditEvent?_id={record.id}", json=body))
        assert_405(client.delete(f"/fhir/AuditEvent/{record.id}"))
        assert_405(client.delete(f"/fhir/AuditEvent?_id={record.id}"))
        assert client.get(f"/fhir/AuditEvent/{record.id}").json() == record.resource


def test_no_bundle_entry_writes_an_audit_event(client, events):
    record = events["search"]
    body = {**record.resource, "outcome": "8"}
    entries = [{"resource": body, "request": {"method": "PUT", "url": f"AuditEvent/{record.id}"}},
               {"resource": {k: v for k, v in body.items() if k != "id"}, "request": {"method": "POST",
                                                                                     "url": "AuditEvent"}},
               {"request": {"method": "DELETE", "url": f"AuditEvent/{record.id}"}},
               {"request": {"method": "DELETE", "url": f"AuditEvent?_id={record.id}"}}]
    for item in entries:
        response = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [item]})
        assert_405(response)
        assert response.json()["issue"][0]["expression"][0].startswith("Bundle.entry[0]")
    batch = client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert batch.status_code == 200
    assert [e["response"]["status"] for e in batch.json()["entry"]] == ["405 Method Not Allowed"] * 4
    assert client.get(f"/fhir/AuditEvent/{record.id}").json() == record.resource
    assert client.get(f"/fhir/AuditEvent/{record.id}/_history").json()["total"] == 1


def test_capability_statement_lists_only_reads(client):
    statement = client.get("/fhir/metadata").json()
    entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "AuditEvent")
    assert {i["code"] for i in entry["interaction"]} == {"read", "vread", "history-instance", "history-type",
                                                         "search-type"}
    assert not entry["updateCreate"] and not entry["conditionalCreate"] and not entry["conditionalUpdate"]
    assert {"date", "agent", "patient", "entity", "subtype", "outcome", "_id", "_lastUpdated"} <= \
        {p["name"] for p in entry["searchParam"]}
    assert client.get("/fhir/SearchParameter/AuditEvent-agent").json()["type"] == "token"


def test_the_audit_trail_is_not_exported(client):
    response = client.get("/fhir/$export?_type=AuditEvent", headers={"Prefer": "respond-async"})
    assert response.status_code == 400


def test_cli_verify(settings, engine, events, monkeypatch):
    from service.settings import get_settings

    monkeypatch.setenv("TRIAL_FHIR_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        ok = runner.invoke(cli_app, ["audit", "verify"])
        assert ok.exit_code == 0, ok.output
        assert "audit chain intact: 5 events" in ok.output
        head = ok.output.split("head: ", 1)[1].split()[0]
        assert runner.invoke(cli_app, ["audit", "verify", "--head", head]).exit_code == 0
        assert runner.invoke(cli_app, ["audit", "verify", "--head", "nonsense"]).exit_code == 2
        assert runner.invoke(cli_app, ["audit", "verify", "--head", "9:" + "0" * 64]).exit_code == 1
        with engine.begin() as conn:
            conn.execute(text("UPDATE audit_event SET outcome = '0' WHERE id = :id"), {"id": events["refused"].id})
        broken = runner.invoke(cli_app, ["audit", "verify"])
        assert broken.exit_code == 1
        assert f"seq 4 (AuditEvent/{events['refused'].id}): content changed" in broken.output
    finally:
        get_settings.cache_clear()
