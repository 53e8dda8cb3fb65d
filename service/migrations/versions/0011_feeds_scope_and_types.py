"""feeds: a study's own out-of-scope policy (study.out_of_scope)

Revision ID: 0011_feeds
Revises: 0010_audit_append
Create Date: 2026-11-29 14:20:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0011_feeds'
down_revision = '0010_audit_append'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.add_column(sa.Column('out_of_scope', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_column('out_of_scope')
