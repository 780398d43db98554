"""GPU paths behind mohawk.ssd. mohawk's Triton scan against the quadratic reference, forward and every gradient, run
in Triton's interpreter on the CPU (float32: the interpreter has no bfloat16 matmul) and, marked gpu, compiled on a GPU
in bfloat16; the custom op's registration (fake tensors, autograd, torch.compile); the loaders' and the chooser's
logic."""

import os
import sys

import pytest
import torch
import torch.nn.functional as F

from mohawk.mixers import kernels, ssd, ssd_chunked, ssd_materialized

triton = pytest.importorskip("triton")  # noqa: F841  (installed with mohawk[test]; CUDA builds of torch bring it)
from mohawk.mixers.kernels.ssd_launch import forced_launch, two_pass_states, walk_block_p  # noqa: E402
from mohawk.mixers.kernels.ssd_triton import ssd_scan, ssd_triton  # noqa: E402

needs_interpreter_or_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton kernels need a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it)",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(b, L, h, p, groups, n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, p, generator=g)
    dt = F.softplus(torch.randn(b, L, h, generator=g) - 1)
    A = -torch.rand(h, generator=g) - 0.5
    B, C = torch.randn(b, L, groups, n, generator=g), torch.randn(b, L, groups, n, generator=g)
    D = torch.randn(h, generator=g)
    return [t.to(DEVICE, dtype if t.dim() == 4 else torch.float32).requires_grad_() for t in (x, dt, A, B, C, D)]


@pytest.fixture(params=["walk", "two_pass", "walk-16"])
def state_pass(request):
    """Both ways the kernel finds the forward chunk states: one sequential walk of matmuls per (sequence, head), or
    each chunk's own contribution in parallel and then an elementwise walk (what "auto" takes for few sequences);
    "walk-16": the walks (states and their gradients) over head_dim blocks of 16, as a GPU splits head_dim when the
    (sequence, head) pairs are few."""
    states, _, block = request.param.partition("-")
    with forced_launch(states, int(block) if block else None):
        yield request.param


def _grads(y, args, seed=1):
    go = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.device)
    return torch.autograd.grad(y.float(), args, go)


@needs_interpreter_or_gpu
@pytest.mark.parametrize(
    "b,L,h,p,groups,n,chunk",
    [
        (2, 50, 2, 16, 2, 16, 16),  # per-head B/C (Phi-Mamba), L not a multiple of the chunk
        (1, 70, 4, 32, 2, 16, 32),  # grouped B/C: two heads read each group
        (1, 33, 2, 20, 1, 24, 16),  # head_dim and state not powers of two (masked tiles), one group
        (1, 7, 2, 16, 2, 16, 64),  # shorter than one chunk
    ],
)
def test_triton_scan_matches_reference_forward_and_grads(b, L, h, p, groups, n, chunk, state_pass):
    args = _inputs(b, L, h, p, groups, n)
    x, dt, A, B, C, D = args
    y = ssd_triton(x, dt, A, B, C, D, chunk_size=chunk)
    y_ref = ssd_materialized(x, dt, A, B, C, D)
    assert y.shape == y_ref.shape and y.dtype == x.dtype
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4 * y_ref.abs().max().item())
    for name, g, g_ref in zip("x dt A B C D".split(), _grads(y, args), _grads(y_ref, args), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4 * g_ref.abs().max().item(), msg=name)


@needs_interpreter_or_gpu
def test_triton_scan_carries_state_in_and_out_with_gradients(state_pass):
    """A prompt fed in pieces: initial state in, final state out, gradients through both, as ssd_chunked."""
    args = _inputs(1, 45, 2, 16, 1, 16, seed=3)
    s0 = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(4)).to(DEVICE).requires_grad_()
    outs = [fn(*args, chunk_size=16, initial_state=s0, return_final_state=True) for fn in (ssd_triton, ssd_chunked)]
    for (y, s), (y_ref, s_ref) in [outs]:
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(s, s_ref, rtol=1e-4, atol=1e-4)
    gs = torch.randn(s0.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    grads = [torch.autograd.grad(y.sum() + (s * gs).sum(), args + [s0]) for y, s in outs]
    for g, g_ref in zip(*grads, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4 * g_ref.abs().max().item())
    # two halves with the state handed over == one call
    x, dt, A, B, C, D = [a.detach() for a in args]
    y1, s1 = ssd_triton(x[:, :20], dt[:, :20], A, B[:, :20], C[:, :20], D, chunk_size=16, return_final_state=True)
    y2 = ssd_triton(x[:, 20:], dt[:, 20:], A, B[:, 20:], C[:, 20:], D, chunk_size=16, initial_state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), ssd_chunked(x, dt, A, B, C, D), rtol=1e-4, atol=1e-4)


