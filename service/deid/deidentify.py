"""De-identified views of stored resources (HIPAA Safe Harbor, 45 CFR 164.514(b)(2)): pure functions of a
resource and a server secret, nothing of the database or HTTP.

What a de-identified client sees (`Deidentifier.resource`):

- **Patient ids** are pseudonyms: `pseudo-` + 32 hex characters of HMAC-SHA256(secret, the server's internal
  Patient id). Never a hash of an identifier (MRN): the internal id carries no meaning outside this server, and
  without the secret nobody can link a pseudonym to it. Every reference to `Patient/<id>` (relative, absolute,
  with `_history`, nested anywhere) names the pseudonym instead, and loses its `display` and `identifier`.
- **Patient** keeps only what is not a Safe Harbor identifier: `gender`, `active`, `maritalStatus`,
  `communication`, `multipleBirthBoolean`, `deceasedBoolean`, `deceasedDateTime` reduced to its year,
  `birthDate` reduced to its year, and the extensions in SAFE_PATIENT_EXTENSIONS (US Core race, ethnicity, birth
  sex). Name, telecom, address, photo, contact, identifier, links, practitioners, organisation: gone (a whitelist,
  so an element nobody thought of is dropped, not leaked).
- **Ages over 89** are "90+": a patient born more than 89 calendar years ago has no `birthDate`; instead `_birthDate`
  carries the data-absent-reason extension `masked` (valid FHIR: a primitive with an extension and no value) and
  the Patient carries the extension AGE_EXTENSION with `valueString: "90+"`.
- **Every resource** loses its narrative (`text`), its `note`s (free text), its `identifier`s and its
  `contained` resources (they could hold anything), and is labelled in `meta.security` with v3-ObservationValue
  `PSEUDED` and `REDACTED`. `meta.versionId` stays (ETags and vread keep working); `meta.lastUpdated` is dropped:
  it is when the server wrote the resource, usually the day of the visit, and a shifted one could lie in the
  future.
- **Dates** of a patient's resources move by the patient's offset (`shift_days`): the same number of days for
  every resource of that patient, so intervals between visits stay exact. Only day-precise values move (date,
  dateTime, instant: the calendar date changes, the time of day and the zone stay as sent); a year-month value is
  reduced to its year (its month can't be moved without inventing a day, and left as it is it would be an exact
  Safe Harbor date element); a year stays. Dates are found under the element names R4 defines as dates for the
  stored types (DATE_ELEMENTS, plus `start`/`end` of any Period), and only when the value has FHIR's date
  syntax: codes and ids are never touched. With `shift_dates=False` (an expert determination allows exact
  dates) dates stay exact, but birth and death dates are still reduced to their year.
- **Study-level resources** (ResearchStudy) are not about a patient: they keep everything but their narrative.
  A Group (a study's cohort) is about each of its members: a member's `period` moves by that member's offset.
- A resource with no patient (e.g. an Observation without a subject) keeps its dates: there is nobody to
  identify.

Searches: `translate_params` turns the pseudonyms a client was given back into internal ids, so it can read and
search by them. An unknown pseudonym (or an internal id, which a de-identified client should not know) matches
nothing: it becomes an unguessable id no resource has. Identifier searches and date searches that would reveal
real dates are refused (400).
"""

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from service.errors import BadRequest

PSEUDONYM_PREFIX = "pseudo-"
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
SECURITY_LABELS = (
    {"system": V3_OBSERVATION_VALUE, "code": "PSEUDED", "display": "pseudonymized"},
    {"system": V3_OBSERVATION_VALUE, "code": "REDACTED", "display": "redacted"},
)
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
#: on a de-identified Patient aged 90 or over (Safe Harbor's "90 or older"), instead of the birth year
AGE_EXTENSION = "https://trial-fhir.org/StructureDefinition/deidentified-age"
OLDEST_AGE = 89  # Safe Harbor: ages over 89 are aggregated into one category, 90 or older

