"""Training throughput of the MOHAWK stages (tokens/s and MFU) through mohawk's own training loop, next to a plain
Hugging Face eager training step of the teacher itself, in the same run. Random weights from a transformers config of
the real model's dimensions (no download): ``phi-1_5`` (1.4B, the paper's teacher), ``smollm2-135m``, or ``tiny``
(a CPU smoke test).

    python3 -m benchmarks.stage_throughput --model phi-1_5 --stages 1,2,3 [--batch 8] [--seq-len 1024] [--steps 10]
    torchrun --nproc-per-node 2 benchmarks/stage_throughput.py --model phi-1_5 --stages 3    # FSDP2 over 2 GPUs
    (benchmarks/scaling.py runs both and writes the ratio)

``--batch`` is sequences per process (the global batch grows with the number of processes: weak scaling). MFU counts
model FLOPs: 6 N per token for each trained model (N: its parameters but the input embedding), 2 N for the teacher's
forward in stages 1-3, plus causal attention (6 layers d L per token trained, 2 layers d L forward only), against the
GPU's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s). Writes benchmarks/results/stage_throughput-<model>-<device>-<n>gpu.
"""

from __future__ import annotations

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
from mohawk.checkpoint import Checkpointer
from mohawk.config import DistillConfig
from mohawk.evaluation.present import markdown_table
from mohawk.metrics import MetricsLog
from mohawk.parallel import Parallel
from mohawk.stages import build as build_stage
from mohawk.train import StageBudget, train_stage

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def counted_params(model) -> int:
    """Parameters doing matmuls: all but the input embedding (counted once when tied to the head)."""
    emb = model.get_input_embeddings().weight
    tied = any(p is emb for n, p in model.named_parameters() if "lm_head" in n) or getattr(
        model.config, "tie_word_embeddings", False
    )
    return sum(p.numel() for p in model.parameters()) - (0 if tied else emb.numel())


def flops_per_token(stage: int, student, teacher, seq_len: int, trainable_fraction: float = 1.0) -> float:
    cfg = teacher.config
    layers, d = cfg.num_hidden_layers, cfg.hidden_size
    teacher_fwd = 2 * counted_params(teacher) + 2 * layers * d * seq_len
    if stage == 0:  # the teacher trained by itself
        return 3 * teacher_fwd
    if stage == 3:
        return 6 * counted_params(student) * trainable_fraction + teacher_fwd
    # stages 1-2: the teacher's forward, the student's mixers forward and backward
    mixers = sum(p.numel() for layer in student.model.layers for p in layer.mixer.parameters())
    return 6 * mixers + teacher_fwd


def random_batches(vocab: int, rows: int, seq_len: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randint(0, vocab, (rows, seq_len), generator=g)


def time_teacher_training(teacher_cfg, device, batch: int, seq_len: int, steps: int, warmup: int) -> float:
    """Seconds per step of a plain HF training step (eager attention, fp32 weights, bf16 autocast, AdamW)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    teacher_cfg = teacher_cfg.__class__.from_dict(teacher_cfg.to_dict())
    teacher_cfg._attn_implementation = "eager"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(teacher_cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    data = random_batches(teacher_cfg.vocab_size, batch, seq_len, device, seed=1)
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        ids = next(data).to(device)
        with autocast:
            logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dt


def _counts_as_busy(event, device) -> bool:
    """Whether a profiler average is the device's own work: on CUDA its kernels, copies and sets (not the annotations
    that carry their children's time, as torch's own table total counts); on CPU every operator but the step
    marks."""
    from torch.autograd import DeviceType

    if device.type == "cuda":
        return event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False)
    return not str(event.key).startswith("ProfilerStep")


def timed_batches(batches, start: int, stop: int, device, marks: list, each=None):
    """``batches`` passed through, appending to ``marks`` the time at which batch ``start`` and batch ``stop`` are
    drawn, after the device finished all earlier work: the loop draws batch k once steps 0..k-1 are launched (one
    micro-batch per step), so marks[1] - marks[0] is the time of steps start..stop-1, without the loop's set-up
    before them or its closing save after them. ``each()`` is called at every draw."""
    for i, batch in enumerate(batches):
        if i in (start, stop):
            sync(device)
            marks.append(time.perf_counter())
        if each is not None:
            each()
        yield batch


def _budget(tokens: int, micro_tokens: int) -> StageBudget:
    """One micro-batch per update, a tiny LR: the benchmark times steps, it does not train."""
    return StageBudget(tokens=tokens, micro_tokens=micro_tokens, grad_accum=1, lr=1e-5)


def steady_step_seconds(
    stage, batches, warmup: int, steps: int, micro_tokens: int, common: dict, device, each=None
) -> float:
    """Mean seconds per training step of ``stage`` over ``steps`` steps that follow ``warmup`` steps inside one run of
    the training loop (its set-up, the warm-up, and the one step after them are not timed); ``each()`` at every
    step's start (see timed_batches)."""
    marks: list[float] = []
    train_stage(
        stage,
        timed_batches(batches, warmup, warmup + steps, device, marks, each),
        _budget((warmup + steps + 1) * micro_tokens, micro_tokens),
        **common,
    )
    return (marks[1] - marks[0]) / steps


