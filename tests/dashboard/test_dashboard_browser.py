"""The dashboard in a real headless browser: Playwright driving Debian's Chromium (`/usr/bin/chromium`, no browser
download) against a real uvicorn server on 127.0.0.1, with access control off and on (a token typed into the
page, sent in an Authorization header). Screenshots are kept as artefacts (TRIAL_FHIR_TEST_ARTIFACTS, default
tests/artifacts/, git-ignored); every request any page makes is checked to stay on the host.

Skipped when Chromium or Playwright is missing, unless TRIAL_FHIR_REQUIRE_CHROMIUM=1 (CI), which makes it fail.
"""

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.auth.tokens import ASSERTION_TYPE, assertion, register_client
from tests.dashboard.test_dashboard_http import FIGURES, smart  # noqa: F401  (the fixture)
from tests.factories import created, study
from tests.servers import served
from tests.stats.test_progress import progress_study  # noqa: F401  (the fixture)

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
try:
    import playwright.sync_api  # noqa: F401
    PLAYWRIGHT = True
except ImportError:  # pragma: no cover (the test extra installs it)
    PLAYWRIGHT = False
# CI sets TRIAL_FHIR_REQUIRE_CHROMIUM=1 (and installs both), so a missing browser fails there instead of skipping
pytestmark = pytest.mark.skipif((CHROMIUM is None or not PLAYWRIGHT)
                                and os.environ.get("TRIAL_FHIR_REQUIRE_CHROMIUM") != "1",
                                reason="headless Chromium or Playwright is not installed")
