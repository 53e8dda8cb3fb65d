"""FHIR search: parse the query, run it over the typed tables, answer a `searchset` Bundle of stored JSON.

Paging is keyset: the `next`/`previous` links carry an opaque `_cursor` holding the sort value and id of the
page's edge row, so a page never repeats or skips a resource when others are written between requests.
Unknown or malformed parameters are ignored and reported in an OperationOutcome entry (`search.mode =
outcome`); with strict handling they are a 400 naming the parameter. `_total` is given when it is free (the
whole result fits the page) or asked for (`_total=accurate|estimate`, `_summary=count`).
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any
from urllib.parse import urlencode

import orjson
from sqlalchemy.engine import Connection
from sqlmodel import Session

from fhir_mappings.bundle import bundle, entry
from fhir_mappings.dates import fhir_instant
from fhir_mappings.outcome import Issue, issue, outcome
from fhir_mappings.references import ID_RE
from fhir_mappings.search import (
    END,
    IGNORED_PARAMS,
    MAX_REVINCLUDE,
    RESULT_PARAMS,
    Criterion,
    Cursor,
    Malformed,
    SearchRequest,
    chain_names,
    encode_cursor,
    parse_search,
    parse_token,
    search_parameter_resource,
    subset,
)
from service.audit.events import patients_of
from service.core import access
from service.core.context import SYSTEM, Caller
from service.core.registry import REGISTRY, TYPES, find_search_spec, search_spec
from service.errors import BadRequest, NotFound
from service.search import compiler
from service.search.compiler import Compiled
from service.store.driver import AsyncReadPool
from service.store.unit_of_work import utcnow

#: a row of a page (compiler.find_page): (phase, sort value, id, stored JSON, the Patient it is about)
PageRow = tuple[int, Any, str, str, str | None]


@dataclass(frozen=True, slots=True)
class SearchPlan:
    """A parsed, checked search and its criteria compiled (service/search/compiler.py): no SQL built yet."""

    req: SearchRequest
    params: list[tuple[str, str]]  # those applied, and the page's cursor (the self link): an unknown one is left out
    compiled: Compiled
    not_null: bool
    caller: Caller = SYSTEM  # whose search: includes are limited to what it may search, in its studies

    @property
    def one_statement(self) -> bool:
        """Is the whole Bundle one cached page statement (no count, no includes)?"""
        return (self.compiled.cached and self.req.summary != "count"
                and self.req.total not in ("accurate", "estimate") and not self.req.includes
                and not self.req.revincludes)


def plan_search(resource_type: str, params: list[tuple[str, str]], *, strict: bool = False, default_count: int = 50,
                max_count: int = 1000, caller: Caller = SYSTEM) -> SearchPlan:
    """Parse and check `params` (400 for errors, and for warnings under strict handling); no I/O.

    For a caller limited to some studies the criteria are limited to them (compiler.within_studies), and
    `_include`/`_revinclude` of a type it may not search are left out, with a warning naming the scope: an
    included resource is never a way around a scope."""
    req = parse_search(search_spec(resource_type), list(params), default_count=default_count, max_count=max_count,
                       lookup=find_search_spec)
    errors = req.errors + ([replace(w, severity="error") for w in req.warnings] if strict else [])
    if errors:
        raise BadRequest(errors[0].diagnostics if len(errors) == 1 else
                         f"{len(errors)} search parameters can't be applied: "
                         + "; ".join(e.diagnostics or "" for e in errors), issues=errors)
    chained = [] if all(c.chain is None for c in req.criteria) else \
        [name for c, (name, _) in zip(req.criteria, _criteria_params(req), strict=True) if c.chain is not None]
    if chained and caller.deidentified:  # its values would be compared with real identifiers, dates and codes
        raise BadRequest(f"{chained[0]}: de-identified views can't be searched through chained parameters or _has",
                         issues=[issue("forbidden", f"{name}: de-identified views can't be searched through "
                                       "chained parameters or _has", name) for name in chained])
    if chained and not caller.unrestricted:
        req = replace(req, criteria=[_chain_for(caller, c) for c in req.criteria])
    compiled = compiler.compile_criteria(resource_type, req.criteria)
    if not caller.unrestricted:
        studies = caller.studies_for(resource_type, "s")
        if studies is not None:
            compiled = compiler.within_studies(compiled, studies)
        includes = [i for i in req.includes if caller.may(i.target, "s")]
        revincludes = [i for i in req.revincludes if caller.may(i.source, "s")]
        if len(includes) < len(req.includes) or len(revincludes) < len(req.revincludes):
            left_out = [i for i in req.includes if i not in includes] + [i for i in req.revincludes
                                                                          if i not in revincludes]
            notes = [issue("forbidden", f"{i.text} was left out: the token grants no "
                           f"system/{i.target if i in req.includes else i.source}.s scope",
                           "_include" if i in req.includes else "_revinclude", severity="warning")
                     for i in left_out]
            req = replace(req, includes=includes, revincludes=revincludes, warnings=[*req.warnings, *notes])
    cursor = [(name, value) for name, value in params if name == "_cursor"][-1:]  # this page's position
    return SearchPlan(req, req.params + cursor, compiled,
                      compiler.excludes_missing(resource_type, req.sort, req.criteria), caller)


NOT_CRITERIA = frozenset((*RESULT_PARAMS, *IGNORED_PARAMS))


def _criteria_params(req: SearchRequest) -> list[tuple[str, str]]:
    """The applied parameters that became criteria, in order (one each): the others are result parameters."""
    return [(n, v) for n, v in req.params if n.split(":", 1)[0] not in NOT_CRITERIA]


def _chain_for(caller: Caller, crit: Criterion) -> Criterion:
    """A chained criterion (or `_has`) as `caller` may search it: 403 without a search scope on the other type,
    else limited to that type's resources in the caller's studies (a chain never reads what a search could not)."""
    chain = crit.chain
    if chain is None:
        return crit
    access.require(caller, chain.target, "s")
    return replace(crit, chain=replace(chain, studies=caller.studies_for(chain.target, "s")))


def search(session: Session | Connection, resource_type: str, params: list[tuple[str, str]], base: str, *,
           strict: bool = False, default_count: int = 50, max_count: int = 1000, caller: Caller = SYSTEM) -> bytes:
    """A `searchset` Bundle (JSON bytes) for `GET [base]/{resource_type}?params`; `session` is a Session (a unit
    of work) or a read connection (`service.db.read_connection`)."""
    plan = plan_search(resource_type, params, strict=strict, default_count=default_count, max_count=max_count,
                       caller=caller)
    return run_search(session, plan, base)


def run_search(session: Session | Connection, plan: SearchPlan, base: str, *, seen: list[str] | None = None) -> bytes:
    """The Bundle of a planned search, read through `session` (see `search`); the ids of the Patients it shows are
    added to `seen` (for the audit)."""
    req = plan.req
    if req.summary == "count":
        total = compiler.count_matches(session, plan.compiled)
        return bundle("searchset", _outcome_entries(list(req.warnings)), total=total,
                      links=[("self", _url(base, req.resource_type, plan.params))], timestamp=fhir_instant(utcnow()))
    rows = compiler.find_page(session, plan.compiled, req.sort, req.cursor, req.count + 1, not_null=plan.not_null)
    return _searchset(session, plan, rows, base, seen)


async def run_search_async(pool: AsyncReadPool, plan: SearchPlan, base: str, *,
                           seen: list[str] | None = None) -> bytes | None:
    """The same Bundle as `run_search`, read on the event loop through `pool` (no worker thread, no GIL
    hand-off), for a search that is one cached page statement (`plan.one_statement`); None when that statement
    can't go to the driver as it is (an IN list): run `run_search` in a thread instead."""
    req = plan.req
    rows = await compiler.find_page_async(pool, plan.compiled, req.sort, req.cursor, req.count + 1,
                                          not_null=plan.not_null)
    if rows is None:
        return None
    return _searchset(None, plan, rows, base, seen)


