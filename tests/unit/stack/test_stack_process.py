"""Pid files and log tails of the detached servers."""

from __future__ import annotations

import os
from pathlib import Path

from qmsflow.stack.process import read_pid, tail


class TestReadPid:
    def test_live_process(self, tmp_path: Path) -> None:
        """A pid file naming a running process gives that pid."""
        pid_file = tmp_path / "server.pid"
        pid_file.write_text(f"{os.getpid()}\n")

        assert read_pid(pid_file) == os.getpid()

    def test_missing_or_garbage(self, tmp_path: Path) -> None:
        """A missing or unreadable pid file means no server."""
        garbage = tmp_path / "garbage.pid"
        garbage.write_text("not a pid")

        assert read_pid(tmp_path / "absent.pid") is None
        assert read_pid(garbage) is None


class TestTail:
    def test_last_lines(self, tmp_path: Path) -> None:
        """Only the last lines are kept, in order."""
        log = tmp_path / "server.log"
        log.write_text("".join(f"line {n}\n" for n in range(100)))

        assert tail(log, 3) == "line 97\nline 98\nline 99"

    def test_missing_log(self, tmp_path: Path) -> None:
        """A server that never wrote a log is reported as such, not as an error."""
        assert "no log" in tail(tmp_path / "absent.log")
