"""The student as a Hugging Face causal LM: Auto classes, save/load, generation with the recurrent cache."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import mohawk
from mohawk.models import MohawkCache, MohawkConfig, MohawkForCausalLM
from tests.utils import logits_through_cache, tiny_teacher
from tests.utils import tiny_student as student


def test_registered_with_auto_classes():
    cfg = AutoConfig.for_model("mohawk", num_hidden_layers=2, mixers=["ssd", "ssd"])
    assert isinstance(AutoModelForCausalLM.from_config(cfg), MohawkForCausalLM)


@pytest.mark.parametrize("mixers", [("ssd", "ssd"), ("ssd", "attention", "ssd")])
def test_save_pretrained_round_trip(tmp_path, mixers):
    m = student(mixers)
    m.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        assert torch.equal(m(ids).logits, loaded(ids).logits)


@pytest.mark.parametrize("mixers", [("ssd", "ssd", "ssd"), ("attention", "ssd", "attention")])
def test_generate_with_cache_equals_without(mixers):
    m = student(mixers, ssd_conv_init="random")
    ids = torch.randint(0, 64, (2, 7))
    a = m.generate(ids, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
    b = m.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=0)
    assert a.shape == (2, 19) and torch.equal(a, b)


def test_incremental_logits_equal_full_pass():
    m = student(("ssd", "attention"), ssd_conv_init="random", ssd_conv_activation="silu")
    full, cached, _ = logits_through_cache(m, torch.randint(0, 64, (1, 15)), prompt=6)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mixers", [("ssd", "attention"), ("ssm", "linear_attention"), ("toeplitz", "ssd")])
def test_prompt_in_pieces_equals_one_pass(mixers, monkeypatch):
    """Several tokens after a cached state go through the chunked scan from that state (conv window included); only
    a single token takes the token-by-token recurrent path."""
    from mohawk.mixers.ssd import SSDMixer

    m = student(mixers, ssd_conv_init="random", ssd_conv_activation="silu")
    ids = torch.randint(0, 64, (2, 23))
    steps = []
    real = SSDMixer._forward_recurrent
    monkeypatch.setattr(
        SSDMixer, "_forward_recurrent", lambda self, u, *a: steps.append(u.shape[1]) or real(self, u, *a)
    )
    with torch.no_grad():
        full = m(ids).logits
        cache = MohawkCache()
        pieces = [
            m(ids[:, a:b], past_key_values=cache, use_cache=True).logits for a, b in [(0, 2), (2, 9), (9, 10), (10, 23)]
        ]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)
    ssd_family = sum(isinstance(layer.mixer, SSDMixer) for layer in m.model.layers)
    assert steps == [1] * ssd_family  # the (9, 10) piece, once per SSD-family layer


def test_prefill_chunk_gives_the_same_generation_and_state():
    ids = torch.randint(0, 64, (2, 23))
    outs, states = [], []
    for chunk in (0, 5):
        m = student(("ssd", "attention", "ssm"), ssd_conv_init="random", prefill_chunk=chunk)
        widths = []
        hook = m.model.layers[0].register_forward_pre_hook(lambda mod, args: widths.append(args[0].shape[1]))
        with torch.no_grad():
            cache = MohawkCache()
            last = m(ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        hook.remove()
        assert last.shape == (2, 1, 64) and widths == ([23] if chunk == 0 else [5, 5, 5, 5, 3])
        states.append((last, cache.get_state(0)[1], cache.tokens))
        outs.append(m.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0))
    torch.testing.assert_close(states[1][0], states[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states[1][1], states[0][1], atol=1e-5, rtol=1e-5)
    assert states[0][2] == states[1][2] == 23 and torch.equal(outs[0], outs[1])


def test_ssd_decoding_memory_is_constant():
    m = student(("ssd", "ssd"))
    sizes = []
    with torch.no_grad():
        for L in (8, 64):
            cache = MohawkCache()
            m(torch.randint(0, 64, (1, L)), past_key_values=cache, use_cache=True)
            sizes.append(cache.memory_bytes())
    assert sizes[0] == sizes[1] > 0


def test_labels_give_next_token_loss():
    m = student()
    ids = torch.randint(0, 64, (2, 10))
    out = m(ids, labels=ids)
    want = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, want)


def test_left_padding_is_refused():
    m = student()
    with pytest.raises(ValueError, match="left padding"):
        m(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1]]))


@pytest.mark.parametrize("bad", [dict(block_type="weird"), dict(mixers=["ssd"]), dict(mixers=["lstm"] * 4)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        MohawkConfig(num_hidden_layers=4, **bad)


def test_hybrid_from_teacher_generates_like_itself(tmp_path):
    s = mohawk.from_teacher(tiny_teacher("phi"), attention_layers=[0, 2])
    s.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 96, (1, 6))
    assert torch.equal(
        s.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0),
        loaded.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0),
    )


def test_student_loads_without_mohawk_through_remote_code(tmp_path):
    """save_pretrained writes the code and auto_map: a process where `import mohawk` fails loads the student with
    trust_remote_code=True and computes the same logits, also where Triton is absent (the Triton scan's file travels
    along but is optional); a head-level hybrid layer (mixers/heads.py) travels too."""
    import subprocess
    import sys

    from mohawk.models import MohawkConfig, MohawkForCausalLM

    torch.manual_seed(0)
    cfg = MohawkConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        mixers=["ssd", "attention", "ssm", "toeplitz", "heads"],
        attention_groups=[[], [], [], [], [1]],
    )
    model = MohawkForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "student")
    ids = torch.randint(0, 50, (1, 12))
    torch.save({"ids": ids, "logits": model(ids).logits.detach()}, tmp_path / "ref.pt")
    code = f"""
