"""The worker app takes its RocksDB and group-membership options from Settings.

Integration, not unit: building the worker's app lists the broker's CDC topics.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qmsflow.settings import Settings
from streams.app import create_app

pytestmark = pytest.mark.integration


def test_every_table_store_gets_the_settings_rocksdb_options(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        stack_dir=tmp_path,
        store="rocksdb",
        rocksdb_write_buffer_size=2 * 1024 * 1024,
        rocksdb_max_write_buffers=3,
        rocksdb_block_cache_size=5 * 1024 * 1024,
    )
    app = create_app(settings)
    tables = list(app.tables.values())
    expected = {"incidents", "correlation-watermarks"}
    if settings.worker_runtime == "faust":  # the batch runtime keeps dedup marks itself
        expected.add("dedup-seen")
    assert {t.name for t in tables} >= expected
    for table in tables:
        options = table.data.rocksdb_options  # the store Faust builds for the table
        assert options.write_buffer_size == 2 * 1024 * 1024, table.name
        assert options.max_write_buffer_number == 3, table.name
        assert options.block_cache_size == 5 * 1024 * 1024, table.name


def test_the_worker_leaves_its_group_after_the_settings_session_timeout(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A SIGKILLed worker's partitions wait this long; the consumer must be built with it."""
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap, stack_dir=tmp_path, worker_session_timeout=12.5
    )
    app = create_app(settings)
    assert app.conf.broker_session_timeout == 12.5  # Faust hands it to aiokafka in ms
    assert Settings().worker_session_timeout < 60.0  # below Faust's own default
