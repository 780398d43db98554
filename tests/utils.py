"""Tiny models, tokenizers and corpora for the tests, in one place (as transformers.testing_utils): random-weight
teachers of every supported family built from transformers configs (no downloads), tiny students and mixer configs,
a word-level tokenizer and its corpus, the arguments of a seconds-long ``mohawk distill`` and a short stage-3 run,
the error line of a failed command and a checkpoint edited behind mohawk's back, the result files of the experiment
campaigns. Test modules import these from here, never from conftest or from one another."""

from __future__ import annotations

import torch

VOCAB = 96


def tiny_teacher(family: str, seed: int = 0, **overrides):
    """A small random teacher of ``family`` in eval mode, float32."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=512,
    )
    if family == "llama":
        cfg = tf.LlamaConfig(**common, num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=False)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True)
    elif family == "mistral":
        cfg = tf.MistralConfig(**common, num_key_value_heads=1, sliding_window=None)
    elif family == "phi":
        cfg = tf.PhiConfig(**common, partial_rotary_factor=0.5, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
    elif family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(
            **common, rotary_pct=0.25, use_parallel_residual=True, hidden_dropout=0.0, attention_dropout=0.0
        )
    elif family == "gpt_neox_seq":
        cfg = tf.GPTNeoXConfig(**common, rotary_pct=1.0, use_parallel_residual=False)
    elif family == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=3,
            n_head=4,
            n_positions=512,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    elif family == "gemma3":  # as the Gemma 3 GGUF loads: sliding and global layers, head_dim != hidden / heads
        cfg = tf.Gemma3TextConfig(
            **common,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=12,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
            attention_dropout=0.0,
        )
    else:
        raise ValueError(family)
    cfg.initializer_range = 0.15  # larger than default: peaked teacher distributions, distinct attention patterns
    for k, v in overrides.items():
        setattr(cfg, k, v)
    cfg._attn_implementation = "eager"
    model = tf.AutoModelForCausalLM.from_config(cfg).float().eval()
    # random (not default-initialised) norms and biases, so that copying them is actually tested
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


FAMILIES = ["llama", "qwen2", "mistral", "phi", "gpt_neox", "gpt_neox_seq", "gpt2", "gemma3"]


CORPUS_WORDS = (
    "the cat sat on a mat while some dog ran far away from old house near river and then it came "
    "back home to eat bread with milk before night fell over quiet town"
).split()


def tiny_corpus(path, n_docs: int = 60, seed: int = 0):
    """A jsonl file of random sentences over a small vocabulary."""
    import json
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n_docs):
            words = [rng.choice(CORPUS_WORDS) for _ in range(rng.randint(40, 120))]
            f.write(json.dumps({"text": " ".join(words) + "."}) + "\n")
    return path


def tiny_tokenizer():
    """A word-level fast tokenizer over CORPUS_WORDS (+ '.', unk, eos), vocabulary < VOCAB."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, ".": 2}
    for w in CORPUS_WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert len(vocab) < VOCAB
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def tiny_distill_argv(teacher_dir, out, *extra) -> list[str]:
    """``mohawk distill`` arguments for a seconds-long CPU run of the teacher_dir fixture on its corpus (later flags
    in ``extra`` override these)."""
    data = str(teacher_dir.parent / "corpus.jsonl")
    fast = ["--seq-len", "16", "--batch-size", "2", "--stage1-tokens", "64", "--stage2-tokens", "64"]
    fast += ["--stage3-tokens", "128", "--val-sequences", "2", "--quiet", "--device", "cpu", "--eval-tasks", ""]
    return ["distill", "--teacher", str(teacher_dir), "--data", data, "--out", str(out), *fast, *extra]


