"""`qmsflow topics spread` plans without a broker and fails with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from qmsflow.cli import main
from qmsflow.partitioner import partition_for
from qmsflow.settings import load_settings


def _spread(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["topics", "spread", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


class TestPlanning:
    def test_lines_are_shown_on_their_murmur2_partitions(self) -> None:
        """Each line is listed under the partition murmur2 gives it, with its share."""
        code, output = _spread("--lines", "catheters=3,infusion-pumps", "--partitions", "6")
        assert code == 0, output
        assert "6 partitions, planned" in output
        rows = {row.split()[0]: row for row in output.splitlines() if "catheters" in row}
        assert str(partition_for("catheters", 6)) in rows
        assert "75.0%" in rows[str(partition_for("catheters", 6))]

    def test_the_four_old_demo_lines_leave_a_worker_idle(self) -> None:
        """The issue's case: 3 of 6 partitions busy, one range worker gets all the traffic."""
        lines = "infusion-pumps,catheters,sterile-injectables,diagnostic-kits"
        code, output = _spread("--lines", lines, "--partitions", "6", "--workers", "2")
        assert code == 0, output
        assert "3 of 6 partitions carry traffic" in output
        workers = output.split("by assignor:")[1].split("\n\n")[0].splitlines()
        two = next(row.split() for row in workers if row.split()[:1] == ["2"])
        assert two[1:3] == ["100.0%", "1.00×"]  # range: partitions 0-2 all go to one worker

    def test_a_lines_file_is_read(self, tmp_path: Path) -> None:
        """A file with one line per row, weights and comments, plans like --lines."""
        path = tmp_path / "lines.txt"
        path.write_text("# Cork\ncatheters 2\nstents\n", encoding="utf-8")
        code, output = _spread("--lines-file", str(path), "--partitions", "8")
        assert code == 0, output
        assert "2 product lines from" in output and "stents" in output

    def test_a_recommendation_is_given_for_each_group_size(self) -> None:
        """The advice names a count, or the nearest, for the partitions and each group size."""
        code, output = _spread("--lines", "a,b,c,d,e,f,g,h", "--workers", "2,3")
        assert code == 0, output
        advice = output.split("smallest of 6–48 partitions within 25% of even:")[1]
        assert "busiest partition:" in advice
        assert "2 workers (round-robin):" in advice and "3 workers (round-robin):" in advice


class TestErrors:
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--lines", "a=lots"], "expected `line` or `line=weight` with a number"),
            (["--topic", "nope.x.v1", "--lines", "a"], "is not declared"),
            (["--lines", "a", "--partitions", "0"], "expected counts ≥ 1"),
            (["--lines", "a", "--demo-plant"], "give one of --lines"),
        ],
    )
    def test_bad_input_is_one_line_without_a_traceback(self, args: list[str], message: str) -> None:
        """A wrong option or value exits non-zero with the reason and no traceback."""
        code, output = _spread(*args)
        assert code != 0
        assert message in output
        assert "Traceback" not in output

    def test_an_unreachable_broker_is_named(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Measuring against a broker that does not answer names it and exits 1."""
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        monkeypatch.setattr("qmsflow.cli._SPREAD_TIMEOUT", 1.0)
        load_settings.cache_clear()  # the CLI reads its settings once per process
        try:
            code, output = _spread("--sample", "10")
        finally:
            load_settings.cache_clear()
        assert code == 1
        assert "cannot read from Kafka at 127.0.0.1:1" in output
