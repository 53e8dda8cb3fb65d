"""Delivery over HTTP to a real local receiver: handshake, events in order, signatures, payloads, filters."""

from datetime import UTC, datetime

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


def test_filters_pick_the_study_code_and_visit(client, receiver):
    ids = enrol(client)
    other = enrol(client)  # another study
    easi_w4 = active(client, receiver, topic_subscription(
        receiver.url, "measurement", f"Observation?study=ResearchStudy/{ids['study']}&visit=week-4",
        "code=https://trial-fhir.org/CodeSystem/ad-scores|EASI"))
    created(client.post("/fhir/Observation", json=observation(ids["patient"], date="2024-01-10")))  # baseline
    created(client.post("/fhir/Observation", json=observation(other["patient"], date="2024-02-07")))  # other study
    created(client.post("/fhir/Observation", json=observation(ids["patient"], "IGA", 3, date="2024-02-07")))
    wanted = created(client.post("/fhir/Observation", json=observation(ids["patient"], date="2024-02-07")))
    got = receiver.wait_for(lambda: receiver.notifications(easi_w4))
    assert [e["resource"]["id"] for r in got for e in r.bundle["entry"][1:]] == [wanted["id"]]
    assert client.get(f"/fhir/Subscription/{easi_w4}/$status").json()["entry"][0]["resource"]["parameter"][4] == {
        "name": "events-since-subscription-start", "valueString": "1"}


def test_a_correction_is_an_event_and_a_delete_is_not(client, receiver):
    ids = enrol(client)
    sid = active(client, receiver, topic_subscription(receiver.url, "measurement", content="id-only"))
    obs = created(client.post("/fhir/Observation", json=observation(ids["patient"])))
    corrected = {**obs, "status": "corrected", "valueQuantity": {**obs["valueQuantity"], "value": 13.0}}
    assert client.put(f"/fhir/Observation/{obs['id']}", json=corrected).status_code == 200
    assert client.delete(f"/fhir/Observation/{obs['id']}").status_code in (200, 204)
    got = receiver.wait_for(lambda: sum(len(r.numbers) for r in receiver.notifications(sid)) >= 2 and
                            receiver.notifications(sid))
    entries = [e for r in got for e in r.bundle["entry"][1:]]
    assert [e["request"]["method"] for e in entries] == ["POST", "PUT"]
    assert all("resource" not in e for e in entries)  # id-only
    assert client.get(f"/fhir/Subscription/{sid}/$status").json()["entry"][0]["resource"]["parameter"][4][
        "valueString"] == "2"


def test_a_transaction_that_rolls_back_leaves_no_event(client, receiver):
    ids = enrol(client)
    sid = active(client, receiver, topic_subscription(receiver.url, "measurement"))
    good = observation(ids["patient"])
    bad = observation(ids["patient"], value=999)  # EASI above 72: 422
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": good, "request": {"method": "POST", "url": "Observation"}},
        {"resource": bad, "request": {"method": "POST", "url": "Observation"}}]}
    assert client.post("/fhir", json=bundle).status_code >= 400
    bundle["entry"].pop()
    assert client.post("/fhir", json=bundle).status_code == 200
    got = receiver.wait_for(lambda: receiver.notifications(sid))
    assert [n for r in got for n in r.numbers] == [1]
    status = client.get(f"/fhir/Subscription/{sid}/$status").json()["entry"][0]["resource"]
    assert {"name": "events-since-subscription-start", "valueString": "1"} in status["parameter"]


def test_events_replays_past_events_from_a_number(client, receiver):
    ids = enrol(client)
    sid = active(client, receiver, topic_subscription(receiver.url, "measurement"))
    obs = [created(client.post("/fhir/Observation", json=observation(ids["patient"], value=v)))["id"]
           for v in (10.0, 11.0, 12.0)]
    replay = client.get(f"/fhir/Subscription/{sid}/$events", params={"eventsSinceNumber": 2})
    assert replay.status_code == 200, replay.text
    body = replay.json()
    assert body["type"] == "history"
    params = body["entry"][0]["resource"]
    assert {"name": "type", "valueCode": "query-event"} in params["parameter"]
    numbers = [int(part["valueString"]) for p in params["parameter"] if p["name"] == "notification-event"
               for part in p["part"] if part["name"] == "event-number"]
    assert numbers == [2, 3]
    assert [e["resource"]["id"] for e in body["entry"][1:]] == obs[1:]
    assert client.get(f"/fhir/Subscription/{sid}/$events", params={"content": "everything"}).status_code == 400
    assert client.get("/fhir/Subscription/nope/$status").status_code == 404


def test_adverse_event_topics_and_the_serious_one_carries_time_since_onset(client, receiver):
    from tests.factories import adverse_event
    ids = enrol(client)
    every = active(client, receiver, topic_subscription(receiver.url, "adverse-event", "seriousness=non-serious"))
    serious = active(client, receiver, topic_subscription(receiver.url, "serious-adverse-event"))
    mild = created(client.post("/fhir/AdverseEvent", json=adverse_event(ids["patient"], ids["study"])))
    grave = created(client.post("/fhir/AdverseEvent", json=adverse_event(ids["patient"], ids["study"], serious=True,
                                                                         severity="severe")))
    # the non-serious one becomes serious: the desk hears of it then
    worse = {**mild, "seriousness": grave["seriousness"]}
    assert client.put(f"/fhir/AdverseEvent/{mild['id']}", json=worse).status_code == 200
    got = receiver.wait_for(lambda: sum(len(r.numbers) for r in receiver.notifications(serious)) >= 2 and
                            receiver.notifications(serious))
    focus = [e["resource"]["id"] for r in got for e in r.bundle["entry"][1:]]
    assert focus == [grave["id"], mild["id"]]
    event = got[0].param("notification-event")
    onset = event["extension"][0]
    assert onset["url"].endswith("time-since-onset") and onset["valueQuantity"]["code"] == "s"
    assert onset["valueQuantity"]["value"] > 24 * 3600  # onset 2024-01-20: long ago
    non_serious = receiver.wait_for(lambda: receiver.notifications(every))
    assert [e["resource"]["id"] for r in non_serious for e in r.bundle["entry"][1:]] == [mild["id"]]


