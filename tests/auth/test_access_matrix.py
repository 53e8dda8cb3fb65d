"""The test that cannot be forgotten (issue 10): every route of the app's own route table × {no token, wrong scope,
right scope, other study, de-identified} → the expected status, with real tokens from the built-in authorisation
server (TRIAL_FHIR_AUTH=smart, tests/auth/conftest.py), through the front door and the FastAPI routes alike.

A route is matched to its row by its route name (`ROWS`, or `per_type` for the routes every stored type gets); a
route without a row fails `test_every_route_has_a_row`, so no endpoint ships without its access decision. The
"wrong scope" token holds every scope of every type *except* one letter the row needs (each needed letter in turn),
so a row passes only if that very scope is what lets the request in.

The "right" client is registered for study A only (`--study`), and asks for A's resources; "other study" is the
same client asking for B's (404 for reads, as if unknown; 403 for writes; searches answer without B's rows); the
"de-identified" client is registered for A with `--deidentified` (it names Patients by their pseudonyms).
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.core.registry import TYPES
from service.export.worker import ExportWorker
from tests.auth.tokens import get_token, register_client
from tests.factories import (
    MRN,
    adverse_event,
    concept_map,
    encounter,
    medication_administration,
    observation,
    observation_definition,
    patient,
    plan_definition,
    procedure,
    provenance,
    study,
    subject,
    subscription,
)
from tests.hl7.messages import oru

LETTERS = "cruds"
SCOPED = (*TYPES, "Group")
ADMIN = " ".join(f"system/{t}.cruds" for t in SCOPED)


@dataclass(frozen=True)
class Row:
    """One route: `call(scene, key)` sends its request for study `key` ("A": the client's own, "B": another's).
    `needs`: the scopes it needs (`Type.letters`); `ok`: its status with them; `other`: its status for study B's
    resources ("hidden": 200 without B's rows; None: not applicable); `deid`: the status a de-identified client
    gets (default `ok`); `public`: no token needed; `unlimited`: the right client is not limited to a study (a
    new ResearchStudy belongs to no study a client is registered for)."""

    call: Callable[["Scene", str], Any]
    needs: tuple[str, ...] = ()
    ok: tuple[int, ...] = (200,)
    other: int | str | None = 404
    deid: tuple[int, ...] | None = None
    public: bool = False
    unlimited: bool = False
    owned: bool = False  # an export job's own URL: only the client that started the job gets it


class Scene:
    """Studies A and B, each with an enrolled patient, an Observation and an AdverseEvent (made by an admin
    client), and the token each request is sent with."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.engine = client.app.state.engine
        self._tokens: dict[tuple[str, tuple[str, ...], bool], str] = {}
        self.admin = self.token_for(ADMIN)
        self.token = ""
        self.deidentified = False
        self.ids: dict[str, dict[str, str]] = {}
        for name in ("A", "B"):
            sid = self.make("ResearchStudy", study(title=f"Study {name}"))
            pid = self.make("Patient", patient(f"MRN-{name}", name=[{"family": f"Kim{name}"}]))
            subj = self.make("ResearchSubject", subject(sid, pid))
            obs = self.make("Observation", observation(pid))
            ae = self.make("AdverseEvent", adverse_event(pid, sid))
            self.ids[name] = {"ResearchStudy": sid, "Patient": pid, "ResearchSubject": subj, "Observation": obs,
                              "AdverseEvent": ae, "Group": sid}
            for rtype in ("Encounter", "MedicationAdministration", "Procedure", "Provenance", "ConceptMap",
                          "ObservationDefinition", "PlanDefinition",  # (the plan lists the definition)
                          "Subscription"):
                self.ids[name][rtype] = self.make(rtype, self.body_of(rtype, name))
        with self.engine.connect() as conn:  # an event of the trail these requests wrote (it belongs to no study)
            event = conn.execute(text("SELECT id FROM resource WHERE resource_type = 'AuditEvent' LIMIT 1")).scalar()
        for name in ("A", "B"):
            self.ids[name]["AuditEvent"] = event

    def token_for(self, scope: str, studies: tuple[str, ...] = (), deidentified: bool = False) -> str:
        key = (scope, studies, deidentified)
        if key not in self._tokens:
            client_id, private = register_client(self.engine, scope, studies, deidentified)
            self._tokens[key] = get_token(self.client, client_id, private, scope)
        return self._tokens[key]

    def make(self, rtype: str, body: dict) -> str:
        r = self.client.post(f"/fhir/{rtype}", json=body, headers={"Authorization": f"Bearer {self.admin}"})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def admin_get(self, url: str) -> dict:
        return self.client.get(url, headers={"Authorization": f"Bearer {self.admin}"}).json()

    def send(self, method: str, url: str, **kwargs: Any) -> Any:
        headers = {**({"Authorization": f"Bearer {self.token}"} if self.token else {}), **kwargs.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kwargs)

    def id(self, rtype: str, key: str) -> str:
        """The id of study `key`'s resource as the caller names it (a Patient by its pseudonym when de-identified)."""
        rid = self.ids[key][rtype]
        if self.deidentified and rtype == "Patient":
            return self.client.app.state.core.deidentifier().pseudonym(rid)
        return rid

    def body_of(self, rtype: str, key: str) -> dict:
        pid, sid = self.ids[key]["Patient"], self.ids[key]["ResearchStudy"]
        if rtype == "ResearchSubject":  # a new enrolment: of a patient enrolled nowhere yet
            return subject(sid, self.make("Patient", patient()))
        return {"Patient": patient(), "ResearchStudy": study(),
                "Observation": observation(pid), "AdverseEvent": adverse_event(pid, sid),
                "Encounter": encounter(pid), "MedicationAdministration": medication_administration(pid),
                "Procedure": procedure(pid), "Provenance": provenance(f"Observation/{self.ids[key]['Observation']}"),
                "ConceptMap": concept_map(), "ObservationDefinition": observation_definition(),
                "PlanDefinition": plan_definition(self.ids[key].get("ObservationDefinition", "")),
                # (off: no handshake changes it under the test)
                "Subscription": subscription(f"study=ResearchStudy/{sid}", status="off")}[rtype]

    def fresh(self, rtype: str, key: str) -> str:
        """A resource to delete: a new one in study A (a Patient enrolled nowhere, a study of its own), or B's."""
        if key == "B" and rtype in ("Patient", "ResearchStudy"):
            return self.ids["B"][rtype]
        if rtype == "ResearchSubject":
            pid = self.make("Patient", patient())
            return self.make("ResearchSubject", subject(self.ids[key]["ResearchStudy"], pid))
        return self.make(rtype, self.body_of(rtype, key))

    def job_owner(self, key: str) -> str:
        """Who starts the export job a request then asks about: the caller itself for "A" (when it has a token),
        the admin client for "B" (another client's job)."""
        return self.token if key == "A" and self.token else self.admin

    def export_job(self, token: str) -> str:
        """An export of Observations started with `token`: its status URL path."""
        r = self.client.get("/fhir/$export?_type=Observation",
                            headers={"Authorization": f"Bearer {token}", "Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        return "/fhir/" + r.headers["content-location"].split("/fhir/", 1)[1]

    def finished_job(self, token: str) -> str:
        status = self.export_job(token)
        app = self.client.app
        while ExportWorker(app.state.engine, app.state.settings).run_once():
            pass
        return status


#: a JSON Patch that changes nothing (no operations): what the row checks is who may send it
_NO_CHANGE: list[dict] = []
_JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def per_type(rtype: str) -> dict[str, Row]:
    """The rows of the routes every stored type gets."""
    def current(scene: Scene, key: str) -> dict:
        return scene.admin_get(f"/fhir/{rtype}/{scene.ids[key][rtype]}")

    study_level = rtype == "ResearchStudy"
    rows = {
        f"read_{rtype}": Row(lambda s, k: s.send("GET", f"/fhir/{rtype}/{s.id(rtype, k)}"), (f"{rtype}.r",)),
        f"vread_{rtype}": Row(lambda s, k: s.send("GET", f"/fhir/{rtype}/{s.id(rtype, k)}/_history/1"),
                              (f"{rtype}.r",)),
        f"history_{rtype}": Row(lambda s, k: s.send("GET", f"/fhir/{rtype}/{s.id(rtype, k)}/_history"),
                                (f"{rtype}.r",)),
        # every version of the type: another study's never shows (the "other" client asks for all of them)
        f"history_type_{rtype}": Row(lambda s, k: s.send("GET", f"/fhir/{rtype}/_history?_count=1000"),
                                     (f"{rtype}.r",), other="hidden"),
        f"search_{rtype}": Row(lambda s, k: s.send("GET", f"/fhir/{rtype}?_id={s.id(rtype, k)}"), (f"{rtype}.s",),
                               other="hidden"),
        f"search_{rtype}_post": Row(lambda s, k: s.send("POST", f"/fhir/{rtype}/_search",
                                                        data={"_id": s.id(rtype, k)}), (f"{rtype}.s",),
                                    other="hidden"),
        f"create_{rtype}": Row(lambda s, k: s.send("POST", f"/fhir/{rtype}", json=s.body_of(rtype, k)),
                               (f"{rtype}.c",), ok=(201,), other=201 if rtype == "Patient" else 403, deid=(403,),
                               unlimited=study_level),
        f"update_{rtype}": Row(lambda s, k: s.send("PUT", f"/fhir/{rtype}/{s.ids[k][rtype]}", json=current(s, k)),
                               (f"{rtype}.u",), other=403, deid=(403,)),
        f"conditional_update_{rtype}": Row(lambda s, k: s.send("PUT", f"/fhir/{rtype}?_id={s.ids[k][rtype]}",
                                                               json=current(s, k)),
                                           (f"{rtype}.us",), other=403, deid=(403,)),
        f"patch_{rtype}": Row(lambda s, k: s.send("PATCH", f"/fhir/{rtype}/{s.ids[k][rtype]}", json=_NO_CHANGE,
                                                  headers=_JSON_PATCH), (f"{rtype}.u",), other=403, deid=(403,)),
        f"conditional_patch_{rtype}": Row(lambda s, k: s.send("PATCH", f"/fhir/{rtype}?_id={s.ids[k][rtype]}",
                                                              json=_NO_CHANGE, headers=_JSON_PATCH),
                                          (f"{rtype}.us",), other=403, deid=(403,)),
        # $validate runs the write and rolls it back: the write's scope and study decide, as for the write
        f"validate_{rtype}": Row(lambda s, k: s.send("POST", f"/fhir/{rtype}/$validate", json=s.body_of(rtype, k)),
                                 (f"{rtype}.c",), other=200 if rtype == "Patient" else 403, deid=(403,),
                                 unlimited=study_level),
        f"validate_instance_{rtype}": Row(lambda s, k: s.send("POST", f"/fhir/{rtype}/{s.ids[k][rtype]}/$validate"
                                                              "?mode=update", json=current(s, k)),
                                          (f"{rtype}.u",), other=403, deid=(403,)),
        f"delete_{rtype}": Row(lambda s, k: s.send("DELETE", f"/fhir/{rtype}/{s.fresh(rtype, k)}"), (f"{rtype}.d",),
                               other=403, deid=(403,), unlimited=study_level),
        f"conditional_delete_{rtype}": Row(lambda s, k: s.send("DELETE", f"/fhir/{rtype}?_id={s.fresh(rtype, k)}"),
                                           (f"{rtype}.ds",), ok=(204,), other=403, deid=(403,),
                                           unlimited=study_level),
    }
    return rows


PER_TYPE: dict[str, Row] = {name: row for rtype in TYPES if TYPES[rtype].writable
                            for name, row in per_type(rtype).items()}
for _rtype in ("ConceptMap", "ObservationDefinition", "PlanDefinition"):  # terminology and catalogues: of no study,
    for _name, _row in per_type(_rtype).items():  # so a client limited to studies sees none; any client with the
        PER_TYPE[_name] = replace(_row, unlimited=True, other=None)  # scope reads and writes them
for _name, _row in per_type("AuditEvent").items():  # the trail: read and searched with AuditEvent scopes only, by a
    if _name.startswith(("read_", "vread_", "history_", "search_")):  # client not limited to studies (it belongs to
        PER_TYPE[_name] = replace(_row, unlimited=True, other=None)     # none)


for _name, _row in per_type("Subscription").items():  # subscribing to a topic needs the search scope of its type
    if _name in ("create_Subscription", "validate_Subscription"):  # (Observation here)
        _row = replace(_row, needs=(*_row.needs, "Observation.s"))
    if _name in ("create_Subscription", "update_Subscription", "delete_Subscription"):  # a de-identified client
        _row = replace(_row, deid=None)  # may subscribe and unsubscribe (its notifications are de-identified)
    PER_TYPE[_name] = _row
PER_TYPE["status_Subscription"] = Row(lambda s, k: s.send("GET", f"/fhir/Subscription/{s.ids[k]['Subscription']}"
                                                          "/$status"), ("Subscription.r",))
PER_TYPE["events_Subscription"] = Row(lambda s, k: s.send("GET", f"/fhir/Subscription/{s.ids[k]['Subscription']}"
                                                          "/$events"), ("Subscription.r",))


def _transaction(scene: Scene, key: str) -> Any:
    return scene.send("POST", "/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(scene.ids[key]["Patient"]), "request": {"method": "POST", "url": "Observation"}}]})


def _hl7(scene: Scene, key: str) -> Any:
    """An ORU^R01 of the study's patient (MRN-A or MRN-B), with a new MSH-10 each time (a resend is answered from
    the message table: tests/hl7)."""
    scene.messages = getattr(scene, "messages", 0) + 1
    message = oru(f"MRN-{key}", control_id=f"M{scene.messages}", filler=f"F{scene.messages}")
    return scene.send("POST", "/hl7/v2", content=message.encode(), headers={"Content-Type": "text/plain"})


def _figures(path: str) -> Row:
    return Row(lambda s, k: s.send("GET", path.format(study=s.ids[k]["ResearchStudy"])),
               ("Observation.r", "AdverseEvent.r", "ResearchSubject.r"))


def _sdtm(path: str) -> Row:
    """The study's CDISC datasets: subject-level data of every type they are made from."""
    return Row(lambda s, k: s.send("GET", path.format(study=s.ids[k]["ResearchStudy"])),
               ("ResearchStudy.r", "Patient.r", "ResearchSubject.r", "Observation.r", "AdverseEvent.r",
                "MedicationAdministration.r", "Procedure.r"))


def _public(path: str) -> Row:
    return Row(lambda s, k: s.send("GET", path), public=True)


def _terminology() -> dict[str, Row]:
    ad = "https://trial-fhir.org/CodeSystem/ad-scores"
    gets = {"lookup_CodeSystem": f"/fhir/CodeSystem/$lookup?system={ad}&code=EASI",
            "validate_code_CodeSystem": f"/fhir/CodeSystem/$validate-code?url={ad}&code=EASI",
            "validate_code_CodeSystem_instance": "/fhir/CodeSystem/ad-scores/$validate-code?code=EASI",
            "validate_code_ValueSet": "/fhir/ValueSet/$validate-code?url=https://trial-fhir.org/ValueSet/ad-scores"
                                      f"&system={ad}&code=EASI",
            "validate_code_ValueSet_instance": f"/fhir/ValueSet/ad-scores/$validate-code?system={ad}&code=EASI",
            "expand_ValueSet": "/fhir/ValueSet/$expand?url=https://trial-fhir.org/ValueSet/ad-scores",
            "expand_ValueSet_instance": "/fhir/ValueSet/ad-scores/$expand"}
    rows = {name: _public(url) for name, url in gets.items()}
    for name, url in gets.items():
        path, _, query = url.partition("?")
        body = {"resourceType": "Parameters", "parameter": [
            {"name": k, "valueString": v} for k, v in (p.split("=", 1) for p in query.split("&") if p)]}
        rows[f"{name}_post"] = Row(lambda s, k, path=path, body=body: s.send("POST", path, json=body), public=True)
    return rows


ROWS: dict[str, Row] = {
    "openapi": _public("/openapi.json"), "swagger_ui_html": _public("/docs"),
    "swagger_ui_redirect": _public("/docs/oauth2-redirect"), "redoc_html": _public("/redoc"),
    "healthz": _public("/healthz"), "readyz": _public("/readyz"), "capabilities": _public("/fhir/metadata"),
    # no access token opens it: loopback peers and TRIAL_FHIR_METRICS_TOKEN only (tests/ops/test_metrics.py); the
    # test client is neither
    "metrics": Row(lambda s, k: s.send("GET", "/metrics"), public=True, ok=(403,)),
    "read_CodeSystem": _public("/fhir/CodeSystem/ad-scores"), "search_CodeSystem": _public("/fhir/CodeSystem"),
    "read_ValueSet": _public("/fhir/ValueSet/ad-scores"), "search_ValueSet": _public("/fhir/ValueSet"),
    # terminology operations answer from the catalogues, never from stored data: public, as the CodeSystem is
    **_terminology(),
    "read_SearchParameter": _public("/fhir/SearchParameter/Observation-visit"),
    "search_SearchParameter": _public("/fhir/SearchParameter"),
    "smart_configuration": _public("/fhir/.well-known/smart-configuration"),
    "jwks": _public("/auth/jwks"),
    "token": Row(lambda s, k: s.send("POST", "/auth/token", data={"grant_type": "client_credentials"}), public=True,
                 ok=(400, 401)),  # the OAuth endpoint authenticates its clients itself (tests/auth/test_token.py)
    "transaction_or_batch": Row(_transaction, ("Observation.c",), other=403, deid=(403,)),
    # HL7 v2: the results are conditional updates of Observations and a Provenance, decided by the core as any write
    "receive_hl7_v2": Row(_hl7, ("Observation.cus", "Provenance.c"), other=403, deid=(403,)),
    # every version the token may read: any `r` scope lets it in; another study's versions never show
    "history_system": Row(lambda s, k: s.send("GET", "/fhir/_history?_count=1000"), other="hidden"),
    # a search of the patient's compartment: Patient.s lets it in (each other type is shown only with its own `s`)
    "everything_Patient": Row(lambda s, k: s.send("GET", f"/fhir/Patient/{s.id('Patient', k)}/$everything"),
                              ("Patient.s",)),
    "read_Group": Row(lambda s, k: s.send("GET", f"/fhir/Group/{s.ids[k]['Group']}"), ("Group.r",)),
    "search_Group": Row(lambda s, k: s.send("GET", f"/fhir/Group?_id={s.ids[k]['Group']}"), ("Group.s",),
                        other="hidden"),
    "read_summary": _figures("/studies/{study}/summary"),
    "read_summary_csv": _figures("/studies/{study}/summary.csv"),
    "summary_ResearchStudy": _figures("/fhir/ResearchStudy/{study}/$summary"),
    "read_chart": _figures("/studies/{study}/charts/EASI.svg"),
    "read_report": _figures("/studies/{study}/report"),
    "read_progress": _figures("/studies/{study}/progress"),
    "list_sdtm": _sdtm("/studies/{study}/sdtm"),
    "read_sdtm": _sdtm("/studies/{study}/sdtm/DM.json"),
    "list_adam": _sdtm("/studies/{study}/adam"),
    "read_adam": _sdtm("/studies/{study}/adam/ADSL.json"),
    # the dashboard's page and assets carry no data without a token (tests/dashboard: what a token shows)
    "dashboard": _public("/"),
    "dashboard_asset": _public("/dashboard/assets/dashboard.js"),
    # its studies (an HTML fragment): those the client may search, each piece only as far as its scopes go
    # (another study's is left out: tests/dashboard/test_dashboard_http.py)
    "dashboard_studies": Row(lambda s, k: s.send("GET", "/dashboard/studies"), ("ResearchStudy.s",), other=None),
    "export_system": Row(lambda s, k: s.send("GET", "/fhir/$export?_type=Observation",
                                             headers={"Prefer": "respond-async"}),
                         ("Observation.r",), ok=(202,), other=None),
    "export_group": Row(lambda s, k: s.send("GET", f"/fhir/Group/{s.ids[k]['Group']}/$export?_type=Observation",
                                            headers={"Prefer": "respond-async"}), ("Observation.r",), ok=(202,)),
    "export_system_post": Row(lambda s, k: s.send("POST", "/fhir/$export", json=_export_parameters(),
                                                  headers={"Prefer": "respond-async"}),
                              ("Observation.r",), ok=(202,), other=None),
    "export_group_post": Row(lambda s, k: s.send("POST", f"/fhir/Group/{s.ids[k]['Group']}/$export",
                                                 json=_export_parameters(), headers={"Prefer": "respond-async"}),
                             ("Observation.r",), ok=(202,)),
    # every patient the client may see (its studies'): no study in the URL
    "export_patient": Row(lambda s, k: s.send("GET", "/fhir/Patient/$export?_type=Observation",
                                              headers={"Prefer": "respond-async"}),
                          ("Observation.r",), ok=(202,), other=None),
    "export_patient_post": Row(lambda s, k: s.send("POST", "/fhir/Patient/$export", json=_export_parameters(),
                                                   headers={"Prefer": "respond-async"}),
                               ("Observation.r",), ok=(202,), other=None),
    # a job's URLs: the client that started it gets them, any other client 404 ("other": the admin's job)
    "export_status": Row(lambda s, k: s.send("GET", s.export_job(s.job_owner(k))),
                         ok=(202,), owned=True),
    "cancel_export": Row(lambda s, k: s.send("DELETE", s.export_job(s.job_owner(k))),
                         ok=(202,), owned=True),
    "download_export_file": Row(lambda s, k: _download(s, s.job_owner(k)), owned=True),
}


def _export_parameters() -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Observation"}]}


def _download(scene: Scene, token: str) -> Any:
    status = scene.finished_job(token)
    manifest = scene.client.get(status, headers={"Authorization": f"Bearer {token}"}).json()
    url = manifest["output"][0]["url"]
    return scene.send("GET", "/" + url.split("/", 3)[3])


def routes_of(app) -> Iterator[tuple[str, str, str]]:
    """(method, path, name) of every route of the app, included routers flattened."""
    def flat(routes):
        for route in routes:
            if hasattr(route, "effective_route_contexts"):
                yield from route.effective_route_contexts()
            else:
                yield route
    for route in flat(app.routes):
        for method in sorted(set(getattr(route, "methods", None) or ()) - {"HEAD"}):
            yield method, route.path, route.name


def all_rows() -> dict[str, Row]:
    return {**ROWS, **PER_TYPE}


def test_every_route_has_a_row(app):
    """The app's own route table: each route is in the matrix (and each row is a route)."""
    names = {name for _, _, name in routes_of(app)}
    missing = sorted(f"{m} {p} ({n})" for m, p, n in routes_of(app) if n not in all_rows())
    assert not missing, f"routes without an access row in {__file__}: {missing}"
    assert set(all_rows()) <= names, f"rows of no route: {sorted(set(all_rows()) - names)}"


def _scopes(needs: tuple[str, ...], without: tuple[str, str] | None = None) -> str:
    """The scope string granting `needs`; with `without` (type, letter): every scope of every type but that."""
    if without is None:
        return " ".join(f"system/{need}" for need in needs)
    rtype, letter = without
    return " ".join(f"system/{t}.{LETTERS.replace(letter, '') if t == rtype else LETTERS}"
                    for t in (*SCOPED, "AuditEvent"))


@pytest.fixture(params=["front-door", "routes"])
def scene(request, settings, tmp_path) -> Iterator[Scene]:
    from service.main import create_app
    app = create_app(settings.model_copy(update={"front_door": request.param == "front-door",
                                                 "hl7_authorities": {"SNUH": MRN}}))
    with TestClient(app) as client:
        yield Scene(client)


def _ids_in(response: Any) -> set[str]:
    return {e["resource"].get("id") for e in response.json().get("entry", [])}


def test_every_route_by_every_kind_of_caller(scene):
    failures = []

    def check(name: str, variant: str, row: Row, key: str, expected: Any) -> None:
        response = row.call(scene, key)
        status = response.status_code
        if expected == "hidden":  # answered, without any of study B's resources
            others = {rid for rtype, rid in scene.ids["B"].items() if rtype != "AuditEvent"}
            ok = status == 200 and not (_ids_in(response) & others)
        else:
            ok = status in (expected if isinstance(expected, tuple) else (expected,))
        if variant == "no token" and status == 401:
            ok = ok and response.headers.get("www-authenticate", "").startswith("Bearer")
        if variant == "wrong scope" and status == 403 and response.headers["content-type"].endswith("json"):
            issue = response.json()["issue"][0]
            ok = ok and issue["code"] == "forbidden" and "system/" in issue["diagnostics"]
        if not ok:
            failures.append(f"{name} [{variant}]: {status} (expected {expected}) {response.text[:160]}")

    for name, row in sorted(all_rows().items()):
        scene.deidentified = False
        scene.token = ""
        if row.public:
            check(name, "no token", row, "A", row.ok)
            continue
        check(name, "no token", row, "A", 401)
        right = scene.token_for(_scopes(row.needs) or "system/Observation.r",
                                () if row.unlimited else (scene.ids["A"]["ResearchStudy"],))
        for need in row.needs:
            rtype, letters = need.split(".")
            for letter in letters:
                scene.token = scene.token_for(_scopes((), without=(rtype, letter)),
                                              () if row.unlimited else (scene.ids["A"]["ResearchStudy"],))
                check(name, f"wrong scope (no {rtype}.{letter})", row, "A", 403)
        scene.token = right
        check(name, "right scope", row, "A", row.ok)
        if row.owned:  # another client's job: the admin's
            check(name, "another client's job", row, "B", 404)
        elif row.other is not None:
            limited = scene.token_for(_scopes(row.needs) or "system/Observation.r", (scene.ids["A"]["ResearchStudy"],))
            scene.token = limited
            check(name, "other study", row, "B", row.other)
        scene.token = scene.token_for(_scopes(row.needs) or "system/Observation.r",
                                      () if row.unlimited else (scene.ids["A"]["ResearchStudy"],), True)
        scene.deidentified = True
        check(name, "de-identified", row, "A", row.deid or row.ok)
    assert not failures, "\n".join(failures)