def one_error_line(capsys) -> str:
    """The one ``error:`` line a failed command printed on stderr (asserting there is one, and no traceback)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def rewrite_checkpoint_file(checkpoint, name: str, data: bytes) -> None:
    """Replace file ``name`` of a checkpoint directory and its manifest entry, so that it passes verification (as a
    hand edit, or a disk that broke the file before the manifest was written, would leave it)."""
    import hashlib
    import json

    (checkpoint / name).write_bytes(data)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def tiny_student(mixers=("ssd", "attention", "ssd"), **kw):
    """A random MohawkForCausalLM in eval mode with the given mixer per layer (seed 0)."""
    from mohawk.models import MohawkConfig, MohawkForCausalLM

    torch.manual_seed(0)
    cfg = MohawkConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=len(mixers),
        num_attention_heads=4,
        num_key_value_heads=2,
        mixers=list(mixers),
        **kw,
    )
    return MohawkForCausalLM(cfg).eval()


def tiny_mixer_config(**kw):
    """A one-layer MohawkConfig for testing a mixer alone (hidden 32, 4 heads, 2 KV heads); ``kw`` overrides."""
    from mohawk.models import MohawkConfig

    base = dict(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        rotary_dim=4,
    )
    base.update(kw)
    return MohawkConfig(**base)


def tiny_mixer(cls, **kw):
    """A mixer of class ``cls`` on tiny_mixer_config with a small SSD (state 6, chunk 8; ``kw`` overrides), its
    parameters moved off their initial values so that every part of the layer matters, in eval mode (seed 0)."""
    torch.manual_seed(0)
    m = cls(tiny_mixer_config(**{"ssd_state_size": 6, "ssd_chunk_size": 8, **kw}))
    m.reset_parameters()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def train_briefly(stage, batch, tmp_path, steps: int = 12, lr: float = 3e-3) -> None:
    """``steps`` updates of ``stage`` on the same ``batch`` (constant LR, checkpoints under tmp_path/ck)."""
    from mohawk.checkpoint import Checkpointer
    from mohawk.metrics import MetricsLog
    from mohawk.train import LoopSettings, StageBudget, train_stage

    loop = LoopSettings(log_every=100, checkpoint_every=1000, warmup_fraction=0.0, decay_fraction=0.0)
    train_stage(
        stage,
        iter([batch] * steps),
        StageBudget(steps * batch.numel(), batch.numel(), 1, lr),
        loop,
        checkpointer=Checkpointer(tmp_path / "ck"),
        log=MetricsLog(tmp_path / "m.jsonl"),
        progress=False,
    )


def before_out_proj(mixer, u):
    """The mixer's output before its output projection (batch, L, heads * head_dim), captured by a hook."""
    from mohawk.mixers.attention import Attention

    captured = {}
    out_proj = mixer.o_proj if isinstance(mixer, Attention) else mixer.out_proj
    h = out_proj.register_forward_pre_hook(lambda m, a: captured.setdefault("y", a[0]))
    mixer(u)
    h.remove()
    return captured["y"]


def kd_losses(out, device: str = "cpu", compile_mode: str = "off", seq_len: int = 16, updates: int = 3, after=None):
    """Logged losses of stage 3 on a tiny Llama teacher (same seeds every call): 2 rows x ``seq_len`` per micro-batch,
    2 micro-batches per update; ``after(student)`` runs once training is done."""
    import json

    import mohawk
    from mohawk.checkpoint import Checkpointer
    from mohawk.metrics import MetricsLog
    from mohawk.stages import KnowledgeDistillation
    from mohawk.teachers import adapter_for
    from mohawk.train import LoopSettings, StageBudget, train_stage

    torch.manual_seed(0)
    adapter = adapter_for(tiny_teacher("llama").to(device))
    student = mohawk.from_teacher(adapter).to(device)
    loop = LoopSettings(
        log_every=1,
        checkpoint_every=1000,
        warmup_fraction=0.0,
        decay_fraction=0.0,
        spike_factor=0.0,
        compile=compile_mode,
    )
    g = torch.Generator().manual_seed(1)
    batches = iter([torch.randint(0, VOCAB, (2, seq_len), generator=g) for _ in range(2 * updates)])
    log = out.with_suffix(".jsonl")
    train_stage(
        KnowledgeDistillation(student, adapter),
        batches,
        StageBudget(4 * seq_len * updates, 2 * seq_len, 2, 1e-3),
        loop,
        checkpointer=Checkpointer(None),
        log=MetricsLog(log),
        progress=False,
    )
    if after is not None:
        after(student)
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()]


def logits_through_cache(model, ids: torch.Tensor, prompt: int):
    """(full-pass logits, the same from a MohawkCache fed ``ids[:, :prompt]`` then one token at a time, the cache):
    what every cached-decoding test compares; ids (batch, L) -> logits (batch, L, vocab) twice."""
    from mohawk.models import MohawkCache

    with torch.no_grad():
        full = model(ids).logits
        cache = MohawkCache()
        first = model(ids[:, :prompt], past_key_values=cache, use_cache=True).logits
        steps = [
            model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits for t in range(prompt, ids.shape[1])
        ]
    return full, torch.cat([first, *steps], 1), cache


def saved_student(tmp_path, family: str = "llama", **from_teacher_kw):
    """``mohawk.from_teacher(tiny_teacher(family), **from_teacher_kw)`` (seed 0) with every weight moved off its
    initial value (a trained-looking student), saved with the tiny tokenizer to tmp_path/student: (student, dir)."""
    import mohawk

    torch.manual_seed(0)
    student = mohawk.from_teacher(tiny_teacher(family), **from_teacher_kw)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    d = tmp_path / "student"
    student.save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return student.eval(), d


# -- result files of the experiment campaigns (experiments/headline.py, experiments/recall.py) ----------------------
def fake_task_scores(base: float) -> dict:
    """The seven zero-shot tasks of results/headline, scores rising from ``base`` by 0.01 per task."""
    from experiments.report import ZERO_SHOT

    return {
        t: {"acc": base + i / 100, "acc_norm": base + i / 100 + 0.01, "n": 100 + i} for i, t in enumerate(ZERO_SHOT)
    }


def fake_headline_eval(out, name, key, scores):
    """OUT/eval/NAME/results.json as experiments.headline eval writes it (``key``: the model's name in it)."""
    import json

    d = out / "eval" / name
    d.mkdir(parents=True)
    models = ["teacher"] if key == "teacher" else ["teacher", key]
    res = {
        "models": models,
        "teacher": "teacher",
        "scores": {key: scores, **({"teacher": {}} if key != "teacher" else {})},
        "passkey": {key: {"512": 1.0, "1024": 0.6}},
    }
    (d / "results.json").write_text(json.dumps(res))


