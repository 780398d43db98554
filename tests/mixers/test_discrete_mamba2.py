"""``discrete_mamba2`` is Phi-Mamba's official layer as it stands (goombalab/phi-mamba b2e405f, the equations of
dd8c3b7): the mixer equals the official equations restated plainly (a loop over tokens) on random inputs and
weights, its matrix equals the official ``materialize_mixer``, and its materialized, chunked and recurrent paths agree.
``discrete_mamba2_cab9fe3`` keeps the first commit's RMSNorm(y + z)."""

import math

import pytest
import torch
import torch.nn.functional as F

from mohawk.mixers import MIXERS, DiscreteMamba2Cab9fe3Mixer, DiscreteMamba2Mixer
from mohawk.mixers.discrete_mamba2 import GATE_ONE
from mohawk.models.cache import MohawkCache
from tests.utils import tiny_mixer as make

FORMS = [DiscreteMamba2Mixer, DiscreteMamba2Cab9fe3Mixer]


def _official(m, u, form="current"):
    """The official layer's forward written out from its code, token by token, with ``m``'s weights:

    xBC, z, A_log = split(in_proj(u), [d_inner + 2 n_qk d_state, d_inner, n_v])   (bias: z's is z_bias)
    xBC = conv1d(xBC) (identity activation);  x, B, C = split(xBC)
    dt = softplus(A_log);  state = exp(dt * -1) state + dt * (x / dt) B^T;  y = state C + D x
    current: out_proj(y * silu(z + z_bias));  cab9fe3: out_proj(RMSNorm(y + z))
    """
    d_inner, n_v, hd = m.d_inner, m.num_heads, m.head_dim
    n_qk, n = m.num_groups, m.state_size
    proj = u @ m.in_proj.weight.T + m.in_proj.bias
    xBC, z, A_log = torch.split(proj, [d_inner + 2 * n_qk * n, d_inner, n_v], dim=-1)
    L = u.shape[1]
    k = m.conv1d.weight.shape[-1]
    padded = F.pad(xBC, (0, 0, k - 1, 0))
    xBC = sum(padded[:, j : j + L] * m.conv1d.weight[:, 0, j] for j in range(k)) + m.conv1d.bias
    x, B, C = torch.split(xBC, [d_inner, n_qk * n, n_qk * n], dim=-1)
    x = x.unflatten(-1, (n_v, hd))
    B, C = B.unflatten(-1, (n_qk, n)), C.unflatten(-1, (n_qk, n))
    dt = F.softplus(A_log)
    state = torch.zeros(u.shape[0], n_v, hd, n)
    ys = []
    for t in range(L):
        for h in range(n_v):
            g = h // (n_v // n_qk)  # mamba_ssm's grouping: consecutive v heads share a qk head
            xin = x[:, t, h] / dt[:, t, h, None]
            state[:, h] = (
                torch.exp(-dt[:, t, h])[:, None, None] * state[:, h]
                + (dt[:, t, h, None] * xin)[:, :, None] * B[:, t, g, None, :]
            )
        y = torch.stack([torch.einsum("bpn,bn->bp", state[:, h], C[:, t, h // (n_v // n_qk)]) for h in range(n_v)], 1)
        ys.append(y + m.D[:, None] * x[:, t])
    y = torch.stack(ys, 1).flatten(-2)
    if form == "current":
        return m.out_proj(y * F.silu(z))
    v = y + z
    return m.out_proj(v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5) * m.norm.weight)


def _official_matrix(m, u):
    """The official ``materialize_mixer``: T[l, s] = C_l . B_s exp(sum_{s<r<=l} -softplus(A_log_r)), D on the
    diagonal (per v head; B and C of its qk head)."""
    s = m.in_proj_slices()
    proj = u @ m.in_proj.weight.T + m.in_proj.bias
    _, B, C = m._split(m._conv(proj[..., s["x"].start : s["C"].stop]))
    la = -F.softplus(proj[..., s["dt"]])  # (b, L, h)
    rep = m.num_heads // m.num_groups
    B, C = B.repeat_interleave(rep, -2), C.repeat_interleave(rep, -2)
    L = u.shape[1]
    T = torch.zeros(u.shape[0], m.num_heads, L, L)
    for t in range(L):
        for j in range(t + 1):
            decay = torch.exp(la[:, j + 1 : t + 1].sum(1))  # (b, h)
            T[:, :, t, j] = (C[:, t] * B[:, j]).sum(-1) * decay + (m.D if j == t else 0)
    return T


@pytest.mark.parametrize("groups", [None, 2])
def test_discrete_mamba2_is_the_official_layer(groups):
    m = make(DiscreteMamba2Mixer, ssd_num_groups=groups)
    assert m.norm is None and list(m.in_proj_slices()) == ["x", "B", "C", "z", "dt"]  # the official row order
    u = torch.randn(2, 13, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(u), _official(m, u), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m.materialize(u), _official_matrix(m, u), atol=1e-5, rtol=1e-4)


def test_cab9fe3_form_is_the_first_commits_layer():
    m = make(DiscreteMamba2Cab9fe3Mixer, ssd_num_groups=2)
    u = torch.randn(2, 11, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(u), _official(m, u, "cab9fe3"), atol=1e-5, rtol=1e-4)
        # the two forms differ only after the scan: same matrix, different outputs
        cur = DiscreteMamba2Mixer(m.config)
        cur.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("norm.")})
        torch.testing.assert_close(cur.materialize(u), m.materialize(u))
        assert (cur(u) - m(u)).abs().max() > 1e-3
    assert MIXERS["discrete_mamba2"] is DiscreteMamba2Mixer
    assert MIXERS["discrete_mamba2_cab9fe3"] is DiscreteMamba2Cab9fe3Mixer


@pytest.mark.parametrize("cls", FORMS)
def test_materialized_chunked_and_recurrent_paths_agree(cls):
    m = make(cls, ssd_num_groups=2, ssd_chunk_size=4)
    u = torch.randn(2, 15, 32)
    with torch.no_grad():
        z, _, _ = m._project(u)
        y = torch.einsum("bhts,bhsp->bthp", m.materialize(u), m.value_stream(u))
        materialized = m._finish(y, z)
        chunked = m(u)
        cache = MohawkCache()
        recurrent = torch.cat([m(u[:, t : t + 1], cache=cache) for t in range(15)], 1)
    torch.testing.assert_close(materialized, chunked, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(recurrent, chunked, atol=1e-5, rtol=1e-4)


def test_attention_init_makes_the_gate_one_and_removes_d():
    torch.manual_seed(0)
    m = DiscreteMamba2Mixer(make(DiscreteMamba2Mixer).config)
    m.reset_parameters()
    assert torch.equal(m.D, torch.ones(4))  # D as the official init
    m.after_attention_init()
    assert math.isclose(F.silu(torch.tensor(GATE_ONE, dtype=torch.float64)).item(), 1.0, abs_tol=1e-12)
    u = torch.randn(1, 9, 32)
    with torch.no_grad():
        z, _, _ = m._project(u)
        torch.testing.assert_close(F.silu(z), torch.ones_like(z))  # the gate passes y through unchanged
        y = torch.einsum("bhts,bhsp->bthp", m.materialize(u), m.value_stream(u)).flatten(-2)
        torch.testing.assert_close(m(u), m.out_proj(y))  # an attention-like mixer: out_proj(M V), no D
    assert (m.D == 0).all()
