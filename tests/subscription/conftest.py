"""A real local receiver (a tiny HTTP server in a thread) and helpers for the subscription tests."""

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fhir_mappings.subscription import CONTENT_URL, FILTER_URL, SECRET_URL, TOPIC_BASE
from service.settings import Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw3qW8ZGYqNwE="


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int = 0  # what the receiver answered

    @property
    def bundle(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def parameters(self) -> dict[str, Any]:
        return self.bundle["entry"][0]["resource"]

    def param(self, name: str) -> Any:
        found = [p for p in self.parameters["parameter"] if p["name"] == name]
        return found[0] if found else None

    @property
    def kind(self) -> str:
        return self.param("type")["valueCode"]

    @property
    def subscription(self) -> str:
        return self.param("subscription")["valueReference"]["reference"].split("/")[-1]

    @property
    def numbers(self) -> list[int]:
        return [int(part["valueString"]) for p in self.parameters["parameter"] if p["name"] == "notification-event"
                for part in p["part"] if part["name"] == "event-number"]


@dataclass
class Receiver:
    """Records every POST; answers what `answer` says (status, headers) for each, 200 by default."""

    url: str
    received: list[Received] = field(default_factory=list)
    answer: Callable[[Received], tuple[int, dict[str, str]]] = lambda r: (200, {})
    delay_s: float = 0.0
    in_flight: dict[str, int] = field(default_factory=dict)
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def notifications(self, subscription: str | None = None, *, refused: bool = False) -> list[Received]:
        """The event notifications received (acknowledged ones; `refused`: those answered with an error)."""
        return [r for r in list(self.received) if r.kind == "event-notification"
                and (subscription is None or r.subscription == subscription) and (r.status >= 300) == refused]

    def wait_for(self, check: Callable[[], Any], timeout: float = 40.0) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = check()
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"not received in {timeout} s: {[(r.kind, r.numbers) for r in self.received]}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            me = state["r"]
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            got = Received({k.lower(): v for k, v in self.headers.items()}, body)
            sub = got.subscription
            with me.lock:
                me.in_flight[sub] = me.in_flight.get(sub, 0) + 1
                me.most_in_flight = max(me.most_in_flight, me.in_flight[sub])
            try:
                if me.delay_s:
                    time.sleep(me.delay_s)
                status, headers = me.answer(got)
                got.status = status
                with me.lock:
                    me.received.append(got)
            finally:
                with me.lock:
                    me.in_flight[sub] -= 1
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["r"] = Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state["r"]
    server.shutdown()
    server.server_close()


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(database_url=database_url, export_dir=tmp_path / "export", auth="off", _env_file=None,
                    export_worker=False, subscription_allow_http_loopback=True, subscription_poll_s=0.05,
                    subscription_backoff_s=0.05, subscription_backoff_max_s=0.5, subscription_max_failures=3,
                    subscription_timeout_s=2.0, subscription_lease_s=5.0, subscription_cache_s=0.0,
                    subscription_window_check_s=3600.0)


def topic_subscription(endpoint: str, topic: str, *filters: str, content: str = "full-resource",
                       secret: str | None = SECRET, status: str = "requested", heartbeat: int | None = None,
                       max_count: int | None = None, headers: list[str] | None = None) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                               "_payload": {"extension": [{"url": CONTENT_URL, "valueCode": content}]}}
    extensions = []
    if secret:
        extensions.append({"url": SECRET_URL, "valueString": secret})
    if heartbeat:
        extensions.append({"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                                  "backport-heartbeat-period", "valueUnsignedInt": heartbeat})
    if max_count:
        extensions.append({"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                                  "backport-max-count", "valuePositiveInt": max_count})
    if extensions:
        channel["extension"] = extensions
    if headers:
        channel["header"] = headers
    body: dict[str, Any] = {"resourceType": "Subscription", "status": status, "reason": "test",
                            "criteria": TOPIC_BASE + topic, "channel": channel}
    if filters:
        body["_criteria"] = {"extension": [{"url": FILTER_URL, "valueString": f} for f in filters]}
    return body


def classic_subscription(endpoint: str, criteria: str, **kw: Any) -> dict[str, Any]:
    body = topic_subscription(endpoint, "measurement", **kw)
    body["criteria"] = criteria
    return body
