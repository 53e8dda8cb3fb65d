"""An export's `_typeFilter` selects exactly what the same search finds: for each query of a table, the ids that
`$export?_type=T&_typeFilter=T?query` writes are the ids that `GET /fhir/T?query` returns over all its pages, on
SQLite and PostgreSQL. The table holds the two places where they used to disagree: a date to the minute (export
read it as one second) and a token with a system (export ignored the system)."""

from tests.export.test_export import ASYNC, download, wait_for
from tests.factories import AD, LOINC, MRN, created, observation
from tests.search.test_search import OBS_ALL, build_trial

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

#: (type, query with {key} for the trial's ids, the keys it must find or None to only compare with search)
CRITERIA = [
    # a minute is [09:30, 09:31): both results of that minute (export used to take the one second 09:30:00)
    ("Observation", "date=2024-02-07T09:30", ("easi1_w4", "easi1_w4_later")),
    ("Observation", "date=2024-02-07T09:30:30Z", ("easi1_w4_later",)),
    # a token with a foreign system matches nothing (export used to drop the system and find both IgE results)
    ("Observation", "category=urn:other|laboratory", ()),
    ("Observation", f"category={CATEGORY}|laboratory", ("ige1", "ige2")),
    ("Observation", "status=http://hl7.org/fhir/observation-status|preliminary", ("iga1_pre",)),
    ("Observation", "status=urn:other|preliminary", ()),
    ("Observation", "status:not=final", ("iga1_pre",)),
    ("Observation", "date=ge2024-02&code=EASI", None),
    ("Observation", "date=2024-01-10", ("easi1_base", "ige1", "iga1_pre")),
    ("Observation", "date=lt2024-01-10,gt2024-03-01", None),
    ("Observation", "date:missing=true", ("easi3_partial",)),
    ("Observation", f"code={LOINC}|19113-0", ("ige1", "ige2")),
    ("Observation", f"code=EASI,{AD}|IGA", None),
    ("Observation", "code=|EASI", ()),
    ("Observation", "code:not=EASI", ("ige1", "iga1_pre", "ige2")),
    ("Observation", "subject=Patient/{p1}&code=EASI", None),
    ("Observation", "patient={p2}", ("easi2_base", "ige2")),
    ("Observation", "study=ResearchStudy/{B}", ("easi3", "easi3_partial")),
    ("Observation", "arm=low-dose", ("easi2_base", "ige2")),
    ("Observation", "arm:not=high-dose", ("easi2_base", "ige2")),
    ("Observation", "visit=week-4", None),
    ("Observation", "value-quantity=gt20", None),
    ("Observation", "value-quantity=100|http://unitsofmeasure.org|[IU]/mL", ("ige1", "ige2")),
    ("Observation", "identifier=urn:lab|L-1", ("easi1_base",)),
    ("Observation", "_id={ige1},{ige2}", ("ige1", "ige2")),
    ("Observation", "_lastUpdated=ge2000-01-01", OBS_ALL + ("easi1_w4_later",)),
    ("AdverseEvent", "seriousness=serious", ("ae2",)),
    ("AdverseEvent", "severity=mild,moderate", ("ae1", "ae3")),
    ("AdverseEvent", "severity=urn:other|mild", ()),
    ("AdverseEvent", "date=le2024-02-01", ("ae1", "ae2")),
    ("AdverseEvent", "event=https://www.meddra.org|10037087&subject={p3}", ("ae3",)),
    ("Patient", "gender=female", ("p1", "p3")),
    ("Patient", "gender:not=male", ("p1", "p3")),
    ("Patient", "birthdate=1990", ("p2", "p3")),
    ("Patient", "birthdate=ge1990-06", ("p3",)),
    ("Patient", f"identifier={MRN}|MRN-1", ("p1",)),
    ("ResearchSubject", "arm=high-dose", ("s1", "s3")),
    ("ResearchSubject", "status=on-study&patient={p1}", ("s1",)),
    ("ResearchSubject", "study={B}", ("s3",)),
    ("ResearchStudy", "status=completed", ("B",)),
    ("ResearchStudy", "title=second", ("B",)),
    ("ResearchStudy", "title:contains=atopic", ("A",)),
]


