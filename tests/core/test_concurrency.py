"""Concurrent writers: retries and races never drop or duplicate anything."""

from concurrent.futures import ThreadPoolExecutor

from tests.factories import MRN, enrol, observation, patient


def test_concurrent_conditional_creates_with_one_identifier_make_exactly_one_resource(client):
    headers = {"If-None-Exist": f"identifier={MRN}|MRN-RACE"}

    def post(_):
        return client.post("/fhir/Patient", json=patient("MRN-RACE"), headers=headers)

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(post, range(16)))
    assert sorted({r.status_code for r in responses}) in ([200, 201], [201])
    assert sum(r.status_code == 201 for r in responses) == 1
    assert len({r.json()["id"] for r in responses}) == 1
    assert client.get(f"/fhir/Patient?identifier={MRN}|MRN-RACE").json()["total"] == 1


def test_concurrent_observation_writes_are_all_kept(client):
    ids = enrol(client)

    def post(i):
        body = observation(ids["patient"], "PRURITUS", i % 10, "2024-01-09")
        body["identifier"] = [{"system": "urn:lab", "value": f"R-{i}"}]
        return client.post("/fhir/Observation", json=body,
                           headers={"If-None-Exist": f"identifier=urn:lab|R-{i}"}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        first = list(pool.map(post, range(40)))
        retried = list(pool.map(post, range(40)))  # every request sent again, as after a timeout
    assert first == [201] * 40
    assert retried == [200] * 40
    bundle = client.get("/fhir/Observation?identifier=urn:lab|R-0,urn:lab|R-39&_count=100").json()
    assert bundle["total"] == 2


def test_concurrent_updates_with_if_match_let_exactly_one_win(client):
    rid = client.post("/fhir/Patient", json=patient("MRN-IFMRACE")).json()["id"]

    def put(gender):
        body = {**patient("MRN-IFMRACE"), "id": rid, "gender": gender}
        return client.put(f"/fhir/Patient/{rid}", json=body, headers={"If-Match": 'W/"1"'}).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(put, ["male", "other", "unknown", "female"]))
    assert statuses.count(200) == 1
    assert all(s in (200, 409, 412) for s in statuses)
    history = client.get(f"/fhir/Patient/{rid}/_history").json()
    assert history["total"] == 2


def test_concurrent_transactions_with_the_same_identifiers_store_each_once(client):
    """Sixteen Bundles racing to create the same results (an EHR's retries overlapping the original): one commits,
    the others run again, see the identifiers taken and are refused with a 409 naming the entry, never a 500.
    Ten entries each, so the rows go in by COPY on PostgreSQL."""
    ids = enrol(client)

    def entries(prefix):
        items = []
        for i in range(10):
            body = observation(ids["patient"], "PRURITUS", i % 10, "2024-01-09")
            body["identifier"] = [{"system": "urn:lab", "value": f"{prefix}-{i}"}]
            items.append({"resource": body, "request": {"method": "POST", "url": "Observation"}})
        return {"resourceType": "Bundle", "type": "transaction", "entry": items}

    for round_ in range(4):  # the race is timing-dependent: several rounds make a missed retry show up
        prefix = f"TX-RACE{round_}"
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(lambda _, prefix=prefix: client.post("/fhir", json=entries(prefix)), range(16)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] + [409] * 15, [r.text[:300] for r in responses if r.status_code != 409]
        refused = next(r for r in responses if r.status_code == 409).json()
        assert refused["resourceType"] == "OperationOutcome"
        assert refused["issue"][0]["expression"][0].startswith("Bundle.entry[")
        found = client.get(f"/fhir/Observation?identifier=urn:lab|{prefix}-0,urn:lab|{prefix}-9&_count=100").json()
        assert found["total"] == 2
    assert client.get(f"/fhir/Observation?subject=Patient/{ids['patient']}&_summary=count").json()["total"] == 40
