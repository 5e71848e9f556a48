"""How product lines spread over partitions, and the worker ceilings and advice drawn from it."""

from __future__ import annotations

import pytest

from qmsflow.partition_spread import (
    ASSIGNORS,
    UNKEYED,
    Assignor,
    LineShare,
    assign,
    misplaced_lines,
    observed_spread,
    planned_spread,
    read_line_weights,
    recommend,
    scaled_sample,
    traffic_shares,
)
from qmsflow.partitioner import partition_for

DEMO_FOUR = ("infusion-pumps", "catheters", "sterile-injectables", "diagnostic-kits")
EQUAL_FOUR = dict.fromkeys(DEMO_FOUR, 1.0)


class TestTrafficShares:
    def test_weights_become_shares_that_sum_to_one(self) -> None:
        """Weights in any unit are normalised to fractions of the topic's records."""
        assert traffic_shares({"a": 3, "b": 1}) == {"a": 0.75, "b": 0.25}

    @pytest.mark.parametrize(
        ("weights", "match"),
        [({}, "no product lines"), ({"a": -1.0, "b": 2.0}, "negative"), ({"a": 0.0}, "sum to 0")],
    )
    def test_unusable_weights_are_refused(self, weights: dict[str, float], match: str) -> None:
        """No lines, a negative weight or no traffic at all is an error, not a division by 0."""
        with pytest.raises(ValueError, match=match):
            traffic_shares(weights)


class TestPlannedSpread:
    @pytest.mark.parametrize("partitions", [6, 8, 12, 16])
    def test_four_demo_lines_keep_only_three_partitions_busy(self, partitions: int) -> None:
        """Two of the four original demo lines collide at 6, 8, 12 and 16 partitions alike."""
        spread = planned_spread(EQUAL_FOUR, partitions)
        assert spread.busy == 3
        assert spread.busiest.share == pytest.approx(0.5)
        assert spread.skew == pytest.approx(partitions / 2)

    def test_each_line_lands_on_its_murmur2_partition(self) -> None:
        """A line's share sits on the partition Java's producer picks for its key."""
        spread = planned_spread({"catheters": 1, "infusion-pumps": 3}, 6)
        assert spread.partitions[partition_for("catheters", 6)].lines == (
            LineShare("catheters", 0.25),
        )
        assert spread.partitions[partition_for("infusion-pumps", 6)].share == 0.75
        assert sum(p.share for p in spread.partitions) == pytest.approx(1.0)

    def test_lines_on_a_partition_are_listed_busiest_first(self) -> None:
        """The partition's heaviest line comes first, so the table shows the cause at once."""
        spread = planned_spread({"sterile-injectables": 1, "diagnostic-kits": 4}, 6)
        assert [line.line for line in spread.busiest.lines] == [
            "diagnostic-kits",
            "sterile-injectables",
        ]

    def test_every_line_on_one_partition_is_the_worst_skew(self) -> None:
        """With everything on one partition the busiest carries N times an even share."""
        spread = planned_spread(EQUAL_FOUR, 8, place=lambda line, n: 0)
        assert (spread.busy, spread.skew, spread.busiest.partition) == (1, 8.0, 0)

    def test_a_topic_without_partitions_is_refused(self) -> None:
        """Zero partitions is a configuration error, said as such."""
        with pytest.raises(ValueError, match="at least one partition"):
            planned_spread(EQUAL_FOUR, 0)


