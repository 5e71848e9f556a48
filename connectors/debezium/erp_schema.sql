-- The demo source database `erp`: the plant's source systems side by side, one schema per
-- system (erp, plm, mes, cmms, qms, hr, lms, portal), each holding the tables and columns that
-- qmsflow/config/survivorship_rules.toml maps. Debezium streams table <schema>.<table> into
-- cdc.erp.<schema>.<table>, and parse_change names the source system after the schema
-- (erp.supplier → ERP, qms.supplier_approval → QMS).
--
-- Applied by `qmsflow stack up` on every start, as the database owner (qmsflow), after the
-- role qmsflow_cdc exists. Idempotent. The stack stamps the database with this file's hash and
-- drops and recreates the database when the hash differs (a layout change): it is a
-- disposable demo source, and migrating it in place would buy nothing.
--
-- Every table has a primary key: Debezium keys each change record by it, and a keyless record
-- cannot live on a compacted topic. The entity id is the key (a delete's `before` is read for
-- nothing else). REPLICA IDENTITY FULL makes `before` carry every column of an updated or
-- deleted row, so the master-data stage can diff fields and detect conflicts.
-- Timestamps are timestamptz (Debezium: ISO-8601 text with offset), dates are days since the
-- epoch, numeric is exact text (decimal.handling.mode=string), text[] a JSON array, jsonb JSON
-- text.

create schema if not exists erp;      -- procurement, inventory, batch management
create schema if not exists plm;      -- product lifecycle: parts, customer specifications
create schema if not exists mes;      -- manufacturing execution: lots as made on the line
create schema if not exists cmms;     -- maintenance and calibration
create schema if not exists qms;      -- quality system: approvals, equipment status, accounts
create schema if not exists hr;       -- people
create schema if not exists lms;      -- learning management: training transcripts
create schema if not exists portal;   -- supplier portal: scorecards

-- ------------------------------------------------------------------ ERP
create table if not exists erp.supplier (
    supplier_id  text primary key,
    name         text not null,
    country_code text not null,                          -- ISO 3166-1 alpha-2
    asl_status   text not null default 'APPROVED',       -- procurement's copy of the ASL status
    address      text,
    updated_at   timestamptz not null default now()
);

create table if not exists erp.material (
    part_number  text primary key,
    description  text not null,                          -- the ERP's short text
    product_line text not null,
    base_unit    text not null default 'EA',
    updated_at   timestamptz not null default now()
);

create table if not exists erp.batch (
    lot_id          text primary key,
    part_number     text not null references erp.material (part_number),
    product_line    text not null,
    plant           text not null,                       -- the site code
    supplier_id     text references erp.supplier (supplier_id),
    stock_status    text not null default 'RELEASED',    -- RELEASED | QUARANTINE | BLOCKED
    manufactured_at timestamptz,
    parent_lot_ids  text[] not null default '{}',        -- lots consumed, per goods issue
    updated_at      timestamptz not null default now()
);

-- ------------------------------------------------------------------ PLM
create table if not exists plm.part (
    part_number      text primary key,
    revision         text not null,
    description      text not null,
    product_line     text not null,
    lifecycle_status text not null default 'RELEASED',   -- IN_WORK | RELEASED | OBSOLETE
    updated_at       timestamptz not null default now()
);

create table if not exists plm.customer_spec (
    spec_id        text primary key,
    customer       text not null,
    part_number    text not null references plm.part (part_number),
    characteristic text not null,
    lower_limit    numeric,
    upper_limit    numeric,
    unit           text,
    revision       text not null,
    updated_at     timestamptz not null default now()
);

-- ------------------------------------------------------------------ MES
create table if not exists mes.lot (
    lot_id          text primary key,
    part_number     text not null,
    site            text not null,
    work_order      text,
    manufactured_at timestamptz not null,
    parent_lot_ids  text[] not null default '{}',        -- genealogy as consumed on the line
    updated_at      timestamptz not null default now()
);

