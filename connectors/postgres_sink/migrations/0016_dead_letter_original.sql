-- Dead letters embed a bounded original (quality.dlq.v1 schema v2). A poison record close to the
-- broker's maximum message size made a dead letter larger than that limit, which could not be
-- published, so the worker and the sink crashed on every restart. Past
-- QMSFLOW_DEAD_LETTER_MAX_BYTES (value plus headers) a dead letter keeps the original value's
-- length, its sha256 and its first bytes; `qmsflow dlq replay` re-reads the whole original from
-- source_topic, source_partition and source_offset and checks it against value_digest (the
-- record's value_sha256).
--
-- Rows loaded before this migration hold whole originals: their length and sha256 are computed
-- from original_value, nothing truncated, nothing dropped. No CHECK refuses a row here: the sink
-- must always be able to store a dead letter (connectors/postgres_sink/rows.py clamps instead).

ALTER TABLE qms.dead_letter ADD COLUMN value_length bigint;
ALTER TABLE qms.dead_letter ADD COLUMN value_digest text;
ALTER TABLE qms.dead_letter ADD COLUMN value_truncated boolean NOT NULL DEFAULT false;
ALTER TABLE qms.dead_letter ADD COLUMN headers_dropped integer NOT NULL DEFAULT 0;
UPDATE qms.dead_letter
SET value_length = octet_length(original_value),
    value_digest = encode(sha256(original_value), 'hex')
WHERE original_value IS NOT NULL;

COMMENT ON COLUMN qms.dead_letter.original_value IS
    'The original value bytes: untouched, or only its first 1024 bytes when value_truncated.';
COMMENT ON COLUMN qms.dead_letter.headers IS
    'The original headers in order, [{key, value (hex) or null}]; the last headers_dropped are left out.';
COMMENT ON COLUMN qms.dead_letter.value_length IS
    'Length in bytes of the whole original value; null for a tombstone.';
COMMENT ON COLUMN qms.dead_letter.value_digest IS
    'Lowercase hex sha256 of the whole original value (value_sha256 in quality.dlq.v1); null for a tombstone.';
COMMENT ON COLUMN qms.dead_letter.value_truncated IS
    'True when original_value is only the first bytes of an original larger than the dead-letter limit.';
COMMENT ON COLUMN qms.dead_letter.headers_dropped IS
    'How many of the original''s last headers did not fit the dead-letter limit and are not in headers.';
