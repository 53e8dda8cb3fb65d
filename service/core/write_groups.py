"""Write groups: concurrent single creates and small transactions committed in one database transaction.

An EHR interface engine sends one result per request, many at once; a lab's HL7 v2 feed one small transaction per
message (service/hl7: ten results and a Provenance). Each such `POST` alone pays a transaction of
its own: a connection, its look-ups, the chain lock of the audit trail (held until the commit, so writers queue
behind each other's commits: service/audit/chain.py) and a COMMIT. A write group runs the creates that are waiting
at the same moment one after the other on one session, each in its own unit of work with its own caller, and
commits them together with one audit append: one lock and one COMMIT for them all. Each request still gets its
own answer, its own AuditEvent and its own error.

Nothing else changes: a member is the same `resources.create` the request would run alone (the same checks,
access rules and audit record), or the same transaction Bundle's work (`bundles.transaction_work`, all or nothing
within the member: a failing entry fails its member only), and the core's `_write` and `transaction` are its only
callers. When the group can't give every
member exactly what it would have got alone, it gives up and every member runs alone (`ALONE`):
- a member that failed after its unit of work had sent rows to the database (they can't be taken back without
  the others'), or with any other error than a FhirError — unless it runs in a savepoint of its own (`isolated`:
  transactions), which takes back what it sent, so its failure is its own answer and the others go on;
- the commit refused (two members claiming one identifier, a unique key, a deadlock): nothing was committed;
- a member limited to some studies whose check fails once its rows are sent.
A failure in the round trip that holds the COMMIT may have committed: that is every member's 503, as it would be
alone. A member with a condition (`If-None-Exist`) first sends what the members before it gathered, so its
look-up sees them, as it would see a write committed before it.

Groups form only under load: a create that finds fewer than `limit` groups running starts one at once, with
whatever else is waiting; a group of one is the ordinary single write (`resources.run_write`). While `limit` groups
run, creates wait for the next (so a process has at most `limit` creates' transactions open at a time).
"""

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from anyio import to_thread
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import Session

from service.audit.events import AuditRecord
from service.core import access
from service.core.context import Caller
from service.core.resources import commit_unit, is_retryable, run_write
from service.db import write_session
from service.errors import FhirError, IdentifierTaken
from service.store.unit_of_work import UnitOfWork

log = logging.getLogger("trial_fhir")

ALONE = object()  # a member's outcome when the group gave up: run it alone


@dataclass(eq=False)
class Member:
    """One create waiting in a group: its work (`resources.create` on a unit of work), whose it is, its audit."""

    work: Callable[[UnitOfWork], Any]
    caller: Caller
    base_url: str
    audit: Callable[[UnitOfWork], Sequence[AuditRecord]]
    conditional: bool = False  # If-None-Exist: its look-up must see what the members before it wrote
    out_of_scope: str = "reject"  # what the unit of work does with a resource the trial does not keep
    #: run inside a savepoint of its own: whatever it sent is taken back when it fails (a transaction Bundle,
    #: whose conditional entries and adapter rows are sent as it runs), and the others go on
    isolated: bool = False
    future: "asyncio.Future[Any] | None" = field(default=None, repr=False)


class _GiveUp(Exception):
    """The group can't answer every member as it would be answered alone: each runs alone."""


def run_group(session: Session, members: Sequence[Member], *, enforce_rules: bool) -> list[Any]:
    """Run `members` on one session and commit them together. Each one's outcome, in order: its result or its
    FhirError; every one `ALONE` when the group gave up (rolled back, nothing committed); raises (for every member)
    when the commit itself failed and may have happened."""
    try:
        return _run(session, members, enforce_rules)
    except _GiveUp:
        session.rollback()
        return [ALONE] * len(members)


