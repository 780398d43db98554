"""Text the teacher writes itself (``--data teacher``): batched sampling, written as a jsonl.xz corpus. On a GPU the
teacher samples re-expressed as an all-attention mohawk model (every layer its own attention: the same function),
whose ``generate`` draws each token inside CUDA graphs of several steps (mohawk.models.graphs.generate_fast), faster
than the teacher's own ``generate`` with a static KV cache (results/recall/runs/NOTES.md points 17 and 19).
Elsewhere the teacher samples itself.

Each sample continues a short prompt (the first ``prompt_tokens`` tokens of a piece of vendored text, so that the
samples start in many places) for ``new_tokens`` tokens at temperature ``temperature`` (no top-k / top-p: the teacher's
own distribution). All prompts of a batch have the same length, so the compiled step never recompiles; the last
batch is padded with repeats and cut."""

from __future__ import annotations

import hashlib
import json
import lzma
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from mohawk.errors import MohawkError
from mohawk.metrics import write_json


def prompts(tokenizer, n: int, length: int, source: str = "modern+gutenberg", seed: int = 0) -> list[list[int]]:
    """``n`` prompts of exactly ``length`` token ids, from the starts of seeded-shuffled pieces of ``source``."""
    from mohawk.data import iter_documents, pieces, split_sources

    train, _ = split_sources(source, None)
    rng = random.Random(seed)
    out: list[list[int]] = []
    docs = list(iter_documents(train))
    rng.shuffle(docs)
    for doc in docs:
        for p in pieces(doc, 2000):
            ids = tokenizer(p[:400], add_special_tokens=False)["input_ids"]
            if len(ids) >= length:
                out.append(ids[:length])
            if len(out) >= 4 * n:
                break
        if len(out) >= 4 * n:
            break
    if not out:
        raise MohawkError(f"no prompts of {length} tokens in {source!r}")
    rng.shuffle(out)
    return [out[i % len(out)] for i in range(n)]


def corpus_batch(device: torch.device) -> int:
    """Sequences :func:`write_corpus` samples at once for ``mohawk distill --data teacher``: 256 on CUDA (on an H100
    the graphed sampler wrote 23,349 tokens/s at 256 against 6,297 at 64, results/recall NOTES point 19), 8
    elsewhere (a CPU gains nothing from more)."""
    return 256 if device.type == "cuda" else 8


def fast_sampler(model):
    """The model that samples for ``model`` (an HF causal LM): where decoding graphs run (CUDA), ``model``
    re-expressed by its adapter as an all-attention mohawk model on its device and in its dtype, its generation
    config kept; elsewhere, for a mohawk model, or for a teacher no adapter re-expresses, ``model`` itself."""
    from mohawk.models import MohawkForCausalLM
    from mohawk.models.modeling_mohawk import graphs_supported

    p = next(model.parameters())
    if isinstance(model, MohawkForCausalLM) or not graphs_supported(p.device):
        return model
    from mohawk.transfer import from_teacher

    try:
        fast = from_teacher(model, attention_layers="all")
    except (MohawkError, NotImplementedError):  # a teacher no adapter re-expresses samples itself
        return model
    fast = fast.to(device=p.device, dtype=p.dtype).eval().requires_grad_(False)
    fast.generation_config = model.generation_config
    return fast


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    new_tokens: int,
    batch_size: int,
    temperature: float = 1.0,
    seed: int = 0,
) -> Iterator[tuple[str, int]]:
    """The continuations of ``prompt_ids`` (prompt included) by ``model`` (the teacher, or :func:`fast_sampler`'s
    model), decoded, with their lengths in tokens (up to the first end of text): one (text, tokens) per prompt."""
    from mohawk.models import MohawkForCausalLM

    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    # the teacher's generate stops at its generation config's EOS and keeps a static KV cache itself; mohawk's
    # fast path is told that EOS and sizes its own cache
    if isinstance(model, MohawkForCausalLM):
        extra = {"eos_token_id": model.generation_config.eos_token_id}
    else:
        extra = {"cache_implementation": "static"}
    torch.manual_seed(seed)
    for i in range(0, len(prompt_ids), batch_size):
        rows = prompt_ids[i : i + batch_size]
        ids = torch.tensor(rows + [rows[-1]] * (batch_size - len(rows)), device=device)
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=new_tokens,
            pad_token_id=eos,
            **extra,
        )
        for row in out[: len(rows)]:
            new = row[ids.shape[1] :]
            stop = (new == eos).nonzero()
            n = int(stop[0, 0]) if len(stop) else len(new)  # tokens written before the first end of text
            yield tokenizer.decode(row, skip_special_tokens=True), ids.shape[1] + n


