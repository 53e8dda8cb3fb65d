"""Stored FHIR resources (with the typed facts of their rows) -> CDISC SDTM rows (SDTMIG 3.4 conventions).

Pure functions: one subject's resources in, that subject's rows of every subject domain out (`subject_rows`),
and the trial design domains from the study (`design_rows`). No database, no settings. Dates are read from the
resources' JSON (as a de-identified client would see them, when the service de-identified them first); visit,
study-day window, canonical value and relatedness come from the typed rows the service keeps beside them.

| variable                | where it comes from                                                                   |
|-------------------------|---------------------------------------------------------------------------------------|
| STUDYID                 | `ResearchStudy.identifier[0].value` (the registry number), else the ResearchStudy id  |
| SUBJID / USUBJID        | the ResearchSubject id / STUDYID-SUBJID                                               |
| DM.RFSTDTC / RFENDTC    | `ResearchSubject.period.start` (day 0) / `.period.end`                                |
| DM.ARM(CD)/ACTARM(CD)   | `assignedArm` / `actualArm`, with the arm's description from `ResearchStudy.arm`      |
| DM.AGE, SEX, RACE, ETHNIC, COUNTRY, SITEID | `Patient.birthDate` at RFSTDTC; `gender`; US Core race/ethnicity; `address[0].country`; `managingOrganization` |
| --SPID                  | `Type/id/_history/version` of the resource version the row came from (provenance)     |
| --DTC                   | the resource's own date as written (its precision, local clock time, no zone offset)  |
| --DY                    | date of --DTC − date of RFSTDTC, + 1 on and after day 0 (no day 0)                    |
| VISITNUM / VISIT        | the catalogue visit of the result's typed row (1, 2, …); outside every window: an unscheduled visit (previous visit + .01, .02 …) |
| EPOCH                   | SCREENING before the administration (findings on day 1 too), TREATMENT on day 1, FOLLOW-UP after |
| QS / LB                 | the catalogue measure: a LOINC code or category `laboratory` -> LB, else QS           |
| --TESTCD / --TEST       | the measure key (components: their code), made an 8-character SAS name / display      |
| --ORRES / --ORRESU      | the value and unit as sent; --STRESN/--STRESC/--STRESU in the catalogue's canonical unit |
| --BLFL                  | the result counted at the baseline visit (closest to its target day, on a tie the later) |
| LB.LBLOINC, ranges, LBNRIND | the LOINC coding sent; `referenceRange[0]`; `interpretation` else the range       |
| AE                      | `event` (MedDRA coding: AEDECOD/AEPTCD), `date`/`detected`, severity, seriousness, relatedness, outcome |
| DS                      | `ResearchSubject.status` withdrawn (the AE that caused it, if one) or completed        |
| EX                      | a MedicationAdministration or Procedure, else the arm's planned dose at day 0 (SUPPEX EXDERIV = Y) |
"""  # noqa: E501 (the mapping table is wider than the code)

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

from fhir_mappings.terminology import LOINC, MEDDRA, UNSCHEDULED, Catalogue, Measure

#: what goes in --SPID: the resource version a row came from
SPID_LENGTH = 200
ROUTES = {"263887005": "SUBCUTANEOUS", "47625008": "INTRAVENOUS", "78421000": "INTRAMUSCULAR",
          "26643006": "ORAL", "6064005": "TOPICAL", "372464004": "INTRADERMAL"}  # SNOMED CT route -> CDISC C66729
AE_OUTCOMES = {"resolved": "RECOVERED/RESOLVED", "recovering": "RECOVERING/RESOLVING",
               "ongoing": "NOT RECOVERED/NOT RESOLVED", "resolvedWithSequelae": "RECOVERED/RESOLVED WITH SEQUELAE",
               "fatal": "FATAL", "unknown": "UNKNOWN"}
SEX = {"male": "M", "female": "F", "other": "U", "unknown": "U"}
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
DEID_AGE = "https://trial-fhir.org/StructureDefinition/deidentified-age"
#: seriousness criteria (AE research backport IG extension codes, or SDTM names) -> SDTM variable
SERIOUSNESS_CRITERIA = {"death": "AESDTH", "results-in-death": "AESDTH", "life-threatening": "AESLIFE",
                        "is-life-threatening": "AESLIFE", "hospitalization": "AESHOSP",
                        "requires-or-prolongs-inpatient-hospitalization": "AESHOSP", "disability": "AESDISAB",
                        "results-in-persistent-or-significant-disability-or-incapacity": "AESDISAB",
                        "congenital-anomaly": "AESCONG", "is-a-congenital-anomaly-or-birth-defect": "AESCONG",
                        "important-medical-event": "AESMIE", "is-medically-important-event": "AESMIE"}
AE_CRITERIA_VARIABLES = ("AESCONG", "AESDISAB", "AESDTH", "AESHOSP", "AESLIFE", "AESMIE")
_DTC = re.compile(r"^(\d{4}(?:-\d{2}(?:-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?)?)?)")
_DOSE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(?:[×x*]\s*10\s*\^\s*([0-9]+))?\s*([A-Za-z][A-Za-z ]*)?")


# -- metadata ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variable:
    """One SDTM variable: name, label (≤ 40 characters), Dataset-JSON data type, key sequence, origin."""

    name: str
    label: str
    type: str = "string"  # string | integer | float
    key: int | None = None
    origin: str = "Collected"  # Define-XML origin: Collected | Derived | Assigned


def variables(spec: str) -> tuple[Variable, ...]:
    """Variables from lines `NAME|label|type|key|origin` (type, key and origin optional)."""
    out = []
    for line in spec.strip().splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|")]
        parts += [""] * (5 - len(parts))
        out.append(Variable(parts[0], parts[1], parts[2] or "string", int(parts[3]) if parts[3] else None,
                            parts[4] or "Collected"))
    return tuple(out)


