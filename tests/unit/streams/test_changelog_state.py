"""The batch runtime's tables without a broker: staged writes, changelog records, expiry, drops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError

from qmsflow.quality.quarantine import HoldReason, LotHoldState
from qmsflow.settings import Settings
from streams.batch_runtime import (
    Deliveries,
    DeliveryInterrupted,
    RecordRejected,
    delivery_failure,
)
from streams.changelog_state import DEDUP_TABLE, BatchTables, ChangelogState, MarkStore
from streams.processing import FailureKind, InfrastructureFailure, failure_kind

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def _us(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


def _state() -> ChangelogState:
    return ChangelogState(Settings(topic_prefix="t."), [DEDUP_TABLE, "lot-holds"])


def _apply(state: ChangelogState, tables: BatchTables) -> None:
    state.apply(tables.writes, NOW)


class TestBatchTables:
    def test_reads_see_the_batchs_writes_before_they_are_applied(self) -> None:
        """Read-your-writes inside a batch; the state learns nothing until apply."""
        state = _state()
        tables = BatchTables(state)
        tables.put("lot-holds", "LOT-1", {"held": True})
        assert tables.get("lot-holds", "LOT-1") == {"held": True}
        assert state.get("lot-holds", "LOT-1") is None
        tables.put("lot-holds", "LOT-1", None)
        assert tables.get("lot-holds", "LOT-1") is None

    def test_a_write_belongs_to_the_partition_of_the_input_that_staged_it(self) -> None:
        """Its changelog record goes to that partition, as Faust writes a table key."""
        state = _state()
        tables = BatchTables(state)
        tables.partition = 4
        tables.put("lot-holds", "LOT-1", {"held": True})
        tables.partition = 1
        tables.put("lot-holds", "LOT-2", None)
        records = state.changelog_records(tables.writes)
        assert [(r.topic, r.partition) for r in records] == [
            ("t.qmsflow-lot-holds-changelog", 4),
            ("t.qmsflow-lot-holds-changelog", 1),
        ]
        assert orjson.loads(records[0].key) == "LOT-1"  # Faust's json key codec
        assert orjson.loads(records[0].value or b"") == {"held": True}
        assert records[1].value is None  # a tombstone

    def test_a_hold_stays_an_object_and_its_changelog_record_is_its_dict(self) -> None:
        """A lot's hold is kept as the object; the changelog gets `to_dict()`, Faust's format."""
        state = _state()
        tables = BatchTables(state)
        hold = LotHoldState(
            "LOT-1",
            "ON_HOLD",
            1,
            {"QMS:nonconformance:NCR-1": HoldReason("e1", "nonconformance", "NCR-1", "NCR open")},
            {"QMS:nonconformance:NCR-1": NOW},
            {"QMS:nonconformance:NCR-1": "e1"},
        )
        tables.put("lot-holds", "LOT-1", hold)
        (record,) = state.changelog_records(tables.writes)
        assert orjson.loads(record.value or b"") == orjson.loads(orjson.dumps(hold.to_dict()))
        assert LotHoldState.from_dict(orjson.loads(record.value or b"")) == hold
        _apply(state, tables)
        assert state.get("lot-holds", "LOT-1", 0) is hold

    def test_a_value_neither_json_nor_with_to_dict_is_refused(self) -> None:
        """An object the changelog cannot hold fails the batch instead of writing garbage."""
        state = _state()
        tables = BatchTables(state)
        tables.put("lot-holds", "LOT-1", object())
        with pytest.raises(TypeError):
            state.changelog_records(tables.writes)

    def test_changelog_records_keep_the_order_of_the_last_write(self) -> None:
        """A key written twice is written once, after the keys written in between."""
        state = _state()
        tables = BatchTables(state)
        tables.put("lot-holds", "A", 1)
        tables.put("lot-holds", "B", 2)
        tables.put("lot-holds", "A", 3)
        keys = [orjson.loads(r.key) for r in state.changelog_records(tables.writes)]
        assert keys == ["B", "A"]


class TestDedupMarks:
    def test_watermark_follows_marks_but_never_past_the_clock(self) -> None:
        """A mark from year 3000 must not make the partition forget every id."""
        state = _state()
        tables = BatchTables(state)
        tables.partition = 2
        tables.put(DEDUP_TABLE, "e1", ["fp", _us(NOW - timedelta(hours=1)), 2])
        _apply(state, tables)
        assert state.watermark(2) == _us(NOW - timedelta(hours=1))
        tables = BatchTables(state)
        tables.partition = 2
        tables.put(DEDUP_TABLE, "e2", ["fp", _us(datetime(3000, 1, 1, tzinfo=UTC)), 2])
        _apply(state, tables)
        assert state.watermark(2) <= _us(NOW + Settings().max_clock_skew)
        assert state.watermark(5) == 0

    def test_expired_marks_come_oldest_first_within_the_budget(self) -> None:
        """Only marks before the horizon, at most `budget`, and not one rewritten since."""
        state = _state()
        tables = BatchTables(state)
        for n in range(5):
            tables.put(DEDUP_TABLE, f"e{n}", ["fp", 1000 + n, 0])
        _apply(state, tables)
        rewrite = BatchTables(state)
        rewrite.put(DEDUP_TABLE, "e0", ["fp2", 5000, 0])  # a conflict's new mark: not old now
        _apply(state, rewrite)
        assert state.expired_marks(0, horizon_us=1004, budget=2) == ["e1", "e2"]
        assert state.expired_marks(0, horizon_us=1004, budget=10) == ["e3"]
        assert state.expired_marks(0, horizon_us=6000, budget=10) == ["e4", "e0"]

    def test_dropping_a_partition_forgets_its_rows_only(self) -> None:
        """A revoked partition's rows leave; another worker holds them now."""
        state = _state()
        state.held = {0, 1}
        tables = BatchTables(state)
        tables.partition = 0
        tables.put(DEDUP_TABLE, "kept", ["fp", 1, 0])
        tables.partition = 1
        tables.put(DEDUP_TABLE, "gone", ["fp", 1, 1])
        _apply(state, tables)
        state.drop({1})
        assert state.get(DEDUP_TABLE, "kept") is not None
        assert state.get(DEDUP_TABLE, "gone") is None
        assert state.held == {0}
        assert state.watermark(1) == 0

    def test_a_key_in_two_partitions_is_deleted_only_where_the_tombstone_is(self) -> None:
        """The scaling tool moves a mark: a tombstone on its old partition, a copy on the new."""
        state = _state()
        state.held = {1, 5}
        tables = BatchTables(state)
        tables.partition = 5
        tables.put(DEDUP_TABLE, "moved", ["fp", 1, 5])
        _apply(state, tables)
        tables = BatchTables(state)
        tables.partition = 1
        tables.put(DEDUP_TABLE, "moved", None)
        _apply(state, tables)
        assert state.get(DEDUP_TABLE, "moved") == ["fp", 1, 5]
        state.drop({1})
        assert state.get(DEDUP_TABLE, "moved", partition=1) == ["fp", 1, 5]


