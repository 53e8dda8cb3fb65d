"""Hostile input never reaches a 500 (issue 12 §2): each case is a 4xx OperationOutcome naming the element or
parameter, writes nothing, and no message shows SQL, the parameter's value or an identifier.

The cases are the ones a probe found answering 500 (or storing what PostgreSQL cannot hold): non-ASCII digits in
numeric parameters, dates beyond what both databases store once converted to UTC, forged paging cursors, floods
of repeated parameters and OR values, control characters in strings. Run on SQLite and PostgreSQL.
"""

import base64
import json

import pytest

from tests.assertions import assert_outcome, table_counts
from tests.factories import enrol, observation, patient

FAR_FUTURE = "9999-12-31T23:59:59-14:00"  # after 9999-12-31T23:59:59.999999 once in UTC
FAR_PAST = "0001-01-01T00:00:00+14:00"    # before 0001-01-01 once in UTC
#: what must never appear in a refusal's text
LEAKS = ("SELECT", "INSERT", "UPDATE ", "sqlite", "psycopg", "Traceback", "[parameters", "[SQL")


def _none(client):
    return {}


def existing_patient(client) -> dict:
    response = client.post("/fhir/Patient", json=patient())
    assert response.status_code == 201, response.text
    return response.json()


def cursor(data: list) -> str:
    """A forged `_cursor`: well-formed base64 JSON of the right shape, holding what no page of this server has."""
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def many(name: str, value: str, times: int) -> str:
    return "&".join(f"{name}={value}" for _ in range(times))


def body_with(resource: dict, **extra) -> bytes:
    return json.dumps({**resource, **extra}).encode()


