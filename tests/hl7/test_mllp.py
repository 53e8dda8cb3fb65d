"""The MLLP listener over a real socket: framing, the size cap, several messages on one connection, garbage, and
the same message sent twice at once (one stored)."""

import socket
import threading

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.factories import MRN, enrol
from tests.hl7.messages import errs, msa, obx, oru

VT, FS_CR = b"\x0b", b"\x1c\r"


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(database_url=database_url, export_dir=tmp_path / "export", auth="off", export_worker=False,
                    hl7_authorities={"SNUH": MRN}, mllp_port=0, hl7_max_message_bytes=64 * 1024, _env_file=None)


@pytest.fixture
def listening(client) -> tuple[TestClient, int]:
    """The app (its lifespan running the listener beside it, on its loop) and the port the listener bound."""
    return client, client.app.state.mllp.server.sockets[0].getsockname()[1]


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=20)


def read_frame(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(FS_CR):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    assert data.startswith(VT)
    return data[1:-2].decode()


def exchange(port: int, message: str | bytes) -> str:
    with connect(port) as sock:
        sock.sendall(VT + (message.encode() if isinstance(message, str) else message) + FS_CR)
        return read_frame(sock)


def test_a_framed_message_is_stored_and_acked(listening):
    client, port = listening
    ids = enrol(client, mrn="MRN-1")
    ack = exchange(port, oru("MRN-1"))
    assert msa(ack) == ["AA", "MSG00001"]
    assert client.get("/fhir/Observation", params={"subject": ids["patient"]}).json()["total"] == 1
    # the audit names the peer's address and the listener's identity
    events = client.get("/fhir/AuditEvent", params={"subtype": "transaction"}).json()["entry"]
    agents = events[0]["resource"]["agent"]
    assert any(a.get("network", {}).get("address") == "127.0.0.1" for a in agents)


def test_two_messages_on_one_connection_and_split_writes(listening):
    client, port = listening
    enrol(client, mrn="MRN-1")
    first, second = oru("MRN-1", control_id="M1").encode(), oru("MRN-1", [obx(1, code="711-2^Eos^LN",
                                                                            unit="10*3/uL^^UCUM", value="0.4")],
                                                                   control_id="M2").encode()
    with connect(port) as sock:
        frame = VT + first + FS_CR + VT + second + FS_CR
        sock.sendall(frame[:7])  # a frame may arrive in pieces
        sock.sendall(frame[7:])
        assert msa(read_frame(sock)) == ["AA", "M1"]
        assert msa(read_frame(sock)) == ["AA", "M2"]
    assert client.get("/fhir/Observation").json()["total"] == 2


def test_garbage_is_answered_ar_and_the_connection_keeps_working(listening):
    client, port = listening
    enrol(client, mrn="MRN-1")
    with connect(port) as sock:
        sock.sendall(b"hello" + FS_CR)  # no <VT>: not a frame
        assert msa(read_frame(sock))[0] == "AR"
        sock.sendall(VT + b"\x00\xff not hl7" + FS_CR)  # a frame, not HL7
        ack = read_frame(sock)
        assert msa(ack)[0] == "AR" and errs(ack)
        sock.sendall(b"noise" + VT + oru("MRN-1").encode() + FS_CR)  # bytes before <VT> are dropped
        assert msa(read_frame(sock))[0] == "AA"


def test_an_oversize_frame_is_ar_and_closes_the_connection_but_not_the_listener(listening):
    client, port = listening
    enrol(client, mrn="MRN-1")
    with connect(port) as sock:
        sock.sendall(VT + b"MSH|" + b"x" * (100 * 1024) + FS_CR)
        ack = read_frame(sock)
        assert msa(ack)[0] == "AR" and "exceeds the limit" in ack
        assert sock.recv(10) == b""  # closed
    assert msa(exchange(port, oru("MRN-1")))[0] == "AA"


def test_a_peer_that_hangs_up_mid_frame_does_not_stop_the_listener(listening):
    client, port = listening
    enrol(client, mrn="MRN-1")
    with connect(port) as sock:
        sock.sendall(VT + oru("MRN-1").encode()[:20])
    assert msa(exchange(port, oru("MRN-1")))[0] == "AA"


def test_the_same_message_sent_twice_at_once_is_stored_once(listening):
    client, port = listening
    ids = enrol(client, mrn="MRN-1")
    message = oru("MRN-1", [obx(1), obx(2, code="711-2^Eos^LN", unit="10*3/uL^^UCUM", value="0.4")])
    acks: list[str] = []
    barrier = threading.Barrier(4)

    def send() -> None:
        with connect(port) as sock:
            barrier.wait()
            sock.sendall(VT + message.encode() + FS_CR)
            acks.append(read_frame(sock))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [msa(a) for a in acks] == [["AA", "MSG00001"]] * 4
    found = client.get("/fhir/Observation", params={"subject": ids["patient"]}).json()
    assert found["total"] == 2
    assert {e["resource"]["meta"]["versionId"] for e in found["entry"]} == {"1"}
    assert client.get("/fhir/Provenance").json()["total"] == 1
