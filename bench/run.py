"""Run the throughput benchmarks, write bench/results/<UTC time>.json and .png, print the table.

Per repetition, on a fresh topic prefix (topics deleted afterwards), on the same bytes:
  1. produce N demo-mix events (5% duplicates) as fast as the broker takes them;
  2. (a) confluent-kafka consume → produce passthrough of the ingest records;
  3. (b) the naive Faust agent (bench.naive_faust) as its own process;
     the Quix Streams peer (bench.quix_peer, issue 16 point 7): the same decode and dedup by
     event_id in Quix's RocksDB state (with its changelog), in its own venv (.venv-quix,
     bench.quix_venv: created once, reused), until its output topic holds every unique event;
     skipped, with a note, when the venv cannot be made;
  4. qmsflow end-to-end: the real `qmsflow worker` and `qmsflow sink` processes, from their start
     until the sink's committed offsets cover the whole canonical topic (offsets are committed in
     the same transaction as the rows, so that is the moment the last row is in Postgres);
  5. (c) COPY of the same canonical rows into a scratch copy of qms.quality_event;
  6. the sink alone: the canonical records copied to <prefix>alone. under fresh event ids (uuid5
     of each, same length), loaded by an already joined sink that also writes their audit rows;
  7. end-to-end on the batch worker runtime (QMSFLOW_WORKER_RUNTIME=batch, "e2e_batch"): the
     same ingest records copied byte for byte to a sibling prefix (<prefix>batch.), so the
     canonical topic it fills starts empty, the rows step 4 stored deleted (rows are keyed by
     event_id), then as step 4 with app id qmsflow-batch (groups and changelogs of its own);
     skipped, with a note, when the settings have no worker_runtime or the worker or sink
     refuses the runtime at start-up;
  8. the sink alone on the upserted current-state tables (qms.incident and its members,
     qms.golden_record), each on a copy of this repetition's records against (c) a COPY of the
     rows it stored (bench.sink_tables).
Each step runs alone, so the two cores are not shared between measurements. Rates are unique
events (rows) per second of wall time to carry the whole input, duplicates included. For the
steps that run processes (naive Faust, the Quix peer, both end-to-end steps) the CPU of each process
(bench.process_cpu) is read at the first output and at the last, and reported as µs per unique
event after the first output and from the process's start.
Then, once each: latency at fixed offered rates (bench.latency), throughput by workers and
partitions plus state recovery time (bench.scale), dedup state per key at 1M and 10M keys
(bench.state). The machine's load average is recorded before and after: other work on the
machine slows every step, which is why each figure is set against a baseline from the same run.
Environment: BENCH_EVENTS (20000), BENCH_REPEATS (3), BENCH_TIMEOUT (s per step, 300),
BENCH_LATENCY_RATES (`500:20,2000:10,10000:3`), BENCH_SCALE (`workers:partitions,…`),
BENCH_SCALE_EVENTS (6000), BENCH_SCALE_TIMEOUT (s per configuration, 90: a stalled
configuration is recorded as incomplete instead of eating the run's 20 minutes),
BENCH_STATE_KEYS (`1000000,10000000`), BENCH_SKIP (`latency,scale,state,batch,quix`: steps to
leave out; `batch` leaves the batch worker runtime out of every step: e2e_batch, latency, scale).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bench.machine import machine, versions
from bench.plot import plot, plot_more
from bench.process_cpu import CpuWatch
from bench.quix_venv import quix_python
from bench.results_model import (
    RUNTIMES,
    Measurement,
    Run,
    check_targets,
    cpu_medians,
    cpu_note,
    format_cpu_table,
    format_table,
    medians,
    result_document,
    steady_medians,
)
from bench.sink_tables import GROUPS, read_topic, settle_correlation, sink_table
from connectors.postgres_sink.migrations import migrate
from connectors.postgres_sink.rows import QUALITY_EVENT_COLUMNS, quality_event_row
from qmsflow.contracts import AvroCodec, open_registry
from qmsflow.contracts.registry import read_lock, read_schema_files
from qmsflow.demo.produce import produce_demo
from qmsflow.kafka.admin import create_topics
from qmsflow.quality.event import Coordinates
from qmsflow.settings import Settings
from qmsflow.topics import load_catalog
from tests.integration.pipeline import PipelineProcesses, environment

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DUPLICATES = 0.05  # the demo mix
_POLL = 0.1  # seconds between completion checks; the error this adds is at most this
#: app id of the batch-runtime step: its worker and sink groups and changelogs are its own
BATCH_APP_ID = "qmsflow-batch"


def _quiet(_line: str) -> None:
    pass


class TopicCount:
    """Records on a topic (sum of high − low watermarks), with one long-lived consumer."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": settings.bootstrap_servers, "group.id": "bench-watermarks"}
        )
        meta = self._consumer.list_topics(topic, timeout=30).topics[topic]
        self._partitions = [TopicPartition(topic, p) for p in meta.partitions]

    def __call__(self) -> int:
        """Records on the topic now."""
        total = 0
        for tp in self._partitions:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
            total += high - low
        return total

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