def _searchset(session: Session | Connection | None, plan: SearchPlan, rows: list[PageRow], base: str,
               seen: list[str] | None = None) -> bytes:
    """The Bundle of a page read with one more row than asked for (that row only tells that a next page exists)."""
    req = plan.req
    resource_type = req.resource_type
    warnings = list(req.warnings)
    backwards = req.cursor is not None and req.cursor.before
    at_end = req.cursor is not None and req.cursor.phase == END  # the last page
    more = len(rows) > req.count
    if more:
        rows = rows[1:] if backwards else rows[:-1]
    self_url = _url(base, resource_type, plan.params)
    links = [("self", self_url)]
    if rows:
        has_next = more if not backwards else not at_end
        has_previous = more if backwards else req.cursor is not None
        if has_next or has_previous:  # keyset paging: the first page is the query without a cursor, the last the
            # page before the end (each one index-ordered read, as cheap as any page)
            first = self_url if req.cursor is None else _url(base, resource_type, req.params)
            links.append(("first", first))
            links.append(("last", f"{first}{'&' if req.params else '?'}_cursor={_end_cursor(req.sort.text)}"))
        if has_next:
            links.append(("next", _page_url(base, req, rows[-1], before=False)))
        if has_previous:
            links.append(("previous", _page_url(base, req, rows[0], before=True)))

    total = None
    whole = req.cursor is None and not more  # the page holds every match: the total is its length
    if req.total == "accurate" or (req.total == "estimate" and not whole):
        assert session is not None, "a search read without a session (run_search_async) counts nothing"
        total = compiler.count_matches(session, plan.compiled)
    elif req.total != "none" and whole:
        total = len(rows)

    if seen is not None:
        seen.extend(patient for _, _, _, _, patient in rows if patient is not None)
    prefix, match = f"{base}/{resource_type}/", {"mode": "match"}
    if req.summary in ("true", "data") or req.elements is not None:
        model = TYPES[resource_type].model
        entries = [entry(prefix + rid, subset(content, model, summary=req.summary, elements=req.elements),
                         search=match) for _, _, rid, content, _ in rows]
    else:  # the common page: each entry is its stored JSON as it is
        entries = [{"fullUrl": prefix + rid, "resource": orjson.Fragment(content), "search": match}
                   for _, _, rid, content, _ in rows]
    if rows and (req.includes or req.revincludes):
        assert session is not None, "a search read without a session (run_search_async) includes nothing"
        entries += _included(session, req, [rid for _, _, rid, _, _ in rows], base, warnings, plan.caller, seen)
    return bundle("searchset", _outcome_entries(warnings) + entries, total=total, links=links,
                  timestamp=fhir_instant(utcnow()))


