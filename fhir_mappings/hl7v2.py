"""HL7 v2 ORU^R01 (ER7 text) -> a FHIR transaction Bundle of Observations, and the ACK that answers it. Pure: the
caller looks up what the mapping needs (ConceptMap translations, the Patient an identifier names) and passes it in.

Per the HL7 v2-to-FHIR IG (segment map OBX -> Observation), python-hl7 parsing:

| HL7 v2                        | FHIR                                              | notes                                        |
|-------------------------------|---------------------------------------------------|----------------------------------------------|
| MSH-18 character set          | (how the bytes are decoded)                       | table 0211; absent: UTF-8 (ASCII-compatible)  |
| MSH-4 sending facility        | systems below, `meta.source`, Provenance agent    | its namespace id (HD-1), else universal id   |
| MSH-10 message control id     | `meta.source` (`…:message:<MSH-10>`), Provenance  | and the ACK's MSA-2                          |
| PID-3 (CX, repeating)         | `Observation.subject`                             | assigning authority (CX-4) -> identifier system (setting); the first one known |
| OBR-3 + OBX-3 + OBX-4         | `Observation.identifier`                          | system `urn:trial-fhir:hl7v2:<facility>:result`, value `<OBR-3>/<OBX-3>/<OBX-4>` |
| OBX-2 NM                      | `valueQuantity`                                   |                                              |
| OBX-2 SN                      | `valueQuantity` (+ `comparator`), `valueRange` (`^10^-^20`), `valueRatio` (`^1^:^128`) | |
| OBX-2 CWE / CE / CNE / CF     | `valueCodeableConcept`                            |                                              |
| OBX-2 ST / TX / FT            | `valueString`                                     | repetitions joined by a line break           |
| OBX-2 DT / DTM / TS           | `valueDateTime`                                   |                                              |
| OBX-3 (CWE)                   | `Observation.code.coding`                         | LOINC (`LN`) as sent; any other code as `urn:trial-fhir:hl7v2:<facility>:code:<CWE-3>` plus its ConceptMap target |
| OBX-6 (CWE)                   | `value*.unit` / `.code` (UCUM)                    | `system` UCUM unless CWE-3 names another     |
| OBX-7                         | `referenceRange.text` (+ `low`/`high` when numeric) |                                            |
| OBX-8 (repeating)             | `interpretation`                                  | table 0078 -> v3-ObservationInterpretation   |
| OBX-11                        | `status`                                          | table 0085: F/U final, C corrected, A amended, P/R/S preliminary, I/O registered, X/N cancelled, D/W entered-in-error; anything else `unknown` (never final) with a warning ERR |
| OBX-14, else OBR-7 (DTM)      | `effectiveDateTime`                               | precision kept; offset from the value, else MSH-7's, else the setting's zone |
| NTE after an OBX (NTE-3)      | `Observation.note.text`                           |                                              |

An ACK (v2 chapter 2, original mode) is MSH + MSA (MSA-1 AA/AE/AR, MSA-2 = MSH-10) + one ERR per problem: ERR-2 the
location (segment^sequence^field), ERR-3 the table 0357 code, ERR-4 the severity, ERR-5 the FHIR issue type, ERR-6 the
FHIR expression, ERR-7 the diagnostics (the OperationOutcome's words for what the FHIR write refused).
"""  # noqa: E501 (the mapping table is wider than the code)

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import hl7  # type: ignore[import-untyped]  # python-hl7 ships no type hints

from fhir_mappings.outcome import Issue

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
V2_0078 = "http://terminology.hl7.org/CodeSystem/v2-0078"
CATEGORY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory", "display": "Laboratory"}]}
#: table 0211 (MSH-18) -> Python codec. ISO IR149 is KS X 1001 (Korean), which Python calls euc_kr
CHARSETS = {"": "utf-8", "ASCII": "ascii", "ISO IR6": "ascii", "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8",
            "UNICODE": "utf-8", "8859/1": "latin-1", "ISO IR100": "latin-1", "8859/2": "iso8859_2",
            "8859/5": "iso8859_5", "8859/7": "iso8859_7", "8859/15": "iso8859_15", "ISO IR149": "euc_kr",
            "KS X 1001": "euc_kr", "ISO IR87": "iso2022_jp", "ISO IR159": "iso2022_jp_2", "GB 18030-2000": "gb18030",
            "BIG-5": "big5", "CNS 11643-1992": "big5"}
