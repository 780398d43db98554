"""SSD equivalence: materialized == chunked == recurrent, values and gradients (the backbone of every fast path)."""

import pytest
import torch

import mohawk
from mohawk.mixers.ssd import ssd_chunked, ssd_materialized, ssd_matrix, ssd_step


def inputs(b=2, L=64, h=4, p=8, g=2, n=6, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, p, generator=gen, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(b, L, h, generator=gen, dtype=dtype) - 1)
    A = -torch.rand(h, generator=gen, dtype=dtype) * 2 - 0.1
    B = torch.randn(b, L, g, n, generator=gen, dtype=dtype)
    C = torch.randn(b, L, g, n, generator=gen, dtype=dtype)
    D = torch.randn(h, generator=gen, dtype=dtype)
    return x, dt, A, B, C, D


def recurrent(x, dt, A, B, C, D, state=None):
    b, L, h, p = x.shape
    state = torch.zeros(b, h, p, B.shape[-1], dtype=torch.float32) if state is None else state
    ys = []
    for t in range(L):
        y, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state, D)
        ys.append(y)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("L", [1, 7, 64, 100, 257])
@pytest.mark.parametrize("chunk", [1, 16, 64])
def test_chunked_equals_materialized(L, chunk):
    x, dt, A, B, C, D = inputs(L=L, dtype=torch.float32)
    ref = ssd_materialized(x, dt, A, B, C, D)
    y = ssd_chunked(x, dt, A, B, C, D, chunk_size=chunk)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("L", [1, 7, 100])
def test_recurrent_equals_materialized(L):
    x, dt, A, B, C, D = inputs(L=L, dtype=torch.float32)
    ref = ssd_materialized(x, dt, A, B, C, D)
    y, state = recurrent(x, dt, A, B, C, D)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    _, final = ssd_chunked(x, dt, A, B, C, D, chunk_size=16, return_final_state=True)
    torch.testing.assert_close(final, state, atol=1e-5, rtol=1e-5)


def test_initial_state_splits_a_sequence():
    """Running [0, L) in two halves, carrying the state, equals one pass."""
    x, dt, A, B, C, D = inputs(L=90, dtype=torch.float32)
    full, final = ssd_chunked(x, dt, A, B, C, D, chunk_size=16, return_final_state=True)
    y1, s1 = ssd_chunked(x[:, :37], dt[:, :37], A, B[:, :37], C[:, :37], D, chunk_size=16, return_final_state=True)
    y2, s2 = ssd_chunked(
        x[:, 37:], dt[:, 37:], A, B[:, 37:], C[:, 37:], D, chunk_size=16, initial_state=s1, return_final_state=True
    )
    torch.testing.assert_close(torch.cat([y1, y2], 1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s2, final, atol=1e-5, rtol=1e-5)


def test_matrix_definition():
    """M[t, s] = C_t . B_s * prod_{r=s+1..t} a_r * dt_s, entry by entry, groups shared by consecutive heads."""
    x, dt, A, B, C, D = inputs(b=1, L=6, h=4, g=2, dtype=torch.float64)
    M = ssd_matrix(dt, A, B, C)
    a = torch.exp(dt * A)  # (1, L, h)
    for head in range(4):
        grp = head // 2
        for t in range(6):
            for s in range(6):
                want = 0.0
                if s <= t:
                    want = (C[0, t, grp] @ B[0, s, grp]) * torch.prod(a[0, s + 1 : t + 1, head]) * dt[0, s, head]
                assert abs(M[0, head, t, s].item() - float(want)) < 1e-10


def test_gradients_agree():
    args = [t.float().requires_grad_(True) for t in inputs(L=50, dtype=torch.float64)]
    ref = ssd_materialized(*args)
    g_ref = torch.autograd.grad((ref * torch.cos(ref)).sum(), args)
    y = ssd_chunked(*args, chunk_size=16)
    g = torch.autograd.grad((y * torch.cos(y)).sum(), args)
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_public_function_and_long_sequence():
    """mohawk.ssd on CPU takes the chunked path; L = 8192 runs without an L x L matrix (O(L) memory)."""
    x, dt, A, B, C, D = inputs(b=1, L=8192, h=2, p=4, g=1, n=4, dtype=torch.float32)
    y, final = mohawk.ssd(x, dt, A, B, C, D, chunk_size=64, return_final_state=True)
    assert y.shape == x.shape and final.shape == (1, 2, 4, 4)
    assert torch.isfinite(y).all()
    # the last 100 outputs agree with the reference run on the tail, started from the carried state
    _, s = mohawk.ssd(x[:, :8092], dt[:, :8092], A, B[:, :8092], C[:, :8092], D, return_final_state=True)
    tail, _ = recurrent(x[:, 8092:], dt[:, 8092:], A, B[:, 8092:], C[:, 8092:], D, state=s)
    torch.testing.assert_close(y[:, 8092:], tail, atol=1e-4, rtol=1e-4)
