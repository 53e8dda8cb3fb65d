"""Chained parameters, `_has`, `:iterate`, the `_revinclude` cap, `_total` and paging links, over HTTP (issue 11
§4, §6)."""

import pytest

from service.search import service as search_service
from tests.assertions import walk_pages
from tests.factories import MRN
from tests.search.test_search import EASI_ALL, found, names, warnings

NCT = "urn:nct"


@pytest.mark.parametrize("query, expected", [
    (f"Observation?subject:Patient.identifier={MRN}|MRN-2", ("easi2_base", "ige2")),
    ("Observation?subject.identifier=MRN-2", ("easi2_base", "ige2")),
    ("Observation?patient.identifier=MRN-2&code=19113-0", ("ige2",)),
    (f"Observation?patient:Patient.identifier={MRN}|MRN-1,{MRN}|MRN-2&code=19113-0", ("ige1", "ige2")),
    ("Observation?patient.identifier=MRN-9", ()),
    ("Observation?subject.gender=male", ("easi2_base", "ige2")),
    ("Observation?subject.birthdate=ge1990&code=EASI", ("easi2_base", "easi3", "easi3_partial")),
    ("Observation?subject.birthdate=lt1990&code=EASI", ("easi1_base", "easi1_w4", "easi1_w12")),
    ("Observation?subject.gender:not=female", ("easi2_base", "ige2")),
    (f"Observation?study.identifier={NCT}|NCT01&code=EASI", ("easi1_base", "easi1_w4", "easi1_w12", "easi2_base")),
    ("Observation?study.identifier=NCT01&subject.gender=female&code=EASI",
     ("easi1_base", "easi1_w4", "easi1_w12")),
    ("Observation?study.identifier=urn:other|NCT01", ()),
    ("AdverseEvent?subject.gender=female", ("ae1", "ae3")),
    ("AdverseEvent?subject:Patient.identifier=MRN-2", ("ae2",)),
    ("AdverseEvent?study.identifier=NCT01", ("ae1", "ae2")),
    ("AdverseEvent?study.title=second", ("ae3",)),
    ("ResearchSubject?individual.gender=female", ("s1", "s3")),
    ("ResearchSubject?study.identifier=NCT01", ("s1", "s2")),
    ("Observation?subject._lastUpdated=ge2000-01-01&code=19113-0", ("ige1", "ige2")),  # reads resource rows
    ("Observation?subject._lastUpdated=lt2000-01-01", ()),
    ("Observation?subject._id=PID_p3", ("easi3", "easi3_partial")),
    ("Observation?subject.gender:missing=true", ()),
    ("ResearchStudy?identifier=NCT01", ("A",)),
    (f"ResearchStudy?identifier={NCT}|NCT01", ("A",)),
])
def test_chained_parameters(shared, query, expected):
    client, trial = shared
    assert found(client, query.replace("PID_p3", trial["p3"])) == names(trial, *expected)


@pytest.mark.parametrize("query, expected", [
    ("Patient?_has:Observation:patient:code=19113-0", ("p1", "p2")),
    ("Patient?_has:Observation:subject:code=EASI&gender=female", ("p1", "p3")),
    ("Patient?_has:Observation:patient:value-quantity=lt2", ("p3",)),
    ("Patient?_has:AdverseEvent:subject:seriousness=serious", ("p2",)),
    ("Patient?_has:ResearchSubject:individual:arm=high-dose", ("p1", "p3")),
    ("Patient?_has:Observation:patient:code=19113-0&_has:AdverseEvent:subject:severity=mild", ("p1",)),
    ("ResearchStudy?_has:ResearchSubject:study:arm=low-dose", ("A",)),
    ("ResearchStudy?_has:AdverseEvent:study:severity=moderate", ("B",)),
    ("Patient?_has:Observation:patient:status=cancelled", ()),
])
def test_has_reverse_chain(shared, query, expected):
    client, trial = shared
    assert found(client, query) == names(trial, *expected)


