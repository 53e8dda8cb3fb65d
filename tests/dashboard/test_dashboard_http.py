"""The dashboard over HTTP, without a browser, on both databases: what `/` shows of each study (enrolment, data
completeness per visit, adverse events by seriousness, latest results with units as people write them, links), its
assets, its headers, and the access rules with TRIAL_FHIR_AUTH=smart (a token per request, never a cookie)."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.auth.tokens import get_token, register_client
from tests.dashboard.page import Page
from tests.factories import created, study
from tests.stats.test_progress import progress_study  # noqa: F401  (the fixture)

FIGURES = "system/Observation.rs system/AdverseEvent.r system/ResearchSubject.r"


def test_the_page_shows_each_study_with_its_figures(client, progress_study):  # noqa: F811
    other = created(client.post("/fhir/ResearchStudy", json=study(title="Another study")))["id"]
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = Page(response.text)
    sid = progress_study["study"]
    assert set(page.studies) == {sid, other}
    shown = page.studies[sid]
    assert shown.title == "Progress study"
    assert "NCT00000042" in " ".join(page.text)
    # enrolment per arm: enrolled, completed, withdrawn
    assert shown.rows[("arm", "high-dose")][2:] == ["3", "0", "1"]
    assert shown.rows[("arm", "low-dose")][2:] == ["1", "0", "0"]
    # completeness per visit: window, due, expected, received, complete, overdue, open
    assert shown.rows[("visit", "baseline")] == ["baseline", "-30…0", "4", "28", "4", "14% 14%", "0", "1"]
    assert shown.rows[("visit", "week-12")] == ["week-12", "70…98", "1", "7", "0", "0% 0%", "1", "0"]
    assert shown.rows[("seriousness", "serious")] == ["serious", "1", "1"]
    assert shown.rows[("seriousness", "non-serious")] == ["non-serious", "2", "1"]
    # latest results, newest first, the unit as people write it
    assert [r[2] for r in shown.latest][:2] == ["EASI", "EASI"]
    ige = next(r for r in shown.latest if r[2] == "Serum total IgE")
    assert ige[3:6] == ["150", "IU/mL", "baseline"]
    assert [r[5] for r in shown.latest].count("unscheduled") == 1
    # the study's links: report, summaries, charts (units as people write them), Bulk export, and the slots
    assert shown.links["Report"] == f"/studies/{sid}/report"
    assert shown.links["Summary CSV"] == f"/studies/{sid}/summary.csv"
    assert shown.links["Summary JSON"] == f"/studies/{sid}/summary"
    assert shown.links["MeasureReport"] == f"/fhir/ResearchStudy/{sid}/$summary"
    assert shown.links["IGE (IU/mL)"] == f"/studies/{sid}/charts/IGE.svg"
    assert shown.links["EOSINOPHILS (×10³/µL)"] == f"/studies/{sid}/charts/EOSINOPHILS.svg"
    assert shown.links["EASI-50"] == f"/studies/{sid}/charts/EASI-50.svg"
    assert shown.exports == [f"/fhir/Group/{sid}/$export"]
    assert shown.slots == ["sdtm", "subscriptions", "sync"]
    for href in shown.links.values():  # every link answers
        assert client.get(href).status_code == 200, href
    # an empty study: its cards say so
    assert page.studies[other].latest == [] and not page.studies[other].refused
    # nothing from another host: every URL the page names is this service's
    assert page.loads and all(url.startswith(("/", "#", "data:")) for url in page.loads), page.loads


def test_the_page_is_served_with_a_policy_that_loads_nothing_from_elsewhere(client):
    response = client.get("/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "default-src 'none'" in policy
    assert "http" not in policy
    assert response.headers["cache-control"] == "no-store"
    page = Page(response.text)
    assert "/dashboard/assets/dashboard.js" in page.loads and "/dashboard/assets/dashboard.css" in page.loads
    assert "token-form" not in page.ids  # access control off: no token asked for
    assert "no-studies" in page.ids


def test_assets_are_served_from_the_package(client):
    js = client.get("/dashboard/assets/dashboard.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "Authorization" in js.text and "cookie" not in js.text.replace("never a cookie", "")
    css = client.get("/dashboard/assets/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "url(" not in css.text and "@import" not in css.text  # nothing more to load
    for name in ("nothing.js", "..%2Fservice.py", "dashboard.html"):
        missing = client.get(f"/dashboard/assets/{name}")
        assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


def test_the_fragment_is_what_the_page_shows(client, progress_study):  # noqa: F811
    fragment = Page(client.get("/dashboard/studies").text)
    page = Page(client.get("/").text)
    assert fragment.studies == page.studies


# --- TRIAL_FHIR_AUTH=smart: the page asks for a token; what a token shows ---------------------------------------


@pytest.fixture
def smart(client, settings) -> Iterator[TestClient]:
    """The same database served with access control on (the studies were made through `client`, auth off)."""
    from service.main import create_app
    with TestClient(create_app(settings.model_copy(update={"auth": "smart"}))) as smart_client:
        yield smart_client


def _token(smart: TestClient, scope: str, studies: tuple[str, ...] = (), deidentified: bool = False) -> str:
    client_id, key = register_client(smart.app.state.engine, scope, studies, deidentified)
    return get_token(smart, client_id, key, scope)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_without_a_token_the_page_holds_no_data_and_asks_for_one(client, smart, progress_study):  # noqa: F811
    page = smart.get("/")
    assert page.status_code == 200
    parsed = Page(page.text)
    assert "token-form" in parsed.ids and not parsed.studies
    assert "Progress study" not in page.text and progress_study["study"] not in page.text
    refused = smart.get("/dashboard/studies")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert smart.get("/", headers=_bearer("not-a-token")).status_code == 401


def test_a_token_shows_only_its_own_studies(client, smart, progress_study):  # noqa: F811
    other = created(client.post("/fhir/ResearchStudy", json=study(title="Another study")))["id"]
    sid = progress_study["study"]
    token = _token(smart, f"system/ResearchStudy.rs {FIGURES}", (sid,))
    with smart.app.state.engine.connect() as conn:
        before = conn.execute(text("SELECT count(*) FROM resource WHERE resource_type = 'AuditEvent'")).scalar()
    fragment = smart.get("/dashboard/studies", headers=_bearer(token))
    assert fragment.status_code == 200
    shown = Page(fragment.text)
    assert set(shown.studies) == {sid} and other not in fragment.text
    assert shown.studies[sid].rows[("arm", "high-dose")][2:] == ["3", "0", "1"]
    assert shown.studies[sid].latest and not shown.studies[sid].refused
    with smart.app.state.engine.connect() as conn:
        after = conn.execute(text("SELECT count(*) FROM resource WHERE resource_type = 'AuditEvent'")).scalar()
    assert after - before >= 4  # audited as the API is: the study search, summary, progress, result search
    # a token sent with the page itself (a gateway, curl): the studies are rendered into it
    page = Page(smart.get("/", headers=_bearer(token)).text)
    assert set(page.studies) == {sid} and "token-form" not in page.ids
    # an unrestricted client sees both
    everyone = _token(smart, f"system/ResearchStudy.rs {FIGURES}")
    assert set(Page(smart.get("/dashboard/studies", headers=_bearer(everyone)).text).studies) == {sid, other}


def test_a_token_without_figure_scopes_sees_the_study_not_its_figures(client, smart, progress_study):  # noqa: F811
    sid = progress_study["study"]
    token = _token(smart, "system/ResearchStudy.rs", (sid,))
    shown = Page(smart.get("/dashboard/studies", headers=_bearer(token)).text).studies[sid]
    assert not shown.rows and not shown.latest
    assert any(r.startswith("Figures:") and "system/" in r for r in shown.refused)
    assert any(r.startswith("Latest results:") and "system/Observation.s" in r for r in shown.refused)


def test_a_token_that_may_not_search_studies_is_refused(client, smart, progress_study):  # noqa: F811
    token = _token(smart, FIGURES)
    refused = smart.get("/dashboard/studies", headers=_bearer(token))
    assert refused.status_code == 403
    assert refused.json()["issue"][0]["code"] == "forbidden" and "ResearchStudy" in refused.text


def test_a_de_identified_token_sees_suppressed_counts_and_pseudonyms(client, smart, progress_study):  # noqa: F811
    sid = progress_study["study"]
    token = _token(smart, f"system/ResearchStudy.rs {FIGURES} system/Patient.rs", (sid,), deidentified=True)
    response = smart.get("/dashboard/studies", headers=_bearer(token))
    assert response.status_code == 200
    shown = Page(response.text).studies[sid]
    k = smart.app.state.settings.deid_min_cell
    assert f"&lt;{k}" in response.text or f"<{k}" in " ".join(c for r in shown.rows.values() for c in r)
    with smart.app.state.engine.connect() as conn:
        patients = [r[0] for r in conn.execute(text("SELECT id FROM patient"))]
    assert patients and not any(p in response.text for p in patients)  # subjects named by pseudonyms only
