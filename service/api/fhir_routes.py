"""FHIR REST endpoints for each stored resource type, built from one template so every type behaves alike.

HTTP only: read the request, call one service function, shape the response.
"""

import asyncio
import logging
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match, Route

from fhir_mappings.bundle import bundle, entry
from fhir_mappings.dates import fhir_instant
from service.db import ReadSessionDep, WriteSessionDep, read_connection, write_session
from service.errors import FhirError
from service.examples import EXAMPLES, stored
from service.api.http import BaseUrl, FhirBody, base_url, fhir_body, resource_response, version_headers
from service.api.middleware import choose_output, some_headers
from service.core import resources as service
from service.core.registry import HANDLERS
from service.responses import FhirJSONResponse
from service.search.service import plan_search, run_search, run_search_async
from service.settings import Settings, SettingsDep
from fhir_mappings.outcome import issue, outcome

log = logging.getLogger("trial_fhir")
OUTCOME_SCHEMA = {"$ref": "#/components/schemas/OperationOutcome"}
IdPath = Annotated[str, Path(description="Logical id of the resource", examples=["0b9a1c6e-3e55-4a3e-9a7e-4e7d7c2f1a10"])]
IfMatch = Annotated[str | None, Header(alias="If-Match", description='Version to update or delete, e.g. W/"3"; '
                                       "412 when the resource is at another version")]
IfNoneExist = Annotated[str | None, Header(alias="If-None-Exist", description="Conditional create: "
                                           "`identifier=system|value`; the existing match is returned (200) "
                                           "instead of creating a duplicate")]
Prefer = Annotated[str | None, Header(alias="Prefer", description="`return=minimal`, `return=representation` "
                                      "(default) or `return=OperationOutcome`; `handling=strict` for searches")]

ERROR_EXAMPLE = outcome([issue("value", "EASI 80 {score} is outside 0…72", "Observation.valueQuantity.value")])


def fhir_json(example: Any, description: str = "FHIR resource") -> dict:
    return {"description": description,
            "content": {"application/fhir+json": {"schema": {"type": "object"}, "example": example},
                        "application/json": {"schema": {"type": "object"}}}}


def error_docs(*codes: int) -> dict:
    text = {400: "Malformed JSON or not valid FHIR R4 (OperationOutcome names the element)",
            404: "Unknown resource type or id", 405: "Interaction not supported", 406: "Only JSON is served",
            409: "Conflict: duplicate identifier or a concurrent change", 410: "The resource was deleted",
            412: "If-Match version mismatch, or a conditional interaction matched several resources",
            413: "Body too large", 415: "Body is not application/fhir+json",
            422: "Valid FHIR that breaks a trial rule or value-set binding (OperationOutcome names the element)"}
    return {str(c): {"description": text[c], "content": {"application/fhir+json": {
        "schema": OUTCOME_SCHEMA, "example": ERROR_EXAMPLE}}} for c in codes}


#: declared on every FHIR router: any 4xx is an OperationOutcome (and FastAPI's own 422 schema, which this
#: service never returns, is not advertised)
ANY_ERROR = {"4XX": {"description": "Client error: an OperationOutcome naming the element at fault",
                     "content": {"application/fhir+json": {"schema": OUTCOME_SCHEMA, "example": ERROR_EXAMPLE}}},
             "5XX": {"description": "Server error: an OperationOutcome; nothing was written",
                     "content": {"application/fhir+json": {"schema": OUTCOME_SCHEMA}}}}


def body_doc(example: dict, what: str) -> dict:
    return {"requestBody": {"required": True, "description": what, "content": {
        "application/fhir+json": {"schema": {"type": "object"}, "example": example},
        "application/json": {"schema": {"type": "object"}, "example": example}}}}


async def searchset(state, resource_type: str, params: list[tuple[str, str]], base: str, prefer: str | None) -> bytes:
    """The searchset Bundle. A search that is one cached page statement is read on the event loop through the
    app's AsyncReadPool (PostgreSQL); any other on one read connection in one of the app's search threads.

    Searches have their own few threads (`TRIAL_FHIR_SEARCH_THREADS`) instead of AnyIO's 40: on two cores
    sixteen concurrent searches in forty threads fought over the GIL and the p99 went to ~100 ms."""
    settings = state.settings
    plan = plan_search(resource_type, params, strict="handling=strict" in (prefer or "").replace(" ", "").lower(),
                       default_count=settings.default_page_size, max_count=settings.max_page_size)
    pool = state.async_read_pool
    if pool is not None and plan.one_statement and pool.loop is asyncio.get_running_loop():
        try:
            body = await run_search_async(pool, plan, base)
        except Exception:  # e.g. the database restarted: the thread path's pool checks and replaces connections
            log.warning("search %s failed on the fast path (async read); read again in a search thread",
                        resource_type, exc_info=True)
            body = None
        if body is not None:
            return body

    def run() -> bytes:
        with read_connection(state.engine) as conn:
            return run_search(conn, plan, base)
    return await asyncio.get_running_loop().run_in_executor(state.search_threads, run)


