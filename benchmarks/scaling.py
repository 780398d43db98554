"""Data-parallel scaling of stage 3: tokens/s on 1 process and on N processes of the same machine (torchrun, FSDP2),
same batch per process, measured back to back by ``stage_throughput.py``; writes the ratio.

    python3 -m benchmarks.scaling --gpus 2 [--model phi-1_5] [--batch 8] [--seq-len 1024] [--steps 10]

Writes benchmarks/results/scaling-<model>-<device>-<N>gpu.{json,md} (and the two stage_throughput results).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import arg_parser, command, fmt, write
from mohawk.evaluation.present import markdown_table


def main():
    ap = arg_parser(__doc__)
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--model", default="phi-1_5")
    ap.add_argument("--batch", type=int, default=8, help="sequences per process")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    common = [
        "-m",
        "benchmarks.stage_throughput",
        "--model",
        args.model,
        "--stages",
        "3",
        "--no-baseline",
        "--batch",
        str(args.batch),
        "--seq-len",
        str(args.seq_len),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--out",
        args.out,
    ]
    results = {}
    for n in (1, args.gpus):
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"] if n > 1 else []
        subprocess.run([sys.executable, *launcher, *common], check=True)
        latest = max(
            Path(args.out).glob(f"stage_throughput-{args.model}-*-{n}gpu.json"), key=lambda p: p.stat().st_mtime
        )
        results[n] = json.loads(latest.read_text())
    one, many = (results[n]["rows"][-1] for n in (1, args.gpus))
    ratio = many["tokens_per_s"] / one["tokens_per_s"]
    dev = results[1]["device"]
    cmd = command()
    payload = {
        "device": dev,
        "gpus": args.gpus,
        "model": args.model,
        "command": cmd,
        "ratio": ratio,
        "one": one,
        "many": many,
        "runs": {str(n): r["command"] for n, r in results.items()},
        "versions": results[1]["versions"],
    }
    lines = [
        f"# Stage-3 scaling, {args.model}, 1 vs {args.gpus} x {dev}",
        "",
        f"- command: `{cmd}`",
        f"- versions: {payload['versions']}",
        f"- {args.batch} sequences of {args.seq_len} tokens per process; 1 process: plain loop; {args.gpus}: "
        "torchrun, FSDP2 (student and teacher sharded); mean of the steady steps after the warm-up, set-up not "
        "timed",
        "",
    ]
    table = []
    for n, r in ((1, one), (args.gpus, many)):
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        speed_up = f"{r['tokens_per_s'] / one['tokens_per_s']:.2f}x"
        table.append([n, r["batch"], fmt(r["tokens_per_s"], 0), fmt(r["step_ms"], 1), mfu, speed_up])
    lines += markdown_table(["processes", "global batch", "tokens/s", "step ms", "MFU", "speed-up"], table)
    write(f"scaling-{args.model}-{dev.split(' (')[0]}-{args.gpus}gpu", payload, lines, Path(args.out))


if __name__ == "__main__":
    main()
