"""Every operation the OpenAPI documents, sent through the real app with the front door on and with it off (issue 9,
"one way in"): two apps with the same settings but `front_door`, each on its own fresh database, get the same
requests in the same order and must give the same answers (status, content type, headers, body).

What legitimately differs between two databases is normalised, and nothing else: the UUIDs the servers assign
(each distinct one becomes a placeholder in order of first appearance, per app, so which answer names which
resource is still compared) and the instants they stamp (`meta.lastUpdated`, a Bundle's `timestamp`, `lastModified`,
an export's `transactionTime`, a summary's time, HTTP dates): only instants of the last minutes are replaced, so the
2024 dates of the data are compared as they are.

Search results, Group members and export files come in id order, and random ids sort differently in two databases;
so the reads are sent while each type has one resource (the seed), and the creates of the examples come after.
Order: seed, every GET, then POST and PUT, then DELETE. The export worker is off in both apps; the test runs each
app's queued jobs itself (`ExportWorker.run_once`) between two polls of the status URL.
"""

import json
import re
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from service.audit.events import build_event
from service.audit.log import commit_now
from service.export.worker import ExportWorker
from service.main import create_app

STUDY = "nct01927705"  # the id the examples' ResearchStudy references name
TYPES = ("Patient", "ResearchStudy", "ResearchSubject", "Observation", "AdverseEvent", "Encounter",
         "MedicationAdministration", "Procedure", "ConceptMap", "ObservationDefinition",
         "PlanDefinition")  # creation order
NO_IDENTIFIER_TYPES = ("Provenance",)  # R4 gives it no identifier: its conditional writes select by _id
READ_ONLY_TYPES = ("AuditEvent",)  # recorded by the server: read and searched only
MRN = "urn:oid:1.2.410.200001.1"
EASI = "https://trial-fhir.org/CodeSystem/ad-scores|EASI"

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ISO_RE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}| UTC)")
HTTP_DATE_RE = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")
FILE_ETAG_RE = re.compile(r'^"[0-9a-f]{32}"$')  # Starlette's FileResponse ETag: a hash of the file's mtime and size
TOKEN_RE = re.compile(r"<([A-Za-z_]+)>")
LIMIT = 64 * 1024  # max_body_bytes of both apps


def identifier_query(resource: dict) -> str:
    ident = resource["identifier"]
    ident = ident[0] if isinstance(ident, list) else ident
    return f"identifier={ident['system']}|{ident['value']}"


def with_identifier(resource: dict, value: str) -> dict:
    ident = resource["identifier"]
    if isinstance(ident, list):
        return {**resource, "identifier": [{**ident[0], "value": value}]}
    return {**resource, "identifier": {**ident, "value": value}}


class Side:
    """One of the two apps: its client, the ids its server assigned, and its UUID placeholders."""

    def __init__(self, name: str, app, client: TestClient) -> None:
        self.name, self.app, self.client = name, app, client
        self.ids: dict[str, str] = {"ResearchStudy": STUDY}
        self.uuids: dict[str, str] = {}

    def fill(self, value):
        """`value` with each `<name>` replaced by this app's id of that name."""
        if isinstance(value, str):
            return TOKEN_RE.sub(lambda m: self.ids[m.group(1)], value)
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        return value

    def _text(self, text: str, since: datetime) -> str:
        text = UUID_RE.sub(lambda m: self.uuids.setdefault(m.group(0), f"<uuid-{len(self.uuids) + 1}>"), text)

        def instant(m: re.Match) -> str:
            value = datetime.fromisoformat(m.group(0).replace("Z", "+00:00").replace(" UTC", "+00:00"))
            return "<instant>" if recent(value, since) else m.group(0)

        def http_date(m: re.Match) -> str:
            return "<http-date>" if recent(parsedate_to_datetime(m.group(0)), since) else m.group(0)

        return HTTP_DATE_RE.sub(http_date, ISO_RE.sub(instant, text))

    def answer(self, response, since: datetime) -> tuple:
        """What the test compares of a response, normalised."""
        headers = []
        for name, value in sorted(response.headers.multi_items()):
            if name == "content-length":  # the body is compared itself
                continue
            if name == "x-request-id":  # made per request (tests/ops/test_request_log.py checks it)
                value = "<request-id>"
            if name == "etag" and FILE_ETAG_RE.match(value):
                value = "<file-etag>"
            headers.append((name, self._text(value, since)))
        ctype = response.headers.get("content-type", "")
        text = self._text(response.content.decode(), since)
        if ctype.startswith("text/plain; version=0.0.4"):  # /metrics: each app's own counts (tests/ops)
            body = "<metrics>"
            # … of its own length too: one side's may pass the gzip threshold (gzip_min_bytes), not the other's
            headers = [(n, v) for n, v in headers if n not in ("content-encoding", "vary", "etag")]
        elif ctype.startswith("application/fhir+ndjson"):
            body = [json.loads(line) for line in text.splitlines()]
        elif ctype.startswith(("application/fhir+json", "application/json")) and text:
            body = json.loads(text)
        else:
            body = text
        return response.status_code, headers, body


