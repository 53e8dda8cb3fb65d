"""Pooled PostgreSQL connections: the ones that sat idle are checked before use (service.db._ping_when_idle)."""

import psycopg
import pytest
from sqlalchemy.engine import make_url

from service import db
from tests.conftest import ON_POSTGRES
from tests.factories import enrol, observation

pytestmark = pytest.mark.skipif(not ON_POSTGRES, reason="SQLite has no server to drop a connection")


def _drop_pooled_connections(engine) -> int:
    """Terminate this database's other backends from a connection outside the pool, as a server restart would."""
    url = make_url(engine.url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                         dbname=url.database, autocommit=True) as conn:
        return conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]


def test_search_after_the_server_dropped_an_idle_pooled_connection_answers_200(client, engine, monkeypatch):
    pid = enrol(client)["patient"]
    assert client.post("/fhir/Observation", json=observation(pid)).status_code == 201
    assert client.get(f"/fhir/Observation?subject={pid}").status_code == 200
    assert _drop_pooled_connections(engine) >= 1
    monkeypatch.setattr(db, "IDLE_PING_S", 0.0)  # every pooled connection now counts as idle

    found = client.get(f"/fhir/Observation?subject={pid}")

    assert found.status_code == 200
    assert found.json()["total"] == 1
