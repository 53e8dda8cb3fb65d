"""`POST /hl7/v2`: an HL7 v2 ORU^R01 message in ER7, answered with its ACK."""

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.docs import ANY_ERROR, error_docs
from service.api.http import CoreDep, Ctx
from service.errors import PayloadTooLarge, UnsupportedMediaType
from service.hl7 import service

ER7 = "x-application/hl7-v2+er7"
ACCEPTED = (ER7, "text/plain", "application/hl7-v2", "application/edi-hl7v2")
EXAMPLE = ("MSH|^~\\&|LIS|SNUH-LAB|TRIAL-FHIR|SITE|20240201093000+0900||ORU^R01^ORU_R01|MSG00001|P|2.5.1|||||KOR|"
           "UNICODE UTF-8\rPID|1||MRN-000123^^^SNUH^MR\rOBR|1||F-7781^LIS|19113-0^IgE^LN|||20240201080000+0900\r"
           "OBX|1|NM|19113-0^IgE^LN||1520|k[IU]/L^kIU/L^UCUM|0-100|H|||F|||20240201083000+0900\r")
ACK_EXAMPLE = ("MSH|^~\\&|TRIAL-FHIR|SITE|LIS|SNUH-LAB|20240201003001+0000||ACK^R01^ACK|7000123ABCD|P|2.5.1|||||"
               "UNICODE UTF-8\rMSA|AA|MSG00001\r")

router = APIRouter(prefix="/hl7", tags=["HL7 v2"], responses=ANY_ERROR)


@router.post("/v2", name="receive_hl7_v2", summary="Receive an HL7 v2 ORU^R01 lab result message",
             openapi_extra={"requestBody": {"required": True, "description": "One ER7 message (segments ended by CR "
                                            "or line breaks); its character set is MSH-18's", "content": {
                 ER7: {"schema": {"type": "string"}, "example": EXAMPLE},
                 "text/plain": {"schema": {"type": "string"}, "example": EXAMPLE}}}},
             responses={200: {"description": "The ACK (MSA-1 AA stored, AE understood but not stored, AR refused), "
                              "with an ERR segment per problem", "content": {ER7: {"schema": {"type": "string"},
                                                                                   "example": ACK_EXAMPLE}}},
                        **error_docs(413, 415)})
async def receive_hl7_v2(request: Request, core: CoreDep, ctx: Ctx) -> Response:
    """Store the results of an ORU^R01 message through the same write as a FHIR transaction (validation, unit
    conversion, visits, access, audit), answered `200` with the ACK in ER7: `MSA-1` `AA` once stored (a resend of a
    stored message, same MSH-10, is `AA` and writes nothing), `AE` when understood but not stored (unknown patient,
    a code no ConceptMap maps to LOINC, a trial rule broken; each `ERR` carries the OperationOutcome's words), `AR`
    for a message that can't be read or is not an ORU^R01. A token without the write scopes gets `403` (an
    OperationOutcome naming the scope), a database fault `503` with `Retry-After`. Needs `system/Observation.cus`
    and `system/Provenance.c`."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ACCEPTED:
        raise UnsupportedMediaType(f"POST /hl7/v2 takes an ER7 message ({ER7} or text/plain), not "
                                   f"'{ctype or '(none)'}'", expression="Content-Type")
    limit = core.settings.hl7_max_message_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"The message of {length} bytes exceeds the limit of {limit}",
                              expression="Content-Length")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"The message exceeds the limit of {limit} bytes", expression="Content-Length")
    answer = await service.receive_message(core, ctx, bytes(body))
    if answer.refusal is not None:
        raise answer.refusal
    return Response(answer.body, media_type=f"{ER7}; charset={answer.encoding}")