#: Patient elements a de-identified view keeps (everything else is a direct identifier, or could be one)
PATIENT_KEEP = frozenset({"resourceType", "id", "meta", "active", "gender", "birthDate", "maritalStatus",
                          "communication", "multipleBirthBoolean", "deceasedBoolean", "deceasedDateTime",
                          "extension"})
SAFE_PATIENT_EXTENSIONS = frozenset({
    "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
    "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
    "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
})
#: removed from every resource of a patient, at any depth for `identifier` (a reference's identifier too)
REMOVED = ("text", "note", "identifier", "contained")
#: types whose resources are about the study, not a patient: only their narrative is removed
STUDY_LEVEL = frozenset({"ResearchStudy"})

#: R4 elements of type date, dateTime or instant in the stored types (Patient, ResearchStudy, ResearchSubject,
#: Observation, AdverseEvent, Group, Encounter, MedicationAdministration, Procedure, Provenance) and the extensions
#: and components they carry; `start`/`end` of a Period (an element named `period` or ending in `Period`) are
#: handled with them
DATE_ELEMENTS = frozenset({
    "birthDate", "deceasedDateTime",  # Patient (reduced to the year, never shifted)
    "effectiveDateTime", "effectiveInstant", "issued", "valueDateTime", "valueDate", "valueInstant",  # Observation
    "date", "detected", "recordedDate", "onsetDateTime", "abatementDateTime",  # AdverseEvent, Condition-like
    "occurrenceDateTime", "authoredOn", "recorded", "lastModified",
    "performedDateTime", "occurredDateTime",  # Procedure, Provenance (Encounter and the others: their periods)
})
YEAR_ONLY = frozenset({"birthDate", "deceasedDateTime"})
#: FHIR's date / dateTime / instant syntax (R4 datatypes), capturing the calendar part and whatever follows it
_DATE_RE = re.compile(
    r"^(?P<year>[0-9]{4})(?:-(?P<month>0[1-9]|1[0-2])(?:-(?P<day>0[1-9]|[12][0-9]|3[01])"
    r"(?P<rest>T(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?(?:Z|[+-](?:0[0-9]|1[0-3]):[0-5][0-9]"
    r"|[+-]14:00))?)?)?$")
_PATIENT_REF = re.compile(r"^(?P<base>(?:.*/)?)Patient/(?P<id>[A-Za-z0-9\-.]{1,64})(?P<tail>/_history(?:/.*)?)?$")
#: Bundle entry strings that hold a resource URL (its fullUrl, a transaction's request and response)
_URL_KEYS = ("fullUrl", "url", "location")


def patient_of(resource: dict[str, Any]) -> str | None:
    """The internal id of the patient a stored resource is about: its own id for a Patient, else the Patient its
    `subject`, `individual` or `patient` names; None for a resource about no patient (a ResearchStudy)."""
    if resource.get("resourceType") == "Patient":
        return resource.get("id")
    for key in ("subject", "individual", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            match = _PATIENT_REF.match(ref["reference"])
            if match:
                return match.group("id")
    for ref in resource.get("target") or [] if resource.get("resourceType") == "Provenance" else []:
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):  # a Provenance of a Patient
            match = _PATIENT_REF.match(ref["reference"])
            if match:
                return match.group("id")
    return None


