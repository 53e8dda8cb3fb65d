"""Typed rows of ConceptMaps: the map, and one row per translation (source code -> target code)."""

from sqlalchemy import Index, Text
from sqlmodel import Field, SQLModel


class ConceptMapRecord(SQLModel, table=True):
    """A stored ConceptMap (search by `url`, `status`)."""

    __tablename__ = "concept_map"
    __table_args__ = (Index("ix_concept_map_url", "url", "id"),)

    id: str = Field(primary_key=True, max_length=64)
    url: str | None = Field(default=None, max_length=1024)
    version: str | None = Field(default=None, max_length=255)
    name: str | None = Field(default=None, max_length=255)
    status: str = Field(max_length=32)


class ConceptMapElementRecord(SQLModel, table=True):
    """One translation of a ConceptMap: (source system, code) -> (target system, code)."""

    __tablename__ = "concept_map_element"
    __table_args__ = (Index("ix_concept_map_element_source", "source_system", "source_code"),)

    pk: int | None = Field(default=None, primary_key=True)
    id: str = Field(max_length=64, index=True)  # the ConceptMap's id
    source_system: str = Field(sa_type=Text)
    source_code: str = Field(max_length=255)
    target_system: str = Field(sa_type=Text)
    target_code: str = Field(max_length=255)
    target_display: str | None = Field(default=None, sa_type=Text)
    equivalence: str = Field(max_length=32)
