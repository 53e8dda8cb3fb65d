"""The sender: an asyncio task in each replica that delivers notifications (rest-hook, httpx), never losing one.

- **Claims** subscriptions with work due (an undelivered event, a handshake, a heartbeat) by a lease on their
  state row (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so replicas never claim the same one; SQLite: one process). The
  holder of the lease is the only one delivering that subscription: in order, a batch of at most `max-count` events
  after the last acknowledged one.
- **Acknowledged** (2xx): `delivered` moves to the batch's last event number. A crash between the POST and that
  update sends the batch again once its lease runs out: at most one duplicate, visible by its event numbers.
- **Failed** (network error, time-out, non-2xx): retried after an exponential back-off with jitter, or the
  endpoint's `Retry-After` when it asks for longer; after `TRIAL_FHIR_SUBSCRIPTION_MAX_FAILURES` failures in a row the
  Subscription goes to `error` (its events keep accumulating: re-enabled, it resumes at the first undelivered one).
- **Handshake** when a Subscription is `requested`: success makes it `active`, failure `error` with the reason.
- **Heartbeats** on active subscriptions with a heartbeat period and nothing to send.
- Every message is signed (Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`, HMAC-SHA256 with
  the subscription's secret); its `channel.header` values are sent as headers.
"""

import asyncio
import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson
from anyio import to_thread
from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session
from standardwebhooks.webhooks import Webhook

from fhir_mappings.subscription import SubscriptionSpec, notification_bundle, read_subscription
from service.core import resources
from service.core.context import SYSTEM
from service.core.registry import TYPES
from service.db import write_session
from service.settings import Settings
from service.store.models import ResourceRecord, table_of
from service.subscription import events
from service.subscription.service import (
    SERVER_WRITE,
    _instant,
    notification_entries,
    notification_events,
    status_parameters_of,
)

log = logging.getLogger("trial_fhir")
SUB, ST, CNT = events.SUB, events.ST, events.CNT
R = table_of(ResourceRecord)
EV = events.EV


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Delivery:
    id: str
    kind: str  # handshake | heartbeat | event-notification
    endpoint: str
    body: bytes
    headers: dict[str, str]
    timeout: float
    last: int  # the last event number it carries (the acknowledged one, for a heartbeat or handshake)
    heartbeat_s: int | None


