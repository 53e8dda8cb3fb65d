"""SQL of the ConceptMaps' translations."""

from collections.abc import Collection

from sqlalchemy import select, tuple_
from sqlmodel import Session

from fhir_mappings.concept_map import TRANSLATING
from service.store.models import table_of
from service.terminology.models import ConceptMapElementRecord, ConceptMapRecord

CM = table_of(ConceptMapRecord)
CE = table_of(ConceptMapElementRecord)


def find_translations(session: Session, codes: Collection[tuple[str, str]]
                      ) -> dict[tuple[str, str], list[dict[str, str]]]:
    """{(source system, code): [target Coding, …]} from every ConceptMap that is not retired, for `codes`; a code
    no map translates is absent."""
    if not codes:
        return {}
    stmt = (select(CE.c.source_system, CE.c.source_code, CE.c.target_system, CE.c.target_code, CE.c.target_display)
            .join(CM, CM.c.id == CE.c.id)
            .where(tuple_(CE.c.source_system, CE.c.source_code).in_(sorted(codes)), CM.c.status != "retired",
                   CE.c.equivalence.in_(sorted(TRANSLATING)))
            .order_by(CE.c.source_system, CE.c.source_code, CE.c.target_system, CE.c.target_code))
    found: dict[tuple[str, str], list[dict[str, str]]] = {}
    for system, code, target_system, target_code, display in session.execute(stmt):
        coding = {"system": target_system, "code": target_code, **({"display": display} if display else {})}
        targets = found.setdefault((system, code), [])
        if coding not in targets:
            targets.append(coding)
    return found
