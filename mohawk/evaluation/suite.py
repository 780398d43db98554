"""The evaluation suite behind ``mohawk eval`` (and the evaluation section of ``mohawk distill``'s report): teacher and
students side by side on perplexity, agreement with the teacher, loss by position past the training length, passkey
retrieval, lm-evaluation-harness zero-shot tasks, and greedy continuations."""

from __future__ import annotations

import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from mohawk.errors import MohawkError
from mohawk.evaluation.harness import TASKS, Limit, every_nth
from mohawk.evaluation.long_context import continuations, loss_by_position, passkey_scores
from mohawk.evaluation.perplexity import agreement, perplexity

BUILTIN = ("ppl", "agreement", "position", "passkey", "continuations")
ALL_TASKS = (*BUILTIN, *TASKS)


def parse_tasks(spec: str) -> list[str]:
    """'ppl,piqa' -> ['ppl', 'piqa']; 'all' -> every task; 'lm-eval' -> the harness tasks."""
    out = []
    for t in (x.strip() for x in spec.split(",")):
        if not t:
            continue
        expanded = list(ALL_TASKS) if t == "all" else list(TASKS) if t == "lm-eval" else [t]
        for e in expanded:
            if e not in ALL_TASKS:
                raise MohawkError(f"unknown evaluation task {e!r}: use {', '.join(ALL_TASKS)}, 'lm-eval' or 'all'")
            if e not in out:
                out.append(e)
    return out


def passkey_lengths(train_len: int, max_len: int) -> list[int]:
    """512, 1024, ... up to 8x the training length (at least 1024), within the models' maximum."""
    top = min(max(8 * train_len, 1024), max_len)
    lengths, n = [], 512
    while n <= top:
        lengths.append(n)
        n *= 2
    return lengths or [min(512, max_len)]


def long_sequences(
    data: str,
    tokenizer,
    train_len: int,
    max_len: int,
    n: int,
    *,
    seed: int = 0,
    val_source: str | None = None,
    field: str = "text",
) -> torch.Tensor:
    """n held-out sequences of 4x the training length (within max_len): the loss-by-position data (n, L)."""
    from mohawk.data import make_streams, take

    _, stream = make_streams(
        data, tokenizer, min(4 * train_len, max_len), val_source=val_source, seed=seed, field=field
    )
    return take(stream, n)


@contextmanager
def float32_matmuls(tf32: bool) -> Iterator[None]:
    """Within the block, float32 matmuls (cuBLAS and mohawk's SSD scan) take TF32 products with ``tf32``, else exact
    ones: torch's float32 matmul precision "high" or "highest", given back after."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@contextmanager
def _timed(clock: dict, phase: str):
    """Add the wall seconds of the block to clock[phase] (each phase ends on a host value, so GPU work is in it)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        clock[phase] = round(clock.get(phase, 0.0) + time.perf_counter() - t0, 2)


