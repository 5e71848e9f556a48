-- Seed rows of the demo source database `erp`, matching the demo plant in
-- qmsflow/demo/traffic.py (PLANT): its suppliers, parts, product lines, sites, equipment and
-- employees, so CDC master data resolves the references the demo traffic carries.
-- Idempotent: every insert skips rows already there (and keeps their edited values).

insert into supplier (supplier_id, name, country, approval_status, address, updated_at) values
    ('SUP-0017', 'Corrib Precision Moulding',   'IE', 'approved',    'Galway Business Park, Galway',       '2026-01-05T09:00:00Z'),
    ('SUP-0042', 'Northfield Glassworks',       'US', 'approved',    '400 Furnace Rd, Millville NJ',       '2026-01-05T09:00:00Z'),
    ('SUP-0055', 'Meridian Elastomers',         'DE', 'approved',    'Industriestrasse 12, Eschweiler',    '2026-01-05T09:00:00Z'),
    ('SUP-0063', 'Halden Electronics',          'NO', 'approved',    'Tistedalsgata 4, Halden',            '2026-01-05T09:00:00Z'),
    ('SUP-0091', 'Keel Wire Products',          'US', 'conditional', '18 Harbor St, Fall River MA',        '2026-01-05T09:00:00Z'),
    ('SUP-0104', 'Brightwater Biologics',       'GB', 'approved',    'Unit 7, Abingdon Science Park',      '2026-01-05T09:00:00Z'),
    ('SUP-0128', 'Lakeshore Polymer Extrusion', 'US', 'approved',    '2200 Shoreline Dr, Kenosha WI',      '2026-01-05T09:00:00Z'),
    ('SUP-0210', 'Harbour Print & Pack',        'IE', 'approved',    'Ringaskiddy, Co. Cork',              '2026-01-05T09:00:00Z')
on conflict do nothing;

insert into part (part_number, revision, description, product_line, lifecycle_status, supplier_id) values
    ('PN-10472-B', 'B', 'pump housing, upper',         'infusion-pumps',      'released', 'SUP-0017'),
    ('PN-10488-A', 'A', 'occlusion pressure sensor',   'infusion-pumps',      'released', 'SUP-0063'),
    ('PN-10515-C', 'C', 'peristaltic drive assembly',  'infusion-pumps',      'released', 'SUP-0063'),
    ('PN-10530-A', 'A', 'keypad membrane',             'infusion-pumps',      'released', 'SUP-0017'),
    ('PN-20311-D', 'D', 'catheter shaft 5Fr',          'catheters',           'released', 'SUP-0128'),
    ('PN-20318-A', 'A', 'balloon 3.0 x 20 mm',         'catheters',           'released', 'SUP-0128'),
    ('PN-20342-B', 'B', 'luer hub',                    'catheters',           'released', 'SUP-0017'),
    ('PN-20355-A', 'A', 'guidewire 0.035 in',          'catheters',           'released', 'SUP-0091'),
    ('PN-30105-A', 'A', 'vial 10 mL type I glass',     'sterile-injectables', 'released', 'SUP-0042'),
    ('PN-30112-C', 'C', 'bromobutyl stopper 20 mm',    'sterile-injectables', 'released', 'SUP-0055'),
    ('PN-30120-B', 'B', 'aluminium flip-off seal',     'sterile-injectables', 'released', 'SUP-0055'),
    ('PN-30144-A', 'A', 'filled vial 50 mg/mL',        'sterile-injectables', 'released', 'SUP-0042'),
    ('PN-40207-A', 'A', 'test cassette',               'diagnostic-kits',     'released', 'SUP-0017'),
    ('PN-40219-B', 'B', 'buffer diluent 5 mL',         'diagnostic-kits',     'released', 'SUP-0104'),
    ('PN-40226-A', 'A', 'lateral flow strip',          'diagnostic-kits',     'released', 'SUP-0104'),
    ('PN-40233-C', 'C', 'kit carton',                  'diagnostic-kits',     'released', 'SUP-0210')
