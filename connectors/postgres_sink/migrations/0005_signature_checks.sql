-- Electronic-signature verdicts (21 CFR 11.10(g), 11.50): one row per signed quality event,
-- checked against the signer's employee golden record. Invalid signatures are flagged here and
-- the event itself still flows: qmsflow reports, it never drops.

CREATE TABLE qms.signature_check (
    check_id         uuid PRIMARY KEY,                 -- uuid5 of event_id
    event_id         uuid        NOT NULL,             -- qms.quality_event.event_id
    event_type       text        NOT NULL,
    source_system    text        NOT NULL,
    source_record_id text        NOT NULL,
    product_line     text        NOT NULL,
    signer_id        text        NOT NULL,
    printed_name     text        NOT NULL,
    meaning          text        NOT NULL,
    signed_at        timestamptz NOT NULL,
    status           text        NOT NULL CHECK (status IN ('valid', 'invalid')),
    problems         text[]      NOT NULL,             -- each failed check, in words
    checked_at       timestamptz NOT NULL,             -- the event's recorded_at (event time)
    kafka_topic      text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    loaded_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX signature_check_event ON qms.signature_check (event_id);
CREATE INDEX signature_check_invalid ON qms.signature_check (checked_at) WHERE status = 'invalid';
COMMENT ON TABLE qms.signature_check IS
    'The verdict on each signed quality event''s electronic signature; insert-only.';
