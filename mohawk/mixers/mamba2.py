"""The Mamba-2 layer exactly as transformers' ``BambaMixer`` computes it, so that a student made of it is a stock
``BambaForCausalLM`` (see mohawk.export) that transformers, vLLM and SGLang serve without mohawk.

    u (batch, L, hidden) -> in_proj -> [z | xBC | dt]
    xBC -> causal depthwise conv (width k, bias) -> SiLU -> x (heads, head_dim), B, C (groups, state)
    dt -> softplus(dt + dt_bias);  A = -exp(A_log) per head
    y = SSD(x, dt, A, B, C) + D x
    y -> RMSNorm over each group of heads of (y * SiLU(z)) (eps = the teacher's norm eps) -> out_proj

(transformers/models/bamba/modeling_bamba.py: ``BambaMixer.forward``'s torch path and ``BambaRMSNormGated``). The SSD
part is mohawk's (reference, chunked scan, Triton kernel, one-token step), so ``materialize(u)`` is SSD's matrix over
the value stream x after the conv and SiLU, D on its diagonal; the gate and the norm come after it. Initialised from
the teacher's attention like the SSD mixer (x <- V, B <- K, C <- Q * scale, out <- O, conv at identity, decay near
1); the gate (weight 0, bias 1) is a constant, which the norm removes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mohawk.mixers.ssd import SSDMixer

# The teacher's attention output RMS over the value-stream RMS estimate sqrt(sum_i W_V[j, i]^2 g_i^2), as measured by
# benchmarks/attention_output_scale.py (its result file has the per-layer values).
ATTENTION_OUTPUT_RATIO = 0.2


class GatedRMSNorm(nn.Module):
    """``weight * rmsnorm_per_group(y * silu(z))`` in float32, groups of ``group_size`` features (BambaRMSNormGated)."""

    def __init__(self, hidden_size: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.group_size, self.eps = group_size, eps

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        return self.normalize(y.float() * F.silu(z.float()), y.dtype)

    def normalize(self, h: Tensor, dtype: torch.dtype) -> Tensor:
        """The norm of an already gated h = y * silu(z) (float32), returned in ``dtype``."""
        g = h.unflatten(-1, (-1, self.group_size))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * g.flatten(-2).to(dtype)


class Mamba2Mixer(SSDMixer):
    """Bamba's Mamba-2 mixer over mohawk's SSD (see module docstring)."""

    fixed = {"use_gate": True, "conv_activation": "silu"}

    def __init__(self, config, layer_idx: int = 0):
        super().__init__(config, layer_idx)
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // self.num_groups, eps=config.norm_eps)

    @torch.no_grad()
    def after_attention_init(self, v_rms: Tensor | None = None) -> None:
        """The norm's weight at the scale of the teacher's attention output, ATTENTION_OUTPUT_RATIO x the value
        stream's RMS (the norm sets every group's RMS to 1, where a softmax average of values is smaller)."""
        if v_rms is not None:
            self.norm.weight.copy_(ATTENTION_OUTPUT_RATIO * v_rms.to(self.norm.weight))

    def _finish(self, y: Tensor, z: Tensor | None) -> Tensor:
        return self.out_proj(self.norm(y.flatten(-2), z))

    def _fused_step_settings(self) -> dict | None:
        settings = {"x_over_dt": False, "gate": "mul_silu", "dt_mode": "softplus_bias", "a_mode": "neg_exp"}
        return {**settings, "out_dtype": torch.float32}  # the norm gates in float32

    def _finish_gated(self, g: Tensor) -> Tensor:
        return self.out_proj(self.norm.normalize(g, self.out_proj.weight.dtype))
