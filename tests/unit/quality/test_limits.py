"""Boundary limits: values Avro accepts but the platform must refuse, each one dead letter."""

from __future__ import annotations

import copy
import tomllib
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from qmsflow.contracts import AvroCodec
from qmsflow.contracts.registry import FileSchemaRegistry
from qmsflow.demo.traffic import DemoRecord, DemoTraffic
from qmsflow.errors import ConfigurationError
from qmsflow.quality.data_dictionary import load_dictionary, parse_dictionary
from qmsflow.quality.ingest import DeadLettered, IngestStage, RawMessage
from qmsflow.settings import PROJECT_ROOT
from qmsflow.topics import load_catalog

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(FileSchemaRegistry.load(PROJECT_ROOT / "schemas" / "avro"))


@pytest.fixture(scope="module")
def stage(codec: AvroCodec) -> IngestStage:
    return IngestStage(
        codec, load_catalog(), load_dictionary(), max_clock_skew=timedelta(minutes=15)
    )


@pytest.fixture(scope="module")
def demo() -> dict[str, DemoRecord]:
    """One demo record per ingest topic, recorded an hour ago."""
    first: dict[str, DemoRecord] = {}
    for record in DemoTraffic(3, NOW - timedelta(hours=2)).records(400):
        first.setdefault(record.topic, record)
    return first


def _decide(stage: IngestStage, codec: AvroCodec, record: DemoRecord) -> Any:
    message = RawMessage(
        topic=record.topic,
        partition=0,
        offset=7,
        key=record.key.encode(),
        value=codec.encode(f"{record.topic}-value", record.record),
        headers=[],
        timestamp_ms=None,
    )
    return stage.decode(message)


def _with(record: DemoRecord, path: str, value: Any) -> DemoRecord:
    changed = copy.deepcopy(record.record)
    *parents, last = path.split(".")
    target = changed
    for part in parents:
        target = target[part]
    target[last] = value
    key = value if path == "product_line" else record.key
    return DemoRecord(record.topic, key, changed)


def _refused(outcome: Any) -> str:
    assert isinstance(outcome, DeadLettered), f"accepted: {outcome}"
    assert outcome.letter["reason_code"] == "limits"
    reason: str = outcome.letter["reason"]
    return reason


