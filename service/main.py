"""The ASGI application: `create_app(settings)` builds it; `service.main:app` is the default one."""

import asyncio
import gc
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp

from fhir_mappings.openapi_schema import resource_schema
from service import faults
from service.api import docs_ui
from service.api.compression import compressed
from service.api.fhir_routes import build_routers
from service.api.front_door import FrontDoor
from service.api.methods import Methods
from service.api.middleware import ControlCharacterPaths, FhirFormatMiddleware
from service.api.read_timeouts import BodyReadTimeout
from service.api.security_headers import secured
from service.auth.router import router as auth_router
from service.auth.verify import Authenticator
from service.bundle.router import router as bundle_router
from service.conformance.router import router as conformance_router
from service.core.interactions import Core
from service.core.registry import REGISTRY, TYPES
from service.core.resources import AFTER_COMMIT
from service.dashboard.router import router as dashboard_router
from service.db import make_engine, migrate
from service.errors import register_error_handlers
from service.export.router import CAPABILITY as EXPORT_CAPABILITY, router as export_router
from service.group.router import CAPABILITY as GROUP_CAPABILITY, router as group_router
from service.hl7.router import router as hl7_router
from service.logs import quiet_access_log
from service.ops import metrics
from service.ops.layer import Observe
from service.ops.logs import install_default_handler
from service.ops.router import migration_heads, router as ops_router
from service.replica import ReadRouter
from service.sdtm.router import router as sdtm_router
from service.settings import Settings, get_settings
from service.stats.router import CAPABILITY as STATS_CAPABILITY, router as stats_router
from service.subscription import events as subscription_events, service as subscription_service
from service.subscription.router import CAPABILITY as SUBSCRIPTION_CAPABILITY, router as subscription_router

log = logging.getLogger("trial_fhir")

DESCRIPTION = """
FHIR R4 (JSON) interoperability service for clinical trials, first for the Phase I/IIa trial of
hUCB-MSCs in moderate-to-severe atopic dermatitis.

* **Hospital EHRs** push single resources and transaction/batch Bundles to `/fhir`: idempotent with
  conditional create (`If-None-Exist`) and conditional update (`PUT /fhir/Observation?identifier=…`).
* **Research portals** pull with FHIR search.
* Every error is a FHIR `OperationOutcome` naming the element (`expression`).

Media types: `application/fhir+json` (default) and `application/json`; `_format=json` is honoured.
"""


def _operation_id(route: APIRoute) -> str:
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


class TrialFhirApp(FastAPI):
    """FastAPI, with the front door (service/api/front_door.py) answering the hot paths in front of it, and the
    security headers and CORS (service/api/security_headers.py) in front of both, so no answer escapes them."""

    front_door: FrontDoor | None = None
    outer: ASGIApp | None = None  # set by create_app

    async def __call__(self, scope, receive, send) -> None:
        if self.outer is not None:
            return await self.outer(scope, receive, send)
        return await super().__call__(scope, receive, send)


STARTUP_RETRY_S = 1.0  # between start-up attempts while the database is away


