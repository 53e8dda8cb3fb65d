"""Typed rows of the clinical resources the trial keeps beside its results: encounters (visits at the site), the
cell administrations (MedicationAdministration, Procedure) and the provenance of what was received."""

from datetime import date, datetime

from sqlalchemy import Index, Text
from sqlmodel import Field, SQLModel


class EncounterRecord(SQLModel, table=True):
    """An enrolled subject's encounter; its local start date may place an undated Observation in a visit."""

    __tablename__ = "encounter"
    __table_args__ = (
        Index("ix_encounter_patient_start", "patient_id", "period_start", "id"),
        Index("ix_encounter_study_start", "study_id", "period_start", "id"),
    )

    id: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(max_length=64)
    study_id: str = Field(max_length=64)
    subject_id: str = Field(max_length=64)
    status: str = Field(max_length=32)
    class_code: str | None = Field(default=None, max_length=64)
    period_start: datetime | None = None  # UTC
    period_end: datetime | None = None  # UTC
    start_date: date | None = None  # the local date of period.start, as written


class AdministrationRecord(SQLModel, table=True):
    """A MedicationAdministration: the cell product given to a subject (dose, route, when)."""

    __tablename__ = "medication_administration"
    __table_args__ = (
        Index("ix_administration_patient_date", "patient_id", "effective", "id"),
        Index("ix_administration_study_date", "study_id", "effective", "id"),
    )

    id: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(max_length=64)
    study_id: str = Field(max_length=64)
    subject_id: str = Field(max_length=64)
    status: str = Field(max_length=32)
    code_system: str | None = Field(default=None, sa_type=Text)
    code: str | None = Field(default=None, max_length=255)
    effective: datetime | None = None  # UTC: effectiveDateTime, or effectivePeriod.start
    local_date: date | None = None
    dose_value: float | None = None
    dose_unit: str | None = Field(default=None, max_length=64)
    route_system: str | None = Field(default=None, sa_type=Text)
    route_code: str | None = Field(default=None, max_length=64)


class ProcedureRecord(SQLModel, table=True):
    """A Procedure done to a subject (e.g. the cell administration, when the site records it as a procedure)."""

    __tablename__ = "procedure"
    __table_args__ = (
        Index("ix_procedure_patient_date", "patient_id", "performed", "id"),
        Index("ix_procedure_study_date", "study_id", "performed", "id"),
    )

    id: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(max_length=64)
    study_id: str = Field(max_length=64)
    subject_id: str = Field(max_length=64)
    status: str = Field(max_length=32)
    code_system: str | None = Field(default=None, sa_type=Text)
    code: str | None = Field(default=None, max_length=255)
    performed: datetime | None = None  # UTC: performedDateTime, or performedPeriod.start
    local_date: date | None = None


class ProvenanceRecord(SQLModel, table=True):
    """Who recorded what, when: the study and patient are those of its targets."""

    __tablename__ = "provenance"
    __table_args__ = (
        Index("ix_provenance_study_recorded", "study_id", "recorded", "id"),
        Index("ix_provenance_patient_recorded", "patient_id", "recorded", "id"),
    )

    id: str = Field(primary_key=True, max_length=64)
    study_id: str = Field(max_length=64)
    patient_id: str | None = Field(default=None, max_length=64)
    recorded: datetime | None = None  # UTC
    agent: str | None = Field(default=None, sa_type=Text)  # agent[0].who: its reference, else its display


class ProvenanceTargetRecord(SQLModel, table=True):
    """One resource a Provenance is about (`target`), read by `Provenance?target=Type/id`."""

    __tablename__ = "provenance_target"
    __table_args__ = (Index("ix_provenance_target_what", "target_type", "target_id"),)

    id: str = Field(primary_key=True, max_length=64)  # the Provenance
    target_type: str = Field(primary_key=True, max_length=40)
    target_id: str = Field(primary_key=True, max_length=64)
    #: the Provenance's patient (provenance.patient_id; None when its targets are of several patients or of none):
    #: the distribution key a child table of patient data carries (docs/scaling.md)
    patient_id: str | None = Field(default=None, max_length=64)
