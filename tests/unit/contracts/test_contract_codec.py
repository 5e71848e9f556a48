"""Encoding and decoding framed Avro records."""

from __future__ import annotations

import contextlib
import copy
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from io import BytesIO
from typing import Any

import pytest
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from qmsflow.contracts import AvroCodec, FileSchemaRegistry, frame
from qmsflow.errors import (
    ContractError,
    DecodeError,
    FramingError,
    UnknownSchemaError,
    WrongSubjectError,
)

NONCONFORMANCE = "qms.nonconformance.v1-value"
CAPA = "qms.capa.v1-value"

# (subject, event_type, source_system, source_record_id, payload) for one realistic event each
PAYLOADS: list[tuple[str, str, str, str, dict[str, Any]]] = [
    (
        NONCONFORMANCE,
        "nonconformance",
        "QMS",
        "NCR-1042",
        {
            "title": "Cracked housing on final assembly",
            "description": "Hairline crack at boss 3 found at final visual inspection.",
            "nc_source": "internal",
            "defect_code": "crack",
            "quantity": Decimal("12"),
            "unit": "ea",
            "part_revision": "C",
            "serial_numbers": ["SN-000871", "SN-000872"],
            "affected_lots": ["L2026-0412"],
            "disposition": "scrap",
            "risk_priority_number": 240,
        },
    ),
    (
        CAPA,
        "capa",
        "QMS",
        "CAPA-77",
        {
            "title": "Moulding parameters drift on press 4",
            "capa_type": "corrective",
            "root_cause": "Barrel heater controller out of calibration",
            "owner_id": "u.okafor",
            "due_date": date(2026, 6, 30),
            "linked_records": ["NCR-1042", "DEV-310"],
            "effectiveness": None,
        },
    ),
    (
        "qms.deviation.v1-value",
        "deviation",
        "QMS",
        "DEV-310",
        {
            "title": "Cleanroom gowning step skipped",
            "description": "Operator entered grade B area without a second glove change (SOP-112).",
            "classification": "minor",
            "deviation_scope": "internal",
            "planned": False,
            "due_date": date(2026, 5, 15),
        },
    ),
    (
        "qms.audit-finding.v1-value",
        "audit_finding",
        "QMS",
        "AF-2026-019",
        {
            "audit_id": "AUD-2026-004",
            "classification": "major",
            "requirement_ref": "21 CFR 820.100",
            "description": "CAPA effectiveness checks not documented for 3 of 10 sampled CAPAs.",
            "response_due_date": date(2026, 5, 1),
            "capa_required": True,
        },
    ),
    (
        "supplier.corrective-action.v1-value",
        "supplier_corrective_action",
        "SUPPLIER_PORTAL",
        "SCAR-0193",
        {
            "scar_number": "SCAR-0193",
            "issue_description": "Resin lot out of melt-flow specification",
            "related_ncr": "NCR-1040",
            "response_due_date": date(2026, 5, 20),
        },
    ),
    (
        "mes.inspection-result.v1-value",
        "inspection_result",
        "MES",
        "INSP-2026-0012",
        {
            "inspection_lot_id": "IL-88120",
            "characteristic": "bore diameter",
            "result": "R",
            "measured_value": Decimal("12.071500"),
            "unit": "mm",
            "lower_limit": Decimal("11.980000"),
            "upper_limit": Decimal("12.050000"),
            "sample_size": 32,
            "defects_found": 2,
        },
    ),
    (
        "lims.lab-result.v1-value",
        "lab_result",
        "LIMS",
        "LR-556120",
        {
            "sample_id": "S-2026-04410",
            "test_code": "KF-WATER",
            "analyte": "water content",
            "result_value": Decimal("0.62"),
            "result_text": None,
            "unit": "% w/w",
            "spec_low": None,
            "spec_high": Decimal("0.5"),
            "result_status": "OOS",
            "method_ref": "USP <921> Method Ia",
            "instrument_id": "KF-03",
        },
    ),
    (
        "ems.environmental-reading.v1-value",
        "environmental_reading",
        "EMS",
        "EMS-BOS1-R-99812234",
        {
            "location_id": "BOS1-CR2-P07",
            "parameter": "particles_0_5um",
            "value": Decimal("3710"),
            "unit": "count/m3",
            "alert_limit": Decimal("3000"),
            "action_limit": Decimal("3520"),
            "cleanroom_grade": "A",
        },
    ),
    (
        "cmms.calibration-event.v1-value",
        "calibration_event",
        "CMMS",
        "WO-CAL-7781",
        {
            "calibration_id": "CAL-2026-7781",
            "result": "adjusted",
            "due_date": date(2027, 4, 1),
            "as_found_in_tolerance": False,
            "certificate_ref": "CERT-44-9918",
        },
    ),
    (
        "qms.recall.v1-value",
        "recall",
        "QMS",
        "RCL-2026-002",
        {
            "recall_number": "Z-1234-2026",
            "classification": "class_ii",
            "reason": "Sterile barrier may be compromised by sealing defect",
            "lot_ids": [],
            "lot_range_start": "L2026-0400",
            "lot_range_end": "L2026-0415",
        },
    ),
]