async def once_the_database_answers(work: Callable[[], object], wait_s: float) -> None:
    """Run start-up's database work (migration, demo load); while the database is down or restarting (a fault,
    service/faults.py) try again every STARTUP_RETRY_S for up to `wait_s`, then give up with the fault. Found by
    the soak (bench/soak.py): a worker uvicorn started in place of a killed one failed its start-up on a PostgreSQL
    restart, and uvicorn's supervisor then stopped the whole service ("failed to start, stopping the parent")."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        try:
            work()
            return
        except Exception as exc:
            if faults.fault_kind(exc) is None or loop.time() >= deadline:
                raise
            log.warning("the database is not answering at start-up (%s); trying again", type(exc).__name__)
        await asyncio.sleep(STARTUP_RETRY_S)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check()
    engine = make_engine(settings.database_url, echo=settings.sql_echo,
                         statement_timeout_ms=settings.statement_timeout_ms)
    replica = None if settings.read_database_url is None else make_engine(
        settings.read_database_url, echo=settings.sql_echo, statement_timeout_ms=settings.statement_timeout_ms)
    reads = ReadRouter(engine, replica, max_lag_s=settings.read_max_lag_s)
    faults.configure(settings.retry_after_s)
    subscription_events.configure(settings.subscription_cache_s)
    subscription_service.configure(allow_http_loopback=settings.subscription_allow_http_loopback)
    core = Core(engine, settings, reads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.auth == "off":  # `serve` refuses it off loopback; other launchers (plain uvicorn) get this line
            log.warning("access control is OFF (TRIAL_FHIR_AUTH=off): every request is answered without a token")
        if settings.migrate_on_startup:
            await once_the_database_answers(partial(migrate, engine), settings.startup_wait_s)
        if settings.load_catalogue_on_startup:
            from service.catalogue.load import load_catalogue_if_absent
            await once_the_database_answers(partial(load_catalogue_if_absent, engine), settings.startup_wait_s)
        if settings.load_demo_on_startup:
            from service.demo.load import load_demo_if_empty
            await once_the_database_answers(partial(load_demo_if_empty, engine), settings.startup_wait_s)
        from service.export.worker import start_job_runner
        # the background jobs' runner (exports); None when TRIAL_FHIR_EXPORT_WORKER=false
        app.state.job_runner = app.state.export_worker = start_job_runner(engine, settings, reads)
        await core.start()
        app.state.subscription_sender = None
        if settings.subscription_sender:  # notifications (service/subscription/sender.py)
            from service.subscription.sender import Sender
            app.state.subscription_sender = await Sender(engine, settings).start()
        app.state.mllp = None
        if settings.mllp_port is not None:  # the HL7 v2 MLLP listener beside the HTTP service, on its loop
            from service.hl7.mllp import start_listener
            app.state.mllp, _ = await start_listener(core, settings, settings.mllp_host, settings.mllp_port)
        # what start-up built (modules, models, routes, catalogues) lives as long as the process: out of the
        # collector's sight, a full collection no longer walks it, so it no longer stalls requests for tens of ms
        gc.collect()
        gc.freeze()
        yield
        if app.state.mllp is not None:
            await app.state.mllp.stop()
        if app.state.subscription_sender is not None:
            await app.state.subscription_sender.stop()
        await core.stop()
        if app.state.export_worker is not None:
            app.state.export_worker.stop()
        engine.dispose()

    app = TrialFhirApp(
        title="trial-fhir",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        docs_url=None, redoc_url=None,  # served from packaged assets, not a CDN (service/api/docs_ui.py)
        openapi_tags=[{"name": "System", "description": "CapabilityStatement, transaction and batch Bundles"}],
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.core = core
    app.state.authenticator = Authenticator(engine, settings)
    app.state.capability_contributions = (EXPORT_CAPABILITY, GROUP_CAPABILITY, STATS_CAPABILITY,
                                           SUBSCRIPTION_CAPABILITY)
    register_error_handlers(app)
    app.add_middleware(FhirFormatMiddleware, max_body_bytes=settings.max_body_bytes,
                       max_repeats=settings.max_param_repeats, max_values=settings.max_or_values)

    app.state.migration_heads = migration_heads()
    if settings.metrics:
        metrics.watch_pool(engine)
        if replica is not None:
            metrics.watch_pool(replica)
        if metrics.count_written not in AFTER_COMMIT:
            AFTER_COMMIT.append(metrics.count_written)
    app.include_router(ops_router)
    app.include_router(docs_ui.router)
    docs_ui.mount_assets(app)
    app.include_router(auth_router)  # before the FHIR routes: /fhir/.well-known/smart-configuration
    app.include_router(conformance_router)
    app.include_router(bundle_router)
    app.include_router(export_router)
    app.include_router(group_router)
    app.include_router(hl7_router)
    app.include_router(sdtm_router)
    app.include_router(subscription_router)
    app.include_router(stats_router)  # before the generic FHIR routes (ResearchStudy/{id}/$summary)
    app.include_router(dashboard_router)  # the study dashboard at /
    for router in build_routers():
        app.include_router(router)
    routed = partial(FastAPI.__call__, app)
    if settings.front_door:
        app.front_door = FrontDoor(routed, core, TYPES, app.state)
    # slow bodies cut off (408) in front of everything that reads one; slow headers: service/api/read_timeouts.py
    answering: ASGIApp = app.front_door or routed
    if settings.gzip:  # inside HEAD's handling: a HEAD's headers are those of the (compressed) GET
        answering = compressed(answering, minimum_size=settings.gzip_min_bytes, level=settings.gzip_level)
    inner = BodyReadTimeout(ControlCharacterPaths(Methods(answering, app)), settings.body_timeout_s)
    # outermost: every request, whoever answers it, gets its request id, one log line and its metrics
    app.outer = Observe(secured(inner, settings), request_log=settings.request_log, count=settings.metrics)
    quiet_access_log()
    install_default_handler(settings.log_format)
    _add_outcome_schema(app)
    return app


#: any resource: what a Bundle entry holds besides the searched type (an `_include`d one, an OperationOutcome)
RESOURCE_SCHEMA = {"type": "object", "title": "Resource", "required": ["resourceType"], "description":
                   "Any FHIR R4 resource (https://hl7.org/fhir/R4/resource.html)", "properties": {
                       "resourceType": {"type": "string"}, "id": {"type": "string"},
                       "meta": {"type": "object", "title": "Meta"}}}


def bundle_schema(resource_type: str) -> dict:
    """A searchset or history Bundle of `resource_type` (with what `_include` and `_revinclude` add)."""
    return {"type": "object", "title": f"Bundle of {resource_type}", "required": ["resourceType", "type"],
            "description": "FHIR R4 Bundle (https://hl7.org/fhir/R4/bundle.html): a searchset (paged by the `next` "
            "link) or a history", "properties": {
                "resourceType": {"type": "string", "enum": ["Bundle"]},
                "type": {"type": "string", "enum": ["searchset", "history"]},
                "total": {"type": "integer", "minimum": 0},
                "link": {"type": "array", "items": {"type": "object", "required": ["relation", "url"], "properties": {
                    "relation": {"type": "string", "description": "self, next, previous"},
                    "url": {"type": "string", "format": "uri"}}}},
                "entry": {"type": "array", "items": {"type": "object", "properties": {
                    "fullUrl": {"type": "string", "format": "uri"},
                    "resource": {"anyOf": [{"$ref": f"#/components/schemas/{resource_type}"},
                                           {"$ref": "#/components/schemas/Resource"}]},
                    "search": {"type": "object", "properties": {
                        "mode": {"type": "string", "enum": ["match", "include", "outcome"]}}},
                    "request": {"type": "object"}, "response": {"type": "object"}}}}}}


def _add_outcome_schema(app: FastAPI) -> None:
    """Declare the schemas the documented bodies refer to: OperationOutcome (every error), each stored type's
    (generated from its fhir.resources model: fhir_mappings/openapi_schema.py) and a Bundle of each."""
    original = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("schemas", {})["OperationOutcome"] = {
            "type": "object", "description": "FHIR R4 OperationOutcome (https://hl7.org/fhir/R4/operationoutcome.html)",
            "required": ["resourceType", "issue"],
            "properties": {
                "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
                "issue": {"type": "array", "items": {"type": "object", "required": ["severity", "code"], "properties": {
                    "severity": {"type": "string", "enum": ["fatal", "error", "warning", "information"]},
                    "code": {"type": "string", "description": "IssueType, e.g. invalid, required, value, "
                             "code-invalid, business-rule, not-found, conflict"},
                    "diagnostics": {"type": "string"},
                    "expression": {"type": "array", "items": {"type": "string"},
                                   "description": "FHIRPath of the element at fault, e.g. "
                                   "Observation.valueQuantity.value"}}}}}}
        schemas = schema["components"]["schemas"]
        schemas["Resource"] = RESOURCE_SCHEMA
        for stored_type in REGISTRY:
            schemas[stored_type.name] = resource_schema(stored_type.model)
            schemas[f"{stored_type.name}Bundle"] = bundle_schema(stored_type.name)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema


app: FastAPI  # declared, not bound: `__getattr__` builds it on first access


def __getattr__(name: str) -> FastAPI:
    # `service.main:app` is built on first access, so importing this module creates no engine.
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
