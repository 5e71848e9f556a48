"""The status page's JSON: pure computation from two snapshots of raw counts."""

from __future__ import annotations

from datetime import UTC, datetime

from qmsflow.status_page import (
    HISTORY_POINTS,
    IncidentRow,
    PartitionLag,
    SlaCounts,
    Snapshot,
    StatusPage,
    status_document,
)

OPENED = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def _snapshot(
    taken_at: float, ingested: int, canonical: int, dead: int, **more: object
) -> Snapshot:
    return Snapshot(
        taken_at=taken_at,
        ingested=ingested,
        canonical=canonical,
        dead_letters=dead,
        parked=3,
        **more,  # type: ignore[arg-type]
    )


class TestThroughput:
    def test_rates_are_deltas_over_the_interval(self) -> None:
        """Events in and out per interval are end-offset deltas; per second divides by it."""
        doc = status_document(_snapshot(12.0, 1500, 1300, 12), _snapshot(10.0, 1000, 1000, 10))
        assert doc["interval_seconds"] == 2.0
        assert doc["throughput"] == {
            "events_in": 500,
            "events_out": 300,
            "in_per_second": 250.0,
            "out_per_second": 150.0,
        }
        assert doc["errors"]["dead_letters"] == 2
        assert doc["errors"]["dead_letters_per_second"] == 1.0
        assert doc["errors"]["dead_letter_ratio"] == 0.004
        assert doc["errors"]["parked"] == 3

    def test_first_sample_has_zero_rates(self) -> None:
        """Without a previous snapshot there is no interval: every delta is 0, totals are kept."""
        doc = status_document(_snapshot(5.0, 1500, 1300, 12), None)
        assert doc["throughput"]["events_in"] == 0
        assert doc["throughput"]["in_per_second"] == 0.0
        assert doc["errors"]["dead_letter_ratio"] == 0.0
        assert doc["totals"]["ingested"] == 1500
        assert doc["totals"]["dead_letters"] == 12

    def test_shrinking_counts_never_give_negative_rates(self) -> None:
        """A recreated topic or retention lowers the count; the page shows 0, not a negative."""
        doc = status_document(_snapshot(12.0, 10, 10, 0), _snapshot(10.0, 1000, 1000, 5))
        assert doc["throughput"]["events_in"] == 0
        assert doc["errors"]["dead_letters"] == 0


class TestLag:
    def test_lag_sums_per_group_and_lists_partitions(self) -> None:
        """Lag is end − committed per partition, summed per group and over all groups."""
        lag = (
            PartitionLag("qmsflow", "in", 1, 90, 0, 100),
            PartitionLag("qmsflow", "in", 0, 40, 0, 100),
            PartitionLag("qmsflow-sink", "out", 0, 100, 0, 100),
        )
        doc = status_document(_snapshot(1.0, 0, 0, 0, lag=lag), None)
        assert doc["lag"]["total"] == 70
        worker, sink = doc["lag"]["groups"]
        assert worker["group"] == "qmsflow"
        assert worker["lag"] == 70
        assert [p["partition"] for p in worker["partitions"]] == [0, 1]
        assert sink["lag"] == 0

    def test_uncommitted_partition_lags_by_its_retained_records(self) -> None:
        """No committed offset: every retained record (end − low) is still to be consumed."""
        assert PartitionLag("g", "t", 0, None, 20, 50).lag == 30
        assert PartitionLag("g", "t", 0, 10, 20, 50).lag == 30  # committed before retention
        assert PartitionLag("g", "t", 0, 60, 0, 50).lag == 0


class TestSlaAndIncidents:
    def test_compliance_is_outputs_within_sla_over_outputs(self) -> None:
        """2 breaches of 40 outputs is 95 % compliance; an SLA with no outputs is 100 %."""
        sla = (SlaCounts("nc", "NC → hold", 2, 40), SlaCounts("oos", "OOS → incident", 0, 0))
        doc = status_document(_snapshot(1.0, 0, 0, 0, sla=sla), None)
        assert [(s["sla"], s["compliance"]) for s in doc["sla"]] == [("nc", 0.95), ("oos", 1.0)]
        assert doc["sla"][0]["breaches"] == 2

    def test_breaches_count_as_measured_outputs(self) -> None:
        """Breaches whose output rows are not stored yet still count: 3 of 3 late is 0 %."""
        doc = status_document(_snapshot(1.0, 0, 0, 0, sla=(SlaCounts("nc", "", 3, 1),)), None)
        assert doc["sla"][0]["outputs"] == 3
        assert doc["sla"][0]["compliance"] == 0.0

    def test_open_incidents_keep_their_order_and_count(self) -> None:
        """The top incidents are shown as read (largest first) beside the open count."""
        rows = (
            IncidentRow("b", "lot:L2", "critical", 9, "pumps", OPENED),
            IncidentRow("a", "lot:L1", "minor", 2, "valves", OPENED),
        )
        doc = status_document(_snapshot(1.0, 0, 0, 0, open_incidents=14, incidents=rows), None)
        assert doc["incidents"]["open"] == 14
        assert [i["root_cause_key"] for i in doc["incidents"]["top"]] == ["lot:L2", "lot:L1"]
        assert doc["incidents"]["top"][0]["opened_at"] == "2026-03-02T08:00:00+00:00"


class TestStatusPage:
    def test_history_is_bounded_and_oldest_first(self) -> None:
        """The chart history keeps the newest HISTORY_POINTS samples, oldest first."""
        times = iter(range(0, 10_000, 5))

        def read() -> Snapshot:
            t = next(times)
            return _snapshot(float(t), t * 10, t * 9, 0)

        page = StatusPage(read, clock=lambda: 1e9)
        for _ in range(HISTORY_POINTS + 5):
            doc = page.status()
        assert len(doc["history"]) == HISTORY_POINTS
        assert doc["history"][-1]["in_per_second"] == 10.0
        assert doc["history"][0]["time"] <= doc["history"][-1]["time"]

    def test_a_second_request_within_a_second_reuses_the_sample(self) -> None:
        """Two browsers polling together share one sample, so rates keep a real interval."""
        reads: list[float] = []

        def read() -> Snapshot:
            reads.append(100.0)
            return _snapshot(100.0, 1, 1, 0)

        page = StatusPage(read, clock=lambda: 100.5)
        page.status()
        doc = page.status()
        assert len(reads) == 1
        assert len(doc["history"]) == 1
