"""The upstream FHIR servers this service pulls from (EHRs), and where each pull stands.

- `ehr_source`: one registered upstream: its base URL and how we authenticate (none, a static bearer, or SMART
  Backend Services with our signed assertion: token URL, client id and the path of our private key file), the
  options of its pulls (`pull_mode` auto or search; a Bulk Data Group the operator named, or the one a sync
  found upstream), the Bulk Data export under way (`export_state`, which an interrupted sync resumes), the last
  Bulk Data manifest's `transactionTime` (the next export's `_since`), counters and the last error of its last
  sync, and the lease that lets one sync of a source run at a time (whichever replica or command line runs it).
- `ehr_watermark`: per (source, our patient, resource type) the upstream `meta.lastUpdated` reached so far (the
  next search's `_lastUpdated`; after a Bulk Data export, its transactionTime for the Group's members), and the
  patient's id upstream; committed per page, so an interrupted sync resumes from there.
- `ehr_sync_issue`: the upstream resources the core refused (each with its OperationOutcome), kept for
  `sync status`; the issues of a source's previous syncs are replaced by the next sync's.
"""

from datetime import datetime

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel


class EhrSourceRecord(SQLModel, table=True):
    __tablename__ = "ehr_source"

    name: str = Field(primary_key=True, max_length=64)
    base_url: str = Field(sa_column=Column(Text, nullable=False))
    auth: str = Field(default="none", max_length=16)  # none | bearer | smart
    token_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    client_id: str | None = Field(default=None, max_length=255)
    key_file: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # path of our private JWK/PEM
    # a static bearer token, when `auth` is bearer: a secret, never printed nor logged
    bearer: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    scope: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # scopes asked of a SMART server
    group_id: str | None = Field(default=None, max_length=255)  # upstream Group for Bulk Data `$export` (forced)
    # auto: Bulk Data when the upstream offers Group `$export` and a Group holds every matched patient, else search;
    # search: never Bulk Data (unless `group_id` forces it, which `sources add` refuses together with search)
    pull_mode: str = Field(default="auto", max_length=16)
    # the upstream Group a sync found holding the study's patients (auto mode, no `group_id`); re-checked each sync
    discovered_group: str | None = Field(default=None, max_length=255)
    # the Bulk Data export under way (JSON: its status URL, group, types, `_since`, and the files fully imported),
    # committed as it goes so that an interrupted sync resumes it; None when none is
    export_state: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime
    # the previous Bulk Data manifest's transactionTime (upstream's clock): the next export's `_since`
    transaction_time: str | None = Field(default=None, max_length=64)
    # the last sync: when it started and ended, how it went, its counts (JSON), and why it stopped if it did
    last_started: datetime | None = None
    last_finished: datetime | None = None
    last_status: str | None = Field(default=None, max_length=16)  # running | completed | failed
    last_counts: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # one sync of a source at a time: the holder's name and until when (renewed per page)
    holder: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = None


class EhrWatermarkRecord(SQLModel, table=True):
    __tablename__ = "ehr_watermark"

    source: str = Field(primary_key=True, max_length=64)
    patient_id: str = Field(primary_key=True, max_length=64)  # ours
    resource_type: str = Field(primary_key=True, max_length=40)
    upstream_patient: str | None = Field(default=None, max_length=255)
    last_updated: str | None = Field(default=None, max_length=64)  # upstream meta.lastUpdated reached (as sent)
    updated_at: datetime


class EhrSyncIssueRecord(SQLModel, table=True):
    __tablename__ = "ehr_sync_issue"
    __table_args__ = (Index("ix_ehr_sync_issue_source", "source", "pk"),)

    pk: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=64)
    at: datetime
    resource: str = Field(sa_column=Column(Text, nullable=False))  # the upstream resource's URL (type/id)
    outcome: str = Field(sa_column=Column(Text, nullable=False))  # the OperationOutcome JSON the core answered
