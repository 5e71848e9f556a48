"""The status page: throughput, errors, lag, SLA compliance and open incidents, read live.

Every number comes from Kafka (end and committed offsets) and Postgres (the sink's tables), never
from a worker's memory, so the page tells the truth about a pipeline whose workers are down.
Reading is `read_snapshot` (the edges); turning two snapshots into the page's JSON is
`status_document` (pure, unit-tested); `StatusPage` keeps the previous snapshot and a short
history for the charts; `serve` is a stdlib HTTP server with `/` (the page) and `/api/status`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition

from qmsflow.kafka.admin import end_offsets
from qmsflow.kafka.security import librdkafka_security
from qmsflow.quality.sla import SlaRules, load_sla_rules
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog

__all__ = [
    "IncidentRow",
    "PartitionLag",
    "SlaCounts",
    "Snapshot",
    "StatusPage",
    "read_lag",
    "read_snapshot",
    "serve",
    "status_document",
]

_TIMEOUT = 10.0  # seconds per broker request; a status read must not hang the page for long
#: 90 samples at the page's 2 s poll: three minutes of chart, enough to see a burst and its drain
HISTORY_POINTS = 90
#: a reload or a second browser within this many seconds reuses the last sample: every sample
#: is one watermark request per partition, and a shared interval keeps the rates comparable
_MIN_SAMPLE_INTERVAL = 1.0
OPEN_INCIDENTS_SHOWN = 10


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition as a consumer group sees it: committed position vs high watermark.

    `committed` is None when the group has committed nothing there; its lag is then every
    retained record (`end - low`).
    """

    group: str
    topic: str
    partition: int
    committed: int | None
    low: int
    end: int

    @property
    def lag(self) -> int:
        """Records the group has still to consume (never negative)."""
        start = self.low if self.committed is None else max(self.committed, self.low)
        return max(self.end - start, 0)


@dataclass(frozen=True, slots=True)
class SlaCounts:
    """One SLA's breach rows and the outputs it measures, both from Postgres."""

    sla: str
    interface: str
    breaches: int
    outputs: int


@dataclass(frozen=True, slots=True)
class IncidentRow:
    """One open incident as the sink stored it."""

    incident_id: str
    root_cause_key: str
    severity: str
    member_count: int
    product_line: str
    opened_at: datetime


@dataclass(frozen=True)
class Snapshot:
    """Raw counts at one moment (`taken_at`: seconds, monotonic clock)."""

    taken_at: float
    ingested: int  # records in the ingest topics (sum of high − low watermarks)
    canonical: int  # records in quality.events.v1
    dead_letters: int  # records in quality.dlq.v1
    parked: int  # events parked now: PARKED with no RELEASED or EXPIRED row
    lag: tuple[PartitionLag, ...] = ()
    sla: tuple[SlaCounts, ...] = ()
    open_incidents: int = 0
    incidents: tuple[IncidentRow, ...] = ()  # the largest open ones, by member count


def _rate(delta: int, seconds: float) -> float:
    return round(delta / seconds, 2) if seconds > 0 else 0.0


def status_document(
    current: Snapshot, previous: Snapshot | None, *, wall_time: str = ""
) -> dict[str, Any]:
    """The `/api/status` JSON of `current`, with per-interval deltas against `previous`.

    Without a previous snapshot (the first sample) every delta and rate is 0. A count that went
    down (a topic recreated, retention deleting segments) also gives 0, never a negative rate.
    """
    seconds = 0.0 if previous is None else max(current.taken_at - previous.taken_at, 0.0)

    def delta(now: int, before: int) -> int:
        return 0 if previous is None else max(now - before, 0)

    before = previous or current
    events_in = delta(current.ingested, before.ingested)
    events_out = delta(current.canonical, before.canonical)
    dead = delta(current.dead_letters, before.dead_letters)
    groups: dict[str, dict[str, Any]] = {}
    for p in sorted(current.lag, key=lambda p: (p.group, p.topic, p.partition)):
        group = groups.setdefault(p.group, {"group": p.group, "lag": 0, "partitions": []})
        group["lag"] += p.lag
        group["partitions"].append(
            {
                "topic": p.topic,
                "partition": p.partition,
                "committed": p.committed,
                "end": p.end,
                "lag": p.lag,
            }
        )
    sla = []
    for s in current.sla:
        # every breach is of a measured output, even if its output row is not (yet) stored
        measured = max(s.outputs, s.breaches)
        sla.append(
            {
                "sla": s.sla,
                "interface": s.interface,
                "breaches": s.breaches,
                "outputs": measured,
                # nothing measured yet is not a breach: nothing was late
                "compliance": 1.0 if measured == 0 else round(1 - s.breaches / measured, 4),
            }
        )
    return {
        "time": wall_time,
        "interval_seconds": round(seconds, 3),
        "totals": {
            "ingested": current.ingested,
            "canonical": current.canonical,
            "dead_letters": current.dead_letters,
            "parked": current.parked,
            "open_incidents": current.open_incidents,
        },
        "throughput": {
            "events_in": events_in,
            "events_out": events_out,
            "in_per_second": _rate(events_in, seconds),
            "out_per_second": _rate(events_out, seconds),
        },
        "errors": {
            "dead_letters": dead,
            "dead_letters_per_second": _rate(dead, seconds),
            # dead letters per record ingested in the interval
            "dead_letter_ratio": round(dead / events_in, 4) if events_in else 0.0,
            "parked": current.parked,
        },
        "lag": {
            "total": sum(g["lag"] for g in groups.values()),
            "groups": list(groups.values()),
        },
        "sla": sla,
        "incidents": {
            "open": current.open_incidents,
            "top": [
                {
                    "incident_id": i.incident_id,
                    "root_cause_key": i.root_cause_key,
                    "severity": i.severity,
                    "member_count": i.member_count,
                    "product_line": i.product_line,
                    "opened_at": i.opened_at.isoformat(),
                }
                for i in current.incidents
            ],
        },
    }


