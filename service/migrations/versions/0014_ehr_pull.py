"""ehr pull: the upstream FHIR servers this service pulls from (`ehr_source`), the per-(source, patient, type)
watermarks of their searches (`ehr_watermark`) and the upstream resources the core refused (`ehr_sync_issue`)

Revision ID: 0014_ehr_pull
Revises: 0013_scale
Create Date: 2026-11-29 19:10:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0014_ehr_pull'
down_revision = '0013_scale'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'ehr_source',
        sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('base_url', sa.Text(), nullable=False),
        sa.Column('auth', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('token_url', sa.Text(), nullable=True),
        sa.Column('client_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column('key_file', sa.Text(), nullable=True),
        sa.Column('bearer', sa.Text(), nullable=True),
        sa.Column('scope', sa.Text(), nullable=True),
        sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('transaction_time', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column('last_started', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column('last_finished', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column('last_status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column('last_counts', sa.Text(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('holder', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column('lease_until', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint('name'))
    op.create_table(
        'ehr_watermark',
        sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column('upstream_patient', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column('last_updated', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('source', 'patient_id', 'resource_type'))
    op.create_table(
        'ehr_sync_issue',
        sa.Column('pk', sa.Integer(), nullable=False),
        sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('resource', sa.Text(), nullable=False),
        sa.Column('outcome', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('pk'))
    with op.batch_alter_table('ehr_sync_issue', schema=None) as batch_op:
        batch_op.create_index('ix_ehr_sync_issue_source', ['source', 'pk'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ehr_sync_issue', schema=None) as batch_op:
        batch_op.drop_index('ix_ehr_sync_issue_source')
    op.drop_table('ehr_sync_issue')
    op.drop_table('ehr_watermark')
    op.drop_table('ehr_source')
