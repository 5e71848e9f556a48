"""The local Kafka Connect worker: one distributed-mode worker with Debezium, run from Maven jars.

Skipped when `KAFKA_CONNECT_URL` is set (a shared or deployed Connect cluster; read here, as
`connect_url()`, since the settings object belongs to the application, not to the stack).

Layout, under `settings.stack_dir / "connect"`:

    worker.properties   rewritten on every start from the settings
    log4j2.properties   console logging, which lands in worker.log
    worker.log          the JVM's stdout and stderr
    worker.pid          the pid of the detached JVM

The worker keeps its state in Kafka, in the topics `qmsflow-connect-{configs,offsets,status}`
(group `qmsflow-connect`), so registered connectors survive a restart. A test that stops and
kills a worker starts one of its own (`LocalConnect(..., port=, home=, group_id=,
storage_topic_prefix=)`): its own REST port, folder, group and state topics, so the shared
worker on 18083, which other environments use, is never touched. Debezium is on the
worker's class path; connector configs read environment-specific values with
`${env:CDC_…}` through the EnvVarConfigProvider, and the launcher sets those variables for the
local demo database `erp`. The class path is cached in
`settings.cache_dir / f"connect-{version}/libs"`, shared by checkouts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from qmsflow.errors import StackError
from qmsflow.settings import PROJECT_ROOT, Settings
from qmsflow.stack.postgres import CDC_PASSWORD, CDC_ROLE, ERP_DATABASE
from qmsflow.stack.process import (
    Echo,
    command_line,
    echo_stdout,
    exclusive,
    exited,
    fetch_classpath,
    first_error,
    is_alive,
    log_since,
    log_size,
    read_pid,
    reap,
    start_detached,
    tail,
    terminate,
)

#: the Maven project whose runtime dependencies are the worker's class path (single source of
#: the Kafka and Debezium versions)
POM = PROJECT_ROOT / "deploy" / "local" / "connect" / "pom.xml"

#: the environment variable naming an existing Connect REST endpoint (`http://connect:8083`);
#: when set, the stack starts no worker and connectors are registered there
CONNECT_URL_ENV = "KAFKA_CONNECT_URL"

#: the local worker's REST port: 8083 is Connect's default, shifted like 19092 and 54329 so a
#: developer's own Connect keeps its port
CONNECT_PORT = 18083  # the default of QMSFLOW_CONNECT_PORT

#: names of the worker's group and storage topics; the topics are created by the worker
GROUP_ID = "qmsflow-connect"
STORAGE_TOPIC_PREFIX = "qmsflow-connect-"

#: the class whose presence in /connector-plugins means Debezium loaded
DEBEZIUM_POSTGRES = "io.debezium.connector.postgresql.PostgresConnector"

#: a cold worker creates its topics, joins its group and loads ~70 jars in 10-20 s
READY_TIMEOUT = 120.0

#: a worker stops its tasks (committing their offsets) in a few seconds; 30 s means stuck
STOP_GRACE = 30.0

#: one worker with one Debezium task and a snapshot of a small database fits well within this
HEAP = "-Xmx768m"

#: last log lines shown when the worker does not come up
LOG_TAIL_LINES = 30


def connect_url(settings: Settings) -> str | None:
    """The external Connect REST URL from KAFKA_CONNECT_URL, or None for the local worker."""
    url = (settings.kafka_connect_url or "").strip()
    return url.rstrip("/") or None


def connect_version(pom: Path = POM) -> str:
    """Return the Kafka version pinned by the pom's `kafka.version` property."""
    try:
        root = ET.parse(pom).getroot()
    except (OSError, ET.ParseError) as exc:
        raise StackError(f"expected a readable Maven pom at {pom}: {exc}") from exc
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "kafka.version" and element.text:
            return element.text.strip()
    raise StackError(f"expected a <kafka.version> property in {pom}, found none")


