"""Passkey v2: the prompt, the three scores (hits, per-digit credit, teacher-forced key log-probability) on models
whose behaviour is known exactly, and cached == uncached greedy decoding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mohawk.evaluation.long_context import FILLER, greedy, natural_filler, passkey_prompt, passkey_scores


def digit_tokenizer():
    """Words of the passkey prompts and fillers + single digits, so a key is one token per digit."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mohawk.evaluation.long_context import INTRO

    words = set((INTRO + FILLER + " The pass key is . Remember it. is the pass key. What is the pass key?").split())
    vocab = {"<unk>": 0, "<eos>": 1}
    for w in sorted(words | set("0123456789.?,")):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


class Copier(nn.Module):
    """An exact induction model: at each position it predicts the token that followed the latest earlier occurrence
    of the last four tokens (so after "The pass key is" it answers the key digit by digit); ``corrupt``: the answer
    position whose prediction is replaced by another token; ``broken_cache``: generate() returns other tokens than
    full forwards do (a faulty decode path)."""

    def __init__(self, vocab: int, corrupt: int | None = None, broken_cache: bool = False, never: int | None = None):
        super().__init__()
        self.vocab, self.corrupt, self.broken_cache, self.never = vocab, corrupt, broken_cache, never
        self.dummy = nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"pad_token_id": None, "eos_token_id": 1})()

    def _next(self, ids: list[int], p: int) -> int:
        if self.never is not None:
            return self.never
        for q in range(p - 1, 3, -1):
            if ids[q - 3 : q + 1] == ids[p - 3 : p + 1]:
                return ids[q + 1]
        return 0

    def forward(self, input_ids, use_cache=False, **_):
        b, n = input_ids.shape
        logits = torch.full((b, n, self.vocab), -20.0)
        for i in range(b):
            ids = input_ids[i].tolist()
            for p in range(1, n):
                logits[i, p, self._next(ids, p)] = 20.0
        return type("O", (), {"logits": logits})()

    def generate(self, ids, max_new_tokens, **_):
        out = ids
        for k in range(max_new_tokens):
            nxt = self(out).logits[:, -1].argmax(-1)
            if self.corrupt is not None and k == self.corrupt:
                nxt = (nxt + 1) % self.vocab
            if self.broken_cache:
                nxt = torch.zeros_like(nxt)
            out = torch.cat([out, nxt[:, None]], 1)
        return out


@pytest.fixture(scope="module")
def tok():
    return digit_tokenizer()


def test_prompt_hides_the_key_at_its_depth_and_has_the_asked_length(tok):
    for depth in (0.1, 0.5, 0.9):
        ids = passkey_prompt(tok, 300, "48213", depth)
        assert len(ids) == 300
        text = tok.decode(ids)
        assert text.count("4 8 2 1 3") == 2 and text.rstrip().endswith("What is the pass key ? The pass key is")
        needle = tok("The pass key is 4", add_special_tokens=False)["input_ids"]
        at = next(i for i in range(len(ids)) if ids[i : i + len(needle)] == needle)
        assert abs(at / len(ids) - depth) < 0.12
    natural = passkey_prompt(tok, 300, "48213", 0.5, natural_filler(20_000), offset=100)
    assert len(natural) == 300 and natural != passkey_prompt(tok, 300, "48213", 0.5)


class JoiningTokenizer:
    """Words as ids, except that the filler alone costs twice its words (as BPE merges across a sentence boundary can
    make one copy of a text longer than the same copy inside a repetition)."""

    def __call__(self, text, add_special_tokens=False):
        ids = [hash(w) % 1000 for w in text.split()]
        return {"input_ids": ids * 2 if text == FILLER else ids}


def test_the_repeated_filler_is_long_enough_whatever_one_copy_costs_alone():
    for length in (300, 517, 2048):
        assert len(passkey_prompt(JoiningTokenizer(), length, "48213", 0.5)) == length


