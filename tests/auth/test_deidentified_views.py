"""A client registered with --deidentified, over HTTP with a real token, on every read path: Patients without
identity and named by a stable pseudonym (reads by it work, the real id is unknown), references rewritten to it
everywhere, dates shifted by one offset per patient, security labels, k-suppressed figures; and refused tokens
leave an audit record. Front door on and off."""

from datetime import date
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.main import create_app
from tests.auth.tokens import get_token, register_client
from tests.factories import adverse_event, observation, patient, study, subject

SCOPE = "system/*.rs"


@pytest.fixture(params=["front-door", "routes"])
def client(request, settings):
    app = create_app(settings.model_copy(update={"front_door": request.param == "front-door"}))
    with TestClient(app) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def scene(client) -> dict[str, Any]:
    admin_id, admin_key = register_client(client.app.state.engine, "system/*.cruds")
    admin = bearer(get_token(client, admin_id, admin_key, "system/*.cruds"))

    def make(rtype: str, body: dict) -> str:
        r = client.post(f"/fhir/{rtype}", json=body, headers=admin)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    sid = make("ResearchStudy", study())
    pid = make("Patient", patient("MRN-DEID-1", name=[{"family": "Kim", "given": ["Ji-woo"]}],
                                  telecom=[{"system": "phone", "value": "010-1234-5678"}], birthDate="1990-05-17",
                                  text={"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Kim</div>"}))
    make("ResearchSubject", subject(sid, pid, day0="2024-01-10"))
    obs = make("Observation", observation(pid, date="2024-01-10", note=[{"text": "seen by Dr Park"}]))
    later = make("Observation", observation(pid, date="2024-02-07"))
    ae = make("AdverseEvent", adverse_event(pid, sid, date="2024-01-20"))
    client_id, key = register_client(client.app.state.engine, SCOPE, [sid], deidentified=True)
    return {"client": client, "admin": admin, "deid": bearer(get_token(client, client_id, key, SCOPE)),
            "study": sid, "patient": pid, "obs": obs, "later": later, "ae": ae}


def test_patients_are_pseudonymous_and_dates_shift_together(scene):
    client, deid = scene["client"], scene["deid"]
    found = client.get("/fhir/Observation?_include=Observation:subject&_count=10", headers=deid)
    assert found.status_code == 200, found.text
    entries = {e["resource"]["resourceType"] + "/" + e["resource"]["id"]: e["resource"]
               for e in found.json()["entry"]}
    patients = [r for k, r in entries.items() if k.startswith("Patient/")]
    assert len(patients) == 1
    person = patients[0]
    pseudonym = person["id"]
    assert pseudonym != scene["patient"] and pseudonym.startswith("pseudo-")
    for gone in ("name", "telecom", "identifier", "text", "address"):
        assert gone not in person
    assert person["birthDate"] == "1990"
    assert {c["code"] for c in person["meta"]["security"]} >= {"PSEUDED", "REDACTED"}
    text_of_page = found.text
    assert scene["patient"] not in text_of_page and "Kim" not in text_of_page and "MRN-DEID-1" not in text_of_page
    first, second = entries[f"Observation/{scene['obs']}"], entries[f"Observation/{scene['later']}"]
    assert first["subject"]["reference"] == f"Patient/{pseudonym}" and "note" not in first
    shifted = [date.fromisoformat(o["effectiveDateTime"][:10]) for o in (first, second)]
    assert shifted[0] != date(2024, 1, 10)
    assert (shifted[1] - shifted[0]).days == 28  # the interval between visits is exact
    event = client.get(f"/fhir/AdverseEvent/{scene['ae']}", headers=deid).json()
    assert (date.fromisoformat(event["date"][:10]) - shifted[0]).days == 10  # same offset, another resource

    # the pseudonym is the Patient's id for this client: read, history and search by it; the real id is unknown
    read = client.get(f"/fhir/Patient/{pseudonym}", headers=deid)
    assert read.status_code == 200 and read.json()["id"] == pseudonym and "name" not in read.json()
    assert client.get(f"/fhir/Patient/{scene['patient']}", headers=deid).status_code == 404
    history = client.get(f"/fhir/Patient/{pseudonym}/_history", headers=deid)
    assert history.status_code == 200 and scene["patient"] not in history.text
    by_subject = client.get(f"/fhir/Observation?subject=Patient/{pseudonym}", headers=deid).json()
    assert {e["resource"]["id"] for e in by_subject["entry"]} == {scene["obs"], scene["later"]}
    group = client.get(f"/fhir/Group/{scene['study']}", headers=deid).json()
    assert [m["entity"]["reference"] for m in group["member"]] == [f"Patient/{pseudonym}"]


def test_figures_of_few_subjects_are_suppressed_and_writes_refused(scene):
    client, deid = scene["client"], scene["deid"]
    summary = client.get(f"/studies/{scene['study']}/summary", headers=deid)
    assert summary.status_code == 200
    assert summary.json()["min_cell"] == 5
    arms = {a["name"]: a for a in summary.json()["arms"]}
    high = arms["high-dose"]  # its one subject: below k = 5, so the arm is suppressed whole
    assert high["suppressed"] and high["enrolled"] is None and all(m["n"] is None for m in high["measures"])
    assert arms["low-dose"]["enrolled"] == 0  # an empty cell reveals no one
    full = client.get(f"/studies/{scene['study']}/summary", headers=scene["admin"]).json()
    assert full["min_cell"] is None
    assert any(a["enrolled"] == 1 and not a["suppressed"] for a in full["arms"])
    refused = client.post("/fhir/Observation", json=observation(scene["patient"]), headers=deid)
    assert refused.status_code == 403


def test_refused_tokens_are_audited(client):
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic eDp5"}):
        response = client.get("/fhir/Patient", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    with client.app.state.engine.connect() as conn:
        outcomes = conn.execute(text("SELECT outcome, client FROM audit_event ORDER BY seq")).all()
    assert [(o, c) for o, c in outcomes] == [("4", "unauthenticated")] * 3


def test_everything_names_the_patient_by_its_pseudonym_only(scene):
    """Patient/$everything for a de-identified client: asked by the pseudonym, answered with it everywhere (links and
    cursors included); the real id is nowhere in any page."""
    client, deid, pid = scene["client"], scene["deid"], scene["patient"]
    pseudonym = client.app.state.core.deidentifier().pseudonym(pid)
    assert client.get(f"/fhir/Patient/{pid}/$everything", headers=deid).status_code == 404  # the real id is unknown
    url: str | None = f"/fhir/Patient/{pseudonym}/$everything?_count=1"
    seen = []
    while url:
        page = client.get(url, headers=deid)
        assert page.status_code == 200, page.text
        assert pid not in page.text
        body = page.json()
        seen += [e["resource"]["resourceType"] for e in body.get("entry", [])]
        url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
    assert sorted(seen) == ["AdverseEvent", "Observation", "Observation", "Patient", "ResearchStudy",
                            "ResearchSubject"]
