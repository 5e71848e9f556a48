"""docs/analysts.md is exactly what `qmsflow db docs` renders from the migrations' comments."""

from __future__ import annotations

from pathlib import Path

from connectors.postgres_sink.migrations import load_migrations
from qmsflow.cli import analyst_catalog_from_sql, render_analyst_docs

DOCS = Path(__file__).parents[3] / "docs" / "analysts.md"


class TestAnalystDocs:
    def test_committed_docs_match_the_migrations(self) -> None:
        """The committed guide equals the rendering of the migrations' COMMENT statements."""
        catalog = analyst_catalog_from_sql(m.sql for m in load_migrations())
        assert DOCS.read_text(encoding="utf-8") == render_analyst_docs(catalog), (
            "docs/analysts.md is stale: run `qmsflow db migrate && qmsflow db docs`"
        )

    def test_every_view_and_column_is_documented(self) -> None:
        """Each analytics view has a comment, and so does each of its columns."""
        catalog = analyst_catalog_from_sql(m.sql for m in load_migrations())
        assert len(catalog) >= 9
        for view, (comment, columns) in catalog.items():
            assert comment, view
            assert columns and all(text for _, text in columns), view

    def test_quoted_literals_are_joined_and_unescaped(self) -> None:
        """Adjacent literals concatenate and doubled quotes become one."""
        sql = (
            "COMMENT ON VIEW analytics.v IS 'It''s one '\n    'view.';\n"
            "COMMENT ON COLUMN analytics.v.c IS 'A column.';"
        )
        assert analyst_catalog_from_sql([sql]) == {"v": ("It's one view.", [("c", "A column.")])}
