-- The analyst model (DESIGN §5): views in schema `analytics`, the only schema analysts may read.
-- A quality record's current state is its latest event (by recorded_at, event_id to break ties)
-- among the events of its source_system and source_record_id. Synthetic (canary and test)
-- events never appear, nor do records derived from them. Every view and column carries a
-- COMMENT: `qmsflow db docs` renders docs/analysts.md from them, so the docs cannot drift;
-- columns are commented in their SELECT order (the docs list them in that order).

CREATE SCHEMA IF NOT EXISTS analytics;
COMMENT ON SCHEMA analytics IS 'Analyst views over the qms tables; read-only, no synthetic data.';

-- ---- open nonconformances ---------------------------------------------------------------------
CREATE VIEW analytics.open_nonconformance AS
WITH events AS (
    SELECT * FROM qms.quality_event WHERE event_type = 'nonconformance' AND NOT synthetic
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
    l.source_record_id AS nonconformance_id,
    l.product_line,
    l.site,
    l.severity,
    l.status,
    l.payload ->> 'title' AS title,
    l.defect_category,
    l.lot_id,
    l.part_number,
    l.supplier_id,
    o.opened_at,
    floor(extract(epoch FROM now() - o.opened_at) / 86400)::integer AS age_days,
    CASE
        WHEN now() - o.opened_at < interval '8 days' THEN '0-7 days'
        WHEN now() - o.opened_at < interval '31 days' THEN '8-30 days'
        WHEN now() - o.opened_at < interval '91 days' THEN '31-90 days'
        ELSE 'over 90 days'
    END AS age_band,
    l.event_id AS latest_event_id
FROM latest l JOIN opened o USING (source_system, source_record_id)
WHERE l.status IN ('open', 'in_progress', 'in_review');
COMMENT ON VIEW analytics.open_nonconformance IS
    'Nonconformances not yet closed or cancelled, one row per source record, with their age.';
COMMENT ON COLUMN analytics.open_nonconformance.source_system IS 'The system that raised it, e.g. QMS.';
COMMENT ON COLUMN analytics.open_nonconformance.nonconformance_id IS 'The source''s record number, e.g. NCR-1042.';
COMMENT ON COLUMN analytics.open_nonconformance.product_line IS 'Product line of the latest event.';
COMMENT ON COLUMN analytics.open_nonconformance.site IS 'Manufacturing site code.';
COMMENT ON COLUMN analytics.open_nonconformance.severity IS 'Canonical severity: minor, major or critical (NULL when the source gave none).';
COMMENT ON COLUMN analytics.open_nonconformance.status IS 'Canonical status: open, in_progress or in_review.';
COMMENT ON COLUMN analytics.open_nonconformance.title IS 'Short title of the nonconformance.';
COMMENT ON COLUMN analytics.open_nonconformance.defect_category IS 'Canonical defect category from the data dictionary.';
COMMENT ON COLUMN analytics.open_nonconformance.lot_id IS 'The affected lot, when there is one.';
COMMENT ON COLUMN analytics.open_nonconformance.part_number IS 'The affected part, when there is one.';
COMMENT ON COLUMN analytics.open_nonconformance.supplier_id IS 'The supplier involved, when there is one.';
COMMENT ON COLUMN analytics.open_nonconformance.opened_at IS 'occurred_at of the record''s first event, UTC.';
COMMENT ON COLUMN analytics.open_nonconformance.age_days IS 'Whole days since opened_at, at query time.';
COMMENT ON COLUMN analytics.open_nonconformance.age_band IS 'Age band: 0-7 days, 8-30 days, 31-90 days or over 90 days.';
COMMENT ON COLUMN analytics.open_nonconformance.latest_event_id IS 'event_id of the latest event (its lineage is in the audit trail).';

CREATE VIEW analytics.open_nonconformance_by_line AS
SELECT
    product_line,
    age_band,
    count(*)::integer AS open_count,
    count(*) FILTER (WHERE severity = 'critical')::integer AS critical_count,
    max(age_days) AS oldest_age_days
FROM analytics.open_nonconformance
GROUP BY product_line, age_band;
COMMENT ON VIEW analytics.open_nonconformance_by_line IS
    'Open nonconformances counted per product line and age band.';
COMMENT ON COLUMN analytics.open_nonconformance_by_line.product_line IS 'Product line.';
COMMENT ON COLUMN analytics.open_nonconformance_by_line.age_band IS 'Age band, as in open_nonconformance.';
COMMENT ON COLUMN analytics.open_nonconformance_by_line.open_count IS 'Open nonconformances in the band.';
COMMENT ON COLUMN analytics.open_nonconformance_by_line.critical_count IS 'Of which critical.';
COMMENT ON COLUMN analytics.open_nonconformance_by_line.oldest_age_days IS 'Age in days of the oldest one.';

-- ---- incidents and their members --------------------------------------------------------------
CREATE VIEW analytics.incident_member AS
SELECT
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
JOIN qms.incident_member m ON m.incident_id = i.incident_id
JOIN qms.quality_event e ON e.event_id = m.event_id
WHERE NOT e.synthetic;
COMMENT ON VIEW analytics.incident_member IS
    'Correlated incidents, one row per member quality event (members not yet loaded are left out).';
COMMENT ON COLUMN analytics.incident_member.incident_id IS 'Deterministic incident id.';
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

-- ---- lots on hold -----------------------------------------------------------------------------
CREATE VIEW analytics.lot_on_hold AS
SELECT
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
JOIN qms.quarantine_command c ON c.command_id = h.command_id
WHERE h.status = 'ON_HOLD'
  AND NOT EXISTS (
      SELECT 1 FROM qms.quality_event e WHERE e.event_id = c.trigger_event_id AND e.synthetic
  );
COMMENT ON VIEW analytics.lot_on_hold IS
    'Lots whose latest quarantine command is a HOLD, with how long they have been held.';
COMMENT ON COLUMN analytics.lot_on_hold.lot_id IS 'The held lot or batch.';
COMMENT ON COLUMN analytics.lot_on_hold.part_number IS 'Its part or material number, when known.';
COMMENT ON COLUMN analytics.lot_on_hold.product_line IS 'Product line.';
COMMENT ON COLUMN analytics.lot_on_hold.site IS 'Site (SAP plant) holding the stock.';
COMMENT ON COLUMN analytics.lot_on_hold.reason IS 'Why it was held, as sent to the ERP.';
COMMENT ON COLUMN analytics.lot_on_hold.held_since IS 'issued_at of the HOLD command (its trigger''s recorded_at), UTC.';
COMMENT ON COLUMN analytics.lot_on_hold.days_on_hold IS 'Whole days since held_since, at query time.';
COMMENT ON COLUMN analytics.lot_on_hold.trigger_event_type IS 'Event type of the quality event that triggered the hold.';
COMMENT ON COLUMN analytics.lot_on_hold.trigger_source_record_id IS 'Source record number of that event, e.g. NCR-1042.';
COMMENT ON COLUMN analytics.lot_on_hold.command_id IS 'The HOLD command''s id (qms.quarantine_command).';

-- ---- CAPA ageing and overdue escalations ------------------------------------------------------
CREATE VIEW analytics.capa_ageing AS
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
      WHERE x.record_key = l.source_system || ':' || l.source_record_id) AS escalation_level
