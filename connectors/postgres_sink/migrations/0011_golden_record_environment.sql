-- Master data per environment. Environments (topic prefixes: production's '' beside a
-- validation or test prefix) may share one sink database; keyed by kind and entity id alone,
-- the golden tables let one environment's master data overwrite another's (the same supplier
-- id from a validation run replacing production's row, or its conflict being dropped as a
-- "duplicate" of production's). A GxP record must say which system it belongs to, so the
-- environment becomes part of each golden table's key rather than a filter on lineage.
--
-- `environment` is the topic prefix the md topic was read under, taken by the sink from the
-- record's own topic (connectors/postgres_sink/rows.py), so it cannot disagree with the
-- lineage: the CHECK holds every row to that. Existing rows get it from their kafka_topic.

ALTER TABLE qms.golden_record ADD COLUMN environment text;
UPDATE qms.golden_record SET environment = regexp_replace(kafka_topic, 'md\.[a-z-]+\.v1$', '');
ALTER TABLE qms.golden_record
    ALTER COLUMN environment SET NOT NULL,
    ADD CONSTRAINT golden_record_environment_lineage CHECK (starts_with(kafka_topic, environment)),
    DROP CONSTRAINT golden_record_pkey,
    ADD PRIMARY KEY (environment, kind, entity_id);
DROP INDEX qms.golden_record_live;
CREATE INDEX golden_record_live ON qms.golden_record (environment, kind, updated_at)
    WHERE NOT deleted;
COMMENT ON COLUMN qms.golden_record.environment IS
    'Topic prefix of the md topic the row came from ('''' = unprefixed, production).';

ALTER TABLE qms.golden_record_history ADD COLUMN environment text;
UPDATE qms.golden_record_history
    SET environment = regexp_replace(kafka_topic, 'md\.history\.v1$', '');
ALTER TABLE qms.golden_record_history
    ALTER COLUMN environment SET NOT NULL,
    ADD CONSTRAINT golden_record_history_environment_lineage
        CHECK (starts_with(kafka_topic, environment)),
    DROP CONSTRAINT golden_record_history_pkey,
    ADD PRIMARY KEY (environment, kind, entity_id, version);
DROP INDEX qms.golden_record_history_current;
CREATE INDEX golden_record_history_current
    ON qms.golden_record_history (environment, kind, entity_id) WHERE valid_to IS NULL;
COMMENT ON COLUMN qms.golden_record_history.environment IS
    'Topic prefix of md.history.v1 the row came from ('''' = unprefixed, production).';

-- conflict_id is a digest of the disagreement's content, the same in every environment
ALTER TABLE qms.md_conflict ADD COLUMN environment text;
UPDATE qms.md_conflict SET environment = regexp_replace(kafka_topic, 'md\.conflicts\.v1$', '');
ALTER TABLE qms.md_conflict
    ALTER COLUMN environment SET NOT NULL,
    ADD CONSTRAINT md_conflict_environment_lineage CHECK (starts_with(kafka_topic, environment)),
    DROP CONSTRAINT md_conflict_pkey,
    ADD PRIMARY KEY (environment, conflict_id);
DROP INDEX qms.md_conflict_entity;
CREATE INDEX md_conflict_entity ON qms.md_conflict (environment, kind, entity_id, detected_at);
COMMENT ON COLUMN qms.md_conflict.environment IS
    'Topic prefix of md.conflicts.v1 the row came from ('''' = unprefixed, production).';
