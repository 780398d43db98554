"""mohawk export --format gguf: the file llama.cpp loads (architecture granitehybrid). llama.cpp itself is not
installed here (results/gguf-llamacpp/ holds its measured logits and generations); these tests read the file back
with the gguf package and rebuild it as transformers' GraniteMoeHybridForCausalLM from the GGUF tensors alone (their
layout undone by an independent re-statement of llama.cpp's conventions): logits within 1e-4 of the student and the
same greedy tokens, so the zero-head padding, the names, the shapes and the metadata are checked by a stock model."""

import math

import numpy as np
import pytest
import torch

import mohawk
from mohawk.cli import main
from tests.utils import VOCAB, one_error_line, saved_student, tiny_tokenizer


def _rope_halves(x, pos, theta=10000.0):
    """transformers' RoPE: dims i and i + d/2 rotate together by pos * theta^(-2i/d). x (L, d)."""
    d = x.shape[-1]
    f = pos[:, None] * theta ** (-torch.arange(0, d, 2).double() / d)  # (L, d/2)
    a, b = x[:, : d // 2], x[:, d // 2 :]
    return torch.cat([a * f.cos() - b * f.sin(), a * f.sin() + b * f.cos()], -1)


def _rope_pairs(x, pos, theta=10000.0):
    """llama.cpp's normal RoPE: dims 2i and 2i + 1 rotate together by the same angle."""
    d = x.shape[-1]
    f = pos[:, None] * theta ** (-torch.arange(0, d, 2).double() / d)
    a, b = x[:, 0::2], x[:, 1::2]
    out = torch.empty_like(x)
    out[:, 0::2], out[:, 1::2] = a * f.cos() - b * f.sin(), a * f.sin() + b * f.cos()
    return out


def test_query_key_rows_reordered_for_adjacent_pair_rope():
    """Attention logits of the reordered projections under llama.cpp's RoPE == the original's under transformers'
    (a reorder in the other direction, or none, changes them)."""
    from mohawk.export_gguf import pairs_from_halves

    g = torch.Generator().manual_seed(0)
    heads, d, hidden, L = 3, 8, 12, 7
    wq, wk = (torch.randn(heads * d, hidden, generator=g, dtype=torch.double) for _ in range(2))
    u = torch.randn(L, hidden, generator=g, dtype=torch.double)
    pos = torch.arange(L).double()
    for h in range(heads):
        rows = slice(h * d, (h + 1) * d)
        want = _rope_halves(u @ wq[rows].T, pos) @ _rope_halves(u @ wk[rows].T, pos).T
        q2, k2 = pairs_from_halves(wq, heads)[rows], pairs_from_halves(wk, heads)[rows]
        got = _rope_pairs(u @ q2.T, pos) @ _rope_pairs(u @ k2.T, pos).T
        torch.testing.assert_close(got, want)
        wrong = _rope_pairs(u @ wq[rows].T, pos) @ _rope_pairs(u @ wk[rows].T, pos).T
        assert (wrong - want).abs().max() > 1e-3
    bias = torch.arange(heads * d).double()
    assert pairs_from_halves(bias, heads)[:4].tolist() == [0, 4, 1, 5]


def _vocab_gguf(path, tokens):
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_eos_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _tokens():
    return [t for t, _ in sorted(tiny_tokenizer().get_vocab().items(), key=lambda kv: kv[1])]


def _student(tmp_path, attention_layers, proj_bias=False, groups=None, family="llama"):
    options = {"ssd_num_groups": groups} if groups else {}
    return saved_student(
        tmp_path, family, attention_layers=attention_layers, mixer="mamba2", ssd_proj_bias=proj_bias, **options
    )


def _granite_from_gguf(path):
    """transformers' GraniteMoeHybridForCausalLM built from the GGUF's metadata and tensors alone."""
    from gguf import GGUFReader
    from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

    r = GGUFReader(path)
    kv = {name: f.contents() for name, f in r.fields.items()}
    t = {x.name: torch.from_numpy(np.array(x.data)).reshape([int(n) for n in reversed(x.shape)]) for x in r.tensors}
    a = kv["general.architecture"]
    n, hidden, heads = kv[f"{a}.block_count"], kv[f"{a}.embedding_length"], kv[f"{a}.attention.head_count"]
    kv_heads = kv[f"{a}.attention.head_count_kv"]
    m_heads, d_inner = kv[f"{a}.ssm.time_step_rank"], kv[f"{a}.ssm.inner_size"]
    assert kv[f"{a}.rope.scaling.finetuned"] is True  # RoPE on in llama.cpp's attention layers
    kv_n = max(kv_heads)
    bias = any(name.endswith("attn_q.bias") for name in t)  # Qwen2's q/k/v biases
    config = GraniteMoeHybridConfig(
        attention_bias=bias,
        vocab_size=t["token_embd.weight"].shape[0],
        hidden_size=hidden,
        intermediate_size=kv[f"{a}.feed_forward_length"],
        shared_intermediate_size=kv[f"{a}.feed_forward_length"],
        num_hidden_layers=n,
        num_attention_heads=heads,
        num_key_value_heads=kv_n,
        num_local_experts=0,
        num_experts_per_tok=0,
        layer_types=["attention" if k else "mamba" for k in kv_heads],
        position_embedding_type="rope",
        rope_parameters={"rope_type": "default", "rope_theta": kv[f"{a}.rope.freq_base"]},
        rms_norm_eps=kv[f"{a}.attention.layer_norm_rms_epsilon"],
        embedding_multiplier=1.0,
        residual_multiplier=1.0,
        logits_scaling=1.0,
        attention_multiplier=(hidden // heads) ** -0.5,
        mamba_n_heads=m_heads,
        mamba_d_head=d_inner // m_heads,
        mamba_n_groups=kv[f"{a}.ssm.group_count"],
        mamba_d_state=kv[f"{a}.ssm.state_size"],
        mamba_d_conv=kv[f"{a}.ssm.conv_kernel"],
        mamba_expand=d_inner // hidden,
        mamba_conv_bias=True,
        mamba_proj_bias=False,
        tie_word_embeddings="output.weight" not in t,
        max_position_embeddings=kv[f"{a}.context_length"],
    )
    d = hidden // heads

    def halves(w, h):  # llama.cpp's adjacent pairs back to transformers' halves
        return w.reshape(h, d // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)

    sd = {"model.embed_tokens.weight": t["token_embd.weight"], "model.norm.weight": t["output_norm.weight"]}
    if "output.weight" in t:
        sd["lm_head.weight"] = t["output.weight"]
    for i in range(n):
        b, o = f"blk.{i}.", f"model.layers.{i}."
        sd[o + "input_layernorm.weight"] = t[b + "attn_norm.weight"]
        sd[o + "post_attention_layernorm.weight"] = t[b + "ffn_norm.weight"]
        sd[o + "shared_mlp.input_linear.weight"] = torch.cat([t[b + "ffn_gate.weight"], t[b + "ffn_up.weight"]])
        sd[o + "shared_mlp.output_linear.weight"] = t[b + "ffn_down.weight"]
        if kv_heads[i]:
            sd[o + "self_attn.q_proj.weight"] = halves(t[b + "attn_q.weight"], heads)
            sd[o + "self_attn.k_proj.weight"] = halves(t[b + "attn_k.weight"], kv_heads[i])
            sd[o + "self_attn.v_proj.weight"] = t[b + "attn_v.weight"]
            sd[o + "self_attn.o_proj.weight"] = t[b + "attn_output.weight"]
            if bias:
                sd[o + "self_attn.q_proj.bias"] = halves(t[b + "attn_q.bias"], heads)
                sd[o + "self_attn.k_proj.bias"] = halves(t[b + "attn_k.bias"], kv_heads[i])
                sd[o + "self_attn.v_proj.bias"] = t[b + "attn_v.bias"]
                sd[o + "self_attn.o_proj.bias"] = torch.zeros(hidden)
        else:
            m = o + "mamba."
            sd[m + "in_proj.weight"] = t[b + "ssm_in.weight"]
            sd[m + "conv1d.weight"] = t[b + "ssm_conv1d.weight"][:, None, :]
            sd[m + "conv1d.bias"] = t[b + "ssm_conv1d.bias"]
            sd[m + "dt_bias"] = t[b + "ssm_dt.bias"]
            sd[m + "A_log"] = torch.log(-t[b + "ssm_a"].flatten())
            sd[m + "D"] = t[b + "ssm_d"].flatten()
            sd[m + "norm.weight"] = t[b + "ssm_norm.weight"].flatten()
            sd[m + "out_proj.weight"] = t[b + "ssm_out.weight"]
    model = GraniteMoeHybridForCausalLM(config).float().eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model, kv


@pytest.mark.parametrize(
    "family,attention_layers,groups",
    [("llama", None, None), ("llama", [1], None), ("llama", [2], 2), ("qwen2", [0], None)],
)
def test_gguf_rebuilt_as_a_stock_model_equals_the_student(tmp_path, family, attention_layers, groups):
    student, d = _student(tmp_path, attention_layers, groups=groups, family=family)
    vocab = _vocab_gguf(tmp_path / "vocab.gguf", _tokens())
    out = tmp_path / "gguf"
    assert main(["export", str(d), "--out", str(out), "--format", "gguf", "--vocab-gguf", str(vocab)]) == 0
    model, kv = _granite_from_gguf(out / "model.gguf")
    hidden, n = student.config.hidden_size, student.config.num_hidden_layers
    assert kv["general.architecture"] == "granitehybrid" and kv["granitehybrid.ssm.inner_size"] == 2 * hidden
    assert kv["tokenizer.ggml.tokens"] == _tokens() and kv["tokenizer.ggml.model"] == "gpt2"
    kinds = ["attention" if i in (attention_layers or []) else "mamba" for i in range(n)]
    # a pure student gains a pass-through attention block: llama.cpp's hybrid memory needs a KV cache
    assert [bool(k) for k in kv["granitehybrid.attention.head_count_kv"]] == [k == "attention" for k in kinds] + (
        [] if attention_layers else [True]
    )
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = student(ids).logits, model(ids).logits
        assert (got - want).abs().max() < 1e-4
        gen = model.generate(ids[:, :6], max_new_tokens=10, do_sample=False, use_cache=True)
        assert gen.tolist() == student.generate(ids[:, :6], max_new_tokens=10, do_sample=False).tolist()


def test_gguf_padding_is_zero_heads_in_groups_of_their_own(tmp_path):
    """4 heads of 8 in hidden 32 become 8 heads; the added heads' rows, channels and out_proj columns are 0."""
    from mohawk.export_gguf import tensors

    student, _ = _student(tmp_path, None)
    t = tensors(student)
    m = student.model.layers[0].mixer
    H, P, N = m.num_heads, m.head_dim, m.state_size
    H2 = 2 * student.config.hidden_size // P
    assert t["blk.0.ssm_in.weight"].shape == (2 * H2 * P + 2 * H2 * N + H2, 32)
    assert t["blk.0.ssm_out.weight"][:, H * P :].abs().sum() == 0
    assert t["blk.0.ssm_norm.weight"].shape == (H2, P) and t["blk.0.ssm_norm.weight"][H:].abs().sum() == 0
    torch.testing.assert_close(t["blk.0.ssm_a"][:H, 0], -torch.exp(m.A_log.detach()))
    assert math.isclose(float(t["blk.0.ssm_a"][H:].mean()), -1.0)


def test_gguf_refusals_are_one_line(tmp_path, capsys, monkeypatch):
    student, d = _student(tmp_path, [1], proj_bias=True)
    vocab = _vocab_gguf(tmp_path / "vocab.gguf", _tokens())
    assert main(["export", str(d), "--out", str(tmp_path / "a"), "--format", "gguf", "--vocab-gguf", str(vocab)]) != 0
    assert "--no-proj-bias" in one_error_line(capsys)
    _, d = _student(tmp_path / "free", [1])
    other = _vocab_gguf(tmp_path / "other.gguf", ["x", "y"] + _tokens()[2:])
    assert main(["export", str(d), "--out", str(tmp_path / "b"), "--format", "gguf", "--vocab-gguf", str(other)]) != 0
    assert "not the student tokenizer's" in one_error_line(capsys)
    assert not (tmp_path / "b" / "model.gguf").exists()
    from mohawk import export_gguf

    monkeypatch.setattr(export_gguf, "default_vocab", lambda: None)  # no default teacher installed
    assert main(["export", str(d), "--out", str(tmp_path / "c"), "--format", "gguf"]) != 0
    assert "needs --vocab-gguf" in one_error_line(capsys)


@pytest.mark.slow
def test_real_teacher_student_exports_with_the_default_vocab(tmp_path):
    """A --no-proj-bias hybrid of the real SmolLM2 teacher: the default teacher's GGUF gives the tokenizer (its
    tokens are the student's), and the file rebuilt as a stock model gives the student's logits."""
    from mohawk.export import export
    from mohawk.teachers.load import load_teacher

    teacher, tok, _ = load_teacher(None)
    torch.manual_seed(0)
    s = mohawk.from_teacher(teacher, attention_layers=[17, 18, 20, 23], mixer="mamba2", ssd_proj_bias=False).eval()
    s.save_pretrained(tmp_path / "student")
    tok.save_pretrained(tmp_path / "student")
    info = export(str(tmp_path / "student"), str(tmp_path / "gguf"), "gguf")
    assert info["vocab_gguf"].endswith(".gguf")
    model, kv = _granite_from_gguf(tmp_path / "gguf" / "model.gguf")
    assert kv["tokenizer.ggml.pre"] == "smollm" and len(kv["tokenizer.ggml.tokens"]) == 49152
    ids = tok("The capital of France is Paris. The capital of Germany is", return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = s(ids).logits, model(ids).logits
    assert float((got - want).norm() / want.norm()) < 1e-4
