"""Indexes that let every supported search read its page straight off an index in sort order: each covers a
filter AND the sort (`effective, id` for date order), because an uncovered sort costs ~100× (DESIGN.md).
They are attached to the typed tables here (created by migration 0002_search_indexes)."""

from typing import Any

from sqlalchemy import Column, Index

from service.adverse_event.models import AdverseEventRecord
from service.observation.models import MeasurementRecord
from service.store.models import IdentifierRecord, table_of

M = table_of(MeasurementRecord)
A = table_of(AdverseEventRecord)
I = table_of(IdentifierRecord)  # noqa: E741


def _index(name: str, *columns: Column[Any]) -> Index:
    table = columns[0].table
    existing = next((ix for ix in table.indexes if ix.name == name), None)
    return existing if existing is not None else Index(name, *columns)


INDEXES = (
    # Observation?subject=…&code=… (and patient=…), in date order
    _index("ix_search_measurement_patient_code_date", M.c.patient_id, M.c.code, M.c.effective, M.c.id),
    # Observation?subject=…
    _index("ix_search_measurement_patient_date", M.c.patient_id, M.c.effective, M.c.id),
    # Observation?study=… (study+code+date is ix_measurement_study_code_date)
    _index("ix_search_measurement_study_date", M.c.study_id, M.c.effective, M.c.id),
    # Observation?study=…&visit=…
    _index("ix_search_measurement_study_visit_date", M.c.study_id, M.c.visit, M.c.effective, M.c.id),
    # Observation?arm=… (subject_id IN the arm's subjects)
    _index("ix_search_measurement_subject_date", M.c.subject_id, M.c.effective, M.c.id),
    # Observation?date=… and Observation?_sort=date with no other filter
    _index("ix_search_measurement_date", M.c.effective, M.c.id),
    # AdverseEvent?subject=… and AdverseEvent?date=… in date order
    _index("ix_search_adverse_event_patient_date", A.c.patient_id, A.c.onset, A.c.id),
    _index("ix_search_adverse_event_date", A.c.onset, A.c.id),
    # identifier=value (no system)
    _index("ix_search_identifier_value", I.c.resource_type, I.c.value),
)
