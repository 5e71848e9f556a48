-- The demo source database `erp`: a stand-in for the ERP, PLM, HR and CMMS tables that
-- Debezium streams into cdc.erp.public.<table>. Idempotent: `qmsflow stack up` runs it on
-- every start, as the database owner (qmsflow), after creating the role qmsflow_cdc.
--
-- Every table has a primary key, composite where the source has none of its own: Debezium
-- keys each change record by it, and a keyless record cannot live on a compacted topic.
-- REPLICA IDENTITY FULL makes `before` carry every column of an updated or deleted row, not
-- just the key, so the master-data stage can diff fields and detect conflicts.
-- Timestamps are timestamptz: Debezium emits them as ISO-8601 strings with an offset.

create table if not exists supplier (
    supplier_id     text primary key,
    name            text not null,
    country         text not null,
    approval_status text not null default 'approved',  -- approved | conditional | disqualified
    address         text,
    updated_at      timestamptz not null default now()
);

create table if not exists part (
    part_number      text primary key,
    revision         text not null,
    description      text not null,
    product_line     text not null,
    lifecycle_status text not null default 'released',  -- in-work | released | obsolete
    supplier_id      text references supplier (supplier_id)
);

create table if not exists bom (
    parent_part text not null references part (part_number),
    child_part  text not null references part (part_number),
    quantity    numeric(12, 3) not null,
    primary key (parent_part, child_part)
);

create table if not exists lot (
    lot_id          text primary key,
    part_number     text not null references part (part_number),
    product_line    text not null,
    site            text not null,
    supplier_id     text references supplier (supplier_id),
    status          text not null default 'released',  -- in-process | released | quarantined | rejected
    manufactured_at timestamptz not null,
    updated_at      timestamptz not null default now()
);

create table if not exists lot_genealogy (
    parent_lot_id text not null references lot (lot_id),
    child_lot_id  text not null references lot (lot_id),
    primary key (parent_lot_id, child_lot_id)
);

create table if not exists equipment (
    equipment_id       text primary key,
    description        text not null,
    site               text not null,
    calibration_status text not null default 'calibrated',  -- calibrated | due | overdue | out-of-tolerance
    calibration_due    date,
    updated_at         timestamptz not null default now()
);

create table if not exists employee (
    employee_id  text primary key,
    printed_name text not null,
    site         text not null,
    active       boolean not null default true,
    updated_at   timestamptz not null default now()
);

create table if not exists employee_role (
    employee_id text not null references employee (employee_id),
    role        text not null,
    primary key (employee_id, role)
);

create table if not exists training_record (
    employee_id  text not null references employee (employee_id),
    course       text not null,
    completed_at timestamptz not null,
    expires_at   timestamptz,
    primary key (employee_id, course, completed_at)
);

create table if not exists customer_spec (
    spec_id        text primary key,
    customer       text not null,
    part_number    text not null references part (part_number),
    characteristic text not null,
    lower_limit    numeric,
    upper_limit    numeric,
    unit           text not null,
    revision       text not null,
    updated_at     timestamptz not null default now()
);

alter table supplier        replica identity full;
alter table part            replica identity full;
alter table bom             replica identity full;
alter table lot             replica identity full;
alter table lot_genealogy   replica identity full;
alter table equipment       replica identity full;
alter table employee        replica identity full;
alter table employee_role   replica identity full;
alter table training_record replica identity full;
alter table customer_spec   replica identity full;

-- One publication for every CDC slot: each connector (and each test) has its own slot, and
-- the connector does not create publications (publication.autocreate.mode=disabled), since
-- its role owns no table.
do $$
begin
    if not exists (select 1 from pg_publication where pubname = 'qmsflow_cdc') then
        create publication qmsflow_cdc for table
            supplier, part, bom, lot, lot_genealogy, equipment,
            employee, employee_role, training_record, customer_spec;
    end if;
end
$$;

-- The connector's role reads the tables for the initial snapshot; changes come by replication.
grant usage on schema public to qmsflow_cdc;
grant select on
    supplier, part, bom, lot, lot_genealogy, equipment,
    employee, employee_role, training_record, customer_spec
    to qmsflow_cdc;
