"""One SSD decoding step in one Triton kernel, and its PyTorch reference.

Per layer and token, the step of an SSD-family mixer (SSD, Mamba-2 / Bamba, Discrete Mamba-2, linear attention) is

    window = [conv_state | xbc]                      (batch, conv_dim, k): the last k inputs of the depthwise conv
    xbc' = act(sum_j window[:, :, j] * w[:, j] + bias);   conv_state <- window[:, :, 1:]
    x, B, C = split(xbc')                            x (batch, heads, head_dim), B, C (batch, groups, state)
    state <- exp(dt A) state + (dt x) B^T            (x B^T without the dt for Discrete Mamba-2)
    y = state C + D x
    y <- y * z | y * silu(z) | y + z                 the mixer's gate (or Discrete Mamba-2's residual into its norm)

which eagerly is a few dozen small kernels (casts, the conv's cat and sum, the state update, the gate). Here it is one
kernel (the role mamba_ssm's ``selective_state_update`` plays for Mamba-2, with the conv shift and gate folded in): one
program per (sequence, B/C group), looping over the group's heads, so the conv window of the group's B and C channels
is shifted by the one program that reads it. ``conv_state`` and ``state`` are updated in place (their addresses are
a CUDA graph's buffers). :func:`decode_step_reference` computes the same in PyTorch; the tests hold them equal in
Triton's interpreter (TRITON_INTERPRET=1) on the CPU and compiled on a GPU.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from mohawk.mixers.kernels.decode_matvec import pdl_launch

GATES = {"none": 0, "mul": 1, "mul_silu": 2, "add": 3}
DT_MODES = {"given": 0, "softplus_bias": 1, "softplus": 2, "ones": 3}  # dt, softplus(dt + dt_bias), softplus(dt), 1
A_MODES = {"given": 0, "neg_exp": 1, "minus_one": 2, "zero": 3}  # A, -exp(A_log), -1, 0


def conv_step_reference(
    xbc: Tensor, conv_state: Tensor, conv_weight: Tensor, conv_bias: Tensor | None, conv_silu: bool
) -> Tensor:
    """The depthwise conv's output for one new input, float32 (batch, conv_dim): xbc (batch, conv_dim), conv_state
    (batch, conv_dim, k - 1) the previous k - 1 inputs, shifted in place to end with xbc; conv_weight (conv_dim, k)."""
    f32 = torch.float32
    window = torch.cat([conv_state.to(f32), xbc.to(f32)[..., None]], dim=-1)  # (b, conv_dim, k)
    out = (window * conv_weight.to(f32)).sum(-1)
    if conv_bias is not None:
        out = out + conv_bias.to(f32)
    conv_state.copy_(window[..., 1:])
    return F.silu(out) if conv_silu else out


def step_and_decay(
    dt: Tensor | None,
    A: Tensor | None,
    dt_bias: Tensor | None,
    dt_mode: str,
    a_mode: str,
    batch: int,
    heads: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """(dt (batch, heads), A (heads,)) in float32 from what a layer holds, as ``dt_mode`` / ``a_mode`` (DT_MODES /
    A_MODES) say: dt given, softplus(dt + dt_bias), softplus(dt) or 1; A given, -exp(A_log), -1 or 0."""
    f32 = torch.float32
    if dt_mode == "ones":
        dt32 = torch.ones(batch, heads, device=device)
    else:
        assert dt is not None and (dt_bias is not None or dt_mode != "softplus_bias")
        dt32 = dt.to(f32) + dt_bias.to(f32) if dt_bias is not None and dt_mode == "softplus_bias" else dt.to(f32)
        dt32 = dt32 if dt_mode == "given" else F.softplus(dt32)
    if a_mode in ("minus_one", "zero"):
        return dt32, torch.full((heads,), -1.0 if a_mode == "minus_one" else 0.0, device=device)
    assert A is not None
    return dt32, -torch.exp(A.to(f32)) if a_mode == "neg_exp" else A.to(f32)


def decode_step_reference(
    xbc: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    dt: Tensor | None,
    A: Tensor | None,
    D: Tensor | None,
    state: Tensor,
    z: Tensor | None,
    *,
    heads: int,
    groups: int,
    conv_silu: bool,
    x_over_dt: bool = False,
    gate: str = "none",
    out_dtype: torch.dtype | None = None,
    dt_mode: str = "given",
    a_mode: str = "given",
    dt_bias: Tensor | None = None,
) -> Tensor:
    """One step in PyTorch (float32 arithmetic): xbc (batch, conv_dim) new conv inputs, conv_state (batch, conv_dim,
    k - 1), conv_weight (conv_dim, k), dt (batch, heads) after softplus, A and D (heads,), state (batch, heads,
    head_dim, state) float32, z (batch, heads * head_dim) -> y (batch, heads, head_dim) in ``out_dtype`` (default
    xbc's); conv_state and state are updated in place. ``dt_mode`` / ``a_mode`` (DT_MODES / A_MODES) say what dt and
    A hold: the step and decay themselves ("given"), or what the layer makes them from (softplus(dt + dt_bias),
    -exp(A_log), ...), so that those few elementwise kernels happen inside this one."""
    f32 = torch.float32
    b = xbc.shape[0]
    n = state.shape[-1]
    p = state.shape[2]
    out = conv_step_reference(xbc, conv_state, conv_weight, conv_bias, conv_silu)
    x, B, C = torch.split(out, [heads * p, groups * n, groups * n], dim=-1)
    x = x.view(b, heads, p)
    B = B.view(b, groups, n).repeat_interleave(heads // groups, dim=1)
    C = C.view(b, groups, n).repeat_interleave(heads // groups, dim=1)
    dt, A32 = step_and_decay(dt, A, dt_bias, dt_mode, a_mode, b, heads, xbc.device)
    a = torch.exp(dt * A32)[..., None, None]
    inp = x if x_over_dt else x * dt[..., None]
    new = state * a + inp[..., None] * B[:, :, None, :]
    state.copy_(new)
    y = torch.einsum("bhpn,bhn->bhp", new, C)
    if D is not None:
        y = y + x * D.to(f32)[:, None]
    if gate != "none":
        zz = z.to(f32).view(b, heads, p)
        y = {"mul": lambda: y * zz, "mul_silu": lambda: y * F.silu(zz), "add": lambda: y + zz}[gate]()
    return y.to(out_dtype or xbc.dtype)


try:  # Triton comes with CUDA builds of torch; without it the eager step is used
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:

    @triton.jit
    def _softplus(x):
        """log(1 + e^x) (x above 20: x, as torch's softplus), log1p by log(u) y / (u - 1): accurate for small y."""
        y = tl.exp(x)
        u = 1.0 + y
        lp = tl.where(u == 1.0, y, tl.log(u) * (y / (u - 1.0)))
        return tl.where(x > 20.0, x, lp)

    @triton.jit
    def _conv(
        xbc_ptr, conv_ptr, w_ptr, cb_ptr, ch, m, s_cc, s_ck,
        K: tl.constexpr, KB: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    ):  # fmt: skip
        """Conv outputs of channels ``ch`` (masked by m) and their shifted windows (to store after a barrier)."""
        k = tl.arange(0, KB)
        old = tl.load(
            conv_ptr + ch[:, None] * s_cc + k[None, :] * s_ck, mask=m[:, None] & (k[None, :] < K - 1), other=0.0
        )
        new = tl.load(xbc_ptr + ch, mask=m, other=0.0).to(tl.float32)
        win = tl.where(k[None, :] == K - 1, new[:, None], old.to(tl.float32))
        w = tl.load(w_ptr + ch[:, None] * K + k[None, :], mask=m[:, None] & (k[None, :] < K), other=0.0).to(tl.float32)
        out = tl.sum(win * w, axis=1)
        if HAS_BIAS:
            out += tl.load(cb_ptr + ch, mask=m, other=0.0).to(tl.float32)
        if SILU:
            out = out * tl.sigmoid(out)
        nxt = tl.load(
            conv_ptr + ch[:, None] * s_cc + (k[None, :] + 1) * s_ck,
            mask=m[:, None] & (k[None, :] + 1 < K - 1),
            other=0.0,
        )
        shifted = tl.where(k[None, :] == K - 2, new[:, None], nxt.to(tl.float32))
        return out, shifted

    @triton.jit
    def decode_step_kernel(
        xbc_ptr, s_xb, conv_ptr, s_cb, s_cc, s_ck, w_ptr, cb_ptr,
        dt_ptr, s_dtb, dtb_ptr, A_ptr, D_ptr, st_ptr, s_sb, s_sh, s_sp, z_ptr, s_zb, y_ptr, s_yb,
        P, N, D_INNER, GN,
        HPG: tl.constexpr, K: tl.constexpr, KB: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
        HAS_BIAS: tl.constexpr, SILU: tl.constexpr, X_OVER_DT: tl.constexpr, HAS_D: tl.constexpr,
        GATE: tl.constexpr, DT_MODE: tl.constexpr, A_MODE: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        if PDL:  # the next kernel may start while this one runs; this one waits for the one before (decode_pdl)
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        bi = tl.program_id(0)
        g = tl.program_id(1)
        xbc_ptr += bi * s_xb
        conv_ptr += bi * s_cb
        offs_n = tl.arange(0, BN)
        mn = offs_n < N
        offs_p = tl.arange(0, BP)
        mp = offs_p < P
        k = tl.arange(0, KB)
        km = k[None, :] < K - 1
        chB = D_INNER + g * N + offs_n
        chC = D_INNER + GN + g * N + offs_n
        Bv, shB = _conv(xbc_ptr, conv_ptr, w_ptr, cb_ptr, chB, mn, s_cc, s_ck, K, KB, HAS_BIAS, SILU)
        Cv, shC = _conv(xbc_ptr, conv_ptr, w_ptr, cb_ptr, chC, mn, s_cc, s_ck, K, KB, HAS_BIAS, SILU)
        tl.debug_barrier()  # every program's thread has read the windows before any is overwritten
        tl.store(conv_ptr + chB[:, None] * s_cc + k[None, :] * s_ck, shB, mask=mn[:, None] & km)
        tl.store(conv_ptr + chC[:, None] * s_cc + k[None, :] * s_ck, shC, mask=mn[:, None] & km)
        for i in range(HPG):
            h = g * HPG + i
            chx = h * P + offs_p
            x, shx = _conv(xbc_ptr, conv_ptr, w_ptr, cb_ptr, chx, mp, s_cc, s_ck, K, KB, HAS_BIAS, SILU)
            tl.debug_barrier()
            tl.store(conv_ptr + chx[:, None] * s_cc + k[None, :] * s_ck, shx, mask=mp[:, None] & km)
            if DT_MODE == 0:
                dt = tl.load(dt_ptr + bi * s_dtb + h).to(tl.float32)
            elif DT_MODE == 1:
                dt = _softplus(tl.load(dt_ptr + bi * s_dtb + h).to(tl.float32) + tl.load(dtb_ptr + h).to(tl.float32))
            elif DT_MODE == 2:
                dt = _softplus(tl.load(dt_ptr + bi * s_dtb + h).to(tl.float32))
            else:
                dt = 1.0
            if A_MODE == 0:
                a = tl.exp(dt * tl.load(A_ptr + h).to(tl.float32))
            elif A_MODE == 1:
                a = tl.exp(-dt * tl.exp(tl.load(A_ptr + h).to(tl.float32)))
            elif A_MODE == 2:
                a = tl.exp(-dt)
            else:
                a = 1.0
            sp = st_ptr + bi * s_sb + h * s_sh + offs_p[:, None] * s_sp + offs_n[None, :]
            smask = mp[:, None] & mn[None, :]
            s = tl.load(sp, mask=smask, other=0.0)
            if X_OVER_DT:
                inp = x
            else:
                inp = x * dt
            s = s * a + inp[:, None] * Bv[None, :]
            tl.store(sp, s, mask=smask)
            y = tl.sum(s * Cv[None, :], axis=1)
            if HAS_D:
                y += x * tl.load(D_ptr + h).to(tl.float32)
            if GATE != 0:
                zz = tl.load(z_ptr + bi * s_zb + chx, mask=mp, other=0.0).to(tl.float32)
                if GATE == 1:
                    y = y * zz
                elif GATE == 2:
                    y = y * (zz * tl.sigmoid(zz))
                else:
                    y = y + zz
            tl.store(y_ptr + bi * s_yb + chx, y, mask=mp)


# Warps of one (sequence, group) program: 8 over Triton's 4 took 0.90x the time at 1 sequence and 0.97x at 64
# (benchmarks/decode_matvec_sweep.py, H100, SmolLM2-135M's 9 heads x 64 x 64 state).
STEP_WARPS = 8


def decode_step(
    xbc: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    dt: Tensor | None,
    A: Tensor | None,
    D: Tensor | None,
    state: Tensor,
    z: Tensor | None,
    *,
    heads: int,
    groups: int,
    conv_silu: bool,
    x_over_dt: bool = False,
    gate: str = "none",
    out_dtype: torch.dtype | None = None,
    dt_mode: str = "given",
    a_mode: str = "given",
    dt_bias: Tensor | None = None,
    num_warps: int | None = None,
    pdl: bool | None = None,
) -> Tensor:
    """:func:`decode_step_reference` in one Triton kernel (same arguments and in-place updates).
    state must be float32 with a unit last stride; conv_weight (conv_dim, k) contiguous. ``num_warps``: STEP_WARPS
    unless given (benchmarks/decode_matvec_sweep.py times the alternatives); ``pdl``: programmatic dependent launch,
    default decode_matvec.decode_pdl's."""
    b, conv_dim = xbc.shape
    _, _, p, n = state.shape
    k = conv_weight.shape[-1]
    dt_arg = dt if dt is not None else state
    assert state.dtype == torch.float32 and state.stride(-1) == 1 and xbc.stride(-1) == 1
    assert conv_state.shape == (b, conv_dim, k - 1) and k >= 2 and heads % groups == 0
    conv_weight = conv_weight.reshape(conv_dim, k).contiguous()
    y = torch.empty(b, heads, p, dtype=out_dtype or xbc.dtype, device=xbc.device)
    zz = z if z is not None else y
    if z is not None:
        assert z.stride(-1) == 1
    decode_step_kernel[(b, groups)](
        xbc, xbc.stride(0), conv_state, conv_state.stride(0), conv_state.stride(1), conv_state.stride(2),
        conv_weight, conv_bias if conv_bias is not None else conv_weight,
        dt_arg, dt_arg.stride(0), dt_bias if dt_bias is not None else state, A if A is not None else state,
        D if D is not None else state, state, state.stride(0), state.stride(1), state.stride(2),
        zz, zz.stride(0), y, heads * p,
        p, n, heads * p, groups * n,
        HPG=heads // groups, K=k, KB=triton.next_power_of_2(k), BP=triton.next_power_of_2(p),
        BN=triton.next_power_of_2(n), HAS_BIAS=conv_bias is not None, SILU=conv_silu, X_OVER_DT=x_over_dt,
        HAS_D=D is not None, GATE=GATES[gate if z is not None else "none"], DT_MODE=DT_MODES[dt_mode],
        A_MODE=A_MODES[a_mode], num_warps=num_warps or STEP_WARPS,
        **pdl_launch(pdl, xbc.device, b),
    )  # fmt: skip
    return y


CHOICES = ("auto", "triton", "torch")


def use_decode_kernel(x: Tensor) -> bool:
    """Whether a decoding step on ``x``'s device takes :func:`decode_step`. MOHAWK_DECODE_KERNEL chooses: ``auto``
    (default: on CUDA where Triton is installed), ``triton`` (also on the CPU, in Triton's interpreter: tests) or
    ``torch`` (the eager step, for A/B comparisons)."""
    choice = os.environ.get("MOHAWK_DECODE_KERNEL", "auto")
    if choice not in CHOICES:
        raise ValueError(f"MOHAWK_DECODE_KERNEL={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "torch" or torch.is_grad_enabled() or triton is None:
        return False
    return choice == "triton" or x.is_cuda
