"""Weight transfer: which teacher projection lands in which SSD slice (C <- W_Q * scale, B <- W_K, x <- W_V,
out <- W_O), for per-head B/C and for B/C shared by a group of heads; the rescale of the other families' matrices
(mohawk.transfer.scale_to_attention), the SSD left as transferred."""

import pytest
import torch

import mohawk
from mohawk.teachers import adapter_for
from tests.utils import VOCAB, tiny_teacher


def _per_kv_head(w, kv, h, d):
    """(kv * d, ...) -> (h * d, ...): each KV head repeated for its query heads."""
    return w.unflatten(0, (kv, d)).repeat_interleave(h // kv, 0).flatten(0, 1)


def test_ssd_init_puts_queries_in_C_and_keys_in_B():
    """A student whose B and C were swapped would compute C_t . B_s = k_t . q_s: this pins the assignment itself
    and the scale that makes C_t . B_s equal the teacher's attention logits q_t . k_s / sqrt(d)."""
    t = tiny_teacher("llama")  # 4 query heads, 2 KV heads of head_dim 8
    adapter = adapter_for(t)
    s = mohawk.from_teacher(adapter)
    attn, mixer = t.model.layers[0].self_attn, s.model.layers[0].mixer
    sl = mixer.in_proj_slices()
    h, kv, d = 4, 2, 8
    W = mixer.in_proj.weight
    torch.testing.assert_close(W[sl["C"]], attn.q_proj.weight * attn.scaling)
    torch.testing.assert_close(W[sl["B"]], _per_kv_head(attn.k_proj.weight, kv, h, d))
    torch.testing.assert_close(W[sl["x"]], _per_kv_head(attn.v_proj.weight, kv, h, d))
    # the pre-decay logits of the SSD matrix are the teacher's unrotated attention logits
    u = torch.randn(1, 5, 32)
    with torch.no_grad():
        C = (u @ W[sl["C"]].T).unflatten(-1, (h, d))
        B = (u @ W[sl["B"]].T).unflatten(-1, (h, d))
        q = (u @ attn.q_proj.weight.T).unflatten(-1, (h, d))
        k = (u @ _per_kv_head(attn.k_proj.weight, kv, h, d).T).unflatten(-1, (h, d))
    torch.testing.assert_close(
        torch.einsum("bthn,bshn->bhts", C, B), torch.einsum("bthn,bshn->bhts", q, k) * attn.scaling
    )


def test_grouped_ssd_init_takes_each_groups_first_query_head():
    t = tiny_teacher("llama")
    adapter = adapter_for(t)
    s = mohawk.from_teacher(adapter, ssd_num_groups=2)  # one B/C per KV head
    attn, mixer = t.model.layers[1].self_attn, s.model.layers[1].mixer
    sl = mixer.in_proj_slices()
    W = mixer.in_proj.weight
    torch.testing.assert_close(W[sl["B"]], attn.k_proj.weight)
    q = attn.q_proj.weight.unflatten(0, (4, 8))[::2].flatten(0, 1)
    torch.testing.assert_close(W[sl["C"]], q * attn.scaling)


@pytest.mark.parametrize("groups", [None, 2])
def test_wider_state_starts_from_the_same_matrix(groups):
    """A state wider than head_dim (16 > 8): each group's first 8 channels take the keys and queries, C is 0 on the
    others, so the SSD matrix equals the head_dim student's. Catches a wider state left random (no attention init, as
    before), keys written into the wrong rows of a group, and extra channels with B and C both 0 (no gradient ever)."""
    t = tiny_teacher("llama")
    adapter = adapter_for(t)
    opts = {} if groups is None else {"ssd_num_groups": groups}
    narrow, wide = mohawk.from_teacher(adapter, **opts), mohawk.from_teacher(adapter, ssd_state_size=16, **opts)
    m1, m2 = narrow.model.layers[1].mixer, wide.model.layers[1].mixer
    s1, s2 = m1.in_proj_slices(), m2.in_proj_slices()
    g = m2.num_groups
    with torch.no_grad():  # the rest of the mixer as the narrow one's (its random dt rows, A, D)
        for k in ("z", "x", "dt"):
            m2.in_proj.weight[s2[k]] = m1.in_proj.weight[s1[k]]
            m2.in_proj.bias[s2[k]] = m1.in_proj.bias[s1[k]]
        for name in ("dt_bias", "A_log", "D"):
            getattr(m2, name).copy_(getattr(m1, name))
    B2, C2 = (m2.in_proj.weight[s2[k]].unflatten(0, (g, 16)) for k in ("B", "C"))
    torch.testing.assert_close(B2[:, :8].flatten(0, 1), m1.in_proj.weight[s1["B"]])
    torch.testing.assert_close(C2[:, :8].flatten(0, 1), m1.in_proj.weight[s1["C"]])
    assert (C2[:, 8:] == 0).all() and (B2[:, 8:] != 0).all()
    u = torch.randn(2, 12, 32)
    with torch.no_grad():
        torch.testing.assert_close(m2.materialize(u), m1.materialize(u))


def test_qk_norm_folds_in_at_the_heads_rms():
    """A projection + per-head RMSNorm as one linear map: on inputs of per-feature RMS g it gives each head the RMS the
    norm would (the norm weight's), and keeps each head's direction."""
    from mohawk.transfer import _fold_head_norm

    torch.manual_seed(0)
    heads, d, hidden = 3, 16, 64
    w = torch.randn(heads * d, hidden) * torch.rand(heads, 1, 1).repeat(1, d, 1).flatten(0, 1) * 5
    g = torch.rand(hidden) * 3 + 0.1
    norm = torch.rand(d) + 0.5
    folded = _fold_head_norm(w, norm, g**2, d)
    u = torch.randn(20000, hidden) * g
    q = (u @ w.t()).unflatten(1, (heads, d))
    target = q / q.pow(2).mean(-1, keepdim=True).sqrt() * norm
    got = (u @ folded.t()).unflatten(1, (heads, d))
    rms = lambda t: t.pow(2).mean((0, 2)).sqrt()  # noqa: E731
    torch.testing.assert_close(rms(got), rms(target), rtol=0.05, atol=0)
    cos = torch.nn.functional.cosine_similarity(got, target, dim=-1)
    assert cos.min() > 0.999  # the same direction per token: only the per-token scale differs


def _distances(student, adapter, ids) -> torch.Tensor:
    """Per layer ||A - M||_F / ||A||_F over the batch and heads: (layers,)."""
    caps = adapter.capture(ids, logits=False)
    out = []
    with torch.no_grad():
        for i, layer in enumerate(student.model.layers):
            u = caps.mixer_inputs[i]
            A, M = adapter.attention(i).materialize(u), layer.mixer.materialize(u)
            out.append(((A - M).square().sum() / A.square().sum()).sqrt())
    return torch.stack(out)


def _calibration_and_held_out():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, VOCAB, (2, 32), generator=g), torch.randint(0, VOCAB, (2, 32), generator=g)


