"""Delivery over HTTP to a real local receiver: handshake, events in order, signatures, payloads, filters."""

from datetime import datetime

from standardwebhooks.webhooks import Webhook

from tests.factories import created, enrol, observation
from tests.subscription.conftest import SECRET, topic_subscription


def active(client, receiver, body) -> str:
    sid = created(client.post("/fhir/Subscription", json=body))["id"]
    receiver.wait_for(lambda: client.get(f"/fhir/Subscription/{sid}").json()["status"] == "active")
    return sid


def test_a_new_subscription_is_handshaken_then_active_and_its_secret_never_shown(client, receiver):
    posted = client.post("/fhir/Subscription", json=topic_subscription(receiver.url, "measurement",
                                                                        headers=["X-Desk: safety"]))
    assert posted.status_code == 201, posted.text
    assert posted.json()["status"] == "requested"
    assert "whsec_" not in posted.text
    sid = posted.json()["id"]
    handshake = receiver.wait_for(lambda: [r for r in receiver.received if r.kind == "handshake"])[0]
    assert handshake.subscription == sid
    assert handshake.headers["x-desk"] == "safety"
    assert handshake.bundle["type"] == "history"
    receiver.wait_for(lambda: client.get(f"/fhir/Subscription/{sid}").json()["status"] == "active")
    read = client.get(f"/fhir/Subscription/{sid}")
    assert "whsec_" not in read.text and "subscription-secret" not in read.text
    history = client.get(f"/fhir/Subscription/{sid}/_history")
    assert "whsec_" not in history.text


def test_measurements_are_delivered_in_order_signed_with_the_full_resource(client, receiver):
    ids = enrol(client)
    sid = active(client, receiver, topic_subscription(receiver.url, "measurement"))
    obs = [created(client.post("/fhir/Observation", json=observation(ids["patient"], value=v)))["id"]
           for v in (10.0, 11.0, 12.0)]
    got = receiver.wait_for(lambda: sum(len(r.numbers) for r in receiver.notifications(sid)) >= 3 and
                            receiver.notifications(sid))
    numbers = [n for r in got for n in r.numbers]
    assert numbers == [1, 2, 3]
    focus = [e["resource"]["id"] for r in got for e in r.bundle["entry"][1:]]
    assert focus == obs
    first = got[0]
    assert first.bundle["entry"][0]["resource"]["resourceType"] == "Parameters"
    assert first.param("topic")["valueCanonical"].endswith("/measurement")
    # the Standard Webhooks signature verifies with the subscription's secret (and fails with another)
    Webhook(SECRET).verify(first.body, first.headers)
    assert first.headers["webhook-id"]
    assert datetime.now().timestamp() - int(first.headers["webhook-timestamp"]) < 60
