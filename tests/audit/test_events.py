"""The AuditEvents of interactions, as IHE BALP shapes them: pure functions, no database."""

import base64
from datetime import UTC, datetime

import orjson
import pytest

from fhir_mappings import fhir
from service.audit.events import (
    BALP_ENTITY_TYPE,
    DCM,
    INTERACTION,
    OPERATION_SYSTEM,
    build_event,
    event_for,
    outcome_for,
    patients_of,
    record_digest,
    search_events,
)
from service.core.context import Caller, Context

WHEN = datetime(2024, 4, 1, 0, 30, 0, 123456, tzinfo=UTC)


def search_event(**kw):
    args = {"subtype": "search-type", "outcome": 0, "client": "portal", "client_system": "https://issuer.example",
            "client_address": "10.0.0.7", "request_id": "req-1", "base_url": "https://fhir.example.org/fhir",
            "patients": ["p1", "p2"], "resources": ["Observation/o1/_history/2"], "query": "subject=p1&code=EASI",
            "recorded": WHEN}
    return build_event(**{**args, **kw})


def test_a_search_is_a_balp_query_event():
    record = search_event()
    event = record.resource
    fhir.AuditEvent.model_validate(event)
    assert event["resourceType"] == "AuditEvent" and event["id"] == record.id
    assert event["meta"] == {"versionId": "1", "lastUpdated": "2024-04-01T00:30:00.123Z"}
    assert event["type"]["code"] == "rest"
    assert event["type"]["system"] == "http://terminology.hl7.org/CodeSystem/audit-event-type"
    assert event["subtype"] == [{"system": INTERACTION, "code": "search-type"}]
    assert event["action"] == "E" and event["outcome"] == "0" and "outcomeDesc" not in event
    assert event["recorded"] == "2024-04-01T00:30:00.123Z"
    client, server = event["agent"]
    assert client["type"]["coding"][0] == {"system": DCM, "code": "110153", "display": "Source Role ID"}
    assert client["who"]["identifier"] == {"system": "https://issuer.example", "value": "portal"}
    assert client["requestor"] is True and client["network"] == {"address": "10.0.0.7", "type": "2"}
    assert server["type"]["coding"][0]["code"] == "110152" and server["requestor"] is False
    assert server["who"]["display"] == "trial-fhir"
    assert event["source"]["observer"]["display"] == "trial-fhir"
    query, transaction, p1, p2, observation = event["entity"]
    assert query["role"]["code"] == "24" and query["type"]["code"] == "2"
    assert base64.b64decode(query["query"]).decode() == "subject=p1&code=EASI"
    assert transaction == {"what": {"identifier": {"value": "req-1"}},
                           "type": {"system": BALP_ENTITY_TYPE, "code": "XrequestId"}}
    assert p1["what"] == {"reference": "Patient/p1"} and p1["role"]["code"] == "1" and p1["type"]["code"] == "1"
    assert p2["what"] == {"reference": "Patient/p2"}
    assert observation["what"] == {"reference": "Observation/o1/_history/2"} and observation["role"]["code"] == "4"


def test_the_record_holds_what_the_index_reads():
    record = search_event()
    assert record.recorded == datetime(2024, 4, 1, 0, 30, 0, 123000, tzinfo=UTC)  # as `recorded` says: milliseconds
    assert (record.client, record.client_system, record.subtype, record.action, record.outcome) == \
        ("portal", "https://issuer.example", "search-type", "E", 0)
    assert record.patients == ("p1", "p2")
    assert record.entities == (("Observation", "o1"), ("Patient", "p1"), ("Patient", "p2"))
    assert record.digest == record_digest(record.id, record.recorded, record.client_system, record.client,
                                          record.subtype, record.action, "0", record.entities, record.content)
    assert orjson.loads(record.content) == record.resource


@pytest.mark.parametrize(("subtype", "action"), [("read", "R"), ("vread", "R"), ("history-instance", "R"),
                                                  ("create", "C"), ("update", "U"), ("delete", "D"),
                                                  ("transaction", "E"), ("batch", "E"), ("operation", "E")])
def test_each_interaction_has_its_action(subtype, action):
    record = build_event(subtype=subtype, outcome=0, client="ehr")
    assert record.action == action and record.resource["action"] == action
    fhir.AuditEvent.model_validate(record.resource)


def test_an_operation_is_named_in_a_second_subtype():
    event = build_event(subtype="operation", operation="$export", outcome=0, client="portal").resource
    assert event["subtype"] == [{"system": INTERACTION, "code": "operation"},
                                {"system": OPERATION_SYSTEM, "code": "$export"}]
    named = build_event(subtype="operation", operation="summary", outcome=0, client="portal").resource
    assert named["subtype"][1]["code"] == "$summary"


