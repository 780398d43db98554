"""The MOHAWK student: the teacher's blocks with their attention replaced by SSD (or kept, per layer), as a Hugging Face
causal LM (save_pretrained / from_pretrained / generate) with recurrent constant-memory decoding for SSD layers."""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast

from mohawk.mixers import MIXERS, Attention, SSDMixer, ToeplitzMixer
from mohawk.mixers.attention import default_inv_freq
from mohawk.mixers.kernels.decode_matvec import fuses_decode_matvec
from mohawk.mixers.norm import RMSNorm, make_norm
from mohawk.models.cache import MohawkCache
from mohawk.models.configuration_mohawk import MohawkConfig
from mohawk.models.graphs import decode_graph, generate_fast, graphs_supported


class MLP(nn.Module):
    """ "gated": down(act(gate(x)) * up(x)) (Llama); "plain": fc2(act(fc1(x))) (Phi, GPT-NeoX, GPT-2)."""

    def __init__(self, config: MohawkConfig):
        super().__init__()
        self.gated = config.mlp_type == "gated"
        # whether residual_step applies: its kernel computes the gate's activation as SiLU
        self.fusable = not self.gated or config.hidden_act in ("silu", "swish")
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.act = ACT2FN[config.hidden_act]
        if self.gated:
            self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))

    def residual_step(self, h: Tensor, norm: RMSNorm) -> Tensor:
        """``h + self(norm(h))`` for one token h (batch, 1, hidden) (MOHAWK_DECODE_MATVEC=fused, see
        mohawk.mixers.kernels.decode_matvec): norm, gate, up and SiLU in one kernel, down and the residual add in
        another; a plain MLP's activation runs between its two products."""
        from mohawk.mixers.kernels.decode_matvec import decode_matvec

        x = h[:, 0]
        if self.gated:
            a = decode_matvec(
                x, self.gate_proj.weight, self.gate_proj.bias, norm_weight=norm.weight, eps=norm.eps,
                up_weight=self.up_proj.weight, up_bias=self.up_proj.bias,
            )  # fmt: skip
        else:
            a = self.act(
                decode_matvec(x, self.up_proj.weight, self.up_proj.bias, norm_weight=norm.weight, eps=norm.eps)
            )
        return decode_matvec(a, self.down_proj.weight, self.down_proj.bias, residual=x)[:, None]


class MohawkBlock(nn.Module):
    """One block in the teacher's layout; ``mixer`` is an Attention or an SSDMixer."""

    def __init__(self, config: MohawkConfig, layer_idx: int):
        super().__init__()
        self.block_type = config.block_type
        self.norm1 = make_norm(config)
        self.norm2 = make_norm(config) if config.block_type != "parallel_shared_norm" else None
        if config.block_type == "sandwich":  # Gemma: a norm after the mixer and after the MLP too
            self.post_mixer_norm, self.post_mlp_norm = make_norm(config), make_norm(config)
        self.mixer = MIXERS[config.mixers[layer_idx]](config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, h: Tensor, position_ids: Tensor | None = None, cache=None) -> Tensor:
        """h (batch, L, hidden) -> (batch, L, hidden)."""
        if self.block_type == "sequential":
            # a one-token step with MOHAWK_DECODE_MATVEC=fused: each half's norm, products and residual add in the
            # fused kernels (an SSD-family mixer's through its fused step; other mixers keep their own path)
            fused = self._fuses_decode(h)
            m = self.mixer.residual_step(h, self.norm1, cache) if fused and isinstance(self.mixer, SSDMixer) else None
            h = m if m is not None else h + self.mixer(self.norm1(h), position_ids=position_ids, cache=cache)
            return self.mlp.residual_step(h, self.norm2) if fused else h + self.mlp(self.norm2(h))
        u = self.norm1(h)
        m = self.mixer(u, position_ids=position_ids, cache=cache)
        if self.block_type == "sandwich":
            h = h + self.post_mixer_norm(m)
            return h + self.post_mlp_norm(self.mlp(self.norm2(h)))
        return h + m + self.mlp(u if self.norm2 is None else self.norm2(h))

    @torch.no_grad()
    def fold_norms(self) -> bool:
        """Multiplies norm2's weight into the MLP's first products (gate and up, or fc1) and norm1's into an
        SSD-family mixer's in_proj, and sets those norms' weights to 1: the block computes the same function (up to
        the products' rounding), and decoding's fused products (MOHAWK_DECODE_NORM=folded) then read the weights as
        they are instead of a folded copy. Sequential blocks with RMSNorms only; whether anything was folded."""
        if self.block_type != "sequential" or not (isinstance(self.norm1, RMSNorm) and isinstance(self.norm2, RMSNorm)):
            return False
        folds = [(self.norm2, [self.mlp.gate_proj, self.mlp.up_proj] if self.mlp.gated else [self.mlp.up_proj])]
        if isinstance(self.mixer, SSDMixer):  # (its input reaches it only through in_proj)
            folds.append((self.norm1, [self.mixer.in_proj]))
        for norm, linears in folds:
            for linear in linears:
                linear.weight.copy_(linear.weight.float() * norm.weight.float()[None, :])
            norm.weight.fill_(1)
        return True

    def _fuses_decode(self, h: Tensor) -> bool:
        """Whether this sequential block's one-token step takes the fused matvec kernels: both norms mohawk's
        RMSNorm (its weight multiplies as stored, Gemma's 1 + w included) and an MLP the kernels compute."""
        return (
            isinstance(self.norm1, RMSNorm)
            and isinstance(self.norm2, RMSNorm)
            and self.mlp.fusable
            and fuses_decode_matvec(h)
        )


