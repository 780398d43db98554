"""Gradient of SSD step 2: the gradient of the state leaving each chunk, walking backward in time (autograd through
``ssd_chunked``'s loop over ``states_in`` in mohawk/mixers/ssd.py is the reference),

    dS_{c-1} = exp(Gl_c) dS_c + (C exp(G))^T dy  over chunk c,       dS_last = d(final state) or 0,

one walk per (sequence, head) chaining the chunks' matmuls. (A two-pass form, as the forward states have, was
measured slower for the gradients: benchmarks/README.md.)"""

try:  # in a try block, transformers' remote-code loader does not demand Triton where it is absent (then: PyTorch scan)
    import triton
    import triton.language as tl
except ImportError as err:
    raise ImportError("mohawk's Triton SSD scan needs triton (pip install mohawk[gpu])") from err
import torch
from torch import Tensor

from mohawk.mixers.kernels.ssd_chunk_state import load_bc
from mohawk.mixers.kernels.ssd_launch import CONFIGS, WALK_TILES


@triton.autotune(configs=CONFIGS, key=[])
@triton.heuristics(WALK_TILES)
@triton.jit
def _dstates_walk_kernel(
    dt, A, C, dy, dsT,  # inputs (dsT read when HAS_DST)
    dstates, ds0,  # outputs
    L, NC, H, HPG,  # length, chunks, heads, heads per group
    sdt_b, sdt_t, sdt_h, sc_b, sc_t, sc_h, sc_n,  # strides (dy contiguous (b, L, h, p))
    N: tl.constexpr, P: tl.constexpr, T: tl.constexpr, PREC: tl.constexpr, HAS_DST: tl.constexpr,
    BN: tl.constexpr, BP: tl.constexpr,  # tiles (heuristics: BP splits head_dim when (batch, head) pairs are few)
):  # fmt: skip
    """dstates (b, h, chunks, n, p): the gradient of the state leaving each chunk, from dsT (b, h, p, n) or 0; ds0
    (b, h, p, n) float32 the initial state's gradient. Grid (b * h, head_dim blocks), walking backward in time."""
    pid_bh, pid_p = tl.program_id(0), tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    dt += b * sdt_b + h * sdt_h
    C += b * sc_b + (h // HPG) * sc_h
    dy += b * L * H * P + h * P
    dstates += pid_bh * NC * N * P
    dsT += pid_bh * P * N
    ds0 += pid_bh * P * N
    ot, on, op = tl.arange(0, T), tl.arange(0, BN), pid_p * BP + tl.arange(0, BP)
    mn, mp = on < N, op < P
    mask = mn[:, None] & mp[None, :]
    state_offs = op[None, :] * N + on[:, None]  # (n, p) view of a (p, n) state
    tile = on[:, None] * P + op[None, :]  # (n, p) inside one chunk's state
    a = tl.load(A + h).to(tl.float32)
    dS = tl.zeros((BN, BP), dtype=tl.float32)
    if HAS_DST:
        dS = tl.load(dsT + state_offs, mask=mask, other=0.0).to(tl.float32)
    for cc in range(0, NC):
        c = NC - 1 - cc
        tl.store(dstates + c * N * P + tile, dS.to(dstates.dtype.element_ty), mask=mask)
        t = c * T + ot
        mt = t < L
        bq = load_bc(C, t, mt, on, mn, sc_t, sc_n)
        bdy = tl.load(dy + t[:, None] * (H * P) + op[None, :], mask=mt[:, None] & mp[None, :], other=0.0)
        bg = tl.load(dt + t * sdt_t, mask=mt, other=0.0).to(tl.float32) * a
        G, Gl = tl.cumsum(bg, 0), tl.sum(bg, 0)
        qd = (bq * tl.exp(G)[:, None]).to(bq.dtype)
        dS = dS * tl.exp(Gl) + tl.dot(tl.trans(qd), bdy.to(bq.dtype), input_precision=PREC)
    tl.store(ds0 + state_offs, dS, mask=mask)


def dstates_out(
    dt: Tensor, A: Tensor, C: Tensor, dy: Tensor, dsT: Tensor | None, p: int, chunk: int, prec: str, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The gradient of the state leaving each chunk (b, h, chunks, n, p) in ``dtype``, and the initial state's
    (b, h, p, n) float32, from dy (b, L, h, p) contiguous and dsT (b, h, p, n) contiguous or None."""
    b, L, h = dt.shape
    n, NC = C.shape[3], triton.cdiv(L, chunk)
    dstates = torch.empty(b, h, NC, n, p, device=dy.device, dtype=dtype)
    ds0 = torch.empty(b, h, p, n, device=dy.device, dtype=torch.float32)
    grid = lambda meta: (b * h, triton.cdiv(p, meta["BP"]))
    _dstates_walk_kernel[grid](
        dt, A, C, dy, ds0 if dsT is None else dsT, dstates, ds0, L, NC, h, h // C.shape[2],
        *dt.stride(), *C.stride(),
        N=n, P=p, T=chunk, PREC=prec, HAS_DST=dsT is not None,
    )  # fmt: skip
    return dstates, ds0
