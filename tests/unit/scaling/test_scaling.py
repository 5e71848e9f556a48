"""The scale plan's refusals, the dedup marks' relocation and the catalog rewrite."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from qmsflow.acl import faust_table_names
from qmsflow.partitioner import partition_for
from qmsflow.scaling import (
    TABLE_MIGRATIONS,
    ScaleRefusedError,
    candidate_partitions,
    check_drained,
    copartitioned_group,
    home_partition,
    plan_scale,
    relocate_dedup_marks,
    rewrite_catalog,
)
from qmsflow.topics import load_catalog, parse_catalog

PACKAGED = Path(__file__).parents[3] / "qmsflow" / "config" / "topics.toml"


class TestPlan:
    def test_scaling_one_topic_of_the_group_alone_is_refused(self) -> None:
        """A topic co-partitioned with others is not scaled without its group."""
        with pytest.raises(ScaleRefusedError, match="co-partitioned"):
            plan_scale(load_catalog(), ["qms.capa.v1"], 12, with_group=False)

    def test_decreasing_is_refused(self) -> None:
        """Kafka never removes partitions; the plan says so."""
        with pytest.raises(ScaleRefusedError, match="never removes"):
            plan_scale(load_catalog(), ["qms.capa.v1"], 2, with_group=True)

    def test_a_topic_outside_the_group_is_refused(self) -> None:
        """Only the stateful group is this command's business."""
        with pytest.raises(ScaleRefusedError, match="not co-partitioned"):
            plan_scale(load_catalog(), ["quality.dlq.v1"], 12, with_group=True)

    def test_the_group_scales_together(self) -> None:
        """With the group, every ingest, canonical and internal topic is in the plan."""
        plan = plan_scale(load_catalog(), ["qms.capa.v1"], 12, with_group=True)
        assert plan.topics == copartitioned_group(load_catalog())
        assert "quality.events.v1" in plan.topics and "quality.correlation.v1" in plan.topics
        assert plan.target == 12 and "dedup-seen" in plan.tables

    def test_every_faust_table_has_a_migration(self) -> None:
        """A new table in streams/*.py must say how it crosses a scale."""
        assert set(faust_table_names()) == set(TABLE_MIGRATIONS)


class TestDrained:
    def test_live_members_are_refused(self) -> None:
        """Workers still running would keep writing on the old layout."""
        with pytest.raises(ScaleRefusedError, match="live members"):
            check_drained({}, ["worker-1"])

    def test_lag_is_refused_except_on_ticks(self) -> None:
        """Unread input blocks the scale; unread ticks do not."""
        with pytest.raises(ScaleRefusedError, match=r"p\.qms\.capa\.v1\[2\]=3"):
            check_drained({("p.qms.capa.v1", 2): 3}, [], prefix="p.")
        check_drained({("p.quality.ticks.v1", 0): 5, ("p.qms.capa.v1", 0): 0}, [], prefix="p.")

    def test_while_producing_accepts_lag_and_reports_it(self) -> None:
        """Producers running: unread records are returned, not refused; live members still are."""
        lag = {("p.qms.capa.v1", 2): 3, ("p.qms.capa.v1", 1): 0}
        assert check_drained(lag, [], prefix="p.", while_producing=True) == {
            ("p.qms.capa.v1", 2): 3
        }
        with pytest.raises(ScaleRefusedError, match="live members"):
            check_drained(lag, ["worker-1"], prefix="p.", while_producing=True)


class TestHomePartition:
    def test_a_record_on_its_keys_old_partition_is_sent_home(self) -> None:
        """Written by a producer that still counts 4 partitions: its home under 8 is elsewhere."""
        line = next(f"PL-{n}".encode() for n in range(100) if partition_for(f"PL-{n}", 8) >= 4)
        assert home_partition(line, partition_for(line, 4), 8) == partition_for(line, 8)

    def test_a_record_at_home_or_unkeyed_stays(self) -> None:
        """The usual case costs one hash; a record without a key has no home to go to."""
        assert home_partition(b"PL-1", partition_for(b"PL-1", 8), 8) is None
        assert home_partition(None, 3, 8) is None


class TestRelocation:
    def test_a_mark_moves_to_its_product_lines_new_partition(self) -> None:
        """The mark is written where the new count puts the product line; the old one is dropped."""
        line = next(f"PL-{n}" for n in range(100) if partition_for(f"PL-{n}", 8) >= 4)
        old = partition_for(line, 4)
        new = partition_for(line, 8)
        moved = relocate_dedup_marks({b"e1": (old, b'["fp",1,%d]' % old)}, {"e1": line}, 4, 8)
        assert moved.moved == 1
        writes = {(r.partition, r.value) for r in moved.records}
        assert writes == {(new, b'["fp",1,%d]' % new), (old, None)}

    def test_a_mark_that_stays_writes_nothing(self) -> None:
        """A product line whose partition number survives needs no write."""
        line = next(f"PL-{n}" for n in range(100) if partition_for(f"PL-{n}", 8) < 4)
        p = partition_for(line, 4)
        stayed = relocate_dedup_marks({b"e1": (p, b'["fp",1,0]')}, {"e1": line}, 4, 8)
        assert stayed.records == [] and stayed.stayed == 1

    def test_an_unknown_product_line_is_copied_to_every_candidate(self) -> None:
        """Without the product line the mark goes wherever its key could now land."""
        copied = relocate_dedup_marks({b'"e1"': (1, b'["fp",1,1]')}, {}, 4, 8)
        assert {r.partition for r in copied.records} == {5}
        assert copied.copied_everywhere == 1

    def test_candidates_follow_the_gcd(self) -> None:
        """A hash with h mod 4 = 1 has h mod 6 in {1, 3, 5}."""
        assert candidate_partitions(1, 4, 6) == [1, 3, 5]
        assert candidate_partitions(3, 4, 8) == [3, 7]


class TestCatalogRewrite:
    def test_the_group_gets_the_new_count_and_nothing_else(self) -> None:
        """Only the named topics change; the file still validates."""
        text = PACKAGED.read_text("utf-8")
        group = copartitioned_group(load_catalog())
        catalog = parse_catalog(tomllib.loads(rewrite_catalog(text, group, 8)))
        assert {catalog[t].partitions for t in group} == {8}
        assert catalog["quality.dlq.v1"].partitions == load_catalog()["quality.dlq.v1"].partitions
