"""Realistic edits of the demo source database `erp`, planned as SQL, for `qmsflow run`.

What a plant's systems do to master data during a shift, one edit at a time:

- QMS: a supplier audit changes a supplier's approval (`qms.supplier_approval`);
- ERP: a goods receipt or production order creates a new batch (`erp.batch`);
- CMMS: an asset's calibration status changes (`cmms.asset`); now and then the QMS records its
  own status for the same equipment after an investigation, disagreeing with the CMMS
  (`qms.equipment_status`), which the golden records report on md.conflicts.v1;
- LMS: an employee completes a course again and the training is renewed
  (`lms.training_transcript`).

Pure: the planner only returns statements with parameters. It is seeded and deterministic (the
same seed, state and times give the same edits), and it keeps its own view of the values it set,
so each edit changes a value and therefore a golden record. It never edits the two disagreements
the seed plants on purpose (`erp_seed.sql`), so they stay what the tests and the README say.
Every edit names the source row it updates (`SourceEdit.row`), so a caller can put the seeded
values back after the demo; batches are new rows and stay.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

__all__ = [
    "APPROVAL_STATUSES",
    "CALIBRATION_STATUSES",
    "PLANTED_CONFLICTS",
    "EditKind",
    "RowRef",
    "SourceEdit",
    "SourceEditPlanner",
    "SourceState",
    "Statement",
]

EditKind = Literal["supplier-approval", "new-batch", "calibration", "training-renewal"]

#: approval statuses a supplier audit sets (the `qms.supplier_approval` comment)
APPROVAL_STATUSES = ("APPROVED", "CONDITIONAL", "DISQUALIFIED")
#: calibration statuses a CMMS reports (the `cmms.asset` comment)
CALIBRATION_STATUSES = ("CALIBRATED", "DUE", "OVERDUE")
#: what the QMS records after an investigation, disagreeing with the CMMS
_QMS_FINDING = "OUT_OF_TOLERANCE"

#: entities whose disagreement erp_seed.sql plants on purpose; edits leave them alone
PLANTED_CONFLICTS = frozenset({"SUP-0128", "EQ-PH-METER-07"})

#: one edit of each kind in every round, in a seeded order; the weights of a round
_ROUND: tuple[EditKind, ...] = (
    "supplier-approval",
    "new-batch",
    "calibration",
    "calibration",
    "training-renewal",
)

#: how often a calibration edit makes the QMS disagree with the CMMS: often enough for a
#: ten-second demo to show a conflict, rarely enough that most changes are plain updates
_DISAGREE_EVERY = 2

#: training is valid for two years after completion, as the seeded transcripts are
_TRAINING_VALIDITY = timedelta(days=730)


@dataclass(frozen=True)
class Statement:
    """One SQL statement and its parameters (psycopg `%s` placeholders)."""

    sql: str
    params: tuple[Any, ...] = ()


@dataclass(frozen=True)
class RowRef:
    """The source row an edit updates: table `<schema>.<table>`, its id column and id."""

    table: str
    id_column: str
    entity_id: str


@dataclass(frozen=True)
class SourceEdit:
    """One planned edit: what a system did, to which golden record, and its SQL.

    `statements` run in one transaction. `rows` are the existing rows they update (empty for
    a new batch). `disagrees` marks an edit that makes two sources disagree on purpose.
    """

    kind: EditKind
    system: str  # the source system, as survivorship_rules.toml names it
    entity: str  # the golden record's kind: supplier, lot, equipment, employee
    entity_id: str
    change: str  # what changed, for a person: "approval CONDITIONAL"
    statements: tuple[Statement, ...]
    rows: tuple[RowRef, ...] = ()
    disagrees: bool = False


@dataclass(frozen=True)
class SourceState:
    """What the planner starts from, read from the source database by the caller.

    `approvals`: supplier → QMS approval status; `calibrations`: equipment → (CMMS status,
    QMS status); `trainings`: employee → the courses on their transcript; `parts`: part number
    → (product line, supplier id or None) for new batches; `sites`: product line → plant codes.
    """

    approvals: Mapping[str, str]
    calibrations: Mapping[str, tuple[str, str]]
    trainings: Mapping[str, Sequence[str]]
    parts: Mapping[str, tuple[str, str | None]]
    sites: Mapping[str, Sequence[str]]


@dataclass
class SourceEditPlanner:
    """Plans one edit at a time from a seed and a starting state; deterministic.

    `lot_prefix` starts the ids of new batches; give each run its own (e.g. from its seed), since
    batches stay in the source database between runs.
    """

    seed: int
    state: SourceState
    lot_prefix: str
    _rng: random.Random = field(init=False, repr=False)
    _deck: list[EditKind] = field(init=False, default_factory=list, repr=False)
    _approvals: dict[str, str] = field(init=False, repr=False)
    _calibrations: dict[str, tuple[str, str]] = field(init=False, repr=False)
    _lots: int = field(init=False, default=0, repr=False)
    _calibration_edits: int = field(init=False, default=0, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._approvals = {
            k: v for k, v in sorted(self.state.approvals.items()) if k not in PLANTED_CONFLICTS
        }
        self._calibrations = {
            k: v for k, v in sorted(self.state.calibrations.items()) if k not in PLANTED_CONFLICTS
        }

    def next_edit(self, now: datetime) -> SourceEdit:
        """The next edit, as made at `now` (an aware datetime: batch and training times)."""
        if now.tzinfo is None:
            raise ValueError(f"now must be timezone-aware, got naive {now}")
        for _ in range(len(_ROUND) + 1):
            if not self._deck:
                self._deck = list(_ROUND)
                self._rng.shuffle(self._deck)
            kind = self._deck.pop()
            edit = self._plan(kind, now)
            if edit is not None:
                return edit
        raise ValueError("the source state offers nothing to edit (no suppliers, parts, …)")

    def plan(self, count: int, start: datetime, every: timedelta) -> list[SourceEdit]:
        """`count` edits, the n-th as made at `start + n * every`."""
        return [self.next_edit(start + every * n) for n in range(count)]

    def _plan(self, kind: EditKind, now: datetime) -> SourceEdit | None:
        if kind == "supplier-approval":
            return self._approval()
        if kind == "new-batch":
            return self._batch(now)
        if kind == "calibration":
            return self._calibration()
        return self._training(now)

    def _approval(self) -> SourceEdit | None:
        if not self._approvals:
            return None
        supplier = self._rng.choice(list(self._approvals))
        current = self._approvals[supplier]
        status = self._rng.choice([s for s in APPROVAL_STATUSES if s != current])
        audit = f"AUD-{self._rng.randrange(2026_000, 2026_999)}"
        self._approvals[supplier] = status
        return SourceEdit(
            kind="supplier-approval",
            system="QMS",
            entity="supplier",
            entity_id=supplier,
            change=f"approval {status}",
            statements=(
                Statement(
                    "UPDATE qms.supplier_approval SET approval_status = %s, last_audit_id = %s,"
                    " updated_at = now() WHERE supplier_id = %s",
                    (status, audit, supplier),
                ),
            ),
            rows=(RowRef("qms.supplier_approval", "supplier_id", supplier),),
        )

    def _batch(self, now: datetime) -> SourceEdit | None:
        parts = sorted(self.state.parts.items())
        candidates = [(p, line, s) for p, (line, s) in parts if self.state.sites.get(line)]
        if not candidates:
            return None
        part, line, supplier = self._rng.choice(candidates)
        plant = self._rng.choice(list(self.state.sites[line]))
        self._lots += 1
        lot = f"{self.lot_prefix}-{self._lots:04d}"
        made = now - timedelta(hours=self._rng.randint(2, 48))
        return SourceEdit(
            kind="new-batch",
            system="ERP",
            entity="lot",
            entity_id=lot,
            change=f"new batch of {part} at {plant}",
            statements=(
                Statement(
                    "INSERT INTO erp.batch (lot_id, part_number, product_line, plant, supplier_id,"
                    " stock_status, manufactured_at) VALUES (%s, %s, %s, %s, %s, 'QUARANTINE', %s)"
                    " ON CONFLICT (lot_id) DO NOTHING",
                    (lot, part, line, plant, supplier, made),
                ),
            ),
        )

    def _calibration(self) -> SourceEdit | None:
        if not self._calibrations:
            return None
        equipment = self._rng.choice(list(self._calibrations))
        cmms, qms = self._calibrations[equipment]
        self._calibration_edits += 1
        if self._calibration_edits % _DISAGREE_EVERY == 0 and qms != _QMS_FINDING:
            investigation = f"INV-{self._rng.randrange(2026_0000, 2026_9999)}"
            self._calibrations[equipment] = (cmms, _QMS_FINDING)
            return SourceEdit(
                kind="calibration",
                system="QMS",
                entity="equipment",
                entity_id=equipment,
                change=f"calibration {_QMS_FINDING} in QMS ({investigation}), CMMS says {cmms}",
                statements=(
                    Statement(
                        "UPDATE qms.equipment_status SET calibration_status = %s,"
                        " investigation_id = %s, updated_at = now() WHERE equipment_id = %s",
                        (_QMS_FINDING, investigation, equipment),
                    ),
                ),
                rows=(RowRef("qms.equipment_status", "equipment_id", equipment),),
                disagrees=True,
            )
        status = self._rng.choice([s for s in CALIBRATION_STATUSES if s != cmms])
        self._calibrations[equipment] = (status, qms)
        return SourceEdit(
            kind="calibration",
            system="CMMS",
            entity="equipment",
            entity_id=equipment,
            change=f"calibration {status}",
            statements=(
                Statement(
                    "UPDATE cmms.asset SET calibration_status = %s, updated_at = now()"
                    " WHERE equipment_id = %s",
                    (status, equipment),
                ),
            ),
            rows=(RowRef("cmms.asset", "equipment_id", equipment),),
            disagrees=status != qms,
        )

    def _training(self, now: datetime) -> SourceEdit | None:
        trainings = {e: list(c) for e, c in sorted(self.state.trainings.items()) if c}
        if not trainings:
            return None
        employee = self._rng.choice(list(trainings))
        course = self._rng.choice(trainings[employee])
        completed = now.astimezone(UTC).replace(microsecond=0)
        expires = completed + _TRAINING_VALIDITY
        return SourceEdit(
            kind="training-renewal",
            system="LMS",
            entity="employee",
            entity_id=employee,
            change=f"training {course} renewed until {expires.date().isoformat()}",
            statements=(
                Statement(
                    # rewrite the one course's entry in the transcript's jsonb array
                    "UPDATE lms.training_transcript SET trainings = (SELECT jsonb_agg(CASE"
                    " WHEN t ->> 'course' = %s::text THEN t || jsonb_build_object("
                    "'completed_at', %s::text, 'expires_at', %s::text) ELSE t END)"
                    " FROM jsonb_array_elements(trainings) t),"
                    " updated_at = now() WHERE employee_id = %s",
                    (course, _iso(completed), _iso(expires), employee),
                ),
            ),
            rows=(RowRef("lms.training_transcript", "employee_id", employee),),
        )


def _iso(moment: datetime) -> str:
    """ISO-8601 with Z, as the seeded transcripts write their times."""
    return moment.isoformat().replace("+00:00", "Z")
