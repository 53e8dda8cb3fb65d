"""A generated corpus of hostile requests (issue 12 §2: "an independent corpus of hostile requests, larger than the
cases named here, will be run against both databases"): every search parameter the CapabilityStatement lists,
with and without modifiers and prefixes, × malformed values; every writable type × malformed bodies; weird headers.
Each request must be answered without a 5xx; every refusal is an OperationOutcome; a search answers a Bundle; and
nothing is written by the whole corpus. Deterministic (seeded sample of the cross product, the same every run),
on SQLite and PostgreSQL like every API test. (Malformed Content-Length and other framing go over a real socket:
tests/api/test_read_timeouts.py.)"""

import json
import random
from urllib.parse import quote

import pytest

from tests.assertions import table_counts
from tests.factories import enrol

SEED = 20261129
SEARCHES_PER_RUN = 400

VALUES = [
    "", " ", "²", "١٠", "１０", "-", "--", "|", "||", "a|b|c", "|x", "x|", ":", "=", "&", ",", ",,", "a,,b",
    "%", "%zz", "%00", "a%00b", "%1b", "%ff%fe", "%c0%af", "%ed%a0%80",  # bad percent-encoding, NUL, ESC, bad UTF-8
    "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "0000-00-00", "2024-13-45", "2024-02-30T25:61:61Z",
    "gt", "lt9999-99-99", "eq", "ap2024", "sa", "ne-1", "gt2024-01-01T00:00:00", "le1e308", "1e999", "-1e999",
    "NaN", "Infinity", "0x10", "1" * 400, "9" * 40, "-0", "1.", ".1", "1e", "5||mg", "5|http://unitsofmeasure.org|",
    "Patient/", "/", "Patient/../x", "http://", "urn:uuid:", "Patient/a b", "Observation/x/_history/²",
    "x" * 5000, "😀", "é", "<script>", "'; DROP TABLE resource; --", "\\", '"', "a\tb", "a\r\nb",
]
SUFFIXES = ["", ":missing", ":exact", ":contains", ":not", ":text", ":above", ":below", ":in", ":not-in", ":of-type",
            ":identifier", ":Patient", ":Patient.name", ":bogus", ":", "::", ".x", ":missing:not"]
RESULT_PARAMS = [("_count", "-1"), ("_count", "0"), ("_count", "99999999999999999999"), ("_sort", "-"),
                 ("_sort", "bogus"), ("_sort", ",,"), ("_include", "Observation:nothing"), ("_include", "*"),
                 ("_revinclude", "Provenance:target:Bogus"), ("_elements", ",,"), ("_summary", "bogus"),
                 ("_total", "bogus"), ("_format", "xml"), ("_cursor", "%00"), ("_cursor", "x" * 3000),
                 ("_has", "Observation:subject:code:x"), ("_has:Observation:patient:code", "x"), ("_bogus", "1"),
                 ("_id", ",".join(["x"] * 400)), ("_lastUpdated", "gt2024-01-01&_lastUpdated=lt2023-01-01")]


def _capability(client) -> dict[str, list[str]]:
    statement = client.get("/fhir/metadata").json()
    return {r["type"]: [p["name"] for p in r.get("searchParam", [])] for r in statement["rest"][0]["resource"]}


PRINTABLE_ASCII = "".join(chr(c) for c in range(33, 127))


def _raw(value: str) -> str:
    """The value as it goes on the wire: percent-escapes written in it kept as they are (`%00`, `%ff`), only what a
    URL cannot carry at all (space, CR, LF, tab, non-ASCII) escaped."""
    return quote(value, safe=PRINTABLE_ASCII)


def _searches(capability: dict[str, list[str]]) -> list[str]:
    """A seeded sample of (type, parameter + suffix, value) and of result parameters, as query strings."""
    rng = random.Random(SEED)
    everything = [(t, p, s, v) for t, params in capability.items() for p in params for s in SUFFIXES for v in VALUES]
    picked = rng.sample(everything, SEARCHES_PER_RUN)
    urls = [f"/fhir/{t}?{p}{s}={_raw(v)}" for t, p, s, v in picked]
    urls += [f"/fhir/{rng.choice(list(capability))}?{name}={value}" for name, value in RESULT_PARAMS]
    # every parameter at least once with the worst-behaved values
    urls += [f"/fhir/{t}?{p}={v}" for t, params in capability.items() for p in params
             for v in ("%00", "²", "9999-12-31T23:59:59-14:00", "%ff")]
    return urls


