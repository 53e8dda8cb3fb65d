"""The summary document (plain JSON, not FHIR): what `GET /studies/{id}/summary` returns.

Every figure is unrounded. A statistic with nothing behind it (no values at a visit, the SD of one value, a
rate over nobody) is `null`; a count of zero is `0`.

In a de-identified view (`min_cell` set: k-anonymity) a cell of fewer than `min_cell` subjects is suppressed: its
counts are `null` (never `0`: a null count means "1 to min_cell − 1") and its statistics are removed, and it says
`suppressed: true`. See service.stats.service.suppress for the rules.
"""

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SUMMARY_EXAMPLE: dict[str, Any] = {
    "study_id": "nct01927705",
    "title": "hUCB-MSCs in moderate-to-severe atopic dermatitis (Phase I/IIa)",
    "catalogue": "atopic-dermatitis",
    "catalogue_version": "1",
    "period_start": "2024-01-10",
    "period_end": "2024-04-30",
    "generated": "2024-05-01T08:00:00Z",
    "counted_statuses": ["amended", "corrected", "final"],
    "visits": [{"name": "baseline", "target_day": 0, "first_day": -30, "last_day": 0},
               {"name": "week-4", "target_day": 28, "first_day": 21, "last_day": 35},
               {"name": "week-12", "target_day": 84, "first_day": 70, "last_day": 98}],
    "measures": [{"key": "EASI", "display": "EASI", "unit": "{score}", "unit_display": "score", "excluded": 0}],
    "arms": [{
        "name": "high-dose", "dose": "5.0 × 10^7 hUCB-MSCs, one subcutaneous administration",
        "enrolled": 11, "completed": 10, "withdrawn": 1,
        "measures": [
            {"visit": "baseline", "measure": "EASI", "unit": "{score}", "population": "observed", "n": 11,
             "mean": 26.4, "sd": 7.9, "median": 24.8, "min": 16.2, "max": 41.0, "n_change": 0, "mean_change": None,
             "mean_change_ci_low": None, "mean_change_ci_high": None, "n_pct_change": 0, "mean_pct_change": None},
            {"visit": "week-12", "measure": "EASI", "unit": "{score}", "population": "observed", "n": 10,
             "mean": 12.1, "sd": 6.3, "median": 11.5, "min": 3.2, "max": 24.0, "n_change": 10, "mean_change": -14.6,
             "mean_change_ci_low": -19.1, "mean_change_ci_high": -10.1, "n_pct_change": 10,
             "mean_pct_change": -54.9}],
        "responders": [{"visit": "week-12", "measure": "EASI-50", "population": "non-responder-imputation",
                        "n": 11, "n_observed": 10, "responders": 6, "rate": 0.5455, "ci_low": 0.2801,
                        "ci_high": 0.7872}],
        "safety": [{"measure": "AE-ANY", "subjects": 4, "events": 6},
                   {"measure": "AE-SERIOUS", "subjects": 0, "events": 0}],
    }],
    "comparisons": [{
        "arm": "high-dose", "versus": "low-dose",
        "responders": [{"visit": "week-12", "measure": "EASI-50", "rate_difference": 0.25, "odds_ratio": 2.8,
                        "p_value": 0.39}],
        "pct_change": [{"visit": "week-12", "measure": "EASI", "n": 10, "n_versus": 10,
                        "pct_change_difference": -19.5, "u_statistic": 28.0, "p_value": 0.11}],
    }],
}


class VisitInfo(BaseModel):
    name: str = Field(description="Visit key, e.g. `baseline`, `week-4`, `week-12`")
    target_day: int = Field(description="Target day counted from day 0; the value closest to it counts")
    first_day: int = Field(description="First day of the window (inclusive)")
    last_day: int = Field(description="Last day of the window (inclusive)")


class MeasureInfo(BaseModel):
    key: str = Field(description="Measure key of the study's catalogue, e.g. `EASI`")
    display: str
    unit: str = Field(description="Canonical UCUM unit every value is converted to, e.g. `[IU]/mL`")
    unit_display: str = Field("", description="The canonical unit as people write it, from the catalogue's "
                              "`unit_display`: `IU/mL`, `×10³/µL`, `score`, `%`")
    excluded: int = Field(0, description="Stored values of this measure left out of every figure: not finite, or "
                          "outside the measure's plausibility limits (what a write is refused for today)")