@needs_interpreter_or_gpu
def test_triton_scan_reads_strided_views_without_copies():
    """x, B and C come out of the conv as slices of one (b, L, conv_dim) tensor: the kernel takes their strides."""
    b, L, h, p, n = 1, 40, 2, 16, 16
    xbc = torch.randn(b, L, h * p + 2 * h * n, generator=torch.Generator().manual_seed(6)).to(DEVICE)
    x, B, C = torch.split(xbc, [h * p, h * n, h * n], dim=-1)
    x, B, C = x.unflatten(-1, (h, p)), B.unflatten(-1, (h, n)), C.unflatten(-1, (h, n))
    assert not B.is_contiguous()
    dt = F.softplus(torch.randn(b, L, h)).to(DEVICE)
    A = -torch.ones(h, device=DEVICE)
    torch.testing.assert_close(
        ssd_triton(x, dt, A, B, C, chunk_size=16), ssd_materialized(x, dt, A, B, C), rtol=1e-4, atol=1e-4
    )


@needs_interpreter_or_gpu
def test_custom_op_registration_passes_opcheck():
    """Schema, fake-tensor shapes and strides, autograd registration and AOT dispatch of mohawk::ssd_scan."""
    x, dt, A, B, C, D = _inputs(1, 20, 2, 16, 1, 16, seed=7)
    s0 = torch.randn(1, 2, 16, 16, device=DEVICE, requires_grad=True)
    for skip, state in ((None, None), (D, s0)):
        torch.library.opcheck(
            ssd_scan,
            (x, dt, A, B, C, skip, state, 16),
            test_utils=("test_schema", "test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic"),
        )


