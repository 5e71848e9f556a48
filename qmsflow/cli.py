"""The `qmsflow` command: the local stack, topics, schemas, database, workers and demo traffic."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any

import click

from qmsflow.errors import QmsflowError
from qmsflow.settings import load_settings


@click.group()
def main() -> None:
    """Operate qmsflow. Settings come from the environment (see README: Configuration)."""


# ---- stack ----------------------------------------------------------------------------------
@main.group()
def stack() -> None:
    """The local Kafka broker and Postgres server (no Docker needed)."""


@stack.command("up")
def stack_up() -> None:
    """Fetch (first time) and start Kafka and Postgres; a no-op when they already run."""
    from qmsflow import stack as local_stack

    local_stack.up(load_settings(), click.echo)


@stack.command("down")
def stack_down() -> None:
    """Stop the local servers; their data stays for the next `up`."""
    from qmsflow import stack as local_stack

    local_stack.down(load_settings(), click.echo)


@stack.command("status")
def stack_status() -> None:
    """Show whether each local server runs, and where."""
    from qmsflow import stack as local_stack

    for name, state in local_stack.status(load_settings()).items():
        click.echo(f"{name:9} " + "  ".join(f"{k}={v}" for k, v in state.items()))


# ---- topics ---------------------------------------------------------------------------------
@main.group()
def topics() -> None:
    """Topics declared in qmsflow/config/topics.toml."""


@topics.command("create")
def topics_create() -> None:
    """Create every declared topic that is missing; check partition counts of the others."""
    from qmsflow.kafka.admin import create_topics
    from qmsflow.topics import load_catalog

    created = create_topics(load_settings(), load_catalog(), click.echo)
    click.echo(
        f"{len(created)} topics created, {len(load_catalog().topics) - len(created)} existed"
    )


@topics.command("describe")
def topics_describe() -> None:
    """Declared topics with their partitions and message counts on the broker."""
    from qmsflow.kafka.admin import describe_topics
    from qmsflow.topics import load_catalog

    click.echo(f"{'topic':42} {'declared':>8} {'actual':>6} {'messages':>9}")
    for state in describe_topics(load_settings(), load_catalog()):
        actual = "-" if state.actual_partitions is None else state.actual_partitions
        messages = "-" if state.messages is None else state.messages
        click.echo(f"{state.name:42} {state.declared_partitions:>8} {actual:>6} {messages:>9}")


# A local broker answers metadata in milliseconds and a remote one in well under this; an SRE
# waiting on an unreachable broker wants the error soon, not after admin's 30 s.
_SPREAD_TIMEOUT = 10.0
# DemoTraffic records counted for --demo-plant: line shares settle within ±0.3 points by then.
_DEMO_SAMPLE = 20_000


def _counts(text: str) -> tuple[int, ...]:
    """Partition or worker counts written `6,8,12` or `6-48`, ascending, each ≥ 1."""
    counts: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        low, _, high = item.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise click.BadParameter(f"expected counts like 6,8,12 or 6-48, got {item!r}") from None
        if first < 1 or last < first:
            raise click.BadParameter(f"expected counts ≥ 1, low to high, got {item!r}")
        counts.update(range(first, last + 1))
    if not counts:
        raise click.BadParameter("no counts given")
    return tuple(sorted(counts))


@topics.command("spread")
@click.option(
    "--topic",
    "topic_names",
    multiple=True,
    help="Declared topic to measure (logical name, repeatable: they add up); default "
    "quality.events.v1.",
)
@click.option(
    "--ingest", is_flag=True, help="Measure the ingest topics together (the ingest agent's load)."
)
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=5000,
    show_default=True,
    help="Keys read from the end of each partition; 0 reads every record.",
)
@click.option("--lines", "lines_text", help="Plan for these lines instead: a,b=2,c (weights).")
@click.option(
    "--lines-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Plan for the lines in a file: one per row, `line` or `line weight`, # comments.",
)
@click.option(
    "--demo-plant", is_flag=True, help="Plan for the demo plant's lines at their demo traffic."
)
@click.option(
    "--partitions", "counts_text", help="Counts to show, e.g. 6,8,12,16; default the topic's."
)
@click.option(
    "--workers",
    "workers_text",
    default="2,3,4,6",
    show_default=True,
    help="Group sizes to show and recommend for.",
)
@click.option(
    "--assignor",
    type=click.Choice(["range", "round-robin", "load-aware"]),
    default="round-robin",
    show_default=True,
    help="How workers get partitions, for the recommendation: round-robin (the Faust worker's) "
    "or range (the batch runtime's and the sink's).",
)
@click.option(
    "--candidates",
    "candidates_text",
    default="6-48",
    show_default=True,
    help="Partition counts the recommendation chooses from.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=25.0,
    show_default=True,
    help="Percent above even the busiest partition or worker may carry.",
)
def topics_spread(
    topic_names: tuple[str, ...],
    ingest: bool,
    sample: int,
    lines_text: str | None,
    lines_file: str | None,
    demo_plant: bool,
    counts_text: str | None,
    workers_text: str,
    assignor: str,
    candidates_text: str,
    tolerance: float,
) -> None:
    """How product lines spread over partitions, and the worker speed-up that allows.

    Measures the topics on the broker (records per partition from the watermarks, product lines
    from the keys at each partition's end), or plans without a broker for --lines, --lines-file
    or --demo-plant. docs/scaling.md explains the figures.
    """
    from pathlib import Path

    from confluent_kafka import KafkaException

    from qmsflow.partition_spread import planned_spread, read_line_weights
    from qmsflow.topics import load_catalog

    settings = load_settings()
    workers = _counts(workers_text)
    candidates = _counts(candidates_text)
    if sum(source is not None for source in (lines_text, lines_file, demo_plant or None)) > 1:
        raise click.UsageError("give one of --lines, --lines-file and --demo-plant")
    try:
        catalog = load_catalog()
        if ingest:
            topic_names = (*topic_names, *(t.name for t in catalog.by_role("ingest")))
        topic_names = tuple(dict.fromkeys(topic_names)) or ("quality.events.v1",)
        declared = {catalog[name].partitions for name in topic_names}
        counts = _counts(counts_text) if counts_text else (max(declared),)
        if lines_text is not None:
            weights = read_line_weights(lines_text)
            click.echo(f"{len(weights)} product lines from --lines, planned")
        elif lines_file is not None:
            weights = read_line_weights(Path(lines_file).read_text(encoding="utf-8"))
            click.echo(f"{len(weights)} product lines from {lines_file}, planned")
        elif demo_plant:
            weights = _demo_plant_weights()
            click.echo(
                f"the demo plant: {len(weights)} product lines weighted by their records among "
                f"{_DEMO_SAMPLE:,} of demo traffic (seed 7), planned"
            )
        else:
            weights, measured_count = _measure_spread(settings, topic_names, sample, workers)
            counts = tuple(n for n in counts if n != measured_count) if counts_text else ()
        for count in counts:
            click.echo(f"\n{count} partitions, planned (murmur2 of each line mod {count})")
            _echo_spread(planned_spread(weights, count), workers, None)
        _echo_recommendations(weights, candidates, tolerance / 100, workers, assignor)
    except KafkaException as exc:
        reason = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else exc
        raise click.ClickException(
            f"cannot read from Kafka at {settings.bootstrap_servers}: {reason}"
        ) from exc
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0])) from exc
    except (QmsflowError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


def _measure_spread(
    settings: Any, logical: tuple[str, ...], sample: int, workers: tuple[int, ...]
) -> tuple[dict[str, float], int]:
    """Read and print the spread of co-partitioned topics as one; return line shares and count.

    Several topics add up per partition number: a worker that owns partition p of one owns p of
    every topic co-partitioned with it.
    """
    from collections import defaultdict

    from qmsflow.kafka.admin import partition_counts, read_partition_keys
    from qmsflow.partition_spread import UNKEYED, misplaced_lines, observed_spread, scaled_sample
    from qmsflow.topics import load_catalog

    records: dict[int, int] = defaultdict(int)
    samples: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    sampled = 0
    names = [settings.topic(name) for name in logical]
    tail = "every record" if sample == 0 else f"the last {sample:,} records"
    for name in names:
        click.echo(f"reading {tail} of each partition of {name}", err=True)
        read = read_partition_keys(
            settings, name, sample or None, lambda line: click.echo(line, err=True), _SPREAD_TIMEOUT
        )
        if records and len(read) != len(records):
            raise click.ClickException(
                f"{name} has {len(read)} partitions, {names[0]} {len(records)}: only topics "
                "with one partition count add up"
            )
        for p in read:
            records[p.partition] += p.records
            keys = {key or UNKEYED: n for key, n in p.keys.items()}
            for key, weight in scaled_sample(keys, p.records).items():
                samples[p.partition][key] += weight
            sampled += sum(p.keys.values())
    spread = observed_spread(samples, records)
    catalog = load_catalog()
    title = names[0] if len(names) == 1 else f"{len(names)} topics, added up"
    if len(names) > 1 and set(logical) == {t.name for t in catalog.by_role("ingest")}:
        title = f"the {len(names)} ingest topics, added up"
    click.echo(
        f"{title}: {spread.count} partitions, {sum(records.values()):,} records, measured "
        f"(lines' shares from {sampled:,} keys)"
    )
    group = [t for t in catalog.topics if t.role in ("ingest", "canonical", "internal")]
    if any(t.name in logical for t in group):
        ingest = sum(1 for t in group if t.role == "ingest")
        click.echo(
            f"{len(group)} topics share one declared count, {group[0].partitions} "
            f"({ingest} ingest, 1 canonical, {len(group) - ingest - 1} internal): a line has "
            "the same partition number in all of them"
        )
        in_group = [settings.topic(t.name) for t in group]
        for other, count in partition_counts(settings, in_group, _SPREAD_TIMEOUT).items():
            if count != spread.count:
                click.echo(f"warning: {other} has {count} partitions, not {spread.count}", err=True)
    _echo_spread(spread, workers, dict(records))
    for line, found, home in misplaced_lines(spread):
        click.echo(
            f"warning: {line} is on partition {found}, murmur2 puts it on {home}: a producer "
            "without partitioner=murmur2_random splits its records",
            err=True,
        )
    shares = {line.line: line.share for p in spread.partitions for line in p.lines}
    shares.pop(UNKEYED, None)  # keyless records have no partition to plan for
    return shares, spread.count


def _demo_plant_weights() -> dict[str, float]:
    """The demo plant's lines, weighted by their records in demo traffic."""
    from collections import Counter
    from datetime import UTC, datetime

    from qmsflow.demo.traffic import DemoTraffic

    traffic = DemoTraffic(seed=7, start=datetime.now(UTC))
    return dict(Counter(record.key for record in traffic.records(_DEMO_SAMPLE)))


def _echo_spread(spread: Any, workers: tuple[int, ...], records: dict[int, int] | None) -> None:
    """Each partition's share and lines, the busiest partition, and the workers' ceilings."""
    from qmsflow.partition_spread import ASSIGNORS

    width = max([len("product line"), *(len(s.line) for p in spread.partitions for s in p.lines)])
    counted = f"{'records':>10} " if records is not None else ""
    click.echo(
        f"{'partition':>9} {counted}{'share':>6} {'×even':>6}  {'product line':<{width}} share"
    )
    for p in spread.partitions:
        lead = f"{p.partition:>9} "
        if records is not None:
            lead += f"{records.get(p.partition, 0):>10,} "
        lead += f"{p.share:>6.1%} {p.share * spread.count:>6.2f}  "
        if not p.lines:
            click.echo(f"{lead}-")
        for index, line in enumerate(p.lines):
            click.echo(
                f"{lead if index == 0 else ' ' * len(lead)}{line.line:<{width}} {line.share:>5.1%}"
            )
    busiest = spread.busiest
    click.echo(
        f"busiest: partition {busiest.partition}, {busiest.share:.1%} of traffic = "
        f"{spread.skew:.2f}× even ({1 / spread.count:.1%}); {spread.busy} of {spread.count} "
        "partitions carry traffic"
    )
    click.echo("busiest worker's share and speed-up over one worker, by assignor:")
    click.echo(f"{'workers':>9} " + " ".join(f"{a:>15}" for a in ASSIGNORS))
    for count in workers:
        cells = []
        for assignor in ASSIGNORS:
            share = spread.busiest_worker(count, assignor)
            cells.append(f"{share:>6.1%} {1 / share:>5.2f}×".rjust(15))
        click.echo(f"{count:>9} " + " ".join(cells))


def _echo_recommendations(
    weights: dict[str, float],
    candidates: tuple[int, ...],
    tolerance: float,
    workers: tuple[int, ...],
    assignor: Any,
) -> None:
    """The smallest fitting count for the partitions and for each group size, or the nearest."""
    from qmsflow.partition_spread import recommend

    scope = f"{candidates[0]}–{candidates[-1]}" if len(candidates) > 1 else str(candidates[0])
    click.echo(f"\nsmallest of {scope} partitions within {tolerance:.0%} of even:")
    for group in (None, *workers):
        advice = recommend(weights, candidates, tolerance, group, assignor)
        what = "busiest partition" if group is None else f"{group} workers ({assignor})"
        if advice.partitions is not None:
            chosen = next(s for s in advice.candidates if s.count == advice.partitions)
            click.echo(f"  {what:>26}: {chosen.count}, at {advice.load(chosen):.2f}× even")
        else:
            best = advice.most_even
            click.echo(
                f"  {what:>26}: none; nearest {best.count}, at {advice.load(best):.2f}× even"
            )
    heaviest = advice.heaviest_line
    click.echo(
        f"{heaviest.line} alone carries {heaviest.share:.1%} of traffic: no count takes the "
        f"busiest partition below that, nor a group past {1 / heaviest.share:.1f}× one worker"
    )


@topics.command("scale")
@click.argument("topic_names", nargs=-1, required=True)
@click.option("--partitions", type=click.IntRange(min=1), required=True, help="The new count.")
@click.option(
    "--with-copartitioned", is_flag=True, help="Scale every topic co-partitioned with TOPIC."
)
@click.option(
    "--keep-unmigrated-state", is_flag=True, help="Leave state of non-migrated tables in place."
)
@click.option(
    "--while-producing",
    is_flag=True,
    help="Producers keep running: accept unread records (order across the change not kept).",
)
@click.option("--dry-run", is_flag=True, help="Check and plan; change nothing.")
@click.option(
    "--catalog",
    "catalog_file",
    type=click.Path(exists=True, dir_okay=False),
    help="topics.toml to update; default the packaged qmsflow/config/topics.toml.",
)
def topics_scale(
    topic_names: tuple[str, ...],
    partitions: int,
    with_copartitioned: bool,
    keep_unmigrated_state: bool,
    while_producing: bool,
    dry_run: bool,
    catalog_file: str | None,
) -> None:
    """Add partitions to stateful topics by the procedure of docs/scaling.md (workers stopped)."""
    from pathlib import Path

    from qmsflow.scaling import scale

    path = Path(catalog_file) if catalog_file else Path(__file__).parent / "config" / "topics.toml"
    try:
        scale(
            load_settings(),
            path,
            topic_names,
            partitions,
            with_group=with_copartitioned,
            keep_unmigrated=keep_unmigrated_state,
            while_producing=while_producing,
            dry_run=dry_run,
            echo=click.echo,
        )
    except (QmsflowError, KeyError) as exc:
        raise click.ClickException(str(exc)) from exc


# ---- toggles --------------------------------------------------------------------------------
@main.group()
def toggles() -> None:
    """Feature toggles of non-critical integrations (ops.toggles.v1)."""


@toggles.command("set")
@click.argument("feature")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--reason", required=True, help="Why, for the audit trail.")
@click.option("--by", "changed_by", envvar="USER", default="operator", help="Who switches it.")
def toggles_set(feature: str, state: str, reason: str, changed_by: str) -> None:
    """Switch FEATURE on or off in every running worker; core processing is refused."""
    from qmsflow.toggles import publish_toggle, switch

    try:
        toggle = switch(feature, state == "on", changed_by=changed_by, reason=reason)
    except QmsflowError as exc:
        raise click.ClickException(str(exc)) from exc
    publish_toggle(load_settings(), toggle)
    click.echo(f"{feature} switched {state}")


@toggles.command("list")
def toggles_list() -> None:
    """Every toggleable feature with its state and last switch."""
    from qmsflow.toggles import read_toggles

    for feature, toggle in read_toggles(load_settings()).snapshot().items():
        if toggle is None:
            click.echo(f"{feature:20} on   (never switched)")
        else:
            state = "on " if toggle.enabled else "off"
            click.echo(
                f"{feature:20} {state}  {toggle.changed_at:%Y-%m-%d %H:%M} by "
                f"{toggle.changed_by}: {toggle.reason}"
            )


# ---- schemas --------------------------------------------------------------------------------
@main.group()
def schemas() -> None:
    """Avro contracts under schemas/avro/."""


@schemas.command("check")
def schemas_check() -> None:
    """Verify every subject is BACKWARD_TRANSITIVE compatible and matches the lock file."""
    from qmsflow.contracts.compatibility import check_all

    report = check_all(load_settings().schemas_dir)
    click.echo(report.render())
    if not report.ok:
        sys.exit(1)


@schemas.command("lock")
def schemas_lock() -> None:
    """Pin ids for new schema versions in registry.lock.json (existing ids never change)."""
    from qmsflow.contracts.registry import lock_schemas

    for entry in lock_schemas(load_settings().schemas_dir):
        click.echo(f"pinned {entry.subject} v{entry.version} as id {entry.schema_id}")


@schemas.command("push")
def schemas_push() -> None:
    """Register every schema version with the registry at SCHEMA_REGISTRY_URL."""
    from qmsflow.contracts.registry import ConfluentSchemaRegistry, read_schema_files

    settings = load_settings()
    if not settings.schema_registry_url:
        raise click.UsageError("SCHEMA_REGISTRY_URL is not set; the file registry needs no push")
    registry = ConfluentSchemaRegistry(settings.schema_registry_url)
    for schema_file in read_schema_files(settings.schemas_dir):
        schema_id = registry.push(schema_file.subject, schema_file.text)
        click.echo(f"{schema_file.subject} v{schema_file.version} → id {schema_id}")


# ---- database -------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """The sink's Postgres database."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply pending SQL migrations (each once, in order)."""
    from connectors.postgres_sink.migrations import migrate

    applied = migrate(load_settings().dsn, click.echo)
    click.echo(f"{len(applied)} migrations applied; database is current")


@db.command("docs")
@click.option(
    "--output",
    default="docs/analysts.md",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to write the analysts' guide.",
)
def db_docs(output: str) -> None:
    """Write the analysts' guide from the comments on the analytics views in the database."""
    from pathlib import Path

    import psycopg

    with psycopg.connect(load_settings().dsn) as conn:
        catalog = analyst_catalog_from_db(conn)
    Path(output).write_text(render_analyst_docs(catalog), encoding="utf-8")
    click.echo(f"wrote {output}: {len(catalog)} views")


#: view name → (its comment, [(column, comment)] in column order); "" where none is set
AnalystCatalog = dict[str, tuple[str, list[tuple[str, str]]]]

_COMMENT = re.compile(
    r"COMMENT ON (VIEW|COLUMN) analytics\.(\w+)(?:\.(\w+))? IS\s+((?:'(?:[^']|'')*'\s*)+);",
    re.IGNORECASE,
)


def analyst_catalog_from_sql(sql_texts: Iterable[str]) -> AnalystCatalog:
    """The analytics views' comments as the migrations set them (later ones win)."""
    catalog: AnalystCatalog = {}
    for sql in sql_texts:
        for kind, view, column, literals in _COMMENT.findall(sql):
            text = "".join(
                part.replace("''", "'") for part in re.findall(r"'((?:[^']|'')*)'", literals)
            )
            _comment, columns = catalog.setdefault(view, ("", []))
            if kind.upper() == "VIEW":
                catalog[view] = (text, columns)
            else:
                columns[:] = [c for c in columns if c[0] != column] + [(column, text)]
    return catalog


def analyst_catalog_from_db(conn: Any) -> AnalystCatalog:
    """The analytics views' comments as the database holds them, columns in their order."""
    catalog: AnalystCatalog = {}
    views = conn.execute(
        "SELECT c.oid, c.relname, coalesce(obj_description(c.oid, 'pg_class'), '')"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'analytics' AND c.relkind IN ('v', 'm') ORDER BY c.relname"
    ).fetchall()
    for oid, name, comment in views:
        columns = conn.execute(
            "SELECT attname, coalesce(col_description(attrelid, attnum), '')"
            " FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped"
            " ORDER BY attnum",
            (oid,),
        ).fetchall()
        catalog[name] = (comment, [(c, t) for c, t in columns])
    return catalog


def render_analyst_docs(catalog: AnalystCatalog) -> str:
    """docs/analysts.md: one section per view, one table row per column."""
    lines = [
        "# Analyst views (schema `analytics`)",
        "",
        "<!-- generated by `qmsflow db docs` from the database comments; do not edit -->",
        "",
        "Analysts (role `qmsflow_analyst`) read these views and nothing else. Synthetic (canary)",
        "records never appear in them. Times are UTC; ages are computed at query time.",
        "",
    ]
    for view in sorted(catalog):
        comment, columns = catalog[view]
        lines += [f"## analytics.{view}", "", comment or "(undocumented)", ""]
        lines += ["| column | meaning |", "|---|---|"]
        lines += [f"| `{c}` | {t or '(undocumented)'} |" for c, t in columns]
        lines.append("")
    return "\n".join(lines)


# ---- audit trail ----------------------------------------------------------------------------
@main.group()
def audit() -> None:
    """The Part 11 audit trail in schema audit."""


@audit.command("verify")
@click.option("--all", "all_problems", is_flag=True, help="List every broken row, not the first.")
def audit_verify(all_problems: bool) -> None:
    """Recompute the hash chain of audit.record_change; exit 1 naming the first broken link."""
    import psycopg

    from qmsflow.audit import verify_chain

    with psycopg.connect(load_settings().dsn) as conn:
        report = verify_chain(conn, all_problems=all_problems)
    for link in report.problems:
        click.echo(
            f"BROKEN at seq {link.seq} ({link.record_type} {link.record_id}): {link.problem}"
        )
    if not report.intact:
        sys.exit(1)
    click.echo(
        f"audit chain intact: {report.rows} rows, head seq {report.head_seq},"
        f" head hash {report.head_hash}"
    )


# ---- reconciliation -------------------------------------------------------------------------
@main.command("reconcile")
@click.option("--topic", "topics", multiple=True, help="Logical topic (repeatable); default all.")
def reconcile_command(topics: tuple[str, ...]) -> None:
    """Compare Kafka and the sink tables per topic and partition; exit 1 on drift."""
    from qmsflow.reconcile import reconcile

    checks = reconcile(load_settings(), topics=topics, echo=click.echo)
    drifted = [c for c in checks if c.drift]
    click.echo(f"{len(checks)} partitions compared, {len(drifted)} with drift")
    if drifted:
        sys.exit(1)


# ---- retention ------------------------------------------------------------------------------
@main.group()
def retention() -> None:
    """Retention per record type (qmsflow/config/retention.toml); audit is never pruned."""


@retention.command("run")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; change nothing.")
def retention_run(dry_run: bool) -> None:
    """Archive (where regulated) and delete rows past their retention."""
    from datetime import UTC, datetime

    import psycopg

    from qmsflow.retention import load_policies, plan_retention, run_retention

    steps = plan_retention(load_policies(), datetime.now(UTC))
    with psycopg.connect(load_settings().dsn) as conn:
        done = run_retention(conn, steps, dry_run=dry_run, echo=click.echo)
    click.echo(f"{sum(done.values())} rows {'would be ' if dry_run else ''}removed")


# ---- interface documents --------------------------------------------------------------------
@main.group()
def icd() -> None:
    """Interface documents (AsyncAPI, one ICD per system) generated from the declarations."""


@icd.command("generate")
def icd_generate() -> None:
    """Write docs/asyncapi.json, docs/asyncapi.md and docs/icd/*.md from the code."""
    from qmsflow.interface_docs.documents import write_documents

    for path in write_documents():
        click.echo(f"wrote {path}")


@icd.command("check")
@click.option("--validate", is_flag=True, help="Also parse asyncapi.json with @asyncapi/parser.")
def icd_check(validate: bool) -> None:
    """Fail when a committed document differs from what the code generates."""
    from qmsflow.interface_docs.documents import ASYNCAPI_FILE, stale_documents

    problems = stale_documents()
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise SystemExit("interface documents are stale: run `qmsflow icd generate`")
    if validate:
        from qmsflow.interface_docs.parser import ERROR, validate_asyncapi
        from qmsflow.settings import PROJECT_ROOT

        verdict = validate_asyncapi(PROJECT_ROOT / ASYNCAPI_FILE)
        for diagnostic in verdict.diagnostics:
            click.echo(f"{diagnostic['severity']} {diagnostic['code']}: {diagnostic['message']}")
        if not verdict.valid or verdict.at_least(ERROR):
            raise SystemExit("docs/asyncapi.json does not validate")
        click.echo(f"asyncapi.json valid: {len(verdict.channels)} channels")
    click.echo("interface documents are up to date")


# ---- dead letters ---------------------------------------------------------------------------
@main.group()
def dlq() -> None:
    """Dead letters the sink loaded into qms.dead_letter: inspect and replay them."""


@dlq.command("list")
@click.option("--reason", "reason_code", help="Only this reason code, e.g. unknown-code.")
@click.option("--stage", help="Only dead letters of this stage, e.g. normalise.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
def dlq_list(reason_code: str | None, stage: str | None, limit: int) -> None:
    """Dead letters of the current environment, newest failure first."""
    import psycopg

    from qmsflow.dead_letters import list_dead_letters

    settings = load_settings()
    with psycopg.connect(settings.dsn) as conn:
        letters = list_dead_letters(
            conn, settings, reason_code=reason_code, stage=stage, limit=limit
        )
    for letter in letters:
        replayed = f"  replayed {letter.replays}x" if letter.replays else ""
        cut = "" if letter.holds_whole_original else (
            f"  original cut ({letter.value_length} bytes, {letter.headers_dropped} headers "
            "dropped): replay re-reads it from the source"
        )  # fmt: skip
        click.echo(
            f"{letter.dead_letter_id}  {letter.reason_code:16} {letter.stage:10} {letter.source}"
            f"  {letter.failed_at.isoformat()}{replayed}{cut}\n    {letter.reason}"
        )
    click.echo(f"{len(letters)} dead letters")


@dlq.command("replay")
@click.option("--id", "ids", multiple=True, type=click.UUID, help="A dead letter id (repeatable).")
@click.option("--reason", "reason_code", help="Every dead letter of this reason code.")
@click.option("--include-replayed", is_flag=True, help="With --reason: also those replayed before.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; produce nothing.")
def dlq_replay(
    ids: tuple[object, ...], reason_code: str | None, include_replayed: bool, dry_run: bool
) -> None:
    """Re-produce dead letters' original records to their source topics, and record who did.

    A dead letter holding only part of a large original is replayed with the whole original,
    re-read from its source topic and checked against its sha256; when the source no longer has
    it, that dead letter is named, not replayed, and the command fails after replaying the rest.
    """
    import psycopg

    from qmsflow.dead_letters import replay, select_dead_letters

    if bool(ids) == (reason_code is not None):
        raise click.UsageError("give either --id (one or more) or --reason")
    settings = load_settings()
    with psycopg.connect(settings.dsn) as conn:
        letters = select_dead_letters(
            conn,
            settings,
            ids=[str(i) for i in ids],
            reason_code=reason_code,
            include_replayed=include_replayed,
        )
        try:
            done = replay(conn, settings, letters, dry_run=dry_run, echo=click.echo)
        finally:
            # keep the audit rows of the acknowledged replays when others failed: leaving the
            # block on an exception would roll them back
            conn.commit()
    click.echo(f"{len(done)} dead letters {'would be ' if dry_run else ''}replayed")


# ---- acl ------------------------------------------------------------------------------------
@main.group()
def acl() -> None:
    """Kafka ACLs per service account, derived from the topics and groups the code uses."""


@acl.command("plan")
@click.option(
    "--format",
    "output_format",
    default="commands",
    show_default=True,
    type=click.Choice(["commands", "table"]),
    help="kafka-acls.sh commands, or a table for review.",
)
@click.option(
    "--principal",
    "principals",
    multiple=True,
    metavar="SERVICE=PRINCIPAL",
    help="Override a principal, e.g. sink=User:sink-prod (default User:qmsflow-<service>).",
)
def acl_plan(output_format: str, principals: tuple[str, ...]) -> None:
    """Print the ACLs of the worker, sink, ERP adapter and migrate job for this environment."""
    from qmsflow.acl import Service, plan_acls, render_commands, render_table
    from qmsflow.topics import load_catalog

    services: tuple[Service, ...] = ("worker", "sink", "erp-adapter", "migrate")
    chosen: dict[Service, str] = {s: f"User:qmsflow-{s}" for s in services}
    for item in principals:
        service, sep, principal = item.partition("=")
        if not sep or service not in services or not principal:
            raise click.BadParameter(
                f"expected SERVICE=PRINCIPAL with SERVICE one of {', '.join(services)}; "
                f"got {item!r}",
                param_hint="--principal",
            )
        chosen[service] = principal
    acls = plan_acls(load_settings(), load_catalog())
    render = render_commands if output_format == "commands" else render_table
    click.echo(render(acls, chosen), nl=False)


# ---- processes ------------------------------------------------------------------------------
@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--loglevel", default="info", type=click.Choice(["crit", "error", "warn", "info"]))
@click.pass_context
def worker(ctx: click.Context, loglevel: str) -> None:
    """Run the Faust stream worker (normalise, dedup) until stopped."""
    from streams.app import run_worker

    run_worker(load_settings(), loglevel=loglevel, extra=list(ctx.args))


@main.command()
def sink() -> None:
    """Run the Postgres sink until stopped (SIGTERM/SIGINT)."""
    import logging

    from connectors.postgres_sink.sink import run_sink

    logging.basicConfig(level=logging.INFO, format="%(asctime)s sink %(levelname)s %(message)s")
    stats = run_sink(load_settings(), echo=click.echo)
    click.echo(f"sink stopped: {stats.rows_inserted} rows in {stats.batches} batches")


@main.command("erp-adapter")
@click.option(
    "--route",
    help="Run only this route of QMSFLOW_ERP_ROUTES_FILE (one process per ERP); default: all.",
)
def erp_adapter(route: str | None) -> None:
    """Apply quarantine commands to the ERP(s) of the routing table until SIGTERM/SIGINT."""
    import logging

    from connectors.erp_adapter.adapter import run_erp_adapter

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s erp-adapter %(levelname)s %(message)s"
    )
    for name, metrics in run_erp_adapter(load_settings(), route=route).items():
        click.echo(
            f"erp adapter {name} stopped: {metrics.applied} applied, {metrics.already_applied} "
            f"already applied, {metrics.retried} retries, {metrics.dead_lettered} dead letters, "
            f"breaker opened {metrics.breaker_opened}x"
        )


@main.command("status-page")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, help="Port; default QMSFLOW_STATUS_PAGE_PORT.")
def status_page(host: str, port: int | None) -> None:
    """Serve the live status page (throughput, errors, lag, SLAs, incidents) until stopped."""
    from qmsflow.status_page import serve

    settings = load_settings()
    port = settings.status_page_port if port is None else port
    click.echo(f"status page on http://{host}:{port}/ (JSON at /api/status)")
    try:
        serve(settings, host, port)
    except KeyboardInterrupt:
        click.echo("status page stopped")


