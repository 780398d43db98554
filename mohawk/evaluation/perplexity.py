"""Perplexity on held-out sequences, agreement with the teacher, and the stage-1 / stage-2 distances per layer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mohawk.errors import raise_if_signalled


def _batches(data: Tensor, batch_size: int):
    for i in range(0, data.shape[0], batch_size):
        raise_if_signalled()  # a signal whose exception a finalizer swallowed still stops the evaluation
        yield data[i : i + batch_size]


@torch.no_grad()
def perplexity(model, data: Tensor, batch_size: int = 8) -> float:
    """exp(mean next-token cross-entropy) over all positions of data (n, L)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in _batches(data, batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        total += float(F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"))
        count += batch[:, 1:].numel()
    return math.exp(total / count)


@torch.no_grad()
def agreement(student, teacher, data: Tensor, batch_size: int = 8) -> dict:
    """Top-1 next-token agreement with the teacher and mean KL(teacher || student) per token."""
    device = next(student.parameters()).device
    agree, kl, count = 0, 0.0, 0
    for batch in _batches(data, batch_size):
        batch = batch.to(device)
        s = student(input_ids=batch, use_cache=False).logits.float().log_softmax(-1)
        t = teacher(input_ids=batch, use_cache=False).logits.float().log_softmax(-1)
        agree += int((s.argmax(-1) == t.argmax(-1)).sum())
        kl += float((t.exp() * (t - s)).sum(-1).sum())
        count += batch.numel()
    return {"top1_agreement": agree / count, "kl": kl / count}


@torch.no_grad()
def layer_distances(student, adapter, batch: Tensor) -> dict:
    """Stage-1 (Frobenius, attention vs mixer matrix) and stage-2 (block output L2) distances of every replaced
    layer on one batch: {"stage1": {layer: d}, "stage2": {layer: d}}."""
    from mohawk.stages import HiddenStateAlignment, MatrixOrientation

    batch = batch.to(next(student.parameters()).device)
    was_training = student.training
    student.eval()
    out = {
        f"stage{s.number}": {i: float(d) for i, d in s.loss(batch)[1]["layer_distance"].items()}
        for s in (MatrixOrientation(student, adapter), HiddenStateAlignment(student, adapter))
    }
    student.train(was_training)
    return out