class TestDeliveryFailures:
    def test_each_failed_delivery_is_one_of_the_three_kinds(self) -> None:
        """Too large: the record's; timed out or retriable: transient; refused: infrastructure."""
        too_large = delivery_failure(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        timed_out = delivery_failure(KafkaError(KafkaError._MSG_TIMED_OUT))
        refused = delivery_failure(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
        assert isinstance(too_large, RecordRejected)
        assert isinstance(timed_out, DeliveryInterrupted)
        assert isinstance(refused, InfrastructureFailure)
        assert failure_kind(too_large) is FailureKind.RECORD
        assert failure_kind(timed_out) is FailureKind.TRANSIENT
        assert failure_kind(refused) is FailureKind.INFRASTRUCTURE


class FakeProducer:
    """Unit-test fake of confluent-kafka's Producer: reports each record delivered at once."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def produce(self, topic: str, value: Any, key: Any, **kwargs: Any) -> None:
        """Deliver at the next offset of the topic-partition, reporting at once."""
        partition = kwargs.get("partition", 0)
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        kwargs["on_delivery"](None, FakeDelivered(topic, partition, offset))


class FakeDelivered:
    """A delivered record as the fake producer reports it (the Message methods used)."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic = lambda: topic
        self.partition = lambda: partition
        self.offset = lambda: offset


class TestDeliveries:
    def test_only_changelog_deliveries_keep_where_each_partition_ends(self) -> None:
        """Changelog ends tell a mark store where its restore resumes; outputs need none."""
        producer = FakeProducer()
        outputs = Deliveries(producer)  # type: ignore[arg-type]
        outputs.produce("t.quality.events.v1", b"k", b"v", [])
        changelog = Deliveries(producer, track_ends=True)  # type: ignore[arg-type]
        for _ in range(3):
            changelog.produce("t.qmsflow-dedup-changelog", b"k", b"v", partition=2)
        assert (outputs.sent, outputs.reported, outputs.ends) == (1, 1, {})
        assert changelog.ends == {("t.qmsflow-dedup-changelog", 2): 3}


class TestMarksOnDisk:
    def test_marks_and_changelog_offset_survive_a_reopen(self, tmp_path: Path) -> None:
        """A restart with the local store kept reads only the changelog's tail."""
        state = ChangelogState(Settings(topic_prefix="t."), [DEDUP_TABLE], local_dir=tmp_path)
        state.held = {3}
        tables = BatchTables(state)
        tables.partition = 3
        tables.put(DEDUP_TABLE, "e1", ["fp", 10, 3])
        tables.put(DEDUP_TABLE, "e2", ["fp", 20, 3])
        changelog = state.changelog_topic(DEDUP_TABLE)
        state.apply(tables.writes, NOW, {(changelog, 3): 42})
        state.drop({3})  # closes the store; its files stay
        store = MarkStore(tmp_path / f"{DEDUP_TABLE}-3")
        try:
            assert store.offset == 42
            assert dict(store.items()) == {"e1": ["fp", 10, 3], "e2": ["fp", 20, 3]}
        finally:
            store.close()

    def test_expired_marks_are_found_by_a_resumable_scan(self, tmp_path: Path) -> None:
        """Nothing is kept in memory per mark: the sweep scans the store from where it stopped."""
        state = ChangelogState(Settings(topic_prefix="t."), [DEDUP_TABLE], local_dir=tmp_path)
        state.held = {0}
        tables = BatchTables(state)
        for n in range(6):
            tables.put(DEDUP_TABLE, f"e{n}", ["fp", 100 if n % 2 else 9000, 0])
        _apply(state, tables)
        first = state.expired_marks(0, horizon_us=1000, budget=3)
        second = state.expired_marks(0, horizon_us=1000, budget=3)
        assert first + second == ["e1", "e3", "e5"]
        assert state.get(DEDUP_TABLE, "e4", partition=0) == ["fp", 9000, 0]
        assert state.get(DEDUP_TABLE, "missing", partition=0) is None
        state.drop({0})
