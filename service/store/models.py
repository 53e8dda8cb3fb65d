"""Every stored FHIR resource: its current version, every past version, and its identifiers.

The canonical JSON (as received, plus `id` and `meta`) is kept as text and served as it is; typed domain
tables (trial/, observation/, adverse_event/) hold what the trial asks questions of.
"""

from datetime import datetime
from typing import Any, cast

from sqlalchemy import BigInteger, Column, Index, Integer, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a `table=True` model (what SQL statements are built from)."""
    # SQLAlchemy's declarative mapping sets `__table__` on every table model, but SQLModel's types don't declare it
    table: Table = cast(Any, model).__table__
    return table


class ResourceRecord(SQLModel, table=True):
    """The current version of one resource (deleted ones are kept as tombstones)."""

    __tablename__ = "resource"
    __table_args__ = (Index("ix_resource_type_updated", "resource_type", "last_updated", "id"),)

    resource_type: str = Field(primary_key=True, max_length=40)
    id: str = Field(primary_key=True, max_length=64)
    version_id: int
    last_updated: datetime
    deleted: bool = False
    content: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class ResourceVersion(SQLModel, table=True):
    """One version of one resource, for history and vread (content is null for a delete)."""

    __tablename__ = "resource_version"
    __table_args__ = (Index("ix_resource_version_updated", "last_updated"),)

    resource_type: str = Field(primary_key=True, max_length=40)
    id: str = Field(primary_key=True, max_length=64)
    version_id: int = Field(primary_key=True)
    last_updated: datetime
    method: str = Field(max_length=10)  # POST, PUT, DELETE
    content: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class IdentifierRecord(SQLModel, table=True):
    """One business identifier of a current resource. Unique per type: the key of conditional writes."""

    __tablename__ = "resource_identifier"
    __table_args__ = (
        UniqueConstraint("resource_type", "system", "value", name="uq_identifier_type_system_value"),
        Index("ix_identifier_resource", "resource_type", "resource_id"),
    )

    # drawn from a sequence on every write of a resource with identifiers: bigint on PostgreSQL (migration 0012);
    # SQLite's INTEGER PRIMARY KEY is the 64-bit rowid already, and only INTEGER is the rowid
    pk: int | None = Field(default=None, sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"),
                                                          primary_key=True))
    resource_type: str = Field(max_length=40)
    resource_id: str = Field(max_length=64)
    system: str = Field(default="", sa_type=Text)  # at most MAX_IDENTIFIER_LENGTH
    value: str = Field(sa_type=Text)