def _run(session: Session, members: Sequence[Member], enforce_rules: bool) -> list[Any]:
    outcomes: list[Any] = []
    done: list[tuple[UnitOfWork, Member]] = []
    try:
        for member in members:
            if member.conditional:
                for uow, _ in done:
                    uow.flush()
            uow = UnitOfWork(session, base_url=member.base_url, enforce_rules=enforce_rules, caller=member.caller,
                             out_of_scope=member.out_of_scope)
            savepoint = session.begin_nested() if member.isolated else None
            try:
                outcomes.append(member.work(uow))
            except IdentifierTaken as exc:
                raise _GiveUp from exc
            except DBAPIError:
                raise  # a look-up failed, a lock timed out: the group gives up (below)
            except Exception as exc:
                if savepoint is not None:  # what it sent is taken back; its error (or an adapter's signal, e.g. an
                    savepoint.rollback()   # HL7 message stored already by a member before it) is its own answer
                    outcomes.append(exc)
                    continue
                if isinstance(exc, FhirError) and not uow.sent:
                    outcomes.append(exc)
                    continue
                raise _GiveUp from exc  # rows sent can't be taken back without the others'; not an answer
            if savepoint is not None:
                savepoint.commit()
            done.append((uow, member))
        if not done:
            session.rollback()
            return outcomes
        lead = UnitOfWork(session, enforce_rules=enforce_rules)
        one_trip = lead.commits_in_one_trip()
        for uow, _ in done:
            if uow.study_checks or not one_trip:
                uow.flush()
                access.check_studies(session, uow.caller, uow.study_checks)
        records = [r for uow, member in done for r in member.audit(uow)]
    except (FhirError, DBAPIError) as exc:  # a study check refused, a look-up failed: rows may have been sent
        raise _GiveUp from exc
    try:
        if one_trip:
            for uow, _ in done:
                lead.absorb(uow)
        commit_unit(session, lead, records, one_trip=one_trip, written=[t for uow, _ in done for t in uow.written],
                    changes=[c for uow, _ in done for c in uow.changes])
    except (IntegrityError, IdentifierTaken) as exc:  # refused: nothing was committed
        raise _GiveUp from exc
    except OperationalError as exc:
        if is_retryable(exc):  # a deadlock or SQLite's lock: rolled back
            raise _GiveUp from exc
        session.rollback()
        raise
    except BaseException:
        session.rollback()
        raise
    return outcomes


class WriteGroups:
    """The write groups of one process (one event loop): at most `limit` running at once, each of at most `size`
    members."""

    def __init__(self, engine: Engine, *, limit: int, size: int, enforce_rules: bool) -> None:
        self.engine = engine
        self.limit = limit
        self.size = size
        self.enforce_rules = enforce_rules
        self._waiting: list[Member] = []
        self._running = 0
        self.groups = self.grouped = self.alone = 0  # counts, for tests and benchmarks

    async def run(self, member: Member) -> Any:
        """The member's result (or its FhirError raised), or `ALONE` when it must run on its own."""
        member.future = asyncio.get_running_loop().create_future()
        self._waiting.append(member)
        if self._running < self.limit:
            self._start()
        return await asyncio.shield(member.future)  # a client that went away does not cancel the others' group

    def _start(self) -> None:
        members, self._waiting = self._waiting[:self.size], self._waiting[self.size:]
        self._running += 1
        asyncio.get_running_loop().create_task(self._group(members))

    async def _group(self, members: list[Member]) -> None:
        try:
            outcomes: list[Any] = await to_thread.run_sync(self._in_thread, members)
            if len(members) > 1:
                self.groups += 1
        except BaseException as exc:  # the commit failed and may have happened: every member's error
            outcomes = [exc] * len(members)
        finally:
            self._running -= 1
            if self._waiting and self._running < self.limit:
                self._start()
        for member, outcome in zip(members, outcomes, strict=True):
            if outcome is ALONE:
                self.alone += 1
            elif len(members) > 1:
                self.grouped += 1
            assert member.future is not None
            if member.future.done():
                continue
            if isinstance(outcome, BaseException):
                member.future.set_exception(outcome)
            else:
                member.future.set_result(outcome)

    def _in_thread(self, members: list[Member]) -> list[Any]:
        with write_session(self.engine) as session:
            if len(members) > 1:
                return run_group(session, members, enforce_rules=self.enforce_rules)
            member = members[0]
            try:  # a group of one: the ordinary single write
                return [run_write(session, member.work, base_url=member.base_url, enforce_rules=self.enforce_rules,
                                  caller=member.caller, audit=member.audit, out_of_scope=member.out_of_scope)]
            except Exception as exc:
                return [exc]
