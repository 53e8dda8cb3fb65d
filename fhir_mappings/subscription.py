"""Subscriptions (R4, with the Subscriptions R5 Backport IG STU 1.1): the topics this server offers, what a
Subscription resource asks for (`read_subscription`), and the notification Bundles (`status_parameters`,
`notification_bundle`). Pure functions: no session, no settings, no network.

| what                  | FHIR R4 path                                                                  |
|-----------------------|-------------------------------------------------------------------------------|
| topic or classic query| `Subscription.criteria` (a topic URL below, or `Type?search`)                 |
| topic filters         | `Subscription.criteria.extension(backport-filter-criteria).valueString` (ANDed) |
| payload content       | `Subscription.channel._payload.extension(backport-payload-content).valueCode`  |
| heartbeat, timeout    | `Subscription.channel.extension(backport-heartbeat-period / backport-timeout)` |
| most events a message | `Subscription.channel.extension(backport-max-count).valuePositiveInt`         |
| signing secret        | `Subscription.channel.extension(https://trial-fhir.org/…/subscription-secret)` (kept apart, never stored in the resource) |
"""  # noqa: E501

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fhir_mappings.outcome import Issue, issue

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
FILTER_URL = f"{BACKPORT}/backport-filter-criteria"
CONTENT_URL = f"{BACKPORT}/backport-payload-content"
HEARTBEAT_URL = f"{BACKPORT}/backport-heartbeat-period"
TIMEOUT_URL = f"{BACKPORT}/backport-timeout"
MAX_COUNT_URL = f"{BACKPORT}/backport-max-count"
TOPIC_CANONICAL_URL = f"{BACKPORT}/capabilitystatement-subscriptiontopic-canonical"
STATUS_PROFILE = f"{BACKPORT}/backport-subscription-status-r4"
SECRET_URL = "https://trial-fhir.org/StructureDefinition/subscription-secret"
TIME_SINCE_ONSET_URL = "https://trial-fhir.org/StructureDefinition/time-since-onset"
TOPIC_BASE = "https://trial-fhir.org/SubscriptionTopic/"
CONTENTS = ("empty", "id-only", "full-resource")
STATUSES = ("requested", "active", "error", "off")
#: what a webhook secret must be: `whsec_` and base64 of at least this many bytes
MIN_SECRET_BYTES = 24


@dataclass(frozen=True, slots=True)
class Topic:
    """A topic of this server: the resource type whose writes it watches and the filters a subscriber may set."""

    key: str
    resource_type: str
    filters: tuple[str, ...]
    title: str

    @property
    def url(self) -> str:
        return TOPIC_BASE + self.key


TOPICS: dict[str, Topic] = {t.url: t for t in (
    Topic("measurement", "Observation", ("study", "arm", "code", "visit"),
          "A measurement recorded (created) or corrected (a new version)"),
    Topic("adverse-event", "AdverseEvent", ("study", "seriousness", "severity", "relatedness"),
          "An adverse event reported (created) or changed"),
    Topic("enrolment", "ResearchSubject", ("study", "status"),
          "A subject enrolled (a ResearchSubject created) or withdrawn (its status became withdrawn)"),
    Topic("serious-adverse-event", "AdverseEvent", ("study", "severity"),
          "An adverse event that is, or became, serious; each event carries the time since onset (the expedited "
          "reporting clock)"),
    Topic("responder", "Observation", ("study", "arm", "visit", "responder"),
          "A subject reaching a responder threshold of the study at a visit (EASI-75 at week-12: the visit's "
          "counted value against baseline)"),
    Topic("visit-window", "ResearchSubject", ("study", "visit", "code"),
          "A visit's window closed with no counted result (of the filtered codes) for a subject still on study "
          "(checked periodically; windows that close after the subscription was made)"),
)}


@dataclass(frozen=True)
class SubscriptionSpec:
    """What one Subscription asks for, read from its resource."""

    status: str
    resource_type: str  # of the topic's focus, or of the classic criteria
    criteria: str
    topic: Topic | None  # None: classic criteria (`classic` holds its search parameters)
    filters: dict[str, tuple[str, ...]] = field(default_factory=dict)  # topic filters: name -> values (ORed)
    classic: tuple[tuple[str, str], ...] = ()
    endpoint: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    content: str = "id-only"
    heartbeat_s: int | None = None
    timeout_s: int | None = None
    max_count: int | None = None
    secret: str | None = None

    @property
    def studies(self) -> tuple[str, ...] | None:
        """The studies the subscription is limited to (its `study` filter, or the classic query's), if any."""
        if self.topic is not None:
            return self.filters.get("study")
        named = [v for k, v in self.classic if k == "study"]
        return tuple(_bare("ResearchStudy", x) for v in named for x in v.split(",")) if named else None


