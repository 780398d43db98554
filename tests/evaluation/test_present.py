"""mohawk.evaluation.present: the one markdown-table helper every report and benchmark uses."""

import pytest

from mohawk.evaluation.present import markdown_table


def test_markdown_table_lines():
    lines = markdown_table(["model", "ppl", 512], [["teacher", "46.70", 1.0], ["student", 86, "-"]])
    assert lines == ["| model | ppl | 512 |", "|---|---|---|", "| teacher | 46.70 | 1.0 |", "| student | 86 | - |"]
    assert markdown_table(["a"], []) == ["| a |", "|---|"]  # a header without rows is still a table


def test_markdown_table_refuses_a_row_that_would_shift_columns():
    """A row one cell short would render its cells under the wrong headers; the helper refuses it."""
    with pytest.raises(ValueError, match="2 cells under 3 columns"):
        markdown_table(["a", "b", "c"], [[1, 2, 3], [1, 2]])
