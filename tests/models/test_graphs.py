"""Decoding through a DecodeGraph (mohawk.models.graphs). On CPU the graph is not captured but its logic runs: static
buffers updated in place, a cache adopting them, another cache taking them over, recapture when parameters move. On
CUDA (marker gpu) the captured graph must give what the eager step gives."""

import pytest
import torch

from mohawk.models import MohawkCache, graphs
from mohawk.models import modeling_mohawk as modeling
from tests.models.test_modeling import student


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
