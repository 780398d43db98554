"""A block's matrix-vector products of one decoding step, each fused with its neighbours into one Triton kernel, and
their PyTorch reference.

At a few sequences a decoding step's projections read far more weight than activation, and each is a separate
cuBLAS GEMV with a norm, an activation or a residual add as separate kernels around it: the step is bound by kernel
latency, not memory (benchmarks/README.md: 11 kernels a layer, each ~4 us). A sequential block (Llama:
``h = h + mixer(norm1(h)); h = h + mlp(norm2(h))``) needs only three kinds of product, which are one kernel each here:

    norm + matvec       y = n(x) W^T (+ b)                              the mixer's in_proj, norm1 folded in
    gated MLP up        a = silu(n(x) Wg^T (+ bg)) * (n(x) Wu^T (+ bu))  gate and up with norm2 folded in
    matvec + residual   h' = h + y W^T (+ b)                            out_proj and down_proj, the residual add in

with n(x) = x / sqrt(mean(x^2) + eps) * w the block's RMSNorm (mohawk.mixers.norm.RMSNorm), x (batch, K) for batch
up to :data:`MAX_BATCH`, W (N, K) for any N (SmolLM2's SSD in_proj has 2,313 rows), y (batch, N). K is meant to be a
hidden or intermediate size. :func:`decode_matvec` takes one of two kernels by the batch (:data:`DOT_MIN_BATCH`):

- ``decode_matvec_kernel`` (a few sequences; CUDA-core FMAs): each program computes a BLOCK_N slice of outputs for
  every sequence. It loads its whole rows of W at once (a GEMV this small is bound by memory latency: all loads in
  flight beats a loop over K; K up to ~16K, the rows must fit the program's registers), then reuses them from
  registers for each sequence, recomputing the norm's statistics of its (K,) input itself (a few KB, from cache)
  rather than waiting on another kernel. Each sequence is another pass over the rows: its time grows with the batch.
- ``decode_matmul_kernel`` (from DOT_MIN_BATCH sequences; tensor cores): each program computes a (BLOCK_B sequences,
  BLOCK_N outputs) tile, looping over K in chunks of BK: ``acc += (x * w)[:, chunk] @ W[:, chunk]^T`` by ``tl.dot``,
  the chunk rounded to W's dtype (bf16 x bf16 products) and accumulated in float32. The norm's sum of squares
  accumulates from the same chunks, and its 1/rms, one scalar a row, scales the tile after the loop (n(x) W^T =
  rstd * ((x * w) W^T): one pass over x). Float32 weights take an IEEE float32 dot, not TF32 (float32 is the checking
  precision: the products of both kernels are the reference's). In Triton's interpreter the products are float32.
  With a K split (``split_k`` > 1) each tile is split_k programs, each over a run of the chunks: they store float32
  partial sums (and the norm's partial sums of squares) in a workspace and count themselves in with an atomic add;
  the last to arrive adds every partial in split order and runs the epilogue. A shorter loop per program for
  more programs, where a tile's serial K loop is the step's latency.

Both keep the bias, the SiLU gate and the residual add in the epilogue and compute in float32 from bf16 / float32
inputs; the output has x's dtype (the residual's with one). :func:`decode_matvec_reference` computes the same in
PyTorch; the tests hold them equal in Triton's interpreter (TRITON_INTERPRET=1) and compiled on a GPU.
"""

from __future__ import annotations

import os
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

# sequences up to which a decoding step may take these kernels (MOHAWK_DECODE_MATVEC=fused): the tensor-core
# kernel's largest batch tile, one program reading each weight row once for all of them
MAX_BATCH = 64
# sequences from which decode_matvec takes the tensor-core kernel: tl.dot needs tiles of >= 16 rows (fewer sequences
# would be mostly masked rows), and below that the register kernel is the one measured (2x cuBLAS at batch 1)
DOT_MIN_BATCH = 16
# the default (``auto``) takes them on CUDA where the GPU A/B of benchmarks/decode_speed.py measured them faster than
# the plain products (benchmarks/README.md): the register kernel up to AUTO_MAX_BATCH sequences, the tensor-core one
# from DOT_MIN_BATCH to MAX_BATCH; the batches between (2-15) were not measured, so they keep cuBLAS
AUTO_MAX_BATCH = 1


