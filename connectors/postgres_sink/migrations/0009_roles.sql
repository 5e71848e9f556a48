-- Least privilege (DESIGN §5, 21 CFR 11.10(d)): NOLOGIN group roles, granted by a deployment to
-- its login users (README: Roles). The migrating login owns every object and needs CREATEROLE.
--   qmsflow_writer  the sink: SELECT + INSERT on the qms tables it loads, UPDATE only on the
--                   upserted ones and its offsets; INSERT + SELECT on the audit trail, never
--                   UPDATE or DELETE (and the trigger refuses those to every role anyway).
--   qmsflow_analyst USAGE + SELECT on schema analytics only. The views run with their owner's
--                   rights, so analysts read qms through them and never directly.
-- Roles are cluster-wide: created only when missing, so a second database can migrate too.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'qmsflow_writer') THEN
        CREATE ROLE qmsflow_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'qmsflow_analyst') THEN
        CREATE ROLE qmsflow_analyst NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE qmsflow_writer IS 'qmsflow sink: inserts into qms and audit; no UPDATE/DELETE on audit.';
COMMENT ON ROLE qmsflow_analyst IS 'Analysts: SELECT on schema analytics only.';

GRANT USAGE ON SCHEMA qms, audit TO qmsflow_writer;
GRANT SELECT, INSERT ON qms.quality_event, qms.dead_letter, qms.sink_offsets, qms.incident,
    qms.incident_member, qms.alert, qms.quarantine_command, qms.escalation, qms.parked_event,
    qms.golden_record, qms.golden_record_history, qms.md_conflict, qms.signature_check
    TO qmsflow_writer;
-- only the upserted tables (rows.Upsert) and the sink's own offsets are ever updated
GRANT UPDATE ON qms.sink_offsets, qms.incident, qms.golden_record, qms.golden_record_history
    TO qmsflow_writer;
GRANT SELECT, INSERT ON audit.record_change TO qmsflow_writer;
-- tables of later migrations: insert-only by default; a migration adding an upserted table
-- grants its UPDATE itself
ALTER DEFAULT PRIVILEGES IN SCHEMA qms GRANT SELECT, INSERT ON TABLES TO qmsflow_writer;

GRANT USAGE ON SCHEMA analytics TO qmsflow_analyst;
GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO qmsflow_analyst;
ALTER DEFAULT PRIVILEGES IN SCHEMA analytics GRANT SELECT ON TABLES TO qmsflow_analyst;
