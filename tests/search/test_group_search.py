"""Group search (the studies' cohorts) follows the same strictness as every search (issue 11 §4): what it can't apply
is said, never silently dropped, and the `self` link shows only what was applied."""

from tests.factories import created, study


def test_group_search_applies_id_and_reports_what_it_ignores(client):
    a = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    b = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    every = client.get("/fhir/Group").json()
    assert {e["resource"]["id"] for e in every["entry"]} == {a, b}

    one = client.get(f"/fhir/Group?_id={a}&bogus=1&_count=10").json()
    matches = [e for e in one["entry"] if e["search"]["mode"] == "match"]
    assert [e["resource"]["id"] for e in matches] == [a] and one["total"] == 1
    outcome = [e["resource"] for e in one["entry"] if e["search"]["mode"] == "outcome"]
    assert [i["expression"] for i in outcome[0]["issue"]] == [["bogus"]]
    self_link = next(link["url"] for link in one["link"] if link["relation"] == "self")
    assert self_link.endswith(f"/fhir/Group?_id={a}&_count=10")  # bogus was not applied: not in the link


def test_group_search_refuses_what_would_widen_it(client):
    created(client.post("/fhir/ResearchStudy", json=study()))
    strict = client.get("/fhir/Group?bogus=1", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and strict.json()["issue"][0]["expression"] == ["bogus"]
    modifier = client.get("/fhir/Group?_id:exact=x")
    assert modifier.status_code == 400 and modifier.json()["issue"][0]["expression"] == ["_id:exact"]
    count = client.get("/fhir/Group?_count=many")
    assert count.status_code == 400 and count.json()["issue"][0]["expression"] == ["_count"]