def _bare(resource_type: str, value: str) -> str:
    """`ResearchStudy/x` or an absolute URL ending so -> `x`; anything else as it is."""
    marker = f"{resource_type}/"
    return value.rsplit(marker, 1)[1] if marker in value else value


def _extension(element: Any, url: str) -> Any:
    if not isinstance(element, dict):
        return None
    return next((e for e in element.get("extension") or [] if isinstance(e, dict) and e.get("url") == url), None)


def loopback(host: str | None) -> bool:
    return host in ("127.0.0.1", "::1", "localhost")


def read_subscription(payload: dict[str, Any], *, allow_http_loopback: bool, stored_types: tuple[str, ...]
                      ) -> tuple[SubscriptionSpec | None, list[Issue]]:
    """The subscription a (structurally valid R4) Subscription asks for, or the issues naming each element at
    fault: the channel (rest-hook to an https endpoint; http only on loopback when allowed), the criteria (a topic
    of this server with its filters, or `Type?search` of a stored type), the payload content and the secret."""
    issues: list[Issue] = []
    channel = payload.get("channel") or {}
    if channel.get("type") != "rest-hook":
        issues.append(issue("not-supported", "Only rest-hook channels are supported", "Subscription.channel.type"))
    endpoint = channel.get("endpoint") or ""
    parts = urlsplit(endpoint)
    if parts.scheme == "https" and parts.hostname:
        pass
    elif parts.scheme == "http" and allow_http_loopback and loopback(parts.hostname):
        pass
    else:
        issues.append(issue("value", "The endpoint must be an https URL" + (
            " (or http on loopback)" if allow_http_loopback else ""), "Subscription.channel.endpoint"))
    headers = []
    for i, header in enumerate(channel.get("header") or []):
        name, sep, value = str(header).partition(":")
        if not sep or not name.strip() or any(c in name for c in " \r\n") or any(c in value for c in "\r\n"):
            issues.append(issue("value", "A channel header is 'Name: value'", f"Subscription.channel.header[{i}]"))
        else:
            headers.append((name.strip(), value.strip()))
    content = "id-only"
    found = _extension(channel.get("_payload"), CONTENT_URL)  # (payload is a code: its extensions in _payload)
    if found is not None:
        content = found.get("valueCode") or ""
        if content not in CONTENTS:
            issues.append(issue("code-invalid", f"Payload content is one of {', '.join(CONTENTS)}",
                                "Subscription.channel.payload.extension"))
    numbers: dict[str, int | None] = {}
    for name, url, kind, low in (("heartbeat", HEARTBEAT_URL, "valueUnsignedInt", 1),
                                 ("timeout", TIMEOUT_URL, "valueUnsignedInt", 1),
                                 ("max_count", MAX_COUNT_URL, "valuePositiveInt", 1)):
        ext = _extension(channel, url)
        number = ext.get(kind) if ext is not None else None
        if ext is not None and (not isinstance(number, int) or isinstance(number, bool) or number < low):
            issues.append(issue("value", f"{url.rsplit('/', 1)[1]} needs a whole {kind[5:]} of at least {low}",
                                "Subscription.channel.extension"))
            number = None
        numbers[name] = number
    secret_ext = _extension(channel, SECRET_URL)
    secret = secret_ext.get("valueString") if secret_ext is not None else None
    if secret_ext is not None and not valid_secret(secret):
        issues.append(issue("value", f"The secret is 'whsec_' and the base64 of at least {MIN_SECRET_BYTES} random "
                            "bytes", "Subscription.channel.extension"))
    criteria = payload.get("criteria") or ""
    topic = TOPICS.get(criteria)
    filters: dict[str, tuple[str, ...]] = {}
    classic: tuple[tuple[str, str], ...] = ()
    resource_type = ""
    criteria_el = payload.get("_criteria") or {}
    if topic is not None:
        resource_type = topic.resource_type
        for i, ext in enumerate(criteria_el.get("extension") or [] if isinstance(criteria_el, dict) else []):
            if not isinstance(ext, dict) or ext.get("url") != FILTER_URL:
                continue
            where = f"Subscription.criteria.extension[{i}]"
            text = str(ext.get("valueString") or "")
            type_part, sep, query = text.partition("?")
            if not sep:
                type_part, query = "", text
            if type_part and type_part != topic.resource_type:
                issues.append(issue("value", f"The topic's filters are on {topic.resource_type}", where))
            for name, value in parse_qsl(query, keep_blank_values=True):
                if name not in topic.filters:
                    issues.append(issue("not-supported", f"The topic {topic.key} filters by "
                                        f"{', '.join(topic.filters)}, not '{name}'", where))
                elif not value:
                    issues.append(issue("value", f"The filter '{name}' needs a value", where))
                else:
                    values = tuple(_bare("ResearchStudy", v) if name == "study" else v for v in value.split(","))
                    filters[name] = values if name not in filters else tuple(set(filters[name]) & set(values))
    elif "?" in criteria and criteria.split("?", 1)[0] in stored_types:
        resource_type, query = criteria.split("?", 1)
        classic = tuple(parse_qsl(query, keep_blank_values=True))
        if not classic:
            issues.append(issue("value", "Classic criteria need search parameters", "Subscription.criteria"))
    else:
        issues.append(issue("value", "The criteria are one of this server's topics (" + ", ".join(TOPICS)
                            + ") or a search URL Type?params of a stored type", "Subscription.criteria"))
    if issues:
        return None, issues
    return SubscriptionSpec(
        status=str(payload.get("status")), resource_type=resource_type, criteria=criteria, topic=topic,
        filters=filters, classic=classic, endpoint=endpoint, headers=tuple(headers), content=content,
        heartbeat_s=numbers["heartbeat"], timeout_s=numbers["timeout"], max_count=numbers["max_count"],
        secret=secret), []


