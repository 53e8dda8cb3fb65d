"""The schema comes from alembic migrations: an empty or older database is brought up to date, keeping its data."""

import time
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from service.db import make_engine, migrate
from service.main import create_app
from service.settings import Settings
from tests.conftest import ON_POSTGRES, scratch_postgres_database


@pytest.fixture
def empty_database_url(tmp_path):
    """A database with no tables at all."""
    if not ON_POSTGRES:
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with scratch_postgres_database("trial_fhir_mig") as url:
        yield url


def test_app_started_on_an_empty_database_creates_the_schema(empty_database_url):
    settings = Settings(database_url=empty_database_url, auth="off", _env_file=None)
    with TestClient(create_app(settings)) as client:
        assert client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male"}).status_code == 201
        engine = client.app.state.engine
        tables = set(inspect(engine).get_table_names())
        assert {"resource", "resource_version", "measurement", "adverse_event", "research_subject"} <= tables
        with engine.connect() as conn:
            head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        from alembic.script import ScriptDirectory

        from service.db import alembic_config
        assert head == ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_upgrading_an_older_database_keeps_its_data(empty_database_url):
    engine = make_engine(empty_database_url)
    migrate(engine, "0001")
    now = datetime(2024, 1, 1, tzinfo=UTC)
    content = ('{"resourceType":"Patient","id":"old","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00.000Z"},'
               '"gender":"female"}')
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content) "
                          "VALUES ('Patient', 'old', 1, :now, :f, :content)"),
                     {"now": now, "f": False, "content": content})
        conn.execute(text("INSERT INTO resource_version (resource_type, id, version_id, last_updated, method, content) "
                          "VALUES ('Patient', 'old', 1, :now, 'POST', :content)"), {"now": now, "content": content})
        conn.execute(text("INSERT INTO patient (id, gender) VALUES ('old', 'female')"))
    engine.dispose()
    settings = Settings(database_url=empty_database_url, auth="off", _env_file=None)
    with TestClient(create_app(settings)) as client:  # migrates to head at start-up
        response = client.get("/fhir/Patient/old")
        assert response.status_code == 200
        assert response.json()["gender"] == "female"
        assert client.get("/fhir/Patient/old/_history/1").status_code == 200


def test_startup_migration_can_be_disabled(empty_database_url):
    settings = Settings(database_url=empty_database_url, auth="off", migrate_on_startup=False, _env_file=None)
    with TestClient(create_app(settings)) as client:
        assert "resource" not in inspect(client.app.state.engine).get_table_names()


