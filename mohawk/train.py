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
from mohawk.errors import MohawkError, raise_if_signalled
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
    named = stage.parameters()
    params = _set_trainable(stage.student, named)
    run = _StageRun(stage, _optimizer(stage, named, loop, budget.lr, parallel), budget, loop, checkpointer, log)
    run.start(resume)
    device = next(stage.student.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    mode = compile_mode(loop.compile, stage, device, parallel)
    # Replayed CUDA graphs write the gradients into the same memory at every backward: a ``.grad`` that *is* that
    # memory (autograd's default for a first gradient) would be overwritten by the next micro-batch's backward.
    # Gradients that exist before the first backward are accumulated into instead, and kept between updates.
    keep_grads = mode == "graphs"
    if keep_grads:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    runner, state, optimizer = parallel.runner(stage), run.state, run.optimizer
    spikes = SpikeGuard(loop.spike_factor, loop.spike_window)
    climb = DivergenceGuard(loop.divergence_factor, loop.divergence_patience)
    streak_start: int | None = None  # the step before the first spike of the current streak
    stage.student.train()
    bar = _ProgressBar(stage, budget, state.tokens, enabled=progress and parallel.main)
    with bar, stage.compiled(mode) if mode != "off" else nullcontext():
        last = time.perf_counter()
        while state.step < budget.steps:
            raise_if_signalled()  # a signal whose exception a finalizer swallowed still stops the run
            run.set_lr()
            loss, metrics = parallel.mean_metrics(
                *_to_floats(*_update_gradients(runner, batches, budget.grad_accum, device, autocast, mode, state))
            )
            spike, diverged = spikes.is_spike(loss), False
            if not spike:
                if loop.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, loop.grad_clip)
                optimizer.step()
                spikes.accept(loss)
                streak_start = None
                diverged = climb.update(loss)
            elif streak_start is None:
                streak_start = state.step
            optimizer.zero_grad(set_to_none=not keep_grads)
            state.step += 1
            state.tokens += budget.micro_tokens * budget.grad_accum
            if spike:
                state.skipped += 1
                run.event("spike", spike_loss=loss if math.isfinite(loss) else str(loss), median=spikes.median)
                if streak_start is not None and state.step - streak_start >= loop.spike_patience:
                    run.roll_back(streak_start, f"the loss kept spiking ({loop.spike_patience} updates in a row)")
                    streak_start = None
            if diverged:
                run.event("divergence", smoothed_loss=climb.smoothed, best=climb.best)
                why = (
                    f"its smoothed loss climbed to {climb.smoothed:.4g}, above {loop.divergence_factor:g} x its best "
                    f"({climb.best:.4g}) for {loop.divergence_patience} updates"
                )
                # the climb's start: no checkpoint was taken while the smoothed loss stayed above the line
                run.roll_back(state.step, why)
                climb.restart()
            tps = bar.update(state.tokens, loss)
            if not spike and (state.step % loop.log_every == 0 or state.step == budget.steps):
                run.log_update(loss, tps, metrics)
            # no checkpoint inside a spike streak: it could become the target of the rollback that ends the streak
            # nor while the smoothed loss is well above the stage's best: the kept ones stay from before a climb
            if state.step % loop.checkpoint_every == 0 and state.step < budget.steps:
                if streak_start is None and climb.calm:
                    run.save(done=False)
            now = time.perf_counter()  # the update's time, its checkpoint included (the loop syncs once an update)
            state.step_seconds.append(now - last)
            last = now
    stage.student.eval()
    for p in stage.student.parameters():
        p.requires_grad_(True)
        if keep_grads:
            p.grad = None
    run.save(done=True)
    return state


def _set_trainable(student, named: list) -> list[torch.Tensor]:
    """Gradients on for the (name, parameter) pairs ``named`` alone; returns their parameters."""
    trainable = {id(p) for _, p in named}
    for p in student.parameters():
        p.requires_grad_(id(p) in trainable)
    return [p for _, p in named]


def _optimizer(stage, named: list, loop: LoopSettings, lr: float, parallel: Parallel) -> torch.optim.AdamW:
    """AdamW over the (name, parameter) pairs ``named``: weight decay on matrices only, one group per (decays, the
    stage's LR scale of the name), fused where every parameter is a plain CUDA tensor."""
    params = [p for _, p in named]
    fused = bool(params) and all(p.is_cuda for p in params) and not parallel.is_sharded(stage.student)
    groups: dict[tuple[bool, float], list] = {}  # (decays, lr scale) -> parameters
    for n, p in named:
        groups.setdefault((p.dim() >= 2, stage.lr_scale(n)), []).append(p)
    return torch.optim.AdamW(
        [
            {"params": ps, "weight_decay": loop.weight_decay if decays else 0.0, "lr_scale": scale}
            for (decays, scale), ps in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))
        ],
        lr=lr,
        betas=(0.9, 0.95),
        fused=fused or None,
    )


