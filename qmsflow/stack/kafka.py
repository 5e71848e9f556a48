"""The local Kafka broker: a single KRaft node (broker and controller) run from Maven jars.

Layout, under `settings.stack_dir / "kafka"`:

    server.properties   rewritten on every start from the settings
    log4j2.properties   console logging, which lands in broker.log
    broker.log          the JVM's stdout and stderr
    broker.pid          the pid of the detached JVM
    data/               log.dirs; formatted once, its meta.properties holds the cluster id

The class path is cached in `settings.cache_dir / f"kafka-{version}/libs"`, shared by checkouts.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from qmsflow.errors import StackError
from qmsflow.settings import PROJECT_ROOT, Settings
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
    start_detached,
    tail,
    terminate,
)

#: the Maven project whose runtime dependencies are the broker's class path (single source
#: of the Kafka version)
POM = PROJECT_ROOT / "deploy" / "local" / "kafka" / "pom.xml"

#: a cold JVM formats nothing and starts in ~10 s; 90 s leaves room for a loaded CI machine
READY_TIMEOUT = 90.0

#: a broker flushes and closes its logs in a few seconds; past 30 s it is stuck, not slow
STOP_GRACE = 30.0

#: enough for the broker, a few test topics and the Faust changelogs of a dev machine
HEAP = "-Xmx768m"

#: last log lines shown when the broker does not come up: its stack trace fits in 30
LOG_TAIL_LINES = 30

# librdkafka logs every refused connection while the broker starts; those are expected here
_quiet = logging.getLogger("qmsflow.stack.kafka.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def kafka_version(pom: Path = POM) -> str:
    """Return the Kafka version pinned by the pom's `kafka.version` property."""
    try:
        root = ET.parse(pom).getroot()
    except (OSError, ET.ParseError) as exc:
        raise StackError(f"expected a readable Maven pom at {pom}: {exc}") from exc
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "kafka.version" and element.text:
            return element.text.strip()
    raise StackError(f"expected a <kafka.version> property in {pom}, found none")


def render_server_properties(port: int, data_dir: Path) -> str:
    """Render a one-node KRaft server.properties: broker on `port`, controller on `port + 1`."""
    controller_port = port + 1
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        # one broker: internal topics cannot have more replicas than that
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # tests start consumer groups often; waiting 3 s for more members only slows them
        "group.initial.rebalance.delay.ms": "0",
        # qmsflow declares and creates its topics; a typo must fail, not create a topic
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
    }
    body = "".join(f"{key}={value}\n" for key, value in lines.items())
    return "# written by `qmsflow stack up`; edits are overwritten on the next start\n" + body


LOG4J2_PROPERTIES = """\
# written by `qmsflow stack up`: console only; the launcher sends stdout to broker.log
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
# the request logger and the controller's per-record chatter drown the useful lines
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = WARN
"""


def readiness_error(bootstrap: str, waited: float, log: Path, log_tail: str) -> str:
    """Word the StackError for a broker that did not answer in time."""
    return (
        f"expected the local Kafka broker to answer on {bootstrap} within {waited:.0f} s, "
        f"but it did not; last {LOG_TAIL_LINES} lines of {log}:\n{log_tail}"
    )


