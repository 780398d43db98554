"""Each stage lowers its own loss on tiny teachers of every family; stage 1's loss is the Frobenius distance."""

import pytest
import torch

import mohawk
from mohawk.checkpoint import Checkpointer
from mohawk.metrics import MetricsLog
from mohawk.stages import HiddenStateAlignment, KnowledgeDistillation, MatrixOrientation
from mohawk.stages.distillation import LossWeights, kd_loss
from mohawk.teachers import adapter_for
from mohawk.train import LoopSettings, StageBudget, train_stage
from tests.utils import FAMILIES, VOCAB, kd_losses, tiny_teacher, train_briefly


def _assert_each_stage_lowers_its_loss(student, adapter, tmp_path):
    batch = torch.randint(0, VOCAB, (2, 16))
    for cls in (MatrixOrientation, HiddenStateAlignment, KnowledgeDistillation):
        stage = cls(student, adapter)
        with torch.no_grad():
            before = float(stage.loss(batch)[0])
        train_briefly(stage, batch, tmp_path / cls.__name__, lr=5e-4 if cls is KnowledgeDistillation else 3e-3)
        with torch.no_grad():
            after = float(stage.loss(batch)[0])
        assert after < before, (cls.__name__, before, after)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_stage_lowers_its_loss(family, tmp_path):
    torch.manual_seed(0)
    teacher = tiny_teacher(family)
    adapter = adapter_for(teacher)
    student = mohawk.from_teacher(adapter, attention_layers=[1])
    _assert_each_stage_lowers_its_loss(student, adapter, tmp_path)


def test_stage1_loss_is_the_frobenius_distance():
    teacher = tiny_teacher("phi")
    adapter = adapter_for(teacher)
    student = mohawk.from_teacher(adapter)
    batch = torch.randint(0, VOCAB, (2, 12))
    loss, metrics = MatrixOrientation(student, adapter).loss(batch)
    # direct computation: teacher attention probabilities from HF itself, student matrix from the mixer
    with torch.no_grad():
        attn = teacher(batch, output_attentions=True).attentions
    caps = adapter.capture(batch)
    want = 0.0
    for i in range(3):
        M = student.model.layers[i].mixer.materialize(caps.mixer_inputs[i]).detach()
        d = ((attn[i].float() - M) ** 2).sum((-1, -2)).sqrt().mean()
        assert abs(metrics["layer_distance"][i] - float(d)) < 1e-4
        want += float(d)
    assert abs(float(loss.detach()) - want) < 1e-4


def test_stages_train_only_their_parameters():
    adapter = adapter_for(tiny_teacher("llama"))
    student = mohawk.from_teacher(adapter, attention_layers=[0])
    names1 = {n for n, _ in MatrixOrientation(student, adapter).parameters()}
    assert names1 and all(".mixer." in n and not n.startswith("model.layers.0.") for n in names1)
    frozen = {n for n, _ in KnowledgeDistillation(student, adapter, freeze_mlp=True).parameters()}
    assert not any(".mlp." in n for n in frozen) and "model.embed_tokens.weight" in frozen


def test_build_gives_each_stage_the_runs_options():
    """mohawk.stages.build hands each stage its own fields of the run's configuration (and no other stage's)."""
    from mohawk.config import DistillConfig
    from mohawk.stages import RecallPhase, build

    adapter = adapter_for(tiny_teacher("llama"))
    student = mohawk.from_teacher(adapter, attention_layers=[0])
    cfg = DistillConfig.from_dict(
        {"stage1_tile": 3, "kd_weight": 0.7, "ce_weight": 0.2, "temperature": 2.0, "freeze_mlp": True}
    )
    cfg.loss_chunk, cfg.mixer_lr_scale = 16, 0.5
    one, two, three, four = (build(s, student, adapter, cfg) for s in (1, 2, 3, 4))
    assert isinstance(one, MatrixOrientation) and one.tile == 3
    assert isinstance(two, HiddenStateAlignment) and isinstance(four, RecallPhase)
    assert three.weights == LossWeights(0.7, 0.2, 2.0) == four.weights
    assert three.freeze_mlp and (three.loss_chunk, three.mixer_lr_scale) == (16, 0.5) == (
        four.loss_chunk,
        four.mixer_lr_scale,
    )


