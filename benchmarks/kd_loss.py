"""Stage 3's KD loss with a large vocabulary: the plain loss on materialised (tokens, vocab) logits vs the chunked
LM-head + KD loss (``--loss-chunk``), forward + backward, Gemma 3 270M's head (hidden 640, vocabulary 262,144) by
default.

    python3 -m benchmarks.kd_loss [--tokens 2048] [--chunks 512,2048] [--hidden 640] [--vocab 262144]

Each variant runs in its own process (peak memory: CUDA's max allocated, or on the CPU the process's peak RSS
above its baseline); time is the median of ``--repeats`` runs. Writes benchmarks/results/kd_loss-<device>.{json,md}.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import arg_parser, command, device_name, sync, versions, write
from mohawk.evaluation.present import markdown_table
from mohawk.parallel import resolve_device
from mohawk.stages.distillation import distillation_loss
from mohawk.stages.fused_loss import fused_distillation_loss


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mib() -> float:
    """The process's resident memory now (Linux /proc; elsewhere its peak so far)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return _peak_rss_mib()


def run_variant(chunk: int, tokens: int, hidden: int, vocab: int, repeats: int) -> dict:
    """One variant in this process: seconds per forward + backward and peak memory (MiB)."""
    device = resolve_device("auto")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False, device=device, dtype=dtype)
    t_head = torch.nn.Linear(hidden, vocab, bias=False, device=device, dtype=dtype)
    h = torch.randn(1, tokens, hidden, device=device, dtype=dtype, requires_grad=True)
    th = torch.randn(1, tokens, hidden, device=device, dtype=dtype)
    ids = torch.randint(0, vocab, (1, tokens), device=device)
    base = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_now_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        if chunk:
            loss = fused_distillation_loss(h, head, th, t_head, ids, 1.0, 1.0, 0.0, chunk)[0]
        else:
            with torch.no_grad():
                t_logits = t_head(th)
            loss = distillation_loss(head(h), t_logits, ids, 1.0, 1.0, 0.0)[0]
        loss.backward()
        sync(device)
        times.append(time.perf_counter() - t0)
        h.grad = None
        head.weight.grad = None
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mib()
    return {"chunk": chunk, "seconds": statistics.median(times), "peak_mib": peak - base, "loss": float(loss)}


def main():
    ap = arg_parser(__doc__)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=640)
    ap.add_argument("--vocab", type=int, default=262144)
    ap.add_argument("--chunks", default="512,2048")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variant", type=int, default=None, help="internal: run one chunk size in this process")
    args = ap.parse_args()
    shape = (args.tokens, args.hidden, args.vocab, args.repeats)
    if args.variant is not None:
        print(json.dumps(run_variant(args.variant, *shape)))
        return
    rows = []
    for chunk in [0, *map(int, args.chunks.split(","))]:
        cmd = [sys.executable, "-m", "benchmarks.kd_loss", "--variant", str(chunk), "--tokens", str(args.tokens)]
        cmd += ["--hidden", str(args.hidden), "--vocab", str(args.vocab), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    device = resolve_device("auto")
    dev, cmd = device_name(device), command()
    plain = rows[0]
    payload = {
        "device": dev,
        "versions": versions(),
        "command": cmd,
        "tokens": args.tokens,
        "hidden": args.hidden,
        "vocab": args.vocab,
        "rows": rows,
    }
    lines = [
        f"# Stage-3 KD loss, {args.tokens} tokens x vocabulary {args.vocab:,} (hidden {args.hidden}), {dev}",
        "",
        f"- command: `{cmd}`",
        f"- versions: {payload['versions']}",
        "- forward + backward of KL(teacher || student) through both LM heads; peak memory above the inputs (CUDA: max "
        "allocated; CPU: the process's peak RSS, coarser); time: median of the repeats",
        "",
    ]
    table = []
    for r in rows:
        name = "plain (materialised logits)" if not r["chunk"] else f"chunked, {r['chunk']} tokens"
        mem = f"{r['peak_mib'] / plain['peak_mib']:.2f}x" if plain["peak_mib"] > 0 else "-"
        table.append(
            [name, f"{r['peak_mib']:,.0f}", mem, f"{r['seconds'] / plain['seconds']:.2f}x", f"{r['loss']:.6f}"]
        )
    lines += markdown_table(["loss", "peak MiB", "memory vs plain", "time vs plain", "loss value"], table)
    write(f"kd_loss-{dev.split(' (')[0].replace(' ', '_')}", payload, lines, Path(args.out))


if __name__ == "__main__":
    main()
