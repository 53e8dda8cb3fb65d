"""Expected failures, each rendered as a FHIR OperationOutcome with its HTTP status."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fhir_mappings.outcome import Issue, issue, outcome, pydantic_words
from service.ops.observed import note_issue
from service.responses import FhirJSONResponse

log = logging.getLogger("trial_fhir")


class FhirError(Exception):
    """Expected failure; rendered as an OperationOutcome with `status_code`."""

    status_code = 500
    issue_code = "exception"

    def __init__(self, diagnostics: str, *, issues: list[Issue] | None = None, expression: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(diagnostics)
        self.issues = issues or [issue(self.issue_code, diagnostics, *([expression] if expression else []))]
        self.headers = headers

    def prefixed(self, prefix: str) -> "FhirError":
        """The same error, its expressions located inside a Bundle entry."""
        err = type(self)(str(self), issues=[i.prefixed(prefix) for i in self.issues], headers=self.headers)
        return err


class ResourceInvalid(FhirError):
    """Malformed JSON or a structure that is not FHIR R4."""

    status_code, issue_code = 400, "invalid"


class BadRequest(FhirError):
    status_code, issue_code = 400, "invalid"


class Unauthorized(FhirError):
    """No valid access token (missing, expired, badly signed, wrong audience or issuer): 401 with the
    `WWW-Authenticate: Bearer` challenge of RFC 6750."""

    status_code, issue_code = 401, "login"

    def __init__(self, diagnostics: str, *, issues: list[Issue] | None = None, expression: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        error = "invalid_token" if "no access token" not in diagnostics.lower() else None
        challenge = 'Bearer realm="trial-fhir"' + (f', error="{error}"' if error else "")
        super().__init__(diagnostics, issues=issues, expression=expression,
                         headers={"WWW-Authenticate": challenge, **(headers or {})})


class Forbidden(FhirError):
    """The token is valid but grants no scope for the interaction (403, naming the scope that is missing)."""

    status_code, issue_code = 403, "forbidden"


class NotFound(FhirError):
    status_code, issue_code = 404, "not-found"


class MethodNotAllowed(FhirError):
    """The interaction exists but not on this resource type (a client's write of an AuditEvent): 405, with the
    `Allow` header naming what is allowed."""

    status_code, issue_code = 405, "not-supported"


class NotAcceptable(FhirError):
    status_code, issue_code = 406, "not-supported"


class Conflict(FhirError):
    status_code, issue_code = 409, "conflict"


class IdentifierTaken(Conflict):
    """Another resource holds the identifier. Raised before the unique index would be hit, so a conditional
    create racing a concurrent one is run again (and then finds the winner)."""


class Gone(FhirError):
    status_code, issue_code = 410, "deleted"


class PreconditionFailed(FhirError):
    status_code, issue_code = 412, "conflict"


class PayloadTooLarge(FhirError):
    status_code, issue_code = 413, "too-costly"


class UnsupportedMediaType(FhirError):
    status_code, issue_code = 415, "not-supported"


class PatchNotApplicable(FhirError):
    """A well-formed JSON Patch that can't be applied to the resource (a path that isn't there, a failed `test`):
    422, as RFC 5789 §2.2 says."""

    status_code, issue_code = 422, "processing"


class RuleViolation(FhirError):
    """A resource that is valid FHIR but breaks a value-set binding or a trial rule."""

    status_code, issue_code = 422, "business-rule"


class OutOfScope(RuleViolation):
    """A resource the trial does not keep: an Observation outside its study's catalogue, a resource about a patient
    enrolled in no study. Under the `reject` out-of-scope policy it is a 422 like any broken rule; under `skip` a
    Bundle entry holding it answers 200 with a warning and nothing of it is stored. `policy`: the policy of the
    study it would belong to, when that study sets one (else the server's setting decides)."""

    def __init__(self, diagnostics: str, *, issues: list[Issue] | None = None, expression: str | None = None,
                 headers: dict[str, str] | None = None, policy: str | None = None) -> None:
        super().__init__(diagnostics, issues=issues, expression=expression, headers=headers)
        self.policy = policy

    def prefixed(self, prefix: str) -> "FhirError":
        return OutOfScope(str(self), issues=[i.prefixed(prefix) for i in self.issues], headers=self.headers,
                          policy=self.policy)


def raise_for_issues(issues: list[Issue]) -> None:
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        raise RuleViolation(errors[0].diagnostics, issues=errors)


_STATUS_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                 406: "not-supported", 409: "conflict", 410: "deleted", 412: "conflict", 413: "too-costly",
                 415: "not-supported", 422: "processing", 503: "transient"}


def error_response(status_code: int, issues: list[Issue], headers: dict[str, str] | None = None) -> FhirJSONResponse:
    note_issue(issues)  # the request log names the first issue of a 4xx (service/ops/layer.py)
    return FhirJSONResponse(outcome(issues), status_code=status_code, headers=headers)


def failure_response(exc: Exception, method: str, path: str) -> FhirJSONResponse:
    """The OperationOutcome response for an exception an interaction raised: a `FhirError` with its own status,
    a database fault (service/faults.py) a 503 with `Retry-After`, anything else a 500 whose traceback goes to the
    log only. The app's exception handlers and the front door
    (service/api/front_door.py) both answer through this."""
    if not isinstance(exc, FhirError):
        from service.faults import unavailable  # service/faults.py builds on this module's FhirError

        exc = unavailable(exc) or exc  # a database fault: 503 + Retry-After, not a 500
    if isinstance(exc, FhirError):
        return error_response(exc.status_code, exc.issues, exc.headers)
    log.error("unexpected error on %s %s", method, path, exc_info=exc)
    return error_response(500, [issue("exception", "Internal server error; the request was not applied.")])


def register_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FhirError)
    async def fhir_error(request: Request, exc: FhirError) -> FhirJSONResponse:
        return failure_response(exc, request.method, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> FhirJSONResponse:
        issues = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ())]
            where = loc[0] if loc else "request"
            name = ".".join(loc[1:]) or where
            issues.append(issue("invalid", f"{where} parameter '{name}': {pydantic_words(err)}", name))
        return error_response(400, issues or [issue("invalid", "Invalid request")])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> FhirJSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        where = "request"
        if exc.status_code == 404 and detail == "Not Found":
            detail, where = f"No such endpoint or resource type: {request.url.path}", "request.url"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            from service.api.methods import allowed_methods  # the api layer: only for this answer

            detail, where = f"{request.method} is not supported on {request.url.path}", "request.method"
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request.app, request.scope))}
        code = _STATUS_CODES.get(exc.status_code, "exception")
        return error_response(exc.status_code, [issue(code, detail, where)], headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> FhirJSONResponse:
        return failure_response(exc, request.method, request.url.path)

    # database faults (a 503, service/faults.py) are answers, not crashes: handled where the FhirErrors are, not by
    # the last-resort handler above, which re-raises to the server after answering (a traceback for every request
    # made while the database restarts)
    for fault in _fault_classes():
        app.add_exception_handler(fault, unexpected)


def _fault_classes() -> list[type[Exception]]:
    """The exception families a database fault arrives as: SQLAlchemy's, the OS's (a refused connection), and
    asyncpg's (the async read pool and the audit writer)."""
    from sqlalchemy.exc import SQLAlchemyError

    classes: list[type[Exception]] = [SQLAlchemyError, OSError]
    try:
        import asyncpg
    except ModuleNotFoundError:  # SQLite-only installs
        return classes
    return [*classes, asyncpg.exceptions.PostgresError, asyncpg.exceptions.InterfaceError]

