"""Softmax attention exactly as the teacher computes it: causal mask (optionally a sliding window), RoPE over the first
``rotary_dim`` channels of each head (full or partial, rotate-half layout as in Llama / Phi / GPT-NeoX), the teacher's
scale, grouped-query attention (each K/V head serves num_heads // num_kv_heads query heads) and optionally RMSNorm
over each head's queries and keys before RoPE (Gemma 3); the sliding window can differ per layer (config.layer_types).

The mixing matrix is softmax(Q K^T * scale + mask), (batch, heads, L, L); it multiplies the value stream V (each query
head's K/V head repeated), so ``materialize(u) @ value_stream(u)`` equals the attention output before o_proj.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mohawk.mixers.norm import make_norm


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def default_inv_freq(rotary_dim: int, theta: float) -> Tensor:
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))


class Attention(nn.Module):
    """Multi-head softmax attention with RoPE and GQA. u (batch, L, hidden) -> (batch, L, hidden)."""

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.attention_scale if config.attention_scale is not None else self.head_dim**-0.5
        self.sliding_window = config.layer_sliding_window(layer_idx)
        self.rotary_dim = config.rotary_dim if config.position_embedding == "rope" else 0
        self.rope_scaling = config.rope_attention_scaling
        hidden, h, kv, d = config.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        self.q_proj = nn.Linear(hidden, h * d, bias=config.attention_qkv_bias)
        self.k_proj = nn.Linear(hidden, kv * d, bias=config.attention_qkv_bias)
        self.v_proj = nn.Linear(hidden, kv * d, bias=config.attention_qkv_bias)
        self.o_proj = nn.Linear(h * d, hidden, bias=config.attention_out_bias)
        self.qk_norm = config.qk_norm
        if self.qk_norm:  # Gemma 3: each head's queries and keys normalised before RoPE
            self.q_norm, self.k_norm = make_norm(config, d), make_norm(config, d)
        # Persistent, so that a teacher's exact frequencies (any RoPE scaling scheme) travel with the checkpoint.
        self.register_buffer("inv_freq", default_inv_freq(self.rotary_dim, config.rope_theta), persistent=True)

    # -- pieces -----------------------------------------------------------------------------------------------------
    def _rope(self, t: Tensor, positions: Tensor) -> Tensor:
        """t (b, heads, L, d), positions (b, L) or (L,) -> t with RoPE on its first rotary_dim channels."""
        if self.rotary_dim == 0:
            return t
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.rope_scaling, emb.sin() * self.rope_scaling
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]
        rot, keep = t[..., : self.rotary_dim], t[..., self.rotary_dim :]
        rot = (rot.float() * cos + rotate_half(rot.float()) * sin).to(t.dtype)
        return torch.cat((rot, keep), dim=-1)

    def _qkv(self, u: Tensor, positions: Tensor):
        """u (b, L, hidden) -> q (b, h, L, d), k and v (b, kv, L, d), RoPE applied."""
        b, L, _ = u.shape
        q = self.q_proj(u).view(b, L, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(u).view(b, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(u).view(b, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return self._rope(q, positions), self._rope(k, positions), v

    def _repeat_kv(self, t: Tensor) -> Tensor:
        return t.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)

    def _mask(self, q_len: int, k_len: int, device) -> Tensor:
        """Boolean (q_len, k_len), True where query i (at absolute position k_len - q_len + i) may attend."""
        qpos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        kpos = torch.arange(k_len, device=device)[None, :]
        mask = kpos <= qpos
        if self.sliding_window is not None:
            mask &= kpos > qpos - self.sliding_window
        return mask

    @staticmethod
    def _positions(u: Tensor, position_ids: Tensor | None, offset: int = 0) -> Tensor:
        if position_ids is not None:
            return position_ids
        return torch.arange(offset, offset + u.shape[1], device=u.device)

    # -- the mixer contract -------------------------------------------------------------------------------------------
    def materialize(self, u: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """Attention matrix softmax(Q K^T * scale + causal mask), float32 (batch, heads, L, L)."""
        return self.matrix_rows(self.matrix_factors(u, position_ids), 0, u.shape[1])

    def matrix_factors(self, u: Tensor, position_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Q and K (GQA heads repeated), float32, computed once for :meth:`matrix_rows`."""
        q, k, _ = self._qkv(u, self._positions(u, position_ids))
        return q.float(), self._repeat_kv(k).float()

    def matrix_rows(self, factors, r0: int, r1: int) -> Tensor:
        """Rows r0..r1-1 of ``materialize(u)`` over columns 0..r1-1 (batch, heads, r1 - r0, r1); the columns past r1
        are masked anyway, so each row's softmax is exact."""
        q, k = factors
        scores = torch.einsum("bhtd,bhsd->bhts", q[:, :, r0:r1], k[:, :, :r1]) * self.scale
        return scores.masked_fill(~self._mask(r1 - r0, r1, q.device), float("-inf")).softmax(dim=-1)

    def value_stream(self, u: Tensor) -> Tensor:
        """V (batch, heads, L, head_dim), K/V heads repeated for GQA: what ``materialize(u)`` multiplies."""
        b, L, _ = u.shape
        v = self.v_proj(u).view(b, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return self._repeat_kv(v)

    def forward(self, u: Tensor, position_ids: Tensor | None = None, cache=None, **_) -> Tensor:
        """u (batch, L, hidden) -> (batch, L, hidden); with ``cache`` (a MohawkCache) appends to and reads its KV."""
        b, L, _ = u.shape
        offset = cache.seq_length(self.layer_idx) if cache is not None else 0
        positions = self._positions(u, position_ids, offset)
        q, k, v = self._qkv(u, positions)
        if cache is not None and cache.kv_capacity is not None:
            return self.o_proj(self._attend_static(q, k, v, positions, cache).transpose(1, 2).reshape(b, L, -1))
        if cache is not None:
            k, v = cache.update_kv(self.layer_idx, k, v)
        k, v = self._repeat_kv(k), self._repeat_kv(v)
        if k.shape[2] == L and self.sliding_window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            mask = self._mask(L, k.shape[2], u.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.o_proj(y.transpose(1, 2).reshape(b, L, -1))

    def _attend_static(self, q: Tensor, k: Tensor, v: Tensor, positions: Tensor, cache) -> Tensor:
        """Attention through a static KV cache (MohawkCache.kv_capacity): q (b, h, L, d), k and v (b, kv, L, d) at
        ``positions`` -> (b, h, L, d). One token reads the whole buffer under a mask computed on the device from its
        position (no host value: capturable in a CUDA graph); a prompt (several tokens, eager) reads the positions
        written so far."""
        L = q.shape[2]
        pos = positions.reshape(-1, L)  # (1 or b, L)
        if L > 1:  # a prompt, run eagerly: its end is known on the host
            end = int(pos[0, -1]) + 1
            cache.check_capacity(end)
            kb, vb = cache.write_kv(self.layer_idx, k, v, pos[0])
            kk, vv = self._repeat_kv(kb[:, :, :end]), self._repeat_kv(vb[:, :, :end])
            if end == L and self.sliding_window is None:
                return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, scale=self.scale)
            return F.scaled_dot_product_attention(q, kk, vv, attn_mask=self._mask(L, end, q.device), scale=self.scale)
        kb, vb = cache.write_kv(self.layer_idx, k, v, pos[0])
        return self._attend_one(q, kb, vb, pos[:, -1:])

    def _attend_one(self, q: Tensor, kb: Tensor, vb: Tensor, qpos: Tensor) -> Tensor:
        """One query per sequence, q (b, h, 1, d) at positions qpos (1 or b, 1), over whole static KV buffers
        kb, vb (b, kv, capacity, d), the positions past qpos masked -> (b, h, 1, d). Pure: the decoding step can
        compile it (mohawk.models.graphs)."""
        b, h, _, d = q.shape
        kv = self.num_kv_heads
        # grouped query heads as the rows of one product per K/V head: the buffer is read once, not repeated
        qg = q.reshape(b, kv, h // kv, d)
        scores = qg @ kb.transpose(-1, -2)  # (b, kv, h // kv, capacity)
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * self.scale
        kpos = torch.arange(kb.shape[2], device=q.device)
        valid = kpos <= qpos
        if self.sliding_window is not None:
            valid &= kpos > qpos - self.sliding_window
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        y = scores.softmax(-1).to(vb.dtype) @ vb  # (b, kv, h // kv, d)
        return y.reshape(b, h, 1, d)
