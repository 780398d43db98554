"""Gemma 3 teachers (text models, ``gemma3_text``; e.g. Gemma 3 270M): sandwich blocks (RMSNorm before and after
the mixer and the MLP; Gemma's norms scale by 1 + w, stored here as plain weights), QK-norm, GQA, sliding-window
layers with a local RoPE base and full-attention layers with a global one, a GeGLU MLP, embeddings multiplied by
sqrt(hidden) and tied to the LM head."""

from __future__ import annotations

from mohawk.teachers.base import TeacherAdapter, linear_weights, unsupported


def _gemma_norm(prefix: str, norm) -> dict:
    """A Gemma RMSNorm (x * (1 + w)) as a plain one (x * w')."""
    return {f"{prefix}.weight": 1.0 + norm.weight}


class Gemma3Adapter(TeacherAdapter):
    model_types = ("gemma3_text",)

    def check_supported(self) -> None:
        c = self.config
        for name in ("final_logit_softcapping", "attn_logit_softcapping"):
            if getattr(c, name, None) is not None:
                raise unsupported(f"Gemma 3 with {name}={getattr(c, name)}")
        if getattr(c, "use_bidirectional_attention", False):
            raise unsupported("Gemma 3 with bidirectional attention")
        rotary = self.model.model.rotary_emb
        for t in set(c.layer_types):
            if float(getattr(rotary, f"{t}_attention_scaling", 1.0)) != 1.0:
                raise unsupported(f"Gemma 3 RoPE with attention scaling for {t} layers")

    def layers(self):
        return list(self.model.model.layers)

    def attention_module(self, layer):
        return layer.self_attn

    def rope(self) -> dict:
        inv = self.layer_inv_freq(0)
        return {"rotary_dim": 2 * inv.numel(), "inv_freq": inv, "rope_attention_scaling": 1.0}

    def layer_inv_freq(self, i: int):
        rotary = self.model.model.rotary_emb
        return getattr(rotary, f"{self.config.layer_types[i]}_inv_freq").detach().float().cpu()

    def config_kwargs(self) -> dict:
        c, attn = self.config, self.layers()[0].self_attn
        return dict(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads,
            head_dim=attn.head_dim,
            block_type="sandwich",
            norm_type="rmsnorm_f32",
            norm_eps=c.rms_norm_eps,
            mlp_type="gated",
            hidden_act=c.hidden_activation,
            mlp_bias=False,
            position_embedding="rope",
            max_position_embeddings=c.max_position_embeddings,
            attention_qkv_bias=attn.q_proj.bias is not None,
            attention_out_bias=attn.o_proj.bias is not None,
            attention_scale=attn.scaling,
            sliding_window=c.sliding_window,
            layer_types=list(c.layer_types),
            qk_norm=True,
            embedding_multiplier=float(self.model.model.embed_tokens.scalar_embed_scale),
            lm_head_bias=False,
            tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", True)),
        )

    def global_weights(self):
        m = self.model
        return {
            "model.embed_tokens.weight": m.model.embed_tokens.weight,
            **_gemma_norm("model.norm", m.model.norm),
            "lm_head.weight": m.lm_head.weight,
        }

    def layer_weights(self, i):
        layer = self.layers()[i]
        a, mlp = layer.self_attn, layer.mlp
        out = {
            **_gemma_norm("norm1", layer.input_layernorm),
            **_gemma_norm("post_mixer_norm", layer.post_attention_layernorm),
            **_gemma_norm("norm2", layer.pre_feedforward_layernorm),
            **_gemma_norm("post_mlp_norm", layer.post_feedforward_layernorm),
            **_gemma_norm("mixer.q_norm", a.q_norm),
            **_gemma_norm("mixer.k_norm", a.k_norm),
        }
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out.update(linear_weights(f"mixer.{name}", getattr(a, name)))
        for name in ("gate_proj", "up_proj", "down_proj"):
            out.update(linear_weights(f"mlp.{name}", getattr(mlp, name)))
        return out
