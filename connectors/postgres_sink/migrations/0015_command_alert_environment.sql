-- Alerts, quarantine commands and escalations per environment, as 0014 did for incidents. Their
-- ids are uuid5s of content (the incident; lot, hold ordinal and action; record and level), the
-- same in every environment (topic prefix) that sees the same data; keyed by id alone and
-- written insert-only, environments sharing one sink database kept only the first environment's
-- row and silently dropped every other environment's alert, command or escalation. A GxP record
-- must say which system it belongs to, so the environment becomes part of the key.
--
-- `environment` is the topic prefix the record was read under, taken by the sink from the
-- record's own topic (connectors/postgres_sink/rows.py); the CHECK holds every row to its
-- lineage. Existing rows get it from their kafka_topic.

ALTER TABLE qms.alert ADD COLUMN environment text;
UPDATE qms.alert SET environment = regexp_replace(kafka_topic, 'quality\.alerts\.v1$', '');
ALTER TABLE qms.alert
    ALTER COLUMN environment SET NOT NULL,
    ADD CONSTRAINT alert_environment_lineage
        CHECK (kafka_topic = environment || 'quality.alerts.v1'),
    DROP CONSTRAINT alert_pkey,
    ADD PRIMARY KEY (environment, alert_id);
DROP INDEX qms.alert_incident;
CREATE INDEX alert_incident ON qms.alert (environment, incident_id);
DROP INDEX qms.alert_raised;
CREATE INDEX alert_raised ON qms.alert (environment, product_line, raised_at);
COMMENT ON TABLE qms.alert IS
    'The one alert each incident of an environment raised when it opened; insert-only.';
COMMENT ON COLUMN qms.alert.environment IS
    'Topic prefix of quality.alerts.v1 the row came from ('''' = unprefixed, production).';

ALTER TABLE qms.quarantine_command ADD COLUMN environment text;
UPDATE qms.quarantine_command
    SET environment = regexp_replace(kafka_topic, 'inventory\.quarantine-commands\.v1$', '');
ALTER TABLE qms.quarantine_command
    ALTER COLUMN environment SET NOT NULL,
    ADD CONSTRAINT quarantine_command_environment_lineage
        CHECK (kafka_topic = environment || 'inventory.quarantine-commands.v1'),
    DROP CONSTRAINT quarantine_command_pkey,
    ADD PRIMARY KEY (environment, command_id);
DROP INDEX qms.quarantine_command_lot;
CREATE INDEX quarantine_command_lot ON qms.quarantine_command (environment, lot_id, issued_at);
COMMENT ON TABLE qms.quarantine_command IS
    'HOLD and RELEASE commands sent to the ERP, one row per environment and command_id; '
    'insert-only.';
COMMENT ON COLUMN qms.quarantine_command.environment IS
    'Topic prefix of inventory.quarantine-commands.v1 the row came from ('''' = unprefixed, production).';

ALTER TABLE qms.escalation ADD COLUMN environment text;
UPDATE qms.escalation SET environment = regexp_replace(kafka_topic, 'capa\.escalations\.v1$', '');
ALTER TABLE qms.escalation
    ALTER COLUMN environment SET NOT NULL,
    ADD CONSTRAINT escalation_environment_lineage
        CHECK (kafka_topic = environment || 'capa.escalations.v1'),
    DROP CONSTRAINT escalation_pkey,
    ADD PRIMARY KEY (environment, escalation_id);
DROP INDEX qms.escalation_record;
CREATE INDEX escalation_record ON qms.escalation (environment, record_key, level);
COMMENT ON TABLE qms.escalation IS
    'Past-due CAPAs, audit-finding responses and SCARs reaching an escalation level; '
    'one row per environment, record and level; insert-only.';
