"""The demo trial's generator: writes `service/demo/data/demo-trial.json.gz` once; the service never runs it.

    python -m service.demo.generate           # (re)write the data file
    python -m service.demo.generate --check   # exit 1 when the data file is not what the generator makes

Nothing here is real patient data. Every patient is called "… Demo", carries an identifier in the
`https://trial-fhir.org/demo/…` systems and every resource is tagged `HTEST` (test health data). The studies carry
the real trial's registry number (NCT01927705) so the demo reads like the trial it imitates.

The design follows the publication (Kim et al., Stem Cells 2017;35:248–255): 34 adults with moderate-to-severe
atopic dermatitis, one subcutaneous dose of 2.5 × 10^7 (`low-dose`) or 5.0 × 10^7 (`high-dose`) hUCB-MSCs:

* phase I (dose escalation, followed to week 4): 7 subjects, 3 low dose then 4 high dose; a ResearchStudy
  `partOf` the phase IIa one;
* phase IIa (randomised, followed to week 12): 27 subjects, 14 low dose and 13 high dose, of whom 3 and 2
  withdraw before the administration (no day 0: their screening results stay `unscheduled`), so 11 per arm
  are dosed and evaluable; this study carries the registry number. In each arm one dosed subject misses week 4.

At week 12 of phase IIa: EASI-50 in exactly 6/11 high-dose and 4/11 low-dose subjects (55% and 36%, as
published); high-dose mean % change from baseline IGA −33, SCORAD −50, pruritus −58 (to the published whole
per cent); IgE and eosinophils fall; the low dose improves less. Mild or moderate, non-serious adverse events,
injection-site ones related to the product; nobody withdraws because of one.

Results come in the forms labs send them: IgE in `[IU]/mL`, `kU/L` or `ng/mL`, eosinophils in `10*3/uL`, `/uL`
or `10*9/L`; EASI with its 20 parts and SCORAD with A/B/C for every fifth subject; local times with an offset;
two results sent `preliminary` and made `final` later, one `final` result `corrected` later (a conditional
update in the last Bundle), one preliminary result never finalised, and an unscheduled visit (day 56).

The file is a FHIR Bundle of type `collection` whose entries are transaction Bundles, loaded in order
(`service.demo.load`): the two studies, one per subject (Patient, ResearchSubject, Observations, AdverseEvents,
each a conditional create on its identifier), then the later updates (conditional updates by identifier). All
references are `urn:uuid:` fullUrls; one to an earlier Bundle's resource is resolved by the loader.
"""

import argparse
import gzip
import random
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from statistics import fmean
from typing import Any

import orjson

from fhir_mappings import fhir
from fhir_mappings.adverse_event import adverse_event_to_fhir
from fhir_mappings.observation import observation_to_fhir
from fhir_mappings.patient import patient_to_fhir
from fhir_mappings.research_study import research_study_to_fhir
from fhir_mappings.research_subject import research_subject_to_fhir
from fhir_mappings.terminology import MEDDRA, RELATEDNESS, load_catalogue
from service.adverse_event.models import AdverseEventRecord
from service.demo.data import (
    ADVERSE_EVENT_SYSTEM,
    BUNDLE_SYSTEM,
    DATA_FILE,
    OBSERVATION_SYSTEM,
    PATIENT_SYSTEM,
    REGISTRY,
    STUDY_SYSTEM,
    SUBJECT_SYSTEM,
    SYNTHETIC_TAG,
)
from service.observation.models import MeasurementRecord
from service.trial.models import ArmRecord, PatientRecord, StudyRecord, SubjectRecord

#: the EASI score's regions (adult weights) and signs, as the shipped catalogue's EASI ObservationDefinition lists its
#: parts (fhir_mappings/catalogue/atopic-dermatitis/): the demo's EASI components are generated to add up to it
EASI_REGIONS = {"HN": Decimal("0.1"), "UL": Decimal("0.2"), "TR": Decimal("0.3"), "LL": Decimal("0.4")}
EASI_SIGNS = ("ERYTHEMA", "OEDEMA", "EXCORIATION", "LICHENIFICATION")
SEED = 20140113
CATALOGUE = "atopic-dermatitis"
PHASE_SYSTEM = "http://terminology.hl7.org/CodeSystem/research-study-phase"
TIMEZONE = timezone(timedelta(hours=9))  # the sites' local time (results keep their own offset)
_NAMESPACE = uuid.UUID("5b0d5f0e-3c1a-4c53-9a55-7d1e0c0de000")

