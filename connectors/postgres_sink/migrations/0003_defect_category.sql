-- quality.events.v1-value v2 adds the canonical defect category (data dictionary): the one word
-- analysts group by when QMS says "defect", MES "yield loss" and LIMS "OOS". Rows loaded from
-- v1 events keep NULL, as v1 readers would.
ALTER TABLE qms.quality_event ADD COLUMN defect_category text;
CREATE INDEX quality_event_defect_category ON qms.quality_event (defect_category, occurred_at)
    WHERE defect_category IS NOT NULL;
COMMENT ON COLUMN qms.quality_event.defect_category IS
    'Canonical defect category (nonconforming_product, material_damage, dimensional, …); NULL '
    'for conforming results and record types without a defect.';
