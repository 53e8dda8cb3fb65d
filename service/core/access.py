"""Access decisions: what a caller's scopes and studies let it do, decided here for every path.

Scopes (service/auth/scopes.py) decide the interaction: read, vread and history need `r`; search (and every
type it includes) `s`; create `c`; update `u`; delete `d`; a conditional write also `s` (it searches); Bundle
entries each their own; `$export` `r` on every type it writes; the study's figures `r` on Observation and
AdverseEvent. A missing scope is a 403 naming it.

Studies decide the rows: a caller registered for some studies (or holding granular `?study=` scopes) sees and
touches nothing of another study by any path. Searches are limited where their SQL is built
(service/search/compiler.py `within_studies`); a read of another study's resource is a 404, as if it didn't exist
(existence is not revealed); a write that would touch another study (before or after it) is a 403.
"""

from collections.abc import Sequence

from sqlalchemy import exists, select
from sqlalchemy.engine import Connection
from sqlmodel import Session

from service.core.context import Caller
from service.core.registry import TYPES
from service.errors import Forbidden, NotFound
from service.search import compiler

#: what the study's figures (summary, CSV, MeasureReport, charts, report) are computed from
FIGURES_READ = ("Observation", "AdverseEvent", "ResearchSubject")
#: what the study's CDISC SDTM datasets are made from (each row is a subject's data, not an aggregate)
SDTM_READ = ("ResearchStudy", "Patient", "ResearchSubject", "Observation", "AdverseEvent", "MedicationAdministration",
             "Procedure")


def require(caller: Caller, resource_type: str, letters: str, *, expression: str | None = None) -> None:
    """403 naming the first scope the caller lacks for `letters` (each of `cruds`) on `resource_type`."""
    if caller.scopes is None:
        return
    for letter in letters:
        if not caller.may(resource_type, letter):
            raise Forbidden(f"The access token grants no system/{resource_type}.{letter} scope (or a v1 "
                            f"system/{resource_type}.{'read' if letter in 'rs' else 'write'}), which this "
                            "interaction needs", expression=expression)


def visible(session: Session | Connection, caller: Caller, resource_type: str, id: str, letter: str = "r") -> bool:
    """May the caller see `resource_type/id` (its studies)? A caller limited to studies sees a resource only when
    it belongs to one of them (a resource no longer current, deleted, belongs to none)."""
    studies = caller.studies_for(resource_type, letter)
    if studies is None:
        return True
    table = TYPES[resource_type].table if resource_type in TYPES else None
    if table is None:
        return False
    stmt = select(exists().where(table.c.id == id, compiler.study_condition(resource_type, studies)))
    return bool(session.execute(stmt).scalar())


def require_visible(session: Session | Connection, caller: Caller, resource_type: str, id: str,
                    letter: str = "r") -> None:
    """404, worded as for an unknown resource, when the caller may not see `resource_type/id`."""
    if not visible(session, caller, resource_type, id, letter):
        raise NotFound(f"{resource_type}/{id} is not known", expression=f"{resource_type}.id")


def require_own_studies(session: Session | Connection, caller: Caller, resource_type: str, id: str,
                        letter: str) -> None:
    """403 when `resource_type/id`, as it stands in this transaction, belongs to a study the caller may not
    `letter` (checked before an update or delete, and after any write, whose typed rows are then flushed)."""
    studies = caller.studies_for(resource_type, letter)
    if studies is None or resource_type not in TYPES:
        return
    table = TYPES[resource_type].table
    stmt = select(exists().where(table.c.id == id, compiler.foreign_condition(resource_type, studies)))
    if session.execute(stmt).scalar():
        raise Forbidden(f"{resource_type}/{id} belongs to a study this client has no access to",
                        expression=f"{resource_type}")


def check_studies(session: Session | Connection, caller: Caller, written: Sequence[tuple[str, str, str, str]]) -> None:
    """403 when a resource a study-limited caller wrote in this transaction (its typed rows sent) now belongs to a
    study it may not touch: one query per (type, interaction) for a whole Bundle, naming the first entry at fault."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for resource_type, id, letter, where in written:
        groups.setdefault((resource_type, letter), []).append((id, where))
    for (resource_type, letter), items in groups.items():
        studies = caller.studies_for(resource_type, letter)
        if studies is None:
            continue
        table = TYPES[resource_type].table
        ids = [id for id, _ in items]
        foreign = set(session.execute(select(table.c.id).where(
            table.c.id.in_(ids), compiler.foreign_condition(resource_type, studies))).scalars())
        for id, where in items:
            if id in foreign:
                raise Forbidden(f"{resource_type}/{id} would belong to a study this client has no access to",
                                expression=where or resource_type)
