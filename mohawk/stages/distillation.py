"""Stage 3, knowledge distillation end to end (after the weight transfer of embeddings, norms, MLPs and head).

    loss = kd_weight * T^2 * KL( softmax(teacher / T) || softmax(student / T) ) + ce_weight * CE(student, next token)

(kd_weight 0 and ce_weight 1 is plain language-model training: the from-scratch baseline.)

averaged over tokens. Everything trains but the MLPs when ``freeze_mlp`` (the paper: little loss, half the
trainable parameters).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mohawk.errors import MohawkError
from mohawk.stages import base
from mohawk.stages.base import Stage
from mohawk.stages.fused_loss import fused_distillation_loss


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """T^2 * KL(teacher || student) per token, averaged: logits (batch, L, vocab)."""
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature**2


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    ids: Tensor,
    temperature: float,
    kd_weight: float,
    ce_weight: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, KL, CE) of stage 3 from logits (batch, L, vocab) and the token ids (batch, L).

    One function so that ``torch.compile`` can fuse it: eager, the float32 copies and softmaxes of two
    (batch, L, vocab) tensors cost more memory traffic than the student's whole MLP stack at SmolLM2's size."""
    ce = F.cross_entropy(student_logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    if teacher_logits is None:
        return ce_weight * ce, ce.new_zeros(()), ce
    kl = kd_loss(student_logits, teacher_logits, temperature)
    return kd_weight * kl + ce_weight * ce, kl, ce


@functools.cache
def _compiled_loss(backend: str):
    return torch.compile(distillation_loss, dynamic=False, backend=backend)


@dataclass(frozen=True)
class LossWeights:
    """Stage 3's loss: kd * T^2 * KL(teacher / T || student / T) + ce * next-token CE."""

    kd: float = 1.0
    ce: float = 0.0
    temperature: float = 1.0


class KnowledgeDistillation(Stage):
    number = 3
    name = "knowledge distillation"
    shards_student = True
    transfers_weights = True

    def __init__(
        self,
        student,
        adapter,
        weights: LossWeights = LossWeights(),
        freeze_mlp: bool = False,
        mixer_lr_scale: float = 1.0,
        loss_chunk: int = 0,
    ):
        super().__init__(student, adapter)
        self.weights, self.freeze_mlp, self.mixer_lr_scale = weights, freeze_mlp, mixer_lr_scale
        self.loss_chunk = loss_chunk
        self._replaced = tuple(self.replaced_prefix(i) for i in self.layers)
        self.loss_fn = distillation_loss

    def compiled_modules(self):
        return super().compiled_modules() + list(self.adapter.layers())

    @contextmanager
    def compiled(self, mode: str = "fuse"):
        """Also fuses the loss (see distillation_loss) and the teacher's blocks."""
        with super().compiled(mode):
            self.loss_fn = _compiled_loss(base.COMPILE_BACKEND) if mode != "off" else distillation_loss
            try:
                yield
            finally:
                self.loss_fn = distillation_loss

    def lr_scale(self, name: str) -> float:
        """mixer_lr_scale for the mixers that replace attention (new weights), 1 for what came from the teacher."""
        return self.mixer_lr_scale if name.startswith(self._replaced) else 1.0

    def parameters(self):
        return [(n, p) for n, p in self.student.named_parameters() if not (self.freeze_mlp and ".mlp." in n)]

    def loss(self, batch: Tensor) -> tuple[Tensor, dict]:
        kd_w, ce_w, T = self.weights.kd, self.weights.ce, self.weights.temperature
        if self.loss_chunk:
            return self._chunked_loss(batch, kd_w, ce_w, T)
        teacher_logits = None
        if kd_w:  # kd_weight 0: no teacher forward needed
            # the teacher first: with compile "graphs", its CUDA-graph replays would overwrite the student's
            # replayed activations that the backward still needs
            with torch.no_grad():
                teacher_logits = self.adapter.model(input_ids=batch, use_cache=False).logits
        logits = self.student(batch, use_cache=False).logits
        loss, kl, ce = self.loss_fn(logits, teacher_logits, batch, T, kd_w, ce_w)
        return loss, ({"kl": kl.detach(), "ce": ce.detach()} if kd_w else {"ce": ce.detach()})

    def _chunked_loss(self, batch: Tensor, kd_w: float, ce_w: float, T: float) -> tuple[Tensor, dict]:
        """The same loss from the final hidden states, the LM heads applied loss_chunk tokens at a time
        (mohawk.stages.fused_loss): no (batch, L, vocab) logits."""
        head, teacher = self.student.lm_head, self.adapter.model
        if hasattr(head.weight, "device_mesh"):
            raise MohawkError("--loss-chunk needs the LM head whole: not with FSDP2 (use --parallel ddp)")
        teacher_hidden = teacher_head = None
        if kd_w:
            with torch.no_grad():
                teacher_hidden = teacher.base_model(input_ids=batch, use_cache=False).last_hidden_state
            teacher_head = teacher.get_output_embeddings()
        hidden, _ = self.student.model(input_ids=batch)
        loss, kl, ce = fused_distillation_loss(
            hidden, head, teacher_hidden, teacher_head, batch, T, kd_w, ce_w, self.loss_chunk
        )
        return loss, ({"kl": kl, "ce": ce} if kd_w else {"ce": ce})
