"""Bulk Data export jobs: the state every replica shares (the files live in `settings.export_dir`)."""

from datetime import datetime

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel


class ExportJobRecord(SQLModel, table=True):
    """One `$export` request, from kick-off to its files.

    status: queued → running → completed | failed (`cancelled`: a row of before 0012, removed by housekeeping).
    Its scheduling is the generic job of the same id (service/jobs: lease, heartbeat, attempts, reaper); this row
    holds what the client asked and sees: its progress, and at the end its manifest (`output`) or `error`.
    """

    __tablename__ = "export_job"
    __table_args__ = (Index("ix_export_job_status_created", "status", "created_at"),)

    id: str = Field(primary_key=True, max_length=36)
    status: str = Field(max_length=16)
    group_id: str | None = Field(default=None, max_length=64)  # None: system-level export
    spec: str = Field(sa_column=Column(Text, nullable=False))  # JSON: types, since, type_filters, output_format
    request: str = Field(sa_column=Column(Text, nullable=False))  # the kick-off URL, for the manifest
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat: datetime | None = None
    transaction_time: datetime | None = None
    worker: str | None = Field(default=None, max_length=128)  # host:pid:thread of the claiming worker
    progress: str | None = Field(default=None, max_length=255)
    output: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON [{type, file, count}]
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # whose job it is (service.export.service.kick_off): only that client sees its status and files
    client_id: str | None = Field(default=None, max_length=255)  # Caller.name; None: started before 0009
    restricted: bool = False  # started by a token client (Caller.scopes is not None): files need a token too
    deidentified: bool = False  # the files hold de-identified resources (service/deid)
    studies: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON {type: [study id]}
