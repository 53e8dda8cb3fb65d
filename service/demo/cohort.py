"""The demo trial: a deterministic, clearly synthetic cohort shaped like the published hUCB-MSC trial.

Nothing here is real patient data. Every patient is called "… Demo", carries an identifier in the
`https://trial-fhir.org/demo/…` systems and every resource is tagged `HTEST` (test health data). The study
carries the real trial's registry number (NCT01927705) so the demo reads like the trial it imitates.

What the cohort holds (`build_cohort()`, seeded, same output on every run):

* one ResearchStudy (status `completed`) with the arms `low-dose` (2.5 × 10^7 cells) and `high-dose`
  (5.0 × 10^7 cells);
* 34 adults randomised 17/17, each with a ResearchSubject whose `period.start` (day 0) falls in 2014;
* results for every measure of the atopic dermatitis catalogue at baseline (day −7…0), week 4 (day 25…31)
  and week 12 (day 79…89), except the planned gaps: in each arm one subject misses week 4; in the
  low-dose arm one subject misses week 12; in the high-dose arm one subject withdraws (for a reason other
  than an adverse event: status `withdrawn`, `period.end` set) after week 4;
* some results sent in other accepted units (IgE in `kU/L` or `ng/mL`, eosinophils in `/uL` or `10*9/L`),
  so the unit conversion runs; EASI with its 20 components and SCORAD with its A/B/C parts for a few
  subjects (the parts add up by the formulas);
* mild or moderate, non-serious adverse events, injection-site ones related to the product; no serious
  event and nobody withdraws because of an event.

The outcome has the shape of the publication: at week 12 in the high-dose arm about 55% of subjects reach
EASI-50 and the mean % change from baseline is about −33% for IGA, −50% for SCORAD and −58% for pruritus;
IgE and eosinophils fall; the low-dose arm improves less. Values are generated from per-subject % changes
centred on these targets, so the figures hold closely whatever the noise.

Every resource is built by the pure mappings in `fhir_mappings` (`*_to_fhir`) and dumped to JSON-ready
dicts. Local ids are deterministic UUIDs; `service.demo.load` turns them into `urn:uuid:` fullUrls.
"""

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
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
from service.observation.models import MeasurementRecord
from service.trial.models import ArmRecord, PatientRecord, StudyRecord, SubjectRecord

#: the demo's EASI regions (adult weights) and signs: its data generator's own copy (the catalogue's
#: ObservationDefinition ad-easi holds the formula the service checks)
EASI_REGIONS = {"HN": Decimal("0.1"), "UL": Decimal("0.2"), "TR": Decimal("0.3"), "LL": Decimal("0.4")}
EASI_SIGNS = ("ERYTHEMA", "OEDEMA", "EXCORIATION", "LICHENIFICATION")
SEED = 20140113
CATALOGUE = "atopic-dermatitis"
STUDY_IDENTIFIER = ("https://clinicaltrials.gov", "NCT01927705")
DEMO_SYSTEM = "https://trial-fhir.org/demo"
PATIENT_SYSTEM = f"{DEMO_SYSTEM}/patient"
SUBJECT_SYSTEM = f"{DEMO_SYSTEM}/research-subject"
OBSERVATION_SYSTEM = f"{DEMO_SYSTEM}/observation"
ADVERSE_EVENT_SYSTEM = f"{DEMO_SYSTEM}/adverse-event"
#: HL7 v3 ActReason HTEST "test health data": marks every demo resource as synthetic
SYNTHETIC_TAG = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST",
                 "display": "test health data"}
TIMEZONE = timezone(timedelta(hours=9))  # the sites' local time (results keep their own offset)
_NAMESPACE = uuid.UUID("5b0d5f0e-3c1a-4c53-9a55-7d1e0c0de000")

