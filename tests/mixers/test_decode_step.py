"""The fused decoding step (mohawk.mixers.kernels.decode_step): the Triton kernel against its PyTorch reference in
Triton's interpreter on the CPU (float32) and, marked gpu, compiled in bfloat16; the reference against the mixers'
own eager step; and whole students decoding through the kernel as they do without it."""

import os

import pytest
import torch
import torch.nn.functional as F

from mohawk.mixers.kernels import decode_matvec as dm
from mohawk.mixers.kernels import decode_step as ds
from mohawk.models import MohawkCache
from tests.utils import tiny_student as student

pytest.importorskip("triton")
needs_interpreter_or_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton kernels need a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it)",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(b, heads, p, groups, n, k, dtype=torch.float32, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    conv_dim = heads * p + 2 * groups * n
    t = {
        "xbc": torch.randn(b, conv_dim, generator=g),
        "conv_state": torch.randn(b, conv_dim, k - 1, generator=g),
        "conv_weight": torch.randn(conv_dim, k, generator=g) / k,
        "conv_bias": torch.randn(conv_dim, generator=g),
        "dt": F.softplus(torch.randn(b, heads, generator=g) - 1),
        "A": -torch.rand(heads, generator=g) - 0.5,
        "D": torch.randn(heads, generator=g),
        "state": torch.randn(b, heads, p, n, generator=g),
        "z": torch.randn(b, heads * p, generator=g),
    }
    keep32 = ("dt", "A", "D", "state")
    return {key: v.to(device, torch.float32 if key in keep32 else dtype) for key, v in t.items()}


CASES = [  # (b, heads, p, groups, n, k, conv_silu, x_over_dt, gate, with D, dt_mode, a_mode)
    (2, 4, 8, 4, 8, 4, False, False, "mul", True, "softplus_bias", "neg_exp"),  # SSD: a B/C group per head
    (3, 4, 6, 1, 5, 4, True, False, "mul_silu", True, "softplus_bias", "neg_exp"),  # Mamba-2: one group, odd sizes
    (1, 6, 8, 2, 16, 2, False, True, "add", True, "softplus", "minus_one"),  # Discrete Mamba-2, a 2-wide conv
    (2, 2, 4, 2, 4, 3, True, False, "none", False, "ones", "zero"),  # linear attention; no gate, no D
    (2, 4, 8, 2, 8, 4, False, False, "mul", True, "given", "given"),  # dt and A computed outside
]


def _case(case, dtype=torch.float32, device=DEVICE):
    """(reference inputs, kernel inputs (a copy), keyword settings) for one of CASES."""
    b, heads, p, groups, n, k, silu, x_over_dt, gate, with_d, dt_mode, a_mode = case
    ref = _inputs(b, heads, p, groups, n, k, dtype=dtype, device=device)
    g = torch.Generator().manual_seed(1)
    ref["dt_bias"] = torch.randn(heads, generator=g).to(device)
    if dt_mode != "given":  # raw logits: softplus in the step (large ones too, past softplus's threshold 20)
        ref["dt"] = (torch.randn(ref["dt"].shape, generator=g) * 4 - 3).to(device, dtype)
        ref["dt"][0, 0] = 25.0
    if a_mode == "neg_exp":
        ref["A"] = torch.randn(heads, generator=g).to(device)  # A_log
    ref["dt"], ref["A"] = (
        (None if dt_mode == "ones" else ref["dt"]),
        (None if a_mode in ("minus_one", "zero") else ref["A"]),
    )
    if not with_d:
        ref["D"] = None
    ker = {key: v.clone() if v is not None else None for key, v in ref.items()}
    kw = {"heads": heads, "groups": groups, "conv_silu": silu, "x_over_dt": x_over_dt, "gate": gate}
    return ref, ker, {**kw, "dt_mode": dt_mode, "a_mode": a_mode}


@needs_interpreter_or_gpu
@pytest.mark.parametrize("case", CASES)
def test_kernel_equals_reference(case):
    ref, ker, kw = _case(case)
    want = ds.decode_step_reference(**ref, **kw)
    got = ds.decode_step(**ker, **kw)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ker["state"], ref["state"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ker["conv_state"], ref["conv_state"], atol=0, rtol=0)  # a shift: exact


