"""HEAD, OPTIONS and `Allow` from the app's route table (issue 11 §5), through the front door and the routes alike."""

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from tests.factories import created, patient


@pytest.fixture(params=["front-door", "routes"])
def client(request, settings):
    app = create_app(settings.model_copy(update={"front_door": request.param == "front-door"}))
    with TestClient(app) as test_client:
        yield test_client


def test_head_is_the_get_without_its_body(client):
    rid = created(client.post("/fhir/Patient", json=patient()))["id"]
    for url in (f"/fhir/Patient/{rid}", "/fhir/Patient?_count=1", "/fhir/metadata"):
        got, head = client.get(url), client.head(url)
        assert head.status_code == got.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == got.headers["content-length"]
        assert head.headers.get("etag") == got.headers.get("etag")
    assert client.head("/fhir/Patient/nobody").status_code == 404


@pytest.mark.parametrize("url,allowed", [
    ("/fhir/Patient/x", "GET, HEAD, PUT, PATCH, DELETE, OPTIONS"),
    ("/fhir/Patient", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    ("/fhir/AuditEvent", "GET, HEAD, OPTIONS"),
    ("/fhir/metadata", "GET, HEAD, OPTIONS"),
    ("/fhir", "POST, OPTIONS"),
])
def test_options_and_405_say_what_a_url_supports(client, url, allowed):
    answer = client.options(url)
    assert (answer.status_code, answer.headers["allow"], answer.content) == (200, allowed, b"")
    method = next(m for m in ("PATCH", "POST", "TRACE") if m not in allowed)  # one the URL does not support
    refused = client.request(method, url, json={})
    assert refused.status_code == 405
    assert refused.headers["allow"] == allowed
    assert refused.json()["issue"][0]["expression"] == ["request.method"]
    assert client.options("/no/such/place").status_code == 404
