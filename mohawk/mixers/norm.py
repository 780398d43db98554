"""The teachers' norms: RMSNorm as they compute it, in float32, the weight multiplying after the cast back (Llama) or
before it (``weight_in_float32``: Gemma, whose ``1 + w`` weight the adapter stores as a plain weight); ``make_norm``
picks the one a MohawkConfig names."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """x (..., dim) -> weight * x / rms(x), the statistics in float32."""

    def __init__(self, dim: int, eps: float = 1e-6, weight_in_float32: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.weight_in_float32 = weight_in_float32

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight_in_float32:
            return (self.weight.float() * x).to(dtype)
        return self.weight * x.to(dtype)


def make_norm(config, dim: int | None = None) -> nn.Module:
    """The teacher's norm (config.norm_type) over ``dim`` features (default config.hidden_size)."""
    dim = dim or config.hidden_size
    if config.norm_type in ("rmsnorm", "rmsnorm_f32"):
        return RMSNorm(dim, eps=config.norm_eps, weight_in_float32=config.norm_type == "rmsnorm_f32")
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.norm_bias)