COMMENT ON COLUMN qms.escalation.environment IS
    'Topic prefix of capa.escalations.v1 the row came from ('''' = unprefixed, production).';

-- The archive (0008) keeps the qms columns, so retention's DELETE … RETURNING feeds it the new
-- one too. Archived rows are backfilled with their append-only trigger off, inside this
-- migration's transaction: the only change ever made to them, and it adds, never alters.
ALTER TABLE archive.quarantine_command ADD COLUMN environment text;
ALTER TABLE archive.quarantine_command DISABLE TRIGGER quarantine_command_append_only;
UPDATE archive.quarantine_command
    SET environment = regexp_replace(kafka_topic, 'inventory\.quarantine-commands\.v1$', '');
ALTER TABLE archive.quarantine_command ENABLE TRIGGER quarantine_command_append_only;
ALTER TABLE archive.quarantine_command
    ALTER COLUMN environment SET NOT NULL,
    ADD CONSTRAINT quarantine_command_environment_lineage
        CHECK (kafka_topic = environment || 'inventory.quarantine-commands.v1');

ALTER TABLE archive.escalation ADD COLUMN environment text;
ALTER TABLE archive.escalation DISABLE TRIGGER escalation_append_only;
UPDATE archive.escalation
    SET environment = regexp_replace(kafka_topic, 'capa\.escalations\.v1$', '');
ALTER TABLE archive.escalation ENABLE TRIGGER escalation_append_only;
ALTER TABLE archive.escalation
    ALTER COLUMN environment SET NOT NULL,
    ADD CONSTRAINT escalation_environment_lineage
        CHECK (kafka_topic = environment || 'capa.escalations.v1');

-- A lot's hold status is per environment: a validation run's RELEASE must not show production's
-- held lot as released. Both views are recreated (not replaced) so `environment` comes first,
-- and with them every comment; analytics.lot_on_hold reads qms.lot_hold_status, so it goes first.
DROP VIEW analytics.lot_on_hold;
DROP VIEW qms.lot_hold_status;
CREATE VIEW qms.lot_hold_status AS
SELECT DISTINCT ON (environment, lot_id)
    environment,
    lot_id,
    CASE action WHEN 'HOLD' THEN 'ON_HOLD' ELSE 'RELEASED' END AS status,
    command_id,
    reason,
    issued_at AS since,
    part_number,
    product_line,
    site
FROM qms.quarantine_command
ORDER BY environment, lot_id, issued_at DESC, (action = 'HOLD') DESC, command_id;
-- as before: only its owner reads it (default privileges of 0009 would give the writer more)
REVOKE ALL ON qms.lot_hold_status FROM qmsflow_writer;
COMMENT ON VIEW qms.lot_hold_status IS
    'Each lot''s current quarantine status (ON_HOLD or RELEASED) per environment, from its '
    'latest command there.';

CREATE VIEW analytics.lot_on_hold AS
SELECT
    h.environment,
    h.lot_id,
    h.part_number,
    h.product_line,
    h.site,
    h.reason,
    h.since AS held_since,
    floor(extract(epoch FROM now() - h.since) / 86400)::integer AS days_on_hold,
    c.trigger_event_type,
    c.trigger_source_record_id,
    h.command_id
FROM qms.lot_hold_status h
JOIN qms.quarantine_command c ON (c.environment, c.command_id) = (h.environment, h.command_id)
WHERE h.status = 'ON_HOLD'
  AND NOT EXISTS (
      SELECT 1 FROM qms.quality_event e WHERE e.event_id = c.trigger_event_id AND e.synthetic
  );
GRANT SELECT ON analytics.lot_on_hold TO qmsflow_analyst;
COMMENT ON VIEW analytics.lot_on_hold IS
    'Lots whose latest quarantine command in an environment is a HOLD, with how long they have been held.';
COMMENT ON COLUMN analytics.lot_on_hold.environment IS 'Topic prefix of the environment that held the lot; empty for production.';
COMMENT ON COLUMN analytics.lot_on_hold.lot_id IS 'The held lot or batch.';
COMMENT ON COLUMN analytics.lot_on_hold.part_number IS 'Its part or material number, when known.';
COMMENT ON COLUMN analytics.lot_on_hold.product_line IS 'Product line.';
COMMENT ON COLUMN analytics.lot_on_hold.site IS 'Site (SAP plant) holding the stock.';
COMMENT ON COLUMN analytics.lot_on_hold.reason IS 'Why it was held, as sent to the ERP.';
COMMENT ON COLUMN analytics.lot_on_hold.held_since IS 'issued_at of the HOLD command (its trigger''s recorded_at), UTC.';
COMMENT ON COLUMN analytics.lot_on_hold.days_on_hold IS 'Whole days since held_since, at query time.';
COMMENT ON COLUMN analytics.lot_on_hold.trigger_event_type IS 'Event type of the quality event that triggered the hold.';
COMMENT ON COLUMN analytics.lot_on_hold.trigger_source_record_id IS 'Source record number of that event, e.g. NCR-1042.';
COMMENT ON COLUMN analytics.lot_on_hold.command_id IS 'The HOLD command''s id (qms.quarantine_command; with environment, its key).';

-- Escalations per environment. qms.quality_event has no environment column; an event's is the
-- prefix of the canonical topic it was read from, so a record's latest status is looked up in
-- the escalation's own environment (a validation run closing CAPA-77 does not hide
-- production's escalation of it). Recreated so `environment` comes first.
DROP VIEW analytics.overdue_escalation;
CREATE VIEW analytics.overdue_escalation AS
WITH latest_escalation AS (
    SELECT DISTINCT ON (environment, record_key) *
    FROM qms.escalation
    ORDER BY environment, record_key, level DESC
), latest_event AS (
    SELECT DISTINCT ON (environment, source_system, source_record_id)
        environment, source_system || ':' || source_record_id AS record_key, status, synthetic
    FROM (
        SELECT regexp_replace(kafka_topic, 'quality\.events\.v1$', '') AS environment, *
        FROM qms.quality_event
        WHERE event_type IN ('capa', 'audit_finding', 'supplier_corrective_action')
    ) events
    ORDER BY environment, source_system, source_record_id, recorded_at DESC, event_id DESC
)
SELECT
    x.environment,
    x.record_key,
    x.event_type,
    x.source_record_id,
    x.title,
    x.level,
    x.recipient_role,
    x.due_date,
    x.escalated_at,
    greatest(current_date - x.due_date, 0) AS days_overdue,
    x.product_line,
    x.site
FROM latest_escalation x
LEFT JOIN latest_event e ON (e.environment, e.record_key) = (x.environment, x.record_key)
WHERE coalesce(e.status, 'open') NOT IN ('closed', 'cancelled')
  AND NOT coalesce(e.synthetic, false);
GRANT SELECT ON analytics.overdue_escalation TO qmsflow_analyst;
COMMENT ON VIEW analytics.overdue_escalation IS
    'Past-due CAPAs, audit-finding responses and SCARs still open, at their highest escalation level, per environment.';
COMMENT ON COLUMN analytics.overdue_escalation.environment IS 'Topic prefix of the environment that escalated the record; empty for production.';
COMMENT ON COLUMN analytics.overdue_escalation.record_key IS 'Source system and record number, e.g. QMS:CAPA-77.';
COMMENT ON COLUMN analytics.overdue_escalation.event_type IS 'capa, audit_finding or supplier_corrective_action.';
COMMENT ON COLUMN analytics.overdue_escalation.source_record_id IS 'The source''s record number.';
COMMENT ON COLUMN analytics.overdue_escalation.title IS 'Title of the record.';
COMMENT ON COLUMN analytics.overdue_escalation.level IS 'Highest escalation level reached (1 = first).';
COMMENT ON COLUMN analytics.overdue_escalation.recipient_role IS 'Who that level escalates to.';
COMMENT ON COLUMN analytics.overdue_escalation.due_date IS 'The date the record was due.';
COMMENT ON COLUMN analytics.overdue_escalation.escalated_at IS 'When that level was reached (event-time watermark), UTC.';
COMMENT ON COLUMN analytics.overdue_escalation.days_overdue IS 'Days past due_date today.';
COMMENT ON COLUMN analytics.overdue_escalation.product_line IS 'Product line.';
COMMENT ON COLUMN analytics.overdue_escalation.site IS 'Site code.';

-- CAPA ageing (0007) stays one row per source record; its escalation level is the highest one
-- reached in the environment of the CAPA's latest event. Replaced with the same columns, so its
-- comments stay; only the escalation_level subquery changes.
CREATE OR REPLACE VIEW analytics.capa_ageing AS
WITH events AS (
    SELECT * FROM qms.quality_event WHERE event_type = 'capa' AND NOT synthetic
), latest AS (
    SELECT DISTINCT ON (source_system, source_record_id) *
    FROM events
    ORDER BY source_system, source_record_id, recorded_at DESC, event_id DESC
), opened AS (
    SELECT source_system, source_record_id, min(occurred_at) AS opened_at
    FROM events GROUP BY source_system, source_record_id
)
SELECT
    l.source_system,
    l.source_record_id AS capa_id,
    l.product_line,
    l.site,
    l.status,
    l.payload ->> 'title' AS title,
    l.payload ->> 'owner_id' AS owner_id,
    o.opened_at,
    floor(extract(epoch FROM now() - o.opened_at) / 86400)::integer AS age_days,
    (l.payload ->> 'due_date')::date AS due_date,
    greatest(current_date - (l.payload ->> 'due_date')::date, 0) AS days_overdue,
    (SELECT max(x.level) FROM qms.escalation x
      WHERE x.environment = regexp_replace(l.kafka_topic, 'quality\.events\.v1$', '')
        AND x.record_key = l.source_system || ':' || l.source_record_id) AS escalation_level
FROM latest l JOIN opened o USING (source_system, source_record_id)
WHERE l.status IN ('open', 'in_progress', 'in_review');
COMMENT ON COLUMN analytics.capa_ageing.escalation_level IS 'Highest escalation level reached (qms.escalation) in the environment of the CAPA''s latest event; NULL if never escalated.';