# (id, setup(client) -> context, request(client, context) -> response, status, expression)
CASES = [
    # -- non-ASCII digits: str.isdigit() is true, int() fails or reads another script's digits -------------
    ("count-superscript", _none, lambda c, x: c.get("/fhir/Observation?_count=²"), 400, "_count"),
    ("count-arabic-indic", _none, lambda c, x: c.get("/fhir/Observation?_count=١٠"), 400, "_count"),
    ("count-fullwidth", _none, lambda c, x: c.get("/fhir/Patient?_count=１０"), 400, "_count"),
    ("history-count-superscript", _none, lambda c, x: c.get("/fhir/Patient/_history?_count=²"), 400, "_count"),
    ("history-count-devanagari", _none, lambda c, x: c.get("/fhir/Patient/_history?_count=५"), 400, "_count"),
    ("group-count-superscript", _none, lambda c, x: c.get("/fhir/Group?_count=²"), 400, "_count"),
    ("quantity-value-superscript", _none, lambda c, x: c.get("/fhir/Observation?value-quantity=²"),
     400, "value-quantity"),
    ("date-arabic-digits", _none, lambda c, x: c.get("/fhir/Observation?date=٢٠٢٤-01-01"), 400, "date"),
    ("vread-version-superscript", lambda c: existing_patient(c),
     lambda c, x: c.get(f"/fhir/Patient/{x['id']}/_history/²"), 404, "Patient.meta.versionId"),
    ("if-match-superscript", lambda c: existing_patient(c),
     lambda c, x: c.put(f"/fhir/Patient/{x['id']}", json={**x, "gender": "male"},
                        headers={"If-Match": 'W/"²"'.encode("latin-1")}),
     400, "If-Match"),
    ("patch-index-superscript", lambda c: existing_patient(c),
     lambda c, x: c.patch(f"/fhir/Patient/{x['id']}", content=b'[{"op": "remove", "path": "/name/\xc2\xb2"}]'
                          .decode("unicode_escape").encode("latin-1"),
                          headers={"Content-Type": "application/json-patch+json"}), 422, None),
    ("expand-count-superscript", _none, lambda c, x: c.get("/fhir/ValueSet/ad-scores/$expand?count=²"),
     400, "count"),
    # -- dates outside what both databases store (after UTC conversion) ------------------------------------
    ("search-date-far-future", _none, lambda c, x: c.get("/fhir/Observation", params={"date": FAR_FUTURE}),
     400, "date"),
    ("search-date-far-past", _none, lambda c, x: c.get("/fhir/Observation", params={"date": FAR_PAST}), 400, "date"),
    ("search-date-gt-far-future", _none,
     lambda c, x: c.get("/fhir/Observation", params={"date": "gt" + FAR_FUTURE}), 400, "date"),
    ("search-lastupdated-far-past", _none,
     lambda c, x: c.get("/fhir/Patient", params={"_lastUpdated": "lt" + FAR_PAST}), 400, "_lastUpdated"),
    ("ae-date-far-future", _none, lambda c, x: c.get("/fhir/AdverseEvent", params={"date": FAR_FUTURE}),
     400, "date"),
    ("history-since-far-future", _none, lambda c, x: c.get("/fhir/Patient/_history", params={"_since": FAR_FUTURE}),
     400, "_since"),
    ("history-since-far-past", _none, lambda c, x: c.get("/fhir/_history", params={"_since": FAR_PAST}),
     400, "_since"),
    ("history-at-far-future", _none, lambda c, x: c.get("/fhir/Patient/_history", params={"_at": FAR_FUTURE}),
     400, "_at"),
    ("export-since-far-future", _none,
     lambda c, x: c.get("/fhir/$export", params={"_since": FAR_FUTURE}, headers={"Prefer": "respond-async"}),
     400, "_since"),
    ("export-since-far-past", _none,
     lambda c, x: c.get("/fhir/$export", params={"_since": FAR_PAST}, headers={"Prefer": "respond-async"}),
     400, "_since"),
    ("observation-effective-far-future", lambda c: enrol(c),
     lambda c, x: c.post("/fhir/Observation", json=observation(x["patient"], date=FAR_FUTURE)),
     400, "Observation.effectiveDateTime"),
    ("observation-effective-far-past", lambda c: enrol(c),
     lambda c, x: c.post("/fhir/Observation", json=observation(x["patient"], date=FAR_PAST)),
     400, "Observation.effectiveDateTime"),
    # -- forged paging cursors ------------------------------------------------------------------------------
    ("cursor-garbage", _none, lambda c, x: c.get("/fhir/Observation?_cursor=%%%not-a-cursor"), 400, "_cursor"),
    ("cursor-base64-junk", _none, lambda c, x: c.get("/fhir/Patient?_cursor=eyJhIjoxfQ"), 400, "_cursor"),
    ("cursor-empty", _none, lambda c, x: c.get("/fhir/Patient?_cursor="), 400, "_cursor"),
    ("cursor-nul", _none, lambda c, x: c.get("/fhir/Patient?_cursor=%00"), 400, "_cursor"),
    ("cursor-instant-past-9999", _none,
     lambda c, x: c.get("/fhir/Patient", params={"_sort": "-_lastUpdated", "_cursor": cursor(
         ["-_lastUpdated", 0, 0, FAR_FUTURE, "abc"])}), 400, "_cursor"),
    ("cursor-instant-before-0001", _none,
     lambda c, x: c.get("/fhir/Patient", params={"_sort": "_lastUpdated", "_cursor": cursor(
         ["_lastUpdated", 0, 0, FAR_PAST, "abc"])}), 400, "_cursor"),
    ("cursor-text-nul", _none,
     lambda c, x: c.get("/fhir/Patient", params={"_sort": "gender", "_cursor": cursor(
         ["gender", 0, 0, {"s": "a\u0000"}, "abc"])}), 400, "_cursor"),
    # -- floods ----------------------------------------------------------------------------------------------
    ("identifier-repeated-1000", _none, lambda c, x: c.get("/fhir/Patient?" + many("identifier", "x", 1000)),
     400, "identifier"),
    ("id-or-2000", _none, lambda c, x: c.get("/fhir/Patient?_id=" + ",".join(f"p{i}" for i in range(2000))),
     400, "_id"),
    ("code-or-2000", _none,
     lambda c, x: c.get("/fhir/Observation?code=" + ",".join(f"c{i}" for i in range(2000))), 400, "code"),
    ("name-repeated-1000", _none, lambda c, x: c.get("/fhir/Patient?" + many("name", "a", 1000)), 400, "name"),
    # -- NUL and other control characters ---------------------------------------------------------------------
    ("body-nul-in-string", _none,
     lambda c, x: c.post("/fhir/Patient", json=patient(name=[{"family": "Ki\u0000m"}])),
     400, "Patient.name[0].family"),
    ("body-bell-in-string", _none,
     lambda c, x: c.post("/fhir/Patient", json=patient(name=[{"family": "Ki\u0007m"}])),
     400, "Patient.name[0].family"),
    ("search-nul-in-string", _none, lambda c, x: c.get("/fhir/Patient?name=Ki%00m"), 400, "name"),
    ("search-nul-in-token", _none, lambda c, x: c.get("/fhir/Patient?identifier=a%00b"), 400, "identifier"),
    ("search-control-in-token", _none, lambda c, x: c.get("/fhir/Patient?identifier=a%1Bb"), 400, "identifier"),
    ("search-nul-in-reference", _none, lambda c, x: c.get("/fhir/Observation?subject=Patient/a%00b"),
     400, "subject"),
    ("search-nul-in-id", _none, lambda c, x: c.get("/fhir/Patient?_id=a%00b"), 400, "_id"),
    ("batch-entry-nul-in-search", _none,
     lambda c, x: c.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
         {"request": {"method": "GET", "url": "Patient?family=a%00b"}}]}), 400, None),
    ("if-none-exist-nul", _none,
     lambda c, x: c.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": "identifier=a%00b"}),
     400, None),
    # -- values beyond the measure's plausibility limits ---------------------------------------------------------
    ("ige-1e308", lambda c: enrol(c),
     lambda c, x: c.post("/fhir/Observation", json=observation(x["patient"], "IGE", value=1e308)),
     422, "Observation.valueQuantity.value"),
]


