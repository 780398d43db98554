"""The decoding cache of a student: a KV cache for attention layers, a fixed-size state for the others."""

from __future__ import annotations

import torch
from torch import Tensor

from mohawk.errors import MohawkError


class MohawkCache:
    """Decoding state: a KV cache for attention layers, (conv window, SSM state) for SSD layers.

    An SSD layer's state has a fixed size, (batch, conv_dim, kernel - 1) and (batch, heads, head_dim, state), whatever
    the context length. A ``static`` cache updates that state in place (fixed addresses, for CUDA graphs).

    ``kv_capacity`` (tokens) makes the KV cache static too: each attention layer's keys and values live in buffers
    (batch, kv_heads, kv_capacity, head_dim) allocated at its first write, and a token at position p is written at
    index p; attention reads the whole buffer under a mask of the positions written so far. So a hybrid's decoding
    step has fixed addresses and shapes (one CUDA graph). Writing past the capacity raises a MohawkError."""

    is_compileable = False

    def __init__(self, kv_capacity: int | None = None):
        self.kv: dict[int, tuple[Tensor, Tensor]] = {}
        self.ssm: dict[int, tuple[Tensor, Tensor]] = {}
        self.tokens = 0  # tokens consumed so far
        self.static = False
        self.kv_capacity = kv_capacity

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.tokens

    def seq_length(self, layer_idx: int) -> int:
        if self.kv_capacity is not None:
            return self.tokens
        return self.kv[layer_idx][0].shape[2] if layer_idx in self.kv else 0

    def check_capacity(self, end: int) -> None:
        """Raise if positions up to ``end`` (exclusive) do not fit in a static KV cache."""
        if self.kv_capacity is not None and end > self.kv_capacity:
            raise MohawkError(
                f"static KV cache full: {end} tokens do not fit in its {self.kv_capacity} positions "
                "(make the cache with a larger kv_capacity, e.g. prompt length + max_new_tokens)"
            )

    def write_kv(self, layer_idx: int, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Static KV cache: k, v (batch, kv_heads, L, head_dim) written at ``positions`` (L,) (a tensor: no host
        value, so the write can be captured); returns the whole buffers (batch, kv_heads, kv_capacity, head_dim)."""
        assert self.kv_capacity is not None
        if layer_idx not in self.kv:
            shape = (k.shape[0], k.shape[1], self.kv_capacity, k.shape[3])
            self.kv[layer_idx] = (k.new_zeros(shape), v.new_zeros(shape))
        kb, vb = self.kv[layer_idx]
        kb.index_copy_(2, positions, k.to(kb.dtype))
        vb.index_copy_(2, positions, v.to(vb.dtype))
        return kb, vb

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
                # in place where the state is static: a CUDA graph may be replaying these buffers
                if (d is self.ssm or self.kv_capacity is not None) and a_new.shape == a.shape:
                    a.copy_(a_new)
                    b.copy_(b_new)
                else:
                    d[i] = (a_new, b_new)

    def memory_bytes(self, used: bool = False) -> int:
        """Bytes of the state; ``used``: of a static KV cache only the positions written so far (what a step reads)."""
        tensors = [t for d in (self.kv, self.ssm) for pair in d.values() for t in pair]
        total = sum(t.numel() * t.element_size() for t in tensors)
        if used and self.kv_capacity:
            kv = sum(t.numel() * t.element_size() for pair in self.kv.values() for t in pair)
            total -= kv - kv * min(self.tokens, self.kv_capacity) // self.kv_capacity
        return total
