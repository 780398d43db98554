"""The two Mamba-2 mixers: ``mamba2`` (transformers' BambaMixer, exactly) and ``discrete_mamba2`` (Phi-Mamba's):
materialized == chunked scan == recurrent steps == a cached prompt fed in pieces; materialize @ value == forward.
The discrete mixer's equations against the official code: tests/mixers/test_discrete_mamba2.py."""

import pytest
import torch

from mohawk.mixers import DiscreteMamba2Mixer, Mamba2Mixer
from mohawk.models.cache import MohawkCache
from tests.utils import tiny_mixer as make

MIXERS = [Mamba2Mixer, DiscreteMamba2Mixer]


def _y(mixer, u):
    """The mixer's SSD output (b, L, heads, head_dim), before gate, norm and out_proj."""
    z, xbc, dt = mixer._project(u)
    x, B, C = mixer._split(mixer._conv(xbc))
    return mixer._scan(x, dt, B, C, return_final_state=False)


@pytest.mark.parametrize("cls", MIXERS)
@pytest.mark.parametrize("groups", [None, 2])
def test_materialize_times_value_is_the_scan(cls, groups):
    m = make(cls, ssd_num_groups=groups)
    u = torch.randn(2, 21, 32)
    with torch.no_grad():
        M = m.materialize(u)
        assert M.shape == (2, 4, 21, 21) and (M.triu(1) == 0).all()
        y = torch.einsum("bhts,bhsp->bthp", M, m.value_stream(u))
        torch.testing.assert_close(y, _y(m, u), atol=1e-5, rtol=1e-5)
        factors = m.matrix_factors(u)
        torch.testing.assert_close(m.matrix_rows(factors, 7, 15), M[:, :, 7:15, :15], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", MIXERS)
def test_recurrent_and_pieces_equal_one_pass(cls):
    m = make(cls)
    u = torch.randn(2, 19, 32)
    with torch.no_grad():
        full = m(u)
        cache = MohawkCache()
        steps = []
        for t in range(19):
            steps.append(m(u[:, t : t + 1], cache=cache))
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
        cache = MohawkCache()
        pieces = [m(u[:, a:b], cache=cache) for a, b in ((0, 5), (5, 6), (6, 19))]
        torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-4)


def test_mamba2_is_bambas_mixer():
    """Same weights in transformers' BambaMixer (its torch path): the same outputs, in one pass and decoding."""
    from transformers import BambaConfig
    from transformers.models.bamba.modeling_bamba import BambaMixer

    m = make(Mamba2Mixer, ssd_num_groups=2)
    bc = BambaConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        mamba_n_heads=4,
        mamba_d_head=8,
        mamba_n_groups=2,
        mamba_d_state=6,
        mamba_d_conv=4,
        mamba_expand=1,
        mamba_chunk_size=8,
        mamba_proj_bias=True,
        rms_norm_eps=m.norm.eps,
        intermediate_size=64,
        vocab_size=50,
    )
    ref = BambaMixer(bc, layer_idx=0).eval()
    with torch.no_grad():
        for name in (
            "in_proj.weight",
            "in_proj.bias",
            "conv1d.weight",
            "conv1d.bias",
            "dt_bias",
            "A_log",
            "D",
            "norm.weight",
            "out_proj.weight",
        ):
            ref.get_parameter(name).copy_(m.get_parameter(name))
        ref.out_proj.bias.zero_()
        u = torch.randn(2, 19, 32)
        torch.testing.assert_close(m(u), ref(u), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls", MIXERS)
def test_gradients_reach_every_parameter(cls):
    m = make(cls).train()
    m(torch.randn(2, 9, 32)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cls", MIXERS)
def test_triton_path_matches_the_reference(cls, monkeypatch):
    """bf16 on the GPU through mohawk's Triton scan vs the float32 PyTorch scan: output and every gradient."""
    m = make(cls, ssd_chunk_size=64).cuda()
    u = torch.randn(2, 300, 32, device="cuda")
    outs = []
    for kernel, dtype in (("triton", torch.bfloat16), ("torch", torch.float32)):
        monkeypatch.setenv("MOHAWK_SSD_KERNEL", kernel)
        m.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = m(u)
        y.float().square().mean().backward()
        outs.append((y.float(), [p.grad.float().clone() for p in m.parameters()]))
    (yk, gk), (yr, gr) = outs
    assert (yk - yr).abs().max() / yr.abs().max() < 3e-2
    for a, b in zip(gk, gr, strict=True):
        assert (a - b).abs().max() / b.abs().max().clamp_min(1e-12) < 5e-2
