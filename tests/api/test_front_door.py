"""The front door (service/api/front_door.py, in front of FastAPI) answers exactly what the documented routes
answer with it off; on PostgreSQL one-statement searches are read through the asyncpg pool, and a failed async read
is read again in a search thread (the read, not the request)."""

import logging

import orjson
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.conftest import ON_POSTGRES
from tests.search.test_search import build_trial

QUERIES = [
    "Observation?subject={p1}&code=EASI",
    "Observation?subject={p1}&code=EASI&_count=1",
    "Observation?study={A}&code=EASI&date=ge2024-01-01&_count=2",
    "Observation?patient={p3}&_sort=-date",  # a result without an instant: the second phase of the page
    "Observation?patient={p3}&_count=1",  # paged across the phases: the first page is one walk, then cursors
    "Observation?code=EASI&_count=2",
    "Observation?code=EASI&_sort=date&_count=3",
    "Observation?code=EASI&_count=2&_format=json",
    "Observation?_id={easi1_base},{ige1}",
    "Observation?subject={p1}&_include=Observation:subject",
    "Observation?code=EASI&_total=accurate&_count=1",
    "Observation?code=EASI&_summary=count",
    "Observation?code=EASI&_elements=status&_count=2",
    "Observation?code=EASI&bogus=1",  # an unknown parameter: a warning entry
    "AdverseEvent?subject={p2}",
    "ResearchSubject?study={A}&_sort=_id",
    "Patient?gender=female",
    "Observation?subject=Patient/nobody",
]


def _comparable(response) -> tuple:
    body = orjson.loads(response.content)
    body.pop("timestamp", None)
    return response.status_code, response.headers["content-type"], body


def _pages(client, url: str) -> list:
    """Every page of a search, following next links."""
    pages = []
    while url:
        response = client.get(url)
        pages.append(_comparable(response))
        nxt = [link["url"] for link in response.json().get("link", []) if link["relation"] == "next"]
        url = nxt[0].replace("http://testserver", "") if nxt else None
    return pages


@pytest.fixture
def routed(settings):
    """The same app with the front door off: every request goes through FastAPI's routing."""
    app = create_app(settings.model_copy(update={"front_door": False}))
    assert app.front_door is None
    with TestClient(app) as test_client:
        yield test_client


def test_front_door_searches_answer_exactly_what_the_routes_answer(client, routed):
    ids = build_trial(client)
    for query in QUERIES:
        url = "/fhir/" + query.format(**ids)
        assert _pages(client, url) == _pages(routed, url), url
    asked = {"Accept": "application/json"}
    url = f"/fhir/Observation?subject={ids['p1']}"
    assert _comparable(client.get(url, headers=asked)) == _comparable(routed.get(url, headers=asked))
    assert client.get(url, headers=asked).headers["content-type"] == "application/json"


def test_a_first_page_ends_with_the_results_that_have_no_date(client):
    ids = build_trial(client)
    page = client.get("/fhir/Observation?code=EASI&_count=20").json()
    found = [e["resource"]["id"] for e in page["entry"]]
    assert found[-1] == ids["easi3_partial"] and len(found) == 6
    dated = [e["resource"].get("effectiveDateTime") for e in page["entry"][:-1]]
    assert all(dated)


@pytest.mark.parametrize("url, headers, status, expression", [
    ("/fhir/Observation?date=2024-13-45", {"Prefer": "handling=strict"}, 400, "date"),
    ("/fhir/Observation?bogus=1", {"Prefer": "handling=strict"}, 400, "bogus"),
    ("/fhir/Observation?_count=20", {"Accept": "application/fhir+xml"}, 406, "Accept"),
    ("/fhir/Observation?_format=xml", {}, 406, "_format"),
])
def test_errors_are_answered_alike(client, routed, url, headers, status, expression):
    build_trial(client)
    fast, slow = client.get(url, headers=headers), routed.get(url, headers=headers)
    assert fast.status_code == slow.status_code == status
    assert fast.json() == slow.json()
    assert fast.json()["resourceType"] == "OperationOutcome"
    assert any(expression in e for i in fast.json()["issue"] for e in i.get("expression", []))


def test_other_methods_and_paths_pass_through(client, routed):
    build_trial(client)
    for method, url in (("HEAD", "/fhir/Observation"), ("DELETE", "/fhir/Observation"),
                        ("GET", "/fhir/Nonsense"), ("GET", "/fhir/Observation/_history")):
        fast, slow = client.request(method, url), routed.request(method, url)
        assert fast.status_code == slow.status_code, (method, url)