def render_worker_properties(
    bootstrap_servers: str,
    port: int,
    group_id: str = GROUP_ID,
    storage_topic_prefix: str = STORAGE_TOPIC_PREFIX,
) -> str:
    """Render a distributed worker's properties: REST on 127.0.0.1:`port`, state in Kafka."""
    lines = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "config.storage.topic": f"{storage_topic_prefix}configs",
        "offset.storage.topic": f"{storage_topic_prefix}offsets",
        "status.storage.topic": f"{storage_topic_prefix}status",
        # one broker: the storage topics cannot have more replicas than that
        "config.storage.replication.factor": "1",
        "offset.storage.replication.factor": "1",
        "status.storage.replication.factor": "1",
        # the defaults (25 and 5) size a shared production cluster, not one dev worker
        "offset.storage.partitions": "1",
        "status.storage.partitions": "1",
        # CDC payloads are plain JSON: the envelope (before/after/op/source/ts_ms) is the value
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "false",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter.schemas.enable": "false",
        "listeners": f"http://127.0.0.1:{port}",
        "rest.advertised.host.name": "127.0.0.1",
        "rest.advertised.port": str(port),
        # every jar on the class path ships ServiceLoader manifests; skipping the reflective
        # scan of ~70 jars saves seconds on each start
        "plugin.discovery": "service_load",
        # connector configs name `${env:CDC_…}`; only those variables are readable, so a
        # connector cannot read the worker's other environment
        "config.providers": "env",
        "config.providers.env.class": (
            "org.apache.kafka.common.config.provider.EnvVarConfigProvider"
        ),
        "config.providers.env.param.allowlist.pattern": "^CDC_.*",
        # a dev loop wants a restarted connector to resume close to where it stopped
        "offset.flush.interval.ms": "5000",
    }
    body = "".join(f"{key}={value}\n" for key, value in lines.items())
    return "# written by `qmsflow stack up`; edits are overwritten on the next start\n" + body


def worker_environment(settings: Settings) -> dict[str, str]:
    """The `CDC_*` variables the local worker resolves connector placeholders from.

    The source database lives beside the sink's (the demo `erp` database on the same server),
    so host and port come from `settings.dsn`: `DATABASE_URL` when set, else the local stack.
    """
    server = conninfo_to_dict(settings.dsn)
    return {
        "CDC_ERP_DATABASE_HOSTNAME": str(server.get("host") or "127.0.0.1"),
        "CDC_ERP_DATABASE_PORT": str(server.get("port") or 5432),
        "CDC_ERP_DATABASE_USER": CDC_ROLE,
        "CDC_ERP_DATABASE_PASSWORD": CDC_PASSWORD,
        "CDC_ERP_DATABASE_DBNAME": ERP_DATABASE,
    }


def lists_debezium(plugins: Any) -> bool:
    """Whether a `/connector-plugins` answer includes Debezium's Postgres connector."""
    return isinstance(plugins, list) and any(
        isinstance(plugin, dict) and plugin.get("class") == DEBEZIUM_POSTGRES for plugin in plugins
    )


LOG4J2_PROPERTIES = """\
# written by `qmsflow stack up`: console only; the launcher sends stdout to worker.log
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %X{connector.context}%m (%c)%n
# client configs are logged in full at every (re)start of a task; they bury the useful lines
logger.clientconfig.name = org.apache.kafka.clients
logger.clientconfig.level = WARN
logger.reflections.name = org.reflections
logger.reflections.level = ERROR
"""


