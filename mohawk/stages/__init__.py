"""The three MOHAWK stages, and the recall phase after them. A stage = which student parameters train + a loss over
one teacher forward's captures.

Every stage has ``parameters()`` (the trainable (name, tensor) pairs) and ``loss(batch) -> (loss, metrics)``;
train.py runs any of them with the same loop. Stages know nothing of the teacher's family (the adapter hides it).
"""

from mohawk.stages.alignment import HiddenStateAlignment
from mohawk.stages.distillation import KnowledgeDistillation
from mohawk.stages.orientation import MatrixOrientation
from mohawk.stages.recall import RecallPhase

STAGES = {1: MatrixOrientation, 2: HiddenStateAlignment, 3: KnowledgeDistillation, 4: RecallPhase}

__all__ = ["STAGES", "HiddenStateAlignment", "KnowledgeDistillation", "MatrixOrientation", "RecallPhase"]
