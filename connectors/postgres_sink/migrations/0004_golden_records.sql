-- Master data (DESIGN §3 stage 7): the golden records the master-data agent publishes on the
-- compacted md.<entity>.v1 topics, their SCD-2 history (md.history.v1) and the conflicts between
-- sources it reported (md.conflicts.v1). Lineage columns as in every sink table. The kind CHECK
-- lists mirror qmsflow.quality.golden_record.EntityKind (rows.py checks them first).

-- One row per golden record, the newest view: the latest on its compacted md topic (a key
-- lives in one partition, so the highest kafka_offset; producers other than the master-data
-- agent, e.g. a demo loader, send no golden version). A redelivered or older view writes
-- nothing. Recreating an md topic restarts its offsets: delete its rows here with it. A Kafka
-- tombstone on the md topic (every source deleted the entity) marks the row deleted rather
-- than removing it: `deleted` says it is gone, its values stay in qms.golden_record_history.
CREATE TABLE qms.golden_record (
    kind            text        NOT NULL CHECK (kind IN ('supplier', 'part', 'lot', 'equipment',
                                                         'employee', 'customer_spec')),
    entity_id       text        NOT NULL,
    fields          jsonb,                              -- the md.* datum; NULL once deleted
    version         bigint      CHECK (version >= 1),   -- golden version (header); NULL if not sent
    source_system   text,                               -- newest live source; NULL once deleted
    updated_at      timestamptz,                        -- its source commit time
    deleted         boolean     NOT NULL DEFAULT false,
    kafka_topic     text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    loaded_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, entity_id)
);
CREATE INDEX golden_record_live ON qms.golden_record (kind, updated_at) WHERE NOT deleted;
COMMENT ON TABLE qms.golden_record IS
    'Golden master records from md.<entity>.v1, one row per kind and entity: the latest view '
    '(highest offset); version is the agent''s golden-version header. A tombstone sets deleted '
    'and clears fields; the values it had stay in qms.golden_record_history.';

-- SCD-2 history. The agent emits, per new version, a row opening it (valid_to NULL) and a row
-- closing the previous one (same version, valid_to set); a delete emits only the closing row.
-- Choice: the closing row UPSERTS its version's row (valid_to goes from NULL to a time, once,
-- never back), rather than an insert-only table with valid_to derived from the next version's
-- valid_from in a view: a deleted entity has no next version, so the view would show its last
-- version as current forever; the upsert keeps the delete's time.
CREATE TABLE qms.golden_record_history (
    kind            text        NOT NULL CHECK (kind IN ('supplier', 'part', 'lot', 'equipment',
                                                         'employee', 'customer_spec')),
    entity_id       text        NOT NULL,
    version         bigint      NOT NULL CHECK (version >= 1),
    valid_from      timestamptz NOT NULL,
    valid_to        timestamptz CHECK (valid_to IS NULL OR valid_to >= valid_from),
    source          text        NOT NULL,
    lsn             bigint,                             -- NULL for incremental-snapshot rows
    fields          jsonb       NOT NULL,
    cdc_topic       text        NOT NULL,               -- the change that opened or closed it
    cdc_partition   integer     NOT NULL,
    cdc_offset      bigint      NOT NULL,
    kafka_topic     text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    loaded_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, entity_id, version)
);
CREATE INDEX golden_record_history_current ON qms.golden_record_history (kind, entity_id)
    WHERE valid_to IS NULL;
COMMENT ON TABLE qms.golden_record_history IS
    'SCD-2 history of golden records, one row per version; valid_to NULL while current. The '
    'closing row of a version upserts valid_to once; nothing else is ever updated.';

CREATE TABLE qms.md_conflict (
    conflict_id     uuid PRIMARY KEY,                  -- uuid5 of kind, entity, field, values
    kind            text        NOT NULL CHECK (kind IN ('supplier', 'part', 'lot', 'equipment',
                                                         'employee', 'customer_spec')),
    entity_id       text        NOT NULL,
    field           text        NOT NULL,
    winning_value   text        NOT NULL,
    winning_source  text        NOT NULL,
    winning_ts      timestamptz NOT NULL,
    losing_value    text        NOT NULL,
    losing_source   text        NOT NULL,
    losing_ts       timestamptz NOT NULL,
    rule            text        NOT NULL,
    detected_at     timestamptz NOT NULL,
    kafka_topic     text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    loaded_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX md_conflict_entity ON qms.md_conflict (kind, entity_id, detected_at);
COMMENT ON TABLE qms.md_conflict IS
    'Sources disagreeing on a conflict-checked golden-record field, once per disagreement '
    '(deterministic conflict_id); insert-only.';
