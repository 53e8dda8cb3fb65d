"""The test that cannot be forgotten (issue 10): every route of the app's own route table, and the front door's
two, × {no token, wrong scope, right scope, other study, de-identified} → the expected status, with real tokens
from the built-in authorisation server (TRIAL_FHIR_AUTH=smart).

A route is matched to its row by its route name (`ROWS`, or `PER_TYPE` for the routes every stored type gets);
a route the table doesn't know fails `test_every_route_has_a_row`, so a new endpoint can't ship without its
access decision. The "wrong scope" token holds every scope *except* the one the row needs, so a row passes only
if that very scope is what lets the request in.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.core.registry import TYPES
from service.main import create_app
from tests.auth.tokens import get_token, register_client
from tests.factories import MRN, adverse_event, observation, patient, study, subject

LETTERS = "cruds"
ALL_TYPES = (*TYPES, "Group", "AuditEvent")


@dataclass(frozen=True)
class Row:
    """How to call one route and what it needs: `call(scene, study_key)` sends the request for the resources of
    study "A" (its own) or "B" (another's) and returns the response; `needs` the scopes (Type.letters) it needs;
    `ok` its status with the right scope; `other` its status (or "hidden": 200 without B's data) for another study's
    resources; `public` routes need no token at all."""

    call: Callable[["Scene", str], Any]
    needs: tuple[str, ...] = ()
    ok: tuple[int, ...] = (200,)
    other: int | str | None = 404
    public: bool = False
    deid_ok: tuple[int, ...] | None = None  # the status for a de-identified client, when not `ok`
    extra: dict[str, Any] = field(default_factory=dict)


class Scene:
    """Two studies, A and B, each with an enrolled patient, an Observation and an AdverseEvent, and a client
    whose token is swapped per request."""

    def __init__(self, client: TestClient, admin: str) -> None:
        self.client, self.admin, self.token = client, admin, ""
        self.ids: dict[str, dict[str, str]] = {}
        for name in ("A", "B"):
            sid = self.make("ResearchStudy", study(title=f"Study {name}"))
            pid = self.make("Patient", patient(f"MRN-{name}", name=[{"family": f"Kim{name}"}]))
            subj = self.make("ResearchSubject", subject(sid, pid))
            obs = self.make("Observation", observation(pid, identifier=[{"system": "urn:lab", "value": f"L-{name}"}]))
            ae = self.make("AdverseEvent", adverse_event(pid, sid))
            self.ids[name] = {"ResearchStudy": sid, "Patient": pid, "ResearchSubject": subj, "Observation": obs,
                              "AdverseEvent": ae, "Group": sid}

    def make(self, rtype: str, body: dict) -> str:
        r = self.client.post(f"/fhir/{rtype}", json=body, headers=self.auth(self.admin))
        assert r.status_code == 201, r.text
        return r.json()["id"]

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"} if token else {}

    def send(self, method: str, url: str, **kwargs) -> Any:
        headers = {**self.auth(self.token), **kwargs.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kwargs)

    def body_of(self, rtype: str, key: str, *, id: str | None = None) -> dict:
        pid = self.ids[key]["Patient"]
        sid = self.ids[key]["ResearchStudy"]
        bodies = {"Patient": patient(), "ResearchStudy": study(), "ResearchSubject": subject(sid, pid),
                  "Observation": observation(pid), "AdverseEvent": adverse_event(pid, sid)}
        body = bodies[rtype]
        return {**body, "id": id} if id else body

    def fresh(self, rtype: str, key: str) -> str:
        """A new resource of `rtype` in study `key`, made by the admin (for deletes)."""
        body = self.body_of(rtype, key)
        if rtype == "Patient":  # a patient is in a study by its enrolment
            pid = self.make("Patient", body)
            self.make("ResearchSubject", subject(self.ids[key]["ResearchStudy"], pid))
            return pid
        if rtype == "ResearchStudy":
            return self.make("ResearchStudy", body) if key == "B" else self.ids[key]["ResearchStudy"]
        return self.make(rtype, body)


def _per_type(rtype: str) -> dict[str, Row]:
    """The rows of the routes every stored type gets."""
    def ident(scene: Scene, key: str) -> str:
        return scene.ids[key][rtype]

    def new_in(key: str) -> bool:  # a new ResearchStudy is "in" no study the client has: creating one is a write
        return key == "B"          # outside its studies

    def create(scene: Scene, key: str) -> Any:
        return scene.send("POST", f"/fhir/{rtype}", json=scene.body_of(rtype, key))

    def delete(scene: Scene, key: str) -> Any:
        return scene.send("DELETE", f"/fhir/{rtype}/{scene.fresh(rtype, key)}")

    def conditional_delete(scene: Scene, key: str) -> Any:
        rid = scene.fresh(rtype, key)
        return scene.send("DELETE", f"/fhir/{rtype}?_id={rid}")

    def update(scene: Scene, key: str) -> Any:
        rid = ident(scene, key)
        body = scene.client.get(f"/fhir/{rtype}/{rid}", headers=scene.auth(scene.admin)).json()
        return scene.send("PUT", f"/fhir/{rtype}/{rid}", json=body)

    def conditional_update(scene: Scene, key: str) -> Any:
        rid = ident(scene, key)
        body = scene.client.get(f"/fhir/{rtype}/{rid}", headers=scene.auth(scene.admin)).json()
        return scene.send("PUT", f"/fhir/{rtype}?_id={rid}", json=body)

    writes_other = 403
    return {
        f"read_{rtype}": Row(lambda s, k: s.send("GET", f"/fhir/{rtype}/{ident(s, k)}"), (f"{rtype}.r",)),
        f"vread_{rtype}": Row(lambda s, k: s.send("GET", f"/fhir/{rtype}/{ident(s, k)}/_history/1"),
                              (f"{rtype}.r",)),
        f"history_{rtype}": Row(lambda s, k: s.send("GET", f"/fhir/{rtype}/{ident(s, k)}/_history"),
                                (f"{rtype}.r",)),
        f"search_{rtype}": Row(lambda s, k: s.send("GET", f"/fhir/{rtype}?_id={ident(s, k)}"), (f"{rtype}.s",),
                               other="hidden", extra={"front_door": True}),
        f"search_{rtype}_post": Row(lambda s, k: s.send("POST", f"/fhir/{rtype}/_search", data={"_id": ident(s, k)}),
                                    (f"{rtype}.s",), other="hidden"),
        f"create_{rtype}": Row(create, (f"{rtype}.c",), ok=(201,), other=writes_other,
                               extra={"front_door": True}),
        f"update_{rtype}": Row(update, (f"{rtype}.u",), other=writes_other),
        f"conditional_update_{rtype}": Row(conditional_update, (f"{rtype}.us",), other=writes_other),
        f"delete_{rtype}": Row(delete, (f"{rtype}.d",), ok=(200, 204), other=writes_other),
        f"conditional_delete_{rtype}": Row(conditional_delete, (f"{rtype}.ds",), ok=(204,), other=writes_other),
    }


PER_TYPE: dict[str, Row] = {name: row for rtype in TYPES for name, row in _per_type(rtype).items()}


def _transaction(scene: Scene, key: str) -> Any:
    pid = scene.ids[key]["Patient"]
    return scene.send("POST", "/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(pid), "request": {"method": "POST", "url": "Observation"}}]})


def _figures(path: str) -> Row:
    return Row(lambda s, k: s.send("GET", path.format(study=s.ids[k]["ResearchStudy"])),
               ("Observation.r", "AdverseEvent.r", "ResearchSubject.r"))


ROWS: dict[str, Row] = {
    **{name: Row(lambda s, k, p=path: s.send("GET", p), public=True)
       for name, path in (("openapi", "/openapi.json"), ("swagger_ui_html", "/docs"),
                          ("swagger_ui_redirect", "/docs/oauth2-redirect"), ("redoc_html", "/redoc"),
                          ("healthz", "/healthz"), ("capabilities", "/fhir/metadata"),
                          ("read_CodeSystem", "/fhir/CodeSystem/ad-scores"), ("search_CodeSystem", "/fhir/CodeSystem"),
                          ("read_SearchParameter", "/fhir/SearchParameter/Observation-visit"),
                          ("search_SearchParameter", "/fhir/SearchParameter"))},
    "transaction_or_batch": Row(_transaction, ("Observation.c",), other=403),
    "read_Group": Row(lambda s, k: s.send("GET", f"/fhir/Group/{s.ids[k]['Group']}"), ("Group.r",)),
    "search_Group": Row(lambda s, k: s.send("GET", f"/fhir/Group?_id={s.ids[k]['Group']}"), ("Group.s",),
                        other="hidden"),
    "read_summary": _figures("/studies/{study}/summary"),
    "read_summary_csv": _figures("/studies/{study}/summary.csv"),
    "summary_ResearchStudy": _figures("/fhir/ResearchStudy/{study}/$summary"),
    "read_chart": _figures("/studies/{study}/charts/EASI.svg"),
    "read_report": _figures("/studies/{study}/report"),
}


def test_every_route_has_a_row(app):
    """The app's own route table, flattened: each route (and method) is in the matrix."""
    missing = [f"{method} {path} ({name})" for method, path, name in routes_of(app)
               if name not in ROWS and name not in PER_TYPE]
    assert not missing, f"routes without an access row in tests/api/test_access_matrix.py: {missing}"


def routes_of(app) -> Iterator[tuple[str, str, str]]:
    def flat(routes):
        for route in routes:
            if hasattr(route, "effective_route_contexts"):  # an included router
                yield from route.effective_route_contexts()
            else:
                yield route
    for route in flat(app.routes):
        for method in sorted(set(getattr(route, "methods", None) or ()) - {"HEAD"}):
            yield method, route.path, route.name