#: how many times `_include:iterate` / `_revinclude:iterate` follow what the previous pass brought in
MAX_ITERATE = 3


def _included(session: Session | Connection, req: SearchRequest, ids: list[str], base: str,
              warnings: list[Issue], caller: Caller, patients: list[str] | None = None) -> list[dict[str, Any]]:
    """The `_include`/`_revinclude` entries of a page whose matches are `ids`: each include from the matches,
    then the `:iterate` ones again from what the previous pass added (up to MAX_ITERATE passes); a resource is
    never served twice."""
    seen: set[tuple[str, str]] = {(req.resource_type, rid) for rid in ids}
    entries = []

    def add(rtype: str, found: Sequence[tuple[str, str | bytes]], added: dict[str, list[str]]) -> None:
        for rid, content in found:
            if (rtype, rid) in seen:
                continue
            seen.add((rtype, rid))
            added.setdefault(rtype, []).append(rid)
            if patients is not None:  # an included resource is parsed for its patient: includes are the rare page
                patients.extend(patients_of(rtype, orjson.loads(content)))
            if req.summary in ("true", "data"):
                content = subset(content, TYPES[rtype].model, summary=req.summary, elements=None)
            entries.append(entry(f"{base}/{rtype}/{rid}", content, search={"mode": "include"}))

    def one_pass(from_ids: dict[str, list[str]], iterating: bool) -> dict[str, list[str]]:
        added: dict[str, list[str]] = {}
        for include in req.includes:
            sources = from_ids.get(include.source)
            if sources and (include.iterate or not iterating):
                add(include.target, compiler.find_included(session, include, sources,
                                                           studies=caller.studies_for(include.target, "s")), added)
        for include in req.revincludes:
            targets = from_ids.get(include.target)
            if not targets or not (include.iterate or not iterating):
                continue
            found = compiler.find_revincluded(session, include, targets, MAX_REVINCLUDE + 1,
                                              studies=caller.studies_for(include.source, "s"))
            if len(found) > MAX_REVINCLUDE:
                found = found[:MAX_REVINCLUDE]
                warnings.append(issue("too-costly", f"_revinclude={include.text} was cut at {MAX_REVINCLUDE} "
                                      "resources; use a smaller _count or search them directly", "_revinclude",
                                      severity="warning"))
            add(include.source, found, added)
        return added

    added = one_pass({req.resource_type: ids}, False)
    if any(i.iterate for i in [*req.includes, *req.revincludes]):
        for _ in range(MAX_ITERATE):
            if not added:
                break
            added = one_pass(added, True)
    return entries


def _outcome_entries(warnings: list[Issue]) -> list[dict[str, Any]]:
    if not warnings:
        return []
    return [{"resource": outcome(warnings), "search": {"mode": "outcome"}}]


def _url(base: str, resource_type: str, params: list[tuple[str, str]]) -> str:
    return f"{base}/{resource_type}" + (f"?{urlencode(params)}" if params else "")


