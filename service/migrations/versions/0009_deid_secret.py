"""de-identification: the generated secret (deid_secret), and export jobs that belong to their client

export_job gains the client that started the job, whether that client had a token (`restricted`: the manifest's
requiresAccessToken), whether the files are de-identified, and the studies the client may see (JSON). Jobs queued
before this revision have no client: only an unrestricted caller sees them.

Revision ID: 0009_deid
Revises: 0008_audit
Create Date: 2026-11-29 11:20:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0009_deid'
down_revision = '0008_audit'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('deid_secret',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('secret', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('export_job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('client_id', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch_op.add_column(sa.Column('restricted', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('deidentified', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('studies', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('export_job', schema=None) as batch_op:
        batch_op.drop_column('studies')
        batch_op.drop_column('deidentified')
        batch_op.drop_column('restricted')
        batch_op.drop_column('client_id')
    op.drop_table('deid_secret')