def test_kd_loss_is_kl():
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    want = torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="sum") / 6
    torch.testing.assert_close(kd_loss(s, t), want)
    assert float(kd_loss(t, t)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("mixer", ["ssm", "linear_attention", "toeplitz"])
def test_each_stage_lowers_its_loss_for_every_family(mixer, tmp_path):
    torch.manual_seed(0)
    adapter = adapter_for(tiny_teacher("phi"))
    student = mohawk.from_teacher(adapter, mixer=mixer, ssd_state_size=8)
    assert set(student.config.mixers) == {mixer}
    _assert_each_stage_lowers_its_loss(student, adapter, tmp_path)


def test_distillation_loss_is_kl_plus_weighted_ce():
    from mohawk.stages.distillation import distillation_loss

    s, t, ids = torch.randn(2, 6, VOCAB), torch.randn(2, 6, VOCAB), torch.randint(0, VOCAB, (2, 6))
    loss, kl, ce = distillation_loss(s, t, ids, 2.0, 0.7, 0.3)
    want_ce = torch.nn.functional.cross_entropy(s[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(kl, kd_loss(s, t, 2.0))
    torch.testing.assert_close(ce, want_ce)
    torch.testing.assert_close(loss, 0.7 * kl + 0.3 * want_ce)
    loss, _, ce = distillation_loss(s, None, ids, 1.0, 0.0, 1.0)  # no teacher: plain language modelling
    torch.testing.assert_close(loss, want_ce)


@pytest.mark.parametrize("cls", [HiddenStateAlignment, KnowledgeDistillation])
def test_compiled_stage_gives_the_eager_loss_and_gradients(cls, monkeypatch):
    """Stage.compiled() wraps the student's (and in stage 3 the teacher's) blocks and the loss in torch.compile, the
    SSD scan left out as an opaque call; the loss and gradients are those of the eager stage, and on exit every
    module is plain again. (Backend aot_eager: dynamo + autograd tracing without code generation, fast on CPU.)"""
    from mohawk.stages import base

    monkeypatch.setattr(base, "COMPILE_BACKEND", "aot_eager")
    torch.manual_seed(0)
    adapter = adapter_for(tiny_teacher("llama"))
    student = mohawk.from_teacher(adapter, attention_layers=[1])
    stage = cls(student, adapter, **({"weights": LossWeights(ce=0.5)} if cls is KnowledgeDistillation else {}))
    batch = torch.randint(0, VOCAB, (2, 16))
    results = []
    for enabled in (False, True):
        student.zero_grad(set_to_none=True)
        with stage.compiled("fuse" if enabled else "off"):
            wrapped = [getattr(m, "_compiled_call_impl", None) is not None for m in stage.compiled_modules()]
            loss, _ = stage.loss(batch)
            loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in student.parameters() if p.grad is not None]))
        assert all(wrapped) == enabled and any(wrapped) == enabled
    assert not any(getattr(m, "_compiled_call_impl", None) is not None for m in stage.compiled_modules())
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    assert len(results[1][1]) == len(results[0][1]) > 0
    for g1, g0 in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["fuse", "graphs"])
def test_compiled_training_follows_eager_on_cuda(mode, tmp_path):
    """Stage 3 through the training loop with torch.compile (inductor; "graphs": CUDA graph replay of each block),
    two micro-batches per update: the logged losses follow the eager run's (bf16 autocast tolerance)."""
    losses = {m: kd_losses(tmp_path / m, "cuda", compile_mode=m, seq_len=64, updates=6) for m in ("off", mode)}
    assert len(losses[mode]) == 6
    torch.testing.assert_close(torch.tensor(losses[mode]), torch.tensor(losses["off"]), rtol=2e-2, atol=2e-2)


def test_stage2_loss_is_the_block_output_distance():
    """Stage 2's per-layer loss is || student_block(h_i) - h_{i+1} ||_2 averaged over tokens, with h_i the teacher's
    hidden states (HF's output_hidden_states): the target is the teacher block's OUTPUT, not its input."""
    teacher = tiny_teacher("llama")
    adapter = adapter_for(teacher)
    student = mohawk.from_teacher(adapter, attention_layers=[1])
    batch = torch.randint(0, VOCAB, (2, 12))
    loss, metrics = HiddenStateAlignment(student, adapter).loss(batch)
    with torch.no_grad():
        hs = teacher(batch, output_hidden_states=True).hidden_states  # embeddings, then each block's output
    want = 0.0
    for i in (0, 2):
        out = student.model.layers[i](hs[i])
        target = hs[i + 1] if i + 1 < 3 else None
        if target is None:  # the last hidden state HF returns is after the final norm: use the capture
            target = adapter.capture(batch).block_outputs[i]
        d = float((out - target).norm(dim=-1).mean().detach())
        assert abs(metrics["layer_distance"][i] - d) < 1e-4, (i, metrics["layer_distance"][i], d)
        want += d
    assert set(metrics["layer_distance"]) == {0, 2}
    assert abs(float(loss.detach()) - want) < 1e-4


