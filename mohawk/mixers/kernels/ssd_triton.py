"""mohawk's own Triton SSD scan, forward and backward, registered as torch.library custom ops; the steps (one file
each, as mamba-ssm's ssd_*.py, each pointing to its PyTorch reference in mohawk/mixers/ssd.py):

- ssd_chunk_state.py: per chunk, the cumulative log decay and the state the chunk adds;
- ssd_state_passing.py: the state entering each chunk (a walk over the chunks, or two passes for few sequences);
- ssd_chunk_scan.py: per chunk, the output from the chunk's inputs and the state entering it;
- ssd_state_passing_bwd.py, ssd_chunk_scan_bwd.py: their gradients (the backward recomputes the states instead of
  keeping them);
- ssd_launch.py: launch settings (the measured configuration, tile heuristics, ``forced_launch``).

The scan (per batch and head, the SSD recurrence with x already multiplied by dt):

    S_t = exp(g_t) S_{t-1} + k_t^T v_t            state (state, head_dim), S_0 given or 0
    o_t = q_t S_t                                 q = C, k = B (head h reads group h // (heads // groups)), v = x dt

Wrapped as ``mohawk::ssd_scan`` / ``mohawk::ssd_scan_backward`` custom ops with fake implementations, so torch.compile
keeps the kernels as opaque calls inside a compiled block and CUDA graphs capture them. Without a GPU the same kernels
run in Triton's interpreter (TRITON_INTERPRET=1): that is how the CPU tests check them against ``ssd_materialized``.
"""

import torch
from torch import Tensor

from mohawk.mixers.kernels.ssd_chunk_scan import chunk_scan
from mohawk.mixers.kernels.ssd_chunk_scan_bwd import chunk_scan_bwd
from mohawk.mixers.kernels.ssd_launch import precision
from mohawk.mixers.kernels.ssd_state_passing import chunk_states_in
from mohawk.mixers.kernels.ssd_state_passing_bwd import dstates_out


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
    states, sT = chunk_states_in(x, dt, A, B, None if s0 is None else s0.contiguous(), chunk)
    return chunk_scan(x, dt, A, B, C, D, states, chunk), sT


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
    dy = dy.contiguous()
    dsT = None if dsT is None else dsT.contiguous()
    states, _ = chunk_states_in(x, dt, A, B, None if s0 is None else s0.contiguous(), chunk)  # recomputed, not kept
    dstates, ds0 = dstates_out(dt, A, C, dy, dsT, x.shape[-1], chunk, precision(x), x.dtype)
    dx, ddt, dA, dB, dC, dD = chunk_scan_bwd(x, dt, A, B, C, D, states, dstates, dy, chunk)
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
