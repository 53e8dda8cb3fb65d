"""Typed rows of AdverseEvents: what the safety tables count."""

from datetime import datetime

from sqlalchemy import Index, Text
from sqlmodel import Field, SQLModel


class AdverseEventRecord(SQLModel, table=True):
    __tablename__ = "adverse_event"
    __table_args__ = (
        Index("ix_adverse_event_study", "study_id", "onset", "id"),
        Index("ix_adverse_event_patient", "patient_id", "onset"),
        Index("ix_adverse_event_subject", "subject_id"),
    )

    id: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(max_length=64)
    study_id: str = Field(max_length=64)
    subject_id: str = Field(max_length=64)
    actuality: str = Field(max_length=16)
    event_system: str | None = Field(default=None, sa_type=Text)
    event_code: str | None = Field(default=None, sa_type=Text)
    event_text: str | None = Field(default=None, sa_type=Text)
    onset: datetime | None = None  # UTC
    seriousness: str | None = Field(default=None, max_length=32)
    severity: str | None = Field(default=None, max_length=32)
    outcome: str | None = Field(default=None, max_length=32)
    related: bool = False
    caused_withdrawal: bool = False
