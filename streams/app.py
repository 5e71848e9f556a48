"""The Faust application: one worker process, its topics, tables and agents.

Agents are at-least-once with concurrency 1 per partition (DESIGN §7: faust's exactly-once mode
and agent concurrency > 1 have open bugs). Exactly-once effect comes from deterministic outputs,
dedup and the transactional sink, not from the transport.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import faust

from qmsflow import telemetry
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.kafka.security import faust_broker_credentials
from qmsflow.logging_setup import faust_logging_config
from qmsflow.quality.data_dictionary import load_dictionary
from qmsflow.quality.ingest import IngestStage
from qmsflow.settings import Settings
from qmsflow.toggles import ToggleReader
from qmsflow.topics import TopicCatalog, load_catalog
from streams import state_dump
from streams.batch_runtime import BatchRuntime
from streams.changelog_state import DEDUP_TABLE, ChangelogState
from streams.changelogs import ChangelogSpec, create_changelog_topics, declare_changelogs
from streams.correlate import register_correlate_agent
from streams.golden_records import register_golden_record_agent
from streams.ingest import register_ingest_agent
from streams.master_data import MasterDataFeed
from streams.offset_guard import GuardedApp
from streams.product_lines import ProductLineProcessor
from streams.quality import register_quality_agent
from streams.quality_processor import QUALITY_TABLES, QualityProcessor
from streams.ticks import register_ticks

log = logging.getLogger(__name__)

_LOG_LEVELS = {
    "crit": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
}
#: seconds between consumer-lag samples: Prometheus scrapes every 15–30 s, so finer is wasted
_LAG_INTERVAL = 10.0


def create_app(settings: Settings) -> faust.App:
    """Build the worker's Faust app with every agent registered."""
    catalog = load_catalog()
    datadir = settings.stack_dir / "faust" / f"{settings.topic_prefix}{settings.app_id}"
    datadir.mkdir(parents=True, exist_ok=True)
    app = GuardedApp(  # its consumer commits only past records handled in order
        f"{settings.topic_prefix}{settings.app_id}",
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=faust_broker_credentials(settings),  # None: PLAINTEXT
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(datadir),
        topic_partitions=catalog["quality.events.v1"].partitions,
        topic_allow_declare=True,  # for Faust's own changelog topics; ours exist already
        processing_guarantee="at_least_once",
        producer_acks=-1,  # acks=all: an acknowledged output survives a broker failover
        # Agents send a batch's outputs at once (streams.processing): 5 ms of linger and 512 KiB
        # record batches (aiokafka's default is 16 KiB, about eight canonical events) turn them
        # into a few large produce requests instead of one small request per partition batch.
        producer_linger=0.005,
        producer_max_batch_size=512 * 1024,
        consumer_auto_offset_reset="earliest",
        # A worker killed without leaving the group holds its partitions until this expires;
        # heartbeats run in the consumer's own thread, every 3 s (Faust's default).
        broker_session_timeout=settings.worker_session_timeout,
        web_host="127.0.0.1",
        web_port=settings.web_port or 6066,  # Faust validates the port even when disabled
        web_enabled=settings.web_port > 0,
        stream_wait_empty=True,
        table_standby_replicas=0,  # single-node dev default; Helm sets it for production
        logging_config=faust_logging_config(settings),
    )
    codec = AvroCodec(open_registry(settings))
    stage = IngestStage(
        codec,
        catalog,
        load_dictionary(),
        topic_prefix=settings.topic_prefix,
        earliest_event_time=settings.earliest_event_time,
        max_clock_skew=settings.max_clock_skew,
        dead_letter_max_bytes=settings.dead_letter_max_bytes,
    )
    feed = MasterDataFeed(settings, codec)

    @app.task
    async def read_master_data() -> None:
        await feed.run(lambda: app.should_stop)

    if settings.worker_runtime == "batch":
        register_batch_runtime(app, settings, stage, codec, feed, catalog)
    else:
        register_ingest_agent(app, settings, stage, codec, catalog)
        register_quality_agent(app, settings, codec, feed, catalog)
    toggles = ToggleReader(settings)

    @app.task
    async def follow_toggles() -> None:
        toggles.start()  # a daemon thread; switches reach this worker within about a second

    register_correlate_agent(app, settings, codec, catalog, alerts_enabled=toggles.enabled)
    register_golden_record_agent(app, settings, codec)
    register_ticks(app, settings, codec)  # the batch runtime ticks its own partitions

    @app.timer(interval=_LAG_INTERVAL)
    async def report_lag() -> None:
        await _report_lag(app)

    if settings.store == "rocksdb":
        for table in app.tables.values():  # before any store is opened: options are read then
            table.options = {**rocksdb_options(settings), **(table.options or {})}
    return app


