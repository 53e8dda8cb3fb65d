"""The README's "Getting started" fhirpy block, run as written against the demo trial over real HTTP: the snippet a
portal developer copies must work."""

import re
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from service.main import create_app

README = Path(__file__).resolve().parents[2] / "README.md"


def fhirpy_block() -> str:
    section = README.read_text().split("## Getting started", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1 and "SyncFHIRClient" in blocks[0]
    return blocks[0]


@pytest.fixture
def demo_base(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(settings.model_copy(update={"load_demo_on_startup": True}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_the_readme_fhirpy_snippet_runs_against_the_demo_trial(demo_base, capsys):
    code = fhirpy_block().replace("http://127.0.0.1:8000", demo_base)
    scope: dict = {}
    exec(compile(code, "README.md (Getting started)", "exec"), scope)
    assert scope["study"].id and "NCT01927705" in str(scope["study"]["identifier"])
    assert len(scope["week_12"]) > 20  # the demo's subjects seen at week 12 (more than one page of fhirpy's default)
    assert all(o["code"]["coding"][0]["code"] == "EASI" for o in scope["week_12"])
    assert scope["patient"].id  # created
    printed = capsys.readouterr().out
    assert "EASI scores at week 12, median" in printed
