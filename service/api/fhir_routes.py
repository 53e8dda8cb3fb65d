"""FHIR REST routes for each stored resource type, built from one template so every type behaves alike.

HTTP only: each route reads the request, calls one interaction of the core (service/core/interactions.py) and
shapes the response. `GET` and `POST /fhir/{type}` are answered by the front door (service/api/front_door.py)
when it is on; their routes here document them and answer when it is off.
"""

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from fhir_mappings.outcome import issue, outcome
from fhir_mappings.search import subset
from service.api.docs import (
    ANY_ERROR,
    article,
    body_doc,
    error_docs,
    fhir_json,
    plural,
    schema_ref,
    search_parameters,
)
from service.api.http import (
    CoreDep,
    Ctx,
    FhirBody,
    HistoryAt,
    HistoryCount,
    HistoryPage,
    HistorySince,
    OptionalFhirBody,
    PatchBody,
    not_modified_since,
    stored_response,
    version_headers,
)
from service.core.registry import EXAMPLES, TYPES
from service.core.resources import Stored
from service.errors import BadRequest
from service.examples import stored
from service.responses import FhirJSONResponse

IdPath = Annotated[str, Path(description="Logical id of the resource",
                             examples=["0b9a1c6e-3e55-4a3e-9a7e-4e7d7c2f1a10"])]
IfMatch = Annotated[str | None, Header(alias="If-Match", description='Version to update or delete, e.g. W/"3"; '
                                       "412 when the resource is at another version")]
IfNoneExist = Annotated[str | None, Header(alias="If-None-Exist", description="Conditional create: "
                                           "`identifier=system|value`; the existing match is returned (200) "
                                           "instead of creating a duplicate")]
Prefer = Annotated[str | None, Header(alias="Prefer", description="`return=minimal`, `return=representation` "
                                      "(default) or `return=OperationOutcome`; `handling=strict` for searches")]