def ingest_record(
    event_type: str, source_system: str, source_record_id: str, payload: dict[str, Any]
) -> dict[str, Any]:
    """Build a valid ingest event around a payload, with a signature and an audit entry."""
    return {
        "event_id": uuid.UUID("0b7d0c52-2f1e-4b8e-9f57-6a1d8c3e4f21"),
        "event_type": event_type,
        "source_system": source_system,
        "source_record_id": source_record_id,
        "occurred_at": datetime(2026, 4, 2, 13, 5, 7, 123456, tzinfo=UTC),
        "recorded_at": datetime(2026, 4, 2, 13, 6, 0, tzinfo=UTC),
        "product_line": "infusion-pumps",
        "site": "BOS1",
        "lot_id": "L2026-0412",
        "part_number": "PN-30417",
        "supplier_id": None,
        "equipment_id": "PRESS-04",
        "severity": "major",
        "status": "in progress",
        "signature": {
            "signer_id": "u.lindqvist",
            "printed_name": "Anna Lindqvist",
            "signed_at": datetime(2026, 4, 2, 13, 5, 59, tzinfo=UTC),
            "meaning": "approval",
        },
        "audit": {
            "changed_by": "u.lindqvist",
            "reason": "Disposition agreed at MRB",
            "changes": [{"field": "status", "old_value": "draft", "new_value": "in progress"}],
        },
        "correlation_id": "NCR-1042",
        "synthetic": False,
        "payload": payload,
    }


def record_for(subject: str) -> dict[str, Any]:
    """Build one valid record for an ingest subject."""
    for name, event_type, source, record_id, payload in PAYLOADS:
        if name == subject:
            return ingest_record(event_type, source, record_id, copy.deepcopy(payload))
    raise LookupError(subject)


@pytest.fixture
def codec(registry: FileSchemaRegistry) -> AvroCodec:
    """Build a codec over the committed schemas."""
    return AvroCodec(registry)


class TestRoundTrip:
    @pytest.mark.parametrize("subject", [p[0] for p in PAYLOADS])
    def test_each_ingest_payload(self, codec: AvroCodec, subject: str) -> None:
        """A realistic record of each payload type decodes to what was encoded."""
        record = record_for(subject)
        decoded = codec.decode(codec.encode(subject, record), subject)
        assert decoded.record == record
        assert decoded.schema.subject == subject

    def test_covers_every_ingest_subject(self, ingest_subjects: list[str]) -> None:
        """The round-trip fixtures cover every declared ingest subject."""
        assert sorted(p[0] for p in PAYLOADS) == sorted(ingest_subjects)

    def test_frame_names_newest_version(
        self, codec: AvroCodec, registry: FileSchemaRegistry
    ) -> None:
        """Encoded bytes carry the id of the subject's newest version."""
        decoded = codec.decode(
            codec.encode(NONCONFORMANCE, record_for(NONCONFORMANCE)), NONCONFORMANCE
        )
        assert decoded.schema == registry.latest(NONCONFORMANCE)
        assert decoded.schema.version == 2

    def test_defaults_may_be_left_out(self, codec: AvroCodec) -> None:
        """Fields with defaults are filled in when the record leaves them out."""
        record = record_for(CAPA)
        for name in ("lot_id", "signature", "audit", "correlation_id", "synthetic"):
            del record[name]
        decoded = codec.decode(codec.encode(CAPA, record), CAPA).record
        assert decoded["synthetic"] is False
        assert decoded["signature"] is None

    def test_canonical_event(self, codec: AvroCodec) -> None:
        """A canonical event with a lab-result payload and lineage round-trips."""
        _, event_type, source, record_id, payload = PAYLOADS[6]
        record = ingest_record(event_type, source, record_id, copy.deepcopy(payload))
        record |= {
            "status": "open",
            "source_status": "in progress",
            "source_severity": "major",
            "lineage": {
                "topic": "lims.lab-result.v1",
                "partition": 3,
                "offset": 1_204_551,
                "schema_id": 3,
                "subject": "lims.lab-result.v1-value",
                "schema_version": 1,
                "ingested_at": datetime(2026, 4, 2, 13, 6, 1, tzinfo=UTC),
            },
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "defect_category": "nonconforming_product",
        }
        subject = "quality.events.v1-value"
        assert codec.decode(codec.encode(subject, record), subject).record == record

    def test_dead_letter(self, codec: AvroCodec) -> None:
        """A dead letter keeps the original bytes untouched through a round trip."""
        record = {
            "dead_letter_id": uuid.UUID("7f3e1c8a-5d2b-5a4e-8c1f-0e9d6b7a2c31"),
            "reason_code": "framing",
            "reason": "expected magic byte 0x00, got 0x7b in 12 bytes",
            "stage": "normalise",
            "topic": "qms.capa.v1",
            "partition": 0,
            "offset": 42,
            "key": b"infusion-pumps",
            "value": b'{"json": 1}\n',
            "headers": [{"key": "traceparent", "value": b"00-4bf9-01"}],
            "original_timestamp": datetime(2026, 4, 2, 13, 6, 0, 512000, tzinfo=UTC),
            "failed_at": datetime(2026, 4, 2, 13, 6, 1, tzinfo=UTC),
            "schema_id": None,
            "value_length": 12,
            "value_sha256": "0" * 64,
            "value_truncated": False,
            "headers_dropped": 0,
        }
        subject = "quality.dlq.v1-value"
        assert codec.decode(codec.encode(subject, record), subject).record == record