def _wait(
    done: Callable[[], int],
    want: int,
    timeout: float,
    alive: Callable[[], None] | None = None,
    on_first: Callable[[int], None] | None = None,
) -> tuple[float | None, float, int]:
    """Poll `done()` until it reaches `want`; (first > 0 at, finished at, reached), monotonic.

    `on_first(reached)` is called once, as soon as `done()` is first above 0.
    """
    first = None
    deadline = time.monotonic() + timeout
    reached = 0
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        reached = done()
        now = time.monotonic()
        if reached > 0 and first is None:
            first = now
            if on_first is not None:
                on_first(reached)
        if reached >= want:
            return first, now, reached
        time.sleep(_POLL)
    return first, time.monotonic(), reached


def _run(
    measurement: Any,
    repetition: int,
    unique: int,
    want: int,
    started: float,
    waited: Any,
    watch: CpuWatch | None = None,
) -> Run:
    first, ended, reached = waited
    completed = reached >= want
    items = unique if completed else int(unique * reached / max(want, 1))
    return Run(
        measurement,
        repetition,
        items,
        ended - started,
        None if first is None else first - started,
        completed,
        () if watch is None else watch.uses(unique, items, want),
    )


def passthrough(settings: Settings, sent: int, unique: int, rep: int, timeout: float) -> Run:
    """(a) consume every ingest record and produce it unchanged to another topic."""
    ingest = [settings.topic(s.name) for s in load_catalog().by_role("ingest")]
    out = settings.topic("bench.passthrough.v1")
    started = time.monotonic()
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": settings.topic("bench-passthrough"),
            "auto.offset.reset": "earliest",
        }
    )
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    consumer.subscribe(ingest)
    done, first = 0, None
    deadline = started + timeout
    while done < sent and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.5):
            if message.error():
                continue
            while True:
                try:
                    producer.produce(
                        out, key=message.key(), value=message.value(), headers=message.headers()
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.05)
            done += 1
            first = first or time.monotonic()
        producer.poll(0)
    producer.flush(60)
    ended = time.monotonic()
    consumer.close()
    return _run("passthrough", rep, unique, sent, started, (first, ended, done))


def naive_faust(
    settings: Settings,
    env: dict[str, str],
    sent: int,
    unique: int,
    rep: int,
    timeout: float,
    logs: Path,
) -> Run:
    """(b) the naive Faust app as a process, until its output topic holds every record."""
    out = settings.topic("bench.naive.v1")
    count = TopicCount(settings, out)
    child_env = {
        **env,
        "BENCH_NAIVE_APP_ID": settings.topic("bench-naive"),
        "BENCH_NAIVE_OUTPUT": out,
        "PYTHONPATH": str(ROOT),
    }
    with (logs / "naive_faust.log").open("ab") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.naive_faust", "worker", "--loglevel", "warn"],
            env=child_env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive() -> None:
        if process.poll() is not None:
            raise RuntimeError(f"naive Faust app exited with {process.returncode}; see {logs}")

    watch = CpuWatch({"naive_faust": process.pid})
    try:
        waited = _wait(count, sent, timeout, alive, watch.first)
        watch.end(waited[2])
    finally:
        _stop(process)
        count.close()
    return _run("naive_faust", rep, unique, sent, started, waited, watch)


