"""Phi teachers (Phi-1, Phi-1.5, Phi-2): one LayerNorm feeding attention and MLP in parallel, partial RoPE, biases
everywhere, an LM head with bias."""

from __future__ import annotations

from mohawk.teachers.base import TeacherAdapter, linear_weights, norm_weights, unsupported


class PhiAdapter(TeacherAdapter):
    model_types = ("phi",)

    def check_supported(self) -> None:
        if getattr(self.config, "qk_layernorm", False):
            raise unsupported("Phi with qk_layernorm=True")

    def layers(self):
        return list(self.model.model.layers)

    def attention_module(self, layer):
        return layer.self_attn

    def config_kwargs(self) -> dict:
        c, attn = self.config, self.layers()[0].self_attn
        return dict(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads or c.num_attention_heads,
            head_dim=attn.head_dim,
            block_type="parallel_shared_norm",
            norm_type="layernorm",
            norm_eps=c.layer_norm_eps,
            norm_bias=True,
            mlp_type="plain",
            hidden_act=c.hidden_act,
            mlp_bias=True,
            position_embedding="rope",
            max_position_embeddings=c.max_position_embeddings,
            attention_qkv_bias=attn.q_proj.bias is not None,
            attention_out_bias=attn.dense.bias is not None,
            attention_scale=attn.scaling,
            lm_head_bias=self.model.lm_head.bias is not None,
            tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        )

    def global_weights(self):
        m = self.model
        return {
            "model.embed_tokens.weight": m.model.embed_tokens.weight,
            **norm_weights("model.norm", m.model.final_layernorm),
            **linear_weights("lm_head", m.lm_head),
        }

    def layer_weights(self, i):
        layer = self.layers()[i]
        a = layer.self_attn
        out = norm_weights("norm1", layer.input_layernorm)
        for name in ("q_proj", "k_proj", "v_proj"):
            out.update(linear_weights(f"mixer.{name}", getattr(a, name)))
        out.update(linear_weights("mixer.o_proj", a.dense))
        out.update(linear_weights("mlp.up_proj", layer.mlp.fc1))
        out.update(linear_weights("mlp.down_proj", layer.mlp.fc2))
        return out
