-- Synthetic transactions (qmsflow/canary.py): one row per canary run and path, written by the
-- canary itself, not by the sink. A path is healthy when its output arrived within the
-- canary's timeout; latency_ms is from the send to the moment the canary saw the output.
-- Operations data: no analyst view reads it, and the synthetic events a run sends are left out
-- of every analytics view by their `synthetic` flag.
CREATE TABLE qms.canary_check (
    run_id      uuid        NOT NULL,
    path        text        NOT NULL
        CHECK (path IN ('ingest-postgres', 'quarantine-hold', 'quarantine-release')),
    event_id    uuid        NOT NULL,
    lot_id      text        NOT NULL,
    sent_at     timestamptz NOT NULL,
    healthy     boolean     NOT NULL,
    latency_ms  bigint      CHECK (latency_ms >= 0),
    detail      text        NOT NULL,
    checked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, path),
    CHECK (healthy = (latency_ms IS NOT NULL))
);
CREATE INDEX canary_check_by_path ON qms.canary_check (path, checked_at);
COMMENT ON TABLE qms.canary_check IS
    'Canary runs: per path, whether a synthetic event''s output arrived in time, and how fast.';
GRANT SELECT, INSERT ON qms.canary_check TO qmsflow_writer;
