"""A study's catalogue as FHIR R4 resources: `ObservationDefinition` (one per measure) and `PlanDefinition` (the
schedule, the responder definitions, and the list of its measures), compiled into the `Catalogue` the rest of the
code reads (fhir_mappings/terminology.py). Pure functions: the checks (422 naming the element) and the compiler.

ObservationDefinition -> `Measure`:

| Measure field      | FHIR path                                                               | notes |
|--------------------|-------------------------------------------------------------------------|-------|
| `key`              | `identifier[system=…/NamingSystem/measure-key].value`                   | else the first code; the key of every figure |
| `display`          | `preferredReportName`, else `code.text`                                 | |
| `codes`            | `code.coding[]` (system, code)                                          | what an Observation.code may carry |
| `category`         | `category[0].coding[0].code`                                            | observation-category: survey, laboratory |
| `unit`             | `quantitativeDetails.unit.coding[0].code` (UCUM)                        | the canonical unit (conversion factor 1) |
| `unit_display`     | `quantitativeDetails.unit.text`                                         | the unit as people write it (`IU/mL`) |
| `units`            | `quantitativeDetails.customaryUnit` + `conversionFactor`; extension `accepted-unit` (`unit` Coding, `conversionFactor`) on `quantitativeDetails` | value in that unit = canonical × factor; a Coding without system is a unit as written (not UCUM) |
| `max_decimals`     | `quantitativeDetails.decimalPrecision`                                  | |
| `integer`          | `permittedDataType` contains `integer`                                  | a whole number (sent as valueQuantity) |
| `min`, `max`       | `qualifiedInterval[category=absolute].range.low/high.value`             | in the canonical unit |
| `parts`            | extension `composite-score`: `expression` (Expression, text/fhirpath) and `part` (`name`, `code` Coding, `range`) | total = expression over `%name`, checked against `Observation.component[]` (±0.05) |

PlanDefinition -> `Catalogue`:

| Catalogue field    | FHIR path                                                               | notes |
|--------------------|-------------------------------------------------------------------------|-------|
| `name`, `title`    | `PlanDefinition.id`, `.title`                                           | a study names it by `ResearchStudy.protocol` |
| `measures`         | extension `catalogue-measure` (valueReference ObservationDefinition)    | in this order |
| `visits`           | `action[]`: `code` (https://trial-fhir.org/CodeSystem/visit), `timingRange` (days, low…high), extension `target-day` (valueInteger) | windows may not overlap |
| `counted_statuses` | extension `counted-status` (valueCode, Observation.status)              | |
| day-0 rule         | extension `day-zero` (valueCode `research-subject-period-start`)        | the only rule there is |
| `responders`       | `goal[]`: `description.text` (key), `target[]`: `measure` (a measure's code), `detailRange.high`, extension `criterion` (`percent-change`, `change`, `value`: at most high); extension `analysis-population` (`observed`, `non-responder-imputation`) | |
| `safety_keys`      | extension `safety-key` (valueCode: AE-ANY, AE-SERIOUS, AE-SEVERE, AE-RELATED, AE-WITHDRAWAL) | absent: all five |
| `version`          | the PlanDefinition's `meta.versionId`                                   | a new version of a measure makes a new version of its plans |
"""  # noqa: E501 (the mapping tables are wider than the code)

from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from fhir_mappings.composite import PART_NAME, check_expression, compile_score
from fhir_mappings.outcome import Issue, issue
from fhir_mappings.terminology import (
    DAY_ZERO_RULES,
    OBSERVATION_STATUS,
    SAFETY_KEYS,
    UCUM,
    VISIT_SYSTEM,
    Catalogue,
    Composite,
    Measure,
    Part,
    Responder,
    Visit,
)