class MeasureStats(BaseModel):
    """Descriptive statistics of one measure at one visit, over the arm's subjects with a value there."""

    visit: str
    measure: str
    unit: str
    population: str = Field("observed", description="Analysis population of these figures: `observed` (each figure "
                            "over the subjects with the values it needs: n, n_change, n_pct_change)")
    n: int | None = Field(description="Subjects with a counted value at this visit (null: suppressed)")
    mean: float | None = None
    sd: float | None = Field(None, description="Sample standard deviation (n−1); null for fewer than 2 values")
    median: float | None = None
    min: float | None = None
    max: float | None = None
    n_change: int | None = Field(0, description="Subjects with both a baseline and a value at this visit (0 at "
                                 "baseline)")
    mean_change: float | None = Field(None, description="Mean of (visit − baseline) over the n_change subjects")
    mean_change_ci_low: float | None = Field(None, description="95% confidence interval of mean_change, lower end: "
                                             "mean ± t(0.975, n_change − 1) × SD / √n_change; null below 2 subjects")
    mean_change_ci_high: float | None = Field(None, description="95% confidence interval of mean_change, upper end")
    n_pct_change: int | None = Field(0, description="Those of the n_change subjects whose baseline is > 0")
    mean_pct_change: float | None = Field(None, description="Mean of 100 × (visit − baseline) / baseline")
    suppressed: bool = Field(False, description="De-identified view: fewer than `min_cell` subjects behind this "
                             "cell, so its counts are null and its statistics removed")


class ResponderStats(BaseModel):
    """Responders at one post-baseline visit, with a 95% Wilson score interval for the rate."""

    visit: str
    measure: str = Field(description="Responder key: `EASI-50`, `EASI-75`, `EASI-90`, `IGA-SUCCESS`")
    population: str = Field("observed", description="Analysis population: `observed` (n = subjects judged from their "
                            "values) or `non-responder-imputation` (n = every dosed subject expected at the visit; "
                            "those not judged from values count as non-responders)")
    n: int | None = Field(description="The rate's denominator: subjects the response can be judged for (both values; "
                          "for a % change, baseline > 0), and with non-responder imputation also the dosed subjects "
                          "expected at the visit without them")
    n_observed: int | None = Field(None, description="Subjects judged from their values (equal to n for `observed`)")
    responders: int | None
    rate: float | None = Field(None, description="responders / n; null when n = 0")
    ci_low: float | None = None
    ci_high: float | None = None
    suppressed: bool = Field(False, description="De-identified view: fewer than `min_cell` subjects behind this "
                             "cell, so its counts are null and its statistics removed")


class SafetyStats(BaseModel):
    """Adverse events of the arm (actuality = actual only), all visits."""

    measure: str = Field(description="`AE-ANY`, `AE-SERIOUS`, `AE-SEVERE`, `AE-RELATED` or `AE-WITHDRAWAL`")
    subjects: int | None = Field(description="Subjects with at least one such event")
    events: int | None = Field(description="Number of such events")
    suppressed: bool = Field(False, description="De-identified view: fewer than `min_cell` subjects behind this "
                             "cell, so its counts are null and its statistics removed")


class ArmSummary(BaseModel):
    name: str = Field(description="Arm name (`ResearchSubject.actualArm`, else `assignedArm`)")
    dose: str | None = Field(None, description="The arm's description in the ResearchStudy (its dose)")
    enrolled: int | None = Field(description="ResearchSubjects of the study in this arm")
    completed: int | None = Field(description="Enrolled, not withdrawn, and either with a counted result at the last "
                                       "visit or with status `off-study` / `follow-up`")
    withdrawn: int | None = Field(description="ResearchSubjects with status `withdrawn`")
    measures: list[MeasureStats] = Field(description="One entry per visit and measure, in catalogue order")
    responders: list[ResponderStats] = Field(description="One entry per post-baseline visit and responder key")
    safety: list[SafetyStats]
    suppressed: bool = Field(False, description="De-identified view: fewer than `min_cell` subjects behind this "
                             "cell, so its counts are null and its statistics removed")