def run_suite(
    models: dict,
    tokenizer,
    *,
    teacher_key: str | None,
    tasks: list[str],
    val: torch.Tensor,
    long_val: torch.Tensor | None,
    train_len: int,
    max_len: int,
    limit: Limit | dict[str, Limit] = None,
    batch_size: int = 8,
    seed: int = 0,
    console=None,
    teacher_name: str | None = None,
    score_teacher: bool = True,
    passkey_trials: int = 20,
    passkey_at: list[int] | None = None,
    items: bool = False,
) -> dict:
    """Evaluate ``models`` ({name: HF causal LM}) on ``tasks``. val (n, L): held-out sequences for perplexity and
    agreement; long_val (n, 4 x train_len): for the loss-by-position curve; ``score_teacher`` False: the teacher
    serves only as the reference of agreement (its perplexity is still measured); ``limit``: items per lm-eval task
    (as harness.run_tasks: N, item indices or None, or {task: one of those}); passkey: ``passkey_trials`` keys at
    each of ``passkey_at`` lengths (default: passkey_lengths) with both fillers, ``batch_size`` trials at once (see
    passkey_scores); ``items``: keep per-item zero-shot scores. Returns the results dict: res["passkey"][model] =
    {length: hits with the repeated filler}, res["passkey_detail"][model] = passkey_scores' full answer,
    res["seconds"][model] = {phase: wall seconds} (perplexity, agreement, position, passkey, lm-eval, continuations:
    where an evaluation's time goes)."""
    say = console.print if console is not None else (lambda *a, **k: None)
    teacher = models.get(teacher_key) if teacher_key else None
    res: dict[str, typing.Any] = {
        "models": list(models),
        "teacher": teacher_key,
        "tasks": tasks,
        "train_len": train_len,
        "val_tokens": int(val.numel()),
        "scores": {m: {} for m in models},
        "position": {},
        "passkey": {},
        "passkey_detail": {},
        "continuations": {},
        "teacher_name": teacher_name if teacher_key else None,
    }
    harness = [t for t in tasks if t in TASKS]
    prompts = None
    if "continuations" in tasks:
        prompts = [tokenizer.decode(row[:32]) for row in val[:3]]
        res["prompts"] = prompts
    res["seconds"] = {}
    for name, model in models.items():
        model.eval()
        scores = res["scores"][name]
        clock: dict[str, float] = {}
        res["seconds"][name] = clock
        if name == teacher_key and not score_teacher:
            with _timed(clock, "perplexity"):
                scores["perplexity"] = perplexity(model, val, batch_size)
            continue
        if "ppl" in tasks:
            say(f"{name}: perplexity on {val.numel():,} held-out tokens")
            with _timed(clock, "perplexity"):
                scores["perplexity"] = perplexity(model, val, batch_size)
        if "agreement" in tasks and teacher is not None and name != teacher_key:
            with _timed(clock, "agreement"):
                scores.update(agreement(model, teacher, val, batch_size))
        if "position" in tasks and long_val is not None:
            say(f"{name}: loss by position up to {long_val.shape[1]} tokens")
            with _timed(clock, "position"):
                res["position"][name] = loss_by_position(model, long_val, max(1, batch_size // 2))
        if "passkey" in tasks:
            lengths = passkey_at or passkey_lengths(train_len, max_len)
            say(f"{name}: passkey retrieval at {lengths} tokens, {passkey_trials} keys each, two fillers")
            with _timed(clock, "passkey"):
                detail = passkey_scores(model, tokenizer, lengths, passkey_trials, seed, batch_size=batch_size)
            res["passkey_detail"][name] = detail
            res["passkey"][name] = {k: v["hits"] for k, v in detail["repeat"].items()}
        if harness:
            from mohawk.evaluation.harness import run_tasks

            first = f" (first {limit} items each)" if isinstance(limit, int) else ""
            say(f"{name}: lm-eval {', '.join(harness)}{first}")
            device = next(model.parameters()).device
            with _timed(clock, "lm-eval"):
                harness_scores = run_tasks(
                    model,
                    tokenizer,
                    harness,
                    limit=limit,
                    batch_size=batch_size,
                    device=str(device),
                    seed=seed,
                    items=items,
                )
            for task, r in harness_scores.items():
                scores[task] = r
        if prompts is not None:
            with _timed(clock, "continuations"):
                res["continuations"][name] = continuations(model, tokenizer, prompts)
    return res


def evaluate(
    models: list[str],
    *,
    teacher: str | None = "smollm2-135m",
    data: str = "bundled",
    tasks: str = "ppl,agreement,position,passkey,continuations,lm-eval",
    limit: Limit | dict[str, Limit] = None,
    every: int = 1,
    seq_len: int = 512,
    val_sequences: int = 16,
    train_len: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    tf32: bool = False,
    seed: int = 0,
    console=None,
    score_teacher: bool = True,
    passkey_trials: int = 20,
    passkey_at: list[int] | None = None,
    items: bool = False,
    out: str | None = None,
    overwrite: bool = False,
    command: str = "mohawk eval",
) -> dict:
    """Load the teacher and each model directory and run the suite on them: the results dict (see run_suite; the
    CLI presents it with mohawk.evaluation.present). With ``out``: OUT is claimed first (mohawk.rundir.output: one
    writer, no other command's run, an earlier evaluation replaced only with ``overwrite``) and results.json,
    report.md and plots/ are written into it. ``tf32``: float32 matmuls in TF32 (cuBLAS and mohawk's SSD scan)
    during the evaluation, else exact ones, whatever torch's setting was (given back after); res["matmul_precision"]
    says which ("high" or "highest")."""
    settings = {k: v for k, v in locals().items() if k not in ("out", "overwrite", "command", "tf32")}

    def run() -> dict:
        with float32_matmuls(tf32):
            res = _evaluate(**settings)
            res["matmul_precision"] = torch.get_float32_matmul_precision()
        return res

    if out is None:
        return run()
    from mohawk.data import input_paths
    from mohawk.errors import require_local
    from mohawk.evaluation.present import write_eval_report
    from mohawk.rundir import output

    parse_tasks(tasks)  # what can be refused is refused before OUT is touched
    for m in models:
        require_local(m, "model")
    reads = [*models, teacher, *input_paths(data)]
    with output(Path(out), "eval", overwrite=overwrite, reads=reads, data=input_paths(data)):
        res = run()
        write_eval_report(Path(out), res, command)
    return res


def _evaluate(
    *,
    models,
    teacher,
    data,
    tasks,
    limit,
    every,
    seq_len,
    val_sequences,
    train_len,
    batch_size,
    device,
    seed,
    console,
    score_teacher,
    passkey_trials,
    passkey_at,
    items,
) -> dict:
    """evaluate() without an output directory: the results dict."""
    import platform

    from transformers import AutoTokenizer

    from mohawk.data import make_streams, take
    from mohawk.models.loading import load_model
    from mohawk.parallel import resolve_device
    from mohawk.teachers import load_teacher

    t0 = time.perf_counter()
    task_list = parse_tasks(tasks)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    loaded, tokenizer, teacher_key = {}, None, None
    if teacher and teacher != "none":
        t_model, tokenizer, _ = load_teacher(teacher, device=dev)
        teacher_key = "teacher"
        loaded[teacher_key] = t_model
    train_lens = []
    for path in models:
        model = load_model(path, dev)
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path)
            except (OSError, ValueError) as e:
                raise MohawkError(f"no tokenizer in {path!r} and no --teacher to take one from") from e
        name = Path(path).name if Path(path).name not in ("student", "") else Path(path).resolve().parent.name
        while name in loaded:
            name += "'"
        loaded[name] = model
        if getattr(model.config, "mohawk_train_seq_len", None):
            train_lens.append(model.config.mohawk_train_seq_len)
    if not loaded:
        raise MohawkError("nothing to evaluate: give model directories and/or --teacher")
    load_s = time.perf_counter() - t0
    train_len = train_len or (max(train_lens) if train_lens else 512)
    max_len = min(getattr(m.config, "max_position_embeddings", None) or 1 << 20 for m in loaded.values())
    if seq_len > max_len:
        raise MohawkError(f"--seq-len {seq_len} is above the models' maximum of {max_len} positions")
    _, val_stream = make_streams(data, tokenizer, seq_len, seed=seed)
    val = take(val_stream, val_sequences)
    long_val = (
        long_sequences(data, tokenizer, train_len, max_len, max(2, min(8, val_sequences)), seed=seed)
        if "position" in task_list
        else None
    )
    data_s = time.perf_counter() - t0 - load_s
    if every > 1:  # every Nth item of each lm-eval task (the first `limit` of those)
        if isinstance(limit, dict) or (limit is not None and not isinstance(limit, int)):
            raise MohawkError("--every takes a count for --limit, not a list of items")
        limit = every_nth([t for t in task_list if t in TASKS], every, limit)
    res = run_suite(
        loaded,
        tokenizer,
        teacher_key=teacher_key,
        tasks=task_list,
        val=val,
        long_val=long_val,
        train_len=train_len,
        max_len=max_len,
        limit=limit,
        batch_size=batch_size,
        seed=seed,
        console=console,
        teacher_name=teacher,
        score_teacher=score_teacher,
        passkey_trials=passkey_trials,
        passkey_at=passkey_at,
        items=items,
    )
    res["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.machine()})"
    res["versions"] = {"torch": torch.__version__, "python": platform.python_version()}
    res["paths"] = {"teacher": teacher, **dict(zip([k for k in loaded if k != teacher_key], models, strict=True))}
    res["load_s"], res["data_s"] = round(load_s, 2), round(data_s, 2)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res
