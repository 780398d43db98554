"""The committed results/recall report is what its generator makes of the committed runs: a note or a run added to
results/recall/runs without `python3 -m experiments.recall report` shows here, not in a reader's stale table."""

import json
import math
from pathlib import Path

import pytest

from experiments.recall import ARMS, BASELINES
from experiments.recall_report import write_recall_report

ROOT = Path(__file__).resolve().parents[2]
RUNS, COMMITTED = ROOT / "results" / "recall" / "runs", ROOT / "results" / "recall"


@pytest.mark.skipif(not (RUNS / "screen" / "teacher" / "results.json").is_file(), reason="no committed recall runs")
def test_the_committed_recall_report_is_regenerated_from_its_runs(tmp_path):
    """README.md (tables, notes, queue) and results.json equal a fresh report of results/recall/runs (catches: NOTES.md
    edited, a run's results committed, or the report's code changed, without the report made again)."""
    write_recall_report(RUNS, tmp_path, ARMS, baselines=BASELINES)
    fresh, committed = ((p / "README.md").read_text().splitlines() for p in (tmp_path, COMMITTED))
    stale = [f"line {i + 1}: {a!r} != {b!r}" for i, (a, b) in enumerate(zip(committed, fresh, strict=False)) if a != b]
    assert len(fresh) == len(committed) and not stale, (
        f"results/recall/README.md is stale ({len(committed)} vs {len(fresh)} lines; {stale[:3]}): run "
        "python3 -m experiments.recall report --out results/recall/runs --results results/recall"
    )
    fresh_doc, committed_doc = (json.loads((p / "results.json").read_text()) for p in (tmp_path, COMMITTED))
    assert _close(fresh_doc, committed_doc), "results/recall/results.json is stale: run the same report command"


def _close(a, b) -> bool:
    """JSON documents equal, floats within 1e-9 relative (another CPU may round a bootstrap's last bit otherwise)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    return a == b
