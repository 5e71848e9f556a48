"""The producers' guide states the limits the worker enforces (rules as data, docs as a reading)."""

from __future__ import annotations

from qmsflow.quality.data_dictionary import load_dictionary
from qmsflow.settings import PROJECT_ROOT, Settings

GUIDE = (PROJECT_ROOT / "docs" / "producers.md").read_text("utf-8")
LIMITS = GUIDE.split("## Limits", 1)[1]


def test_every_named_field_is_listed() -> None:
    """Each identifier and free-text field of the dictionary appears in the guide's table."""
    limits = load_dictionary().limits
    missing = [
        f for f in limits.identifier_fields | limits.free_text_fields if f"`{f}`" not in LIMITS
    ]
    assert not missing, f"docs/producers.md does not list {sorted(missing)}"


def test_every_number_is_stated() -> None:
    """Lengths, list size and date range as the dictionary has them."""
    limits = load_dictionary().limits
    for number in (
        limits.identifier.max_length,
        limits.free_text.max_length,
        limits.text.max_length,
        limits.max_list_items,
    ):
        assert f"{number:,} " in LIMITS, number
    assert f"between {limits.earliest_date} and {limits.latest_date}" in LIMITS


def test_time_window_defaults_are_stated() -> None:
    """The settings' defaults for the event-time window match the guide."""
    earliest = Settings.model_fields["earliest_event_time"].default
    skew = Settings.model_fields["max_clock_skew"].default
    assert f"({earliest.date()} UTC)" in LIMITS
    assert f"({int(skew.total_seconds() // 60)} min)" in LIMITS
