"""SDTM-shaped subject data -> CDISC ADaM (ADaMIG 1.3): ADSL, one row per subject, and one BDS dataset per catalogue
measure, one row per subject and analysis visit, with the value the summaries count there.

The analysis value of a visit is the summaries' (service/stats): a counted result in the visit's window, the one
closest to the target day, on a tie the later (day, then instant), on the same instant the smaller; a value outside
the measure's plausibility range is no value. CHG = AVAL − BASE after baseline; PCHG = 100 × CHG / BASE when
BASE > 0; CRITy/CRITyFL are the study's responder definitions on the measure, evaluated where the summaries
evaluate them (both values; for a % change rule, BASE > 0), blank elsewhere. So every summary figure can be
recomputed from these datasets.

| variable            | where it comes from                                                                 |
|---------------------|-------------------------------------------------------------------------------------|
| ADSL.TRT01P / TRT01A| `ResearchSubject.assignedArm` / `actualArm`, else `assignedArm` (the summaries' arm) |
| ITTFL / SAFFL       | an arm assigned / an administration (sent, or derived at day 0)                      |
| EFFFL               | a baseline value and a post-baseline value of some measure                           |
| COMPLFL / DCSREAS   | the DS disposition (completed / why withdrawn)                                       |
| TRTSDT, RFSTDTC     | day 0 (SAS date: days since 1960-01-01)                                              |
| BDS PARAMCD/PARAM   | the SDTM --TESTCD of the measure / its display and canonical unit                    |
| AVAL, AVISIT(N), ADT, ADY | the chosen result's --STRESN, visit, date and study day                        |
| ABLFL, BASE, CHG, PCHG | baseline flag and the changes from it                                            |
| SRCDOM, SRCVAR, SRCSEQ | the SDTM row the value came from (QS or LB, --STRESN, --SEQ)                      |
"""  # noqa: E501 (the mapping table is wider than the code)

from dataclasses import dataclass
from datetime import date
from typing import Any

from fhir_mappings.sdtm import (
    Design,
    Result,
    Row,
    Subject,
    SubjectRows,
    Variable,
    choice_key,
    effective_dtc,
    sas_names,
    study_day,
    variables,
)

SAS_EPOCH = date(1960, 1, 1)


@dataclass(frozen=True)
class Criterion:
    """A responder definition on one measure (service/stats `Responder`): % change ≤, value ≤, drop ≥."""

    key: str
    measure: str
    pct_change_at_most: float | None = None
    value_at_most: float | None = None
    drop_at_least: float | None = None

    def met(self, value: float, base: float) -> bool | None:
        """True/False where the summaries evaluate it, None where they don't (no % change without BASE > 0)."""
        if self.pct_change_at_most is not None:
            if base <= 0:
                return None
            return 100.0 * (value - base) / base <= self.pct_change_at_most
        hit = True
        if self.value_at_most is not None:
            hit &= value <= self.value_at_most
        if self.drop_at_least is not None:
            hit &= (base - value) >= self.drop_at_least
        return hit

    def describe(self) -> str:
        parts = []
        if self.pct_change_at_most is not None:
            parts.append(f"PCHG <= {self.pct_change_at_most:g}")
        if self.value_at_most is not None:
            parts.append(f"AVAL <= {self.value_at_most:g}")
        if self.drop_at_least is not None:
            parts.append(f"BASE - AVAL >= {self.drop_at_least:g}")
        return f"{self.key}: " + " and ".join(parts)


ADSL_LABEL = "Subject-Level Analysis Dataset"
ADSL = variables("""STUDYID|Study Identifier||1|Predecessor
USUBJID|Unique Subject Identifier||2|Predecessor
SUBJID|Subject Identifier for the Study|||Predecessor
SITEID|Study Site Identifier|||Predecessor
AGE|Age|integer||Predecessor
AGEU|Age Units|||Predecessor
SEX|Sex|||Predecessor
RACE|Race|||Predecessor
ARM|Description of Planned Arm|||Predecessor
ACTARM|Description of Actual Arm|||Predecessor
TRT01P|Planned Treatment for Period 01|||Derived
TRT01A|Actual Treatment for Period 01|||Derived
ITTFL|Intent-To-Treat Population Flag|||Derived
SAFFL|Safety Population Flag|||Derived
EFFFL|Efficacy Population Flag|||Derived
COMPLFL|Completers Population Flag|||Derived
DCSREAS|Reason for Discontinuation from Study|||Derived
RFSTDTC|Subject Reference Start Date/Time|||Predecessor
RFENDTC|Subject Reference End Date/Time|||Predecessor
TRTSDT|Date of First Exposure to Treatment|integer||Derived""")
_BDS = """STUDYID|Study Identifier||1|Predecessor
USUBJID|Unique Subject Identifier||2|Predecessor
TRTP|Planned Treatment|||Derived
TRTA|Actual Treatment|||Derived
PARAMCD|Parameter Code||3|Assigned
PARAM|Parameter|||Assigned
AVISIT|Analysis Visit|||Derived
AVISITN|Analysis Visit (N)|float|4|Derived
ADT|Analysis Date|integer||Derived
ADY|Analysis Relative Day|integer||Derived
AVAL|Analysis Value|float||Derived
BASE|Baseline Value|float||Derived
CHG|Change from Baseline|float||Derived
PCHG|Percent Change from Baseline|float||Derived
ABLFL|Baseline Record Flag|||Derived
SRCDOM|Source Data|||Derived
SRCVAR|Source Variable|||Derived
SRCSEQ|Source Sequence Number|integer||Derived"""


