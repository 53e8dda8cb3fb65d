"""Read routing: which database a read goes to, the primary or the PostgreSQL streaming replica
(`TRIAL_FHIR_READ_DATABASE_URL`), decided here and nowhere else.

The interaction core (service/core/interactions.py) asks `ReadRouter.choose` for each read it may send to the
replica (reads, vreads, searches with their includes, history, $everything, the study's figures), and the export
worker for each job's data; everything else (writes, conditional operations with their search, transaction and
batch Bundles with their GET entries, the audit trail, clients and keys, job tables, migrations) never asks and
uses the primary.

How fresh the replica is comes from a monitor thread, once every `CHECK_EVERY_S`: it notes the primary's WAL
position (`pg_current_wal_lsn()`) with the wall-clock time the question was sent, and asks the replica how far it
has replayed (`pg_last_wal_replay_lsn()`). The newest primary position the replica has replayed tells the time
the replica is complete up to (`fresh_as_of`): it holds every commit the primary had acknowledged by then. Its
age is the lag. (The replica's own `pg_last_xact_replay_timestamp()` is not used: it grows while the primary is
idle though nothing is missing.) A replica that lags more than `max_lag_s`, does not answer, or is no replica
(not in recovery) gets no reads; the monitor logs each change of state, and reads go back once it has caught up.
A read that fails on the replica for the replica's sake (its connection lost, a recovery conflict) is read again
on the primary: only the replica being away is never an error.

Read-your-writes (README, "Read replicas"): a client that wrote reads from the replica only once the replica is
known to hold everything committed before its last write's answer (its `fresh_as_of` is later); until then, the
primary. That holds per process: a client spread over several processes (workers, hosts) sends
`Prefer: consistency=strong` on the reads that must see its writes, which then go to the primary. An export job
reads from the replica only when the replica is complete up to the job's kick-off, and its `transactionTime` is
the time the replica is complete up to, not the clock.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from service.faults import fault_kind, once_more_on_reconnect

log = logging.getLogger("trial_fhir")
T = TypeVar("T")

CHECK_EVERY_S = 1.0
#: SQLSTATE 40001 on a hot standby: a query cancelled because replay needed what it held (a recovery conflict)
RECOVERY_CONFLICT = "40001"


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """What the monitor last found: `status` ok (lag within the setting), lagging, down (no answer, or not a
    replica) or starting (not measured yet); `fresh_as_of` (epoch seconds): the replica holds every commit the
    primary had acknowledged by then; `lag_s`: its age when measured."""

    status: str
    fresh_as_of: float | None = None
    lag_s: float | None = None
    checked_at: float | None = None
    reason: str | None = None


class ReadRouter:
    """Chooses the engine of each read: the replica when it is fresh enough for the reader, else the primary.
    Without a replica every read goes to the primary and nothing runs in the background."""

    def __init__(self, primary: Engine, replica: Engine | None, *, max_lag_s: float,
                 check_every_s: float = CHECK_EVERY_S) -> None:
        self.primary = primary
        self.replica = replica
        self.max_lag_s = max_lag_s
        self.check_every_s = check_every_s
        self.state = ReplicaState("starting" if replica is not None else "off")
        # (time the question was sent, the primary's WAL position): the positions of the last few seconds
        self._samples: deque[tuple[float, int]] = deque()
        self._last_write: dict[str, float] = {}  # client → when its last write was answered (epoch seconds)
        self._writes_lock = threading.Lock()  # `_last_write` is written by request threads, pruned by the monitor
        self._lock = threading.Lock()  # serialises `check` (the monitor's and a test's)
        self._switching = threading.Lock()  # a change of state and its log line (`check`, and `mark_down` by reads)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the monitor -----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Measure now and every `check_every_s` in a daemon thread (no replica: nothing). Until the first
        measurement (a replica that does not answer may take the connect time-out) reads go to the primary."""
        if self.replica is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="replica-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self.replica is not None:
            self.replica.dispose()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # noqa: BLE001 — the monitor must outlive anything one check meets
                log.exception("read replica: check failed")
            self._stop.wait(self.check_every_s)

    def check(self) -> ReplicaState:
        """Measure the replica's freshness now (the monitor does, every `check_every_s`), log a change of state,
        and forget what no longer matters (positions older than any lag worth knowing, writes the replica holds)."""
        if self.replica is None:
            return self.state
        with self._lock:
            sent = time.time()
            try:
                with self.primary.connect() as conn:
                    position = int(conn.exec_driver_sql("SELECT pg_current_wal_lsn() - '0/0'").scalar_one())
                self._samples.append((sent, position))
            except Exception as exc:  # noqa: BLE001 — the primary away: its last known positions still count
                log.debug("read replica: the primary's WAL position is unknown (%s)", type(exc).__name__)
            state = self._measure_replica(time.time())
            keep_after = sent - max(3 * self.max_lag_s, 10 * self.check_every_s)
            while len(self._samples) > 1 and self._samples[0][0] < keep_after:
                self._samples.popleft()
            if state.fresh_as_of is not None:
                with self._writes_lock:
                    for client in [c for c, t in self._last_write.items() if t <= state.fresh_as_of]:
                        del self._last_write[client]
            self._switch(state)
            return state

    def _measure_replica(self, now: float) -> ReplicaState:
        assert self.replica is not None
        try:
            with self.replica.connect() as conn:
                recovering, replayed = conn.exec_driver_sql(
                    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() - '0/0'").one()
        except Exception as exc:  # noqa: BLE001 — a replica that does not answer is down, whatever the reason
            return ReplicaState("down", checked_at=now, reason=f"does not answer ({type(exc).__name__})")
        if not recovering or replayed is None:
            return ReplicaState("down", checked_at=now, reason="not a streaming replica (not in recovery)")
        fresh = next((at for at, position in reversed(self._samples) if position <= int(replayed)), None)
        if fresh is None:  # behind every position kept
            oldest = self._samples[0][0] if self._samples else now
            return ReplicaState("lagging", checked_at=now, lag_s=now - oldest, reason="behind every known position")
        lag = max(0.0, now - fresh)
        if lag > self.max_lag_s:
            return ReplicaState("lagging", fresh, lag, now, f"{lag:.1f} s behind (more than {self.max_lag_s:g} s)")
        return ReplicaState("ok", fresh, lag, now)

    def _switch(self, state: ReplicaState) -> None:
        with self._switching:
            before = self.state.status
            self.state = state
        if state.status == before:
            return
        if state.status == "ok":
            log.warning("read replica: %s → ok (lag %.1f s): reads go to the replica", before, state.lag_s or 0.0)
        else:
            log.warning("read replica: %s → %s (%s): reads go to the primary", before, state.status, state.reason)

    def mark_down(self, exc: BaseException) -> None:
        """A read found the replica away before the monitor did: no reads there until the next check says so."""
        # (not under `_lock`: a check may be waiting minutes for an unanswering replica, a request must not)
        self._switch(ReplicaState("down", checked_at=time.time(), reason=f"a read failed ({type(exc).__name__})"))

    # -- the choice ------------------------------------------------------------------------------------------

    def wrote(self, client: str) -> None:
        """`client`'s write was committed: its reads stay on the primary until the replica holds it."""
        if self.replica is not None:
            with self._writes_lock:
                self._last_write[client] = time.time()

    def fresh_enough(self, since: float = 0.0) -> ReplicaState | None:
        """The replica's state when it may serve a read that must see what was committed before `since` (epoch
        seconds) and lag no more than the setting; None when the read goes to the primary."""
        state = self.state
        if self.replica is None or state.status != "ok" or state.fresh_as_of is None:
            return None
        if state.fresh_as_of < since or time.time() - state.fresh_as_of > self.max_lag_s:
            return None
        return state

    def choose(self, client: str | None = None, *, strong: bool = False, since: float = 0.0) -> Engine:
        """The engine for a read by `client` (None: no client's writes to wait for); `strong`: the primary."""
        if self.replica is None or strong:
            return self.primary
        wrote_at = self._last_write.get(client, 0.0) if client is not None else 0.0
        return self.replica if self.fresh_enough(max(wrote_at, since)) is not None else self.primary

    def run(self, engine: Engine, read: Callable[[Engine], T]) -> T:
        """`read` (safe to repeat) on `engine`, once more on a fresh connection when its pooled one had died; when
        `engine` is the replica and the replica fails it (its connection lost or refused, a recovery conflict),
        the replica is marked down and `read` runs on the primary."""
        if engine is not self.replica:
            return once_more_on_reconnect(lambda: read(engine))
        try:
            return once_more_on_reconnect(lambda: read(engine))
        except Exception as exc:
            if not _replica_fault(exc):
                raise
            log.info("read on the replica failed (%s); read again on the primary", type(exc).__name__)
            self.mark_down(exc)
            return once_more_on_reconnect(lambda: read(self.primary))

    def export_source(self, kicked_off: datetime) -> tuple[Engine, datetime | None]:
        """Where an export job kicked off at `kicked_off` reads its data: (the replica, the time it is complete up
        to) when it holds everything committed before the kick-off and lags within the setting, else (the primary,
        None: its transaction time is its own clock). A job picked up at once waits for the monitor's next
        measurement or two (a job runs for seconds or more; the replica usually has the kick-off by then)."""
        since = (kicked_off if kicked_off.tzinfo else kicked_off.replace(tzinfo=UTC)).timestamp()
        if self.replica is None:
            return self.primary, None
        deadline = time.monotonic() + min(self.max_lag_s, 3 * self.check_every_s)
        state = self.fresh_enough(since)
        while state is None and self.state.status == "ok" and time.monotonic() < deadline:
            time.sleep(self.check_every_s / 4)
            state = self.fresh_enough(since)
        if state is None or state.fresh_as_of is None:
            return self.primary, None
        return self.replica, datetime.fromtimestamp(state.fresh_as_of, UTC)

    def describe(self) -> dict[str, Any]:
        """The replica's state for `/readyz` (its `replica` member)."""
        state = self.state
        shown: dict[str, Any] = {"status": state.status}
        if state.lag_s is not None:
            shown["lag_s"] = round(state.lag_s, 3)
        if state.reason:
            shown["reason"] = state.reason
        if self.replica is not None:
            shown["max_lag_s"] = self.max_lag_s
        return shown


def _replica_fault(exc: BaseException) -> bool:
    """Is `exc` the replica's state rather than the read's (which the primary would answer the same way)?"""
    if fault_kind(exc) == "unavailable":
        return True
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return getattr(orig, "sqlstate", None) == RECOVERY_CONFLICT
