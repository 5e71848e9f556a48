"""The chaos suite's own stack: a broker and a Postgres server that the scenarios may stop and kill.

`make chaos` sets `RUN_CHAOS=1`; without it nothing here is collected, so the default `pytest`
run (and `make test`) stays fast. The stack lives in `.stack-chaos/` on ports of its own
(`CHAOS_KAFKA_PORT`, default 29092, controller 29093; `CHAOS_POSTGRES_PORT`, default 54339), so
stopping it never touches the shared development stack (19092 / 54329 / Connect 18083). It is
left running between runs, like the development stack (`rm -rf .stack-chaos` after stopping its
broker and server discards it). No Kafka Connect runs on it: scenario 11b is not covered.

Each scenario's ledger is printed and merged into `.stack-chaos/report.json`, keyed by scenario.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.postgres_sink.migrations import migrate
from qmsflow.reconcile import Ledger
from qmsflow.settings import PROJECT_ROOT, Settings
from qmsflow.stack import LocalKafka, LocalPostgres

collect_ignore_glob = [] if os.environ.get("RUN_CHAOS") == "1" else ["test_*.py"]

CHAOS_STACK_DIR = PROJECT_ROOT / os.environ.get("CHAOS_STACK_DIR", ".stack-chaos")
REPORT = CHAOS_STACK_DIR / "report.json"


def chaos_stack_settings() -> Settings:
    """The dedicated stack's settings; refuses any overlap with the shared development stack."""
    shared = Settings(kafka_bootstrap_servers=None, database_url=None)
    settings = Settings(
        kafka_bootstrap_servers=None,
        database_url=None,
        stack_dir=CHAOS_STACK_DIR,
        kafka_port=int(os.environ.get("CHAOS_KAFKA_PORT", "29092")),
        postgres_port=int(os.environ.get("CHAOS_POSTGRES_PORT", "54339")),
    )
    shared_ports = {
        shared.kafka_port,
        shared.kafka_port + 1,
        shared.postgres_port,
        shared.connect_port,
    }
    chaos_ports = {settings.kafka_port, settings.kafka_port + 1, settings.postgres_port}
    if shared_ports & chaos_ports or settings.stack_dir.resolve() == shared.stack_dir.resolve():
        raise pytest.UsageError(
            f"chaos stack would overlap the shared one: ports {sorted(shared_ports & chaos_ports)}"
            f", dirs {settings.stack_dir} / {shared.stack_dir}"
        )
    return settings


@pytest.fixture(scope="session")
def chaos_settings() -> Settings:
    """Settings of the dedicated chaos stack (no prefix yet)."""
    return chaos_stack_settings()


@pytest.fixture(scope="session")
def chaos_kafka(chaos_settings: Settings) -> LocalKafka:
    """The chaos broker, started if needed; scenarios stop and start it."""
    kafka = LocalKafka(chaos_settings)
    kafka.up(print)
    return kafka


@pytest.fixture(scope="session")
def chaos_postgres(chaos_settings: Settings) -> LocalPostgres:
    """The chaos Postgres server, started and migrated; scenarios stop and start it."""
    postgres = LocalPostgres(chaos_settings)
    postgres.up(print)
    migrate(chaos_settings.dsn, echo=lambda _line: None)
    return postgres


@pytest.fixture(scope="session")
def kafka_bootstrap(chaos_kafka: LocalKafka) -> str:
    """Overrides the shared broker: the `topic_prefix` fixture deletes topics on this one."""
    return chaos_kafka.bootstrap_servers


@pytest.fixture(scope="session")
def postgres_dsn(chaos_postgres: LocalPostgres, chaos_settings: Settings) -> str:
    """Overrides the shared database with the chaos stack's."""
    return chaos_settings.dsn


@pytest.fixture(scope="session")
def chaos_report(pytestconfig: pytest.Config) -> Iterator[dict[str, Any]]:
    """Ledgers of this session, merged into `.stack-chaos/report.json` at the end."""
    ledgers: dict[str, Any] = {}
    yield ledgers
    if not ledgers:
        return
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    scenarios = {**previous.get("scenarios", {}), **ledgers}
    REPORT.write_text(
        json.dumps(
            {
                "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": f"{os.cpu_count()} CPUs, {platform.machine()},"
                f" Python {platform.python_version()}",
                "scenarios": dict(sorted(scenarios.items())),
            },
            indent=2,
        )
        + "\n"
    )


@pytest.fixture
def record_ledger(chaos_report: dict[str, Any], pytestconfig: pytest.Config) -> Iterator[Any]:
    """Print a ledger past pytest's capture and keep it for the report; fail on a difference."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def record(account: Ledger, *, seconds: float, passed_checks: bool = True) -> None:
        text = account.render() + f"\n  wall time {seconds:.0f} s"
        if capture is None:
            print(text, flush=True)
        else:
            with capture.global_and_fixture_disabled():
                print("\n" + text, flush=True)
        entry = {k: v for k, v in account.__dict__.items() if k not in ("scenario",)}
        entry["differences"] = account.differences
        entry["seconds"] = round(seconds, 1)
        entry["balanced"] = not account.differences and passed_checks
        chaos_report[account.scenario] = entry
        assert not account.differences, account.render()

    yield record