def fused_by_default(batch: int) -> bool:
    """Whether ``auto`` takes the fused kernels for a one-token step of ``batch`` sequences on CUDA."""
    return batch <= AUTO_MAX_BATCH or DOT_MIN_BATCH <= batch <= MAX_BATCH


AUTO_BATCHES = (
    f"1-{AUTO_MAX_BATCH} and {DOT_MIN_BATCH}-{MAX_BATCH}"
    if AUTO_MAX_BATCH > 1
    else f"1 and {DOT_MIN_BATCH}-{MAX_BATCH}"
)


PDL_CHOICES = ("auto", "0", "1")  # MOHAWK_DECODE_PDL's values (decode_pdl)


def decode_pdl(device: torch.device, batch: int) -> bool:
    """Whether the decoding kernels (these and mohawk/mixers/kernels/decode_step.py) of a step over ``batch``
    sequences launch with programmatic dependent launch on ``device``: a CUDA GPU of compute capability 9 or more
    (Hopper), Triton and not its interpreter, and MOHAWK_DECODE_PDL: ``auto`` (default) below :data:`DOT_MIN_BATCH`
    sequences (the register kernel's batches), ``1`` at every batch, ``0`` never. Each such kernel lets the next one
    start once all its programs run (``gdc_launch_dependents``); the register kernel then loads what no earlier kernel
    writes (its weights) and waits for the kernel before it (``gdc_wait``) before it reads anything else, so a chain of
    latency-bound products overlaps each launch and weight read with the tail of the one before. The tensor-core
    kernel waits before its first load, so it gains no overlap, and its early programs only hold SMs the kernel before
    needs: slower there (benchmarks/README.md, "Programmatic dependent launch")."""
    flag = os.environ.get("MOHAWK_DECODE_PDL", "auto")
    if flag not in PDL_CHOICES:
        raise ValueError(f"MOHAWK_DECODE_PDL={flag!r}: expected one of {', '.join(PDL_CHOICES)}")
    return (
        (flag == "1" or (flag == "auto" and batch < DOT_MIN_BATCH))
        and triton is not None
        and device.type == "cuda"
        and os.environ.get("TRITON_INTERPRET") != "1"
        and torch.cuda.get_device_capability(device)[0] >= 9
    )


def pdl_launch(pdl: bool | None, device: torch.device, batch: int) -> dict:
    """The launch keywords of a kernel with a ``PDL`` constexpr: the flag, and Triton's ``launch_pdl`` when on;
    ``pdl`` None: :func:`decode_pdl`'s choice for ``device`` and ``batch``."""
    on = decode_pdl(device, batch) if pdl is None else pdl
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


def decode_matvec_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    norm_weight: Tensor | None = None,
    eps: float = 1e-6,
    up_weight: Tensor | None = None,
    up_bias: Tensor | None = None,
    residual: Tensor | None = None,
) -> Tensor:
    """x (batch, K), weight (N, K) -> (batch, N) in float32 arithmetic: ``y = n(x) weight^T + bias`` with n the
    RMSNorm of weight ``norm_weight`` (identity if None); with ``up_weight`` (N, K), ``silu(y) * (n(x) up_weight^T +
    up_bias)``; with ``residual`` (batch, N), ``residual + y``. Returned in x's dtype (the residual's with one)."""
    f32 = torch.float32
    u = x.to(f32)
    if norm_weight is not None:
        u = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.to(f32)
    y = F.linear(u, weight.to(f32), None if bias is None else bias.to(f32))
    if up_weight is not None:
        y = F.silu(y) * F.linear(u, up_weight.to(f32), None if up_bias is None else up_bias.to(f32))
    if residual is not None:
        return (residual.to(f32) + y).to(residual.dtype)
    return y.to(x.dtype)