def bds_names(design: Design) -> dict[str, str]:
    """BDS dataset name (AD + the measure's test code, 8 characters) -> measure key, in catalogue order."""
    codes = design.test_codes()
    names = sas_names([f"AD{codes[m.key]}" for m in design.catalogue.measures])
    return {names[f"AD{codes[m.key]}"]: m.key for m in design.catalogue.measures}


def bds_variables(criteria: list[Criterion]) -> tuple[Variable, ...]:
    lines = [_BDS]
    for i, _ in enumerate(criteria, start=1):
        lines.append(f"CRIT{i}|Analysis Criterion {i}|||Assigned\nCRIT{i}FL|Criterion {i} Evaluation Result Flag"
                     "|||Derived")
    return variables("\n".join(lines))


def sas_date(value: str) -> int | None:
    if len(value) < 10:
        return None
    try:
        return (date.fromisoformat(value[:10]) - SAS_EPOCH).days
    except ValueError:
        return None


def adam_rows(design: Design, subject: Subject, made: SubjectRows, criteria: dict[str, list[Criterion]]
              ) -> dict[str, list[Row]]:
    """ADSL's row and the BDS rows of one subject (by dataset name)."""
    catalogue = design.catalogue
    codes = design.test_codes()
    numbers = design.visit_numbers()
    baseline = design.baseline
    visits = sorted(catalogue.visits, key=lambda v: numbers[v.name])
    treatment_p = design.arm_description(subject.assigned_arm)
    treatment_a = design.arm_description(subject.actual_arm or subject.assigned_arm)
    usubjid = f"{design.studyid}-{subject.enrolment.id}"
    out: dict[str, list[Row]] = {}
    efficacy = False
    for name, key in bds_names(design).items():
        measure = catalogue.measure(key)
        chosen: dict[str, Result] = {}
        for r in subject.results:
            if r.measure != key or r.visit not in numbers:
                continue
            target = next(v.target_day for v in visits if v.name == r.visit)
            if r.visit not in chosen or choice_key(r, target) < choice_key(chosen[r.visit], target):
                chosen[r.visit] = r
        values = {visit: r for visit, r in chosen.items() if _plausible(r.value, measure.min, measure.max)}
        base_result = values.get(baseline) if baseline else None
        base = base_result.value if base_result is not None else None
        rows = []
        for v in visits:
            got = values.get(v.name)
            if got is None:
                continue
            r = got
            domain, seq = made.seq_of[id(r)]
            when = _when(r)
            post = v.name != baseline
            row: Row = {"STUDYID": design.studyid, "USUBJID": usubjid, "TRTP": treatment_p, "TRTA": treatment_a,
                        "PARAMCD": codes[key], "PARAM": f"{measure.display} ({measure.unit_display or measure.unit})"
                        [:200], "AVISIT": v.name.replace("-", " ").upper(), "AVISITN": float(numbers[v.name]),
                        "ADT": sas_date(when), "ADY": study_day(when, made.rfstdtc), "AVAL": r.value,
                        "BASE": base, "CHG": None, "PCHG": None, "ABLFL": "" if post else "Y", "SRCDOM": domain,
                        "SRCVAR": f"{domain}STRESN", "SRCSEQ": seq}
            if post and base is not None:
                row["CHG"] = r.value - base
                row["PCHG"] = 100.0 * (r.value - base) / base if base > 0 else None
                efficacy = True
            for i, c in enumerate(criteria.get(key, ()), start=1):
                hit = c.met(r.value, base) if post and base is not None else None
                row[f"CRIT{i}"] = c.describe() if hit is not None else ""
                row[f"CRIT{i}FL"] = "" if hit is None else ("Y" if hit else "N")
            rows.append(row)
        out[name] = rows
    dm = made.rows["DM"][0]
    ds = made.rows["DS"][0] if made.rows["DS"] else None
    withdrawn = subject.status == "withdrawn"
    out["ADSL"] = [{"STUDYID": design.studyid, "USUBJID": usubjid, "SUBJID": dm["SUBJID"], "SITEID": dm["SITEID"],
                    "AGE": dm["AGE"], "AGEU": dm["AGEU"], "SEX": dm["SEX"], "RACE": dm["RACE"], "ARM": dm["ARM"],
                    "ACTARM": dm["ACTARM"], "TRT01P": treatment_p, "TRT01A": treatment_a,
                    "ITTFL": "Y" if subject.assigned_arm else "N",
                    "SAFFL": "Y" if made.rows["EX"] else "N", "EFFFL": "Y" if efficacy else "N",
                    "COMPLFL": "Y" if made.completed else "N",
                    "DCSREAS": ds["DSDECOD"] if withdrawn and ds is not None else "",
                    "RFSTDTC": dm["RFSTDTC"], "RFENDTC": dm["RFENDTC"], "TRTSDT": sas_date(dm["RFXSTDTC"])}]
    return out


def _plausible(value: float, low: Any, high: Any) -> bool:
    if value != value or value in (float("inf"), float("-inf")):
        return False
    return (low is None or value >= float(low)) and (high is None or value <= float(high))


def _when(r: Result) -> str:
    return effective_dtc(r.source.content)
