"""Code systems, value sets and the compiled measure catalogue: the trial's rules as data.

A study's catalogue is FHIR resources (ObservationDefinitions and a PlanDefinition: fhir_mappings/
catalogue_definition.py maps them), stored on the server and compiled into `Catalogue`: its measures (codes,
canonical UCUM unit, accepted units with their conversion, valid range, integer or not, composite scores), its
visit windows, which result statuses count, its responder definitions and safety keys, and each unit as people
write it (`[IU]/mL` is `IU/mL`, `10*3/uL` is `×10³/µL`), which the charts, the report, the dashboard, the CSV
and `trial-fhir summary` show instead of the UCUM code. The atopic dermatitis catalogue ships as such resources
in `catalogue/atopic-dermatitis/` and is the default; another disease is other resources, not new code.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
MEDDRA = "https://www.meddra.org"
AD_SCORES = "https://trial-fhir.org/CodeSystem/ad-scores"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
AE_SERIOUSNESS = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
AE_SEVERITY = "http://terminology.hl7.org/CodeSystem/adverse-event-severity"
AE_OUTCOME = "http://terminology.hl7.org/CodeSystem/adverse-event-outcome"
DISCONTINUED_EXT = "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/caused-subject-to-discontinue-study"
#: R4 core extension linking an event (here: an Observation) to the research study it belongs to
RESEARCH_STUDY_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"
SUBCUTANEOUS_ROUTE = (SNOMED, "263887005")
#: the trial's visits (baseline, week-4, week-12, unscheduled: a catalogue's visit names); an Observation's
#: `meta.tag` carries the one it was assigned
VISIT_SYSTEM = "https://trial-fhir.org/CodeSystem/visit"
#: study days (days since the subject's day 0, e.g. `28`, `-3`); an Observation's `meta.tag` carries its own
STUDY_DAY_SYSTEM = "https://trial-fhir.org/CodeSystem/study-day"

# Required bindings of the elements the service uses (FHIR R4 value sets).
OBSERVATION_STATUS = frozenset(
    {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"}
)
ADMINISTRATIVE_GENDER = frozenset({"male", "female", "other", "unknown"})
RESEARCH_STUDY_STATUS = frozenset({
    "active", "administratively-completed", "approved", "closed-to-accrual", "closed-to-accrual-and-intervention",
    "completed", "disapproved", "in-review", "temporarily-closed-to-accrual",
    "temporarily-closed-to-accrual-and-intervention", "withdrawn",
})
RESEARCH_SUBJECT_STATUS = frozenset({
    "candidate", "eligible", "follow-up", "ineligible", "not-registered", "off-study", "on-study",
    "on-study-intervention", "on-study-observation", "pending-on-study", "potential-candidate", "screening",
    "withdrawn",
})
ENCOUNTER_STATUS = frozenset({"planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled",
                              "entered-in-error", "unknown"})
MEDICATION_ADMIN_STATUS = frozenset({"in-progress", "not-done", "on-hold", "completed", "entered-in-error", "stopped",
                                     "unknown"})
EVENT_STATUS = frozenset({"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
                          "entered-in-error", "unknown"})  # Procedure.status
AE_ACTUALITY = frozenset({"actual", "potential"})
AE_SERIOUSNESS_CODES = {"serious": "serious", "non-serious": "non-serious"}  # lower-cased code -> canonical
AE_SEVERITY_CODES = frozenset({"mild", "moderate", "severe"})
AE_OUTCOME_CODES = frozenset({"resolved", "recovering", "ongoing", "resolvedWithSequelae", "fatal", "unknown"})
AE_CAUSALITY_ASSESS = "http://terminology.hl7.org/CodeSystem/adverse-event-causality-assess"
RELATEDNESS_SYSTEM = "https://trial-fhir.org/CodeSystem/relatedness"


def _relatedness(source: str) -> dict[str, bool]:
    """{causality code of `source`: counts as related} from the shipped ConceptMap `ae-relatedness` (data, not
    code: catalogue/ConceptMap-ae-relatedness.json)."""
    concept_map = json.loads((Path(__file__).parent / "catalogue" / "ConceptMap-ae-relatedness.json").read_text())
    return {e["code"]: e["target"][0]["code"] == "related" for g in concept_map["group"] if g["source"] == source
            for e in g["element"]}


#: NCIt relatedness codes of the AE research IG, and whether each counts as related
RELATEDNESS = _relatedness(NCIT)
#: R4's own WHO-UMC causality scale, and whether each counts as related: Conditional-Classified and
#: Unassessable-Unclassifiable do, the conservative reading safety reviewers use (DOMAIN.md)
WHO_UMC_RELATEDNESS = _relatedness(AE_CAUSALITY_ASSESS)


@dataclass(frozen=True, slots=True)
class Visit:
    name: str
    target_day: int
    first_day: int
    last_day: int


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a composite score: its variable in the expression (`%name`), its code in
    `Observation.component`, and its valid range."""

    name: str
    system: str
    code: str
    min: Decimal | None
    max: Decimal | None


