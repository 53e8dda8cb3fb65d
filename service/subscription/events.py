"""The outbox: which subscriptions a committed unit of work concerns, and their event rows, written in that unit's
own transaction (service/core/resources.py `commit_unit`, the one place every write of every path commits).

Matching is cheap: the active subscriptions come from a per-process cache (per database), reloaded when a
Subscription is written in this process, and when the database's subscription generation (one row, bumped by every
Subscription write of any replica) changed, which a refresher thread reads every `TRIAL_FHIR_SUBSCRIPTION_CACHE_S`
on its own connection: the write path itself reads memory only. Topics are matched in memory from the typed rows
the write made; classic criteria (`Type?search`) by the search machinery, one query per subscription and type for
the whole unit.

Event numbers are per subscription, taken from its count row in the writing transaction (locked in id order):
gapless, and in commit order. On PostgreSQL the numbering and the inserts are one statement in the commit's own
pipeline (no round trip of their own); elsewhere a few statements before the commit.
"""

import logging
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fhir_mappings.subscription import SubscriptionSpec, read_subscription
from service.auth.scopes import parse_scopes
from service.core.context import Caller
from service.errors import FhirError
from service.store.models import ResourceRecord, table_of
from service.store.unit_of_work import Change
from service.subscription.models import (
    SubscriptionCount,
    SubscriptionEvent,
    SubscriptionGeneration,
    SubscriptionRecord,
    SubscriptionState,
    SubscriptionWindow,
)

log = logging.getLogger("trial_fhir")
SUB = table_of(SubscriptionRecord)
ST = table_of(SubscriptionState)
EV = table_of(SubscriptionEvent)
CNT = table_of(SubscriptionCount)
GEN = table_of(SubscriptionGeneration)
WIN = table_of(SubscriptionWindow)
R = table_of(ResourceRecord)
#: the statuses whose subscriptions get events (an errored one keeps them, to resume from when re-enabled)
LIVE = ("requested", "active", "error")
COUNTED = ("final", "amended", "corrected")


@dataclass(frozen=True)
class Active:
    """A live subscription as matching needs it."""

    id: str
    spec: SubscriptionSpec
    owner: Caller


class Watchers:
    """The live subscriptions of one resource type, indexed for matching: those with classic criteria, and the topic
    ones by the codes their `code` filter names (a result is checked against those naming its code and those with no
    code filter: a portal's hundred subscriptions, a measure each, cost a few checks per result, not a hundred)."""

    def __init__(self, subs: list[Active]) -> None:
        self.all = subs
        self.classic = [s for s in subs if s.spec.topic is None]
        self.any_code = [s for s in subs if s.spec.topic is not None and s.spec.filters.get("code") is None]
        by_code: dict[str, list[Active]] = defaultdict(list)
        for sub in subs:
            if sub.spec.topic is not None:
                for code in {c.rsplit("|", 1)[-1] for c in sub.spec.filters.get("code") or ()}:
                    by_code[code].append(sub)
        self.by_code = dict(by_code)

    def candidates(self, change: Change) -> list[Active]:
        code = (change.row or {}).get("code")
        named = self.by_code.get(code, []) if code is not None else []
        return [*self.any_code, *named] if named else self.any_code


@dataclass
class _Cache:
    generation: int  # the database's subscription generation it was loaded at
    by_type: dict[str, Watchers]
    epoch: int  # `_epoch` when its load began: a Subscription written in this process since makes it stale
    seen: int = -1  # the generation the refresher last read (-1: not yet); another than `generation`: stale

    @property
    def fresh(self) -> bool:
        return self.epoch == _epoch[0] and self.seen in (-1, self.generation)


_caches: dict[str, _Cache] = {}
_ttl = [1.0]  # TRIAL_FHIR_SUBSCRIPTION_CACHE_S
_wakers: list[Callable[[], None]] = []
_lock = threading.Lock()
_epoch = [0]  # Subscription writes committed in this process


def configure(cache_s: float) -> None:
    """How long a process trusts its cache of active subscriptions without looking at the generation."""
    _ttl[0] = cache_s


def add_waker(wake: Callable[[], None]) -> None:
    """`wake()` (thread-safe, quick) is called after a commit that wrote events: an in-process sender starts now."""
    with _lock:
        _wakers.append(wake)


def remove_waker(wake: Callable[[], None]) -> None:
    with _lock:
        if wake in _wakers:
            _wakers.remove(wake)


