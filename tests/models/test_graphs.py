"""Decoding through a DecodeGraph (mohawk.models.graphs). On CPU the graph is not captured but its logic runs: static
buffers updated in place, a cache adopting them, another cache taking them over, recapture when parameters move. On
CUDA (marker gpu) the captured graph must give what the eager step gives."""

import os

import pytest
import torch

from mohawk.errors import MohawkError
from mohawk.models import MohawkCache, graphs
from mohawk.models import modeling_mohawk as modeling
from tests.utils import tiny_student as student


@pytest.fixture
def graphs_on_cpu(monkeypatch):
    monkeypatch.setattr(modeling, "graphs_supported", lambda device: True)


def prefill(m, ids):
    cache = MohawkCache()
    with torch.no_grad():
        m(ids, past_key_values=cache, use_cache=True)
    return cache


def steps(m, cache, tokens):
    with torch.no_grad():
        return torch.cat([m(t[:, None], past_key_values=cache, use_cache=True).logits for t in tokens.T], 1)


@pytest.mark.parametrize("mixers", [("ssd", "ssd", "ssd"), ("ssm", "linear_attention")])
def test_graph_step_equals_eager(graphs_on_cpu, mixers):
    m = student(mixers, ssd_conv_init="random", ssd_conv_activation="silu")
    ids, nxt = torch.randint(0, 64, (2, 9)), torch.randint(0, 64, (2, 5))
    m.config.decode_cuda_graph = False
    eager_cache = prefill(m, ids)
    eager = steps(m, eager_cache, nxt)
    m.config.decode_cuda_graph = True
    cache = prefill(m, ids)
    graphed = steps(m, cache, nxt)
    assert len(graphs._GRAPHS[m][1]) == 1  # the path was taken
    torch.testing.assert_close(graphed, eager, atol=0, rtol=0)
    assert cache.tokens == eager_cache.tokens == 14
    for i in cache.ssm:
        torch.testing.assert_close(cache.ssm[i][1], eager_cache.ssm[i][1], atol=0, rtol=0)
    g = next(iter(graphs._GRAPHS[m][1].values()))
    assert g.owns(cache) and cache.ssm[0][1] is g.buffers.ssm[0][1]  # the cache's state lives in the buffers


def test_generate_with_graph_equals_eager(graphs_on_cpu):
    m = student(("ssd", "ssd"), ssd_conv_init="random")
    ids = torch.randint(0, 64, (3, 6))
    m.config.decode_cuda_graph = False
    want = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    m.config.decode_cuda_graph = True
    got = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(got, want) and m in graphs._GRAPHS


def test_two_caches_take_turns_without_sharing_state(graphs_on_cpu):
    m = student(("ssd", "ssd"), ssd_conv_init="random")
    a_ids, b_ids, nxt = torch.randint(0, 64, (2, 7)), torch.randint(0, 64, (2, 4)), torch.randint(0, 64, (2, 6))
    m.config.decode_cuda_graph = False
    ea, eb = prefill(m, a_ids), prefill(m, b_ids)
    want_a = torch.cat([steps(m, ea, nxt[:, :3]), steps(m, ea, nxt[:, 3:])], 1)
    want_b = steps(m, eb, nxt)
    m.config.decode_cuda_graph = True
    ca, cb = prefill(m, a_ids), prefill(m, b_ids)
    got_a1 = steps(m, ca, nxt[:, :3])
    got_b = steps(m, cb, nxt)  # b takes the buffers over: a keeps a copy of its state
    got_a2 = steps(m, ca, nxt[:, 3:])
    assert len(graphs._GRAPHS[m][1]) == 1
    torch.testing.assert_close(torch.cat([got_a1, got_a2], 1), want_a, atol=0, rtol=0)
    torch.testing.assert_close(got_b, want_b, atol=0, rtol=0)
    assert cb.ssm[0][1] is not ca.ssm[0][1]


def test_hybrids_and_training_decode_eagerly(graphs_on_cpu):
    m = student(("ssd", "attention"))
    cache = prefill(m, torch.randint(0, 64, (1, 5)))
    steps(m, cache, torch.randint(0, 64, (1, 2)))
    assert m not in graphs._GRAPHS  # a KV cache grows: no fixed addresses
    m = student(("ssd", "ssd"))
    cache = prefill(m, torch.randint(0, 64, (1, 5)))
    m(torch.randint(0, 64, (1, 1)), past_key_values=cache, use_cache=True)  # grad enabled
    assert m not in graphs._GRAPHS


