"""THE training loop, shared by the three stages: AdamW, warmup-stable-decay (or cosine) schedule, gradient
accumulation to a token batch, clipping, bf16 autocast on GPU, a loss-spike guard (skip the update; after repeated
spikes roll back to a checkpoint taken before them, with a lower LR), checkpoints, metrics lines and a progress bar
with tokens/s. It knows neither the stage nor the teacher's family: a stage gives ``parameters()``, ``loss(batch)``
and the flags ``compilable`` / ``shards_student``."""

from __future__ import annotations

import math
import time
import typing
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mohawk.checkpoint import Checkpointer
from mohawk.errors import MohawkError
from mohawk.metrics import MetricsLog
from mohawk.parallel import Parallel, flatten_metrics, unflatten_metrics
from mohawk.schedule import DivergenceGuard, LoopSettings, LoopState, SpikeGuard, StageBudget, lr_factor

__all__ = [
    "DivergenceGuard",
    "LoopSettings",
    "LoopState",
    "SpikeGuard",
    "StageBudget",
    "compile_mode",
    "lr_factor",
    "train_stage",
]


def compile_mode(mode: str, stage, device: torch.device, parallel: Parallel) -> str:
    """The torch.compile mode ``stage`` trains with (see Stage.compiled), or "off" where it does not apply: CPU, a
    stage that is not ``compilable``, a student sharded by FSDP2 (its hooks sit on the very blocks compiled). Under
    DDP "graphs" becomes "fuse": DDP's gradient hooks around replayed backward graphs are untested."""
    if mode == "off" or device.type != "cuda" or not stage.compilable or parallel.uses_fsdp(stage):
        return "off"
    return "fuse" if parallel.active and mode == "graphs" else mode


