"""Tiny random-weight teachers of every supported family, built from transformers configs (no downloads)."""

from __future__ import annotations

import pytest
import torch

VOCAB = 96


def tiny_teacher(family: str, seed: int = 0, **overrides):
    """A small random teacher of ``family`` in eval mode, float32."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=512)
    if family == "llama":
        cfg = tf.LlamaConfig(**common, num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=False)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True)
    elif family == "mistral":
        cfg = tf.MistralConfig(**common, num_key_value_heads=1, sliding_window=None)
    elif family == "phi":
        cfg = tf.PhiConfig(**common, partial_rotary_factor=0.5, resid_pdrop=0.0, embd_pdrop=0.0,
                           attention_dropout=0.0)
    elif family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(**common, rotary_pct=0.25, use_parallel_residual=True, hidden_dropout=0.0,
                               attention_dropout=0.0)
    elif family == "gpt_neox_seq":
        cfg = tf.GPTNeoXConfig(**common, rotary_pct=1.0, use_parallel_residual=False)
    elif family == "gpt2":
        cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=512, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0)
    else:
        raise ValueError(family)
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


FAMILIES = ["llama", "qwen2", "mistral", "phi", "gpt_neox", "gpt_neox_seq", "gpt2"]


@pytest.fixture(params=FAMILIES)
def teacher(request):
    return tiny_teacher(request.param)


@pytest.fixture
def ids():
    torch.manual_seed(1)
    return torch.randint(0, VOCAB, (2, 24))
