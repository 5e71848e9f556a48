-- Seed rows of the demo source database `erp`, one block per source system, matching the demo
-- plant in qmsflow/demo/traffic.py (PLANT: suppliers, parts, product lines, sites, equipment,
-- employees and printed names) and the countries and approvals of qmsflow/demo/master_data.py,
-- so CDC golden records resolve the references the demo traffic carries.
--
-- Two disagreements are deliberate; the golden-record stage must surface both on
-- md.conflicts.v1 (tests/integration/test_cdc_source.py asserts it):
--   * supplier SUP-0128: procurement's ASL copy (erp.supplier.asl_status) still says APPROVED,
--     the supplier audit (qms.supplier_approval) made it CONDITIONAL; QMS wins;
--   * equipment EQ-PH-METER-07: the CMMS says CALIBRATED, the QMS says OUT_OF_TOLERANCE after
--     an investigation; the CMMS wins.
-- Every other value that two systems carry agrees.
--
-- Idempotent: every insert skips rows already there (and keeps their edited values); the stack
-- applies this file only while erp.supplier is empty.

-- ------------------------------------------------------------------ ERP
insert into erp.supplier (supplier_id, name, country_code, asl_status, address, updated_at) values
    ('SUP-0017', 'Corrib Precision Moulding',   'IE', 'APPROVED', 'Galway Business Park, Galway',     '2026-01-05T09:00:00Z'),
    ('SUP-0042', 'Northfield Glassworks',       'US', 'APPROVED', '400 Furnace Rd, Millville NJ',     '2026-01-05T09:00:00Z'),
    ('SUP-0055', 'Meridian Elastomers',         'DE', 'APPROVED', 'Industriestrasse 12, Eschweiler',  '2026-01-05T09:00:00Z'),
    ('SUP-0063', 'Halden Electronics',          'NO', 'APPROVED', 'Tistedalsgata 4, Halden',          '2026-01-05T09:00:00Z'),
    ('SUP-0091', 'Keel Wire Products',          'IE', 'APPROVED', 'Kinsale Road, Cork',               '2026-01-05T09:00:00Z'),
    ('SUP-0104', 'Brightwater Biologics',       'US', 'APPROVED', '12 Davis Dr, Durham NC',           '2026-01-05T09:00:00Z'),
    ('SUP-0128', 'Lakeshore Polymer Extrusion', 'US', 'APPROVED', '2200 Shoreline Dr, Kenosha WI',    '2026-01-05T09:00:00Z'),
    ('SUP-0210', 'Harbour Print & Pack',        'IE', 'APPROVED', 'Ringaskiddy, Co. Cork',            '2026-01-05T09:00:00Z')
on conflict do nothing;

insert into erp.material (part_number, description, product_line, base_unit, updated_at) values
    ('PN-10472-B', 'PUMP HOUSING UPPER',          'infusion-pumps',      'EA', '2025-12-01T08:00:00Z'),
    ('PN-10488-A', 'OCCLUSION PRESSURE SENSOR',   'infusion-pumps',      'EA', '2025-12-01T08:00:00Z'),
    ('PN-10515-C', 'PERISTALTIC DRIVE ASSY',      'infusion-pumps',      'EA', '2025-12-01T08:00:00Z'),
    ('PN-10530-A', 'KEYPAD MEMBRANE',             'infusion-pumps',      'EA', '2025-12-01T08:00:00Z'),
    ('PN-20311-D', 'CATHETER SHAFT 5FR',          'catheters',           'EA', '2025-12-01T08:00:00Z'),
    ('PN-20318-A', 'BALLOON 3.0X20MM',            'catheters',           'EA', '2025-12-01T08:00:00Z'),
    ('PN-20342-B', 'LUER HUB',                    'catheters',           'EA', '2025-12-01T08:00:00Z'),
    ('PN-20355-A', 'GUIDEWIRE 0.035IN',           'catheters',           'EA', '2025-12-01T08:00:00Z'),
    ('PN-30105-A', 'VIAL 10ML TYPE I',            'sterile-injectables', 'EA', '2025-12-01T08:00:00Z'),
    ('PN-30112-C', 'STOPPER BROMOBUTYL 20MM',     'sterile-injectables', 'EA', '2025-12-01T08:00:00Z'),
    ('PN-30120-B', 'SEAL ALU FLIP-OFF',           'sterile-injectables', 'EA', '2025-12-01T08:00:00Z'),
    ('PN-30144-A', 'FILLED VIAL 50MG/ML',         'sterile-injectables', 'EA', '2025-12-01T08:00:00Z'),
    ('PN-40207-A', 'TEST CASSETTE',               'diagnostic-kits',     'EA', '2025-12-01T08:00:00Z'),
    ('PN-40219-B', 'BUFFER DILUENT 5ML',          'diagnostic-kits',     'EA', '2025-12-01T08:00:00Z'),
    ('PN-40226-A', 'LATERAL FLOW STRIP',          'diagnostic-kits',     'EA', '2025-12-01T08:00:00Z'),
    ('PN-40233-C', 'KIT CARTON',                  'diagnostic-kits',     'EA', '2025-12-01T08:00:00Z')
