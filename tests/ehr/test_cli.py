"""`trial-fhir sources …` and `trial-fhir sync …` through typer's CliRunner, on the test database."""

import json

from joserfc.jwk import RSAKey

from tests.ehr.upstream import EHR, FakeEhr
from tests.factories import MRN, enrol


def test_sources_add_list_remove_and_a_bearer_is_never_printed(cli, tmp_path):
    key = RSAKey.generate_key(2048, private=True)
    (tmp_path / "key.pem").write_bytes(key.as_pem(private=True))
    assert cli("sources", "add", "seoul", "--base", EHR, "--auth", "bearer", "--bearer", "tok-SECRET")[0] == 0
    code, out, _ = cli("sources", "add", "busan", "--base", "https://busan.example.org/fhir", "--auth", "smart",
                       "--token-url", "https://busan.example.org/token", "--client-id", "trial",
                       "--key", str(tmp_path / "key.pem"), "--group", "g1")
    assert code == 0 and "bulk Group/g1" in out
    code, out, _ = cli("sources", "list", "--json")
    listed = {s["name"]: s for s in json.loads(out)}
    assert listed["seoul"]["bearer"] == "***" and "tok-SECRET" not in out
    assert listed["busan"]["auth"] == "smart" and listed["busan"]["key_file"] == str(tmp_path / "key.pem")
    assert listed["busan"]["mode"] == "bulk"
    code, out, _ = cli("sources", "list")
    assert code == 0 and "seoul" in out and "tok-SECRET" not in out
    assert cli("sources", "remove", "seoul")[0] == 0
    code, _, err = cli("sources", "remove", "seoul")
    assert code == 1 and "no source named 'seoul'" in err


def test_sources_add_refuses_what_cannot_work_naming_each_option(cli, tmp_path):
    code, _, err = cli("sources", "add", "bad name", "--base", "ftp://x", "--auth", "smart")
    assert code == 1
    for option in ("NAME", "--base", "--token-url", "--client-id", "--key"):
        assert option in err
    (tmp_path / "public.json").write_text(json.dumps(RSAKey.generate_key(2048).as_dict(private=False)))
    code, _, err = cli("sources", "add", "x", "--base", EHR, "--auth", "smart", "--token-url", f"{EHR}/token",
                       "--client-id", "c", "--key", str(tmp_path / "public.json"))
    assert code == 1 and "--key: cannot use" in err
    code, _, err = cli("sources", "add", "x", "--base", EHR, "--auth", "bearer")
    assert code == 1 and "--bearer" in err


def test_sync_run_with_a_progress_bar_then_status(cli, client):
    ours = enrol(client, mrn="MRN-CLI")
    ehr = FakeEhr()
    ehr.add_patient("up-1", MRN, "MRN-CLI")
    ehr.observation("o1", "up-1")
    ehr.observation("bad", "up-1", value=-1.0)
    assert cli("sources", "add", "ehr", "--base", EHR)[0] == 0
    with ehr.mocked():
        code, out, err = cli("sync", "run")
    assert code == 0, err
    assert "ehr: 2 pulled" in out and "1 created" in out and "1 refused" in out and "1 of 1 patients" in out
    code, out, _ = cli("sync", "status", "ehr", "--json")
    [report] = json.loads(out)
    assert report["status"] == "completed" and report["counts"]["created"] == 1
    assert report["latest_issues"][0]["resource"] == f"{EHR}/Observation/bad"
    code, out, _ = cli("sync", "status")
    assert code == 0 and f"not stored {EHR}/Observation/bad — Observation.valueQuantity.value" in out
    assert ours


def test_sync_run_of_an_unreachable_source_exits_1_with_one_line(cli, engine):
    assert cli("sources", "add", "down", "--base", "http://127.0.0.1:9/fhir")[0] == 0
    code, out, _ = cli("sync", "run", "down")
    assert code == 1 and "down: GET 127.0.0.1:9/fhir/metadata failed: ConnectError" in out
    code, out, _ = cli("sync", "status", "down", "--json")
    assert json.loads(out)[0]["status"] == "failed"
    assert cli("sync", "run", "nothing")[0] == 1
