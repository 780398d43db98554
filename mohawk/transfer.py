"""Weight transfer: build a student from a teacher, copying everything but the mixers it replaces.

``from_teacher`` copies embeddings (and learned positions), norms, MLPs, the final norm and the LM head; layers listed
in ``attention_layers`` keep the teacher's attention exactly; the other layers get an SSD mixer, initialised by
default from the attention projections (C <- W_Q * scale, B <- W_K, x <- W_V, out_proj <- W_O, as Mamba-in-Llama
does), so that before any training each SSD layer is a decayed linear attention over the teacher's own features
(the other families take what applies to them: x and out_proj for Toeplitz, all four for SSM and linear attention).
``ssd_init="random"`` keeps Mamba-2's random projections instead.

The families other than SSD then get their matrix rescaled (``scale_to_attention`` on a calibration batch; `mohawk
distill` calls it through ``calibrate``): without
it linear attention (no decay, no dt) starts tens of times farther from the attention matrix than the SSD, Toeplitz
(a random kernel) a few times; the SSD is left as transferred.
"""

from __future__ import annotations

import torch

from mohawk.errors import MohawkError
from mohawk.mixers.heads import replaced_part, select_heads
from mohawk.models import MohawkForCausalLM
from mohawk.teachers.base import TeacherAdapter


def parse_attention_layers(attention_layers, num_layers: int) -> list[int]:
    """None -> [], "all" -> every layer, indices -> validated sorted list (in range, no repeats)."""
    if attention_layers is None:
        return []
    if isinstance(attention_layers, str):
        if attention_layers == "all":
            return list(range(num_layers))
        if attention_layers.strip() in ("", "none"):
            return []
        try:
            attention_layers = [int(x) for x in attention_layers.split(",") if x.strip()]
        except ValueError:
            raise MohawkError(
                f"attention layers must be 'all', 'none' or comma-separated integers, got {attention_layers!r}"
            ) from None
    layers = [int(i) for i in attention_layers]
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise MohawkError(
            f"attention layer index {bad[0]} is out of range: the teacher has {num_layers} layers (0..{num_layers - 1})"
        )
    if len(set(layers)) != len(layers):
        dup = next(i for i in layers if layers.count(i) > 1)
        raise MohawkError(f"attention layer index {dup} is repeated")
    return sorted(layers)


def parse_attention_heads(
    value, num_layers: int | None = None, num_kv: int | None = None, name: str = "attention_heads"
):
    """None or "" -> {}; "17:0,2;18:1" or {17: [0, 2], 18: [1]} -> {layer: sorted KV groups kept as attention},
    checked against ``num_layers`` and ``num_kv`` where given; a MohawkError naming ``name`` (the flag) otherwise."""

    def bad(why: str):
        return MohawkError(f"bad value for {name}: {value!r} ({why})")

    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            pairs = [part.split(":") for part in value.split(";") if part.strip()]
            value_map = {int(k): [int(g) for g in v.split(",") if g.strip()] for k, v in pairs}
        except ValueError:
            raise bad("layer:group,group;layer:group, e.g. 17:0,2;18:1") from None
        if len(value_map) != len(pairs):
            raise bad("a layer is repeated")
    else:
        value_map = {int(k): [int(g) for g in v] for k, v in dict(value).items()}
    for layer, groups in value_map.items():
        if not groups or len(set(groups)) != len(groups):
            raise bad(f"layer {layer} needs distinct KV groups")
        if num_layers is not None and not 0 <= layer < num_layers:
            raise bad(f"layer {layer} is out of range: the teacher has {num_layers} layers")
        if num_kv is not None and not all(0 <= g < num_kv for g in groups):
            raise bad(f"layer {layer}: KV groups are 0..{num_kv - 1} in this teacher")
    return {layer: sorted(groups) for layer, groups in sorted(value_map.items())}