def changed() -> None:
    """A Subscription was written in this process: every cache reloads on its next use (one being loaded
    meanwhile too: it began before this epoch)."""
    with _lock:
        _epoch[0] += 1


def after_commit(session: Session, written: Sequence[str]) -> None:
    if "Subscription" in written:
        changed()
    if session.info.pop("subscription_events", False) or "Subscription" in written:
        for wake in list(_wakers):
            wake()


def owner_caller(row: Any) -> Caller:
    """The client a subscription acts for, from its state row."""
    scopes = parse_scopes(row.owner_scopes) if row.owner_scopes is not None else None
    studies = frozenset(orjson.loads(row.owner_studies)) if row.owner_studies is not None else None
    return Caller(name=row.owner, scopes=scopes, studies=studies, deidentified=row.owner_deidentified)


def active(session: Session, stored_types: tuple[str, ...]) -> dict[str, Watchers]:
    """The live subscriptions by the type they watch: the process's cache, read from memory on the write path. It is
    loaded (two statements, in the writing transaction) the first time, after a Subscription write in this process,
    and after the refresher thread saw the database's generation change (another replica wrote one): never a query
    per write."""
    engine = session.get_bind().engine
    key = engine.url.render_as_string(hide_password=True)
    cache = _caches.get(key)
    if cache is not None and cache.fresh:
        return cache.by_type
    epoch = _epoch[0]
    generation = session.execute(select(GEN.c.generation).where(GEN.c.id == 1)).scalar() or 0
    by_type: dict[str, list[Active]] = defaultdict(list)
    rows = session.execute(
        select(SUB.c.id, R.c.content, ST.c.owner, ST.c.owner_scopes, ST.c.owner_studies, ST.c.owner_deidentified)
        .join(R, (R.c.resource_type == "Subscription") & (R.c.id == SUB.c.id))
        .join(ST, ST.c.id == SUB.c.id).where(SUB.c.status.in_(LIVE)).order_by(SUB.c.id)).all()
    for row in rows:
        spec, _ = read_subscription(orjson.loads(row.content), allow_http_loopback=True, stored_types=stored_types)
        if spec is not None:
            by_type[spec.resource_type].append(Active(row.id, spec, owner_caller(row)))
    loaded = _Cache(generation, {t: Watchers(subs) for t, subs in by_type.items()}, epoch)
    _caches[key] = loaded
    _watch(key, engine)
    return loaded.by_type


_refreshers: dict[str, threading.Thread] = {}


def forget(engine: Engine) -> None:
    """The process stops using `engine` (the interaction core stopping): its database's cache is dropped, so its
    refresher thread ends at its next tick; a later write on it loads the cache again. (Without this, a process that
    opens many databases, as the test suite does, kept one refresher thread per database for good.)"""
    _caches.pop(engine.url.render_as_string(hide_password=True), None)


def _watch(key: str, engine: Engine) -> None:
    """Start the process's refresher of the cache of `key`'s database, unless one runs."""
    with _lock:
        running = _refreshers.get(key)
        if running is not None and running.is_alive():
            return
        thread = threading.Thread(target=_refresh, args=(key, weakref.ref(engine)), daemon=True,
                                  name="subscription-cache")
        _refreshers[key] = thread
        thread.start()


def _refresh(key: str, engine_ref: "weakref.ReferenceType[Engine]") -> None:
    """Every TRIAL_FHIR_SUBSCRIPTION_CACHE_S, read the database's subscription generation (its own connection, off
    the write path) into the cache: a change makes the next write reload it. Ends with its engine, or when the
    database stays away (the cache is dropped then: the next write loads it again, and starts a refresher)."""
    failures = 0
    while True:
        time.sleep(max(_ttl[0], 0.05))
        engine = engine_ref()
        cache = _caches.get(key)
        if engine is None or cache is None:
            return
        try:
            with engine.connect() as conn:
                cache.seen = conn.execute(select(GEN.c.generation).where(GEN.c.id == 1)).scalar() or 0
            failures = 0
        except Exception:  # the database away, or gone (a test's): a few tries, then give the cache up
            failures += 1
            if failures >= 3:
                _caches.pop(key, None)
                return
        finally:
            del engine


def bump_generation(session: Session) -> None:
    """Every process's cache is stale (a Subscription written, in this transaction)."""
    done = session.execute(update(GEN).where(GEN.c.id == 1).values(generation=GEN.c.generation + 1))
    if not done.rowcount:  # type: ignore[attr-defined]
        session.execute(insert(GEN).values(id=1, generation=1))