on conflict do nothing;

-- Lot ids follow the demo traffic's pattern L<yymm>-<sequence>. Purchased component lots exist
-- only here (goods receipt); lots made in house are in mes.lot too, with the same genealogy.
insert into erp.batch (lot_id, part_number, product_line, plant, supplier_id, stock_status, manufactured_at, parent_lot_ids, updated_at) values
    ('L2601-0001', 'PN-10515-C', 'infusion-pumps',      'BOS1',  'SUP-0063', 'RELEASED',   '2026-01-06T07:30:00Z', '{L2601-0002}',            '2026-01-08T16:00:00Z'),
    ('L2601-0002', 'PN-10488-A', 'infusion-pumps',      'BOS1',  'SUP-0063', 'RELEASED',   '2026-01-05T11:00:00Z', '{}',                      '2026-01-07T10:00:00Z'),
    ('L2601-0003', 'PN-10472-B', 'infusion-pumps',      'BOS1',  'SUP-0017', 'RELEASED',   '2026-01-07T08:15:00Z', '{}',                      '2026-01-09T12:00:00Z'),
    ('L2601-0004', 'PN-20311-D', 'catheters',           'CORK2', 'SUP-0128', 'RELEASED',   '2026-01-06T06:00:00Z', '{L2601-0005}',            '2026-01-08T09:30:00Z'),
    ('L2601-0005', 'PN-20318-A', 'catheters',           'CORK2', 'SUP-0128', 'RELEASED',   '2026-01-05T06:00:00Z', '{}',                      '2026-01-06T15:00:00Z'),
    ('L2601-0006', 'PN-20355-A', 'catheters',           'CORK2', 'SUP-0091', 'QUARANTINE', '2026-01-08T13:45:00Z', '{}',                      '2026-01-09T08:20:00Z'),
    ('L2601-0007', 'PN-30144-A', 'sterile-injectables', 'BOS1',  'SUP-0042', 'RELEASED',   '2026-01-09T05:00:00Z', '{L2601-0008,L2601-0009}', '2026-01-14T17:00:00Z'),
    ('L2601-0008', 'PN-30105-A', 'sterile-injectables', 'BOS1',  'SUP-0042', 'RELEASED',   '2026-01-02T10:00:00Z', '{}',                      '2026-01-04T10:00:00Z'),
    ('L2601-0009', 'PN-30112-C', 'sterile-injectables', 'BOS1',  'SUP-0055', 'RELEASED',   '2026-01-02T12:00:00Z', '{}',                      '2026-01-04T11:00:00Z'),
    ('L2601-0010', 'PN-30144-A', 'sterile-injectables', 'CORK2', 'SUP-0042', 'QUARANTINE', '2026-01-12T05:00:00Z', '{}',                      '2026-01-12T05:00:00Z'),
    ('L2601-0011', 'PN-40233-C', 'diagnostic-kits',     'BOS1',  'SUP-0210', 'RELEASED',   '2026-01-10T09:00:00Z', '{L2601-0012}',            '2026-01-12T14:00:00Z'),
    ('L2601-0012', 'PN-40226-A', 'diagnostic-kits',     'BOS1',  'SUP-0104', 'RELEASED',   '2026-01-03T09:00:00Z', '{}',                      '2026-01-05T09:00:00Z'),
    ('L2601-0013', 'PN-40233-C', 'diagnostic-kits',     'CORK2', 'SUP-0210', 'RELEASED',   '2026-01-11T09:00:00Z', '{}',                      '2026-01-13T14:00:00Z')
on conflict do nothing;