ARTIFACTS = Path(os.environ.get("TRIAL_FHIR_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")
ON_THE_PAGE = ("blob:", "data:", "about:")  # what a page makes itself: never a request to another host


@dataclass
class Browsing:
    """One browser context on the served app: every request its pages made, their script errors, screenshots."""

    context: Any
    base: str
    requests: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def new_page(self) -> Any:
        page = self.context.new_page()
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        return page

    def shot(self, page: Any, name: str, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.png"
        page.screenshot(path=str(path), full_page=full_page)
        assert path.stat().st_size > 10_000, "a blank screenshot"
        return path

    def off_host(self) -> list[str]:
        return [r.url for r in self.requests if not r.url.startswith((self.base + "/", *ON_THE_PAGE))]


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


def browsing(browser: Any, base: str) -> Browsing:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    seen = Browsing(context, base)
    context.on("request", lambda request: seen.requests.append(request))  # every page of the context, popups too
    return seen


def _cell(page: Any, sid: str, row: str, column: int) -> str:
    return page.locator(f'section[data-study="{sid}"] tr[{row}] td:nth-child({column})').inner_text().strip()


def _token_over_http(base: str, client_id: str, key: Any, scope: str) -> str:
    """A token from the served app's token endpoint, as a client of that address asks for it (its audience)."""
    response = httpx.post(f"{base}/auth/token", data={
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(client_id, key, aud=f"{base}/auth/token"), "scope": scope})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _link(page: Any, sid: str, name: str) -> Any:
    return page.locator(f'section[data-study="{sid}"]').get_by_role("link", name=name, exact=True)


def test_the_dashboard_in_chromium_without_access_control(client, app, progress_study, browser):  # noqa: F811
    sid = progress_study["study"]
    other = created(client.post("/fhir/ResearchStudy", json=study(title="Another study")))["id"]
    with served(app) as base:
        seen = browsing(browser, base)
        page = seen.new_page()
        page.goto(base + "/")
        page.wait_for_selector(f'section[data-study="{sid}"]')
        assert page.locator("section.study").count() == 2 and page.locator("#token-form").count() == 0
        assert page.locator(f'section[data-study="{sid}"] h2').inner_text() == "Progress study"
        assert _cell(page, sid, 'data-arm="high-dose"', 5) == "1"  # withdrawn
        assert _cell(page, sid, 'data-visit="week-12"', 7) == "1"  # overdue
        assert _cell(page, sid, 'data-seriousness="serious"', 2) == "1"
        assert "IU/mL" in page.locator(f'section[data-study="{sid}"] .latest').inner_text()
        # styled by its own stylesheet (served by the service): the cards are laid out as a grid
        assert page.locator(".grid").first.evaluate("e => getComputedStyle(e).display") == "grid"
        seen.shot(page, "dashboard-auth-off")

        # the report opens in a new window, as a plain link (no token needed)
        with page.expect_popup() as opened:
            _link(page, sid, "Report").click()
        report = opened.value
        report.wait_for_selector("h1")
        assert report.locator("h1").inner_text() == "Progress study"
        assert "Serum total IgE (IU/mL)" in report.inner_text("body")
        seen.shot(report, "report-auth-off")

        # Bulk export: the kick-off is sent, the status URL shown
        page.locator(f'section[data-study="{sid}"] button[data-export]').click()
        status = page.locator(f'section[data-study="{sid}"] output.export-status')
        status.filter(has_text="Export started").wait_for()
        assert "/fhir/$export-status/" in status.inner_text()
        assert page.locator(f'section[data-study="{other}"] .latest').inner_text().endswith("No result yet.")
        seen.context.close()
    assert not seen.errors, seen.errors
    assert not seen.off_host(), seen.off_host()
    assert {r.url for r in seen.requests} >= {base + "/", base + "/dashboard/assets/dashboard.js",
                                              base + "/dashboard/assets/dashboard.css"}


def test_the_dashboard_in_chromium_with_a_token(client, smart, progress_study, browser):  # noqa: F811
    sid = progress_study["study"]
    other = created(client.post("/fhir/ResearchStudy", json=study(title="Another study")))["id"]
    scope = f"system/ResearchStudy.rs {FIGURES}"
    client_id, key = register_client(smart.app.state.engine, scope, (sid,))
    with served(smart.app) as base:
        token = _token_over_http(base, client_id, key, scope)
        seen = browsing(browser, base)
        page = seen.new_page()
        page.goto(base + "/")
        form = page.locator("#token-form")
        assert form.is_visible() and page.locator("section.study").count() == 0
        seen.shot(page, "dashboard-asks-for-a-token")

        page.fill("#token", "not-a-token")
        page.click("#token-form button")
        page.locator("#status.error").wait_for()
        assert page.locator("#status").inner_text().startswith("401")

        page.fill("#token", token)
        page.click("#token-form button")
        page.wait_for_selector(f'section[data-study="{sid}"]')
        assert page.locator("section.study").count() == 1 and other not in page.content()
        assert page.input_value("#token") == ""  # not left in the form
        assert _cell(page, sid, 'data-visit="baseline"', 8) == "1"  # awaiting
        seen.shot(page, "dashboard-with-a-token")

        # the report and a chart, fetched with the token and opened as blobs in new windows
        with page.expect_popup() as opened:
            _link(page, sid, "Report").click()
        report = opened.value
        report.wait_for_url("blob:**")
        report.wait_for_selector("h1")
        assert report.locator("h1").inner_text() == "Progress study"
        # its own inline stylesheet applies in the blob window too (the dashboard's policy lets inline styles in)
        assert report.locator("table").first.evaluate("e => getComputedStyle(e).borderCollapse") == "collapse"
        seen.shot(report, "report-with-a-token")
        with page.expect_popup() as opened:
            _link(page, sid, "IGE (IU/mL)").click()
        chart = opened.value
        chart.wait_for_url("blob:**")
        chart.wait_for_selector("svg")
        assert "Progress study" in (chart.locator("svg").text_content() or "") and "IU/mL" in chart.content()
        seen.shot(chart, "chart-with-a-token", full_page=False)  # an SVG document: its viewport
        seen.context.close()
    assert not seen.errors, seen.errors
    assert not seen.off_host(), seen.off_host()
    fetched = [r for r in seen.requests if r.url.startswith(base + "/dashboard/studies")]
    assert [r.headers.get("authorization") for r in fetched] == ["Bearer not-a-token", f"Bearer {token}"]
    assert not any("cookie" in r.headers for r in seen.requests)  # cookie-less
