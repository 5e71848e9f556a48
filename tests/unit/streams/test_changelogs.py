"""The changelog topics the worker creates before it starts are the ones Faust would create."""

from __future__ import annotations

import faust

from streams.changelogs import ChangelogSpec, changelog_specs


def test_each_table_gets_its_changelog_with_fausts_cleanup_rules() -> None:
    """Name `<app>-<table>-changelog`, the table's partitions (or the app's), compacted."""
    app = faust.App("p.qmsflow", store="memory://", topic_partitions=6)
    app.Table("dedup-seen", default=None, partitions=4, extra_topic_configs={"retention.ms": 5})
    app.Table("parked", default=None)
    assert changelog_specs(app) == [
        ChangelogSpec(
            "p.qmsflow-dedup-seen-changelog",
            4,
            1,
            {"cleanup.policy": "compact", "retention.ms": "5"},
        ),
        ChangelogSpec("p.qmsflow-parked-changelog", 6, 1, {"cleanup.policy": "compact"}),
    ]
