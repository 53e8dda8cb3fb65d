"""`POST /fhir`: transaction and batch Bundles."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.docs import ANY_ERROR, body_doc, error_docs, fhir_json
from service.api.http import CoreDep, Ctx, FhirBody, HistoryAt, HistoryCount, HistoryPage, HistorySince
from service.core.context import prefers
from service.examples import TRANSACTION
from service.responses import FhirJSONResponse

router = APIRouter(prefix="/fhir", default_response_class=FhirJSONResponse, responses=ANY_ERROR)

TRANSACTION_RESPONSE = {"resourceType": "Bundle", "type": "transaction-response", "entry": [
    {"response": {"status": "201 Created", "location": "Patient/5e0c…/_history/1", "etag": 'W/"1"'}},
    {"response": {"status": "201 Created", "location": "ResearchSubject/7a41…/_history/1", "etag": 'W/"1"'}},
    {"response": {"status": "201 Created", "location": "Observation/c3f9…/_history/1", "etag": 'W/"1"'}}]}



@router.post("", tags=["System"], name="transaction_or_batch", summary="Transaction or batch Bundle",
             openapi_extra=body_doc(TRANSACTION, "A Bundle of type transaction (all or nothing) or batch"),
             responses={200: fhir_json(TRANSACTION_RESPONSE, "transaction-response or batch-response Bundle"),
                        **error_docs(400, 404, 409, 412, 413, 415, 422)})
async def transaction_or_batch(request: Request, core: CoreDep, ctx: Ctx, body: FhirBody) -> Response:
    """Process a `transaction` Bundle as one database transaction (any failing entry fails all: every entry is
    checked, and one OperationOutcome lists each failing one as `Bundle.entry[i]…`), or a `batch` Bundle entry by
    entry (each with its own status and OperationOutcome in `response.outcome`, an unreadable entry too).
    `urn:uuid:` fullUrls and references to them resolve to the new ids; conditional creates
    (`request.ifNoneExist`) and conditional references work inside a transaction. Entries the trial does not keep
    (a type not stored, an Observation outside its study's catalogue, a resource about a patient enrolled in no
    study) are refused, or, under the out-of-scope policy `skip` (TRIAL_FHIR_OUT_OF_SCOPE or the study's own),
    answered `200 OK` with a warning and not stored. `Prefer: return=representation` puts each resulting resource
    in the response."""
    representation = prefers(request.headers.get("prefer"), "return=representation")
    return FhirJSONResponse(await core.transaction(ctx, body, representation=representation))


@router.get("/_history", tags=["System"], name="history_system", summary="History of everything",
            responses={200: fhir_json({"resourceType": "Bundle", "type": "history", "entry": []},
                                      "A history Bundle, newest first"), **error_docs(400)})
async def history_system(core: CoreDep, ctx: Ctx, since: HistorySince, count: HistoryCount = 50,
                         page: HistoryPage = None, at: HistoryAt = None) -> Response:
    """Every version of every resource the token may read (each type it holds `r` on, in its studies), newest
    first (deletions included), paged by the `next` link; `_since` keeps those made at or after an instant, `_at`
    those that were current at some moment of a date's period. The audit trail is searched at `/fhir/AuditEvent`,
    not listed here."""
    return FhirJSONResponse(await core.system_history(ctx, count=count, since=since, page=page, at=at))
