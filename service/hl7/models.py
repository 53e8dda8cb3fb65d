"""The HL7 v2 messages whose results were stored: a resend (same sender, same MSH-10) is answered with the ACK it
got, without writing again. Written in the transaction of the results themselves; the primary key refuses the
second of two concurrent copies."""

from datetime import datetime

from sqlalchemy import Text
from sqlmodel import Field, SQLModel


class Hl7MessageRecord(SQLModel, table=True):
    __tablename__ = "hl7_message"

    sender: str = Field(primary_key=True, max_length=255)  # MSH-4 sending facility (namespace id)
    control_id: str = Field(primary_key=True, max_length=255)  # MSH-10
    digest: str = Field(max_length=64)  # sha256 of the message as received
    patient_id: str | None = Field(default=None, max_length=64)  # whose results: a resend is that patient's to see
    received_at: datetime
    ack: str = Field(sa_type=Text)  # the ACK it was answered with (ER7)
