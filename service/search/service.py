"""FHIR search: parse the query, run it over the typed tables, answer a `searchset` Bundle of stored JSON.

Paging is keyset: the `next`/`previous` links carry an opaque `_cursor` holding the sort value and id of the
page's edge row, so a page never repeats or skips a resource when others are written between requests.
Unknown or malformed parameters are ignored and reported in an OperationOutcome entry (`search.mode =
outcome`); with strict handling they are a 400 naming the parameter. `_total` is given when it is free (the
whole result fits the page) or asked for (`_total=accurate|estimate`, `_summary=count`).
"""

from dataclasses import replace
from urllib.parse import urlencode

from sqlalchemy.engine import Connection
from sqlmodel import Session

from fhir_mappings.bundle import bundle, entry
from fhir_mappings.dates import fhir_instant
from fhir_mappings.outcome import issue, outcome
from fhir_mappings.search import (MAX_REVINCLUDE, Cursor, SearchRequest, encode_cursor, parse_search, search_parameters,
                                  subset)
from service.errors import BadRequest, NotFound
from service.resource.service import handler_for
from service.resource.unit_of_work import utcnow
from service.search import repository


def search(session: Session | Connection, resource_type: str, params: list[tuple[str, str]], base: str, *,
           strict: bool = False, default_count: int = 50, max_count: int = 1000) -> bytes:
    """A `searchset` Bundle (JSON bytes) for `GET [base]/{resource_type}?params`; `session` is a Session (a unit
    of work) or a read connection (`service.db.read_connection`)."""
    handler_for(resource_type)
    req = parse_search(resource_type, list(params), default_count=default_count, max_count=max_count)
    if req.errors:
        raise BadRequest(req.errors[0].diagnostics, issues=req.errors)
    if strict and req.warnings:
        errors = [replace(w, severity="error") for w in req.warnings]
        raise BadRequest(errors[0].diagnostics, issues=errors)
    fast = repository.fast_shape(resource_type, req.criteria)  # a statement cached per query shape
    where = repository.conditions(resource_type, req.criteria) if fast is None or req.summary == "count" \
        or req.total in ("accurate", "estimate") else None
    join_resource = repository.uses_resource_table(req.criteria)
    self_link = _url(base, resource_type, list(params))
    timestamp = fhir_instant(utcnow())
    warnings = list(req.warnings)

    if req.summary == "count":
        total = repository.count_matches(session, resource_type, where, join_resource=join_resource)
        return bundle("searchset", _outcome_entries(warnings), total=total, links=[("self", self_link)],
                      timestamp=timestamp)

    rows = repository.find_page(session, resource_type, where, req.sort, req.cursor, req.count + 1,
                                not_null=repository.excludes_missing(resource_type, req.sort, req.criteria),
                                fast=fast)
    backwards = req.cursor is not None and req.cursor.before
    more = len(rows) > req.count
    if more:
        rows = rows[1:] if backwards else rows[:-1]
    links = [("self", self_link)]
    if rows:
        has_next = more if not backwards else True
        has_previous = more if backwards else req.cursor is not None
        if has_next:
            links.append(("next", _page_url(base, req, rows[-1], before=False)))
        if has_previous:
            links.append(("previous", _page_url(base, req, rows[0], before=True)))

    total = None
    if req.total in ("accurate", "estimate"):
        total = repository.count_matches(session, resource_type, where, join_resource=join_resource)
    elif req.total is None and req.cursor is None and not more:
        total = len(rows)

    entries = []
    subsetting = req.summary in ("true", "data") or req.elements is not None
    ids = [rid for _, _, rid, _ in rows]
    for _, _, rid, content in rows:
        if subsetting:
            content = subset(content, resource_type, summary=req.summary, elements=req.elements)
        entries.append(entry(f"{base}/{resource_type}/{rid}", content, search={"mode": "match"}))
    if ids:
        entries += _included(session, req, ids, base, warnings)
    return bundle("searchset", _outcome_entries(warnings) + entries, total=total, links=links, timestamp=timestamp)


def _included(session: Session | Connection, req: SearchRequest, ids: list[str], base: str,
              warnings: list) -> list[dict]:
    seen: set[tuple[str, str]] = set()
    entries = []

    def add(rtype: str, found: list[tuple[str, str]]) -> None:
        for rid, content in found:
            if (rtype, rid) in seen:
                continue
            seen.add((rtype, rid))
            if req.summary in ("true", "data"):
                content = subset(content, rtype, summary=req.summary, elements=None)
            entries.append(entry(f"{base}/{rtype}/{rid}", content, search={"mode": "include"}))

    for include in req.includes:
        add(include.target, repository.find_included(session, include, ids))
    for include in req.revincludes:
        found = repository.find_revincluded(session, include, ids, MAX_REVINCLUDE + 1)
        if len(found) > MAX_REVINCLUDE:
            found = found[:MAX_REVINCLUDE]
            warnings.append(issue("too-costly", f"_revinclude={include.text} was cut at {MAX_REVINCLUDE} resources; "
                                  "use a smaller _count or search them directly", "_revinclude",
                                  severity="warning"))
        add(include.source, found)
    return entries


def _outcome_entries(warnings: list) -> list[dict]:
    if not warnings:
        return []
    return [{"resource": outcome(warnings), "search": {"mode": "outcome"}}]


def _url(base: str, resource_type: str, params: list[tuple[str, str]]) -> str:
    return f"{base}/{resource_type}" + (f"?{urlencode(params)}" if params else "")


def _page_url(base: str, req: SearchRequest, row: tuple, *, before: bool) -> str:
    phase, value, rid, _ = row
    cursor = Cursor(req.sort.text, before, phase, value if req.sort.key != "_id" else None, rid)
    return _url(base, req.resource_type, req.params + [("_cursor", encode_cursor(cursor))])


# -- SearchParameter (the trial's own parameters, served from their definitions) ----------------------------

def read_search_parameter(id: str) -> dict:
    found = search_parameters().get(id)
    if found is None:
        raise NotFound(f"SearchParameter/{id} is not known", expression="SearchParameter.id")
    return found


def find_search_parameters(*, url: str | None = None, name: str | None = None, code: str | None = None,
                           base_type: str | None = None) -> list[dict]:
    return [sp for sp in search_parameters().values()
            if (url is None or sp["url"] == url) and (name is None or sp["name"].lower() == name.lower())
            and (code is None or sp["code"] == code) and (base_type is None or base_type in sp["base"])]