def fake_recall_screen(
    path, name, lambada, hellaswag, ppl: float, passkey_hits: float, natural_hits=None, hellaswag_ids=None
):
    """A screen results.json as experiments.recall screen-one writes it (per-item scores kept): passkey v2 at 512
    tokens with repeated filler, and with natural filler when ``natural_hits`` is given; ``hellaswag_ids``: the
    HellaSwag items' indices where the screen chose them (else they are the first ones)."""
    import json

    scores = {
        "perplexity": ppl,
        "top1_agreement": 0.5,
        "lambada_openai": {"acc": sum(lambada) / len(lambada), "n": len(lambada), "items": {"acc": lambada}},
        "hellaswag": {
            "acc_norm": sum(hellaswag) / len(hellaswag),
            "n": len(hellaswag),
            "items": {"acc_norm": hellaswag},
            **({"item_ids": hellaswag_ids} if hellaswag_ids else {}),
        },
    }
    fillers = {"repeat": passkey_hits} | ({} if natural_hits is None else {"natural": natural_hits})
    detail = {
        filler: {"512": {"hits": hits, "digits": hits, "key_logprob": -1.0, "token_acc": 1.0, "cache_agrees": True,
                         "trials": 2, "generations": [{"answer": "12345"}]}}
        for filler, hits in fillers.items()
    }  # fmt: skip
    models = [name] if name == "teacher" else ["teacher", name]
    path.mkdir(parents=True)
    passkey = {name: {"512": passkey_hits}}
    (path / "results.json").write_text(
        json.dumps({"models": models, "teacher": "teacher", "scores": {name: scores}, "passkey": passkey,
                    "passkey_detail": {name: detail}})
    )  # fmt: skip


def fake_recall_full(path, name, hits, wrong, ppl: float = 40.0):
    """A full-sets results.json as experiments.recall full-one writes it: per task the items of its headline metric
    (acc_norm or acc, as results/headline reads them) are ``hits``, those of the other metric ``wrong``."""
    import json

    from experiments.report import ZERO_SHOT

    norm = ("hellaswag", "piqa", "arc_challenge", "openbookqa")
    scores: dict = {"perplexity": ppl, "top1_agreement": 0.5}
    for task in ZERO_SHOT:
        items = {"acc": wrong if task in norm else hits, "acc_norm": hits if task in norm else wrong}
        if task in ("winogrande", "lambada_openai"):
            del items["acc_norm"]
        scores[task] = {**{m: sum(v) / len(v) for m, v in items.items()}, "n": len(hits), "items": items}
    models = [name] if name == "teacher" else ["teacher", name]
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"models": models, "scores": {name: scores}}))


_PTX_SCRIPT = """
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

out = []
for module, name, args, constexprs, options, *aligned in json.loads(sys.stdin.read()):
    sig = {**args, **{c: "constexpr" for c in constexprs}}
    names = list(sig)
    kernel = getattr(importlib.import_module(module), name)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in (aligned[0] if aligned else [])}
    src = ASTSource(
        fn=kernel, signature=sig, constexprs={(names.index(c),): v for c, v in constexprs.items()}, attrs=attrs
    )
    out.append(triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"])
print(json.dumps(out))
"""


def hopper_ptx(*kernels: tuple) -> list[list[str]]:
    """The PTX lines of Triton kernels compiled for an H100 (sm_90) on this machine, no GPU needed, each given as
    (module, kernel name, {runtime argument: Triton type ("*bf16", "i32", "fp32")}, {constexpr: value}, {launch
    option: value}) and optionally [runtime arguments divisible by 16], as Triton specializes them at a launch (e.g.
    aligned pointers and strides: what lets it pipeline loads with cp.async). In a process of their own: under
    TRITON_INTERPRET=1 (tests/conftest.py) Triton's own jitted helpers are interpreted and cannot compile."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-c", _PTX_SCRIPT], input=json.dumps(kernels), capture_output=True, text=True, env=env,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return [ptx.splitlines() for ptx in json.loads(run.stdout)]


def ptx_loop(ptx: list[str]) -> list[str]:
    """The PTX lines of a kernel's one loop: from its label to the branch back to it."""
    import re

    labels = {m.group(1): i for i, line in enumerate(ptx) if (m := re.match(r"^(\$L__\w+):", line.strip()))}
    back = [
        (labels[m.group(1)], i)
        for i, line in enumerate(ptx)
        if (m := re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)) and labels.get(m.group(1), i) < i
    ]
    assert len(back) == 1, back
    start, end = back[0]
    return ptx[start : end + 1]


def loads_around_wait(ptx: list[str]) -> tuple[int, int]:
    """(global loads before ``griddepcontrol.wait``, global loads after it) in PTX lines with one wait."""
    (w,) = [i for i, line in enumerate(ptx) if "griddepcontrol.wait" in line]
    loads = [i for i, line in enumerate(ptx) if "ld.global" in line]
    return sum(i < w for i in loads), sum(i > w for i in loads)
