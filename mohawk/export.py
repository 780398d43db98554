"""``mohawk export``: a saved student -> a checkpoint that stock software loads without mohawk.

- ``bamba``: a student of a Llama-family teacher (Llama, Qwen2, Mistral, SmolLM2) whose replaced layers are ``mamba2``
  mixers, pure or hybrid with attention layers anywhere, becomes a ``BambaForCausalLM`` checkpoint (config.json,
  model.safetensors, tokenizer, generation_config.json): plain ``transformers`` loads it with no remote code, and the
  engines that serve Bamba serve it. The two compute the same function (mohawk.mixers.mamba2 is BambaMixer's
  computation; blocks, norms, MLP, RoPE and head map one to one); the export checks the logits of both on random
  tokens before it returns.
- ``remote-code``: any student, as mohawk saves it, with its own modelling code (``trust_remote_code=True``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mohawk.errors import MohawkError

FORMATS = ("bamba", "remote-code")
MARKER = ".mohawk-export"
SUPPORTED = "Llama-family teachers (llama, qwen2, mistral, SmolLM2) with mamba2 mixers (mohawk distill --mixer mamba2)"


def bamba_config(student):
    """The BambaConfig of ``student`` (a MohawkForCausalLM), or a MohawkError saying why it has no Bamba form."""
    from transformers import BambaConfig

    c = student.config
    kinds = set(c.mixers) - {"attention"}
    why = None
    teacher = getattr(c, "teacher_model_type", None)
    if teacher not in (None, "llama", "qwen2", "mistral"):
        why = f"its teacher is a {teacher!r} model"
    elif kinds - {"mamba2"}:
        why = f"its mixers are {', '.join(sorted(kinds - {'mamba2'}))}"
    elif (c.block_type, c.norm_type, c.mlp_type, c.position_embedding) != ("sequential", "rmsnorm", "gated", "rope"):
        why = f"its blocks are {c.block_type} / {c.norm_type} / {c.mlp_type} MLP / {c.position_embedding} positions"
    elif c.hidden_act != "silu":
        why = f"its MLP activation is {c.hidden_act} (Bamba uses one activation, SiLU, for MLP and conv)"
    elif (c.num_attention_heads * c.head_dim) % c.hidden_size or c.head_dim != c.hidden_size // c.num_attention_heads:
        why = "its heads x head_dim is not a multiple of hidden_size equal to it per head"
    elif c.sliding_window:
        why = "its attention uses a sliding window"
    if why:
        raise MohawkError(
            f"no Bamba export for this student: {why}; supported: {SUPPORTED} (--format remote-code "
            "exports any student)"
        )
    attn = c.attention_layers
    rope_theta, rotary_dim = _rope(student)
    mixer = next((layer.mixer for layer in student.model.layers if c.mixers[layer.mixer.layer_idx] == "mamba2"), None)
    return BambaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        hidden_act="silu",
        rms_norm_eps=c.norm_eps,
        max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=bool(c.tie_word_embeddings),
        attn_layer_indices=attn or None,
        mamba_n_heads=c.num_attention_heads,
        mamba_d_head=c.head_dim,
        mamba_n_groups=mixer.num_groups if mixer else c.num_attention_heads,
        mamba_d_state=mixer.state_size if mixer else c.ssd_state_size,
        mamba_d_conv=c.ssd_conv_kernel,
        mamba_expand=c.num_attention_heads * c.head_dim // c.hidden_size,
        mamba_chunk_size=c.ssd_chunk_size,
        mamba_conv_bias=True,
        mamba_proj_bias=True,
        attention_bias=bool(c.attention_qkv_bias or c.attention_out_bias),
        mlp_bias=bool(c.mlp_bias),
        **{k: getattr(c, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
        rope_parameters={
            "rope_type": "default",
            "rope_theta": rope_theta,
            "partial_rotary_factor": rotary_dim / c.head_dim,
        },
    )


def _rope(student) -> tuple[float, int]:
    """(rope_theta, rotary_dim) that give the student's attention layers their inv_freq; MohawkError for a RoPE
    that the default form does not reproduce (e.g. Llama 3's frequency scaling)."""
    c = student.config
    rotary = c.rotary_dim or c.head_dim
    layers = [layer.mixer for layer in student.model.layers if c.mixers[layer.mixer.layer_idx] == "attention"]
    if not layers:
        return float(c.rope_theta), rotary
    inv = layers[0].inv_freq.detach().double().cpu()
    theta = float(inv[1] ** (-rotary / 2)) if inv.numel() > 1 else float(c.rope_theta)
    want = 1.0 / theta ** (torch.arange(0, rotary, 2, dtype=torch.double) / rotary)
    if not torch.allclose(inv, want, rtol=1e-5) or getattr(c, "rope_attention_scaling", 1.0) != 1.0:
        raise MohawkError(
            "no Bamba export for this student: its teacher's RoPE is not the default form (scaled "
            "frequencies); use --format remote-code"
        )
    return round(theta, 6), rotary


def bamba_state_dict(student, config) -> dict[str, torch.Tensor]:
    """The student's weights under BambaForCausalLM's names (biases Bamba has and the student lacks are zeros)."""
    sd = {k: v.detach() for k, v in student.state_dict().items()}
    out = {
        "model.embed_tokens.weight": sd["model.embed_tokens.weight"],
        "model.final_layernorm.weight": sd["model.norm.weight"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    for i, kind in enumerate(student.config.mixers):
        src, dst = f"model.layers.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = sd[src + "norm1.weight"]
        out[dst + "pre_ff_layernorm.weight"] = sd[src + "norm2.weight"]
        for name in ("gate_proj", "up_proj", "down_proj"):
            for p in ("weight", "bias"):
                if src + f"mlp.{name}.{p}" in sd:
                    out[dst + f"feed_forward.{name}.{p}"] = sd[src + f"mlp.{name}.{p}"]
        m = src + "mixer."
        if kind == "attention":
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                out[dst + f"self_attn.{name}.weight"] = sd[m + f"{name}.weight"]
                if config.attention_bias:
                    w = sd[m + f"{name}.weight"]
                    out[dst + f"self_attn.{name}.bias"] = sd.get(m + f"{name}.bias", w.new_zeros(w.shape[0]))
        else:
            for name in (
                "in_proj.weight",
                "in_proj.bias",
                "conv1d.weight",
                "conv1d.bias",
                "dt_bias",
                "A_log",
                "D",
                "norm.weight",
                "out_proj.weight",
            ):
                out[dst + f"mamba.{name}"] = sd[m + name]
            w = sd[m + "out_proj.weight"]
            out[dst + "mamba.out_proj.bias"] = sd.get(m + "out_proj.bias", w.new_zeros(w.shape[0]))
    if config.tie_word_embeddings:
        out.pop("lm_head.weight")
    return out


def to_bamba(student):
    """A BambaForCausalLM (float32, eval) computing what ``student`` computes."""
    from transformers import BambaForCausalLM

    config = bamba_config(student)
    model = BambaForCausalLM(config).float().eval()
    missing, unexpected = model.load_state_dict(bamba_state_dict(student, config), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise MohawkError(
            f"internal: the Bamba weight map is incomplete (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    if not config.attn_layer_indices:
        # transformers' hybrid cache reports the sequence length through an attention layer and refuses a model
        # without one (5.24: "get_seq_length can only be called on Attention layers"): run and generate without one
        model.config.use_cache = False
        model.generation_config.use_cache = False
    return model


def check_equal(student, exported, vocab: int, tol: float = 1e-4) -> float:
    """Max |logit difference| of the two models on random tokens (float32); MohawkError above ``tol``."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 48), generator=g)
    s, e = student.float().eval(), exported.float().eval()
    with torch.no_grad():
        a = s(ids, use_cache=False).logits
        b = e(ids, use_cache=False).logits
    diff = float((a - b).abs().max())
    if not diff <= tol:
        raise MohawkError(
            f"internal: the exported model's logits differ from the student's by {diff:.3g} (> {tol:g}); nothing kept"
        )
    return diff


def export(student_dir: str, out: str, fmt: str = "bamba", overwrite: bool = False) -> dict:
    """Write ``student_dir``'s student into ``out`` in format ``fmt``; returns what was checked."""
    from mohawk.models.loading import load_model

    if fmt not in FORMATS:
        raise MohawkError(f"unknown --format {fmt!r}: use {' or '.join(FORMATS)}")
    dest = Path(out)
    if dest.exists() and not dest.is_dir():
        raise MohawkError(f"--out {dest} exists and is not a directory")
    if Path(student_dir).resolve() == dest.resolve():
        raise MohawkError("--out is the student's own directory: choose another")
    if dest.is_dir() and any(dest.iterdir()):
        if not overwrite:
            raise MohawkError(f"--out {dest} is not empty: pass --overwrite to replace an earlier export there")
        if not (dest / MARKER).is_file():
            raise MohawkError(f"--overwrite refused: {dest} does not hold a mohawk export (no {MARKER})")
    student, tokenizer = load_model(student_dir, "cpu", tokenizer=True)
    if getattr(student.config, "model_type", None) != "mohawk":
        raise MohawkError(f"{student_dir} is not a mohawk student (model_type {student.config.model_type!r})")
    student = student.float()
    info = {"format": fmt, "student": str(student_dir)}
    if fmt == "bamba":
        model = to_bamba(student)
        info["max_logit_difference"] = check_equal(student, model, student.config.vocab_size)
        info["architecture"] = "BambaForCausalLM"
    else:
        model = student
    if dest.is_dir():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    (dest / MARKER).write_text(json.dumps(info) + "\n")
    return info
