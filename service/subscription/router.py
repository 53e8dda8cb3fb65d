"""Subscription/$status and Subscription/$events (Subscriptions Backport IG): HTTP only, answered by the interaction
core (service/core/interactions.py). The Subscription resource itself has the routes of every stored type."""

from typing import Annotated

from fastapi import APIRouter, Path, Query

from fhir_mappings.subscription import TOPICS
from service.api.docs import ANY_ERROR, error_docs, fhir_json
from service.api.http import CoreDep, Ctx
from service.conformance.service import Contribution
from service.responses import FhirJSONResponse

CAPABILITY = Contribution(operations={"Subscription": (
    {"name": "status", "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/"
                                     "backport-subscription-status",
     "documentation": "GET [base]/Subscription/{id}/$status: its status Parameters (events since start, error)."},
    {"name": "events", "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/"
                                     "backport-subscription-events",
     "documentation": "GET [base]/Subscription/{id}/$events?eventsSinceNumber=N: its past events again."},
)}, resource_extensions={"Subscription": tuple(
    {"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
            "capabilitystatement-subscriptiontopic-canonical", "valueCanonical": url} for url in TOPICS)})

router = APIRouter(prefix="/fhir/Subscription", tags=["Subscription"], responses=ANY_ERROR)
SubscriptionId = Annotated[str, Path(description="Logical id of the Subscription")]
STATUS_EXAMPLE = {"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [{"resource": {
    "resourceType": "Parameters", "parameter": [
        {"name": "subscription", "valueReference": {"reference": "Subscription/1"}},
        {"name": "topic", "valueCanonical": "https://trial-fhir.org/SubscriptionTopic/serious-adverse-event"},
        {"name": "status", "valueCode": "active"}, {"name": "type", "valueCode": "query-status"},
        {"name": "events-since-subscription-start", "valueString": "12"}]}}]}


@router.get("/{id}/$status", name="status_Subscription", summary="Status of a Subscription",
            responses={200: fhir_json(STATUS_EXAMPLE, "A searchset Bundle with the status Parameters"),
                       **error_docs(404, 410)})
async def subscription_status(id: SubscriptionId, core: CoreDep, ctx: Ctx) -> FhirJSONResponse:
    """`$status` (Backport IG): the Subscription's status (requested, active, error, off), the number of events
    since it started and, in error, why. Needs the `r` scope on Subscription (and its study)."""
    return FhirJSONResponse(await core.subscription_status(ctx, id))


@router.get("/{id}/$events", name="events_Subscription", summary="Past events of a Subscription",
            responses={200: fhir_json(STATUS_EXAMPLE, "A history Bundle: the status Parameters (query-event), then "
                                      "the events' resources"), **error_docs(400, 404, 410)})
async def subscription_events(
        id: SubscriptionId, core: CoreDep, ctx: Ctx,
        since: Annotated[int | None, Query(alias="eventsSinceNumber", ge=1, le=2**31 - 1,
                                           description="The first event number wanted")] = None,
        upto: Annotated[int | None, Query(alias="eventsUntilNumber", ge=1, le=2**31 - 1,
                                          description="The last event number wanted")] = None,
        content: Annotated[str | None, Query(description="empty, id-only or full-resource (default: the "
                                             "subscription's)")] = None) -> FhirJSONResponse:
    """`$events` (Backport IG): the events from `eventsSinceNumber` on (at most TRIAL_FHIR_SUBSCRIPTION_MAX_COUNT
    of them; ask again from the next number), as a notification would carry them: a portal that was down
    catches up without a gap. Every event is kept."""
    return FhirJSONResponse(await core.subscription_events(ctx, id, since=since, upto=upto, content=content))
