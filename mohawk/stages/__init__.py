"""The three MOHAWK stages, and the recall phase after them. A stage = which student parameters train + a loss over
one teacher forward's captures.

Every stage has ``parameters()`` (the trainable (name, tensor) pairs) and ``loss(batch) -> (loss, metrics)``;
train.py runs any of them with the same loop. Stages know nothing of the teacher's family (the adapter hides it).
"""

from __future__ import annotations

import typing

from mohawk.stages.alignment import HiddenStateAlignment
from mohawk.stages.distillation import KnowledgeDistillation, LossWeights
from mohawk.stages.orientation import MatrixOrientation
from mohawk.stages.recall import RecallPhase

if typing.TYPE_CHECKING:
    from mohawk.config import DistillConfig

STAGES = {1: MatrixOrientation, 2: HiddenStateAlignment, 3: KnowledgeDistillation, 4: RecallPhase}


def build(stage: int, student, adapter, cfg: DistillConfig):
    """Stage ``stage`` of ``student`` against the teacher behind ``adapter``, with the run's options for it."""
    options: dict[str, typing.Any] = {}
    if stage == 1:
        options = {"tile": cfg.stage1_tile}
    elif stage in (3, 4):
        options = {
            "weights": LossWeights(cfg.kd_weight, cfg.ce_weight, cfg.temperature, cfg.copy_weight, cfg.copy_context),
            "mixer_lr_scale": cfg.mixer_lr_scale,
            "loss_chunk": cfg.loss_chunk,
        }
        if stage == 3:
            options["freeze_mlp"] = cfg.freeze_mlp
    return STAGES[stage](student, adapter, **options)


__all__ = ["STAGES", "build", "HiddenStateAlignment", "KnowledgeDistillation", "MatrixOrientation", "RecallPhase"]
