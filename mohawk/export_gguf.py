"""``mohawk export --format gguf``: a student as one GGUF file that llama.cpp runs (``llama-cli``, ``llama-server``),
architecture ``granitehybrid``: the GraniteMoeHybrid form of mohawk.export (norm, Mamba-2 or RoPE/GQA attention,
norm, a dense gated MLP) written straight from the student's weights with the ``gguf`` package.

It takes what the Granite export takes (a Llama-family teacher, mamba2 mixers, pure or hybrid) with two more
conditions, both from llama.cpp's Granite-hybrid layers (src/models/granite-hybrid.cpp, llama.cpp b11434):

- **No projection biases** in the Mamba-2 layers (llama.cpp loads none): students of ``mohawk distill --mixer mamba2
  --no-proj-bias`` (mohawk.mixers.mamba2).
- **d_inner = 2 x hidden** (llama.cpp asserts Mamba-2's expansion of 2, where a student's mixer has heads x head_dim =
  hidden): each Mamba-2 layer is padded with zero heads in whole B/C groups of their own (zero z, x, B, C and dt
  rows, zero conv channels, A = -1, D = 0, norm weight 0, zero out_proj columns). A zero head's output is 0 and its
  norm group is separate, so the padded layer computes the same function.

Everything else is a re-layout: RoPE is written as on (``rope.scaling.finetuned``; llama.cpp's own converter turns
it off for GraniteMoeHybrid checkpoints with Mamba layers), query and key rows are reordered per head for llama.cpp's
rotation of adjacent pairs (transformers rotates the two halves of a head), A is written as -exp(A_log), the MLP as
separate gate / up / down. Weights are float32 (quantise with llama.cpp's ``llama-quantize``). The tokenizer's fields
(``tokenizer.*``) are copied from a GGUF of the teacher (llama.cpp's converter makes one from any Hugging Face
teacher; the default teacher's own GGUF is used when the student's vocabulary is its), after checking that its
tokens are the student tokenizer's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mohawk.errors import MohawkError

ARCH = "granitehybrid"


def unsupported(student) -> str | None:
    """Why ``student`` has no GGUF form (None: it has one)."""
    from mohawk.export import _proj_bias, _unsupported

    why = _unsupported(student, "granite-hybrid")
    if why:
        return why
    if _proj_bias(student):
        return "its mamba2 layers have projection biases, which llama.cpp's have not (distill with --no-proj-bias)"
    c = student.config
    mixers = [m for m, kind in zip(student.model.layers, c.mixers, strict=True) if kind == "mamba2"]
    if not mixers:
        return "it has no mamba2 layer"
    m = mixers[0].mixer
    per_group = (m.num_heads // m.num_groups) * m.head_dim
    if m.d_inner > 2 * c.hidden_size or (2 * c.hidden_size - m.d_inner) % per_group:
        return f"its mixers' width {m.d_inner} does not pad to llama.cpp's 2 x hidden in whole groups"
    return None


def _padded_mamba(mixer, hidden: int) -> dict[str, torch.Tensor]:
    """One Mamba-2 layer under llama.cpp's tensor names (without ``blk.N.``), padded to d_inner = 2 x hidden with
    zero heads (see module docstring). Shapes are numpy's (llama.cpp's dims reversed)."""
    H, P, G, N = mixer.num_heads, mixer.head_dim, mixer.num_groups, mixer.state_size
    r = H // G  # heads per group
    H2 = 2 * hidden // P
    G2 = H2 // r
    s = mixer.in_proj_slices()
    W = mixer.in_proj.weight.detach().float()
    d, d2 = H * P, H2 * P
    rows = torch.zeros(2 * d2 + 2 * G2 * N + H2, hidden)
    rows[:d] = W[s["z"]]
    rows[d2 : d2 + d] = W[s["x"]]
    rows[2 * d2 : 2 * d2 + G * N] = W[s["B"]]
    rows[2 * d2 + G2 * N : 2 * d2 + G2 * N + G * N] = W[s["C"]]
    rows[2 * d2 + 2 * G2 * N : 2 * d2 + 2 * G2 * N + H] = W[s["dt"]]
    conv_w = mixer.conv1d.weight.detach().float()[:, 0]  # (channels, k): x, B, C
    conv_b = mixer.conv1d.bias.detach().float()
    conv = torch.zeros(d2 + 2 * G2 * N, conv_w.shape[1])
    bias = torch.zeros(d2 + 2 * G2 * N)
    for src, dst, n in ((0, 0, d), (d, d2, G * N), (d + G * N, d2 + G2 * N, G * N)):
        conv[dst : dst + n], bias[dst : dst + n] = conv_w[src : src + n], conv_b[src : src + n]

    def heads(t, fill):
        return torch.cat([t.detach().float(), torch.full((H2 - H,), float(fill))])

    out_w = mixer.out_proj.weight.detach().float()
    return {
        "ssm_in.weight": rows,
        "ssm_conv1d.weight": conv,
        "ssm_conv1d.bias": bias,
        "ssm_dt.bias": heads(mixer.dt_bias, 0.0),
        "ssm_a": heads(-torch.exp(mixer.A_log.float()), -1.0)[:, None],
        "ssm_d": heads(mixer.D, 0.0)[:, None],
        "ssm_norm.weight": torch.cat([mixer.norm.weight.detach().float(), torch.zeros(d2 - d)]).view(G2, r * P),
        "ssm_out.weight": torch.cat([out_w, out_w.new_zeros(hidden, d2 - d)], dim=1),
    }


def pairs_from_halves(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows (or a bias) of a query/key projection reordered per head from transformers' RoPE layout (dims i and
    i + d/2 rotate together) to llama.cpp's (dims 2i and 2i + 1): new row 2i + j = old row j * d/2 + i."""
    d = w.shape[0] // heads
    return w.reshape(heads, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def layer_kinds(student) -> list[str]:
    """The GGUF's blocks: the student's ("attention" / "mamba2"), plus one pass-through attention block at the end of
    a pure student, because llama.cpp's hybrid memory needs a KV cache: with none it aborts on the first batch
    (``GGML_ASSERT(buffer)`` in llm_graph_input_mem_hybrid::set_input). Its weights are zeros (unit norms): its
    attention and MLP add exactly 0."""
    kinds = list(student.config.mixers)
    return kinds if "attention" in kinds else [*kinds, "attention"]


def _pass_through(c) -> dict[str, torch.Tensor]:
    h, q, kv = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    shapes = {"attn_q": (q, h), "attn_k": (kv, h), "attn_v": (kv, h), "attn_output": (h, q)}
    shapes.update({"ffn_gate": (c.intermediate_size, h), "ffn_up": (c.intermediate_size, h)})
    shapes["ffn_down"] = (h, c.intermediate_size)
    out = {f"{name}.weight": torch.zeros(shape) for name, shape in shapes.items()}
    return {**out, "attn_norm.weight": torch.ones(h), "ffn_norm.weight": torch.ones(h)}


def tensors(student) -> dict[str, torch.Tensor]:
    """The student's weights under llama.cpp's granitehybrid names, float32 (blocks as ``layer_kinds``)."""
    c = student.config
    sd = {k: v.detach().float() for k, v in student.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not c.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i, (layer, kind) in enumerate(zip(student.model.layers, c.mixers, strict=True)):
        src, blk = f"model.layers.{i}.", f"blk.{i}."
        out[blk + "attn_norm.weight"] = sd[src + "norm1.weight"]
        out[blk + "ffn_norm.weight"] = sd[src + "norm2.weight"]
        for ours, theirs in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
            out[blk + f"{theirs}.weight"] = sd[src + f"mlp.{ours}.weight"]
        if kind == "attention":
            heads = {"q_proj": c.num_attention_heads, "k_proj": c.num_key_value_heads}
            for ours, theirs in (
                ("q_proj", "attn_q"),
                ("k_proj", "attn_k"),
                ("v_proj", "attn_v"),
                ("o_proj", "attn_output"),
            ):
                for p in ("weight", "bias"):
                    t = sd.get(src + f"mixer.{ours}.{p}")
                    if t is not None:
                        out[blk + f"{theirs}.{p}"] = pairs_from_halves(t, heads[ours]) if ours in heads else t
        else:
            out.update({blk + k: v for k, v in _padded_mamba(layer.mixer, c.hidden_size).items()})
    if len(layer_kinds(student)) > c.num_hidden_layers:
        out.update({f"blk.{c.num_hidden_layers}.{k}": v for k, v in _pass_through(c).items()})
    return out


def require(student) -> None:
    """A MohawkError saying why, unless ``student`` has a GGUF form."""
    why = unsupported(student)
    if why:
        raise MohawkError(
            f"no GGUF export for this student: {why}; supported: mamba2 students of Llama-family teachers distilled "
            "with --no-proj-bias (--format granite-hybrid serves the others in transformers and vLLM)"
        )


def resolve_vocab(vocab_gguf: str | Path | None, tokenizer, vocab_size: int) -> Path:
    """``vocab_gguf`` (default: the default teacher's GGUF) after checking that its tokens are ``tokenizer``'s."""
    path = Path(vocab_gguf).expanduser() if vocab_gguf else default_vocab()
    if path is None:
        raise MohawkError("--format gguf needs --vocab-gguf: a GGUF of the student's teacher, for its tokenizer")
    _vocab_fields(path, tokenizer, vocab_size)
    return path


def _vocab_fields(vocab_gguf: Path, tokenizer, vocab_size: int) -> list:
    """The ``tokenizer.*`` fields of ``vocab_gguf`` (gguf ReaderFields), checked against ``tokenizer``."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(vocab_gguf)
    except (OSError, ValueError) as e:
        raise MohawkError(f"--vocab-gguf {vocab_gguf}: not a readable GGUF file ({e})") from None
    fields = [f for name, f in reader.fields.items() if name.startswith("tokenizer.")]
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise MohawkError(f"--vocab-gguf {vocab_gguf}: holds no tokenizer (no tokenizer.ggml.tokens)")
    theirs = tokens.contents()
    ours = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    if [t for t, _ in ours] != theirs[: len(ours)] or len(theirs) > vocab_size:
        raise MohawkError(
            f"--vocab-gguf {vocab_gguf}: its {len(theirs)} tokens are not the student tokenizer's {len(ours)}; give "
            "a GGUF of the student's teacher (llama.cpp's convert_hf_to_gguf.py makes one)"
        )
    return fields


def default_vocab() -> Path | None:
    """The default teacher's GGUF, where it is installed (its tokenizer serves students of it)."""
    from mohawk.teachers.load import resolve_teacher

    try:
        path = Path(resolve_teacher(None))
    except MohawkError:
        return None
    return path if path.suffix == ".gguf" and path.is_file() else None


def write(student, tokenizer, path: Path, vocab_gguf: Path | None = None) -> dict:
    """Write ``student`` (a MohawkForCausalLM with a GGUF form) to the GGUF file ``path``; the tokenizer fields from
    ``vocab_gguf`` (default: the default teacher's GGUF). Returns what was written."""
    from gguf import GGUFValueType, GGUFWriter

    require(student)
    c = student.config
    vocab_gguf = resolve_vocab(vocab_gguf, tokenizer, c.vocab_size)
    fields = _vocab_fields(vocab_gguf, tokenizer, c.vocab_size)
    weights = tensors(student)
    kinds = layer_kinds(student)
    mamba = next(layer.mixer for layer, k in zip(student.model.layers, c.mixers, strict=True) if k == "mamba2")
    from mohawk.export import _rope

    rope_theta, _ = _rope(student)
    w = GGUFWriter(path, ARCH)
    w.add_name("mohawk student")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(len(kinds))
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv([c.num_key_value_heads if k == "attention" else 0 for k in kinds])
    w.add_rope_freq_base(rope_theta)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_scaling_finetuned(True)  # llama.cpp's Granite-hybrid switch for RoPE in its attention layers
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(0)  # all float32
    heads = 2 * c.hidden_size // mamba.head_dim  # after padding
    w.add_ssm_conv_kernel(mamba.conv_kernel)
    w.add_ssm_state_size(mamba.state_size)
    w.add_ssm_group_count(heads // (mamba.num_heads // mamba.num_groups))
    w.add_ssm_inner_size(2 * c.hidden_size)
    w.add_ssm_time_step_rank(heads)
    for f in fields:
        value = f.contents()
        kind = f.types[0]
        sub = f.types[1] if kind == GGUFValueType.ARRAY else None
        w.add_key_value(f.name, value, kind, sub_type=sub)
    for name, t in weights.items():
        w.add_tensor(name, np.ascontiguousarray(t.numpy(), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"architecture": ARCH, "tensors": len(weights), "vocab_gguf": str(vocab_gguf)}
