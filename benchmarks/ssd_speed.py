"""SSD vs attention speed: forward and forward+backward time at sequence lengths 1k-64k with a fixed token count per
call (batch = tokens / L), for

- ``sdpa``: causal scaled_dot_product_attention (flash attention on a recent GPU), q/k/v (b, h, L, d);
- ``mohawk_triton``: mohawk's own Triton scan (mohawk/mixers/kernels/ssd_*.py: what ``mohawk.ssd`` runs on CUDA),
  called as ``mohawk.ssd`` calls it (x * dt, dt * A and the D skip fused into its kernels), with its default launch
  (forward states "auto");
- with ``--two-pass``, the same scan with its forward chunk states forced (``ssd_launch.forced_launch``) to
  ``mohawk_walk`` (one walk of matmuls per (sequence, head)) and ``mohawk_two_pass`` (each chunk's own contribution in
  parallel, then an elementwise walk): what "auto" chooses between (the state gradients always walk);
- ``mamba_ssm``: mamba-ssm's Triton SSD kernel ``mamba_chunk_scan_combined`` (MOHAWK_SSD_KERNEL=mamba);
- ``mohawk_torch``: mohawk's PyTorch chunked scan (the fallback and reference), where memory allows;
- ``mohawk_compiled`` (with ``--compiled``): that scan through ``torch.compile``, where memory allows (one compilation
  per length and mode: slow to start).

Per-head B and C (groups = heads, state = head_dim), as the Phi-Mamba student has. Prints a markdown table and writes
benchmarks/results/ssd_speed-<device>.{json,md}. Run on a GPU:

    python3 -m benchmarks.ssd_speed [--tokens 65536] [--heads 32] [--head-dim 64] [--lengths 1024,...] [--compiled]
        [--two-pass]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import arg_parser, command, device_name, fmt, versions, write
from mohawk.evaluation.present import markdown_table
from mohawk.mixers.ssd import ssd_chunked

D_SKIP = None  # set in main: a (heads,) D for every SSD call


def timed(fn, warmup: int = 2, reps: int = 5) -> float:
    """Median milliseconds of fn() (CUDA-synchronised)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]


def inputs(b, L, h, p, n, dtype, grad):
    dev = "cuda"
    x = torch.randn(b, L, h, p, device=dev, dtype=dtype, requires_grad=grad)
    dt = F.softplus(torch.randn(b, L, h, device=dev) - 3).requires_grad_(grad)
    A = (-torch.rand(h, device=dev) - 0.5).requires_grad_(grad)
    B = torch.randn(b, L, h, n, device=dev, dtype=dtype, requires_grad=grad)
    C = torch.randn(b, L, h, n, device=dev, dtype=dtype, requires_grad=grad)
    return x, dt, A, B, C


def bench(name, make, run, backward: bool):
    args = make()

    def step():
        out = run(*args)
        if backward:
            out.float().sum().backward()

    try:
        return timed(step)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def report(rows: list[dict], device: str, vers: dict, cmd: str, tokens: int, h: int, p: int, n: int, out: Path):
    """Save ``rows`` (one dict per sequence length, as printed) as ssd_speed-<device>.json and .md under ``out``."""
    payload = {
        "device": device,
        "versions": vers,
        "command": cmd,
        "heads": h,
        "head_dim": p,
        "state": n,
        "dtype": "torch.bfloat16",
        "tokens_per_call": tokens,
        "rows": rows,
    }

    def ratio(a, b):
        return "-" if a is None or b is None else f"{a / b:.2f}x"

    lines = [
        f"# SSD vs attention, {device}",
        "",
        f"- command: `{cmd}`",
        f"- versions: {vers}",
        f"- {tokens:,} tokens per call (batch = tokens / L), {h} heads x {p}, state {n}, per-head B/C, "
        "D skip, bf16; median of 5 timed calls after 2 warm-up calls",
        "",
    ]
    header = ["L", "batch"]
    for tag in ("fwd", "fwd+bwd"):
        header += [f"SDPA {tag} ms", f"mohawk triton {tag} ms", f"mamba-ssm {tag} ms", f"mohawk torch {tag} ms"]
    header += ["mohawk compiled fwd+bwd ms", "SDPA / triton (fwd+bwd)", "mamba-ssm / triton (fwd+bwd)"]
    table = [
        [r["L"], r["batch"], fmt(r["sdpa_fwd_ms"]), fmt(r.get("mohawk_triton_fwd_ms"))]
        + [fmt(r.get("mamba_ssm_fwd_ms")), fmt(r["mohawk_torch_fwd_ms"])]
        + [fmt(r["sdpa_fwd_bwd_ms"]), fmt(r.get("mohawk_triton_fwd_bwd_ms"))]
        + [fmt(r.get("mamba_ssm_fwd_bwd_ms")), fmt(r["mohawk_torch_fwd_bwd_ms"])]
        + [fmt(r.get("mohawk_compiled_fwd_bwd_ms")), ratio(r["sdpa_fwd_bwd_ms"], r.get("mohawk_triton_fwd_bwd_ms"))]
        + [ratio(r.get("mamba_ssm_fwd_bwd_ms"), r.get("mohawk_triton_fwd_bwd_ms"))]
        + [ratio(r.get("mamba_ssm_fwd_ms"), r.get("mohawk_triton_fwd_ms"))]
        for r in rows
    ]
    lines += markdown_table([*header, "mamba-ssm / triton (fwd)"], table)
    if any(r.get("mohawk_two_pass_fwd_bwd_ms") for r in rows):
        lines += [
            "",
            'State computation forced (`--two-pass`; the triton columns above use the default, "auto"):',
            "",
        ]
        header = ["L", "walk fwd ms", "two-pass fwd ms", "walk fwd+bwd ms", "two-pass fwd+bwd ms"]
        table = [
            [r["L"], fmt(r.get("mohawk_walk_fwd_ms")), fmt(r.get("mohawk_two_pass_fwd_ms"))]
            + [fmt(r.get("mohawk_walk_fwd_bwd_ms")), fmt(r.get("mohawk_two_pass_fwd_bwd_ms"))]
            + [ratio(r.get("mohawk_walk_fwd_ms"), r.get("mohawk_triton_fwd_ms"))]
            + [ratio(r.get("mohawk_walk_fwd_bwd_ms"), r.get("mohawk_triton_fwd_bwd_ms"))]
            for r in rows
        ]
        lines += markdown_table([*header, "walk / default (fwd)", "walk / default (fwd+bwd)"], table)
    write("ssd_speed-" + device, payload, lines, out)


