"""FHIR search, read without I/O: the query string parsed into typed values (tokens, references, date ranges,
quantities, strings), result parameters and cursors; `_summary`/`_elements` subsetting; SearchParameter resources.

What a type supports (its parameters, sort keys, includes) is not listed here: each stored type declares it with
its domain (service/<domain>/service.py, listed in service/core/registry.py), and the registry hands it to
`parse_search` as a `SearchSpec`. Every type has `_id`, `_lastUpdated` and `identifier` (`common_params`).

Dates without a time zone are read as UTC; a partial date is the range it covers (`2024-03` = March 2024).
"""

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import cache, lru_cache
from typing import Any, cast

import orjson

from fhir_mappings import fhir
from fhir_mappings.outcome import Issue, issue
from fhir_mappings.primitives import CONTROL_RE, whole_number
from fhir_mappings.references import ID_RE
from fhir_mappings.terminology import UCUM, catalogue_names, load_catalogue

SEARCH_PARAMETER_BASE = "https://trial-fhir.org/SearchParameter"
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "Resource subsetted"}
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
MAX_REVINCLUDE = 1000


@dataclass(frozen=True, slots=True)
class ParamDef:
    """One supported search parameter of one resource type."""

    name: str
    type: str  # SearchParameter.type: token | reference | date | quantity | string
    expression: str
    description: str
    targets: tuple[str, ...] = ()
    systems: tuple[str, ...] = ()  # token: the code systems its values come from ("" = any system matches)
    custom: bool = False  # a trial parameter (its SearchParameter derives from no R4 one)

    @property
    def definition(self) -> str:
        """Canonical URL of the SearchParameter this server serves for the parameter (`GET SearchParameter/<id>`):
        what it supports exactly (its modifiers, comparators and chains)."""
        return f"{SEARCH_PARAMETER_BASE}/{self.id_for(self.base)}"

    @property
    def derived_from(self) -> str | None:
        """Canonical URL of the FHIR R4 SearchParameter this one narrows (None for a trial parameter)."""
        if self.custom:
            return None
        if self.name in ("_id", "_lastUpdated"):
            return f"http://hl7.org/fhir/SearchParameter/{self.id_for('Resource')}"
        own = _R4_SHARED.get((self.base, self.name), self.id_for(self.base))
        return None if own is None else f"http://hl7.org/fhir/SearchParameter/{own}"

    @property
    def modifiers(self) -> tuple[str, ...]:
        """The modifiers the parser takes on this parameter (R4 SearchModifierCode; `type` is `:[Type]`, one of
        `targets`), from MODIFIERS: none on `_id` and `_lastUpdated`."""
        if self.name in ("_id", "_lastUpdated"):
            return ()
        found = MODIFIERS.get(self.type, ())
        return (*found, "type") if self.type == "reference" and self.targets else found

    @property
    def comparators(self) -> tuple[str, ...]:
        """The prefixes the parser takes on this parameter's values (R4 SearchComparator), from COMPARATORS."""
        return COMPARATORS.get(self.type, ())

    @property
    def base(self) -> str:
        return self.expression.split(".", 1)[0]

    def id_for(self, resource_type: str) -> str:
        name = {"_id": "id", "_lastUpdated": "lastUpdated"}.get(self.name, self.name)
        return f"{resource_type}-{name}"


#: R4 parameters defined once for several types (their SearchParameter id is not `<Type>-<code>`); None: R4
#: defines no such parameter on that type (the resource has no identifier element, or R4 no search on it)
_R4_SHARED: dict[tuple[str, str], str | None] = {
    **{(t, c): f"clinical-{c}" for t in ("Observation", "Encounter", "Procedure", "MedicationAdministration")
       for c in ("identifier", "patient")},
    **{(t, "date"): "clinical-date" for t in ("Observation", "Encounter", "Procedure")},
    **{(t, "code"): "clinical-code" for t in ("Observation", "Procedure", "MedicationAdministration")},
    ("MedicationAdministration", "status"): "medications-status",
    ("Patient", "birthdate"): "individual-birthdate", ("Patient", "gender"): "individual-gender",
    ("AdverseEvent", "identifier"): None, ("Provenance", "identifier"): None, ("AuditEvent", "identifier"): None,
}


def common_params(resource_type: str) -> list[ParamDef]:
    """The parameters every type has: `_id`, `_lastUpdated`, `identifier`."""
    return [
        ParamDef("_id", "token", f"{resource_type}.id", "Logical id of the resource"),
        ParamDef("_lastUpdated", "date", f"{resource_type}.meta.lastUpdated",
                 "When the resource last changed on this server"),
        ParamDef("identifier", "token", f"{resource_type}.identifier", "A business identifier (system|value)"),
    ]


