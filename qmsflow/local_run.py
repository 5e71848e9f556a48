"""`qmsflow run`: the whole platform on this machine, on demo traffic, with a live summary."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from connectors.debezium import registration
from qmsflow import stack
from qmsflow.demo.produce import DemoPublisher, ProduceReport, produce_demo
from qmsflow.demo.scenarios import Scenario, bad_supplier_lot
from qmsflow.demo.source_edits import RowRef, SourceEdit, SourceEditPlanner, SourceState
from qmsflow.demo.traffic import PLANT
from qmsflow.kafka.admin import consumed_offsets, create_topics, end_offsets
from qmsflow.settings import Settings
from qmsflow.stack.connect import LocalConnect, connect_url
from qmsflow.stack.postgres import CDC_PASSWORD, CDC_ROLE, ERP_DATABASE
from qmsflow.topics import load_catalog

_SUMMARY_EVERY = 2.0  # seconds between live summary lines
_DRAIN_TIMEOUT = 120.0  # seconds to wait for the pipeline to catch up after the demo ends
_LATE_LOTS = 3  # lots whose master record comes halfway: enough to watch parking, not a flood
_LOT_RECORD_DELAY = 5.0  # seconds the scenario's lot record trails its events: 2+ summary lines
_SCENARIO_WAIT = 60.0  # seconds the scenario waits to see its events parked / its lot held
_SCENARIO_HISTORY = timedelta(hours=3)  # the scenario happened before the demo traffic starts
_EDIT_EVERY = 2.5  # seconds between source-database edits: one or two per summary line
_MD_WAIT = 60.0  # seconds an edit may take to reach the golden tables (a cold worker: ~30 s)
_CDC_TOPICS_TIMEOUT = 120.0  # seconds for a first snapshot of the demo database to make its topics


@dataclass(frozen=True)
class PipelineCounts:
    """Counts read from Kafka and Postgres (never from the workers' own memory)."""

    ingested: int
    processed: int  # ingest records the worker has committed past
    canonical: int
    dead_letters: int
    rows: int
    dead_letter_rows: int

    def minus(self, other: PipelineCounts) -> PipelineCounts:
        """Counts since `other` was read."""
        return PipelineCounts(
            self.ingested - other.ingested,
            self.processed - other.processed,
            self.canonical - other.canonical,
            self.dead_letters - other.dead_letters,
            self.rows - other.rows,
            self.dead_letter_rows - other.dead_letter_rows,
        )

    @property
    def duplicates_dropped(self) -> int:
        """Processed records that neither became an event nor a dead letter."""
        return max(0, self.processed - self.canonical - self.dead_letters)

    def render(self) -> str:
        """One human line."""
        return (
            f"in {self.ingested:>6} | worker lag {self.ingested - self.processed:>5} | events "
            f"{self.canonical:>6} | duplicates dropped {self.duplicates_dropped:>5} | dead "
            f"letters {self.dead_letters:>3} | Postgres rows {self.rows:>6} "
            f"(+{self.dead_letter_rows} dead letters)"
        )


def read_counts(settings: Settings) -> PipelineCounts:
    """Message counts of the ingest, canonical and DLQ topics, and row counts of the sink."""
    catalog = load_catalog()
    ingest = [settings.topic(t.name) for t in catalog.by_role("ingest")]
    canonical = settings.topic("quality.events.v1")
    dlq = settings.topic("quality.dlq.v1")
    offsets = end_offsets(settings, [*ingest, canonical, dlq])
    processed = consumed_offsets(settings, settings.topic(settings.app_id), ingest)
    with psycopg.connect(settings.dsn) as conn:
        # by lineage: other environments (integration tests' prefixes) may share the database
        rows, dead_rows = conn.execute(
            "SELECT (SELECT count(*) FROM qms.quality_event WHERE kafka_topic = %s),"
            " (SELECT count(*) FROM qms.dead_letter WHERE kafka_topic = %s)",
            (canonical, dlq),
        ).fetchone() or (0, 0)
    return PipelineCounts(
        sum(offsets.get(t, 0) for t in ingest),
        sum(processed.values()),
        offsets.get(canonical, 0),
        offsets.get(dlq, 0),
        rows,
        dead_rows,
    )


def start_process(settings: Settings, role: str, args: list[str]) -> subprocess.Popen[bytes]:
    """Start `python -m qmsflow <args>` with its output in .stack/logs/<role>.log."""
    logs = settings.stack_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{role}.log").open("ab") as log_file:  # the child keeps its own fd
        return subprocess.Popen(
            [sys.executable, "-m", "qmsflow", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
            start_new_session=True,
        )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class StageCounts:
    """What the quality stages wrote to Postgres since the run started (rows loaded since)."""

    parked_now: int  # PARKED without a RELEASED or EXPIRED row yet
    released: int
    incidents_open: int
    incidents_closed: int
    alerts: int
    suppressed: int  # alerts not raised by the members of incidents opened this run
    on_hold: int  # lots whose current command is a HOLD
    releases: int  # RELEASE commands
    escalations: int

    def render(self) -> str:
        """One human line, to sit under `PipelineCounts.render()`."""
        return (
            f"  parked now {self.parked_now:>4} | released {self.released:>5} | incidents open "
            f"{self.incidents_open:>4} closed {self.incidents_closed:>4} | alerts {self.alerts:>4}"
            f" ({self.suppressed} suppressed) | lots on hold {self.on_hold:>4} | releases "
            f"{self.releases:>3} | escalations {self.escalations:>3}"
        )


@dataclass(frozen=True)
class IncidentView:
    """The newest view of one incident, with the number of alerts it raised."""

    incident_id: str
    member_count: int
    suppressed: int
    source_systems: tuple[str, ...]
    alerts: int


@dataclass(frozen=True)
class LotCommand:
    """One quarantine command on a lot, as the sink stored it."""

    action: str  # HOLD or RELEASE
    source_record_id: str  # of the trigger event
    reason: str


@dataclass(frozen=True)
class ScenarioSnapshot:
    """What Postgres holds about the scenario's lot at one moment."""

    incident: IncidentView | None
    commands: tuple[LotCommand, ...]

    @property
    def held(self) -> bool:
        """A HOLD command on the lot exists (it may be released since)."""
        return any(c.action == "HOLD" for c in self.commands)

    @property
    def release(self) -> LotCommand | None:
        """The lot's RELEASE command, if any."""
        return next((c for c in self.commands if c.action == "RELEASE"), None)


@dataclass
class ScenarioNarrator:
    """Turns snapshots of the scenario's lot into narrative lines, each told once."""

    lot_id: str
    members: int  # events the scenario publishes about the lot
    told: set[str] = field(default_factory=set)

    def tell(self, snapshot: ScenarioSnapshot) -> list[str]:
        """The lines this snapshot makes true that were not told before, incident first."""
        lines: list[str] = []
        incident = snapshot.incident
        if (
            "incident" not in self.told
            and incident is not None
            and incident.member_count >= self.members
            and snapshot.held
        ):
            self.told.add("incident")
            lines.append(
                f"incident {incident.incident_id[:8]} lot:{self.lot_id}: {incident.member_count}"
                f" events from {', '.join(incident.source_systems)} → {incident.alerts} alert"
                f"{'' if incident.alerts == 1 else 's'}, {incident.suppressed} suppressed; "
                f"lot {self.lot_id} on hold"
            )
        release = snapshot.release
        if "release" not in self.told and "incident" in self.told and release is not None:
            self.told.add("release")
            lines.append(
                f"lot {self.lot_id} released by {release.source_record_id} "
                f"{disposition_of(release.reason)}"
            )
        return lines


def disposition_of(reason: str) -> str:
    """The disposition a RELEASE reason names ("use-as-is"), else the reason itself."""
    found = re.search(r"disposition (\w+)", reason)
    return found.group(1).replace("_", "-") if found else reason


def unfinished(
    counts: PipelineCounts, sent: ProduceReport, scenario_events: int, released: bool
) -> list[str]:
    """What the run still waits for; empty when every expected row is in Postgres."""
    expected = len(sent.unique_event_ids) + scenario_events
    missing = []
    if counts.rows < expected:
        missing.append(f"events {counts.rows}/{expected}")
    if counts.dead_letter_rows < sent.corrupt:
        missing.append(f"dead letters {counts.dead_letter_rows}/{sent.corrupt}")
    if not released:
        missing.append("the scenario's release")
    return missing


_Connection = psycopg.Connection[tuple[Any, ...]]

#: the topic each stage table's rows come from: the database may hold other environments' rows
_STAGE_TOPICS = {
    "parked": "quality.parked.v1",
    "incidents": "quality.incidents.v1",
    "alerts": "quality.alerts.v1",
    "commands": "inventory.quarantine-commands.v1",
    "escalations": "capa.escalations.v1",
}

_STAGE_COUNTS_SQL = """
SELECT
  (SELECT count(*) FROM qms.parked_event p
    WHERE p.status = 'PARKED' AND p.loaded_at >= %(since)s AND p.kafka_topic = %(parked)s
      AND NOT EXISTS (SELECT 1 FROM qms.parked_event d
        WHERE d.event_id = p.event_id AND d.status <> 'PARKED' AND d.kafka_topic = %(parked)s)),
  (SELECT count(*) FROM qms.parked_event
    WHERE status = 'RELEASED' AND loaded_at >= %(since)s AND kafka_topic = %(parked)s),
  (SELECT count(*) FROM qms.incident
    WHERE status = 'open' AND loaded_at >= %(since)s AND kafka_topic = %(incidents)s),
  (SELECT count(*) FROM qms.incident
    WHERE status = 'closed' AND loaded_at >= %(since)s AND kafka_topic = %(incidents)s),
  (SELECT count(*) FROM qms.alert WHERE loaded_at >= %(since)s AND kafka_topic = %(alerts)s),
  (SELECT coalesce(sum(i.suppressed_alerts), 0) FROM qms.incident i
    JOIN qms.alert a ON (a.environment, a.incident_id) = (i.environment, i.incident_id)
      AND i.kafka_topic = %(incidents)s
    WHERE a.loaded_at >= %(since)s AND a.kafka_topic = %(alerts)s),
  (SELECT count(*) FROM qms.lot_hold_status h
    JOIN qms.quarantine_command c USING (environment, command_id)
    WHERE h.status = 'ON_HOLD' AND c.loaded_at >= %(since)s AND c.kafka_topic = %(commands)s),
  (SELECT count(*) FROM qms.quarantine_command
    WHERE action = 'RELEASE' AND loaded_at >= %(since)s AND kafka_topic = %(commands)s),
  (SELECT count(*) FROM qms.escalation
    WHERE loaded_at >= %(since)s AND kafka_topic = %(escalations)s)
"""


def database_now(settings: Settings) -> datetime:
    """The database's clock: rows loaded at or after it are this run's."""
    with psycopg.connect(settings.dsn) as conn:
        row = conn.execute("SELECT now()").fetchone()
    return row[0] if row else datetime.now(UTC)


def read_stage_counts(conn: _Connection, settings: Settings, since: datetime) -> StageCounts:
    """Rows this environment's quality stages added to the sink tables since `since`."""
    topics = {role: settings.topic(name) for role, name in _STAGE_TOPICS.items()}
    row = conn.execute(_STAGE_COUNTS_SQL, {"since": since, **topics}).fetchone()
    return StageCounts(*(int(v) for v in row)) if row else StageCounts(0, 0, 0, 0, 0, 0, 0, 0, 0)


def read_scenario(
    conn: _Connection, settings: Settings, lot_id: str, since: datetime
) -> ScenarioSnapshot:
    """The scenario lot's newest incident of this run and its quarantine commands."""
    row = conn.execute(
        "SELECT i.incident_id::text, i.member_count, i.suppressed_alerts, i.source_systems,"
        " (SELECT count(*) FROM qms.alert a WHERE (a.environment, a.incident_id)"
        " = (i.environment, i.incident_id) AND a.kafka_topic = %s)"
        " FROM qms.incident i WHERE i.root_cause_key = %s AND i.loaded_at >= %s"
        " AND i.kafka_topic = %s ORDER BY i.ordinal DESC LIMIT 1",
        (
            settings.topic(_STAGE_TOPICS["alerts"]),
            f"lot:{lot_id}",
            since,
            settings.topic(_STAGE_TOPICS["incidents"]),
        ),
    ).fetchone()
    incident = (
        IncidentView(str(row[0]), int(row[1]), int(row[2]), tuple(row[3]), int(row[4]))
        if row
        else None
    )
    commands = tuple(
        LotCommand(str(action), str(record), str(reason))
        for action, record, reason in conn.execute(
            "SELECT action, trigger_source_record_id, reason FROM qms.quarantine_command"
            " WHERE lot_id = %s AND loaded_at >= %s AND kafka_topic = %s"
            " ORDER BY issued_at, action",
            (lot_id, since, settings.topic(_STAGE_TOPICS["commands"])),
        )
    )
    return ScenarioSnapshot(incident, commands)


class _ScenarioPlayer:
    """Publishes the scenario during the demo traffic, in a thread; says what it did in `news`.

    1. at a third of the run, the 40 events about a lot no master record names yet (they park);
    2. `_LOT_RECORD_DELAY` later, once they are parked in Postgres, the lot's master record;
    3. at two thirds of the run, once the lot is held, the use-as-is disposition.
    Each wait gives up after `_SCENARIO_WAIT` seconds and goes on, so the run still finishes.
    """

    def __init__(self, settings: Settings, scenario: Scenario, since: datetime) -> None:
        self.settings = settings
        self.scenario = scenario
        self.since = since
        self.news: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.failure: BaseException | None = None

    def play(self, started: float, duration: float) -> None:
        """Run the three steps; a failure is kept in `failure` for the main loop to report."""
        try:
            self._play(started, duration)
        except Exception as error:  # the main loop reports it; a thread cannot raise to it
            self.failure = error

    def _play(self, started: float, duration: float) -> None:
        scenario = self.scenario
        publisher = DemoPublisher(self.settings)
        _sleep_until(started + duration / 3)
        publisher.events(scenario.trouble)
        systems = ", ".join(dict.fromkeys(r.record["source_system"] for r in scenario.trouble))
        self.news.put(
            f"== scenario: {len(scenario.trouble)} events about lot {scenario.lot_id} from "
            f"{systems}; its master record is not published yet"
        )
        time.sleep(_LOT_RECORD_DELAY)
        ids = [r.record["event_id"] for r in scenario.trouble]
        self._wait(lambda conn: self._parked(conn, ids) >= len(ids))
        publisher.master([scenario.lot_master])
        self.news.put(f"== scenario: lot {scenario.lot_id} master record published (ERP)")
        _sleep_until(started + 2 * duration / 3)
        self._wait(
            lambda conn: read_scenario(conn, self.settings, scenario.lot_id, self.since).held
        )
        publisher.events([scenario.disposition])
        self.news.put(
            f"== scenario: material review board dispositions {scenario.nonconformance_id} "
            "use-as-is"
        )

    def _parked(self, conn: _Connection, ids: Sequence[str]) -> int:
        row = conn.execute(
            "SELECT count(*) FROM qms.parked_event WHERE status = 'PARKED'"
            " AND event_id = ANY(%s::uuid[]) AND kafka_topic = %s",
            (list(ids), self.settings.topic(_STAGE_TOPICS["parked"])),
        ).fetchone()
        return int(row[0]) if row else 0

    def _wait(self, done: Callable[[_Connection], bool]) -> None:
        deadline = time.monotonic() + _SCENARIO_WAIT
        with psycopg.connect(self.settings.dsn) as conn:
            conn.autocommit = True  # each poll must see rows committed since the last
            while not done(conn) and time.monotonic() < deadline:
                time.sleep(0.5)


# --------------------------------------------------------------------------- master data (CDC)

#: the md topic of each golden-record kind the demo edits
_MD_TOPICS = {
    "supplier": "md.supplier.v1",
    "lot": "md.lot.v1",
    "equipment": "md.equipment.v1",
    "employee": "md.employee.v1",
}

#: the CDC tables the demo database holds, as the connector file lists them
_CAPTURED = tuple(
    registration.load(registration.ERP_POSTGRES).config["table.include.list"].split(",")
)


def erp_conninfo(settings: Settings) -> str:
    """The demo source database `erp` beside the sink database, as its owner."""
    return make_conninfo(settings.dsn, dbname=ERP_DATABASE)


def register_cdc(settings: Settings, echo: Callable[[str], None]) -> str:
    """Register the Debezium connector of this environment (idempotent); wait for its topics.

    A connector whose task FAILED (the stack recreated the demo database under its slot) is
    deleted, its slot dropped, and registered again. Returns the connector's name.
    """
    url = connect_url(settings) or LocalConnect(settings).url
    spec = registration.load(registration.ERP_POSTGRES)
    name = f"{settings.topic_prefix}{spec.name}"
    slot = registration.slot_name(settings.topic_prefix)
    overrides = {"name": name, "topic.prefix": settings.topic("cdc.erp"), "slot.name": slot}
    try:
        registration.register(url, registration.ERP_POSTGRES, overrides)
    except registration.ConnectorError as error:
        if "FAILED" not in str(error):
            raise
        echo(f"  connector {name} had failed; registering it again")
        registration.delete(url, name)
        cdc = make_conninfo(erp_conninfo(settings), user=CDC_ROLE, password=CDC_PASSWORD)
        with psycopg.connect(cdc, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s AND NOT active",
                (slot,),
            )
        registration.register(url, registration.ERP_POSTGRES, overrides)
    topics = {settings.topic(f"cdc.erp.{table}") for table in _CAPTURED}
    deadline = time.monotonic() + _CDC_TOPICS_TIMEOUT
    # the worker's master-data agent subscribes to the CDC topics present when it starts
    while not topics <= set(end_offsets(settings, topics)):
        if time.monotonic() > deadline:
            raise SystemExit(f"the connector {name} did not create its CDC topics in time")
        time.sleep(0.5)
    echo(f"  connector {name} RUNNING on {url}: {len(topics)} CDC topics")
    return name


def read_source_state(conninfo: str) -> SourceState:
    """What the demo edits start from, read from the source database now."""
    with psycopg.connect(conninfo) as conn:
        approvals = {
            str(s): str(a)
            for s, a in conn.execute(
                "SELECT supplier_id, approval_status FROM qms.supplier_approval"
            )
        }
        calibrations = {
            str(e): (str(c), str(q))
            for e, c, q in conn.execute(
                "SELECT a.equipment_id, a.calibration_status, s.calibration_status"
                " FROM cmms.asset a JOIN qms.equipment_status s USING (equipment_id)"
            )
        }
        trainings = {
            str(e): [str(c) for c in courses]
            for e, courses in conn.execute(
                "SELECT employee_id, coalesce(array_agg(t ->> 'course')"
                " FILTER (WHERE t ->> 'course' IS NOT NULL), '{}')"
                " FROM lms.training_transcript LEFT JOIN LATERAL"
                " jsonb_array_elements(trainings) t ON true GROUP BY employee_id"
            )
        }
    parts = {p.number: (p.product_line, p.supplier_id) for p in PLANT.parts}
    sites = {line: PLANT.sites_of(line) for line, _ in parts.values()}
    return SourceState(approvals, calibrations, trainings, parts, sites)


@dataclass(frozen=True)
class AppliedEdit:
    """An edit committed to the source database, at the database's commit time."""

    edit: SourceEdit
    committed_at: datetime


@dataclass(frozen=True)
class GoldenView:
    """The newest golden version the sink loaded for an entity since an edit."""

    version: int
    source: str


def render_md_line(
    applied: AppliedEdit, view: GoldenView | None, conflicts: int, history_rows: int
) -> str:
    """One line about an edit's way into the golden tables.

    `view` is None when no new version arrived (the edit lost to a more trusted source, or
    did not arrive in time); `conflicts` and `history_rows` count this run's rows.
    """
    edit = applied.edit
    if view is not None:
        outcome = f"golden v{view.version} ({view.source})"
    elif edit.disagrees:
        outcome = "conflict, golden unchanged (a more trusted source wins)"
    else:
        outcome = "no new golden version"
    return (
        f"md: {edit.entity} {edit.entity_id} {edit.change} → {outcome} | conflicts "
        f"{conflicts} | history rows +{history_rows}"
    )


@dataclass
class MasterDataNarrator:
    """Tells each applied edit once, when its golden version is in Postgres or it timed out."""

    settings: Settings
    since: datetime
    pending: list[AppliedEdit] = field(default_factory=list)

    def tell(self, conn: _Connection, now: datetime) -> list[str]:
        """Lines for the pending edits that reached the golden tables or waited `_MD_WAIT`."""
        lines: list[str] = []
        waiting: list[AppliedEdit] = []
        counts: tuple[int, int] | None = None
        for applied in self.pending:
            view = self._view(conn, applied)
            overdue = (now - applied.committed_at).total_seconds() > _MD_WAIT
            conflicted = applied.edit.disagrees and self._conflicted(conn, applied)
            if view is None and not overdue and not conflicted:
                waiting.append(applied)
                continue
            counts = counts or self._counts(conn)
            lines.append(render_md_line(applied, view, *counts))
        self.pending = waiting
        return lines

    def _view(self, conn: _Connection, applied: AppliedEdit) -> GoldenView | None:
        row = conn.execute(
            "SELECT version, source FROM qms.golden_record_history"
            " WHERE kind = %s AND entity_id = %s AND kafka_topic = %s AND loaded_at >= %s"
            " ORDER BY version DESC LIMIT 1",
            (
                applied.edit.entity,
                applied.edit.entity_id,
                self.settings.topic("md.history.v1"),
                applied.committed_at,
            ),
        ).fetchone()
        return GoldenView(int(row[0]), str(row[1])) if row else None

    def _conflicted(self, conn: _Connection, applied: AppliedEdit) -> bool:
        row = conn.execute(
            "SELECT count(*) FROM qms.md_conflict WHERE kind = %s AND entity_id = %s"
            " AND kafka_topic = %s AND loaded_at >= %s",
            (
                applied.edit.entity,
                applied.edit.entity_id,
                self.settings.topic("md.conflicts.v1"),
                applied.committed_at,
            ),
        ).fetchone()
        return bool(row and row[0])

    def _counts(self, conn: _Connection) -> tuple[int, int]:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM qms.md_conflict WHERE kafka_topic = %s),"
            " (SELECT count(*) FROM qms.golden_record_history"
            "   WHERE kafka_topic = %s AND loaded_at >= %s)",
            (
                self.settings.topic("md.conflicts.v1"),
                self.settings.topic("md.history.v1"),
                self.since,
            ),
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)


