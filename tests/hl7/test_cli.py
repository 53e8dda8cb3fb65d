"""`trial-fhir mllp`: the listener as its own process, over a real socket, stopped by a signal with its totals."""

import os
import signal
import socket
import subprocess
import sys
import time

from tests.factories import MRN, enrol
from tests.hl7.messages import msa, oru
from tests.hl7.test_mllp import exchange


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mllp_command_listens_answers_and_reports_its_totals(client, database_url):
    enrol(client, mrn="MRN-1")
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "TRIAL_FHIR_AUTH": "off",
           "TRIAL_FHIR_HL7_AUTHORITIES": f'{{"SNUH": "{MRN}"}}', "TRIAL_FHIR_EXPORT_WORKER": "false"}
    proc = subprocess.Popen([sys.executable, "-c", "from service.cli import main; main()", "mllp", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the listener did not open its port"
                time.sleep(0.2)
        assert msa(exchange(port, oru("MRN-1"))) == ["AA", "MSG00001"]
        assert msa(exchange(port, b"junk"))[0] == "AR"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "AA 127.0.0.1" in err and "messages answered: AA 1, AE 0, AR 1" in err
    assert client.get("/fhir/Observation").json()["total"] == 1


def test_mllp_command_refuses_to_run_without_a_client_when_auth_is_on(database_url):
    env = {**os.environ, "DATABASE_URL": database_url, "TRIAL_FHIR_AUTH": "smart"}
    env.pop("TRIAL_FHIR_MLLP_CLIENT", None)
    done = subprocess.run([sys.executable, "-c", "from service.cli import main; main()", "mllp", "--port",
                           str(free_port())], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "TRIAL_FHIR_MLLP_CLIENT must name a registered client" in done.stderr
