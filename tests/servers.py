"""An app served by a real uvicorn server on a free port of 127.0.0.1, in a thread, for the tests that need a real
HTTP peer (a browser): `with served(app) as base: …`. The app's lifespan is not run again (a TestClient of it,
e.g. the `client` fixture, already started it)."""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(app, timeout_s: float = 20) -> Iterator[str]:
    """The base URL (`http://127.0.0.1:PORT`) of `app` served by uvicorn until the block ends."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped at start-up"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