def test_moved_parameters_recapture(graphs_on_cpu):
    m = student(("ssd", "ssd"))
    ids = torch.randint(0, 64, (1, 5))
    steps(m, prefill(m, ids), torch.randint(0, 64, (1, 2)))
    first = next(iter(graphs._GRAPHS[m][1].values()))
    m.to(torch.float64)  # new parameter storage
    steps(m, prefill(m, ids), torch.randint(0, 64, (1, 2)))
    (second,) = graphs._GRAPHS[m][1].values()
    assert second is not first and graphs._GRAPHS[m][0] == graphs.DecodeGraph.param_pointers(m)
    graphs.release(m)
    assert m not in graphs._GRAPHS


def test_cached_conv_window_does_not_pin_the_prompt():
    """The conv window kept after a prefill is its own (b, conv_dim, k - 1) tensor, not a view of the prompt's
    (b, conv_dim, L) activations (which a view would keep alive)."""
    m = student(("ssd", "ssd"))
    cache = prefill(m, torch.randint(0, 64, (2, 40)))
    conv, _ = cache.get_state(0)
    assert conv.untyped_storage().nbytes() == conv.numel() * conv.element_size()


def test_reorder_cache_is_in_place():
    m = student(("ssd", "ssd"))
    cache = prefill(m, torch.randint(0, 64, (3, 5)))
    conv, ssm = cache.get_state(1)
    want = ssm[[2, 0, 1]].clone()
    cache.reorder_cache(torch.tensor([2, 0, 1]))
    assert cache.get_state(1)[1] is ssm and torch.equal(ssm, want) and cache.get_state(1)[0] is conv


HYBRID = ("ssd", "attention", "mamba2", "attention")


def hf_generate(m, ids, **kw):
    """transformers' own loop, eager, with a growing KV cache: the reference for the fast path."""
    m.config.decode_cuda_graph = False
    try:
        return m.generate(ids, do_sample=False, pad_token_id=0, **kw)
    finally:
        m.config.decode_cuda_graph = True


@pytest.mark.parametrize("block", [1, 4])
def test_graphed_hybrid_generates_what_eager_generates(graphs_on_cpu, block):
    """A hybrid's attention layers decode from a static KV cache inside the graph: the same tokens as the eager loop
    with a growing cache (a wrong mask, position or KV write changes them)."""
    m = student(HYBRID, ssd_conv_init="random", decode_block_steps=block, sliding_window=5)
    ids = torch.randint(0, 64, (3, 6))
    want = hf_generate(m, ids, max_new_tokens=13)
    got = m.generate(ids, max_new_tokens=13, do_sample=False, pad_token_id=0)
    assert torch.equal(got, want)
    (g,) = graphs._GRAPHS[m][1].values()  # one graph decoded it all
    assert g.steps == block and sorted(g.buffers.kv) == [1, 3] and g.buffers.kv_capacity == 256


def test_one_step_graph_with_static_kv_equals_eager_logits(graphs_on_cpu):
    """HF's loop (one step, logits out) also replays a graph for a hybrid once its cache is static."""
    m = student(HYBRID, ssd_conv_init="random")
    ids, nxt = torch.randint(0, 64, (2, 9)), torch.randint(0, 64, (2, 5))
    m.config.decode_cuda_graph = False
    want = steps(m, prefill(m, ids), nxt)
    m.config.decode_cuda_graph = True
    cache = MohawkCache(kv_capacity=16)
    with torch.no_grad():
        m(ids, past_key_values=cache, use_cache=True)
    got = steps(m, cache, nxt)
    assert len(graphs._GRAPHS[m][1]) == 1 and cache.tokens == 14
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_block_equals_single_steps_and_stops_at_eos(graphs_on_cpu, monkeypatch):
    """Blocks of 4 steps give what single steps give: tokens after each sequence's EOS become padding, and the host
    stops launching blocks once every sequence has ended (one block here)."""
    m = student(("ssd", "attention", "discrete_mamba2"), ssd_conv_init="random", decode_block_steps=4)
    ids = torch.randint(0, 64, (3, 5))
    free = hf_generate(m, ids, max_new_tokens=30)
    eos = [int(free[r, 5 + 1 + r]) for r in range(3)]  # row r ends by its (r + 2)-th new token
    want = hf_generate(m, ids, max_new_tokens=30, eos_token_id=eos)
    assert want.shape[1] <= 5 + 4 < free.shape[1]
    ended = torch.isin(want[:, 5:], torch.tensor(eos)).long().argmax(1)
    assert int(ended.min()) < want.shape[1] - 6  # a row ended before the others: padding follows its EOS
    calls = []
    run_block = graphs.DecodeGraph.run_block
    monkeypatch.setattr(graphs.DecodeGraph, "run_block", lambda *a: calls.append(1) or run_block(*a))
    got = m.generate(ids, max_new_tokens=30, do_sample=False, pad_token_id=0, eos_token_id=eos)
    assert torch.equal(got, want) and len(calls) == 1
    m.config.decode_block_steps = 1
    assert torch.equal(m.generate(ids, max_new_tokens=30, do_sample=False, pad_token_id=0, eos_token_id=eos), want)


