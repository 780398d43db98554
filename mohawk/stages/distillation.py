"""Stage 3, knowledge distillation end to end (after the weight transfer of embeddings, norms, MLPs and head).

    loss = kd_weight * T^2 * KL( softmax(teacher / T) || softmax(student / T) ) + ce_weight * CE(student, next token)

(kd_weight 0 and ce_weight 1 is plain language-model training: the from-scratch baseline.)

averaged over tokens. Everything trains but the MLPs when ``freeze_mlp`` (the paper: little loss, half the
trainable parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mohawk.stages.base import Stage


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """T^2 * KL(teacher || student) per token, averaged: logits (batch, L, vocab)."""
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature ** 2


class KnowledgeDistillation(Stage):
    number = 3
    name = "knowledge distillation"

    def parameters(self):
        freeze = bool(self.cfg and self.cfg.freeze_mlp)
        return [(n, p) for n, p in self.student.named_parameters()
                if not (freeze and ".mlp." in n)]

    def loss(self, batch: Tensor) -> tuple[Tensor, dict]:
        kd_w = getattr(self.cfg, "kd_weight", 1.0) if self.cfg else 1.0
        ce_w = self.cfg.ce_weight if self.cfg else 0.0
        logits = self.student(batch, use_cache=False).logits
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten())
        if kd_w == 0:  # no teacher forward needed
            return ce_w * ce, {"ce": float(ce.detach())}
        with torch.no_grad():
            teacher_logits = self.adapter.model(input_ids=batch, use_cache=False).logits
        T = self.cfg.temperature if self.cfg else 1.0
        kl = kd_loss(logits, teacher_logits, T)
        return kd_w * kl + ce_w * ce, {"kl": float(kl.detach()), "ce": float(ce.detach())}
