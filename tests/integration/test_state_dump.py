"""`kill -USR1 <worker pid>` writes the worker's partition table and task stacks to a file."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from qmsflow.demo.produce import produce_demo
from qmsflow.kafka.admin import end_offsets
from tests.integration.pipeline import PipelineProcesses, environment, prepared_settings, wait_for

pytestmark = pytest.mark.integration


def test_sigusr1_writes_where_each_partition_and_task_waits(
    kafka_bootstrap: str, postgres_dsn: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = prepared_settings(kafka_bootstrap, postgres_dsn, topic_prefix)
    env = environment(settings, kafka_bootstrap, postgres_dsn)
    env["QMSFLOW_STACK_DIR"] = str(tmp_path / "stack")
    dumps = tmp_path / "stack" / "dumps"
    processes = PipelineProcesses(settings, env, tmp_path)
    processes.start_worker()
    try:
        produce_demo(settings, count=50, duplicate_rate=0, seed=7, echo=lambda _: None)
        canonical = settings.topic("quality.events.v1")
        wait_for(
            lambda: end_offsets(settings, [canonical])[canonical] >= 50,
            timeout=180,
            what="50 canonical events",
            alive=processes.assert_alive,
        )
        assert processes.worker is not None
        processes.worker.send_signal(signal.SIGUSR1)
        wait_for(lambda: any(dumps.glob("worker-*.txt")), timeout=30, what="a state dump")
        processes.assert_alive()  # the signal did not end the worker
    finally:
        processes.stop()
    (dump,) = dumps.glob("worker-*.txt")
    text = dump.read_text()
    assert "flow active yes" in text
    assert "--- main: " in text and "--- consumer thread: " in text
    if settings.worker_runtime == "batch":  # the ingest topics are the batch runtime's
        nonconformance = f"{settings.topic('qms.nonconformance.v1')}[0] batch"
        assert f"batch runtime: group {settings.ingest_group}" in text
        assert "streams/batch_runtime.py" in text  # its task's stack
    else:
        nonconformance = f"{settings.topic('qms.nonconformance.v1')}[0] active"
        assert "consume_batches" in text  # the ingest agent's stack
    assert any(line.startswith(nonconformance) for line in text.splitlines()), text[:2000]
