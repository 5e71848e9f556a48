"""The ERP request mapping: commands → requests, answers → outcomes, the mapping file itself."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.erp_adapter.errors import ErpMappingError
from connectors.erp_adapter.mapping import (
    ErpResponse,
    ResponseRules,
    build_request,
    classify,
    load_erp_mapping,
    parse_erp_mapping,
)
from qmsflow.errors import ConfigurationError
from qmsflow.quality.quarantine import command_id, load_quarantine_rules

MAPPING = load_erp_mapping()


def command(action: str = "HOLD", **changes: Any) -> dict[str, Any]:
    """A command as the codec decodes it (uuids as UUID, timestamps as aware datetimes)."""
    postings = load_quarantine_rules().postings
    hold = action == "HOLD"
    record: dict[str, Any] = {
        "command_id": uuid.UUID(command_id("LOT 7/A", 1, "HOLD" if hold else "RELEASE")),
        "action": action,
        "lot_id": "LOT 7/A",
        "part_number": "PN-100",
        "product_line": "cardio",
        "site": "BOS1",
        "reason": "NCR-1042 major nonconformance: crack",
        "trigger_event_id": uuid.UUID("7d0b3a52-51d4-4a57-8f8e-0a4b8e2d9c11"),
        "trigger_event_type": "nonconformance",
        "trigger_source_record_id": "NCR-1042",
        "issued_at": datetime(2026, 3, 1, 8, 30, tzinfo=UTC),
        "target_stock_type": postings.hold_stock_type if hold else postings.release_stock_type,
        "sap_movement_type": (
            postings.hold_movement_type if hold else postings.release_movement_type
        ),
    }
    return {**record, **changes}


def shipped_document() -> dict[str, Any]:
    return MAPPING.model_dump(mode="json")


class TestBuildRequest:
    def test_hold_posts_movement_350_to_blocked_stock(self) -> None:
        """A HOLD posts goods movement 350 for plant, material and batch, to blocked stock."""
        request = build_request(command("HOLD"), MAPPING)
        body = json.loads(request.body)
        assert request.method == "POST"
        assert body["goods_movement_type"] == "350"
        assert body["target_stock_type"] == "BLOCKED"
        assert (body["plant"], body["material"], body["batch"]) == ("BOS1", "PN-100", "LOT 7/A")

    def test_release_posts_movement_343_to_unrestricted(self) -> None:
        """A RELEASE posts goods movement 343, blocked to unrestricted stock."""
        body = json.loads(build_request(command("RELEASE"), MAPPING).body)
        assert (body["goods_movement_type"], body["target_stock_type"]) == ("343", "UNRESTRICTED")

    def test_idempotency_key_is_the_command_id(self) -> None:
        """The Idempotency-Key header carries the deterministic command id."""
        request = build_request(command(), MAPPING)
        headers = dict(request.headers)
        assert headers["Idempotency-Key"] == command_id("LOT 7/A", 1, "HOLD")
        assert request.command_id == headers["Idempotency-Key"]
        assert headers["Content-Type"] == "application/json"

    def test_path_values_are_url_encoded(self) -> None:
        """Lot ids with spaces or slashes stay one path segment."""
        request = build_request(command(), MAPPING)
        assert request.path == "/api/qm/v1/plants/BOS1/batches/LOT%207%2FA/goods-movements"

    def test_whole_value_placeholder_keeps_null_and_types(self) -> None:
        """A missing part number is JSON null, and times are ISO 8601 text."""
        body = json.loads(build_request(command(part_number=None), MAPPING).body)
        assert body["material"] is None
        assert body["posting_time"] == "2026-03-01T08:30:00+00:00"

    def test_the_same_command_maps_to_the_same_bytes(self) -> None:
        """Mapping is deterministic, so a resend is byte-for-byte the first request."""
        assert build_request(command(), MAPPING) == build_request(command(), MAPPING)

    def test_unknown_action_is_a_mapping_error(self) -> None:
        """An action the mapping does not know is a dead letter, not a guess."""
        with pytest.raises(ErpMappingError, match="SCRAP"):
            build_request(command(action="SCRAP"), MAPPING)

    def test_null_path_value_is_a_mapping_error(self) -> None:
        """A path placeholder without a value cannot address the ERP resource."""
        with pytest.raises(ErpMappingError, match="site"):
            build_request(command(site=""), MAPPING)


class TestClassify:
    @pytest.mark.parametrize(
        ("status", "outcome"),
        [
            (200, "applied"),
            (201, "applied"),
            (204, "applied"),
            (409, "already-applied"),
            (429, "transient"),
            (408, "transient"),
            (500, "transient"),
            (503, "transient"),
            (None, "transient"),
            (400, "permanent"),
            (404, "permanent"),
            (422, "permanent"),
            (302, "permanent"),
        ],
    )
    def test_status_codes_map_to_outcomes(self, status: int | None, outcome: str) -> None:
        """2xx applied, 409 a repeat, 429/5xx/no answer transient, other 4xx permanent."""
        assert classify(ErpResponse(status, ""), ResponseRules()) == outcome

    def test_the_file_decides_which_codes_are_transient(self) -> None:
        """A 423 is transient only when the mapping says so."""
        rules = ResponseRules(transient=frozenset({423}))
        assert classify(ErpResponse(423, ""), rules) == "transient"
        assert classify(ErpResponse(429, ""), rules) == "permanent"


class TestMappingFile:
    def test_shipped_mapping_validates(self) -> None:
        """The packaged erp_mapping.toml loads and maps both actions."""
        assert set(MAPPING.action) == {"HOLD", "RELEASE"}
        assert MAPPING.idempotency_header == "Idempotency-Key"

    def test_unknown_placeholder_fails_at_start_up(self) -> None:
        """A template naming a field the command lacks is a ConfigurationError naming it."""
        document = shipped_document()
        document["action"]["HOLD"]["body"]["batch"] = "{lot}"
        with pytest.raises(ConfigurationError, match=r"\{lot\}"):
            parse_erp_mapping(document)

    def test_missing_action_fails_at_start_up(self) -> None:
        """A mapping without RELEASE is refused."""
        document = shipped_document()
        del document["action"]["RELEASE"]
        with pytest.raises(ConfigurationError, match="RELEASE"):
            parse_erp_mapping(document)

    def test_mapping_file_from_settings_path(self, tmp_path: Any) -> None:
        """QMSFLOW_ERP_MAPPING_FILE points at a site's own mapping."""
        own = tmp_path / "erp.toml"
        own.write_text(
            'version = 1\nidempotency_header = "X-Request-Id"\n'
            '[action.HOLD]\nmethod = "PUT"\npath = "/batches/{lot_id}/block"\n'
            '[action.HOLD.body]\nmovement = "349"\n'
            '[action.RELEASE]\nmethod = "PUT"\npath = "/batches/{lot_id}/unblock"\n'
            "[action.RELEASE.body]\n",
            "utf-8",
        )
        mapping = load_erp_mapping(own)
        request = build_request(command(), mapping)
        assert (request.method, request.path) == ("PUT", "/batches/LOT%207%2FA/block")
        assert json.loads(request.body) == {"movement": "349"}
        assert dict(request.headers)["X-Request-Id"] == command_id("LOT 7/A", 1, "HOLD")
