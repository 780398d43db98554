"""SSD step 3, per chunk: the output from the chunk's own inputs and the state entering it (``ssd_chunked``'s steps 1
and 4 in mohawk/mixers/ssd.py, the PyTorch reference):

    y = (C B^T o decay) v + exp(G) C S_in + D x,        decay[i, j] = exp(G_i - G_j) for j <= i, else 0."""

try:  # in a try block, transformers' remote-code loader does not demand Triton where it is absent (then: PyTorch scan)
    import triton
    import triton.language as tl
except ImportError as err:
    raise ImportError("mohawk's Triton SSD scan needs triton (pip install mohawk[gpu])") from err
import torch
from torch import Tensor

from mohawk.mixers.kernels.ssd_chunk_state import load_bc, load_chunk
from mohawk.mixers.kernels.ssd_launch import CONFIGS, TILES, precision


@triton.autotune(configs=CONFIGS, key=[])
@triton.heuristics(TILES)
@triton.jit
def _chunk_scan_kernel(
    x, dt, A, B, C, D, states,  # inputs (D read when HAS_D)
    y,  # output
    L, NC, H, HPG,  # length, chunks, heads, heads per group
    sx_b, sx_t, sx_h, sx_p, sdt_b, sdt_t, sdt_h, sb_b, sb_t, sb_h, sb_n, sc_b, sc_t, sc_h, sc_n,  # strides
    N: tl.constexpr, P: tl.constexpr, T: tl.constexpr, PREC: tl.constexpr, HAS_D: tl.constexpr,
    BN: tl.constexpr, BP: tl.constexpr,  # tiles (heuristics)
):  # fmt: skip
    """y (b, L, h, p) contiguous of one chunk, from states (b, h, chunks + 1, n, p). Grid (b * h * chunks,)."""
    pid_bh, c = tl.program_id(0) // NC, tl.program_id(0) % NC
    b, h = pid_bh // H, pid_bh % H
    x += b * sx_b + h * sx_h
    dt += b * sdt_b + h * sdt_h
    B += b * sb_b + (h // HPG) * sb_h
    C += b * sc_b + (h // HPG) * sc_h
    states += (pid_bh * (NC + 1) + c) * N * P
    y += b * L * H * P + h * P
    ot, on, op = tl.arange(0, T), tl.arange(0, BN), tl.arange(0, BP)
    mn, mp = on < N, op < P
    t = c * T + ot
    mt = t < L
    bx, bv, _, G, Gl = load_chunk(x, dt, tl.load(A + h).to(tl.float32), t, mt, op, mp, sx_t, sx_p, sdt_t)
    bk = load_bc(B, t, mt, on, mn, sb_t, sb_n)
    bq = load_bc(C, t, mt, on, mn, sc_t, sc_n)
    S = tl.load(states + on[:, None] * P + op[None, :], mask=mn[:, None] & mp[None, :], other=0.0)
    s = tl.dot(bq, tl.trans(bk), input_precision=PREC)
    s = tl.where(ot[:, None] >= ot[None, :], s * tl.exp(G[:, None] - G[None, :]), 0.0)
    out = tl.dot(s.to(bv.dtype), bv, input_precision=PREC)
    out += tl.dot((bq * tl.exp(G)[:, None]).to(bv.dtype), S.to(bv.dtype), input_precision=PREC)
    if HAS_D:
        out += bx.to(tl.float32) * tl.load(D + h).to(tl.float32)
    tl.store(y + t[:, None] * (H * P) + op[None, :], out.to(y.dtype.element_ty), mask=mt[:, None] & mp[None, :])


def chunk_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, states: Tensor, chunk: int
) -> Tensor:
    """y (b, L, h, p) in x's dtype, from the states entering each chunk (b, h, chunks + 1, n, p)."""
    b, L, h, p = x.shape
    NC = states.shape[2] - 1
    y = torch.empty(b, L, h, p, device=x.device, dtype=x.dtype)
    _chunk_scan_kernel[(b * h * NC,)](
        x, dt, A, B, C, A if D is None else D, states, y, L, NC, h, h // B.shape[2],
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(),
        N=B.shape[-1], P=p, T=chunk, PREC=precision(x), HAS_D=D is not None,
    )  # fmt: skip
    return y
