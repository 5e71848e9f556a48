"""Deeply nested CDC JSON is a dead letter (`limits`), and the changes after it still apply.

JSON nested 10,000 levels once raised RecursionError out of the JSON parser through the
master-data agent: the worker crashed on it after every restart and no master data changed
again. Written straight to the CDC topics, as tests/integration/test_golden_records.py does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.pipeline import PipelineProcesses, wait_for
from tests.integration.test_golden_records import (
    START_TIMEOUT,
    STEP_TIMEOUT,
    Cdc,
    _rows,
    _running_pipeline,
)

pytestmark = pytest.mark.integration

DEPTH = 10_000


@pytest.fixture
def pipeline(
    kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str, tmp_path: Path
) -> Iterator[PipelineProcesses]:
    with _running_pipeline(kafka_bootstrap, postgres_dsn, topic_prefix, tmp_path) as processes:
        yield processes


class TestDeepNesting:
    def test_dead_lettered_as_limits_and_the_next_change_applies(
        self, pipeline: PipelineProcesses, postgres_dsn: str
    ) -> None:
        """A deep JSON text column and a deep envelope: two `limits` letters, then more.

        The valid change sent after them becomes a golden record; the worker stays up.
        """
        settings = pipeline.settings
        prefix = settings.topic_prefix
        equipment = f"EQ-{prefix.strip('.')}"
        key = {"equipment_id": equipment}
        asset = {
            **key,
            "description": "CMM Zeiss Contura",
            "site": "BOS1",
            "calibration_status": "CALIBRATED",
            "calibration_due": 20_600,
        }
        cdc = Cdc(settings)
        deep_text = '{"a":' * DEPTH + "1" + "}" * DEPTH  # jsonb arrives as JSON text
        cdc.change("cmms.asset", "c", key, {**asset, "description": deep_text}, lsn=50)
        deep_envelope = '{"op": "c", "after": {"x": ' + "[" * DEPTH + "]" * DEPTH + "}}"
        cdc.raw("cmms.asset", json.dumps(key).encode(), deep_envelope.encode())
        cdc.change("cmms.asset", "c", key, asset, lsn=100)
        cdc.flush()

        wait_for(
            lambda: bool(
                _rows(
                    postgres_dsn,
                    "SELECT 1 FROM qms.golden_record WHERE kind = 'equipment'"
                    " AND entity_id = %s AND kafka_topic LIKE %s",
                    equipment,
                    prefix + "%",
                )
            ),
            timeout=START_TIMEOUT,
            what="the golden record of the valid change after the deep ones",
            alive=pipeline.assert_alive,
        )

        def letters() -> list[tuple[str, str]]:
            return [
                (str(code), str(reason))
                for code, reason in _rows(
                    postgres_dsn,
                    "SELECT reason_code, reason FROM qms.dead_letter WHERE stage = 'master-data'"
                    " AND source_topic = %s ORDER BY source_offset",
                    cdc.topic("cmms.asset"),
                )
            ]

        wait_for(
            lambda: len(letters()) >= 2,
            timeout=STEP_TIMEOUT,
            what="two dead letters for the deep records",
            alive=pipeline.assert_alive,
        )
        (code1, reason1), (code2, reason2) = letters()
        assert (code1, code2) == ("limits", "limits")
        assert "after.description is nested 10,000 levels; at most 64" in reason1
        assert "value.after.x[0] is nested 10,002 levels; at most 64" in reason2
        pipeline.assert_alive()
