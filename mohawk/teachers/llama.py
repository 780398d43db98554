"""Llama-family teachers (Llama, Qwen2, Mistral, SmolLM2): sequential pre-norm blocks with RMSNorm, RoPE, GQA and a
gated MLP. Biases are read off the modules (Qwen2 has q/k/v biases)."""

from __future__ import annotations

from mohawk.teachers.base import TeacherAdapter, linear_weights, norm_weights, unsupported


class LlamaAdapter(TeacherAdapter):
    model_types = ("llama", "qwen2", "mistral")

    def check_supported(self) -> None:
        types = getattr(self.config, "layer_types", None) or []
        if len(set(types)) > 1:
            raise unsupported(f"layers of mixed attention types {sorted(set(types))}")

    def layers(self):
        return list(self.model.model.layers)

    def attention_module(self, layer):
        return layer.self_attn

    def config_kwargs(self) -> dict:
        c, layer0 = self.config, self.layers()[0]
        attn, mlp = layer0.self_attn, layer0.mlp
        sliding = getattr(c, "sliding_window", None) if getattr(c, "use_sliding_window", True) else None
        return dict(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads,
            head_dim=attn.head_dim,
            block_type="sequential",
            norm_type="rmsnorm",
            norm_eps=c.rms_norm_eps,
            mlp_type="gated",
            hidden_act=c.hidden_act,
            mlp_bias=mlp.up_proj.bias is not None,
            position_embedding="rope",
            max_position_embeddings=c.max_position_embeddings,
            attention_qkv_bias=attn.q_proj.bias is not None,
            attention_out_bias=attn.o_proj.bias is not None,
            attention_scale=attn.scaling,
            sliding_window=sliding,
            lm_head_bias=False,
            tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        )

    def global_weights(self):
        m = self.model
        return {
            "model.embed_tokens.weight": m.model.embed_tokens.weight,
            **norm_weights("model.norm", m.model.norm),
            "lm_head.weight": m.lm_head.weight,
        }

    def layer_weights(self, i):
        layer = self.layers()[i]
        a, mlp = layer.self_attn, layer.mlp
        out = {**norm_weights("norm1", layer.input_layernorm), **norm_weights("norm2", layer.post_attention_layernorm)}
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out.update(linear_weights(f"mixer.{name}", getattr(a, name)))
        for name in ("gate_proj", "up_proj", "down_proj"):
            out.update(linear_weights(f"mlp.{name}", getattr(mlp, name)))
        return out
