"""Teacher adapters: exact re-expression of every family, attention matrices, captures, errors."""

import json

import pytest
import torch

import mohawk
from mohawk.errors import MohawkError
from mohawk.teachers import adapter_for
from tests.utils import VOCAB, tiny_teacher


def test_all_attention_student_reproduces_teacher_logits(teacher, ids):
    student = mohawk.from_teacher(teacher, attention_layers="all").eval()
    with torch.no_grad():
        torch.testing.assert_close(student(ids).logits, teacher(ids).logits, atol=1e-4, rtol=1e-4)


def test_attention_matrices_reproduce_teacher_attention(teacher, ids):
    """HF's eager attention weights equal our materialized matrices; captures have the right shapes."""
    adapter = adapter_for(teacher)
    with torch.no_grad():
        out = teacher(ids, output_attentions=True)
    caps = adapter.capture(ids)
    n = adapter.num_layers
    assert len(caps.mixer_inputs) == len(caps.block_inputs) == len(caps.block_outputs) == n
    torch.testing.assert_close(caps.logits, out.logits)
    for i in range(n):
        M = adapter.attention(i).materialize(caps.mixer_inputs[i])
        torch.testing.assert_close(M, out.attentions[i].float(), atol=1e-5, rtol=1e-5)
        # the block output of layer i is the block input of layer i + 1
        if i + 1 < n:
            torch.testing.assert_close(caps.block_outputs[i], caps.block_inputs[i + 1])


def test_student_blocks_reproduce_teacher_blocks(teacher, ids):
    """Stage 2's premise: student block i on the teacher's block input gives the teacher's block output."""
    adapter = adapter_for(teacher)
    student = mohawk.from_teacher(adapter, attention_layers="all").eval()
    caps = adapter.capture(ids)
    with torch.no_grad():
        for i, block in enumerate(student.model.layers):
            torch.testing.assert_close(block(caps.block_inputs[i]), caps.block_outputs[i], atol=1e-5, rtol=1e-5)


def test_ssd_student_copies_everything_but_mixers(ids):
    t = tiny_teacher("llama")
    s = mohawk.from_teacher(t)
    assert s.config.mixers == ["ssd"] * 3
    torch.testing.assert_close(s.model.layers[1].mlp.up_proj.weight, t.model.layers[1].mlp.up_proj.weight)
    torch.testing.assert_close(s.model.norm.weight, t.model.norm.weight)
    # SSD init from attention: x <- W_V (each KV head repeated for its query heads), out_proj <- W_O
    mixer = s.model.layers[0].mixer
    sl = mixer.in_proj_slices()
    wv = t.model.layers[0].self_attn.v_proj.weight.unflatten(0, (2, 8)).repeat_interleave(2, 0).flatten(0, 1)
    torch.testing.assert_close(mixer.in_proj.weight[sl["x"]], wv)
    torch.testing.assert_close(mixer.out_proj.weight, t.model.layers[0].self_attn.o_proj.weight)
    assert torch.isfinite(s(ids).logits).all()


def test_unsupported_architecture_is_one_clear_error():
    import transformers as tf

    bert = tf.BertForMaskedLM(
        tf.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64
        )
    )
    with pytest.raises(
        MohawkError, match="unsupported teacher architecture .bert.; supported: gemma3_text, gpt2, gpt_neox"
    ):
        mohawk.from_teacher(bert)


@pytest.mark.parametrize("layers,msg", [([0, 3], "out of range"), ([1, 1], "repeated"), ("1,x", "integers")])
def test_bad_attention_layers(layers, msg):
    with pytest.raises(MohawkError, match=msg):
        mohawk.from_teacher(tiny_teacher("gpt2"), attention_layers=layers)


def test_load_teacher_from_local_dir(tmp_path, ids):
    t = tiny_teacher("gpt_neox")
    t.save_pretrained(tmp_path)
    model, tok, adapter = mohawk.load_teacher(str(tmp_path))
    assert adapter.num_layers == 3 and not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(ids).logits, t(ids).logits)


def test_load_teacher_missing_path_is_clear():
    with pytest.raises(MohawkError, match="no such file or directory: /nonexistent/teacher-dir"):
        mohawk.load_teacher("/nonexistent/teacher-dir")
    with pytest.raises(MohawkError, match="no such file or directory: model.gguf"):
        mohawk.load_teacher("model.gguf")


