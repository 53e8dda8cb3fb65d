"""SQL for the clinical types: the study and patient of a resource a Provenance names, an Encounter's start."""

from datetime import date
from typing import Any

from sqlalchemy import Column, Table, select
from sqlmodel import Session

from service.clinical.models import EncounterRecord
from service.store.models import table_of

EN = table_of(EncounterRecord)


def get_studies_and_patients(session: Session, table: Table, study: Column[Any], patient: Column[Any] | None,
                             ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """(study, patient) of each row of `ids` that a typed table holds, in one statement."""
    found: dict[str, tuple[str | None, str | None]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows = session.execute(select(table.c.id, study, patient if patient is not None else study).where(
            table.c.id.in_(chunk))).all()
        found.update((row[0], (row[1], row[2] if patient is not None else None)) for row in rows)
    return found


def get_encounter_start(session: Session, id: str) -> date | None:
    """The local start date of Encounter `id` (None when it has none, or there is no such encounter)."""
    return session.execute(select(EN.c.start_date).where(EN.c.id == id)).scalar()