def valid_secret(secret: Any) -> bool:
    """Is `secret` a Standard Webhooks secret (`whsec_` and base64 of at least MIN_SECRET_BYTES bytes)?"""
    import base64
    import binascii
    if not isinstance(secret, str) or not secret.startswith("whsec_"):
        return False
    try:
        raw = base64.b64decode(secret[6:] + "==", validate=False)
    except (binascii.Error, ValueError):
        return False
    return len(raw) >= MIN_SECRET_BYTES


def without_secret(payload: dict[str, Any]) -> dict[str, Any]:
    """The Subscription as it is stored: its secret extension taken out (kept apart; never shown by a read)."""
    channel = payload.get("channel")
    if not isinstance(channel, dict) or _extension(channel, SECRET_URL) is None:
        return payload
    kept = [e for e in channel.get("extension") or [] if not (isinstance(e, dict) and e.get("url") == SECRET_URL)]
    new_channel = {k: v for k, v in channel.items() if k != "extension"}
    if kept:
        new_channel["extension"] = kept
    return {**payload, "channel": new_channel}


@dataclass(frozen=True, slots=True)
class NotificationEvent:
    number: int
    timestamp: str  # an instant
    focus: str | None  # Type/id (None with empty payloads)
    seconds_since_onset: int | None = None


def status_parameters(*, subscription: str, topic: str | None, status: str, kind: str, since_start: int,
                      events: Sequence[NotificationEvent] = (), error: str | None = None) -> dict[str, Any]:
    """The backport SubscriptionStatus (a Parameters): first entry of every notification, and the answer of
    $status."""
    params: list[dict[str, Any]] = [{"name": "subscription", "valueReference": {"reference": subscription}}]
    if topic:
        params.append({"name": "topic", "valueCanonical": topic})
    params += [{"name": "status", "valueCode": status}, {"name": "type", "valueCode": kind},
               {"name": "events-since-subscription-start", "valueString": str(since_start)}]
    for event in events:
        parts: list[dict[str, Any]] = [{"name": "event-number", "valueString": str(event.number)},
                                       {"name": "timestamp", "valueInstant": event.timestamp}]
        if event.focus:
            parts.append({"name": "focus", "valueReference": {"reference": event.focus}})
        item: dict[str, Any] = {"name": "notification-event", "part": parts}
        if event.seconds_since_onset is not None:
            item["extension"] = [{"url": TIME_SINCE_ONSET_URL, "valueQuantity": {
                "value": event.seconds_since_onset, "unit": "s", "system": "http://unitsofmeasure.org", "code": "s"}}]
        params.append(item)
    if error:
        params.append({"name": "error", "valueCodeableConcept": {"text": error}})
    return {"resourceType": "Parameters", "meta": {"profile": [STATUS_PROFILE]}, "parameter": params}


def notification_bundle(key: str, timestamp: str, parameters: dict[str, Any],
                        entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A notification: a `history` Bundle whose first entry is the status Parameters, then `entries`. `key` names
    the message (subscription, kind, last event): its ids are a UUID made from it, the same for a resend."""
    bundle_id = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
    first = {"fullUrl": f"urn:uuid:{bundle_id}", "resource": {**parameters, "id": bundle_id},
             "request": {"method": "GET", "url": parameters["parameter"][0]["valueReference"]["reference"]
                         + "/$status"},
             "response": {"status": "200"}}
    return {"resourceType": "Bundle", "id": bundle_id, "type": "history", "timestamp": timestamp,
            "entry": [first, *entries]}
