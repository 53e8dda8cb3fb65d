"""What a stored resource type is: declared once, by its domain (`OBSERVATION = StoredType(...)` in
service/observation/service.py), and listed in service/core/registry.py. The write path, search (its parameters,
sorts and includes), the export, the CapabilityStatement, the SearchParameter resources and the OpenAPI examples
all read these declarations.

A search parameter is its FHIR definition (`ParamDef`, fhir_mappings/search.py) plus where it is answered: a
*kind* (how service/search/compiler.py compares its values) and the typed columns it reads:

| kind         | FHIR type | columns                                   | compiled as                                    |
|--------------|-----------|-------------------------------------------|------------------------------------------------|
| id           | token     | the typed table's id                      | `id IN (…)` (`_id`)                            |
| last_updated | date      | resource.last_updated                     | a range of instants (`_lastUpdated`)           |
| identifier   | token     | resource_identifier (system, value)       | `id IN (the type's identifiers matching)`      |
| reference    | reference | the referenced id                         | `= id` / `IN (…)`, ids of the right target type |
| code         | token     | a code (its systems in the ParamDef)      | `= code`; a foreign system matches nothing     |
| coding       | token     | (system, code)                            | system and code as given                       |
| arm          | token     | (subject id, research_subject.arm)        | `subject IN (subjects in those arms)`          |
| datetime     | date      | an instant (UTC)                          | a range of instants                            |
| date         | date      | a calendar date                           | a range of dates                               |
| quantity     | quantity  | (value in the canonical unit, measure)    | per measure accepting the unit, converted      |
| string       | string    | a text                                    | starts with (case-insensitive), :exact, :contains |
| linked       | reference | (key, child key, child type, child id[, date, child's copy]) | `key IN (child keys naming Type/id)` |
"""  # noqa: E501

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Table

from fhir_mappings import fhir
from fhir_mappings.search import ParamDef, common_params
from service.store.models import IdentifierRecord, ResourceRecord, table_of
from service.store.unit_of_work import UnitOfWork

#: (unit of work, payload, id, replacing: a live version exists) -> None; raises for rule violations
IndexFn = Callable[[UnitOfWork, dict[str, Any], str, bool], None]

#: each kind of search parameter (how its values meet its columns) and the FHIR search type it answers
KINDS = {"id": "token", "last_updated": "date", "identifier": "token", "reference": "reference", "code": "token",
         "coding": "token", "arm": "token", "datetime": "date", "date": "date", "quantity": "quantity",
         "string": "string", "linked": "reference"}


#: the kinds of parameter a search may sort by (`_sort`), and which of their columns holds the sort value
SORT_COLUMN = {"reference": 0, "code": 0, "coding": 1, "datetime": 0, "date": 0, "quantity": 0, "string": 0}


@dataclass(frozen=True, slots=True)
class SearchParam:
    """A search parameter of a stored type: as FHIR defines it (`fhir`), and how it is answered (`kind`, `columns`)."""

    fhir: ParamDef
    kind: str
    columns: tuple[Column[Any], ...]

    @property
    def name(self) -> str:
        return self.fhir.name

    @property
    def column(self) -> Column[Any]:
        return self.columns[0]


def param(name: str, kind: str, columns: Column[Any] | tuple[Column[Any], ...], expression: str, description: str,
          *, targets: tuple[str, ...] = (), systems: tuple[str, ...] = (), custom: bool = False) -> SearchParam:
    """Declare one search parameter: its name, kind and columns (see the table above), its FHIRPath expression and
    description, the types a reference may point at, the code systems of a token's codes, and whether it is one of
    the trial's own (published as a SearchParameter resource)."""
    if kind not in KINDS:
        raise ValueError(f"search parameter {name}: unknown kind {kind!r}; one of {', '.join(KINDS)}")
    cols = columns if isinstance(columns, tuple) else (columns,)
    return SearchParam(ParamDef(name, KINDS[kind], expression, description, targets, systems, custom), kind, cols)