_ID = """STUDYID|Study Identifier||1|Assigned
DOMAIN|Domain Abbreviation|||Assigned
USUBJID|Unique Subject Identifier||2|Derived"""
_VISIT = """VISITNUM|Visit Number|float||Derived
VISIT|Visit Name|||Derived
EPOCH|Epoch|||Derived"""


def _finding(prefix: str, extra: str, tail: str = "") -> str:
    p = prefix
    return f"""{_ID}
{p}SEQ|Sequence Number|integer||Derived
{p}SPID|Sponsor-Defined Identifier|||Assigned
{p}TESTCD|{"Question Short Name" if p == "QS" else "Lab Test or Examination Short Name"}||4|Assigned
{p}TEST|{"Question Name" if p == "QS" else "Lab Test or Examination Name"}|||Assigned
{p}CAT|{"Category of Question" if p == "QS" else "Category for Lab Test"}||3|Assigned
{extra}
{p}ORRES|{"Finding in Original Units" if p == "QS" else "Result or Finding in Original Units"}
{p}ORRESU|Original Units
{p}STRESC|Character Result/Finding in Std Format|||Derived
{p}STRESN|Numeric Result/Finding in Standard Units|float||Derived
{p}STRESU|Standard Units|||Derived
{tail}
{p}BLFL|Baseline Flag|||Derived
{_VISIT.replace("VISITNUM|Visit Number|float||Derived", "VISITNUM|Visit Number|float|5|Derived")}
{p}DTC|{"Date/Time of Finding" if p == "QS" else "Date/Time of Specimen Collection"}||6
{p}DY|{"Study Day of Finding" if p == "QS" else "Study Day of Specimen Collection"}|integer||Derived"""


DOMAINS: dict[str, tuple[str, tuple[Variable, ...]]] = {
    "DM": ("Demographics", variables(f"""{_ID}
SUBJID|Subject Identifier for the Study|||Assigned
RFSTDTC|Subject Reference Start Date/Time
RFENDTC|Subject Reference End Date/Time
RFXSTDTC|Date/Time of First Study Treatment|||Derived
RFXENDTC|Date/Time of Last Study Treatment|||Derived
SITEID|Study Site Identifier
BRTHDTC|Date/Time of Birth
AGE|Age|integer||Derived
AGEU|Age Units|||Assigned
SEX|Sex
RACE|Race
ETHNIC|Ethnicity
ARMCD|Planned Arm Code|||Assigned
ARM|Description of Planned Arm|||Assigned
ACTARMCD|Actual Arm Code|||Assigned
ACTARM|Description of Actual Arm|||Assigned
ARMNRS|Reason Arm and/or Actual Arm is Null|||Derived
COUNTRY|Country""")),
    "SV": ("Subject Visits", variables(f"""{_ID}
SVSPID|Sponsor-Defined Identifier|||Assigned
VISITNUM|Visit Number|float|3|Derived
VISIT|Visit Name|||Derived
EPOCH|Epoch|||Derived
SVSTDTC|Start Date/Time of Visit|||Derived
SVENDTC|End Date/Time of Visit|||Derived
SVSTDY|Study Day of Start of Visit|integer||Derived
SVENDY|Study Day of End of Visit|integer||Derived
SVUPDES|Description of Unplanned Visit|||Derived""")),
    "QS": ("Questionnaires", variables(_finding("QS", "QSSCAT|Subcategory for Question|||Assigned"))),
    "LB": ("Laboratory Test Results", variables(_finding("LB", "LBLOINC|LOINC Code", """
LBORNRLO|Reference Range Lower Limit in Orig Unit
LBORNRHI|Reference Range Upper Limit in Orig Unit
LBSTNRLO|Reference Range Lower Limit-Std Units|float||Derived
LBSTNRHI|Reference Range Upper Limit-Std Units|float||Derived
LBNRIND|Reference Range Indicator|||Derived"""))),
    "AE": ("Adverse Events", variables(f"""{_ID}
AESEQ|Sequence Number|integer||Derived
AESPID|Sponsor-Defined Identifier|||Assigned
AETERM|Reported Term for the Adverse Event
AEDECOD|Dictionary-Derived Term||3|Assigned
AEPTCD|Preferred Term Code|integer||Assigned
AESEV|Severity/Intensity
AESER|Serious Event
AEACN|Action Taken with Study Treatment|||Assigned
AEACNOTH|Other Action Taken
AEREL|Causality
AEOUT|Outcome of Adverse Event
AESCONG|Congenital Anomaly or Birth Defect
AESDISAB|Persist or Signif Disability/Incapacity
AESDTH|Results in Death
AESHOSP|Requires or Prolongs Hospitalization
AESLIFE|Is Life Threatening
AESMIE|Other Medically Important Serious Event
EPOCH|Epoch|||Derived
AESTDTC|Start Date/Time of Adverse Event||4
AEENDTC|End Date/Time of Adverse Event
AESTDY|Study Day of Start of Adverse Event|integer||Derived
AEENDY|Study Day of End of Adverse Event|integer||Derived""")),
    "DS": ("Disposition", variables(f"""{_ID}
DSSEQ|Sequence Number|integer||Derived
DSSPID|Sponsor-Defined Identifier|||Assigned
DSTERM|Reported Term for the Disposition Event
DSDECOD|Standardized Disposition Term||4|Derived
DSCAT|Category for Disposition Event||3|Assigned
EPOCH|Epoch|||Derived
DSSTDTC|Start Date/Time of Disposition Event||5
DSSTDY|Study Day of Start of Disposition Event|integer||Derived""")),
    "EX": ("Exposure", variables(f"""{_ID}
EXSEQ|Sequence Number|integer||Derived
EXSPID|Sponsor-Defined Identifier|||Assigned
EXTRT|Name of Treatment||3
EXDOSE|Dose|float
EXDOSTXT|Dose Description
EXDOSU|Dose Units
EXROUTE|Route of Administration
EPOCH|Epoch|||Derived
EXSTDTC|Start Date/Time of Treatment||4
EXSTDY|Study Day of Start of Treatment|integer||Derived""")),
    "TA": ("Trial Arms", variables("""STUDYID|Study Identifier||1|Assigned
DOMAIN|Domain Abbreviation|||Assigned
ARMCD|Planned Arm Code||2|Assigned
ARM|Description of Planned Arm|||Assigned
TAETORD|Planned Order of Element within Arm|integer|3|Assigned
ETCD|Element Code|||Assigned
ELEMENT|Description of Element|||Assigned
EPOCH|Epoch|||Assigned""")),
    "TE": ("Trial Elements", variables("""STUDYID|Study Identifier||1|Assigned
DOMAIN|Domain Abbreviation|||Assigned
ETCD|Element Code||2|Assigned
ELEMENT|Description of Element|||Assigned
TESTRL|Rule for Start of Element|||Assigned
TEENRL|Rule for End of Element|||Assigned""")),
    "TV": ("Trial Visits", variables("""STUDYID|Study Identifier||1|Assigned
DOMAIN|Domain Abbreviation|||Assigned
VISITNUM|Visit Number|float|2|Assigned
VISIT|Visit Name|||Assigned
VISITDY|Planned Study Day of Visit|integer||Assigned
TVSTRL|Visit Start Rule|||Assigned
TVENRL|Visit End Rule|||Assigned""")),
    "TS": ("Trial Summary", variables("""STUDYID|Study Identifier||1|Assigned
DOMAIN|Domain Abbreviation|||Assigned
TSSEQ|Sequence Number|integer|3|Assigned
TSPARMCD|Trial Summary Parameter Short Name||2|Assigned
TSPARM|Trial Summary Parameter|||Assigned
TSVAL|Parameter Value|||Assigned""")),
}
_SUPP = variables("""STUDYID|Study Identifier||1|Assigned
RDOMAIN|Related Domain Abbreviation||2|Assigned
USUBJID|Unique Subject Identifier||3|Derived
IDVAR|Identifying Variable||4|Assigned
IDVARVAL|Identifying Variable Value||5|Derived
QNAM|Qualifier Variable Name||6|Assigned
QLABEL|Qualifier Variable Label|||Assigned
QVAL|Data Value|||Derived
QORIG|Origin|||Assigned""")
for _parent in ("DM", "EX"):
    DOMAINS[f"SUPP{_parent}"] = (f"Supplemental Qualifiers for {_parent}", _SUPP)