def layer_mixers(
    num_layers: int, attention_layers: list[int], attention_heads: dict[int, list[int]], family: str, num_kv: int
) -> tuple[list[str], list[list[int]]]:
    """Each layer's mixer kind and its KV groups kept as attention (MohawkConfig's mixers and attention_groups): a
    layer in ``attention_layers`` or keeping every group is "attention", one keeping none ``family``, else "heads"."""
    both = sorted(set(attention_layers) & set(attention_heads))
    if both:
        raise MohawkError(f"layer {both[0]} is kept whole as attention and by heads: give it one way")
    mixers, groups = [], []
    for i in range(num_layers):
        kept = attention_heads.get(i, [])
        whole = i in attention_layers or len(kept) == num_kv
        mixers.append("attention" if whole else "heads" if kept else family)
        groups.append(kept if mixers[-1] == "heads" else [])
    return mixers, groups


def slice_attention(attn: dict[str, torch.Tensor], groups: list[int], config) -> dict[str, torch.Tensor]:
    """An attention layer's weights (Attention's names) restricted to the query and KV heads of KV ``groups``: rows
    of q/k/v_proj, columns of o_proj; the rest (o_proj's bias, QK norms, inv_freq) as they are."""
    from mohawk.mixers.heads import group_heads

    h, kv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim

    def rows(heads):
        return torch.tensor([i * d + j for i in heads for j in range(d)], dtype=torch.long)

    q_rows, kv_rows = rows(group_heads(groups, h // kv)), rows(groups)
    out = {}
    for k, t in attn.items():
        if k.startswith("q_proj."):
            out[k] = t[q_rows]
        elif k.startswith(("k_proj.", "v_proj.")):
            out[k] = t[kv_rows]
        elif k == "o_proj.weight":
            out[k] = t[:, q_rows]
        else:
            out[k] = t
    return out


def _heads_weights(mixer, attn: dict, config, ssd_init: str, input_norm) -> dict[str, torch.Tensor]:
    """A "heads" layer from the teacher's attention weights ``attn``: its attention part's weights (to load, names
    under the mixer), its student part initialised in place from its own heads' projections (``ssd_init``)."""
    from mohawk.mixers.heads import part_config

    kv = config.num_key_value_heads
    kept = config.attention_groups[mixer.layer_idx]
    rest = [g for g in range(kv) if g not in kept]
    if ssd_init == "attention":
        init_ssd_from_attention(
            mixer.student, slice_attention(attn, rest, config), part_config(config, rest, False), input_norm
        )
    return {f"attention.{k}": v for k, v in slice_attention(attn, kept, config).items()}


def place_attention_layers(num: int, num_layers: int, placement: str = "uniform") -> list[int]:
    """Choose ``num`` layers to keep as attention: "uniform" (evenly spread, centred), "first" or "last"."""
    if not 0 <= num <= num_layers:
        raise MohawkError(f"cannot keep {num} attention layers in a {num_layers}-layer teacher")
    if num == 0:
        return []
    if placement == "first":
        return list(range(num))
    if placement == "last":
        return list(range(num_layers - num, num_layers))
    if placement == "uniform":
        step = num_layers / num
        return sorted({int(step * k + step / 2) for k in range(num)})
    raise MohawkError(f"unknown placement {placement!r}: use uniform, first or last")


def _adapter(teacher) -> TeacherAdapter:
    from mohawk.teachers import adapter_for

    return teacher if isinstance(teacher, TeacherAdapter) else adapter_for(teacher)


def _fold_head_norm(w: torch.Tensor, norm: torch.Tensor, gain: torch.Tensor, d: int) -> torch.Tensor:
    """A projection followed by a per-head RMSNorm, (heads * d, hidden), as one linear map: each head's rows scaled
    by norm / (the head's RMS estimated without data, sqrt(mean_j sum_i W[j, i]^2 g_i^2) for an input of per-feature
    RMS g)."""
    rms = ((w.float() ** 2 * gain).sum(1).unflatten(0, (-1, d)).mean(1)).sqrt()  # (heads,)
    return (
        (w.float().unflatten(0, (-1, d)) / rms[:, None, None] * norm.float()[None, :, None]).flatten(0, 1).to(w.dtype)
    )


def _bias_through_conv(mixer, rows: torch.Tensor, bias: torch.Tensor) -> None:
    """Add an in_proj bias of ``rows`` (x, B or C rows) to the conv's bias instead: exact while the conv is at
    identity (one tap, the current token's), as transferred."""
    conv = mixer.conv1d.weight[:, 0]  # (conv_dim, k)
    channels = torch.as_tensor(rows).flatten() if not isinstance(rows, slice) else torch.arange(rows.start, rows.stop)
    channels = (channels - mixer.in_proj_slices()["x"].start).to(conv.device)
    if conv[channels, :-1].any():
        raise MohawkError("internal: an in_proj bias moved into a conv that is not at identity")
    bias = bias.to(conv.device).float()
    mixer.conv1d.bias[channels] += (bias * conv[channels, -1].float()).to(mixer.conv1d.bias.dtype)


@torch.no_grad()
def init_ssd_from_attention(
    mixer, attn_weights: dict[str, torch.Tensor], config, input_norm: torch.Tensor | None = None
) -> None:
    """Write an attention layer's projections into an SSDMixer (see module docstring); biases likewise.

    ``input_norm``: the weight of the norm before the layer, for a data-free estimate of the value stream's RMS per
    feature, sqrt(sum_i W_V[j, i]^2 g_i^2), which mixers with a norm on their output use to start at the attention
    output's scale (see after_attention_init)."""
    s = mixer.in_proj_slices()
    h, kv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    g, n = getattr(mixer, "num_groups", None), getattr(mixer, "state_size", None)
    scale = config.attention_scale if config.attention_scale is not None else d**-0.5
    W, b = mixer.in_proj.weight, mixer.in_proj.bias

    def per_head(t, heads_in, heads_out):  # (heads_in * d, ...) -> (heads_out * d, ...), repeating whole heads
        return t.unflatten(0, (heads_in, d)).repeat_interleave(heads_out // heads_in, dim=0).flatten(0, 1)

    def write(rows, weight, bias):
        W[rows] = weight.to(W.device, W.dtype)
        if bias is not None and b is not None:
            b[rows] = bias.to(b.device, b.dtype)
        elif bias is not None:  # no in_proj bias: x, B, C rows take theirs through the conv's bias
            _bias_through_conv(mixer, rows, bias)

    q_w, q_b = attn_weights["q_proj.weight"], attn_weights.get("q_proj.bias")
    k_w, k_b = attn_weights["k_proj.weight"], attn_weights.get("k_proj.bias")
    v_w, v_b = attn_weights["v_proj.weight"], attn_weights.get("v_proj.bias")
    gain = input_norm.float() ** 2 if input_norm is not None else torch.ones(v_w.shape[1], device=v_w.device)
    if "q_norm.weight" in attn_weights:  # QK-norm (Gemma 3): fold it in at the heads' estimated RMS
        q_w, k_w = (
            _fold_head_norm(w, attn_weights[f"{name}_norm.weight"], gain, d) for w, name in ((q_w, "q"), (k_w, "k"))
        )
        q_b = k_b = None
    write(s["x"], per_head(v_w, kv, h), None if v_b is None else per_head(v_b, kv, h))
    if "B" in s and n is not None and n >= d and (g == h or g == kv):  # families with B and C (not Toeplitz)
        # a state wider than head_dim: each group's first d channels take the keys and queries, the others start
        # with C = 0 (the matrix is the transferred one) and B random (so C's gradient is not zero there)
        first_d = (torch.arange(g)[:, None] * n + torch.arange(d)[None, :]).flatten()
        rows_B, rows_C = first_d + s["B"].start, first_d + s["C"].start
        if n > d:
            extra = torch.ones(g * n, dtype=torch.bool)
            extra[first_d] = False
            W[s["C"].start + extra.nonzero().flatten()] = 0.0
            if b is not None:
                b[s["C"]] = 0.0
        write(rows_B, per_head(k_w, kv, g), None if k_b is None else per_head(k_b, kv, g))
        if g == h:
            write(rows_C, q_w * scale, None if q_b is None else q_b * scale)
        else:  # one C per group: the group's first query head
            first = q_w.unflatten(0, (h, d))[:: h // g].flatten(0, 1)
            write(rows_C, first * scale, None if q_b is None else q_b.unflatten(0, (h, d))[:: h // g].flatten() * scale)
    mixer.out_proj.weight.copy_(attn_weights["o_proj.weight"])
    if mixer.out_proj.bias is not None and "o_proj.bias" in attn_weights:
        mixer.out_proj.bias.copy_(attn_weights["o_proj.bias"])
    v_rms = per_head((v_w.float() ** 2 * gain).sum(1).sqrt(), kv, h)
    mixer.after_attention_init(v_rms)
    if hasattr(mixer, "scale_conv"):
        mixer.scale_conv()


def from_teacher(
    teacher,
    attention_layers=None,
    *,
    mixer: str = "ssd",
    ssd_init: str = "attention",
    attention_heads=None,
    calibration_ids: torch.Tensor | None = None,
    **student_options,
) -> MohawkForCausalLM:
    """A student of ``teacher`` (an HF causal LM or a TeacherAdapter) with its non-mixer weights copied.

    attention_layers: None (no attention), "all" (the teacher itself, re-expressed), or layer indices kept as attention.
    attention_heads: {layer: KV groups} (or "17:0,2;18:1") kept as attention inside otherwise replaced layers (a
    head-level hybrid, mohawk.mixers.heads; a layer keeping every group is an attention layer).
    mixer: the family replacing attention elsewhere: ssd (default), ssm, linear_attention or toeplitz.
    student_options: MohawkConfig fields (ssd_state_size, ssd_conv_kernel, ...).
    calibration_ids: (batch, L) teacher tokens on which mamba2 mixers without an in_proj bias (ssd_proj_bias=False)
    open their gates (``fit_gates``); default: RANDOM_CALIBRATION seeded random tokens, which misses some text
    tokens of the first layer's inputs (mohawk distill refits on its first training sequences: ``calibrate``)."""
    from mohawk.mixers import STUDENT_MIXERS

    if ssd_init not in ("attention", "random"):
        raise MohawkError(f"ssd_init must be 'attention' or 'random', got {ssd_init!r}")
    if mixer not in STUDENT_MIXERS:
        raise MohawkError(f"unknown mixer {mixer!r}: use one of {', '.join(STUDENT_MIXERS)}")
    adapter = _adapter(teacher)
    n = adapter.num_layers
    num_kv = adapter.student_config().num_key_value_heads
    heads = parse_attention_heads(attention_heads, n, num_kv)
    mixers, groups = layer_mixers(n, parse_attention_layers(attention_layers, n), heads, mixer, num_kv)
    if heads:
        student_options = {**student_options, "attention_groups": groups, "heads_family": mixer}
    config = adapter.student_config(mixers=mixers, **student_options)
    student = MohawkForCausalLM(config)
    weights = adapter.student_state_dict()
    own = student.state_dict()
    to_load = {}
    for i in range(n):
        prefix = f"model.layers.{i}.mixer."
        attn = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        norm = weights.get(f"model.layers.{i}.norm1.weight")
        if mixers[i] == "heads":
            part = _heads_weights(student.model.layers[i].mixer, attn, config, ssd_init, norm)
            for k in attn:
                weights.pop(prefix + k)
            weights.update({prefix + k: v for k, v in part.items()})
        elif mixers[i] != "attention":
            if ssd_init == "attention":
                init_ssd_from_attention(
                    student.model.layers[i].mixer,
                    attn,
                    config,
                    input_norm=norm,
                )
            for k in attn:
                weights.pop(prefix + k)
    for k, v in weights.items():
        if k not in own:
            raise MohawkError(f"internal: teacher weight {k} has no place in the student")
        if own[k].shape != v.shape:
            raise MohawkError(f"internal: shape mismatch for {k}: {tuple(own[k].shape)} vs {tuple(v.shape)}")
        to_load[k] = v
    student.load_state_dict(to_load, strict=False)
    p = next(adapter.model.parameters())
    student = student.to(device=p.device, dtype=p.dtype)
    if ssd_init == "attention" and _gated_layers(student):
        if calibration_ids is None:
            b, length = RANDOM_CALIBRATION
            g = torch.Generator().manual_seed(0)
            calibration_ids = torch.randint(
                0, config.vocab_size, (b, min(length, config.max_position_embeddings)), generator=g
            )
        fit_gates(student, adapter, calibration_ids)
    return student


CALIBRATION_SEQUENCES = 4  # enough: the scales from 2 and from 4 sequences give the same held-out distances
RANDOM_CALIBRATION = (4, 256)  # from_teacher's gate calibration when given no text: seeded random tokens


def calibrate(student: MohawkForCausalLM, teacher, stream) -> dict:
    """The data-dependent part of the start, on the first CALIBRATION_SEQUENCES of ``stream`` (a
    mohawk.data.TokenStream at the length stage 1 trains at): ``fit_gates`` for mixers without an in_proj bias, then
    ``scale_to_attention`` for the families it rescales; {} without reading the stream when neither applies.
    Returns {"gates": ..., "scales": ...} (what each found), the keys that applied."""
    gates = bool(_gated_layers(student))
    scales = any(getattr(replaced_part(x.mixer).module, "attention_scaled_rows", None) for x in student.model.layers)
    if not (gates or scales):
        return {}
    from mohawk.data import take

    ids = take(stream, CALIBRATION_SEQUENCES)
    out = {}
    if gates:
        out["gates"] = fit_gates(student, teacher, ids)
    if scales:
        out["scales"] = scale_to_attention(student, teacher, ids)
    return out


def _gated_layers(student: MohawkForCausalLM) -> list[int]:
    """Layers whose (replaced part's) mixer opens its gate from data: a mamba2 mixer without an in_proj bias."""
    parts = [replaced_part(layer.mixer).module for layer in student.model.layers]
    return [i for i, m in enumerate(parts) if getattr(m, "gate_opens_without_bias", False) and m.in_proj.bias is None]


def gate_direction(u: torch.Tensor, steps: int = 300) -> tuple[torch.Tensor, float, dict]:
    """A unit direction w (hidden,) with w . u > 0 for every row of ``u`` (..., hidden), where one exists: from the
    mean of the unit rows, ``steps`` Adam steps on a soft minimum (temperature 50) of the cosines. Returns w, the
    scale s that puts the median of s * (w . u) at 1 (the biased gate's z), and {"min_cosine", "positive"}: the
    smallest cosine and the share of rows with w . u > 0."""
    x = u.detach().float().reshape(-1, u.shape[-1])
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    mean = unit.mean(0)
    with torch.enable_grad():
        w = (mean / mean.norm().clamp_min(1e-12)).clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=1e-2)
        for _ in range(steps):
            loss = torch.logsumexp(-50.0 * (unit @ w) / w.norm(), 0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    w = (w / w.norm()).detach()
    cos = unit @ w
    scale = 1.0 / float((x @ w).median().clamp_min(1e-6))
    return w, scale, {"min_cosine": round(float(cos.min()), 4), "positive": float((cos > 0).float().mean())}


@torch.no_grad()
def fit_gates(student: MohawkForCausalLM, teacher, input_ids: torch.Tensor) -> dict:
    """Open the gate of every mixer without an in_proj bias (mamba2 with ``ssd_proj_bias=False``) along
    ``gate_direction`` of the teacher's inputs to its layer on ``input_ids`` (batch, L) (Mamba2Mixer.open_gate).
    Returns {layer: {"min_cosine", "positive"}}: a share below 1 is where the gate starts closed or reversed."""
    layers = _gated_layers(student)
    if not layers:
        return {}
    device = next(student.parameters()).device
    caps = _adapter(teacher).capture(input_ids.to(device), logits=False)
    out = {}
    for i in layers:
        w, scale, stats = gate_direction(caps.mixer_inputs[i])
        replaced_part(student.model.layers[i].mixer).module.open_gate(w, scale)
        out[i] = stats
    return out


@torch.no_grad()
def scale_to_attention(student: MohawkForCausalLM, teacher, input_ids: torch.Tensor, tile: int = 256) -> dict:
    """Rescale every mixer whose class names ``attention_scaled_rows`` (ssm, linear_attention, toeplitz; not ssd) by
    the factor per group of heads that minimises its stage-1 distance on ``input_ids`` (batch, L).

    Stage 1 fits M to the attention matrix A in Frobenius norm. Over a scalar a per group, sum ||A - a M||_F^2 is a
    quadratic in a, least at a = <A, M> / ||M||_F^2 (sums over the group's heads and the batch), where the distance
    is ||A|| sqrt(1 - cos^2(A, M)) <= ||A||: never farther than M = 0, which is about where the transferred SSD
    starts (its steps dt in [0.001, 0.1] shrink M). M is linear in the rows named (C for the SSD-like families, the
    Toeplitz kernel), so a multiplies those rows of in_proj and their bias: exact with the default conv (zero bias,
    no activation after it) and D = 0, as transferred. Returns {layer: [a per group]}."""
    adapter = _adapter(teacher)
    device = next(student.parameters()).device
    caps = adapter.capture(input_ids.to(device), logits=False)
    scales = {}
    for i, layer in enumerate(student.model.layers):
        mixer, heads, _ = replaced_part(layer.mixer)
        rows = getattr(mixer, "attention_scaled_rows", None)
        if rows is None:
            continue
        u = caps.mixer_inputs[i]
        attn = adapter.attention(i)
        fa, fm = attn.matrix_factors(u), mixer.matrix_factors(u)
        am = mm = 0.0
        for r0 in range(0, u.shape[1], tile):  # rows in blocks: no (L, L) matrix per head at long lengths
            r1 = min(u.shape[1], r0 + tile)
            A = select_heads(attn.matrix_rows(fa, r0, r1), heads).float()
            M = mixer.matrix_rows(fm, r0, r1).float()
            am = am + (A * M).sum((0, 2, 3))  # (heads,)
            mm = mm + (M * M).sum((0, 2, 3))
        groups = getattr(mixer, "num_groups", mixer.num_heads)
        am, mm = am.view(groups, -1).sum(1), mm.view(groups, -1).sum(1)
        a = torch.where(mm > 0, am / mm.clamp_min(torch.finfo(mm.dtype).tiny), torch.ones_like(mm))  # (groups,)
        sl = mixer.in_proj_slices()[rows]
        per_row = a.repeat_interleave((sl.stop - sl.start) // groups)
        W, b = mixer.in_proj.weight, mixer.in_proj.bias
        W[sl] = (W[sl].float() * per_row[:, None]).to(W.dtype)
        b[sl] = (b[sl].float() * per_row).to(b.dtype)
        scales[i] = a.tolist()
    return scales


def transferable_keys(student: MohawkForCausalLM) -> list[str]:
    """Names of the student's non-mixer parameters (what stage 3's weight transfer copies)."""
    return [k for k in student.state_dict() if ".mixer." not in k]


def copy_non_mixer_weights(student: MohawkForCausalLM, teacher) -> None:
    """Re-copy embeddings, norms, MLPs and head from the teacher into an existing student (stage 3's transfer)."""
    weights = _adapter(teacher).student_state_dict()
    own = student.state_dict()
    with torch.no_grad():
        for k in transferable_keys(student):
            if k in weights:
                own[k].copy_(weights[k])