N_SUBJECTS = 34
ARMS = (("low-dose", "2.5 × 10^7 cells"), ("high-dose", "5.0 × 10^7 cells"))
VISITS = (("baseline", 0, -7, 0), ("week-4", 28, -3, 3), ("week-12", 84, -5, 5))  # name, target, jitter
#: week-12 mean % change from baseline, per arm (EASI: see EASI50_RATE); week 4 reaches WEEK4_SHARE of it
TARGETS = {
    "high-dose": {"SCORAD": -50.0, "IGA": -33.0, "PRURITUS": -58.0, "IGE": -24.0, "EOSINOPHILS": -30.0,
                  "EOSINOPHILS-PCT": -27.0},
    "low-dose": {"SCORAD": -30.0, "IGA": -16.0, "PRURITUS": -35.0, "IGE": -11.0, "EOSINOPHILS": -14.0,
                 "EOSINOPHILS-PCT": -12.0},
}
EASI50_RATE = {"high-dose": 0.55, "low-dose": 0.25}
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
    """One result: its typed row (value in the canonical unit, original value/unit as sent) and parts."""

    record: MeasurementRecord
    identifier: str
    effective: str  # effectiveDateTime as sent (local time with offset)
    components: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class DemoAdverseEvent:
    record: AdverseEventRecord
    identifier: str
    date: str
    relatedness: str  # NCIt code of the causality assessment


@dataclass
class DemoSubject:
    key: str  # DEMO-001
    patient: PatientRecord
    subject: SubjectRecord
    measurements: list[DemoMeasurement] = field(default_factory=list)
    adverse_events: list[DemoAdverseEvent] = field(default_factory=list)
    missed_visits: tuple[str, ...] = ()

    @property
    def day0(self) -> date:
        """The subject's day 0 (`ResearchSubject.period.start`), which every demo subject has."""
        assert self.subject.day0 is not None, "the generator enrols every demo subject with a day 0"
        return self.subject.day0


@dataclass
class DemoCohort:
    study: StudyRecord
    arms: list[ArmRecord]
    subjects: list[DemoSubject]
    _resources: dict[str, list[dict]] = field(default_factory=dict, repr=False, compare=False)


def _local_id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def _quantize(value: float | Decimal, quantum: Decimal) -> Decimal:
    return Decimal(str(value)).quantize(quantum, rounding=ROUND_HALF_UP)


def _clip(value: Decimal, measure: str) -> Decimal:
    _, low, high = GRID[measure]
    return min(max(value, Decimal(low)), Decimal(high))


def generate_cohort(seed: int = SEED) -> DemoCohort:
    """A newly generated demo cohort; the same `seed` gives the same cohort, value for value."""
    return _Generator(seed).build()


