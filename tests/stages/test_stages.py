"""Each stage lowers its own loss on tiny teachers of every family; stage 1's loss is the Frobenius distance."""

import pytest
import torch

import mohawk
from mohawk.config import DistillConfig
from mohawk.stages import HiddenStateAlignment, KnowledgeDistillation, MatrixOrientation
from mohawk.stages.distillation import kd_loss
from mohawk.teachers import adapter_for
from mohawk.train import Checkpointer, MetricsLog, train_stage
from tests.conftest import FAMILIES, VOCAB, tiny_teacher


def _train(stage, batch, tmp_path, steps=12, lr=3e-3):
    cfg = DistillConfig(log_every=100, checkpoint_every=1000, warmup_fraction=0.0, decay_fraction=0.0)
    batches = iter([batch] * steps)
    train_stage(stage, batches, total_tokens=steps * batch.numel(), micro_tokens=batch.numel(), grad_accum=1, lr=lr,
                cfg=cfg, checkpointer=Checkpointer(tmp_path / "ck"), log=MetricsLog(tmp_path / "m.jsonl"),
                progress=False)


def _assert_each_stage_lowers_its_loss(student, adapter, tmp_path):
    batch = torch.randint(0, VOCAB, (2, 16))
    for cls in (MatrixOrientation, HiddenStateAlignment, KnowledgeDistillation):
        stage = cls(student, adapter, DistillConfig())
        with torch.no_grad():
            before = float(stage.loss(batch)[0])
        _train(stage, batch, tmp_path / cls.__name__, lr=5e-4 if cls is KnowledgeDistillation else 3e-3)
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
    frozen = {n for n, _ in KnowledgeDistillation(student, adapter, DistillConfig(freeze_mlp=True)).parameters()}
    assert not any(".mlp." in n for n in frozen) and "model.embed_tokens.weight" in frozen


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