def write_corpus(
    model,
    tokenizer,
    path: Path,
    tokens: int,
    *,
    new_tokens: int = 480,
    prompt_tokens: int = 32,
    batch_size: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    on_progress: Callable[[int, float], None] | None = None,
) -> dict:
    """Sample about ``tokens`` tokens from the teacher into ``path`` (jsonl.xz, {"text": ...} per sample), reusing a
    complete earlier file made with the same settings; returns {"tokens", "samples", "seconds", "tokens_per_s",
    "first_batch_s", "steady_tokens_per_s", "sampler"} (the steady rate is the one after the first batch, which pays
    for capturing or compiling the decoding step; None with a single batch; sampler: "mohawk graphs" where
    :func:`fast_sampler` re-expressed the teacher, else "transformers").
    The file is written to a temporary sibling and renamed; its sidecar ``path.json`` (settings, stats, the file's
    size and sha256) is written last, atomically, so a file is reused only when the sidecar vouches for it."""
    meta_path = path.with_name(path.name + ".json")
    settings = {
        "tokens": tokens,
        "new_tokens": new_tokens,
        "prompt_tokens": prompt_tokens,
        "temperature": temperature,
        "seed": seed,
    }
    reused = _reusable(path, meta_path, settings)
    if reused is not None:
        return reused
    teacher, model = model, fast_sampler(model)
    per_sample = prompt_tokens + new_tokens
    n = max(1, -(-tokens // per_sample))
    starts = prompts(tokenizer, n, prompt_tokens, seed=seed)
    t0, done, samples = time.perf_counter(), 0, 0
    first: tuple[int, float] | None = None  # (tokens, seconds) when the first batch was written
    tmp = path.with_name(f".{path.name}.tmp")
    meta_path.unlink(missing_ok=True)  # the old sidecar must never describe the new file
    try:
        with lzma.open(tmp, "wt", encoding="utf-8") as f:
            for text, n_tokens in sample(model, tokenizer, starts, new_tokens, batch_size, temperature, seed):
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                samples += 1
                done += n_tokens
                if samples % batch_size == 0:
                    first = first or (done, time.perf_counter() - t0)
                    if on_progress is not None:
                        on_progress(done, time.perf_counter() - t0)
        tmp.replace(path)
    except BaseException:  # a full disk or an interrupt: no partial file stays behind
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - t0
    stats = {
        "tokens": done,
        "samples": samples,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(done / max(seconds, 1e-9), 1),
        "first_batch_s": round(first[1], 3) if first else round(seconds, 3),
        "steady_tokens_per_s": round((done - first[0]) / max(seconds - first[1], 1e-9), 1)
        if first and done > first[0]
        else None,
        "sampler": "transformers" if model is teacher else "mohawk graphs",
    }
    write_json(meta_path, {"settings": settings, "stats": stats, "file": _identity(path)})
    return stats


def _identity(path: Path) -> dict:
    """Size and sha256 of ``path``: what the sidecar vouches for."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def _reusable(path: Path, meta_path: Path, settings: dict) -> dict | None:
    """The stats of an earlier corpus in ``path`` made with ``settings``, or None (none, other settings, a sidecar
    that is damaged or does not describe the file): then the corpus is sampled again."""
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("settings") != settings or not isinstance(meta.get("stats"), dict):
        return None
    if meta.get("file") != _identity(path):
        return None
    return meta["stats"]