class Sender:
    """The notification sender of one process (see the module)."""

    def __init__(self, engine: Engine, settings: Settings, *, http: httpx.AsyncClient | None = None,
                 name: str | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.http = http
        self._own_http = http is None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deid: Any = None
        self._specs: dict[str, tuple[str | None, SubscriptionSpec | None]] = {}
        self.sent = self.failed = 0  # counts, for tests and benchmarks

    # -- life ------------------------------------------------------------------------------------------------
    async def start(self) -> "Sender":
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        if self.http is None:
            self.http = httpx.AsyncClient(follow_redirects=False)
        events.add_waker(self.wake)
        self._task = asyncio.create_task(self._run(), name="subscription-sender")
        return self

    def wake(self) -> None:
        """From any thread: deliver now (events were committed in this process)."""
        if self._loop is not None and self._wakeup is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wakeup.set)

    async def stop(self) -> None:
        events.remove_waker(self.wake)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await to_thread.run_sync(self._release_all)
        if self._own_http and self.http is not None:
            await self.http.aclose()

    async def _run(self) -> None:
        assert self._wakeup is not None
        checked = 0.0
        while True:
            try:
                if time.monotonic() - checked >= self.settings.subscription_window_check_s:
                    checked = time.monotonic()
                    await to_thread.run_sync(self.check_windows)
                busy = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database away (a 503 elsewhere): try again at the next poll
                log.exception("subscription sender: a round failed")
                busy = 0
            if busy:
                continue
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.settings.subscription_poll_s)
            except TimeoutError:
                pass

    async def run_once(self) -> int:
        """Claim what is due and deliver it; the number of subscriptions claimed."""
        claimed: list[str] = await to_thread.run_sync(self._claim)
        if claimed:
            deliveries: list[Delivery] = await to_thread.run_sync(self._prepare_all, claimed)
            outcomes = await asyncio.gather(*(self._post(d) for d in deliveries))
            await to_thread.run_sync(self._settle, outcomes)
        return len(claimed)

    def check_windows(self) -> int:
        """The visit-window topic's periodic check (service/subscription/events.py); the events it wrote. Two
        replicas checking at once: one commits, the other's insert of the same window is refused and rolled back."""
        with write_session(self.engine) as session:
            try:
                written = events.check_visit_windows(session, utcnow().date())
                session.commit()
            except IntegrityError:
                session.rollback()
                return 0
        return written

    # -- claims ----------------------------------------------------------------------------------------------
    def _claim(self) -> list[str]:
        now = utcnow()
        with write_session(self.engine) as session:
            due = (select(ST.c.id).join(SUB, SUB.c.id == ST.c.id).join(CNT, CNT.c.id == ST.c.id)
                   .where(SUB.c.status.in_(("requested", "active")), ST.c.next_attempt_at <= now,
                          or_(ST.c.lease_until.is_(None), ST.c.lease_until < now),
                          or_(ST.c.delivered < CNT.c.events_since_start, SUB.c.status == "requested",
                              ST.c.heartbeat_at <= now))
                   .order_by(ST.c.next_attempt_at, ST.c.id).limit(self.settings.subscription_concurrency))
            if session.get_bind().dialect.name == "postgresql":
                due = due.with_for_update(of=ST, skip_locked=True)
            ids = list(session.execute(due).scalars())
            if ids:
                lease = now + timedelta(seconds=self.settings.subscription_lease_s)
                session.execute(update(ST).where(ST.c.id.in_(ids)).values(lease_owner=self.name, lease_until=lease))
            session.commit()
        return ids

    def _release_all(self) -> None:
        """At a clean stop, give back what this sender holds (others take it at once, not after the lease)."""
        try:
            with write_session(self.engine) as session:
                session.execute(update(ST).where(ST.c.lease_owner == self.name).values(lease_owner=None,
                                                                                      lease_until=None))
                session.commit()
        except DBAPIError:  # the database away (or never migrated): the leases run out by themselves
            log.warning("subscription sender: its leases could not be given back at stop")

    # -- one subscription ------------------------------------------------------------------------------------
    async def _post(self, delivery: Delivery) -> tuple[Delivery, str | None, float | None]:
        """POST one notification: (it, why it failed or None, the Retry-After it asked for)."""
        assert self.http is not None
        reason, retry_after = None, None
        try:
            answer = await self.http.post(delivery.endpoint, content=delivery.body, headers=delivery.headers,
                                          timeout=delivery.timeout)
            if not 200 <= answer.status_code < 300:
                reason = f"the endpoint answered {answer.status_code}"
                retry_after = retry_after_s(answer.headers.get("Retry-After"))
        except httpx.TimeoutException:
            reason = f"no answer within {delivery.timeout:g} s"
        except httpx.HTTPError as exc:
            reason = f"the endpoint could not be reached ({type(exc).__name__})"
        if reason is None:
            self.sent += 1
        else:
            self.failed += 1
            log.info("subscription %s: %s failed: %s", delivery.id, delivery.kind, reason)
        return delivery, reason, retry_after

    def _prepare_all(self, ids: list[str]) -> list[Delivery]:
        """The notifications of the subscriptions claimed, read in one session with a few statements for the whole
        round (not a few per subscription); those with nothing to send (or that could not be built) are given
        back."""
        found: list[Delivery] = []
        idle: list[str] = []
        with Session(self.engine) as session:
            subs = {row.id: row for row in session.execute(select(SUB).where(SUB.c.id.in_(ids)))}
            states = {row.id: row for row in session.execute(
                select(ST, CNT.c.events_since_start).join(CNT, CNT.c.id == ST.c.id).where(ST.c.id.in_(ids)))}
            contents = {row.id: row.content for row in session.execute(
                select(R.c.id, R.c.content).where(R.c.resource_type == "Subscription", R.c.id.in_(ids)))}
            specs = {id: self._spec(id, contents.get(id)) for id in ids}
            ranges = []  # the events each one sends: numbers are gapless, so a range after the acknowledged one
            for id in ids:
                sub, state, spec = subs.get(id), states.get(id), specs[id]
                if sub is not None and state is not None and spec is not None and sub.status == "active" \
                        and state.delivered < state.events_since_start:
                    top = state.delivered + min(spec.max_count or self.settings.subscription_max_count,
                                                self.settings.subscription_max_count)
                    ranges.append(and_(EV.c.subscription_id == id, EV.c.event_number > state.delivered,
                                       EV.c.event_number <= top))
            pending: dict[str, list[Any]] = {}
            if ranges:
                for row in session.execute(select(EV).where(or_(*ranges)).order_by(EV.c.subscription_id,
                                                                                      EV.c.event_number)):
                    pending.setdefault(row.subscription_id, []).append(row)
            for id in ids:
                try:
                    delivery = self._prepare(session, id, subs.get(id), states.get(id), specs[id],
                                             pending.get(id, []))
                except Exception:
                    log.exception("subscription %s: its notification could not be built", id)
                    session.rollback()
                    delivery = None
                if delivery is None:
                    idle.append(id)
                else:
                    found.append(delivery)
        if idle:  # (not claimed again before the next poll: one that can't be built never spins the loop)
            later = utcnow() + timedelta(seconds=self.settings.subscription_poll_s)
            with write_session(self.engine) as session:
                session.execute(update(ST).where(ST.c.id.in_(idle), ST.c.lease_owner == self.name)
                                .values(lease_owner=None, lease_until=None, next_attempt_at=later))
                session.commit()
        return found

    def _spec(self, id: str, content: str | None) -> SubscriptionSpec | None:
        """What a Subscription asks for, read again only when its stored version changed."""
        known = self._specs.get(id)
        if known is not None and known[0] == content:
            return known[1]
        spec = None
        if content is not None:
            spec, _ = read_subscription(orjson.loads(content), allow_http_loopback=True, stored_types=tuple(TYPES))
        self._specs[id] = (content, spec)
        return spec

    def _settle(self, outcomes: list[tuple[Delivery, str | None, float | None]]) -> None:
        """Record what the endpoints said, in one transaction; then the status changes (each its own write)."""
        now = utcnow()
        settings = self.settings
        changes: list[tuple[str, str, str | None]] = []
        with write_session(self.engine) as session:
            for d, reason, retry_after in outcomes:
                mine = (ST.c.id == d.id) & (ST.c.lease_owner == self.name)
                if reason is None:
                    values: dict[str, Any] = {"attempts": 0, "lease_owner": None, "lease_until": None,
                                              "next_attempt_at": now, "last_error": None,
                                              "heartbeat_at": now + timedelta(seconds=d.heartbeat_s)
                                              if d.heartbeat_s else None}
                    if d.kind == "event-notification":
                        values["delivered"] = d.last
                    session.execute(update(ST).where(mine).values(**values))
                    if d.kind == "handshake":
                        changes.append((d.id, "active", None))
                    continue
                attempts = (session.execute(select(ST.c.attempts).where(ST.c.id == d.id)).scalar() or 0) + 1
                give_up = d.kind == "handshake" or attempts >= settings.subscription_max_failures
                if give_up:
                    what = "the handshake failed" if d.kind == "handshake" else \
                        f"{attempts} deliveries failed in a row"
                    reason = f"{what}: {reason}"
                    changes.append((d.id, "error", reason))
                delay = backoff_s(attempts, settings.subscription_backoff_s, settings.subscription_backoff_max_s)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, settings.subscription_backoff_max_s))
                session.execute(update(ST).where(mine).values(
                    attempts=attempts, lease_owner=None, lease_until=None, last_error=reason,
                    next_attempt_at=now + timedelta(seconds=delay)))
            session.commit()
        for id, status, error in changes:
            self._set_status(id, status, error)

    def _deidentifier(self) -> Any:
        if self._deid is None:
            from service.deid.service import deidentifier_from
            self._deid = deidentifier_from(self.settings, self.engine)
        return self._deid

    def _prepare(self, session: Session, id: str, sub: Any, state: Any, spec: SubscriptionSpec | None,
                 rows: list[Any]) -> Delivery | None:
        now = utcnow()
        if sub is None or state is None or spec is None or state.lease_owner != self.name:
            return None
        if sub.status == "requested":
            kind, rows = "handshake", []
        elif rows:
            kind = "event-notification"
        else:
            kind = "heartbeat"
        owner = events.owner_caller(state)
        deid = self._deidentifier() if owner.deidentified and spec.content == "full-resource" else None
        entries = notification_entries(session, rows, spec.content, self.settings.base_url, deid)
        parameters = status_parameters_of(sub, state, kind, notification_events(rows, spec.content, now))
        bundle_id = f"{id}-{kind}-{rows[-1].event_number if rows else state.delivered}"
        body = orjson.dumps(notification_bundle(bundle_id, _instant(now), parameters, entries))
        msg_id = f"{id}-{rows[0].event_number}-{rows[-1].event_number}" if rows else f"{id}-{kind}-{now.timestamp()}"
        headers = dict(spec.headers)
        headers["Content-Type"] = "application/fhir+json"
        if state.secret:
            headers.update({"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                            "webhook-signature": Webhook(state.secret).sign(msg_id, now, body.decode())})
        timeout = float(min(spec.timeout_s or self.settings.subscription_timeout_s,
                            self.settings.subscription_timeout_s * 2))
        return Delivery(id, kind, spec.endpoint, body, headers, timeout,
                        rows[-1].event_number if rows else state.delivered, spec.heartbeat_s)

    def _set_status(self, id: str, status: str, error: str | None) -> None:
        """A new version of the Subscription with the status the server sets (through the one write path)."""
        def work(uow: Any) -> None:
            current = resources.read(uow.session, "Subscription", id)
            body = orjson.loads(current.content or "{}")
            if body.get("status") not in ("requested", "active"):
                return  # the client changed it meanwhile (off, or re-enabled after this failure): theirs stands
            body["status"] = status
            if error:
                body["error"] = error
            else:
                body.pop("error", None)
            body.pop("meta", None)
            uow.cache[SERVER_WRITE] = True
            resources.update(uow, "Subscription", id, body)
        try:
            with write_session(self.engine) as session:
                resources.run_write(session, work, caller=SYSTEM)
        except Exception:
            log.exception("subscription %s: its status could not be set to %s", id, status)


def backoff_s(attempts: int, base: float, ceiling: float) -> float:
    """Exponential back-off with jitter: a random delay between half and all of base·2^(attempts−1), at most
    `ceiling` (replicas retrying one endpoint spread out; none retries sooner than half its step)."""
    top = min(ceiling, base * 2 ** min(attempts - 1, 30))
    return random.uniform(top / 2, top)


def retry_after_s(value: str | None) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - utcnow()).total_seconds())
