-- The stream stages' outputs: incidents and their members, alerts, quarantine commands,
-- escalations and the parking trail; a lot's current hold; and the audit trail of DLQ replays.
-- Every sink table ends with the lineage of the record it came from (kafka_topic,
-- kafka_partition, kafka_offset) and when it was loaded. The CHECK lists mirror the domain's
-- own types (connectors/postgres_sink/rows.py checks them first, so a bad value dead-letters one
-- record instead of failing a batch; tests/unit/connectors keep the two in step).

CREATE TABLE qms.incident (
    incident_id       uuid PRIMARY KEY,                 -- uuid5 of root_cause_key and ordinal
    root_cause_key    text        NOT NULL,             -- kind:value, e.g. lot:L2611-0042
    ordinal           integer     NOT NULL CHECK (ordinal >= 1),
    status            text        NOT NULL CHECK (status IN ('open', 'closed')),
    severity          text        NOT NULL CHECK (severity IN ('minor', 'major', 'critical')),
    opened_at         timestamptz NOT NULL,
    last_at           timestamptz NOT NULL,
    member_count      integer     NOT NULL CHECK (member_count >= 1),
    suppressed_alerts integer     NOT NULL CHECK (suppressed_alerts >= 0),
    event_types       text[]      NOT NULL,
    source_systems    text[]      NOT NULL,
    product_line      text        NOT NULL,
    site              text        NOT NULL,
    revision          integer     NOT NULL CHECK (revision >= 1),  -- member count of this view
    kafka_topic       text        NOT NULL,
    kafka_partition   integer     NOT NULL,
    kafka_offset      bigint      NOT NULL,
    loaded_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX incident_root_cause ON qms.incident (root_cause_key, ordinal);
CREATE INDEX incident_open ON qms.incident (product_line, opened_at) WHERE status = 'open';
COMMENT ON TABLE qms.incident IS
    'Correlated incidents, one row per incident_id holding its newest view (highest revision; '
    'at equal revision the closed view): the sink upserts, an older view never overwrites.';

-- No foreign key to qms.incident: the sink writes one batch's tables in the order their rows
-- first arrived, not in dependency order (its protocol knows no order among tables), so a member
-- row may be inserted before its incident's row. Both come from the same record and commit in
-- the same transaction, or neither does.
CREATE TABLE qms.incident_member (
    incident_id     uuid        NOT NULL,
    event_id        uuid        NOT NULL,                -- qms.quality_event.event_id
    kafka_topic     text        NOT NULL,                -- the incident view that first named it
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    loaded_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (incident_id, event_id)
);
CREATE INDEX incident_member_event ON qms.incident_member (event_id);
COMMENT ON TABLE qms.incident_member IS
    'The quality events of each incident: the union of every view''s members (members only '
    'grow). No FK to qms.incident: a batch writes its tables in no dependency order.';

CREATE TABLE qms.alert (
    alert_id         uuid PRIMARY KEY,                  -- uuid5 of incident_id
    incident_id      uuid        NOT NULL,
    root_cause_key   text        NOT NULL,
    severity         text        NOT NULL CHECK (severity IN ('minor', 'major', 'critical')),
    raised_at        timestamptz NOT NULL,              -- occurred_at of the raising event
    product_line     text        NOT NULL,
    site             text        NOT NULL,
    summary          text        NOT NULL,
    first_event_id   uuid        NOT NULL,
    first_event_type text        NOT NULL,
    source_system    text        NOT NULL,
    kafka_topic      text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    loaded_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_incident ON qms.alert (incident_id);
CREATE INDEX alert_raised ON qms.alert (product_line, raised_at);
COMMENT ON TABLE qms.alert IS
    'The one alert each incident raised when it opened; insert-only.';

CREATE TABLE qms.quarantine_command (
    command_id               uuid PRIMARY KEY,          -- uuid5 of lot, hold ordinal, action
    action                   text        NOT NULL CHECK (action IN ('HOLD', 'RELEASE')),
    lot_id                   text        NOT NULL,
    part_number              text,
    product_line             text        NOT NULL,
    site                     text        NOT NULL,      -- SAP plant
    reason                   text        NOT NULL,
    trigger_event_id         uuid        NOT NULL,
    trigger_event_type       text        NOT NULL,
    trigger_source_record_id text        NOT NULL,
    issued_at                timestamptz NOT NULL,      -- the trigger's recorded_at, not wall time
    target_stock_type        text        NOT NULL,      -- configurable: no CHECK
    sap_movement_type        text        NOT NULL,      -- configurable: no CHECK
    kafka_topic              text        NOT NULL,
    kafka_partition          integer     NOT NULL,
    kafka_offset             bigint      NOT NULL,
    loaded_at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quarantine_command_lot ON qms.quarantine_command (lot_id, issued_at);
COMMENT ON TABLE qms.quarantine_command IS
    'HOLD and RELEASE commands sent to the ERP, one row per command_id; insert-only.';

CREATE TABLE qms.escalation (
    escalation_id    uuid PRIMARY KEY,                  -- uuid5 of record_key and level
    record_key       text        NOT NULL,              -- e.g. QMS:CAPA-77
    event_type       text        NOT NULL
        CHECK (event_type IN ('capa', 'audit_finding', 'supplier_corrective_action')),
    source_record_id text        NOT NULL,
    level            integer     NOT NULL CHECK (level >= 1),
    due_date         date        NOT NULL,
    overdue_days     integer     NOT NULL,
    escalated_at     timestamptz NOT NULL,              -- event-time watermark, not wall time
    recipient_role   text        NOT NULL,
    product_line     text        NOT NULL,
    site             text        NOT NULL,
    title            text        NOT NULL,
    kafka_topic      text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    loaded_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX escalation_record ON qms.escalation (record_key, level);
COMMENT ON TABLE qms.escalation IS
    'Past-due CAPAs, audit-finding responses and SCARs reaching an escalation level; '
    'one row per record and level; insert-only.';

CREATE TABLE qms.parked_event (
    event_id           uuid        NOT NULL,
    status             text        NOT NULL CHECK (status IN ('PARKED', 'RELEASED', 'EXPIRED')),
    event_type         text        NOT NULL,
    product_line       text        NOT NULL,
    missing_references text[]      NOT NULL,            -- kind:id, e.g. lot:L2611-0042
    parked_at          timestamptz NOT NULL,
    deadline_at        timestamptz NOT NULL,
    event_json         jsonb       NOT NULL,            -- typed values tagged $timestamp, ...
    kafka_topic        text        NOT NULL,
    kafka_partition    integer     NOT NULL,
    kafka_offset       bigint      NOT NULL,
    loaded_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, status)
);
CREATE INDEX parked_event_waiting ON qms.parked_event (deadline_at) WHERE status = 'PARKED';
COMMENT ON TABLE qms.parked_event IS
    'The integrity stage''s trail: each event parked for missing master data, and its release '
    'or expiry; one row per event and status; insert-only.';

-- Latest command per lot: by issued_at; at the same instant a HOLD outranks a RELEASE (showing a
-- released lot as held costs a check, showing a held lot as released can ship it); command_id
-- last, only so the answer is deterministic.
CREATE VIEW qms.lot_hold_status AS
SELECT DISTINCT ON (lot_id)
    lot_id,
    CASE action WHEN 'HOLD' THEN 'ON_HOLD' ELSE 'RELEASED' END AS status,
    command_id,
    reason,
    issued_at AS since,
    part_number,
    product_line,
    site
FROM qms.quarantine_command
ORDER BY lot_id, issued_at DESC, (action = 'HOLD') DESC, command_id;
COMMENT ON VIEW qms.lot_hold_status IS
    'Each lot''s current quarantine status (ON_HOLD or RELEASED) from its latest command.';

-- Written by `qmsflow dlq replay`, not by the sink: who put which dead letter back, and where.
CREATE TABLE qms.dead_letter_replay (
    replay_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dead_letter_id   uuid        NOT NULL REFERENCES qms.dead_letter (dead_letter_id),
    replayed_at      timestamptz NOT NULL DEFAULT now(),
    replayed_by      text        NOT NULL,              -- the operator's OS user
    target_topic     text        NOT NULL,              -- physical, with the environment prefix
    target_partition integer     NOT NULL,
    target_offset    bigint      NOT NULL,
    UNIQUE (target_topic, target_partition, target_offset)
);
CREATE INDEX dead_letter_replay_letter ON qms.dead_letter_replay (dead_letter_id);
COMMENT ON TABLE qms.dead_letter_replay IS
    'Audit trail of dead letters re-produced to their source topic: append-only.';

CREATE FUNCTION qms.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END
$$;
CREATE TRIGGER dead_letter_replay_append_only
    BEFORE UPDATE OR DELETE ON qms.dead_letter_replay
    FOR EACH ROW EXECUTE FUNCTION qms.refuse_change();
