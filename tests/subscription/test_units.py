"""Pure unit tests: reading a Subscription, the status Parameters and notification Bundle, the back-off and
Retry-After, and topic matching on typed rows (no database, no HTTP)."""

from datetime import UTC, datetime, timedelta

import pytest

from fhir_mappings.subscription import (
    TIME_SINCE_ONSET_URL,
    TOPIC_BASE,
    NotificationEvent,
    notification_bundle,
    read_subscription,
    status_parameters,
    valid_secret,
    without_secret,
)
from service.core.context import ANONYMOUS, Caller
from service.store.unit_of_work import Change
from service.subscription import events
from service.subscription.sender import backoff_s, retry_after_s
from tests.subscription.conftest import SECRET, topic_subscription

TYPES = ("Observation", "AdverseEvent", "ResearchSubject", "Patient")


def read(body, loopback=False):
    return read_subscription(body, allow_http_loopback=loopback, stored_types=TYPES)


def test_a_topic_subscription_is_read_with_its_filters_and_channel():
    body = topic_subscription("https://desk.example.org/h", "adverse-event", "AdverseEvent?study=ResearchStudy/s1",
                              "seriousness=serious,non-serious", content="empty", heartbeat=60, max_count=5,
                              headers=["Authorization: Bearer x"])
    spec, issues = read(body)
    assert issues == [] and spec is not None
    assert spec.topic is not None and spec.topic.key == "adverse-event" and spec.resource_type == "AdverseEvent"
    assert spec.filters == {"study": ("s1",), "seriousness": ("serious", "non-serious")}
    assert (spec.content, spec.heartbeat_s, spec.max_count, spec.secret) == ("empty", 60, 5, SECRET)
    assert spec.headers == (("Authorization", "Bearer x"),)
    assert spec.studies == ("s1",)


@pytest.mark.parametrize("endpoint, loopback, ok", [
    ("https://desk.example.org/h", False, True), ("http://desk.example.org/h", True, False),
    ("http://127.0.0.1:8080/h", False, False), ("http://127.0.0.1:8080/h", True, True),
    ("ftp://desk.example.org/h", True, False), ("", True, False)])
def test_the_endpoint_is_https_or_http_on_loopback_when_allowed(endpoint, loopback, ok):
    spec, issues = read(topic_subscription(endpoint, "measurement"), loopback)
    assert (spec is not None) == ok
    if not ok:
        assert [i.expression for i in issues] == [("Subscription.channel.endpoint",)]


def test_every_fault_is_named():
    body = topic_subscription("https://x.example.org", "measurement", "AdverseEvent?study=s", "colour=red",
                              content="everything", secret="whsec_c2hvcnQ=", headers=["no colon"])
    _, issues = read(body)
    where = sorted(e for i in issues for e in i.expression)
    assert where == ["Subscription.channel.extension", "Subscription.channel.header[0]",
                     "Subscription.channel.payload.extension", "Subscription.criteria.extension[0]",
                     "Subscription.criteria.extension[1]"]


def test_classic_criteria_of_a_stored_type():
    body = topic_subscription("https://x.example.org", "measurement")
    body["criteria"] = "Observation?study=ResearchStudy/s1&code=EASI"
    spec, _ = read(body)
    assert spec is not None and spec.topic is None and spec.classic == (("study", "ResearchStudy/s1"),
                                                                        ("code", "EASI"))
    assert spec.studies == ("s1",)
    body["criteria"] = "AuditEvent?type=x"
    assert read(body)[0] is None


def test_secrets():
    assert valid_secret(SECRET)
    assert not valid_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw3qW8ZGYqNwE=") and not valid_secret("whsec_c2hvcnQ=")
    stripped = without_secret(topic_subscription("https://x.example.org", "measurement", heartbeat=5))
    assert "whsec_" not in str(stripped) and stripped["channel"]["extension"][0]["valueUnsignedInt"] == 5


