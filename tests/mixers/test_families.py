"""The other matrix families (general diagonal SSM, causal linear attention, Toeplitz): reference == fast paths ==
recurrent decoding, and each layer's materialize(u) @ value_stream(u) == its output before out_proj."""

import pytest
import torch

from mohawk.mixers import (
    LinearAttentionMixer,
    SSMMixer,
    ToeplitzMixer,
    linear_attention_matrix,
    ssd_matrix,
    ssm_chunked,
    ssm_materialized,
    ssm_matrix,
    ssm_step,
    toeplitz_conv,
    toeplitz_matrix,
)
from mohawk.models import MohawkCache
from tests.utils import before_out_proj, tiny_mixer_config


def ssm_inputs(b=2, L=23, h=4, p=3, g=2, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, p, generator=gen, dtype=torch.float64)
    dt = torch.nn.functional.softplus(torch.randn(b, L, h, generator=gen, dtype=torch.float64))
    A = -torch.rand(h, n, generator=gen, dtype=torch.float64) * 2
    B = torch.randn(b, L, g, n, generator=gen, dtype=torch.float64)
    C = torch.randn(b, L, g, n, generator=gen, dtype=torch.float64)
    D = torch.randn(h, generator=gen, dtype=torch.float64)
    return x, dt, A, B, C, D


@pytest.mark.parametrize("L,chunk", [(1, 4), (23, 4), (23, 16), (64, 16)])
def test_ssm_chunked_equals_materialized(L, chunk):
    x, dt, A, B, C, D = ssm_inputs(L=L)
    ref = ssm_materialized(x, dt, A, B, C, D)
    y, state = ssm_chunked(x, dt, A, B, C, D, chunk_size=chunk, return_final_state=True)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
    # the final state continues the sequence exactly like the recurrence
    s = torch.zeros(2, 4, 3, 5, dtype=torch.float64)
    ys = []
    for t in range(L):
        yt, s = ssm_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], s, D)
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state, s.float(), atol=1e-6, rtol=1e-6)


def test_ssm_with_equal_channels_is_ssd():
    x, dt, A, B, C, _ = ssm_inputs()
    A_ssd = A[:, 0]
    torch.testing.assert_close(ssm_matrix(dt, A_ssd[:, None].expand_as(A), B, C), ssd_matrix(dt, A_ssd, B, C))


def test_ssm_chunked_initial_state_splits_the_sequence():
    x, dt, A, B, C, D = ssm_inputs(L=30)
    full = ssm_chunked(x, dt, A, B, C, D, chunk_size=8)
    a, s = ssm_chunked(x[:, :13], dt[:, :13], A, B[:, :13], C[:, :13], D, chunk_size=8, return_final_state=True)
    b = ssm_chunked(x[:, 13:], dt[:, 13:], A, B[:, 13:], C[:, 13:], D, chunk_size=8, initial_state=s)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-6, rtol=1e-6)


def test_linear_attention_matrix_is_causal_low_rank():
    _, _, _, B, C, _ = ssm_inputs(h=2, g=2, n=3, L=12)
    M = linear_attention_matrix(B, C, 2)
    assert (M.triu(1) == 0).all()
    full = torch.einsum("bthn,bshn->bhts", C, B)
    assert torch.linalg.matrix_rank(full[0, 0]) == 3
    torch.testing.assert_close(M, full.tril())


def test_toeplitz_fft_equals_matrix():
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(2, 3, 37, generator=gen)
    x = torch.randn(2, 3, 37, 4, generator=gen)
    M = toeplitz_matrix(c)
    assert M[0, 0, 10, 7] == c[0, 0, 3] and M[0, 0, 7, 10] == 0 and (M.diagonal(-5, -2, -1) == c[..., 5:6]).all()
    torch.testing.assert_close(toeplitz_conv(c, x), M @ x, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cls", [SSMMixer, LinearAttentionMixer, ToeplitzMixer])
def test_family_layer_materialize_and_decoding(cls):
    torch.manual_seed(0)
    mixer = cls(tiny_mixer_config(ssd_gate=False, ssd_state_size=6))
    mixer.reset_parameters()
    u = torch.randn(2, 19, 32)
    M = mixer.materialize(u)
    assert M.shape == (2, 4, 19, 19) and (M.triu(1) == 0).all()
    y = (M @ mixer.value_stream(u)).transpose(1, 2).flatten(2)
    torch.testing.assert_close(y, before_out_proj(mixer, u), atol=1e-4, rtol=1e-4)
    full = mixer(u)
    cache = MohawkCache()
    parts = [mixer(u[:, :7], cache=cache)] + [mixer(u[:, t : t + 1], cache=cache) for t in range(7, 19)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)


def test_ssm_blockwise_matrix_equals_the_reference():
    """The layer's materialize path forms no (state, L, L) tensor but gives the reference matrix."""
    from mohawk.mixers.ssm import ssm_matrix_blockwise

    _, dt, A, B, C, _ = ssm_inputs(L=45)
    for block in (8, 32, 64):
        torch.testing.assert_close(
            ssm_matrix_blockwise(dt, A, B, C, block).double(), ssm_matrix(dt, A, B, C), atol=1e-5, rtol=1e-5
        )
