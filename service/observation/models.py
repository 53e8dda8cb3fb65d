"""Typed rows of Observations: one measurement of a catalogue measure for an enrolled subject."""

from datetime import date, datetime

from sqlalchemy import Index, Text
from sqlmodel import Field, SQLModel


class MeasurementRecord(SQLModel, table=True):
    """Value in the measure's canonical unit, with the original value and unit kept beside it."""

    __tablename__ = "measurement"
    __table_args__ = (
        Index("ix_measurement_study_code_date", "study_id", "code", "effective", "id"),
        Index("ix_measurement_code_date", "code", "effective", "id"),
        Index("ix_measurement_summary", "study_id", "subject_id", "measure", "visit", "status", "study_day",
              "effective", "value"),
    )

    id: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(max_length=64)
    study_id: str = Field(max_length=64)
    subject_id: str = Field(max_length=64)
    measure: str = Field(max_length=64)
    code_system: str = Field(max_length=255)
    code: str = Field(max_length=64)
    category: str | None = Field(default=None, sa_type=Text)
    status: str = Field(max_length=32)
    value: float
    unit: str = Field(max_length=32)
    original_value: str = Field(max_length=64)
    original_unit: str = Field(max_length=64)
    effective: datetime | None = None  # UTC
    local_date: date | None = None  # the result's own local date
    study_day: int | None = None  # local_date - day 0
    visit: str = Field(default="unscheduled", max_length=32)