class TestObservedSpread:
    def test_partition_shares_come_from_record_counts(self) -> None:
        """A partition's share is its records over the topic's, whatever the sample size."""
        spread = observed_spread({0: {"a": 10}, 1: {"b": 5}}, {0: 300, 1: 100})
        assert [p.share for p in spread.partitions] == [0.75, 0.25]

    def test_a_sample_of_the_tail_scales_to_the_partition(self) -> None:
        """Lines split a partition's share in the proportion of their keys in its sample."""
        spread = observed_spread({0: {"a": 30, "b": 10}, 1: {"c": 4}}, {0: 800, 1: 200})
        assert spread.partitions[0].lines == (LineShare("a", 0.6), LineShare("b", 0.2))
        assert spread.partitions[1].lines == (LineShare("c", 0.2),)

    def test_co_partitioned_topics_add_up_with_their_samples_scaled(self) -> None:
        """A busy topic read in part and a quiet one read in full weigh by their records."""
        busy = scaled_sample({"a": 100}, 10_000)  # the last 100 of 10,000 records
        quiet = scaled_sample({"b": 100}, 100)  # every record
        summed = {key: busy.get(key, 0.0) + quiet.get(key, 0.0) for key in ("a", "b")}
        spread = observed_spread({0: summed}, {0: 10_100})
        assert spread.partitions[0].lines[0].line == "a"
        assert spread.partitions[0].lines[0].share == pytest.approx(10_000 / 10_100)

    def test_an_unsampled_partition_scales_to_nothing(self) -> None:
        """No keys read is no lines, not a division by zero."""
        assert scaled_sample({}, 500) == {}

    def test_an_empty_partition_carries_nothing(self) -> None:
        """A partition without records is listed with no lines and no share."""
        spread = observed_spread({0: {"a": 1}, 1: {}}, {0: 50, 1: 0})
        assert (spread.busy, spread.partitions[1].lines, spread.partitions[1].share) == (
            1,
            (),
            0.0,
        )

    def test_an_empty_topic_has_nothing_to_measure(self) -> None:
        """A topic without records is refused rather than shown as perfectly even."""
        with pytest.raises(ValueError, match="no records"):
            observed_spread({0: {}}, {0: 0})

    def test_a_line_off_its_murmur2_partition_is_reported(self) -> None:
        """A line found where murmur2 does not put it names both partitions; keyless do not."""
        home = partition_for("catheters", 2)
        elsewhere = 1 - home
        spread = observed_spread(
            {home: {"catheters": 5}, elsewhere: {"catheters": 5, UNKEYED: 3}}, {0: 10, 1: 10}
        )
        assert misplaced_lines(spread) == (("catheters", elsewhere, home),)


class TestAssign:
    def test_range_gives_contiguous_ranges_extra_partitions_first(self) -> None:
        """Kafka's RangeAssignor: 6 partitions over 4 members are 0-1, 2-3, 4 and 5."""
        assert assign(6, 4, "range") == ((0, 1), (2, 3), (4,), (5,))

    def test_range_leaves_members_beyond_the_partitions_idle(self) -> None:
        """With more members than partitions the last members own nothing."""
        assert assign(2, 3, "range") == ((0,), (1,), ())

    def test_round_robin_deals_partitions_in_turn(self) -> None:
        """Partition p goes to member p mod W, as Faust deals them to a fresh group."""
        assert assign(7, 3, "round-robin") == ((0, 3, 6), (1, 4), (2, 5))

    def test_load_aware_puts_the_largest_share_on_the_least_loaded(self) -> None:
        """Largest first, each to the member with the least load so far."""
        assert assign(4, 2, "load-aware", [0.4, 0.3, 0.2, 0.1]) == ((0, 3), (1, 2))

    def test_load_aware_needs_a_share_per_partition(self) -> None:
        """Without every partition's share there is nothing to balance by."""
        with pytest.raises(ValueError, match="needs 4 shares"):
            assign(4, 2, "load-aware", [0.5, 0.5])

    @pytest.mark.parametrize("assignor", ASSIGNORS)
    def test_every_partition_has_exactly_one_owner(self, assignor: Assignor) -> None:
        """Each assignor hands out every partition once."""
        owned = assign(16, 5, assignor, [1 / 16] * 16)
        assert sorted(p for member in owned for p in member) == list(range(16))

    def test_a_group_without_members_is_refused(self) -> None:
        """Zero workers is an error, not an empty assignment."""
        with pytest.raises(ValueError, match="at least one member"):
            assign(6, 0, "range")


