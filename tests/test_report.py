"""Stage distances are labelled truly: each stage's distance is measured right after that stage, the end-of-run value
is its own column, and a resumed run keeps the value its first invocation measured (from the checkpoint's record)."""

import json

import mohawk.distill
from mohawk.checkpoint import Checkpointer
from mohawk.cli import main
from mohawk.errors import MohawkError
from mohawk.report import stage_distance_cells, write_report
from tests.utils import rewrite_checkpoint_file, tiny_distill_argv


def _mean(d: dict) -> float:
    return sum(d.values()) / len(d)


def test_stage_cells_take_after_stage_values_not_end_values():
    summary = {
        "distances_before": {"stage1": {"0": 10.0, "1": 6.0}, "stage2": {"0": 4.0}},
        "distances_after_stage": {"1": {"stage1": {"0": 5.0, "1": 3.0}}, "2": {"stage2": {"0": 2.0}}},
        "distances_after": {"stage1": {"0": 7.0, "1": 7.0}, "stage2": {"0": 1.0}},
    }
    assert stage_distance_cells(summary, 1) == ("8 -> 4 (-50%)", "7")
    assert stage_distance_cells(summary, 2) == ("4 -> 2 (-50%)", "1")
    assert stage_distance_cells(summary, 3) == ("-", "-")
    # a run from before the per-stage measurement: the end value is not passed off as the stage's
    old = {k: v for k, v in summary.items() if k != "distances_after_stage"}
    assert stage_distance_cells(old, 1) == ("8 -> not measured", "7")


def _interrupt_in_stage_2(teacher_dir, out, monkeypatch, checkpointed: bool) -> None:
    """Run until stage 2 starts (stage 1 finished and checkpointed), then fail; ``checkpointed``: Ctrl-C at stage
    2's first batch, after its first checkpoint."""
    real_train, real_stream = mohawk.distill.train_stage, mohawk.distill._stage_stream

    def stop_at_stage_2(stage, *a, **k):
        if stage.number == 2:
            raise MohawkError("interrupted")
        return real_train(stage, *a, **k)

    def dying_stream(cfg, tok, stage, data):
        stream = real_stream(cfg, tok, stage, data)
        if stage != 2:
            return stream

        class Dying:
            def batches(self, *a, **kw):
                raise KeyboardInterrupt
                yield

        return Dying()

    if checkpointed:
        monkeypatch.setattr(mohawk.distill, "_stage_stream", dying_stream)
    else:
        monkeypatch.setattr(mohawk.distill, "train_stage", stop_at_stage_2)
    assert main(tiny_distill_argv(teacher_dir, out)) == (130 if checkpointed else 2)
    monkeypatch.setattr(mohawk.distill, "train_stage", real_train)
    monkeypatch.setattr(mohawk.distill, "_stage_stream", real_stream)


def test_stage_distances_right_after_each_stage_and_through_resume(teacher_dir, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    assert main(tiny_distill_argv(teacher_dir, ref)) == 0
    s = json.loads((ref / "summary.json").read_text())
    own, end = s["distances_after_stage"], s["distances_after"]
    assert set(own) == {"1", "2"} and set(own["1"]) == {"stage1", "stage2"}
    assert own["1"]["stage1"].keys() == end["stage1"].keys() == s["distances_before"]["stage1"].keys()
    assert own["1"]["stage1"] != end["stage1"]  # stage 3 moves the mixers on: the two are different measurements
    assert own["2"]["stage2"] != end["stage2"]
    assert own["1"]["stage1"] != own["2"]["stage1"]  # stage 2 trains the mixers too
    lines = (ref / "report.md").read_text().splitlines()
    row1 = next(r for r in lines if r.startswith("| 1 matrix orientation"))
    row2 = next(r for r in lines if r.startswith("| 2 hidden-state"))
    assert f"-> {_mean(own['1']['stage1']):.4g} (" in row1 and row1.endswith(f"| {_mean(end['stage1']):.4g} |")
    assert f"-> {_mean(own['2']['stage2']):.4g} (" in row2 and row2.endswith(f"| {_mean(end['stage2']):.4g} |")

    # resumed in stage 2: the value the first invocation recorded in the checkpoint is kept (marked there, so a
    # re-measurement of the student after stage 2 or 3 would show); summary.json is not read ...
    out = tmp_path / "kept"
    _interrupt_in_stage_2(teacher_dir, out, monkeypatch, checkpointed=True)
    latest = Checkpointer(out / "checkpoints").latest()
    assert latest.name == "stage2-step0000000"
    record = json.loads((latest / "run.json").read_text())
    assert record["results"]["distances_after_stage"] == {"1": own["1"]}
    record["results"]["distances_after_stage"]["1"]["stage1"]["0"] = 123.0
    rewrite_checkpoint_file(latest, "run.json", json.dumps(record).encode())
    (out / "summary.json").write_text(json.dumps({"distances_after_stage": {"1": {"stage1": {"0": -1.0}}}}))
    assert main(tiny_distill_argv(teacher_dir, out, "--resume")) == 0
    got = json.loads((out / "summary.json").read_text())["distances_after_stage"]
    assert got["1"] == record["results"]["distances_after_stage"]["1"] and got["2"] == own["2"]
    cell = stage_distance_cells(json.loads((out / "summary.json").read_text()), 1)[0]
    assert f"| {cell} |" in write_report(out).read_text() and _mean(got["1"]["stage1"]) > 30

    # ... and one the record lacks (cut between stage 1's last checkpoint and stage 2's first) is measured on the
    # student loaded from stage 1's checkpoint: the reference's value
    out = tmp_path / "refilled"
    _interrupt_in_stage_2(teacher_dir, out, monkeypatch, checkpointed=False)
    assert Checkpointer(out / "checkpoints").latest().name.startswith("stage1-")
    assert main(tiny_distill_argv(teacher_dir, out, "--resume")) == 0
    assert json.loads((out / "summary.json").read_text())["distances_after_stage"] == own


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
        "distances_after_stage": {"2": {"stage2": {"0": 2.0, "2": 2.0}}},
        # stages keyed as JSON keeps them; "10" would sort before "2" as text
        "stages": {
            "3": {"tokens": 4096, "tokens_per_update": 512, "steps": 8, "skipped": 1, "lr": 3e-4, "wall_s": 9.4}
            | {"median_step_ms": 1012.4, "stall_s": 2.6},
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
    stage2 = "| 2 hidden-state alignment | 2,048 | - | 4 | 0.5 | 0 / 1 | 0.001 | 3 | - | 4 | 2 | 3 -> 2 (-33%) | 1.5 |"
    stage3 = "| 3 knowledge distillation | 4,096 | 512 | 8 | - | 1 / 0 | 0.0003 | 9 | 1,012 / 3 | 4 | 2 | - | - |"
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
