"""Timestamp-ordered release of a partition's records across topics (pure: no broker)."""

from __future__ import annotations

from qmsflow.quality.ingest import RawMessage
from streams.merge_order import TimestampMerge


def _record(topic: str, partition: int, offset: int, timestamp_ms: int) -> RawMessage:
    return RawMessage(topic, partition, offset, b"line", b"v", [], timestamp_ms)


ASSIGNED = {("lims", 0), ("qms", 0), ("lims", 1), ("qms", 1)}


def _merge() -> TimestampMerge:
    return TimestampMerge(max_idle=0.5, max_buffered=1000)


def _caught_up(_tp: tuple[str, int]) -> bool:
    return False


def _order(records: list[RawMessage]) -> list[tuple[str, int, int]]:
    return [(r.topic, r.partition, r.offset) for r in records]


class TestTimestampMerge:
    def test_a_partitions_records_come_in_timestamp_order_across_topics(self) -> None:
        """A thousand lab results fetched first do not overtake the nonconformance before them."""
        merge = _merge()
        merge.add([_record("lims", 0, n, 100 + n) for n in range(3)])
        merge.add([_record("qms", 0, 0, 101)])
        released = merge.release(ASSIGNED, _caught_up, 100, now=0.0)
        assert _order(released) == [
            ("lims", 0, 0),
            ("lims", 0, 1),
            ("qms", 0, 0),  # a tie goes to the topic name, then the offset: deterministic
            ("lims", 0, 2),
        ]
        assert len(merge) == 0

    def test_offset_order_is_kept_even_when_timestamps_go_back(self) -> None:
        """Within a topic-partition the log's order wins over a producer's clock."""
        merge = _merge()
        merge.add([_record("lims", 0, 0, 200), _record("lims", 0, 1, 150)])
        merge.add([_record("qms", 0, 0, 175)])
        released = merge.release(ASSIGNED, _caught_up, 100, now=0.0)
        assert _order(released) == [("qms", 0, 0), ("lims", 0, 0), ("lims", 0, 1)]

    def test_an_input_behind_with_nothing_fetched_holds_its_partition_only(self) -> None:
        """Partition 0 waits for qms (it may hold an earlier record); partition 1 goes on."""
        merge = _merge()
        merge.add([_record("lims", 0, 0, 100), _record("lims", 1, 0, 100)])

        def behind(tp: tuple[str, int]) -> bool:
            return tp == ("qms", 0)

        assert _order(merge.release(ASSIGNED, behind, 100, now=0.0)) == [("lims", 1, 0)]
        assert merge.release(ASSIGNED, behind, 100, now=0.2) == []
        merge.add([_record("qms", 0, 0, 50)])  # fetched, and nothing more behind it
        assert _order(merge.release(ASSIGNED, _caught_up, 100, now=0.3)) == [
            ("qms", 0, 0),
            ("lims", 0, 0),
        ]

    def test_a_stalled_input_releases_after_the_idle_limit(self) -> None:
        """Order is worth a wait, not a stall."""
        merge = _merge()
        merge.add([_record("lims", 0, 0, 100)])

        def behind(tp: tuple[str, int]) -> bool:
            return tp == ("qms", 0)

        assert merge.release(ASSIGNED, behind, 100, now=10.0) == []
        assert _order(merge.release(ASSIGNED, behind, 100, now=10.6)) == [("lims", 0, 0)]

    def test_release_stops_where_an_input_behind_runs_dry(self) -> None:
        """Its next record may come before the other topic's head."""
        merge = _merge()
        merge.add([_record("qms", 0, 0, 100)])
        merge.add([_record("lims", 0, n, 200 + n) for n in range(3)])

        def behind(tp: tuple[str, int]) -> bool:
            return tp == ("qms", 0)

        assert _order(merge.release(ASSIGNED, behind, 100, now=0.0)) == [("qms", 0, 0)]
        assert len(merge) == 3

    def test_clear_forgets_everything(self) -> None:
        """Revoked partitions are read again by their next owner."""
        merge = _merge()
        merge.add([_record("lims", 0, 0, 100)])
        merge.clear()
        assert len(merge) == 0
        assert merge.release(ASSIGNED, _caught_up, 100, now=0.0) == []