def writer_schemas(settings: Settings) -> dict[int, Any]:
    """Every version of the ingest topics' value schemas by pinned id, as parsed JSON.

    Empty when qmsflow reads an HTTP registry (SCHEMA_REGISTRY_URL): the peer asks it itself.
    """
    if settings.schema_registry_url:
        return {}
    subjects = {f"{spec.name}-value" for spec in load_catalog().by_role("ingest")}
    ids = {(e.subject, e.version): e.schema_id for e in read_lock(settings.schemas_dir)}
    return {
        ids[f.key]: json.loads(f.text)
        for f in read_schema_files(settings.schemas_dir)
        if f.subject in subjects and f.key in ids
    }


def quix_peer(
    settings: Settings,
    python: Path,
    unique: int,
    rep: int,
    timeout: float,
    logs: Path,
) -> Run:
    """The Quix Streams peer in its own venv, until its output topic holds every unique event.

    Its consumer group and state directory are the repetition's (prefix); afterwards the state
    directory, the changelog topics Quix made (named after the group) and the group are removed.
    """
    out = settings.topic("bench.quix.v1")
    group = settings.topic("bench-quix")
    state_dir = Path(tempfile.mkdtemp(prefix=f"bench-quix-{settings.topic_prefix}"))
    schemas = logs / "quix-schemas.json"
    schemas.write_text(json.dumps({str(k): v for k, v in writer_schemas(settings).items()}))
    ingest = [settings.topic(s.name) for s in load_catalog().by_role("ingest")]
    command = [
        str(python),
        str(ROOT / "bench" / "quix_peer.py"),
        *("--bootstrap", settings.bootstrap_servers, "--group", group),
        *("--state-dir", str(state_dir), "--output", out, "--schemas", str(schemas)),
        *(["--registry-url", settings.schema_registry_url] if settings.schema_registry_url else []),
        *ingest,
    ]
    # the peer's venv only: qmsflow's path must not leak into it
    child_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    count = TopicCount(settings, out)
    with (logs / "quix_peer.log").open("ab") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            env=child_env,
            cwd=state_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive() -> None:
        if process.poll() is not None:
            raise RuntimeError(f"Quix peer exited with {process.returncode}; see {logs}")

    watch = CpuWatch({"quix_peer": process.pid})
    try:
        waited = _wait(count, unique, timeout, alive, watch.first)
        watch.end(waited[2])
        if waited[2] > unique:  # a duplicate let through: the figure would flatter the peer
            print(f"  Quix peer: {waited[2]} records out for {unique} unique events", flush=True)
    finally:
        _stop(process)
        count.close()
        shutil.rmtree(state_dir, ignore_errors=True)
        _delete_quix_leftovers(settings, group)
    return _run("quix_peer", rep, unique, unique, started, waited, watch)


