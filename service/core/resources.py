"""The FHIR RESTful interactions on stored resources: one way in (parse → check → map → store) for POST,
PUT, DELETE and every Bundle entry, and the reads that serve stored JSON as it is."""

import base64
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl

import orjson
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import Session

from fhir_mappings import json_patch
from fhir_mappings.outcome import Issue, issue
from fhir_mappings.primitives import whole_number
from fhir_mappings.references import ID_RE
from fhir_mappings.validation import duplicate_key_issues, structure_issues
from service import faults
from service.audit.chain import APPEND_SQL, append, events_json
from service.audit.events import AuditRecord, patients_of
from service.core import access
from service.core.context import SYSTEM, Caller
from service.core.registry import handler_for
from service.core.stored_type import StoredType
from service.errors import (
    BadRequest,
    Conflict,
    Gone,
    IdentifierTaken,
    MethodNotAllowed,
    NotFound,
    OutOfScope,
    PatchNotApplicable,
    PreconditionFailed,
    ResourceInvalid,
    RuleViolation,
)
from service.search.service import match_ids
from service.store import repository
from service.store.models import ResourceRecord, ResourceVersion, table_of
from service.store.repository import CurrentRow, VersionRow
from service.store.unit_of_work import Change, UnitOfWork
from service.subscription import events as subscription_events

log = logging.getLogger("trial_fhir")
R = table_of(ResourceRecord)
V = table_of(ResourceVersion)
T = TypeVar("T")
#: identifiers are the key of conditional writes and sit in a unique index: longer ones are refused (422)
MAX_IDENTIFIER_LENGTH = 1024