try:  # Triton comes with CUDA builds of torch; without it the plain products are used
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:

    @triton.jit
    def decode_matvec_kernel(
        x_ptr, s_xb, nw_ptr, w_ptr, s_wn, b_ptr, w2_ptr, s_w2n, b2_ptr, r_ptr, s_rb, y_ptr, s_yb,
        B, N, K, eps,
        BLOCK_N: tl.constexpr, KB: tl.constexpr,
        NORM: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        if PDL:  # the next kernel may start (and read its weights) while this one runs
            tl.extra.cuda.gdc_launch_dependents()
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = offs_n < N
        offs_k = tl.arange(0, KB)
        mk = offs_k < K
        # the program's rows of W, whole (KB >= K): every load of the kernel in flight at once (a GEMV is bound by
        # memory latency at this size, not by a K loop's arithmetic), then reused from registers for each sequence
        wm = mn[:, None] & mk[None, :]
        w = tl.load(w_ptr + offs_n[:, None] * s_wn + offs_k[None, :], mask=wm, other=0.0).to(tl.float32)
        if GATED:
            w2 = tl.load(w2_ptr + offs_n[:, None] * s_w2n + offs_k[None, :], mask=wm, other=0.0).to(tl.float32)
        if NORM:
            nw = tl.load(nw_ptr + offs_k, mask=mk, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_n, mask=mn, other=0.0).to(tl.float32)
            if GATED:
                bias2 = tl.load(b2_ptr + offs_n, mask=mn, other=0.0).to(tl.float32)
        if PDL:  # weights in flight; x and the residual come from the kernels before: wait for them
            tl.extra.cuda.gdc_wait()
        for bi in range(0, B):
            x = tl.load(x_ptr + bi * s_xb + offs_k, mask=mk, other=0.0).to(tl.float32)
            if NORM:  # the row's statistics here: (batch, K) is a few KB from cache, cheaper than another kernel
                x = x * tl.rsqrt(tl.sum(x * x, axis=0) / K + eps) * nw
            y = tl.sum(w * x[None, :], axis=1)
            if HAS_BIAS:
                y += bias
            if GATED:
                up = tl.sum(w2 * x[None, :], axis=1)
                if HAS_BIAS:
                    up += bias2
                y = y * tl.sigmoid(y) * up
            if RESIDUAL:
                y += tl.load(r_ptr + bi * s_rb + offs_n, mask=mn, other=0.0).to(tl.float32)
            tl.store(y_ptr + bi * s_yb + offs_n, y, mask=mn)

    @triton.jit
    def decode_matmul_kernel(
        x_ptr, s_xb, nw_ptr, w_ptr, s_wn, b_ptr, w2_ptr, s_w2n, b2_ptr, r_ptr, s_rb, y_ptr, s_yb,
        B, N, K, eps, part_ptr, ss_ptr, count_ptr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr,
        NORM: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr,
        IEEE: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr, NORM_MODE: tl.constexpr,
    ):  # fmt: skip
        if PDL:  # the next kernel may start while this one runs; this one waits for the one before
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        pid_n, pid_b = tl.program_id(0), tl.program_id(1)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mb = offs_b < B
        mn = offs_n < N
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        if GATED:
            acc2 = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        if NORM:
            ss = tl.zeros((BLOCK_B,), dtype=tl.float32)
            if NORM_MODE != 0:  # squares summed elementwise in the loop, over rows once after it
                ss2 = tl.zeros((BLOCK_B, BK), dtype=tl.float32)
        # split K: program (pid_n, pid_b, s) takes the s-th run of whole BK chunks
        k_per = tl.cdiv(tl.cdiv(K, BK), SPLIT) * BK
        k_lo = tl.program_id(2) * k_per
        k_hi = tl.minimum(K, k_lo + k_per)
        for k0 in range(k_lo, k_hi, BK):
            offs_k = k0 + tl.arange(0, BK)
            mk = offs_k < K
            x = tl.load(x_ptr + offs_b[:, None] * s_xb + offs_k[None, :], mask=mb[:, None] & mk[None, :], other=0.0)
            wm = mn[:, None] & mk[None, :]
            w = tl.load(w_ptr + offs_n[:, None] * s_wn + offs_k[None, :], mask=wm, other=0.0)
            if NORM:  # sum of squares from the chunk at hand; 1/rms, a scalar per row, scales the tile after the loop
                if NORM_MODE == 0:
                    x = x.to(tl.float32)
                    ss += tl.sum(x * x, axis=1)
                    x = x * tl.load(nw_ptr + offs_k, mask=mk, other=0.0).to(tl.float32)[None, :]
                else:
                    xf = x.to(tl.float32)
                    ss2 += xf * xf
                    if NORM_MODE == 1:  # (2: the weights carry the norm's weight, fold_norm; x to the dot as loaded)
                        x = xf * tl.load(nw_ptr + offs_k, mask=mk, other=0.0).to(tl.float32)[None, :]
            if GATED:
                w2 = tl.load(w2_ptr + offs_n[:, None] * s_w2n + offs_k[None, :], mask=wm, other=0.0)
            if UPCAST:  # Triton's interpreter multiplies bf16 operands as their integer bits, and its casts to bf16
                x = x.to(tl.float32)  # truncate (the GPU's round to nearest): float32 products there
                w = w.to(tl.float32)
                if GATED:
                    w2 = w2.to(tl.float32)
            else:
                x = x.to(w.dtype)  # what the tensor cores take: bf16 x bf16 (float32 with float32 weights)
            if IEEE:  # float32 weights: float32 products, not TF32 (Triton's default on the GPU)
                acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
                if GATED:
                    acc2 = tl.dot(x, tl.trans(w2), acc2, input_precision="ieee")
            else:
                acc = tl.dot(x, tl.trans(w), acc)
                if GATED:
                    acc2 = tl.dot(x, tl.trans(w2), acc2)
        if NORM:
            if NORM_MODE != 0:
                ss = tl.sum(ss2, axis=1)
        if SPLIT > 1:  # partial sums to the workspace; the tile's last program to finish adds them up
            tile = pid_b * tl.num_programs(0) + pid_n
            parts = (tl.num_programs(1) * tl.num_programs(0)) * (BLOCK_B * BLOCK_N)  # one split's workspace
            offs = (
                tile * (BLOCK_B * BLOCK_N) + tl.arange(0, BLOCK_B)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
            )
            tl.store(part_ptr + tl.program_id(2) * parts + offs, acc)
            if GATED:
                tl.store(part_ptr + (SPLIT + tl.program_id(2)) * parts + offs, acc2)
            offs_ss = tile * BLOCK_B + tl.arange(0, BLOCK_B)
            if NORM:
                tl.store(ss_ptr + tl.program_id(2) * (parts // BLOCK_N) + offs_ss, ss)
            tl.debug_barrier()  # every thread's partials written before the count says so (release, GPU scope)
            done = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
            last = done == SPLIT - 1
            if last:  # the others' partials, read past L1; the counter back to 0 for the next launch
                acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
                if GATED:
                    acc2 = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
                if NORM:
                    ss = tl.zeros((BLOCK_B,), dtype=tl.float32)
                for sp in range(SPLIT):  # a fixed order: the sum does not depend on which program came last
                    acc += tl.load(part_ptr + sp * parts + offs, cache_modifier=".cg")
                    if GATED:
                        acc2 += tl.load(part_ptr + (SPLIT + sp) * parts + offs, cache_modifier=".cg")
                    if NORM:
                        ss += tl.load(ss_ptr + sp * (parts // BLOCK_N) + offs_ss, cache_modifier=".cg")
                tl.store(count_ptr + tile, 0)
        else:
            last = True
        if last:
            _matmul_epilogue(
                acc, acc2 if GATED else acc, ss if NORM else acc, offs_b, offs_n, mb, mn, b_ptr, b2_ptr, r_ptr,
                s_rb, y_ptr, s_yb, K, eps, NORM, HAS_BIAS, GATED, RESIDUAL,
            )  # fmt: skip

    @triton.jit
    def _matmul_epilogue(
        acc, acc2, ss, offs_b, offs_n, mb, mn, b_ptr, b2_ptr, r_ptr, s_rb, y_ptr, s_yb, K, eps,
        NORM: tl.constexpr, HAS_BIAS: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr,
    ):  # fmt: skip
        """The tile's norm scale, bias, SiLU gate and residual add, then its store."""
        if NORM:
            rstd = tl.rsqrt(ss / K + eps)[:, None]
            acc = acc * rstd
            if GATED:
                acc2 = acc2 * rstd
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=mn, other=0.0).to(tl.float32)[None, :]
            if GATED:
                acc2 += tl.load(b2_ptr + offs_n, mask=mn, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc = acc * tl.sigmoid(acc) * acc2
        m = mb[:, None] & mn[None, :]
        if RESIDUAL:
            acc += tl.load(r_ptr + offs_b[:, None] * s_rb + offs_n[None, :], mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs_b[:, None] * s_yb + offs_n[None, :], acc, mask=m)


TILE = 8192  # weight elements a program holds (float32 registers: 64 a thread at 4 warps)


def _pow2_at_most(v: int) -> int:
    return 1 << max(0, v.bit_length() - 1)


def block_sizes(n: int, k: int, gated: bool = False) -> tuple[int, int]:
    """(BLOCK_N, KB): KB = next power of two >= K (a program reads whole rows), BLOCK_N rows for about 128 programs or
    more (an H100 has 132 SMs: a GEMV needs all of them reading) within TILE elements of weight (both weights' for
    the gated kernel). Triton's interpreter runs programs one by one: there, as few as fit."""
    kb = triton.next_power_of_2(k)
    fit = max(1, TILE // (kb * (2 if gated else 1)))
    if os.environ.get("TRITON_INTERPRET") == "1":
        return min(fit, triton.next_power_of_2(n)), kb
    return min(fit, max(1, _pow2_at_most(n // 128))), kb


def matvec_warps(block_n: int, kb: int, gated: bool = False) -> int:
    """The register kernel's warps: 8 where a program holds more than half a TILE of weight, else 4."""
    return 8 if block_n * kb * (2 if gated else 1) > TILE // 2 else 4


SMS = 132  # an H100's or H200's streaming multiprocessors: programs of one wave

# how the tensor-core kernel applies the RMSNorm in its K loop (MOHAWK_DECODE_NORM, :func:`decode_norm_mode`): "row":
# each chunk of x to float32, its row sums of squares, times the norm's weight, back to the weights' dtype for the
# dot; "late": squares summed elementwise, over rows once after the loop (no cross-thread sums per chunk); "folded"
# (the default): the weights times the norm's weight along K, made once (:func:`fold_norm`), so x goes to the dot as
# loaded (from shared memory, like the unnormed products) and only its squares are summed, late. Timed on an H100 at
# 64 sequences (benchmarks/README.md, "The norm inside the K loop"): in_proj 8.72 / 8.18 / 6.20 us, gate + up
# 8.47 / 7.79 / 6.08 us, a whole step 1.187 ms "row" and 1.080 ms "folded"; the folds cost a second copy of in_proj,
# gate and up (about 0.17 GiB for SmolLM2-135M in bf16) unless the model's norms are folded already (fold_norms)
NORM_MODES = ("row", "late", "folded")
NORM_DEFAULT = "folded"


def decode_norm_mode() -> str:
    """MOHAWK_DECODE_NORM: how the tensor-core kernel applies a folded-in RMSNorm, one of :data:`NORM_MODES`
    (default :data:`NORM_DEFAULT`)."""
    mode = os.environ.get("MOHAWK_DECODE_NORM", NORM_DEFAULT)
    if mode not in NORM_MODES:
        raise ValueError(f"MOHAWK_DECODE_NORM={mode!r}: expected one of {', '.join(NORM_MODES)}")
    return mode


_FOLDS: dict[int, tuple[tuple, Tensor | None]] = {}  # id(weight) -> (what it was folded from, the fold), while it lives


def fold_norm(weight: Tensor, norm_weight: Tensor) -> Tensor:
    """weight (N, K) * norm_weight[None, :] (K,), computed in float32 and returned in weight's dtype: n(x) W^T =
    rstd(x) * (x (W diag(w))^T). Made once and kept while ``weight`` lives, made again when either tensor is
    changed in place (its version) or another norm weight comes; weights made under torch.inference_mode (no version
    to check) are folded at each call. A norm weight of ones (a model whose norms are folded already:
    MohawkForCausalLM.fold_norms) gives ``weight`` itself, no copy. A fold made inside a CUDA graph capture is part
    of the graph (made at each replay); one made before it is what the graph reads, so a graph captured before an
    in-place change of the weights keeps the old fold (as it keeps every other address it was captured with). The
    folds of a model's in_proj, gate and up take as much memory again as those weights."""

    def fold() -> Tensor:
        return (weight.float() * norm_weight.float()[None, :]).to(weight.dtype)

    if weight.is_inference() or norm_weight.is_inference():  # no version counter: a fold could not tell it is stale
        return fold()
    key = (weight.data_ptr(), norm_weight.data_ptr(), weight._version, norm_weight._version)
    hit = _FOLDS.get(id(weight))
    if hit is not None and hit[0] == key:
        return weight if hit[1] is None else hit[1]
    if weight.device.type == "cuda" and torch.cuda.is_current_stream_capturing():  # (no sync to look at the values)
        return fold()
    # None: the weight is its own fold (kept as None, not as the weight, so that the cache never keeps it alive)
    folded = None if bool((norm_weight == 1).all()) else fold()
    if id(weight) not in _FOLDS:
        weakref.finalize(weight, _FOLDS.pop, id(weight), None)
    _FOLDS[id(weight)] = (key, folded)
    return weight if folded is None else folded


def dot_block_sizes(b: int, n: int, k: int, folded: bool = False) -> tuple[int, int, int, int | None]:
    """(BLOCK_B, BLOCK_N, BK, num_stages) of the tensor-core kernel. BLOCK_B: the batch in one tile (16, 32 or 64,
    tl.dot's rows), so that each weight is read from memory once. BLOCK_N: the fewest rows, from 16, that keep the
    programs within one wave of SMS (up to 64): at these batches the kernel still mostly reads weights, and each
    program reads its BLOCK_N rows plus all of x, so smaller tiles spread the reading over more SMs until a second
    wave costs more (SmolLM2-135M: 32 for in_proj's 2,313 rows, 16 for the MLP's 1,536 and the 576 of out_proj and
    down). BK = 64 (128 bytes of a bf16 row, one cache line, per chunk) and Triton's pipelining, except at 64-row tiles
    where each program streams more, BK = 128 over 4 stages: where the tiles leave fewer than SMS / 2 programs, and in
    a product whose weights carry the norm (``folded``, :func:`fold_norm`). benchmarks/decode_matvec_sweep.py on an
    H100 at 64 sequences: out_proj 0.80x, down 0.56x the time of BK = 64, folded in_proj 0.89x, gate + up 0.89x;
    smaller batches were not swept. Triton's interpreter runs programs one by one: there, big tiles, few programs."""
    bb = min(64, max(16, triton.next_power_of_2(b)))
    if os.environ.get("TRITON_INTERPRET") == "1":
        return bb, min(256, max(16, triton.next_power_of_2(n))), min(256, max(16, triton.next_power_of_2(k))), None
    bn = 16
    while bn < 64 and triton.cdiv(n, bn) > SMS:
        bn *= 2
    few = triton.cdiv(n, bn) * triton.cdiv(b, bb) < SMS // 2
    if bb == 64 and (few or folded) and k >= 128:
        return bb, bn, 128, 4
    return bb, bn, 64, None


def dot_split(b: int, n: int, k: int) -> int:
    """The tensor-core kernel's K split (programs per output tile) for ``b`` sequences of an (n, k) product:
    MOHAWK_DECODE_SPLIT=N (a whole number >= 1) at every product, or ``auto`` (default): 1, no split, which the GPU
    measurements in benchmarks/README.md ("The K split") found the fastest whole step."""
    flag = os.environ.get("MOHAWK_DECODE_SPLIT", "auto")
    if flag == "auto":
        return 1
    if not flag.isdigit() or int(flag) < 1:
        raise ValueError(f"MOHAWK_DECODE_SPLIT={flag!r}: expected auto or a whole number >= 1")
    return int(flag)


_COUNTS: dict[torch.device, list[Tensor]] = {}


def tile_counts(device: torch.device, tiles: int) -> Tensor:
    """int32 zeros, one per output tile, with which a split-K launch elects each tile's last program; every launch
    leaves them at zero, so one buffer serves every launch on a device's stream, CUDA graph replays included. Made
    outside a graph capture and kept for good (a captured graph holds its address); inside a capture with none big
    enough, made for that launch alone (the graph zeroes it each replay)."""
    for buf in _COUNTS.get(device, []):
        if buf.numel() >= tiles:
            return buf
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return torch.zeros(tiles, dtype=torch.int32, device=device)
    buf = torch.zeros(max(tiles, 4096), dtype=torch.int32, device=device)
    _COUNTS.setdefault(device, []).append(buf)
    return buf


def decode_matvec(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    norm_weight: Tensor | None = None,
    eps: float = 1e-6,
    up_weight: Tensor | None = None,
    up_bias: Tensor | None = None,
    residual: Tensor | None = None,
    block_n: int | None = None,
    block_b: int | None = None,
    block_k: int | None = None,
    split_k: int | None = None,
    path: str | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    pdl: bool | None = None,
    norm_mode: str | None = None,
) -> Tensor:
    """:func:`decode_matvec_reference` in one Triton kernel (same arguments): ``decode_matvec_kernel`` below
    :data:`DOT_MIN_BATCH` sequences, ``decode_matmul_kernel`` (tensor cores) from there, or the one ``path`` names
    (``"matvec"`` or ``"dot"``: tests). ``block_n``: output rows per program, a power of two (16 or more for the dot
    kernel); ``block_b`` and ``block_k``: the dot kernel's sequences per program and K chunk, powers of two >= 16;
    ``split_k``: the dot kernel's programs per output tile, each over 1/split_k of K's chunks (float32 partial sums
    in a workspace, added up in a fixed order by the tile's last program, which then runs the epilogue); defaults
    :func:`block_sizes`'s, :func:`dot_block_sizes`'s and :func:`dot_split`'s; ``num_warps`` and ``num_stages`` (software
    pipelining of the dot kernel's K loop) default to this module's and Triton's choice
    (benchmarks/decode_matvec_sweep.py times the alternatives); ``pdl``: programmatic dependent launch, default
    :func:`decode_pdl`'s; ``norm_mode``: how the dot kernel applies ``norm_weight`` (one of :data:`NORM_MODES`,
    default :func:`decode_norm_mode`'s; the weights are given unfolded, "folded" folds them with :func:`fold_norm`).
    Rows of x, weight, up_weight and residual need a unit last stride; ``up_bias`` is given exactly when ``bias``
    is."""
    b, k = x.shape
    n = weight.shape[0]
    assert weight.shape == (n, k) and x.stride(-1) == 1 and weight.stride(-1) == 1
    assert up_weight is None or (up_weight.shape == (n, k) and up_weight.stride(-1) == 1)
    assert (up_weight is None or bias is None) or up_bias is not None
    assert residual is None or (residual.shape == (b, n) and residual.stride(-1) == 1)
    path = path or ("dot" if b >= DOT_MIN_BATCH else "matvec")
    assert path in ("matvec", "dot"), path
    if norm_mode is None:
        norm_mode = decode_norm_mode() if path == "dot" and norm_weight is not None else "row"
    assert norm_mode in NORM_MODES and (norm_mode == "row" or path == "dot"), (norm_mode, path)
    gated = up_weight is not None
    folded = norm_mode == "folded" and norm_weight is not None
    if norm_mode == "folded" and norm_weight is not None:
        weight = fold_norm(weight, norm_weight)
        up_weight = fold_norm(up_weight, norm_weight) if up_weight is not None else None
    y = torch.empty(b, n, dtype=residual.dtype if residual is not None else x.dtype, device=x.device)
    w2 = up_weight if gated else weight
    r = residual if residual is not None else y
    args = (
        x, x.stride(0), norm_weight if norm_weight is not None else weight, weight, weight.stride(0),
        bias if bias is not None else weight, w2, w2.stride(0), up_bias if up_bias is not None else weight,
        r, r.stride(0), y, y.stride(0),
        b, n, k, eps,
    )  # fmt: skip
    flags = {
        "NORM": norm_weight is not None,
        "HAS_BIAS": bias is not None,
        "GATED": gated,
        "RESIDUAL": residual is not None,
    }
    if path == "dot":
        bb, bn, bk, st = dot_block_sizes(b, n, k, folded)
        bb, bn, bk, st = block_b or bb, block_n or bn, block_k or bk, num_stages or st
        split = split_k or dot_split(b, n, k)
        assert min(bb, bn, bk) >= 16, "tl.dot needs tiles of 16 or more"
        assert split >= 1, split
        stages = {} if st is None else {"num_stages": st}
        grid = (triton.cdiv(n, bn), triton.cdiv(b, bb), split)
        if split > 1:  # per split: the tiles' float32 partial products (both of the gated kernel's), sums of squares
            tiles = grid[0] * grid[1]
            part = torch.empty(split * (2 if gated else 1) * tiles * bb * bn, dtype=torch.float32, device=x.device)
            ss = torch.empty(split * tiles * bb, dtype=torch.float32, device=x.device)
            count = tile_counts(x.device, tiles)
        else:
            part = ss = count = y  # not read
        decode_matmul_kernel[grid](
            *args, part, ss, count, BLOCK_B=bb, BLOCK_N=bn, BK=bk, SPLIT=split, **flags,
            IEEE=weight.dtype == torch.float32,
            UPCAST=os.environ.get("TRITON_INTERPRET") == "1", NORM_MODE=NORM_MODES.index(norm_mode),
            num_warps=num_warps or 4, **stages,
            **pdl_launch(pdl, x.device, b),
        )  # fmt: skip
        return y
    bn, kb = block_sizes(n, k, gated)
    bn = block_n or bn
    warps = num_warps or matvec_warps(bn, kb, gated)
    decode_matvec_kernel[(triton.cdiv(n, bn),)](
        *args, BLOCK_N=bn, KB=kb, **flags, num_warps=warps, **pdl_launch(pdl, x.device, b)
    )
    return y


CHOICES = ("auto", "plain", "fused")


def decode_matvec_choice() -> str:
    """MOHAWK_DECODE_MATVEC: ``auto`` (default: the fused kernels on CUDA at the batches of :func:`fused_by_default`,
    the plain products at the others), ``plain`` (cuBLAS products, separate norms and adds) or ``fused`` (the kernels
    up to MAX_BATCH sequences, on CUDA or in Triton's interpreter, TRITON_INTERPRET=1: tests)."""
    choice = os.environ.get("MOHAWK_DECODE_MATVEC", "auto")
    if choice not in CHOICES:
        raise ValueError(f"MOHAWK_DECODE_MATVEC={choice!r}: expected one of {', '.join(CHOICES)}")
    return choice


def fuses_decode_batch(batch: int, device: torch.device) -> bool:
    """Whether a one-token step of ``batch`` sequences on ``device`` takes :func:`decode_matvec` under
    MOHAWK_DECODE_MATVEC (see :func:`decode_matvec_choice`), before the conditions on the step itself."""
    choice = decode_matvec_choice()
    if triton is None or choice == "plain":
        return False
    if choice == "auto":
        return device.type == "cuda" and fused_by_default(batch)
    return (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1") and batch <= MAX_BATCH


def fuses_decode_matvec(h: Tensor) -> bool:
    """Whether a one-token step of h (batch, 1, hidden) takes :func:`decode_matvec` for its block's products:
    :func:`fuses_decode_batch` for its batch and device, without gradients (no backward), autocast (whose casts the
    plain products would make) or torch.compile around it (a compiled caller keeps its own products)."""
    return (
        h.dim() == 3
        and h.shape[1] == 1
        and fuses_decode_batch(h.shape[0], h.device)
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled(h.device.type)
        and not torch.compiler.is_compiling()
    )
