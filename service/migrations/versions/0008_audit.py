"""audit_event, audit_entity: the hash-chained audit trail (AuditEvent, read-only) and what each event names

`audit_event` is AuditEvent's typed table and the chain: `seq` is assigned by the server (1, 2, 3, … without gaps),
never by the database. `audit_entity` holds one row per resource an event names, indexed by (type, id, recorded):
"who saw Patient/x last month" is one range of that index.

Revision ID: 0008_audit
Revises: 0007_auth
Create Date: 2026-11-29 11:10:10
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0008_audit'
down_revision = '0007_auth'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_event',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('recorded', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('client_system', sa.Text(), nullable=True),
    sa.Column('client', sa.Text(), nullable=False),
    sa.Column('subtype', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=1), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
    sa.Column('prev_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('id', name='uq_audit_event_id')
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index('ix_audit_event_client', ['client', 'recorded'], unique=False)
        batch_op.create_index('ix_audit_event_recorded', ['recorded'], unique=False)

    op.create_table('audit_entity',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('recorded', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('seq', 'resource_type', 'resource_id')
    )
    with op.batch_alter_table('audit_entity', schema=None) as batch_op:
        batch_op.create_index('ix_audit_entity_what', ['resource_type', 'resource_id', 'recorded'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audit_entity', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_entity_what')
    op.drop_table('audit_entity')
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_event_recorded')
        batch_op.drop_index('ix_audit_event_client')
    op.drop_table('audit_event')
    op.execute("DELETE FROM resource_version WHERE resource_type = 'AuditEvent'")
    op.execute("DELETE FROM resource WHERE resource_type = 'AuditEvent'")
