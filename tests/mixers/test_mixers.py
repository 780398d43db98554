"""Every mixer: materialize(u) @ value_stream(u) equals its forward before the output projection."""

import pytest
import torch

from mohawk.mixers import Attention, SSDMixer
from tests.utils import before_out_proj, tiny_mixer_config


@pytest.mark.parametrize("kw", [{}, {"sliding_window": 5}, {"num_key_value_heads": 4, "rotary_dim": 8}])
def test_attention_materialize_matches_forward(kw):
    torch.manual_seed(0)
    mixer = Attention(tiny_mixer_config(**kw))
    u = torch.randn(2, 17, 32)
    M = mixer.materialize(u)
    assert M.shape == (2, 4, 17, 17)
    assert torch.allclose(M.sum(-1), torch.ones(2, 4, 17))
    assert (M.triu(1) == 0).all()
    y = (M @ mixer.value_stream(u)).transpose(1, 2).flatten(2)
    torch.testing.assert_close(y, before_out_proj(mixer, u), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"ssd_num_groups": 2, "ssd_state_size": 5}, {"ssd_conv_init": "random"}])
def test_ssd_materialize_matches_forward(kw):
    torch.manual_seed(0)
    mixer = SSDMixer(tiny_mixer_config(ssd_gate=False, **kw))
    mixer.reset_parameters()
    with torch.no_grad():
        mixer.D.normal_()
    u = torch.randn(2, 19, 32)
    M = mixer.materialize(u)
    assert M.shape == (2, 4, 19, 19) and (M.triu(1) == 0).all()
    y = (M @ mixer.value_stream(u)).transpose(1, 2).flatten(2)
    torch.testing.assert_close(y, before_out_proj(mixer, u), atol=1e-5, rtol=1e-5)


def test_ssd_paper_initialisation():
    """Identity conv (no activation), gate exactly 1, no norm: x, B, C are plain projections and y is ungated."""
    torch.manual_seed(0)
    mixer = SSDMixer(tiny_mixer_config())
    mixer.reset_parameters()
    u = torch.randn(1, 9, 32)
    z, xbc, _ = mixer._project(u)
    torch.testing.assert_close(mixer._conv(xbc), xbc)
    assert torch.equal(z, torch.ones_like(z))
    assert mixer.norm is None
    assert (mixer.A() < 0).all()


def test_ssd_forward_with_cache_equals_full():
    """Prefill + token-by-token decoding through the cache equals one full pass."""
    from mohawk.models import MohawkCache

    torch.manual_seed(0)
    mixer = SSDMixer(tiny_mixer_config(ssd_conv_init="random", ssd_conv_activation="silu", ssd_gate_activation="silu"))
    mixer.reset_parameters()
    u = torch.randn(2, 12, 32)
    full = mixer(u)
    cache = MohawkCache()
    parts = [mixer(u[:, :5], cache=cache)] + [mixer(u[:, t : t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_compiled_conv_path_equals_conv1d(monkeypatch):
    """Inside torch.compile the causal depthwise conv is k shifted multiply-adds (fused by inductor); same values."""
    cfg = tiny_mixer_config(ssd_conv_init="random", ssd_conv_activation="silu")
    mixer = SSDMixer(cfg)
    mixer.reset_parameters()
    with torch.no_grad():
        mixer.conv1d.bias.normal_()
    xbc = torch.randn(2, 13, mixer.conv_dim)
    want = mixer._conv(xbc)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.testing.assert_close(mixer._conv(xbc), want, atol=1e-6, rtol=1e-5)
