"""The hash chain of the audit trail: appended inside the caller's write transaction, verified by walking it.

Each `audit_event` row carries `seq` (1, 2, 3, … without gaps), `prev_hash` (the previous row's `hash`; 64 zeros
for the first) and `hash` = sha256(prev_hash, seq, digest), where the digest covers the event's stored JSON and
its indexed fields (service/audit/events.py `record_digest`). Changing a row's content breaks its own hash;
removing a row leaves a gap in `seq` (or, renumbered, a link that no longer matches); inserting one breaks the
link of the row after it. What the chain alone can't show is a cut at its end (the last rows removed), or a chain
rewritten from some row on with fresh hashes by someone who can write the database: `verify` reports the head (seq
and hash), to be kept elsewhere, and checks a kept head still holds (`head=`, `--head`).

Appending takes the chain lock (PostgreSQL: a transaction-level advisory lock; SQLite: the database write lock the
write session holds from its first statement), reads the head, and inserts every row in one round trip (the store's
`add_rows`: one pipeline, or COPY for many rows). The lock is held from then until the caller commits, so the caller
appends last, just before its commit: everything else (JSON, digests, the resource rows) is built before, and only
the link itself (one sha256 per event) under it.
"""

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import orjson
from sqlalchemy import exists, func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.audit.events import AuditRecord, record_digest
from service.audit.models import AuditEntityRecord, AuditEventRecord
from service.db import is_postgres, snapshot_connection
from service.store.driver import driver_rows
from service.store.models import ResourceRecord, ResourceVersion, table_of
from service.store.repository import add_rows

A = table_of(AuditEventRecord)
E = table_of(AuditEntityRecord)
R = table_of(ResourceRecord)
V = table_of(ResourceVersion)
AUDIT_EVENT = "AuditEvent"
GENESIS = "0" * 64  # the prev_hash of the first event
#: pg_advisory_xact_lock key of the chain ("audt"); migrations use another (service/db.py)
LOCK_KEY = 0x61756474
_LOCK_SQL = f"SELECT pg_advisory_xact_lock({LOCK_KEY})"
_HEAD_SQL = "SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1"


def link_hash(prev_hash: str, seq: int, digest: str) -> str:
    """The `hash` of the event numbered `seq` whose content digest is `digest`, after the event hashed `prev_hash`."""
    return hashlib.sha256(f"{prev_hash}:{seq}:{digest}".encode()).hexdigest()


def _head(session: Session) -> tuple[int, str]:
    """Take the chain lock and read the last (seq, hash); (0, GENESIS) for an empty chain."""
    if is_postgres(session.get_bind()):  # type: ignore[arg-type]  # a Session's bind is an Engine here
        # two statements: the head is read with a snapshot taken after the lock was granted (READ COMMITTED), so it
        # is the previous holder's last row. (One pipeline of both measured 1.4 ms against 0.3 ms for two plain
        # round trips on the same connection.)
        driver_rows(session, _LOCK_SQL, {})
        rows = driver_rows(session, _HEAD_SQL, {})
    else:
        # SQLite: a write session began with BEGIN IMMEDIATE (service/db.py): it holds the write lock already. In a
        # deferred transaction two appenders could both read the head before either writes
        if not session.connection().get_execution_options().get("write"):
            raise ValueError("chain.append needs a write_session (service/db.py): on SQLite its write lock orders "
                             "the chain")
        rows = list(session.execute(select(A.c.seq, A.c.hash).order_by(A.c.seq.desc()).limit(1)).all())
    return (int(rows[0][0]), str(rows[0][1])) if rows else (0, GENESIS)


def append(session: Session, records: Sequence[AuditRecord]) -> None:
    """Append `records` to the chain, in order, inside the caller's open write transaction (a `write_session`):
    committed with it, or rolled back with it, never apart. Three round trips on PostgreSQL (lock, head, the
    inserts), and the lock is held until the caller commits: call it last."""
    if not records:
        return
    if is_postgres(session.get_bind()):  # type: ignore[arg-type]  # a Session's bind is an Engine here
        driver_rows(session, APPEND_SQL, {"events": events_json(records)})  # one round trip (migration 0010)
        return
    seq, prev = _head(session)
    add_rows(session, chained_rows(records, seq, prev))


#: PostgreSQL: the chain's append in the database (migration 0010: lock, head, links, inserts) from one JSON array
APPEND_SQL = "SELECT trial_fhir_audit_append(%(events)s::jsonb)"


