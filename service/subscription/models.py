"""Subscriptions' tables: the typed row of each Subscription (searched), its delivery state (kept across its
versions), the outbox of its events, and the generation that tells every replica its cache of active
subscriptions is stale."""

from datetime import datetime

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel


class SubscriptionRecord(SQLModel, table=True):
    """The typed row of the current version of a Subscription (emptied and written again with each version)."""

    __tablename__ = "subscription"
    __table_args__ = (Index("ix_subscription_status", "status", "id"),)

    id: str = Field(primary_key=True, max_length=64)
    status: str = Field(max_length=16)
    criteria: str = Field(sa_column=Column(Text, nullable=False))
    topic: str | None = Field(default=None, max_length=255)  # the topic URL; None: classic criteria
    resource_type: str = Field(max_length=64)  # of the focus
    study_id: str | None = Field(default=None, max_length=64)  # the one study it is limited to, if one
    endpoint: str = Field(sa_column=Column(Text, nullable=False))
    content: str = Field(max_length=16)  # empty | id-only | full-resource


class SubscriptionState(SQLModel, table=True):
    """Delivery state of a Subscription (not a version's: it lives as long as the subscription's id).

    `delivered` is the last event number its endpoint acknowledged (the numbers are in SubscriptionCount). The
    sender that holds `lease_owner` until `lease_until` is the only one delivering it."""

    __tablename__ = "subscription_state"
    __table_args__ = (Index("ix_subscription_state_due", "next_attempt_at", "id"),)

    id: str = Field(primary_key=True, max_length=64)
    owner: str = Field(max_length=255)  # the client that asked (its token's sub)
    owner_scopes: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # None: unrestricted
    owner_studies: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON list; None: any
    owner_deidentified: bool = False
    secret: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    delivered: int = 0
    attempts: int = 0  # failures in a row
    next_attempt_at: datetime
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = None
    heartbeat_at: datetime | None = None  # when a heartbeat is due (idle active subscriptions with a period)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime  # when the subscription was made (visit windows closing after it are events)


class SubscriptionCount(SQLModel, table=True):
    """The number of a subscription's last event: incremented (row locked) in the transaction that writes events,
    so the numbers are gapless and in commit order. A row of its own, apart from the state row the senders lock and
    update, so writers and senders never wait for each other."""

    __tablename__ = "subscription_count"

    id: str = Field(primary_key=True, max_length=64)
    events_since_start: int = 0


class SubscriptionEvent(SQLModel, table=True):
    """The outbox: one row per (subscription, event), written in the transaction of the write that caused it."""

    __tablename__ = "subscription_event"

    subscription_id: str = Field(primary_key=True, max_length=64)
    event_number: int = Field(primary_key=True)
    occurred_at: datetime
    focus_type: str = Field(max_length=64)
    focus_id: str = Field(max_length=64)
    focus_version: int
    onset: datetime | None = None  # serious adverse events: when it began (the reporting clock)


class SubscriptionWindow(SQLModel, table=True):
    """The visit windows a `visit-window` subscription was told of (each once, whichever replica checked)."""

    __tablename__ = "subscription_window"

    subscription_id: str = Field(primary_key=True, max_length=64)
    subject_id: str = Field(primary_key=True, max_length=64)
    visit: str = Field(primary_key=True, max_length=32)


class SubscriptionGeneration(SQLModel, table=True):
    """One row: incremented by every Subscription write, so each process's cache of active subscriptions knows it
    is stale (service/subscription/service.py)."""

    __tablename__ = "subscription_generation"

    id: int = Field(primary_key=True)
    generation: int = 0
