"""GPT-2 teachers: sequential LayerNorm blocks, learned absolute positions, no RoPE, fused c_attn stored as Conv1D
(weights transposed relative to nn.Linear), LM head tied to the token embedding."""

from __future__ import annotations

from mohawk.teachers.base import TeacherAdapter, linear_weights, norm_weights, unsupported


class GPT2Adapter(TeacherAdapter):
    model_types = ("gpt2",)

    def check_supported(self) -> None:
        if getattr(self.config, "scale_attn_by_inverse_layer_idx", False):
            raise unsupported("GPT-2 with scale_attn_by_inverse_layer_idx=True")
        if getattr(self.config, "reorder_and_upcast_attn", False):
            raise unsupported("GPT-2 with reorder_and_upcast_attn=True")

    def layers(self):
        return list(self.model.transformer.h)

    def attention_module(self, layer):
        return layer.attn

    def config_kwargs(self) -> dict:
        c = self.config
        return dict(
            vocab_size=c.vocab_size,
            hidden_size=c.n_embd,
            intermediate_size=c.n_inner or 4 * c.n_embd,
            num_hidden_layers=c.n_layer,
            num_attention_heads=c.n_head,
            block_type="sequential",
            norm_type="layernorm",
            norm_eps=c.layer_norm_epsilon,
            norm_bias=True,
            mlp_type="plain",
            hidden_act=c.activation_function,
            mlp_bias=True,
            position_embedding="learned",
            max_position_embeddings=c.n_positions,
            attention_qkv_bias=True,
            attention_out_bias=True,
            attention_scale=(c.n_embd // c.n_head) ** -0.5 if c.scale_attn_weights else 1.0,
            lm_head_bias=False,
            tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", True)),
        )

    def global_weights(self):
        t = self.model.transformer
        return {
            "model.embed_tokens.weight": t.wte.weight,
            "model.embed_positions.weight": t.wpe.weight,
            **norm_weights("model.norm", t.ln_f),
            "lm_head.weight": self.model.lm_head.weight,
        }

    def layer_weights(self, i):
        layer = self.layers()[i]
        hidden = self.config.n_embd
        out = {**norm_weights("norm1", layer.ln_1), **norm_weights("norm2", layer.ln_2)}
        w, b = layer.attn.c_attn.weight.t(), layer.attn.c_attn.bias  # (3 * hidden, hidden)
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"mixer.{name}.weight"] = w[j * hidden : (j + 1) * hidden]
            out[f"mixer.{name}.bias"] = b[j * hidden : (j + 1) * hidden]
        out.update(linear_weights("mixer.o_proj", layer.attn.c_proj, transpose=True))
        out.update(linear_weights("mlp.up_proj", layer.mlp.c_fc, transpose=True))
        out.update(linear_weights("mlp.down_proj", layer.mlp.c_proj, transpose=True))
        return out
