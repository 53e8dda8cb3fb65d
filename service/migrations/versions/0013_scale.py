"""scale: two cheap changes that keep the scale-out plan (docs/scaling.md) open

- `provenance_target.patient_id`: the patient of the Provenance the row belongs to (`provenance.patient_id`, NULL
  when its targets are of several patients or of none), filled on write and backfilled here. A child table of
  patient data carries its parent's distribution key, so under Citus the rows can be co-located with their
  Provenance (and a `target=` search with `patient=` stays on one shard).
- `resource_identifier.pk` becomes a bigint on PostgreSQL (column and sequence). It is a surrogate key drawn from a
  sequence on every write of a resource with identifiers (an update deletes and re-inserts them), so int4 runs out
  after 2^31 identifier writes: at the 4,000-5,000 Observations/s a Bundle feed reaches on one PostgreSQL here,
  five to six days of continuous ingest. Changing the type rewrites the table under an exclusive lock, which is cheap
  now and would be downtime later; a distributed table under Citus wants a bigint sequence too. SQLite's INTEGER
  PRIMARY KEY is already 64-bit (and must stay INTEGER to be the rowid): nothing changes there.

Revision ID: 0013_scale
Revises: 0012_jobs
Create Date: 2026-11-29 16:30:00
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0013_scale'
down_revision = '0012_jobs'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('provenance_target', schema=None) as batch_op:
        batch_op.add_column(sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
    op.execute("UPDATE provenance_target SET patient_id = "
               "(SELECT p.patient_id FROM provenance p WHERE p.id = provenance_target.id)")
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER TABLE resource_identifier ALTER COLUMN pk TYPE bigint")
        op.execute("ALTER SEQUENCE IF EXISTS resource_identifier_pk_seq AS bigint")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER SEQUENCE IF EXISTS resource_identifier_pk_seq AS integer")
        op.execute("ALTER TABLE resource_identifier ALTER COLUMN pk TYPE integer")
    with op.batch_alter_table('provenance_target', schema=None) as batch_op:
        batch_op.drop_column('patient_id')