class TestValidRecordsPass:
    def test_every_demo_type_passes(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """Realistic records of all ten types pass every limit."""
        assert len(demo) == 10
        for record in demo.values():
            assert isinstance(_decide(stage, codec, record), dict), record.topic

    def test_free_text_keeps_tabs_and_line_breaks(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """Narratives may hold tabs and line breaks; they are not control characters to refuse."""
        record = _with(demo["qms.capa.v1"], "payload.title", "Seal\tleak\r\nline 2")
        assert isinstance(_decide(stage, codec, record), dict)

    def test_non_ascii_free_text_passes(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """Narratives are written in the plant's languages; only ids are ASCII."""
        record = _with(demo["qms.capa.v1"], "payload.title", "Dichtung undicht – Prüfung ½ µm")
        assert isinstance(_decide(stage, codec, record), dict)


class TestStrings:
    def test_nul_in_an_identifier(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """A NUL in an id is refused at the door (Postgres would refuse the row later)."""
        reason = _refused(
            _decide(
                stage, codec, _with(demo["qms.nonconformance.v1"], "source_record_id", "NCR-\x00-1")
            )
        )
        assert reason.startswith("limits: source_record_id contains the control character U+0000")

    def test_nul_inside_the_payload_text(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """A NUL inside a payload narrative: the path and position are named."""
        record = _with(demo["qms.nonconformance.v1"], "payload.description", "crack\x00ed")
        reason = _refused(_decide(stage, codec, record))
        assert "payload.description contains the control character U+0000 at position 5" in reason

    def test_c1_control_refused_in_free_text(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """C1 controls (U+0080-U+009F) are refused even in free text."""
        reason = _refused(
            _decide(stage, codec, _with(demo["qms.capa.v1"], "payload.title", "a\x85b"))
        )
        assert "U+0085" in reason

    def test_line_break_refused_in_a_single_line_field(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """Fields other than the narratives are single-line."""
        reason = _refused(_decide(stage, codec, _with(demo["qms.capa.v1"], "status", "open\n")))
        assert "limits: status contains the control character U+000A" in reason

    def test_over_long_title_names_field_and_limit(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """The reason names the field path, its length and the limit."""
        record = _with(demo["qms.capa.v1"], "payload.title", "x" * 500_012)
        reason = _refused(_decide(stage, codec, record))
        assert reason.startswith("limits: payload.title is 500,012 characters; at most 20,000")

    def test_long_random_lot_id(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """A 6,000-character lot id would overflow the B-tree index in the sink."""
        record = _with(demo["qms.nonconformance.v1"], "lot_id", "L" * 6000)
        assert _refused(_decide(stage, codec, record)).startswith(
            "limits: lot_id is 6,000 characters; at most 128"
        )

    @pytest.mark.parametrize(
        ("field", "value", "character"),
        [
            ("lot_id", "LOT-\u202e0001", "U+202E"),  # right-to-left override
            ("supplier_id", "SUP\u200b-17", "U+200B"),  # zero-width space
            ("part_number", "PN 100", "U+0020"),
            ("site", "BOS\u04251", "U+0425"),  # Cyrillic look-alike
        ],
    )
    def test_identifier_character_class(
        self,
        stage: IngestStage,
        codec: AvroCodec,
        demo: dict[str, DemoRecord],
        field: str,
        value: str,
        character: str,
    ) -> None:
        """Bidirectional overrides, zero-width and look-alike characters never reach an id."""
        reason = _refused(_decide(stage, codec, _with(demo["qms.nonconformance.v1"], field, value)))
        assert reason.startswith(f"limits: {field} ")
        assert f"first refused character {character}" in reason

    def test_identifiers_inside_lists(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """Lists of ids are checked item by item, with `[]` in the path."""
        record = _with(
            demo["qms.nonconformance.v1"], "payload.affected_lots", ["LOT-1", "LOT\x002"]
        )
        assert "payload.affected_lots[] contains the control character U+0000" in _refused(
            _decide(stage, codec, record)
        )

    def test_list_length(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """A list is bounded in items, not only its items in length."""
        record = _with(demo["qms.nonconformance.v1"], "payload.serial_numbers", ["S1"] * 1001)
        assert "payload.serial_numbers has 1,001 items; at most 1,000" in _refused(
            _decide(stage, codec, record)
        )


class TestTimes:
    def test_recorded_far_in_the_future(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """Year 3000 is valid Avro, but would move every event-time clock of its partition."""
        future = datetime(3000, 1, 1, tzinfo=UTC)
        reason = _refused(_decide(stage, codec, _with(demo["qms.capa.v1"], "recorded_at", future)))
        assert reason.startswith("limits: recorded_at is 3000-01-01T00:00:00+00:00; the latest")

    def test_within_the_clock_skew_passes(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """A producer clock slightly ahead is tolerated."""
        soon = datetime.now(UTC) + timedelta(minutes=10)
        record = _with(demo["qms.capa.v1"], "recorded_at", soon)
        assert isinstance(_decide(stage, codec, record), dict)

    def test_beyond_the_clock_skew_refused(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """Past now + QMSFLOW_MAX_CLOCK_SKEW is refused."""
        later = datetime.now(UTC) + timedelta(minutes=20)
        _refused(_decide(stage, codec, _with(demo["qms.capa.v1"], "occurred_at", later)))

    def test_far_past(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """Before QMSFLOW_EARLIEST_EVENT_TIME is refused."""
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        reason = _refused(_decide(stage, codec, _with(demo["qms.capa.v1"], "occurred_at", epoch)))
        assert "the earliest accepted is 2000-01-01T00:00:00+00:00" in reason

    def test_signature_time_is_bounded_too(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord]
    ) -> None:
        """Every timestamp of the record is in the window, nested ones too."""
        record = next(r for r in demo.values() if r.record["signature"] is not None)
        future = datetime(2999, 1, 1, tzinfo=UTC)
        assert "signature.signed_at" in _refused(
            _decide(stage, codec, _with(record, "signature.signed_at", future))
        )

    @pytest.mark.parametrize("due", [date(9999, 12, 31), date(1, 1, 1)])
    def test_due_date_outside_the_arithmetic_range(
        self, stage: IngestStage, codec: AvroCodec, demo: dict[str, DemoRecord], due: date
    ) -> None:
        """A due date escalation could not compute with is refused."""
        reason = _refused(
            _decide(stage, codec, _with(demo["qms.capa.v1"], "payload.due_date", due))
        )
        assert reason.startswith(f"limits: payload.due_date is {due.isoformat()}")
        assert "between 1900-01-01 and 2999-12-31" in reason


class TestRulesValidatedAtStartUp:
    @staticmethod
    def _document() -> dict[str, Any]:
        text = (PROJECT_ROOT / "qmsflow" / "config" / "data_dictionary.toml").read_text("utf-8")
        return tomllib.loads(text)

    def test_shipped_rules_load(self) -> None:
        """The shipped dictionary's limits validate."""
        assert load_dictionary().limits.identifier.max_length == 128

    def test_missing_limits_refused(self) -> None:
        """A dictionary without limits fails at start-up, not at the first record."""
        document = self._document()
        del document["limits"]
        with pytest.raises(ConfigurationError):
            parse_dictionary(document)

    def test_identifier_characters_must_be_one_class(self) -> None:
        """The identifier class must be one character class."""
        document = self._document()
        document["limits"]["identifier"]["characters"] = ".*"
        with pytest.raises(ConfigurationError, match="one character class"):
            parse_dictionary(document)

    def test_a_field_cannot_be_both_kinds(self) -> None:
        """A field is free text or an identifier, not both."""
        document = self._document()
        document["limits"]["free_text_fields"].append("lot_id")
        with pytest.raises(ConfigurationError, match="both free text and identifier"):
            parse_dictionary(document)

    def test_latest_date_leaves_room_for_arithmetic(self) -> None:
        """The latest date leaves room to add escalation days."""
        document = self._document()
        document["limits"]["latest_date"] = date(9999, 12, 31)
        with pytest.raises(ConfigurationError, match="room for date arithmetic"):
            parse_dictionary(document)
