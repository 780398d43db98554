"""Stage 1, matrix orientation: fit each student mixer's matrix to the teacher's attention matrix on the same input.

    loss_l = mean over (batch, heads) of || A_teacher,l(u_l) - M_student,l(u_l) ||_F

u_l is the teacher's hidden state entering layer l's attention (after its norm); one teacher forward feeds all layers;
only the replacing mixers' parameters train.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mohawk.stages.base import Stage


def frobenius_distance(A: Tensor, M: Tensor) -> Tensor:
    """|| A - M ||_F over the last two dims: (batch, heads, L, L) x2 -> (batch, heads)."""
    return torch.linalg.matrix_norm(A.float() - M.float(), ord="fro")


class MatrixOrientation(Stage):
    number = 1
    name = "matrix orientation"

    def loss(self, batch: Tensor) -> tuple[Tensor, dict]:
        caps = self.adapter.capture(batch, logits=False)
        per_layer = {}
        for i in self.layers:
            u = caps.mixer_inputs[i]
            with torch.no_grad():
                A = self.adapter.attention(i).materialize(u)
            M = self.student.model.layers[i].mixer.materialize(u)
            per_layer[i] = frobenius_distance(A, M).mean()
        total = self._total(per_layer, batch.float())
        return total, {"layer_distance": {i: float(v.detach()) for i, v in per_layer.items()}}