def test_sampling_in_the_graph(graphs_on_cpu):
    """Sampling chooses on the device: top-k 1 is greedy; otherwise tokens vary with the seed, within the top k."""
    m = student(("ssd", "attention"), ssd_conv_init="random", decode_block_steps=3)
    ids = torch.randint(0, 64, (2, 4))
    greedy = hf_generate(m, ids, max_new_tokens=9)
    assert torch.equal(m.generate(ids, max_new_tokens=9, do_sample=True, top_k=1, pad_token_id=0), greedy)
    torch.manual_seed(1)
    a = m.generate(ids, max_new_tokens=9, do_sample=True, top_k=0, temperature=5.0, pad_token_id=0)
    torch.manual_seed(2)
    b = m.generate(ids, max_new_tokens=9, do_sample=True, top_k=0, temperature=5.0, pad_token_id=0)
    assert a.shape == b.shape == greedy.shape and not torch.equal(a, b)
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]]).repeat(200, 1)
    drawn = graphs.choose_tokens(logits, (1.0, 2))
    assert set(drawn.tolist()) == {1, 2}


def test_static_kv_cache_refuses_to_grow():
    m = student(("ssd", "attention"))
    cache = MohawkCache(kv_capacity=8)
    with torch.no_grad():
        m(torch.randint(0, 64, (1, 6)), past_key_values=cache, use_cache=True)
        for _ in range(2):
            m(torch.randint(0, 64, (1, 1)), past_key_values=cache, use_cache=True)
        assert cache.kv[1][0].shape[2] == 8 and cache.tokens == 8
        with pytest.raises(MohawkError, match="static KV cache full: 9 tokens do not fit in its 8 positions"):
            m(torch.randint(0, 64, (1, 1)), past_key_values=cache, use_cache=True)
        with pytest.raises(MohawkError, match="static KV cache full"):
            m(torch.randint(0, 64, (1, 9)), past_key_values=MohawkCache(kv_capacity=8), use_cache=True)


def test_graph_refuses_a_full_static_kv_cache(graphs_on_cpu):
    m = student(("ssd", "attention"))
    cache = prefill(m, torch.randint(0, 64, (1, 2)))
    cache = MohawkCache(kv_capacity=4)
    with torch.no_grad():
        m(torch.randint(0, 64, (1, 2)), past_key_values=cache, use_cache=True)
    steps(m, cache, torch.randint(0, 64, (1, 2)))
    assert len(graphs._GRAPHS[m][1]) == 1
    with pytest.raises(MohawkError, match="static KV cache full"):
        steps(m, cache, torch.randint(0, 64, (1, 1)))


