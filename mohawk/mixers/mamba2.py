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

Without the in_proj bias (``ssd_proj_bias=False``, the form llama.cpp loads, whose Mamba-2 projections have no
biases) the gate cannot be a constant; it starts as one positive value per token instead, every z row the same
direction w of the inputs (``open_gate``; mohawk.transfer.fit_gates fits w to the teacher's inputs so that w . u > 0 on
every calibration token). The norm removes any positive per-token factor, so the layer starts as the biased one does
wherever w . u > 0.
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

    fixed = {"use_gate": True, "conv_activation": "silu", "gate_activation": "silu"}
    gate_opens_without_bias = True

    def __init__(self, config, layer_idx: int = 0):
        super().__init__(config, layer_idx)
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // self.num_groups, eps=config.norm_eps)

    @torch.no_grad()
    def after_attention_init(self, v_rms: Tensor | None = None) -> None:
        """The norm's weight at the scale of the teacher's attention output, ATTENTION_OUTPUT_RATIO x the value
        stream's RMS (the norm sets every group's RMS to 1, where a softmax average of values is smaller)."""
        if v_rms is not None:
            self.norm.weight.copy_(ATTENTION_OUTPUT_RATIO * v_rms.to(self.norm.weight))

    @torch.no_grad()
    def open_gate(self, direction: Tensor, scale: float) -> None:
        """Every gate row of in_proj = ``scale * direction`` (hidden,): z = scale * (direction . u) in every channel,
        one value per token, which the group norm removes wherever it is positive (see module docstring)."""
        rows = self.in_proj.weight[self.in_proj_slices()["z"]]
        scale = scale * self.gate_gain()  # SiLU(z) ~ z for the large z a scaled conv asks for (scale_conv)
        rows.copy_((scale * direction.float()).to(rows)[None].expand_as(rows))
        if self.in_proj.bias is not None:
            self.in_proj.bias[self.in_proj_slices()["z"]] = 0.0

    def _finish(self, y: Tensor, z: Tensor | None) -> Tensor:
        return self.out_proj(self.norm(y.flatten(-2), z))

    def _fused_step_settings(self) -> dict | None:
        settings = {"x_over_dt": False, "gate": "mul_silu", "dt_mode": "softplus_bias", "a_mode": "neg_exp"}
        return {**settings, "out_dtype": torch.float32}  # the norm gates in float32

    def _out_input(self, g: Tensor) -> Tensor:
        return self.norm.normalize(g, self.out_proj.weight.dtype)