#: table 0085 (OBX-11) -> observation-status
STATUSES = {"F": "final", "U": "final", "C": "corrected", "A": "amended", "P": "preliminary", "R": "preliminary",
            "S": "preliminary", "I": "registered", "O": "registered", "X": "cancelled", "N": "cancelled",
            "D": "entered-in-error", "W": "entered-in-error"}
#: table 0078 codes that v3-ObservationInterpretation holds as they are
V3_INTERPRETATIONS = frozenset({"L", "H", "LL", "HH", "<", ">", "N", "A", "AA", "U", "D", "B", "W", "S", "R", "I",
                                "MS", "VS", "NEG", "POS", "IND", "E", "EX", "HX", "LX", "HU", "LU", "NR", "RR",
                                "ND", "DET", "QCF", "SYN-R", "SYN-S", "TOX", "WR", "CAR", "IE"})
COMPARATORS = {"<": "<", ">": ">", "<=": "<=", ">=": ">="}
TEXT_TYPES = ("ST", "TX", "FT")
CODED_TYPES = ("CWE", "CE", "CNE", "CF")
DATE_TYPES = ("DT", "DTM", "TS")
_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")


@dataclass(frozen=True, slots=True)
class Problem:
    """One ERR segment: what went wrong (ERR-7), where in the message (ERR-2), its table 0357 code (ERR-3), and,
    for what the FHIR write refused, the issue type and FHIRPath (ERR-5, ERR-6)."""

    code: str  # table 0357: 100 segment sequence, 101 required field missing, 102 data type, 103 table value not
    # found, 200 unsupported message type, 201 unsupported event, 204 unknown key, 205 duplicate key, 207 other
    text: str
    location: str = ""  # ERL: segment id ^ sequence ^ field, e.g. OBX^2^5
    severity: str = "E"  # E error, W warning, I information
    issue_type: str = ""
    expression: tuple[str, ...] = ()


ERROR_TEXT = {"100": "Segment sequence error", "101": "Required field missing", "102": "Data type error",
              "103": "Table value not found", "200": "Unsupported message type", "201": "Unsupported event code",
              "203": "Unsupported version id", "204": "Unknown key identifier", "205": "Duplicate key identifier",
              "206": "Application record locked", "207": "Application internal error"}


class Rejected(Exception):
    """The message can't be read or is not one this server takes: ACK AR (`parsed` and `charset` when it could be
    parsed, so the ACK answers it)."""

    def __init__(self, problems: Sequence[Problem], parsed: Any = None, charset: str = "",
                 encoding: str = "utf-8") -> None:
        super().__init__(problems[0].text)
        self.problems = list(problems)
        self.parsed, self.charset, self.encoding = parsed, charset, encoding