def _update_gradients(runner, batches: Iterator[torch.Tensor], accum: int, device, autocast, mode: str, state):
    """One update's forward and backward passes over ``accum`` micro-batches; the mean loss and metrics, as tensors
    (no device sync per micro-batch)."""
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
        loss_sum = loss_sum + loss.detach() / accum
        _accumulate(metrics_sum, metrics, 1 / accum)
    return loss_sum, metrics_sum


class _StageRun:
    """One stage's optimizer, state and outputs: the LR it sets, the checkpoints and metrics lines it writes, the
    rollbacks it makes."""

    def __init__(self, stage, optimizer, budget: StageBudget, loop: LoopSettings, checkpointer, log: MetricsLog):
        self.stage, self.optimizer, self.budget, self.loop = stage, optimizer, budget, loop
        self.checkpointer, self.log = checkpointer, log
        self.state = LoopState(stage=stage.number, lr=budget.lr)

    def start(self, resume: Path | None) -> None:
        """Take the state of checkpoint ``resume``, or save the stage's starting point (the first rollback target)."""
        if resume is None:
            self.save(done=False)
            return
        state = self.state
        saved = Checkpointer.load(resume, self.stage.student, self.optimizer)
        for k in ("step", "tokens", "skipped", "rollbacks", "lr_scale"):
            setattr(state, k, saved.get(k, getattr(state, k)))
        state.batches = saved.get("batches", state.step * self.budget.grad_accum)
        if saved.get("lr") != self.budget.lr:  # the user changed the LR: a fresh rollback budget at the new LR
            state.rollbacks, state.lr_scale = 0, 1.0

    def save(self, done: bool) -> Path | None:
        return self.checkpointer.save(self.stage.student, None if done else self.optimizer, self.state.as_dict(done))

    def set_lr(self) -> None:
        """Each group's LR for the coming update: peak x group scale x rollback scale x schedule."""
        loop, state = self.loop, self.state
        factor = lr_factor(state.step, self.budget.steps, loop.schedule, loop.warmup_fraction, loop.decay_fraction)
        for g in self.optimizer.param_groups:
            g["lr"] = self.budget.lr * g["lr_scale"] * state.lr_scale * factor

    def event(self, name: str, **fields) -> None:
        state = self.state
        self.log.write({"stage": state.stage, "step": state.step, "tokens": state.tokens, "event": name, **fields})

    def log_update(self, loss: float, tokens_per_s: float, metrics: dict) -> None:
        state = self.state
        self.log.write(
            {
                "stage": state.stage,
                "step": state.step,
                "tokens": state.tokens,
                "loss": loss,
                "lr": self.optimizer.param_groups[0]["lr"],
                "tokens_per_s": tokens_per_s,
                "skipped": state.skipped,
                **metrics,
            }
        )

    def roll_back(self, before_step: int, why: str) -> None:
        """Restore this stage's newest good checkpoint of a step <= ``before_step``, lower the LR; after
        ``loop.max_rollbacks`` stop with a MohawkError saying ``why`` and which lower LR to resume with."""
        state, loop = self.state, self.loop
        if state.rollbacks >= loop.max_rollbacks:
            lower = self.budget.lr * state.lr_scale / 10
            raise MohawkError(
                f"stage {state.stage} diverged: {why}, after {state.rollbacks} rollbacks (LR scaled down to "
                f"{state.lr_scale:g}); its checkpoints are from before: resume with a lower learning rate, e.g. "
                f"--resume --stage{state.stage}-lr {lower:.3g} (or raise --spike-factor / --divergence-factor)"
            )
        target = self.checkpointer.latest(stage=state.stage, before_step=before_step)
        if target is None:
            raise MohawkError(
                f"stage {state.stage}: {why}, and no checkpoint of this stage from before it is left to roll back to"
            )
        saved = Checkpointer.load(target, self.stage.student, self.optimizer)
        state.step, state.tokens = saved["step"], saved["tokens"]
        state.rollbacks += 1
        state.lr_scale *= loop.rollback_lr_factor
        self.event("rollback", to=target.name, lr_scale=state.lr_scale, rollbacks=state.rollbacks)


class _ProgressBar:
    """The stage's progress bar: tokens done of the budget, tokens/s since this invocation started, the loss."""

    def __init__(self, stage, budget: StageBudget, tokens: int, enabled: bool):
        self.bar = Progress(
            TextColumn(f"stage {stage.number} {stage.name}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} tok"),
            TextColumn("{task.fields[tps]:>7,.0f} tok/s"),
            TextColumn("loss {task.fields[loss]:.4g}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        total = budget.steps * budget.micro_tokens * budget.grad_accum
        self.task = self.bar.add_task("", total=total, completed=tokens, tps=0.0, loss=float("nan"))
        self.t_start, self.tokens_start = time.perf_counter(), tokens

    def update(self, tokens: int, loss: float) -> float:
        """Show ``tokens`` done and ``loss``; returns the tokens/s since the start."""
        tps = max(0, tokens - self.tokens_start) / max(time.perf_counter() - self.t_start, 1e-9)
        self.bar.update(self.task, completed=tokens, tps=tps, loss=loss)
        return tps

    def __enter__(self) -> _ProgressBar:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)


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
