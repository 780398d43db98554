"""GPU paths behind the PyTorch reference implementations: mohawk's own Triton SSD scan (ssd_triton.py, over one
file per step: ssd_chunk_state, ssd_state_passing, ssd_chunk_scan and their gradients) and, as an alternative,
mamba-ssm's. Each loader returns None where it cannot run (CPU, no Triton, no optional dependency), and
the caller falls back to the exact PyTorch path."""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor


@functools.cache
def mamba_triton(module: str, name: str):
    """``mamba_ssm.ops.triton.<module>.<name>``, one of mamba-ssm's Triton kernels (pip install mohawk[mamba], or its
    Triton-only wheel: scripts/gpu_prepare.sh), or None where it cannot be imported.

    mamba-ssm's package ``__init__`` imports its CUDA extensions (absent from a Triton-only build), so when the plain
    import fails the ``ops.triton`` modules are loaded under a bare package object that skips that ``__init__``."""
    import importlib

    path = f"mamba_ssm.ops.triton.{module}"
    try:
        return getattr(importlib.import_module(path), name)
    except Exception:
        pass
    try:
        import importlib.util
        import sys
        import types

        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or not spec.submodule_search_locations:
            return None
        for mod in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[mod]  # drop what the failed import left half-initialised
        bare = types.ModuleType("mamba_ssm")
        bare.__path__ = list(spec.submodule_search_locations)
        sys.modules["mamba_ssm"] = bare
        return getattr(importlib.import_module(path), name)
    except Exception:
        return None


def _mamba_chunk_scan():
    """mamba-ssm's Triton SSD kernel ``mamba_chunk_scan_combined``, or None."""
    return mamba_triton("ssd_combined", "mamba_chunk_scan_combined")


@functools.lru_cache(maxsize=1)
def _triton_scan():
    """mohawk's own Triton SSD scan (needs only Triton, which CUDA builds of torch bring), or None."""
    try:
        from mohawk.mixers.kernels.ssd_triton import ssd_triton

        return ssd_triton
    except Exception:
        return None


def _mamba_run(x, dt, A, B, C, D=None, *, chunk_size=64, initial_state=None, return_final_state=False):
    return _mamba_chunk_scan()(
        x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state, return_final_states=return_final_state
    )


KERNELS = ("auto", "triton", "mamba", "torch")


def ssd_kernel(x: Tensor):
    """A fused SSD scan for ``x``'s device with mohawk.ssd's signature, or None (then the PyTorch scan is used).

    MOHAWK_SSD_KERNEL chooses: ``auto`` (default: mohawk's Triton scan, else mamba-ssm's), ``triton``, ``mamba``
    (mamba-ssm's kernel, pip install mohawk[mamba]) or ``torch`` (the PyTorch scan, for A/B comparisons). CPU tensors
    always take the PyTorch scan. Inside torch.compile only the Triton scan is used: it is a custom op the compiler
    keeps whole (mamba-ssm's Python wrapper would be traced into)."""
    choice = os.environ.get("MOHAWK_SSD_KERNEL", "auto")
    if choice not in KERNELS:
        raise ValueError(f"MOHAWK_SSD_KERNEL={choice!r}: expected one of {', '.join(KERNELS)}")
    if not x.is_cuda or choice == "torch":
        return None
    if choice in ("auto", "triton") and _triton_scan() is not None:
        return _triton_scan()
    if choice in ("auto", "mamba") and _mamba_chunk_scan() is not None and not torch.compiler.is_compiling():
        return _mamba_run
    return None


ALIGN = 16  # output features of a projection are padded to a multiple of this in compiled GPU code (aligned_linear)
MIN_ROWS = 256  # tokens from which the padding pays (decoding steps of a few rows keep the plain projection)


def pads_projection(out_features: int, device_type: str, rows: int, compiling: bool) -> bool:
    """Whether aligned_linear pads: inside torch.compile on CUDA, for at least MIN_ROWS tokens, when out_features is
    not a multiple of ALIGN."""
    return compiling and device_type == "cuda" and rows >= MIN_ROWS and out_features % ALIGN != 0


def padded_linear(linear: torch.nn.Linear, u: Tensor) -> Tensor:
    """``linear(u)`` (..., out_features) computed with out_features padded by zero rows to a multiple of ALIGN: a
    view of the wider product, same values and gradients."""
    import torch.nn.functional as F

    n = linear.out_features
    pad = -n % ALIGN
    w = F.pad(linear.weight, (0, 0, 0, pad))
    b = None if linear.bias is None else F.pad(linear.bias, (0, pad))
    return F.linear(u, w, b)[..., :n]


def aligned_linear(linear: torch.nn.Linear, u: Tensor) -> Tensor:
    """``linear(u)``; inside torch.compile on the GPU, with its output features padded to a multiple of ALIGN where
    they are not.

    Inside compiled blocks an odd GEMM size (SmolLM2's SSD in_proj has 2,313 outputs) can fall to a slow unaligned
    kernel; padding avoids it. Eager cuBLAS handles odd sizes well, so eager code keeps the plain projection
    (measurements: benchmarks/README.md)."""
    rows = u.numel() // max(1, u.shape[-1])
    if pads_projection(linear.out_features, u.device.type, rows, torch.compiler.is_compiling()):
        return padded_linear(linear, u)
    return linear(u)