def match(session: Session, changes: Sequence[Change], flush: Callable[[], None]) -> dict[str, list[dict[str, Any]]]:
    """The events `changes` (one unit of work's versions) cause: outbox rows (not numbered yet) per subscription."""
    from service.core.registry import TYPES  # (the registry imports the domains, one of which is Subscription)
    by_type = active(session, tuple(TYPES))
    relevant = [c for c in changes if c.resource_type in by_type and c.body is not None]
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if not relevant:
        return found
    now = datetime.now(UTC)
    lookups = _Lookups(session)
    for resource_type in {c.resource_type for c in relevant}:
        mine = [c for c in relevant if c.resource_type == resource_type]
        watchers = by_type[resource_type]
        for sub in watchers.classic:
            if sub.owner.may(resource_type, "s"):
                for change, _ in _classic(session, sub, mine, flush):
                    _add(found, sub, change, None, now)
        for change in mine:
            for sub in watchers.candidates(change):
                if sub.owner.may(resource_type, "s") and (onset := _topic(sub, change, lookups)) is not False:
                    _add(found, sub, change, onset, now)
    return found


def _add(found: dict[str, list[dict[str, Any]]], sub: Active, change: Change, onset: Any, now: datetime) -> None:
    if _readable(sub.owner, change):
        found[sub.id].append({"subscription_id": sub.id, "occurred_at": now, "focus_type": change.resource_type,
                              "focus_id": change.id, "focus_version": change.version_id,
                              "onset": onset if isinstance(onset, datetime) else None})


def write_events(session: Session, found: dict[str, list[dict[str, Any]]]) -> None:
    """Insert the outbox rows `found` (per subscription, in order), numbered from each subscription's count row
    (locked in id order: two writers never wait for each other in a cycle)."""
    if not found:
        return
    for sub_id in sorted(found):
        rows = found[sub_id]
        top = session.execute(update(CNT).where(CNT.c.id == sub_id).values(
            events_since_start=CNT.c.events_since_start + len(rows)).returning(CNT.c.events_since_start)).scalar()
        if top is None:
            continue
        for i, row in enumerate(rows):
            row["event_number"] = top - len(rows) + 1 + i
        session.execute(insert(EV), rows)
    session.info["subscription_events"] = True


#: PostgreSQL: numbering and inserting every event of a transaction in one statement, sent in the pipeline that
#: holds its audit append and COMMIT (service/store/driver.py add_rows_and_commit): no round trip of its own. The
#: count rows are locked in id order (`locked`) before they are incremented.
EVENTS_SQL = """
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(events)s::jsonb) AS e(subscription_id text, ord int, occurred_at timestamptz,
                                                             focus_type text, focus_id text, focus_version int,
                                                             onset timestamptz)),
counts AS (SELECT subscription_id, count(*)::int AS n FROM input GROUP BY subscription_id),
locked AS (SELECT c.id FROM subscription_count c WHERE c.id IN (SELECT subscription_id FROM counts)
           ORDER BY c.id FOR UPDATE),
bumped AS (UPDATE subscription_count c SET events_since_start = c.events_since_start + counts.n
           FROM counts, locked WHERE c.id = counts.subscription_id AND locked.id = c.id
           RETURNING c.id, c.events_since_start AS top, counts.n)
INSERT INTO subscription_event (subscription_id, event_number, occurred_at, focus_type, focus_id, focus_version,
                                onset)
SELECT i.subscription_id, b.top - b.n + i.ord, i.occurred_at, i.focus_type, i.focus_id, i.focus_version, i.onset
FROM input i JOIN bumped b ON b.id = i.subscription_id"""


