"""Request ids and the request log (issue 14 §3): one line per request, from whichever adapter answered it, with the
route template, status, latency, client and a 4xx's first issue, as JSON; never a value the client sent."""

import json
import logging

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.ops.logs import REQUEST_LOGGER, JsonFormatter
from tests.factories import created, observation, patient


@pytest.fixture(params=[True, False], ids=["front-door", "routes"])
def client(settings, request):
    with TestClient(create_app(settings.model_copy(update={"front_door": request.param}))) as test_client:
        yield test_client


def lines(caplog) -> list[dict]:
    """The request log's lines as the JSON formatter writes them."""
    return [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == REQUEST_LOGGER]


def test_a_request_id_is_taken_or_made_and_sent_back(client):
    assert client.get("/fhir/Patient", headers={"X-Request-Id": "ehr-batch-42"}).headers["x-request-id"] == \
        "ehr-batch-42"
    made = {client.get("/fhir/Patient").headers["x-request-id"] for _ in range(3)}
    assert len(made) == 3 and all(made)
    too_long = "x" * 65
    assert client.get("/fhir/metadata", headers={"X-Request-Id": too_long}).headers["x-request-id"] != too_long
    # every answer gets one, the edge's refusals and unknown paths too
    assert client.get("/fhir/Patient", headers={"Accept": "application/xml"}).headers["x-request-id"]
    assert client.get("/no/such/page").headers["x-request-id"]


def test_the_audit_records_the_request_id_the_client_sees(client):
    pid = created(client.post("/fhir/Patient", json=patient(), headers={"X-Request-Id": "trace-create-1"}))["id"]
    answer = client.get(f"/fhir/Patient/{pid}")
    made = answer.headers["x-request-id"]
    events = client.get("/fhir/AuditEvent", params={"_count": 100}).json()["entry"]
    ids = {e["what"]["identifier"]["value"] for entry in events for e in entry["resource"].get("entity", [])
           if e.get("type", {}).get("code") == "XrequestId"}
    assert {"trace-create-1", made} <= ids


def test_one_line_per_request_with_route_template_status_and_latency(client, caplog):
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    pid = created(client.post("/fhir/Patient", json=patient(), headers={"X-Request-Id": "r-1"}))["id"]
    client.get(f"/fhir/Patient/{pid}", headers={"X-Request-Id": "r-2"})
    client.head(f"/fhir/Patient/{pid}", headers={"X-Request-Id": "r-3"})
    client.get("/fhir/Patient", params={"_id": pid}, headers={"X-Request-Id": "r-4"})
    client.get("/no/such/page", headers={"X-Request-Id": "r-5"})
    by_id = {line["request_id"]: line for line in lines(caplog)}
    assert [(by_id[r]["method"], by_id[r]["route"], by_id[r]["status"]) for r in ("r-1", "r-2", "r-3", "r-4", "r-5")] \
        == [("POST", "/fhir/Patient", 201), ("GET", "/fhir/Patient/{id}", 200), ("HEAD", "/fhir/Patient/{id}", 200),
            ("GET", "/fhir/Patient", 200), ("GET", "<unmatched>", 404)]
    for line in by_id.values():
        assert line["latency_ms"] > 0 and line["logger"] == REQUEST_LOGGER
        assert line["timestamp"].endswith("+00:00") and line["level"] == "info"
        assert line.get("client_id") in ("anonymous", None)
    assert by_id["r-2"]["client_id"] == "anonymous"  # access control is off in these tests
    assert pid not in json.dumps(list(by_id.values()))  # the template, never the path


def test_a_4xx_line_names_its_first_issue_without_the_values_sent(client, caplog):
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    bad = observation(pid, value=987654.5)  # EASI is 0…72: a 422 naming valueQuantity.value
    answer = client.post("/fhir/Observation", json=bad, headers={"X-Request-Id": "bad-1"})
    assert answer.status_code == 422
    first = answer.json()["issue"][0]
    client.get("/fhir/Observation", params={"_count": "many"}, headers={"X-Request-Id": "bad-2"})
    by_id = {line["request_id"]: line for line in lines(caplog)}
    assert by_id["bad-1"]["status"] == 422 and by_id["bad-1"]["issue_code"] == first["code"]
    assert by_id["bad-1"]["issue_expression"] == first["expression"]
    assert by_id["bad-2"]["status"] == 400 and by_id["bad-2"]["issue_code"] == "invalid"
    assert "987654" not in json.dumps(list(by_id.values()))  # diagnostics (which repeat values) are not logged


def test_the_client_id_of_a_token_is_logged(database_url, tmp_path, caplog):
    from service.settings import Settings
    from tests.auth.tokens import get_token, register_client

    settings = Settings(database_url=database_url, export_dir=tmp_path / "export", auth="smart", export_worker=False,
                        _env_file=None)
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    with TestClient(create_app(settings)) as client:
        client_id, key = register_client(client.app.state.engine, "system/Patient.rs")
        token = get_token(client, client_id, key, "system/Patient.rs")
        client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}", "X-Request-Id": "with-token"})
        client.get("/fhir/Patient", headers={"X-Request-Id": "no-token"})
    by_id = {line["request_id"]: line for line in lines(caplog)}
    assert by_id["with-token"]["client_id"] == client_id and by_id["with-token"]["status"] == 200
    assert by_id["no-token"]["status"] == 401 and "client_id" not in by_id["no-token"]
    assert by_id["no-token"]["issue_code"] == "login"
    assert token not in json.dumps(list(by_id.values()))


def test_probes_are_counted_but_not_logged_when_they_succeed(client, caplog):
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    client.get("/healthz")
    client.get("/readyz")
    assert not lines(caplog)


def test_the_request_log_can_be_turned_off(settings, caplog):
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    with TestClient(create_app(settings.model_copy(update={"request_log": False}))) as client:
        client.get("/fhir/Patient")
    assert not lines(caplog)


def test_the_json_formatter_writes_one_object_per_line_with_the_traceback():
    try:
        raise ValueError("broken on purpose")
    except ValueError:
        record = logging.getLogger("trial_fhir").makeRecord("trial_fhir", logging.ERROR, __file__, 1, "failed %s",
                                                            ("x",), exc_info=__import__("sys").exc_info(),
                                                            extra={"route": "/fhir/Patient"})
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert line["event"] == "failed x" and line["level"] == "error" and line["route"] == "/fhir/Patient"
    assert "ValueError: broken on purpose" in line["exception"]


@pytest.mark.parametrize("ours", [True, False], ids=["our-formatters", "a-foreign-formatter"])
def test_records_skip_thread_and_process_names_only_under_our_formatters(monkeypatch, ours):
    from service.ops import logs
    root = logging.getLogger()
    for flag in ("logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, flag, True)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if ours else logging.Formatter("%(process)d %(threadName)s %(message)s"))
    monkeypatch.setattr(root, "handlers", [handler])
    logs.install_default_handler("json")
    record = logging.getLogger(REQUEST_LOGGER).makeRecord(REQUEST_LOGGER, logging.INFO, __file__, 0, "x", (), None)
    if ours:
        assert (record.process, record.threadName, record.processName) == (None, None, None)
        assert json.loads(JsonFormatter().format(record))["event"] == "x"
    else:
        assert record.process is not None and record.threadName and handler.format(record).startswith(
            str(record.process))
