"""The outermost ASGI layer: security headers on every response, and CORS when TRIAL_FHIR_CORS_ORIGINS is set.

`TrialFhirApp.__call__` (service/main.py) sends every request through `secured(...)`, in front of the front door
and of FastAPI, so no path (a front-door search, a routed read, an error, a preflight, /docs) escapes it.

What each response gets, and why:

- `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`: no browser guesses
  a type, frames a page or tells another site which URL (with its search parameters) it came from.
- `Content-Security-Policy`: `default-src 'none'` on API answers (JSON, NDJSON, CSV, SVG: a browser that opens
  one directly runs nothing); the study report gets only its inline `<style>` and inline SVG; /docs and /redoc
  load Swagger UI and ReDoc from this host (service/api/docs_ui.py: packaged assets, no CDN), so their policy
  allows `'self'` and nothing else: their scripts and styles, their inline bootstrap script, `connect-src 'self'`
  for /openapi.json (ReDoc also a web worker from a blob: URL).;
  the dashboard at / its own script and stylesheet, fetches to here and the blob: URLs it opens (DASHBOARD_CSP).
- `Cache-Control: no-store` on everything but the public documents (CapabilityStatement, well-known documents,
  the API docs): FHIR answers, export files and summaries carry patient data, and a token answer must not be
  cached either (RFC 6749 §5.1); an app's own Cache-Control on those is replaced.
- `Strict-Transport-Security` only when the request came over TLS (directly or, per X-Forwarded-Proto, to a
  trusted proxy): over plain HTTP the header means nothing and would be a lie about the deployment.

The header lists are built once; per response the layer walks the app's few headers once (it is on the hot path).
"""

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.http import is_https, trusted_proxies
from service.settings import Settings

Headers = list[tuple[bytes, bytes]]

API_CSP = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
#: the study report: an inline <style> and inline SVG charts, nothing loaded
DOCUMENT_CSP = (b"default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
                b"base-uri 'none'; form-action 'none'")
#: the dashboard at /: its own stylesheet and script (from /dashboard/assets), the fragments and figures it fetches
#: from here, and the report, summaries and charts it opens as blob: URLs (which inherit this policy: the report's
#: inline <style> and SVG); nothing from another host
DASHBOARD_CSP = (b"default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: "
                 b"blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
#: Swagger UI (service/api/docs_ui.py): its bundle and CSS from /docs/static, an inline script that starts it,
#: /openapi.json fetched from here, "try it out" requests to here
SWAGGER_CSP = (b"default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
               b"form-action 'self'")
#: ReDoc: the standalone bundle from /docs/static, its inline styles, a web worker it creates from a blob: URL
REDOC_CSP = (b"default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
             b"img-src 'self' data:; connect-src 'self'; worker-src blob:; frame-ancestors 'none'; base-uri 'none'; "
             b"form-action 'none'")

ALWAYS: Headers = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                   (b"referrer-policy", b"no-referrer")]
NO_STORE = (b"cache-control", b"no-store")
HSTS = (b"strict-transport-security", b"max-age=31536000")
#: documents anyone may cache: they carry no patient data
PUBLIC_PATHS = frozenset({"/fhir/metadata", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/auth/jwks"})  # the public keys tokens are checked with: cacheable (RFC 7517)
DOCUMENT_TYPES = (b"text/html", b"image/svg+xml")

#: what a browser client of the FHIR API sends and must be allowed to read (CORS)
CORS_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CORS_HEADERS = ("Authorization", "Content-Type", "Accept", "Prefer", "If-Match", "If-None-Exist", "If-None-Match",
                "If-Modified-Since")
CORS_EXPOSED = ("Location", "ETag", "Content-Location", "Last-Modified")
CORS_MAX_AGE = 600


def page_policy(path: str) -> bytes | None:
    """The CSP a page is known to need from its path (the API docs), else None: decided by its content type."""
    if path == "/docs" or path.startswith("/docs/"):
        return SWAGGER_CSP
    if path == "/redoc":
        return REDOC_CSP
    if path == "/":
        return DASHBOARD_CSP
    return None


def is_public(path: str) -> bool:
    """May this answer be cached? Only the documents without patient data (the docs' packaged assets too)."""
    return path in PUBLIC_PATHS or "/.well-known/" in path or path.startswith("/docs/static/")


def secure_headers(headers: Headers, policy: bytes | None, no_store: bool, https: bool) -> Headers:
    """The app's headers plus ours: its Cache-Control dropped when the answer must not be stored, the CSP chosen
    by `policy` or else by the content type."""
    out: Headers = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"cache-control" and no_store:
            continue
        if policy is None and lower == b"content-type" and value.startswith(DOCUMENT_TYPES):
            policy = DOCUMENT_CSP
        out.append((name, value))
    out += ALWAYS
    out.append((b"content-security-policy", policy or API_CSP))
    if no_store:
        out.append(NO_STORE)
    if https:
        out.append(HSTS)
    return out


class SecurityHeaders:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.proxies = trusted_proxies(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        policy = page_policy(path)
        no_store = not is_public(path)
        https = scope.get("scheme") == "https" or (bool(self.proxies) and is_https(scope, self.settings))

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = secure_headers(message.get("headers", ()), policy, no_store, https)
            await send(message)

        await self.app(scope, receive, send_secured)


def secured(app: ASGIApp, settings: Settings) -> ASGIApp:
    """`app` behind CORS (only when origins are configured: otherwise no browser of another origin may read an
    answer, and the layer costs nothing) and the security headers, outermost so preflight answers get them too.

    Starlette's CORSMiddleware answers a preflight `OPTIONS` (200 with Access-Control-Allow-Origin for a listed
    origin; 400 without it for any other) and adds Access-Control-Allow-Origin, `Vary: Origin` and
    Access-Control-Expose-Headers to actual answers; an unlisted origin never gets Access-Control-Allow-Origin,
    which is what lets a browser read an answer. No credentials mode: tokens go in Authorization, not cookies."""
    if settings.cors_origins:
        app = CORSMiddleware(app, allow_origins=settings.cors_origins, allow_methods=CORS_METHODS,
                             allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED, max_age=CORS_MAX_AGE)
    return SecurityHeaders(app, settings)