def pipeline_statements(session: Session, found: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The statement (PostgreSQL, in the commit's pipeline) that numbers and inserts the events `found`."""
    if not found:
        return []
    events = [{**row, "ord": i, "occurred_at": row["occurred_at"].isoformat(),
               "onset": row["onset"].isoformat() if row["onset"] is not None else None}
              for sub_id in sorted(found) for i, row in enumerate(found[sub_id], 1)]
    session.info["subscription_events"] = True
    return [(EVENTS_SQL, {"events": orjson.dumps(events).decode()})]


def check_visit_windows(session: Session, today: date) -> int:
    """The periodic check of the `visit-window` topic: for each such live subscription, each subject still on study
    (not withdrawn, with a day 0) of its studies whose visit's window closed before `today`, after the subscription
    was made, with no counted result (of its `code` filter, else of any measure) at that visit: one event (focus:
    the ResearchSubject), once (subscription_window). In the caller's transaction; the number of events."""
    from fhir_mappings.terminology import load_catalogue
    from service.core.registry import TYPES
    from service.observation.models import MeasurementRecord
    from service.trial.models import StudyRecord, SubjectRecord
    watchers = active(session, tuple(TYPES)).get("ResearchSubject")
    subs = [a for a in (watchers.all if watchers else []) if a.spec.topic is not None
            and a.spec.topic.key == "visit-window"]
    if not subs:
        return 0
    s, st, m = table_of(SubjectRecord), table_of(StudyRecord), table_of(MeasurementRecord)
    now = datetime.now(UTC)
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sub in subs:
        created = session.execute(select(ST.c.created_at).where(ST.c.id == sub.id)).scalar()
        if created is None:
            continue
        since = (created if created.tzinfo else created.replace(tzinfo=UTC)).date()
        query = (select(s.c.id, s.c.study_id, s.c.day0, st.c.catalogue, R.c.version_id)
                 .join(st, st.c.id == s.c.study_id)
                 .join(R, (R.c.resource_type == "ResearchSubject") & (R.c.id == s.c.id))
                 .where(s.c.status != "withdrawn", s.c.day0.is_not(None)))
        studies = sub.spec.filters.get("study")
        limited = sub.owner.studies_for("ResearchSubject", "s")
        if studies is not None:
            query = query.where(s.c.study_id.in_(studies))
        if limited is not None:
            query = query.where(s.c.study_id.in_(sorted(limited)))
        told = {(row.subject_id, row.visit) for row in session.execute(
            select(WIN.c.subject_id, WIN.c.visit).where(WIN.c.subscription_id == sub.id))}
        codes = sub.spec.filters.get("code")
        for subject_id, _, day0, catalogue_name, version in session.execute(query.order_by(s.c.id)).all():
            catalogue = load_catalogue(catalogue_name)
            for visit in catalogue.visits:
                closed = day0 + timedelta(days=visit.last_day)  # its last day; closed once that day is over
                if not since <= closed < today or (subject_id, visit.name) in told:
                    continue
                if not _in(sub.spec.filters.get("visit"), visit.name):
                    continue
                results = select(m.c.id).where(m.c.subject_id == subject_id, m.c.visit == visit.name,
                                               m.c.status.in_(sorted(catalogue.counted_statuses)))
                if codes is not None:
                    results = results.where(or_(m.c.code.in_(codes), (m.c.code_system + "|" + m.c.code).in_(codes)))
                if session.execute(results.limit(1)).first() is not None:
                    continue
                session.execute(insert(WIN).values(subscription_id=sub.id, subject_id=subject_id, visit=visit.name))
                found[sub.id].append({"subscription_id": sub.id, "occurred_at": now, "focus_type": "ResearchSubject",
                                      "focus_id": subject_id, "focus_version": version, "onset": None})
    write_events(session, found)
    return sum(len(v) for v in found.values())


def _readable(owner: Caller, change: Change) -> bool:
    """Could the subscriber read this resource (its studies)? A notification never carries what it could not."""
    studies = owner.studies_for(change.resource_type, "s")
    if studies is None:
        return True
    study = (change.row or {}).get("study_id")
    return study is not None and study in studies


def _classic(session: Session, sub: Active, changes: list[Change], flush: Callable[[], None]
             ) -> list[tuple[Change, None]]:
    """Classic criteria: the search machinery decides which of the written resources match (one query)."""
    from service.search.service import match_ids
    flush()
    ids = sorted({c.id for c in changes})
    try:
        matched = set(match_ids(session, sub.spec.resource_type, [*sub.spec.classic, ("_id", ",".join(ids))],
                                where="Subscription.criteria", caller=sub.owner, limit=len(ids)))
    except FhirError as exc:  # criteria that no longer compile (checked when stored): no events, said once
        log.warning("subscription %s: its criteria can't be matched: %s", sub.id, exc)
        return []
    return [(c, None) for c in changes if c.id in matched]


class _Lookups:
    """What topic matching reads beyond the typed rows, once per unit of work (an arm, a baseline)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.arms: dict[str, str | None] = {}
        self._responders: dict[str, tuple[Any, ...]] = {}

    def responders(self, study_id: str) -> tuple[Any, ...]:
        """The responder definitions of the study's catalogue (its PlanDefinition's current version)."""
        if study_id not in self._responders:
            from service.catalogue.compiled import catalogue_named
            from service.trial.models import StudyRecord
            st = table_of(StudyRecord)
            plan = self.session.execute(select(st.c.catalogue).where(st.c.id == study_id)).scalar()
            self._responders[study_id] = tuple(catalogue_named(self.session, plan).responders)
        return self._responders[study_id]

    def arm(self, subject_id: str) -> str | None:
        if subject_id not in self.arms:
            from service.trial.models import SubjectRecord
            s = table_of(SubjectRecord)
            self.arms[subject_id] = self.session.execute(select(s.c.arm).where(s.c.id == subject_id)).scalar()
        return self.arms[subject_id]

    def baseline(self, subject_id: str, measure: str) -> float | None:
        """The subject's counted baseline value of `measure` (the one closest to day 0, later on a tie)."""
        from service.observation.models import MeasurementRecord
        m = table_of(MeasurementRecord)
        return self.session.execute(
            select(m.c.value).where(m.c.subject_id == subject_id, m.c.measure == measure, m.c.visit == "baseline",
                                    m.c.status.in_(COUNTED))
            .order_by(m.c.study_day.desc(), m.c.effective.desc()).limit(1)).scalar()


def _in(values: tuple[str, ...] | None, value: Any) -> bool:
    return values is None or (value is not None and str(value) in values)


def _coded(content: str | None, element: str) -> str | None:
    if content is None:
        return None
    try:
        codings = (orjson.loads(content).get(element) or {}).get("coding") or []
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return next((c.get("code") for c in codings if isinstance(c, dict) and c.get("code")), None)


def _topic(sub: Active, change: Change, lookups: _Lookups) -> datetime | None | bool:
    """False when `change` is no event of the subscription's topic; else the onset to carry (or None)."""
    row = change.row
    topic = sub.spec.topic
    if row is None or topic is None:
        return False
    f = sub.spec.filters.get
    if not _in(f("study"), row.get("study_id")):
        return False
    key = topic.key
    if key in ("measurement", "responder"):
        if not (_in(f("code"), row.get("code")) or _in(f("code"), f"{row.get('code_system')}|{row.get('code')}")):
            return False
        if not _in(f("visit"), row.get("visit")):
            return False
        if f("arm") is not None and not _in(f("arm"), lookups.arm(row["subject_id"])):
            return False
        if key == "responder":
            return None if _responds(row, f("responder"), lookups) else False
        return None
    if key == "adverse-event":
        related = "related" if row.get("related") else "not-related"
        ok = _in(f("seriousness"), row.get("seriousness")) and _in(f("severity"), row.get("severity")) \
            and _in(f("relatedness"), related)
        return None if ok else False
    if key == "serious-adverse-event":
        if row.get("seriousness") != "serious" or not _in(f("severity"), row.get("severity")):
            return False
        if change.previous is not None and _coded(change.previous, "seriousness") == "serious":
            return False  # serious already: the desk heard of it then
        onset = row.get("onset")
        return onset if isinstance(onset, datetime) else None
    if key == "enrolment":
        status = row.get("status")
        if not _in(f("status"), status):
            return False
        if change.previous is None:
            return None
        before = orjson.loads(change.previous).get("status") if change.previous else None
        return None if status == "withdrawn" and before != "withdrawn" else False
    return False


def responder_definitions(study_id: str, lookups: "_Lookups") -> tuple[Any, ...]:
    """The responder definitions of a study: its catalogue's (`PlanDefinition.goal`s), compiled once per version."""
    return lookups.responders(study_id)


def _responds(row: dict[str, Any], wanted: tuple[str, ...] | None, lookups: _Lookups) -> bool:
    """Does this counted result at a (non-baseline) visit meet a responder definition against the baseline?"""
    if row.get("status") not in COUNTED or row.get("visit") in ("baseline", "unscheduled", None):
        return False
    value = row.get("value")
    for definition in responder_definitions(row["study_id"], lookups):
        if definition.measure != row.get("measure") or (wanted is not None and definition.key not in wanted):
            continue
        baseline = lookups.baseline(row["subject_id"], definition.measure)
        if baseline is None or value is None:
            continue
        if definition.pct_change_at_most is not None:
            if baseline > 0 and 100 * (value - baseline) / baseline <= definition.pct_change_at_most:
                return True
        elif definition.value_at_most is not None and value <= definition.value_at_most and (
                definition.drop_at_least is None or baseline - value >= definition.drop_at_least):
            return True
    return False
