-- SLA breaches (ops.sla-breaches.v1): one row per late output, keyed by the deterministic
-- breach_id so a replay republishes the same breach without a second row. Insert-only: the
-- writer's default privileges from 0009 (SELECT, INSERT) cover it.
CREATE TABLE qms.sla_breach (
    breach_id          uuid PRIMARY KEY,
    sla                text        NOT NULL,
    interface          text        NOT NULL,
    event_id           uuid        NOT NULL,
    event_type         text        NOT NULL,
    source_system      text        NOT NULL,
    source_record_id   text        NOT NULL,
    product_line       text        NOT NULL,
    site               text        NOT NULL,
    output             text        NOT NULL CHECK (output IN ('quarantine_command', 'incident')),
    output_id          text        NOT NULL,
    recorded_at        timestamptz NOT NULL,
    produced_at        timestamptz NOT NULL,
    elapsed_ms         bigint      NOT NULL CHECK (elapsed_ms >= 0),
    limit_ms           bigint      NOT NULL CHECK (limit_ms > 0),
    trace_id           text,
    correlation_id     text,
    synthetic          boolean     NOT NULL,
    kafka_topic        text        NOT NULL,
    kafka_partition    integer     NOT NULL,
    kafka_offset       bigint      NOT NULL,
    loaded_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sla_breach_by_sla ON qms.sla_breach (sla, produced_at);
COMMENT ON TABLE qms.sla_breach IS
    'Outputs produced later than their interface''s SLA allows (qmsflow/config/sla.toml).';
GRANT SELECT, INSERT ON qms.sla_breach TO qmsflow_writer;
