"""mohawk.metrics: metrics.jsonl (truncation on resume)."""

import json

from mohawk.metrics import MetricsLog


def test_metrics_truncation(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for stage, step in [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 1)]:
        log.write({"stage": stage, "step": step, "tokens": step})
    log.truncate_after(2, 2)
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
