"""The fused normalise + dedup stage, on real contracts and demo records (no Kafka)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from qmsflow.contracts import AvroCodec
from qmsflow.contracts.registry import FileSchemaRegistry
from qmsflow.demo.traffic import DemoRecord, DemoTraffic, corrupt_payloads
from qmsflow.quality.data_dictionary import load_dictionary
from qmsflow.quality.dedup import RetentionQueue, SeenEvent
from qmsflow.quality.ingest import (
    CANONICAL_SUBJECT,
    DeadLettered,
    Duplicate,
    Emit,
    IngestStage,
    RawMessage,
)
from qmsflow.settings import PROJECT_ROOT
from qmsflow.topics import load_catalog


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec(FileSchemaRegistry.load(PROJECT_ROOT / "schemas" / "avro"))


@pytest.fixture(scope="module")
def stage(codec: AvroCodec) -> IngestStage:
    return IngestStage(codec, load_catalog(), load_dictionary(), topic_prefix="t1.")


def _message(
    codec: AvroCodec, record: DemoRecord, offset: int = 0, key: bytes | None = None
) -> RawMessage:
    return RawMessage(
        topic=f"t1.{record.topic}",
        partition=3,
        offset=offset,
        key=record.key.encode() if key is None else key,
        value=codec.encode(f"{record.topic}-value", record.record),
        headers=[("source_system", b"QMS")],
        timestamp_ms=1_700_000_000_000,
    )


def _records(n: int, seed: int = 11) -> list[DemoRecord]:
    return list(DemoTraffic(seed, datetime(2026, 3, 1, tzinfo=UTC)).records(n))


class TestDecode:
    def test_every_ingest_type_becomes_a_canonical_event(
        self, stage: IngestStage, codec: AvroCodec
    ) -> None:
        """Each of the ten record types normalises and encodes under the canonical contract."""
        seen_types = set()
        for offset, record in enumerate(_records(3000)):
            event = stage.decode(_message(codec, record, offset))
            assert isinstance(event, dict), event
            seen_types.add(event["event_type"])
            assert event["status"] in {"open", "in_progress", "in_review", "closed", "cancelled"}
            assert event["lineage"]["topic"] == f"t1.{record.topic}"
            assert event["lineage"]["offset"] == offset
            codec.encode(CANONICAL_SUBJECT, dict(event))
        assert len(seen_types) == 10

    def test_units_become_ucum_codes(self, stage: IngestStage, codec: AvroCodec) -> None:
        """A source unit such as degC is stored as its UCUM code Cel."""
        readings = [r for r in _records(400) if r.topic == "ems.environmental-reading.v1"]
        units = set()
        for record in readings:
            event = stage.decode(_message(codec, record))
            assert isinstance(event, dict)
            units.add(event["payload"][1]["unit"])
        assert "Cel" in units and "degC" not in units

    def test_key_must_be_the_product_line(self, stage: IngestStage, codec: AvroCodec) -> None:
        """A record keyed by anything but its product line is dead-lettered, naming both."""
        record = _records(1)[0]
        outcome = stage.decode(_message(codec, record, key=b"wrong-line"))
        assert isinstance(outcome, DeadLettered)
        assert outcome.letter["reason_code"] == "normalise"
        assert "wrong-line" in outcome.letter["reason"] and record.key in outcome.letter["reason"]

    def test_unknown_status_is_a_dead_letter_not_a_guess(
        self, stage: IngestStage, codec: AvroCodec
    ) -> None:
        """A status word missing from the data dictionary is rejected with the word named."""
        record = _records(1)[0]
        record.record["status"] = "Sort of Done"
        outcome = stage.decode(_message(codec, record))
        assert isinstance(outcome, DeadLettered)
        assert "'Sort of Done'" in outcome.letter["reason"]

    def test_record_on_the_wrong_topic_is_rejected(
        self, stage: IngestStage, codec: AvroCodec
    ) -> None:
        """A CAPA written to the nonconformance topic does not pass as a nonconformance."""
        capa = next(r for r in _records(500) if r.topic == "qms.capa.v1")
        message = _message(codec, capa)
        moved = RawMessage("t1.qms.nonconformance.v1", 0, 9, message.key, message.value, [], None)
        outcome = stage.decode(moved)
        assert isinstance(outcome, DeadLettered)

    def test_corrupt_bytes_keep_their_original_value(self, stage: IngestStage) -> None:
        """Malformed bytes become dead letters carrying the untouched bytes and coordinates."""
        for offset, payload in enumerate(corrupt_payloads(12, random.Random(3))):
            message = RawMessage(
                "t1.lims.lab-result.v1", 2, offset, b"catheters", payload, [], None
            )
            outcome = stage.decode(message)
            assert isinstance(outcome, DeadLettered)
            assert outcome.letter["value"] == payload
            assert (outcome.letter["partition"], outcome.letter["offset"]) == (2, offset)
            assert outcome.letter["reason"]

    def test_dead_letter_id_is_stable_across_reprocessing(self, stage: IngestStage) -> None:
        """Processing the same bad record twice yields the same dead-letter id."""
        message = RawMessage("t1.qms.capa.v1", 1, 42, b"k", b"garbage", [], None)
        first, second = stage.decode(message), stage.decode(message)
        assert isinstance(first, DeadLettered) and isinstance(second, DeadLettered)
        assert first.letter["dead_letter_id"] == second.letter["dead_letter_id"]


class TestDataDictionary:
    def test_three_systems_words_for_one_defect_share_a_category(
        self, stage: IngestStage, codec: AvroCodec
    ) -> None:
        """QMS 'defect', MES-sourced 'yield loss' and a LIMS OOS are one canonical category."""
        records = _records(3000)
        nc = next(r for r in records if r.topic == "qms.nonconformance.v1")
        lab = next(r for r in records if r.topic == "lims.lab-result.v1")
        categories = set()
        for word in ("defect", "yield loss"):
            nc.record["payload"]["defect_code"] = word
            event = stage.decode(_message(codec, nc))
            assert isinstance(event, dict)
            categories.add(event["defect_category"])
        lab.record["payload"]["result_status"] = "OOS"
        event = stage.decode(_message(codec, lab))
        assert isinstance(event, dict)
        categories.add(event["defect_category"])
        assert categories == {"nonconforming_product"}

    def test_conforming_result_has_no_defect_category(
        self, stage: IngestStage, codec: AvroCodec
    ) -> None:
        """An accepted inspection is not a defect of any kind."""
        inspection = next(r for r in _records(500) if r.topic == "mes.inspection-result.v1")
        inspection.record["payload"]["result"] = "A"
        event = stage.decode(_message(codec, inspection))
        assert isinstance(event, dict) and event["defect_category"] is None

    def test_unknown_defect_word_is_a_dead_letter(
        self, stage: IngestStage, codec: AvroCodec
    ) -> None:
        """A defect word the dictionary lacks is rejected with the word named."""
        nc = next(r for r in _records(3000) if r.topic == "qms.nonconformance.v1")
        nc.record["payload"]["defect_code"] = "gremlins"
        outcome = stage.decode(_message(codec, nc))
        assert isinstance(outcome, DeadLettered) and "'gremlins'" in outcome.letter["reason"]

    def test_values_take_the_declared_precision(self, stage: IngestStage, codec: AvroCodec) -> None:
        """A pH of 7.435 is stored as 7.44: two decimals, rounded half-even."""
        lab = next(
            r
            for r in _records(5000)
            if r.topic == "lims.lab-result.v1" and r.record["payload"]["analyte"] == "pH"
        )
        lab.record["payload"]["result_value"] = Decimal("7.435")
        event = stage.decode(_message(codec, lab))
        assert isinstance(event, dict)
        assert event["payload"][1]["result_value"] == Decimal("7.44")

    def test_value_in_another_unit_is_rejected(self, stage: IngestStage, codec: AvroCodec) -> None:
        """A temperature in Fahrenheit is not silently compared with Celsius limits."""
        reading = next(
            r
            for r in _records(500)
            if r.topic == "ems.environmental-reading.v1"
            and r.record["payload"]["parameter"] == "temperature"
        )
        reading.record["payload"]["unit"] = "degF"
        outcome = stage.decode(_message(codec, reading))
        assert isinstance(outcome, DeadLettered)
        assert "'Cel'" in outcome.letter["reason"] and "'[degF]'" in outcome.letter["reason"]


class TestJudge:
    def test_resend_is_a_duplicate(self, stage: IngestStage, codec: AvroCodec) -> None:
        """The same event again, even at another offset, is a duplicate."""
        record = _records(1)[0]
        first = stage.decode(_message(codec, record, offset=1))
        assert isinstance(first, dict)
        emitted = stage.judge(first, _message(codec, record, offset=1), None)
        assert isinstance(emitted, Emit)
        again = stage.decode(_message(codec, record, offset=99))
        assert isinstance(again, dict)
        assert isinstance(stage.judge(again, _message(codec, record, 99), emitted.seen), Duplicate)

    def test_reused_event_id_with_other_content_is_a_conflict(
        self, stage: IngestStage, codec: AvroCodec
    ) -> None:
        """An event_id reused for different content is dead-lettered as an idempotency conflict."""
        record = _records(1)[0]
        first = stage.decode(_message(codec, record))
        assert isinstance(first, dict)
        seen = stage.judge(first, _message(codec, record), None)
        assert isinstance(seen, Emit)
        record.record["source_record_id"] = "CHANGED-1"
        changed = stage.decode(_message(codec, record, offset=5))
        assert isinstance(changed, dict)
        outcome = stage.judge(changed, _message(codec, record, 5), seen.seen)
        assert isinstance(outcome, DeadLettered)
        assert outcome.letter["reason_code"] == "idempotency-conflict"


class TestRetentionQueue:
    def test_ids_expire_by_event_time_per_partition(self) -> None:
        """An id is forgotten once its partition's event time passes its time plus retention."""
        queue = RetentionQueue(timedelta(seconds=10))
        queue.remember("a", SeenEvent("f", 1_000_000, 0))
        queue.remember("b", SeenEvent("f", 5_000_000, 0))
        queue.remember("c", SeenEvent("f", 1_000_000, 1))
        assert queue.advance(0, 10_000_000) == []
        assert queue.advance(0, 11_500_000) == ["a"]
        assert queue.advance(0, 3_000_000) == []  # event time never moves the watermark back
        assert queue.advance(0, 16_000_000) == ["b"]
        assert len(queue) == 1  # partition 1 untouched
