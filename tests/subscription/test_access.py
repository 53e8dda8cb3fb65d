"""Access with TRIAL_FHIR_AUTH=smart and real tokens: the subscriber's token decides the topics and studies it may
subscribe to, and a notification never carries what it could not read (de-identified clients get de-identified
payloads)."""

import pytest

from tests.auth.tokens import get_token, register_client
from tests.factories import adverse_event, created, observation, patient, study, subject
from tests.subscription.conftest import topic_subscription


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"auth": "smart"})


def bearer(client, scope: str, studies=(), deidentified=False) -> dict[str, str]:
    client_id, key = register_client(client.app.state.engine, scope, list(studies), deidentified)
    return {"Authorization": f"Bearer {get_token(client, client_id, key, scope)}"}


@pytest.fixture
def two_studies(client):
    admin = bearer(client, "system/*.cruds")
    ids = {}
    for name in ("a", "b"):
        sid = created(client.post("/fhir/ResearchStudy", json=study(), headers=admin))["id"]
        pid = created(client.post("/fhir/Patient", json=patient(), headers=admin))["id"]
        created(client.post("/fhir/ResearchSubject", json=subject(sid, pid), headers=admin))
        ids[name] = {"study": sid, "patient": pid}
    return admin, ids


def subscribe(client, receiver, headers, body) -> str:
    answer = client.post("/fhir/Subscription", json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    sid = answer.json()["id"]
    receiver.wait_for(lambda: client.get(f"/fhir/Subscription/{sid}", headers=headers).json()["status"] == "active")
    return sid


def test_a_topic_needs_the_search_scope_of_its_resource_type(client, receiver, two_studies):
    no_ae = bearer(client, "system/Subscription.cruds system/Observation.rs")
    refused = client.post("/fhir/Subscription", json=topic_subscription(receiver.url, "adverse-event"), headers=no_ae)
    assert refused.status_code == 403
    assert refused.json()["issue"][0]["expression"] == ["Subscription.criteria"]
    assert client.post("/fhir/Subscription", json=topic_subscription(receiver.url, "measurement"),
                       headers=no_ae).status_code == 201


def test_a_study_limited_client_subscribes_to_its_own_study_only_and_hears_only_it(client, receiver, two_studies):
    admin, ids = two_studies
    a = bearer(client, "system/Subscription.cruds system/Observation.rs", [ids["a"]["study"]])
    for filters in ((), (f"study={ids['b']['study']}",), (f"study={ids['a']['study']},{ids['b']['study']}",)):
        refused = client.post("/fhir/Subscription", json=topic_subscription(receiver.url, "measurement", *filters),
                              headers=a)
        assert refused.status_code == 403, filters
    sid = subscribe(client, receiver, a, topic_subscription(receiver.url, "measurement", f"study={ids['a']['study']}"))
    created(client.post("/fhir/Observation", json=observation(ids["b"]["patient"]), headers=admin))
    mine = created(client.post("/fhir/Observation", json=observation(ids["a"]["patient"]), headers=admin))
    got = receiver.wait_for(lambda: receiver.notifications(sid))
    assert [e["resource"]["id"] for r in got for e in r.bundle["entry"][1:]] == [mine["id"]]
    # the other study's client does not see this subscription
    b = bearer(client, "system/Subscription.cruds system/Observation.rs", [ids["b"]["study"]])
    assert client.get(f"/fhir/Subscription/{sid}", headers=b).status_code == 404
    assert client.get(f"/fhir/Subscription/{sid}/$status", headers=b).status_code == 404
    assert client.get(f"/fhir/Subscription/{sid}/$events", headers=b).status_code == 404
    assert client.get(f"/fhir/Subscription/{sid}/$status", headers=a).status_code == 200


def test_a_de_identified_client_gets_de_identified_payloads(client, receiver, two_studies):
    admin, ids = two_studies
    deid = bearer(client, "system/Subscription.cruds system/AdverseEvent.rs", [ids["a"]["study"]], deidentified=True)
    sid = subscribe(client, receiver, deid, topic_subscription(receiver.url, "adverse-event",
                                                               f"study={ids['a']['study']}"))
    ae = created(client.post("/fhir/AdverseEvent", json=adverse_event(ids["a"]["patient"], ids["a"]["study"],
                                                                       date="2024-01-20"), headers=admin))
    got = receiver.wait_for(lambda: receiver.notifications(sid))
    resource = got[0].bundle["entry"][1]["resource"]
    assert resource["id"] == ae["id"]
    assert ids["a"]["patient"] not in got[0].body.decode()  # the patient only by pseudonym
    assert resource["subject"]["reference"] != f"Patient/{ids['a']['patient']}"
    replay = client.get(f"/fhir/Subscription/{sid}/$events", headers=deid)
    assert replay.status_code == 200 and ids["a"]["patient"] not in replay.text


def test_status_and_events_need_the_read_scope_and_are_audited(client, receiver, two_studies):
    admin, _ = two_studies
    sid = subscribe(client, receiver, admin, topic_subscription(receiver.url, "measurement"))
    blind = bearer(client, "system/Observation.rs")
    assert client.get(f"/fhir/Subscription/{sid}/$status", headers=blind).status_code == 403
    audit = client.get("/fhir/AuditEvent", params={"_count": 200}, headers=bearer(client, "system/AuditEvent.rs"))
    ops = [e["resource"]["subtype"] for e in audit.json()["entry"]]
    assert any(s.get("code") == "operation" for sub in ops for s in sub)