async def search_response(request: Request, resource_type: str, params: list[tuple[str, str]], base: str,
                          prefer: str | None) -> Response:
    return FhirJSONResponse(await searchset(request.app.state, resource_type, params, base, prefer))


def create_resource(session, resource_type: str, body: dict, if_none_exist: str | None, base: str,
                    settings: Settings) -> service.Stored:
    """POST: what both the documented route and the plain one (`_PlainRoute`) run."""
    return service.run_write(session, lambda uow: service.create(uow, resource_type, body, if_none_exist=if_none_exist),
                             base_url=base, enforce_rules=settings.enforce_trial_rules)


class _PlainRoute(Route):
    """One method of `/fhir/{type}` as a plain Starlette route, tried before every FastAPI route.

    A portal's search GET and an EHR's create POST are the hot paths, and FastAPI's own work per request
    (matching some 70 routes twice, solving the dependencies, the parameter models) cost more CPU than the
    search, and ~40% of a single POST. These routes answer exactly what the documented FastAPI routes
    (`search_type`, `create`, kept for OpenAPI) would: the same functions with the same settings, base URL and
    headers; errors go to the same exception handlers. Other methods fall through to the FastAPI routes (so
    405s and their Allow headers are unchanged)."""

    def __init__(self, resource_type: str, method: str, endpoint, name: str) -> None:
        super().__init__(f"/fhir/{resource_type}", endpoint, methods=[method], name=name, include_in_schema=False)
        self.methods = {method}  # not HEAD, which Starlette adds to GET and the FastAPI routes don't answer
        self.method = method

    def matches(self, scope):
        if scope["type"] != "http" or scope["method"] != self.method:
            return Match.NONE, {}
        return super().matches(scope)


def _search_endpoint(resource_type: str):
    async def endpoint(request: Request) -> Response:
        return await search_response(request, resource_type, request.query_params.multi_items(),
                                     await base_url(request), request.headers.get("prefer"))
    return endpoint


def _create_endpoint(resource_type: str):
    """What `create` (the FastAPI route) does, with its dependencies (body, session, base URL) done by hand."""
    async def endpoint(request: Request) -> Response:
        body = await fhir_body(request)
        base = await base_url(request)
        if_none_exist = request.headers.get("if-none-exist")

        def run():
            with write_session(request.app.state.engine) as session:
                return create_resource(session, resource_type, body, if_none_exist, base, request.app.state.settings)
        stored_ = await run_in_threadpool(run)
        return resource_response(request, stored_, base, status_code=stored_.status, location=True)
    return endpoint


def plain_routes() -> list[Route]:
    routes: list[Route] = []
    for t in HANDLERS:
        routes.append(_PlainRoute(t, "GET", _search_endpoint(t), f"search_{t}_fast"))
        routes.append(_PlainRoute(t, "POST", _create_endpoint(t), f"create_{t}_fast"))
    return routes


