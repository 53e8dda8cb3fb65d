"""`python -m service` serves `service.main:app` over real HTTP, configured from the environment; `serve` refuses
to run without access control on an address other machines can reach (issue 10)."""

import json
import os
import socket
import subprocess
import sys

import httpx
import pytest
from typer.testing import CliRunner

from service import cli
from service.ops.logs import uvicorn_log_config
from service.settings import Settings, get_settings
from tests.assertions import wait_until_healthy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_m_service_serves_the_app_on_the_configured_database(database_url, tmp_path):
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "TRIAL_FHIR_EXPORT_DIR": str(tmp_path / "export"),
           "TRIAL_FHIR_AUTH": "off"}  # on loopback: allowed, with a warning
    proc = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, proc)
        created = httpx.post(f"{base}/fhir/Patient", json={"resourceType": "Patient", "gender": "other"},
                             headers={"Content-Type": "application/fhir+json"})
        assert created.status_code == 201
        assert created.headers["location"].startswith(f"{base}/fhir/Patient/")
        assert httpx.get(f"{base}/fhir/metadata").json()["resourceType"] == "CapabilityStatement"
        assert httpx.get(f"{base}/docs").status_code == 200
        found = httpx.get(f"{base}/fhir/Patient?identifier=urn:oid:1.2.3|MRN-SERVE-SECRET&_count=5",
                          headers={"Authorization": "Bearer serve-test-token"})
        assert found.status_code == 200
        assert "server" not in found.headers  # no "server: uvicorn"
        assert found.headers["x-content-type-options"] == "nosniff" and found.headers["cache-control"] == "no-store"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    output = proc.stdout.read().decode()
    assert "access control is OFF" in output
    # every log line is JSON; the request log's line for the search has its route template, not its query
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert lines and all({"timestamp", "level", "logger", "event"} <= set(line) for line in lines)
    assert any(line["logger"] == "trial_fhir.request" and line["method"] == "GET" and line["route"] == "/fhir/Patient"
               and line["status"] == 200 and line["request_id"] for line in lines), output
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's own lines too
    assert "MRN-SERVE-SECRET" not in output and "serve-test-token" not in output


def test_python_m_service_refuses_to_serve_every_interface_without_access_control(tmp_path):
    env = {**os.environ, "TRIAL_FHIR_AUTH": "off", "DATABASE_URL": f"sqlite:///{tmp_path}/never.db"}
    env.pop("TRIAL_FHIR_ALLOW_ANONYMOUS", None)
    done = subprocess.run([sys.executable, "-m", "service", "--host", "0.0.0.0", "--port", str(free_port())],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "refusing to serve 0.0.0.0 with TRIAL_FHIR_AUTH=off" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "never.db").exists()


# --- the decision and the command, without binding a port -----------------------------------------------------

@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.53", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("fhir.example.org", False), ("", False),
])
def test_is_loopback(host, loopback):
    assert cli.is_loopback(host) is loopback


@pytest.mark.parametrize(("auth", "host", "allow_anonymous", "refused"), [
    ("off", "0.0.0.0", False, True),
    ("off", "10.1.2.3", False, True),
    ("off", "0.0.0.0", True, False),  # said on purpose: a gateway in front does the access control
    ("off", "127.0.0.1", False, False),
    ("smart", "0.0.0.0", False, False),
])
def test_anonymous_refusal(auth, host, allow_anonymous, refused):
    settings = Settings(auth=auth, allow_anonymous=allow_anonymous, _env_file=None)
    assert (cli.anonymous_refusal(settings, host) is not None) is refused


@pytest.fixture
def run_serve(monkeypatch, tmp_path):
    """`run_serve(*args, **env)`: the `serve` command's result and the uvicorn.run call it made (None when it made
    none); nothing is bound. The environment is put back afterwards (serve writes to it, for the app's workers)."""
    import uvicorn

    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    saved = dict(os.environ)  # (monkeypatch.delenv of an unset name would not unset what serve sets)
    for name in ("TRIAL_FHIR_AUTH", "TRIAL_FHIR_ALLOW_ANONYMOUS", "TRIAL_FHIR_HOST", "TRIAL_FHIR_LOAD_DEMO_ON_STARTUP"):
        os.environ.pop(name, None)
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append({"app": app, **kwargs}))

    def run(*args: str, **env: str):
        calls.clear()
        os.environ.update(env)
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(cli.app, ["serve", *args])
        finally:
            get_settings.cache_clear()
        return result, (calls[0] if calls else None)

    try:
        yield run
    finally:
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


def test_serve_refuses_auth_off_on_a_public_address(run_serve):
    result, started = run_serve("--host", "0.0.0.0", TRIAL_FHIR_AUTH="off")
    assert result.exit_code == 1 and started is None
    assert "refusing to serve 0.0.0.0 with TRIAL_FHIR_AUTH=off" in result.output
    result, started = run_serve(TRIAL_FHIR_AUTH="off", TRIAL_FHIR_HOST="0.0.0.0")  # the Dockerfile's way
    assert result.exit_code == 1 and started is None


def test_serve_runs_auth_off_when_anonymous_access_is_allowed_and_warns(run_serve):
    result, started = run_serve("--host", "0.0.0.0", TRIAL_FHIR_AUTH="off", TRIAL_FHIR_ALLOW_ANONYMOUS="true")
    assert result.exit_code == 0, result.output
    assert started is not None and started["host"] == "0.0.0.0"
    assert "WARNING: access control is OFF" in result.output


def test_serve_with_access_control_binds_anywhere_without_server_header_or_uvicorn_proxy_headers(run_serve):
    result, started = run_serve("--host", "0.0.0.0", "--port", "8123", TRIAL_FHIR_AUTH="smart")
    assert result.exit_code == 0, result.output
    assert started == {"app": "service.main:app", "host": "0.0.0.0", "port": 8123, "workers": 1, "log_level": "info",
                       "server_header": False, "proxy_headers": False,
                       "http": "service.api.read_timeouts:TimedHttpToolsProtocol",  # header timeout and caps
                       # uvicorn's access log gives way to the request log; its lines and the app's are JSON
                       "access_log": False, "log_config": uvicorn_log_config("json")}
    assert "access control is OFF" not in result.output


def test_serve_demo_runs_without_access_control_on_loopback_and_says_so(run_serve):
    result, started = run_serve("--demo")
    assert result.exit_code == 0, result.output
    assert started is not None and started["host"] == "127.0.0.1"
    assert os.environ["TRIAL_FHIR_AUTH"] == "off" and os.environ["TRIAL_FHIR_LOAD_DEMO_ON_STARTUP"] == "true"
    assert "access control is OFF" in result.output and "demo" in result.output


def test_serve_demo_keeps_an_explicit_auth_setting(run_serve):
    result, started = run_serve("--demo", TRIAL_FHIR_AUTH="smart")
    assert result.exit_code == 0 and started is not None
    assert os.environ["TRIAL_FHIR_AUTH"] == "smart" and "access control is OFF" not in result.output


def test_serve_demo_on_a_public_address_is_refused_too(run_serve):
    result, started = run_serve("--demo", "--host", "0.0.0.0")
    assert result.exit_code == 1 and started is None