on conflict do nothing;

insert into bom (parent_part, child_part, quantity) values
    ('PN-10515-C', 'PN-10488-A', 1),
    ('PN-10472-B', 'PN-10530-A', 1),
    ('PN-20311-D', 'PN-20318-A', 1),
    ('PN-20311-D', 'PN-20342-B', 1),
    ('PN-30144-A', 'PN-30105-A', 1),
    ('PN-30144-A', 'PN-30112-C', 1),
    ('PN-30144-A', 'PN-30120-B', 1),
    ('PN-40233-C', 'PN-40207-A', 25),
    ('PN-40233-C', 'PN-40219-B', 25),
    ('PN-40207-A', 'PN-40226-A', 1)
on conflict do nothing;

-- Lot ids follow the demo traffic's pattern L<yymm>-<sequence>; each line has lots at every
-- site that makes it, finished lots built from component lots (see lot_genealogy).
insert into lot (lot_id, part_number, product_line, site, supplier_id, status, manufactured_at, updated_at) values
    ('L2601-0001', 'PN-10515-C', 'infusion-pumps',      'BOS1',  'SUP-0063', 'released',    '2026-01-06T07:30:00Z', '2026-01-08T16:00:00Z'),
    ('L2601-0002', 'PN-10488-A', 'infusion-pumps',      'BOS1',  'SUP-0063', 'released',    '2026-01-05T11:00:00Z', '2026-01-07T10:00:00Z'),
    ('L2601-0003', 'PN-10472-B', 'infusion-pumps',      'BOS1',  'SUP-0017', 'released',    '2026-01-07T08:15:00Z', '2026-01-09T12:00:00Z'),
    ('L2601-0004', 'PN-20311-D', 'catheters',           'CORK2', 'SUP-0128', 'released',    '2026-01-06T06:00:00Z', '2026-01-08T09:30:00Z'),
    ('L2601-0005', 'PN-20318-A', 'catheters',           'CORK2', 'SUP-0128', 'released',    '2026-01-05T06:00:00Z', '2026-01-06T15:00:00Z'),
    ('L2601-0006', 'PN-20355-A', 'catheters',           'CORK2', 'SUP-0091', 'quarantined', '2026-01-08T13:45:00Z', '2026-01-09T08:20:00Z'),
    ('L2601-0007', 'PN-30144-A', 'sterile-injectables', 'BOS1',  'SUP-0042', 'released',    '2026-01-09T05:00:00Z', '2026-01-14T17:00:00Z'),
    ('L2601-0008', 'PN-30105-A', 'sterile-injectables', 'BOS1',  'SUP-0042', 'released',    '2026-01-02T10:00:00Z', '2026-01-04T10:00:00Z'),
    ('L2601-0009', 'PN-30112-C', 'sterile-injectables', 'BOS1',  'SUP-0055', 'released',    '2026-01-02T12:00:00Z', '2026-01-04T11:00:00Z'),
    ('L2601-0010', 'PN-30144-A', 'sterile-injectables', 'CORK2', 'SUP-0042', 'in-process',  '2026-01-12T05:00:00Z', '2026-01-12T05:00:00Z'),
    ('L2601-0011', 'PN-40233-C', 'diagnostic-kits',     'BOS1',  'SUP-0210', 'released',    '2026-01-10T09:00:00Z', '2026-01-12T14:00:00Z'),
    ('L2601-0012', 'PN-40226-A', 'diagnostic-kits',     'BOS1',  'SUP-0104', 'released',    '2026-01-03T09:00:00Z', '2026-01-05T09:00:00Z'),
    ('L2601-0013', 'PN-40233-C', 'diagnostic-kits',     'CORK2', 'SUP-0210', 'released',    '2026-01-11T09:00:00Z', '2026-01-13T14:00:00Z')
on conflict do nothing;