def _delete_quix_leftovers(settings: Settings, group: str) -> None:
    """Quix's internal topics (`changelog__<group>--…`) and the peer's consumer group."""
    # log_level 4: librdkafka's info lines on closing (purged background events) are noise here
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers, "log_level": 4})
    internal = (f"changelog__{group}--", f"repartition__{group}--")
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(internal)]
    futures = dict(admin.delete_topics(names, operation_timeout=30)) if names else {}
    futures.update(admin.delete_consumer_groups([group], request_timeout=30))
    for name, future in futures.items():
        try:
            future.result()
        except Exception as error:  # a leftover must not lose the results
            print(f"  could not delete {name}: {error}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _sink_progress(dsn: str, group: str, topic: str) -> Callable[[], int]:
    """Canonical records the sink has committed to Postgres (its offsets, stored with the rows)."""
    conn = psycopg.connect(dsn, autocommit=True)

    def progress() -> int:
        row = conn.execute(
            "SELECT coalesce(sum(next_offset), 0) FROM qms.sink_offsets"
            " WHERE consumer_group = %s AND topic = %s",
            (group, topic),
        ).fetchone()
        return int(row[0]) if row else 0

    return progress


def _rows(dsn: str, topic: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM qms.quality_event WHERE kafka_topic = %s", (topic,)
        ).fetchone()
    return int(row[0]) if row else 0


def end_to_end(
    settings: Settings,
    env: dict[str, str],
    unique: int,
    rep: int,
    timeout: float,
    logs: Path,
    measurement: Measurement = "e2e",
) -> Run:
    """The real worker and sink, from their start until the last unique event's row is stored.

    `settings.app_id` must be the processes' (QMSFLOW_APP_ID in `env`): the sink's group, whose
    committed offsets are the progress, is named after it.
    """
    events = settings.topic("quality.events.v1")
    group = settings.topic(f"{settings.app_id}-sink")
    progress = _sink_progress(settings.dsn, group, events)
    processes = PipelineProcesses(settings, env, logs)
    canonical = TopicCount(settings, events)  # the worker's own progress: its output
    started = time.monotonic()
    processes.start_worker()
    processes.start_sink()
    assert processes.worker is not None and processes.sink is not None
    watch = CpuWatch(
        {"worker": processes.worker.pid, "sink": processes.sink.pid}, {"worker": canonical}
    )
    try:
        waited = _wait(progress, unique, timeout, processes.assert_alive, watch.first)
        watch.end(waited[2])
    finally:
        processes.stop()
        canonical.close()
    run = _run(measurement, rep, unique, unique, started, waited, watch)
    stored = _rows(settings.dsn, events)
    if run.completed and stored != unique:
        raise RuntimeError(f"{events}: expected {unique} rows in qms.quality_event, got {stored}")
    return run


#: a worker or sink log line refusing a value (pydantic's literal error, or the runtime's own)
_REFUSAL = re.compile(
    r"unknown|unsupported|not supported|invalid|not implemented|not available|input should be"
    r"|expected|must be|no such",
    re.IGNORECASE,
)
#: the setting's name as a message gives it (not a module path such as streams/runtime/…)
_RUNTIME_SETTING = re.compile(r"worker[_ ]runtime", re.IGNORECASE)


def runtime_refused(log: str) -> bool:
    """Whether a process's log says it does not know its QMSFLOW_WORKER_RUNTIME value.

    A refusal phrase on a line that names the setting, or one or two lines below it (pydantic
    puts the field's name on the line above "Input should be …"); traceback frame lines do
    not count, so a crash inside a runtime module is not taken for a refusal.
    """
    lines = [x for x in log.splitlines() if not x.lstrip().startswith('File "')]
    for n, line in enumerate(lines):
        if _REFUSAL.search(line) and any(
            _RUNTIME_SETTING.search(x) for x in lines[max(n - 2, 0) : n + 1]
        ):
            return True
    return False


def _copy_ingest(source: Settings, target: Settings) -> int:
    """Every ingest record of `source` onto `target`'s topics: bytes, partition and time kept."""
    producer = Producer({"bootstrap.servers": source.bootstrap_servers, "linger.ms": 20})
    copied = 0
    for spec in load_catalog().by_role("ingest"):
        for record in read_topic(source, source.topic(spec.name)):
            while True:
                try:
                    producer.produce(
                        target.topic(spec.name),
                        key=record.key,
                        value=record.value,
                        headers=record.headers,
                        partition=record.partition,
                        timestamp=record.timestamp or 0,  # 0: the producer's clock
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.05)
            copied += 1
    left = producer.flush(60)
    if left:
        raise RuntimeError(f"{target.topic_prefix}: {left} copied ingest records not delivered")
    return copied


def end_to_end_batch(
    settings: Settings,
    env: dict[str, str],
    sent: int,
    unique: int,
    rep: int,
    timeout: float,
    logs: Path,
) -> Run | str:
    """End-to-end on the batch worker runtime, on the same records; or why it was skipped.

    The records go to a sibling prefix because the batch worker writes the canonical topic as
    the faust one does: on the same prefix, a new sink group would find the faust worker's
    output already there and the step would time the sink alone.
    """
    if "worker_runtime" not in Settings.model_fields:
        return "skipped: the settings have no worker_runtime (QMSFLOW_WORKER_RUNTIME is ignored)"
    batch = settings.model_copy(
        update={"topic_prefix": f"{settings.topic_prefix}batch.", "app_id": BATCH_APP_ID}
    )
    create_topics(batch, load_catalog(), echo=_quiet)
    copied = _copy_ingest(settings, batch)
    if copied != sent:
        raise RuntimeError(f"{batch.topic_prefix}: copied {copied} ingest records of {sent}")
    with psycopg.connect(settings.dsn) as conn:  # the same event ids are about to be stored
        conn.execute(
            "DELETE FROM qms.quality_event WHERE kafka_topic = %s",
            (settings.topic("quality.events.v1"),),
        )
    batch_env = {
        **env,
        "QMSFLOW_TOPIC_PREFIX": batch.topic_prefix,
        "QMSFLOW_APP_ID": BATCH_APP_ID,
        "QMSFLOW_WORKER_RUNTIME": RUNTIMES["e2e_batch"],
    }
    batch_logs = logs / "e2e_batch"
    batch_logs.mkdir(exist_ok=True)
    try:
        return end_to_end(batch, batch_env, unique, rep, timeout, batch_logs, "e2e_batch")
    except AssertionError as error:  # PipelineProcesses.assert_alive: a process exited
        role = str(error).split(" ", 1)[0]  # "worker exited with …" or "sink exited with …"
        log = batch_logs / f"{role}.log"
        at_start_up = _rows(settings.dsn, batch.topic("quality.events.v1")) == 0
        if at_start_up and log.exists() and runtime_refused(log.read_text(errors="replace")):
            return f"skipped: the {role} refused QMSFLOW_WORKER_RUNTIME=batch (see {log})"
        raise


def canonical_rows(settings: Settings, unique: int) -> list[tuple[Any, ...]]:
    """The qms.quality_event rows of the canonical topic, mapped as the sink maps them."""
    topic = settings.topic("quality.events.v1")
    codec = AvroCodec(open_registry(settings))
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "bench-rows"})
    meta = consumer.list_topics(topic, timeout=30).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    rows: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 120
    while len(rows) < unique and time.monotonic() < deadline:
        for m in consumer.consume(1000, 1.0):
            if m.error() or m.value() is None:
                continue
            record = codec.decode(m.value() or b"", "quality.events.v1-value").record
            at = Coordinates(topic, m.partition() or 0, m.offset() or 0)
            rows.append(quality_event_row(record, at))
    consumer.close()
    return rows