class TestBusiestWorker:
    def test_a_second_worker_idles_under_range_at_six_partitions(self) -> None:
        """The four demo lines sit on 0-2 of 6: the range assignor gives one worker all."""
        spread = planned_spread(EQUAL_FOUR, 6)
        assert spread.busiest_worker(2, "range") == pytest.approx(1.0)
        assert spread.busiest_worker(2, "round-robin") == pytest.approx(0.75)

    def test_more_workers_than_busy_partitions_stop_at_the_busiest_partition(self) -> None:
        """Past the busy partitions' count, workers add nothing: the ceiling is one partition."""
        spread = planned_spread(EQUAL_FOUR, 6)
        for assignor in ASSIGNORS:
            assert spread.busiest_worker(6, assignor) == pytest.approx(0.5)

    @pytest.mark.parametrize("partitions", [6, 8, 12, 16])
    def test_load_aware_is_never_worse_than_what_kafka_assigns(self, partitions: int) -> None:
        """The load-aware spread is the best case the table compares Kafka's assignors to."""
        weights = {f"line-{i:02d}": 1.0 + i % 5 for i in range(24)}
        spread = planned_spread(weights, partitions)
        for workers in (2, 3, 4):
            best = spread.busiest_worker(workers, "load-aware")
            assert best <= spread.busiest_worker(workers, "range") + 1e-12
            assert best <= spread.busiest_worker(workers, "round-robin") + 1e-12
            assert best >= max(spread.busiest.share, 1 / workers) - 1e-12


class TestRecommend:
    def test_one_line_is_even_only_on_one_partition(self) -> None:
        """A single line fills one partition: any count above 1 is N times even."""
        advice = recommend({"catheters": 1}, [1, 2, 4], 0.25)
        assert advice.partitions == 1
        assert [advice.load(s) for s in advice.candidates] == [1.0, 2.0, 4.0]

    def test_no_count_within_tolerance_names_the_most_even(self) -> None:
        """When nothing fits, the advice is None and the nearest candidate is offered."""
        advice = recommend(EQUAL_FOUR, [6, 7, 8, 12, 16], 0.25)
        assert advice.partitions is None
        assert advice.most_even.count == 7  # the only count that separates all four
        assert advice.load(advice.most_even) == pytest.approx(7 / 4)
        assert advice.heaviest_line.share == pytest.approx(0.25)

    def test_the_smallest_fitting_count_wins(self) -> None:
        """Among fitting counts the smallest is chosen; candidates are searched in order."""
        weights = {"catheters": 1, "infusion-pumps": 1}  # murmur2: partitions 0 and 1 of 2
        advice = recommend(weights, [4, 2, 3], 0.0)
        assert [s.count for s in advice.candidates] == [2, 3, 4]
        assert advice.partitions == 2

    def test_for_workers_the_busiest_worker_is_judged(self) -> None:
        """Two lines on partitions 0 and 1 of 6: round-robin splits them, range does not."""
        weights = {"catheters": 1, "infusion-pumps": 1}
        assert recommend(weights, [6], 0.0, workers=2, assignor="round-robin").partitions == 6
        assert recommend(weights, [6], 0.0, workers=2, assignor="range").partitions is None

    @pytest.mark.parametrize(
        ("candidates", "tolerance", "match"),
        [([6], -0.1, "tolerance"), ([], 0.25, "no candidate")],
    )
    def test_unusable_questions_are_refused(
        self, candidates: list[int], tolerance: float, match: str
    ) -> None:
        """A negative tolerance or no candidates is an error."""
        with pytest.raises(ValueError, match=match):
            recommend(EQUAL_FOUR, candidates, tolerance)


class TestReadLineWeights:
    def test_comma_list_with_optional_weights(self) -> None:
        """`a,b=2,c` is three lines, b twice as busy as the others."""
        assert read_line_weights("a, b=2,c") == {"a": 1.0, "b": 2.0, "c": 1.0}

    def test_file_with_rows_and_comments(self) -> None:
        """One line per row, `line weight`, comments and blank rows ignored."""
        text = "# the Cork lines\ncatheters 120\n\nstents   30.5  # new in 2026\n"
        assert read_line_weights(text) == {"catheters": 120.0, "stents": 30.5}

    def test_a_line_named_twice_adds_up(self) -> None:
        """Two rows for one line (two sites, say) sum."""
        assert read_line_weights("a=1,a=2") == {"a": 3.0}

    @pytest.mark.parametrize(("text", "match"), [("a=x", "'a=x'"), (" # nothing\n", "no product")])
    def test_unreadable_text_is_refused(self, text: str, match: str) -> None:
        """A weight that is no number, or no line at all, is an error naming the entry."""
        with pytest.raises(ValueError, match=match):
            read_line_weights(text)
