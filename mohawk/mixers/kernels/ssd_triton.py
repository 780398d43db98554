"""mohawk's own Triton SSD scan: forward and backward, registered as torch.library custom ops.

The scan it computes (per batch and head, the SSD recurrence with x already multiplied by dt):

    S_t = exp(g_t) S_{t-1} + k_t^T v_t            state (state, head_dim), S_0 given or 0
    o_t = q_t S_t                                 q = C, k = B (head h reads group h // (heads // groups)), v = x dt

Chunks of ``chunk`` tokens, four kernels:

- ``_states_kernel`` walks the chunks in order, one program per (batch, head, block of head_dim), and writes the state
  entering each chunk (one small matmul per chunk on the walk's critical path);
- ``_output_kernel``, one program per (batch, head, chunk): ``o = (q k^T o decay) v + exp(G) q S_chunk``;
- ``_dstates_kernel`` walks backward and writes the gradient of the state leaving each chunk;
- ``_grads_kernel``, one program per (batch, head, chunk): dx, dB, dC, ddt and the terms of dA and dD. The decay's
  gradient is chunk-local: within the chunk from float32 pair terms, across chunks through ``<dS, S>`` of the state
  leaving it (no scan over the whole sequence, no cancellation of large bf16-rounded terms).

For few long sequences the states can instead come in two passes (``TUNING``): each chunk's own contribution in
parallel (``_local_states_kernel`` / ``_local_dstates_kernel``), then an elementwise walk (``_pass_states_kernel``).
The backward recomputes the states instead of keeping them. Wrapped as ``mohawk::ssd_scan`` /
``mohawk::ssd_scan_backward`` custom ops with fake implementations, so torch.compile keeps the kernels as opaque calls
inside a compiled block and CUDA graphs capture them. Without a GPU the same kernels run in Triton's interpreter
(TRITON_INTERPRET=1): that is how the CPU tests check them against ``ssd_materialized``.
"""

import torch

try:  # in a Try block, transformers' remote-code loader does not demand Triton where it is absent (then: PyTorch scan)
    import triton
    import triton.language as tl
except ImportError as err:
    raise ImportError("mohawk's Triton SSD scan needs triton (pip install mohawk[gpu])") from err
from torch import Tensor


@triton.jit
def _load_chunk(x, dt, A, pid_bh, H, t, mt, op, mp, sx_b, sx_t, sx_h, sx_p, sdt_b, sdt_t, sdt_h):
    """One chunk of one (batch, head): x (T, BP) as stored, v = x dt (T, BP) in x's dtype, dt (T,) float32, the
    within-chunk cumulative log decay G (T,) and the chunk's total Gl. Padding rows: x = 0, dt = 0 (no decay)."""
    b, h = pid_bh // H, pid_bh % H
    bx = tl.load(
        x + b * sx_b + h * sx_h + t[:, None] * sx_t + op[None, :] * sx_p, mask=mt[:, None] & mp[None, :], other=0.0
    )
    bdt = tl.load(dt + b * sdt_b + h * sdt_h + t * sdt_t, mask=mt, other=0.0).to(tl.float32)
    bg = bdt * tl.load(A + h).to(tl.float32)
    bv = (bx.to(tl.float32) * bdt[:, None]).to(bx.dtype)
    return bx, bv, bdt, tl.cumsum(bg, 0), tl.sum(bg, 0)


