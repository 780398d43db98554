"""The fused matvec kernel of a decoding step (mohawk.mixers.kernels.decode_matvec): the Triton kernel against its
PyTorch reference in Triton's interpreter on the CPU (float32 and bfloat16) and, marked gpu, compiled at SmolLM2's
sizes; the reference against the block's own modules; and the switch that turns it on."""

import os

import pytest
import torch
import torch.nn.functional as F

from mohawk.mixers.kernels import decode_matvec as dm
from mohawk.mixers.norm import RMSNorm

pytest.importorskip("triton")
needs_interpreter_or_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton kernels need a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it)",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KINDS = ("plain", "norm", "gated", "residual")


def _inputs(kind, b, n, k, bias, dtype, device=DEVICE, seed=0):
    """decode_matvec's arguments for ``kind``: x (b, k), weight (n, k), ... random, in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    args = {"x": r(b, k) * 2, "weight": r(n, k) / k**0.5, "bias": r(n) if bias else None}
    if kind in ("norm", "gated"):
        args.update(norm_weight=1 + r(k) / 2, eps=1e-5)
    if kind == "gated":
        args.update(up_weight=r(n, k) / k**0.5, up_bias=r(n) if bias else None)
    if kind == "residual":
        args["residual"] = r(b, n)
    return {a: v.to(device, dtype) if isinstance(v, torch.Tensor) else v for a, v in args.items()}


@needs_interpreter_or_gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,bias", [(1, True), (3, False), (3, True)])
def test_kernel_equals_reference(kind, dtype, b, bias):
    """37 outputs in programs of 8 rows (the last one masked), 40 inputs in a block of 64 (masked)."""
    args = _inputs(kind, b, 37, 40, bias, dtype)
    want = dm.decode_matvec_reference(**args)
    got = dm.decode_matvec(**args, block_n=8)
    assert got.dtype == want.dtype == dtype and got.shape == (b, 37)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(got, want, **tol)


@needs_interpreter_or_gpu
def test_kernel_default_blocks_and_strided_rows():
    """Default block sizes and one row per program, and x / residual as rows of wider tensors (a (b, 1, hidden)
    step's h[:, 0], in_proj's column slices): the row strides are honoured."""
    args = _inputs("residual", 2, 30, 72, True, torch.float32)
    wide = torch.randn(2, 100, device=DEVICE)
    wide[:, 10:82] = args["x"]
    args["x"] = wide[:, 10:82]
    res = torch.randn(2, 1, 40, device=DEVICE)
    res[:, 0, :30] = args["residual"]
    args["residual"] = res[:, 0, :30]
    want = dm.decode_matvec_reference(**args)
    for block_n in (None, 1):
        torch.testing.assert_close(dm.decode_matvec(**args, block_n=block_n), want, atol=1e-5, rtol=1e-5)


def test_reference_equals_the_blocks_modules():
    """The reference computes what the eager modules compute: RMSNorm then a linear, the gated MLP's up half, a
    linear plus the residual (so that kernel == reference means kernel == block)."""
    torch.manual_seed(0)
    norm = RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_(1, 0.3)
    gate, up, lin = torch.nn.Linear(24, 10), torch.nn.Linear(24, 10), torch.nn.Linear(10, 24)
    x, h = torch.randn(3, 24), torch.randn(3, 24)
    with torch.no_grad():
        kw = {"norm_weight": norm.weight, "eps": norm.eps}
        torch.testing.assert_close(dm.decode_matvec_reference(x, gate.weight, gate.bias, **kw), gate(norm(x)))
        got = dm.decode_matvec_reference(x, gate.weight, gate.bias, up_weight=up.weight, up_bias=up.bias, **kw)
        torch.testing.assert_close(got, F.silu(gate(norm(x))) * up(norm(x)))
        y = torch.randn(3, 10)
        torch.testing.assert_close(dm.decode_matvec_reference(y, lin.weight, lin.bias, residual=h), h + lin(y))


def test_the_switch(monkeypatch):
    """MOHAWK_DECODE_MATVEC: auto (default) fuses a one-token step on CUDA up to AUTO_MAX_BATCH sequences and never on
    the CPU (not even in Triton's interpreter), plain never, fused up to MAX_BATCH on CUDA or in the interpreter;
    never a prompt or a step with gradients; anything else is refused."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    one = torch.zeros(2, 1, 8)
    monkeypatch.delenv("MOHAWK_DECODE_MATVEC", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dm.decode_matvec_choice() == "auto"
    assert dm.fuses_decode_batch(1, cuda) and dm.fuses_decode_batch(dm.AUTO_MAX_BATCH, cuda)
    assert not dm.fuses_decode_batch(dm.AUTO_MAX_BATCH + 1, cuda) and not dm.fuses_decode_batch(1, cpu)
    monkeypatch.setenv("MOHAWK_DECODE_MATVEC", "plain")
    assert not dm.fuses_decode_batch(1, cuda)
    with torch.no_grad():
        assert not dm.fuses_decode_matvec(one)
        monkeypatch.setenv("MOHAWK_DECODE_MATVEC", "fused")
        assert dm.fuses_decode_batch(dm.MAX_BATCH, cuda) and not dm.fuses_decode_batch(dm.MAX_BATCH + 1, cuda)
        assert dm.fuses_decode_matvec(one)
        assert not dm.fuses_decode_matvec(torch.zeros(2, 3, 8))  # a prompt
        assert not dm.fuses_decode_matvec(torch.zeros(dm.MAX_BATCH + 1, 1, 8))
        monkeypatch.delenv("TRITON_INTERPRET")
        assert not dm.fuses_decode_matvec(one)  # on the CPU only in the interpreter
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not dm.fuses_decode_matvec(one)  # gradients on
    monkeypatch.setenv("MOHAWK_DECODE_MATVEC", "fast")
    with pytest.raises(ValueError, match="MOHAWK_DECODE_MATVEC"), torch.no_grad():
        dm.fuses_decode_matvec(one)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind,n,k", [("norm", 2313, 576), ("gated", 1536, 576), ("residual", 576, 1536)])
@pytest.mark.parametrize("b", [1, 16, 64])
def test_kernel_equals_reference_bf16_on_cuda(kind, n, k, b):
    """Compiled on a GPU, bfloat16, SmolLM2's student sizes: in_proj with norm1, the MLP's gate and up, down_proj."""
    args = _inputs(kind, b, n, k, True, torch.bfloat16, device="cuda")
    torch.testing.assert_close(dm.decode_matvec(**args), dm.decode_matvec_reference(**args), atol=3e-2, rtol=2e-2)