-- ------------------------------------------------------------------ PLM
insert into plm.part (part_number, revision, description, product_line, lifecycle_status, updated_at) values
    ('PN-10472-B', 'B', 'pump housing, upper',         'infusion-pumps',      'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-10488-A', 'A', 'occlusion pressure sensor',   'infusion-pumps',      'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-10515-C', 'C', 'peristaltic drive assembly',  'infusion-pumps',      'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-10530-A', 'A', 'keypad membrane',             'infusion-pumps',      'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-20311-D', 'D', 'catheter shaft 5Fr',          'catheters',           'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-20318-A', 'A', 'balloon 3.0 x 20 mm',         'catheters',           'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-20342-B', 'B', 'luer hub',                    'catheters',           'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-20355-A', 'A', 'guidewire 0.035 in',          'catheters',           'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-30105-A', 'A', 'vial 10 mL type I glass',     'sterile-injectables', 'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-30112-C', 'C', 'bromobutyl stopper 20 mm',    'sterile-injectables', 'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-30120-B', 'B', 'aluminium flip-off seal',     'sterile-injectables', 'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-30144-A', 'A', 'filled vial 50 mg/mL',        'sterile-injectables', 'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-40207-A', 'A', 'test cassette',               'diagnostic-kits',     'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-40219-B', 'B', 'buffer diluent 5 mL',         'diagnostic-kits',     'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-40226-A', 'A', 'lateral flow strip',          'diagnostic-kits',     'RELEASED', '2025-11-20T10:00:00Z'),
    ('PN-40233-C', 'C', 'kit carton',                  'diagnostic-kits',     'RELEASED', '2025-11-20T10:00:00Z')
on conflict do nothing;

insert into plm.customer_spec (spec_id, customer, part_number, characteristic, lower_limit, upper_limit, unit, revision, updated_at) values
    ('CS-0001', 'Mercy Health Systems',  'PN-10515-C', 'flow rate accuracy',    -5.0,  5.0,   '%',    'B', '2025-11-01T09:00:00Z'),
    ('CS-0002', 'Mercy Health Systems',  'PN-10488-A', 'occlusion alarm limit', 60,    100,   'kPa',  'A', '2025-11-01T09:00:00Z'),
    ('CS-0003', 'Atlantic Cardiology',   'PN-20311-D', 'outer diameter',        1.640, 1.700, 'mm',   'D', '2025-10-15T09:00:00Z'),
    ('CS-0004', 'Atlantic Cardiology',   'PN-20318-A', 'burst pressure',        14,    null,  'atm',  'A', '2025-10-15T09:00:00Z'),
    ('CS-0005', 'NovaPharm Contract',    'PN-30144-A', 'assay',                 95.0,  105.0, '%',    'C', '2025-12-01T09:00:00Z'),
    ('CS-0006', 'NovaPharm Contract',    'PN-30144-A', 'fill volume',           10.10, 10.40, 'mL',   'C', '2025-12-01T09:00:00Z'),
    ('CS-0007', 'Clearview Diagnostics', 'PN-40226-A', 'flow time',             null,  180,   's',    'A', '2025-09-20T09:00:00Z'),
    ('CS-0008', 'Clearview Diagnostics', 'PN-40219-B', 'pH',                    7.2,   7.6,   '[pH]', 'B', '2025-09-20T09:00:00Z')
on conflict do nothing;

-- ------------------------------------------------------------------ MES
insert into mes.lot (lot_id, part_number, site, work_order, manufactured_at, parent_lot_ids, updated_at) values
    ('L2601-0001', 'PN-10515-C', 'BOS1',  'WO-BOS1-26-0011',  '2026-01-06T07:30:00Z', '{L2601-0002}',            '2026-01-06T15:10:00Z'),
    ('L2601-0004', 'PN-20311-D', 'CORK2', 'WO-CORK2-26-0004', '2026-01-06T06:00:00Z', '{L2601-0005}',            '2026-01-06T14:00:00Z'),
    ('L2601-0007', 'PN-30144-A', 'BOS1',  'WO-BOS1-26-0019',  '2026-01-09T05:00:00Z', '{L2601-0008,L2601-0009}', '2026-01-09T13:30:00Z'),
    ('L2601-0010', 'PN-30144-A', 'CORK2', 'WO-CORK2-26-0012', '2026-01-12T05:00:00Z', '{}',                      '2026-01-12T13:00:00Z'),
    ('L2601-0011', 'PN-40233-C', 'BOS1',  'WO-BOS1-26-0023',  '2026-01-10T09:00:00Z', '{L2601-0012}',            '2026-01-10T17:00:00Z'),
    ('L2601-0013', 'PN-40233-C', 'CORK2', 'WO-CORK2-26-0015', '2026-01-11T09:00:00Z', '{}',                      '2026-01-11T17:00:00Z')
