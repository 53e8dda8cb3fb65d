"""catalogue: PlanDefinition and ObservationDefinition as stored types (plan_definition,
plan_definition_measure, observation_definition): a study's catalogue as FHIR resources

Revision ID: 0018_catalogue
Revises: 0017_subscriptions
Create Date: 2026-11-29 22:50:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0018_catalogue'
down_revision = '0017_subscriptions'
branch_labels = None
depends_on = None


def _string(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table('plan_definition',
                    sa.Column('id', _string(64), nullable=False),
                    sa.Column('url', _string(1024), nullable=True),
                    sa.Column('version', _string(255), nullable=True),
                    sa.Column('name', _string(255), nullable=True),
                    sa.Column('title', sa.Text(), nullable=True),
                    sa.Column('status', _string(32), nullable=False),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('plan_definition', schema=None) as batch_op:
        batch_op.create_index('ix_plan_definition_url', ['url', 'id'], unique=False)
    op.create_table('plan_definition_measure',
                    sa.Column('pk', sa.Integer(), nullable=False),
                    sa.Column('id', _string(64), nullable=False),
                    sa.Column('definition_id', _string(64), nullable=False),
                    sa.PrimaryKeyConstraint('pk'))
    with op.batch_alter_table('plan_definition_measure', schema=None) as batch_op:
        batch_op.create_index('ix_plan_definition_measure_id', ['id'], unique=False)
        batch_op.create_index('ix_plan_definition_measure_definition', ['definition_id'], unique=False)
    op.create_table('observation_definition',
                    sa.Column('id', _string(64), nullable=False),
                    sa.Column('key', _string(64), nullable=False),
                    sa.Column('code_system', sa.Text(), nullable=False),
                    sa.Column('code', _string(255), nullable=False),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('observation_definition', schema=None) as batch_op:
        batch_op.create_index('ix_observation_definition_code', ['code', 'code_system'], unique=False)


def downgrade() -> None:
    for table in ('observation_definition', 'plan_definition_measure', 'plan_definition'):
        op.drop_table(table)
