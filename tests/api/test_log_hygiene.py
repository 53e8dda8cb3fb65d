"""No secret, token, identifier or patient value in a log line (issue 10): a search by identifier, a request with
a bearer token and a failure in the database layer leave only parameter names and element names in the logs."""

import json
import logging

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.logs import elide_query
from service.main import create_app
from service.ops.logs import JsonFormatter
from tests.factories import MRN, patient

SECRET_MRN = "MRN-SECRET-4711"
TOKEN = "eyJhbGciOiJSUzM4NCJ9.c2VjcmV0LXRva2VuLXZhbHVl.c2lnbmF0dXJl"


@pytest.fixture(params=[True, False], ids=["front-door", "routes"])
def app(settings, request):
    return create_app(settings.model_copy(update={"front_door": request.param}))


def test_no_identifier_token_or_sql_parameter_reaches_the_logs(app, caplog):
    caplog.set_level(logging.DEBUG)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    search = f"/fhir/Patient?identifier={MRN}|{SECRET_MRN}&_count=5"
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/fhir/Patient", json=patient(SECRET_MRN), headers=auth).status_code == 201
        assert client.post("/fhir/Patient", json=patient(SECRET_MRN), headers=auth).status_code == 409
        assert client.get(search, headers=auth).json()["total"] == 1

        async def broken(*args, **kwargs):  # a fault with the identifier as a bound SQL parameter
            with app.state.engine.connect() as conn:
                conn.execute(text("SELECT * FROM no_such_table WHERE value = :value"), {"value": SECRET_MRN})

        app.state.core.search = broken
        try:
            assert client.get(search, headers=auth).status_code == 500
        finally:
            del app.state.core.search
    # what uvicorn writes for the search (its access logger, its arguments): the filter create_app installed
    # keeps the parameter names only
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:50000", "GET", search, "1.1", 200)
    # (the test's own HTTP client, httpx, logs the URLs it requests: that is this test's log, not the server's)
    logged = "\n".join(caplog.handler.format(r) for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert "no_such_table" in logged and "hide_parameters" in logged  # the failure was logged, without its values
    assert "/fhir/Patient?identifier=…&_count=…" in logged
    for secret in (SECRET_MRN, TOKEN, "Bearer"):
        assert secret not in logged
    # the same records as the service writes them (JSON, every field): the request log's lines, the 409's first
    # issue among them, and still no identifier, token or SQL value
    as_json = [JsonFormatter().format(r) for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    requests = [json.loads(line) for line in as_json if '"logger":"trial_fhir.request"' in line]
    assert [(r["method"], r["route"], r["status"]) for r in requests] == [
        ("POST", "/fhir/Patient", 201), ("POST", "/fhir/Patient", 409), ("GET", "/fhir/Patient", 200),
        ("GET", "/fhir/Patient", 500)]
    assert requests[1]["issue_code"] in ("conflict", "duplicate")  # the 409 says why, not which identifier
    for secret in (SECRET_MRN, TOKEN, "Bearer"):
        assert secret not in "\n".join(as_json)


@pytest.mark.parametrize(("target", "logged"), [
    ("/fhir/Patient", "/fhir/Patient"),
    ("/fhir/Observation?subject=Patient/1&code=EASI", "/fhir/Observation?subject=…&code=…"),
    ("/fhir/Observation?subject:Patient.identifier=x|1&_count=2",
     "/fhir/Observation?subject:Patient.identifier=…&_count=…"),
    ("/fhir/Patient?MRN-1234", "/fhir/Patient?…"),  # a value without a name
    ("/fhir/Patient?a%7Cb=1&&_format", "/fhir/Patient?…&…"),  # an unusual name; a name alone may be a value
])
def test_the_access_log_keeps_parameter_names_only(target, logged):
    assert elide_query(target) == logged