#: the modifiers each type of parameter takes (besides `:[Type]` on a reference): the parser checks a search
#: against this table and the served SearchParameter resources list it (ParamDef.modifiers)
MODIFIERS = {"token": ("missing", "not"), "reference": ("missing",), "date": ("missing",),
             "quantity": ("missing",), "string": ("missing", "exact", "contains")}
#: the prefixes (R4 SearchComparator) each type of parameter takes on its values, read the same two ways
#: (ParamDef.comparators); a prefix on any other type is part of the value (`gt5` is a token)
COMPARATORS = {"date": ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"), "quantity": PREFIXES}
#: every R4 search modifier (SearchModifierCode)
R4_MODIFIERS = ("missing", "exact", "contains", "not", "text", "in", "not-in", "below", "above", "type",
                "identifier", "ofType")
RESULT_PARAMS = ("_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_cursor")
IGNORED_PARAMS = ("_format", "_pretty")


# -- parsed values ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Token:
    system: str | None  # None: any system; "": no system
    code: str | None  # None: any code of `system`


@dataclass(frozen=True, slots=True)
class Ref:
    type: str | None
    id: str


@dataclass(frozen=True, slots=True)
class DateRange:
    """`prefix` and the range [low, high) the searched (partial) date covers, in UTC."""

    prefix: str
    low: datetime
    high: datetime


@dataclass(frozen=True, slots=True)
class QuantityBound:
    """A quantity condition in one measure's canonical unit (measure None: any measure, value as given)."""

    measure: str | None
    prefix: str
    number: float
    low: float  # implicit precision range, for eq / ne
    high: float


@dataclass(frozen=True, slots=True)
class Quantity:
    prefix: str
    number: Decimal
    system: str | None
    code: str | None
    bounds: tuple[QuantityBound, ...]  # OR'd; empty: the unit matches no measure


@dataclass(frozen=True, slots=True)
class Chain:
    """A criterion on other resources: `subject:Patient.gender=female` (forward: the reference `param` of the
    searched type points at a `target` matching `inner`), or `_has:Observation:patient:code=x` (reverse: a
    `target` resource matching `inner` points at the searched one through its reference `param`). `studies`: the
    studies whose `target` resources the caller may see (None: not limited), set by the search service."""

    target: str
    param: str
    inner: "Criterion"
    reverse: bool = False
    studies: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Criterion:
    """One `name[:modifier]=v1,v2` pair: its values are OR'd; criteria are AND'd. A chained parameter or `_has`
    carries its `chain` (the criterion on the other type) and no values of its own."""

    name: str
    type: str
    modifier: str | None
    values: tuple[Any, ...]
    missing: bool | None = None
    chain: Chain | None = None


@dataclass(frozen=True, slots=True)
class Sort:
    key: str  # _id | _lastUpdated | a search parameter with a sortable column (SearchSpec.sorts)
    descending: bool = False

    @property
    def text(self) -> str:
        return ("-" if self.descending else "") + self.key


#: the phase of the cursor past the last row (the `last` link: the page before it)
END = 2


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in the sort order: the (phase, sort value, id) of the last (or first) row served; phase END (with
    `before`) is the position after every row, whose previous page is the last page."""

    sort: str
    before: bool  # True: the page before this position (previous link)
    phase: int  # 0: rows with a sort value; 1: rows without one (served last); END: after both
    value: Any  # the sort value (an instant, a date, a number or a text), None by _id or in phase 1
    id: str


@dataclass(frozen=True, slots=True)
class Include:
    source: str
    param: str
    target: str
    iterate: bool = False  # `_include:iterate`: also from the resources other includes brought in

    @property
    def text(self) -> str:
        return f"{self.source}:{self.param}"


@dataclass(frozen=True, slots=True)
class SearchSpec:
    """What a search of one type may use, as data (the registry of stored types builds one per type)."""

    resource_type: str
    params: Mapping[str, ParamDef]  # by name, the common ones first
    sorts: tuple[str, ...] = ()  # sort keys besides _id and _lastUpdated
    default_sort: str = "_id"  # the order of a search without _sort
    includes: tuple[Include, ...] = ()  # those with this type as source (_include) or target (_revinclude)
    model: type[fhir.Resource] | None = None  # the type's FHIR model: the element names `_elements` accepts
    #: chainable reference parameters: name -> the stored types it may point at (`subject` -> ("Patient",))
    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: every include of any type (`_include:iterate` may start from a type other than the searched one)
    all_includes: tuple[Include, ...] = ()


@dataclass
class SearchRequest:
    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    count: int = 50
    sort: Sort = Sort("_id")
    cursor: Cursor | None = None
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary: str | None = None  # count | true | data | false
    elements: tuple[str, ...] | None = None
    total: str | None = None  # accurate | none | estimate
    warnings: list[Issue] = field(default_factory=list)  # unknown parameters: ignored (400 when strict)
    errors: list[Issue] = field(default_factory=list)  # always 400: a malformed value, an unsupported modifier…
    params: list[tuple[str, str]] = field(default_factory=list)  # what was applied, minus the cursor (self link)


class Malformed(ValueError):
    pass


# -- values ----------------------------------------------------------------------------------------------

_DATE_RE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
                      r"(Z|[+-]\d{2}:\d{2})?)?)?)?$", re.ASCII)  # (\d: 0-9 only, never ² or ١)
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$", re.ASCII)
#: what a date search may name once in UTC: what Python's datetime and both databases hold
OUT_OF_RANGE = "is outside the dates this server stores (years 0001 to 9999, in UTC)"


def split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and not value[2].isalpha():
        return value[:2], value[2:]
    return "eq", value


def date_range(text: str) -> tuple[datetime, datetime]:
    """The UTC range [low, high) a FHIR date/dateTime of any precision covers."""
    m = _DATE_RE.match(text.strip().replace(" ", "+"))
    if not m:
        raise Malformed(f"'{text}' is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][Z|±hh:mm])")
    year, month, day, hour, minute, second, fraction, tz = m.groups()
    try:
        if month is None:
            low = datetime(int(year), 1, 1, tzinfo=UTC)
            high = datetime(int(year) + 1, 1, 1, tzinfo=UTC) if int(year) < 9999 else datetime.max.replace(tzinfo=UTC)
        elif day is None:
            low = datetime(int(year), int(month), 1, tzinfo=UTC)
            nxt = (int(year) + (int(month) == 12), int(month) % 12 + 1)
            high = datetime(nxt[0], nxt[1], 1, tzinfo=UTC) if nxt[0] <= 9999 else datetime.max.replace(tzinfo=UTC)
        elif hour is None:
            low = datetime(int(year), int(month), int(day), tzinfo=UTC)
            high = _after(low, timedelta(days=1))
        else:
            zone = UTC
            if tz and tz != "Z":
                sign = 1 if tz[0] == "+" else -1
                hours, minutes = int(tz[1:3]), int(tz[4:6])
                if hours > 23 or minutes > 59:
                    raise Malformed(f"'{text}' has an invalid time zone offset")
                from datetime import timezone
                zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
            micro = int((fraction or "0")[:6].ljust(6, "0"))
            low = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro,
                           tzinfo=zone).astimezone(UTC)
            if second is None:
                step = timedelta(minutes=1)
            elif fraction is None:
                step = timedelta(seconds=1)
            else:
                step = timedelta(microseconds=10 ** max(0, 6 - len(fraction)))
            high = _after(low, step)
    except OverflowError:
        raise Malformed(f"the date {OUT_OF_RANGE}") from None
    except ValueError as exc:
        raise Malformed(f"'{text}' is not a valid date: {exc}") from None
    return low, high


def _after(low: datetime, step: timedelta) -> datetime:
    """`low + step`, or the last instant there is when that is past year 9999 (the period of 9999-12-31 ends
    there)."""
    try:
        return low + step
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def _prefixed(value: str, kind: str) -> tuple[str, str]:
    """(prefix, the rest) of a `kind` value; Malformed for a prefix COMPARATORS does not give `kind`."""
    prefix, rest = split_prefix(value)
    if prefix not in COMPARATORS[kind]:
        raise Malformed(f"the '{prefix}' prefix is not supported on {kind}s; supported: {', '.join(COMPARATORS[kind])}")
    return prefix, rest


def parse_date(value: str) -> DateRange:
    prefix, rest = _prefixed(value, "date")
    low, high = date_range(rest)
    return DateRange(prefix, low, high)


def parse_token(value: str) -> Token:
    if "|" in value:
        system, _, code = value.partition("|")
        if not system and not code:
            raise Malformed("'|' alone is not a token")
        return Token(system, code or None)
    return Token(None, value)


def parse_reference(value: str, modifier_type: str | None, targets: tuple[str, ...]) -> Ref:
    text = value.strip()
    if "/" in text:
        parts = text.rstrip("/").split("/")
        if "_history" in parts:
            parts = parts[:parts.index("_history")]
        if len(parts) < 2 or not ID_RE.match(parts[-1]) or not re.match(r"^[A-Z][A-Za-z]+$", parts[-2]):
            raise Malformed(f"'{value}' is not a reference (Type/id or id)")
        rtype, rid = parts[-2], parts[-1]
        if modifier_type and modifier_type != rtype:
            raise Malformed(f"'{value}' is not a {modifier_type} reference")
        return Ref(rtype, rid)
    if not ID_RE.match(text):
        raise Malformed(f"'{value}' is not a reference (Type/id or id)")
    return Ref(modifier_type or (targets[0] if len(targets) == 1 else None), text)


def _decimal(text: str) -> Decimal:
    if not _NUMBER_RE.match(text):
        raise Malformed(f"'{text}' is not a number")
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise Malformed(f"'{text}' is not a number") from None
    if not number.is_finite() or number and abs(number.adjusted()) > 300:
        raise Malformed(f"'{text}' is not a number this server can compare")
    return number


@lru_cache(maxsize=256)
def _unit_factors(unit: str) -> tuple[tuple[str, Decimal], ...]:
    """(measure key, factor to its canonical unit) for each catalogue measure that accepts `unit`."""
    found: dict[str, Decimal] = {}
    for name in catalogue_names():
        for measure in load_catalogue(name).measures:
            factor = measure.units.get(unit)
            if factor is not None:
                found.setdefault(measure.key, factor[0] / factor[1])
    return tuple(sorted(found.items()))


def parse_quantity(value: str) -> Quantity:
    """`[prefix]number[|system|code]`; with a unit, one bound per catalogue measure accepting that unit,
    converted to the measure's canonical unit."""
    text = value.strip()
    prefix, rest = _prefixed(text, "quantity")
    number_text, system, code = rest, None, None
    if "|" in rest:
        parts = rest.split("|")
        if len(parts) != 3:
            raise Malformed(f"'{value}' is not a quantity: use [prefix]number[|system|code]")
        number_text, system, code = parts[0], parts[1] or None, parts[2] or None
    number = _decimal(number_text)
    exponent = number.as_tuple().exponent
    half = Decimal(5) * Decimal(10) ** (exponent - 1) if isinstance(exponent, int) else Decimal(0)
    if prefix == "ap":
        spread = abs(number) / 10
        low, high = number - spread, number + spread
    else:
        low, high = number - half, number + half

    def bound(measure: str | None, factor: Decimal) -> QuantityBound:
        return QuantityBound(measure, prefix, float(number * factor), float(low * factor), float(high * factor))

    bounds: tuple[QuantityBound, ...]
    if code is None:
        bounds = (bound(None, Decimal(1)),)
    elif system not in (None, UCUM):
        bounds = ()
    else:
        bounds = tuple(bound(key, factor) for key, factor in _unit_factors(code))
    return Quantity(prefix, number, system, code, bounds)


def parse_string(value: str) -> str:
    if not value:
        raise Malformed("an empty string matches nothing useful")
    return value


def parse_id(value: str) -> str:
    if not ID_RE.match(value):
        raise Malformed(f"'{value}' is not a valid id")
    return value


def parse_values(param: ParamDef, modifier: str | None, raw: str) -> tuple[Any, ...]:
    values = [v for v in _split_commas(raw)]
    if not values or any(v == "" for v in values):
        raise Malformed("empty value")
    if param.name == "_id":
        return tuple(parse_id(v) for v in values)
    if param.type == "token":
        return tuple(parse_token(v) for v in values)
    if param.type == "reference":
        return tuple(parse_reference(v, modifier, param.targets) for v in values)
    if param.type == "date":
        return tuple(parse_date(v) for v in values)
    if param.type == "quantity":
        return tuple(parse_quantity(v) for v in values)
    if param.type == "string":
        return tuple(parse_string(v) for v in values)
    raise Malformed(f"parameter type {param.type} is not supported")


def _split_commas(raw: str) -> list[str]:
    """Split on commas not escaped as `\\,`."""
    parts, current, escaped = [], [], False
    for ch in raw:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


# -- cursors ---------------------------------------------------------------------------------------------

def _cursor_value(value: Any) -> Any:
    """A sort value as JSON: an instant as its ISO text; a date, number or text tagged with its kind."""
    if value is None or isinstance(value, datetime):
        return value.isoformat() if value is not None else None
    if isinstance(value, date):
        return {"d": value.isoformat()}
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return {"n": float(value)}
    return {"s": str(value)}


def _sort_value(data: Any) -> Any:
    """The sort value `_cursor_value` wrote; ValueError for anything else."""
    if data is None:
        return None
    if isinstance(data, str):
        moment = datetime.fromisoformat(data)
        if moment.tzinfo is None:
            raise ValueError("naive")
        return moment.astimezone(UTC)  # (OverflowError past year 9999 in UTC: no instant this server wrote)
    if isinstance(data, dict) and len(data) == 1:
        ((tag, value),) = data.items()
        if tag == "d" and isinstance(value, str):
            return date.fromisoformat(value)
        if tag == "n" and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if tag == "s" and isinstance(value, str) and not CONTROL_RE.search(value):
            return value
    raise ValueError("bad sort value")


def encode_cursor(cursor: Cursor) -> str:
    data = [cursor.sort, int(cursor.before), cursor.phase, _cursor_value(cursor.value), cursor.id]
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        sort, before, phase, value, rid = orjson.loads(raw)
        if not isinstance(sort, str) or phase not in (0, 1, END) or not isinstance(rid, str) or not ID_RE.match(rid) \
                or phase == END and not before:
            raise ValueError("bad fields")
        return Cursor(sort, bool(before), phase, _sort_value(value), rid)
    except (ValueError, TypeError, OverflowError, binascii.Error, orjson.JSONDecodeError):
        raise Malformed("the paging cursor is not one this server issued; follow the Bundle's next/previous "
                        "link") from None


# -- the whole query -------------------------------------------------------------------------------------

#: how far a search's parameters may reach into other types: `a.b` (one link) and `_has:T:p:x` (one level)
SpecLookup = Callable[[str], "SearchSpec | None"]


class Rejected(Exception):
    """A parameter this search can't apply as asked: always a 400 (a search is never silently wider)."""

    def __init__(self, name: str, text: str, code: str = "invalid") -> None:
        super().__init__(text)
        self.issue = issue(code, text, name)


class Unknown(Exception):
    """A parameter this type does not have: ignored under lenient handling, a 400 under strict."""


def _warn(req: SearchRequest, name: str, text: str, code: str = "not-supported") -> None:
    req.warnings.append(issue(code, text, name, severity="warning"))


def parse_search(spec: SearchSpec, params: list[tuple[str, str]], *, default_count: int = 50,
                 max_count: int = 1000, lookup: SpecLookup | None = None) -> SearchRequest:
    """Read a query string (as (name, value) pairs) into a SearchRequest for a search that `spec` describes.
    Nothing raises. A parameter the type does not have is listed in `warnings` (ignored, and left out of
    `params`, the self link; 400 under strict handling); anything else that can't be applied as asked (a
    malformed value, an unsupported modifier or chain, a bad result parameter) is listed in `errors`: always a
    400, because dropping it would widen the search. `lookup` gives the spec of another type (chains, `_has`)."""
    resource_type = spec.resource_type
    req = SearchRequest(resource_type, count=default_count, sort=Sort(spec.default_sort))
    cursor_text = None
    for name, value in params:
        if name == "_cursor":
            cursor_text = value
            continue
        try:
            if name in IGNORED_PARAMS:
                pass
            elif name.split(":", 1)[0] in RESULT_PARAMS:
                _result_param(req, spec, name, value, max_count)
            else:
                req.criteria.append(parse_criterion(spec, name, value, lookup))
        except Unknown as exc:
            _warn(req, name, str(exc))
            continue
        except Rejected as exc:
            req.errors.append(exc.issue)
            continue
        req.params.append((name, value))
    if cursor_text is not None:
        try:
            cursor = decode_cursor(cursor_text)
            if cursor.sort != req.sort.text:
                raise Malformed(f"the paging cursor belongs to _sort={cursor.sort}, not _sort={req.sort.text}")
            req.cursor = cursor
        except Malformed as exc:
            req.errors.append(issue("invalid", f"Parameter '_cursor': {exc}", "_cursor"))
    return req


def parse_criterion(spec: SearchSpec, name: str, value: str, lookup: SpecLookup | None = None, *,
                    chained: bool = True) -> Criterion:
    """One `name[:modifier][.chain]=value` of a `spec` search; raises Unknown (a parameter the type does not have)
    or Rejected (anything else that can't be applied as asked). `chained`: may it reach another type?"""
    resource_type = spec.resource_type
    if CONTROL_RE.search(name) or CONTROL_RE.search(value):  # no FHIR string holds one; never echoed
        raise Rejected(CONTROL_RE.sub("?", name), f"Parameter '{CONTROL_RE.sub('?', name)}' holds a control "
                       "character (only tab, CR and LF are allowed in a FHIR string)")
    if name.startswith("_has:") or name == "_has":
        if not chained or lookup is None:
            raise Rejected(name, f"'{name}': _has can't be nested or used here", "not-supported")
        return _parse_has(spec, name, value, lookup)
    head, dot, rest = name.partition(".")
    base, _, modifier_text = head.partition(":")
    param = spec.params.get(base)
    if param is None:
        raise Unknown(f"Unknown search parameter '{base}' for {resource_type}; supported: "
                      f"{', '.join(sorted(spec.params))}")
    modifier = modifier_text or None
    if dot:
        return _parse_chain(spec, param, name, modifier, rest, value, lookup if chained else None)
    if modifier == "missing" and "missing" in param.modifiers:
        if value not in ("true", "false"):
            raise Rejected(name, f"Parameter '{name}': the value must be true or false, not '{value}'")
        return Criterion(param.name, param.type, "missing", (), missing=value == "true")
    if modifier is not None:
        allowed = param.modifiers
        type_modifier = "type" in allowed and modifier in param.targets
        if not type_modifier and (modifier not in allowed or modifier == "type"):
            shown = [m for m in allowed if m != "type"] + [t for t in param.targets if "type" in allowed]
            raise Rejected(name, f"Parameter '{name}': the modifier ':{modifier}' is not supported on '{base}' "
                           f"({param.type}); supported: "
                           f"{', '.join(':' + m for m in shown) or 'none'}", "not-supported")
    try:
        values = parse_values(param, modifier, value)
    except (Malformed, ArithmeticError, ValueError, OverflowError) as exc:
        raise Rejected(name, f"Parameter '{name}' has a malformed value '{value}': {exc}") from None
    return Criterion(param.name, param.type, modifier, values)


def _parse_chain(spec: SearchSpec, param: ParamDef, name: str, modifier: str | None, rest: str, value: str,
                 lookup: SpecLookup | None) -> Criterion:
    """`subject.identifier=…`, `subject:Patient.gender=…`: the resources whose `param` points at a resource
    matching the chained parameter (one link; the target type named by the modifier, or the only one)."""
    targets = spec.chains.get(param.name, ())
    if lookup is None or not targets:
        raise Rejected(name, f"Chained parameter '{name}' is not supported: '{param.name}' can't be chained on "
                       f"{spec.resource_type}", "not-supported")
    if modifier is not None and modifier not in targets:
        raise Rejected(name, f"'{name}': '{param.name}' can be chained through "
                       f"{', '.join(':' + t for t in targets)}, not ':{modifier}'", "not-supported")
    if modifier is None and len(targets) > 1:
        raise Rejected(name, f"'{name}': name the type the chain goes through "
                       f"({', '.join(param.name + ':' + t for t in targets)})", "not-supported")
    target = modifier or targets[0]
    target_spec = lookup(target)
    if target_spec is None:
        raise Rejected(name, f"Chained parameter '{name}': {target} is not searchable here", "not-supported")
    if "." in rest or rest.startswith("_has"):
        raise Rejected(name, f"Chained parameter '{name}': only one link of a chain is supported",
                       "not-supported")
    try:
        inner = parse_criterion(target_spec, rest, value, chained=False)
    except Unknown:
        raise Rejected(name, f"Chained parameter '{name}': {target} has no search parameter "
                       f"'{rest.split(':')[0]}'; supported: {', '.join(sorted(target_spec.params))}",
                       "not-supported") from None
    except Rejected as exc:
        raise Rejected(name, f"Chained parameter '{name}': {exc}", exc.issue.code) from None
    return Criterion(param.name, "reference", modifier, (), chain=Chain(target, param.name, inner))


def chain_names(spec: SearchSpec, param: str, lookup: SpecLookup) -> tuple[str, ...]:
    """The parameters a chain through the reference parameter `param` of a `spec` search may use (`_parse_chain`
    takes one of any type it may point at: `subject:Patient.gender`): SearchParameter.chain."""
    names: set[str] = set()
    for target in spec.chains.get(param, ()):
        target_spec = lookup(target)
        if target_spec is not None:
            names.update(target_spec.params)
    return tuple(sorted(names))


def _parse_has(spec: SearchSpec, name: str, value: str, lookup: SpecLookup) -> Criterion:
    """`_has:Observation:patient:code=x`: the resources some Observation matching `code=x` points at through its
    `patient` parameter."""
    parts = name.split(":", 3)
    if len(parts) < 4 or not all(parts[1:]):
        raise Rejected(name, f"'{name}' is not of the form _has:Type:reference:parameter")
    _, source, ref, inner_name = parts
    source_spec = lookup(source)
    if source_spec is None or spec.resource_type not in source_spec.chains.get(ref, ()):
        raise Rejected(name, f"'{name}': no {source} search parameter '{ref}' points at a {spec.resource_type}",
                       "not-supported")
    if inner_name.startswith("_has") or "." in inner_name:
        raise Rejected(name, f"'{name}': a _has can't be nested or chained here", "not-supported")
    try:
        inner = parse_criterion(source_spec, inner_name, value, chained=False)
    except Unknown:
        raise Rejected(name, f"'{name}': {source} has no search parameter '{inner_name.split(':')[0]}'",
                       "not-supported") from None
    except Rejected as exc:
        raise Rejected(name, f"'{name}': {exc}", exc.issue.code) from None
    return Criterion("_has", "special", None, (), chain=Chain(source, ref, inner, reverse=True))


def _result_param(req: SearchRequest, spec: SearchSpec, name: str, value: str, max_count: int) -> None:
    """A result parameter; raises Rejected for a value it can't apply (Unknown for an unknown element name)."""
    rtype = req.resource_type
    base, _, modifier = name.partition(":")
    if modifier and not (base in ("_include", "_revinclude") and modifier == "iterate"):
        raise Rejected(name, f"'{name}': {base} takes no modifier"
                       + (" but :iterate" if base in ("_include", "_revinclude") else ""), "not-supported")
    if name == "_count":
        if not whole_number(value.strip()):
            raise Rejected(name, f"Parameter '_count' has a malformed value '{value}': use a whole number ≥ 0")
        count = int(value)
        req.count = min(count, max_count)
        if count == 0:
            req.summary = "count"
    elif name == "_sort":
        keys = [k.strip() for k in value.split(",")]
        allowed = ("_id", "_lastUpdated") + spec.sorts
        if not value.strip() or not all(keys):
            raise Rejected(name, f"Parameter '_sort' has a malformed value '{value}'")
        bad = [k for k in keys if k.lstrip("-") not in allowed]
        if bad:
            raise Rejected(name, f"Parameter '_sort' has a value '{value}' this server can't sort {rtype} by "
                           f"({', '.join(bad)}); sortable: {', '.join(allowed)} (each also descending, -key)",
                           "not-supported")
        first = keys[0]
        extra = [k for k in keys[1:] if k.lstrip("-") != "_id"]
        if extra:
            raise Rejected(name, f"Parameter '_sort={value}': only one sort key is supported (ties are ordered by "
                           f"_id); can't also sort by {', '.join(extra)}", "not-supported")
        req.sort = Sort(first.lstrip("-"), first.startswith("-"))
    elif base in ("_include", "_revinclude"):
        iterate = modifier == "iterate"
        parts = value.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise Rejected(name, f"Parameter '{name}' has a malformed value '{value}': use "
                           "SourceType:parameter[:TargetType]")
        source, param = parts[0], parts[1]
        reverse = base == "_revinclude"
        pool = spec.all_includes if iterate else spec.includes
        usable = pool if iterate else [i for i in pool if (i.target if reverse else i.source) == rtype]
        include = next((i for i in usable if i.source == source and i.param == param
                        and (len(parts) == 2 or parts[2] == i.target)), None)
        if include is None:
            raise Rejected(name, f"{name}={value} is not supported on a {rtype} search; supported: "
                           f"{', '.join(dict.fromkeys(i.text for i in usable)) or 'none'}", "not-supported")
        include = replace(include, iterate=iterate)
        found = req.revincludes if reverse else req.includes
        if include not in found:
            found.append(include)
    elif name == "_summary":
        if value not in ("count", "true", "false", "data"):
            raise Rejected(name, f"Parameter '_summary' has a value '{value}' this server does not support; use "
                           "count, true, data or false", "not-supported")
        req.summary = None if value == "false" else value
    elif name == "_elements":
        names = tuple(e.strip() for e in value.split(",") if e.strip())
        if not names:
            raise Rejected(name, "Parameter '_elements' is empty")
        known = element_names(spec.model) if spec.model is not None else frozenset()
        unknown = [e for e in names if known and e not in known]
        if unknown:
            raise Rejected(name, f"Parameter '_elements' names element(s) {rtype} does not have: "
                           f"{', '.join(unknown)}")
        req.elements = names
    elif name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise Rejected(name, f"Parameter '_total' has a malformed value '{value}': use none, estimate or "
                           "accurate")
        req.total = value
    else:
        raise Unknown(f"Unknown search parameter '{name}'")


# -- subsetting (_summary, _elements) ---------------------------------------------------------------------

@cache
def _fields(model: type[fhir.Resource]) -> tuple[frozenset[str], frozenset[str], frozenset[str], dict[str, str]]:
    """(element names, summary element names, required element names, {choice element: its base name}) of a
    resource model; choice types are also named by their base name (e.g. `value` for `valueQuantity`)."""
    names, summary, required = set(), set(), set()
    choices: dict[str, str] = {}
    for fname, info in model.model_fields.items():
        extra = info.json_schema_extra or {}
        if not isinstance(extra, dict) or not extra.get("element_property"):
            continue
        alias = info.alias or fname
        names.add(alias)
        base = cast(str | None, extra.get("one_of_many"))  # fhir.resources: the choice element's base name
        if base:
            names.add(base)
            choices[alias] = base
        if extra.get("summary_element_property"):
            summary.add(alias)
        if extra.get("element_required") or info.is_required():
            required.add(alias)
    return frozenset(names), frozenset(summary), frozenset(required), choices


def element_names(model: type[fhir.Resource]) -> frozenset[str]:
    return _fields(model)[0]


def _keep(key: str, wanted: set[str], choices: dict[str, str]) -> bool:
    bare = key[1:] if key.startswith("_") else key  # `_status` carries the extensions of `status`
    return bare in wanted or choices.get(bare) in wanted


def subset(content: str | bytes, model: type[fhir.Resource], *, summary: str | None,
           elements: tuple[str, ...] | None) -> bytes:
    """The stored JSON of a `model` resource reduced for `_summary=true|data` or `_elements`, tagged SUBSETTED."""
    resource = orjson.loads(content)
    names, summary_names, required, choices = _fields(model)
    if elements is not None:
        wanted = set(elements) | set(required) | {"resourceType", "id", "meta"}
        resource = {k: v for k, v in resource.items() if _keep(k, wanted, choices)}
    elif summary == "true":
        wanted = set(summary_names) | set(required) | {"resourceType", "id", "meta"}
        resource = {k: v for k, v in resource.items() if _keep(k, wanted, choices)}
    elif summary == "data":
        resource.pop("text", None)
    meta = dict(resource.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    resource["meta"] = meta
    return orjson.dumps(resource)


# -- SearchParameter resources ----------------------------------------------------------------------------

def _computer_name(resource_type: str, code: str) -> str:
    """SearchParameter.name: `ObservationValueQuantity` for Observation `value-quantity`, `ObservationId` for `_id`."""
    return resource_type + "".join(part[:1].upper() + part[1:] for part in code.lstrip("_").split("-") if part)


def search_parameter_resource(resource_type: str, param: ParamDef, chains: tuple[str, ...] = ()) -> dict[str, Any]:
    """The R4 SearchParameter this server serves for one parameter of `resource_type` (validated with
    fhir.resources): exactly the modifiers (ParamDef.modifiers) and comparators (ParamDef.comparators) the parser
    takes, the parameters a chain may use (`chains`, from `chain_names`), and the R4 definition it narrows
    (`derivedFrom`; none for a trial parameter)."""
    pid = param.id_for(resource_type)
    data: dict[str, Any] = {
        "resourceType": "SearchParameter",
        "id": pid,
        "url": f"{SEARCH_PARAMETER_BASE}/{pid}",
        "version": "1.0.0",
        "name": _computer_name(resource_type, param.name),
        "status": "active",
        "experimental": False,
        "publisher": "trial-fhir",
        "description": param.description,
        "code": param.name,
        "base": [resource_type],
        "type": param.type,
        "expression": param.expression,
        "xpathUsage": "normal",
    }
    if param.derived_from:
        data["derivedFrom"] = param.derived_from
    if param.targets:
        data["target"] = list(param.targets)
    if param.modifiers:
        data["modifier"] = list(param.modifiers)
    if param.comparators:
        data["comparator"] = list(param.comparators)
    if chains:
        data["chain"] = list(chains)
    fhir.SearchParameter.model_validate(data)
    return data


__all__ = ["date", "SearchRequest", "parse_search"]
