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


@pytest.mark.parametrize("kill_stage", [1, 2, 3])
def test_sigkill_then_resume_is_bitwise_equal(teacher_dir, tmp_path, kill_stage):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG)
    threads = torch.get_num_threads()
    try:
        assert main(_args(teacher_dir, cfg, tmp_path / "ref")) == 0
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
    (final_a, dist_a, losses_a, weights_a), (final_b, dist_b, losses_b, weights_b) = (
        _outcome(tmp_path / "ref"),
        _outcome(out),
    )
    assert final_a == final_b and dist_a == dist_b
    assert losses_a == losses_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
