"""The one place where parsed search criteria become SQL: conditions on the typed tables, and the page statements
that read them in key order (keyset: `(sort value, id) > cursor`, never OFFSET), joined to `resource.content` for
the stored JSON. Search, `_include`/`_revinclude`, Group membership and export `_typeFilter` all compile here, so
they read every parameter the same way. Never commits, never sees HTTP.

Each criterion is compiled in two steps that every caller shares:

1. `compile_criteria` reduces the criteria to their *shape* (what decides the SQL text: the parameter, modifier,
   how many values and of what form) and the values to bind, named `c<criterion>_<value>`. Plain Python, no SQL
   objects: this is all a search whose statement is cached costs before it runs.
2. `conditions_of` builds the conditions of a shape, its values either written in (`bound=False`: the general form,
   built per request) or as those named bind parameters (`bound=True`: the form cached per shape).

The two forms are the same builder over the same values, so the cached and the general path cannot disagree
(tests/search/test_compiler.py compiles both on SQLite and PostgreSQL and compares them).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    and_,
    bindparam,
    case,
    false,
    func,
    literal_column,
    null,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import FromClause
from sqlmodel import Session

from fhir_mappings.search import Chain, Criterion, Cursor, DateRange, Include, Quantity, Ref, Sort, Token
from service.core.registry import TYPES
from service.core.stored_type import SearchParam, StoredType
from service.store.driver import AsyncReadPool, DriverStatement
from service.store.models import IdentifierRecord, ResourceRecord, table_of

R = table_of(ResourceRecord)
I = table_of(IdentifierRecord)  # noqa: E741

#: what a search reads through: a Session (inside a unit of work, e.g. a batch entry) or a read connection
Reader = Session | Connection


def _connection(session: Reader) -> Connection:
    return session.connection() if isinstance(session, Session) else session


_JOINS: dict[str, FromClause] = {}


def _joined(stype: StoredType) -> FromClause:
    """The typed table joined to its `resource` row (built once per type)."""
    joined = _JOINS.get(stype.name)
    if joined is None:
        table = stype.table
        joined = table.join(R, and_(R.c.resource_type == stype.name, R.c.id == table.c.id))
        _JOINS[stype.name] = joined
    return joined


# -- step 1: criteria → shape and values ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Compiled:
    """Criteria of one type reduced to their shape (one tuple `(parameter, modifier, *form)` per criterion) and
    the values the shape binds. `cached`: every criterion is of a form whose page statement is kept per shape (see
    `_cacheable`); `uses_resource`: a criterion reads the `resource` row (`_lastUpdated`)."""

    resource_type: str
    shape: tuple[tuple[Any, ...], ...]
    values: dict[str, Any]
    cached: bool
    uses_resource: bool


#: a criterion's form (what, besides parameter and modifier, decides its SQL text) and its values, in order
Reduced = tuple[tuple[Any, ...], list[Any]]


def compile_criteria(resource_type: str, criteria: Sequence[Criterion]) -> Compiled:
    """The shape and values of parsed criteria (AND'd; each criterion's values OR'd)."""
    stype = TYPES[resource_type]
    shape: list[tuple[Any, ...]] = []
    values: dict[str, Any] = {}
    cached = True
    uses_resource = False
    for n, crit in enumerate(criteria):
        if crit.chain is not None:
            form, found, chain_cached = _reduce_chain(crit.chain)
            cached = cached and chain_cached
        else:
            param = stype.params[crit.name]
            form, found = ((crit.missing,), []) if crit.modifier == "missing" else _REDUCE[param.kind](param, crit)
            cached = cached and _cacheable(param, crit)
            uses_resource = uses_resource or param.kind == "last_updated"
        shape.append((crit.name, crit.modifier, *form))
        for i, value in enumerate(found):
            values[f"c{n}_{i}"] = value
    return Compiled(resource_type, tuple(shape), values, cached, uses_resource)


#: the first element of the form of a chained criterion (`subject.gender=…`) and of a `_has`
CHAIN, HAS = "chain", "has"


def _reduce_chain(chain: Chain) -> tuple[tuple[Any, ...], list[Any], bool]:
    """(form, values, cacheable) of a chained parameter or `_has`: the other type's criterion compiled as its own
    search, then the caller's studies of that type (a chain never reaches a resource its caller can't see)."""
    inner = compile_criteria(chain.target, [chain.inner])
    found = [inner.values[f"c0_{i}"] for i in range(len(inner.values))]
    studies: int | None = None
    if chain.studies is not None:
        ordered = sorted(chain.studies)
        studies = min(len(ordered), 2)
        if len(ordered) == 1:
            found.append(ordered[0])
        elif ordered:
            found.append(ordered)
    form = (HAS if chain.reverse else CHAIN, chain.target, chain.param, inner.shape[0], studies, inner.uses_resource)
    return form, found, inner.cached


def _cacheable(param: SearchParam, crit: Criterion) -> bool:
    """Is the page statement of this criterion kept per shape? The forms measured hot (ids and references, codes,
    codings and dates without modifiers). The others are built per request with their values written in, so
    PostgreSQL plans them with those values: their selectivity (a quantity range, `_lastUpdated`, a title prefix)
    depends on the values, which a cached generic plan would not see."""
    if crit.modifier == "missing":
        return False
    if param.kind in ("id", "reference", "linked"):
        return True
    return param.kind in ("code", "coding", "datetime") and crit.modifier is None


def _reduce_ids(param: SearchParam, crit: Criterion) -> Reduced:
    return (), [list(crit.values)]


def _reduce_dates(param: SearchParam, crit: Criterion) -> Reduced:
    ranges: list[DateRange] = list(crit.values)
    if param.kind == "date":
        ranges = [_as_dates(r) for r in ranges]
    return tuple(r.prefix for r in ranges), [v for r in ranges for v in (r.low, r.high)]


def _as_dates(rng: DateRange) -> DateRange:
    """A UTC range of instants as a range of calendar dates (for `date` columns)."""
    def day(moment: datetime, ceil: bool) -> date:
        d = moment.date()
        if not ceil or moment.time() == time(0):
            return d
        return date.fromordinal(min(d.toordinal() + 1, date.max.toordinal()))
    return DateRange(rng.prefix, day(rng.low, False), day(rng.high, True))  # type: ignore[arg-type]


def _reduce_identifier(param: SearchParam, crit: Criterion) -> Reduced:
    tokens: list[Token] = list(crit.values)
    values = [v for t in tokens for v in (t.system, t.code) if v is not None]
    return tuple((t.system is not None, t.code is not None) for t in tokens), values


def _reference_ids(param: SearchParam, crit: Criterion) -> list[str]:
    return [r.id for r in crit.values if r.type is None or r.type in param.fhir.targets]


def _reduce_reference(param: SearchParam, crit: Criterion) -> Reduced:
    ids = _reference_ids(param, crit)
    return (min(len(ids), 2),), [] if not ids else [ids[0]] if len(ids) == 1 else [ids]


def _reduce_linked(param: SearchParam, crit: Criterion) -> Reduced:
    """References answered through a child table: each value is (type, id), or an id of any of the parameter's
    targets (of any type when it names none); a type it does not target matches nothing."""
    targets = param.fhir.targets
    refs = [r for r in crit.values if not targets or r.type is None or r.type in targets]
    return tuple(r.type is not None for r in refs), [v for r in refs for v in ((r.type, r.id) if r.type else (r.id,))]


def _code_form(param: SearchParam, token: Token) -> str:
    systems = param.fhir.systems or ("",)
    if token.system is not None and token.system not in systems:
        return "false"  # a code of another system: none of ours
    return "any" if token.code is None else "eq"


def _reduce_code(param: SearchParam, crit: Criterion) -> Reduced:
    tokens: list[Token] = list(crit.values)
    forms = tuple(_code_form(param, t) for t in tokens)
    return forms, [t.code for t, form in zip(tokens, forms, strict=True) if form == "eq"]


def _reduce_coding(param: SearchParam, crit: Criterion) -> Reduced:
    forms, values = [], []
    for token in crit.values:
        system = "any" if token.system is None else "none" if token.system == "" else "eq"
        if system == "eq":
            values.append(token.system)
        if token.code is not None:
            values.append(token.code)
        forms.append((system, token.code is not None))
    return tuple(forms), values


def _reduce_arm(param: SearchParam, crit: Criterion) -> Reduced:
    tokens: list[Token] = list(crit.values)
    names = [t.code for t in tokens if t.system in (None, "") and t.code is not None]
    if any(t.system in (None, "") and t.code is None for t in tokens):
        return ("any",), []
    if names:
        return ("names",), [names]
    return ("none",), []  # only arms of a code system: arms have none


def _quantity_values(prefix: str, number: float, low: float, high: float) -> list[float]:
    if prefix in ("eq", "ne"):
        return [low, high]
    if prefix == "ap":  # within 10%
        return [min(low, high), max(low, high)]
    return [number]


def _reduce_quantity(param: SearchParam, crit: Criterion) -> Reduced:
    forms: list[tuple[tuple[str, bool], ...]] = []
    values: list[Any] = []
    quantity: Quantity
    for quantity in crit.values:
        bounds = []
        for b in quantity.bounds:
            if b.measure is not None:
                values.append(b.measure)
            values += _quantity_values(b.prefix, b.number, b.low, b.high)
            bounds.append((b.prefix, b.measure is not None))
        forms.append(tuple(bounds))
    return tuple(forms), values


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _reduce_string(param: SearchParam, crit: Criterion) -> Reduced:
    if crit.modifier == "exact":
        return (len(crit.values),), list(crit.values)
    wrap = "%{}%" if crit.modifier == "contains" else "{}%"
    return (len(crit.values),), [wrap.format(_like_escape(v.lower())) for v in crit.values]


_REDUCE: dict[str, Callable[[SearchParam, Criterion], Reduced]] = {
    "id": _reduce_ids, "last_updated": _reduce_dates, "identifier": _reduce_identifier,
    "reference": _reduce_reference, "code": _reduce_code, "coding": _reduce_coding, "arm": _reduce_arm,
    "datetime": _reduce_dates, "date": _reduce_dates, "quantity": _reduce_quantity, "string": _reduce_string,
    "linked": _reduce_linked,
}


# -- step 2: shape → conditions ----------------------------------------------------------------------------

class _Values:
    """The values of one criterion, in order: written in, or as the named bind parameters of its shape."""

    def __init__(self, values: dict[str, Any], prefix: str, bound: bool) -> None:
        self.values, self.prefix, self.bound, self.n = values, prefix, bound, 0

    def next(self, column: ColumnElement[Any]) -> object:
        """The next value, compared with `column`."""
        name = f"{self.prefix}_{self.n}"
        self.n += 1
        return bindparam(name, type_=column.type) if self.bound else self.values[name]

    def many(self, column: ColumnElement[Any]) -> list[Any] | BindParameter[Any]:
        """The next value, a list for `column IN (…)` (an expanding bind parameter)."""
        name = f"{self.prefix}_{self.n}"
        self.n += 1
        return bindparam(name, type_=column.type, expanding=True) if self.bound else list(self.values[name])


def conditions_of(compiled: Compiled, *, bound: bool = False) -> list[ColumnElement[bool]]:
    """The conditions (AND'd) of compiled criteria: their values written in (`bound=False`), or as the named bind
    parameters that `compiled.values` fills (`bound=True`, the form of a statement cached per shape)."""
    stype = TYPES[compiled.resource_type]
    return [_condition(stype, compiled, name, modifier, tuple(form), _Values(compiled.values, f"c{n}", bound), bound)
            for n, (name, modifier, *form) in enumerate(compiled.shape)]


def _condition(stype: StoredType, compiled: Compiled | None, name: str, modifier: str | None, form: tuple[Any, ...],
               values: _Values, bound: bool) -> ColumnElement[bool]:
    """The condition of one criterion of a shape (`compiled`: the whole shape, None for a chain's criterion)."""
    if name == STUDIES:
        return _in_studies(stype, values, form[0])
    if form and form[0] == HAS:
        return _build_chain(stype, None, form, values, bound)
    param = stype.params[name]
    if modifier == "missing":
        return _missing(stype, param, form[0])
    if form and form[0] == CHAIN:
        return _build_chain(stype, param, form, values, bound)
    if param.kind == "linked":
        return _build_linked(stype, param, modifier, form, values,
                             _mirrored_dates(stype, compiled, param, bound) if compiled is not None else [])
    return _BUILD[param.kind](stype, param, modifier, form, values)


def _build_chain(stype: StoredType, param: SearchParam | None, form: tuple[Any, ...], values: _Values,
                 bound: bool) -> ColumnElement[bool]:
    """A chain (`param`: `subject.gender=f` → `subject IN (Patients with gender f)`) or a `_has` (`param` None:
    `_has:Observation:patient:code=x` → `id IN (the patient of Observations with code x)`), each limited to the
    other type's resources in the caller's studies."""
    _, other, ref, (name, modifier, *inner_form), studies, uses_resource = form
    otype = TYPES[other]
    conds = [_condition(otype, None, name, modifier, tuple(inner_form), values, bound)]
    if studies is not None:
        conds.append(_in_studies(otype, values, studies))
    source = _joined(otype) if uses_resource else otype.table
    if param is not None:
        return param.column.in_(select(otype.table.c.id).select_from(source).where(*conds))
    pointer = otype.params[ref].column
    return stype.table.c.id.in_(select(pointer).select_from(source).where(pointer.is_not(None), *conds))


def _mirrored_dates(stype: StoredType, compiled: Compiled, param: SearchParam,
                    bound: bool) -> list[ColumnElement[bool]]:
    """A linked parameter whose child rows copy the row's date (columns `…, row's date, child's date`): the
    criteria on that date, compared with the child's copy too, so that the child's (type, id, date) index answers
    `patient=x&date=ge…` as one range. The same values (the same bind parameters) as the criteria themselves."""
    if len(param.columns) < 6:
        return []
    parent_date, child_date = param.columns[4], param.columns[5]
    found = []
    for m, (name, modifier, *form) in enumerate(compiled.shape):
        other = stype.params[name]
        if other.kind == "datetime" and modifier is None and other.column is parent_date:
            values = _Values(compiled.values, f"c{m}", bound)
            found.append(or_(*[_date_cmp(child_date, prefix, values.next(child_date), values.next(child_date))
                               for prefix in form]))
    return found


def conditions(resource_type: str, criteria: Sequence[Criterion]) -> list[ColumnElement[bool]]:
    """SQL conditions (AND'd) for parsed criteria, values written in; each criterion's values are OR'd."""
    return conditions_of(compile_criteria(resource_type, criteria))


def references(resource_type: str, param: str, target_type: str, ids: Sequence[str]) -> list[ColumnElement[bool]]:
    """The conditions of the search `resource_type?param=target_type/id,…`: the resources that point at one of
    `ids` through the reference parameter `param`."""
    return conditions(resource_type, [Criterion(param, "reference", None, tuple(Ref(target_type, i) for i in ids))])


def in_study(resource_type: str, study_id: str) -> list[ColumnElement[bool]]:
    """The conditions of the search for the resources of `resource_type` that belong to a study, through the
    parameter its declaration names for that (`study_param`: `study`, or `_id` for ResearchStudy)."""
    stype = TYPES[resource_type]
    if stype.study_param is None:
        raise ValueError(f"{resource_type} declares no study parameter")
    param = stype.params[stype.study_param]
    value: Any = study_id if param.kind == "id" else Ref("ResearchStudy", study_id)
    return conditions(resource_type, [Criterion(param.name, param.fhir.type, None, (value,))])


# -- access: the studies a caller may see -----------------------------------------------------------------

#: the pseudo-parameter of a study restriction in a compiled shape (never a FHIR parameter: they have no spaces)
STUDIES = "studies limit"


def within_studies(compiled: Compiled, studies: frozenset[str]) -> Compiled:
    """`compiled`, limited to the resources that belong to one of `studies` (a caller's per-study access,
    service/core/access.py). A criterion of the shape like any other, so a limited search is still one cached page
    statement (one bound value for one study, the common case) and counts, pages and cursors all see the limit."""
    n = len(compiled.shape)
    ordered = sorted(studies)
    values = dict(compiled.values)
    if len(ordered) == 1:
        values[f"c{n}_0"] = ordered[0]
    elif ordered:
        values[f"c{n}_0"] = ordered
    return Compiled(compiled.resource_type, (*compiled.shape, (STUDIES, None, min(len(ordered), 2))), values,
                    compiled.cached, compiled.uses_resource)


def _study_column(stype: StoredType) -> tuple[StoredType, ColumnElement[Any], ColumnElement[Any] | None]:
    """Where the study of `stype`'s rows is: (the type holding it, its study column, and for a type that belongs to
    a study through another's rows (`study_via`: a Patient through ResearchSubject) that type's column pointing
    back); a type that belongs to no study raises."""
    if stype.study_param is not None:
        return stype, stype.params[stype.study_param].column, None
    if stype.study_via is not None:
        via_type, via_param = stype.study_via
        via = TYPES[via_type]
        assert via.study_param is not None, f"{via_type} is the way {stype.name} belongs to a study: it needs one"
        return via, via.params[via.study_param].column, via.params[via_param].column
    raise ValueError(f"{stype.name} belongs to no study")


def _in_studies(stype: StoredType, values: _Values, many: int) -> ColumnElement[bool]:
    if many == 0 or (stype.study_param is None and stype.study_via is None):
        return false()  # no study, or a type that belongs to none: nothing of it is in a study
    holder, column, back = _study_column(stype)
    cond = column == values.next(column) if many == 1 else column.in_(values.many(column))
    if back is None:
        return cond
    return stype.table.c.id.in_(select(back).where(cond))


def study_condition(resource_type: str, studies: frozenset[str]) -> ColumnElement[bool]:
    """Rows of `resource_type` (its typed table) that belong to one of `studies` (values written in)."""
    compiled = within_studies(Compiled(resource_type, (), {}, False, False), studies)
    return conditions_of(compiled)[0]


def foreign_condition(resource_type: str, studies: frozenset[str]) -> ColumnElement[bool]:
    """Rows of `resource_type` that belong to a study outside `studies` (a write a study-limited caller may not
    make); a resource of no study (a Patient not yet enrolled) is not foreign."""
    stype = TYPES[resource_type]
    if stype.study_param is None and stype.study_via is None:
        return false()
    holder, column, back = _study_column(stype)
    outside = and_(column.is_not(None), column.not_in(sorted(studies)))
    return outside if back is None else stype.table.c.id.in_(select(back).where(outside))


def _missing(stype: StoredType, param: SearchParam, missing: bool) -> ColumnElement[bool]:
    if param.kind == "identifier":
        owned = select(I.c.resource_id).where(I.c.resource_type == stype.name)
        return stype.table.c.id.not_in(owned) if missing else stype.table.c.id.in_(owned)
    if param.kind == "arm":
        subject, arm = param.columns
        return subject.in_(select(arm.table.c.id).where(arm.is_(None) if missing else arm.is_not(None)))
    if param.kind == "linked":
        key, child_key, child_type = param.columns[:3]
        linked = select(child_key)
        if param.fhir.targets:
            linked = linked.where(or_(*[child_type == t for t in param.fhir.targets]))
        return key.not_in(linked) if missing else key.in_(linked)
    column = param.columns[-1] if param.kind == "coding" else param.column  # coding: (system, code)
    return column.is_(None) if missing else column.is_not(None)


Build = Callable[[StoredType, SearchParam, str | None, tuple[Any, ...], _Values], ColumnElement[bool]]


def _build_ids(stype: StoredType, param: SearchParam, modifier: str | None, form: tuple[Any, ...],
               values: _Values) -> ColumnElement[bool]:
    return param.column.in_(values.many(param.column))


def _build_dates(stype: StoredType, param: SearchParam, modifier: str | None, form: tuple[Any, ...],
                 values: _Values) -> ColumnElement[bool]:
    column = param.column
    return or_(*[_date_cmp(column, prefix, values.next(column), values.next(column)) for prefix in form])


def _date_cmp(column: ColumnElement[Any], prefix: str, low: object, high: object) -> ColumnElement[bool]:
    """The stored moment `column` (a point) against the searched range [low, high)."""
    if prefix == "eq":
        return and_(column >= low, column < high)
    if prefix == "ne":
        return or_(column < low, column >= high)
    if prefix in ("gt", "sa"):
        return column >= high
    if prefix in ("lt", "eb"):
        return column < low
    if prefix == "ge":
        return column >= low
    if prefix == "le":
        return column < high
    return false()


def _build_identifier(stype: StoredType, param: SearchParam, modifier: str | None, form: tuple[Any, ...],
                      values: _Values) -> ColumnElement[bool]:
    system, value = param.columns
    ors = []
    for has_system, has_code in form:
        parts = []
        if has_system:
            parts.append(system == values.next(system))
        if has_code:
            parts.append(value == values.next(value))
        ors.append(and_(*parts))
    matching = select(I.c.resource_id).where(I.c.resource_type == stype.name, or_(*ors))
    return stype.table.c.id.not_in(matching) if modifier == "not" else stype.table.c.id.in_(matching)


def _build_reference(stype: StoredType, param: SearchParam, modifier: str | None, form: tuple[Any, ...],
                     values: _Values) -> ColumnElement[bool]:
    many, column = form[0], param.column
    if many == 0:
        return false()
    if many == 1:
        return column == values.next(column)
    return column.in_(values.many(column))


def _build_linked(stype: StoredType, param: SearchParam, modifier: str | None, form: tuple[Any, ...],
                  values: _Values, narrowing: Sequence[ColumnElement[bool]] = ()) -> ColumnElement[bool]:
    """`key IN (the child rows naming one of the references)`: a row that names several resources (an AuditEvent's
    patients) has one child row each, read through the child's (type, id) index; `narrowing`: more conditions on
    the child rows (the row's date criteria, on the child's copy of the date)."""
    key, child_key, child_type, child_id = param.columns[:4]
    ors = []
    for typed in form:
        if typed:
            ors.append(and_(child_type == values.next(child_type), child_id == values.next(child_id)))
        elif param.fhir.targets:
            ors.append(and_(or_(*[child_type == t for t in param.fhir.targets]), child_id == values.next(child_id)))
        else:
            ors.append(child_id == values.next(child_id))
    if not ors:
        return false()
    return key.in_(select(child_key).where(or_(*ors), *narrowing))


def _negate(cond: ColumnElement[bool]) -> ColumnElement[bool]:
    """`:not`: every row where `cond` is not true, including rows with no value (NULL)."""
    return case((cond, 1), else_=0) == 0


def _build_code(stype: StoredType, param: SearchParam, modifier: str | None, form: tuple[Any, ...],
                values: _Values) -> ColumnElement[bool]:
    column = param.column
    cond = or_(*[false() if part == "false" else column.is_not(None) if part == "any"
                 else column == values.next(column) for part in form])
    return _negate(cond) if modifier == "not" else cond


def _build_coding(stype: StoredType, param: SearchParam, modifier: str | None, form: tuple[Any, ...],
                  values: _Values) -> ColumnElement[bool]:
    system_col, code_col = param.columns
    ors = []
    for system, has_code in form:
        parts = []
        if system == "none":
            parts.append(or_(system_col.is_(None), system_col == ""))
        elif system == "eq":
            parts.append(system_col == values.next(system_col))
        if has_code:
            parts.append(code_col == values.next(code_col))
        ors.append(and_(*parts))
    cond = or_(*ors)
    return _negate(cond) if modifier == "not" else cond


def _build_arm(stype: StoredType, param: SearchParam, modifier: str | None, form: tuple[Any, ...],
               values: _Values) -> ColumnElement[bool]:
    subject, arm = param.columns
    mode = form[0]
    cond = arm.is_not(None) if mode == "any" else arm.in_(values.many(arm)) if mode == "names" \
        else false()
    subjects = select(arm.table.c.id).where(cond)
    return subject.not_in(subjects) if modifier == "not" else subject.in_(subjects)


def _build_quantity(stype: StoredType, param: SearchParam, modifier: str | None, form: tuple[Any, ...],
                    values: _Values) -> ColumnElement[bool]:
    column, measure = param.columns
    ors = []
    for bounds in form:
        for prefix, has_measure in bounds:
            measured = measure == values.next(measure) if has_measure else None
            if prefix == "eq":
                cond = and_(column >= values.next(column), column < values.next(column))
            elif prefix == "ap":
                cond = and_(column >= values.next(column), column <= values.next(column))
            elif prefix == "ne":
                cond = or_(column < values.next(column), column >= values.next(column))
            else:
                number = values.next(column)
                cond = {"gt": column > number, "sa": column > number, "lt": column < number,
                        "eb": column < number, "ge": column >= number, "le": column <= number}[prefix]
            ors.append(cond if measured is None else and_(measured, cond))
    return or_(*ors) if ors else false()


def _build_string(stype: StoredType, param: SearchParam, modifier: str | None, form: tuple[Any, ...],
                  values: _Values) -> ColumnElement[bool]:
    column = param.column
    if modifier == "exact":
        return or_(*[column == values.next(column) for _ in range(form[0])])
    return or_(*[func.lower(column).like(values.next(column), escape="\\") for _ in range(form[0])])


_BUILD: dict[str, Build] = {
    "id": _build_ids, "last_updated": _build_dates, "identifier": _build_identifier,
    "reference": _build_reference, "code": _build_code, "coding": _build_coding, "arm": _build_arm,
    "datetime": _build_dates, "date": _build_dates, "quantity": _build_quantity, "string": _build_string,
    "linked": _build_linked,
}


def excludes_missing(resource_type: str, sort: Sort, criteria: Sequence[Criterion]) -> bool:
    """True when a criterion on the sort key (a date) can only match rows that have a value."""
    stype = TYPES[resource_type]
    if sort.key not in stype.sorts:
        return False
    return any(c.name == sort.key and c.modifier != "missing"
               and stype.params[c.name].kind in ("datetime", "date") for c in criteria)


# -- pages -------------------------------------------------------------------------------------------------
#
# Building a SQLAlchemy statement costs far more than running it (DESIGN.md: the database answers in ~0.3 ms).
# A page of cacheable criteria is therefore built once per shape, with named bind parameters, and reused (with
# its driver form, DriverStatement), so nothing is rebuilt and SQLAlchemy's compiled cache hits; any other page is
# built for its request by the same functions, its criteria's values written in.

def _sort_column(stype: StoredType, sort: Sort) -> ColumnElement[Any]:
    if sort.key == "_lastUpdated":
        return R.c.last_updated
    if sort.key == "_id":
        return stype.table.c.id
    return stype.sorts[sort.key]


@dataclass(frozen=True, slots=True)
class _Page:
    stmt: Any
    driver: DriverStatement | None


_PAGE_STATEMENTS: dict[tuple[Any, ...], _Page] = {}


@dataclass(frozen=True, slots=True)
class PlannedPage:
    """A page ready to run: the statement (with its driver form when cached) and the values to bind."""

    page: _Page
    binds: dict[str, Any]
    backwards: bool

    def rows(self, found: Sequence[Any]) -> list[tuple[int, Any, str, str, str | None]]:
        """(phase, sort value, id, content, patient) in sort order, from the statement's rows (phase, id, value,
        content, patient)."""
        rows = [(phase, value, rid, content, patient) for phase, rid, value, content, patient in found]
        if self.backwards:
            rows.reverse()
        return rows


def plan_page(dialect: Dialect, compiled: Compiled, sort: Sort, cursor: Cursor | None, limit: int, *,
              not_null: bool = False) -> PlannedPage | None:
    """The one statement that reads a page of `compiled` (see find_page), from the cache when its criteria are
    cacheable; None when no phase can match (the page is empty)."""
    stype = TYPES[compiled.resource_type]
    key, by_id, nullable, backwards, descending, phases = _walk(stype, sort, cursor)
    runs = tuple(p for p in phases if not (p == 1 and not_null))
    if not runs:
        return None
    at_cursor = tuple(cursor is not None and p == cursor.phase for p in runs)

    def build(bound: bool) -> Any:
        conds = conditions_of(compiled, bound=bound)
        if dialect.name == "postgresql" and runs == (0, 1) and not any(at_cursor) and not descending:
            return _first_page_nulls_last(stype, conds, key, limit)
        return _phases_statement(stype, conds, key, by_id, nullable, descending, runs, at_cursor, limit)

    if compiled.cached:
        cache_key = (dialect.name, dialect.driver, compiled.resource_type, compiled.shape, sort.key, descending,
                     runs, at_cursor, limit)
        page = _PAGE_STATEMENTS.get(cache_key)
        if page is None:
            stmt = build(True)
            page = _Page(stmt, DriverStatement.compile(stmt, dialect))
            if len(_PAGE_STATEMENTS) < 4096:
                _PAGE_STATEMENTS[cache_key] = page
        binds = dict(compiled.values)
    else:
        page, binds = _Page(build(False), None), {}
    if cursor is not None and any(at_cursor):
        binds["cursor_value"], binds["cursor_id"] = cursor.value, cursor.id
    return PlannedPage(page, binds, backwards)


def find_page(session: Reader, compiled: Compiled, sort: Sort, cursor: Cursor | None, limit: int, *,
              not_null: bool = False) -> list[tuple[int, Any, str, str, str | None]]:
    """Up to `limit` rows (phase, sort value, id, content, patient) in sort order, after the cursor (or, for a
    `before` cursor, the rows just before it, still returned in sort order).

    The order is total: rows with a sort value by (value, id), then rows without one by id, in the sort's
    direction; so a page never repeats or skips a row however many rows are written meanwhile. Each phase is
    one index-ordered SELECT … LIMIT, and the phases one statement (one round trip). `not_null`: the criteria only
    match rows with a sort value."""
    conn = _connection(session)
    planned = plan_page(conn.dialect, compiled, sort, cursor, limit, not_null=not_null)
    if planned is None:
        return []
    found: Sequence[Any]
    if planned.page.driver is not None and not conn.engine.echo:
        found = planned.page.driver.run(conn, planned.page.stmt, planned.binds)
    else:
        found = conn.execute(planned.page.stmt, planned.binds).all()
    return planned.rows(found)


async def find_page_async(pool: AsyncReadPool, compiled: Compiled, sort: Sort, cursor: Cursor | None, limit: int,
                          *, not_null: bool = False) -> list[tuple[int, Any, str, str, str | None]] | None:
    """`find_page` for cacheable criteria, read on the event loop through `pool` (PostgreSQL, asyncpg); None when
    the page statement can't go to the driver as it is (an IN list, or criteria that are not cacheable): read it
    with `find_page` in a thread instead."""
    planned = plan_page(pool.dialect, compiled, sort, cursor, limit, not_null=not_null)
    if planned is None:
        return []
    driver = planned.page.driver
    if driver is None:
        return None
    return planned.rows(driver.rows(await pool.fetch(driver.sql, driver.args(planned.binds)), edges=True))


def find_ids(session: Reader, compiled: Compiled, limit: int) -> list[str]:
    """The ids of up to `limit` resources matching `compiled`, by id (conditional interactions, study look-ups)."""
    stype = TYPES[compiled.resource_type]
    source = _joined(stype) if compiled.uses_resource else stype.table
    stmt = select(stype.table.c.id).select_from(source).where(*conditions_of(compiled)).order_by(
        stype.table.c.id).limit(limit)
    return list(_connection(session).execute(stmt).scalars())


def count_matches(session: Reader, compiled: Compiled) -> int:
    stype = TYPES[compiled.resource_type]
    source = _joined(stype) if compiled.uses_resource else stype.table
    stmt = select(func.count()).select_from(source).where(*conditions_of(compiled))
    return int(_connection(session).execute(stmt).scalar_one())


def _walk(stype: StoredType, sort: Sort, cursor: Cursor | None
          ) -> tuple[ColumnElement[Any], bool, bool, bool, bool, list[int]]:
    """(sort column, sorted by id?, sort value may be missing?, walking backwards?, descending?, phases in walking
    order from the cursor's): how a page query walks the sort order (see find_page)."""
    key = _sort_column(stype, sort)
    by_id = sort.key == "_id"
    nullable = bool(getattr(key, "nullable", False)) and not by_id
    backwards = cursor is not None and cursor.before
    descending = sort.descending != backwards  # the direction this query walks
    phases = [0, 1] if nullable else [0]
    if backwards:
        phases.reverse()
    if cursor is not None and cursor.phase in phases:
        phases = phases[phases.index(cursor.phase):]
    return key, by_id, nullable, backwards, descending, phases


def _first_page_nulls_last(stype: StoredType, conds: list[ColumnElement[bool]], key: ColumnElement[Any],
                           limit: int) -> Select[Any]:
    """PostgreSQL, first page in ascending order of a sort key that may be missing: both phases in one walk of the
    index. A b-tree keeps NULLs after every value (ASC NULLS LAST), so `ORDER BY key, id` walks the rows with a
    value in order and then those without one by id: the page `_phases_statement` reads, without its second
    index scan, UNION and sort (~60 µs of the server's CPU per search)."""
    table = stype.table
    phase = case((key.is_(None), literal_column("1")), else_=literal_column("0"))
    return (select(phase, table.c.id, key, R.c.content, _patient(stype)).select_from(_joined(stype)).where(*conds)
            .order_by(key.asc().nulls_last(), table.c.id).limit(_fixed(limit)))


def _phases_statement(stype: StoredType, conds: list[ColumnElement[bool]], key: ColumnElement[Any], by_id: bool,
                      nullable: bool, descending: bool, runs: tuple[int, ...], at_cursor: tuple[bool, ...],
                      limit: int) -> Select[Any]:
    """The page over the phases `runs` (in walking order) as one statement: rows (phase, id, sort value, content).

    With two phases it is a UNION ALL of each phase's own index-ordered `LIMIT`, put in order by (phase
    position, sort value, id): at most 2 × limit rows are read, and a 20-result page whose sort key may be
    missing costs one round trip instead of two (the second phase mostly finds nothing)."""
    union = len(runs) > 1
    parts = [_page_statement(stype, conds, key, by_id, nullable, descending, phase, cursor, limit,
                             position=position if union else None)
             for position, (phase, cursor) in enumerate(zip(runs, at_cursor, strict=True))]
    if len(parts) == 1:
        return parts[0]
    both = union_all(*[select(*part.subquery().c) for part in parts]).subquery("page")
    value, rid = both.c.sort_value, both.c.rid
    order = [both.c.position, value.desc(), rid.desc()] if descending else [both.c.position, value, rid]
    return select(both.c.phase, rid, value, both.c.content, both.c.patient).order_by(*order).limit(_fixed(limit))


def _page_statement(stype: StoredType, conds: list[ColumnElement[bool]], key: ColumnElement[Any], by_id: bool,
                    nullable: bool, descending: bool, phase: int, at_cursor: bool, limit: int, *,
                    position: int | None = None) -> Select[Any]:
    """One phase's page query, rows (phase, id, sort value, content), with the cursor as bind parameters
    `cursor_value`, `cursor_id` (see find_page); with a `position`, led by it and labelled for a UNION."""
    table = stype.table
    columns: list[Any]
    order: list[Any]
    if position is None:
        columns = [literal_column(str(phase)), table.c.id, key, R.c.content, _patient(stype)]
    else:
        columns = [literal_column(str(position)).label("position"), literal_column(str(phase)).label("phase"),
                   table.c.id.label("rid"), key.label("sort_value"), R.c.content.label("content"),
                   _patient(stype).label("patient")]
    stmt = select(*columns).select_from(_joined(stype)).where(*conds)
    if phase == 0 and not by_id:
        if nullable:
            stmt = stmt.where(key.is_not(None))
        if at_cursor:
            pos = tuple_(key, table.c.id)
            mark = tuple_(bindparam("cursor_value", type_=key.type), bindparam("cursor_id", type_=table.c.id.type))
            stmt = stmt.where(pos < mark if descending else pos > mark)
        order = [key.desc(), table.c.id.desc()] if descending else [key, table.c.id]
    else:
        if phase == 1:
            stmt = stmt.where(key.is_(None))
        if at_cursor:
            cursor_id: BindParameter[Any] = bindparam("cursor_id", type_=table.c.id.type)
            stmt = stmt.where(table.c.id < cursor_id if descending else table.c.id > cursor_id)
        order = [table.c.id.desc() if descending else table.c.id]
    return stmt.order_by(*order).limit(_fixed(limit))


def _patient(stype: StoredType) -> ColumnElement[Any]:
    """The id of the Patient a row is about (its `patient_param` column), NULL for a type about none: a page row
    carries it so the audit names the patients a search showed (service/core/interactions.py)."""
    if stype.patient_param is None:
        return null()
    return stype.params[stype.patient_param].column


def _fixed(limit: int) -> Any:
    """`LIMIT n` written into a cached page statement (its cache key holds the limit), not bound: PostgreSQL plans a
    prepared statement whose LIMIT is a parameter for every row the query could return, so its generic plan looked
    costly and every execution was planned again (~150 µs of the server's CPU per search); with the limit in the text
    the generic plan is the ordered index scan, and it is kept."""
    return literal_column(str(int(limit)))


# -- _include, _revinclude -----------------------------------------------------------------------------------



def find_included(session: Reader, include: Include, source_ids: Sequence[str], *,
                  studies: frozenset[str] | None = None) -> list[tuple[str, str]]:
    """The resources that the page's `include.source` rows reference through `include.param` (only those in
    `studies`, when the caller is limited to some)."""
    source = TYPES[include.source]
    column = source.params[include.param].column
    referenced = select(column).where(source.table.c.id.in_(list(source_ids))).distinct()
    stmt = select(R.c.id, R.c.content).where(R.c.resource_type == include.target, R.c.id.in_(referenced),
                                              R.c.deleted.is_(False)).order_by(R.c.id)
    if studies is not None:
        target = TYPES[include.target].table
        stmt = stmt.where(R.c.id.in_(select(target.c.id).where(study_condition(include.target, studies))))
    return [(rid, content) for rid, content in _connection(session).execute(stmt)]


def find_revincluded(session: Reader, include: Include, target_ids: Sequence[str],
                     limit: int, *, studies: frozenset[str] | None = None) -> list[tuple[str, str]]:
    """Up to `limit` `include.source` resources that reference one of `target_ids` through `include.param` (the
    search `include.source?param=target_ids`; only those in `studies`, when the caller is limited to some)."""
    source = TYPES[include.source]
    table = source.table
    limit_to = [study_condition(include.source, studies)] if studies is not None else []
    stmt = (select(table.c.id, R.c.content).select_from(_joined(source))
            .where(*references(include.source, include.param, include.target, target_ids), *limit_to)
            .order_by(table.c.id).limit(limit))
    return [(rid, content) for rid, content in _connection(session).execute(stmt)]
