"""Stage distances are labelled truly: each stage's distance is measured right after that stage, the end-of-run value
is its own column, and a resumed run keeps the value its first invocation measured."""

import json

import mohawk.distill
from mohawk.cli import main
from mohawk.errors import MohawkError
from mohawk.report import stage_distance_cells, write_report
from tests.conftest import tiny_distill_argv


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


def _interrupt_at_stage_2(teacher_dir, out, monkeypatch) -> dict:
    """Run until stage 2 would start (stage 1 finished and checkpointed), then fail; returns the summary."""
    real = mohawk.distill.train_stage

    def stop_at_stage_2(stage, *a, **k):
        if stage.number == 2:
            raise MohawkError("interrupted")
        return real(stage, *a, **k)

    monkeypatch.setattr(mohawk.distill, "train_stage", stop_at_stage_2)
    assert main(tiny_distill_argv(teacher_dir, out)) == 2
    monkeypatch.setattr(mohawk.distill, "train_stage", real)
    return json.loads((out / "summary.json").read_text())


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

    # resumed after stage 1: a value the first invocation recorded is kept (marked here, so a re-measurement of the
    # student after stage 2 or 3 would show) ...
    out = tmp_path / "kept"
    first = _interrupt_at_stage_2(teacher_dir, out, monkeypatch)
    assert first["distances_after_stage"] == {"1": own["1"]}
    first["distances_after_stage"]["1"]["stage1"]["0"] = 123.0
    (out / "summary.json").write_text(json.dumps(first))
    assert main(tiny_distill_argv(teacher_dir, out, "--resume")) == 0
    got = json.loads((out / "summary.json").read_text())["distances_after_stage"]
    assert got["1"] == first["distances_after_stage"]["1"] and got["2"] == own["2"]
    cell = stage_distance_cells(json.loads((out / "summary.json").read_text()), 1)[0]
    assert f"| {cell} |" in write_report(out).read_text() and _mean(got["1"]["stage1"]) > 30

    # ... and one the summary lacks (killed between stage 1's last checkpoint and the summary) is measured on the
    # student loaded from stage 1's checkpoint: the reference's value
    out = tmp_path / "refilled"
    first = _interrupt_at_stage_2(teacher_dir, out, monkeypatch)
    del first["distances_after_stage"]
    (out / "summary.json").write_text(json.dumps(first))
    assert main(tiny_distill_argv(teacher_dir, out, "--resume")) == 0
    assert json.loads((out / "summary.json").read_text())["distances_after_stage"] == own