ARMS = (("low-dose", "2.5 × 10^7 cells"), ("high-dose", "5.0 × 10^7 cells"))
VISITS = {"baseline": (0, -7, 0), "week-4": (28, -3, 3), "week-12": (84, -5, 5)}  # target day, jitter


@dataclass(frozen=True)
class Phase:
    key: str  # "I", "IIa"
    phase_code: str  # research-study-phase
    title: str
    visits: tuple[str, ...]
    enrolled: dict[str, int]  # per arm
    withdrawn_before_dosing: dict[str, int]
    missed_week_4: int  # dosed subjects per arm who miss week 4
    #: EASI-50 responders per arm among the dosed at week 12 (a planned week-4 value follows from it)
    easi50: dict[str, int]


PHASES = (
    Phase("I", "phase-1", "phase I (dose escalation, followed to week 4)", ("baseline", "week-4"),
          {"low-dose": 3, "high-dose": 4}, {"low-dose": 0, "high-dose": 0}, 0, {"low-dose": 1, "high-dose": 2}),
    Phase("IIa", "phase-2", "phase IIa (randomised, followed to week 12)", ("baseline", "week-4", "week-12"),
          {"low-dose": 14, "high-dose": 13}, {"low-dose": 3, "high-dose": 2}, 1, {"low-dose": 4, "high-dose": 6}),
)
#: week-12 mean % change from baseline, per arm (EASI: see Phase.easi50); week 4 reaches WEEK4_SHARE of it
TARGETS = {
    "high-dose": {"SCORAD": -50.0, "IGA": -33.0, "PRURITUS": -58.0, "IGE": -24.0, "EOSINOPHILS": -30.0,
                  "EOSINOPHILS-PCT": -27.0},
    "low-dose": {"SCORAD": -30.0, "IGA": -16.0, "PRURITUS": -35.0, "IGE": -11.0, "EOSINOPHILS": -14.0,
                 "EOSINOPHILS-PCT": -12.0},
}
WEEK4_SHARE = 0.55
#: spread (SD, % points) of the per-subject % change around the arm's target
SPREAD = {"SCORAD": 14.0, "IGA": 20.0, "PRURITUS": 16.0, "IGE": 18.0, "EOSINOPHILS": 20.0, "EOSINOPHILS-PCT": 18.0}
#: (quantum, lowest, highest) of each measure's values in its canonical unit
GRID = {"EASI": (Decimal("0.1"), 0, 72), "SCORAD": (Decimal("0.1"), 0, 103), "IGA": (Decimal(1), 0, 4),
        "PRURITUS": (Decimal("0.1"), 0, 10), "IGE": (Decimal("0.1"), 0, 100000),
        "EOSINOPHILS": (Decimal("0.01"), 0, 100), "EOSINOPHILS-PCT": (Decimal("0.1"), 0, 100)}
GIVEN_NAMES = ("Alex", "Bailey", "Casey", "Dana", "Eden", "Finley", "Gray", "Harper", "Indigo", "Jordan", "Kai",
               "Logan", "Morgan", "Noor", "Oakley", "Parker", "Quinn", "Riley", "Sage", "Taylor", "Uri", "Val",
               "Wren", "Yael", "Zion", "Arden", "Blair", "Cameron", "Drew", "Emery", "Frankie", "Hayden", "Jessie",
               "Kendall")
# (MedDRA preferred term code, text, related NCIt code or None to draw "not/unlikely related", injection site?)
AE_TERMS = (
    ("10022061", "Injection site erythema", "C53260", True),
    ("10022086", "Injection site pain", "C53260", True),
    ("10022093", "Injection site pruritus", "C53258", True),
    ("10053425", "Injection site swelling", "C53260", True),
    ("10019211", "Headache", "C53258", False),
    ("10016256", "Fatigue", "C53257", False),
    ("10028810", "Nasopharyngitis", None, False),
    ("10046306", "Upper respiratory tract infection", None, False),
    ("10037087", "Pruritus", None, False),
)


@dataclass(frozen=True)
class DemoMeasurement:
    """One result: its typed row as it finally stands (value in the canonical unit, original value/unit as sent),
    its parts, and `first_sent`: the row as first sent when a later update changes it (preliminary, or a value
    corrected since)."""

    record: MeasurementRecord
    identifier: str
    effective: str  # effectiveDateTime as sent (local time with offset)
    components: tuple[tuple[str, float], ...] = ()
    first_sent: MeasurementRecord | None = None


@dataclass(frozen=True)
class DemoAdverseEvent:
    record: AdverseEventRecord
    identifier: str
    date: str
    relatedness: str  # NCIt code of the causality assessment


