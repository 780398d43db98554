"""The general diagonal SSM (semiseparable) family: like SSD, but each of the ``state`` channels of a head decays at
its own rate (Mamba-1's diagonal A, with one dt per head and step).

    a_t[n] = exp(dt_t * A_h[n])                             decay per head, state channel and step
    h_t[:, n] = a_t[n] * h_{t-1}[:, n] + dt_t * x_t * B_t[n]
    y_t = h_t C_t (+ D_h x_t)

    M[t, s] = sum_n C_t[n] B_s[n] prod_{r=s+1..t} a_r[n] * dt_s      for s <= t

SSD is the special case A_h[n] = A_h for every n. Three equivalent paths, as for SSD: ``ssm_matrix`` (reference),
``ssm_chunked`` (O(L) memory, any length, state in and out), ``ssm_step`` (one token)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mohawk.mixers.ssd import SSDMixer, _expand_groups, chunked_scan, segsum


def ssm_matrix(dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """M (batch, heads, L, L) for dt (batch, L, heads), A (heads, state), B, C (batch, L, groups, state)."""
    heads = dt.shape[-1]
    Bh, Ch = _expand_groups(B, heads), _expand_groups(C, heads)  # (b, L, h, n)
    decay = torch.exp(segsum((dt[..., None] * A).permute(0, 2, 3, 1)))  # (b, h, n, L, L)
    return torch.einsum("bthn,bshn,bhnts->bhts", Ch, Bh, decay) * dt.transpose(1, 2)[:, :, None, :]


def semiseparable(Q: Tensor, K: Tensor, log_a: Tensor | None = None, block: int = 32) -> Tensor:
    """M (m, L, L) with M[t, s] = sum_n Q_t[n] K_s[n] exp(sum_{r=s+1..t} log_a_r[n]) for s <= t, else 0.

    Q, K (m, L, N); log_a (m, L, 1) (one decay per step: SSD), (m, L, N) (diagonal SSM) or None (no decay: causal
    low rank); log_a <= 0. Computed block by block so no (L, L, N) tensor is formed and every exponent is <= 0:
    off-diagonal blocks factor through the decay to the end of the source block, diagonal blocks use segment sums."""
    if log_a is None:
        return torch.tril(Q @ K.mT)
    m, L, N = Q.shape
    pad = (-L) % block
    if pad:
        Q, K, log_a = (F.pad(x, (0, 0, 0, pad)) for x in (Q, K, log_a))
    nb, l = (L + pad) // block, block  # noqa: E741 - the einsum subscripts' names
    cum = torch.cumsum(log_a, dim=1).view(m, nb, l, -1)  # (m, nb, l, n'), non-increasing along the sequence
    Qb, Kb = Q.view(m, nb, l, N), K.view(m, nb, l, N)
    end = cum[:, :, -1]  # (m, nb, n'): cumulated log-decay at the end of each block
    # off-diagonal blocks (target block i > source block j): Q_t e^{cum_t - end_j} . K_s e^{end_j - cum_s}
    below = torch.ones(nb, nb, dtype=torch.bool, device=Q.device).tril(-1)  # (i, j): j < i
    q_exp = cum[:, :, None] - end[:, None, :, None]  # (m, i, j, l, n')
    q_exp = q_exp.masked_fill(~below[None, :, :, None, None], -math.inf)
    Qs = Qb[:, :, None] * torch.exp(q_exp)  # (m, i, j, l, N)
    Ks = Kb * torch.exp(end[:, :, None] - cum)  # (m, j, l, N)
    off = torch.einsum("mijtn,mjsn->mitjs", Qs, Ks)
    # diagonal blocks: exp of segment sums inside each block
    t = torch.arange(l, device=Q.device)
    inside = t[:, None] >= t[None, :]
    seg = (cum[:, :, :, None] - cum[:, :, None, :]).masked_fill(~inside[None, None, :, :, None], -math.inf)
    diag = torch.einsum("mitn,misn,mitsn->mits", Qb, Kb, torch.exp(seg))
    eye = torch.eye(nb, device=Q.device, dtype=Q.dtype)
    M = (off + torch.einsum("mits,ij->mitjs", diag, eye)).reshape(m, nb * l, nb * l)
    return M[:, :L, :L]


def ssm_matrix_blockwise(dt: Tensor, A: Tensor, B: Tensor, C: Tensor, block: int = 32) -> Tensor:
    """``ssm_matrix`` without its (state, L, L) decay tensor (see ``semiseparable``): what the layer's
    ``materialize`` uses, so that stage 1 fits in memory at long lengths."""
    b, L, h = dt.shape
    Bh, Ch = _expand_groups(B, h).float(), _expand_groups(C, h).float()  # (b, L, h, n)
    n = Bh.shape[-1]
    dt32 = dt.float()
    Q = Ch.permute(0, 2, 1, 3).reshape(b * h, L, n)
    K = (Bh * dt32[..., None]).permute(0, 2, 1, 3).reshape(b * h, L, n)
    log_a = (dt32[..., None] * A.float()).permute(0, 2, 1, 3).reshape(b * h, L, n)
    return semiseparable(Q, K, log_a, block).view(b, h, L, L)


def ssm_materialized(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None) -> Tensor:
    """Quadratic reference: y (batch, L, heads, head_dim) = M x + D x."""
    y = torch.einsum("bhts,bshp->bthp", ssm_matrix(dt, A, B, C).to(x.dtype), x)
    return y if D is None else y + x * D[:, None]


def ssm_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    *,
    chunk_size: int = 16,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
):
    """Chunked scan, exact (:func:`mohawk.mixers.ssd.chunked_scan` with A (heads, state)): the decay tensor is (chunk,
    chunk, state) per head, hence the smaller default chunk than SSD's. States: (batch, heads, head_dim, state),
    float32."""
    return chunked_scan(
        x, dt, A, B, C, D, chunk_size=chunk_size, initial_state=initial_state, return_final_state=return_final_state
    )


def ssm_step(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor, D: Tensor | None = None):
    """One token: x (batch, heads, head_dim), dt (batch, heads), B, C (batch, groups, state), state (batch, heads,
    head_dim, state) -> (y (batch, heads, head_dim), new state)."""
    h, f32 = x.shape[1], torch.float32
    Bh, Ch = _expand_groups(B, h).to(f32), _expand_groups(C, h).to(f32)
    dt32 = dt.to(f32)
    a = torch.exp(dt32[..., None] * A.to(f32))  # (b, h, n)
    state = state.to(f32) * a[:, :, None, :] + (dt32[..., None] * x.to(f32))[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, Ch)
    if D is not None:
        y = y + x.to(f32) * D.to(f32)[:, None]
    return y.to(x.dtype), state


class SSMMixer(SSDMixer):
    """The Phi-Mamba layer with a diagonal (per state channel) decay: A_log is (heads, state)."""

    attention_scaled_rows = "C"

    def decay_shape(self) -> tuple[int, ...]:
        return (self.num_heads, self.state_size)

    def _matrix(self, dt: Tensor, B: Tensor, C: Tensor) -> Tensor:
        return ssm_matrix_blockwise(dt, self.A(), B, C)

    def _matrix_rows(self, dt: Tensor, B: Tensor, C: Tensor, r0: int, r1: int) -> Tensor:
        # rows < r1 depend only on the first r1 tokens; no row-block formula here, so no memory saving either
        return self._matrix(dt[:, :r1], B[:, :r1], C[:, :r1])[:, :, r0:r1]

    def _scan(
        self, x: Tensor, dt: Tensor, B: Tensor, C: Tensor, return_final_state: bool, initial_state: Tensor | None = None
    ):
        return ssm_chunked(
            x,
            dt,
            self.A(),
            B,
            C,
            self.D,
            chunk_size=min(self.chunk_size, 16),
            initial_state=initial_state,
            return_final_state=return_final_state,
        )

    def _step(self, x: Tensor, dt: Tensor, B: Tensor, C: Tensor, state: Tensor):
        return ssm_step(x, dt, self.A(), B, C, state, self.D)
