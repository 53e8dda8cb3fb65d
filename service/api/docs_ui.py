"""The API documentation pages, served whole from this service: Swagger UI at `/docs` and ReDoc at `/redoc`, their
scripts, styles and icon from the packaged assets of fastapi-offline (Swagger UI 5 and ReDoc's standalone bundle,
on PyPI) under `/docs/static/`. Nothing comes from a CDN, so the pages work on an air-gapped hospital network;
their Content-Security-Policy (service/api/security_headers.py) allows this host only."""

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).parent / "static"
STATIC = "/docs/static"
TITLE = "trial-fhir API"

router = APIRouter(include_in_schema=False)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/docs", name="swagger_ui_html")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{TITLE} — Swagger UI",
                               oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
                               swagger_js_url=f"{root}{STATIC}/swagger-ui-bundle.js",
                               swagger_css_url=f"{root}{STATIC}/swagger-ui.css",
                               swagger_favicon_url=f"{root}{STATIC}/favicon.png")


@router.get("/docs/oauth2-redirect", name="swagger_ui_redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", name="redoc_html")
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_redoc_html(openapi_url=f"{root}/openapi.json", title=f"{TITLE} — ReDoc",
                          redoc_js_url=f"{root}{STATIC}/redoc.standalone.js",
                          redoc_favicon_url=f"{root}{STATIC}/favicon.png", with_google_fonts=False)


def mount_assets(app: FastAPI) -> None:
    """Serve the packaged assets under /docs/static."""
    app.mount(STATIC, StaticFiles(directory=ASSETS), name="docs_static")
