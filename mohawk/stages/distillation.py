"""Stage 3, knowledge distillation end to end (after the weight transfer of embeddings, norms, MLPs and head).

    loss = kd_weight * T^2 * KL( softmax(teacher / T) || softmax(student / T) ) + ce_weight * CE(student, next token)

(kd_weight 0 and ce_weight 1 is plain language-model training: the from-scratch baseline.)

averaged over tokens; with ``copy_weight`` w > 0 the KL is a weighted mean, weight 1 + w on the positions whose next
token can be copied from earlier in the row (``copyable``), 1 elsewhere. Everything trains but the MLPs when
``freeze_mlp`` (the paper: little loss, half the trainable parameters).
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


def copyable(ids: Tensor, context: int = 2) -> Tensor:
    """(batch, L) bool from ids (batch, L): position j is copyable when the (context + 1)-gram ids[j - context..j]
    also ends at some earlier position s < j of the same row (so ids[j] could be copied from after s's context, as
    an induction head does). Positions 0..context are never copyable.

    Cost: one (batch, L, L) token comparison and context ANDs of its shifted views, O(batch x L^2) time and memory
    (a few bool tensors of 64 MiB at 16 x 2,048 tokens); no loop over positions."""
    b, L = ids.shape
    n = L - context
    out = torch.zeros(b, L, dtype=torch.bool, device=ids.device)
    if n <= 1:
        return out
    same = ids[:, :, None] == ids[:, None, :]  # (batch, L, L): same[j, s] = ids[j] == ids[s]
    gram = same[:, context:, context:]
    for k in range(1, context + 1):  # the k-th token back must match too
        gram = gram & same[:, context - k : L - k, context - k : L - k]
    pos = torch.arange(n, device=ids.device)
    out[:, context:] = (gram & (pos[None, :] < pos[:, None])).any(-1)  # ending at s < j
    return out


def copy_weights(ids: Tensor, copy_weight: float, context: int = 2) -> tuple[Tensor, Tensor]:
    """(weights (batch, L) float32, copy share ()) for the KD loss on logits of ids (batch, L): logit position t
    predicts ids[t + 1], so its weight is 1 + copy_weight where position t + 1 is ``copyable``, else 1 (the last
    position, no target: 1). The share is that of copyable targets among positions 1..L-1."""
    target = copyable(ids, context)[:, 1:]
    weights = torch.ones(ids.shape, dtype=torch.float32, device=ids.device)
    weights[:, :-1] += copy_weight * target
    return weights, target.float().mean()


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, weights: Tensor | None = None
) -> Tensor:
    """T^2 * KL(teacher || student) per token, averaged: logits (batch, L, vocab); with ``weights`` (batch, L), the
    weighted mean sum(w * kl) / sum(w)."""
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    if weights is None:
        return kl.mean() * temperature**2
    return (weights * kl).sum() / weights.sum() * temperature**2


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    ids: Tensor,
    temperature: float,
    kd_weight: float,
    ce_weight: float,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, KL, CE) of stage 3 from logits (batch, L, vocab) and the token ids (batch, L); ``weights`` (batch, L):
    the KL's per-position weights (``copy_weights``), None for the plain mean.

    One function so that ``torch.compile`` can fuse it: eager, the float32 copies and softmaxes of two
    (batch, L, vocab) tensors cost more memory traffic than the student's whole MLP stack at SmolLM2's size."""
    ce = F.cross_entropy(student_logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    if teacher_logits is None:
        return ce_weight * ce, ce.new_zeros(()), ce
    kl = kd_loss(student_logits, teacher_logits, temperature, weights)
    return kd_weight * kl + ce_weight * ce, kl, ce


@functools.cache
def _compiled_loss(backend: str):
    return torch.compile(distillation_loss, dynamic=False, backend=backend)


@dataclass(frozen=True)
class LossWeights:
    """Stage 3's loss: kd * T^2 * KL(teacher / T || student / T) + ce * next-token CE; the KL weighted 1 + copy on
    the positions whose next token is ``copyable`` with ``copy_context`` tokens of context (copy 0: the plain mean)."""

    kd: float = 1.0
    ce: float = 0.0
    temperature: float = 1.0
    copy: float = 0.0
    copy_context: int = 2


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

    def _copy_weights(self, batch: Tensor) -> tuple[Tensor | None, dict]:
        """The KL's weights (batch, L) and the ``copy_share`` metric; (None, {}) without a copy weight or a KL."""
        if not (self.weights.copy and self.weights.kd):
            return None, {}
        weights, share = copy_weights(batch, self.weights.copy, self.weights.copy_context)
        return weights, {"copy_share": share}

    def loss(self, batch: Tensor) -> tuple[Tensor, dict]:
        kd_w, ce_w, T = self.weights.kd, self.weights.ce, self.weights.temperature
        weights, copy_metrics = self._copy_weights(batch)
        if self.loss_chunk:
            loss, metrics = self._chunked_loss(batch, kd_w, ce_w, T, weights)
            return loss, {**metrics, **copy_metrics}
        teacher_logits = None
        if kd_w:  # kd_weight 0: no teacher forward needed
            # the teacher first: with compile "graphs", its CUDA-graph replays would overwrite the student's
            # replayed activations that the backward still needs
            with torch.no_grad():
                teacher_logits = self.adapter.model(input_ids=batch, use_cache=False).logits
        logits = self.student(batch, use_cache=False).logits
        loss, kl, ce = self.loss_fn(logits, teacher_logits, batch, T, kd_w, ce_w, weights)
        metrics = {"kl": kl.detach(), "ce": ce.detach()} if kd_w else {"ce": ce.detach()}
        return loss, {**metrics, **copy_metrics}

    def _chunked_loss(
        self, batch: Tensor, kd_w: float, ce_w: float, T: float, weights: Tensor | None
    ) -> tuple[Tensor, dict]:
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
            hidden, head, teacher_hidden, teacher_head, batch, T, kd_w, ce_w, self.loss_chunk, weights
        )
        return loss, ({"kl": kl, "ce": ce} if kd_w else {"ce": ce})