def events_json(records: Sequence[AuditRecord]) -> str:
    """`records` as the JSON array trial_fhir_audit_append takes: each event's fields, content and digest."""
    return orjson.dumps([{"id": r.id, "recorded": r.recorded.isoformat(), "client_system": r.client_system,
                          "client": r.client, "subtype": r.subtype, "action": r.action, "outcome": str(r.outcome),
                          "content": r.content, "digest": r.digest, "entities": r.entities}
                         for r in records]).decode()


def chained_rows(records: Sequence[AuditRecord], seq: int, prev: str) -> list[tuple[Any, list[dict[str, Any]]]]:
    """The rows of `records` appended after the head (`seq`, `prev`): (table, rows) for the resource, its version,
    the chain and the entity index."""
    resources = [{"resource_type": AUDIT_EVENT, "id": r.id, "version_id": 1, "last_updated": r.recorded,
                  "deleted": False, "content": r.content} for r in records]
    versions = [{"resource_type": AUDIT_EVENT, "id": r.id, "version_id": 1, "last_updated": r.recorded,
                 "method": "POST", "content": r.content} for r in records]
    events, entities = [], []
    for r in records:
        seq += 1
        link = link_hash(prev, seq, r.digest)
        events.append({"seq": seq, "id": r.id, "recorded": r.recorded, "client_system": r.client_system,
                       "client": r.client, "subtype": r.subtype, "action": r.action, "outcome": str(r.outcome),
                       "prev_hash": prev, "hash": link})
        entities += [{"seq": seq, "resource_type": t, "resource_id": i, "recorded": r.recorded} for t, i in r.entities]
        prev = link
    return [(R, resources), (V, versions), (A, events), (E, entities)]


def append_alone(driver: Any, records: Sequence[AuditRecord]) -> None:
    """PostgreSQL: append `records` in a transaction of their own on a psycopg connection in autocommit mode: one
    statement, one round trip (trial_fhir_audit_append takes the lock, reads the head and inserts everything). The
    group-committing writer of reads (service/audit/log.py) uses it; a Session and a COPY per table took 9 round
    trips and most of the writer's CPU."""
    with driver.cursor() as cursor:
        cursor.execute(APPEND_SQL, {"events": events_json(records)}, prepare=True)


