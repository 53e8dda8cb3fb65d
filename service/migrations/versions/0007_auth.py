"""auth: the built-in SMART Backend Services authorisation server's clients, signing keys and seen assertion ids

Revision ID: 0007_auth
Revises: 0006_drop_unused_indexes
Create Date: 2026-11-29 11:15:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0007_auth'
down_revision = '0006_drop_unused_indexes'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('auth_client',
    sa.Column('client_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('jwks', sa.Text(), nullable=True),
    sa.Column('jwks_url', sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=True),
    sa.Column('studies', sa.Text(), nullable=False),
    sa.Column('deidentified', sa.Boolean(), nullable=False),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('client_id')
    )
    op.create_table('auth_signing_key',
    sa.Column('kid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('private_jwk', sa.Text(), nullable=False),
    sa.Column('algorithm', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('current', sa.Boolean(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('retired_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('kid'),
    sa.UniqueConstraint('current', name='uq_auth_signing_key_current')
    )
    op.create_table('auth_seen_jti',
    sa.Column('client_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('jti', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('client_id', 'jti')
    )
    with op.batch_alter_table('auth_seen_jti', schema=None) as batch_op:
        batch_op.create_index('ix_auth_seen_jti_expires', ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('auth_seen_jti', schema=None) as batch_op:
        batch_op.drop_index('ix_auth_seen_jti_expires')
    op.drop_table('auth_seen_jti')
    op.drop_table('auth_signing_key')
    op.drop_table('auth_client')