def profile_stage(stage, batches, steps: int, micro_tokens: int, common: dict, device, path: Path) -> None:
    """Profile ``steps`` steady training steps (one micro-batch each; the loop's set-up, its first step and its last
    step with the closing save are left out): the top operators by device time and by host time, device-busy time vs
    wall time (a launch-bound step keeps the GPU idle between small kernels), and where the host waits for the GPU."""
    from torch.profiler import ProfilerActivity, profile, schedule

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    # wait: the set-up until the first batch is drawn; warmup: the first step; then `steps` active steps, the ones
    # steady_step_seconds times after its one warm-up step
    with profile(activities=acts, schedule=schedule(wait=1, warmup=1, active=steps, repeat=1)) as prof:
        wall = steps * steady_step_seconds(stage, batches, 1, steps, micro_tokens, common, device, each=prof.step)
    avg = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    busy = sum(getattr(e, key) for e in avg if _counts_as_busy(e, device)) / 1e6
    table = avg.table(sort_by=key, row_limit=30, max_name_column_width=70)
    cpu_table = avg.table(sort_by="cpu_time_total", row_limit=40, max_name_column_width=70)
    kind = "GPU" if device.type == "cuda" else "CPU"
    head = (
        f"{steps} steps: wall {wall:.3f} s ({1e3 * wall / steps:.1f} ms/step, profiler on), self {kind} time "
        f"{busy:.3f} s ({100 * busy / wall:.0f}%)"
    )
    syncs = ""
    if device.type == "cuda":  # where the host waits for the GPU (each wait empties the launch queue)
        import collections
        import warnings

        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_stage(stage, batches, _budget(steps * micro_tokens, micro_tokens), **common)
        torch.cuda.set_sync_debug_mode(0)
        where = collections.Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
        syncs = "\n\nhost-device synchronizations:\n" + "\n".join(f"{n:6d}  {k}" for k, n in where.most_common(30))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "\n" + table + "\n\nby CPU time:\n" + cpu_table + syncs)
    print(head, flush=True)


