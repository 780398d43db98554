"""GPU paths behind mohawk.ssd: the loader's logic on CPU, and (marked gpu) the fused kernel against the PyTorch
reference, forward and gradients, within bf16 tolerance."""

import sys

import pytest
import torch

from mohawk.mixers import kernels, ssd, ssd_chunked


def test_loader_skips_a_broken_package_init(tmp_path, monkeypatch):
    """mamba-ssm's __init__ needs CUDA extensions; the loader reaches ops.triton without running it."""
    pkg = tmp_path / "mamba_ssm"
    (pkg / "ops" / "triton").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('selective_scan_cuda is missing')\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "triton" / "__init__.py").write_text("")
    (pkg / "ops" / "triton" / "ssd_combined.py").write_text("def mamba_chunk_scan_combined(*a, **k):\n    return 'k'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    kernels._mamba_chunk_scan.cache_clear()
    try:
        fn = kernels._mamba_chunk_scan()
        assert fn is not None and fn() == "k"
    finally:
        for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[name]
        kernels._mamba_chunk_scan.cache_clear()


def test_cpu_and_forced_torch_use_the_reference(monkeypatch):
    x = torch.randn(1, 8, 2, 3)
    assert kernels.ssd_kernel(x) is None  # CPU tensors never take a GPU path
    monkeypatch.setenv("MOHAWK_SSD_KERNEL", "torch")
    assert kernels.ssd_kernel(x) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_kernel_matches_reference_forward_and_grads():
    if kernels.ssd_kernel(torch.zeros(1, device="cuda")) is None:
        pytest.skip("no fused kernel installed (pip install mohawk[gpu])")
    torch.manual_seed(0)
    b, L, h, p, n = 2, 512, 4, 64, 64
    x = torch.randn(b, L, h, p, device="cuda")
    dt = torch.nn.functional.softplus(torch.randn(b, L, h, device="cuda") - 3)
    A = -torch.rand(h, device="cuda") - 0.5
    B, C = torch.randn(b, L, h, n, device="cuda"), torch.randn(b, L, h, n, device="cuda")
    D = torch.randn(h, device="cuda")
    outs = []
    for fn, dtype in ((ssd, torch.bfloat16), (ssd_chunked, torch.float32)):
        args = [t.detach().clone().to(dtype if t.dim() > 2 else torch.float32).requires_grad_() for t in (x, dt)]
        args += [A.clone().requires_grad_()] + [t.detach().clone().to(dtype).requires_grad_() for t in (B, C)]
        y = fn(*args, D=D)
        y.float().pow(2).mean().backward()
        outs.append((y.float(), [a.grad.float() for a in args]))
    (y_k, g_k), (y_r, g_r) = outs
    scale = y_r.abs().max()
    assert (y_k - y_r).abs().max() / scale < 3e-2
    for gk, gr in zip(g_k, g_r):
        assert (gk - gr).abs().max() / gr.abs().max() < 5e-2
