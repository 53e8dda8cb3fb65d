"""Subscription as a stored type (SUBSCRIPTION): its checks and access rules on write, its typed row and delivery
state; and what the interaction core answers of one ($status, $events) and the sender asks (status changes).

Access: a client subscribes to what it could search. The topic's resource type (or the classic criteria's) needs
its `s` scope; a client limited to studies names exactly one of its studies in the `study` filter (the
subscription then belongs to that study: only the study's clients read it). The client that last wrote the
Subscription is the one it acts for: its scopes, studies and de-identification decide every notification.
"""

from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select, tuple_, update
from sqlmodel import Session

from fhir_mappings import fhir
from fhir_mappings.outcome import issue
from fhir_mappings.subscription import (
    NotificationEvent,
    read_subscription,
    status_parameters,
    without_secret,
)
from service import examples
from service.auth.scopes import scope_string
from service.core.stored_type import StoredType, param
from service.errors import BadRequest, Forbidden, RuleViolation
from service.store.models import ResourceVersion, table_of
from service.store.unit_of_work import UnitOfWork
from service.subscription import events

SUB = events.SUB
ST = events.ST
EV = events.EV
V = table_of(ResourceVersion)
#: the resource types a classic criteria may watch: every stored type but these
NOT_WATCHED = ("Subscription", "AuditEvent")
_config = {"allow_http_loopback": False}
SERVER_WRITE = "subscription.server-write"  # UnitOfWork.cache key: the sender changes the status, not a client


def configure(*, allow_http_loopback: bool) -> None:
    _config["allow_http_loopback"] = allow_http_loopback


def index_subscription(uow: UnitOfWork, payload: dict[str, Any], id: str, replacing: bool) -> None:
    from service.core import access
    from service.core.registry import TYPES
    from service.search.service import plan_search
    watched = tuple(t for t in TYPES if t not in NOT_WATCHED)
    spec, issues = read_subscription(payload, allow_http_loopback=_config["allow_http_loopback"],
                                     stored_types=watched)
    if spec is None:
        raise RuleViolation(issues[0].diagnostics, issues=issues)
    server = bool(uow.cache.get(SERVER_WRITE))
    caller = uow.caller
    session = uow.session
    before = session.execute(select(SUB.c.status, SUB.c.endpoint).where(SUB.c.id == id)).first() if replacing \
        else None
    state = session.execute(select(ST.c.id).where(ST.c.id == id)).first()
    status = spec.status
    if not server:
        if status not in ("requested", "active", "off"):
            raise RuleViolation("A client sets a Subscription's status to requested (or active) or off; the server "
                                "sets active and error", expression="Subscription.status")
        if spec.topic is None:
            try:
                plan_search(spec.resource_type, list(spec.classic), strict=True, caller=caller)
            except BadRequest as exc:
                raise BadRequest(f"Subscription.criteria: {exc}", issues=[
                    issue("invalid", f"Subscription.criteria: {i.diagnostics}", "Subscription.criteria")
                    for i in exc.issues]) from None
        access.require(caller, spec.resource_type, "s", expression="Subscription.criteria")
        limited = caller.studies_for(spec.resource_type, "s")
        if limited is not None and (spec.studies is None or len(spec.studies) != 1
                                    or not set(spec.studies) <= limited):
            raise Forbidden("This client may subscribe only to its own studies: name exactly one of them in the "
                            "criteria's study filter", expression="Subscription.criteria")
        if status in ("requested", "active"):
            # a new subscription, a re-enabled one or a new endpoint is handshaken first (then active)
            unchanged = before is not None and before.status == "active" and before.endpoint == spec.endpoint
            status = "active" if unchanged else "requested"
        if spec.secret is None and state is None:
            raise RuleViolation(
                "A Subscription needs its signing secret (the subscription-secret extension, 'whsec_' and base64 of "
                "at least 24 random bytes): notifications are signed with it", expression="Subscription.channel")
        payload.update(without_secret(payload))
        payload["status"] = status
        if status != "error":
            payload.pop("error", None)
    now = datetime.now(UTC)
    if not server:
        owner = {"owner": caller.name, "owner_scopes": scope_string(caller.scopes) if caller.scopes is not None
                 else None,
                 "owner_studies": orjson.dumps(sorted(caller.studies)).decode() if caller.studies is not None
                 else None, "owner_deidentified": caller.deidentified}
        if spec.secret is not None:
            owner["secret"] = spec.secret
        if state is None:
            session.execute(ST.insert().values(id=id, delivered=0, attempts=0, next_attempt_at=now, created_at=now,
                                               **owner))
            session.execute(events.CNT.insert().values(id=id, events_since_start=0))
        else:
            again = {"attempts": 0, "next_attempt_at": now, "last_error": None} if status == "requested" else {}
            session.execute(update(ST).where(ST.c.id == id).values(**owner, **again))
    events.bump_generation(session)
    studies = spec.studies
    uow.add(SUB, {"id": id, "status": status, "criteria": spec.criteria,
                  "topic": spec.topic.url if spec.topic else None, "resource_type": spec.resource_type,
                  "study_id": studies[0] if studies and len(studies) == 1 else None, "endpoint": spec.endpoint,
                  "content": spec.content})


