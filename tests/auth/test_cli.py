"""`trial-fhir clients …` through typer's CliRunner, on a migrated database named by DATABASE_URL."""

import json

import pytest
from typer.testing import CliRunner

from service.auth.clients import get_client
from service.cli import app
from service.db import make_engine
from service.settings import get_settings
from tests.auth.tokens import new_key, public_jwks

runner = CliRunner()


@pytest.fixture
def db(database_url):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def jwks_file(tmp_path):
    path = tmp_path / "client.jwks.json"
    path.write_text(json.dumps(public_jwks(new_key("ES384"), new_key("RS384"))))
    return path


def test_add_prints_the_registration_as_json(cli, db, jwks_file):
    code, out, _ = cli("clients", "add", "Seoul EHR", "--scope", "system/Observation.cruds system/Patient.rs",
                       "--jwks", str(jwks_file), "--study", "AD-MSC-01", "--study", "AD-MSC-02", "--deidentified",
                       "--json")
    assert code == 0
    registered = json.loads(out)
    assert registered["name"] == "Seoul EHR" and registered["scope"] == "system/Observation.cruds system/Patient.rs"
    assert registered["studies"] == ["AD-MSC-01", "AD-MSC-02"] and registered["deidentified"] is True
    stored = get_client(db, registered["client_id"])
    assert stored is not None and len(stored.jwks["keys"]) == 2 and not stored.disabled


def test_add_with_a_jwks_url_and_plain_output(cli, db):
    code, out, _ = cli("clients", "add", "portal", "--scope", "system/*.rs", "--jwks-url",
                       "https://portal.example.org/jwks.json")
    assert code == 0 and "client_id" in out and "every study" in out
    client_id = out.split("client_id ")[1].split()[0]
    assert get_client(db, client_id).jwks_url == "https://portal.example.org/jwks.json"


def test_list_and_disable(cli, jwks_file):
    _, out, _ = cli("clients", "add", "a", "--scope", "system/Observation.rs", "--jwks", str(jwks_file), "--json")
    client_id = json.loads(out)["client_id"]
    cli("clients", "add", "b", "--scope", "system/Patient.rs", "--jwks", str(jwks_file))
    code, out, _ = cli("clients", "list", "--json")
    assert code == 0 and [c["name"] for c in json.loads(out)] == ["a", "b"]
    code, out, _ = cli("clients", "disable", client_id)
    assert code == 0 and "disabled" in out
    _, out, _ = cli("clients", "list")
    line = next(line for line in out.splitlines() if line.startswith(client_id))
    assert "disabled" in line
    assert [c["disabled"] for c in json.loads(cli("clients", "list", "--json")[1])] == [True, False]


def test_list_with_no_clients(cli):
    code, out, _ = cli("clients", "list")
    assert code == 0 and "no clients" in out
    assert json.loads(cli("clients", "list", "--json")[1]) == []


def test_rotate_keys(cli, db):
    code, out, _ = cli("clients", "rotate-keys")
    assert code == 0 and "new signing key" in out
    code, out2, _ = cli("clients", "rotate-keys")
    assert code == 0 and out2 != out
    from sqlalchemy import text
    with db.connect() as conn:
        rows = conn.execute(text("SELECT retired_at IS NULL FROM auth_signing_key")).scalars().all()
    assert sorted(rows) == [False, True]


@pytest.mark.parametrize("args, message", [
    (("--scope", "system/Observation.xyz"), "unsupported scope"),
    (("--scope", "patient/Observation.rs"), "unsupported scope"),
    (("--scope", "system/Observaton.rs"), "no resource type"),
    (("--scope", "system/Observation.rs", "--jwks", "/nonexistent/file.json"), "cannot read the JWKS file"),
    (("--scope", "system/Observation.rs", "--jwks", "{bad}"), "not JSON"),
    (("--scope", "system/Observation.rs", "--jwks", "{private}"), "private key material"),
    (("--scope", "system/Observation.rs", "--jwks", "{no_kid}"), "no kid"),
    (("--scope", "system/Observation.rs"), "exactly one of --jwks"),
    (("--scope", "system/Observation.rs", "--jwks", "{good}", "--jwks-url", "https://x.example/j"), "exactly one"),
])
def test_add_refuses_with_a_message_not_a_traceback(cli, tmp_path, args, message):
    key = new_key("ES384")
    files = {"bad": "{not json", "private": json.dumps({"keys": [dict(key.as_dict(private=True))]}),
             "no_kid": json.dumps({"keys": [{k: v for k, v in key.as_dict(private=False).items() if k != "kid"}]}),
             "good": json.dumps(public_jwks(key))}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(content)
    args = tuple(str(paths[a[1:-1]]) if a.startswith("{") else a for a in args)
    args = args if "--jwks" in args or "--jwks-url" in args or "exactly" in message else \
        (*args, "--jwks", str(paths["good"]))
    code, out, err = cli("clients", "add", "x", *args)
    assert code == 1, out
    assert message in err and "Traceback" not in err + out


def test_disable_an_unknown_client(cli):
    code, _, err = cli("clients", "disable", "no-such-client")
    assert code == 1 and "no client with id 'no-such-client'" in err


def test_an_unmigrated_database_gets_a_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["clients", "list"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1 and "trial-fhir migrate" in result.stderr


def test_client_ids_can_be_typed_as_arguments():
    from service.auth.clients import new_client_id
    ids = {new_client_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(i[0].isalnum() and len(i) == 24 for i in ids)