@lru_cache(maxsize=256)
def _end_cursor(sort: str) -> str:
    """The cursor past the last row of a `_sort` order (URL-safe base64: written into a URL as it is)."""
    return encode_cursor(Cursor(sort, True, END, None, "end"))


def _page_url(base: str, req: SearchRequest, row: PageRow, *, before: bool) -> str:
    phase, value, rid, _, _ = row
    cursor = Cursor(req.sort.text, before, phase, value if req.sort.key != "_id" else None, rid)
    return _url(base, req.resource_type, req.params + [("_cursor", encode_cursor(cursor))])


# -- the search as a selector: conditional interactions, a study named by its registry number -----------------

def match_ids(session: Session | Connection, resource_type: str, params: list[tuple[str, str]], *, where: str,
              caller: Caller = SYSTEM, limit: int = 100) -> list[str]:
    """The ids (up to `limit`) of the resources a conditional interaction's criteria select (`If-None-Exist`,
    `PUT/DELETE Type?criteria`): any search parameter of the type, chains and `_has` included, read by the
    search's own parser and compiler. Strict: an unknown or malformed parameter, or a result parameter (`_count`,
    `_sort`, …, which select nothing), is a 400 naming `where` and the parameter.

    The caller's studies limit what a chain or `_has` reads (as in a search), but not the matches themselves: a
    match in a study the caller may not write is refused by the write (403, service/core/resources.py), never
    taken for "no match", which would write a duplicate of a resource the caller can't see."""
    if not params:
        raise BadRequest(f"{where} needs search criteria, e.g. identifier=system|value", expression=where)
    result = [name for name, _ in params if name.split(":", 1)[0] in (*RESULT_PARAMS, *IGNORED_PARAMS)]
    if result:
        raise BadRequest(f"{where}: {', '.join(result)} is not a search criterion", expression=where,
                         issues=[issue("invalid", f"{where}: {name} is not a search criterion", where)
                                 for name in result])
    try:
        plan = plan_search(resource_type, params, strict=True, caller=caller)
    except BadRequest as exc:
        found = [replace(i, code="invalid", diagnostics=f"{where}: {i.diagnostics}",
                         expression=(where, *i.expression)) for i in exc.issues]
        raise BadRequest(f"{where}: {exc}", issues=found) from None
    return compiler.find_ids(session, compiler.compile_criteria(resource_type, plan.req.criteria), limit)


def resolve_study(session: Session | Connection, key: str, *, studies: frozenset[str] | None = None) -> str:
    """The id of the ResearchStudy a study-scoped URL names by `key`: its id, or else one of its business
    identifiers (an NCT number: `NCT01234567`, or `system|value`) naming exactly one study (of `studies`, those the
    caller may read, when limited); else `key` unchanged (which then names no study: 404)."""
    if not key:
        return key
    if ID_RE.match(key) and compiler.find_ids(
            session, compiler.compile_criteria("ResearchStudy", [Criterion("_id", "token", None, (key,))]), 1):
        return key
    try:
        token = parse_token(key)
    except Malformed:
        return key
    compiled = compiler.compile_criteria("ResearchStudy", [Criterion("identifier", "token", None, (token,))])
    if studies is not None:
        compiled = compiler.within_studies(compiled, studies)
    found = compiler.find_ids(session, compiled, 2)
    return found[0] if len(found) == 1 else key


# -- SearchParameter (every parameter of every stored type, served from the declarations the parser reads) ------

@lru_cache(maxsize=1)
def search_parameters() -> dict[str, dict[str, Any]]:
    """id (`<Type>-<code>`) -> SearchParameter resource, for every search parameter of every stored type: the
    modifiers, comparators and chains the search parser takes on it (fhir_mappings/search.py)."""
    return {p.fhir.id_for(t.name): search_parameter_resource(
                t.name, p.fhir, chain_names(search_spec(t.name), p.name, find_search_spec))
            for t in REGISTRY for p in t.params.values()}


def read_search_parameter(id: str) -> dict[str, Any]:
    found = search_parameters().get(id)
    if found is None:
        raise NotFound(f"SearchParameter/{id} is not known", expression="SearchParameter.id")
    return found


def find_search_parameters(*, url: str | None = None, name: str | None = None, code: str | None = None,
                           base_type: str | None = None) -> list[dict[str, Any]]:
    return [sp for sp in search_parameters().values()
            if (url is None or sp["url"] == url) and (name is None or sp["name"].lower() == name.lower())
            and (code is None or sp["code"] == code) and (base_type is None or base_type in sp["base"])]
