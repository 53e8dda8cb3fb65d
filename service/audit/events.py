"""AuditEvents as IHE Basic Audit Log Patterns (BALP) describe them, one per interaction: pure functions, no I/O.

An event says what was done (`type` rest, `subtype` the RESTful interaction, `action` C/R/U/D/E), when
(`recorded`), how it ended (`outcome`, with a fixed text per HTTP status for failures: an OperationOutcome's
diagnostics can quote the values sent, and the audit trail must not copy PHI out of a refused request), who asked
(the client agent, DICOM 110153 Source Role ID, with its network address) and who answered (this server, 110152
Destination Role ID), and what it touched: the query (base64, as BALP Query asks), the request id (BALP's
`XrequestId` transaction entity), each patient (role 1) and each resource version (role 4).

`build_event` returns an `AuditRecord`: the AuditEvent JSON as it will be stored, plus the fields the chain and
the search index read, and the digest of all of it, computed here so that the chain lock is held only for the
link itself (service/audit/chain.py).
"""

import base64
import hashlib
import itertools
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import orjson

from fhir_mappings.dates import fhir_instant
from service.core.context import Context

SERVER_NAME = "trial-fhir"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION = "http://hl7.org/fhir/restful-interaction"
OUTCOME_SYSTEM = "http://hl7.org/fhir/audit-event-outcome"
ACTION_SYSTEM = "http://hl7.org/fhir/audit-event-action"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
#: the system of the second subtype coding, naming the operation of an `operation` interaction ($export, $summary)
OPERATION_SYSTEM = "https://trial-fhir.org/CodeSystem/operation"

#: each RESTful interaction (http://hl7.org/fhir/restful-interaction) and its action; BALP records a search as
#: Execute (its Query pattern), and so the other interactions that are more than one C/R/U/D
ACTIONS = {"read": "R", "vread": "R", "history-instance": "R", "history-type": "R", "history-system": "R",
           "capabilities": "R", "search-type": "E", "search-system": "E", "create": "C", "update": "U",
           "patch": "U", "delete": "D", "transaction": "E", "batch": "E", "operation": "E"}
OUTCOMES = {0: "Success", 4: "Minor failure", 8: "Serious failure", 12: "Major failure"}
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # a FHIR id (what audit_entity.resource_id holds)
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]{1,39})/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?/?$")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One AuditEvent ready to append: `content` is its JSON as stored and served (with `id` and `meta`); the other
    fields are what `audit_event` / `audit_entity` index, and `digest` the sha256 of all of them (`record_digest`),
    which the chain links."""

    id: str
    recorded: datetime  # UTC, whole milliseconds (what the database gives back, and `recorded` in the JSON)
    client: str
    client_system: str | None
    subtype: str
    action: str
    outcome: int
    patients: tuple[str, ...]
    entities: tuple[tuple[str, str], ...]  # (type, id) of every entity.what, patients included: sorted, once each
    content: str
    digest: str

    @property
    def resource(self) -> dict[str, Any]:
        """The AuditEvent as a dict."""
        parsed: dict[str, Any] = orjson.loads(self.content)
        return parsed


def record_digest(id: str, recorded: datetime, client_system: str | None, client: str, subtype: str, action: str,
                  outcome: str, entities: Iterable[tuple[str, str]], content: str) -> str:
    """sha256 (hex) of an event's canonical bytes: every indexed field and the stored JSON, in a fixed order, as
    a JSON array (unambiguous whatever the texts hold). `verify` recomputes it from what the database holds."""
    canonical = orjson.dumps([id, recorded.astimezone(UTC).isoformat(timespec="microseconds"), client_system, client,
                              subtype, action, outcome, sorted(f"{t}/{i}" for t, i in entities), content])
    return hashlib.sha256(canonical).hexdigest()


def outcome_for(status: int) -> int:
    """The AuditEvent outcome of an HTTP status: 0 success, 4 a client's error (4xx), 8 the server's (5xx)."""
    return 0 if status < 400 else 4 if status < 500 else 8


def outcome_text(outcome: int, status: int | None) -> str:
    """What `outcomeDesc` says of a failure: the HTTP status and its reason phrase, never the error's own words."""
    if status is not None:
        try:
            return f"{status} {HTTPStatus(status).phrase}"
        except ValueError:
            return f"HTTP {status}"
    return OUTCOMES.get(outcome, "Failure")


def split_reference(reference: str) -> tuple[str, str, str | None] | None:
    """`Type/id`, `Type/id/_history/v` or an absolute URL ending so -> (type, id, version); None for anything else."""
    found = _REFERENCE.search(reference)
    return (found.group(1), found.group(2), found.group(3)) if found else None


def _patient_of(value: Any) -> list[str]:
    ref = value.get("reference") if isinstance(value, dict) else None
    parsed = split_reference(ref) if isinstance(ref, str) else None
    return [parsed[1]] if parsed and parsed[0] == "Patient" else []