FROM latest l JOIN opened o USING (source_system, source_record_id)
WHERE l.status IN ('open', 'in_progress', 'in_review');
COMMENT ON VIEW analytics.capa_ageing IS
    'Open CAPAs, one row per source record, with age, days overdue and escalation level.';
COMMENT ON COLUMN analytics.capa_ageing.source_system IS 'The system that owns the CAPA, e.g. QMS.';
COMMENT ON COLUMN analytics.capa_ageing.capa_id IS 'The source''s CAPA number, e.g. CAPA-77.';
COMMENT ON COLUMN analytics.capa_ageing.product_line IS 'Product line.';
COMMENT ON COLUMN analytics.capa_ageing.site IS 'Site code.';
COMMENT ON COLUMN analytics.capa_ageing.status IS 'Canonical status: open, in_progress or in_review.';
COMMENT ON COLUMN analytics.capa_ageing.title IS 'Short title of the CAPA.';
COMMENT ON COLUMN analytics.capa_ageing.owner_id IS 'User id of the CAPA owner.';
COMMENT ON COLUMN analytics.capa_ageing.opened_at IS 'occurred_at of the CAPA''s first event, UTC.';
COMMENT ON COLUMN analytics.capa_ageing.age_days IS 'Whole days since opened_at, at query time.';
COMMENT ON COLUMN analytics.capa_ageing.due_date IS 'Due date in the latest event.';
COMMENT ON COLUMN analytics.capa_ageing.days_overdue IS 'Days past due_date today; 0 when not yet due.';
COMMENT ON COLUMN analytics.capa_ageing.escalation_level IS 'Highest escalation level reached (qms.escalation); NULL if never escalated.';

