"""The launch settings of a decoding step's fused kernels (mohawk/mixers/kernels/decode_matvec.py's products and
decode_step.py's SSD step), swept on the GPU.

For each product of an SSD block's step (norm + in_proj, norm + gate + up, out_proj + residual, down + residual) and
each batch, every candidate setting of the kernel that batch takes (the register kernel below DOT_MIN_BATCH: BLOCK_N x
num_warps; the tensor-core one from there: BLOCK_N x BK x num_warps x num_stages, and around its default tile BLOCK_B x
the K split) is first checked against the PyTorch
reference, then timed the way a decoding step runs it: one CUDA graph launching it once per layer over that layer's own
weights (the whole model's: more than the L2 cache holds, as in a step). Beside them, in the same way: the plain
products (F.rms_norm, F.linear on cuBLAS, F.silu and the residual add as PyTorch ops), the module's default setting, and
on Hopper or later the default with programmatic dependent launch (each launch overlapping the one before;
decode_matvec.decode_pdl). The SSD step (conv shift, state update, gate) is timed with its default warps and each of
STEP_WARPS, on the arguments of each layer's call in one real decoding step, each checked against its reference first;
beside it, where mamba-ssm is installed (its Triton-only wheel: scripts/gpu_prepare.sh), mamba-ssm's
``selective_state_update`` on the same calls (the state update, D skip and gate; the conv and its shift done before,
untimed: mamba-ssm leaves them to causal-conv1d's CUDA kernel). Random weights of the real dimensions, bf16.

    python3 -m benchmarks.decode_matvec_sweep [--model smollm2-135m] [--batches 1,64] [--repeats 20] [--products ...]

Writes benchmarks/results/decode_matvec_sweep-<model>-<device>.{json,md}: per (batch, product) microseconds per launch
of plain, default (with and without PDL) and the best setting, and the products of a whole step (x layers) with each. On
the CPU (``--device cpu``, TRITON_INTERPRET=1) it is a smoke test of the sweep; its times mean nothing.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

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
from mohawk.mixers.kernels import decode_matvec as dm
from mohawk.parallel import resolve_device

PRODUCTS = ("in_proj", "gate_up", "out_proj", "down")
STEP = "ssd_step"  # the fused SSD step between in_proj and out_proj (mohawk/mixers/kernels/decode_step.py)
STEP_WARPS = (1, 2, 4, 8)
# candidate settings: the register kernel's rows per program and warps; the tensor-core kernel's rows per program,
# K chunk, and (warps, pipeline stages)
MATVEC_BLOCK_N = (1, 2, 4, 8, 16)
MATVEC_WARPS = (2, 4, 8)
DOT_BLOCK_N = (16, 32, 64)
DOT_BLOCK_K = (64, 128)
DOT_WARPS_STAGES = ((4, 3), (4, 4), (8, 3))
# around the tensor-core kernel's default tile: sequences per program (more programs, each weight read again from
# L2) and K split over programs per tile (a shorter K loop each, plus the last program's sum of the partials)
DOT_BLOCK_B = (16, 32, 64)
DOT_SPLIT = (1, 2, 3, 4)


def layer_products(student, batch: int, device, dtype) -> dict[str, list[dict]]:
    """{product: [decode_matvec's keyword arguments for each layer]} of a pure SSD student's step at ``batch``
    sequences: the layer's own weights, random inputs (x, and the residual h) of the step's shapes."""
    g = torch.Generator(device="cpu").manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g).to(device, dtype)  # noqa: E731
    out: dict[str, list[dict]] = {p: [] for p in PRODUCTS}
    for layer in student.model.layers:
        mixer, mlp = layer.mixer, layer.mlp
        hidden = layer.norm1.weight.shape[0]
        h = rand(batch, hidden)
        n1, n2 = layer.norm1, layer.norm2
        out["in_proj"].append(
            dict(x=h, weight=mixer.in_proj.weight, bias=mixer.in_proj.bias, norm_weight=n1.weight, eps=n1.eps)
        )
        out["gate_up"].append(
            dict(
                x=h,
                weight=mlp.gate_proj.weight,
                bias=mlp.gate_proj.bias,
                norm_weight=n2.weight,
                eps=n2.eps,
                up_weight=mlp.up_proj.weight,
                up_bias=mlp.up_proj.bias,
            )  # fmt: skip
        )
        out["out_proj"].append(
            dict(x=rand(batch, mixer.out_proj.weight.shape[1]), weight=mixer.out_proj.weight, bias=mixer.out_proj.bias)
            | {"residual": h}
        )
        out["down"].append(
            dict(x=rand(batch, mlp.down_proj.weight.shape[1]), weight=mlp.down_proj.weight, bias=mlp.down_proj.bias)
            | {"residual": h}
        )
    return out


def recorded_steps(student, batch: int, device) -> list[tuple[tuple, dict]]:
    """decode_step's (args, kwargs) of each SSD layer in one real decoding step of ``student`` at ``batch``
    sequences (a prefilled cache; the fused step taken as generate takes it: on CUDA, or with
    MOHAWK_DECODE_KERNEL=triton in Triton's interpreter)."""
    from mohawk.mixers.kernels import decode_step as ds
    from mohawk.models import MohawkCache

    calls, real = [], ds.decode_step
    ds.decode_step = lambda *a, **k: calls.append((a, k)) or real(*a, **k)
    try:
        ids = torch.randint(0, student.config.vocab_size, (batch, 8), device=device)
        cache = MohawkCache()
        student(ids, past_key_values=cache, use_cache=True)
        student(ids[:, -1:], past_key_values=cache, use_cache=True)
    finally:
        ds.decode_step = real
    return calls


def _step_inputs(call):
    """A copy of one recorded call whose in-place buffers (conv window, state) are its own."""
    a, k = call
    a = list(a)
    a[1], a[7] = a[1].clone(), a[7].clone()  # conv_state, state
    return a, dict(k)


def step_agrees(call, warps: int) -> float:
    """max relative difference of y and the updated state between decode_step with ``warps`` and the reference."""
    from mohawk.mixers.kernels import decode_step as ds

    (a1, k1), (a2, k2) = _step_inputs(call), _step_inputs(call)
    y1 = ds.decode_step(*a1, **k1, num_warps=warps).float()
    y2 = ds.decode_step_reference(*a2, **k2).float()
    rel = lambda u, v: float((u - v).abs().max() / v.abs().max().clamp_min(1e-12))  # noqa: E731
    return max(rel(y1, y2), rel(a1[7], a2[7]), rel(a1[1].float(), a2[1].float()))


def sweep_step(calls, batch: int, device, repeats: int, tol: float) -> dict:
    """The fused SSD step at its default warps (decode_step.STEP_WARPS) and each of STEP_WARPS, over every layer's
    recorded call."""
    from mohawk.mixers.kernels import decode_step as ds

    state = calls[0][0][7]
    heads, p, n = state.shape[1:]
    row = {"product": STEP, "batch": batch, "n": f"{heads} heads x {p} x {n} state", "k": "-", "layers": len(calls)}
    row["plain_us"] = None
    row["default"] = {"path": "step", "num_warps": ds.STEP_WARPS}
    row["default_us"] = time_per_launch([lambda c=c: ds.decode_step(*c[0], **c[1]) for c in calls], device, repeats)
    row["pdl_us"] = (
        time_per_launch([lambda c=c: ds.decode_step(*c[0], **c[1], pdl=True) for c in calls], device, repeats)
        if pdl_possible(device)
        else None
    )
    row |= sweep_mamba(calls, device, repeats, tol)
    settings = [{"path": "step", "num_warps": w} for w in STEP_WARPS]
    return row | try_settings(
        settings,
        lambda s: step_agrees(calls[0], s["num_warps"]),
        lambda s: time_per_launch(
            [lambda c=c: ds.decode_step(*c[0], **c[1], num_warps=s["num_warps"]) for c in calls], device, repeats
        ),
        tol,
    )


def mamba_update(call):
    """The recorded SSD step ``call`` as mamba-ssm's ``selective_state_update`` takes it: (kwargs, reference) with the
    conv and its shift applied first (x, B, C in the call's dtype, as a conv kernel would leave them), mamba-ssm's
    Mamba-2 layout (per-head dt, dt_bias, A, D broadcast over head_dim and state by stride-0 views) and its own copy
    of the state; reference() gives (y, new state) in float32 from mohawk.mixers.ssd.ssd_step on the same inputs.
    Any gate is mamba-ssm's y * silu(z) here (SSD students from attention gate y * z: the same reads and writes).
    None where x is not scaled by dt (Discrete Mamba-2), which mamba-ssm cannot do."""
    from mohawk.mixers.kernels.decode_step import conv_step_reference, step_and_decay
    from mohawk.mixers.ssd import ssd_step

    a, k = _step_inputs(call)
    xbc, conv_state, conv_weight, conv_bias, dt, A, D, state, z = a
    if k.get("x_over_dt"):
        return None
    heads, groups, mode = k["heads"], k["groups"], k.get("dt_mode", "given")
    b, _, p, n = state.shape
    x, B, C = (
        conv_step_reference(xbc, conv_state, conv_weight, conv_bias, k["conv_silu"])
        .to(xbc.dtype)
        .split([heads * p, groups * n, groups * n], dim=-1)
    )
    x, B, C = x.reshape(b, heads, p), B.reshape(b, groups, n), C.reshape(b, groups, n)
    bias = k.get("dt_bias") if mode == "softplus_bias" else None
    dt32, A32 = step_and_decay(dt, A, bias, mode, k.get("a_mode", "given"), b, heads, xbc.device)
    dt = torch.ones(b, heads, device=xbc.device) if mode == "ones" else dt  # mamba-ssm makes its own dt from this
    gated = k.get("gate", "none") != "none"
    kwargs = {
        "state": state,
        "x": x,
        "dt": dt[..., None].expand(b, heads, p),
        "A": A32[:, None, None].expand(heads, p, n),
        "B": B,
        "C": C,
        "D": None if D is None else D.float()[:, None].expand(heads, p),
        "z": z.reshape(b, heads, p) if gated else None,
        "dt_bias": None if bias is None else bias.float()[:, None].expand(heads, p),
        "dt_softplus": mode in ("softplus", "softplus_bias"),
    }

    def reference():
        y, new = ssd_step(x.float(), dt32, A32, B, C, state.clone(), D)
        return (y.float() * F.silu(z.float().reshape(b, heads, p)) if gated else y.float()), new

    return kwargs, reference


@torch.no_grad()
def sweep_mamba(calls, device, repeats: int, tol: float, update=None) -> dict:
    """mamba-ssm's ``selective_state_update`` (``update``: the installed one by default) on each recorded step's
    state update, checked against :func:`mamba_update`'s reference, then timed as the fused step is:
    {"mamba_ssm_us", "mamba_ssm_rel_err", "mamba_ssm"} (the last says why there is no time: not installed, a step it
    does not compute, or its error over ``tol``)."""
    from mohawk.mixers.kernels import mamba_triton

    update = update or mamba_triton("selective_state_update", "selective_state_update")
    out = {"mamba_ssm_us": None, "mamba_ssm_rel_err": None, "mamba_ssm": "not installed"}
    mapped = [mamba_update(c) for c in calls]
    if update is None or any(m is None for m in mapped):
        return out | ({} if update is None else {"mamba_ssm": "a step it does not compute"})
    gate = calls[0][1].get("gate", "none")
    out["mamba_ssm"] = "timed" + (
        f", its y * silu(z) gate for the step's {gate}" if gate not in ("none", "mul_silu") else ""
    )
    kwargs, reference = mapped[0]
    y_ref, state_ref = reference()
    y = update(**kwargs).float()
    rel = lambda u, v: float((u - v).abs().max() / v.abs().max().clamp_min(1e-12))  # noqa: E731
    out["mamba_ssm_rel_err"] = max(rel(y, y_ref), rel(kwargs["state"], state_ref))
    if not out["mamba_ssm_rel_err"] <= tol:  # NaN too: a diverged state
        return out | {"mamba_ssm": f"differs from the reference by {out['mamba_ssm_rel_err']:.2g}"}
    us = time_per_launch([lambda kw=kw: update(**kw) for kw, _ in mapped], device, repeats)
    return out | {"mamba_ssm_us": us}


def plain(x, weight, bias=None, norm_weight=None, eps=1e-6, up_weight=None, up_bias=None, residual=None):
    """The product as PyTorch ops (what a step runs with MOHAWK_DECODE_MATVEC=plain, norms uncompiled)."""
    u = F.rms_norm(x, (x.shape[-1],), norm_weight, eps) if norm_weight is not None else x
    y = F.linear(u, weight, bias)
    if up_weight is not None:
        y = F.silu(y) * F.linear(u, up_weight, up_bias)
    return y if residual is None else residual + y


def candidates(batch: int, n: int, k: int, gated: bool, normed: bool = False) -> list[dict]:
    """decode_matvec's settings to try for one product: the register kernel's below DOT_MIN_BATCH sequences (rows
    of W a program holds within 4 TILEs of registers), the tensor-core kernel's from there; between 2 and
    DOT_MIN_BATCH - 1 sequences also a few of the tensor-core kernel's (its tile padded to 16 rows), to find whether
    DOT_MIN_BATCH should be lower. A ``normed`` product (the norm folded in) also tries each of the tensor-core
    kernel's ways of applying it (decode_matvec.NORM_MODES) at that way's default tile, and "folded" at BK = 64 with
    Triton's stages and at BK = 128 over 4 stages, each also with 16 rows a program (more programs)."""
    if batch < dm.DOT_MIN_BATCH:
        kb = 1 << (k - 1).bit_length()
        matvec = [
            {"path": "matvec", "block_n": bn, "num_warps": w}
            for bn, w in itertools.product(MATVEC_BLOCK_N, MATVEC_WARPS)
            if bn * kb * (2 if gated else 1) <= 4 * dm.TILE
        ]
        padded = [
            {"path": "dot", "block_n": bn, "block_k": DOT_BLOCK_K[0], "num_warps": w, "num_stages": st}
            for bn, (w, st) in itertools.product(DOT_BLOCK_N[:2], DOT_WARPS_STAGES[:1])
        ]
        return matvec + (padded if batch > 1 else [])
    grid = [
        {"path": "dot", "block_n": bn, "block_k": bk, "num_warps": w, "num_stages": st}
        for bn, bk, (w, st) in itertools.product(DOT_BLOCK_N, DOT_BLOCK_K, DOT_WARPS_STAGES)
    ]
    base = default_setting(batch, n, k, gated, dm.decode_norm_mode() if normed else None)
    around = [
        base | {"block_b": bb, "split_k": sp}
        for bb, sp in itertools.product(DOT_BLOCK_B, DOT_SPLIT)
        if bb <= max(16, 1 << (batch - 1).bit_length()) and (bb, sp) != (base["block_b"], 1)
    ]
    if not normed:
        return grid + around
    folded = default_setting(batch, n, k, gated, "folded")
    variants = [{"block_k": 64, "num_stages": None}, {"block_k": 128, "num_stages": 4}]
    modes = [default_setting(batch, n, k, gated, m) for m in dm.NORM_MODES] + [
        folded | v | bn for v in variants for bn in ({}, {"block_n": 16})
    ]
    return grid + around + [m for i, m in enumerate(modes) if m not in modes[:i]]


def default_setting(batch: int, n: int, k: int, gated: bool, norm_mode: str | None = None) -> dict:
    """The setting decode_matvec takes without overrides, in candidates' terms; a normed product's (the norm folded
    in) with ``norm_mode``, whose tile depends on it."""
    if batch < dm.DOT_MIN_BATCH:
        bn, kb = dm.block_sizes(n, k, gated)
        return {"path": "matvec", "block_n": bn, "num_warps": dm.matvec_warps(bn, kb, gated)}
    bb, bn, bk, st = dm.dot_block_sizes(batch, n, k, norm_mode == "folded")
    return (
        {"path": "dot", "block_n": bn, "block_k": bk, "num_warps": 4, "num_stages": st}
        | {"block_b": bb, "split_k": dm.dot_split(batch, n, k)}
        | ({"norm_mode": norm_mode} if norm_mode else {})
    )


def try_settings(settings: list[dict], error, timer, tol: float) -> dict:
    """Each setting checked first (``error(setting)``: its largest relative difference from the reference), then,
    within ``tol``, timed (``timer(setting)``: us per launch); a wrong setting is reported, never timed as a winner.
    {"best": the fastest entry or None, "failed": the entries over tol, "top": the five fastest, "tried": all}, each
    entry {"setting", "rel_err", "us"}."""
    tried = []
    for setting in settings:
        entry = {"setting": setting, "rel_err": error(setting), "us": None}
        if entry["rel_err"] <= tol:
            entry["us"] = timer(setting)
        tried.append(entry)
    timed = sorted((t for t in tried if t["us"] is not None), key=lambda t: t["us"])
    return {
        "best": timed[0] if timed else None,
        "failed": [t for t in tried if t["us"] is None],
        "top": timed[:5],
        "tried": tried,
    }


def time_per_launch(fns, device, repeats: int) -> float:
    """Microseconds per call of ``fns`` (one per layer), run back to back: on CUDA, replays of one graph that calls
    each once (a decoding step's launches); elsewhere an eager loop."""
    for f in fns:
        f()
    sync(device)
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(repeats):
            for f in fns:
                f()
        return (time.perf_counter() - t0) * 1e6 / (repeats * len(fns))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture wants
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in fns:
            f()
    graph.replay()
    sync(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    sync(device)
    return start.elapsed_time(end) * 1e3 / (repeats * len(fns))


def pdl_possible(device) -> bool:
    """Whether programmatic dependent launch can be timed here: a CUDA GPU of compute capability 9 or more."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def _overrides(setting: dict) -> dict:
    """decode_matvec's keyword arguments of a setting (None: the kernel's own default)."""
    return {a: v for a, v in setting.items() if v is not None}


def agrees(kw: dict, setting: dict) -> float:
    """max |kernel - reference| / max |reference| of one layer's product with ``setting``."""
    got = dm.decode_matvec(**kw, **_overrides(setting)).float()
    ref = dm.decode_matvec_reference(**kw).float()
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def sweep_one(kws: list[dict], batch: int, device, repeats: int, tol: float) -> dict:
    """The plain products, the default setting and every candidate for one product at one batch."""
    w = kws[0]["weight"]
    n, k, gated = w.shape[0], w.shape[1], kws[0].get("up_weight") is not None
    normed = kws[0].get("norm_weight") is not None
    row = {"batch": batch, "n": n, "k": k, "layers": len(kws)}
    row["plain_us"] = time_per_launch([lambda kw=kw: plain(**kw) for kw in kws], device, repeats)
    default = default_setting(batch, n, k, gated, dm.decode_norm_mode() if normed else None)
    settings = candidates(batch, n, k, gated, normed)
    row["default"] = default
    row["default_us"] = time_per_launch(
        [lambda kw=kw: dm.decode_matvec(**kw) for kw in kws], device, repeats
    )  # decode_matvec without overrides: the default as it runs
    row["pdl_us"] = (
        time_per_launch([lambda kw=kw: dm.decode_matvec(**kw, pdl=True) for kw in kws], device, repeats)
        if pdl_possible(device)
        else None
    )  # the default launched with programmatic dependent launch (dm.decode_pdl)
    out = row | try_settings(
        settings + ([] if default in settings else [default]),  # the default competes too
        lambda s: agrees(kws[0], s),
        lambda s: time_per_launch(
            [lambda kw=kw: dm.decode_matvec(**kw, **_overrides(s)) for kw in kws], device, repeats
        ),  # "folded": each layer's fold made at the warm-up before the graph is captured, as in a decoding step
        tol,
    )
    if normed and default["path"] == "dot":  # each way of applying the norm at its default tile (us; None: failed)
        us = {describe(t["setting"]): t["us"] for t in out["tried"]}
        out["norm_modes"] = {m: us.get(describe(default_setting(batch, n, k, gated, m))) for m in dm.NORM_MODES}
    return out


def describe(s: dict | None) -> str:
    if s is None:
        return "-"
    keys = {"matvec": ("block_n", "num_warps"), "step": ("num_warps",)}.get(
        s["path"], ("block_b", "block_n", "block_k", "split_k", "num_warps", "num_stages", "norm_mode")
    )
    keys = [k for k in keys if k in s]
    return f"{s['path']} " + ", ".join(f"{k}={s[k] if s[k] is not None else 'triton'}" for k in keys)


def main() -> None:
    p = arg_parser(__doc__)
    p.add_argument("--model", default="smollm2-135m", help="dimensions: smollm2-135m, phi-1_5 or tiny")
    p.add_argument(
        "--batches", default="1,64", help="sequences per step, comma-separated (each up to MAX_BATCH; e.g. 1,4,16,64)"
    )
    p.add_argument("--repeats", type=int, default=20, help="graph replays timed per setting")
    p.add_argument("--tol", type=float, default=2e-2, help="largest relative error a setting may have to be timed")
    p.add_argument("--device", default="auto", help="auto (cuda where there is one), cuda, or cpu (TRITON_INTERPRET=1)")
    p.add_argument(
        "--products", default=",".join((*PRODUCTS, STEP)),
        help=f"what to sweep, comma-separated, of {', '.join((*PRODUCTS, STEP))} (default: all); a subset names its "
        "files apart (e.g. in_proj,gate_up: the two products with the norm folded in, and their norm modes)",
    )  # fmt: skip
    args = p.parse_args()
    chosen = args.products.split(",")
    if not chosen or any(c not in (*PRODUCTS, STEP) for c in chosen):
        raise SystemExit(
            f"decode_matvec_sweep: --products takes {', '.join((*PRODUCTS, STEP))} (comma-separated), "
            f"got {args.products}"
        )
    os.environ["MOHAWK_DECODE_PDL"] = "0"  # every setting timed without PDL; its own column adds it to the default
    device = resolve_device(args.device)
    if dm.triton is None or (device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1"):
        raise SystemExit("decode_matvec_sweep: needs a GPU with Triton, or TRITON_INTERPRET=1 on the CPU")
    batches = [int(b) for b in args.batches.split(",")]
    if any(not 1 <= b <= dm.MAX_BATCH for b in batches):
        raise SystemExit(f"decode_matvec_sweep: --batches must be within 1-{dm.MAX_BATCH}, got {args.batches}")
    dtype = torch.bfloat16
    _, _, student = random_teacher_and_student(model_config(args.model), device, dtype)
    rows = []
    payload = {
        "command": command(),
        "device": device_name(device),
        "versions": versions("triton", "mamba_ssm"),
        "rows": rows,
    }
    subset = (
        "" if set(chosen) == {*PRODUCTS, STEP} else "-only-" + "-".join(c for c in (*PRODUCTS, STEP) if c in chosen)
    )
    stem = f"decode_matvec_sweep-{args.model}{subset}-{device_name(device).replace(' ', '_')}"
    with torch.no_grad():
        for batch in batches:
            products = layer_products(student, batch, device, dtype)
            for name in (p for p in PRODUCTS if p in chosen):
                row = {"product": name} | sweep_one(products[name], batch, device, args.repeats, args.tol)
                rows.append(row)
                print(
                    f"batch {batch} {name} ({row['n']} x {row['k']}): plain {row['plain_us']:.2f} us, default "
                    f"{row['default_us']:.2f}, best {fmt(row['best'] and row['best']['us'])} "
                    f"({describe(row['best'] and row['best']['setting'])}); {len(row['failed'])} failed",
                    flush=True,
                )
            calls = recorded_steps(student, batch, device) if STEP in chosen else []
            if calls:  # a pure SSD student's layers all take the fused step where it runs
                row = sweep_step(calls, batch, device, args.repeats, args.tol)
                rows.append(row)
                print(
                    f"batch {batch} {STEP}: default {row['default_us']:.2f} us, best "
                    f"{fmt(row['best'] and row['best']['us'])} ({describe(row['best'] and row['best']['setting'])}); "
                    f"mamba-ssm's selective_state_update {fmt(row['mamba_ssm_us'])} us ({row['mamba_ssm']})",
                    flush=True,
                )
            write(stem, payload, report(payload, args), Path(args.out))  # after each batch: a cut run keeps them


def _shape(r: dict) -> str:
    return r["n"] if r["k"] == "-" else f"{r['n']} x {r['k']}"


def report(payload: dict, args) -> list[str]:
    """The markdown: one table per batch, and the products of a whole step with each choice."""
    lines = [
        f"# Fused decode products' settings, {args.model}, {payload['device']}",
        f"- command: `{payload['command']}`",
        f"- versions: {payload['versions']}",
        "- us per launch, each product launched once per layer over that layer's weights in one CUDA graph (bf16, "
        "random weights of the real dimensions); plain = F.rms_norm, F.linear (cuBLAS), F.silu and the add as "
        "PyTorch ops; default = decode_matvec without overrides or PDL; default + PDL = the same launched with "
        "programmatic dependent launch (compute capability 9+; each launch overlaps the one before: "
        "`MOHAWK_DECODE_PDL=1`); best = "
        f"the fastest candidate whose result is within {args.tol} (relative) of the reference",
        "",
    ]
    for batch in dict.fromkeys(r["batch"] for r in payload["rows"]):
        rows = [r for r in payload["rows"] if r["batch"] == batch]
        lines += [
            f"## {batch} sequence{'s' if batch > 1 else ''}",
            "",
            "| product | N x K | plain us | default us (setting) | default + PDL us | best us (setting) | "
            "best / default | failed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            best = r["best"]
            lines.append(
                f"| {r['product']} | {_shape(r)} | {fmt(r['plain_us'])} | {r['default_us']:.2f} "
                f"({describe(r['default'])}) | {fmt(r.get('pdl_us'))} | {fmt(best and best['us'])} "
                f"({describe(best and best['setting'])}) | "
                f"{fmt(best and best['us'] / r['default_us'])} | {len(r['failed'])} |"
            )
        total = {
            k: sum(f(r) * r["layers"] for r in rows)
            for k, f in (
                ("plain", lambda r: r["plain_us"] if r["plain_us"] is not None else r["default_us"]),
                ("default", lambda r: r["default_us"]),
                ("best", lambda r: r["best"]["us"] if r["best"] else r["default_us"]),
                ("pdl", lambda r: r["pdl_us"] if r.get("pdl_us") is not None else float("nan")),
            )
        }
        modes = [r for r in rows if r.get("norm_modes")]
        if modes:
            lines += [
                "",
                "The norm's way in the tensor-core kernel, each at its default tile (decode_matvec.NORM_MODES; us "
                "per launch): "
                + "; ".join(
                    f"{r['product']} " + ", ".join(f"{m} {fmt(us)}" for m, us in r["norm_modes"].items()) for r in modes
                )
                + ".",
            ]
        step = next((r for r in rows if r["product"] == STEP), None)
        if step is not None and "mamba_ssm" in step:
            lines += [
                "",
                f"The SSD step beside mamba-ssm's `selective_state_update` on the same calls ({step['mamba_ssm']}): "
                f"the fused step {step['default_us']:.2f} us per layer with the conv and its shift, mamba-ssm "
                f"{fmt(step['mamba_ssm_us'])} us without them (relative error "
                f"{'-' if step['mamba_ssm_rel_err'] is None else format(step['mamba_ssm_rel_err'], '.1e')}).",
            ]
        lines += [
            "",
            f"A step's products ({' + '.join(r['product'] for r in rows)}, x {rows[0]['layers']} layers; the SSD "
            "step at its default in the plain total): plain "
            f"{total['plain']:,.1f} us, default {total['default']:,.1f} us, best settings {total['best']:,.1f} us"
            + (f", default with PDL {total['pdl']:,.1f} us." if total["pdl"] == total["pdl"] else "."),
            "",
        ]
    return lines


if __name__ == "__main__":
    main()
