"""Study cohorts as FHIR Groups: read and search (the Group is derived from the research subjects on read)."""

from urllib.parse import urlencode

import orjson
from sqlmodel import Session

from fhir_mappings.bundle import bundle, entry
from fhir_mappings.group import cohort_group, group_id_for_study, study_id_for_group
from fhir_mappings.outcome import issue, outcome
from fhir_mappings.primitives import whole_number
from service.errors import BadRequest, NotFound
from service.group import repository


def read_group(session: Session, id: str, *, studies: frozenset[str] | None = None) -> dict:
    """Group/{id}: the cohort of ResearchStudy/{id}; 404 when there is no such study (or it is not one of
    `studies`, those a caller limited to some may see)."""
    found = repository.find_studies(session, [study_id_for_group(id)])
    if studies is not None:
        found = [f for f in found if f[0] in studies]
    if not found:
        raise NotFound(f"Group/{id} is not known: a Group is the cohort of a ResearchStudy with the same id",
                       expression="Group.id")
    return _group(session, *found[0])


def _group(session: Session, study_id: str, title: str | None) -> dict:
    return cohort_group(study_id, title, repository.find_members(session, study_id),
                        repository.last_change(session, study_id))


def search_groups(session: Session, params: list[tuple[str, str]], base: str, *, strict: bool = False,
                  studies: frozenset[str] | None = None) -> bytes:
    """`_id` (comma-separated ids OR'd); without it every study's Group (of `studies` only, when given). As every
    search (issue 11 §4): a modifier on `_id` or a malformed `_count` is a 400 always; an unknown parameter is
    ignored with a warning (400 under strict handling) and left out of the `self` link, which shows what was
    applied."""
    ids: list[str] | None = None
    warnings = []
    applied: list[tuple[str, str]] = []
    for name, value in params:
        if name == "_id":
            wanted = [study_id_for_group(v) for v in value.split(",") if v]
            ids = wanted if ids is None else [i for i in ids if i in wanted]
            applied.append((name, value))
        elif name.split(":", 1)[0] == "_id":
            raise BadRequest(f"Modifier ':{name.split(':', 1)[1]}' is not supported on Group's _id", expression=name)
        elif name == "_count":
            if not whole_number(value):
                raise BadRequest(f"_count must be a whole number, not '{value}'", expression=name)
            applied.append((name, value))  # every study's Group fits one page
        elif name in ("_format", "_pretty"):
            applied.append((name, value))
        elif strict:
            raise BadRequest(f"Unknown search parameter '{name}' for Group (only _id is supported)", expression=name)
        else:
            warnings.append(issue("not-supported", f"Search parameter '{name}' is not supported and was ignored",
                                  name, severity="warning"))
    found = [(sid, title) for sid, title in repository.find_studies(session, ids)
             if studies is None or sid in studies]
    entries = [entry(f"{base}/Group/{group_id_for_study(sid)}", orjson.dumps(_group(session, sid, title)),
                     search={"mode": "match"}) for sid, title in found]
    if warnings:
        entries.append({"resource": orjson.Fragment(orjson.dumps(outcome(warnings))), "search": {"mode": "outcome"}})
    query = urlencode(applied)
    self_link = f"{base}/Group" + (f"?{query}" if query else "")
    return bundle("searchset", entries, total=len(found), links=[("self", self_link)])