@pytest.mark.parametrize(
    "mixer, options",
    [("ssm", {}), ("ssm", {"ssd_num_groups": 2}), ("linear_attention", {}), ("toeplitz", {})],
)
def test_scaled_init_brings_each_family_to_the_least_squares_scale(mixer, options):
    """On the calibration batch the rescaled matrix is the best multiple of the transferred one: no farther from
    attention than M = 0 (relative distance <= 1) and lower than unscaled, at a minimum in the factor (0.8x or
    1.25x it is farther, as would be an inverted or doubled factor); linear attention and Toeplitz, far above 1 as
    transferred, come to about 1 on held-out tokens too."""
    from mohawk.transfer import scale_to_attention

    adapter = adapter_for(tiny_teacher("llama"))
    cal, held = _calibration_and_held_out()
    torch.manual_seed(0)
    plain = mohawk.from_teacher(adapter, mixer=mixer, **options)
    torch.manual_seed(0)
    scaled = mohawk.from_teacher(adapter, mixer=mixer, **options)
    scale_to_attention(scaled, adapter, cal)
    before, after = _distances(plain, adapter, cal), _distances(scaled, adapter, cal)
    assert (after <= 1 + 1e-5).all() and (after <= before + 1e-5).all()
    assert after.mean() < before.mean() - 1e-3
    rows = scaled.model.layers[0].mixer.attention_scaled_rows
    for f in (0.8, 1.25):
        off = mohawk.from_teacher(adapter, mixer=mixer, **options)
        off.load_state_dict(scaled.state_dict())
        m = off.model.layers[0].mixer
        sl = m.in_proj_slices()[rows]
        with torch.no_grad():
            m.in_proj.weight[sl] *= f
            m.in_proj.bias[sl] *= f
        assert _distances(off, adapter, cal)[0] > after[0]
    if mixer != "ssm":  # ssm starts near 1 like the SSD; these two far above it
        held_before, held_after = _distances(plain, adapter, held), _distances(scaled, adapter, held)
        assert (held_before > 1.2).all() and (held_after < 1.1).all()


