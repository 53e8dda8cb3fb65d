"""Security hygiene over HTTP (issue 10), each test with the front door on and off: security headers on every
answer, CORS by setting, and the public base URL only from TRIAL_FHIR_BASE_URL or a trusted proxy."""

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from service.api.http import client_address
from service.api.security_headers import API_CSP, DOCUMENT_CSP
from service.main import create_app
from tests.factories import created, patient, study

PORTAL = "https://portal.example.org"
PROXY = ("10.0.0.7", 40000)


@pytest.fixture(params=[True, False], ids=["front-door", "routes"])
def serve(settings, request) -> Iterator[Callable[..., TestClient]]:
    """`serve(client=…, url=…, **settings)`: a client (peer address, its base URL) of the app with those settings,
    front door on or off."""
    with ExitStack() as stack:
        def make(client: tuple[str, int] = ("testclient", 50000), url: str = "http://testserver",
                 **overrides) -> TestClient:
            app = create_app(settings.model_copy(update={"front_door": request.param, **overrides}))
            assert (app.front_door is not None) == request.param
            return stack.enter_context(TestClient(app, client=client, base_url=url,
                                                  raise_server_exceptions=False))
        yield make


def assert_secured(response, *, no_store: bool = True, csp: bytes | str = API_CSP, hsts: bool = False) -> None:
    where = f"{response.request.method} {response.request.url}"
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff", where
    assert headers["x-frame-options"] == "DENY", where
    assert headers["referrer-policy"] == "no-referrer", where
    assert headers["content-security-policy"] == (csp.decode() if isinstance(csp, bytes) else csp), where
    assert headers.get_list("cache-control") == (["no-store"] if no_store else []), where
    assert ("strict-transport-security" in headers) == hsts, where
    assert "server" not in headers, where


def test_every_kind_of_answer_carries_the_security_headers(serve):
    client = serve()
    made = client.post("/fhir/Patient", json=patient("MRN-SEC-1"))  # the front door's create
    assert made.status_code == 201
    assert_secured(made)
    pid = made.json()["id"]
    assert_secured(client.get("/fhir/Patient?identifier=urn:oid:1.2.410.200001.1|MRN-SEC-1"))  # its search
    assert_secured(client.get("/fhir/Patient?identifier=x", headers={"Accept": "application/xml"}))  # its 406
    assert_secured(client.post("/fhir/Patient", content=b"{", headers={"Content-Type": "application/fhir+json"}))
    assert_secured(client.get(f"/fhir/Patient/{pid}"))  # routed: read, 404, history, delete
    assert_secured(client.get("/fhir/Patient/nobody"))
    assert_secured(client.get(f"/fhir/Patient/{pid}/_history"))
    assert_secured(client.get("/export-files/no-job/Patient.ndjson"))  # patient data even when it is missing
    assert_secured(client.get("/healthz"))  # not a public document: no-store does no harm there
    assert_secured(client.delete(f"/fhir/Patient/{pid}"))
    # the public documents may be cached
    assert_secured(client.get("/fhir/metadata"), no_store=False)
    assert_secured(client.get("/openapi.json"), no_store=False)