def test_compiled_parts_of_the_step(monkeypatch):
    """decode_compile: inside the graph's step the norms and MLPs run their compiled forward and the attention layers
    their compiled projections (one compile per class and method, shared by the layers), a mamba2 mixer its output
    norm, an SSD mixer without one nothing;
    outside it the model is untouched."""
    compiled = []

    def fake_compile(fn, dynamic=None):
        compiled.append(fn.__qualname__)
        return lambda *a, **k: calls.append(fn.__qualname__) or fn(*a, **k)

    calls: list[str] = []
    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(graphs, "_COMPILED", {})
    m = student(HYBRID, ssd_conv_init="random", decode_compile=True)
    ids = torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        want, _ = m.model(input_ids=ids, cache=MohawkCache())
        g = graphs.DecodeGraph(m, prefill(m, ids), capture=False)
        g.compiled = True
        with g._compiled():
            got, _ = m.model(input_ids=ids, cache=MohawkCache())
        assert sorted(compiled) == [
            "Attention._attend_one",
            "Attention._qkv",
            "MLP.forward",
            "RMSNorm.forward",
            "SSDMixer._finish_gated",
        ]  # fmt: skip  (the mamba2 mixer's; the ssd mixer has no output norm: nothing of it compiled)
        assert calls.count("MLP.forward") == 4 and calls.count("RMSNorm.forward") == 2 * 4 + 1
        assert calls.count("Attention._qkv") == 2  # the two attention layers (a prompt: no one-token attention)
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        assert all(not {"forward", "_qkv", "_attend_one", "_finish_gated"} & x.__dict__.keys() for x in m.modules())
        calls.clear()
        m.model(input_ids=ids, cache=MohawkCache())
    assert not calls  # restored


def _compiled_steps_and_eager(m, monkeypatch):
    """Logits of 4 one-token steps of ``m`` after a 9-token prompt through the static KV cache: (graph step with its
    parts "compiled" by an identity that records each compiled function's calls, eager steps, the calls, the tokens)."""
    calls: list[str] = []
    monkeypatch.setattr(torch, "compile", lambda fn, dynamic=None: lambda *a: calls.append(fn.__name__) or fn(*a))
    monkeypatch.setattr(graphs, "_COMPILED", {})
    ids, nxt = torch.randint(0, 64, (2, 9)), torch.randint(0, 64, (2, 4))

    def static_prefill():
        cache = MohawkCache(kv_capacity=16)
        with torch.no_grad():
            m(ids, past_key_values=cache, use_cache=True)
        return cache

    want = steps(m, static_prefill(), nxt)
    cache = static_prefill()
    g = graphs.DecodeGraph(m, cache, capture=False, sampling="logits")
    g.compiled = True
    with torch.no_grad(), g._compiled():
        got = torch.cat([g.run(cache, t[:, None], 9 + i) for i, t in enumerate(nxt.T)], 1)
    return got, want, calls, nxt


def test_compiled_one_token_attention_equals_eager(monkeypatch):
    """The compiled step's attention through the static KV cache (``_attend_one``, compiled here by an identity that
    records its calls) gives the eager step's logits: catches a split of ``_attend_static`` that changed the math, or
    a one-token path that never reaches the compiled method."""
    got, want, calls, nxt = _compiled_steps_and_eager(student(HYBRID, ssd_conv_init="random"), monkeypatch)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert calls.count("_attend_one") == 2 * nxt.shape[1]  # both attention layers, every step


@pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1", reason="needs the decode kernel"
)
def test_compiled_mamba2_output_norm_equals_eager(monkeypatch):
    """mamba2 mixers decode through the fused step, then their grouped output norm + out_proj (``_finish_gated``)
    compiled (here by an identity that records its calls): the logits of the eager step, the compiled norm reached at
    every step of both mixers, and the model untouched afterwards. Catches a compiled step that leaves the norm's
    elementwise chain eager (the H100 profile: 547 kernels a step against the ssd student's 337)."""
    monkeypatch.setenv("MOHAWK_DECODE_KERNEL", "triton")
    m = student(("mamba2", "attention", "mamba2"), ssd_conv_init="random")
    got, want, calls, nxt = _compiled_steps_and_eager(m, monkeypatch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert calls.count("_finish_gated") == 2 * nxt.shape[1]
    assert all("_finish_gated" not in x.__dict__ for x in m.modules())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_captured_graph_equals_eager_on_cuda():
    m = student(("ssd", "ssd", "ssd"), ssd_conv_init="random").cuda()
    ids = torch.randint(0, 64, (4, 70), device="cuda")
    m.config.decode_cuda_graph = False
    want = m.generate(
        ids, max_new_tokens=16, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True
    )
    m.config.decode_cuda_graph = True
    got = m.generate(
        ids, max_new_tokens=16, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True
    )
    assert next(iter(graphs._GRAPHS[m][1].values())).graph is not None
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("block", [1, 8])
def test_captured_hybrid_blocks_equal_eager_on_cuda(block, monkeypatch):
    """Captured on a GPU: a hybrid's multi-step graph (static KV cache, tokens chosen on the device, the fused SSD
    step) generates what transformers' eager loop generates (float64 with the PyTorch scan for the prompt: the two
    attention paths' rounding cannot flip a token)."""
    monkeypatch.setenv("MOHAWK_SSD_KERNEL", "torch")
    m = student(HYBRID, ssd_conv_init="random", decode_block_steps=block).cuda().double()
    ids = torch.randint(0, 64, (4, 70), device="cuda")
    want = hf_generate(m, ids, max_new_tokens=24)
    got = m.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=0)
    assert any(g.graph is not None and g.steps == block for g in graphs._GRAPHS[m][1].values())
    assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_captured_step_on_cuda():
    """decode_compile: the norms and MLPs compiled before capture; the logits stay those of the eager loop."""
    m = student(HYBRID, ssd_conv_init="random", decode_compile=True).cuda()
    ids = torch.randint(0, 64, (2, 40), device="cuda")
    kw = {"max_new_tokens": 8, "output_logits": True, "return_dict_in_generate": True}
    want = hf_generate(m, ids, **kw)
    cache = MohawkCache(kv_capacity=64)  # static: HF's loop replays a (compiled) one-step graph
    got = m.generate(ids, do_sample=False, pad_token_id=0, past_key_values=cache, **kw)
    assert any(g.compiled and g.graph is not None for g in graphs._GRAPHS[m][1].values())
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), atol=1e-4, rtol=1e-4)


def test_graphed_head_level_hybrid_generates_what_eager_generates(graphs_on_cpu):
    """A head-level hybrid layer holds a KV cache and a state under one index: the graph path must count it as one
    layer (else it decodes eagerly) and give the eager loop's tokens (a part's state not carried changes them)."""
    m = student(("heads", "ssd", "heads"), attention_groups=[[1], [], [0]], ssd_conv_init="random")
    ids = torch.randint(0, 64, (2, 6))
    want = hf_generate(m, ids, max_new_tokens=9)
    got = m.generate(ids, max_new_tokens=9, do_sample=False, pad_token_id=0)
    assert torch.equal(got, want)
    (g,) = graphs._GRAPHS[m][1].values()
    assert sorted(g.buffers.kv) == [0, 2] and sorted(g.buffers.ssm) == [0, 1, 2]
    m.config.decode_cuda_graph = False
    nxt = torch.randint(0, 64, (2, 4))
    eager = steps(m, prefill(m, ids), nxt)
    m.config.decode_cuda_graph = True
    cache = MohawkCache(kv_capacity=16)
    with torch.no_grad():
        m(ids, past_key_values=cache, use_cache=True)
    torch.testing.assert_close(steps(m, cache, nxt), eager, atol=1e-5, rtol=1e-5)


needs_kernels = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1", reason="needs the Triton kernels"
)


def _count_matvec(monkeypatch) -> list:
    """Records every decode_matvec launch (the mixers and MLP import it from its module at each call)."""
    from mohawk.mixers.kernels import decode_matvec as dm

    calls, launch = [], dm.decode_matvec
    monkeypatch.setattr(dm, "decode_matvec", lambda *a, **k: calls.append(a[1].shape) or launch(*a, **k))
    return calls