class LocalKafka:
    """One KRaft broker for development and tests, started detached and left running."""

    def __init__(self, settings: Settings, pom: Path = POM) -> None:
        self.settings = settings
        self.pom = pom
        self.version = kafka_version(pom)
        self.home = settings.stack_dir / "kafka"
        self.data_dir = self.home / "data"
        self.server_properties = self.home / "server.properties"
        self.log4j_properties = self.home / "log4j2.properties"
        self.log = self.home / "broker.log"
        self.pid_file = self.home / "broker.pid"
        self.libs = settings.cache_dir / f"kafka-{self.version}" / "libs"
        self.libs_marker = self.libs.parent / "libs.complete"

    @property
    def bootstrap_servers(self) -> str:
        """Where the local broker listens."""
        return f"127.0.0.1:{self.settings.kafka_port}"

    def ensure_jars(self, progress: Echo = echo_stdout) -> Path:
        """Fetch the broker's class path with Maven once; returns the folder of jars.

        The marker file is written only after Maven succeeded, so an interrupted download is
        started over on the next call.
        """
        if self.libs_marker.exists() and any(self.libs.glob("*.jar")):
            return self.libs
        for tool in ("mvn", "java"):
            if shutil.which(tool) is None:
                raise StackError(
                    f"expected `{tool}` on PATH to fetch and run Kafka {self.version}; "
                    "install a JDK 17+ and Maven, or set KAFKA_BOOTSTRAP_SERVERS"
                )
        jars = fetch_classpath(self.pom, self.libs, f"Kafka {self.version} broker", progress)
        self.libs_marker.write_text(f"{jars} jars from {self.pom}\n")
        return self.libs

    def up(self, echo: Echo = echo_stdout) -> None:
        """Start the broker unless this stack's broker already answers; wait until it does."""
        with exclusive(self.settings.stack_dir / "kafka.lock"):
            self._up(echo)

    def _up(self, echo: Echo) -> None:
        pid = self._pid()
        if pid is not None:
            self._wait_ready(pid, echo)
            echo(f"Kafka {self.version} already running on {self.bootstrap_servers} (pid {pid})")
            return
        if self._port_open():
            answering = self._cluster_id(timeout=5.0)
            if answering is not None and answering == self._formatted_cluster_id():
                echo(f"Kafka {self.version} already running on {self.bootstrap_servers}")
                return
            raise StackError(
                f"expected port {self.settings.kafka_port} free for the local broker, but "
                f"{'a Kafka cluster ' + answering if answering else 'another process'} "
                "listens there; stop it, set QMSFLOW_KAFKA_PORT, or point "
                "KAFKA_BOOTSTRAP_SERVERS at it"
            )
        libs = self.ensure_jars(echo)
        self.home.mkdir(parents=True, exist_ok=True)
        self.server_properties.write_text(
            render_server_properties(self.settings.kafka_port, self.data_dir)
        )
        self.log4j_properties.write_text(LOG4J2_PROPERTIES)
        if self._formatted_cluster_id() is None:
            self._format(libs, echo)
        echo(f"Starting Kafka {self.version} on {self.bootstrap_servers} (log: {self.log}) …")
        log_offset = log_size(self.log)
        pid = start_detached(
            [
                "java",
                HEAP,
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.log4j_properties}",
                "-cp",
                f"{libs}/*",
                "kafka.Kafka",
                str(self.server_properties),
            ],
            cwd=self.home,
            log=self.log,
        )
        self.pid_file.write_text(f"{pid}\n")
        self._wait_ready(pid, echo, log_offset)

    def down(self, echo: Echo = echo_stdout) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after 30 s without a clean shutdown."""
        pid = self._pid()
        if pid is None:
            echo("Kafka is not running")
            self.pid_file.unlink(missing_ok=True)
            return
        echo(f"Stopping Kafka (pid {pid}) …")
        if not terminate(pid, STOP_GRACE):
            echo(f"  Kafka did not stop within {STOP_GRACE:.0f} s; killed")
        self.pid_file.unlink(missing_ok=True)
        echo("Kafka stopped")

    def status(self) -> dict[str, Any]:
        """Whether the broker runs and answers, with its pid, address and log."""
        pid = self._pid()
        cluster_id = self._cluster_id(timeout=3.0) if self._port_open() else None
        if cluster_id is not None:
            state = "running"
        elif pid is not None:
            state = "starting"
        else:
            state = "stopped"
        return {
            "state": state,
            "bootstrap_servers": self.bootstrap_servers,
            "version": self.version,
            "pid": pid,
            "cluster_id": cluster_id,
            "log": str(self.log),
        }

    def _format(self, libs: Path, echo: Echo) -> None:
        echo(f"Formatting Kafka storage in {self.data_dir} …")
        classpath = f"{libs}/*"
        cluster_id = self._run_java(classpath, "kafka.tools.StorageTool", "random-uuid").strip()
        self._run_java(
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.server_properties),
        )

    def _run_java(self, classpath: str, main: str, *args: str) -> str:
        command = [
            "java",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_properties}",
            "-cp",
            classpath,
            main,
            *args,
        ]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.home)
        if done.returncode != 0:
            raise StackError(
                f"expected `{main} {' '.join(args)}` to succeed, but it exited with code "
                f"{done.returncode}:\n{(done.stdout + done.stderr).strip()}"
            )
        # the last line is the tool's answer; log4j may print above it
        lines = done.stdout.strip().splitlines()
        return lines[-1] if lines else ""

    def _wait_ready(self, pid: int, echo: Echo, log_offset: int | None = None) -> None:
        """Poll until the broker answers; `log_offset` is where this start's log lines begin."""
        started_at = log_size(self.log) if log_offset is None else log_offset
        started = time.monotonic()
        last_report = started
        while True:
            if exited(pid):
                cause = first_error(log_since(self.log, started_at)) or "(no ERROR line)"
                raise StackError(
                    f"expected the local Kafka broker (pid {pid}) to keep running, but it "
                    f"exited: {cause}\nlast {LOG_TAIL_LINES} lines of {self.log}:\n"
                    + tail(self.log, LOG_TAIL_LINES)
                )
            if self._port_open() and self._cluster_id(timeout=2.0) is not None:
                if time.monotonic() - started > 1:
                    echo(f"  Kafka ready in {time.monotonic() - started:.0f} s")
                return
            now = time.monotonic()
            if now - started > READY_TIMEOUT:
                raise StackError(
                    readiness_error(
                        self.bootstrap_servers,
                        now - started,
                        self.log,
                        tail(self.log, LOG_TAIL_LINES),
                    )
                )
            if now - last_report >= 5:
                last_report = now
                echo(f"  … waiting for Kafka on {self.bootstrap_servers}, {now - started:.0f} s")
            time.sleep(0.5)

    def _pid(self) -> int | None:
        """Find this stack's running broker: from the pid file, else by scanning /proc."""
        pid = read_pid(self.pid_file)
        if pid is not None and self._is_ours(pid):
            return pid
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._is_ours(int(entry.name)):
                self.pid_file.write_text(f"{entry.name}\n")
                return int(entry.name)
        return None

    def _is_ours(self, pid: int) -> bool:
        if not is_alive(pid):
            return False
        line = command_line(pid)
        return "kafka.Kafka" in line and str(self.server_properties) in line

    def _formatted_cluster_id(self) -> str | None:
        meta = self.data_dir / "meta.properties"
        if not meta.exists():
            return None
        for line in meta.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "cluster.id":
                return value.strip()
        return None

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.settings.kafka_port), timeout=1):
                return True
        except OSError:
            return False

    def _cluster_id(self, timeout: float) -> str | None:
        """Ask for metadata; return the cluster id, or None when nothing answers."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, "logger": _quiet}
        admin = AdminClient(config)
        try:
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException:
            return None
        cluster_id: str | None = metadata.cluster_id
        return cluster_id


__all__ = [
    "LocalKafka",
    "first_error",
    "kafka_version",
    "readiness_error",
    "render_server_properties",
]
