"""jobs: one durable job table for background work (leases, heartbeats, attempts); the export jobs that were queued
or running become queued jobs of kind `export` (a running one starts over: its worker's process ran the old code)

Revision ID: 0012_jobs
Revises: 0011_feeds
Create Date: 2026-11-29 16:40:00
"""
import json
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0012_jobs'
down_revision = '0011_feeds'
branch_labels = None
depends_on = None


def upgrade() -> None:
    job = op.create_table(
        'job',
        sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('max_attempts', sa.Integer(), nullable=False),
        sa.Column('not_before', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('lease_until', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column('heartbeat', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column('worker', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column('finished_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('result', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.create_index('ix_job_state_not_before', ['state', 'not_before'], unique=False)
        batch_op.create_index('ix_job_state_lease', ['state', 'lease_until'], unique=False)

    # the exports waiting or in progress: each gets its job (same id), queued; a running one starts over
    export_job = sa.table('export_job', sa.column('id', sa.String), sa.column('status', sa.String),
                          sa.column('created_at', sqlmodel.sql.sqltypes.UTCDateTime()),
                          sa.column('progress', sa.String), sa.column('worker', sa.String),
                          sa.column('heartbeat', sqlmodel.sql.sqltypes.UTCDateTime()))
    conn = op.get_bind()
    now = datetime.now(UTC)
    waiting = conn.execute(sa.select(export_job.c.id, export_job.c.created_at)
                           .where(export_job.c.status.in_(('queued', 'running')))).all()
    if waiting:
        op.bulk_insert(job, [{'id': row.id, 'kind': 'export', 'state': 'queued',
                              'payload': json.dumps({'export_id': row.id}), 'attempts': 0, 'max_attempts': 3,
                              'not_before': now, 'created_at': row.created_at} for row in waiting])
        conn.execute(sa.update(export_job).where(export_job.c.status == 'running').values(
            status='queued', worker=None, heartbeat=None, progress='queued (the service was upgraded; it runs again)'))


def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('ix_job_state_lease')
        batch_op.drop_index('ix_job_state_not_before')
    op.drop_table('job')