@pytest.mark.skipif(not ON_POSTGRES, reason="the async read pool exists on PostgreSQL only")
def test_one_statement_searches_read_through_the_async_pool(client, app):
    ids = build_trial(client)
    pool = app.state.core.async_reads
    assert pool is not None
    calls = []
    original = pool.fetch

    async def counting(sql, args):
        calls.append(sql)
        return await original(sql, args)

    pool.fetch = counting
    page = client.get(f"/fhir/Observation?subject={ids['p1']}&code=EASI")
    assert page.status_code == 200 and page.json()["total"] == 3
    assert len(calls) == 1
    for query in ("_include=Observation:subject", "_total=accurate", "_summary=count"):  # more than one statement
        assert client.get(f"/fhir/Observation?subject={ids['p1']}&{query}").status_code == 200
    assert client.get(f"/fhir/Observation?_id={ids['ige1']}").status_code == 200  # an IN list: not a cached text
    assert len(calls) == 1


@pytest.mark.skipif(not ON_POSTGRES, reason="the async read pool exists on PostgreSQL only")
def test_a_failing_async_read_is_read_again_in_a_thread(client, app, caplog):
    ids = build_trial(client)
    url = f"/fhir/Observation?subject={ids['p1']}&code=EASI"
    expected = _comparable(client.get(url))

    async def broken(sql, args):
        raise ConnectionResetError("the database went away")

    app.state.core.async_reads.fetch = broken
    with caplog.at_level(logging.WARNING, logger="trial_fhir"):
        assert _comparable(client.get(url)) == expected
    assert "read again in a search thread" in caplog.text


@pytest.mark.skipif(not ON_POSTGRES, reason="the async read pool exists on PostgreSQL only")
def test_async_search_can_be_turned_off(settings):
    app = create_app(settings.model_copy(update={"async_search": False}))
    with TestClient(app) as test_client:
        assert app.state.core.async_reads is None
        assert test_client.get("/fhir/Observation?code=EASI").status_code == 200


@pytest.mark.parametrize("method, url, headers, body, status", [
    ("GET", "/fhir/Patient?gender=female", {}, None, 200),
    ("GET", "/fhir/Patient?bogus=1", {"Prefer": "handling=strict"}, None, 400),
    ("GET", "/fhir/Patient", {"Accept": "application/fhir+xml"}, None, 406),
    ("POST", "/fhir/Patient", {"Content-Type": "application/fhir+json"},
     b'{"resourceType": "Patient", "gender": "female"}', 201),
    ("POST", "/fhir/Patient", {"Content-Type": "application/fhir+json"}, b'{"resourceType": "Patient", "gender": 7}',
     400),
    ("POST", "/fhir/Patient", {"Content-Type": "text/plain"}, b"hello", 415),
    ("POST", "/fhir/Patient", {"Content-Type": "application/fhir+json"}, b"{not json", 400),
])
def test_the_front_door_answers_its_requests_once_and_alone(client, app, method, url, headers, body, status):
    """A request for GET or POST /fhir/{type} is answered by the front door, whatever its outcome: never handed to
    the app behind it, and its interaction runs once."""
    door = app.front_door
    handed_on, calls = [], []
    behind = door.app

    async def recording_app(scope, receive, send):
        handed_on.append(scope["path"])
        await behind(scope, receive, send)

    for name in ("search", "create"):
        original = getattr(door.core, name)

        async def counted(*args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return await _original(*args, **kwargs)
        setattr(door.core, name, counted)
    door.app = recording_app
    response = client.request(method, url, headers=headers, content=body)
    assert response.status_code == status, response.text
    assert handed_on == []
    assert calls == ([] if status in (406, 415) or (method == "POST" and status == 400 and body.startswith(b"{not"))
                     else ["search" if method == "GET" else "create"])
    assert client.get("/fhir/metadata").status_code == 200  # anything else goes to the app
    assert handed_on == ["/fhir/metadata"]


def test_a_fault_in_the_core_is_the_apps_500_and_is_not_retried(client, app, caplog):
    attempts = []

    async def broken(*args, **kwargs):
        attempts.append(1)
        raise RuntimeError("the disk caught fire")

    app.front_door.core.search = broken
    with caplog.at_level(logging.ERROR, logger="trial_fhir"):
        response = client.get("/fhir/Patient?gender=female")
    assert response.status_code == 500 and attempts == [1]
    assert response.json()["issue"][0]["diagnostics"] == "Internal server error; the request was not applied."
    assert "the disk caught fire" in caplog.text
