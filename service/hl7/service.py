"""Receiving an HL7 v2 ORU^R01 message (over HTTP or MLLP): read it, map its results to a FHIR transaction Bundle
(fhir_mappings/hl7v2.py) and hand that to the interaction core (`Core.transaction`) with the sender's Context, so
validation, unit conversion, visit assignment, access rules and audit are exactly a FHIR write's. The message id
(sender + MSH-10) is recorded in the same database transaction, so a resend is answered with the ACK it got, and
nothing is written twice, even when two copies arrive at once (the primary key refuses the second; its transaction
runs again and finds the first).

ACK: `AA` once the results are committed; `AE` when the message was understood but is not stored (an unknown
patient, a code no ConceptMap maps, a trial rule broken: one ERR per OperationOutcome issue, in its words); `AR`
for a message that can't be read or is not an ORU^R01, and for one the server can't take now (a database fault:
resend later) or the client may not write (its scopes)."""

import logging
from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from hl7.util import generate_message_control_id  # type: ignore[import-untyped]  # python-hl7 has no type hints
from sqlalchemy import insert, select
from sqlmodel import Session

from fhir_mappings import hl7v2
from fhir_mappings.hl7v2 import Message, NotStored, Problem, Rejected
from service.audit.events import event_for, outcome_for
from service.core import access
from service.core.context import Context
from service.core.interactions import Core
from service.db import read_session
from service.errors import FhirError, Forbidden
from service.hl7.models import Hl7MessageRecord
from service.store.models import table_of
from service.store.repository import find_ids_by_identifier
from service.store.unit_of_work import UnitOfWork, utcnow
from service.terminology.repository import find_translations

log = logging.getLogger("trial_fhir")
H = table_of(Hl7MessageRecord)
#: what writing a message's results needs: its Observations (conditional updates) and its Provenance
WRITES = (("Observation", "cus"), ("Provenance", "c"))


@dataclass(frozen=True)
class Answer:
    """The ACK of a message, and for the HTTP adapter the refusal it stands for when the request itself was refused
    (403: the token may not write; 5xx: the database), which HTTP answers with its own status."""

    ack: str
    code: str  # MSA-1
    encoding: str  # the codec of the message (the ACK is sent in its character set)
    refusal: FhirError | None = None

    @property
    def body(self) -> bytes:
        return self.ack.encode(self.encoding, errors="replace")


class _AlreadyStored(Exception):
    """The message id is in hl7_message: this transaction writes nothing (not a FhirError: nothing to audit)."""

    def __init__(self, ack: str, digest: str, patient_id: str | None) -> None:
        super().__init__("already stored")
        self.ack, self.digest, self.patient_id = ack, digest, patient_id


async def receive_message(core: Core, ctx: Context, raw: bytes) -> Answer:
    """The ACK of one ER7 message sent by `ctx.caller` (see the module's docstring)."""
    control = generate_message_control_id()
    try:
        message = hl7v2.read_message(raw)
    except Rejected as rejected:
        await _audit_refusal(core, ctx, 400)
        return Answer(hl7v2.ack(rejected.parsed, rejected.charset, "AR", rejected.problems, control), "AR",
                      rejected.encoding)

    def answer(code: str, problems: list[Problem], refusal: FhirError | None = None) -> Answer:
        return Answer(hl7v2.ack(message.parsed, message.charset, code, problems, control), code, message.encoding,
                      refusal)

    settings = core.settings
    try:
        system, value = hl7v2.patient_identifier(message, settings.hl7_authorities)
        stored, patient, translations = await to_thread.run_sync(
            _look_up, core, ctx, message, system, value)
        if stored is not None:
            return _resent(message, stored, answer)
        bundle, warnings, where = hl7v2.to_bundle(message, patient=patient, translations=translations,
                                                  zone=settings.hl7_timezone)
    except NotStored as failed:  # refused before the core saw it: audited here, as the core audits its refusals
        await _audit_refusal(core, ctx, 422)
        return answer("AE", failed.problems)
    except Forbidden as refused:  # a resend asked by a client that could not have written it
        return answer("AR", hl7v2.problems_from_issues(refused.issues, {}), refused)
    accepted = answer("AA", warnings)
    try:
        await core.transaction(ctx, bundle, first=lambda uow: _claim(uow, message, accepted.ack, patient))
    except _AlreadyStored as earlier:  # a copy sent at the same time was stored first
        try:
            await to_thread.run_sync(_may_resend_now, core, ctx, earlier.patient_id)
        except Forbidden as refused:
            return answer("AR", hl7v2.problems_from_issues(refused.issues, {}), refused)
        return _resent(message, (earlier.ack, earlier.digest), answer)
    except FhirError as refused:
        forbidden = [i for i in refused.issues if i.code == "forbidden"]
        if forbidden and refused.status_code != 403:  # refused for the client, whatever else failed with it
            refused = Forbidden(forbidden[0].diagnostics, issues=forbidden)
        problems = hl7v2.problems_from_issues(refused.issues, where)
        if any(p.location.startswith(("OBX", "PID")) for p in problems):  # the Provenance's failure follows theirs
            problems = [p for p in problems if p.location]
        if refused.status_code in (401, 403) or refused.status_code >= 500:
            return answer("AR", problems, refused)
        return answer("AE", problems)
    return accepted


