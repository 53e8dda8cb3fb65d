"""ConceptMap as a stored type (CONCEPT_MAP): the site's code translations, which belong to no study (every client
with the scope reads them; a client limited to studies sees none, as for any resource of no study)."""

from typing import Any

from fhir_mappings import fhir
from fhir_mappings.concept_map import check_concept_map, concept_map_elements, concept_map_row
from service import examples
from service.core.stored_type import StoredType, param
from service.errors import raise_for_issues
from service.store.unit_of_work import UnitOfWork
from service.terminology.repository import CE, CM


def index_concept_map(uow: UnitOfWork, payload: dict[str, Any], id: str, replacing: bool) -> None:
    raise_for_issues(check_concept_map(payload))
    uow.add(CM, concept_map_row(payload, id))
    for row in concept_map_elements(payload, id):
        uow.add(CE, row)


CONCEPT_MAP = StoredType(
    "ConceptMap", fhir.ConceptMap, CM, index_concept_map, examples.CONCEPT_MAP, rank=0, child_tables=(CE,),
    search=(
        param("url", "code", CM.c.url, "ConceptMap.url", "The canonical URL of the map (as sent, no version)"),
        param("status", "code", CM.c.status, "ConceptMap.status", "draft, active, retired or unknown",
              systems=("http://hl7.org/fhir/publication-status",)),
        param("name", "string", CM.c.name, "ConceptMap.name", "Its computer-friendly name"),
    ),
    sorts={"url": CM.c.url})
