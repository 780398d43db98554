"""Gradient of SSD steps 1 and 3, per chunk: dx, dB, dC, ddt and the terms of dA and dD of one chunk, from the state
entering it and the gradient of the state leaving it (ssd_state_passing.py, ssd_state_passing_bwd.py); autograd
through ``ssd_chunked`` in mohawk/mixers/ssd.py is the reference.

The decay's gradient is chunk-local: within the chunk from float32 pair terms, across chunks through <dS, S> of the
state leaving it (no scan over the whole sequence, no cancellation of large bf16-rounded terms)."""

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
def _chunk_scan_bwd_kernel(
    x, dt, A, B, C, D, states, dstates, dy,  # inputs (D read when HAS_D)
    dx, dB, dC, ddt, dA, dD,  # outputs
    L, NC, H, HPG,  # length, chunks, heads, heads per group
    sx_b, sx_t, sx_h, sx_p, sdt_b, sdt_t, sdt_h, sb_b, sb_t, sb_h, sb_n, sc_b, sc_t, sc_h, sc_n,  # strides
    N: tl.constexpr, P: tl.constexpr, T: tl.constexpr, PREC: tl.constexpr, HAS_D: tl.constexpr,
    BN: tl.constexpr, BP: tl.constexpr,  # tiles (heuristics)
):  # fmt: skip
    """One chunk's gradients: dx (b, L, h, p), dB, dC (b, L, h, n) per head, ddt (b, L, h) float32, and per position
    (b, h, L) float32 the terms of dA and dD; dy contiguous (b, L, h, p). Grid (b * h * chunks,)."""
    pid_bh, c = tl.program_id(0) // NC, tl.program_id(0) % NC
    b, h = pid_bh // H, pid_bh % H
    x += b * sx_b + h * sx_h
    dt += b * sdt_b + h * sdt_h
    B += b * sb_b + (h // HPG) * sb_h
    C += b * sc_b + (h // HPG) * sc_h
    states += (pid_bh * (NC + 1) + c) * N * P
    dstates += (pid_bh * NC + c) * N * P
    dy += b * L * H * P + h * P
    dx += b * L * H * P + h * P
    dB += b * L * H * N + h * N
    dC += b * L * H * N + h * N
    ddt += b * L * H + h
    dA += pid_bh * L
    dD += pid_bh * L
    ot, on, op = tl.arange(0, T), tl.arange(0, BN), tl.arange(0, BP)
    mn, mp = on < N, op < P
    t = c * T + ot
    mt = t < L
    mtn, mtp = mt[:, None] & mn[None, :], mt[:, None] & mp[None, :]
    a = tl.load(A + h).to(tl.float32)
    bx, bv, bdt, G, Gl = load_chunk(x, dt, a, t, mt, op, mp, sx_t, sx_p, sdt_t)
    bk = load_bc(B, t, mt, on, mn, sb_t, sb_n)
    bq = load_bc(C, t, mt, on, mn, sc_t, sc_n)
    row_p = t[:, None] * (H * P) + op[None, :]  # dy, dx contiguous (b, L, h, p)
    row_n = t[:, None] * (H * N) + on[None, :]  # dB, dC contiguous (b, L, h, n)
    bdy = tl.load(dy + row_p, mask=mtp, other=0.0)
    bdy_lo = bdy.to(bv.dtype)
    tile, mtile = on[:, None] * P + op[None, :], mn[:, None] & mp[None, :]
    S = tl.load(states + tile, mask=mtile, other=0.0).to(bv.dtype)
    S_next = tl.load(states + N * P + tile, mask=mtile, other=0.0).to(tl.float32)
    dS32 = tl.load(dstates + tile, mask=mtile, other=0.0).to(tl.float32)
    dS = dS32.to(bv.dtype)
    decay = tl.where(ot[:, None] >= ot[None, :], tl.exp(G[:, None] - G[None, :]), 0.0)  # [i, j], query i, key j
    qk = tl.dot(bq, tl.trans(bk), input_precision=PREC)  # C_i . B_j
    da32 = tl.dot(bdy_lo, tl.trans(bv), input_precision=PREC) * decay  # (dy_i . v_j) decay
    qk_decay, da = (qk * decay).to(bv.dtype), da32.to(bv.dtype)
    w = tl.exp(Gl - G)
    dq_in = tl.dot(bdy_lo, tl.trans(S), input_precision=PREC) * tl.exp(G)[:, None]  # through the state entering
    dk_in = tl.dot(bv, tl.trans(dS), input_precision=PREC) * w[:, None]  # through the state leaving
    bdq = tl.dot(da, bk, input_precision=PREC) + dq_in
    bdk = tl.dot(tl.trans(da), bq, input_precision=PREC) + dk_in
    bdv = tl.dot(tl.trans(qk_decay), bdy_lo, input_precision=PREC) + tl.dot(bk, dS, input_precision=PREC) * w[:, None]
    # d loss / d g_r for this chunk's positions, chunk-local: the chunk's cumulative log decay G_i (i >= r) and its
    # total Gl (which scales the state leaving: d/dGl = <dS_next, S_next>) are what g_r moves. dG_i = C . dC - B . dB
    # has its within-chunk part taken from the float32 pair terms (a pair (i, j) adds to G_i and takes from G_j)
    pair = qk * da32
    bdG = (
        tl.sum(pair, 1) - tl.sum(pair, 0) + tl.sum(dq_in * bq.to(tl.float32), 1) - tl.sum(dk_in * bk.to(tl.float32), 1)
    )
    dg = tl.sum(bdG, 0) - tl.cumsum(bdG, 0) + bdG + tl.sum(tl.sum(dS32 * S_next, 1), 0)  # suffix sums + d/dGl
    dg = tl.where(mt, dg, 0.0)
    xf = bx.to(tl.float32)
    bdx = bdv * bdt[:, None]
    if HAS_D:
        bdx += bdy.to(tl.float32) * tl.load(D + h).to(tl.float32)
        tl.store(dD + t, tl.sum(bdy.to(tl.float32) * xf, 1), mask=mt)
    tl.store(dx + row_p, bdx.to(dx.dtype.element_ty), mask=mtp)
    tl.store(dC + row_n, bdq.to(dC.dtype.element_ty), mask=mtn)
    tl.store(dB + row_n, bdk.to(dB.dtype.element_ty), mask=mtn)
    tl.store(ddt + t * H, tl.sum(bdv * xf, 1) + dg * a, mask=mt)
    tl.store(dA + t, dg * bdt, mask=mt)


def chunk_scan_bwd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    states: Tensor,
    dstates: Tensor,
    dy: Tensor,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, ddt, dA, dB, dC, dD): dx (b, L, h, p) in x's dtype, ddt (b, L, h) float32, dA and dD (h,) float32 (dD
    zeros when D is None), dB and dC (b, L, groups, n) float32 when groups < heads (summed over each group's heads),
    else in B's dtype; from the states entering each chunk (b, h, chunks + 1, n, p), the gradients of the states
    leaving each chunk (b, h, chunks, n, p) and dy (b, L, h, p) contiguous."""
    b, L, h, p = x.shape
    groups, n = B.shape[2], B.shape[3]
    NC = dstates.shape[2]
    grouped = groups != h
    bc_dtype = torch.float32 if grouped else B.dtype  # per-head gradients summed over each group in float32
    dx = torch.empty(b, L, h, p, device=x.device, dtype=x.dtype)
    dB = torch.empty(b, L, h, n, device=x.device, dtype=bc_dtype)
    dC = torch.empty(b, L, h, n, device=x.device, dtype=bc_dtype)
    ddt = torch.empty(b, L, h, device=x.device, dtype=torch.float32)
    dA, dD = (torch.zeros(b, h, L, device=x.device, dtype=torch.float32) for _ in range(2))
    _chunk_scan_bwd_kernel[(b * h * NC,)](
        x, dt, A, B, C, A if D is None else D, states, dstates, dy, dx, dB, dC, ddt, dA, dD, L, NC, h, h // groups,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(),
        N=n, P=p, T=chunk, PREC=precision(x), HAS_D=D is not None,
    )  # fmt: skip
    dD = dD.sum((0, 2)) if D is not None else torch.zeros(h, device=x.device, dtype=torch.float32)
    if grouped:
        dB = dB.view(b, L, groups, h // groups, n).sum(3)
        dC = dC.view(b, L, groups, h // groups, n).sum(3)
    return dx, ddt, dA.sum((0, 2)), dB, dC, dD