@dataclass
class DemoSubject:
    key: str  # DEMO-001
    phase: Phase
    patient: PatientRecord
    subject: SubjectRecord
    screening: date  # first results (the baseline visit for the dosed)
    measurements: list[DemoMeasurement] = field(default_factory=list)
    adverse_events: list[DemoAdverseEvent] = field(default_factory=list)
    missed_visits: tuple[str, ...] = ()

    @property
    def dosed(self) -> bool:
        return self.subject.day0 is not None


@dataclass
class DemoCohort:
    studies: dict[str, StudyRecord]  # per phase key
    arms: dict[str, list[ArmRecord]]
    subjects: list[DemoSubject]


def _local_id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def _quantize(value: float | Decimal, quantum: Decimal) -> Decimal:
    return Decimal(str(value)).quantize(quantum, rounding=ROUND_HALF_UP)


def _clip(value: Decimal, measure: str) -> Decimal:
    _, low, high = GRID[measure]
    return min(max(value, Decimal(low)), Decimal(high))


def generate_cohort(seed: int = SEED) -> DemoCohort:
    """The demo cohort of `seed`: the same seed gives the same cohort, value for value."""
    return _Generator(seed).build()


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.catalogue = load_catalogue(CATALOGUE)

    # -- structure -------------------------------------------------------------------------------------
    def build(self) -> DemoCohort:
        rng = self.rng
        studies, arms, subjects = {}, {}, []
        first_day0 = {"I": date(2013, 9, 2), "IIa": date(2014, 1, 13)}
        n = 0
        for phase in PHASES:
            study_id = _local_id("ResearchStudy", REGISTRY[1], phase.key)
            studies[phase.key] = StudyRecord(
                id=study_id, status="completed", catalogue=CATALOGUE,
                title=f"DEMO (synthetic data): Phase I/IIa trial of subcutaneous hUCB-MSCs in moderate-to-severe "
                      f"atopic dermatitis, {phase.title}")
            arms[phase.key] = [ArmRecord(study_id=study_id, name=name, description=dose) for name, dose in ARMS]
            allocation = [arm for arm, _ in ARMS for _ in range(phase.enrolled[arm])]
            if phase.key != "I":  # phase I escalates: low dose first
                rng.shuffle(allocation)
            members = []
            for k, arm in enumerate(allocation):
                n += 1
                key = f"DEMO-{n:03d}"
                day0 = first_day0[phase.key] + timedelta(days=round(k * 6.5) + rng.randint(0, 3))
                age_days = rng.randint(19 * 365 + 5, 58 * 365)
                patient = PatientRecord(id=_local_id("Patient", key), family="Demo", given=GIVEN_NAMES[n - 1],
                                        gender=rng.choice(("female", "male")),
                                        birth_date=day0 - timedelta(days=age_days))
                subject = SubjectRecord(id=_local_id("ResearchSubject", key), study_id=study_id,
                                        patient_id=patient.id, status="off-study", assigned_arm=arm,
                                        actual_arm=arm, arm=arm, day0=day0)
                members.append(DemoSubject(key=key, phase=phase, patient=patient, subject=subject,
                                           screening=day0 - timedelta(days=rng.randint(0, 7))))
            self._plan_gaps(phase, members)
            for arm, _ in ARMS:
                self._results(study_id, phase, [s for s in members if s.subject.arm == arm], arm)
            for s in members:
                self._adverse_events(study_id, s)
            subjects += members
        self._later_updates([s for s in subjects if s.phase.key == "IIa"])
        return DemoCohort(studies=studies, arms=arms, subjects=subjects)

    def _plan_gaps(self, phase: Phase, members: list[DemoSubject]) -> None:
        """Per arm: the planned withdrawals before the administration (no day 0, no actual arm), and the dosed
        subjects who miss week 4."""
        for arm, _ in ARMS:
            in_arm = [s for s in members if s.subject.arm == arm]
            chosen = self.rng.sample(in_arm, phase.withdrawn_before_dosing[arm] + phase.missed_week_4)
            for s in chosen[:phase.withdrawn_before_dosing[arm]]:
                # consent withdrawn after randomisation, before the administration: never dosed, no day 0
                s.subject.status = "withdrawn"
                s.subject.end_date = s.subject.day0 + timedelta(days=2) if s.subject.day0 else None
                s.subject.day0 = None
                s.subject.actual_arm = None
                s.missed_visits = phase.visits
            for s in chosen[phase.withdrawn_before_dosing[arm]:]:
                s.missed_visits = ("week-4",)

    # -- results ---------------------------------------------------------------------------------------
    def _results(self, study_id: str, phase: Phase, members: list[DemoSubject], arm: str) -> None:
        rng = self.rng
        dosed = [s for s in members if s.dosed]
        day0 = {s.key: s.subject.day0 or s.screening for s in members}
        dates = {s.key: {visit: day0[s.key] + timedelta(days=VISITS[visit][0]
                                                        + rng.randint(*VISITS[visit][1:]))
                         for visit in phase.visits} for s in members}
        for s in members:
            dates[s.key]["baseline"] = s.screening
        latent = {s.key: rng.gauss(0, 1) for s in members}  # how well the subject responds, across measures
        base = self._baselines(members)
        values: dict[str, dict[str, dict[str, Decimal]]] = {
            s.key: {"baseline": base[s.key], "week-4": {}, "week-12": {}} for s in members}
        # EASI: the planned number of responders are the best latent responders among the dosed
        ranked = sorted(dosed, key=lambda s: latent[s.key])  # most negative latent = best response
        responders = {s.key for s in ranked[:phase.easi50[arm]]}
        for s in dosed:
            if s.key in responders:
                pct12 = -rng.uniform(56, 88)
            else:
                pct12 = -rng.uniform(8, 44) if rng.random() > 0.1 else rng.uniform(0, 8)
            pct4 = pct12 * rng.uniform(0.4, 0.75)
            for visit, pct in (("week-4", pct4), ("week-12", pct12)):
                b = base[s.key]["EASI"]
                values[s.key][visit]["EASI"] = _clip(_quantize(b * (1 + Decimal(str(pct)) / 100), GRID["EASI"][0]),
                                                     "EASI")
        # the other measures: % changes centred on the arm's target, correlated with the latent response
        for measure, target12 in TARGETS[arm].items():
            for visit, target in (("week-4", target12 * WEEK4_SHARE), ("week-12", target12)):
                present = [s for s in dosed if visit not in s.missed_visits]
                raw = {s.key: target + SPREAD[measure] * (0.75 * latent[s.key] + 0.66 * rng.gauss(0, 1))
                       for s in present}
                pcts = _centre(raw, target) if raw else {}
                for s in dosed:  # a missed visit still gets a value (never emitted), for simplicity
                    pct = pcts.get(s.key, target)
                    b = base[s.key][measure]
                    values[s.key][visit][measure] = _clip(_quantize(b * (1 + Decimal(str(pct)) / 100),
                                                                    GRID[measure][0]), measure)
                if present and visit in phase.visits:
                    _nudge(measure, [(base[s.key][measure], values[s.key][visit]) for s in present], target)
        for s in members:
            self._emit(study_id, s, values[s.key], dates[s.key])

    def _baselines(self, members: list[DemoSubject]) -> dict[str, dict[str, Decimal]]:
        rng = self.rng
        out = {}
        for s in members:
            easi = rng.uniform(16.5, 44.0)
            eos = min(2.4, max(0.12, rng.lognormvariate(-0.6, 0.55)))
            out[s.key] = {
                "EASI": _quantize(easi, GRID["EASI"][0]),
                "IGA": Decimal(4 if easi + rng.gauss(0, 5) > 29 else 3),
                "SCORAD": _quantize(min(92.0, max(32.0, 24 + 0.95 * easi + rng.gauss(0, 6))), Decimal("0.1")),
                "PRURITUS": _quantize(rng.uniform(5.5, 9.6), Decimal("0.1")),
                "IGE": _quantize(min(9000.0, max(45.0, rng.lognormvariate(6.8, 0.9))), Decimal("0.1")),
                "EOSINOPHILS": _quantize(eos, Decimal("0.01")),
                "EOSINOPHILS-PCT": _quantize(min(30.0, 100 * eos / rng.uniform(5.5, 8.5)), Decimal("0.1")),
            }
        return out

    def _emit(self, study_id: str, s: DemoSubject, values: dict[str, dict[str, Decimal]],
              dates: dict[str, date]) -> None:
        rng = self.rng
        number = int(s.key.split("-")[1])
        with_parts = number % 5 == 0  # DEMO-005, -010, … send EASI and SCORAD with their parts
        ige_unit = {3: "kU/L", 7: "ng/mL"}.get(number % 8, "[IU]/mL")
        eos_unit = {1: "/uL", 4: "10*9/L"}.get(number % 6, "10*3/uL")
        units = {"IGE": ige_unit, "EOSINOPHILS": eos_unit}
        for visit in s.phase.visits:
            if visit in s.missed_visits and not (visit == "baseline" and not s.dosed):
                continue
            day = dates[visit]
            hour, minute = rng.randint(8, 16), rng.choice((0, 10, 15, 20, 30, 40, 45, 50))
            moment = datetime(day.year, day.month, day.day, hour, minute, tzinfo=TIMEZONE)
            for measure in self.catalogue.measures:
                value = values[visit][measure.key]
                components: tuple[tuple[str, float], ...] = ()
                if with_parts and measure.key == "EASI":
                    value, components = _easi_parts(value, rng)
                elif with_parts and measure.key == "SCORAD":
                    value, components = _scorad_parts(value, values[visit]["PRURITUS"], rng)
                lab_time = moment + timedelta(minutes=25) if measure.category == "laboratory" else moment
                s.measurements.append(self._measurement(
                    study_id, s, f"{s.key}-{visit}-{measure.key}", measure.key, value, units.get(measure.key),
                    lab_time, components))
        if s.dosed and s.subject.status != "withdrawn":
            assert s.subject.day0 is not None
            last = s.phase.visits[-1]
            s.subject.end_date = dates[last] if last not in s.missed_visits else s.subject.day0 + timedelta(
                days=VISITS[last][0])

    def _measurement(self, study_id: str, s: DemoSubject, identifier: str, key: str, value: Decimal,
                     unit: str | None, moment: datetime, components: tuple = (),
                     status: str = "final") -> DemoMeasurement:
        measure = self.catalogue.measure(key)
        unit = unit or measure.unit
        original = _in_unit(value, key, unit)
        canonical = measure.to_canonical(original, unit)
        assert canonical is not None, "the demo sends each measure in a unit its catalogue accepts"
        system, code = measure.codes[0]
        local = moment.date()
        day = (local - s.subject.day0).days if s.subject.day0 else None
        record = MeasurementRecord(
            id=_local_id("Observation", identifier), patient_id=s.patient.id, study_id=study_id,
            subject_id=s.subject.id, measure=key, code_system=system, code=code, category=measure.category,
            status=status, value=float(canonical), unit=measure.unit, original_value=str(original),
            original_unit=unit, effective=moment.astimezone(UTC), local_date=local, study_day=day,
            visit=self.catalogue.visit_for_day(day))
        return DemoMeasurement(record=record, identifier=identifier, effective=moment.isoformat(),
                               components=components)

    def _later_updates(self, subjects: list[DemoSubject]) -> None:
        """What labs do after the first send, on subjects without score parts who came to every visit: two
        week-12 IgE results first sent `preliminary` (made `final` later), a week-4 SCORAD sent with a typing
        error (corrected later: status `corrected`), an extra eosinophil count that stays `preliminary`, and an
        unscheduled visit on day 56 (EASI and IGA)."""
        plain = [s for s in subjects if s.dosed and not s.missed_visits and int(s.key[5:]) % 5]
        prelim_a, prelim_b, corrected, extra, unscheduled = plain[:5]
        for s in (prelim_a, prelim_b):
            i, m = next((i, m) for i, m in enumerate(s.measurements)
                        if m.record.visit == "week-12" and m.record.measure == "IGE")
            first = m.record.model_copy(update={"status": "preliminary"})
            s.measurements[i] = DemoMeasurement(m.record, m.identifier, m.effective, m.components, first_sent=first)
        i, m = next((i, m) for i, m in enumerate(corrected.measurements)
                    if m.record.visit == "week-4" and m.record.measure == "SCORAD")
        typo = m.record.value + 10 if m.record.value <= 80 else m.record.value - 10
        first = m.record.model_copy(update={"value": typo, "original_value": str(_quantize(typo, Decimal("0.1")))})
        final = m.record.model_copy(update={"status": "corrected"})
        corrected.measurements[i] = DemoMeasurement(final, m.identifier, m.effective, m.components, first_sent=first)
        m = next(m for m in extra.measurements if m.record.visit == "week-12" and m.record.measure == "EOSINOPHILS")
        moment = datetime.fromisoformat(m.effective) + timedelta(days=1)
        extra.measurements.append(self._measurement(
            m.record.study_id, extra, f"{extra.key}-week-12-EOSINOPHILS-repeat", "EOSINOPHILS",
            _quantize(Decimal(str(m.record.value)) * Decimal("1.1"), Decimal("0.01")), m.record.original_unit,
            moment, status="preliminary"))
        assert unscheduled.subject.day0 is not None
        day = unscheduled.subject.day0 + timedelta(days=56)
        moment = datetime(day.year, day.month, day.day, 11, 30, tzinfo=TIMEZONE)
        last = {m.record.measure: Decimal(str(m.record.value)) for m in unscheduled.measurements
                if m.record.visit == "week-4"}
        for key in ("EASI", "IGA"):
            unscheduled.measurements.append(self._measurement(
                unscheduled.subject.study_id, unscheduled, f"{unscheduled.key}-day-56-{key}", key,
                _quantize(last[key], GRID[key][0]), None, moment))

    # -- adverse events ---------------------------------------------------------------------------------
    def _adverse_events(self, study_id: str, s: DemoSubject) -> None:
        if not s.dosed:
            return
        rng = self.rng
        day0 = s.subject.day0
        assert day0 is not None and s.subject.end_date is not None, "_emit set every dosed subject's end date"
        n_events = rng.choices((0, 1, 2), weights=(5, 4, 2) if s.subject.arm == "low-dose" else (4, 4, 3))[0]
        end = (s.subject.end_date - day0).days
        for k in range(1, n_events + 1):
            code, text, relatedness, injection_site = rng.choice(AE_TERMS)
            if relatedness is None:
                relatedness = rng.choice(("C53256", "C53257"))
            day = rng.randint(0, 2) if injection_site else rng.randint(1, max(1, end - 1))
            onset = datetime.combine(day0 + timedelta(days=day), datetime.min.time(), TIMEZONE) \
                + timedelta(hours=rng.randint(9, 20), minutes=rng.choice((0, 15, 30, 45)))
            severity = "moderate" if rng.random() < 0.25 else "mild"
            record = AdverseEventRecord(
                id=_local_id("AdverseEvent", s.key, str(k)), patient_id=s.patient.id, study_id=study_id,
                subject_id=s.subject.id, actuality="actual", event_system=MEDDRA, event_code=code, event_text=text,
                onset=onset.astimezone(UTC), seriousness="non-serious", severity=severity,
                outcome="resolved" if rng.random() < 0.85 else "recovering", related=RELATEDNESS[relatedness],
                caused_withdrawal=False)
            s.adverse_events.append(DemoAdverseEvent(record=record, identifier=f"{s.key}-AE{k}",
                                                     date=onset.isoformat(), relatedness=relatedness))


