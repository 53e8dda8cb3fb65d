"""A stored Observation shows the visit and study day the server assigned it in meta.tag (issue 11 §9), over
HTTP, in searches and in exports, without any other change to what the EHR sent."""

from fhir_mappings.terminology import STUDY_DAY_SYSTEM, VISIT_SYSTEM
from tests.factories import created, enrol, observation

OWN_TAG = {"system": "https://ehr.example.org/tags", "code": "imported"}


def derived(resource: dict) -> dict[str, str]:
    return {t["system"]: t["code"] for t in resource["meta"].get("tag", [])
            if t["system"] in (VISIT_SYSTEM, STUDY_DAY_SYSTEM)}


def test_observation_carries_its_visit_and_study_day(client):
    ids = enrol(client, day0="2024-01-10")
    sent = observation(ids["patient"], date="2024-02-08T09:00:00+09:00", meta={"tag": [OWN_TAG]})
    stored = created(client.post("/fhir/Observation", json=sent))
    assert derived(stored) == {VISIT_SYSTEM: "week-4", STUDY_DAY_SYSTEM: "29"}
    assert stored["meta"]["tag"][0] == OWN_TAG
    assert {k: v for k, v in stored.items() if k not in ("meta", "id")} == \
        {k: v for k, v in sent.items() if k != "meta"}
    read = client.get(f"/fhir/Observation/{stored['id']}").json()
    assert derived(read) == derived(stored)
    found = client.get(f"/fhir/Observation?_id={stored['id']}").json()["entry"][0]["resource"]
    assert derived(found) == derived(stored)


def test_a_client_cannot_set_the_servers_tags(client):
    ids = enrol(client, day0="2024-01-10")
    sent = observation(ids["patient"], date="2024-01-10",
                       meta={"tag": [{"system": VISIT_SYSTEM, "code": "week-12"}]})
    stored = created(client.post("/fhir/Observation", json=sent))
    assert derived(stored) == {VISIT_SYSTEM: "baseline", STUDY_DAY_SYSTEM: "0"}
    assert [t["code"] for t in stored["meta"]["tag"]] == ["baseline", "0"]


def test_without_day0_the_visit_is_unscheduled_and_there_is_no_study_day(client):
    ids = enrol(client, day0=None)
    stored = created(client.post("/fhir/Observation", json=observation(ids["patient"], date="2024-01-10")))
    assert derived(stored) == {VISIT_SYSTEM: "unscheduled"}


def test_tags_in_a_transaction_response(client):
    ids = enrol(client, day0="2024-01-10")
    r = client.post("/fhir", headers={"Prefer": "return=representation"}, json={
        "resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": observation(ids["patient"], date="2024-04-03"), "request": {"method": "POST",
                                                                                  "url": "Observation"}}]})
    assert r.status_code == 200, r.text
    assert derived(r.json()["entry"][0]["resource"]) == {VISIT_SYSTEM: "week-12", STUDY_DAY_SYSTEM: "84"}


def test_an_unchanged_update_keeps_the_version_and_its_tags(client):
    ids = enrol(client, day0="2024-01-10")
    stored = created(client.post("/fhir/Observation", json=observation(ids["patient"], date="2024-01-10")))
    again = client.put(f"/fhir/Observation/{stored['id']}", json={k: v for k, v in stored.items() if k != "meta"})
    assert again.status_code == 200
    assert again.json()["meta"]["versionId"] == "1" and derived(again.json()) == derived(stored)
