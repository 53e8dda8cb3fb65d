"""Trial summaries: efficacy per arm, visit and measure, responders, safety, and the dose comparison.

Definitions (../shared/DOMAIN.md, "Summary statistics"):
- a subject belongs to `ResearchSubject.actualArm`, else `assignedArm` (the `research_subject.arm` column);
  subjects with neither are in no arm and left out;
- only results whose status the catalogue counts (final, amended, corrected), only at the catalogue's visits
  (never `unscheduled`); with several values of one measure in one window, the one closest to the target day,
  on a tie the later one (chosen in SQL, see repository.find_visit_values);
- per visit and measure (population `observed`): n, mean, sample SD, median, min, max over subjects with a value;
  `mean_change` over subjects with both a baseline and a visit value, with its 95% confidence interval
  (t-distribution, n − 1 degrees of freedom; from 2 subjects); `mean_pct_change` over those with baseline > 0.
  Change is not reported at the baseline visit itself (it would be 0 by construction);
- responders at each post-baseline visit, as the study's catalogue defines them (`PlanDefinition.goal`:
  fhir_mappings/catalogue_definition.py): % change ≤ a bound, or a value ≤ a bound with a drop of at least so many
  points from baseline, each with its analysis population: `observed` (subjects with both values; for % change,
  baseline > 0) or `non-responder-imputation` (the denominator is every dosed subject, i.e. with a day 0, expected
  at the visit, and who is not judged from values counts as a non-responder; see `nri_expected`). The shipped
  atopic dermatitis catalogue: EASI-50/75/90 with non-responder imputation, IGA success observed. Rate with a 95%
  Wilson score interval;
- safety per arm over `actuality = actual` events: subjects with ≥ 1 event and events, for any, serious,
  severe, related and leading to withdrawal;
- enrolled = the study's ResearchSubjects in the arm; withdrawn = status `withdrawn`; completed = not
  withdrawn and either a counted result at the last visit (week-12) or status `off-study` / `follow-up`;
- dose comparison for every pair of arms (by name): rate difference with Fisher's exact p-value, and the
  difference of mean % change with a two-sided Mann–Whitney U p-value.
Nothing is rounded here; rounding is for display only.

For de-identified clients every form takes `min_cell` (k) and suppresses small cells (see `suppress`).
"""

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from itertools import combinations
from typing import TextIO

import numpy as np
from sqlmodel import Session

from fhir_mappings.terminology import SAFETY_KEYS, Catalogue, Responder
from service.catalogue.compiled import catalogue_named
from service.errors import NotFound
from service.stats import repository
from service.stats.schemas import (
    ArmComparison,
    ArmSummary,
    ChangeComparison,
    MeasureInfo,
    MeasureStats,
    ResponderComparison,
    ResponderStats,
    SafetyStats,
    SeriousnessCount,
    StudyProgress,
    StudySummary,
    VisitInfo,
    VisitProgress,
)

BASELINE = "baseline"
COMPLETED_STATUSES = ("off-study", "follow-up")
WILSON_Z = 1.959963984540054  # two-sided 95%: the 0.975 quantile of the standard normal
#: analysis populations: `observed` (subjects with the values a figure needs), `non-responder-imputation` (every
#: dosed subject expected at the visit; those without the values count as non-responders), `enrolled` (subject
#: counts and safety: every subject of the arm)
OBSERVED, NRI, ENROLLED = "observed", "non-responder-imputation", "enrolled"
POPULATIONS = (OBSERVED, NRI)
#: the first five as before; `unit` as people write it (empty for counts, proportions and p-values); `versus` the
#: other arm of a between-arm comparison row (empty elsewhere)
#: `population` the analysis population the figure is over (`observed`, `non-responder-imputation`, `enrolled`)
CSV_COLUMNS = ("arm", "visit", "measure", "statistic", "value", "unit", "versus", "population")
SUBJECTS = "SUBJECTS"  # the measure key of the per-arm subject counts in the CSV
SUBJECT_STATISTICS = ("enrolled", "completed", "withdrawn")
RESPONDER_COMPARISON_STATISTICS = ("rate_difference", "odds_ratio", "p_value")
CHANGE_COMPARISON_STATISTICS = ("n", "n_versus", "pct_change_difference", "u_statistic", "p_value")
MEASURE_STATISTICS = ("n", "mean", "sd", "median", "min", "max", "mean_change", "mean_change_ci_low",
                      "mean_change_ci_high", "mean_pct_change")
