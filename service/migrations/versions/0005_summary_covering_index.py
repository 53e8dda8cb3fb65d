"""summary covering index: the study summary reads every counted result of a study in subject, measure and
visit order from this index alone (index-only scan, no sort, no heap visits)

Revision ID: 0005_summary_covering_index
Revises: 0004_unbounded_text
Create Date: 2026-11-26 22:00:00
"""
from alembic import op

revision = '0005_summary_covering_index'
down_revision = '0004_unbounded_text'
branch_labels = None
depends_on = None

COLUMNS = ['study_id', 'subject_id', 'measure', 'visit', 'status', 'study_day', 'effective', 'value']


def upgrade() -> None:
    op.create_index('ix_measurement_summary', 'measurement', COLUMNS, unique=False)


def downgrade() -> None:
    op.drop_index('ix_measurement_summary', table_name='measurement')
