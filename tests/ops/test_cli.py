"""The command line's errors a person can act on (issue 14 §4): a wrong or unreachable database, a schema never
migrated, a missing study, a bad option — one line saying what is wrong and what to do, a non-zero exit, no
traceback unless --debug; `--version`; `summary` listing several studies; studies named by id or NCT number."""

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from service.cli import app
from service.ops.version import version
from service.settings import get_settings
from tests.factories import created, enrol, study

NCT = {"system": "https://clinicaltrials.gov", "value": "NCT04179760"}


@pytest.fixture
def cli(monkeypatch):
    """Run `trial-fhir …` in this process against `database_url`."""
    def run(*args: str, database_url: str):
        monkeypatch.setenv("DATABASE_URL", database_url)
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
        finally:
            get_settings.cache_clear()
    return run


def one_line_error(result, *words: str) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_version(cli, database_url):
    result = cli("--version", database_url=database_url)
    assert result.exit_code == 0 and result.output.startswith(f"trial-fhir {version()} (git ")


def test_a_url_that_is_no_database_url(cli):
    result = cli("summary", database_url="nonsense://nowhere")
    line = one_line_error(result, "DATABASE_URL is not a database URL", "postgresql+psycopg://")
    assert result.exit_code == 1 and line.startswith("error: ")


def test_an_unreachable_database_names_it_without_its_password(cli):
    result = cli("summary", database_url="postgresql+psycopg://postgres:s3cret@127.0.0.1:9/trial")
    one_line_error(result, "cannot reach the database postgresql+psycopg://postgres:***@127.0.0.1:9/trial",
                   "check DATABASE_URL")
    assert "s3cret" not in result.output


def test_a_database_never_migrated(cli, tmp_path):
    one_line_error(cli("summary", database_url=f"sqlite:///{tmp_path / 'empty.db'}"), "trial-fhir migrate")


def test_a_missing_study_names_the_studies_there_are(cli, client, settings):
    sid = created(client.post("/fhir/ResearchStudy", json=study(identifier=[NCT])))["id"]
    line = one_line_error(cli("summary", "NCT00000000", database_url=settings.database_url),
                          "no study 'NCT00000000'", sid, "NCT04179760")
    assert line.startswith("error: ")
    one_line_error(cli("export", "run", "out", "-g", "NCT00000000", database_url=settings.database_url),
                   "no study 'NCT00000000'")


def test_no_study_at_all_says_how_to_load_one(cli, settings, client):
    one_line_error(cli("summary", database_url=settings.database_url), "no study", "trial-fhir demo load")


def test_a_bad_option_is_a_usage_error(cli, settings):
    result = cli("summary", "--bogus", database_url=settings.database_url)
    assert result.exit_code == 2 and "No such option" in result.output and "Traceback" not in result.output


def test_debug_lets_the_traceback_through(cli):
    result = cli("--debug", "summary", database_url="nonsense://nowhere")
    assert result.exit_code == 1 and result.exception is not None and not isinstance(result.exception, SystemExit)


def test_summary_by_nct_number_and_listing_several_studies(cli, client, settings, tmp_path):
    first = enrol(client)["study"]
    second = created(client.post("/fhir/ResearchStudy", json=study(identifier=[NCT], title="Second study")))["id"]
    listed = cli("summary", database_url=settings.database_url)
    assert listed.exit_code == 0, listed.output
    assert first in listed.output and second in listed.output and "NCT04179760" in listed.output
    assert "Second study" in listed.output and "2 studies" in listed.output
    with_csv = cli("summary", "--csv", "-", database_url=settings.database_url)
    one_line_error(with_csv, "2 studies", "name one")
    assert with_csv.exit_code == 2
    by_number = cli("summary", "NCT04179760", database_url=settings.database_url)
    assert by_number.exit_code == 0 and "Second study" in by_number.output and second in by_number.output
    exported = cli("export", "run", str(tmp_path / "out"), "-g", "NCT04179760", database_url=settings.database_url)
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "out" / "ResearchStudy.ndjson").read_text().count(second) >= 1


def test_clients_add_takes_the_nct_number(cli, client, settings, tmp_path):
    import json

    from tests.auth.tokens import new_key, public_jwks

    sid = created(client.post("/fhir/ResearchStudy", json=study(identifier=[NCT])))["id"]
    jwks = tmp_path / "client.jwks.json"
    jwks.write_text(json.dumps(public_jwks(new_key())))
    added = cli("clients", "add", "portal", "--scope", "system/Observation.rs", "--jwks", str(jwks),
                "--study", "NCT04179760", "--study", "not-yet-loaded", "--json", database_url=settings.database_url)
    assert added.exit_code == 0, added.output
    # the NCT number is stored as the study's id; an id of no study yet is kept (the study may be loaded later)
    assert set(json.loads(added.output)["studies"]) == {sid, "not-yet-loaded"}


def test_the_installed_command_fails_in_one_line(tmp_path):
    """A real process, as an operator runs it: a database that is not there."""
    env = {**os.environ, "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:9/nowhere"}
    done = subprocess.run([sys.executable, "-c", "from service.cli import main; main()", "summary"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: cannot reach the database"), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