def copy_baseline(settings: Settings, unique: int, rep: int) -> Run:
    """(c) one COPY of the canonical rows into a scratch table shaped like qms.quality_event."""
    rows = canonical_rows(settings, unique)
    scratch = f"public.bench_copy_{uuid.uuid4().hex[:8]}"
    columns = ", ".join(QUALITY_EVENT_COLUMNS)
    with psycopg.connect(settings.dsn) as conn:
        conn.execute(f"CREATE TABLE {scratch} (LIKE qms.quality_event INCLUDING ALL)")
        conn.commit()
        try:
            started = time.monotonic()
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"COPY {scratch} ({columns}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            ended = time.monotonic()
        finally:
            conn.execute(f"DROP TABLE {scratch}")
            conn.commit()
    return Run("copy", rep, len(rows), ended - started, None, len(rows) >= unique)


def sink_alone(
    settings: Settings, env: dict[str, str], unique: int, rep: int, timeout: float, logs: Path
) -> Run:
    """The sink on its own, audit trail included: a copy of the canonical topic, under new ids.

    The audit trail is append-only and keyed by event id, so records the end-to-end step
    audited would be skipped, however their rows were deleted. Instead the canonical records
    are copied to a sibling prefix (<prefix>alone.) with each event_id replaced by a uuid5 of
    it: the same 36 characters, so every other byte is unchanged, and a duplicate stays one.
    As for the upserted tables (bench.sink_tables), the sink is started and its group let
    settle first (start-up and join are not timed); then the copy is produced and the clock
    runs until the sink's offsets, stored with its rows and audit rows, cover it.
    """
    # bench.sink_tables owns the group wait; imported here, where it is used
    from bench.sink_tables import _group_stable

    source = settings.topic("quality.events.v1")
    alone = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}alone."})
    events = alone.topic("quality.events.v1")
    app_id = "bench-sink-alone"
    group = alone.topic(f"{app_id}-sink")
    create_topics(alone, load_catalog(), echo=_quiet)
    records = read_topic(settings, source)
    progress = _sink_progress(settings.dsn, group, events)
    env = {**env, "QMSFLOW_TOPIC_PREFIX": alone.topic_prefix, "QMSFLOW_APP_ID": app_id}
    processes = PipelineProcesses(alone, env, logs)
    processes.start_sink()
    assert processes.sink is not None
    watch = CpuWatch({"sink": processes.sink.pid})
    try:
        _group_stable(AdminClient({"bootstrap.servers": settings.bootstrap_servers}), group, 60)
        time.sleep(1.0)  # on_assign positions the partitions from qms.sink_offsets
        started = time.monotonic()
        producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5})
        for r in records:
            value = r.value
            # a framed canonical event starts with its event_id: 5 frame bytes, then the Avro
            # string's length (36, zigzag 0x48) and the 36 characters
            if value is not None and len(value) > 42 and value[5] == 0x48:
                renamed = uuid.uuid5(uuid.NAMESPACE_URL, f"{events}/{value[6:42].decode()}")
                value = value[:6] + str(renamed).encode("ascii") + value[42:]
            while True:
                try:
                    producer.produce(
                        events, key=r.key, value=value, headers=r.headers, partition=r.partition
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.05)
        producer.flush(60)
        waited = _wait(progress, len(records), timeout, processes.assert_alive, watch.first)
        watch.end(waited[2])
    finally:
        processes.stop()
    run = _run("sink_alone", rep, unique, len(records), started, waited, watch)
    stored = _rows(settings.dsn, events)
    if run.completed and stored != unique:
        raise RuntimeError(f"{events}: expected {unique} rows in qms.quality_event, got {stored}")
    return run