def main():
    ap = arg_parser(__doc__)
    ap.add_argument("--model", default="phi-1_5")
    ap.add_argument("--stages", default="1,2,3")
    ap.add_argument("--batch", type=int, default=8, help="sequences per process and micro-batch (stages 2, 3)")
    ap.add_argument("--stage1-batch", type=int, default=1, help="stage 1 materializes (batch, heads, L, L) per layer")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--freeze-mlp", action="store_true")
    ap.add_argument(
        "--compile",
        default="off",
        choices=["off", "fuse", "graphs"],
        help="as mohawk distill --compile: torch.compile blocks and loss, graphs: also CUDA graphs",
    )
    ap.add_argument("--teacher-bf16", action="store_true", help="teacher weights in bf16 (default fp32 + autocast)")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="also profile STEPS steady steps per stage: top kernels to <out>/profile-*.txt",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the teacher's own training step")
    ap.add_argument("--mixer", default="ssd", help="the student's mixer family (ssd, mamba2, discrete_mamba2, ...)")
    args = ap.parse_args()

    parallel, device = Parallel.from_env("auto")
    world = parallel.world
    tcfg = model_config(args.model)
    dev_name = device_name(device)
    peak = next((v for k, v in PEAK_BF16.items() if k in dev_name), None)
    rows = []

    baseline_s = None
    if not args.no_baseline and parallel.main and world == 1:
        baseline_s = time_teacher_training(tcfg, device, args.batch, args.seq_len, args.steps, args.warmup)

    teacher, adapter, student = random_teacher_and_student(tcfg, device, mixer=args.mixer)
    if args.teacher_bf16:
        teacher.to(torch.bfloat16)
    dcfg = DistillConfig(
        seq_len=args.seq_len,
        freeze_mlp=args.freeze_mlp,
        spike_factor=0.0,
        log_every=10**9,
        checkpoint_every=10**9,
        compile=args.compile,
    )
    loop = dcfg.loop_settings()
    if baseline_s is not None:
        tokens = args.batch * args.seq_len
        fl = flops_per_token(0, student, teacher, args.seq_len)
        rows.append(
            {
                "what": "HF eager training step of the teacher",
                "batch": args.batch,
                "tokens_per_s": tokens / baseline_s,
                "step_ms": 1e3 * baseline_s,
                "mfu": fl * tokens / baseline_s / peak if peak else None,
            }
        )
    for s in map(int, args.stages.split(",")):
        rows_per_rank = args.stage1_batch if s == 1 else args.batch
        global_rows = rows_per_rank * world
        micro_tokens = global_rows * args.seq_len
        stage = build_stage(s, student, adapter, dcfg)
        if parallel.uses_fsdp(stage):
            parallel.shard_teacher(adapter)  # as mohawk distill does
        batches = map(parallel.shard, random_batches(tcfg.vocab_size, global_rows, args.seq_len, device, seed=s))
        common = dict(
            loop=loop, checkpointer=Checkpointer(None), log=MetricsLog(None), progress=False, parallel=parallel
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        dt = steady_step_seconds(stage, batches, args.warmup, args.steps, micro_tokens, common, device)
        trainable = sum(p.numel() for _, p in stage.parameters()) / max(1, sum(p.numel() for p in student.parameters()))
        fl = flops_per_token(s, student, teacher, args.seq_len, trainable)
        tps = micro_tokens / dt
        rows.append(
            {
                "what": f"stage {s} ({stage.name})",
                "batch": global_rows,
                "tokens_per_s": tps,
                "step_ms": 1e3 * dt,
                "mfu": fl * tps / world / peak if peak else None,
                "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            }
        )
        if parallel.main:
            print(rows[-1], flush=True)
        if args.profile and parallel.main:
            profile_stage(
                stage,
                batches,
                args.profile,
                micro_tokens,
                common,
                device,
                Path(args.out) / f"profile-{args.model}-stage{s}-compile_{args.compile}.txt",
            )
    if not parallel.main:
        parallel.close()
        return
    base = rows[0]["tokens_per_s"] if baseline_s is not None else None
    cmd = command(f"torchrun --nproc-per-node {world}" if world > 1 else "python3")
    payload = {
        "device": dev_name,
        "gpus": world,
        "compile": args.compile,
        "teacher_bf16": args.teacher_bf16,
        "versions": versions("transformers", "triton", "mamba_ssm"),
        "command": cmd,
        "model": args.model,
        "mixer": args.mixer,
        "seq_len": args.seq_len,
        "rows": rows,
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
    }
    lines = [
        f"# Stage throughput, {args.model} ({payload['teacher_parameters'] / 1e9:.2f}B teacher, "
        f"{payload['student_parameters'] / 1e9:.2f}B {args.mixer} student), {world} x {dev_name}",
        "",
        f"- command: `{cmd}`",
        f"- versions: {payload['versions']}",
        f"- {args.seq_len} tokens per sequence, batch = sequences per optimizer step over all processes; "
        f"mean of {args.steps} steps after {args.warmup} warm-up steps in one run of the loop (its set-up not "
        "timed); random weights and tokens; "
        f"compile {args.compile}, teacher weights {'bf16' if args.teacher_bf16 else 'fp32'}",
        "",
    ]
    table = []
    for r in rows:
        rel = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        table.append(
            [r["what"], r["batch"], fmt(r["tokens_per_s"], 0), fmt(r["step_ms"], 1), mfu, rel]
            + [fmt(r.get("peak_mem_gib"), 1)]
        )
    header = ["what", "batch", "tokens/s", "step ms", "MFU", "vs teacher's HF step", "peak GiB"]
    lines += markdown_table(header, table)
    tag = (f"-compile_{args.compile}" if args.compile != "off" else "") + ("-bf16teacher" if args.teacher_bf16 else "")
    tag += "" if args.mixer == "ssd" else f"-{args.mixer}"
    write(f"stage_throughput-{args.model}-{dev_name.split(' (')[0]}-{world}gpu{tag}", payload, lines, Path(args.out))
    parallel.close()


if __name__ == "__main__":
    main()