@main.command("canary")
@click.option("--once", is_flag=True, help="One run; exit 1 when a path is unhealthy.")
def canary(once: bool) -> None:
    """Send synthetic events through every path on a schedule and report health and latency."""
    from qmsflow import telemetry
    from qmsflow.canary import describe, run_canary, run_once

    settings = load_settings()
    telemetry.start_telemetry(settings, "qmsflow-canary", metrics_port=settings.canary_metrics_port)
    if once:
        results = run_once(settings, timeout=settings.canary_timeout)
        for result in results:
            click.echo(describe(result))
        if not all(result.healthy for result in results):
            raise SystemExit(1)
        return
    try:
        run_canary(
            settings,
            interval=settings.canary_interval,
            timeout=settings.canary_timeout,
            echo=click.echo,
        )
    except KeyboardInterrupt:
        click.echo("canary stopped")


@main.command("lag")
@click.option(
    "--group",
    "groups",
    multiple=True,
    help="Consumer group (repeatable); default: the worker's and the sink's.",
)
def lag(groups: tuple[str, ...]) -> None:
    """Lag per consumer group, topic and partition: committed vs end offsets."""
    from qmsflow.status_page import consumer_groups, read_lag

    settings = load_settings()
    rows = read_lag(settings, groups or consumer_groups(settings))
    if not rows:
        click.echo("no committed offsets for these groups")
        return
    gw, tw = max(len(r.group) for r in rows), max(len(r.topic) for r in rows)
    click.echo(
        f"{'group':<{gw}} {'topic':<{tw}} {'part':>4} {'committed':>10} {'end':>10} {'lag':>8}"
    )
    for r in rows:
        committed = "-" if r.committed is None else str(r.committed)
        click.echo(
            f"{r.group:<{gw}} {r.topic:<{tw}} {r.partition:>4} {committed:>10} "
            f"{r.end:>10} {r.lag:>8}"
        )
    for group in dict.fromkeys(r.group for r in rows):
        click.echo(f"{group}: total lag {sum(r.lag for r in rows if r.group == group)}")


