"""lm-evaluation-harness's HF model with its per-request work done per batch, and its prompt templates compiled once.

The harness's ``HFLM._loglikelihood_tokens`` takes the log-softmax of every position of a batch, then for each request
an argmax, a gather and two reads back to the host; its ``utils.apply_template`` compiles the task's Jinja template
again for every document (EleutherAI/lm-evaluation-harness#1286). ``BatchedHFLM`` scores the same requests (same
order of work, same left truncation, the log-softmax in the same dtype) with the LM head applied only to the
positions that predict a continuation, one gather of those positions and one read back per batch;
``cached_templates()`` compiles each template string once. Both leave every score as the harness computes it
(tests/evaluation/test_batched_lm.py compares them request by request)."""

from __future__ import annotations

import functools
import inspect
from contextlib import AbstractContextManager
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from mohawk.errors import raise_if_signalled

Request = tuple[tuple[str, str], list[int], list[int]]  # ((context, continuation), context ids, continuation ids)


def cached_templates() -> AbstractContextManager[Any]:
    """A block in which lm-eval renders each Jinja template string from one compiled template (its own
    environment: the same filters, StrictUndefined, trailing newlines kept)."""
    compile_once = functools.lru_cache(maxsize=256)(lm_utils.env.from_string)

    def apply_template(template: str, doc: dict) -> str:
        return compile_once(template).render(**doc)

    return mock.patch.object(lm_utils, "apply_template", apply_template)