class TestSchemaResolution:
    def test_v1_nonconformance_reads_as_v2(
        self, codec: AvroCodec, registry: FileSchemaRegistry
    ) -> None:
        """Bytes written with nonconformance v1 decode with the v2 reader, RPN None."""
        v1 = registry.get(NONCONFORMANCE, 1)
        record = record_for(NONCONFORMANCE)
        del record["payload"]["risk_priority_number"]
        body = BytesIO()
        schemaless_writer(body, v1.parsed, record)
        decoded = codec.decode(frame(v1.schema_id, body.getvalue()), NONCONFORMANCE)
        assert decoded.record["payload"]["risk_priority_number"] is None
        assert decoded.record["payload"]["title"] == record["payload"]["title"]
        assert (decoded.schema.version, decoded.schema.schema_id) == (1, v1.schema_id)


class TestDecodeRejections:
    def test_truncated_body(self, codec: AvroCodec) -> None:
        """A body cut short raises DecodeError naming the subject and version."""
        data = codec.encode(CAPA, record_for(CAPA))
        with pytest.raises(DecodeError, match=r"qms\.capa\.v1-value v1"):
            codec.decode(data[: len(data) // 2], CAPA)

    def test_garbage_body(self, codec: AvroCodec, registry: FileSchemaRegistry) -> None:
        """A valid frame around random bytes raises DecodeError."""
        schema_id = registry.latest(CAPA).schema_id
        with pytest.raises(DecodeError):
            codec.decode(frame(schema_id, b"\xff" * 7 + b"\x00garbage\x81"), CAPA)

    def test_trailing_bytes(self, codec: AvroCodec) -> None:
        """Bytes left over after the record raise DecodeError."""
        data = codec.encode(CAPA, record_for(CAPA)) + b"\x00\x00"
        with pytest.raises(DecodeError, match="got 2 more"):
            codec.decode(data, CAPA)

    def test_header_only(self, codec: AvroCodec, registry: FileSchemaRegistry) -> None:
        """A frame with an empty body raises DecodeError."""
        with pytest.raises(DecodeError):
            codec.decode(frame(registry.latest(CAPA).schema_id, b""), CAPA)

    def test_not_framed(self, codec: AvroCodec) -> None:
        """Bytes without the magic byte raise FramingError."""
        with pytest.raises(FramingError):
            codec.decode(b'{"event_id": "x"}', CAPA)

    def test_unknown_schema_id(self, codec: AvroCodec) -> None:
        """A frame naming an id that is not pinned raises UnknownSchemaError."""
        with pytest.raises(UnknownSchemaError, match="got 9999"):
            codec.decode(frame(9999, b"\x00"), CAPA)

    def test_other_subject(self, codec: AvroCodec) -> None:
        """A record written for another subject raises WrongSubjectError, not a decode attempt."""
        data = codec.encode(CAPA, record_for(CAPA))
        with pytest.raises(WrongSubjectError, match="written for another subject") as caught:
            codec.decode(data, NONCONFORMANCE)
        assert caught.value.reason_code == "wrong-subject"


class TestDecodeFuzz:
    @settings(max_examples=300, deadline=None)
    @given(body=st.binary(max_size=400), version=st.sampled_from([1, 2]))
    def test_any_body_decodes_or_raises_decode_error(
        self, registry: FileSchemaRegistry, body: bytes, version: int
    ) -> None:
        """Arbitrary bytes under a valid frame either decode or raise DecodeError, nothing else."""
        codec = AvroCodec(registry)
        data = frame(registry.get(NONCONFORMANCE, version).schema_id, body)
        with contextlib.suppress(DecodeError):
            codec.decode(data, NONCONFORMANCE)


class TestEncodeRejections:
    def test_missing_required_field(self, codec: AvroCodec) -> None:
        """A record without a required field raises ContractError naming it."""
        record = record_for(CAPA)
        del record["payload"]["owner_id"]
        with pytest.raises(ContractError, match=r"missing required field payload\.owner_id"):
            codec.encode(CAPA, record)

    def test_wrong_type(self, codec: AvroCodec) -> None:
        """A field of the wrong type raises ContractError naming the field."""
        record = record_for("mes.inspection-result.v1-value")
        record["payload"]["sample_size"] = "thirty-two"
        with pytest.raises(ContractError, match=r"field payload\.sample_size expects int"):
            codec.encode("mes.inspection-result.v1-value", record)

    def test_unknown_field(self, codec: AvroCodec) -> None:
        """A field the schema does not declare raises ContractError naming it."""
        record = record_for(CAPA)
        record["payload"]["priority"] = "high"
        with pytest.raises(ContractError, match=r"unknown field payload\.priority"):
            codec.encode(CAPA, record)
