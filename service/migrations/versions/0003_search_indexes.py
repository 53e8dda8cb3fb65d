"""search indexes: each covers a search filter and the sort (date order, then id)

Revision ID: 0003_search_indexes
Revises: 0002_export_job
Create Date: 2026-11-26 11:00:00
"""
from alembic import op

revision = '0003_search_indexes'
down_revision = '0002_export_job'
branch_labels = None
depends_on = None

INDEXES = [
    ('measurement', 'ix_search_measurement_patient_code_date', ['patient_id', 'code', 'effective', 'id']),
    ('measurement', 'ix_search_measurement_patient_date', ['patient_id', 'effective', 'id']),
    ('measurement', 'ix_search_measurement_study_date', ['study_id', 'effective', 'id']),
    ('measurement', 'ix_search_measurement_study_visit_date', ['study_id', 'visit', 'effective', 'id']),
    ('measurement', 'ix_search_measurement_subject_date', ['subject_id', 'effective', 'id']),
    ('measurement', 'ix_search_measurement_date', ['effective', 'id']),
    ('adverse_event', 'ix_search_adverse_event_patient_date', ['patient_id', 'onset', 'id']),
    ('adverse_event', 'ix_search_adverse_event_date', ['onset', 'id']),
    ('resource_identifier', 'ix_search_identifier_value', ['resource_type', 'value']),
]


def upgrade() -> None:
    for table, name, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for table, name, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
