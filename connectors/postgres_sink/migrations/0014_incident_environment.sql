-- Incidents per environment, as 0011 did for the golden tables. An incident_id is a uuid5 of
-- its root cause and ordinal, the same in every environment (topic prefix) that correlates the
-- same lot; keyed by incident_id alone, environments sharing one sink database overwrote each
-- other's incident rows, or had their upsert refused against another's higher revision, and
-- mixed their members under one id (the bench stored 32-65 of ~300 incident rows per run). A GxP
-- record must say which system it belongs to, so the environment becomes part of the key.
--
-- `environment` is the topic prefix quality.incidents.v1 was read under, taken by the sink from
-- the record's own topic (connectors/postgres_sink/rows.py); the CHECK holds every row to its
-- lineage. Existing rows get it from their kafka_topic. Members still have no foreign key to
-- their incident (a batch writes its tables in no dependency order, see 0002).

ALTER TABLE qms.incident ADD COLUMN environment text;
UPDATE qms.incident SET environment = regexp_replace(kafka_topic, 'quality\.incidents\.v1$', '');
ALTER TABLE qms.incident
    ALTER COLUMN environment SET NOT NULL,
    ADD CONSTRAINT incident_environment_lineage
        CHECK (kafka_topic = environment || 'quality.incidents.v1'),
    DROP CONSTRAINT incident_pkey,
    ADD PRIMARY KEY (environment, incident_id);
DROP INDEX qms.incident_root_cause;
CREATE INDEX incident_root_cause ON qms.incident (environment, root_cause_key, ordinal);
DROP INDEX qms.incident_open;
CREATE INDEX incident_open ON qms.incident (environment, product_line, opened_at)
    WHERE status = 'open';
COMMENT ON TABLE qms.incident IS
    'Correlated incidents, one row per environment and incident_id holding its newest view '
    '(highest revision; at equal revision the closed view): the sink upserts, an older view '
    'never overwrites.';
COMMENT ON COLUMN qms.incident.environment IS
    'Topic prefix of quality.incidents.v1 the row came from ('''' = unprefixed, production).';

ALTER TABLE qms.incident_member ADD COLUMN environment text;
UPDATE qms.incident_member
    SET environment = regexp_replace(kafka_topic, 'quality\.incidents\.v1$', '');
ALTER TABLE qms.incident_member
    ALTER COLUMN environment SET NOT NULL,
    ADD CONSTRAINT incident_member_environment_lineage
        CHECK (kafka_topic = environment || 'quality.incidents.v1'),
    DROP CONSTRAINT incident_member_pkey,
    ADD PRIMARY KEY (environment, incident_id, event_id);
COMMENT ON TABLE qms.incident_member IS
    'The quality events of each incident of an environment: the union of every view''s members '
    '(members only grow). No FK to qms.incident: a batch writes its tables in no dependency order.';
COMMENT ON COLUMN qms.incident_member.environment IS
    'Topic prefix of quality.incidents.v1 the row came from ('''' = unprefixed, production).';

-- The analyst view joins members to their own environment's incident and says which it is; it
-- is recreated (not replaced) so `environment` comes first, as in the key, and with it every
-- comment, in SELECT order (docs/analysts.md lists them in that order).
DROP VIEW analytics.incident_member;
CREATE VIEW analytics.incident_member AS
SELECT
    i.environment,
    i.incident_id,
    i.root_cause_key,
    i.status AS incident_status,
    i.severity AS incident_severity,
    i.opened_at,
    i.last_at,
    i.member_count,
    i.product_line,
    i.site,
    e.event_id,
    e.event_type,
    e.source_system,
    e.source_record_id,
    e.occurred_at,
    e.lot_id
FROM qms.incident i
JOIN qms.incident_member m ON (m.environment, m.incident_id) = (i.environment, i.incident_id)
JOIN qms.quality_event e ON e.event_id = m.event_id
WHERE NOT e.synthetic;
GRANT SELECT ON analytics.incident_member TO qmsflow_analyst;
COMMENT ON VIEW analytics.incident_member IS
    'Correlated incidents, one row per environment, incident and member quality event (members not yet loaded are left out).';
