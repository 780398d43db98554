"""Phi-Mamba's "Discrete Mamba-2", the student mixer of the MOHAWK paper, as the official code defines it:
github.com/goombalab/phi-mamba, ``modules/mixers/discrete_mamba2.py`` at commit cab9fe3263158a4184355d373aee4b02e29a1d83
(with ``assets/sample_config.json``'s settings for Phi-Mamba: identity activation after the conv, conv bias).

    u (batch, L, hidden) -> in_proj -> [xBC | z | a]
    xBC -> causal depthwise conv (bias) -> x (heads, head_dim), B, C (heads, state)
    a_t = exp(-softplus(a))                     an input-dependent decay per head and token, no dt
    h_t = a_t h_{t-1} + x_t B_t^T,  y_t = h_t C_t + D x_t      (x is not scaled by a step; D = 1 at init)
    out = out_proj(RMSNorm(y + z))

The last line is what the official layer computes with its default ``norm_cls="rms"``: it calls its Triton RMSNorm as
``norm(y, z)``, whose second argument is a *residual* added before the norm (with ``norm_cls="none"`` it would be the
gate ``y * silu(z)``). So the mixing matrix is ``M[t, s] = C_t . B_s prod_{r=s+1..t} a_r`` (D on the diagonal).

The scan runs on mohawk's SSD paths with dt_t = softplus(a_t), A = -1 and x / dt_t as input, so that
dt A = log a_t and dt (x / dt) = x: the official code feeds its fused kernel the same way.
Departures, both for the initialisation from the teacher's attention (x <- V, B <- K, C <- Q * scale * (1 - a),
out <- O; see ``after_attention_init``): in_proj carries a bias (the official one has none but ``z_bias``), which holds
the decay logits' offset (a near 1 at the start) and Qwen2's q/k/v biases; D starts at 0 under that initialisation
(1 under ``ssd_init="random"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mohawk.mixers.kernels import aligned_linear
from mohawk.mixers.mamba2 import ATTENTION_OUTPUT_RATIO
from mohawk.mixers.ssd import SSDMixer, ssd, ssd_matrix, ssd_matrix_rows, ssd_step


class DiscreteMamba2Mixer(SSDMixer):
    """Phi-Mamba's Discrete Mamba-2 (see module docstring). B and C per head, as in Phi-Mamba."""

    fixed = {"use_gate": True, "conv_activation": "identity"}

    def __init__(self, config, layer_idx: int = 0):
        super().__init__(config, layer_idx)
        del self.dt_bias, self.A_log  # the decay is in_proj's last slice
        self.norm = nn.RMSNorm(self.d_inner, eps=1e-5)

    def in_proj_slices(self) -> dict[str, slice]:
        """The official layout: x, B, C, then z, then the decay logits ("dt")."""
        sizes = {
            "x": self.d_inner,
            "B": self.num_groups * self.state_size,
            "C": self.num_groups * self.state_size,
            "z": self.d_inner,
            "dt": self.num_heads,
        }
        out, start = {}, 0
        for k, s in sizes.items():
            out[k] = slice(start, start + s)
            start += s
        return out

    @torch.no_grad()
    def reset_parameters(self, std: float | None = None) -> None:
        """Random projections (std ``initializer_range``), identity conv, D = 1, decay logits offset so that
        a = exp(-softplus(.)) starts between exp(-dt_max) and exp(-dt_min) per head (as SSD's dt * A does)."""
        from transformers import initialization as init

        c = self.config
        std = c.initializer_range if std is None else std
        s = self.in_proj_slices()
        w = torch.randn_like(self.in_proj.weight, device="cpu") * std
        bias = torch.zeros_like(self.in_proj.bias, device="cpu")
        w[s["dt"]] = 0.0
        rate = torch.exp(
            torch.rand(self.num_heads) * (math.log(c.ssd_dt_max) - math.log(c.ssd_dt_min)) + math.log(c.ssd_dt_min)
        )
        bias[s["dt"]] = rate + torch.log(-torch.expm1(-rate))  # inverse softplus: -log a = rate
        init.copy_(self.in_proj.weight, w)
        init.copy_(self.in_proj.bias, bias)
        conv = torch.zeros_like(self.conv1d.weight, device="cpu")
        conv[:, 0, -1] = 1.0
        init.copy_(self.conv1d.weight, conv)
        init.zeros_(self.conv1d.bias)
        init.ones_(self.D)
        init.normal_(self.out_proj.weight, std=std)
        if self.out_proj.bias is not None:
            init.zeros_(self.out_proj.bias)
        init.ones_(self.norm.weight)

    @torch.no_grad()
    def after_attention_init(self, v_rms: Tensor | None = None) -> None:
        """Attention-like at the start: no residual z into the norm (z rows 0), no D skip, and C scaled by each head's
        initial rate 1 - a: SSD's matrix carries a factor dt (its step) that this one lacks, and without it a decay
        near 1 sums the history at ~1 / (1 - a) times the weight a softmax row gives it."""
        s = self.in_proj_slices()
        self.in_proj.weight[s["z"]] = 0.0
        self.in_proj.bias[s["z"]] = 0.0
        self.D.zero_()
        rate = -torch.expm1(-F.softplus(self.in_proj.bias[s["dt"]].float()))  # 1 - a per head, at u = 0
        per_group = rate.view(self.num_groups, -1).mean(-1).repeat_interleave(self.state_size)
        self.in_proj.weight[s["C"]] *= per_group[:, None].to(self.in_proj.weight.dtype)
        self.in_proj.bias[s["C"]] *= per_group.to(self.in_proj.bias.dtype)
        if v_rms is not None:  # the output norm at the attention output's scale (see mohawk.mixers.mamba2)
            self.norm.weight.copy_(ATTENTION_OUTPUT_RATIO * v_rms.to(self.norm.weight))

    def _project(self, u: Tensor):
        """u -> z, xBC before the conv, and the step dt = softplus(decay logits) (b, L, heads), -log a_t."""
        proj = aligned_linear(self.in_proj, u)
        s = self.in_proj_slices()
        return proj[..., s["z"]], proj[..., s["x"].start : s["C"].stop], F.softplus(proj[..., s["dt"]].float())

    def A(self) -> Tensor:
        return -torch.ones(self.num_heads, device=self.D.device)

    def _matrix(self, dt: Tensor, B: Tensor, C: Tensor) -> Tensor:
        return ssd_matrix(dt, self.A(), B, C) / dt.transpose(1, 2)[:, :, None, :]

    def _matrix_rows(self, dt: Tensor, B: Tensor, C: Tensor, r0: int, r1: int) -> Tensor:
        return ssd_matrix_rows(dt, self.A(), B, C, r0, r1) / dt[:, :r1].transpose(1, 2)[:, :, None, :]

    def _scan(
        self, x: Tensor, dt: Tensor, B: Tensor, C: Tensor, return_final_state: bool, initial_state: Tensor | None = None
    ):
        out = ssd(
            (x.float() / dt[..., None]).to(x.dtype),
            dt,
            self.A(),
            B,
            C,
            None,
            chunk_size=self.chunk_size,
            initial_state=initial_state,
            return_final_state=return_final_state,
        )
        y, state = out if return_final_state else (out, None)
        y = y + x * self.D.to(x.dtype)[:, None]
        return (y, state) if return_final_state else y

    def _step(self, x: Tensor, dt: Tensor, B: Tensor, C: Tensor, state: Tensor):
        y, state = ssd_step((x.float() / dt[..., None]).to(x.dtype), dt, self.A(), B, C, state, None)
        return y + x * self.D.to(x.dtype)[:, None], state

    def _finish(self, y: Tensor, z: Tensor | None) -> Tensor:
        return self.out_proj(self.norm(y.flatten(-2) + z))

    def _fused_step_settings(self) -> dict | None:
        # x B^T without dt, dt = softplus(decay logits), A = -1; z is a residual into the norm
        return {"x_over_dt": True, "gate": "add", "out_dtype": None, "dt_mode": "softplus", "a_mode": "minus_one"}

    def _finish_gated(self, g: Tensor) -> Tensor:
        return self.out_proj(self.norm(g))
