"""Decoding speed as a server sees it: students (pure SSD, and a hybrid keeping 4 attention layers) decoding through
``generate``'s fast path (CUDA graphs of several steps, tokens chosen on the device, the fused SSD step, a static KV
cache for attention layers) against the teacher at its best (transformers' static KV cache, its step compiled into
CUDA graphs), after a prompt of 1k-32k tokens, batch 1-64, bf16, random weights of the real dimensions
(``--model smollm2-135m`` or ``phi-1_5``; ``tiny`` with ``--device cpu`` for a smoke test).

    python3 -m benchmarks.decode_speed [--model smollm2-135m] [--students pure,hybrid4] \\
        [--contexts 1024,4096,16384,32768] [--batches 1,16,64] [--rows pure:4096x1,hybrid4:32768x16] [--block 16]

Per (student, context, batch): ms per decoding step (a step = one token for each sequence) of the teacher, of the
student replaying one ``--block``-step graph per ``--block`` tokens and of the student replaying a one-step graph per
token (what the architecture gains vs what the decoding loop gains), each beside its memory roofline (weights + the
state or KV bytes a step reads and writes, over ``--bandwidth-gbs``); the time to first token (prefill); the CUDA
kernels in one student step (torch.profiler over one replay of the one-step graph); the decoding state's size and peak
GPU memory. Writes benchmarks/results/decode_speed-<model>-<device>.{json,md} after every row.
"""

from __future__ import annotations

import os
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
from mohawk.mixers.kernels.decode_matvec import (
    AUTO_BATCHES,
    CHOICES,
    DOT_MIN_BATCH,
    MAX_BATCH,
    NORM_DEFAULT,
    NORM_MODES,
    PDL_CHOICES,
    decode_matvec_choice,
    decode_norm_mode,
    dot_split,
)
from mohawk.models import graphs
from mohawk.parallel import resolve_device
from mohawk.transfer import from_teacher, place_attention_layers

STUDENTS = ("pure", "hybrid4")


def weight_bytes(model) -> int:
    """Bytes of the parameters (tied ones once): what a decoding step reads at least once."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def profile_step(fn, device, top: int = 0) -> dict | None:
    """The CUDA kernels launched by ``fn()`` (a graph replay or an eager step), from torch.profiler: their number and,
    with ``top``, the ``top`` kernels by GPU time [{name, us, calls}]; None off CUDA."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.device_time_total)
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {
        "kernels": len(kernels),
        "gpu_us": sum(sum(t) for t in by_name.values()),
        "top": [{"name": n[:120], "us": round(sum(t), 1), "calls": len(t)} for n, t in ranked],
    }