def _centre(raw: dict[str, float], target: float) -> dict[str, float]:
    """Shift the % changes so their mean is `target`, keeping each within −95…+40 %."""
    pcts = dict(raw)
    for _ in range(5):
        shift = target - fmean(pcts.values())
        pcts = {k: min(40.0, max(-95.0, v + shift)) for k, v in pcts.items()}
    return pcts


def _nudge(measure: str, pairs: list[tuple[Decimal, dict[str, Decimal]]], target: float) -> None:
    """After rounding (coarse for IGA), move single values one step while that brings the mean % change
    closer to `target`."""
    quantum = GRID[measure][0]

    def mean_pct() -> float:
        return fmean(float(100 * (v[measure] - b) / b) for b, v in pairs)

    for _ in range(200):
        error = mean_pct() - target
        if abs(error) < 0.3:
            return
        step = -quantum if error > 0 else quantum
        best = None
        for b, v in pairs:
            moved = _clip(v[measure] + step, measure)
            if moved == v[measure]:
                continue
            gain = abs(error + float(100 * step / b) / len(pairs))
            if gain < abs(error) and (best is None or gain < best[0]):
                best = (gain, v)
        if best is None:
            pair = _pair_move(measure, pairs, error, quantum)
            if pair is None:
                return
            pair[1][measure] = _clip(pair[1][measure] + step, measure)
            pair[2][measure] = _clip(pair[2][measure] - step, measure)
            continue
        best[1][measure] = _clip(best[1][measure] + step, measure)


