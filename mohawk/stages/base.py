"""What the stages share: the student, the teacher's adapter, and which layers are being distilled."""

from __future__ import annotations

import torch
from torch import Tensor


class Stage:
    number = 0
    name = ""

    def __init__(self, student, adapter, cfg=None):
        self.student, self.adapter, self.cfg = student, adapter, cfg
        self.layers = [i for i, kind in enumerate(student.config.mixers) if kind != "attention"]

    def mixer_parameters(self) -> list[tuple[str, Tensor]]:
        """Parameters of the mixers that replace attention (stages 1 and 2 train only these)."""
        return [(f"model.layers.{i}.mixer.{n}", p) for i in self.layers
                for n, p in self.student.model.layers[i].mixer.named_parameters()]

    def parameters(self) -> list[tuple[str, Tensor]]:
        return self.mixer_parameters()

    def loss(self, batch: Tensor) -> tuple[Tensor, dict]:
        raise NotImplementedError

    @staticmethod
    def _total(per_layer: dict[int, Tensor], like: Tensor) -> Tensor:
        # Each layer's parameters only receive gradient from their own term, so a plain sum trains all layers at once.
        return torch.stack(list(per_layer.values())).sum() if per_layer else like.new_zeros((), requires_grad=True)
