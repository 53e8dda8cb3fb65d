"""/healthz (liveness, with the version) and /readyz (database, migration head, version, revision)."""

from sqlalchemy import text

from service.ops import version as versions
from service.ops.router import migration_heads
from service.ops.version import git_revision, version


def test_healthz_says_up_and_the_version(client):
    assert client.get("/healthz").json() == {"status": "ok", "version": version()}
    assert version() not in ("", "0+unknown")  # installed: the package's own version


def test_readyz_says_version_revision_and_migration(client):
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["version"] == version()
    assert ready["migration"] == ", ".join(sorted(migration_heads()))
    assert ready["revision"] == git_revision(None) and ready["revision"]


def test_readyz_is_503_until_the_schema_is_at_the_head(client, engine):
    # a write transaction from its start (BEGIN IMMEDIATE on SQLite): a deferred one that read first could not
    # become a writer after the app's background work (audit, jobs) committed in between ("database is locked")
    writes = engine.execution_options(write=True)
    with writes.begin() as conn:
        current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        conn.execute(text("UPDATE alembic_version SET version_num = '0012_older'"))
    try:
        answer = client.get("/readyz")
        assert answer.status_code == 503 and answer.headers["retry-after"]
        issue = answer.json()["issue"][0]
        assert issue["code"] == "transient" and "trial-fhir migrate" in issue["diagnostics"]
        assert "0012_older" in issue["diagnostics"]
    finally:
        with writes.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": current})
    assert client.get("/readyz").status_code == 200


def test_the_git_revision_is_the_setting_or_the_source_folders(monkeypatch):
    assert git_revision("abc1234") == "abc1234"
    found = git_revision(None)
    assert found == "unknown" or len(found) == 40
    monkeypatch.setattr(versions, "SOURCE", versions.SOURCE / "no-such-folder")
    versions.git_revision.cache_clear()
    try:
        assert versions.git_revision(None) == "unknown"
    finally:
        versions.git_revision.cache_clear()
