"""The causal Toeplitz family (a long convolution): ``M[t, s] = c[t - s]`` for s <= t, one kernel c per head.

The student layer makes it input-dependent as the matrix-mixer papers do (Hydra's data-dependent Toeplitz): the kernel
value at lag k is a projection of token k, ``c_h[k] = w_h . u_k + b_h``, so M stays Toeplitz for every input.

Paths: ``toeplitz_matrix`` (reference), ``toeplitz_conv`` (FFT, O(L log L)); decoding keeps the kernel values and the
value stream seen so far (a Toeplitz mixer has no constant-size state: O(context) memory, like a KV cache)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mohawk.mixers.kernels import aligned_linear


def toeplitz_matrix(c: Tensor) -> Tensor:
    """c (..., L) -> M (..., L, L) with M[t, s] = c[t - s] for s <= t, else 0."""
    L = c.shape[-1]
    t = torch.arange(L, device=c.device)
    lag = t[:, None] - t[None, :]
    M = c[..., lag.clamp(min=0)]
    return M.masked_fill(lag < 0, 0.0)


def toeplitz_conv(c: Tensor, x: Tensor) -> Tensor:
    """y = M(c) x by FFT: c (batch, heads, L), x (batch, heads, L, head_dim) -> (batch, heads, L, head_dim)."""
    L = c.shape[-1]
    n = 2 * L  # zero padding: a linear, not circular, convolution
    cf = torch.fft.rfft(c.float(), n=n)
    xf = torch.fft.rfft(x.float(), n=n, dim=-2)
    return torch.fft.irfft(cf[..., None] * xf, n=n, dim=-2)[..., :L, :].to(x.dtype)


class ToeplitzMixer(nn.Module):
    """u (batch, L, hidden) -> in_proj -> [x | kernel] -> y = M(kernel) x per head -> out_proj."""

    attention_scaled_rows = "kernel"  # the kernel is random after the transfer: rescaled to the attention's size

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        self.layer_idx, self.config = layer_idx, config
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.d_inner = self.num_heads * self.head_dim
        self.in_proj = nn.Linear(config.hidden_size, self.d_inner + self.num_heads, bias=True)
        self.out_proj = nn.Linear(self.d_inner, config.hidden_size, bias=config.attention_out_bias)

    def in_proj_slices(self) -> dict[str, slice]:
        return {"x": slice(0, self.d_inner), "kernel": slice(self.d_inner, self.d_inner + self.num_heads)}

    @torch.no_grad()
    def reset_parameters(self, std: float | None = None) -> None:
        from transformers import initialization as init

        std = self.config.initializer_range if std is None else std
        init.normal_(self.in_proj.weight, std=std)
        init.zeros_(self.in_proj.bias)
        init.normal_(self.out_proj.weight, std=std)
        if self.out_proj.bias is not None:
            init.zeros_(self.out_proj.bias)

    def after_attention_init(self, v_rms: Tensor | None = None) -> None:
        """Nothing beyond x and out_proj to set after the transfer from attention (see SSDMixer)."""

    def _project(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """u -> kernel values (batch, heads, L) float32, x (batch, heads, L, head_dim)."""
        proj = aligned_linear(self.in_proj, u)
        s = self.in_proj_slices()
        x = proj[..., s["x"]].unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        return proj[..., s["kernel"]].float().transpose(1, 2), x

    def materialize(self, u: Tensor, **_) -> Tensor:
        return toeplitz_matrix(self.matrix_factors(u))

    def matrix_factors(self, u: Tensor) -> Tensor:
        return self._project(u)[0]  # the kernel values (batch, heads, L)

    def matrix_rows(self, kernel: Tensor, r0: int, r1: int) -> Tensor:
        """Rows r0..r1-1 of the matrix over columns 0..r1-1 (see SSDMixer.matrix_rows)."""
        return toeplitz_matrix(kernel[..., :r1])[..., r0:r1, :]

    def value_stream(self, u: Tensor) -> Tensor:
        return self._project(u)[1]

    def forward(self, u: Tensor, cache=None, **_) -> Tensor:
        c, x = self._project(u)
        if cache is None:
            y = toeplitz_conv(c, x)
        else:
            start = cache.seq_length(self.layer_idx)
            c_all, x_all = cache.update_kv(self.layer_idx, c[..., None], x)
            c_all = c_all[..., 0]
            if start == 0:
                y = toeplitz_conv(c_all, x_all)
            else:  # the new tokens from the whole history: y_t = sum_k c[k] x[t - k]
                ys = [
                    torch.einsum("bhk,bhkp->bhp", c_all[..., : t + 1].flip(-1).float(), x_all[:, :, : t + 1].float())
                    for t in range(start, start + u.shape[1])
                ]
                y = torch.stack(ys, dim=2).to(x.dtype)
        return self.out_proj(y.transpose(1, 2).flatten(-2))
