"""What the training loop (mohawk.train) runs on: its settings (LoopSettings, declared with the schema in
mohawk.config), each stage's budget, the LR schedule, the loss-spike guard and the loop's state, which checkpoints
save."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from mohawk.config import LoopSettings as LoopSettings  # the loop's settings: the schema's fields


@dataclass(frozen=True)
class StageBudget:
    """One stage's budget: ``tokens`` in updates of ``grad_accum`` micro-batches of ``micro_tokens``, peak ``lr``."""

    tokens: int
    micro_tokens: int
    grad_accum: int
    lr: float

    @property
    def steps(self) -> int:
        """Optimizer steps: the token budget rounded up to whole updates."""
        return max(1, math.ceil(self.tokens / (self.micro_tokens * self.grad_accum)))


def lr_factor(step: int, total: int, schedule: str = "wsd", warmup: float = 0.1, decay: float = 0.2) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` of ``total``: linear warmup, then constant and a linear
    decay to 0 over the last ``decay`` fraction (WSD, the paper's) or a cosine decay to 0."""
    n_warm = int(total * warmup)
    if step < n_warm:
        return (step + 1) / n_warm
    if schedule == "cosine":
        progress = (step - n_warm) / max(1, total - n_warm)
        return 0.5 * (1 + math.cos(math.pi * progress))
    n_decay = int(total * decay)
    if n_decay and step >= total - n_decay:
        return (total - step) / n_decay
    return 1.0


@dataclass
class LoopState:
    stage: int
    step: int = 0  # optimizer steps done
    tokens: int = 0
    skipped: int = 0  # updates skipped for a non-finite or spiking loss
    batches: int = 0  # micro-batches drawn from the data (more than step * grad_accum after a rollback)
    rollbacks: int = 0
    lr_scale: float = 1.0  # multiplied by rollback_lr_factor at each rollback
    lr: float = 0.0  # the stage's peak LR (a resume with another one starts a fresh rollback budget)
    step_seconds: list[float] = field(default_factory=list, repr=False)  # this invocation's, not checkpointed

    def timing(self) -> dict:
        """This invocation's update times: {"median_step_ms", "stall_s"}, where the stall sums what updates slower
        than 3x the median took beyond it (a checkpoint written in the loop, a data source that ran dry, a
        rollback); {} before any update."""
        if not self.step_seconds:
            return {}
        median = statistics.median(self.step_seconds)
        stall = sum(t - median for t in self.step_seconds if t > 3 * median)
        return {"median_step_ms": round(1e3 * median, 2), "stall_s": round(stall, 2)}

    def as_dict(self, done: bool) -> dict:
        return {
            "stage": self.stage,
            "step": self.step,
            "tokens": self.tokens,
            "skipped": self.skipped,
            "batches": self.batches,
            "rollbacks": self.rollbacks,
            "lr_scale": self.lr_scale,
            "lr": self.lr,
            "done": done,
        }


class SpikeGuard:
    """Flags a loss that is non-finite or above ``factor`` x the median of the last ``window`` accepted losses
    (needs ``min(window, 8)`` of them first; factor 0 checks only finiteness)."""

    def __init__(self, factor: float, window: int):
        self.factor, self.window = factor, window
        self.history: list[float] = []

    def is_spike(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        if self.factor and len(self.history) >= min(self.window, 8):
            return loss > self.factor * statistics.median(self.history)
        return False

    def accept(self, loss: float) -> None:
        self.history = (self.history + [loss])[-self.window :]

    @property
    def median(self) -> float | None:
        return statistics.median(self.history) if self.history else None


class DivergenceGuard:
    """Flags a steady climb, which the spike guard cannot see (each loss only a little above the last): the smoothed
    loss (median of the last ``window`` accepted losses) above ``factor`` x the best smoothed loss of the stage for
    ``patience`` updates in a row (factor 0: off). ``calm``: the smoothed loss is within sqrt(factor) of the best,
    the only time the loop takes a checkpoint, so that the checkpoints a divergence leaves are from before the climb
    (a short window: the median lags a climb by window / 2 updates)."""

    def __init__(self, factor: float, patience: int, window: int = 8):
        self.factor, self.patience, self.window = factor, patience, window
        self.history: list[float] = []
        self.best: float | None = None
        self.smoothed: float | None = None
        self.above = 0

    def update(self, loss: float) -> bool:
        """Record an accepted loss; True when the stage has diverged."""
        self.history = (self.history + [loss])[-self.window :]
        if not self.factor or len(self.history) < self.window:
            return False
        self.smoothed = statistics.median(self.history)
        self.best = self.smoothed if self.best is None else min(self.best, self.smoothed)
        self.above = self.above + 1 if self.smoothed > self.factor * self.best else 0
        return self.above >= self.patience

    @property
    def calm(self) -> bool:
        if not self.factor or self.smoothed is None or self.best is None:
            return True
        return self.smoothed <= math.sqrt(self.factor) * self.best

    def restart(self) -> None:
        """After a rollback: the climbing losses leave the window; the stage's best stays."""
        self.history, self.above, self.smoothed = [], 0, None