class SearchFastPath:
    """`GET /fhir/{type}?…` answered in front of the app (`create_app` puts it before FastAPI's own layers, see
    service.main.TrialFhirApp): no middleware, exception, telemetry or routing layers.

    A portal's search is the hot path, and those layers (Starlette's request and response objects, the error
    wrappers, the route match) cost as much CPU as the search. The Bundle is `searchset`'s, as for the routed
    endpoint. Only a search that answers 200 is sent from here: any error (a bad parameter, a database failure,
    a format this server doesn't speak) passes the request on to the app, whose handlers answer it exactly as
    before (the search runs again there). Other methods and paths pass straight through."""

    def __init__(self, state, app, resource_types) -> None:
        self.state = state  # the application's state: settings, engine, search threads, async read pool
        self.app = app  # what answers everything else
        self.paths = {f"/fhir/{t}": t for t in resource_types}
        self._bases: dict[tuple, str] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET":
            return await self.app(scope, receive, send)
        path, root = scope["path"], scope.get("root_path", "")
        resource_type = self.paths.get(path[len(root):] if root and path.startswith(root) else path)
        if resource_type is None:
            return await self.app(scope, receive, send)
        headers = some_headers(scope, b"accept", b"prefer", b"host")
        params = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        output = choose_output(dict(params) if any(name == "_format" for name, _ in params) else {},
                               headers.get(b"accept", ""))
        if output is None:
            return await self.app(scope, receive, send)
        settings = self.state.settings
        base = settings.base_url.rstrip("/") if settings.base_url else self._base(scope, headers.get(b"host", ""))
        try:
            body = await searchset(self.state, resource_type, params, base, headers.get(b"prefer"))
        except FhirError:  # a 4xx: answered by the app, with its error handlers
            return await self.app(scope, receive, send)
        except Exception:  # the app answers it again, with its 500 OperationOutcome if it fails there too
            log.warning("search %s?%s failed on the fast path; the app answers it", resource_type,
                        scope["query_string"].decode("latin-1"), exc_info=True)
            return await self.app(scope, receive, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", output.encode())]})
        await send({"type": "http.response.body", "body": body})

    def _base(self, scope, host: str) -> str:
        """What `base_url(request)` gives (scheme, host and root path of the request, + /fhir), kept per origin."""
        key = (scope.get("scheme"), host, tuple(scope.get("server") or ()), scope.get("root_path", ""))
        base = self._bases.get(key)
        if base is None:
            base = str(Request(scope).base_url).rstrip("/") + "/fhir"
            if len(self._bases) < 256:  # the Host header is the client's: don't keep every one
                self._bases[key] = base
        return base


def build_router(resource_type: str) -> APIRouter:
    example = EXAMPLES[resource_type]
    saved = stored(example, "0b9a1c6e-3e55-4a3e-9a7e-4e7d7c2f1a10")
    saved_v2 = stored(example, "0b9a1c6e-3e55-4a3e-9a7e-4e7d7c2f1a10", 2)
    router = APIRouter(prefix=f"/fhir/{resource_type}", tags=[resource_type], default_response_class=FhirJSONResponse,
                       responses=ANY_ERROR)
    link = f"https://hl7.org/fhir/R4/{resource_type.lower()}.html"
    search_example = {"resourceType": "Bundle", "type": "searchset", "total": 1,
                      "link": [{"relation": "self", "url": f"http://127.0.0.1:8000/fhir/{resource_type}?_count=50"}],
                      "entry": [{"fullUrl": f"http://127.0.0.1:8000/fhir/{resource_type}/{saved['id']}",
                                 "resource": saved, "search": {"mode": "match"}}]}
    history_example = {"resourceType": "Bundle", "type": "history", "total": 2, "entry": [
        {"fullUrl": f"http://127.0.0.1:8000/fhir/{resource_type}/{saved['id']}", "resource": saved_v2,
         "request": {"method": "PUT", "url": f"{resource_type}/{saved['id']}"},
         "response": {"status": "200 OK", "etag": 'W/"2"'}},
        {"fullUrl": f"http://127.0.0.1:8000/fhir/{resource_type}/{saved['id']}", "resource": saved,
         "request": {"method": "POST", "url": resource_type}, "response": {"status": "201 Created", "etag": 'W/"1"'}}]}

    @router.post("", status_code=201, name=f"create_{resource_type}", summary=f"Create a {resource_type}",
                 openapi_extra=body_doc(example, f"A FHIR R4 {resource_type} ({link})"),
                 responses={201: fhir_json(saved, "Created; Location, ETag and Last-Modified headers set"),
                            200: fhir_json(saved, "If-None-Exist matched one existing resource; nothing created"),
                            **error_docs(400, 409, 412, 413, 415, 422)})
    def create(request: Request, session: WriteSessionDep, settings: SettingsDep, body: FhirBody, base: BaseUrl,
               if_none_exist: IfNoneExist = None, prefer: Prefer = None) -> Response:
        stored_ = create_resource(session, resource_type, body, if_none_exist, base, settings)
        return resource_response(request, stored_, base, status_code=stored_.status, location=True)

    create.__doc__ = (f"Create a {resource_type} with a server-assigned id (`POST /fhir/{resource_type}`).\n\n"
                      "The resource is checked as FHIR R4 (400 when malformed) and against the trial's rules "
                      "(422, OperationOutcome naming the element). Send `If-None-Exist: identifier=system|value` "
                      "so that a retry after a timeout never creates a duplicate. References may be literal "
                      "(`Patient/123`), conditional (`Patient?identifier=system|value`) or logical "
                      "(`{\"identifier\": {…}}`); the latter two are resolved to the one matching resource.")

    @router.get("", name=f"search_{resource_type}", summary=f"Search {resource_type} resources",
                responses={200: fhir_json(search_example, "A searchset Bundle"), **error_docs(400)})
    async def search_type(request: Request, settings: SettingsDep, base: BaseUrl, prefer: Prefer = None) -> Response:
        return await search_response(request, resource_type, request.query_params.multi_items(), base, prefer)

    search_type.__doc__ = (f"Search {resource_type} resources; the answer is a `searchset` Bundle, paged with "
                           "`_count` and the `next` link. Unknown parameters are ignored and reported in an "
                           "OperationOutcome entry (`search.mode = outcome`), or rejected (400) with "
                           "`Prefer: handling=strict`.")

    @router.post("/_search", name=f"search_{resource_type}_post", summary=f"Search {resource_type} (POST form)",
                 openapi_extra={"requestBody": {"content": {"application/x-www-form-urlencoded": {
                     "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                     "example": {"identifier": "urn:oid:1.2.410.200001.1|MRN-000123"}}}}},
                 responses={200: fhir_json(search_example, "A searchset Bundle"), **error_docs(400)})
    async def search_post(request: Request, settings: SettingsDep, base: BaseUrl, prefer: Prefer = None) -> Response:
        form = await request.form()
        params = list(request.query_params.multi_items()) + [(k, str(v)) for k, v in form.multi_items()]
        return await search_response(request, resource_type, params, base, prefer)

    search_post.__doc__ = f"The same search as `GET /fhir/{resource_type}`, parameters in a form body."

    @router.put("", name=f"conditional_update_{resource_type}", summary=f"Conditional update of a {resource_type}",
                openapi_extra=body_doc(example, f"A FHIR R4 {resource_type}"),
                responses={200: fhir_json(saved_v2, "Updated the one match"),
                           201: fhir_json(saved, "No match: created"), **error_docs(400, 412, 422)})
    def conditional_update(request: Request, session: WriteSessionDep, settings: SettingsDep, body: FhirBody,
                           base: BaseUrl, if_match: IfMatch = None, prefer: Prefer = None) -> Response:
        query = str(request.url.query)
        stored_ = service.run_write(
            session, lambda uow: service.conditional_update(uow, resource_type, query, body, if_match=if_match),
            base_url=base, enforce_rules=settings.enforce_trial_rules)
        return resource_response(request, stored_, base, status_code=stored_.status, location=stored_.created)

    conditional_update.__doc__ = (f"`PUT /fhir/{resource_type}?identifier=system|value`: update the one "
                                  "resource that matches, create it when none does, 412 when several do. "
                                  "This is how an EHR re-sends a corrected result without knowing our id.")

    @router.delete("", status_code=204, name=f"conditional_delete_{resource_type}",
                   summary=f"Conditional delete of a {resource_type}",
                   responses={204: {"description": "Deleted (or nothing matched)"}, **error_docs(400, 409, 412)})
    def conditional_delete(request: Request, session: WriteSessionDep, base: BaseUrl) -> Response:
        query = str(request.url.query)
        service.run_write(session, lambda uow: service.conditional_delete(uow, resource_type, query), base_url=base)
        return Response(status_code=204)

    conditional_delete.__doc__ = f"`DELETE /fhir/{resource_type}?identifier=system|value`: delete the one match."

    @router.get("/{id}", name=f"read_{resource_type}", summary=f"Read a {resource_type}",
                responses={200: fhir_json(saved, "The current version; ETag and Last-Modified headers set"),
                           **error_docs(404, 410)})
    def read(request: Request, id: IdPath, session: ReadSessionDep, base: BaseUrl) -> Response:
        stored_ = service.read(session, resource_type, id)
        if request.headers.get("if-none-match") == stored_.etag:
            return Response(status_code=304, headers=version_headers(stored_, base))
        return resource_response(request, stored_, base)

    read.__doc__ = f"Read the current version of a {resource_type}, as it was received (plus `id` and `meta`)."

    @router.put("/{id}", name=f"update_{resource_type}", summary=f"Update (or create) a {resource_type}",
                openapi_extra=body_doc({**example, "id": saved["id"]}, f"A FHIR R4 {resource_type} with its id"),
                responses={200: fhir_json(saved_v2, "Updated: a new version"),
                           201: fhir_json(saved, "Created with the client's id"),
                           **error_docs(400, 409, 412, 415, 422)})
    def update(request: Request, id: IdPath, session: WriteSessionDep, settings: SettingsDep, body: FhirBody,
               base: BaseUrl, if_match: IfMatch = None, prefer: Prefer = None) -> Response:
        stored_ = service.run_write(session, lambda uow: service.update(uow, resource_type, id, body,
                                                                         if_match=if_match),
                                    base_url=base, enforce_rules=settings.enforce_trial_rules)
        return resource_response(request, stored_, base, status_code=stored_.status, location=stored_.created)

    update.__doc__ = (f"Replace a {resource_type} with a new version; the body's `id` must match the URL. "
                      "With `If-Match: W/\"n\"` the update only happens when the resource is at version n (412 "
                      "otherwise). An unknown id creates the resource (201).")

    @router.delete("/{id}", status_code=200, name=f"delete_{resource_type}", summary=f"Delete a {resource_type}",
                   responses={200: fhir_json(outcome([issue("informational", "Deleted", severity="information")]),
                                             "Deleted (OperationOutcome); deleting again is a no-op"),
                              **error_docs(409, 412)})
    def delete(id: IdPath, session: WriteSessionDep, base: BaseUrl, if_match: IfMatch = None) -> Response:
        done = service.run_write(session, lambda uow: service.delete(uow, resource_type, id, if_match=if_match),
                                 base_url=base)
        headers = {"ETag": done.etag} if done else {}
        text = f"{resource_type}/{id} deleted" if done else f"{resource_type}/{id} did not exist or was already deleted"
        return FhirJSONResponse(outcome([issue("informational", text, severity="information")]), headers=headers)

    delete.__doc__ = (f"Delete a {resource_type}. Its history stays readable; reading it answers 410 Gone. A "
                      "resource others depend on (a patient with an enrolment, a subject with results) gives 409.")

    @router.get("/{id}/_history", name=f"history_{resource_type}", summary=f"History of a {resource_type}",
                responses={200: fhir_json(history_example, "A history Bundle, newest first"), **error_docs(404)})
    def instance_history(id: IdPath, session: ReadSessionDep, settings: SettingsDep, base: BaseUrl,
                         count: Annotated[int, Query(alias="_count", ge=1, le=1000)] = 50,
                         before: Annotated[int | None, Query(alias="_before_version", ge=1,
                                                             description="paging cursor")] = None) -> Response:
        rows = service.history(session, resource_type, id, count=count + 1, before_version=before)
        page, more = rows[:count], len(rows) > count
        entries = [entry(f"{base}/{resource_type}/{id}", r.content,
                         request={"method": r.method, "url": resource_type if r.method == "POST"
                                  else f"{resource_type}/{id}"},
                         response={"status": {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}
                                   [r.method], "etag": f'W/"{r.version_id}"',
                                   "lastModified": fhir_instant(r.last_updated)}) for r in page]
        links = [("self", f"{base}/{resource_type}/{id}/_history?_count={count}"
                  + (f"&_before_version={before}" if before else ""))]
        if more:
            links.append(("next", f"{base}/{resource_type}/{id}/_history?_count={count}"
                          f"&_before_version={page[-1].version_id}"))
        total = None if before or more else len(page)
        return FhirJSONResponse(bundle("history", entries, total=total, links=links))

    instance_history.__doc__ = f"Every version of a {resource_type}, newest first (deletions included)."

    @router.get("/{id}/_history/{vid}", name=f"vread_{resource_type}", summary=f"Read one version of a {resource_type}",
                responses={200: fhir_json(saved, "That version"), **error_docs(404, 410)})
    def vread(request: Request, id: IdPath, vid: Annotated[str, Path(description="versionId", examples=["1"])],
              session: ReadSessionDep, base: BaseUrl) -> Response:
        return resource_response(request, service.vread(session, resource_type, id, vid), base)

    vread.__doc__ = f"Read version `vid` of a {resource_type} (`meta.versionId`)."
    return router


def build_routers() -> list[APIRouter]:
    return [build_router(t) for t in HANDLERS]

