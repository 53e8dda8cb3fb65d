"""The search compiler, without a database: every parameter of every stored type, compiled on SQLite and PostgreSQL
both ways (values written in, as a request's own statement has them; named bind parameters, as a statement cached
per shape has them). The two must be the same SQL with the same values; the cases (tests/data/search/
compiler_cases.json) say which values and SQL each query gives."""

import json
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from sqlalchemy import and_
from sqlalchemy.dialects import postgresql, sqlite

from fhir_mappings.search import MODIFIERS, PREFIXES, Cursor, Sort, parse_search
from service.core.registry import REGISTRY, search_spec
from service.search import compiler

CASES = json.loads((Path(__file__).parents[1] / "data" / "search" / "compiler_cases.json").read_text())["cases"]
DIALECTS = {"sqlite": sqlite.dialect(), "postgresql": postgresql.dialect()}
#: a placeholder (PostgreSQL's named, an IN list, SQLite's positional) and the type cast PostgreSQL may add to it
_PLACEHOLDER = re.compile(r"(?:%\((\w+)\)s|__\[POSTCOMPILE_(\w+)\]|\?)"
                          r"(?:::(?:TIMESTAMP WITH TIME ZONE|[A-Z]+(?:\(\d+\))?))?")


def compiled_case(case: dict) -> compiler.Compiled:
    req = parse_search(search_spec(case["type"]), parse_qsl(case["query"], keep_blank_values=True))
    assert not req.warnings and not req.errors, [w.diagnostics for w in req.warnings + req.errors]
    return compiler.compile_criteria(case["type"], req.criteria)


def rendered(clause: Any, dialect: Any, values: dict[str, Any] | None = None) -> tuple[str, list[Any]]:
    """(SQL with every placeholder written `?` and every IN list `?…`, without PostgreSQL's casts of bind
    parameters, and the bound values in SQL order)."""
    sql = clause.compile(dialect=dialect)
    params = sql.construct_params(values)
    positions = iter(sql.positiontup or ())  # SQLite: `?` and IN lists take the names in this order
    names = []

    def placeholder(match: re.Match) -> str:
        names.append(next(positions) if sql.positional else match.group(1) or match.group(2))
        return "?…" if match.group(2) else "?"

    text = _PLACEHOLDER.sub(placeholder, sql.string)
    return " ".join(text.split()), [params[n] for n in names]


def plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("case", CASES, ids=[f"{c['type']}?{c['query']}" for c in CASES])
def test_general_and_cached_forms_are_the_same_sql(case, dialect):
    compiled = compiled_case(case)
    assert compiled.cached is case["cached"]
    general = rendered(and_(*compiler.conditions_of(compiled)), DIALECTS[dialect])
    cached = rendered(and_(*compiler.conditions_of(compiled, bound=True)), DIALECTS[dialect], compiled.values)
    assert general == cached
    text, values = general
    assert plain(values) == case["values"]
    fragment = case.get("sql")
    if isinstance(fragment, dict):
        fragment = fragment[dialect]
    if fragment is not None:
        assert fragment in text, text


def test_the_cases_cover_every_parameter_modifier_and_prefix():
    queried = {(c["type"], name.partition(":")[0]) for c in CASES for name, _ in parse_qsl(c["query"])}
    declared = {(t.name, name) for t in REGISTRY for name in t.params}
    assert declared <= queried, sorted(declared - queried)
    used = {(t.params[name.partition(":")[0]].kind, name.partition(":")[2] or None)
            for c in CASES for t in REGISTRY if t.name == c["type"] for name, _ in parse_qsl(c["query"])}
    for stored in REGISTRY:
        for param in stored.params.values():
            if param.kind in ("id", "last_updated"):
                continue
            for modifier in MODIFIERS[param.fhir.type]:
                assert (param.kind, modifier) in used, (param.kind, modifier)
    dates = " ".join(c["query"] for c in CASES if "date=" in c["query"])
    assert all(f"={p}2" in dates or f",{p}2" in dates for p in PREFIXES if p != "ap")


def test_a_cached_shape_is_one_statement_whatever_its_values():
    first = compiled_case({"type": "Observation", "query": "subject=p1&code=EASI&date=ge2024-01-01"})
    second = compiled_case({"type": "Observation", "query": "subject=Patient/p9&code=IGA&date=ge2023-05"})
    assert first.shape == second.shape and first.values != second.values
    for dialect in DIALECTS.values():
        a = compiler.plan_page(dialect, first, Sort("date"), None, 21)
        b = compiler.plan_page(dialect, second, Sort("date"), None, 21)
        assert a.page is b.page and a.binds == first.values and b.binds == second.values
        assert "LIMIT 21" in str(a.page.stmt.compile(dialect=dialect))  # written in, not bound
    cursor = Cursor("date", False, 0, datetime.fromisoformat("2024-02-01T00:00:00+00:00"), "o1")
    after = compiler.plan_page(DIALECTS["postgresql"], second, Sort("date"), cursor, 21)
    assert after.page is not a.page
    assert after.binds == {**second.values, "cursor_value": cursor.value, "cursor_id": "o1"}


def test_other_shapes_are_built_for_their_request():
    compiled = compiled_case({"type": "Observation", "query": "study=s1&value-quantity=gt3"})
    for dialect in DIALECTS.values():
        a = compiler.plan_page(dialect, compiled, Sort("date"), None, 21)
        b = compiler.plan_page(dialect, compiled, Sort("date"), None, 21)
        assert a.page is not b.page and a.page.driver is None and a.binds == {}
        assert rendered(a.page.stmt, dialect) == rendered(b.page.stmt, dialect)


def test_a_date_criterion_on_the_sort_key_skips_the_rows_without_one():
    req = parse_search(search_spec("Observation"), [("date", "ge2024-01-01")])
    assert compiler.excludes_missing("Observation", req.sort, req.criteria)
    req = parse_search(search_spec("Observation"), [("date:missing", "true")])
    assert not compiler.excludes_missing("Observation", req.sort, req.criteria)
    req = parse_search(search_spec("Observation"), [("date", "ge2024-01-01"), ("_sort", "_id")])
    assert not compiler.excludes_missing("Observation", req.sort, req.criteria)