insert into lot_genealogy (parent_lot_id, child_lot_id) values
    ('L2601-0001', 'L2601-0002'),
    ('L2601-0004', 'L2601-0005'),
    ('L2601-0007', 'L2601-0008'),
    ('L2601-0007', 'L2601-0009'),
    ('L2601-0011', 'L2601-0012')
on conflict do nothing;

insert into equipment (equipment_id, description, site, calibration_status, calibration_due, updated_at) values
    ('EQ-AUTOCLAVE-03', 'steam sterilizer, filling suite',       'BOS1',  'calibrated', '2026-09-30', '2025-10-01T08:00:00Z'),
    ('EQ-FILLER-01',    'aseptic vial filling line',             'BOS1',  'calibrated', '2026-05-15', '2025-11-15T08:00:00Z'),
    ('EQ-HPLC-04',      'HPLC, QC laboratory',                   'BOS1',  'calibrated', '2026-04-20', '2025-10-20T08:00:00Z'),
    ('EQ-FLOWTEST-02',  'infusion flow-rate test bench',         'BOS1',  'calibrated', '2026-06-01', '2025-12-01T08:00:00Z'),
    ('EQ-TORQUE-07',    'torque driver, pump assembly',          'BOS1',  'due',        '2026-02-10', '2025-11-10T08:00:00Z'),
    ('EQ-BALANCE-11',   'analytical balance, kit fill',          'BOS1',  'calibrated', '2026-03-05', '2025-12-05T08:00:00Z'),
    ('EQ-AUTOCLAVE-01', 'steam sterilizer, component prep',      'CORK2', 'calibrated', '2026-08-31', '2025-09-01T08:00:00Z'),
    ('EQ-LYO-02',       'freeze dryer',                          'CORK2', 'calibrated', '2026-10-15', '2025-10-15T08:00:00Z'),
    ('EQ-PH-METER-07',  'pH meter, buffer preparation',          'CORK2', 'calibrated', '2026-02-28', '2025-11-28T08:00:00Z'),
    ('EQ-EXTRUDER-05',  'catheter shaft extruder',               'CORK2', 'calibrated', '2026-06-20', '2025-12-20T08:00:00Z'),
    ('EQ-TENSILE-02',   'tensile tester, bond strength',         'CORK2', 'calibrated', '2026-05-30', '2025-11-30T08:00:00Z'),
    ('EQ-LASERMIC-03',  'laser micrometer, shaft diameter',      'CORK2', 'calibrated', '2026-06-12', '2025-12-12T08:00:00Z'),
    ('EQ-READER-06',    'lateral flow strip reader',             'CORK2', 'calibrated', '2026-04-02', '2025-10-02T08:00:00Z')
on conflict do nothing;

insert into employee (employee_id, printed_name, site, active, updated_at) values
    ('E1001', 'Maria Okafor',      'BOS1',  true, '2026-01-02T09:00:00Z'),
    ('E1002', 'Daniel Whitcombe',  'BOS1',  true, '2026-01-02T09:00:00Z'),
    ('E1003', 'Priya Raman',       'BOS1',  true, '2026-01-02T09:00:00Z'),
    ('E1004', 'James Castellano',  'BOS1',  true, '2026-01-02T09:00:00Z'),
    ('E1005', 'Hannah Kowalski',   'BOS1',  true, '2026-01-02T09:00:00Z'),
    ('E2001', 'Siobhan Byrne',     'CORK2', true, '2026-01-02T09:00:00Z'),
    ('E2002', 'Ciaran Walsh',      'CORK2', true, '2026-01-02T09:00:00Z'),
    ('E2003', 'Aoife Nolan',       'CORK2', true, '2026-01-02T09:00:00Z'),
    ('E2004', 'Tomasz Zielinski',  'CORK2', true, '2026-01-02T09:00:00Z'),
    ('E2005', 'Grace Murphy',      'CORK2', true, '2026-01-02T09:00:00Z')
on conflict do nothing;

