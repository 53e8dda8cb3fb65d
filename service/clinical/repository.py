"""SQL for the clinical types: the study and patient of a resource a Provenance names, an Encounter's start."""

from datetime import date
from typing import Any

from sqlalchemy import Column, Table, select
from sqlmodel import Session

from service.clinical.models import EncounterRecord
from service.store.models import table_of

EN = table_of(EncounterRecord)


def get_study_and_patient(session: Session, table: Table, study: Column[Any], patient: Column[Any] | None,
                          id: str) -> tuple[str | None, str | None] | None:
    """(study, patient) of row `id` of a typed table (its study and patient columns); None when there is no row."""
    row = session.execute(select(study, patient if patient is not None else study).where(table.c.id == id)).first()
    if row is None:
        return None
    return row[0], row[1] if patient is not None else None


def get_encounter_start(session: Session, id: str) -> date | None:
    """The local start date of Encounter `id` (None when it has none, or there is no such encounter)."""
    return session.execute(select(EN.c.start_date).where(EN.c.id == id)).scalar()
