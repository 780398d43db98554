"""mohawk.report: report.md and the plots from a run's summary.json and metrics.jsonl (no model needed)."""

import json

from mohawk.report import write_report


def _run_dir(tmp_path):
    """A finished two-stage run as distill leaves it: summary.json and metrics.jsonl."""
    summary = {
        "command": "mohawk distill --stages 2,3",
        "teacher": "tiny",
        "teacher_layers": 3,
        "attention_layers": [1],
        "mixer": "ssd",
        "teacher_eval": {"perplexity": 10.0},
        "transfer_only": {"perplexity": 90.0, "top1_agreement": 0.25, "kl": 2.5},
        "final": {"perplexity": 12.5, "top1_agreement": 0.75, "kl": 0.125},
        "distances_before": {"stage2": {"0": 4.0, "2": 2.0}},
        "distances_after": {"stage2": {"0": 1.0, "2": 2.0}},
        # stages keyed as JSON keeps them; "10" would sort before "2" as text
        "stages": {
            "3": {"tokens": 4096, "tokens_per_update": 512, "steps": 8, "skipped": 1, "lr": 3e-4, "wall_s": 9.4},
            "2": {"tokens": 2048, "steps": 4, "epochs": 0.5, "skipped": 0, "rollbacks": 1, "lr": 1e-3, "wall_s": 3},
        },
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    rows = [{"stage": s, "step": i, "tokens": 512 * i, "loss": 4.0 / i} for s in (2, 3) for i in (1, 2)]
    rows.insert(2, {"stage": 2, "step": 2, "event": "spike", "spike_loss": 99.0, "median": 2.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_report_tables_put_each_number_in_its_column(tmp_path):
    text = write_report(_run_dir(tmp_path)).read_text()
    assert "| teacher | 10.00 | 1.000 | 0 |" in text
    assert "| student after weight transfer only | 90.00 | 0.250 | 2.500 |" in text
    assert "| distilled student | 12.50 | 0.750 | 0.125 |" in text
    assert "perplexity is **12.50** against 90.00" in text and "distillation helped." in text
    stage2 = "| 2 hidden-state alignment | 2,048 | - | 4 | 0.5 | 0 / 1 | 0.001 | 3 | 4 | 2 | 3 -> 1.5 (-50%) |"
    stage3 = "| 3 knowledge distillation | 4,096 | 512 | 8 | - | 1 / 0 | 0.0003 | 9 | 4 | 2 | - |"
    assert stage2 in text and stage3 in text and text.index(stage2) < text.index(stage3)
    assert "- stage 2 step 2: spike (loss 99.0 vs running median 2.0)" in text
    assert (tmp_path / "plots" / "loss.png").is_file() and (tmp_path / "plots" / "stage2_distance.png").is_file()


def test_report_without_evaluation_of_the_teacher_says_so_by_omission(tmp_path):
    """A run without a teacher evaluation has no teacher row, and a student worse than weight transfer is flagged."""
    run = _run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    del summary["teacher_eval"]
    summary["final"]["perplexity"] = 95.0
    (run / "summary.json").write_text(json.dumps(summary))
    text = write_report(run).read_text()
    assert "| teacher |" not in text and "distillation did NOT improve on weight transfer." in text