def _pair_move(measure: str, pairs: list, error: float, quantum: Decimal) -> tuple | None:
    """When no single step helps (coarse values such as IGA): one value a step in the wanted direction and another
    a step back, from subjects of different baselines, when that brings the mean % change closer."""
    step = -quantum if error > 0 else quantum
    best = None
    for b1, v1 in pairs:
        if _clip(v1[measure] + step, measure) == v1[measure]:
            continue
        for b2, v2 in pairs:
            if v2 is v1 or _clip(v2[measure] - step, measure) == v2[measure]:
                continue
            gain = abs(error + float(100 * step / b1 - 100 * step / b2) / len(pairs))
            if gain < abs(error) and (best is None or gain < best[0]):
                best = (gain, v1, v2)
    return best


def _in_unit(value: Decimal, measure: str, unit: str) -> Decimal:
    """`value` (canonical unit) as a lab sending `unit` would write it."""
    if measure == "IGE" and unit == "ng/mL":
        return _quantize(value * Decimal("2.4"), Decimal("0.1"))
    if measure == "EOSINOPHILS" and unit == "/uL":
        return _quantize(value * 1000, Decimal(1))
    return value


def _easi_parts(value: Decimal, rng: random.Random) -> tuple[Decimal, tuple[tuple[str, float], ...]]:
    """EASI parts (area 0–6 and four signs 0–3 per region) whose EASI is as close to `value` as the grid
    allows; returns (EASI of the parts, parts). Works in tenths, so the sum is exact."""
    weights = {r: int(w * 10) for r, w in EASI_REGIONS.items()}
    severity = float(value) / 72
    area = {r: max(1, min(6, round(1 + 5 * severity + rng.uniform(-1, 1)))) for r in weights}
    signs = {r: [max(0, min(3, round(3 * severity + rng.uniform(-0.8, 0.8)))) for _ in EASI_SIGNS] for r in weights}

    def tenths() -> int:
        return sum(sum(signs[r]) * area[r] * weights[r] for r in weights)

    wanted = int(value * 10)
    for _ in range(400):  # greedy: the single ±1 change that gets closest, until none helps
        best: tuple[int, tuple[Any, ...] | None] = (abs(tenths() - wanted), None)
        for r in weights:
            for delta in (-1, 1):
                if 0 <= area[r] + delta <= 6:
                    area[r] += delta
                    best = min(best, (abs(tenths() - wanted), ("area", r, delta)), key=lambda b: b[0])
                    area[r] -= delta
                for i in range(len(EASI_SIGNS)):
                    if 0 <= signs[r][i] + delta <= 3:
                        signs[r][i] += delta
                        best = min(best, (abs(tenths() - wanted), ("sign", r, i, delta)), key=lambda b: b[0])
                        signs[r][i] -= delta
        move = best[1]
        if move is None:
            break
        if move[0] == "area":
            area[move[1]] += move[2]
        else:
            signs[move[1]][move[2]] += move[3]
    parts = []
    for r in weights:
        parts.append((f"EASI-{r}-AREA", area[r]))
        parts.extend((f"EASI-{r}-{sign}", signs[r][i]) for i, sign in enumerate(EASI_SIGNS))
    return Decimal(tenths()) / 10, tuple(parts)