#: where each type names the patient it concerns
_PATIENT_ELEMENTS = {"Observation": "subject", "AdverseEvent": "subject", "ResearchSubject": "individual",
                     "Encounter": "subject", "MedicationAdministration": "subject", "Procedure": "subject"}


def patients_of(resource_type: str, resource: dict[str, Any]) -> list[str]:
    """The ids of the Patients a resource concerns: a Patient itself, the subject of an Observation or
    AdverseEvent, the individual of a ResearchSubject (relative or absolute `Patient/<id>` references); none for
    the other types (a ResearchStudy concerns no one patient)."""
    if resource_type == "Patient":
        rid = resource.get("id")
        return [rid] if isinstance(rid, str) and rid else []
    if resource_type == "Provenance":  # the Patients among its targets
        return [p for target in resource.get("target") or [] for p in _patient_of(target)]
    element = _PATIENT_ELEMENTS.get(resource_type)
    return _patient_of(resource.get(element)) if element else []


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


# what every event says the same way: built once (orjson writes a shared object like any other)
_SOURCE_ROLE = {"coding": [_coding(DCM, "110153", "Source Role ID")]}
_SERVER_AGENT: dict[str, Any] = {"type": {"coding": [_coding(DCM, "110152", "Destination Role ID")]},
                                 "who": {"display": SERVER_NAME}, "requestor": False}
_SYSTEM_OBJECT = _coding(ENTITY_TYPE, "2", "System Object")
_PERSON = _coding(ENTITY_TYPE, "1", "Person")
_QUERY_ROLE = _coding(OBJECT_ROLE, "24", "Query")
_PATIENT_ROLE = _coding(OBJECT_ROLE, "1", "Patient")
_RESOURCE_ROLE = _coding(OBJECT_ROLE, "4", "Domain Resource")
_REQUEST_ID = _coding(BALP_ENTITY_TYPE, "XrequestId")
_REST = _coding(AUDIT_EVENT_TYPE, "rest", "Restful Operation")
_SOURCE = {"observer": {"display": SERVER_NAME}, "type": [_coding(SOURCE_TYPE, "4", "Application Server")]}
#: event ids: a random prefix (96 bits) per process and a counter, unique without reading os.urandom per event (a
#: uuid4 each cost ~15% of an event's CPU); a forked child makes its own prefix
_ids: tuple[int, str, Iterator[int]] = (0, "", itertools.count())


def new_id() -> str:
    """A unique id (a valid FHIR id): this process's random prefix and a counter."""
    global _ids
    pid, prefix, counter = _ids
    if pid != os.getpid():
        _ids = pid, prefix, counter = os.getpid(), uuid.uuid4().hex[:24], itertools.count(1)
    return f"{prefix}-{next(counter):x}"


