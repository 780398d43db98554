"""Decoding speed and memory: the SSD student's recurrent step (constant state) vs its teacher with a KV cache, after
a prompt of 1k-32k tokens, batch 1 and 16, bf16, random weights of the real dimensions (``--model smollm2-135m`` or
``phi-1_5``; ``tiny`` for a CPU smoke test).

    python3 -m benchmarks.decode_speed [--model smollm2-135m] [--contexts 1024,4096,16384,32768] [--batches 1,16]

Per (context, batch): tokens/s over ``--new-tokens`` greedy steps after the prefill, and the decoding state's size
(the teacher's KV cache grows with the context, the student's SSM state does not) and peak GPU memory.
Writes benchmarks/results/decode_speed-<model>-<device>.{json,md}.
"""

from __future__ import annotations

import inspect
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
from mohawk.models.cache import MohawkCache
from mohawk.parallel import resolve_device


def cache_bytes(cache) -> int:
    if isinstance(cache, MohawkCache):
        return cache.memory_bytes()
    return sum(
        t.numel() * t.element_size()
        for layer in cache.layers
        for t in (layer.keys, layer.values)
        if isinstance(t, torch.Tensor)
    )


@torch.no_grad()
def decode(model, cache, ids: torch.Tensor, new_tokens: int, device) -> dict:
    """Prefill ``ids`` through the backbone (no logits for the prompt), then ``new_tokens`` greedy one-token steps."""
    teacher = not isinstance(cache, MohawkCache)
    # transformers 5.24 renamed the models' ``past_key_values`` argument to ``cache``
    name = "cache" if teacher and "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    kw = {name: cache, "use_cache": True}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    if teacher:
        backbone_kw = {
            (
                "cache" if "cache" in inspect.signature(type(model.model).forward).parameters else "past_key_values"
            ): cache,
            "use_cache": True,
        }
        model.model(input_ids=ids, **backbone_kw)
    else:
        model.model(input_ids=ids, cache=cache)
    sync(device)
    prefill = time.perf_counter() - t0
    nxt = ids[:, -1:]
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        nxt = model(input_ids=nxt, **kw).logits[:, -1:].argmax(-1)
    sync(device)
    dt = time.perf_counter() - t0
    return {
        "tokens_per_s": ids.shape[0] * new_tokens / dt,
        "ms_per_step": 1e3 * dt / new_tokens,
        "prefill_s": prefill,
        "state_mib": cache_bytes(cache) / 2**20,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


class _StepClock:
    """A logits processor that only records, after a device sync, when generate reaches each decoding step."""

    def __init__(self, device):
        self.device, self.marks = device, []

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.marks.append(time.perf_counter())
        return scores


@torch.no_grad()
def decode_static(model, ids: torch.Tensor, new_tokens: int, device) -> dict:
    """The teacher as a tuned serving loop decodes: transformers' static KV cache, whose one-token forward generate
    compiles (torch.compile, mode reduce-overhead: CUDA graphs) on a GPU; tokens/s over the steps after the first
    (the prefill and the first step are left out; call once before to compile)."""
    from transformers import LogitsProcessorList

    clock = _StepClock(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
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
        "tokens_per_s": ids.shape[0] * steps / dt,
        "ms_per_step": 1e3 * dt / steps,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def main():
    ap = arg_parser(__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--contexts", default="1024,4096,16384,32768")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    from transformers import DynamicCache

    device = resolve_device("auto")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = model_config(args.model)
    teacher, _, student = random_teacher_and_student(cfg, device, dtype)
    rows = []
    for L in map(int, args.contexts.split(",")):
        for b in map(int, args.batches.split(",")):
            ids = torch.randint(0, cfg.vocab_size, (b, L), device=device)
            row = {"context": L, "batch": b}
            for name, model, make in (
                ("teacher", teacher, lambda: DynamicCache(config=cfg)),
                ("student", student, MohawkCache),
                ("student_eager", student, MohawkCache),
            ):
                student.config.decode_cuda_graph = name == "student"  # CUDA graph replay vs kernel by kernel
                try:
                    decode(model, make(), ids[:, : min(L, 64)], 2, device)  # warm-up
                    r = decode(model, make(), ids, args.new_tokens, device)
                except torch.OutOfMemoryError:
                    r = {"oom": True}
                row.update({f"{name}_{k}": v for k, v in r.items()})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            try:  # the strongest teacher baseline: static cache + CUDA graphs (compiled in the warm-up call)
                decode_static(teacher, ids, args.new_tokens, device)
                r = decode_static(teacher, ids, args.new_tokens, device)
            except torch.OutOfMemoryError:
                r = {"oom": True}
            row.update({f"teacher_static_{k}": v for k, v in r.items()})
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
            print(row, flush=True)
            save(args, device, dtype, rows)  # after every row: a run cut short keeps what it measured


def save(args, device, dtype, rows: list[dict]) -> None:
    """Write the rows so far as benchmarks/results/decode_speed-<model>-<device>.{json,md}."""
    dev = device_name(device)
    cmd = command()
    payload = {
        "device": dev,
        "versions": versions("transformers", "triton", "mamba_ssm"),
        "command": cmd,
        "model": args.model,
        "dtype": str(dtype),
        "new_tokens": args.new_tokens,
        "rows": rows,
    }
    lines = [
        f"# Decoding, {args.model}: SSD student (recurrent state) vs teacher (KV cache), {dev}",
        "",
        f"- command: `{cmd}`",
        f"- versions: {payload['versions']}",
        f"- {dtype}, random weights of the real dimensions; tokens/s over {args.new_tokens} greedy steps after "
        "the prompt's prefill; state = KV cache (teacher) or conv + SSM state (student); the student decodes by "
        "replaying one CUDA graph per step (mohawk.models.graphs; captured in the warm-up), the eager column "
        "launches its kernels one by one",
        "",
        "- the baseline is the teacher with transformers' static KV cache and its decoding step compiled into CUDA "
        "graphs (`generate(cache_implementation='static')`); 'teacher eager' is its plain DynamicCache loop",
        "",
    ]
    header = ["context", "batch", "teacher static+graphs tok/s", "student tok/s", "student / teacher static"]
    header += ["teacher eager tok/s", "student without CUDA graph tok/s", "teacher state MiB", "student state MiB"]
    table = []
    for r in rows:
        t, s, e = (r.get(f"{k}_tokens_per_s") for k in ("teacher", "student", "student_eager"))
        ts = r.get("teacher_static_tokens_per_s")
        table.append(
            [r["context"], r["batch"], fmt(ts, 0) if ts else "OOM", fmt(s, 0) if s else "OOM"]
            + [f"{s / ts:.2f}x" if s and ts else "-", fmt(t, 0) if t else "OOM", fmt(e, 0) if e else "OOM"]
            + [fmt(r.get("teacher_state_mib"), 1), fmt(r.get("student_state_mib"), 1)]
            + [fmt(r.get("teacher_peak_gib"), 2), fmt(r.get("student_peak_gib"), 2)]
        )
    lines += markdown_table([*header, "teacher peak GiB", "student peak GiB"], table)
    write(f"decode_speed-{args.model}-{dev.split(' (')[0]}", payload, lines, Path(args.out))


if __name__ == "__main__":
    main()