class NotStored(Exception):
    """The message was understood but its results can't be stored as they are: ACK AE."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__(problems[0].text)
        self.problems = list(problems)


@dataclass
class Result:
    """One OBX, with the OBR it belongs to and the NTEs that follow it."""

    obx: Any  # hl7.Segment
    obr: Any  # hl7.Segment | None
    ordinal: int  # the OBX's occurrence in the message (1-based): ERR-2's sequence
    notes: list[str] = field(default_factory=list)


@dataclass
class Message:
    """A parsed ORU^R01: what the mapping and the ACK need."""

    parsed: Any  # hl7.Message
    encoding: str  # the Python codec it was decoded with
    charset: str  # MSH-18 as sent
    digest: str  # sha256 of the bytes as received: a resent MSH-10 must be the same message
    application: str
    facility: str
    control_id: str
    sent_at: str  # MSH-7
    patient_ids: list[tuple[str, str]]  # (assigning authority, value) of PID-3, in order
    results: list[Result]


# -- reading ---------------------------------------------------------------------------------------------

def _get(node: Any, *index: int) -> str:
    """The text at `index` (1-based field, repetition, component, sub-component) of a python-hl7 container; "" when
    absent. python-hl7 nests only as deep as the separators present, so a plain string answers index 1."""
    for i in index:
        if isinstance(node, str):
            if i != 1:
                return ""
            continue
        try:
            node = node(i)
        except (IndexError, KeyError):
            return ""
    return str(node)


def _reps(segment: Any, n: int) -> list[Any]:
    """The repetitions of field `n` (each a container or a string)."""
    try:
        fld = segment(n)
    except IndexError:
        return []
    if isinstance(fld, str):
        return [fld] if fld else []
    return [r for r in fld if str(r)]


def _charset(raw: bytes) -> str:
    """MSH-18 read from the bytes of the MSH segment (ASCII in every character set table 0211 names but UTF-16),
    its first repetition (the default character set)."""
    head = raw.split(b"\r", 1)[0]
    if len(head) < 8 or not head.startswith(b"MSH"):
        return ""
    sep, rep = head[3:4], head[5:6]
    fields = head.split(sep)
    if len(fields) < 18:
        return ""
    return fields[17].split(rep)[0].decode("latin-1").strip() if rep else fields[17].decode("latin-1").strip()


def read_message(raw: bytes) -> Message:
    """Decode (MSH-18) and parse an ER7 message, and check it is an ORU^R01 this server takes; `Rejected` (AR)
    naming what is wrong otherwise."""
    raw = raw.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r \t\x00")
    digest = hashlib.sha256(raw).hexdigest()  # of the segments as sent, whichever line ends carried them
    if not raw.startswith(b"MSH") or len(raw) < 8:
        raise Rejected([Problem("100", "The message does not begin with an MSH segment", "MSH")])
    charset = _charset(raw)
    codec = CHARSETS.get(charset.upper())
    if codec is None:
        raise Rejected([Problem("103", f"MSH-18 character set '{charset}' is not supported (table 0211: "
                                       f"{', '.join(c for c in CHARSETS if c)})", "MSH^1^18")])
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as bad:
        raise Rejected([Problem("102", f"The message is not valid {charset or 'UTF-8'} text (byte {bad.start}); "
                                       "MSH-18 must name the character set it is sent in", "MSH^1^18")]) from None
    try:
        parsed = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises ParseException, and IndexError/ValueError on odd input
        raise Rejected([Problem("100", f"The message can't be parsed as HL7 v2 ER7: {exc}", "MSH")]) from None
    msh = parsed.segment("MSH")
    problems = []
    code, event = _get(msh, 9, 1, 1), _get(msh, 9, 1, 2)
    if code != "ORU":
        problems.append(Problem("200", f"MSH-9 message type '{code}^{event}' is not supported: this endpoint takes "
                                       "ORU^R01", "MSH^1^9"))
    elif event != "R01":
        problems.append(Problem("201", f"MSH-9 trigger event '{event}' is not supported: this endpoint takes ORU^R01",
                                "MSH^1^9"))
    control_id = _get(msh, 10)
    if not control_id:
        problems.append(Problem("101", "MSH-10 message control id is missing", "MSH^1^10"))
    facility = _get(msh, 4, 1, 1) or _get(msh, 4, 1, 2)
    if not facility:
        problems.append(Problem("101", "MSH-4 sending facility is missing: results are identified by it", "MSH^1^4"))
    pids = [s for s in parsed if _get(s, 0) == "PID"]
    if not pids:
        problems.append(Problem("100", "The message has no PID segment", "PID"))
    elif len(pids) > 1:
        problems.append(Problem("100", "The message holds results of several patients (PID segments); send one "
                                       "patient per message", "PID^2"))
    results = _results(parsed)
    if not results:
        problems.append(Problem("101", "The message has no OBX segment: there is no result to store", "OBX"))
    if problems:
        raise Rejected(problems, parsed, charset, codec)
    patient_ids = [(_get(rep, 4, 1) or _get(rep, 4, 2), _get(rep, 1)) for rep in _reps(pids[0], 3)]
    return Message(parsed, codec, charset, digest, _get(msh, 3, 1, 1), facility, control_id, _get(msh, 7, 1, 1),
                   [(a, v) for a, v in patient_ids if v], results)


def _results(parsed: Any) -> list[Result]:
    results: list[Result] = []
    obr = None
    for segment in parsed:
        kind = _get(segment, 0)
        if kind == "OBR":
            obr = segment
        elif kind == "OBX":
            results.append(Result(segment, obr, len(results) + 1))
        elif kind == "NTE" and results and results[-1].obr is obr:
            text = "\n".join(_text(parsed, str(r)) for r in _reps(segment, 3))
            if text:
                results[-1].notes.append(text)
        elif kind in ("PID", "PV1", "ORC", "SPM", "MSH"):
            continue
    return results


def _text(parsed: Any, value: str) -> str:
    """A text value with the HL7 escapes undone (\\F\\, \\S\\, \\.br\\ …)."""
    return str(parsed.unescape(value)) if "\\" in value else value


# -- mapping ---------------------------------------------------------------------------------------------

def code_system(facility: str, cwe3: str) -> str:
    """The code system of a code the lab sent: LOINC for `LN`, else the lab's own (named by its facility and the
    coding system name it gave), which a ConceptMap's `group.source` names."""
    if cwe3.upper() == "LN":
        return LOINC
    return f"urn:trial-fhir:hl7v2:{quote(facility, safe='')}:code:{quote(cwe3 or 'L', safe='')}"


