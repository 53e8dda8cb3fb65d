"""What the built-in authorisation server keeps: the clients registered with it, its own signing keys and the
client assertions (`jti`) it has already accepted, so none is accepted twice."""

from datetime import datetime

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class ClientRecord(SQLModel, table=True):
    """A SMART Backend Services client: what it may ask for (`scope`, as registered), the keys its assertions are
    signed with (a JWKS, or the URL it publishes one at), the studies it may see (none listed: every study) and
    whether it sees de-identified data. A disabled client gets no token, and its tokens stop working."""

    __tablename__ = "auth_client"

    client_id: str = Field(primary_key=True, max_length=64)  # url-safe random, made at registration
    name: str = Field(max_length=255)
    scope: str = Field(sa_column=Column(Text, nullable=False))
    jwks: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON {"keys": [...]}, public
    jwks_url: str | None = Field(default=None, max_length=2048)
    studies: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of ResearchStudy ids; [] = every study
    deidentified: bool = False
    disabled: bool = False
    created_at: datetime


class SigningKeyRecord(SQLModel, table=True):
    """One of this server's access-token signing keys. `current` is true for the one key tokens are signed with and
    NULL for retired ones: the unique constraint lets only one row be current, so workers racing to create the first
    key (or to rotate) can't both win. A retired key is still published until the tokens it signed have expired."""

    __tablename__ = "auth_signing_key"
    __table_args__ = (UniqueConstraint("current", name="uq_auth_signing_key_current"),)

    kid: str = Field(primary_key=True, max_length=64)  # the RFC 7638 thumbprint of the key
    private_jwk: str = Field(sa_column=Column(Text, nullable=False))
    algorithm: str = Field(max_length=16)
    current: bool | None = None
    created_at: datetime
    retired_at: datetime | None = None


class SeenAssertionRecord(SQLModel, table=True):
    """A client assertion's `jti`, kept until the assertion expires: SMART says a `jti` seen for that client within
    the assertion's lifetime SHALL be refused (the primary key makes a replay fail to insert)."""

    __tablename__ = "auth_seen_jti"
    __table_args__ = (Index("ix_auth_seen_jti_expires", "expires_at"),)

    client_id: str = Field(primary_key=True, max_length=64)
    jti: str = Field(primary_key=True, max_length=255)
    expires_at: datetime