-- ------------------------------------------------------------------ CMMS
create table if not exists cmms.asset (
    equipment_id       text primary key,
    description        text not null,
    site               text not null,
    calibration_status text not null default 'CALIBRATED',  -- CALIBRATED | DUE | OVERDUE
    calibration_due    date,
    updated_at         timestamptz not null default now()
);

-- ------------------------------------------------------------------ QMS
create table if not exists qms.supplier_approval (
    supplier_id     text primary key,
    approval_status text not null,                       -- APPROVED | CONDITIONAL | DISQUALIFIED
    last_audit_id   text,
    updated_at      timestamptz not null default now()
);

create table if not exists qms.equipment_status (
    equipment_id       text primary key,
    calibration_status text not null,                    -- e.g. OUT_OF_TOLERANCE after an investigation
    investigation_id   text,
    updated_at         timestamptz not null default now()
);

create table if not exists qms.user_account (
    employee_id text primary key,
    username    text not null unique,
    roles       text[] not null default '{}',            -- signature authority (21 CFR 11.10(g))
    enabled     boolean not null default true,
    updated_at  timestamptz not null default now()
);

create table if not exists qms.customer_requirement (
    spec_id        text primary key,
    customer       text not null,
    part_number    text not null,
    characteristic text not null,
    lower_limit    numeric,
    upper_limit    numeric,
    unit           text,
    revision       text not null,
    updated_at     timestamptz not null default now()
);

-- ------------------------------------------------------------------ HR
create table if not exists hr.employee (
    employee_id  text primary key,
    display_name text not null,                          -- the printed name of signatures
    site         text not null,
    active       boolean not null default true,
    updated_at   timestamptz not null default now()
);

-- ------------------------------------------------------------------ LMS
-- One row per employee, the whole transcript as one jsonb array of
-- {course, completed_at, expires_at}: the golden record takes trainings as one value, and a
-- row per course would make each completion a separate, partial change of the employee.
create table if not exists lms.training_transcript (
    employee_id text primary key,
    trainings   jsonb not null default '[]',
    updated_at  timestamptz not null default now()
);

-- ------------------------------------------------------------------ PORTAL
create table if not exists portal.supplier_scorecard (
    supplier_id text primary key,
    score       numeric(5, 1) not null,                  -- 0-100, delivery and quality
    period      text not null,                           -- e.g. 2025-Q4
    updated_at  timestamptz not null default now()
);

alter table erp.supplier              replica identity full;
alter table erp.material              replica identity full;
alter table erp.batch                 replica identity full;
alter table plm.part                  replica identity full;
alter table plm.customer_spec         replica identity full;
alter table mes.lot                   replica identity full;
alter table cmms.asset                replica identity full;
alter table qms.supplier_approval     replica identity full;
alter table qms.equipment_status      replica identity full;
alter table qms.user_account          replica identity full;
alter table qms.customer_requirement  replica identity full;
alter table hr.employee               replica identity full;
alter table lms.training_transcript   replica identity full;
alter table portal.supplier_scorecard replica identity full;

-- One publication for every CDC slot: each connector (and each test) has its own slot, and
-- the connector does not create publications (publication.autocreate.mode=disabled), since
-- its role owns no table. Tables are listed (FOR TABLES IN SCHEMA needs a superuser); the
-- `set table` keeps the list exact on every run.
do $$
begin
    if not exists (select 1 from pg_publication where pubname = 'qmsflow_cdc') then
        create publication qmsflow_cdc;
    end if;
end
$$;
alter publication qmsflow_cdc set table
    erp.supplier, erp.material, erp.batch,
    plm.part, plm.customer_spec,
    mes.lot,
    cmms.asset,
    qms.supplier_approval, qms.equipment_status, qms.user_account, qms.customer_requirement,
    hr.employee,
    lms.training_transcript,
    portal.supplier_scorecard;

-- The connector's role reads the tables for the initial snapshot; changes come by replication.
grant usage on schema erp, plm, mes, cmms, qms, hr, lms, portal to qmsflow_cdc;
grant select on all tables in schema erp, plm, mes, cmms, qms, hr, lms, portal to qmsflow_cdc;
