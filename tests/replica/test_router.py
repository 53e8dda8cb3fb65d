"""The read router's rules as pure unit tests (service/replica.py), on both databases: two in-memory SQLite
engines stand in for the primary and the replica (the router only chooses between them; measuring a real replica is
tests/replica/test_replica.py's)."""

import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError, OperationalError

from service.main import create_app
from service.replica import ReadRouter, ReplicaState
from service.settings import Settings


@pytest.fixture
def engines():
    primary, replica = create_engine("sqlite://"), create_engine("sqlite://")
    yield primary, replica
    primary.dispose()
    replica.dispose()


def fresh(router: ReadRouter, age_s: float = 0.0, status: str = "ok") -> None:
    """As if the monitor had just found the replica complete up to `age_s` ago."""
    now = time.time()
    router.state = ReplicaState(status, fresh_as_of=now - age_s, lag_s=age_s, checked_at=now)


def test_without_a_replica_everything_is_read_on_the_primary(engines):
    primary, _ = engines
    router = ReadRouter(primary, None, max_lag_s=5)
    assert router.choose("a") is primary and router.choose(None) is primary
    router.wrote("a")
    assert router.state.status == "off" and router.describe() == {"status": "off"}
    assert router.export_source(datetime.now(UTC)) == (primary, None)


def test_a_fresh_replica_serves_reads(engines):
    primary, replica = engines
    router = ReadRouter(primary, replica, max_lag_s=5)
    assert router.choose("a") is primary, "not measured yet: the primary"
    fresh(router, 1.0)
    assert router.choose("a") is replica and router.choose(None) is replica
    assert router.choose("a", strong=True) is primary, "Prefer: consistency=strong"


@pytest.mark.parametrize("status", ["lagging", "down", "starting"])
def test_a_replica_not_ok_serves_nothing(engines, status):
    primary, replica = engines
    router = ReadRouter(primary, replica, max_lag_s=5)
    fresh(router, 0.0, status)
    assert router.choose("a") is primary


def test_a_replica_older_than_the_setting_serves_nothing(engines):
    """The monitor's last word ages: a replica it found fresh 6 s ago (monitor stuck) is 6 s behind at least."""
    primary, replica = engines
    router = ReadRouter(primary, replica, max_lag_s=5)
    fresh(router, 6.0)
    assert router.choose("a") is primary


def test_a_client_that_wrote_reads_on_the_primary_until_the_replica_holds_its_write(engines):
    primary, replica = engines
    router = ReadRouter(primary, replica, max_lag_s=5)
    fresh(router, 0.5)
    router.wrote("writer")
    assert router.choose("writer") is primary
    assert router.choose("reader") is replica, "another client's reads are not held back"
    time.sleep(0.01)
    fresh(router, 0.0)  # complete up to after the write was answered
    assert router.choose("writer") is replica


def test_an_export_reads_on_the_replica_only_when_it_holds_everything_before_the_kick_off(engines):
    primary, replica = engines
    router = ReadRouter(primary, replica, max_lag_s=5, check_every_s=0.02)
    fresh(router, 1.0)
    assert router.export_source(datetime.now(UTC)) == (primary, None), "not yet: after a short wait, the primary"
    earlier = datetime.now(UTC) - timedelta(seconds=3)
    source, as_of = router.export_source(earlier.replace(tzinfo=None))  # naive: UTC, as SQLite returns it
    assert source is replica and as_of is not None and earlier < as_of <= datetime.now(UTC)


def test_an_export_picked_up_at_once_waits_for_the_monitor_to_find_its_kick_off_replayed(engines):
    primary, replica = engines
    router = ReadRouter(primary, replica, max_lag_s=5, check_every_s=0.2)
    fresh(router, 1.0)
    kicked_off = datetime.now(UTC)
    later = threading.Timer(0.1, lambda: fresh(router, 0.0))  # the monitor's next measurement
    later.start()
    source, as_of = router.export_source(kicked_off)
    later.join()
    assert source is replica and as_of is not None and as_of >= kicked_off


def _lost(engine_name: str) -> DBAPIError:
    return OperationalError("SELECT 1", {}, sqlite3.OperationalError(f"{engine_name} is gone"),
                            connection_invalidated=True)


def test_a_read_the_replica_fails_is_read_again_on_the_primary_and_the_replica_marked_down(engines):
    primary, replica = engines
    router = ReadRouter(primary, replica, max_lag_s=5)
    fresh(router)
    tried = []

    def read(engine):
        tried.append(engine)
        if engine is replica:
            raise _lost("replica")
        return "answer"

    assert router.run(router.choose("a"), read) == "answer"
    assert tried == [replica, replica, primary]  # once more on a new connection, then the primary
    assert router.state.status == "down" and router.choose("a") is primary


def test_a_failure_of_the_read_itself_is_not_hidden(engines):
    primary, replica = engines
    router = ReadRouter(primary, replica, max_lag_s=5)
    fresh(router)

    def read(engine):
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        router.run(replica, read)
    assert router.state.status == "ok"


def test_a_primary_failure_is_not_retried_elsewhere(engines):
    primary, replica = engines
    router = ReadRouter(primary, replica, max_lag_s=5)
    with pytest.raises(DBAPIError):
        router.run(primary, lambda engine: (_ for _ in ()).throw(_lost("primary")))


def test_the_monitor_measures_nothing_without_a_replica(engines):
    primary, _ = engines
    router = ReadRouter(primary, None, max_lag_s=5)
    router.start()
    assert router.check().status == "off"
    router.stop()


@pytest.mark.parametrize("database_url, read_url, named", [
    ("sqlite:///x.db", "postgresql+psycopg://h/db", "TRIAL_FHIR_DATABASE_URL"),
    ("postgresql+psycopg://h/db", "sqlite:///y.db", "TRIAL_FHIR_READ_DATABASE_URL"),
    ("postgresql+psycopg://h/db", "mysql://user:secret@h/db", "TRIAL_FHIR_READ_DATABASE_URL"),
])
def test_a_read_replica_needs_postgresql_for_both_databases(tmp_path, database_url, read_url, named):
    settings = Settings(database_url=database_url, read_database_url=read_url, export_dir=tmp_path, auth="off",
                        _env_file=None)
    with pytest.raises(ValueError, match=f"needs PostgreSQL for both databases; {named} is not") as refused:
        create_app(settings)
    assert "secret" not in str(refused.value), "a URL may hold a password: never in the message"


def test_the_lag_setting_must_be_positive():
    with pytest.raises(ValueError):
        Settings(read_max_lag_s=0, _env_file=None)
