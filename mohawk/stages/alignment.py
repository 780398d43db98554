"""Stage 2, hidden-state alignment: each student block, fed the teacher block's input, should give its output.

    loss_l = mean over tokens of || block_teacher,l(u_l) - block_student,l(u_l) ||_2

with u_l the teacher's input to block l (all blocks at once, from one teacher forward). The replacing mixers train;
norms and MLPs are the teacher's, already copied by the weight transfer, and stay frozen here.
"""

from __future__ import annotations

from torch import Tensor

from mohawk.stages.base import Stage


class HiddenStateAlignment(Stage):
    number = 2
    name = "hidden-state alignment"

    def loss(self, batch: Tensor) -> tuple[Tensor, dict]:
        caps = self.adapter.capture(batch, logits=False)
        per_layer = {}
        for i in self.layers:
            out = self.student.model.layers[i](caps.block_inputs[i])
            per_layer[i] = (out.float() - caps.block_outputs[i].float()).norm(dim=-1).mean()
        total = self._total(per_layer, batch.float())
        return total, {"layer_distance": {i: v.detach() for i, v in per_layer.items()}}
