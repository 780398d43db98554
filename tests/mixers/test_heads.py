"""The head-level hybrid mixer (mohawk.mixers.heads): attention over some KV groups, a family over the other heads."""

import pytest
import torch

from mohawk.mixers import MIXERS, Attention, HeadsMixer, SSDMixer
from mohawk.models import MohawkForCausalLM
from tests.utils import logits_through_cache, tiny_mixer_config, tiny_student


def heads_mixer(groups, **kw) -> HeadsMixer:
    """A HeadsMixer keeping KV ``groups`` of tiny_mixer_config's 2 (4 query heads), parameters moved off their init."""
    torch.manual_seed(0)
    m = HeadsMixer(tiny_mixer_config(attention_groups=[groups], ssd_state_size=6, ssd_chunk_size=8, **kw))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_all_groups_kept_is_the_attention_layer():
    """Catches a wrong head order or slicing of the attention part, or a student part left in: with every group kept
    the mixer is the layer's Attention (same weights, same output and matrix)."""
    m = heads_mixer([0, 1])
    assert m.student is None and m.attention_heads == [0, 1, 2, 3]
    attn = Attention(tiny_mixer_config(), 0)
    attn.load_state_dict({k.removeprefix("attention."): v for k, v in m.state_dict().items()})
    u = torch.randn(2, 11, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(u), attn(u), atol=0, rtol=0)
        torch.testing.assert_close(m.materialize(u), attn.materialize(u), atol=0, rtol=0)


@pytest.mark.parametrize("family", ["ssd", "ssm", "toeplitz", "linear_attention", "mamba2", "discrete_mamba2"])
def test_no_group_kept_is_the_family_mixer(family):
    """Catches a dropped output bias, B/C groups split wrongly or a head count off: with no group kept the mixer is
    the plain family mixer over all heads."""
    m = heads_mixer([], heads_family=family, attention_out_bias=True)
    assert m.attention is None
    plain = MIXERS[family](tiny_mixer_config(ssd_state_size=6, ssd_chunk_size=8, attention_out_bias=True), 0)
    plain.load_state_dict({k.removeprefix("student."): v for k, v in m.state_dict().items()})
    u = torch.randn(2, 11, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(u), plain(u), atol=0, rtol=0)
        torch.testing.assert_close(m.materialize(u), plain.materialize(u), atol=0, rtol=0)


def test_matrix_times_value_stream_is_the_output():
    """Catches materialize / value_stream out of the teacher's head order or out of step with each other, and an
    output bias added twice: o_proj over (M @ V) of all heads, its columns the two parts' output projections in head
    order, gives forward."""
    m = heads_mixer([1], ssd_gate=False, attention_out_bias=True)
    u = torch.randn(2, 13, 32)
    with torch.no_grad():
        y = m.materialize(u) @ m.value_stream(u).float()  # (b, h, L, d)
        d = m.head_dim
        w = torch.zeros(32, 4 * d)
        for part, weight in (
            (m.attention_heads, m.attention.o_proj.weight),
            (m.student_heads, m.student.out_proj.weight),
        ):
            for j, head in enumerate(part):
                w[:, head * d : (head + 1) * d] = weight[:, j * d : (j + 1) * d]
        want = y.transpose(1, 2).flatten(2) @ w.T + m.attention.o_proj.bias
        torch.testing.assert_close(m(u), want, atol=1e-5, rtol=1e-4)
    assert m.student.out_proj.bias is None  # the bias lives once, in the attention part


def test_attention_heads_keep_their_teacher_positions():
    """Catches heads returned part by part instead of in the teacher's order: keeping group 0 of 2, heads 0 and 1 of
    materialize are the attention part's."""
    m = heads_mixer([0])
    u = torch.randn(1, 9, 32)
    with torch.no_grad():
        full = m.materialize(u)
        torch.testing.assert_close(full[:, :2], m.attention.materialize(u), atol=0, rtol=0)
        torch.testing.assert_close(full[:, 2:], m.student.materialize(u), atol=0, rtol=0)


def test_row_blocks_are_rows_of_the_matrix():
    """Catches matrix_rows (the stage-1 tiled path) disagreeing with materialize."""
    m = heads_mixer([1])
    u = torch.randn(2, 19, 32)
    with torch.no_grad():
        full, factors = m.materialize(u), m.matrix_factors(u)
        for r0, r1 in [(0, 5), (5, 12), (12, 19)]:
            torch.testing.assert_close(m.matrix_rows(factors, r0, r1), full[:, :, r0:r1, :r1], atol=1e-6, rtol=1e-5)


def heads_student(**kw) -> MohawkForCausalLM:
    return tiny_student(("heads", "attention", "heads"), attention_groups=[[1], [], [0]], ssd_conv_init="random", **kw)


def test_cached_decoding_equals_full_forward():
    """Catches the two parts' caches colliding under one layer index, or a part missing its cache: a prompt fed in
    chunks and then token by token gives the full forward's logits, each heads layer holding a KV cache and a state."""
    m = heads_student(prefill_chunk=4)
    full, cached, cache = logits_through_cache(m, torch.randint(0, 64, (2, 15)), prompt=9)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    assert sorted(cache.kv) == [0, 1, 2] and sorted(cache.ssm) == [0, 2]
    assert cache.kv[0][0].shape[1] == 1  # the KV heads of the kept group only


def test_save_and_load_round_trip(tmp_path):
    """Catches attention_groups or heads_family lost in config.json: the reloaded student has the same layers and
    logits."""
    m = heads_student(heads_family="ssm")
    m.save_pretrained(tmp_path)
    again = MohawkForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.attention_groups == [[1], [], [0]] and again.config.attention_heads == {0: [1], 2: [0]}
    assert isinstance(again.model.layers[2].mixer.student, MIXERS["ssm"])
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, m(ids).logits, atol=0, rtol=0)


def test_config_refuses_bad_groups():
    """Catches groups out of range or repeated reaching the mixer (an index error, or a head computed twice)."""
    for groups in ([[2]], [[0, 0]]):
        with pytest.raises(ValueError, match="attention_groups"):
            tiny_mixer_config(attention_groups=groups)
    with pytest.raises(ValueError, match="heads_family"):
        tiny_mixer_config(heads_family="heads")


def test_default_config_keeps_no_groups():
    cfg = tiny_mixer_config()
    assert cfg.attention_groups == [[]] and cfg.attention_heads == {} and isinstance(SSDMixer(cfg), SSDMixer)
