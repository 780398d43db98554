"""Stage 4, the recall phase: stage 3's loss (KD against the teacher) on text that can only be predicted by copying
from context (``--recall-data``, by default mohawk.synthetic's key-value facts), training the replacing mixers alone.

Attention layers, MLPs, embeddings, norms and the head stay as stage 3 left them, so the phase can teach the SSD
layers to retrieve without moving what the rest of the student knows."""

from __future__ import annotations

from mohawk.stages.distillation import KnowledgeDistillation


class RecallPhase(KnowledgeDistillation):
    number = 4
    name = "recall phase"
    transfers_weights = False  # it continues from stage 3's student

    def __init__(self, student, adapter, **options):
        super().__init__(student, adapter, freeze_mlp=True, **options)

    def parameters(self):
        return self.mixer_parameters()