@needs_interpreter_or_gpu
def test_triton_scan_inside_torch_compile():
    """The custom op sits inside a compiled function (aot_eager on CPU) with the eager result and gradients."""
    args = _inputs(1, 24, 2, 16, 2, 16, seed=8)

    def f(x, dt, A, B, C, D):
        return ssd_triton(x, dt, A, B, C, D, chunk_size=16).sin()

    y = torch.compile(f, backend="aot_eager" if DEVICE == "cpu" else "inductor", fullgraph=True)(*args)
    y_ref = f(*args)
    torch.testing.assert_close(y, y_ref)
    for g, g_ref in zip(_grads(y, args), _grads(y_ref, args), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


def test_kernel_choice(monkeypatch):
    x = torch.randn(1, 8, 2, 3)
    assert kernels.ssd_kernel(x) is None  # CPU tensors never take a GPU path
    monkeypatch.setenv("MOHAWK_SSD_KERNEL", "fast")
    with pytest.raises(ValueError, match="MOHAWK_SSD_KERNEL"):
        kernels.ssd_kernel(x)
    assert kernels._triton_scan() is ssd_triton  # what auto / triton pick on a GPU


def test_float32_products_follow_torchs_matmul_precision():
    """float32 scans take exact products by default and TF32 ones once torch allows TF32 for float32 matmuls (what
    a user who sets "high" for speed expects of every matmul); bfloat16 inputs use tensor cores whatever it says."""
    from mohawk.mixers.kernels.ssd_launch import precision

    f32, bf16 = torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert (precision(f32), precision(bf16)) == ("ieee", "tf32")
        for allowed in ("high", "medium"):
            torch.set_float32_matmul_precision(allowed)
            assert (precision(f32), precision(bf16)) == ("tf32", "tf32")
    finally:
        torch.set_float32_matmul_precision(before)


def test_state_pass_choice():
    assert two_pass_states(32) and two_pass_states(128) and not two_pass_states(129)  # "auto": few pairs, two passes
    with forced_launch("walk"):
        assert not two_pass_states(1)
    with forced_launch("two_pass"):
        assert two_pass_states(10**6)
    assert two_pass_states(128) and not two_pass_states(129)  # restored on leaving the block
    with pytest.raises(ValueError, match="states"), forced_launch("two-pass"):
        pass


def test_walk_block_choice():
    """The walks split head_dim (64 here) when the (sequence, head) programs are few; forced_launch overrides."""
    assert walk_block_p(256, 64) == 64 and walk_block_p(64, 64) == 32 and walk_block_p(8, 64) == 32
    assert walk_block_p(8, 128) == 32 and walk_block_p(64, 128) == 64 and walk_block_p(8, 20) == 32
    with forced_launch(block_p=16):
        assert walk_block_p(10**6, 64) == 16 and walk_block_p(1, 8) == 16
    with pytest.raises(ValueError, match="block_p"), forced_launch(block_p=24):
        pass


def test_loader_skips_a_broken_package_init(tmp_path, monkeypatch):
    """mamba-ssm's __init__ needs CUDA extensions; the loader reaches ops.triton without running it."""
    pkg = tmp_path / "mamba_ssm"
    (pkg / "ops" / "triton").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('selective_scan_cuda is missing')\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "triton" / "__init__.py").write_text("")
    (pkg / "ops" / "triton" / "ssd_combined.py").write_text("def mamba_chunk_scan_combined(*a, **k):\n    return 'k'\n")
    (pkg / "ops" / "triton" / "selective_state_update.py").write_text("def selective_state_update():\n    return 's'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    kernels.mamba_triton.cache_clear()
    try:
        fn = kernels._mamba_chunk_scan()
        assert fn is not None and fn() == "k"
        assert kernels.mamba_triton("selective_state_update", "selective_state_update")() == "s"
        assert kernels.mamba_triton("selective_state_update", "no_such_kernel") is None
    finally:
        for name in [m for m in sys.modules if m == "mamba_ssm" or m.startswith("mamba_ssm.")]:
            del sys.modules[name]
        kernels.mamba_triton.cache_clear()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("choice", ["triton", "triton-two_pass", "mamba"])
def test_gpu_kernel_matches_reference_forward_and_grads(choice, monkeypatch):
    """bf16 through the chosen kernel vs the float32 PyTorch scan; torch forced: no kernel."""
    choice, _, state_pass = choice.partition("-")
    with forced_launch(state_pass or "auto"):
        _gpu_kernel_matches_reference(choice, monkeypatch)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_float32_scan_takes_tf32_products_when_torch_allows():
    """On a GPU the float32 scan is exact to float32 rounding under "highest" and changes, within TF32's rounding,
    under "high": the setting reaches the kernels (zero-shot scoring runs students in float32)."""
    b, L, h, p, groups, n = 2, 300, 4, 64, 1, 64
    x, dt, A, B, C, D = (t.detach().cuda() for t in _inputs(b, L, h, p, groups, n))
    ref = ssd_materialized(x.double(), dt.double(), A.double(), B.double(), C.double(), D.double()).float()
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        exact = ssd_triton(x, dt, A, B, C, D)
        torch.set_float32_matmul_precision("high")
        fast = ssd_triton(x, dt, A, B, C, D)
    finally:
        torch.set_float32_matmul_precision(before)
    scale = ref.abs().max()
    assert (exact - ref).abs().max() / scale < 1e-5
    assert 1e-5 < (fast - ref).abs().max() / scale < 1e-2


def _gpu_kernel_matches_reference(choice, monkeypatch):
    monkeypatch.setenv("MOHAWK_SSD_KERNEL", "torch")
    assert kernels.ssd_kernel(torch.zeros(1, device="cuda")) is None
    monkeypatch.setenv("MOHAWK_SSD_KERNEL", choice)
    if kernels.ssd_kernel(torch.zeros(1, device="cuda")) is None:
        pytest.skip(f"{choice} kernel not installed")
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
    for gk, gr in zip(g_k, g_r, strict=True):
        assert (gk - gr).abs().max() / gr.abs().max() < 5e-2


def test_padded_projection_equals_the_plain_one_with_gradients():
    """aligned_linear's GPU form (out_features padded to a multiple of 16) gives linear(u) and the same gradients."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 37)
    u = torch.randn(2, 5, 12, requires_grad=True)
    y = kernels.padded_linear(lin, u)
    assert y.shape == (2, 5, 37)
    y_ref = lin(u)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (u, lin.weight, lin.bias), g)
    for a, b in zip(grads, torch.autograd.grad(y_ref, (u, lin.weight, lin.bias), g), strict=True):
        torch.testing.assert_close(a, b)
    assert kernels.aligned_linear(lin, u).is_contiguous()  # on the CPU: the plain projection


def test_projection_padding_choice():
    assert kernels.pads_projection(2313, "cuda", 8192, compiling=True)  # SmolLM2's SSD in_proj, a compiled block
    assert not kernels.pads_projection(2313, "cuda", 8192, compiling=False)  # eager cuBLAS copes with the odd size
    assert not kernels.pads_projection(2320, "cuda", 8192, compiling=True)  # already aligned
    assert not kernels.pads_projection(2313, "cuda", 16, compiling=True)  # a decoding step
    assert not kernels.pads_projection(2313, "cpu", 8192, compiling=True)