class _SourceEditor:
    """Applies a planned source edit every `_EDIT_EVERY` seconds in a thread, until stopped.

    The first time an edit updates a row, the row is saved; `restore()` writes the saved values
    back after the demo, so the demo database keeps the state its seed describes (new batches
    stay: they are new rows, not edits of seeded ones).
    """

    def __init__(self, conninfo: str, planner: SourceEditPlanner) -> None:
        self.conninfo = conninfo
        self.planner = planner
        self.applied: queue.SimpleQueue[AppliedEdit] = queue.SimpleQueue()
        self.failure: BaseException | None = None
        self.stopped = threading.Event()
        self._saved: dict[RowRef, str] = {}
        self._lock = threading.Lock()  # a restore waits for an edit being applied

    def run(self) -> None:
        """Edit until `stopped` is set; a failure is kept in `failure` for the main loop."""
        try:
            while not self.stopped.wait(_EDIT_EVERY):
                self.applied.put(self.apply(self.planner.next_edit(datetime.now(UTC))))
        except Exception as error:  # the main loop reports it; a thread cannot raise to it
            self.failure = error

    def apply(self, edit: SourceEdit) -> AppliedEdit:
        """Commit one edit in one transaction; returns it with the database's commit time."""
        with self._lock, psycopg.connect(self.conninfo) as conn:
            for ref in edit.rows:
                if ref not in self._saved:
                    row = conn.execute(
                        sql.SQL("SELECT to_jsonb(t)::text FROM {} t WHERE {} = %s").format(
                            sql.Identifier(*ref.table.split(".")), sql.Identifier(ref.id_column)
                        ),
                        (ref.entity_id,),
                    ).fetchone()
                    if row is not None:
                        self._saved[ref] = str(row[0])
            for statement in edit.statements:
                conn.execute(statement.sql, statement.params)
            row = conn.execute("SELECT now()").fetchone()
        return AppliedEdit(edit, row[0] if row else datetime.now(UTC))

    def restore(self) -> int:
        """Write every edited row's saved values back; returns how many rows."""
        with self._lock, psycopg.connect(self.conninfo) as conn:
            for ref, saved in self._saved.items():
                table = sql.Identifier(*ref.table.split("."))
                columns = [sql.Identifier(c) for c in json.loads(saved) if c != ref.id_column]
                conn.execute(
                    sql.SQL(
                        "UPDATE {table} SET ({cols}) = (SELECT {cols} FROM"
                        " jsonb_populate_record(NULL::{table}, %s::jsonb)) WHERE {key} = %s"
                    ).format(
                        table=table,
                        cols=sql.SQL(", ").join(columns),
                        key=sql.Identifier(ref.id_column),
                    ),
                    (saved, ref.entity_id),
                )
        return len(self._saved)


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def run_local(settings: Settings, *, count: int, rate: float, echo: Callable[[str], None]) -> None:
    """Bring everything up, stream demo traffic and the scenario through it, and narrate."""
    from connectors.postgres_sink.migrations import migrate

    echo("== local stack")
    stack.up(settings, echo)
    echo("== topics and database")
    create_topics(settings, load_catalog(), echo)
    migrate(settings.dsn, echo)
    echo("== master data: the Debezium connector on the demo source database")
    register_cdc(settings, echo)
    before = read_counts(settings)
    since = database_now(settings)
    seed = int(time.time())  # fresh event ids, lots and record numbers on every run
    scenario = bad_supplier_lot(
        zlib.crc32(f"bad_supplier_lot:{seed}".encode()), datetime.now(UTC) - _SCENARIO_HISTORY
    )
    scenario_events = len(scenario.trouble) + 1  # the disposition is an event too
    narrator = ScenarioNarrator(scenario.lot_id, len(scenario.trouble))
    player = _ScenarioPlayer(settings, scenario, since)
    erp = erp_conninfo(settings)
    editor = _SourceEditor(
        erp, SourceEditPlanner(seed, read_source_state(erp), lot_prefix=f"LD{seed % 100000:05d}")
    )
    md_narrator = MasterDataNarrator(settings, since)
    echo(f"== starting the stream worker and the sink (logs in {settings.stack_dir / 'logs'})")
    with ExitStack() as running:
        worker = start_process(settings, "worker", ["worker", "--loglevel", "warn"])
        running.callback(stop_process, worker)
        sink = start_process(settings, "sink", ["sink"])
        running.callback(stop_process, sink)
        running.callback(_restore_source, editor, echo)
        echo(
            f"== producing {count} demo records at {rate:.0f}/s (10% duplicates, 20 corrupt, "
            f"{_LATE_LOTS} lots' master records late); bad supplier lot {scenario.lot_id} at a "
            "third of the run, its disposition at two thirds; a source-database edit every "
            f"{_EDIT_EVERY:g} s (QMS approvals, ERP batches, CMMS calibrations, LMS training)"
        )
        report: list[ProduceReport] = []
        failures: list[BaseException] = []

        def produce() -> None:
            try:
                report.append(
                    produce_demo(
                        settings,
                        count=count,
                        duplicate_rate=0.1,
                        corrupt=20,
                        rate=rate,
                        seed=seed,
                        late_lots=_LATE_LOTS,
                        echo=lambda _line: None,
                    )
                )
            except Exception as error:  # the main loop reports it; a thread cannot raise to it
                failures.append(error)

        producer = threading.Thread(target=produce, daemon=True)
        started = time.monotonic()
        producer.start()
        playing = threading.Thread(
            target=player.play, args=(started, count / rate if rate else 0.0), daemon=True
        )
        playing.start()
        editing = threading.Thread(target=editor.run, daemon=True)
        editing.start()
        running.callback(editor.stopped.set)
        drained_since: float | None = None
        while True:
            time.sleep(_SUMMARY_EVERY)
            for name, process in (("worker", worker), ("sink", sink)):
                if process.poll() is not None:
                    _tail(settings.stack_dir / "logs" / f"{name}.log", echo)
                    raise SystemExit(f"the {name} stopped unexpectedly (exit {process.returncode})")
            if failures:
                raise SystemExit(f"producing the demo traffic failed: {failures[0]}")
            if player.failure is not None:
                raise SystemExit(f"publishing the scenario failed: {player.failure}")
            if editor.failure is not None:
                raise SystemExit(f"editing the source database failed: {editor.failure}")
            while not editor.applied.empty():
                md_narrator.pending.append(editor.applied.get())
            while not player.news.empty():
                echo(player.news.get())
            try:
                now = read_counts(settings).minus(before)
                with psycopg.connect(settings.dsn, autocommit=True) as conn:
                    stages = read_stage_counts(conn, settings, since)
                    snapshot = read_scenario(conn, settings, scenario.lot_id, since)
                    md_lines = md_narrator.tell(conn, database_now(settings))
            except psycopg.OperationalError as error:  # a restart elsewhere; the sink retries too
                echo(f"  (Postgres unavailable, retrying: {str(error).splitlines()[0]})")
                continue
            echo(now.render())
            echo(stages.render())
            for line in narrator.tell(snapshot):
                echo(click.style(f">> {line}", fg="green", bold=True))
            for line in md_lines:
                echo(click.style(f"   {line}", fg="cyan"))
            if producer.is_alive() or playing.is_alive() or not report:
                continue
            editor.stopped.set()  # the demo is over; what was edited is still told
            sent = report[0]
            missing = unfinished(now, sent, scenario_events, snapshot.release is not None)
            if not missing and (md_narrator.pending or not editor.applied.empty()):
                continue  # each edit is told within _MD_WAIT of its commit
            if not missing:
                echo(
                    f"== done: {sent.sent + sent.corrupt + scenario_events} records in, "
                    f"{len(sent.unique_event_ids) + scenario_events} unique events in Postgres, "
                    f"{sent.duplicates} duplicates dropped, {sent.corrupt} dead letters, "
                    f"lot {scenario.lot_id} held and released"
                )
                break
            drained_since = drained_since or time.monotonic()
            if time.monotonic() - drained_since > _DRAIN_TIMEOUT:
                raise SystemExit(
                    f"the pipeline did not drain within {_DRAIN_TIMEOUT:.0f} s of the demo's end;"
                    f" still missing: {', '.join(missing)} (logs in {settings.stack_dir / 'logs'})"
                )
    echo("worker and sink stopped; the stack keeps running (`make stack-down` stops it)")
    echo(
        f"query the results: psql '{settings.dsn}' -c 'select event_type, count(*) "
        "from qms.quality_event group by 1'"
    )


def _restore_source(editor: _SourceEditor, echo: Callable[[str], None]) -> None:
    editor.stopped.set()
    restored = editor.restore()
    if restored:
        echo(f"== source database: {restored} edited rows set back to their seeded values")


def _tail(path: Path, echo: Callable[[str], None], lines: int = 30) -> None:
    if path.exists():
        for line in path.read_text(errors="replace").splitlines()[-lines:]:
            echo(f"  | {line}")