def _common(table: Table, resource_type: str) -> list[SearchParam]:
    resource, identifier = table_of(ResourceRecord), table_of(IdentifierRecord)
    where = {"_id": ("id", (table.c.id,)),
             "_lastUpdated": ("last_updated", (resource.c.last_updated,)),
             "identifier": ("identifier", (identifier.c.system, identifier.c.value))}
    return [SearchParam(d, *where[d.name]) for d in common_params(resource_type)]


@dataclass(frozen=True, eq=False)
class StoredType:
    """One stored resource type.

    The write path reads `writable` (405 for a client's write), `model` (structure check), `index` (checks the
    resource, 422, and adds its typed rows), `tables` (emptied on update and delete), `guard_delete`, `rank`
    (order inside a transaction: what others reference comes first) and `prefetch` (batch look-ups for a Bundle's
    entries). Search reads `params` (the common `_id`, `_lastUpdated`, `identifier` and the type's own `search`),
    `sorts` and `default_sort`; includes and revincludes are its reference parameters' targets. Export reads
    `exported`; Group export `study_param` / `study_via`."""

    name: str
    model: type[fhir.Resource]
    table: Table  # the typed table: one row per current resource, keyed by its id
    index: IndexFn
    example: dict[str, Any]  # what a client would send (OpenAPI examples)
    search: tuple[SearchParam, ...] = ()  # the type's own search parameters (beside the common ones)
    #: sort keys besides _id and _lastUpdated: declared, plus every parameter answered by one column of `table`
    sorts: Mapping[str, Column[Any]] = field(default_factory=dict)
    default_sort: str = "_id"
    #: Group export: the search parameter of this type that names its study (`study`; `_id` for ResearchStudy)
    study_param: str | None = None
    #: Group export, for a type that belongs to a study through another type's resources: (that type, its reference
    #: parameter pointing here), e.g. a Patient through ResearchSubject `individual`
    study_via: tuple[str, str] | None = None
    guard_delete: Callable[[UnitOfWork, str], None] | None = None
    rank: int = 0
    prefetch: Callable[[UnitOfWork, list[dict[str, Any]]], None] | None = None
    #: False: the server writes this type itself (AuditEvent); no client creates, updates or deletes it, by any
    #: path (no such routes; 405 from the write path, Bundle entries included)
    writable: bool = True
    #: False: left out of Bulk Data exports (the audit trail is read by search, not shipped with the study's data)
    exported: bool = True
    #: the search parameter whose column holds the Patient a resource is about (`subject`; `_id` for Patient): a
    #: search page reads it beside each row, so the audit names the patients a search showed without parsing JSON
    patient_param: str | None = None
    #: more tables of its rows keyed by its id (`id`), emptied with the typed table (Provenance's targets)
    child_tables: tuple[Table, ...] = ()
    params: dict[str, SearchParam] = field(init=False)

    def __post_init__(self) -> None:
        params = {p.name: p for p in [*_common(self.table, self.name), *self.search]}
        if len(params) != 3 + len(self.search):
            raise ValueError(f"{self.name}: a search parameter is declared twice")
        if self.default_sort not in ("_id", "_lastUpdated", *self.sorts):
            raise ValueError(f"{self.name}: the default sort {self.default_sort} is not a sort key")
        if self.study_param is not None and self.study_param not in params:
            raise ValueError(f"{self.name}: study_param {self.study_param} is not a search parameter")
        if self.patient_param is not None and self.patient_param not in params:
            raise ValueError(f"{self.name}: patient_param {self.patient_param} is not a search parameter")
        object.__setattr__(self, "params", params)
        # every parameter answered by one column of the type's own table sorts by it (`_sort`); those declared in
        # `sorts` keep their column
        auto = {p.name: p.columns[SORT_COLUMN[p.kind]] for p in self.search
                if p.kind in SORT_COLUMN and p.columns[SORT_COLUMN[p.kind]].table is self.table}
        object.__setattr__(self, "sorts", {**auto, **self.sorts})

    @property
    def tables(self) -> tuple[Table, ...]:
        return (self.table, *self.child_tables)