def _scorad_parts(value: Decimal, pruritus: Decimal, rng: random.Random) -> tuple[Decimal, tuple]:
    """SCORAD = A/5 + 7B/2 + C with A (extent, whole %), B (intensity 0–18), C (pruritus + sleeplessness);
    returns (SCORAD of the parts, parts)."""
    sleeplessness = _quantize(min(Decimal(10), pruritus * Decimal(str(rng.uniform(0.5, 0.9)))), Decimal("0.1"))
    c = min(pruritus + sleeplessness, value, Decimal(20))
    rest = value - c
    b = max(0, min(18, round(float(rest) * 0.6 / 3.5)))
    while b > 0 and rest - Decimal("3.5") * b < 0:
        b -= 1
    while b < 18 and 5 * (rest - Decimal("3.5") * b) > 100:
        b += 1
    a = max(0, min(100, int(_quantize(5 * (rest - Decimal("3.5") * b), Decimal(1)))))
    total = Decimal(a) / 5 + Decimal("3.5") * b + c
    return total, (("SCORAD-A", a), ("SCORAD-B", b), ("SCORAD-C", float(c)))


# -- FHIR resources (through the pure mappings) --------------------------------------------------------------

def _dump(resource) -> dict:
    body = resource.model_dump(mode="json", exclude_none=True)
    body["meta"] = {"tag": [dict(SYNTHETIC_TAG)]}
    return body