def build_router(resource_type: str) -> APIRouter:
    example = EXAMPLES[resource_type]
    saved = stored(example, "0b9a1c6e-3e55-4a3e-9a7e-4e7d7c2f1a10")
    saved_v2 = stored(example, "0b9a1c6e-3e55-4a3e-9a7e-4e7d7c2f1a10", 2)
    router = APIRouter(prefix=f"/fhir/{resource_type}", tags=[resource_type], default_response_class=FhirJSONResponse,
                       responses=ANY_ERROR)
    link = f"https://hl7.org/fhir/R4/{resource_type.lower()}.html"
    a, many = article(resource_type), plural(resource_type)  # "an Observation", "Observations"
    one, bundle_of = schema_ref(resource_type), schema_ref(f"{resource_type}Bundle")
    stored_type = TYPES[resource_type]
    query_params = search_parameters(stored_type.params, stored_type.sorts)
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

    @router.post("", status_code=201, name=f"create_{resource_type}", summary=f"Create {a} {resource_type}",
                 openapi_extra=body_doc(example, f"A FHIR R4 {resource_type} ({link})", one),
                 responses={201: fhir_json(saved, "Created; Location, ETag and Last-Modified headers set", one),
                            200: fhir_json(saved, "If-None-Exist matched one existing resource; nothing created", one),
                            **error_docs(400, 409, 412, 413, 415, 422)})
    async def create(core: CoreDep, ctx: Ctx, body: FhirBody, if_none_exist: IfNoneExist = None,
                     prefer: Prefer = None) -> Response:
        stored_ = await core.create(ctx, resource_type, body, if_none_exist=if_none_exist)
        return stored_response(stored_, ctx.base_url, prefer, status_code=stored_.status, location=True)

    create.__doc__ = (f"Create a {resource_type} with a server-assigned id (`POST /fhir/{resource_type}`).\n\n"
                      "The resource is checked as FHIR R4 (400 when malformed) and against the trial's rules "
                      "(422, OperationOutcome naming the element). Send `If-None-Exist: identifier=system|value` "
                      "so that a retry after a timeout never creates a duplicate. References may be literal "
                      "(`Patient/123`), conditional (`Patient?identifier=system|value`) or logical "
                      "(`{\"identifier\": {…}}`); the latter two are resolved to the one matching resource.")

    @router.get("", name=f"search_{resource_type}", summary=f"Search {many}",
                openapi_extra={"parameters": query_params},
                responses={200: fhir_json(search_example, "A searchset Bundle", bundle_of), **error_docs(400)})
    async def search_type(request: Request, core: CoreDep, ctx: Ctx, prefer: Prefer = None) -> Response:
        return FhirJSONResponse(await core.search(ctx, resource_type, request.query_params.multi_items()))

    search_type.__doc__ = (f"Search {resource_type} resources; the answer is a `searchset` Bundle, paged with "
                           "`_count` and the `next` link. Unknown parameters are ignored and reported in an "
                           "OperationOutcome entry (`search.mode = outcome`), or rejected (400) with "
                           "`Prefer: handling=strict`.")

    @router.post("/_search", name=f"search_{resource_type}_post", summary=f"Search {many} (form body)",
                 openapi_extra={"requestBody": {"content": {"application/x-www-form-urlencoded": {
                     "schema": {"type": "object", "additionalProperties": {"type": "string"}, "properties": {
                         p["name"]: {**p["schema"], "description": p["description"]} for p in query_params}},
                     "example": {"identifier": "urn:oid:1.2.410.200001.1|MRN-000123"}}}}},
                 responses={200: fhir_json(search_example, "A searchset Bundle", bundle_of), **error_docs(400)})
    async def search_post(request: Request, core: CoreDep, ctx: Ctx, prefer: Prefer = None) -> Response:
        form = await request.form()
        params = list(request.query_params.multi_items()) + [(k, str(v)) for k, v in form.multi_items()]
        return FhirJSONResponse(await core.search(ctx, resource_type, params))

    search_post.__doc__ = f"The same search as `GET /fhir/{resource_type}`, parameters in a form body."

    @router.put("", name=f"conditional_update_{resource_type}", summary=f"Conditional update of {a} {resource_type}",
                openapi_extra=body_doc(example, f"A FHIR R4 {resource_type}", one),
                responses={200: fhir_json(saved_v2, "Updated the one match", one),
                           201: fhir_json(saved, "No match: created", one), **error_docs(400, 412, 422)})
    async def conditional_update(request: Request, core: CoreDep, ctx: Ctx, body: FhirBody,
                                 if_match: IfMatch = None, prefer: Prefer = None) -> Response:
        stored_ = await core.conditional_update(ctx, resource_type, str(request.url.query), body, if_match=if_match)
        return stored_response(stored_, ctx.base_url, prefer, status_code=stored_.status, location=stored_.created)

    conditional_update.__doc__ = (f"`PUT /fhir/{resource_type}?identifier=system|value`: update the one "
                                  "resource that matches, create it when none does, 412 when several do. "
                                  "This is how an EHR re-sends a corrected result without knowing our id.")

    @router.delete("", status_code=204, name=f"conditional_delete_{resource_type}",
                   summary=f"Conditional delete of {a} {resource_type}",
                   responses={204: {"description": "Deleted (or nothing matched)"}, **error_docs(400, 409, 412)})
    async def conditional_delete(request: Request, core: CoreDep, ctx: Ctx) -> Response:
        await core.conditional_delete(ctx, resource_type, str(request.url.query))
        return Response(status_code=204)

    conditional_delete.__doc__ = f"`DELETE /fhir/{resource_type}?identifier=system|value`: delete the one match."

    @router.get("/_history", name=f"history_type_{resource_type}", summary=f"History of all {many}",
                responses={200: fhir_json(history_example, "A history Bundle, newest first", bundle_of),
                           **error_docs(400)})
    async def type_history(core: CoreDep, ctx: Ctx, since: HistorySince, count: HistoryCount = 50,
                           page: HistoryPage = None, at: HistoryAt = None) -> Response:
        return FhirJSONResponse(await core.type_history(ctx, resource_type, count=count, since=since, page=page,
                                                        at=at))

    type_history.__doc__ = (f"Every version of every {resource_type}, newest first (deletions included), paged by "
                            "the `next` link; `_since` keeps the versions made at or after an instant, `_at` those "
                            "that were current at some moment of a date's period.")

    valid = outcome([issue("informational", f"The {resource_type} is valid", severity="information")])
    invalid = outcome([issue("code-invalid", "Unknown status 'bogus'", f"{resource_type}.status")])
    validate_doc = {"requestBody": {"required": False, "description": f"The {resource_type} to validate, or a "
                                    "Parameters with `resource`, `mode` (create, update, delete) and `profile`",
                                    "content": {"application/fhir+json": {"schema": {"type": "object"},
                                                                          "example": example}}}}
    validate_responses = {200: fhir_json(valid, "The validation's OperationOutcome: an `information` issue when the "
                                         "resource is valid, else its errors (still 200)"),
                          **error_docs(400, 404, 410)}
    validate_responses[200]["content"]["application/fhir+json"]["examples"] = {
        "valid": {"value": valid}, "invalid": {"value": invalid}}
    mode_query = Annotated[str | None, Query(alias="mode", description="create (default at type level), update or "
                                             "delete (at instance level)")]

    @router.post("/$validate", name=f"validate_{resource_type}", summary=f"Validate {a} {resource_type}",
                 openapi_extra=validate_doc, responses=validate_responses)
    async def validate_type(request: Request, core: CoreDep, ctx: Ctx, body: OptionalFhirBody,
                            mode: mode_query = None) -> Response:
        return FhirJSONResponse(await core.validate(ctx, resource_type, body, request.query_params.multi_items()))

    validate_type.__doc__ = (
        f"`$validate`: check a {resource_type} as a create of it would be checked (FHIR R4 structure, value sets, "
        "the trial's rules, identifiers already taken), storing nothing. The answer is 200 with an OperationOutcome "
        "either way, as R4's $validate defines it: its error issues name each element at fault, or one "
        "`information` issue says the resource is valid. A 4xx means the validation could not be done (a bad "
        "mode, an unknown profile). Needs the scope the write would.")

    @router.post("/{id}/$validate", name=f"validate_instance_{resource_type}",
                 summary=f"Validate an update or delete of {a} {resource_type}", openapi_extra=validate_doc,
                 responses=validate_responses)
    async def validate_instance(request: Request, id: IdPath, core: CoreDep, ctx: Ctx, body: OptionalFhirBody,
                                mode: mode_query = None) -> Response:
        return FhirJSONResponse(await core.validate(ctx, resource_type, body, request.query_params.multi_items(),
                                                    id=id))

    validate_instance.__doc__ = (
        f"`$validate` against the stored {resource_type}: `mode=update` (the default here) checks the body as a PUT "
        "of it would be checked; `mode=delete` (no body) whether the resource may be deleted (409 issues when "
        "others depend on it). Nothing is stored; 200 with the OperationOutcome either way.")

    if resource_type == "Patient":
        @router.get("/{id}/$everything", name="everything_Patient", summary="Everything about a Patient",
                    responses={200: fhir_json(search_example, "A searchset Bundle: the Patient, its compartment "
                                              "(`match`) and the studies it references (`include`)", bundle_of),
                               **error_docs(400, 404)})
        async def everything(request: Request, id: IdPath, core: CoreDep, ctx: Ctx, since: HistorySince,
                             count: Annotated[int | None, Query(alias="_count", ge=1, le=1000)] = None,
                             types: Annotated[str | None, Query(
                                 alias="_type", description="Comma-separated types to include, e.g. "
                                 "Observation,AdverseEvent")] = None,
                             page: HistoryPage = None) -> Response:
            """`Patient/{id}/$everything`: the Patient and every resource about it this server keeps (its
            enrolments, results and adverse events: its compartment) plus the studies those reference, as a
            searchset Bundle paged by the `next` link (`_count`). `_since` keeps what changed at or after an instant,
            `_type` the listed types. Limited as searches are: by the token's `s` scopes (a type without one is
            left out) and its studies. R4's `start` and `end` (care dates) are not supported: a 400, not ignored (that
            would widen the answer); any other unknown parameter is ignored, or a 400 with `Prefer: handling=strict`."""
            return FhirJSONResponse(await core.everything(ctx, id, count=count, since=since, types=types, page=page,
                                                          asked=list(request.query_params)))

    @router.get("/{id}", name=f"read_{resource_type}", summary=f"Read {a} {resource_type}",
                responses={200: fhir_json(saved, "The current version; ETag and Last-Modified headers set", one),
                           **error_docs(404, 410)})
    async def read(request: Request, id: IdPath, core: CoreDep, ctx: Ctx) -> Response:
        stored_ = await core.read(ctx, resource_type, id)
        if request.headers.get("if-none-match") == stored_.etag or not_modified_since(
                request.headers.get("if-modified-since"), stored_.last_updated):
            return Response(status_code=304, headers=version_headers(stored_, ctx.base_url))
        return read_response(request, stored_, ctx.base_url)

    read.__doc__ = f"Read the current version of a {resource_type}, as it was received (plus `id` and `meta`)."

    @router.put("/{id}", name=f"update_{resource_type}", summary=f"Update (or create) {a} {resource_type}",
                openapi_extra=body_doc({**example, "id": saved["id"]}, f"A FHIR R4 {resource_type} with its id", one),
                responses={200: fhir_json(saved_v2, "Updated: a new version", one),
                           201: fhir_json(saved, "Created with the client's id", one),
                           **error_docs(400, 409, 412, 415, 422)})
    async def update(request: Request, id: IdPath, core: CoreDep, ctx: Ctx, body: FhirBody, if_match: IfMatch = None,
                     prefer: Prefer = None) -> Response:
        stored_ = await core.update(ctx, resource_type, id, body, if_match=if_match,
                                    if_none_match=request.headers.get("if-none-match"))
        return stored_response(stored_, ctx.base_url, prefer, status_code=stored_.status, location=stored_.created)

    update.__doc__ = (f"Replace a {resource_type} with a new version; the body's `id` must match the URL. "
                      "With `If-Match: W/\"n\"` the update only happens when the resource is at version n (412 "
                      "otherwise); with `If-None-Match: *` only when it does not exist yet (412 otherwise). An "
                      "unknown id creates the resource (201).")

    patch_example = [{"op": "test", "path": "/id", "value": saved["id"]},
                     *([{"op": "replace", "path": f"/{key}", "value": example[key]}
                        for key in ("status", "gender", "birthDate") if key in example][:1])]
    patch_doc = {"requestBody": {"required": True, "description": "A JSON Patch (RFC 6902)", "content": {
        "application/json-patch+json": {"schema": {"type": "array", "items": {"type": "object"}},
                                        "example": patch_example}}}}

    @router.patch("/{id}", name=f"patch_{resource_type}", summary=f"Patch {a} {resource_type}",
                  openapi_extra=patch_doc,
                  responses={200: fhir_json(saved_v2, "Patched: a new version (or the current one, when the patch "
                                            "changed nothing)", one), **error_docs(400, 404, 410, 412, 415, 422)})
    async def patch(id: IdPath, core: CoreDep, ctx: Ctx, body: PatchBody, if_match: IfMatch = None,
                    prefer: Prefer = None) -> Response:
        stored_ = await core.patch(ctx, resource_type, id, body, if_match=if_match)
        return stored_response(stored_, ctx.base_url, prefer)

    patch.__doc__ = (
        f"Change part of a {resource_type} with a JSON Patch (`Content-Type: application/json-patch+json`, RFC 6902: "
        "add, remove, replace, move, copy, test). The patched resource is checked and stored as a PUT of it would "
        "be (400/422 naming the element). `If-Match: W/\"n\"` patches only version n (412 otherwise). A malformed "
        "patch is a 400, one that can't be applied (a path that isn't there, a failed `test`) a 422, each naming "
        "the operation (`Patch[i].path`).")

    @router.patch("", name=f"conditional_patch_{resource_type}", summary=f"Conditional patch of {a} {resource_type}",
                  openapi_extra=patch_doc,
                  responses={200: fhir_json(saved_v2, "Patched the one match", one),
                             **error_docs(400, 404, 412, 415, 422)})
    async def conditional_patch(request: Request, core: CoreDep, ctx: Ctx, body: PatchBody,
                                if_match: IfMatch = None, prefer: Prefer = None) -> Response:
        stored_ = await core.conditional_patch(ctx, resource_type, str(request.url.query), body, if_match=if_match)
        return stored_response(stored_, ctx.base_url, prefer)

    conditional_patch.__doc__ = (f"`PATCH /fhir/{resource_type}?identifier=system|value`: patch the one resource "
                                 "that matches (404 when none does, 412 when several do).")

    @router.delete("/{id}", status_code=200, name=f"delete_{resource_type}", summary=f"Delete {a} {resource_type}",
                   responses={200: fhir_json(outcome([issue("informational", "Deleted", severity="information")]),
                                             "Deleted (OperationOutcome); deleting again is a no-op"),
                              **error_docs(409, 412)})
    async def delete(id: IdPath, core: CoreDep, ctx: Ctx, if_match: IfMatch = None) -> Response:
        done = await core.delete(ctx, resource_type, id, if_match=if_match)
        headers = {"ETag": done.etag} if done else {}
        text = f"{resource_type}/{id} deleted" if done else f"{resource_type}/{id} did not exist or was already deleted"
        return FhirJSONResponse(outcome([issue("informational", text, severity="information")]), headers=headers)

    delete.__doc__ = (f"Delete a {resource_type}. Its history stays readable; reading it answers 410 Gone. A "
                      "resource others depend on (a patient with an enrolment, a subject with results) gives 409.")

    @router.get("/{id}/_history", name=f"history_{resource_type}", summary=f"History of {a} {resource_type}",
                responses={200: fhir_json(history_example, "A history Bundle, newest first", bundle_of),
                           **error_docs(404)})
    async def instance_history(id: IdPath, core: CoreDep, ctx: Ctx, since: HistorySince,
                               count: HistoryCount = 50,
                               before: Annotated[int | None, Query(alias="_before_version", ge=1,
                                                                   description="paging cursor")] = None,
                               at: HistoryAt = None) -> Response:
        return FhirJSONResponse(await core.history(ctx, resource_type, id, count=count, before_version=before,
                                                   since=since, at=at))

    instance_history.__doc__ = (f"Every version of a {resource_type}, newest first (deletions included); `_since` "
                                "keeps the versions made at or after an instant, `_at` those that were current at "
                                "some moment of a date's period.")

    @router.get("/{id}/_history/{vid}", name=f"vread_{resource_type}",
                summary=f"Read one version of {a} {resource_type}",
                responses={200: fhir_json(saved, "That version", one), **error_docs(404, 410)})
    async def vread(request: Request, id: IdPath, vid: Annotated[str, Path(description="versionId", examples=["1"])],
                    core: CoreDep, ctx: Ctx) -> Response:
        return read_response(request, await core.vread(ctx, resource_type, id, vid), ctx.base_url)

    vread.__doc__ = f"Read version `vid` of a {resource_type} (`meta.versionId`)."
    if not TYPES[resource_type].writable:
        # a type only the server writes (AuditEvent) keeps its reads and searches: a POST, PUT or DELETE on its paths
        # is a 405 (and the front door's POST reaches the core, which refuses it the same way)
        router.routes = [r for r in router.routes if isinstance(r, APIRoute) and (
            (r.methods or set()) <= {"GET", "HEAD"} or r.path.endswith("/_search"))]
    return router


def read_response(request: Request, stored_: Stored, base: str) -> Response:
    """A read's answer: the stored version, or with `_summary=true|data` / `_elements=a,b` the subset of it that a
    search would give (tagged SUBSETTED), as on searches (issue 11 §6)."""
    summary, elements = request.query_params.get("_summary"), request.query_params.get("_elements")
    if summary not in (None, "false", "true", "data"):
        raise BadRequest(f"_summary must be true, data or false on a read, not '{summary}'", expression="_summary")
    if stored_.content is None or (summary in (None, "false") and not elements):
        return stored_response(stored_, base, request.headers.get("prefer"))
    names = tuple(e.strip() for e in elements.split(",") if e.strip()) if elements else None
    content = subset(stored_.content, TYPES[stored_.resource_type].model, summary=summary, elements=names)
    return FhirJSONResponse(content, headers=version_headers(stored_, base))


def build_routers() -> list[APIRouter]:
    return [build_router(t) for t in TYPES]

