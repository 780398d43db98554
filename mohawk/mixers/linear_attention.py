"""Causal linear attention, the causal low-rank matrix family: ``M = L o (C B^T)`` with L the lower-triangular mask of
ones and C, B (L, state) per head, rank <= state.

It is SSD with the decay switched off (A = 0, dt = 1), so the fast paths are SSD's (chunked scan, recurrent step, the
GPU kernel) and this file holds only the reference and the layer."""

from __future__ import annotations

import torch
from torch import Tensor

from mohawk.mixers.ssd import SSDMixer, _expand_groups


def linear_attention_matrix(B: Tensor, C: Tensor, heads: int) -> Tensor:
    """M (batch, heads, L, L) with M[t, s] = C_t . B_s for s <= t, else 0. B, C: (batch, L, groups, state)."""
    Bh, Ch = _expand_groups(B, heads), _expand_groups(C, heads)
    return torch.einsum("bthn,bshn->bhts", Ch, Bh).tril()


class LinearAttentionMixer(SSDMixer):
    """The Phi-Mamba layer with a causal low-rank mixer (no decay, no dt): same projections, conv, gate, D skip."""

    has_dt = False
    attention_scaled_rows = "C"  # undecayed q . k logits summed over the prefix: far larger than attention's rows

    def A(self) -> Tensor:
        return self.D.new_zeros(self.num_heads, dtype=torch.float32)

    def _matrix(self, dt: Tensor, B: Tensor, C: Tensor) -> Tensor:
        return linear_attention_matrix(B, C, self.num_heads)

    def _matrix_rows(self, dt: Tensor, B: Tensor, C: Tensor, r0: int, r1: int) -> Tensor:
        Bh, Ch = _expand_groups(B[:, :r1], self.num_heads), _expand_groups(C[:, r0:r1], self.num_heads)
        return torch.einsum("bthn,bshn->bhts", Ch, Bh).tril(r0)
