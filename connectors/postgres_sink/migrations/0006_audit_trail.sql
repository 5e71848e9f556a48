-- Part 11 audit trail (21 CFR 11.10(e), 11.50, 11.70; EU GMP Annex 11 §9): one row per regulated
-- record the sink writes, append-only and hash-chained. Written by qmsflow.audit inside the sink's
-- own transaction, under a transaction-level advisory lock, so the chain has one order and no
-- gaps. row_hash = sha256(prev_hash || canonical JSON of every other column); the canonical form
-- is defined once, in qmsflow.audit.canonical_json, and `qmsflow audit verify` recomputes it.
-- The trigger refuses UPDATE, DELETE and TRUNCATE for every role, the owner included; a superuser
-- (or the owner) can still disable it, which is what verification is for.

CREATE SCHEMA IF NOT EXISTS audit;
COMMENT ON SCHEMA audit IS 'Append-only, hash-chained Part 11 audit trail; never pruned.';

CREATE TABLE audit.record_change (
    seq               bigint      PRIMARY KEY CHECK (seq >= 1),  -- gapless chain position
    record_type       text        NOT NULL,             -- the qms table, e.g. quality_event
    record_id         text        NOT NULL,             -- its primary key, as text
    source_record_id  text,                             -- the source's number, e.g. NCR-1042
    operation         text        NOT NULL CHECK (operation IN ('create', 'modify', 'delete')),
    changed_by        text        NOT NULL,             -- user id, signer, or qmsflow:<stage>
    changed_at        timestamptz NOT NULL,             -- when the change was made (event time)
    reason            text,                             -- the reason for change, as recorded
    changes           jsonb       NOT NULL,             -- [{field, old_value, new_value}, …]
    signer_id         text,                             -- e-signature (11.50), when signed
    printed_name      text,
    signed_at         timestamptz,
    signature_meaning text,
    kafka_topic       text        NOT NULL,             -- the sinked record
    kafka_partition   integer     NOT NULL,
    kafka_offset      bigint      NOT NULL,
    source_topic      text,                             -- the ingest record it came from
    source_partition  integer,
    source_offset     bigint,
    schema_id         integer,
    trace_id          text,
    logged_at         timestamptz NOT NULL,             -- when the sink wrote this row
    prev_hash         text        NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    row_hash          text        NOT NULL CHECK (row_hash ~ '^[0-9a-f]{64}$'),
    UNIQUE (record_type, record_id)
);
CREATE INDEX record_change_lineage ON audit.record_change (kafka_topic, kafka_partition, kafka_offset);
COMMENT ON TABLE audit.record_change IS
    'Part 11 audit trail of regulated records written by the sink: who, what (old/new values), '
    'when, why, e-signature manifestation and lineage; append-only, hash-chained by seq.';

CREATE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER record_change_append_only
    BEFORE UPDATE OR DELETE ON audit.record_change
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER record_change_no_truncate
    BEFORE TRUNCATE ON audit.record_change
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