@lru_cache(maxsize=2)
def build_cohort(seed: int = SEED) -> DemoCohort:
    """The demo cohort of `seed`, generated once per process (treat it as read-only)."""
    return generate_cohort(seed)


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.catalogue = load_catalogue(CATALOGUE)

    # -- structure -------------------------------------------------------------------------------------
    def build(self) -> DemoCohort:
        rng = self.rng
        study_id = _local_id("ResearchStudy", *STUDY_IDENTIFIER)
        study = StudyRecord(id=study_id, status="completed", catalogue=CATALOGUE,
                            title="DEMO (synthetic data): Phase I/IIa dose-finding trial of subcutaneous "
                                  "hUCB-MSCs in moderate-to-severe atopic dermatitis")
        arms = [ArmRecord(study_id=study_id, name=name, description=dose) for name, dose in ARMS]
        allocation = [ARMS[0][0]] * (N_SUBJECTS // 2) + [ARMS[1][0]] * (N_SUBJECTS - N_SUBJECTS // 2)
        rng.shuffle(allocation)
        first_day0 = date(2014, 1, 13)
        subjects = []
        for n in range(1, N_SUBJECTS + 1):
            key = f"DEMO-{n:03d}"
            day0 = first_day0 + timedelta(days=round((n - 1) * 6.5) + rng.randint(0, 3))
            age_days = rng.randint(19 * 365 + 5, 58 * 365)
            patient = PatientRecord(id=_local_id("Patient", key), family="Demo", given=GIVEN_NAMES[n - 1],
                                    gender=rng.choice(("female", "male")), birth_date=day0 - timedelta(days=age_days))
            subject = SubjectRecord(id=_local_id("ResearchSubject", key), study_id=study_id, patient_id=patient.id,
                                    status="off-study", assigned_arm=allocation[n - 1],
                                    actual_arm=allocation[n - 1], arm=allocation[n - 1], day0=day0)
            subjects.append(DemoSubject(key=key, patient=patient, subject=subject))
        self._plan_gaps(subjects)
        for arm, _ in ARMS:
            self._results(study_id, [s for s in subjects if s.subject.arm == arm], arm)
        for s in subjects:
            self._adverse_events(study_id, s)
        return DemoCohort(study=study, arms=arms, subjects=subjects)

    def _plan_gaps(self, subjects: list[DemoSubject]) -> None:
        """Per arm: one subject misses week 4; low dose: one misses week 12; high dose: one withdraws."""
        for arm, _ in ARMS:
            members = [s for s in subjects if s.subject.arm == arm]
            miss_w4, miss_w12 = self.rng.sample(members, 2)
            miss_w4.missed_visits = ("week-4",)
            miss_w12.missed_visits = ("week-12",)
            if arm == "high-dose":
                # withdrew consent (moved abroad) after week 4: not because of an adverse event
                miss_w12.subject.status = "withdrawn"
                miss_w12.subject.end_date = miss_w12.day0 + timedelta(days=46)

    # -- results ---------------------------------------------------------------------------------------
    def _results(self, study_id: str, members: list[DemoSubject], arm: str) -> None:
        rng = self.rng
        dates = {s.key: {name: s.day0 + timedelta(days=target + rng.randint(lo, hi))
                         for name, target, lo, hi in VISITS} for s in members}
        latent = {s.key: rng.gauss(0, 1) for s in members}  # how well the subject responds, across measures
        base = self._baselines(members)
        values: dict[str, dict[str, dict[str, Decimal]]] = {s.key: {"baseline": base[s.key]} for s in members}
        # EASI: the responders are the best latent responders, so the EASI-50 rate is as planned
        for visit in ("week-4", "week-12"):
            for s in members:
                values[s.key][visit] = {}
        ranked = sorted(members, key=lambda s: latent[s.key])  # most negative latent = best response
        with_w12 = [s for s in ranked if "week-12" not in s.missed_visits]
        responders = {s.key for s in with_w12[:round(EASI50_RATE[arm] * len(with_w12))]}
        for s in members:
            if s.key in responders or ("week-12" in s.missed_visits and latent[s.key] < -0.3):
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
                present = [s for s in members if visit not in s.missed_visits]
                raw = {s.key: target + SPREAD[measure] * (0.75 * latent[s.key] + 0.66 * rng.gauss(0, 1))
                       for s in present}
                pcts = _centre(raw, target)
                for s in members:  # a missed visit still gets a value (never emitted), for simplicity
                    pct = pcts.get(s.key, target)
                    b = base[s.key][measure]
                    values[s.key][visit][measure] = _clip(_quantize(b * (1 + Decimal(str(pct)) / 100),
                                                                    GRID[measure][0]), measure)
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
        for visit, *_ in VISITS:
            if visit in s.missed_visits:
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
                unit = units.get(measure.key, measure.unit)
                original = _in_unit(value, measure.key, unit)
                lab_time = moment + timedelta(minutes=25) if measure.category == "laboratory" else moment
                system, code = measure.codes[0]
                canonical = measure.to_canonical(original, unit)
                assert canonical is not None, "the demo sends each measure in a unit its catalogue accepts"
                record = MeasurementRecord(
                    id=_local_id("Observation", s.key, visit, measure.key), patient_id=s.patient.id,
                    study_id=study_id, subject_id=s.subject.id, measure=measure.key, code_system=system, code=code,
                    category=measure.category, status="final", value=float(canonical),
                    unit=measure.unit, original_value=str(original), original_unit=unit,
                    effective=lab_time.astimezone(UTC), local_date=day,
                    study_day=(day - s.day0).days,
                    visit=self.catalogue.visit_for_day((day - s.day0).days))
                s.measurements.append(DemoMeasurement(record=record, identifier=f"{s.key}-{visit}-{measure.key}",
                                                      effective=lab_time.isoformat(), components=components))
        if s.subject.status != "withdrawn":
            last = dates["week-12"] if "week-12" not in s.missed_visits else s.day0 + timedelta(days=84)
            s.subject.end_date = last

    # -- adverse events ---------------------------------------------------------------------------------
    def _adverse_events(self, study_id: str, s: DemoSubject) -> None:
        rng = self.rng
        n_events = rng.choices((0, 1, 2), weights=(5, 4, 2) if s.subject.arm == "low-dose" else (4, 4, 3))[0]
        assert s.subject.end_date is not None, "_emit (or _plan_gaps, for a withdrawal) set every end date"
        end = (s.subject.end_date - s.day0).days
        for k in range(1, n_events + 1):
            code, text, relatedness, injection_site = rng.choice(AE_TERMS)
            if relatedness is None:
                relatedness = rng.choice(("C53256", "C53257"))
            day = rng.randint(0, 2) if injection_site else rng.randint(1, max(1, end - 1))
            onset = datetime.combine(s.day0 + timedelta(days=day), datetime.min.time(), TIMEZONE) \
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
            return
        best[1][measure] = _clip(best[1][measure] + step, measure)


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


def study_resource(cohort: DemoCohort) -> dict:
    resource = research_study_to_fhir(cohort.study, cohort.arms, [STUDY_IDENTIFIER])
    resource.description = ("Synthetic demonstration data for trial-fhir, modelled on the published Phase I/IIa "
                            "trial of hUCB-MSCs in atopic dermatitis (NCT01927705). No real patient is described.")
    return _dump(resource)


def subject_resources(cohort: DemoCohort, s: DemoSubject) -> list[dict]:
    """The subject's Patient, ResearchSubject, Observations and AdverseEvents, in that order (built once
    per cohort: building and dumping fhir.resources models costs a few ms each; a copy is returned)."""
    if s.key not in cohort._resources:
        cohort._resources[s.key] = _subject_resources(cohort, s)
    return orjson.loads(orjson.dumps(cohort._resources[s.key]))


def _subject_resources(cohort: DemoCohort, s: DemoSubject) -> list[dict]:
    catalogue = load_catalogue(cohort.study.catalogue)
    out = [_dump(patient_to_fhir(s.patient, [(PATIENT_SYSTEM, s.key)])),
           _dump(research_subject_to_fhir(s.subject, [(SUBJECT_SYSTEM, f"{STUDY_IDENTIFIER[1]}-{s.key}")]))]
    for m in s.measurements:
        observation = observation_to_fhir(m.record, catalogue.measure(m.record.measure), m.effective, m.components)
        observation.identifier = [fhir.Identifier(system=OBSERVATION_SYSTEM, value=m.identifier)]
        out.append(_dump(observation))
    for ae in s.adverse_events:
        event = adverse_event_to_fhir(ae.record, ae.date, ae.relatedness)
        event.identifier = fhir.Identifier(system=ADVERSE_EVENT_SYSTEM, value=ae.identifier)  # 0..1 in R4
        out.append(_dump(event))
    return out


def counts(cohort: DemoCohort) -> dict[str, int]:
    """How many resources of each type the cohort holds."""
    return {"ResearchStudy": 1, "Patient": len(cohort.subjects), "ResearchSubject": len(cohort.subjects),
            "Observation": sum(len(s.measurements) for s in cohort.subjects),
            "AdverseEvent": sum(len(s.adverse_events) for s in cohort.subjects)}


def outcome_shape(cohort: DemoCohort, visit: str = "week-12") -> dict[str, dict[str, float]]:
    """Per arm: EASI-50 rate and mean % change from baseline of every measure at `visit` (for `demo show`)."""
    shape = {}
    for arm, _ in ARMS:
        per_measure: dict[str, list[float]] = {}
        easi50 = []
        for s in (s for s in cohort.subjects if s.subject.arm == arm):
            by = {(m.record.visit, m.record.measure): m.record.value for m in s.measurements}
            for measure in GRID:
                b, v = by.get(("baseline", measure)), by.get((visit, measure))
                if b and v is not None:
                    pct = 100 * (v - b) / b
                    per_measure.setdefault(measure, []).append(pct)
                    if measure == "EASI":
                        easi50.append(pct <= -50)
        shape[arm] = {"n": len(easi50), "EASI-50": sum(easi50) / len(easi50) if easi50 else 0.0,
                      **{f"{m} %": fmean(v) for m, v in per_measure.items()}}
    return shape


__all__ = ["build_cohort", "generate_cohort", "DemoCohort", "DemoSubject", "study_resource", "subject_resources",
           "counts", "outcome_shape", "SEED", "STUDY_IDENTIFIER", "SYNTHETIC_TAG"]