def test_a_failure_says_its_status_and_nothing_of_the_request():
    event = build_event(subtype="create", outcome=outcome_for(422), status=422, client="ehr").resource
    assert event["outcome"] == "4" and event["outcomeDesc"] == "422 Unprocessable Entity"
    assert build_event(subtype="read", outcome=8, status=503, client="x").resource["outcomeDesc"] == \
        "503 Service Unavailable"
    assert build_event(subtype="read", outcome=12, client="x").resource["outcomeDesc"] == "Major failure"
    assert [outcome_for(s) for s in (200, 201, 304, 400, 404, 500, 503)] == [0, 0, 0, 4, 4, 8, 8]


def test_minimal_event_and_bad_input():
    event = build_event(subtype="read", outcome=0, client="anonymous").resource
    assert "entity" not in event and "network" not in event["agent"][0]
    assert event["agent"][0]["who"] == {"identifier": {"value": "anonymous"}}
    fhir.AuditEvent.model_validate(event)
    with pytest.raises(ValueError):
        build_event(subtype="frobnicate", outcome=0, client="x")
    with pytest.raises(ValueError):
        build_event(subtype="read", outcome=3, client="x")
    with pytest.raises(ValueError):
        build_event(subtype="read", outcome=0, client="x", resources=["not a reference"])
    with pytest.raises(ValueError):
        build_event(subtype="read", outcome=0, client="x", patients=["Patient/p1"])  # ids, not references
    with pytest.raises(ValueError):
        build_event(subtype="read", outcome=0, client="x", patients=["p" * 65])


def test_each_event_has_its_own_id_and_digest():
    a, b = search_event(), search_event()
    assert a.id != b.id and a.digest != b.digest


def test_event_for_reads_the_context():
    ctx = Context("https://fhir.example.org/fhir", caller=Caller(name="portal", issuer="https://issuer.example"),
                  request_id="abc", client_address="192.0.2.1", query="_id=x")
    event = event_for(ctx, subtype="search-type", outcome=0).resource
    assert event["agent"][0]["who"]["identifier"] == {"system": "https://issuer.example", "value": "portal"}
    assert event["agent"][0]["network"]["address"] == "192.0.2.1"
    assert event["agent"][1]["network"] == {"address": "https://fhir.example.org/fhir", "type": "5"}
    assert base64.b64decode(event["entity"][0]["query"]) == b"_id=x"
    assert event["entity"][1]["what"]["identifier"]["value"] == "abc"


def test_patients_of_each_type():
    assert patients_of("Patient", {"resourceType": "Patient", "id": "p1"}) == ["p1"]
    assert patients_of("Observation", {"subject": {"reference": "Patient/p2"}}) == ["p2"]
    assert patients_of("Observation", {"subject": {"reference": "https://fhir.example.org/fhir/Patient/p3"}}) == \
        ["p3"]
    assert patients_of("AdverseEvent", {"subject": {"reference": "Patient/p4/_history/2"}}) == ["p4"]
    assert patients_of("ResearchSubject", {"individual": {"reference": "Patient/p5"}}) == ["p5"]
    assert patients_of("Observation", {"subject": {"reference": "Group/g1"}}) == []
    assert patients_of("Observation", {"subject": {"identifier": {"value": "MRN"}}}) == []
    assert patients_of("Observation", {}) == []
    assert patients_of("ResearchStudy", {"id": "s1"}) == []
    assert patients_of("Patient", {}) == []


def test_a_search_page_gives_one_event_per_patient():
    ctx = Context("https://fhir.example.org/fhir", caller=Caller(name="portal"), query="code=EASI")
    page = orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": {"resourceType": "Observation", "id": "o1", "meta": {"versionId": "2"},
                      "subject": {"reference": "Patient/a"}}, "search": {"mode": "match"}},
        {"resource": {"resourceType": "Observation", "id": "o2", "meta": {"versionId": "1"},
                      "subject": {"reference": "Patient/b"}}, "search": {"mode": "match"}},
        {"resource": {"resourceType": "Observation", "id": "o3", "meta": {"versionId": "1"},
                      "subject": {"reference": "Patient/a"}}, "search": {"mode": "match"}},
        {"resource": {"resourceType": "Patient", "id": "a", "meta": {"versionId": "1"}}, "search": {"mode": "include"}},
        {"resource": {"resourceType": "ResearchStudy", "id": "s1", "meta": {"versionId": "1"}},
         "search": {"mode": "include"}},
        {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}},
    ]})
    records = search_events(ctx, page)
    assert [r.patients for r in records] == [("a",), ("b",), ()]
    assert [[e["what"]["reference"] for e in r.resource["entity"] if e.get("role", {}).get("code") == "4"]
            for r in records] == [["Observation/o1/_history/2", "Observation/o3/_history/1", "Patient/a/_history/1"],
                                  ["Observation/o2/_history/1"], ["ResearchStudy/s1/_history/1"]]
    assert all(base64.b64decode(r.resource["entity"][0]["query"]) == b"code=EASI" for r in records)
    assert all(r.subtype == "search-type" and r.action == "E" for r in records)
    empty = search_events(ctx, {"resourceType": "Bundle", "type": "searchset", "total": 0})
    assert len(empty) == 1 and empty[0].patients == () and empty[0].entities == ()