def test_reference_equals_the_mixer_step():
    """The reference is the mixers' eager step: same conv window shift, state and gated output (SSD with its gate)."""
    m = student(("ssd",), ssd_conv_init="random", ssd_conv_activation="silu", ssd_gate_activation="silu")
    mixer = m.model.layers[0].mixer
    u = torch.randn(2, 1, 32)
    cache = MohawkCache()
    with torch.no_grad():
        mixer(torch.randn(2, 5, 32), cache=cache)
        conv0, state0 = (t.clone() for t in cache.get_state(0))
        z, xbc, dt = mixer._project(u)
        want = mixer(u, cache=cache)
        conv, state = conv0.clone(), state0.clone()
        g = ds.decode_step_reference(
            xbc[:, 0], conv, mixer.conv1d.weight[:, 0], mixer.conv1d.bias, dt[:, 0], mixer.A(), mixer.D, state,
            z[:, 0], heads=mixer.num_heads, groups=mixer.num_groups, conv_silu=True, gate="mul_silu",
        )  # fmt: skip
        got = mixer._finish_gated(g.flatten(-2)[:, None])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, cache.get_state(0)[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv, cache.get_state(0)[0], atol=0, rtol=0)


def _decode(m, ids, nxt, monkeypatch, choice: str):
    """Logits (batch, steps, vocab) of ``m`` decoding the tokens ``nxt`` (batch, steps) one at a time after the
    prompt ``ids``, eagerly (no CUDA graph), with the decode step chosen by MOHAWK_DECODE_KERNEL=``choice``."""
    monkeypatch.setenv("MOHAWK_DECODE_KERNEL", choice)
    m.config.decode_cuda_graph = False
    cache = MohawkCache()
    with torch.no_grad():
        m(ids, past_key_values=cache, use_cache=True)
        return torch.cat([m(t[:, None], past_key_values=cache, use_cache=True).logits for t in nxt.T], 1)


@needs_interpreter_or_gpu
@pytest.mark.parametrize(
    "mixers,kw",
    [
        (("ssd", "attention", "ssd"), {"ssd_conv_activation": "silu", "ssd_gate_activation": "silu"}),
        (("mamba2", "mamba2"), {"ssd_num_groups": 2}),
        (("discrete_mamba2", "linear_attention"), {"ssd_norm": True}),
        (("discrete_mamba2_cab9fe3", "discrete_mamba2_cab9fe3"), {"ssd_norm": True}),
    ],
)
def test_students_decode_the_same_through_the_kernel(monkeypatch, mixers, kw):
    """Every SSD-family mixer's one-token step through the kernel gives the eager step's logits."""
    m = student(mixers, ssd_conv_init="random", **kw).to(DEVICE)
    ids, nxt = torch.randint(0, 64, (2, 7), device=DEVICE), torch.randint(0, 64, (2, 4), device=DEVICE)
    calls = []
    fused = type(m.model.layers[0].mixer)._forward_fused

    want = _decode(m, ids, nxt, monkeypatch, "torch")
    monkeypatch.setattr(
        type(m.model.layers[0].mixer), "_forward_fused", lambda *a: calls.append(1) or fused(*a), raising=True
    )
    got = _decode(m, ids, nxt, monkeypatch, "triton")
    cls = type(m.model.layers[0].mixer)
    assert len(calls) == nxt.shape[1] * sum(isinstance(x.mixer, cls) for x in m.model.layers)  # kernel at every step
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