on conflict do nothing;

-- ------------------------------------------------------------------ CMMS
insert into cmms.asset (equipment_id, description, site, calibration_status, calibration_due, updated_at) values
    ('EQ-AUTOCLAVE-03', 'steam sterilizer, filling suite',   'BOS1',  'CALIBRATED', '2026-09-30', '2025-10-01T08:00:00Z'),
    ('EQ-FILLER-01',    'aseptic vial filling line',         'BOS1',  'CALIBRATED', '2026-05-15', '2025-11-15T08:00:00Z'),
    ('EQ-HPLC-04',      'HPLC, QC laboratory',               'BOS1',  'CALIBRATED', '2026-04-20', '2025-10-20T08:00:00Z'),
    ('EQ-FLOWTEST-02',  'infusion flow-rate test bench',     'BOS1',  'CALIBRATED', '2026-06-01', '2025-12-01T08:00:00Z'),
    ('EQ-TORQUE-07',    'torque driver, pump assembly',      'BOS1',  'DUE',        '2026-02-10', '2025-11-10T08:00:00Z'),
    ('EQ-BALANCE-11',   'analytical balance, kit fill',      'BOS1',  'CALIBRATED', '2026-03-05', '2025-12-05T08:00:00Z'),
    ('EQ-AUTOCLAVE-01', 'steam sterilizer, component prep',  'CORK2', 'CALIBRATED', '2026-08-31', '2025-09-01T08:00:00Z'),
    ('EQ-LYO-02',       'freeze dryer',                      'CORK2', 'CALIBRATED', '2026-10-15', '2025-10-15T08:00:00Z'),
    ('EQ-PH-METER-07',  'pH meter, buffer preparation',      'CORK2', 'CALIBRATED', '2026-02-28', '2025-11-28T08:00:00Z'),
    ('EQ-EXTRUDER-05',  'catheter shaft extruder',           'CORK2', 'CALIBRATED', '2026-06-20', '2025-12-20T08:00:00Z'),
    ('EQ-TENSILE-02',   'tensile tester, bond strength',     'CORK2', 'CALIBRATED', '2026-05-30', '2025-11-30T08:00:00Z'),
    ('EQ-LASERMIC-03',  'laser micrometer, shaft diameter',  'CORK2', 'CALIBRATED', '2026-06-12', '2025-12-12T08:00:00Z'),
    ('EQ-READER-06',    'lateral flow strip reader',         'CORK2', 'CALIBRATED', '2026-04-02', '2025-10-02T08:00:00Z')
on conflict do nothing;

-- ------------------------------------------------------------------ QMS
insert into qms.supplier_approval (supplier_id, approval_status, last_audit_id, updated_at) values
    ('SUP-0017', 'APPROVED',    'AUD-2025-031', '2025-09-12T14:00:00Z'),
    ('SUP-0042', 'APPROVED',    'AUD-2025-027', '2025-08-21T14:00:00Z'),
    ('SUP-0055', 'APPROVED',    'AUD-2025-019', '2025-06-30T14:00:00Z'),
    ('SUP-0063', 'APPROVED',    'AUD-2025-034', '2025-10-02T14:00:00Z'),
    ('SUP-0091', 'APPROVED',    'AUD-2025-022', '2025-07-15T14:00:00Z'),
    ('SUP-0104', 'APPROVED',    'AUD-2025-012', '2025-05-08T14:00:00Z'),
    ('SUP-0128', 'CONDITIONAL', 'AUD-2025-041', '2025-12-18T14:00:00Z'),  -- ERP still APPROVED
    ('SUP-0210', 'APPROVED',    'AUD-2025-009', '2025-04-10T14:00:00Z')
on conflict do nothing;