def recent(value: datetime, since: datetime) -> bool:
    """Stamped by a server during this test (minute precision allowed for)."""
    if value.tzinfo is None:
        return False
    return since - timedelta(minutes=1) <= value <= datetime.now(UTC) + timedelta(minutes=1)


class Pair:
    """Sends each request to both apps, front door first, and compares the answers."""

    def __init__(self, front: Side, routed: Side, documented: set[tuple[str, str]]) -> None:
        self.sides = (front, routed)
        self.documented = documented
        self.patterns = {op: re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(op[1])) + "$")
                         for op in documented}
        self.sent: set[tuple[str, str]] = set()
        self.started = datetime.now(UTC)

    def operation(self, method: str, url: str) -> tuple[str, str]:
        path = urlsplit(url).path
        found = [op for op, pattern in self.patterns.items() if op[0] == method and pattern.match(path)]
        literal = [op for op in found if "{" not in op[1]]  # as the router: a literal path (…/_history) wins
        found = literal or found
        assert len(found) == 1, f"{method} {url} is not exactly one documented operation: {found}"
        return found[0]

    def send(self, method: str, url: str, status: int, *, json_body=None, content=None, data=None,
             headers=None):
        """Send to both apps (each with its own ids filled in), check the status this test meant, compare.
        `content` as a list of chunks is sent streamed (chunked, no Content-Length)."""
        answers, responses = [], []
        for side in self.sides:
            body = iter(content) if isinstance(content, list) else content
            response = side.client.request(method, side.fill(url), json=side.fill(json_body), content=body,
                                           data=data, headers=headers)
            responses.append(response)
            answers.append(side.answer(response, self.started))
        self.sent.add(self.operation(method, self.sides[0].fill(url)))
        where = f"{method} {url} {headers or ''}"
        assert answers[0] == answers[1], f"front door and routes answer differently: {where}"
        assert responses[0].status_code == status, f"{where}: {responses[0].status_code} {responses[0].text[:500]}"
        return responses

    def learn(self, name: str, responses, pick) -> None:
        for side, response in zip(self.sides, responses, strict=True):
            side.ids[name] = pick(response)


def location_id(location: str) -> str:
    """The id in `…/{type}/{id}` or `…/{type}/{id}/_history/{vid}`."""
    parts = location.rstrip("/").split("/")
    return parts[-3] if "_history" in parts else parts[-1]


@pytest.fixture
def pair(settings, another_database_url, tmp_path):
    # (no notification sender: a Subscription's status would change under the test, at each side's own moment)
    common = {"export_worker": False, "max_body_bytes": LIMIT, "subscription_sender": False}
    front_app = create_app(settings.model_copy(update={**common, "front_door": True,
                                                       "export_dir": tmp_path / "export-front"}))
    routed_app = create_app(settings.model_copy(update={**common, "front_door": False,
                                                        "database_url": another_database_url,
                                                        "export_dir": tmp_path / "export-routed"}))
    assert front_app.front_door is not None and routed_app.front_door is None
    documented = {(method.upper(), path) for path, item in front_app.openapi()["paths"].items() for method in item}
    assert documented == {(method.upper(), path) for path, item in routed_app.openapi()["paths"].items()
                          for method in item}
    # a fault is a 500 OperationOutcome both ways; the routed app's ServerErrorMiddleware would also re-raise it
    with TestClient(front_app, raise_server_exceptions=False) as front, \
            TestClient(routed_app, raise_server_exceptions=False) as routed:
        yield Pair(Side("front door", front_app, front), Side("routes", routed_app, routed), documented)


@contextmanager
def faulty(pair: Pair, interaction: str):
    """Within: that interaction of the core fails with an unexpected exception, in both apps."""
    async def broken(*args, **kwargs):
        raise RuntimeError(f"{interaction} broke (on purpose, in a test)")

    for side in pair.sides:
        setattr(side.app.state.core, interaction, broken)
    try:
        yield
    finally:
        for side in pair.sides:
            delattr(side.app.state.core, interaction)


def request_example(app, method: str, path: str) -> dict:
    """The `requestBody` example the OpenAPI documents for an operation."""
    body = app.openapi()["paths"][path][method.lower()]["requestBody"]
    return body["content"]["application/fhir+json"]["example"]


