"""SSD, the Mamba-2 matrix mixer: the whole algorithm on one page, three equivalent ways, plus mohawk's default layer.

Notation (mamba_ssm's layout): x (batch, L, heads, head_dim), dt (batch, L, heads) after softplus, A (heads,) negative,
B and C (batch, L, groups, state) with heads a multiple of groups (head h reads group h // (heads // groups)).

    a_t = exp(dt_t * A_h)                                   scalar decay per head and step
    h_t = a_t * h_{t-1} + dt_t * x_t B_t^T                  state (head_dim, state) per head
    y_t = h_t C_t (+ D_h x_t)

Unrolled, y = M (x) + D x with the mixing matrix

    M[t, s] = C_t . B_s * prod_{r=s+1..t} a_r * dt_s     for s <= t, else 0

(dt_s is folded into M: M multiplies the raw x stream). The three paths below compute the same function:
``ssd_materialized`` (O(L^2), the reference), ``ssd_chunked`` (O(L) memory, any L, carries a state in and out) and
``ssd_step`` (one token, for decoding). ``ssd`` picks the fastest path available.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mohawk.mixers.kernels import aligned_linear
from mohawk.mixers.kernels.decode_step import use_decode_kernel


def _expand_groups(t: Tensor, heads: int) -> Tensor:
    """(..., groups, n) -> (..., heads, n): head h reads group h // (heads // groups)."""
    groups = t.shape[-2]
    if groups == heads:
        return t
    if heads % groups:
        raise ValueError(f"heads ({heads}) must be a multiple of groups ({groups})")
    return t.repeat_interleave(heads // groups, dim=-2)


def segsum(x: Tensor) -> Tensor:
    """Stable segment sums: (..., L) -> (..., L, L) with out[t, s] = sum_{r=s+1..t} x_r for s <= t, else -inf."""
    L = x.shape[-1]
    xx = x[..., None].expand(*x.shape, L)  # xx[..., r, s] = x_r
    strict = torch.tril(torch.ones(L, L, dtype=torch.bool, device=x.device), diagonal=-1)
    xx = xx.masked_fill(~strict, 0.0)
    out = torch.cumsum(xx, dim=-2)  # out[t, s] = sum_{s < r <= t} x_r
    causal = torch.tril(torch.ones(L, L, dtype=torch.bool, device=x.device))
    return out.masked_fill(~causal, -math.inf)


def ssd_matrix(dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """The SSD mixing matrix M (batch, heads, L, L), dt folded in: y = M @ x per head (before the D skip)."""
    heads = dt.shape[-1]
    Bh, Ch = _expand_groups(B, heads), _expand_groups(C, heads)  # (b, L, h, n)
    decay = torch.exp(segsum((dt * A).transpose(1, 2)))  # (b, h, L, L)
    cb = torch.einsum("bthn,bshn->bhts", Ch, Bh)
    return cb * decay * dt.transpose(1, 2)[:, :, None, :]


def _diagonal(r0: int, r1: int, device) -> Tensor:
    """(r1 - r0, r1) boolean, True at (t - r0, t): the diagonal of rows r0..r1-1."""
    return torch.arange(r1, device=device)[None, :] == torch.arange(r0, r1, device=device)[:, None]


def segsum_rows(x: Tensor, r0: int, r1: int) -> Tensor:
    """Rows r0..r1-1 of ``segsum(x[..., :r1])``: (..., L) -> (..., r1 - r0, r1), without the (L, L) matrix. Each entry
    is a sum of two local cumulative sums (back to r0, then forward to t), as stable as ``segsum``."""
    xb = x[..., :r1]
    inner = segsum(xb[..., r0:r1])  # (..., T, T): columns r0..r1-1
    if r0 == 0:
        return inner
    # columns s < r0: sum_{s < r <= r0} x_r + sum_{r0 < r <= t} x_r
    before = torch.flip(torch.cumsum(torch.flip(xb[..., 1 : r0 + 1], [-1]), -1), [-1])  # (..., r0): s = 0..r0-1
    within = torch.cumsum(xb[..., r0:r1], -1) - xb[..., r0 : r0 + 1]  # (..., T): sum_{r0 < r <= t}
    return torch.cat([within[..., :, None] + before[..., None, :], inner], dim=-1)


def ssd_matrix_rows(dt: Tensor, A: Tensor, B: Tensor, C: Tensor, r0: int, r1: int) -> Tensor:
    """Rows r0..r1-1 of :func:`ssd_matrix` over columns 0..r1-1: (batch, heads, r1 - r0, r1)."""
    heads = dt.shape[-1]
    Bh, Ch = _expand_groups(B[:, :r1], heads), _expand_groups(C[:, r0:r1], heads)
    decay = torch.exp(segsum_rows((dt * A).transpose(1, 2), r0, r1))
    cb = torch.einsum("bthn,bshn->bhts", Ch, Bh)
    return cb * decay * dt[:, :r1].transpose(1, 2)[:, :, None, :]


def ssd_materialized(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None) -> Tensor:
    """Quadratic reference: y (batch, L, heads, head_dim) = M x + D x with M from :func:`ssd_matrix`."""
    M = ssd_matrix(dt, A, B, C).to(x.dtype)
    y = torch.einsum("bhts,bshp->bthp", M, x)
    if D is not None:
        y = y + x * D[:, None]
    return y


def chunked_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    *,
    chunk_size: int,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
):
    """Chunked scan in PyTorch, exact, O(L * chunk_size) memory, any length: SSD's for A (heads,) (one decay per head
    and step), the diagonal SSM's (mixers/ssm.py) for A (heads, state) (one per state channel).

    Quadratic attention-like products inside chunks of ``chunk_size`` tokens, a linear recurrence over chunk states
    between them. initial_state and the returned final state: (batch, heads, head_dim, state), float32.
    """
    b, L, h, p = x.shape
    n = B.shape[-1]
    dtype, f32 = x.dtype, torch.float32
    pad = (-L) % chunk_size
    if pad:  # dt = 0 on padding: decay 1 and no input, so the state passes through unchanged
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c, l = (L + pad) // chunk_size, chunk_size  # noqa: E741 - the einsum subscripts' names
    Bh = _expand_groups(B, h).to(f32).reshape(b, c, l, h, n)
    Ch = _expand_groups(C, h).to(f32).reshape(b, c, l, h, n)
    xdt = (x.to(f32) * dt.to(f32)[..., None]).reshape(b, c, l, h, p)
    if A.dim() == 2:  # a decay per state channel: the decay tensors carry n after h
        Adt = (dt.to(f32)[..., None] * A.to(f32)).reshape(b, c, l, h, n).permute(0, 3, 4, 1, 2)  # (b, h, n, c, l)
        d = "bhn"
    else:
        Adt = (dt.to(f32) * A.to(f32)).reshape(b, c, l, h).permute(0, 3, 1, 2)  # (b, h, c, l)
        d = "bh"
    cum = torch.cumsum(Adt, dim=-1)

    # 1. within chunks: y = (C B^T o decay) x
    decay = torch.exp(segsum(Adt))  # (b, h, [n,] c, l, l)
    y = torch.einsum(f"bclhn,bcshn,{d}cls,bcshp->bclhp", Ch, Bh, decay, xdt)

    # 2. the state each chunk adds, decayed to its end
    to_end = torch.exp(cum[..., -1:] - cum)  # (b, h, [n,] c, l)
    chunk_states = torch.einsum(f"bclhn,{d}cl,bclhp->bchpn", Bh, to_end, xdt)

    # 3. carry states across chunks (sequential: O(c) memory)
    state = x.new_zeros(b, h, p, n, dtype=f32) if initial_state is None else initial_state.to(f32)
    chunk_decay = torch.exp(cum[..., -1])  # (b, h, [n,] c)
    states_in = []
    for i in range(c):
        states_in.append(state)
        state = state * chunk_decay[..., i].reshape(b, h, 1, -1) + chunk_states[:, i]  # (b, h, 1, n or 1)
    states_in = torch.stack(states_in, dim=1)  # (b, c, h, p, n): the state entering each chunk

    # 4. contribution of the incoming state to each position
    y = y + torch.einsum(f"bclhn,bchpn,{d}cl->bclhp", Ch, states_in, torch.exp(cum))
    y = y.reshape(b, c * l, h, p)[:, :L]
    if D is not None:
        y = y + x[:, :L].to(f32) * D.to(f32)[:, None]
    y = y.to(dtype)
    return (y, state) if return_final_state else y


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    *,
    chunk_size: int = 64,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
):
    """SSD's chunked scan in PyTorch (:func:`chunked_scan` with A (heads,)): exact, O(L * chunk_size) memory, any
    length. initial_state and the returned final state: (batch, heads, head_dim, state), float32."""
    return chunked_scan(
        x, dt, A, B, C, D, chunk_size=chunk_size, initial_state=initial_state, return_final_state=return_final_state
    )


