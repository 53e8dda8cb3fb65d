"""free-text columns become unbounded TEXT (a long name, title or code was a 500 on PostgreSQL);
drop ix_measurement_patient_code, a prefix of ix_search_measurement_patient_code_date

Revision ID: 0004_unbounded_text
Revises: 0003_search_indexes
Create Date: 2026-11-25 21:45:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_unbounded_text"
down_revision = "0003_search_indexes"
branch_labels = None
depends_on = None

COLUMNS = [
    ("adverse_event", "event_system", 255), ("adverse_event", "event_code", 64), ("adverse_event", "event_text", 1000),
    ("measurement", "category", 64), ("resource_identifier", "system", 255), ("resource_identifier", "value", 255),
    ("patient", "family", 255), ("patient", "given", 255), ("study", "title", 1000), ("study_arm", "description", 1000),
]


def upgrade() -> None:
    # SQLite ignores VARCHAR lengths: only PostgreSQL needs the change
    if op.get_bind().dialect.name == "postgresql":
        for table, column, length in COLUMNS:
            op.alter_column(table, column, type_=sa.Text(), existing_type=sa.String(length))
    op.drop_index("ix_measurement_patient_code", table_name="measurement")


def downgrade() -> None:
    op.create_index("ix_measurement_patient_code", "measurement", ["patient_id", "code", "effective"])
    if op.get_bind().dialect.name == "postgresql":
        for table, column, length in COLUMNS:
            op.alter_column(table, column, type_=sa.String(length), existing_type=sa.Text())
