"""Typed rows of the trial: patients, studies, arms and research subjects (enrolments)."""

from dataclasses import dataclass
from datetime import date

from sqlalchemy import Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from fhir_mappings.terminology import Catalogue


class PatientRecord(SQLModel, table=True):
    __tablename__ = "patient"
    __table_args__ = (Index("ix_patient_birth_date", "birth_date"),)

    id: str = Field(primary_key=True, max_length=64)
    family: str | None = Field(default=None, sa_type=Text)
    given: str | None = Field(default=None, sa_type=Text)
    gender: str | None = Field(default=None, max_length=16)
    birth_date: date | None = None


class StudyRecord(SQLModel, table=True):
    __tablename__ = "study"

    id: str = Field(primary_key=True, max_length=64)
    title: str | None = Field(default=None, sa_type=Text)
    status: str = Field(max_length=64, index=True)
    catalogue: str = Field(default="atopic-dermatitis", max_length=64)
    #: the study's own out-of-scope policy (`reject` or `skip`), None: the server's TRIAL_FHIR_OUT_OF_SCOPE
    out_of_scope: str | None = Field(default=None, max_length=16)


class ArmRecord(SQLModel, table=True):
    """One arm of a study (`ResearchStudy.arm`): its name and what it gives (the dose)."""

    __tablename__ = "study_arm"

    study_id: str = Field(primary_key=True, max_length=64)
    name: str = Field(primary_key=True, max_length=255)
    description: str | None = Field(default=None, sa_type=Text)


class SubjectRecord(SQLModel, table=True):
    """A patient's enrolment in a study (`ResearchSubject`); `day0` is `period.start`."""

    __tablename__ = "research_subject"
    __table_args__ = (
        UniqueConstraint("study_id", "patient_id", name="uq_subject_study_patient"),
        Index("ix_subject_patient", "patient_id"),
        Index("ix_subject_study_arm", "study_id", "arm"),
    )

    id: str = Field(primary_key=True, max_length=64)
    study_id: str = Field(max_length=64)
    patient_id: str = Field(max_length=64)
    status: str = Field(max_length=64)
    assigned_arm: str | None = Field(default=None, max_length=255)
    actual_arm: str | None = Field(default=None, max_length=255)
    arm: str | None = Field(default=None, max_length=255)  # actual arm, else assigned arm
    day0: date | None = None
    end_date: date | None = None


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A patient's enrolment in one study: what an Observation or AdverseEvent needs to know of the subject it
    belongs to (not a table: read from research_subject and study)."""

    study_id: str
    subject_id: str
    patient_id: str
    day0: date | None
    catalogue: Catalogue
    arm: str | None = None
    status: str | None = None
    out_of_scope: str | None = None  # the study's out-of-scope policy, if it sets one