CREATE VIEW analytics.overdue_escalation AS
WITH latest_escalation AS (
    SELECT DISTINCT ON (record_key) *
    FROM qms.escalation
    ORDER BY record_key, level DESC
), latest_event AS (
    SELECT DISTINCT ON (source_system, source_record_id)
        source_system || ':' || source_record_id AS record_key, status, synthetic
    FROM qms.quality_event
    WHERE event_type IN ('capa', 'audit_finding', 'supplier_corrective_action')
    ORDER BY source_system, source_record_id, recorded_at DESC, event_id DESC
)
SELECT
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
LEFT JOIN latest_event e ON e.record_key = x.record_key
WHERE coalesce(e.status, 'open') NOT IN ('closed', 'cancelled')
  AND NOT coalesce(e.synthetic, false);
COMMENT ON VIEW analytics.overdue_escalation IS
    'Past-due CAPAs, audit-finding responses and SCARs still open, at their highest escalation level.';
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

-- ---- supplier scorecard -----------------------------------------------------------------------
CREATE VIEW analytics.supplier_scorecard AS
WITH records AS (
    SELECT supplier_id, event_type, count(DISTINCT (source_system, source_record_id)) AS n,
           max(occurred_at) AS last_at
    FROM qms.quality_event
    WHERE supplier_id IS NOT NULL AND NOT synthetic
    GROUP BY supplier_id, event_type
)
SELECT
    supplier_id,
    coalesce(sum(n) FILTER (WHERE event_type = 'inspection_result'), 0)::integer AS inspection_count,
    coalesce(sum(n) FILTER (WHERE event_type = 'nonconformance'), 0)::integer AS nonconformance_count,
    round(
        coalesce(sum(n) FILTER (WHERE event_type = 'nonconformance'), 0)::numeric
        / nullif(sum(n) FILTER (WHERE event_type = 'inspection_result'), 0), 4
    ) AS nc_rate,
    coalesce(sum(n) FILTER (WHERE event_type = 'supplier_corrective_action'), 0)::integer AS scar_count,
    coalesce(sum(n) FILTER (WHERE event_type = 'audit_finding'), 0)::integer AS audit_finding_count,
    max(last_at) AS last_event_at
FROM records
GROUP BY supplier_id;
COMMENT ON VIEW analytics.supplier_scorecard IS
    'Per supplier: inspections, nonconformances, NC rate, SCARs and audit findings (distinct source records).';
COMMENT ON COLUMN analytics.supplier_scorecard.supplier_id IS 'The supplier.';
COMMENT ON COLUMN analytics.supplier_scorecard.inspection_count IS 'Distinct inspection records naming the supplier.';
COMMENT ON COLUMN analytics.supplier_scorecard.nonconformance_count IS 'Distinct nonconformance records naming the supplier.';
COMMENT ON COLUMN analytics.supplier_scorecard.nc_rate IS 'nonconformance_count / inspection_count, 4 decimals; NULL without inspections.';
COMMENT ON COLUMN analytics.supplier_scorecard.scar_count IS 'Distinct supplier corrective action requests (SCARs).';
COMMENT ON COLUMN analytics.supplier_scorecard.audit_finding_count IS 'Distinct audit findings naming the supplier.';
COMMENT ON COLUMN analytics.supplier_scorecard.last_event_at IS 'occurred_at of the supplier''s newest event, UTC.';

-- ---- environmental excursions -----------------------------------------------------------------
-- A reading is an excursion past its alert (or action) limit; for differential pressure the
-- limit is a floor (a room losing overpressure), for every other parameter a ceiling, as in
-- the EMS the demo simulates.
CREATE VIEW analytics.environmental_excursion AS
WITH readings AS (
    SELECT e.*,
        (e.payload ->> 'value')::numeric AS value,
        (e.payload ->> 'alert_limit')::numeric AS alert_limit,
        (e.payload ->> 'action_limit')::numeric AS action_limit,
        (e.payload ->> 'parameter') = 'differential_pressure' AS floor_limit
    FROM qms.quality_event e
    WHERE e.event_type = 'environmental_reading' AND NOT e.synthetic
), judged AS (
    SELECT r.*,
        CASE
            WHEN r.action_limit IS NOT NULL AND (CASE WHEN r.floor_limit
                THEN r.value < r.action_limit ELSE r.value >= r.action_limit END) THEN 'action'
            WHEN r.alert_limit IS NOT NULL AND (CASE WHEN r.floor_limit
                THEN r.value < r.alert_limit ELSE r.value >= r.alert_limit END) THEN 'alert'
        END AS excursion_level
    FROM readings r
)
SELECT
    event_id,
    source_record_id AS reading_id,
    occurred_at,
    product_line,
    site,
    payload ->> 'location_id' AS location_id,
    payload ->> 'cleanroom_grade' AS cleanroom_grade,
    payload ->> 'parameter' AS parameter,
    value,
    payload ->> 'unit' AS unit,
    alert_limit,
    action_limit,
    excursion_level,
    lot_id