def test_the_notification_bundle_starts_with_the_status_parameters():
    params = status_parameters(subscription="Subscription/s", topic=TOPIC_BASE + "measurement", status="active",
                               kind="event-notification", since_start=7,
                               events=[NotificationEvent(7, "2026-01-01T00:00:00Z", "Observation/o", 90)])
    bundle = notification_bundle("b1", "2026-01-01T00:00:01Z", params, [{"fullUrl": "Observation/o"}])
    assert bundle["type"] == "history"
    first = bundle["entry"][0]["resource"]
    assert first["resourceType"] == "Parameters"
    names = [p["name"] for p in first["parameter"]]
    assert names == ["subscription", "topic", "status", "type", "events-since-subscription-start",
                     "notification-event"]
    event = first["parameter"][-1]
    assert event["part"][0] == {"name": "event-number", "valueString": "7"}
    assert event["extension"][0]["url"] == TIME_SINCE_ONSET_URL and event["extension"][0]["valueQuantity"][
        "value"] == 90
    from fhir.resources.R4B.bundle import Bundle
    Bundle.model_validate(bundle)  # valid R4 (R4B structure)


def test_backoff_doubles_with_jitter_up_to_the_ceiling():
    for attempt, top in ((1, 1.0), (2, 2.0), (3, 4.0), (12, 300.0)):
        delays = [backoff_s(attempt, 1.0, 300.0) for _ in range(50)]
        assert all(top / 2 <= d <= top for d in delays)
        assert len(set(delays)) > 1  # jitter


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_after_s("120") == 120.0
    later = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 <= (retry_after_s(later) or 0) <= 31
    assert retry_after_s("soon") is None and retry_after_s(None) is None


def active(topic, *filters, owner=ANONYMOUS):
    spec, issues = read(topic_subscription("https://x.example.org", topic, *filters))
    assert spec is not None, issues
    return events.Active("s", spec, owner)


class NoLookups:
    def arm(self, subject_id):
        return "high-dose"

    def responders(self, study_id):  # the shipped atopic dermatitis catalogue's (a study without a protocol)
        from fhir_mappings.terminology import load_catalogue
        return tuple(load_catalogue().responders)

    def baseline(self, subject_id, measure):
        return 40.0


ROW = {"id": "o", "study_id": "s1", "subject_id": "rs", "code_system": "https://trial-fhir.org/CodeSystem/ad-scores",
       "code": "EASI", "measure": "EASI", "visit": "week-12", "status": "final", "value": 8.0}


@pytest.mark.parametrize("filters, matches", [
    ((), True), (("study=s1",), True), (("study=s2",), False), (("code=EASI",), True),
    (("code=https://trial-fhir.org/CodeSystem/ad-scores|EASI",), True), (("code=IGA",), False),
    (("visit=week-4",), False), (("arm=high-dose",), True), (("arm=low-dose",), False)])
def test_measurement_filters(filters, matches):
    change = Change("Observation", "o", 1, {}, None, ROW)
    assert (events._topic(active("measurement", *filters), change, NoLookups()) is not False) == matches


def test_responder_and_serious_adverse_event_rules():
    change = Change("Observation", "o", 1, {}, None, ROW)
    assert events._topic(active("responder", "responder=EASI-75"), change, NoLookups()) is None  # -80%
    assert events._topic(active("responder", "responder=EASI-90"), change, NoLookups()) is False
    onset = datetime(2024, 1, 20, tzinfo=UTC)
    ae = {"id": "a", "study_id": "s1", "seriousness": "serious", "severity": "severe", "onset": onset}
    was_serious = '{"seriousness": {"coding": [{"code": "serious"}]}}'
    assert events._topic(active("serious-adverse-event"), Change("AdverseEvent", "a", 1, {}, None, ae),
                         NoLookups()) == onset
    assert events._topic(active("serious-adverse-event"), Change("AdverseEvent", "a", 2, {}, was_serious, ae),
                         NoLookups()) is False


def test_a_study_limited_owner_never_gets_another_studys_resource():
    from service.auth.scopes import parse_scopes
    owner = Caller("c", parse_scopes("system/Observation.rs"), frozenset({"s2"}))
    assert not events._readable(owner, Change("Observation", "o", 1, {}, None, ROW))
    assert events._readable(Caller(), Change("Observation", "o", 1, {}, None, ROW))
