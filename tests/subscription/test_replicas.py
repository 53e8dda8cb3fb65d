"""Nothing lost across restarts and replicas: a sender killed mid-delivery (its lease kept, as a crash leaves it)
is taken over once the lease runs out (at most one duplicate, visible by its event numbers); two app instances on
one database, a sender in each, never deliver one subscription's notifications concurrently, and every event
arrives once, in order."""

import time

from fastapi.testclient import TestClient

from service.main import create_app
from service.subscription.sender import Sender
from tests.factories import created, enrol, observation
from tests.subscription.conftest import topic_subscription
from tests.subscription.test_delivery import active


def acknowledged_numbers(receiver, sid) -> list[int]:
    return [n for r in receiver.notifications(sid) for n in r.numbers]


def test_a_sender_killed_mid_delivery_loses_nothing_and_duplicates_at_most_once(settings, receiver, monkeypatch):
    settings = settings.model_copy(update={"subscription_lease_s": 2.0, "subscription_timeout_s": 0.8,
                                           "subscription_max_count": 2})
    with TestClient(create_app(settings)) as first:
        ids = enrol(first)
        sid = active(first, receiver, topic_subscription(receiver.url, "measurement"))
        receiver.delay_s = 0.3
        for value in range(5):
            created(first.post("/fhir/Observation", json=observation(ids["patient"], value=float(value))))
        receiver.wait_for(lambda: receiver.in_flight.get(sid))  # a notification is on the wire…
        monkeypatch.setattr(Sender, "_release_all", lambda self: None)  # …and the process dies: its lease stays
    monkeypatch.undo()
    receiver.delay_s = 0.0
    killed_at = time.monotonic()
    with TestClient(create_app(settings)) as second:
        receiver.wait_for(lambda: set(acknowledged_numbers(receiver, sid)) >= {1, 2, 3, 4, 5})
        assert time.monotonic() - killed_at < 10
    numbers = acknowledged_numbers(receiver, sid)
    assert sorted(set(numbers)) == [1, 2, 3, 4, 5]  # nothing lost
    assert all(numbers.count(n) <= 2 for n in numbers)  # a duplicate at most once, with its own number
    firsts = sorted(set(numbers), key=numbers.index)
    assert firsts == [1, 2, 3, 4, 5]  # in order
    assert second.get(f"/fhir/Subscription/{sid}").json()["status"] == "active"


def test_two_replicas_never_send_one_subscription_concurrently_and_deliver_each_event_once(settings, receiver):
    receiver.delay_s = 0.02
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        ids = enrol(one)
        subs = [active(one if i % 2 else two, receiver, topic_subscription(receiver.url, "measurement",
                                                                            max_count=3)) for i in range(4)]
        for i in range(24):
            app = one if i % 2 else two
            created(app.post("/fhir/Observation", json=observation(ids["patient"], value=float(i % 70))))
        for sid in subs:
            receiver.wait_for(lambda sid=sid: len(acknowledged_numbers(receiver, sid)) >= 24, timeout=30)
        senders = [one.app.state.subscription_sender, two.app.state.subscription_sender]
        assert all(s.sent for s in senders)  # both replicas delivered
    assert receiver.most_in_flight == 1  # never two notifications of one subscription at once
    for sid in subs:
        assert acknowledged_numbers(receiver, sid) == list(range(1, 25))  # each once, in order