def ssd_step(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor, D: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One recurrent step for decoding: x (batch, heads, head_dim), dt (batch, heads), B, C (batch, groups, state),
    state (batch, heads, head_dim, state) -> (y (batch, heads, head_dim), new state)."""
    h = x.shape[1]
    f32 = torch.float32
    Bh, Ch = _expand_groups(B, h).to(f32), _expand_groups(C, h).to(f32)
    dt32 = dt.to(f32)
    a = torch.exp(dt32 * A.to(f32))  # (b, h)
    state = state.to(f32) * a[..., None, None] + (dt32[..., None] * x.to(f32))[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, Ch)
    if D is not None:
        y = y + x.to(f32) * D.to(f32)[:, None]
    return y.to(x.dtype), state


def ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    *,
    chunk_size: int = 64,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
):
    """SSD y (batch, L, heads, head_dim) by the fastest exact path available (see module docstring).

    Returns y, or (y, final_state (batch, heads, head_dim, state)) when ``return_final_state``.
    """
    from mohawk.mixers.kernels import ssd_kernel

    kernel = ssd_kernel(x)
    if kernel is not None:
        return kernel(
            x, dt, A, B, C, D, chunk_size=chunk_size, initial_state=initial_state, return_final_state=return_final_state
        )
    return ssd_chunked(
        x, dt, A, B, C, D, chunk_size=chunk_size, initial_state=initial_state, return_final_state=return_final_state
    )


class SSDMixer(nn.Module):
    """mohawk's default student mixer (``ssd``): Mamba-2's continuous-time SSD inside a layer set up to stand in for
    an attention layer. It is neither official layer exactly.

    u (batch, L, hidden) -> in_proj -> [z | x | B | C | dt] -> causal depthwise conv over (x, B, C) -> activation ->
    SSD with dt = softplus(dt + dt_bias), A = -exp(A_log), + D x -> optional gate (y * act(z)) -> optional RMSNorm ->
    out_proj -> (batch, L, hidden).

    The parameterisation is Mamba-2's (state-spaces/mamba ``Mamba2``: a learned step dt per head and token that scales
    the input and sets the decay exp(dt A), A per head, dt initialised in [dt_min, dt_max], A in A_init_range). The
    defaults depart from the official Mamba-2 layer where the MOHAWK initialisation from attention needs x, B, C to
    be plain projections of u (like V, K, Q): the conv starts at identity (Mamba-2: random) with no activation after
    it (Mamba-2: SiLU), the gate y * z has no activation and starts at 1 (weight 0, bias 1; Mamba-2: y * SiLU(z)), no
    norm before out_proj (Mamba-2: a grouped RMSNorm of the gated y), D starts at 0 (Mamba-2: 1), and in_proj has a
    bias. They also depart from the paper's own student, Phi-Mamba's Discrete Mamba-2 (``discrete_mamba2``), which has
    no dt: its decay is a_t = exp(-softplus(.)) with A = -1 and the input is not scaled by a step. ``mamba2`` is the
    official Mamba-2 layer as transformers' Bamba computes it.

    ``materialize(u)`` gives the mixing matrix (batch, heads, L, L) that multiplies the value stream x (after the
    conv), D on its diagonal, so that ``M @ x`` is y before the gate and out_proj.
    """

    has_dt = True  # input-dependent step and decay (False: linear attention, no decay)
    fixed: dict = {}  # settings a subclass fixes whatever the config says (use_gate, conv_activation, ...)
    # the in_proj rows M is linear in that mohawk.transfer.scale_to_attention rescales after the transfer; None: the
    # SSD starts as transferred
    attention_scaled_rows: str | None = None
    # whether in_proj may go without a bias (ssd_proj_bias=False): only where a per-group norm follows the gate, which
    # then starts open from a direction of the inputs instead (Mamba2Mixer.open_gate)
    gate_opens_without_bias = False

    def __init__(self, config, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.d_inner = self.num_heads * self.head_dim
        self.state_size = config.ssd_state_size
        self.num_groups = config.ssd_num_groups or self.num_heads
        self.chunk_size = config.ssd_chunk_size
        self.conv_kernel = config.ssd_conv_kernel
        self.conv_activation = config.ssd_conv_activation
        self.gate_activation = config.ssd_gate_activation
        self.use_gate = config.ssd_gate
        self.config = config
        for k, v in self.fixed.items():
            setattr(self, k, v)
        self.conv_dim = self.d_inner + 2 * self.num_groups * self.state_size
        proj = (self.d_inner if self.use_gate else 0) + self.conv_dim + (self.num_heads if self.has_dt else 0)
        if not config.ssd_proj_bias and not self.gate_opens_without_bias:
            raise ValueError(f"ssd_proj_bias=False: the {type(self).__name__}'s gate starts open through its bias")
        self.in_proj = nn.Linear(self.hidden_size, proj, bias=config.ssd_proj_bias)
        self.conv1d = nn.Conv1d(
            self.conv_dim,
            self.conv_dim,
            self.conv_kernel,
            groups=self.conv_dim,
            padding=self.conv_kernel - 1,
            bias=True,
        )
        if self.has_dt:
            self.dt_bias = nn.Parameter(torch.zeros(self.num_heads))
            self.A_log = nn.Parameter(torch.zeros(self.decay_shape()))
        self.D = nn.Parameter(torch.zeros(self.num_heads))
        self.norm = nn.RMSNorm(self.d_inner, eps=1e-5) if config.ssd_norm else None
        self.out_proj = nn.Linear(self.d_inner, self.hidden_size, bias=config.attention_out_bias)

    # -- parameter layout -------------------------------------------------------------------------------------------
    def in_proj_slices(self) -> dict[str, slice]:
        """Rows of in_proj.weight holding z, x, B, C and dt."""
        sizes = {
            "z": self.d_inner if self.use_gate else 0,
            "x": self.d_inner,
            "B": self.num_groups * self.state_size,
            "C": self.num_groups * self.state_size,
            "dt": self.num_heads if self.has_dt else 0,
        }
        out, start = {}, 0
        for k, s in sizes.items():
            out[k] = slice(start, start + s)
            start += s
        return out

    @torch.no_grad()
    def reset_parameters(self, std: float | None = None) -> None:
        """The default initialisation: identity conv, gate = 1, dt in [dt_min, dt_max], A in A_init_range, D = 0.

        Written through transformers' init helpers, which leave tensors loaded from a checkpoint untouched."""
        from transformers import initialization as init

        c = self.config
        std = c.initializer_range if std is None else std
        s = self.in_proj_slices()
        w = torch.randn_like(self.in_proj.weight, device="cpu") * std
        if self.in_proj.bias is not None:
            bias = torch.zeros_like(self.in_proj.bias, device="cpu")
            if self.use_gate:
                w[s["z"]] = 0.0
                bias[s["z"]] = 1.0
            init.copy_(self.in_proj.bias, bias)
        init.copy_(self.in_proj.weight, w)  # without a bias the gate's rows stay random (Mamba-2's default)
        conv = torch.zeros_like(self.conv1d.weight, device="cpu")
        if c.ssd_conv_init == "identity":
            conv[:, 0, -1] = 1.0
        else:
            nn.init.kaiming_uniform_(conv, a=math.sqrt(5))
        init.copy_(self.conv1d.weight, conv)
        init.zeros_(self.conv1d.bias)
        if self.has_dt:
            dt = torch.exp(
                torch.rand(self.num_heads) * (math.log(c.ssd_dt_max) - math.log(c.ssd_dt_min)) + math.log(c.ssd_dt_min)
            )
            init.copy_(self.dt_bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            lo, hi = c.ssd_A_init_range
            init.copy_(self.A_log, torch.log(torch.empty(self.decay_shape()).uniform_(lo, hi)))
        init.zeros_(self.D)
        init.normal_(self.out_proj.weight, std=std)
        if self.out_proj.bias is not None:
            init.zeros_(self.out_proj.bias)
        if self.norm is not None:
            init.ones_(self.norm.weight)

    @torch.no_grad()
    def after_attention_init(self, v_rms: Tensor | None = None) -> None:
        """What the weight transfer sets after writing x, B, C and out_proj from the teacher's attention (see
        mohawk.transfer.init_ssd_from_attention; ``v_rms`` (d_inner,): an estimate of the value stream's RMS per
        feature): nothing here; subclasses whose other parts would change the attention-like output at the start
        neutralise them."""

    @torch.no_grad()
    def scale_conv(self) -> None:
        """Scale the transferred (identity) conv by s = ``config.ssd_conv_scale`` so that the SiLU after it starts
        near its linear range, SiLU(s u) ~ s u / 2, keeping the signs of the teacher's V, K, Q in x, B, C; y then
        shrinks by about (s / 2)^3, which the gate takes back (its constant start, bias or fitted direction, times
        (2 / s)^3), so that a norm after the gate does not see values below its epsilon. Nothing to do without a SiLU
        after the conv or at scale 1."""
        gain = self.gate_gain()
        if gain == 1:
            return
        if not self.use_gate:
            raise ValueError("ssd_conv_scale < 1 needs the gate, which takes back the scale")
        self.conv1d.weight.mul_(self.config.ssd_conv_scale)
        self.conv1d.bias.mul_(self.config.ssd_conv_scale)
        if self.in_proj.bias is not None:  # the gate's start: a constant, act(bias)
            b = self.in_proj.bias[self.in_proj_slices()["z"]]
            b.copy_(self._gate_preimage(self._act(b.float(), self.gate_activation) * gain).to(b))

    def gate_gain(self) -> float:
        """How much the gate's start is multiplied by to take back the conv's scale (see ``scale_conv``)."""
        s = self.config.ssd_conv_scale
        return 1.0 if s == 1 or self.conv_activation != "silu" else (2 / s) ** 3

    def _gate_preimage(self, g: Tensor) -> Tensor:
        """z with act(z) = g (g > 0): Newton's method on SiLU (from z = g, already close for g >~ 5)."""
        if self.gate_activation != "silu":
            return g
        z = g.double()
        for _ in range(20):
            s = torch.sigmoid(z)
            z = z - (z * s - g) / (s * (1 + z * (1 - s)))
        return z.to(g.dtype)

    # -- shared pieces ----------------------------------------------------------------------------------------------
    def _act(self, t: Tensor, kind: str) -> Tensor:
        return F.silu(t) if kind == "silu" else t

    def _split(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(..., conv_dim) -> x (..., heads, head_dim), B and C (..., groups, state)."""
        g, n = self.num_groups, self.state_size
        x, B, C = torch.split(xbc, [self.d_inner, g * n, g * n], dim=-1)
        return (x.unflatten(-1, (self.num_heads, self.head_dim)), B.unflatten(-1, (g, n)), C.unflatten(-1, (g, n)))

    def _project(self, u: Tensor):
        """u (b, L, hidden) -> z (or None), xBC before the conv (b, L, conv_dim), dt after softplus (b, L, heads)."""
        proj = aligned_linear(self.in_proj, u)
        s = self.in_proj_slices()
        z = proj[..., s["z"]] if self.use_gate else None
        xbc = proj[..., s["x"].start : s["C"].stop]
        if not self.has_dt:
            return z, xbc, proj.new_ones(*proj.shape[:-1], self.num_heads, dtype=torch.float32)
        dt = F.softplus(proj[..., s["dt"]].float() + self.dt_bias.float())
        return z, xbc, dt

    def _conv(self, xbc: Tensor, conv_state: Tensor | None = None) -> Tensor:
        """Causal depthwise conv over (b, L, conv_dim); ``conv_state`` (b, conv_dim, k - 1): the inputs before xbc."""
        L = xbc.shape[1]
        if conv_state is None and torch.compiler.is_compiling():
            # k shifted multiply-adds: compiled, one fused kernel each way instead of cuDNN's depthwise conv
            # forward and its two backward kernels
            k = self.conv_kernel
            padded = F.pad(xbc, (0, 0, k - 1, 0)).float()  # float32 sums, as the conv accumulates
            w = self.conv1d.weight[:, 0, :].float()
            out = sum(padded[:, j : j + L] * w[:, j] for j in range(k)) + self.conv1d.bias.float()
            return self._act(out.to(xbc.dtype), self.conv_activation)
        if conv_state is None:
            out = self.conv1d(xbc.transpose(1, 2))[..., :L]
        else:
            window = torch.cat([conv_state.to(xbc.dtype), xbc.transpose(1, 2)], dim=-1)
            out = F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=self.conv1d.groups)
        return self._act(out.transpose(1, 2), self.conv_activation)

    def _finish(self, y: Tensor, z: Tensor | None) -> Tensor:
        """y (b, L, heads, head_dim) -> gate -> norm -> out_proj -> (b, L, hidden)."""
        y = y.flatten(-2)
        if z is not None:
            y = y * self._act(z, self.gate_activation)
        if self.norm is not None:
            y = self.norm(y)
        return self.out_proj(y)

    def decay_shape(self) -> tuple[int, ...]:
        return (self.num_heads,)  # one scalar decay per head: SSD

    def A(self) -> Tensor:
        return -torch.exp(self.A_log.float())

    # the family's kernels (subclasses swap these three)
    def _matrix(self, dt: Tensor, B: Tensor, C: Tensor) -> Tensor:
        return ssd_matrix(dt, self.A(), B, C)

    def _scan(
        self, x: Tensor, dt: Tensor, B: Tensor, C: Tensor, return_final_state: bool, initial_state: Tensor | None = None
    ):
        return ssd(
            x,
            dt,
            self.A(),
            B,
            C,
            self.D,
            chunk_size=self.chunk_size,
            initial_state=initial_state,
            return_final_state=return_final_state,
        )

    def _step(self, x: Tensor, dt: Tensor, B: Tensor, C: Tensor, state: Tensor):
        return ssd_step(x, dt, self.A(), B, C, state, self.D)

    def _matrix_rows(self, dt: Tensor, B: Tensor, C: Tensor, r0: int, r1: int) -> Tensor:
        return ssd_matrix_rows(dt, self.A(), B, C, r0, r1)

    # -- the three ways to run it -------------------------------------------------------------------------------------
    def materialize(self, u: Tensor, **_) -> Tensor:
        """Mixing matrix (batch, heads, L, L) over the value stream x, D on the diagonal."""
        M = self._matrix(*self.matrix_factors(u))
        return M + torch.diag_embed(self.D.float()[None, :, None].expand_as(M[..., 0]))

    def matrix_factors(self, u: Tensor):
        """What the mixing matrix is made of (dt, B, C), computed once for :meth:`matrix_rows`."""
        _, xbc, dt = self._project(u)
        _, B, C = self._split(self._conv(xbc))
        return dt, B.float(), C.float()

    def matrix_rows(self, factors, r0: int, r1: int) -> Tensor:
        """Rows r0..r1-1 of ``materialize(u)`` over columns 0..r1-1 (batch, heads, r1 - r0, r1), from
        ``matrix_factors(u)``: what a tiled stage-1 loss needs, without the (L, L) matrix."""
        dt, B, C = factors
        M = self._matrix_rows(dt, B, C, r0, r1)
        return M + _diagonal(r0, r1, M.device) * self.D.float()[None, :, None, None]

    def value_stream(self, u: Tensor) -> Tensor:
        """x (batch, heads, L, head_dim): what ``materialize(u)`` multiplies."""
        _, xbc, _ = self._project(u)
        x, _, _ = self._split(self._conv(xbc))
        return x.transpose(1, 2)

    def forward(self, u: Tensor, cache=None, **_) -> Tensor:
        """u (batch, L, hidden) -> (batch, L, hidden). With ``cache`` (a MohawkCache), carries conv and SSM state: one
        token takes the recurrent step, several tokens the chunked scan from the cached state (a prompt fed in
        pieces, see MohawkModel's prefill_chunk)."""
        fused = self._fused_settings_for(u, cache)
        if fused is not None:
            return self._forward_fused(u, cache, fused)
        z, xbc_raw, dt = self._project(u)
        cached = cache is not None and cache.has_state(self.layer_idx)
        if cached and u.shape[1] == 1:
            return self._forward_recurrent(u, z, xbc_raw, dt, cache)
        conv_state, state = cache.get_state(self.layer_idx) if cached else (None, None)
        x, B, C = self._split(self._conv(xbc_raw, conv_state))
        out = self._scan(x, dt, B, C, return_final_state=cache is not None, initial_state=state)
        if cache is None:
            return self._finish(out, z)
        y, state = out
        k = self.conv_kernel - 1
        history = xbc_raw.transpose(1, 2)
        if conv_state is not None:
            history = torch.cat([conv_state.to(history.dtype), history], dim=-1)
        padded = F.pad(history, (max(0, k - history.shape[-1]), 0))
        # the last k inputs, copied: a view would keep the whole chunk's (b, conv_dim, L) alive in the cache
        cache.set_state(self.layer_idx, padded[..., padded.shape[-1] - k :].contiguous(), state)
        return self._finish(y, z)

    # the fused decoding step's settings (mohawk.mixers.kernels.decode_step), or None where this family's step is
    # not SSD's (the diagonal SSM's per-channel decay)
    def _fused_step_settings(self) -> dict | None:
        if type(self)._step is not SSDMixer._step:
            return None
        gate = "none" if self.use_gate is False else ("mul_silu" if self.gate_activation == "silu" else "mul")
        modes = (
            {"dt_mode": "softplus_bias", "a_mode": "neg_exp"} if self.has_dt else {"dt_mode": "ones", "a_mode": "zero"}
        )
        return {"x_over_dt": False, "gate": gate, "out_dtype": None, **modes}

    def _out_input(self, g: Tensor) -> Tensor:
        """g (b, L, d_inner): y after the gate the fused step applied -> what out_proj reads (after the output norm
        where there is one)."""
        return self.norm(g) if self.norm is not None else g

    def _finish_gated(self, g: Tensor) -> Tensor:
        """g (b, L, d_inner): y after the gate the fused step applied -> the rest of ``_finish``."""
        return self.out_proj(self._out_input(g))

    def _fused_settings_for(self, u: Tensor, cache) -> dict | None:
        """The fused step's settings when this one-token step can take it, else None."""
        if cache is None or u.shape[1] != 1 or not cache.has_state(self.layer_idx) or self.conv_kernel < 2:
            return None
        settings = self._fused_step_settings()
        state = cache.get_state(self.layer_idx)[1]
        if settings is None or state.dtype != torch.float32 or not state.is_contiguous() or not use_decode_kernel(u):
            return None
        return settings

    def residual_step(self, h: Tensor, norm, cache) -> Tensor | None:
        """``h + self(norm(h), cache=cache)`` for one token h (b, 1, hidden) through the fused step, the block's
        RMSNorm ``norm`` folded into in_proj and the residual add into out_proj (MOHAWK_DECODE_MATVEC=fused:
        mohawk.mixers.kernels.decode_matvec); None where the fused step does not apply."""
        settings = self._fused_settings_for(h, cache)
        return None if settings is None else self._forward_fused(h, cache, settings, norm)

    def _forward_fused(self, u: Tensor, cache, settings: dict, norm=None) -> Tensor:
        """One token (u (b, 1, hidden)) through the fused Triton step: from in_proj's raw output, the dt softplus,
        the decay, conv shift, state update, D skip and gate in one kernel; the cached conv window and state are
        updated in place. With ``norm`` (:meth:`residual_step`), u is the block's input h and this returns
        ``h + mixer(norm(h))``, norm + in_proj and out_proj + residual each one kernel."""
        from mohawk.mixers.kernels.decode_matvec import decode_matvec
        from mohawk.mixers.kernels.decode_step import decode_step

        s = self.in_proj_slices()
        if norm is not None:
            proj = decode_matvec(u[:, 0], self.in_proj.weight, self.in_proj.bias, norm_weight=norm.weight, eps=norm.eps)
        else:
            proj = aligned_linear(self.in_proj, u)[:, 0]
        dt = proj[:, s["dt"]]
        z = proj[:, s["z"]] if settings["gate"] != "none" else None
        conv_state, state = cache.get_state(self.layer_idx)
        y = decode_step(
            proj[:, s["x"].start : s["C"].stop],
            conv_state,
            self.conv1d.weight[:, 0, :],
            self.conv1d.bias,
            dt if settings["dt_mode"] != "ones" else None,
            self.A_log if settings["a_mode"] == "neg_exp" else None,
            self.D,
            state,
            z,
            heads=self.num_heads,
            groups=self.num_groups,
            conv_silu=self.conv_activation == "silu",
            x_over_dt=settings["x_over_dt"],
            gate=settings["gate"],
            out_dtype=settings["out_dtype"] or proj.dtype,
            dt_mode=settings["dt_mode"],
            a_mode=settings["a_mode"],
            dt_bias=self.dt_bias if settings["dt_mode"] == "softplus_bias" else None,
        )
        if norm is not None:
            g = self._out_input(y.flatten(-2)[:, None])[:, 0]
            return decode_matvec(g, self.out_proj.weight, self.out_proj.bias, residual=u[:, 0])[:, None]
        return self._finish_gated(y.flatten(-2)[:, None])

    def _forward_recurrent(self, u, z, xbc_raw, dt, cache) -> Tensor:
        """Token by token from the cached conv window and SSM state (decoding): O(1) memory in the context length."""
        conv_state, state = cache.get_state(self.layer_idx)
        w = self.conv1d.weight[:, 0, :]  # (conv_dim, k)
        ys = []
        for t in range(u.shape[1]):
            window = torch.cat([conv_state, xbc_raw[:, t, :, None]], dim=-1)  # (b, conv_dim, k)
            xbc = self._act((window * w).sum(-1) + self.conv1d.bias, self.conv_activation)
            conv_state = window[..., 1:]
            x, B, C = self._split(xbc)
            y, state = self._step(x, dt[:, t], B, C, state)
            ys.append(y)
        cache.set_state(self.layer_idx, conv_state, state)
        return self._finish(torch.stack(ys, dim=1), z)