def test_a_copying_model_scores_one_and_agrees_with_itself_uncached(tok):
    res = passkey_scores(Copier(len(tok)), tok, [128, 256], trials=3, fillers=("repeat",))["repeat"]
    for row in res.values():
        assert row["hits"] == 1 and row["digits"] == 1 and row["token_acc"] == 1
        assert row["key_logprob"] > -1e-3 and row["cache_agrees"] is True
        assert (
            len(row["generations"]) == 3 and " ".join(row["generations"][0]["key"]) in row["generations"][0]["answer"]
        )


def test_a_model_that_does_not_copy_scores_zero(tok):
    res = passkey_scores(Copier(len(tok), never=tok.convert_tokens_to_ids("blue")), tok, [128], trials=3)
    for filler in ("repeat", "natural"):
        row = res[filler]["128"]
        assert row["hits"] == 0 and row["digits"] == 0 and row["token_acc"] == 0 and row["key_logprob"] < -100


def test_one_wrong_digit_gets_partial_credit_but_no_hit(tok):
    row = passkey_scores(Copier(len(tok), corrupt=4), tok, [128], trials=4, fillers=("repeat",))["repeat"]["128"]
    assert row["hits"] == 0 and row["digits"] == pytest.approx(0.8)
    assert row["token_acc"] == 1  # the teacher-forced forward is not affected by the generation fault


def test_a_decode_path_that_differs_from_full_forwards_is_flagged(tok):
    row = passkey_scores(Copier(len(tok), broken_cache=True), tok, [128], trials=2, fillers=("repeat",))["repeat"]
    assert row["128"]["cache_agrees"] is False and row["128"]["hits"] == 0


@pytest.mark.parametrize("model", ["teacher", "hybrid"])
def test_trials_scored_together_score_as_one_at_a_time(tok, model):
    """passkey_scores with batch_size 4 (several prompts per forward and per generate) gives each trial the answer,
    log-probability and token accuracy it gets alone, on a tiny Llama teacher and its hybrid student; and
    answer_scores of answers of different lengths (right-padded in one forward) are those of each row alone."""
    from mohawk.evaluation.long_context import answer_scores
    from mohawk.transfer import from_teacher
    from tests.utils import tiny_teacher

    torch.manual_seed(0)
    teacher = tiny_teacher("llama", vocab_size=len(tok) + 8).eval()
    net = teacher if model == "teacher" else from_teacher(teacher, attention_layers=[1]).eval()
    one = passkey_scores(net, tok, [48, 64], trials=5, batch_size=1)
    four = passkey_scores(net, tok, [48, 64], trials=5, batch_size=4)
    for filler in one:
        for length, a in one[filler].items():
            b = four[filler][length]
            assert a["generations"] == b["generations"] and a["cache_agrees"] == b["cache_agrees"]
            for k in ("hits", "digits", "token_acc"):
                assert a[k] == pytest.approx(b[k], abs=1e-9), (filler, length, k)
            assert a["key_logprob"] == pytest.approx(b["key_logprob"], abs=1e-4)
    assert len({g["answer"] for f in one.values() for r in f.values() for g in r["generations"]}) > 1
    rows = [([5, 9, 11, 7], [3, 4]), ([6, 2, 8, 10], [12, 13, 14, 15, 3]), ([1, 1, 2, 3], [9])]
    together = answer_scores(net, rows, pad=0)
    for row, (logprob, acc) in zip(rows, together, strict=True):
        alone = answer_scores(net, [row], pad=0)[0]
        assert logprob == pytest.approx(alone[0], abs=1e-5) and acc == alone[1]
    assert together[0][0] != pytest.approx(together[1][0], abs=1e-3)


def test_cached_greedy_equals_full_forwards_on_a_hybrid_student_past_one_prefill_chunk():
    from mohawk.transfer import from_teacher
    from tests.utils import tiny_teacher

    torch.manual_seed(0)
    student = from_teacher(tiny_teacher("llama"), attention_layers=[1]).eval()
    student.config.prefill_chunk = 16  # the prompt goes through the cache in three pieces
    ids = torch.randint(3, 90, (1, 41))
    assert greedy(student, ids, 6) == greedy(student, ids, 6, use_cache=False)
