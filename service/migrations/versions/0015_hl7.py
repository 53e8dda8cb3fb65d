"""hl7: ConceptMap as a stored type (concept_map, concept_map_element) and the HL7 v2 messages stored
(hl7_message: sender + MSH-10, for resends)

Revision ID: 0015_hl7
Revises: 0014_ehr_pull
Create Date: 2026-11-29 19:10:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0015_hl7'
down_revision = '0014_ehr_pull'
branch_labels = None
depends_on = None


def _string(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table('concept_map',
                    sa.Column('id', _string(64), nullable=False),
                    sa.Column('url', _string(1024), nullable=True),
                    sa.Column('version', _string(255), nullable=True),
                    sa.Column('name', _string(255), nullable=True),
                    sa.Column('status', _string(32), nullable=False),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('concept_map', schema=None) as batch_op:
        batch_op.create_index('ix_concept_map_url', ['url', 'id'], unique=False)
    op.create_table('concept_map_element',
                    sa.Column('pk', sa.Integer(), nullable=False),
                    sa.Column('id', _string(64), nullable=False),
                    sa.Column('source_system', sa.Text(), nullable=False),
                    sa.Column('source_code', _string(255), nullable=False),
                    sa.Column('target_system', sa.Text(), nullable=False),
                    sa.Column('target_code', _string(255), nullable=False),
                    sa.Column('target_display', sa.Text(), nullable=True),
                    sa.Column('equivalence', _string(32), nullable=False),
                    sa.PrimaryKeyConstraint('pk'))
    with op.batch_alter_table('concept_map_element', schema=None) as batch_op:
        batch_op.create_index('ix_concept_map_element_id', ['id'], unique=False)
        batch_op.create_index('ix_concept_map_element_source', ['source_system', 'source_code'], unique=False)
    op.create_table('hl7_message',
                    sa.Column('sender', _string(255), nullable=False),
                    sa.Column('control_id', _string(255), nullable=False),
                    sa.Column('digest', _string(64), nullable=False),
                    sa.Column('patient_id', _string(64), nullable=True),
                    sa.Column('received_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
                    sa.Column('ack', sa.Text(), nullable=False),
                    sa.PrimaryKeyConstraint('sender', 'control_id'))


def downgrade() -> None:
    for table in ('hl7_message', 'concept_map_element', 'concept_map'):
        op.drop_table(table)