def train_stage(
    stage,
    batches: Iterator[torch.Tensor],
    budget: StageBudget,
    loop: LoopSettings,
    *,
    checkpointer: Checkpointer,
    log: MetricsLog,
    resume: Path | None = None,
    progress: bool = True,
    parallel: Parallel | None = None,
) -> LoopState:
    """Train ``stage`` for ``budget`` (see StageBudget); ``batches`` must already skip what a resumed run consumed.

    An update whose loss spikes (SpikeGuard) is skipped; ``loop.spike_patience`` spikes in a row roll the student and
    optimizer back to this stage's newest checkpoint from before the streak, with the LR scaled by
    ``loop.rollback_lr_factor``, at most ``loop.max_rollbacks`` times, then the stage fails with a MohawkError. The
    data keeps moving forward. Under torchrun ``batches`` yields this rank's rows of each global batch,
    ``budget.micro_tokens`` counts the global micro-batch, and the logged loss and metrics are rank averages."""
    parallel = parallel or Parallel()
    if parallel.uses_fsdp(stage):
        parallel.shard_student(stage.student)  # before the optimizer: parameters become DTensors
    student, named = stage.student, stage.parameters()
    trainable = {id(p) for _, p in named}
    for p in student.parameters():
        p.requires_grad_(id(p) in trainable)
    params = [p for _, p in named]
    fused = bool(params) and all(p.is_cuda for p in params) and not parallel.is_sharded(student)
    groups: dict[tuple[bool, float], list] = {}  # (decays, lr scale) -> parameters
    for n, p in named:
        groups.setdefault((p.dim() >= 2, stage.lr_scale(n)), []).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": ps, "weight_decay": loop.weight_decay if decays else 0.0, "lr_scale": scale}
            for (decays, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
        ],
        lr=budget.lr,
        betas=(0.9, 0.95),
        fused=fused or None,
    )
    runner, total_steps, accum = parallel.runner(stage), budget.steps, budget.grad_accum
    state = LoopState(stage=stage.number, lr=budget.lr)

    def save(done: bool) -> Path | None:
        return checkpointer.save(student, None if done else optimizer, state.as_dict(done))

    if resume is not None:
        saved = Checkpointer.load(resume, student, optimizer)
        for k in ("step", "tokens", "skipped", "rollbacks", "lr_scale"):
            setattr(state, k, saved.get(k, getattr(state, k)))
        state.batches = saved.get("batches", state.step * accum)
        if saved.get("lr") != budget.lr:  # the user changed the LR: a fresh rollback budget at the new LR
            state.rollbacks, state.lr_scale = 0, 1.0
    else:
        save(done=False)  # the stage's starting point: the first rollback target
    guard = SpikeGuard(loop.spike_factor, loop.spike_window)
    climb = DivergenceGuard(loop.divergence_factor, loop.divergence_patience)
    streak_start: int | None = None  # the step before the first spike of the current streak
    device = next(student.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    student.train()
    bar = Progress(
        TextColumn(f"stage {stage.number} {stage.name}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} tok"),
        TextColumn("{task.fields[tps]:>7,.0f} tok/s"),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not (progress and parallel.main),
    )
    task = bar.add_task(
        "", total=total_steps * budget.micro_tokens * accum, completed=state.tokens, tps=0.0, loss=float("nan")
    )
    t_start, tokens_start = time.perf_counter(), state.tokens
    mode = compile_mode(loop.compile, stage, device, parallel)
    # Replayed CUDA graphs write the gradients into the same memory at every backward: a ``.grad`` that *is* that
    # memory (autograd's default for a first gradient) would be overwritten by the next micro-batch's backward.
    # Gradients that exist before the first backward are accumulated into instead, and kept between updates.
    keep_grads = mode == "graphs"
    if keep_grads:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    with bar, stage.compiled(mode) if mode != "off" else nullcontext():
        while state.step < total_steps:
            for g in optimizer.param_groups:
                g["lr"] = (
                    budget.lr
                    * g["lr_scale"]
                    * state.lr_scale
                    * lr_factor(state.step, total_steps, loop.schedule, loop.warmup_fraction, loop.decay_fraction)
                )
            loss_sum: typing.Any = 0.0
            metrics_sum: dict = {}
            for micro in range(accum):
                if mode == "graphs":
                    torch.compiler.cudagraph_mark_step_begin()  # earlier replays' outputs are no longer needed
                batch = next(batches)
                if device.type == "cuda" and batch.device.type == "cpu":  # no host wait for the copy (pinned memory)
                    batch = batch.pin_memory().to(device, non_blocking=True)
                else:
                    batch = batch.to(device)
                state.batches += 1
                # every micro-batch runs even after a non-finite loss: all ranks must take part in each reduction
                with runner.sync(last=micro == accum - 1):
                    with autocast:
                        loss, metrics = runner.loss(batch)
                    (loss / accum).backward()
                loss_sum = loss_sum + loss.detach() / accum  # tensors: no device sync per micro-batch
                _accumulate(metrics_sum, metrics, 1 / accum)
            loss_sum, metrics_sum = parallel.mean_metrics(*_to_floats(loss_sum, metrics_sum))
            spike, diverged = guard.is_spike(loss_sum), False
            if not spike:
                if loop.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, loop.grad_clip)
                optimizer.step()
                guard.accept(loss_sum)
                streak_start = None
                diverged = climb.update(loss_sum)
            elif streak_start is None:
                streak_start = state.step
            optimizer.zero_grad(set_to_none=not keep_grads)
            state.step += 1
            state.tokens += budget.micro_tokens * accum
            if spike:
                state.skipped += 1
                log.write(
                    {
                        "stage": stage.number,
                        "step": state.step,
                        "tokens": state.tokens,
                        "event": "spike",
                        "spike_loss": loss_sum if math.isfinite(loss_sum) else str(loss_sum),
                        "median": guard.median,
                    }
                )
                if streak_start is not None and state.step - streak_start >= loop.spike_patience:
                    why = f"the loss kept spiking ({loop.spike_patience} updates in a row)"
                    _roll_back(state, student, optimizer, checkpointer, loop, log, streak_start, why, budget.lr)
                    streak_start = None
            if diverged:
                log.write(
                    {
                        "stage": stage.number,
                        "step": state.step,
                        "tokens": state.tokens,
                        "event": "divergence",
                        "smoothed_loss": climb.smoothed,
                        "best": climb.best,
                    }
                )
                why = (
                    f"its smoothed loss climbed to {climb.smoothed:.4g}, above {loop.divergence_factor:g} x its best "
                    f"({climb.best:.4g}) for {loop.divergence_patience} updates"
                )
                # the climb's start: no checkpoint was taken while the smoothed loss stayed above the line
                _roll_back(state, student, optimizer, checkpointer, loop, log, state.step, why, budget.lr)
                climb.restart()
            tps = max(0, state.tokens - tokens_start) / max(time.perf_counter() - t_start, 1e-9)
            bar.update(task, completed=state.tokens, tps=tps, loss=loss_sum)
            if not spike and (state.step % loop.log_every == 0 or state.step == total_steps):
                log.write(
                    {
                        "stage": stage.number,
                        "step": state.step,
                        "tokens": state.tokens,
                        "loss": loss_sum,
                        "lr": optimizer.param_groups[0]["lr"],
                        "tokens_per_s": tps,
                        "skipped": state.skipped,
                        **metrics_sum,
                    }
                )
            # no checkpoint inside a spike streak: it could become the target of the rollback that ends the streak
            # nor while the smoothed loss is well above the stage's best: the kept ones stay from before a climb
            if (
                state.step % loop.checkpoint_every == 0
                and state.step < total_steps
                and streak_start is None
                and climb.calm
            ):
                save(done=False)
    student.eval()
    for p in student.parameters():
        p.requires_grad_(True)
        if keep_grads:
            p.grad = None
    save(done=True)
    return state