def test_enrolment_topic_hears_enrolled_and_withdrawn(client, receiver):
    from tests.factories import patient, study, subject
    sid = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    sub = active(client, receiver, topic_subscription(receiver.url, "enrolment", f"study={sid}"))
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    rs = created(client.post("/fhir/ResearchSubject", json=subject(sid, pid)))
    assert client.put(f"/fhir/ResearchSubject/{rs['id']}", json={**rs, "actualArm": "low-dose"}).status_code == 200
    assert client.put(f"/fhir/ResearchSubject/{rs['id']}", json={**rs, "status": "withdrawn"}).status_code == 200
    got = receiver.wait_for(lambda: sum(len(r.numbers) for r in receiver.notifications(sub)) >= 2 and
                            receiver.notifications(sub))
    statuses = [e["resource"]["status"] for r in got for e in r.bundle["entry"][1:]]
    assert statuses == ["on-study", "withdrawn"]


def test_responder_topic_hears_a_subject_reaching_easi_75(client, receiver):
    ids = enrol(client)
    sub = active(client, receiver, topic_subscription(receiver.url, "responder", "responder=EASI-75"))
    created(client.post("/fhir/Observation", json=observation(ids["patient"], value=40.0, date="2024-01-10")))
    created(client.post("/fhir/Observation", json=observation(ids["patient"], value=20.0, date="2024-02-07")))  # -50%
    reached = created(client.post("/fhir/Observation", json=observation(ids["patient"], value=8.0,
                                                                        date="2024-04-03")))  # week-12, -80%
    got = receiver.wait_for(lambda: receiver.notifications(sub))
    assert [e["resource"]["id"] for r in got for e in r.bundle["entry"][1:]] == [reached["id"]]


def test_classic_criteria_match_with_the_search_parameters(client, receiver):
    from tests.subscription.conftest import classic_subscription
    ids = enrol(client)
    sub = active(client, receiver, classic_subscription(
        receiver.url, f"Observation?study={ids['study']}&value-quantity=gt30"))
    created(client.post("/fhir/Observation", json=observation(ids["patient"], value=12.0)))
    high = created(client.post("/fhir/Observation", json=observation(ids["patient"], value=35.0)))
    got = receiver.wait_for(lambda: receiver.notifications(sub))
    assert [e["resource"]["id"] for r in got for e in r.bundle["entry"][1:]] == [high["id"]]
    bad = client.post("/fhir/Subscription", json=classic_subscription(receiver.url, "Observation?colour=red"))
    assert bad.status_code == 400
    assert "Subscription.criteria" in bad.json()["issue"][0]["expression"]


def test_a_visit_window_closing_with_no_result_is_an_event_once(client, receiver):
    from datetime import date, timedelta

    from service.subscription.sender import Sender
    # day 0 eight weeks ago: the baseline (−30…0) and week-4 (21…35) windows have closed since, week-12 has not
    day0 = (date.today() - timedelta(days=56)).isoformat()
    ids = enrol(client, day0=day0)
    seen = enrol(client, day0=day0, study_id=ids["study"])
    # the subscription is made before those windows closed (as if ten weeks ago)
    sub = active(client, receiver, topic_subscription(receiver.url, "visit-window", f"study={ids['study']}",
                                                      "visit=week-4", "code=EASI"))
    from sqlalchemy import update

    from service.subscription.events import ST
    with client.app.state.engine.begin() as conn:
        conn.execute(update(ST).values(created_at=datetime.now(UTC) - timedelta(days=70)))
    week4 = (date.today() - timedelta(days=56 - 28)).isoformat()
    created(client.post("/fhir/Observation", json=observation(seen["patient"], date=week4)))  # has its EASI
    created(client.post("/fhir/Observation", json=observation(ids["patient"], "IGA", 2, date=week4)))  # not EASI
    sender = Sender(client.app.state.engine, client.app.state.settings)
    assert sender.check_windows() == 1
    assert sender.check_windows() == 0  # told once
    got = receiver.wait_for(lambda: receiver.notifications(sub))
    focus = got[0].bundle["entry"][1]["resource"]
    assert focus["resourceType"] == "ResearchSubject" and focus["id"] == ids["subject"]


def test_an_idle_active_subscription_gets_heartbeats(client, receiver):
    sid = active(client, receiver, topic_subscription(receiver.url, "measurement", heartbeat=1))
    beats = receiver.wait_for(lambda: [r for r in receiver.received if r.kind == "heartbeat"], timeout=10)
    assert beats[0].subscription == sid
    assert beats[0].bundle["entry"][0]["resource"]["parameter"][2] == {"name": "status", "valueCode": "active"}


def test_the_capability_statement_advertises_the_topics_and_operations(client):
    statement = client.get("/fhir/metadata").json()
    entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription")
    topics = {e["valueCanonical"] for e in entry["extension"]
              if e["url"].endswith("capabilitystatement-subscriptiontopic-canonical")}
    assert "https://trial-fhir.org/SubscriptionTopic/serious-adverse-event" in topics and len(topics) == 6
    assert {"status", "events"} <= {o["name"] for o in entry["operation"]}