@torch.no_grad()
def student_decode(model, ids: torch.Tensor, new_tokens: int, steps: int, device) -> dict:
    """``generate``'s fast path (mohawk.models.graphs.generate_fast), greedy, no EOS: ms per step over the
    ``new_tokens - 1`` steps after the first token, time to first token (prefill)."""
    t: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    graphs.generate_fast(model, ids, new_tokens, steps=steps, timings=t)
    return {
        "ms_per_step": 1e3 * t["decode_s"] / t["decode_steps"],
        "tokens_per_s": ids.shape[0] * t["decode_steps"] / t["decode_s"],
        "ttft_ms": 1e3 * t["prefill_s"],
        "state_mib": (t["state_bytes"] + t["kv_bytes"]) / 2**20,
        "step_bytes": 2 * t["state_bytes"] + t["kv_bytes"],  # the fixed state read and written, the KV read
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def student_step_profile(model, batch: int, device, top: int = 0) -> dict | None:
    """profile_step of one decoding step: one replay of ``model``'s one-step greedy graph for ``batch``."""
    store = graphs._GRAPHS.get(model)
    found = [
        g for g in (store[1].values() if store else ()) if g.steps == 1 and g.sampling is None and len(g.ids) == batch
    ]
    if not found or found[-1].graph is None:
        return None
    try:
        p = profile_step(found[-1].graph.replay, device, top)
        # a profiler blind to graph nodes: the step eagerly
        return p if p and p["kernels"] else profile_step(found[-1]._body, device, top)
    except Exception:  # noqa: BLE001 - a count is not worth the run
        return None


def measure_student(student, ids, args, steps: int, device) -> dict:
    """student_decode after a warm-up call (which captures the graphs), with the step's memory roofline."""
    try:
        student_decode(student, ids, args.new_tokens, steps, device)  # captures
        r = student_decode(student, ids, args.new_tokens, steps, device)
    except torch.OutOfMemoryError:
        return {"oom": True}
    except Exception as e:  # noqa: BLE001 - one failed measurement must not lose the run
        return {"error": repr(e)[:300]}
    r["roofline_ms"] = 1e3 * (weight_bytes(student) + r.pop("step_bytes")) / (args.bandwidth_gbs * 1e9)
    return r


class _StepClock:
    """A logits processor that only records, after a device sync, when generate reaches each decoding step."""

    def __init__(self, device):
        self.device, self.marks = device, []

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.marks.append(time.perf_counter())
        return scores


@torch.no_grad()
def teacher_static(model, ids: torch.Tensor, new_tokens: int, device) -> dict:
    """The teacher as a tuned serving loop decodes: transformers' static KV cache, whose one-token forward generate
    compiles (torch.compile, mode reduce-overhead: CUDA graphs) on a GPU; ms per step over the steps after the first,
    time to first token (call once before to compile)."""
    from transformers import LogitsProcessorList

    clock = _StepClock(device)
    # generate sizes a static cache to the longest length any earlier call asked for: without this reset a row after
    # a 32k one would time the teacher attending over a 32k cache
    model.__dict__.pop("_previous_max_cache_length", None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        cache_implementation="static",
        logits_processor=LogitsProcessorList([clock]),
        pad_token_id=0,
    )
    steps = len(clock.marks) - 1
    dt = clock.marks[-1] - clock.marks[0]
    return {
        "ms_per_step": 1e3 * dt / steps,
        "tokens_per_s": ids.shape[0] * steps / dt,
        "ttft_ms": 1e3 * (clock.marks[0] - t0),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def teacher_kv_bytes(cfg, batch: int, tokens: int, dtype: torch.dtype) -> int:
    """KV cache bytes of ``tokens`` positions: what the teacher's step reads (its static cache masks the rest)."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return (
        2 * cfg.num_hidden_layers * batch * kv_heads * tokens * head_dim * torch.tensor([], dtype=dtype).element_size()
    )


def parse_rows(args) -> list[tuple[str, int, int]]:
    """(student, context, batch) to measure: ``--rows`` if given, else students x contexts x batches."""
    if args.rows:
        out = []
        for item in args.rows.split(","):
            name, _, shape = item.partition(":")
            L, _, b = shape.partition("x")
            if name not in STUDENTS or not L.isdigit() or not b.isdigit():
                raise SystemExit(f"--rows item {item!r}: expected STUDENT:CONTEXTxBATCH, STUDENT in {STUDENTS}")
            out.append((name, int(L), int(b)))
        return out
    return [
        (s, int(L), int(b))
        for s in args.students.split(",")
        for L in args.contexts.split(",")
        for b in args.batches.split(",")
    ]


# data-sheet HBM bandwidth (GB/s) by GPU name: the roofline is the time to move a step's bytes at this rate
HBM_GBS = {"H200": 4800.0, "H100 80GB HBM3": 3350.0, "H100 NVL": 3900.0, "H100 PCIe": 2000.0, "A100-SXM4-80GB": 2039.0}


def hbm_bandwidth_gbs(device: str) -> float:
    """The HBM bandwidth of the GPU named ``device`` (GB/s); the H200's for an unknown device or the CPU."""
    return next((gbs for name, gbs in HBM_GBS.items() if name in device), HBM_GBS["H200"])


def main():
    ap = arg_parser(__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--students", default="pure,hybrid4", help="pure (all SSD) and/or hybrid4 (4 attention layers)")
    ap.add_argument("--contexts", default="1024,4096,16384,32768")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--rows", default="", help="instead of the grid: STUDENT:CONTEXTxBATCH,... e.g. pure:4096x1")
    ap.add_argument("--new-tokens", type=int, default=65, help="tokens generated per measurement (1 + whole blocks)")
    ap.add_argument("--block", type=int, default=16, help="decoding steps per graph replay (the multi-step figure)")
    ap.add_argument(
        "--bandwidth-gbs", type=float, default=None,
        help="memory bandwidth for the roofline (default: the GPU's data-sheet HBM bandwidth, H100 3,350, H200 4,800)",
    )  # fmt: skip
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--compile", action="store_true", help="torch.compile the step's norms and MLPs before capture")
    ap.add_argument("--mixer", default="ssd", help="the students' mixer family (ssd, mamba2, discrete_mamba2, ...)")
    ap.add_argument("--profile", type=int, default=0, help="N: also the N kernels of one step with most GPU time")
    ap.add_argument(
        "--fold-norms", action="store_true",
        help="fold the students' norms into their products first (model.fold_norms(), as a server would): the "
        "tensor-core products then keep no folded copy of in_proj, gate and up (peak GiB). Names its files apart",
    )  # fmt: skip
    ap.add_argument(
        "--decode-matvec", choices=CHOICES, default=None,
        help="a decoding step's block products: cuBLAS with separate norms and residual adds (plain), fused Triton "
        "kernels (norm + in_proj, norm + gate + up, out_proj / down + residual) up to batch "
        f"{MAX_BATCH} (fused), or the fused ones at batches {AUTO_BATCHES} and plain at the others (auto, generate's "
        "default); sets MOHAWK_DECODE_MATVEC; default: the environment's, else auto. plain and fused name their "
        "files apart",
    )  # fmt: skip
    ap.add_argument(
        "--decode-pdl", choices=PDL_CHOICES, default=None,
        help="programmatic dependent launch of the fused decoding kernels (Hopper or later: each overlaps the one "
        "before): auto (generate's default) at the register kernel's batches, 1 at all, 0 at none; sets "
        "MOHAWK_DECODE_PDL; default: the environment's, else auto. 0 and 1 name their files apart",
    )  # fmt: skip
    ap.add_argument(
        "--decode-split", default=None,
        help="the tensor-core product kernel's K split (16-64 sequences): programs per output tile, each over part "
        "of K, the last adding up the partial sums; auto (generate's default: mohawk.mixers.kernels.decode_matvec."
        "dot_split) or a whole number for every product; sets MOHAWK_DECODE_SPLIT; default: the environment's, else "
        "auto. A number names its files apart",
    )  # fmt: skip
    ap.add_argument(
        "--decode-norm", choices=NORM_MODES, default=None,
        help="how the tensor-core product kernel (16-64 sequences) applies the norm it folds in: row (each K chunk "
        "normalised in registers), late (squares summed after the loop) or folded (generate's default: the norm's "
        "weight folded into in_proj, gate and up once, x to the tensor cores as loaded); sets MOHAWK_DECODE_NORM; "
        "default: the environment's, else folded. row and late name their files apart",
    )  # fmt: skip
    args = ap.parse_args()
    if args.decode_norm:
        os.environ["MOHAWK_DECODE_NORM"] = args.decode_norm
    try:
        args.decode_norm = decode_norm_mode()
    except ValueError as e:
        raise SystemExit(f"decode_speed: {e}") from None
    if args.decode_split:
        os.environ["MOHAWK_DECODE_SPLIT"] = args.decode_split
    args.decode_split = os.environ.get("MOHAWK_DECODE_SPLIT", "auto")
    try:  # a bad value: one clear error before any model is built
        dot_split(DOT_MIN_BATCH, 1, 1)
    except ValueError as e:
        raise SystemExit(f"decode_speed: {e}") from None
    if args.decode_matvec:
        os.environ["MOHAWK_DECODE_MATVEC"] = args.decode_matvec
    args.decode_matvec = decode_matvec_choice()
    if args.decode_pdl:
        os.environ["MOHAWK_DECODE_PDL"] = args.decode_pdl
    args.decode_pdl = os.environ.get("MOHAWK_DECODE_PDL", "auto")
    rows_wanted = parse_rows(args)

    device = resolve_device(args.device)
    if args.bandwidth_gbs is None:
        args.bandwidth_gbs = hbm_bandwidth_gbs(device_name(device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = model_config(args.model)
    teacher, adapter, pure = random_teacher_and_student(cfg, device, dtype, mixer=args.mixer)
    students = {"pure": pure}
    if any(name == "hybrid4" for name, _, _ in rows_wanted):
        n = cfg.num_hidden_layers
        torch.manual_seed(0)
        with torch.device(device):
            hybrid = from_teacher(adapter, place_attention_layers(min(4, n - 1), n), mixer=args.mixer)
        students["hybrid4"] = hybrid.to(dtype).eval()
    for st in students.values():
        st.config.decode_compile = args.compile
        if args.fold_norms:
            st.fold_norms()
    teacher_rows: dict[tuple[int, int], dict] = {}  # a (context, batch) measured once, shared by the students
    rows = []
    for name, L, b in rows_wanted:
        student = students[name]
        ids = torch.randint(0, cfg.vocab_size, (b, L), device=device)
        row: dict = {"student": name, "mixer": args.mixer, "context": L, "batch": b, "block": args.block}
        row["attention_layers"] = list(student.config.attention_layers)
        row["layer_kinds"] = sorted(set(student.config.mixers))
        if (L, b) not in teacher_rows:
            try:
                teacher_static(teacher, ids, args.new_tokens, device)  # compiles
                teacher_rows[(L, b)] = teacher_static(teacher, ids, args.new_tokens, device)
            except torch.OutOfMemoryError:
                teacher_rows[(L, b)] = {"oom": True}
            except Exception as e:  # noqa: BLE001 - one failed measurement must not lose the run
                teacher_rows[(L, b)] = {"error": repr(e)[:300]}
        row.update({f"teacher_{k}": v for k, v in teacher_rows[(L, b)].items()})
        kv = teacher_kv_bytes(cfg, b, L + args.new_tokens // 2, dtype)
        row["teacher_state_mib"] = kv / 2**20
        row["teacher_roofline_ms"] = 1e3 * (weight_bytes(teacher) + kv) / (args.bandwidth_gbs * 1e9)
        for kind, steps in (("block", args.block), ("1step", 1)):
            r = measure_student(student, ids, args, steps, device)
            if "error" in r and student.config.decode_compile:  # compiled capture failed: the uncompiled step
                student.config.decode_compile = False
                graphs.release(student)
                r = {**measure_student(student, ids, args, steps, device), "compile_error": r["error"]}
                student.config.decode_compile = args.compile
            row.update({f"student_{kind}_{k}": v for k, v in r.items()})
        prof = student_step_profile(student, b, device, args.profile) or {}
        row["student_kernels_per_step"] = prof.get("kernels")
        if args.profile:
            row["student_step_gpu_us"], row["student_top_kernels"] = prof.get("gpu_us"), prof.get("top")
        row["student_compiled"] = any(g.compiled for g in graphs._GRAPHS.get(student, (None, {}))[1].values())
        graphs.release(student)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        print(row, flush=True)
        save(args, device, dtype, rows)  # after every row: a run cut short keeps what it measured


def save(args, device, dtype, rows: list[dict]) -> None:
    """Write the rows so far as benchmarks/results/decode_speed-<model>-<device>.{json,md}."""
    dev = device_name(device)
    cmd = command()
    matvec = getattr(args, "decode_matvec", "auto")
    payload = {
        "device": dev,
        "versions": versions("transformers", "triton", "mamba_ssm"),
        "command": cmd,
        "model": args.model,
        "dtype": str(dtype),
        "new_tokens": args.new_tokens,
        "block": args.block,
        "compile": args.compile,
        "bandwidth_gbs": args.bandwidth_gbs,
        "decode_matvec": matvec,
        "decode_pdl": getattr(args, "decode_pdl", "auto"),
        "decode_split": getattr(args, "decode_split", "auto"),
        "decode_norm": getattr(args, "decode_norm", NORM_DEFAULT),
        "fold_norms": getattr(args, "fold_norms", False),
        "rows": rows,
    }
    lines = [
        f"# Decoding, {args.model}, {args.mixer} students (generate's fast path) vs the static-cache + CUDA-graph "
        f"teacher, {dev}",
        "",
        f"- command: `{cmd}`",
        f"- versions: {payload['versions']}",
        f"- {dtype}, random weights of the real dimensions; ms per decoding step (one token per sequence) over "
        f"{args.new_tokens - 1} greedy steps after the first token; the teacher decodes with transformers' static KV "
        "cache, its step compiled into CUDA graphs (`generate(cache_implementation='static')`); the students through "
        f"`generate`'s fast path: one graph replay per {args.block} steps ('block'), or per step ('1 step'), tokens "
        "chosen on the device, the fused SSD step, a static KV cache for attention layers"
        + (
            ", the norms and MLPs torch.compile'd before capture ('compiled' says where that worked)"
            if args.compile
            else ""
        )
        + {
            "fused": ", each block's norms, products and residual adds in fused Triton matvec kernels up to batch "
            f"{MAX_BATCH} (`--decode-matvec fused`)",
            "auto": ", each block's norms, products and residual adds in fused Triton kernels at batches "
            f"{AUTO_BATCHES}, cuBLAS products at the others (`--decode-matvec auto`, the default)",
            "plain": ", each block's products in cuBLAS, norms and residual adds apart (`--decode-matvec plain`)",
        }[matvec]
        + {
            "auto": ", the fused kernels below batch "
            f"{DOT_MIN_BATCH} launched with programmatic dependent launch on Hopper or later (`--decode-pdl auto`, "
            "the default)",
            "0": ", no programmatic dependent launch (`--decode-pdl 0`)",
            "1": ", the fused kernels launched with programmatic dependent launch at every batch (`--decode-pdl 1`)",
        }[payload["decode_pdl"]]
        + (
            ""
            if payload["decode_split"] == "auto"
            else f", the tensor-core products' K split over {payload['decode_split']} programs a tile "
            f"(`--decode-split {payload['decode_split']}`)"
        )
        + f", the tensor-core products' norm applied `{payload['decode_norm']}` (`--decode-norm "
        + payload["decode_norm"]
        + ("`, the default)" if payload["decode_norm"] == NORM_DEFAULT else "`)")
        + (", the students' norms folded into their products first (`--fold-norms`)" if payload["fold_norms"] else ""),
        f"- roofline: (weights + state or KV bytes a step reads and writes) / {args.bandwidth_gbs:,.0f} GB/s; "
        "'x roofline' = measured / roofline; TTFT = prefill to the first token; kernels = CUDA kernels in one student "
        "step (torch.profiler over one replay of the one-step graph)",
        "",
        "| student | context | batch | teacher ms/step | student ms/step (block) | student ms/step (1 step) | "
        "speed-up vs teacher | student tok/s | roofline ms (student / teacher) | x roofline (student) | "
        "kernels/step | TTFT ms (teacher / student) | state MiB (teacher / student) | peak GiB (teacher / student) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t, s, s1 = (r.get(f"{k}_ms_per_step") for k in ("teacher", "student_block", "student_1step"))
        roof = r.get("student_block_roofline_ms")
        ms = {k: fmt(r[f"{k}_ms_per_step"], 3) if f"{k}_ms_per_step" in r else "OOM" if r.get(f"{k}_oom") else "error"
              for k in ("teacher", "student_block", "student_1step")}  # fmt: skip
        lines.append(
            f"| {r['student']} | {r['context']} | {r['batch']} | {ms['teacher']} | "
            f"{ms['student_block']} | {ms['student_1step']} | {f'{t / s:.2f}x' if s and t else '-'} | "
            f"{fmt(r.get('student_block_tokens_per_s'), 0)} | {fmt(roof, 3)} / {fmt(r.get('teacher_roofline_ms'), 3)} "
            f"| {f'{s / roof:.1f}x' if s and roof else '-'} | {r.get('student_kernels_per_step') or '-'}"
            f"{' (compiled)' if r.get('student_compiled') else ''} | "
            f"{fmt(r.get('teacher_ttft_ms'), 1)} / {fmt(r.get('student_block_ttft_ms'), 1)} | "
            f"{fmt(r.get('teacher_state_mib'), 1)} / {fmt(r.get('student_block_state_mib'), 1)} | "
            f"{fmt(r.get('teacher_peak_gib'), 2)} / {fmt(r.get('student_block_peak_gib'), 2)} |"
        )
    for r in rows:
        if r.get("student_top_kernels"):
            lines += [
                "",
                f"Kernels of one {r['student']} step at {r['context']} x {r['batch']} by GPU time "
                f"({r['student_kernels_per_step']} kernels, {fmt(r.get('student_step_gpu_us'), 1)} us in all):",
                "",
                "| kernel | us | calls |",
                "|---|---|---|",
                *(f"| `{k['name']}` | {k['us']} | {k['calls']} |" for k in r["student_top_kernels"]),
            ]
    mixer = ("" if args.mixer == "ssd" else f"-{args.mixer}") + ("" if matvec == "auto" else f"-{matvec}")
    mixer += {"auto": "", "0": "-nopdl", "1": "-pdl"}[payload["decode_pdl"]]
    mixer += "" if payload["decode_split"] == "auto" else f"-split{payload['decode_split']}"
    mixer += "" if payload["decode_norm"] == NORM_DEFAULT else f"-norm{payload['decode_norm']}"
    mixer += "-foldnorms" if payload["fold_norms"] else ""
    write(f"decode_speed-{args.model}{mixer}-{dev.split(' (')[0]}", payload, lines, Path(args.out))


if __name__ == "__main__":
    main()