import sys, torch
sys.modules["mohawk"] = None  # as if mohawk were not installed
sys.modules["triton"] = None  # and Triton
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(tmp_path / "student")!r}, trust_remote_code=True).eval()
assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
import importlib
kernels = importlib.import_module(type(m).__module__.rsplit(".", 1)[0] + ".kernels")
assert kernels._triton_scan() is None  # the scan's file is there, Triton is not: the PyTorch scan stands in
ref = torch.load({str(tmp_path / "ref.pt")!r}, weights_only=True)
torch.testing.assert_close(m(ref["ids"]).logits, ref["logits"])
out = m.generate(ref["ids"], max_new_tokens=3, do_sample=False)
assert out.shape == (1, 15)
m.save_pretrained({str(tmp_path / "again")!r})
print("ok")
"""
    assert (tmp_path / "student" / "ssd_triton.py").is_file()
    env = {**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
    # and with mohawk imported, the same directory loads with the package's own classes
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    assert type(again) is MohawkForCausalLM


def test_generate_feeds_one_token_per_step_after_the_prompt():
    """The decoding cache must come back at every step (transformers has renamed its key): after the prompt, each
    forward sees one new token, not the whole sequence again."""
    torch.manual_seed(0)
    cfg = MohawkConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        mixers=["ssd", "attention"],
    )
    model = MohawkForCausalLM(cfg).eval()
    lengths = []
    hook = model.model.register_forward_pre_hook(
        lambda m, a, kw: lengths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    out = model.generate(torch.randint(0, 50, (1, 10)), max_new_tokens=4, do_sample=False)
    hook.remove()
    assert out.shape == (1, 14) and lengths == [10, 1, 1, 1]


@pytest.mark.parametrize("keep", [1, 4, 23, 30])
def test_logits_to_keep_with_chunked_prefill(keep):
    """Generation asks for the last positions only: through a chunked prefill (pieces of 5 of 23 tokens) the kept
    logits equal the last ones of a full pass, and the cache still counts every token."""
    m = student(("ssd", "attention", "ssd"), ssd_conv_init="random", prefill_chunk=5)
    ids = torch.randint(0, 64, (2, 23))
    with torch.no_grad():
        full = m(ids).logits
        cache = MohawkCache()
        kept = m(ids, past_key_values=cache, use_cache=True, logits_to_keep=keep).logits
    assert kept.shape == (2, min(keep, 23), 64) and cache.tokens == 23
    torch.testing.assert_close(kept, full[:, -keep:], atol=1e-5, rtol=1e-5)


def test_fold_norms_keeps_the_function():
    """fold_norms multiplies each sequential block's norm weights into the products that read them (norm2 into gate
    and up, norm1 into an SSD-family mixer's in_proj) and sets the norms to 1: the logits stay (every student family,
    and attention, whose norm1 stays, in one model), and a second fold changes nothing. A fold along the wrong axis,
    into the wrong product, of a norm left as it was (counted twice), or of an attention layer's or another family's
    norm whose input goes elsewhere, fails here; LayerNorm and parallel blocks are left alone."""
    from mohawk.mixers import STUDENT_MIXERS

    m = student((*STUDENT_MIXERS, "attention"), ssd_conv_init="random")
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight")):
                p.add_(0.5 * torch.randn_like(p))
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        want = m(ids).logits
        assert m.fold_norms() == len(m.model.layers)
        torch.testing.assert_close(m(ids).logits, want, atol=1e-5, rtol=1e-5)
    norms = {n: p for n, p in m.named_parameters() if n.endswith(("norm1.weight", "norm2.weight"))}
    ssd_family = [i for i, kind in enumerate(m.config.mixers) if kind not in ("toeplitz", "attention")]
    for name, p in norms.items():
        layer, which = int(name.split(".")[2]), name.split(".")[3]
        assert torch.equal(p, torch.ones_like(p)) == (which == "norm2" or layer in ssd_family), name
    before = {n: p.clone() for n, p in m.named_parameters()}
    m.fold_norms()
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters())
    for kw in ({"norm_type": "layernorm"}, {"block_type": "parallel"}):
        other = student(("ssd", "ssd"), **kw)
        params = {n: p.clone() for n, p in other.named_parameters()}
        assert other.fold_norms() == 0 and all(torch.equal(p, params[n]) for n, p in other.named_parameters())
