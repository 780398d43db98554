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
    edges = torch.linspace(0, len(per_pos), bins + 1).long().tolist()
    spans = [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]  # fewer positions than bins: no empty
    return {
        "position": [(a + b) // 2 + 1 for a, b in spans],
        "loss": [float(per_pos[a:b].mean()) for a, b in spans],
    }


def natural_filler(chars: int = 200_000) -> str:
    """About ``chars`` characters of held-out book text (the bundled corpus's validation books): the natural filler
    of the passkey test, text a model cannot compress into a short repeated pattern."""
    from mohawk.data import ASSETS, CORPORA, iter_documents

    text, files = [], [ASSETS / rel for rel in CORPORA["bundled"][1]]
    n = 0
    for doc in iter_documents(files):
        text.append(doc)
        n += len(doc)
        if n >= chars:
            break
    return "\n\n".join(text)[:chars]


def passkey_prompt(tokenizer, length: int, key: str, depth: float, filler: str = FILLER, offset: int = 0) -> list[int]:
    """The ids of a prompt of about ``length`` tokens: the intro, filler tokens with "The pass key is KEY." at relative
    ``depth`` among them, then the question; the answer (" KEY") is the next tokens. ``filler``: FILLER (repeated) or
    a long natural text whose tokens are taken from ``offset`` on."""

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    intro, needle = enc(INTRO), enc(f" The pass key is {key}. Remember it. {key} is the pass key. ")
    question = enc(" What is the pass key? The pass key is")
    n = max(0, length - len(intro) - len(needle) - len(question))
    if filler == FILLER:  # copies to spare: a copy inside the repetition can take fewer tokens than one alone
        stream = enc(filler * (2 + 2 * n // max(1, len(enc(filler)))))
    else:  # tokenize only about what is needed (a few characters per token), more if that falls short
        stream = enc(filler[offset : offset + 6 * n + 64])
        stream = stream if len(stream) >= n else enc(filler[offset:])
    if len(stream) < n:
        raise ValueError(f"the filler holds {len(stream)} tokens, {n} are needed")
    before = int(n * depth)
    return intro + stream[:before] + needle + stream[before:n] + question


def _compact(text: str) -> str:
    """The answer without white space (tokenizers differ in the spaces they decode between digits)."""
    return "".join(text.split())


def _digits_right(key: str, text: str) -> float:
    """Share of the key's characters that the answer ``text`` reproduces in place (compared left-aligned, without
    white space): "89892" for 88892 scores 0.8."""
    return sum(a == b for a, b in zip(key, _compact(text)[: len(key)], strict=False)) / len(key)  # short: wrong


def _pad_id(model) -> int:
    """The id generate pads finished rows with: the config's pad token, else its end of sequence, else 0."""
    pad = getattr(model.config, "pad_token_id", None)
    return pad if pad is not None else getattr(model.config, "eos_token_id", None) or 0


@torch.no_grad()
def greedy_batch(model, ids: Tensor, new_tokens: int) -> list[list[int]]:
    """``new_tokens`` greedy tokens after each row of ``ids`` (batch, L; no padding: rows of one length) through
    generate, each row cut after its first end-of-sequence token as a one-row generate stops there."""
    pad = _pad_id(model)
    gen = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad
    )
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = getattr(model.config, "eos_token_id", None) if eos is None else eos
    stops = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    rows = []
    for row in gen[:, ids.shape[1] :].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        rows.append(row[:end])
    return rows


@torch.no_grad()
def greedy(model, ids: Tensor, new_tokens: int, use_cache: bool = True) -> list[int]:
    """``new_tokens`` greedy tokens after ``ids`` (1, L): through generate (the model's cached decoding) or, with
    ``use_cache`` False, one full forward over the whole prefix per token (the reference the cache must match)."""
    if use_cache:
        return greedy_batch(model, ids, new_tokens)[0]
    out: list[int] = []
    for _ in range(new_tokens):
        logits = model(input_ids=ids, use_cache=False).logits[0, -1]
        nxt = int(logits.argmax())
        out.append(nxt)
        ids = torch.cat([ids, ids.new_tensor([[nxt]])], dim=1)
    return out


@torch.no_grad()
def answer_scores(model, rows: list[tuple[list[int], list[int]]], pad: int) -> list[tuple[float, float]]:
    """(summed log-probability, share of argmax hits) of each answer given its prompt, teacher-forced, for rows
    (prompt, answer) whose prompts have one length: one forward over ``prompt + answer`` right-padded with ``pad`` (in
    a causal model padding after a row's answer changes none of its scores), logits kept at the answer positions only
    (``logits_to_keep``; a model that returns them all is sliced the same)."""
    device = next(model.parameters()).device
    width = max(len(a) for _, a in rows)
    assert len({len(p) for p, _ in rows}) == 1, "answer_scores: prompts of one length"
    ids = torch.tensor([p + a + [pad] * (width - len(a)) for p, a in rows], device=device)
    keep = width + 1  # the positions that predict the answer tokens: from each prompt's last token on
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits[:, -keep:-1].float()
    logp = torch.log_softmax(logits, -1)
    out = []
    for i, (_, a) in enumerate(rows):
        target = ids.new_tensor(a)
        lp = logp[i, : len(a)]
        out.append((float(lp.gather(-1, target[:, None]).sum()), float((lp.argmax(-1) == target).float().mean())))
    return out


@torch.no_grad()
def passkey_scores(
    model,
    tokenizer,
    lengths: list[int],
    trials: int = 20,
    seed: int = 0,
    fillers: tuple[str, ...] = ("repeat", "natural"),
    new_tokens: int = 8,
    check_cache: bool = True,
    batch_size: int = 1,
) -> dict:
    """Passkey retrieval, measured three ways for each filler and length over ``trials`` seeded keys and depths
    (identical for every model): ``hits`` (share of greedy answers holding the 5-digit key in their first
    ``new_tokens`` tokens), ``digits`` (share of the key's digits reproduced in place: partial credit), and from one
    teacher-forced forward ``key_logprob`` (mean log-probability of the answer's tokens " KEY", summed over them) and
    ``token_acc`` (share of answer tokens that are the argmax). ``generations``: the decoded answers.
    With ``check_cache``, the first trial of each length is also decoded alone, with the cache and without (full
    forwards): ``cache_agrees`` is False if the greedy tokens differ (a decode-path fault, not a capability).
    ``batch_size``: trials scored and generated together (prompts of one length: no padding); the answers are those
    of one trial at a time (tests/evaluation/test_passkey.py holds them equal).

    Returns {filler: {length: {hits, digits, key_logprob, token_acc, trials, cache_agrees, generations}}}."""
    device = next(model.parameters()).device
    texts = {"repeat": FILLER, "natural": natural_filler() if "natural" in fillers else ""}
    pad, step = _pad_id(model), max(1, batch_size)
    out: dict = {}
    for filler in fillers:
        out[filler] = {}
        for length in lengths:
            rng = random.Random(seed + length)
            cases = []
            for _ in range(trials):
                key = str(rng.randrange(10000, 100000))
                depth, offset = rng.random(), rng.randrange(max(1, len(texts[filler]) // 2))
                prompt = passkey_prompt(tokenizer, length, key, depth, texts[filler], offset)
                cases.append((key, depth, prompt, tokenizer(f" {key}", add_special_tokens=False)["input_ids"]))
            row = {"hits": 0.0, "digits": 0.0, "key_logprob": 0.0, "token_acc": 0.0, "trials": trials}
            answers: list[list[int]] = [[] for _ in cases]
            by_len: dict[int, list[int]] = {}
            for i, case in enumerate(cases):
                by_len.setdefault(len(case[2]), []).append(i)
            for group in by_len.values():
                for j in range(0, len(group), step):
                    chunk = group[j : j + step]
                    for logprob, acc in answer_scores(model, [(cases[i][2], cases[i][3]) for i in chunk], pad):
                        row["key_logprob"] += logprob / trials
                        row["token_acc"] += acc / trials
                    prompts = torch.tensor([cases[i][2] for i in chunk], device=device)
                    for i, gen in zip(chunk, greedy_batch(model, prompts, new_tokens), strict=True):
                        answers[i] = gen
            gens, agrees = [], None
            for (key, depth, _, _), gen in zip(cases, answers, strict=True):
                text = tokenizer.decode(gen, skip_special_tokens=True)
                row["hits"] += (key in _compact(text)) / trials
                row["digits"] += _digits_right(key, text) / trials
                gens.append({"key": key, "depth": round(depth, 3), "answer": text})
            if check_cache and cases:
                ids = torch.tensor([cases[0][2]], device=device)
                agrees = greedy(model, ids, new_tokens) == greedy(model, ids, new_tokens, use_cache=False)
            out[filler][str(length)] = {**row, "cache_agrees": agrees, "generations": gens}
    return out


def passkey_accuracy(model, tokenizer, lengths: list[int], trials: int = 5, seed: int = 0) -> dict:
    """{length: share of greedy answers holding the key} with the repeated filler (see passkey_scores)."""
    res = passkey_scores(model, tokenizer, lengths, trials, seed, fillers=("repeat",), check_cache=False)["repeat"]
    return {length: res[str(length)]["hits"] for length in lengths}


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
