"""The durable job table every background job shares (exports today; notifications and syncs later)."""

from datetime import datetime

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel


class JobRecord(SQLModel, table=True):
    """One unit of background work, from `enqueue` to its end.

    state: queued → running → completed | failed | cancelled; a running job goes back to queued when its lease
    runs out (its worker died or hung: the reaper) or its worker stops cleanly, until `attempts` reaches
    `max_attempts` (then failed). A running job is held by `worker` until `lease_until`, which the worker renews
    at each heartbeat; `attempts` (the number of the run that holds it) and `worker` together are the lease: a
    worker whose lease was taken changes nothing of the job any more.
    """

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_state_not_before", "state", "not_before"),
                      Index("ix_job_state_lease", "state", "lease_until"))

    id: str = Field(primary_key=True, max_length=36)
    kind: str = Field(max_length=64)  # the handler that runs it (service.jobs.runner.JobKind.name)
    state: str = Field(max_length=16)
    payload: str = Field(sa_column=Column(Text, nullable=False))  # JSON: what the handler needs
    attempts: int = 0  # runs started (a clean stop gives its run back)
    max_attempts: int = 3
    not_before: datetime  # not claimed before this (retry back-off)
    lease_until: datetime | None = None
    heartbeat: datetime | None = None
    worker: str | None = Field(default=None, max_length=128)  # host:pid:random of the holder
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # why it failed, in the service's words (never SQL, parameter values or paths), or what the last lost run was
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON, what the handler returned