def main():
    ap = arg_parser(__doc__)
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768,65536")
    ap.add_argument("--compiled", action="store_true", help="also time the PyTorch scan through torch.compile")
    ap.add_argument(
        "--two-pass",
        action="store_true",
        help="also time the Triton scan with its forward chunk states forced to the walk and to two passes",
    )
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("ssd_speed needs a CUDA GPU")
    from mohawk.mixers.kernels import _mamba_chunk_scan, _triton_scan
    from mohawk.mixers.kernels.ssd_launch import forced_launch

    mamba_chunk_scan_combined = _mamba_chunk_scan()  # None when mamba-ssm is not installed
    ssd_triton = _triton_scan()
    compiled = torch.compile(ssd_chunked, dynamic=False)
    h, p = args.heads, args.head_dim
    global D_SKIP
    D_SKIP = torch.randn(h, device="cuda")
    n, dtype = p, torch.bfloat16
    rows = []
    for L in (int(x) for x in args.lengths.split(",")):
        b = max(1, args.tokens // L)
        row = {"L": L, "batch": b}
        for bwd in (False, True):
            tag = "fwd_bwd" if bwd else "fwd"

            def qkv():
                return [torch.randn(b, h, L, p, device="cuda", dtype=dtype, requires_grad=bwd) for _ in range(3)]

            row[f"sdpa_{tag}_ms"] = bench(
                "sdpa", qkv, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), bwd
            )
            if ssd_triton is not None:
                row[f"mohawk_triton_{tag}_ms"] = bench(
                    "triton",
                    lambda: inputs(b, L, h, p, n, dtype, bwd),
                    lambda x, dt, A, B, C: ssd_triton(x, dt, A, B, C, D_SKIP),
                    bwd,
                )
            for forced in ("walk", "two_pass") if ssd_triton is not None and args.two_pass else ():
                with forced_launch(forced):
                    row[f"mohawk_{forced}_{tag}_ms"] = bench(
                        forced,
                        lambda: inputs(b, L, h, p, n, dtype, bwd),
                        lambda x, dt, A, B, C: ssd_triton(x, dt, A, B, C, D_SKIP),
                        bwd,
                    )
            if mamba_chunk_scan_combined is not None:
                row[f"mamba_ssm_{tag}_ms"] = bench(
                    "mamba",
                    lambda: inputs(b, L, h, p, n, dtype, bwd),
                    lambda x, dt, A, B, C: mamba_chunk_scan_combined(x, dt, A, B, C, 64, D=D_SKIP),
                    bwd,
                )
            row[f"mohawk_torch_{tag}_ms"] = (
                bench(
                    "torch",
                    lambda: inputs(b, L, h, p, n, dtype, bwd),
                    lambda x, dt, A, B, C: ssd_chunked(x, dt, A, B, C, D_SKIP),
                    bwd,
                )
                if L <= 16384
                else None
            )
            row[f"mohawk_compiled_{tag}_ms"] = (
                bench(
                    "compiled",
                    lambda: inputs(b, L, h, p, n, dtype, bwd),
                    lambda x, dt, A, B, C: compiled(x, dt, A, B, C, D_SKIP),
                    bwd,
                )
                if L <= 16384 and args.compiled
                else None
            )
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    report(rows, device_name(), versions("triton", "mamba_ssm"), command(), args.tokens, h, p, n, Path(args.out))


if __name__ == "__main__":
    main()