#: subject domains (one pass over the subjects), then trial design domains (from the study), then SUPP--
SUBJECT_DOMAINS = ("DM", "SV", "QS", "LB", "AE", "DS", "EX", "SUPPDM", "SUPPEX")
DESIGN_DOMAINS = ("TS", "TA", "TE", "TV")
ALL_DOMAINS = tuple(sorted(SUBJECT_DOMAINS + DESIGN_DOMAINS))


# -- inputs -----------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Source:
    """One stored resource version a row comes from (`last_updated`: read only where it is needed)."""

    resource_type: str
    id: str
    version: int
    last_updated: datetime | None
    content: dict[str, Any]

    @property
    def spid(self) -> str:
        return f"{self.resource_type}/{self.id}/_history/{self.version}"


@dataclass(slots=True)
class Result:
    """A counted result: its Observation and the facts of its typed row (measurement)."""

    source: Source
    measure: str
    value: float
    unit: str
    original_value: str
    original_unit: str
    study_day: int | None
    visit: str
    effective: datetime | None


@dataclass(slots=True)
class Event:
    """An actual adverse event and the facts of its typed row."""

    source: Source
    related: bool
    caused_withdrawal: bool


@dataclass(slots=True)
class Dosing:
    """A completed MedicationAdministration or Procedure."""

    source: Source
    dose_value: float | None
    dose_unit: str | None
    route_code: str | None


@dataclass
class Subject:
    """An enrolled subject: ResearchSubject, Patient, and what of theirs the domains show."""

    enrolment: Source
    patient: Source | None
    status: str
    assigned_arm: str | None
    actual_arm: str | None
    results: list[Result] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    dosings: list[Dosing] = field(default_factory=list)