async def _audit_refusal(core: Core, ctx: Context, status: int) -> None:
    """An AuditEvent (operation `hl7v2`, its outcome a client's error) for a message refused before it reached the
    core (which audits its own refusals and every write): no message goes unrecorded, whatever its fate. Its
    content is not recorded (it is patient data)."""
    await core.record([event_for(ctx, subtype="operation", operation="hl7v2", outcome=outcome_for(status),
                                 status=status)])


def _look_up(core: Core, ctx: Context, message: Message, system: str, value: str
             ) -> tuple[tuple[str, str] | None, str, dict[tuple[str, str], list[dict[str, str]]]]:
    """What the mapping needs, in one read: the message's earlier ACK (a resend), the Patient its identifier names,
    the ConceptMap translations of its local codes. A Patient found once is referenced literally (`Patient/id`:
    an unchanged result sent again is then no new version); otherwise the conditional reference is left for the
    write to refuse, in its own words. A resend is answered only to a caller that could have written it (the
    scopes of the write, and the patient's study for a client limited to studies): 403 otherwise."""
    with read_session(core.engine) as session:
        row = session.execute(select(H.c.ack, H.c.digest, H.c.patient_id).where(
            H.c.sender == message.facility, H.c.control_id == message.control_id)).first()
        if row is not None:
            _may_resend(session, ctx, row[2])
            return (row[0], row[1]), "", {}
        ids = find_ids_by_identifier(session, "Patient", system, value)
        translations = find_translations(session, hl7v2.local_codes(message))
    patient = f"Patient/{ids[0]}" if len(ids) == 1 else f"Patient?{hl7v2.identifier_query(system, value)}"
    return None, patient, translations


def _may_resend(session: Session, ctx: Context, patient_id: str | None) -> None:
    """403 unless the caller could have written the message it resends: the write's scopes, and for a client
    limited to studies, its patient's study."""
    for resource_type, letters in WRITES:
        access.require(ctx.caller, resource_type, letters)
    if patient_id and ctx.caller.studies_for("Observation", "u") is not None \
            and not access.visible(session, ctx.caller, "Patient", patient_id, "r"):
        raise Forbidden(f"Patient/{patient_id} belongs to a study this client has no access to",
                        expression="Observation.subject")


def _may_resend_now(core: Core, ctx: Context, patient_id: str | None) -> None:
    with read_session(core.engine) as session:
        _may_resend(session, ctx, patient_id)


def _claim(uow: UnitOfWork, message: Message, ack: str, patient: str) -> None:
    """At the start of the results' transaction: record the message id (sent now, so a concurrent copy waits on
    its key here and then fails, to run again and find it), or stop when it is recorded already."""
    row = uow.session.execute(select(H.c.ack, H.c.digest, H.c.patient_id).where(
        H.c.sender == message.facility, H.c.control_id == message.control_id)).first()
    if row is not None:
        raise _AlreadyStored(row[0], row[1], row[2])
    uow.session.execute(insert(H).values(sender=message.facility, control_id=message.control_id,
                                         digest=message.digest, received_at=utcnow(), ack=ack,
                                         patient_id=patient.removeprefix("Patient/") if "?" not in patient else None))
    uow.sent = True  # a row sent: in a write group, this message failing makes the group give up, never keeps it


def _resent(message: Message, stored: tuple[str, str], answer: Any) -> Answer:
    """A message id seen before: the same message gets the ACK it got (nothing is written again); another message
    under a used id is refused (AE), since it would otherwise be dropped unseen."""
    ack, digest = stored
    if digest != message.digest:
        return answer("AE", [Problem("205", f"MSH-10 '{message.control_id}' of {message.facility} was already used "
                                            "for another message: each message needs its own control id",
                                     "MSH^1^10", issue_type="duplicate")])
    return Answer(ack, "AA", message.encoding)
