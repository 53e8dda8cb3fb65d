"""The PostgreSQL streaming replica of the read-replica tests (tests/replica).

`TEST_READ_DATABASE_URL` names the replica's server (like `TEST_DATABASE_URL` the primary's, e.g.
postgresql+psycopg://postgres@127.0.0.1:5433/postgres). Unset, on a machine with a local Debian cluster at
127.0.0.1:5432 and as root, `.ci/pg-replica up` makes one (pg_basebackup, started on port 5433; nothing is done
when it already streams). Elsewhere the replica tests skip, saying why; with `TRIAL_FHIR_REQUIRE_REPLICA=1` (set by
`.ci/run`) they fail instead.

The tests pause and resume the replica's replay and stop and start it: `exclusive()` serialises them across the
xdist workers of a run (a file lock), and every test resumes replay when it ends.
"""

import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "pg-replica"
LOCK = Path("/tmp/trial-fhir-replica-tests.lock")
LOCAL_PORT = 5433


def required() -> bool:
    return os.environ.get("TRIAL_FHIR_REQUIRE_REPLICA") == "1"


def server_url(primary_server_url: str) -> tuple[str | None, str]:
    """(The replica server's URL, or None with why there is none.)"""
    given = os.environ.get("TEST_READ_DATABASE_URL", "")
    if given:
        return given, ""
    primary = make_url(primary_server_url)
    if primary.host not in ("127.0.0.1", "localhost") or (primary.port or 5432) != 5432:
        return None, "TEST_READ_DATABASE_URL is unset and the primary is not the local cluster on port 5432"
    if os.geteuid() != 0 or not Path("/etc/postgresql").is_dir():
        return None, ("TEST_READ_DATABASE_URL is unset and this is not root on a machine with a local cluster "
                      "(/etc/postgresql): no replica can be made here (.ci/pg-replica)")
    with exclusive():  # one xdist worker makes it, the other finds it streaming
        done = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return None, f".ci/pg-replica up failed: {done.stderr.strip() or done.stdout.strip()}"
    return primary.set(port=LOCAL_PORT).render_as_string(hide_password=False), ""


@contextmanager
def exclusive() -> Iterator[None]:
    """Hold the replica alone (other xdist workers wait): pausing replay or stopping it is the whole server's."""
    with open(LOCK, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)


class Replica:
    """The replica of one test database: its URL, and control of its replay (superuser functions)."""

    def __init__(self, primary_url: str, replica_server_url: str) -> None:
        # stopped and started only when it is the one .ci/pg-replica made
        self.local = not os.environ.get("TEST_READ_DATABASE_URL") and make_url(replica_server_url).port == LOCAL_PORT
        name = make_url(primary_url).database
        self.url = make_url(replica_server_url).set(database=name).render_as_string(hide_password=False)
        self.primary: Engine = create_engine(primary_url, isolation_level="AUTOCOMMIT")
        self.engine: Engine = create_engine(self.url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        self.stopped = False

    def dispose(self) -> None:
        self.primary.dispose()
        self.engine.dispose()

    def _scalar(self, engine: Engine, sql: str) -> object:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()

    def wait_until_replayed(self, bound_s: float = 60.0) -> None:
        """Until the replica has replayed what the primary has written so far (its database exists there, its
        rows are there)."""
        target = int(self._scalar(self.primary, "SELECT pg_current_wal_lsn() - '0/0'"))  # type: ignore[arg-type]
        deadline = time.monotonic() + bound_s
        while True:
            try:
                done = self._scalar(self.engine, "SELECT pg_last_wal_replay_lsn() - '0/0'")
                if done is not None and int(done) >= target:  # type: ignore[call-overload]
                    return
            except Exception:  # noqa: BLE001 — the database is not there yet, or the replica is starting
                if time.monotonic() > deadline:
                    raise
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.05)

    def pause(self) -> None:
        self._scalar(self.engine, "SELECT pg_wal_replay_pause()")
        while self._scalar(self.engine, "SELECT pg_get_wal_replay_pause_state()") != "paused":
            time.sleep(0.02)

    def resume(self) -> None:
        self._scalar(self.engine, "SELECT pg_wal_replay_resume()")

    def stop(self) -> None:
        self.engine.dispose()
        subprocess.run([str(SCRIPT), "stop"], check=True, capture_output=True, timeout=120)
        self.stopped = True

    def start(self) -> None:
        subprocess.run([str(SCRIPT), "start"], check=True, capture_output=True, timeout=120)
        self.stopped = False

    def start_if_stopped(self) -> None:
        if self.stopped:
            self.start()