@triton.jit
def _load_bc(ptr, pid_bh, H, HPG, t, mt, on, mn, s_b, s_t, s_h, s_n):
    """One chunk (T, BN) of B or C for head h (group h // HPG)."""
    b, h = pid_bh // H, pid_bh % H
    return tl.load(
        ptr + b * s_b + (h // HPG) * s_h + t[:, None] * s_t + on[None, :] * s_n,
        mask=mt[:, None] & mn[None, :],
        other=0.0,
    )


@triton.jit
def _chunk_state(
    x,
    dt,
    A,
    B,
    pid_bh,
    H,
    HPG,
    t,
    L,
    on,
    mn,
    op,
    mp,
    sx_b,
    sx_t,
    sx_h,
    sx_p,
    sdt_b,
    sdt_t,
    sdt_h,
    sb_b,
    sb_t,
    sb_h,
    sb_n,
    PREC: tl.constexpr,
):
    """What chunk t adds to the state leaving it, (B exp(Gl - G))^T (x dt) (BN, BP) float32, and its log decay Gl."""
    mt = t < L
    _, bv, _, G, Gl = _load_chunk(x, dt, A, pid_bh, H, t, mt, op, mp, sx_b, sx_t, sx_h, sx_p, sdt_b, sdt_t, sdt_h)
    bk = _load_bc(B, pid_bh, H, HPG, t, mt, on, mn, sb_b, sb_t, sb_h, sb_n)
    kd = (bk * tl.exp(Gl - G)[:, None]).to(bv.dtype)
    return tl.dot(tl.trans(kd), bv, input_precision=PREC), Gl


@triton.jit
def _chunk_dstate(
    dt,
    a,
    C,
    dy,
    pid_bh,
    H,
    HPG,
    t,
    L,
    on,
    mn,
    op,
    mp,
    P,
    sdt_b,
    sdt_t,
    sdt_h,
    sc_b,
    sc_t,
    sc_h,
    sc_n,
    PREC: tl.constexpr,
):
    """What chunk t adds to the gradient of the state entering it, (C exp(G))^T dy (BN, BP) float32, and its log
    decay Gl (dy contiguous (b, L, h, p); a: the head's A as float32)."""
    b, h = pid_bh // H, pid_bh % H
    mt = t < L
    bq = _load_bc(C, pid_bh, H, HPG, t, mt, on, mn, sc_b, sc_t, sc_h, sc_n)
    bdy = tl.load(dy + (b * L + t[:, None]) * (H * P) + h * P + op[None, :], mask=mt[:, None] & mp[None, :], other=0.0)
    bg = tl.load(dt + b * sdt_b + h * sdt_h + t * sdt_t, mask=mt, other=0.0).to(tl.float32) * a
    G, Gl = tl.cumsum(bg, 0), tl.sum(bg, 0)
    qd = (bq * tl.exp(G)[:, None]).to(bq.dtype)
    return tl.dot(tl.trans(qd), bdy.to(bq.dtype), input_precision=PREC), Gl


@triton.jit
def _local_states_kernel(
    x,
    dt,
    A,
    B,
    states,
    gl,
    L,
    NC,
    H,
    HPG,
    sx_b,
    sx_t,
    sx_h,
    sx_p,
    sdt_b,
    sdt_t,
    sdt_h,
    sb_b,
    sb_t,
    sb_h,
    sb_n,
    N: tl.constexpr,
    P: tl.constexpr,
    BN: tl.constexpr,
    BP: tl.constexpr,
    T: tl.constexpr,
    PREC: tl.constexpr,
):
    """Two-pass state computation, pass 1: each chunk's own contribution into states[:, :, c + 1] (as if it had
    entered with a zero state) and its log decay into gl (b * h, chunks) float32. Grid (b * h * chunks,)."""
    pid_bh, c = tl.program_id(0) // NC, tl.program_id(0) % NC
    on, op = tl.arange(0, BN), tl.arange(0, BP)
    mn, mp = on < N, op < P
    local, Gl = _chunk_state(
        x,
        dt,
        A,
        B,
        pid_bh,
        H,
        HPG,
        c * T + tl.arange(0, T),
        L,
        on,
        mn,
        op,
        mp,
        sx_b,
        sx_t,
        sx_h,
        sx_p,
        sdt_b,
        sdt_t,
        sdt_h,
        sb_b,
        sb_t,
        sb_h,
        sb_n,
        PREC,
    )
    tl.store(
        states + (pid_bh * (NC + 1) + c + 1) * N * P + on[:, None] * P + op[None, :],
        local.to(states.dtype.element_ty),
        mask=mn[:, None] & mp[None, :],
    )
    tl.store(gl + pid_bh * NC + c, Gl)


@triton.jit
def _local_dstates_kernel(
    dt,
    A,
    C,
    dy,
    dstates,
    gl,
    L,
    NC,
    H,
    HPG,
    sdt_b,
    sdt_t,
    sdt_h,
    sc_b,
    sc_t,
    sc_h,
    sc_n,
    N: tl.constexpr,
    P: tl.constexpr,
    BN: tl.constexpr,
    BP: tl.constexpr,
    T: tl.constexpr,
    PREC: tl.constexpr,
):
    """Pass 1 of the gradient walk: each chunk's own contribution to the gradient of the state entering it, into
    dstates[:, :, c], and its log decay into gl. Grid (b * h * chunks,)."""
    pid_bh, c = tl.program_id(0) // NC, tl.program_id(0) % NC
    on, op = tl.arange(0, BN), tl.arange(0, BP)
    mn, mp = on < N, op < P
    a = tl.load(A + pid_bh % H).to(tl.float32)
    local, Gl = _chunk_dstate(
        dt,
        a,
        C,
        dy,
        pid_bh,
        H,
        HPG,
        c * T + tl.arange(0, T),
        L,
        on,
        mn,
        op,
        mp,
        P,
        sdt_b,
        sdt_t,
        sdt_h,
        sc_b,
        sc_t,
        sc_h,
        sc_n,
        PREC,
    )
    tl.store(
        dstates + (pid_bh * NC + c) * N * P + on[:, None] * P + op[None, :],
        local.to(dstates.dtype.element_ty),
        mask=mn[:, None] & mp[None, :],
    )
    tl.store(gl + pid_bh * NC + c, Gl)


@triton.jit
def _pass_states_kernel(
    buf,
    gl,
    init,
    final,
    NC,
    N: tl.constexpr,
    P: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_INIT: tl.constexpr,
    REVERSE: tl.constexpr,
):
    """Pass 2, in place, on (b * h, slots, n * p) with each chunk's own contribution in it: forward (slots = chunks
    + 1, contribution of chunk c in slot c + 1) slot c becomes the state entering chunk c and slot `chunks` the final
    state; REVERSE (slots = chunks, contribution in slot c) slot c becomes the gradient of the state leaving chunk c.
    init and final are (b * h, p, n) float32 (initial state / dsT, and final state / ds0). Grid (b * h, n * p
    blocks): an elementwise walk, so every (state element block, sequence, head) walks at once."""
    pid_bh, e = tl.program_id(0), tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    me = e < N * P
    pn = (e % P) * N + e // P  # (n, p) element -> its offset in a (p, n) state
    S = tl.zeros((BLOCK,), dtype=tl.float32)
    if HAS_INIT:
        S = tl.load(init + pid_bh * N * P + pn, mask=me, other=0.0)
    slots = NC if REVERSE else NC + 1
    for i in range(0, NC):
        c = NC - 1 - i if REVERSE else i
        src = buf + (pid_bh * slots + (c if REVERSE else c + 1)) * N * P + e
        local = tl.load(src, mask=me, other=0.0).to(tl.float32)
        tl.store(buf + (pid_bh * slots + c) * N * P + e, S.to(buf.dtype.element_ty), mask=me)
        S = S * tl.exp(tl.load(gl + pid_bh * NC + c)) + local
    if not REVERSE:
        tl.store(buf + (pid_bh * slots + NC) * N * P + e, S.to(buf.dtype.element_ty), mask=me)
    tl.store(final + pid_bh * N * P + pn, S, mask=me)


@triton.jit
def _states_kernel(
    x,
    dt,
    A,
    B,
    s0,
    states,
    sT,
    L,
    NC,
    H,
    HPG,
    sx_b,
    sx_t,
    sx_h,
    sx_p,
    sdt_b,
    sdt_t,
    sdt_h,
    sb_b,
    sb_t,
    sb_h,
    sb_n,
    N: tl.constexpr,
    P: tl.constexpr,
    BN: tl.constexpr,
    BP: tl.constexpr,
    T: tl.constexpr,
    HAS_S0: tl.constexpr,
    PREC: tl.constexpr,
):
    """states (b, h, chunks + 1, n, p): the state entering each chunk, then the final state; sT (b, h, p, n) float32
    the final state again.
    Grid (b * h, head_dim blocks), walking the chunks in order."""
    pid_bh, pid_p = tl.program_id(0), tl.program_id(1)
    ot, on, op = tl.arange(0, T), tl.arange(0, BN), pid_p * BP + tl.arange(0, BP)
    mn, mp = on < N, op < P
    state_offs = pid_bh * P * N + op[None, :] * N + on[:, None]  # (n, p) view of a (b, h, p, n) tensor
    tile = on[:, None] * P + op[None, :]  # (n, p) inside one chunk's state
    S = tl.zeros((BN, BP), dtype=tl.float32)
    if HAS_S0:
        S = tl.load(s0 + state_offs, mask=mn[:, None] & mp[None, :], other=0.0).to(tl.float32)
    for c in range(0, NC):
        tl.store(
            states + (pid_bh * (NC + 1) + c) * N * P + tile,
            S.to(states.dtype.element_ty),
            mask=mn[:, None] & mp[None, :],
        )
        local, Gl = _chunk_state(
            x,
            dt,
            A,
            B,
            pid_bh,
            H,
            HPG,
            c * T + ot,
            L,
            on,
            mn,
            op,
            mp,
            sx_b,
            sx_t,
            sx_h,
            sx_p,
            sdt_b,
            sdt_t,
            sdt_h,
            sb_b,
            sb_t,
            sb_h,
            sb_n,
            PREC,
        )
        S = S * tl.exp(Gl) + local
    tl.store(
        states + (pid_bh * (NC + 1) + NC) * N * P + tile, S.to(states.dtype.element_ty), mask=mn[:, None] & mp[None, :]
    )
    tl.store(sT + state_offs, S, mask=mn[:, None] & mp[None, :])


@triton.jit
def _output_kernel(
    x,
    dt,
    A,
    B,
    C,
    D,
    states,
    y,
    L,
    NC,
    H,
    HPG,
    sx_b,
    sx_t,
    sx_h,
    sx_p,
    sdt_b,
    sdt_t,
    sdt_h,
    sb_b,
    sb_t,
    sb_h,
    sb_n,
    sc_b,
    sc_t,
    sc_h,
    sc_n,
    N: tl.constexpr,
    P: tl.constexpr,
    BN: tl.constexpr,
    BP: tl.constexpr,
    T: tl.constexpr,
    HAS_D: tl.constexpr,
    PREC: tl.constexpr,
):
    """y (b, L, h, p) of one chunk: (C B^T o decay) (x dt) + exp(G) C S_chunk + D x; grid (b * h * chunks,)."""
    pid_bh, c = tl.program_id(0) // NC, tl.program_id(0) % NC
    ot, on, op = tl.arange(0, T), tl.arange(0, BN), tl.arange(0, BP)
    mn, mp = on < N, op < P
    t = c * T + ot
    mt = t < L
    bx, bv, _, G, Gl = _load_chunk(x, dt, A, pid_bh, H, t, mt, op, mp, sx_b, sx_t, sx_h, sx_p, sdt_b, sdt_t, sdt_h)
    bk = _load_bc(B, pid_bh, H, HPG, t, mt, on, mn, sb_b, sb_t, sb_h, sb_n)
    bq = _load_bc(C, pid_bh, H, HPG, t, mt, on, mn, sc_b, sc_t, sc_h, sc_n)
    S = tl.load(
        states + (pid_bh * (NC + 1) + c) * N * P + on[:, None] * P + op[None, :],
        mask=mn[:, None] & mp[None, :],
        other=0.0,
    )
    s = tl.dot(bq, tl.trans(bk), input_precision=PREC)
    s = tl.where(ot[:, None] >= ot[None, :], s * tl.exp(G[:, None] - G[None, :]), 0.0)
    out = tl.dot(s.to(bv.dtype), bv, input_precision=PREC)
    out += tl.dot((bq * tl.exp(G)[:, None]).to(bv.dtype), S.to(bv.dtype), input_precision=PREC)
    if HAS_D:
        out += bx.to(tl.float32) * tl.load(D + pid_bh % H).to(tl.float32)
    tl.store(
        y + (pid_bh // H * L + t[:, None]) * (H * P) + (pid_bh % H) * P + op[None, :],
        out.to(y.dtype.element_ty),
        mask=mt[:, None] & mp[None, :],
    )


@triton.jit
def _dstates_kernel(
    dt,
    A,
    C,
    dy,
    dsT,
    dstates,
    ds0,
    L,
    NC,
    H,
    HPG,
    sdt_b,
    sdt_t,
    sdt_h,
    sc_b,
    sc_t,
    sc_h,
    sc_n,
    N: tl.constexpr,
    P: tl.constexpr,
    BN: tl.constexpr,
    BP: tl.constexpr,
    T: tl.constexpr,
    HAS_DST: tl.constexpr,
    PREC: tl.constexpr,
):
    """dstates (b, h, chunks, n, p): the gradient of the state leaving each chunk, from dsT (b, h, p, n) or 0; ds0
    (b, h, p, n) float32 the initial state's gradient. Grid (b * h, head_dim blocks), walking backward in time."""
    pid_bh, pid_p = tl.program_id(0), tl.program_id(1)
    ot, on, op = tl.arange(0, T), tl.arange(0, BN), pid_p * BP + tl.arange(0, BP)
    mn, mp = on < N, op < P
    a = tl.load(A + pid_bh % H).to(tl.float32)
    state_offs = pid_bh * P * N + op[None, :] * N + on[:, None]
    tile = on[:, None] * P + op[None, :]
    dS = tl.zeros((BN, BP), dtype=tl.float32)
    if HAS_DST:
        dS = tl.load(dsT + state_offs, mask=mn[:, None] & mp[None, :], other=0.0).to(tl.float32)
    for cc in range(0, NC):
        c = NC - 1 - cc
        tl.store(
            dstates + (pid_bh * NC + c) * N * P + tile, dS.to(dstates.dtype.element_ty), mask=mn[:, None] & mp[None, :]
        )
        local, Gl = _chunk_dstate(
            dt,
            a,
            C,
            dy,
            pid_bh,
            H,
            HPG,
            c * T + ot,
            L,
            on,
            mn,
            op,
            mp,
            P,
            sdt_b,
            sdt_t,
            sdt_h,
            sc_b,
            sc_t,
            sc_h,
            sc_n,
            PREC,
        )
        dS = dS * tl.exp(Gl) + local
    tl.store(ds0 + state_offs, dS, mask=mn[:, None] & mp[None, :])


@triton.jit
def _grads_kernel(
    x,
    dt,
    A,
    B,
    C,
    D,
    states,
    dstates,
    dy,
    dx,
    dB,
    dC,
    ddt,
    dA,
    dD,
    L,
    NC,
    H,
    HPG,
    sx_b,
    sx_t,
    sx_h,
    sx_p,
    sdt_b,
    sdt_t,
    sdt_h,
    sb_b,
    sb_t,
    sb_h,
    sb_n,
    sc_b,
    sc_t,
    sc_h,
    sc_n,
    N: tl.constexpr,
    P: tl.constexpr,
    BN: tl.constexpr,
    BP: tl.constexpr,
    T: tl.constexpr,
    HAS_D: tl.constexpr,
    PREC: tl.constexpr,
):
    """One chunk's gradients from the state entering it and the gradient of the state leaving it: dx (b, L, h, p),
    dB, dC (b, L, h, n) per head, ddt (b, L, h) float32, and per position (b, h, L) float32 the terms of dA and dD.
    Grid (b * h * chunks,)."""
    pid_bh, c = tl.program_id(0) // NC, tl.program_id(0) % NC
    b, h = pid_bh // H, pid_bh % H
    ot, on, op = tl.arange(0, T), tl.arange(0, BN), tl.arange(0, BP)
    mn, mp = on < N, op < P
    t = c * T + ot
    mt = t < L
    mtn, mtp = mt[:, None] & mn[None, :], mt[:, None] & mp[None, :]
    bx, bv, bdt, G, Gl = _load_chunk(x, dt, A, pid_bh, H, t, mt, op, mp, sx_b, sx_t, sx_h, sx_p, sdt_b, sdt_t, sdt_h)
    bk = _load_bc(B, pid_bh, H, HPG, t, mt, on, mn, sb_b, sb_t, sb_h, sb_n)
    bq = _load_bc(C, pid_bh, H, HPG, t, mt, on, mn, sc_b, sc_t, sc_h, sc_n)
    row_p = (b * L + t[:, None]) * (H * P) + h * P + op[None, :]  # dy, dx contiguous (b, L, h, p)
    row_n = (b * L + t[:, None]) * (H * N) + h * N + on[None, :]  # dB, dC contiguous (b, L, h, n)
    bdy = tl.load(dy + row_p, mask=mtp, other=0.0)
    bdy_lo = bdy.to(bv.dtype)
    tile, mtile = on[:, None] * P + op[None, :], mn[:, None] & mp[None, :]
    S = tl.load(states + (pid_bh * (NC + 1) + c) * N * P + tile, mask=mtile, other=0.0).to(bv.dtype)
    S_next = tl.load(states + (pid_bh * (NC + 1) + c + 1) * N * P + tile, mask=mtile, other=0.0).to(tl.float32)
    dS32 = tl.load(dstates + (pid_bh * NC + c) * N * P + tile, mask=mtile, other=0.0).to(tl.float32)
    dS = dS32.to(bv.dtype)
    decay = tl.where(ot[:, None] >= ot[None, :], tl.exp(G[:, None] - G[None, :]), 0.0)  # [i, j], query i, key j
    qk = tl.dot(bq, tl.trans(bk), input_precision=PREC)  # C_i . B_j
    da32 = tl.dot(bdy_lo, tl.trans(bv), input_precision=PREC) * decay  # (dy_i . v_j) decay
    a, da = (qk * decay).to(bv.dtype), da32.to(bv.dtype)
    w = tl.exp(Gl - G)
    dq_in = tl.dot(bdy_lo, tl.trans(S), input_precision=PREC) * tl.exp(G)[:, None]  # through the state entering
    dk_in = tl.dot(bv, tl.trans(dS), input_precision=PREC) * w[:, None]  # through the state leaving
    bdq = tl.dot(da, bk, input_precision=PREC) + dq_in
    bdk = tl.dot(tl.trans(da), bq, input_precision=PREC) + dk_in
    bdv = tl.dot(tl.trans(a), bdy_lo, input_precision=PREC) + tl.dot(bk, dS, input_precision=PREC) * w[:, None]
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
        tl.store(dD + pid_bh * L + t, tl.sum(bdy.to(tl.float32) * xf, 1), mask=mt)
    tl.store(dx + row_p, bdx.to(dx.dtype.element_ty), mask=mtp)
    tl.store(dC + row_n, bdq.to(dC.dtype.element_ty), mask=mtn)
    tl.store(dB + row_n, bdk.to(dB.dtype.element_ty), mask=mtn)
    tl.store(ddt + (b * L + t) * H + h, tl.sum(bdv * xf, 1) + dg * tl.load(A + h).to(tl.float32), mask=mt)
    tl.store(dA + pid_bh * L + t, dg * bdt, mask=mt)


# launch settings (benchmarks sweep them): warps of the sequential walks and of the per-chunk kernels, software
# pipelining stages, head_dim block of the walks (None: split head_dim only when (batch, head) programs are few);
# how the chunk states are found: "walk" (one kernel per (sequence, head) chains the chunks' matmuls) or "two_pass"
# (the chunks' own contributions in parallel, then an elementwise walk over state blocks of pass_block elements:
# more parallel, at the cost of writing and reading the states once more); "auto" takes two_pass for the forward
# states when at most two_pass_programs (sequence, head) pairs walk. The defaults are the fastest measured
# (benchmarks/README.md, `benchmarks/ssd_speed.py --two-pass`).
TUNING = {
    "seq_warps": 4,
    "par_warps": 4,
    "stages": 2,
    "seq_block_p": None,
    "state_pass": "auto",
    "dstate_pass": "walk",
    "two_pass_programs": 128,
    "pass_block": 256,
}
PASSES = ("auto", "walk", "two_pass")


def _two_pass(key: str, bh: int) -> bool:
    """Whether TUNING[key] ("state_pass" or "dstate_pass") asks for the two-pass computation for ``bh`` (sequence,
    head) pairs."""
    choice = TUNING[key]
    if choice not in PASSES:
        raise ValueError(f"TUNING[{key!r}] must be one of {PASSES}, got {choice!r}")
    return choice == "two_pass" or (choice == "auto" and bh <= TUNING["two_pass_programs"])


def _precision(x: Tensor) -> str:
    """float32 inputs get exact float32 products (Triton's default rounds them to tf32); bf16 / fp16 use tensor cores
    either way."""
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _meta(x: Tensor, B: Tensor, chunk: int) -> dict:
    """Compile-time sizes: N, P and their power-of-two tiles BN, BP (tl.dot needs >= 16), chunk T, precision."""
    n, p = B.shape[-1], x.shape[-1]
    return dict(
        N=n,
        P=p,
        BN=max(16, triton.next_power_of_2(n)),
        BP=max(16, triton.next_power_of_2(p)),
        T=chunk,
        PREC=_precision(x),
    )


def _walk_block_p(bh: int, BP: int) -> int:
    """head_dim block of the sequential walks: split when the (batch, head) programs alone would leave most of the
    GPU's multiprocessors idle (each walk is a chain of small matmuls)."""
    if TUNING["seq_block_p"]:
        return min(TUNING["seq_block_p"], BP)
    return BP if bh >= 256 or BP <= 32 else max(32, BP // 2 if bh >= 64 else BP // 4)


def _states(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, s0: Tensor | None, chunk: int, meta: dict):
    """The state entering each chunk and the final one (b, h, chunks + 1, n, p) in x's dtype, and the final state
    (b, h, p, n) float32."""
    b, L, h, p = x.shape
    n, NC = B.shape[-1], triton.cdiv(L, chunk)
    states = torch.empty(b, h, NC + 1, n, p, device=x.device, dtype=x.dtype)
    sT = torch.empty(b, h, p, n, device=x.device, dtype=torch.float32)
    if _two_pass("state_pass", b * h):
        gl = torch.empty(b * h, NC, device=x.device, dtype=torch.float32)
        _local_states_kernel[(b * h * NC,)](
            x,
            dt,
            A,
            B,
            states,
            gl,
            L,
            NC,
            h,
            h // B.shape[2],
            *x.stride(),
            *dt.stride(),
            *B.stride(),
            **meta,
            num_warps=TUNING["par_warps"],
            num_stages=TUNING["stages"],
        )
        _pass(states, gl, s0, sT, reverse=False)
        return states, sT
    bp = _walk_block_p(b * h, meta["BP"])
    _states_kernel[(b * h, triton.cdiv(p, bp))](
        x,
        dt,
        A,
        B,
        s0 if s0 is not None else sT,
        states,
        sT,
        L,
        NC,
        h,
        h // B.shape[2],
        *x.stride(),
        *dt.stride(),
        *B.stride(),
        **{**meta, "BP": bp},
        HAS_S0=s0 is not None,
        num_warps=TUNING["seq_warps"],
        num_stages=TUNING["stages"],
    )
    return states, sT


def _pass(buf: Tensor, gl: Tensor, init: Tensor | None, final: Tensor, reverse: bool) -> None:
    """Pass 2 of the two-pass state computation (see _pass_states_kernel), in place on ``buf``."""
    b, h, _, n, p = buf.shape
    block = min(TUNING["pass_block"], triton.next_power_of_2(n * p))
    _pass_states_kernel[(b * h, triton.cdiv(n * p, block))](
        buf,
        gl,
        init if init is not None else final,
        final,
        gl.shape[1],
        N=n,
        P=p,
        BLOCK=block,
        HAS_INIT=init is not None,
        REVERSE=reverse,
        num_warps=4,
        num_stages=TUNING["stages"],
    )


def _dstates(
    dt: Tensor, A: Tensor, C: Tensor, dy: Tensor, dsT: Tensor | None, NC: int, p: int, meta: dict, dtype: torch.dtype
):
    """The gradient of the state leaving each chunk (b, h, chunks, n, p) in ``dtype``, and the initial state's
    (b, h, p, n) float32, from dy (b, L, h, p) contiguous and dsT (b, h, p, n) contiguous or None."""
    b, L, h = dt.shape
    groups, n = C.shape[2], C.shape[3]
    dstates = torch.empty(b, h, NC, n, p, device=dy.device, dtype=dtype)
    ds0 = torch.empty(b, h, p, n, device=dy.device, dtype=torch.float32)
    if _two_pass("dstate_pass", b * h):
        gl = torch.empty(b * h, NC, device=dy.device, dtype=torch.float32)
        _local_dstates_kernel[(b * h * NC,)](
            dt,
            A,
            C,
            dy,
            dstates,
            gl,
            L,
            NC,
            h,
            h // groups,
            *dt.stride(),
            *C.stride(),
            **meta,
            num_warps=TUNING["par_warps"],
            num_stages=TUNING["stages"],
        )
        _pass(dstates, gl, dsT, ds0, reverse=True)
        return dstates, ds0
    bp = _walk_block_p(b * h, meta["BP"])
    _dstates_kernel[(b * h, triton.cdiv(p, bp))](
        dt,
        A,
        C,
        dy,
        dsT if dsT is not None else ds0,
        dstates,
        ds0,
        L,
        NC,
        h,
        h // groups,
        *dt.stride(),
        *C.stride(),
        **{**meta, "BP": bp},
        HAS_DST=dsT is not None,
        num_warps=TUNING["seq_warps"],
        num_stages=TUNING["stages"],
    )
    return dstates, ds0


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int) -> None:
    b, L, h, _ = x.shape
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16 for the Triton SSD kernel, got {chunk}")
    if dt.shape != (b, L, h) or A.shape != (h,) or B.shape != C.shape or B.shape[:2] != (b, L) or h % B.shape[2]:
        raise ValueError(
            f"bad SSD shapes: x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}"
        )


@torch.library.custom_op("mohawk::ssd_scan", mutates_args=())
def ssd_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, s0: Tensor | None, chunk: int
) -> tuple[Tensor, Tensor]:
    """y (b, L, h, p) in x's dtype and the final state (b, h, p, n) float32: ``mohawk.ssd`` with its arguments
    (x (b, L, h, p), dt (b, L, h) after softplus, A (h,), B and C (b, L, groups, n), D (h,) or None, initial state
    s0 (b, h, p, n) or None), B and C in x's dtype."""
    _check(x, dt, A, B, C, chunk)
    b, L, h, p = x.shape
    meta = _meta(x, B, chunk)
    states, sT = _states(x, dt, A, B, None if s0 is None else s0.contiguous(), chunk, meta)
    y = torch.empty(b, L, h, p, device=x.device, dtype=x.dtype)
    NC = states.shape[2] - 1
    _output_kernel[(b * h * NC,)](
        x,
        dt,
        A,
        B,
        C,
        D if D is not None else A,
        states,
        y,
        L,
        NC,
        h,
        h // B.shape[2],
        *x.stride(),
        *dt.stride(),
        *B.stride(),
        *C.stride(),
        **meta,
        HAS_D=D is not None,
        num_warps=TUNING["par_warps"],
        num_stages=TUNING["stages"],
    )
    return y, sT


@ssd_scan.register_fake
def _(x, dt, A, B, C, D, s0, chunk):
    b, L, h, p = x.shape
    return x.new_empty(b, L, h, p), x.new_empty(b, h, p, B.shape[-1], dtype=torch.float32)


@torch.library.custom_op("mohawk::ssd_scan_backward", mutates_args=())
def ssd_scan_backward(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    s0: Tensor | None,
    sT: Tensor,
    dy: Tensor,
    dsT: Tensor | None,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dx, ddt, dA, dB, dC, dD, ds0) of :func:`ssd_scan` given dy (b, L, h, p) and dsT (b, h, p, n) or
    None; dD is zeros when D is None."""
    b, L, h, p = x.shape
    groups, n = B.shape[2], B.shape[3]
    meta = _meta(x, B, chunk)
    dy = dy.contiguous()
    dsT = None if dsT is None else dsT.contiguous()
    states, _ = _states(x, dt, A, B, None if s0 is None else s0.contiguous(), chunk, meta)  # recomputed, not kept
    NC = states.shape[2] - 1
    dstates, ds0 = _dstates(dt, A, C, dy, dsT, NC, p, meta, x.dtype)
    grouped = groups != h
    bc_dtype = torch.float32 if grouped else B.dtype  # per-head gradients summed over each group in float32
    dx = torch.empty(b, L, h, p, device=x.device, dtype=x.dtype)
    dB = torch.empty(b, L, h, n, device=x.device, dtype=bc_dtype)
    dC = torch.empty(b, L, h, n, device=x.device, dtype=bc_dtype)
    ddt = torch.empty(b, L, h, device=x.device, dtype=torch.float32)
    dA, dD = (torch.zeros(b, h, L, device=x.device, dtype=torch.float32) for _ in range(2))
    _grads_kernel[(b * h * NC,)](
        x,
        dt,
        A,
        B,
        C,
        D if D is not None else A,
        states,
        dstates,
        dy,
        dx,
        dB,
        dC,
        ddt,
        dA,
        dD,
        L,
        NC,
        h,
        h // groups,
        *x.stride(),
        *dt.stride(),
        *B.stride(),
        *C.stride(),
        **meta,
        HAS_D=D is not None,
        num_warps=TUNING["par_warps"],
        num_stages=TUNING["stages"],
    )
    dA = dA.sum((0, 2))
    dD = dD.sum((0, 2)) if D is not None else torch.zeros(h, device=x.device, dtype=torch.float32)
    if grouped:
        dB = dB.view(b, L, groups, h // groups, n).sum(3)
        dC = dC.view(b, L, groups, h // groups, n).sum(3)
    return dx, ddt.to(dt.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), dD, ds0


@ssd_scan_backward.register_fake
def _(x, dt, A, B, C, D, s0, sT, dy, dsT, chunk):
    h = x.shape[2]
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(dt, memory_format=torch.contiguous_format),
        torch.empty_like(A),
        torch.empty_like(B, memory_format=torch.contiguous_format),
        torch.empty_like(C, memory_format=torch.contiguous_format),
        A.new_empty(h, dtype=torch.float32),
        sT.new_empty(sT.shape),
    )


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, s0, chunk = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, s0, output[1])
    ctx.chunk = chunk


def _backward(ctx, dy, dsT):
    x, dt, A, B, C, D, s0, sT = ctx.saved_tensors
    dx, ddt, dA, dB, dC, dD, ds0 = ssd_scan_backward(x, dt, A, B, C, D, s0, sT, dy, dsT, ctx.chunk)
    return (dx, ddt, dA, dB, dC, None if D is None else dD.to(D.dtype), None if s0 is None else ds0, None)


ssd_scan.register_autograd(_backward, setup_context=_setup_context)


def ssd_triton(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    *,
    chunk_size: int = 64,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
):
    """``mohawk.ssd`` through the Triton scan: same arguments, shapes and results as ``ssd_chunked``. ``chunk_size`` is
    only the tile length here (the result does not depend on it): a power of two from 16 to 128, else 64."""
    chunk = chunk_size if chunk_size in (16, 32, 64, 128) else 64
    s0 = None if initial_state is None else initial_state.float()
    y, state = ssd_scan(x, dt, A, B.to(x.dtype), C.to(x.dtype), D, s0, chunk)
    return (y, state) if return_final_state else y