insert into qms.equipment_status (equipment_id, calibration_status, investigation_id, updated_at) values
    ('EQ-AUTOCLAVE-03', 'CALIBRATED',       null,            '2025-10-01T09:00:00Z'),
    ('EQ-FILLER-01',    'CALIBRATED',       null,            '2025-11-15T09:00:00Z'),
    ('EQ-HPLC-04',      'CALIBRATED',       null,            '2025-10-20T09:00:00Z'),
    ('EQ-FLOWTEST-02',  'CALIBRATED',       null,            '2025-12-01T09:00:00Z'),
    ('EQ-TORQUE-07',    'DUE',              null,            '2025-11-10T09:00:00Z'),
    ('EQ-BALANCE-11',   'CALIBRATED',       null,            '2025-12-05T09:00:00Z'),
    ('EQ-AUTOCLAVE-01', 'CALIBRATED',       null,            '2025-09-01T09:00:00Z'),
    ('EQ-LYO-02',       'CALIBRATED',       null,            '2025-10-15T09:00:00Z'),
    ('EQ-PH-METER-07',  'OUT_OF_TOLERANCE', 'INV-2026-0007', '2026-01-14T11:30:00Z'),  -- CMMS still CALIBRATED
    ('EQ-EXTRUDER-05',  'CALIBRATED',       null,            '2025-12-20T09:00:00Z'),
    ('EQ-TENSILE-02',   'CALIBRATED',       null,            '2025-11-30T09:00:00Z'),
    ('EQ-LASERMIC-03',  'CALIBRATED',       null,            '2025-12-12T09:00:00Z'),
    ('EQ-READER-06',    'CALIBRATED',       null,            '2025-10-02T09:00:00Z')
on conflict do nothing;

-- Roles grant signature authority (qmsflow/config/signature_rules.toml).
insert into qms.user_account (employee_id, username, roles, enabled, updated_at) values
    ('E1001', 'mokafor',     '{qa_approver,qa_manager}',     true, '2026-01-02T09:30:00Z'),
    ('E1002', 'dwhitcombe',  '{production_supervisor}',      true, '2026-01-02T09:30:00Z'),
    ('E1003', 'praman',      '{lab_analyst,lab_reviewer}',   true, '2026-01-02T09:30:00Z'),
    ('E1004', 'jcastellano', '{qa_engineer,capa_owner}',     true, '2026-01-02T09:30:00Z'),
    ('E1005', 'hkowalski',   '{qa_engineer}',                true, '2026-01-02T09:30:00Z'),
    ('E2001', 'sbyrne',      '{qa_approver,qa_manager}',     true, '2026-01-02T09:30:00Z'),
    ('E2002', 'cwalsh',      '{production_supervisor}',      true, '2026-01-02T09:30:00Z'),
    ('E2003', 'anolan',      '{lab_analyst}',                true, '2026-01-02T09:30:00Z'),
    ('E2004', 'tzielinski',  '{qa_engineer,capa_owner}',     true, '2026-01-02T09:30:00Z'),
    ('E2005', 'gmurphy',     '{lab_reviewer,qa_engineer}',   true, '2026-01-02T09:30:00Z')
on conflict do nothing;

insert into qms.customer_requirement (spec_id, customer, part_number, characteristic, lower_limit, upper_limit, unit, revision, updated_at) values
    ('CS-0001', 'Mercy Health Systems',  'PN-10515-C', 'flow rate accuracy', -5.0,  5.0,   '%',  'B', '2025-11-03T09:00:00Z'),
    ('CS-0003', 'Atlantic Cardiology',   'PN-20311-D', 'outer diameter',     1.640, 1.700, 'mm', 'D', '2025-10-16T09:00:00Z'),
    ('CS-0005', 'NovaPharm Contract',    'PN-30144-A', 'assay',              95.0,  105.0, '%',  'C', '2025-12-02T09:00:00Z'),
    ('CS-0006', 'NovaPharm Contract',    'PN-30144-A', 'fill volume',        10.10, 10.40, 'mL', 'C', '2025-12-02T09:00:00Z')
on conflict do nothing;

-- ------------------------------------------------------------------ HR
insert into hr.employee (employee_id, display_name, site, active, updated_at) values
    ('E1001', 'Maria Okafor',     'BOS1',  true, '2026-01-02T09:00:00Z'),
    ('E1002', 'Daniel Whitcombe', 'BOS1',  true, '2026-01-02T09:00:00Z'),
    ('E1003', 'Priya Raman',      'BOS1',  true, '2026-01-02T09:00:00Z'),
    ('E1004', 'James Castellano', 'BOS1',  true, '2026-01-02T09:00:00Z'),
    ('E1005', 'Hannah Kowalski',  'BOS1',  true, '2026-01-02T09:00:00Z'),
    ('E2001', 'Siobhan Byrne',    'CORK2', true, '2026-01-02T09:00:00Z'),
    ('E2002', 'Ciaran Walsh',     'CORK2', true, '2026-01-02T09:00:00Z'),
    ('E2003', 'Aoife Nolan',      'CORK2', true, '2026-01-02T09:00:00Z'),
    ('E2004', 'Tomasz Zielinski', 'CORK2', true, '2026-01-02T09:00:00Z'),
    ('E2005', 'Grace Murphy',     'CORK2', true, '2026-01-02T09:00:00Z')