# ---- reading Kafka and Postgres -------------------------------------------------------------


def read_lag(
    settings: Settings, groups: Iterable[str], topics: Iterable[str] | None = None
) -> list[PartitionLag]:
    """Committed vs end offsets for each group, on the topics where it has committed anything.

    `topics` defaults to every declared topic. A topic the group never committed on is left out
    (a worker does not consume every topic); an uncommitted partition of a topic it does
    consume is kept, with all its records as lag.
    """
    names = [settings.topic(t.name) for t in load_catalog().topics] if topics is None else topics
    rows: list[PartitionLag] = []
    for group in groups:
        consumer = Consumer(
            {
                "bootstrap.servers": settings.bootstrap_servers,
                **librdkafka_security(settings),
                "group.id": group,
                "enable.auto.commit": False,
            }
        )
        try:
            metadata = consumer.list_topics(timeout=_TIMEOUT).topics
            partitions = [
                TopicPartition(topic, partition)
                for topic in names
                if topic in metadata
                for partition in sorted(metadata[topic].partitions)
            ]
            if not partitions:
                continue
            committed = consumer.committed(partitions, timeout=_TIMEOUT)
            used = {tp.topic for tp in committed if tp.offset >= 0}
            for tp in committed:
                if tp.topic not in used:
                    continue
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=_TIMEOUT
                )
                rows.append(
                    PartitionLag(
                        group,
                        tp.topic,
                        tp.partition,
                        tp.offset if tp.offset >= 0 else None,
                        low,
                        high,
                    )
                )
        finally:
            consumer.close()
    return rows


def consumer_groups(settings: Settings) -> tuple[str, ...]:
    """The pipeline's consumer groups: the Faust worker and the Postgres sink."""
    return (settings.topic(settings.app_id), settings.topic(f"{settings.app_id}-sink"))


_PARKED_NOW = """
SELECT count(*) FROM qms.parked_event p
 WHERE p.status = 'PARKED' AND p.kafka_topic = %(topic)s
   AND NOT EXISTS (SELECT 1 FROM qms.parked_event d
                    WHERE d.event_id = p.event_id AND d.status <> 'PARKED'
                      AND d.kafka_topic = %(topic)s)
"""
_OPEN_INCIDENTS = """
SELECT incident_id::text, root_cause_key, severity, member_count, product_line, opened_at
  FROM qms.incident WHERE status = 'open' AND environment = %s
 ORDER BY member_count DESC, opened_at, incident_id LIMIT %s
"""


def read_sla_counts(
    conn: psycopg.Connection[Any], settings: Settings, rules: SlaRules
) -> list[SlaCounts]:
    """Breach rows per SLA, and the outputs each SLA measures, in this environment's tables.

    Outputs are approximated from the stored rows: quarantine commands of the SLA's actions
    triggered by its event type, or incidents whose members include its event type (the worker
    measures each output once, so a breach always has its output among these).
    """
    breach_topic = settings.topic("ops.sla-breaches.v1")
    counts = []
    for rule in rules.sla:
        (breaches,) = conn.execute(
            "SELECT count(*) FROM qms.sla_breach WHERE sla = %s AND kafka_topic = %s",
            (rule.name, breach_topic),
        ).fetchone() or (0,)
        if rule.output == "quarantine_command":
            (outputs,) = conn.execute(
                "SELECT count(*) FROM qms.quarantine_command WHERE environment = %s"
                " AND trigger_event_type = %s AND (cardinality(%s::text[]) = 0"
                " OR action = ANY(%s::text[]))",
                (
                    settings.topic_prefix,
                    rule.event_type,
                    list(rule.actions),
                    list(rule.actions),
                ),
            ).fetchone() or (0,)
        else:
            (outputs,) = conn.execute(
                "SELECT count(*) FROM qms.incident WHERE environment = %s"
                " AND %s = ANY(event_types)",
                (settings.topic_prefix, rule.event_type),
            ).fetchone() or (0,)
        counts.append(SlaCounts(rule.name, rule.interface, int(breaches), int(outputs)))
    return counts