FROM judged
WHERE excursion_level IS NOT NULL;
COMMENT ON VIEW analytics.environmental_excursion IS
    'Environmental-monitoring readings past their alert or action limit.';
COMMENT ON COLUMN analytics.environmental_excursion.event_id IS 'The reading''s quality event.';
COMMENT ON COLUMN analytics.environmental_excursion.reading_id IS 'The EMS reading number.';
COMMENT ON COLUMN analytics.environmental_excursion.occurred_at IS 'When it was measured, UTC.';
COMMENT ON COLUMN analytics.environmental_excursion.product_line IS 'Product line made in the room.';
COMMENT ON COLUMN analytics.environmental_excursion.site IS 'Site code.';
COMMENT ON COLUMN analytics.environmental_excursion.location_id IS 'Monitoring point.';
COMMENT ON COLUMN analytics.environmental_excursion.cleanroom_grade IS 'EU GMP cleanroom grade (A-D) of the point.';
COMMENT ON COLUMN analytics.environmental_excursion.parameter IS 'What was measured, e.g. particles_0_5um, differential_pressure.';
COMMENT ON COLUMN analytics.environmental_excursion.value IS 'Measured value, in unit.';
COMMENT ON COLUMN analytics.environmental_excursion.unit IS 'Unit of value and limits.';
COMMENT ON COLUMN analytics.environmental_excursion.alert_limit IS 'Alert limit (a floor for differential_pressure, else a ceiling).';
COMMENT ON COLUMN analytics.environmental_excursion.action_limit IS 'Action limit, same direction as alert_limit.';
COMMENT ON COLUMN analytics.environmental_excursion.excursion_level IS 'action when past the action limit, else alert.';
COMMENT ON COLUMN analytics.environmental_excursion.lot_id IS 'The lot in production at the point (grades A and B), when known.';

-- ---- data quality -----------------------------------------------------------------------------
CREATE VIEW analytics.data_quality AS
WITH parked_now AS (
    -- an event's furthest step: a RELEASED or EXPIRED row outranks its PARKED row
    SELECT DISTINCT ON (event_id) *
    FROM qms.parked_event
    WHERE NOT coalesce((event_json ->> 'synthetic')::boolean, false)
    ORDER BY event_id, (status = 'PARKED'), status
)
SELECT 'dead_letter'::text AS source, reason_code AS reason, stage AS state,
       count(*)::integer AS record_count, min(failed_at) AS first_at, max(failed_at) AS last_at
FROM qms.dead_letter
GROUP BY reason_code, stage
UNION ALL
SELECT 'parked', 'missing ' || split_part(ref, ':', 1), p.status,
       count(DISTINCT p.event_id)::integer, min(p.parked_at), max(p.parked_at)
FROM parked_now p, unnest(p.missing_references) AS ref
GROUP BY split_part(ref, ':', 1), p.status;
COMMENT ON VIEW analytics.data_quality IS
    'Dead letters by reason and stage, and parked events by missing master data and state.';
COMMENT ON COLUMN analytics.data_quality.source IS 'dead_letter (qms.dead_letter) or parked (qms.parked_event).';
COMMENT ON COLUMN analytics.data_quality.reason IS 'Dead letters: the reason_code; parked: missing <kind>, e.g. missing lot.';
COMMENT ON COLUMN analytics.data_quality.state IS 'Dead letters: the stage that refused them; parked: PARKED (waiting), RELEASED or EXPIRED.';
COMMENT ON COLUMN analytics.data_quality.record_count IS 'Records (parked: distinct events; one event may lack several kinds).';
COMMENT ON COLUMN analytics.data_quality.first_at IS 'Earliest failure (parked: parking) time, UTC.';
COMMENT ON COLUMN analytics.data_quality.last_at IS 'Latest failure (parked: parking) time, UTC.';