-- Who may sign what (21 CFR 11.50): the QA roles approve, the others author and review.
insert into employee_role (employee_id, role) values
    ('E1001', 'qa-approver'), ('E1001', 'qa-reviewer'),
    ('E1002', 'production-supervisor'),
    ('E1003', 'qc-analyst'), ('E1003', 'qa-reviewer'),
    ('E1004', 'maintenance-technician'),
    ('E1005', 'supplier-quality-engineer'),
    ('E2001', 'qa-approver'), ('E2001', 'qa-reviewer'),
    ('E2002', 'production-supervisor'),
    ('E2003', 'qc-analyst'),
    ('E2004', 'maintenance-technician'),
    ('E2005', 'supplier-quality-engineer'), ('E2005', 'qa-reviewer')
on conflict do nothing;

insert into training_record (employee_id, course, completed_at, expires_at) values
    ('E1001', 'SOP-QA-001 electronic signatures',  '2025-03-10T10:00:00Z', '2027-03-10T10:00:00Z'),
    ('E1001', 'SOP-QA-014 CAPA management',         '2025-04-02T10:00:00Z', '2027-04-02T10:00:00Z'),
    ('E1002', 'SOP-PR-101 aseptic gowning',         '2025-06-15T10:00:00Z', '2026-06-15T10:00:00Z'),
    ('E1003', 'SOP-QC-210 HPLC system suitability', '2025-02-20T10:00:00Z', '2027-02-20T10:00:00Z'),
    ('E1004', 'SOP-MT-030 calibration control',     '2025-05-05T10:00:00Z', '2027-05-05T10:00:00Z'),
    ('E1005', 'SOP-SQ-005 supplier audits',         '2025-07-01T10:00:00Z', '2027-07-01T10:00:00Z'),
    ('E2001', 'SOP-QA-001 electronic signatures',  '2025-03-12T10:00:00Z', '2027-03-12T10:00:00Z'),
    ('E2002', 'SOP-PR-101 aseptic gowning',         '2025-01-20T10:00:00Z', '2026-01-20T10:00:00Z'),
    ('E2003', 'SOP-QC-305 pH measurement',          '2025-08-08T10:00:00Z', '2027-08-08T10:00:00Z'),
    ('E2004', 'SOP-MT-030 calibration control',     '2025-05-06T10:00:00Z', '2027-05-06T10:00:00Z'),
    ('E2005', 'SOP-SQ-005 supplier audits',         '2025-07-02T10:00:00Z', '2027-07-02T10:00:00Z')
on conflict do nothing;

insert into customer_spec (spec_id, customer, part_number, characteristic, lower_limit, upper_limit, unit, revision, updated_at) values
    ('CS-0001', 'Mercy Health Systems', 'PN-10515-C', 'flow rate accuracy',    -5.0,   5.0,   '%',      'B', '2025-11-01T09:00:00Z'),
    ('CS-0002', 'Mercy Health Systems', 'PN-10488-A', 'occlusion alarm limit', 60,     100,   'kPa',    'A', '2025-11-01T09:00:00Z'),
    ('CS-0003', 'Atlantic Cardiology',  'PN-20311-D', 'outer diameter',        1.640,  1.700, 'mm',     'D', '2025-10-15T09:00:00Z'),
    ('CS-0004', 'Atlantic Cardiology',  'PN-20318-A', 'burst pressure',        14,     null,  'atm',    'A', '2025-10-15T09:00:00Z'),
    ('CS-0005', 'NovaPharm Contract',   'PN-30144-A', 'assay',                 95.0,   105.0, '%',      'C', '2025-12-01T09:00:00Z'),
    ('CS-0006', 'NovaPharm Contract',   'PN-30144-A', 'fill volume',           10.10,  10.40, 'mL',     'C', '2025-12-01T09:00:00Z'),
    ('CS-0007', 'Clearview Diagnostics','PN-40226-A', 'flow time',             null,   180,   's',      'A', '2025-09-20T09:00:00Z'),
    ('CS-0008', 'Clearview Diagnostics','PN-40219-B', 'pH',                    7.2,    7.6,   '[pH]',   'B', '2025-09-20T09:00:00Z')
on conflict do nothing;
