"""bulk resume: how a source pulls (`pull_mode` auto | search), the upstream Group a sync found for it
(`discovered_group`) and the Bulk Data export under way (`export_state`: status URL and the files imported), so
that an interrupted export is resumed instead of started again

Revision ID: 0016_bulk_resume
Revises: 0015_hl7
Create Date: 2026-11-29 23:00:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0016_bulk_resume'
down_revision = '0015_hl7'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ehr_source', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pull_mode', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False,
                                      server_default='auto'))
        batch_op.add_column(sa.Column('discovered_group', sqlmodel.sql.sqltypes.AutoString(length=255),
                                      nullable=True))
        batch_op.add_column(sa.Column('export_state', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('ehr_source', schema=None) as batch_op:
        batch_op.drop_column('export_state')
        batch_op.drop_column('discovered_group')
        batch_op.drop_column('pull_mode')
