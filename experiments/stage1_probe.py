"""Stage 1 alone on a teacher at a few peak LRs: the student's mean and per-layer stage-1 distance before and after
2,048 tokens (16 steps of one 128-token sequence), seed 0; CPU is enough.

    python3 -m experiments.stage1_probe --teacher gemma3-270m --lrs 1e-3,1e-4,1e-5
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import mohawk
from mohawk.checkpoint import Checkpointer
from mohawk.config import DistillConfig
from mohawk.data import make_streams, take
from mohawk.evaluation import layer_distances
from mohawk.metrics import MetricsLog
from mohawk.stages import STAGES
from mohawk.train import StageBudget, train_stage


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="gemma3-270m")
    ap.add_argument("--lrs", default="1e-3,1e-4,1e-5")
    ap.add_argument("--tokens", type=int, default=2048)
    args = ap.parse_args()
    torch.set_num_threads(2)
    teacher, tok, adapter = mohawk.load_teacher(args.teacher)
    _, val_stream = make_streams("bundled", tok, 128, seed=0)
    val = take(val_stream, 4)
    n = adapter.num_layers
    for lr in map(float, args.lrs.split(",")):
        torch.manual_seed(0)
        student = mohawk.from_teacher(adapter)
        before = layer_distances(student, adapter, val)["stage1"]
        train, _ = make_streams("bundled", tok, 128, seed=1)
        budget = StageBudget(tokens=args.tokens, micro_tokens=128, grad_accum=1, lr=lr)
        t0 = time.time()
        loop = DistillConfig.from_dict({}).loop_settings()
        stage = STAGES[1](student, adapter)
        train_stage(stage, train.batches(1), budget, loop, checkpointer=Checkpointer(None), log=MetricsLog(None))
        after = layer_distances(student, adapter, val)["stage1"]
        row = {
            "lr": lr,
            "mean_before": sum(before.values()) / n,
            "mean_after": sum(after.values()) / n,
            "per_layer_before": [round(before[i], 2) for i in range(n)],
            "per_layer_after": [round(after[i], 2) for i in range(n)],
            "seconds": round(time.time() - t0, 1),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
