"""Zero-shot scoring time: lm-eval's own HFLM loop and template rendering against mohawk's BatchedHFLM with templates
compiled once (mohawk/evaluation/batched_lm.py), on the same model, tasks and items, one after the other.

    python3 -m benchmarks.lm_eval_speed [--teacher smollm2-135m] [--model STUDENT_DIR]
        [--tasks hellaswag,lambada_openai] [--every hellaswag=5] [--limit N] [--batch-size 64] [--device auto]
        [--tf32] [--profile]

The defaults score the recall screen's lm-eval part (every 5th HellaSwag item, all of LAMBADA) with the teacher. A
short warm-up of each path runs first (CUDA context, the datasets' caches); then each path is timed ``--repeats``
times, alternating, and the median kept. Reports seconds per path, their ratio, and whether every item's score is the
same under both; ``--tf32`` adds BatchedHFLM with float32 matmuls in TF32 (cuBLAS and the SSD scan) and how many
items it scores as lm-eval does in full float32; ``--profile`` adds where BatchedHFLM's time goes (torch.profiler:
top operators, the GPU's busy share). Writes benchmarks/results/lm_eval_speed-<device>[-random|-student].{json,md}.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import arg_parser, command, device_name, sync, versions, write
from mohawk.evaluation.harness import every_nth, run_tasks
from mohawk.evaluation.present import markdown_table
from mohawk.evaluation.suite import float32_matmuls
from mohawk.parallel import resolve_device


def load(args, device):
    """(model, tokenizer, name): a random small model (--random), the student at --model (``transfer``: the pure SSD
    student of the teacher by weight transfer alone, untrained), else the teacher; the tokenizer is the teacher's."""
    from mohawk.models.loading import load_model
    from mohawk.teachers import load_teacher

    teacher, tokenizer, _ = load_teacher(args.teacher, device=device)
    if args.random:
        import transformers as tf

        torch.manual_seed(0)
        cfg = tf.LlamaConfig(
            vocab_size=teacher.config.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=teacher.config.max_position_embeddings,
        )  # fmt: skip
        return tf.AutoModelForCausalLM.from_config(cfg).to(device).eval(), tokenizer, "random 2-layer model"
    if not args.model:
        return teacher, tokenizer, f"teacher {args.teacher}"
    if args.model == "transfer":  # a trained student's shapes and kernels: its scoring time, without a training
        import mohawk

        return mohawk.from_teacher(teacher).to(device).eval(), tokenizer, "student by weight transfer (untrained)"
    path = Path(args.model)  # mohawk distill writes the student to OUT/student: name it by OUT
    name = path.parent.name if path.name == "student" else path.name
    return load_model(args.model, device), tokenizer, f"student {name}"


def same_items(a: dict, b: dict) -> dict[str, float]:
    """{task/metric: the fraction of items scored alike (within 1e-4)} of two run_tasks results with items."""
    out = {}
    for task in a:
        for metric, xs in a[task]["items"].items():
            ys = b[task]["items"][metric]
            out[f"{task}/{metric}"] = sum(abs(x - y) <= 1e-4 for x, y in zip(xs, ys, strict=True)) / len(xs)
    return out


def kernel_seconds(events) -> float:
    """Seconds of GPU kernel time in torch.profiler's ``key_averages()``: the device's own events only. An operator's
    row also carries the time of the kernels it launched (as its self device time), so summing every row counts each
    kernel twice."""
    from torch.autograd import DeviceType

    return sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / 1e6