RESPONDER_STATISTICS = ("n", "n_observed", "responders", "rate", "ci_low", "ci_high")
SAFETY_STATISTICS = ("subjects", "events")


def wilson_interval(k: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n (n > 0)."""
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    """Confidence interval of the mean of `values` (2 or more, finite) from the t-distribution with n − 1 degrees
    of freedom: mean ± t(1 − α/2, n − 1) × SD / √n; (None, None) when it overflows."""
    n = int(values.size)
    with np.errstate(over="ignore", invalid="ignore"):
        mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
        half = _t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    low, high = _finite(mean - half), _finite(mean + half)
    return (low, high) if low is not None and high is not None else (None, None)


@lru_cache(maxsize=256)
def _t_quantile(q: float, df: int) -> float:
    from scipy.stats import t  # scipy is slow to import: only once a mean change has 2 values

    return float(t.ppf(q, df))


@dataclass(frozen=True)
class NriSubject:
    """What non-responder imputation needs to know of an enrolled subject."""

    id: str
    arm: str
    day0: date | None
    status: str
    end_date: date | None


def nri_expected(subject: NriSubject, first_day: int, last_day: int, today: date) -> bool:
    """Whether a subject belongs to a visit's non-responder-imputation denominator: dosed (a day 0), not finished
    with the study (status other than withdrawn, period.end) before the visit window opened (a subject whose
    protocol ends earlier, like phase I at week 12, is not missing the visit), and either withdrawn (never coming)
    or with the window closed by `today` (an open window is not missed yet). A subject judged from values counts
    whatever this says."""
    if subject.day0 is None:
        return False
    opens = subject.day0 + timedelta(days=first_day)
    if subject.status != "withdrawn" and subject.end_date is not None and subject.end_date < opens:
        return False
    return subject.status == "withdrawn" or subject.day0 + timedelta(days=last_day) < today


def _ordered_visits(catalogue: Catalogue) -> list:
    """The catalogue's visits with the baseline first (the visit named baseline, else target day 0, else first)."""
    visits = list(catalogue.visits)
    base = next((v for v in visits if v.name == BASELINE), None) or next(
        (v for v in visits if v.target_day == 0), visits[0])
    return [base] + [v for v in visits if v is not base]




def _exclude_implausible(matrices: dict, measures: dict) -> dict[str, int]:
    """Set to NaN (no value) every stored value that is not finite or is outside its measure's plausibility limits
    (written before the limits, or by hand), so that no figure is infinite or driven by one absurd value; how many
    per measure key. The figures stay finite whatever the database holds (`_describe` checks the rest)."""
    excluded: dict[str, int] = {}
    for (_, key), matrix in matrices.items():
        measure = measures.get(key)
        with np.errstate(invalid="ignore"):
            bad = ~np.isnan(matrix) & ~np.isfinite(matrix)
            if measure is not None and measure.min is not None:
                bad |= matrix < float(measure.min)
            if measure is not None and measure.max is not None:
                bad |= matrix > float(measure.max)
        if bad.any():
            matrix[bad] = np.nan
            excluded[key] = excluded.get(key, 0) + int(bad.sum())
    return excluded


def _describe(visit: str, measure: str, unit: str, values: np.ndarray, base: np.ndarray | None) -> MeasureStats:
    """A visit's figures of one measure; a figure that overflows (values near the float range) is null, never
    infinite."""
    present = ~np.isnan(values)
    vals = values[present]
    n = int(vals.size)
    stats = MeasureStats(visit=visit, measure=measure, unit=unit, n=n)
    with np.errstate(over="ignore", invalid="ignore"):
        if n:
            stats.mean = _finite(np.mean(vals))
            stats.median = _finite(np.median(vals))
            stats.min = _finite(np.min(vals))
            stats.max = _finite(np.max(vals))
        if n > 1:
            stats.sd = _finite(np.std(vals, ddof=1))
        if base is not None:
            both = present & ~np.isnan(base)
            change = values[both] - base[both]
            stats.n_change = int(change.size)
            if change.size:
                stats.mean_change = _finite(np.mean(change))
            if change.size > 1 and stats.mean_change is not None:
                stats.mean_change_ci_low, stats.mean_change_ci_high = t_interval(change)
            positive = both & (base > 0)
            pct = _pct_change(values[positive], base[positive])
            stats.n_pct_change = int(pct.size)
            if pct.size:
                stats.mean_pct_change = _finite(np.mean(pct))
    return stats


def _pct_change(values: np.ndarray, base: np.ndarray) -> np.ndarray:
    return 100.0 * (values - base) / base


def _responders(rule: Responder, visit: str, values: np.ndarray, base: np.ndarray,
                imputed: int = 0) -> ResponderStats:
    """Responders among subjects with both values (for a % change, baseline > 0); with non-responder imputation,
    `imputed` more subjects (expected at the visit, not judged from values) count as non-responders."""
    both = ~np.isnan(values) & ~np.isnan(base)
    if rule.pct_change_at_most is not None:
        judged = both & (base > 0)
        if rule.population == NRI:
            imputed += int((both & ~judged).sum())  # a baseline of 0: no % change, so no response
        both = judged
        hit = _pct_change(values[both], base[both]) <= rule.pct_change_at_most
    else:
        v, b = values[both], base[both]
        hit = np.ones(v.size, dtype=bool)
        if rule.value_at_most is not None:
            hit &= v <= rule.value_at_most
        if rule.drop_at_least is not None:
            hit &= (b - v) >= rule.drop_at_least
    observed, k = int(both.sum()), int(hit.sum())
    n = observed + (imputed if rule.population == NRI else 0)
    stats = ResponderStats(visit=visit, measure=rule.key, population=rule.population, n=n, n_observed=observed,
                           responders=k)
    if n:
        stats.rate = k / n
        stats.ci_low, stats.ci_high = wilson_interval(k, n)
    return stats


def summarize_study(session: Session, study_id: str, *, min_cell: int | None = None) -> StudySummary:
    """Every figure of the study's summary, from aggregates and one pass over its typed rows; with `min_cell`
    (a de-identified client's k), small cells suppressed (`suppress`)."""
    study = repository.get_study(session, study_id)
    if study is None:
        raise NotFound(f"ResearchStudy/{study_id} is not known", expression="ResearchStudy.id")
    catalogue = catalogue_named(session, study.catalogue)
    visits = _ordered_visits(catalogue)
    visit_names = [v.name for v in visits]
    counted = sorted(catalogue.counted_statuses)
    measures = list(catalogue.measures)
    measure_keys = {m.key for m in measures}
    responders = [r for r in catalogue.responders if r.measure in measure_keys]
    last_visit = max(catalogue.visits, key=lambda v: v.target_day).name if catalogue.visits else None

    # arms: the study's own (by name), then any other arm a subject names
    arms: dict[str, str | None] = dict(repository.find_arms(session, study_id))
    visit_days = [(v.name, v.target_day) for v in visits]
    # one pass: per (arm, measure) a matrix subjects × visits of the counted values (NaN = none)
    values, subject_rows, row_subjects = repository.find_summary_rows(
        session, study_id, visit_days, [m.key for m in measures], counted, COMPLETED_STATUSES, last_visit)
    counts = {row[0]: row[1:4] for row in subject_rows}
    for name in sorted(set(counts) - set(arms)):
        arms[name] = None
    empty = np.empty((0, len(visits)))
    matrices = {key: np.array(columns, dtype=float).reshape(len(visits), -1).T for key, columns in values.items()}
    excluded = _exclude_implausible(matrices, {m.key: m for m in measures})

    safety = {row[0]: row[1:] for row in repository.count_adverse_events_by_arm(session, study_id)}
    imputed = (_imputed_from_rows(row_subjects, matrices, visits, responders) if row_subjects is not None
               else _imputed(session, study_id, catalogue, visits, responders, counted))

    arm_summaries = []
    for name, dose in arms.items():
        enrolled, withdrawn, completed = counts.get(name, (0, 0, 0))
        measure_stats, responder_stats = [], []
        for j, visit in enumerate(visit_names):
            for m in measures:
                matrix = matrices.get((name, m.key), empty)
                measure_stats.append(_describe(visit, m.key, m.unit, matrix[:, j], matrix[:, 0] if j else None))
        for j, visit in enumerate(visit_names[1:], start=1):
            for rule in responders:
                matrix = matrices.get((name, rule.measure), empty)
                responder_stats.append(_responders(rule, visit, matrix[:, j], matrix[:, 0],
                                                   imputed.get((name, rule.measure, visit), 0)))
        figures = safety.get(name, (0,) * (2 * len(SAFETY_KEYS)))
        safety_stats = [SafetyStats(measure=key, subjects=figures[2 * i], events=figures[2 * i + 1])
                        for i, key in enumerate(SAFETY_KEYS) if key in catalogue.safety_keys]
        arm_summaries.append(ArmSummary(name=name, dose=dose, enrolled=enrolled, completed=completed,
                                        withdrawn=withdrawn, measures=measure_stats, responders=responder_stats,
                                        safety=safety_stats))

    comparisons = [_compare(a, b, matrices, empty, visit_names, measures)
                   for a, b in combinations(arm_summaries, 2)]
    start, end = _period(catalogue, [r[4] for r in subject_rows if r[4]], [r[5] for r in subject_rows if r[5]])
    summary = StudySummary(
        study_id=study.id, title=study.title, catalogue=catalogue.name,
        catalogue_version=catalogue.version, period_start=start, period_end=end,
        generated=datetime.now(UTC), counted_statuses=counted,
        visits=[VisitInfo(name=v.name, target_day=v.target_day, first_day=v.first_day, last_day=v.last_day)
                for v in visits],
        measures=[MeasureInfo(key=m.key, display=m.display, unit=m.unit, unit_display=m.unit_display,
                              excluded=excluded.get(m.key, 0)) for m in measures],
        arms=arm_summaries, comparisons=comparisons)
    return summary if min_cell is None else suppress(summary, min_cell)


def _imputed(session: Session, study_id: str, catalogue: Catalogue, visits: list, responders: list[Responder],
             counted: list[str]) -> dict[tuple[str, str, str], int]:
    """(arm, measure, visit) -> subjects of the non-responder-imputation denominator without both values (a counted,
    plausible value at the baseline and at the visit): the non-responders imputed. Only for the measures an NRI
    definition uses: one query per such measure, returning only the dosed subjects who miss a value."""
    measures = sorted({r.measure for r in responders if r.population == NRI})
    if not measures or len(visits) < 2:
        return {}
    today = datetime.now(UTC).date()
    base = visits[0].name
    out: dict[tuple[str, str, str], int] = {}
    for key in measures:
        measure = catalogue.measure(key)
        missing = repository.find_subjects_missing_values(
            session, study_id, key, [v.name for v in visits], counted,
            None if measure.min is None else float(measure.min), None if measure.max is None else float(measure.max))
        for sid, arm, day0, status, end, have in missing:
            s = NriSubject(sid, arm, day0, status, end)
            for v in visits[1:]:
                if not (base in have and v.name in have) and nri_expected(s, v.first_day, v.last_day, today):
                    out[(s.arm, key, v.name)] = out.get((s.arm, key, v.name), 0) + 1
    return out


def _imputed_from_rows(row_subjects: dict, matrices: dict, visits: list,
                       responders: list[Responder]) -> dict[tuple[str, str, str], int]:
    """What `_imputed` counts, from the summary's own matrices when their rows are every subject of the arm (the
    PostgreSQL pass): `row_subjects` per arm the (day 0, status, period end) behind each row."""
    measures = sorted({r.measure for r in responders if r.population == NRI})
    today = datetime.now(UTC).date()
    out: dict[tuple[str, str, str], int] = {}
    for key in measures:
        for arm, subjects in row_subjects.items():
            matrix = matrices.get((arm, key))
            if matrix is None or len(visits) < 2:
                continue
            missing = np.isnan(matrix[:, [0]]) | np.isnan(matrix[:, 1:])  # subjects × post-baseline visits
            for i in np.flatnonzero(missing.any(axis=1)):
                day0, status, end = subjects[i]
                s = NriSubject("", arm, day0, status, end)
                for j, v in enumerate(visits[1:]):
                    if missing[i, j] and nri_expected(s, v.first_day, v.last_day, today):
                        out[(arm, key, v.name)] = out.get((arm, key, v.name), 0) + 1
    return out


def study_progress(session: Session, study_id: str, *, today: date | None = None,
                   min_cell: int | None = None) -> StudyProgress:
    """The study's data completeness per visit of its catalogue (expected vs received results, overdue and open
    windows, as of `today`), its actual adverse events by seriousness and when its latest result was obtained: a few
    SQL aggregates (repository.visit_completeness). With `min_cell`, subject counts of 1 … k−1 are null."""
    study = repository.get_study(session, study_id)
    if study is None:
        raise NotFound(f"ResearchStudy/{study_id} is not known", expression="ResearchStudy.id")
    catalogue = catalogue_named(session, study.catalogue)
    today = today or datetime.now(UTC).date()
    keys = [m.key for m in catalogue.measures]
    counted = sorted(catalogue.counted_statuses)

    def hide(n: int) -> int | None:
        return None if min_cell is not None and 0 < n < min_cell else n

    visits = []
    for v in _ordered_visits(catalogue):
        due, received, overdue, awaiting = repository.visit_completeness(
            session, study_id, v.name, keys, counted, today - timedelta(days=v.first_day),
            today - timedelta(days=v.last_day))
        expected = due * len(keys)
        shown = hide(due)
        visits.append(VisitProgress(
            visit=v.name, first_day=v.first_day, last_day=v.last_day, due=shown,
            expected=None if shown is None else expected, received=None if shown is None else received,
            completeness=received / expected if expected and shown is not None else None,
            overdue=hide(overdue), awaiting=hide(awaiting)))
    events = []
    for seriousness, n_events, n_subjects in repository.count_adverse_events_by_seriousness(session, study_id):
        small = hide(n_subjects) is None
        events.append(SeriousnessCount(seriousness=seriousness or "not recorded",
                                       events=None if small else n_events, subjects=None if small else n_subjects))
    latest = repository.latest_result_time(session, study_id)
    if isinstance(latest, str):  # SQLite hands an aggregate's datetime back as text
        latest = datetime.fromisoformat(latest)
    return StudyProgress(study_id=study.id, title=study.title, as_of=today, measures=len(keys), visits=visits,
                         adverse_events=events, latest_result=None if min_cell is not None else latest,
                         min_cell=min_cell)


# --- k-anonymity: what a de-identified client sees -----------------------------------------------------------

def suppress(summary: StudySummary, k: int) -> StudySummary:
    """The summary with every cell of fewer than `k` subjects suppressed (counts null, statistics removed,
    `suppressed: true`); `min_cell` says k. Rules:

    - an arm of 1 … k−1 enrolled subjects: its counts and every cell in it (a zero in a small arm says something
      about each of its few subjects); in a larger arm, completed and withdrawn both go when either is 1 … k−1
      (one would give the other away, with the enrolled count);
    - a visit's measure: n of 1 … k−1 removes n and every statistic; change and % change go when their own counts
      are; min and max always go (each is one subject's value);
    - responders: n of 1 … k−1 removes the cell; responders or non-responders of 1 … k−1 remove the responder
      count, the rate and its interval (n stays);
    - safety: subjects of 1 … k−1 removes subjects and events;
    - comparisons: removed when either arm's cell is suppressed.
    Zero counts stay (nobody to identify), except in a suppressed arm. The study period goes too: its ends are one
    subject's day 0 (the earliest) and another's last visit."""
    out = summary.model_copy(deep=True)
    out.min_cell = k
    out.period_start = out.period_end = None

    def small(n: int | None) -> bool:
        return n is not None and 0 < n < k

    hidden: set[str] = set()
    for arm in out.arms:
        whole = small(arm.enrolled)
        if whole:
            hidden.add(arm.name)
            arm.enrolled = arm.completed = arm.withdrawn = None
            arm.suppressed = True
        elif small(arm.completed) or small(arm.withdrawn):
            arm.completed = arm.withdrawn = None
            arm.suppressed = True
        for m in arm.measures:
            m.min = m.max = None
            if whole or small(m.n):
                m.n = m.n_change = m.n_pct_change = None
                m.mean = m.sd = m.median = m.mean_change = m.mean_pct_change = None
                m.mean_change_ci_low = m.mean_change_ci_high = None
                m.suppressed = True
                continue
            if small(m.n_change):
                m.n_change, m.mean_change, m.suppressed = None, None, True
                m.mean_change_ci_low = m.mean_change_ci_high = None
            if small(m.n_pct_change):
                m.n_pct_change, m.mean_pct_change, m.suppressed = None, None, True
        for r in arm.responders:
            if whole or small(r.n):
                r.n = r.responders = r.n_observed = None
                r.rate = r.ci_low = r.ci_high = None
                r.suppressed = True
            elif r.n is not None and r.responders is not None and (small(r.responders)
                                                                   or small(r.n - r.responders)):
                r.responders = None
                r.rate = r.ci_low = r.ci_high = None
                r.suppressed = True
            if r.n is not None and r.n_observed is not None and (small(r.n_observed) or small(r.n - r.n_observed)):
                r.n_observed, r.suppressed = None, True  # the observed and the imputed would be a small count
        for safety in arm.safety:
            if whole or small(safety.subjects):
                safety.subjects = safety.events = None
                safety.suppressed = True
    responders = {(a.name, r.visit, r.measure): r for a in out.arms for r in a.responders}
    for comparison in out.comparisons:
        for item in comparison.responders:
            if any(responders[(name, item.visit, item.measure)].suppressed
                   for name in (comparison.arm, comparison.versus)):
                item.rate_difference = item.odds_ratio = item.p_value = None
                item.suppressed = True
        for change in comparison.pct_change:
            if comparison.arm in hidden or comparison.versus in hidden or small(change.n) or small(change.n_versus):
                change.n = change.n_versus = None
                change.pct_change_difference = change.u_statistic = change.p_value = None
                change.suppressed = True
    return out


def _period(catalogue: Catalogue, first_day0s: list, last_day0s: list) -> tuple:
    """The study's visit period: from the first subject's baseline window to the last subject's last window
    (never after today)."""
    if not first_day0s or not catalogue.visits:
        return None, None
    start = min(first_day0s) + timedelta(days=min(v.first_day for v in catalogue.visits))
    end = max(last_day0s) + timedelta(days=max(v.last_day for v in catalogue.visits))
    end = max(start, min(end, datetime.now(UTC).date()))
    return start, end


def _compare(a: ArmSummary, b: ArmSummary, matrices: dict, empty: np.ndarray, visit_names: list[str],
             measures: list) -> ArmComparison:
    from scipy.stats import fisher_exact, mannwhitneyu  # scipy is slow to import: only when comparing

    responders = []
    rb = {(r.visit, r.measure): r for r in b.responders}
    for ra in a.responders:
        other = rb[(ra.visit, ra.measure)]
        item = ResponderComparison(visit=ra.visit, measure=ra.measure)
        if ra.n and other.n:
            assert ra.rate is not None and other.rate is not None, "an arm with n > 0 has a rate"
            assert ra.responders is not None and other.responders is not None, "compared before any suppression"
            item.rate_difference = ra.rate - other.rate
            table = [[ra.responders, ra.n - ra.responders], [other.responders, other.n - other.responders]]
            odds, p = fisher_exact(table, alternative="two-sided")
            item.odds_ratio = _finite(odds)
            item.p_value = _finite(p)
        responders.append(item)

    changes = []
    for j, visit in enumerate(visit_names[1:], start=1):
        for m in measures:
            pa = _pct_changes(matrices.get((a.name, m.key), empty), j)
            pb = _pct_changes(matrices.get((b.name, m.key), empty), j)
            change = ChangeComparison(visit=visit, measure=m.key, n=int(pa.size), n_versus=int(pb.size))
            if pa.size and pb.size:
                with np.errstate(over="ignore", invalid="ignore"):
                    change.pct_change_difference = _finite(np.mean(pa) - np.mean(pb))
                result = mannwhitneyu(pa, pb, alternative="two-sided")
                change.u_statistic = _finite(result.statistic)
                change.p_value = _finite(result.pvalue)
            changes.append(change)
    return ArmComparison(arm=a.name, versus=b.name, responders=responders, pct_change=changes)


def _pct_changes(matrix: np.ndarray, j: int) -> np.ndarray:
    values, base = matrix[:, j], matrix[:, 0]
    keep = ~np.isnan(values) & ~np.isnan(base) & (base > 0)
    return _pct_change(values[keep], base[keep])


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# --- tidy form -------------------------------------------------------------------------------------------

Figure = int | float | str  # a str: a suppressed count, "<k" (de-identified views)
COUNT_STATISTICS = frozenset({"n", "n_observed", "responders", "subjects", "events"})


def suppressed_count(summary: StudySummary) -> str:
    """How a suppressed count is written where a value must stand (CSV, report): `<k`."""
    return f"<{summary.min_cell}"


def tidy_rows(summary: StudySummary) -> Iterator[tuple[str, str, str, str, Figure]]:
    """(arm, visit, measure, statistic, value), one per figure; statistics with nothing behind them left out. A
    suppressed count is there, as `<k`; a suppressed statistic is left out like one with nothing behind it."""
    hidden = suppressed_count(summary)
    for arm in summary.arms:
        for measured in arm.measures:
            for name in MEASURE_STATISTICS:
                value = getattr(measured, name)
                if value is not None:
                    yield arm.name, measured.visit, measured.measure, name, value
                elif name in COUNT_STATISTICS and measured.suppressed:
                    yield arm.name, measured.visit, measured.measure, name, hidden
        for responding in arm.responders:
            for name in RESPONDER_STATISTICS:
                value = getattr(responding, name)
                if value is not None:
                    yield arm.name, responding.visit, responding.measure, name, value
                elif name in COUNT_STATISTICS and responding.suppressed:
                    yield arm.name, responding.visit, responding.measure, name, hidden
        for safety in arm.safety:
            for name in SAFETY_STATISTICS:
                value = getattr(safety, name)
                yield arm.name, "all", safety.measure, name, hidden if value is None else value


def format_value(value: Figure) -> str:
    """Counts as integers, everything else as the float's repr (full precision, never rounded); a suppressed
    count as it is (`<k`)."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int) else repr(float(value))


#: what makes a spreadsheet read a cell as a formula (or, tab and CR, what some strip before looking again)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(cell: str) -> str:
    """A text cell a spreadsheet shows as text: one that starts like a formula (an arm named
    `=HYPERLINK("http://x","y")`, written by whoever registered the study) gets a leading `'` (OWASP's CSV
    injection advice). Only text cells pass through here: numbers, -16.3 too, stay numbers."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def statistic_unit(summary: StudySummary, measure: str, statistic: str) -> str:
    """The unit of one figure as people write it: a measure's mean, SD, median, min, max and mean change are in its
    canonical unit (`IU/mL`, `×10³/µL`, `score`); a % change (or a difference of them) in `%`; counts, rates
    (proportions 0–1), odds ratios, U statistics and p-values have none."""
    if statistic in ("mean_pct_change", "pct_change_difference"):
        return "%"
    if statistic in ("mean", "sd", "median", "min", "max", "mean_change", "mean_change_ci_low", "mean_change_ci_high"):
        return next((m.unit_display or m.unit for m in summary.measures if m.key == measure), "")
    return ""


CsvRow = tuple[str, str, str, str, Figure, str, str, str]


def populations(summary: StudySummary) -> dict[tuple[str, str], str]:
    """(visit, key) -> the analysis population of a responder definition's figures (the same in every arm)."""
    return {(r.visit, r.measure): r.population for arm in summary.arms for r in arm.responders}


def csv_rows(summary: StudySummary) -> Iterator[CsvRow]:
    """The CSV's rows (CSV_COLUMNS): each arm's subject counts (measure `SUBJECTS`, visit `all`: enrolled, completed,
    withdrawn), then every figure of `tidy_rows` with its unit, then the between-arm comparisons (`versus` the other
    arm: responder rate difference, odds ratio and Fisher's p; % change n, n_versus, difference, U and p); each with
    its analysis population. A suppressed count is `<k`; a figure with nothing behind it is left out."""
    hidden = suppressed_count(summary)
    responder_population = populations(summary)
    for arm in summary.arms:
        for name in SUBJECT_STATISTICS:
            value = getattr(arm, name)
            yield arm.name, "all", SUBJECTS, name, hidden if value is None else value, "", "", ENROLLED
    for arm_name, visit, measure, statistic, figure in tidy_rows(summary):
        population = ENROLLED if visit == "all" and measure in SAFETY_KEYS else responder_population.get(
            (visit, measure), OBSERVED)
        yield (arm_name, visit, measure, statistic, figure, statistic_unit(summary, measure, statistic), "",
               population)
    for c in summary.comparisons:
        for r in c.responders:
            for name in RESPONDER_COMPARISON_STATISTICS:
                value = getattr(r, name)
                if value is not None:
                    yield (c.arm, r.visit, r.measure, name, value, "", c.versus,
                           responder_population.get((r.visit, r.measure), OBSERVED))
        for change in c.pct_change:
            for name in CHANGE_COMPARISON_STATISTICS:
                value = getattr(change, name)
                if value is not None:
                    yield (c.arm, change.visit, change.measure, name, value,
                           statistic_unit(summary, change.measure, name), c.versus, OBSERVED)
                elif name in ("n", "n_versus") and change.suppressed:
                    yield c.arm, change.visit, change.measure, name, hidden, "", c.versus, OBSERVED


def write_csv(summary: StudySummary, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for arm, visit, measure, statistic, value, unit, versus, population in csv_rows(summary):
        writer.writerow((csv_text(arm), csv_text(visit), csv_text(measure), csv_text(statistic),
                         format_value(value), csv_text(unit), csv_text(versus), population))


def summary_csv(summary: StudySummary) -> str:
    out = io.StringIO()
    write_csv(summary, out)
    return out.getvalue()


# --- the other forms of the same figures -------------------------------------------------------------------

def study_summary_csv(session: Session, study_id: str, *, min_cell: int | None = None) -> str:
    return summary_csv(summarize_study(session, study_id, min_cell=min_cell))


def study_measure_report(session: Session, study_id: str, *, min_cell: int | None = None) -> dict:
    from service.stats.fhir_report import summary_measure_report

    summary = summarize_study(session, study_id, min_cell=min_cell)
    return summary_measure_report(summary, list(tidy_rows(summary)), populations(summary))


def study_chart(session: Session, study_id: str, key: str, *, min_cell: int | None = None) -> str:
    from service.stats.charts import chart_svg

    return chart_svg(summarize_study(session, study_id, min_cell=min_cell), key)


def study_report(session: Session, study_id: str, *, min_cell: int | None = None) -> str:
    from service.stats.report import report_html

    return report_html(summarize_study(session, study_id, min_cell=min_cell))