def test_every_documented_operation_answers_alike_with_and_without_the_front_door(pair):
    app = pair.sides[0].app
    send = pair.send
    examples = {t: request_example(app, "POST", f"/fhir/{t}") for t in TYPES}

    # -- seed: one resource of each type ---------------------------------------------------------------------
    seed_study = {**with_identifier(examples["ResearchStudy"], "NCT-SEED"), "id": STUDY}
    send("PUT", f"/fhir/ResearchStudy/{STUDY}", 201, json_body=seed_study)
    done = send("POST", "/fhir", 200, json_body=request_example(app, "POST", "/fhir"))
    for kind, position in (("Patient", 0), ("ResearchSubject", 1), ("Observation", 2)):
        pair.learn(kind, done, lambda r, i=position: location_id(r.json()["entry"][i]["response"]["location"]))
    seed_event = {**with_identifier(examples["AdverseEvent"], "AE-SEED"),
                  "subject": {"reference": f"Patient?identifier={MRN}|MRN-000124"}}
    pair.learn("AdverseEvent", send("POST", "/fhir/AdverseEvent", 201, json_body=seed_event),
               lambda r: r.json()["id"])
    for t in ("Encounter", "MedicationAdministration", "Procedure"):
        seed = {**with_identifier(examples[t], f"{t}-SEED"),
                "subject": {"reference": f"Patient?identifier={MRN}|MRN-000124"}}
        pair.learn(t, send("POST", f"/fhir/{t}", 201, json_body=seed), lambda r: r.json()["id"])
    pair.learn("ConceptMap", send("POST", "/fhir/ConceptMap", 201,
                                  json_body=with_identifier(examples["ConceptMap"], "CM-SEED")),
               lambda r: r.json()["id"])
    # the measure the PlanDefinition example lists (ObservationDefinition/spga), then that plan
    pair.learn("ObservationDefinition", send("PUT", "/fhir/ObservationDefinition/spga", 201, json_body={
        **with_identifier(examples["ObservationDefinition"], "OD-SEED"), "id": "spga"}), lambda r: r.json()["id"])
    pair.learn("PlanDefinition", send("POST", "/fhir/PlanDefinition", 201,
                                      json_body=with_identifier(examples["PlanDefinition"], "PD-SEED")),
               lambda r: r.json()["id"])
    seed_provenance = {**request_example(app, "POST", "/fhir/Provenance"),
                       "target": [{"reference": f"Patient?identifier={MRN}|MRN-000124"}],
                       "recorded": "2024-01-05T10:00:00+09:00"}  # before the example's: one order by date
    pair.learn("Provenance", send("POST", "/fhir/Provenance", 201, json_body=seed_provenance),
               lambda r: r.json()["id"])
    audit = build_event(subtype="read", outcome=0, client="ehr", patients=["p1"], id="audit-seed")
    for side in pair.sides:  # the same event recorded by each server
        commit_now(side.app.state.engine, [audit])
        side.ids["AuditEvent"] = audit.id

    # -- reads -----------------------------------------------------------------------------------------------
    send("GET", "/healthz", 200)
    send("GET", "/readyz", 200)
    send("GET", "/metrics", 200)
    send("GET", "/fhir/metadata", 200)
    send("GET", "/fhir/CodeSystem/ad-scores", 200)
    send("GET", "/fhir/CodeSystem/nonsense", 404)
    send("GET", "/fhir/CodeSystem?url=https://trial-fhir.org/CodeSystem/ad-scores", 200)
    send("GET", "/fhir/SearchParameter/Observation-visit", 200)
    send("GET", "/fhir/SearchParameter?code=visit&base=Observation", 200)

    # the audit trail grows with every request (each server audits its own, at its own instants): its searches are
    # limited to the seeded event's client
    def mine(t: str) -> str:
        return "agent=ehr" if t in READ_ONLY_TYPES else ""

    for t in TYPES + NO_IDENTIFIER_TYPES + READ_ONLY_TYPES:
        # the front door's GET, and its errors
        send("GET", f"/fhir/{t}?{mine(t)}", 200)
        send("GET", f"/fhir/{t}?{mine(t)}&_id=<{t}>", 200)
        send("GET", f"/fhir/{t}?{mine(t)}&_id=<{t}>&_format=json", 200)
        send("GET", f"/fhir/{t}?{mine(t)}&_id=<{t}>&_format=application/json", 200)
        send("GET", f"/fhir/{t}?{mine(t)}&_summary=count", 200)
        send("GET", f"/fhir/{t}?{mine(t)}&_elements=id&_total=accurate", 200)
        send("GET", f"/fhir/{t}?{mine(t)}&bogus=1", 200)  # ignored, with a warning entry
        send("GET", f"/fhir/{t}?{mine(t)}&bogus=1", 400, headers={"Prefer": "handling=strict"})
        send("GET", f"/fhir/{t}?{mine(t)}&_count=x", 400, headers={"Prefer": "handling=strict"})
        send("GET", f"/fhir/{t}?{mine(t)}&_format=xml", 406)
        send("GET", f"/fhir/{t}?{mine(t)}", 406, headers={"Accept": "application/fhir+xml"})
        send("GET", f"/fhir/{t}?{mine(t)}", 200, headers={"Accept": "application/json"})
        send("GET", f"/fhir/{t}?{mine(t)}", 200, headers={"Accept": "text/html"})
        bogus = f"/fhir/{t}?{mine(t)}&bogus=1"
        send("GET", bogus, 400, headers={"Prefer": "handling=strict", "Accept": "application/json"})
        send("GET", bogus, 400, headers=[("Prefer", "handling=strict"), ("Prefer", "handling=lenient")])
        send("GET", bogus, 200, headers=[("Prefer", "handling=lenient"), ("Prefer", "handling=strict")])
        # read, history, vread
        send("GET", f"/fhir/{t}/<{t}>", 200)
        send("GET", f"/fhir/{t}/<{t}>", 304, headers={"If-None-Match": 'W/"1"'})
        send("GET", f"/fhir/{t}/<{t}>", 200, headers={"Accept": "application/json"})
        send("GET", f"/fhir/{t}/unknown-id", 404)
        send("GET", f"/fhir/{t}/<{t}>/_history", 200)
        send("GET", f"/fhir/{t}/<{t}>/_history?_count=0", 400)
        send("GET", f"/fhir/{t}/<{t}>/_history/1", 200)
        send("GET", f"/fhir/{t}/<{t}>/_history/9", 404)
    for t in TYPES + NO_IDENTIFIER_TYPES:  # type history (each type holds one resource: one order)
        send("GET", f"/fhir/{t}/_history", 200)
        send("GET", f"/fhir/{t}/_history?_count=1&_since=2024-01-01T00:00:00Z", 200)
        send("GET", f"/fhir/{t}/_history?_page=nonsense", 400)
    send("GET", "/fhir/AuditEvent/_history?_since=2999-01-01T00:00:00Z", 200)
    # history _at, Patient/$everything (one resource of each type here: one order)
    send("GET", "/fhir/Patient/<Patient>/_history?_at=2999", 200)
    send("GET", "/fhir/Observation/_history?_at=2024-13", 400)
    send("GET", "/fhir/_history?_at=2999-01-01", 200)
    send("GET", "/fhir/Patient/<Patient>/$everything", 200)
    send("GET", "/fhir/Patient/<Patient>/$everything?_type=Patient,Observation", 200)  # (a next link: an opaque cursor)
    send("GET", "/fhir/Patient/<Patient>/$everything?_type=Basic", 400)
    send("GET", "/fhir/Patient/unknown-id/$everything", 404)
    # terminology: the trial's CodeSystem and ValueSets, GET and POST (Parameters)
    ad = "https://trial-fhir.org/CodeSystem/ad-scores"
    ad_vs = "https://trial-fhir.org/ValueSet/ad-scores"

    def parameters(**values: str) -> dict:
        return {"resourceType": "Parameters", "parameter": [{"name": k, "valueString": v} for k, v in values.items()]}

    send("GET", f"/fhir/CodeSystem/$lookup?system={ad}&code=EASI", 200)
    send("GET", f"/fhir/CodeSystem/$lookup?system={ad}&code=NOPE", 404)
    send("POST", "/fhir/CodeSystem/$lookup", 200, json_body=parameters(system=ad, code="IGA"))
    send("GET", f"/fhir/CodeSystem/$validate-code?url={ad}&code=EASI", 200)
    send("POST", "/fhir/CodeSystem/$validate-code", 200, json_body=parameters(url=ad, code="NOPE"))
    send("GET", "/fhir/CodeSystem/ad-scores/$validate-code?code=EASI&display=EASI", 200)
    send("POST", "/fhir/CodeSystem/ad-scores/$validate-code", 200, json_body=parameters(code="SCORAD"))
    send("GET", f"/fhir/ValueSet/$validate-code?url={ad_vs}&system={ad}&code=EASI", 200)
    send("POST", "/fhir/ValueSet/$validate-code", 200, json_body=parameters(url=ad_vs, system=ad, code="x"))
    send("GET", "/fhir/ValueSet/atopic-dermatitis-measures/$validate-code?system=http://loinc.org&code=711-2", 200)
    send("POST", "/fhir/ValueSet/ad-scores/$validate-code", 200, json_body=parameters(code="IGA"))
    send("GET", f"/fhir/ValueSet/$expand?url={ad_vs}&filter=easi&count=3", 200)
    send("POST", "/fhir/ValueSet/$expand", 200, json_body=parameters(url=ad_vs, filter="pruritus"))
    send("GET", "/fhir/ValueSet/ad-scores/$expand?offset=2&count=2", 200)
    send("GET", "/fhir/ValueSet/ad-scores/$expand?count=-2", 400)
    send("POST", "/fhir/ValueSet/atopic-dermatitis-measures/$expand", 200, json_body=parameters(filter="eosin"))
    send("GET", "/fhir/ValueSet/ad-scores", 200)
    send("GET", "/fhir/ValueSet/nonsense", 404)
    send("GET", f"/fhir/ValueSet?url={ad_vs}", 200)
    send("GET", "/fhir/_history", 200)  # one resource of each type, so one order
    send("GET", "/fhir/_history?_since=2024-01-01T00:00:00Z", 200)  # (a next link's cursor holds instants and ids)
    send("GET", "/fhir/_history?_page=nonsense", 400)
    two_hosts = [("Host", "proxy.example"), ("Host", "testserver")]  # the first one counts, as in Starlette
    send("GET", "/fhir/Patient", 200, headers=two_hosts)
    send("POST", "/fhir", 200, json_body={"resourceType": "Bundle", "type": "batch"}, headers=two_hosts)
    send("GET", "/fhir/Patient", 200)  # and the base URL it gave is not kept for the other host
    send("GET", "/fhir/Patient?identifier=" + MRN + "|MRN-000124", 200)
    send("GET", "/fhir/Patient?_revinclude=Observation:subject", 200)
    send("GET", "/fhir/Observation?subject=Patient/<Patient>&_include=Observation:subject", 200)
    send("GET", f"/fhir/Observation?code={EASI}&date=ge2024-01-01&_sort=-date", 200)
    send("GET", f"/fhir/Observation?study={STUDY}&visit=baseline", 200)
    send("GET", "/fhir/Observation?date=2024-13-45", 400, headers={"Prefer": "handling=strict"})
    send("GET", "/fhir/ResearchSubject?study=ResearchStudy/" + STUDY, 200)
    send("GET", "/fhir/AdverseEvent?subject=Patient/<Patient>", 200)
    send("GET", "/fhir/AuditEvent?patient=Patient/p1&date=ge2024-01-01&subtype=read", 200)
    send("GET", "/fhir/ConceptMap?url=https://hospital.example.org/fhir/ConceptMap/lab-to-loinc", 200)
    # HL7 v2: the ACK carries a time and a control id of its own (tests/hl7 checks it); here its HTTP edge
    send("POST", "/hl7/v2", 415, content=b"MSH|^~\\&|", headers={"Content-Type": "application/json"})
    send("POST", "/hl7/v2", 413, content=b"MSH|" + b"x" * (2 * 1024 * 1024), headers={"Content-Type": "text/plain"})
    send("POST", "/fhir/AuditEvent/_search", 200, data={"patient": "p1", "agent": "ehr"})
    with faulty(pair, "search"):
        send("GET", "/fhir/Observation", 500)
        send("GET", "/fhir/Observation", 500, headers={"Accept": "application/json"})

    send("GET", f"/fhir/Group/{STUDY}", 200)
    send("GET", "/fhir/Group/unknown-study", 404)
    send("GET", "/fhir/Group", 200)
    send("GET", f"/fhir/Group?_id={STUDY}", 200)
    send("GET", "/fhir/Group?bogus=1", 400, headers={"Prefer": "handling=strict"})

    send("GET", f"/studies/{STUDY}/summary", 200)
    send("GET", "/studies/unknown-study/summary", 404)
    send("GET", f"/studies/{STUDY}/summary.csv", 200)
    send("GET", f"/fhir/ResearchStudy/{STUDY}/$summary", 200)
    send("GET", f"/studies/{STUDY}/charts/EASI.svg", 200)
    send("GET", f"/studies/{STUDY}/charts/EASI-50.svg", 200)
    send("GET", f"/studies/{STUDY}/charts/NOPE.svg", 404)
    send("GET", f"/studies/{STUDY}/report", 200)
    send("GET", f"/studies/{STUDY}/progress", 200)
    # CDISC datasets (one subject: one order); XPT files carry no zone in their stamps, so JSON here
    send("GET", f"/studies/{STUDY}/sdtm", 200)
    send("GET", f"/studies/{STUDY}/sdtm/DM.json", 200)
    send("GET", f"/studies/{STUDY}/sdtm/XX.json", 404)
    send("GET", f"/studies/{STUDY}/adam", 200)
    send("GET", f"/studies/{STUDY}/adam/ADSL.json", 200)
    send("GET", "/studies/unknown-study/progress", 404)
    send("GET", "/", 200)
    send("GET", "/dashboard/studies", 200)
    send("GET", "/dashboard/assets/dashboard.js", 200)
    send("GET", "/dashboard/assets/nothing.js", 404)

    send("GET", "/fhir/$export", 400)  # without Prefer: respond-async
    send("GET", "/fhir/$export?_type=Nonsense", 400, headers={"Prefer": "respond-async"})
    job = send("GET", "/fhir/$export", 202, headers={"Prefer": "respond-async"})
    pair.learn("job", job, lambda r: r.headers["content-location"].rsplit("/", 1)[-1])
    group_job = send("GET", f"/fhir/Group/{STUDY}/$export?_type=Patient,Observation", 202,
                     headers={"Prefer": "respond-async"})
    pair.learn("group_job", group_job, lambda r: r.headers["content-location"].rsplit("/", 1)[-1])
    send("GET", "/fhir/Group/unknown-study/$export", 404, headers={"Prefer": "respond-async"})
    patient_job = send("GET", "/fhir/Patient/$export?_type=Patient,Observation&_elements=Observation.code", 202,
                       headers={"Prefer": "respond-async"})
    pair.learn("patient_job", patient_job, lambda r: r.headers["content-location"].rsplit("/", 1)[-1])
    send("GET", "/fhir/Patient/$export?_type=ResearchStudy", 400, headers={"Prefer": "respond-async"})
    kick_off = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Patient"}]}
    send("POST", "/fhir/$export", 202, json_body=kick_off, headers={"Prefer": "respond-async"})
    send("POST", "/fhir/$export", 400, json_body={"resourceType": "Parameters", "parameter": [
        {"name": "_since", "valueString": "yesterday"}]}, headers={"Prefer": "respond-async"})
    send("POST", f"/fhir/Group/{STUDY}/$export", 202, headers={"Prefer": "respond-async"}, json_body={
        "resourceType": "Parameters", "parameter": [{"name": "patient", "valueReference": {
            "reference": "Patient/<Patient>"}}]})
    send("POST", "/fhir/Patient/$export", 202, json_body=kick_off,
         headers={"Prefer": "respond-async, handling=lenient"})
    send("GET", "/fhir/$export-status/<job>", 202)  # queued: no worker runs
    send("GET", "/export-files/<job>/Patient.ndjson", 404)  # not complete yet
    for side in pair.sides:  # the worker's turn, by hand: every queued job of this app
        worker = ExportWorker(side.app.state.engine, side.app.state.settings)
        while worker.run_once():
            pass
    send("GET", "/fhir/$export-status/<job>", 200)
    send("GET", "/fhir/$export-status/<group_job>", 200)
    send("GET", "/fhir/$export-status/unknown-job", 404)
    for name in ("Patient", "ResearchStudy", "ResearchSubject", "Observation", "AdverseEvent"):
        send("GET", f"/export-files/<job>/{name}.ndjson", 200)
    send("GET", "/export-files/<group_job>/Observation.ndjson", 200)
    send("GET", "/export-files/<group_job>/AdverseEvent.ndjson", 404)
    send("GET", "/fhir/$export-status/<patient_job>", 200)
    send("GET", "/export-files/<patient_job>/Observation.ndjson", 200)

    # -- writes: the examples created, created again (conditionally), updated --------------------------------
    send("POST", "/fhir", 400, content=b"{not json", headers={"Content-Type": "application/fhir+json"})
    for t in TYPES:
        example = examples[t]
        match = {"If-None-Exist": identifier_query(example)}
        pair.learn(f"{t}_example", send("POST", f"/fhir/{t}", 201, json_body=example), lambda r: r.json()["id"])
        send("POST", f"/fhir/{t}", 200, json_body=example, headers=match)
        send("POST", f"/fhir/{t}", 200, json_body=example, headers={**match, "Prefer": "return=minimal"})
        send("POST", f"/fhir/{t}", 200, json_body=example, headers={**match, "Prefer": "return=OperationOutcome"})
        send("POST", f"/fhir/{t}", 200, json_body=example, headers={**match, "Prefer": "return=representation"})
        send("POST", f"/fhir/{t}", 200, json_body=example, headers={**match, "Accept": "application/json"})
        send("POST", f"/fhir/{t}", 200, json_body=example, headers=[*match.items(), ("Prefer", "return=minimal"),
                                                                    ("Prefer", "return=representation")])
        send("POST", f"/fhir/{t}", 200, json_body=example,
             headers=[*match.items(), ("If-None-Exist", "identifier=urn:nothing|matches")])
        send("POST", f"/fhir/{t}?_format=json", 200, json_body=example, headers=match)
        send("POST", f"/fhir/{t}", 409, json_body=example)  # the identifier is taken
        send("POST", f"/fhir/{t}", 400, content=b"{not json", headers={"Content-Type": "application/fhir+json"})
        send("POST", f"/fhir/{t}", 400, content=b"[]", headers={"Content-Type": "application/fhir+json"})
        send("POST", f"/fhir/{t}", 400, content=b"{}", headers={"Content-Type": "application/json"})
        send("POST", f"/fhir/{t}", 400, content=b"", headers={"Content-Type": "application/fhir+json"})
        send("POST", f"/fhir/{t}", 400, json_body={**example, "resourceType": "Basic"})
        send("POST", f"/fhir/{t}", 415, content=json.dumps(example).encode(), headers={"Content-Type": "text/plain"})
        send("POST", f"/fhir/{t}", 415, content=json.dumps(example).encode())  # no Content-Type
        too_big = json.dumps({**example, "text": {"status": "generated", "div": "x" * LIMIT}}).encode()
        json_types = {"Content-Type": "application/fhir+json", "Accept": "application/json"}
        send("POST", f"/fhir/{t}", 413, content=too_big, headers=json_types)  # said by Content-Length
        send("POST", f"/fhir/{t}", 413, content=[too_big[:LIMIT // 2], too_big[LIMIT // 2:]],
             headers=json_types)  # streamed (chunked): counted while read
        send("POST", f"/fhir/{t}?_format=xml", 406, json_body=example)
        send("POST", f"/fhir/{t}", 406, json_body=example, headers={"Accept": "application/fhir+xml"})
        send("POST", f"/fhir/{t}", 400, json_body={**example, "status": 7})
        send("POST", f"/fhir/{t}/_search", 200, data={"identifier": identifier_query(example).split("=", 1)[1]})
        send("POST", f"/fhir/{t}/_search", 400, data={"bogus": "1"}, headers={"Prefer": "handling=strict"})
    provenance = request_example(app, "POST", "/fhir/Provenance")  # of the Observation example, by identifier
    pair.learn("Provenance_example", send("POST", "/fhir/Provenance", 201, json_body=provenance),
               lambda r: r.json()["id"])
    send("POST", "/fhir/Provenance", 400, json_body={**provenance, "status": 7})
    send("POST", "/fhir/Provenance", 422, json_body={**provenance, "target": [{"reference": "Observation/nobody"}]})
    send("POST", "/fhir/Provenance/_search", 200, data={"recorded": "ge2024-01-01"})
    minimal = send("POST", "/fhir/Patient", 201, json_body=with_identifier(examples["Patient"], "MRN-9"),
                   headers={"Prefer": "return=minimal"})
    pair.learn("new_patient", minimal, lambda r: location_id(r.headers["location"]))
    send("POST", "/fhir/Patient", 201, json_body=with_identifier(examples["Patient"], "MRN-10"),
         headers={"Prefer": "return=OperationOutcome"})
    send("POST", "/fhir/Patient", 200, json_body=with_identifier(examples["Patient"], "MRN-9"),
         headers={"If-None-Exist": f"identifier={MRN}|MRN-9", "Prefer": "return=minimal"})
    easi_80 = {**request_example(app, "POST", "/fhir/Observation"), "identifier": [{"system": "urn:lab", "value": "8"}],
               "code": {"coding": [{"system": EASI.split("|")[0], "code": "EASI"}]},
               "valueQuantity": {"value": 80, "unit": "{score}", "system": "http://unitsofmeasure.org",
                                 "code": "{score}"}}
    send("POST", "/fhir/Observation", 422, json_body=easi_80)
    with faulty(pair, "create"):
        send("POST", "/fhir/Observation", 500, json_body=easi_80)
        send("POST", "/fhir/Observation", 500, json_body=easi_80, headers={"Accept": "application/json"})
    send("POST", "/fhir/Observation", 422, json_body={**examples["Observation"], "identifier": [
        {"system": "urn:lab", "value": "9"}], "subject": {"reference": "Patient/nobody"}})

    # each PUT says something new (its `language`): an update that changes nothing keeps the current version
    languages = iter(["en", "ko", "ja", "de", "fr", "es"] * 10)
    for t in TYPES:
        example = request_example(app, "PUT", f"/fhir/{t}")
        send("PUT", f"/fhir/{t}?{identifier_query(example)}", 200, json_body={**example, "language": next(languages)})
        send("PUT", f"/fhir/{t}?{identifier_query(example)}", 200, json_body={**example, "language": next(languages)},
             headers={"Prefer": "return=minimal"})
        send("PUT", f"/fhir/{t}?{identifier_query(example)}", 412, json_body=example, headers={"If-Match": 'W/"1"'})
        by_id = {**request_example(app, "PUT", f"/fhir/{t}/{{id}}"), "id": f"<{t}_example>"}
        send("PUT", f"/fhir/{t}/<{t}_example>", 200, json_body={**by_id, "language": next(languages)})
        send("PUT", f"/fhir/{t}/<{t}_example>", 412, json_body=by_id, headers={"If-Match": 'W/"1"'})
        last = {**by_id, "language": next(languages)}
        send("PUT", f"/fhir/{t}/<{t}_example>", 200, json_body=last,
             headers={"If-Match": 'W/"4"', "Prefer": "return=OperationOutcome"})
        send("PUT", f"/fhir/{t}/<{t}_example>", 200, json_body=last, headers={"If-Match": 'W/"5"'})  # the same: v5
        send("PUT", f"/fhir/{t}/<{t}_example>", 400, json_body={**by_id, "id": "another"})
        send("PUT", f"/fhir/{t}/<{t}_example>", 415, content=json.dumps(by_id), headers={"Content-Type": "text/plain"})
    by_id = {**request_example(app, "PUT", "/fhir/Provenance/{id}"), "id": "<Provenance_example>"}
    send("PUT", "/fhir/Provenance?_id=<Provenance_example>", 200, json_body={**by_id, "language": "en"})
    send("PUT", "/fhir/Provenance/<Provenance_example>", 200, json_body={**by_id, "language": "ko"})
    send("PUT", "/fhir/Provenance/<Provenance_example>", 412, json_body=by_id, headers={"If-Match": 'W/"1"'})
    send("PUT", "/fhir/Patient/client-chosen", 201, json_body={**with_identifier(examples["Patient"], "MRN-11"),
                                                                "id": "client-chosen"})
    send("PUT", "/fhir/Patient?identifier=" + MRN + "|MRN-12", 201,
         json_body=with_identifier(examples["Patient"], "MRN-12"))

    # -- PATCH (JSON Patch) and $validate -------------------------------------------------------------------
    json_patch = {"Content-Type": "application/json-patch+json"}
    for t in TYPES:
        example = examples[t]
        send("PATCH", f"/fhir/{t}/<{t}_example>", 200, json_body=[{"op": "add", "path": "/language", "value": "it"}],
             headers=json_patch)
        send("PATCH", f"/fhir/{t}/<{t}_example>", 412, json_body=[], headers={**json_patch, "If-Match": 'W/"1"'})
        send("PATCH", f"/fhir/{t}/<{t}_example>", 400, json_body=[{"op": "delete", "path": "/language"}],
             headers=json_patch)
        send("PATCH", f"/fhir/{t}/<{t}_example>", 422, json_body=[{"op": "test", "path": "/language", "value": "xx"}],
             headers=json_patch)
        send("PATCH", f"/fhir/{t}/<{t}_example>", 400, json_body=[])  # a merge patch (application/json) is an object
        send("PATCH", f"/fhir/{t}/<{t}_example>", 415, content=b"[]", headers={"Content-Type": "text/plain"})
        send("PATCH", f"/fhir/{t}/<{t}_example>", 200, json_body={"language": "de"},
             headers={"Content-Type": "application/merge-patch+json"})
        send("PATCH", f"/fhir/{t}?{identifier_query(example)}", 200,
             json_body=[{"op": "replace", "path": "/language", "value": "nl"}], headers=json_patch)
        send("PATCH", f"/fhir/{t}?identifier=urn:nothing|matches", 404, json_body=[], headers=json_patch)
        send("POST", f"/fhir/{t}/$validate", 200, json_body=example)  # its identifier is taken: a conflict issue
        send("POST", f"/fhir/{t}/$validate?mode=update", 400, json_body=example)
        by_id = {**request_example(app, "PUT", f"/fhir/{t}/{{id}}"), "id": f"<{t}_example>"}
        send("POST", f"/fhir/{t}/<{t}_example>/$validate", 200, json_body={**by_id, "language": "fr"})
        send("POST", f"/fhir/{t}/<{t}_example>/$validate?mode=delete", 200)
    send("PATCH", "/fhir/Provenance/<Provenance_example>", 200,
         json_body=[{"op": "add", "path": "/language", "value": "it"}], headers=json_patch)
    send("PATCH", "/fhir/Provenance?_id=<Provenance_example>", 200, json_body={"language": "nl"},
         headers={"Content-Type": "application/merge-patch+json"})
    send("POST", "/fhir/Provenance/$validate", 200, json_body=provenance)
    by_id = {**request_example(app, "PUT", "/fhir/Provenance/{id}"), "id": "<Provenance_example>"}
    send("POST", "/fhir/Provenance/<Provenance_example>/$validate", 200, json_body={**by_id, "language": "fr"})

    # -- Subscription (issue 17): its interactions, $validate, $status and $events -----------------------------
    subscription = request_example(app, "POST", "/fhir/Subscription")
    pair.learn("Subscription", send("POST", "/fhir/Subscription", 201, json_body=subscription),
               lambda r: r.json()["id"])
    send("POST", "/fhir/Subscription", 422, json_body={**subscription, "criteria": "https://example.org/nothing"})
    send("GET", "/fhir/Subscription?status=requested", 200)
    send("GET", "/fhir/Subscription/<Subscription>", 200)
    send("GET", "/fhir/Subscription/<Subscription>/_history", 200)
    send("GET", "/fhir/Subscription/<Subscription>/_history/1", 200)
    send("GET", "/fhir/Subscription/_history", 200)
    send("GET", "/fhir/Subscription/<Subscription>/$status", 200)
    send("GET", "/fhir/Subscription/<Subscription>/$events?eventsSinceNumber=1", 200)
    send("GET", "/fhir/Subscription/<Subscription>/$events?content=everything", 400)
    send("GET", "/fhir/Subscription/unknown-id/$status", 404)
    send("POST", "/fhir/Subscription/_search", 200, data={"status": "requested"})
    renamed = {**subscription, "id": "<Subscription>", "reason": "renamed"}
    send("PUT", "/fhir/Subscription/<Subscription>", 200, json_body=renamed)
    send("PUT", "/fhir/Subscription?_id=<Subscription>", 200, json_body={**renamed, "reason": "again"})
    send("PATCH", "/fhir/Subscription/<Subscription>", 200,
         json_body=[{"op": "replace", "path": "/reason", "value": "patched"}], headers=json_patch)
    send("PATCH", "/fhir/Subscription?_id=<Subscription>", 200, json_body={"reason": "merged"},
         headers={"Content-Type": "application/merge-patch+json"})
    send("POST", "/fhir/Subscription/$validate", 200, json_body=subscription)
    send("POST", "/fhir/Subscription/<Subscription>/$validate", 200, json_body=renamed)

    # -- deletes, dependants first ---------------------------------------------------------------------------
    send("DELETE", "/fhir/$export-status/<group_job>", 202)
    send("GET", "/fhir/$export-status/<group_job>", 404)
    send("DELETE", "/fhir/$export-status/<group_job>", 404)
    send("DELETE", "/fhir/Patient/<Patient>", 409)  # enrolled
    send("DELETE", "/fhir/Patient?name=Kim", 400)  # Patient has no name parameter: a condition never ignores one
    send("DELETE", "/fhir/Patient?gender=female", 412)  # any search criteria select; several matches: 412
    send("DELETE", "/fhir/Provenance?_id=<Provenance_example>", 204)
    send("DELETE", "/fhir/Subscription?_id=<Subscription>", 204)
    send("DELETE", "/fhir/Subscription/<Subscription>", 200)  # deleted already: idempotent
    for t in NO_IDENTIFIER_TYPES:
        send("DELETE", f"/fhir/{t}/<{t}>", 200)
        send("GET", f"/fhir/{t}/<{t}>", 410)
    for t in reversed(TYPES):
        if t == "ResearchStudy":
            continue
        send("DELETE", f"/fhir/{t}?{identifier_query(examples[t])}", 204)
        send("DELETE", f"/fhir/{t}/<{t}>", 200)
        send("DELETE", f"/fhir/{t}/<{t}>", 200)  # again: a no-op
        send("GET", f"/fhir/{t}/<{t}>", 410)
    send("DELETE", "/fhir/ResearchStudy?" + identifier_query(examples["ResearchStudy"]), 204)
    send("DELETE", "/fhir/ResearchStudy/<ResearchStudy>", 200, headers={"If-Match": 'W/"1"'})
    send("DELETE", "/fhir/ResearchStudy/<ResearchStudy>", 200)
    send("DELETE", "/fhir/Patient/<new_patient>", 412, headers={"If-Match": 'W/"2"'})
    send("DELETE", "/fhir/$export-status/<job>", 202)

    missing = pair.documented - pair.sent
    assert not missing, f"documented operations this test never sent: {sorted(missing)}"
    assert pair.sent == pair.documented