def test_scaling_twice_changes_nothing():
    """The factors of an already rescaled student are 1 (the least-squares factor of the optimum is 1)."""
    from mohawk.transfer import scale_to_attention

    adapter = adapter_for(tiny_teacher("llama"))
    cal, _ = _calibration_and_held_out()
    torch.manual_seed(0)
    scaled = mohawk.from_teacher(adapter, mixer="linear_attention")
    assert scale_to_attention(scaled, adapter, cal)
    again = scale_to_attention(scaled, adapter, cal)
    assert sorted(again) == [0, 1, 2]
    for factors in again.values():
        assert factors == pytest.approx([1.0] * len(factors), rel=1e-4)


def test_ssd_is_not_rescaled():
    """The default SSD student is left bit-for-bit as transferred, and `distill`'s calibration reads no text for
    it."""
    from mohawk.transfer import calibrate, scale_to_attention

    adapter = adapter_for(tiny_teacher("llama"))
    cal, _ = _calibration_and_held_out()
    torch.manual_seed(0)
    given = mohawk.from_teacher(adapter)
    a = {k: v.clone() for k, v in given.state_dict().items()}
    assert scale_to_attention(given, adapter, cal) == {}

    class Unread:
        def sequences(self):
            raise AssertionError("read")

    assert calibrate(given, adapter, Unread()) == {}
    assert all(torch.equal(a[k], v) for k, v in given.state_dict().items())


def test_head_level_hybrid_slices_each_groups_projections():
    """Catches q/k/v/o sliced by the wrong heads or groups: keeping KV group 1 of layer 1 of a tiny Llama (query
    heads 2, 3), its attention part computes the teacher's matrices of those heads exactly, and the SSD part over
    heads 0, 1 is initialised as the plain SSD student's rows and columns of those heads."""
    t = tiny_teacher("llama")  # 4 query heads, 2 KV groups of head_dim 8
    adapter = adapter_for(t)
    s = mohawk.from_teacher(adapter, attention_heads="1:1")
    plain = mohawk.from_teacher(adapter)
    assert s.config.mixers == ["ssd", "heads", "ssd"] and s.config.attention_groups == [[], [1], []]
    mixer, full = s.model.layers[1].mixer, plain.model.layers[1].mixer
    u = adapter.capture(torch.randint(0, VOCAB, (2, 12)), logits=False).mixer_inputs[1]
    with torch.no_grad():
        torch.testing.assert_close(mixer.materialize(u)[:, 2:], adapter.attention(1).materialize(u)[:, 2:])
    d, part = 8, mixer.student
    sl, fsl = part.in_proj_slices(), full.in_proj_slices()
    for name in ("x", "B", "C"):  # per-head B/C (groups = heads): the first two heads' rows
        rows = part.in_proj.weight[sl[name]]
        torch.testing.assert_close(rows, full.in_proj.weight[fsl[name]][: 2 * d], atol=0, rtol=0)
    torch.testing.assert_close(part.out_proj.weight, full.out_proj.weight[:, : 2 * d], atol=0, rtol=0)


def test_keeping_every_group_is_the_teacher():
    """Catches a layer keeping all its groups built as a heads mixer with an empty student part: it becomes an
    attention layer, and a student keeping every group of every layer computes the teacher's logits."""
    t = tiny_teacher("llama")
    s = mohawk.from_teacher(t, attention_heads={i: [0, 1] for i in range(3)})
    assert s.config.mixers == ["attention"] * 3
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(s(ids).logits, t(ids).logits, atol=1e-5, rtol=1e-5)


def test_bad_attention_heads_are_refused():
    from mohawk.errors import MohawkError

    t = tiny_teacher("llama")
    for value, why in [("1:2", "KV groups are 0..1"), ("3:0", "out of range"), ("1:0;1:1", "repeated"), ("x", "e.g.")]:
        with pytest.raises(MohawkError, match=why):
            mohawk.from_teacher(t, attention_heads=value)
    with pytest.raises(MohawkError, match="kept whole as attention and by heads"):
        mohawk.from_teacher(t, attention_layers=[1], attention_heads="1:0")


def test_gate_direction_finds_a_half_space_the_mean_misses():
    """Rows that all lie in the half-space x0 > 0, most of them far along x1 and a few along -x1: their mean points
    along x1, where the few are negative; the fit must find a direction positive on every row."""
    from mohawk.transfer import gate_direction

    g = torch.Generator().manual_seed(0)
    many = torch.tensor([0.2, 1.0, 0.0]) + 0.01 * torch.randn(200, 3, generator=g)
    few = torch.tensor([0.2, -1.0, 0.0]) + 0.01 * torch.randn(20, 3, generator=g)
    u = torch.cat([many, few])[None] * 7.0  # (1, 220, 3): any shape with hidden last
    mean = u[0] / u[0].norm(dim=-1, keepdim=True)
    assert ((mean @ mean.mean(0)) <= 0).any()  # the starting point fails
    w, scale, stats = gate_direction(u)
    assert stats["positive"] == 1.0 and stats["min_cosine"] > 0 and ((u[0] @ w) > 0).all()
    torch.testing.assert_close(w.norm(), torch.tensor(1.0))
    torch.testing.assert_close((scale * (u[0] @ w)).median(), torch.tensor(1.0))


def _mixer_parts(student, layer=0):
    return student.model.layers[layer].mixer


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # qwen2: q/k/v biases, which move into the conv's bias
def test_bias_free_mamba2_starts_as_the_biased_one(family):
    """Same transfer without an in_proj bias: the value, key and query streams after the conv are the biased
    student's (its q/k/v biases through the conv's), every gate row is one direction, and with the norm's eps
    negligible each layer's output is the biased student's on the teacher's calibration inputs, where every gate is
    open (a positive factor)."""
    from mohawk.transfer import fit_gates

    t = tiny_teacher(family)
    adapter = adapter_for(t)
    cal, _ = _calibration_and_held_out()
    torch.manual_seed(0)
    biased = mohawk.from_teacher(adapter, mixer="mamba2")
    free = mohawk.from_teacher(adapter, mixer="mamba2", ssd_proj_bias=False, calibration_ids=cal)
    keep = {k: v for k, v in biased.state_dict().items() if not k.endswith("in_proj.bias")}
    keep = {k: v for k, v in keep.items() if not k.endswith("conv1d.bias")}  # the free student's own (q/k/v biases)
    free.load_state_dict(keep, strict=False)  # the biased student's random dt rows and decays too
    stats = fit_gates(free, adapter, cal)
    assert sorted(stats) == [0, 1, 2] and all(s["positive"] == 1.0 for s in stats.values())
    caps = adapter.capture(cal, logits=False)
    for i in range(3):
        a, b = _mixer_parts(biased, i), _mixer_parts(free, i)
        assert b.in_proj.bias is None
        z = b.in_proj.weight[b.in_proj_slices()["z"]]
        assert torch.equal(z, z[:1].expand_as(z))
        u = caps.mixer_inputs[i]
        with torch.no_grad():
            torch.testing.assert_close(b._conv(b._project(u)[1]), a._conv(a._project(u)[1]), atol=1e-6, rtol=1e-5)
            assert (b._project(u)[0] > 0).all()
            a.norm.eps = b.norm.eps = 1e-30
            torch.testing.assert_close(b(u), a(u), atol=1e-5, rtol=1e-4)


