"""mohawk.evaluation.present: the one markdown-table helper every report and benchmark uses."""

import pytest

from mohawk.evaluation.present import _time_spent, markdown_table


def test_markdown_table_lines():
    lines = markdown_table(["model", "ppl", 512], [["teacher", "46.70", 1.0], ["student", 86, "-"]])
    assert lines == ["| model | ppl | 512 |", "|---|---|---|", "| teacher | 46.70 | 1.0 |", "| student | 86 | - |"]
    assert markdown_table(["a"], []) == ["| a |", "|---|"]  # a header without rows is still a table


def test_markdown_table_refuses_a_row_that_would_shift_columns():
    """A row one cell short would render its cells under the wrong headers; the helper refuses it."""
    with pytest.raises(ValueError, match="2 cells under 3 columns"):
        markdown_table(["a", "b", "c"], [[1, 2, 3], [1, 2]])


def test_time_line_splits_lm_eval_by_task():
    """The report's time line: loading, data, each model's phases, and inside lm-eval each task's own seconds (a
    model without lm-eval, or an old results.json without them, shows its phases alone)."""
    res = {
        "load_s": 1.4, "data_s": 0.5,
        "seconds": {"teacher": {"perplexity": 2.0}, "arm": {"perplexity": 6.1, "lm-eval": 105.2}},
        "scores": {"teacher": {"perplexity": 44.5}, "arm": {"perplexity": 43.8,
                   "hellaswag": {"acc": 0.3, "seconds": 61.0}, "lambada_openai": {"acc": 0.2, "seconds": 43.9}}},
    }  # fmt: skip
    assert _time_spent(res) == [
        "- time: loading 1 s; data 0 s; teacher: perplexity 2 s; "
        "arm: perplexity 6 s, lm-eval 105 s (hellaswag 61 s, lambada_openai 44 s)"
    ]
    del res["scores"]["arm"]["hellaswag"]["seconds"], res["scores"]["arm"]["lambada_openai"]["seconds"]
    assert _time_spent(res)[0].endswith("arm: perplexity 6 s, lm-eval 105 s")
    assert _time_spent({"scores": {}}) == []