@pytest.mark.parametrize(("setup", "send", "status", "expression"),
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_hostile_input_is_refused_and_writes_nothing(client, engine, setup, send, status, expression):
    context = setup(client)
    before = table_counts(engine)
    response = send(client, context)
    body = assert_outcome(response, status, None, expression)
    assert table_counts(engine) == before
    text = json.dumps(body)
    for leak in LEAKS:
        assert leak not in text, text
    assert "\\u0000" not in text


def test_a_failed_export_job_shows_no_sql_nor_values(client, monkeypatch):
    """A job that fails on a database error records that it failed in the service's words: its status shows
    neither the statement nor its parameter values (the log has them)."""
    from sqlalchemy.exc import DataError

    from service.export import service as export_service
    from tests.export.test_export import kick_off, wait_for

    def broken(*args, **kwargs):
        raise DataError("SELECT content FROM resource WHERE last_updated >= %(since)s", {"since": "MRN-SECRET"},
                        Exception("timestamp out of range"))

    monkeypatch.setattr(export_service, "write_export", broken)
    enrol(client)
    failed = wait_for(client, kick_off(client, "/fhir/$export"))
    body = assert_outcome(failed, 500, None, "job")
    text = json.dumps(body)
    assert "SELECT" not in text and "MRN-SECRET" not in text and "out of range" not in text, text
    assert "server log" in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize(("value", "stored"), [
    ("9999-12-31T23:59:59-14:00", False), ("0001-01-01T00:00:00+14:00", False), ("9999-12-31T23:59:59Z", True),
    ("0001-01-01T00:00:00Z", True), ("9999-12-31T09:59:59-14:00", True), ("2024-06-30T23:59:60Z", True),
    ("9999-12-31", True), ("0001", True)])
def test_datetime_range_is_what_both_databases_store(value, stored):
    from fhir_mappings.primitives import primitive_issue
    from fhir_mappings.search import Malformed, date_range

    assert (primitive_issue("dateTime", value) is None) == stored
    if ":60" in value:  # (a search reads no leap second)
        return
    if stored:
        low, high = date_range(value)
        assert low <= high
    else:
        with pytest.raises(Malformed, match="outside the dates this server stores"):
            date_range(value)


def test_query_limits_name_the_parameter_and_follow_the_settings():
    from service.api.middleware import check_query
    from service.errors import BadRequest

    check_query([("identifier", "x")] * 3, max_repeats=3)
    with pytest.raises(BadRequest) as too_many:
        check_query([("identifier", "x")] * 4, max_repeats=3)
    assert too_many.value.issues[0].expression == ("identifier",)
    check_query([("code", "a,b,c")], max_values=3)
    with pytest.raises(BadRequest) as too_wide:
        check_query([("code", "a,b,c,d")], max_values=3)
    assert too_wide.value.issues[0].expression == ("code",)
    with pytest.raises(BadRequest) as control:
        check_query([("name", "Ki\x00m")])
    assert control.value.issues[0].expression == ("name",) and "\x00" not in control.value.issues[0].diagnostics
    check_query([("name", "tab\there")])  # tab, CR and LF are FHIR string characters


def test_query_limits_are_settings(settings):
    from fastapi.testclient import TestClient

    from service.main import create_app

    narrow = settings.model_copy(update={"max_param_repeats": 2, "max_or_values": 3})
    with TestClient(create_app(narrow)) as client:
        assert client.get("/fhir/Patient?name=a&name=b").status_code == 200
        assert_outcome(client.get("/fhir/Patient?name=a&name=b&name=c"), 400, "invalid", "name")
        assert client.get("/fhir/Patient?_id=a,b,c").status_code == 200
        assert_outcome(client.get("/fhir/Patient?_id=a,b,c,d"), 400, "invalid", "_id")
        assert_outcome(client.get("/fhir/Patient/_history?_count=1&_count=2&_count=3"), 400, "invalid", "_count")


@pytest.mark.parametrize("stored", [1e308, float("inf"), -1e308, 1e200])
def test_statistics_stay_finite_whatever_is_stored(client, engine, stored):
    """A value no write takes today (IgE 1e308 is a 422) but that the database may hold (stored before the limits,
    or by hand) is left out of every figure and counted as excluded: the JSON, the CSV and `$summary` answer 200
    with finite numbers only."""
    from sqlalchemy import text

    ids = enrol(client)
    for value, day in ((100, "2024-01-10"), (250, "2024-02-07")):  # baseline, week 4
        posted = client.post("/fhir/Observation", json=observation(ids["patient"], "IGE", value=value, date=day))
        assert posted.status_code == 201, posted.text
    bad = client.post("/fhir/Observation", json=observation(ids["patient"], "EASI", value=10))
    assert bad.status_code == 201
    with engine.begin() as conn:
        changed = conn.execute(text("UPDATE measurement SET value = :v WHERE measure = 'IGE' AND value = 250"),
                               {"v": stored})
        assert changed.rowcount == 1
    summary = client.get(f"/studies/{ids['study']}/summary")
    assert summary.status_code == 200, summary.text
    data = summary.json()
    assert {m["key"]: m["excluded"] for m in data["measures"]}["IGE"] == 1
    assert {m["key"]: m["excluded"] for m in data["measures"]}["EASI"] == 0
    for arm in data["arms"]:
        for m in arm["measures"]:
            assert all(v is None or abs(v) < 1e15 for k, v in m.items() if isinstance(v, float)), m
    csv = client.get(f"/studies/{ids['study']}/summary.csv")
    assert csv.status_code == 200 and "inf" not in csv.text.lower() and "e+" not in csv.text.lower(), csv.text
    report = client.get(f"/fhir/ResearchStudy/{ids['study']}/$summary")
    assert report.status_code == 200, report.text
    assert "inf" not in report.text.lower().replace("information", "")


def test_transactions_writing_the_same_resources_in_opposite_orders_do_not_deadlock(client, engine):
    """Two clients each send transactions updating the same two resources, one A then B, the other B then A: the
    resources are locked in one order (type, id), so every transaction succeeds (no deadlock 409 on PostgreSQL)."""
    import threading

    a = existing_patient(client)
    b = existing_patient(client)
    deadlocks_before = deadlocks(engine)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def put(resource: dict, n: int) -> dict:
        changed = {k: v for k, v in resource.items() if k != "meta"} | {"gender": ("male", "female")[n % 2]}
        return {"resource": changed, "request": {"method": "PUT", "url": f"Patient/{resource['id']}"}}

    def writer(first: dict, second: dict) -> None:
        try:
            for n in range(10):
                response = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction",
                                                      "entry": [put(first, n), put(second, n)]})
                statuses.append(response.status_code)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=pair) for pair in ((a, b), (b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert statuses == [200] * 20, statuses
    assert deadlocks(engine) == deadlocks_before  # none detected, not even one retried inside the server


def deadlocks(engine) -> int:
    """PostgreSQL's count of deadlocks detected in this database (0 on SQLite, whose writers queue)."""
    from sqlalchemy import text

    if engine.dialect.name != "postgresql":
        return 0
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return conn.execute(text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
                            ).scalar_one()


# -- the same limits inside Bundles (issue 12 §2): an entry's search is a query like any other ------------------

OR_FLOOD = "_id=" + ",".join(f"p{i}" for i in range(2000))
REPEAT_FLOOD = many("identifier", "x", 1000)


def _entry(method: str, url: str, if_none_exist: str | None = None) -> dict:
    entry: dict = {"request": {"method": method, "url": url}}
    if method in ("POST", "PUT"):
        entry["resource"] = patient()
    if if_none_exist is not None:
        entry["request"]["ifNoneExist"] = if_none_exist
    return entry


# (id, the hostile entry, the element named)
BUNDLE_CASES = [
    ("get-repeats", _entry("GET", "Patient?" + REPEAT_FLOOD), "request.url"),
    ("get-or-values", _entry("GET", "Observation?code=" + ",".join(f"c{i}" for i in range(2000))), "request.url"),
    ("get-absolute-url-repeats", _entry("GET", "http://testserver/fhir/Patient?" + REPEAT_FLOOD), "request.url"),
    ("if-none-exist-or-values", _entry("POST", "Patient", OR_FLOOD), "request.ifNoneExist"),
    ("if-none-exist-repeats", _entry("POST", "Patient", REPEAT_FLOOD), "request.ifNoneExist"),
    ("conditional-put-or-values", _entry("PUT", "Patient?" + OR_FLOOD), "request.url"),
    ("conditional-put-repeats", _entry("PUT", "Patient?" + REPEAT_FLOOD), "request.url"),
    ("conditional-delete-repeats", _entry("DELETE", "Patient?" + REPEAT_FLOOD), "request.url"),
    ("conditional-delete-or-values", _entry("DELETE", "Patient?" + OR_FLOOD), "request.url"),
    ("conditional-patch-repeats", {"request": {"method": "PATCH", "url": "Patient?" + REPEAT_FLOOD},
                                   "resource": {"resourceType": "Parameters"}}, "request.url"),
    ("get-control-character", _entry("GET", "Patient?family=a%1Bb"), "request.url"),
]


@pytest.mark.parametrize(("hostile", "element"), [pytest.param(c[1], c[2], id=c[0]) for c in BUNDLE_CASES])
def test_a_transaction_with_a_hostile_entry_search_is_a_400_naming_the_entry_and_writes_nothing(
        client, engine, hostile, element):
    before = table_counts(engine)
    response = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction",
                                          "entry": [_entry("POST", "Patient"), hostile]})
    body = assert_outcome(response, 400, "invalid", f"Bundle.entry[1].{element}")
    assert table_counts(engine) == before
    text = json.dumps(body)
    assert "p1999" not in text and "c1999" not in text  # the values are not echoed
    for leak in LEAKS:
        assert leak not in text, text


