"""FHIR search over HTTP: every parameter and prefix, modifiers, result parameters, includes and strict handling."""

import pytest

from tests.assertions import walk_pages
from tests.factories import LOINC, MRN, created, observation
from tests.search.conftest import build_trial  # noqa: F401 (other suites import it from here)

AD = "https://trial-fhir.org/CodeSystem/ad-scores"
LAB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}


def found(client, query: str, *, status: int = 200) -> set[str]:
    response = client.get(f"/fhir/{query}")
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return {e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"}


def names(trial, *keys) -> set[str]:
    return {trial[k] for k in keys}


def warnings(body) -> list[dict]:
    return [i for e in body.get("entry", []) if e["search"]["mode"] == "outcome" for i in e["resource"]["issue"]]


EASI_ALL = ("easi1_base", "easi1_w4", "easi1_w12", "easi2_base", "easi3", "easi3_partial")
OBS_ALL = EASI_ALL + ("ige1", "iga1_pre", "ige2")
OBS_DATED = tuple(k for k in OBS_ALL if k != "easi3_partial")


# -- Observation -----------------------------------------------------------------------------------------

def test_observation_search_by_id_identifier_subject_and_patient(shared):
    client, trial = shared
    assert found(client, f"Observation?_id={trial['ige1']},{trial['ige2']}") == names(trial, "ige1", "ige2")
    assert found(client, "Observation?identifier=urn:lab|L-1") == names(trial, "easi1_base")
    assert found(client, "Observation?identifier=L-1") == names(trial, "easi1_base")
    assert found(client, "Observation?identifier=urn:other|L-1") == set()
    p1 = ("easi1_base", "easi1_w4", "easi1_w12", "ige1", "iga1_pre")
    assert found(client, f"Observation?subject=Patient/{trial['p1']}") == names(trial, *p1)
    assert found(client, f"Observation?subject={trial['p1']}") == names(trial, *p1)
    assert found(client, f"Observation?subject:Patient={trial['p1']}") == names(trial, *p1)
    assert found(client, f"Observation?patient=http://x.org/fhir/Patient/{trial['p2']}") == names(trial, "easi2_base",
                                                                                                   "ige2")
    assert found(client, f"Observation?subject=Group/{trial['p1']}") == set()
    assert found(client, f"Observation?subject={trial['p1']},{trial['p3']}") == names(trial, *p1, "easi3",
                                                                                        "easi3_partial")


def test_observation_search_by_code_forms(shared):
    client, trial = shared
    assert found(client, f"Observation?code={AD}|EASI") == names(trial, *EASI_ALL)
    assert found(client, "Observation?code=EASI") == names(trial, *EASI_ALL)
    assert found(client, f"Observation?code={LOINC}|") == names(trial, "ige1", "ige2")
    assert found(client, f"Observation?code={LOINC}|EASI") == set()
    assert found(client, f"Observation?code=IGA,{LOINC}|19113-0") == names(trial, "iga1_pre", "ige1", "ige2")
    assert found(client, "Observation?code:not=EASI") == names(trial, "ige1", "iga1_pre", "ige2")


def test_observation_search_by_category_status_and_missing(shared):
    client, trial = shared
    assert found(client, "Observation?category=laboratory") == names(trial, "ige1", "ige2")
    assert found(client, "Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
                 ) == names(trial, "ige1", "ige2")
    assert found(client, "Observation?category=urn:other|laboratory") == set()
    assert found(client, "Observation?category:missing=true") == names(trial, *EASI_ALL, "iga1_pre")
    assert found(client, "Observation?category:missing=false") == names(trial, "ige1", "ige2")
    assert found(client, "Observation?category:not=laboratory") == names(trial, *EASI_ALL, "iga1_pre")
    assert found(client, "Observation?status=preliminary") == names(trial, "iga1_pre")
    assert found(client, "Observation?status:not=final") == names(trial, "iga1_pre")
    assert found(client, "Observation?status=final,preliminary") == names(trial, *OBS_ALL)


@pytest.mark.parametrize("query, expected", [
    ("date=2024-01-10", ("easi1_base", "ige1", "iga1_pre")),
    ("date=eq2024-01-10", ("easi1_base", "ige1", "iga1_pre")),
    ("date=2024-01-09", ("easi2_base",)),  # 23:30 at +09:00 is 14:30 UTC the day before
    ("date=2024-02", ("easi1_w4", "ige2")),
    ("date=2024", OBS_DATED),
    ("date=2024-02-07T09:30:00Z", ("easi1_w4",)),
    ("date=2024-02-07T18:30:00%2B09:00", ("easi1_w4",)),
    ("date=2024-02-07T09:30", ("easi1_w4",)),
    ("date=ne2024-01-10", ("easi1_w4", "easi1_w12", "easi2_base", "ige2", "easi3")),
    ("date=gt2024-02-07", ("easi1_w12", "easi3")),
    ("date=sa2024-02-07", ("easi1_w12", "easi3")),
    ("date=ge2024-02-07", ("easi1_w4", "ige2", "easi1_w12", "easi3")),
    ("date=lt2024-01-10", ("easi2_base",)),
    ("date=eb2024-01-10", ("easi2_base",)),
    ("date=le2024-01-10", ("easi2_base", "easi1_base", "ige1", "iga1_pre")),
    ("date=ge2024-02&date=lt2024-04", ("easi1_w4", "ige2", "easi3")),
    ("date=lt2024-01-10,gt2024-03-31", ("easi2_base", "easi1_w12")),
    ("date:missing=true", ("easi3_partial",)),
    ("date:missing=false", OBS_DATED),
])
def test_observation_search_by_date_prefixes(shared, query, expected):
    client, trial = shared
    assert found(client, f"Observation?{query}") == names(trial, *expected)


@pytest.mark.parametrize("query, expected", [
    ("value-quantity=20", ("easi1_base",)),
    ("value-quantity=5.5", ("easi1_w12",)),
    ("value-quantity=5", ()),  # 5 means [4.5, 5.5)
    ("value-quantity=6", ("easi1_w12",)),  # 6 means [5.5, 6.5)
    ("value-quantity=gt30", ("easi3", "ige1", "ige2")),
    ("value-quantity=ge30", ("easi2_base", "easi3", "ige1", "ige2")),
    ("value-quantity=lt10", ("easi1_w12", "iga1_pre", "easi3_partial")),
    ("value-quantity=le10", ("easi1_w12", "iga1_pre", "easi1_w4", "easi3_partial")),
    ("value-quantity=ne20&code=EASI", ("easi1_w4", "easi1_w12", "easi2_base", "easi3", "easi3_partial")),
    ("value-quantity=sa30&code=EASI", ("easi3",)),
    ("value-quantity=eb10&code=EASI", ("easi1_w12", "easi3_partial")),
    ("value-quantity=ap100", ("ige1", "ige2")),
    ("value-quantity=100|http://unitsofmeasure.org|[IU]/mL", ("ige1", "ige2")),
    ("value-quantity=100||k[IU]/L", ("ige1", "ige2")),
    ("value-quantity=240||ng/mL", ("ige1", "ige2")),  # converted: 240 ng/mL = 100 [IU]/mL
    ("value-quantity=gt200||ng/mL", ("ige1", "ige2")),
    ("value-quantity=gt300||ng/mL", ()),
    ("value-quantity=20||{score}", ("easi1_base",)),
    ("value-quantity=20||mmHg", ()),
    ("value-quantity=20|urn:other|{score}", ()),
])
def test_observation_search_by_value_quantity(shared, query, expected):
    client, trial = shared
    assert found(client, f"Observation?{query}") == names(trial, *expected)


def test_observation_trial_parameters_study_arm_visit(shared):
    client, trial = shared
    in_a = ("easi1_base", "easi1_w4", "easi1_w12", "ige1", "iga1_pre", "easi2_base", "ige2")
    assert found(client, f"Observation?study=ResearchStudy/{trial['A']}") == names(trial, *in_a)
    assert found(client, f"Observation?study={trial['B']}") == names(trial, "easi3", "easi3_partial")
    assert found(client, f"Observation?study={trial['A']}&arm=low-dose") == names(trial, "easi2_base", "ige2")
    assert found(client, "Observation?arm=high-dose") == names(trial, "easi1_base", "easi1_w4", "easi1_w12", "ige1",
                                                              "iga1_pre", "easi3", "easi3_partial")
    assert found(client, "Observation?arm:not=high-dose") == names(trial, "easi2_base", "ige2")
    assert found(client, "Observation?visit=baseline&code=EASI") == names(trial, "easi1_base", "easi2_base")
    assert found(client, "Observation?visit=week-4,week-12") == names(trial, "easi1_w4", "ige2", "easi1_w12")
    assert found(client, "Observation?visit=unscheduled") == names(trial, "easi3", "easi3_partial")  # day 51, none
    assert found(client, f"Observation?study={trial['A']}&code=EASI&date=ge2024-02-01") == names(
        trial, "easi1_w4", "easi1_w12")


def test_last_updated_filters_and_sorts(shared):
    client, trial = shared
    bundle = client.get(f"/fhir/Observation?_id={trial['easi3']}").json()
    stamp = bundle["entry"][0]["resource"]["meta"]["lastUpdated"]
    assert found(client, f"Observation?_lastUpdated=ge{stamp}") == names(trial, "easi3")
    assert found(client, f"Observation?_lastUpdated=lt{stamp}") == names(trial, *OBS_ALL) - names(trial, "easi3")
    assert found(client, "Observation?_lastUpdated=gt2000-01-01&code=19113-0") == names(trial, "ige1", "ige2")
    order = [e["resource"]["id"] for e in client.get("/fhir/Observation?_sort=-_lastUpdated").json()["entry"]]
    assert order[0] == trial["easi3"] and order[-1] == trial["easi1_base"]
    order = [e["resource"]["id"] for e in client.get("/fhir/Observation?_sort=_lastUpdated").json()["entry"]]
    assert order[0] == trial["easi1_base"]


def test_sort_by_date_and_id(shared):
    client, trial = shared
    def order(query):
        return [e["resource"]["id"] for e in client.get(f"/fhir/{query}").json()["entry"]]

    by_date = order(f"Observation?subject={trial['p1']}&code=EASI&_sort=date")
    assert by_date == [trial["easi1_base"], trial["easi1_w4"], trial["easi1_w12"]]
    assert order(f"Observation?subject={trial['p1']}&code=EASI&_sort=-date") == by_date[::-1]
    assert order(f"Observation?subject={trial['p1']}&code=EASI") == by_date  # default: date order
    ids = order("Observation?_sort=_id")
    assert ids == sorted(ids) and len(ids) == len(OBS_ALL)
    assert order("Observation?_sort=-_id") == sorted(ids, reverse=True)
    assert order("Patient?_sort=_id") == sorted(names(trial, "p1", "p2", "p3"))


@pytest.mark.parametrize("query, key", [
    ("Observation?_sort={}", lambda r: r["valueQuantity"]["value"] if r["valueQuantity"]["code"] != "ng/mL"
     else r["valueQuantity"]["value"] / 2.4),  # sorted by the value in the measure's canonical unit
    ("Observation?_sort={}&code=EASI", lambda r: r["valueQuantity"]["value"]),
    ("Patient?_sort={}", lambda r: r["birthDate"]),
    ("ResearchStudy?_sort={}", lambda r: r["title"]),
    ("AdverseEvent?_sort={}", lambda r: r["severity"]["coding"][0]["code"]),
])
def test_sort_by_any_parameter_with_a_column(shared, query, key):
    client, trial = shared
    param = {"Observation": "value-quantity", "Patient": "birthdate", "ResearchStudy": "title",
             "AdverseEvent": "severity"}[query.split("?")[0]]
    for descending in (False, True):
        url = "/fhir/" + query.format(("-" if descending else "") + param) + "&_count=2"
        resources = []
        while url:
            body = client.get(url).json()
            resources += [e["resource"] for e in body.get("entry", []) if e["search"]["mode"] == "match"]
            url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
        values = [key(r) for r in resources]
        assert values == sorted(values, reverse=descending) and len(values) == len({r["id"] for r in resources})
    assert client.get("/fhir/Observation?_sort=identifier").status_code == 400  # no column of its own
    assert client.get("/fhir/Observation?_sort=arm").status_code == 400  # the arm is the subject's


# -- AdverseEvent, ResearchSubject, ResearchStudy, Patient -------------------------------------------------

def test_adverse_event_parameters(shared):
    client, trial = shared
    assert found(client, f"AdverseEvent?subject=Patient/{trial['p1']}") == names(trial, "ae1")
    assert found(client, f"AdverseEvent?study={trial['A']}") == names(trial, "ae1", "ae2")
    assert found(client, "AdverseEvent?date=ge2024-02-01") == names(trial, "ae2", "ae3")
    assert found(client, "AdverseEvent?date=2024-01") == names(trial, "ae1")
    assert found(client, "AdverseEvent?event=https://www.meddra.org|10037087") == names(trial, "ae1", "ae2", "ae3")
    assert found(client, "AdverseEvent?event=10037088") == set()
    assert found(client, "AdverseEvent?seriousness=serious") == names(trial, "ae2")
    assert found(client, "AdverseEvent?seriousness:not=serious") == names(trial, "ae1", "ae3")
    assert found(client, "AdverseEvent?severity=mild,moderate") == names(trial, "ae1", "ae3")
    assert found(client, "AdverseEvent?severity=http://terminology.hl7.org/CodeSystem/adverse-event-severity|severe"
                 ) == names(trial, "ae2")
    assert found(client, f"AdverseEvent?_id={trial['ae3']}&_lastUpdated=gt2000") == names(trial, "ae3")


def test_research_subject_parameters(shared):
    client, trial = shared
    assert found(client, f"ResearchSubject?study={trial['A']}") == names(trial, "s1", "s2")
    assert found(client, f"ResearchSubject?individual=Patient/{trial['p3']}") == names(trial, "s3")
    assert found(client, f"ResearchSubject?patient={trial['p2']}") == names(trial, "s2")
    assert found(client, "ResearchSubject?status=on-study") == names(trial, "s1", "s2", "s3")
    assert found(client, "ResearchSubject?status=withdrawn") == set()
    assert found(client, "ResearchSubject?arm=high-dose") == names(trial, "s1", "s3")
    assert found(client, f"ResearchSubject?arm=low-dose&study={trial['B']}") == set()
    assert found(client, f"ResearchSubject?_id={trial['s1']}") == names(trial, "s1")


def test_research_study_parameters(shared):
    client, trial = shared
    assert found(client, "ResearchStudy?status=active") == names(trial, "A")
    assert found(client, "ResearchStudy?status:not=active") == names(trial, "B")
    assert found(client, "ResearchStudy?identifier=urn:nct|NCT01") == names(trial, "A")
    assert found(client, "ResearchStudy?identifier:missing=true") == names(trial, "B")
    assert found(client, "ResearchStudy?title=mesenchymal") == names(trial, "A")  # starts with, any case
    assert found(client, "ResearchStudy?title=cells") == set()
    assert found(client, "ResearchStudy?title:contains=CELLS") == names(trial, "A")
    assert found(client, "ResearchStudy?title:exact=Second study") == names(trial, "B")
    assert found(client, "ResearchStudy?title:exact=second study") == set()
    assert found(client, "ResearchStudy?title:contains=%25") == set()  # % is not a wildcard
    assert found(client, f"ResearchStudy?_id={trial['B']}") == names(trial, "B")


def test_patient_parameters(shared):
    client, trial = shared
    assert found(client, "Patient?gender=female") == names(trial, "p1", "p3")
    assert found(client, "Patient?gender:not=female") == names(trial, "p2")
    assert found(client, "Patient?birthdate=1990") == names(trial, "p2", "p3")
    assert found(client, "Patient?birthdate=1990-01") == names(trial, "p2")
    assert found(client, "Patient?birthdate=lt1990") == names(trial, "p1")
    assert found(client, "Patient?birthdate=ge1990-06-01") == names(trial, "p3")
    assert found(client, "Patient?birthdate=le1990-01-01") == names(trial, "p1", "p2")
    assert found(client, "Patient?birthdate=ne1990-01-01") == names(trial, "p1", "p3")
    assert found(client, "Patient?birthdate=gt1990-01-01&birthdate=lt1991") == names(trial, "p3")
    assert found(client, f"Patient?identifier={MRN}|MRN-2") == names(trial, "p2")
    assert found(client, f"Patient?identifier:not={MRN}|MRN-2") == names(trial, "p1", "p3")
    assert found(client, "Patient?gender:missing=true") == set()


# -- result parameters -----------------------------------------------------------------------------------

def test_include_and_revinclude(shared):
    client, trial = shared
    body = client.get(f"/fhir/Observation?subject={trial['p1']}&code=EASI&_include=Observation:subject").json()
    modes = [(e["search"]["mode"], e["resource"]["resourceType"]) for e in body["entry"]]
    assert modes == [("match", "Observation")] * 3 + [("include", "Patient")]
    assert body["entry"][-1]["resource"]["id"] == trial["p1"]

    body = client.get(f"/fhir/ResearchSubject?study={trial['A']}&_include=ResearchSubject:individual"
                      "&_include=ResearchSubject:study").json()
    included = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in body["entry"]
                if e["search"]["mode"] == "include"}
    assert included == {("Patient", trial["p1"]), ("Patient", trial["p2"]), ("ResearchStudy", trial["A"])}

    body = client.get("/fhir/AdverseEvent?seriousness=serious&_include=AdverseEvent:subject"
                      "&_include=AdverseEvent:study").json()
    included = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in body["entry"]
                if e["search"]["mode"] == "include"}
    assert included == {("Patient", trial["p2"]), ("ResearchStudy", trial["A"])}

    body = client.get(f"/fhir/Patient?_id={trial['p2']}&_revinclude=Observation:subject"
                      "&_revinclude=ResearchSubject:individual&_revinclude=AdverseEvent:subject").json()
    included = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in body["entry"]
                if e["search"]["mode"] == "include"}
    assert included == {("Observation", trial["easi2_base"]), ("Observation", trial["ige2"]),
                        ("ResearchSubject", trial["s2"]), ("AdverseEvent", trial["ae2"])}
    assert body["total"] == 1

    response = client.get("/fhir/Observation?_include=AdverseEvent:subject&_revinclude=Observation:subject")
    assert response.status_code == 400  # an include this search can't make is refused, never dropped
    assert [i["expression"] for i in response.json()["issue"]] == [["_include"], ["_revinclude"]]