@main.group()
def demo() -> None:
    """Realistic demo traffic from simulated QMS, MES, LIMS, EMS and CMMS systems."""


@demo.command("produce")
@click.option("--count", default=5000, show_default=True, help="Records, duplicates included.")
@click.option("--duplicates", default=0.1, show_default=True, help="Share of exact resends.")
@click.option("--corrupt", default=20, show_default=True, help="Malformed records to add.")
@click.option("--rate", default=0.0, show_default=True, help="Records per second (0: unlimited).")
@click.option("--seed", default=7, show_default=True)
def demo_produce(count: int, duplicates: float, corrupt: int, rate: float, seed: int) -> None:
    """Publish demo records to the ingest topics and wait for the broker's acks."""
    from qmsflow.demo.produce import produce_demo

    report = produce_demo(
        load_settings(),
        count=count,
        duplicate_rate=duplicates,
        corrupt=corrupt,
        seed=seed,
        rate=rate or None,
        echo=click.echo,
    )
    click.echo(
        f"sent {report.sent} records ({len(report.unique_event_ids)} unique events, "
        f"{report.duplicates} duplicates) and {report.corrupt} corrupt records"
    )


@main.command()
@click.option("--count", default=20000, show_default=True, help="Demo records to produce.")
@click.option("--rate", default=400.0, show_default=True, help="Demo records per second.")
def run(count: int, rate: float) -> None:
    """Everything, locally: stack, topics, database, worker, sink, demo traffic, live summary."""
    from qmsflow.local_run import run_local

    run_local(load_settings(), count=count, rate=rate, echo=click.echo)


def entry() -> None:
    """Console-script entry: known errors print one line and exit 2, without a traceback."""
    try:
        main(standalone_mode=True)
    except QmsflowError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    entry()
