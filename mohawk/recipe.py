"""The recipe: what each stage trains with, from the configuration's budgets."""

from __future__ import annotations

from mohawk.train import StageBudget


def budgets(cfg) -> dict[int, StageBudget]:
    """{stage: StageBudget} for stages 1-3 of ``cfg`` (a DistillConfig)."""
    return {s: StageBudget(tokens=cfg.stage_tokens(s), micro_tokens=cfg.micro_tokens, grad_accum=cfg.grad_accum,
                           lr=cfg.stage_lr(s)) for s in (1, 2, 3)}
