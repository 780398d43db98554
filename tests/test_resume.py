"""A run killed with SIGKILL in the middle of a stage and resumed ends bitwise equal to an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from mohawk.cli import main

CONFIG = """seq_len: 16
batch_size: 2
stage1_tokens: 384
stage2_tokens: 384
stage3_tokens: 768
val_sequences: 4
checkpoint_every: 3
threads: 1
device: cpu
"""


def _args(teacher_dir, cfg, out):
    return [
        "distill",
        str(cfg),
        "--teacher",
        str(teacher_dir),
        "--data",
        str(teacher_dir.parent / "corpus.jsonl"),
        "--out",
        str(out),
        "--quiet",
    ]


def _outcome(out):
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["stage"], r["step"], r["loss"], r["lr"]) for r in rows if "loss" in r]
    return summary["final"], summary["distances_after"], losses, load_file(out / "student" / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One teacher directory, config and uninterrupted run, shared by the kill points (the run is deterministic)."""
    from tests.utils import tiny_corpus, tiny_teacher, tiny_tokenizer

    root = tmp_path_factory.mktemp("resume")
    teacher_dir = root / "teacher"
    tiny_teacher("llama").save_pretrained(teacher_dir)
    tiny_tokenizer().save_pretrained(teacher_dir)
    tiny_corpus(root / "corpus.jsonl")
    cfg = root / "run.yaml"
    cfg.write_text(CONFIG)
    threads = torch.get_num_threads()
    try:
        assert main(_args(teacher_dir, cfg, root / "ref")) == 0
    finally:
        torch.set_num_threads(threads)
    return teacher_dir, cfg, _outcome(root / "ref")


@pytest.mark.parametrize("kill_stage", [1, 2, 3])
def test_sigkill_then_resume_is_bitwise_equal(uninterrupted, tmp_path, kill_stage):
    teacher_dir, cfg, (final_a, dist_a, losses_a, weights_a) = uninterrupted
    threads = torch.get_num_threads()
    try:
        out = tmp_path / "killed"
        proc = subprocess.Popen(
            [sys.executable, "-m", "mohawk", *_args(teacher_dir, cfg, out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        marker = out / "checkpoints" / f"stage{kill_stage}-step0000003"
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        assert not (out / "student").exists()
        assert main(_args(teacher_dir, cfg, out) + ["--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    final_b, dist_b, losses_b, weights_b = _outcome(out)
    assert final_a == final_b and dist_a == dist_b
    assert losses_a == losses_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_resume_where_there_is_no_run_is_refused(teacher_dir, tmp_path, capsys):
    from tests.utils import tiny_distill_argv

    empty, foreign = tmp_path / "empty", tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for out in (empty, foreign):
        assert main(tiny_distill_argv(teacher_dir, out, "--resume")) == 2
        assert "holds no mohawk run" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == [".mohawk.lock", "notes.txt"]
    assert [p.name for p in empty.iterdir()] == [".mohawk.lock"]


@pytest.mark.parametrize("change", ["data", "teacher"])
def test_resume_notices_changed_inputs(teacher_dir, tmp_path, capsys, change):
    """The corpus (or the teacher) changed in place since the run started: --resume refuses in one line, or with
    --allow-changed-inputs continues and the report says so."""
    from tests.utils import tiny_corpus, tiny_distill_argv

    out = tmp_path / "run"
    assert main(tiny_distill_argv(teacher_dir, out)) == 0
    if change == "data":
        tiny_corpus(teacher_dir.parent / "corpus.jsonl", seed=5)
    else:
        config = json.loads((teacher_dir / "config.json").read_text())
        (teacher_dir / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-3}))
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".mohawk.lock"}
    assert main(tiny_distill_argv(teacher_dir, out, "--resume")) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert f"cannot resume: {change}" in line and "changed since the run started" in line, line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".mohawk.lock"} == files
    assert main(tiny_distill_argv(teacher_dir, out, "--resume", "--allow-changed-inputs")) == 0
    assert "changed since the run started" in (out / "report.md").read_text()
    assert main(tiny_distill_argv(teacher_dir, out, "--resume")) == 0  # the run now reads the new inputs


def test_run_defining_settings_come_from_the_schema():
    """Which settings a resume must keep is declared per field (defines_run); every other field is one a resume may
    change, and that list is spelled out here so a new field is classified on purpose."""
    from mohawk.checkpoint import RUN_DEFINING
    from mohawk.config import schema

    may_change = {
        "trust_remote_code", "lr", "stage1_lr", "stage2_lr", "stage3_lr", "stage4_lr", "loss_chunk", "grad_clip",
        "spike_factor", "spike_window", "spike_patience", "rollback_lr_factor", "max_rollbacks", "divergence_factor",
        "divergence_patience", "eval_tasks", "eval_limit", "device", "compile", "parallel", "log_every",
        "checkpoint_every", "out", "report_to", "threads",
    }  # fmt: skip
    names = [f.name for f in schema()]
    assert set(RUN_DEFINING) == set(names) - may_change
    assert list(RUN_DEFINING) == [n for n in names if n in RUN_DEFINING]  # schema order: the first change is named
