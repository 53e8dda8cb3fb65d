"""`python -m service` serves `service.main:app` over real HTTP, configured from the environment."""

import os
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_m_service_serves_the_app_on_the_configured_database(database_url, tmp_path):
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "TRIAL_FHIR_EXPORT_DIR": str(tmp_path / "export"),
           "TRIAL_FHIR_AUTH": "off"}
    proc = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "service did not start"
            time.sleep(0.2)
        created = httpx.post(f"{base}/fhir/Patient", json={"resourceType": "Patient", "gender": "other"},
                             headers={"Content-Type": "application/fhir+json"})
        assert created.status_code == 201
        assert created.headers["location"].startswith(f"{base}/fhir/Patient/")
        assert httpx.get(f"{base}/fhir/metadata").json()["resourceType"] == "CapabilityStatement"
        assert httpx.get(f"{base}/docs").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
