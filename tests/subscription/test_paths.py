"""Every write path writes its events through the one commit (service/core/resources.py commit_unit): HL7 v2
messages and transaction Bundles as REST writes do; and the sender against a respx-mocked endpoint."""

import asyncio

import httpx
import pytest
import respx
from sqlalchemy import select

from service.db import make_engine
from service.subscription.events import EV
from service.subscription.sender import Sender
from tests.factories import MRN, created, observation, patient, study, subject
from tests.hl7.conftest import ER7
from tests.hl7.messages import msa, oru
from tests.subscription.conftest import topic_subscription
from tests.subscription.test_delivery import active


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"hl7_authorities": {"SNUH": MRN}})


def test_an_hl7_v2_result_notifies_as_a_rest_write_does(client, receiver):
    sid = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    pid = created(client.post("/fhir/Patient", json=patient("MRN-7")))["id"]
    created(client.post("/fhir/ResearchSubject", json=subject(sid, pid)))
    sub = active(client, receiver, topic_subscription(receiver.url, "measurement", f"study={sid}"))
    ack = client.post("/hl7/v2", content=oru("MRN-7").encode(), headers=ER7)
    assert msa(ack.text)[0] == "AA", ack.text
    got = receiver.wait_for(lambda: receiver.notifications(sub))
    resource = got[0].bundle["entry"][1]["resource"]
    assert resource["resourceType"] == "Observation" and resource["code"]["coding"][0]["code"] == "19113-0"


def test_a_transaction_bundle_numbers_its_events_in_entry_order(client, receiver):
    sid = created(client.post("/fhir/ResearchStudy", json=study()))["id"]
    pid = created(client.post("/fhir/Patient", json=patient()))["id"]
    created(client.post("/fhir/ResearchSubject", json=subject(sid, pid)))
    sub = active(client, receiver, topic_subscription(receiver.url, "measurement", content="id-only"))
    entries = [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{i}", "resource": observation(pid, value=v),
                "request": {"method": "POST", "url": "Observation"}} for i, v in enumerate((5.0, 6.0, 7.0))]
    answer = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert answer.status_code == 200, answer.text
    written = [e["response"]["location"].split("Observation/")[1].split("/")[0] for e in answer.json()["entry"]]
    got = receiver.wait_for(lambda: sum(len(r.numbers) for r in receiver.notifications(sub)) >= 3 and
                            receiver.notifications(sub))
    assert [n for r in got for n in r.numbers] == [1, 2, 3]
    assert [e["fullUrl"].split("/")[-1] for r in got for e in r.bundle["entry"][1:]] == written
    with make_engine(client.app.state.settings.database_url).connect() as conn:
        assert conn.execute(select(EV.c.event_number).where(EV.c.subscription_id == sub)).scalars().all() == [1, 2, 3]


def test_the_sender_against_a_mocked_endpoint_retries_a_timeout_then_delivers(settings):
    endpoint = "https://portal.example.org/hook"
    settings = settings.model_copy(update={"subscription_sender": False})
    from fastapi.testclient import TestClient

    from service.main import create_app
    with TestClient(create_app(settings.model_copy(update={"subscription_allow_http_loopback": False}))) as api:
        pid_study = created(api.post("/fhir/ResearchStudy", json=study()))["id"]
        pid = created(api.post("/fhir/Patient", json=patient()))["id"]
        created(api.post("/fhir/ResearchSubject", json=subject(pid_study, pid)))
        sub = created(api.post("/fhir/Subscription", json=topic_subscription(endpoint, "measurement")))["id"]

        async def scenario() -> list[httpx.Request]:
            with respx.mock(assert_all_called=True) as mock:
                route = mock.post(endpoint).mock(side_effect=[
                    httpx.Response(200), httpx.ReadTimeout("slow"), httpx.Response(202)])
                async with httpx.AsyncClient() as http:
                    sender = Sender(api.app.state.engine, settings, http=http, name="respx")
                    assert await sender.run_once() == 1  # the handshake: now active
                    await asyncio.to_thread(api.post, "/fhir/Observation", json=observation(pid))
                    assert await sender.run_once() == 1  # times out: retried later
                    assert sender.failed == 1
                    await asyncio.sleep(0.2)  # past the back-off (0.05–0.1 s)
                    assert await sender.run_once() == 1
                    assert await sender.run_once() == 0  # nothing left
                return [call.request for call in route.calls]

        calls = asyncio.run(scenario())
    kinds = [next(p["valueCode"] for p in httpx.Response(200, content=c.content).json()["entry"][0]["resource"][
        "parameter"] if p["name"] == "type") for c in calls]
    assert kinds == ["handshake", "event-notification", "event-notification"]
    retried = [httpx.Response(200, content=c.content).json() for c in calls[1:]]
    assert retried[0]["entry"][1:] == retried[1]["entry"][1:]  # the same events again (event 1)
    assert retried[0]["entry"][0]["resource"]["parameter"][5:] == retried[1]["entry"][0]["resource"]["parameter"][5:]
    assert calls[1].headers["webhook-id"] == calls[2].headers["webhook-id"]
    assert calls[2].headers["content-type"] == "application/fhir+json"
    assert api.get(f"/fhir/Subscription/{sub}").json()["status"] == "active"
