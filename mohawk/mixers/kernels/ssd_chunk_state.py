"""SSD step 1, per chunk: the cumulative log decay and the state the chunk adds (``ssd_chunked``'s ``cum`` and
``chunk_states`` in mohawk/mixers/ssd.py, the PyTorch reference).

Notation of every ssd_*.py kernel: per (batch, head), v = x dt, g = dt A; a chunk of T tokens has the cumulative
log decay G (T,) and total Gl; B and C are read from group h // HPG. The state leaving a chunk is
exp(Gl) S_in + (B exp(Gl - G))^T v, (state, head_dim)."""

try:  # in a try block, transformers' remote-code loader does not demand Triton where it is absent (then: PyTorch scan)
    import triton
    import triton.language as tl
except ImportError as err:
    raise ImportError("mohawk's Triton SSD scan needs triton (pip install mohawk[gpu])") from err
import torch
from torch import Tensor

from mohawk.mixers.kernels.ssd_launch import CONFIGS, TILES, precision


@triton.jit
def load_chunk(x, dt, a, t, mt, op, mp, sx_t, sx_p, sdt_t):
    """One chunk, x and dt offset to its (batch, head): x (T, BP) as stored, v = x dt (T, BP) in x's dtype, dt (T,)
    float32, G (T,) and Gl (a: the head's A, float32). Padding rows: x = 0, dt = 0 (no decay)."""
    bx = tl.load(x + t[:, None] * sx_t + op[None, :] * sx_p, mask=mt[:, None] & mp[None, :], other=0.0)
    bdt = tl.load(dt + t * sdt_t, mask=mt, other=0.0).to(tl.float32)
    bg = bdt * a
    bv = (bx.to(tl.float32) * bdt[:, None]).to(bx.dtype)
    return bx, bv, bdt, tl.cumsum(bg, 0), tl.sum(bg, 0)


@triton.jit
def load_bc(ptr, t, mt, on, mn, s_t, s_n):
    """One chunk (T, BN) of B or C, ``ptr`` offset to its (batch, group)."""
    return tl.load(ptr + t[:, None] * s_t + on[None, :] * s_n, mask=mt[:, None] & mn[None, :], other=0.0)


@triton.jit
def chunk_state(x, dt, a, B, t, L, on, mn, op, mp, sx_t, sx_p, sdt_t, sb_t, sb_n, PREC: tl.constexpr):
    """What the chunk of positions t adds to the state leaving it, (B exp(Gl - G))^T v (BN, BP) float32, and Gl."""
    mt = t < L
    _, bv, _, G, Gl = load_chunk(x, dt, a, t, mt, op, mp, sx_t, sx_p, sdt_t)
    bk = load_bc(B, t, mt, on, mn, sb_t, sb_n)
    kd = (bk * tl.exp(Gl - G)[:, None]).to(bv.dtype)
    return tl.dot(tl.trans(kd), bv, input_precision=PREC), Gl


@triton.autotune(configs=CONFIGS, key=[])
@triton.heuristics(TILES)
@triton.jit
def _chunk_state_kernel(
    x, dt, A, B,  # inputs
    states, gl,  # outputs
    L, NC, H, HPG,  # length, chunks, heads, heads per group
    sx_b, sx_t, sx_h, sx_p, sdt_b, sdt_t, sdt_h, sb_b, sb_t, sb_h, sb_n,  # strides
    N: tl.constexpr, P: tl.constexpr, T: tl.constexpr, PREC: tl.constexpr,  # state, head_dim, chunk, precision
    BN: tl.constexpr, BP: tl.constexpr,  # tiles (heuristics)
):  # fmt: skip
    """Chunk c's own state (as if it had entered with a zero state) into states (b * h, chunks + 1, n, p) slot c + 1,
    its Gl into gl (b * h, chunks) float32. Grid (b * h * chunks,)."""
    pid_bh, c = tl.program_id(0) // NC, tl.program_id(0) % NC
    b, h = pid_bh // H, pid_bh % H
    x += b * sx_b + h * sx_h
    dt += b * sdt_b + h * sdt_h
    B += b * sb_b + (h // HPG) * sb_h
    states += (pid_bh * (NC + 1) + c + 1) * N * P
    on, op = tl.arange(0, BN), tl.arange(0, BP)
    mn, mp = on < N, op < P
    a = tl.load(A + h).to(tl.float32)
    t = c * T + tl.arange(0, T)
    local, Gl = chunk_state(x, dt, a, B, t, L, on, mn, op, mp, sx_t, sx_p, sdt_t, sb_t, sb_n, PREC)
    tl.store(states + on[:, None] * P + op[None, :], local.to(states.dtype.element_ty), mask=mn[:, None] & mp[None, :])
    tl.store(gl + pid_bh * NC + c, Gl)


def chunk_states(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """Each chunk's own state, (b, h, chunks + 1, n, p) in x's dtype with chunk c's in slot c + 1 (slot 0 unset), and
    each chunk's total log decay Gl (b * h, chunks) float32."""
    b, L, h, p = x.shape
    n, NC = B.shape[-1], triton.cdiv(L, chunk)
    states = torch.empty(b, h, NC + 1, n, p, device=x.device, dtype=x.dtype)
    gl = torch.empty(b * h, NC, device=x.device, dtype=torch.float32)
    _chunk_state_kernel[(b * h * NC,)](
        x, dt, A, B, states, gl, L, NC, h, h // B.shape[2], *x.stride(), *dt.stride(), *B.stride(),
        N=n, P=p, T=chunk, PREC=precision(x),
    )  # fmt: skip
    return states, gl