def test_stage3_mixer_lr_scale_reaches_the_optimizer(tmp_path):
    """The replacing mixers' parameters train at mixer_lr_scale x the LR, everything from the teacher at the LR."""
    import json

    adapter = adapter_for(tiny_teacher("llama"))
    student = mohawk.from_teacher(adapter, attention_layers=[1])
    stage = KnowledgeDistillation(student, adapter, mixer_lr_scale=4.0)
    seen = {}
    real = torch.optim.AdamW

    def spy(groups, **kw):
        opt = real(groups, **kw)
        seen["opt"] = opt
        return opt

    batch = torch.randint(0, VOCAB, (2, 8))
    torch.optim.AdamW, saved = spy, torch.optim.AdamW
    try:
        train_stage(
            stage,
            iter([batch] * 2),
            StageBudget(32, 16, 1, 1e-3),
            LoopSettings(warmup_fraction=0.0, decay_fraction=0.0, checkpoint_every=1000),
            checkpointer=Checkpointer(None),
            log=MetricsLog(tmp_path / "m.jsonl"),
            progress=False,
        )
    finally:
        torch.optim.AdamW = saved
    names = {id(p): n for n, p in student.named_parameters()}
    for g in seen["opt"].param_groups:
        for p in g["params"]:
            n = names[id(p)]
            replaced = n.startswith(("model.layers.0.mixer.", "model.layers.2.mixer."))
            assert g["lr_scale"] == (4.0 if replaced else 1.0), n
            assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"]), n
    assert json.loads((tmp_path / "m.jsonl").read_text().splitlines()[-1])["lr"] > 0


def test_mixers_behind_a_large_gain_norm_get_the_lr_divided_by_it():
    """Stages 1-2: a mixer fed by a norm of weight RMS g > 1 (Gemma: 14-50) trains at LR / g; g <= 1 keeps the LR."""
    teacher = tiny_teacher("llama")
    student = mohawk.from_teacher(teacher)
    with torch.no_grad():
        student.model.layers[0].norm1.weight.fill_(0.5)
        student.model.layers[1].norm1.weight.fill_(20.0)
    stage = MatrixOrientation(student, adapter_for(teacher))
    assert stage.lr_scale("model.layers.0.mixer.in_proj.weight") == 1.0
    assert stage.lr_scale("model.layers.1.mixer.in_proj.weight") == pytest.approx(1 / 20)
    assert stage.lr_scale("model.layers.1.mlp.up_proj.weight") == 1.0


def test_head_level_hybrid_trains_only_its_replacing_heads(tmp_path):
    """Catches a head-level layer's kept attention heads trained (or given optimizer state) in stages 1-2, or given
    stage 3's mixer LR, and a stage-1 loss over heads that are exact (a zero distance: NaN gradients): stages 1 and
    2 train only the student part, stage 3 scales only its LR, and every stage lowers its loss."""
    from mohawk.stages.orientation import frobenius_distance

    adapter = adapter_for(tiny_teacher("llama"))
    student = mohawk.from_teacher(adapter, attention_layers=[0], attention_heads={1: [0]})
    for cls in (MatrixOrientation, HiddenStateAlignment):
        names = {n for n, _ in cls(student, adapter).parameters()}
        assert any(n.startswith("model.layers.1.mixer.student.") for n in names)
        assert not any(n.startswith(("model.layers.0.", "model.layers.1.mixer.attention.")) for n in names)
    stage3 = KnowledgeDistillation(student, adapter, mixer_lr_scale=4.0)
    assert stage3.lr_scale("model.layers.1.mixer.attention.q_proj.weight") == 1.0
    assert stage3.lr_scale("model.layers.1.mixer.student.in_proj.weight") == 4.0
    batch = torch.randint(0, VOCAB, (2, 16))
    stage1 = MatrixOrientation(student, adapter)
    loss, info = stage1.loss(batch)
    u = adapter.capture(batch, logits=False).mixer_inputs[1]
    with torch.no_grad():
        want = frobenius_distance(
            adapter.attention(1).materialize(u)[:, 2:], student.model.layers[1].mixer.student.materialize(u)
        )
    torch.testing.assert_close(info["layer_distance"][1], want.mean())
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in student.parameters())
    student.zero_grad(set_to_none=True)
    _assert_each_stage_lowers_its_loss(student, adapter, tmp_path)


