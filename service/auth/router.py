"""The built-in authorisation server over HTTP: `POST /auth/token` (SMART Backend Services), `GET /auth/jwks` (the
public keys its tokens are signed with) and `GET /fhir/.well-known/smart-configuration` (discovery). All public: a
client needs them before it has a token. The URLs are those of service/auth/urls.py.

They stay out of the OpenAPI document (which describes the FHIR API): SMART discovery is how clients find them.
"""

from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.api.http import BaseUrl
from service.auth import keys
from service.auth.clients import SCOPED_TYPES
from service.auth.token import ASSERTION_ALGORITHMS, GRANT_TYPE, OAuthError, TokenIssuer
from service.auth.urls import auth_urls
from service.settings import Settings

router = APIRouter(include_in_schema=False)

MAX_FORM_BYTES = 64 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
JWKS_MAX_AGE_S = 60  # verifiers refetch on an unknown kid anyway; short, so a rotation is seen soon


def _issuer(request: Request) -> TokenIssuer:
    issuer: TokenIssuer | None = getattr(request.app.state, "token_issuer", None)
    if issuer is None:
        issuer = request.app.state.token_issuer = TokenIssuer(request.app.state.engine, request.app.state.settings)
    return issuer


def _oauth_error(error: OAuthError) -> JSONResponse:
    return JSONResponse({"error": error.error, "error_description": error.description},
                        status_code=error.status_code, headers=NO_STORE)


@router.post("/auth/token", name="token")
async def token(request: Request, base: BaseUrl) -> JSONResponse:
    """A client's signed assertion exchanged for an access token (client_credentials, private_key_jwt)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return _oauth_error(OAuthError("invalid_request", "send the parameters as application/x-www-form-urlencoded"))
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return _oauth_error(OAuthError("invalid_request", f"the request body exceeds {MAX_FORM_BYTES} bytes"))
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        return _oauth_error(OAuthError("invalid_request", "the request body is not UTF-8"))
    try:
        issued = await _issuer(request).issue(form, auth_urls(base))
    except OAuthError as error:
        return _oauth_error(error)
    return JSONResponse(issued.response(), headers=NO_STORE)


def _keep_s(settings: Settings) -> float:
    """How long a retired key stays published: until the last token it signed has expired (and the leeway)."""
    return settings.token_lifetime_s + settings.auth_leeway_s


@router.get("/auth/jwks", name="jwks")
def jwks(request: Request) -> JSONResponse:
    """The public keys of this server's access tokens: the current key and the retired ones still in use."""
    settings: Settings = request.app.state.settings
    return JSONResponse(keys.public_jwks(request.app.state.engine, _keep_s(settings)),
                        headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE_S}"})


def scopes_supported() -> list[str]:
    """The scopes a client may ask for, as v2 system scopes (v1 `.read`/`.write`/`.*` are accepted too)."""
    names = ["*", *sorted(SCOPED_TYPES)]
    return [f"system/{t}.{letters}" for t in names for letters in ("cruds", "rs")]


def smart_configuration(base: str) -> dict[str, Any]:
    urls = auth_urls(base)
    return {
        "issuer": urls.issuer,
        "jwks_uri": urls.jwks,
        "token_endpoint": urls.token,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "grant_types_supported": [GRANT_TYPE],
        "scopes_supported": scopes_supported(),
        "response_types_supported": ["token"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    }


@router.get("/fhir/.well-known/smart-configuration", name="smart_configuration")
async def discovery(base: BaseUrl) -> JSONResponse:
    """SMART discovery (App Launch 2.2 §2.4): where to get a token and how."""
    return JSONResponse(smart_configuration(base))
