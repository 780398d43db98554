"""Which of the teacher's attention layers retrieve: the probe behind ``--placement retrieval``.

An induction head attends, at a token it has seen before, to the token that followed its previous occurrence; it is
what copying from context (passkeys, names in LAMBADA) runs on, and what an SSM finds hardest to imitate. The probe
feeds the teacher sequences of random tokens repeated once, ``[r_1..r_n, r_1..r_n]``, and scores every head by the
attention it puts, from each position ``t`` of the second copy, on position ``t - n + 1`` (the token after the
earlier occurrence of the current one). Random tokens leave nothing to predict but by copying, so the score measures
the copy circuit alone. A layer's score is its best head's: one retrieving head is reason enough to keep the layer
as attention. ``retrieval_heads`` ranks KV groups instead, for head-level hybrids (``--placement retrieval-heads``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def induction_score(attn: Tensor, n: int) -> Tensor:
    """Per head, the mean attention weight on the induction target: attn (batch, heads, 2n, 2n) over sequences made
    of one random run of n tokens repeated once -> (heads,). 1: a perfect induction head; ~1/t: uniform attention."""
    t = torch.arange(n, 2 * n, device=attn.device)
    return attn[:, :, t, t - n + 1].float().mean(dim=(0, 2))


def repeated_random_tokens(vocab_size: int, n: int, batch: int, seed: int = 0, low: int = 0) -> Tensor:
    """(batch, 2n) ids: ``batch`` runs of n uniform random tokens in [low, vocab_size), each repeated once."""
    g = torch.Generator().manual_seed(seed)
    run = torch.randint(low, vocab_size, (batch, n), generator=g)
    return torch.cat([run, run], dim=1)


@torch.no_grad()
def probe_layers(adapter, n: int = 256, batch: int = 4, seed: int = 0) -> dict:
    """The induction score of every head of the teacher behind ``adapter`` (a mohawk TeacherAdapter):
    {"heads": {layer: [score per head]}, "layers": {layer: best head's score}, "n": n, "batch": batch}."""
    p = next(adapter.model.parameters())
    vocab = adapter.model.get_input_embeddings().weight.shape[0]
    # skip the lowest ids, where tokenizers keep their special tokens
    ids = repeated_random_tokens(vocab, n, batch, seed, low=min(vocab // 2, 16)).to(p.device)
    caps = adapter.capture(ids, logits=False)
    heads = {}
    for i in range(adapter.num_layers):
        scores = induction_score(adapter.attention(i).materialize(caps.mixer_inputs[i]), n)
        heads[i] = [round(float(s), 6) for s in scores]
    return {"heads": heads, "layers": {i: max(h) for i, h in heads.items()}, "n": n, "batch": batch}


def retrieval_layers(probe: dict, num: int) -> list[int]:
    """The ``num`` layers with the highest scores of ``probe`` (probe_layers' answer), sorted by index; ties go to
    the earlier layer."""
    ranked = sorted(probe["layers"], key=lambda i: (-probe["layers"][i], i))
    return sorted(ranked[:num])


def retrieval_heads(probe: dict, num: int, group_size: int) -> dict[int, list[int]]:
    """The ``num`` KV groups with the highest scores of ``probe`` over all layers, a group scoring its best query
    head's (query head j reads group j // group_size): {layer: sorted groups}; ties go to the earlier layer, then
    group."""
    scores = {
        (i, g): max(heads[g * group_size : (g + 1) * group_size])
        for i, heads in probe["heads"].items()
        for g in range(len(heads) // group_size)
    }
    chosen: dict[int, list[int]] = {}
    for i, g in sorted(sorted(scores, key=lambda k: (-scores[k], *k))[:num]):
        chosen.setdefault(i, []).append(g)
    return chosen