def build_event(*, subtype: str, outcome: int, client: str, client_system: str | None = None,
                client_address: str | None = None, request_id: str | None = None, base_url: str | None = None,
                patients: Sequence[str] = (), resources: Sequence[str] = (), query: str | None = None,
                operation: str | None = None, status: int | None = None, action: str | None = None,
                recorded: datetime | None = None, id: str | None = None) -> AuditRecord:
    """The AuditEvent of one interaction.

    `subtype`: the restful-interaction code (`operation` for $export, $summary…, named by `operation`); `action`
    defaults to the interaction's (ACTIONS). `outcome`: 0, 4, 8 or 12 (`outcome_for(status)`); a failure's
    `outcomeDesc` is the status's fixed text. `client`, `client_system`: the client id and who vouched for it (the
    token's issuer); `client_address`: its network address. `patients`: Patient ids; `resources`: what was read or
    written, `Type/id/_history/v` (or `Type/id`). `query`: the query string as sent (a search)."""
    if subtype not in ACTIONS:
        raise ValueError(f"unknown interaction {subtype!r}; one of {', '.join(ACTIONS)}")
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of 0, 4, 8, 12, not {outcome!r}")
    action = action or ACTIONS[subtype]
    if action not in ("C", "R", "U", "D", "E"):
        raise ValueError(f"action must be one of C, R, U, D, E, not {action!r}")
    moment = (recorded or datetime.now(UTC)).astimezone(UTC)
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)  # as `recorded` says it: milliseconds
    instant = fhir_instant(moment)
    event_id = id or new_id()

    subtypes = [_coding(INTERACTION, subtype)]
    if operation:
        name = operation if operation.startswith("$") else f"${operation}"
        subtypes.append(_coding(OPERATION_SYSTEM, name))
    client_agent: dict[str, Any] = {
        "type": _SOURCE_ROLE,
        "who": {"identifier": {**({"system": client_system} if client_system else {}), "value": client}},
        "requestor": True,
    }
    if client_address:
        client_agent["network"] = {"address": client_address, "type": "2"}  # 2: IP address
    server_agent: dict[str, Any] = _SERVER_AGENT
    if base_url:
        server_agent = {**_SERVER_AGENT, "network": {"address": base_url, "type": "5"}}  # 5: URI

    entities: list[dict[str, Any]] = []
    if query:
        entities.append({"type": _SYSTEM_OBJECT, "role": _QUERY_ROLE,
                         "query": base64.b64encode(query.encode()).decode()})
    if request_id:
        entities.append({"what": {"identifier": {"value": request_id}},
                         "type": _REQUEST_ID})
    indexed: set[tuple[str, str]] = set()
    unique_patients = tuple(dict.fromkeys(patients))
    for patient in unique_patients:
        if not _ID.match(patient):
            raise ValueError(f"not a Patient id: {patient!r}")
        entities.append({"what": {"reference": f"Patient/{patient}"}, "type": _PERSON, "role": _PATIENT_ROLE})
        indexed.add(("Patient", patient))
    for reference in dict.fromkeys(resources):
        parsed = split_reference(reference)
        if parsed is None:
            raise ValueError(f"not a resource reference (Type/id[/_history/v]): {reference!r}")
        rtype, rid, version = parsed
        what = f"{rtype}/{rid}" + (f"/_history/{version}" if version else "")
        entities.append({"what": {"reference": what}, "type": _SYSTEM_OBJECT, "role": _RESOURCE_ROLE})
        indexed.add((rtype, rid))

    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": event_id,
        "meta": {"versionId": "1", "lastUpdated": instant},
        "type": _REST,
        "subtype": subtypes,
        "action": action,
        "recorded": instant,
        "outcome": str(outcome),
    }
    if outcome != 0:
        event["outcomeDesc"] = outcome_text(outcome, status)
    event["agent"] = [client_agent, server_agent]
    event["source"] = _SOURCE
    if entities:
        event["entity"] = entities
    content = orjson.dumps(event).decode()
    ordered = tuple(sorted(indexed))
    return AuditRecord(event_id, moment, client, client_system, subtype, action, outcome, unique_patients, ordered,
                       content, record_digest(event_id, moment, client_system, client, subtype, action, str(outcome),
                                              ordered, content))


def event_for(ctx: Context, *, subtype: str, outcome: int, patients: Sequence[str] = (),
              resources: Sequence[str] = (), operation: str | None = None, status: int | None = None,
              action: str | None = None, query: str | None = None) -> AuditRecord:
    """`build_event` with what the request's Context knows: the client (its id and token issuer), its address, the
    request id, this server's base URL, and the query string (`query` overrides it, e.g. a Bundle entry's)."""
    caller = ctx.caller
    return build_event(subtype=subtype, outcome=outcome, client=caller.name, client_system=caller.issuer,
                       client_address=ctx.client_address, request_id=ctx.request_id, base_url=ctx.base_url,
                       patients=patients, resources=resources, query=query if query is not None else ctx.query,
                       operation=operation, status=status, action=action)


def touched(bundle: bytes | dict[str, Any]) -> list[tuple[str, list[str]]]:
    """What a searchset (or history, transaction-response) Bundle shows: (`Type/id/_history/v`, its patients) per
    resource entry, matches and includes, in order; OperationOutcome entries left out."""
    parsed: dict[str, Any] = orjson.loads(bundle) if isinstance(bundle, (bytes, str)) else bundle
    found = []
    for item in parsed.get("entry") or ():
        resource = item.get("resource") if isinstance(item, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") in (None, "OperationOutcome"):
            continue
        rtype, rid = resource["resourceType"], resource.get("id")
        if not isinstance(rid, str):
            continue
        version = (resource.get("meta") or {}).get("versionId")
        found.append((f"{rtype}/{rid}" + (f"/_history/{version}" if version else ""), patients_of(rtype, resource)))
    return found


def search_events(ctx: Context, bundle: bytes | dict[str, Any], *, subtype: str = "search-type",
                  query: str | None = None) -> list[AuditRecord]:
    """The AuditEvents of a successful search, as BALP's PatientQuery asks: one per patient the page shows, naming
    that patient and that patient's resources; the resources of no patient (studies) in one more event without a
    patient; one event naming nothing when the page is empty. Each carries the query."""
    by_patient: dict[str, list[str]] = {}
    no_patient: list[str] = []
    for reference, patients in touched(bundle):
        for patient in patients:
            by_patient.setdefault(patient, []).append(reference)
        if not patients:
            no_patient.append(reference)
    records = [event_for(ctx, subtype=subtype, outcome=0, patients=[patient], resources=references, query=query)
               for patient, references in by_patient.items()]
    if no_patient or not records:
        records.append(event_for(ctx, subtype=subtype, outcome=0, resources=no_patient, query=query))
    return records