def register_batch_runtime(
    app: faust.App,
    settings: Settings,
    stage: IngestStage,
    codec: AvroCodec,
    feed: MasterDataFeed,
    catalog: TopicCatalog,
) -> None:
    """Run the product-line stages in the batch runtime (streams/batch_runtime.py) as a task."""
    partitions = catalog["quality.events.v1"].partitions
    # dedup marks on disk with the rocksdb store (a restart reads only the changelogs' tail);
    # the quality tables (lots, records, parked events) are small and stay in memory
    datadir = settings.stack_dir / "faust" / f"{settings.topic_prefix}{settings.app_id}"
    local = datadir / "batch-runtime" if settings.store == "rocksdb" else None
    state = ChangelogState(settings, [DEDUP_TABLE, *QUALITY_TABLES], local_dir=local)
    retention_us = int(settings.dedup_retention.total_seconds() * 1_000_000)
    quality = QualityProcessor(
        codec,
        feed.index,
        feed.employees,
        max_clock_skew=settings.max_clock_skew,
        dead_letter_max_bytes=settings.dead_letter_max_bytes,
    )
    processor = ProductLineProcessor(
        stage,
        quality,
        codec,
        state,
        topic_prefix=settings.topic_prefix,
        partitions=partitions,
        retention_us=retention_us,
    )
    ingest_topics = [settings.topic(t.name) for t in catalog.by_role("ingest")]

    @app.task
    async def run_product_lines() -> None:
        create_changelog_topics(settings, batch_changelog_specs(state, settings, partitions))
        await feed.ready.wait()
        runtime = BatchRuntime(settings, processor, state, codec, ingest_topics=ingest_topics)
        state_dump.describe_also(app, runtime.describe)  # kill -USR1 shows where it stands
        try:
            await runtime.run(lambda: app.should_stop)
        except Exception as error:  # infrastructure: crash the worker, nothing committed
            log.exception("the batch runtime stopped")
            await app.crash(error)


def batch_changelog_specs(
    state: ChangelogState, settings: Settings, partitions: int
) -> list[ChangelogSpec]:
    """The batch runtime's changelog topics, configured as Faust configures the same tables."""
    retention_ms = int(settings.dedup_retention.total_seconds() * 1000)
    specs = []
    for name in state.names:
        config = {"cleanup.policy": "compact"}
        if name == DEDUP_TABLE:
            config = {"cleanup.policy": "compact,delete", "retention.ms": str(retention_ms)}
        specs.append(ChangelogSpec(state.changelog_topic(name), partitions, 1, config))
    return specs


def rocksdb_options(settings: Settings) -> dict[str, int]:
    """Faust's RocksDB options for every table partition: memtables and block cache bounded."""
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_size,
        "max_write_buffer_number": settings.rocksdb_max_write_buffers,
        "block_cache_size": settings.rocksdb_block_cache_size,
    }


async def _report_lag(app: faust.App) -> None:
    """Set `qmsflow_consumer_lag` for every assigned partition (highwater minus position)."""
    consumer: Any = app.consumer
    group = app.conf.id
    for tp in list(consumer.assignment()):
        try:
            highwater = consumer.highwater(tp)
            position = await consumer.position(tp)
        except Exception:  # a partition revoked mid-sample; the next sample is correct again
            log.debug("no lag for %s", tp, exc_info=True)
            continue
        if highwater is not None and position is not None:
            telemetry.record_lag(group, tp.topic, tp.partition, highwater - position)


def run_worker(
    settings: Settings, *, loglevel: str = "info", extra: list[str] | None = None
) -> Any:
    """Run the worker in this process until it is stopped (SIGTERM/SIGINT)."""
    telemetry.start_telemetry(settings, "qmsflow-worker", metrics_port=settings.metrics_port)
    app = create_app(settings)
    declare_changelogs(app, settings)  # before the consumer's first metadata snapshot
    state_dump.install(app, settings.stack_dir / "dumps")  # kill -USR1 <pid>
    level = _LOG_LEVELS[loglevel]

    @app.task
    async def keep_log_level() -> None:
        # At warn and above Faust's start-up spinner sets the root logger to DEBUG (every record
        # turns it) and leaves it there, so each aiokafka and Faust debug call built a log
        # record the handler then dropped: ~6% of the worker's CPU.
        logging.getLogger().setLevel(level)

    # Faust's command line reads sys.argv; this process is the worker, so it is ours to set.
    web = ["--without-web"] if settings.web_port == 0 else ["--web-port", str(settings.web_port)]
    sys.argv = ["qmsflow-worker", "worker", "--loglevel", loglevel, *web, *(extra or [])]
    return app.main()