@dataclass
class Stored:
    """A resource version as written or read: what the HTTP layer needs for the body and headers."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    content: str | None  # canonical JSON; None for a delete
    status: int = 200
    created: bool = False

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    @property
    def location(self) -> str:
        return f"{self.resource_type}/{self.id}/_history/{self.version_id}"


def parse_version(etag: str | None) -> int | None:
    """`W/"3"`, `"3"` or `3` -> 3; None when absent."""
    if etag is None:
        return None
    raw = etag.strip()
    raw = raw[2:] if raw.startswith("W/") else raw
    raw = raw.strip('"')
    if not whole_number(raw):
        raise BadRequest(f"If-Match must be a version ETag like W/\"1\", got '{etag}'", expression="If-Match")
    return int(raw)


def writable(resource_type: str) -> StoredType:
    """The stored type, if clients may write it: 405 for a type only the server writes (AuditEvent), before
    anything else is looked at. Every create, update and delete (Bundle entries included) comes through here."""
    handler = handler_for(resource_type)
    if not handler.writable:
        raise MethodNotAllowed(f"{resource_type} is read-only: the server records them; they are never created, "
                               "updated or deleted through the API", expression=resource_type,
                               headers={"Allow": "GET, HEAD"})
    return handler


def read_json(raw: bytes | str) -> Any:
    """JSON text as received (an HTTP body, a file, an EHR's answer): 400 for malformed JSON and for a name given
    twice in one object (each repeat named by its element path). Every source of JSON resources reads them through
    here before `create`/`update` (or a Bundle) run `check_structure` on them: one reader, one set of JSON rules."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ResourceInvalid(malformed_json(exc), expression="body") from None
    repeated = duplicate_key_issues(raw, data)
    if repeated:
        raise ResourceInvalid(repeated[0].diagnostics, issues=repeated)
    return data


#: what orjson's parse errors mean, in our words (the first that its message contains)
_JSON_FAULTS = (("zero-length", "it is empty"), ("UTF-8", "it is not UTF-8 text"),
                ("end of data", "it ends before the JSON does"), ("trailing comma", "a comma before a closing bracket"),
                ("string key", "a name that is not a double-quoted string"),
                ("unexpected character", "a character JSON does not allow there"),
                ("invalid literal", "a value that is not a JSON value"), ("", "text that is not JSON"))


def malformed_json(exc: orjson.JSONDecodeError) -> str:
    """'Malformed JSON: …' for a body orjson could not parse, saying what and where in the service's words."""
    why = next(words for part, words in _JSON_FAULTS if part in exc.msg)
    return f"Malformed JSON: {why} (line {exc.lineno}, column {exc.colno})"


def check_structure(resource_type: str, payload: Any) -> dict[str, Any]:
    """400 unless `payload` is a FHIR R4 resource of `resource_type`."""
    handler = handler_for(resource_type)
    problems = structure_issues(payload, resource_type, handler.model)
    if problems:
        raise ResourceInvalid(problems[0].diagnostics, issues=problems)
    return cast(dict[str, Any], payload)


def _check_structure(uow: UnitOfWork, resource_type: str, payload: Any) -> None:
    """`check_structure`, or its outcome when it was found before the transaction began (`UnitOfWork.structure`:
    a transaction Bundle checks its entries before it takes SQLite's write lock)."""
    known = uow.structure.pop(id(payload), None)
    if known is None:
        check_structure(resource_type, payload)
    elif known:
        raise ResourceInvalid(known[0].diagnostics, issues=known)


# -- writes ----------------------------------------------------------------------------------------------

#: called after each committed unit of work with the type of each version it wrote (the metrics' write counts,
#: service/ops/metrics.py, registered by create_app); a listener must be quick and must not raise
AFTER_COMMIT: list[Callable[[Sequence[str]], None]] = []


def run_write(session: Session, work: Callable[[UnitOfWork], T], *, base_url: str = "",
              enforce_rules: bool = True, attempts: int = 3, caller: Caller = SYSTEM,
              audit: Callable[[UnitOfWork], Sequence[AuditRecord]] | None = None, out_of_scope: str = "reject") -> T:
    """Run `work` in one transaction and commit. A unique-key race with a concurrent writer (two creates
    with one identifier) rolls back and runs again, so the second sees the first's resource. `audit` runs last and
    gives the write's AuditEvents, appended to the chain in the same transaction (committed with the write, or
    rolled back with it).

    On PostgreSQL, once the work has reached the database (its look-ups), the rows it gathered, the audit append
    and the COMMIT go in one round trip (`UnitOfWork.commit`): a single POST of an Observation is two, its
    look-ups and that one."""
    reconnected = False
    attempt = 0
    while attempt < attempts:
        last = attempt == attempts - 1
        uow = UnitOfWork(session, base_url=base_url, enforce_rules=enforce_rules, caller=caller,
                         out_of_scope=out_of_scope)
        committing = False
        try:
            result = work(uow)
            one_trip = uow.commits_in_one_trip()
            if uow.study_checks or not one_trip:  # the studies are checked on the rows sent
                uow.flush()
                access.check_studies(uow.session, uow.caller, uow.study_checks)
            records = audit(uow) if audit is not None else ()
            committing = True
            commit_unit(session, uow, records, one_trip=one_trip, written=uow.written, changes=uow.changes)
            return result
        except DBAPIError as exc:
            session.rollback()
            if exc.connection_invalidated and not committing and not reconnected:
                # the pooled connection had died (a database restart): nothing of this transaction was committed,
                # so it runs once more on a fresh connection and the client never sees the dead one. A commit that
                # failed this way may have happened: that is the client's 503 to retry (conditionally)
                reconnected = True
                log.info("write on a dead pooled connection, running it again on a new one")
                continue
            if not isinstance(exc, (IntegrityError, OperationalError)) or (
                    isinstance(exc, OperationalError) and not is_retryable(exc)):
                raise
            if last and faults.fault_kind(exc):  # SQLite's lock held past its busy timeout, every time
                raise
            # the driver's message may quote the row (PostgreSQL's DETAIL: "Key (…)=(…, MRN-000124)"): log its kind
            log.info("write conflict, retrying (%s): %s", attempt + 1, _db_error_kind(exc))
        except IdentifierTaken:
            session.rollback()
            if last:
                raise
        except BaseException:
            session.rollback()
            raise
        attempt += 1
    raise Conflict("The resource was changed by a concurrent request; retry")


def commit_unit(session: Session, uow: UnitOfWork, records: Sequence[AuditRecord], *, one_trip: bool,
                written: Sequence[str], changes: Sequence[Change] = ()) -> None:
    """Commit what `uow` gathered with `records` appended to the audit chain: on PostgreSQL, once the transaction
    reached the server (`one_trip`), the rows, the append and the COMMIT in one round trip; else the append after the
    rows were flushed, then the COMMIT. Then the AFTER_COMMIT listeners hear the types `written`.

    Every write of every path (REST, write groups, Bundles, HL7 v2, EHR pulls) commits here: the events `changes`
    cause for the active subscriptions are written first, in this same transaction (the outbox,
    service/subscription/events.py), so a write that rolls back leaves none."""
    found = subscription_events.match(session, changes, uow.flush) if changes else {}
    if one_trip:
        statements = subscription_events.pipeline_statements(session, found)
        uow.commit([*statements, (APPEND_SQL, {"events": events_json(records)})] if records else statements)
    else:
        subscription_events.write_events(session, found)
        append(session, records)
    session.commit()
    subscription_events.after_commit(session, written)
    for listener in AFTER_COMMIT:
        listener(written)


def is_retryable(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "deadlock" in text or "could not serialize" in text or "locked" in text


def create(uow: UnitOfWork, resource_type: str, payload: dict[str, Any], *, if_none_exist: str | None = None,
           new_id: str | None = None) -> Stored:
    """POST: a new resource with a server id; with `If-None-Exist`, the match when there is exactly one."""
    writable(resource_type)
    access.require(uow.caller, resource_type, "cs" if if_none_exist else "c")
    _check_structure(uow, resource_type, payload)
    if if_none_exist:
        matches = find_matches(uow, resource_type, if_none_exist, "If-None-Exist")
        if len(matches) > 1:
            raise PreconditionFailed(f"If-None-Exist '{if_none_exist}' matches {len(matches)} resources",
                                     expression="If-None-Exist")
        if matches:
            access.require_own_studies(uow.session, uow.caller, resource_type, matches[0], "s")
            existing = read(uow.session, resource_type, matches[0])
            existing.status = 200
            return existing
    return _store(uow, resource_type, new_id or new_resource_id(), payload, None, "POST")


def new_resource_id() -> str:
    """A random (version 4) UUID as text: what `str(uuid.uuid4())` gives, at a quarter of its cost (a Bundle of
    100 Observations makes 100 of them)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def update(uow: UnitOfWork, resource_type: str, id: str, payload: dict[str, Any], *,
           if_match: str | None = None, if_none_match: str | None = None, checked: bool = False) -> Stored:
    """PUT: a new version of `id` (or the resource itself when `id` is new: update-as-create). `checked`: its
    structure was checked already (a conditional update's, before the id of its match was set)."""
    writable(resource_type)
    access.require(uow.caller, resource_type, "u")
    if not checked:
        _check_structure(uow, resource_type, payload)
    if not ID_RE.match(id):
        raise BadRequest(f"'{id}' is not a valid FHIR id", expression=f"{resource_type}.id")
    body_id = payload.get("id")
    if body_id is None:
        raise BadRequest("The resource in a PUT must carry its id", expression=f"{resource_type}.id")
    if body_id != id:
        raise BadRequest(f"Resource id '{body_id}' does not match the id '{id}' in the URL",
                         expression=f"{resource_type}.id")
    uow.flush()
    current = repository.get_current(uow.session, resource_type, id, for_update=True)
    expected = parse_version(if_match)
    if expected is not None:
        if current is None or current.deleted:
            raise PreconditionFailed(f"{resource_type}/{id} does not exist; If-Match can't hold", expression="If-Match")
        if current.version_id != expected:
            raise PreconditionFailed(f"{resource_type}/{id} is at version {current.version_id}, not {expected}",
                                     expression="If-Match")
    if if_none_match is not None and if_none_match.strip() == "*" and current is not None and not current.deleted:
        raise PreconditionFailed(f"{resource_type}/{id} exists: If-None-Match: * asks to create it only",
                                 expression="If-None-Match")
    if current is not None and not current.deleted and current.content is not None \
            and _unchanged(current.content, payload):
        # the same content again (a retry after a time-out, an interface engine resending): the current version,
        # not a new one, so history keeps only real changes (as HAPI does). Still the caller's to touch.
        if uow.caller.studies_for(resource_type, "u") is not None:
            access.require_own_studies(uow.session, uow.caller, resource_type, id, "u")
        same = Stored(resource_type, id, current.version_id, current.last_updated, current.content)
        uow.touched.append((same.location, patients_of(resource_type, orjson.loads(current.content))))
        return same
    return _store(uow, resource_type, id, payload, current, "PUT")


def _unchanged(stored: str, payload: dict[str, Any]) -> bool:
    """Does `payload` say what the stored version says, `meta` aside (versionId and lastUpdated are the server's)?"""
    current: dict[str, Any] = orjson.loads(stored)
    current.pop("meta", None)
    return current == {k: v for k, v in payload.items() if k != "meta"}


def conditional_update(uow: UnitOfWork, resource_type: str, query: str, payload: dict[str, Any], *,
                       if_match: str | None = None) -> Stored:
    """PUT Type?search: update the one match, create when there is none, 412 when there are several."""
    writable(resource_type)
    access.require(uow.caller, resource_type, "us")
    _check_structure(uow, resource_type, payload)
    matches = find_matches(uow, resource_type, query, "search")
    if len(matches) > 1:
        raise PreconditionFailed(f"Conditional update '{query}' matches {len(matches)} resources",
                                 expression="search")
    if not matches:
        body_id = payload.get("id")
        return _store(uow, resource_type, body_id or new_resource_id(), payload,
                      repository.get_current(uow.session, resource_type, body_id) if body_id else None, "PUT")
    if payload.get("id") not in (None, matches[0]):
        raise BadRequest(f"Resource id '{payload['id']}' does not match the resource found ({matches[0]})",
                         expression=f"{resource_type}.id")
    return update(uow, resource_type, matches[0], {**payload, "id": matches[0]}, if_match=if_match, checked=True)


def patch(uow: UnitOfWork, resource_type: str, id: str, operations: Any, *, if_match: str | None = None) -> Stored:
    """PATCH: the current version with a JSON Patch (RFC 6902) or a JSON Merge Patch (RFC 7396, `MergePatch`) applied,
    stored through `update` (the same structure
    checks, trial rules, study access and no-op rule as a PUT). 404/410 for a resource that is not there, 412 when
    `If-Match` names another version, 400 for a malformed patch, 422 for one that can't be applied."""
    writable(resource_type)
    access.require(uow.caller, resource_type, "u")
    uow.flush()
    current = repository.get_current(uow.session, resource_type, id, for_update=True)
    if current is None:
        raise NotFound(f"{resource_type}/{id} is not known", expression=f"{resource_type}.id")
    # a caller limited to studies learns nothing of another study's resource (a `test` operation would probe it)
    access.require_own_studies(uow.session, uow.caller, resource_type, id, "u")
    expected = parse_version(if_match)
    if expected is not None and current.version_id != expected:
        raise PreconditionFailed(f"{resource_type}/{id} is at version {current.version_id}, not {expected}",
                                 expression="If-Match")
    if current.deleted or current.content is None:
        raise Gone(f"{resource_type}/{id} was deleted (version {current.version_id}): there is nothing to patch",
                   expression=f"{resource_type}.id", headers={"ETag": f'W/"{current.version_id}"'})
    try:
        if isinstance(operations, json_patch.MergePatch):
            patched = json_patch.merge_patch(orjson.loads(current.content), operations.document)
        else:
            patched = json_patch.apply_patch(orjson.loads(current.content), operations, in_place=True)
    except json_patch.PatchInvalid as bad:
        raise BadRequest(str(bad), issues=[issue("invalid", p.message, p.expression) for p in bad.problems]) from None
    except json_patch.PatchFailed as failed:
        raise PatchNotApplicable(str(failed), issues=[issue("processing", p.message, p.expression)
                                                      for p in failed.problems]) from None
    if not isinstance(patched, dict) or patched.get("resourceType") != resource_type:
        raise BadRequest(f"The patched resource must still be a {resource_type}", expression="resourceType")
    return update(uow, resource_type, id, patched, if_match=if_match)


def conditional_patch(uow: UnitOfWork, resource_type: str, query: str, operations: Any, *,
                      if_match: str | None = None) -> Stored:
    """PATCH Type?search: patch the one match; 404 when none matches (there is nothing to patch), 412 when several
    do."""
    writable(resource_type)
    access.require(uow.caller, resource_type, "us")
    matches = find_matches(uow, resource_type, query, "search")
    if len(matches) > 1:
        raise PreconditionFailed(f"Conditional patch '{query}' matches {len(matches)} resources", expression="search")
    if not matches:
        raise NotFound(f"Conditional patch '{query}' matches no {resource_type}", expression="search")
    return patch(uow, resource_type, matches[0], operations, if_match=if_match)


#: $validate's modes (R4 ResourceValidationMode); None: general validation (structure and rules)
VALIDATION_MODES = ("create", "update", "delete")


def validate(session: Session, resource_type: str, payload: dict[str, Any] | None, *, mode: str | None,
             id: str | None = None, base_url: str = "", enforce_rules: bool = True,
             caller: Caller = SYSTEM) -> list[Issue]:
    """$validate: what a create (no mode, or `create`), an update or a delete of `id` would answer, found by
    running that very write in a transaction that is always rolled back (nothing is stored, not even its audit).

    The write's own refusals of the resource (400 structure, 409 a taken identifier or a resource others depend
    on, 412, 422 trial rules) are the issues returned; what refuses the request itself (403 scope or study, 404
    unknown, 405, 410) is raised. A rule not enforced (TRIAL_FHIR_ENFORCE_TRIAL_RULES=false) is a warning."""
    handler_for(resource_type)
    if mode is not None and mode not in VALIDATION_MODES:
        raise BadRequest(f"mode must be one of {', '.join(VALIDATION_MODES)}, not '{mode}'", expression="mode")
    if mode in ("update", "delete") and id is None:
        raise BadRequest(f"mode {mode} validates against a resource: use {resource_type}/[id]/$validate",
                         expression="mode")
    if mode != "delete" and payload is None:
        raise BadRequest("$validate needs the resource to validate (the body, or a Parameters 'resource')",
                         expression="resource")
    uow = UnitOfWork(session, base_url=base_url, enforce_rules=True, caller=caller)
    try:
        if mode == "delete":
            if delete(uow, resource_type, cast(str, id)) is None:
                raise NotFound(f"{resource_type}/{id} is not known (or already deleted)",
                               expression=f"{resource_type}.id")
        elif mode == "update" or (id is not None and mode is None):
            body = cast(dict[str, Any], payload)
            update(uow, resource_type, cast(str, id), {**body, "id": body.get("id", id)})
        else:
            create(uow, resource_type, cast(dict[str, Any], payload))
        uow.flush()
        access.check_studies(uow.session, uow.caller, uow.study_checks)
    except (ResourceInvalid, BadRequest, Conflict, PreconditionFailed) as refused:
        return list(refused.issues)
    except RuleViolation as violation:
        return [i if enforce_rules else replace(i, severity="warning") for i in violation.issues]
    except IntegrityError:  # a unique key a concurrent write took between the checks and the insert
        return [issue("conflict", f"The {resource_type} conflicts with one stored meanwhile (a key it holds is "
                      "taken)", resource_type)]
    finally:
        session.rollback()
    return []


def delete(uow: UnitOfWork, resource_type: str, id: str, *, if_match: str | None = None) -> Stored | None:
    """DELETE: a tombstone version; typed rows and identifiers go. None when there was nothing to delete."""
    handler = writable(resource_type)
    access.require(uow.caller, resource_type, "d")
    uow.flush()
    current = repository.get_current(uow.session, resource_type, id, for_update=True)
    expected = parse_version(if_match)
    if expected is not None and (current is None or current.version_id != expected):
        raise PreconditionFailed(f"{resource_type}/{id} is not at version {expected}", expression="If-Match")
    if current is None or current.deleted:
        return None
    access.require_own_studies(uow.session, uow.caller, resource_type, id, "d")
    if handler.guard_delete:
        handler.guard_delete(uow, id)
    for table in handler.tables:
        repository.delete_typed_rows(uow.session, table, id)
    uow.release_identifiers(resource_type, id)
    version = current.version_id + 1
    if not repository.update_current(uow.session, resource_type, id, current.version_id,
                                     {"version_id": version, "last_updated": uow.now, "deleted": True,
                                      "content": None}):
        raise Conflict(f"{resource_type}/{id} was changed by a concurrent request; retry")
    uow.add(V, {"resource_type": resource_type, "id": id, "version_id": version, "last_updated": uow.now,
                "method": "DELETE", "content": None})
    uow.mark_written(resource_type, id, alive=False)
    uow.changes.append(Change(resource_type, id, version, None, current.content, None))
    uow.touched.append((f"{resource_type}/{id}/_history/{version}",
                        patients_of(resource_type, orjson.loads(current.content)) if current.content else []))
    return Stored(resource_type, id, version, uow.now, None)


def conditional_delete(uow: UnitOfWork, resource_type: str, query: str) -> list[Stored]:
    writable(resource_type)
    access.require(uow.caller, resource_type, "ds")
    matches = find_matches(uow, resource_type, query, "search")
    if len(matches) > 1:
        raise PreconditionFailed(f"Conditional delete '{query}' matches {len(matches)} resources",
                                 expression="search")
    return [s for s in (delete(uow, resource_type, m) for m in matches) if s]


def find_matches(uow: UnitOfWork, resource_type: str, query: str, where: str) -> list[str]:
    """Ids matching a conditional interaction's criteria (`If-None-Exist`, `PUT/DELETE Type?criteria`): any search
    the type supports (service/search/service.py `match_ids`); the write checks the caller's studies of a match.
    A condition `identifier=system|value` whose owner the unit of work looked up already (`prefetch_conditions`) is
    answered from that and from what the unit itself claimed: the same ids the search would find (an identifier
    has at most one owner of a type), without a flush and a search per entry."""
    params = parse_qsl(query.lstrip("?"), keep_blank_values=True)
    key = identifier_condition(resource_type, params)
    if key is not None and key in uow.identifier_owners:
        mine = uow.claimed_by(key)
        if mine is not None:
            uow.flush()  # the match is this unit's own resource: sent, so that reading it finds it
            return [mine]
        owner = uow.identifier_owners[key]
        return [owner] if owner else []
    uow.flush()  # what this unit of work wrote so far is matched too
    return match_ids(uow.session, resource_type, params, where=where, caller=uow.caller)


def identifier_condition(resource_type: str, params: list[tuple[str, str]]) -> tuple[str, str, str] | None:
    """(type, system, value) when the criteria are exactly one plain `identifier=system|value` (no modifier, no
    escapes, no OR), else None."""
    if len(params) != 1 or params[0][0] != "identifier":
        return None
    token = params[0][1]
    if "\\" in token or "," in token or token.count("|") != 1:
        return None
    system, value = token.split("|")
    return (resource_type, system, value) if system and value else None


def prefetch_conditions(uow: UnitOfWork, conditions: Sequence[tuple[str, str]]) -> None:
    """Look up at once who holds the identifiers of `conditions` ((type, query) of a transaction's conditional
    entries) that are `identifier=system|value`: one statement for the Bundle instead of a flush and a search per
    entry (`find_matches`)."""
    keys = [key for rtype, query in conditions
            if (key := identifier_condition(rtype, parse_qsl(query.lstrip("?"), keep_blank_values=True)))]
    if keys:
        owners = repository.find_identifier_owners(uow.session, keys)
        uow.identifier_owners.update({key: owners.get(key) for key in keys})


def _identifiers(resource_type: str, payload: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(expression, system, value) of each business identifier; 422 for one too long to index."""
    sent = payload.get("identifier")
    single = isinstance(sent, dict)  # AdverseEvent.identifier is 0..1 in R4
    found = []
    for i, ident in enumerate([sent] if single else sent or []):
        if not ident.get("value"):
            continue
        where = f"{resource_type}.identifier" + ("" if single else f"[{i}]")
        system, value = ident.get("system") or "", str(ident["value"])
        for element, text in (("system", system), ("value", value)):
            if len(text) > MAX_IDENTIFIER_LENGTH:
                raise RuleViolation(f"identifier {element} is longer than {MAX_IDENTIFIER_LENGTH} characters",
                                    expression=f"{where}.{element}")
        found.append((where, system, value))
    return found


def _db_error_kind(exc: IntegrityError | OperationalError) -> str:
    """What a database error was, without the values its message may quote: the driver's error class, SQLSTATE
    and constraint (psycopg), or SQLite's error name."""
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    parts = [type(orig).__name__, getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None),
             getattr(diag, "constraint_name", None)]
    return " ".join(p for p in parts if p)


def _store(uow: UnitOfWork, resource_type: str, id: str, payload: dict[str, Any], current: CurrentRow | None,
           method: str, *, on_behalf: bool = True) -> Stored:
    """Write a version. `on_behalf`: the caller's own write (a follow-up the server makes is not), whose study
    access is checked before (the version it replaces) and after (what it now says)."""
    handler = writable(resource_type)  # also for follow-ups: no path writes a read-only type
    if not uow.prefetched and handler.prefetch is not None:
        # the look-ups a transaction Bundle makes once for all its entries (service/bundle/service._prefetch), made
        # for this one resource: the same queries whichever way a resource comes in
        handler.prefetch(uow, [payload])
    replacing = current is not None and not current.deleted
    letter = "u" if replacing else "c"
    if on_behalf and not uow.caller.unrestricted and not replacing:
        access.require(uow.caller, resource_type, "c")  # an update that creates
    # a caller limited to some studies: what the write replaces is checked now, what it says once the unit's typed
    # rows are sent (access.check_studies, one query per type at the end, not a flush per Bundle entry)
    limited = on_behalf and uow.caller.studies_for(resource_type, letter) is not None
    if limited and replacing:
        access.require_own_studies(uow.session, uow.caller, resource_type, id, letter)
    identifiers = _identifiers(resource_type, payload)
    try:
        handler.index(uow, payload, id, current is not None and not current.deleted)
    except RuleViolation as violation:
        if uow.enforce_rules or isinstance(violation, OutOfScope) and (violation.policy or uow.out_of_scope) == "skip":
            raise
        # the elements at fault, not the diagnostics: those quote the values
        log.warning("trial rule not enforced for %s/%s: %s", resource_type, id,
                    ", ".join(e for i in violation.issues for e in i.expression) or violation.issues[0].code)
    if current is not None:
        for table in handler.tables:
            repository.delete_typed_rows(uow.session, table, id)
        uow.release_identifiers(resource_type, id)
    for where, system, value in identifiers:
        uow.claim_identifier(resource_type, id, system, value, where)
    version = current.version_id + 1 if current is not None else 1
    meta = {**(payload.get("meta") or {}), "versionId": str(version), "lastUpdated": uow.now_instant}
    body = {"resourceType": resource_type, "id": id, "meta": meta}
    body.update((k, v) for k, v in payload.items() if k not in body)
    content = orjson.dumps(body).decode()
    row = {"version_id": version, "last_updated": uow.now, "deleted": False, "content": content}
    if current is not None:
        if not repository.update_current(uow.session, resource_type, id, current.version_id, row):
            raise Conflict(f"{resource_type}/{id} was changed by a concurrent request; retry")
    else:
        uow.add(R, {"resource_type": resource_type, "id": id, **row})
    uow.add(V, {"resource_type": resource_type, "id": id, "version_id": version, "last_updated": uow.now,
                "method": method, "content": content})
    uow.mark_written(resource_type, id)
    uow.changes.append(Change(resource_type, id, version, body, current.content if current is not None else None,
                              uow.last_row(handler.table, id)))
    created = current is None or current.deleted
    stored = Stored(resource_type, id, version, uow.now, content, status=201 if created else 200, created=created)
    uow.touched.append((stored.location, patients_of(resource_type, body)))
    if limited:
        uow.study_checks.append((resource_type, id, letter, uow.entry_prefix))
    _apply_follow_ups(uow)
    return stored


def reindex(uow: UnitOfWork, resource_type: str, ids: Sequence[str]) -> None:
    """The server writes each of `ids` again as it is: a new version through its type's index, so that what the
    index derives changes with what it reads (an Observation's visit, canonical value and `meta.tag` under a
    changed catalogue: service/catalogue/recompute.py). One gone or deleted is passed over."""
    uow.follow_ups.extend((resource_type, i, _unchanged_payload) for i in ids)
    _apply_follow_ups(uow)


def _unchanged_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


def _apply_follow_ups(uow: UnitOfWork) -> None:
    while uow.follow_ups:
        resource_type, id, change = uow.follow_ups.pop(0)
        uow.flush()
        current = repository.get_current(uow.session, resource_type, id, for_update=True)
        if current is None or current.deleted:
            continue
        _store(uow, resource_type, id, change(orjson.loads(current.content)), current, "PUT", on_behalf=False)


MAX_VERSION = 2**31 - 1  # version_id is a 32-bit INTEGER column


def encode_history_page(last_updated: datetime, resource_type: str, id: str, version_id: int) -> str:
    """The opaque cursor of a type or system history page: the last row it showed."""
    raw = orjson.dumps([last_updated.isoformat(), resource_type, id, version_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_history_page(page: str) -> tuple[datetime, str, str, int]:
    """A history cursor back, (time, type, id, version); 400 naming `_page` when it is not one this server made."""
    try:
        at, resource_type, id, version = orjson.loads(base64.urlsafe_b64decode(page + "=" * (-len(page) % 4)))
        moment = datetime.fromisoformat(at)
        if not (isinstance(resource_type, str) and isinstance(id, str) and isinstance(version, int)) \
                or moment.tzinfo is None:
            raise ValueError("not a cursor")
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadRequest("_page is not a history page this server made", expression="_page") from None
    return moment, resource_type, id, version

# -- reads -----------------------------------------------------------------------------------------------

def read(session: Session, resource_type: str, id: str, *, caller: Caller = SYSTEM) -> Stored:
    handler_for(resource_type)
    access.require(caller, resource_type, "r")
    row = repository.get_current(session, resource_type, id)
    if row is not None and not caller.unrestricted:
        access.require_visible(session, caller, resource_type, id)
    if row is None:
        raise NotFound(f"{resource_type}/{id} is not known", expression=f"{resource_type}.id")
    if row.deleted:
        raise Gone(f"{resource_type}/{id} was deleted (version {row.version_id})", expression=f"{resource_type}.id",
                   headers={"ETag": f'W/"{row.version_id}"'})
    return Stored(resource_type, id, row.version_id, row.last_updated, row.content)


def vread(session: Session, resource_type: str, id: str, version_id: str, *, caller: Caller = SYSTEM) -> Stored:
    handler_for(resource_type)
    access.require(caller, resource_type, "r")
    if not caller.unrestricted:
        access.require_visible(session, caller, resource_type, id)
    where = f"{resource_type}.meta.versionId"
    if not whole_number(version_id) or int(version_id) > MAX_VERSION:
        raise NotFound(f"{resource_type}/{id} has no version '{version_id}'", expression=where)
    row = repository.get_version(session, resource_type, id, int(version_id))
    if row is None:
        raise NotFound(f"{resource_type}/{id} has no version {version_id}", expression=where)
    if row.content is None:
        raise Gone(f"Version {version_id} of {resource_type}/{id} is its deletion", expression=where)
    return Stored(resource_type, id, row.version_id, row.last_updated, row.content)


def history(session: Session, resource_type: str, id: str, *, count: int, before_version: int | None = None,
            since: datetime | None = None, at: tuple[datetime, datetime] | None = None,
            caller: Caller = SYSTEM) -> Sequence[VersionRow]:
    """Newest first; raises 404 for a resource that never existed."""
    handler_for(resource_type)
    access.require(caller, resource_type, "r")
    if not caller.unrestricted:
        access.require_visible(session, caller, resource_type, id)
    if repository.get_current(session, resource_type, id) is None:
        raise NotFound(f"{resource_type}/{id} is not known", expression=f"{resource_type}.id")
    if before_version is not None and before_version > MAX_VERSION:
        before_version = None  # before a version beyond any: every version
    return repository.find_history(session, resource_type, id, limit=count, before_version=before_version,
                                   since=since, at=at)