@dataclass(frozen=True)
class Design:
    """What every row of a study needs: its STUDYID, catalogue, arms and the test codes of its measures."""

    studyid: str
    study: Source
    catalogue: Catalogue
    arms: tuple[tuple[str, str | None], ...]  # (name, description) in ResearchStudy order
    completed_statuses: tuple[str, ...] = ("off-study", "follow-up")

    @property
    def baseline(self) -> str | None:
        visits = self.catalogue.visits
        if not visits:
            return None
        found = next((v for v in visits if v.name == "baseline"), None) or next(
            (v for v in visits if v.target_day == 0), visits[0])
        return found.name

    def visit_numbers(self) -> dict[str, int]:
        return self._numbers

    @cached_property
    def _numbers(self) -> dict[str, int]:
        ordered = sorted(self.catalogue.visits, key=lambda v: (v.target_day, v.name))
        return {v.name: i + 1 for i, v in enumerate(ordered)}

    @cached_property
    def measures(self) -> dict[str, Measure]:
        return {m.key: m for m in self.catalogue.measures}

    @cached_property
    def domains(self) -> dict[str, str]:
        """Measure key -> QS or LB."""
        return {m.key: self.domain_of(m) for m in self.catalogue.measures}

    @cached_property
    def displays(self) -> dict[str, str]:
        return {c["code"]: c.get("display", c["code"]) for c in self.catalogue.code_system.get("concept", ())}

    def domain_of(self, measure: Measure) -> str:
        """LB for a laboratory measure (a LOINC code, or the category `laboratory`), else QS."""
        if measure.category == "laboratory" or any(system == LOINC for system, _ in measure.codes):
            return "LB"
        return "QS"

    def test_codes(self) -> dict[str, str]:
        """Every measure key and component code of the catalogue -> its --TESTCD (unique 8-character SAS name)."""
        return self._codes

    @cached_property
    def _codes(self) -> dict[str, str]:
        names = [m.key for m in self.catalogue.measures]
        names += [c["code"] for c in self.catalogue.code_system.get("concept", ()) if c["code"] not in names]
        return sas_names(names)

    def arm_code(self, arm: str | None) -> str:
        return "" if not arm else re.sub(r"[^A-Z0-9]+", "_", arm.upper()).strip("_")[:20]

    def arm_description(self, arm: str | None) -> str:
        if not arm:
            return ""
        description = dict(self.arms).get(arm)
        return f"{arm} ({description})" if description else arm