COMMENT ON COLUMN analytics.incident_member.environment IS 'Topic prefix of the environment the incident was correlated in; empty for production. With incident_id, the incident''s key.';
COMMENT ON COLUMN analytics.incident_member.incident_id IS 'Deterministic incident id (the same root cause has the same id in every environment).';
COMMENT ON COLUMN analytics.incident_member.root_cause_key IS 'What the members share, kind:value, e.g. lot:L2611-0042.';
COMMENT ON COLUMN analytics.incident_member.incident_status IS 'open or closed.';
COMMENT ON COLUMN analytics.incident_member.incident_severity IS 'The highest member severity: minor, major or critical.';
COMMENT ON COLUMN analytics.incident_member.opened_at IS 'When the incident opened (its first member''s occurred_at), UTC.';
COMMENT ON COLUMN analytics.incident_member.last_at IS 'occurred_at of its newest member, UTC.';
COMMENT ON COLUMN analytics.incident_member.member_count IS 'Members in the incident''s newest view.';
COMMENT ON COLUMN analytics.incident_member.product_line IS 'Product line of the incident.';
COMMENT ON COLUMN analytics.incident_member.site IS 'Site of the incident.';
COMMENT ON COLUMN analytics.incident_member.event_id IS 'The member quality event.';
COMMENT ON COLUMN analytics.incident_member.event_type IS 'Its event type, e.g. nonconformance, lab_result.';
COMMENT ON COLUMN analytics.incident_member.source_system IS 'Its source system.';
COMMENT ON COLUMN analytics.incident_member.source_record_id IS 'Its source record number.';
COMMENT ON COLUMN analytics.incident_member.occurred_at IS 'When it happened, UTC.';
COMMENT ON COLUMN analytics.incident_member.lot_id IS 'Its lot, when there is one.';

-- SLA compliance (0013): an incident's members are those of its own environment. Replaced with
-- the same columns, so its comments stay; only the incident branch of `measured` changes.
CREATE OR REPLACE VIEW analytics.sla_compliance AS
WITH measured AS (
    SELECT r.sla,
           regexp_replace(c.kafka_topic, 'inventory\.quarantine-commands\.v1$', '') AS environment,
           date_trunc('day', c.issued_at) AS day,
           count(*) AS outputs
    FROM qms.sla_rule r
    JOIN qms.quarantine_command c
      ON r.output = 'quarantine_command'
     AND c.trigger_event_type = r.event_type
     AND (cardinality(r.actions) = 0 OR c.action = ANY (r.actions))
    WHERE NOT EXISTS (  -- a trigger not loaded yet counts: only known synthetic ones are left out
        SELECT 1 FROM qms.quality_event e WHERE e.event_id = c.trigger_event_id AND e.synthetic
    )
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT r.sla,
           i.environment,
           date_trunc('day', i.opened_at),
           count(*)
    FROM qms.sla_rule r
    JOIN qms.incident i ON r.output = 'incident' AND r.event_type = ANY (i.event_types)
    WHERE EXISTS (  -- left out only when every member is a known synthetic event
        SELECT 1 FROM qms.incident_member m
        LEFT JOIN qms.quality_event e ON e.event_id = m.event_id
        WHERE (m.environment, m.incident_id) = (i.environment, i.incident_id)
          AND NOT coalesce(e.synthetic, false)
    )
    GROUP BY 1, 2, 3
),
late AS (
    SELECT sla,
           regexp_replace(kafka_topic, 'ops\.sla-breaches\.v1$', '') AS environment,
           date_trunc('day', recorded_at) AS day,
           count(*) AS breaches,
           max(elapsed_ms) AS worst_ms
    FROM qms.sla_breach
    WHERE NOT synthetic
    GROUP BY 1, 2, 3
),
days AS (
    SELECT sla, environment, day FROM measured
    UNION
    SELECT sla, environment, day FROM late
)
SELECT
    r.interface,
    r.sla,
    r.within_seconds,
    d.environment,
    d.day,
    coalesce(m.outputs, 0) AS outputs,
    coalesce(l.breaches, 0) AS breaches,
    CASE WHEN coalesce(m.outputs, 0) = 0 THEN NULL
         ELSE round(1 - least(coalesce(l.breaches, 0), m.outputs)::numeric / m.outputs, 4)
    END AS compliance,
    round(l.worst_ms / 1000.0, 1) AS worst_seconds
FROM qms.sla_rule r
JOIN days d ON d.sla = r.sla
LEFT JOIN measured m ON (m.sla, m.environment, m.day) = (d.sla, d.environment, d.day)
LEFT JOIN late l ON (l.sla, l.environment, l.day) = (d.sla, d.environment, d.day);
