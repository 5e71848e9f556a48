-- Retention (qmsflow/config/retention.toml, `qmsflow retention run`): regulated record types
-- are moved here before they leave `qms`, in the same transaction, and kept (21 CFR 211.180,
-- 11.10(c)). Same columns as the qms table, plus when the row was archived. The archive is
-- insert-only for every role; the audit trail is never archived nor pruned.

CREATE SCHEMA IF NOT EXISTS archive;
COMMENT ON SCHEMA archive IS 'Regulated records past their retention in qms, kept unchanged.';

CREATE TABLE archive.quality_event (LIKE qms.quality_event INCLUDING DEFAULTS,
                                    archived_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE archive.quarantine_command (LIKE qms.quarantine_command INCLUDING DEFAULTS,
                                         archived_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE archive.escalation (LIKE qms.escalation INCLUDING DEFAULTS,
                                 archived_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE archive.signature_check (LIKE qms.signature_check INCLUDING DEFAULTS,
                                      archived_at timestamptz NOT NULL DEFAULT now());
COMMENT ON TABLE archive.quality_event IS 'qms.quality_event rows past retention; insert-only.';
COMMENT ON TABLE archive.quarantine_command IS 'qms.quarantine_command rows past retention; insert-only.';
COMMENT ON TABLE archive.escalation IS 'qms.escalation rows past retention; insert-only.';
COMMENT ON TABLE archive.signature_check IS 'qms.signature_check rows past retention; insert-only.';

CREATE TRIGGER quality_event_append_only BEFORE UPDATE OR DELETE ON archive.quality_event
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER quarantine_command_append_only BEFORE UPDATE OR DELETE ON archive.quarantine_command
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER escalation_append_only BEFORE UPDATE OR DELETE ON archive.escalation
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER signature_check_append_only BEFORE UPDATE OR DELETE ON archive.signature_check
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
