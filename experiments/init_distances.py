"""Per-layer stage-1 (matrix) and stage-2 (block output) distances of a pure-SSD student at initialisation, the
teacher's and the transfer-only student's held-out perplexity, for one or more teachers; for QK-norm teachers
(Gemma 3) also without folding the QK-norm into the SSD's B and C (``mohawk.transfer._fold_head_norm``).

    python3 -m experiments.init_distances --teachers gemma3-270m,smollm2-135m --out results/gemma3-270m/init.json

CPU is enough: 8 x 128 held-out tokens of the bundled Gutenberg validation books (4 for the distances), seed 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import mohawk
import mohawk.transfer as transfer
from mohawk.data import make_streams, take
from mohawk.evaluation import layer_distances, perplexity


def measure(name: str, seq_len: int, sequences: int) -> dict:
    teacher, tok, adapter = mohawk.load_teacher(name)
    _, val_stream = make_streams("bundled", tok, seq_len, seed=0)
    val = take(val_stream, sequences)
    out = {
        "teacher_perplexity": perplexity(teacher, val, 4),
        "layer_types": getattr(teacher.config, "layer_types", None),
    }
    qk_norm = adapter.student_config().qk_norm
    fold = transfer._fold_head_norm
    for variant in ("default", "no_qk_norm_fold") if qk_norm else ("default",):
        if variant == "no_qk_norm_fold":
            transfer._fold_head_norm = lambda w, norm, gain, d: w
        try:
            torch.manual_seed(0)
            student = mohawk.from_teacher(adapter)
            d = layer_distances(student, adapter, val[: sequences // 2])
            out[variant] = {
                "stage1": d["stage1"],
                "stage2": d["stage2"],
                "transfer_only_perplexity": perplexity(student, val, 4),
            }
        finally:
            transfer._fold_head_norm = fold
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teachers", default="gemma3-270m,smollm2-135m")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/gemma3-270m/init.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = {"command": "python3 " + " ".join(sys.argv), "teachers": {}}
    for name in args.teachers.split(","):
        res["teachers"][name] = measure(name, args.seq_len, args.sequences)
        print(name, {k: v for k, v in res["teachers"][name].items() if k != "layer_types"}, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
