"""Stage 4, the recall phase: only the replacing mixers train (attention layers, MLPs, embeddings, norms and head
keep stage 3's weights), its loss falls, and --stage4-tokens adds it to a run inside the same total budget."""

from __future__ import annotations

import torch

from mohawk import recipe
from mohawk.config import DistillConfig
from mohawk.stages import STAGES, RecallPhase
from mohawk.teachers import adapter_for
from mohawk.transfer import from_teacher
from tests.utils import VOCAB, tiny_teacher, train_briefly


def test_only_the_replacing_mixers_train_and_the_loss_falls(tmp_path):
    teacher = tiny_teacher("llama")
    adapter = adapter_for(teacher)
    student = from_teacher(adapter, attention_layers=[1])
    stage = STAGES[4](student, adapter)
    assert isinstance(stage, RecallPhase) and not stage.transfers_weights
    names = [n for n, _ in stage.parameters()]
    assert names and all(n.startswith(("model.layers.0.mixer.", "model.layers.2.mixer.")) for n in names)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    batch = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        loss0 = float(stage.loss(batch)[0])
    train_briefly(stage, batch, tmp_path, lr=3e-3)
    with torch.no_grad():
        assert float(stage.loss(batch)[0]) < loss0
    moved = {n for n, p in student.named_parameters() if not torch.equal(before[n], p.detach())}
    assert moved and moved <= set(names)  # the frozen weights never move


def test_stage4_tokens_adds_the_phase_within_the_total():
    cfg = DistillConfig.from_dict({"tokens": 1_000_000, "stage4_tokens": 100_000})
    assert cfg.stages == [1, 2, 3, 4]
    tokens = recipe.stage_tokens(cfg)
    assert tokens[4] == 100_000 and sum(tokens.values()) == 1_000_000
    assert recipe.plan(cfg).budgets[4].lr == recipe.LR[4]
    assert DistillConfig.from_dict({"tokens": 1_000_000}).stages == [1, 2, 3]