def test_copyable_marks_the_repeated_tokens_after_their_context():
    """Catches an off-by-one in the n-gram window (marking the first `context` tokens of a repeat, or the token after
    it), a mask that matches single tokens whatever came before, one that lets a position match itself (s <= j: every
    position from `context` on would be marked), and rows that see each other's tokens."""
    from mohawk.stages.distillation import copyable

    ids = torch.tensor(
        [
            [5, 1, 2, 3, 4, 9, 8, 1, 2, 3, 4, 6],  # "1 2 3 4" again at 7..10: with context 2, 9 and 10 are copyable
            [7, 1, 2, 3, 8, 6, 2, 3, 9, 6, 1, 3],  # "2 3" again after 6 (not 1): 7 not; "1" again: 10 not; 3 at 11
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],  # no repeats
            [5, 1, 2, 3, 4, 9, 8, 7, 6, 5, 4, 3],  # row 0's first half: nothing copyable within its own row
        ]
    )
    got = copyable(ids, context=2)
    assert got.shape == ids.shape and got.dtype == torch.bool
    assert got[0].nonzero().flatten().tolist() == [9, 10]
    assert not got[1].any() and not got[2].any() and not got[3].any()
    assert copyable(ids, context=1)[1].nonzero().flatten().tolist() == [7]  # "2 3" repeats: 1 token of context
    assert copyable(ids, context=0)[1].nonzero().flatten().tolist() == [6, 7, 9, 10, 11]  # any repeated token
    same = torch.full((1, 6), 4)  # one token repeated: every position once it has `context` tokens before it
    for context in (0, 1, 2, 3):
        want = [j for j in range(6) if j > context]
        assert copyable(same, context)[0].nonzero().flatten().tolist() == want
        assert not copyable(same, context)[0, : context + 1].any()
    assert not copyable(ids[:, :3], context=2).any()  # too short for a repeat


def test_copy_weights_shift_to_the_predicting_position():
    """Catches weights put on the copyable position itself instead of the logit that predicts it (one to its left),
    and a weight on the last logit (it predicts nothing)."""
    from mohawk.stages.distillation import copy_weights

    ids = torch.tensor([[5, 1, 2, 3, 4, 9, 8, 1, 2, 3, 4, 3]])  # copyable: 9, 10
    w, share = copy_weights(ids, 4.0, context=2)
    assert w.tolist() == [[1.0] * 8 + [5.0, 5.0] + [1.0, 1.0]]
    assert float(share) == pytest.approx(2 / 11)


def _weighted_case(seed=0):
    from mohawk.stages.distillation import copy_weights

    torch.manual_seed(seed)
    s, t = torch.randn(2, 12, VOCAB, dtype=torch.float64), torch.randn(2, 12, VOCAB, dtype=torch.float64) * 2
    ids = torch.randint(0, 4, (2, 12))  # few symbols: many repeats
    return s, t, ids, copy_weights(ids, 3.0, context=1)[0]


def test_weighted_kd_is_the_weighted_mean_of_the_token_kl():
    """Catches a weighted sum divided by the token count (not by sum(w)), weights applied to the CE too, and weights
    that reach the KL unshifted or not at all."""
    from mohawk.stages.distillation import distillation_loss

    s, t, ids, w = _weighted_case()
    assert 0 < int((w > 1).sum()) < w.numel()
    T = 2.0
    lt, ls = (t / T).log_softmax(-1), (s / T).log_softmax(-1)
    kl_token = (lt.exp() * (lt - ls)).sum(-1) * T**2  # (batch, L)
    want_kl = (w * kl_token).sum() / w.sum()
    want_ce = torch.nn.functional.cross_entropy(s[:, :-1].reshape(-1, VOCAB).float(), ids[:, 1:].reshape(-1))
    loss, kl, ce = distillation_loss(s, t, ids, T, 0.7, 0.3, w)
    torch.testing.assert_close(kl, want_kl.float())
    torch.testing.assert_close(ce, want_ce)
    torch.testing.assert_close(loss, 0.7 * kl + 0.3 * ce)
    assert abs(float(kl) - float(kl_token.mean())) > 1e-3  # the weights change something here


def _todays_loss(student_logits, teacher_logits, ids, temperature, kd_weight, ce_weight):
    """Stage 3's loss as it was before per-token weights: the reference for copy weight 0."""
    ce = torch.nn.functional.cross_entropy(student_logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    t = torch.nn.functional.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = torch.nn.functional.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1).mean() * temperature**2
    return kd_weight * kl + ce_weight * ce, kl, ce


