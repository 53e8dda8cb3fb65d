"""AuditEvent as a stored type (AUDIT_EVENT): read and searched like any other through the generic code, written
only by the server (service/audit/chain.py appends rows; `writable=False` keeps every client's write out, 405).

Search parameters:

* `date`: when the event was recorded (`AuditEvent.recorded`, UTC); also the default sort.
* `agent`: the client, a token `[issuer|]client-id` on `agent.who.identifier` (`agent=portal`,
  `agent=https://issuer.example|portal`). R4's `agent` is a reference, but clients are not resources here: a trial
  parameter of type token, published as a SearchParameter.
* `patient`: `Patient/id` (or `id`): the events that name the patient as an entity.
* `entity`: `Type/id` (or `id`, any type): the events that name that resource (its version ignored), patients
  included, as R4's `entity` (`AuditEvent.entity.what`).
* `subtype`: the RESTful interaction code (`read`, `search-type`, `create`, …, `operation`).
* `action`: C R U D E; `outcome`: 0 4 8 12.

`patient` and `entity` read `audit_entity` (one row per resource an event names, indexed by (type, id, recorded)):
an event of a search names several patients.
"""

from typing import Any

from fhir_mappings import fhir
from service import examples
from service.audit.events import ACTION_SYSTEM, INTERACTION, OUTCOME_SYSTEM
from service.audit.models import AuditEntityRecord, AuditEventRecord
from service.core.stored_type import StoredType, param
from service.errors import MethodNotAllowed
from service.store.models import table_of
from service.store.unit_of_work import UnitOfWork

A = table_of(AuditEventRecord)
E = table_of(AuditEntityRecord)


def _index(uow: UnitOfWork, payload: dict[str, Any], id: str, replacing: bool) -> None:
    # never reached: the write path (service/core/resources.py `writable`) refuses a type that is not writable first
    raise MethodNotAllowed("AuditEvent is read-only", expression="AuditEvent")


#: audit_entity rows of an event, and their copy of its `recorded` (a date criterion narrows the child rows too)
_LINK = (A.c.seq, E.c.seq, E.c.resource_type, E.c.resource_id, A.c.recorded, E.c.recorded)

AUDIT_EVENT = StoredType(
    "AuditEvent", fhir.AuditEvent, A, _index, examples.AUDIT_EVENT, writable=False, exported=False, rank=9,
    search=(
        param("date", "datetime", A.c.recorded, "AuditEvent.recorded", "When the event was recorded (UTC)"),
        param("agent", "coding", (A.c.client_system, A.c.client), "AuditEvent.agent.who.identifier",
              "The client that made the request: its id, or its token's issuer|id", custom=True),
        param("patient", "linked", _LINK, "AuditEvent.entity.what.where(resolve() is Patient)",
              "A patient the event concerns", targets=("Patient",)),
        param("entity", "linked", _LINK, "AuditEvent.entity.what",
              "A resource the event names (Type/id; the version is not compared)"),
        param("subtype", "code", A.c.subtype, "AuditEvent.subtype",
              "The RESTful interaction (read, vread, search-type, create, update, delete, transaction, operation…)",
              systems=(INTERACTION,)),
        param("action", "code", A.c.action, "AuditEvent.action", "C, R, U, D or E", systems=(ACTION_SYSTEM,)),
        param("outcome", "code", A.c.outcome, "AuditEvent.outcome", "0 success, 4 minor (a client's error), "
              "8 serious (the server's), 12 major failure", systems=(OUTCOME_SYSTEM,)),
    ),
    sorts={"date": A.c.recorded}, default_sort="date")
