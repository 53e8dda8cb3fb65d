"""subscriptions: Subscription as a stored type (subscription), its delivery state, its event count, the outbox of
its events, the generation row of the active-subscription caches, the visit windows told of

Revision ID: 0017_subscriptions
Revises: 0016_bulk_resume
Create Date: 2026-11-29 22:50:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0017_subscriptions'
down_revision = '0016_bulk_resume'
branch_labels = None
depends_on = None


def _string(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table('subscription',
                    sa.Column('id', _string(64), nullable=False),
                    sa.Column('status', _string(16), nullable=False),
                    sa.Column('criteria', sa.Text(), nullable=False),
                    sa.Column('topic', _string(255), nullable=True),
                    sa.Column('resource_type', _string(64), nullable=False),
                    sa.Column('study_id', _string(64), nullable=True),
                    sa.Column('endpoint', sa.Text(), nullable=False),
                    sa.Column('content', _string(16), nullable=False),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('subscription', schema=None) as batch_op:
        batch_op.create_index('ix_subscription_status', ['status', 'id'], unique=False)
    op.create_table('subscription_state',
                    sa.Column('id', _string(64), nullable=False),
                    sa.Column('owner', _string(255), nullable=False),
                    sa.Column('owner_scopes', sa.Text(), nullable=True),
                    sa.Column('owner_studies', sa.Text(), nullable=True),
                    sa.Column('owner_deidentified', sa.Boolean(), nullable=False),
                    sa.Column('secret', sa.Text(), nullable=True),
                    sa.Column('delivered', sa.Integer(), nullable=False),
                    sa.Column('attempts', sa.Integer(), nullable=False),
                    sa.Column('next_attempt_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
                    sa.Column('lease_owner', _string(128), nullable=True),
                    sa.Column('lease_until', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
                    sa.Column('heartbeat_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
                    sa.Column('last_error', sa.Text(), nullable=True),
                    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
                    sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table('subscription_state', schema=None) as batch_op:
        batch_op.create_index('ix_subscription_state_due', ['next_attempt_at', 'id'], unique=False)
    op.create_table('subscription_count',
                    sa.Column('id', _string(64), nullable=False),
                    sa.Column('events_since_start', sa.Integer(), nullable=False),
                    sa.PrimaryKeyConstraint('id'))
    op.create_table('subscription_event',
                    sa.Column('subscription_id', _string(64), nullable=False),
                    sa.Column('event_number', sa.Integer(), nullable=False),
                    sa.Column('occurred_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
                    sa.Column('focus_type', _string(64), nullable=False),
                    sa.Column('focus_id', _string(64), nullable=False),
                    sa.Column('focus_version', sa.Integer(), nullable=False),
                    sa.Column('onset', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
                    sa.PrimaryKeyConstraint('subscription_id', 'event_number'))
    op.create_table('subscription_window',
                    sa.Column('subscription_id', _string(64), nullable=False),
                    sa.Column('subject_id', _string(64), nullable=False),
                    sa.Column('visit', _string(32), nullable=False),
                    sa.PrimaryKeyConstraint('subscription_id', 'subject_id', 'visit'))
    op.create_table('subscription_generation',
                    sa.Column('id', sa.Integer(), nullable=False),
                    sa.Column('generation', sa.Integer(), nullable=False),
                    sa.PrimaryKeyConstraint('id'))
    op.execute("INSERT INTO subscription_generation (id, generation) VALUES (1, 0)")


def downgrade() -> None:
    for table in ('subscription_generation', 'subscription_window', 'subscription_event', 'subscription_count',
                  'subscription_state', 'subscription'):
        op.drop_table(table)
