"""The recipe: from the budgets a user gives to what every stage trains with.

Given a total (``tokens``) or per-stage token budgets, each stage gets

- its tokens: explicit ``stageN_tokens`` win; a ``tokens`` total is split over the stages run by ``SHARES``
  (renormalised over the stages run, the explicit ones taken out first); with neither, ``DEFAULT_TOKENS``;
- tokens per update: explicit ``tokens_per_update`` wins (a warning if the stage then makes fewer than ``MIN_STEPS``
  optimizer steps); else the budget over ``TARGET_STEPS[s]``, rounded down to whole micro-batches, between one
  micro-batch and ``MAX_TOKENS_PER_UPDATE``;
- a micro-batch of ``batch_size`` sequences, or fewer when even one micro-batch per update would leave the stage
  under ``MIN_STEPS`` steps (the batch is the memory limit, not a target);
- a peak LR: explicit ``stageN_lr``, else ``lr``, else ``DEFAULT_LR[s]`` for a stage on ``DEFAULT_TOKENS``, else
  ``LR[s]``.

The constants are the measured choices (benchmarks/README.md and results/headline/ hold the sweeps behind them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mohawk.schedule import StageBudget

if TYPE_CHECKING:
    from rich.console import Console

    from mohawk.config import DistillConfig

SHARES = {1: 0.05, 2: 0.10, 3: 0.85, 4: 0.05}  # of a total budget, per stage (renormalised over the stages run)
DEFAULT_TOKENS = {1: 4096, 2: 24576, 3: 16384}  # the embedded CPU default, when no budget is given (stage 4: 4,096)
DEFAULT_LR = {2: 3e-3, 3: 3e-4}  # ... and its LRs: measured on 2 cores (48 / 32 steps), see results/default-cpu
TARGET_STEPS = {1: 100, 2: 200, 3: 1000, 4: 200}  # optimizer steps a stage aims for, budget permitting
MIN_STEPS = 20  # fewer optimizer steps than this is under-training: avoided, or warned about when forced
MAX_TOKENS_PER_UPDATE = 131072
STAGE_NUMBERS = (1, 2, 3, 4)
LR = {1: 1e-3, 2: 1e-3, 3: 5e-4, 4: 3e-4}  # peak LRs; stage 3: the best of the results/headline sweep
# (2e-4 helped one 10M hybrid and no 20M student: results/recall points 27, 29)
RECALL_STAGE = 4  # the recall phase: it trains on --recall-data, not on the corpus


@dataclass
class Plan:
    """The resolved schedule of every stage: ``budgets[s]`` (StageBudget), ``rows[s]`` sequences per micro-batch,
    and ``warnings`` (one line each) for what the user forced below the recipe's minimum."""

    budgets: dict[int, StageBudget] = field(default_factory=dict)
    rows: dict[int, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        """One row per stage with a budget: tokens, tokens per update, micro-batch, optimizer steps, peak LR."""
        return [
            {
                "stage": s,
                "tokens": b.tokens,
                "tokens_per_update": b.micro_tokens * b.grad_accum,
                "micro_batch": self.rows[s],
                "grad_accum": b.grad_accum,
                "steps": b.steps,
                "lr": b.lr,
            }
            for s, b in sorted(self.budgets.items())
            if b.tokens
        ]

    def show(
        self, cfg: DistillConfig, corpus_tokens: int | None, console: Console
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Print one line per stage of ``table()`` on ``console``; returns the table, each row with the epochs its
        stage makes over a corpus of ``corpus_tokens`` (None for the recall phase), and the plan's warnings, a stage
        that repeats its corpus included."""
        rows = self.table()
        for row in rows:
            row["epochs"] = epochs(row["tokens"], corpus_tokens) if row["stage"] != RECALL_STAGE else None
            line = (
                f"stage {row['stage']}: {row['tokens']:,} tokens, {row['tokens_per_update']:,} per update "
                f"({row['micro_batch']} x {cfg.seq_len} x {row['grad_accum']}), {row['steps']} optimizer steps, "
                f"peak LR {row['lr']:g}"
            )
            if row["epochs"] is not None:
                line += f", {row['epochs']:.2f} epochs over ~{corpus_tokens:,} tokens of {cfg.data}"
            console.print(line)
        warnings = self.warnings + [
            f"stage {r['stage']} makes {r['epochs']:.1f} epochs over its corpus (~{corpus_tokens:,} tokens): it "
            "sees the same text again; give more distinct text (e.g. --data gutenberg+modern) or fewer tokens"
            for r in rows
            if r["epochs"] is not None and r["epochs"] > 1
        ]
        return rows, warnings


def stage_tokens(cfg: DistillConfig) -> dict[int, int]:
    """Tokens of each stage in cfg.stages (see module docstring); stages not run get 0."""
    run = list(cfg.stages)
    given = {s: getattr(cfg, f"stage{s}_tokens") for s in run if getattr(cfg, f"stage{s}_tokens") is not None}
    out = {s: 0 for s in STAGE_NUMBERS if s < 4 or s in run}  # the recall phase only where it runs
    out.update(given)
    rest = [s for s in run if s not in given]
    if not rest:
        return out
    if cfg.tokens is None:
        out.update({s: DEFAULT_TOKENS.get(s, DEFAULT_TOKENS[1]) for s in rest})
        return out
    left = max(0, cfg.tokens - sum(given.values()))
    weight = sum(SHARES[s] for s in rest)
    for s in rest:
        out[s] = int(left * SHARES[s] / weight)
    out[rest[-1]] += left - sum(out[s] for s in rest)  # the rounding remainder to the last stage
    return out


def plan(cfg: DistillConfig, world: int = 1) -> Plan:
    """The Plan of ``cfg`` (a DistillConfig) for a job of ``world`` processes (micro-batches split over them)."""
    p = Plan()
    tokens = stage_tokens(cfg)
    on_default = cfg.tokens is None  # stages without a budget of their own run on DEFAULT_TOKENS
    for s in tokens:
        default = on_default and getattr(cfg, f"stage{s}_tokens") is None
        lr = getattr(cfg, f"stage{s}_lr") or cfg.lr or (DEFAULT_LR.get(s) if default else None) or LR[s]
        rows = cfg.batch_size
        t = tokens[s]
        if t and cfg.tokens_per_update is None:
            # shrink the micro-batch only where one micro-batch per update would leave too few steps
            while rows > world and t / (rows * cfg.seq_len) < MIN_STEPS:
                rows = max(world, (rows // 2) // world * world)
        micro = rows * cfg.seq_len
        if cfg.tokens_per_update is not None:
            accum = max(1, cfg.tokens_per_update // micro)
        else:
            want = min(MAX_TOKENS_PER_UPDATE, t / TARGET_STEPS[s]) if t else micro
            accum = max(1, int(want // micro))
        budget = StageBudget(tokens=t, micro_tokens=micro, grad_accum=accum, lr=lr)
        if t and budget.steps < MIN_STEPS:
            why = (
                f"--tokens-per-update {cfg.tokens_per_update}"
                if cfg.tokens_per_update is not None
                else f"{t:,} tokens at {rows} x {cfg.seq_len} tokens per micro-batch"
            )
            p.warnings.append(
                f"stage {s} makes only {budget.steps} optimizer steps ({why}); the recipe wants at "
                f"least {MIN_STEPS}: give it more tokens or fewer tokens per update"
            )
        p.budgets[s], p.rows[s] = budget, rows
    return p


def budgets(cfg: DistillConfig) -> dict[int, StageBudget]:
    """{stage: StageBudget} of ``cfg`` on one process (see plan)."""
    return plan(cfg).budgets


def epochs(tokens: int, corpus_tokens: int | None) -> float | None:
    """Passes over a corpus of ``corpus_tokens`` that ``tokens`` make (None when the corpus size is unknown)."""
    return None if not corpus_tokens else tokens / corpus_tokens


__all__ = [
    "DEFAULT_LR",
    "DEFAULT_TOKENS",
    "LR",
    "MAX_TOKENS_PER_UPDATE",
    "MIN_STEPS",
    "Plan",
    "RECALL_STAGE",
    "SHARES",
    "TARGET_STEPS",
    "budgets",
    "epochs",
    "plan",
    "stage_tokens",
]