def guard_delete(uow: UnitOfWork, id: str) -> None:
    """A deleted Subscription gets no more events (every process's cache learns it)."""
    events.bump_generation(uow.session)


SUBSCRIPTION = StoredType(
    "Subscription", fhir.Subscription, SUB, index_subscription, examples.SUBSCRIPTION, rank=0,
    search=(
        param("status", "code", SUB.c.status, "Subscription.status", "requested, active, error or off",
              systems=("http://hl7.org/fhir/subscription-status",)),
        param("criteria", "string", SUB.c.criteria, "Subscription.criteria",
              "The topic URL or the classic search URL"),
        param("url", "string", SUB.c.endpoint, "Subscription.channel.endpoint", "Where notifications are sent"),
        param("study", "reference", SUB.c.study_id, "Subscription.criteria",
              "The one study the subscription is limited to (its study filter)", targets=("ResearchStudy",),
              custom=True),
    ),
    study_param="study", guard_delete=guard_delete, exported=False)


# -- what the core answers of a Subscription ------------------------------------------------------------------

def _instant(moment: datetime) -> str:
    from fhir_mappings.dates import fhir_instant
    return fhir_instant(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def load_events(session: Session, id: str, after: int, limit: int, upto: int | None = None
                ) -> list[Any]:
    query = select(EV).where(EV.c.subscription_id == id, EV.c.event_number > after)
    if upto is not None:
        query = query.where(EV.c.event_number <= upto)
    return list(session.execute(query.order_by(EV.c.event_number).limit(limit)).all())


def notification_events(rows: list[Any], content: str, now: datetime, deid: Any = None) -> list[NotificationEvent]:
    out = []
    for row in rows:
        onset = row.onset.replace(tzinfo=UTC) if row.onset is not None and row.onset.tzinfo is None else row.onset
        out.append(NotificationEvent(
            row.event_number, _instant(row.occurred_at),
            None if content == "empty" else f"{row.focus_type}/{row.focus_id}",
            int((now - onset).total_seconds()) if onset is not None else None))
    return out


def status_of(session: Session, id: str) -> tuple[Any, Any]:
    """(typed row, state row) of a stored Subscription (None, None when there is none)."""
    sub = session.execute(select(SUB).where(SUB.c.id == id)).first()
    state = session.execute(select(ST, events.CNT.c.events_since_start).join(events.CNT, events.CNT.c.id == ST.c.id)
                            .where(ST.c.id == id)).first()
    return sub, state


def status_parameters_of(sub: Any, state: Any, kind: str, events_: list[NotificationEvent] = (),  # type: ignore
                         ) -> dict[str, Any]:
    return status_parameters(subscription=f"Subscription/{sub.id}", topic=sub.topic, status=sub.status, kind=kind,
                             since_start=state.events_since_start if state is not None else 0, events=events_,
                             error=state.last_error if state is not None and sub.status == "error" else None)



def notification_entries(session: Session, rows: list[Any], content: str, base_url: str | None, deid: Any = None
                         ) -> list[dict[str, Any]]:
    """The entries after the status Parameters: nothing (`empty`), each event's focus named (`id-only`), or its
    version as written (`full-resource`; de-identified by `deid` when given)."""
    if content == "empty" or not rows:
        return []
    base = (base_url or "").rstrip("/")
    texts: dict[tuple[str, str, int], str | None] = {}
    if content == "full-resource":
        keys = [(r.focus_type, r.focus_id, r.focus_version) for r in rows]
        for rtype, rid, version, text in session.execute(
                select(V.c.resource_type, V.c.id, V.c.version_id, V.c.content)
                .where(tuple_(V.c.resource_type, V.c.id, V.c.version_id).in_(keys))):
            texts[(rtype, rid, version)] = text
    entries = []
    for r in rows:
        ref = f"{r.focus_type}/{r.focus_id}"
        item: dict[str, Any] = {"fullUrl": f"{base}/{ref}" if base else ref,
                                "request": {"method": "POST" if r.focus_version == 1 else "PUT", "url": ref},
                                "response": {"status": "201" if r.focus_version == 1 else "200"}}
        text = texts.get((r.focus_type, r.focus_id, r.focus_version))
        if text is not None:
            item["resource"] = orjson.loads(deid.content(text) if deid is not None else text)
        entries.append(item)
    return entries