def _create_bench_topics(settings: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    partitions = load_catalog()["quality.events.v1"].partitions
    names = [
        settings.topic("bench.passthrough.v1"),
        settings.topic("bench.naive.v1"),
        settings.topic("bench.quix.v1"),
    ]
    for future in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
        future.result()


def _delete_topics(settings: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(settings.topic_prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            try:
                future.result()
            except Exception as error:  # a leftover topic must not lose the results
                print(f"  could not delete a topic: {error}")


def _print_run(name: str, run: Run, timeout: float) -> None:
    flag = "" if run.completed else f"  (INCOMPLETE after {timeout:.0f} s)"
    steady = run.steady_per_second
    after_first = "" if steady is None else f"  ({steady:,.0f}/s after the first)"
    rate = f"{run.per_second:>10,.0f}/s  {run.seconds:6.1f} s"
    print(f"  {name:<12} {rate}{after_first}{flag}{cpu_note(run.cpu)}", flush=True)


def repetition(
    base: Settings,
    rep: int,
    events: int,
    timeout: float,
    skip: Sequence[str] = (),
    quix: Path | str = "skipped: BENCH_SKIP=quix",
) -> tuple[list[Run], dict[str, Any]]:
    """One repetition of every measurement on a fresh prefix; its topics deleted afterwards.

    `quix` is the Quix peer venv's python, or why the peer is not measured.
    """
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    settings = base.model_copy(update={"topic_prefix": prefix})
    logs = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}"))
    env = {
        **environment(settings, settings.bootstrap_servers, settings.dsn),
        # the faust steps run the default runtime whatever the caller's shell says
        "QMSFLOW_APP_ID": settings.app_id,
        "QMSFLOW_WORKER_RUNTIME": RUNTIMES["e2e"],
    }
    runs: list[Run] = []
    batch_note = "skipped: BENCH_SKIP=batch"
    try:
        create_topics(settings, load_catalog(), echo=_quiet)
        _create_bench_topics(settings)
        started = time.monotonic()
        report = produce_demo(
            settings,
            count=events,
            duplicate_rate=DUPLICATES,
            seed=zlib.crc32(prefix.encode()),  # fresh event ids per run: rows are keyed by them
            echo=_quiet,
        )
        produced = time.monotonic() - started
        unique, sent = len(report.unique_event_ids), report.sent
        print(f"rep {rep + 1}: {prefix} {sent} records ({unique} unique) in {produced:.1f} s")
        steps: list[tuple[str, Callable[[], Run]]] = [
            ("passthrough", lambda: passthrough(settings, sent, unique, rep, timeout)),
            ("naive Faust", lambda: naive_faust(settings, env, sent, unique, rep, timeout, logs)),
            ("end-to-end", lambda: end_to_end(settings, env, unique, rep, timeout, logs)),
            ("COPY", lambda: copy_baseline(settings, unique, rep)),
            ("sink alone", lambda: sink_alone(settings, env, unique, rep, timeout, logs)),
        ]
        if isinstance(quix, Path):
            python = quix
            peer = ("Quix peer", lambda: quix_peer(settings, python, unique, rep, timeout, logs))
            steps.insert(2, peer)  # beside the other Kafka-side baselines
        else:
            print(f"  Quix peer    {quix}", flush=True)
        for name, step in steps:
            run = step()
            runs.append(run)
            _print_run(name, run, timeout)
        if "batch" not in skip:
            batch = end_to_end_batch(settings, env, sent, unique, rep, timeout, logs)
            if isinstance(batch, Run):
                runs.append(batch)
                batch_note = "measured"
                _print_run("e2e batch", batch, timeout)
            else:
                batch_note = batch
                print(f"  e2e batch    {batch}", flush=True)
        settled = settle_correlation(settings, env, logs, timeout)
        print(f"  worker restarted until correlation read every event: {settled:.1f} s")
        tables = []
        for group in GROUPS:
            table_runs, table_info = sink_table(settings, group, rep, timeout, logs)
            runs += table_runs
            tables.append(table_info)
            for run in table_runs:
                _print_run(f"{run.measurement} ({table_info['rows']} rows)", run, timeout)
        info = {
            "prefix": prefix,
            "sent": sent,
            "unique": unique,
            "produce_seconds": produced,
            "upserted_tables": tables,
            "e2e_batch": batch_note,
            "quix_peer": "measured" if isinstance(quix, Path) else quix,
        }
        return runs, info
    finally:
        _delete_topics(settings)
        for path in (settings.stack_dir / "faust").glob(f"{prefix}*"):
            shutil.rmtree(path, ignore_errors=True)
        print(f"  logs: {logs}")


def main() -> None:
    """Run every repetition and the single steps, then write the JSON and plots, print tables."""
    # imported here: they reuse this module's helpers, so a top-level import would be circular
    from bench.latency import (
        format_latency,
        latency_check,
        measure_latency,
        prefixes,
        rates_from_environment,
    )
    from bench.scale import (
        configurations_from_environment,
        format_scale,
        measure_scale,
        scale_checks,
    )
    from bench.state import KEY_COUNTS, format_state, measure_state, state_check

    events = int(os.environ.get("BENCH_EVENTS", "20000"))
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    timeout = float(os.environ.get("BENCH_TIMEOUT", "300"))
    skip = set(os.environ.get("BENCH_SKIP", "").split(","))
    # the worker runtimes the latency and scale steps run (BENCH_SKIP=batch: faust only)
    runtimes = tuple(r for r in RUNTIMES.values() if r != "batch" or "batch" not in skip)
    base = Settings()
    migrate(base.dsn, echo=_quiet)
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    load_before = os.getloadavg()
    wall = time.monotonic()
    runs: list[Run] = []
    repetitions = []
    quix: Path | str = "skipped: BENCH_SKIP=quix"
    if repeats and "quix" not in skip:
        quix = quix_python()
    for rep in range(repeats):
        print(f"throughput repetition {rep + 1} of {repeats}", flush=True)
        rep_runs, info = repetition(base, rep, events, timeout, sorted(skip), quix)
        runs += rep_runs
        repetitions.append(info)
    extra: dict[str, Any] = {}
    logs = Path(tempfile.mkdtemp(prefix="bench-steps-"))
    if "latency" not in skip:
        print("latency at fixed offered rates (one worker, one sink)", flush=True)
        extra["latency"] = measure_latency(base, logs, rates_from_environment(), runtimes)
        for prefix in prefixes(extra["latency"]):
            _delete_topics(base.model_copy(update={"topic_prefix": prefix}))
    if "scale" not in skip:
        print("scale: workers × partitions, then state recovery", flush=True)
        scale_events = int(os.environ.get("BENCH_SCALE_EVENTS", "6000"))
        scale_timeout = float(os.environ.get("BENCH_SCALE_TIMEOUT", "90"))
        extra["scale"] = measure_scale(
            base, scale_events, scale_timeout, logs, configurations_from_environment(), runtimes
        )
    if "state" not in skip:
        print("dedup state at scale", flush=True)
        keys = os.environ.get("BENCH_STATE_KEYS", "")
        counts = tuple(int(k) for k in keys.split(",") if k) if keys else KEY_COUNTS
        extra["state"] = measure_state(counts)
    document = result_document(
        started_at=started_at,
        machine=machine(),
        versions=versions(base),
        parameters={
            "events": events,
            "duplicate_rate": DUPLICATES,
            "repeats": repeats,
            "timeout_seconds": timeout,
            "worker_runtimes": dict(RUNTIMES),
            "repetitions": repetitions,
        },
        runs=runs,
        notes=[
            "rates: unique events (rows) per second of wall time to carry the whole input",
            "e2e and naive Faust include process start-up and consumer-group join",
            "e2e_batch: e2e's ingest records copied to <prefix>batch. and run with"
            " QMSFLOW_WORKER_RUNTIME=batch, app id qmsflow-batch; its sink finds the audit rows"
            " of e2e's events already chained, so it appends none (e2e's sink appends one per"
            " event); whether it ran is in parameters.repetitions[].e2e_batch",
            "cpu: utime + stime of each process from /proc/<pid>/stat (all threads, exited ones"
            " included), read at the first output and the last, before the process is stopped;"
            " steady_us_per_event: CPU between the two readings per unique event done between"
            " them (the worker's counted on its output, the canonical topic; the sink's by its"
            " committed offsets); total_us_per_event: CPU from the process's start per unique"
            " event; threads: the end reading split by live thread name",
            "quix_peer: bench.quix_peer, quixstreams 3.28.1 in .venv-quix: decode each ingest"
            " record, dedup by event_id in RocksDB state with its changelog (Quix's defaults:"
            " at-least-once, commit every 5 s), original bytes to <prefix>bench.quix.v1; from"
            " process start (Quix's start-up and topic checks included) until that topic holds"
            " every unique event; no Postgres; its start-up opens a RocksDB store per source"
            " partition (10 topics × 6 here), which dominates short runs: the ratio is also"
            " judged after the first output; whether it ran is in"
            " parameters.repetitions[].quix_peer",
            "COPY: one COPY of the canonical rows into a table LIKE qms.quality_event",
            "upserted tables (sink_incident, sink_golden_record): rows stored per second from"
            " the first record copied to a joined sink until its offsets cover them (start-up"
            " not included); copy_*: one COPY of the same stored rows into tables LIKE the real"
            " ones; records and rows per table in parameters.repetitions[].upserted_tables",
            "the machine is shared: other engineers' tests ran during this bench (load average)",
        ],
    )
    document.update(extra)
    if "scale" in extra:
        document["scale_targets"] = [asdict(check) for check in scale_checks(extra["scale"])]
    document["load_average"] = {"before": load_before, "after": os.getloadavg()}
    document["bench_seconds"] = time.monotonic() - wall
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{started_at}.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    png_path = RESULTS / f"{started_at}.png"
    if not plot(document, png_path):
        print("no throughput runs (BENCH_REPEATS=0): no throughput plot")
    more_png = RESULTS / f"{started_at}-latency-scale-state.png"
    if extra:
        plot_more(document, more_png)
    m = document["machine"]
    print(f"\nmachine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB")
    print(f"{events} events, {DUPLICATES:.0%} duplicates, median of {repeats} runs\n")
    print(format_table(medians(runs)))
    cpu = cpu_medians(runs)
    if cpu:
        print("\nCPU per unique event (median µs)\n")
        print(format_cpu_table(cpu))
    print()
    if "latency" in extra:
        print("\nlatency (ms) from the producer's timestamp\n")
        print(format_latency(extra["latency"]))
    if "scale" in extra:
        print("\nscale\n")
        print(format_scale(extra["scale"]))
    if "state" in extra:
        print("\ndedup state\n")
        print(format_state(extra["state"]))
    print(f"\nload average before {load_before}, after {os.getloadavg()}")
    print(f"bench took {document['bench_seconds'] / 60:.1f} min\n")
    for check in check_targets(medians(runs), cpu, steady_medians(runs)):
        print(check.sentence())
    if "latency" in extra:
        print(latency_check(extra["latency"]))
    if "scale" in extra:
        for check in scale_checks(extra["scale"]):
            print(check.sentence())
    if "state" in extra:
        print(state_check(extra["state"]))
    print("worker RSS flat (±10%) over 10 minutes: see `make soak` (not part of make bench)")
    written = [json_path, png_path, *([more_png] if extra else [])]
    print("\nwrote " + ", ".join(str(p.relative_to(ROOT)) for p in written))