class BatchedHFLM(HFLM):
    """``HFLM`` whose log-likelihood requests are tokenized in one tokenizer call per kind of string and scored a
    batch at a time (causal models with an integer batch size; anything else goes to the harness's own loop)."""

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """The harness's ``TemplateLM.loglikelihood`` with its tokenization batched: the same token lists per
        request (a context's trailing spaces moved to its continuation, the continuation cut from the encoded
        whole; an empty context becomes the prefix token), each distinct string encoded once, in batches the fast
        tokenizer spreads over the CPU's cores instead of one call per string."""
        if self.backend != "causal" or getattr(self, "enable_thinking", False):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        pairs = [req.args for req in requests]
        moved = [_move_spaces(ctx, cont) if ctx else None for ctx, cont in pairs]
        plain = self._encode_all([t for m in moved if m for t in (m[0], m[0] + m[1])], add_special_tokens=None)
        bare = self._encode_all([cont for ctx, cont in pairs if not ctx], add_special_tokens=False)
        new_reqs: list[Request] = []
        for (ctx, cont), m in zip(pairs, moved, strict=True):
            if m is None:
                enc = bare[cont]
                ctx_enc, cont_enc = (
                    ([self.prefix_token_id], enc) if self.prefix_token_id != enc[0] else (enc[:1], enc[1:])
                )
            else:
                ctx_enc = plain[m[0]]
                cont_enc = plain[m[0] + m[1]][len(ctx_enc) :]
            new_reqs.append(((ctx, cont), list(ctx_enc), list(cont_enc)))
        return self._loglikelihood_tokens(new_reqs, disable_tqdm=disable_tqdm)

    def _encode_all(self, strings: list[str], add_special_tokens: bool | None) -> dict[str, list[int]]:
        """{string: self.tok_encode(string, add_special_tokens)} for the distinct ``strings``: one tokenizer call
        per set of special-token arguments (a string that starts with the BOS text gets none added, as there)."""
        from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix

        bos = self.tokenizer.decode(self.prefix_token_id)
        groups: dict[tuple, list[str]] = {}
        for text in dict.fromkeys(strings):
            kwargs = dict(_add_special_kwargs(add_special_tokens, self.add_bos_token))
            if add_special_tokens is None and has_bos_prefix(text, bos):
                kwargs["add_special_tokens"] = False
            groups.setdefault(tuple(sorted(kwargs.items())), []).append(text)
        out: dict[str, list[int]] = {}
        for key, texts in groups.items():
            out.update(zip(texts, self.tokenizer(texts, **dict(key))["input_ids"], strict=True))
        return out

    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        size = override_bs or self.batch_size
        if self.backend != "causal" or not isinstance(size, int):
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)

        # the harness's order: longest first, ties by the tokens, so batches pad as little as its own
        def key(i: int) -> tuple[int, tuple[int, ...]]:
            tokens = requests[i][1] + requests[i][2]
            return -len(tokens), tuple(tokens)

        order = sorted(range(len(requests)), key=key)
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        for lo in range(0, len(order), size):
            raise_if_signalled()  # a signal whose exception a finalizer swallowed still stops the scoring
            chunk = order[lo : lo + size]
            for i, answer in zip(chunk, self._score_batch([requests[i] for i in chunk]), strict=True):
                out[i] = answer
                self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def _score_batch(self, batch: list[Request]) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether greedy decoding gives the continuation) per request:
        inputs right-padded to the longest, ``context + continuation`` cut from the left to ``max_length + 1`` tokens
        and its last dropped, as the harness does."""
        seqs, conts = [], []
        for _, ctx, cont in batch:
            if not ctx or not cont or len(cont) > self.max_length:
                raise ValueError(f"cannot score a context of {len(ctx)} and a continuation of {len(cont)} tokens")
            seqs.append((ctx + cont)[-(self.max_length + 1) :][:-1])
            conts.append(cont)
        rows, width, cont_width = len(batch), max(map(len, seqs)), max(map(len, conts))
        # the last `keep` positions predict every continuation token of the batch: only they need the LM head
        keep = width - min(len(seq) - len(cont) for seq, cont in zip(seqs, conts, strict=True))
        inp = torch.zeros(rows, width, dtype=torch.long)
        pos = torch.zeros(rows, cont_width, dtype=torch.long)  # where each continuation token is predicted
        target = torch.zeros(rows, cont_width, dtype=torch.long)
        valid = torch.zeros(rows, cont_width, dtype=torch.bool)
        for r, (seq, cont) in enumerate(zip(seqs, conts, strict=True)):
            inp[r, : len(seq)] = torch.tensor(seq)
            n = len(cont)
            pos[r, :n] = torch.arange(len(seq) - n, len(seq)) - (width - keep)
            target[r, :n] = torch.tensor(cont)
            valid[r, :n] = True
        pos, target, valid = (t.to(self.device) for t in (pos, target, valid))
        logits = self._last_logits(inp.to(self.device), keep)  # [rows, keep, vocab]
        picked = logits[torch.arange(rows, device=self.device)[:, None], pos]  # [rows, cont_width, vocab]
        logp = F.log_softmax(picked, dim=-1, dtype=self.softmax_dtype)
        greedy = ((logp.argmax(-1) == target) | ~valid).all(-1)
        total = logp.gather(-1, target[..., None]).squeeze(-1).masked_fill(~valid, 0).sum(-1)
        return list(zip(total.tolist(), greedy.tolist(), strict=True))

    def _last_logits(self, inp: torch.Tensor, keep: int) -> torch.Tensor:
        """The logits of the last ``keep`` positions of ``inp`` [rows, width]: [rows, keep, vocab]. Models that take
        transformers' ``logits_to_keep`` apply their LM head to those positions only (the head over every position
        of a 49k vocabulary costs as much as a small model's body); the others are sliced after the full call."""
        if keep < inp.shape[1] and _takes_logits_to_keep(self.model):
            with torch.no_grad():
                return self.model(inp, logits_to_keep=keep).logits
        return self._model_call(inp)[:, inp.shape[1] - keep :]


def _move_spaces(context: str, continuation: str) -> tuple[str, str]:
    """The harness's split of a pair: the context's trailing whitespace starts the continuation instead."""
    n = len(context) - len(context.rstrip())
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (transformers' causal LMs, mohawk's students)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters
