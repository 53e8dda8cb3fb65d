"""Database faults are answered 503 + Retry-After + OperationOutcome `transient`, never 500, and a connection that
died in the pool costs the client nothing (service/faults.py).

PostgreSQL: the app talks to the shared server through a TCP proxy the test cuts and restores (the server itself
is never touched). SQLite: another connection holds the database's lock past the busy timeout."""

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError, TimeoutError as PoolTimeout

from service import faults
from service.main import create_app
from service.settings import Settings
from tests.conftest import ON_POSTGRES
from tests.factories import created, patient

FHIR = "application/fhir+json"


# -- pure: what is a fault --------------------------------------------------------------------------------------

def _wrapped(orig: BaseException, cls: type[DBAPIError] = OperationalError, invalidated: bool = False) -> DBAPIError:
    return cls("SELECT secret FROM t WHERE mrn = %(mrn)s", {"mrn": "MRN-1"}, orig,
               connection_invalidated=invalidated)  # type: ignore[arg-type]


class _PgError(psycopg.errors.OperationalError):
    pass


@pytest.mark.parametrize(("error", "kind"), [
    (_wrapped(sqlite3.OperationalError("database is locked")), "unavailable"),
    (_wrapped(sqlite3.OperationalError("disk I/O error")), "unavailable"),
    (_wrapped(sqlite3.OperationalError("attempt to write a readonly database")), "unavailable"),
    (_wrapped(sqlite3.OperationalError("interrupted")), "timeout"),
    (_wrapped(sqlite3.OperationalError("no such column: x")), None),
    (_wrapped(psycopg.OperationalError("connection refused")), "unavailable"),
    (_wrapped(psycopg.errors.AdminShutdown("terminating connection")), "unavailable"),
    (_wrapped(psycopg.errors.TooManyConnections("too many clients")), "unavailable"),
    (_wrapped(psycopg.errors.ReadOnlySqlTransaction("read-only")), "unavailable"),
    (_wrapped(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")), "timeout"),
    (_wrapped(psycopg.errors.DeadlockDetected("deadlock")), None),
    (_wrapped(psycopg.errors.UniqueViolation("dup"), IntegrityError), None),
    (_wrapped(ValueError("x"), OperationalError, invalidated=True), "unavailable"),
    (ConnectionRefusedError(111, "refused"), "unavailable"),
    (PoolTimeout("QueuePool limit of size 40 overflow 10 reached"), "unavailable"),  # out of connections
    (DisconnectionError("pooled connection is gone"), "unavailable"),
    (FileNotFoundError(2, "no such file"), None),  # an OSError, but not the database's
    (ValueError("a bug"), None),
    (KeyError("a bug"), None),
])
def test_fault_kind(error, kind):
    assert faults.fault_kind(error) == kind


def test_asyncpg_connection_errors_are_faults():
    asyncpg = pytest.importorskip("asyncpg")
    assert faults.fault_kind(asyncpg.exceptions.ConnectionDoesNotExistError("gone")) == "unavailable"
    assert faults.fault_kind(asyncpg.exceptions.CannotConnectNowError("starting")) == "unavailable"
    assert faults.fault_kind(asyncpg.exceptions.QueryCanceledError("timeout")) == "timeout"
    assert faults.fault_kind(asyncpg.exceptions.UniqueViolationError("dup")) is None


def test_the_answer_names_no_sql_parameters_or_identifiers():
    answer = faults.unavailable(_wrapped(psycopg.errors.AdminShutdown("terminating connection MRN-1")))
    assert answer is not None and answer.status_code == 503
    assert answer.headers == {"Retry-After": str(faults.RETRY_AFTER_S)}
    text = str(answer.issues[0].diagnostics)
    assert "SELECT" not in text and "MRN-1" not in text and "secret" not in text
    assert answer.issues[0].code == "transient"


def test_reads_run_once_more_on_a_connection_that_died_in_the_pool():
    calls = []

    def read():
        calls.append(1)
        if len(calls) == 1:
            raise _wrapped(psycopg.OperationalError("server closed the connection"), invalidated=True)
        return "rows"

    assert faults.once_more_on_reconnect(read) == "rows" and len(calls) == 2
    calls.clear()

    def broken():
        calls.append(1)
        raise _wrapped(psycopg.errors.UndefinedColumn("no such column"), OperationalError)

    with pytest.raises(OperationalError):
        faults.once_more_on_reconnect(broken)
    assert len(calls) == 1  # not a lost connection: not run again


# -- over HTTP --------------------------------------------------------------------------------------------------

class Proxy:
    """A TCP proxy to `target` that the test can cut (every open connection dropped, new ones refused at once)
    and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.up = False
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        time.sleep(0.1)  # the pipes see their sockets closed

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def proxied(database_url, tmp_path) -> Iterator[tuple[TestClient, Proxy]]:
    if not ON_POSTGRES:
        pytest.skip("the proxy stands between the app and PostgreSQL")
    url = make_url(database_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    settings = Settings(database_url=url.set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False), export_dir=tmp_path / "export", auth="off", export_worker=False,
        retry_after_s=7, _env_file=None)
    with TestClient(create_app(settings)) as client:
        yield client, proxy
    proxy.close()


def assert_transient(response, retry_after: str = "7") -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == retry_after
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert [i["code"] for i in body["issue"]] == ["transient"]
    assert "SELECT" not in response.text and "INSERT" not in response.text


def _transaction(patient_id: str) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {**patient(), "id": patient_id}, "request": {"method": "PUT", "url": f"Patient/{patient_id}"}}]}


def _every_path(client: TestClient, pid: str) -> list:
    return [
        client.get(f"/fhir/Patient/{pid}"),                                   # read (route)
        client.get("/fhir/Patient", params={"_id": pid}),                     # search (front door)
        client.get("/fhir/Observation", params={"subject": f"Patient/{pid}"}),  # search (front door, async pool)
        client.post("/fhir/Patient", json=patient(), headers={"Content-Type": FHIR}),  # create (front door)
        client.put(f"/fhir/Patient/{pid}", json={**patient(), "id": pid},
                   headers={"Content-Type": FHIR}),                         # update (route)
        client.post("/fhir", json=_transaction(pid), headers={"Content-Type": FHIR}),  # Bundle
    ]


def test_a_database_that_is_away_is_503_on_every_path_and_back_without_restart(proxied):
    client, proxy = proxied
    pid = created(client.post("/fhir/Patient", json=patient(), headers={"Content-Type": FHIR}))["id"]
    assert client.get("/readyz").json()["status"] == "ready"
    proxy.cut()
    for response in _every_path(client, pid):
        assert_transient(response)
    assert_transient(client.get("/readyz"))
    # liveness is the process's: restarting it would not bring the database back (readiness drains it instead)
    assert client.get("/healthz").json()["status"] == "ok"
    proxy.restore()
    assert client.get("/readyz").status_code == 200
    for response in _every_path(client, pid):
        assert response.status_code in (200, 201), response.text


def test_connections_that_died_in_the_pool_are_never_seen_by_a_client(proxied):
    client, proxy = proxied
    pid = created(client.post("/fhir/Patient", json=patient(), headers={"Content-Type": FHIR}))["id"]
    for path in range(len(_every_path(client, pid))):  # each path first after a cut: its pooled connection is dead
        proxy.cut()
        proxy.restore()
        response = _every_path(client, pid)[path]
        assert response.status_code in (200, 201), (path, response.text)


def test_the_proxy_really_cuts(proxied):
    """The other tests' 503s come from the cut, not from the proxy itself: through it, the database answers."""
    client, proxy = proxied
    assert client.get("/fhir/Patient").status_code == 200
    proxy.cut()
    assert client.get("/fhir/Patient").status_code == 503
    proxy.restore()
    assert client.get("/fhir/Patient").status_code == 200


def test_a_runaway_statement_is_stopped_and_answered_503(database_url, tmp_path):
    if not ON_POSTGRES:
        pytest.skip("statement_timeout is PostgreSQL's")
    settings = Settings(database_url=database_url, export_dir=tmp_path / "export", auth="off",
                        export_worker=False, statement_timeout_ms=50, _env_file=None)
    app = create_app(settings)
    engine = app.state.engine
    with TestClient(app) as client:
        pid = created(client.post("/fhir/Patient", json=patient(), headers={"Content-Type": FHIR}))["id"]

        # a statement that runs 2 s on the connection a read of the Patient uses: the server stops it at 50 ms
        @event.listens_for(engine, "before_cursor_execute")
        def slow(conn, cursor, statement, parameters, context, executemany):
            cursor.execute("SELECT pg_sleep(2)")

        started = time.monotonic()
        response = client.get(f"/fhir/Patient/{pid}")
        assert time.monotonic() - started < 1.5
        assert_transient(response, "5")
        assert "longer than the server allows" in response.json()["issue"][0]["diagnostics"]
        event.remove(engine, "before_cursor_execute", slow)
        assert client.get(f"/fhir/Patient/{pid}").status_code == 200


def test_a_locked_sqlite_database_is_503(settings):
    if ON_POSTGRES:
        pytest.skip("SQLite's lock")
    app = create_app(settings)
    engine = app.state.engine

    @event.listens_for(engine, "connect")
    def short_wait(dbapi_conn, record):  # runs after the engine's own pragmas: wait 50 ms, not a minute
        dbapi_conn.execute("PRAGMA busy_timeout=50")

    path = make_url(settings.database_url).database
    with TestClient(app) as client:
        pid = created(client.post("/fhir/Patient", json=patient(), headers={"Content-Type": FHIR}))["id"]
        engine.dispose()  # the pool's connections get the short wait too
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            assert_transient(client.post("/fhir/Patient", json=patient(), headers={"Content-Type": FHIR}), "5")
            assert_transient(client.put(f"/fhir/Patient/{pid}", json={**patient(), "id": pid},
                                        headers={"Content-Type": FHIR}), "5")
            assert_transient(client.post("/fhir", json=_transaction(pid), headers={"Content-Type": FHIR}), "5")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert client.post("/fhir/Patient", json=patient(), headers={"Content-Type": FHIR}).status_code == 201
        assert client.get("/readyz").json()["status"] == "ready"


# -- start-up while the database is away (found by bench/soak.py) ------------------------------------------------

def test_start_up_waits_for_a_database_that_is_restarting_then_serves(settings, monkeypatch):
    """A worker started while PostgreSQL restarts must not fail its start-up (uvicorn's supervisor then stops the
    whole service): the migration is tried again until the database answers."""
    import service.main as main

    real_migrate, calls = main.migrate, []

    def migrate_after_two_faults(engine):
        calls.append(1)
        if len(calls) <= 2:
            raise DisconnectionError("the database system is shutting down")
        real_migrate(engine)

    monkeypatch.setattr(main, "migrate", migrate_after_two_faults)
    monkeypatch.setattr(main, "STARTUP_RETRY_S", 0.01)
    with TestClient(create_app(settings.model_copy(update={"migrate_on_startup": True}))) as client:
        assert client.post("/fhir/Patient", json=patient()).status_code == 201
    assert len(calls) == 3


def test_start_up_gives_up_after_the_wait_and_at_once_on_what_is_not_a_fault(settings, monkeypatch):
    import service.main as main

    calls = []

    def failing(error):
        def migrate(engine):
            calls.append(1)
            raise error
        return migrate

    monkeypatch.setattr(main, "STARTUP_RETRY_S", 0.01)
    monkeypatch.setattr(main, "migrate", failing(DisconnectionError("down")))
    with pytest.raises(DisconnectionError):  # the database never comes back within the wait
        with TestClient(create_app(settings.model_copy(update={"migrate_on_startup": True, "startup_wait_s": 0.05}))):
            pass
    assert len(calls) >= 2
    calls.clear()
    monkeypatch.setattr(main, "migrate", failing(ValueError("a bug, not a fault")))
    with pytest.raises(ValueError):
        with TestClient(create_app(settings.model_copy(update={"migrate_on_startup": True}))):
            pass
    assert len(calls) == 1  # not retried