@pytest.mark.parametrize("query, name", [
    ("Observation?subject.name=Kim", "subject.name"),  # Patient has no name parameter here
    ("Observation?subject:Group.identifier=x", "subject:Group.identifier"),  # not a target
    ("Observation?subject.identifier.system=x", "subject.identifier.system"),
    ("Observation?subject.gender:text=female", "subject.gender:text"),  # unsupported modifier inside
    ("Observation?subject.birthdate=1990-13", "subject.birthdate"),  # malformed value inside
    ("Observation?code.system=x", "code.system"),  # a token can't be chained
    ("Observation?subject._has:Observation:patient:code=x", "subject._has:Observation:patient:code"),
    ("Patient?_has:Observation:code:status=final", "_has:Observation:code:status"),  # code is no reference
    ("Patient?_has:Observation:study:status=final", "_has:Observation:study:status"),  # points at a study
    ("Patient?_has:Nothing:patient:code=x", "_has:Nothing:patient:code"),
    ("Patient?_has:Observation:patient:colour=x", "_has:Observation:patient:colour"),
    ("Patient?_has:Observation:patient=x", "_has:Observation:patient"),
    ("Patient?_has:Observation:patient:_has:AdverseEvent:subject:severity=mild",
     "_has:Observation:patient:_has:AdverseEvent:subject:severity"),
])
def test_unsupported_chain_is_always_400(shared, query, name):
    client, trial = shared
    for headers in ({}, {"Prefer": "handling=lenient"}):
        response = client.get(f"/fhir/{query}", headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["issue"][0]["expression"] == [name]


def test_include_iterate_follows_what_was_included(shared):
    client, trial = shared
    body = client.get(f"/fhir/Observation?_id={trial['easi1_base']}&_include=Observation:subject"
                      "&_revinclude:iterate=ResearchSubject:individual&_include:iterate=ResearchSubject:study").json()
    included = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in body["entry"]
                if e["search"]["mode"] == "include"}
    assert included == {("Patient", trial["p1"]), ("ResearchSubject", trial["s1"]), ("ResearchStudy", trial["A"])}
    # without :iterate, the ResearchSubject include only starts from the matches (Observations): nothing more
    body = client.get(f"/fhir/Observation?_id={trial['easi1_base']}&_include=Observation:subject"
                      "&_revinclude=ResearchSubject:individual")
    assert body.status_code == 400  # ResearchSubject:individual does not point at an Observation
    # a resource is never served twice: the matches come back through the patient's other results only once
    body = client.get(f"/fhir/Observation?subject={trial['p2']}&_include=Observation:subject"
                      "&_revinclude:iterate=Observation:subject").json()
    ids = [e["resource"]["id"] for e in body["entry"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == names(trial, "p2", "easi2_base", "ige2")


def test_revinclude_is_capped_with_a_warning(shared, monkeypatch):
    client, trial = shared
    monkeypatch.setattr(search_service, "MAX_REVINCLUDE", 2)
    body = client.get(f"/fhir/Patient?_id={trial['p1']}&_revinclude=Observation:subject").json()
    included = [e for e in body["entry"] if e["search"]["mode"] == "include"]
    assert len(included) == 2
    issue = warnings(body)[0]
    assert issue["code"] == "too-costly" and issue["expression"] == ["_revinclude"]
    body = client.get(f"/fhir/Patient?_id={trial['p2']}&_revinclude=Observation:subject").json()
    assert len([e for e in body["entry"] if e["search"]["mode"] == "include"]) == 2 and not warnings(body)


def test_total_and_first_link(shared):
    client, trial = shared
    first = client.get("/fhir/Observation?code=EASI&_count=2").json()
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert set(links) == {"self", "first", "last", "next"} and links["first"] == links["self"]
    assert "total" not in first
    second = client.get(links["next"]).json()
    links2 = {link["relation"]: link["url"] for link in second["link"]}
    assert links2["first"] == links["self"] and {"previous", "next"} <= set(links2)
    assert "_cursor" not in links2["first"]
    assert links2["self"] == links["next"], "a page's self link is the URL that gave it, cursor included"
    assert [e["resource"]["id"] for e in client.get(links2["first"]).json()["entry"]] == \
        [e["resource"]["id"] for e in first["entry"]]
    whole = client.get("/fhir/Observation?code=EASI&_total=estimate").json()
    assert whole["total"] == 6 and {link["relation"] for link in whole["link"]} == {"self"}
    assert client.get("/fhir/Observation?code=EASI&_count=1&_total=estimate").json()["total"] == 6
    assert client.get("/fhir/Observation?code=EASI&subject.gender=male&_count=1&_total=accurate"
                      ).json()["total"] == 1
    assert client.get("/fhir/Patient?_has:Observation:patient:code=EASI&_summary=count").json()["total"] == 3


def test_chained_search_pages(shared):
    client, trial = shared
    seen, url = [], "/fhir/Observation?subject.gender=female&code=EASI&_count=2"
    while url:
        body = client.get(url).json()
        seen += [e["resource"]["id"] for e in body.get("entry", [])]
        url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
    assert sorted(seen) == sorted(names(trial, "easi1_base", "easi1_w4", "easi1_w12", "easi3", "easi3_partial"))
    assert set(EASI_ALL) >= {k for k in trial if trial[k] in seen}


def test_capability_statement_says_the_default_handling_and_the_chains(client):
    statement = client.get("/fhir/metadata").json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    doc = resources["Observation"]["documentation"]
    assert "lenient by default" in doc and "handling=strict" in doc
    assert "_has:" in doc and "_total=accurate|estimate|none" in doc
    params = {p["name"]: p for p in resources["Observation"]["searchParam"]}
    found = client.get("/fhir/SearchParameter", params={"url": params["subject"]["definition"]}).json()
    subject = found["entry"][0]["resource"]
    assert subject["target"] == ["Patient"] and {"gender", "birthdate"} <= set(subject["chain"])
    study = client.get("/fhir/SearchParameter/Observation-study").json()
    assert "identifier" in study["chain"] and "type" in study["modifier"]


@pytest.mark.parametrize("query", ["Observation?_count=2", "Observation?_count=4&_sort=-date", "Observation?_count=2&"
                                   "_sort=value-quantity", "Observation?_count=3&_sort=_id", "Patient?_count=2",
                                   "Observation?_count=2&subject.gender=female&_sort=-_lastUpdated"])
def test_last_link_and_walking_back_from_it(shared, query):
    client, trial = shared

    forward = [i for page in walk_pages(client, f"/fhir/{query}", "next") for i in page]
    body = client.get(f"/fhir/{query}").json()
    last_url = next(link["url"] for link in body["link"] if link["relation"] == "last")
    last = client.get(last_url).json()
    assert not any(link["relation"] == "next" for link in last["link"]), "nothing follows the last page"
    backward = [i for page in walk_pages(client, last_url, "previous")[::-1] for i in page]
    assert backward == forward