def test_summary_count_true_and_elements(shared):
    client, trial = shared
    body = client.get("/fhir/Observation?code=EASI&_summary=count").json()
    assert body["total"] == 6 and "entry" not in body
    body = client.get("/fhir/Observation?code=EASI&_count=0").json()
    assert body["total"] == 6 and "entry" not in body

    body = client.get(f"/fhir/Patient?_id={trial['p1']}&_summary=true").json()
    resource = body["entry"][0]["resource"]
    assert resource["gender"] == "female" and resource["identifier"]
    assert any(t["code"] == "SUBSETTED" for t in resource["meta"]["tag"])

    body = client.get(f"/fhir/Observation?_id={trial['ige2']}&_elements=valueQuantity,subject").json()
    resource = body["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "status", "code", "subject", "valueQuantity"}
    body = client.get(f"/fhir/Observation?_id={trial['ige2']}&_elements=value").json()
    assert "valueQuantity" in body["entry"][0]["resource"]
    assert "subject" not in body["entry"][0]["resource"]


def test_total_accurate_none_and_free(shared):
    client, trial = shared
    body = client.get("/fhir/Observation?code=EASI&_count=2").json()
    assert "total" not in body  # not free: more pages follow
    assert client.get("/fhir/Observation?code=EASI&_count=2&_total=accurate").json()["total"] == 6
    assert client.get("/fhir/Observation?code=EASI&_count=2&_total=estimate").json()["total"] == 6
    assert client.get("/fhir/Observation?code=EASI").json()["total"] == 6
    assert "total" not in client.get("/fhir/Observation?code=EASI&_total=none").json()



@pytest.mark.parametrize("sort", ["", "&_sort=date", "&_sort=-date", "&_sort=_id", "&_sort=-_id",
                                  "&_sort=_lastUpdated", "&_sort=-_lastUpdated", "&_sort=value-quantity",
                                  "&_sort=-value-quantity", "&_sort=code", "&_sort=-status", "&_sort=subject",
                                  "&_sort=category", "&_sort=-visit"])
def test_paging_follows_next_and_previous_links(shared, sort):
    client, trial = shared
    pages = walk_pages(client, f"/fhir/Observation?_count=3{sort}")
    flat = [i for page in pages for i in page]
    assert [len(p) for p in pages] == [3, 3, 3]
    assert len(set(flat)) == 9
    first = client.get(f"/fhir/Observation?_count=3{sort}").json()
    assert not any(link["relation"] == "previous" for link in first["link"])
    last = client.get(f"/fhir/Observation?_count=3{sort}")
    url = f"/fhir/Observation?_count=3{sort}"
    for _ in range(2):
        last = client.get(url).json()
        url = next(link["url"] for link in last["link"] if link["relation"] == "next")
    last = client.get(url).json()
    back = next(link["url"] for link in last["link"] if link["relation"] == "previous")
    assert walk_pages(client, back, "previous") == pages[:2][::-1]


def test_paging_never_repeats_or_skips_under_concurrent_inserts(client, trial):
    url = f"/fhir/Observation?study={trial['A']}&_count=2"
    before = {i for page in walk_pages(client, url) for i in page}
    seen: list[str] = []
    added = []
    dates = iter(["2023-12-01", "2024-12-01", "2024-01-15", "2024-02-20", "2025-01-01", "2024-01-10"])
    while url:
        body = client.get(url).json()
        seen += [e["resource"]["id"] for e in body.get("entry", [])]
        url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
        day = next(dates, None)
        if day:  # write between page requests: before, after and at the cursor
            added.append(created(client.post("/fhir/Observation", json=observation(trial["p1"], "EASI", 7, day)))["id"])
    assert len(seen) == len(set(seen)), "a resource was served twice"
    assert before <= set(seen), "a resource present all along was skipped"
    assert set(seen) <= before | set(added)


def test_count_is_capped_by_max_page_size(shared):
    client, trial = shared
    body = client.get("/fhir/Observation?_count=100000").json()
    assert len(body["entry"]) == 9


# -- errors, warnings, strict ----------------------------------------------------------------------------

def test_unknown_parameter_is_a_warning_or_400_when_strict(shared):
    client, trial = shared
    body = client.get("/fhir/Observation?code=EASI&colour=blue").json()
    assert found(client, "Observation?code=EASI&colour=blue") == names(trial, *EASI_ALL)
    issues = warnings(body)
    assert issues[0]["severity"] == "warning" and issues[0]["expression"] == ["colour"]
    assert body["entry"][0]["search"]["mode"] == "outcome"
    self_link = next(link["url"] for link in body["link"] if link["relation"] == "self")
    assert self_link.endswith("/fhir/Observation?code=EASI"), "the ignored parameter is left out of self"
    response = client.get("/fhir/Observation?code=EASI&colour=blue", headers={"Prefer": "handling=strict"})
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.json()["issue"][0]["expression"] == ["colour"]
    assert client.get("/fhir/Observation?code=EASI", headers={"Prefer": "handling=strict"}).status_code == 200


#: malformed values, unsupported modifiers and chains of known parameters, bad result parameters: always a 400
MALFORMED = [
    "date=2024-13-01", "date=2024-02-30", "date=xx2024", "date=ap2024", "date=2024-01-01T25:00", "date=",
    "date=9999-12-31T23:59:59%2B99:00", "date=99999", "_lastUpdated=yesterday",
    "value-quantity=abc", "value-quantity=1|2", "value-quantity=NaN", "value-quantity=1e999999999",
    "value-quantity=gt", "subject=Patient/", "subject=a b", "study=Patient/%C3%A9", "_id=a/b",
    "code=|", "code:text=EASI", "code:missing=maybe", "date:exact=2024", "subject.name=x",
    "_count=-1", "_count=ten", "_sort=name", "_sort=", "_include=Observation", "_include=*",
    "_revinclude=Observation:subject", "_summary=text", "_elements=nonsense", "_total=maybe",
    "_has:Observation:subject:code=EASI", "_has:Observation=x",
]
#: parameters Observation does not have: ignored (lenient), a 400 under strict handling
UNKNOWN = ["_content=x", "title=x", "birthdate=1990-1-1", "colour:exact=blue"]


@pytest.mark.parametrize("query", MALFORMED)
def test_malformed_input_is_always_a_400_naming_the_parameter(shared, query):
    client, trial = shared
    name = query.split("=")[0]
    for headers in ({}, {"Prefer": "handling=strict"}, {"Prefer": "handling=lenient"}):
        response = client.get(f"/fhir/Observation?{query}", headers=headers)
        assert response.status_code == 400, response.text
        issue = response.json()["issue"][0]
        assert issue["severity"] == "error" and issue["expression"] == [name]


@pytest.mark.parametrize("query", UNKNOWN)
def test_unknown_parameter_is_ignored_when_lenient_and_400_when_strict(shared, query):
    client, trial = shared
    response = client.get(f"/fhir/Observation?code=EASI&{query}")
    assert response.status_code == 200, response.text
    assert warnings(response.json()), "the ignored parameter is reported"
    assert {e["resource"]["id"] for e in response.json()["entry"] if e["search"]["mode"] == "match"} \
        == names(trial, *EASI_ALL)
    strict = client.get(f"/fhir/Observation?{query}", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400, strict.text
    assert strict.json()["issue"][0]["expression"] == [query.split("=")[0]]


@pytest.mark.parametrize("cursor", ["garbage", "WyJkYXRlIl0", "eyJhIjoxfQ", "WyJfaWQiLDAsMCxudWxsLCJ4Il0",
                                    "WyJkYXRlIiwwLDAsIm5vdC1hLWRhdGUiLCJ4Il0", "%00", ""])
def test_bad_cursor_is_400(shared, cursor):
    client, trial = shared
    response = client.get(f"/fhir/Observation?_cursor={cursor}")
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == ["_cursor"]


def test_unknown_resource_type_is_404(client):
    assert client.get("/fhir/Medication?code=x").status_code == 404


def test_post_search_form(shared):
    client, trial = shared
    response = client.post("/fhir/Observation/_search", data={"code": "EASI", "subject": trial["p2"]})
    assert response.status_code == 200, response.text
    assert {e["resource"]["id"] for e in response.json()["entry"]} == names(trial, "easi2_base")
    response = client.post(f"/fhir/Observation/_search?subject={trial['p1']}", data={"code": "19113-0"})
    assert {e["resource"]["id"] for e in response.json()["entry"]} == names(trial, "ige1")


def test_search_in_transaction_get_entry(shared):
    client, trial = shared
    body = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation?code=19113-0&subject={trial['p2']}"}}]}
    response = client.post("/fhir", json=body)
    assert response.status_code == 200, response.text
    inner = response.json()["entry"][0]["resource"]
    assert [e["resource"]["id"] for e in inner["entry"]] == [trial["ige2"]]


def test_deleted_resources_are_not_found(client, trial):
    assert client.delete(f"/fhir/Observation/{trial['easi3']}").status_code == 200
    assert found(client, "Observation?code=EASI") == names(trial, *EASI_ALL) - names(trial, "easi3")


# -- SearchParameter and CapabilityStatement ---------------------------------------------------------------

def test_trial_search_parameters_are_published(client):
    sp = client.get("/fhir/SearchParameter/Observation-visit")
    assert sp.status_code == 200
    assert sp.json()["code"] == "visit" and sp.json()["base"] == ["Observation"]
    bundle = client.get("/fhir/SearchParameter?url=" + sp.json()["url"]).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["Observation-visit"]
    bundle = client.get("/fhir/SearchParameter?name=ResearchSubjectArm").json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["ResearchSubject-arm"]
    ids = {e["resource"]["id"] for e in client.get("/fhir/SearchParameter").json()["entry"]}
    assert {"Observation-study", "Observation-arm", "Observation-visit", "ResearchSubject-arm"} <= ids
    assert client.get("/fhir/SearchParameter/nope").status_code == 404


def test_capability_statement_lists_every_search_parameter(client):
    statement = client.get("/fhir/metadata").json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    obs = {p["name"]: p for p in resources["Observation"]["searchParam"]}
    assert {"_id", "_lastUpdated", "identifier", "subject", "patient", "code", "category", "status", "date",
            "value-quantity", "study", "arm", "visit"} <= set(obs)
    assert obs["visit"]["definition"].endswith("/SearchParameter/Observation-visit")
    assert {"birthdate", "gender"} <= {p["name"] for p in resources["Patient"]["searchParam"]}
    assert "SearchParameter" in resources
