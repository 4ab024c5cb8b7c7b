"""Audit: ``salus_audit_append``, one round trip per audit append on PostgreSQL.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-23

The function locks the chain head, gives the events their ``seq``, computes
``hash = SHA-256(prev_hash ‖ canonical JSON)`` exactly as
:func:`salus.audit.events.event_hash` does (the client sends each event's
canonical JSON up to ``recorded_at`` and the ``request_id`` part; the
function adds ``recorded_at`` and ``seq``), inserts the events and moves the
head: what :meth:`salus.audit.chain.AuditLog.append` did in three statements
(five round trips with BEGIN and COMMIT). Called alone in autocommit mode it
is one statement, one transaction and one WAL flush (ADR 21). SQLite needs
nothing: the chain is appended in process there.
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

CREATE = """
CREATE OR REPLACE FUNCTION salus_audit_append(
    p_recorded_at timestamptz, p_recorded_text text, p_prefix text[], p_mid text[],
    p_category text[], p_action text[], p_outcome smallint[], p_principal_kind text[],
    p_principal_id text[], p_org_id text[], p_client_id text[], p_address text[],
    p_purpose text[], p_patient_key text[], p_entity text[], p_description text[],
    p_request_id text[], p_flags text[], p_detail text[]
) RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $fn$
DECLARE
    v_seq bigint;
    v_hash text;
    v_seqs bigint[] := '{}';
    v_prev text[] := '{}';
    v_hashes text[] := '{}';
BEGIN
    SELECT seq, hash INTO v_seq, v_hash FROM audit_head WHERE id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, repeat('0', 64))
            ON CONFLICT (id) DO NOTHING;
        IF FOUND AND EXISTS (SELECT 1 FROM audit_events) THEN
            RAISE EXCEPTION 'salus: the audit chain head is missing but events exist'
                USING ERRCODE = 'SA001';
        END IF;
        SELECT seq, hash INTO v_seq, v_hash FROM audit_head WHERE id = 1 FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'salus: the audit chain head could not be created'
                USING ERRCODE = 'SA001';
        END IF;
    END IF;
    FOR i IN 1 .. coalesce(cardinality(p_prefix), 0) LOOP
        v_seq := v_seq + 1;
        v_seqs := v_seqs || v_seq;
        v_prev := v_prev || v_hash;
        v_hash := encode(sha256(convert_to(
            v_hash || p_prefix[i] || ',"recorded_at":"' || p_recorded_text || '"'
                || p_mid[i] || v_seq::text || '}', 'UTF8')), 'hex');
        v_hashes := v_hashes || v_hash;
    END LOOP;
    INSERT INTO audit_events (seq, recorded_at, category, action, outcome, principal_kind,
        principal_id, org_id,
        client_id, address, purpose, patient_key, entity, description, request_id, flags,
        detail, prev_hash, hash)
    SELECT t.s, p_recorded_at, category, action, outcome, principal_kind,
        principal_id, org_id,
        client_id, address, purpose, patient_key, entity, description, request_id, flags,
        t.d::json, t.ph, t.h
    FROM unnest(v_seqs, p_category, p_action, p_outcome, p_principal_kind, p_principal_id,
                p_org_id, p_client_id, p_address, p_purpose, p_patient_key, p_entity,
                p_description, p_request_id, p_flags, p_detail, v_prev, v_hashes)
        AS t(s, category, action, outcome, principal_kind,
        principal_id, org_id,
        client_id, address, purpose, patient_key, entity, description, request_id, flags,
            d, ph, h);
    UPDATE audit_head SET seq = v_seq, hash = v_hash WHERE id = 1;
    RETURN v_seq;
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS salus_audit_append(timestamptz, text, text[], text[],"
            " text[], text[], smallint[], text[], text[], text[], text[], text[], text[],"
            " text[], text[], text[], text[], text[], text[])"
        )
