"""A transaction Bundle checks its entries' structure before its transaction begins (outside SQLite's write lock),
once per entry, and each entry still meets its own outcome where it did (both databases)."""

from sqlalchemy import event

from fhir_mappings import validation
from service.bundle import service as bundles
from tests.factories import MRN, enrol, observation, patient


def _watch(engine, monkeypatch) -> list[str]:
    """The order of structure checks ("check") and SQL statements ("sql") from now on."""
    seen: list[str] = []
    real = validation.structure_issues

    def counted(*args, **kwargs):
        seen.append("check")
        return real(*args, **kwargs)

    monkeypatch.setattr(bundles, "structure_issues", counted)
    monkeypatch.setattr("service.core.resources.structure_issues", counted)
    event.listen(engine, "before_cursor_execute", lambda *_a, **_k: seen.append("sql"))
    return seen


def _entry(resource: dict, method: str = "POST", url: str | None = None) -> dict:
    return {"resource": resource, "request": {"method": method, "url": url or resource["resourceType"]}}


def test_every_entry_is_checked_once_before_the_first_statement(client, engine, monkeypatch):
    ids = enrol(client)
    client.post("/fhir/Patient", json=patient("MRN-PUT"))
    seen = _watch(engine, monkeypatch)
    entries = [_entry(observation(ids["patient"], "EASI", 10 + i, "2024-01-09")) for i in range(5)]
    # a conditional update matching a stored Patient: checked once, not again when its match's id is set
    entries.append(_entry(patient("MRN-PUT", gender="male"), "PUT", f"Patient?identifier={MRN}|MRN-PUT"))
    response = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert response.status_code == 200, response.text
    first_sql = seen.index("sql")
    assert seen.count("check") == 6
    assert seen[:first_sql].count("check") == 6  # all before the transaction's first statement


def test_an_invalid_entry_is_still_named_and_nothing_is_stored(client):
    ids = enrol(client)
    bad = observation(ids["patient"], "EASI", 10, "2024-01-09")
    bad["status"] = 7
    entries = [_entry(observation(ids["patient"], "EASI", 11, "2024-01-09")), _entry(bad)]
    response = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert response.status_code == 400, response.text
    assert any(e.startswith("Bundle.entry[1].resource.status")
               for i in response.json()["issue"] for e in i.get("expression", []))
    assert client.get("/fhir/Observation").json()["total"] == 0
