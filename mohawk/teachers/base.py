"""TeacherAdapter: what the distillation stages need from a Hugging Face causal LM, whatever its family.

- ``student_config()``: a MohawkConfig with the teacher's block layout and sizes.
- ``student_state_dict()``: the teacher's weights under the student's names (attention as q/k/v/o projections), so
  that a student with attention everywhere is the teacher, exactly.
- ``capture(input_ids)``: ONE teacher forward that records, per layer, the block input, the mixer input (post-norm
  hidden state that enters attention) and the block output, plus the logits.
- ``attention(i)``: layer i's attention as a frozen ``mohawk.mixers.Attention`` carrying the teacher's weights, whose
  ``materialize(u)`` gives the teacher's attention matrices (batch, heads, L, L) from the captured mixer input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mohawk.errors import MohawkError


@dataclass
class Captures:
    """What one teacher forward records; lists are indexed by layer, tensors are (batch, L, hidden)."""

    block_inputs: list[Tensor] = field(default_factory=list)
    mixer_inputs: list[Tensor] = field(default_factory=list)
    block_outputs: list[Tensor] = field(default_factory=list)
    logits: Tensor | None = None


def _first_tensor(args, kwargs, name="hidden_states") -> Tensor:
    if args and isinstance(args[0], Tensor):
        return args[0]
    return kwargs[name]


class TeacherAdapter:
    """Base class: a family subclass names its modules and maps its weights (see teachers/llama.py for the shape)."""

    model_types: tuple[str, ...] = ()

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self._attention: dict[int, nn.Module] = {}
        self.check_supported()

    # -- what a family defines ---------------------------------------------------------------------------------------
    def layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def attention_module(self, layer: nn.Module) -> nn.Module:
        raise NotImplementedError

    def config_kwargs(self) -> dict:
        """MohawkConfig fields that describe this teacher."""
        raise NotImplementedError

    def global_weights(self) -> dict[str, Tensor]:
        """Embeddings, final norm, LM head under the student's names."""
        raise NotImplementedError

    def layer_weights(self, i: int) -> dict[str, Tensor]:
        """Block i's norms, attention (q_proj, k_proj, v_proj, o_proj) and MLP under the student's names, relative to
        ``model.layers.{i}.``."""
        raise NotImplementedError

    def check_supported(self) -> None:
        """Raise MohawkError for options of this family that the student does not reproduce."""

    # -- shared machinery --------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers())

    def rope(self) -> dict:
        """The teacher's RoPE as copied into the student: rotary_dim, inv_freq, attention scaling."""
        for name, module in self.model.named_modules():
            if name.endswith("rotary_emb") and hasattr(module, "inv_freq"):
                inv_freq = module.inv_freq.detach().float().cpu()
                return {
                    "rotary_dim": 2 * inv_freq.numel(),
                    "inv_freq": inv_freq,
                    "rope_attention_scaling": float(getattr(module, "attention_scaling", 1.0)),
                }
        return {"rotary_dim": 0, "inv_freq": None, "rope_attention_scaling": 1.0}

    def layer_inv_freq(self, i: int):
        """Layer i's RoPE inverse frequencies (rotary_dim / 2,), or None without RoPE; one for all layers unless a
        family has per-layer RoPE (Gemma 3: local and global bases)."""
        return self.rope()["inv_freq"]

    def student_config(self, mixers: list[str] | None = None, **overrides):
        from mohawk.models import MohawkConfig

        kwargs = self.config_kwargs()
        rope = self.rope()
        if kwargs.get("position_embedding", "rope") == "rope":
            kwargs.update(rotary_dim=rope["rotary_dim"], rope_attention_scaling=rope["rope_attention_scaling"])
        kwargs["teacher_model_type"] = self.config.model_type
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self.config, key, None) is not None:
                kwargs[key] = getattr(self.config, key)
        kwargs.update(overrides)
        if mixers is not None:
            kwargs["mixers"] = mixers
        return MohawkConfig(**kwargs)

    def student_state_dict(self) -> dict[str, Tensor]:
        """The teacher's weights under the student's parameter names (attention layers as attention)."""
        sd = dict(self.global_weights())
        for i in range(self.num_layers):
            for k, v in self.layer_weights(i).items():
                sd[f"model.layers.{i}.{k}"] = v
            inv_freq = self.layer_inv_freq(i)
            if inv_freq is not None:
                sd[f"model.layers.{i}.mixer.inv_freq"] = inv_freq
        return {k: v.detach() for k, v in sd.items()}

    def attention(self, i: int) -> nn.Module:
        """Layer i's attention as a frozen mohawk Attention with the teacher's weights (materialize -> matrices)."""
        if i not in self._attention:
            from mohawk.mixers import Attention

            cfg = self.student_config(mixers=["attention"] * self.num_layers)
            attn = Attention(cfg, i)
            weights = {k[len("mixer.") :]: v for k, v in self.layer_weights(i).items() if k.startswith("mixer.")}
            inv_freq = self.layer_inv_freq(i)
            if inv_freq is not None:
                weights["inv_freq"] = inv_freq
            missing, unexpected = attn.load_state_dict(weights, strict=False)
            assert not unexpected and set(missing) <= {"inv_freq"}, (missing, unexpected)
            p = next(self.model.parameters())
            self._attention[i] = attn.to(device=p.device, dtype=p.dtype).requires_grad_(False).eval()
        return self._attention[i]

    @torch.no_grad()
    def capture(self, input_ids: Tensor, logits: bool = True) -> Captures:
        """One forward of the teacher recording block inputs, mixer inputs and block outputs of every layer."""
        caps = Captures()
        handles = []
        for layer in self.layers():
            handles.append(
                layer.register_forward_pre_hook(
                    lambda m, a, kw: caps.block_inputs.append(_first_tensor(a, kw)), with_kwargs=True
                )
            )
            handles.append(
                self.attention_module(layer).register_forward_pre_hook(
                    lambda m, a, kw: caps.mixer_inputs.append(_first_tensor(a, kw)), with_kwargs=True
                )
            )
            handles.append(
                layer.register_forward_hook(
                    lambda m, a, out: caps.block_outputs.append(out[0] if isinstance(out, tuple) else out)
                )
            )
        try:
            # without logits wanted, skip most of the LM head (a large share of a small teacher's forward)
            kwargs = {} if logits else {"logits_to_keep": 1}
            out = self.model(input_ids=input_ids, use_cache=False, **kwargs)
        finally:
            for h in handles:
                h.remove()
        if logits:
            caps.logits = out.logits
        return caps


def linear_weights(prefix: str, linear: nn.Module, transpose: bool = False) -> dict[str, Tensor]:
    """{prefix.weight, prefix.bias} of an nn.Linear (or of GPT-2's Conv1D with ``transpose``)."""
    w = linear.weight.t() if transpose else linear.weight
    out = {f"{prefix}.weight": w}
    if getattr(linear, "bias", None) is not None:
        out[f"{prefix}.bias"] = linear.bias
    return out


def norm_weights(prefix: str, norm: nn.Module) -> dict[str, Tensor]:
    return linear_weights(prefix, norm)


def unsupported(what: str) -> MohawkError:
    return MohawkError(f"unsupported teacher option: {what}")
