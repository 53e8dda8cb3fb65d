"""Fixtures: a fresh database per test, on SQLite (default) or PostgreSQL (`TEST_DATABASE_URL`).

SQLite: the schema is migrated once into a template file, copied for each test.
PostgreSQL: `TEST_DATABASE_URL` names a server database with rights to create databases
(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres); each test session (each xdist worker)
creates its own database, migrates it, empties its tables between tests, and drops it at the end.
"""

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.db import make_engine, migrate
from service.main import create_app
from service.settings import Settings

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "")
ON_POSTGRES = TEST_DATABASE_URL.startswith("postgresql")


@contextmanager
def scratch_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty database on the `TEST_DATABASE_URL` server (its URL), dropped on exit."""
    admin_url = make_url(TEST_DATABASE_URL)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def migrated_postgres_database(prefix: str) -> Iterator[str]:
    """`scratch_postgres_database` with the schema migrated into it."""
    with scratch_postgres_database(prefix) as url:
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield url


@pytest.fixture(scope="session")
def database_template(tmp_path_factory):
    """SQLite: path of a migrated template file. PostgreSQL: URL of this session's database."""
    if ON_POSTGRES:
        with migrated_postgres_database("trial_fhir_test") as url:
            yield url
    else:
        path = tmp_path_factory.mktemp("template") / "template.db"
        engine = make_engine(f"sqlite:///{path}")
        migrate(engine)
        engine.dispose()
        yield path


def _empty_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        tables = conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )).scalars().all()
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY"))
    engine.dispose()


@pytest.fixture
def database_url(database_template, tmp_path) -> str:
    if ON_POSTGRES:
        _empty_postgres(database_template)
        return database_template
    path = tmp_path / "test.db"
    shutil.copyfile(database_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def another_database_url(database_template, tmp_path) -> Iterator[str]:
    """A second fresh, migrated database beside `database_url`, for tests that compare two apps side by side.
    SQLite: another copy of the template. PostgreSQL: a scratch database, migrated, dropped after the test."""
    if ON_POSTGRES:
        with migrated_postgres_database("trial_fhir_another") as url:
            yield url
    else:
        path = tmp_path / "another.db"
        shutil.copyfile(database_template, path)
        yield f"sqlite:///{path}"


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    """No access control: these tests are about FHIR behaviour; tests/auth runs the same app with
    TRIAL_FHIR_AUTH=smart. The database starts empty (no shipped catalogue stored at start-up: the default one is
    compiled from the package's files until it is; tests/catalogue stores it)."""
    return Settings(database_url=database_url, export_dir=tmp_path / "export", auth="off",
                    load_catalogue_on_startup=False, _env_file=None)


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def cli(database_url, monkeypatch, tmp_path):
    """Runs `trial-fhir ARGS…` in this process against the test database: (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from service.cli import app as cli_app
    from service.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("TRIAL_FHIR_EXPORT_DIR", str(tmp_path / "export"))
    get_settings.cache_clear()

    def invoke(*args: str):
        result = CliRunner().invoke(cli_app, list(args))
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result.exit_code, result.stdout, result.stderr

    yield invoke
    get_settings.cache_clear()


@pytest.fixture
def engine(app):
    return app.state.engine


EXAMPLES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fhir-examples"


@pytest.fixture(scope="session")
def fhir_examples() -> Path:
    """../shared/fhir-examples (official HL7 R4 examples and two Synthea bundles)."""
    for candidate in (EXAMPLES_DIR, Path(__file__).resolve().parent / "data" / "fhir-examples"):
        if candidate.is_dir():
            return candidate
    pytest.skip("shared/fhir-examples is not beside this checkout")