def _perturbed(m):
    """``m`` with its norms' weights and every bias moved off their initial ones and zeros: a kernel that skipped a
    norm weight or a bias would still match an untouched model."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith((".bias", "norm1.weight", "norm2.weight")):
                p.add_(0.3 * torch.randn_like(p))
    return m


@needs_kernels
@pytest.mark.parametrize(
    "mixers,kw,per_step",
    [
        (("ssd", "ssd", "ssd"), {"mlp_bias": True, "attention_out_bias": True, "ssd_gate_activation": "silu"}, 12),
        (HYBRID, {}, 12),  # attention layers: only their MLP half fused
        (("ssm", "ssd"), {"mlp_type": "plain", "hidden_act": "gelu_new"}, 6),  # ssm: no fused step, plain MLP
    ],
)
def test_fused_matvec_decodes_what_plain_decodes(graphs_on_cpu, monkeypatch, mixers, kw, per_step):
    """MOHAWK_DECODE_MATVEC=fused: each sequential block's one-token step takes the fused kernels (norm + in_proj,
    out_proj + residual for an SSD-family mixer with the fused step; norm + gate + up, down + residual for the MLP),
    launched exactly as often as that implies, and gives the plain step's logits and greedy tokens, a pure student
    and a hybrid. Catches a path silently not taken and a wrong norm, bias, gate or residual in it."""
    monkeypatch.setenv("MOHAWK_DECODE_KERNEL", "triton")
    m = _perturbed(student(mixers, ssd_conv_init="random", **kw))
    ids, nxt = torch.randint(0, 64, (2, 6)), torch.randint(0, 64, (2, 3))
    calls = _count_matvec(monkeypatch)
    out = {}
    for choice in ("plain", "fused"):
        monkeypatch.setenv("MOHAWK_DECODE_MATVEC", choice)
        cache = MohawkCache(kv_capacity=16)  # static: the one-step graph's path
        with torch.no_grad():
            m(ids, past_key_values=cache, use_cache=True)
        out[choice] = steps(m, cache, nxt), m.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert len(calls) == (0 if choice == "plain" else per_step * (nxt.shape[1] + 4))
    assert {key[-1] for key in graphs._GRAPHS[m][1]} == {False, True}  # one graph each: none replayed stale
    torch.testing.assert_close(out["fused"][0], out["plain"][0], atol=1e-4, rtol=1e-4)
    assert torch.equal(out["fused"][1], out["plain"][1])


@needs_kernels
@pytest.mark.parametrize("norm", ["late", "folded"])
def test_the_dot_kernels_norm_modes_decode_what_plain_decodes(monkeypatch, norm):
    """At 16 sequences (the tensor-core kernel) with MOHAWK_DECODE_NORM=late or folded, a hybrid's steps give the
    plain steps' logits: its norm + in_proj and norm + gate + up products take that mode (folded: each layer's norm
    weight folded into its own weights: a fold of the wrong norm, or one kept from another layer, fails here; and after
    the model's fold_norms, the same logits from the weights as they are, no copy kept)."""
    from mohawk.mixers.kernels import decode_matvec as dm

    monkeypatch.setenv("MOHAWK_DECODE_KERNEL", "triton")
    m = _perturbed(student(HYBRID, ssd_conv_init="random"))
    ids, nxt = torch.randint(0, 64, (dm.DOT_MIN_BATCH, 5)), torch.randint(0, 64, (dm.DOT_MIN_BATCH, 2))
    modes = []
    launch = dm.decode_matvec
    monkeypatch.setattr(dm, "decode_matvec", lambda *a, **k: modes.append(dm.decode_norm_mode()) or launch(*a, **k))
    monkeypatch.setenv("MOHAWK_DECODE_MATVEC", "plain")
    want = steps(m, prefill(m, ids), nxt)
    monkeypatch.setenv("MOHAWK_DECODE_MATVEC", "fused")
    monkeypatch.setenv("MOHAWK_DECODE_NORM", norm)
    got = steps(m, prefill(m, ids), nxt)
    assert modes and set(modes) == {norm}
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    if norm == "folded":  # the model's own norms folded in (fold_norms): the same logits, and no folded copies kept
        m.fold_norms()
        torch.testing.assert_close(steps(m, prefill(m, ids), nxt), want, atol=1e-4, rtol=1e-4)
        names = ("in_proj.weight", "gate_proj.weight", "up_proj.weight")
        kept = [dm._FOLDS[id(p)] for n, p in m.named_parameters() if n.endswith(names) and id(p) in dm._FOLDS]
        assert len(kept) == 2 + 2 * 4 and all(fold is None for _, fold in kept)