def test_bias_free_needs_a_gate_a_norm_removes():
    t = tiny_teacher("llama")
    with pytest.raises(ValueError, match="ssd_proj_bias=False"):
        mohawk.from_teacher(adapter_for(t), mixer="ssd", ssd_proj_bias=False)


def test_bias_free_gates_open_on_random_tokens_without_calibration():
    """from_teacher alone (no calibration_ids) opens the gates on seeded random tokens: deterministic."""
    t = tiny_teacher("llama")
    a, b = (mohawk.from_teacher(adapter_for(t), mixer="mamba2", ssd_proj_bias=False) for _ in range(2))
    za, zb = (m.model.layers[1].mixer.in_proj.weight[m.model.layers[1].mixer.in_proj_slices()["z"]] for m in (a, b))
    assert torch.equal(za, zb) and za.abs().sum() > 0


@pytest.mark.parametrize(
    "mixer, options",
    [("mamba2", {}), ("ssd", {"ssd_conv_activation": "silu"})],  # a SiLU gate before a norm; a linear gate, no norm
)
def test_scaled_conv_starts_as_the_layer_without_the_silu(mixer, options):
    """ssd_conv_scale s: SiLU(s u) ~ s u / 2 in x, B and C, and the gate's start times (2 / s)^3, so the gated y and
    the layer's output start as the same transfer's with no SiLU after the conv (SiLU(u) itself is far from it).
    Catches a missing or wrongly powered gate compensation (the gated y off by 2 / s or more; through mamba2's norm,
    an output below its epsilon) and a conv left unscaled."""
    t = tiny_teacher("llama")
    adapter = adapter_for(t)
    u = adapter.capture(torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1)), logits=False)
    students = {}
    for name, scale in (("linear", 1.0), ("silu", 1.0), ("scaled", 1e-3)):
        torch.manual_seed(0)  # the same random dt rows and decays
        students[name] = mohawk.from_teacher(adapter, mixer=mixer, ssd_conv_scale=scale, **options)
    for i in range(3):
        m = {k: _mixer_parts(s, i) for k, s in students.items()}
        m["linear"].conv_activation = "identity"
        assert torch.equal(m["scaled"].conv1d.weight, 1e-3 * m["silu"].conv1d.weight)
        x = u.mixer_inputs[i]
        with torch.no_grad():
            gated, out = {}, {}
            for k, mix in m.items():
                z, xbc, dt = mix._project(x)
                xs, B, C = mix._split(mix._conv(xbc))
                y = mix._scan(xs, dt, B, C, return_final_state=False)
                gated[k], out[k] = y * mix._act(z, mix.gate_activation).unflatten(-1, y.shape[-2:]), mix(x)
        for k in (gated, out):
            assert (k["scaled"] - k["linear"]).norm() < 3e-3 * k["linear"].norm()
            assert (k["silu"] - k["linear"]).norm() > 0.1 * k["linear"].norm()


def test_conv_scale_is_checked():
    t = tiny_teacher("llama")
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="ssd_conv_scale"):
            mohawk.from_teacher(adapter_for(t), mixer="mamba2", ssd_conv_scale=bad)
