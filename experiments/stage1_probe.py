"""Stage 1 (or 2) alone on a teacher at a few peak LRs: the student's mean and per-layer distance of that stage
before and after 2,048 tokens (16 steps of one 128-token sequence), seed 0; CPU is enough. A family other than SSD
(--mixer) starts as `mohawk distill` starts it: rescaled to the teacher's attention on the first training sequences
(calibrate). --out appends each row to a JSON-lines file (results/experiments/stage-lr-probe.jsonl: EXPERIMENTS.md,
claim 6, reads it).

    python3 -m experiments.stage1_probe --teacher gemma3-270m --lrs 1e-3,1e-4,1e-5
    python3 -m experiments.stage1_probe --teacher smollm2-135m --mixer linear_attention --lrs 1e-3,1e-4 --tokens 7936
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import mohawk
from mohawk.checkpoint import Checkpointer
from mohawk.config import DistillConfig
from mohawk.data import make_streams, take
from mohawk.evaluation import layer_distances
from mohawk.metrics import MetricsLog
from mohawk.stages import STAGES
from mohawk.train import StageBudget, train_stage
from mohawk.transfer import calibrate


def _train(student, adapter, tok, number: int, lr: float, tokens: int, seq_len: int, loop) -> None:
    """Stage ``number`` on ``tokens`` of the bundled corpus (training split, seed 1), one sequence per step."""
    stream, _ = make_streams("bundled", tok, seq_len, seed=1)
    budget = StageBudget(tokens=tokens, micro_tokens=seq_len, grad_accum=1, lr=lr)
    stage = STAGES[number](student, adapter)
    train_stage(stage, stream.batches(1), budget, loop, checkpointer=Checkpointer(None), log=MetricsLog(None))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="gemma3-270m")
    ap.add_argument("--lrs", default="1e-3,1e-4,1e-5")
    ap.add_argument("--tokens", type=int, default=2048, help="training tokens per LR (tokens / seq-len steps)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--mixer", default="ssd", help="the student family: ssd, ssm, linear_attention or toeplitz")
    ap.add_argument("--stage", type=int, choices=(1, 2), default=1, help="the stage trained and measured")
    ap.add_argument("--after-stage1-lr", type=float, help="--stage 2: train stage 1 first (same tokens) at this LR")
    ap.add_argument("--out", help="append each row (JSON) to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    teacher, tok, adapter = mohawk.load_teacher(args.teacher)
    L, key = args.seq_len, f"stage{args.stage}"
    _, val_stream = make_streams("bundled", tok, L, seed=0)
    val = take(val_stream, 4)
    n, rows = adapter.num_layers, []
    loop = DistillConfig.from_dict({}).loop_settings()
    for lr in map(float, args.lrs.split(",")):
        torch.manual_seed(0)
        student = mohawk.from_teacher(adapter, mixer=args.mixer)
        calibrate(student, adapter, make_streams("bundled", tok, L, seed=1)[0])  # as mohawk distill starts it
        if args.stage == 2 and args.after_stage1_lr:
            _train(student, adapter, tok, 1, args.after_stage1_lr, args.tokens, L, loop)
        before = layer_distances(student, adapter, val)[key]
        t0 = time.time()
        _train(student, adapter, tok, args.stage, lr, args.tokens, L, loop)
        after = layer_distances(student, adapter, val)[key]
        row = {
            "teacher": args.teacher,
            "mixer": args.mixer,
            "stage": args.stage,
            "lr": lr,
            **({"after_stage1_lr": args.after_stage1_lr} if args.stage == 2 and args.after_stage1_lr else {}),
            "tokens": args.tokens,
            "seq_len": L,
            "mean_before": sum(before.values()) / n,
            "mean_after": sum(after.values()) / n,
            "per_layer_before": [round(before[i], 2) for i in range(n)],
            "per_layer_after": [round(after[i], 2) for i in range(n)],
            "seconds": round(time.time() - t0, 1),
        }
        print(json.dumps(row), flush=True)
        if args.out:
            with Path(args.out).open("a") as f:
                f.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
