"""Failed deliveries: retries honouring Retry-After, error after N failures, resume on re-enable, a failed handshake;
and what a Subscription may not say (422/400 naming each element)."""

import time

import pytest

from fhir_mappings.subscription import SECRET_URL
from tests.factories import created, enrol, observation
from tests.subscription.conftest import topic_subscription
from tests.subscription.test_delivery import active


@pytest.fixture
def settings(settings):
    """Retry-After honoured up to 5 s here (the back-off itself starts at 0.05 s)."""
    return settings.model_copy(update={"subscription_backoff_max_s": 5.0})


def status_of(client, sid) -> dict:
    params = client.get(f"/fhir/Subscription/{sid}/$status").json()["entry"][0]["resource"]["parameter"]
    return {p["name"]: p.get("valueCode") or p.get("valueString") or p.get("valueCodeableConcept") for p in params
            if p["name"] != "subscription"}


def test_a_failed_handshake_puts_the_subscription_in_error_with_the_reason(client, receiver):
    receiver.answer = lambda r: (500, {})
    sid = created(client.post("/fhir/Subscription", json=topic_subscription(receiver.url, "measurement")))["id"]
    receiver.wait_for(lambda: client.get(f"/fhir/Subscription/{sid}").json()["status"] == "error")
    stored = client.get(f"/fhir/Subscription/{sid}").json()
    assert "handshake failed" in stored["error"] and "500" in stored["error"]
    assert "handshake failed" in status_of(client, sid)["error"]["text"]


def test_a_refused_delivery_is_retried_after_retry_after_then_delivered_once(client, receiver):
    ids = enrol(client)
    sid = active(client, receiver, topic_subscription(receiver.url, "measurement"))
    refusals = []

    def answer(got):
        if got.kind == "event-notification" and len(refusals) < 1:
            refusals.append(time.monotonic())
            return 503, {"Retry-After": "1"}
        return 200, {}
    receiver.answer = answer
    created(client.post("/fhir/Observation", json=observation(ids["patient"])))
    got = receiver.wait_for(lambda: receiver.notifications(sid))
    assert len(refusals) == 1
    # the endpoint asked for 1 s: not retried sooner (the back-off alone would have been ~0.05 s)
    delivered_at = time.monotonic()
    assert delivered_at - refusals[0] >= 0.9
    assert [n for r in got for n in r.numbers] == [1]
    assert status_of(client, sid)["status"] == "active"


def test_after_n_failures_error_and_re_enabled_it_resumes_at_the_first_undelivered_event(client, receiver):
    ids = enrol(client)
    sid = active(client, receiver, topic_subscription(receiver.url, "measurement", max_count=10))
    created(client.post("/fhir/Observation", json=observation(ids["patient"], value=1.0)))
    receiver.wait_for(lambda: receiver.notifications(sid))
    receiver.answer = lambda r: (500, {}) if r.kind == "event-notification" else (200, {})
    created(client.post("/fhir/Observation", json=observation(ids["patient"], value=2.0)))
    receiver.wait_for(lambda: client.get(f"/fhir/Subscription/{sid}").json()["status"] == "error")
    assert "3 deliveries failed" in client.get(f"/fhir/Subscription/{sid}").json()["error"]
    # events keep coming while in error, and none is lost
    created(client.post("/fhir/Observation", json=observation(ids["patient"], value=3.0)))
    assert status_of(client, sid)["events-since-subscription-start"] == "3"
    receiver.answer = lambda r: (200, {})
    receiver.received.clear()
    current = client.get(f"/fhir/Subscription/{sid}").json()
    again = {k: v for k, v in current.items() if k not in ("meta", "error")}
    again["status"] = "requested"
    assert client.put(f"/fhir/Subscription/{sid}", json=again).status_code == 200
    got = receiver.wait_for(lambda: receiver.notifications(sid))
    assert got[0].numbers == [2, 3]
    assert client.get(f"/fhir/Subscription/{sid}").json()["status"] == "active"
    assert [r.kind for r in receiver.received][0] == "handshake"


def test_what_a_subscription_may_not_say_is_422_naming_each_element(client):
    body = topic_subscription("http://example.org/hook", "measurement", "Observation?colour=red")
    body["channel"]["type"] = "websocket"
    answer = client.post("/fhir/Subscription", json=body)
    assert answer.status_code == 422, answer.text
    where = {e for i in answer.json()["issue"] for e in i.get("expression", [])}
    assert {"Subscription.channel.type", "Subscription.channel.endpoint", "Subscription.criteria.extension[0]"} <= where
    unknown = topic_subscription("https://example.org/hook", "measurement")
    unknown["criteria"] = "https://example.org/SubscriptionTopic/nothing"
    assert client.post("/fhir/Subscription", json=unknown).json()["issue"][0]["expression"] == ["Subscription.criteria"]
    no_secret = topic_subscription("https://example.org/hook", "measurement", secret=None)
    refused = client.post("/fhir/Subscription", json=no_secret)
    assert refused.status_code == 422 and refused.json()["issue"][0]["expression"] == ["Subscription.channel"]
    weak = topic_subscription("https://example.org/hook", "measurement", secret="whsec_c2hvcnQ=")
    assert client.post("/fhir/Subscription", json=weak).status_code == 422
    server_status = topic_subscription("https://example.org/hook", "measurement", status="error")
    assert client.post("/fhir/Subscription", json=server_status).json()["issue"][0]["expression"] == [
        "Subscription.status"]
    assert client.get("/fhir/Subscription").json()["total"] == 0  # nothing stored


def test_the_secret_can_be_rotated_and_an_update_without_it_keeps_it(client, receiver):
    from standardwebhooks.webhooks import Webhook
    ids = enrol(client)
    sid = active(client, receiver, topic_subscription(receiver.url, "measurement"))
    current = client.get(f"/fhir/Subscription/{sid}").json()
    new = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="
    rotated = {k: v for k, v in current.items() if k != "meta"}
    rotated["channel"] = {**current["channel"], "extension": [{"url": SECRET_URL, "valueString": new}]}
    assert client.put(f"/fhir/Subscription/{sid}", json=rotated).status_code == 200
    assert "whsec_" not in client.get(f"/fhir/Subscription/{sid}").text
    created(client.post("/fhir/Observation", json=observation(ids["patient"])))
    got = receiver.wait_for(lambda: receiver.notifications(sid))[0]
    Webhook(new).verify(got.body, got.headers)
