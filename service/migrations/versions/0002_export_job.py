"""export_job: Bulk Data $export jobs shared by every replica

Revision ID: 0002_export_job
Revises: 0001
Create Date: 2026-11-26 10:00:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0002_export_job'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('export_job',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('spec', sa.Text(), nullable=False),
    sa.Column('request', sa.Text(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('finished_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('heartbeat', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('transaction_time', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('worker', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('progress', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('output', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('export_job', schema=None) as batch_op:
        batch_op.create_index('ix_export_job_status_created', ['status', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('export_job', schema=None) as batch_op:
        batch_op.drop_index('ix_export_job_status_created')
    op.drop_table('export_job')