def _get_json(url: str, timeout: float) -> Any:
    """GET a JSON document; None when nothing answers or the answer is not JSON."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


class LocalConnect:
    """One Kafka Connect worker with Debezium for development and tests, left running.

    The defaults are the stack's shared worker. Another `home` (its folder: properties, log,
    pid), `port`, `group_id` and `storage_topic_prefix` make an independent worker beside it;
    two workers sharing any of them would join one Connect cluster or fight over one port.
    """

    def __init__(
        self,
        settings: Settings,
        pom: Path = POM,
        port: int | None = None,
        *,
        home: Path | None = None,
        group_id: str = GROUP_ID,
        storage_topic_prefix: str = STORAGE_TOPIC_PREFIX,
    ) -> None:
        self.settings = settings
        self.pom = pom
        self.port = settings.connect_port if port is None else port
        self.group_id = group_id
        self.storage_topic_prefix = storage_topic_prefix
        self.version = connect_version(pom)
        self.home = settings.stack_dir / "connect" if home is None else home
        # beside the folder (`.stack/connect.lock` for the shared worker), so `up` can create it
        self.lock_file = self.home.parent / f"{self.home.name}.lock"
        self.worker_properties = self.home / "worker.properties"
        self.log4j_properties = self.home / "log4j2.properties"
        self.log = self.home / "worker.log"
        self.pid_file = self.home / "worker.pid"
        self.libs = settings.cache_dir / f"connect-{self.version}" / "libs"
        self.libs_marker = self.libs.parent / "libs.complete"

    @property
    def url(self) -> str:
        """The local worker's REST endpoint."""
        return f"http://127.0.0.1:{self.port}"

    def ensure_jars(self, progress: Echo = echo_stdout) -> Path:
        """Fetch the worker's class path with Maven once; returns the folder of jars.

        The marker file is written only after Maven succeeded, so an interrupted download is
        started over on the next call.
        """
        if self.libs_marker.exists() and any(self.libs.glob("*.jar")):
            return self.libs
        for tool in ("mvn", "java"):
            if shutil.which(tool) is None:
                raise StackError(
                    f"expected `{tool}` on PATH to fetch and run Kafka Connect {self.version}; "
                    f"install a JDK 17+ and Maven, or set {CONNECT_URL_ENV}"
                )
        jars = fetch_classpath(
            self.pom, self.libs, f"Kafka Connect {self.version} and Debezium", progress
        )
        self.libs_marker.write_text(f"{jars} jars from {self.pom}\n")
        return self.libs

    def up(self, echo: Echo = echo_stdout) -> None:
        """Start the worker unless this stack's worker already answers; wait until it is ready.

        Needs the broker running (the worker's state lives in Kafka); raises StackError when
        the worker exits or is not ready within READY_TIMEOUT.
        """
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(self.lock_file):
            self._up(echo)

    def _up(self, echo: Echo) -> None:
        pid = self._pid()
        if pid is not None:
            self._wait_ready(pid, echo)
            echo(f"Kafka Connect {self.version} already running on {self.url} (pid {pid})")
            return
        if self._port_open():
            if lists_debezium(_get_json(f"{self.url}/connector-plugins", timeout=5.0)):
                echo(f"Kafka Connect already running on {self.url}")
                return
            raise StackError(
                f"expected port {self.port} free for the local Connect worker, but another "
                f"process listens there; stop it or point {CONNECT_URL_ENV} at it"
            )
        libs = self.ensure_jars(echo)
        self.home.mkdir(parents=True, exist_ok=True)
        self.worker_properties.write_text(
            render_worker_properties(
                self.settings.bootstrap_servers,
                self.port,
                self.group_id,
                self.storage_topic_prefix,
            )
        )
        self.log4j_properties.write_text(LOG4J2_PROPERTIES)
        echo(f"Starting Kafka Connect {self.version} on {self.url} (log: {self.log}) …")
        log_offset = log_size(self.log)
        pid = start_detached(
            [
                "java",
                HEAP,
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.log4j_properties}",
                "-cp",
                f"{libs}/*",
                "org.apache.kafka.connect.cli.ConnectDistributed",
                str(self.worker_properties),
            ],
            cwd=self.home,
            log=self.log,
            env={**os.environ, **worker_environment(self.settings)},
        )
        self.pid_file.write_text(f"{pid}\n")
        self._wait_ready(pid, echo, log_offset)

    def down(self, echo: Echo = echo_stdout) -> bool:
        """Stop the worker: SIGTERM, then SIGKILL after 30 s; connectors stay registered.

        Returns True when the worker stopped by itself (its tasks committed their offsets),
        False when it had to be killed or was not running.
        """
        pid = self._pid()
        if pid is None:
            echo("Kafka Connect is not running")
            self.pid_file.unlink(missing_ok=True)
            return False
        echo(f"Stopping Kafka Connect (pid {pid}) …")
        clean = terminate(pid, STOP_GRACE)
        if not clean:
            echo(f"  Kafka Connect did not stop within {STOP_GRACE:.0f} s; killed")
        reap(pid, STOP_GRACE)
        self.pid_file.unlink(missing_ok=True)
        echo("Kafka Connect stopped")
        return clean

    def kill(self) -> int | None:
        """SIGKILL the worker, as a crashed pod: no task stops, no offset commit.

        Returns the killed pid (None when none ran) once the process is gone.
        """
        pid = self._pid()
        if pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):  # it died by itself meanwhile
            os.killpg(pid, signal.SIGKILL)  # the JVM leads its own session (start_new_session)
        reap(pid, STOP_GRACE)
        deadline = time.monotonic() + STOP_GRACE
        while is_alive(pid):
            if time.monotonic() > deadline:
                raise StackError(f"expected pid {pid} gone after SIGKILL, still alive")
            time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return pid

    def running_pid(self) -> int | None:
        """The pid of this worker's JVM, None when it does not run."""
        return self._pid()

    def status(self) -> dict[str, Any]:
        """Whether the worker runs and lists Debezium, with its pid, URL, connectors and log."""
        pid = self._pid()
        ready = self._port_open() and self._ready(timeout=3.0)
        connectors = _get_json(f"{self.url}/connectors", timeout=3.0) if ready else None
        if ready:
            state = "running"
        elif pid is not None:
            state = "starting"
        else:
            state = "stopped"
        return {
            "state": state,
            "url": self.url,
            "version": self.version,
            "pid": pid,
            "connectors": connectors,
            "log": str(self.log),
        }

    def _ready(self, timeout: float) -> bool:
        """REST answers `/` and lists Debezium's Postgres connector among its plugins."""
        root = _get_json(f"{self.url}/", timeout=timeout)
        if not isinstance(root, dict) or "version" not in root:
            return False
        return lists_debezium(_get_json(f"{self.url}/connector-plugins", timeout=timeout))

    def _wait_ready(self, pid: int, echo: Echo, log_offset: int | None = None) -> None:
        """Poll until the worker is ready; `log_offset` is where this start's log lines begin."""
        started_at = log_size(self.log) if log_offset is None else log_offset
        started = time.monotonic()
        last_report = started
        while True:
            if exited(pid):
                cause = first_error(log_since(self.log, started_at)) or "(no ERROR line)"
                raise StackError(
                    f"expected the local Connect worker (pid {pid}) to keep running, but it "
                    f"exited: {cause}\nlast {LOG_TAIL_LINES} lines of {self.log}:\n"
                    + tail(self.log, LOG_TAIL_LINES)
                )
            if self._port_open() and self._ready(timeout=2.0):
                if time.monotonic() - started > 1:
                    echo(f"  Kafka Connect ready in {time.monotonic() - started:.0f} s")
                return
            now = time.monotonic()
            if now - started > READY_TIMEOUT:
                raise StackError(
                    f"expected the local Connect worker to answer on {self.url} and list "
                    f"{DEBEZIUM_POSTGRES} within {now - started:.0f} s, but it did not; last "
                    f"{LOG_TAIL_LINES} lines of {self.log}:\n" + tail(self.log, LOG_TAIL_LINES)
                )
            if now - last_report >= 5:
                last_report = now
                echo(f"  … waiting for Kafka Connect on {self.url}, {now - started:.0f} s")
            time.sleep(0.5)

    def _pid(self) -> int | None:
        """Find this stack's running worker: from the pid file, else by scanning /proc."""
        pid = read_pid(self.pid_file)
        if pid is not None and self._is_ours(pid):
            return pid
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._is_ours(int(entry.name)):
                self.home.mkdir(parents=True, exist_ok=True)
                self.pid_file.write_text(f"{entry.name}\n")
                return int(entry.name)
        return None

    def _is_ours(self, pid: int) -> bool:
        if not is_alive(pid):
            return False
        line = command_line(pid)
        return "ConnectDistributed" in line and str(self.worker_properties) in line

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False


__all__ = [
    "CONNECT_PORT",
    "CONNECT_URL_ENV",
    "LocalConnect",
    "connect_url",
    "connect_version",
    "lists_debezium",
    "render_worker_properties",
    "worker_environment",
]
