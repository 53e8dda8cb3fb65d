"""Typed rows of a study's catalogue as stored FHIR resources: its PlanDefinitions, ObservationDefinitions, and
which measures each plan lists (what a new version of a measure must re-version)."""

from sqlalchemy import Index, Text
from sqlmodel import Field, SQLModel


class PlanDefinitionRecord(SQLModel, table=True):
    """A stored PlanDefinition: a study's schedule and catalogue (search by `url`, `status`, `name`)."""

    __tablename__ = "plan_definition"
    __table_args__ = (Index("ix_plan_definition_url", "url", "id"),)

    id: str = Field(primary_key=True, max_length=64)
    url: str | None = Field(default=None, max_length=1024)
    version: str | None = Field(default=None, max_length=255)
    name: str | None = Field(default=None, max_length=255)
    title: str | None = Field(default=None, sa_type=Text)
    status: str = Field(max_length=32)


class PlanMeasureRecord(SQLModel, table=True):
    """One measure a plan lists (extension `catalogue-measure`): plan id -> ObservationDefinition id."""

    __tablename__ = "plan_definition_measure"
    __table_args__ = (Index("ix_plan_definition_measure_definition", "definition_id"),)

    pk: int | None = Field(default=None, primary_key=True)
    id: str = Field(max_length=64, index=True)  # the PlanDefinition's id
    definition_id: str = Field(max_length=64)


class ObservationDefinitionRecord(SQLModel, table=True):
    """A stored ObservationDefinition: one measure (search by `code`, by its key as `identifier`)."""

    __tablename__ = "observation_definition"
    __table_args__ = (Index("ix_observation_definition_code", "code", "code_system"),)

    id: str = Field(primary_key=True, max_length=64)
    key: str = Field(max_length=64)
    code_system: str = Field(sa_type=Text)
    code: str = Field(max_length=255)
