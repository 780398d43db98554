"""BatchedHFLM == lm-eval's HFLM request by request (log-likelihood and greedy match, with left truncation and
ragged batches), and the compiled-once templates render every vendored task's prompts as the harness does."""

import random

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval import utils as lm_utils  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

import mohawk  # noqa: E402
from mohawk.evaluation.batched_lm import BatchedHFLM, cached_templates  # noqa: E402
from tests.utils import VOCAB, tiny_teacher, tiny_tokenizer  # noqa: E402


def _requests(model, n: int, seed: int = 0):
    """Random (context, continuation) token requests of ragged lengths; every third continuation is the model's own
    greedy continuation, so that the greedy flag is true for some and must be computed, not assumed false."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ctx = [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 20))]
        if i % 3 == 0:
            ids = torch.tensor([ctx], device=next(model.parameters()).device)
            with torch.no_grad():
                for _ in range(rng.randint(1, 4)):
                    ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
            cont = ids[0, len(ctx) :].tolist()
        else:
            cont = [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 6))]
        out.append((("", ""), ctx, cont))
    return out


class _NoKeep(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep``: BatchedHFLM must slice the full logits instead."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config, self.device = model, model.config, model.device

    def forward(self, input_ids, **kw):
        return self.inner(input_ids, **kw)

    def tie_weights(self):
        pass


@pytest.mark.parametrize("family", ["llama", "ssd-student", "no-logits-to-keep"])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_batched_scores_equal_the_harness_per_request(family, batch_size, device="cpu"):
    torch.manual_seed(0)
    teacher = tiny_teacher("llama").eval()
    model = (mohawk.from_teacher(teacher).eval() if family == "ssd-student" else teacher).to(device)
    model = _NoKeep(model) if family == "no-logits-to-keep" else model
    tok = tiny_tokenizer()
    reqs = _requests(model, 23)
    for max_length in (None, 12):  # 12: the longer requests lose tokens on the left, in both
        kw = {"pretrained": model, "tokenizer": tok, "batch_size": batch_size, "device": device}
        kw |= {"max_length": max_length} if max_length else {}
        stock = HFLM(**kw)._loglikelihood_tokens(reqs, disable_tqdm=True)
        batched = BatchedHFLM(**kw)._loglikelihood_tokens(reqs, disable_tqdm=True)
        assert [g for _, g in batched] == [g for _, g in stock]
        assert [lp for lp, _ in batched] == pytest.approx([lp for lp, _ in stock], abs=1e-4)
        assert any(g for _, g in stock) and not all(g for _, g in stock)


@pytest.mark.parametrize("family", ["llama", "ssd-student"])
def test_the_lm_head_sees_only_the_positions_that_predict_a_continuation(family):
    """Contexts of 20 tokens and continuations of 2 in one batch: the LM head runs on the last 2 positions of each
    row, not on all 21 (the full head would compute ten times the logits the scores read)."""
    torch.manual_seed(0)
    teacher = tiny_teacher("llama").eval()
    model = teacher if family == "llama" else mohawk.from_teacher(teacher).eval()
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[:2])))
    reqs = [(("", ""), [3 + i] * 20, [5, 6]) for i in range(4)]
    BatchedHFLM(pretrained=model, tokenizer=tiny_tokenizer(), batch_size=4, device="cpu")._loglikelihood_tokens(
        reqs, disable_tqdm=True
    )
    assert seen == [(4, 2)]


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["llama", "ssd-student"])
def test_batched_scores_equal_the_harness_on_cuda(family):
    """The same on a GPU: the batch's positions and targets on the model's device, the SSD student's kernels."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    test_batched_scores_equal_the_harness_per_request(family, 5, device="cuda")