on conflict do nothing;

-- ------------------------------------------------------------------ LMS
-- Course codes are those signature_rules.toml requires; expires_at null: no expiry.
insert into lms.training_transcript (employee_id, trainings, updated_at) values
    ('E1001', '[{"course": "SOP-QA-011", "completed_at": "2025-03-10T10:00:00Z", "expires_at": "2027-03-10T10:00:00Z"},
                {"course": "SOP-QA-015", "completed_at": "2025-03-11T10:00:00Z", "expires_at": "2027-03-11T10:00:00Z"},
                {"course": "SOP-QA-020", "completed_at": "2025-04-02T10:00:00Z", "expires_at": "2027-04-02T10:00:00Z"}]', '2025-04-02T10:05:00Z'),
    ('E1002', '[{"course": "SOP-QA-011", "completed_at": "2025-06-15T10:00:00Z", "expires_at": "2026-06-15T10:00:00Z"}]', '2025-06-15T10:05:00Z'),
    ('E1003', '[{"course": "SOP-LAB-004", "completed_at": "2025-02-20T10:00:00Z", "expires_at": "2027-02-20T10:00:00Z"}]', '2025-02-20T10:05:00Z'),
    ('E1004', '[{"course": "SOP-QA-011", "completed_at": "2025-05-05T10:00:00Z", "expires_at": "2027-05-05T10:00:00Z"},
                {"course": "SOP-QA-020", "completed_at": "2025-05-06T10:00:00Z", "expires_at": null}]', '2025-05-06T10:05:00Z'),
    ('E1005', '[{"course": "SOP-QA-011", "completed_at": "2025-07-01T10:00:00Z", "expires_at": "2027-07-01T10:00:00Z"}]', '2025-07-01T10:05:00Z'),
    ('E2001', '[{"course": "SOP-QA-011", "completed_at": "2025-03-12T10:00:00Z", "expires_at": "2027-03-12T10:00:00Z"},
                {"course": "SOP-QA-015", "completed_at": "2025-03-13T10:00:00Z", "expires_at": "2027-03-13T10:00:00Z"},
                {"course": "SOP-QA-020", "completed_at": "2025-03-14T10:00:00Z", "expires_at": "2027-03-14T10:00:00Z"}]', '2025-03-14T10:05:00Z'),
    ('E2002', '[{"course": "SOP-QA-011", "completed_at": "2025-01-20T10:00:00Z", "expires_at": "2026-01-20T10:00:00Z"}]', '2025-01-20T10:05:00Z'),
    ('E2003', '[{"course": "SOP-LAB-004", "completed_at": "2025-08-08T10:00:00Z", "expires_at": "2027-08-08T10:00:00Z"}]', '2025-08-08T10:05:00Z'),
    ('E2004', '[{"course": "SOP-QA-011", "completed_at": "2025-05-06T10:00:00Z", "expires_at": "2027-05-06T10:00:00Z"},
                {"course": "SOP-QA-020", "completed_at": "2025-05-07T10:00:00Z", "expires_at": null}]', '2025-05-07T10:05:00Z'),
    ('E2005', '[{"course": "SOP-LAB-004", "completed_at": "2025-07-02T10:00:00Z", "expires_at": "2027-07-02T10:00:00Z"},
                {"course": "SOP-QA-011", "completed_at": "2025-07-03T10:00:00Z", "expires_at": "2027-07-03T10:00:00Z"}]', '2025-07-03T10:05:00Z')
on conflict do nothing;

-- ------------------------------------------------------------------ PORTAL
insert into portal.supplier_scorecard (supplier_id, score, period, updated_at) values
    ('SUP-0017', 94.5, '2025-Q4', '2026-01-06T07:00:00Z'),
    ('SUP-0042', 97.0, '2025-Q4', '2026-01-06T07:00:00Z'),
    ('SUP-0055', 91.2, '2025-Q4', '2026-01-06T07:00:00Z'),
    ('SUP-0063', 88.7, '2025-Q4', '2026-01-06T07:00:00Z'),
    ('SUP-0091', 83.4, '2025-Q4', '2026-01-06T07:00:00Z'),
    ('SUP-0104', 95.8, '2025-Q4', '2026-01-06T07:00:00Z'),
    ('SUP-0128', 72.1, '2025-Q4', '2026-01-06T07:00:00Z'),
    ('SUP-0210', 90.0, '2025-Q4', '2026-01-06T07:00:00Z')
on conflict do nothing;