def sas_names(names: Sequence[str], width: int = 8) -> dict[str, str]:
    """Each name as a SAS name of at most `width` characters (letters, digits; a letter first), unique: the
    longest word shortened one character at a time until it fits, then a clash numbered."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        words = [w for w in re.split(r"[^A-Z0-9]+", name.upper()) if w] or ["X"]
        while sum(map(len, words)) > width and max(map(len, words)) > 1:
            i = max(range(len(words)), key=lambda k: (len(words[k]), -k))
            words[i] = words[i][:-1]
        code = "".join(words)[:width]
        if not code[0].isalpha():
            code = ("X" + code)[:width]
        base, n = code, 1
        while code in used:
            suffix = str(n)
            code = base[:width - len(suffix)] + suffix
            n += 1
        used.add(code)
        out[name] = code
    return out


# -- values ---------------------------------------------------------------------------------------------------

def dtc(value: Any) -> str:
    """A FHIR date/dateTime as an SDTM --DTC: its own precision, the local clock time, no zone offset."""
    if not isinstance(value, str):
        return ""
    found = _DTC.match(value)
    return found.group(1) if found else ""


def study_day(value: str, reference: str) -> int | None:
    """--DY: days from RFSTDTC, day 1 on the reference date, no day 0; None unless both are full dates."""
    if len(value) < 10 or len(reference) < 10:
        return None
    try:
        days = (date.fromisoformat(value[:10]) - date.fromisoformat(reference[:10])).days
    except ValueError:
        return None
    return days + 1 if days >= 0 else days


def epoch(day: int | None, *, finding: bool = False) -> str:
    """SCREENING before the administration (day 1), TREATMENT on it, FOLLOW-UP after; a finding on day 1 is
    pre-dose (the baseline visit ends on day 0 of the catalogue, the administration's day)."""
    if day is None:
        return ""
    if day < 1 or (finding and day == 1):
        return "SCREENING"
    return "TREATMENT" if day == 1 else "FOLLOW-UP"


def number(value: Any) -> str:
    """A number as --ORRES/--STRESC text: as short as it reads (1016.5, 7, 0.35)."""
    if value is None:
        return ""
    if isinstance(value, float) and value == value:  # the common case, without Decimal
        text = repr(value)
        if "e" not in text and "n" not in text:
            return text[:-2] if text.endswith(".0") else text
    elif isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    try:
        text = format(Decimal(str(value)).normalize(), "f")
    except InvalidOperation:
        return str(value)
    return text


def _unit(unit: str | None) -> str:
    """A UCUM unit as SDTM shows it: an annotation only (`{score}`) or `1` is no unit."""
    if not unit or unit == "1" or (unit.startswith("{") and unit.endswith("}")):
        return ""
    return unit


def _coding(concept: Any, system: str | None = None) -> dict[str, Any]:
    for coding in (concept or {}).get("coding") or ():
        if system is None or coding.get("system") == system:
            return dict(coding)
    return {}


def _text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    coding = _coding(concept)
    return str(concept.get("text") or coding.get("display") or coding.get("code") or "")


def _ext(resource: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [e for e in resource.get("extension") or () if isinstance(e, dict) and e.get("url") == url]


def _omb(patient: dict[str, Any], url: str) -> str:
    for ext in _ext(patient, url):
        for part in ext.get("extension") or ():
            if part.get("url") == "ombCategory" and isinstance(part.get("valueCoding"), dict):
                return str(part["valueCoding"].get("display") or part["valueCoding"].get("code") or "").upper()
        for part in ext.get("extension") or ():
            if part.get("url") == "text" and part.get("valueString"):
                return str(part["valueString"]).upper()
    return ""


def age_at(birth: str, at: str) -> int | None:
    """Whole years from a birth date (a year only: its 1 July) to a full date."""
    if len(birth) < 4 or len(at) < 10:
        return None
    try:
        born = date.fromisoformat(birth) if len(birth) >= 10 else date(int(birth[:4]), 7 if len(birth) == 4
                                                                           else int(birth[5:7]), 1)
        when = date.fromisoformat(at[:10])
    except ValueError:
        return None
    return when.year - born.year - ((when.month, when.day) < (born.month, born.day))


def planned_dose(description: str | None) -> tuple[float | None, str]:
    """(dose, unit) from an arm's description such as `2.5 × 10^7 cells`; (None, '') when it says no dose."""
    found = _DOSE.search(description or "")
    if not found:
        return None, ""
    value = float(found.group(1)) * (10 ** int(found.group(2)) if found.group(2) else 1)
    return value, (found.group(3) or "").strip().upper()


# -- rows ---------------------------------------------------------------------------------------------------

Row = dict[str, Any]


@dataclass
class SubjectRows:
    """One subject's rows per domain, whether the subject completed, and its RFSTDTC."""

    rows: dict[str, list[Row]]
    completed: bool
    rfstdtc: str
    #: id() of each Result -> (domain, --SEQ) of its row: ADaM's SRCDOM/SRCSEQ
    seq_of: dict[int, tuple[str, int]] = field(default_factory=dict)


def subject_rows(design: Design, subject: Subject) -> SubjectRows:
    """Every subject domain's rows of one subject, --SEQ numbered from 1 in each domain."""
    rs = subject.enrolment.content
    period = rs.get("period") or {}
    rfstdtc, rfendtc = dtc(period.get("start")), dtc(period.get("end"))
    usubjid = f"{design.studyid}-{subject.enrolment.id}"
    base = {"STUDYID": design.studyid, "USUBJID": usubjid}
    out: dict[str, list[Row]] = {d: [] for d in SUBJECT_DOMAINS}

    # findings (QS, LB) and the visits they make (SV)
    seq_of: dict[int, tuple[str, int]] = {}
    findings, visits, has_last = _findings(design, subject, base, rfstdtc, seq_of)
    for row in findings:
        out[row["DOMAIN"]].append(row)
    out["SV"] = visits

    # exposure: what the site sent, else the planned dose at day 0 (derived)
    exposures = _exposures(design, subject, base, rfstdtc)
    out["EX"] = [r for r, _ in exposures]
    for row, derived in exposures:
        if derived:
            out["SUPPEX"].append({**_supp(base, "EX", "EXSEQ", row["EXSEQ"]), "QNAM": "EXDERIV",
                                  "QLABEL": "Derived From Planned Arm Dose", "QVAL": "Y", "QORIG": "Derived"})

    # adverse events
    withdrawal_event = None
    for i, event in enumerate(sorted(subject.events, key=_event_key)):
        row = _adverse_event(design, event, base, rfstdtc, i + 1)
        out["AE"].append(row)
        if event.caused_withdrawal and withdrawal_event is None:
            withdrawal_event = row

    # disposition
    completed = subject.status != "withdrawn" and (subject.status in design.completed_statuses or has_last)
    if subject.status == "withdrawn" or completed:
        term = "COMPLETED" if completed else ("ADVERSE EVENT" if withdrawal_event else "WITHDRAWN")
        decod = "COMPLETED" if completed else ("ADVERSE EVENT" if withdrawal_event else "OTHER")
        if withdrawal_event is not None and not completed:
            term = withdrawal_event["AETERM"]
        day = study_day(rfendtc, rfstdtc)
        out["DS"].append({**base, "DOMAIN": "DS", "DSSEQ": 1, "DSSPID": subject.enrolment.spid, "DSTERM": term,
                          "DSDECOD": decod, "DSCAT": "DISPOSITION EVENT", "EPOCH": epoch(day),
                          "DSSTDTC": rfendtc, "DSSTDY": day})

    # demographics
    out["DM"].append(_demographics(design, subject, base, rfstdtc, rfendtc, out["EX"]))
    for qnam, label, source in (("SRCSUBJ", "Source ResearchSubject Version", subject.enrolment),
                                ("SRCPAT", "Source Patient Version", subject.patient)):
        if source is not None:
            out["SUPPDM"].append({**_supp(base, "DM", "", ""), "QNAM": qnam, "QLABEL": label, "QVAL": source.spid,
                                  "QORIG": "Assigned"})
    for domain, rows in out.items():
        for row in rows:
            row.setdefault("DOMAIN", domain)
    return SubjectRows(out, completed, rfstdtc, seq_of)


def _supp(base: Row, rdomain: str, idvar: str, idvarval: Any) -> Row:
    return {"STUDYID": base["STUDYID"], "RDOMAIN": rdomain, "USUBJID": base["USUBJID"], "IDVAR": idvar,
            "IDVARVAL": "" if idvarval == "" else str(idvarval)}


def effective_dtc(content: dict[str, Any]) -> str:
    return dtc(content.get("effectiveDateTime") or (content.get("effectivePeriod") or {}).get("start")
               or content.get("effectiveInstant"))


def choice_key(result: Result, target: int) -> tuple[float, ...]:
    """The summaries' choice among several values in a window: closest to the target day, on a tie the later
    (day, then instant), on the very same instant the smaller value; smallest key wins."""
    day = result.study_day if result.study_day is not None else 10**6
    stamp = result.effective.timestamp() if result.effective is not None else 0.0
    return (abs(day - target), -day, -stamp, result.value)


#: the findings domains' prefixed variable names (QSSEQ, LBSEQ, …), made once
_KEYS = {p: {k: f"{p}{k}" for k in ("SEQ", "SPID", "TESTCD", "TEST", "CAT", "SCAT", "ORRES", "ORRESU", "STRESC",
                                     "STRESN", "STRESU", "BLFL", "DTC", "DY")} for p in ("QS", "LB")}


def _findings(design: Design, subject: Subject, base: Row, rfstdtc: str, seq_of: dict[int, tuple[str, int]]
              ) -> tuple[list[Row], list[Row], bool]:
    """QS and LB rows (a result, then its components), the SV rows of the visits they make, and whether the
    subject has a counted result at the last planned visit."""
    catalogue = design.catalogue
    numbers = design.visit_numbers()
    targets = {v.name: v.target_day for v in catalogue.visits}
    codes = design.test_codes()
    order = {m.key: i for i, m in enumerate(catalogue.measures)}
    displays = design.displays
    domains = design.domains
    last = max(catalogue.visits, key=lambda v: v.target_day).name if catalogue.visits else None
    when_of = {id(r): effective_dtc(r.source.content) for r in subject.results}

    # the baseline result of each measure (its --BLFL)
    baseline, flagged = design.baseline, set()
    if baseline is not None:
        best: dict[str, Result] = {}
        for r in subject.results:
            if r.visit == baseline and (r.measure not in best or choice_key(r, targets[baseline])
                                        < choice_key(best[r.measure], targets[baseline])):
                best[r.measure] = r
        flagged = {id(r) for r in best.values()}

    # unscheduled visits: previous planned visit + .01, .02, … by date
    unscheduled: dict[str, float] = {}
    per_prev: dict[int, list[str]] = {}
    for r in subject.results:
        if r.visit == UNSCHEDULED:
            on = when_of[id(r)][:10]
            prev = sum(1 for v in catalogue.visits if r.study_day is not None and v.target_day <= r.study_day)
            if on not in per_prev.setdefault(prev, []):
                per_prev[prev].append(on)
    for prev, dates in per_prev.items():
        for j, on in enumerate(sorted(dates)):
            unscheduled[f"{prev}|{on}"] = round(prev + 0.01 * (j + 1), 2)

    def visit_of(r: Result) -> tuple[float, str]:
        if r.visit in numbers:
            return float(numbers[r.visit]), r.visit.replace("-", " ").upper()
        prev = sum(1 for v in catalogue.visits if r.study_day is not None and v.target_day <= r.study_day)
        num = unscheduled[f"{prev}|{when_of[id(r)][:10]}"]
        return num, f"UNSCHEDULED {num:.2f}"

    rows: list[Row] = []
    sv: dict[float, Row] = {}
    has_last = False
    ordered = sorted(subject.results, key=lambda r: (domains[r.measure], order.get(r.measure, 99), when_of[id(r)],
                                                     r.source.id))
    seq = {"QS": 0, "LB": 0}
    for r in ordered:
        measure = design.measures[r.measure]
        domain = domains[r.measure]
        K = _KEYS[domain]
        content = r.source.content
        when = when_of[id(r)]
        day = study_day(when, rfstdtc)
        visitnum, visit = visit_of(r)
        has_last |= r.visit == last
        common = {**base, "DOMAIN": domain, K["SPID"]: r.source.spid, K["CAT"]: measure.key,
                  K["BLFL"]: "Y" if id(r) in flagged else "", "VISITNUM": visitnum, "VISIT": visit,
                  "EPOCH": epoch(day, finding=True), K["DTC"]: when, K["DY"]: day}
        seq[domain] += 1
        seq_of[id(r)] = (domain, seq[domain])
        row = {**common, K["SEQ"]: seq[domain], K["TESTCD"]: codes[measure.key], K["TEST"]: measure.display[:40],
               K["ORRES"]: r.original_value, K["ORRESU"]: _unit(r.original_unit), K["STRESC"]: number(r.value),
               K["STRESN"]: r.value, K["STRESU"]: _unit(r.unit)}
        if domain == "LB":
            row.update(_lab(measure, content, r))
        else:
            row["QSSCAT"] = ""
        rows.append(row)
        for comp in content.get("component") or ():
            coding = _coding(comp.get("code"))
            code = coding.get("code")
            quantity = comp.get("valueQuantity") or {}
            value = quantity.get("value", comp.get("valueInteger"))
            if not code or value is None:
                continue
            seq[domain] += 1
            unit = _unit(quantity.get("code") or quantity.get("unit"))
            crow = {**common, K["SEQ"]: seq[domain], K["TESTCD"]: codes.get(code) or sas_names([code])[code],
                    K["TEST"]: str(displays.get(code) or coding.get("display") or code)[:40],
                    K["ORRES"]: number(value), K["ORRESU"]: unit, K["STRESC"]: number(value),
                    K["STRESN"]: float(value), K["STRESU"]: unit}
            if domain == "LB":
                crow.update({"LBLOINC": coding.get("code", "") if coding.get("system") == LOINC else "",
                             "LBORNRLO": "", "LBORNRHI": "", "LBSTNRLO": None, "LBSTNRHI": None, "LBNRIND": ""})
            else:
                crow["QSSCAT"] = measure.key
            rows.append(crow)
        # the visit, dated by its results
        date_ = when[:10]
        visit_row = sv.get(visitnum)
        if visit_row is None:
            sv[visitnum] = {**base, "DOMAIN": "SV", "SVSPID": r.source.spid, "VISITNUM": visitnum, "VISIT": visit,
                            "EPOCH": epoch(day, finding=True), "SVSTDTC": date_, "SVENDTC": date_, "SVSTDY": day,
                            "SVENDY": day, "SVUPDES": "" if r.visit in numbers else
                            "Results dated outside every visit window"}
        elif date_:
            if not visit_row["SVSTDTC"] or date_ < visit_row["SVSTDTC"]:
                visit_row.update(SVSTDTC=date_, SVSTDY=day, SVSPID=r.source.spid, EPOCH=epoch(day, finding=True))
            if date_ > visit_row["SVENDTC"]:
                visit_row.update(SVENDTC=date_, SVENDY=day)
    return rows, [sv[k] for k in sorted(sv)], has_last


def _lab(measure: Measure, content: dict[str, Any], r: Result) -> Row:
    """LBLOINC, reference range (original and standard units) and LBNRIND of one lab result."""
    loinc = _coding(content.get("code"), LOINC).get("code") or next(
        (c for s, c in measure.codes if s == LOINC), "")
    ranges = content.get("referenceRange") or [{}]
    low, high = ranges[0].get("low") or {}, ranges[0].get("high") or {}

    def standard(q: dict[str, Any]) -> float | None:
        if q.get("value") is None:
            return None
        converted = measure.to_canonical(Decimal(str(q["value"])), q.get("code") or q.get("unit") or r.original_unit)
        return None if converted is None else float(converted)

    stlo, sthi = standard(low), standard(high)
    flag = _coding((content.get("interpretation") or [{}])[0]).get("code", "")
    indicator = {"L": "LOW", "LL": "LOW", "H": "HIGH", "HH": "HIGH", "N": "NORMAL", "A": "ABNORMAL"}.get(flag, "")
    if not indicator and (stlo is not None or sthi is not None):
        indicator = "LOW" if stlo is not None and r.value < stlo else \
            "HIGH" if sthi is not None and r.value > sthi else "NORMAL"
    return {"LBLOINC": loinc, "LBORNRLO": number(low.get("value")), "LBORNRHI": number(high.get("value")),
            "LBSTNRLO": stlo, "LBSTNRHI": sthi, "LBNRIND": indicator}


def _event_key(event: Event) -> tuple[str, str]:
    c = event.source.content
    return dtc(c.get("date") or c.get("detected")), event.source.id


def _adverse_event(design: Design, event: Event, base: Row, rfstdtc: str, seq: int) -> Row:
    c = event.source.content
    meddra = _coding(c.get("event"), MEDDRA)
    start = dtc(c.get("date") or c.get("detected"))
    end = ""
    for ext in c.get("extension") or ():
        if str(ext.get("url", "")).endswith("resolveDate"):
            end = dtc(ext.get("valueDateTime"))
    serious = _coding(c.get("seriousness")).get("code")
    criteria = {v: "" for v in AE_CRITERIA_VARIABLES}
    if serious == "serious":
        criteria = {v: "N" for v in AE_CRITERIA_VARIABLES}
        for ext in c.get("extension") or ():
            if str(ext.get("url", "")).endswith("seriousness-criteria"):
                for part in [ext, *(ext.get("extension") or ())]:
                    code = _coding(part.get("valueCodeableConcept")).get("code")
                    if code in SERIOUSNESS_CRITERIA:
                        criteria[SERIOUSNESS_CRITERIA[code]] = "Y"
        if _coding(c.get("outcome")).get("code") == "fatal":
            criteria["AESDTH"] = "Y"
    day = study_day(start, rfstdtc)
    return {**base, "DOMAIN": "AE", "AESEQ": seq, "AESPID": event.source.spid,
            "AETERM": _text(c.get("event"))[:200], "AEDECOD": str(meddra.get("display") or _text(c.get("event")))
            .upper()[:200], "AEPTCD": int(meddra["code"]) if str(meddra.get("code", "")).isdigit() else None,
            "AESEV": str(_coding(c.get("severity")).get("code") or "").upper(),
            "AESER": {"serious": "Y", "non-serious": "N"}.get(str(serious), ""),
            "AEACN": "NOT APPLICABLE" if day is not None and day > 1 else "",
            "AEACNOTH": "SUBJECT DISCONTINUED FROM STUDY" if event.caused_withdrawal else "",
            "AEREL": "RELATED" if event.related else "NOT RELATED",
            "AEOUT": AE_OUTCOMES.get(str(_coding(c.get("outcome")).get("code")), ""), **criteria,
            "EPOCH": epoch(day), "AESTDTC": start, "AEENDTC": end, "AESTDY": day,
            "AEENDY": study_day(end, rfstdtc)}


def _treatment(design: Design) -> str:
    focus = design.study.content.get("focus") or []
    return _text(focus[0]).upper()[:200] if focus else ""


def _exposures(design: Design, subject: Subject, base: Row, rfstdtc: str) -> list[tuple[Row, bool]]:
    out: list[tuple[Row, bool]] = []
    dosings = sorted(subject.dosings, key=lambda d: (_dosing_date(d), d.source.id))
    for i, d in enumerate(dosings):
        c = d.source.content
        start = _dosing_date(d)
        day = study_day(start, rfstdtc)
        name = _text(c.get("medicationCodeableConcept") or c.get("code")).upper()[:200] or _treatment(design)
        out.append(({**base, "DOMAIN": "EX", "EXSEQ": i + 1, "EXSPID": d.source.spid, "EXTRT": name,
                     "EXDOSE": d.dose_value, "EXDOSTXT": "", "EXDOSU": (d.dose_unit or "").strip("{}").upper(),
                     "EXROUTE": ROUTES.get(d.route_code or "", ""), "EPOCH": epoch(day), "EXSTDTC": start,
                     "EXSTDY": day}, False))
    arm = subject.actual_arm or subject.assigned_arm
    if not out and arm and rfstdtc:
        description = dict(design.arms).get(arm)
        dose, unit = planned_dose(description)
        out.append(({**base, "DOMAIN": "EX", "EXSEQ": 1, "EXSPID": subject.enrolment.spid,
                     "EXTRT": _treatment(design) or design.arm_description(arm).upper()[:200], "EXDOSE": dose,
                     "EXDOSTXT": "" if dose is not None else (description or ""), "EXDOSU": unit, "EXROUTE": "",
                     "EPOCH": "TREATMENT", "EXSTDTC": rfstdtc, "EXSTDY": study_day(rfstdtc, rfstdtc)}, True))
    return out


def _dosing_date(d: Dosing) -> str:
    c = d.source.content
    return dtc(c.get("effectiveDateTime") or (c.get("effectivePeriod") or {}).get("start")
               or c.get("performedDateTime") or (c.get("performedPeriod") or {}).get("start"))


def _demographics(design: Design, subject: Subject, base: Row, rfstdtc: str, rfendtc: str,
                  exposures: list[Row]) -> Row:
    patient = subject.patient.content if subject.patient is not None else {}
    birth = dtc(patient.get("birthDate"))
    age = age_at(birth, rfstdtc) if birth else None
    if any(e.get("valueString") == "90+" for e in _ext(patient, DEID_AGE)):
        age = 90
    address = (patient.get("address") or [{}])[0]
    org = patient.get("managingOrganization") or {}
    site = str(org.get("reference") or "").rsplit("/", 1)[-1] or str((org.get("identifier") or {}).get("value") or "")
    actual = subject.actual_arm
    dates = sorted(e["EXSTDTC"] for e in exposures if e["EXSTDTC"])
    return {**base, "DOMAIN": "DM", "SUBJID": subject.enrolment.id, "RFSTDTC": rfstdtc, "RFENDTC": rfendtc,
            "RFXSTDTC": dates[0] if dates else "", "RFXENDTC": dates[-1] if dates else "", "SITEID": site,
            "BRTHDTC": birth, "AGE": age, "AGEU": "YEARS" if age is not None else "",
            "SEX": SEX.get(str(patient.get("gender")), ""), "RACE": _omb(patient, US_CORE_RACE),
            "ETHNIC": _omb(patient, US_CORE_ETHNICITY), "ARMCD": design.arm_code(subject.assigned_arm),
            "ARM": design.arm_description(subject.assigned_arm), "ACTARMCD": design.arm_code(actual),
            "ACTARM": design.arm_description(actual),
            "ARMNRS": "" if subject.assigned_arm and actual else ("NOT ASSIGNED" if not subject.assigned_arm
                                                                   else "ACTUAL ARM NOT RECORDED"),
            "COUNTRY": str(address.get("country") or "")}


# -- trial design ------------------------------------------------------------------------------------------

def design_rows(design: Design, subjects: int, first_day0: str) -> dict[str, list[Row]]:
    """TS, TA, TE and TV of the study: its title and registry number, its arms (screening, the arm's
    administration, follow-up), the elements, and the catalogue's visit windows."""
    sid = design.studyid
    study = design.study.content
    elements = [("SCRN", "Screening", "Informed consent", "Day of the administration"),
                *[(design_code, f"Administration: {design.arm_description(name)}"[:200],
                   "Day of the administration (day 1)", "End of the day of the administration")
                  for name, design_code in zip((a for a, _ in design.arms), _element_codes(design), strict=True)],
                ("FU", "Follow-up", "Day after the administration", "End of study participation")]
    te = [{"STUDYID": sid, "DOMAIN": "TE", "ETCD": c, "ELEMENT": e, "TESTRL": s, "TEENRL": n}
          for c, e, s, n in elements]
    ta: list[Row] = []
    for (name, _), code in zip(design.arms, _element_codes(design), strict=True):
        for order, (etcd, element, epoch_) in enumerate((("SCRN", "Screening", "SCREENING"),
                                                          (code, f"Administration: {design.arm_description(name)}",
                                                           "TREATMENT"), ("FU", "Follow-up", "FOLLOW-UP"))):
            ta.append({"STUDYID": sid, "DOMAIN": "TA", "ARMCD": design.arm_code(name),
                       "ARM": design.arm_description(name), "TAETORD": order + 1, "ETCD": etcd,
                       "ELEMENT": element[:200], "EPOCH": epoch_})
    numbers = design.visit_numbers()
    tv = [{"STUDYID": sid, "DOMAIN": "TV", "VISITNUM": float(numbers[v.name]), "VISIT": v.name.replace("-", " ")
           .upper(), "VISITDY": v.target_day + 1 if v.target_day >= 0 else v.target_day,
           "TVSTRL": f"Study day {v.first_day} after day 0 (window {v.first_day} to {v.last_day}, target "
                     f"{v.target_day})", "TVENRL": f"Study day {v.last_day} after day 0"}
          for v in sorted(design.catalogue.visits, key=lambda v: numbers[v.name])]
    params = [("TITLE", "Trial Title", str(study.get("title") or "")),
              ("REGID", "Registry Identifier", design.studyid if study.get("identifier") else ""),
              ("ACTSUB", "Actual Number of Subjects", str(subjects)),
              ("NARMS", "Planned Number of Arms", str(len(design.arms))),
              ("SSTDTC", "Study Start Date", first_day0),
              ("TRT", "Investigational Therapy or Treatment", _treatment(design))]
    ts = [{"STUDYID": sid, "DOMAIN": "TS", "TSSEQ": 1, "TSPARMCD": code, "TSPARM": label, "TSVAL": value[:200]}
          for code, label, value in params if value]
    return {"TS": ts, "TA": ta, "TE": te, "TV": tv}


def _element_codes(design: Design) -> list[str]:
    names = sas_names(["SCRN", "FU", *[f"T {a}" for a, _ in design.arms]])
    return [names[f"T {a}"] for a, _ in design.arms]


def studyid_of(study: dict[str, Any]) -> str:
    """STUDYID: the study's first identifier value (its registry number), else its id."""
    for ident in study.get("identifier") or ():
        if isinstance(ident, dict) and ident.get("value"):
            return str(ident["value"])
    return str(study.get("id") or "")


def row_values(domain: str, row: Row) -> list[Any]:
    """A row's values in the domain's variable order (a variable the row lacks: null)."""
    return [row.get(v.name) for v in DOMAINS[domain][1]]


def columns_of(domain: str) -> tuple[Variable, ...]:
    return DOMAINS[domain][1]


def all_rows(rows: Iterable[SubjectRows], domain: str) -> list[Row]:
    return [r for s in rows for r in s.rows.get(domain, ())]
