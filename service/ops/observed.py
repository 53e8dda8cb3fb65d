"""What the request log and the metrics learn about a request while it is answered, from the code that knows it:
the request id (made by the observing layer, service/ops/layer.py), the route template (the front door, which
answers in front of FastAPI's routing), the client (the adapters' `context_of`) and the first issue of an error's
OperationOutcome (`service.errors.error_response`, the one function every error answer is made by).

A context variable, so none of them needs a reference to the request: the layer sets it for the request's task, and
the worker threads that run a route or a write see it too (anyio copies the context into them)."""

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Observed:
    request_id: str
    route: str | None = None  # the route template, when the router did not set scope["route"]
    client: str | None = None  # the verified token's client id ("anonymous" without access control)
    issue: Any = None  # the first issue of the error's OperationOutcome (fhir_mappings.outcome.Issue)


CURRENT: ContextVar[Observed | None] = ContextVar("trial_fhir_observed", default=None)


def current() -> Observed | None:
    return CURRENT.get()


def note_issue(issues: list[Any]) -> None:
    """Keep the first issue of an error answer for the request log (a no-op outside an observed request)."""
    observed = CURRENT.get()
    if observed is not None and observed.issue is None and issues:
        observed.issue = issues[0]
