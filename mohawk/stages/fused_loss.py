"""Stage 3's loss without (tokens, vocab) logits: the student's and the teacher's LM heads applied ``chunk`` tokens
at a time, the KL and CE of each chunk and their gradients formed there and then (the chunk's logits are freed before
the next), as Liger Kernel's fused linear losses do. Exact: the same loss and gradients as
``distillation_loss(h @ W^T + b, th @ Wt^T + bt, ...)`` (tests/stages/test_fused_loss.py); memory O(chunk x vocab).

    loss = kd_weight * T^2 * mean_tokens KL(softmax(t / T) || softmax(s / T)) + ce_weight * mean CE(s, next token)

d loss / d s = kd_weight * T * (softmax(s / T) - softmax(t / T)) / N + ce_weight * (softmax(s) - onehot) / N_ce, so
the backward pass only scales what the forward pass accumulated: dh (N, hidden), dW (vocab, hidden), db (vocab,).
With per-token KL weights w (N,), the KL mean is sum(w * KL) / sum(w) and token i's KL gradient has w_i / sum(w) for
1 / N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class _FusedHeadDistillation(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, h, weight, bias, th, t_weight, t_bias, targets, temperature, kd_weight, ce_weight, chunk, kl_weights
    ):
        N = h.shape[0]
        W = None if kl_weights is None else kl_weights.sum()
        n_ce = int((targets >= 0).sum())
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None else None
        kl_sum = h.new_zeros((), dtype=torch.float32)
        ce_sum = h.new_zeros((), dtype=torch.float32)
        T = temperature
        for i in range(0, N, chunk):
            hs = h[i : i + chunk]
            s = F.linear(hs, weight, bias).float()
            g = torch.zeros_like(s)
            ls = None
            if th is not None:
                t = F.linear(th[i : i + chunk], t_weight, t_bias).float()
                lt, ls = F.log_softmax(t / T, dim=-1), F.log_softmax(s / T, dim=-1)
                pt = lt.exp()
                if kl_weights is None:
                    kl_sum += (pt * (lt - ls)).sum()
                    g += (kd_weight * T / N) * (ls.exp() - pt)
                else:
                    w = kl_weights[i : i + chunk, None]
                    kl_sum += (w * pt * (lt - ls)).sum()
                    g += (kd_weight * T / W) * w * (ls.exp() - pt)
            tgt = targets[i : i + chunk]
            valid = tgt >= 0
            lsm = ls if ls is not None and T == 1 else F.log_softmax(s, dim=-1)  # at T = 1: the KL's log-softmax
            rows, cols = valid.nonzero().squeeze(1), tgt[valid]
            ce_sum -= lsm[rows, cols].sum()
            if ce_weight and n_ce:
                p = lsm.exp() * valid[:, None]
                p[rows, cols] -= 1
                g += (ce_weight / n_ce) * p
            g = g.to(h.dtype)
            grad_h[i : i + chunk] = g @ weight.to(h.dtype)
            grad_w += g.t().float() @ hs.float()
            if grad_b is not None:
                grad_b += g.float().sum(0)
        kl = kl_sum * T**2 / (N if W is None else W)  # T^2 KL, as distillation_loss reports it
        ce = ce_sum / max(n_ce, 1)
        loss = kd_weight * kl + ce_weight * ce
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype), None if grad_b is None else grad_b.to(bias.dtype))
        ctx.mark_non_differentiable(kl, ce)
        return loss, kl, ce

    @staticmethod
    def backward(ctx, grad_loss, _grad_kl, _grad_ce):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        return (
            grad_h * grad_loss,
            grad_w * grad_loss,
            None if grad_b is None else grad_b * grad_loss,
            *([None] * 9),
        )


def fused_distillation_loss(
    hidden: Tensor,
    head: torch.nn.Linear,
    teacher_hidden: Tensor | None,
    teacher_head: torch.nn.Linear | None,
    ids: Tensor,
    temperature: float,
    kd_weight: float,
    ce_weight: float,
    chunk: int = 1024,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, KL, CE) of stage 3 from the final hidden states, student (batch, L, hidden) and teacher (batch, L,
    teacher hidden) or None, their LM heads and the token ids (batch, L); ``weights`` (batch, L): the KL's
    per-position weights, as distillation_loss takes them (None: the plain mean). See the module docstring."""
    b, L, _ = hidden.shape
    targets = torch.cat([ids[:, 1:], ids.new_full((b, 1), -1)], dim=1).flatten()  # no next token at the end
    th = None if teacher_hidden is None else teacher_hidden.flatten(0, 1).detach()
    tw = None if teacher_head is None else teacher_head.weight.detach()
    tb = None if teacher_head is None or teacher_head.bias is None else teacher_head.bias.detach()
    kl_weights = None if weights is None else weights.flatten().float()
    return _FusedHeadDistillation.apply(
        hidden.flatten(0, 1),
        head.weight,
        head.bias,
        th,
        tw,
        tb,
        targets,
        temperature,
        kd_weight,
        ce_weight,
        chunk,
        kl_weights,
    )
