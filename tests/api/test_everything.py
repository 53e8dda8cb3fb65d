"""Patient/$everything (issue 11 §5): the Patient, its compartment (every stored type that names it) and the studies
those reference; paged with _count and next links; _since and _type; another patient's resources never in it;
limited by scopes and studies as searches are (tests/auth/test_access_matrix.py), audited."""

import time
from datetime import UTC, datetime

import pytest

from fhir_mappings import fhir
from tests.factories import adverse_event, created, enrol, observation


@pytest.fixture
def two_patients(client) -> dict[str, dict[str, str | list[str]]]:
    found: dict[str, dict] = {}
    for name, values in (("mine", (10, 11, 12)), ("other", (5,))):
        ids: dict = enrol(client)
        ids["observations"] = [created(client.post("/fhir/Observation", json=observation(
            ids["patient"], "EASI", v, f"2024-01-{10 + i:02d}")))["id"] for i, v in enumerate(values)]
        event = adverse_event(ids["patient"], ids["study"])
        ids["event"] = created(client.post("/fhir/AdverseEvent", json=event))["id"]
        found[name] = ids
    return found


def everything(client, pid: str, **params) -> dict:
    response = client.get(f"/fhir/Patient/{pid}/$everything", params=params)
    assert response.status_code == 200, response.text
    fhir.Bundle.model_validate(response.json())
    return response.json()


def shown(bundle: dict) -> list[tuple[str, str, str]]:
    return [(e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"]) for e in bundle.get("entry", [])]


def test_everything_is_the_patient_its_compartment_and_its_studies(client, two_patients):
    mine = two_patients["mine"]
    bundle = everything(client, mine["patient"])
    assert bundle["type"] == "searchset" and bundle["total"] == 7
    found = shown(bundle)
    assert found[0] == ("Patient", mine["patient"], "match")
    assert sorted(found) == sorted([
        ("Patient", mine["patient"], "match"), ("ResearchSubject", mine["subject"], "match"),
        *[("Observation", o, "match") for o in mine["observations"]], ("AdverseEvent", mine["event"], "match"),
        ("ResearchStudy", mine["study"], "include")])
    other = two_patients["other"]
    assert not {rid for _, rid, _ in found} & {other["patient"], other["subject"], other["event"],
                                                *other["observations"]}
    # fullUrls are the resources' own
    assert all(e["fullUrl"].endswith(f"/{e['resource']['resourceType']}/{e['resource']['id']}")
               for e in bundle["entry"])


def test_everything_is_paged_by_next_links_without_loss_or_repeats(client, two_patients):
    mine = two_patients["mine"]
    whole = shown(everything(client, mine["patient"]))
    pages = [everything(client, mine["patient"], _count=2)]
    while (following := next((link["url"] for link in pages[-1]["link"] if link["relation"] == "next"), None)):
        response = client.get(following)
        assert response.status_code == 200
        pages.append(response.json())
    assert [len(p.get("entry", [])) for p in pages] == [2, 2, 2, 1]
    assert [item for p in pages for item in shown(p)] == whole
    assert "total" not in pages[0]


def test_everything_type_and_since(client, two_patients):
    mine = two_patients["mine"]
    only = shown(everything(client, mine["patient"], _type="Observation,AdverseEvent"))
    assert sorted(t for t, _, _ in only) == ["AdverseEvent", "Observation", "Observation", "Observation"]
    time.sleep(0.01)
    moment = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    time.sleep(0.01)
    changed = client.get(f"/fhir/Observation/{mine['observations'][0]}").json()
    assert client.put(f"/fhir/Observation/{changed['id']}", json={**changed, "status": "amended"}).status_code == 200
    assert shown(everything(client, mine["patient"], _since=moment)) == [
        ("Observation", mine["observations"][0], "match")]


def test_deleted_things_are_left_out(client, two_patients):
    mine = two_patients["mine"]
    assert client.delete(f"/fhir/AdverseEvent/{mine['event']}").status_code == 200
    assert ("AdverseEvent", mine["event"], "match") not in shown(everything(client, mine["patient"]))


@pytest.mark.parametrize(("query", "status", "expression"), [
    ("_type=Basic", 400, "_type"), ("_type=", 400, "_type"), ("_since=yesterday", 400, "_since"),
    ("_page=garbage", 400, "_page"), ("_count=0", 400, None)])
def test_bad_parameters_are_a_400(client, two_patients, query, status, expression):
    r = client.get(f"/fhir/Patient/{two_patients['mine']['patient']}/$everything?{query}")
    assert r.status_code == status, r.text
    if expression:
        assert expression in r.json()["issue"][0]["expression"][0]


def test_parameters_that_would_widen_are_refused(client, two_patients):
    pid = two_patients["mine"]["patient"]
    for query in ("start=2024-01-01", "end=2024-12-31"):
        r = client.get(f"/fhir/Patient/{pid}/$everything?{query}")
        assert r.status_code == 400 and r.json()["issue"][0]["expression"] == [query.split("=")[0]]
    assert client.get(f"/fhir/Patient/{pid}/$everything?bogus=1").status_code == 200  # lenient: ignored
    strict = client.get(f"/fhir/Patient/{pid}/$everything?bogus=1", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and strict.json()["issue"][0]["expression"] == ["bogus"]


def test_unknown_and_deleted_patient(client):
    assert client.get("/fhir/Patient/nobody/$everything").status_code == 404
    lonely = created(client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male"}))["id"]
    assert [t for t, _, _ in shown(everything(client, lonely))] == ["Patient"]
    assert client.delete(f"/fhir/Patient/{lonely}").status_code == 200
    assert client.get(f"/fhir/Patient/{lonely}/$everything").status_code == 410


def test_everything_is_audited_naming_the_patient(client, two_patients):
    pid = two_patients["mine"]["patient"]
    everything(client, pid)
    events = client.get(f"/fhir/AuditEvent?subtype=operation&patient={pid}").json()
    subtypes = [[c["code"] for c in e["resource"]["subtype"]] for e in events.get("entry", [])
                if e["search"]["mode"] == "match"]
    assert ["operation", "$everything"] in subtypes
