"""The `toggles` and `topics scale` commands refuse before they touch a broker."""

from __future__ import annotations

from click.testing import CliRunner

from qmsflow.cli import main


class TestRefusals:
    def test_toggling_core_processing_off_is_refused(self) -> None:
        """`qmsflow toggles set dedup off` fails with the reason and publishes nothing."""
        result = CliRunner().invoke(main, ["toggles", "set", "dedup", "off", "--reason", "x"])
        assert result.exit_code != 0
        assert "core quality processing" in result.output

    def test_scaling_one_ingest_topic_alone_is_refused(self) -> None:
        """Without --with-copartitioned the group is named and nothing changes."""
        result = CliRunner().invoke(main, ["topics", "scale", "qms.capa.v1", "--partitions", "12"])
        assert result.exit_code != 0
        assert "--with-copartitioned" in result.output

    def test_decreasing_is_refused(self) -> None:
        """Fewer partitions is never possible."""
        result = CliRunner().invoke(
            main, ["topics", "scale", "qms.capa.v1", "--partitions", "2", "--with-copartitioned"]
        )
        assert result.exit_code != 0
        assert "never removes" in result.output