@needs_kernels
def test_fused_matvec_keeps_the_plain_path_where_it_does_not_apply(monkeypatch):
    """Blocks the kernels do not compute exactly decode as before with MOHAWK_DECODE_MATVEC=fused: LayerNorm blocks,
    a parallel block, a non-SiLU gated MLP, more than MAX_BATCH sequences, prompts; none launches a kernel."""
    from mohawk.mixers.kernels.decode_matvec import MAX_BATCH

    calls = _count_matvec(monkeypatch)  # (the mixers' eager step: a block fused wrongly still launches its MLP's)
    cases = [({"norm_type": "layernorm"}, 2), ({"block_type": "parallel"}, 2), ({"hidden_act": "gelu_new"}, 2)]
    for kw, b in [*cases, ({}, MAX_BATCH + 1)]:
        m = student(("ssd", "ssd"), ssd_conv_init="random", **kw)
        ids, nxt = torch.randint(0, 64, (b, 5)), torch.randint(0, 64, (b, 2))
        monkeypatch.setenv("MOHAWK_DECODE_MATVEC", "plain")
        want = steps(m, prefill(m, ids), nxt)
        monkeypatch.setenv("MOHAWK_DECODE_MATVEC", "fused")
        torch.testing.assert_close(steps(m, prefill(m, ids), nxt), want, atol=0, rtol=0)
    assert not calls
    steps(m, prefill(m, ids[:MAX_BATCH]), nxt[:MAX_BATCH])  # the same blocks at MAX_BATCH: their MLPs are fused
    assert len(calls) == 2 * 2 * nxt.shape[1]


@needs_kernels
def test_compiled_output_norm_with_fused_matvec(monkeypatch):
    """decode_compile with MOHAWK_DECODE_MATVEC=fused: a mamba2 mixer's output norm alone is compiled
    (``_out_input``), its out_proj and the residual add being the fused kernel; the plain compiled step's logits."""
    monkeypatch.setenv("MOHAWK_DECODE_KERNEL", "triton")
    m = _perturbed(student(("mamba2", "attention", "mamba2"), ssd_conv_init="random"))
    monkeypatch.setenv("MOHAWK_DECODE_MATVEC", "plain")
    torch.manual_seed(0)  # (the helper draws its tokens: the same ones both times)
    want, _, plain_calls, nxt = _compiled_steps_and_eager(m, monkeypatch)
    torch.manual_seed(0)
    monkeypatch.setenv("MOHAWK_DECODE_MATVEC", "fused")
    got, _, calls, _ = _compiled_steps_and_eager(m, monkeypatch)
    assert plain_calls.count("_finish_gated") == calls.count("_out_input") == 2 * nxt.shape[1]
    assert "_finish_gated" not in calls and all("_out_input" not in x.__dict__ for x in m.modules())
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mixers", [("ssd", "ssd", "ssd"), HYBRID])
@pytest.mark.parametrize("batch", [4, 16])
@pytest.mark.parametrize("pdl", ["0", "1"])
@pytest.mark.parametrize("norm", ["row", "folded"])
def test_captured_fused_matvec_equals_plain_on_cuda(mixers, batch, pdl, norm, monkeypatch):
    """Captured on a GPU in bfloat16 (compiled parts included): the fused kernels inside the CUDA graph decode the
    plain graph's greedy tokens, for a pure student and a hybrid, with the register kernel (4 sequences) and the
    tensor-core one (16), with and without programmatic dependent launch (MOHAWK_DECODE_PDL; on Hopper: a kernel
    reading its input before the one writing it has finished would show here), and at 16 with the norms folded into
    the weights (MOHAWK_DECODE_NORM=folded: a graph reading a fold made in its capture's pool would show here)."""
    if norm != "row" and batch < 16:
        pytest.skip("the norm's modes are the tensor-core kernel's (16 sequences or more)")
    monkeypatch.setenv("MOHAWK_DECODE_PDL", pdl)
    monkeypatch.setenv("MOHAWK_DECODE_NORM", norm)  # folded: the folds made before capture, read by the graph
    m = _perturbed(student(mixers, ssd_conv_init="random", decode_compile=True, mlp_bias=True)).cuda().bfloat16()
    ids = torch.randint(0, 64, (batch, 40), device="cuda")
    calls = _count_matvec(monkeypatch)
    out = {}
    for choice in ("plain", "fused"):
        monkeypatch.setenv("MOHAWK_DECODE_MATVEC", choice)
        kw = {"max_new_tokens": 12, "output_logits": True, "return_dict_in_generate": True}
        cache = MohawkCache(kv_capacity=64)
        out[choice] = m.generate(ids, do_sample=False, pad_token_id=0, past_key_values=cache, **kw)
    assert calls and any(g.graph is not None and k[-1] for k, g in graphs._GRAPHS[m][1].items())
    torch.testing.assert_close(torch.stack(out["fused"].logits), torch.stack(out["plain"].logits), atol=5e-2, rtol=5e-2)