SD = "https://trial-fhir.org/StructureDefinition/"
MEASURE_KEY_SYSTEM = "https://trial-fhir.org/NamingSystem/measure-key"
ACCEPTED_UNIT_EXT = SD + "accepted-unit"
COMPOSITE_EXT = SD + "composite-score"
CATALOGUE_MEASURE_EXT = SD + "catalogue-measure"
COUNTED_STATUS_EXT = SD + "counted-status"
DAY_ZERO_EXT = SD + "day-zero"
SAFETY_KEY_EXT = SD + "safety-key"
TARGET_DAY_EXT = SD + "target-day"
CRITERION_EXT = SD + "criterion"
POPULATION_EXT = SD + "analysis-population"
CRITERIA = ("percent-change", "change", "value")
POPULATIONS = ("observed", "non-responder-imputation")


# -- small readers -----------------------------------------------------------------------------------------------

def _number(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        result = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return result if result.is_finite() else None


def _extensions(element: dict[str, Any] | None, url: str) -> list[tuple[int, dict[str, Any]]]:
    return [(i, e) for i, e in enumerate((element or {}).get("extension") or []) if isinstance(e, dict)
            and e.get("url") == url]


def _sub(ext: dict[str, Any], url: str) -> tuple[int, dict[str, Any]] | None:
    return next(iter(_extensions(ext, url)), None)


@cache
def _ucum_parser() -> Any:
    from ucumvert import get_ucum_parser

    return get_ucum_parser()


def ucum_problem(code: str) -> str | None:
    """Why `code` is not a UCUM unit (ucumvert's grammar of UCUM), None when it is one."""
    if not code or len(code) > 100:
        return "empty or too long"
    try:
        _ucum_parser().parse(code)
    except Exception as exc:  # lark's errors (UnexpectedCharacters, UnexpectedEOF, …) share no public base
        return type(exc).__name__
    return None


# -- ObservationDefinition ---------------------------------------------------------------------------------------

def _units(payload: dict[str, Any]) -> list[tuple[Any, Any, Any, str, str]]:
    """(unit code, conversion factor, system, display, where) of every unit a measure accepts, canonical first."""
    qd = payload.get("quantitativeDetails") or {}
    found: list[tuple[Any, Any, Any, str, str]] = []
    unit = (qd.get("unit") or {})
    coding = ((unit.get("coding") or [{}])[0]) or {}
    found.append((coding.get("code"), 1, coding.get("system"), unit.get("text") or coding.get("display") or "",
                  "ObservationDefinition.quantitativeDetails.unit.coding[0].code"))
    if qd.get("customaryUnit"):
        cu = qd["customaryUnit"]
        coding = ((cu.get("coding") or [{}])[0]) or {}
        found.append((coding.get("code"), qd.get("conversionFactor", 1), coding.get("system"),
                      cu.get("text") or coding.get("display") or "",
                      "ObservationDefinition.quantitativeDetails.customaryUnit.coding[0].code"))
    for i, ext in _extensions(qd, ACCEPTED_UNIT_EXT):
        where = f"ObservationDefinition.quantitativeDetails.extension[{i}]"
        u = _sub(ext, "unit")
        f = _sub(ext, "conversionFactor")
        coding = (u[1].get("valueCoding") or {}) if u else {}
        found.append((coding.get("code"), f[1].get("valueDecimal") if f else None, coding.get("system"),
                      coding.get("display") or "", where))
    return found


def _interval(payload: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    for i, qi in enumerate(payload.get("qualifiedInterval") or []):
        if isinstance(qi, dict) and qi.get("category") in (None, "absolute") and qi.get("range"):
            return i, qi["range"]
    return None


def _composite(payload: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    return next(iter(_extensions(payload, COMPOSITE_EXT)), None)


def measure_key(payload: dict[str, Any]) -> str | None:
    for ident in payload.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == MEASURE_KEY_SYSTEM and ident.get("value"):
            value: str = ident["value"]
            return value
    codings = (payload.get("code") or {}).get("coding") or []
    return codings[0].get("code") if codings and isinstance(codings[0], dict) else None


def check_observation_definition(payload: dict[str, Any]) -> list[Issue]:
    """What a measure definition must hold for the catalogue to use it; each issue names its element."""
    od = "ObservationDefinition"
    issues = []
    codings = [c for c in (payload.get("code") or {}).get("coding") or [] if isinstance(c, dict)]
    if not codings or any(not c.get("system") or not c.get("code") for c in codings):
        issues.append(issue("required", "A measure needs at least one code, each with its system and code",
                            f"{od}.code.coding"))
    key = measure_key(payload)
    if key is not None and (len(key) > 64 or not key.strip()):
        issues.append(issue("value", "The measure key is 1 to 64 characters", f"{od}.identifier"))
    types = payload.get("permittedDataType") or []
    if "Quantity" not in types:
        issues.append(issue("business-rule", "A measure of this server is a Quantity: permittedDataType must "
                            "include Quantity (and integer for whole numbers)", f"{od}.permittedDataType"))
    seen: set[str] = set()
    for code, factor, system, _, where in _units(payload):
        if not code:
            issues.append(issue("required", "Each unit needs its code", where))
            continue
        if code in seen:
            issues.append(issue("business-rule", f"Unit '{code}' is listed twice", where))
        seen.add(code)
        if where.endswith(".unit.coding[0].code") and system != UCUM:
            issues.append(issue("code-invalid", f"The canonical unit must be a UCUM code ({UCUM})", where))
        if system == UCUM:
            problem = ucum_problem(code)
            if problem is not None:
                issues.append(issue("code-invalid", f"'{code}' is not a UCUM unit ({problem})", where))
        number = _number(factor)
        if number is None or number <= 0:
            issues.append(issue("value", "A conversion factor is a positive number", where))
    precision = (payload.get("quantitativeDetails") or {}).get("decimalPrecision")
    if precision is not None and (not isinstance(precision, int) or isinstance(precision, bool) or precision < 0):
        issues.append(issue("value", "decimalPrecision is a whole number ≥ 0",
                            f"{od}.quantitativeDetails.decimalPrecision"))
    found = _interval(payload)
    if found is not None:
        i, rng = found
        low, high = (_number((rng.get(k) or {}).get("value")) for k in ("low", "high"))
        if low is not None and high is not None and low > high:
            issues.append(issue("value", f"The valid range is empty ({low} > {high})",
                                f"{od}.qualifiedInterval[{i}].range"))
    composite = _composite(payload)
    if composite is not None:
        issues += _check_composite(*composite)
    return issues


def _check_composite(index: int, ext: dict[str, Any]) -> list[Issue]:
    where = f"ObservationDefinition.extension[{index}]"
    issues = []
    names: set[str] = set()
    for i, part in _extensions(ext, "part"):
        at = f"{where}.extension[{i}]"
        name = (_sub(part, "name") or (0, {}))[1].get("valueString")
        coding = (_sub(part, "code") or (0, {}))[1].get("valueCoding") or {}
        if not isinstance(name, str) or not PART_NAME.fullmatch(name):
            issues.append(issue("value", "A part's name is its variable in the expression: letters, digits and _, "
                                "not starting with a digit", f"{at}.extension"))
        elif name in names:
            issues.append(issue("business-rule", f"Part '{name}' is declared twice", f"{at}.extension"))
        else:
            names.add(name)
        if not coding.get("system") or not coding.get("code"):
            issues.append(issue("required", "A part needs its code (system and code)", f"{at}.extension"))
    found = _sub(ext, "expression")
    expression = ((found[1].get("valueExpression") or {}) if found else {})
    text = expression.get("expression")
    if found is None or not isinstance(text, str) or not text.strip():
        return issues + [issue("required", "A composite score needs its FHIRPath expression",
                               f"{where}.extension")]
    at = f"{where}.extension[{found[0]}].valueExpression.expression"
    if expression.get("language", "text/fhirpath") != "text/fhirpath":
        issues.append(issue("code-invalid", "The expression's language is text/fhirpath",
                            f"{where}.extension[{found[0]}].valueExpression.language"))
    errors, variables = check_expression(text)
    issues += [issue("invalid", f"The FHIRPath expression does not parse {e}", at) for e in errors]
    unknown = sorted({v for v in variables if v not in names})
    if unknown:
        issues.append(issue("business-rule", f"The expression references parts that are not declared: "
                            f"{', '.join('%' + u for u in unknown)}; declared: {', '.join(sorted(names)) or 'none'}",
                            at))
    if not issues and not names:
        issues.append(issue("required", "A composite score needs its parts", f"{where}.extension"))
    return issues


def measure_from_definition(payload: dict[str, Any]) -> Measure:
    """The compiled measure of an ObservationDefinition that passed `check_observation_definition`."""
    units = _units(payload)
    qd = payload.get("quantitativeDetails") or {}
    found = _interval(payload)
    rng = found[1] if found else {}
    composite = None
    if (ext := _composite(payload)) is not None:
        parts = []
        for _, part in _extensions(ext[1], "part"):
            coding = (_sub(part, "code") or (0, {}))[1].get("valueCoding") or {}
            prange = (_sub(part, "range") or (0, {}))[1].get("valueRange") or {}
            parts.append(Part(name=(_sub(part, "name") or (0, {}))[1]["valueString"], system=coding["system"],
                              code=coding["code"], min=_number((prange.get("low") or {}).get("value")),
                              max=_number((prange.get("high") or {}).get("value"))))
        expression = (_sub(ext[1], "expression") or (0, {}))[1]["valueExpression"]["expression"]
        composite = Composite(expression=expression, parts=tuple(parts), evaluate=compile_score(expression))
    categories = [c for cat in payload.get("category") or [] for c in (cat.get("coding") or [])]
    key = measure_key(payload) or payload.get("id") or ""
    return Measure(
        key=key, display=payload.get("preferredReportName") or (payload.get("code") or {}).get("text") or key,
        codes=tuple((c["system"], c["code"]) for c in payload["code"]["coding"]),
        unit=units[0][0],
        units={code: (Decimal(1), Decimal(str(factor))) for code, factor, *_ in units},
        min=_number((rng.get("low") or {}).get("value")), max=_number((rng.get("high") or {}).get("value")),
        integer="integer" in (payload.get("permittedDataType") or []),
        max_decimals=qd.get("decimalPrecision"), parts=composite,
        category=categories[0].get("code") or "survey" if categories else "survey",
        unit_display=units[0][3] or units[0][0])


# -- PlanDefinition ----------------------------------------------------------------------------------------------

def measure_references(plan: dict[str, Any]) -> list[tuple[int, Any]]:
    """(extension index, reference) of each measure the plan lists."""
    return [(i, e.get("valueReference")) for i, e in _extensions(plan, CATALOGUE_MEASURE_EXT)]


def _visits(plan: dict[str, Any]) -> list[tuple[int, Visit | None, list[Issue]]]:
    found = []
    for i, action in enumerate(plan.get("action") or []):
        where = f"PlanDefinition.action[{i}]"
        issues = []
        code = next((c.get("code") for cc in action.get("code") or [] for c in cc.get("coding") or []
                     if c.get("system") == VISIT_SYSTEM and c.get("code")), None)
        if code is None:
            issues.append(issue("required", f"A visit needs its code ({VISIT_SYSTEM})", f"{where}.code"))
        rng = action.get("timingRange") or {}
        low, high = (_number((rng.get(k) or {}).get("value")) for k in ("low", "high"))
        units = {(rng.get(k) or {}).get("code") for k in ("low", "high")}
        if low is None or high is None or low != int(low) or high != int(high) or units - {"d", None}:
            issues.append(issue("required", "A visit's window is a timingRange of whole days (UCUM d), low and high",
                                f"{where}.timingRange"))
        elif low > high:
            issues.append(issue("value", f"The window is empty ({low} > {high} days)", f"{where}.timingRange"))
        target = next((e.get("valueInteger") for _, e in _extensions(action, TARGET_DAY_EXT)), None)
        if not isinstance(target, int) or isinstance(target, bool):
            issues.append(issue("required", "A visit needs its target day (extension target-day, valueInteger)",
                                f"{where}.extension"))
        elif low is not None and high is not None and not low <= target <= high:
            issues.append(issue("value", f"The target day {target} is outside the window {low}…{high}",
                                f"{where}.extension"))
        visit = None if issues else Visit(name=str(code), target_day=int(str(target)), first_day=int(str(low)),
                                          last_day=int(str(high)))
        found.append((i, visit, issues))
    return found


def _responders(plan: dict[str, Any], measures: list[Measure]) -> tuple[list[Responder], list[Issue]]:
    by_code = {code: m for m in measures for code in m.codes}
    found, issues = [], []
    for i, goal in enumerate(plan.get("goal") or []):
        where = f"PlanDefinition.goal[{i}]"
        key = (goal.get("description") or {}).get("text")
        if not key:
            issues.append(issue("required", "A responder definition needs its key (description.text)",
                                f"{where}.description.text"))
        population = next((e.get("valueCode") for _, e in _extensions(goal, POPULATION_EXT)), "observed")
        if population not in POPULATIONS:
            issues.append(issue("code-invalid", f"The analysis population is one of {', '.join(POPULATIONS)}",
                                f"{where}.extension"))
        bounds: dict[str, float] = {}
        measure = None
        for j, target in enumerate(goal.get("target") or []):
            at = f"{where}.target[{j}]"
            codings = (target.get("measure") or {}).get("coding") or []
            m = next((by_code[(c.get("system"), c.get("code"))] for c in codings
                      if (c.get("system"), c.get("code")) in by_code), None)
            if m is None:
                issues.append(issue("code-invalid", "The target's measure is not a measure of this catalogue",
                                    f"{at}.measure"))
            elif measure is not None and m.key != measure:
                issues.append(issue("business-rule", "Every target of one definition is on the same measure",
                                    f"{at}.measure"))
            else:
                measure = m.key
            criterion = next((e.get("valueCode") for _, e in _extensions(target, CRITERION_EXT)), None)
            if criterion not in CRITERIA or criterion in bounds:
                issues.append(issue("code-invalid", f"Each target has one criterion (extension criterion): one of "
                                    f"{', '.join(CRITERIA)}, each at most once", f"{at}.extension"))
            high = _number(((target.get("detailRange") or {}).get("high") or {}).get("value"))
            if high is None:
                issues.append(issue("required", "A target's bound is detailRange.high (the criterion is at most it)",
                                    f"{at}.detailRange.high.value"))
            elif criterion in CRITERIA:
                bounds[str(criterion)] = float(high)
        if not goal.get("target"):
            issues.append(issue("required", "A responder definition needs at least one target", f"{where}.target"))
        if key and measure and not issues:
            change = bounds.get("change")
            found.append(Responder(key=key, measure=measure, pct_change_at_most=bounds.get("percent-change"),
                                   value_at_most=bounds.get("value"),
                                   drop_at_least=None if change is None else -change, population=str(population)))
    keys = [r.key for r in found]
    issues += [issue("business-rule", f"Responder key '{k}' is used twice", "PlanDefinition.goal")
               for k in sorted({k for k in keys if keys.count(k) > 1})]
    return found, issues


def check_plan_definition(plan: dict[str, Any], definitions: dict[str, dict[str, Any]]) -> list[Issue]:
    """What a catalogue's plan must hold; `definitions` are its measures' ObservationDefinitions by reference
    (`ObservationDefinition/id`) as stored."""
    issues = []
    statuses = [(i, e.get("valueCode")) for i, e in _extensions(plan, COUNTED_STATUS_EXT)]
    issues += [issue("code-invalid", f"'{s}' is not an Observation status", f"PlanDefinition.extension[{i}]")
               for i, s in statuses if s not in OBSERVATION_STATUS]
    if not statuses:
        issues.append(issue("required", "The plan names the result statuses that count (extension counted-status)",
                            "PlanDefinition.extension"))
    for i, e in _extensions(plan, DAY_ZERO_EXT):
        if e.get("valueCode") not in DAY_ZERO_RULES:
            issues.append(issue("code-invalid", f"The day-0 rule is one of {', '.join(DAY_ZERO_RULES)}",
                                f"PlanDefinition.extension[{i}]"))
    for i, e in _extensions(plan, SAFETY_KEY_EXT):
        if e.get("valueCode") not in SAFETY_KEYS:
            issues.append(issue("code-invalid", f"A safety key is one of {', '.join(SAFETY_KEYS)}",
                                f"PlanDefinition.extension[{i}]"))
    refs = measure_references(plan)
    if not refs:
        issues.append(issue("required", "The plan lists its measures (extension catalogue-measure)",
                            "PlanDefinition.extension"))
    measures: list[Measure] = []
    codes: dict[tuple[str, str], str] = {}
    for i, ref in refs:
        od = definitions.get((ref or {}).get("reference", ""))
        if od is None:
            continue  # the reference was resolved by the caller (422 there)
        m = measure_from_definition(od)
        for code in m.codes:
            if code in codes or m.key in {x.key for x in measures}:
                issues.append(issue("business-rule", f"Measure {m.key} repeats a key or code of {codes.get(code)}",
                                    f"PlanDefinition.extension[{i}]"))
                break
            codes[code] = m.key
        measures.append(m)
    visits = _visits(plan)
    for _, _, found in visits:
        issues += found
    if not visits:
        issues.append(issue("required", "The plan needs its visits (action)", "PlanDefinition.action"))
    good = sorted((v.first_day, v.last_day, i, v.name) for i, v, _ in visits if v is not None)
    for (_, last, _, name), (first, _, j, other) in zip(good, good[1:], strict=False):
        if first <= last:
            issues.append(issue("business-rule", f"The window of visit {other} overlaps that of {name}",
                                f"PlanDefinition.action[{j}].timingRange"))
    names = [v.name for _, v, _ in visits if v is not None]
    issues += [issue("business-rule", f"Visit {n} is defined twice", "PlanDefinition.action")
               for n in sorted({n for n in names if names.count(n) > 1})]
    issues += _responders(plan, measures)[1]
    return issues


def compile_catalogue(plan: dict[str, Any], definitions: dict[str, dict[str, Any]], *, version: str,
                      code_system: dict[str, Any] | None = None) -> Catalogue:
    """The compiled catalogue of a plan that passed `check_plan_definition`, with its measures' definitions."""
    measures = [measure_from_definition(definitions[ref["reference"]]) for _, ref in measure_references(plan)]
    displays: dict[str, str] = {}
    for ref in (r for _, r in measure_references(plan)):
        for code, _, _, display, _ in _units(definitions[ref["reference"]]):
            if display:
                displays.setdefault(code, display)
    visits = tuple(sorted((v for _, v, _ in _visits(plan) if v is not None), key=lambda v: v.first_day))
    safety = tuple(str(e.get("valueCode")) for _, e in _extensions(plan, SAFETY_KEY_EXT))
    return Catalogue(
        name=plan["id"], title=plan.get("title") or plan.get("name") or plan["id"], measures=tuple(measures),
        visits=visits,
        counted_statuses=frozenset(str(e.get("valueCode")) for _, e in _extensions(plan, COUNTED_STATUS_EXT)),
        code_system=code_system or {}, unit_displays=displays,
        responders=tuple(_responders(plan, measures)[0]),
        safety_keys=tuple(k for k in SAFETY_KEYS if k in safety) if safety else SAFETY_KEYS, version=version)
