-- The sink's first tables: canonical quality events, dead letters, and the sink's own offsets.
-- Every row carries lineage: the ingest record it came from (topic/partition/offset/schema) and
-- the sinked record itself (kafka_topic/kafka_partition/kafka_offset).

CREATE SCHEMA IF NOT EXISTS qms;

CREATE TABLE qms.quality_event (
    event_id              uuid PRIMARY KEY,            -- producer-assigned idempotency key
    event_type            text        NOT NULL,
    source_system         text        NOT NULL,
    source_record_id      text        NOT NULL,        -- e.g. NCR-1042, as the source numbers it
    occurred_at           timestamptz NOT NULL,
    recorded_at           timestamptz NOT NULL,
    product_line          text        NOT NULL,
    site                  text        NOT NULL,
    lot_id                text,
    part_number           text,
    supplier_id           text,
    equipment_id          text,
    severity              text CHECK (severity IN ('minor', 'major', 'critical')),
    source_severity       text,
    status                text        NOT NULL
        CHECK (status IN ('open', 'in_progress', 'in_review', 'closed', 'cancelled')),
    source_status         text        NOT NULL,
    signature             jsonb,                       -- Part 11 §11.50: signer, name, time, meaning
    audit                 jsonb,                       -- who changed what, why, old/new values
    correlation_id        text,
    synthetic             boolean     NOT NULL DEFAULT false,
    payload_type          text        NOT NULL,
    payload               jsonb       NOT NULL,        -- decimals as exact strings
    trace_id              text,
    source_topic          text        NOT NULL,
    source_partition      integer     NOT NULL,
    source_offset         bigint      NOT NULL,
    source_schema_id      integer     NOT NULL,
    source_subject        text        NOT NULL,
    source_schema_version integer     NOT NULL,
    ingested_at           timestamptz NOT NULL,
    kafka_topic           text        NOT NULL,
    kafka_partition       integer     NOT NULL,
    kafka_offset          bigint      NOT NULL,
    loaded_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quality_event_type_time ON qms.quality_event (event_type, occurred_at);
CREATE INDEX quality_event_lot ON qms.quality_event (lot_id) WHERE lot_id IS NOT NULL;
CREATE INDEX quality_event_product_line ON qms.quality_event (product_line, occurred_at);
COMMENT ON TABLE qms.quality_event IS
    'Canonical quality events, one row per event_id, written only by the qmsflow sink.';

CREATE TABLE qms.dead_letter (
    dead_letter_id     uuid PRIMARY KEY,                -- derived from source coordinates + stage
    reason_code        text        NOT NULL,
    reason             text        NOT NULL,
    stage              text        NOT NULL,
    source_topic       text        NOT NULL,
    source_partition   integer     NOT NULL,
    source_offset      bigint      NOT NULL,
    original_key       bytea,
    original_value     bytea,                           -- untouched bytes, for replay
    headers            jsonb       NOT NULL,
    original_timestamp timestamptz,
    failed_at          timestamptz NOT NULL,
    schema_id          integer,
    kafka_topic        text        NOT NULL,
    kafka_partition    integer     NOT NULL,
    kafka_offset       bigint      NOT NULL,
    loaded_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letter_reason ON qms.dead_letter (reason_code, failed_at);
COMMENT ON TABLE qms.dead_letter IS
    'Records qmsflow could not process, with the reason and the original bytes.';

CREATE TABLE qms.sink_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,               -- the first offset not yet in the tables
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
COMMENT ON TABLE qms.sink_offsets IS
    'Where the sink resumes: committed in the same transaction as the rows it describes.';