# -- verify ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What `verify` found: `count` events checked; when broken, the first broken row (`seq`, the AuditEvent `id`
    when the row is there), `problem` (content changed | row missing | row inserted) and `detail`. `head_seq` and
    `head_hash`: the last link, to keep elsewhere (a cut at the end of the chain shows only against it)."""

    ok: bool
    count: int
    head_seq: int = 0
    head_hash: str = GENESIS
    seq: int | None = None
    id: str | None = None
    problem: str | None = None
    detail: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.count} events"
        what = f"AuditEvent/{self.id}" if self.id else "no event"
        return f"audit chain broken at seq {self.seq} ({what}): {self.problem}: {self.detail}"


def _broken(count: int, seq: int, id: str | None, problem: str, detail: str) -> VerifyResult:
    return VerifyResult(False, count, seq=seq, id=id, problem=problem, detail=detail)


def _with_resources(conn: Any, events: Iterator[Any], batch: int) -> Iterator[tuple[Any, ...]]:
    """Each chain row with its AuditEvent resource row (version_id, deleted, content) and version 1's content,
    looked up by id a batch at a time: a join of the whole chain to `resource` was planned from stale statistics
    after a burst of events (a nested loop comparing every event with every version: minutes for 98k events)."""
    while True:
        rows = list(islice(events, batch))
        if not rows:
            return
        ids = [row.id for row in rows]
        current = {r.id: (r.version_id, r.deleted, r.content) for r in conn.execute(
            select(R.c.id, R.c.version_id, R.c.deleted, R.c.content)
            .where(R.c.resource_type == AUDIT_EVENT, R.c.id.in_(ids)))}
        first = dict(conn.execute(select(V.c.id, V.c.content).where(
            V.c.resource_type == AUDIT_EVENT, V.c.id.in_(ids), V.c.version_id == 1)).all())
        for row in rows:
            yield (*row, *current.get(row.id, (None, None, None)), first.get(row.id))


def _entities_by_seq(rows: Iterator[Any]) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """(seq, its (type, id) pairs) from rows ordered by seq."""
    current: int | None = None
    found: list[tuple[str, str]] = []
    for seq, rtype, rid in rows:
        if seq != current:
            if current is not None:
                yield current, found
            current, found = seq, []
        found.append((rtype, rid))
    if current is not None:
        yield current, found


def verify(engine: Engine, *, progress: Callable[[int, int], None] | None = None, batch: int = 1000,
           head: tuple[int, str] | None = None) -> VerifyResult:
    """Walk the chain in `seq` order (streamed, `batch` rows at a time, on one snapshot), recompute every digest
    and link, check that `seq` runs 1, 2, 3, … and that the AuditEvent rows of `resource` / `resource_version`
    are the chained ones, unchanged; the first broken row is named. `progress(done, total)` is called as it goes.
    `head`: a (seq, hash) reported by an earlier verify and kept elsewhere: the chain must still hold that link (a
    chain cut after it, or rewritten up to it with fresh hashes, does not)."""
    walk = (select(A.c.seq, A.c.id, A.c.recorded, A.c.client_system, A.c.client, A.c.subtype, A.c.action,
                   A.c.outcome, A.c.prev_hash, A.c.hash).order_by(A.c.seq))
    linked = select(E.c.seq, E.c.resource_type, E.c.resource_id).order_by(E.c.seq, E.c.resource_type,
                                                                            E.c.resource_id)
    with snapshot_connection(engine) as conn:
        total = int(conn.execute(select(func.count()).select_from(A)).scalar_one())
        streamed = conn.execution_options(stream_results=True, yield_per=batch)
        entity_groups = _entities_by_seq(iter(streamed.execute(linked)))
        pending = next(entity_groups, None)
        expected, prev, count = 1, GENESIS, 0
        for (seq, id, recorded, client_system, client, subtype, action, outcome, prev_hash, hash_, version_id,
             deleted, content, version_content) in _with_resources(conn, streamed.execute(walk), batch):
            if seq != expected:
                return _broken(count, expected, None, "row missing",
                               f"seq {expected}" + (f" to {seq - 1}" if seq - 1 > expected else "")
                               + f" is not in the chain (the next row is seq {seq}, AuditEvent/{id})")
            entities: list[tuple[str, str]] = []
            while pending is not None and pending[0] <= seq:
                if pending[0] < seq:  # rows of a seq walked past: an event that has none
                    return _broken(count, pending[0], None, "row inserted",
                                   f"audit_entity rows name seq {pending[0]}, which has no event")
                entities = pending[1]
                pending = next(entity_groups, None)
            if prev_hash != prev:
                return _broken(count, seq, id, "row inserted",
                               f"its prev_hash is not the hash of seq {seq - 1}: a row was inserted, removed or "
                               "renumbered before it")
            if content is None:
                return _broken(count, seq, id, "row missing", "its AuditEvent resource is gone")
            if version_id != 1 or deleted or version_content != content:
                return _broken(count, seq, id, "content changed",
                               "its AuditEvent resource was updated, deleted or its history rewritten")
            digest = record_digest(id, recorded, client_system, client, subtype, action, outcome, entities, content)
            if link_hash(prev, seq, digest) != hash_:
                return _broken(count, seq, id, "content changed",
                               "its content or indexed fields differ from what was hashed")
            if head is not None and seq == head[0] and hash_ != head[1]:
                return _broken(count, seq, id, "content changed",
                               f"its hash is not the recorded head's ({head[1][:16]}…): the chain was rewritten")
            prev, expected, count = hash_, expected + 1, count + 1
            if progress is not None and (count % batch == 0 or count == total):
                progress(count, total)
        if pending is not None:
            return _broken(count, pending[0], None, "row inserted",
                           f"audit_entity rows name seq {pending[0]}, which has no event")
        if head is not None and head[0] >= expected:
            return _broken(count, expected, None, "row missing",
                           f"the chain ends at seq {expected - 1}; the recorded head is seq {head[0]}")
        # anti-joins (NOT EXISTS), not NOT IN (subquery): PostgreSQL can't hash a NOT IN whose subquery outgrows
        # work_mem and compares every row with every row (98k events: verify ran for minutes in this query)
        stray = conn.execute(
            select(V.c.id, V.c.version_id).where(V.c.resource_type == AUDIT_EVENT, ~exists().where(A.c.id == V.c.id))
            .union_all(select(R.c.id, R.c.version_id).where(R.c.resource_type == AUDIT_EVENT,
                                                            ~exists().where(A.c.id == R.c.id)))
            .limit(1)).first()
        if stray is not None:
            return _broken(count, expected, stray.id, "row inserted", f"AuditEvent/{stray.id} is not in the chain")
        extra = conn.execute(select(V.c.id).where(V.c.resource_type == AUDIT_EVENT, V.c.version_id != 1)
                             .limit(1)).first()
        if extra is not None:
            seq = conn.execute(select(A.c.seq).where(A.c.id == extra.id)).scalar_one()
            return _broken(count, seq, extra.id, "content changed", "its AuditEvent resource has a second version")
    return VerifyResult(True, count, head_seq=expected - 1, head_hash=prev)
