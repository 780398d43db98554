"""What log-likelihood averages hide: loss by token position (where SSMs and attention part ways beyond the training
length), passkey retrieval at growing context lengths (the known weak spot of SSM students), greedy continuations."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize "
    "it. I will quiz you about it.\n"
)


@torch.no_grad()
def loss_by_position(model, data: Tensor, batch_size: int = 4, bins: int = 32) -> dict:
    """Mean next-token cross-entropy by position over data (n, L), averaged in ``bins`` equal position bins:
    {"position": [bin centre], "loss": [mean CE]}."""
    device = next(model.parameters()).device
    total = torch.zeros(data.shape[1] - 1, dtype=torch.float64)
    for i in range(0, data.shape[0], batch_size):
        batch = data[i : i + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        ce = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # (b, L - 1)
        total += ce.sum(0).double().cpu()
    per_pos = total / data.shape[0]
    edges = torch.linspace(0, len(per_pos), bins + 1).long()
    return {
        "position": [int((a + b) // 2) + 1 for a, b in zip(edges[:-1], edges[1:], strict=False)],
        "loss": [float(per_pos[a:b].mean()) for a, b in zip(edges[:-1], edges[1:], strict=False) if b > a],
    }


def passkey_prompt(tokenizer, length: int, key: str, depth: float) -> list[int]:
    """A prompt of about ``length`` tokens: filler with "The pass key is KEY." at relative ``depth``, then the
    question; the answer is the next tokens."""
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    question = "What is the pass key? The pass key is"
    fixed = len(tokenizer(INTRO + needle + question, add_special_tokens=False)["input_ids"])
    per_filler = len(tokenizer(FILLER * 8, add_special_tokens=False)["input_ids"]) / 8
    n = max(0, round((length - fixed) / per_filler))
    before = int(n * depth)
    text = INTRO + FILLER * before + needle + FILLER * (n - before) + question
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def passkey_accuracy(model, tokenizer, lengths: list[int], trials: int = 5, seed: int = 0) -> dict:
    """Greedy passkey retrieval: {length: fraction of trials whose 5-digit key appears in the first 8 generated
    tokens}. Keys and depths are seeded, identical for every model."""
    device = next(model.parameters()).device
    out = {}
    for length in lengths:
        rng = random.Random(seed + length)
        hits = 0
        for _ in range(trials):
            key = str(rng.randrange(10000, 100000))
            ids = torch.tensor([passkey_prompt(tokenizer, length, key, rng.random())], device=device)
            gen = model.generate(
                ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id
            )
            hits += key in tokenizer.decode(gen[0, ids.shape[1] :])
        out[length] = hits / trials
    return out


@torch.no_grad()
def continuations(model, tokenizer, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
    """Greedy continuations of each prompt."""
    device = next(model.parameters()).device
    texts = []
    for p in prompts:
        ids = tokenizer(p, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
        gen = model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
        texts.append(tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
    return texts