def test_templates_compile_once_and_render_as_the_harness(tmp_path):
    """Each task's prompts on its first 50 vendored items are the same strings under cached_templates(), which
    compiles each template string once and gives the harness its own function back afterwards."""
    from lm_eval.tasks import TaskManager

    from mohawk.evaluation.harness import TASKS, write_tasks

    names = write_tasks(tmp_path, list(TASKS))
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False).load(names)["tasks"]

    def prompts():
        out = []
        for name in names:
            task = tasks[name]
            for doc in list(task.validation_docs())[:50]:
                out.append((task.doc_to_text(doc), task.doc_to_target(doc), task.doc_to_choice(doc)
                            if task.config.doc_to_choice else None))  # fmt: skip
        return out

    original = lm_utils.apply_template
    compiled = []
    real = lm_utils.env.from_string
    lm_utils.env.from_string = lambda t: compiled.append(t) or real(t)
    try:
        plain = prompts()
        n_plain = len(compiled)
        with cached_templates():
            cached = prompts()
        n_cached = len(compiled) - n_plain
    finally:
        lm_utils.env.from_string = real
    assert cached == plain and lm_utils.apply_template is original
    assert n_plain > 100 and 0 < n_cached <= len({t for t in compiled[:n_plain]})
    with pytest.raises(RuntimeError), cached_templates():  # restored after an error too
        raise RuntimeError
    assert lm_utils.apply_template is original


def _byte_level_tokenizer(texts):
    """A byte-level BPE tokenizer trained on ``texts`` (spaces are part of its tokens, as in SmolLM2's), with a BOS
    token that it adds before every text: the harness's space moving and BOS rules both matter with it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def test_batched_tokenization_gives_the_harness_tokens_request_by_request(tmp_path):
    """The requests of every vendored task (30 items each), plus an empty context, trailing spaces and a context
    that starts with the BOS text: BatchedHFLM.loglikelihood hands _loglikelihood_tokens the very token lists the
    harness's loglikelihood makes, in the same order (a version that kept the spaces on the context, encoded the
    continuation apart, added BOS twice or dropped the prefix token of an empty context would differ)."""
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager

    from mohawk.evaluation.harness import TASKS, write_tasks

    names = write_tasks(tmp_path, list(TASKS))
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False).load(names)["tasks"]
    args = []
    for name in names:
        tasks[name].build_all_requests(limit=30, rank=0, world_size=1)
        args += [inst.args for inst in tasks[name].instances]
    args += [("", " the end"), ("A context with spaces   ", "next"), ("<s>Already begun", " here"), ("Same", " a")]
    args += [("Same", " b")]  # a context shared by several requests, as HellaSwag's four endings share one
    tok = _byte_level_tokenizer([a + b for a, b in args])
    model = tiny_teacher("llama").eval()
    seen = {}

    def capture(key):
        return lambda reqs, disable_tqdm=False: seen.setdefault(key, reqs) and [(0.0, False)] * len(reqs)

    instances = [Instance("loglikelihood", {}, a, i) for i, a in enumerate(args)]
    for key, method in (("harness", HFLM.loglikelihood), ("batched", BatchedHFLM.loglikelihood)):
        lm = BatchedHFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu", add_bos_token=True)
        lm._loglikelihood_tokens = capture(key)
        method(lm, instances, disable_tqdm=True)
    assert len(seen["batched"]) == len(args) > 200
    assert seen["batched"] == seen["harness"]
    assert seen["harness"][-5][1:] == ([0], tok(" the end", add_special_tokens=False)["input_ids"])
    assert seen["harness"][-4][2][:1] == tok(" ", add_special_tokens=False)["input_ids"][:1]  # spaces moved


def test_a_signal_a_finalizer_swallowed_stops_the_scoring_at_the_next_batch():
    """A SIGTERM whose exception was lost (raised by the handler inside a finalizer, dropped there) stops the scoring
    before its next batch, with the signal's exception; none noted, the same requests are scored."""
    import signal

    from mohawk.errors import Terminated, clear_signals, on_signal

    torch.manual_seed(0)
    lm = BatchedHFLM(pretrained=tiny_teacher("llama").eval(), tokenizer=tiny_tokenizer(), batch_size=2, device="cpu")
    reqs = _requests(lm.model, 4)
    try:
        on_signal(signal.SIGTERM, None)
    except Terminated:
        pass  # what a finalizer does with it
    try:
        with pytest.raises(Terminated):
            lm._loglikelihood_tokens(reqs, disable_tqdm=True)
    finally:
        clear_signals()
    assert len(lm._loglikelihood_tokens(reqs, disable_tqdm=True)) == 4
