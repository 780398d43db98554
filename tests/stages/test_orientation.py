"""The tiled stage-1 loss equals the naive one (value and gradients) for every student family, and each mixer's
row blocks are exactly the rows of its materialized matrix."""

import pytest
import torch

import mohawk
from mohawk.mixers import STUDENT_MIXERS
from mohawk.stages import MatrixOrientation
from mohawk.stages.orientation import frobenius_distance, tiled_frobenius_distance
from mohawk.teachers import adapter_for
from tests.utils import VOCAB, tiny_teacher


def _setup(mixer: str, family: str = "llama"):
    torch.manual_seed(0)
    adapter = adapter_for(tiny_teacher(family))
    student = mohawk.from_teacher(adapter, mixer=mixer)
    u = torch.randn(2, 29, adapter.model.config.hidden_size)
    return adapter, student, u


@pytest.mark.parametrize("mixer", STUDENT_MIXERS)
def test_row_blocks_are_rows_of_the_matrix(mixer):
    adapter, student, u = _setup(mixer)
    for module in (adapter.attention(0), student.model.layers[0].mixer):
        with torch.no_grad():
            full, factors = module.materialize(u), module.matrix_factors(u)
            for r0, r1 in [(0, 7), (7, 14), (14, 29), (28, 29)]:
                torch.testing.assert_close(
                    module.matrix_rows(factors, r0, r1), full[:, :, r0:r1, :r1], atol=1e-5, rtol=1e-5
                )


@pytest.mark.parametrize("mixer", STUDENT_MIXERS)
@pytest.mark.parametrize("tile", [1, 8, 13])
def test_tiled_distance_equals_naive_with_gradients(mixer, tile):
    adapter, student, u = _setup(mixer)
    teacher, layer = adapter.attention(1), student.model.layers[1].mixer
    with torch.no_grad():
        A = teacher.materialize(u)
    naive = frobenius_distance(A, layer.materialize(u)).mean()
    g_naive = torch.autograd.grad(naive, list(layer.parameters()), allow_unused=True)
    tiled = tiled_frobenius_distance(teacher, layer, u, tile).mean()
    g_tiled = torch.autograd.grad(tiled, list(layer.parameters()), allow_unused=True)
    torch.testing.assert_close(tiled, naive, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_naive, g_tiled, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_stage_loss_with_tiles_matches_whole_matrices():
    adapter, student, _ = _setup("ssd", "phi")
    batch = torch.randint(0, VOCAB, (2, 20))
    naive, m_naive = MatrixOrientation(student, adapter).loss(batch)
    tiled, m_tiled = MatrixOrientation(student, adapter, tile=6).loss(batch)
    torch.testing.assert_close(tiled, naive, atol=1e-5, rtol=1e-5)
    assert m_tiled["layer_distance"].keys() == m_naive["layer_distance"].keys()


def test_tiled_stage1_of_a_head_level_hybrid_equals_whole_matrices():
    """Catches the tiled path comparing the student part with the wrong teacher heads: --stage1-tile gives the loss
    and gradients of whole matrices for a layer keeping some heads as attention."""
    torch.manual_seed(0)
    adapter = adapter_for(tiny_teacher("llama"))
    student = mohawk.from_teacher(adapter, attention_heads={0: [1], 2: [0]})
    batch = torch.randint(0, VOCAB, (2, 21))
    params = [p for _, p in MatrixOrientation(student, adapter).parameters()]
    results = []
    for tile in (0, 8):
        loss, _ = MatrixOrientation(student, adapter, tile=tile).loss(batch)
        results.append((loss, torch.autograd.grad(loss, params, allow_unused=True)))
    (whole, g_whole), (tiled, g_tiled) = results
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_whole, g_tiled, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