@pytest.mark.parametrize(("hostile", "element"), [pytest.param(c[1], c[2], id=c[0]) for c in BUNDLE_CASES])
def test_a_batch_entry_with_a_hostile_search_is_that_entrys_400_and_the_others_go_on(client, hostile, element):
    response = client.post("/fhir", json={"resourceType": "Bundle", "type": "batch",
                                          "entry": [hostile, _entry("POST", "Patient")]})
    assert response.status_code == 200, response.text
    refused, created = response.json()["entry"]
    assert refused["response"]["status"].startswith("400")
    issue_ = refused["response"]["outcome"]["issue"][0]
    assert issue_["code"] == "invalid" and issue_["expression"] == [f"Bundle.entry[0].{element}"]
    assert created["response"]["status"].startswith("201")


@pytest.mark.parametrize("header", [OR_FLOOD, REPEAT_FLOOD, "identifier=a%1Bb"], ids=["or-values", "repeats", "esc"])
def test_an_if_none_exist_header_obeys_the_query_limits(client, engine, header):
    before = table_counts(engine)
    assert_outcome(client.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": header}),
                   400, "invalid", "If-None-Exist")
    assert table_counts(engine) == before


def test_bundle_entry_limits_are_the_settings(settings):
    from fastapi.testclient import TestClient

    from service.main import create_app

    narrow = settings.model_copy(update={"max_param_repeats": 2, "max_or_values": 3})
    with TestClient(create_app(narrow)) as client:
        def transaction(*entries: dict):
            return client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": list(entries)})
        assert transaction(_entry("GET", "Patient?name=a&name=b")).status_code == 200
        assert_outcome(transaction(_entry("GET", "Patient?name=a&name=b&name=c")), 400, "invalid",
                       "Bundle.entry[0].request.url")
        assert transaction(_entry("POST", "Patient", "_id=a,b,c")).status_code == 200
        assert_outcome(transaction(_entry("POST", "Patient", "_id=a,b,c,d")), 400, "invalid",
                       "Bundle.entry[0].request.ifNoneExist")
        assert_outcome(client.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": "_id=a,b,c,d"}),
                       400, "invalid", "If-None-Exist")


def test_read_bundle_checks_each_entry_search_with_the_limits_given():
    from service.bundle.service import Request, read_bundle
    from service.errors import BadRequest

    body = {"resourceType": "Bundle", "type": "batch",
            "entry": [_entry("GET", "Patient?name=a&name=b"), _entry("GET", "Patient?name=a&name=b&name=c"),
                      _entry("POST", "Patient", "identifier=a,b,c,d")]}
    _, read = read_bundle(body, 10, max_repeats=2, max_values=3)
    assert isinstance(read[0], Request)
    assert isinstance(read[1], BadRequest) and read[1].issues[0].expression == ("Bundle.entry[1].request.url",)
    assert "'name'" in str(read[1])
    assert isinstance(read[2], BadRequest) and read[2].issues[0].expression == ("Bundle.entry[2].request.ifNoneExist",)
    _, read = read_bundle(body, 10)  # the defaults (100 repeats, 500 values): all three are fine
    assert all(isinstance(r, Request) for r in read)