def _roll_back(
    state: LoopState,
    student,
    optimizer,
    checkpointer: Checkpointer,
    loop: LoopSettings,
    log: MetricsLog,
    before_step: int,
    why: str,
    peak_lr: float,
) -> None:
    """Restore this stage's newest good checkpoint of a step <= ``before_step``, lower the LR; after
    ``loop.max_rollbacks`` stop with a MohawkError saying ``why`` and which lower LR to resume with."""
    if state.rollbacks >= loop.max_rollbacks:
        lower = peak_lr * state.lr_scale / 10
        raise MohawkError(
            f"stage {state.stage} diverged: {why}, after {state.rollbacks} rollbacks (LR scaled down to "
            f"{state.lr_scale:g}); its checkpoints are from before: resume with a lower learning rate, e.g. "
            f"--resume --stage{state.stage}-lr {lower:.3g} (or raise --spike-factor / --divergence-factor)"
        )
    target = checkpointer.latest(stage=state.stage, before_step=before_step)
    if target is None:
        raise MohawkError(
            f"stage {state.stage}: {why}, and no checkpoint of this stage from before it is left to roll back to"
        )
    saved = Checkpointer.load(target, student, optimizer)
    state.step, state.tokens = saved["step"], saved["tokens"]
    state.rollbacks += 1
    state.lr_scale *= loop.rollback_lr_factor
    log.write(
        {
            "stage": state.stage,
            "step": state.step,
            "tokens": state.tokens,
            "event": "rollback",
            "to": target.name,
            "lr_scale": state.lr_scale,
            "rollbacks": state.rollbacks,
        }
    )


def _to_floats(loss, metrics: dict) -> tuple[float, dict]:
    """The update's loss and (nested) metrics, accumulated as tensors, as Python numbers: one device sync."""
    paths, values = flatten_metrics(metrics)
    values = [loss] + values
    tensors = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
    if tensors:
        got = torch.stack([values[i].detach().float().reshape(()) for i in tensors]).tolist()
        for i, v in zip(tensors, got, strict=True):
            values[i] = v
    return float(values[0]), unflatten_metrics(paths, [float(v) for v in values[1:]])


def _accumulate(acc: dict, metrics: dict, w: float) -> None:
    for k, v in metrics.items():
        if isinstance(v, dict):
            _accumulate(acc.setdefault(k, {}), v, w)
        else:
            acc[k] = acc.get(k, 0.0) + w * v
