"""Stage-1 peak memory and time, whole matrices vs row tiles: one layer of a model's dimensions (teacher attention
matrix vs SSD student matrix, Frobenius distance, forward + backward), batch 1, at 1k-16k tokens.

    python3 -m benchmarks.stage1_memory [--model smollm2-135m] [--lengths 1024,2048,4096,8192,16384] [--tile 256]

Writes benchmarks/results/stage1_memory-<model>-<device>.{json,md}.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks.common import (
    arg_parser,
    command,
    device_name,
    fmt,
    model_config,
    random_teacher_and_student,
    sync,
    versions,
    write,
)
from mohawk.evaluation.present import markdown_table
from mohawk.parallel import resolve_device
from mohawk.stages.orientation import frobenius_distance, tiled_frobenius_distance


def measure(fn, device) -> dict:
    try:
        fn()  # warm-up
        sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        t0 = time.perf_counter()
        fn()
        sync(device)
        ms = 1e3 * (time.perf_counter() - t0)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else None
        return {"ms": ms, "peak_gib": peak}
    except torch.OutOfMemoryError:
        return {"oom": True}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main():
    ap = arg_parser(__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    ap.add_argument("--tile", type=int, default=256)
    args = ap.parse_args()
    device = resolve_device("auto")
    cfg = model_config(args.model)
    cfg.num_hidden_layers = 1
    cfg.max_position_embeddings = max(cfg.max_position_embeddings, max(map(int, args.lengths.split(","))))
    _, adapter, student = random_teacher_and_student(cfg, device)
    layer = student.model.layers[0].mixer
    teacher = adapter.attention(0)
    rows = []
    for L in map(int, args.lengths.split(",")):
        u = torch.randn(1, L, cfg.hidden_size, device=device)

        def naive():
            with torch.no_grad():
                A = teacher.materialize(u)
            frobenius_distance(A, layer.materialize(u)).mean().backward()

        def tiled():
            tiled_frobenius_distance(teacher, layer, u, args.tile).mean().backward()

        row = {
            "L": L,
            **{f"naive_{k}": v for k, v in measure(naive, device).items()},
            **{f"tiled_{k}": v for k, v in measure(tiled, device).items()},
        }
        rows.append(row)
        print(row, flush=True)
    dev = device_name(device)
    cmd = command()
    payload = {
        "device": dev,
        "versions": versions(),
        "command": cmd,
        "model": args.model,
        "tile": args.tile,
        "rows": rows,
    }
    lines = [
        f"# Stage-1 loss memory, {args.model} layer dimensions, {dev}",
        "",
        f"- command: `{cmd}`",
        f"- versions: {payload['versions']}",
        f"- one layer, batch 1, float32 matrices, forward + backward of the Frobenius distance; tiled: blocks "
        f"of {args.tile} rows, recomputed in the backward pass; peak = allocated above the inputs",
        "",
    ]
    table = []
    for r in rows:
        n, t = r.get("naive_peak_gib"), r.get("tiled_peak_gib")
        table.append(
            [r["L"], fmt(n) if not r.get("naive_oom") else "OOM", fmt(t) if not r.get("tiled_oom") else "OOM"]
            + [f"1/{n / t:.1f}" if n and t else "-", fmt(r.get("naive_ms"), 1), fmt(r.get("tiled_ms"), 1)]
        )
    header = ["L", "naive peak GiB", "tiled peak GiB", "tiled / naive memory", "naive ms", "tiled ms"]
    lines += markdown_table(header, table)
    write(f"stage1_memory-{args.model}-{dev.split(' (')[0]}", payload, lines, Path(args.out))


if __name__ == "__main__":
    main()