def study_resources(cohort: DemoCohort) -> list[dict]:
    """The phase IIa ResearchStudy (with the registry number) and the phase I one, `partOf` it."""
    out = []
    for phase in reversed(PHASES):
        study = cohort.studies[phase.key]
        identifiers = [(STUDY_SYSTEM, f"{REGISTRY[1]}-phase-{phase.key}")]
        if phase.key == "IIa":
            identifiers.insert(0, REGISTRY)
        resource = research_study_to_fhir(study, cohort.arms[phase.key], identifiers)
        resource.phase = fhir.CodeableConcept(coding=[fhir.Coding(system=PHASE_SYSTEM, code=phase.phase_code)])
        resource.description = (
            f"Synthetic demonstration data for trial-fhir, modelled on the published Phase I/IIa trial of hUCB-MSCs "
            f"in atopic dermatitis (NCT01927705): its {phase.title}. No real patient is described.")
        if phase.key == "I":
            resource.partOf = [fhir.Reference(reference=f"ResearchStudy/{cohort.studies['IIa'].id}")]
        out.append(_dump(resource))
    return out


def _observation(s: DemoSubject, m: DemoMeasurement, record: MeasurementRecord) -> dict:
    catalogue = load_catalogue(CATALOGUE)
    observation = observation_to_fhir(record, catalogue.measure(record.measure), m.effective, m.components)
    observation.identifier = [fhir.Identifier(system=OBSERVATION_SYSTEM, value=m.identifier)]
    return _dump(observation)


