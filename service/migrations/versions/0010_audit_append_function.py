"""PostgreSQL: trial_fhir_audit_append(events jsonb), the chain's append as one statement

Appending a group of AuditEvents took the chain lock, read the head, and inserted four tables' rows: four to nine
round trips and, in the service, most of the CPU an audited search costs (the rows' parameters adapted one by one).
The function does the same in the database from one JSON array: the lock (the same advisory key as
service/audit/chain.py), the head, each event's link hash — sha256(prev_hash ":" seq ":" digest), hex, exactly as
`chain.link_hash` computes it, so `trial-fhir audit verify` checks both alike — and the inserts. The service builds
each event's JSON and digest as before; what changes is only who does the last step. SQLite keeps the Python
append (its write lock already orders the chain, and it has no such functions).

Revision ID: 0010_audit_append
Revises: 0009_deid
Create Date: 2026-11-29 12:15:00
"""
from alembic import op

revision = '0010_audit_append'
down_revision = '0009_deid'
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION trial_fhir_audit_append(events jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
    head_hash text;
    e jsonb;
    link text;
    recorded timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(1635083380);  -- 0x61756474 ("audt"): service/audit/chain.py LOCK_KEY
    SELECT seq, hash INTO head_seq, head_hash FROM audit_event ORDER BY seq DESC LIMIT 1;
    IF head_seq IS NULL THEN
        head_seq := 0;
        head_hash := repeat('0', 64);
    END IF;
    FOR e IN SELECT value FROM jsonb_array_elements(events) LOOP
        head_seq := head_seq + 1;
        recorded := (e->>'recorded')::timestamptz;
        link := encode(sha256(convert_to(head_hash || ':' || head_seq::text || ':' || (e->>'digest'), 'UTF8')),
                       'hex');
        INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content)
            VALUES ('AuditEvent', e->>'id', 1, recorded, false, e->>'content');
        INSERT INTO resource_version (resource_type, id, version_id, last_updated, method, content)
            VALUES ('AuditEvent', e->>'id', 1, recorded, 'POST', e->>'content');
        INSERT INTO audit_event (seq, id, recorded, client_system, client, subtype, action, outcome, prev_hash, hash)
            VALUES (head_seq, e->>'id', recorded, e->>'client_system', e->>'client', e->>'subtype', e->>'action',
                    e->>'outcome', head_hash, link);
        INSERT INTO audit_entity (seq, resource_type, resource_id, recorded)
            SELECT head_seq, w->>0, w->>1, recorded FROM jsonb_array_elements(e->'entities') AS w;
        head_hash := link;
    END LOOP;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS trial_fhir_audit_append(jsonb)")