def test_migrations_build_exactly_the_schema_the_models_describe(engine):
    """Nothing in the models is missing from the migrations (alembic autogenerate would find nothing)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import service.tables  # noqa: F401

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    if engine.dialect.name == "sqlite":  # SQLite keeps the declared VARCHAR lengths; it enforces none of them
        diff = [d for d in diff if not (isinstance(d, list) and d[0][0] == "modify_type")]
    assert diff == []


def test_upgrading_keeps_the_exports_in_flight_and_runs_them(empty_database_url, tmp_path):
    """0012 gives every queued or running export a queued job (a running one starts over); finished ones get none."""
    from service.export.service import ExportSpec

    engine = make_engine(empty_database_url)
    migrate(engine, "0011_feeds")
    now = datetime(2026, 11, 29, tzinfo=UTC)
    spec = ExportSpec(types=("Patient",)).to_json()
    with engine.begin() as conn:
        for job_id, status in (("queued-export", "queued"), ("running-export", "running"),
                               ("done-export", "completed")):
            conn.execute(text("INSERT INTO export_job (id, status, spec, request, created_at, heartbeat, worker, "
                              "restricted, deidentified) VALUES (:id, :status, :spec, 'http://x/fhir/$export', :now, "
                              ":now, 'old-worker', :f, :f)"),
                         {"id": job_id, "status": status, "spec": spec, "now": now, "f": False})
    migrate(engine)
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT id, kind, state, attempts FROM job ORDER BY id")).all()
        statuses = dict(conn.execute(text("SELECT id, status FROM export_job")).all())
    engine.dispose()
    assert [tuple(j) for j in jobs] == [("queued-export", "export", "queued", 0),
                                        ("running-export", "export", "queued", 0)]
    assert statuses == {"queued-export": "queued", "running-export": "queued", "done-export": "completed"}
    settings = Settings(database_url=empty_database_url, auth="off", export_dir=tmp_path / "export", _env_file=None)
    with TestClient(create_app(settings)) as client:
        client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male"})
        for job_id in ("queued-export", "running-export"):
            deadline = time.monotonic() + 30
            while (status := client.get(f"/fhir/$export-status/{job_id}")).status_code == 202:
                assert time.monotonic() < deadline, "the export did not run"
                time.sleep(0.05)
            assert status.status_code == 200, status.text


def test_0013_fills_provenance_targets_patient_and_widens_the_identifier_key(empty_database_url):
    """Migration 0013 (docs/scaling.md): existing provenance_target rows get their Provenance's patient, and
    resource_identifier.pk is a bigint on PostgreSQL (its column and its sequence), so it outlives 2^31 writes."""
    engine = make_engine(empty_database_url)
    migrate(engine, "0012_jobs")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO provenance (id, study_id, patient_id) VALUES ('one', 's', 'p1'), "
                          "('many', 's', NULL)"))
        conn.execute(text("INSERT INTO provenance_target (id, target_type, target_id) VALUES "
                          "('one', 'Observation', 'o1'), ('one', 'Patient', 'p1'), "
                          "('many', 'Patient', 'p1'), ('many', 'Patient', 'p2')"))
        conn.execute(text("INSERT INTO resource_identifier (resource_type, resource_id, system, value) "
                          "VALUES ('Patient', 'p1', 'urn:mrn', 'M1')"))
    migrate(engine, "0013_scale")
    with engine.begin() as conn:
        filled = conn.execute(text("SELECT id, target_id, patient_id FROM provenance_target ORDER BY id, target_id"))
        assert [tuple(r) for r in filled] == [("many", "p1", None), ("many", "p2", None), ("one", "o1", "p1"),
                                              ("one", "p1", "p1")]
        if ON_POSTGRES:
            types = conn.execute(text(
                "SELECT (SELECT data_type FROM information_schema.columns WHERE table_name = 'resource_identifier' "
                "        AND column_name = 'pk'), "
                "       (SELECT data_type FROM information_schema.sequences "
                "        WHERE sequence_name = 'resource_identifier_pk_seq')")).one()
            assert tuple(types) == ("bigint", "bigint")
            # the sequence really goes past int4 (an int4 column or sequence would refuse this value)
            conn.execute(text("SELECT setval('resource_identifier_pk_seq', 3000000000)"))
        conn.execute(text("INSERT INTO resource_identifier (resource_type, resource_id, system, value) "
                          "VALUES ('Patient', 'p2', 'urn:mrn', 'M2')"))
        keys = [r[0] for r in conn.execute(text("SELECT pk FROM resource_identifier ORDER BY pk"))]
        assert keys == ([1, 3000000001] if ON_POSTGRES else [1, 2])
        if ON_POSTGRES:  # back down to int4 only works while every key (and the sequence) fits in it
            conn.execute(text("DELETE FROM resource_identifier WHERE pk > 2147483647"))
            conn.execute(text("SELECT setval('resource_identifier_pk_seq', 1)"))
    from alembic import command

    from service.db import alembic_config
    cfg = alembic_config(engine)
    with engine.begin() as conn:  # and back down
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0012_jobs")
    with engine.connect() as conn:
        assert "patient_id" not in {c["name"] for c in inspect(conn).get_columns("provenance_target")}
    engine.dispose()