def result_system(facility: str) -> str:
    return f"urn:trial-fhir:hl7v2:{quote(facility, safe='')}:result"


def message_source(facility: str, control_id: str) -> str:
    return f"urn:trial-fhir:hl7v2:{quote(facility, safe='')}:message:{quote(control_id, safe='')}"


def identifier_query(system: str, value: str) -> str:
    """`identifier=system|value` of a conditional URL or reference, readable: only what a query can't hold as it is
    is percent-encoded (`:`, `/` and `|` stay)."""
    return "identifier=" + quote(f"{system}|{value}", safe=":/|")


def local_codes(message: Message) -> set[tuple[str, str]]:
    """(system, code) of every OBX-3 that needs a ConceptMap translation (not LOINC, no LOINC alternate)."""
    needed = set()
    for r in message.results:
        system = code_system(message.facility, _get(r.obx, 3, 1, 3))
        if system != LOINC and _get(r.obx, 3, 1, 6).upper() != "LN":
            needed.add((system, _get(r.obx, 3, 1, 1)))
    return needed


def patient_identifier(message: Message, authorities: Mapping[str, str]) -> tuple[str, str]:
    """(system, value) of the first PID-3 identifier whose assigning authority has a system; `NotStored` (AE)
    when none has."""
    for authority, value in message.patient_ids:
        if authority in authorities:
            return authorities[authority], value
    named = ", ".join(sorted({a or "(none)" for a, _ in message.patient_ids})) or "none"
    raise NotStored([Problem("204", f"PID-3 has no identifier of a known assigning authority (sent: {named}); "
                                    "TRIAL_FHIR_HL7_AUTHORITIES maps an authority to its identifier system",
                             "PID^1^3", issue_type="not-found", expression=("Observation.subject",))])