def _check(response, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        body = response.json()
        assert body["resourceType"] == "OperationOutcome", what
        assert all(i.get("diagnostics") for i in body["issue"]), what
        text = json.dumps(body)
        for leak in ("SELECT", "INSERT", "sqlite", "psycopg", "Traceback", "[SQL"):
            assert leak not in text, f"{what}: {text[:500]}"


def test_every_search_parameter_with_malformed_values_is_never_a_5xx_and_writes_nothing(client, engine):
    enrol(client)  # something to find, so the searches run their statements
    capability = _capability(client)
    urls = _searches(capability)
    assert len(urls) > SEARCHES_PER_RUN
    before = table_counts(engine)
    statuses = {}
    for url in urls:
        response = client.get(url)
        _check(response, url)
        if response.status_code == 200:
            assert response.json()["resourceType"] in ("Bundle", "CapabilityStatement"), url
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert table_counts(engine) == before
    assert statuses.get(400, 0) > len(urls) // 4, statuses  # most of the corpus is refused, not ignored


BODIES = [
    b"", b"{", b"[]", b"null", b"1", b'"x"', b"{}", b'{"resourceType": 1}', b'{"resourceType": "Bundle"}',
    b'{"resourceType": "Bogus"}', b'{"resourceType": "%s", "id": "a b"}', b'{"resourceType": "%s", "id": ""}',
    b'{"resourceType": "%s", "meta": {"versionId": "\xc2\xb2"}}', b'{"resourceType": "%s", "bogus": 1}',
    b'{"resourceType": "%s", "status": "\\u0000"}', b'{"resourceType": "%s", "status": ["final"]}',
    b'{"resourceType": "%s", "status": "final", "status": "final"}', b'{"resourceType": "%s", "text": ' + b"[" * 300,
    b'{"resourceType": "%s", "identifier": [{"value": "' + b"x" * 70000 + b'"}]}',
    b'{"resourceType": "%s", "subject": {"reference": "Patient/\\u001b"}}',
    b'{"resourceType": "%s", "effectiveDateTime": "9999-12-31T23:59:59-14:00"}',
    b'{"resourceType": "%s", "valueQuantity": {"value": 1e999}}', b'{"resourceType": "%s", "x": NaN}',
    b'\xff\xfe{"resourceType": "%s"}', b'{"resourceType": "%s"} trailing', b'{"resourceType": "%s", "id": 1}',
    b'{"resourceType": "%s", "extension": [{"url": 1}]}', b'{"resourceType": "%s", "contained": [{}]}',
]


def test_every_writable_type_with_malformed_bodies_is_refused_and_writes_nothing(client, engine):
    capability = _capability(client)
    writable = [t for t in capability if t not in ("AuditEvent", "CodeSystem", "ValueSet", "SearchParameter",
                                                   "Group")]
    before = table_counts(engine)
    for rtype in writable:
        for template in BODIES:
            body = template.replace(b"%s", rtype.encode()) if b"%s" in template else template
            for method, url in (("POST", f"/fhir/{rtype}"), ("PUT", f"/fhir/{rtype}/hostile-1")):
                response = client.request(method, url, content=body,
                                          headers={"Content-Type": "application/fhir+json"})
                _check(response, f"{method} {url} {body[:80]!r}")
                assert response.status_code >= 400, f"{method} {url} {body[:80]!r}: {response.status_code}"
    assert table_counts(engine) == before


HEADER_CASES = [
    ("duplicate-content-type", "POST", "/fhir/Patient", b'{"resourceType": "Patient"}',
     [("Content-Type", "application/fhir+json"), ("Content-Type", "text/plain")]),
    ("content-type-garbage", "POST", "/fhir/Patient", b'{"resourceType": "Patient"}',
     [("Content-Type", ";;;=")]),
    ("content-type-xml", "POST", "/fhir/Patient", b"<Patient/>", [("Content-Type", "application/fhir+xml")]),
    ("if-match-garbage", "PUT", "/fhir/Patient/hostile-2", b'{"resourceType": "Patient", "id": "hostile-2"}',
     [("Content-Type", "application/fhir+json"), ("If-Match", 'W/"x')]),
    ("if-none-match-garbage", "GET", "/fhir/Patient/hostile-2", b"", [("If-None-Match", "\x01")]),
    ("if-none-exist-garbage", "POST", "/fhir/Patient", b'{"resourceType": "Patient", "gender": "x"}',
     [("Content-Type", "application/fhir+json"), ("If-None-Exist", "%%%&&&===")]),
    ("prefer-garbage", "POST", "/fhir/Patient", b'{"resourceType": "Patient", "gender": "x"}',
     [("Content-Type", "application/fhir+json"), ("Prefer", "return=\x7f;;")]),
    ("accept-xml-only", "GET", "/fhir/Patient", b"", [("Accept", "application/fhir+xml")]),
    ("accept-other-fhir-version", "GET", "/fhir/Patient", b"", [("Accept", "application/fhir+json; fhirVersion=5.0")]),
    ("authorization-garbage", "GET", "/fhir/Patient", b"", [("Authorization", "Bearer \x01\x02")]),
    ("invalid-utf8-path", "GET", "/fhir/Patient/%ff%fe", b"", []),
    ("overlong-utf8-path", "GET", "/fhir/Patient/%c0%af", b"", []),
    ("nul-in-path", "GET", "/fhir/Patient/a%00b", b"", []),
    ("dot-dot-path", "GET", "/fhir/Patient/../../etc/passwd", b"", []),
    ("huge-id", "GET", "/fhir/Patient/" + "x" * 5000, b"", []),
    ("history-version-garbage", "GET", "/fhir/Patient/p1/_history/%00", b"", []),
    ("method-on-metadata", "DELETE", "/fhir/metadata", b"", []),
    ("patch-wrong-type", "PATCH", "/fhir/Patient/p1", b"[]", [("Content-Type", "text/plain")]),
    ("patch-not-a-list", "PATCH", "/fhir/Patient/p1", b"{}", [("Content-Type", "application/json-patch+json")]),
    ("bundle-not-a-bundle", "POST", "/fhir", b'{"resourceType": "Patient"}',
     [("Content-Type", "application/fhir+json")]),
    ("bundle-entries-not-objects", "POST", "/fhir", b'{"resourceType": "Bundle", "type": "batch", "entry": [1, null]}',
     [("Content-Type", "application/fhir+json")]),
]


@pytest.mark.parametrize(("method", "url", "body", "headers"), [pytest.param(*c[1:], id=c[0]) for c in HEADER_CASES])
def test_weird_headers_and_paths_are_never_a_5xx_and_write_nothing(client, engine, method, url, body, headers):
    before = table_counts(engine)
    response = client.request(method, url, content=body, headers=headers)
    _check(response, f"{method} {url}")
    if not body.startswith(b'{"resourceType": "Bundle", "type": "batch"'):  # a batch: 200, each entry its own 400
        assert response.status_code >= 400 or method == "GET", response.text[:300]
    assert table_counts(engine) == before


@pytest.mark.parametrize("path", ["/fhir/Patient/a%00b", "/fhir/Patient/a%00b/_history",
                                  "/fhir/Patient/a%00b/_history/1", "/fhir/Group/a%00b/$export",
                                  "/fhir/ResearchStudy/a%00b/$summary",
                                  "/export-files/a%00b/Patient.ndjson", "/fhir/$export-status/a%00b",
                                  "/studies/a%00b/report", "/fhir/Patient/a%1Bb"])
def test_a_control_character_in_a_path_is_a_400_on_every_route(client, engine, path):
    before = table_counts(engine)
    for method in ("GET", "DELETE", "PUT"):
        response = client.request(method, path, json={"resourceType": "Patient"})
        _check(response, f"{method} {path}")
        assert response.status_code == 400, f"{method} {path}"
    assert table_counts(engine) == before
