"""A transaction's conditions `identifier=system|value` are looked up at once, before its entries run
(resources.prefetch_conditions), and each still matches what a search at its turn would match: resources stored
before, written by an earlier entry, released by a delete or an update in the same transaction (both databases)."""

from tests.factories import MRN, patient


def _transaction(client, entries: list[dict]):
    return client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})


def _put(mrn: str, **extra) -> dict:
    return {"resource": patient(mrn, **extra), "request": {"method": "PUT", "url": f"Patient?identifier={MRN}|{mrn}"}}


def _statuses(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [e["response"]["status"] for e in response.json()["entry"]]


def _ids(client, mrn: str) -> list[str]:
    return [e["resource"]["id"] for e in client.get(f"/fhir/Patient?identifier={MRN}|{mrn}").json().get("entry", [])]


def test_conditional_updates_create_or_update_as_a_search_would(client):
    stored = client.post("/fhir/Patient", json=patient("MRN-OLD")).json()["id"]
    statuses = _statuses(_transaction(client, [_put("MRN-OLD", gender="male"), _put("MRN-NEW")]))
    assert statuses == ["200 OK", "201 Created"]
    assert _ids(client, "MRN-OLD") == [stored]
    assert client.get(f"/fhir/Patient/{stored}").json()["meta"]["versionId"] == "2"
    again = _statuses(_transaction(client, [_put("MRN-OLD", gender="male"), _put("MRN-NEW")]))
    assert again == ["200 OK", "200 OK"] and len(_ids(client, "MRN-NEW")) == 1


def test_a_condition_sees_an_earlier_entry_of_the_same_transaction(client):
    made = {"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000a1", "resource": patient("MRN-SAME"),
            "request": {"method": "POST", "url": "Patient"}}
    create_if_none = {"resource": patient("MRN-SAME"), "request": {
        "method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN}|MRN-SAME"}}
    statuses = _statuses(_transaction(client, [made, create_if_none]))
    assert statuses == ["201 Created", "200 OK"]
    assert len(_ids(client, "MRN-SAME")) == 1


def test_a_condition_does_not_match_what_the_transaction_deleted_or_renamed(client):
    gone = client.post("/fhir/Patient", json=patient("MRN-GONE")).json()["id"]
    renamed = client.post("/fhir/Patient", json=patient("MRN-RENAMED")).json()["id"]
    entries = [{"request": {"method": "DELETE", "url": f"Patient/{gone}"}},
               {"resource": {**patient("MRN-RENAMED-2"), "id": renamed},
                "request": {"method": "PUT", "url": f"Patient/{renamed}"}},
               _put("MRN-GONE"), _put("MRN-RENAMED")]
    statuses = _statuses(_transaction(client, entries))
    assert statuses[2:] == ["201 Created", "201 Created"]
    assert _ids(client, "MRN-GONE") not in ([], [gone]) and _ids(client, "MRN-RENAMED") not in ([], [renamed])
    assert _ids(client, "MRN-RENAMED-2") == [renamed]


def test_conditions_are_answered_without_a_search_per_entry(client, monkeypatch):
    """Every `identifier=system|value` condition of a transaction is answered from the one look-up made before its
    entries run: no search per entry, however many conditions."""
    from service.core import resources

    searches: list[str] = []
    real = resources.match_ids

    def counted(*args, **kwargs):
        searches.append(kwargs.get("where", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(resources, "match_ids", counted)
    client.post("/fhir/Patient", json=patient("MRN-C0"))
    for size in (4, 16):
        statuses = _statuses(_transaction(client, [_put(f"MRN-C{size}-{i}") for i in range(size)] + [_put("MRN-C0")]))
        assert statuses == ["201 Created"] * size + ["200 OK"]
    assert searches == []
    # a condition that is not a plain identifier is still searched, at its turn
    _statuses(_transaction(client, [{"resource": patient("MRN-C0"), "request": {
        "method": "PUT", "url": f"Patient?identifier={MRN}|MRN-C0&gender=female"}}]))
    assert searches == ["search"]
