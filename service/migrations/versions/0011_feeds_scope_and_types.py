"""feeds: a study's own out-of-scope policy (study.out_of_scope), and the typed rows of the clinical types the trial
now keeps: encounter, medication_administration, procedure, provenance (+ provenance_target)

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


def _string(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _subject_columns() -> list[sa.Column]:
    return [sa.Column('id', _string(64), nullable=False),
            sa.Column('patient_id', _string(64), nullable=False),
            sa.Column('study_id', _string(64), nullable=False),
            sa.Column('subject_id', _string(64), nullable=False),
            sa.Column('status', _string(32), nullable=False)]


def upgrade() -> None:
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.add_column(sa.Column('out_of_scope', _string(16), nullable=True))

    op.create_table('encounter', *_subject_columns(),
                    sa.Column('class_code', _string(64), nullable=True),
                    sa.Column('period_start', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
                    sa.Column('period_end', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
                    sa.Column('start_date', sa.Date(), nullable=True),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('encounter', schema=None) as batch_op:
        batch_op.create_index('ix_encounter_patient_start', ['patient_id', 'period_start', 'id'], unique=False)
        batch_op.create_index('ix_encounter_study_start', ['study_id', 'period_start', 'id'], unique=False)

    op.create_table('medication_administration', *_subject_columns(),
                    sa.Column('code_system', sa.Text(), nullable=True),
                    sa.Column('code', _string(255), nullable=True),
                    sa.Column('effective', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
                    sa.Column('local_date', sa.Date(), nullable=True),
                    sa.Column('dose_value', sa.Float(), nullable=True),
                    sa.Column('dose_unit', _string(64), nullable=True),
                    sa.Column('route_system', sa.Text(), nullable=True),
                    sa.Column('route_code', _string(64), nullable=True),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('medication_administration', schema=None) as batch_op:
        batch_op.create_index('ix_administration_patient_date', ['patient_id', 'effective', 'id'], unique=False)
        batch_op.create_index('ix_administration_study_date', ['study_id', 'effective', 'id'], unique=False)

    op.create_table('procedure', *_subject_columns(),
                    sa.Column('code_system', sa.Text(), nullable=True),
                    sa.Column('code', _string(255), nullable=True),
                    sa.Column('performed', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
                    sa.Column('local_date', sa.Date(), nullable=True),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('procedure', schema=None) as batch_op:
        batch_op.create_index('ix_procedure_patient_date', ['patient_id', 'performed', 'id'], unique=False)
        batch_op.create_index('ix_procedure_study_date', ['study_id', 'performed', 'id'], unique=False)

    op.create_table('provenance',
                    sa.Column('id', _string(64), nullable=False),
                    sa.Column('study_id', _string(64), nullable=False),
                    sa.Column('patient_id', _string(64), nullable=True),
                    sa.Column('recorded', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
                    sa.Column('agent', sa.Text(), nullable=True),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('provenance', schema=None) as batch_op:
        batch_op.create_index('ix_provenance_study_recorded', ['study_id', 'recorded', 'id'], unique=False)
        batch_op.create_index('ix_provenance_patient_recorded', ['patient_id', 'recorded', 'id'], unique=False)

    op.create_table('provenance_target',
                    sa.Column('id', _string(64), nullable=False),
                    sa.Column('target_type', _string(40), nullable=False),
                    sa.Column('target_id', _string(64), nullable=False),
                    sa.PrimaryKeyConstraint('id', 'target_type', 'target_id'))
    with op.batch_alter_table('provenance_target', schema=None) as batch_op:
        batch_op.create_index('ix_provenance_target_what', ['target_type', 'target_id'], unique=False)


def downgrade() -> None:
    for table in ('provenance_target', 'provenance', 'procedure', 'medication_administration', 'encounter'):
        op.drop_table(table)
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_column('out_of_scope')