def profile(run, device: torch.device, rows: int = 15) -> dict:
    """``run()`` under torch.profiler: {"wall_s", "cpu_ops_s" (the torch operators' self time on the CPU),
    "gpu_busy_s" (the sum of GPU kernel time; None off CUDA),
    "top": [{op, self_cpu_ms, self_gpu_ms, calls}] by self time on the GPU (on the CPU off CUDA), "lines": the
    markdown section}."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=acts) as prof:
        wall = run()[0]
    events = prof.key_averages()

    def gpu_us(e) -> float:
        return getattr(e, "self_device_time_total", 0.0) if cuda else 0.0

    ranked = sorted(events, key=lambda e: gpu_us(e) if cuda else e.self_cpu_time_total, reverse=True)[:rows]
    top = [
        {"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "self_gpu_ms": gpu_us(e) / 1e3, "calls": e.count}
        for e in ranked
    ]
    busy = kernel_seconds(events) if cuda else None
    ops = sum(e.self_cpu_time_total for e in events) / 1e6
    lines = [
        "",
        f"## Where BatchedHFLM's time goes (`--profile`: one more run under torch.profiler, {wall:.1f} s)",
        "",
        f"torch operators on the CPU {ops:.1f} s of the run's {wall:.1f} s ({ops / wall:.0%}; the rest is outside "
        "torch: the harness's Python, tokenizing, templates)"
        + (f"; GPU kernels busy {busy:.1f} s ({busy / wall:.0%})." if cuda else "."),
        "",
        *markdown_table(
            ["operator", "self CPU ms", "self GPU ms", "calls"],
            [[t["op"][:60], f"{t['self_cpu_ms']:.0f}", f"{t['self_gpu_ms']:.0f}", t["calls"]] for t in top],
        ),
    ]
    return {"wall_s": wall, "cpu_ops_s": ops, "gpu_busy_s": busy, "top": top, "lines": lines}


def tokenize_only(args, model, tokenizer, tasks: list[str], limit: dict) -> None:
    """Seconds to tokenize the tasks' log-likelihood requests: lm-eval's ``TemplateLM.loglikelihood`` (a tokenizer
    call per string) against ``BatchedHFLM.loglikelihood`` (batched), the model call replaced by a recorder; the
    median of ``--repeats`` runs each, alternating, and whether the token lists are the same."""
    import tempfile

    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from mohawk.evaluation.batched_lm import BatchedHFLM, cached_templates
    from mohawk.evaluation.harness import write_tasks

    with tempfile.TemporaryDirectory() as tmp, cached_templates():
        names = write_tasks(Path(tmp), tasks)
        loaded = TaskManager(include_path=tmp, include_defaults=False).load(names)["tasks"]
        instances = []
        for task, lm_name in zip(tasks, names, strict=True):
            lim = limit[task]
            ids = None if lim is None or isinstance(lim, int) else list(lim)
            loaded[lm_name].build_all_requests(limit=None if ids else lim, samples=ids, rank=0, world_size=1)
            instances += loaded[lm_name].instances
    lm = BatchedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device=str(model.device))
    seen: dict[str, list] = {}
    paths = {"lm-eval, a call per string": HFLM.loglikelihood, "mohawk BatchedHFLM, batched": BatchedHFLM.loglikelihood}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.repeats):
        for label, method in paths.items():
            lm._loglikelihood_tokens = lambda reqs, disable_tqdm=False, _l=label: seen.__setitem__(_l, reqs) or []
            t0 = time.perf_counter()
            method(lm, instances, disable_tqdm=True)
            times[label].append(time.perf_counter() - t0)
    median = {k: statistics.median(v) for k, v in times.items()}
    first = next(iter(paths))
    same = all(seen[k] == seen[first] for k in paths)
    rows = [[k, f"{median[k]:.2f}", f"{median[first] / median[k]:.2f}x"] for k in paths]
    lines = [
        f"# Tokenizing zero-shot requests, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs",
        "",
        f"- command: `{command()}`",
        f"- versions: {versions('transformers', 'lm_eval', 'tokenizers')}",
        f"- {len(instances):,} requests of {', '.join(tasks)}; median of {args.repeats} run(s) per path, alternating",
        f"- the same token lists for every request: {same}",
        "",
        *markdown_table(["tokenization", "seconds", "speed-up"], rows),
    ]
    payload = {"requests": len(instances), "tasks": tasks, "seconds": times, "median_s": median, "same": same,
               "command": command(), "versions": versions("transformers", "lm_eval", "tokenizers")}  # fmt: skip
    write(f"lm_eval_tokenize-{os.cpu_count()}cpu", payload, lines, Path(args.out))


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--teacher", default="smollm2-135m", help="teacher (its tokenizer is used for every model)")
    ap.add_argument(
        "--model",
        default=None,
        help="a student directory to score instead of the teacher; 'transfer': the teacher's pure SSD student by "
        "weight transfer alone (untrained, the same shapes and kernels as a trained one: its scoring time)",
    )
    ap.add_argument(
        "--random",
        action="store_true",
        help="score a random 2-layer model of hidden size 64 with the teacher's vocabulary: the harness's own cost "
        "with almost no model time (as on a GPU, where a small model's forward is cheap)",
    )
    ap.add_argument("--tasks", default="hellaswag,lambada_openai", help="lm-eval tasks, comma-separated")
    ap.add_argument("--every", default="hellaswag=5", help="TASK=N,...: every Nth item of those tasks (else all)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many items per task")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per path (alternating; the median is kept)")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--tf32",
        action="store_true",
        help="also time BatchedHFLM with float32 matmuls in TF32 (torch.set_float32_matmul_precision('high'): cuBLAS "
        "and the SSD scan's kernels) and count the items it scores as lm-eval does in full float32",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also score once more with BatchedHFLM under torch.profiler and add its top operators (self time, CPU "
        "and GPU) and the GPU's busy share of the wall time: where a batch's time goes",
    )
    ap.add_argument(
        "--tokenize-only",
        action="store_true",
        help="time only the requests' tokenization, the harness's one call per string against BatchedHFLM's "
        "batched calls (the model is not run), and check that both give the same token lists",
    )
    args = ap.parse_args()
    device = resolve_device(args.device)
    model, tokenizer, name = load(args, device)
    tasks = [t for t in args.tasks.split(",") if t]
    every = {k: int(v) for k, v in (x.split("=") for x in args.every.split(",") if x)}
    limit = {t: every_nth([t], every[t], args.limit)[t] if t in every else args.limit for t in tasks}
    if args.tokenize_only:
        return tokenize_only(args, model, tokenizer, tasks, limit)

    def score(reference: bool, lim, tf32: bool = False) -> tuple[float, dict]:
        with float32_matmuls(tf32):
            sync(device)
            t0 = time.perf_counter()
            res = run_tasks(
                model, tokenizer, tasks, limit=lim, batch_size=args.batch_size, device=str(device), items=True,
                reference=reference,
            )  # fmt: skip
            sync(device)
        return time.perf_counter() - t0, res

    # (label, lm-eval's own loop, float32 matmuls in TF32)
    paths = [("lm-eval HFLM", True, False), ("mohawk BatchedHFLM", False, False)]
    paths += [("mohawk BatchedHFLM, TF32", False, True)] if args.tf32 else []
    for _, reference, tf32 in paths:  # warm-up: the CUDA context, the tasks' data, the first kernels
        score(reference, dict.fromkeys(tasks, 8), tf32)
    times: dict[str, list[float]] = {label: [] for label, _, _ in paths}
    results = {}
    for _ in range(args.repeats):
        for label, reference, tf32 in paths:
            seconds, results[label] = score(reference, limit, tf32)
            times[label].append(seconds)
    median = {k: statistics.median(v) for k, v in times.items()}
    ref, fast = results["lm-eval HFLM"], results["mohawk BatchedHFLM"]
    alike = same_items(ref, fast)
    alike_tf32 = same_items(ref, results["mohawk BatchedHFLM, TF32"]) if args.tf32 else None
    n = {t: ref[t]["n"] for t in tasks}
    rows = [
        [label, f"{median[label]:.1f}", f"{median['lm-eval HFLM'] / median[label]:.2f}x"]
        + [f"{results[label][t][m]:.4f}" for t in tasks for m in ref[t]["items"]]
        for label, _, _ in paths
    ]
    metrics = [f"{t} {m}" for t in tasks for m in ref[t]["items"]]
    dev = device_name(device)
    lines = [
        f"# Zero-shot scoring time, {name}, {dev}",
        "",
        f"- command: `{command()}`",
        f"- versions: {versions('transformers', 'lm_eval')}",
        f"- items: {n}; batch {args.batch_size}; median of {args.repeats} timed run(s) per path, alternating, after a "
        "warm-up of 8 items each",
        "- items scored alike (within 1e-4): " + ", ".join(f"{k} {v:.1%}" for k, v in alike.items()),
        *(
            [
                "- with TF32, items scored as lm-eval does in float32 (within 1e-4): "
                + ", ".join(f"{k} {v:.1%}" for k, v in alike_tf32.items())
            ]
            if alike_tf32
            else []
        ),
        "",
        *markdown_table(["scoring", "seconds", "speed-up", *metrics], rows),
    ]
    payload = {
        "device": dev, "model": name, "tasks": tasks, "items": n, "batch_size": args.batch_size,
        "seconds": times, "median_s": median, "speedup": median["lm-eval HFLM"] / median["mohawk BatchedHFLM"],
        "items_alike": alike, "items_alike_tf32": alike_tf32, "command": command(),
        "versions": versions("transformers", "lm_eval"),
        "dtype": str(next(model.parameters()).dtype), "torch_threads": torch.get_num_threads(), "profile": None,
    }  # fmt: skip
    kind = "-random" if args.random else "-student" if args.model else ""
    stem = f"lm_eval_speed-{dev.split(' (')[0]}{kind}"
    write(stem, payload, lines, Path(args.out))  # the timings are kept if the profile's run is cut short
    if args.profile:
        prof = profile(lambda: score(False, limit), device)
        payload["profile"] = {k: v for k, v in prof.items() if k != "lines"}
        write(stem, payload, lines + prof["lines"], Path(args.out))


if __name__ == "__main__":
    main()
