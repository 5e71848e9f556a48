-- SLA compliance per interface for analysts. The SLAs are data in qmsflow/config/sla.toml;
-- qms.sla_rule mirrors them in the database so a view can count the outputs each one measures
-- (tests/unit/analytics/test_sla_rules_mirrored.py fails when the two differ: a change to
-- sla.toml ships with a migration that updates this table). Synthetic (canary) events are left
-- out of both the outputs and the breaches.
CREATE TABLE qms.sla_rule (
    sla             text PRIMARY KEY,
    interface       text     NOT NULL,
    event_type      text     NOT NULL,
    output          text     NOT NULL CHECK (output IN ('quarantine_command', 'incident')),
    actions         text[]   NOT NULL DEFAULT '{}',
    within_seconds  integer  NOT NULL CHECK (within_seconds > 0)
);
COMMENT ON TABLE qms.sla_rule IS 'The SLAs of qmsflow/config/sla.toml, one row per SLA.';
INSERT INTO qms.sla_rule (sla, interface, event_type, output, actions, within_seconds) VALUES
    ('nonconformance-quarantine', 'QMS nonconformance → ERP quarantine command',
     'nonconformance', 'quarantine_command', '{HOLD}', 300),
    ('lab-oos-incident', 'LIMS OOS result → quality incident',
     'lab_result', 'incident', '{}', 60);
GRANT SELECT ON qms.sla_rule TO qmsflow_writer;

CREATE VIEW analytics.sla_compliance AS
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
           regexp_replace(i.kafka_topic, 'quality\.incidents\.v1$', ''),
           date_trunc('day', i.opened_at),
           count(*)
    FROM qms.sla_rule r
    JOIN qms.incident i ON r.output = 'incident' AND r.event_type = ANY (i.event_types)
    WHERE EXISTS (  -- left out only when every member is a known synthetic event
        SELECT 1 FROM qms.incident_member m
        LEFT JOIN qms.quality_event e ON e.event_id = m.event_id
        WHERE m.incident_id = i.incident_id AND NOT coalesce(e.synthetic, false)
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
COMMENT ON VIEW analytics.sla_compliance IS
    'SLA compliance per interface and day: outputs measured, late ones, share on time (synthetic events excluded).';
COMMENT ON COLUMN analytics.sla_compliance.interface IS 'The interface the SLA covers, e.g. QMS nonconformance → ERP quarantine command.';
COMMENT ON COLUMN analytics.sla_compliance.sla IS 'The SLA''s name in qmsflow/config/sla.toml.';
COMMENT ON COLUMN analytics.sla_compliance.within_seconds IS 'Seconds from the event''s recorded_at within which the output must be produced.';
COMMENT ON COLUMN analytics.sla_compliance.environment IS 'Topic prefix of the environment the outputs were produced in; empty for production.';
COMMENT ON COLUMN analytics.sla_compliance.day IS 'UTC day of the triggering events'' recorded_at (of the incident''s opening for incidents).';
COMMENT ON COLUMN analytics.sla_compliance.outputs IS 'Outputs the SLA measured that day (quarantine commands or incidents).';
COMMENT ON COLUMN analytics.sla_compliance.breaches IS 'Of those, produced later than allowed (qms.sla_breach rows).';
COMMENT ON COLUMN analytics.sla_compliance.compliance IS 'Share produced on time, 0 to 1; empty when nothing was measured.';
COMMENT ON COLUMN analytics.sla_compliance.worst_seconds IS 'The latest output''s delay in seconds, when any was late.';