@dataclass(frozen=True, slots=True)
class Composite:
    """A total computed from its parts: a FHIRPath expression over the parts' values (`%name`), compiled once
    (fhir_mappings/composite.py)."""

    expression: str
    parts: tuple[Part, ...]
    evaluate: Callable[[dict[str, Decimal]], Decimal | None] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Measure:
    key: str
    display: str
    codes: tuple[tuple[str, str], ...]
    unit: str
    units: dict[str, tuple[Decimal, Decimal]]  # accepted unit -> (multiplier, divisor) to the canonical unit
    min: Decimal | None
    max: Decimal | None
    integer: bool
    max_decimals: int | None
    parts: Composite | None
    category: str
    unit_display: str = ""  # the canonical unit as people write it (`IU/mL`, `×10³/µL`): its unit's `text`

    def to_canonical(self, value: Decimal, unit: str) -> Decimal | None:
        """`value` in `unit` converted to the canonical unit; None for a unit this measure does not accept."""
        factor = self.units.get(unit)
        if factor is None:
            return None
        multiplier, divisor = factor
        return value if multiplier == divisor else value * multiplier / divisor


@dataclass(frozen=True)
class Responder:
    """A responder (or success) definition on one catalogue measure (a `PlanDefinition.goal`): responder at a
    visit when every criterion set holds; `population` is the analysis population its rate is reported for."""

    key: str
    measure: str
    pct_change_at_most: float | None = None  # responder when % change ≤ this
    value_at_most: float | None = None  # … or when the visit value ≤ this
    drop_at_least: float | None = None  # … and baseline − visit ≥ this
    population: str = "observed"  # observed | non-responder-imputation


#: the safety table's rows a catalogue may list (`PlanDefinition` extension `safety-key`), in this order
SAFETY_KEYS = ("AE-ANY", "AE-SERIOUS", "AE-SEVERE", "AE-RELATED", "AE-WITHDRAWAL")
#: the day-0 rules a catalogue may name (extension `day-zero`): day 0 is the ResearchSubject's `period.start`
DAY_ZERO_RULES = ("research-subject-period-start",)


@dataclass(frozen=True)
class Catalogue:
    name: str
    title: str
    measures: tuple[Measure, ...]
    visits: tuple[Visit, ...]
    counted_statuses: frozenset[str]
    code_system: dict[str, Any]
    unit_displays: dict[str, str] = field(default_factory=dict)  # UCUM code -> how people write it
    responders: tuple[Responder, ...] = ()
    safety_keys: tuple[str, ...] = SAFETY_KEYS
    #: which version of the catalogue this is: the PlanDefinition's version id in this server (`1`, `2`, …);
    #: `shipped` when compiled from the package's files (the default catalogue not stored yet)
    version: str = "shipped"

    def unit_display(self, unit: str | None) -> str:
        """`unit` (a UCUM code) as people write it (`[IU]/mL` -> `IU/mL`, `10*3/uL` -> `×10³/µL`), from the
        catalogue's unit texts; a unit it does not name is shown as it is."""
        return self.unit_displays.get(unit or "", unit or "")

    def measure_for(self, system: str | None, code: str | None) -> Measure | None:
        return self._by_code().get((system or "", code or ""))

    def measure(self, key: str) -> Measure:
        return next(m for m in self.measures if m.key == key)

    @cache  # noqa: B019 (no leak: every Catalogue is kept by its cache anyway)
    def _by_code(self) -> dict[tuple[str, str], Measure]:
        return {code: m for m in self.measures for code in m.codes}

    def __hash__(self) -> int:
        return hash((self.name, self.version))

    def visit_for_day(self, day: int | None) -> str:
        """The visit whose window holds `day` (days since day 0), else `unscheduled`."""
        if day is not None:
            for visit in self.visits:
                if visit.first_day <= day <= visit.last_day:
                    return visit.name
        return UNSCHEDULED

    def target_day(self, visit: str) -> int | None:
        return next((v.target_day for v in self.visits if v.name == visit), None)


UNSCHEDULED = "unscheduled"
_CATALOGUE_DIR = Path(__file__).parent / "catalogue"
DEFAULT_CATALOGUE = "atopic-dermatitis"


def shipped_resources(name: str = DEFAULT_CATALOGUE) -> list[dict[str, Any]]:
    """The FHIR resources of a catalogue shipped in the package (`catalogue/<name>/*.json`): its CodeSystem,
    ObservationDefinitions and PlanDefinition (whose id is `name`)."""
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((_CATALOGUE_DIR / name).glob("*.json"))]


@cache
def load_catalogue(name: str = DEFAULT_CATALOGUE) -> Catalogue:
    """A shipped catalogue compiled from its resources in the package (the default one, before it is stored)."""
    from fhir_mappings.catalogue_definition import compile_catalogue

    resources = shipped_resources(name)
    plan = next(r for r in resources if r["resourceType"] == "PlanDefinition")
    definitions = {f"ObservationDefinition/{r['id']}": r for r in resources
                   if r["resourceType"] == "ObservationDefinition"}
    code_system = next((r for r in resources if r["resourceType"] == "CodeSystem"), {})
    return compile_catalogue(plan, definitions, version="shipped", code_system=code_system)


def catalogue_names() -> list[str]:
    """The catalogues shipped in the package."""
    return sorted(p.name for p in _CATALOGUE_DIR.iterdir() if p.is_dir())


def code_system_resource(catalogue: Catalogue) -> dict[str, Any]:
    """The catalogue's own CodeSystem as an R4 CodeSystem resource (dict)."""
    cs = catalogue.code_system
    if cs.get("resourceType") == "CodeSystem":
        return cs
    return {
        "resourceType": "CodeSystem",
        "id": cs["url"].rstrip("/").rsplit("/", 1)[-1],
        "url": cs["url"],
        "version": "1.0.0",
        "name": cs["name"],
        "title": cs["title"],
        "status": "active",
        "experimental": False,
        "publisher": "trial-fhir",
        "description": cs["description"],
        "caseSensitive": True,
        "content": "complete",
        "count": len(cs["concept"]),
        "concept": cs["concept"],
    }