def read_snapshot(settings: Settings, rules: SlaRules | None = None) -> Snapshot:
    """Read every raw count of the page from Kafka and Postgres, now."""
    taken_at = time.monotonic()
    catalog = load_catalog()
    ingest = [settings.topic(t.name) for t in catalog.by_role("ingest")]
    canonical = settings.topic("quality.events.v1")
    dlq = settings.topic("quality.dlq.v1")
    offsets = end_offsets(settings, [*ingest, canonical, dlq])
    lag = read_lag(settings, consumer_groups(settings))
    with psycopg.connect(settings.dsn, connect_timeout=int(_TIMEOUT)) as conn:
        (parked,) = conn.execute(
            _PARKED_NOW, {"topic": settings.topic("quality.parked.v1")}
        ).fetchone() or (0,)
        # incidents are keyed by environment (migration 0014), which leads their indexes
        (open_count,) = conn.execute(
            "SELECT count(*) FROM qms.incident WHERE status = 'open' AND environment = %s",
            (settings.topic_prefix,),
        ).fetchone() or (0,)
        incidents = tuple(
            IncidentRow(*row)
            for row in conn.execute(_OPEN_INCIDENTS, (settings.topic_prefix, OPEN_INCIDENTS_SHOWN))
        )
        sla = tuple(read_sla_counts(conn, settings, rules or load_sla_rules()))
    return Snapshot(
        taken_at=taken_at,
        ingested=sum(offsets.get(t, 0) for t in ingest),
        canonical=offsets.get(canonical, 0),
        dead_letters=offsets.get(dlq, 0),
        parked=int(parked),
        lag=tuple(lag),
        sla=sla,
        open_incidents=int(open_count),
        incidents=incidents,
    )


# ---- the page ---------------------------------------------------------------------------------


@dataclass
class StatusPage:
    """Samples on demand, keeps the previous snapshot for rates and a history for the charts."""

    read: Callable[[], Snapshot]  # `read_snapshot` bound to settings; a stub in unit tests
    clock: Callable[[], float] = time.monotonic  # the clock `Snapshot.taken_at` is read on
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _previous: Snapshot | None = None
    _document: dict[str, Any] | None = None
    _history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))

    def status(self) -> dict[str, Any]:
        """The current status document, with `history` (oldest first) for the charts."""
        with self._lock:
            fresh = (
                self._previous is not None
                and self.clock() - self._previous.taken_at < _MIN_SAMPLE_INTERVAL
            )
            if not fresh or self._document is None:
                snapshot = self.read()
                wall = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                self._document = status_document(snapshot, self._previous, wall_time=wall)
                self._previous = snapshot
                doc = self._document
                self._history.append(
                    {
                        "time": wall,
                        "in_per_second": doc["throughput"]["in_per_second"],
                        "out_per_second": doc["throughput"]["out_per_second"],
                        "dead_letters": doc["errors"]["dead_letters"],
                        "parked": doc["errors"]["parked"],
                        "lag": {g["group"]: g["lag"] for g in doc["lag"]["groups"]},
                    }
                )
            return {**self._document, "history": list(self._history)}


def page_html() -> bytes:
    """The page itself (qmsflow/web/status.html): vanilla JS and inline SVG, no CDN."""
    return resources.files("qmsflow").joinpath("web/status.html").read_bytes()


def make_server(settings: Settings, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server for the page, bound but not yet serving (port 0 = any free port)."""
    page = StatusPage(lambda: read_snapshot(settings))
    html = page_html()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server dispatches GET to
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", html)
            elif path == "/api/status":
                try:
                    body = json.dumps(page.status()).encode("utf-8")
                except Exception as exc:  # any read failure is shown on the page, not raised
                    error = {"error": f"{type(exc).__name__}: {exc}"}
                    self._send(503, "application/json", json.dumps(error).encode("utf-8"))
                    return
                self._send(200, "application/json", body)
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # stdlib's signature
            """Silent: a request every 2 s per browser would drown the terminal."""

    return ThreadingHTTPServer((host, port), Handler)


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve the page until interrupted."""
    server = make_server(settings, host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
