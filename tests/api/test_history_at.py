"""History `_at` (issue 11 §6: R4 http.html#history, the versions current at some moment of a date's period) on
instance, type and system history, beside `_since`; and the parsing of `_at`, pure."""

import time
from datetime import UTC, datetime, timedelta

import pytest

from service.core.interactions import history_period
from service.errors import BadRequest
from tests.factories import created, patient


def versions_of(bundle: dict, id: str) -> list[str]:
    return [e["response"]["etag"] for e in bundle.get("entry", []) if e["fullUrl"].endswith(f"/{id}")]


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ms(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def three_versions(client) -> tuple[str, list[datetime]]:
    """A Patient updated twice and then deleted: its versions' times (v1, v2, v3, deletion v4)."""
    body = created(client.post("/fhir/Patient", json=patient()))
    pid = body["id"]
    times = [instant(body["meta"]["lastUpdated"])]
    for gender in ("male", "other"):
        time.sleep(0.01)
        updated = client.put(f"/fhir/Patient/{pid}", json={**body, "gender": gender})
        assert updated.status_code == 200
        times.append(instant(updated.json()["meta"]["lastUpdated"]))
    time.sleep(0.01)
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 200
    history = client.get(f"/fhir/Patient/{pid}/_history").json()
    times.append(instant(history["entry"][0]["response"]["lastModified"]))
    return pid, times


@pytest.mark.parametrize("path", ["/fhir/Patient/{id}/_history", "/fhir/Patient/_history", "/fhir/_history"])
def test_at_gives_the_versions_current_during_the_period(client, three_versions, path):
    pid, (t1, t2, t3, t4) = three_versions
    url = path.format(id=pid)

    def at(value: str) -> list[str]:
        response = client.get(url, params={"_at": value, "_count": 100})
        assert response.status_code == 200, response.text
        return versions_of(response.json(), pid)

    # the millisecond version 2 was made in: v2, and v1 too unless v2 was made at that millisecond's very start
    assert at(ms(t2))[0] == 'W/"2"' and set(at(ms(t2))) <= {'W/"2"', 'W/"1"'}
    assert at(ms(t2 + (t3 - t2) / 2)) == ['W/"2"']  # between two writes: the version of that moment
    assert at(ms(t1 + (t2 - t1) / 2)) == ['W/"1"']
    assert at(ms(t4 + timedelta(seconds=5))) == ['W/"4"']  # after the deletion: the deletion itself
    assert at(str(t1.year)) == ['W/"4"', 'W/"3"', 'W/"2"', 'W/"1"']  # the whole year: every version
    assert at(str(t1.year - 5)) == []  # before it existed


def test_at_and_since_combine_and_links_keep_them(client, three_versions):
    pid, (t1, t2, t3, _) = three_versions
    r = client.get(f"/fhir/Patient/{pid}/_history", params={"_at": str(t1.year), "_since": ms(t3), "_count": 1})
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert versions_of(bundle, pid) == ['W/"4"']
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert f"_at={t1.year}" in links["self"] and "_since=" in links["self"]
    following = client.get(links["next"]).json()
    assert versions_of(following, pid) == ['W/"3"']


@pytest.mark.parametrize("path", ["/fhir/Patient/x/_history", "/fhir/Patient/_history", "/fhir/_history"])
@pytest.mark.parametrize("value", ["2024-13", "ge2024-01-01", "yesterday", "2024-01-01T25:00:00Z"])
def test_malformed_at_is_a_400_naming_it(client, path, value):
    r = client.get(path, params={"_at": value})
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == ["_at"]


def test_instance_history_takes_since(client, three_versions):
    pid, (_, t2, _, _) = three_versions
    found = client.get(f"/fhir/Patient/{pid}/_history", params={"_since": ms(t2)}).json()
    assert versions_of(found, pid) == ['W/"4"', 'W/"3"', 'W/"2"']


@pytest.mark.parametrize(("value", "low", "high"), [
    ("2024", datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)),
    ("2024-02", datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)),
    ("2024-02-29", datetime(2024, 2, 29, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)),
    ("2024-02-29T10:00:00+09:00", datetime(2024, 2, 29, 1, tzinfo=UTC), datetime(2024, 2, 29, 1, 0, 1, tzinfo=UTC)),
])
def test_history_period(value, low, high):
    assert history_period(value) == (low, high)
    assert history_period(None) is None


def test_history_period_refuses_a_prefix():
    with pytest.raises(BadRequest):
        history_period("lt2024")
