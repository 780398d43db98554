"""The decoding cache of a student: a KV cache for attention layers, a fixed-size state for the others."""

from __future__ import annotations

import torch
from torch import Tensor


class MohawkCache:
    """Decoding state: a KV cache for attention layers, (conv window, SSM state) for SSD layers.

    An SSD layer's state has a fixed size, (batch, conv_dim, kernel - 1) and (batch, heads, head_dim, state), whatever
    the context length. A ``static`` cache updates that state in place (fixed addresses, for CUDA graphs)."""

    is_compileable = False

    def __init__(self):
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}
        self.ssm: dict[int, tuple[Tensor, Tensor]] = {}
        self.tokens = 0  # tokens consumed so far
        self.static = False

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.tokens

    def seq_length(self, layer_idx: int) -> int:
        return self.kv[layer_idx][0].shape[2] if layer_idx in self.kv else 0

    def update_kv(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if layer_idx in self.kv:
            k0, v0 = self.kv[layer_idx]
            k, v = torch.cat([k0, k], dim=2), torch.cat([v0, v], dim=2)
        self.kv[layer_idx] = (k, v)
        return k, v

    def has_state(self, layer_idx: int) -> bool:
        return layer_idx in self.ssm

    def get_state(self, layer_idx: int) -> tuple[Tensor, Tensor]:
        return self.ssm[layer_idx]

    def set_state(self, layer_idx: int, conv_state: Tensor, ssm_state: Tensor) -> None:
        if self.static and layer_idx in self.ssm:
            conv, ssm = self.ssm[layer_idx]
            conv.copy_(conv_state)
            ssm.copy_(ssm_state)
        else:
            self.ssm[layer_idx] = (conv_state, ssm_state)

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Select batch rows (beam search)."""
        for d in (self.kv, self.ssm):
            for i, (a, b) in d.items():
                a_new, b_new = a.index_select(0, beam_idx.to(a.device)), b.index_select(0, beam_idx.to(b.device))
                if d is self.ssm and a_new.shape == a.shape:  # in place: a CUDA graph may be replaying these buffers
                    a.copy_(a_new)
                    b.copy_(b_new)
                else:
                    d[i] = (a_new, b_new)

    def memory_bytes(self) -> int:
        tensors = [t for d in (self.kv, self.ssm) for pair in d.values() for t in pair]
        return sum(t.numel() * t.element_size() for t in tensors)
