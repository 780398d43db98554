"""The retrieval probe behind --placement retrieval: the induction score, and a planted induction head ranked first."""

from __future__ import annotations

import torch

from mohawk.evaluation.retrieval import (
    induction_score,
    probe_layers,
    repeated_random_tokens,
    retrieval_heads,
    retrieval_layers,
)
from tests.utils import tiny_teacher


def induction_matrix(n: int) -> torch.Tensor:
    """(1, 1, 2n, 2n): causal attention that, from each position t >= n, puts all its weight on t - n + 1, and is
    uniform over the prefix elsewhere."""
    a = torch.tril(torch.ones(2 * n, 2 * n))
    a = a / a.sum(-1, keepdim=True)
    for t in range(n, 2 * n):
        a[t] = 0
        a[t, t - n + 1] = 1
    return a[None, None]


def test_induction_score_is_one_for_an_induction_head_and_small_otherwise():
    n = 32
    perfect, uniform = induction_matrix(n), torch.tril(torch.ones(2 * n, 2 * n))
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]
    previous = torch.zeros(1, 1, 2 * n, 2 * n)  # the previous-token head: t -> t - 1, not the induction target
    previous[0, 0, torch.arange(1, 2 * n), torch.arange(0, 2 * n - 1)] = 1
    assert induction_score(perfect, n).item() == 1.0
    assert induction_score(uniform, n).item() < 0.05 and induction_score(previous, n).item() == 0.0


def test_repeated_random_tokens_repeat_once_and_are_seeded():
    ids = repeated_random_tokens(100, 16, 3, seed=1, low=10)
    assert ids.shape == (3, 32) and torch.equal(ids[:, :16], ids[:, 16:]) and ids.min() >= 10
    assert torch.equal(ids, repeated_random_tokens(100, 16, 3, seed=1, low=10))
    assert not torch.equal(ids, repeated_random_tokens(100, 16, 3, seed=2, low=10))


def test_the_probe_ranks_a_planted_induction_head_first(monkeypatch):
    from mohawk.teachers import adapter_for

    adapter = adapter_for(tiny_teacher("llama"))
    real = adapter.attention

    class Planted(torch.nn.Module):
        """Layer 1's attention with head 2 replaced by an induction head."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def materialize(self, u):
            a = self.inner.materialize(u)
            n = u.shape[1] // 2
            a[:, 2] = induction_matrix(n)[0, 0]
            return a

    monkeypatch.setattr(adapter, "attention", lambda i: Planted(real(i)) if i == 1 else real(i))
    probe = probe_layers(adapter, n=24, batch=2)
    assert probe["heads"][1][2] == 1.0 and max(probe["heads"][0] + probe["heads"][2]) < 0.5
    assert retrieval_layers(probe, 1) == [1] and 1 in retrieval_layers(probe, 2)
    assert retrieval_layers({"layers": {0: 0.3, 1: 0.9, 2: 0.3}}, 2) == [0, 1]  # a tie goes to the earlier layer
    # head-level: query head 2 reads KV group 1 (2 query heads per group), ranked first of the 6 groups
    assert retrieval_heads(probe, 1, 2) == {1: [1]}
    assert sum(map(len, retrieval_heads(probe, 4, 2).values())) == 4 and 1 in retrieval_heads(probe, 4, 2)[1]


def test_retrieval_heads_score_a_group_by_its_best_head():
    """Catches a group scored by its mean head or by the wrong heads (query head j reads group j // size), and
    ties broken other than by the earlier layer, then group."""
    probe = {"heads": {0: [0.1, 0.2, 0.3, 0.1], 1: [0.05, 0.6, 0.2, 0.2], 2: [0.3, 0.0, 0.0, 0.3]}}
    assert retrieval_heads(probe, 1, 2) == {1: [0]}  # best head 0.6, though group 1's mean is higher
    assert retrieval_heads(probe, 3, 2) == {0: [1], 1: [0], 2: [0]}  # 0.3 three ways: layer 0, then layer 2 group 0
    assert retrieval_heads(probe, 6, 2) == {0: [0, 1], 1: [0, 1], 2: [0, 1]}
