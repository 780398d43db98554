"""SSD step 2: the state entering each chunk (``ssd_chunked``'s loop over ``states_in`` in mohawk/mixers/ssd.py, the
PyTorch reference), S_{c+1} = exp(Gl_c) S_c + (chunk c's own state), S_0 the initial state or 0.

Two ways, the same numbers: one walk per (sequence, head) chaining the chunks' matmuls (``_states_walk_kernel``), or,
when (sequence, head) pairs are too few to fill the GPU, two passes: each chunk's own state in parallel
(ssd_chunk_state.py), then an elementwise walk over blocks of the state (``_state_passing_kernel``); see
``ssd_launch.two_pass_states``."""

try:  # in a try block, transformers' remote-code loader does not demand Triton where it is absent (then: PyTorch scan)
    import triton
    import triton.language as tl
except ImportError as err:
    raise ImportError("mohawk's Triton SSD scan needs triton (pip install mohawk[gpu])") from err
import torch
from torch import Tensor

from mohawk.mixers.kernels.ssd_chunk_state import chunk_state, chunk_states
from mohawk.mixers.kernels.ssd_launch import CONFIGS, PASS_TILES, WALK_TILES, precision, two_pass_states


@triton.autotune(configs=CONFIGS, key=[])
@triton.heuristics(PASS_TILES)
@triton.jit
def _state_passing_kernel(
    states, gl, init,  # inputs: chunk c's own state in states slot c + 1
    final,  # output; states is rewritten in place
    NC,  # chunks
    N: tl.constexpr, P: tl.constexpr, HAS_INIT: tl.constexpr,  # state, head_dim, whether init is given
    BLOCK: tl.constexpr,  # state elements per program (heuristic)
):  # fmt: skip
    """In place on states (b * h, chunks + 1, n * p): slot c becomes the state entering chunk c, slot `chunks` the
    final state; init and final (b * h, p, n) float32 (initial state or 0, final state). Grid (b * h, n * p blocks):
    an elementwise walk, so every (state element block, sequence, head) walks at once."""
    pid_bh, e = tl.program_id(0), tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    states += pid_bh * (NC + 1) * N * P
    gl += pid_bh * NC
    init += pid_bh * N * P
    final += pid_bh * N * P
    me = e < N * P
    pn = (e % P) * N + e // P  # (n, p) element -> its offset in a (p, n) state
    S = tl.zeros((BLOCK,), dtype=tl.float32)
    if HAS_INIT:
        S = tl.load(init + pn, mask=me, other=0.0)
    for c in range(0, NC):
        local = tl.load(states + (c + 1) * N * P + e, mask=me, other=0.0).to(tl.float32)
        tl.store(states + c * N * P + e, S.to(states.dtype.element_ty), mask=me)
        S = S * tl.exp(tl.load(gl + c)) + local
    tl.store(states + NC * N * P + e, S.to(states.dtype.element_ty), mask=me)
    tl.store(final + pn, S, mask=me)


@triton.autotune(configs=CONFIGS, key=[])
@triton.heuristics(WALK_TILES)
@triton.jit
def _states_walk_kernel(
    x, dt, A, B, s0,  # inputs (s0 read when HAS_S0)
    states, sT,  # outputs
    L, NC, H, HPG,  # length, chunks, heads, heads per group
    sx_b, sx_t, sx_h, sx_p, sdt_b, sdt_t, sdt_h, sb_b, sb_t, sb_h, sb_n,  # strides
    N: tl.constexpr, P: tl.constexpr, T: tl.constexpr, PREC: tl.constexpr, HAS_S0: tl.constexpr,
    BN: tl.constexpr, BP: tl.constexpr,  # tiles (heuristics: BP splits head_dim when (batch, head) pairs are few)
):  # fmt: skip
    """states (b, h, chunks + 1, n, p): the state entering each chunk, then the final state; sT (b, h, p, n) float32
    the final state again, from s0 (b, h, p, n) or 0. Grid (b * h, head_dim blocks), walking the chunks in order."""
    pid_bh, pid_p = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    x += b * sx_b + h * sx_h
    dt += b * sdt_b + h * sdt_h
    B += b * sb_b + (h // HPG) * sb_h
    states += pid_bh * (NC + 1) * N * P
    s0 += pid_bh * P * N
    sT += pid_bh * P * N
    ot, on, op = tl.arange(0, T), tl.arange(0, BN), pid_p * BP + tl.arange(0, BP)
    mn, mp = on < N, op < P
    mask = mn[:, None] & mp[None, :]
    state_offs = op[None, :] * N + on[:, None]  # (n, p) view of a (p, n) state
    tile = on[:, None] * P + op[None, :]  # (n, p) inside one chunk's state
    a = tl.load(A + h).to(tl.float32)
    S = tl.zeros((BN, BP), dtype=tl.float32)
    if HAS_S0:
        S = tl.load(s0 + state_offs, mask=mask, other=0.0).to(tl.float32)
    for c in range(0, NC):
        tl.store(states + c * N * P + tile, S.to(states.dtype.element_ty), mask=mask)
        local, Gl = chunk_state(x, dt, a, B, c * T + ot, L, on, mn, op, mp, sx_t, sx_p, sdt_t, sb_t, sb_n, PREC)
        S = S * tl.exp(Gl) + local
    tl.store(states + NC * N * P + tile, S.to(states.dtype.element_ty), mask=mask)
    tl.store(sT + state_offs, S, mask=mask)


def chunk_states_in(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, s0: Tensor | None, chunk: int
) -> tuple[Tensor, Tensor]:
    """The state entering each chunk and the final one (b, h, chunks + 1, n, p) in x's dtype, and the final state
    (b, h, p, n) float32, from s0 (b, h, p, n) float32 contiguous or None."""
    b, L, h, p = x.shape
    n, NC = B.shape[-1], triton.cdiv(L, chunk)
    sT = torch.empty(b, h, p, n, device=x.device, dtype=torch.float32)
    if two_pass_states(b * h):
        states, gl = chunk_states(x, dt, A, B, chunk)
        grid = lambda meta: (b * h, triton.cdiv(n * p, meta["BLOCK"]))
        _state_passing_kernel[grid](states, gl, sT if s0 is None else s0, sT, NC, N=n, P=p, HAS_INIT=s0 is not None)
        return states, sT
    states = torch.empty(b, h, NC + 1, n, p, device=x.device, dtype=x.dtype)
    grid = lambda meta: (b * h, triton.cdiv(p, meta["BP"]))
    _states_walk_kernel[grid](
        x, dt, A, B, sT if s0 is None else s0, states, sT, L, NC, h, h // B.shape[2],
        *x.stride(), *dt.stride(), *B.stride(),
        N=n, P=p, T=chunk, PREC=precision(x), HAS_S0=s0 is not None,
    )  # fmt: skip
    return states, sT
