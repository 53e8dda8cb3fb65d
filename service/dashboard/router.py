"""The study dashboard at `/`: server-rendered HTML (Jinja2 templates), its CSS and JS served from this package
(no build step, nothing loaded from another host).

- `GET /`: the page. With TRIAL_FHIR_AUTH=off, or a request that carries `Authorization: Bearer …` (a gateway that
  adds it, curl), the studies are rendered into it; with access control on and no token, the page carries no data
  and asks for a bearer token, which its script keeps in memory (no cookie, no storage) and sends in an
  `Authorization` header to `GET /dashboard/studies`.
- `GET /dashboard/studies`: the studies as an HTML fragment, for the caller of the request's token.
- `GET /dashboard/assets/{name}`: the stylesheet and the script.

All data comes through the interaction core with the request's Context (service/dashboard/service.py).
"""

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Path as PathParam, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from service.api.docs import ANY_ERROR, error_docs
from service.api.http import CoreDep, Ctx, request_context
from service.core.context import Context
from service.core.interactions import Core
from service.dashboard import service
from service.errors import NotFound

ASSETS = {name: (Path(__file__).parent / "static" / name).read_bytes()
          for name in ("dashboard.css", "dashboard.js")}
MEDIA_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}

templates = Environment(loader=PackageLoader("service.dashboard", "templates"),
                        autoescape=select_autoescape(default=True, default_for_string=True), trim_blocks=True,
                        lstrip_blocks=True)


def _count(value: int | None, min_cell: int | None) -> str:
    """A count, or `<k` where it is suppressed (de-identified view)."""
    return str(value) if value is not None else (f"<{min_cell}" if min_cell else "–")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


templates.filters["count"] = _count
templates.filters["pct"] = _pct

router = APIRouter(tags=["Dashboard"])


async def studies_html(core: Core, ctx: Context) -> str:
    return templates.get_template("studies.html").render(overview=await service.overview(core, ctx))


@router.get("/", name="dashboard", summary="Study dashboard (HTML)", response_class=HTMLResponse,
            responses={200: {"description": "An HTML page", "content": {"text/html": {
                "schema": {"type": "string"}, "example": "<!DOCTYPE html><html>…</html>"}}}, **ANY_ERROR})
async def dashboard(request: Request, core: CoreDep) -> HTMLResponse:
    """The studies the caller may see, with their enrolment per arm (withdrawn too), data completeness per visit
    (results expected and received, overdue visit windows), latest results and adverse events by seriousness,
    and links to each study's report, summary (JSON, CSV, MeasureReport), charts and Bulk export.

    With access control off, or with an `Authorization: Bearer` header, the studies are in the page; without a
    token (access control on) the page holds no data and asks for one: its script sends it in an
    `Authorization` header to `/dashboard/studies` (kept in memory only: no cookie)."""
    settings = request.app.state.settings
    panel = None
    if settings.auth == "off" or request.headers.get("authorization"):
        panel = await studies_html(core, await request_context(request))
    page = templates.get_template("dashboard.html").render(auth=settings.auth, panel=panel,
                                                           ask_token=panel is None)
    return HTMLResponse(page)


@router.get("/dashboard/studies", name="dashboard_studies", summary="The dashboard's studies (HTML fragment)",
            response_class=HTMLResponse,
            responses={200: {"description": "An HTML fragment: one section per study", "content": {"text/html": {
                "schema": {"type": "string"}, "example": '<section class="study">…</section>'}}}, **ANY_ERROR})
async def dashboard_studies(core: CoreDep, ctx: Ctx) -> HTMLResponse:
    """What `/` shows of the studies, for the caller of the request's token: the studies it may search
    (`s` on ResearchStudy, else 403), each with the figures it may read (`r` on Observation, AdverseEvent and
    ResearchSubject) and its latest results (`s` on Observation); a piece it may not have is left out, saying
    why."""
    return HTMLResponse(await studies_html(core, ctx))


@router.get("/dashboard/assets/{name}", name="dashboard_asset", summary="The dashboard's stylesheet and script",
            response_class=Response, responses=error_docs(404))
async def dashboard_asset(name: Annotated[str, PathParam(description="`dashboard.css` or `dashboard.js`",
                                                         examples=["dashboard.js"])]) -> Response:
    """A file of the dashboard, served from the package (nothing is loaded from another host)."""
    content = ASSETS.get(name)
    if content is None:
        raise NotFound(f"No dashboard asset '{name}'", expression="name")
    return Response(content, media_type=MEDIA_TYPES[Path(name).suffix])