@pytest.mark.slow
def test_real_smollm2_teacher_loads_and_speaks():
    model, tok, adapter = mohawk.load_teacher()
    assert adapter.num_layers == 30 and model.config.num_key_value_heads == 3
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0])
    s = mohawk.from_teacher(adapter, attention_layers="all")
    torch.testing.assert_close(s(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)


def test_fast_sampler_writes_the_teachers_text(tmp_path, monkeypatch):
    """Where decoding graphs run (patched on here: their logic runs eagerly on the CPU), the teacher samples
    re-expressed as an all-attention mohawk model through generate's fast path; near-greedy (temperature 1e-4) it
    writes exactly the text the teacher's own generate writes, sample by sample, and counts the same tokens."""
    import lzma

    from mohawk.models import MohawkForCausalLM, graphs
    from mohawk.models import modeling_mohawk as modeling
    from mohawk.teachers import sample
    from tests.utils import tiny_tokenizer

    teacher, tok = tiny_teacher("llama"), tiny_tokenizer()
    kw = {"new_tokens": 12, "prompt_tokens": 4, "batch_size": 3, "seed": 2, "temperature": 1e-4}
    slow = sample.write_corpus(teacher, tok, tmp_path / "hf.jsonl.xz", 160, **kw)
    assert sample.fast_sampler(teacher) is teacher and slow["sampler"] == "transformers"  # on the CPU
    monkeypatch.setattr(modeling, "graphs_supported", lambda device: True)
    fast_model = sample.fast_sampler(teacher)
    assert isinstance(fast_model, MohawkForCausalLM) and set(fast_model.config.mixers) == {"attention"}
    assert sample.fast_sampler(fast_model) is fast_model
    runs = []
    real = graphs.generate_fast
    monkeypatch.setattr(modeling, "generate_fast", lambda *a, **k: runs.append(k) or real(*a, **k))
    fast = sample.write_corpus(teacher, tok, tmp_path / "fast.jsonl.xz", 160, **kw)
    assert fast["sampler"] == "mohawk graphs" and len(runs) == -(-fast["samples"] // 3) and runs[0]["sampling"]
    read = lambda name: lzma.open(tmp_path / name, "rt").read()  # noqa: E731
    assert read("fast.jsonl.xz") == read("hf.jsonl.xz") and fast["tokens"] == slow["tokens"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_sampler_on_cuda_writes_the_teachers_text(tmp_path):
    """On a GPU the sampler takes mohawk's captured decoding graphs by itself, and near-greedy writes the text of the
    teacher's own static-cache generate."""
    import lzma

    from mohawk.teachers import sample
    from tests.utils import tiny_tokenizer

    teacher, tok = tiny_teacher("llama").cuda(), tiny_tokenizer()
    kw = {"new_tokens": 40, "prompt_tokens": 4, "batch_size": 8, "seed": 0, "temperature": 1e-4}
    fast = sample.write_corpus(teacher, tok, tmp_path / "fast.jsonl.xz", 1000, **kw)
    assert fast["sampler"] == "mohawk graphs"
    slow = list(sample.sample(teacher, tok, sample.prompts(tok, 23, 4, seed=0), 40, 8, 1e-4, 0))
    assert [json.loads(x)["text"] for x in lzma.open(tmp_path / "fast.jsonl.xz", "rt")] == [t for t, _ in slow]


def test_teacher_writes_a_corpus_and_reuses_it(tmp_path):
    """--data teacher's sampler: about the asked tokens, samples that start with vendored-text prompts, seeded, and
    a second call with the same settings reuses the file."""
    import lzma

    from mohawk.teachers.sample import write_corpus
    from tests.utils import tiny_tokenizer

    teacher, tok = tiny_teacher("llama"), tiny_tokenizer()
    path = tmp_path / "t.jsonl.xz"
    stats = write_corpus(teacher, tok, path, 600, new_tokens=20, prompt_tokens=4, batch_size=4, seed=1)
    rows = [json.loads(x) for x in lzma.open(path, "rt")]
    assert stats["samples"] == len(rows) == -(-600 // 24) and 0 < stats["tokens"] <= 600 + 24
    assert all(r["text"] for r in rows)
    assert 0 < stats["first_batch_s"] <= stats["seconds"] and stats["steady_tokens_per_s"] > 0  # 7 batches
    again = tmp_path / "u.jsonl.xz"
    write_corpus(teacher, tok, again, 600, new_tokens=20, prompt_tokens=4, batch_size=4, seed=1)
    assert lzma.open(again, "rt").read() == lzma.open(path, "rt").read()  # seeded
    mtime = path.stat().st_mtime_ns
    assert write_corpus(teacher, tok, path, 600, new_tokens=20, prompt_tokens=4, batch_size=4, seed=1) == stats
    assert path.stat().st_mtime_ns == mtime  # reused, not resampled