class Deidentifier:
    """De-identifies resources with one server secret (service.deid.service.secret_from). Deterministic: the same
    secret gives every replica, and every request, the same pseudonyms and the same date offsets."""

    def __init__(self, secret: bytes, *, shift_dates: bool = True, max_shift_days: int = 180,
                 today: date | None = None) -> None:
        if not secret:
            raise ValueError("a de-identification secret must not be empty")
        if max_shift_days < 1:
            raise ValueError("max_shift_days must be at least 1")
        self._secret = secret
        self.shift_dates = shift_dates
        self.max_shift_days = max_shift_days
        self._today = today  # for tests; else the day of each call (ages move on)
        #: an id no resource has (a valid FHIR id, unguessable): what an unknown pseudonym searches for
        self.nothing = "unknown-" + secrets.token_hex(28)
        #: pseudonym -> internal id, filled by service.deid.service.resolve_pseudonym
        self.known: dict[str, str] = {}

    def _mac(self, purpose: bytes, patient_id: str) -> bytes:
        return hmac.new(self._secret, purpose + b"\x00" + patient_id.encode(), hashlib.sha256).digest()

    # -- per patient -------------------------------------------------------------------------------------

    def pseudonym(self, patient_id: str) -> str:
        """The patient's stable pseudonymous id: `pseudo-` + 128 bits of HMAC-SHA256 (a valid FHIR id)."""
        return PSEUDONYM_PREFIX + self._mac(b"pseudonym", patient_id)[:16].hex()

    def shift_days(self, patient_id: str) -> int:
        """The patient's date offset in days: non-zero, within ±max_shift_days, from the secret (the same for
        every resource of the patient); 0 when dates are not shifted."""
        if not self.shift_dates:
            return 0
        n = int.from_bytes(self._mac(b"date-shift", patient_id)[:8], "big")
        magnitude = 1 + (n >> 1) % self.max_shift_days
        return magnitude if n & 1 else -magnitude

    # -- resources -----------------------------------------------------------------------------------------

    def resource(self, resource: dict[str, Any], patient_id: str | None) -> dict[str, Any]:
        """A de-identified copy of `resource`, whose patient is `patient_id` (None: about no patient). The input
        is not changed."""
        rtype = resource.get("resourceType")
        if rtype in STUDY_LEVEL:
            out = {k: v for k, v in resource.items() if k != "text"}
            out["meta"] = self._meta(out.get("meta"), ("REDACTED",))
            return out
        if rtype == "Patient":
            out = self._patient(resource)
        else:
            out = {k: v for k, v in resource.items() if k not in REMOVED}
        members = out.pop("member", None) if rtype == "Group" else None
        shift = self.shift_days(patient_id) if patient_id is not None else 0
        move = patient_id is not None and self.shift_dates
        out = self._walk(out, shift, move)
        if isinstance(members, list):  # a cohort: each member's period is that patient's, shifted by its offset
            out["member"] = [self._member(m) for m in members]
        out["meta"] = self._meta(resource.get("meta"), ("PSEUDED", "REDACTED"))
        return out

    def _member(self, member: Any) -> Any:
        entity = member.get("entity") if isinstance(member, dict) else None
        match = _PATIENT_REF.match(entity.get("reference", "")) if isinstance(entity, dict) else None
        if match is None:
            return self._walk(member, 0, False)
        return self._walk(member, self.shift_days(match.group("id")), self.shift_dates)

    def content(self, text: str | bytes) -> bytes:
        """One stored resource's JSON text (a read, vread or export line) de-identified, as JSON bytes; its patient
        is the one it names (`patient_of`)."""
        resource = orjson.loads(text)
        return orjson.dumps(self.resource(resource, patient_of(resource)))

    def _patient(self, resource: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in resource.items() if k in PATIENT_KEEP}
        if "id" in out:
            out["id"] = self.pseudonym(out["id"])
        extensions = [e for e in out.pop("extension", []) if e.get("url") in SAFE_PATIENT_EXTENSIONS]
        born = resource.get("birthDate")
        if isinstance(born, str) and _over_89(born, self._today or date.today()):
            del out["birthDate"]
            out["_birthDate"] = {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "masked"}]}
            extensions.append({"url": AGE_EXTENSION, "valueString": f"{OLDEST_AGE + 1}+"})
        if extensions:
            out["extension"] = extensions
        return out

    def _meta(self, meta: Any, codes: Iterable[str]) -> dict[str, Any]:
        out = {k: v for k, v in (meta or {}).items() if k != "lastUpdated"}
        labels = [s for s in out.get("security", []) if not (s.get("system") == V3_OBSERVATION_VALUE
                                                              and s.get("code") in ("PSEUDED", "REDACTED"))]
        out["security"] = labels + [dict(s) for s in SECURITY_LABELS if s["code"] in codes]
        return out

    def _walk(self, node: Any, shift: int, move: bool, key: str | None = None) -> Any:
        """A copy of `node` with Patient references pseudonymised and dates moved by `shift` days."""
        if isinstance(node, dict):
            if isinstance(node.get("reference"), str) and _PATIENT_REF.match(node["reference"]):
                node = {k: v for k, v in node.items() if k not in ("display", "identifier")}
            out: dict[str, Any] = {}
            for k, v in node.items():
                if k == "identifier" or (k == "meta" and key is None):
                    continue
                if k == "reference" and isinstance(v, str):
                    out[k] = self.patient_url(v)
                elif isinstance(v, str) and k in DATE_ELEMENTS:
                    out[k] = _year(v) if k in YEAR_ONLY else (shift_date(v, shift) if move else v)
                elif isinstance(v, dict) and (k == "period" or k.endswith("Period")):
                    out[k] = {pk: (shift_date(pv, shift) if move and pk in ("start", "end") and isinstance(pv, str)
                                   else self._walk(pv, shift, move, pk)) for pk, pv in v.items()}
                else:
                    out[k] = self._walk(v, shift, move, k)
            return out
        if isinstance(node, list):
            return [self._walk(v, shift, move, key) for v in node]
        return node

    def patient_url(self, text: str) -> str:
        """`text` with the Patient id of a (relative or absolute) Patient URL replaced by its pseudonym; any
        other text as it is."""
        match = _PATIENT_REF.match(text)
        if not match:
            return text
        return f"{match.group('base')}Patient/{self.pseudonym(match.group('id'))}{match.group('tail') or ''}"

    # -- Bundles -------------------------------------------------------------------------------------------------

    def bundle(self, body: bytes, resolve_patient_of: Callable[[dict[str, Any]], str | None] = patient_of
               ) -> bytes:
        """A de-identified copy of a searchset, history or transaction-response Bundle's bytes: each entry's
        resource (its patient from `resolve_patient_of`), its fullUrl, request and response URLs, and the
        Bundle's links (a search by pseudonym was run with internal ids: its links name the pseudonyms again).
        `response.lastModified` is dropped like `meta.lastUpdated`; OperationOutcomes are left as they are."""
        data = orjson.loads(body)
        data.pop("meta", None)
        for link in data.get("link", []):
            if isinstance(link.get("url"), str):
                link["url"] = self._link(link["url"])
        for item in data.get("entry", []):
            resource = item.get("resource")
            if isinstance(resource, dict) and resource.get("resourceType") != "OperationOutcome":
                item["resource"] = self.resource(resource, resolve_patient_of(resource))
            for key in _URL_KEYS:
                if isinstance(item.get(key), str):
                    item[key] = self.patient_url(item[key])
            for part in ("request", "response"):
                sub = item.get(part)
                if isinstance(sub, dict):
                    sub.pop("lastModified", None)
                    for key in _URL_KEYS:
                        if isinstance(sub.get(key), str):
                            sub[key] = self.patient_url(sub[key])
        return orjson.dumps(data)

    def _link(self, url: str) -> str:
        """A Bundle link with the internal Patient ids in its query named by their pseudonyms again."""
        parts = urlsplit(url)
        if not parts.query:
            return self.patient_url(url)
        parts = parts._replace(path=self.patient_url(parts.path))  # e.g. a Patient's history: …/Patient/<id>/_history
        path = parts.path
        patient_search = path.rstrip("/").endswith("/Patient") or path.rstrip("/") == "Patient"
        pairs = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            base = name.split(":")[0]
            if base in ("subject", "patient", "individual") or (patient_search and base == "_id"):
                value = ",".join(self._pseudonym_value(v) for v in value.split(","))
            else:
                value = ",".join(self.patient_url(v) for v in value.split(","))
            pairs.append((name, value))
        return urlunsplit(parts._replace(query=urlencode(pairs)))

    def _pseudonym_value(self, value: str) -> str:
        if value == self.nothing or value.startswith(PSEUDONYM_PREFIX) or not value:
            return value
        if "/" in value:
            return self.patient_url(value)
        return self.pseudonym(value)

    # -- searches ---------------------------------------------------------------------------------------

    def translate_params(self, params: list[tuple[str, str]], resource_type: str,
                         resolve: Callable[[str], str | None]) -> list[tuple[str, str]]:
        """The search `params` of a de-identified client with every Patient it names by pseudonym named by its
        internal id (`resolve`: pseudonym -> internal id, None when unknown): `_id` of a Patient search, `subject`,
        `patient`, `individual` and any reference to `Patient/<pseudonym>`. An unknown pseudonym becomes an id no
        resource has: it matches nothing. 400 for a search by identifier (de-identified views have none), and
        while dates are shifted, for a search by date of a patient's resources (its values would be compared
        with the real dates), except a Patient's birth date by year."""
        from service.core.registry import TYPES  # the declarations import much of the service: only when needed

        stored = TYPES.get(resource_type)
        out = []
        for name, value in params:
            base, _, modifier = name.partition(":")
            param = stored.params.get(base.split(".")[0]) if stored else None
            if modifier == "identifier" or (param is not None and param.kind == "identifier"
                                            and resource_type not in STUDY_LEVEL):
                raise BadRequest(f"{name}: de-identified views can't be searched by identifier", expression=name)
            if param is None or modifier == "missing":
                out.append((name, value))
                continue
            if (param.kind in ("date", "datetime", "last_updated") and self.shift_dates
                    and resource_type not in STUDY_LEVEL and not (base == "birthdate" and _years_only(value))):
                raise BadRequest(f"{name}: dates in de-identified views are shifted per patient, so they can't be "
                                 "searched (a birth date can, by year)", expression=name)
            patient_id = resource_type == "Patient" and param.kind == "id"
            patient_ref = param.kind == "reference" and "Patient" in param.fhir.targets
            if patient_id or patient_ref:
                bare = patient_id or modifier == "Patient" or param.fhir.targets == ("Patient",)
                value = ",".join(self._real(v, resolve, bare) for v in value.split(","))
            out.append((name, value))
        return out

    def _real(self, value: str, resolve: Callable[[str], str | None], bare: bool) -> str:
        match = _PATIENT_REF.match(value)
        if match:
            real = resolve(match.group("id"))
            return f"{match.group('base')}Patient/{real or self.nothing}{match.group('tail') or ''}"
        if bare and "/" not in value:
            return resolve(value) or self.nothing
        return value