def searched(client, resource_type: str, query: str) -> set[str]:
    """The ids of every page of `GET /fhir/<type>?<query>` (no warnings: every parameter was used)."""
    found: set[str] = set()
    url = f"/fhir/{resource_type}?{query}&_count=3"
    while url:
        response = client.get(url, headers={"Prefer": "handling=strict"})
        assert response.status_code == 200, response.text
        body = response.json()
        found |= {e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"}
        url = next((link["url"].replace("http://testserver", "") for link in body["link"]
                    if link["relation"] == "next"), None)
    return found


def exported(client, url: str, filters: list[tuple[str, str]]) -> dict[str, set[str]]:
    """{type: ids} an export of `url` writes with one `_typeFilter` per (type, query), and only those types."""
    params = [("_type", ",".join(t for t, _ in filters))] + [("_typeFilter", f"{t}?{q}") for t, q in filters]
    response = client.get(url, params=params, headers=ASYNC)
    assert response.status_code == 202, response.text
    done = wait_for(client, response.headers["Content-Location"])
    assert done.status_code == 200, done.text
    files = download(client, done.json())
    return {t: {r["id"] for r in files.get(t, [])} for t, _ in filters}


def rounds(criteria: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The criteria in exports of at most one criterion per type (filters of one type would be OR'd)."""
    batches: list[list[tuple[str, str]]] = []
    for rtype, query in criteria:
        batch = next((b for b in batches if all(t != rtype for t, _ in b)), None)
        if batch is None:
            batches.append(batch := [])
        batch.append((rtype, query))
    return batches


def trial_with_a_later_result_in_the_same_minute(client) -> dict:
    trial = build_trial(client)
    trial["easi1_w4_later"] = created(client.post("/fhir/Observation", json=observation(
        trial["p1"], "EASI", 11, "2024-02-07T09:30:30Z")))["id"]
    return trial


def test_type_filter_exports_exactly_what_the_search_finds(client):
    trial = trial_with_a_later_result_in_the_same_minute(client)
    criteria = [(rtype, query.format(**trial)) for rtype, query, _ in CRITERIA]
    mismatches = []
    for batch in rounds(criteria):
        written = exported(client, "/fhir/$export", batch)
        for rtype, query in batch:
            found = searched(client, rtype, query)
            if written[rtype] != found:
                mismatches.append((rtype, query, sorted(written[rtype] - found), sorted(found - written[rtype])))
    assert not mismatches, "(type, query, exported only, searched only): " + repr(mismatches)
    for (rtype, _, keys), (_, query) in zip(CRITERIA, criteria, strict=True):
        if keys is not None:
            assert searched(client, rtype, query) == {trial[k] for k in keys}, (rtype, query)


def test_group_export_with_a_filter_is_the_search_within_the_study(client):
    trial = trial_with_a_later_result_in_the_same_minute(client)
    written = exported(client, f"/fhir/Group/{trial['A']}/$export",
                       [("Observation", "code=EASI&date=ge2024-01-10"), ("Patient", "gender=female"),
                        ("ResearchSubject", "arm=low-dose"), ("AdverseEvent", "severity=mild,severe")])
    assert written["Observation"] == searched(client, "Observation", f"study={trial['A']}&code=EASI&date=ge2024-01-10")
    assert written["AdverseEvent"] == searched(client, "AdverseEvent", f"study={trial['A']}&severity=mild,severe")
    assert written["ResearchSubject"] == searched(client, "ResearchSubject", f"study={trial['A']}&arm=low-dose")
    members = {e["entity"]["reference"].split("/")[1] for e in client.get(f"/fhir/Group/{trial['A']}").json()["member"]}
    assert written["Patient"] == members & searched(client, "Patient", "gender=female") == {trial["p1"]}