class MohawkPreTrainedModel(PreTrainedModel):
    config_class = MohawkConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["MohawkBlock"]
    _is_stateful = True  # SSD layers carry state: no assisted decoding

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, (SSDMixer, ToeplitzMixer)):
            module.reset_parameters(std=std)
        elif isinstance(module, Attention):
            init.copy_(module.inv_freq, default_inv_freq(module.rotary_dim, self.config.rope_theta))
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # we bring our own cache (MohawkCache), made in prepare_inputs_for_generation


class MohawkModel(MohawkPreTrainedModel):
    def __init__(self, config: MohawkConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.position_embedding == "learned"
            else None
        )
        self.layers = nn.ModuleList([MohawkBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = make_norm(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        inputs_embeds=None,
        position_ids=None,
        cache: MohawkCache | None = None,
        output_hidden_states: bool = False,
        keep_last: int = 0,
    ):
        """input_ids (batch, L) -> final hidden states (batch, L, hidden), or only the last ``keep_last`` positions
        (generation: the prompt's other positions need no final norm) [, all block inputs + final output]."""
        source = input_ids if inputs_embeds is None else inputs_embeds
        L = source.shape[1]
        if cache is not None and not cache.static:  # (a graph's own buffers are checked where it replays)
            cache.check_capacity(cache.tokens + L)
        if position_ids is None:
            offset = cache.tokens if cache is not None else 0
            position_ids = torch.arange(offset, offset + L, device=source.device)[None]
        hidden_states = []
        chunk = getattr(self.config, "prefill_chunk", 0)
        # a long prompt with a cache: piece by piece through all layers (SSD state and KV cache carry over), embedded
        # piece by piece too, so that no (batch, L, hidden) tensor of the whole prompt exists at once
        step = chunk if cache is not None and chunk and L > chunk and not output_hidden_states else L
        first_kept = L - keep_last if 0 < keep_last < L else 0
        outs = []
        for i in range(0, L, step):
            pos = position_ids[:, i : i + step]
            x = (
                self.embed_tokens(input_ids[:, i : i + step])
                if inputs_embeds is None
                else inputs_embeds[:, i : i + step]
            )
            if self.config.embedding_multiplier != 1.0:  # Gemma: x sqrt(hidden), rounded to the weights' dtype
                x = x * torch.tensor(self.config.embedding_multiplier, dtype=self.embed_tokens.weight.dtype)
            if self.embed_positions is not None:
                x = x + self.embed_positions(pos)
            for layer in self.layers:
                if output_hidden_states:
                    hidden_states.append(x)
                x = layer(x, position_ids=pos, cache=cache)
            if i + x.shape[1] > first_kept:
                outs.append(x[:, max(0, first_kept - i) :])
        h = self.norm(torch.cat(outs, dim=1) if len(outs) > 1 else outs[0])
        if output_hidden_states:
            hidden_states.append(h)
        if cache is not None:
            cache.tokens += L
        return h, (tuple(hidden_states) if output_hidden_states else None)


class MohawkForCausalLM(MohawkPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MohawkConfig):
        super().__init__(config)
        self.model = MohawkModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=config.lm_head_bias)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Hugging Face save, plus the student's own code and ``auto_map`` so that it also loads without mohawk
        installed (``trust_remote_code=True``)."""
        try:  # (by name: the remote-code copy of this file must not depend on the mohawk package)
            remote = importlib.import_module("mohawk.models.remote_code")
        except ImportError:  # a remote-code copy without mohawk: transformers copies its own files
            return super().save_pretrained(save_directory, *args, **kwargs)
        self.config.auto_map = dict(remote.AUTO_MAP)
        out = super().save_pretrained(save_directory, *args, **kwargs)
        remote.write_remote_code(save_directory)
        return out

    def set_output_embeddings(self, value):
        self.lm_head = value

    def fold_norms(self) -> int:
        """For serving: each block's norm weights multiplied into the products that read them (MohawkBlock.fold_norms),
        in place; the model computes the same function. Decoding 16-64 sequences on a GPU otherwise keeps a folded
        copy of in_proj, gate and up beside the model (mohawk.mixers.kernels.decode_matvec.fold_norm). Returns the
        number of blocks folded."""
        return sum(block.fold_norms() for block in self.model.layers)

    @staticmethod
    def _check_padding(attention_mask: Tensor | None) -> None:
        # Right padding is harmless for a causal model; left padding would feed pad tokens into SSD states.
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] > 1:
            m = attention_mask.bool()
            if bool((~m[:, :-1] & m[:, 1:]).any()):
                raise ValueError("MohawkForCausalLM does not support left padding; pad on the right")

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        return_dict=None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        self._check_padding(attention_mask)
        cache = past_key_values if use_cache is not False else None
        if use_cache and cache is None:
            cache = MohawkCache()
        graph = self._decode_graph(cache, input_ids, inputs_embeds, position_ids, labels, output_hidden_states)
        if graph is not None:
            return CausalLMOutputWithPast(None, graph.run(cache, input_ids, cache.tokens), cache, None)
        keep = logits_to_keep if isinstance(logits_to_keep, int) and labels is None and not output_hidden_states else 0
        h, hidden_states = self.model(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            cache=cache,
            output_hidden_states=bool(output_hidden_states),
            keep_last=keep,
        )
        logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        # positional: the cache field is `past_key_values` before transformers 5.24 and `cache` from it on
        return CausalLMOutputWithPast(loss, logits, cache, hidden_states)

    def _decode_graph(self, cache, input_ids, inputs_embeds, position_ids, labels, output_hidden_states):
        """The CUDA graph that runs this one-token decoding step (see mohawk.models.graphs), or None: eager."""
        if (
            cache is None
            or input_ids is None
            or inputs_embeds is not None
            or position_ids is not None
            or labels is not None
            or output_hidden_states
            or input_ids.shape[1] != 1
            or not getattr(self.config, "decode_cuda_graph", False)
            or torch.is_grad_enabled()
            or not graphs_supported(input_ids.device)
            or (cache.kv and cache.kv_capacity is None)  # a growing KV cache has no fixed addresses
            or len(cache.ssm.keys() | cache.kv.keys()) != self.config.num_hidden_layers  # (a "heads" layer: both)
            or torch.compiler.is_compiling()
            or hasattr(self.lm_head.weight, "device_mesh")  # FSDP-sharded: each step gathers weights
            or (input_ids.is_cuda and torch.cuda.is_current_stream_capturing())
        ):
            return None
        return decode_graph(self, cache, input_ids)

    def generate(self, inputs=None, generation_config=None, **kwargs):
        """``GenerationMixin.generate``; on CUDA, plain greedy or sampled generation (temperature, top-k) takes
        :func:`mohawk.models.graphs.generate_fast`: tokens chosen inside CUDA graphs of ``config.decode_block_steps``
        steps each, a static KV cache for attention layers. Anything else (beams, logits processors, streamers,
        dict outputs, ...) goes to transformers' loop."""
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        plan = None if generation_config is not None else self._fast_plan(ids, kwargs)
        if plan is None:
            return super().generate(inputs, generation_config=generation_config, **kwargs)
        return generate_fast(self, ids, **plan)

    _FAST_KWARGS = frozenset(
        {"input_ids", "attention_mask", "max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p"}
        | {"pad_token_id", "eos_token_id", "use_cache"}
    )
    # generation settings the fast path does not implement, with the value that means "off"
    _FAST_OFF = {
        "num_beams": 1,
        "num_return_sequences": 1,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "min_new_tokens": 0,
        "min_length": 0,
        "min_p": None,
        "typical_p": 1.0,
        "epsilon_cutoff": 0.0,
        "eta_cutoff": 0.0,
        "bad_words_ids": None,
        "suppress_tokens": None,
        "begin_suppress_tokens": None,
        "forced_bos_token_id": None,
        "forced_eos_token_id": None,
        "sequence_bias": None,
        "output_logits": False,
        "output_scores": False,
        "return_dict_in_generate": False,
    }

    def _layer_kinds(self) -> set[str]:
        """The mixer kinds the layers run, a head-level hybrid's two parts counted as theirs."""
        c = self.config
        kinds = set(c.mixers) - {"heads"}
        if "heads" in c.mixers:
            kinds |= {"attention", getattr(c, "heads_family", "ssd")}
        return kinds

    def _fast_plan(self, ids, kwargs) -> dict | None:
        """generate_fast's arguments when this call can take it, else None."""
        if (
            not isinstance(ids, Tensor)
            or ids.dim() != 2
            or not set(kwargs) <= self._FAST_KWARGS
            or kwargs.get("use_cache", True) is False
            or not getattr(self.config, "decode_cuda_graph", False)
            or not graphs_supported(ids.device)
            or any(
                kind not in ("attention", "ssd", "ssm", "linear_attention", "mamba2", "discrete_mamba2")
                for kind in self._layer_kinds()
            )
            or hasattr(self.lm_head.weight, "device_mesh")
        ):
            return None
        gc = self.generation_config
        if any(getattr(gc, k, off) not in (None, off) for k, off in self._FAST_OFF.items()):
            return None
        mask = kwargs.get("attention_mask")
        if mask is not None and not bool(mask.bool().all()):
            return None
        new = kwargs.get("max_new_tokens", gc.max_new_tokens)
        if new is None:
            new = kwargs.get("max_length", gc.max_length) - ids.shape[1]
        if new is None or new < 1:
            return None
        sampling = None
        if kwargs.get("do_sample", gc.do_sample):
            top_p = kwargs.get("top_p", gc.top_p)
            if top_p is not None and top_p < 1.0:
                return None
            temperature = kwargs.get("temperature", gc.temperature)
            sampling = (float(1.0 if temperature is None else temperature), int(kwargs.get("top_k", gc.top_k) or 0))
        return {
            "max_new_tokens": int(new),
            "sampling": sampling,
            "eos_token_id": kwargs.get("eos_token_id", gc.eos_token_id),
            "pad_token_id": kwargs.get("pad_token_id", gc.pad_token_id),
            "steps": int(getattr(self.config, "decode_block_steps", 16)),
        }

    def prepare_inputs_for_generation(
        self,
        input_ids,
        past_key_values=None,
        attention_mask=None,
        inputs_embeds=None,
        use_cache=True,
        cache=None,
        **kwargs,
    ):
        if use_cache is False:
            return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if past_key_values is None:  # transformers >= 5.24 hands the cache back as `cache`
            past_key_values = cache if isinstance(cache, MohawkCache) else MohawkCache()
        if past_key_values.tokens:
            input_ids = input_ids[:, past_key_values.tokens :]
        extra = {"logits_to_keep": kwargs["logits_to_keep"]} if kwargs.get("logits_to_keep") else {}
        return {"input_ids": input_ids, "past_key_values": past_key_values, "use_cache": True, **extra}