def subject_resources(s: DemoSubject) -> list[dict]:
    """The subject's Patient, ResearchSubject, Observations (as first sent) and AdverseEvents, in that order."""
    out = [_dump(patient_to_fhir(s.patient, [(PATIENT_SYSTEM, s.key)])),
           _dump(research_subject_to_fhir(s.subject, [(SUBJECT_SYSTEM, f"{REGISTRY[1]}-{s.key}")]))]
    out += [_observation(s, m, m.first_sent or m.record) for m in s.measurements]
    for ae in s.adverse_events:
        event = adverse_event_to_fhir(ae.record, ae.date, ae.relatedness)
        event.identifier = fhir.Identifier(system=ADVERSE_EVENT_SYSTEM, value=ae.identifier)  # 0..1 in R4
        out.append(_dump(event))
    return out


def _identifier(resource: dict) -> tuple[str, str]:
    identifier = resource["identifier"]
    first = identifier if isinstance(identifier, dict) else identifier[0]
    return first["system"], first["value"]


def _urn(node: Any) -> Any:
    """`Type/<local id>` references as `urn:uuid:<local id>` (every local id is a UUID)."""
    if isinstance(node, dict):
        return {k: (f"urn:uuid:{v.split('/', 1)[1]}" if k == "reference" and isinstance(v, str) else _urn(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_urn(v) for v in node]
    return node


def _create(resource: dict) -> dict:
    system, value = _identifier(resource)
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": _urn({k: v for k, v in resource.items() if k != "id"}),
            "request": {"method": "POST", "url": resource["resourceType"],
                        "ifNoneExist": f"identifier={system}|{value}"}}


def _update(resource: dict) -> dict:
    system, value = _identifier(resource)
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": _urn({k: v for k, v in resource.items() if k != "id"}),
            "request": {"method": "PUT", "url": f"{resource['resourceType']}?identifier={system}|{value}"}}


def _transaction(name: str, entries: list[dict]) -> dict:
    return {"resourceType": "Bundle", "identifier": {"system": BUNDLE_SYSTEM, "value": name}, "type": "transaction",
            "meta": {"tag": [dict(SYNTHETIC_TAG)]}, "entry": entries}


def demo_bundle(cohort: DemoCohort) -> dict:
    """The data file's content: a collection of transaction Bundles (studies, one per subject, later updates)."""
    bundles = [_transaction("studies", [_create(r) for r in study_resources(cohort)])]
    bundles += [_transaction(s.key, [_create(r) for r in subject_resources(s)]) for s in cohort.subjects]
    bundles.append(_transaction("later-updates", [
        _update(_observation(s, m, m.record)) for s in cohort.subjects for m in s.measurements if m.first_sent]))
    return {"resourceType": "Bundle", "identifier": {"system": BUNDLE_SYSTEM, "value": f"demo-{SEED}"},
            "type": "collection", "meta": {"tag": [dict(SYNTHETIC_TAG)]},
            "entry": [{"fullUrl": f"urn:uuid:{_local_id('Bundle', b['identifier']['value'])}", "resource": b}
                      for b in bundles]}


def demo_bytes(seed: int = SEED) -> bytes:
    """The data file's bytes: the Bundle as indented JSON, gzipped without a timestamp (the same every run)."""
    body = orjson.dumps(demo_bundle(generate_cohort(seed)), option=orjson.OPT_INDENT_2) + b"\n"
    return gzip.compress(body, compresslevel=9, mtime=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.demo.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DATA_FILE, help=f"where to write (default {DATA_FILE})")
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing it")
    args = parser.parse_args(argv)
    data = demo_bytes()
    if args.check:
        same = args.out.exists() and gzip.decompress(args.out.read_bytes()) == gzip.decompress(data)
        print(f"{args.out}: {'up to date' if same else 'NOT what the generator makes: run without --check'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
