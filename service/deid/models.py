"""The de-identification secret, when the settings give none: generated once, kept in the database, so that every
replica and every restart gives a patient the same pseudonym and the same date offset."""

from datetime import datetime

from sqlmodel import Field, SQLModel


class DeidSecretRecord(SQLModel, table=True):
    """One row (`name = "default"`): the hex of 32 random bytes. Whoever reads this table can link pseudonyms to
    patients: it is as sensitive as the patients' data, which lives beside it."""

    __tablename__ = "deid_secret"

    name: str = Field(primary_key=True, max_length=32)
    secret: str = Field(max_length=128)
    created_at: datetime
