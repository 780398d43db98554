"""GPU paths behind the PyTorch reference implementations. Each returns None where it cannot run (CPU, no Triton,
no optional dependency), and the caller falls back to the exact PyTorch path."""

from __future__ import annotations

import functools
import os

from torch import Tensor


@functools.lru_cache(maxsize=1)
def _mamba_chunk_scan():
    """mamba-ssm's Triton SSD kernel (pip install mohawk[gpu]), or None.

    mamba-ssm's package ``__init__`` imports its CUDA extensions (absent from a Triton-only build), so when the plain
    import fails the ``ops.triton`` modules are loaded under a bare package object that skips that ``__init__``."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        return mamba_chunk_scan_combined
    except Exception:
        pass
    try:
        import importlib
        import importlib.util
        import sys
        import types

        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or not spec.submodule_search_locations:
            return None
        for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[name]  # drop what the failed import left half-initialised
        bare = types.ModuleType("mamba_ssm")
        bare.__path__ = list(spec.submodule_search_locations)
        sys.modules["mamba_ssm"] = bare
        return importlib.import_module("mamba_ssm.ops.triton.ssd_combined").mamba_chunk_scan_combined
    except Exception:
        return None


def ssd_kernel(x: Tensor):
    """A fused SSD scan for ``x``'s device with mohawk.ssd's signature, or None (then the PyTorch scan is used).

    MOHAWK_SSD_KERNEL=torch forces the PyTorch path (for A/B comparisons)."""
    if not x.is_cuda or os.environ.get("MOHAWK_SSD_KERNEL", "auto") == "torch":
        return None
    fn = _mamba_chunk_scan()
    if fn is None:
        return None

    def run(x, dt, A, B, C, D=None, *, chunk_size=64, initial_state=None, return_final_state=False):
        out = fn(x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state, return_final_states=return_final_state)
        return out

    return run