def test_no_weights_is_todays_loss_bit_for_bit():
    """Catches an unweighted path that no longer computes today's loss in today's order (another reduction, T^2 or
    the weights applied elsewhere): without weights the loss is today's exactly, eager and compiled (aot_eager).
    That the stage passes no weights at copy weight 0 is test_copy_weight_zero_passes_no_weights."""
    from mohawk.stages.distillation import _compiled_loss, distillation_loss

    s, t, ids, _ = _weighted_case()
    s, t = s.float(), t.float()
    for got, want in [
        (distillation_loss(s, t, ids, 2.0, 0.7, 0.3), _todays_loss(s, t, ids, 2.0, 0.7, 0.3)),
        (distillation_loss(s, t, ids, 2.0, 0.7, 0.3, None), _todays_loss(s, t, ids, 2.0, 0.7, 0.3)),
        (
            _compiled_loss("aot_eager")(s, t, ids, 2.0, 0.7, 0.3, None),
            torch.compile(_todays_loss, dynamic=False, backend="aot_eager")(s, t, ids, 2.0, 0.7, 0.3),
        ),
    ]:
        assert all(torch.equal(x, y) for x, y in zip(got, want, strict=True))


@pytest.mark.parametrize("chunk", [0, 5])
@pytest.mark.parametrize("mode", ["off", "fuse"])
def test_copy_weight_zero_passes_no_weights(chunk, mode, monkeypatch):
    """Catches a stage that builds weights (ones) at copy weight 0, which would change the compiled graph and cost a
    mask per batch: both loss paths, eager and compiled, get None, so the loss is today's bit for bit
    (test_no_weights_is_todays_loss_bit_for_bit); at weight 2 they get the (batch, L) weights and the stage logs
    copy_share."""
    from mohawk.stages import base, distillation

    monkeypatch.setattr(base, "COMPILE_BACKEND", "aot_eager")
    seen = []
    fused = distillation.fused_distillation_loss
    monkeypatch.setattr(distillation, "fused_distillation_loss", lambda *a, **kw: seen.append(a[-1]) or fused(*a, **kw))
    adapter = adapter_for(tiny_teacher("llama"))
    batch = torch.randint(0, 6, (2, 16))  # a small alphabet: repeats
    for copy in (0.0, 2.0):
        stage = KnowledgeDistillation(
            mohawk.from_teacher(adapter), adapter, LossWeights(0.8, 0.2, copy=copy, copy_context=1), loss_chunk=chunk
        )
        with stage.compiled(mode):
            stage.loss_fn = lambda *a, f=stage.loss_fn: seen.append(a[-1]) or f(*a)
            _, metrics = stage.loss(batch)
        weights = seen.pop()
        if copy:
            assert weights.shape == batch.shape and 0 < float(metrics["copy_share"]) < 1
        else:
            assert weights is None and "copy_share" not in metrics
    assert not seen


def test_compiled_weighted_loss_equals_eager(monkeypatch):
    """Catches weights that the compiled loss drops or traces as constants of the first batch: the compiled stage
    (aot_eager) gives the eager loss and gradients with copy weight 2, on two different batches."""
    from mohawk.stages import base

    monkeypatch.setattr(base, "COMPILE_BACKEND", "aot_eager")
    adapter = adapter_for(tiny_teacher("llama"))
    torch.manual_seed(0)
    batches = [torch.randint(0, n, (2, 16)) for n in (3, 8)]  # alphabets of 3 and 8: different shares
    runs = {}
    for mode in ("off", "fuse"):
        torch.manual_seed(1)
        stage = KnowledgeDistillation(
            mohawk.from_teacher(adapter), adapter, LossWeights(0.8, 0.2, copy=2.0, copy_context=1)
        )
        with stage.compiled(mode):
            out = []
            for batch in batches:
                stage.student.zero_grad(set_to_none=True)
                loss, metrics = stage.loss(batch)
                loss.backward()
                grads = [p.grad.clone() for p in stage.student.parameters() if p.grad is not None]
                out.append((loss.detach(), float(metrics["copy_share"]), grads))
        runs[mode] = out
    assert runs["off"][0][1] != runs["off"][1][1]  # the batches weigh differently
    for (l0, c0, g0), (l1, c1, g1) in zip(runs["off"], runs["fuse"], strict=True):
        torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-5)
        assert c0 == c1
        for x, y in zip(g1, g0, strict=True):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