def shift_date(value: str, days: int) -> str:
    """A FHIR date, dateTime or instant moved by `days`: a day-precise value's calendar date moves (its time and
    zone stay as they were); a year-month value is reduced to its year; a year, or text that is not a FHIR date,
    stays as it is."""
    match = _DATE_RE.match(value)
    if not match:
        return value
    if match.group("day") is None:
        return match.group("year") if match.group("month") and days else value
    try:
        moved = date(int(match.group("year")), int(match.group("month")), int(match.group("day"))) + timedelta(days)
    except (ValueError, OverflowError):  # 2023-02-30 matches the pattern but is no date; year 9999 + days
        return match.group("year")
    return moved.isoformat() + (match.group("rest") or "")


def _year(value: str) -> str:
    match = _DATE_RE.match(value)
    return match.group("year") if match else value


def _years_only(value: str) -> bool:
    return all(re.fullmatch(r"(?:eq|ne|gt|lt|ge|le|sa|eb|ap)?[0-9]{4}", v) for v in value.split(","))


def _over_89(born: str, today: date) -> bool:
    """Is a birth date (of any precision) indicative of an age over 89 today? Counted by calendar year
    (this year − the birth year > 89), as Safe Harbor reads "all elements of dates (including year) indicative of
    such age": someone born in 1936 is 89 or 90 in 2026, and the year alone would say which for some of them."""
    match = _DATE_RE.match(born)
    return match is not None and today.year - int(match.group("year")) > OLDEST_AGE
