"""The local Postgres server: one cluster in the stack folder, run with the OS's server binaries.

Layout, under `settings.stack_dir / "postgres"` (owned by the `postgres` OS user when we are
root, because the server refuses to run as root):

    data/               the cluster; initdb'd once, `qmsflow.conf` rewritten on every start
    run/                the unix socket (kept out of /var/run, which may not exist or be ours)
    server.log          the server's log

Authentication is `trust` on loopback only: a development stack, not a deployment.

The server runs with `wal_level = logical` for Debezium, and holds a second database, `erp`:
the demo source of CDC, one schema per plant system (erp, plm, mes, cmms, qms, hr, lms, portal;
`connectors/debezium/erp_schema.sql`, seeded from `erp_seed.sql`, published as `qmsflow_cdc`),
read by the replication role `qmsflow_cdc`. The database is disposable: when its layout stamp
(the schema file's hash) differs from the file's, it is dropped, with its replication slots,
and recreated.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from qmsflow.errors import StackError
from qmsflow.settings import PROJECT_ROOT, Settings
from qmsflow.stack.process import Echo, echo_stdout, exclusive, tail

#: where Debian and Ubuntu install server binaries, one folder per major version
DEBIAN_ROOT = Path("/usr/lib/postgresql")

#: the OS user the server runs as when we are root
OS_USER = "postgres"

#: the application's role and database, as in `Settings.dsn`
APP_ROLE = "qmsflow"
APP_DATABASE = "qmsflow"

#: the demo CDC source database (owned by APP_ROLE) and the role Debezium connects as; the
#: password only matters where pg_hba asks for one (the local stack trusts loopback)
ERP_DATABASE = "erp"
CDC_ROLE = "qmsflow_cdc"
CDC_PASSWORD = "qmsflow_cdc"

#: the demo source's schema and seed rows, both idempotent, applied on every `up`
ERP_SQL = PROJECT_ROOT / "connectors" / "debezium"
ERP_SCHEMA = ERP_SQL / "erp_schema.sql"
ERP_SEED = ERP_SQL / "erp_seed.sql"

#: a dropped demo database's slots are released by their walsenders within seconds
SLOT_RELEASE_TIMEOUT = 30.0

#: the server settings qmsflow.conf carries (`port` and the listeners come from the settings)
REPLICATION_SETTINGS = {
    # Debezium decodes the WAL with pgoutput, which needs logical decoding
    "wal_level": "logical",
    # one slot per connector and per CDC integration test (dropped at teardown); 20 leaves
    # room for a few leaked by interrupted test runs
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    # a leaked, inactive slot would otherwise keep every WAL segment from its LSN on forever
    "max_slot_wal_keep_size": "'1GB'",
}

#: the programs a server folder must hold to be usable
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")

#: recovery after an unclean stop replays WAL; a minute is plenty for a dev cluster
START_TIMEOUT = 60

#: last log lines shown when the server does not come up
LOG_TAIL_LINES = 30


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    """(15,) for /usr/lib/postgresql/15/bin, (9, 6) for 9.6; (-1,) when not a version."""
    name = bin_dir.parent.name
    if not re.fullmatch(r"\d+(\.\d+)*", name):
        return (-1,)
    return tuple(int(part) for part in name.split("."))


def order_bin_dirs(
    versioned: Iterable[Path], pinned: str | None, on_path: Path | None
) -> list[Path]:
    """Candidate server folders, best first.

    1. the folder of the major version the data folder was initialised with (`PG_VERSION`),
       since a cluster only runs on its own major version;
    2. the other versioned folders, newest first;
    3. the folder of a `pg_ctl` on PATH (non-Debian systems install there).
    """
    ordered = sorted(set(versioned), key=_version_key, reverse=True)
    if pinned is not None:
        ordered.sort(key=lambda folder: folder.parent.name != pinned)
    if on_path is not None and on_path not in ordered:
        ordered.append(on_path)
    return ordered


def find_bin_dir(
    pinned: str | None,
    root: Path = DEBIAN_ROOT,
    which: Callable[[str], str | None] = shutil.which,
) -> Path | None:
    """Return the first candidate folder holding initdb, pg_ctl and postgres, or None."""
    versioned = list(root.glob("*/bin")) if root.is_dir() else []
    pg_ctl = which("pg_ctl")
    on_path = Path(pg_ctl).resolve().parent if pg_ctl else None
    for folder in order_bin_dirs(versioned, pinned, on_path):
        if all(os.access(folder / program, os.X_OK) for program in SERVER_PROGRAMS):
            return folder
    return None


class LocalPostgres:
    """One Postgres cluster for development and tests, started detached and left running."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.stack_dir / "postgres"
        self.data_dir = self.home / "data"
        self.socket_dir = self.home / "run"
        self.log = self.home / "server.log"

    @property
    def external(self) -> bool:
        """Whether DATABASE_URL points elsewhere, so no local server is wanted."""
        return self.settings.database_url is not None

    def ensure_binaries(self, echo: Echo = echo_stdout) -> Path:
        """Return the server binaries' folder; install Debian's `postgresql` package when absent."""
        found = find_bin_dir(self._pinned_version())
        if found is not None:
            return found
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise StackError(
                "expected Postgres server binaries (initdb, pg_ctl, postgres) under "
                f"{DEBIAN_ROOT}/*/bin or on PATH, found none; install the Postgres server "
                "or set DATABASE_URL"
            )
        echo("Installing Postgres server binaries (apt-get install postgresql) …")
        started = time.monotonic()
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
        ):
            done = subprocess.run(command, capture_output=True, text=True, env=environment)
            if done.returncode != 0:
                output = "\n".join((done.stdout + done.stderr).splitlines()[-LOG_TAIL_LINES:])
                raise StackError(
                    f"expected `{' '.join(command)}` to succeed, but it exited with code "
                    f"{done.returncode}:\n{output}"
                )
            echo(f"  {' '.join(command[:2])} done, {time.monotonic() - started:.0f} s")
        found = find_bin_dir(self._pinned_version())
        if found is None:
            raise StackError(
                f"expected server binaries under {DEBIAN_ROOT}/*/bin after installing "
                "postgresql, found none"
            )
        return found

    def up(self, echo: Echo = echo_stdout) -> None:
        """Initialise once, start unless running, and create the qmsflow role and database."""
        if self.external:
            echo("Postgres: DATABASE_URL is set; not starting a local server")
            return
        with exclusive(self.settings.stack_dir / "postgres.lock"):
            self._up(echo)

    def _up(self, echo: Echo) -> None:
        bin_dir = self.ensure_binaries(echo)
        self._prepare_folders()
        if not (self.data_dir / "PG_VERSION").exists():
            echo(f"Initialising Postgres cluster in {self.data_dir} …")
            self._run_as_server(
                bin_dir / "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            )
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.write("\n# qmsflow stack settings, rewritten on every start\n")
                conf.write("include_if_exists = 'qmsflow.conf'\n")
        self._write_conf()
        if self._running(bin_dir):
            echo(f"Postgres already running on 127.0.0.1:{self.settings.postgres_port}")
            self._restart_for_replication(bin_dir, echo)
        else:
            echo(
                f"Starting Postgres on 127.0.0.1:{self.settings.postgres_port} (log: {self.log}) …"
            )
            started = time.monotonic()
            done = self._run_as_server(
                bin_dir / "pg_ctl",
                "start",
                "-w",
                "-t",
                str(START_TIMEOUT),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log),
                check=False,
            )
            if done.returncode != 0:
                raise StackError(
                    f"expected Postgres to start on 127.0.0.1:{self.settings.postgres_port} "
                    f"within {START_TIMEOUT} s, but pg_ctl exited with code "
                    f"{done.returncode}; last {LOG_TAIL_LINES} lines of {self.log}:\n"
                    + tail(self.log, LOG_TAIL_LINES)
                )
            echo(f"  Postgres ready in {time.monotonic() - started:.0f} s")
        self._ensure_database(echo)

    def down(self, echo: Echo = echo_stdout) -> None:
        """Stop the server with a fast shutdown (active sessions are rolled back)."""
        if self.external:
            echo("Postgres: DATABASE_URL is set; no local server to stop")
            return
        bin_dir = find_bin_dir(self._pinned_version())
        if bin_dir is None or not self._running(bin_dir):
            echo("Postgres is not running")
            return
        echo("Stopping Postgres …")
        self._run_as_server(
            bin_dir / "pg_ctl", "stop", "-m", "fast", "-w", "-D", str(self.data_dir)
        )
        echo("Postgres stopped")

    def status(self) -> dict[str, Any]:
        """Whether the server runs, with its address, data folder and log."""
        bin_dir = find_bin_dir(self._pinned_version())
        if bin_dir is None:
            state = "not-installed"
        elif not (self.data_dir / "PG_VERSION").exists():
            state = "not-initialised"
        else:
            state = "running" if self._running(bin_dir) else "stopped"
        return {
            "state": state,
            "dsn": self.settings.dsn,
            "data_dir": str(self.data_dir),
            "binaries": str(bin_dir) if bin_dir else None,
            "log": str(self.log),
        }

    def _pinned_version(self) -> str | None:
        try:
            return (self.data_dir / "PG_VERSION").read_text().strip()
        except OSError:
            return None

    def _prepare_folders(self) -> None:
        """Create the folders and let the server's OS user into them."""
        stack_dir = self.settings.stack_dir
        stack_dir.mkdir(parents=True, exist_ok=True)
        # the server user must traverse the stack folder; it need not list or write it
        stack_dir.chmod(stack_dir.stat().st_mode | 0o011)
        for folder in (self.home, self.socket_dir):
            folder.mkdir(exist_ok=True)
            folder.chmod(0o755)
            self._give_to_server(folder)
        if os.geteuid() == 0:
            done = subprocess.run(
                ["runuser", "-u", OS_USER, "--", "test", "-w", str(self.home)],
                capture_output=True,
            )
            if done.returncode != 0:
                raise StackError(
                    f"expected the `{OS_USER}` OS user to reach and write {self.home}, but a "
                    "parent folder does not let it through; give the parents o+x "
                    "or set QMSFLOW_STACK_DIR elsewhere"
                )

    def _write_conf(self) -> None:
        conf = self.data_dir / "qmsflow.conf"
        conf.write_text(
            "# written by `qmsflow stack up` from the settings; edits are overwritten\n"
            f"port = {self.settings.postgres_port}\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            + "".join(f"{key} = {value}\n" for key, value in REPLICATION_SETTINGS.items())
        )
        conf.chmod(0o600)
        self._give_to_server(conf)

    def _restart_for_replication(self, bin_dir: Path, echo: Echo) -> None:
        """Restart a running server once when its wal_level is not the configured one.

        wal_level is read only at server start; a cluster started before logical replication
        was configured (or by an older qmsflow) needs one restart, later `up`s none.
        """
        import psycopg

        wanted = REPLICATION_SETTINGS["wal_level"]
        try:
            with psycopg.connect(self._superuser_conninfo(), connect_timeout=10) as connection:
                row = connection.execute("show wal_level").fetchone()
        except psycopg.Error as exc:
            raise StackError(
                f"expected to read wal_level from Postgres on 127.0.0.1:"
                f"{self.settings.postgres_port} as postgres, but: {exc}"
            ) from exc
        running = row[0] if row else None
        if running == wanted:
            return
        echo(f"  restarting Postgres: wal_level is {running}, logical decoding needs {wanted} …")
        started = time.monotonic()
        self._run_as_server(
            bin_dir / "pg_ctl",
            "restart",
            "-m",
            "fast",
            "-w",
            "-t",
            str(START_TIMEOUT),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log),
        )
        echo(f"  Postgres restarted in {time.monotonic() - started:.0f} s")

    def _superuser_conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.settings.postgres_port} user=postgres dbname={dbname}"

    def _give_to_server(self, path: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(OS_USER)
            os.chown(path, user.pw_uid, user.pw_gid)

    def _running(self, bin_dir: Path) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        done = self._run_as_server(
            bin_dir / "pg_ctl", "status", "-D", str(self.data_dir), check=False
        )
        return done.returncode == 0

    def _run_as_server(
        self, *command: str | Path, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a server program as the `postgres` OS user when we are root, else as ourselves."""
        argv = [str(part) for part in command]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", OS_USER, "--", *argv]
        done = subprocess.run(
            argv, capture_output=True, text=True, cwd=self.home, stdin=subprocess.DEVNULL
        )
        if check and done.returncode != 0:
            raise StackError(
                f"expected `{' '.join(argv)}` to succeed, but it exited with code "
                f"{done.returncode}:\n{(done.stdout + done.stderr).strip()}"
            )
        return done

    def _ensure_database(self, echo: Echo) -> None:
        """Create the qmsflow role and database when missing; both steps are idempotent."""
        import psycopg
        from psycopg import sql

        conninfo = self._superuser_conninfo()
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as connection:
                role = connection.execute(
                    "select 1 from pg_roles where rolname = %s", (APP_ROLE,)
                ).fetchone()
                if role is None:
                    connection.execute(
                        sql.SQL("create role {} login createrole").format(sql.Identifier(APP_ROLE))
                    )
                    echo(f"  created role {APP_ROLE}")
                database = connection.execute(
                    "select 1 from pg_database where datname = %s", (APP_DATABASE,)
                ).fetchone()
                if database is None:
                    connection.execute(
                        sql.SQL("create database {} owner {} encoding 'UTF8'").format(
                            sql.Identifier(APP_DATABASE), sql.Identifier(APP_ROLE)
                        )
                    )
                    echo(f"  created database {APP_DATABASE}")
                self._ensure_cdc_source(connection, echo)
        except psycopg.Error as exc:
            raise StackError(
                f"expected to reach Postgres as postgres at 127.0.0.1:"
                f"{self.settings.postgres_port} to create {APP_ROLE}, but: {exc}"
            ) from exc

    def _ensure_cdc_source(self, connection: Any, echo: Echo) -> None:
        """Create the replication role and the `erp` database; apply its schema and seed rows.

        1. the role `qmsflow_cdc` (REPLICATION LOGIN) exists with its password;
        2. a database whose layout stamp differs from `erp_layout()` (an older layout, or none)
           is dropped, after its replication slots: it is a disposable demo source, and a
           connector still streaming from it fails and must be registered again;
        3. the database exists, owned by APP_ROLE; the schema runs as that owner (so tables and
           publication are its) and is idempotent; the seed only fills an empty erp.supplier;
        4. the database is stamped with the layout, last, so a failed run retries from 2.
        """
        import psycopg
        from psycopg import sql

        if connection.execute("select 1 from pg_roles where rolname = %s", (CDC_ROLE,)).fetchone():
            connection.execute(
                sql.SQL("alter role {} with login replication password {}").format(
                    sql.Identifier(CDC_ROLE), sql.Literal(CDC_PASSWORD)
                )
            )
        else:
            connection.execute(
                sql.SQL("create role {} with login replication password {}").format(
                    sql.Identifier(CDC_ROLE), sql.Literal(CDC_PASSWORD)
                )
            )
            echo(f"  created replication role {CDC_ROLE}")
        layout = erp_layout()
        row = connection.execute(
            "select shobj_description(oid, 'pg_database') from pg_database where datname = %s",
            (ERP_DATABASE,),
        ).fetchone()
        if row is not None and row[0] != layout:
            echo(
                f"  database {ERP_DATABASE} has layout {row[0]!r}, the schema file "
                f"{layout!r}: dropping and recreating it (a disposable demo source)"
            )
            self._drop_cdc_source(connection)
            row = None
        if row is None:
            connection.execute(
                sql.SQL("create database {} owner {} encoding 'UTF8'").format(
                    sql.Identifier(ERP_DATABASE), sql.Identifier(APP_ROLE)
                )
            )
            echo(f"  created database {ERP_DATABASE} (the demo CDC source)")
        owner = (
            f"host=127.0.0.1 port={self.settings.postgres_port} user={APP_ROLE} "
            f"dbname={ERP_DATABASE}"
        )
        with psycopg.connect(owner, connect_timeout=10) as erp:
            erp.execute(ERP_SCHEMA.read_text(encoding="utf-8"))
            seeded = erp.execute("select exists (select 1 from erp.supplier)").fetchone()
            if seeded is not None and not seeded[0]:
                erp.execute(ERP_SEED.read_text(encoding="utf-8"))
                echo(f"  seeded database {ERP_DATABASE} with the demo plant's source systems")
        connection.execute(
            sql.SQL("comment on database {} is {}").format(
                sql.Identifier(ERP_DATABASE), sql.Literal(layout)
            )
        )

    def _drop_cdc_source(self, connection: Any) -> None:
        """Drop the demo source database, and first its replication slots (ending their walsenders).

        DROP DATABASE refuses while a logical slot of the database exists, even an inactive one.
        """
        from psycopg import sql

        deadline = time.monotonic() + SLOT_RELEASE_TIMEOUT
        while True:
            slots = connection.execute(
                "select slot_name, active_pid from pg_replication_slots where database = %s",
                (ERP_DATABASE,),
            ).fetchall()
            if not slots:
                break
            for slot, pid in slots:
                if pid is not None:
                    connection.execute("select pg_terminate_backend(%s)", (pid,))
                else:
                    connection.execute(
                        "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                        "where slot_name = %s and active_pid is null",
                        (slot,),
                    )
            if time.monotonic() > deadline:
                raise StackError(
                    f"expected the replication slots of database {ERP_DATABASE} to be released "
                    f"within {SLOT_RELEASE_TIMEOUT:.0f} s to drop it, but "
                    f"{[s for s, _ in slots]} are still held; delete the connectors using them"
                )
            time.sleep(0.2)
        connection.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(ERP_DATABASE))
        )


def erp_layout(schema: Path = ERP_SCHEMA) -> str:
    """The layout stamp of the demo source database: a hash of its schema file.

    Any edit of the file changes it, so the next `stack up` rebuilds the database from it.
    """
    digest = hashlib.sha256(schema.read_bytes()).hexdigest()[:16]
    return f"qmsflow demo CDC source, layout {digest}"


__all__ = ["LocalPostgres", "erp_layout", "find_bin_dir", "order_bin_dirs"]
