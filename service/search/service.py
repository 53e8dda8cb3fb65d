"""Type-level search. This first version answers `_id`, `identifier` and `_count`, paged by id (keyset);
unknown parameters are reported in a warning OperationOutcome (or 400 with `Prefer: handling=strict`)."""

from urllib.parse import urlencode

import orjson
from sqlalchemy import select
from sqlmodel import Session

from fhir_mappings.bundle import bundle, entry
from fhir_mappings.outcome import issue, outcome
from fhir_mappings.references import split_token
from service.errors import BadRequest
from service.resource.models import IdentifierRecord, ResourceRecord
from service.resource.service import handler_for
from service.resource.unit_of_work import utcnow
from fhir_mappings.dates import fhir_instant

R = ResourceRecord.__table__
I = IdentifierRecord.__table__  # noqa: E741
RESULT_PARAMS = {"_count", "_format", "_cursor", "_total", "_pretty"}


def search(session: Session, resource_type: str, params: list[tuple[str, str]], base: str, *, strict: bool = False,
           default_count: int = 50, max_count: int = 1000) -> bytes:
    handler_for(resource_type)
    stmt = select(R.c.id, R.c.content).where(R.c.resource_type == resource_type, R.c.deleted.is_(False))
    warnings = []
    count = default_count
    cursor = None
    for name, value in params:
        if name == "_count":
            if not value.isdigit():
                raise BadRequest(f"_count must be a whole number, got '{value}'", expression="_count")
            count = min(int(value), max_count)
        elif name == "_cursor":
            cursor = value
        elif name == "_id":
            stmt = stmt.where(R.c.id.in_(value.split(",")))
        elif name == "identifier":
            ors = []
            for token in value.split(","):
                system, val = split_token(token)
                cond = (I.c.value == val) if system is None else (I.c.system == system) & (I.c.value == val)
                ors.append(cond)
            from sqlalchemy import or_
            sub = select(I.c.resource_id).where(I.c.resource_type == resource_type, or_(*ors))
            stmt = stmt.where(R.c.id.in_(sub))
        elif name in RESULT_PARAMS:
            continue
        else:
            if strict:
                raise BadRequest(f"Unknown search parameter '{name}' for {resource_type}", expression=name)
            warnings.append(issue("not-supported", f"Search parameter '{name}' is not supported and was ignored",
                                  name, severity="warning"))
    if cursor:
        stmt = stmt.where(R.c.id > cursor)
    rows = session.execute(stmt.order_by(R.c.id).limit(count + 1)).all()
    page, more = rows[:count], len(rows) > count
    kept = [(n, v) for n, v in params if n != "_cursor"]
    links = [("self", f"{base}/{resource_type}?{urlencode(params)}")]
    if more:
        links.append(("next", f"{base}/{resource_type}?{urlencode(kept + [('_cursor', page[-1].id)])}"))
    entries = [entry(f"{base}/{resource_type}/{rid}", content, search={"mode": "match"}) for rid, content in page]
    if warnings:
        entries.append({"resource": outcome(warnings), "search": {"mode": "outcome"}})
    total = len(page) if not cursor and not more else None
    return bundle("searchset", entries, total=total, links=links, timestamp=fhir_instant(utcnow()))


__all__ = ["search", "orjson"]