@needs_interpreter_or_gpu
def test_head_level_hybrid_decodes_the_same_through_the_kernel(monkeypatch):
    """A heads layer's SSD part takes the fused step too (its sub-config has fewer heads and B/C groups): the kernel
    runs for it at every step, beside its attention part's KV cache, and the logits equal the eager step's. Catches a
    kernel launched with the whole layer's head count, or a heads layer that silently skips the kernel."""
    from mohawk.mixers import SSDMixer

    m = student(("heads", "attention", "ssd"), attention_groups=[[1], [], []], ssd_conv_init="random").to(DEVICE)
    ids, nxt = torch.randint(0, 64, (2, 7), device=DEVICE), torch.randint(0, 64, (2, 4), device=DEVICE)
    calls = []
    fused = SSDMixer._forward_fused

    want = _decode(m, ids, nxt, monkeypatch, "torch")
    monkeypatch.setattr(SSDMixer, "_forward_fused", lambda *a: calls.append(a[0].num_heads) or fused(*a))
    got = _decode(m, ids, nxt, monkeypatch, "triton")
    assert calls == [2, 4] * nxt.shape[1]  # the heads layer's 2 SSD heads, then the plain layer's 4, every step
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_kernel_choice(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.setenv("MOHAWK_DECODE_KERNEL", "auto")
    with torch.no_grad():
        assert not ds.use_decode_kernel(x)  # CPU: the eager step unless asked
        monkeypatch.setenv("MOHAWK_DECODE_KERNEL", "triton")
        assert ds.use_decode_kernel(x)
    assert not ds.use_decode_kernel(x)  # gradients on: never (no backward)
    monkeypatch.setenv("MOHAWK_DECODE_KERNEL", "fast")
    with pytest.raises(ValueError, match="MOHAWK_DECODE_KERNEL"), torch.no_grad():
        ds.use_decode_kernel(x)


# decode_step_kernel's runtime arguments and their Triton types (tests/utils.hopper_ptx), SmolLM2-135M's sizes
STEP_ARGS = dict(
    xbc_ptr="*bf16", s_xb="i32", conv_ptr="*bf16", s_cb="i32", s_cc="i32", s_ck="i32", w_ptr="*bf16",
    cb_ptr="*bf16", dt_ptr="*bf16", s_dtb="i32", dtb_ptr="*fp32", A_ptr="*fp32", D_ptr="*fp32", st_ptr="*fp32",
    s_sb="i32", s_sh="i32", s_sp="i32", z_ptr="*bf16", s_zb="i32", y_ptr="*bf16", s_yb="i32", P="i32", N="i32",
    D_INNER="i32", GN="i32",
)  # fmt: skip


def step_constexprs(**kw) -> dict:
    """decode_step_kernel's constexprs for SmolLM2-135M's SSD (9 heads a group, 64 x 64 state, a 4-wide conv)."""
    base = dict(HPG=1, K=4, KB=4, BP=64, BN=64, HAS_BIAS=True, SILU=False, X_OVER_DT=False, HAS_D=True, GATE=1,
                DT_MODE=1, A_MODE=1, PDL=False)  # fmt: skip
    return base | kw


def test_pdl_reaches_the_step(monkeypatch):
    """With PDL on (decode_matvec.decode_pdl), the step launches with Triton's launch_pdl and its PDL constexpr; off,
    with neither; the switch is asked with the batch; ``pdl=`` overrides; every launch at STEP_WARPS (8, the sweep's
    best) unless ``num_warps`` says otherwise. (tests/mixers/test_decode_matvec.py compiles it with PDL for an H100.)"""
    log, warps = [], []

    class Launches:
        def __getitem__(self, grid):
            return lambda *args, **kw: (
                log.append((kw["PDL"], kw.get("launch_pdl", False))),
                warps.append(kw["num_warps"]),
            )

    monkeypatch.setattr(ds, "decode_step_kernel", Launches())
    _, ker, kw = _case(CASES[0], device="cpu")
    asked = []
    for on in (True, False):
        monkeypatch.setattr(dm, "decode_pdl", lambda device, batch, on=on: asked.append(batch) or on)
        ds.decode_step(**ker, **kw)
        ds.decode_step(**ker, **kw, pdl=not on)
    assert log == [(True, True), (False, False), (False, False), (True, True)]
    assert asked == [ker["xbc"].shape[0]] * 2  # the switch decides for the step's batch
    ds.decode_step(**ker, **kw, num_warps=2)
    assert ds.STEP_WARPS == 8 and warps == [8, 8, 8, 8, 2]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CASES)
def test_kernel_equals_reference_bf16_on_cuda(case):
    """Compiled on a GPU, bfloat16 activations (float32 state), the sizes of SmolLM2's SSD layers for the first."""
    if case is CASES[0]:
        case = (16, 9, 64, 9, 64, *case[5:])
    ref, ker, kw = _case(case, dtype=torch.bfloat16, device="cuda")
    want = ds.decode_step_reference(**ref, **kw)
    got = ds.decode_step(**ker, **kw)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ker["state"], ref["state"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ker["conv_state"], ref["conv_state"], atol=0, rtol=0)