def to_bundle(message: Message, *, patient: str, translations: Mapping[tuple[str, str], Sequence[dict[str, str]]],
              zone: str | None = None) -> tuple[dict[str, Any], list[Problem], dict[int, int]]:
    """The transaction Bundle of the message's results: one conditional update per OBX (keyed by its result
    identifier), then a Provenance naming the message. `patient` is the Observation.subject reference (`Patient/id`,
    or the conditional `Patient?identifier=…` the write will refuse when it matches nothing). Returns (Bundle,
    warnings for the ACK, {entry index: OBX ordinal}); `NotStored` (AE) naming every OBX that can't be mapped."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    entries: list[dict[str, Any]] = []
    where: dict[int, int] = {}
    offset = _offset(message.sent_at)
    seen: dict[str, int] = {}
    for r in message.results:
        try:
            observation, warned = _observation(message, r, patient, translations, offset, zone)
        except NotStored as failed:
            problems.extend(failed.problems)
            continue
        warnings.extend(warned)
        key = observation["identifier"][0]["value"]
        if key in seen:
            problems.append(Problem("205", f"OBX {r.ordinal} repeats the result of OBX {seen[key]} (same OBR-3, OBX-3 "
                                           "and OBX-4): give each result its own OBX-4 sub-id",
                                    f"OBX^{r.ordinal}^4"))
            continue
        seen[key] = r.ordinal
        where[len(entries)] = r.ordinal
        entries.append({"fullUrl": f"urn:uuid:{_uuid(message.digest, r.ordinal)}", "resource": observation,
                        "request": {"method": "PUT", "url": "Observation?" + identifier_query(
                            result_system(message.facility), key)}})
    if problems:
        raise NotStored(problems)
    entries.append({"fullUrl": f"urn:uuid:{_uuid(message.digest, 0)}", "resource": _provenance(message, entries, zone),
                    "request": {"method": "POST", "url": "Provenance"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, warnings, where


def _uuid(digest: str, n: int) -> str:
    h = hashlib.sha256(f"{digest}:{n}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def _provenance(message: Message, entries: list[dict[str, Any]], zone: str | None) -> dict[str, Any]:
    try:  # when the message was sent (MSH-7), else when it was received
        recorded = dtm_to_fhir(message.sent_at, None, zone, instant=True) if message.sent_at else None
    except ValueError:
        recorded = None
    return {"resourceType": "Provenance",
            "target": [{"reference": e["fullUrl"]} for e in entries],
            "recorded": recorded or datetime.now(UTC).isoformat(timespec="seconds"),
            "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                            "code": "author"}]},
                       "who": {"identifier": {"system": "urn:trial-fhir:hl7v2:facility", "value": message.facility},
                               "display": message.facility}}],
            "entity": [{"role": "source", "what": {
                "identifier": {"system": f"urn:trial-fhir:hl7v2:{quote(message.facility, safe='')}:message",
                               "value": message.control_id},
                "display": f"HL7 v2 ORU^R01 {message.control_id} from {message.facility}"}}]}


def _observation(message: Message, r: Result, patient: str, translations: Mapping[tuple[str, str],
                 Sequence[dict[str, str]]], offset: str | None, zone: str | None
                 ) -> tuple[dict[str, Any], list[Problem]]:
    obx, n, parsed = r.obx, r.ordinal, message.parsed
    problems: list[Problem] = []
    warnings: list[Problem] = []
    code, display, cs = _get(obx, 3, 1, 1), _text(parsed, _get(obx, 3, 1, 2)), _get(obx, 3, 1, 3)
    if not code:
        raise NotStored([Problem("101", f"OBX {n}: OBX-3 observation identifier is missing", f"OBX^{n}^3")])
    system = code_system(message.facility, cs)
    codings = [{"system": system, "code": code, **({"display": display} if display else {})}]
    if system != LOINC:
        alt, alt_display = _get(obx, 3, 1, 4), _text(parsed, _get(obx, 3, 1, 5))
        if alt and _get(obx, 3, 1, 6).upper() == "LN":
            codings.append({"system": LOINC, "code": alt, **({"display": alt_display} if alt_display else {})})
        elif translations.get((system, code)):
            codings.extend(dict(t) for t in translations[(system, code)])
        else:
            problems.append(Problem("103", f"OBX {n}: OBX-3 code '{code}' ({cs or 'local'}) is not LOINC and no "
                                           f"ConceptMap maps {system}|{code}", f"OBX^{n}^3",
                                    issue_type="code-invalid", expression=("Observation.code",)))
    filler = _get(r.obr, 3, 1, 1) if r.obr is not None else ""
    if not filler:
        problems.append(Problem("101", f"OBX {n}: its OBR has no OBR-3 filler order number, which identifies the "
                                       "result", f"OBR^{n}^3"))
    status_code = _get(obx, 11).upper()
    status = STATUSES.get(status_code)
    if status is None:
        status = "unknown"
        warnings.append(Problem("103", f"OBX {n}: OBX-11 result status '{status_code}' is not in table 0085: stored "
                                       "with status unknown (never counted as final)", f"OBX^{n}^11", severity="W"))
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"source": message_source(message.facility, message.control_id)},
        "identifier": [{"system": result_system(message.facility),
                        "value": f"{filler}/{code}/{_get(obx, 4)}"}],
        "status": status, "category": [CATEGORY],
        "code": {"coding": codings, **({"text": display} if display else {})},
        "subject": {"reference": patient},
    }
    when_raw = _get(obx, 14, 1, 1) or (_get(r.obr, 7, 1, 1) if r.obr is not None else "")
    if when_raw:
        try:
            observation["effectiveDateTime"] = dtm_to_fhir(when_raw, offset, zone)
        except ValueError as bad:
            field_at = f"OBX^{n}^14" if _get(obx, 14, 1, 1) else f"OBR^{n}^7"
            problems.append(Problem("102", f"OBX {n}: {bad}", field_at, expression=("Observation.effectiveDateTime",)))
    try:
        value = _value(message, r)
    except ValueError as bad:
        problems.append(Problem("102", f"OBX {n}: {bad}", f"OBX^{n}^5", expression=("Observation.value",)))
        value = {}
    observation.update(value)
    unit = _unit(obx)
    ranges = _reference_range(_text(parsed, _get(obx, 7)), unit)
    if ranges:
        observation["referenceRange"] = [ranges]
    flags = [_get(f, 1) for f in _reps(obx, 8)]
    if flags:
        observation["interpretation"] = [{"coding": [{"system": INTERPRETATION if f in V3_INTERPRETATIONS
                                                      else V2_0078, "code": f}]} for f in flags if f]
    if r.notes:
        observation["note"] = [{"text": t} for t in r.notes]
    if problems:
        raise NotStored(problems)
    return observation, warnings


def _unit(obx: Any) -> dict[str, str]:
    """OBX-6 as Quantity unit fields: UCUM `system`/`code` unless CWE-3 names another coding system."""
    code, text, cs = _get(obx, 6, 1, 1), _get(obx, 6, 1, 2), _get(obx, 6, 1, 3)
    if not code:
        return {}
    if cs.upper() in ("", "UCUM"):
        return {"unit": text or code, "system": UCUM, "code": code}
    return {"unit": text or code}


def _number(text: str, what: str) -> int | float:
    text = text.strip()
    if not _NUMBER.match(text):
        raise ValueError(f"{what} '{text}' is not a number")
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)


def _value(message: Message, r: Result) -> dict[str, Any]:
    """value[x] from OBX-2 and OBX-5 (ValueError naming what is wrong); {} when OBX-5 is empty (a cancelled
    result, say: the write decides whether that is allowed)."""
    obx, parsed = r.obx, message.parsed
    kind = _get(obx, 2).upper()
    reps = _reps(obx, 5)
    if not reps:
        return {}
    first = reps[0]
    if kind == "NM":
        return {"valueQuantity": {"value": _number(_get(first, 1), "OBX-5 (NM)"), **_unit(obx)}}
    if kind == "SN":
        return _structured_numeric(first, _unit(obx))
    if kind in CODED_TYPES:
        c, d, s = _get(first, 1), _text(parsed, _get(first, 2)), _get(first, 3)
        concept: dict[str, Any] = {"coding": [{"system": code_system(message.facility, s), "code": c,
                                               **({"display": d} if d else {})}]} if c else {}
        if d:
            concept["text"] = d
        return {"valueCodeableConcept": concept}
    if kind in TEXT_TYPES:
        return {"valueString": "\n".join(_text(parsed, str(x)) for x in reps)}
    if kind in DATE_TYPES:
        return {"valueDateTime": dtm_to_fhir(_get(first, 1), _offset(message.sent_at), None)}
    raise ValueError(f"OBX-2 value type '{kind or '(none)'}' is not supported (NM, SN, CWE, CE, ST, TX, FT, DT, "
                     "DTM, TS)")


def _structured_numeric(value: Any, unit: dict[str, str]) -> dict[str, Any]:
    """SN: comparator ^ num1 ^ separator/suffix ^ num2 -> Quantity (with comparator), Range (`-`) or Ratio (`:`,
    `/`)."""
    comparator, num1, sep, num2 = (_get(value, i) for i in (1, 2, 3, 4))
    if sep in ("-", ":", "/") and num2:
        if comparator not in ("", "="):
            raise ValueError(f"OBX-5 (SN) '{comparator}' can't qualify a range or ratio")
        low, high = _number(num1, "OBX-5.2 (SN)"), _number(num2, "OBX-5.4 (SN)")
        if sep == "-":
            return {"valueRange": {"low": {"value": low, **unit}, "high": {"value": high, **unit}}}
        return {"valueRatio": {"numerator": {"value": low}, "denominator": {"value": high}}}
    if sep or num2:
        raise ValueError(f"OBX-5 (SN) separator/suffix '{sep}' is not supported (-, :, /)")
    quantity: dict[str, Any] = {"value": _number(num1, "OBX-5.2 (SN)"), **unit}
    if comparator not in ("", "="):
        if comparator not in COMPARATORS:
            raise ValueError(f"OBX-5.1 (SN) comparator '{comparator}' is not one FHIR has (<, <=, >, >=)")
        quantity["comparator"] = COMPARATORS[comparator]
    return {"valueQuantity": quantity}


def _reference_range(text: str, unit: dict[str, str]) -> dict[str, Any] | None:
    """OBX-7 as a referenceRange: its text, and low/high when it reads `a-b`, `<b`, `<=b`, `>a` or `>=a`."""
    text = text.strip()
    if not text:
        return None
    found: dict[str, Any] = {"text": text}
    m = re.fullmatch(r"\s*([+-]?[\d.]+)\s*-\s*([+-]?[\d.]+)\s*", text)
    try:
        if m:
            found["low"] = {"value": _number(m[1], "OBX-7"), **unit}
            found["high"] = {"value": _number(m[2], "OBX-7"), **unit}
        elif (m := re.fullmatch(r"\s*(<=?|>=?)\s*([+-]?[\d.]+)\s*", text)):
            found["high" if m[1].startswith("<") else "low"] = {"value": _number(m[2], "OBX-7"), **unit}
    except ValueError:
        return {"text": text}
    return found


def _offset(dtm: str) -> str | None:
    """The +HHMM offset of an HL7 DTM (MSH-7), if it has one."""
    m = _DTM.match(dtm.strip()) if dtm else None
    return m[8] if m and m[8] else None


def dtm_to_fhir(dtm: str, default_offset: str | None, zone: str | None, *, instant: bool = False) -> str:
    """An HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]) as a FHIR dateTime, its precision kept (a time without
    seconds gets `:00`, which FHIR requires). A time without its own offset takes `default_offset` (MSH-7's), else
    the zone `zone`'s offset at that moment; ValueError when neither is known."""
    m = _DTM.match(dtm.strip())
    if not m:
        raise ValueError(f"'{dtm}' is not an HL7 date/time (YYYYMMDDHHMMSS[+ZZZZ])")
    year, month, day, hour, minute, second, frac, tz = m.groups()
    try:
        datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError:
        raise ValueError(f"'{dtm}' is not a valid date/time") from None
    if hour is None:
        if instant:
            raise ValueError(f"'{dtm}' has no time")
        return "-".join(p for p in (year, month, day) if p)
    offset = tz or default_offset
    if offset is None and zone:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute or 0), tzinfo=ZoneInfo(zone))
        delta = moment.utcoffset() or timedelta(0)
        total = int(delta.total_seconds() // 60)
        offset = f"{'+' if total >= 0 else '-'}{abs(total) // 60:02d}{abs(total) % 60:02d}"
    if offset is None:
        raise ValueError(f"'{dtm}' has a time but no time zone offset (nor does MSH-7; TRIAL_FHIR_HL7_TIMEZONE "
                         "sets a default)")
    if month is None or day is None:
        raise ValueError(f"'{dtm}' has a time but no full date")
    zone_text = "Z" if offset in ("+0000", "-0000") else f"{offset[:3]}:{offset[3:]}"
    return f"{year}-{month}-{day}T{hour}:{minute or '00'}:{second or '00'}{frac or ''}{zone_text}"


# -- the FHIR write's refusals, as ERR segments ----------------------------------------------------------

#: FHIR issue type -> table 0357
_ISSUE_CODES = {"not-found": "204", "conflict": "205", "duplicate": "205", "code-invalid": "103", "required": "101",
                "structure": "102", "value": "102", "invalid": "102", "lock-error": "206"}
#: the element of an Observation entry -> its OBX field (ERR-2)
_ELEMENT_FIELDS = (("Observation.subject", "PID", 3), ("Observation.code", "OBX", 3),
                   ("Observation.value", "OBX", 5), ("Observation.status", "OBX", 11),
                   ("Observation.effective", "OBX", 14), ("Observation.referenceRange", "OBX", 7),
                   ("Observation.interpretation", "OBX", 8), ("Observation.note", "NTE", 3),
                   ("Observation.identifier", "OBX", 3))
_ENTRY = re.compile(r"^Bundle\.entry\[(\d+)\](?:\.resource)?\.?(.*)$")


def problems_from_issues(issues: Iterable[Issue], where: Mapping[int, int]) -> list[Problem]:
    """One ERR per OperationOutcome issue of the FHIR write: its words (ERR-7), type (ERR-5) and expression (ERR-6)
    as the OperationOutcome has them, located in the message (ERR-2) where the entry is an OBX's."""
    found = []
    for i in issues:
        location = ""
        for expression in i.expression:
            m = _ENTRY.match(expression)
            if not m or int(m[1]) not in where:
                continue
            ordinal, element = where[int(m[1])], "Observation." + m[2] if m[2] else "Observation"
            location = f"OBX^{ordinal}"
            for prefix, segment, fld in _ELEMENT_FIELDS:
                if element.startswith(prefix):
                    location = f"PID^1^{fld}" if segment == "PID" else f"{segment}^{ordinal}^{fld}"
                    break
            break
        found.append(Problem(_ISSUE_CODES.get(i.code, "207"), i.diagnostics, location,
                             "E" if i.severity in ("error", "fatal") else "W" if i.severity == "warning" else "I",
                             i.code, i.expression))
    return found


# -- the ACK ---------------------------------------------------------------------------------------------

def _escape(text: str, separators: str = "|^~\\&") -> str:
    """Text in an ER7 field: the delimiters escaped (v2 2.7.4), line breaks as \\.br\\. python-hl7's `escape`
    writes other characters as \\Xhh\\ of their code point, not of their bytes in the message's character set, so
    the characters are kept and encoded with the ACK."""
    field_sep, comp, rep, esc, sub = separators[0], separators[1], separators[2], separators[3], separators[4]
    out = text.replace(esc, f"{esc}E{esc}").replace(field_sep, f"{esc}F{esc}").replace(comp, f"{esc}S{esc}")
    out = out.replace(rep, f"{esc}R{esc}").replace(sub, f"{esc}T{esc}")
    return out.replace("\r\n", f"{esc}.br{esc}").replace("\n", f"{esc}.br{esc}").replace("\r", f"{esc}.br{esc}")


def _err(problem: Problem, separators: str) -> str:
    f, comp, rep = separators[0], separators[1], separators[2]

    def e(text: str) -> str:
        return _escape(text, separators)

    code = f"{problem.code}{comp}{e(ERROR_TEXT.get(problem.code, ''))}{comp}HL70357"
    issue_type = f"{e(problem.issue_type)}{comp}{comp}http://hl7.org/fhir/issue-type" if problem.issue_type else ""
    return f.join(["ERR", "", problem.location, code, problem.severity, issue_type,
                   rep.join(e(x) for x in problem.expression), e(problem.text)])


def ack(parsed: Any, charset: str, code: str, problems: Sequence[Problem], control_id: str, *,
        application: str = "TRIAL-FHIR") -> str:
    """The ACK (ER7, segments ended by CR) of a parsed message (python-hl7 `create_ack`): MSA-1 `code`, MSA-2 its
    MSH-10, MSH-18 its character set, one ERR per problem. For a message that could not be parsed (`parsed` None),
    an ACK of default delimiters with an empty MSA-2."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    if parsed is None:
        head = f"MSH|^~\\&|{application}||||{now}||ACK|{control_id}|P|2.5.1\rMSA|{code}|\r"
        return head + "".join(_err(p, "|^~\\&") + "\r" for p in problems)
    msh = parsed.segment("MSH")
    seps = _get(msh, 1) + _get(msh, 2)
    seps = seps + "|^~\\&"[len(seps):] if len(seps) < 5 else seps
    reply = parsed.create_ack(code, message_id=control_id, application=application,
                              facility=_get(msh, 6, 1, 1) or None)
    reply.segment("MSH").assign_field(now, 7)
    if charset:
        reply.segment("MSH").assign_field(charset, 18)
    return str(reply) + "".join(_err(p, seps) + "\r" for p in problems)


def ack_code(text: str) -> str:
    """MSA-1 of an ACK this module made (tests, benchmarks, the CLI)."""
    for segment in text.split("\r"):
        if segment.startswith("MSA"):
            return segment.split(segment[3])[1]
    return ""
