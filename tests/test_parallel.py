"""Data-parallel distillation under torchrun: 2 CPU processes (gloo) run all three stages (DDP for stages 1-2,
FSDP2 for stage 3) with the same losses as one process on the same global batch, and a checkpoint written by 2
processes resumes in 1."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mohawk.errors import MohawkError
from mohawk.parallel import Parallel

CONFIG = """seq_len: 16
batch_size: 4
tokens_per_update: 128
stage1_tokens: 256
stage2_tokens: 256
stage3_tokens: 384
val_sequences: 4
checkpoint_every: 1
threads: 1
device: cpu
eval_tasks: ppl
"""


def test_single_process_is_a_no_op():
    p = Parallel()
    batch = torch.arange(12).view(4, 3)
    assert p.shard(batch) is batch and not p.active and p.main
    assert p.mean([1.0, 2.0]) == [1.0, 2.0]
    assert p.mean_metrics(0.5, {"kl": 1.0, "layer_distance": {0: 2.0}}) == (
        0.5,
        {"kl": 1.0, "layer_distance": {0: 2.0}},
    )


def test_shard_takes_this_ranks_rows_and_refuses_uneven_batches():
    batch = torch.arange(12).view(6, 2)
    rows = [Parallel(rank=r, world=3).shard(batch) for r in range(3)]
    assert torch.equal(torch.cat(rows), batch) and all(x.shape == (2, 2) for x in rows)
    with pytest.raises(MohawkError, match="multiple of 4"):
        Parallel(rank=0, world=4).shard(batch)


def test_stage3_strategy():
    """FSDP2 for the stage that declares it shards the student (stage 3), under torchrun, unless --parallel ddp."""
    from mohawk.stages import STAGES

    s2, s3 = STAGES[2], STAGES[3]
    assert Parallel(world=2).uses_fsdp(s3) and not Parallel(world=2).uses_fsdp(s2)
    assert not Parallel(world=2, strategy="ddp").uses_fsdp(s3) and not Parallel().uses_fsdp(s3)


def _distill(teacher_dir, cfg, out, nproc: int, *extra, check: bool = True):
    base = [
        "-m",
        "mohawk",
        "distill",
        str(cfg),
        "--teacher",
        str(teacher_dir),
        "--data",
        str(teacher_dir.parent / "corpus.jsonl"),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    root = str(Path(__file__).resolve().parent.parent)  # this checkout's mohawk, installed or not
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run([sys.executable, *launcher, *base], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 or not check, r.stderr[-3000:]
    return r


def _losses(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {(r["stage"], r["step"]): r["loss"] for r in rows if "loss" in r}


@pytest.mark.multiprocess
def test_two_processes_match_one_and_resume_in_one(teacher_dir, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    one, two = tmp_path / "one", tmp_path / "two"
    _distill(teacher_dir, cfg, one, 1)
    assert "teacher sharded over 2 processes" in _distill(teacher_dir, cfg, two, 2).stderr
    a, b = _losses(one), _losses(two)
    # 2 micro-batches per update: gradients are reduced over ranks only after the second (no_sync / FSDP2's
    # set_requires_gradient_sync), still the same losses
    assert a.keys() == b.keys() and {s for s, _ in a} == {1, 2, 3} and len(a) == 2 + 2 + 3
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s2["processes"] == 2 and "processes" not in s1
    assert s2["final"]["perplexity"] == pytest.approx(s1["final"]["perplexity"], rel=1e-4)
    assert sorted(p.name for p in (two / "student").iterdir()) == sorted(p.name for p in (one / "student").iterdir())

    ddp = tmp_path / "ddp"  # stage 3 replicated instead of sharded: the same losses too
    assert "sharded" not in _distill(teacher_dir, cfg, ddp, 2, "--parallel", "ddp").stderr
    c = _losses(ddp)
    assert c.keys() == a.keys() and all(c[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6) for k in a)

    # the 2-process run, cut before its last stage-3 update, goes on in 1 process from the sharded checkpoint
    ckpts = sorted((two / "checkpoints").iterdir())
    last = ckpts[-1]
    assert json.loads((last / "state.json").read_text())["done"] and len(list(ckpts[-2].glob("*.distcp"))) == 2
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    shutil.rmtree(resumed / "checkpoints" / last.name)
    shutil.rmtree(resumed / "student")
    _distill(teacher_dir, cfg, resumed, 1, "--resume")
    c = _losses(resumed)
    assert c.keys() == a.keys()
    final_step = max(k for k in a if k[0] == 3)
    assert c[final_step] == pytest.approx(a[final_step], rel=1e-4)
    s3 = json.loads((resumed / "summary.json").read_text())
    assert s3["final"]["perplexity"] == pytest.approx(s1["final"]["perplexity"], rel=1e-4)


@pytest.mark.multiprocess
def test_uneven_batch_is_one_error_line_per_rank(teacher_dir, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.replace("batch_size: 4", "batch_size: 3"))
    r = _distill(teacher_dir, cfg, tmp_path / "out", 2, check=False)
    assert r.returncode != 0
    assert r.stderr.count("error: --batch-size 3 does not split over 2 processes") == 2