def test_the_study_pages_and_figures_are_never_stored(serve):
    client = serve()
    study_id = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    report = client.get(f"/studies/{study_id}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert_secured(report, csp=DOCUMENT_CSP)
    # what the report's page needs: its inline <style>, inline SVG; nothing loaded from anywhere
    assert "<script" not in report.text and not re.search(r'(?:src|href)="https?:', report.text)
    assert_secured(client.get(f"/studies/{study_id}/charts/EASI.svg"), csp=DOCUMENT_CSP)
    for path in ("summary", "summary.csv"):
        assert_secured(client.get(f"/studies/{study_id}/{path}"))
    assert_secured(client.get(f"/fhir/ResearchStudy/{study_id}/$summary"))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_everything_from_this_host(serve, page):
    """Swagger UI and ReDoc work on a network without the internet (issue 14): every script, stylesheet and icon the
    page names is a path of this host, each of them is served, and the CSP names no other origin."""
    client = serve()
    response = client.get(page)
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert_secured(response, no_store=False, csp=csp)
    directives = {d.split()[0]: set(d.split()[1:]) for d in csp.split("; ")}
    assert directives["default-src"] == {"'none'"} and directives["frame-ancestors"] == {"'none'"}
    assert directives["connect-src"] == {"'self'"}  # the page fetches /openapi.json from here, nothing else
    assert "'self'" in directives["script-src"]
    assert not re.search(r"https?:|//", " ".join(o for sources in directives.values() for o in sources))
    loaded = re.findall(r'<(?:script|link)[^>]*?(?:src|href)="([^"]+)"', response.text)
    assert any(url.endswith(".js") for url in loaded)
    for url in loaded:
        assert url.startswith("/docs/static/"), url  # nothing from a CDN
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
        assert_secured(asset, no_store=False, csp=asset.headers["content-security-policy"])  # cacheable
    assert "'/openapi.json'" in response.text or '"/openapi.json"' in response.text


def test_strict_transport_security_only_over_tls(serve):
    assert_secured(serve(url="https://testserver").get("/fhir/metadata"), no_store=False, hsts=True)
    assert_secured(serve().get("/fhir/metadata"), no_store=False)
    forwarded = {"X-Forwarded-Proto": "https"}
    # a client saying it used TLS is not believed; the trusted proxy in front is
    assert_secured(serve(trusted_proxies=["10.0.0.0/24"]).get("/fhir/Patient", headers=forwarded))
    assert_secured(serve(client=PROXY, trusted_proxies=["10.0.0.0/24"]).get("/fhir/Patient", headers=forwarded),
                   hsts=True)


# --- CORS ----------------------------------------------------------------------------------------------------

def preflight(client: TestClient, origin: str, method: str = "POST"):
    return client.options("/fhir/Patient", headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, prefer, if-none-exist"})


def test_cors_preflight_answers_listed_origins_only(serve):
    client = serve(cors_origins=[PORTAL])
    allowed = preflight(client, PORTAL)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == PORTAL
    assert {"GET", "POST", "PUT", "DELETE"} <= {m.strip() for m in allowed.headers["access-control-allow-methods"]
                                                .split(",")}
    allowed_headers = {h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "prefer", "if-match", "if-none-exist", "if-none-match"} <= allowed_headers
    assert int(allowed.headers["access-control-max-age"]) > 0
    assert_secured(allowed)
    other = preflight(client, "https://evil.example")
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers


def test_cors_headers_on_answers_to_listed_origins_only(serve):
    client = serve(cors_origins=[PORTAL])
    made = client.post("/fhir/Patient", json=patient(), headers={"Origin": PORTAL})
    assert made.status_code == 201
    assert made.headers["access-control-allow-origin"] == PORTAL
    assert "Origin" in made.headers["vary"]
    exposed = {h.strip() for h in made.headers["access-control-expose-headers"].split(",")}
    assert exposed == {"Location", "ETag", "Content-Location", "Last-Modified"}
    for path in ("/fhir/Patient", f"/fhir/Patient/{made.json()['id']}"):  # front door and routed
        assert client.get(path, headers={"Origin": PORTAL}).headers["access-control-allow-origin"] == PORTAL
        assert "access-control-allow-origin" not in client.get(path, headers={"Origin": "https://evil.example"}).headers
        assert "access-control-allow-origin" not in client.get(path).headers


def test_without_cors_origins_no_origin_is_allowed(serve):
    client = serve()
    assert "access-control-allow-origin" not in preflight(client, PORTAL).headers
    assert "access-control-allow-origin" not in client.get("/fhir/Patient", headers={"Origin": PORTAL}).headers


# --- the public base URL -------------------------------------------------------------------------------------

def links(client: TestClient, headers: dict[str, str]) -> set[str]:
    """The origins of the URLs the server hands out: a create's Location and a search's paging links."""
    for _ in range(2):
        made = client.post("/fhir/Patient", json=patient(), headers=headers)
        assert made.status_code == 201, made.text
    page = client.get("/fhir/Patient?_count=1", headers=headers).json()
    urls = [made.headers["location"], *(link["url"] for link in page["link"]), page["entry"][0]["fullUrl"]]
    return {f"{urlsplit(u).scheme}://{urlsplit(u).netloc}{urlsplit(u).path.split('/Patient')[0]}" for u in urls}


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "fhir.example.org, inner.example", "Host": "app:8000"}


def test_base_url_setting_wins_over_host_and_forwarded_headers(serve):
    client = serve(client=PROXY, trusted_proxies=[PROXY[0]], base_url="https://public.example.org/r4")
    assert links(client, FORWARDED) == {"https://public.example.org/r4"}


def test_a_trusted_proxy_says_which_url_the_client_used(serve):
    assert links(serve(client=PROXY, trusted_proxies=["10.0.0.0/8"]), FORWARDED) == {"https://fhir.example.org/fhir"}


def test_forwarded_headers_from_anyone_else_are_ignored(serve):
    # without TRIAL_FHIR_BASE_URL the Host header is used as before (README, "Security"): X-Forwarded-* are not
    assert links(serve(trusted_proxies=["10.0.0.0/8"]), FORWARDED) == {"http://app:8000/fhir"}
    assert links(serve(client=PROXY), FORWARDED) == {"http://app:8000/fhir"}


# --- the client address --------------------------------------------------------------------------------------

def scope_from(peer: str, *forwarded_for: str) -> dict:
    return {"type": "http", "client": (peer, 5000),
            "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded_for]}


@pytest.mark.parametrize(("peer", "forwarded_for", "trusted", "expected"), [
    ("203.0.113.9", ["1.2.3.4"], [], "203.0.113.9"),  # no trusted proxies: the peer, whatever it claims
    ("203.0.113.9", ["1.2.3.4"], ["10.0.0.7"], "203.0.113.9"),  # an untrusted peer's claim is ignored
    ("10.0.0.7", ["198.51.100.4"], ["10.0.0.7"], "198.51.100.4"),
    # the client wrote "1.2.3.4" itself; our proxies vouch for 198.51.100.4 (the rightmost untrusted hop)
    ("10.0.0.7", ["1.2.3.4, 198.51.100.4, 10.0.0.8"], ["10.0.0.0/24"], "198.51.100.4"),
    ("10.0.0.7", ["1.2.3.4", "198.51.100.4"], ["10.0.0.0/24"], "198.51.100.4"),  # repeated headers: one list
    ("10.0.0.7", ["10.0.0.9, 10.0.0.8"], ["10.0.0.0/24"], "10.0.0.9"),  # every hop trusted: the first
    ("10.0.0.7", [], ["10.0.0.7"], "10.0.0.7"),  # a trusted proxy that says nothing: itself
    ("::1", ["2001:db8::5"], ["::1"], "2001:db8::5"),
])
def test_client_address_believes_x_forwarded_for_from_trusted_proxies_only(settings, peer, forwarded_for, trusted,
                                                                           expected):
    scoped = settings.model_copy(update={"trusted_proxies": trusted})
    assert client_address(scope_from(peer, *forwarded_for), scoped) == expected


def test_client_address_without_a_peer_is_none(settings):
    assert client_address({"type": "http", "client": None, "headers": []}, settings) is None
