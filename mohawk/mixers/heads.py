"""A head-level hybrid (``heads``): inside one layer, the teacher's KV groups listed in
``config.attention_groups[layer]`` stay softmax attention and the other heads are a student family
(``config.heads_family``, SSD by default).

The layer's query heads (h = kv * group_size; query head j reads KV group j // group_size) split in two parts, each an
unchanged mixer over a config with fewer heads: ``attention`` (an Attention over the kept groups' query and KV heads)
and ``student`` (the family over the remaining query heads). The output is the sum of their output projections (the
teacher's o_proj columns of their heads; o_proj's bias lives in the attention part when there is one), which is o_proj
over the concatenated heads. ``materialize`` and ``value_stream`` give all h heads in the teacher's order.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from mohawk.mixers.attention import Attention


def group_heads(groups, group_size: int) -> list[int]:
    """The query heads of KV ``groups``, in order: group g holds heads g * group_size .. (g + 1) * group_size - 1."""
    return [g * group_size + j for g in groups for j in range(group_size)]


def part_config(config, groups: list[int], attention: bool):
    """``config`` reduced to the query heads of KV ``groups`` (B/C groups of the family scaled alike); the student part
    (``attention`` False) of a layer that also keeps attention carries no output bias (it is added once)."""
    h, kv = config.num_attention_heads, config.num_key_value_heads
    heads = len(groups) * (h // kv)
    sub = copy.copy(config)
    sub.num_attention_heads, sub.num_key_value_heads = heads, len(groups)
    if (config.ssd_num_groups * heads) % h:
        raise ValueError(f"ssd_num_groups={config.ssd_num_groups} does not split over {len(groups)} of {kv} KV groups")
    sub.ssd_num_groups = config.ssd_num_groups * heads // h
    if not attention and len(groups) < kv:
        sub.attention_out_bias = False
    return sub


class HeadsMixer(nn.Module):
    """Attention over some KV groups, a student family over the other heads. u (batch, L, hidden) -> same.

    ``attention`` / ``student``: the two parts (None where the layer keeps all or none of its groups);
    ``attention_heads`` / ``student_heads``: the teacher's query heads each part computes."""

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        from mohawk.mixers import MIXERS

        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        kv = config.num_key_value_heads
        kept = sorted(config.attention_groups[layer_idx])
        rest = [g for g in range(kv) if g not in kept]
        size = self.num_heads // kv
        self.attention_heads, self.student_heads = group_heads(kept, size), group_heads(rest, size)
        self.attention: Any = Attention(part_config(config, kept, True), layer_idx) if kept else None
        family = MIXERS[config.heads_family]
        self.student: Any = family(part_config(config, rest, False), layer_idx) if rest else None
        order = torch.tensor(self.attention_heads + self.student_heads).argsort()
        self.register_buffer("order", order, persistent=False)  # concatenated parts -> the teacher's head order

    def _parts(self) -> list[Any]:  # the mixers, each keeping the contract
        return [p for p in (self.attention, self.student) if p is not None]

    def _join(self, tensors: list[Tensor]) -> Tensor:
        """Per-part (batch, part heads, ...) -> (batch, heads, ...) in the teacher's head order."""
        return torch.cat(tensors, dim=1).index_select(1, cast(Tensor, self.order))

    def materialize(self, u: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """Mixing matrices of all heads, float32 (batch, heads, L, L): the attention part's exact."""
        return self._join([p.materialize(u, position_ids=position_ids) for p in self._parts()])

    def matrix_factors(self, u: Tensor, position_ids: Tensor | None = None) -> list:
        """Each part's factors, for :meth:`matrix_rows`."""
        if self.attention is None:
            return [self.student.matrix_factors(u)]
        rest = [self.student.matrix_factors(u)] if self.student is not None else []
        return [self.attention.matrix_factors(u, position_ids), *rest]

    def matrix_rows(self, factors, r0: int, r1: int) -> Tensor:
        """Rows r0..r1-1 of ``materialize(u)`` over columns 0..r1-1 (batch, heads, r1 - r0, r1)."""
        return self._join([p.matrix_rows(f, r0, r1) for p, f in zip(self._parts(), factors, strict=True)])

    def value_stream(self, u: Tensor) -> Tensor:
        """(batch, heads, L, head_dim): what ``materialize(u)`` multiplies, head for head."""
        return self._join([p.value_stream(u) for p in self._parts()])

    def forward(self, u: Tensor, position_ids: Tensor | None = None, cache=None, **_) -> Tensor:
        """u (batch, L, hidden) -> (batch, L, hidden); with ``cache`` the attention part keeps its KV and the student
        part its state, both under this layer's index (MohawkCache's kv and ssm)."""
        return sum(p(u, position_ids=position_ids, cache=cache) for p in self._parts())


class Replaced(NamedTuple):
    """The part of a layer's mixer that replaces attention: ``module`` (None: nothing is replaced), the teacher's
    query ``heads`` it computes (None: all) and its parameters' name ``prefix`` under the mixer."""

    module: Any  # a mixer, or None
    heads: list[int] | None
    prefix: str


def select_heads(A: Tensor, heads: list[int] | None) -> Tensor:
    """The teacher's matrices (batch, heads, ...) of the query ``heads`` a replaced part computes (None: all)."""
    return A if heads is None else A[:, heads]


def replaced_part(mixer: nn.Module) -> Replaced:
    """What stages 1 and 2 fit of ``mixer``: a head-level hybrid's student part, any other replacing mixer whole."""
    if isinstance(mixer, HeadsMixer):
        return Replaced(mixer.student, mixer.student_heads, "student.")
    return Replaced(mixer, None, "")