class ResponderComparison(BaseModel):
    visit: str
    measure: str = Field(description="Responder key")
    rate_difference: float | None = Field(None, description="rate(arm) − rate(versus)")
    odds_ratio: float | None = None
    p_value: float | None = Field(None, description="Two-sided Fisher's exact test on the 2×2 table")
    suppressed: bool = Field(False, description="De-identified view: fewer than `min_cell` subjects behind this "
                             "cell, so its counts are null and its statistics removed")


class ChangeComparison(BaseModel):
    visit: str
    measure: str
    n: int | None = Field(description="Subjects with a % change in `arm`")
    n_versus: int | None = Field(description="Subjects with a % change in `versus`")
    pct_change_difference: float | None = Field(None, description="mean % change(arm) − mean % change(versus)")
    u_statistic: float | None = Field(None, description="Mann–Whitney U of `arm`")
    p_value: float | None = Field(None, description="Two-sided Mann–Whitney U test on the % changes")
    suppressed: bool = Field(False, description="De-identified view: fewer than `min_cell` subjects behind this "
                             "cell, so its counts are null and its statistics removed")


class ArmComparison(BaseModel):
    """Dose comparison of one pair of arms (every pair when a study has more than two)."""

    arm: str
    versus: str
    responders: list[ResponderComparison]
    pct_change: list[ChangeComparison]


class StudySummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": SUMMARY_EXAMPLE})

    study_id: str
    title: str | None = None
    catalogue: str = Field(description="The study's measure catalogue: the id of its PlanDefinition "
                           "(`ResearchStudy.protocol`), e.g. `atopic-dermatitis`")
    catalogue_version: str = Field("shipped", description="The version of the catalogue the figures used: the "
                                   "PlanDefinition's versionId (`shipped`: the package's own, not stored)")
    period_start: date | None = Field(None, description="Opening of the first subject's baseline window "
                                      "(earliest day 0 − 30 days)")
    period_end: date | None = Field(None, description="Close of the last subject's last visit window (latest "
                                    "day 0 + 98 days), never after today")
    generated: datetime = Field(description="When these figures were computed (UTC)")
    counted_statuses: list[str] = Field(description="Observation statuses that count")
    visits: list[VisitInfo]
    measures: list[MeasureInfo]
    arms: list[ArmSummary]
    comparisons: list[ArmComparison]
    min_cell: int | None = Field(None, description="De-identified view: cells of fewer subjects than this are "
                                 "suppressed (k-anonymity); null: nothing suppressed")




class VisitProgress(BaseModel):
    """Data completeness of one visit of the catalogue, as of a day."""

    visit: str
    first_day: int = Field(description="First day of the window (from day 0, inclusive)")
    last_day: int = Field(description="Last day of the window (inclusive)")
    due: int | None = Field(description="Subjects whose window has opened and who are not withdrawn (or came all "
                            "the same: a withdrawn subject is due only at the visits it came to)")
    expected: int | None = Field(description="Results expected: due subjects × the catalogue's measures")
    received: int | None = Field(description="Results received: the due subjects' distinct measures with a counted "
                                 "result at the visit")
    completeness: float | None = Field(None, description="received / expected (0–1); null when nothing is expected")
    overdue: int | None = Field(description="Subjects not withdrawn whose window has closed without any counted "
                                "result at the visit")
    awaiting: int | None = Field(description="Subjects not withdrawn whose window is open today, with no counted "
                                 "result yet")


class SeriousnessCount(BaseModel):
    seriousness: str = Field(description="`serious`, `non-serious` (adverse-event-seriousness), or `not recorded`")
    events: int | None
    subjects: int | None


class StudyProgress(BaseModel):
    """How far a study's data has come: completeness per visit, adverse events by seriousness, the latest result.
    De-identified view: counts of 1 … min_cell − 1 subjects are null (and what is derived from them)."""

    study_id: str
    title: str | None = None
    as_of: date = Field(description="The day the windows are judged against (today, UTC)")
    measures: int = Field(description="Measures of the study's catalogue: results expected per subject and visit")
    visits: list[VisitProgress]
    adverse_events: list[SeriousnessCount] = Field(description="Actual adverse events by seriousness")
    latest_result: datetime | None = Field(None, description="When the study's latest result was obtained")
    min_cell: int | None = None
