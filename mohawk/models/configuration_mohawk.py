"""MohawkConfig: a student that keeps its teacher's block layout, with a mixer kind chosen per layer."""

from __future__ import annotations

from transformers import PretrainedConfig

BLOCK_TYPES = ("sequential", "parallel", "parallel_shared_norm", "sandwich")
NORM_TYPES = ("layernorm", "rmsnorm", "rmsnorm_f32")
LAYER_TYPES = ("sliding_attention", "full_attention")
MLP_TYPES = ("gated", "plain")
POSITION_EMBEDDINGS = ("rope", "learned", "none")


class MohawkConfig(PretrainedConfig):
    """Configuration of a MOHAWK student (or hybrid).

    Block layout (copied from the teacher):
      block_type: "sequential" (Llama, Qwen2, Mistral, GPT-2, GPT-NeoX without parallel residual: two norms,
        h += mixer(norm1 h); h += mlp(norm2 h)), "parallel" (GPT-NeoX: h + mixer(norm1 h) + mlp(norm2 h)) or
        "parallel_shared_norm" (Phi: one norm feeds mixer and MLP) or "sandwich" (Gemma: h += post_mixer_norm(
        mixer(norm1 h)); h += post_mlp_norm(mlp(norm2 h))).
      norm_type "layernorm" | "rmsnorm" | "rmsnorm_f32" (the weight multiplies in float32: Gemma); mlp_type "gated"
        (down(act(gate x) * up x)) | "plain" (fc2(act(fc1 x))).
      position_embedding "rope" (in attention layers) | "learned" (GPT-2's wpe) | "none".
      embedding_multiplier: token embeddings are multiplied by it (Gemma: sqrt(hidden_size)).
      qk_norm: attention normalises each head's queries and keys (norm_type, over head_dim) before RoPE (Gemma 3).
      layer_types: per layer "sliding_attention" (uses sliding_window) | "full_attention"; None: every layer uses
        sliding_window. Each attention layer's RoPE frequencies are its own (a persistent inv_freq buffer).
    Mixers: ``mixers`` is a list with one kind per layer, "ssd" or "attention" (default: all "ssd"), or "heads": a
      head-level hybrid (mohawk.mixers.heads) keeping the KV groups ``attention_groups[layer]`` as attention, the other
      heads a ``heads_family`` mixer. attention_groups: one list of KV-group indices per layer (None: none anywhere).
    SSD options (the Phi-Mamba choices are the defaults): ssd_state_size (default head_dim), ssd_num_groups
      (B/C groups; default one per head), ssd_conv_kernel, ssd_conv_init "identity" | "random", ssd_conv_activation
      and ssd_gate_activation "identity" | "silu", ssd_conv_scale (the transferred conv's scale where a SiLU follows
      it: mohawk.mixers.ssd.SSDMixer.scale_conv), ssd_gate (a gate initialised to 1), ssd_norm (RMSNorm before
      out_proj), ssd_dt_min/max and ssd_A_init_range for the decay initialisation, ssd_chunk_size for the scan,
      ssd_proj_bias (a bias on in_proj; False only where a norm follows the gate, i.e. mamba2: what llama.cpp loads).
    prefill_chunk: with a cache (generation), a longer prompt goes through the model this many tokens at a time, so
      the prefill's memory does not grow with the prompt (0: in one piece).
    decode_cuda_graph: on CUDA, decode one token at a time by replaying a captured CUDA graph of the whole step
      (students whose every layer has a fixed-size state; see mohawk.models.graphs).
    decode_block_steps: decoding steps per CUDA-graph replay in ``generate`` on CUDA (the host looks at the tokens,
      for EOS, once per block; see mohawk.models.graphs.generate_fast).
    decode_compile: torch.compile the blocks' norms and MLPs of the decoding step before capturing it (falls back to
      the uncompiled step, with a warning, where compiling fails).
    """

    model_type = "mohawk"

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 256,
        intermediate_size: int = 1024,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        mixers: list[str] | None = None,
        attention_groups: list[list[int]] | None = None,
        heads_family: str = "ssd",
        block_type: str = "sequential",
        norm_type: str = "rmsnorm",
        norm_eps: float = 1e-5,
        norm_bias: bool = False,
        mlp_type: str = "gated",
        hidden_act: str = "silu",
        mlp_bias: bool = False,
        position_embedding: str = "rope",
        max_position_embeddings: int = 2048,
        rotary_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_attention_scaling: float = 1.0,
        attention_qkv_bias: bool = False,
        attention_out_bias: bool = False,
        attention_scale: float | None = None,
        sliding_window: int | None = None,
        layer_types: list[str] | None = None,
        qk_norm: bool = False,
        embedding_multiplier: float = 1.0,
        lm_head_bias: bool = False,
        tie_word_embeddings: bool = False,
        ssd_state_size: int | None = None,
        ssd_num_groups: int | None = None,
        ssd_conv_kernel: int = 4,
        ssd_conv_init: str = "identity",
        ssd_conv_activation: str = "identity",
        ssd_conv_scale: float = 1.0,
        ssd_gate: bool = True,
        ssd_gate_activation: str = "identity",
        ssd_norm: bool = False,
        ssd_dt_min: float = 0.001,
        ssd_dt_max: float = 0.1,
        ssd_A_init_range: tuple[float, float] = (1.0, 16.0),
        ssd_chunk_size: int = 64,
        ssd_proj_bias: bool = True,
        prefill_chunk: int = 2048,
        decode_cuda_graph: bool = True,
        decode_block_steps: int = 16,
        decode_compile: bool = False,
        initializer_range: float = 0.02,
        teacher_model_type: str | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.mixers = list(mixers) if mixers is not None else ["ssd"] * num_hidden_layers
        groups = attention_groups if attention_groups is not None else [[]] * num_hidden_layers
        self.attention_groups = [sorted(int(g) for g in layer) for layer in groups]
        self.heads_family = heads_family
        self.block_type = block_type
        self.norm_type = norm_type
        self.norm_eps = norm_eps
        self.norm_bias = norm_bias
        self.mlp_type = mlp_type
        self.hidden_act = hidden_act
        self.mlp_bias = mlp_bias
        self.position_embedding = position_embedding
        self.max_position_embeddings = max_position_embeddings
        self.rotary_dim = rotary_dim if rotary_dim is not None else self.head_dim
        self.rope_theta = rope_theta
        self.rope_attention_scaling = rope_attention_scaling
        self.attention_qkv_bias = attention_qkv_bias
        self.attention_out_bias = attention_out_bias
        self.attention_scale = attention_scale
        self.sliding_window = sliding_window
        self.layer_types = list(layer_types) if layer_types is not None else None
        self.qk_norm = qk_norm
        self.embedding_multiplier = float(embedding_multiplier)
        self.lm_head_bias = lm_head_bias
        self.ssd_state_size = ssd_state_size or self.head_dim
        self.ssd_num_groups = ssd_num_groups or self.num_attention_heads
        self.ssd_conv_kernel = ssd_conv_kernel
        self.ssd_conv_init = ssd_conv_init
        self.ssd_conv_activation = ssd_conv_activation
        self.ssd_conv_scale = float(ssd_conv_scale)
        self.ssd_gate = ssd_gate
        self.ssd_gate_activation = ssd_gate_activation
        self.ssd_norm = ssd_norm
        self.ssd_dt_min = ssd_dt_min
        self.ssd_dt_max = ssd_dt_max
        self.ssd_A_init_range = tuple(ssd_A_init_range)
        self.ssd_chunk_size = ssd_chunk_size
        self.ssd_proj_bias = bool(ssd_proj_bias)
        self.prefill_chunk = prefill_chunk
        self.decode_cuda_graph = decode_cuda_graph
        self.decode_block_steps = decode_block_steps
        self.decode_compile = decode_compile
        self.initializer_range = initializer_range
        self.teacher_model_type = teacher_model_type
        self._validate()
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def _validate(self) -> None:
        from mohawk.mixers import MIXERS, STUDENT_MIXERS

        def check(name, value, allowed):
            if value not in allowed:
                raise ValueError(f"MohawkConfig.{name}={value!r}: allowed values are {', '.join(map(str, allowed))}")

        check("block_type", self.block_type, BLOCK_TYPES)
        check("norm_type", self.norm_type, NORM_TYPES)
        check("mlp_type", self.mlp_type, MLP_TYPES)
        check("position_embedding", self.position_embedding, POSITION_EMBEDDINGS)
        check("ssd_conv_init", self.ssd_conv_init, ("identity", "random"))
        check("ssd_conv_activation", self.ssd_conv_activation, ("identity", "silu"))
        check("ssd_gate_activation", self.ssd_gate_activation, ("identity", "silu"))
        if not 0 < self.ssd_conv_scale <= 1:
            raise ValueError(f"MohawkConfig.ssd_conv_scale={self.ssd_conv_scale!r}: must be in (0, 1]")
        if len(self.mixers) != self.num_hidden_layers:
            raise ValueError(f"MohawkConfig.mixers has {len(self.mixers)} entries for {self.num_hidden_layers} layers")
        for kind in self.mixers:
            check("mixers[...]", kind, tuple(MIXERS))
        check("heads_family", self.heads_family, STUDENT_MIXERS)
        if len(self.attention_groups) != self.num_hidden_layers:
            raise ValueError(
                f"MohawkConfig.attention_groups has {len(self.attention_groups)} entries for {self.num_hidden_layers} "
                "layers"
            )
        for i, groups in enumerate(self.attention_groups):
            if any(not 0 <= g < self.num_key_value_heads for g in groups) or len(set(groups)) != len(groups):
                raise ValueError(
                    f"MohawkConfig.attention_groups[{i}]={groups}: "
                    f"distinct KV groups in 0..{self.num_key_value_heads - 1}"
                )
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers:
                raise ValueError(
                    f"MohawkConfig.layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers"
                )
            for kind in self.layer_types:
                check("layer_types[...]", kind, LAYER_TYPES)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.num_attention_heads % self.ssd_num_groups:
            raise ValueError("num_attention_heads must be a multiple of ssd_num_groups")

    def layer_sliding_window(self, i: int) -> int | None:
        """The sliding window of layer i's attention (None: it sees the whole prefix)."""
        if self.layer_types is not None and self.layer_types[i] == "full_attention":
            return None
        return self.sliding_window

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, kind in enumerate(self.mixers) if kind == "attention"]

    @property
    def attention_heads(self) -> dict[int, list[int]]:
        """{layer: KV groups kept as attention} of the head-level hybrid layers ("heads")."""
        return {i: self.attention_groups[i] for i, kind in enumerate(self.mixers) if kind == "heads"}
