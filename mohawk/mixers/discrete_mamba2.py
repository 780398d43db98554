"""Phi-Mamba's "Discrete Mamba-2", the student mixer of the MOHAWK paper, in two forms named for what they are.

``discrete_mamba2``, the official layer as it stands: github.com/goombalab/phi-mamba, ``modules/mixers/
discrete_mamba2.py`` at its newest commit b2e405f74d1e2a56ffc4623cf3f4be68f7d6d79e (2024-09-13); its equations are those
of dd8c3b71e4bfbd99ae6fff303d3ba68fee9ec345 (2024-09-09, "use current mamba2 implementation"), with
``assets/sample_config.json``'s settings for Phi-Mamba (identity activation after the conv, conv bias, B and C per
``n_qk_heads`` group):

    u (batch, L, hidden) -> in_proj -> [xBC | z | a]
    xBC -> causal depthwise conv (bias) -> x (heads, head_dim), B, C (groups, state)
    a_t = exp(-softplus(a))                     an input-dependent decay per head and token, no separate dt
    h_t = a_t h_{t-1} + x_t B_t^T,  y_t = h_t C_t + D x_t      (x is not scaled by a step; D = 1 at init)
    out = out_proj(y * SiLU(z + z_bias))        a SiLU gate, no norm

So the mixing matrix is ``M[t, s] = C_t . B_s prod_{r=s+1..t} a_r`` (D on the diagonal): the official
``materialize_mixer``. The official code feeds its fused kernel dt_t = softplus(a_t), A = -1 and x / dt_t, so that
dt A = log a_t and dt (x / dt) = x; mohawk's SSD paths (reference, chunked scan, Triton kernel, one-token step) run it
the same way.

``discrete_mamba2_cab9fe3``, the layer of the repository's first commit (cab9fe3263158a4184355d373aee4b02e29a1d83,
2024-08-19), which dd8c3b7 replaced: the same scan, but ``out = out_proj(RMSNorm(y + z))`` (its default
``norm_cls="rms"`` called a Triton RMSNorm as ``norm(y, z)``, whose second argument is a residual added before the
norm). Kept so that students distilled with it still load and compute what they computed.

Departures from the official code, both for the initialisation from the teacher's attention (x <- V, B <- K,
C <- Q * scale * (1 - a), out <- O; see ``after_attention_init``): in_proj carries a bias on every row (the official
one has none, only ``z_bias``, which is the bias of the z rows here), holding the decay logits' offset (a near 1 at
the start, where the official init leaves a = exp(-softplus(~0)) ~ 0.5) and Qwen2's q/k/v biases; projections start
at std ``initializer_range`` (the official: nn.Linear's default); D starts at 0 under the attention initialisation (1
under ``ssd_init="random"``, as the official), and the gate starts at exactly 1 (z weights 0, bias with SiLU(bias) = 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mohawk.mixers.kernels import aligned_linear
from mohawk.mixers.mamba2 import ATTENTION_OUTPUT_RATIO
from mohawk.mixers.ssd import SSDMixer, ssd, ssd_matrix, ssd_matrix_rows, ssd_step


def _silu_one() -> float:
    """The b with SiLU(b) = b * sigmoid(b) = 1 (Newton's method): a gate bias that leaves y unchanged."""
    b = 1.0
    for _ in range(30):
        s = 1.0 / (1.0 + math.exp(-b))
        b -= (b * s - 1.0) / (s + b * s * (1.0 - s))
    return b


GATE_ONE = _silu_one()


class DiscreteMamba2Mixer(SSDMixer):
    """Phi-Mamba's Discrete Mamba-2 as the official code has it now: SiLU gate, no norm (see module docstring)."""

    fixed = {"use_gate": True, "conv_activation": "identity"}

    def __init__(self, config, layer_idx: int = 0):
        super().__init__(config, layer_idx)
        del self.dt_bias, self.A_log  # the decay is in_proj's last slice
        self.norm = None

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
        if self.norm is not None:
            init.ones_(self.norm.weight)

    @torch.no_grad()
    def after_attention_init(self, v_rms: Tensor | None = None) -> None:
        """Attention-like at the start: the gate at exactly 1 (z rows 0, bias GATE_ONE), no D skip, and C scaled by
        each head's initial rate 1 - a: SSD's matrix carries a factor dt (its step) that this one lacks, and without
        it a decay near 1 sums the history at ~1 / (1 - a) times the weight a softmax row gives it."""
        s = self.in_proj_slices()
        self._neutral_z()
        self.D.zero_()
        rate = -torch.expm1(-F.softplus(self.in_proj.bias[s["dt"]].float()))  # 1 - a per head, at u = 0
        per_group = rate.view(self.num_groups, -1).mean(-1).repeat_interleave(self.state_size)
        self.in_proj.weight[s["C"]] *= per_group[:, None].to(self.in_proj.weight.dtype)
        self.in_proj.bias[s["C"]] *= per_group.to(self.in_proj.bias.dtype)
        if v_rms is not None and self.norm is not None:  # the output norm at the attention output's scale
            self.norm.weight.copy_(ATTENTION_OUTPUT_RATIO * v_rms.to(self.norm.weight))

    def _neutral_z(self) -> None:
        s = self.in_proj_slices()
        self.in_proj.weight[s["z"]] = 0.0
        self.in_proj.bias[s["z"]] = GATE_ONE

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
        """out_proj(y * SiLU(z)), z including in_proj's bias (the official ``z_bias``)."""
        return self.out_proj(y.flatten(-2) * F.silu(z))

    def _fused_step_settings(self) -> dict | None:
        # x B^T without dt, dt = softplus(decay logits), A = -1; the SiLU gate
        return {"x_over_dt": True, "gate": "mul_silu", "out_dtype": None, "dt_mode": "softplus", "a_mode": "minus_one"}

    def _out_input(self, g: Tensor) -> Tensor:
        return g  # the official layer has no norm (``_finish`` ignores ssd_norm)


class DiscreteMamba2Cab9fe3Mixer(DiscreteMamba2Mixer):
    """The Discrete Mamba-2 of phi-mamba's first commit (cab9fe3): ``out_proj(RMSNorm(y + z))`` (module docstring)."""

    def __init__(self, config, layer_idx: int = 0):
        super().__init__(config, layer_idx)
        self.norm = nn.RMSNorm(self.d_inner, eps=1e-5)

    def _neutral_z(self) -> None:  # no residual z into the norm
        s = self.in_proj_slices()
        self.in_proj.weight[s["z"]] = 0.0
        self.in_proj.bias[s["z"]] = 0.0

    def _finish(self, y: Tensor, z: Tensor | None) -> Tensor:
        return self.out_proj(self.norm(y.flatten(-2) + z))

    def _fused_step_settings(self) -> dict | None:
        # x B^T without dt, dt = softplus(decay logits), A = -1; z is a residual into the norm
        return {"x_over_dt": True, "gate": "add", "out_dtype": None, "dt_mode": "softplus", "a_mode": "minus_one"}

    def _out_input(self, g: Tensor) -> Tensor:
        return self.norm(g)
