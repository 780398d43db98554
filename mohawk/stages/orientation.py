"""Stage 1, matrix orientation: fit each student mixer's matrix to the teacher's attention matrix on the same input.

    loss_l = mean over (batch, heads) of || A_teacher,l(u_l) - M_student,l(u_l) ||_F

u_l is the teacher's hidden state entering layer l's attention (after its norm); one teacher forward feeds all layers;
only the replacing mixers' parameters train. A head-level hybrid (mohawk.mixers.heads) fits its student part to the
teacher's matrices of the heads it computes; the heads it keeps as attention are exact.

With ``stage1_tile`` = T > 0 the squared distance is summed over blocks of T rows, each block of both matrices
built from per-token factors (Q, K; dt, B, C) and recomputed in the backward pass (activation checkpointing), so
memory grows as T x L per layer instead of L x L and stage 1 runs at long sequence lengths. Same loss and gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from mohawk.mixers.heads import replaced_part, select_heads
from mohawk.stages.base import Stage


def frobenius_distance(A: Tensor, M: Tensor) -> Tensor:
    """|| A - M ||_F over the last two dims: (batch, heads, L, L) x2 -> (batch, heads)."""
    return torch.linalg.matrix_norm(A.float() - M.float(), ord="fro")


def _tile_squared_distance(teacher, student, fa, fm, r0: int, r1: int, heads=None) -> Tensor:
    with torch.no_grad():
        A = select_heads(teacher.matrix_rows(fa, r0, r1), heads)
    return (A - student.matrix_rows(fm, r0, r1).float()).square().sum((-2, -1))


def tiled_frobenius_distance(teacher, student, u: Tensor, tile: int, heads: list[int] | None = None) -> Tensor:
    """|| A(u) - M(u) ||_F (batch, heads) for a teacher attention and a student mixer (computing the teacher's query
    ``heads``; None: all), ``tile`` rows at a time; equal to ``frobenius_distance(teacher.materialize(u),
    student.materialize(u))`` without either L x L matrix."""
    with torch.no_grad():
        fa = teacher.matrix_factors(u)
    fm = student.matrix_factors(u)
    L = u.shape[1]
    total: Tensor | float = 0.0
    for r0 in range(0, L, tile):
        r1 = min(L, r0 + tile)
        total = total + checkpoint(_tile_squared_distance, teacher, student, fa, fm, r0, r1, heads, use_reentrant=False)
    return torch.as_tensor(total).sqrt()


class MatrixOrientation(Stage):
    """Stage 1; ``tile`` > 0: the loss over blocks of that many rows (see module docstring)."""

    number = 1
    name = "matrix orientation"
    compilable = False  # it runs no student block, only the mixers' matrices
    partial_gradients = True  # the value and output projections do not shape the matrix

    def __init__(self, student, adapter, tile: int = 0):
        super().__init__(student, adapter)
        self.tile = tile

    def loss(self, batch: Tensor) -> tuple[Tensor, dict]:
        caps = self.adapter.capture(batch, logits=False)
        tile = self.tile
        per_layer = {}
        for i in self.layers:
            u = caps.mixer_inputs[i]
            teacher, (student, heads, _) = self.adapter.attention(i), replaced_part(self.student.model.layers[i].mixer)
            if student is None:
                continue
            if tile and tile < u.shape[1]:
                per_layer[i] = tiled_frobenius_distance(teacher, student, u, tile, heads).mean()
            else:
                with torch.no_grad():
                    A = select_heads(teacher.materialize(u), heads)
                per_layer[i] = frobenius_distance(A, student.materialize(u)).mean()
        total = self._total(per_layer, batch.float())
        return total, {"layer_distance": {i: v.detach() for i, v in per_layer.items()}}
