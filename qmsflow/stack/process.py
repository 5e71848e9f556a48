"""The detached server processes of the local stack: pid files, liveness and log tails."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from qmsflow.errors import StackError

#: where the stack reports progress: one human-readable line per call (`print`, `click.echo`)
Echo = Callable[[str], None]


def echo_stdout(line: str) -> None:
    """Print a progress line at once, so a long wait shows up while it happens."""
    print(line, flush=True)


def tail(path: Path, lines: int = 30) -> str:
    """Return the last `lines` lines of a log file, or a note that it does not exist yet."""
    if not path.exists():
        return f"(no log at {path})"
    with path.open(encoding="utf-8", errors="replace") as log:
        return "".join(deque(log, maxlen=lines)).rstrip()


def read_pid(pid_file: Path) -> int | None:
    """Return the pid recorded in `pid_file` if that process still runs, else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_alive(pid) else None


def is_alive(pid: int) -> bool:
    """Whether a process with this pid exists and has not been reaped as a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


# servers started by this process: a dropped Popen of a running child warns (ResourceWarning,
# an error under pytest's filters), and the servers are meant to outlive this process
_DETACHED: list[subprocess.Popen[bytes]] = []


def start_detached(
    command: list[str], *, cwd: Path, log: Path, env: dict[str, str] | None = None
) -> int:
    """Start a server in its own session, appending its output to `log`; return its pid."""
    with log.open("ab") as out:
        server = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _DETACHED.append(server)
    return server.pid


def exited(pid: int) -> bool:
    """Whether a server being waited for has exited (its exit status, if started here).

    Not a command-line match: Popen returns once the child's execve has closed its
    close-on-exec pipe, which the kernel does before it sets up the new argv, so
    /proc/<pid>/cmdline can still be empty; under load that made a starting server look dead
    while its JVM went on to start, without an owner.
    """
    for server in _DETACHED:
        if server.pid == pid:
            return server.poll() is not None
    return not is_alive(pid)


def reap(pid: int, timeout: float) -> None:
    """Wait for a server this process started, so it leaves no zombie."""
    for server in list(_DETACHED):
        if server.pid == pid:
            try:
                server.wait(timeout)
            except subprocess.TimeoutExpired:
                return
            _DETACHED.remove(server)


def log_size(log: Path) -> int:
    """The log's size now: where the lines of a start about to happen begin."""
    try:
        return log.stat().st_size
    except OSError:
        return 0


def log_since(log: Path, offset: int) -> str:
    """The log written after `offset` (one start's lines, not older runs')."""
    try:
        with log.open("rb") as text:
            text.seek(offset)
            return text.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def first_error(log_text: str) -> str | None:
    """The first ERROR or FATAL line of a JVM server's log: the cause, above its stack trace."""
    for line in log_text.splitlines():
        if " ERROR " in line or " FATAL " in line:
            return line.strip()
    return None


def command_line(pid: int) -> str:
    """Return the command line of a running process, space-separated ('' when unreadable)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def terminate(pid: int, grace: float) -> bool:
    """SIGTERM the process group led by `pid`, SIGKILL it after `grace` seconds.

    Returns True when the process exited within the grace period (a clean shutdown).
    """
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not is_alive(pid):
            return True
        time.sleep(0.2)
    _signal_group(pid, signal.SIGKILL)
    for _ in range(50):
        _reap(pid)
        if not is_alive(pid):
            break
        time.sleep(0.1)
    return False


def _signal_group(pid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, signum)


def _reap(pid: int) -> None:
    # a server started by this very process stays a zombie until waited for
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file`: concurrent `up`s (test workers) start one server."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


#: lines of Maven output kept for the error message when a fetch fails
_MAVEN_TAIL_LINES = 30
#: seconds between progress lines during a fetch
_PROGRESS_EVERY = 3.0


def fetch_classpath(pom: Path, libs: Path, label: str, progress: Echo) -> int:
    """Copy a pom's run-time dependencies from Maven Central into `libs`; return the jar count.

    Shows progress every few seconds (the first fetch downloads hundreds of files) and raises
    StackError with Maven's last lines when it fails or copies nothing.
    """
    shutil.rmtree(libs, ignore_errors=True)
    libs.mkdir(parents=True)
    progress(f"Fetching {label} jars from Maven Central into {libs} (first run only) …")
    command = [
        "mvn",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        "-DincludeScope=runtime",
    ]
    started = last_report = time.monotonic()
    downloaded = 0
    latest = "-"
    output: deque[str] = deque(maxlen=_MAVEN_TAIL_LINES)
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as maven:
        assert maven.stdout is not None
        for line in maven.stdout:
            output.append(line.rstrip())
            if "Downloaded from" in line:
                downloaded += 1
                # "[INFO] Downloaded from central: https://…/kafka_2.13-4.1.1.jar (6.4 MB at …)"
                latest = line.partition(": ")[2].split(" ", 1)[0].rsplit("/", 1)[-1]
            now = time.monotonic()
            if now - last_report >= _PROGRESS_EVERY:
                last_report = now
                copied = sum(1 for _ in libs.glob("*.jar"))
                progress(
                    f"  … {downloaded} files downloaded (latest {latest}), "
                    f"{copied} jars copied, {now - started:.0f} s"
                )
    jars = sum(1 for _ in libs.glob("*.jar"))
    if maven.returncode != 0 or jars == 0:
        raise StackError(
            f"expected Maven to copy {label} jars into {libs}, but it exited with code "
            f"{maven.returncode} and {jars} jars; last lines:\n" + "\n".join(output)
        )
    progress(
        f"  fetched {jars} jars ({downloaded} downloads) in {time.monotonic() - started:.0f} s"
    )
    return jars
