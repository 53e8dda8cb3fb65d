"""Slow clients are cut off (issue 12 §2): headers and bodies must arrive in bounded time, headers are capped.

Over real sockets against a real uvicorn subprocess (the way `trial-fhir serve` runs it, and plain uvicorn without
the protocol class, which keeps the ASGI-level body timeout), plus pure unit tests of the ASGI middleware.
Nothing here measures speed: the settings are a few seconds, and each test only asserts what happened (closed,
408, 431, 200/201), with socket timeouts far above the settings so a slow machine cannot make them fail."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.api.read_timeouts import PROTOCOL_PATH, BodyReadTimeout
from tests.assertions import wait_until_healthy

ROOT = Path(__file__).resolve().parents[2]
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
PATIENT = json.dumps({"resourceType": "Patient", "gender": "other"}).encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(database_url: str, tmp_path: Path, protocol: bool):
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "TRIAL_FHIR_AUTH": "off",
           "TRIAL_FHIR_EXPORT_DIR": str(tmp_path / "export"), "TRIAL_FHIR_EXPORT_WORKER": "false",
           "TRIAL_FHIR_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S), "TRIAL_FHIR_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
           "TRIAL_FHIR_MAX_HEADER_COUNT": "50", "TRIAL_FHIR_MAX_HEADER_BYTES": "8192"}
    command = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning"]
    if protocol:
        command += ["--http", PROTOCOL_PATH]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(base, proc)
    return proc, port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app as `trial-fhir serve` runs it: uvicorn with TimedHttpToolsProtocol (SQLite: socket-level tests)."""
    tmp = tmp_path_factory.mktemp("timeouts")
    proc, port = _serve(f"sqlite:///{tmp}/t.db", tmp, protocol=True)
    yield port
    proc.terminate()
    proc.wait(20)


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    """Plain `uvicorn service.main:app`, no protocol class: only the ASGI-level protections."""
    tmp = tmp_path_factory.mktemp("timeouts-plain")
    proc, port = _serve(f"sqlite:///{tmp}/t.db", tmp, protocol=False)
    yield port
    proc.terminate()
    proc.wait(20)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(60)  # far above the settings: only a server that never acts fails a test
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (headers and Content-Length bytes of body) of a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    _, headers, _ = _status_and_body(head + b"\r\n\r\n")
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _status_and_body(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _patients(port: int) -> int:
    found = httpx.get(f"http://127.0.0.1:{port}/fhir/Patient?_summary=count", timeout=30)
    assert found.status_code == 200
    return found.json()["total"]


# -- headers ------------------------------------------------------------------------------------------------

def test_a_connection_that_sends_nothing_is_closed(server):
    with _connect(server) as sock:
        assert _read_all(sock) == b""  # closed by the server, no answer


def test_stalled_headers_are_closed_while_other_connections_are_served(server):
    with _connect(server) as stalled:
        stalled.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nAccept: application/fhir+json\r\n")
        # meanwhile another client is answered, on a new connection
        assert httpx.get(f"http://127.0.0.1:{server}/fhir/metadata", timeout=30).status_code == 200
        assert _read_all(stalled) == b""


def test_stalled_headers_on_a_kept_alive_connection_are_closed(server):
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = _read_response(sock)
        assert first.startswith(b"HTTP/1.1 200") and b'{"status":"ok","version":' in first
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # the next request starts, then stalls
        assert _read_all(sock) == b""


def test_headers_sent_slowly_but_within_the_limit_are_answered(server):
    request = b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nAccept: application/fhir+json\r\nConnection: close\r\n\r\n"
    pieces = [request[i:i + 20] for i in range(0, len(request), 20)]
    with _connect(server) as sock:
        for piece in pieces:  # about 0.5 s in all, against a 2 s limit
            sock.sendall(piece)
            time.sleep(0.5 / len(pieces))
        status, _, body = _status_and_body(_read_all(sock))
    assert status == 200 and json.loads(body)["resourceType"] == "CapabilityStatement"


@pytest.mark.parametrize("headers", [
    b"".join(b"X-H%d: v\r\n" % i for i in range(60)),  # more than 50 headers
    b"X-Big: " + b"a" * 9000 + b"\r\n",                # one header over 8 KiB
], ids=["too-many", "too-large"])
def test_too_many_or_too_large_headers_get_431_and_a_closed_connection(server, headers):
    before = _patients(server)
    with _connect(server) as sock:
        sock.sendall(b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n"
                     b"Content-Length: %d\r\n" % len(PATIENT) + headers + b"\r\n" + PATIENT)
        status, response_headers, body = _status_and_body(_read_all(sock))
    assert status == 431
    assert response_headers["connection"] == "close"
    assert json.loads(body)["resourceType"] == "OperationOutcome"
    assert _patients(server) == before


@pytest.mark.parametrize("framing", [
    b"Content-Length: 99999999999999999999\r\n",          # larger than any body
    b"Content-Length: \xc2\xb2\r\n",                       # a superscript two
    b"Content-Length: 5\r\nContent-Length: 500\r\n",      # two that disagree
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: bogus\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
], ids=["huge", "superscript", "two", "negative", "bogus-encoding", "chunked-and-length"])
def test_malformed_framing_is_a_4xx_and_writes_nothing(server, framing):
    before = _patients(server)
    with _connect(server) as sock:
        sock.sendall(b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n"
                     + framing + b"\r\n" + PATIENT)
        raw = _read_all(sock)
    if raw:  # answered (or just closed: also fine, nothing was applied)
        status, _, _ = _status_and_body(raw)
        assert 400 <= status < 500, raw[:300]
    assert _patients(server) == before


# -- bodies -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["server", "plain_server"])
def test_a_stalled_body_gets_408_and_nothing_is_written(which, request):
    port = request.getfixturevalue(which)
    before = _patients(port)
    with _connect(port) as sock:
        sock.sendall(b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(PATIENT) + PATIENT[:10])
        # meanwhile another client is answered
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
        status, headers, body = _status_and_body(_read_all(sock))
    assert status == 408
    assert headers["connection"] == "close"
    oo = json.loads(body)
    assert oo["resourceType"] == "OperationOutcome" and oo["issue"][0]["code"] == "timeout"
    assert _patients(port) == before


def test_a_body_sent_slowly_but_within_the_limit_is_applied(server):
    before = _patients(server)
    with _connect(server) as sock:
        sock.sendall(b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(PATIENT))
        for i in range(0, len(PATIENT), 8):  # about 0.6 s in all, against a 3 s limit
            sock.sendall(PATIENT[i:i + 8])
            time.sleep(0.1)
        status, _, body = _status_and_body(_read_all(sock))
    assert status == 201 and json.loads(body)["resourceType"] == "Patient"
    assert _patients(server) == before + 1


# -- the middleware alone -----------------------------------------------------------------------------------

async def _echo_app(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RuntimeError("client disconnected")  # what Starlette does (ClientDisconnect)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _run(app, messages, forever_after: bool):
    """Drive `app` with `messages`, then a receive that never returns (or a disconnect); collect what it sends."""
    queue = list(messages)
    sent = []

    async def receive():
        if queue:
            return queue.pop(0)
        if forever_after:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "POST", "path": "/fhir/Patient"}, receive, send))
    return sent


def test_middleware_answers_408_when_the_body_stops_and_drops_what_the_app_sends_after():
    sent = _run(BodyReadTimeout(_echo_app, 0.2), [{"type": "http.request", "body": b"{", "more_body": True}],
                forever_after=True)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["issue"][0]["code"] == "timeout"


def test_middleware_passes_a_complete_body_and_does_not_time_the_wait_for_a_disconnect():
    async def streaming_app(scope, receive, send):
        await _echo_app(scope, receive, send)
        assert (await receive())["type"] == "http.disconnect"  # waits past the deadline: no 408 for that

    async def late_disconnect_receive_app(scope, receive, send):
        await BodyReadTimeout(streaming_app, 0.1)(scope, receive, send)

    messages = [{"type": "http.request", "body": b"ab", "more_body": True},
                {"type": "http.request", "body": b"c", "more_body": False}]
    queue = list(messages)
    sent = []

    async def receive():
        if queue:
            return queue.pop(0)
        await asyncio.sleep(0.3)  # longer than the timeout
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(late_disconnect_receive_app({"type": "http", "method": "POST", "path": "/x"}, receive, send))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"abc"


def test_middleware_leaves_other_scopes_alone():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(BodyReadTimeout(app, 0.01)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]
