"""GPT-NeoX teachers (Pythia): two LayerNorms, parallel residual when the config says so, partial RoPE, and a fused
query_key_value projection laid out per head as [q | k | v]."""

from __future__ import annotations

from mohawk.teachers.base import TeacherAdapter, linear_weights, norm_weights


class GPTNeoXAdapter(TeacherAdapter):
    model_types = ("gpt_neox",)

    def layers(self):
        return list(self.model.gpt_neox.layers)

    def attention_module(self, layer):
        return layer.attention

    def config_kwargs(self) -> dict:
        c, attn = self.config, self.layers()[0].attention
        return dict(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            head_dim=attn.head_size,
            block_type="parallel" if c.use_parallel_residual else "sequential",
            norm_type="layernorm",
            norm_eps=c.layer_norm_eps,
            norm_bias=True,
            mlp_type="plain",
            hidden_act=c.hidden_act,
            mlp_bias=True,
            position_embedding="rope",
            max_position_embeddings=c.max_position_embeddings,
            attention_qkv_bias=attn.query_key_value.bias is not None,
            attention_out_bias=attn.dense.bias is not None,
            attention_scale=attn.scaling,
            lm_head_bias=False,
            tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        )

    def global_weights(self):
        m = self.model
        return {
            "model.embed_tokens.weight": m.gpt_neox.embed_in.weight,
            **norm_weights("model.norm", m.gpt_neox.final_layer_norm),
            "lm_head.weight": m.get_output_embeddings().weight,
        }

    def layer_weights(self, i):
        layer = self.layers()[i]
        a = layer.attention
        h, d = self.config.num_attention_heads, a.head_size
        out = {**norm_weights("norm1", layer.input_layernorm), **norm_weights("norm2", layer.post_attention_layernorm)}
        w = a.query_key_value.weight.view(h, 3, d, -1)  # per head: q, k, v rows
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"mixer.{name}.weight"] = w[:, j].reshape(h * d, -1)
            if a.query_key_value.bias is not None:
                out[f"mixer.{name}.bias"] = a.query_key_value.bias.view(h, 3, d)[:, j].reshape(h * d)
        out.update(linear_weights("mixer.o_proj", a.dense))
        out.update(linear_weights("mlp.up_proj", layer.mlp.dense_h_to_4h))
        out.update(linear_weights("mlp.down_proj", layer.mlp.dense_4h_to_h))
        return out
