"""Every setting of qmsflow, in one frozen object read from the environment at the edge.

Standard variables keep their usual names (`KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`,
`SCHEMA_REGISTRY_URL`); everything else is `QMSFLOW_<NAME>`. When the first two are unset the
local stack (`qmsflow stack up`) is used.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: the repository root: where `schemas/`, `.stack/` and the lock file live in a checkout
PROJECT_ROOT = Path(__file__).resolve().parent.parent

StoreKind = Literal["rocksdb", "memory"]
WorkerRuntime = Literal["faust", "batch"]
LogFormat = Literal["json", "text"]
KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Settings(BaseSettings):
    """qmsflow's configuration; each field names its environment variable."""

    model_config = SettingsConfigDict(env_prefix="QMSFLOW_", frozen=True, extra="ignore")

    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "QMSFLOW_KAFKA_BOOTSTRAP_SERVERS"),
        description="KAFKA_BOOTSTRAP_SERVERS: broker list; unset = the local stack's broker.",
    )
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        default="PLAINTEXT",
        description="QMSFLOW_KAFKA_SECURITY_PROTOCOL: how every Kafka client talks to the "
        "brokers: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS).",
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        default=None,
        description="QMSFLOW_KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; "
        "required with a SASL_* protocol, refused with any other.",
    )
    kafka_sasl_username: str | None = Field(
        default=None,
        description="QMSFLOW_KAFKA_SASL_USERNAME: the SASL user (one per component's service "
        "account); required with a SASL_* protocol.",
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        description="QMSFLOW_KAFKA_SASL_PASSWORD: the SASL user's password; required with a "
        "SASL_* protocol. Never logged.",
    )
    kafka_ssl_ca_location: Path | None = Field(
        default=None,
        description="QMSFLOW_KAFKA_SSL_CA_LOCATION: PEM file of the CA the brokers' "
        "certificates chain to, for SSL and SASL_SSL; unset = the system's trust store.",
    )
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "QMSFLOW_DATABASE_URL"),
        description="DATABASE_URL: Postgres for the sink; unset = the local stack's server.",
    )
    schema_registry_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SCHEMA_REGISTRY_URL", "QMSFLOW_SCHEMA_REGISTRY_URL"),
        description="SCHEMA_REGISTRY_URL: a Confluent-compatible registry; unset = the "
        "file-backed registry with ids pinned in schemas/avro/registry.lock.json.",
    )
    kafka_connect_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_CONNECT_URL", "QMSFLOW_KAFKA_CONNECT_URL"),
        description="KAFKA_CONNECT_URL: Kafka Connect REST URL running Debezium; unset = the "
        "local stack's worker on 127.0.0.1:18083.",
    )
    topic_prefix: str = Field(
        default="",
        description="QMSFLOW_TOPIC_PREFIX: prepended to every topic and consumer group, so "
        "environments (and tests) share a cluster without sharing data.",
    )
    app_id: str = Field(
        default="qmsflow",
        description="QMSFLOW_APP_ID: Faust application id: consumer group and changelog prefix.",
    )
    schemas_dir: Path = Field(
        default=PROJECT_ROOT / "schemas" / "avro",
        description="QMSFLOW_SCHEMAS_DIR: the Avro contracts, one folder per subject.",
    )
    stack_dir: Path = Field(
        default=PROJECT_ROOT / ".stack",
        description="QMSFLOW_STACK_DIR: data of the local Kafka, Postgres and Faust stores.",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "qmsflow",
        description="QMSFLOW_CACHE_DIR: downloaded jars, kept between runs and checkouts.",
    )
    kafka_port: int = Field(default=19092, description="QMSFLOW_KAFKA_PORT: local broker port.")
    connect_port: int = Field(
        default=18083,
        description="QMSFLOW_CONNECT_PORT: local Kafka Connect worker's REST port.",
    )
    postgres_port: int = Field(
        default=54329, description="QMSFLOW_POSTGRES_PORT: local Postgres port."
    )
    store: StoreKind = Field(
        default="rocksdb",
        description="QMSFLOW_STORE: Faust table store; rocksdb in production, memory in tests.",
    )
    rocksdb_write_buffer_size: int = Field(
        default=1024 * 1024,
        ge=64 * 1024,
        description="QMSFLOW_ROCKSDB_WRITE_BUFFER_SIZE: bytes of one RocksDB memtable per table "
        "partition before it is flushed to disk (Faust's default, 64 MiB, let worker memory "
        "grow for hours).",
    )
    rocksdb_max_write_buffers: int = Field(
        default=2,
        ge=2,
        description="QMSFLOW_ROCKSDB_MAX_WRITE_BUFFERS: memtables per table partition (one "
        "filling, the rest flushing); Faust's default is 3.",
    )
    rocksdb_block_cache_size: int = Field(
        default=512 * 1024,
        ge=0,
        description="QMSFLOW_ROCKSDB_BLOCK_CACHE_SIZE: bytes of RocksDB block cache per table "
        "partition (Faust's default is 2 GiB each; a worker has ~50 partition stores, and the "
        "operating system's page cache still holds the hot files).",
    )
    worker_session_timeout: float = Field(
        default=10.0,
        ge=6.0,
        le=300.0,
        description="QMSFLOW_WORKER_SESSION_TIMEOUT: seconds without a heartbeat before the group "
        "coordinator drops a worker and hands its partitions on. Faust's default, 60 s, kept a "
        "killed worker's partitions unread for a minute after a restart; the sink uses 10 s too.",
    )
    dedup_retention: timedelta = Field(
        default=timedelta(days=7),
        description="QMSFLOW_DEDUP_RETENTION: how long an event_id is remembered (ISO 8601 or "
        "seconds). Replays older than this are still absorbed by the sink's primary key.",
    )
    max_clock_skew: timedelta = Field(
        default=timedelta(minutes=15),
        description="QMSFLOW_MAX_CLOCK_SKEW: how far a producer's timestamp may lie ahead of "
        "this worker's clock (ISO 8601 or seconds). A later `occurred_at` or `recorded_at` is a "
        "dead letter (reason `limits`), and no event-time watermark (dedup memory, CAPA "
        "escalation) ever runs further ahead of the wall clock than this.",
    )
    earliest_event_time: datetime = Field(
        default=datetime(2000, 1, 1, tzinfo=UTC),
        description="QMSFLOW_EARLIEST_EVENT_TIME: the oldest `occurred_at` or `recorded_at` "
        "accepted (ISO 8601); an earlier one is a dead letter (reason `limits`).",
    )
    dead_letter_max_bytes: int = Field(
        default=256 * 1024,
        ge=4096,
        description="QMSFLOW_DEAD_LETTER_MAX_BYTES: most bytes of an original record (value plus "
        "headers) a dead letter embeds. A larger original keeps its length, sha256 and first "
        "bytes, so its dead letter always fits the topic's maximum message size; `qmsflow dlq "
        "replay` re-reads the whole original from its source coordinates.",
    )
    sink_batch_size: int = Field(
        default=2000, description="QMSFLOW_SINK_BATCH_SIZE: most rows per sink transaction."
    )
    sink_batch_timeout: float = Field(
        default=0.05,
        description="QMSFLOW_SINK_BATCH_TIMEOUT: seconds to wait filling a batch before writing "
        "(the sink's share of a quiet record's latency; a busy sink fills batches sooner).",
    )
    stream_batch_max: int = Field(
        default=1000,
        ge=1,
        description="QMSFLOW_STREAM_BATCH_MAX: most records the ingest and quality agents "
        "handle per batch (one produce request, one wait for acknowledgements); 1 handles each "
        "record on its own, without Faust's take buffer.",
    )
    worker_runtime: WorkerRuntime = Field(
        default="faust",
        description="QMSFLOW_WORKER_RUNTIME: how the worker runs the product-line stages: "
        "faust (ingest and quality agents) or batch (one fused processor fed whole batches by "
        "librdkafka; its tables in memory, restored from the same changelogs).",
    )
    tick_interval: float = Field(
        default=5.0,
        description="QMSFLOW_TICK_INTERVAL: seconds between ticks: how soon parked events are "
        "released after their master data arrives, and how often overdue work is checked.",
    )
    web_port: int = Field(
        default=6066, description="QMSFLOW_WEB_PORT: Faust worker's web port (metrics, status)."
    )
    # ---- ERP adapter (connectors/erp_adapter, docs/erp-adapter.md) ----
    erp_base_url: str | None = Field(
        default=None,
        description="QMSFLOW_ERP_BASE_URL: the ERP API's base URL (http or https, may carry a "
        "path); request paths from the mapping are appended. Required by `qmsflow erp-adapter`.",
    )
    erp_api_token: SecretStr | None = Field(
        default=None,
        description="QMSFLOW_ERP_API_TOKEN: bearer token sent as `Authorization` to the ERP; "
        "unset = no Authorization header. Never logged.",
    )
    erp_mapping_file: Path | None = Field(
        default=None,
        description="QMSFLOW_ERP_MAPPING_FILE: the request mapping (TOML); unset = the shipped "
        "qmsflow/config/erp_mapping.toml (SAP QM blocked-stock postings).",
    )
    erp_routes_file: Path | None = Field(
        default=None,
        description="QMSFLOW_ERP_ROUTES_FILE: the ERP routing table (TOML): which ERP applies "
        "which sites' commands, each with its own URL, mapping and breaker; unset = one ERP at "
        "QMSFLOW_ERP_BASE_URL for every site (docs/erp-adapter.md, Several ERPs).",
    )
    erp_timeout: float = Field(
        default=10.0,
        gt=0,
        description="QMSFLOW_ERP_TIMEOUT: seconds to wait for the ERP's answer to one request; "
        "a timeout is a transient failure (the resend carries the same idempotency key).",
    )
    erp_retry_backoff: float = Field(
        default=0.5,
        ge=0,
        description="QMSFLOW_ERP_RETRY_BACKOFF: seconds before the first retry of a transient "
        "failure; doubles per failure up to QMSFLOW_ERP_RETRY_BACKOFF_MAX.",
    )
    erp_retry_backoff_max: float = Field(
        default=8.0,
        ge=0,
        description="QMSFLOW_ERP_RETRY_BACKOFF_MAX: the longest wait between two retries.",
    )
    erp_breaker_failures: int = Field(
        default=5,
        ge=1,
        description="QMSFLOW_ERP_BREAKER_FAILURES: consecutive transient failures that open the "
        "circuit breaker and pause consumption.",
    )
    erp_breaker_cooldown: float = Field(
        default=30.0,
        ge=0,
        description="QMSFLOW_ERP_BREAKER_COOLDOWN: seconds an open breaker waits before one "
        "half-open probe; a failed probe waits this long again.",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="QMSFLOW_OTLP_ENDPOINT: OTLP/HTTP collector base URL (e.g. "
        "http://otel-collector:4318); spans are exported there when set.",
    )
    trace_file: Path | None = Field(
        default=None,
        description="QMSFLOW_TRACE_FILE: append every finished span to this file as one JSON "
        "line (tests and local debugging); unset = no file.",
    )
    trace_sample_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="QMSFLOW_TRACE_SAMPLE_RATIO: share of new traces whose spans are recorded "
        "and exported when an exporter is set (a child span follows its parent's sampled flag). "
        "Every output carries a traceparent either way; with no exporter no span is recorded.",
    )
    metrics_port: int = Field(
        default=0,
        description="QMSFLOW_METRICS_PORT: port of the worker's Prometheus /metrics endpoint; "
        "0 = off.",
    )
    sink_metrics_port: int = Field(
        default=0,
        description="QMSFLOW_SINK_METRICS_PORT: port of the sink's Prometheus /metrics "
        "endpoint; 0 = off (a separate setting, so a worker and a sink can share a host).",
    )
    status_page_port: int = Field(
        default=8070,
        description="QMSFLOW_STATUS_PAGE_PORT: port of `qmsflow status-page` (the live status "
        "page and its /api/status JSON).",
    )
    canary_interval: float = Field(
        default=60.0,
        gt=0,
        description="QMSFLOW_CANARY_INTERVAL: seconds between runs of `qmsflow canary`.",
    )
    canary_timeout: float = Field(
        default=120.0,
        gt=0,
        description="QMSFLOW_CANARY_TIMEOUT: seconds a canary run waits for each path's output "
        "before reporting the path unhealthy.",
    )
    canary_metrics_port: int = Field(
        default=0,
        description="QMSFLOW_CANARY_METRICS_PORT: port of the canary's Prometheus /metrics "
        "endpoint; 0 = off.",
    )
    log_format: LogFormat = Field(
        default="json",
        description="QMSFLOW_LOG_FORMAT: json (one object per line, with trace and correlation "
        "ids; secrets redacted) or text.",
    )

    @property
    def bootstrap_servers(self) -> str:
        """The broker list to use: the configured one, else the local stack's."""
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.kafka_port}"

    @property
    def dsn(self) -> str:
        """The Postgres connection string: the configured one, else the local stack's."""
        return self.database_url or (f"postgresql://qmsflow@127.0.0.1:{self.postgres_port}/qmsflow")

    def topic(self, name: str) -> str:
        """The physical name of a declared topic in this environment."""
        return f"{self.topic_prefix}{name}"

    @property
    def worker_group(self) -> str:
        """The Faust worker's group: correlation, golden records, ticks; all of it under faust."""
        return f"{self.topic_prefix}{self.app_id}"

    @property
    def ingest_group(self) -> str:
        """The consumer group whose committed offsets say how far the ingest topics are read."""
        if self.worker_runtime == "batch":
            return f"{self.worker_group}-product-lines"
        return self.worker_group


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    """Settings read once from the environment; the CLI and workers call this at start-up."""
    return Settings()
